/* extent_alloc.h - an extent allocator over a range of bytes it does not
 * touch (the GPU tier's slab): host-side metadata only.
 *
 * Segregated fit with coalescing. Every block, free or used, sits in an
 * address-ordered list, so a free merges with its neighbours in O(1). Free
 * blocks also sit in one of 64 lists by floor(log2(size)), with a bitmap of
 * the non-empty lists: an alloc tries a few blocks of its own class, then
 * takes the head of the next non-empty larger class, where every block
 * fits. Used blocks are found by offset through an open-address hash.
 * Every call is O(1) (amortized for the hash's growth).
 *
 * Why not host_slab.h, the host tier's allocator of the same kind: the GPU
 * tier looks its blocks up by offset (the index keeps only the offset),
 * hides a block whose free waits for copies still in flight, and keeps
 * their counters in the block (user fields); the host tier keeps the
 * extent itself in its blob and wants none of that, but pages, front-first
 * placement and a high-water mark for prefaulting. One allocator could
 * carry both sets; until then each stays the smaller one its tier needs.
 *
 * Not thread-safe: one owner thread (the daemon's loop). */
#ifndef KVTCD_EXTENT_ALLOC_H
#define KVTCD_EXTENT_ALLOC_H

#include <stdint.h>

#define KVTCD_XA_CLASSES 64

typedef struct kvtcd_xblock {
    uint64_t off, len;          /* len: rounded up to the alignment */
    /* Owned by the caller while the block is used (zero when handed
     * out): the GPU tier counts in-flight copies here. */
    uint32_t user[2];
    uint8_t user_flag;
    /* Private to the allocator. */
    uint8_t is_free, cls, in_tab;
    struct kvtcd_xblock *aprev, *anext, *fprev, *fnext;
} kvtcd_xblock;

typedef struct kvtcd_xalloc {
    uint64_t capacity, align, used;
    uint64_t used_blocks, free_blocks;
    kvtcd_xblock *first;
    kvtcd_xblock *free_head[KVTCD_XA_CLASSES];
    uint64_t free_map;
    kvtcd_xblock **tab;
    uint32_t tab_mask, tab_count;
} kvtcd_xalloc;

/* Manage [0, capacity) in multiples of align (a power of two; capacity is
 * rounded down to it). KVTC_EINVAL, KVTC_ENOMEM. */
int kvtcd_xalloc_init(kvtcd_xalloc *a, uint64_t capacity, uint64_t align);
/* Free all metadata; blocks still used are dropped with it. */
void kvtcd_xalloc_fini(kvtcd_xalloc *a);

/* A used block of at least len bytes (len rounded up to align). *out stays
 * owned by the allocator, valid until kvtcd_xalloc_put. KVTC_EINVAL (len
 * 0), KVTC_EFULL (no free block fits), KVTC_ENOMEM. */
int kvtcd_xalloc_get(kvtcd_xalloc *a, uint64_t len, kvtcd_xblock **out);
/* The used, findable block starting at off, or NULL. */
kvtcd_xblock *kvtcd_xalloc_find(const kvtcd_xalloc *a, uint64_t off);
/* Make b unfindable (kvtcd_xalloc_find returns NULL for it) while it stays
 * used: a free deferred until b's copies report. Idempotent. */
void kvtcd_xalloc_hide(kvtcd_xalloc *a, kvtcd_xblock *b);
/* Return b (found or hidden) to the free space; b is invalid after. */
void kvtcd_xalloc_put(kvtcd_xalloc *a, kvtcd_xblock *b);
/* The largest free block's size, for stats and tests (O(classes) plus the
 * blocks of the largest non-empty class). */
uint64_t kvtcd_xalloc_largest_free(const kvtcd_xalloc *a);

#endif
