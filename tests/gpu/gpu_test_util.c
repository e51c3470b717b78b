/* gpu_test_util.c - see gpu_test_util.h. */
#include "gpu_test_util.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

kvtc_layout gt_layout(uint32_t layers, uint32_t heads, uint32_t hdim, uint32_t dtype,
                      uint32_t rope_style)
{
    kvtc_layout l = {.layers = layers, .kv_heads = heads, .head_dim = hdim, .dtype = dtype,
                     .chunk_tokens = 64, .rope_style = rope_style, .rope_theta = 10000.0f};
    return l;
}

static double gauss(uint64_t *s)
{
    *s ^= *s << 13; *s ^= *s >> 7; *s ^= *s << 17;
    double u1 = ((*s >> 11) + 1.0) / 9007199254740993.0;
    *s ^= *s << 13; *s ^= *s >> 7; *s ^= *s << 17;
    double u2 = (*s >> 11) / 9007199254740992.0;
    return sqrt(-2 * log(u1)) * cos(2 * M_PI * u2);
}

#define RANK 8
void *gt_chunk(const kvtc_layout *l, uint32_t n, uint32_t first_pos, uint64_t seed)
{
    size_t D = kvtc_row_width(l), hd = (size_t)l->kv_heads * l->head_dim;
    float *mix = malloc(sizeof(float) * RANK * D * 2), *f = malloc(sizeof(float) * 2 * D * n);
    float *row = malloc(sizeof(float) * D);
    void *out = malloc(kvtc_chunk_bytes(l, n));
    uint32_t *pos = malloc(sizeof(uint32_t) * l->layers * l->kv_heads);
    uint64_t ms = 0x5eed1234; /* the model is fixed; tokens vary with seed */
    for (size_t i = 0; i < RANK * D * 2; i++)
        mix[i] = (float)gauss(&ms) / (float)(1 + (i / D) % RANK);
    uint64_t ts = seed * 2654435761u + 99;
    for (uint32_t t = 0; t < n; t++)
        for (int s = 0; s < 2; s++) {
            double z[RANK];
            for (int r = 0; r < RANK; r++)
                z[r] = gauss(&ts);
            for (size_t j = 0; j < D; j++) {
                double v = 0.3 * sin(0.1 * (double)j) + 0.02 * gauss(&ts);
                for (int r = 0; r < RANK; r++)
                    v += z[r] * mix[((size_t)s * RANK + r) * D + j];
                row[j] = (float)v;
            }
            if (s == 0 && l->rope_style != KVTC_ROPE_NONE) {
                for (size_t v = 0; v < (size_t)l->layers * l->kv_heads; v++)
                    pos[v] = first_pos + t;
                kvtc_rope_apply(l, row, (size_t)l->layers * l->kv_heads, pos, 0);
            }
            for (uint32_t L = 0; L < l->layers; L++)
                memcpy(f + (((size_t)L * 2 + s) * n + t) * hd, row + L * hd, hd * sizeof(float));
        }
    kvtc_from_float(l->dtype, f, out, 2 * D * n);
    free(mix);
    free(f);
    free(row);
    free(pos);
    return out;
}

kvtc_calibrator *gt_calibrator(const kvtc_layout *l, uint32_t tokens, uint64_t seed,
                               const float *slab_weights)
{
    kvtc_calibrator *cal = NULL;
    kvtc_calib_params cp = {.slab_weights = slab_weights};
    cr_assert_eq(kvtc_calibrator_create(l, &cp, &cal), 0);
    for (uint32_t t = 0; t < tokens; t += 64) {
        void *c = gt_chunk(l, 64, 100 + t, seed + t);
        cr_assert_eq(kvtc_calibrator_add(cal, c, 64, 100 + t), 0);
        free(c);
    }
    return cal;
}

