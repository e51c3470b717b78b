/* segment.c - record headers and segment summaries (see segment.h). */
#include "segment.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <xxhash.h>

#include "kvtc_errors.h"

/* Header byte offsets (docs/tiers.md, "Disk format"). */
enum {
    H_MAGIC = 0,
    H_VERSION = 4,
    H_LEN = 6,
    H_KIND = 8,
    H_FLAGS = 9,
    H_ENCODING = 10,
    H_ALIGN_SHIFT = 11,
    H_TENANT_LEN = 12,
    H_SEG = 16,
    H_FIRST_POS = 20,
    H_OFF = 24,
    H_SEQ = 32,
    H_PAYLOAD_LEN = 40,
    H_PAYLOAD_SUM = 48,
    H_EXPIRE = 56,
    H_N_TOKENS = 64,
    H_CHUNK_FLAGS = 68,
    H_KEY = 72,
    H_PARENT = 104,
    H_LAYOUT = 136,             /* 12 u32 (floats by their bits) */
    H_TENANT = 184
};

#define F_PARENT 0x01u
#define F_LAYOUT 0x02u
#define F_KNOWN (F_PARENT | F_LAYOUT)

static void put16(uint8_t *p, uint16_t v)
{
    p[0] = (uint8_t)v;
    p[1] = (uint8_t)(v >> 8);
}

static void put32(uint8_t *p, uint32_t v)
{
    for (int i = 0; i < 4; i++)
        p[i] = (uint8_t)(v >> (8 * i));
}

static void put64(uint8_t *p, uint64_t v)
{
    for (int i = 0; i < 8; i++)
        p[i] = (uint8_t)(v >> (8 * i));
}

static uint16_t get16(const uint8_t *p)
{
    return (uint16_t)(p[0] | (p[1] << 8));
}

static uint32_t get32(const uint8_t *p)
{
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 |
           (uint32_t)p[3] << 24;
}

static uint64_t get64(const uint8_t *p)
{
    return (uint64_t)get32(p) | (uint64_t)get32(p + 4) << 32;
}

static uint32_t fbits(float f)
{
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    return u;
}

static float bitsf(uint32_t u)
{
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}

static size_t hdr_len_for(size_t tenant_len)
{
    return ((H_TENANT + tenant_len + 7) & ~(size_t)7) + 8;
}

size_t kvtcd_seg_hdr_len(const kvtcd_seg_hdr *h)
{
    return hdr_len_for(strnlen(h->m.tenant, sizeof h->m.tenant));
}

