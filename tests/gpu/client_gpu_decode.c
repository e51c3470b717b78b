/* GPU-machine check of libkvtc's decode on the caller's GPU (issue #6),
 * against a running kvtcd: a compressed chunk (a container encoded here on
 * the CPU, put as is) fetched with want=KVTC into a CUDA device buffer.
 *   client_gpu_decode HOST:PORT gpu   libkvtc_gpu loads (KVTC_GPU_LIB): the
 *       item says KVTC_DECODED_GPU and the bytes equal libkvtc_gpu's own
 *       decode of that container exactly, and the CPU decode within the
 *       plan's error (same error to the original, 1.5x margin)
 *   client_gpu_decode HOST:PORT cpu   run with KVTC_GPU_LIB=/nonexistent:
 *       KVTC_DECODED_CPU and the CPU decode's bytes exactly
 * Both modes also run a mixed host/device batch. Prints PASS or the first
 * failure; exit 0/1. */
#include <cuda_runtime_api.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kvtc.h"
#include "kvtc_codec.h"
#include "kvtc_gpu.h"

#define CHECK(cond, ...)                           \
    do {                                           \
        if (!(cond)) {                             \
            fprintf(stderr, "FAIL: " __VA_ARGS__); \
            fprintf(stderr, "\n");                 \
            exit(1);                               \
        }                                          \
    } while (0)

enum { TOK = 64, RANK = 8 };

static double gauss(uint64_t *s)
{
    *s ^= *s << 13; *s ^= *s >> 7; *s ^= *s << 17;
    double u1 = ((*s >> 11) + 1.0) / 9007199254740993.0;
    *s ^= *s << 13; *s ^= *s >> 7; *s ^= *s << 17;
    double u2 = (*s >> 11) / 9007199254740992.0;
    return sqrt(-2 * log(u1)) * cos(2 * M_PI * u2);
}

/* Low-rank KV (a fixed model, tokens vary with seed), as the GPU tests'
 * gt_chunk but without RoPE: compressible, so the plans mean something. */
static void *make_chunk(const kvtc_layout *l, uint64_t seed)
{
    size_t D = kvtc_row_width(l), hd = (size_t)l->kv_heads * l->head_dim;
    float *mix = malloc(sizeof(float) * RANK * D * 2), *f = malloc(sizeof(float) * 2 * D * TOK);
    void *out = malloc(kvtc_chunk_bytes(l, TOK));
    uint64_t ms = 0x5eed1234, ts = seed * 2654435761u + 99;
    for (size_t i = 0; i < RANK * D * 2; i++)
        mix[i] = (float)gauss(&ms) / (float)(1 + (i / D) % RANK);
    for (uint32_t t = 0; t < TOK; t++)
        for (int s = 0; s < 2; s++) {
            double z[RANK];
            for (int r = 0; r < RANK; r++)
                z[r] = gauss(&ts);
            for (size_t j = 0; j < D; j++) {
                double v = 0.3 * sin(0.1 * (double)j) + 0.02 * gauss(&ts);
                for (int r = 0; r < RANK; r++)
                    v += z[r] * mix[((size_t)s * RANK + r) * D + j];
                size_t L = j / hd;
                f[((L * 2 + (size_t)s) * TOK + t) * hd + j % hd] = (float)v;
            }
        }
    kvtc_from_float(l->dtype, f, out, 2 * D * TOK);
    free(mix);
    free(f);
    return out;
}

