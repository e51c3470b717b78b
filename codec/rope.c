/* rope.c - rotary position embedding, undone on keys before the PCA (the
 * paper's step: RoPE makes keys position-dependent, which the basis cannot
 * capture) and redone after reconstruction. Angles in double: positions up
 * to 2^32 times frequencies must not lose the phase. */
#include <math.h>

#include "internal.h"
#include "rope.h"

void kvtc__rope_inv_freq(const kvtc_layout *l, double *inv_freq)
{
    uint32_t half = l->head_dim / 2;
    for (uint32_t i = 0; i < half; i++) {
        double f = pow((double)l->rope_theta, -2.0 * i / (double)l->head_dim);
        if (l->rope_scaling == KVTC_ROPE_SCALING_LINEAR && l->rope_factor > 0) {
            f /= l->rope_factor;
        } else if (l->rope_scaling == KVTC_ROPE_SCALING_LLAMA3 && l->rope_factor > 0) {
            /* Llama 3.1: long wavelengths slowed by factor, short kept,
             * a smooth blend in between. */
            double orig = l->rope_orig_max_pos, wavelen = 2 * M_PI / f;
            double low_wl = orig / l->rope_low_freq_factor;
            double high_wl = orig / l->rope_high_freq_factor;
            if (wavelen > low_wl) {
                f /= l->rope_factor;
            } else if (wavelen >= high_wl) {
                double s = (orig / wavelen - l->rope_low_freq_factor) /
                           (l->rope_high_freq_factor - l->rope_low_freq_factor);
                f = (1 - s) * f / l->rope_factor + s * f;
            }
        }
        inv_freq[i] = f;
    }
}

void kvtc__rope_angles(const kvtc_layout *l, const double *inv_freq, uint32_t pos,
                       float *cs, float *sn)
{
    for (uint32_t i = 0; i < l->head_dim / 2; i++) {
        double a = (double)pos * inv_freq[i];
        cs[i] = (float)cos(a);
        sn[i] = (float)sin(a);
    }
}

void kvtc__rope_rotate(const kvtc_layout *l, float *x, const float *cs, const float *sn,
                       int inverse)
{
    uint32_t half = l->head_dim / 2;
    uint32_t stride = l->rope_style == KVTC_ROPE_INTERLEAVED ? 2 : 1;
    uint32_t other = l->rope_style == KVTC_ROPE_INTERLEAVED ? 1 : half;
    for (uint32_t i = 0; i < half; i++) {
        float *a = x + i * stride, *b = a + other;
        float s = inverse ? -sn[i] : sn[i];
        float x0 = *a, x1 = *b;
        *a = x0 * cs[i] - x1 * s;
        *b = x0 * s + x1 * cs[i];
    }
}

void kvtc_rope_apply(const kvtc_layout *l, float *x, size_t n, const uint32_t *pos,
                     int inverse)
{
    if (l->rope_style == KVTC_ROPE_NONE || l->head_dim < 2 || l->head_dim > KVTC_MAX_HEAD_DIM)
        return;
    double inv_freq[KVTC_MAX_HEAD_DIM / 2];
    float cs[KVTC_MAX_HEAD_DIM / 2], sn[KVTC_MAX_HEAD_DIM / 2];
    kvtc__rope_inv_freq(l, inv_freq);
    for (size_t v = 0; v < n; v++) {
        kvtc__rope_angles(l, inv_freq, pos[v], cs, sn);
        kvtc__rope_rotate(l, x + v * l->head_dim, cs, sn, inverse);
    }
}
