/* repair.h - recompute the checksums of a (damaged) container, so tests and
 * fuzzers reach the decoder's checks behind them: a container whose
 * checksums match but whose sizes, tables or DEFLATE streams lie is what a
 * buggy or hostile encoder produces, and checksums alone do not stop it.
 *
 * Follows container format v1 (codec/container.c, docs/container.md):
 * a 152-byte header whose u64 section sizes sit at 88 (raw), 96 (table),
 * 104 (payload), their XXH3-64 sums at 120, 128, 136, and the header's own
 * XXH3-64 over bytes [0, 144) at 144. The corruption tests check that
 * repairing a pristine container changes nothing, so a format change shows
 * up as a failing test, not as silently weaker fuzzing.
 *
 * Profiles (.kvtcp, codec/profile.c) end in the XXH3-64 of everything
 * before them; repair_profile_checksum rewrites it. */
#ifndef KVTC_TEST_REPAIR_H
#define KVTC_TEST_REPAIR_H

#include <stddef.h>
#include <stdint.h>
#include <xxhash.h>

#define REPAIR_HEADER 152u

static inline uint64_t repair_get64(const uint8_t *p)
{
    uint64_t v = 0;
    for (int i = 7; i >= 0; i--)
        v = v << 8 | p[i];
    return v;
}

static inline void repair_put64(uint8_t *p, uint64_t v)
{
    for (int i = 0; i < 8; i++)
        p[i] = (uint8_t)(v >> (8 * i));
}

/* Rewrite every checksum of buf[0..len) that its header lets us locate;
 * sections that do not fit in len keep their old sums. */
static inline void repair_checksums(uint8_t *buf, size_t len)
{
    if (len < REPAIR_HEADER)
        return;
    uint64_t off = REPAIR_HEADER;
    for (int s = 0; s < 3; s++) {
        uint64_t n = repair_get64(buf + 88 + 8 * s);
        if (n > len || off > len - n)
            break;
        repair_put64(buf + 120 + 8 * s, XXH3_64bits(buf + off, (size_t)n));
        off += n;
    }
    repair_put64(buf + 144, XXH3_64bits(buf, 144));
}

static inline void repair_profile_checksum(uint8_t *buf, size_t len)
{
    if (len >= 8)
        repair_put64(buf + len - 8, XXH3_64bits(buf, len - 8));
}

#endif
