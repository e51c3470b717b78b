/* The codec on the GPU against the CPU codec: each reads what the other
 * writes (GPU encode -> CPU decode, CPU encode -> GPU decode, GPU -> GPU),
 * within the CPU reference's own error, on synthetic layouts and on real
 * KV (stories260K; SmolLM2-135M's from `make gpu-hf-fixture`); odd sizes,
 * thousands of chunks per batch, poisoned outputs, corrupt containers,
 * non-finite KV, nvCOMP pieces as plain raw DEFLATE. The cross paths decode with our inflate and with nvCOMP's (the
 * default): both must give the same chunks. Every test skips when no GPU
 * is present. */
#include <criterion/criterion.h>
#include <criterion/parameterized.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <zlib.h>

#include "../../kernels/inflate_core.h"
#include "gpu_test_util.h"
#include "llama_model.h"
#include "test_util.h"

#define MAX_N 4096

struct batch {
    uint32_t n;
    kvtc_chunk c[MAX_N];
    uint8_t *cpu[MAX_N], *gpu[MAX_N];
    size_t cpu_len[MAX_N], gpu_len[MAX_N];
    void *cpu_rec[MAX_N];
};

static void batch_free(struct batch *b)
{
    for (uint32_t i = 0; i < b->n; i++) {
        free((void *)b->c[i].data);
        free(b->cpu[i]);
        free(b->gpu[i]);
        free(b->cpu_rec[i]);
    }
}

/* CPU encode + decode of every chunk: the reference. */
static void cpu_ref(const kvtc_profile *p, uint32_t plan, struct batch *b)
{
    kvtc_encoder *enc = NULL;
    kvtc_decoder *dec = NULL;
    cr_assert_eq(kvtc_encoder_create(p, plan, KVTC_STAGE_DEFLATE, 0, &enc), 0);
    cr_assert_eq(kvtc_decoder_create(p, &dec), 0);
    const kvtc_layout *l = kvtc_profile_layout(p);
    for (uint32_t i = 0; i < b->n; i++) {
        size_t cap = kvtc_encode_bound(enc, b->c[i].n_tokens);
        b->cpu[i] = malloc(cap);
        cr_assert_eq(kvtc_encode(enc, &b->c[i], b->cpu[i], cap, &b->cpu_len[i]), 0);
        size_t rb = kvtc_chunk_bytes(l, b->c[i].n_tokens);
        b->cpu_rec[i] = malloc(rb);
        cr_assert_eq(kvtc_decode(dec, b->cpu[i], b->cpu_len[i], b->cpu_rec[i], rb, NULL), 0);
    }
    kvtc_encoder_free(enc);
    kvtc_decoder_free(dec);
}

/* err <= 1.3 x the CPU's own error (2x with bf16 projections, whose
 * rounding noise the per-component sigma scaling amplifies on small
 * components: see kvtc_gpu.h), plus a floor for 16-bit rounding. */
static double tol = 1.3;
static void assert_close(const kvtc_layout *l, const void *orig, const void *cpu_rec,
                         const void *got, uint32_t n, const char *what, uint32_t i)
{
    double ref = gt_mse(l, orig, cpu_rec, n), err = gt_mse(l, orig, got, n);
    double energy = gt_energy(l, orig, n);
    cr_assert(err <= tol * ref + 2e-5 * energy + 1e-12,
              "%s chunk %u: mse %.3g vs CPU reference %.3g (energy %.3g)", what, i, err, ref,
              energy);
    /* 16-bit formats can hold the poison pattern as a real value (fp16
     * 0xA5A5 = -0.0226): an unwritten output shows as whole tokens or slabs,
     * far above a per-mille of coincidences. */
    size_t elems = kvtc_chunk_bytes(l, n) / kvtc_dtype_size(l->dtype);
    cr_assert(gt_count_poison(l, got, n) * 1000 <= elems, "%s chunk %u: unwritten elements", what, i);
}

