/* Hostile and broken requests, sent as raw UCX active messages built by
 * hand (libkvtc never sends these): every one gets an error reply, the
 * daemon keeps serving this connection and everyone else's. */
#include "itest.h"

#include "wire.h"

#include <criterion/criterion.h>
#include <stdlib.h>
#include <string.h>

static uint64_t next_id = 100;

/* Send a frame of exactly these bytes; return the decoded reply. */
static Kvtc__Wire__Reply *send_bytes(struct itest_raw *r, const void *hdr, size_t hlen,
                                     const void *data, size_t dlen)
{
    cr_assert_eq(itest_raw_send(r, KVTC_WIRE_AM_REQUEST, hdr, hlen, data, dlen), 0, "raw send failed");
    size_t len = 0;
    void *rep = itest_raw_wait_reply(r, 10000, &len);
    cr_assert_not_null(rep, "no reply to a %zu-byte frame within 10 s", hlen);
    Kvtc__Wire__Reply *out = NULL;
    int rc = kvtc_wire_unpack_reply(rep, len, &out);
    cr_assert_eq(rc, 0, "daemon's reply does not unpack: %s", kvtc_strerror(rc));
    free(rep);
    return out;
}

/* Pack req and send it the way a correct peer would: inline when the frame
 * fits the AM header, else "in data" (4-byte header, message then bulk). */
static Kvtc__Wire__Reply *send_req(struct itest_raw *r, Kvtc__Wire__Request *req, const void *data,
                                   size_t dlen)
{
    void *buf = NULL;
    size_t len = 0;
    req->id = ++next_id;
    cr_assert_eq(kvtc_wire_pack_request_alloc(req, &buf, &len), 0);
    Kvtc__Wire__Reply *rep;
    if (len <= itest_raw_max_header(r)) {
        rep = send_bytes(r, buf, len, data, dlen);
    } else {
        uint8_t *all = malloc(len - 4 + dlen);
        cr_assert_not_null(all);
        memcpy(all, (uint8_t *)buf + 4, len - 4);
        if (dlen)
            memcpy(all + len - 4, data, dlen);
        rep = send_bytes(r, buf, 4, all, len - 4 + dlen);
        free(all);
    }
    cr_assert_eq(rep->id, req->id, "reply id %lu, request id %lu", (unsigned long)rep->id,
                 (unsigned long)req->id);
    free(buf);
    return rep;
}

static void expect_status(Kvtc__Wire__Reply *rep, int want, const char *what)
{
    cr_expect_eq((int)rep->status, want, "%s: status %s, want %s (%s)", what,
                 kvtc_wire_status_name(rep->status), kvtc_wire_status_name(want),
                 rep->message ? rep->message : "");
    if (want != KVTC__WIRE__STATUS__OK)
        cr_expect(rep->message && rep->message[0], "%s: error reply without a message", what);
    kvtc_wire_reply_free(rep);
}

static void expect_error(Kvtc__Wire__Reply *rep, const char *what)
{
    cr_expect_neq((int)rep->status, KVTC__WIRE__STATUS__OK, "%s was accepted", what);
    kvtc_wire_reply_free(rep);
}

static Kvtc__Wire__Reply *hello(struct itest_raw *r, uint32_t major)
{
    Kvtc__Wire__Request req = KVTC__WIRE__REQUEST__INIT;
    Kvtc__Wire__Hello h = KVTC__WIRE__HELLO__INIT;
    h.major = major;
    h.minor = 0;
    req.body_case = KVTC__WIRE__REQUEST__BODY_HELLO;
    req.hello = &h;
    return send_req(r, &req, NULL, 0);
}

static Kvtc__Wire__Reply *stats(struct itest_raw *r)
{
    Kvtc__Wire__Request req = KVTC__WIRE__REQUEST__INIT;
    Kvtc__Wire__StatsRequest s = KVTC__WIRE__STATS_REQUEST__INIT;
    req.body_case = KVTC__WIRE__REQUEST__BODY_STATS;
    req.stats = &s;
    return send_req(r, &req, NULL, 0);
}

/* A one-chunk put whose metadata says what the test wants. */
static Kvtc__Wire__Reply *put_one(struct itest_raw *r, uint8_t *key, size_t key_len, uint64_t size,
                                  const void *data, size_t dlen)
{
    Kvtc__Wire__Request req = KVTC__WIRE__REQUEST__INIT;
    Kvtc__Wire__PutRequest p = KVTC__WIRE__PUT_REQUEST__INIT;
    Kvtc__Wire__ChunkMeta m = KVTC__WIRE__CHUNK_META__INIT;
    Kvtc__Wire__ChunkMeta *chunks[1] = {&m};
    m.key.data = key;
    m.key.len = key_len;
    m.size = size;
    p.n_chunks = 1;
    p.chunks = chunks;
    req.body_case = KVTC__WIRE__REQUEST__BODY_PUT;
    req.put = &p;
    return send_req(r, &req, data, dlen);
}

