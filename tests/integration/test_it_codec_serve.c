/* Compression in the serving path, against a real kvtcd over real UCX, on
 * real KV (stories260K): profiles uploaded and persisted, raw chunks
 * compressed on put, served raw (the daemon decodes) or compressed (libkvtc
 * decodes), client containers checked, and the cases stored raw.
 *
 * These tests start kvtcd with --codec-device cpu: the daemon then uses
 * the same CPU codec as this process, so what it serves must equal, byte
 * for byte, this process's own encode -> decode of the same chunk at the
 * same plan. (The default, auto, codes on the GPU where there is one: the
 * same container format, different bytes within the plan's error bound;
 * gpu_codec_within_error_bound tests that path.) */
#include <criterion/criterion.h>
#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <signal.h>
#include <time.h>
#include <unistd.h>

#include "itest.h"
#include "llama_model.h"
#include "test_util.h"

#define TOK 256

/* Real KV and a profile calibrated on it, built once per test process. */
struct kvset {
    kvtc_layout l;
    size_t bytes;         /* one chunk */
    float *chunk[3];      /* evaluation chunks (not calibrated on) */
    kvtc_profile *p;      /* targets 4, 8 */
    void *pbytes;
    size_t plen;
    kvtc_profile *p2;     /* another profile of the same layout */
};

static struct kvset K;

/* Pins the daemon's codec to the CPU path, whose output these tests
 * compare exactly. */
static const char *const CPU[] = {"--codec-device", "cpu", NULL};

static void kv_of(kvtc_llama *m, kvtc_llama_state *s, uint64_t seed, float *out)
{
    int32_t tok[TOK + 1];
    cr_assert_eq(kvtc_llama_sample(s, seed, TOK + 1, tok), 0);
    cr_assert_eq(kvtc_llama_export_kv(s, 0, TOK, out), 0);
}

static kvtc_profile *calibrate(kvtc_llama *m, kvtc_llama_state *s, uint64_t seed0, int n,
                               const float *targets, uint32_t nt)
{
    kvtc_calibrator *cal;
    cr_assert_eq(kvtc_calibrator_create(&K.l, NULL, &cal), 0);
    float *kv = malloc(K.bytes);
    for (int i = 0; i < n; i++) {
        kv_of(m, s, seed0 + (uint64_t)i, kv);
        cr_assert_eq(kvtc_calibrator_add(cal, kv, TOK, 0), 0);
    }
    free(kv);
    kvtc_profile *p;
    cr_assert_eq(kvtc_calibrator_finish(cal, targets, nt, &p), 0);
    kvtc_calibrator_free(cal);
    return p;
}

static void kv_setup(void)
{
    const char *shared = kvtc_test_shared_path("models/stories260K.bin");
    if (!shared)
        cr_skip_test("../shared/models/stories260K.bin is absent: no real KV to test "
                     "compression with");
    char model[4096]; /* the helpers' paths share one static buffer */
    snprintf(model, sizeof model, "%s", shared);
    itest_setup(ITEST_TLS_TCP);
    kvtc_llama *m;
    kvtc_llama_state *s;
    cr_assert_eq(kvtc_llama_load(model, &m), 0);
    cr_assert_eq(kvtc_llama_state_create(m, &s), 0);
    kvtc_llama_layout(m, TOK, &K.l);
    K.bytes = kvtc_chunk_bytes(&K.l, TOK);
    for (int i = 0; i < 3; i++) {
        K.chunk[i] = malloc(K.bytes);
        kv_of(m, s, 900 + (uint64_t)i, K.chunk[i]);
    }
    const float t[] = {4, 8};
    K.p = calibrate(m, s, 100, 6, t, 2);
    const float t2[] = {4};
    K.p2 = calibrate(m, s, 300, 4, t2, 1);
    cr_assert_neq(kvtc_profile_id(K.p), kvtc_profile_id(K.p2));
    K.plen = kvtc_profile_size(K.p);
    K.pbytes = malloc(K.plen);
    cr_assert_eq(kvtc_profile_save(K.p, K.pbytes, K.plen), 0);
    kvtc_llama_state_free(s);
    kvtc_llama_free(m);
}

static void kv_teardown(void)
{
    for (int i = 0; i < 3; i++)
        free(K.chunk[i]);
    kvtc_profile_free(K.p);
    kvtc_profile_free(K.p2);
    free(K.pbytes);
    memset(&K, 0, sizeof K);
}

/* This process's encode of chunk at the plan the daemon picks for target
 * (the smallest ratio >= target, else the highest). */
static void *cpu_encode(const kvtc_profile *p, uint32_t plan, const void *chunk, size_t *len)
{
    kvtc_encoder *enc;
    cr_assert_eq(kvtc_encoder_create(p, plan, KVTC_STAGE_DEFLATE, 0, &enc), 0);
    size_t cap = kvtc_encode_bound(enc, TOK);
    void *out = malloc(cap);
    kvtc_chunk ch = {.data = chunk, .n_tokens = TOK, .first_pos = 0};
    cr_assert_eq(kvtc_encode(enc, &ch, out, cap, len), 0);
    kvtc_encoder_free(enc);
    return out;
}

static void *cpu_decode(const kvtc_profile *p, const void *c, size_t len)
{
    kvtc_decoder *dec;
    cr_assert_eq(kvtc_decoder_create(p, &dec), 0);
    void *out = malloc(K.bytes);
    cr_assert_eq(kvtc_decode(dec, c, len, out, K.bytes, NULL), 0);
    kvtc_decoder_free(dec);
    return out;
}

static uint32_t plan_of(const kvtc_profile *p, float target)
{
    for (uint32_t i = 0; i < kvtc_profile_plan_count(p); i++) {
        kvtc_plan_info pi;
        kvtc_profile_plan_info(p, i, &pi);
        if (pi.target_ratio == target)
            return i;
    }
    cr_assert_fail("no plan %g", (double)target);
    return 0;
}

