/* The GPU codec's GEMM choices (kernels/gpu_gemm.cu): the cuBLASLt
 * algorithms timed at context creation against cuBLAS's GemmEx, and the
 * direct decode (the decode GEMM writes the canonical chunk, mean folded
 * in as two coefficients fixed at 1, keys' RoPE redone in place; off by
 * default and built on request, since it measured slower) against the
 * rows pass. Every choice must give containers the CPU decodes within
 * the CPU reference's error and decode CPU containers likewise, on bf16
 * and fp16 chunks, half-split, interleaved and no RoPE, with raw, all-sink
 * and one-token chunks in the batch. The direct decode's variants: per
 * chunk (v10), grouped pointer-array GEMMs through cuBLASLt or
 * cublasGemmBatchedEx, layer- or chunk-major (gdir, v18); the grouped one
 * must take the path it claims (counters), give a chunk the same bytes
 * alone as in a batch of hundreds, the same bytes in either order and
 * from either dequantizer (tiled or row-per-block).
 * Skips without a GPU. */
#include <criterion/criterion.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "gpu_test_util.h"

/* kernels/gpu_gemm.cu (internal) */
extern int kvtc__gpu_gemm_set(kvtc_gpu_codec *g, uint32_t use_lt, uint32_t direct);
extern int kvtc__gpu_gemm_info(const kvtc_gpu_codec *g, int kind, int stream, uint32_t *idx,
                               uint32_t *n, float *ms, float *ms_first);
extern int kvtc__gpu_gemm_time(kvtc_gpu_codec *g, uint64_t M, int iters, int noise,
                               float *enc_ms, float *dec_ms);
extern int kvtc__gpu_direct_info(const kvtc_gpu_codec *g, uint64_t *out);
/* kernels/gpu_quant.cu: 0 the row-per-block (de)quantizer, 1 tiled */
extern int kvtc__gpu_quant_set(kvtc_gpu_codec *g, uint32_t tiles);

/* kernels/gpu_internal.h: direct decode variants, paths (counters) */
enum { DIR_CHUNKS = 1, DIR_GROUPED = 2, DIR_BATCHEDEX = 3, DIR_CHUNK_MAJOR = 4 };
enum { PATH_CHUNK = 0, PATH_LT = 1, PATH_BATCHEDEX = 2 };

#define N_CH 9

static void check_close(const kvtc_layout *l, const kvtc_chunk *c, const void *ref,
                        const void *got, const char *what, uint32_t i, uint32_t lt, uint32_t dir)
{
    double e_ref = gt_mse(l, c->data, ref, c->n_tokens), e = gt_mse(l, c->data, got, c->n_tokens);
    double energy = gt_energy(l, c->data, c->n_tokens);
    cr_assert(e <= 1.3 * e_ref + 2e-5 * energy + 1e-12,
              "dtype %u rope %u, lt %u direct %u, %s chunk %u: mse %.3g vs CPU %.3g", l->dtype,
              l->rope_style, lt, dir, what, i, e, e_ref);
}

