/* The CPU codec end to end on synthetic KV with a known low-rank structure
 * hidden behind RoPE: calibrate, plan, encode, decode, inspect, profiles. */
#include <criterion/criterion.h>
#include <math.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <zlib.h>

#include "../../codec/container.h"
#include "../../codec/internal.h"
#include "kvtc_codec.h"

static uint64_t rng_state;
static double gauss(void)
{
    /* Box-Muller on a xorshift: deterministic across runs */
    rng_state ^= rng_state << 13; rng_state ^= rng_state >> 7; rng_state ^= rng_state << 17;
    double u1 = ((rng_state >> 11) + 1.0) / 9007199254740993.0;
    rng_state ^= rng_state << 13; rng_state ^= rng_state >> 7; rng_state ^= rng_state << 17;
    double u2 = (rng_state >> 11) / 9007199254740992.0;
    return sqrt(-2 * log(u1)) * cos(2 * M_PI * u2);
}

#define RANK 6
struct synth {
    kvtc_layout l;
    size_t D;
    float *mix[2];  /* [RANK][D] */
    float *mean[2]; /* [D] */
};

static void synth_init(struct synth *s, uint32_t style, uint32_t dtype)
{
    memset(s, 0, sizeof *s);
    s->l = (kvtc_layout){.layers = 4, .kv_heads = 2, .head_dim = 32, .dtype = dtype,
                         .chunk_tokens = 64, .rope_style = style, .rope_theta = 10000.0f};
    s->D = kvtc_row_width(&s->l);
    rng_state = 0x1234567;
    for (int st = 0; st < 2; st++) {
        s->mix[st] = malloc(RANK * s->D * sizeof(float));
        s->mean[st] = malloc(s->D * sizeof(float));
        for (size_t i = 0; i < RANK * s->D; i++)
            s->mix[st][i] = (float)gauss() / (float)(1 + i / s->D);
        for (size_t j = 0; j < s->D; j++)
            s->mean[st][j] = (float)gauss() * 0.5f;
    }
}

static void synth_free(struct synth *s)
{
    for (int st = 0; st < 2; st++) {
        free(s->mix[st]);
        free(s->mean[st]);
    }
}

/* A canonical chunk (float) of n tokens at first_pos: rows = mean + z*mix
 * + small noise; keys then get RoPE applied, like an engine's cache. */
static float *synth_chunk(struct synth *s, uint32_t n, uint32_t first_pos)
{
    const kvtc_layout *l = &s->l;
    size_t hd = (size_t)l->kv_heads * l->head_dim;
    float *c = malloc(2 * s->D * n * sizeof(float));
    float *row = malloc(s->D * sizeof(float));
    for (uint32_t t = 0; t < n; t++)
        for (int st = 0; st < 2; st++) {
            double z[RANK];
            for (int r = 0; r < RANK; r++)
                z[r] = gauss() * 3.0;
            for (size_t j = 0; j < s->D; j++) {
                double v = s->mean[st][j] + 0.01 * gauss();
                for (int r = 0; r < RANK; r++)
                    v += z[r] * s->mix[st][r * s->D + j];
                row[j] = (float)v;
            }
            if (st == 0) {
                uint32_t pos[64];
                for (size_t v = 0; v < s->D / l->head_dim; v++)
                    pos[v] = first_pos + t;
                kvtc_rope_apply(l, row, s->D / l->head_dim, pos, 0);
            }
            for (uint32_t layer = 0; layer < l->layers; layer++)
                memcpy(c + (((size_t)layer * 2 + st) * n + t) * hd, row + layer * hd,
                       hd * sizeof(float));
        }
    free(row);
    return c;
}

/* chunk in the layout's dtype from floats */
static void *as_dtype(const kvtc_layout *l, const float *f, size_t n)
{
    void *out = malloc(n * kvtc_dtype_size(l->dtype));
    cr_assert_eq(kvtc_from_float(l->dtype, f, out, n), 0);
    return out;
}

