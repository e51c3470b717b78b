/* kvtc_bench_transport - put/get throughput and concurrent get latency of
 * one store (kvtcd through libkvtc, or Redis through hiredis), or of the
 * floor under both (memcpy: values in this process, a get is one memcpy).
 *
 *   kvtc_bench_transport --backend kvtc|redis|memcpy --target HOST:PORT
 *       [--sizes 262144,1048576,...] [--bytes-per-size N]
 *       [--lat-size N] [--clients 1,16,64] [--lat-ops N]
 *       [--depth N] [--no-throughput] [--no-latency]
 *
 * --depth N keeps N single-chunk requests in flight on the throughput
 * connection (libkvtc's asynchronous API; hiredis pipelining), like
 * ucx_perftest's window of outstanding sends.
 *
 * Prints one JSON object per measurement on stdout (the driver, run.py,
 * merges them with ucx_perftest's numbers into a table and a JSON file).
 * Both backends run the identical workload so that ratios mean something. */
#include "bt.h"

#include "kvtc_errors.h"

#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MIB (1024.0 * 1024.0)
#define MAX_LIST 32
/* Distinct key spaces so one run's phases never collide. */
#define TAG_WARM 0x5741524du
#define TAG_TPUT 0x54505554u
#define TAG_LAT 0x4c415400u
#define LAT_KEYS 64u
#define MAX_DEPTH 16
#define WARM_ROUNDS 8 /* puts + gets before timing (see run_throughput) */

struct opts {
    const struct bt_backend *be;
    const char *target;
    size_t sizes[MAX_LIST];
    int n_sizes;
    size_t bytes_per_size;
    size_t lat_size;
    int clients[MAX_LIST];
    int n_clients;
    size_t lat_ops;
    int no_throughput, no_latency;
    size_t depth;
};

static int parse_list(const char *s, size_t *out, int max, int *n)
{
    *n = 0;
    while (*s) {
        char *end;
        errno = 0;
        unsigned long long v = strtoull(s, &end, 10);
        if (end == s || errno || v == 0 || *n >= max)
            return KVTC_EINVAL;
        out[(*n)++] = (size_t)v;
        s = *end == ',' ? end + 1 : end;
        if (*end && *end != ',')
            return KVTC_EINVAL;
    }
    return *n > 0 ? 0 : KVTC_EINVAL;
}

static void usage(FILE *f)
{
    fprintf(f, "usage: kvtc_bench_transport --backend kvtc|redis|memcpy --target HOST:PORT\n"
               "  [--sizes B,B,...] [--bytes-per-size B] [--lat-size B]\n"
               "  [--clients N,N,...] [--lat-ops N] [--depth N (1..16)]\n"
               "  [--no-throughput] [--no-latency]\n");
}

static int parse_opts(int argc, char **argv, struct opts *o)
{
    static const size_t def_sizes[] = {256u << 10, 1u << 20, 4u << 20, 8u << 20, 16u << 20, 32u << 20};
    memset(o, 0, sizeof *o);
    o->n_sizes = (int)(sizeof def_sizes / sizeof def_sizes[0]);
    memcpy(o->sizes, def_sizes, sizeof def_sizes);
    o->bytes_per_size = 512u << 20;
    o->lat_size = 1u << 20;
    o->clients[0] = 1;
    o->clients[1] = 16;
    o->clients[2] = 64;
    o->n_clients = 3;
    o->lat_ops = 4096;
    o->depth = 1;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
            usage(stdout);
            exit(0);
        }
        if (!strcmp(a, "--no-throughput") || !strcmp(a, "--no-latency")) {
            *(a[5] == 't' ? &o->no_throughput : &o->no_latency) = 1;
            continue;
        }
        if (!v) {
            usage(stderr);
            return KVTC_EINVAL;
        }
        i++;
        if (!strcmp(a, "--backend")) {
            if (!strcmp(v, "redis"))
                o->be = &bt_redis_backend;
            else if (!strcmp(v, "kvtc"))
                o->be = bt_kvtc_backend;
            else if (!strcmp(v, "memcpy"))
                o->be = &bt_memcpy_backend;
            if (!o->be) {
                fprintf(stderr, "bench: backend %s unavailable in this build\n", v);
                return KVTC_ENOTSUP;
            }
        } else if (!strcmp(a, "--target")) {
            o->target = v;
        } else if (!strcmp(a, "--sizes")) {
            if (parse_list(v, o->sizes, MAX_LIST, &o->n_sizes))
                return KVTC_EINVAL;
        } else if (!strcmp(a, "--clients")) {
            size_t tmp[MAX_LIST];
            if (parse_list(v, tmp, MAX_LIST, &o->n_clients))
                return KVTC_EINVAL;
            for (int k = 0; k < o->n_clients; k++)
                o->clients[k] = (int)tmp[k];
        } else if (!strcmp(a, "--bytes-per-size")) {
            o->bytes_per_size = strtoull(v, NULL, 10);
        } else if (!strcmp(a, "--lat-size")) {
            o->lat_size = strtoull(v, NULL, 10);
        } else if (!strcmp(a, "--depth")) {
            o->depth = strtoull(v, NULL, 10);
        } else if (!strcmp(a, "--lat-ops")) {
            o->lat_ops = strtoull(v, NULL, 10);
        } else {
            usage(stderr);
            return KVTC_EINVAL;
        }
    }
    if (o->be && o->depth > 1 && !o->be->window) {
        fprintf(stderr, "bench: %s has no pipelined operations\n", o->be->name);
        return KVTC_ENOTSUP;
    }
    if (!o->be || !o->target || !o->lat_size || !o->lat_ops || o->depth < 1 || o->depth > MAX_DEPTH) {
        usage(stderr);
        return KVTC_EINVAL;
    }
    return 0;
}

