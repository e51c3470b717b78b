/* projx.h - the codec's transform with its projection GEMMs computed in a
 * chosen number format, to measure what a cheaper GPU projection costs in
 * quality (issue #3: "an fp8 projection ... costs quality, so measure that
 * cost on real KV before choosing"). Experiment code for the quality
 * harnesses (kvtc-quality --projx, bench/quality/hf/projx.py through
 * libkvtc_bench.so); the codec itself is unchanged.
 *
 * A roundtrip is kvtc_encode + kvtc_decode without the container: the same
 * rows, plan, quantizer and symbol bytes, with the two GEMMs emulated:
 *   FP32         the CPU codec's own arithmetic (slab weights on the rows,
 *                sgemm, coefficients times 1/sigma): with both sides FP32
 *                the output is bit-identical to kvtc_encode/kvtc_decode;
 *   BF16         what the GPU codec does today (kernels/gpu_codec.cu,
 *                gpu_rows.cu): centred unweighted rows and the bases with
 *                the weights and sigma folded in, rounded to bf16, fp32
 *                accumulation, the decode GEMM's output rounded to bf16;
 *   E4M3_TENSOR  the same operands rounded to fp8 e4m3 after scaling each
 *                operand tensor by 448 / max|x| (cuBLASLt's per-tensor
 *                scales; the activation's scale from this chunk's amax),
 *                products accumulated in fp32, output descaled, the decode
 *                output rounded to bf16;
 *   E4M3_ROWCOL  as E4M3_TENSOR with one scale per row of the activation
 *                (per token) and per column of the output for the basis
 *                (per component when encoding, per row element when
 *                decoding): outer-vector scaling, applied in the epilogue.
 *   E4M3_STATIC  e4m3 with activation scales fixed before any data (fp8b,
 *                v15; the GPU codec's fp8 decode, kernels/gpu_fp8.cu):
 *                decode: the whitened coefficients (unit variance by
 *                construction) x 16, saturating (1 sigma -> 16, 448 = 28
 *                sigma); encode: row element d x 16 / std_d, std_d the
 *                calibration std of the centred rows from the profile
 *                (sqrt(sum_c basis[d][c]^2 sigma_c^2) / slab weight),
 *                1 / (16 / std_d) folded into the basis rows before their
 *                per-tensor rounding. A chunk's result depends on nothing
 *                but the chunk (E4M3_TENSOR's activation scale is its amax).
 * Products of e4m3 (or bf16) values are exact in fp32, so sgemm on the
 * rounded values is the tensor-core result up to the accumulation order. */
#ifndef KVTC_BENCH_PROJX_H
#define KVTC_BENCH_PROJX_H

#include <stddef.h>
#include <stdint.h>

#include "kvtc_codec.h"

enum kvtc_px_fmt {
    KVTC_PX_FP32 = 0,
    KVTC_PX_BF16 = 1,
    KVTC_PX_E4M3_TENSOR = 2,
    KVTC_PX_E4M3_ROWCOL = 3,
    KVTC_PX_E4M3_STATIC = 4,
    KVTC_PX_N_FMTS = 5
};
/* E4M3_STATIC's activation scale: 1 sigma of a (whitened) coefficient or a
 * row element maps to this (the GPU's KVTC_GPU_FP8_DEC_SCALE). */
#define KVTC_PX_STATIC_SCALE 16.0f

typedef struct kvtc_px kvtc_px;

/* "fp32", "bf16", "e4m3t", "e4m3rc", "e4m3s"; NULL if unknown. */
const char *kvtc_px_fmt_name(uint32_t fmt);

/* A roundtrip context for plan of p, encode GEMM in enc_fmt and decode GEMM
 * in dec_fmt (enum kvtc_px_fmt). The bases are rounded once here. The
 * profile must outlive the context; not thread-safe (one per thread).
 * Errors: KVTC_EINVAL (bad plan or format), KVTC_ENOMEM. */
int kvtc_px_create(const kvtc_profile *p, uint32_t plan, uint32_t enc_fmt, uint32_t dec_fmt,
                   kvtc_px **out);
void kvtc_px_free(kvtc_px *x);

/* Encode and decode one canonical chunk (the profile's layout and dtype) of
 * n_tokens tokens at first_pos into out (same size; caller's buffers).
 * *stored_bytes: the container kvtc_encode would write for these symbols
 * (header, sinks, piece table, DEFLATE at the default level).
 * Errors: KVTC_EINVAL (bad arguments, non-finite KV), KVTC_ENOMEM,
 * KVTC_ECORRUPT (a symbol the quantizer wrote fails to decode: a bug). */
int kvtc_px_roundtrip(kvtc_px *x, const void *chunk, uint32_t n_tokens, uint32_t first_pos,
                      void *out, size_t *stored_bytes);

/* The projection's inner dimension of each stream under a plan (1 + the last
 * coded component: the GEMMs stop there) and the row width, for FLOP counts.
 * Errors: KVTC_EINVAL. */
int kvtc_px_gemm_dims(const kvtc_profile *p, uint32_t plan, uint32_t *width,
                      uint32_t kused[2]);

#endif
