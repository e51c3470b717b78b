/* container.c - header serialization and whole-container validation. */
#include <xxhash.h>

#include "bytes.h"
#include "container.h"

void kvtc__header_write(const struct kvtc__header *h, uint8_t *dst)
{
    struct kvtc__wr w = {dst, KVTC__HEADER_BYTES, 0};
    kvtc__put(&w, KVTC__MAGIC, 4);
    kvtc__put_u16(&w, h->index_log2 ? 2 : KVTC__CONTAINER_VERSION);
    kvtc__put_u16(&w, KVTC__HEADER_BYTES);
    kvtc__put_u8(&w, (uint8_t)h->mode);
    kvtc__put_u8(&w, (uint8_t)h->stage);
    kvtc__put_u16(&w, (uint16_t)h->index_log2); /* version 1: reserved, 0 */
    kvtc__put_u32(&w, h->plan);
    kvtc__put_u64(&w, h->profile_id);
    kvtc__put_layout(&w, &h->layout);
    kvtc__put_u32(&w, h->first_pos);
    kvtc__put_u32(&w, h->n_tokens);
    kvtc__put_u32(&w, h->sink_tokens);
    kvtc__put_u32(&w, h->n_pieces);
    kvtc__put_u64(&w, h->raw_bytes);
    kvtc__put_u64(&w, h->table_bytes);
    kvtc__put_u64(&w, h->payload_bytes);
    kvtc__put_u64(&w, h->symbol_bytes);
    kvtc__put_u64(&w, h->raw_sum);
    kvtc__put_u64(&w, h->table_sum);
    kvtc__put_u64(&w, h->payload_sum);
    kvtc__put_u64(&w, XXH3_64bits(dst, KVTC__HEADER_BYTES - 8));
}

/* Version 2's index, which this decoder does not need but a GPU trusts
 * only after its own checks: per piece, its entries sum to 0 (a stored
 * piece) or to at least one bit per symbol and at most the piece's bits. */
static int index_check(const struct kvtc__header *h, const uint8_t *table)
{
    struct kvtc__rd r = {table, h->table_bytes, 4ull * h->n_pieces, 0};
    for (uint32_t i = 0; i < h->n_pieces; i++) {
        struct kvtc__rd tr = {table, h->table_bytes, 4ull * i, 0};
        uint64_t bits = 8ull * kvtc__get_u32(&tr), sum = 0;
        uint64_t n = i + 1 < h->n_pieces ? KVTC_PIECE_MAX
                                         : h->symbol_bytes - (uint64_t)i * KVTC_PIECE_MAX;
        for (uint64_t k = 0; k < kvtc__index_entries(n, h->index_log2); k++)
            sum += kvtc__get_u16(&r);
        if (sum && (sum < n || sum > bits))
            return KVTC_ECORRUPT;
    }
    return r.bad || r.off != h->table_bytes ? KVTC_ECORRUPT : 0;
}