static void cross_check(const kvtc_profile *p, uint32_t plan, struct batch *b, uint32_t gemm)
{
    const kvtc_layout *l = kvtc_profile_layout(p);
    /* both nvCOMP modes to encode; our inflate decodes (nvCOMP's, the
     * default, is checked against it below) */
    kvtc_gpu_params prm = {.field_mask = KVTC_GPU_PARAM_FIELD_GEMM | KVTC_GPU_PARAM_FIELD_DEFLATE_ALGO |
                                         KVTC_GPU_PARAM_FIELD_INFLATE,
                           .gemm = gemm,
                           .deflate_algo = plan == 0 ? 1 : 0,
                           .inflate = KVTC_GPU_INFLATE_KVTC};
    tol = gemm == KVTC_GPU_GEMM_BF16 ? 2.0 : 1.3;
    kvtc_gpu_codec *g = NULL;
    cr_assert_eq(kvtc_gpu_codec_create(p, plan, &prm, &g), 0);
    cpu_ref(p, plan, b);
    int32_t *st = calloc(b->n, 4);
    void **rec = calloc(b->n, sizeof *rec);
    gt_gpu_encode(g, l, b->c, b->n, b->gpu, b->gpu_len, st);
    kvtc_decoder *dec = NULL;
    cr_assert_eq(kvtc_decoder_create(p, &dec), 0);
    size_t gsum = 0, csum = 0;
    for (uint32_t i = 0; i < b->n; i++) {
        cr_assert_eq(st[i], 0, "GPU encode status %d chunk %u", st[i], i);
        kvtc_container_info info;
        cr_assert_eq(kvtc_inspect(b->gpu[i], b->gpu_len[i], &info), 0, "CPU rejects GPU chunk %u", i);
        cr_assert_eq(info.n_tokens, b->c[i].n_tokens);
        size_t rb = kvtc_chunk_bytes(l, b->c[i].n_tokens);
        void *out = malloc(rb);
        memset(out, 0xA5, rb);
        cr_assert_eq(kvtc_decode(dec, b->gpu[i], b->gpu_len[i], out, rb, NULL), 0);
        assert_close(l, b->c[i].data, b->cpu_rec[i], out, b->c[i].n_tokens, "GPU enc -> CPU dec", i);
        free(out);
        gsum += b->gpu_len[i];
        csum += b->cpu_len[i];
    }
    cr_log_info("plan %u: GPU containers %zu bytes, CPU (libdeflate 6) %zu bytes", plan, gsum, csum);
    /* CPU containers -> GPU decode. */
    gt_gpu_decode(g, l, b->c, b->n, b->cpu, b->cpu_len, rec, st);
    for (uint32_t i = 0; i < b->n; i++) {
        cr_assert_eq(st[i], 0, "GPU decode of CPU chunk %u: status %d", i, st[i]);
        assert_close(l, b->c[i].data, b->cpu_rec[i], rec[i], b->c[i].n_tokens, "CPU enc -> GPU dec", i);
        free(rec[i]);
    }
    gt_gpu_decode(g, l, b->c, b->n, b->gpu, b->gpu_len, rec, st);
    /* nvCOMP's inflate (still selectable) must give the very same chunks */
    kvtc_gpu_codec *gn = NULL;
    prm.inflate = KVTC_GPU_INFLATE_NVCOMP;
    cr_assert_eq(kvtc_gpu_codec_create(p, plan, &prm, &gn), 0);
    void **rn = calloc(b->n, sizeof *rn);
    int32_t *sn = calloc(b->n, 4);
    gt_gpu_decode(gn, l, b->c, b->n, b->gpu, b->gpu_len, rn, sn);
    for (uint32_t i = 0; i < b->n; i++) {
        cr_assert_eq(st[i], 0, "GPU decode of GPU chunk %u: status %d", i, st[i]);
        assert_close(l, b->c[i].data, b->cpu_rec[i], rec[i], b->c[i].n_tokens, "GPU enc -> GPU dec", i);
        cr_assert_eq(sn[i], 0, "nvCOMP inflate, chunk %u: status %d", i, sn[i]);
        cr_assert(!memcmp(rec[i], rn[i], kvtc_chunk_bytes(l, b->c[i].n_tokens)),
                  "chunk %u: our inflate and nvCOMP's decode differently", i);
        free(rec[i]);
        free(rn[i]);
    }
    free(rn);
    free(sn);
    kvtc_gpu_codec_free(gn);
    kvtc_decoder_free(dec);
    kvtc_gpu_codec_free(g);
    free(st);
    free(rec);
}

static void odd_batch(const kvtc_layout *l, struct batch *b, uint64_t seed)
{
    /* whole chunks, a partial one, one token, all-sink, a long one */
    uint32_t toks[] = {64, 64, 17, 1, 3, 1, 700};
    uint32_t pos[] = {0, 64, 128, 300, 1, 0, 1000};
    b->n = sizeof toks / sizeof toks[0];
    for (uint32_t i = 0; i < b->n; i++)
        b->c[i] = (kvtc_chunk){gt_chunk(l, toks[i], pos[i], seed + i), toks[i], pos[i], 0};
}

