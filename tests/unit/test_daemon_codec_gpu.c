/* The codec jobs' GPU backend (daemon/codec_gpu.c): without libkvtc_gpu or
 * a GPU it reports unavailable and the jobs run on the CPU; with both (the
 * device machine) encode and decode jobs run on the GPU, batched across
 * requests, write containers the CPU decodes within the plan's error, and a
 * GPU failure sends its chunks to the CPU instead of failing them.
 *
 * KVTC_GCODEC_BENCH=1 adds a throughput comparison of the two paths (see
 * docs/perf-notes.md, "kvtcd's GPU codec"). */
#include <criterion/criterion.h>
#include <criterion/logging.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "codec_gpu.h"
#include "codec_jobs.h"
#include "config.h"
#include "kvtc_errors.h"
#include "profiles.h"
#include "../../bench/quality/projx.h"
#include "test_util.h"

/* ---- synthetic KV: a few latent factors plus noise, fp16 ------------------- */

static kvtc_layout layout_of(uint32_t layers, uint32_t heads, uint32_t hdim, uint32_t tok)
{
    kvtc_layout l = {.layers = layers, .kv_heads = heads, .head_dim = hdim,
                     .dtype = KVTC_DTYPE_FP16, .chunk_tokens = tok};
    return l;
}

static uint64_t rnd(uint64_t *s)
{
    *s = *s * 6364136223846793005ull + 1442695040888963407ull;
    return *s >> 33;
}

static float unif(uint64_t *s)
{
    return (float)(rnd(s) % 20001) / 10000.0f - 1.0f;
}

#define FACTORS 6
static void *make_chunk(const kvtc_layout *l, uint64_t seed)
{
    size_t w = kvtc_row_width(l), rows = 2 * (size_t)l->chunk_tokens;
    float *f = malloc(rows * w * sizeof *f);
    cr_assert(f);
    uint64_t s = seed * 0x9e3779b97f4a7c15ull + 7;
    for (size_t t = 0; t < rows; t++) {
        float z[FACTORS];
        for (int k = 0; k < FACTORS; k++)
            z[k] = unif(&s);
        for (size_t j = 0; j < w; j++) {
            float v = 0.05f * unif(&s);
            for (int k = 0; k < FACTORS; k++)
                v += z[k] * (float)((j * (k + 3)) % 7) / (float)(k + 1);
            f[t * w + j] = v;
        }
    }
    /* rows are [k|v][token] over the whole row; the canonical layout is
     * [layer][k|v][token][head][dim]: scatter. */
    size_t hd = (size_t)l->kv_heads * l->head_dim, T = l->chunk_tokens;
    float *c = malloc(rows * w * sizeof *c);
    for (size_t kv = 0; kv < 2; kv++)
        for (size_t t = 0; t < T; t++)
            for (size_t L = 0; L < l->layers; L++)
                memcpy(c + ((L * 2 + kv) * T + t) * hd, f + (kv * T + t) * w + L * hd,
                       hd * sizeof *c);
    void *out = malloc(kvtc_chunk_bytes(l, l->chunk_tokens));
    cr_assert_eq(kvtc_from_float(l->dtype, c, out, rows * w), 0);
    free(f);
    free(c);
    return out;
}

static kvtcd_profile_ent *make_profile(kvtcd_profiles *reg, const kvtc_layout *l)
{
    kvtc_calibrator *cal;
    cr_assert_eq(kvtc_calibrator_create(l, NULL, &cal), 0);
    for (int i = 0; i < 8; i++) {
        void *c = make_chunk(l, 1000 + (uint64_t)i);
        cr_assert_eq(kvtc_calibrator_add(cal, c, l->chunk_tokens, 0), 0);
        free(c);
    }
    const float t[] = {4, 8};
    kvtc_profile *p;
    cr_assert_eq(kvtc_calibrator_finish(cal, t, 2, &p), 0);
    kvtc_calibrator_free(cal);
    size_t n = kvtc_profile_size(p);
    void *b = malloc(n);
    cr_assert_eq(kvtc_profile_save(p, b, n), 0);
    kvtc_profile_free(p);
    kvtcd_profile_ent *e, *got;
    cr_assert_eq(kvtcd_profile_parse(b, n, &e), 0);
    free(b);
    cr_assert_eq(kvtcd_profiles_add(reg, e, &got), 0);
    return got; /* the registry's reference */
}