kvtc_profile *gt_profile(const kvtc_layout *l, uint32_t tokens, uint64_t seed)
{
    kvtc_calibrator *cal = NULL;
    cr_assert_eq(kvtc_calibrator_create(l, NULL, &cal), 0);
    for (uint32_t t = 0; t < tokens; t += 64) {
        void *c = gt_chunk(l, 64, 100 + t, seed + t);
        cr_assert_eq(kvtc_calibrator_add(cal, c, 64, 100 + t), 0);
        free(c);
    }
    float targets[] = {4, 8, 16};
    kvtc_profile *p = NULL;
    cr_assert_eq(kvtc_calibrator_finish(cal, targets, 3, &p), 0);
    kvtc_calibrator_free(cal);
    return p;
}

static float *to_f(const kvtc_layout *l, const void *a, uint32_t n)
{
    size_t e = kvtc_chunk_bytes(l, n) / kvtc_dtype_size(l->dtype);
    float *f = malloc(e * sizeof(float));
    kvtc_to_float(l->dtype, a, f, e);
    return f;
}

double gt_mse(const kvtc_layout *l, const void *a, const void *b, uint32_t n)
{
    size_t e = kvtc_chunk_bytes(l, n) / kvtc_dtype_size(l->dtype);
    float *fa = to_f(l, a, n), *fb = to_f(l, b, n);
    double s = 0;
    for (size_t i = 0; i < e; i++)
        s += ((double)fa[i] - fb[i]) * ((double)fa[i] - fb[i]);
    free(fa);
    free(fb);
    return s / (double)e;
}

double gt_energy(const kvtc_layout *l, const void *a, uint32_t n)
{
    size_t e = kvtc_chunk_bytes(l, n) / kvtc_dtype_size(l->dtype);
    float *f = to_f(l, a, n);
    double s = 0;
    for (size_t i = 0; i < e; i++)
        s += (double)f[i] * f[i];
    free(f);
    return s / (double)e;
}

size_t gt_count_poison(const kvtc_layout *l, const void *a, uint32_t n)
{
    size_t bytes = kvtc_chunk_bytes(l, n), es = kvtc_dtype_size(l->dtype), hits = 0;
    const uint8_t *p = a;
    for (size_t i = 0; i + es <= bytes; i += es) {
        size_t k = 0;
        while (k < es && p[i + k] == 0xA5)
            k++;
        hits += k == es;
    }
    return hits;
}

void gt_gpu_encode(kvtc_gpu_codec *g, const kvtc_layout *l, const kvtc_chunk *chunks,
                   uint32_t n, uint8_t **out, size_t *len, int32_t *status)
{
    kvtc_gpu_chunk *gc = calloc(n, sizeof *gc);
    uint64_t *off = calloc(n, 8), *sz = calloc(n, 8);
    cr_assert(gc && off && sz);
    size_t in_total = 0;
    for (uint32_t i = 0; i < n; i++)
        in_total += kvtc_chunk_bytes(l, chunks[i].n_tokens);
    uint8_t *din = NULL, *ddst = NULL;
    uint64_t *doff = NULL, *dsz = NULL;
    int32_t *dst_status = NULL;
    CUDA_OK(cudaMalloc((void **)&din, in_total + 1));
    size_t at = 0;
    for (uint32_t i = 0; i < n; i++) {
        size_t b = kvtc_chunk_bytes(l, chunks[i].n_tokens);
        CUDA_OK(cudaMemcpy(din + at, chunks[i].data, b, cudaMemcpyHostToDevice));
        gc[i] = (kvtc_gpu_chunk){din + at, chunks[i].n_tokens, chunks[i].first_pos, chunks[i].flags};
        at += b;
    }
    size_t cap = kvtc_gpu_encode_bound(g, gc, n);
    cr_assert_gt(cap, 0);
    CUDA_OK(cudaMalloc((void **)&ddst, cap));
    CUDA_OK(cudaMemset(ddst, 0xA5, cap)); /* poison: every byte must be written */
    CUDA_OK(cudaMalloc((void **)&doff, 8 * n));
    CUDA_OK(cudaMalloc((void **)&dsz, 8 * n));
    CUDA_OK(cudaMalloc((void **)&dst_status, 4 * n));
    cudaStream_t st;
    CUDA_OK(cudaStreamCreate(&st));
    cr_assert_eq(kvtc_gpu_encode(g, gc, n, ddst, cap, doff, dsz, dst_status, st), 0);
    CUDA_OK(cudaStreamSynchronize(st));
    CUDA_OK(cudaGetLastError());
    CUDA_OK(cudaMemcpy(off, doff, 8 * n, cudaMemcpyDeviceToHost));
    CUDA_OK(cudaMemcpy(sz, dsz, 8 * n, cudaMemcpyDeviceToHost));
    CUDA_OK(cudaMemcpy(status, dst_status, 4 * n, cudaMemcpyDeviceToHost));
    for (uint32_t i = 0; i < n; i++) {
        len[i] = sz[i];
        out[i] = malloc(sz[i] ? sz[i] : 1);
        cr_assert(off[i] + sz[i] <= cap);
        if (sz[i])
            CUDA_OK(cudaMemcpy(out[i], ddst + off[i], sz[i], cudaMemcpyDeviceToHost));
    }
    cudaStreamDestroy(st);
    cudaFree(din);
    cudaFree(ddst);
    cudaFree(doff);
    cudaFree(dsz);
    cudaFree(dst_status);
    free(gc);
    free(off);
    free(sz);
}

