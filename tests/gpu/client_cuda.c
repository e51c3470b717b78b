/* GPU-machine check of libkvtc's device-buffer path (no GPU here, so this
 * runs through the device tool): CUDA device memory is put and got through
 * a running kvtcd, staged through pinned host memory when UCX lacks CUDA
 * support, passed straight through where it has it. Mixed host/device
 * batches and an explicit KVTC_MEM_CUDA item are covered.
 *   client_cuda HOST:PORT      prints PASS or the first failure; exit 0/1 */
#include <cuda_runtime_api.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kvtc.h"

#define CHECK(cond, ...)                         \
    do {                                         \
        if (!(cond)) {                           \
            fprintf(stderr, "FAIL: " __VA_ARGS__); \
            fprintf(stderr, "\n");               \
            return 1;                            \
        }                                        \
    } while (0)

static void fill(uint8_t *b, size_t n, uint32_t seed)
{
    uint32_t x = seed * 2654435761u + 1;
    for (size_t i = 0; i < n; i++) {
        x ^= x << 13, x ^= x >> 17, x ^= x << 5;
        b[i] = (uint8_t)x;
    }
}

static kvtc_key key_of(uint32_t i)
{
    kvtc_key k = {{0}};
    memcpy(k.bytes, "gpu-check", 9);
    memcpy(k.bytes + 16, &i, sizeof i);
    return k;
}

int main(int argc, char **argv)
{
    const char *server = argc > 1 ? argv[1] : KVTC_DEFAULT_SERVER;
    int ndev = 0;
    CHECK(cudaGetDeviceCount(&ndev) == cudaSuccess && ndev > 0, "no CUDA device");
    kvtc_conn *c = NULL;
    CHECK(kvtc_connect(server, NULL, &c) == 0, "connect %s: %s", server, kvtc_last_error(NULL));
    kvtc_server_info info;
    kvtc_server_info_get(c, &info);
    printf("device_memory mode: %s\n", info.device_memory == KVTC_DEVICE_MEMORY_STAGED ? "staged"
                                       : info.device_memory == KVTC_DEVICE_MEMORY_DIRECT ? "direct"
                                                                                         : "unsupported");
    CHECK(info.device_memory != KVTC_DEVICE_MEMORY_UNSUPPORTED, "device memory unsupported");

    const size_t sizes[] = {4096, 3u << 20, 33u << 20};
    for (size_t s = 0; s < 3; s++) {
        size_t n = sizes[s];
        uint8_t *h = malloc(n), *back = malloc(n);
        void *d = NULL, *d2 = NULL;
        CHECK(h && back && cudaMalloc(&d, n) == cudaSuccess && cudaMalloc(&d2, n) == cudaSuccess,
              "alloc %zu", n);
        fill(h, n, (uint32_t)s);
        CHECK(cudaMemcpy(d, h, n, cudaMemcpyHostToDevice) == cudaSuccess, "H2D");
        kvtc_key k = key_of((uint32_t)s);
        /* AUTO detection of a device source. */
        CHECK(kvtc_put(c, &k, d, n) == 0, "put device %zu: %s", n, kvtc_last_error(c));
        /* Host destination: the bytes the device held. */
        size_t got = 0;
        memset(back, 0, n);
        CHECK(kvtc_get(c, &k, back, n, &got) == 0 && got == n, "get host %zu: %s", n,
              kvtc_last_error(c));
        CHECK(memcmp(back, h, n) == 0, "device put, host get: bytes differ (%zu)", n);
        /* Device destination (AUTO), then read it back. */
        CHECK(cudaMemset(d2, 0, n) == cudaSuccess, "memset");
        CHECK(kvtc_get(c, &k, d2, n, &got) == 0 && got == n, "get device %zu: %s", n,
              kvtc_last_error(c));
        memset(back, 0, n);
        CHECK(cudaMemcpy(back, d2, n, cudaMemcpyDeviceToHost) == cudaSuccess, "D2H");
        CHECK(memcmp(back, h, n) == 0, "device get: bytes differ (%zu)", n);
        printf("size %zu: device put/get OK\n", n);
        cudaFree(d);
        cudaFree(d2);
        free(h);
        free(back);
    }

    /* A mixed batch: host, device (explicit), device (auto). */
    enum { M = 3, SZ = 1 << 20 };
    uint8_t *hs[M], *hb = malloc(SZ);
    void *dv[M] = {0}, *dd = NULL;
    kvtc_put_item pi[M];
    kvtc_get_item gi[M];
    CHECK(cudaMalloc(&dd, (size_t)M * SZ) == cudaSuccess, "alloc batch");
    for (int i = 0; i < M; i++) {
        hs[i] = malloc(SZ);
        fill(hs[i], SZ, 100 + (uint32_t)i);
        const void *src = hs[i];
        if (i > 0) {
            CHECK(cudaMalloc(&dv[i], SZ) == cudaSuccess, "alloc");
            CHECK(cudaMemcpy(dv[i], hs[i], SZ, cudaMemcpyHostToDevice) == cudaSuccess, "H2D");
            src = dv[i];
        }
        pi[i] = (kvtc_put_item){.key = key_of(100 + (uint32_t)i), .data = src, .size = SZ};
        if (i == 1) {
            pi[i].field_mask = KVTC_PUT_FIELD_MEM;
            pi[i].mem = KVTC_MEM_CUDA;
        }
        gi[i] = (kvtc_get_item){.key = pi[i].key, .buf = (uint8_t *)dd + (size_t)i * SZ,
                                .capacity = SZ};
    }
    CHECK(kvtc_put_batch(c, pi, M, NULL) == 0, "mixed put batch: %s", kvtc_last_error(c));
    CHECK(kvtc_get_batch(c, gi, M, NULL) == 0, "device get batch: %s", kvtc_last_error(c));
    for (int i = 0; i < M; i++) {
        CHECK(cudaMemcpy(hb, (uint8_t *)dd + (size_t)i * SZ, SZ, cudaMemcpyDeviceToHost) == cudaSuccess,
              "D2H");
        CHECK(memcmp(hb, hs[i], SZ) == 0, "batch item %d differs", i);
        free(hs[i]);
        cudaFree(dv[i]);
    }
    printf("mixed host/device batch OK\n");
    cudaFree(dd);
    free(hb);
    kvtc_key all[3 + M];
    for (uint32_t i = 0; i < 3; i++)
        all[i] = key_of(i);
    for (uint32_t i = 0; i < M; i++)
        all[3 + i] = key_of(100 + i);
    kvtc_delete(c, all, 3 + M, NULL, NULL);
    kvtc_disconnect(c);
    printf("PASS\n");
    return 0;
}
