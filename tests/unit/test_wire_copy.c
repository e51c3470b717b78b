/* kvtc_wire_copy_checksum: the copy is exact and its checksum is the
 * one-shot XXH3-64 of the same bytes, across the piece boundaries. */
#include <criterion/criterion.h>
#include <stdlib.h>
#include <string.h>

#include "wire.h"

Test(wire_copy, same_bytes_same_checksum)
{
    static const size_t sizes[] = {0, 1, 240, 65535, 65536, 65537, (1u << 20) + 13, 3u << 20};
    for (size_t k = 0; k < sizeof sizes / sizeof sizes[0]; k++) {
        size_t n = sizes[k];
        uint8_t *src = malloc(n + 1), *dst = malloc(n + 1);
        cr_assert(src && dst);
        for (size_t i = 0; i < n; i++)
            src[i] = (uint8_t)(i * 2654435761u >> 13);
        memset(dst, 0, n + 1);
        dst[n] = 0xa5;
        uint64_t sum = 0;
        cr_assert_eq(kvtc_wire_copy_checksum(dst, src, n, &sum), 0);
        cr_assert_eq(memcmp(dst, src, n), 0, "%zu B copy differs", n);
        cr_assert_eq(dst[n], 0xa5, "%zu B copy ran past the end", n);
        cr_assert_eq(sum, kvtc_wire_checksum(src, n), "%zu B checksum differs", n);
        free(src);
        free(dst);
    }
    uint64_t sum;
    cr_assert_eq(kvtc_wire_copy_checksum(NULL, "x", 1, &sum), KVTC_EINVAL);
}