int kvtc__container_parse(const uint8_t *src, size_t len, struct kvtc__header *h)
{
    if (!src || len < KVTC__HEADER_BYTES || memcmp(src, KVTC__MAGIC, 4) != 0)
        return KVTC_ECORRUPT;
    struct kvtc__rd r = {src, KVTC__HEADER_BYTES, 4, 0};
    uint16_t version = kvtc__get_u16(&r);
    if (version < 1 || version > KVTC__CONTAINER_VERSION_MAX)
        return KVTC_EVERSION;
    if (kvtc__get_u16(&r) != KVTC__HEADER_BYTES)
        return KVTC_ECORRUPT;
    struct kvtc__rd sr = {src, KVTC__HEADER_BYTES, KVTC__HEADER_BYTES - 8, 0};
    if (XXH3_64bits(src, KVTC__HEADER_BYTES - 8) != kvtc__get_u64(&sr))
        return KVTC_ECORRUPT;
    h->mode = kvtc__get_u8(&r);
    h->stage = kvtc__get_u8(&r);
    uint16_t reserved = kvtc__get_u16(&r);
    /* version 2: the index granularity in the low byte, the high one 0 */
    h->index_log2 = version == 2 ? reserved : 0;
    if (version == 2)
        reserved = h->index_log2 < KVTC__INDEX_LOG2_MIN || h->index_log2 > KVTC__INDEX_LOG2_MAX ||
                   h->mode != KVTC__MODE_CODED || h->stage != KVTC_STAGE_DEFLATE;
    h->plan = kvtc__get_u32(&r);
    h->profile_id = kvtc__get_u64(&r);
    kvtc__get_layout(&r, &h->layout);
    h->first_pos = kvtc__get_u32(&r);
    h->n_tokens = kvtc__get_u32(&r);
    h->sink_tokens = kvtc__get_u32(&r);
    h->n_pieces = kvtc__get_u32(&r);
    h->raw_bytes = kvtc__get_u64(&r);
    h->table_bytes = kvtc__get_u64(&r);
    h->payload_bytes = kvtc__get_u64(&r);
    h->symbol_bytes = kvtc__get_u64(&r);
    h->raw_sum = kvtc__get_u64(&r);
    h->table_sum = kvtc__get_u64(&r);
    h->payload_sum = kvtc__get_u64(&r);
    if (r.bad || reserved != 0 || h->mode > KVTC__MODE_RAW || h->stage > KVTC_STAGE_STORE ||
        kvtc_layout_check(&h->layout) || h->n_tokens == 0 ||
        h->n_tokens > KVTC_MAX_CHUNK_TOKENS || (uint64_t)h->first_pos + h->n_tokens > UINT32_MAX)
        return KVTC_ECORRUPT;
    uint64_t D2 = 2ull * kvtc_row_width(&h->layout);
    if (h->mode == KVTC__MODE_RAW) {
        if (h->sink_tokens != h->n_tokens || h->plan || h->profile_id || h->n_pieces ||
            h->symbol_bytes || h->table_bytes || h->payload_bytes)
            return KVTC_ECORRUPT;
    } else {
        uint32_t coded = h->n_tokens - kvtc__sink_tokens(h->first_pos, h->n_tokens);
        /* fp8 at most 1 byte per component plus a 4-byte shift+scale per
         * group of at least one component: 5 bytes per component. */
        if (h->sink_tokens != kvtc__sink_tokens(h->first_pos, h->n_tokens) ||
            h->symbol_bytes > (uint64_t)coded * D2 * 5 ||
            h->n_pieces != kvtc__n_pieces(h->symbol_bytes) ||
            h->table_bytes != 4ull * h->n_pieces +
                                  (h->index_log2 ? 2 * kvtc__index_entries(h->symbol_bytes,
                                                                           h->index_log2)
                                                 : 0))
            return KVTC_ECORRUPT;
    }
    if (h->raw_bytes != kvtc_chunk_bytes(&h->layout, h->sink_tokens))
        return KVTC_ECORRUPT;
    /* Exact total: no truncation, no trailing bytes. Sizes are bounded above
     * (< 2^50), so the sum cannot overflow. */
    if (h->payload_bytes > len || (uint64_t)KVTC__HEADER_BYTES + h->raw_bytes + h->table_bytes +
                                          h->payload_bytes != len)
        return KVTC_ECORRUPT;
    const uint8_t *raw = src + KVTC__HEADER_BYTES, *table = raw + h->raw_bytes;
    const uint8_t *payload = table + h->table_bytes;
    if (XXH3_64bits(raw, h->raw_bytes) != h->raw_sum ||
        XXH3_64bits(table, h->table_bytes) != h->table_sum ||
        XXH3_64bits(payload, h->payload_bytes) != h->payload_sum)
        return KVTC_ECORRUPT;
    uint64_t total = 0;
    for (uint32_t i = 0; i < h->n_pieces; i++) {
        struct kvtc__rd tr = {table, h->table_bytes, 4ull * i, 0};
        uint32_t c = kvtc__get_u32(&tr);
        uint64_t want = i + 1 < h->n_pieces ? KVTC_PIECE_MAX
                                            : h->symbol_bytes - (uint64_t)i * KVTC_PIECE_MAX;
        if (c == 0 || (h->stage == KVTC_STAGE_STORE && c != want))
            return KVTC_ECORRUPT;
        total += c;
    }
    if (total != h->payload_bytes)
        return KVTC_ECORRUPT;
    return h->index_log2 ? index_check(h, table) : 0;
}