/* Calibrate on 16 chunks of s's data, assuming layout cl (NULL: s's own). */
static kvtc_profile *calibrate_as(struct synth *s, const kvtc_layout *cl, const float *targets,
                                  uint32_t nt)
{
    kvtc_calibrator *cal;
    cr_assert_eq(kvtc_calibrator_create(cl ? cl : &s->l, NULL, &cal), 0);
    for (uint32_t i = 0; i < 16; i++) {
        float *c = synth_chunk(s, 64, i * 64);
        void *d = as_dtype(&s->l, c, 2 * s->D * 64);
        cr_assert_eq(kvtc_calibrator_add(cal, d, 64, i * 64), 0);
        free(c);
        free(d);
    }
    cr_assert_eq(kvtc_calibrator_rows(cal), 16 * 64 - KVTC_SINK_TOKENS);
    kvtc_profile *p = NULL;
    cr_assert_eq(kvtc_calibrator_finish(cal, targets, nt, &p), 0);
    cr_assert_eq(kvtc_calibrator_fit(cal), KVTC_EINVAL, "fit twice");
    kvtc_plan_info extra;
    cr_assert_eq(kvtc_calibrator_plan(cal, 6.0f, &extra), 0, "a plan after the profile");
    cr_assert_gt(extra.bits_per_token, 0);
    kvtc_calibrator_free(cal);
    return p;
}

static kvtc_profile *calibrate(struct synth *s, const float *targets, uint32_t nt)
{
    return calibrate_as(s, NULL, targets, nt);
}

static double mse(const kvtc_layout *l, const void *a, const void *b, size_t n)
{
    float *fa = malloc(n * sizeof(float)), *fb = malloc(n * sizeof(float));
    kvtc_to_float(l->dtype, a, fa, n);
    kvtc_to_float(l->dtype, b, fb, n);
    double e = 0;
    for (size_t i = 0; i < n; i++)
        e += ((double)fa[i] - fb[i]) * ((double)fa[i] - fb[i]);
    free(fa);
    free(fb);
    return e / n;
}

static void roundtrip(uint32_t style, uint32_t dtype)
{
    struct synth s;
    synth_init(&s, style, dtype);
    const float targets[] = {4, 16, 64};
    kvtc_profile *p = calibrate(&s, targets, 3);
    cr_assert_eq(kvtc_profile_plan_count(p), 3);
    size_t n = 2 * s.D * 64;
    float *fc = synth_chunk(&s, 64, 4096);
    void *chunk = as_dtype(&s.l, fc, n);
    double var = 0;
    for (size_t i = 0; i < n; i++)
        var += (double)fc[i] * fc[i];
    var /= n;
    double prev_err = 0;
    for (uint32_t plan = 0; plan < 3; plan++) {
        kvtc_plan_info pi;
        cr_assert_eq(kvtc_profile_plan_info(p, plan, &pi), 0);
        cr_assert_leq(pi.bits_per_token, 2 * s.D * 16 / targets[plan] + 1e-3);
        kvtc_encoder *enc;
        kvtc_decoder *dec;
        cr_assert_eq(kvtc_encoder_create(p, plan, KVTC_STAGE_DEFLATE, 0, &enc), 0);
        cr_assert_eq(kvtc_decoder_create(p, &dec), 0);
        size_t cap = kvtc_encode_bound(enc, 64), len = 0;
        uint8_t *buf = malloc(cap);
        kvtc_chunk c = {.data = chunk, .n_tokens = 64, .first_pos = 4096};
        cr_assert_eq(kvtc_encode(enc, &c, buf, cap, &len), 0);
        double ratio = (double)(2 * s.D * 64 * 2) / len;
        cr_assert_geq(ratio, 0.8 * targets[plan], "plan %u ratio %.2f", plan, ratio);
        void *out = malloc(kvtc_chunk_bytes(&s.l, 64));
        kvtc_container_info info;
        cr_assert_eq(kvtc_decode(dec, buf, len, out, kvtc_chunk_bytes(&s.l, 64), &info), 0);
        cr_assert_eq(info.n_tokens, 64);
        cr_assert_eq(info.sink_tokens, 0);
        double err = mse(&s.l, chunk, out, n);
        /* Errors grow with the ratio, and stay near the plan's estimate
         * (the dtype's own rounding added). */
        double est = (pi.mse_key + pi.mse_value) / 2;
        cr_assert_lt(err, 2 * est + 1e-3 * var, "plan %u err %g est %g", plan, err, est);
        cr_assert_geq(err, prev_err * 0.9, "plan %u: more bits, less error", plan);
        if (targets[plan] <= 16) /* rank 6 fits the budget: near-lossless */
            cr_assert_lt(err, 0.01 * var, "plan %u err %g var %g", plan, err, var);
        else
            cr_assert_lt(err, var);
        prev_err = err;
        free(out);
        free(buf);
        kvtc_encoder_free(enc);
        kvtc_decoder_free(dec);
    }
    free(fc);
    free(chunk);
    kvtc_profile_free(p);
    synth_free(&s);
}

