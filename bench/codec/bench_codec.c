/* kvtc-bench-codec: CPU encode and decode throughput of the KVTC codec, in
 * MB/s of raw KV (bf16 chunks), next to the BLAS sgemm rate of the same
 * projection shapes measured in the same run.
 *
 *   kvtc-bench-codec [--layouts a,b,..] [--runs N] [--threads N] [--json PATH]
 *
 * Timing: by default BLAS runs on one thread and times are the main
 * thread's CPU time (CLOCK_THREAD_CPUTIME_ID), i.e. MB/s per core, which
 * other jobs on a shared machine do not distort; wall-clock MB/s are
 * reported next to them. The codec is single-threaded per context; a
 * server scales it with one context per core. sgemm is timed on the shapes
 * the codec runs: rows [T x D] times the profile's kept components (the
 * codec projects onto all of them, whatever the plan codes).
 *
 * Layouts: stories260k (5x4x8), smollm2 (30x3x64), llama8b-slice (8 of
 * Llama 3.1 8B's 32 layers: 8x8x128). Plans 4x, 16x, 64x; DEFLATE stage at
 * its default level; 256-token chunks that hold no sink tokens (first_pos
 * >= 4), as almost every chunk of a long prompt. Each figure is the median
 * of --runs passes over the same chunks. Data: for stories260k, real KV from
 * the stories260K checkpoint (--model, default $KVTC_SHARED or ../shared
 * models/stories260K.bin; synthetic if absent); for the larger layouts,
 * synthetic rows with a decaying (power-law) spectrum, see bc.h. Throughput
 * depends on the data only through the entropy stage. */
#include <cblas.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "bc.h"
#include "kvtc_codec.h"
#include "../../codec/internal.h" /* the profile's kept components */

#define N_PLANS 3
static const float k_targets[N_PLANS] = { 4.0f, 16.0f, 64.0f };
#define CHUNK_TOKENS 256
#define MAX_RUNS 64

struct spec {
    const char *name;
    uint32_t layers, kv_heads, head_dim, rope_style;
    float theta;
    uint32_t rank;       /* latent factors of the synthetic source */
    uint32_t cal_chunks; /* calibration chunks of CHUNK_TOKENS */
    uint32_t max_comp;   /* calibrator's component cap (0: all) */
    uint32_t bench_chunks;
};

static const struct spec k_specs[] = {
    { "stories260k", 5, 4, 8, KVTC_ROPE_INTERLEAVED, 10000.0f, 64, 16, 0, 64 },
    { "smollm2", 30, 3, 64, KVTC_ROPE_HALF_SPLIT, 100000.0f, 512, 8, 1024, 4 },
    { "llama8b-slice", 8, 8, 128, KVTC_ROPE_HALF_SPLIT, 500000.0f, 512, 8, 1024, 3 },
};
#define N_SPECS (sizeof k_specs / sizeof k_specs[0])

struct result {
    const char *layout, *data;
    uint32_t width;
    float target, achieved;
    uint32_t kc, vc;               /* components the plan codes */
    uint32_t pk, pv;               /* components the codec projects onto */
    double enc_wall_s, dec_wall_s; /* median wall seconds per pass */
    double raw_mb;                 /* per pass */
    double enc_s, dec_s;           /* median seconds per pass */
    double sg_enc_s, sg_dec_s;     /* median sgemm seconds for the same pass */
    double flops;                  /* projection flops per pass (one way) */
    double rel_err;                /* ||x - x'||^2 / ||x||^2 over the pass */
    double cal_s;
};

