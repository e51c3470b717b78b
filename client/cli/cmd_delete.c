/* kvtc delete | pin | unpin KEY...: per-key operations with one status
 * each; any key that fails makes the command fail (one line). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "store.h"

enum keys_op { OP_DELETE, OP_PIN, OP_UNPIN };

struct keys_opts {
    uint32_t ttl_ms;
    int has_ttl;
};

static int ttl_opt(void *ctx, int argc, char **argv, int *i)
{
    struct keys_opts *o = ctx;
    if (strcmp(argv[*i], "--ttl") != 0)
        return 0;
    char *end;
    unsigned long v = *i + 1 < argc ? strtoul(argv[*i + 1], &end, 10) : 0;
    if (*i + 1 >= argc || *end || v > UINT32_MAX) {
        fprintf(stderr, "kvtc pin: --ttl needs milliseconds\n");
        return -1;
    }
    o->ttl_ms = (uint32_t)v;
    o->has_ttl = 1;
    (*i)++;
    return 1;
}

static int keys_cmd(const struct kvtc_cli_global *g, int argc, char **argv, enum keys_op op)
{
    static const char *const names[] = {"delete", "pin", "unpin"};
    struct keys_opts o = {0};
    struct kvtc_cli_args a;
    int rc = kvtc_cli_scan(g, names[op], argc, argv, op == OP_PIN ? ttl_opt : NULL, &o, &a);
    if (rc)
        return rc;
    if (a.help) {
        if (op == OP_PIN)
            printf("usage: kvtc [-s HOST:PORT] pin KEY... [--ttl MS] [--json]\n"
                   "Pin chunks against eviction (for MS milliseconds; default until unpin).\n");
        else
            printf("usage: kvtc [-s HOST:PORT] %s KEY... [--json]\n%s\n", names[op],
                   op == OP_DELETE ? "Delete chunks (pinned ones stay)."
                                   : "Remove one pin from each chunk.");
        return 0;
    }
    if (a.n_pos == 0)
        return kvtc_cli_usage(&a, "needs at least one KEY");
    kvtc_key *keys = kvtc_cli_keys(&a);
    int *st = calloc(a.n_pos, sizeof *st);
    kvtc_conn *c = NULL;
    int ret = 1;
    if (!keys)
        goto cleanup;
    if (!st) {
        kvtc_cli_fail(&a, "statuses", KVTC_ENOMEM, NULL);
        goto cleanup;
    }
    if (!(c = kvtc_cli_connect(g, &a)))
        goto cleanup;
    kvtc_op_params p = {0};
    if (o.has_ttl) {
        p.field_mask = KVTC_OP_PARAM_FIELD_TTL;
        p.ttl_ms = o.ttl_ms;
    }
    rc = op == OP_DELETE ? kvtc_delete(c, keys, a.n_pos, &p, st)
         : op == OP_PIN  ? kvtc_pin(c, keys, a.n_pos, &p, st)
                         : kvtc_unpin(c, keys, a.n_pos, &p, st);
    size_t ok = 0, first_bad = a.n_pos;
    for (size_t i = 0; i < a.n_pos; i++) {
        if (!st[i])
            ok++;
        else if (first_bad == a.n_pos)
            first_bad = i;
    }
    if (a.json) {
        printf("{\"ok\":%zu,\"keys\":%zu,\"status\":[", ok, a.n_pos);
        for (size_t i = 0; i < a.n_pos; i++)
            printf("%s\"%s\"", i ? "," : "", st[i] ? kvtc_strerror(st[i]) : "ok");
        printf("]}\n");
    } else if (!rc && first_bad == a.n_pos) {
        printf("%zu\n", ok);
    }
    if (first_bad < a.n_pos) {
        kvtc_cli_fail(&a, a.pos[first_bad], st[first_bad], NULL);
        goto cleanup;
    }
    if (rc) {
        kvtc_cli_fail(&a, names[op], rc, kvtc_last_error(c));
        goto cleanup;
    }
    ret = 0;
cleanup:
    kvtc_disconnect(c);
    free(keys);
    free(st);
    return ret;
}

int kvtc_cmd_delete(const struct kvtc_cli_global *g, int argc, char **argv)
{
    return keys_cmd(g, argc, argv, OP_DELETE);
}

int kvtc_cmd_pin(const struct kvtc_cli_global *g, int argc, char **argv)
{
    return keys_cmd(g, argc, argv, OP_PIN);
}

int kvtc_cmd_unpin(const struct kvtc_cli_global *g, int argc, char **argv)
{
    return keys_cmd(g, argc, argv, OP_UNPIN);
}
