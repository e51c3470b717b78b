/* kvtc codec calibrate | encode | decode | inspect: the codec on files.
 *
 * A KV file is one canonical chunk of any number of tokens,
 * [layer][k|v][token][kv_head][head_dim], no header; its layout comes from
 * --layout (calibrate) or from the profile (encode). */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"
#include "kvtc_codec.h"

static int fail(const char *what, int rc)
{
    fprintf(stderr, "kvtc codec: %s: %s\n", what, rc < 0 ? kvtc_strerror(rc) : strerror(rc));
    return 1;
}

static void *read_file(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return NULL;
    void *buf = NULL;
    long n;
    if (fseek(f, 0, SEEK_END) == 0 && (n = ftell(f)) >= 0 && fseek(f, 0, SEEK_SET) == 0 &&
        (buf = malloc(n ? (size_t)n : 1)) && fread(buf, 1, (size_t)n, f) == (size_t)n) {
        *len = (size_t)n;
    } else {
        free(buf);
        buf = NULL;
        errno = errno ? errno : EIO;
    }
    fclose(f);
    return buf;
}

static int write_file(const char *path, const void *buf, size_t len)
{
    FILE *f = fopen(path, "wb");
    if (!f)
        return errno;
    int ok = fwrite(buf, 1, len, f) == len;
    ok = fclose(f) == 0 && ok;
    return ok ? 0 : EIO;
}

static const char *dtype_name(uint32_t d)
{
    return d == KVTC_DTYPE_BF16 ? "bf16" : d == KVTC_DTYPE_FP16 ? "fp16"
         : d == KVTC_DTYPE_FP32 ? "fp32" : d == KVTC_DTYPE_FP8_E4M3 ? "fp8" : "?";
}

static const char *rope_name(uint32_t r)
{
    return r == KVTC_ROPE_INTERLEAVED ? "interleaved" : r == KVTC_ROPE_HALF_SPLIT ? "half" : "none";
}

/* "layers=5,kv_heads=4,head_dim=8,dtype=fp32,chunk=128,rope=interleaved,theta=10000" */
static int parse_layout(const char *spec, kvtc_layout *l)
{
    memset(l, 0, sizeof *l);
    l->dtype = KVTC_DTYPE_BF16;
    l->chunk_tokens = 256;
    l->rope_theta = 10000.0f;
    char *copy = strdup(spec), *save = NULL;
    int rc = 0;
    for (char *kv = strtok_r(copy, ",", &save); kv && !rc; kv = strtok_r(NULL, ",", &save)) {
        char *eq = strchr(kv, '=');
        if (!eq) {
            rc = KVTC_EINVAL;
            break;
        }
        *eq++ = 0;
        char *end;
        unsigned long u = strtoul(eq, &end, 10);
        int num_ok = *end == 0 && *eq;
        if (!strcmp(kv, "layers") && num_ok) l->layers = (uint32_t)u;
        else if (!strcmp(kv, "kv_heads") && num_ok) l->kv_heads = (uint32_t)u;
        else if (!strcmp(kv, "head_dim") && num_ok) l->head_dim = (uint32_t)u;
        else if (!strcmp(kv, "chunk") && num_ok) l->chunk_tokens = (uint32_t)u;
        else if (!strcmp(kv, "theta")) l->rope_theta = strtof(eq, NULL);
        else if (!strcmp(kv, "dtype"))
            l->dtype = !strcmp(eq, "bf16") ? KVTC_DTYPE_BF16 : !strcmp(eq, "fp16") ? KVTC_DTYPE_FP16
                     : !strcmp(eq, "fp32") ? KVTC_DTYPE_FP32 : !strcmp(eq, "fp8") ? KVTC_DTYPE_FP8_E4M3 : 0;
        else if (!strcmp(kv, "rope"))
            l->rope_style = !strcmp(eq, "interleaved") ? KVTC_ROPE_INTERLEAVED
                          : !strcmp(eq, "half") ? KVTC_ROPE_HALF_SPLIT
                          : !strcmp(eq, "none") ? KVTC_ROPE_NONE : 99;
        else
            rc = KVTC_EINVAL;
    }
    free(copy);
    return rc ? rc : kvtc_layout_check(l);
}

