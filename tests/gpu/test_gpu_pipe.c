/* The GPU codec's transform pipeline (kernels/gpu_pipe.cu): every setting
 * of lanes (context-owned streams forked from the caller's), sub-batches
 * and the GEMM's SM target must give containers the CPU decodes within the
 * CPU reference's error, decode CPU containers likewise, write every output
 * element, and keep per-chunk statuses per chunk. Batches mix raw, all-sink,
 * one-token and long chunks so that sub-batch borders fall on each kind.
 * Skips without a GPU. */
#include <criterion/criterion.h>
#include <stdlib.h>
#include <string.h>

#include "gpu_test_util.h"

/* kernels/gpu_pipe.cu (internal): lanes, sub-batches, GEMM SM target */
extern int kvtc__gpu_pipeline(kvtc_gpu_codec *g, uint32_t lanes, uint32_t split,
                              uint32_t gemm_sms, uint32_t mode);

#define N_CH 23

/* lanes, split, gemm_sms, mode (0 lanes, 1 chained GEMMs, 2 GEMM and
 * memory streams) */
static const uint32_t cfg[][4] = {{1, 1, 0, 0}, {2, 1, 0, 1},  {2, 3, 0, 0},  {3, 7, 0, 1},
                                  {4, 16, 0, 1}, {2, 4, 8, 1}, {3, 5, 100, 0}, {2, 1, 0, 2},
                                  {2, 5, 0, 2},  {2, 16, 60, 2}};

static void check_close(const kvtc_layout *l, const kvtc_chunk *c, const void *ref,
                        const void *got, const char *what, uint32_t i, const uint32_t *v)
{
    double e_ref = gt_mse(l, c->data, ref, c->n_tokens), e = gt_mse(l, c->data, got, c->n_tokens);
    double energy = gt_energy(l, c->data, c->n_tokens);
    cr_assert(e <= 1.3 * e_ref + 2e-5 * energy + 1e-12,
              "lanes %u split %u sms %u mode %u, %s chunk %u: mse %.3g vs CPU %.3g", v[0], v[1],
              v[2], v[3], what,
              i, e, e_ref);
    size_t elems = kvtc_chunk_bytes(l, c->n_tokens) / kvtc_dtype_size(l->dtype);
    cr_assert(gt_count_poison(l, got, c->n_tokens) * 1000 <= elems,
              "lanes %u split %u sms %u, %s chunk %u: unwritten elements", v[0], v[1], v[2], what,
              i);
}

