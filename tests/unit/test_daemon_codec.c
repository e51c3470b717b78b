/* kvtcd's codec pieces without a network: the profile registry (plan
 * choice, persistence, bad files), and codec jobs on a real libuv loop and
 * thread pool, including the failure paths a stored container can take
 * (corrupted at rest, profile gone) so a bad container is an error, never
 * wrong KV. */
#include <criterion/criterion.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "codec_jobs.h"
#include "profiles.h"
#include "test_util.h"

#define TOK 32

static kvtc_layout L = {.layers = 2, .kv_heads = 2, .head_dim = 8, .dtype = KVTC_DTYPE_FP32,
                        .chunk_tokens = TOK};

/* Correlated rows (a few latent factors), so PCA has something to find. */
static void fill(float *x, uint64_t seed)
{
    size_t w = kvtc_row_width(&L);
    uint64_t s = seed * 0x9e3779b97f4a7c15ull + 1;
    for (size_t t = 0; t < 2 * TOK; t++) {
        float f[3];
        for (int k = 0; k < 3; k++) {
            s = s * 6364136223846793005ull + 1442695040888963407ull;
            f[k] = (float)((s >> 33) % 2001) / 1000.0f - 1.0f;
        }
        for (size_t j = 0; j < w; j++)
            x[t * w + j] = f[0] * (float)(j % 5) + f[1] * (float)(j % 3) - f[2];
    }
}

static kvtc_profile *make_profile(uint64_t seed, const float *t, uint32_t nt)
{
    kvtc_calibrator *cal;
    cr_assert_eq(kvtc_calibrator_create(&L, NULL, &cal), 0);
    float *x = malloc(kvtc_chunk_bytes(&L, TOK));
    for (int i = 0; i < 8; i++) {
        fill(x, seed + (uint64_t)i);
        cr_assert_eq(kvtc_calibrator_add(cal, x, TOK, 64), 0);
    }
    free(x);
    kvtc_profile *p;
    cr_assert_eq(kvtc_calibrator_finish(cal, t, nt, &p), 0);
    kvtc_calibrator_free(cal);
    return p;
}

static kvtcd_profile_ent *ent_of(const kvtc_profile *p)
{
    size_t n = kvtc_profile_size(p);
    void *b = malloc(n);
    cr_assert_eq(kvtc_profile_save(p, b, n), 0);
    kvtcd_profile_ent *e;
    cr_assert_eq(kvtcd_profile_parse(b, n, &e), 0);
    free(b);
    return e;
}

Test(daemon_codec, plan_choice)
{
    const float t[] = {8, 2, 4};
    kvtc_profile *p = make_profile(1, t, 3);
    /* The smallest ratio >= the target, else the highest. */
    cr_assert_eq(kvtcd_profile_pick_plan(p, 1), 1);
    cr_assert_eq(kvtcd_profile_pick_plan(p, 2), 1);
    cr_assert_eq(kvtcd_profile_pick_plan(p, 3), 2);
    cr_assert_eq(kvtcd_profile_pick_plan(p, 5), 0);
    cr_assert_eq(kvtcd_profile_pick_plan(p, 64), 0);
    kvtc_profile_free(p);
}

