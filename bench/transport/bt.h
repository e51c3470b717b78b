/* bt.h - the transport benchmark's shared pieces.
 *
 * The benchmark measures every store through the same small backend table
 * so that kvtcd and Redis run exactly the same workload: same keys, same
 * value bytes, same number of operations, same client threads. */
#ifndef KVTC_BENCH_TRANSPORT_BT_H
#define KVTC_BENCH_TRANSPORT_BT_H

#include <stddef.h>
#include <stdint.h>

#define BT_KEY_LEN 32

/* One windowed pass (bt_backend.window). Slot j's buffer bufs[j] serves
 * one operation at a time: next(arg, i, j, key) names operation i's key
 * and, for a put, stamps bufs[j] before it starts; done(arg, i, j) runs
 * when it finished (a get's bytes are then in bufs[j]). */
struct bt_window {
    int put;
    size_t n, depth, len;
    void *const *bufs;
    void (*next)(void *arg, size_t i, size_t j, uint8_t key[BT_KEY_LEN]);
    void (*done)(void *arg, size_t i, size_t j);
    void *arg;
};

/* One store under test. Every connection belongs to one thread. */
struct bt_backend {
    const char *name;
    /* Open one connection to `target` (HOST:PORT). */
    int (*connect)(const char *target, void **conn);
    int (*put)(void *conn, const uint8_t key[BT_KEY_LEN], const void *buf, size_t len);
    /* Fetch exactly `len` bytes into buf; a miss or a size mismatch fails. */
    int (*get)(void *conn, const uint8_t key[BT_KEY_LEN], void *buf, size_t len);
    int (*del)(void *conn, const uint8_t key[BT_KEY_LEN]);
    /* Pipelined (--depth > 1): w->n puts or gets on the connection, each
     * its own request, at most w->depth in flight; a new one starts as soon
     * as one finishes (a sliding window, as ucx_perftest keeps its sends). */
    int (*window)(void *conn, const struct bt_window *w);
    void (*close)(void *conn);
    /* Buffers for the connection's values (NULL: malloc/free). The kvtc
     * backend hands out memory shared with kvtcd when KVTC_BENCH_SHM=on. */
    int (*alloc)(void *conn, size_t len, void **out);
    void (*release)(void *conn, void *buf);
};

extern const struct bt_backend bt_redis_backend;
/* The floor: values in the bench's own process, a get is one memcpy
 * (bt_memcpy.c); --target is ignored. */
extern const struct bt_backend bt_memcpy_backend;
/* NULL when built without libkvtc. */
extern const struct bt_backend *const bt_kvtc_backend;

/* A value buffer of len bytes for conn through be (NULL on failure), and
 * its release (NULL: no-op). */
void *bt_buf_alloc(const struct bt_backend *be, void *conn, size_t len);
void bt_buf_free(const struct bt_backend *be, void *conn, void *buf);
/* Monotonic time in nanoseconds. */
uint64_t bt_now_ns(void);
/* Key number `i` of the run tagged `tag`: deterministic, distinct per (tag, i). */
void bt_key(uint32_t tag, uint32_t i, uint8_t key[BT_KEY_LEN]);
/* Fill buf with bytes that depend on seed, so a wrong chunk is noticed. */
void bt_fill(void *buf, size_t len, uint64_t seed);
/* The q-quantile (0..1) of n samples; sorts them in place. */
double bt_quantile(uint64_t *samples, size_t n, double q);

#endif
