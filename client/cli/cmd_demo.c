/* kvtc demo: the main job end to end on the CPU. A real model (llama2.c
 * checkpoint) fills its KV cache with a conversation; the cache goes into
 * kvtcd compressed with KVTC, comes back, is restored into a fresh cache,
 * and generation continues from it. Printed: the ratio, the agreement of
 * the continuation with the one from the uncompressed cache, and the
 * put/get throughput. */
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "demo_daemon.h"
#include "demo_model.h"
#include "demo_store.h"
#include "store.h"

#define DEFAULT_MODEL "../shared/models/stories260K.bin"
#define MAX_TARGETS 3

struct demo_opts {
    const char *model, *server;
    float ratio;
    uint32_t tokens, cont, calib, chunk, reps;
    uint64_t seed;
};

/* Everything one run holds; freed by demo_free. */
struct demo {
    struct demo_opts o;
    int json;
    struct kvtc_demo_model dm;
    struct kvtc_demo_daemon d;
    kvtc_conn *conn;
    kvtc_profile *prof;
    kvtc_layout lay;
    struct kvtc_demo_ref ref;
    size_t chunk_bytes, cont_cap;
    int daemon_compress; /* the daemon took the profile (protocol 1.2) */
    kvtc_key *keys_raw, *keys_kvtc;
    void **raw, **back, **cont, **cont_back, **dec, **dback;
    size_t *len_raw, *len_cont, *len_cont_back;
    struct kvtc_demo_got *got;
    float *kv_restored;
    int32_t *gen;
};

/* What the run measured, for the summary and the JSON line. */
struct demo_result {
    const char *mode;
    double ratio, top1, top1_bf16, ppl_ref, ppl_kvtc, ppl_bf16;
    double put_MBps, get_MBps, get_kvtc_MBps, put_raw_MBps, get_raw_MBps;
    double bpt_raw, bpt_kvtc, calib_s;
    uint32_t same_prefix;
    int identical; /* daemon's and client's decodes are the same bytes;
                      -1: not checked (client-compress has only the
                      client's) */
    int agree;     /* ... or differ by far less than the codec's error (a
                      daemon decoding on its GPU: fp16 projection) */
    double decode_diff; /* ||daemon - client||^2 / ||client - raw||^2 */
};