static double mse(const kvtc_layout *l, const void *a, const void *b)
{
    size_t n = kvtc_chunk_bytes(l, l->chunk_tokens) / kvtc_dtype_size(l->dtype);
    float *fa = malloc(n * sizeof *fa), *fb = malloc(n * sizeof *fb);
    kvtc_to_float(l->dtype, a, fa, n);
    kvtc_to_float(l->dtype, b, fb, n);
    double s = 0;
    for (size_t i = 0; i < n; i++)
        s += ((double)fa[i] - fb[i]) * ((double)fa[i] - fb[i]);
    free(fa);
    free(fb);
    return s / (double)n;
}

static double energy(const kvtc_layout *l, const void *a)
{
    size_t n = kvtc_chunk_bytes(l, l->chunk_tokens) / kvtc_dtype_size(l->dtype);
    float *f = malloc(n * sizeof *f);
    kvtc_to_float(l->dtype, a, f, n);
    double s = 0;
    for (size_t i = 0; i < n; i++)
        s += (double)f[i] * f[i];
    free(f);
    return s / (double)n;
}

/* The CPU's decode of a container. */
static void *cpu_decode(const kvtcd_profile_ent *e, const void *c, size_t len)
{
    const kvtc_layout *l = kvtc_profile_layout(e->p);
    size_t n = kvtc_chunk_bytes(l, l->chunk_tokens);
    kvtc_decoder *dec;
    cr_assert_eq(kvtc_decoder_create(e->p, &dec), 0);
    void *out = malloc(n);
    cr_assert_eq(kvtc_decode(dec, c, len, out, n, NULL), 0, "CPU rejects a container");
    kvtc_decoder_free(dec);
    return out;
}

static void *cpu_encode(const kvtcd_profile_ent *e, uint32_t plan, const void *chunk, size_t *len)
{
    const kvtc_layout *l = kvtc_profile_layout(e->p);
    kvtc_encoder *enc;
    cr_assert_eq(kvtc_encoder_create(e->p, plan, KVTC_STAGE_DEFLATE, 0, &enc), 0);
    size_t cap = kvtc_encode_bound(enc, l->chunk_tokens);
    void *out = malloc(cap);
    kvtc_chunk ch = {.data = chunk, .n_tokens = l->chunk_tokens, .first_pos = 0};
    cr_assert_eq(kvtc_encode(enc, &ch, out, cap, len), 0);
    kvtc_encoder_free(enc);
    return out;
}

/* ---- a scheduler on a loop ------------------------------------------------- */

struct rig {
    uv_loop_t loop;
    kvtcd_profiles reg;
    kvtcd_codec *cj;
    kvtcd_profile_ent *e;
    kvtc_layout l;
    size_t bytes;
    kvtcd_gpu_codec *g;         /* owned by cj once set */
};

static void rig_init(struct rig *r, kvtc_layout l)
{
    memset(r, 0, sizeof *r);
    r->l = l;
    r->bytes = kvtc_chunk_bytes(&l, l.chunk_tokens);
    cr_assert_eq(uv_loop_init(&r->loop), 0);
    cr_assert_eq(kvtcd_profiles_init(&r->reg, NULL), 0);
    cr_assert_eq(kvtcd_codec_create(&r->loop, &r->reg, &r->cj), 0);
    r->e = make_profile(&r->reg, &l);
}

static void rig_fini(struct rig *r)
{
    cr_assert_eq(kvtcd_codec_pending(r->cj), 0);
    kvtcd_codec_destroy(r->cj);
    kvtcd_profiles_fini(&r->reg);
    cr_assert_eq(uv_loop_close(&r->loop), 0);
}

/* Attach the GPU backend, or skip the test where there is none. */
static void rig_gpu_or_skip(struct rig *r)
{
    char why[512] = "";
    kvtcd_gpu_codec *g = NULL;
    int rc = kvtcd_gpu_codec_open(0, &r->reg, &g, why, sizeof why);
    if (rc) {
        rig_fini(r);
        cr_skip_test("no GPU codec here (%s): GPU backend test skipped", why);
    }
    kvtcd_codec_set_gpu(r->cj, g);
    r->g = g;
}