void gt_gpu_decode(kvtc_gpu_codec *g, const kvtc_layout *l, const kvtc_chunk *chunks, uint32_t n,
                   uint8_t *const *src, const size_t *len, void **dst, int32_t *status)
{
    kvtc_gpu_container *it = calloc(n, sizeof *it);
    size_t src_total = 0, out_total = 0;
    for (uint32_t i = 0; i < n; i++) {
        src_total += len[i] + 3; /* odd gaps: unaligned containers */
        out_total += kvtc_chunk_bytes(l, chunks[i].n_tokens);
    }
    uint8_t *dsrc = NULL, *dout = NULL;
    int32_t *dstatus = NULL;
    CUDA_OK(cudaMalloc((void **)&dsrc, src_total + 1));
    CUDA_OK(cudaMalloc((void **)&dout, out_total + 1));
    CUDA_OK(cudaMemset(dout, 0xA5, out_total + 1));
    CUDA_OK(cudaMalloc((void **)&dstatus, 4 * n));
    size_t at = 0, ot = 0;
    for (uint32_t i = 0; i < n; i++) {
        CUDA_OK(cudaMemcpy(dsrc + at, src[i], len[i], cudaMemcpyHostToDevice));
        it[i] = (kvtc_gpu_container){at, len[i], dout + ot, chunks[i].n_tokens,
                                     chunks[i].first_pos, chunks[i].flags};
        at += len[i] + 3;
        ot += kvtc_chunk_bytes(l, chunks[i].n_tokens);
    }
    cudaStream_t st;
    CUDA_OK(cudaStreamCreate(&st));
    cr_assert_eq(kvtc_gpu_decode(g, it, n, dsrc, dstatus, st), 0);
    CUDA_OK(cudaStreamSynchronize(st));
    CUDA_OK(cudaGetLastError());
    CUDA_OK(cudaMemcpy(status, dstatus, 4 * n, cudaMemcpyDeviceToHost));
    ot = 0;
    for (uint32_t i = 0; i < n; i++) {
        size_t b = kvtc_chunk_bytes(l, chunks[i].n_tokens);
        dst[i] = malloc(b);
        CUDA_OK(cudaMemcpy(dst[i], dout + ot, b, cudaMemcpyDeviceToHost));
        ot += b;
    }
    uint8_t guard = 0;
    CUDA_OK(cudaMemcpy(&guard, dout + out_total, 1, cudaMemcpyDeviceToHost));
    cr_assert_eq(guard, 0xA5, "decode wrote past the last chunk");
    cudaStreamDestroy(st);
    cudaFree(dsrc);
    cudaFree(dout);
    cudaFree(dstatus);
    free(it);
}