static int put_one(kvtc_conn *c, kvtc_key key, const void *data, size_t size, float ratio,
                   uint32_t flags, int container, const kvtc_layout *l)
{
    kvtc_put_item it = {.field_mask = KVTC_PUT_FIELD_MEM, .key = key, .data = data,
                        .size = size, .mem = KVTC_MEM_HOST};
    if (l) {
        it.field_mask |= KVTC_PUT_FIELD_LAYOUT;
        it.layout = l;
        it.n_tokens = TOK;
        it.first_pos = 0;
    }
    if (ratio > 0) {
        it.field_mask |= KVTC_PUT_FIELD_RATIO;
        it.target_ratio = ratio;
    }
    if (flags) {
        it.field_mask |= KVTC_PUT_FIELD_FLAGS;
        it.flags = flags;
    }
    if (container) {
        it.field_mask |= KVTC_PUT_FIELD_ENCODING;
        it.encoding = KVTC_ENCODING_KVTC;
    }
    int rc = kvtc_put_batch(c, &it, 1, NULL);
    return rc ? rc : it.status;
}

static int get_one(kvtc_conn *c, kvtc_key key, uint32_t want, void *buf, size_t cap,
                   kvtc_get_item *out)
{
    kvtc_get_item it = {.field_mask = KVTC_GET_FIELD_MEM | KVTC_GET_FIELD_WANT, .key = key,
                        .buf = buf, .capacity = cap, .mem = KVTC_MEM_HOST, .want = want};
    int rc = kvtc_get_batch(c, &it, 1, NULL);
    if (out)
        *out = it;
    return rc;
}

static double rel_err(const float *a, const float *b, size_t n)
{
    double e = 0, s = 0;
    for (size_t i = 0; i < n; i++) {
        e += ((double)a[i] - b[i]) * ((double)a[i] - b[i]);
        s += (double)a[i] * a[i];
    }
    return e / (s > 0 ? s : 1);
}

TestSuite(codec_serve, .init = kv_setup, .fini = kv_teardown, .timeout = 120);

Test(codec_serve, compress_on_put_serve_raw_and_compressed)
{
    struct itest_daemon d;
    itest_daemon_start(&d, "64M", 0, CPU);
    kvtc_conn *c = itest_connect(&d);
    kvtc_profile_info info;
    cr_assert_eq(kvtc_profile_upload(c, K.pbytes, K.plen, NULL, &info), 0, "%s",
                 kvtc_last_error(c));
    cr_assert_eq(info.id, kvtc_profile_id(K.p));
    cr_assert_eq(info.n_plans, 2);
    kvtc_stats s0 = itest_stats(c);

    /* Target 6: the daemon takes the 8x plan (smallest ratio >= 6). */
    kvtc_key key = itest_key(1, 0);
    cr_assert_eq(put_one(c, key, K.chunk[0], K.bytes, 6, 0, 0, &K.l), 0, "%s",
                 kvtc_last_error(c));
    kvtc_stats s1 = itest_stats(c);
    uint64_t stored = s1.bytes_used - s0.bytes_used;
    cr_assert(stored < K.bytes / 3, "stored %" PRIu64 " bytes of a %zu-byte chunk", stored,
              K.bytes);

    size_t elen;
    uint8_t *expect_c = cpu_encode(K.p, plan_of(K.p, 8), K.chunk[0], &elen);
    float *expect = cpu_decode(K.p, expect_c, elen);
    cr_assert(rel_err(K.chunk[0], expect, K.bytes / 4) < 0.25, "8x relative error %g",
              rel_err(K.chunk[0], expect, K.bytes / 4));

    /* Raw out: the daemon decodes, with the same codec. */
    float *got = malloc(K.bytes);
    kvtc_get_item it;
    cr_assert_eq(get_one(c, key, KVTC_WANT_RAW, got, K.bytes, &it), 0, "%s",
                 kvtc_last_error(c));
    cr_assert_eq(it.size, K.bytes);
    cr_assert_eq(it.encoding, KVTC_ENCODING_RAW);
    cr_assert_eq(it.wire_size, K.bytes);
    cr_assert(memcmp(got, expect, K.bytes) == 0, "daemon decode differs from the CPU codec's");

    /* Compressed out, decoded here: the same bytes, a fraction on the wire. */
    float *got2 = malloc(K.bytes);
    memset(got2, 0, K.bytes);
    cr_assert_eq(get_one(c, key, KVTC_WANT_KVTC, got2, K.bytes, &it), 0, "%s",
                 kvtc_last_error(c));
    cr_assert_eq(it.encoding, KVTC_ENCODING_KVTC);
    cr_assert_eq(it.size, K.bytes);
    cr_assert_eq(it.wire_size, elen);
    cr_assert(memcmp(got2, expect, K.bytes) == 0, "client decode differs from the daemon's");

    /* The container itself: exactly what this process's encoder makes. */
    uint8_t *ctr = malloc(K.bytes);
    cr_assert_eq(get_one(c, key, KVTC_WANT_CONTAINER, ctr, K.bytes, &it), 0);
    cr_assert_eq(it.encoding, KVTC_ENCODING_KVTC);
    cr_assert_eq(it.size, elen);
    cr_assert(memcmp(ctr, expect_c, elen) == 0);

    /* Too small a buffer for the decoded chunk: ENOSPC with the raw size. */
    cr_assert_eq(get_one(c, key, KVTC_WANT_KVTC, got2, K.bytes - 1, &it), KVTC_ENOSPC);
    cr_assert_eq(it.size, K.bytes);

    /* The codec counters say the same. */
    char *body = itest_metrics_body(&d);
    double v;
    cr_assert_eq(itest_metric(body, "kvtc_put_compressed_total", &v), 0);
    cr_assert_eq(v, 1);
    cr_assert_eq(itest_metric(body, "kvtc_codec_encode_out_bytes_total", &v), 0);
    cr_assert_eq(v, (double)elen);
    cr_assert_eq(itest_metric(body, "kvtc_codec_decoded_total", &v), 0);
    cr_assert_eq(v, 1); /* the raw get; the client decoded the others */
    cr_assert_eq(itest_metric(body, "kvtc_profiles", &v), 0);
    cr_assert_eq(v, 1);
    free(body);

    kvtc_disconnect(c);
    free(got);
    free(got2);
    free(ctr);
    free(expect);
    free(expect_c);
    itest_daemon_stop(&d);
}