static int parse_targets(const char *s, float *t, uint32_t *n)
{
    *n = 0;
    for (const char *p = s; *p && *n < KVTC_MAX_PLANS;) {
        char *end;
        t[(*n)++] = strtof(p, &end);
        if (end == p || t[*n - 1] < 1)
            return KVTC_EINVAL;
        p = *end == ',' ? end + 1 : end;
        if (*end && *end != ',')
            return KVTC_EINVAL;
    }
    return *n ? 0 : KVTC_EINVAL;
}

static int tokens_of(const kvtc_layout *l, size_t len, uint32_t *n)
{
    size_t per = kvtc_chunk_bytes(l, 1);
    if (len == 0 || len % per || len / per > KVTC_MAX_CHUNK_TOKENS)
        return KVTC_EINVAL;
    *n = (uint32_t)(len / per);
    return 0;
}

static int cmd_calibrate(int argc, char **argv)
{
    const char *layout_s = NULL, *out = NULL, *targets_s = "4,8,16,32,64", *weights_s = NULL;
    uint32_t first_pos = 0;
    kvtc_calib_params params = {0};
    int i = 1;
    for (; i < argc && argv[i][0] == '-'; i++) {
        if (!strcmp(argv[i], "--layout") && i + 1 < argc) layout_s = argv[++i];
        else if (!strcmp(argv[i], "--out") && i + 1 < argc) out = argv[++i];
        else if (!strcmp(argv[i], "--targets") && i + 1 < argc) targets_s = argv[++i];
        else if (!strcmp(argv[i], "--first-pos") && i + 1 < argc) first_pos = (uint32_t)strtoul(argv[++i], NULL, 10);
        else if (!strcmp(argv[i], "--max-components") && i + 1 < argc) params.max_components = (uint32_t)strtoul(argv[++i], NULL, 10);
        else if (!strcmp(argv[i], "--max-rows") && i + 1 < argc) params.max_rows = (uint32_t)strtoul(argv[++i], NULL, 10);
        else if (!strcmp(argv[i], "--value-weight") && i + 1 < argc) params.value_weight = strtof(argv[++i], NULL);
        else if (!strcmp(argv[i], "--weights") && i + 1 < argc) weights_s = argv[++i];
        else {
            fprintf(stderr, "kvtc codec calibrate: bad option '%s'\n", argv[i]);
            return 2;
        }
    }
    if (!layout_s || !out || i >= argc) {
        fprintf(stderr, "usage: kvtc codec calibrate --layout SPEC --out PROFILE.kvtcp "
                        "[--targets 4,8,16,32,64] [--first-pos P] [--max-components K]\n"
                        "       [--value-weight W] [--weights K0,V0,K1,V1,...] KVFILE...\n"
                        "  SPEC: layers=L,kv_heads=H,head_dim=D,dtype=bf16|fp16|fp32|fp8,"
                        "chunk=T,rope=interleaved|half|none,theta=X\n"
                        "  each KVFILE is one canonical chunk whose first token is at --first-pos\n"
                        "  --weights: one importance weight per layer's K and V (e.g. sqrt of the\n"
                        "  model's sensitivity), stored in the profile\n");
        return 2;
    }
    kvtc_layout l;
    float targets[KVTC_MAX_PLANS];
    uint32_t nt;
    int rc = parse_layout(layout_s, &l);
    if (rc)
        return fail("--layout", rc);
    if ((rc = parse_targets(targets_s, targets, &nt)))
        return fail("--targets", rc);
    float weights[2 * KVTC_MAX_LAYERS];
    if (weights_s) {
        uint32_t nw = 0;
        for (const char *p = weights_s; *p && nw < 2 * KVTC_MAX_LAYERS;) {
            char *end;
            weights[nw++] = strtof(p, &end);
            if (end == p || (*end && *end != ','))
                return fail("--weights", KVTC_EINVAL);
            p = *end ? end + 1 : end;
        }
        if (nw != 2 * l.layers) {
            fprintf(stderr, "kvtc codec: --weights needs %u values (K and V of each layer)\n",
                    2 * l.layers);
            return 2;
        }
        params.slab_weights = weights;
    }
    kvtc_calibrator *cal;
    if ((rc = kvtc_calibrator_create(&l, &params, &cal)))
        return fail("calibrator", rc);
    for (; i < argc; i++) {
        size_t len;
        uint32_t n;
        void *kv = read_file(argv[i], &len);
        if (!kv) {
            kvtc_calibrator_free(cal);
            return fail(argv[i], errno);
        }
        rc = tokens_of(&l, len, &n);
        if (!rc)
            rc = kvtc_calibrator_add(cal, kv, n, first_pos);
        free(kv);
        if (rc) {
            kvtc_calibrator_free(cal);
            return fail(argv[i], rc);
        }
        fprintf(stderr, "kvtc codec: %s: %u tokens\n", argv[i], n);
    }
    kvtc_profile *p = NULL;
    rc = kvtc_calibrator_finish(cal, targets, nt, &p);
    kvtc_calibrator_free(cal);
    if (rc)
        return fail("calibration", rc);
    rc = kvtc_profile_save_file(p, out);
    if (!rc)
        printf("profile %016llx: %u plans -> %s\n", (unsigned long long)kvtc_profile_id(p),
               kvtc_profile_plan_count(p), out);
    kvtc_profile_free(p);
    return rc ? fail(out, rc) : 0;
}