/* Stamp the key number into the payload so a get of the wrong key fails the check. */
static void stamp(uint8_t *buf, size_t len, uint32_t i)
{
    memcpy(buf, &i, len < 4 ? len : 4);
}

static int check(const uint8_t *got, const uint8_t *want, size_t len, uint32_t i)
{
    uint32_t s;
    memcpy(&s, got, 4);
    if (s != i || memcmp(got + 4, want + 4, len - 4)) {
        fprintf(stderr, "bench: chunk %u came back different\n", i);
        return KVTC_ECORRUPT;
    }
    return 0;
}

/* A windowed pass's bookkeeping: each operation's start and latency, and
 * which operation last used each slot (its bytes are checked after). */
struct tp_window {
    uint32_t tag;
    size_t size;
    uint8_t **src;
    uint64_t *start, *ns;
    size_t last[MAX_DEPTH];
};

static void tp_next(void *arg, size_t i, size_t j, uint8_t key[BT_KEY_LEN])
{
    struct tp_window *t = arg;
    bt_key(t->tag, (uint32_t)i, key);
    if (t->src)
        stamp(t->src[j], t->size, (uint32_t)i);
    t->start[i] = bt_now_ns();
}

static void tp_done(void *arg, size_t i, size_t j)
{
    struct tp_window *t = arg;
    t->ns[i] = bt_now_ns() - t->start[i];
    t->last[j] = i;
}

/* One connection: n puts of distinct keys, then n gets of them, then
 * deletes; `depth` operations in flight at a time (1: one blocking call
 * after another; more: a sliding window, each operation's latency its
 * own). Verification runs outside the timed loops. */