int kvtcd_seg_hdr_encode(const kvtcd_seg_hdr *h, uint8_t *out, size_t cap,
                         size_t *len)
{
    size_t tl = strnlen(h->m.tenant, sizeof h->m.tenant);
    if (tl > KVTCD_DISK_TENANT_MAX)
        return KVTC_EINVAL;
    if (h->kind != KVTCD_SEG_RECORD && h->kind != KVTCD_SEG_TOMBSTONE)
        return KVTC_EINVAL;
    if (h->m.size > KVTCD_SEG_MAX_PAYLOAD)
        return KVTC_EINVAL;
    if (h->kind == KVTCD_SEG_TOMBSTONE && h->m.size != 0)
        return KVTC_EINVAL;
    if (h->align_shift < KVTCD_SEG_MIN_SHIFT ||
        h->align_shift > KVTCD_SEG_MAX_SHIFT)
        return KVTC_EINVAL;
    size_t n = hdr_len_for(tl);
    if (cap < n)
        return KVTC_EINVAL;
    memset(out, 0, n);
    put32(out + H_MAGIC, KVTCD_SEG_MAGIC);
    put16(out + H_VERSION, KVTCD_SEG_VERSION);
    put16(out + H_LEN, (uint16_t)n);
    out[H_KIND] = h->kind;
    out[H_FLAGS] = (uint8_t)((h->m.has_parent ? F_PARENT : 0) |
                             (h->m.has_layout ? F_LAYOUT : 0));
    out[H_ENCODING] = h->m.encoding;
    out[H_ALIGN_SHIFT] = h->align_shift;
    put16(out + H_TENANT_LEN, (uint16_t)tl);
    put32(out + H_SEG, h->seg);
    put32(out + H_FIRST_POS, h->m.first_pos);
    put64(out + H_OFF, h->off);
    put64(out + H_SEQ, h->m.seq);
    put64(out + H_PAYLOAD_LEN, h->m.size);
    put64(out + H_PAYLOAD_SUM, h->m.checksum);
    put64(out + H_EXPIRE, h->m.expire_unix_ms);
    put32(out + H_N_TOKENS, h->m.n_tokens);
    put32(out + H_CHUNK_FLAGS, h->m.chunk_flags);
    memcpy(out + H_KEY, h->m.key, KVTCD_DISK_KEY_BYTES);
    if (h->m.has_parent)
        memcpy(out + H_PARENT, h->m.parent, KVTCD_DISK_KEY_BYTES);
    if (h->m.has_layout) {
        const kvtc_layout *l = &h->m.layout;
        const uint32_t v[12] = {
            l->layers, l->kv_heads, l->head_dim, l->dtype,
            l->chunk_tokens, l->rope_style, l->rope_scaling,
            l->rope_orig_max_pos, fbits(l->rope_theta),
            fbits(l->rope_factor), fbits(l->rope_low_freq_factor),
            fbits(l->rope_high_freq_factor)};
        for (int i = 0; i < 12; i++)
            put32(out + H_LAYOUT + 4 * i, v[i]);
    }
    memcpy(out + H_TENANT, h->m.tenant, tl);
    put64(out + n - 8, XXH3_64bits(out, n - 8));
    *len = n;
    return 0;
}

int kvtcd_seg_hdr_parse(const void *buf, size_t avail, kvtcd_seg_hdr *out)
{
    const uint8_t *p = buf;
    if (avail < H_TENANT + 8 || get32(p + H_MAGIC) != KVTCD_SEG_MAGIC)
        return KVTC_ECORRUPT;
    size_t n = get16(p + H_LEN);
    size_t tl = get16(p + H_TENANT_LEN);
    if (tl > KVTCD_DISK_TENANT_MAX || n != hdr_len_for(tl) || n > avail ||
        n > KVTCD_SEG_HDR_BYTES)
        return KVTC_ECORRUPT;
    if (XXH3_64bits(p, n - 8) != get64(p + n - 8))
        return KVTC_ECORRUPT;
    /* Only a header whose own checksum holds can speak for its version. */
    if (get16(p + H_VERSION) != KVTCD_SEG_VERSION)
        return KVTC_EVERSION;
    uint8_t kind = p[H_KIND], flags = p[H_FLAGS], shift = p[H_ALIGN_SHIFT];
    uint64_t size = get64(p + H_PAYLOAD_LEN);
    if ((kind != KVTCD_SEG_RECORD && kind != KVTCD_SEG_TOMBSTONE) ||
        (flags & ~F_KNOWN) || size > KVTCD_SEG_MAX_PAYLOAD ||
        shift < KVTCD_SEG_MIN_SHIFT || shift > KVTCD_SEG_MAX_SHIFT ||
        (kind == KVTCD_SEG_TOMBSTONE && size != 0) ||
        memchr(p + H_TENANT, 0, tl))
        return KVTC_ECORRUPT;

    memset(out, 0, sizeof *out);
    out->kind = kind;
    out->align_shift = shift;
    out->seg = get32(p + H_SEG);
    out->off = get64(p + H_OFF);
    kvtcd_disk_meta *m = &out->m;
    memcpy(m->tenant, p + H_TENANT, tl);
    m->tenant[tl] = '\0';
    memcpy(m->key, p + H_KEY, KVTCD_DISK_KEY_BYTES);
    m->has_parent = (flags & F_PARENT) != 0;
    if (m->has_parent)
        memcpy(m->parent, p + H_PARENT, KVTCD_DISK_KEY_BYTES);
    m->has_layout = (flags & F_LAYOUT) != 0;
    if (m->has_layout) {
        uint32_t v[12];
        for (int i = 0; i < 12; i++)
            v[i] = get32(p + H_LAYOUT + 4 * i);
        kvtc_layout *l = &m->layout;
        l->layers = v[0];
        l->kv_heads = v[1];
        l->head_dim = v[2];
        l->dtype = v[3];
        l->chunk_tokens = v[4];
        l->rope_style = v[5];
        l->rope_scaling = v[6];
        l->rope_orig_max_pos = v[7];
        l->rope_theta = bitsf(v[8]);
        l->rope_factor = bitsf(v[9]);
        l->rope_low_freq_factor = bitsf(v[10]);
        l->rope_high_freq_factor = bitsf(v[11]);
    }
    m->encoding = p[H_ENCODING];
    m->first_pos = get32(p + H_FIRST_POS);
    m->n_tokens = get32(p + H_N_TOKENS);
    m->chunk_flags = get32(p + H_CHUNK_FLAGS);
    m->size = size;
    m->checksum = get64(p + H_PAYLOAD_SUM);
    m->expire_unix_ms = get64(p + H_EXPIRE);
    m->seq = get64(p + H_SEQ);
    return 0;
}

