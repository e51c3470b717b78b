/* kvtcd's own rules, end to end over real UCX with hand-made frames: layouts
 * checked against the codec's bounds and chunk size, encodings the daemon
 * does not serve, put TTLs, Delete/Pin reply statuses, and backpressure
 * (FULL with a clear message) when every chunk is pinned. */
#include "itest.h"

#include "kvtc_codec.h"
#include "wire.h"

#include <criterion/criterion.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static uint64_t next_id = 5000;

static Kvtc__Wire__Reply *send_req(struct itest_raw *r, Kvtc__Wire__Request *req,
                                   const void *data, size_t dlen)
{
    void *buf = NULL;
    size_t len = 0;
    req->id = ++next_id;
    cr_assert_eq(kvtc_wire_pack_request_alloc(req, &buf, &len), 0);
    cr_assert_leq(len, itest_raw_max_header(r), "test frame too big for inline");
    cr_assert_eq(itest_raw_send(r, KVTC_WIRE_AM_REQUEST, buf, len, data, dlen), 0);
    free(buf);
    size_t rlen = 0;
    void *rep = itest_raw_wait_reply(r, 10000, &rlen);
    cr_assert_not_null(rep, "no reply within 10 s");
    Kvtc__Wire__Reply *out = NULL;
    cr_assert_eq(kvtc_wire_unpack_reply(rep, rlen, &out), 0);
    free(rep);
    cr_assert_eq(out->id, req->id);
    return out;
}

static void expect(Kvtc__Wire__Reply *rep, int want, const char *what)
{
    cr_expect_eq((int)rep->status, want, "%s: %s, want %s (%s)", what,
                 kvtc_wire_status_name(rep->status), kvtc_wire_status_name(want),
                 rep->message ? rep->message : "");
    kvtc_wire_reply_free(rep);
}

static void hello(struct itest_raw *r)
{
    Kvtc__Wire__Request req = KVTC__WIRE__REQUEST__INIT;
    Kvtc__Wire__Hello h = KVTC__WIRE__HELLO__INIT;
    h.major = KVTC_PROTO_MAJOR;
    h.tenant = (char *)"it-daemon";
    req.body_case = KVTC__WIRE__REQUEST__BODY_HELLO;
    req.hello = &h;
    expect(send_req(r, &req, NULL, 0), KVTC__WIRE__STATUS__OK, "hello");
}

static void key_of(uint8_t k[32], uint32_t i)
{
    memset(k, 0x3c, 32);
    memcpy(k, &i, sizeof i);
}

struct put_opts {
    const kvtc_layout *layout;
    uint32_t n_tokens;
    int encoding; /* -1: unset */
    uint32_t ttl_ms;
};

static Kvtc__Wire__Reply *put(struct itest_raw *r, uint32_t i, const void *data,
                              size_t size, const struct put_opts *o)
{
    uint8_t k[32];
    key_of(k, i);
    Kvtc__Wire__Layout lm;
    Kvtc__Wire__ChunkMeta m = KVTC__WIRE__CHUNK_META__INIT;
    Kvtc__Wire__ChunkMeta *chunks[1] = {&m};
    m.key.data = k;
    m.key.len = 32;
    m.size = size;
    m.has_checksum = 1;
    m.checksum = kvtc_wire_checksum(data, size);
    if (o && o->layout) {
        kvtc_wire_layout_to_msg(o->layout, &lm);
        m.layout = &lm;
        m.has_n_tokens = 1;
        m.n_tokens = o->n_tokens;
    }
    if (o && o->encoding >= 0) {
        m.has_encoding = 1;
        m.encoding = (Kvtc__Wire__Encoding)o->encoding;
    }
    Kvtc__Wire__PutRequest p = KVTC__WIRE__PUT_REQUEST__INIT;
    p.n_chunks = 1;
    p.chunks = chunks;
    if (o && o->ttl_ms) {
        p.has_ttl_ms = 1;
        p.ttl_ms = o->ttl_ms;
    }
    Kvtc__Wire__Request req = KVTC__WIRE__REQUEST__INIT;
    req.body_case = KVTC__WIRE__REQUEST__BODY_PUT;
    req.put = &p;
    return send_req(r, &req, data, size);
}