static void batch_done(kvtcd_codec_batch *b)
{
    (*(int *)b->arg)++;
}

/* nb batches ("requests") of per chunks each, submitted in one loop turn,
 * encoded at plan; items[] gets nb * per items. */
static void run_encode(struct rig *r, void **chunks, uint32_t nb, uint32_t per, uint32_t plan,
                       kvtcd_codec_item *items)
{
    kvtcd_codec_batch *b = calloc(nb, sizeof *b);
    int done = 0;
    for (uint32_t i = 0; i < nb * per; i++)
        items[i] = (kvtcd_codec_item){.kind = KVTCD_CODEC_ENCODE, .prof = r->e, .plan = plan,
                                      .src = chunks[i], .len = r->bytes,
                                      .n_tokens = r->l.chunk_tokens};
    for (uint32_t k = 0; k < nb; k++) {
        b[k] = (kvtcd_codec_batch){.items = items + k * per, .n = per, .done = batch_done,
                                   .arg = &done};
        kvtcd_codec_submit(r->cj, &b[k]);
    }
    uv_run(&r->loop, UV_RUN_DEFAULT);
    cr_assert_eq(done, (int)nb);
    free(b);
}

static void run_decode(struct rig *r, uint8_t **ctr, const size_t *len, uint32_t nb,
                       uint32_t per, kvtcd_codec_item *items)
{
    kvtcd_codec_batch *b = calloc(nb, sizeof *b);
    int done = 0;
    for (uint32_t i = 0; i < nb * per; i++)
        items[i] = (kvtcd_codec_item){.kind = KVTCD_CODEC_DECODE, .src = ctr[i], .len = len[i]};
    for (uint32_t k = 0; k < nb; k++) {
        b[k] = (kvtcd_codec_batch){.items = items + k * per, .n = per, .max_out = r->bytes,
                                   .done = batch_done, .arg = &done};
        kvtcd_codec_submit(r->cj, &b[k]);
    }
    uv_run(&r->loop, UV_RUN_DEFAULT);
    cr_assert_eq(done, (int)nb);
    free(b);
}

/* ---- without a GPU codec ----------------------------------------------------- */

Test(daemon_codec_gpu, missing_library_is_unavailable_and_jobs_run_on_cpu)
{
    setenv("KVTCD_GPU_CODEC_LIB", "/nonexistent/libkvtc_gpu.so", 1);
    struct rig r;
    rig_init(&r, layout_of(2, 2, 16, 32));
    char why[512] = "";
    kvtcd_gpu_codec *g = (kvtcd_gpu_codec *)&r; /* must be reset */
    cr_assert_eq(kvtcd_gpu_codec_open(0, &r.reg, &g, why, sizeof why), KVTC_ENOTSUP);
    cr_assert_null(g);
    cr_assert(strstr(why, "nonexistent"), "reason: %s", why);
    cr_assert_eq(kvtcd_codec_uses_gpu(r.cj), 0);

    void *c[4];
    for (int i = 0; i < 4; i++)
        c[i] = make_chunk(&r.l, 50 + (uint64_t)i);
    kvtcd_codec_item it[4], dit[4];
    run_encode(&r, c, 2, 2, 0, it);
    uint8_t *ctr[4];
    size_t len[4];
    for (int i = 0; i < 4; i++) {
        cr_assert_eq(it[i].rc, 0);
        ctr[i] = it[i].out;
        len[i] = it[i].out_len;
    }
    run_decode(&r, ctr, len, 1, 4, dit);
    for (int i = 0; i < 4; i++) {
        cr_assert_eq(dit[i].rc, 0);
        void *ref = cpu_decode(r.e, ctr[i], len[i]);
        cr_assert(memcmp(ref, dit[i].out, r.bytes) == 0);
        free(ref);
        free(dit[i].out);
        free(ctr[i]);
        free(c[i]);
    }
    const kvtcd_codec_stats *st = kvtcd_codec_get_stats(r.cj);
    cr_assert_eq(st->encoded, 4);
    cr_assert_eq(st->decoded, 4);
    cr_assert_eq(st->gpu_jobs + st->gpu_items + st->gpu_fallback, 0);
    rig_fini(&r);
}

/* Whatever this machine has, open either works or says why: never a crash
 * or a silent half-open backend. */
