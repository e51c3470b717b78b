/* kvtc lookup KEY...: how many leading keys of a chain are stored. */
#include <stdio.h>
#include <stdlib.h>

#include "store.h"

int kvtc_cmd_lookup(const struct kvtc_cli_global *g, int argc, char **argv)
{
    struct kvtc_cli_args a;
    int rc = kvtc_cli_scan(g, "lookup", argc, argv, NULL, NULL, &a);
    if (rc)
        return rc;
    if (a.help) {
        printf("usage: kvtc [-s HOST:PORT] lookup KEY... [--json]\n"
               "Print the number of leading KEYs (a chain, 64 hex digits each) that\n"
               "are stored. A partial hit is not a failure; no hit at all is a miss:\n"
               "the count (0) is printed and the exit status is 1.\n");
        return 0;
    }
    if (a.n_pos == 0)
        return kvtc_cli_usage(&a, "needs at least one KEY");
    kvtc_key *keys = kvtc_cli_keys(&a);
    uint32_t *tiers = calloc(a.n_pos, sizeof *tiers);
    kvtc_conn *c = NULL;
    int ret = 1;
    if (!keys)
        goto cleanup;
    if (!tiers) {
        kvtc_cli_fail(&a, "tiers", KVTC_ENOMEM, NULL);
        goto cleanup;
    }
    if (!(c = kvtc_cli_connect(g, &a)))
        goto cleanup;
    size_t hits = 0;
    if ((rc = kvtc_lookup(c, keys, a.n_pos, NULL, &hits, tiers))) {
        kvtc_cli_fail(&a, "lookup", rc, kvtc_last_error(c));
        goto cleanup;
    }
    if (a.json) {
        printf("{\"hits\":%zu,\"keys\":%zu,\"tiers\":[", hits, a.n_pos);
        for (size_t i = 0; i < hits; i++)
            printf("%s\"%s\"", i ? "," : "", kvtc_cli_tier_name(tiers[i]));
        printf("]}\n");
    } else {
        printf("%zu\n", hits);
    }
    if (hits == 0) {
        fprintf(stderr, "kvtc lookup: miss: none of the keys is stored\n");
        goto cleanup;
    }
    ret = 0;
cleanup:
    kvtc_disconnect(c);
    free(keys);
    free(tiers);
    return ret;
}
