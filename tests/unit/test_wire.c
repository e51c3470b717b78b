/* Framing of the wire protocol: round trips, and hostile length prefixes
 * refused before anything is allocated. */
#include <criterion/criterion.h>
#include <stdlib.h>
#include <string.h>

#include "wire.h"

static uint8_t key_a[32], key_b[32];

static void fill_keys(void)
{
    for (int i = 0; i < 32; i++) {
        key_a[i] = (uint8_t)i;
        key_b[i] = (uint8_t)(0xff - i);
    }
}

Test(wire, request_round_trip)
{
    fill_keys();
    Kvtc__Wire__Layout lmsg;
    kvtc_layout l = {.layers = 32, .kv_heads = 8, .head_dim = 128,
                     .dtype = KVTC_DTYPE_BF16, .chunk_tokens = 256,
                     .rope_style = KVTC_ROPE_HALF_SPLIT, .rope_theta = 5e5f};
    kvtc_wire_layout_to_msg(&l, &lmsg);

    Kvtc__Wire__ChunkMeta c0 = KVTC__WIRE__CHUNK_META__INIT;
    c0.key.data = key_a;
    c0.key.len = 32;
    c0.has_parent = 1;
    c0.parent.data = key_b;
    c0.parent.len = 32;
    c0.size = 1u << 20;
    c0.has_checksum = 1;
    c0.checksum = 0x1234567890abcdefull;
    c0.layout = &lmsg;
    Kvtc__Wire__ChunkMeta *chunks[] = {&c0};
    Kvtc__Wire__PutRequest put = KVTC__WIRE__PUT_REQUEST__INIT;
    put.n_chunks = 1;
    put.chunks = chunks;
    Kvtc__Wire__Request req = KVTC__WIRE__REQUEST__INIT;
    req.id = 42;
    req.body_case = KVTC__WIRE__REQUEST__BODY_PUT;
    req.put = &put;

    void *buf = NULL;
    size_t len = 0;
    cr_assert_eq(kvtc_wire_pack_request_alloc(&req, &buf, &len), 0);
    cr_assert_eq(len, kvtc_wire_request_frame_size(&req));
    size_t body = 0;
    cr_assert_eq(kvtc_wire_frame_check(buf, len, &body), 0);
    cr_assert_eq(body + 4, len);

    Kvtc__Wire__Request *out = NULL;
    cr_assert_eq(kvtc_wire_unpack_request(buf, len, &out), 0);
    cr_assert_eq(out->id, 42);
    cr_assert_eq(out->body_case, KVTC__WIRE__REQUEST__BODY_PUT);
    cr_assert_eq(out->put->n_chunks, 1);
    Kvtc__Wire__ChunkMeta *m = out->put->chunks[0];
    cr_assert(kvtc_wire_key_ok(&m->key));
    cr_assert_eq(memcmp(m->key.data, key_a, 32), 0);
    cr_assert_eq(memcmp(m->parent.data, key_b, 32), 0);
    cr_assert_eq(m->size, 1u << 20);
    cr_assert_eq(m->checksum, 0x1234567890abcdefull);
    cr_assert_not_null(m->layout);
    kvtc_layout back;
    kvtc_wire_layout_from_msg(m->layout, &back);
    cr_assert_eq(memcmp(&back, &l, sizeof l), 0);
    kvtc_wire_request_free(out);
    free(buf);
}

Test(wire, reply_round_trip_into_buffer)
{
    Kvtc__Wire__LookupReply lk = KVTC__WIRE__LOOKUP_REPLY__INIT;
    Kvtc__Wire__Tier tiers[] = {KVTC__WIRE__TIER__TIER_HOST,
                                KVTC__WIRE__TIER__TIER_HOST};
    lk.hits = 2;
    lk.n_tiers = 2;
    lk.tiers = tiers;
    Kvtc__Wire__Reply rep = KVTC__WIRE__REPLY__INIT;
    rep.id = 7;
    rep.status = KVTC__WIRE__STATUS__OK;
    rep.body_case = KVTC__WIRE__REPLY__BODY_LOOKUP;
    rep.lookup = &lk;

    uint8_t buf[256];
    size_t len = 0;
    cr_assert_eq(kvtc_wire_pack_reply(&rep, buf, 3, &len), KVTC_ENOSPC);
    cr_assert_eq(kvtc_wire_pack_reply(&rep, buf, sizeof buf, &len), 0);
    Kvtc__Wire__Reply *out = NULL;
    cr_assert_eq(kvtc_wire_unpack_reply(buf, len, &out), 0);
    cr_assert_eq(out->id, 7);
    cr_assert_eq(out->lookup->hits, 2);
    cr_assert_eq(out->lookup->n_tiers, 2);
    cr_assert_eq(out->lookup->tiers[1], KVTC__WIRE__TIER__TIER_HOST);
    kvtc_wire_reply_free(out);
}

