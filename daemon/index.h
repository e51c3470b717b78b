/* index.h - namespace + 32-byte key -> chunk entry, with an LRU list and
 * prefix-aware eviction.
 *
 * One hash table for every namespace (the namespace id is part of the key),
 * hashed with a per-process random seed so clients cannot aim collisions
 * into one bucket. Entries sit on one LRU list (most recent at the head).
 *
 * An entry is one stored chunk and says where its copies are: host RAM
 * (blob/off; NULL when the chunk lives only on the GPU or disk), the GPU
 * slab (gpu_state/gloc) and the disk store (disk_state/dloc). The index
 * never talks to the GPU or disk stores itself: whenever a stored version
 * goes away (remove, replace) it calls the drop hook, which the tier policy
 * (tiers.c) sets to release the lower copies. So the index links and is
 * unit-tested alone.
 *
 * Prefix awareness: a key names a whole prefix, and a chunk whose children
 * are stored is worth more than a leaf (dropping it breaks every longer
 * prefix). The index counts stored children per (namespace, parent key) in
 * a second small hash; counts exist before their parent does (children may
 * arrive first) and go when they reach 0. Eviction (kvtcd_index_victim;
 * kvtcd_index_host_victim among the entries with a host copy) scans a
 * window of KVTCD_EVICT_WINDOW evictable entries from the LRU tail:
 * an expired entry goes first, else the least recent leaf, else (a window
 * of parents only) the least recent evictable entry. Pinned entries are
 * never evicted.
 *
 * Expiry (put TTL) and pin TTLs are checked lazily against the caller's
 * clock (now_ms), so tests drive time explicitly.
 *
 * Loop-thread only. */
#ifndef KVTCD_INDEX_H
#define KVTCD_INDEX_H

#include <stddef.h>
#include <stdint.h>

#include "kvtc_codec.h"
#include "store_disk.h"
#include "store_gpu.h"
#include "tier.h"

#define KVTCD_KEY_BYTES 32
#define KVTCD_MAX_NAMESPACES 4096
/* Evictable entries a victim scan looks at from the LRU tail. */
#define KVTCD_EVICT_WINDOW 64

/* The disk copy of an entry. */
enum kvtcd_disk_state {
    KVTCD_DISK_NONE = 0,    /* none (dirty, or no disk tier) */
    KVTCD_DISK_QUEUED = 1,  /* waiting in the write-behind queue */
    KVTCD_DISK_WRITING = 2, /* append in flight (holds a blob reference) */
    KVTCD_DISK_CLEAN = 3    /* on disk at dloc */
};

/* The GPU copy of an entry. */
enum kvtcd_gpu_state {
    KVTCD_GPU_NONE = 0,
    KVTCD_GPU_WRITING = 1,  /* host -> GPU copy in flight */
    KVTCD_GPU_VALID = 2     /* in the slab at gloc */
};

/* Tiers as the metrics name them (not the wire enum). */
enum kvtcd_tier_id {
    KVTCD_T_HOST = 0,
    KVTCD_T_GPU = 1,
    KVTCD_T_DISK = 2,
    KVTCD_N_TIERS = 3
};

/* Per-tier counters (the /metrics tier="..." series). hits: gets served
 * from the tier; misses: gets that reached the tier and did not find the
 * chunk there; promotions: copies made into the tier from a lower one;
 * demotions: copies given up by the tier because a lower one holds the
 * chunk (or was made for it); evictions: chunks dropped from the tier with
 * no lower copy left. */
typedef struct kvtcd_tier_counters {
    uint64_t hits, misses;
    uint64_t promotions, demotions, evictions;
    uint64_t bytes_read, bytes_written;
    uint64_t errors;
} kvtcd_tier_counters;

