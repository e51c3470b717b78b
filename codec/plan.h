/* plan.h - inputs and entry point of the bit-allocation planner. */
#ifndef KVTC_CODEC_PLAN_H
#define KVTC_CODEC_PLAN_H

#include "internal.h"

/* Squared errors per calibration row (averaged over rows) of every option,
 * measured by calibrate.c with the encoder's own quantizer. */
struct kvtc__plan_errors {
    uint32_t width;                /* row width D */
    uint32_t ncomp[2];             /* components considered per stream */
    double *drop[2];               /* [ncomp]: error of dropping component j */
    /* [stream][size index][type][group]: error of coding aligned group g */
    double *group[2][KVTC__N_GROUP_SIZES][KVTC__N_QTYPES];
    /* same for static groups (NULL: not offered), and their fitted clip */
    double *sgroup[2][KVTC__N_GROUP_SIZES][KVTC__N_QTYPES];
    float *sclip[2][KVTC__N_GROUP_SIZES][KVTC__N_QTYPES];
    double tail[2];                /* error of components beyond ncomp */
    double weight[2];              /* objective weight of each stream's error */
};

/* Solve for one budget (bits per token, both streams); fills out
 * (out->groups malloc'ed; target_ratio left to the caller). */
int kvtc__plan_solve(const struct kvtc__plan_errors *pe, double budget_bits,
                     struct kvtc__plan *out);

#endif