Test(gpu_codec, cross_paths_synthetic_layouts)
{
    GPU_OR_SKIP();
    kvtc_layout ls[] = {gt_layout(4, 2, 32, KVTC_DTYPE_BF16, KVTC_ROPE_HALF_SPLIT),
                        gt_layout(3, 1, 16, KVTC_DTYPE_FP16, KVTC_ROPE_INTERLEAVED),
                        gt_layout(2, 3, 6, KVTC_DTYPE_FP32, KVTC_ROPE_NONE)};
    for (size_t li = 0; li < sizeof ls / sizeof ls[0]; li++) {
        kvtc_profile *p = gt_profile(&ls[li], 1024, 1);
        for (uint32_t plan = 0; plan < kvtc_profile_plan_count(p); plan++) {
            static struct batch b;
            memset(&b, 0, sizeof b);
            odd_batch(&ls[li], &b, 1000 + plan);
            cross_check(p, plan, &b, plan == 1 ? KVTC_GPU_GEMM_BF16 : KVTC_GPU_GEMM_FP16);
            batch_free(&b);
        }
        kvtc_profile_free(p);
    }
}

Test(gpu_codec, cross_paths_real_stories260K_kv)
{
    GPU_OR_SKIP();
    const char *path = kvtc_test_shared_path("models/stories260K.bin");
    if (!path)
        cr_skip_test("stories260K.bin not found under KVTC_SHARED");
    kvtc_llama *m = NULL;
    kvtc_llama_state *s = NULL;
    cr_assert_eq(kvtc_llama_load(path, &m), 0);
    cr_assert_eq(kvtc_llama_state_create(m, &s), 0);
    kvtc_layout l;
    kvtc_llama_layout(m, 64, &l);
    uint32_t n = 256;
    int32_t tok[257];
    kvtc_calibrator *cal = NULL;
    cr_assert_eq(kvtc_calibrator_create(&l, NULL, &cal), 0);
    for (uint64_t seed = 1; seed <= 3; seed++) { /* calibrate on three sequences */
        cr_assert_eq(kvtc_llama_sample(s, seed, n + 1, tok), 0);
        float *kv = malloc(kvtc_llama_kv_floats(m, n) * sizeof(float));
        cr_assert_eq(kvtc_llama_export_kv(s, 0, n, kv), 0);
        cr_assert_eq(kvtc_calibrator_add(cal, kv, n, 0), 0);
        free(kv);
    }
    float targets[] = {4, 8, 16};
    kvtc_profile *p = NULL;
    cr_assert_eq(kvtc_calibrator_finish(cal, targets, 3, &p), 0);
    kvtc_calibrator_free(cal);
    cr_assert_eq(kvtc_llama_sample(s, 77, n + 1, tok), 0); /* evaluate on another */
    for (uint32_t plan = 0; plan < 3; plan++) {
        static struct batch b;
        memset(&b, 0, sizeof b);
        uint32_t cuts[] = {0, 64, 128, 200, 255, 256};
        b.n = 5;
        for (uint32_t i = 0; i < b.n; i++) {
            uint32_t t = cuts[i + 1] - cuts[i];
            float *kv = malloc(kvtc_llama_kv_floats(m, t) * sizeof(float));
            cr_assert_eq(kvtc_llama_export_kv(s, cuts[i], t, kv), 0);
            b.c[i] = (kvtc_chunk){kv, t, cuts[i], 0};
        }
        cross_check(p, plan, &b, KVTC_GPU_GEMM_FP16);
        batch_free(&b);
    }
    kvtc_profile_free(p);
    kvtc_llama_state_free(s);
    kvtc_llama_free(m);
}

/* tests/gpu/hf_kv_fixture.py's file: header fields, checked against the
 * file's size before any byte of KV is used (a file is untrusted input). */
struct hf_kv {
    kvtc_layout l;
    uint32_t calib, eval;
    const uint16_t *kv[2]; /* bf16 [L][2][T][H][D]: calibration, evaluation */
    void *file;
};