/* Get one key; returns the reply (caller frees). */
static Kvtc__Wire__Reply *get(struct itest_raw *r, uint32_t i, int want)
{
    uint8_t k[32];
    key_of(k, i);
    ProtobufCBinaryData keys[1] = {{32, k}};
    Kvtc__Wire__GetRequest g = KVTC__WIRE__GET_REQUEST__INIT;
    g.n_keys = 1;
    g.keys = keys;
    if (want >= 0) {
        g.has_want = 1;
        g.want = (Kvtc__Wire__Encoding)want;
    }
    Kvtc__Wire__Request req = KVTC__WIRE__REQUEST__INIT;
    req.body_case = KVTC__WIRE__REQUEST__BODY_GET;
    req.get = &g;
    return send_req(r, &req, NULL, 0);
}

static int get_status(struct itest_raw *r, uint32_t i)
{
    Kvtc__Wire__Reply *rep = get(r, i, -1);
    cr_assert_eq(rep->status, KVTC__WIRE__STATUS__OK);
    cr_assert_eq(rep->get->n_results, 1);
    int st = rep->get->results[0]->status;
    kvtc_wire_reply_free(rep);
    return st;
}

static Kvtc__Wire__Reply *keys_req(struct itest_raw *r, int kind, uint32_t first,
                                   uint32_t n, int pin)
{
    uint8_t k[8][32];
    ProtobufCBinaryData keys[8];
    cr_assert_leq(n, 8);
    for (uint32_t i = 0; i < n; i++) {
        key_of(k[i], first + i);
        keys[i].data = k[i];
        keys[i].len = 32;
    }
    Kvtc__Wire__Request req = KVTC__WIRE__REQUEST__INIT;
    Kvtc__Wire__PinRequest p = KVTC__WIRE__PIN_REQUEST__INIT;
    Kvtc__Wire__DeleteRequest d = KVTC__WIRE__DELETE_REQUEST__INIT;
    if (kind == KVTC__WIRE__REQUEST__BODY_PIN) {
        p.n_keys = n;
        p.keys = keys;
        p.pin = pin;
        req.body_case = KVTC__WIRE__REQUEST__BODY_PIN;
        req.pin = &p;
    } else {
        d.n_keys = n;
        d.keys = keys;
        req.body_case = KVTC__WIRE__REQUEST__BODY_DEL;
        req.del = &d;
    }
    return send_req(r, &req, NULL, 0);
}

