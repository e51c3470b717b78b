/* The GPU quantizer (kernels/gpu_quant.cu tiled, gpu_rows.cu row-per-block)
 * against the CPU codec's kvtc__pack_groups: byte-identical symbols on
 * random plans (every type, static and dynamic groups, sizes 1..1024,
 * dropped runs between groups) and odd token counts 1..257; both kernels'
 * dequantized coefficients bit-identical and within fp16/bf16 rounding of
 * the CPU's; whole containers and decoded chunks identical with either
 * kernel. Skips without a GPU. */
#include <criterion/criterion.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "../../codec/internal.h"
#include "../../codec/symbols.h"
#include "gpu_test_util.h"

/* kernels/gpu_quant_check.cu, gpu_quant.cu (internal) */
extern int kvtc__gpu_quant_check(const struct kvtc__plan *pl, const uint32_t *T, uint32_t n,
                                 const float *const coef[2], const uint32_t k[2], uint32_t tiles,
                                 int bf16, uint8_t *sym, uint16_t *const deq[2]);
extern int kvtc__gpu_quant_set(kvtc_gpu_codec *g, uint32_t tiles);
extern int kvtc__gpu_e4m3_check(uint64_t *mismatches, uint32_t *first);

/* the quantizer's kernels: 0 row-per-block (the reference), 1 tiled */
enum { NV = 2 };

static uint64_t rng_state;
static uint32_t rnd(void)
{
    rng_state = rng_state * 6364136223846793005ull + 1442695040888963407ull;
    return (uint32_t)(rng_state >> 33);
}
static float rndf(void) { return (float)rnd() / 2147483648.0f - 1.0f; } /* [-1, 1) */

/* Random groups of both streams; returns their count (groups[] has room
 * for 4096), k[s] = last end rounded up to 16. */
static uint32_t random_plan(struct kvtc__group *gr, uint32_t k[2])
{
    static const uint16_t sizes[] = {1,  1,  1,  2,   3,   4,   5,   7,   8,   9,   12,   16,  17,
                                     31, 32, 33, 64,  100, 255, 256, 257, 511, 512, 1000, 1024};
    uint32_t n = 0;
    for (uint8_t s = 0; s < 2; s++) {
        uint32_t col = 0, target = 64 + rnd() % 3000;
        while (col < target && n < 4096) {
            if (rnd() % 6 == 0)
                col += 1 + rnd() % (rnd() % 4 ? 20 : 1500); /* dropped components */
            struct kvtc__group *g = &gr[n++];
            memset(g, 0, sizeof *g);
            g->start = col;
            g->size = sizes[rnd() % (sizeof sizes / sizeof sizes[0])];
            g->type = (uint8_t)(KVTC__Q_INT2 + rnd() % 3);
            g->stream = s;
            g->is_static = rnd() % 5 == 0;
            if (g->is_static)
                kvtc__static_params(g->type, 0.5f + 4.0f * (rnd() % 100) / 100.0f, &g->sshift,
                                    &g->sscale);
            col += g->size;
        }
        k[s] = (col + 15) & ~15u;
    }
    return n;
}

/* fp16/bf16 bits -> float */
static float bits16(uint16_t h, int bf16)
{
    if (bf16) {
        uint32_t u = (uint32_t)h << 16;
        float f;
        memcpy(&f, &u, 4);
        return f;
    }
    return kvtc__f16_to_f32(h);
}

