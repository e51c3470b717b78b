/* entropy.c - the lossless stage over the symbol bytes: independent pieces
 * of at most 64 KiB, each raw DEFLATE (libdeflate; any zlib inflates it with
 * windowBits -15), a zstd frame, or stored. Independent pieces let a GPU
 * decode them in parallel and bound the work any one corrupt piece costs. */
#include <libdeflate.h>
#include <stdlib.h>
#include <string.h>
#include <zstd.h>

#include "bytes.h"
#include "container.h"

struct kvtc__entropy {
    uint32_t stage;
    int level;
    struct libdeflate_compressor *dc;
    struct libdeflate_decompressor *dd;
    ZSTD_CCtx *zc;
    ZSTD_DCtx *zd;
};

int kvtc__entropy_create(uint32_t stage, int level, struct kvtc__entropy **out)
{
    if (stage > KVTC_STAGE_STORE)
        return KVTC_EINVAL;
    if (stage == KVTC_STAGE_DEFLATE && (level < 0 || level > 12))
        return KVTC_EINVAL;
    if (stage == KVTC_STAGE_ZSTD && (level < 0 || level > 19))
        return KVTC_EINVAL;
    struct kvtc__entropy *e = calloc(1, sizeof *e);
    if (!e)
        return KVTC_ENOMEM;
    e->stage = stage;
    e->level = level ? level : stage == KVTC_STAGE_ZSTD ? 3 : 6;
    *out = e;
    return 0;
}

void kvtc__entropy_free(struct kvtc__entropy *e)
{
    if (!e)
        return;
    if (e->dc)
        libdeflate_free_compressor(e->dc);
    if (e->dd)
        libdeflate_free_decompressor(e->dd);
    ZSTD_freeCCtx(e->zc);
    ZSTD_freeDCtx(e->zd);
    free(e);
}

uint32_t kvtc__entropy_stage(const struct kvtc__entropy *e) { return e->stage; }

static int need_compressor(struct kvtc__entropy *e)
{
    if (e->stage == KVTC_STAGE_DEFLATE && !e->dc)
        e->dc = libdeflate_alloc_compressor(e->level);
    if (e->stage == KVTC_STAGE_ZSTD && !e->zc)
        e->zc = ZSTD_createCCtx();
    return (e->stage == KVTC_STAGE_DEFLATE && !e->dc) || (e->stage == KVTC_STAGE_ZSTD && !e->zc)
               ? KVTC_ENOMEM
               : 0;
}

static size_t piece_bound(struct kvtc__entropy *e, size_t n)
{
    switch (e->stage) {
    case KVTC_STAGE_DEFLATE: return libdeflate_deflate_compress_bound(e->dc, n);
    case KVTC_STAGE_ZSTD: return ZSTD_compressBound(n);
    default: return n;
    }
}

size_t kvtc__entropy_bound(struct kvtc__entropy *e, size_t symbol_bytes)
{
    if (need_compressor(e))
        return 0;
    size_t pieces = kvtc__n_pieces(symbol_bytes), full = symbol_bytes / KVTC_PIECE_MAX;
    size_t total = full * piece_bound(e, KVTC_PIECE_MAX);
    if (pieces > full)
        total += piece_bound(e, symbol_bytes - full * KVTC_PIECE_MAX);
    return total;
}

int kvtc__entropy_encode(struct kvtc__entropy *e, const uint8_t *sym, size_t n, uint8_t *table,
                         uint8_t *dst, size_t cap, size_t *used)
{
    int rc = need_compressor(e);
    if (rc)
        return rc;
    size_t off = 0;
    for (size_t i = 0; i * KVTC_PIECE_MAX < n; i++) {
        const uint8_t *in = sym + i * KVTC_PIECE_MAX;
        size_t in_n = n - i * KVTC_PIECE_MAX < KVTC_PIECE_MAX ? n - i * KVTC_PIECE_MAX
                                                                : KVTC_PIECE_MAX;
        size_t c = 0;
        if (e->stage == KVTC_STAGE_DEFLATE) {
            c = libdeflate_deflate_compress(e->dc, in, in_n, dst + off, cap - off);
        } else if (e->stage == KVTC_STAGE_ZSTD) {
            c = ZSTD_compressCCtx(e->zc, dst + off, cap - off, in, in_n, e->level);
            if (ZSTD_isError(c))
                c = 0;
        } else if (cap - off >= in_n) {
            memcpy(dst + off, in, in_n);
            c = in_n;
        }
        if (c == 0)
            return KVTC_ENOSPC;
        struct kvtc__wr w = {table + 4 * i, 4, 0};
        kvtc__put_u32(&w, (uint32_t)c);
        off += c;
    }
    *used = off;
    return 0;
}

int kvtc__entropy_decode(struct kvtc__entropy *e, uint32_t stage, const uint8_t *table,
                         const uint8_t *payload, size_t payload_len, uint8_t *sym, size_t n)
{
    if (stage == KVTC_STAGE_DEFLATE && !e->dd && !(e->dd = libdeflate_alloc_decompressor()))
        return KVTC_ENOMEM;
    if (stage == KVTC_STAGE_ZSTD && !e->zd && !(e->zd = ZSTD_createDCtx()))
        return KVTC_ENOMEM;
    size_t off = 0;
    for (size_t i = 0; i * KVTC_PIECE_MAX < n; i++) {
        struct kvtc__rd tr = {table + 4 * i, 4, 0, 0};
        size_t c = kvtc__get_u32(&tr);
        uint8_t *out = sym + i * KVTC_PIECE_MAX;
        size_t want = n - i * KVTC_PIECE_MAX < KVTC_PIECE_MAX ? n - i * KVTC_PIECE_MAX
                                                                : KVTC_PIECE_MAX;
        if (c > payload_len - off)
            return KVTC_ECORRUPT;
        const uint8_t *in = payload + off;
        if (stage == KVTC_STAGE_DEFLATE) {
            size_t got = 0;
            if (libdeflate_deflate_decompress(e->dd, in, c, out, want, &got) !=
                    LIBDEFLATE_SUCCESS || got != want)
                return KVTC_ECORRUPT;
        } else if (stage == KVTC_STAGE_ZSTD) {
            size_t got = ZSTD_decompressDCtx(e->zd, out, want, in, c);
            if (ZSTD_isError(got) || got != want)
                return KVTC_ECORRUPT;
        } else {
            if (c != want)
                return KVTC_ECORRUPT;
            memcpy(out, in, want);
        }
        off += c;
    }
    return off == payload_len ? 0 : KVTC_ECORRUPT;
}
