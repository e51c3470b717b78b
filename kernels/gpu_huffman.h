/* gpu_huffman.h - our Huffman-only raw DEFLATE of the codec's pieces on the
 * GPU, both ways (kernels/huff_core.h has the format and the index), in the
 * shape of nvCOMP's batched calls so gpu_encode.cu / gpu_decode.cu swap one
 * for the other: device arrays of piece pointers and sizes in, per-piece
 * sizes and statuses out. The encoder also writes each piece's sub-range
 * index; the decoder uses it to decode a piece with one thread per
 * sub-range.
 * C-includable so tests/gpu can call it directly. Not installed. */
#ifndef KVTC_KERNELS_GPU_HUFFMAN_H
#define KVTC_KERNELS_GPU_HUFFMAN_H

#include <stddef.h>
#include <stdint.h>

#include "kvtc_gpu.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Encodes n pieces: src[i] (src_len[i] bytes, 1..65536, 4-byte aligned)
 * into dst[i] (room for KVTC_HC_MAX_OUT bytes rounded up to 4, 4-byte
 * aligned; the bytes past dst_len[i] up to the next multiple of 4 are
 * written as zeros) and its index into idx[i] (kvtc__hc_subranges(
 * src_len[i], log2) u16 entries, 2-byte aligned). The bytes equal
 * kvtc__hc_encode_ref's. status[i]: 0, or KVTC_EINVAL for a size out of
 * range (dst_len[i] = 0 then). All arrays are device memory; log2 is
 * KVTC_HC_LOG2_MIN..MAX. Asynchronous on stream; KVTC_EINVAL for a bad
 * log2, KVTC_EIO if the launch fails. */
int kvtc__huff_encode_batch(const void *const *src, const size_t *src_len, uint64_t n,
                            void *const *dst, size_t *dst_len, uint16_t *const *idx,
                            uint32_t log2, int32_t *status, kvtc_gpu_stream stream);

/* Decodes n pieces: src[i] (src_len[i] bytes, 4-byte aligned, readable up
 * to the next multiple of 4) with its index idx[i] (bytes, u16 LE entries,
 * any alignment) of granularity plog[i] (or log2 for all when plog is
 * NULL; log2 also sizes the blocks, a thread per sub-range of it) into
 * exactly dst_len[i] <= 65536 bytes at dst[i] (8-byte aligned). A piece whose idx[i] is NULL is skipped (not indexed: another
 * decoder's). group == NULL: status[i] = 0 or the piece's KVTC_INFL_E*
 * code. group != NULL: pieces of a group whose status is already nonzero
 * are skipped, and a failed piece sets its group's status to KVTC_ECORRUPT
 * (if still 0). Asynchronous on stream; KVTC_EINVAL for a bad log2,
 * KVTC_EIO if the launch fails. */
int kvtc__huff_decode_batch(const void *const *src, const size_t *src_len, void *const *dst,
                            const size_t *dst_len, const uint8_t *const *idx, uint64_t n,
                            uint32_t log2, const uint8_t *plog, const uint32_t *group,
                            int32_t *status, kvtc_gpu_stream stream);

#ifdef __cplusplus
}
#endif
#endif