Test(codec_serve, stored_raw_without_profile_or_in_live_window)
{
    struct itest_daemon d;
    itest_daemon_start(&d, "64M", 0, CPU);
    kvtc_conn *c = itest_connect(&d);
    float *got = malloc(K.bytes);
    kvtc_get_item it;
    /* No profile yet: stored raw, status OK. */
    kvtc_key k0 = itest_key(2, 0);
    cr_assert_eq(put_one(c, k0, K.chunk[1], K.bytes, 8, 0, 0, &K.l), 0, "%s",
                 kvtc_last_error(c));
    cr_assert_eq(get_one(c, k0, KVTC_WANT_KVTC, got, K.bytes, &it), 0);
    cr_assert_eq(it.encoding, KVTC_ENCODING_RAW);
    cr_assert(memcmp(got, K.chunk[1], K.bytes) == 0);
    /* With the profile, the live window still stays raw. */
    cr_assert_eq(kvtc_profile_upload(c, K.pbytes, K.plen, NULL, NULL), 0);
    kvtc_key k1 = itest_key(2, 1);
    cr_assert_eq(put_one(c, k1, K.chunk[1], K.bytes, 8, KVTC_PUT_LIVE_WINDOW, 0, &K.l), 0);
    cr_assert_eq(get_one(c, k1, KVTC_WANT_KVTC, got, K.bytes, &it), 0);
    cr_assert_eq(it.encoding, KVTC_ENCODING_RAW);
    cr_assert_eq(it.wire_size, K.bytes);
    cr_assert(memcmp(got, K.chunk[1], K.bytes) == 0);
    /* A layout no profile has (another chunk size) is stored raw too. */
    kvtc_layout l2 = K.l;
    l2.chunk_tokens = 128;
    kvtc_key k2 = itest_key(2, 2);
    cr_assert_eq(put_one(c, k2, K.chunk[1], K.bytes, 8, 0, 0, &l2), 0);
    cr_assert_eq(get_one(c, k2, KVTC_WANT_KVTC, got, K.bytes, &it), 0);
    cr_assert_eq(it.encoding, KVTC_ENCODING_RAW);
    /* And a raw put without a ratio, of course. */
    kvtc_key k3 = itest_key(2, 3);
    cr_assert_eq(put_one(c, k3, K.chunk[1], K.bytes, 0, 0, 0, &K.l), 0);
    cr_assert_eq(get_one(c, k3, KVTC_WANT_RAW, got, K.bytes, &it), 0);
    cr_assert(memcmp(got, K.chunk[1], K.bytes) == 0);
    kvtc_disconnect(c);
    free(got);
    itest_daemon_stop(&d);
}

Test(codec_serve, client_containers_checked)
{
    struct itest_daemon d;
    itest_daemon_start(&d, "64M", 0, CPU);
    kvtc_conn *c = itest_connect(&d);
    cr_assert_eq(kvtc_profile_upload(c, K.pbytes, K.plen, NULL, NULL), 0);
    size_t len;
    uint8_t *ctr = cpu_encode(K.p, plan_of(K.p, 4), K.chunk[2], &len);
    float *expect = cpu_decode(K.p, ctr, len);
    /* A good container is stored as is and served raw or compressed. */
    kvtc_key k0 = itest_key(3, 0);
    cr_assert_eq(put_one(c, k0, ctr, len, 0, 0, 1, &K.l), 0, "%s", kvtc_last_error(c));
    float *got = malloc(K.bytes);
    kvtc_get_item it;
    cr_assert_eq(get_one(c, k0, KVTC_WANT_RAW, got, K.bytes, &it), 0, "%s",
                 kvtc_last_error(c));
    cr_assert(memcmp(got, expect, K.bytes) == 0);
    cr_assert_eq(it.has_layout, 1);
    cr_assert_eq(it.n_tokens, TOK);
    /* Without metadata the container's own header describes the chunk. */
    kvtc_key k1 = itest_key(3, 1);
    cr_assert_eq(put_one(c, k1, ctr, len, 0, 0, 1, NULL), 0);
    cr_assert_eq(get_one(c, k1, KVTC_WANT_KVTC, got, K.bytes, &it), 0);
    cr_assert(memcmp(got, expect, K.bytes) == 0);
    cr_assert_eq(it.has_layout, 1);

    /* A profile the daemon does not have: PROFILE, not stored. */
    size_t len2;
    uint8_t *ctr2 = cpu_encode(K.p2, 0, K.chunk[2], &len2);
    kvtc_key k2 = itest_key(3, 2);
    cr_assert_eq(put_one(c, k2, ctr2, len2, 0, 0, 1, &K.l), KVTC_EPROFILE);
    cr_assert_eq(get_one(c, k2, KVTC_WANT_RAW, got, K.bytes, NULL), KVTC_ENOENT);
    /* A container whose bytes were changed (and checksummed as sent):
     * its own section checksums catch it. */
    uint8_t *bad = malloc(len);
    memcpy(bad, ctr, len);
    bad[len - 7] ^= 0x40;
    kvtc_key k3 = itest_key(3, 3);
    cr_assert_eq(put_one(c, k3, bad, len, 0, 0, 1, &K.l), KVTC_ECORRUPT);
    /* Metadata that contradicts the container. */
    kvtc_layout l2 = K.l;
    l2.rope_theta = 500000.0f;
    cr_assert_eq(put_one(c, itest_key(3, 4), ctr, len, 0, 0, 1, &l2), KVTC_EINVAL);
    /* Compressed already and a ratio: a contradiction the client refuses. */
    kvtc_put_item pi = {.field_mask = KVTC_PUT_FIELD_ENCODING | KVTC_PUT_FIELD_RATIO,
                        .key = itest_key(3, 5), .data = ctr, .size = len,
                        .encoding = KVTC_ENCODING_KVTC, .target_ratio = 4};
    cr_assert_neq(kvtc_put_batch(c, &pi, 1, NULL), 0);
    kvtc_disconnect(c);
    free(bad);
    free(got);
    free(expect);
    free(ctr);
    free(ctr2);
    itest_daemon_stop(&d);
}

