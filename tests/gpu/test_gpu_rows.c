/* The row kernels (kernels/gpu_rows.cu: canonical chunk <-> centred rows)
 * come twice: scalar ones for every layout, and vectorized ones (16-byte
 * units, cp.async rings, a walk without divisions) where 16-byte units
 * fit. Both must give the same bits: the vectorized kernels' containers
 * must equal the scalar ones' byte for byte, and so must the chunks they
 * decode, with the rows pass and with the direct decode (whose RoPE in
 * place exists vectorized only), on layouts whose walks differ:
 * half-split, interleaved and no RoPE; bf16 and fp16; head vectors of 1,
 * 3 and 8 units; fewer and more units a layer than a block has threads;
 * one-token, all-sink, raw and long chunks in one batch. Skips without a
 * GPU. */
#include <criterion/criterion.h>
#include <stdlib.h>
#include <string.h>

#include "gpu_test_util.h"

/* kernels/gpu_rows.cu, gpu_gemm.cu (internal) */
extern int kvtc__gpu_rows_set(int v);
extern int kvtc__gpu_gemm_set(kvtc_gpu_codec *g, uint32_t use_lt, uint32_t direct);
enum { DIR_GROUPED = 2 };

#define N_CH 7
#define N_GEN 2 /* kvtc__gpu_rows_set: 0 scalar kernels, 1 vectorized */

static void same_bits(kvtc_layout l)
{
    kvtc_profile *p = gt_profile(&l, 384, 5);
    kvtc_chunk c[N_CH];
    for (uint32_t i = 0; i < N_CH; i++) {
        uint32_t t = i == 1 ? 1 : i == 2 ? 2 : 40 + 37 * i, pos = i == 2 ? 0 : 50 + 29 * i;
        c[i] = (kvtc_chunk){gt_chunk(&l, t, pos, 70 + i), t, pos, i == 5 ? KVTC_CHUNK_RAW : 0};
    }
    kvtc_gpu_codec *g = NULL;
    cr_assert_eq(kvtc_gpu_codec_create(p, 1, NULL, &g), 0);
    int direct = kvtc__gpu_gemm_set(g, 1, DIR_GROUPED) == 0;
    uint8_t *ref[N_CH], *got[N_CH];
    size_t ref_len[N_CH], got_len[N_CH];
    void *dref[2][N_CH], *dgot[N_CH];
    int32_t st[N_CH];
    for (int v = 0; v < N_GEN; v++) {
        cr_assert_eq(kvtc__gpu_rows_set(v), 0);
        cr_assert_eq(kvtc__gpu_gemm_set(g, 1, 0), 0);
        gt_gpu_encode(g, &l, c, N_CH, v ? got : ref, v ? got_len : ref_len, st);
        for (uint32_t i = 0; i < N_CH; i++) {
            cr_assert_eq(st[i], 0, "rows %d: encode status %d chunk %u", v, st[i], i);
            if (v) {
                cr_assert(got_len[i] == ref_len[i] && !memcmp(got[i], ref[i], ref_len[i]),
                          "rows %d, dtype %u rope %u: chunk %u's container differs from the scalar kernels'", v,
                          l.dtype, l.rope_style, i);
                free(got[i]);
            }
        }
        for (int d = 0; d <= direct; d++) {
            cr_assert_eq(kvtc__gpu_gemm_set(g, 1, d ? DIR_GROUPED : 0), 0);
            gt_gpu_decode(g, &l, c, N_CH, ref, ref_len, v ? dgot : dref[d], st);
            for (uint32_t i = 0; v && i < N_CH; i++) {
                cr_assert_eq(st[i], 0, "rows %d: decode status %d chunk %u", v, st[i], i);
                cr_assert(!memcmp(dgot[i], dref[d][i], kvtc_chunk_bytes(&l, c[i].n_tokens)),
                          "rows %d, direct %d, dtype %u rope %u: chunk %u decodes to other "
                          "bytes", v, d, l.dtype, l.rope_style, i);
                free(dgot[i]);
            }
        }
    }
    cr_assert_eq(kvtc__gpu_rows_set(-1), 0);
    cr_assert_eq(kvtc__gpu_rows_set(N_GEN), KVTC_EINVAL);
    kvtc_gpu_codec_free(g);
    for (uint32_t i = 0; i < N_CH; i++) {
        free((void *)c[i].data);
        free(ref[i]);
        for (int d = 0; d <= direct; d++)
            free(dref[d][i]);
    }
    kvtc_profile_free(p);
}

Test(gpu_rows, half_split_bf16_vectorized_same_bits_as_scalar)
{
    GPU_OR_SKIP();
    same_bits(gt_layout(5, 3, 48, KVTC_DTYPE_BF16, KVTC_ROPE_HALF_SPLIT)); /* 3 units a pair */
}

Test(gpu_rows, half_split_fp16_one_unit_vectors)
{
    GPU_OR_SKIP();
    same_bits(gt_layout(3, 2, 16, KVTC_DTYPE_FP16, KVTC_ROPE_HALF_SPLIT)); /* 1 unit a pair */
}

Test(gpu_rows, interleaved_more_units_a_layer_than_threads)
{
    GPU_OR_SKIP();
    same_bits(gt_layout(2, 5, 64, KVTC_DTYPE_BF16, KVTC_ROPE_INTERLEAVED)); /* 40 units */
}

Test(gpu_rows, no_rope_wide_layers)
{
    GPU_OR_SKIP();
    same_bits(gt_layout(2, 36, 64, KVTC_DTYPE_FP16, KVTC_ROPE_NONE)); /* 288 units a layer */
}
