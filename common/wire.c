/* wire.c - framing of the kvtc wire protocol (see wire.h). */
#include "wire.h"

#include <stdlib.h>
#include <string.h>
#include <xxhash.h>
#if defined(__x86_64__) || defined(__i386__)
#include <xxh_x86dispatch.h>
#define KVTC_XXH3_64 XXH3_64bits_dispatch
#define KVTC_XXH3_UPDATE XXH3_64bits_update_dispatch
#else
#define KVTC_XXH3_64 XXH3_64bits
#define KVTC_XXH3_UPDATE XXH3_64bits_update
#endif
/* Piece of a fused copy + checksum: small enough to stay in L2 between the
 * copy and the hash, large enough that the per-call cost vanishes. */
#define COPY_PIECE (64u << 10)

int kvtc_wire_frame_check(const void *buf, size_t len, size_t *body_len)
{
    if (!buf || !body_len)
        return KVTC_EINVAL;
    if (len < KVTC_WIRE_LEN_BYTES)
        return KVTC_EPROTO;
    const uint8_t *p = buf;
    /* Little-endian regardless of the host, byte by byte (buf may be
     * unaligned inside an AM header). */
    uint32_t n = (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 |
                 (uint32_t)p[3] << 24;
    if (n > KVTC_WIRE_MAX_FRAME || (size_t)n != len - KVTC_WIRE_LEN_BYTES)
        return KVTC_EPROTO;
    *body_len = n;
    return 0;
}

static void put_le32(uint8_t *p, uint32_t v)
{
    p[0] = (uint8_t)v;
    p[1] = (uint8_t)(v >> 8);
    p[2] = (uint8_t)(v >> 16);
    p[3] = (uint8_t)(v >> 24);
}

size_t kvtc_wire_request_frame_size(const Kvtc__Wire__Request *req)
{
    return KVTC_WIRE_LEN_BYTES + kvtc__wire__request__get_packed_size(req);
}

size_t kvtc_wire_reply_frame_size(const Kvtc__Wire__Reply *rep)
{
    return KVTC_WIRE_LEN_BYTES + kvtc__wire__reply__get_packed_size(rep);
}

/* Both message kinds pack the same way; protobuf-c's generic entry points
 * take the base message. */
static int pack_msg(const ProtobufCMessage *msg, void *buf, size_t cap,
                    size_t *len)
{
    if (!msg || !buf || !len)
        return KVTC_EINVAL;
    size_t body = protobuf_c_message_get_packed_size(msg);
    if (body > KVTC_WIRE_MAX_FRAME)
        return KVTC_EINVAL; /* the peer would refuse it anyway */
    if (cap < KVTC_WIRE_LEN_BYTES + body)
        return KVTC_ENOSPC;
    uint8_t *p = buf;
    put_le32(p, (uint32_t)body);
    size_t n = protobuf_c_message_pack(msg, p + KVTC_WIRE_LEN_BYTES);
    if (n != body)
        return KVTC_EINVAL;
    *len = KVTC_WIRE_LEN_BYTES + body;
    return 0;
}

static int pack_msg_alloc(const ProtobufCMessage *msg, void **buf, size_t *len)
{
    if (!msg || !buf || !len)
        return KVTC_EINVAL;
    size_t body = protobuf_c_message_get_packed_size(msg);
    if (body > KVTC_WIRE_MAX_FRAME)
        return KVTC_EINVAL;
    void *p = malloc(KVTC_WIRE_LEN_BYTES + body);
    if (!p)
        return KVTC_ENOMEM;
    int rc = pack_msg(msg, p, KVTC_WIRE_LEN_BYTES + body, len);
    if (rc < 0) {
        free(p);
        return rc;
    }
    *buf = p;
    return 0;
}

int kvtc_wire_pack_request(const Kvtc__Wire__Request *req, void *buf,
                           size_t cap, size_t *len)
{
    return pack_msg(req ? &req->base : NULL, buf, cap, len);
}

int kvtc_wire_pack_reply(const Kvtc__Wire__Reply *rep, void *buf, size_t cap,
                         size_t *len)
{
    return pack_msg(rep ? &rep->base : NULL, buf, cap, len);
}

int kvtc_wire_pack_request_alloc(const Kvtc__Wire__Request *req, void **buf,
                                 size_t *len)
{
    return pack_msg_alloc(req ? &req->base : NULL, buf, len);
}

int kvtc_wire_pack_reply_alloc(const Kvtc__Wire__Reply *rep, void **buf,
                               size_t *len)
{
    return pack_msg_alloc(rep ? &rep->base : NULL, buf, len);
}

/* protobuf-c sizes repeated fields from the input and allocates one struct
 * per element: a 2-byte empty sub-message becomes a ~150-byte struct. The
 * budget bounds that amplification. Frees go straight to free(), so the
 * result can later be released with the default allocator. */
struct budget {
    size_t left;
};

static void *budget_alloc(void *data, size_t size)
{
    struct budget *b = data;
    if (size > b->left)
        return NULL;
    b->left -= size;
    return malloc(size);
}

static void budget_free(void *data, void *ptr)
{
    (void)data;
    free(ptr);
}

static int unpack_body(const ProtobufCMessageDescriptor *desc,
                       const void *msg, size_t len, ProtobufCMessage **out)
{
    if (!msg || !out)
        return KVTC_EINVAL;
    if (len == 0 || len > KVTC_WIRE_MAX_FRAME)
        return KVTC_EPROTO;
    struct budget b = {KVTC_WIRE_UNPACK_BUDGET};
    ProtobufCAllocator a = {budget_alloc, budget_free, &b};
    ProtobufCMessage *m = protobuf_c_message_unpack(desc, &a, len, msg);
    if (!m)
        return KVTC_EPROTO; /* protobuf-c gives no reason */
    *out = m;
    return 0;
}

static int unpack_msg(const ProtobufCMessageDescriptor *desc, const void *buf,
                      size_t len, ProtobufCMessage **out)
{
    if (!buf || !out)
        return KVTC_EINVAL;
    size_t body;
    int rc = kvtc_wire_frame_check(buf, len, &body);
    if (rc < 0)
        return rc;
    return unpack_body(desc, (const uint8_t *)buf + KVTC_WIRE_LEN_BYTES, body,
                       out);
}

int kvtc_wire_am_split(const void *header, size_t header_len, size_t data_len,
                       size_t *msg_len, int *in_data)
{
    if (!header || !msg_len || !in_data)
        return KVTC_EPROTO;
    if (header_len == KVTC_WIRE_LEN_BYTES) {
        const uint8_t *p = header;
        uint32_t n = (uint32_t)p[0] | (uint32_t)p[1] << 8 |
                     (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
        if (n == 0 || n > KVTC_WIRE_MAX_FRAME || n > data_len)
            return KVTC_EPROTO;
        *msg_len = n;
        *in_data = 1;
        return 0;
    }
    int rc = kvtc_wire_frame_check(header, header_len, msg_len);
    if (rc < 0)
        return KVTC_EPROTO;
    *in_data = 0;
    return 0;
}

int kvtc_wire_unpack_request_msg(const void *msg, size_t len,
                                 Kvtc__Wire__Request **out)
{
    ProtobufCMessage *m = NULL;
    int rc = unpack_body(&kvtc__wire__request__descriptor, msg, len, &m);
    if (rc == 0)
        *out = (Kvtc__Wire__Request *)m;
    return rc;
}

int kvtc_wire_unpack_reply_msg(const void *msg, size_t len,
                               Kvtc__Wire__Reply **out)
{
    ProtobufCMessage *m = NULL;
    int rc = unpack_body(&kvtc__wire__reply__descriptor, msg, len, &m);
    if (rc == 0)
        *out = (Kvtc__Wire__Reply *)m;
    return rc;
}

int kvtc_wire_unpack_request(const void *buf, size_t len,
                             Kvtc__Wire__Request **out)
{
    ProtobufCMessage *m = NULL;
    int rc = unpack_msg(&kvtc__wire__request__descriptor, buf, len, &m);
    if (rc == 0)
        *out = (Kvtc__Wire__Request *)m;
    return rc;
}

int kvtc_wire_unpack_reply(const void *buf, size_t len,
                           Kvtc__Wire__Reply **out)
{
    ProtobufCMessage *m = NULL;
    int rc = unpack_msg(&kvtc__wire__reply__descriptor, buf, len, &m);
    if (rc == 0)
        *out = (Kvtc__Wire__Reply *)m;
    return rc;
}

void kvtc_wire_request_free(Kvtc__Wire__Request *req)
{
    if (req)
        kvtc__wire__request__free_unpacked(req, NULL);
}

void kvtc_wire_reply_free(Kvtc__Wire__Reply *rep)
{
    if (rep)
        kvtc__wire__reply__free_unpacked(rep, NULL);
}

int kvtc_wire_key_ok(const ProtobufCBinaryData *key)
{
    return key && key->len == KVTC_WIRE_KEY_BYTES && key->data;
}

int kvtc_wire_version_ok(uint32_t major)
{
    return major == KVTC_PROTO_MAJOR;
}

int kvtc_wire_encoding_ok(int encoding)
{
    return encoding == KVTC__WIRE__ENCODING__RAW ||
           encoding == KVTC__WIRE__ENCODING__KVTC;
}

void kvtc_wire_layout_from_msg(const Kvtc__Wire__Layout *msg, kvtc_layout *out)
{
    memset(out, 0, sizeof *out);
    out->layers = msg->layers;
    out->kv_heads = msg->kv_heads;
    out->head_dim = msg->head_dim;
    out->dtype = msg->dtype;
    out->chunk_tokens = msg->has_chunk_tokens ? msg->chunk_tokens : 0;
    out->rope_style = msg->has_rope_style ? msg->rope_style : 0;
    out->rope_scaling = msg->has_rope_scaling ? msg->rope_scaling : 0;
    out->rope_orig_max_pos =
        msg->has_rope_orig_max_pos ? msg->rope_orig_max_pos : 0;
    out->rope_theta = msg->has_rope_theta ? msg->rope_theta : 0.0f;
    out->rope_factor = msg->has_rope_factor ? msg->rope_factor : 0.0f;
    out->rope_low_freq_factor =
        msg->has_rope_low_freq_factor ? msg->rope_low_freq_factor : 0.0f;
    out->rope_high_freq_factor =
        msg->has_rope_high_freq_factor ? msg->rope_high_freq_factor : 0.0f;
}

void kvtc_wire_layout_to_msg(const kvtc_layout *l, Kvtc__Wire__Layout *msg)
{
    kvtc__wire__layout__init(msg);
    msg->layers = l->layers;
    msg->kv_heads = l->kv_heads;
    msg->head_dim = l->head_dim;
    msg->dtype = l->dtype;
    msg->has_chunk_tokens = 1;
    msg->chunk_tokens = l->chunk_tokens;
    msg->has_rope_style = 1;
    msg->rope_style = l->rope_style;
    msg->has_rope_scaling = 1;
    msg->rope_scaling = l->rope_scaling;
    msg->has_rope_orig_max_pos = 1;
    msg->rope_orig_max_pos = l->rope_orig_max_pos;
    msg->has_rope_theta = 1;
    msg->rope_theta = l->rope_theta;
    msg->has_rope_factor = 1;
    msg->rope_factor = l->rope_factor;
    msg->has_rope_low_freq_factor = 1;
    msg->rope_low_freq_factor = l->rope_low_freq_factor;
    msg->has_rope_high_freq_factor = 1;
    msg->rope_high_freq_factor = l->rope_high_freq_factor;
}

uint64_t kvtc_wire_checksum(const void *buf, size_t len)
{
    /* libxxhash's dispatcher picks AVX2/AVX-512 at run time (the plain
     * entry point is the SSE2 build): about twice as fast on 64 MiB
     * chunks, same value. */
    return (uint64_t)KVTC_XXH3_64(buf, len);
}

int kvtc_wire_copy_checksum(void *dst, const void *src, size_t len,
                            uint64_t *sum)
{
    if ((!dst || !src) && len)
        return KVTC_EINVAL;
    if (len <= COPY_PIECE) {
        if (len)
            memcpy(dst, src, len);
        *sum = kvtc_wire_checksum(dst, len);
        return 0;
    }
    XXH3_state_t *st = XXH3_createState();
    if (!st || XXH3_64bits_reset(st) != XXH_OK) {
        XXH3_freeState(st);
        return KVTC_ENOMEM;
    }
    for (size_t off = 0; off < len; off += COPY_PIECE) {
        size_t n = len - off < COPY_PIECE ? len - off : COPY_PIECE;
        memcpy((uint8_t *)dst + off, (const uint8_t *)src + off, n);
        /* Hash what landed, while it is still in cache. */
        KVTC_XXH3_UPDATE(st, (const uint8_t *)dst + off, n);
    }
    *sum = (uint64_t)XXH3_64bits_digest(st);
    XXH3_freeState(st);
    return 0;
}

int kvtc_wire_status_to_err(int status)
{
    switch (status) {
    case KVTC__WIRE__STATUS__OK: return 0;
    case KVTC__WIRE__STATUS__NOT_FOUND: return KVTC_ENOENT;
    case KVTC__WIRE__STATUS__FULL: return KVTC_EFULL;
    case KVTC__WIRE__STATUS__INVALID: return KVTC_EINVAL;
    case KVTC__WIRE__STATUS__TOO_LARGE: return KVTC_ENOSPC;
    case KVTC__WIRE__STATUS__VERSION: return KVTC_EVERSION;
    case KVTC__WIRE__STATUS__UNAUTHORIZED: return KVTC_EPERM;
    case KVTC__WIRE__STATUS__CORRUPT: return KVTC_ECORRUPT;
    case KVTC__WIRE__STATUS__BUSY: return KVTC_EBUSY;
    case KVTC__WIRE__STATUS__INTERNAL: return KVTC_EIO;
    case KVTC__WIRE__STATUS__LOCAL: return KVTC_EIO;
    case KVTC__WIRE__STATUS__PROFILE: return KVTC_EPROFILE;
    case KVTC__WIRE__STATUS__UNSUPPORTED: return KVTC_ENOTSUP;
    case KVTC__WIRE__STATUS__PINNED: return KVTC_EPERM;
    default: return KVTC_EPROTO;
    }
}

Kvtc__Wire__Status kvtc_wire_err_to_status(int err)
{
    switch (err) {
    case 0: return KVTC__WIRE__STATUS__OK;
    case KVTC_ENOENT: return KVTC__WIRE__STATUS__NOT_FOUND;
    case KVTC_EFULL: return KVTC__WIRE__STATUS__FULL;
    case KVTC_EINVAL: return KVTC__WIRE__STATUS__INVALID;
    case KVTC_EPROTO: return KVTC__WIRE__STATUS__INVALID;
    case KVTC_ENOSPC: return KVTC__WIRE__STATUS__TOO_LARGE;
    case KVTC_EVERSION: return KVTC__WIRE__STATUS__VERSION;
    case KVTC_EPERM: return KVTC__WIRE__STATUS__UNAUTHORIZED;
    case KVTC_ECORRUPT: return KVTC__WIRE__STATUS__CORRUPT;
    case KVTC_EBUSY: return KVTC__WIRE__STATUS__BUSY;
    case KVTC_EPROFILE: return KVTC__WIRE__STATUS__PROFILE;
    case KVTC_ENOTSUP: return KVTC__WIRE__STATUS__UNSUPPORTED;
    default: return KVTC__WIRE__STATUS__INTERNAL;
    }
}

const char *kvtc_wire_status_name(int status)
{
    static const char *const names[] = {
        "OK",       "NOT_FOUND",    "FULL",    "INVALID", "TOO_LARGE",
        "VERSION",  "UNAUTHORIZED", "CORRUPT", "BUSY",    "INTERNAL",
        "PROFILE",  "UNSUPPORTED",  "PINNED",  "LOCAL"};
    if (status < 0 || (size_t)status >= sizeof names / sizeof names[0])
        return "UNKNOWN";
    return names[status];
}