Test(daemon_codec_gpu, open_reports_why_or_works)
{
    kvtcd_profiles reg;
    cr_assert_eq(kvtcd_profiles_init(&reg, NULL), 0);
    char why[512] = "";
    kvtcd_gpu_codec *g = NULL;
    int rc = kvtcd_gpu_codec_open(0, &reg, &g, why, sizeof why);
    if (rc) {
        cr_assert_eq(rc, KVTC_ENOTSUP);
        cr_assert_null(g);
        cr_assert_neq(why[0], '\0');
        cr_log_info("GPU codec unavailable here: %s", why);
    } else {
        cr_assert_not_null(g);
        kvtcd_gpu_codec_close(g);
    }
    kvtcd_profiles_fini(&reg);
}

Test(daemon_codec_gpu, codec_device_flag)
{
    kvtcd_config c;
    int action;
    char err[256];
    char *a1[] = {"kvtcd", "--codec-device", "gpu", NULL};
    cr_assert_eq(kvtcd_config_from_args(&c, 3, a1, &action, err, sizeof err), 0, "%s", err);
    cr_assert_eq(c.codec_device, KVTCD_CODEC_DEVICE_GPU);
    char *a2[] = {"kvtcd", "--codec-device=cpu", NULL};
    cr_assert_eq(kvtcd_config_from_args(&c, 2, a2, &action, err, sizeof err), 0, "%s", err);
    cr_assert_eq(c.codec_device, KVTCD_CODEC_DEVICE_CPU);
    char *a3[] = {"kvtcd", NULL};
    cr_assert_eq(kvtcd_config_from_args(&c, 1, a3, &action, err, sizeof err), 0, "%s", err);
    cr_assert_eq(c.codec_device, KVTCD_CODEC_DEVICE_AUTO);
    char *a4[] = {"kvtcd", "--codec-device", "tpu", NULL};
    cr_assert_eq(kvtcd_config_from_args(&c, 3, a4, &action, err, sizeof err), KVTC_EINVAL);
}

/* --gpu-projection / [store] gpu_projection: fp16 by default, the four
 * names, anything else refused (a typo must not silently mean fp16). */
Test(daemon_codec_gpu, gpu_projection_flag_and_ini)
{
    kvtcd_config c;
    int action;
    char err[256];
    char *a0[] = {"kvtcd", NULL};
    cr_assert_eq(kvtcd_config_from_args(&c, 1, a0, &action, err, sizeof err), 0, "%s", err);
    cr_assert_eq(c.gpu_projection, KVTCD_GPU_PROJ_FP16);
    char *a1[] = {"kvtcd", "--gpu-projection", "fp8-decode", NULL};
    cr_assert_eq(kvtcd_config_from_args(&c, 3, a1, &action, err, sizeof err), 0, "%s", err);
    cr_assert_eq(c.gpu_projection, KVTCD_GPU_PROJ_FP8_DECODE);
    char *a2[] = {"kvtcd", "--gpu-projection=fp8", NULL};
    cr_assert_eq(kvtcd_config_from_args(&c, 2, a2, &action, err, sizeof err), 0, "%s", err);
    cr_assert_eq(c.gpu_projection, KVTCD_GPU_PROJ_FP8);
    char *a5[] = {"kvtcd", "--gpu-projection", "direct-decode", NULL};
    cr_assert_eq(kvtcd_config_from_args(&c, 3, a5, &action, err, sizeof err), 0, "%s", err);
    cr_assert_eq(c.gpu_projection, KVTCD_GPU_PROJ_DIRECT_DECODE);
    char *a3[] = {"kvtcd", "--gpu-projection", "fp4", NULL};
    cr_assert_eq(kvtcd_config_from_args(&c, 3, a3, &action, err, sizeof err), KVTC_EINVAL);
    /* INI, and the flag over it */
    char *ini = kvtc_test_write_temp("[store]\ngpu_projection = fp8-decode\n");
    kvtcd_config_defaults(&c);
    cr_assert_eq(kvtcd_config_load_ini(&c, ini, err, sizeof err), 0, "%s", err);
    cr_assert_eq(c.gpu_projection, KVTCD_GPU_PROJ_FP8_DECODE);
    char *a4[] = {"kvtcd", "--config", ini, "--gpu-projection", "fp16", NULL};
    cr_assert_eq(kvtcd_config_from_args(&c, 5, a4, &action, err, sizeof err), 0, "%s", err);
    cr_assert_eq(c.gpu_projection, KVTCD_GPU_PROJ_FP16);
    unlink(ini);
    char *bad = kvtc_test_write_temp("[store]\ngpu_projection = FP8\n");
    kvtcd_config_defaults(&c);
    cr_assert_eq(kvtcd_config_load_ini(&c, bad, err, sizeof err), KVTC_EINVAL);
    unlink(bad);
}