Test(wire, truncated_and_oversize_prefixes_rejected)
{
    uint8_t buf[16] = {0};
    size_t body;
    Kvtc__Wire__Request *out = NULL;
    /* Shorter than the prefix itself. */
    cr_assert_eq(kvtc_wire_frame_check(buf, 3, &body), KVTC_EPROTO);
    cr_assert_eq(kvtc_wire_unpack_request(buf, 0, &out), KVTC_EPROTO);
    /* Prefix claims 4 GiB - 1: refused without allocating. */
    memset(buf, 0xff, 4);
    cr_assert_eq(kvtc_wire_unpack_request(buf, sizeof buf, &out),
                 KVTC_EPROTO);
    /* Prefix just over the cap, even with a buffer that "holds" it. */
    uint32_t n = KVTC_WIRE_MAX_FRAME + 1;
    buf[0] = (uint8_t)n;
    buf[1] = (uint8_t)(n >> 8);
    buf[2] = (uint8_t)(n >> 16);
    buf[3] = (uint8_t)(n >> 24);
    cr_assert_eq(kvtc_wire_frame_check(buf, (size_t)n + 4, &body),
                 KVTC_EPROTO);
    /* Prefix longer than the bytes that arrived (truncated frame). */
    buf[0] = 10;
    buf[1] = buf[2] = buf[3] = 0;
    cr_assert_eq(kvtc_wire_frame_check(buf, 8, &body), KVTC_EPROTO);
    /* Prefix shorter than the bytes that arrived (trailing junk). */
    cr_assert_eq(kvtc_wire_frame_check(buf, 15, &body), KVTC_EPROTO);
    cr_assert_null(out);
}

Test(wire, garbage_and_missing_required_fields_rejected)
{
    /* A valid prefix around bytes that are not a Request. */
    uint8_t buf[12] = {8, 0, 0, 0, 0xff, 0xff, 0xff, 0xff,
                       0xff, 0xff, 0xff, 0xff};
    Kvtc__Wire__Request *out = NULL;
    cr_assert_eq(kvtc_wire_unpack_request(buf, sizeof buf, &out),
                 KVTC_EPROTO);
    /* An empty message lacks the required id. */
    uint8_t empty[4] = {0, 0, 0, 0};
    cr_assert_eq(kvtc_wire_unpack_request(empty, 4, &out), KVTC_EPROTO);
    cr_assert_null(out);
}

Test(wire, truncated_body_rejected)
{
    fill_keys();
    ProtobufCBinaryData keys[2] = {{32, key_a}, {32, key_b}};
    Kvtc__Wire__LookupRequest lk = KVTC__WIRE__LOOKUP_REQUEST__INIT;
    lk.n_keys = 2;
    lk.keys = keys;
    Kvtc__Wire__Request req = KVTC__WIRE__REQUEST__INIT;
    req.id = 1;
    req.body_case = KVTC__WIRE__REQUEST__BODY_LOOKUP;
    req.lookup = &lk;
    uint8_t buf[256];
    size_t len;
    cr_assert_eq(kvtc_wire_pack_request(&req, buf, sizeof buf, &len), 0);
    /* Cut the body but fix the prefix up so only protobuf can notice. */
    size_t cut = len - 10;
    uint32_t n = (uint32_t)(cut - 4);
    buf[0] = (uint8_t)n;
    buf[1] = (uint8_t)(n >> 8);
    buf[2] = buf[3] = 0;
    Kvtc__Wire__Request *out = NULL;
    cr_assert_eq(kvtc_wire_unpack_request(buf, cut, &out), KVTC_EPROTO);
}

