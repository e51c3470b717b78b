/* gpu_inflate.h - batched raw DEFLATE decode of the codec's pieces on the
 * GPU (kernels/inflate_core.h per piece), the alternative to nvCOMP's
 * inflate (kvtc_gpu_params.inflate). One thread per piece: on an H100 it
 * runs 1.2x slower than nvCOMP (docs/perf-notes.md); the serial symbol
 * chain, not memory, bounds it.
 * C-includable so tests/gpu can call it directly. Not installed. */
#ifndef KVTC_KERNELS_GPU_INFLATE_H
#define KVTC_KERNELS_GPU_INFLATE_H

#include <stddef.h>
#include <stdint.h>

#include "kvtc_gpu.h"

#ifdef __cplusplus
extern "C" {
#endif

struct kvtc__inflate_stats;

/* Decodes n pieces: src[i] (src_len[i] bytes, 4-byte aligned, readable up
 * to the next multiple of 4) into exactly dst_len[i] <= 65536 bytes at
 * dst[i] (8-byte aligned). All arrays are device memory.
 * group == NULL: status[i] = 0 or the piece's KVTC_INFL_E* code.
 * group != NULL: piece i belongs to group[i] (a container); pieces of a
 * group whose status is already nonzero are skipped, and a failed piece
 * sets its group's status to KVTC_ECORRUPT (if still 0).
 * stats (may be NULL): per piece, what it held (tests).
 * Asynchronous on stream; KVTC_EIO if the launch fails. */
int kvtc__inflate_batch(const void *const *src, const size_t *src_len, void *const *dst,
                        const size_t *dst_len, uint64_t n, const uint32_t *group,
                        int32_t *status, struct kvtc__inflate_stats *stats,
                        kvtc_gpu_stream stream);

#ifdef __cplusplus
}
#endif
#endif