uint64_t kvtcd_seg_rec_len(uint64_t len, size_t align)
{
    if (len > KVTCD_SEG_MAX_PAYLOAD || align == 0 || (align & (align - 1)))
        return 0;
    uint64_t a = align;
    return (KVTCD_SEG_HDR_BYTES + len + a - 1) & ~(a - 1);
}

uint64_t kvtcd_seg_hdr_rec_len(const kvtcd_seg_hdr *h)
{
    return kvtcd_seg_rec_len(h->m.size, (size_t)1 << h->align_shift);
}

int kvtcd_seg_is_zero(const void *buf, size_t n)
{
    const uint8_t *p = buf;
    uint64_t acc = 0;
    size_t i = 0;
    for (; i + 8 <= n; i += 8) {
        uint64_t w;
        memcpy(&w, p + i, 8);
        acc |= w;
        if (acc)
            return 0;
    }
    for (; i < n; i++)
        acc |= p[i];
    return acc == 0;
}

int kvtcd_seg_name(char *out, size_t cap, const char *dir, uint32_t seg,
                   const char *ext)
{
    int n = snprintf(out, cap, "%s/seg-%08x.%s", dir, seg, ext);
    return n < 0 || (size_t)n >= cap ? KVTC_EINVAL : 0;
}

int kvtcd_seg_name_parse(const char *name, const char *ext, uint32_t *seg)
{
    size_t el = strlen(ext);
    if (strncmp(name, "seg-", 4) != 0 || strlen(name) != 4 + 8 + 1 + el ||
        name[12] != '.' || strcmp(name + 13, ext) != 0)
        return KVTC_EINVAL;
    uint32_t v = 0;
    for (int i = 4; i < 12; i++) {
        char c = name[i];
        int d = c >= '0' && c <= '9'   ? c - '0'
                : c >= 'a' && c <= 'f' ? c - 'a' + 10
                                       : -1;
        if (d < 0)
            return KVTC_EINVAL;
        v = v << 4 | (uint32_t)d;
    }
    *seg = v;
    return 0;
}

/* ---- Summaries ------------------------------------------------------ */

static int sum_reserve(kvtcd_seg_sum *s, size_t more)
{
    if (s->len + more <= s->cap)
        return 0;
    size_t cap = s->cap ? s->cap : 4096;
    while (cap < s->len + more)
        cap *= 2;
    uint8_t *b = realloc(s->buf, cap);
    if (!b)
        return KVTC_ENOMEM;
    s->buf = b;
    s->cap = cap;
    return 0;
}