Test(it_daemon, layouts_and_encodings_are_validated, .timeout = 60)
{
    struct itest_daemon d;
    itest_setup(ITEST_TLS_SM);
    itest_daemon_start(&d, "64M", 0, NULL);
    struct itest_raw *r = itest_raw_open(&d);
    hello(r);

    kvtc_layout l = {.layers = 2, .kv_heads = 2, .head_dim = 8,
                     .dtype = KVTC_DTYPE_BF16, .chunk_tokens = 16};
    size_t want = kvtc_chunk_bytes(&l, 16);
    cr_assert_gt(want, 0);
    uint8_t *buf = malloc(want + 64);
    itest_fill(buf, want + 64, 5);

    struct put_opts o = {.layout = &l, .n_tokens = 16, .encoding = -1};
    expect(put(r, 1, buf, want, &o), KVTC__WIRE__STATUS__OK, "right size for the layout");
    expect(put(r, 2, buf, want + 2, &o), KVTC__WIRE__STATUS__INVALID, "2 bytes over the layout");
    struct put_opts o8 = o;
    o8.n_tokens = 8;
    expect(put(r, 3, buf, want, &o8), KVTC__WIRE__STATUS__INVALID, "size of 16 tokens, says 8");
    kvtc_layout huge = l;
    huge.layers = KVTC_MAX_LAYERS + 1;
    struct put_opts oh = {.layout = &huge, .n_tokens = 16, .encoding = -1};
    expect(put(r, 4, buf, want, &oh), KVTC__WIRE__STATUS__INVALID, "layers over the bound");
    kvtc_layout badtype = l;
    badtype.dtype = 99;
    struct put_opts ob = {.layout = &badtype, .n_tokens = 16, .encoding = -1};
    expect(put(r, 5, buf, want, &ob), KVTC__WIRE__STATUS__INVALID, "unknown dtype");
    struct put_opts ok_kvtc = {.encoding = KVTC__WIRE__ENCODING__KVTC};
    /* 1.2: containers are accepted, once checked: 100 bytes are not one. */
    Kvtc__Wire__Reply *kr = put(r, 6, buf, 100, &ok_kvtc);
    cr_expect(kr->status == KVTC__WIRE__STATUS__CORRUPT ||
                  kr->status == KVTC__WIRE__STATUS__VERSION,
              "KVTC encoding of garbage: %s", kvtc_wire_status_name(kr->status));
    kvtc_wire_reply_free(kr);
    struct put_opts enc7 = {.encoding = 7};
    expect(put(r, 7, buf, 100, &enc7), KVTC__WIRE__STATUS__INVALID, "encoding 7");
    expect(get(r, 1, KVTC__WIRE__ENCODING__KVTC), KVTC__WIRE__STATUS__OK, "want KVTC");
    expect(get(r, 1, 9), KVTC__WIRE__STATUS__INVALID, "want 9");

    /* Nothing but the good chunk was stored, and its layout comes back. */
    for (uint32_t i = 2; i <= 7; i++)
        cr_expect_eq(get_status(r, i), KVTC__WIRE__STATUS__NOT_FOUND, "chunk %u stored", i);
    Kvtc__Wire__Reply *rep = get(r, 1, -1);
    cr_assert_eq(rep->status, KVTC__WIRE__STATUS__OK);
    Kvtc__Wire__GetResult *res = rep->get->results[0];
    cr_assert_eq(res->status, KVTC__WIRE__STATUS__OK);
    cr_assert_not_null(res->meta->layout);
    cr_expect_eq(res->meta->layout->layers, 2);
    cr_expect_eq(res->meta->layout->head_dim, 8);
    cr_expect_eq(res->meta->n_tokens, 16);
    cr_expect_eq(res->meta->size, want);
    cr_expect_eq(res->meta->checksum, kvtc_wire_checksum(buf, want));
    cr_expect_eq(res->tier, KVTC__WIRE__TIER__TIER_HOST);
    kvtc_wire_reply_free(rep);

    free(buf);
    itest_raw_close(r);
    itest_daemon_stop(&d);
}