Test(codec, roundtrip_interleaved_bf16) { roundtrip(KVTC_ROPE_INTERLEAVED, KVTC_DTYPE_BF16); }
Test(codec, roundtrip_half_split_fp16) { roundtrip(KVTC_ROPE_HALF_SPLIT, KVTC_DTYPE_FP16); }
Test(codec, roundtrip_no_rope_fp32) { roundtrip(KVTC_ROPE_NONE, KVTC_DTYPE_FP32); }

Test(codec, wrong_rope_style_costs_accuracy)
{
    /* Keys rotated half-split but calibrated as interleaved: the structure
     * the PCA needs is gone, so the same plan errs far more. Proves the
     * RoPE undo matters and matches the data. */
    struct synth s;
    synth_init(&s, KVTC_ROPE_HALF_SPLIT, KVTC_DTYPE_FP32);
    const float t[] = {16};
    kvtc_profile *good = calibrate(&s, t, 1);
    kvtc_plan_info gi;
    kvtc_profile_plan_info(good, 0, &gi);
    kvtc_layout wrong = s.l;
    wrong.rope_style = KVTC_ROPE_INTERLEAVED;
    kvtc_profile *bad = calibrate_as(&s, &wrong, t, 1);
    kvtc_plan_info bi;
    kvtc_profile_plan_info(bad, 0, &bi);
    cr_assert_gt(bi.mse_key, 5 * gi.mse_key, "good %g bad %g", gi.mse_key, bi.mse_key);
    kvtc_profile_free(good);
    kvtc_profile_free(bad);
    synth_free(&s);
}

