/* kvtc profile upload FILE | list | get ID OUT | delete ID: the daemon's
 * codec profiles; kvtc calibrate: `kvtc codec calibrate` with the dumps and
 * the output as positionals. */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "store.h"

static int parse_id(const struct kvtc_cli_args *a, const char *s, uint64_t *id)
{
    char *end;
    if (!*s || strlen(s) > 16 || (*id = strtoull(s, &end, 16), *end)) {
        char msg[128];
        snprintf(msg, sizeof msg, "bad profile id '%.40s' (up to 16 hex digits)", s);
        kvtc_cli_usage(a, msg);
        return -1;
    }
    return 0;
}

static void print_info(const kvtc_profile_info *p, int json)
{
    if (json) {
        printf("{\"id\":\"%016" PRIx64 "\",\"bytes\":%" PRIu64 ",\"layers\":%u,"
               "\"kv_heads\":%u,\"head_dim\":%u,\"dtype\":%u,\"chunk_tokens\":%u,\"ratios\":[",
               p->id, p->size, p->layout.layers, p->layout.kv_heads, p->layout.head_dim,
               p->layout.dtype, p->layout.chunk_tokens);
        for (uint32_t i = 0; i < p->n_plans; i++)
            printf("%s%g", i ? "," : "", (double)p->ratios[i]);
        printf("]}\n");
        return;
    }
    printf("%016" PRIx64 "  %" PRIu64 " bytes  layers=%u kv_heads=%u head_dim=%u dtype=%u "
           "chunk=%u  ratios=",
           p->id, p->size, p->layout.layers, p->layout.kv_heads, p->layout.head_dim,
           p->layout.dtype, p->layout.chunk_tokens);
    for (uint32_t i = 0; i < p->n_plans; i++)
        printf("%s%g", i ? "," : "", (double)p->ratios[i]);
    printf("\n");
}

static int usage_text(void)
{
    printf("usage: kvtc [-s HOST:PORT] profile upload FILE.kvtcp | list | get ID OUT | delete ID"
           " [--json]\n"
           "Manage the daemon's codec profiles. The daemon compresses chunks put with\n"
           "--ratio with the profile of their layout; ID is the profile id (hex).\n");
    return 0;
}

int kvtc_cmd_profile(const struct kvtc_cli_global *g, int argc, char **argv)
{
    struct kvtc_cli_args a;
    int rc = kvtc_cli_scan(g, "profile", argc, argv, NULL, NULL, &a);
    if (rc)
        return rc;
    if (a.help)
        return usage_text();
    const char *sub = a.n_pos ? a.pos[0] : "";
    size_t want = !strcmp(sub, "list") ? 1 : !strcmp(sub, "upload") || !strcmp(sub, "delete") ? 2
                : !strcmp(sub, "get") ? 3 : 0;
    if (!want)
        return kvtc_cli_usage(&a, "needs upload FILE | list | get ID OUT | delete ID");
    if (a.n_pos != want)
        return kvtc_cli_usage(&a, "wrong number of arguments (see kvtc profile --help)");
    uint64_t id = 0;
    if ((!strcmp(sub, "get") || !strcmp(sub, "delete")) && parse_id(&a, a.pos[1], &id))
        return 2;
    void *buf = NULL;
    size_t len = 0;
    if (!strcmp(sub, "upload") && (rc = kvtc_cli_read_file(a.pos[1], &buf, &len)))
        return kvtc_cli_fail(&a, a.pos[1], -rc, NULL);
    int ret = 1;
    kvtc_profile_info *infos = NULL;
    kvtc_conn *c = kvtc_cli_connect(g, &a);
    if (!c)
        goto cleanup;
    if (!strcmp(sub, "upload")) {
        kvtc_profile_info info;
        if ((rc = kvtc_profile_upload(c, buf, len, NULL, &info))) {
            kvtc_cli_fail(&a, a.pos[1], rc, kvtc_last_error(c));
            goto cleanup;
        }
        print_info(&info, a.json);
    } else if (!strcmp(sub, "list")) {
        size_t n = 0;
        infos = calloc(256, sizeof *infos);
        if (!infos || (rc = kvtc_profile_list(c, NULL, infos, 256, &n))) {
            kvtc_cli_fail(&a, "list", infos ? rc : KVTC_ENOMEM, kvtc_last_error(c));
            goto cleanup;
        }
        for (size_t i = 0; i < n; i++)
            print_info(&infos[i], a.json);
    } else if (!strcmp(sub, "get")) {
        size_t size = 0;
        rc = kvtc_profile_get(c, id, NULL, 0, NULL, &size);
        if (rc == KVTC_ENOSPC && size) {
            /* First ask told the size: now fetch into a buffer that fits. */
            if (!(buf = malloc(size))) {
                kvtc_cli_fail(&a, "buffer", KVTC_ENOMEM, NULL);
                goto cleanup;
            }
            rc = kvtc_profile_get(c, id, buf, size, NULL, &size);
        }
        if (rc) {
            kvtc_cli_fail(&a, a.pos[1], rc, kvtc_last_error(c));
            goto cleanup;
        }
        if ((rc = kvtc_cli_write_file(a.pos[2], buf, size))) {
            kvtc_cli_fail(&a, a.pos[2], -rc, NULL);
            goto cleanup;
        }
    } else {
        if ((rc = kvtc_profile_delete(c, id, NULL))) {
            kvtc_cli_fail(&a, a.pos[1], rc, kvtc_last_error(c));
            goto cleanup;
        }
    }
    ret = 0;
cleanup:
    kvtc_disconnect(c);
    free(infos);
    free(buf);
    return ret;
}

