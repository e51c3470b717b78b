/* par_copy.h - memcpy split across a few helper threads.
 *
 * Why: one core copies ~9 GB/s into pinned memory, so the staging memcpy,
 * not the bus, bounded the GPU tier (H100 host, 32 MiB copies: 8.7 GB/s
 * to the device with one thread, 28.6 with 4 helpers, PCIe 5 moves 55;
 * docs/tiers.md has the table). Large copies
 * are cut into cache-line-aligned parts; the calling thread copies one part
 * and the helpers the others, and the call returns when all are done.
 *
 * One caller at a time (the GPU tier's copy worker): kvtcd_pcopy_run is not
 * reentrant; create/destroy from any thread, not concurrently with run. */
#ifndef KVTCD_PAR_COPY_H
#define KVTCD_PAR_COPY_H

#include <stddef.h>

#define KVTCD_PCOPY_MAX_HELPERS 8
/* Below this many bytes one thread copies: waking helpers costs more. */
#define KVTCD_PCOPY_MIN_SPLIT (1u << 20)

typedef struct kvtcd_pcopy kvtcd_pcopy;

/* Start helpers threads (0..KVTCD_PCOPY_MAX_HELPERS; 0 copies inline).
 * KVTC_EINVAL, KVTC_ENOMEM (threads or memory refused). */
int kvtcd_pcopy_create(int helpers, kvtcd_pcopy **out);
/* Stop and join the helpers; NULL is a no-op. */
void kvtcd_pcopy_destroy(kvtcd_pcopy *p);
/* memcpy(dst, src, n), split over the helpers when n is large. The ranges
 * must not overlap. p may be NULL (plain memcpy). */
void kvtcd_pcopy_run(kvtcd_pcopy *p, void *dst, const void *src, size_t n);
/* Helpers a sensible default for this machine: a quarter of the online
 * CPUs, at most 4 (copy bandwidth saturates; the rest serve clients). */
int kvtcd_pcopy_default_helpers(void);

#endif
