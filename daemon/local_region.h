/* local_region.h - client memory shared with kvtcd on the local path
 * (common/local_wire.h, struct kvtc_local_region).
 *
 * A client may hand kvtcd a sealed memfd it has mapped at some address;
 * kvtcd maps the same memfd, so a get whose destinations all lie in one
 * region is a memcpy into the shared pages and a put from one a memcpy out
 * of them: no process_vm_writev/readv, whose page pinning in the client
 * costs ~40% of a 256 KiB copy and does not scale past a few threads into
 * one process (docs/perf-notes.md, "Registered buffers").
 *
 * Everything here runs on the loop thread except kvtcd_region_copy, which a
 * copy worker runs while the job holds a reference. A region stays mapped
 * until its client unmaps it (or its link closes) and no job uses it. */
#ifndef KVTCD_LOCAL_REGION_H
#define KVTCD_LOCAL_REGION_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>
#include <sys/uio.h>

#include "local_wire.h"

typedef struct kvtcd_region kvtcd_region;

/* One link's regions (zero-initialised; loop thread). */
typedef struct kvtcd_regions {
    kvtcd_region *r[KVTC_LOCAL_MAX_REGIONS];
    uint32_t n;
} kvtcd_regions;

/* Map the region m describes, whose memfd is fd (not taken: the caller
 * closes it), for the client process pid. Checks, before anything is used:
 * the message's fields (page-aligned address, 0 < len <= the limit, below
 * KVTC_LOCAL_ADDR_LIMIT, a new id, no overlap with the link's regions,
 * room in the table), the descriptor (a memfd sealed against shrinking and
 * growing, at least len bytes), and that the client really has this memfd
 * at addr (a probe written through kvtcd's mapping is read back from the
 * client with process_vm_readv at both ends of the range). 0, or a
 * negative KVTC_E* with the reason in why. */
int kvtcd_region_map(kvtcd_regions *t, pid_t pid, int fd,
                     const struct kvtc_local_region *m, char *why,
                     size_t whylen);

/* The client ends region id: it leaves the table now and is unmapped once
 * no job uses it. KVTC_ENOENT when there is no such region. */
int kvtcd_region_unmap(kvtcd_regions *t, uint64_t id);

/* Drop every region of the table (its link closed). */
void kvtcd_regions_clear(kvtcd_regions *t);

/* The region that holds all n client ranges, referenced (release with
 * kvtcd_region_unref), or NULL when they are not all inside one. */
kvtcd_region *kvtcd_region_find(kvtcd_regions *t, const struct iovec *r,
                                size_t n);
void kvtcd_region_unref(kvtcd_region *rg);

/* Copy between kvtcd's range local and the client ranges r[0..nr), all
 * inside rg: into them when to_client, out of them otherwise. Returns the
 * bytes moved (the smaller of the two totals). Any thread. */
size_t kvtcd_region_copy(const kvtcd_region *rg, int to_client,
                         const struct iovec *local, const struct iovec *r,
                         unsigned nr);

/* Regions mapped now by every link, for /metrics (any thread). */
uint64_t kvtcd_regions_mapped(void);

#endif