/* Every (GEMM path, decode path) the context offers on one layout. */
static void every_choice(kvtc_layout l, int want_direct)
{
    kvtc_profile *p = gt_profile(&l, 512, 21);
    kvtc_chunk c[N_CH];
    uint8_t *cpu[N_CH], *gpu[N_CH];
    size_t cpu_len[N_CH], gpu_len[N_CH];
    void *cpu_rec[N_CH], *rec[N_CH];
    int32_t st[N_CH];
    for (uint32_t i = 0; i < N_CH; i++) {
        /* long, one-token, all-sink (pos 0, 2 tokens), raw and plain chunks */
        uint32_t t = i % 3 == 0 ? 200 : i % 3 == 1 ? 1 : 33 + 7 * i, pos = 64 + 40 * i;
        if (i == 4) {
            t = 2;
            pos = 0;
        }
        c[i] = (kvtc_chunk){gt_chunk(&l, t, pos, 900 + i), t, pos, i == 7 ? KVTC_CHUNK_RAW : 0};
    }
    kvtc_encoder *enc = NULL;
    kvtc_decoder *dec = NULL;
    cr_assert_eq(kvtc_encoder_create(p, 1, KVTC_STAGE_DEFLATE, 0, &enc), 0);
    cr_assert_eq(kvtc_decoder_create(p, &dec), 0);
    for (uint32_t i = 0; i < N_CH; i++) {
        size_t cap = kvtc_encode_bound(enc, c[i].n_tokens), rb = kvtc_chunk_bytes(&l, c[i].n_tokens);
        cpu[i] = malloc(cap);
        cpu_rec[i] = malloc(rb);
        cr_assert_eq(kvtc_encode(enc, &c[i], cpu[i], cap, &cpu_len[i]), 0);
        cr_assert_eq(kvtc_decode(dec, cpu[i], cpu_len[i], cpu_rec[i], rb, NULL), 0);
    }
    kvtc_gpu_codec *g = NULL;
    cr_assert_eq(kvtc_gpu_codec_create(p, 1, NULL, &g), 0);
    uint32_t idx = 0, n = 0;
    float ms = 0, ms0 = 0;
    cr_assert_eq(kvtc__gpu_gemm_info(g, 0, 0, &idx, &n, &ms, &ms0), 0, "no tuned encode GEMM");
    cr_assert(idx < n && ms > 0 && ms <= ms0, "idx %u of %u, %.4f vs first %.4f ms", idx, n, ms,
              ms0);
    /* the direct decode is off by default: nothing of it exists before
     * it is asked for */
    cr_assert_eq(kvtc__gpu_gemm_info(g, 2, 0, &idx, &n, &ms, &ms0), KVTC_EINVAL);
    cr_assert_eq(kvtc__gpu_gemm_set(g, 1, 1) == 0, want_direct);
    cr_assert_eq(kvtc__gpu_gemm_info(g, 2, 0, &idx, &n, &ms, &ms0) == 0, want_direct,
                 "direct GEMM tuned: expected %d", want_direct);
    if (want_direct) /* informative: no cuBLASLt pointer-array algorithm is no failure */
        fprintf(stderr, "gpu_gemm dtype %u rope %u: grouped direct GEMM %s\n", l.dtype,
                l.rope_style,
                kvtc__gpu_gemm_info(g, 3, 0, &idx, &n, &ms, &ms0) ? "not tuned" : "tuned");
    /* (use_lt, direct): direct 0..4, the grouped ones with either GEMM
     * path for the encoder (the direct GEMMs are cuBLASLt's or
     * GemmBatchedEx whatever use_lt says) */
    static const uint32_t vs[][2] = {{1, 0}, {0, 0}, {0, 1}, {1, 1}, {1, 2}, {0, 3}, {1, 4}};
    for (uint32_t v = 0; v < sizeof vs / sizeof vs[0]; v++) {
        uint32_t lt = vs[v][0], dir = vs[v][1];
        uint64_t r0[3], r1[3];
        if (dir && !want_direct)
            continue;
        cr_assert_eq(kvtc__gpu_gemm_set(g, lt, dir), 0);
        gt_gpu_encode(g, &l, c, N_CH, gpu, gpu_len, st);
        for (uint32_t i = 0; i < N_CH; i++) {
            cr_assert_eq(st[i], 0, "encode status %d chunk %u", st[i], i);
            size_t rb = kvtc_chunk_bytes(&l, c[i].n_tokens);
            void *out = malloc(rb);
            cr_assert_eq(kvtc_decode(dec, gpu[i], gpu_len[i], out, rb, NULL), 0);
            check_close(&l, &c[i], cpu_rec[i], out, "GPU enc -> CPU dec", i, lt, dir);
            free(out);
            free(gpu[i]);
        }
        cr_assert_eq(kvtc__gpu_direct_info(g, r0), 0);
        gt_gpu_decode(g, &l, c, N_CH, cpu, cpu_len, rec, st);
        cr_assert_eq(kvtc__gpu_direct_info(g, r1), 0);
        for (uint32_t i = 0; i < N_CH; i++) {
            cr_assert_eq(st[i], 0, "decode status %d chunk %u", st[i], i);
            check_close(&l, &c[i], cpu_rec[i], rec[i], "CPU enc -> GPU dec", i, lt, dir);
            free(rec[i]);
        }
        /* the path each variant claims: 5 distinct T in the batch (1, 47,
         * 68, 89, 200: one grouped GEMM each per stream), 7 coded chunks */
        uint64_t ch = r1[PATH_CHUNK] - r0[PATH_CHUNK], lt_n = r1[PATH_LT] - r0[PATH_LT],
                 bx = r1[PATH_BATCHEDEX] - r0[PATH_BATCHEDEX];
        fprintf(stderr, "gpu_gemm dtype %u rope %u lt %u direct %u: GEMMs per chunk %llu, "
                        "cuBLASLt grouped %llu, GemmBatchedEx %llu\n",
                l.dtype, l.rope_style, lt, dir, (unsigned long long)ch,
                (unsigned long long)lt_n, (unsigned long long)bx);
        if (dir == DIR_CHUNKS)
            cr_assert(ch == 14 && lt_n + bx == 0, "per chunk: %llu %llu %llu",
                      (unsigned long long)ch, (unsigned long long)lt_n, (unsigned long long)bx);
        else if (dir == DIR_BATCHEDEX)
            cr_assert(ch + lt_n == 0 && bx == 10, "GemmBatchedEx: %llu %llu %llu",
                      (unsigned long long)ch, (unsigned long long)lt_n, (unsigned long long)bx);
        else if (dir)
            cr_assert(ch == 0 && lt_n + bx == 10, "grouped: %llu %llu %llu",
                      (unsigned long long)ch, (unsigned long long)lt_n, (unsigned long long)bx);
        else
            cr_assert(ch + lt_n + bx == 0, "direct off, yet direct GEMMs ran");
    }
    float e_ms = 0, d_ms = 0;
    cr_assert_eq(kvtc__gpu_gemm_time(g, 64, 2, 1, &e_ms, &d_ms), 0);
    cr_assert(e_ms > 0 && d_ms > 0);
    kvtc_gpu_codec_free(g);
    for (uint32_t i = 0; i < N_CH; i++) {
        free((void *)c[i].data);
        free(cpu[i]);
        free(cpu_rec[i]);
    }
    kvtc_encoder_free(enc);
    kvtc_decoder_free(dec);
    kvtc_profile_free(p);
}

