/* store_host.c - the host-RAM tier as a slab (see store_host.h, tier.h).
 *
 * Why a slab: a put used to mmap a fresh buffer and register it, and the
 * kernel then faulted and zeroed its pages while the rendezvous filled
 * them (47% of a 4 MiB put's daemon time). Here the capacity is reserved
 * once, registered once, and a background thread keeps the first
 * KVTCD_HOST_PREFAULT_AHEAD bytes, and then four of the largest blobs
 * beyond the highest one, resident and pinned, so a put lands in memory
 * that is ready. The extent allocator
 * hands out low offsets first and prefers freed (resident) extents to the
 * untouched tail, so the resident prefix only grows as far as peak use
 * plus the window, and never beyond the capacity. */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <ucp/api/ucp.h>
#include <unistd.h>

#include "host_prefault.h"
#include "host_slab.h"
#include "kvtc_errors.h"
#include "log.h"
#include "store_host.h"
#include "wire.h"

#define HUGE_ALIGN (2u << 20) /* THP size on x86-64 */

typedef struct slab_blob {
    kvtcd_blob base;
    kvtcd_extent *ext;
    int own_memh; /* per-extent registration: unmap on release */
} slab_blob;

typedef struct slab_tier {
    kvtcd_tier base;
    ucp_context_h ucp;
    size_t page;
    uint8_t *region;
    size_t region_len;
    ucp_mem_h memh;       /* the whole region, or NULL */
    int per_extent;       /* register each blob's extent instead */
    kvtcd_slab slab;
    kvtcd_prefault *pf;   /* NULL when prefaulting is off */
    size_t wanted;        /* last target given to pf */
    size_t max_extent;    /* bytes of the largest extent handed out */
} slab_tier;

static int env_off(const char *name)
{
    const char *v = getenv(name);
    return v && (!strcmp(v, "0") || !strcmp(v, "off") || !strcmp(v, "no"));
}

static int reg_map(ucp_context_h ucp, void *p, size_t len, ucp_mem_h *out)
{
    ucp_mem_map_params_t mp = {
        .field_mask = UCP_MEM_MAP_PARAM_FIELD_ADDRESS |
                      UCP_MEM_MAP_PARAM_FIELD_LENGTH,
        .address = p,
        .length = len,
    };
    ucs_status_t st = ucp_mem_map(ucp, &mp, out);
    if (st != UCS_OK) {
        KVTCD_WARN("store", "ucp_mem_map failed bytes=%zu err=\"%s\"", len,
                   ucs_status_string(st));
        return KVTC_ENOMEM;
    }
    return 0;
}

/* A blob below a page lives outside the slab, in its own page-aligned
 * buffer (as before the slab). The tier's capacity counts blob bytes, not
 * pages (tier.h), and the index relies on N chunks of s bytes fitting
 * whenever N * s <= capacity; a page per tiny blob from the slab would
 * break that. Such chunks are eager-sized anyway: no rendezvous fills
 * them, so residency ahead of use buys nothing. */
static int small_alloc(slab_tier *h, slab_blob *b)
{
    void *p = NULL;
    if (posix_memalign(&p, h->page, h->page) != 0)
        return KVTC_ENOMEM;
    b->base.data = p;
    if (h->ucp) {
        ucp_mem_h memh;
        if (reg_map(h->ucp, p, h->page, &memh) < 0) {
            free(p);
            return KVTC_ENOMEM;
        }
        b->base.memh = memh;
        b->own_memh = 1;
    }
    return 0;
}

static int extent_alloc(slab_tier *h, slab_blob *b, size_t size)
{
    size_t pages = (size + h->page - 1) / h->page;
    int rc = kvtcd_slab_alloc(&h->slab, pages, &b->ext);
    if (rc < 0)
        return rc; /* EFULL (fragmented too): the index evicts and retries */
    b->base.data = h->region + b->ext->off * h->page;
    b->base.memh = h->memh;
    if (h->per_extent && h->ucp) {
        ucp_mem_h memh;
        rc = reg_map(h->ucp, b->base.data, pages * h->page, &memh);
        if (rc < 0) {
            kvtcd_slab_free(&h->slab, b->ext);
            return rc;
        }
        b->base.memh = memh;
        b->own_memh = 1;
    }
    if (pages * h->page > h->max_extent)
        h->max_extent = pages * h->page;
    if (h->pf) {
        /* A few of the largest blobs ahead: enough to absorb a burst of
         * puts while the thread catches up, without zeroing far more than
         * is ever used when one core is all there is. */
        size_t ahead = 4 * h->max_extent;
        if (ahead < KVTCD_HOST_PREFAULT_MIN)
            ahead = KVTCD_HOST_PREFAULT_MIN;
        if (ahead > KVTCD_HOST_PREFAULT_AHEAD)
            ahead = KVTCD_HOST_PREFAULT_AHEAD;
        size_t want = h->slab.hwm * h->page + ahead;
        if (want > h->region_len)
            want = h->region_len;
        if (want > h->wanted) {
            h->wanted = want;
            kvtcd_prefault_want(h->pf, want);
        }
    }
    return 0;
}

