/* index.h - namespace + 32-byte key -> chunk entry, with an LRU list for
 * eviction.
 *
 * One hash table for every namespace (the namespace id is part of the key),
 * hashed with a per-process random seed so clients cannot aim collisions
 * into one bucket. Entries sit on one LRU list (most recent at the head);
 * eviction walks from the tail and skips pinned entries. Expiry (put TTL)
 * and pin TTLs are checked lazily against the caller's clock (now_ms), so
 * tests drive time explicitly.
 *
 * Loop-thread only. */
#ifndef KVTCD_INDEX_H
#define KVTCD_INDEX_H

#include <stddef.h>
#include <stdint.h>

#include "kvtc_codec.h"
#include "tier.h"

#define KVTCD_KEY_BYTES 32
#define KVTCD_MAX_NAMESPACES 4096

typedef struct kvtcd_entry {
    struct kvtcd_entry *hnext;            /* hash chain */
    struct kvtcd_entry *lru_prev, *lru_next;
    uint32_t ns;
    uint8_t key[KVTCD_KEY_BYTES];
    uint8_t parent[KVTCD_KEY_BYTES];
    uint8_t has_parent;
    uint8_t has_layout;
    uint8_t encoding;                     /* Kvtc__Wire__Encoding */
    uint32_t first_pos, n_tokens, chunk_flags;
    kvtc_layout layout;
    uint64_t size;
    uint64_t checksum;                    /* XXH3-64 of the bytes */
    kvtcd_blob *blob;                     /* location: blob->tier */
    size_t off;                           /* bytes at blob->data + off */
    uint32_t pins;
    uint64_t pin_deadline_ms;             /* 0: pins never lapse */
    uint64_t expire_ms;                   /* 0: never */
    uint64_t atime_ms;
} kvtcd_entry;

typedef struct kvtcd_index {
    kvtcd_entry **buckets;
    size_t nbuckets;                      /* power of two */
    size_t count;
    uint64_t seed;
    kvtcd_entry *lru_head, *lru_tail;
    kvtcd_tier *tier;                     /* where new chunks go */
    char **ns_names;
    uint32_t n_ns;
    uint64_t evictions;
    uint64_t expirations;
} kvtcd_index;

/* tier is borrowed; it must outlive the index. */
int kvtcd_index_init(kvtcd_index *ix, kvtcd_tier *tier);
/* Drops every entry (and their blob references) and frees the table. */
void kvtcd_index_fini(kvtcd_index *ix);

/* The id of a tenant name (created on first use). Errors: KVTC_EINVAL
 * (empty or longer than 256 bytes), KVTC_ENOSPC (KVTCD_MAX_NAMESPACES). */
int kvtcd_index_namespace(kvtcd_index *ix, const char *tenant, uint32_t *ns);

/* The live entry of (ns, key), or NULL. An expired entry is removed and
 * reported absent. Does not touch the LRU. */
kvtcd_entry *kvtcd_index_find(kvtcd_index *ix, uint32_t ns,
                              const uint8_t key[KVTCD_KEY_BYTES],
                              uint64_t now_ms);
/* Mark e used now: LRU head. */
void kvtcd_index_touch(kvtcd_index *ix, kvtcd_entry *e, uint64_t now_ms);

/* Store a chunk: tmpl gives ns, key, metadata (its list/blob fields are
 * ignored); the entry takes its own reference on blob. An existing entry of
 * the same key is replaced, keeping its pins. *out (may be NULL) gets the
 * entry. Errors: KVTC_ENOMEM. */
int kvtcd_index_insert(kvtcd_index *ix, const kvtcd_entry *tmpl,
                       kvtcd_blob *blob, size_t off, uint64_t now_ms,
                       kvtcd_entry **out);
/* Remove and free e, dropping its blob reference. */
void kvtcd_index_remove(kvtcd_index *ix, kvtcd_entry *e);

/* 1 when e's pins hold at now_ms. */
int kvtcd_entry_pinned(const kvtcd_entry *e, uint64_t now_ms);
/* Add a pin (ttl_ms 0: until unpinned; else it lapses then) or remove one.
 * Removing from an unpinned entry is a no-op. */
void kvtcd_index_pin(kvtcd_index *ix, kvtcd_entry *e, int pin,
                     uint32_t ttl_ms, uint64_t now_ms);

/* Allocate a blob of size bytes from the index's tier, evicting unpinned
 * entries from the LRU tail as needed. Errors: KVTC_EFULL (nothing more to
 * evict), KVTC_ENOMEM. */
int kvtcd_index_reserve(kvtcd_index *ix, size_t size, uint64_t now_ms,
                        kvtcd_blob **out);

/* Number of leading keys of a chain present in ns; tiers[i] (may be NULL,
 * else n entries) gets each hit's wire tier. keys: n * 32 bytes. */
uint32_t kvtcd_index_lookup(kvtcd_index *ix, uint32_t ns,
                            const uint8_t *const *keys, uint32_t n,
                            uint64_t now_ms, int *tiers);

#endif
