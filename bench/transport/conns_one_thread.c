/* kvtc_bench_conns: can ONE client thread feed several kvtcd loop threads?
 *
 * usage: kvtc_bench_conns put|get COUNT HOST:PORT [HOST:PORT...]
 *
 * One thread opens a libkvtc connection per target (targets may repeat:
 * several connections to one daemon), keeps DEPTH single-chunk requests of
 * 4 MiB in flight on each through the asynchronous API and progresses
 * them all; prints the aggregate GB/s (1e9 B). Run `put` first: `get`
 * reads the keys the same targets' `put` stored (connection i's keys).
 * Set KVTC_LOCAL=off to measure UCX payloads over tcp on one host.
 *
 * Against several daemons this splits where a tcp stream's bound lies:
 * a daemon's loop thread (gets and puts rise with more daemons) or the
 * client's thread (they do not); docs/perf-notes.md, "One tcp stream's
 * bound". */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "kvtc.h"

#define CHUNK (4u << 20)
#define DEPTH 4
#define MAX_CONNS 16

typedef struct slot {
    kvtc_conn *conn;
    int conn_i;
    void *buf;
    kvtc_put_item put;
    kvtc_get_item get;
} slot;

static int is_get, failed, done_ops;
static int left[MAX_CONNS];
static slot slots[MAX_CONNS][DEPTH];

static void submit(slot *s);

static void on_done(int status, void *arg)
{
    slot *s = arg;
    if (status) {
        fprintf(stderr, "kvtc_bench_conns: %s failed: %s\n", is_get ? "get" : "put",
                kvtc_strerror(status));
        failed++;
    }
    done_ops++;
    if (left[s->conn_i] > 0 && !failed)
        submit(s);
}

static void submit(slot *s)
{
    int n = --left[s->conn_i];
    kvtc_key k;
    memset(&k, 0, sizeof k);
    memcpy(k.bytes, "kvtcconn", 8);
    k.bytes[8] = (uint8_t)s->conn_i;
    memcpy(k.bytes + 9, &n, sizeof n);
    kvtc_op_params p = {.field_mask = KVTC_OP_PARAM_FIELD_CALLBACK, .cb = on_done, .arg = s};
    int rc;
    if (is_get) {
        memset(&s->get, 0, sizeof s->get);
        s->get.key = k;
        s->get.buf = s->buf;
        s->get.capacity = CHUNK;
        rc = kvtc_get_batch_async(s->conn, &s->get, 1, &p);
    } else {
        memset(&s->put, 0, sizeof s->put);
        s->put.key = k;
        s->put.data = s->buf;
        s->put.size = CHUNK;
        rc = kvtc_put_batch_async(s->conn, &s->put, 1, &p);
    }
    if (rc) {
        fprintf(stderr, "kvtc_bench_conns: submit: %s\n", kvtc_strerror(rc));
        exit(1);
    }
}

int main(int argc, char **argv)
{
    if (argc < 4 || (strcmp(argv[1], "put") && strcmp(argv[1], "get")) ||
        argc - 3 > MAX_CONNS || atoi(argv[2]) <= 0) {
        fprintf(stderr, "usage: kvtc_bench_conns put|get COUNT HOST:PORT [HOST:PORT...] "
                        "(at most %d)\n", MAX_CONNS);
        return 2;
    }
    is_get = !strcmp(argv[1], "get");
    int count = atoi(argv[2]), nc = argc - 3;
    kvtc_conn *conns[MAX_CONNS];
    for (int i = 0; i < nc; i++) {
        int rc = kvtc_connect(argv[3 + i], NULL, &conns[i]);
        if (rc) {
            fprintf(stderr, "kvtc_bench_conns: connect %s: %s\n", argv[3 + i], kvtc_strerror(rc));
            return 1;
        }
        left[i] = count;
        for (int d = 0; d < DEPTH; d++) {
            slot *s = &slots[i][d];
            s->conn = conns[i];
            s->conn_i = i;
            s->buf = aligned_alloc(4096, CHUNK);
            if (!s->buf)
                return 1;
            memset(s->buf, 1 + i * DEPTH + d, CHUNK); /* faulted in before the clock */
        }
    }
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    for (int i = 0; i < nc; i++)
        for (int d = 0; d < DEPTH && left[i] > 0; d++)
            submit(&slots[i][d]);
    int total = 0;
    for (int i = 0; i < nc; i++)
        total += count;
    while (done_ops < total && !failed)
        for (int i = 0; i < nc; i++)
            if (kvtc_progress(conns[i]) < 0) {
                fprintf(stderr, "kvtc_bench_conns: connection %d failed\n", i);
                return 1;
            }
    clock_gettime(CLOCK_MONOTONIC, &t1);
    double sec = (t1.tv_sec - t0.tv_sec) + (t1.tv_nsec - t0.tv_nsec) * 1e-9;
    printf("%s, %d connection(s), one thread: %.3f GB/s\n", argv[1], nc,
           (double)done_ops * CHUNK / sec / 1e9);
    for (int i = 0; i < nc; i++)
        kvtc_disconnect(conns[i]);
    for (int i = 0; i < nc; i++)
        for (int d = 0; d < DEPTH; d++)
            free(slots[i][d].buf);
    return failed ? 1 : 0;
}
