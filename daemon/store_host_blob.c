/* store_host_blob.c - the host-RAM tier as one buffer per blob: the
 * store before the slab (store_host.c), kept selectable
 * (KVTCD_HOST_SLAB=0) so the two can be measured side by side.
 *
 * Buffers are page-aligned and registered with UCX. Large ones come from
 * mmap with transparent huge pages requested (fewer page faults while a
 * rendezvous fills them). Freed buffers are kept registered in a small
 * cache and handed out again for a chunk of the same page-rounded size:
 * KV chunks of one model are all one size, so under churn (evict one, store
 * one) a put costs no mmap, no page faults and no registration. Cached
 * bytes count against the capacity too (RSS stays within --host-mem): the
 * cache is emptied before the tier reports itself full. */
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <ucp/api/ucp.h>
#include <unistd.h>

#include "kvtc_errors.h"
#include "log.h"
#include "store_host.h"
#include "wire.h"

#define HUGE_MIN (2u << 20)     /* mmap + MADV_HUGEPAGE from this size */
#define CACHE_MAX_BLOBS 256
#define CACHE_MIN_BYTES (64u << 10) /* smaller buffers are cheap to redo */

typedef struct host_blob {
    kvtcd_blob base;
    size_t cap;                 /* page-rounded bytes mapped */
    int mapped;                 /* mmap (else posix_memalign) */
    struct host_blob *next;     /* in the cache */
} host_blob;

typedef struct host_tier {
    kvtcd_tier base;
    ucp_context_h ucp;
    size_t page;
    host_blob *cache;
    uint32_t cached;
    uint64_t cached_bytes;
} host_tier;

static void blob_destroy(host_tier *h, host_blob *b)
{
    if (b->base.memh)
        ucp_mem_unmap(h->ucp, (ucp_mem_h)b->base.memh);
    if (b->mapped)
        munmap(b->base.data, b->cap);
    else
        free(b->base.data);
    free(b);
}

static void cache_drop_one(host_tier *h)
{
    host_blob *b = h->cache;
    h->cache = b->next;
    h->cached--;
    h->cached_bytes -= b->cap;
    blob_destroy(h, b);
}

static host_blob *cache_take(host_tier *h, size_t cap)
{
    for (host_blob **pp = &h->cache; *pp; pp = &(*pp)->next) {
        if ((*pp)->cap == cap) {
            host_blob *b = *pp;
            *pp = b->next;
            h->cached--;
            h->cached_bytes -= b->cap;
            return b;
        }
    }
    return NULL;
}

static host_blob *blob_create(host_tier *h, size_t cap)
{
    host_blob *b = calloc(1, sizeof *b);
    if (!b)
        return NULL;
    void *p = NULL;
    if (cap >= HUGE_MIN) {
        p = mmap(NULL, cap, PROT_READ | PROT_WRITE,
                 MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        if (p == MAP_FAILED) {
            free(b);
            return NULL;
        }
        /* Advice only: without THP it is a no-op. */
        (void)madvise(p, cap, MADV_HUGEPAGE);
        b->mapped = 1;
    } else if (posix_memalign(&p, h->page, cap) != 0) {
        free(b);
        return NULL;
    }
    b->base.data = p;
    b->cap = cap;
    if (h->ucp) {
        ucp_mem_map_params_t mp = {
            .field_mask = UCP_MEM_MAP_PARAM_FIELD_ADDRESS |
                          UCP_MEM_MAP_PARAM_FIELD_LENGTH,
            .address = p,
            .length = cap,
        };
        ucp_mem_h memh;
        ucs_status_t st = ucp_mem_map(h->ucp, &mp, &memh);
        if (st != UCS_OK) {
            KVTCD_WARN("store", "ucp_mem_map failed bytes=%zu err=\"%s\"", cap,
                       ucs_status_string(st));
            b->base.memh = NULL;
            blob_destroy(h, b);
            return NULL;
        }
        b->base.memh = memh;
    }
    return b;
}

static int host_alloc(kvtcd_tier *t, size_t size, kvtcd_blob **out)
{
    host_tier *h = (host_tier *)t;
    if (!kvtcd_tier_fits(t, size))
        return KVTC_EFULL;
    size_t cap = (size + h->page - 1) / h->page * h->page;
    if (cap == 0)
        cap = h->page; /* empty chunks still get a distinct buffer */
    host_blob *b = cache_take(h, cap);
    if (!b) {
        /* Make room for a new buffer: cached ones go first. */
        while (h->cache && t->used + h->cached_bytes + cap > t->capacity)
            cache_drop_one(h);
        b = blob_create(h, cap);
        if (!b)
            return KVTC_ENOMEM;
    }
    b->next = NULL;
    kvtcd_tier_adopt(t, &b->base, size, out);
    return 0;
}

static void host_release(kvtcd_tier *t, kvtcd_blob *kb)
{
    host_tier *h = (host_tier *)t;
    host_blob *b = (host_blob *)kb;
    kvtcd_tier_forget(t, kb);
    if (b->cap >= CACHE_MIN_BYTES && h->cached < CACHE_MAX_BLOBS &&
        t->used + h->cached_bytes + b->cap <= t->capacity) {
        b->next = h->cache;
        h->cache = b;
        h->cached++;
        h->cached_bytes += b->cap;
        return;
    }
    blob_destroy(h, b);
}

static void host_destroy(kvtcd_tier *t)
{
    host_tier *h = (host_tier *)t;
    if (t->blobs)
        KVTCD_ERROR("store", "host tier destroyed with live blobs=%llu",
                    (unsigned long long)t->blobs);
    while (h->cache)
        cache_drop_one(h);
    free(t);
}

static const kvtcd_tier_ops host_ops = {host_alloc, host_release,
                                        host_destroy};

int kvtcd__store_host_blob_create(uint64_t capacity, void *ucp_context,
                                  kvtcd_tier **out)
{
    if (!out || capacity == 0)
        return KVTC_EINVAL;
    host_tier *h = calloc(1, sizeof *h);
    if (!h)
        return KVTC_ENOMEM;
    long pg = sysconf(_SC_PAGESIZE);
    h->page = pg > 0 ? (size_t)pg : 4096;
    h->ucp = ucp_context;
    h->base.ops = &host_ops;
    h->base.name = "host";
    h->base.wire_tier = KVTC__WIRE__TIER__TIER_HOST;
    h->base.capacity = capacity;
    *out = &h->base;
    return 0;
}