static int slab_alloc(kvtcd_tier *t, size_t size, kvtcd_blob **out)
{
    slab_tier *h = (slab_tier *)t;
    if (!kvtcd_tier_fits(t, size))
        return KVTC_EFULL;
    slab_blob *b = calloc(1, sizeof *b);
    if (!b)
        return KVTC_ENOMEM;
    int rc = size < h->page ? small_alloc(h, b) : extent_alloc(h, b, size);
    if (rc < 0) {
        free(b);
        return rc;
    }
    kvtcd_tier_adopt(t, &b->base, size, out);
    return 0;
}

static void slab_release(kvtcd_tier *t, kvtcd_blob *kb)
{
    slab_tier *h = (slab_tier *)t;
    slab_blob *b = (slab_blob *)kb;
    kvtcd_tier_forget(t, kb);
    if (b->own_memh)
        ucp_mem_unmap(h->ucp, (ucp_mem_h)kb->memh);
    if (b->ext)
        kvtcd_slab_free(&h->slab, b->ext); /* stays resident for reuse */
    else
        free(kb->data);
    free(b);
}

static void slab_destroy(kvtcd_tier *t)
{
    slab_tier *h = (slab_tier *)t;
    if (t->blobs)
        KVTCD_ERROR("store", "host tier destroyed with live blobs=%llu",
                    (unsigned long long)t->blobs);
    kvtcd_prefault_stop(h->pf);
    if (h->memh)
        ucp_mem_unmap(h->ucp, h->memh);
    kvtcd_slab_fini(&h->slab);
    munmap(h->region, h->region_len);
    free(h);
}

static const kvtcd_tier_ops slab_ops = {slab_alloc, slab_release,
                                        slab_destroy};

/* len bytes of address space, 2 MiB-aligned when len allows so that THP
 * can back it, nothing populated or charged yet (MAP_NORESERVE). */