/* ---- with a GPU codec (device machine) ----------------------------------------- */

#define NB 3
#define PER 4
/* PER chunks made from seed on, each encoded on its own (plan 1) and
 * checked: the chunks in c, their containers in ctr / len (caller frees). */
static void encode_per(struct rig *r, uint64_t seed, void **c, uint8_t **ctr, size_t *len)
{
    kvtcd_codec_item it[PER];
    for (int i = 0; i < PER; i++)
        c[i] = make_chunk(&r->l, seed + (uint64_t)i);
    run_encode(r, c, 1, PER, 1, it);
    for (uint32_t i = 0; i < PER; i++) {
        cr_assert_eq(it[i].rc, 0);
        ctr[i] = it[i].out;
        len[i] = it[i].out_len;
    }
}

#define N (NB * PER)

/* err <= 1.3 x the CPU's own error plus a floor for fp16 rounding, as
 * tests/gpu/test_gpu_codec.c holds the GPU codec to. */
static void assert_close(const struct rig *r, const void *orig, const void *cpu_rec,
                         const void *got, const char *what, uint32_t i)
{
    double ref = mse(&r->l, orig, cpu_rec), err = mse(&r->l, orig, got);
    double en = energy(&r->l, orig);
    cr_assert(err <= 1.3 * ref + 2e-5 * en + 1e-12,
              "%s chunk %u: mse %.3g vs CPU %.3g (energy %.3g)", what, i, err, ref, en);
}

/* Decode the PER containers on the GPU and hold each to the CPU's decode
 * of it (the 16-bit GPU decode's distance); frees ctr[] and c[]. */
static void decode_near_cpu(struct rig *r, void **c, uint8_t **ctr, size_t *len, const char *what)
{
    kvtcd_codec_item dit[PER];
    run_decode(r, ctr, len, 1, PER, dit);
    for (uint32_t i = 0; i < PER; i++) {
        cr_assert_eq(dit[i].rc, 0, "%s, decode %u: %d", what, i, dit[i].rc);
        void *cpu = cpu_decode(r->e, ctr[i], len[i]);
        cr_assert(mse(&r->l, cpu, dit[i].out) <= 0.25 * mse(&r->l, c[i], cpu) +
                                                     2e-5 * energy(&r->l, c[i]),
                  "%s, chunk %u: too far from the CPU's decode", what, i);
        free(cpu);
        free(dit[i].out);
        free(ctr[i]);
        free(c[i]);
    }
}