Test(daemon_codec, registry_persists_and_skips_bad_files)
{
    char dir[256];
    snprintf(dir, sizeof dir, "%s/kvtcd-prof-XXXXXX", kvtc_test_tmpdir());
    cr_assert(mkdtemp(dir));
    const float t[] = {4};
    kvtc_profile *p = make_profile(7, t, 1);
    kvtcd_profiles r;
    cr_assert_eq(kvtcd_profiles_init(&r, dir), 0);
    kvtcd_profile_ent *e = ent_of(p), *got;
    cr_assert_eq(kvtcd_profile_persist(r.dir, e), 0);
    cr_assert_eq(kvtcd_profiles_add(&r, e, &got), 0);
    cr_assert_eq(got, e);
    /* The same id again: the registered one stays, the new one goes. */
    kvtcd_profile_ent *e2 = ent_of(p);
    cr_assert_eq(kvtcd_profiles_add(&r, e2, &got), 0);
    cr_assert_eq(got, e);
    kvtcd_profile_ent *f = kvtcd_profiles_for_layout(&r, &L);
    cr_assert_eq(f, e);
    kvtcd_profile_unref(f);
    kvtc_layout other = L;
    other.chunk_tokens = 64;
    cr_assert_null(kvtcd_profiles_for_layout(&r, &other));
    kvtcd_profiles_fini(&r);
    /* A file that is not a profile, and a truncated copy of a real one. */
    char path[600];
    snprintf(path, sizeof path, "%s/profiles/0000000000000001.kvtcp", dir);
    FILE *fp = fopen(path, "wb");
    fputs("not a profile", fp);
    fclose(fp);
    size_t n = kvtc_profile_size(p);
    void *b = malloc(n);
    kvtc_profile_save(p, b, n);
    snprintf(path, sizeof path, "%s/profiles/0000000000000002.kvtcp", dir);
    fp = fopen(path, "wb");
    fwrite(b, 1, n / 2, fp);
    fclose(fp);
    free(b);
    cr_assert_eq(kvtcd_profiles_init(&r, dir), 0);
    cr_assert_eq(r.loaded, 1);
    cr_assert_eq(r.load_errors, 2);
    kvtcd_profile_ent *back = kvtcd_profiles_get(&r, kvtc_profile_id(p));
    cr_assert_not_null(back);
    kvtcd_profile_unref(back);
    cr_assert_eq(kvtcd_profiles_remove(&r, kvtc_profile_id(p)), 0);
    cr_assert_eq(kvtcd_profiles_remove(&r, kvtc_profile_id(p)), KVTC_ENOENT);
    kvtcd_profiles_fini(&r);
    cr_assert_eq(kvtcd_profiles_init(&r, dir), 0);
    cr_assert_eq(r.loaded, 0);
    kvtcd_profiles_fini(&r);
    kvtc_profile_free(p);
    char cmd[400];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    cr_assert_eq(system(cmd), 0);
}

static void batch_done(kvtcd_codec_batch *b)
{
    (*(int *)b->arg)++;
}

