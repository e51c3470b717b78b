/* symbols.c - packing of quantized groups. Per group: T fp16 shifts, T fp16
 * scales (in the parameter areas; none for static groups, whose pair is in
 * the plan), then T*size codes of 2, 4 or 8 bits,
 * token-major, little-endian within each byte. */
#include <string.h>

#include "symbols.h"

static void put16(uint8_t *p, uint16_t v)
{
    p[0] = (uint8_t)v;
    p[1] = (uint8_t)(v >> 8);
}

static uint16_t get16(const uint8_t *p) { return (uint16_t)(p[0] | p[1] << 8); }

void kvtc__pack_groups(const struct kvtc__plan *plan, uint32_t g0, uint32_t g1,
                       const float *coef, uint32_t k, uint32_t T, const size_t *shift_off,
                       const size_t *scale_off, const size_t *code_off, uint8_t *sym)
{
    uint8_t codes[KVTC__MAX_GROUP];
    for (uint32_t g = g0; g < g1; g++) {
        const struct kvtc__group *gr = &plan->groups[g];
        uint32_t bits = kvtc__qtype_bits(gr->type), per_byte = 8 / bits;
        uint8_t *out = sym + code_off[g];
        for (uint32_t t = 0; t < T; t++) {
            const float *x = coef + (size_t)t * k + gr->start;
            if (gr->is_static) {
                kvtc__quantize_fixed(gr->type, x, gr->size, NULL, gr->sshift, gr->sscale, codes);
            } else {
                uint16_t sh, sc;
                kvtc__quantize_group(gr->type, x, gr->size, NULL, &sh, &sc, codes);
                put16(sym + shift_off[g] + 2 * (size_t)t, sh);
                put16(sym + scale_off[g] + 2 * (size_t)t, sc);
            }
            size_t base = (size_t)t * gr->size;
            if (bits == 8) {
                memcpy(out + base, codes, gr->size);
                continue;
            }
            for (uint32_t j = 0; j < gr->size; j++) {
                size_t i = base + j;
                out[i / per_byte] |= (uint8_t)(codes[j] << (bits * (i % per_byte)));
            }
        }
    }
}

int kvtc__unpack_groups(const struct kvtc__plan *plan, uint32_t g0, uint32_t g1,
                        const uint8_t *sym, uint32_t k, uint32_t T, const size_t *shift_off,
                        const size_t *scale_off, const size_t *code_off, float *coef)
{
    uint8_t codes[KVTC__MAX_GROUP];
    for (uint32_t g = g0; g < g1; g++) {
        const struct kvtc__group *gr = &plan->groups[g];
        uint32_t bits = kvtc__qtype_bits(gr->type), per_byte = 8 / bits;
        uint8_t mask = (uint8_t)((1u << bits) - 1);
        const uint8_t *in = sym + code_off[g];
        for (uint32_t t = 0; t < T; t++) {
            size_t base = (size_t)t * gr->size;
            if (bits == 8) {
                memcpy(codes, in + base, gr->size);
            } else {
                for (uint32_t j = 0; j < gr->size; j++) {
                    size_t i = base + j;
                    codes[j] = (uint8_t)((in[i / per_byte] >> (bits * (i % per_byte))) & mask);
                }
            }
            uint16_t sh = gr->is_static ? gr->sshift : get16(sym + shift_off[g] + 2 * (size_t)t);
            uint16_t sc = gr->is_static ? gr->sscale : get16(sym + scale_off[g] + 2 * (size_t)t);
            int rc = kvtc__dequantize_group(gr->type, codes, gr->size, sh, sc,
                                            coef + (size_t)t * k + gr->start);
            if (rc)
                return rc;
        }
    }
    return 0;
}
