/* The latency floor of a same-host get: the values live in this process,
 * and a get is one lookup and one memcpy into the client's buffer (no
 * request, no daemon, no checksum). Run with the same clients and chunks
 * as kvtcd, it shows how much of a P99/P50 ratio is the host's memory
 * system and scheduler rather than the store: 16 threads copying 1 MiB
 * each on a 16-CPU host have a tail of their own. */
#include "bt.h"

#include "kvtc_errors.h"

#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#define SLOTS 8192u /* open addressing; the bench uses at most a few hundred keys */

struct value {
    uint8_t key[BT_KEY_LEN];
    uint8_t *buf; /* NULL: free slot (deleted slots keep their key) */
    size_t len;
    int used;     /* the slot ever held a key: probing goes on past it */
};

static struct value table[SLOTS];
static pthread_rwlock_t lock = PTHREAD_RWLOCK_INITIALIZER;

static uint32_t slot_of(const uint8_t key[BT_KEY_LEN])
{
    uint32_t h;
    memcpy(&h, key, sizeof h); /* keys are hashes already */
    return h % SLOTS;
}

/* The slot holding key, or with insert the first slot it may take. */
static struct value *find(const uint8_t key[BT_KEY_LEN], int insert)
{
    struct value *spare = NULL;
    for (uint32_t i = 0, s = slot_of(key); i < SLOTS; i++, s = (s + 1) % SLOTS) {
        struct value *v = &table[s];
        if (!v->used)
            return insert ? (spare ? spare : v) : NULL;
        if (v->buf && !memcmp(v->key, key, BT_KEY_LEN))
            return v;
        if (!v->buf && !spare)
            spare = v;
    }
    return insert ? spare : NULL;
}

static int mc_connect(const char *target, void **conn)
{
    (void)target; /* one store per process */
    *conn = table;
    return 0;
}

static int mc_put(void *conn, const uint8_t key[BT_KEY_LEN], const void *buf, size_t len)
{
    (void)conn;
    /* page-aligned like kvtcd's host slab; touched here, not on a get */
    uint8_t *copy = aligned_alloc(4096, (len + 4095) & ~(size_t)4095);
    if (!copy)
        return KVTC_ENOMEM;
    memcpy(copy, buf, len);
    pthread_rwlock_wrlock(&lock);
    struct value *v = find(key, 1);
    int rc = v ? 0 : KVTC_EFULL;
    if (v) {
        free(v->buf);
        *v = (struct value){.buf = copy, .len = len, .used = 1};
        memcpy(v->key, key, BT_KEY_LEN);
        copy = NULL;
    }
    pthread_rwlock_unlock(&lock);
    free(copy);
    return rc;
}

static int mc_get(void *conn, const uint8_t key[BT_KEY_LEN], void *buf, size_t len)
{
    (void)conn;
    pthread_rwlock_rdlock(&lock);
    const struct value *v = find(key, 0);
    int rc = !v ? KVTC_ENOENT : v->len != len ? KVTC_EINVAL : 0;
    if (!rc)
        memcpy(buf, v->buf, len);
    pthread_rwlock_unlock(&lock);
    return rc;
}

static int mc_del(void *conn, const uint8_t key[BT_KEY_LEN])
{
    (void)conn;
    pthread_rwlock_wrlock(&lock);
    struct value *v = find(key, 0);
    if (v) {
        free(v->buf);
        v->buf = NULL;
    }
    pthread_rwlock_unlock(&lock);
    return v ? 0 : KVTC_ENOENT;
}

/* Copies are synchronous: a window is one operation after another. */
static int mc_window(void *conn, const struct bt_window *w)
{
    int rc = 0;
    for (size_t i = 0; !rc && i < w->n; i++) {
        size_t j = i % w->depth;
        uint8_t key[BT_KEY_LEN];
        w->next(w->arg, i, j, key);
        rc = w->put ? mc_put(conn, key, w->bufs[j], w->len) : mc_get(conn, key, w->bufs[j], w->len);
        if (!rc)
            w->done(w->arg, i, j);
    }
    return rc;
}

static void mc_close(void *conn)
{
    (void)conn;
}

const struct bt_backend bt_memcpy_backend = {
    .name = "memcpy",
    .connect = mc_connect,
    .put = mc_put,
    .get = mc_get,
    .del = mc_del,
    .window = mc_window,
    .close = mc_close,
};
