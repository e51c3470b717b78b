/* host_prefault.h - makes the front of the host slab resident (and
 * pinned) ahead of use, on a background thread, so a rendezvous receive
 * into a fresh blob does not wait for the kernel to fault and zero its
 * pages (47% of a large put's daemon time before the slab; perf-notes).
 *
 * The thread only ever grows the resident prefix [0, resident) of the
 * region toward the target the loop thread sets; released extents stay
 * resident (the tier never gives pages back), so RSS stays within the
 * region's length. Pages are populated with MADV_POPULATE_WRITE (kernel
 * >= 5.14) or, where that is refused, by an atomic add of 0 to one byte
 * per page, which faults the page writable without changing bytes the
 * loop thread may already be receiving into. Then they are mlock'ed while
 * RLIMIT_MEMLOCK allows: the first refusal is logged once at info level
 * and pinning stops; the memory stays resident, just unpinned. */
#ifndef KVTCD_HOST_PREFAULT_H
#define KVTCD_HOST_PREFAULT_H

#include <stddef.h>
#include <stdint.h>

typedef struct kvtcd_prefault kvtcd_prefault;

/* Start the thread over [base, base + len) (page-aligned, owned by the
 * caller and mapped until kvtcd_prefault_stop returns). It makes the
 * first initial_want bytes resident at once. pin: try mlock. Errors:
 * KVTC_ENOMEM, KVTC_EIO (thread creation refused). */
int kvtcd_prefault_start(uint8_t *base, size_t len, size_t initial_want,
                         int pin, kvtcd_prefault **out);

/* Raise the target: make [0, end) resident (clamped to len; a lower end
 * than before is ignored). Cheap; any thread. */
void kvtcd_prefault_want(kvtcd_prefault *p, size_t end);

/* Bytes made resident / pinned so far (a prefix of the region); any
 * thread. */
size_t kvtcd_prefault_resident(const kvtcd_prefault *p);
size_t kvtcd_prefault_locked(const kvtcd_prefault *p);

/* Wait until resident >= want (clamped to len) or timeout_ms passes:
 * KVTC_ETIMEDOUT then. For tests and the benchmark's warm start. */
int kvtcd_prefault_wait(kvtcd_prefault *p, size_t want, int timeout_ms);

/* Stop and join the thread, free p. The pages stay as they are (the
 * caller unmaps the region). NULL is a no-op. */
void kvtcd_prefault_stop(kvtcd_prefault *p);

#endif