Test(gpu_gemm, bf16_half_split_every_choice)
{
    GPU_OR_SKIP();
    every_choice(gt_layout(4, 2, 32, KVTC_DTYPE_BF16, KVTC_ROPE_HALF_SPLIT), 1);
}

Test(gpu_gemm, fp16_interleaved_every_choice)
{
    GPU_OR_SKIP();
    every_choice(gt_layout(3, 2, 32, KVTC_DTYPE_FP16, KVTC_ROPE_INTERLEAVED), 1);
}

Test(gpu_gemm, bf16_no_rope_every_choice)
{
    GPU_OR_SKIP();
    every_choice(gt_layout(2, 4, 16, KVTC_DTYPE_BF16, KVTC_ROPE_NONE), 1);
}

Test(gpu_gemm, no_direct_where_rows_are_not_16_byte_units)
{
    GPU_OR_SKIP();
    every_choice(gt_layout(2, 2, 24, KVTC_DTYPE_BF16, KVTC_ROPE_HALF_SPLIT), 0);
}

/* The grouped direct decode over more chunks than k_dir_ptrs has threads
 * a block (its token-count scan crosses blocks and tiles): 300 chunks of
 * 1..3 coded tokens after 4 sink-bearing ones, decoded within the CPU's
 * bounds; a chunk alone decodes to the bytes it got in the batch (its
 * GEMM depends on its token count, not on its batch-mates), the
 * chunk-major order gives the layer-major order's bytes, and so does the
 * row-per-block dequantizer. */