Test(it_malformed, raw_frames_get_errors_and_daemon_serves_on, .timeout = 60)
{
    struct itest_daemon d;
    itest_setup(ITEST_TLS_SM);
    itest_daemon_start(&d, "64M", 0, NULL);
    struct itest_raw *r = itest_raw_open(&d);

    /* Anything before Hello. */
    expect_status(stats(r), KVTC__WIRE__STATUS__UNAUTHORIZED, "stats before hello");
    /* Another major version: a clear VERSION error. */
    Kvtc__Wire__Reply *rep = hello(r, KVTC_PROTO_MAJOR + 1);
    cr_expect_eq(rep->status, KVTC__WIRE__STATUS__VERSION, "hello major %u: %s", KVTC_PROTO_MAJOR + 1,
                 kvtc_wire_status_name(rep->status));
    cr_expect(rep->message && strstr(rep->message, "2") && strstr(rep->message, "1"),
              "version error should name both versions: \"%s\"", rep->message ? rep->message : "");
    kvtc_wire_reply_free(rep);
    expect_status(hello(r, KVTC_PROTO_MAJOR), KVTC__WIRE__STATUS__OK, "hello");

    /* Garbage behind a consistent length prefix. */
    uint8_t junk[260];
    itest_fill(junk, sizeof junk, 99);
    uint32_t n = sizeof junk - 4;
    memcpy(junk, &n, 4);
    expect_error(send_bytes(r, junk, sizeof junk, NULL, 0), "garbage protobuf");
    /* A length prefix larger than the frame, and larger than the protocol cap. */
    n = 2u << 20;
    memcpy(junk, &n, 4);
    expect_error(send_bytes(r, junk, sizeof junk, NULL, 0), "length prefix of 2 MiB in a 260-byte frame");
    n = 100;
    memcpy(junk, &n, 4);
    expect_error(send_bytes(r, junk, sizeof junk, NULL, 0), "length prefix shorter than the frame");
    /* Shorter than a length prefix. */
    expect_error(send_bytes(r, junk, 2, NULL, 0), "2-byte frame");
    /* A request with no operation. */
    Kvtc__Wire__Request none = KVTC__WIRE__REQUEST__INIT;
    expect_status(send_req(r, &none, NULL, 0), KVTC__WIRE__STATUS__UNSUPPORTED, "request without body");

    /* Puts that lie. */
    uint8_t key[KVTC_WIRE_KEY_BYTES], data[4096];
    memset(key, 7, sizeof key);
    itest_fill(data, sizeof data, 5);
    expect_status(put_one(r, key, sizeof key, 1ull << 40, data, sizeof data), KVTC__WIRE__STATUS__TOO_LARGE,
                  "put declaring a 1 TiB chunk");
    expect_status(put_one(r, key, sizeof key, sizeof data * 2, data, sizeof data), KVTC__WIRE__STATUS__INVALID,
                  "put declaring twice its payload");
    expect_status(put_one(r, key, 5, sizeof data, data, sizeof data), KVTC__WIRE__STATUS__INVALID,
                  "put with a 5-byte key");
    /* A get naming more keys than any batch may (a frame "in data"). */
    {
        size_t many = KVTC_WIRE_MAX_BATCH + 1;
        Kvtc__Wire__Request req = KVTC__WIRE__REQUEST__INIT;
        Kvtc__Wire__GetRequest g = KVTC__WIRE__GET_REQUEST__INIT;
        ProtobufCBinaryData *keys = calloc(many, sizeof *keys);
        for (size_t i = 0; i < many; i++)
            keys[i] = (ProtobufCBinaryData){.len = sizeof key, .data = key};
        g.n_keys = many;
        g.keys = keys;
        req.body_case = KVTC__WIRE__REQUEST__BODY_GET;
        req.get = &g;
        expect_status(send_req(r, &req, NULL, 0), KVTC__WIRE__STATUS__TOO_LARGE, "get of 4097 keys");
        free(keys);
    }
    /* "In data" form whose prefix claims more message than the data holds. */
    n = 5000;
    memcpy(junk, &n, 4);
    expect_error(send_bytes(r, junk, 4, junk + 4, 100), "in-data frame shorter than its prefix");
    n = 2u << 20;
    memcpy(junk, &n, 4);
    expect_error(send_bytes(r, junk, 4, junk + 4, 200), "in-data frame claiming 2 MiB");
    /* An empty batch. */
    {
        Kvtc__Wire__Request req = KVTC__WIRE__REQUEST__INIT;
        Kvtc__Wire__GetRequest g = KVTC__WIRE__GET_REQUEST__INIT;
        req.body_case = KVTC__WIRE__REQUEST__BODY_GET;
        req.get = &g;
        expect_status(send_req(r, &req, NULL, 0), KVTC__WIRE__STATUS__INVALID, "get of 0 keys");
    }

    /* None of that stored anything, and this connection still works. */
    expect_status(put_one(r, key, sizeof key, sizeof data, data, sizeof data), KVTC__WIRE__STATUS__OK,
                  "valid put after the bad ones");
    rep = stats(r);
    cr_assert_eq(rep->status, KVTC__WIRE__STATUS__OK);
    cr_assert_eq(rep->body_case, KVTC__WIRE__REPLY__BODY_STATS);
    cr_expect_eq(rep->stats->chunks, 1, "stats.chunks %lu after one valid put", (unsigned long)rep->stats->chunks);
    cr_expect_geq(rep->stats->errors, 5, "stats.errors %lu after the bad requests",
                  (unsigned long)rep->stats->errors);
    kvtc_wire_reply_free(rep);

    /* Other clients were never disturbed. */
    kvtc_conn *c = itest_connect(&d);
    kvtc_key k;
    memcpy(k.bytes, key, sizeof key);
    uint8_t out[4096];
    size_t got = 0;
    cr_assert_eq(kvtc_get(c, &k, out, sizeof out, &got), 0);
    cr_assert_eq(got, sizeof data);
    cr_assert(itest_check(out, got, 5));
    kvtc_disconnect(c);
    itest_raw_close(r);
    itest_daemon_stop(&d);
}

