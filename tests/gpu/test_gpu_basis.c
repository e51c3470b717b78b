/* The bases a GPU context uploads (kernels/gpu_basis.cu): any split over
 * threads gives the serial formula's bytes, fp16 and bf16, and columns past
 * the coded components are left alone. Host code: runs without a GPU. */
#include <criterion/criterion.h>
#include <stdlib.h>
#include <string.h>

#include "../../codec/internal.h"
#include "../../kernels/gpu_basis.h"

Test(gpu_basis, any_thread_split_equals_the_serial_formula)
{
    enum { GROUP = 40, GROUPS = 25, ROWS = GROUP * GROUPS, NC = 37, KP = 33, LD = 48 };
    float *basis = malloc(sizeof(float) * ROWS * NC), scale[KP], mul[GROUPS];
    uint16_t *ref = malloc(2 * ROWS * LD), *out = malloc(2 * ROWS * LD);
    cr_assert(basis && ref && out);
    uint64_t r = 7;
    for (size_t i = 0; i < (size_t)ROWS * NC; i++) {
        r = r * 6364136223846793005ull + 1442695040888963407ull;
        /* signs, magnitudes from 2^-30 (fp16 subnormals and zeros) up */
        basis[i] = ((int32_t)(r >> 32) / 2147483648.0f) * (float)(1u << (r >> 59)) / 1e9f;
    }
    for (int c = 0; c < KP; c++)
        scale[c] = 0.5f + c * 0.37f;
    for (int g = 0; g < GROUPS; g++)
        mul[g] = 1.0f / (0.8f + g * 0.05f);
    for (int bf16 = 0; bf16 < 2; bf16++) {
        for (int d = 0; d < ROWS; d++)
            for (int c = 0; c < KP; c++) {
                float v = basis[(size_t)d * NC + c] * scale[c] * mul[d / GROUP];
                ref[(size_t)d * LD + c] = bf16 ? kvtc__f32_to_bf16(v) : kvtc__f32_to_f16(v);
            }
        static const unsigned threads[] = {1, 3, 8, 0};
        for (size_t t = 0; t < sizeof threads / sizeof threads[0]; t++) {
            memset(out, 0xA5, 2 * ROWS * LD);
            kvtc__basis16 a = {basis, NC, scale, mul, ROWS, GROUP, KP, LD, bf16, out};
            kvtc__basis16_fill(&a, threads[t]);
            for (int d = 0; d < ROWS; d++) {
                cr_assert(!memcmp(out + (size_t)d * LD, ref + (size_t)d * LD, 2 * KP),
                          "bf16 %d, %u threads: row %d differs", bf16, threads[t], d);
                for (int c = KP; c < LD; c++)
                    cr_assert_eq(out[(size_t)d * LD + c], 0xA5A5, "padding column written");
            }
        }
    }
    free(basis);
    free(ref);
    free(out);
}