static double clock_s(clockid_t id)
{
    struct timespec ts;
    clock_gettime(id, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static double now(void)
{
    return clock_s(CLOCK_MONOTONIC);
}

/* With one BLAS thread every cycle of the work is this thread's. */
static int g_threads = 1;
static double cpu_now(void)
{
    return g_threads == 1 ? clock_s(CLOCK_THREAD_CPUTIME_ID) : now();
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static double median(double *v, int n)
{
    qsort(v, (size_t)n, sizeof *v, cmp_double);
    return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

/* Median time of the projection a codec pass performs: per chunk, rows
 * [T x D] times basis [D x k] for keys and values (encode), or the reverse
 * [T x k] x [k x D] (decode). Operands are filled once; BLAS cost does not
 * depend on their values. */
static int time_sgemm(uint32_t T, uint32_t D, uint32_t kc, uint32_t vc,
                      uint32_t chunks, int runs, double *enc_s, double *dec_s)
{
    uint32_t k = kc > vc ? kc : vc;
    float *a = malloc((size_t)T * D * sizeof(float));
    float *b = malloc((size_t)D * (k ? k : 1) * sizeof(float));
    float *c = malloc((size_t)T * (D > k ? D : k) * sizeof(float));
    double te[MAX_RUNS], td[MAX_RUNS];
    if (!a || !b || !c) {
        free(a);
        free(b);
        free(c);
        return KVTC_ENOMEM;
    }
    for (size_t i = 0; i < (size_t)T * D; i++)
        a[i] = (float)((i * 2654435761u) % 1000) * 1e-3f - 0.5f;
    for (size_t i = 0; i < (size_t)D * k; i++)
        b[i] = (float)((i * 40503u) % 1000) * 1e-3f - 0.5f;
    const uint32_t comps[2] = { kc, vc };
    for (int r = -1; r < runs; r++) { /* r = -1 warms up */
        double t0 = cpu_now();
        for (uint32_t ch = 0; ch < chunks; ch++)
            for (int s = 0; s < 2; s++)
                if (comps[s])
                    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)T,
                                (int)comps[s], (int)D, 1.0f, a, (int)D, b,
                                (int)comps[s], 0.0f, c, (int)comps[s]);
        double t1 = cpu_now();
        for (uint32_t ch = 0; ch < chunks; ch++)
            for (int s = 0; s < 2; s++)
                if (comps[s])
                    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)T,
                                (int)D, (int)comps[s], 1.0f, a, (int)comps[s], b,
                                (int)D, 0.0f, c, (int)D);
        double t2 = cpu_now();
        if (r >= 0) {
            te[r] = t1 - t0;
            td[r] = t2 - t1;
        }
    }
    *enc_s = median(te, runs);
    *dec_s = median(td, runs);
    free(a);
    free(b);
    free(c);
    return 0;
}

static double sq_err(uint32_t dtype, const void *x, const void *y, size_t n,
                     double *norm)
{
    float *fx = malloc(n * sizeof(float)), *fy = malloc(n * sizeof(float));
    double e = 0, s = 0;
    if (fx && fy && kvtc_to_float(dtype, x, fx, n) == 0 &&
        kvtc_to_float(dtype, y, fy, n) == 0) {
        for (size_t i = 0; i < n; i++) {
            double d = (double)fx[i] - fy[i];
            e += d * d;
            s += (double)fx[i] * fx[i];
        }
    }
    free(fx);
    free(fy);
    *norm += s;
    return e;
}

static const char *g_model;

