/* kvtc put KEY FILE: store FILE's bytes as one opaque raw chunk. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "store.h"

struct put_opts {
    uint32_t ttl_ms;
};

static int put_opt(void *ctx, int argc, char **argv, int *i)
{
    struct put_opts *o = ctx;
    if (strcmp(argv[*i], "--ttl") != 0)
        return 0;
    char *end;
    unsigned long v = *i + 1 < argc ? strtoul(argv[*i + 1], &end, 10) : 0;
    if (*i + 1 >= argc || *end || v > UINT32_MAX) {
        fprintf(stderr, "kvtc put: --ttl needs milliseconds\n");
        return -1;
    }
    o->ttl_ms = (uint32_t)v;
    (*i)++;
    return 1;
}

int kvtc_cmd_put(const struct kvtc_cli_global *g, int argc, char **argv)
{
    struct put_opts o = {0};
    struct kvtc_cli_args a;
    int rc = kvtc_cli_scan(g, "put", argc, argv, put_opt, &o, &a);
    if (rc)
        return rc;
    if (a.help) {
        printf("usage: kvtc [-s HOST:PORT] put KEY FILE [--ttl MS] [--json]\n"
               "Store FILE's bytes ('-': stdin) as one opaque raw chunk under KEY\n"
               "(64 hex digits). --ttl: the chunk expires after MS milliseconds.\n");
        return 0;
    }
    if (a.n_pos != 2)
        return kvtc_cli_usage(&a, "needs KEY FILE");
    kvtc_key key;
    if (kvtc_cli_key(&a, a.pos[0], &key))
        return 1;
    void *buf = NULL;
    size_t len = 0;
    if ((rc = kvtc_cli_read_file(a.pos[1], &buf, &len)))
        return kvtc_cli_fail(&a, a.pos[1], -rc, NULL);
    int ret = 1;
    kvtc_conn *c = kvtc_cli_connect(g, &a);
    if (!c)
        goto cleanup;
    kvtc_put_item it = {.field_mask = KVTC_PUT_FIELD_MEM, .key = key, .data = buf,
                        .size = len, .mem = KVTC_MEM_HOST};
    kvtc_op_params p = {0};
    if (o.ttl_ms) {
        p.field_mask = KVTC_OP_PARAM_FIELD_TTL;
        p.ttl_ms = o.ttl_ms;
    }
    double t0 = kvtc_cli_now();
    rc = kvtc_put_batch(c, &it, 1, &p);
    double dt = kvtc_cli_now() - t0;
    if (rc) {
        kvtc_cli_fail(&a, a.pos[0], rc, kvtc_last_error(c));
        goto cleanup;
    }
    if (a.json)
        printf("{\"key\":\"%s\",\"bytes\":%zu,\"seconds\":%.6f}\n", a.pos[0], len, dt);
    else if (isatty(STDERR_FILENO))
        fprintf(stderr, "stored %zu bytes in %.3f ms\n", len, dt * 1e3);
    ret = 0;
cleanup:
    kvtc_disconnect(c);
    free(buf);
    return ret;
}
