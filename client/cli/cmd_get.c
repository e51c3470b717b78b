/* kvtc get KEY OUT: write a stored chunk's bytes to OUT. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "store.h"

static int get_opt(void *ctx, int argc, char **argv, int *i)
{
    uint32_t *want = ctx;
    if (!strcmp(argv[*i], "--compressed"))
        *want = KVTC_WANT_KVTC;
    else if (!strcmp(argv[*i], "--container"))
        *want = KVTC_WANT_CONTAINER;
    else
        return 0;
    return 1;
}

int kvtc_cmd_get(const struct kvtc_cli_global *g, int argc, char **argv)
{
    struct kvtc_cli_args a;
    uint32_t want = KVTC_WANT_RAW;
    int rc = kvtc_cli_scan(g, "get", argc, argv, get_opt, &want, &a);
    if (rc)
        return rc;
    if (a.help) {
        printf("usage: kvtc [-s HOST:PORT] get KEY OUT [--compressed | --container] [--json]\n"
               "Write the chunk stored under KEY (64 hex digits) to OUT ('-': stdout).\n"
               "A missing key is a failure (exit 1); OUT is then left untouched.\n"
               "--compressed: a chunk stored compressed travels compressed and is decoded\n"
               "here (OUT gets the raw chunk); --container: OUT gets the container itself.\n");
        return 0;
    }
    if (a.n_pos != 2)
        return kvtc_cli_usage(&a, "needs KEY OUT");
    kvtc_key key;
    if (kvtc_cli_key(&a, a.pos[0], &key))
        return 1;
    kvtc_conn *c = kvtc_cli_connect(g, &a);
    if (!c)
        return 1;
    int ret = 1;
    /* The chunk's size is unknown until the reply: reserve the daemon's
     * limit. Untouched pages of a large malloc cost no memory. */
    kvtc_server_info info;
    kvtc_server_info_get(c, &info);
    size_t cap = info.max_chunk_bytes ? (size_t)info.max_chunk_bytes : (size_t)256 << 20;
    void *buf = malloc(cap);
    if (!buf) {
        kvtc_cli_fail(&a, "buffer", KVTC_ENOMEM, NULL);
        goto cleanup;
    }
    kvtc_get_item it = {.field_mask = KVTC_GET_FIELD_MEM | KVTC_GET_FIELD_WANT, .key = key,
                        .buf = buf, .capacity = cap, .mem = KVTC_MEM_HOST, .want = want};
    double t0 = kvtc_cli_now();
    rc = kvtc_get_batch(c, &it, 1, NULL);
    double dt = kvtc_cli_now() - t0;
    if (rc) {
        kvtc_cli_fail(&a, a.pos[0], rc, rc == KVTC_ENOENT ? "not found" : kvtc_last_error(c));
        goto cleanup;
    }
    if ((rc = kvtc_cli_write_file(a.pos[1], buf, it.size))) {
        kvtc_cli_fail(&a, a.pos[1], -rc, NULL);
        goto cleanup;
    }
    if (a.json && strcmp(a.pos[1], "-"))
        printf("{\"key\":\"%s\",\"bytes\":%zu,\"tier\":\"%s\",\"encoding\":\"%s\","
               "\"wire_bytes\":%llu,\"seconds\":%.6f}\n",
               a.pos[0], it.size, kvtc_cli_tier_name(it.tier),
               it.encoding == KVTC_ENCODING_KVTC ? "kvtc" : "raw",
               (unsigned long long)it.wire_size, dt);
    else if (isatty(STDERR_FILENO))
        fprintf(stderr, "fetched %zu bytes from %s in %.3f ms (%s, %llu bytes on the wire)\n",
                it.size, kvtc_cli_tier_name(it.tier), dt * 1e3,
                it.encoding == KVTC_ENCODING_KVTC ? "compressed" : "raw",
                (unsigned long long)it.wire_size);
    ret = 0;
cleanup:
    free(buf);
    kvtc_disconnect(c);
    return ret;
}
