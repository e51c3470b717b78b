/* symbols.h - quantized groups <-> symbol bytes (layout in plan.c). */
#ifndef KVTC_CODEC_SYMBOLS_H
#define KVTC_CODEC_SYMBOLS_H

#include "internal.h"

/* Quantize groups [g0, g1) (one stream) of coef[T][k] into sym (zeroed). */
void kvtc__pack_groups(const struct kvtc__plan *plan, uint32_t g0, uint32_t g1,
                       const float *coef, uint32_t k, uint32_t T, const size_t *shift_off,
                       const size_t *scale_off, const size_t *code_off, uint8_t *sym);
/* Dequantize groups [g0, g1) into coef[T][k] (dropped components left as
 * they are: the caller zeroes coef). KVTC_ECORRUPT on invalid symbols. */
int kvtc__unpack_groups(const struct kvtc__plan *plan, uint32_t g0, uint32_t g1,
                        const uint8_t *sym, uint32_t k, uint32_t T, const size_t *shift_off,
                        const size_t *scale_off, const size_t *code_off, float *coef);
/* Tokens [0, n) of every (layer, k|v) slab: chunk of `total` tokens <-> a
 * chunk of n tokens (to_chunk: part -> chunk). */
void kvtc__copy_leading_tokens(const kvtc_layout *l, const void *chunk, uint32_t total,
                               void *part, uint32_t n, int to_chunk);

#endif
