/* gpu_gemm.cu - the projections (fp16 or bf16 operands, fp32 accumulation)
 * on a pipeline lane: cuBLAS's GemmEx on all SMs by default, or cuBLASLt
 * with an SM count target (kvtc_gpu_codec.gemm_sms) so that the row and
 * quantization kernels of another lane find free SMs while it runs. */
#include "gpu_internal.h"

static cudaDataType in_type(const kvtc_gpu_codec *g)
{
    return g->params.gemm == KVTC_GPU_GEMM_FP16 ? CUDA_R_16F : CUDA_R_16BF;
}

/* Column-major C[m x n] = op(A) * B[k x n], A[m x k] (ta N, lda >= m) or
 * A^T with A[k x m] (ta T, lda >= k). */
static int lt_gemm(kvtc_gpu_codec *g, kvtc__lane *ln, cublasOperation_t ta, uint64_t m,
                   uint64_t n, uint64_t k, const void *A, uint64_t lda, const void *B, uint64_t ldb,
                   void *C, cudaDataType ct, uint64_t ldc, cudaStream_t s)
{
    cublasLtMatmulDesc_t op = NULL;
    cublasLtMatrixLayout_t la = NULL, lb = NULL, lc = NULL;
    cublasLtMatmulPreference_t pref = NULL;
    cublasLtMatmulHeuristicResult_t heur;
    int found = 0, rc = KVTC_EIO;
    int32_t sms = (int32_t)g->gemm_sms;
    uint64_t ws = ln->ws.cap;
    const float one = 1.0f, zero = 0.0f;
    cudaDataType at = in_type(g);
    if (cublasLtMatmulDescCreate(&op, CUBLAS_COMPUTE_32F, CUDA_R_32F) ||
        cublasLtMatmulDescSetAttribute(op, CUBLASLT_MATMUL_DESC_TRANSA, &ta, sizeof ta) ||
        cublasLtMatmulDescSetAttribute(op, CUBLASLT_MATMUL_DESC_SM_COUNT_TARGET, &sms,
                                       sizeof sms) ||
        cublasLtMatrixLayoutCreate(&la, at, ta == CUBLAS_OP_N ? m : k, ta == CUBLAS_OP_N ? k : m,
                                   (int64_t)lda) ||
        cublasLtMatrixLayoutCreate(&lb, at, k, n, (int64_t)ldb) ||
        cublasLtMatrixLayoutCreate(&lc, ct, m, n, (int64_t)ldc) ||
        cublasLtMatmulPreferenceCreate(&pref) ||
        cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &ws,
                                             sizeof ws) ||
        cublasLtMatmulAlgoGetHeuristic(g->lt, op, la, lb, lc, lc, pref, 1, &heur, &found) ||
        !found)
        goto out;
    if (cublasLtMatmul(g->lt, op, &one, A, la, B, lb, &zero, C, lc, C, lc, &heur.algo, ln->ws.p,
                       ws, s) == CUBLAS_STATUS_SUCCESS)
        rc = 0;
out:
    if (pref)
        cublasLtMatmulPreferenceDestroy(pref);
    if (lc)
        cublasLtMatrixLayoutDestroy(lc);
    if (lb)
        cublasLtMatrixLayoutDestroy(lb);
    if (la)
        cublasLtMatrixLayoutDestroy(la);
    if (op)
        cublasLtMatmulDescDestroy(op);
    return rc;
}

int kvtc__gemm_encode(kvtc_gpu_codec *g, kvtc__lane *ln, int stream, uint64_t M, const void *rows,
                      float *coef, cudaStream_t s)
{
    /* Column-major view: coef^T[kp x M] = basis^T[kp x D] * rows^T[D x M]. */
    uint32_t kp = g->ld[stream];
    if (!M || !g->kp[stream])
        return 0;
    if (g->gemm_sms)
        return lt_gemm(g, ln, CUBLAS_OP_N, kp, M, g->D, g->benc[stream], kp, rows, g->D, coef,
                       CUDA_R_32F, kp, s);
    const float one = 1.0f, zero = 0.0f;
    cublasSetStream(ln->blas, s);
    cublasStatus_t st = cublasGemmEx(ln->blas, CUBLAS_OP_N, CUBLAS_OP_N, (int)kp, (int)M,
                                     (int)g->D, &one, g->benc[stream], in_type(g), (int)kp, rows,
                                     in_type(g), (int)g->D, &zero, coef, CUDA_R_32F, (int)kp,
                                     CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT);
    return st == CUBLAS_STATUS_SUCCESS ? 0 : KVTC_EIO;
}

int kvtc__gemm_decode(kvtc_gpu_codec *g, kvtc__lane *ln, int stream, uint64_t M, const void *coef,
                      void *rows, cudaStream_t s)
{
    /* rows^T[D x M] = basis[D x kp] * coef^T[kp x M]. With kp == 0 the rows
     * are the means: zero them. */
    uint32_t kp = g->ld[stream];
    if (!M)
        return 0;
    if (!g->kp[stream])
        return kvtc__cuda_err(cudaMemsetAsync(rows, 0, M * g->D * 2, s), "memset");
    if (g->gemm_sms)
        return lt_gemm(g, ln, CUBLAS_OP_T, g->D, M, kp, g->bdec[stream], kp, coef, kp, rows,
                       in_type(g), g->D, s);
    const float one = 1.0f, zero = 0.0f;
    cublasSetStream(ln->blas, s);
    cublasStatus_t st = cublasGemmEx(ln->blas, CUBLAS_OP_T, CUBLAS_OP_N, (int)g->D, (int)M,
                                     (int)kp, &one, g->bdec[stream], in_type(g), (int)kp, coef,
                                     in_type(g), (int)kp, &zero, rows, in_type(g), (int)g->D,
                                     CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT);
    return st == CUBLAS_STATUS_SUCCESS ? 0 : KVTC_EIO;
}