static int bench_layout(const struct spec *sp, int runs, struct result *res,
                        int *n_res)
{
    kvtc_layout l = { 0 };
    l.layers = sp->layers;
    l.kv_heads = sp->kv_heads;
    l.head_dim = sp->head_dim;
    l.dtype = KVTC_DTYPE_BF16;
    l.chunk_tokens = CHUNK_TOKENS;
    l.rope_style = sp->rope_style;
    l.rope_theta = sp->theta;
    l.rope_factor = 1.0f;
    const uint32_t T = CHUNK_TOKENS, nb = sp->bench_chunks;
    bc_source *src = NULL;
    kvtc_calibrator *cal = NULL;
    kvtc_profile *prof = NULL;
    kvtc_decoder *dec = NULL;
    uint8_t *chunks = NULL, *out = NULL, *cont = NULL;
    size_t *clen = NULL;
    int rc;
    const char *data = "synthetic";
    if (!strcmp(sp->name, "stories260k") && g_model) {
        rc = bc_source_create_llama(g_model, KVTC_DTYPE_BF16, CHUNK_TOKENS, &l, &src);
        data = "stories260K KV";
    } else {
        rc = bc_source_create(&l, sp->rank, &src);
    }
    if (rc < 0)
        return rc;
    const size_t raw = kvtc_chunk_bytes(&l, T);
    /* Chunks start past the sinks; a real model's context bounds them. */
    const int bounded = bc_source_max_pos(src) != UINT32_MAX;

    /* Calibrate on chunks at positions the benchmark chunks do not use. */
    kvtc_calib_params cp = { .max_components = sp->max_comp, .seed = 1 };
    rc = kvtc_calibrator_create(&l, &cp, &cal);
    if (rc < 0)
        goto cleanup;
    chunks = malloc(raw * (nb > sp->cal_chunks ? nb : sp->cal_chunks));
    out = malloc(raw);
    clen = calloc(nb, sizeof *clen);
    rc = KVTC_ENOMEM;
    if (!chunks || !out || !clen)
        goto cleanup;
    /* Calibration is set-up, not measured: give it every core. */
    openblas_set_num_threads((int)sysconf(_SC_NPROCESSORS_ONLN));
    double t0 = now();
    for (uint32_t c = 0; c < sp->cal_chunks; c++) {
        uint32_t pos = bounded ? (c % 2) * T : c * T;
        if ((rc = bc_source_chunk(src, T, pos, 1000 + c, chunks)) < 0 ||
            (rc = kvtc_calibrator_add(cal, chunks, T, pos)) < 0)
            goto cleanup;
    }
    rc = kvtc_calibrator_finish(cal, k_targets, N_PLANS, &prof);
    if (rc < 0)
        goto cleanup;
    double cal_s = now() - t0;
    openblas_set_num_threads(g_threads);
    fprintf(stderr, "%s (%s): calibrated in %.1f s (%u rows, width %zu)\n", sp->name,
            data, cal_s, sp->cal_chunks * T, kvtc_row_width(&l));
    if ((rc = kvtc_decoder_create(prof, &dec)) < 0)
        goto cleanup;
#define POS(c) (bounded ? T : 4096 + (c) * T)
    for (uint32_t c = 0; c < nb; c++)
        if ((rc = bc_source_chunk(src, T, POS(c), 5000 + c, chunks + c * raw)) < 0)
            goto cleanup;

    for (uint32_t p = 0; p < kvtc_profile_plan_count(prof); p++) {
        kvtc_plan_info pi;
        kvtc_encoder *enc = NULL;
        if ((rc = kvtc_profile_plan_info(prof, p, &pi)) < 0 ||
            (rc = kvtc_encoder_create(prof, p, KVTC_STAGE_DEFLATE, 0, &enc)) < 0)
            goto cleanup;
        size_t bound = kvtc_encode_bound(enc, T);
        free(cont);
        cont = malloc(bound * nb);
        if (!cont) {
            kvtc_encoder_free(enc);
            rc = KVTC_ENOMEM;
            goto cleanup;
        }
        double te[MAX_RUNS], td[MAX_RUNS], we[MAX_RUNS], wd[MAX_RUNS], err = 0, norm = 0;
        size_t total = 0;
        for (int r = -1; r < runs && rc == 0; r++) { /* r = -1 warms up */
            double a = cpu_now(), wa = now();
            for (uint32_t c = 0; c < nb && rc == 0; c++) {
                kvtc_chunk ch = { chunks + c * raw, T, POS(c), 0 };
                rc = kvtc_encode(enc, &ch, cont + c * bound, bound, &clen[c]);
            }
            double b = cpu_now(), wb = now();
            for (uint32_t c = 0; c < nb && rc == 0; c++) {
                rc = kvtc_decode(dec, cont + c * bound, clen[c], out, raw, NULL);
                if (r == -1 && rc == 0)
                    err += sq_err(l.dtype, chunks + c * raw, out, raw / 2, &norm);
            }
            double e = cpu_now(), we_ = now();
            if (r >= 0) {
                te[r] = b - a;
                td[r] = e - b;
                we[r] = wb - wa;
                wd[r] = we_ - wb;
            }
        }
        kvtc_encoder_free(enc);
        if (rc < 0)
            goto cleanup;
        for (uint32_t c = 0; c < nb; c++)
            total += clen[c];
        struct result *R = &res[(*n_res)++];
        R->layout = sp->name;
        R->data = data;
        R->width = (uint32_t)kvtc_row_width(&l);
        R->target = pi.target_ratio;
        R->achieved = (float)((double)raw * nb / (double)total);
        R->kc = pi.key_components;
        R->vc = pi.value_components;
        R->pk = prof->ncomp[0];
        R->pv = prof->ncomp[1];
        R->enc_wall_s = median(we, runs);
        R->dec_wall_s = median(wd, runs);
        R->raw_mb = (double)raw * nb / 1e6;
        R->enc_s = median(te, runs);
        R->dec_s = median(td, runs);
        R->flops = 2.0 * T * R->width * (double)(R->pk + R->pv) * nb;
        R->rel_err = norm > 0 ? err / norm : 0;
        R->cal_s = cal_s;
        rc = time_sgemm(T, R->width, R->pk, R->pv, nb, runs, &R->sg_enc_s, &R->sg_dec_s);
        if (rc < 0)
            goto cleanup;
        fprintf(stderr, "%s %gx: enc %.1f MB/s, dec %.1f MB/s\n", sp->name,
                R->target, R->raw_mb / R->enc_s, R->raw_mb / R->dec_s);
    }
cleanup:
    free(chunks);
    free(out);
    free(cont);
    free(clen);
    kvtc_decoder_free(dec);
    kvtc_profile_free(prof);
    kvtc_calibrator_free(cal);
    bc_source_free(src);
    return rc;
}

