/* kvtc put KEY FILE: store FILE's bytes as one opaque raw chunk. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "store.h"

struct put_opts {
    uint32_t ttl_ms;
    float ratio;          /* --ratio: the daemon compresses */
    const char *profile;  /* --profile ID: whose layout the chunk has */
    uint32_t first_pos;   /* --first-pos */
};

/* The layout a --ratio chunk is described with: the profile's (named, or
 * the daemon's only one), so the daemon finds that profile for it. */
static int ratio_layout(kvtc_conn *c, const struct kvtc_cli_args *a, const struct put_opts *o,
                        kvtc_layout *l)
{
    kvtc_profile_info *ps = calloc(256, sizeof *ps);
    size_t n = 0;
    int rc = ps ? kvtc_profile_list(c, NULL, ps, 256, &n) : KVTC_ENOMEM;
    if (rc) {
        free(ps);
        return kvtc_cli_fail(a, "profile list", rc, kvtc_last_error(c));
    }
    uint64_t id = o->profile ? strtoull(o->profile, NULL, 16) : 0;
    size_t k = n;
    for (size_t i = 0; i < n; i++)
        if (o->profile ? ps[i].id == id : n == 1)
            k = i;
    if (k == n) {
        free(ps);
        return kvtc_cli_fail(a, "--ratio", KVTC_EPROFILE,
                             o->profile ? "no such profile on the daemon"
                                        : "name the chunk's profile with --profile ID "
                                          "(the daemon has none or several)");
    }
    *l = ps[k].layout;
    free(ps);
    return 0;
}

static int put_opt(void *ctx, int argc, char **argv, int *i)
{
    struct put_opts *o = ctx;
    if (!strcmp(argv[*i], "--ratio") || !strcmp(argv[*i], "--profile") ||
        !strcmp(argv[*i], "--first-pos")) {
        if (*i + 1 >= argc) {
            fprintf(stderr, "kvtc put: %s needs a value\n", argv[*i]);
            return -1;
        }
        const char *v = argv[++*i];
        char *end;
        if (!strcmp(argv[*i - 1], "--profile")) {
            o->profile = v;
        } else if (!strcmp(argv[*i - 1], "--ratio")) {
            o->ratio = strtof(v, &end);
            if (*end || !(o->ratio >= 1)) {
                fprintf(stderr, "kvtc put: --ratio needs a number >= 1\n");
                return -1;
            }
        } else {
            unsigned long p = strtoul(v, &end, 10);
            if (*end || p > UINT32_MAX) {
                fprintf(stderr, "kvtc put: --first-pos needs a token position\n");
                return -1;
            }
            o->first_pos = (uint32_t)p;
        }
        return 1;
    }
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
        printf("usage: kvtc [-s HOST:PORT] put KEY FILE [--ttl MS] [--ratio R [--profile ID]\n"
               "       [--first-pos P]] [--json]\n"
               "Store FILE's bytes ('-': stdin) as one opaque raw chunk under KEY\n"
               "(64 hex digits). --ttl: the chunk expires after MS milliseconds.\n"
               "--ratio R: FILE is a canonical KV chunk of profile ID's layout (default:\n"
               "the daemon's only profile) whose first token sits at position P; the\n"
               "daemon stores it compressed at the profile's plan nearest R from above.\n");
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
    kvtc_layout l;
    if (o.ratio > 0) {
        if (ratio_layout(c, &a, &o, &l))
            goto cleanup;
        size_t per = kvtc_chunk_bytes(&l, 1);
        if (!per || len % per || !len || len / per > KVTC_MAX_CHUNK_TOKENS) {
            kvtc_cli_fail(&a, a.pos[1], KVTC_EINVAL,
                          "not a whole number of tokens of the profile's layout");
            goto cleanup;
        }
        it.field_mask |= KVTC_PUT_FIELD_LAYOUT | KVTC_PUT_FIELD_RATIO;
        it.layout = &l;
        it.n_tokens = (uint32_t)(len / per);
        it.first_pos = o.first_pos;
        it.target_ratio = o.ratio;
    }
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