int kvtcd_seg_sum_init(kvtcd_seg_sum *s)
{
    memset(s, 0, sizeof *s);
    if (sum_reserve(s, KVTCD_SEG_SUM_HEAD) < 0)
        return KVTC_ENOMEM;
    memset(s->buf, 0, KVTCD_SEG_SUM_HEAD);
    s->len = KVTCD_SEG_SUM_HEAD;
    return 0;
}

int kvtcd_seg_sum_add(kvtcd_seg_sum *s, const uint8_t *hdr, size_t hdr_len)
{
    if (hdr_len < H_TENANT + 8 || hdr_len > KVTCD_SEG_HDR_BYTES ||
        s->count == UINT32_MAX)
        return KVTC_EINVAL;
    if (sum_reserve(s, 2 + hdr_len) < 0)
        return KVTC_ENOMEM;
    put16(s->buf + s->len, (uint16_t)hdr_len);
    memcpy(s->buf + s->len + 2, hdr, hdr_len);
    s->len += 2 + hdr_len;
    s->count++;
    return 0;
}

int kvtcd_seg_sum_finish(kvtcd_seg_sum *s, uint32_t seg, uint64_t data_end)
{
    if (sum_reserve(s, 8) < 0)
        return KVTC_ENOMEM;
    put32(s->buf, KVTCD_SEG_SUM_MAGIC);
    put16(s->buf + 4, KVTCD_SEG_VERSION);
    put16(s->buf + 6, 0);
    put32(s->buf + 8, seg);
    put32(s->buf + 12, s->count);
    put64(s->buf + 16, data_end);
    put64(s->buf + s->len, XXH3_64bits(s->buf, s->len));
    s->len += 8;
    return 0;
}

void kvtcd_seg_sum_free(kvtcd_seg_sum *s)
{
    free(s->buf);
    memset(s, 0, sizeof *s);
}

int kvtcd_seg_sum_verify(const void *buf, size_t len, uint32_t seg,
                         uint32_t *count, uint64_t *data_end)
{
    const uint8_t *p = buf;
    if (len < KVTCD_SEG_SUM_HEAD + 8 || get32(p) != KVTCD_SEG_SUM_MAGIC)
        return KVTC_ECORRUPT;
    if (XXH3_64bits(p, len - 8) != get64(p + len - 8))
        return KVTC_ECORRUPT;
    if (get16(p + 4) != KVTCD_SEG_VERSION)
        return KVTC_EVERSION;
    if (get32(p + 8) != seg)
        return KVTC_ECORRUPT;
    /* The entries must tile the body exactly: a count that disagrees with
     * the bytes is a damaged (or forged) file. */
    uint32_t n = get32(p + 12), seen = 0;
    size_t pos = KVTCD_SEG_SUM_HEAD, end = len - 8;
    while (pos < end) {
        if (end - pos < 2)
            return KVTC_ECORRUPT;
        size_t l = get16(p + pos);
        if (l > end - pos - 2)
            return KVTC_ECORRUPT;
        pos += 2 + l;
        seen++;
    }
    if (seen != n)
        return KVTC_ECORRUPT;
    *count = n;
    *data_end = get64(p + 16);
    return 0;
}

int kvtcd_seg_sum_next(const void *buf, size_t len, size_t *pos,
                       const uint8_t **raw, size_t *raw_len,
                       kvtcd_seg_hdr *out)
{
    const uint8_t *p = buf;
    size_t at = *pos ? *pos : KVTCD_SEG_SUM_HEAD;
    if (len < KVTCD_SEG_SUM_HEAD + 8 || at >= len - 8)
        return KVTC_ENOENT;
    if (len - 8 - at < 2)
        return KVTC_ECORRUPT;
    size_t l = get16(p + at);
    if (l > len - 8 - at - 2)
        return KVTC_ECORRUPT;
    int rc = kvtcd_seg_hdr_parse(p + at + 2, l, out);
    if (rc < 0)
        return KVTC_ECORRUPT;
    if (get16(p + at + 2 + H_LEN) != l)
        return KVTC_ECORRUPT;
    *raw = p + at + 2;
    *raw_len = l;
    *pos = at + 2 + l;
    return 0;
}