static void progress(const struct demo *x, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
static void progress(const struct demo *x, const char *fmt, ...)
{
    (void)x;
    va_list ap;
    va_start(ap, fmt);
    vprintf(fmt, ap);
    va_end(ap);
    fflush(stdout);
}

static int parse_u32(const char *s, uint32_t lo, uint32_t hi, uint32_t *out)
{
    char *end;
    unsigned long long v = strtoull(s, &end, 10);
    if (!*s || *end || s[0] == '-' || v < lo || v > hi)
        return -1;
    *out = (uint32_t)v;
    return 0;
}

static int demo_opt(void *ctx, int argc, char **argv, int *i)
{
    struct demo_opts *o = ctx;
    const char *name = argv[*i];
    static const char *const with_value[] = {"--model", "-s", "--server", "--ratio",
                                             "--tokens", "--continue", "--seed",
                                             "--calib-seqs", "--chunk-tokens", "--reps"};
    int known = 0;
    for (size_t k = 0; k < sizeof with_value / sizeof with_value[0]; k++)
        known |= !strcmp(name, with_value[k]);
    if (!known)
        return 0;
    if (*i + 1 >= argc) {
        fprintf(stderr, "kvtc demo: %s needs a value\n", name);
        return -1;
    }
    const char *v = argv[++*i];
    int bad = 0;
    if (!strcmp(name, "--model")) {
        o->model = v;
    } else if (!strcmp(name, "-s") || !strcmp(name, "--server")) {
        o->server = v;
    } else if (!strcmp(name, "--ratio")) {
        char *end;
        o->ratio = strtof(v, &end);
        bad = *end || !(o->ratio >= 1.0f && o->ratio <= 256.0f);
    } else if (!strcmp(name, "--tokens")) {
        bad = parse_u32(v, 2, 1u << 20, &o->tokens);
    } else if (!strcmp(name, "--continue")) {
        bad = parse_u32(v, 1, 1u << 20, &o->cont);
    } else if (!strcmp(name, "--calib-seqs")) {
        bad = parse_u32(v, 1, 4096, &o->calib);
    } else if (!strcmp(name, "--chunk-tokens")) {
        bad = parse_u32(v, KVTC_SINK_TOKENS + 1, KVTC_MAX_CHUNK_TOKENS, &o->chunk);
    } else if (!strcmp(name, "--reps")) {
        bad = parse_u32(v, 1, 100000, &o->reps);
    } else {
        char *end;
        o->seed = strtoull(v, &end, 10);
        bad = !*v || *end || v[0] == '-';
    }
    if (bad) {
        fprintf(stderr, "kvtc demo: bad value '%s' for %s\n", v, name);
        return -1;
    }
    return 1;
}

static void usage(void)
{
    printf("usage: kvtc demo [--model PATH] [-s HOST:PORT] [--ratio R] [--tokens N]\n"
           "                 [--continue M] [--seed S] [--calib-seqs C] [--chunk-tokens T]\n"
           "                 [--reps K] [--json]\n"
           "Runs a llama2.c model (default %s) on the CPU:\n"
           "calibrates a KVTC profile on C sequences it samples itself (seeds 1..C,\n"
           "default 16), fills its KV cache with an N-token conversation (sampled with\n"
           "seed S, default 1000000; N default 384), stores the cache's chunks of T\n"
           "tokens (default 64) in kvtcd compressed at R x (default 4) and raw,\n"
           "restores them into a fresh cache and continues M tokens (default 128)\n"
           "greedily. Reports the ratio, the top-1 agreement (teacher-forced on the\n"
           "continuation from the uncompressed cache), both perplexities of that\n"
           "continuation, and put/get throughput (MB/s of raw bf16 KV, K repetitions,\n"
           "default 10). The profile is uploaded to kvtcd, which then compresses at\n"
           "put and decodes at get (daemon-compress; the client also decodes the\n"
           "containers and checks both agree); a kvtcd without profile support gets\n"
           "containers encoded here (client-compress). Without -s it starts its own\n"
           "kvtcd (the one beside kvtc) on free ports and stops it at the end.\n"
           "--json: the last line is one JSON object.\n", DEFAULT_MODEL);
}

/* n buffers of size bytes each (an array of pointers to them). */
static void **alloc_bufs(uint32_t n, size_t size)
{
    void **b = calloc(n ? n : 1, sizeof *b);
    for (uint32_t i = 0; b && i < n; i++)
        if (!(b[i] = malloc(size ? size : 1))) {
            for (uint32_t j = 0; j < i; j++)
                free(b[j]);
            free(b);
            return NULL;
        }
    return b;
}

static void free_bufs(void **b, uint32_t n)
{
    for (uint32_t i = 0; b && i < n; i++)
        free(b[i]);
    free(b);
}

static void demo_free(struct demo *x)
{
    uint32_t n = x->ref.n_chunks;
    free_bufs(x->raw, n);
    free_bufs(x->back, n);
    free_bufs(x->cont, n);
    free_bufs(x->cont_back, n);
    free_bufs(x->dec, n);
    free_bufs(x->dback, n);
    free(x->len_raw);
    free(x->len_cont);
    free(x->len_cont_back);
    free(x->got);
    free(x->keys_raw);
    free(x->keys_kvtc);
    free(x->kv_restored);
    free(x->gen);
    kvtc_demo_ref_free(&x->ref);
    kvtc_profile_free(x->prof);
    kvtc_disconnect(x->conn);
    kvtc_demo_model_close(&x->dm);
}

/* "what: reason", and whether the daemon we started is the reason. */
static int fail(struct demo *x, const char *what, int rc)
{
    const char *detail = x->conn ? kvtc_last_error(x->conn) : "";
    fprintf(stderr, "kvtc demo: %s: %s\n", what, detail && detail[0] ? detail : kvtc_strerror(rc));
    if (x->d.pid > 0 && !kvtc_demo_daemon_alive(&x->d))
        fprintf(stderr, "kvtc demo: the kvtcd it started is gone\n");
    return rc ? rc : KVTC_EIO;
}

static int calibrate(struct demo *x, struct demo_result *res)
{
    float t[MAX_TARGETS];
    uint32_t nt = 0;
    uint64_t rows = 0;
    /* a plan each side of the asked ratio, so a profile uploaded for the
     * demo also serves a neighbouring ratio */
    if (x->o.ratio / 2 >= 1.1f)
        t[nt++] = x->o.ratio / 2;
    t[nt++] = x->o.ratio;
    t[nt++] = x->o.ratio * 2;
    progress(x, "calibrate: KV of %u sequences sampled from the model (seeds 1..%u, %u tokens"
             " each), plans at", x->o.calib, x->o.calib, x->dm.c->seq_len);
    for (uint32_t i = 0; i < nt; i++)
        progress(x, " %gx", t[i]);
    progress(x, "\n");
    double t0 = kvtc_cli_now();
    int rc = kvtc_demo_calibrate(&x->dm, &x->lay, x->o.calib, t, nt, &x->prof, &rows);
    if (rc)
        return fail(x, "calibration", rc);
    res->calib_s = kvtc_cli_now() - t0;
    kvtc_plan_info pi;
    rc = kvtc_profile_plan_info(x->prof, kvtc_profile_find_plan(x->prof, x->o.ratio), &pi);
    if (rc)
        return fail(x, "profile", rc);
    progress(x, "  profile %016llx from %llu rows in %.1f s; %gx plan: %u key + %u value"
             " components, %.1f bits per token before DEFLATE\n",
             (unsigned long long)kvtc_profile_id(x->prof), (unsigned long long)rows,
             res->calib_s, pi.target_ratio, pi.key_components, pi.value_components,
             pi.bits_per_token);
    return 0;
}

static int alloc_chunks(struct demo *x)
{
    uint32_t n = x->ref.n_chunks;
    x->chunk_bytes = kvtc_chunk_bytes(&x->lay, x->o.chunk);
    x->cont_cap = kvtc_demo_encode_bound(x->prof, x->o.ratio, x->o.chunk);
    x->keys_raw = calloc(n, sizeof *x->keys_raw);
    x->keys_kvtc = calloc(n, sizeof *x->keys_kvtc);
    x->len_raw = calloc(n, sizeof(size_t));
    x->len_cont = calloc(n, sizeof(size_t));
    x->len_cont_back = calloc(n, sizeof(size_t));
    x->got = calloc(n, sizeof *x->got);
    x->raw = alloc_bufs(n, x->chunk_bytes);
    x->back = alloc_bufs(n, x->chunk_bytes);
    x->dec = alloc_bufs(n, x->chunk_bytes);
    x->dback = alloc_bufs(n, x->chunk_bytes);
    x->cont = alloc_bufs(n, x->cont_cap);
    x->cont_back = alloc_bufs(n, x->cont_cap);
    x->kv_restored = malloc((size_t)n * x->o.chunk * x->dm.tok_floats * sizeof(float));
    x->gen = malloc(x->o.cont * sizeof *x->gen);
    if (!x->keys_raw || !x->keys_kvtc || !x->len_raw || !x->len_cont || !x->len_cont_back ||
        !x->got || !x->raw || !x->back || !x->dec || !x->dback || !x->cont || !x->cont_back ||
        !x->kv_restored || !x->gen || !x->cont_cap)
        return fail(x, "buffers", KVTC_ENOMEM);
    return 0;
}

/* The conversation's chunks in the store's dtype, and their keys. */
static int make_chunks(struct demo *x)
{
    const struct kvtc_demo_ref *r = &x->ref;
    size_t floats = (size_t)x->o.chunk * x->dm.tok_floats;
    char fp[256];
    const char *base = strrchr(x->o.model, '/');
    int rc = 0;
    for (uint32_t i = 0; !rc && i < r->n_chunks; i++) {
        rc = kvtc_from_float(x->lay.dtype, r->kv + i * floats, x->raw[i], floats);
        x->len_raw[i] = x->chunk_bytes;
    }
    snprintf(fp, sizeof fp, "kvtc-demo/%s/bf16/%u/raw", base ? base + 1 : x->o.model,
             x->o.chunk);
    if (!rc)
        rc = kvtc_demo_keys(fp, r->tok, r->n_tokens, x->o.chunk, x->keys_raw, r->n_chunks);
    snprintf(fp, sizeof fp, "kvtc-demo/%s/bf16/%u/kvtc", base ? base + 1 : x->o.model,
             x->o.chunk);
    if (!rc)
        rc = kvtc_demo_keys(fp, r->tok, r->n_tokens, x->o.chunk, x->keys_kvtc, r->n_chunks);
    return rc ? fail(x, "chunks", rc) : 0;
}

static double mbps(double bytes, double secs)
{
    return secs > 0 ? bytes / secs / 1e6 : NAN;
}

/* Raw (bf16) copies: the baseline for throughput and bytes per token, and
 * a check that the store gives back exactly what it got. */
static int store_raw(struct demo *x, struct demo_result *res)
{
    uint32_t n = x->ref.n_chunks, reps = x->o.reps;
    double raw_bytes = (double)n * x->chunk_bytes, tput, tget;
    int rc = kvtc_demo_put(x->conn, x->keys_raw, n, x->raw, x->len_raw, &x->lay, 0, reps,
                           &tput);
    if (rc)
        return fail(x, "put raw", rc);
    rc = kvtc_demo_get(x->conn, x->keys_raw, n, x->back, x->chunk_bytes, KVTC_WANT_RAW, x->got,
                       reps, &tget);
    if (rc)
        return fail(x, "get raw", rc);
    for (uint32_t i = 0; i < n; i++)
        if (x->got[i].size != x->chunk_bytes || memcmp(x->back[i], x->raw[i], x->chunk_bytes)) {
            fprintf(stderr, "kvtc demo: raw chunk %u came back different\n", i);
            return KVTC_ECORRUPT;
        }
    res->put_raw_MBps = mbps(raw_bytes * reps, tput);
    res->get_raw_MBps = mbps(raw_bytes * reps, tget);
    res->bpt_raw = raw_bytes / ((double)n * x->o.chunk);
    progress(x, "store raw:  %u chunks, %.0f KB of bf16 KV (%.0f bytes/token); put %.1f MB/s,"
             " get %.1f MB/s; restored bit-exact\n", n, raw_bytes / 1e3, res->bpt_raw,
             res->put_raw_MBps, res->get_raw_MBps);
    return 0;
}

/* Offer the profile to the daemon: with it the daemon compresses at put
 * time and decodes at get time (protocol 1.2). A daemon without profile
 * support leaves the compression to this side (client-compress). */
static int upload_profile(struct demo *x)
{
    kvtc_server_info si;
    size_t size = kvtc_profile_size(x->prof);
    void *buf = NULL;
    int rc = kvtc_server_info_get(x->conn, &si);
    if (rc)
        return fail(x, "server info", rc);
    if (si.major == 1 && si.minor < 2) {
        progress(x, "profile: kvtcd speaks protocol %u.%u, without profiles: the client"
                 " compresses (client-compress)\n", si.major, si.minor);
        return 0;
    }
    kvtc_profile_info info;
    if (!(buf = malloc(size)))
        return fail(x, "profile", KVTC_ENOMEM);
    rc = kvtc_profile_save(x->prof, buf, size);
    if (!rc)
        rc = kvtc_profile_upload(x->conn, buf, size, NULL, &info);
    free(buf);
    if (rc == KVTC_ECONN || rc == KVTC_ETIMEDOUT || rc == KVTC_ENOMEM)
        return fail(x, "profile upload", rc);
    if (rc) {
        /* a daemon that refuses the profile can still store containers */
        const char *why = kvtc_last_error(x->conn);
        progress(x, "profile: kvtcd refused it (%s): the client compresses"
                 " (client-compress)\n", why && why[0] ? why : kvtc_strerror(rc));
        return 0;
    }
    x->daemon_compress = 1;
    progress(x, "profile: uploaded %016llx (%llu bytes) to kvtcd, which compresses at put"
             " and decodes at get (daemon-compress)\n", (unsigned long long)info.id,
             (unsigned long long)info.size);
    return 0;
}

/* Squared distances of chunk a from b, summed into *d (values as floats). */
static int add_sqdist(const kvtc_layout *lay, const void *a, const void *b, size_t values,
                      float *fa, float *fb, double *d)
{
    int rc = kvtc_to_float(lay->dtype, a, fa, values);
    if (!rc)
        rc = kvtc_to_float(lay->dtype, b, fb, values);
    for (size_t k = 0; !rc && k < values; k++)
        *d += ((double)fa[k] - fb[k]) * ((double)fa[k] - fb[k]);
    return rc;
}

/* How far the daemon's decodes lie from the client's, relative to how far
 * the client's lie from the raw KV. A daemon that decodes on the CPU gives
 * the same bytes (0); one that decodes on its GPU projects in fp16 and
 * lands within a small fraction of the codec's own error. */
static int decode_distance(const struct demo *x, uint32_t n, double *rel)
{
    size_t values = x->chunk_bytes / kvtc_dtype_size(x->lay.dtype);
    float *fa = malloc(values * sizeof *fa), *fb = malloc(values * sizeof *fb);
    double diff = 0, err = 0;
    int rc = fa && fb ? 0 : KVTC_ENOMEM;
    for (uint32_t i = 0; !rc && i < n; i++) {
        rc = add_sqdist(&x->lay, x->dback[i], x->dec[i], values, fa, fb, &diff);
        if (!rc)
            rc = add_sqdist(&x->lay, x->dec[i], x->raw[i], values, fa, fb, &err);
    }
    free(fa);
    free(fb);
    *rel = diff == 0 ? 0 : err > 0 ? diff / err : 1e30; /* JSON has no inf */
    return rc;
}

/* Daemon-compress: raw chunks go in with a target ratio; they come back
 * both decoded by the daemon (want RAW) and as containers decoded here
 * (want KVTC), and the two must agree: byte for byte when the daemon
 * decodes on its CPU, within a quarter of the codec's error otherwise. */
static int store_kvtc_daemon(struct demo *x, struct demo_result *res)
{
    uint32_t n = x->ref.n_chunks, reps = x->o.reps;
    double raw_bytes = (double)n * x->chunk_bytes, tput, tget, tgetk;
    uint64_t stored = 0;
    int rc = kvtc_demo_put(x->conn, x->keys_kvtc, n, x->raw, x->len_raw, &x->lay, x->o.ratio,
                           reps, &tput);
    if (rc)
        return fail(x, "put with compression", rc);
    rc = kvtc_demo_get(x->conn, x->keys_kvtc, n, x->dback, x->chunk_bytes, KVTC_WANT_RAW,
                       x->got, reps, &tget);
    if (rc)
        return fail(x, "get (daemon decodes)", rc);
    rc = kvtc_demo_get(x->conn, x->keys_kvtc, n, x->dec, x->chunk_bytes, KVTC_WANT_KVTC,
                       x->got, reps, &tgetk);
    if (rc)
        return fail(x, "get (client decodes)", rc);
    res->identical = 1;
    for (uint32_t i = 0; i < n; i++) {
        if (x->got[i].encoding != KVTC_ENCODING_KVTC) {
            /* a daemon without a profile for the layout stores raw and
             * says nothing: the ratio would be a lie */
            fprintf(stderr, "kvtc demo: kvtcd stored chunk %u uncompressed (no profile for"
                    " this layout?)\n", i);
            return KVTC_EPROFILE;
        }
        stored += x->got[i].wire;
        res->identical &= x->got[i].size == x->chunk_bytes &&
                          !memcmp(x->dec[i], x->dback[i], x->chunk_bytes);
    }
    rc = decode_distance(x, n, &res->decode_diff);
    if (rc)
        return fail(x, "compare decodes", rc);
    res->agree = res->identical || res->decode_diff <= 0.25;
    res->mode = "daemon-compress";
    res->ratio = raw_bytes / (double)stored;
    res->bpt_kvtc = (double)stored / ((double)n * x->o.chunk);
    res->put_MBps = mbps(raw_bytes * reps, tput);
    res->get_MBps = mbps(raw_bytes * reps, tget);
    res->get_kvtc_MBps = mbps(raw_bytes * reps, tgetk);
    progress(x, "store kvtc: %u chunks in %.1f KB (%.1f bytes/token), ratio %.2fx vs bf16;"
             " put %.1f MB/s (kvtcd compresses), get %.1f MB/s (kvtcd decodes), %.1f MB/s"
             " (libkvtc decodes); both decodes %s (difference %.2g of the codec's error)\n",
             n, (double)stored / 1e3, res->bpt_kvtc, res->ratio, res->put_MBps, res->get_MBps,
             res->get_kvtc_MBps,
             res->identical ? "identical" : res->agree ? "agree" : "DIFFER", res->decode_diff);
    if (!res->agree) {
        fprintf(stderr, "kvtc demo: the daemon's and the client's decodes differ\n");
        return KVTC_ECORRUPT;
    }
    return 0;
}

/* Client-compress: the CPU codec here encodes, the daemon stores opaque
 * containers (what any daemon can do), and this side decodes what comes
 * back; the throughput includes the codec's time, as the daemon's would. */
static int store_kvtc_client(struct demo *x, struct demo_result *res)
{
    uint32_t n = x->ref.n_chunks, reps = x->o.reps;
    double raw_bytes = (double)n * x->chunk_bytes, tenc, tput, tget, tdec;
    uint64_t stored = 0;
    int rc = kvtc_demo_encode(x->prof, x->o.ratio, n, x->raw, x->o.chunk, x->cont, x->cont_cap,
                              x->len_cont, &tenc);
    if (rc)
        return fail(x, "encode", rc);
    rc = kvtc_demo_put(x->conn, x->keys_kvtc, n, x->cont, x->len_cont, NULL, 0, reps, &tput);
    if (rc)
        return fail(x, "put compressed", rc);
    rc = kvtc_demo_get(x->conn, x->keys_kvtc, n, x->cont_back, x->cont_cap, KVTC_WANT_RAW,
                       x->got, reps, &tget);
    if (rc)
        return fail(x, "get compressed", rc);
    for (uint32_t i = 0; i < n; i++)
        stored += x->len_cont_back[i] = x->got[i].size;
    rc = kvtc_demo_decode(x->prof, n, x->cont_back, x->len_cont_back, x->o.chunk, x->dec,
                          x->chunk_bytes, &tdec);
    if (rc)
        return fail(x, "decode", rc);
    res->mode = "client-compress";
    res->identical = -1;
    res->ratio = raw_bytes / (double)stored;
    res->bpt_kvtc = (double)stored / ((double)n * x->o.chunk);
    res->put_MBps = mbps(raw_bytes, tenc + tput / reps);
    res->get_MBps = res->get_kvtc_MBps = mbps(raw_bytes, tget / reps + tdec);
    progress(x, "store kvtc: %u chunks in %.1f KB (%.1f bytes/token), ratio %.2fx vs bf16;"
             " encode+put %.1f MB/s, get+decode %.1f MB/s (client-compress)\n", n,
             (double)stored / 1e3, res->bpt_kvtc, res->ratio, res->put_MBps, res->get_MBps);
    return 0;
}

/* Score a restored cache given as chunks in the store's dtype. */
static int restore_and_score(struct demo *x, void *const *chunks, struct kvtc_demo_score *s,
                             int32_t *gen)
{
    size_t floats = (size_t)x->o.chunk * x->dm.tok_floats;
    int rc = 0;
    for (uint32_t i = 0; !rc && i < x->ref.n_chunks; i++)
        rc = kvtc_to_float(x->lay.dtype, chunks[i], x->kv_restored + i * floats, floats);
    if (!rc)
        rc = kvtc_demo_score(&x->dm, &x->ref, x->kv_restored, s, gen);
    return rc ? fail(x, "restore", rc) : 0;
}

static void print_tokens(const char *label, const int32_t *t, uint32_t n)
{
    printf("  %-13s", label);
    for (uint32_t i = 0; i < n && i < 16; i++)
        printf(" %d", t[i]);
    printf("%s\n", n > 16 ? " ..." : "");
}

static void json_num(const char *key, double v, int first)
{
    printf(isfinite(v) ? "%s\"%s\":%.6g" : "%s\"%s\":null", first ? "" : ",", key,
           isfinite(v) ? v : 0.0);
}

static void print_json(const struct demo *x, const struct demo_result *r)
{
    const char *base = strrchr(x->o.model, '/');
    printf("{\"mode\":\"%s\",\"model\":\"%s\",\"tokens\":%u,\"continue\":%u,"
           "\"chunk_tokens\":%u,\"chunks\":%u,", r->mode, base ? base + 1 : x->o.model,
           x->o.tokens, x->o.cont, x->o.chunk, x->ref.n_chunks);
    json_num("target", x->o.ratio, 1);
    json_num("ratio", r->ratio, 0);
    json_num("top1", r->top1, 0);
    json_num("top1_bf16", r->top1_bf16, 0);
    printf(",\"greedy_same_prefix\":%u", r->same_prefix);
    json_num("ppl_ref", r->ppl_ref, 0);
    json_num("ppl_kvtc", r->ppl_kvtc, 0);
    json_num("ppl_bf16", r->ppl_bf16, 0);
    json_num("put_MBps", r->put_MBps, 0);
    json_num("get_MBps", r->get_MBps, 0);
    json_num("get_kvtc_MBps", r->get_kvtc_MBps, 0);
    json_num("put_raw_MBps", r->put_raw_MBps, 0);
    json_num("get_raw_MBps", r->get_raw_MBps, 0);
    json_num("bytes_per_token_raw", r->bpt_raw, 0);
    json_num("bytes_per_token_kvtc", r->bpt_kvtc, 0);
    json_num("calib_seconds", r->calib_s, 0);
    printf(",\"identical\":%s", r->identical < 0 ? "null" : r->identical ? "true" : "false");
    printf(",\"decodes_agree\":%s", r->identical < 0 ? "null" : r->agree ? "true" : "false");
    if (r->identical >= 0)
        json_num("decode_diff", r->decode_diff, 0);
    printf("}\n");
}

static int run(struct demo *x, struct demo_result *res)
{
    const struct demo_opts *o = &x->o;
    int rc = kvtc_demo_model_open(o->model, &x->dm);
    if (rc) {
        fprintf(stderr, "kvtc demo: cannot load the model %s: %s%s\n", o->model,
                kvtc_strerror(rc), strcmp(o->model, DEFAULT_MODEL) ? ""
                : " (run from the repository with ../shared beside it, or pass --model)");
        return rc;
    }
    const kvtc_llama_config *c = x->dm.c;
    if (o->tokens + o->cont > c->seq_len || o->tokens < o->chunk) {
        fprintf(stderr, "kvtc demo: --tokens %u (at least one chunk of %u) + --continue %u"
                " must fit the model's seq_len %u\n", o->tokens, o->chunk, o->cont, c->seq_len);
        return KVTC_EINVAL;
    }
    kvtc_llama_layout(x->dm.m, o->chunk, &x->lay);
    x->lay.dtype = KVTC_DTYPE_BF16; /* what serving engines keep */
    progress(x, "kvtc demo: %s: %u layers, %u kv heads x %u, seq_len %u, on the CPU\n",
             o->model, c->n_layers, c->n_kv_heads, c->head_dim, c->seq_len);

    /* Fork before the first UCX connection: UCX does not survive fork. */
    const char *server = o->server;
    if (!server) {
        if ((rc = kvtc_demo_daemon_start(&x->d)))
            return rc;
        server = x->d.addr;
        progress(x, "kvtcd: started %s on %s (admin port %d, data in %s)\n", x->d.bin,
                 server, x->d.admin_port, x->d.dir);
    } else {
        progress(x, "kvtcd: using %s\n", server);
    }
    kvtc_conn_params cp = {.field_mask = KVTC_CONN_PARAM_FIELD_CLIENT_NAME,
                           .client_name = "kvtc-demo"};
    if ((rc = kvtc_connect(server, &cp, &x->conn))) {
        fprintf(stderr, "kvtc demo: cannot connect to %s: %s\n", server,
                kvtc_last_error(NULL)[0] ? kvtc_last_error(NULL) : kvtc_strerror(rc));
        return rc;
    }
    if ((rc = calibrate(x, res)) || (rc = upload_profile(x)))
        return rc;

    progress(x, "conversation: %u tokens sampled with seed %llu, then %u tokens continued"
             " greedily from the uncompressed cache\n", o->tokens, (unsigned long long)o->seed,
             o->cont);
    if ((rc = kvtc_demo_reference(&x->dm, o->seed, o->tokens, o->cont, o->chunk, &x->ref)))
        return fail(x, "conversation", rc);
    if ((rc = alloc_chunks(x)) || (rc = make_chunks(x)))
        return rc;
    if ((rc = store_raw(x, res)) ||
        (rc = x->daemon_compress ? store_kvtc_daemon(x, res) : store_kvtc_client(x, res)))
        return rc;

    struct kvtc_demo_score sk, sb;
    uint32_t restored = x->ref.n_chunks * o->chunk;
    /* the last prompt token always runs again: its logits start the reply */
    uint32_t recomputed = restored < o->tokens ? o->tokens - restored : 1;
    progress(x, "restore: %u chunks (%u tokens) into a fresh cache, %u prompt token(s)"
             " recomputed, continue %u tokens\n", x->ref.n_chunks, restored, recomputed,
             o->cont);
    if ((rc = restore_and_score(x, x->back, &sb, NULL)) ||
        (rc = restore_and_score(x, x->dec, &sk, x->gen)))
        return rc;
    res->top1 = sk.top1;
    res->top1_bf16 = sb.top1;
    res->same_prefix = sk.same_prefix;
    res->ppl_ref = exp(x->ref.nll);
    res->ppl_kvtc = exp(sk.nll);
    res->ppl_bf16 = exp(sb.nll);
    print_tokens("uncompressed:", x->ref.cont, o->cont);
    print_tokens("kvtc:", x->gen, o->cont);
    progress(x, "result: kvtc at %.2fx: top-1 agreement %.4f over %u teacher-forced tokens,"
             " identical greedy output for the first %u of %u; perplexity of the reference"
             " continuation %.4f (uncompressed) vs %.4f (kvtc), %.4f (bf16 raw, top-1 %.4f)\n",
             res->ratio, res->top1, o->cont, res->same_prefix, o->cont, res->ppl_ref,
             res->ppl_kvtc, res->ppl_bf16, res->top1_bf16);
    return 0;
}

int kvtc_cmd_demo(const struct kvtc_cli_global *g, int argc, char **argv)
{
    struct demo x;
    struct demo_result res = {.mode = "client-compress", .identical = -1};
    struct kvtc_cli_args a;
    memset(&x, 0, sizeof x);
    x.o = (struct demo_opts){.model = DEFAULT_MODEL, .server = g->server, .ratio = 4,
                             .tokens = 384, .cont = 128, .calib = 16, .chunk = 64,
                             .reps = 10, .seed = 1000000};
    int rc = kvtc_cli_scan(g, "demo", argc, argv, demo_opt, &x.o, &a);
    if (rc)
        return rc;
    if (a.help) {
        usage();
        return 0;
    }
    if (a.n_pos)
        return kvtc_cli_usage(&a, "takes no positional arguments");
    x.json = a.json;
    rc = run(&x, &res);
    /* the connection goes before the daemon, so the daemon sees a clean
     * close rather than a peer that vanished */
    kvtc_disconnect(x.conn);
    x.conn = NULL;
    int drc = kvtc_demo_daemon_stop(&x.d);
    if (!rc && drc)
        rc = drc;
    if (!rc && x.d.bin[0])
        progress(&x, "kvtcd: stopped cleanly\n");
    if (!rc && x.json)
        print_json(&x, &res);
    demo_free(&x);
    return rc ? 1 : 0;
}