static void check_layout(uint64_t seed, const uint32_t *T, uint32_t n)
{
    rng_state = seed;
    struct kvtc__group *gr = calloc(4096, sizeof *gr);
    struct kvtc__plan pl;
    memset(&pl, 0, sizeof pl);
    uint32_t k[2];
    pl.groups = gr;
    pl.n_groups = random_plan(gr, k);
    uint32_t g1 = 0;
    while (g1 < pl.n_groups && gr[g1].stream == 0)
        g1++;
    uint64_t M = 0, symtot = 0;
    for (uint32_t i = 0; i < n; i++) {
        M += T[i];
        symtot += kvtc__plan_symbol_bytes(&pl, T[i], NULL, NULL, NULL);
    }
    float *coef[2];
    uint16_t *deq[2][2];
    for (int s = 0; s < 2; s++) {
        coef[s] = calloc(M * k[s] + 1, sizeof(float));
        for (int t = 0; t < 2; t++)
            deq[s][t] = calloc(M * k[s] + 1, 2);
        cr_assert(coef[s] && deq[s][0] && deq[s][1]);
        /* magnitudes per column: tiny, unit, large; some exact repeats and
         * a few values beyond fp16's range (the clamp) */
        for (uint32_t j = 0; j < k[s]; j++) {
            float mag = (j * 2654435761u >> 7) % 4 == 0 ? 1e-3f : (j % 7 == 0 ? 300.0f : 3.0f);
            for (uint64_t m = 0; m < M; m++) {
                float v = rndf() * mag;
                if (rnd() % 50 == 0)
                    v = 0.5f;
                if (rnd() % 20000 == 0)
                    v = (rnd() & 1) ? 7.0e4f : -7.0e4f;
                coef[s][m * k[s] + j] = v;
            }
        }
    }
    /* CPU reference symbols */
    uint8_t *cpu = calloc(symtot + 1, 1), *gpu = malloc(symtot + 1);
    size_t *sh = malloc(sizeof(size_t) * (pl.n_groups + 1) * 3), *sc = sh + pl.n_groups + 1,
           *co = sc + pl.n_groups + 1;
    cr_assert(cpu && gpu && sh);
    uint64_t so = 0, row = 0;
    for (uint32_t i = 0; i < n; i++) {
        size_t len = kvtc__plan_symbol_bytes(&pl, T[i], sh, sc, co);
        kvtc__pack_groups(&pl, 0, g1, coef[0] + row * k[0], k[0], T[i], sh, sc, co, cpu + so);
        kvtc__pack_groups(&pl, g1, pl.n_groups, coef[1] + row * k[1], k[1], T[i], sh, sc, co,
                          cpu + so);
        so += len;
        row += T[i];
    }
    /* both kernels, with fp16 and bf16 dequantization */
    for (int bf16 = 0; bf16 < 2; bf16++)
        for (uint32_t tiles = 0; tiles < NV; tiles++) {
            memset(gpu, 0x5a, symtot + 1);
            int rc = kvtc__gpu_quant_check(&pl, T, n, (const float *const *)coef, k, tiles, bf16,
                                           gpu, (uint16_t *const[2]){deq[0][tiles], deq[1][tiles]});
            cr_assert_eq(rc, 0, "seed %llu tiles %u: rc %d", (unsigned long long)seed, tiles, rc);
            size_t at = 0;
            while (at < symtot && cpu[at] == gpu[at])
                at++;
            cr_assert_eq(at, symtot,
                         "seed %llu tiles %u bf16 %d: symbol byte %zu of %llu differs (cpu %02x "
                         "gpu %02x), %u groups, %u chunks",
                         (unsigned long long)seed, tiles, bf16, at, (unsigned long long)symtot,
                         cpu[at], gpu[at], pl.n_groups, n);
        }
    /* (the last round was bf16: redo fp16 dequantization for both kernels) */
    for (uint32_t tiles = 0; tiles < 2; tiles++)
        cr_assert_eq(kvtc__gpu_quant_check(&pl, T, n, (const float *const *)coef, k, tiles, 0, gpu,
                                           (uint16_t *const[2]){deq[0][tiles], deq[1][tiles]}),
                     0);
    /* dequantized: tiled == row-per-block bit for bit (dropped and padding
     * columns zero), and within fp16 rounding of the CPU's floats */
    float *ref = malloc(sizeof(float) * (M * (k[0] > k[1] ? k[0] : k[1]) + 1));
    cr_assert(ref);
    for (int s = 0; s < 2; s++) {
        size_t diff = 0;
        for (uint64_t e = 0; e < M * k[s]; e++)
            diff += deq[s][0][e] != deq[s][1][e];
        cr_assert_eq(diff, 0, "seed %llu stream %d: %zu dequantized values differ tiled vs old",
                     (unsigned long long)seed, s, diff);
        memset(ref, 0, sizeof(float) * M * k[s]);
        so = row = 0;
        for (uint32_t i = 0; i < n; i++) {
            size_t len = kvtc__plan_symbol_bytes(&pl, T[i], sh, sc, co);
            cr_assert_eq(kvtc__unpack_groups(&pl, s ? g1 : 0, s ? pl.n_groups : g1, cpu + so, k[s],
                                             T[i], sh, sc, co, ref + row * k[s]),
                         0);
            so += len;
            row += T[i];
        }
        for (uint64_t e = 0; e < M * k[s]; e++) {
            float gv = bits16(deq[s][1][e], 0), cv = ref[e];
            if (isinf(gv) && fabsf(cv) > 65000.0f)
                continue;
            cr_assert(fabsf(gv - cv) <= fabsf(cv) * (1.0f / 1024) + 1e-7f,
                      "seed %llu stream %d element %llu: gpu %g cpu %g", (unsigned long long)seed,
                      s, (unsigned long long)e, gv, cv);
        }
    }
    free(ref);
    for (int s = 0; s < 2; s++) {
        free(coef[s]);
        free(deq[s][0]);
        free(deq[s][1]);
    }
    free(cpu);
    free(gpu);
    free(sh);
    free(gr);
}

