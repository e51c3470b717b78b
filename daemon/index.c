/* index.c - chunk index, LRU, child counts and victim choice (see
 * index.h). */
#include "index.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>
#include <xxhash.h>

#include "dlist.h"
#include "kvtc_errors.h"
#include "log.h"
#include "wire.h"

#define INITIAL_BUCKETS 1024
#define INITIAL_CBUCKETS 256

/* Stored children of one (ns, parent key). */
struct kvtcd_child {
    kvtcd_child *next;
    uint32_t ns;
    uint32_t count;
    uint8_t key[KVTCD_KEY_BYTES];
};

static uint64_t hash_of(const kvtcd_index *ix, uint32_t ns, const uint8_t *key)
{
    return XXH3_64bits_withSeed(key, KVTCD_KEY_BYTES, ix->seed ^ ns);
}

static size_t bucket_of(const kvtcd_index *ix, uint32_t ns, const uint8_t *key)
{
    return (size_t)hash_of(ix, ns, key) & (ix->nbuckets - 1);
}

int kvtcd_index_init(kvtcd_index *ix, kvtcd_tier *tier)
{
    memset(ix, 0, sizeof *ix);
    ix->buckets = calloc(INITIAL_BUCKETS, sizeof *ix->buckets);
    ix->cbuckets = calloc(INITIAL_CBUCKETS, sizeof *ix->cbuckets);
    if (!ix->buckets || !ix->cbuckets) {
        free(ix->buckets);
        free(ix->cbuckets);
        memset(ix, 0, sizeof *ix);
        return KVTC_ENOMEM;
    }
    ix->nbuckets = INITIAL_BUCKETS;
    ix->ncbuckets = INITIAL_CBUCKETS;
    ix->tier = tier;
    ix->next_gen = 1;
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

void kvtcd_index_set_drop_hook(kvtcd_index *ix, kvtcd_index_drop_fn fn,
                               void *arg)
{
    ix->drop = fn;
    ix->drop_arg = arg;
}

/* The LRU (every entry) and the host list (those with a host copy). */
static void lru_unlink(kvtcd_index *ix, kvtcd_entry *e)
{
    KVTC_DLIST_UNLINK(ix->lru_head, ix->lru_tail, e, lru_prev, lru_next);
}

static void lru_push_head(kvtcd_index *ix, kvtcd_entry *e)
{
    KVTC_DLIST_PUSH_HEAD(ix->lru_head, ix->lru_tail, e, lru_prev, lru_next);
}

static void host_unlink(kvtcd_index *ix, kvtcd_entry *e)
{
    KVTC_DLIST_UNLINK(ix->host_head, ix->host_tail, e, host_prev, host_next);
}

static void host_push_head(kvtcd_index *ix, kvtcd_entry *e)
{
    KVTC_DLIST_PUSH_HEAD(ix->host_head, ix->host_tail, e, host_prev, host_next);
}

/* e loses its host copy: off the host list, reference dropped. */
static void host_release(kvtcd_index *ix, kvtcd_entry *e)
{
    if (!e->blob)
        return;
    host_unlink(ix, e);
    kvtcd_blob_unref(e->blob);
    e->blob = NULL;
    e->off = 0;
}

void kvtcd_index_fini(kvtcd_index *ix)
{
    while (ix->lru_head)
        kvtcd_index_remove(ix, ix->lru_head);
    free(ix->buckets);
    /* Every count left belongs to a parent's children: none are left. */
    for (size_t i = 0; ix->cbuckets && i < ix->ncbuckets; i++) {
        while (ix->cbuckets[i]) {
            kvtcd_child *c = ix->cbuckets[i];
            ix->cbuckets[i] = c->next;
            free(c);
        }
    }
    free(ix->cbuckets);
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

const char *kvtcd_index_ns_name(const kvtcd_index *ix, uint32_t ns)
{
    return ns < ix->n_ns ? ix->ns_names[ns] : NULL;
}

/* ---- child counts ------------------------------------------------------ */

static kvtcd_child **child_slot(const kvtcd_index *ix, uint32_t ns,
                                const uint8_t *key)
{
    size_t b = (size_t)hash_of(ix, ns, key) & (ix->ncbuckets - 1);
    kvtcd_child **pp = &ix->cbuckets[b];
    while (*pp && !((*pp)->ns == ns &&
                    memcmp((*pp)->key, key, KVTCD_KEY_BYTES) == 0))
        pp = &(*pp)->next;
    return pp;
}

/* Doubling keeps chains short; a failed grow only costs speed. */
static void child_maybe_grow(kvtcd_index *ix)
{
    if (ix->ccount < ix->ncbuckets || ix->ncbuckets > (SIZE_MAX >> 2))
        return;
    size_t nb = ix->ncbuckets * 2;
    kvtcd_child **b = calloc(nb, sizeof *b);
    if (!b)
        return;
    for (size_t i = 0; i < ix->ncbuckets; i++) {
        kvtcd_child *c = ix->cbuckets[i];
        while (c) {
            kvtcd_child *next = c->next;
            size_t k = (size_t)hash_of(ix, c->ns, c->key) & (nb - 1);
            c->next = b[k];
            b[k] = c;
            c = next;
        }
    }
    free(ix->cbuckets);
    ix->cbuckets = b;
    ix->ncbuckets = nb;
}

static int child_inc(kvtcd_index *ix, uint32_t ns, const uint8_t *parent)
{
    kvtcd_child **pp = child_slot(ix, ns, parent);
    if (*pp) {
        (*pp)->count++;
        return 0;
    }
    kvtcd_child *c = malloc(sizeof *c);
    if (!c)
        return KVTC_ENOMEM;
    c->next = NULL;
    c->ns = ns;
    c->count = 1;
    memcpy(c->key, parent, KVTCD_KEY_BYTES);
    *pp = c;
    ix->ccount++;
    child_maybe_grow(ix);
    return 0;
}

static void child_dec(kvtcd_index *ix, uint32_t ns, const uint8_t *parent)
{
    kvtcd_child **pp = child_slot(ix, ns, parent);
    kvtcd_child *c = *pp;
    if (!c) {
        KVTCD_ERROR("index", "child count missing for a stored child");
        return;
    }
    if (--c->count == 0) {
        *pp = c->next;
        free(c);
        ix->ccount--;
    }
}

uint32_t kvtcd_index_children(const kvtcd_index *ix, uint32_t ns,
                              const uint8_t key[KVTCD_KEY_BYTES])
{
    const kvtcd_child *c = *child_slot(ix, ns, key);
    return c ? c->count : 0;
}

/* ---- entries ----------------------------------------------------------- */

static kvtcd_entry **slot_of(kvtcd_index *ix, uint32_t ns, const uint8_t *key)
{
    kvtcd_entry **pp = &ix->buckets[bucket_of(ix, ns, key)];
    while (*pp && !((*pp)->ns == ns &&
                    memcmp((*pp)->key, key, KVTCD_KEY_BYTES) == 0))
        pp = &(*pp)->hnext;
    return pp;
}

/* The stored version of e goes away: lower copies, host copy. */
static void drop_copies(kvtcd_index *ix, kvtcd_entry *e)
{
    if (ix->drop)
        ix->drop(ix->drop_arg, e);
    e->disk_state = KVTCD_DISK_NONE;
    e->gpu_state = KVTCD_GPU_NONE;
    host_release(ix, e);
}

void kvtcd_index_remove(kvtcd_index *ix, kvtcd_entry *e)
{
    kvtcd_entry **pp = slot_of(ix, e->ns, e->key);
    if (*pp == e)
        *pp = e->hnext;
    lru_unlink(ix, e);
    ix->count--;
    if (e->has_parent)
        child_dec(ix, e->ns, e->parent);
    drop_copies(ix, e);
    free(e);
}

void kvtcd_index_drop_host(kvtcd_index *ix, kvtcd_entry *e)
{
    if (!e->blob)
        return;
    if (e->disk_state != KVTCD_DISK_CLEAN && e->gpu_state != KVTCD_GPU_VALID) {
        /* The only copy: a caller bug that would lose the chunk. */
        KVTCD_ERROR("index", "refusing to drop the only copy of a chunk");
        return;
    }
    host_release(ix, e);
}

void kvtcd_index_set_host(kvtcd_index *ix, kvtcd_entry *e, kvtcd_blob *blob, size_t off)
{
    if (e->blob || !blob)
        return;
    kvtcd_blob_ref(blob);
    e->blob = blob;
    e->off = off;
    host_push_head(ix, e);
}

int kvtcd_entry_expired(const kvtcd_entry *e, uint64_t now_ms)
{
    return e->expire_ms && now_ms >= e->expire_ms;
}

kvtcd_entry *kvtcd_index_find(kvtcd_index *ix, uint32_t ns,
                              const uint8_t key[KVTCD_KEY_BYTES],
                              uint64_t now_ms)
{
    kvtcd_entry *e = *slot_of(ix, ns, key);
    if (e && kvtcd_entry_expired(e, now_ms) && !kvtcd_entry_pinned(e, now_ms)) {
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
    if (e->blob && ix->host_head != e) {
        host_unlink(ix, e);
        host_push_head(ix, e);
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

void kvtcd__index_fail_next(kvtcd_index *ix, uint32_t n)
{
    ix->fail_inserts = n;
}

int kvtcd_index_insert(kvtcd_index *ix, const kvtcd_entry *tmpl,
                       kvtcd_blob *blob, size_t off, uint64_t now_ms,
                       kvtcd_entry **out)
{
    if (!blob && tmpl->disk_state != KVTCD_DISK_CLEAN &&
        tmpl->gpu_state != KVTCD_GPU_VALID)
        return KVTC_EINVAL;
    if (ix->fail_inserts) {
        ix->fail_inserts--;
        return KVTC_ENOMEM;
    }
    /* The new parent's count first: the only step that can fail, so a
     * failure leaves everything as it was. */
    if (tmpl->has_parent && child_inc(ix, tmpl->ns, tmpl->parent) < 0)
        return KVTC_ENOMEM;
    /* Referenced before the old version drops its own: they may be one
     * blob (a chunk put again from the same batch buffer). */
    if (blob)
        kvtcd_blob_ref(blob);
    kvtcd_entry **pp = slot_of(ix, tmpl->ns, tmpl->key);
    kvtcd_entry *e = *pp;
    if (e) {
        /* Replace in place: the key keeps its pins and hash slot. */
        uint32_t pins = e->pins;
        uint64_t deadline = e->pin_deadline_ms;
        kvtcd_entry *hnext = e->hnext;
        if (e->has_parent)
            child_dec(ix, e->ns, e->parent);
        drop_copies(ix, e);
        lru_unlink(ix, e);
        *e = *tmpl;
        e->hnext = hnext;
        e->pins = pins;
        e->pin_deadline_ms = deadline;
    } else {
        e = malloc(sizeof *e);
        if (!e) {
            if (tmpl->has_parent)
                child_dec(ix, tmpl->ns, tmpl->parent);
            kvtcd_blob_unref(blob);
            return KVTC_ENOMEM;
        }
        *e = *tmpl;
        e->pins = 0;
        e->pin_deadline_ms = 0;
        e->hnext = *pp;
        *pp = e;
        ix->count++;
    }
    e->lru_prev = e->lru_next = NULL;
    e->host_prev = e->host_next = NULL;
    e->blob = blob;
    e->off = blob ? off : 0;
    if (e->disk_state != KVTCD_DISK_CLEAN)
        e->disk_state = KVTCD_DISK_NONE;
    if (e->gpu_state != KVTCD_GPU_VALID)
        e->gpu_state = KVTCD_GPU_NONE;
    e->gen = ix->next_gen++;
    e->atime_ms = now_ms;
    /* a host copy comes from a put that checked it, or was made here (0
     * means never: a put in the daemon's first millisecond counts as 1) */
    e->audit_ms = blob ? (now_ms ? now_ms : 1) : 0;
    lru_push_head(ix, e);
    if (blob)
        host_push_head(ix, e);
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

/* ---- eviction ---------------------------------------------------------- */

static kvtcd_entry *victim_of(kvtcd_index *ix, int host, uint64_t now_ms,
                              kvtcd_index_filter_fn filter, void *arg)
{
    kvtcd_entry *first = NULL, *leaf = NULL;
    uint32_t seen = 0;
    /* Pinned and filtered-out entries do not count toward the window: a
     * tail of pinned chunks must not hide the evictable ones behind it. */
    for (kvtcd_entry *e = host ? ix->host_tail : ix->lru_tail; e && seen < KVTCD_EVICT_WINDOW;
         e = host ? e->host_prev : e->lru_prev) {
        if (kvtcd_entry_pinned(e, now_ms) || (filter && !filter(arg, e)))
            continue;
        seen++;
        if (kvtcd_entry_expired(e, now_ms))
            return e;
        if (!first)
            first = e;
        if (!leaf && kvtcd_index_children(ix, e->ns, e->key) == 0)
            leaf = e;
    }
    return leaf ? leaf : first;
}

kvtcd_entry *kvtcd_index_victim(kvtcd_index *ix, uint64_t now_ms,
                                kvtcd_index_filter_fn filter, void *arg)
{
    return victim_of(ix, 0, now_ms, filter, arg);
}

kvtcd_entry *kvtcd_index_host_victim(kvtcd_index *ix, uint64_t now_ms,
                                     kvtcd_index_filter_fn filter, void *arg)
{
    return victim_of(ix, 1, now_ms, filter, arg);
}

/* Host copies that can go at once: a lower tier holds the chunk (least
 * recent first, on the host list: chunks only a lower tier holds are not
 * on it). With no lower tier there are none, and the walk would visit
 * every host copy on each put into a full host tier (it walked the whole
 * LRU: on the H200 host, 49152 chunks, 256 KiB puts ran 0.2 GB/s instead
 * of 3.3-3.9; docs/perf-notes.md "Host tier"). */
static int drop_clean_host(kvtcd_index *ix, size_t size, kvtcd_blob **out)
{
    int rc = KVTC_EFULL;
    if (!ix->lower_tiers)
        return rc;
    kvtcd_entry *e = ix->host_tail;
    while (e && rc == KVTC_EFULL) {
        kvtcd_entry *prev = e->host_prev; /* dropping unlinks e */
        /* A GPU copy alone does not make a chunk still waiting for its
         * disk write clean: the write reads the host copy. */
        if (e->disk_state == KVTCD_DISK_CLEAN ||
            (e->gpu_state == KVTCD_GPU_VALID && e->disk_state == KVTCD_DISK_NONE)) {
            kvtcd_index_drop_host(ix, e);
            ix->tc[KVTCD_T_HOST].demotions++;
            rc = kvtcd_tier_alloc(ix->tier, size, out);
        }
        e = prev;
    }
    return rc;
}

/* Evicting an entry with a write in flight frees nothing yet (the write
 * holds its bytes) and throws the write away: leave those. */
static int host_evictable(void *arg, const kvtcd_entry *e)
{
    (void)arg;
    return e->blob && e->disk_state != KVTCD_DISK_WRITING &&
           e->gpu_state != KVTCD_GPU_WRITING;
}

int kvtcd_index_reserve(kvtcd_index *ix, size_t size, uint64_t now_ms,
                        kvtcd_blob **out)
{
    int rc = kvtcd_tier_alloc(ix->tier, size, out);
    if (rc != KVTC_EFULL)
        return rc;
    if (size > ix->tier->capacity)
        return KVTC_EFULL;
    rc = drop_clean_host(ix, size, out);
    if (rc != KVTC_EFULL)
        return rc;
    kvtcd_entry *e;
    while ((e = kvtcd_index_host_victim(ix, now_ms, host_evictable, NULL))) {
        if (kvtcd_entry_expired(e, now_ms)) {
            ix->expirations++;
        } else {
            ix->evictions++;
            ix->tc[KVTCD_T_HOST].evictions++;
        }
        kvtcd_index_remove(ix, e);
        rc = kvtcd_tier_alloc(ix->tier, size, out);
        if (rc != KVTC_EFULL)
            return rc;
    }
    return KVTC_EFULL;
}

int kvtcd_index_reserve_copy(kvtcd_index *ix, size_t size, kvtcd_blob **out)
{
    int rc = kvtcd_tier_alloc(ix->tier, size, out);
    if (rc != KVTC_EFULL || size > ix->tier->capacity)
        return rc;
    return drop_clean_host(ix, size, out);
}

int kvtcd_entry_wire_tier(const kvtcd_entry *e)
{
    if (e->blob)
        return KVTC__WIRE__TIER__TIER_HOST;
    if (e->gpu_state == KVTCD_GPU_VALID)
        return KVTC__WIRE__TIER__TIER_GPU;
    if (e->disk_state == KVTCD_DISK_CLEAN)
        return KVTC__WIRE__TIER__TIER_DISK;
    return KVTC__WIRE__TIER__TIER_NONE;
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
            tiers[hits] = kvtcd_entry_wire_tier(e);
    }
    return hits;
}