#define N_MANY 300
Test(gpu_gemm, grouped_direct_many_chunks)
{
    GPU_OR_SKIP();
    kvtc_layout l = gt_layout(3, 2, 16, KVTC_DTYPE_BF16, KVTC_ROPE_HALF_SPLIT);
    kvtc_profile *p = gt_profile(&l, 512, 33);
    kvtc_chunk *c = calloc(N_MANY, sizeof *c);
    uint8_t **cont = calloc(N_MANY, sizeof *cont);
    size_t *len = calloc(N_MANY, sizeof *len);
    void **cref = calloc(N_MANY, sizeof *cref), **rec = calloc(N_MANY, sizeof *rec),
         **rec4 = calloc(N_MANY, sizeof *rec4);
    int32_t *st = calloc(N_MANY, sizeof *st);
    kvtc_encoder *enc = NULL;
    kvtc_decoder *dec = NULL;
    cr_assert_eq(kvtc_encoder_create(p, 1, KVTC_STAGE_DEFLATE, 0, &enc), 0);
    cr_assert_eq(kvtc_decoder_create(p, &dec), 0);
    for (uint32_t i = 0; i < N_MANY; i++) {
        /* the first 4 start at position 0..3: sinks, 1-3 coded tokens */
        uint32_t t = i < 4 ? 5 : 1 + i % 3, pos = i < 4 ? i : 64 + 8 * i;
        c[i] = (kvtc_chunk){gt_chunk(&l, t, pos, 5000 + i), t, pos, 0};
        size_t cap = kvtc_encode_bound(enc, t), rb = kvtc_chunk_bytes(&l, t);
        cont[i] = malloc(cap);
        cref[i] = malloc(rb);
        cr_assert_eq(kvtc_encode(enc, &c[i], cont[i], cap, &len[i]), 0);
        cr_assert_eq(kvtc_decode(dec, cont[i], len[i], cref[i], rb, NULL), 0);
    }
    kvtc_gpu_codec *g = NULL;
    cr_assert_eq(kvtc_gpu_codec_create(p, 1, NULL, &g), 0);
    cr_assert_eq(kvtc__gpu_gemm_set(g, 1, DIR_GROUPED), 0);
    uint64_t r0[3], r1[3];
    cr_assert_eq(kvtc__gpu_direct_info(g, r0), 0);
    gt_gpu_decode(g, &l, c, N_MANY, cont, len, rec, st);
    cr_assert_eq(kvtc__gpu_direct_info(g, r1), 0);
    /* T of 1, 2, 3 (the first 4 chunks: 5 - (4 - pos) coded tokens, i.e.
     * 1..4): four groups per stream, nothing per chunk */
    cr_assert(r1[PATH_CHUNK] == r0[PATH_CHUNK] &&
                  r1[PATH_LT] + r1[PATH_BATCHEDEX] - r0[PATH_LT] - r0[PATH_BATCHEDEX] == 8,
              "paths: per chunk %llu, grouped %llu",
              (unsigned long long)(r1[PATH_CHUNK] - r0[PATH_CHUNK]),
              (unsigned long long)(r1[PATH_LT] + r1[PATH_BATCHEDEX] - r0[PATH_LT] -
                                   r0[PATH_BATCHEDEX]));
    int all_lt = r1[PATH_LT] - r0[PATH_LT] == 8;
    for (uint32_t i = 0; i < N_MANY; i++) {
        cr_assert_eq(st[i], 0, "decode status %d chunk %u", st[i], i);
        check_close(&l, &c[i], cref[i], rec[i], "grouped, 300 chunks", i, 1, DIR_GROUPED);
    }
    static const uint32_t alone[] = {0, 3, 4, 255, 256, 299};
    for (uint32_t k = 0; k < sizeof alone / sizeof alone[0]; k++) {
        uint32_t i = alone[k];
        void *one = NULL;
        int32_t s1 = -1;
        gt_gpu_decode(g, &l, &c[i], 1, &cont[i], &len[i], &one, &s1);
        cr_assert_eq(s1, 0);
        cr_assert(!memcmp(one, rec[i], kvtc_chunk_bytes(&l, c[i].n_tokens)),
                  "chunk %u decodes to other bytes alone than in its batch", i);
        free(one);
    }
    cr_assert_eq(kvtc__gpu_gemm_set(g, 1, DIR_CHUNK_MAJOR), 0);
    cr_assert_eq(kvtc__gpu_direct_info(g, r0), 0);
    gt_gpu_decode(g, &l, c, N_MANY, cont, len, rec4, st);
    cr_assert_eq(kvtc__gpu_direct_info(g, r1), 0);
    all_lt &= r1[PATH_LT] - r0[PATH_LT] == 8;
    for (uint32_t i = 0; i < N_MANY; i++) {
        cr_assert_eq(st[i], 0);
        /* one algorithm for both orders only when cuBLASLt ran all groups */
        if (all_lt)
            cr_assert(!memcmp(rec4[i], rec[i], kvtc_chunk_bytes(&l, c[i].n_tokens)),
                      "chunk %u: chunk-major bytes differ from layer-major", i);
        else
            check_close(&l, &c[i], cref[i], rec4[i], "chunk-major", i, 1, DIR_CHUNK_MAJOR);
        free(rec4[i]);
    }
    /* The public switch (kvtc_gpu_params.dec_gemm = KVTC_GPU_PROJ_DIRECT)
     * is this path: same bytes from a context created with it, through
     * the grouped GEMMs; encode has no direct projection. */
    {
        kvtc_gpu_params prm = {.field_mask = KVTC_GPU_PARAM_FIELD_ENC_GEMM | KVTC_GPU_PARAM_FIELD_DEC_GEMM};
        kvtc_gpu_codec *g2 = NULL;
        prm.enc_gemm = KVTC_GPU_PROJ_DIRECT;
        cr_assert_eq(kvtc_gpu_codec_create(p, 1, &prm, &g2), KVTC_EINVAL);
        prm.enc_gemm = KVTC_GPU_PROJ_AUTO;
        prm.dec_gemm = KVTC_GPU_PROJ_DIRECT;
        cr_assert_eq(kvtc_gpu_codec_create(p, 1, &prm, &g2), 0);
        cr_assert_eq(kvtc__gpu_direct_info(g2, r0), 0);
        gt_gpu_decode(g2, &l, c, N_MANY, cont, len, rec4, st);
        cr_assert_eq(kvtc__gpu_direct_info(g2, r1), 0);
        cr_assert(r1[PATH_CHUNK] == r0[PATH_CHUNK] &&
                      r1[PATH_LT] + r1[PATH_BATCHEDEX] - r0[PATH_LT] - r0[PATH_BATCHEDEX] == 8,
                  "KVTC_GPU_PROJ_DIRECT did not take the grouped GEMMs");
        for (uint32_t i = 0; i < N_MANY; i++) {
            cr_assert_eq(st[i], 0);
            cr_assert(!memcmp(rec4[i], rec[i], kvtc_chunk_bytes(&l, c[i].n_tokens)),
                      "chunk %u: KVTC_GPU_PROJ_DIRECT decodes to other bytes", i);
            free(rec4[i]);
            rec4[i] = NULL;
        }
        kvtc_gpu_codec_free(g2);
    }
    /* the direct activation from the row-per-block dequantizer (tiles 0)
     * and from the tiled one (the default): same values, same bytes */
    cr_assert_eq(kvtc__gpu_quant_set(g, 0), 0);
    cr_assert_eq(kvtc__gpu_gemm_set(g, 1, DIR_GROUPED), 0);
    gt_gpu_decode(g, &l, c, N_MANY, cont, len, rec4, st);
    for (uint32_t i = 0; i < N_MANY; i++) {
        cr_assert_eq(st[i], 0);
        cr_assert(!memcmp(rec4[i], rec[i], kvtc_chunk_bytes(&l, c[i].n_tokens)),
                  "chunk %u: row-per-block dequantizer's bytes differ from the tiled one's", i);
    }
    kvtc_gpu_codec_free(g);
    for (uint32_t i = 0; i < N_MANY; i++) {
        free((void *)c[i].data);
        free(cont[i]);
        free(cref[i]);
        free(rec[i]);
        free(rec4[i]);
    }
    free(c);
    free(cont);
    free(len);
    free(cref);
    free(rec);
    free(rec4);
    free(st);
    kvtc_encoder_free(enc);
    kvtc_decoder_free(dec);
    kvtc_profile_free(p);
}