static void sleep_ms(int ms)
{
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

Test(it_daemon, ttl_delete_pin_statuses, .timeout = 60)
{
    struct itest_daemon d;
    itest_setup(ITEST_TLS_SM);
    itest_daemon_start(&d, "64M", 0, NULL);
    struct itest_raw *r = itest_raw_open(&d);
    hello(r);
    uint8_t buf[4096];
    itest_fill(buf, sizeof buf, 9);

    struct put_opts ttl = {.encoding = -1, .ttl_ms = 300};
    expect(put(r, 1, buf, sizeof buf, &ttl), KVTC__WIRE__STATUS__OK, "put with ttl");
    expect(put(r, 2, buf, sizeof buf, NULL), KVTC__WIRE__STATUS__OK, "put");
    cr_expect_eq(get_status(r, 1), KVTC__WIRE__STATUS__OK);
    sleep_ms(600);
    cr_expect_eq(get_status(r, 1), KVTC__WIRE__STATUS__NOT_FOUND, "chunk outlived its ttl");
    cr_expect_eq(get_status(r, 2), KVTC__WIRE__STATUS__OK);

    /* Pin 2; deleting 2 and a missing 3 reports per key, and the reply's
     * status is the first failure. */
    Kvtc__Wire__Reply *rep = keys_req(r, KVTC__WIRE__REQUEST__BODY_PIN, 2, 1, 1);
    cr_assert_eq(rep->status, KVTC__WIRE__STATUS__OK);
    kvtc_wire_reply_free(rep);
    rep = keys_req(r, KVTC__WIRE__REQUEST__BODY_DEL, 2, 2, 0);
    cr_expect_eq(rep->status, KVTC__WIRE__STATUS__PINNED);
    cr_assert_eq(rep->body_case, KVTC__WIRE__REPLY__BODY_DEL);
    cr_assert_eq(rep->del->n_status, 2);
    cr_expect_eq(rep->del->status[0], KVTC__WIRE__STATUS__PINNED);
    cr_expect_eq(rep->del->status[1], KVTC__WIRE__STATUS__NOT_FOUND);
    kvtc_wire_reply_free(rep);
    rep = keys_req(r, KVTC__WIRE__REQUEST__BODY_PIN, 2, 1, 0);
    kvtc_wire_reply_free(rep);
    rep = keys_req(r, KVTC__WIRE__REQUEST__BODY_DEL, 2, 1, 0);
    cr_expect_eq(rep->status, KVTC__WIRE__STATUS__OK);
    kvtc_wire_reply_free(rep);
    cr_expect_eq(get_status(r, 2), KVTC__WIRE__STATUS__NOT_FOUND);
    itest_raw_close(r);
    itest_daemon_stop(&d);
}

Test(it_daemon, full_store_answers_full_and_recovers, .timeout = 60)
{
    struct itest_daemon d;
    itest_setup(ITEST_TLS_SM);
    itest_daemon_start(&d, "4M", 0, NULL);
    struct itest_raw *r = itest_raw_open(&d);
    hello(r);
    size_t mb = 1u << 20;
    uint8_t *buf = malloc(2 * mb);
    itest_fill(buf, 2 * mb, 3);
    for (uint32_t i = 0; i < 4; i++)
        expect(put(r, i, buf, mb, NULL), KVTC__WIRE__STATUS__OK, "fill");
    Kvtc__Wire__Reply *rep = keys_req(r, KVTC__WIRE__REQUEST__BODY_PIN, 0, 4, 1);
    cr_assert_eq(rep->status, KVTC__WIRE__STATUS__OK);
    kvtc_wire_reply_free(rep);

    rep = put(r, 10, buf, 2 * mb, NULL);
    cr_expect_eq(rep->status, KVTC__WIRE__STATUS__FULL, "%s", kvtc_wire_status_name(rep->status));
    cr_expect(rep->message && strstr(rep->message, "full"), "FULL without a clear message");
    if (rep->body_case == KVTC__WIRE__REPLY__BODY_PUT && rep->put->n_status == 1)
        cr_expect_eq(rep->put->status[0], KVTC__WIRE__STATUS__FULL);
    kvtc_wire_reply_free(rep);
    for (uint32_t i = 0; i < 4; i++)
        cr_expect_eq(get_status(r, i), KVTC__WIRE__STATUS__OK, "pinned chunk %u dropped", i);
    char *body = NULL;
    cr_assert_eq(itest_http_get(d.admin_port, "/metrics", &body), 200);
    cr_expect(strstr(body, "\nkvtc_rejected_full_total 1\n"), "metrics:\n%s", body);
    free(body);

    /* Unpin two: the put now fits by evicting them. */
    rep = keys_req(r, KVTC__WIRE__REQUEST__BODY_PIN, 0, 2, 0);
    kvtc_wire_reply_free(rep);
    expect(put(r, 10, buf, 2 * mb, NULL), KVTC__WIRE__STATUS__OK, "put after unpin");
    cr_expect_eq(get_status(r, 0), KVTC__WIRE__STATUS__NOT_FOUND);
    cr_expect_eq(get_status(r, 1), KVTC__WIRE__STATUS__NOT_FOUND);
    cr_expect_eq(get_status(r, 2), KVTC__WIRE__STATUS__OK);
    cr_expect_eq(get_status(r, 10), KVTC__WIRE__STATUS__OK);
    free(buf);
    itest_raw_close(r);
    itest_daemon_stop(&d);
}

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

/* Send raw bytes to the admin port; return what came back (malloc'd). */
static char *http_raw(int port, const char *req, size_t len)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    cr_assert_geq(fd, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    cr_assert_eq(connect(fd, (struct sockaddr *)&a, sizeof a), 0);
    struct timeval tv = {10, 0};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    size_t off = 0;
    while (off < len) {
        ssize_t n = send(fd, req + off, len - off, MSG_NOSIGNAL);
        if (n <= 0)
            break; /* the daemon may answer and close before reading it all */
        off += (size_t)n;
    }
    size_t cap = 65536, got = 0;
    char *out = calloc(1, cap + 1);
    for (;;) {
        ssize_t n = recv(fd, out + got, cap - got, 0);
        if (n <= 0)
            break;
        got += (size_t)n;
    }
    close(fd);
    return out;
}

Test(it_daemon, admin_http_edge_cases, .timeout = 60)
{
    struct itest_daemon d;
    itest_setup(ITEST_TLS_SM);
    itest_daemon_start(&d, "16M", 0, NULL);
    struct {
        const char *req, *want;
    } cases[] = {
        {"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n", "HTTP/1.1 200 OK"},
        {"GET /metrics?x=1 HTTP/1.1\r\nHost: x\r\n\r\n", "# TYPE kvtc_chunks gauge"},
        {"HEAD /healthz HTTP/1.1\r\nHost: x\r\n\r\n", "HTTP/1.1 200 OK"},
        {"POST /metrics HTTP/1.1\r\nContent-Length: 0\r\n\r\n", "HTTP/1.1 405"},
        {"GET /nope HTTP/1.1\r\n\r\n", "HTTP/1.1 404"},
        {"\x01\x02garbage\r\n\r\n", "HTTP/1.1 400"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        char *out = http_raw(d.admin_port, cases[i].req, strlen(cases[i].req));
        cr_expect(strstr(out, cases[i].want), "case %zu: got '%.200s'", i, out);
        if (i == 2)
            cr_expect(!strstr(out, "\r\n\r\nok"), "HEAD with a body");
        free(out);
    }
    /* 20 KiB of headers: refused, not buffered without bound. */
    size_t big = 20000;
    char *req = malloc(big + 64);
    int n = snprintf(req, 64, "GET /healthz HTTP/1.1\r\nX-Pad: ");
    memset(req + n, 'a', big);
    memcpy(req + n + big, "\r\n\r\n", 5);
    char *out = http_raw(d.admin_port, req, strlen(req));
    cr_expect(strstr(out, "HTTP/1.1 431"), "got '%.200s'", out);
    free(out);
    free(req);
    /* Still serving. */
    char *body = NULL;
    cr_assert_eq(itest_http_get(d.admin_port, "/healthz", &body), 200);
    free(body);
    itest_daemon_stop(&d);
}

/* Random damage to valid frames: every one is answered (any status) and the
 * daemon keeps serving. Seeded, so a failure replays. */
Test(it_daemon, mutated_frames_are_all_answered, .timeout = 120)
{
    struct itest_daemon d;
    itest_setup(ITEST_TLS_SM);
    itest_daemon_start(&d, "16M", 0, NULL);
    struct itest_raw *r = itest_raw_open(&d);
    hello(r);
    uint8_t k[4][32];
    ProtobufCBinaryData keys[4];
    for (uint32_t i = 0; i < 4; i++) {
        key_of(k[i], i);
        keys[i].data = k[i];
        keys[i].len = 32;
    }
    uint8_t payload[256];
    itest_fill(payload, sizeof payload, 1);
    kvtc_layout l = {.layers = 1, .kv_heads = 1, .head_dim = 64, .dtype = KVTC_DTYPE_FP16,
                     .chunk_tokens = 1};
    Kvtc__Wire__Layout lm;
    kvtc_wire_layout_to_msg(&l, &lm);
    Kvtc__Wire__ChunkMeta m = KVTC__WIRE__CHUNK_META__INIT;
    Kvtc__Wire__ChunkMeta *chunks[1] = {&m};
    m.key = keys[0];
    m.has_parent = 1;
    m.parent = keys[1];
    m.size = 128;
    m.layout = &lm;
    m.has_n_tokens = 1;
    m.n_tokens = 1;
    Kvtc__Wire__PutRequest put = KVTC__WIRE__PUT_REQUEST__INIT;
    put.n_chunks = 1;
    put.chunks = chunks;
    Kvtc__Wire__GetRequest get = KVTC__WIRE__GET_REQUEST__INIT;
    get.n_keys = 4;
    get.keys = keys;
    Kvtc__Wire__LookupRequest lk = KVTC__WIRE__LOOKUP_REQUEST__INIT;
    lk.n_keys = 4;
    lk.keys = keys;
    Kvtc__Wire__PinRequest pin = KVTC__WIRE__PIN_REQUEST__INIT;
    pin.n_keys = 2;
    pin.keys = keys;
    pin.pin = 1;
    pin.has_ttl_ms = 1;
    pin.ttl_ms = 50;
    Kvtc__Wire__Request reqs[4];
    for (int i = 0; i < 4; i++) {
        kvtc__wire__request__init(&reqs[i]);
        reqs[i].id = 77;
    }
    reqs[0].body_case = KVTC__WIRE__REQUEST__BODY_PUT;
    reqs[0].put = &put;
    reqs[1].body_case = KVTC__WIRE__REQUEST__BODY_GET;
    reqs[1].get = &get;
    reqs[2].body_case = KVTC__WIRE__REQUEST__BODY_LOOKUP;
    reqs[2].lookup = &lk;
    reqs[3].body_case = KVTC__WIRE__REQUEST__BODY_PIN;
    reqs[3].pin = &pin;

    uint64_t rng = 0x9e3779b97f4a7c15ull;
    for (int it = 0; it < 400; it++) {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        uint8_t frame[1024];
        size_t len;
        cr_assert_eq(kvtc_wire_pack_request(&reqs[rng % 4], frame, sizeof frame, &len), 0);
        size_t body = len - 4;
        /* Flip 1-4 bytes of the message, sometimes cut it short. */
        for (uint64_t f = 0, nf = 1 + (rng >> 8) % 4; f < nf; f++) {
            size_t at = 4 + (size_t)((rng >> (16 + 8 * f)) % body);
            frame[at] ^= (uint8_t)(1u << ((rng >> (40 + f)) % 8));
        }
        if ((rng >> 60) == 0 && body > 2)
            body -= 1 + (rng >> 20) % (body - 1);
        frame[0] = (uint8_t)body;
        frame[1] = (uint8_t)(body >> 8);
        frame[2] = frame[3] = 0;
        size_t dlen = (rng >> 30) % 3 == 0 ? 128 : 0;
        cr_assert_eq(itest_raw_send(r, KVTC_WIRE_AM_REQUEST, frame, 4 + body, payload, dlen), 0);
        size_t rlen = 0;
        void *rep = itest_raw_wait_reply(r, 10000, &rlen);
        cr_assert_not_null(rep, "iteration %d: no reply:\n%s", it, itest_log_tail(&d));
        Kvtc__Wire__Reply *out = NULL;
        cr_assert_eq(kvtc_wire_unpack_reply(rep, rlen, &out), 0, "iteration %d", it);
        kvtc_wire_reply_free(out);
        free(rep);
    }
    cr_assert(itest_daemon_alive(&d), "kvtcd died:\n%s", itest_log_tail(&d));
    Kvtc__Wire__Request sreq = KVTC__WIRE__REQUEST__INIT;
    Kvtc__Wire__StatsRequest st = KVTC__WIRE__STATS_REQUEST__INIT;
    sreq.body_case = KVTC__WIRE__REQUEST__BODY_STATS;
    sreq.stats = &st;
    Kvtc__Wire__Reply *rep = send_req(r, &sreq, NULL, 0);
    cr_assert_eq(rep->status, KVTC__WIRE__STATUS__OK);
    cr_assert_leq(rep->stats->bytes_used, rep->stats->bytes_capacity);
    kvtc_wire_reply_free(rep);
    itest_raw_close(r);
    itest_daemon_stop(&d);
}
