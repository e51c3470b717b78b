/* gpu_basis.h - a profile's fp32 bases as the 16-bit GEMM operands a GPU
 * context uploads (host work, done once per context). Half a billion
 * elements on an 8B-model layout (two streams, two directions, 32768 rows
 * x 4096 components): seconds in one thread through the software
 * conversion, so rows are split over a few threads; every split gives the
 * same bytes. C-includable so tests/gpu can check it. Not installed. */
#ifndef KVTC_KERNELS_GPU_BASIS_H
#define KVTC_KERNELS_GPU_BASIS_H

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct kvtc__basis16 {
    const float *basis;     /* [rows][ncomp] */
    uint32_t ncomp;
    const float *scale;     /* [kp]: per component */
    const float *layer_mul; /* [rows / row_group]: per group of rows */
    uint32_t rows, row_group, kp, ld;
    int bf16;               /* 0: fp16, 1: bf16 (round to nearest even) */
    uint16_t *out;          /* [rows][ld]; columns kp..ld are not written */
} kvtc__basis16;

/* out[d * ld + c] = 16-bit(basis[d * ncomp + c] * scale[c] *
 * layer_mul[d / row_group]) for d < rows, c < kp, on up to `threads`
 * threads (0: one per CPU, at most 8); the calling thread takes a share
 * and the rest if a thread cannot start. */
void kvtc__basis16_fill(const kvtc__basis16 *a, unsigned threads);

#ifdef __cplusplus
}
#endif

#endif