Test(daemon_codec_gpu, gpu_jobs_match_the_cpu_codec, .timeout = 120)
{
    struct rig r;
    rig_init(&r, layout_of(2, 4, 64, 128));
    rig_gpu_or_skip(&r);
    void *c[N];
    for (int i = 0; i < N; i++)
        c[i] = make_chunk(&r.l, 77 + (uint64_t)i);
    /* Encode, 3 requests in one loop turn: the first starts a GPU job at
     * once, the two others wait and go together in the second launch. */
    kvtcd_codec_item it[N];
    run_encode(&r, c, NB, PER, 1, it);
    const kvtcd_codec_stats *st = kvtcd_codec_get_stats(r.cj);
    cr_assert_eq(st->gpu_jobs, 2, "GPU jobs %llu", (unsigned long long)st->gpu_jobs);
    cr_assert_eq(st->gpu_items, N);
    cr_assert_eq(st->gpu_fallback, 0);
    cr_assert_eq(st->encoded, N);
    uint8_t *gctr[N], *cctr[N];
    size_t glen[N], clen[N];
    void *cref[N];
    for (uint32_t i = 0; i < N; i++) {
        cr_assert_eq(it[i].rc, 0);
        gctr[i] = it[i].out;
        glen[i] = it[i].out_len;
        cctr[i] = cpu_encode(r.e, 1, c[i], &clen[i]);
        cref[i] = cpu_decode(r.e, cctr[i], clen[i]);
        /* GPU container -> CPU decoder. */
        void *x = cpu_decode(r.e, gctr[i], glen[i]);
        assert_close(&r, c[i], cref[i], x, "GPU enc -> CPU dec", i);
        free(x);
    }
    /* Decode jobs on the GPU: GPU and CPU containers, one launch. */
    uint8_t *mix[N];
    size_t mlen[N];
    for (uint32_t i = 0; i < N; i++) {
        mix[i] = i % 2 ? gctr[i] : cctr[i];
        mlen[i] = i % 2 ? glen[i] : clen[i];
    }
    kvtcd_codec_item dit[N];
    run_decode(&r, mix, mlen, 1, N, dit);
    cr_assert_eq(st->gpu_jobs, 3);
    cr_assert_eq(st->gpu_items, 2 * N);
    cr_assert_eq(st->gpu_fallback, 0);
    double worst = 0;
    for (uint32_t i = 0; i < N; i++) {
        cr_assert_eq(dit[i].rc, 0, "decode %u: %d", i, dit[i].rc);
        cr_assert_eq(dit[i].out_len, r.bytes);
        cr_assert_eq(dit[i].info.n_tokens, r.l.chunk_tokens);
        assert_close(&r, c[i], cref[i], dit[i].out, "GPU dec", i);
        /* Against the CPU's decode of the very same container: the same
         * reconstruction up to the GPU's fp16 projection rounding. */
        void *same = cpu_decode(r.e, mix[i], mlen[i]);
        double d = mse(&r.l, same, dit[i].out), ref = mse(&r.l, c[i], same);
        worst = d / (ref + 1e-30) > worst ? d / (ref + 1e-30) : worst;
        cr_assert(d <= 0.25 * ref + 2e-5 * energy(&r.l, c[i]),
                  "chunk %u: GPU vs CPU decode of one container differ by mse %.3g (codec "
                  "error %.3g)",
                  i, d, ref);
        free(same);
        free(dit[i].out);
    }
    cr_log_info("GPU vs CPU decode of the same containers: worst mse ratio %.3g", worst);
    for (uint32_t i = 0; i < N; i++) {
        free(gctr[i]);
        free(cctr[i]);
        free(cref[i]);
        free(c[i]);
    }
    rig_fini(&r);
}

/* The knob at work: with fp8-decode, GPU-encoded chunks decode on the GPU
 * within 1.3x the emulated fp8 decode's error (bench/quality/projx.h,
 * fp16 encode + e4m3 static-scale decode) and the CPU decodes the same
 * containers (they do not change with the projection); back to fp16, the
 * decode is the 16-bit one again. */
Test(daemon_codec_gpu, gpu_fp8_decode_projection, .timeout = 120)
{
    struct rig r;
    rig_init(&r, layout_of(2, 4, 64, 128));
    rig_gpu_or_skip(&r);
    kvtcd_gpu_codec_set_projection(r.g, KVTCD_GPU_PROJ_FP8_DECODE);
    cr_assert_eq(kvtcd_gpu_codec_projection(r.g), KVTCD_GPU_PROJ_FP8_DECODE);
    void *c[PER];
    kvtcd_codec_item dit[PER];
    uint8_t *ctr[PER];
    size_t len[PER];
    encode_per(&r, 500, c, ctr, len);
    run_decode(&r, ctr, len, 1, PER, dit);
    const kvtcd_codec_stats *st = kvtcd_codec_get_stats(r.cj);
    cr_assert_eq(st->gpu_fallback, 0);
    kvtc_px *x = NULL;
    cr_assert_eq(kvtc_px_create(r.e->p, 1, KVTC_PX_BF16, KVTC_PX_E4M3_STATIC, &x), 0);
    void *emu = malloc(r.bytes);
    for (uint32_t i = 0; i < PER; i++) {
        cr_assert_eq(dit[i].rc, 0, "decode %u: %d", i, dit[i].rc);
        size_t stored = 0;
        cr_assert_eq(kvtc_px_roundtrip(x, c[i], r.l.chunk_tokens, 0, emu, &stored), 0);
        double ref = mse(&r.l, c[i], emu), err = mse(&r.l, c[i], dit[i].out);
        void *cpu = cpu_decode(r.e, ctr[i], len[i]);
        double e16 = mse(&r.l, c[i], cpu);
        cr_log_info("fp8-decode chunk %u: mse %.4g, emulated %.4g, CPU decode %.4g", i, err, ref,
                    e16);
        cr_assert(err <= 1.3 * ref + 2e-5 * energy(&r.l, c[i]),
                  "chunk %u: fp8 decode mse %.4g vs emulated %.4g", i, err, ref);
        free(cpu);
        free(dit[i].out);
    }
    free(emu);
    kvtc_px_free(x);
    /* back to fp16: the contexts are remade, the decode is 16-bit again */
    kvtcd_gpu_codec_set_projection(r.g, KVTCD_GPU_PROJ_FP16);
    decode_near_cpu(&r, c, ctr, len, "fp16 again");
    rig_fini(&r);
}

