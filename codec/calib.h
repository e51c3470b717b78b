/* calib.h - calibration with a pluggable PCA, so the GPU path (kernels/)
 * reuses the reservoir, error measurement and planner of calibrate.c and
 * swaps only the covariance + eigendecomposition. */
#ifndef KVTC_CODEC_CALIB_H
#define KVTC_CODEC_CALIB_H

#include "internal.h"

/* The mean of rows[n][D] into mean[D]; the first n_centred rows (the ones
 * the planner reads afterwards) mean-centred in place, the others left as
 * they were or centred, as suits the implementation (the GPU's need not
 * touch 160K host rows the planner never reads); the top *k principal
 * directions, by descending variance, into basis[D][*k] (row-major), where
 * *k may shrink to the number of non-negligible directions (e.g. when
 * n < D); the total and kept variance. 0 or a KVTC_E* code. */
typedef int (*kvtc__pca_fn)(void *ctx, float *rows, uint32_t n, uint32_t n_centred, uint32_t D,
                            uint32_t *k, float *mean, float *basis, double *var_total,
                            double *var_kept);

/* kvtc_calibrator_fit with pca_fn in place of LAPACK's. */
int kvtc__calibrator_fit_pca(kvtc_calibrator *cal, kvtc__pca_fn pca_fn, void *pca_ctx);

#endif
