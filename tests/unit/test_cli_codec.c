/* `kvtc codec` on real stories260K KV: calibrate, encode, inspect, decode,
 * and a corrupted container rejected with a non-zero exit. */
#include <criterion/criterion.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "llama_model.h"
#include "test_util.h"

static char dir[200];

static void write_kv(kvtc_llama *m, kvtc_llama_state *s, uint64_t seed, const char *path)
{
    int32_t tok[257];
    cr_assert_eq(kvtc_llama_sample(s, seed, 257, tok), 0);
    size_t n = kvtc_llama_kv_floats(m, 256);
    float *kv = malloc(n * sizeof(float));
    cr_assert_eq(kvtc_llama_export_kv(s, 0, 256, kv), 0);
    FILE *f = fopen(path, "wb");
    cr_assert(f && fwrite(kv, sizeof(float), n, f) == n);
    fclose(f);
    free(kv);
}

static int run(const char *fmt, ...)
{
    char cmd[4096];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(cmd, sizeof cmd, fmt, ap);
    va_end(ap);
    int st = system(cmd);
    return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

Test(cli_codec, calibrate_encode_inspect_decode_on_real_kv)
{
    const char *shared = kvtc_test_shared_path("models/stories260K.bin");
    if (!shared)
        cr_skip_test("../shared/models/stories260K.bin is absent: no real KV to test with");
    char model[4096], bin[4096];
    snprintf(model, sizeof model, "%s", shared);
    const char *kvtc = kvtc_test_build_path("bin/kvtc");
    snprintf(bin, sizeof bin, "%s", kvtc);
    snprintf(dir, sizeof dir, "%s/kvtc-cli-XXXXXX", kvtc_test_tmpdir());
    cr_assert(mkdtemp(dir));
    kvtc_llama *m;
    kvtc_llama_state *s;
    cr_assert_eq(kvtc_llama_load(model, &m), 0);
    cr_assert_eq(kvtc_llama_state_create(m, &s), 0);
    char path[256];
    for (int i = 0; i < 6; i++) {
        snprintf(path, sizeof path, "%s/cal%d.kv", dir, i);
        write_kv(m, s, 100 + i, path);
    }
    snprintf(path, sizeof path, "%s/eval.kv", dir);
    write_kv(m, s, 999, path);
    const char *layout = "layers=5,kv_heads=4,head_dim=8,dtype=fp32,chunk=256,rope=interleaved,theta=10000";
    cr_assert_eq(run("%s codec calibrate --layout %s --targets 4,8 --out %s/p.kvtcp %s/cal*.kv >/dev/null 2>&1",
                     bin, layout, dir, dir), 0);
    cr_assert_eq(run("%s codec inspect --json %s/p.kvtcp > %s/p.json", bin, dir, dir), 0);
    cr_assert_eq(run("%s codec encode --profile %s/p.kvtcp --target 4 --out %s/c.kvtc %s >/dev/null",
                     bin, dir, dir, path), 0);
    cr_assert_eq(run("%s --json codec inspect %s/c.kvtc > %s/c.json", bin, dir, dir), 0);
    char jpath[256];
    snprintf(jpath, sizeof jpath, "%s/c.json", dir);
    size_t jl;
    char *json = kvtc_test_read_file(jpath, &jl);
    cr_assert(json);
    json[jl] = 0;
    cr_assert(strstr(json, "\"kind\":\"container\"") && strstr(json, "\"sink_tokens\":4"), "%s", json);
    free(json);
    cr_assert_eq(run("%s codec decode --profile %s/p.kvtcp --out %s/d.kv %s/c.kvtc >/dev/null",
                     bin, dir, dir, dir), 0);
    /* decoded KV is close to the original, relative to its energy */
    size_t an, bn;
    char dpath[256];
    snprintf(dpath, sizeof dpath, "%s/d.kv", dir);
    float *a = kvtc_test_read_file(path, &an), *b = kvtc_test_read_file(dpath, &bn);
    cr_assert(a && b && an == bn);
    double err = 0, energy = 0;
    for (size_t i = 0; i < an / 4; i++) {
        err += (double)(a[i] - b[i]) * (a[i] - b[i]);
        energy += (double)a[i] * a[i];
    }
    cr_assert_lt(err / energy, 0.02, "relative error %g", err / energy);
    free(a);
    free(b);
    /* one flipped byte: rejected, non-zero exit, one line on stderr */
    cr_assert_eq(run("printf '\\x5a' | dd of=%s/c.kvtc bs=1 seek=300 conv=notrunc status=none", dir), 0);
    cr_assert_eq(run("%s codec decode --profile %s/p.kvtcp --out %s/e.kv %s/c.kvtc 2>/dev/null",
                     bin, dir, dir, dir), 1);
    cr_assert_eq(run("%s codec encode --profile %s/nope.kvtcp --out x %s 2>/dev/null", bin, dir, path), 1);
    cr_assert_eq(run("%s codec frobnicate 2>/dev/null", bin), 2);
    run("rm -rf %s", dir);
    kvtc_llama_state_free(s);
    kvtc_llama_free(m);
}
