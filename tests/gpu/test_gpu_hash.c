/* test_gpu_hash.c - the GPU's XXH3-64 (kernels/gpu_hash.cu, the container
 * checksums) against the host's (xxh3_core.h, itself checked against
 * libxxhash) on every length class and every start alignment: short inputs,
 * one block, a block plus a partial one, exact multiples of 1 KiB plus one,
 * megabytes (several shared-memory rounds of the chain), at offsets 0..17
 * of an aligned buffer (the block-sum kernel shifts misaligned words). */
#include <criterion/criterion.h>
#include <stdlib.h>
#include <string.h>
#include <xxhash.h>

#include "gpu_test_util.h"
#include "../../kernels/xxh3_core.h"

extern int kvtc__gpu_xxh3_ranges(const uint8_t *const *p, const uint64_t *len, uint32_t n,
                                 uint64_t *out);

Test(gpu_hash, every_length_class_and_alignment_matches_host)
{
    GPU_OR_SKIP();
    static const uint8_t sec[KVTC_XXH3_SECRET_SIZE] = KVTC_XXH3_SECRET_BYTES;
    const uint64_t lens[] = {0,    1,    3,    4,    8,    9,    16,    17,    100,
                             128,  129,  240,  241,  1023,  1024, 1025,  1087,  2048,
                             2049, 5000, 65536 + 7, 300000, (1u << 20) + 1, 1700003};
    const uint32_t nl = sizeof lens / sizeof lens[0], no = 18, n = nl * no;
    uint64_t size = (1u << 21) + 64;
    uint8_t *h = malloc(size), *d = NULL;
    const uint8_t **p = malloc(sizeof(*p) * n);
    uint64_t *len = malloc(sizeof(*len) * n), *out = malloc(sizeof(*out) * n);
    cr_assert(h && p && len && out);
    uint32_t x = 12345;
    for (uint64_t i = 0; i < size; i++) {
        x = x * 1103515245u + 12345u;
        h[i] = (uint8_t)(x >> 16);
    }
    CUDA_OK(cudaMalloc((void **)&d, size));
    CUDA_OK(cudaMemcpy(d, h, size, cudaMemcpyHostToDevice));
    for (uint32_t a = 0; a < no; a++)
        for (uint32_t k = 0; k < nl; k++) {
            p[a * nl + k] = d + a;
            len[a * nl + k] = lens[k];
        }
    cr_assert_eq(kvtc__gpu_xxh3_ranges(p, len, n, out), 0);
    for (uint32_t a = 0; a < no; a++)
        for (uint32_t k = 0; k < nl; k++) {
            uint64_t want = kvtc__xxh3_64(h + a, lens[k], sec);
            cr_assert_eq(want, (uint64_t)XXH3_64bits(h + a, lens[k]), "host core vs libxxhash");
            cr_assert_eq(out[a * nl + k], want, "offset %u length %llu: GPU %016llx host %016llx", a,
                         (unsigned long long)lens[k], (unsigned long long)out[a * nl + k],
                         (unsigned long long)want);
        }
    CUDA_OK(cudaFree(d));
    free(h);
    free(p);
    free(len);
    free(out);
}