static int hf_kv_load(const char *path, struct hf_kv *h)
{
    size_t len = 0;
    uint8_t *f = kvtc_test_read_file(path, &len);
    uint32_t u[7]; /* version, layers, kv_heads, head_dim, rope_style, calib, eval */
    float theta;
    if (!f || len < 64 || memcmp(f, "KVTCHFK1", 8)) {
        free(f);
        return -1;
    }
    memcpy(u, f + 8, 20);
    memcpy(&theta, f + 28, 4);
    memcpy(u + 5, f + 32, 8);
    if (u[0] != 1 || !u[1] || u[1] > 256 || !u[2] || u[2] > 64 || !u[3] || u[3] > 512 ||
        u[3] % 2 || u[6] < 256 || u[5] < 16 || u[5] > 65536 || u[6] > 65536) {
        free(f);
        return -1;
    }
    size_t row = (size_t)u[1] * 2 * u[2] * u[3];
    if (len != 64 + 2 * row * ((size_t)u[5] + u[6])) {
        free(f);
        return -1;
    }
    memset(h, 0, sizeof *h);
    h->l = gt_layout(u[1], u[2], u[3], KVTC_DTYPE_BF16, (int)u[4]);
    h->l.rope_theta = theta;
    h->l.rope_factor = 1.0f;
    h->l.chunk_tokens = 256;
    h->calib = u[5];
    h->eval = u[6];
    h->kv[0] = (const uint16_t *)(f + 64);
    h->kv[1] = h->kv[0] + row * u[5];
    h->file = f;
    return 0;
}

/* Tokens [t0, t0 + n) of a [L][2][T][H][D] bf16 cache as one canonical
 * chunk (malloc'd). */
static void *hf_chunk(const struct hf_kv *h, const uint16_t *kv, uint32_t T, uint32_t t0,
                      uint32_t n)
{
    size_t tok = (size_t)h->l.kv_heads * h->l.head_dim;
    uint16_t *c = malloc(kvtc_chunk_bytes(&h->l, n));
    cr_assert(c);
    for (size_t s = 0; s < (size_t)h->l.layers * 2; s++)
        memcpy(c + s * n * tok, kv + (s * T + t0) * tok, n * tok * 2);
    return c;
}

/* Real KV of the Hugging Face model of the CPU codec's issue (SmolLM2-135M:
 * 30 layers x 3 KV heads x 64, half-split RoPE, bf16): calibrated on a
 * Python-tutorial document, checked on a fortunes document. */
Test(gpu_codec, cross_paths_real_smollm2_kv)
{
    GPU_OR_SKIP();
    const char *env = getenv("KVTC_TEST_HF_KV");
    const char *path = env && *env ? env : kvtc_test_build_path("tests/gpu/smollm2-kv.bin");
    struct hf_kv h;
    if (access(path, R_OK) != 0)
        cr_skip_test("%s absent: `make gpu-hf-fixture` writes it (needs the HF harness's "
                     "virtualenv)", path);
    cr_assert_eq(hf_kv_load(path, &h), 0, "%s: not a valid fixture", path);
    kvtc_calibrator *cal = NULL;
    cr_assert_eq(kvtc_calibrator_create(&h.l, NULL, &cal), 0);
    for (uint32_t t0 = 0; t0 < h.calib; t0 += 256) {
        uint32_t n = h.calib - t0 < 256 ? h.calib - t0 : 256;
        void *c = hf_chunk(&h, h.kv[0], h.calib, t0, n);
        cr_assert_eq(kvtc_calibrator_add(cal, c, n, t0), 0);
        free(c);
    }
    float targets[] = {4, 8, 16};
    kvtc_profile *p = NULL;
    cr_assert_eq(kvtc_calibrator_finish(cal, targets, 3, &p), 0);
    kvtc_calibrator_free(cal);
    for (uint32_t plan = 0; plan < kvtc_profile_plan_count(p); plan++) {
        static struct batch b;
        memset(&b, 0, sizeof b);
        uint32_t cuts[] = {0, 64, 128, 200, 255, 256};
        b.n = 5;
        for (uint32_t i = 0; i < b.n; i++) {
            uint32_t t = cuts[i + 1] - cuts[i];
            b.c[i] = (kvtc_chunk){hf_chunk(&h, h.kv[1], h.eval, cuts[i], t), t, cuts[i], 0};
        }
        cross_check(p, plan, &b, plan == 2 ? KVTC_GPU_GEMM_BF16 : KVTC_GPU_GEMM_FP16);
        batch_free(&b);
    }
    kvtc_profile_free(p);
    free(h.file);
}