Test(codec, sinks_and_raw_chunks_are_exact_and_pieces_inflate_with_zlib)
{
    struct synth s;
    synth_init(&s, KVTC_ROPE_INTERLEAVED, KVTC_DTYPE_BF16);
    const float t[] = {8};
    kvtc_profile *p = calibrate(&s, t, 1);
    float *fc = synth_chunk(&s, 64, 0);
    void *chunk = as_dtype(&s.l, fc, 2 * s.D * 64);
    size_t bytes = kvtc_chunk_bytes(&s.l, 64);
    kvtc_encoder *enc;
    kvtc_decoder *dec;
    cr_assert_eq(kvtc_encoder_create(p, 0, KVTC_STAGE_DEFLATE, 9, &enc), 0);
    cr_assert_eq(kvtc_decoder_create(p, &dec), 0);
    size_t cap = kvtc_encode_bound(enc, 64), len;
    uint8_t *buf = malloc(cap), *out = malloc(bytes);
    kvtc_chunk c = {.data = chunk, .n_tokens = 64, .first_pos = 0};
    cr_assert_eq(kvtc_encode(enc, &c, buf, cap, &len), 0);
    kvtc_container_info info;
    cr_assert_eq(kvtc_inspect(buf, len, &info), 0);
    cr_assert_eq(info.sink_tokens, KVTC_SINK_TOKENS);
    cr_assert_eq(kvtc_decode(dec, buf, len, out, bytes, NULL), 0);
    size_t tb = (size_t)s.l.kv_heads * s.l.head_dim * 2;
    for (size_t slab = 0; slab < 2 * s.l.layers; slab++)
        cr_assert(memcmp((uint8_t *)chunk + slab * 64 * tb, out + slab * 64 * tb,
                         KVTC_SINK_TOKENS * tb) == 0, "sinks of slab %zu differ", slab);
    /* every piece is standard raw DEFLATE */
    struct kvtc__header h;
    cr_assert_eq(kvtc__container_parse(buf, len, &h), 0);
    const uint8_t *table = buf + KVTC__HEADER_BYTES + h.raw_bytes, *pay = table + h.table_bytes;
    uint8_t *inflated = malloc(KVTC_PIECE_MAX);
    for (uint32_t i = 0; i < h.n_pieces; i++) {
        uint32_t cl = table[4 * i] | table[4 * i + 1] << 8 | table[4 * i + 2] << 16 |
                      (uint32_t)table[4 * i + 3] << 24;
        z_stream z = {0};
        cr_assert_eq(inflateInit2(&z, -15), Z_OK);
        z.next_in = (Bytef *)pay;
        z.avail_in = cl;
        z.next_out = inflated;
        z.avail_out = KVTC_PIECE_MAX;
        cr_assert_eq(inflate(&z, Z_FINISH), Z_STREAM_END, "piece %u", i);
        uint64_t want = i + 1 < h.n_pieces ? KVTC_PIECE_MAX : h.symbol_bytes - i * KVTC_PIECE_MAX;
        cr_assert_eq(z.total_out, want);
        inflateEnd(&z);
        pay += cl;
    }
    /* a raw chunk (live window) is stored and served bit for bit */
    c.flags = KVTC_CHUNK_RAW;
    c.first_pos = 640;
    cr_assert_eq(kvtc_encode(enc, &c, buf, cap, &len), 0);
    cr_assert_eq(len, KVTC__HEADER_BYTES + bytes);
    kvtc_decoder *raw_only;
    cr_assert_eq(kvtc_decoder_create(NULL, &raw_only), 0);
    memset(out, 0xa5, bytes);
    cr_assert_eq(kvtc_decode(raw_only, buf, len, out, bytes, &info), 0);
    cr_assert_eq(info.mode, 1);
    cr_assert(memcmp(out, chunk, bytes) == 0);
    /* ...but a coded one needs the profile */
    c.flags = 0;
    cr_assert_eq(kvtc_encode(enc, &c, buf, cap, &len), 0);
    cr_assert_eq(kvtc_decode(raw_only, buf, len, out, bytes, NULL), KVTC_EPROFILE);
    cr_assert_eq(kvtc_decode(dec, buf, len, out, bytes - 1, NULL), KVTC_ENOSPC);
    kvtc_decoder_free(raw_only);
    free(inflated);
    free(buf);
    free(out);
    free(fc);
    free(chunk);
    kvtc_encoder_free(enc);
    kvtc_decoder_free(dec);
    kvtc_profile_free(p);
    synth_free(&s);
}