/* Encode 4 chunks and decode them back through jobs, then the failures. */
Test(daemon_codec, jobs_round_trip_and_decode_failures)
{
    uv_loop_t loop;
    cr_assert_eq(uv_loop_init(&loop), 0);
    const float t[] = {4, 8};
    kvtc_profile *p = make_profile(11, t, 2);
    kvtcd_profiles r;
    cr_assert_eq(kvtcd_profiles_init(&r, NULL), 0);
    kvtcd_profile_ent *e, *got;
    cr_assert_eq(kvtcd_profiles_add(&r, ent_of(p), &got), 0);
    e = got;
    kvtcd_codec *cj;
    cr_assert_eq(kvtcd_codec_create(&loop, &r, &cj), 0);

    size_t bytes = kvtc_chunk_bytes(&L, TOK);
    float *x[4];
    kvtcd_codec_item items[4];
    memset(items, 0, sizeof items);
    for (int i = 0; i < 4; i++) {
        x[i] = malloc(bytes);
        fill(x[i], 100 + (uint64_t)i);
        items[i] = (kvtcd_codec_item){.kind = KVTCD_CODEC_ENCODE, .prof = e, .plan = 1,
                                      .src = (const uint8_t *)x[i], .len = bytes,
                                      .n_tokens = TOK, .first_pos = 64};
    }
    int done = 0;
    kvtcd_codec_batch b = {.items = items, .n = 4, .done = batch_done, .arg = &done};
    kvtcd_codec_submit(cj, &b);
    cr_assert_eq(done, 0, "done ran inside submit");
    uv_run(&loop, UV_RUN_DEFAULT);
    cr_assert_eq(done, 1);

    kvtcd_codec_item dec[4];
    memset(dec, 0, sizeof dec);
    for (int i = 0; i < 4; i++) {
        cr_assert_eq(items[i].rc, 0);
        cr_assert_lt(items[i].out_len, bytes / 2);
        dec[i] = (kvtcd_codec_item){.kind = KVTCD_CODEC_DECODE, .src = items[i].out,
                                    .len = items[i].out_len};
    }
    kvtcd_codec_batch db = {.items = dec, .n = 4, .max_out = bytes, .done = batch_done,
                            .arg = &done};
    kvtcd_codec_submit(cj, &db);
    uv_run(&loop, UV_RUN_DEFAULT);
    cr_assert_eq(done, 2);
    kvtc_decoder *cpu;
    cr_assert_eq(kvtc_decoder_create(p, &cpu), 0);
    void *ref = malloc(bytes);
    for (int i = 0; i < 4; i++) {
        cr_assert_eq(dec[i].rc, 0);
        cr_assert_eq(dec[i].out_len, bytes);
        cr_assert_eq(kvtc_decode(cpu, items[i].out, items[i].out_len, ref, bytes, NULL), 0);
        cr_assert(memcmp(ref, dec[i].out, bytes) == 0);
        free(dec[i].out);
    }

    /* At-rest corruption (a payload bit, a header bit), output too large
     * for max_out, and a profile deleted meanwhile: errors, no output. */
    uint8_t *bad1 = malloc(items[0].out_len), *bad2 = malloc(items[1].out_len);
    memcpy(bad1, items[0].out, items[0].out_len);
    bad1[items[0].out_len - 3] ^= 1;
    memcpy(bad2, items[1].out, items[1].out_len);
    bad2[9] ^= 0x10;
    kvtcd_codec_item f[4] = {
        {.kind = KVTCD_CODEC_DECODE, .src = bad1, .len = items[0].out_len},
        {.kind = KVTCD_CODEC_DECODE, .src = bad2, .len = items[1].out_len},
        {.kind = KVTCD_CODEC_DECODE, .src = items[2].out, .len = items[2].out_len},
        {.kind = KVTCD_CODEC_DECODE, .src = items[3].out, .len = items[3].out_len / 2},
    };
    kvtcd_codec_batch fb = {.items = f, .n = 4, .max_out = bytes - 1, .done = batch_done,
                            .arg = &done};
    kvtcd_codec_submit(cj, &fb);
    uv_run(&loop, UV_RUN_DEFAULT);
    cr_assert_eq(f[0].rc, KVTC_ECORRUPT);
    cr_assert_neq(f[1].rc, 0);
    cr_assert_eq(f[2].rc, KVTC_ENOSPC);
    cr_assert_neq(f[3].rc, 0);
    for (int i = 0; i < 4; i++)
        cr_assert_null(f[i].out);

    cr_assert_eq(kvtcd_profiles_remove(&r, kvtc_profile_id(p)), 0);
    kvtcd_codec_item g = {.kind = KVTCD_CODEC_DECODE, .src = items[2].out,
                          .len = items[2].out_len};
    kvtcd_codec_item h = {.kind = KVTCD_CODEC_CHECK, .src = items[2].out,
                          .len = items[2].out_len};
    kvtcd_codec_batch gb = {.items = &g, .n = 1, .max_out = bytes, .done = batch_done,
                            .arg = &done};
    kvtcd_codec_batch hb = {.items = &h, .n = 1, .done = batch_done, .arg = &done};
    kvtcd_codec_submit(cj, &gb);
    kvtcd_codec_submit(cj, &hb);
    uv_run(&loop, UV_RUN_DEFAULT);
    cr_assert_eq(g.rc, KVTC_EPROFILE);
    cr_assert_eq(h.rc, KVTC_EPROFILE);
    cr_assert_null(g.out);
    const kvtcd_codec_stats *st = kvtcd_codec_get_stats(cj);
    cr_assert_eq(st->encoded, 4);
    cr_assert_eq(st->decoded, 4);
    cr_assert_eq(st->failed, 6);
    cr_assert_eq(kvtcd_codec_pending(cj), 0);

    for (int i = 0; i < 4; i++) {
        free(items[i].out);
        free(x[i]);
    }
    free(bad1);
    free(bad2);
    free(ref);
    kvtc_decoder_free(cpu);
    kvtcd_codec_destroy(cj);
    kvtcd_profiles_fini(&r);
    kvtc_profile_free(p);
    cr_assert_eq(uv_loop_close(&loop), 0);
}