Test(gpu_codec, thousands_of_chunks_per_batch)
{
    GPU_OR_SKIP();
    kvtc_layout l = gt_layout(2, 2, 16, KVTC_DTYPE_BF16, KVTC_ROPE_HALF_SPLIT);
    kvtc_profile *p = gt_profile(&l, 512, 5);
    static struct batch b;
    memset(&b, 0, sizeof b);
    b.n = 3000;
    uint64_t r = 42;
    for (uint32_t i = 0; i < b.n; i++) {
        r = r * 6364136223846793005ull + 1;
        uint32_t t = 1 + (uint32_t)(r >> 60), pos = (uint32_t)(r >> 40) % 5000;
        b.c[i] = (kvtc_chunk){gt_chunk(&l, t, pos, i), t, pos, i % 97 == 0 ? KVTC_CHUNK_RAW : 0};
    }
    cross_check(p, 2, &b, KVTC_GPU_GEMM_FP16);
    batch_free(&b);
    kvtc_profile_free(p);
}

Test(gpu_codec, raw_containers_are_byte_identical_to_cpu)
{
    GPU_OR_SKIP();
    kvtc_layout l = gt_layout(3, 2, 8, KVTC_DTYPE_BF16, KVTC_ROPE_INTERLEAVED);
    kvtc_profile *p = gt_profile(&l, 256, 9);
    static struct batch b;
    memset(&b, 0, sizeof b);
    b.n = 3;
    uint32_t toks[] = {5, 64, 1};
    for (uint32_t i = 0; i < b.n; i++)
        b.c[i] = (kvtc_chunk){gt_chunk(&l, toks[i], 10 * i, i), toks[i], 10 * i, KVTC_CHUNK_RAW};
    cpu_ref(p, 0, &b);
    kvtc_gpu_codec *g = NULL;
    cr_assert_eq(kvtc_gpu_codec_create(p, 0, NULL, &g), 0);
    int32_t st[3];
    gt_gpu_encode(g, &l, b.c, b.n, b.gpu, b.gpu_len, st);
    for (uint32_t i = 0; i < b.n; i++) {
        cr_assert_eq(st[i], 0);
        cr_assert_eq(b.gpu_len[i], b.cpu_len[i]);
        cr_assert_eq(memcmp(b.gpu[i], b.cpu[i], b.cpu_len[i]), 0, "raw container %u differs", i);
    }
    kvtc_gpu_codec_free(g);
    batch_free(&b);
    kvtc_profile_free(p);
}

/* Also a survey of what nvCOMP writes (block types, matches, code lengths)
 * through the host build of our decoder, for algo 0 and 1. */
ParameterizedTestParameters(gpu_codec, nvcomp_pieces_are_plain_raw_deflate)
{
    static int algo[] = {0, 1};
    return cr_make_param_array(int, algo, 2);
}

