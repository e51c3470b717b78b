/* index.c - chunk index and LRU (see index.h). */
#include "index.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>
#include <xxhash.h>

#include "kvtc_errors.h"
#include "log.h"

#define INITIAL_BUCKETS 1024

static size_t bucket_of(const kvtcd_index *ix, uint32_t ns, const uint8_t *key)
{
    uint64_t h = XXH3_64bits_withSeed(key, KVTCD_KEY_BYTES, ix->seed ^ ns);
    return (size_t)h & (ix->nbuckets - 1);
}

int kvtcd_index_init(kvtcd_index *ix, kvtcd_tier *tier)
{
    memset(ix, 0, sizeof *ix);
    ix->buckets = calloc(INITIAL_BUCKETS, sizeof *ix->buckets);
    if (!ix->buckets)
        return KVTC_ENOMEM;
    ix->nbuckets = INITIAL_BUCKETS;
    ix->tier = tier;
    if (getrandom(&ix->seed, sizeof ix->seed, GRND_NONBLOCK) !=
        (ssize_t)sizeof ix->seed) {
        /* No entropy yet (early boot): a time-based seed still defeats
         * precomputed collisions. */
        struct timespec ts;
        clock_gettime(CLOCK_MONOTONIC, &ts);
        ix->seed = (uint64_t)ts.tv_nsec * 0x9e3779b97f4a7c15ull ^
                   (uint64_t)ts.tv_sec;
    }
    return 0;
}

static void lru_unlink(kvtcd_index *ix, kvtcd_entry *e)
{
    if (e->lru_prev)
        e->lru_prev->lru_next = e->lru_next;
    else
        ix->lru_head = e->lru_next;
    if (e->lru_next)
        e->lru_next->lru_prev = e->lru_prev;
    else
        ix->lru_tail = e->lru_prev;
    e->lru_prev = e->lru_next = NULL;
}

static void lru_push_head(kvtcd_index *ix, kvtcd_entry *e)
{
    e->lru_prev = NULL;
    e->lru_next = ix->lru_head;
    if (ix->lru_head)
        ix->lru_head->lru_prev = e;
    ix->lru_head = e;
    if (!ix->lru_tail)
        ix->lru_tail = e;
}

void kvtcd_index_fini(kvtcd_index *ix)
{
    while (ix->lru_head)
        kvtcd_index_remove(ix, ix->lru_head);
    free(ix->buckets);
    for (uint32_t i = 0; i < ix->n_ns; i++)
        free(ix->ns_names[i]);
    free(ix->ns_names);
    memset(ix, 0, sizeof *ix);
}

int kvtcd_index_namespace(kvtcd_index *ix, const char *tenant, uint32_t *ns)
{
    size_t len = tenant ? strlen(tenant) : 0;
    if (len == 0 || len > 256)
        return KVTC_EINVAL;
    for (uint32_t i = 0; i < ix->n_ns; i++) {
        if (strcmp(ix->ns_names[i], tenant) == 0) {
            *ns = i;
            return 0;
        }
    }
    if (ix->n_ns >= KVTCD_MAX_NAMESPACES)
        return KVTC_ENOSPC;
    char **names = realloc(ix->ns_names, (ix->n_ns + 1) * sizeof *names);
    if (!names)
        return KVTC_ENOMEM;
    ix->ns_names = names;
    char *copy = strdup(tenant);
    if (!copy)
        return KVTC_ENOMEM;
    names[ix->n_ns] = copy;
    *ns = ix->n_ns++;
    return 0;
}

static kvtcd_entry **slot_of(kvtcd_index *ix, uint32_t ns, const uint8_t *key)
{
    kvtcd_entry **pp = &ix->buckets[bucket_of(ix, ns, key)];
    while (*pp && !((*pp)->ns == ns &&
                    memcmp((*pp)->key, key, KVTCD_KEY_BYTES) == 0))
        pp = &(*pp)->hnext;
    return pp;
}

void kvtcd_index_remove(kvtcd_index *ix, kvtcd_entry *e)
{
    kvtcd_entry **pp = slot_of(ix, e->ns, e->key);
    if (*pp == e)
        *pp = e->hnext;
    lru_unlink(ix, e);
    ix->count--;
    kvtcd_blob_unref(e->blob);
    free(e);
}

kvtcd_entry *kvtcd_index_find(kvtcd_index *ix, uint32_t ns,
                              const uint8_t key[KVTCD_KEY_BYTES],
                              uint64_t now_ms)
{
    kvtcd_entry *e = *slot_of(ix, ns, key);
    if (e && e->expire_ms && now_ms >= e->expire_ms &&
        !kvtcd_entry_pinned(e, now_ms)) {
        ix->expirations++;
        kvtcd_index_remove(ix, e);
        return NULL;
    }
    return e;
}

void kvtcd_index_touch(kvtcd_index *ix, kvtcd_entry *e, uint64_t now_ms)
{
    e->atime_ms = now_ms;
    if (ix->lru_head != e) {
        lru_unlink(ix, e);
        lru_push_head(ix, e);
    }
}

