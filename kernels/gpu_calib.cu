/* gpu_calib.cu - the PCA of calibration on the GPU, plugged into
 * calibrate.c (codec/calib.h) so the reservoir, the planner's error
 * measurement and the plans stay the CPU's: covariance by a TF32 GEMM,
 * eigenvectors by cuSOLVER syevd, or, when few components of a wide row are
 * wanted, by subspace iteration (QR each step) and syevd of the small
 * projected matrix. */
#include <cusolverDn.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "gpu_internal.h"

extern "C" {
#include "../codec/calib.h"
}

/* Seconds spent in the last gpu_pca calls of one fit (both streams), for
 * bench/gpu's breakdown of the fit into PCA and the CPU's planner errors. */
extern "C" double kvtc__gpu_calib_pca_seconds;
double kvtc__gpu_calib_pca_seconds;

static double mono_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

struct gcal {
    int device;
    cublasHandle_t blas;
    cusolverDnHandle_t sol;
};

__global__ void k_center(float *x, uint64_t n, uint32_t D, const float *mean)
{
    uint64_t i = (uint64_t)blockIdx.x * blockDim.x + threadIdx.x, step = (uint64_t)gridDim.x * blockDim.x;
    for (; i < n * D; i += step)
        x[i] -= mean[i % D];
}

/* Deterministic pseudo-random start for subspace iteration. */
__global__ void k_random(float *x, uint64_t n)
{
    uint64_t i = (uint64_t)blockIdx.x * blockDim.x + threadIdx.x, step = (uint64_t)gridDim.x * blockDim.x;
    for (; i < n; i += step) {
        uint64_t z = (i + 1) * 0x9e3779b97f4a7c15ull;
        z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
        z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
        x[i] = (float)((double)(z >> 11) / 9007199254740992.0) - 0.5f;
    }
}

#define CK(e) do { if ((rc = kvtc__cuda_err((e), #e))) goto out; } while (0)
#define CB(e) do { if ((e) != CUBLAS_STATUS_SUCCESS) { rc = KVTC_EIO; goto out; } } while (0)
#define CS(e) do { if ((e) != CUSOLVER_STATUS_SUCCESS) { rc = KVTC_ENUMERICAL; goto out; } } while (0)

/* Orthonormalize the columns of Q[D x m] (column-major) in place. */
static int orth(gcal *g, float *Q, uint32_t D, uint32_t m, float *tau, float **work, int *lwork,
                int *info)
{
    int rc = 0, need = 0, need2 = 0, hinfo = 0;
    CS(cusolverDnSgeqrf_bufferSize(g->sol, (int)D, (int)m, Q, (int)D, &need));
    CS(cusolverDnSorgqr_bufferSize(g->sol, (int)D, (int)m, (int)m, Q, (int)D, tau, &need2));
    need = need > need2 ? need : need2;
    if (need > *lwork) {
        cudaFree(*work);
        *work = NULL;
        CK(cudaMalloc(work, sizeof(float) * (size_t)need));
        *lwork = need;
    }
    CS(cusolverDnSgeqrf(g->sol, (int)D, (int)m, Q, (int)D, tau, *work, *lwork, info));
    CS(cusolverDnSorgqr(g->sol, (int)D, (int)m, (int)m, Q, (int)D, tau, *work, *lwork, info));
    CK(cudaMemcpy(&hinfo, info, sizeof hinfo, cudaMemcpyDeviceToHost));
    if (hinfo)
        rc = KVTC_ENUMERICAL;
out:
    return rc;
}