Test(codec_serve, deleted_profile_is_not_served_raw)
{
    struct itest_daemon d;
    itest_daemon_start(&d, "64M", 0, CPU);
    kvtc_conn *c = itest_connect(&d);
    cr_assert_eq(kvtc_profile_upload(c, K.pbytes, K.plen, NULL, NULL), 0);
    kvtc_key k = itest_key(4, 0);
    cr_assert_eq(put_one(c, k, K.chunk[0], K.bytes, 4, 0, 0, &K.l), 0);
    cr_assert_eq(kvtc_profile_delete(c, kvtc_profile_id(K.p), NULL), 0);
    cr_assert_eq(kvtc_profile_delete(c, kvtc_profile_id(K.p), NULL), KVTC_ENOENT);
    float *got = malloc(K.bytes);
    kvtc_get_item it;
    cr_assert_eq(get_one(c, k, KVTC_WANT_RAW, got, K.bytes, &it), KVTC_EPROFILE);
    /* A fresh connection has no cached profile and cannot fetch one. */
    kvtc_conn *c2 = itest_connect(&d);
    cr_assert_eq(get_one(c2, k, KVTC_WANT_KVTC, got, K.bytes, &it), KVTC_EPROFILE);
    /* Uploaded again: served again, and the chunk was never lost. */
    cr_assert_eq(kvtc_profile_upload(c, K.pbytes, K.plen, NULL, NULL), 0);
    cr_assert_eq(get_one(c, k, KVTC_WANT_RAW, got, K.bytes, &it), 0);
    cr_assert_eq(get_one(c2, k, KVTC_WANT_KVTC, got, K.bytes, &it), 0);
    cr_assert_eq(it.encoding, KVTC_ENCODING_KVTC);
    kvtc_disconnect(c2);
    kvtc_disconnect(c);
    free(got);
    itest_daemon_stop(&d);
}

Test(codec_serve, profiles_persist_across_restart)
{
    struct itest_daemon d;
    itest_daemon_prepare(&d);
    char data[400], junk[500];
    snprintf(data, sizeof data, "%s/data", d.dir);
    const char *extra[] = {"--data-dir", data, "--codec-device", "cpu", NULL};
    itest_daemon_launch(&d, "64M", 0, extra);
    kvtc_conn *c = itest_connect(&d);
    /* Not a profile: refused. */
    char garbage[4096];
    memset(garbage, 0x5a, sizeof garbage);
    cr_assert_lt(kvtc_profile_upload(c, garbage, sizeof garbage, NULL, NULL), 0);
    cr_assert_eq(kvtc_profile_upload(c, K.pbytes, K.plen, NULL, NULL), 0);
    /* Uploading it again is fine (one copy). */
    cr_assert_eq(kvtc_profile_upload(c, K.pbytes, K.plen, NULL, NULL), 0);
    kvtc_profile_info ps[4];
    size_t n = 0;
    cr_assert_eq(kvtc_profile_list(c, NULL, ps, 4, &n), 0);
    cr_assert_eq(n, 1);
    kvtc_disconnect(c);
    /* A corrupt file next to it is skipped at start, not fatal. */
    snprintf(junk, sizeof junk, "%s/profiles/00000000deadbeef.kvtcp", data);
    FILE *f = fopen(junk, "wb");
    cr_assert(f);
    fwrite(garbage, 1, 100, f);
    fclose(f);
    cr_assert_eq(itest_daemon_signal_wait(&d, SIGTERM, 10000) & 0x7f, 0);
    itest_daemon_launch(&d, "64M", 0, extra);
    c = itest_connect(&d);
    n = 0;
    cr_assert_eq(kvtc_profile_list(c, NULL, ps, 4, &n), 0);
    cr_assert_eq(n, 1, "%s", itest_log_tail(&d));
    cr_assert_eq(ps[0].id, kvtc_profile_id(K.p));
    cr_assert_eq(ps[0].size, K.plen);
    cr_assert_eq(ps[0].layout.layers, K.l.layers);
    /* Its bytes come back as uploaded. */
    void *back = malloc(K.plen);
    size_t blen = 0;
    cr_assert_eq(kvtc_profile_get(c, ps[0].id, back, K.plen, NULL, &blen), 0);
    cr_assert_eq(blen, K.plen);
    cr_assert(memcmp(back, K.pbytes, K.plen) == 0);
    cr_assert_eq(kvtc_profile_get(c, ps[0].id, back, 10, NULL, &blen), KVTC_ENOSPC);
    cr_assert_eq(blen, K.plen);
    cr_assert_eq(kvtc_profile_get(c, 42, back, K.plen, NULL, &blen), KVTC_ENOENT);
    /* And the restarted daemon compresses with it. */
    kvtc_stats s0 = itest_stats(c);
    cr_assert_eq(put_one(c, itest_key(5, 0), K.chunk[0], K.bytes, 8, 0, 0, &K.l), 0);
    kvtc_stats s1 = itest_stats(c);
    cr_assert_lt(s1.bytes_used - s0.bytes_used, K.bytes / 3);
    /* Deleted, it stays deleted across a restart. */
    cr_assert_eq(kvtc_profile_delete(c, ps[0].id, NULL), 0);
    kvtc_disconnect(c);
    cr_assert_eq(itest_daemon_signal_wait(&d, SIGTERM, 10000) & 0x7f, 0);
    itest_daemon_launch(&d, "64M", 0, extra);
    c = itest_connect(&d);
    cr_assert_eq(kvtc_profile_list(c, NULL, ps, 4, &n), 0);
    cr_assert_eq(n, 0);
    kvtc_disconnect(c);
    free(back);
    itest_daemon_stop(&d);
}

