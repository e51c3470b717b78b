/* host_slab.h - the extent allocator behind the host tier's slab: carves
 * one contiguous range of pages [0, pages) into extents and takes them
 * back with coalescing. It knows offsets only (no memory), so the tier
 * decides what the pages are (one mmap'd, registered region).
 *
 * Free extents sit in size-class lists (two levels, TLSF style: a power of
 * two, then 4 sub-ranges), found through a bitmap, so alloc and free do
 * bounded work whatever the number of extents. Within the request's own
 * class at most KVTCD_SLAB_SCAN extents are looked at (best fit among
 * them); otherwise the head of the first larger non-empty class is split,
 * which fits by construction. Splits hand out the front of a free extent,
 * so a fresh slab fills from offset 0 upward and reused (already
 * resident) extents are preferred over the never-touched tail, which is
 * one large extent in the highest class.
 *
 * Fragmentation: alloc can fail although enough pages are free in total
 * (no single free extent is large enough, or the fitting one is beyond the
 * scan bound); it then counts frag_fails. The caller treats that as full.
 *
 * Why not extent_alloc.h, the GPU tier's allocator of the same kind: this
 * one counts pages, places at the front so resident pages are reused and
 * tracks the high-water mark the prefaulter follows; the GPU tier's adds a
 * find-by-offset hash, deferred (hidden) frees and per-block counters,
 * which the host tier does not need (its blob holds the extent).
 *
 * Not thread-safe: one owner (the loop thread). */
#ifndef KVTCD_HOST_SLAB_H
#define KVTCD_HOST_SLAB_H

#include <stddef.h>
#include <stdint.h>

#define KVTCD_SLAB_SCAN 16u   /* extents looked at in the request's class */
#define KVTCD_SLAB_SUB_BITS 2 /* 4 sub-classes per power of two */
#define KVTCD_SLAB_CLASSES (64u << KVTCD_SLAB_SUB_BITS)

typedef struct kvtcd_extent {
    size_t off;   /* first page */
    size_t len;   /* pages */
    int free;
    struct kvtcd_extent *addr_prev, *addr_next; /* all extents, by offset */
    struct kvtcd_extent *next, *prev;           /* its class list, if free */
} kvtcd_extent;

typedef struct kvtcd_slab {
    size_t pages;          /* the whole range */
    size_t free_pages;     /* in free extents */
    size_t free_extents;
    size_t hwm;            /* highest end (pages) ever allocated */
    uint64_t frag_fails;   /* allocs refused with enough pages free */
    uint64_t bitmap[KVTCD_SLAB_CLASSES / 64];
    kvtcd_extent *lists[KVTCD_SLAB_CLASSES];
    kvtcd_extent *head;    /* lowest offset */
} kvtcd_slab;

/* One free extent covering [0, pages). KVTC_EINVAL when pages is 0,
 * KVTC_ENOMEM when the first node cannot be allocated. */
int kvtcd_slab_init(kvtcd_slab *s, size_t pages);

/* Free every node. Extents still allocated become invalid. */
void kvtcd_slab_fini(kvtcd_slab *s);

/* An extent of exactly pages pages (>= 1), owned by the caller until
 * kvtcd_slab_free. KVTC_EFULL when no free extent can take it (frag_fails
 * counts the cases where free_pages would have been enough), KVTC_ENOMEM
 * when a node for the split cannot be allocated, KVTC_EINVAL for 0. */
int kvtcd_slab_alloc(kvtcd_slab *s, size_t pages, kvtcd_extent **out);

/* Return an extent from kvtcd_slab_alloc; merges it with free neighbours
 * (the node of e, or of a neighbour, may be freed: do not use e after). */
void kvtcd_slab_free(kvtcd_slab *s, kvtcd_extent *e);

/* Pages of the largest free extent. O(extents in the highest non-empty
 * class): for statistics and tests, not the hot path. */
size_t kvtcd_slab_largest_free(const kvtcd_slab *s);

#endif