static int load_profile(const char *path, kvtc_profile **p)
{
    int rc = kvtc_profile_load_file(path, p);
    if (rc)
        fprintf(stderr, "kvtc codec: profile %s: %s\n", path, kvtc_strerror(rc));
    return rc;
}

static int cmd_encode(int argc, char **argv)
{
    const char *prof = NULL, *out = NULL;
    float target = 16;
    uint32_t first_pos = 0, stage = KVTC_STAGE_DEFLATE, flags = 0;
    int level = 0, i = 1;
    for (; i < argc && argv[i][0] == '-'; i++) {
        if (!strcmp(argv[i], "--profile") && i + 1 < argc) prof = argv[++i];
        else if (!strcmp(argv[i], "--out") && i + 1 < argc) out = argv[++i];
        else if (!strcmp(argv[i], "--target") && i + 1 < argc) target = strtof(argv[++i], NULL);
        else if (!strcmp(argv[i], "--first-pos") && i + 1 < argc) first_pos = (uint32_t)strtoul(argv[++i], NULL, 10);
        else if (!strcmp(argv[i], "--level") && i + 1 < argc) level = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--raw")) flags |= KVTC_CHUNK_RAW;
        else if (!strcmp(argv[i], "--stage") && i + 1 < argc) {
            const char *s = argv[++i];
            stage = !strcmp(s, "deflate") ? KVTC_STAGE_DEFLATE : !strcmp(s, "zstd") ? KVTC_STAGE_ZSTD
                  : !strcmp(s, "store") ? KVTC_STAGE_STORE : 99;
        } else {
            fprintf(stderr, "kvtc codec encode: bad option '%s'\n", argv[i]);
            return 2;
        }
    }
    if (!prof || !out || i + 1 != argc) {
        fprintf(stderr, "usage: kvtc codec encode --profile P.kvtcp --out C.kvtc [--target R] "
                        "[--first-pos P] [--stage deflate|zstd|store] [--level N] [--raw] KVFILE\n");
        return 2;
    }
    kvtc_profile *p;
    if (load_profile(prof, &p))
        return 1;
    kvtc_encoder *enc = NULL;
    void *kv = NULL, *buf = NULL;
    size_t len = 0, clen = 0;
    uint32_t n = 0;
    int rc = kvtc_encoder_create(p, kvtc_profile_find_plan(p, target), stage, level, &enc);
    if (rc) {
        rc = fail("encoder", rc);
        goto out;
    }
    if (!(kv = read_file(argv[i], &len))) {
        rc = fail(argv[i], errno);
        goto out;
    }
    if ((rc = tokens_of(kvtc_profile_layout(p), len, &n))) {
        rc = fail("KV file size does not match the profile's layout", rc);
        goto out;
    }
    size_t cap = kvtc_encode_bound(enc, n);
    buf = malloc(cap);
    kvtc_chunk c = {.data = kv, .n_tokens = n, .first_pos = first_pos, .flags = flags};
    if (!buf || (rc = kvtc_encode(enc, &c, buf, cap, &clen)) || (rc = write_file(out, buf, clen))) {
        rc = fail("encode", rc ? rc : KVTC_ENOMEM);
        goto out;
    }
    printf("%u tokens, %zu -> %zu bytes (%.2fx vs bf16)\n", n, len, clen,
           (double)kvtc_chunk_bytes(kvtc_profile_layout(p), n) /
               kvtc_dtype_size(kvtc_profile_layout(p)->dtype) * 2 / (double)clen);
out:
    free(kv);
    free(buf);
    kvtc_encoder_free(enc);
    kvtc_profile_free(p);
    return rc;
}