Test(codec_serve, cli_profile_put_ratio_get_compressed)
{
    struct itest_daemon d;
    itest_daemon_start(&d, "64M", 0, CPU);
    char kvtc[4096], pfile[400], kvfile[400], out[400], hexkey[KVTC_KEY_HEX_LEN + 1];
    snprintf(kvtc, sizeof kvtc, "%s", kvtc_test_build_path("bin/kvtc"));
    snprintf(pfile, sizeof pfile, "%s/p.kvtcp", d.dir);
    snprintf(kvfile, sizeof kvfile, "%s/c.kv", d.dir);
    snprintf(out, sizeof out, "%s/out.kv", d.dir);
    cr_assert_eq(kvtc_profile_save_file(K.p, pfile), 0);
    FILE *f = fopen(kvfile, "wb");
    cr_assert(f && fwrite(K.chunk[0], 1, K.bytes, f) == K.bytes);
    fclose(f);
    kvtc_key key = itest_key(6, 0);
    kvtc_key_to_hex(&key, hexkey);
    char *o = NULL, *e = NULL;
    char *up[] = {kvtc, "-s", d.addr, "profile", "upload", pfile, NULL};
    cr_assert_eq(itest_run(up, &o, &e), 0, "%s", e);
    char idhex[17];
    snprintf(idhex, sizeof idhex, "%016" PRIx64, kvtc_profile_id(K.p));
    cr_assert(strstr(o, idhex), "%s", o);
    free(o);
    free(e);
    char *ls[] = {kvtc, "-s", d.addr, "--json", "profile", "list", NULL};
    cr_assert_eq(itest_run(ls, &o, &e), 0, "%s", e);
    cr_assert(strstr(o, idhex) && strstr(o, "\"ratios\":[4,8]"), "%s", o);
    free(o);
    free(e);
    char *put[] = {kvtc, "-s", d.addr, "put", hexkey, kvfile, "--ratio", "8", NULL};
    cr_assert_eq(itest_run(put, &o, &e), 0, "%s", e);
    free(o);
    free(e);
    char *get[] = {kvtc, "-s", d.addr, "--json", "get", hexkey, out, "--compressed", NULL};
    cr_assert_eq(itest_run(get, &o, &e), 0, "%s", e);
    cr_assert(strstr(o, "\"encoding\":\"kvtc\""), "%s", o);
    free(o);
    free(e);
    size_t elen, glen;
    uint8_t *ec = cpu_encode(K.p, plan_of(K.p, 8), K.chunk[0], &elen);
    float *expect = cpu_decode(K.p, ec, elen);
    void *got = kvtc_test_read_file(out, &glen);
    cr_assert(got && glen == K.bytes && memcmp(got, expect, K.bytes) == 0);
    char pback[400];
    snprintf(pback, sizeof pback, "%s/back.kvtcp", d.dir);
    char *pg[] = {kvtc, "-s", d.addr, "profile", "get", idhex, pback, NULL};
    cr_assert_eq(itest_run(pg, &o, &e), 0, "%s", e);
    free(o);
    free(e);
    size_t bl;
    void *b = kvtc_test_read_file(pback, &bl);
    cr_assert(b && bl == K.plen && memcmp(b, K.pbytes, bl) == 0);
    char *del[] = {kvtc, "-s", d.addr, "profile", "delete", idhex, NULL};
    cr_assert_eq(itest_run(del, &o, &e), 0, "%s", e);
    free(o);
    free(e);
    cr_assert_eq(itest_run(del, &o, &e), 1);
    free(o);
    free(e);
    free(b);
    free(got);
    free(ec);
    free(expect);
    itest_daemon_stop(&d);
}

/* Compressed at rest in every tier: with a disk tier in durable mode the
 * container is what is written, and after kill -9 and a restart (profiles
 * and chunks both from disk) it is served raw and compressed as before. */
Test(codec_serve, compressed_on_disk_across_kill9)
{
    struct itest_daemon d;
    itest_daemon_prepare(&d);
    char data[400], disk[400];
    snprintf(data, sizeof data, "%s/data", d.dir);
    snprintf(disk, sizeof disk, "%s/disk", d.dir);
    const char *extra[] = {"--data-dir", data, "--disk-dir", disk, "--disk-size", "64M",
                           "--durability", "durable", "--codec-device", "cpu", NULL};
    itest_daemon_launch(&d, "64M", 0, extra);
    kvtc_conn *c = itest_connect(&d);
    cr_assert_eq(kvtc_profile_upload(c, K.pbytes, K.plen, NULL, NULL), 0, "%s",
                 kvtc_last_error(c));
    kvtc_key k = itest_key(7, 0);
    cr_assert_eq(put_one(c, k, K.chunk[1], K.bytes, 8, 0, 0, &K.l), 0, "%s",
                 kvtc_last_error(c));
    kvtc_disconnect(c);
    cr_assert_eq(itest_daemon_kill9(&d), 1);
    itest_daemon_launch(&d, "64M", 0, extra);
    c = itest_connect(&d);
    size_t elen;
    uint8_t *ec = cpu_encode(K.p, plan_of(K.p, 8), K.chunk[1], &elen);
    float *expect = cpu_decode(K.p, ec, elen);
    float *got = malloc(K.bytes);
    kvtc_get_item it;
    cr_assert_eq(get_one(c, k, KVTC_WANT_CONTAINER, got, K.bytes, &it), 0, "%s\n%s",
                 kvtc_last_error(c), itest_log_tail(&d));
    cr_assert_eq(it.encoding, KVTC_ENCODING_KVTC);
    cr_assert_eq(it.size, elen);
    cr_assert(memcmp(got, ec, elen) == 0);
    cr_assert_eq(get_one(c, k, KVTC_WANT_RAW, got, K.bytes, &it), 0, "%s", kvtc_last_error(c));
    cr_assert_eq(it.encoding, KVTC_ENCODING_RAW);
    cr_assert(memcmp(got, expect, K.bytes) == 0);
    kvtc_disconnect(c);
    free(got);
    free(ec);
    free(expect);
    itest_daemon_stop(&d);
}

static void count_done(int status, void *arg)
{
    int *n = arg;
    cr_assert_eq(status, 0);
    (*n)++;
}

/* Many puts in flight, each a batch mixing compressed, raw, live-window and
 * client-compressed chunks: codec jobs take chunks of several requests,
 * mixed batches are repacked, and every chunk comes back right both ways. */
