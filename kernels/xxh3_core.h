/* xxh3_core.h - XXH3-64 (seed 0, default secret), written so one copy
 * compiles for the host (C11) and the device (CUDA), and split so the long
 * path runs in parallel: within a 1 KiB block the accumulator update is a
 * sum, so blocks are summed independently (kvtc__xxh3_block_sum) and only
 * the cheap per-lane scramble chain stays sequential (kvtc__xxh3_chain).
 * The container checksums are XXH3-64, so GPU and CPU must agree bit for
 * bit; tests/unit/test_xxh3_core.c checks every length class against
 * libxxhash. Reads are byte-wise: callers pass unaligned pointers. */
#ifndef KVTC_KERNELS_XXH3_CORE_H
#define KVTC_KERNELS_XXH3_CORE_H

#include <stddef.h>
#include <stdint.h>

#ifdef __CUDACC__
#define KVTC_HD __host__ __device__ static inline
#define KVTC_XXH3_SECRET_QUAL __device__ __constant__
#else
#define KVTC_HD static inline
#define KVTC_XXH3_SECRET_QUAL
#endif

#define KVTC_XXH3_BLOCK 1024u  /* 16 stripes of 64 bytes */
#define KVTC_XXH3_STRIPES 16u
#define KVTC_XXH_P32_1 0x9E3779B1u
#define KVTC_XXH_P32_2 0x85EBCA77u
#define KVTC_XXH_P32_3 0xC2B2AE3Du
#define KVTC_XXH_P64_1 0x9E3779B185EBCA87ull
#define KVTC_XXH_P64_2 0xC2B2AE3D27D4EB4Full
#define KVTC_XXH_P64_3 0x165667B19E3779F9ull
#define KVTC_XXH_P64_4 0x85EBCA77C2B2AE63ull
#define KVTC_XXH_P64_5 0x27D4EB2F165667C5ull

/* The default secret, as bytes; a host copy and a device copy. */
#define KVTC_XXH3_SECRET_BYTES                                                                   \
    {0xb8, 0xfe, 0x6c, 0x39, 0x23, 0xa4, 0x4b, 0xbe, 0x7c, 0x01, 0x81, 0x2c, 0xf7, 0x21, 0xad, 0x1c, \
     0xde, 0xd4, 0x6d, 0xe9, 0x83, 0x90, 0x97, 0xdb, 0x72, 0x40, 0xa4, 0xa4, 0xb7, 0xb3, 0x67, 0x1f, \
     0xcb, 0x79, 0xe6, 0x4e, 0xcc, 0xc0, 0xe5, 0x78, 0x82, 0x5a, 0xd0, 0x7d, 0xcc, 0xff, 0x72, 0x21, \
     0xb8, 0x08, 0x46, 0x74, 0xf7, 0x43, 0x24, 0x8e, 0xe0, 0x35, 0x90, 0xe6, 0x81, 0x3a, 0x26, 0x4c, \
     0x3c, 0x28, 0x52, 0xbb, 0x91, 0xc3, 0x00, 0xcb, 0x88, 0xd0, 0x65, 0x8b, 0x1b, 0x53, 0x2e, 0xa3, \
     0x71, 0x64, 0x48, 0x97, 0xa2, 0x0d, 0xf9, 0x4e, 0x38, 0x19, 0xef, 0x46, 0xa9, 0xde, 0xac, 0xd8, \
     0xa8, 0xfa, 0x76, 0x3f, 0xe3, 0x9c, 0x34, 0x3f, 0xf9, 0xdc, 0xbb, 0xc7, 0xc7, 0x0b, 0x4f, 0x1d, \
     0x8a, 0x51, 0xe0, 0x4b, 0xcd, 0xb4, 0x59, 0x31, 0xc8, 0x9f, 0x7e, 0xc9, 0xd9, 0x78, 0x73, 0x64, \
     0xea, 0xc5, 0xac, 0x83, 0x34, 0xd3, 0xeb, 0xc3, 0xc5, 0x81, 0xa0, 0xff, 0xfa, 0x13, 0x63, 0xeb, \
     0x17, 0x0d, 0xdd, 0x51, 0xb7, 0xf0, 0xda, 0x49, 0xd3, 0x16, 0x55, 0x26, 0x29, 0xd4, 0x68, 0x9e, \
     0x2b, 0x16, 0xbe, 0x58, 0x7d, 0x47, 0xa1, 0xfc, 0x8f, 0xf8, 0xb8, 0xd1, 0x7a, 0xd0, 0x31, 0xce, \
     0x45, 0xcb, 0x3a, 0x8f, 0x95, 0x16, 0x04, 0x28, 0xaf, 0xd7, 0xfb, 0xca, 0xbb, 0x4b, 0x40, 0x7e}
