/* container.h - the chunk container (docs/container.md):
 *   header (152 bytes, XXH3-64 checksummed)
 *   raw section     tokens stored as-is (sinks, or the whole chunk in raw mode),
 *                   canonical layout of those tokens
 *   table section   u32 compressed size of each piece; version 2 adds
 *                   each piece's sub-range index (u16 entries) after them
 *   payload section the pieces: each codes <= 64 KiB of symbol bytes
 * Each section has its own XXH3-64 in the header. Version 1 is what the CPU
 * codec writes; version 2 is the GPU's own Huffman coder with its index
 * (kernels/huff_core.h), which any version-2 reader decodes like version 1
 * after checking the index's shape. */
#ifndef KVTC_CODEC_CONTAINER_H
#define KVTC_CODEC_CONTAINER_H

#include "internal.h"

#define KVTC__MAGIC "KVTC"
#define KVTC__CONTAINER_VERSION 1u   /* what the CPU codec writes */
#define KVTC__CONTAINER_VERSION_MAX 2u /* the newest this code reads */
#define KVTC__INDEX_LOG2_MIN 8u        /* sub-ranges of 2^8..2^12 symbols */
#define KVTC__INDEX_LOG2_MAX 12u
#define KVTC__HEADER_BYTES 152u
enum { KVTC__MODE_CODED = 0, KVTC__MODE_RAW = 1 };

struct kvtc__header {
    uint32_t mode, stage, plan;
    uint64_t profile_id;
    kvtc_layout layout;
    uint32_t first_pos, n_tokens, sink_tokens, n_pieces;
    uint64_t raw_bytes, table_bytes, payload_bytes, symbol_bytes;
    uint64_t raw_sum, table_sum, payload_sum;
    uint32_t index_log2;  /* 0: version 1; else version 2, whose table
                             section ends with the pieces' sub-range index
                             of 2^index_log2 symbols per entry */
};

/* Serialize h into dst[0..KVTC__HEADER_BYTES), header checksum included. */
void kvtc__header_write(const struct kvtc__header *h, uint8_t *dst);
/* Parse and validate a whole container: header, bounds, exact total size,
 * every section checksum, table consistency. Never reads past src+len. */
int kvtc__container_parse(const uint8_t *src, size_t len, struct kvtc__header *h);
static inline size_t kvtc__n_pieces(uint64_t symbol_bytes)
{
    return (size_t)((symbol_bytes + KVTC_PIECE_MAX - 1) / KVTC_PIECE_MAX);
}

/* Index entries (u16) of version 2 for symbol_bytes at 2^log2 symbols per
 * sub-range: ceil(piece / 2^log2) per piece. */
static inline uint64_t kvtc__index_entries(uint64_t symbol_bytes, uint32_t log2)
{
    uint64_t full = symbol_bytes / KVTC_PIECE_MAX, tail = symbol_bytes % KVTC_PIECE_MAX;
    return full * (KVTC_PIECE_MAX >> log2) + ((tail + (1u << log2) - 1) >> log2);
}

/* ---- entropy.c ---- */
struct kvtc__entropy;
int kvtc__entropy_create(uint32_t stage, int level, struct kvtc__entropy **out);
void kvtc__entropy_free(struct kvtc__entropy *e);
uint32_t kvtc__entropy_stage(const struct kvtc__entropy *e);
size_t kvtc__entropy_bound(struct kvtc__entropy *e, size_t symbol_bytes);
/* Code sym[0..n) as pieces: sizes into table (u32 LE each), bytes into
 * dst[0..cap); *used = payload bytes. KVTC_ENOSPC when cap is too small. */
int kvtc__entropy_encode(struct kvtc__entropy *e, const uint8_t *sym, size_t n,
                         uint8_t *table, uint8_t *dst, size_t cap, size_t *used);
/* Decode pieces into sym[0..n), each to exactly its expected size. */
int kvtc__entropy_decode(struct kvtc__entropy *e, uint32_t stage, const uint8_t *table,
                         const uint8_t *payload, size_t payload_len, uint8_t *sym, size_t n);

#endif
