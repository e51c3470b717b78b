/* tier.h - a storage tier behind a small ops table, so the GPU and NVMe
 * tiers and the compressing codec of later issues slot in beside the host
 * RAM store (store_host.c).
 *
 * A tier hands out blobs: buffers of one allocation, reference counted. An
 * index entry holds a reference to the blob its bytes live in (at an
 * offset: a batch put lands in one blob); an in-flight send or receive holds
 * another, so evicting or replacing an entry never frees memory UCX is
 * still reading or writing. The tier counts a blob's bytes as used from
 * alloc until the last reference goes.
 *
 * Loop-thread only: no locking. */
#ifndef KVTCD_TIER_H
#define KVTCD_TIER_H

#include <stddef.h>
#include <stdint.h>

typedef struct kvtcd_tier kvtcd_tier;

typedef struct kvtcd_blob {
    kvtcd_tier *tier;
    uint32_t refs;
    uint8_t *data;   /* host-addressable bytes (staging for device tiers) */
    size_t size;
    void *memh;      /* ucp_mem_h when registered with UCX, else NULL */
} kvtcd_blob;

typedef struct kvtcd_tier_ops {
    /* A blob of size bytes with one reference. KVTC_EFULL when it would
     * exceed the tier's capacity (the caller may evict and retry),
     * KVTC_ENOMEM when the system refuses memory. */
    int (*alloc)(kvtcd_tier *t, size_t size, kvtcd_blob **out);
    /* Called by kvtcd_blob_unref when the last reference goes. */
    void (*release)(kvtcd_tier *t, kvtcd_blob *b);
    /* Free the tier; every blob must be released before. */
    void (*destroy)(kvtcd_tier *t);
} kvtcd_tier_ops;

struct kvtcd_tier {
    const kvtcd_tier_ops *ops;
    const char *name;    /* "host", "gpu", "disk" */
    int wire_tier;       /* Kvtc__Wire__Tier */
    uint64_t capacity;   /* bytes */
    uint64_t used;       /* bytes of live blobs */
    uint64_t blobs;      /* live blobs */
};

static inline int kvtcd_tier_alloc(kvtcd_tier *t, size_t size,
                                   kvtcd_blob **out)
{
    return t->ops->alloc(t, size, out);
}

/* For ops->alloc: whether size more bytes stay within the capacity
 * (written so that it cannot overflow). */
static inline int kvtcd_tier_fits(const kvtcd_tier *t, size_t size)
{
    return size <= t->capacity && t->used <= t->capacity - size;
}

/* For ops->alloc: b's accounting from birth (one reference, size bytes
 * used, one live blob); ops->release undoes it with kvtcd_tier_forget. */
static inline void kvtcd_tier_adopt(kvtcd_tier *t, kvtcd_blob *b, size_t size,
                                    kvtcd_blob **out)
{
    b->tier = t;
    b->refs = 1;
    b->size = size;
    t->used += size;
    t->blobs++;
    *out = b;
}

static inline void kvtcd_tier_forget(kvtcd_tier *t, const kvtcd_blob *b)
{
    t->used -= b->size;
    t->blobs--;
}

static inline void kvtcd_blob_ref(kvtcd_blob *b)
{
    b->refs++;
}

static inline void kvtcd_blob_unref(kvtcd_blob *b)
{
    if (b && --b->refs == 0)
        b->tier->ops->release(b->tier, b);
}

static inline void kvtcd_tier_destroy(kvtcd_tier *t)
{
    if (t)
        t->ops->destroy(t);
}

/* The host-RAM tier: page-aligned buffers, registered with UCX
 * (ucp_mem_map) when ucp_context (a ucp_context_h) is not NULL, so sends
 * from them are zero-copy. capacity in bytes. */
int kvtcd_store_host_create(uint64_t capacity, void *ucp_context,
                            kvtcd_tier **out);

#endif
