/* The GPU's XXH3-64 (kernels/xxh3_core.h, split into parallel block sums
 * and a scramble chain) must equal libxxhash on every length class: the
 * container checksums are XXH3-64 and GPU and CPU read each other's. */
#include <criterion/criterion.h>
#include <stdlib.h>
#include <xxhash.h>

#include "../../kernels/xxh3_core.h"

static const uint8_t secret[KVTC_XXH3_SECRET_SIZE] = KVTC_XXH3_SECRET_BYTES;

Test(xxh3_core, every_length_class_matches_libxxhash)
{
    size_t max = 5000;
    uint8_t *buf = malloc(max + 3);
    cr_assert(buf);
    uint64_t s = 12345;
    for (size_t i = 0; i < max + 3; i++) {
        s = s * 6364136223846793005ull + 1442695040888963407ull;
        buf[i] = (uint8_t)(s >> 56);
    }
    /* 0, 1-3, 4-8, 9-16, 17-128, 129-240, long with and without partial
     * blocks; offset 3 for unaligned reads. */
    for (size_t len = 0; len <= max; len += len < 300 ? 1 : 37)
        for (size_t off = 0; off < 4; off += 3)
            cr_assert_eq(kvtc__xxh3_64(buf + off, len, secret), XXH3_64bits(buf + off, len),
                         "len %zu off %zu", len, off);
    free(buf);
}

Test(xxh3_core, large_inputs_and_block_edges)
{
    size_t lens[] = {1024, 1025, 2048, 2049, 65536, 65537, (1u << 20) + 17};
    uint8_t *buf = malloc(lens[6]);
    cr_assert(buf);
    for (size_t i = 0; i < lens[6]; i++)
        buf[i] = (uint8_t)(i * 131 + (i >> 9));
    for (size_t i = 0; i < sizeof lens / sizeof lens[0]; i++)
        cr_assert_eq(kvtc__xxh3_64(buf, lens[i], secret), XXH3_64bits(buf, lens[i]), "len %zu",
                     lens[i]);
    free(buf);
}