static int gpu_pca_run(void *ctx, float *rows, uint32_t n, uint32_t n_centred, uint32_t D,
                   uint32_t *kp, float *mean, float *basis, double *var_total, double *var_kept)
{
    gcal *g = (gcal *)ctx;
    uint32_t k = *kp < D ? *kp : D;
    int rc = 0, lwork = 0, hinfo = 0;
    float *dx = NULL, *dcov = NULL, *dmean = NULL, *ones = NULL, *w = NULL, *work = NULL;
    float *dq = NULL, *dy = NULL, *db = NULL, *tau = NULL, *hw = NULL, *hu = NULL;
    int *info = NULL;
    const float one = 1.0f, zero = 0.0f, invn = 1.0f / (float)n;
    int full = (uint64_t)k * 4 >= D || D <= 4096;
    uint32_t m = full ? D : (k + 64 < D ? k + 64 : D); /* oversampled subspace */
    float *evec = NULL;                                /* D x m, column-major */
    CK(cudaMalloc(&dx, sizeof(float) * (size_t)n * D));
    CK(cudaMalloc(&dcov, sizeof(float) * (size_t)D * D));
    CK(cudaMalloc(&dmean, sizeof(float) * D));
    CK(cudaMalloc(&ones, sizeof(float) * (n > D ? n : D)));
    CK(cudaMalloc(&w, sizeof(float) * D));
    CK(cudaMalloc(&info, sizeof(int)));
    CK(cudaMemcpy(dx, rows, sizeof(float) * (size_t)n * D, cudaMemcpyHostToDevice));
    {
        uint32_t no = n > D ? n : D;
        float *h1 = (float *)malloc(sizeof(float) * no);
        if (!h1) {
            rc = KVTC_ENOMEM;
            goto out;
        }
        for (uint32_t i = 0; i < no; i++)
            h1[i] = 1.0f;
        rc = kvtc__cuda_err(cudaMemcpy(ones, h1, sizeof(float) * no, cudaMemcpyHostToDevice), "ones");
        free(h1);
        if (rc)
            goto out;
    }
    /* rows are [n][D] row-major = column-major D x n. */
    CB(cublasSgemv(g->blas, CUBLAS_OP_N, (int)D, (int)n, &invn, dx, (int)D, ones, 1, &zero, dmean, 1));
    k_center<<<1024, 256>>>(dx, n, D, dmean);
    CK(cudaGetLastError());
    CB(cublasGemmEx(g->blas, CUBLAS_OP_N, CUBLAS_OP_T, (int)D, (int)D, (int)n, &invn, dx,
                    CUDA_R_32F, (int)D, dx, CUDA_R_32F, (int)D, &zero, dcov, CUDA_R_32F, (int)D,
                    CUBLAS_COMPUTE_32F_FAST_TF32, CUBLAS_GEMM_DEFAULT));
    CK(cudaMemcpy(mean, dmean, sizeof(float) * D, cudaMemcpyDeviceToHost));
    {
        float tr = 0;
        CB(cublasSdot(g->blas, (int)D, dcov, (int)D + 1, ones, 1, &tr)); /* the trace */
        *var_total = tr;
    }
    if (full) {
        CS(cusolverDnSsyevd_bufferSize(g->sol, CUSOLVER_EIG_MODE_VECTOR, CUBLAS_FILL_MODE_UPPER,
                                       (int)D, dcov, (int)D, w, &lwork));
        CK(cudaMalloc(&work, sizeof(float) * (size_t)lwork));
        CS(cusolverDnSsyevd(g->sol, CUSOLVER_EIG_MODE_VECTOR, CUBLAS_FILL_MODE_UPPER, (int)D, dcov,
                            (int)D, w, work, lwork, info));
        CK(cudaMemcpy(&hinfo, info, sizeof hinfo, cudaMemcpyDeviceToHost));
        if (hinfo) {
            rc = KVTC_ENUMERICAL;
            goto out;
        }
        evec = dcov; /* ascending: column D-1 is the largest */
    } else {
        CK(cudaMalloc(&dq, sizeof(float) * (size_t)D * m));
        CK(cudaMalloc(&dy, sizeof(float) * (size_t)D * m));
        CK(cudaMalloc(&db, sizeof(float) * (size_t)m * m));
        CK(cudaMalloc(&tau, sizeof(float) * m));
        k_random<<<1024, 256>>>(dq, (uint64_t)D * m);
        CK(cudaGetLastError());
        if ((rc = orth(g, dq, D, m, tau, &work, &lwork, info)))
            goto out;
        for (int it = 0; it < 4; it++) { /* power steps: spectra decay, 4 suffice */
            CB(cublasGemmEx(g->blas, CUBLAS_OP_N, CUBLAS_OP_N, (int)D, (int)m, (int)D, &one, dcov,
                            CUDA_R_32F, (int)D, dq, CUDA_R_32F, (int)D, &zero, dy, CUDA_R_32F,
                            (int)D, CUBLAS_COMPUTE_32F_FAST_TF32, CUBLAS_GEMM_DEFAULT));
            float *t = dq;
            dq = dy;
            dy = t;
            if ((rc = orth(g, dq, D, m, tau, &work, &lwork, info)))
                goto out;
        }
        /* B = Q^T C Q, then its eigenvectors V: basis = Q V. */
        CB(cublasSgemm(g->blas, CUBLAS_OP_N, CUBLAS_OP_N, (int)D, (int)m, (int)D, &one, dcov,
                       (int)D, dq, (int)D, &zero, dy, (int)D));
        CB(cublasSgemm(g->blas, CUBLAS_OP_T, CUBLAS_OP_N, (int)m, (int)m, (int)D, &one, dq, (int)D,
                       dy, (int)D, &zero, db, (int)m));
        int lw2 = 0;
        CS(cusolverDnSsyevd_bufferSize(g->sol, CUSOLVER_EIG_MODE_VECTOR, CUBLAS_FILL_MODE_UPPER,
                                       (int)m, db, (int)m, w, &lw2));
        if (lw2 > lwork) {
            cudaFree(work);
            work = NULL;
            CK(cudaMalloc(&work, sizeof(float) * (size_t)lw2));
            lwork = lw2;
        }
        CS(cusolverDnSsyevd(g->sol, CUSOLVER_EIG_MODE_VECTOR, CUBLAS_FILL_MODE_UPPER, (int)m, db,
                            (int)m, w, work, lwork, info));
        CK(cudaMemcpy(&hinfo, info, sizeof hinfo, cudaMemcpyDeviceToHost));
        if (hinfo) {
            rc = KVTC_ENUMERICAL;
            goto out;
        }
        CB(cublasSgemm(g->blas, CUBLAS_OP_N, CUBLAS_OP_N, (int)D, (int)m, (int)m, &one, dq, (int)D,
                       db, (int)m, &zero, dy, (int)D));
        evec = dy;
    }
    hw = (float *)malloc(sizeof(float) * m);
    hu = (float *)malloc(sizeof(float) * (size_t)D * k);
    if (!hw || !hu) {
        rc = KVTC_ENOMEM;
        goto out;
    }
    CK(cudaMemcpy(hw, w, sizeof(float) * m, cudaMemcpyDeviceToHost));
    /* The top k columns (the last k: ascending order), largest first. */
    CK(cudaMemcpy(hu, evec + (size_t)(m - k) * D, sizeof(float) * (size_t)D * k,
                  cudaMemcpyDeviceToHost));
    {
        /* as calibrate.c: stop at negligible directions (rank-deficient data) */
        float top = hw[m - 1] > 0 ? hw[m - 1] : 0;
        uint32_t kk = 0;
        *var_kept = 0;
        while (kk < k && hw[m - 1 - kk] > top * 1e-7f)
            *var_kept += hw[m - 1 - kk++];
        rc = KVTC_ENUMERICAL;
        if (kk == 0)
            goto out; /* constant data: nothing to learn */
        for (uint32_t c = 0; c < kk; c++)
            for (uint32_t d = 0; d < D; d++)
                basis[(size_t)d * kk + c] = hu[(size_t)(k - 1 - c) * D + d];
        *kp = kk;
        rc = 0;
    }
    /* The planner reads the centred in-sample rows on the host (none when
     * it plans on held-out rows: then the 160K-row loop is skipped). */
    for (uint64_t r = 0; r < n_centred; r++)
        for (uint32_t j = 0; j < D; j++)
            rows[r * D + j] -= mean[j];
out:
    cudaFree(dx);
    cudaFree(dcov);
    cudaFree(dmean);
    cudaFree(ones);
    cudaFree(w);
    cudaFree(work);
    cudaFree(dq);
    cudaFree(dy);
    cudaFree(db);
    cudaFree(tau);
    cudaFree(info);
    free(hw);
    free(hu);
    return rc;
}