/* --gpu-projection direct-decode: the GPU decode GEMM writes the chunks
 * (kvtc_gpu_params.dec_gemm = KVTC_GPU_PROJ_DIRECT); every chunk decodes on
 * the GPU (no fallback) to what the CPU decodes, within the 16-bit GPU
 * decode's usual distance. */
Test(daemon_codec_gpu, gpu_direct_decode_projection, .timeout = 120)
{
    struct rig r;
    rig_init(&r, layout_of(2, 4, 64, 128));
    rig_gpu_or_skip(&r);
    kvtcd_gpu_codec_set_projection(r.g, KVTCD_GPU_PROJ_DIRECT_DECODE);
    cr_assert_eq(kvtcd_gpu_codec_projection(r.g), KVTCD_GPU_PROJ_DIRECT_DECODE);
    void *c[PER];
    uint8_t *ctr[PER];
    size_t len[PER];
    encode_per(&r, 700, c, ctr, len);
    decode_near_cpu(&r, c, ctr, len, "direct decode");
    cr_assert_eq(kvtcd_codec_get_stats(r.cj)->gpu_fallback, 0);
    rig_fini(&r);
}

Test(daemon_codec_gpu, gpu_failure_falls_back_to_cpu, .timeout = 120)
{
    struct rig r;
    rig_init(&r, layout_of(2, 4, 64, 128));
    rig_gpu_or_skip(&r);
    void *c[PER];
    for (int i = 0; i < PER; i++)
        c[i] = make_chunk(&r.l, 300 + (uint64_t)i);
    /* A launch that fails: every chunk is still compressed, by the CPU
     * (so byte for byte the CPU's container). */
    kvtcd__gpu_codec_fail_next(r.g, 1);
    kvtcd_codec_item it[PER];
    run_encode(&r, c, 1, PER, 0, it);
    const kvtcd_codec_stats *st = kvtcd_codec_get_stats(r.cj);
    cr_assert_eq(st->gpu_errors, 1);
    cr_assert_eq(st->gpu_fallback, PER);
    cr_assert_eq(st->gpu_items, 0);
    cr_assert_eq(st->encoded, PER);
    cr_assert_eq(st->failed, 0);
    for (uint32_t i = 0; i < PER; i++) {
        cr_assert_eq(it[i].rc, 0);
        size_t len;
        uint8_t *ref = cpu_encode(r.e, 0, c[i], &len);
        cr_assert(len == it[i].out_len && memcmp(ref, it[i].out, len) == 0);
        free(ref);
    }
    /* A corrupt container among good ones: the GPU decodes the good ones,
     * the CPU re-judges the bad one and says CORRUPT, as it always did. */
    it[1].out[it[1].out_len / 2] ^= 0x40;
    uint8_t *ctr[PER];
    size_t len[PER];
    for (uint32_t i = 0; i < PER; i++) {
        ctr[i] = it[i].out;
        len[i] = it[i].out_len;
    }
    kvtcd_codec_item dit[PER];
    run_decode(&r, ctr, len, 1, PER, dit);
    cr_assert_eq(dit[1].rc, KVTC_ECORRUPT);
    cr_assert_null(dit[1].out);
    cr_assert_eq(st->gpu_items, PER - 1);
    cr_assert_eq(st->gpu_fallback, PER + 1);
    cr_assert_eq(st->failed, 1);
    for (uint32_t i = 0; i < PER; i++) {
        if (i != 1) {
            cr_assert_eq(dit[i].rc, 0);
            void *ref = cpu_decode(r.e, ctr[i], len[i]);
            assert_close(&r, c[i], ref, dit[i].out, "GPU dec", i);
            free(ref);
        }
        free(dit[i].out);
        free(ctr[i]);
        free(c[i]);
    }
    rig_fini(&r);
}

