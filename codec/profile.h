/* profile.h - building profiles (calibrate.c) and their wire format. */
#ifndef KVTC_CODEC_PROFILE_H
#define KVTC_CODEC_PROFILE_H

#include "internal.h"

#define KVTC__PROFILE_MAGIC "KVTCPROF"
#define KVTC__PROFILE_VERSION 1u

/* A profile from untrimmed bases [D][k[s]] and plans: keeps, per stream, the
 * components up to the last one any plan codes. Copies everything. */
int kvtc__profile_build(const kvtc_layout *layout, uint32_t width, const uint32_t k[2],
                        float *const mean[2], float *const basis[2], float *const sigma[2],
                        const float *slab_w,
                        const struct kvtc__plan *plans, uint32_t n_plans, kvtc_profile **out);

#endif