Test(codec, stages_agree_and_profiles_round_trip)
{
    struct synth s;
    synth_init(&s, KVTC_ROPE_HALF_SPLIT, KVTC_DTYPE_BF16);
    const float t[] = {4, 32};
    kvtc_profile *p = calibrate(&s, t, 2);
    size_t pn = kvtc_profile_size(p);
    uint8_t *pb = malloc(pn);
    cr_assert_eq(kvtc_profile_save(p, pb, pn), 0);
    cr_assert_eq(kvtc_profile_save(p, pb, pn - 1), KVTC_ENOSPC);
    kvtc_profile *q;
    cr_assert_eq(kvtc_profile_load(pb, pn, &q), 0);
    cr_assert_eq(kvtc_profile_id(p), kvtc_profile_id(q));
    cr_assert_eq(kvtc_profile_find_plan(q, 30), 1);
    float *fc = synth_chunk(&s, 37, 100); /* an odd, partial chunk */
    void *chunk = as_dtype(&s.l, fc, 2 * s.D * 37);
    size_t bytes = kvtc_chunk_bytes(&s.l, 37);
    uint8_t *ref = NULL;
    for (uint32_t stage = 0; stage <= KVTC_STAGE_STORE; stage++) {
        kvtc_encoder *enc;
        kvtc_decoder *dec;
        cr_assert_eq(kvtc_encoder_create(p, 1, stage, 0, &enc), 0);
        cr_assert_eq(kvtc_decoder_create(q, &dec), 0); /* the loaded copy decodes */
        size_t cap = kvtc_encode_bound(enc, 37), len;
        uint8_t *buf = malloc(cap), *out = malloc(bytes);
        kvtc_chunk c = {.data = chunk, .n_tokens = 37, .first_pos = 100};
        cr_assert_eq(kvtc_encode(enc, &c, buf, cap, &len), 0);
        cr_assert_eq(kvtc_decode(dec, buf, len, out, bytes, NULL), 0);
        if (!ref)
            ref = out;
        else {
            cr_assert(memcmp(ref, out, bytes) == 0, "stage %u decodes differently", stage);
            free(out);
        }
        free(buf);
        kvtc_encoder_free(enc);
        kvtc_decoder_free(dec);
    }
    free(ref);
    free(pb);
    free(fc);
    free(chunk);
    kvtc_profile_free(p);
    kvtc_profile_free(q);
    synth_free(&s);
}

Test(codec, rejects_bad_arguments_and_nonfinite_kv)
{
    struct synth s;
    synth_init(&s, KVTC_ROPE_INTERLEAVED, KVTC_DTYPE_FP32);
    kvtc_calibrator *cal;
    cr_assert_eq(kvtc_calibrator_create(&s.l, NULL, &cal), 0);
    const float t[] = {8};
    kvtc_profile *p = NULL;
    cr_assert_eq(kvtc_calibrator_finish(cal, t, 1, &p), KVTC_EINVAL, "no rows yet");
    float *fc = synth_chunk(&s, 64, 64);
    fc[100] = NAN;
    cr_assert_eq(kvtc_calibrator_add(cal, fc, 64, 64), KVTC_EINVAL);
    kvtc_calibrator_free(cal);
    kvtc_layout bad = s.l;
    bad.head_dim = 15; /* odd with RoPE */
    cr_assert_eq(kvtc_calibrator_create(&bad, NULL, &cal), KVTC_EINVAL);
    bad = s.l;
    bad.layers = KVTC_MAX_LAYERS + 1;
    cr_assert_eq(kvtc_layout_check(&bad), KVTC_EINVAL);
    free(fc);
    synth_free(&s);
}

Test(codec, numeric_formats_round_trip)
{
    for (uint32_t h = 0; h < 65536; h++) {
        if (!kvtc__f16_is_finite((uint16_t)h))
            continue;
        cr_assert_eq(kvtc__f32_to_f16(kvtc__f16_to_f32((uint16_t)h)), h, "f16 %04x", h);
    }
    for (uint32_t v = 0; v < 256; v++) {
        if (kvtc__e4m3_is_nan((uint8_t)v))
            continue;
        uint8_t back = kvtc__f32_to_e4m3(kvtc__e4m3_to_f32((uint8_t)v));
        cr_assert(back == v || (v == 0x80 && back == 0x80), "e4m3 %02x -> %02x", v, back);
    }
    cr_assert_eq(kvtc__e4m3_to_f32(0x7e), 448.0f);
    cr_assert_eq(kvtc__f32_to_e4m3(1000.0f), 0x7e);
    cr_assert_eq(kvtc__f32_to_f16(65504.0f), 0x7bff);
    cr_assert_eq(kvtc__f32_to_bf16(1.00390625f), 0x3f80); /* tie to even */
    cr_assert_eq(kvtc__bf16_to_f32(0x3f81), 1.0078125f);
}