#define KVTC_XXH3_SECRET_SIZE 192u

KVTC_HD uint64_t kvtc__rd64(const uint8_t *p)
{
    uint64_t v = 0;
    for (int i = 7; i >= 0; i--)
        v = v << 8 | p[i];
    return v;
}
KVTC_HD uint32_t kvtc__rd32(const uint8_t *p)
{
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}
KVTC_HD uint64_t kvtc__mul128_fold64(uint64_t a, uint64_t b)
{
#ifdef __CUDA_ARCH__
    return (a * b) ^ __umul64hi(a, b);
#else
    __uint128_t p = (__uint128_t)a * b;
    return (uint64_t)p ^ (uint64_t)(p >> 64);
#endif
}
KVTC_HD uint64_t kvtc__xxh64_avalanche(uint64_t h)
{
    h ^= h >> 33;
    h *= KVTC_XXH_P64_2;
    h ^= h >> 29;
    h *= KVTC_XXH_P64_3;
    return h ^ (h >> 32);
}
KVTC_HD uint64_t kvtc__xxh3_avalanche(uint64_t h)
{
    h ^= h >> 37;
    h *= 0x165667919E3779F9ull;
    return h ^ (h >> 32);
}
KVTC_HD uint64_t kvtc__rotl64(uint64_t x, int r) { return (x << r) | (x >> (64 - r)); }
KVTC_HD uint64_t kvtc__xxh3_mix16(const uint8_t *in, const uint8_t *sec)
{
    return kvtc__mul128_fold64(kvtc__rd64(in) ^ kvtc__rd64(sec), kvtc__rd64(in + 8) ^ kvtc__rd64(sec + 8));
}

/* Inputs of at most 240 bytes (the whole hash). */
KVTC_HD uint64_t kvtc__xxh3_short(const uint8_t *in, size_t len, const uint8_t *sec)
{
    if (len == 0)
        return kvtc__xxh64_avalanche(kvtc__rd64(sec + 56) ^ kvtc__rd64(sec + 64));
    if (len <= 3) {
        uint32_t comb = (uint32_t)in[0] << 16 | (uint32_t)in[len >> 1] << 24 | in[len - 1] |
                        (uint32_t)len << 8;
        uint64_t flip = (uint64_t)(kvtc__rd32(sec) ^ kvtc__rd32(sec + 4));
        return kvtc__xxh64_avalanche((uint64_t)comb ^ flip);
    }
    if (len <= 8) {
        uint32_t i1 = kvtc__rd32(in), i2 = kvtc__rd32(in + len - 4);
        uint64_t flip = kvtc__rd64(sec + 8) ^ kvtc__rd64(sec + 16);
        uint64_t h = ((uint64_t)i2 + ((uint64_t)i1 << 32)) ^ flip;
        h ^= kvtc__rotl64(h, 49) ^ kvtc__rotl64(h, 24);
        h *= 0x9FB21C651E98DF25ull;
        h ^= (h >> 35) + len;
        h *= 0x9FB21C651E98DF25ull;
        return h ^ (h >> 28);
    }
    if (len <= 16) {
        uint64_t lo = kvtc__rd64(in) ^ (kvtc__rd64(sec + 24) ^ kvtc__rd64(sec + 32));
        uint64_t hi = kvtc__rd64(in + len - 8) ^ (kvtc__rd64(sec + 40) ^ kvtc__rd64(sec + 48));
        uint64_t swp = 0;
        for (int i = 0; i < 8; i++)
            swp = swp << 8 | ((lo >> (8 * i)) & 0xff);
        return kvtc__xxh3_avalanche(len + swp + hi + kvtc__mul128_fold64(lo, hi));
    }
    uint64_t acc = len * KVTC_XXH_P64_1;
    if (len <= 128) {
        if (len > 32) {
            if (len > 64) {
                if (len > 96) {
                    acc += kvtc__xxh3_mix16(in + 48, sec + 96);
                    acc += kvtc__xxh3_mix16(in + len - 64, sec + 112);
                }
                acc += kvtc__xxh3_mix16(in + 32, sec + 64);
                acc += kvtc__xxh3_mix16(in + len - 48, sec + 80);
            }
            acc += kvtc__xxh3_mix16(in + 16, sec + 32);
            acc += kvtc__xxh3_mix16(in + len - 32, sec + 48);
        }
        acc += kvtc__xxh3_mix16(in, sec);
        acc += kvtc__xxh3_mix16(in + len - 16, sec + 16);
        return kvtc__xxh3_avalanche(acc);
    }
    for (int i = 0; i < 8; i++)
        acc += kvtc__xxh3_mix16(in + 16 * i, sec + 16 * i);
    acc = kvtc__xxh3_avalanche(acc);
    int rounds = (int)len / 16;
    for (int i = 8; i < rounds; i++)
        acc += kvtc__xxh3_mix16(in + 16 * i, sec + 16 * (i - 8) + 3);
    acc += kvtc__xxh3_mix16(in + len - 16, sec + 136 - 17);
    return kvtc__xxh3_avalanche(acc);
}