Test(gpu_quant, tiled_symbols_equal_cpu_random_plans)
{
    GPU_OR_SKIP();
    static const uint32_t fixed[] = {1, 2, 7, 8, 9, 15, 16, 17, 31, 33, 100, 255, 256, 257};
    /* every token count 1..257 once, in batches of a few chunks; under
     * compute-sanitizer the first KVTC_TEST_QUANT_LAYOUTS batches only */
    const char *lim = getenv("KVTC_TEST_QUANT_LAYOUTS");
    uint32_t T[8], seed = 1, max_seed = lim ? (uint32_t)atoi(lim) : UINT32_MAX;
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    for (uint32_t t = 1; t <= 257 && seed <= max_seed;) {
        uint32_t n = 1 + seed % 6;
        for (uint32_t i = 0; i < n; i++)
            T[i] = t <= 257 ? t++ : fixed[(seed + i) % 14];
        check_layout(0x9e3779b97f4a7c15ull * seed, T, n);
        /* progress: a run cut by a time cap still says how far it got */
        clock_gettime(CLOCK_MONOTONIC, &t1);
        cr_log_info("layout %u done (token counts 1..%u covered) at %.1f s", seed, t - 1,
                    (double)(t1.tv_sec - t0.tv_sec) + (t1.tv_nsec - t0.tv_nsec) * 1e-9);
        seed++;
    }
    check_layout(77, fixed, 8);
}

/* The hardware e4m3 conversion that the tiled quantizer uses equals the
 * software rule (gpu_numeric.cuh, the CPU codec's bytes) on every non-NaN
 * float. */
Test(gpu_quant, e4m3_hardware_conversion_equals_software)
{
    GPU_OR_SKIP();
    uint64_t bad = 0;
    uint32_t first = 0;
    cr_assert_eq(kvtc__gpu_e4m3_check(&bad, &first), 0);
    cr_assert_eq(bad, 0, "%llu inputs differ, first 0x%08x", (unsigned long long)bad, first);
}

/* A batch coded by a real context with either kernel: identical containers,
 * identical decoded chunks (both the tiled decode of either encode). */
Test(gpu_quant, tiled_containers_equal_row_kernels)
{
    GPU_OR_SKIP();
    kvtc_layout l = gt_layout(4, 2, 64, KVTC_DTYPE_BF16, KVTC_ROPE_HALF_SPLIT);
    kvtc_profile *p = gt_profile(&l, 512, 5);
    cr_assert(p);
    enum { N = 5 };
    static const uint32_t toks[N] = {1, 37, 256, 9, 300};
    kvtc_chunk c[N];
    for (uint32_t i = 0; i < N; i++) {
        memset(&c[i], 0, sizeof c[i]);
        c[i].data = gt_chunk(&l, toks[i], 11 * i, 100 + i);
        c[i].n_tokens = toks[i];
        c[i].first_pos = 11 * i;
    }
    for (uint32_t plan = 0; plan < kvtc_profile_plan_count(p); plan++) {
        kvtc_gpu_codec *g = NULL;
        cr_assert_eq(kvtc_gpu_codec_create(p, plan, NULL, &g), 0);
        enum { V = NV }; /* row kernels, tiled */
        uint8_t *out[V][N];
        size_t len[V][N];
        int32_t st[V][N];
        void *dec[V][N];
        for (uint32_t tiles = 0; tiles < V; tiles++) {
            cr_assert_eq(kvtc__gpu_quant_set(g, tiles), 0);
            gt_gpu_encode(g, &l, c, N, out[tiles], len[tiles], st[tiles]);
            for (uint32_t i = 0; i < N; i++) {
                cr_assert_eq(st[tiles][i], 0);
                dec[tiles][i] = malloc(kvtc_chunk_bytes(&l, toks[i]));
            }
            gt_gpu_decode(g, &l, c, N, out[tiles], len[tiles], dec[tiles], st[tiles]);
        }
        for (uint32_t i = 0; i < N; i++) {
            for (int t = 1; t < V; t++) {
                cr_assert_eq(st[0][i], 0);
                cr_assert_eq(st[t][i], 0);
                cr_assert_eq(len[0][i], len[t][i], "plan %u chunk %u tiles %d: container sizes",
                             plan, i, t);
                cr_assert(!memcmp(out[0][i], out[t][i], len[0][i]),
                          "plan %u chunk %u tiles %d: containers", plan, i, t);
                cr_assert(!memcmp(dec[0][i], dec[t][i], kvtc_chunk_bytes(&l, toks[i])),
                          "plan %u chunk %u tiles %d: decoded chunks", plan, i, t);
            }
            for (int t = 0; t < V; t++) {
                free(out[t][i]);
                free(dec[t][i]);
            }
        }
        kvtc_gpu_codec_free(g);
    }
    for (uint32_t i = 0; i < N; i++)
        free((void *)c[i].data);
    kvtc_profile_free(p);
}