static double mse(const kvtc_layout *l, const void *a, const void *b)
{
    size_t n = kvtc_chunk_bytes(l, TOK) / kvtc_dtype_size(l->dtype);
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

static kvtc_key key_of(uint32_t i)
{
    kvtc_key k = {{0}};
    memcpy(k.bytes, "gpu-decode", 10);
    memcpy(k.bytes + 16, &i, sizeof i);
    return k;
}

static kvtc_get_item get_item(kvtc_key k, void *buf, size_t cap)
{
    return (kvtc_get_item){.field_mask = KVTC_GET_FIELD_WANT, .key = k, .buf = buf,
                           .capacity = cap, .want = KVTC_WANT_KVTC};
}

int main(int argc, char **argv)
{
    CHECK(argc == 3 && (!strcmp(argv[2], "gpu") || !strcmp(argv[2], "cpu")),
          "usage: client_gpu_decode HOST:PORT gpu|cpu");
    int gpu = !strcmp(argv[2], "gpu");
    uint32_t want_on = gpu ? KVTC_DECODED_GPU : KVTC_DECODED_CPU;
    int ndev = 0;
    CHECK(cudaGetDeviceCount(&ndev) == cudaSuccess && ndev > 0, "no CUDA device");

    /* A profile calibrated here, uploaded, and one container per plan. */
    kvtc_layout l = {.layers = 4, .kv_heads = 2, .head_dim = 32, .dtype = KVTC_DTYPE_FP16,
                     .chunk_tokens = TOK, .rope_style = KVTC_ROPE_NONE, .rope_theta = 10000.0f};
    size_t bytes = kvtc_chunk_bytes(&l, TOK);
    kvtc_calibrator *cal = NULL;
    CHECK(kvtc_calibrator_create(&l, NULL, &cal) == 0, "calibrator");
    for (uint32_t i = 0; i < 32; i++) {
        void *ch = make_chunk(&l, 1000 + i);
        CHECK(kvtc_calibrator_add(cal, ch, TOK, 0) == 0, "calibrator_add");
        free(ch);
    }
    float targets[] = {4, 8};
    kvtc_profile *p0 = NULL, *p = NULL;
    CHECK(kvtc_calibrator_finish(cal, targets, 2, &p0) == 0, "calibrate");
    kvtc_calibrator_free(cal);
    size_t plen = kvtc_profile_size(p0);
    void *pbytes = malloc(plen);
    CHECK(pbytes && kvtc_profile_save(p0, pbytes, plen) == 0, "profile save");
    /* The reference decodes with the bytes libkvtc will load. */
    CHECK(kvtc_profile_load(pbytes, plen, &p) == 0, "profile load");

    kvtc_conn *c = NULL;
    CHECK(kvtc_connect(argv[1], NULL, &c) == 0, "connect %s: %s", argv[1], kvtc_last_error(NULL));
    CHECK(kvtc_profile_upload(c, pbytes, plen, NULL, NULL) == 0, "upload: %s",
          kvtc_last_error(c));

    uint8_t *host = malloc(bytes), *back = malloc(bytes), *ref = malloc(bytes);
    void *d = NULL, *dsrc = NULL;
    int32_t *dstat = NULL;
    CHECK(cudaMalloc(&d, 3 * bytes) == cudaSuccess && cudaMalloc((void **)&dstat, 4) == cudaSuccess,
          "cudaMalloc");
    for (uint32_t plan = 0; plan < 2; plan++) {
        void *orig = make_chunk(&l, 7 + plan);
        kvtc_encoder *enc = NULL;
        CHECK(kvtc_encoder_create(p, plan, KVTC_STAGE_DEFLATE, 0, &enc) == 0, "encoder");
        size_t cap = kvtc_encode_bound(enc, TOK), clen = 0;
        uint8_t *ctr = malloc(cap);
        kvtc_chunk chunk = {.data = orig, .n_tokens = TOK, .first_pos = 0};
        CHECK(kvtc_encode(enc, &chunk, ctr, cap, &clen) == 0, "encode");
        kvtc_encoder_free(enc);
        kvtc_key k = key_of(plan);
        kvtc_put_item pi = {.field_mask = KVTC_PUT_FIELD_LAYOUT | KVTC_PUT_FIELD_ENCODING,
                            .key = k, .data = ctr, .size = clen, .layout = &l,
                            .n_tokens = TOK, .first_pos = 0, .encoding = KVTC_ENCODING_KVTC};
        CHECK(kvtc_put_batch(c, &pi, 1, NULL) == 0 && pi.status == 0, "put container: %s",
              kvtc_last_error(c));

        /* The CPU decode: a host buffer. */
        kvtc_get_item it = get_item(k, host, bytes);
        CHECK(kvtc_get_batch(c, &it, 1, NULL) == 0 && it.size == bytes, "get host: %s",
              kvtc_last_error(c));
        CHECK(it.encoding == KVTC_ENCODING_KVTC && it.wire_size == clen, "travelled raw?");
        CHECK(it.decoded_on == KVTC_DECODED_CPU, "host buffer decoded_on %u", it.decoded_on);

        /* libkvtc_gpu's own decode of the container. */
        kvtc_gpu_codec *g = NULL;
        CHECK(kvtc_gpu_codec_create(p, plan, NULL, &g) == 0, "gpu codec");
        CHECK(cudaMalloc(&dsrc, clen) == cudaSuccess &&
                  cudaMemcpy(dsrc, ctr, clen, cudaMemcpyHostToDevice) == cudaSuccess, "H2D");
        kvtc_gpu_container gc = {.src_off = 0, .src_len = clen, .dst = d, .n_tokens = TOK};
        int32_t st = -1;
        CHECK(kvtc_gpu_decode(g, &gc, 1, dsrc, dstat, NULL) == 0, "gpu decode");
        CHECK(cudaMemcpy(&st, dstat, 4, cudaMemcpyDeviceToHost) == cudaSuccess && st == 0,
              "gpu decode status %d", st);
        CHECK(cudaMemcpy(ref, d, bytes, cudaMemcpyDeviceToHost) == cudaSuccess, "D2H");
        kvtc_gpu_codec_free(g);
        cudaFree(dsrc);

        /* libkvtc into a device buffer (AUTO detection). */
        CHECK(cudaMemset(d, 0, bytes) == cudaSuccess, "memset");
        it = get_item(k, d, bytes);
        CHECK(kvtc_get_batch(c, &it, 1, NULL) == 0 && it.size == bytes, "get device: %s",
              kvtc_last_error(c));
        CHECK(it.decoded_on == want_on, "device buffer decoded_on %u, expected %u",
              it.decoded_on, want_on);
        CHECK(cudaMemcpy(back, d, bytes, cudaMemcpyDeviceToHost) == cudaSuccess, "D2H");
        double e_cpu = mse(&l, orig, host), e_dev = mse(&l, orig, back),
               e_ref = mse(&l, orig, ref);
        printf("plan %u: %zu -> %zu bytes; mse to original: cpu %.3g, device get %.3g, "
               "libkvtc_gpu %.3g; device get vs cpu %.3g\n",
               plan, bytes, clen, e_cpu, e_dev, e_ref, mse(&l, host, back));
        if (gpu)
            CHECK(memcmp(back, ref, bytes) == 0, "plan %u: not libkvtc_gpu's decode", plan);
        else
            CHECK(memcmp(back, host, bytes) == 0, "plan %u: not the CPU decode", plan);
        CHECK(e_dev <= 1.5 * e_cpu + 1e-9, "plan %u: error %.3g vs cpu %.3g", plan, e_dev,
              e_cpu);

        /* A batch: host, device, device (contexts cached by now). */
        kvtc_get_item b[3] = {get_item(k, host, bytes), get_item(k, (uint8_t *)d + bytes, bytes),
                              get_item(k, (uint8_t *)d + 2 * bytes, bytes)};
        CHECK(cudaMemset(d, 0, 3 * bytes) == cudaSuccess, "memset");
        CHECK(kvtc_get_batch(c, b, 3, NULL) == 0, "batch: %s", kvtc_last_error(c));
        CHECK(b[0].decoded_on == KVTC_DECODED_CPU && b[1].decoded_on == want_on &&
                  b[2].decoded_on == want_on, "batch decoded_on %u %u %u", b[0].decoded_on,
              b[1].decoded_on, b[2].decoded_on);
        for (int i = 1; i < 3; i++) {
            CHECK(cudaMemcpy(back, (uint8_t *)d + (size_t)i * bytes, bytes,
                             cudaMemcpyDeviceToHost) == cudaSuccess, "D2H");
            CHECK(memcmp(back, gpu ? ref : host, bytes) == 0, "batch item %d differs", i);
        }
        printf("plan %u: device get decoded on the %s, batch OK\n", plan, gpu ? "GPU" : "CPU");
        kvtc_delete(c, &k, 1, NULL, NULL);
        free(ctr);
        free(orig);
    }
    cudaFree(d);
    cudaFree(dstat);
    kvtc_disconnect(c);
    kvtc_profile_free(p);
    kvtc_profile_free(p0);
    free(pbytes);
    free(host);
    free(back);
    free(ref);
    printf("PASS\n");
    return 0;
}