Test(codec_serve, concurrent_mixed_batches)
{
    struct itest_daemon d;
    itest_daemon_start(&d, "256M", 0, CPU);
    kvtc_conn *c = itest_connect(&d);
    cr_assert_eq(kvtc_profile_upload(c, K.pbytes, K.plen, NULL, NULL), 0);
    enum { NB = 8, PER = 6 };
    size_t clen;
    uint8_t *ctr = cpu_encode(K.p, plan_of(K.p, 4), K.chunk[2], &clen);
    size_t e8len, e4len;
    uint8_t *e8 = cpu_encode(K.p, plan_of(K.p, 8), K.chunk[0], &e8len);
    uint8_t *e4 = cpu_encode(K.p, plan_of(K.p, 4), K.chunk[1], &e4len);
    float *x8 = cpu_decode(K.p, e8, e8len), *x4 = cpu_decode(K.p, e4, e4len);
    float *xc = cpu_decode(K.p, ctr, clen);
    /* Chunk j of every batch: 0: 8x, 1: raw, 2: 4x, 3: live window, 4:
     * client container, 5: ratio 3 -> the 4x plan. */
    const void *expect[PER] = {x8, K.chunk[1], x4, K.chunk[0], xc, x4};
    static kvtc_put_item items[NB][PER];
    memset(items, 0, sizeof items);
    int done = 0;
    for (int b = 0; b < NB; b++) {
        for (int j = 0; j < PER; j++) {
            kvtc_put_item *it = &items[b][j];
            it->field_mask = KVTC_PUT_FIELD_LAYOUT | KVTC_PUT_FIELD_MEM;
            it->mem = KVTC_MEM_HOST;
            it->key = itest_key(8, (uint32_t)(b * PER + j));
            it->layout = &K.l;
            it->n_tokens = TOK;
            it->size = K.bytes;
            const float r[PER] = {8, 0, 4, 8, 0, 3};
            const float *src[PER] = {K.chunk[0], K.chunk[1], K.chunk[1], K.chunk[0], NULL,
                                     K.chunk[1]};
            it->data = src[j];
            if (r[j] > 0) {
                it->field_mask |= KVTC_PUT_FIELD_RATIO;
                it->target_ratio = r[j];
            }
            if (j == 3) {
                it->field_mask |= KVTC_PUT_FIELD_FLAGS;
                it->flags = KVTC_PUT_LIVE_WINDOW;
            }
            if (j == 4) {
                it->field_mask |= KVTC_PUT_FIELD_ENCODING;
                it->encoding = KVTC_ENCODING_KVTC;
                it->data = ctr;
                it->size = clen;
            }
        }
        kvtc_op_params p = {.field_mask = KVTC_OP_PARAM_FIELD_CALLBACK, .cb = count_done,
                            .arg = &done};
        cr_assert_eq(kvtc_put_batch_async(c, items[b], PER, &p), 0, "%s", kvtc_last_error(c));
    }
    cr_assert_eq(kvtc_wait_all(c, 60000), 0);
    cr_assert_eq(done, NB);
    for (int b = 0; b < NB; b++)
        for (int j = 0; j < PER; j++)
            cr_assert_eq(items[b][j].status, 0, "batch %d chunk %d: %d", b, j,
                         items[b][j].status);
    /* Back in one batch per want, raw and client-decoded. */
    float *buf = malloc((size_t)NB * PER * K.bytes);
    static kvtc_get_item g[NB * PER];
    for (uint32_t want = KVTC_WANT_RAW; want <= KVTC_WANT_KVTC; want++) {
        memset(g, 0, sizeof g);
        memset(buf, 0, (size_t)NB * PER * K.bytes);
        for (int i = 0; i < NB * PER; i++) {
            g[i].field_mask = KVTC_GET_FIELD_WANT | KVTC_GET_FIELD_MEM;
            g[i].mem = KVTC_MEM_HOST;
            g[i].want = want;
            g[i].key = itest_key(8, (uint32_t)i);
            g[i].buf = (char *)buf + (size_t)i * K.bytes;
            g[i].capacity = K.bytes;
        }
        cr_assert_eq(kvtc_get_batch(c, g, NB * PER, NULL), 0, "%s", kvtc_last_error(c));
        for (int i = 0; i < NB * PER; i++) {
            int j = i % PER;
            cr_assert_eq(g[i].size, K.bytes);
            cr_assert(memcmp(g[i].buf, expect[j], K.bytes) == 0, "want %u chunk %d (kind %d)",
                      want, i, j);
            uint32_t enc = want == KVTC_WANT_RAW || j == 1 || j == 3 ? KVTC_ENCODING_RAW
                                                                     : KVTC_ENCODING_KVTC;
            cr_assert_eq(g[i].encoding, enc, "want %u chunk %d", want, i);
        }
    }
    char *body = itest_metrics_body(&d);
    double jobs, enc;
    cr_assert_eq(itest_metric(body, "kvtc_codec_jobs_total", &jobs), 0);
    cr_assert_eq(itest_metric(body, "kvtc_codec_encoded_total", &enc), 0);
    cr_assert_eq(enc, NB * 3); /* chunks 0, 2 and 5 of each batch */
    cr_assert_leq(jobs, NB * 3);
    free(body);
    kvtc_disconnect(c);
    free(buf);
    free(ctr);
    free(e8);
    free(e4);
    free(x8);
    free(x4);
    free(xc);
    itest_daemon_stop(&d);
}

/* Whether kvtcd starts with --codec-device gpu here. It refuses to start
 * without a GPU codec ("--codec-device gpu: no GPU codec ... why=..."),
 * and that line is the skip message; a kvtcd that comes up (port file
 * written) is stopped at once. Returns 1 when it started. */