typedef struct kvtcd_entry {
    struct kvtcd_entry *hnext;            /* hash chain */
    struct kvtcd_entry *lru_prev, *lru_next;
    struct kvtcd_entry *host_prev, *host_next; /* the host copies' LRU:
                                             on it while blob is set */
    uint32_t ns;
    uint8_t key[KVTCD_KEY_BYTES];
    uint8_t parent[KVTCD_KEY_BYTES];
    uint8_t has_parent;
    uint8_t has_layout;
    uint8_t encoding;                     /* Kvtc__Wire__Encoding */
    uint8_t disk_state;                   /* enum kvtcd_disk_state */
    uint8_t gpu_state;                    /* enum kvtcd_gpu_state */
    uint32_t first_pos, n_tokens, chunk_flags;
    kvtc_layout layout;
    uint64_t size;
    uint64_t checksum;                    /* XXH3-64 of the bytes */
    kvtcd_blob *blob;                     /* host copy, or NULL */
    size_t off;                           /* bytes at blob->data + off */
    kvtcd_disk_loc dloc;                  /* disk_state CLEAN */
    kvtcd_gpu_loc gloc;                   /* gpu_state VALID */
    uint64_t gen;                         /* this stored version: async
                                             completions check it */
    uint32_t pins;
    uint64_t pin_deadline_ms;             /* 0: pins never lapse */
    uint64_t expire_ms;                   /* 0: never */
    uint64_t atime_ms;
    uint64_t audit_ms;                    /* when its host bytes were last
                                             hashed: by the put that stored
                                             them, or a get (handlers.c,
                                             --audit-interval); 0: never */
} kvtcd_entry;

typedef struct kvtcd_child kvtcd_child;

/* Called when a stored version goes away (its entry is removed, or
 * replaced by a new put of the key), before the entry changes: it releases
 * the GPU and disk copies. The host blob reference is dropped by the index
 * itself. */
typedef void (*kvtcd_index_drop_fn)(void *arg, kvtcd_entry *e);

typedef struct kvtcd_index {
    kvtcd_entry **buckets;
    size_t nbuckets;                      /* power of two */
    size_t count;
    uint64_t seed;
    uint64_t next_gen;
    kvtcd_entry *lru_head, *lru_tail;
    /* The entries with a host copy, in the same order: what makes host
     * room walks these alone, not the chunks only lower tiers hold (a
     * large disk tier's, which fill the LRU's tail). */
    kvtcd_entry *host_head, *host_tail;
    kvtcd_tier *tier;                     /* host RAM: where puts land */
    char **ns_names;
    uint32_t n_ns;
    /* children per (ns, parent) */
    kvtcd_child **cbuckets;
    size_t ncbuckets;
    size_t ccount;
    kvtcd_index_drop_fn drop;
    void *drop_arg;
    uint64_t evictions;                   /* chunks dropped for room */
    uint64_t expirations;
    kvtcd_tier_counters tc[KVTCD_N_TIERS];
    int lower_tiers;                      /* a disk or GPU tier was opened:
                                             host copies may be clean */
    uint32_t fail_inserts;                /* tests: kvtcd__index_fail_next */
} kvtcd_index;

/* tier is borrowed; it must outlive the index. Errors: KVTC_ENOMEM. */
int kvtcd_index_init(kvtcd_index *ix, kvtcd_tier *tier);
/* Drops every entry (calling the drop hook, releasing blob references)
 * and frees the tables. */
void kvtcd_index_fini(kvtcd_index *ix);
/* Set the hook called for every stored version that goes away. */
void kvtcd_index_set_drop_hook(kvtcd_index *ix, kvtcd_index_drop_fn fn,
                               void *arg);

/* The id of a tenant name (created on first use). Errors: KVTC_EINVAL
 * (empty or longer than 256 bytes), KVTC_ENOSPC (KVTCD_MAX_NAMESPACES). */
int kvtcd_index_namespace(kvtcd_index *ix, const char *tenant, uint32_t *ns);
/* The tenant name of ns (owned by the index), or NULL. */
const char *kvtcd_index_ns_name(const kvtcd_index *ix, uint32_t ns);

/* The live entry of (ns, key), or NULL. An expired, unpinned entry is
 * removed and reported absent. Does not touch the LRU. */
kvtcd_entry *kvtcd_index_find(kvtcd_index *ix, uint32_t ns,
                              const uint8_t key[KVTCD_KEY_BYTES],
                              uint64_t now_ms);
/* Mark e used now: LRU head. */
void kvtcd_index_touch(kvtcd_index *ix, kvtcd_entry *e, uint64_t now_ms);

