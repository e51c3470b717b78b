/* store_host.c - the host-RAM tier (see tier.h). */
#include <stdlib.h>
#include <string.h>
#include <ucp/api/ucp.h>
#include <unistd.h>

#include "kvtc_errors.h"
#include "log.h"
#include "tier.h"
#include "wire.h"

typedef struct host_tier {
    kvtcd_tier base;
    ucp_context_h ucp;
    size_t page;
} host_tier;

static int host_alloc(kvtcd_tier *t, size_t size, kvtcd_blob **out)
{
    host_tier *h = (host_tier *)t;
    if (size > t->capacity || t->used > t->capacity - size)
        return KVTC_EFULL;
    kvtcd_blob *b = calloc(1, sizeof *b);
    if (!b)
        return KVTC_ENOMEM;
    /* Page-aligned and rounded to pages: what registration pins anyway,
     * and what O_DIRECT writes to the disk tier will want. */
    size_t rounded = (size + h->page - 1) / h->page * h->page;
    if (rounded == 0)
        rounded = h->page; /* empty chunks still get a distinct buffer */
    void *p = NULL;
    if (posix_memalign(&p, h->page, rounded) != 0) {
        free(b);
        return KVTC_ENOMEM;
    }
    if (h->ucp) {
        ucp_mem_map_params_t mp = {
            .field_mask = UCP_MEM_MAP_PARAM_FIELD_ADDRESS |
                          UCP_MEM_MAP_PARAM_FIELD_LENGTH,
            .address = p,
            .length = rounded,
        };
        ucp_mem_h memh;
        ucs_status_t st = ucp_mem_map(h->ucp, &mp, &memh);
        if (st != UCS_OK) {
            KVTCD_WARN("store", "ucp_mem_map failed bytes=%zu err=\"%s\"",
                       rounded, ucs_status_string(st));
            free(p);
            free(b);
            return KVTC_ENOMEM;
        }
        b->memh = memh;
    }
    b->tier = t;
    b->refs = 1;
    b->data = p;
    b->size = size;
    t->used += size;
    t->blobs++;
    *out = b;
    return 0;
}

static void host_release(kvtcd_tier *t, kvtcd_blob *b)
{
    host_tier *h = (host_tier *)t;
    if (b->memh)
        ucp_mem_unmap(h->ucp, (ucp_mem_h)b->memh);
    t->used -= b->size;
    t->blobs--;
    free(b->data);
    free(b);
}

static void host_destroy(kvtcd_tier *t)
{
    if (t->blobs)
        KVTCD_ERROR("store", "host tier destroyed with live blobs=%llu",
                    (unsigned long long)t->blobs);
    free(t);
}

static const kvtcd_tier_ops host_ops = {host_alloc, host_release,
                                        host_destroy};

int kvtcd_store_host_create(uint64_t capacity, void *ucp_context,
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