ParameterizedTest(int *algo, gpu_codec, nvcomp_pieces_are_plain_raw_deflate)
{
    GPU_OR_SKIP();
    kvtc_layout l = gt_layout(8, 4, 32, KVTC_DTYPE_BF16, KVTC_ROPE_HALF_SPLIT);
    kvtc_profile *p = gt_profile(&l, 512, 3);
    static struct batch b;
    memset(&b, 0, sizeof b);
    b.n = 1;
    b.c[0] = (kvtc_chunk){gt_chunk(&l, 1000, 4096, 8), 1000, 4096, 0};
    kvtc_gpu_codec *g = NULL;
    kvtc_gpu_params prm = {.field_mask = KVTC_GPU_PARAM_FIELD_DEFLATE_ALGO | KVTC_GPU_PARAM_FIELD_INFLATE |
                                         KVTC_GPU_PARAM_FIELD_DEFLATE,
                           .deflate_algo = *algo,
                           .inflate = KVTC_GPU_INFLATE_KVTC,
                           .deflate = KVTC_GPU_DEFLATE_NVCOMP};
    cr_assert_eq(kvtc_gpu_codec_create(p, 0, &prm, &g), 0);
    static struct kvtc__inflate_ws ws;
    struct kvtc__inflate_stats tot = {0, 0, 0, 0, 0}, is = tot;
    uint8_t *mine = malloc(KVTC_PIECE_MAX), *pad = malloc(2 * KVTC_PIECE_MAX);
    int32_t st[1];
    gt_gpu_encode(g, &l, b.c, 1, b.gpu, b.gpu_len, st);
    cr_assert_eq(st[0], 0);
    kvtc_container_info info;
    cr_assert_eq(kvtc_inspect(b.gpu[0], b.gpu_len[0], &info), 0);
    cr_assert_gt(info.pieces, 1, "want several pieces, got %u", info.pieces);
    const uint8_t *h = b.gpu[0];
    uint64_t raw = 0, sym = 0;
    memcpy(&raw, h + 88, 8);
    memcpy(&sym, h + 112, 8);
    const uint8_t *table = h + 152 + raw, *payload = table + 4 * info.pieces;
    uint8_t *out = malloc(KVTC_PIECE_MAX);
    size_t off = 0;
    for (uint32_t i = 0; i < info.pieces; i++) {
        uint32_t c;
        memcpy(&c, table + 4 * i, 4);
        z_stream z;
        memset(&z, 0, sizeof z);
        cr_assert_eq(inflateInit2(&z, -15), Z_OK);
        z.next_in = (Bytef *)(payload + off);
        z.avail_in = c;
        z.next_out = out;
        z.avail_out = KVTC_PIECE_MAX;
        cr_assert_eq(inflate(&z, Z_FINISH), Z_STREAM_END, "zlib rejects GPU piece %u", i);
        size_t want = i + 1 < info.pieces ? KVTC_PIECE_MAX : sym - (size_t)i * KVTC_PIECE_MAX;
        cr_assert_eq(z.total_out, want);
        inflateEnd(&z);
        cr_assert_lt(c, 2 * KVTC_PIECE_MAX);
        memcpy(pad, payload + off, c);
        cr_assert_eq(kvtc__inflate(pad, c, mine, (uint32_t)want, &ws, &is), 0, "piece %u", i);
        cr_assert(!memcmp(mine, out, want), "piece %u: our decoder differs from zlib", i);
        tot.stored += is.stored;
        tot.fixed += is.fixed;
        tot.dynamic += is.dynamic;
        tot.matches += is.matches;
        tot.max_code_len = is.max_code_len > tot.max_code_len ? is.max_code_len : tot.max_code_len;
        off += c;
    }
    cr_log_info("nvCOMP algo %d, %u pieces (%zu -> %zu bytes): %u stored, %u fixed, %u dynamic "
                "blocks, %u matches, codes up to %u bits",
                *algo, info.pieces, (size_t)sym, off, tot.stored, tot.fixed, tot.dynamic,
                tot.matches, tot.max_code_len);
    free(mine);
    free(pad);
    free(out);
    kvtc_gpu_codec_free(g);
    batch_free(&b);
    kvtc_profile_free(p);
}

static void flip(uint8_t *p, size_t at) { p[at] ^= 0x10; }