/* kvtc calibrate [codec calibrate options] DUMP... OUT.kvtcp */
int kvtc_cmd_calibrate(const struct kvtc_cli_global *g, int argc, char **argv)
{
    int first_pos = 1;
    /* Options (with their values) come first, as `kvtc codec calibrate`
     * takes them. */
    while (first_pos < argc && argv[first_pos][0] == '-' && argv[first_pos][1]) {
        if (!strcmp(argv[first_pos], "-h") || !strcmp(argv[first_pos], "--help"))
            break;
        first_pos += 2;
    }
    int n_dumps = argc - first_pos - 1;
    if (first_pos < argc && (!strcmp(argv[first_pos], "-h") || !strcmp(argv[first_pos], "--help"))) {
        printf("usage: kvtc calibrate --layout SPEC [--targets 4,8,16,32,64] [options] DUMP... "
               "OUT.kvtcp\n"
               "Build a codec profile from KV dumps (canonical chunk files, e.g. from\n"
               "kvtc-dump-kv); the same as `kvtc codec calibrate ... --out OUT.kvtcp DUMP...`\n"
               "(see `kvtc codec calibrate` for SPEC and the options). Upload the result\n"
               "with `kvtc profile upload OUT.kvtcp`.\n");
        return 0;
    }
    if (first_pos > argc || n_dumps < 1) {
        fprintf(stderr, "kvtc calibrate: needs --layout SPEC, DUMP... and OUT.kvtcp "
                        "(see kvtc calibrate --help)\n");
        return 2;
    }
    char **v = calloc((size_t)argc + 4, sizeof *v);
    if (!v)
        return 1;
    int k = 0;
    v[k++] = "codec";
    v[k++] = "calibrate";
    for (int i = 1; i < first_pos; i++)
        v[k++] = argv[i];
    v[k++] = "--out";
    v[k++] = argv[argc - 1];
    for (int i = first_pos; i < argc - 1; i++)
        v[k++] = argv[i];
    fprintf(stderr, "kvtc calibrate: %d dump file%s -> %s (reading, then PCA and one plan per "
                    "target)\n",
            n_dumps, n_dumps == 1 ? "" : "s", argv[argc - 1]);
    double t0 = kvtc_cli_now();
    int rc = kvtc_cmd_codec(g, k, v);
    fprintf(stderr, "kvtc calibrate: %s in %.1f s\n", rc ? "failed" : "done", kvtc_cli_now() - t0);
    free(v);
    return rc;
}