static void cpu_model(char *buf, size_t cap)
{
    snprintf(buf, cap, "unknown");
    FILE *f = fopen("/proc/cpuinfo", "r");
    if (!f)
        return;
    char line[512];
    while (fgets(line, sizeof line, f)) {
        char *colon = strchr(line, ':');
        if (strncmp(line, "model name", 10) == 0 && colon) {
            snprintf(buf, cap, "%s", colon + 2);
            buf[strcspn(buf, "\n\"")] = 0;
            break;
        }
    }
    fclose(f);
}

static int write_json(const char *path, const struct result *res, int n, int runs)
{
    FILE *f = fopen(path, "w");
    if (!f) {
        perror(path);
        return KVTC_EIO;
    }
    char cpu[256];
    cpu_model(cpu, sizeof cpu);
    time_t t = time(NULL);
    char date[32];
    strftime(date, sizeof date, "%Y-%m-%dT%H:%M:%SZ", gmtime(&t));
    fprintf(f, "{\n  \"benchmark\": \"codec-cpu\",\n  \"date\": \"%s\",\n"
               "  \"cpu\": \"%s\",\n  \"online_cpus\": %ld,\n"
               "  \"blas_threads\": %d,\n  \"runs\": %d,\n  \"chunk_tokens\": %d,\n"
               "  \"timing\": \"%s\",\n"
               "  \"dtype\": \"bf16\",\n  \"stage\": \"deflate\",\n"
               "  \"synthetic\": \"mean + power-law (k^-0.9) latent factors "
               "+ white noise (~5%% of energy), keys RoPE-rotated; not real model KV\",\n"
               "  \"mb\": \"1e6 bytes of raw bf16 KV\",\n  \"results\": [\n",
            date, cpu, sysconf(_SC_NPROCESSORS_ONLN), openblas_get_num_threads(),
            runs, CHUNK_TOKENS,
            g_threads == 1 ? "thread CPU time, one BLAS thread (MB/s per core); *_wall_* wall clock"
                           : "wall clock");
    for (int i = 0; i < n; i++) {
        const struct result *R = &res[i];
        fprintf(f,
                "    {\"layout\": \"%s\", \"data\": \"%s\", \"row_width\": %u, \"target\": %g, "
                "\"achieved_ratio\": %.2f, \"key_components\": %u, "
                "\"value_components\": %u, \"projected_key_components\": %u, "
                "\"projected_value_components\": %u, \"raw_mb_per_pass\": %.3f, "
                "\"encode_wall_mb_s\": %.2f, \"decode_wall_mb_s\": %.2f, "
                "\"encode_mb_s\": %.2f, \"decode_mb_s\": %.2f, "
                "\"sgemm_encode_gflop_s\": %.2f, \"sgemm_decode_gflop_s\": %.2f, "
                "\"encode_over_sgemm\": %.2f, \"decode_over_sgemm\": %.2f, "
                "\"rel_sq_error\": %.3g, \"calibration_s\": %.2f}%s\n",
                R->layout, R->data, R->width, R->target, R->achieved, R->kc, R->vc, R->pk,
                R->pv, R->raw_mb, R->raw_mb / R->enc_wall_s, R->raw_mb / R->dec_wall_s,
                R->raw_mb / R->enc_s, R->raw_mb / R->dec_s,
                R->sg_enc_s > 0 ? R->flops / R->sg_enc_s / 1e9 : 0,
                R->sg_dec_s > 0 ? R->flops / R->sg_dec_s / 1e9 : 0,
                R->sg_enc_s > 0 ? R->enc_s / R->sg_enc_s : 0,
                R->sg_dec_s > 0 ? R->dec_s / R->sg_dec_s : 0, R->rel_err, R->cal_s,
                i + 1 < n ? "," : "");
    }
    fprintf(f, "  ]\n}\n");
    return fclose(f) == 0 ? 0 : KVTC_EIO;
}