Test(gpu_codec, corrupt_containers_rejected_others_decoded)
{
    GPU_OR_SKIP();
    kvtc_layout l = gt_layout(4, 2, 16, KVTC_DTYPE_BF16, KVTC_ROPE_HALF_SPLIT);
    kvtc_profile *p = gt_profile(&l, 512, 4);
    kvtc_gpu_codec *g = NULL, *g2 = NULL;
    cr_assert_eq(kvtc_gpu_codec_create(p, 1, NULL, &g), 0);
    cr_assert_eq(kvtc_gpu_codec_create(p, 2, NULL, &g2), 0);
    static struct batch b;
    memset(&b, 0, sizeof b);
    b.n = 12;
    for (uint32_t i = 0; i < b.n; i++)
        b.c[i] = (kvtc_chunk){gt_chunk(&l, 300, 256 * i, i), 300, 256 * i, 0};
    cpu_ref(p, 1, &b);
    int32_t st[12];
    gt_gpu_encode(g, &l, b.c, b.n, b.gpu, b.gpu_len, st);
    /* damage chunks 1..10 in different ways, leave 0 and 11 sound */
    flip(b.gpu[1], 30);                                   /* header field */
    flip(b.gpu[2], 4);                                    /* version */
    flip(b.gpu[3], 152 + 2);                              /* table (no sinks at pos 768) */
    flip(b.gpu[4], b.gpu_len[4] - 7);                     /* payload */
    b.gpu_len[5] -= 1;                                    /* truncated */
    b.gpu[6] = realloc(b.gpu[6], b.gpu_len[6] + 1);
    b.gpu[6][b.gpu_len[6]++] = 0;                         /* trailing byte */
    flip(b.gpu[7], b.gpu_len[7] - 8 * 2);                 /* payload, near the end */
    b.c[8].n_tokens = 299;                                /* not what the store expects */
    free(b.gpu[9]);                                       /* a zstd container */
    {
        kvtc_encoder *enc = NULL;
        cr_assert_eq(kvtc_encoder_create(p, 1, KVTC_STAGE_ZSTD, 0, &enc), 0);
        size_t cap = kvtc_encode_bound(enc, 300);
        b.gpu[9] = malloc(cap);
        cr_assert_eq(kvtc_encode(enc, &b.c[9], b.gpu[9], cap, &b.gpu_len[9]), 0);
        kvtc_encoder_free(enc);
    }
    free(b.gpu[10]);                                      /* another plan */
    b.gpu[10] = b.cpu[10];
    b.gpu_len[10] = b.cpu_len[10];
    b.cpu[10] = NULL;
    void *rec[12];
    gt_gpu_decode(g2, &l, b.c, 11, b.gpu + 0, b.gpu_len, rec, st); /* plan 2 ctx: all EPROFILE */
    for (uint32_t i = 0; i < 11; i++) {
        cr_assert_neq(st[i], 0, "chunk %u accepted by a context of another plan", i);
        free(rec[i]);
    }
    b.c[8].n_tokens = 299;
    /* chunk 10 is a plan-1 CPU container: sound for g; make it a plan-2 one */
    {
        kvtc_encoder *enc = NULL;
        cr_assert_eq(kvtc_encoder_create(p, 2, KVTC_STAGE_DEFLATE, 0, &enc), 0);
        size_t cap = kvtc_encode_bound(enc, 300);
        free(b.gpu[10]);
        b.gpu[10] = malloc(cap);
        cr_assert_eq(kvtc_encode(enc, &b.c[10], b.gpu[10], cap, &b.gpu_len[10]), 0);
        kvtc_encoder_free(enc);
    }
    gt_gpu_decode(g, &l, b.c, b.n, b.gpu, b.gpu_len, rec, st);
    int want[12] = {0, KVTC_ECORRUPT, KVTC_EVERSION, KVTC_ECORRUPT, KVTC_ECORRUPT,
                    KVTC_ECORRUPT, KVTC_ECORRUPT, KVTC_ECORRUPT, KVTC_ECORRUPT, KVTC_ENOTSUP,
                    KVTC_EPROFILE, 0};
    for (uint32_t i = 0; i < b.n; i++) {
        cr_assert_eq(st[i], want[i], "chunk %u: status %d, want %d", i, st[i], want[i]);
        if (!want[i])
        {
            tol = 1.3;
            assert_close(&l, b.c[i].data, b.cpu_rec[i], rec[i], 300, "sound neighbour", i);
        }
        free(rec[i]);
    }
    b.c[8].n_tokens = 300;
    kvtc_gpu_codec_free(g);
    kvtc_gpu_codec_free(g2);
    batch_free(&b);
    kvtc_profile_free(p);
}

Test(gpu_codec, nonfinite_kv_rejected_per_chunk)
{
    GPU_OR_SKIP();
    kvtc_layout l = gt_layout(2, 2, 16, KVTC_DTYPE_BF16, KVTC_ROPE_HALF_SPLIT);
    kvtc_profile *p = gt_profile(&l, 256, 6);
    kvtc_gpu_codec *g = NULL;
    cr_assert_eq(kvtc_gpu_codec_create(p, 0, NULL, &g), 0);
    static struct batch b;
    memset(&b, 0, sizeof b);
    b.n = 3;
    for (uint32_t i = 0; i < 3; i++)
        b.c[i] = (kvtc_chunk){gt_chunk(&l, 40, 100 * i + 10, i), 40, 100 * i + 10, 0};
    uint16_t *bad = (uint16_t *)b.c[1].data;
    bad[kvtc_chunk_bytes(&l, 40) / 2 - 3] = 0x7fc0; /* a NaN in the last value slab */
    int32_t st[3];
    gt_gpu_encode(g, &l, b.c, 3, b.gpu, b.gpu_len, st);
    cr_assert_eq(st[0], 0);
    cr_assert_eq(st[1], KVTC_EINVAL);
    cr_assert_eq(b.gpu_len[1], 0);
    cr_assert_eq(st[2], 0);
    cr_assert_eq(kvtc_inspect(b.gpu[2], b.gpu_len[2], NULL), 0);
    kvtc_gpu_codec_free(g);
    batch_free(&b);
    kvtc_profile_free(p);
}

