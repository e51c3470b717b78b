/* baselines.h - the quantizers kvtc is compared against in the quality
 * benchmark, on canonical FP32 chunks ([layer][k|v][token][kv_head][head_dim]).
 * Shared by build/bin/kvtc-quality (C) and the Hugging Face harness (ctypes on
 * build/lib/libkvtc_bench.so). Sink tokens are the caller's business: it
 * passes only the tokens a method should code. */
#ifndef KVTC_BENCH_BASELINES_H
#define KVTC_BENCH_BASELINES_H

#include <stddef.h>
#include <stdint.h>

#include "kvtc_codec.h"

enum kvtc_bl_method {
    KVTC_BL_FP8 = 1,   /* fp8 e4m3, one fp16 scale per token and head */
    KVTC_BL_INT4 = 2,  /* int4, groups of 32 channels, fp16 scale + zero */
    KVTC_BL_KIVI2 = 3, /* KIVI 2-bit: keys per channel (groups of 32 tokens),
                          values per token (groups of 32 channels) */
    KVTC_BL_ZSTD = 4   /* bf16 bytes through zstd -19 (lossless vs bf16) */
};

/* "fp8-e4m3", "int4-g32", "kivi2-g32", "zstd-bf16"; NULL if unknown. */
const char *kvtc_bl_name(int method);

/* Quantize and dequantize n_tokens tokens of chunk into out (same shape), and
 * set *stored_bytes to what the method stores: payload plus every scale,
 * zero point and header it needs. Returns 0 or a negative KVTC_E* code. */
int kvtc_bl_roundtrip(int method, const kvtc_layout *layout, const float *chunk,
                      uint32_t n_tokens, float *out, size_t *stored_bytes);

#endif