static uint8_t *reserve(size_t len)
{
    size_t extra = len >= HUGE_ALIGN ? HUGE_ALIGN : 0;
    uint8_t *p = mmap(NULL, len + extra, PROT_READ | PROT_WRITE,
                      MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (p == MAP_FAILED)
        return NULL;
    if (extra) {
        uint8_t *a = (uint8_t *)(((uintptr_t)p + HUGE_ALIGN - 1) &
                                 ~(uintptr_t)(HUGE_ALIGN - 1));
        if (a > p)
            munmap(p, (size_t)(a - p));
        if (a + len < p + len + extra)
            munmap(a + len, (size_t)(p + len + extra - (a + len)));
        p = a;
        /* Advice only: without THP it is a no-op. */
        (void)madvise(p, len, MADV_HUGEPAGE);
    }
    return p;
}

int kvtcd_store_host_create(uint64_t capacity, void *ucp_context,
                            kvtcd_tier **out)
{
    return kvtcd_store_host_create_ex(capacity, ucp_context, NULL, out);
}

int kvtcd_store_host_create_ex(uint64_t capacity, void *ucp_context,
                               const kvtcd_host_opts *opts, kvtcd_tier **out)
{
    const uint32_t known = KVTCD_HOST_OPT_PREFAULT | KVTCD_HOST_OPT_PIN;
    if (!out || capacity == 0 || (opts && (opts->field_mask & ~known)))
        return KVTC_EINVAL;
    /* An option the caller set wins over the environment. */
    int prefault = !env_off("KVTCD_HOST_PREFAULT");
    int pin = !env_off("KVTCD_HOST_PIN");
    if (opts && (opts->field_mask & KVTCD_HOST_OPT_PREFAULT))
        prefault = opts->prefault != 0;
    if (opts && (opts->field_mask & KVTCD_HOST_OPT_PIN))
        pin = opts->pin != 0;
    if (env_off("KVTCD_HOST_SLAB"))
        return kvtcd__store_host_blob_create(capacity, ucp_context, out);
    if (capacity > SIZE_MAX / 2)
        return KVTC_EINVAL;
    int rc = KVTC_ENOMEM;
    slab_tier *h = calloc(1, sizeof *h);
    if (!h)
        return KVTC_ENOMEM;
    long pg = sysconf(_SC_PAGESIZE);
    h->page = pg > 0 ? (size_t)pg : 4096;
    /* Rounded up: blobs take whole pages, and a blob of capacity bytes
     * must fit in an empty tier. */
    h->region_len = ((size_t)capacity + h->page - 1) / h->page * h->page;
    h->ucp = ucp_context;
    h->region = reserve(h->region_len);
    if (!h->region) {
        KVTCD_ERROR("store", "cannot reserve the host slab bytes=%zu "
                             "err=\"%s\"", h->region_len, strerror(errno));
        goto fail_h;
    }
    rc = kvtcd_slab_init(&h->slab, h->region_len / h->page);
    if (rc < 0)
        goto fail_region;
    const char *reg = getenv("KVTCD_HOST_REGISTER");
    h->per_extent = reg && !strcmp(reg, "extent");
    if (h->ucp && !h->per_extent) {
        /* UCX 1.13 registers a reserved, not yet populated region without
         * touching it (checked: 4 GiB over tcp/sm/self in 0.1 ms, RSS
         * unchanged); a transport that must pin at registration would
         * fail or populate here, so fall back to per-extent then. */
        if (reg_map(h->ucp, h->region, h->region_len, &h->memh) < 0) {
            KVTCD_WARN("store", "registering each blob instead");
            h->memh = NULL;
            h->per_extent = 1;
        }
    }
    if (prefault) {
        rc = kvtcd_prefault_start(h->region, h->region_len,
                                  KVTCD_HOST_PREFAULT_AHEAD, pin, &h->pf);
        if (rc < 0)
            goto fail_reg;
        h->wanted = KVTCD_HOST_PREFAULT_AHEAD < h->region_len
                        ? KVTCD_HOST_PREFAULT_AHEAD
                        : h->region_len;
    }
    h->base.ops = &slab_ops;
    h->base.name = "host";
    h->base.wire_tier = KVTC__WIRE__TIER__TIER_HOST;
    h->base.capacity = capacity;
    KVTCD_INFO("store", "host tier open bytes=%zu registered=%s "
                        "prefault=%s pin=%s",
               h->region_len,
               h->memh ? "region" : (h->ucp ? "extent" : "none"),
               h->pf ? "on" : "off", h->pf && pin ? "on" : "off");
    *out = &h->base;
    return 0;

fail_reg:
    if (h->memh)
        ucp_mem_unmap(h->ucp, h->memh);
    kvtcd_slab_fini(&h->slab);
fail_region:
    munmap(h->region, h->region_len);
fail_h:
    free(h);
    return rc;
}

static int is_host(const kvtcd_tier *t)
{
    return t && t->name && !strcmp(t->name, "host") &&
           t->wire_tier == KVTC__WIRE__TIER__TIER_HOST;
}

int kvtcd_store_host_region(kvtcd_tier *t, void **base, size_t *len)
{
    if (!is_host(t) || !base || !len)
        return KVTC_EINVAL;
    if (t->ops != &slab_ops)
        return KVTC_ENOTSUP;
    slab_tier *h = (slab_tier *)t;
    *base = h->region;
    *len = h->region_len;
    return 0;
}

int kvtcd_store_host_stats(kvtcd_tier *t, kvtcd_host_stats *out)
{
    if (!is_host(t) || !out)
        return KVTC_EINVAL;
    memset(out, 0, sizeof *out);
    if (t->ops != &slab_ops)
        return 0;
    slab_tier *h = (slab_tier *)t;
    out->slab = 1;
    out->region_registered = h->memh != NULL;
    out->region_bytes = h->region_len;
    out->resident_bytes = kvtcd_prefault_resident(h->pf);
    out->locked_bytes = kvtcd_prefault_locked(h->pf);
    out->high_water_bytes = (uint64_t)h->slab.hwm * h->page;
    out->free_bytes = (uint64_t)h->slab.free_pages * h->page;
    out->free_extents = h->slab.free_extents;
    out->largest_free_bytes =
        (uint64_t)kvtcd_slab_largest_free(&h->slab) * h->page;
    out->frag_full = h->slab.frag_fails;
    return 0;
}

int kvtcd_store_host_wait_resident(kvtcd_tier *t, size_t bytes,
                                   int timeout_ms)
{
    if (!is_host(t))
        return KVTC_EINVAL;
    if (t->ops != &slab_ops || !((slab_tier *)t)->pf)
        return 0;
    return kvtcd_prefault_wait(((slab_tier *)t)->pf, bytes, timeout_ms);
}