/* One stripe's contribution to accumulator lane `lane` (long inputs):
 * lane gets data_val of word lane^1 and the product of its own word. */
KVTC_HD uint64_t kvtc__xxh3_stripe_lane(const uint8_t *stripe, const uint8_t *sec, int lane)
{
    uint64_t v = kvtc__rd64(stripe + 8 * lane), k = v ^ kvtc__rd64(sec + 8 * lane);
    return kvtc__rd64(stripe + 8 * (lane ^ 1)) + (uint64_t)(uint32_t)k * (k >> 32);
}
/* Sum over the 16 stripes of one full 1 KiB block, for lane `lane`. */
KVTC_HD uint64_t kvtc__xxh3_block_sum(const uint8_t *block, const uint8_t *sec, int lane)
{
    uint64_t s = 0;
    for (unsigned n = 0; n < KVTC_XXH3_STRIPES; n++)
        s += kvtc__xxh3_stripe_lane(block + 64 * n, sec + 8 * n, lane);
    return s;
}
KVTC_HD uint64_t kvtc__xxh3_init_lane(int lane)
{
    const uint64_t init[8] = {KVTC_XXH_P32_3, KVTC_XXH_P64_1, KVTC_XXH_P64_2, KVTC_XXH_P64_3,
                              KVTC_XXH_P64_4, KVTC_XXH_P32_2, KVTC_XXH_P64_5, KVTC_XXH_P32_1};
    return init[lane];
}
/* After a full block: acc += its sum, then the scramble. */
KVTC_HD uint64_t kvtc__xxh3_chain(uint64_t acc, uint64_t block_sum, const uint8_t *sec, int lane)
{
    acc += block_sum;
    acc ^= acc >> 47;
    acc ^= kvtc__rd64(sec + KVTC_XXH3_SECRET_SIZE - 64 + 8 * lane);
    return acc * KVTC_XXH_P32_1;
}
/* Number of full blocks of a long input (len > 240). */
KVTC_HD uint64_t kvtc__xxh3_nblocks(uint64_t len) { return (len - 1) / KVTC_XXH3_BLOCK; }
/* The tail of a long input for one lane: the partial block after the
 * full ones, then the last stripe. */
KVTC_HD uint64_t kvtc__xxh3_tail_lane(uint64_t acc, const uint8_t *in, uint64_t len,
                                      const uint8_t *sec, int lane)
{
    uint64_t nb = kvtc__xxh3_nblocks(len);
    uint64_t stripes = ((len - 1) - KVTC_XXH3_BLOCK * nb) / 64;
    for (uint64_t n = 0; n < stripes; n++)
        acc += kvtc__xxh3_stripe_lane(in + nb * KVTC_XXH3_BLOCK + 64 * n, sec + 8 * n, lane);
    return acc + kvtc__xxh3_stripe_lane(in + len - 64, sec + KVTC_XXH3_SECRET_SIZE - 64 - 7, lane);
}
KVTC_HD uint64_t kvtc__xxh3_merge(const uint64_t acc[8], uint64_t len, const uint8_t *sec)
{
    uint64_t r = len * KVTC_XXH_P64_1;
    for (int i = 0; i < 4; i++)
        r += kvtc__mul128_fold64(acc[2 * i] ^ kvtc__rd64(sec + 11 + 16 * i),
                                 acc[2 * i + 1] ^ kvtc__rd64(sec + 11 + 16 * i + 8));
    return kvtc__xxh3_avalanche(r);
}
/* The whole hash, sequentially (host reference of the split; also used on
 * the device for short inputs). */
KVTC_HD uint64_t kvtc__xxh3_64(const uint8_t *in, uint64_t len, const uint8_t *sec)
{
    if (len <= 240)
        return kvtc__xxh3_short(in, (size_t)len, sec);
    uint64_t acc[8];
    uint64_t nb = kvtc__xxh3_nblocks(len);
    for (int l = 0; l < 8; l++) {
        acc[l] = kvtc__xxh3_init_lane(l);
        for (uint64_t b = 0; b < nb; b++)
            acc[l] = kvtc__xxh3_chain(acc[l], kvtc__xxh3_block_sum(in + b * KVTC_XXH3_BLOCK, sec, l),
                                      sec, l);
        acc[l] = kvtc__xxh3_tail_lane(acc[l], in, len, sec, l);
    }
    return kvtc__xxh3_merge(acc, len, sec);
}

#endif