Test(it_malformed, large_put_with_wrong_checksum_is_refused, .timeout = 60)
{
    struct itest_daemon d;
    itest_setup(ITEST_TLS_SM);
    itest_daemon_start(&d, "64M", 0, NULL);
    struct itest_raw *r = itest_raw_open(&d);
    expect_status(hello(r, KVTC_PROTO_MAJOR), KVTC__WIRE__STATUS__OK, "hello");

    size_t n = 3u << 20;
    uint8_t *data = malloc(n), key[KVTC_WIRE_KEY_BYTES];
    itest_fill(data, n, 11);
    memset(key, 9, sizeof key);
    Kvtc__Wire__Request req = KVTC__WIRE__REQUEST__INIT;
    Kvtc__Wire__PutRequest p = KVTC__WIRE__PUT_REQUEST__INIT;
    Kvtc__Wire__ChunkMeta m = KVTC__WIRE__CHUNK_META__INIT;
    Kvtc__Wire__ChunkMeta *chunks[1] = {&m};
    m.key = (ProtobufCBinaryData){.len = sizeof key, .data = key};
    m.size = n;
    m.has_checksum = 1;
    m.checksum = kvtc_wire_checksum(data, n) ^ 1;
    p.n_chunks = 1;
    p.chunks = chunks;
    req.body_case = KVTC__WIRE__REQUEST__BODY_PUT;
    req.put = &p;
    /* Rendezvous payload with a checksum that does not match it. */
    Kvtc__Wire__Reply *rep = send_req(r, &req, data, n);
    cr_expect_eq(rep->status, KVTC__WIRE__STATUS__CORRUPT, "%s", kvtc_wire_status_name(rep->status));
    kvtc_wire_reply_free(rep);
    /* The right checksum goes in. */
    m.checksum ^= 1;
    expect_status(send_req(r, &req, data, n), KVTC__WIRE__STATUS__OK, "put with the right checksum");
    rep = stats(r);
    cr_expect_eq(rep->stats->chunks, 1);
    kvtc_wire_reply_free(rep);
    free(data);
    itest_raw_close(r);
    itest_daemon_stop(&d);
}

/* A bind Hello{bind_session, bind_token} (docs/protocol.md, "Rails"). */
static Kvtc__Wire__Reply *bind_rail(struct itest_raw *r, uint64_t session, uint64_t token)
{
    Kvtc__Wire__Request req = KVTC__WIRE__REQUEST__INIT;
    Kvtc__Wire__Hello h = KVTC__WIRE__HELLO__INIT;
    h.major = KVTC_PROTO_MAJOR;
    h.minor = KVTC_PROTO_MINOR;
    h.has_bind_session = h.has_bind_token = 1;
    h.bind_session = session;
    h.bind_token = token;
    req.body_case = KVTC__WIRE__REQUEST__BODY_HELLO;
    req.hello = &h;
    return send_req(r, &req, NULL, 0);
}