static int cmd_decode(int argc, char **argv)
{
    const char *prof = NULL, *out = NULL;
    int i = 1;
    for (; i < argc && argv[i][0] == '-'; i++) {
        if (!strcmp(argv[i], "--profile") && i + 1 < argc) prof = argv[++i];
        else if (!strcmp(argv[i], "--out") && i + 1 < argc) out = argv[++i];
        else {
            fprintf(stderr, "kvtc codec decode: bad option '%s'\n", argv[i]);
            return 2;
        }
    }
    if (!out || i + 1 != argc) {
        fprintf(stderr, "usage: kvtc codec decode [--profile P.kvtcp] --out KVFILE C.kvtc\n");
        return 2;
    }
    kvtc_profile *p = NULL;
    if (prof && load_profile(prof, &p))
        return 1;
    kvtc_decoder *dec = NULL;
    size_t len = 0;
    void *buf = read_file(argv[i], &len), *kv = NULL;
    kvtc_container_info info;
    int rc = buf ? 0 : fail(argv[i], errno);
    if (!rc && (rc = kvtc_inspect(buf, len, &info)))
        rc = fail(argv[i], rc);
    if (!rc && (rc = kvtc_decoder_create(p, &dec)))
        rc = fail("decoder", rc);
    if (!rc && !(kv = malloc(info.raw_bytes)))
        rc = fail("decode", KVTC_ENOMEM);
    if (!rc && (rc = kvtc_decode(dec, buf, len, kv, info.raw_bytes, NULL)))
        rc = fail(argv[i], rc);
    if (!rc && (rc = write_file(out, kv, info.raw_bytes)))
        rc = fail(out, rc);
    if (!rc)
        printf("%u tokens -> %s (%llu bytes)\n", info.n_tokens, out,
               (unsigned long long)info.raw_bytes);
    free(buf);
    free(kv);
    kvtc_decoder_free(dec);
    kvtc_profile_free(p);
    return rc;
}

static void print_layout(const kvtc_layout *l, int json)
{
    if (json)
        printf("\"layout\":{\"layers\":%u,\"kv_heads\":%u,\"head_dim\":%u,\"dtype\":\"%s\","
               "\"chunk_tokens\":%u,\"rope\":\"%s\",\"theta\":%g}",
               l->layers, l->kv_heads, l->head_dim, dtype_name(l->dtype), l->chunk_tokens,
               rope_name(l->rope_style), l->rope_theta);
    else
        printf("layout: %u layers x %u kv heads x %u, %s, chunk %u tokens, rope %s theta %g\n",
               l->layers, l->kv_heads, l->head_dim, dtype_name(l->dtype), l->chunk_tokens,
               rope_name(l->rope_style), l->rope_theta);
}