static void print_table(const struct result *res, int n)
{
    printf("%-13s %5s %6s %9s %9s %8s %8s %8s %8s %7s %7s %7s %7s %8s\n", "layout",
           "plan", "ratio", "coded", "projected", "enc", "dec", "enc", "dec", "sgemm",
           "sgemm", "enc/", "dec/", "rel");
    printf("%-13s %5s %6s %9s %9s %8s %8s %8s %8s %7s %7s %7s %7s %8s\n", "", "",
           "", "K+V", "K+V", "MB/s", "MB/s", "wall", "wall", "GF/s", "GF/s", "sgemm",
           "sgemm", "sq err");
    for (int i = 0; i < n; i++) {
        const struct result *R = &res[i];
        char coded[32], proj[32], plan[16];
        snprintf(coded, sizeof coded, "%u+%u", R->kc, R->vc);
        snprintf(proj, sizeof proj, "%u+%u", R->pk, R->pv);
        snprintf(plan, sizeof plan, "%gx", R->target);
        printf("%-13s %5s %5.1fx %9s %9s %8.1f %8.1f %8.1f %8.1f %7.1f %7.1f %7.1f %7.1f %8.2g\n",
               R->layout, plan, R->achieved, coded, proj, R->raw_mb / R->enc_s,
               R->raw_mb / R->dec_s, R->raw_mb / R->enc_wall_s, R->raw_mb / R->dec_wall_s,
               R->sg_enc_s > 0 ? R->flops / R->sg_enc_s / 1e9 : 0,
               R->sg_dec_s > 0 ? R->flops / R->sg_dec_s / 1e9 : 0,
               R->sg_enc_s > 0 ? R->enc_s / R->sg_enc_s : 0,
               R->sg_dec_s > 0 ? R->dec_s / R->sg_dec_s : 0, R->rel_err);
    }
}

int main(int argc, char **argv)
{
    const char *layouts = "stories260k,smollm2,llama8b-slice";
    const char *json = "bench/results/codec-cpu.json";
    int runs = 5;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--layouts") && i + 1 < argc)
            layouts = argv[++i];
        else if (!strcmp(argv[i], "--runs") && i + 1 < argc)
            runs = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--threads") && i + 1 < argc)
            g_threads = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--model") && i + 1 < argc)
            g_model = argv[++i];
        else if (!strcmp(argv[i], "--json") && i + 1 < argc)
            json = argv[++i];
        else {
            fprintf(stderr, "usage: %s [--layouts stories260k,smollm2,llama8b-slice]"
                            " [--runs N] [--threads N] [--model stories260K.bin]"
                            " [--json PATH]\n",
                    argv[0]);
            return 2;
        }
    }
    static char model_path[4096];
    if (!g_model) {
        const char *shared = getenv("KVTC_SHARED");
        snprintf(model_path, sizeof model_path, "%s/models/stories260K.bin",
                 shared && *shared ? shared : "../shared");
        if (access(model_path, R_OK) == 0)
            g_model = model_path;
        else
            fprintf(stderr, "%s absent: stories260k uses synthetic rows\n", model_path);
    }
    if (g_threads < 1 || g_threads > 256) {
        fprintf(stderr, "--threads must be 1..256\n");
        return 2;
    }
    openblas_set_num_threads(g_threads);
    if (runs < 1 || runs > MAX_RUNS) {
        fprintf(stderr, "--runs must be 1..%d\n", MAX_RUNS);
        return 2;
    }
    struct result res[N_SPECS * KVTC_MAX_PLANS];
    int n = 0;
    for (size_t s = 0; s < N_SPECS; s++) {
        /* Match whole names in the comma-separated list. */
        const char *hit = strstr(layouts, k_specs[s].name);
        size_t len = strlen(k_specs[s].name);
        if (!hit || (hit != layouts && hit[-1] != ',') || (hit[len] && hit[len] != ','))
            continue;
        int rc = bench_layout(&k_specs[s], runs, res, &n);
        if (rc < 0) {
            fprintf(stderr, "%s: %s\n", k_specs[s].name, kvtc_strerror(rc));
            return 1;
        }
    }
    print_table(res, n);
    if (write_json(json, res, n, runs) < 0)
        return 1;
    printf("wrote %s\n", json);
    return 0;
}