Test(gpu_gemm, tuning_off_falls_back_to_gemmex)
{
    GPU_OR_SKIP();
    kvtc_layout l = gt_layout(2, 2, 32, KVTC_DTYPE_BF16, KVTC_ROPE_HALF_SPLIT);
    kvtc_profile *p = gt_profile(&l, 256, 5);
    kvtc_gpu_codec *g = NULL;
    setenv("KVTC_GPU_TUNE_ROWS", "0", 1);
    int rc = kvtc_gpu_codec_create(p, 0, NULL, &g);
    unsetenv("KVTC_GPU_TUNE_ROWS");
    cr_assert_eq(rc, 0);
    uint32_t idx, n;
    float ms, ms0;
    cr_assert_eq(kvtc__gpu_gemm_info(g, 0, 0, &idx, &n, &ms, &ms0), KVTC_EINVAL);
    cr_assert_eq(kvtc__gpu_gemm_set(g, 1, 1), KVTC_EINVAL);
    kvtc_chunk c = {gt_chunk(&l, 50, 300, 3), 50, 300, 0};
    uint8_t *out = NULL;
    size_t len = 0;
    int32_t st = -1;
    /* every direct variant with the heuristic's algorithms (none tuned) */
    for (uint32_t dir = 1; dir <= DIR_CHUNK_MAJOR; dir++) {
        void *rec = NULL;
        cr_assert_eq(kvtc__gpu_gemm_set(g, 0, dir), 0);
        cr_assert_eq(kvtc__gpu_gemm_info(g, 3, 0, &idx, &n, &ms, &ms0), KVTC_EINVAL);
        if (!out) {
            gt_gpu_encode(g, &l, &c, 1, &out, &len, &st);
            cr_assert_eq(st, 0);
        }
        gt_gpu_decode(g, &l, &c, 1, &out, &len, &rec, &st);
        cr_assert_eq(st, 0);
        double e = gt_mse(&l, c.data, rec, 50), en = gt_energy(&l, c.data, 50);
        cr_assert(e < 0.05 * en, "direct %u: mse %.3g of energy %.3g", dir, e, en);
        free(rec);
    }
    cr_assert_eq(kvtc__gpu_gemm_set(NULL, 0, 0), KVTC_EINVAL);
    cr_assert_eq(kvtc__gpu_gemm_set(g, 2, 0), KVTC_EINVAL);
    cr_assert_eq(kvtc__gpu_gemm_set(g, 0, DIR_CHUNK_MAJOR + 1), KVTC_EINVAL);
    free(out);
    free((void *)c.data);
    kvtc_gpu_codec_free(g);
    kvtc_profile_free(p);
}