Test(gpu_pipe, every_setting_agrees_with_cpu)
{
    GPU_OR_SKIP();
    kvtc_layout l = gt_layout(4, 2, 32, KVTC_DTYPE_BF16, KVTC_ROPE_HALF_SPLIT);
    kvtc_profile *p = gt_profile(&l, 1024, 11);
    kvtc_chunk c[N_CH];
    uint8_t *cpu[N_CH], *gpu[N_CH];
    size_t cpu_len[N_CH], gpu_len[N_CH];
    void *cpu_rec[N_CH], *rec[N_CH];
    int32_t st[N_CH];
    for (uint32_t i = 0; i < N_CH; i++) {
        /* long, short, one-token, all-sink (pos 0, 1 token) and raw chunks */
        uint32_t t = i % 5 == 0 ? 300 : i % 5 == 1 ? 1 : 17 + 13 * i, pos = i == 3 ? 0 : 64 + 50 * i;
        if (i == 3)
            t = 2;
        c[i] = (kvtc_chunk){gt_chunk(&l, t, pos, 500 + i), t, pos, i % 7 == 6 ? KVTC_CHUNK_RAW : 0};
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
    for (size_t v = 0; v < sizeof cfg / sizeof cfg[0]; v++) {
        kvtc_gpu_codec *g = NULL;
        cr_assert_eq(kvtc_gpu_codec_create(p, 1, NULL, &g), 0);
        cr_assert_eq(kvtc__gpu_pipeline(g, cfg[v][0], cfg[v][1], cfg[v][2], cfg[v][3]), 0);
        for (int round = 0; round < 2; round++) { /* the second reuses the lanes' buffers */
            gt_gpu_encode(g, &l, c, N_CH, gpu, gpu_len, st);
            for (uint32_t i = 0; i < N_CH; i++) {
                cr_assert_eq(st[i], 0, "encode status %d chunk %u", st[i], i);
                size_t rb = kvtc_chunk_bytes(&l, c[i].n_tokens);
                void *out = malloc(rb);
                memset(out, 0xA5, rb);
                cr_assert_eq(kvtc_decode(dec, gpu[i], gpu_len[i], out, rb, NULL), 0);
                check_close(&l, &c[i], cpu_rec[i], out, "GPU enc -> CPU dec", i, cfg[v]);
                free(out);
            }
            gt_gpu_decode(g, &l, c, N_CH, cpu, cpu_len, rec, st);
            for (uint32_t i = 0; i < N_CH; i++) {
                cr_assert_eq(st[i], 0, "decode status %d chunk %u", st[i], i);
                check_close(&l, &c[i], cpu_rec[i], rec[i], "CPU enc -> GPU dec", i, cfg[v]);
                free(rec[i]);
                free(gpu[i]);
            }
        }
        kvtc_gpu_codec_free(g);
    }
    for (uint32_t i = 0; i < N_CH; i++) {
        free((void *)c[i].data);
        free(cpu[i]);
        free(cpu_rec[i]);
    }
    kvtc_encoder_free(enc);
    kvtc_decoder_free(dec);
    kvtc_profile_free(p);
}

Test(gpu_pipe, statuses_stay_per_chunk_across_sub_batches)
{
    GPU_OR_SKIP();
    kvtc_layout l = gt_layout(2, 2, 16, KVTC_DTYPE_BF16, KVTC_ROPE_HALF_SPLIT);
    kvtc_profile *p = gt_profile(&l, 256, 6);
    enum { N = 9 };
    kvtc_chunk c[N];
    uint8_t *gpu[N];
    size_t len[N];
    int32_t st[N];
    void *rec[N];
    for (uint32_t i = 0; i < N; i++)
        c[i] = (kvtc_chunk){gt_chunk(&l, 40, 100 * i + 10, i), 40, 100 * i + 10, 0};
    /* a NaN in a key slab of chunk 4 and in the last value slab of chunk 7 */
    ((uint16_t *)c[4].data)[5] = 0x7fc0;
    ((uint16_t *)c[7].data)[kvtc_chunk_bytes(&l, 40) / 2 - 3] = 0x7fc0;
    for (size_t v = 0; v < sizeof cfg / sizeof cfg[0]; v++) {
        kvtc_gpu_codec *g = NULL;
        cr_assert_eq(kvtc_gpu_codec_create(p, 0, NULL, &g), 0);
        cr_assert_eq(kvtc__gpu_pipeline(g, cfg[v][0], cfg[v][1], cfg[v][2], cfg[v][3]), 0);
        gt_gpu_encode(g, &l, c, N, gpu, len, st);
        for (uint32_t i = 0; i < N; i++) {
            int want = i == 4 || i == 7 ? KVTC_EINVAL : 0;
            cr_assert_eq(st[i], want, "lanes %u split %u: chunk %u status %d", cfg[v][0],
                         cfg[v][1], i, st[i]);
        }
        /* a corrupt container among good ones: chunk 4's slot gets chunk
         * 0's container (wrong position: the header check fails) */
        uint8_t *src[N];
        size_t sl[N];
        for (uint32_t i = 0; i < N; i++) {
            src[i] = gpu[i == 4 || i == 7 ? 0 : i];
            sl[i] = len[i == 4 || i == 7 ? 0 : i];
        }
        gt_gpu_decode(g, &l, c, N, src, sl, rec, st);
        for (uint32_t i = 0; i < N; i++) {
            if (i == 4 || i == 7)
                cr_assert_neq(st[i], 0, "chunk %u decoded from another chunk's container", i);
            else
                cr_assert_eq(st[i], 0, "lanes %u split %u: chunk %u decode status %d", cfg[v][0],
                             cfg[v][1], i, st[i]);
            free(rec[i]);
            free(gpu[i]);
        }
        kvtc_gpu_codec_free(g);
    }
    for (uint32_t i = 0; i < N; i++)
        free((void *)c[i].data);
    kvtc_profile_free(p);
}

Test(gpu_pipe, settings_out_of_range_refused)
{
    GPU_OR_SKIP();
    kvtc_layout l = gt_layout(2, 1, 16, KVTC_DTYPE_BF16, KVTC_ROPE_NONE);
    kvtc_profile *p = gt_profile(&l, 128, 2);
    kvtc_gpu_codec *g = NULL;
    cr_assert_eq(kvtc_gpu_codec_create(p, 0, NULL, &g), 0);
    cr_assert_eq(kvtc__gpu_pipeline(NULL, 1, 1, 0, 0), KVTC_EINVAL);
    cr_assert_eq(kvtc__gpu_pipeline(g, 0, 1, 0, 0), KVTC_EINVAL);
    cr_assert_eq(kvtc__gpu_pipeline(g, 5, 1, 0, 0), KVTC_EINVAL);
    cr_assert_eq(kvtc__gpu_pipeline(g, 1, 0, 0, 0), KVTC_EINVAL);
    cr_assert_eq(kvtc__gpu_pipeline(g, 1, 17, 0, 0), KVTC_EINVAL);
    cr_assert_eq(kvtc__gpu_pipeline(g, 1, 1, 0, 3), KVTC_EINVAL);
    cr_assert_eq(kvtc__gpu_pipeline(g, 3, 1, 0, 2), KVTC_EINVAL); /* mode 2: two lanes */
    cr_assert_eq(kvtc__gpu_pipeline(g, 2, 2, 0, 1), 0);
    kvtc_gpu_codec_free(g);
    kvtc_profile_free(p);
}