static int run_throughput(const struct opts *o, void *conn, size_t size)
{
    const struct bt_backend *be = o->be;
    size_t depth = o->depth;
    size_t n = o->bytes_per_size / size;
    if (n < 8)
        n = 8;
    if (n > 4096)
        n = 4096;
    n = (n + depth - 1) / depth * depth;
    uint8_t *src[MAX_DEPTH] = {0}, *dst[MAX_DEPTH] = {0};
    uint8_t keys[MAX_DEPTH][BT_KEY_LEN];
    uint64_t *put_ns = calloc(n, sizeof *put_ns), *get_ns = calloc(n, sizeof *get_ns);
    uint64_t *start = calloc(n, sizeof *start);
    int rc = KVTC_ENOMEM;
    if (!put_ns || !get_ns || !start)
        goto out;
    for (size_t j = 0; j < depth; j++) {
        if (!(src[j] = bt_buf_alloc(be, conn, size)) || !(dst[j] = bt_buf_alloc(be, conn, size)))
            goto out;
        bt_fill(src[j], size, size);
        memset(dst[j], 0, size); /* fault it in now, not in the timed loop */
    }

    /* Warm-up: first contact registers memory and settles the protocol,
     * on each endpoint a backend spreads requests over (kvtc's rails:
     * up to 4 by default, taken round robin; a tcp lane connects on its
     * first transfer). */
    for (uint32_t w = 0; w < WARM_ROUNDS; w++) {
        bt_key(TAG_WARM, w, keys[0]);
        if ((rc = be->put(conn, keys[0], src[0], size)) || (rc = be->get(conn, keys[0], dst[0], size)) ||
            (rc = be->del(conn, keys[0])))
            goto out;
    }

    uint32_t tag = TAG_TPUT ^ (uint32_t)size;
    uint64_t t0 = bt_now_ns(), t1, t2;
    if (depth == 1) {
        for (size_t i = 0; i < n; i++) {
            bt_key(tag, (uint32_t)i, keys[0]);
            stamp(src[0], size, (uint32_t)i);
            uint64_t a = bt_now_ns();
            if ((rc = be->put(conn, keys[0], src[0], size))) {
                fprintf(stderr, "bench: %s put %zu B #%zu: %s\n", be->name, size, i, kvtc_strerror(rc));
                goto out;
            }
            put_ns[i] = bt_now_ns() - a;
        }
        t1 = bt_now_ns();
        for (size_t i = 0; i < n; i++) {
            bt_key(tag, (uint32_t)i, keys[0]);
            uint64_t a = bt_now_ns();
            if ((rc = be->get(conn, keys[0], dst[0], size))) {
                fprintf(stderr, "bench: %s get %zu B #%zu: %s\n", be->name, size, i, kvtc_strerror(rc));
                goto out;
            }
            get_ns[i] = bt_now_ns() - a;
        }
        t2 = bt_now_ns();
        if ((rc = check(dst[0], src[0], size, (uint32_t)(n - 1))))
            goto out;
    } else {
        struct tp_window tw = {.tag = tag, .size = size, .src = src, .start = start, .ns = put_ns};
        struct bt_window w = {.put = 1, .n = n, .depth = depth, .len = size, .bufs = (void *const *)src,
                              .next = tp_next, .done = tp_done, .arg = &tw};
        if ((rc = be->window(conn, &w))) {
            fprintf(stderr, "bench: %s put %zu B x%zu: %s\n", be->name, size, depth, kvtc_strerror(rc));
            goto out;
        }
        t1 = bt_now_ns();
        tw.src = NULL;
        tw.ns = get_ns;
        w.put = 0;
        w.bufs = (void *const *)dst;
        if ((rc = be->window(conn, &w))) {
            fprintf(stderr, "bench: %s get %zu B x%zu: %s\n", be->name, size, depth, kvtc_strerror(rc));
            goto out;
        }
        t2 = bt_now_ns();
        /* Each slot holds the last get it served. */
        for (size_t j = 0; j < depth && j < n; j++)
            if ((rc = check(dst[j], src[0], size, (uint32_t)tw.last[j])))
                goto out;
    }
    /* One more, away from the timed loop. */
    bt_key(tag, 0, keys[0]);
    if ((rc = be->get(conn, keys[0], dst[0], size)) || (rc = check(dst[0], src[0], size, 0)))
        goto out;
    for (uint32_t i = 0; i < n; i++) {
        bt_key(tag, i, keys[0]);
        if ((rc = be->del(conn, keys[0])))
            goto out;
    }

    double bytes = (double)n * (double)size;
    printf("{\"backend\":\"%s\",\"test\":\"throughput\",\"size\":%zu,\"depth\":%zu,\"ops\":%zu,"
           "\"put_mib_s\":%.1f,\"get_mib_s\":%.1f,"
           "\"put_p50_us\":%.1f,\"put_p99_us\":%.1f,\"get_p50_us\":%.1f,\"get_p99_us\":%.1f}\n",
           be->name, size, depth, n, bytes / MIB / ((double)(t1 - t0) / 1e9),
           bytes / MIB / ((double)(t2 - t1) / 1e9), bt_quantile(put_ns, n, 0.5) / 1e3,
           bt_quantile(put_ns, n, 0.99) / 1e3, bt_quantile(get_ns, n, 0.5) / 1e3,
           bt_quantile(get_ns, n, 0.99) / 1e3);
    fflush(stdout);
    rc = 0;
out:
    for (size_t j = 0; j < depth; j++) {
        bt_buf_free(be, conn, src[j]);
        bt_buf_free(be, conn, dst[j]);
    }
    free(put_ns);
    free(get_ns);
    free(start);
    return rc;
}

struct lat_thread {
    const struct opts *o;
    pthread_barrier_t *start;
    int index;
    size_t ops;
    uint64_t *ns;
    int rc;
};

static void *lat_main(void *arg)
{
    struct lat_thread *t = arg;
    const struct bt_backend *be = t->o->be;
    size_t size = t->o->lat_size;
    void *conn = NULL;
    uint8_t *dst = NULL;
    uint8_t key[BT_KEY_LEN];
    t->rc = be->connect(t->o->target, &conn);
    if (!t->rc && !(dst = bt_buf_alloc(be, conn, size)))
        t->rc = KVTC_ENOMEM;
    /* Every thread reaches the barrier, even a failed one, or the rest hang. */
    if (!t->rc) {
        /* One untimed get so connection set-up is not counted as latency. */
        bt_key(TAG_LAT, (uint32_t)t->index % LAT_KEYS, key);
        t->rc = be->get(conn, key, dst, size);
    }
    pthread_barrier_wait(t->start);
    for (size_t j = 0; !t->rc && j < t->ops; j++) {
        bt_key(TAG_LAT, (uint32_t)((size_t)t->index * 7 + j) % LAT_KEYS, key);
        uint64_t a = bt_now_ns();
        t->rc = be->get(conn, key, dst, size);
        t->ns[j] = bt_now_ns() - a;
    }
    if (t->rc)
        fprintf(stderr, "bench: %s latency client %d: %s\n", be->name, t->index, kvtc_strerror(t->rc));
    bt_buf_free(be, conn, dst);
    if (conn)
        be->close(conn);
    return NULL;
}