static int cmd_inspect(int json, int argc, char **argv)
{
    int i = 1;
    for (; i < argc && argv[i][0] == '-'; i++) {
        if (!strcmp(argv[i], "--json")) json = 1;
        else {
            fprintf(stderr, "kvtc codec inspect: bad option '%s'\n", argv[i]);
            return 2;
        }
    }
    if (i + 1 != argc) {
        fprintf(stderr, "usage: kvtc codec inspect [--json] FILE.kvtc|FILE.kvtcp\n");
        return 2;
    }
    size_t len = 0;
    void *buf = read_file(argv[i], &len);
    if (!buf)
        return fail(argv[i], errno);
    int rc;
    if (len >= 8 && !memcmp(buf, "KVTCPROF", 8)) {
        kvtc_profile *p;
        if ((rc = kvtc_profile_load(buf, len, &p))) {
            free(buf);
            return fail(argv[i], rc);
        }
        const kvtc_layout *l = kvtc_profile_layout(p);
        double raw_bits = 2.0 * kvtc_row_width(l) * 16;
        if (json) {
            printf("{\"kind\":\"profile\",\"id\":\"%016llx\",\"bytes\":%zu,",
                   (unsigned long long)kvtc_profile_id(p), len);
            print_layout(l, 1);
            printf(",\"plans\":[");
        } else {
            printf("profile %016llx, %zu bytes\n", (unsigned long long)kvtc_profile_id(p), len);
            print_layout(l, 0);
            printf("plan  target  bits/token  ratio(pre-entropy)  mse_key     mse_value   "
                   "components(k+v)  groups\n");
        }
        for (uint32_t j = 0; j < kvtc_profile_plan_count(p); j++) {
            kvtc_plan_info pi;
            kvtc_profile_plan_info(p, j, &pi);
            double r = pi.bits_per_token > 0 ? raw_bits / pi.bits_per_token : 0;
            if (json)
                printf("%s{\"target\":%g,\"bits_per_token\":%g,\"ratio_pre_entropy\":%.3f,"
                       "\"mse_key\":%g,\"mse_value\":%g,\"key_components\":%u,"
                       "\"value_components\":%u,\"groups\":%u}", j ? "," : "", pi.target_ratio,
                       pi.bits_per_token, r, pi.mse_key, pi.mse_value, pi.key_components,
                       pi.value_components, pi.groups);
            else
                printf("%4u  %6.1f  %10.0f  %18.2f  %-10.4g  %-10.4g  %5u+%-5u      %u\n", j,
                       pi.target_ratio, pi.bits_per_token, r, pi.mse_key, pi.mse_value,
                       pi.key_components, pi.value_components, pi.groups);
        }
        if (json)
            printf("]}\n");
        kvtc_profile_free(p);
    } else {
        kvtc_container_info info;
        if ((rc = kvtc_inspect(buf, len, &info))) {
            free(buf);
            return fail(argv[i], rc);
        }
        double bf16 = (double)info.raw_bytes / kvtc_dtype_size(info.layout.dtype) * 2;
        if (json) {
            printf("{\"kind\":\"container\",\"version\":%u,\"mode\":\"%s\",\"stage\":%u,"
                   "\"plan\":%u,\"profile_id\":\"%016llx\",\"first_pos\":%u,\"n_tokens\":%u,"
                   "\"sink_tokens\":%u,\"pieces\":%u,\"bytes\":%llu,\"raw_bytes\":%llu,"
                   "\"ratio_vs_bf16\":%.3f,",
                   info.version, info.mode ? "raw" : "kvtc", info.stage, info.plan,
                   (unsigned long long)info.profile_id, info.first_pos, info.n_tokens,
                   info.sink_tokens, info.pieces, (unsigned long long)info.container_bytes,
                   (unsigned long long)info.raw_bytes, bf16 / info.container_bytes);
            print_layout(&info.layout, 1);
            printf("}\n");
        } else {
            printf("container v%u, %s, stage %u, plan %u, profile %016llx\n", info.version,
                   info.mode ? "raw" : "kvtc", info.stage, info.plan,
                   (unsigned long long)info.profile_id);
            print_layout(&info.layout, 0);
            printf("tokens %u..%u (%u sinks as-is), %u pieces, %llu bytes for %llu raw "
                   "(%.2fx vs bf16); checksums ok\n",
                   info.first_pos, info.first_pos + info.n_tokens - 1, info.sink_tokens,
                   info.pieces, (unsigned long long)info.container_bytes,
                   (unsigned long long)info.raw_bytes, bf16 / info.container_bytes);
        }
    }
    free(buf);
    return 0;
}

int kvtc_cmd_codec(const struct kvtc_cli_global *g, int argc, char **argv)
{
    const char *sub = argc > 1 ? argv[1] : "";
    if (!strcmp(sub, "calibrate")) return cmd_calibrate(argc - 1, argv + 1);
    if (!strcmp(sub, "encode")) return cmd_encode(argc - 1, argv + 1);
    if (!strcmp(sub, "decode")) return cmd_decode(argc - 1, argv + 1);
    if (!strcmp(sub, "inspect")) return cmd_inspect(g->json, argc - 1, argv + 1);
    FILE *f = strcmp(sub, "--help") && strcmp(sub, "-h") ? stderr : stdout;
    fprintf(f, "usage: kvtc codec calibrate|encode|decode|inspect ...\n"
               "  calibrate  build a profile (.kvtcp) from KV files\n"
               "  encode     one KV file -> one container (.kvtc)\n"
               "  decode     one container -> one KV file\n"
               "  inspect    describe and verify a container or a profile\n");
    return f == stdout ? 0 : 2;
}