Test(gpu_codec, cross_paths_weighted_profile)
{
    GPU_OR_SKIP();
    /* per-(layer, K|V) weights fold into the GPU's bases and means */
    kvtc_layout l = gt_layout(4, 2, 32, KVTC_DTYPE_BF16, KVTC_ROPE_HALF_SPLIT);
    float w[8] = {2.0f, 0.5f, 1.0f, 3.0f, 0.25f, 1.5f, 1.0f, 0.8f};
    kvtc_calibrator *cal = gt_calibrator(&l, 1024, 2, w);
    float targets[] = {4, 16};
    kvtc_profile *p = NULL;
    cr_assert_eq(kvtc_calibrator_finish(cal, targets, 2, &p), 0);
    kvtc_calibrator_free(cal);
    for (uint32_t plan = 0; plan < 2; plan++) {
        static struct batch b;
        memset(&b, 0, sizeof b);
        odd_batch(&l, &b, 50 + plan);
        cross_check(p, plan, &b, KVTC_GPU_GEMM_FP16);
        batch_free(&b);
    }
    kvtc_profile_free(p);
}

/* CPU codec error of a profile on fresh chunks (relative squared error). */
static double profile_error(const kvtc_profile *p, const kvtc_layout *l, uint32_t plan)
{
    static struct batch b;
    memset(&b, 0, sizeof b);
    b.n = 6;
    for (uint32_t i = 0; i < b.n; i++)
        b.c[i] = (kvtc_chunk){gt_chunk(l, 64, 5000 + 64 * i, 900 + i), 64, 5000 + 64 * i, 0};
    cpu_ref(p, plan, &b);
    double num = 0, den = 0;
    for (uint32_t i = 0; i < b.n; i++) {
        num += gt_mse(l, b.c[i].data, b.cpu_rec[i], 64);
        den += gt_energy(l, b.c[i].data, 64);
    }
    batch_free(&b);
    return num / den;
}

Test(gpu_codec, gpu_calibration_matches_cpu)
{
    GPU_OR_SKIP();
    /* full eigendecomposition (narrow rows) and subspace iteration (wide
     * rows, few components) against LAPACK on the same rows */
    kvtc_layout ls[] = {gt_layout(4, 2, 32, KVTC_DTYPE_BF16, KVTC_ROPE_HALF_SPLIT),
                        gt_layout(8, 8, 128, KVTC_DTYPE_BF16, KVTC_ROPE_HALF_SPLIT)};
    uint32_t maxc[] = {0, 256};
    for (int li = 0; li < 2; li++) {
        float targets[] = {4, 16};
        kvtc_profile *pc = NULL, *pg = NULL;
        for (int gpu = 0; gpu < 2; gpu++) {
            kvtc_calibrator *cal = NULL;
            kvtc_calib_params cp = {.max_components = maxc[li], .seed = 3};
            cr_assert_eq(kvtc_calibrator_create(&ls[li], &cp, &cal), 0);
            for (uint32_t t = 0; t < 1024; t += 64) {
                void *c = gt_chunk(&ls[li], 64, 100 + t, 7 + t);
                cr_assert_eq(kvtc_calibrator_add(cal, c, 64, 100 + t), 0);
                free(c);
            }
            cr_assert_eq(gpu ? kvtc_gpu_calibrator_fit(cal, 0) : kvtc_calibrator_fit(cal), 0);
            for (int i = 0; i < 2; i++)
                cr_assert_eq(kvtc_calibrator_plan(cal, targets[i], NULL), 0);
            cr_assert_eq(kvtc_calibrator_profile(cal, gpu ? &pg : &pc), 0);
            kvtc_calibrator_free(cal);
        }
        for (uint32_t plan = 0; plan < 2; plan++) {
            double ec = profile_error(pc, &ls[li], plan), eg = profile_error(pg, &ls[li], plan);
            cr_log_info("layout %d plan %u: rel. error CPU-calibrated %.4g, GPU-calibrated %.4g",
                        li, plan, ec, eg);
            cr_assert(eg <= 1.15 * ec + 1e-7, "GPU calibration worse: %.4g vs %.4g", eg, ec);
        }
        kvtc_profile_free(pc);
        kvtc_profile_free(pg);
    }
}