/* `clients` threads, each with its own connection, issue single-chunk gets
 * back to back; every get's latency is recorded. */
static int run_latency(const struct opts *o, int clients)
{
    size_t per = o->lat_ops / (size_t)clients;
    if (per < 64)
        per = 64;
    size_t total = per * (size_t)clients;
    struct lat_thread *t = calloc((size_t)clients, sizeof *t);
    pthread_t *tid = calloc((size_t)clients, sizeof *tid);
    uint64_t *ns = calloc(total, sizeof *ns);
    pthread_barrier_t start;
    int rc = KVTC_ENOMEM, started = 0;
    if (!t || !tid || !ns)
        goto out;
    pthread_barrier_init(&start, NULL, (unsigned)clients + 1);
    for (int c = 0; c < clients; c++) {
        t[c] = (struct lat_thread){.o = o, .start = &start, .index = c, .ops = per, .ns = ns + per * (size_t)c};
        if (pthread_create(&tid[c], NULL, lat_main, &t[c]))
            break;
        started++;
    }
    if (started < clients) {
        /* The barrier counts every client: without them all, nobody starts. */
        fprintf(stderr, "bench: could only start %d of %d client threads\n", started, clients);
        abort();
    }
    pthread_barrier_wait(&start);
    uint64_t t0 = bt_now_ns();
    rc = 0;
    for (int c = 0; c < clients; c++) {
        pthread_join(tid[c], NULL);
        if (t[c].rc && !rc)
            rc = t[c].rc;
    }
    uint64_t wall = bt_now_ns() - t0;
    pthread_barrier_destroy(&start);
    if (rc)
        goto out;
    double mean = 0;
    for (size_t i = 0; i < total; i++)
        mean += (double)ns[i];
    mean /= (double)total;
    double p50 = bt_quantile(ns, total, 0.5), p99 = bt_quantile(ns, total, 0.99);
    printf("{\"backend\":\"%s\",\"test\":\"latency\",\"size\":%zu,\"clients\":%d,\"ops\":%zu,"
           "\"p50_us\":%.1f,\"p99_us\":%.1f,\"mean_us\":%.1f,\"max_us\":%.1f,\"mib_s\":%.1f}\n",
           o->be->name, o->lat_size, clients, total, p50 / 1e3, p99 / 1e3, mean / 1e3,
           (double)ns[total - 1] / 1e3,
           (double)total * (double)o->lat_size / MIB / ((double)wall / 1e9));
    fflush(stdout);
out:
    free(t);
    free(tid);
    free(ns);
    return rc;
}

static int latency_keys(const struct opts *o, void *conn, int put)
{
    uint8_t key[BT_KEY_LEN];
    uint8_t *src = put ? malloc(o->lat_size) : NULL;
    int rc = 0;
    if (put && !src)
        return KVTC_ENOMEM;
    if (src)
        bt_fill(src, o->lat_size, 42);
    for (uint32_t k = 0; !rc && k < LAT_KEYS; k++) {
        bt_key(TAG_LAT, k, key);
        rc = put ? o->be->put(conn, key, src, o->lat_size) : o->be->del(conn, key);
    }
    free(src);
    return rc;
}

int main(int argc, char **argv)
{
    struct opts o;
    void *conn = NULL;
    int rc = parse_opts(argc, argv, &o);
    if (rc)
        return 2;
    if ((rc = o.be->connect(o.target, &conn)))
        goto out;
    for (int i = 0; !o.no_throughput && i < o.n_sizes; i++)
        if ((rc = run_throughput(&o, conn, o.sizes[i])))
            goto out;
    if (o.no_latency)
        goto out;
    if ((rc = latency_keys(&o, conn, 1)))
        goto out;
    for (int i = 0; i < o.n_clients; i++)
        if ((rc = run_latency(&o, o.clients[i])))
            goto out;
    rc = latency_keys(&o, conn, 0);
out:
    if (conn)
        o.be->close(conn);
    if (rc)
        fprintf(stderr, "bench: %s failed: %s\n", o.be->name, kvtc_strerror(rc));
    return rc ? 1 : 0;
}