static int gpu_codec_daemon_starts(const char *dir, char *why, size_t whylen)
{
    char script[2048], bin[1024];
    snprintf(bin, sizeof bin, "%s", kvtc_test_build_path("bin/kvtcd"));
    snprintf(script, sizeof script,
             "pf='%s/gpu-probe.port'; rm -f \"$pf\"; "
             "'%s' --codec-device gpu --listen 127.0.0.1:0 --admin 127.0.0.1:0 "
             "--host-mem 16M --port-file \"$pf\" --log-level warn & p=$!; "
             "i=0; while [ $i -lt 600 ]; do "
             "  if [ -s \"$pf\" ]; then kill -TERM $p; wait $p; exit 100; fi; "
             "  if ! kill -0 $p 2>/dev/null; then wait $p; exit $?; fi; "
             "  sleep 0.1; i=$((i+1)); done; kill -KILL $p; exit 101",
             dir, bin);
    char *argv[] = {"/bin/sh", "-c", script, NULL};
    char *out, *err;
    int code = itest_run(argv, &out, &err);
    const char *line = strstr(err, "no GPU codec");
    snprintf(why, whylen, "%s", err);
    char *nl = strchr(why, '\n');
    if (line) {
        /* The log line itself: "... no GPU codec err=... why=\"...\"". */
        snprintf(why, whylen, "%.*s", (int)strcspn(line, "\n"), line);
    } else if (nl) {
        *nl = '\0';
    }
    free(out);
    free(err);
    cr_assert_neq(code, 101, "kvtcd --codec-device gpu neither started nor exited in 60 s");
    if (code == 100)
        return 1;
    cr_assert(line != NULL, "kvtcd --codec-device gpu exited %d without saying why: %s", code,
              why);
    cr_assert_neq(code, 0, "kvtcd --codec-device gpu without a GPU codec exited 0");
    return 0;
}

/* On the GPU path (fp16 projections, nvCOMP) the daemon's containers and
 * decodes are not the CPU's bytes, but the same format and within the
 * plan's error: the GPU's error at most 1.3x the CPU codec's own plus an
 * fp16 floor, and a GPU decode of the CPU's container within a quarter of
 * the codec error of the CPU's decode of it (the bounds tests/gpu and
 * test_daemon_codec_gpu.c hold the GPU codec to). */
Test(codec_serve, gpu_codec_within_error_bound)
{
    struct itest_daemon d;
    itest_daemon_prepare(&d);
    char why[512];
    if (!gpu_codec_daemon_starts(d.dir, why, sizeof why)) {
        itest_daemon_stop(&d);
        cr_skip_test("kvtcd --codec-device gpu refuses to start here (%s): GPU codec path "
                     "not tested",
                     why);
    }
    const char *extra[] = {"--codec-device", "gpu", NULL};
    itest_daemon_launch(&d, "64M", 0, extra);
    kvtc_conn *c = itest_connect(&d);
    cr_assert_eq(kvtc_profile_upload(c, K.pbytes, K.plen, NULL, NULL), 0, "%s",
                 kvtc_last_error(c));
    const size_t n = K.bytes / 4;
    size_t elen;
    uint8_t *cpu_c = cpu_encode(K.p, plan_of(K.p, 8), K.chunk[0], &elen);
    float *cpu_rec = cpu_decode(K.p, cpu_c, elen);
    double ref = rel_err(K.chunk[0], cpu_rec, n);
    const double floor_ = 2e-5;

    /* Compressed on put by the GPU; raw get decoded by the GPU. */
    kvtc_key key = itest_key(0x6c, 0);
    cr_assert_eq(put_one(c, key, K.chunk[0], K.bytes, 6, 0, 0, &K.l), 0, "%s",
                 kvtc_last_error(c));
    float *got = malloc(K.bytes);
    kvtc_get_item it;
    cr_assert_eq(get_one(c, key, KVTC_WANT_RAW, got, K.bytes, &it), 0, "%s",
                 kvtc_last_error(c));
    cr_assert_eq(it.size, K.bytes);
    double e = rel_err(K.chunk[0], got, n);
    cr_assert(e <= 1.3 * ref + floor_, "GPU enc+dec: relative error %.3g vs CPU %.3g", e, ref);
    /* The GPU's container decoded here on the CPU. */
    cr_assert_eq(get_one(c, key, KVTC_WANT_KVTC, got, K.bytes, &it), 0, "%s",
                 kvtc_last_error(c));
    cr_assert_eq(it.encoding, KVTC_ENCODING_KVTC);
    cr_assert(it.wire_size < K.bytes / 3, "container of %zu bytes", (size_t)it.wire_size);
    e = rel_err(K.chunk[0], got, n);
    cr_assert(e <= 1.3 * ref + floor_, "GPU enc, CPU dec: relative error %.3g vs CPU %.3g", e,
              ref);

    /* The CPU's container stored as is; the daemon decodes it on the GPU. */
    kvtc_key key2 = itest_key(0x6c, 1);
    cr_assert_eq(put_one(c, key2, cpu_c, elen, 0, 0, 1, &K.l), 0, "%s", kvtc_last_error(c));
    cr_assert_eq(get_one(c, key2, KVTC_WANT_RAW, got, K.bytes, &it), 0, "%s",
                 kvtc_last_error(c));
    double d2 = rel_err(cpu_rec, got, n);
    cr_assert(d2 <= 0.25 * ref + floor_,
              "GPU vs CPU decode of one container: relative difference %.3g (codec error %.3g)",
              d2, ref);

    char *body = itest_metrics_body(&d);
    double v = 0;
    cr_assert_eq(itest_metric(body, "kvtc_codec_gpu", &v), 0);
    cr_assert_eq(v, 1, "kvtc_codec_gpu");
    cr_assert_eq(itest_metric(body, "kvtc_codec_gpu_chunks_total", &v), 0);
    cr_assert_geq(v, 2, "chunks coded on the GPU: %g", v);
    free(body);
    kvtc_disconnect(c);
    free(got);
    free(cpu_rec);
    free(cpu_c);
    itest_daemon_stop(&d);
}

/* ---- the daemon-side decode path, timed (issue #6) ------------------------ */

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