Test(codec, slab_weights_travel_in_the_profile)
{
    /* Weights change what the planner protects but never the meaning of
     * the data: a weighted profile, saved and loaded, still reconstructs. */
    struct synth s;
    synth_init(&s, KVTC_ROPE_INTERLEAVED, KVTC_DTYPE_FP32);
    float w[2 * 4] = {4, 0.5f, 1, 2, 0.25f, 1, 3, 1};
    kvtc_calib_params params = {.slab_weights = w};
    kvtc_calibrator *cal;
    cr_assert_eq(kvtc_calibrator_create(&s.l, &params, &cal), 0);
    w[0] = -1; /* copied at create: later changes do not matter */
    for (uint32_t i = 0; i < 8; i++) {
        float *c = synth_chunk(&s, 64, 64 + i * 64);
        cr_assert_eq(kvtc_calibrator_add(cal, c, 64, 64 + i * 64), 0);
        free(c);
    }
    const float t[] = {4};
    kvtc_profile *p, *q;
    cr_assert_eq(kvtc_calibrator_finish(cal, t, 1, &p), 0);
    kvtc_calibrator_free(cal);
    size_t n = kvtc_profile_size(p);
    uint8_t *buf = malloc(n);
    cr_assert_eq(kvtc_profile_save(p, buf, n), 0);
    cr_assert_eq(kvtc_profile_load(buf, n, &q), 0);
    float *fc = synth_chunk(&s, 64, 2000);
    size_t bytes = kvtc_chunk_bytes(&s.l, 64);
    kvtc_encoder *enc;
    kvtc_decoder *dec;
    cr_assert_eq(kvtc_encoder_create(p, 0, KVTC_STAGE_DEFLATE, 0, &enc), 0);
    cr_assert_eq(kvtc_decoder_create(q, &dec), 0);
    size_t cap = kvtc_encode_bound(enc, 64), len;
    uint8_t *cont = malloc(cap);
    float *out = malloc(bytes);
    kvtc_chunk c = {.data = fc, .n_tokens = 64, .first_pos = 2000};
    cr_assert_eq(kvtc_encode(enc, &c, cont, cap, &len), 0);
    cr_assert_eq(kvtc_decode(dec, cont, len, out, bytes, NULL), 0);
    double err = mse(&s.l, fc, out, bytes / 4);
    double energy = 0;
    for (size_t i = 0; i < bytes / 4; i++)
        energy += (double)fc[i] * fc[i];
    cr_assert_lt(err / (energy / (bytes / 4)), 0.01, "relative error %g", err / (energy / (bytes / 4)));
    w[0] = 0; /* a zero weight would lose its slab: refused */
    cr_assert_eq(kvtc_calibrator_create(&s.l, &params, &cal), KVTC_EINVAL);
    free(cont);
    free(out);
    free(fc);
    free(buf);
    kvtc_encoder_free(enc);
    kvtc_decoder_free(dec);
    kvtc_profile_free(p);
    kvtc_profile_free(q);
    synth_free(&s);
}

/* Distinct encoders and decoders sharing one profile run concurrently and
 * produce exactly what a single thread does. */
struct thread_job {
    const kvtc_profile *p;
    const void *chunk;
    size_t bytes;
    uint8_t *out;
    int rc;
};

