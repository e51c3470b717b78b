/* store_host.h - what the host-RAM tier offers beyond tier.h: its region
 * (for other tiers that page-lock it for device copies) and its
 * statistics. kvtcd_store_host_create itself stays declared in tier.h.
 *
 * Two implementations, picked at create time:
 *  - the slab (default): one region of the tier's capacity, reserved at
 *    start (MAP_NORESERVE, huge pages requested), registered with UCX once,
 *    carved into page-aligned blobs by an extent allocator (host_slab.h)
 *    and made resident and pinned ahead of use by a background thread
 *    (host_prefault.h). Released extents stay resident for reuse; RSS stays
 *    within the capacity (rounded up to a page). A blob that does not fit
 *    in any free extent although enough bytes are free (fragmentation, or
 *    the up-to-a-page rounding of each extent) is refused with KVTC_EFULL
 *    like a full tier, so the index evicts and retries. Blobs below one
 *    page are separate page-aligned buffers outside the region, as before:
 *    the capacity counts blob bytes (tier.h) and N tiny chunks must fit
 *    whenever their bytes do; they are eager-sized, so residency ahead of
 *    use buys them nothing.
 *  - per-blob buffers (the earlier store: mmap + ucp_mem_map per blob, a
 *    small cache of freed ones), kept to compare against.
 *
 * Environment (read once at create; for benchmarks and tests; an option
 * given to kvtcd_store_host_create_ex - kvtcd's --host-prefault and
 * --host-pin - overrides the variable):
 *   KVTCD_HOST_SLAB=0       per-blob buffers instead of the slab
 *   KVTCD_HOST_PREFAULT=0   slab without the prefault/pin thread
 *   KVTCD_HOST_PIN=0        prefault without mlock
 *   KVTCD_HOST_REGISTER=extent  register each blob's extent, not the
 *                           region (the fallback when registering the
 *                           whole region fails; selectable to test it)
 *
 * Loop-thread only, like tier.h, unless a function says otherwise. */
#ifndef KVTCD_STORE_HOST_H
#define KVTCD_STORE_HOST_H

#include <stddef.h>
#include <stdint.h>

#include "tier.h"

/* Made resident at start (an idle daemon has time for it), and the most
 * kept resident beyond the highest blob handed out; that window is four of
 * the largest blobs so far, at least KVTCD_HOST_PREFAULT_MIN. */
#define KVTCD_HOST_PREFAULT_AHEAD (256ull << 20)
#define KVTCD_HOST_PREFAULT_MIN (32ull << 20)

typedef struct kvtcd_host_stats {
    int slab;                 /* 1: slab, 0: per-blob buffers */
    int region_registered;    /* one ucp_mem_map covers the region */
    uint64_t region_bytes;    /* reserved (== resident ceiling) */
    uint64_t resident_bytes;  /* made resident by the prefault thread */
    uint64_t locked_bytes;    /* of which mlock'ed */
    uint64_t high_water_bytes;/* end of the highest extent ever handed out */
    uint64_t free_bytes;      /* in free extents (page-rounded) */
    uint64_t free_extents;
    uint64_t largest_free_bytes;
    uint64_t frag_full;       /* allocs refused with enough bytes free */
} kvtcd_host_stats;

/* Options of kvtcd_store_host_create_ex. field_mask says which fields
 * the caller set (KVTCD_HOST_OPT_*); the others keep their defaults (the
 * environment above, else on), so a caller built against this struct
 * keeps working when fields are added at its end. */
#define KVTCD_HOST_OPT_PREFAULT (1u << 0)
#define KVTCD_HOST_OPT_PIN (1u << 1)
typedef struct kvtcd_host_opts {
    uint32_t field_mask;
    int prefault; /* 1: a background thread keeps memory resident ahead of
                     use (KVTCD_HOST_PREFAULT_*); 0: pages fault on use */
    int pin;      /* 1: and mlock'ed, where RLIMIT_MEMLOCK/CAP_IPC_LOCK
                     allow (refusal logged once); only with prefault */
} kvtcd_host_opts;

/* kvtcd_store_host_create (tier.h) with options; opts NULL or a zero
 * field_mask is kvtcd_store_host_create. The per-blob implementation
 * (KVTCD_HOST_SLAB=0) ignores them. Errors as kvtcd_store_host_create,
 * and KVTC_EINVAL for a field_mask bit it does not know. */
int kvtcd_store_host_create_ex(uint64_t capacity, void *ucp_context,
                               const kvtcd_host_opts *opts, kvtcd_tier **out);

/* The slab's whole region: base and length in bytes, valid until the tier
 * is destroyed; every blob of one page or more lies inside it (smaller
 * ones do not: copy those through a staging buffer). Meant for
 * cuMemHostRegister (page-locking for CUDA copies) by the GPU tier; the
 * region may be larger than what is resident (MAP_NORESERVE): register
 * with flags that do not need the pages populated, or register only what
 * you use. Any thread. KVTC_ENOTSUP for the per-blob implementation (no
 * single region), KVTC_EINVAL when t is not a host tier. */
int kvtcd_store_host_region(kvtcd_tier *t, void **base, size_t *len);

/* A snapshot of the tier's allocator and residency counters.
 * KVTC_EINVAL when t is not a host tier. */
int kvtcd_store_host_stats(kvtcd_tier *t, kvtcd_host_stats *out);

/* Wait up to timeout_ms until bytes of the slab (clamped to its length)
 * are resident. For tests and benchmarks; 0 at once when prefaulting is
 * off or the per-blob implementation runs. KVTC_ETIMEDOUT. */
int kvtcd_store_host_wait_resident(kvtcd_tier *t, size_t bytes,
                                   int timeout_ms);

/* Internal: the per-blob implementation (store_host_blob.c), which
 * kvtcd_store_host_create picks when KVTCD_HOST_SLAB=0. Same contract as
 * kvtcd_store_host_create. */
int kvtcd__store_host_blob_create(uint64_t capacity, void *ucp_context,
                                  kvtcd_tier **out);

#endif