static int gpu_pca(void *ctx, float *rows, uint32_t n, uint32_t n_centred, uint32_t D,
                   uint32_t *kp, float *mean, float *basis, double *var_total, double *var_kept)
{
    double t0 = mono_s();
    int rc = gpu_pca_run(ctx, rows, n, n_centred, D, kp, mean, basis, var_total, var_kept);
    kvtc__gpu_calib_pca_seconds += mono_s() - t0;
    return rc;
}

extern "C" int kvtc_gpu_calibrator_fit(kvtc_calibrator *cal, int device)
{
    if (!cal)
        return KVTC_EINVAL;
    if (!kvtc_gpu_available())
        return KVTC_ENOTSUP;
    gcal g = {device, NULL, NULL};
    int rc = kvtc__cuda_err(cudaSetDevice(device), "cudaSetDevice");
    if (rc)
        return rc;
    if (cublasCreate(&g.blas) != CUBLAS_STATUS_SUCCESS)
        return KVTC_EIO;
    if (cusolverDnCreate(&g.sol) != CUSOLVER_STATUS_SUCCESS) {
        cublasDestroy(g.blas);
        return KVTC_EIO;
    }
    kvtc__gpu_calib_pca_seconds = 0;
    rc = kvtc__calibrator_fit_pca(cal, gpu_pca, &g);
    cusolverDnDestroy(g.sol);
    cublasDestroy(g.blas);
    return rc;
}