/* Doubling keeps chains short; a failed grow only costs speed. */
static void maybe_grow(kvtcd_index *ix)
{
    if (ix->count < ix->nbuckets || ix->nbuckets > (SIZE_MAX >> 2))
        return;
    size_t nb = ix->nbuckets * 2;
    kvtcd_entry **b = calloc(nb, sizeof *b);
    if (!b)
        return;
    kvtcd_entry **old = ix->buckets;
    size_t on = ix->nbuckets;
    ix->buckets = b;
    ix->nbuckets = nb;
    for (size_t i = 0; i < on; i++) {
        kvtcd_entry *e = old[i];
        while (e) {
            kvtcd_entry *next = e->hnext;
            size_t k = bucket_of(ix, e->ns, e->key);
            e->hnext = b[k];
            b[k] = e;
            e = next;
        }
    }
    free(old);
}

int kvtcd_index_insert(kvtcd_index *ix, const kvtcd_entry *tmpl,
                       kvtcd_blob *blob, size_t off, uint64_t now_ms,
                       kvtcd_entry **out)
{
    kvtcd_entry **pp = slot_of(ix, tmpl->ns, tmpl->key);
    kvtcd_entry *e = *pp;
    if (e) {
        /* Replace in place: the key keeps its pins and hash slot. */
        uint32_t pins = e->pins;
        uint64_t deadline = e->pin_deadline_ms;
        kvtcd_entry *hnext = e->hnext;
        kvtcd_blob *old = e->blob;
        lru_unlink(ix, e);
        *e = *tmpl;
        e->hnext = hnext;
        e->pins = pins;
        e->pin_deadline_ms = deadline;
        kvtcd_blob_unref(old);
    } else {
        e = malloc(sizeof *e);
        if (!e)
            return KVTC_ENOMEM;
        *e = *tmpl;
        e->pins = 0;
        e->pin_deadline_ms = 0;
        e->hnext = *pp;
        *pp = e;
        ix->count++;
    }
    e->lru_prev = e->lru_next = NULL;
    e->blob = blob;
    e->off = off;
    kvtcd_blob_ref(blob);
    e->atime_ms = now_ms;
    lru_push_head(ix, e);
    maybe_grow(ix);
    if (out)
        *out = e;
    return 0;
}

int kvtcd_entry_pinned(const kvtcd_entry *e, uint64_t now_ms)
{
    return e->pins > 0 && (e->pin_deadline_ms == 0 || now_ms < e->pin_deadline_ms);
}

void kvtcd_index_pin(kvtcd_index *ix, kvtcd_entry *e, int pin,
                     uint32_t ttl_ms, uint64_t now_ms)
{
    (void)ix;
    if (!kvtcd_entry_pinned(e, now_ms)) {
        /* Lapsed pins are gone: start afresh. */
        e->pins = 0;
        e->pin_deadline_ms = 0;
    }
    if (!pin) {
        if (e->pins)
            e->pins--;
        if (!e->pins)
            e->pin_deadline_ms = 0;
        return;
    }
    if (e->pins == UINT32_MAX)
        return;
    uint64_t deadline = ttl_ms ? now_ms + ttl_ms : 0;
    /* The pin holds as long as its longest holder: "until unpin" (0) wins
     * over any TTL. */
    if (e->pins == 0)
        e->pin_deadline_ms = deadline;
    else if (e->pin_deadline_ms != 0 &&
             (deadline == 0 || deadline > e->pin_deadline_ms))
        e->pin_deadline_ms = deadline;
    e->pins++;
}

int kvtcd_index_reserve(kvtcd_index *ix, size_t size, uint64_t now_ms,
                        kvtcd_blob **out)
{
    int rc = kvtcd_tier_alloc(ix->tier, size, out);
    if (rc != KVTC_EFULL)
        return rc;
    if (size > ix->tier->capacity)
        return KVTC_EFULL;
    kvtcd_entry *e = ix->lru_tail;
    while (e) {
        kvtcd_entry *prev = e->lru_prev;
        if (!kvtcd_entry_pinned(e, now_ms)) {
            int expired = e->expire_ms && now_ms >= e->expire_ms;
            if (expired)
                ix->expirations++;
            else
                ix->evictions++;
            kvtcd_index_remove(ix, e);
            rc = kvtcd_tier_alloc(ix->tier, size, out);
            if (rc != KVTC_EFULL)
                return rc;
        }
        e = prev;
    }
    return KVTC_EFULL;
}

uint32_t kvtcd_index_lookup(kvtcd_index *ix, uint32_t ns,
                            const uint8_t *const *keys, uint32_t n,
                            uint64_t now_ms, int *tiers)
{
    uint32_t hits = 0;
    for (; hits < n; hits++) {
        kvtcd_entry *e = kvtcd_index_find(ix, ns, keys[hits], now_ms);
        if (!e)
            break;
        if (tiers)
            tiers[hits] = e->blob->tier->wire_tier;
    }
    return hits;
}
