/* bytes.h - little-endian writer and bounds-checked reader for the codec's
 * file formats. A reader that runs past its end sets `bad` and returns
 * zeros, so parsers check once at the end of a section. */
#ifndef KVTC_CODEC_BYTES_H
#define KVTC_CODEC_BYTES_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "kvtc_codec.h"

struct kvtc__wr { uint8_t *p; size_t cap, len; };
struct kvtc__rd { const uint8_t *p; size_t len, off; int bad; };

static inline void kvtc__put(struct kvtc__wr *w, const void *src, size_t n)
{
    if (w->len + n <= w->cap && n)
        memcpy(w->p + w->len, src, n);
    w->len += n; /* counts even when full: callers size with a dry run */
}
static inline void kvtc__put_u8(struct kvtc__wr *w, uint8_t v) { kvtc__put(w, &v, 1); }
static inline void kvtc__put_u16(struct kvtc__wr *w, uint16_t v)
{
    uint8_t b[2] = {(uint8_t)v, (uint8_t)(v >> 8)};
    kvtc__put(w, b, 2);
}
static inline void kvtc__put_u32(struct kvtc__wr *w, uint32_t v)
{
    uint8_t b[4] = {(uint8_t)v, (uint8_t)(v >> 8), (uint8_t)(v >> 16), (uint8_t)(v >> 24)};
    kvtc__put(w, b, 4);
}
static inline void kvtc__put_u64(struct kvtc__wr *w, uint64_t v)
{
    kvtc__put_u32(w, (uint32_t)v);
    kvtc__put_u32(w, (uint32_t)(v >> 32));
}
static inline void kvtc__put_f32(struct kvtc__wr *w, float f)
{
    uint32_t v;
    memcpy(&v, &f, 4);
    kvtc__put_u32(w, v);
}

static inline const uint8_t *kvtc__take(struct kvtc__rd *r, size_t n)
{
    if (r->bad || n > r->len - r->off) {
        r->bad = 1;
        return NULL;
    }
    const uint8_t *p = r->p + r->off;
    r->off += n;
    return p;
}
static inline uint8_t kvtc__get_u8(struct kvtc__rd *r)
{
    const uint8_t *p = kvtc__take(r, 1);
    return p ? p[0] : 0;
}
static inline uint16_t kvtc__get_u16(struct kvtc__rd *r)
{
    const uint8_t *p = kvtc__take(r, 2);
    return p ? (uint16_t)(p[0] | p[1] << 8) : 0;
}
static inline uint32_t kvtc__get_u32(struct kvtc__rd *r)
{
    const uint8_t *p = kvtc__take(r, 4);
    return p ? (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24
             : 0;
}
static inline uint64_t kvtc__get_u64(struct kvtc__rd *r)
{
    uint64_t lo = kvtc__get_u32(r);
    return lo | (uint64_t)kvtc__get_u32(r) << 32;
}
static inline float kvtc__get_f32(struct kvtc__rd *r)
{
    uint32_t v = kvtc__get_u32(r);
    float f;
    memcpy(&f, &v, 4);
    return f;
}

/* Layout descriptor: 12 little-endian 32-bit fields, 48 bytes. */
#define KVTC__LAYOUT_BYTES 48
static inline void kvtc__put_layout(struct kvtc__wr *w, const kvtc_layout *l)
{
    kvtc__put_u32(w, l->layers);
    kvtc__put_u32(w, l->kv_heads);
    kvtc__put_u32(w, l->head_dim);
    kvtc__put_u32(w, l->dtype);
    kvtc__put_u32(w, l->chunk_tokens);
    kvtc__put_u32(w, l->rope_style);
    kvtc__put_u32(w, l->rope_scaling);
    kvtc__put_u32(w, l->rope_orig_max_pos);
    kvtc__put_f32(w, l->rope_theta);
    kvtc__put_f32(w, l->rope_factor);
    kvtc__put_f32(w, l->rope_low_freq_factor);
    kvtc__put_f32(w, l->rope_high_freq_factor);
}
static inline void kvtc__get_layout(struct kvtc__rd *r, kvtc_layout *l)
{
    l->layers = kvtc__get_u32(r);
    l->kv_heads = kvtc__get_u32(r);
    l->head_dim = kvtc__get_u32(r);
    l->dtype = kvtc__get_u32(r);
    l->chunk_tokens = kvtc__get_u32(r);
    l->rope_style = kvtc__get_u32(r);
    l->rope_scaling = kvtc__get_u32(r);
    l->rope_orig_max_pos = kvtc__get_u32(r);
    l->rope_theta = kvtc__get_f32(r);
    l->rope_factor = kvtc__get_f32(r);
    l->rope_low_freq_factor = kvtc__get_f32(r);
    l->rope_high_freq_factor = kvtc__get_f32(r);
}

#endif