/* A put on r that must get no answer within 2 s. */
static void expect_unanswered(struct itest_raw *r, uint8_t *key, const char *what)
{
    Kvtc__Wire__Request req = KVTC__WIRE__REQUEST__INIT;
    Kvtc__Wire__PutRequest p = KVTC__WIRE__PUT_REQUEST__INIT;
    Kvtc__Wire__ChunkMeta m = KVTC__WIRE__CHUNK_META__INIT;
    Kvtc__Wire__ChunkMeta *chunks[1] = {&m};
    m.key = (ProtobufCBinaryData){.len = KVTC_WIRE_KEY_BYTES, .data = key};
    m.size = 4;
    p.n_chunks = 1;
    p.chunks = chunks;
    req.body_case = KVTC__WIRE__REQUEST__BODY_PUT;
    req.put = &p;
    req.id = ++next_id;
    void *buf = NULL;
    size_t blen = 0, len = 0;
    cr_assert_eq(kvtc_wire_pack_request_alloc(&req, &buf, &blen), 0);
    itest_raw_send(r, KVTC_WIRE_AM_REQUEST, buf, blen, "abcd", 4); /* may fail: closed */
    free(buf);
    void *rep = itest_raw_wait_reply(r, 2000, &len);
    cr_expect_null(rep, "%s was answered", what);
    free(rep);
}

/* Rails: a bind with a wrong token is refused and its endpoint closed, as
 * is an endpoint whose first request is no bind; a bound rail takes puts
 * and gets only. The session and the daemon serve on. */
Test(it_malformed, rails_refuse_bad_binds_and_other_requests, .timeout = 90)
{
    struct itest_daemon d;
    itest_setup(ITEST_TLS_TCP);
    const char *extra[] = {"--rails", "2", NULL};
    itest_daemon_start(&d, "64M", 0, extra);
    struct itest_raw *r = itest_raw_open(&d);
    Kvtc__Wire__Request hreq = KVTC__WIRE__REQUEST__INIT;
    Kvtc__Wire__Hello h = KVTC__WIRE__HELLO__INIT;
    h.major = KVTC_PROTO_MAJOR;
    h.minor = KVTC_PROTO_MINOR;
    hreq.body_case = KVTC__WIRE__REQUEST__BODY_HELLO;
    hreq.hello = &h;
    Kvtc__Wire__Reply *rep = send_req(r, &hreq, NULL, 0);
    cr_assert_eq(rep->status, KVTC__WIRE__STATUS__OK);
    cr_assert_eq(rep->hello->n_rail_port, 2, "hello reply offers %zu rails",
                 rep->hello->n_rail_port);
    uint64_t session = rep->hello->session_id, token = rep->hello->bind_token;
    int port = (int)rep->hello->rail_port[0];
    kvtc_wire_reply_free(rep);

    /* Refused endpoints are closed on the daemon's side: what they send
     * next is not answered (UCX may tell this side only much later). */
    uint8_t key[KVTC_WIRE_KEY_BYTES];
    memset(key, 3, sizeof key);
    struct itest_raw *bad = itest_raw_open_port(port);
    expect_status(bind_rail(bad, session, token ^ 1), KVTC__WIRE__STATUS__UNAUTHORIZED,
                  "a rail bind with a wrong token");
    expect_unanswered(bad, key, "a put after a refused rail bind");
    itest_raw_close(bad);

    struct itest_raw *junk = itest_raw_open_port(port);
    Kvtc__Wire__StatsRequest sr = KVTC__WIRE__STATS_REQUEST__INIT;
    Kvtc__Wire__Request sreq = KVTC__WIRE__REQUEST__INIT;
    sreq.body_case = KVTC__WIRE__REQUEST__BODY_STATS;
    sreq.stats = &sr;
    sreq.id = ++next_id;
    void *buf = NULL;
    size_t blen = 0;
    cr_assert_eq(kvtc_wire_pack_request_alloc(&sreq, &buf, &blen), 0);
    cr_assert_eq(itest_raw_send(junk, KVTC_WIRE_AM_REQUEST, buf, blen, NULL, 0), 0);
    free(buf);
    size_t len = 0;
    void *none = itest_raw_wait_reply(junk, 2000, &len);
    cr_expect_null(none, "stats on an unbound rail endpoint was answered");
    free(none);
    expect_unanswered(junk, key, "a put on an unbound rail endpoint");
    itest_raw_close(junk);

    struct itest_raw *rail = itest_raw_open_port(port);
    expect_status(bind_rail(rail, session, token), KVTC__WIRE__STATUS__OK, "a good rail bind");
    expect_status(stats(rail), KVTC__WIRE__STATUS__INVALID, "stats on a rail");
    expect_status(put_one(rail, key, sizeof key, 4, "abcd", 4), KVTC__WIRE__STATUS__OK,
                  "a put on a rail");
    rep = stats(r);
    cr_expect_eq(rep->status, KVTC__WIRE__STATUS__OK);
    cr_expect_eq(rep->stats->chunks, 1, "the rail's put is not in the store");
    kvtc_wire_reply_free(rep);
    itest_raw_close(rail);
    itest_raw_close(r);
    cr_assert(itest_daemon_alive(&d));
    itest_daemon_stop(&d);
}