/* Best of reps: get n keys in requests of per chunks, want as asked. */
static double time_gets(kvtc_conn *c, uint32_t space, uint32_t n, uint32_t per, uint32_t want,
                        uint8_t *buf, int reps, uint64_t *wire)
{
    double best = 1e30;
    kvtc_get_item *it = calloc(per, sizeof *it);
    for (int r = 0; r < reps; r++) {
        double t0 = now_s();
        *wire = 0;
        for (uint32_t lo = 0; lo < n; lo += per) {
            uint32_t m = n - lo < per ? n - lo : per;
            for (uint32_t i = 0; i < m; i++)
                it[i] = (kvtc_get_item){.field_mask = KVTC_GET_FIELD_MEM | KVTC_GET_FIELD_WANT,
                                        .key = itest_key(space, lo + i),
                                        .buf = buf + (size_t)i * K.bytes,
                                        .capacity = K.bytes, .mem = KVTC_MEM_HOST,
                                        .want = want};
            cr_assert_eq(kvtc_get_batch(c, it, m, NULL), 0, "%s", kvtc_last_error(c));
            for (uint32_t i = 0; i < m; i++) {
                cr_assert_eq(it[i].status, 0, "get %u want %u", lo + i, want);
                *wire += it[i].wire_size;
            }
        }
        double t = now_s() - t0;
        if (t < best)
            best = t;
    }
    free(it);
    return best;
}

/* KVTC_DPATH_BENCH=1: put N chunks compressed by the daemon (target 8) and
 * N raw, then time get want=RAW (the daemon decodes), want=KVTC (as
 * stored) and the raw chunks, best of 3, in requests of PER chunks; once
 * with the decode path as it is and once with KVTCD_DECODE_MALLOC=1 (a
 * malloc'd output per chunk, the path before issue #6). Env: KVTC_DPATH_N
 * (64), KVTC_DPATH_PER (16), KVTC_DPATH_CODEC (cpu; auto on a GPU box),
 * KVTC_DPATH_OUT (JSON file). */
Test(codec_serve, bench_get_raw, .timeout = 600)
{
    if (!getenv("KVTC_DPATH_BENCH"))
        cr_skip_test("set KVTC_DPATH_BENCH=1 for the daemon-side decode timing");
    uint32_t n = getenv("KVTC_DPATH_N") ? (uint32_t)atoi(getenv("KVTC_DPATH_N")) : 64;
    uint32_t per = getenv("KVTC_DPATH_PER") ? (uint32_t)atoi(getenv("KVTC_DPATH_PER")) : 16;
    const char *dev = getenv("KVTC_DPATH_CODEC") ? getenv("KVTC_DPATH_CODEC") : "cpu";
    const char *logdir = getenv("KVTC_DPATH_LOG"); /* keep kvtcd's debug log there */
    const char *extra[] = {"--codec-device", dev, logdir ? "--log-level" : NULL, "debug", NULL};
    uint8_t *buf = malloc((size_t)per * K.bytes);
    FILE *js = getenv("KVTC_DPATH_OUT") ? fopen(getenv("KVTC_DPATH_OUT"), "w") : NULL;
    if (js)
        fprintf(js, "{\"chunk_bytes\": %zu, \"chunks\": %u, \"per_request\": %u, "
                    "\"codec_device\": \"%s\", \"runs\": [",
                K.bytes, n, per, dev);
    printf("dpath bench: %u chunks of %zu bytes, %u per request, codec %s\n", n, K.bytes, per,
           dev);
    for (int old = 1; old >= 0; old--) {
        if (old)
            setenv("KVTCD_DECODE_MALLOC", "1", 1);
        else
            unsetenv("KVTCD_DECODE_MALLOC");
        struct itest_daemon d;
        itest_daemon_prepare(&d);
        char mem[32];
        snprintf(mem, sizeof mem, "%zuM", (size_t)(4 * n * K.bytes >> 20) + 64);
        itest_daemon_launch(&d, mem, 0, extra);
        kvtc_conn *c = itest_connect(&d);
        cr_assert_eq(kvtc_profile_upload(c, K.pbytes, K.plen, NULL, NULL), 0, "%s",
                     kvtc_last_error(c));
        for (uint32_t i = 0; i < n; i++) {
            cr_assert_eq(put_one(c, itest_key(0x70, i), K.chunk[i % 3], K.bytes, 8, 0, 0, &K.l),
                         0, "%s", kvtc_last_error(c));
            cr_assert_eq(put_one(c, itest_key(0x71, i), K.chunk[i % 3], K.bytes, 0, 0, 0, &K.l),
                         0, "%s", kvtc_last_error(c));
        }
        uint64_t w_dec, w_kvtc, w_raw;
        double t_dec = time_gets(c, 0x70, n, per, KVTC_WANT_RAW, buf, 3, &w_dec);
        double t_kvtc = time_gets(c, 0x70, n, per, KVTC_WANT_KVTC, buf, 3, &w_kvtc);
        double t_raw = time_gets(c, 0x71, n, per, KVTC_WANT_RAW, buf, 3, &w_raw);
        double mb = (double)n * K.bytes / 1e6;
        const char *name = old ? "malloc per chunk (before #6)" : "into host-slab blobs";
        printf("| %s | want=RAW decoded %.1f ms (%.0f MB/s) | want=KVTC %.1f ms (%.1fx fewer "
               "bytes) | raw chunks %.1f ms (%.0f MB/s) |\n",
               name, t_dec * 1e3, mb / t_dec, t_kvtc * 1e3, (double)w_dec / (double)w_kvtc,
               t_raw * 1e3, mb / t_raw);
        if (js)
            fprintf(js, "%s{\"path\": \"%s\", \"get_raw_decoded_ms\": %.3f, "
                        "\"get_kvtc_ms\": %.3f, \"get_raw_chunks_ms\": %.3f, "
                        "\"wire_bytes_decoded\": %" PRIu64 ", \"wire_bytes_kvtc\": %" PRIu64 "}",
                    old ? "" : ", ", name, t_dec * 1e3, t_kvtc * 1e3, t_raw * 1e3, w_dec,
                    w_kvtc);
        kvtc_disconnect(c);
        if (logdir) {
            size_t len;
            char *all = kvtc_test_read_file(d.log, &len);
            char path[4096];
            snprintf(path, sizeof path, "%s/kvtcd-%s.log", logdir, old ? "malloc" : "slab");
            FILE *f = fopen(path, "w");
            if (f && all)
                fwrite(all, 1, len, f);
            if (f)
                fclose(f);
            free(all);
        }
        itest_daemon_stop(&d);
    }
    unsetenv("KVTCD_DECODE_MALLOC");
    if (js) {
        fprintf(js, "]}\n");
        fclose(js);
    }
    free(buf);
}
