/* rope.h - RoPE building blocks shared by rows.c and the kernels. */
#ifndef KVTC_CODEC_ROPE_H
#define KVTC_CODEC_ROPE_H

#include "kvtc_codec.h"

/* Per-pair inverse frequencies (head_dim/2 of them), scaling applied. */
void kvtc__rope_inv_freq(const kvtc_layout *l, double *inv_freq);
/* cos/sin of every pair's angle at position pos. */
void kvtc__rope_angles(const kvtc_layout *l, const double *inv_freq, uint32_t pos,
                       float *cs, float *sn);
/* Rotate one head_dim vector in place (inverse: by minus the angle). */
void kvtc__rope_rotate(const kvtc_layout *l, float *x, const float *cs, const float *sn,
                       int inverse);

#endif