static void *codec_thread(void *arg)
{
    struct thread_job *j = arg;
    kvtc_encoder *enc = NULL;
    kvtc_decoder *dec = NULL;
    size_t cap = 0, len = 0;
    uint8_t *buf = NULL;
    j->rc = kvtc_encoder_create(j->p, 0, KVTC_STAGE_DEFLATE, 0, &enc);
    if (!j->rc)
        j->rc = kvtc_decoder_create(j->p, &dec);
    if (!j->rc) {
        cap = kvtc_encode_bound(enc, 64);
        buf = malloc(cap);
    }
    kvtc_chunk c = {.data = j->chunk, .n_tokens = 64, .first_pos = 256};
    for (int rep = 0; !j->rc && rep < 20; rep++) {
        j->rc = kvtc_encode(enc, &c, buf, cap, &len);
        if (!j->rc)
            j->rc = kvtc_decode(dec, buf, len, j->out, j->bytes, NULL);
    }
    free(buf);
    kvtc_encoder_free(enc);
    kvtc_decoder_free(dec);
    return NULL;
}

Test(codec, distinct_contexts_are_thread_safe)
{
    struct synth s;
    synth_init(&s, KVTC_ROPE_HALF_SPLIT, KVTC_DTYPE_BF16);
    const float t[] = {8};
    kvtc_profile *p = calibrate(&s, t, 1);
    float *fc = synth_chunk(&s, 64, 256);
    void *chunk = as_dtype(&s.l, fc, 2 * s.D * 64);
    size_t bytes = kvtc_chunk_bytes(&s.l, 64);
    struct thread_job ref = {p, chunk, bytes, malloc(bytes), 0}, jobs[4];
    codec_thread(&ref);
    cr_assert_eq(ref.rc, 0);
    pthread_t th[4];
    for (int i = 0; i < 4; i++) {
        jobs[i] = (struct thread_job){p, chunk, bytes, malloc(bytes), 0};
        cr_assert_eq(pthread_create(&th[i], NULL, codec_thread, &jobs[i]), 0);
    }
    for (int i = 0; i < 4; i++) {
        pthread_join(th[i], NULL);
        cr_assert_eq(jobs[i].rc, 0);
        cr_assert(memcmp(jobs[i].out, ref.out, bytes) == 0, "thread %d decoded differently", i);
        free(jobs[i].out);
    }
    free(ref.out);
    free(fc);
    free(chunk);
    kvtc_profile_free(p);
    synth_free(&s);
}

Test(codec, calibrates_with_thousands_of_rows_and_components, .timeout = 120)
{
    /* Regression: LAPACK workspace queries come back as floats; past
     * ~2900 rows/components ssyevd's rounded below its need and failed. */
    kvtc_layout l = {.layers = 3, .kv_heads = 4, .head_dim = 256, .dtype = KVTC_DTYPE_BF16,
                     .chunk_tokens = 256, .rope_style = KVTC_ROPE_HALF_SPLIT,
                     .rope_theta = 10000.0f};
    kvtc_calib_params params = {.max_components = 128};
    kvtc_calibrator *cal;
    cr_assert_eq(kvtc_calibrator_create(&l, &params, &cal), 0);
    size_t D = kvtc_row_width(&l), n = 2 * D * 256;
    float *f = malloc(n * sizeof(float));
    uint16_t *c = malloc(n * 2);
    rng_state = 99;
    for (uint32_t ch = 0; ch < 12; ch++) {
        for (size_t i = 0; i < n; i++)
            f[i] = (float)gauss() * (1.0f + (float)(i % 7));
        kvtc_from_float(KVTC_DTYPE_BF16, f, c, n);
        cr_assert_eq(kvtc_calibrator_add(cal, c, 256, 4 + ch * 256), 0);
    }
    cr_assert_eq(kvtc_calibrator_rows(cal), 3072);
    cr_assert_eq(kvtc_calibrator_fit(cal), 0);
    kvtc_plan_info pi;
    cr_assert_eq(kvtc_calibrator_plan(cal, 16, &pi), 0);
    cr_assert_gt(pi.key_components, 0);
    kvtc_calibrator_free(cal);
    free(f);
    free(c);
}