/* ---- throughput: the daemon's CPU path vs its GPU path ---------------------- */

#define BN 64

static double run_ms(struct rig *r, int enc, void **src, uint8_t **ctr, size_t *len,
                     kvtcd_codec_item *it)
{
    uint64_t t0 = uv_hrtime();
    if (enc)
        run_encode(r, src, 8, BN / 8, 1, it);
    else
        run_decode(r, ctr, len, 8, BN / 8, it);
    double ms = (double)(uv_hrtime() - t0) / 1e6;
    for (uint32_t i = 0; i < BN; i++) {
        cr_assert_eq(it[i].rc, 0);
        free(it[i].out);
    }
    return ms;
}

/* Best of 3 after a warm-up, 64 chunks as 8 requests of 8. */
static void bench_path(struct rig *r, const char *name, void **src, uint8_t **ctr, size_t *len)
{
    kvtcd_codec_item *it = calloc(BN, sizeof *it);
    double mb = (double)BN * (double)r->bytes / 1e6;
    for (int enc = 1; enc >= 0; enc--) {
        double best = 1e30;
        run_ms(r, enc, src, ctr, len, it);
        for (int k = 0; k < 3; k++) {
            double ms = run_ms(r, enc, src, ctr, len, it);
            best = ms < best ? ms : best;
        }
        fprintf(stderr, "gcodec bench: %s %s: %.1f ms for %u chunks of %.2f MB = %.0f MB/s\n",
                name, enc ? "compress" : "decode", best, BN, (double)r->bytes / 1e6,
                mb / (best / 1e3));
    }
    free(it);
}

Test(daemon_codec_gpu, bench_cpu_vs_gpu, .timeout = 600)
{
    if (!getenv("KVTC_GCODEC_BENCH"))
        cr_skip_test("set KVTC_GCODEC_BENCH=1 for the CPU vs GPU throughput comparison");
    struct rig r;
    /* Llama-like heads (8 x 64) over 4 layers, 256 tokens: 2 MiB chunks; a
     * profile of the whole 8B model is too slow to calibrate on a CPU. */
    rig_init(&r, layout_of(4, 8, 64, 256));
    void *c[BN];
    uint8_t *ctr[BN];
    size_t len[BN];
    for (uint32_t i = 0; i < BN; i++) {
        c[i] = make_chunk(&r.l, 5000 + i);
        ctr[i] = cpu_encode(r.e, 1, c[i], &len[i]);
    }
    const char *tp = getenv("UV_THREADPOOL_SIZE");
    fprintf(stderr, "gcodec bench: layout 4x8x64 fp16, 256 tokens, plan 8x, "
                    "UV_THREADPOOL_SIZE=%s\n", tp ? tp : "4 (default)");
    bench_path(&r, "cpu", c, ctr, len);
    char why[512] = "";
    kvtcd_gpu_codec *g = NULL;
    if (kvtcd_gpu_codec_open(0, &r.reg, &g, why, sizeof why) == 0) {
        kvtcd_codec_set_gpu(r.cj, g);
        bench_path(&r, "gpu", c, ctr, len);
        const kvtcd_codec_stats *st = kvtcd_codec_get_stats(r.cj);
        fprintf(stderr, "gcodec bench: gpu jobs %llu chunks %llu fallback %llu\n",
                (unsigned long long)st->gpu_jobs, (unsigned long long)st->gpu_items,
                (unsigned long long)st->gpu_fallback);
        cr_assert_eq(st->gpu_fallback, 0);
    } else {
        fprintf(stderr, "gcodec bench: no GPU path (%s)\n", why);
    }
    for (uint32_t i = 0; i < BN; i++) {
        free(c[i]);
        free(ctr[i]);
    }
    rig_fini(&r);
}