Test(wire, amplification_capped_by_budget)
{
    /* A Put of ~400k empty ChunkMeta (2 bytes each on the wire, a ~150-byte
     * struct each in memory) fits in the frame cap but not the budget...
     * protobuf-c also rejects them for missing required fields; either way
     * the unpack must fail cleanly rather than allocate without bound. */
    size_t n = (KVTC_WIRE_MAX_FRAME - 16) / 2;
    /* Request: field 1 (id) varint, field 3 (put) length-delimited. */
    size_t put_len = n * 2;
    uint8_t *buf = malloc(KVTC_WIRE_MAX_FRAME + 4);
    cr_assert_not_null(buf);
    size_t o = 4;
    buf[o++] = 0x08; /* id */
    buf[o++] = 0x01;
    buf[o++] = 0x1a; /* put, wire type 2 */
    size_t v = put_len;
    while (v >= 0x80) {
        buf[o++] = (uint8_t)(v | 0x80);
        v >>= 7;
    }
    buf[o++] = (uint8_t)v;
    for (size_t i = 0; i < n; i++) {
        buf[o++] = 0x0a; /* chunks, wire type 2 */
        buf[o++] = 0x00; /* empty */
    }
    uint32_t body = (uint32_t)(o - 4);
    cr_assert_leq(body, KVTC_WIRE_MAX_FRAME);
    buf[0] = (uint8_t)body;
    buf[1] = (uint8_t)(body >> 8);
    buf[2] = (uint8_t)(body >> 16);
    buf[3] = (uint8_t)(body >> 24);
    Kvtc__Wire__Request *out = NULL;
    cr_assert_eq(kvtc_wire_unpack_request(buf, o, &out), KVTC_EPROTO);
    free(buf);
}

Test(wire, helpers)
{
    uint8_t k[33] = {0};
    ProtobufCBinaryData good = {32, k}, short_k = {31, k}, long_k = {33, k};
    cr_assert(kvtc_wire_key_ok(&good));
    cr_assert_not(kvtc_wire_key_ok(&short_k));
    cr_assert_not(kvtc_wire_key_ok(&long_k));
    cr_assert(kvtc_wire_version_ok(KVTC_PROTO_MAJOR));
    cr_assert_not(kvtc_wire_version_ok(KVTC_PROTO_MAJOR + 1));
    cr_assert(kvtc_wire_encoding_ok(KVTC__WIRE__ENCODING__KVTC));
    cr_assert_not(kvtc_wire_encoding_ok(7));
    cr_assert_eq(kvtc_wire_status_to_err(KVTC__WIRE__STATUS__FULL),
                 KVTC_EFULL);
    cr_assert_eq(kvtc_wire_err_to_status(KVTC_EFULL),
                 KVTC__WIRE__STATUS__FULL);
    cr_assert_eq(kvtc_wire_status_to_err(99), KVTC_EPROTO);
    cr_assert_str_eq(kvtc_wire_status_name(KVTC__WIRE__STATUS__PINNED),
                     "PINNED");
    cr_assert_str_eq(kvtc_wire_status_name(-1), "UNKNOWN");
    /* XXH3-64 of the empty input is a published constant. */
    cr_assert_eq(kvtc_wire_checksum("", 0), 0x2d06800538d394c2ull);
}

Test(wire, am_split_inline_and_in_data)
{
    fill_keys();
    ProtobufCBinaryData keys[1] = {{32, key_a}};
    Kvtc__Wire__GetRequest g = KVTC__WIRE__GET_REQUEST__INIT;
    g.n_keys = 1;
    g.keys = keys;
    Kvtc__Wire__Request req = KVTC__WIRE__REQUEST__INIT;
    req.id = 9;
    req.body_case = KVTC__WIRE__REQUEST__BODY_GET;
    req.get = &g;
    uint8_t frame[128];
    size_t len, n;
    int in_data = -1;
    cr_assert_eq(kvtc_wire_pack_request(&req, frame, sizeof frame, &len), 0);
    /* Inline: the whole frame is the AM header. */
    cr_assert_eq(kvtc_wire_am_split(frame, len, 0, &n, &in_data), 0);
    cr_assert_eq(in_data, 0);
    cr_assert_eq(n, len - 4);
    /* In data: header = prefix only, message = first n bytes of data. */
    cr_assert_eq(kvtc_wire_am_split(frame, 4, len - 4 + 100, &n, &in_data),
                 0);
    cr_assert_eq(in_data, 1);
    cr_assert_eq(n, len - 4);
    Kvtc__Wire__Request *out = NULL;
    cr_assert_eq(kvtc_wire_unpack_request_msg(frame + 4, n, &out), 0);
    cr_assert_eq(out->id, 9);
    kvtc_wire_request_free(out);
    /* Data shorter than the message it should start with. */
    cr_assert_eq(kvtc_wire_am_split(frame, 4, n - 1, &n, &in_data),
                 KVTC_EPROTO);
    /* Zero-length message, and headers shorter than a prefix. */
    uint8_t zero[4] = {0};
    cr_assert_eq(kvtc_wire_am_split(zero, 4, 100, &n, &in_data), KVTC_EPROTO);
    cr_assert_eq(kvtc_wire_am_split(frame, 3, 100, &n, &in_data),
                 KVTC_EPROTO);
    cr_assert_eq(kvtc_wire_unpack_request_msg(frame + 4, 0, &out),
                 KVTC_EPROTO);
}