/* Store a chunk: tmpl gives ns, key, metadata and the lower copies
 * (disk_state/dloc, gpu_state/gloc; its list, blob and gen fields are
 * ignored). The entry takes its own reference on blob (may be NULL when
 * tmpl names a lower copy). An existing entry of the same key is replaced
 * (the drop hook releases its copies), keeping its pins. The entry gets a
 * fresh gen. *out (may be NULL) gets the entry. Errors: KVTC_ENOMEM
 * (nothing changed), KVTC_EINVAL (no copy at all). */
int kvtcd_index_insert(kvtcd_index *ix, const kvtcd_entry *tmpl,
                       kvtcd_blob *blob, size_t off, uint64_t now_ms,
                       kvtcd_entry **out);
/* Tests only: the next n inserts fail with KVTC_ENOMEM (nothing changed),
 * as when memory runs out. */
void kvtcd__index_fail_next(kvtcd_index *ix, uint32_t n);
/* Remove and free e: drop hook, blob reference, child count. */
void kvtcd_index_remove(kvtcd_index *ix, kvtcd_entry *e);
/* Give up e's host copy (e must have a GPU or disk copy). */
void kvtcd_index_drop_host(kvtcd_index *ix, kvtcd_entry *e);
/* Make the bytes at blob->data + off e's host copy (a promotion; e has
 * none): a reference is taken, and e becomes the most recent host copy. */
void kvtcd_index_set_host(kvtcd_index *ix, kvtcd_entry *e, kvtcd_blob *blob, size_t off);

/* 1 when e's pins hold at now_ms. */
int kvtcd_entry_pinned(const kvtcd_entry *e, uint64_t now_ms);
/* 1 when e's put TTL has passed at now_ms. */
int kvtcd_entry_expired(const kvtcd_entry *e, uint64_t now_ms);
/* Add a pin (ttl_ms 0: until unpinned; else it lapses then) or remove one.
 * Removing from an unpinned entry is a no-op. */
void kvtcd_index_pin(kvtcd_index *ix, kvtcd_entry *e, int pin,
                     uint32_t ttl_ms, uint64_t now_ms);

/* Stored children of (ns, key): chunks whose parent is key. */
uint32_t kvtcd_index_children(const kvtcd_index *ix, uint32_t ns,
                              const uint8_t key[KVTCD_KEY_BYTES]);

/* Which entries a victim scan may take (besides being unpinned). */
typedef int (*kvtcd_index_filter_fn)(void *arg, const kvtcd_entry *e);
/* The entry to evict next among those unpinned and accepted by filter
 * (NULL: all): see the top of this file. NULL when none qualifies. */
kvtcd_entry *kvtcd_index_victim(kvtcd_index *ix, uint64_t now_ms,
                                kvtcd_index_filter_fn filter, void *arg);
/* The same among the entries with a host copy (the host list). */
kvtcd_entry *kvtcd_index_host_victim(kvtcd_index *ix, uint64_t now_ms,
                                     kvtcd_index_filter_fn filter, void *arg);

/* Allocate a host blob of size bytes, making room with instant steps only:
 * first drop host copies that have a GPU or disk copy (least recent
 * first), then evict whole entries that have a host copy (victim order),
 * skipping those with a write in flight. Errors: KVTC_EFULL (nothing more
 * to drop or evict), KVTC_ENOMEM. */
int kvtcd_index_reserve(kvtcd_index *ix, size_t size, uint64_t now_ms,
                        kvtcd_blob **out);

/* As kvtcd_index_reserve, for a second copy of a chunk a lower tier holds
 * (a promotion): only drops host copies that a GPU or disk copy also
 * holds, never evicts an entry. Evicting one there would lose a chunk
 * (in cache mode, one whose disk write is still queued) to make room for
 * a copy that already exists. Errors: KVTC_EFULL, KVTC_ENOMEM. */
int kvtcd_index_reserve_copy(kvtcd_index *ix, size_t size, kvtcd_blob **out);

/* The wire tier (Kvtc__Wire__Tier) a get serves e from: host when it has a
 * host copy, else GPU, else disk. */
int kvtcd_entry_wire_tier(const kvtcd_entry *e);

/* Number of leading keys of a chain present in ns; tiers[i] (may be NULL,
 * else n entries) gets each hit's wire tier. keys: n * 32 bytes. */
uint32_t kvtcd_index_lookup(kvtcd_index *ix, uint32_t ns,
                            const uint8_t *const *keys, uint32_t n,
                            uint64_t now_ms, int *tiers);

#endif
