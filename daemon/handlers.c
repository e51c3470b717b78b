/* handlers.c - one function per request kind.
 *
 * Every request is validated in full (sizes against limits, keys, layouts,
 * enums) before anything is allocated for it; a bad request gets one error
 * reply and has no effect. Handlers run inside the AM callback (from
 * ucp_worker_progress on the loop thread): they may send, never progress. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "codec_serve.h"
#include "local_path.h"
#include "kvtc_codec.h"
#include "kvtc_errors.h"
#include "log.h"
#include "rails.h"
#include "server.h"

#define ST(x) KVTC__WIRE__STATUS__##x
/* Bytes of "in data" requests read aside only to answer FULL by id. */
#define OVERFLOW_MAX (64u << 20)
/* Bytes of "in data" messages being read before they are parsed (all kinds
 * together; OVERFLOW_MAX is the part that may be puts read aside). */
#define MSG_MAX (256u << 20)

static void dispatch(kvtcd_session *s, Kvtc__Wire__Request *req,
                     const void *bulk, size_t bulk_len, void *rndv_desc,
                     kvtcd_blob *preblob, size_t preoff, int store_full);

static int check_batch(kvtcd_session *s, uint64_t id, size_t n,
                       const char *what)
{
    if (n == 0) {
        kvtcd_send_error(s, id, ST(INVALID), "%s: empty batch", what);
        return -1;
    }
    if (n > s->srv->cfg.max_batch) {
        kvtcd_send_error(s, id, ST(TOO_LARGE),
                         "%s: %zu items, limit max_batch=%u", what, n,
                         s->srv->cfg.max_batch);
        return -1;
    }
    return 0;
}

static int check_keys(kvtcd_session *s, uint64_t id,
                      const ProtobufCBinaryData *keys, size_t n,
                      const char *what)
{
    if (check_batch(s, id, n, what) < 0)
        return -1;
    for (size_t i = 0; i < n; i++) {
        if (!kvtc_wire_key_ok(&keys[i])) {
            kvtcd_send_error(s, id, ST(INVALID),
                             "%s: key %zu is %zu bytes, must be 32", what, i,
                             keys[i].len);
            return -1;
        }
    }
    return 0;
}

/* ---- Hello ------------------------------------------------------------- */

static void handle_hello(kvtcd_session *s, const Kvtc__Wire__Request *req)
{
    kvtcd_server *srv = s->srv;
    const Kvtc__Wire__Hello *h = req->hello;
    if (!kvtc_wire_version_ok(h->major)) {
        kvtcd_send_error(s, req->id, ST(VERSION),
                         "protocol %u.%u not supported: kvtcd speaks %u.%u",
                         h->major, h->minor, KVTC_PROTO_MAJOR,
                         KVTC_PROTO_MINOR);
        return;
    }
    const char *tenant = h->tenant && *h->tenant ? h->tenant
                                                 : KVTC_WIRE_DEFAULT_TENANT;
    if (strlen(tenant) > KVTC_WIRE_MAX_NAME ||
        (h->client_name && strlen(h->client_name) > KVTC_WIRE_MAX_NAME) ||
        (h->token && strlen(h->token) > KVTC_WIRE_MAX_NAME)) {
        kvtcd_send_error(s, req->id, ST(INVALID),
                         "hello: tenant, token or client_name over %u bytes",
                         KVTC_WIRE_MAX_NAME);
        return;
    }
    uint32_t ns;
    int rc = kvtcd_index_namespace(&srv->index, tenant, &ns);
    if (rc < 0) {
        kvtcd_send_error(s, req->id, kvtc_wire_err_to_status(rc),
                         "hello: cannot open namespace: %s",
                         kvtc_strerror(rc));
        return;
    }
    s->ns = ns;
    s->hello_done = 1;
    KVTCD_INFO("session", "hello session=%llu tenant=\"%s\" client=\"%s\" "
                          "version=%u.%u",
               (unsigned long long)s->id, tenant,
               h->client_name ? h->client_name : "", h->major, h->minor);
    Kvtc__Wire__HelloReply hr = KVTC__WIRE__HELLO_REPLY__INIT;
    hr.major = KVTC_PROTO_MAJOR;
    hr.minor = KVTC_PROTO_MINOR;
    hr.has_session_id = 1;
    hr.session_id = s->id;
    hr.has_max_chunk_bytes = 1;
    hr.max_chunk_bytes = srv->cfg.max_chunk_bytes;
    hr.has_max_batch = 1;
    hr.max_batch = srv->cfg.max_batch;
    hr.server_version = (char *)"kvtcd " KVTC_VERSION;
    if (srv->worker_addr && srv->cfg.bulk_endpoint) {
        hr.has_worker_address = 1;
        hr.worker_address.data = (uint8_t *)srv->worker_addr;
        hr.worker_address.len = srv->worker_addr_len;
        hr.has_bind_token = 1;
        hr.bind_token = s->bind_token;
    }
    /* 1.4: the rails' ports. */
    uint32_t rails[KVTCD_MAX_RAILS];
    uint32_t n_rails = kvtcd_rails_count(srv);
    for (uint32_t r = 0; r < n_rails; r++)
        rails[r] = kvtcd_rails_port(srv, r);
    if (n_rails && h->minor >= 4) {
        hr.n_rail_port = n_rails;
        hr.rail_port = rails;
        hr.has_bind_token = 1;
        hr.bind_token = s->bind_token;
    }
    /* 1.3: the local path; a 1.2 client ignores the fields. */
    if (kvtcd_local_name(srv) && h->minor >= 3) {
        hr.local_path = (char *)kvtcd_local_name(srv);
        hr.host_id = (char *)kvtcd_local_host_id(srv);
        hr.has_bind_token = 1;
        hr.bind_token = s->bind_token;
    }
    Kvtc__Wire__Reply rep = KVTC__WIRE__REPLY__INIT;
    rep.id = req->id;
    rep.status = ST(OK);
    rep.body_case = KVTC__WIRE__REPLY__BODY_HELLO;
    rep.hello = &hr;
    kvtcd_send_reply(s, &rep, NULL, 0, NULL, 0);
}

/* ---- the local path (local_path.h) --------------------------------------- */

/* A local copy of request id failed with errno err: the request gets
 * STATUS_LOCAL and the session falls back to AM payloads. */
static void local_copy_failed(kvtcd_session *s, uint64_t id, const char *what,
                              int err)
{
    char why[160];
    snprintf(why, sizeof why, "%s: local copy failed: %s", what,
             strerror(err));
    kvtcd_local_fail(s, why);
    kvtcd_send_error(s, id, ST(LOCAL),
                     "%s; the session uses UCX payloads from now on", why);
}

/* A local request on a session whose local path is not (or no longer)
 * bound. */
static void local_unavailable(kvtcd_session *s, uint64_t id, const char *what)
{
    s->srv->m.local_failures++;
    kvtcd_send_error(s, id, ST(LOCAL),
                     "%s: no local path on this session (%s): send the "
                     "bytes as AM data",
                     what, s->local_failed ? "it failed" : "not bound");
}

/* ---- Bind: a session's bulk endpoint ------------------------------------ */

/* Refuse a bind on an endpoint of its own (it belongs to no session): answer
 * through a short-lived session so the client learns why, then close it. */
static void refuse_bind(kvtcd_server *srv, ucp_ep_h ep, uint64_t id,
                        int status, const char *why)
{
    KVTCD_WARN("session", "bulk endpoint refused reason=\"%s\"", why);
    srv->m.errors++;
    kvtcd_session *t = kvtcd_session_adopt(srv, ep);
    if (!t)
        return; /* left to the worker; the client times the bind out */
    kvtcd_send_error(t, id, status, "bind: %s", why);
    kvtcd_session_close(t, why);
}

/* A bind is one small inline Hello{bind_session, bind_token}: that, or
 * NULL for anything else from an endpoint of no session (counted, logged;
 * its data is dropped unread). */
static Kvtc__Wire__Request *parse_bind(kvtcd_server *srv, const void *header,
                                       size_t header_len, size_t length,
                                       int rndv)
{
    size_t mlen;
    int in_data;
    Kvtc__Wire__Request *req = NULL;
    if (length != 0 || rndv ||
        kvtc_wire_am_split(header, header_len, length, &mlen, &in_data) < 0 ||
        in_data ||
        kvtc_wire_unpack_request_msg((const uint8_t *)header +
                                         KVTC_WIRE_LEN_BYTES,
                                     mlen, &req) < 0 ||
        req->body_case != KVTC__WIRE__REQUEST__BODY_HELLO ||
        !req->hello->has_bind_session || !req->hello->has_bind_token) {
        srv->m.errors++;
        KVTCD_WARN("ucx", "request from an unknown endpoint dropped "
                          "header_bytes=%zu data_bytes=%zu",
                   header_len, length);
        if (req)
            kvtc_wire_request_free(req);
        return NULL;
    }
    srv->m.requests++;
    return req;
}

/* The session a bind names, if it may bind: else NULL, *status and *why
 * say why (one answer for a wrong id and a wrong token: no hint about
 * which sessions exist). */
static kvtcd_session *bind_target(kvtcd_server *srv, const Kvtc__Wire__Hello *h,
                                  int *status, const char **why)
{
    kvtcd_session *s = kvtcd_session_find(srv, h->bind_session);
    *status = ST(OK);
    if (srv->draining)
        *status = ST(BUSY), *why = "kvtcd is shutting down";
    else if (!kvtc_wire_version_ok(h->major))
        *status = ST(VERSION), *why = "protocol version";
    else if (!s || !s->hello_done || s->bind_token != h->bind_token)
        *status = ST(UNAUTHORIZED), *why = "no such session or wrong token";
    return *status == ST(OK) ? s : NULL;
}

/* The reply to a bind: a HelloReply naming the session, or an error. */
static int pack_bind_reply(uint64_t id, const kvtcd_session *s, int status,
                           const char *why, void **frame, size_t *len)
{
    Kvtc__Wire__HelloReply hr = KVTC__WIRE__HELLO_REPLY__INIT;
    Kvtc__Wire__Reply rep = KVTC__WIRE__REPLY__INIT;
    char msg[160];
    rep.id = id;
    rep.status = (Kvtc__Wire__Status)status;
    if (status == ST(OK)) {
        hr.major = KVTC_PROTO_MAJOR;
        hr.minor = KVTC_PROTO_MINOR;
        hr.has_session_id = 1;
        hr.session_id = s->id;
        rep.body_case = KVTC__WIRE__REPLY__BODY_HELLO;
        rep.hello = &hr;
    } else {
        snprintf(msg, sizeof msg, "bind: %s", why);
        rep.message = msg;
    }
    return kvtc_wire_pack_reply_alloc(&rep, frame, len);
}

void kvtcd_handle_rail_bind(kvtcd_server *srv, uint32_t r, ucp_ep_h ep,
                            const void *header, size_t header_len,
                            size_t length, int rndv)
{
    Kvtc__Wire__Request *req = parse_bind(srv, header, header_len, length, rndv);
    if (!req) {
        kvtcd_rail_close_ep(srv, r, ep);
        return;
    }
    int status;
    const char *why = "";
    kvtcd_session *s = bind_target(srv, req->hello, &status, &why);
    if (s && s->rail_ep[r])
        s = NULL, status = ST(INVALID), why = "session already has this rail";
    void *frame = NULL;
    size_t len = 0;
    if (pack_bind_reply(req->id, s, status, why, &frame, &len) < 0 ||
        len > srv->max_am_header) {
        free(frame);
        frame = NULL;
    }
    if (s) {
        s->rail_ep[r] = ep;
        srv->m.rail_binds++;
        KVTCD_INFO("session", "rail bound session=%llu rail=%u",
                   (unsigned long long)s->id, r);
    } else {
        srv->m.errors++;
        KVTCD_WARN("session", "rail bind refused rail=%u reason=\"%s\"", r, why);
    }
    if (frame)
        kvtcd_rail_send_frame(srv, r, ep, frame, len, !s);
    else if (!s)
        kvtcd_rail_close_ep(srv, r, ep);
    kvtc_wire_request_free(req);
}

ucs_status_t kvtcd_handle_unbound(kvtcd_server *srv, ucp_ep_h ep,
                                  const void *header, size_t header_len,
                                  void *data, size_t length,
                                  const ucp_am_recv_param_t *param)
{
    Kvtc__Wire__Request *req =
        parse_bind(srv, header, header_len, length,
                   (param->recv_attr & UCP_AM_RECV_ATTR_FLAG_RNDV) != 0);
    if (!req)
        return UCS_OK; /* drops its data */
    int status;
    const char *why = "";
    kvtcd_session *s = bind_target(srv, req->hello, &status, &why);
    if (!s)
        refuse_bind(srv, ep, req->id, status, why);
    else if (s->bulk_ep)
        refuse_bind(srv, ep, req->id, ST(INVALID),
                    "session already has a bulk endpoint");
    else if (kvtcd_session_bind_bulk(s, ep) < 0)
        refuse_bind(srv, ep, req->id, ST(INTERNAL),
                    "cannot watch the endpoint");
    else {
        KVTCD_INFO("session", "bulk endpoint bound session=%llu",
                   (unsigned long long)s->id);
        Kvtc__Wire__HelloReply hr = KVTC__WIRE__HELLO_REPLY__INIT;
        hr.major = KVTC_PROTO_MAJOR;
        hr.minor = KVTC_PROTO_MINOR;
        hr.has_session_id = 1;
        hr.session_id = s->id;
        Kvtc__Wire__Reply rep = KVTC__WIRE__REPLY__INIT;
        rep.id = req->id;
        rep.status = ST(OK);
        rep.body_case = KVTC__WIRE__REPLY__BODY_HELLO;
        rep.hello = &hr;
        kvtcd_send_reply(s, &rep, NULL, 0, NULL, 0);
    }
    kvtc_wire_request_free(req);
    return UCS_OK;
}

/* ---- Put --------------------------------------------------------------- */

/* Validate one chunk's metadata; on failure send the error and return -1. */
static int check_chunk(kvtcd_session *s, uint64_t id, size_t i,
                       const Kvtc__Wire__ChunkMeta *c)
{
    const kvtcd_config *cfg = &s->srv->cfg;
    if (!kvtc_wire_key_ok(&c->key)) {
        kvtcd_send_error(s, id, ST(INVALID),
                         "put: chunk %zu key is %zu bytes, must be 32", i,
                         c->key.len);
        return -1;
    }
    if (c->has_parent && !kvtc_wire_key_ok(&c->parent)) {
        kvtcd_send_error(s, id, ST(INVALID),
                         "put: chunk %zu parent is %zu bytes, must be 32", i,
                         c->parent.len);
        return -1;
    }
    if (c->size > cfg->max_chunk_bytes) {
        kvtcd_send_error(s, id, ST(TOO_LARGE),
                         "put: chunk %zu is %llu bytes, limit max_chunk_bytes"
                         "=%llu",
                         i, (unsigned long long)c->size,
                         (unsigned long long)cfg->max_chunk_bytes);
        return -1;
    }
    int enc = c->has_encoding ? (int)c->encoding : KVTC__WIRE__ENCODING__RAW;
    if (!kvtc_wire_encoding_ok(enc)) {
        kvtcd_send_error(s, id, ST(INVALID), "put: chunk %zu encoding %d",
                         i, enc);
        return -1;
    }
    if (c->layout) {
        kvtc_layout l;
        kvtc_wire_layout_from_msg(c->layout, &l);
        if (kvtc_layout_check(&l) < 0) {
            kvtcd_send_error(s, id, ST(INVALID),
                             "put: chunk %zu layout out of bounds "
                             "(layers=%u kv_heads=%u head_dim=%u dtype=%u)",
                             i, l.layers, l.kv_heads, l.head_dim, l.dtype);
            return -1;
        }
        uint32_t tokens = c->has_n_tokens ? c->n_tokens : l.chunk_tokens;
        if (tokens == 0 || tokens > KVTC_MAX_CHUNK_TOKENS) {
            kvtcd_send_error(s, id, ST(INVALID),
                             "put: chunk %zu has a layout but n_tokens=%u", i,
                             tokens);
            return -1;
        }
        size_t want = kvtc_chunk_bytes(&l, tokens);
        /* A container's size is its own; the daemon checks it against the
         * container's header before storing it (codec_serve.c). */
        if (enc == KVTC__WIRE__ENCODING__RAW && want != c->size) {
            kvtcd_send_error(s, id, ST(INVALID),
                             "put: chunk %zu is %llu bytes, its layout and "
                             "%u tokens need %zu",
                             i, (unsigned long long)c->size, tokens, want);
            return -1;
        }
    }
    return 0;
}

static void fill_tmpl(kvtcd_entry *t, uint32_t ns,
                      const Kvtc__Wire__ChunkMeta *c, uint64_t expire)
{
    memset(t, 0, sizeof *t);
    t->ns = ns;
    memcpy(t->key, c->key.data, KVTCD_KEY_BYTES);
    if (c->has_parent) {
        memcpy(t->parent, c->parent.data, KVTCD_KEY_BYTES);
        t->has_parent = 1;
    }
    t->encoding = c->has_encoding ? (uint8_t)c->encoding
                                  : KVTC__WIRE__ENCODING__RAW;
    if (c->layout) {
        kvtc_wire_layout_from_msg(c->layout, &t->layout);
        t->has_layout = 1;
    }
    t->first_pos = c->has_first_pos ? c->first_pos : 0;
    t->n_tokens = c->has_n_tokens ? c->n_tokens : 0;
    t->chunk_flags = c->has_flags ? c->flags : 0;
    t->size = c->size;
    t->checksum = c->has_checksum ? c->checksum : 0;
    t->expire_ms = expire;
}

/* A put whose chunks are being stored: in durable mode each is written
 * and synced before the reply. */
typedef struct put_ctx {
    int *rc;              /* per chunk: 0 or KVTC_E* */
    uint32_t pending;     /* stores not finished yet */
    int started;          /* every chunk handed to the tiers */
    void *codec;          /* compression asked for (codec_serve.c) */
} put_ctx;

static void put_ctx_free(void *p)
{
    put_ctx *c = p;
    if (c) {
        free(c->rc);
        kvtcd_serve_put_free(c->codec);
    }
    free(c);
}

static const char *put_failure_message(int rc)
{
    switch (rc) {
    case KVTC_ECORRUPT: return "put: payload checksum mismatch";
    case KVTC_EPROFILE: return "put: the container's profile is not on "
                               "this kvtcd (upload it first)";
    case KVTC_EVERSION: return "put: container of an unknown format version";
    case KVTC_EINVAL: return "put: a container does not match its chunk's "
                             "layout or tokens";
    case KVTC_EFULL: return "put: disk tier full or degraded: some chunks "
                            "were not stored";
    case KVTC_EIO: return "put: disk write failed: some chunks were not "
                          "stored";
    case KVTC_EBUSY: return "put: kvtcd is shutting down: some chunks were "
                            "not stored";
    default: return "put: some chunks were not stored";
    }
}

/* Every chunk stored or refused: reply, free op. */
static void put_reply(kvtcd_op *op)
{
    kvtcd_session *s = op->sess;
    kvtcd_server *srv = s->srv;
    put_ctx *c = op->ctx;
    Kvtc__Wire__Status *st = calloc(op->n_chunks, sizeof *st);
    if (!st) {
        kvtcd_send_error(s, op->req_id, ST(INTERNAL), "put: out of memory");
        kvtcd_op_free(op);
        return;
    }
    Kvtc__Wire__Status first_bad = ST(OK);
    int first_rc = 0;
    for (uint32_t i = 0; i < op->n_chunks; i++) {
        st[i] = kvtc_wire_err_to_status(c->rc[i]);
        if (c->rc[i] == 0)
            srv->m.puts++;
        else if (c->rc[i] == KVTC_EFULL)
            srv->m.rejected_full++;
        if (st[i] != ST(OK) && first_bad == ST(OK)) {
            first_bad = st[i];
            first_rc = c->rc[i];
        }
    }
    srv->m.bytes_in += op->total;
    uint64_t t2 = uv_hrtime();
    KVTCD_DEBUG("req", "put session=%llu req=%llu chunks=%u bytes=%llu "
                       "recv_ms=%.3f store_ms=%.3f",
                (unsigned long long)s->id, (unsigned long long)op->req_id,
                op->n_chunks, (unsigned long long)op->total,
                (double)(op->t1_ns - op->t0_ns) / 1e6,
                (double)(t2 - op->t1_ns) / 1e6);
    Kvtc__Wire__PutReply pr = KVTC__WIRE__PUT_REPLY__INIT;
    pr.n_status = op->n_chunks;
    pr.status = st;
    Kvtc__Wire__Reply rep = KVTC__WIRE__REPLY__INIT;
    rep.id = op->req_id;
    rep.status = first_bad;
    if (first_bad != ST(OK)) {
        rep.message = (char *)put_failure_message(first_rc);
        srv->m.errors++;
    }
    rep.body_case = KVTC__WIRE__REPLY__BODY_PUT;
    rep.put = &pr;
    kvtcd_send_reply(s, &rep, NULL, 0, NULL, 0);
    free(st);
    kvtcd_op_free(op);
}

static void put_store(void *arg);

/* Checksums done: verify, compress where asked (codec_serve.c), store. */
static void put_hashed(kvtcd_hashjob *job)
{
    kvtcd_op *op = job->arg;
    kvtcd_session *s = op->sess;
    kvtcd_server *srv = s->srv;
    /* handle_put left the codec's context in op->ctx; ours takes it. */
    void *codec = op->ctx;
    op->ctx = NULL;
    op->ctx_free = NULL;
    put_ctx *c = calloc(1, sizeof *c);
    if (c)
        c->rc = calloc(op->n_chunks, sizeof *c->rc);
    if (!c || !c->rc) {
        put_ctx_free(c);
        kvtcd_serve_put_free(codec);
        kvtcd_send_error(s, op->req_id, ST(INTERNAL), "put: out of memory");
        kvtcd_op_free(op);
        return;
    }
    c->codec = codec;
    op->ctx = c;
    op->ctx_free = put_ctx_free;
    for (uint32_t i = 0; i < op->n_chunks; i++) {
        kvtcd_entry *t = &op->tmpl[i];
        uint64_t sum = job->sum[i];
        if (op->has_checksum[i] && sum != t->checksum) {
            c->rc[i] = KVTC_ECORRUPT;
            srv->m.corrupt++;
        } else {
            t->checksum = sum;
        }
    }
    if (codec) {
        kvtcd_serve_put_run(srv, codec, op->tmpl, op->blob, op->put_base,
                            c->rc, put_store, op);
        return;
    }
    put_store(op);
}

static void put_chunk_done(void *arg)
{
    kvtcd_op *op = arg;
    put_ctx *c = op->ctx;
    if (--c->pending == 0 && c->started)
        put_reply(op);
}

/* Chunks verified and coded: hand each good one to the tiers (from where
 * it lies now: codec_serve.c moves compressed chunks to a smaller blob),
 * reply once they are stored. */
static void put_store(void *arg)
{
    kvtcd_op *op = arg;
    kvtcd_server *srv = op->sess->srv;
    put_ctx *c = op->ctx;
    uint64_t now = kvtcd_now_ms(srv);
    size_t off = op->put_base;
    for (uint32_t i = 0; i < op->n_chunks; i++) {
        kvtcd_entry *t = &op->tmpl[i];
        size_t at = off;
        kvtcd_blob *blob = c->codec ? kvtcd_serve_put_where(c->codec, i, &at)
                                    : op->blob;
        off += t->size;
        if (c->rc[i] == 0 &&
            kvtcd_tiers_put(srv->tiers, t, blob, at, now, &c->rc[i],
                            put_chunk_done, op) == 1)
            c->pending++;
    }
    c->started = 1;
    kvtcd_tiers_kick(srv->tiers);
    if (c->pending == 0)
        put_reply(op);
}

/* The payload is in op->blob, chunk 0 at base and the others after it
 * (or, with src, still at src: an eager payload to copy there first):
 * hash it (off the loop when large), then put_hashed. Owns op. */
static void finish_put(kvtcd_op *op, size_t base, const uint8_t *src)
{
    kvtcd_server *srv = op->sess->srv;
    op->t1_ns = uv_hrtime();
    if (!op->t0_ns)
        op->t0_ns = op->t1_ns;
    op->put_base = base;
    if (kvtcd_hashjob_init(&op->hash, op->n_chunks) < 0) {
        kvtcd_send_error(op->sess, op->req_id, ST(INTERNAL),
                         "put: out of memory");
        kvtcd_op_free(op);
        return;
    }
    size_t off = base;
    for (uint32_t i = 0; i < op->n_chunks; i++) {
        op->hash.ptr[i] = op->blob->data + off;
        op->hash.len[i] = op->tmpl[i].size;
        off += op->tmpl[i].size;
    }
    op->hash.done = put_hashed;
    op->hash.arg = op;
    if (src && op->total < KVTCD_HASH_OFFLOAD_MIN) {
        /* Small enough to hash here anyway: hash while copying, one pass
         * over memory instead of two. */
        int ok = 1;
        for (uint32_t i = 0; i < op->n_chunks && ok; i++)
            ok = kvtc_wire_copy_checksum((void *)op->hash.ptr[i],
                                         src + (op->hash.ptr[i] -
                                                op->blob->data - base),
                                         op->hash.len[i], &op->hash.sum[i]) == 0;
        if (ok) {
            put_hashed(&op->hash);
            return;
        }
    }
    if (src)
        memcpy(op->blob->data + base, src, op->total);
    kvtcd_hashjob_run(srv->loop, &op->hash);
}

static void put_local_done(kvtcd_lcopy *job)
{
    kvtcd_op *op = job->arg;
    kvtcd_session *s = op->sess;
    if (job->err) {
        local_copy_failed(s, op->req_id, "put", job->err);
        kvtcd_op_free(op); /* frees the reservation */
        return;
    }
    s->srv->m.local_puts++;
    s->srv->m.local_bytes_in += op->total;
    op->t1_ns = uv_hrtime();
    put_hashed(&op->hash);
}

/* Local path: copy the chunks from the client's ranges (op->lremote,
 * n_remote of them) into op->blob, each checksummed as it lands (the sums
 * put_hashed checks), on the thread pool. Owns op. */
static void put_local_start(kvtcd_op *op, size_t n_remote)
{
    kvtcd_session *s = op->sess;
    op->put_base = 0;
    op->lcopy = calloc(1, sizeof *op->lcopy);
    if (!op->lcopy || kvtcd_hashjob_init(&op->hash, op->n_chunks) < 0) {
        kvtcd_send_error(s, op->req_id, ST(INTERNAL), "put: out of memory");
        kvtcd_op_free(op);
        return;
    }
    size_t off = 0;
    for (uint32_t i = 0; i < op->n_chunks; i++) {
        op->hash.ptr[i] = op->blob->data + off;
        op->hash.len[i] = op->tmpl[i].size;
        off += op->tmpl[i].size;
    }
    op->hash.arg = op;
    kvtcd_lcopy *j = op->lcopy;
    j->to_client = 0;
    j->remote = op->lremote;
    j->n_remote = n_remote;
    j->n = op->n_chunks;
    j->ptr = (uint8_t **)op->hash.ptr;
    j->len = op->hash.len;
    j->sum = op->hash.sum;
    j->done = put_local_done;
    j->arg = op;
    j->lt.req = op->req_id;
    j->lt.put = 1;
    if (kvtcd_lcopy_start(s, j) < 0) {
        local_unavailable(s, op->req_id, "put");
        kvtcd_op_free(op);
    }
}

static void reply_put_full(kvtcd_session *s, uint64_t id, size_t n,
                           uint64_t total)
{
    kvtcd_server *srv = s->srv;
    srv->m.rejected_full += n;
    srv->m.errors++;
    Kvtc__Wire__Status *st = calloc(n, sizeof *st);
    Kvtc__Wire__PutReply pr = KVTC__WIRE__PUT_REPLY__INIT;
    if (st) {
        for (size_t i = 0; i < n; i++)
            st[i] = ST(FULL);
        pr.n_status = n;
        pr.status = st;
    }
    char msg[256];
    if (total > srv->host->capacity)
        snprintf(msg, sizeof msg,
                 "store full: a put of %llu bytes exceeds the store's "
                 "capacity of %llu bytes (split the batch)",
                 (unsigned long long)total,
                 (unsigned long long)srv->host->capacity);
    else
        snprintf(msg, sizeof msg,
                 "store full: %llu of %llu bytes used, cannot fit %llu more "
                 "(nothing evictable: pinned or in use)",
                 (unsigned long long)srv->host->used,
                 (unsigned long long)srv->host->capacity,
                 (unsigned long long)total);
    Kvtc__Wire__Reply rep = KVTC__WIRE__REPLY__INIT;
    rep.id = id;
    rep.status = ST(FULL);
    rep.message = msg;
    rep.body_case = KVTC__WIRE__REPLY__BODY_PUT;
    rep.put = &pr;
    kvtcd_send_reply(s, &rep, NULL, 0, NULL, 0);
    free(st);
}

static void complete_recv(kvtcd_op *op, ucs_status_t status)
{
    kvtcd_session *s = op->sess;
    if (status != UCS_OK) {
        KVTCD_INFO("req", "bulk receive failed session=%llu req=%llu "
                          "bytes=%llu err=\"%s\"",
                   (unsigned long long)s->id, (unsigned long long)op->req_id,
                   (unsigned long long)op->total, ucs_status_string(status));
        s->srv->m.errors++;
        kvtcd_op_free(op); /* frees the reservation */
        return;
    }
    if (op->kind == KVTCD_OP_PUT) {
        finish_put(op, 0, NULL);
        return;
    }
    /* KVTCD_OP_RECV: the message (and any bulk after it) has arrived.
     * Its reply goes back on the rail it came on, if one. */
    kvtcd_server *srv = s->srv;
    uint32_t saved_rail = srv->cur_rail;
    srv->cur_rail = op->rail;
    const void *msg = op->msg_buf ? op->msg_buf : op->blob->data;
    Kvtc__Wire__Request *req = NULL;
    if (kvtc_wire_unpack_request_msg(msg, op->msg_len, &req) < 0) {
        kvtcd_send_error(s, 0, ST(INVALID), "malformed request message");
    } else if (op->overflow && op->total > op->msg_len) {
        /* Read only to learn its id (the store had no room): validate as
         * usual, then answer FULL instead of storing. */
        dispatch(s, req, (uint8_t *)op->msg_buf + op->msg_len,
                 op->total - op->msg_len, NULL, NULL, 0, 1);
        kvtc_wire_request_free(req);
    } else {
        size_t bulk = op->blob ? op->blob->size - op->msg_len : 0;
        dispatch(s, req, op->blob ? op->blob->data + op->msg_len : NULL, bulk,
                 NULL, op->blob, op->msg_len, 0);
        kvtc_wire_request_free(req);
    }
    srv->cur_rail = saved_rail;
    kvtcd_op_free(op);
}

static void on_recv_done(void *request, ucs_status_t status, size_t length,
                         void *user_data)
{
    kvtcd_op *op = user_data;
    ucp_request_free(request);
    op->ucx_req = NULL;
    op->sess->srv->n_ucx_pending--;
    complete_recv(op, status);
}

/* Start receiving a rendezvous payload of len bytes into dst. A request
 * that came on a rail has its descriptor there: the rail receives it. */
static void start_recv(kvtcd_op *op, void *desc, void *dst, size_t len)
{
    kvtcd_server *srv = op->sess->srv;
    if (srv->cur_rail) {
        kvtcd_rail_recv(srv, srv->cur_rail - 1, desc, dst, len, op, complete_recv);
        return;
    }
    ucp_request_param_t p = {
        .op_attr_mask = UCP_OP_ATTR_FIELD_CALLBACK | UCP_OP_ATTR_FIELD_USER_DATA,
        .cb.recv_am = on_recv_done,
        .user_data = op,
    };
    ucs_status_ptr_t r = ucp_am_recv_data_nbx(srv->worker, desc, dst, len, &p);
    if (r == NULL) {
        complete_recv(op, UCS_OK);
        return;
    }
    if (UCS_PTR_IS_ERR(r)) {
        complete_recv(op, UCS_PTR_STATUS(r));
        return;
    }
    op->ucx_req = r;
    srv->n_ucx_pending++;
}

static void handle_put(kvtcd_session *s, const Kvtc__Wire__Request *req,
                       const void *bulk, size_t bulk_len, void *rndv_desc,
                       kvtcd_blob *preblob, size_t preoff, int store_full)
{
    kvtcd_server *srv = s->srv;
    const Kvtc__Wire__PutRequest *put = req->put;
    if (check_batch(s, req->id, put->n_chunks, "put") < 0)
        return;
    uint64_t total = 0;
    for (size_t i = 0; i < put->n_chunks; i++) {
        if (check_chunk(s, req->id, i, put->chunks[i]) < 0)
            return;
        total += put->chunks[i]->size; /* <= 4096 * 1 TiB: no overflow */
    }
    /* 1.3: the bytes lie in the client's memory, named by local ranges
     * (local path), instead of arriving as AM data. */
    struct iovec *lremote = NULL;
    if (put->n_local) {
        char lwhy[200];
        if (bulk_len || rndv_desc || preblob || store_full) {
            kvtcd_send_error(s, req->id, ST(INVALID),
                             "put: local ranges and %zu payload bytes",
                             bulk_len);
            return;
        }
        int lrc = kvtcd_local_put_iovs(put->local, put->n_local, total,
                                       &lremote, lwhy, sizeof lwhy);
        if (lrc == KVTC_ENOMEM)
            lwhy[0] = '\0';
        if (lrc < 0) {
            kvtcd_send_error(s, req->id, lrc == KVTC_ENOMEM ? ST(INTERNAL)
                                         : lrc == KVTC_ENOSPC ? ST(TOO_LARGE)
                                                              : ST(INVALID),
                             "%s", lwhy[0] ? lwhy : "put: out of memory");
            return;
        }
        if (!s->local) {
            free(lremote);
            local_unavailable(s, req->id, "put");
            return;
        }
    } else if (total != bulk_len) {
        kvtcd_send_error(s, req->id, ST(INVALID),
                         "put: chunk sizes add up to %llu bytes but %zu "
                         "arrived",
                         (unsigned long long)total, bulk_len);
        return;
    }
    void *cctx = NULL;
    char why[160];
    int crc = kvtcd_serve_put_prepare(put, &cctx, why, sizeof why);
    if (crc == KVTC_EINVAL) {
        free(lremote);
        kvtcd_send_error(s, req->id, ST(INVALID), "%s", why);
        return;
    }
    if (store_full) {
        kvtcd_serve_put_free(cctx);
        reply_put_full(s, req->id, put->n_chunks, total);
        return;
    }
    uint64_t now = kvtcd_now_ms(srv);
    kvtcd_op *op = crc == 0 ? kvtcd_op_new(srv, KVTCD_OP_PUT, s) : NULL;
    if (!op) {
        free(lremote);
        kvtcd_serve_put_free(cctx);
        goto nomem;
    }
    op->lremote = lremote;
    /* The codec work this put asks for (compress, check containers), if
     * any: put_hashed hands it to codec_serve.c. */
    op->ctx = cctx;
    op->ctx_free = cctx ? kvtcd_serve_put_free : NULL;
    op->req_id = req->id;
    op->t0_ns = uv_hrtime();
    op->n_chunks = (uint32_t)put->n_chunks;
    op->total = total;
    op->tmpl = calloc(put->n_chunks, sizeof *op->tmpl);
    op->has_checksum = calloc(put->n_chunks, 1);
    if (!op->tmpl || !op->has_checksum)
        goto nomem;
    uint64_t expire = put->has_ttl_ms && put->ttl_ms ? now + put->ttl_ms : 0;
    for (size_t i = 0; i < put->n_chunks; i++) {
        fill_tmpl(&op->tmpl[i], s->ns, put->chunks[i], expire);
        op->has_checksum[i] = (uint8_t)put->chunks[i]->has_checksum;
    }
    if (preblob) {
        /* Arrived with its message ("in data" rendezvous): already in the
         * store, at preoff. */
        op->blob = preblob;
        kvtcd_blob_ref(preblob);
        finish_put(op, preoff, NULL);
        return;
    }
    int rc = kvtcd_index_reserve(&srv->index, total, now, &op->blob);
    if (rc == KVTC_EFULL) {
        kvtcd_op_free(op);
        reply_put_full(s, req->id, put->n_chunks, total);
        return;
    }
    if (rc < 0)
        goto nomem;
    if (op->lremote) {
        put_local_start(op, put->n_local);
        return;
    }
    if (rndv_desc) {
        start_recv(op, rndv_desc, op->blob->data, total);
        return;
    }
    finish_put(op, 0, bulk);
    return;
nomem:
    kvtcd_op_free(op);
    kvtcd_send_error(s, req->id, ST(INTERNAL), "put: out of memory");
}

/* ---- Get --------------------------------------------------------------- */

/* Everything a Get reply needs, owned here: entries may be evicted or
 * replaced while the hits are re-verified off the loop thread, so keys and
 * parents are copied and the blobs referenced. */
typedef struct get_ctx {
    size_t n, nf;
    size_t nsent;         /* hits to send: segs/blobs/fidx [0, nsent) */
    uint32_t ns;
    int want;             /* Kvtc__Wire__Encoding asked for */
    kvtcd_serve_dec *dec; /* hits decoded for a raw get */
    uint32_t *dec_k;      /* their index among the sent ones */
    Kvtc__Wire__GetResult *res;
    Kvtc__Wire__GetResult **resp;
    Kvtc__Wire__ChunkMeta *metas;
    Kvtc__Wire__Layout *lms;
    uint8_t (*keys)[KVTCD_KEY_BYTES];
    uint8_t (*parents)[KVTCD_KEY_BYTES];
    /* per hit j */
    uint32_t *fidx;       /* index of its result */
    kvtcd_blob **blobs;   /* referenced */
    size_t *offs;
    uint64_t *sums;       /* checksum the index holds */
    uint8_t *audit;       /* 1: re-read it beside the send if it goes out
                             unverified (its entry's audit was due) */
    uint64_t *rawsz;      /* per result i: decoded size of a KVTC chunk
                             the index knows the layout of, else 0 */
    kvtcd_seg *segs;
    /* hits with no host copy, read from the GPU or disk first */
    struct get_load {
        kvtcd_op *op;
        uint32_t j;
        int rc;           /* the read's status */
    } *loads;
    uint32_t pending;     /* reads not finished yet */
    int started;          /* every key looked up */
    /* 1.3, local path: the client's destination per key (GetRequest.local),
     * NULL otherwise; lcopied once the hits were written there */
    struct iovec *ldest;
    int lcopied;
    uint64_t lbytes;
    int client_checks;    /* GetRequest.client_checks: libkvtc verifies
                             what it receives, so we need not before
                             sending (get_audit_new) or copying */
} get_ctx;

static void get_ctx_free(void *p)
{
    get_ctx *c = p;
    if (!c)
        return;
    for (size_t j = 0; j < c->nf; j++)
        kvtcd_blob_unref(c->blobs[j]);
    free(c->res);
    free(c->resp);
    free(c->metas);
    free(c->lms);
    free(c->keys);
    free(c->parents);
    free(c->fidx);
    free(c->blobs);
    free(c->offs);
    free(c->sums);
    free(c->audit);
    free(c->rawsz);
    free(c->segs);
    free(c->loads);
    free(c->dec);
    free(c->dec_k);
    free(c->ldest);
    free(c);
}

static get_ctx *get_ctx_new(size_t n)
{
    get_ctx *c = calloc(1, sizeof *c);
    if (!c)
        return NULL;
    c->n = n;
    c->res = calloc(n, sizeof *c->res);
    c->resp = calloc(n, sizeof *c->resp);
    c->metas = calloc(n, sizeof *c->metas);
    c->lms = calloc(n, sizeof *c->lms);
    c->keys = calloc(n, sizeof *c->keys);
    c->parents = calloc(n, sizeof *c->parents);
    c->fidx = calloc(n, sizeof *c->fidx);
    c->blobs = calloc(n, sizeof *c->blobs);
    c->offs = calloc(n, sizeof *c->offs);
    c->sums = calloc(n, sizeof *c->sums);
    c->audit = calloc(n, sizeof *c->audit);
    c->rawsz = calloc(n, sizeof *c->rawsz);
    c->segs = calloc(n, sizeof *c->segs);
    c->loads = calloc(n, sizeof *c->loads);
    c->dec = calloc(n, sizeof *c->dec);
    c->dec_k = calloc(n, sizeof *c->dec_k);
    if (!c->dec || !c->dec_k || !c->res || !c->resp || !c->metas || !c->lms || !c->keys ||
        !c->parents || !c->fidx || !c->blobs || !c->offs || !c->sums || !c->audit ||
        !c->rawsz || !c->segs || !c->loads) {
        get_ctx_free(c);
        return NULL;
    }
    return c;
}

static void meta_of(const kvtcd_entry *e, get_ctx *c, size_t i)
{
    Kvtc__Wire__ChunkMeta *m = &c->metas[i];
    kvtc__wire__chunk_meta__init(m);
    memcpy(c->keys[i], e->key, KVTCD_KEY_BYTES);
    m->key.data = c->keys[i];
    m->key.len = KVTCD_KEY_BYTES;
    if (e->has_parent) {
        memcpy(c->parents[i], e->parent, KVTCD_KEY_BYTES);
        m->has_parent = 1;
        m->parent.data = c->parents[i];
        m->parent.len = KVTCD_KEY_BYTES;
    }
    m->size = e->size;
    m->has_checksum = 1;
    m->checksum = e->checksum;
    m->has_encoding = 1;
    m->encoding = (Kvtc__Wire__Encoding)e->encoding;
    if (e->has_layout) {
        kvtc_wire_layout_to_msg(&e->layout, &c->lms[i]);
        m->layout = &c->lms[i];
    }
    m->has_first_pos = 1;
    m->first_pos = e->first_pos;
    m->has_n_tokens = 1;
    m->n_tokens = e->n_tokens;
    if (e->chunk_flags) {
        m->has_flags = 1;
        m->flags = e->chunk_flags;
    }
}

static void get_send(kvtcd_op *op);

/* A local get's copy ended: counted and 1, or (failed) the request
 * answered STATUS_LOCAL, its op freed and 0. */
static int get_local_copied(kvtcd_lcopy *job)
{
    kvtcd_op *op = job->arg;
    get_ctx *c = op->ctx;
    if (job->err) {
        local_copy_failed(op->sess, op->req_id, "get", job->err);
        kvtcd_op_free(op);
        return 0;
    }
    kvtcd_server *srv = op->sess->srv;
    srv->m.local_gets++;
    srv->m.local_bytes_out += c->lbytes;
    srv->m.bytes_out += c->lbytes;
    c->lcopied = 1;
    return 1;
}

static void get_local_done(kvtcd_lcopy *job)
{
    if (get_local_copied(job))
        get_send(job->arg);
}

/* Local path: write each hit that fits its key's destination there, on
 * the thread pool (the blobs stay referenced by c until op is freed), then
 * get_send again. A hit larger than its destination is not written: the
 * client sees its size over the capacity, as over UCX. Owns op. */
static void get_local_copy(kvtcd_op *op)
{
    get_ctx *c = op->ctx;
    size_t n = c->nsent ? c->nsent : 1;
    kvtcd_lcopy *j = calloc(1, sizeof *j + n * (sizeof(uint8_t *) +
                                                sizeof(size_t)));
    op->lremote = calloc(n, sizeof *op->lremote);
    if (!j || !op->lremote) {
        free(j);
        kvtcd_send_error(op->sess, op->req_id, ST(INTERNAL),
                         "get: out of memory");
        kvtcd_op_free(op);
        return;
    }
    op->lcopy = j;
    j->ptr = (uint8_t **)(j + 1);
    j->len = (size_t *)(j->ptr + n);
    uint32_t m = 0;
    for (size_t k = 0; k < c->nsent; k++) {
        const struct iovec *d = &c->ldest[c->fidx[k]];
        if (!c->segs[k].len || c->segs[k].len > d->iov_len)
            continue;
        j->ptr[m] = (uint8_t *)c->segs[k].p;
        j->len[m] = c->segs[k].len;
        op->lremote[m].iov_base = d->iov_base;
        op->lremote[m].iov_len = c->segs[k].len;
        c->lbytes += c->segs[k].len;
        m++;
    }
    if (m == 0) {
        c->lcopied = 1;
        get_send(op);
        return;
    }
    j->to_client = 1;
    j->remote = op->lremote;
    j->n_remote = m;
    j->n = m;
    j->done = get_local_done;
    j->arg = op;
    j->lt.req = op->req_id;
    if (kvtcd_lcopy_start(op->sess, j) < 0) {
        local_unavailable(op->sess, op->req_id, "get");
        kvtcd_op_free(op);
    }
}

/* Send the hits [0, nsent) as one iov (or, by the local path, write them
 * into the client first and send the reply alone), and free op. */
static void get_send(kvtcd_op *op)
{
    get_ctx *c = op->ctx;
    if (c->ldest && !c->lcopied) {
        get_local_copy(op);
        return;
    }
    Kvtc__Wire__GetReply gr = KVTC__WIRE__GET_REPLY__INIT;
    gr.n_results = c->n;
    gr.results = c->resp;
    if (c->ldest) {
        gr.has_local = 1;
        gr.local = 1;
    }
    Kvtc__Wire__Reply rep = KVTC__WIRE__REPLY__INIT;
    rep.id = op->req_id;
    rep.status = ST(OK);
    rep.body_case = KVTC__WIRE__REPLY__BODY_GET;
    rep.get = &gr;
    uint32_t nsegs = c->ldest ? 0 : (uint32_t)c->nsent;
    kvtcd_send_reply(op->sess, &rep, c->segs, nsegs, c->blobs, nsegs);
    kvtcd_op_free(op);
}

/* Hit k (of the sent ones) failed: it becomes a miss with status st and
 * leaves the send list. The index entry goes too when its bytes are bad
 * (CORRUPT); a missing profile (PROFILE) may come back, so it stays. */
static void get_drop_hit(kvtcd_op *op, size_t k, int st)
{
    get_ctx *c = op->ctx;
    kvtcd_server *srv = op->sess->srv;
    size_t i = c->fidx[k];
    if (st == ST(CORRUPT)) {
        kvtcd_entry *e = kvtcd_index_find(&srv->index, c->ns, c->keys[i],
                                          kvtcd_now_ms(srv));
        if (e && e->checksum == c->metas[i].checksum)
            kvtcd_index_remove(&srv->index, e);
        srv->m.corrupt++;
    }
    c->res[i].status = (Kvtc__Wire__Status)st;
    c->res[i].meta = NULL;
    c->res[i].has_tier = 0;
    srv->m.hits--;
    srv->m.misses++;
    kvtcd_blob_unref(c->blobs[k]);
    for (size_t m = k + 1; m < c->nsent; m++) {
        c->segs[m - 1] = c->segs[m];
        c->blobs[m - 1] = c->blobs[m];
        c->fidx[m - 1] = c->fidx[m];
    }
    c->nsent--;
    c->blobs[c->nsent] = NULL;
}

/* Stored containers decoded for a raw get (codec_serve.c): their raw
 * bytes replace them in the reply; failures are misses. */
static void get_decoded(void *arg)
{
    kvtcd_op *op = arg;
    get_ctx *c = op->ctx;
    uint32_t nd = 0;
    for (size_t k = 0; k < c->nsent; k++)
        if (kvtcd_serve_get_decodes(c->want, c->metas[c->fidx[k]].encoding))
            c->dec_k[nd++] = (uint32_t)k;
    /* Walk backwards: dropping a hit shifts the ones after it. */
    for (uint32_t d = nd; d-- > 0;) {
        size_t k = c->dec_k[d];
        Kvtc__Wire__ChunkMeta *m = &c->metas[c->fidx[k]];
        if (c->dec[d].rc) {
            get_drop_hit(op, k, c->dec[d].rc == KVTC_EPROFILE
                                    ? ST(PROFILE) : ST(CORRUPT));
            continue;
        }
        m->size = c->segs[k].len;
        m->checksum = c->dec[d].sum;
        m->encoding = KVTC__WIRE__ENCODING__RAW;
    }
    get_send(op);
}

/* A stored chunk failed its checksum: never serve it again. It leaves
 * the index if the index still maps key to these bytes. */
static void drop_corrupt(kvtcd_server *srv, const kvtcd_session *s, uint32_t ns,
                         const uint8_t *key, const kvtcd_blob *blob, size_t off,
                         size_t len)
{
    KVTCD_ERROR("store", "stored chunk failed its checksum; dropped "
                         "session=%llu bytes=%zu",
                (unsigned long long)s->id, len);
    kvtcd_entry *e = kvtcd_index_find(&srv->index, ns, key, kvtcd_now_ms(srv));
    if (e && e->blob == blob && e->off == off)
        kvtcd_index_remove(&srv->index, e);
    srv->m.corrupt++;
}

/* Hits re-verified: mismatches become CORRUPT misses (and leave the
 * index); stored containers a raw get asked for are decoded; the rest are
 * sent as one iov. Frees op. */
static void get_hashed(kvtcd_hashjob *job)
{
    kvtcd_op *op = job->arg;
    kvtcd_session *s = op->sess;
    kvtcd_server *srv = s->srv;
    get_ctx *c = op->ctx;
    size_t ns = 0;
    for (size_t j = 0; j < c->nf; j++) {
        size_t i = c->fidx[j];
        if (job->sum[j] == c->sums[j]) {
            c->segs[ns].p = c->blobs[j]->data + c->offs[j];
            c->segs[ns].len = job->len[j];
            c->blobs[ns] = c->blobs[j]; /* compact the sent ones first */
            c->fidx[ns] = (uint32_t)i;
            if (ns != j)
                c->blobs[j] = NULL;
            ns++;
            continue;
        }
        /* Never serve wrong KV. */
        drop_corrupt(srv, s, c->ns, c->keys[i], c->blobs[j], c->offs[j], job->len[j]);
        c->res[i].status = ST(CORRUPT);
        c->res[i].meta = NULL;
        c->res[i].has_tier = 0;
        srv->m.hits--;
        srv->m.misses++;
        kvtcd_blob_unref(c->blobs[j]);
        c->blobs[j] = NULL;
    }
    /* Blobs past ns are NULL or moved: get_ctx_free unrefs [0, nf). */
    for (size_t j = ns; j < c->nf; j++)
        c->blobs[j] = NULL;
    c->nsent = ns;
    uint32_t nd = 0;
    for (size_t k = 0; k < ns; k++) {
        if (!kvtcd_serve_get_decodes(c->want, c->metas[c->fidx[k]].encoding))
            continue;
        c->dec[nd].seg = &c->segs[k];
        c->dec[nd].blob = &c->blobs[k];
        c->dec[nd].raw_bytes = c->rawsz[c->fidx[k]];
        nd++;
    }
    if (nd) {
        kvtcd_serve_decode(srv, c->dec, nd, get_decoded, op);
        return;
    }
    get_send(op);
}

static void get_local_fused_done(kvtcd_lcopy *job)
{
    kvtcd_op *op = job->arg;
    if (get_local_copied(job))
        get_hashed(&op->hash); /* mismatches become CORRUPT, then get_send */
}

/* Local path, when no hit needs decoding: verify and deliver in one pass
 * on the thread pool (each piece hashed, then written from cache to the
 * client), instead of a hash pass and a copy pass. A hit that fails its
 * checksum has been written too, but is reported CORRUPT, never OK. Hits
 * larger than their destination are only verified. Returns 1 when it took
 * op (answered or in flight), 0 to let the caller hash as usual. */
static int get_local_fused(kvtcd_op *op)
{
    get_ctx *c = op->ctx;
    for (size_t j = 0; j < c->nf; j++)
        if (kvtcd_serve_get_decodes(c->want, c->metas[c->fidx[j]].encoding))
            return 0; /* the decoded bytes are what gets written */
    size_t n = c->nf ? c->nf : 1;
    kvtcd_lcopy *lj = calloc(1, sizeof *lj + n);
    op->lremote = calloc(n, sizeof *op->lremote);
    if (!lj || !op->lremote) {
        free(lj);
        kvtcd_send_error(op->sess, op->req_id, ST(INTERNAL), "get: out of memory");
        kvtcd_op_free(op);
        return 1;
    }
    op->lcopy = lj;
    uint8_t *hash_only = (uint8_t *)(lj + 1);
    size_t m = 0;
    for (size_t j = 0; j < c->nf; j++) {
        const struct iovec *d = &c->ldest[c->fidx[j]];
        size_t len = op->hash.len[j];
        if (!len || len > d->iov_len) {
            hash_only[j] = 1;
            continue;
        }
        op->lremote[m].iov_base = d->iov_base;
        op->lremote[m].iov_len = len;
        c->lbytes += len;
        m++;
    }
    lj->to_client = 1;
    lj->remote = op->lremote;
    lj->n_remote = m;
    lj->n = (uint32_t)c->nf;
    lj->ptr = (uint8_t **)op->hash.ptr;
    lj->len = op->hash.len;
    lj->sum = op->hash.sum;
    if (c->client_checks) {
        /* The client hashes what landed in its buffer against the
         * checksum the reply carries (the one the index took when the
         * bytes arrived): end to end, slab and copy both covered, on the
         * client's core instead of a second read of the slab here. So the
         * copy reads the slab once, and get_hashed finds the sums equal. */
        lj->sum = NULL;
        for (size_t j = 0; j < c->nf; j++)
            op->hash.sum[j] = c->sums[j];
        op->sess->srv->m.local_client_checked += c->nf;
    }
    lj->hash_only = hash_only;
    lj->done = get_local_fused_done;
    lj->arg = op;
    lj->lt.req = op->req_id;
    if (kvtcd_lcopy_start(op->sess, lj) < 0) {
        local_unavailable(op->sess, op->req_id, "get");
        kvtcd_op_free(op);
    }
    return 1;
}

/* The result of a hit that could not be served (its read failed). */
static void get_unserved(kvtcd_server *srv, get_ctx *c, size_t i, int rc)
{
    c->res[i].status = kvtc_wire_err_to_status(rc);
    c->res[i].meta = NULL;
    c->res[i].has_tier = 0;
    if (rc == KVTC_ECORRUPT)
        srv->m.corrupt++;
    srv->m.hits--;
    srv->m.misses++;
}

/* A get's hits re-verified after they were sent, for a client that
 * checks them itself (GetRequest.client_checks): what the op owns. */
typedef struct get_audit {
    uint32_t ns;
    size_t *offs;
    uint64_t *sums;                  /* what the index holds */
    uint8_t (*keys)[KVTCD_KEY_BYTES];
} get_audit;

static void get_audit_free(void *p)
{
    get_audit *a = p;
    if (a) {
        free(a->offs);
        free(a->sums);
        free(a->keys);
        free(a);
    }
}

static void get_audited(kvtcd_hashjob *job)
{
    kvtcd_op *aud = job->arg;
    get_audit *a = aud->ctx;
    kvtcd_server *srv = aud->sess->srv;
    for (uint32_t j = 0; j < job->n; j++)
        if (job->sum[j] != a->sums[j])
            drop_corrupt(srv, aud->sess, a->ns, a->keys[j], aud->holds[j], a->offs[j],
                         job->len[j]);
    kvtcd_op_free(aud);
}

/* 1 when the hits may go out at once, before kvtcd reads them: the client
 * checks each against the checksum the reply carries (the one the index
 * took when the bytes arrived; GetRequest.client_checks over UCX). Hits
 * that are decoded here are never sent unverified (a decoder fed bad bytes
 * would produce bytes with a matching fresh checksum). */
static int get_sends_unread(const get_ctx *c)
{
    if (c->ldest || !c->client_checks || c->nf == 0)
        return 0;
    for (size_t j = 0; j < c->nf; j++)
        if (kvtcd_serve_get_decodes(c->want, c->metas[c->fidx[j]].encoding))
            return 0;
    return 1;
}

/* kvtcd's own re-read of the stored bytes of the hits that are due for it
 * (c->audit; at most once an --audit-interval per chunk: the client checks
 * every one anyway), to run beside the send; a chunk that fails it still
 * leaves the index. *out: the re-read, ready to run (it holds references
 * to the blobs), or NULL when none is due. Errors: KVTC_ENOMEM (then
 * verify first). */
static int get_audit_new(kvtcd_op *op, kvtcd_op **out)
{
    get_ctx *c = op->ctx;
    kvtcd_session *s = op->sess;
    size_t nd = 0;
    for (size_t j = 0; j < c->nf; j++)
        nd += c->audit[j];
    *out = NULL;
    if (nd == 0)
        return 0;
    kvtcd_op *aud = kvtcd_op_new(s->srv, KVTCD_OP_AUDIT, s);
    get_audit *a = aud ? calloc(1, sizeof *a) : NULL;
    if (aud) {
        aud->ctx = a;
        aud->ctx_free = get_audit_free;
    }
    if (!a || kvtcd_hashjob_init(&aud->hash, (uint32_t)nd) < 0 ||
        !(a->offs = calloc(nd, sizeof *a->offs)) || !(a->sums = calloc(nd, sizeof *a->sums)) ||
        !(a->keys = calloc(nd, sizeof *a->keys)) ||
        !(aud->holds = calloc(nd, sizeof *aud->holds))) {
        kvtcd_op_free(aud);
        return KVTC_ENOMEM;
    }
    a->ns = c->ns;
    for (size_t j = 0, k = 0; j < c->nf; j++) {
        if (!c->audit[j])
            continue;
        aud->hash.ptr[k] = op->hash.ptr[j];
        aud->hash.len[k] = op->hash.len[j];
        a->offs[k] = c->offs[j];
        a->sums[k] = c->sums[j];
        memcpy(a->keys[k], c->keys[c->fidx[j]], KVTCD_KEY_BYTES);
        aud->holds[k] = c->blobs[j];
        kvtcd_blob_ref(c->blobs[j]);
        aud->n_holds = (uint32_t)++k;
    }
    s->srv->m.gets_audited += nd;
    aud->hash.done = get_audited;
    aud->hash.arg = aud;
    *out = aud;
    return 0;
}

/* Every hit is in host RAM (or failed): drop the failed ones from the
 * list, then re-verify the rest off the loop and send (get_hashed). Frees
 * op on failure. */
static void get_verify(kvtcd_op *op)
{
    kvtcd_session *s = op->sess;
    kvtcd_server *srv = s->srv;
    get_ctx *c = op->ctx;
    size_t k = 0;
    for (size_t j = 0; j < c->nf; j++) {
        if (!c->blobs[j]) {
            get_unserved(srv, c, c->fidx[j], c->loads[j].rc);
            continue;
        }
        c->fidx[k] = c->fidx[j];
        c->blobs[k] = c->blobs[j];
        c->offs[k] = c->offs[j];
        c->sums[k] = c->sums[j];
        c->audit[k] = c->audit[j];
        if (k != j)
            c->blobs[j] = NULL;
        k++;
    }
    c->nf = k;
    if (kvtcd_hashjob_init(&op->hash, (uint32_t)c->nf) < 0) {
        kvtcd_send_error(s, op->req_id, ST(INTERNAL), "get: out of memory");
        kvtcd_op_free(op);
        return;
    }
    for (size_t j = 0; j < c->nf; j++) {
        op->hash.ptr[j] = c->blobs[j]->data + c->offs[j];
        op->hash.len[j] = c->metas[c->fidx[j]].size;
    }
    op->hash.done = get_hashed;
    op->hash.arg = op;
    if (c->ldest && get_local_fused(op))
        return;
    kvtcd_op *aud = NULL;
    if (get_sends_unread(c) && get_audit_new(op, &aud) == 0) {
        for (size_t j = 0; j < c->nf; j++) /* get_hashed finds them equal */
            op->hash.sum[j] = c->sums[j];
        get_hashed(&op->hash); /* sends; may free op */
        if (aud)
            kvtcd_hashjob_run(srv->loop, &aud->hash);
        return;
    }
    kvtcd_hashjob_run(srv->loop, &op->hash);
}

static void get_loaded(void *arg, int status, kvtcd_blob *blob, size_t off)
{
    struct get_load *l = arg;
    kvtcd_op *op = l->op;
    get_ctx *c = op->ctx;
    l->rc = status;
    if (status == 0) {
        c->blobs[l->j] = blob; /* the reference is ours now */
        c->offs[l->j] = off;
    }
    if (--c->pending == 0 && c->started)
        get_verify(op);
}

static void handle_get(kvtcd_session *s, const Kvtc__Wire__Request *req)
{
    kvtcd_server *srv = s->srv;
    const Kvtc__Wire__GetRequest *g = req->get;
    if (check_keys(s, req->id, g->keys, g->n_keys, "get") < 0)
        return;
    int want = g->has_want ? (int)g->want : KVTC__WIRE__ENCODING__RAW;
    if (!kvtc_wire_encoding_ok(want)) {
        kvtcd_send_error(s, req->id, ST(INVALID), "get: want=%d", want);
        return;
    }
    size_t n = g->n_keys;
    /* 1.3, local path: one destination per key, checked before anything
     * is looked up. */
    if (g->n_local) {
        if (g->n_local != n) {
            kvtcd_send_error(s, req->id, ST(INVALID),
                             "get: %zu local destinations for %zu keys",
                             g->n_local, n);
            return;
        }
        for (size_t i = 0; i < n; i++)
            if (kvtcd_local_dest_ok(g->local[i]->addr, g->local[i]->len) < 0) {
                kvtcd_send_error(s, req->id, ST(INVALID),
                                 "get: local destination %zu (addr=0x%llx "
                                 "len=%llu) out of bounds",
                                 i, (unsigned long long)g->local[i]->addr,
                                 (unsigned long long)g->local[i]->len);
                return;
            }
        if (!s->local) {
            local_unavailable(s, req->id, "get");
            return;
        }
    }
    uint64_t now = kvtcd_now_ms(srv);
    get_ctx *c = get_ctx_new(n);
    if (c)
        c->client_checks = g->has_client_checks && g->client_checks;
    if (c && g->n_local && (c->ldest = calloc(n, sizeof *c->ldest))) {
        for (size_t i = 0; i < n; i++) {
            c->ldest[i].iov_base = (void *)(uintptr_t)g->local[i]->addr;
            c->ldest[i].iov_len = (size_t)g->local[i]->len;
        }
    }
    kvtcd_op *op = c && (!g->n_local || c->ldest)
                       ? kvtcd_op_new(srv, KVTCD_OP_GET, s) : NULL;
    if (!op) {
        get_ctx_free(c);
        kvtcd_send_error(s, req->id, ST(INTERNAL), "get: out of memory");
        return;
    }
    op->req_id = req->id;
    op->ctx = c;
    op->ctx_free = get_ctx_free;
    c->ns = s->ns;
    c->want = want;
    for (size_t i = 0; i < n; i++) {
        kvtc__wire__get_result__init(&c->res[i]);
        c->resp[i] = &c->res[i];
        srv->m.gets++;
        kvtcd_entry *e = kvtcd_index_find(&srv->index, s->ns, g->keys[i].data,
                                          now);
        kvtcd_tiers_count_get(srv->tiers, e);
        if (!e) {
            c->res[i].status = ST(NOT_FOUND);
            srv->m.misses++;
            continue;
        }
        srv->m.hits++;
        kvtcd_index_touch(&srv->index, e, now);
        c->res[i].status = ST(OK);
        meta_of(e, c, i);
        c->res[i].meta = &c->metas[i];
        c->res[i].has_tier = 1;
        c->res[i].tier = (Kvtc__Wire__Tier)kvtcd_entry_wire_tier(e);
        /* A raw get of a container decodes into a buffer of this size
         * (codec_serve.h); the container's own header has the last word. */
        if (kvtcd_serve_get_decodes(want, e->encoding) && e->has_layout)
            c->rawsz[i] = kvtc_chunk_bytes(&e->layout,
                                           e->n_tokens ? e->n_tokens
                                                       : e->layout.chunk_tokens);
        size_t j = c->nf++;
        c->fidx[j] = (uint32_t)i;
        c->sums[j] = e->checksum;
        /* Over UCX kvtcd hashes a hit before it sends it, or beside the
         * send when the client checks it (get_sends_unread), then only if
         * its host bytes were not hashed within --audit-interval: a read
         * from the GPU or disk makes new host bytes, always due. (The local
         * path has its own rule: kvtcd_lcopy.) */
        uint64_t every = (uint64_t)srv->cfg.audit_interval * 1000u;
        c->audit[j] = !c->ldest && (!e->blob || !e->audit_ms || now - e->audit_ms >= every);
        if (c->audit[j])
            e->audit_ms = now ? now : 1; /* 0 means never */
        if (e->blob) {
            c->blobs[j] = e->blob;
            kvtcd_blob_ref(e->blob);
            c->offs[j] = e->off;
            continue;
        }
        /* Only on the GPU or disk: read it into host RAM first. */
        c->loads[j].op = op;
        c->loads[j].j = (uint32_t)j;
        int rc = kvtcd_tiers_load(srv->tiers, e, now, get_loaded, &c->loads[j]);
        if (rc < 0) {
            c->loads[j].rc = rc;
            continue;
        }
        c->pending++;
        c->loads[j].rc = 1; /* in flight */
    }
    c->started = 1;
    if (c->pending == 0)
        get_verify(op);
}

/* ---- Lookup, Delete, Pin, Stats ---------------------------------------- */

static void handle_lookup(kvtcd_session *s, const Kvtc__Wire__Request *req)
{
    kvtcd_server *srv = s->srv;
    const Kvtc__Wire__LookupRequest *lk = req->lookup;
    if (check_keys(s, req->id, lk->keys, lk->n_keys, "lookup") < 0)
        return;
    size_t n = lk->n_keys;
    const uint8_t **keys = calloc(n, sizeof *keys);
    int *tiers = calloc(n, sizeof *tiers);
    Kvtc__Wire__Tier *wt = calloc(n, sizeof *wt);
    if (!keys || !tiers || !wt) {
        kvtcd_send_error(s, req->id, ST(INTERNAL), "lookup: out of memory");
        goto cleanup;
    }
    for (size_t i = 0; i < n; i++)
        keys[i] = lk->keys[i].data;
    srv->m.lookups++;
    uint32_t hits = kvtcd_index_lookup(&srv->index, s->ns, keys, (uint32_t)n,
                                       kvtcd_now_ms(srv), tiers);
    for (uint32_t i = 0; i < hits; i++)
        wt[i] = (Kvtc__Wire__Tier)tiers[i];
    Kvtc__Wire__LookupReply lr = KVTC__WIRE__LOOKUP_REPLY__INIT;
    lr.hits = hits;
    lr.n_tiers = hits;
    lr.tiers = wt;
    Kvtc__Wire__Reply rep = KVTC__WIRE__REPLY__INIT;
    rep.id = req->id;
    rep.status = ST(OK);
    rep.body_case = KVTC__WIRE__REPLY__BODY_LOOKUP;
    rep.lookup = &lr;
    kvtcd_send_reply(s, &rep, NULL, 0, NULL, 0);
cleanup:
    free(keys);
    free(tiers);
    free(wt);
}

/* A delete or pin batch: per-key results; deletes with a disk tier in
 * durable mode finish once their tombstones are synced. */
typedef struct keys_ctx {
    size_t n;
    int is_pin;
    int *rc;              /* per key: 0 or KVTC_E* */
    uint32_t pending;
    int started;
} keys_ctx;

static void keys_ctx_free(void *p)
{
    keys_ctx *c = p;
    if (c)
        free(c->rc);
    free(c);
}

static void keys_reply(kvtcd_op *op)
{
    kvtcd_session *s = op->sess;
    kvtcd_server *srv = s->srv;
    keys_ctx *c = op->ctx;
    size_t n = c->n;
    Kvtc__Wire__Status *st = calloc(n, sizeof *st);
    if (!st) {
        kvtcd_send_error(s, op->req_id, ST(INTERNAL), "out of memory");
        kvtcd_op_free(op);
        return;
    }
    int first_rc = 0;
    for (size_t i = 0; i < n; i++) {
        /* PINNED has no KVTC_E* code: EPERM stands for it here. */
        st[i] = c->rc[i] == KVTC_EPERM ? ST(PINNED)
                                       : kvtc_wire_err_to_status(c->rc[i]);
        if (c->rc[i] == 0)
            c->is_pin ? srv->m.pins++ : srv->m.deletes++;
        else if (!first_rc)
            first_rc = c->rc[i];
    }
    Kvtc__Wire__Reply rep = KVTC__WIRE__REPLY__INIT;
    rep.id = op->req_id;
    /* As for Put: OK when every key is, else the first failure's status. */
    rep.status = ST(OK);
    for (size_t i = 0; i < n && rep.status == ST(OK); i++)
        rep.status = st[i];
    if (rep.status == ST(PINNED))
        rep.message = (char *)"delete: key is pinned";
    else if (rep.status == ST(NOT_FOUND))
        rep.message = (char *)"key not found";
    else if (rep.status != ST(OK))
        rep.message = first_rc == KVTC_EBUSY
                          ? (char *)"delete: kvtcd is shutting down"
                          : (char *)"delete: tombstone not written to disk: "
                                    "the key was not deleted";
    Kvtc__Wire__PinReply pr = KVTC__WIRE__PIN_REPLY__INIT;
    Kvtc__Wire__DeleteReply dr = KVTC__WIRE__DELETE_REPLY__INIT;
    if (c->is_pin) {
        pr.n_status = n;
        pr.status = st;
        rep.body_case = KVTC__WIRE__REPLY__BODY_PIN;
        rep.pin = &pr;
    } else {
        dr.n_status = n;
        dr.status = st;
        rep.body_case = KVTC__WIRE__REPLY__BODY_DEL;
        rep.del = &dr;
    }
    kvtcd_send_reply(s, &rep, NULL, 0, NULL, 0);
    free(st);
    kvtcd_op_free(op);
}

static void key_done(void *arg)
{
    kvtcd_op *op = arg;
    keys_ctx *c = op->ctx;
    if (--c->pending == 0 && c->started)
        keys_reply(op);
}

static void handle_delete_or_pin(kvtcd_session *s,
                                 const Kvtc__Wire__Request *req, int is_pin)
{
    kvtcd_server *srv = s->srv;
    const ProtobufCBinaryData *keys =
        is_pin ? req->pin->keys : req->del->keys;
    size_t n = is_pin ? req->pin->n_keys : req->del->n_keys;
    if (check_keys(s, req->id, keys, n, is_pin ? "pin" : "delete") < 0)
        return;
    keys_ctx *c = calloc(1, sizeof *c);
    if (c)
        c->rc = calloc(n, sizeof *c->rc);
    kvtcd_op *op = c && c->rc ? kvtcd_op_new(srv, KVTCD_OP_KEYS, s) : NULL;
    if (!op) {
        keys_ctx_free(c);
        kvtcd_send_error(s, req->id, ST(INTERNAL), "out of memory");
        return;
    }
    op->req_id = req->id;
    op->ctx = c;
    op->ctx_free = keys_ctx_free;
    c->n = n;
    c->is_pin = is_pin;
    uint64_t now = kvtcd_now_ms(srv);
    for (size_t i = 0; i < n; i++) {
        kvtcd_entry *e = kvtcd_index_find(&srv->index, s->ns, keys[i].data,
                                          now);
        int pending = kvtcd_tiers_pending(srv->tiers, s->ns, keys[i].data);
        if (!e && !is_pin && pending) {
            /* Durable put(s) of the key still being written, none visible
             * yet: they were accepted before this delete, which must
             * remove them. */
            if (kvtcd_tiers_delete_key(srv->tiers, s->ns, keys[i].data, now,
                                       &c->rc[i], key_done, op) == 1)
                c->pending++;
        } else if (!e || (is_pin && pending == 2)) {
            /* A pin after an accepted delete finds the key gone, as it
             * would without a disk (the delete does not wait for pins
             * that come after it). */
            c->rc[i] = KVTC_ENOENT;
        } else if (is_pin) {
            kvtcd_index_pin(&srv->index, e, req->pin->pin,
                            req->pin->has_ttl_ms ? req->pin->ttl_ms : 0, now);
        } else if (kvtcd_entry_pinned(e, now)) {
            c->rc[i] = KVTC_EPERM;
        } else if (kvtcd_tiers_delete(srv->tiers, e, now, &c->rc[i], key_done,
                                      op) == 1) {
            c->pending++;
        }
    }
    c->started = 1;
    if (c->pending == 0)
        keys_reply(op);
}

static void handle_stats(kvtcd_session *s, const Kvtc__Wire__Request *req)
{
    kvtcd_server *srv = s->srv;
    Kvtc__Wire__StatsReply sr = KVTC__WIRE__STATS_REPLY__INIT;
#define SET(f, v) (sr.has_##f = 1, sr.f = (v))
    SET(chunks, srv->index.count);
    SET(bytes_used, srv->host->used);
    SET(bytes_capacity, srv->host->capacity);
    SET(puts, srv->m.puts);
    SET(gets, srv->m.gets);
    SET(hits, srv->m.hits);
    SET(misses, srv->m.misses);
    SET(evictions, srv->index.evictions);
    SET(rejected_full, srv->m.rejected_full);
    SET(sessions, srv->n_sessions);
    SET(bytes_in, srv->m.bytes_in);
    SET(bytes_out, srv->m.bytes_out);
    SET(errors, srv->m.errors);
    SET(uptime_ms, kvtcd_now_ms(srv));
    kvtcd_tiers_stats ts;
    kvtcd_tiers_get_stats(srv->tiers, &ts);
    SET(gpu_bytes_used, ts.used[KVTCD_T_GPU]);
    SET(gpu_bytes_capacity, ts.capacity[KVTCD_T_GPU]);
    SET(disk_bytes_used, ts.used[KVTCD_T_DISK]);
    SET(disk_bytes_capacity, ts.capacity[KVTCD_T_DISK]);
    SET(disk_live_bytes, ts.disk.live);
    SET(disk_dirty_chunks, ts.dirty);
    uint64_t up = 0, down = 0;
    for (int i = 0; i < KVTCD_N_TIERS; i++) {
        up += ts.c[i].promotions;
        down += ts.c[i].demotions;
    }
    SET(promotions, up);
    SET(demotions, down);
    SET(durable, ts.durable ? 1 : 0);
#undef SET
    Kvtc__Wire__Reply rep = KVTC__WIRE__REPLY__INIT;
    rep.id = req->id;
    rep.status = ST(OK);
    rep.body_case = KVTC__WIRE__REPLY__BODY_STATS;
    rep.stats = &sr;
    kvtcd_send_reply(s, &rep, NULL, 0, NULL, 0);
}

/* ---- dispatch ---------------------------------------------------------- */

static void dispatch(kvtcd_session *s, Kvtc__Wire__Request *req,
                     const void *bulk, size_t bulk_len, void *rndv_desc,
                     kvtcd_blob *preblob, size_t preoff, int store_full)
{
    kvtcd_server *srv = s->srv;
    if (srv->cur_rail) {
        /* Its reply goes back on that rail. Rails carry bulk bytes only:
         * puts and gets (a profile's upload would need the loop's worker). */
        kvtcd_session_route(s, req->id, srv->cur_rail - 1);
        if (req->body_case != KVTC__WIRE__REQUEST__BODY_PUT &&
            req->body_case != KVTC__WIRE__REQUEST__BODY_GET) {
            kvtcd_send_error(s, req->id, ST(INVALID),
                             "only puts and gets travel on a rail");
            return;
        }
    }
    if (srv->draining) {
        kvtcd_send_error(s, req->id, ST(BUSY), "kvtcd is shutting down");
        return;
    }
    if (req->body_case == KVTC__WIRE__REQUEST__BODY__NOT_SET) {
        kvtcd_send_error(s, req->id, ST(UNSUPPORTED),
                         "unknown operation (newer client?)");
        return;
    }
    if (req->body_case != KVTC__WIRE__REQUEST__BODY_HELLO && !s->hello_done) {
        kvtcd_send_error(s, req->id, ST(UNAUTHORIZED),
                         "hello first: no session yet");
        return;
    }
    if (bulk_len && req->body_case != KVTC__WIRE__REQUEST__BODY_PUT &&
        req->body_case != KVTC__WIRE__REQUEST__BODY_PROFILE) {
        kvtcd_send_error(s, req->id, ST(INVALID),
                         "unexpected %zu payload bytes", bulk_len);
        return;
    }
    switch (req->body_case) {
    case KVTC__WIRE__REQUEST__BODY_HELLO: handle_hello(s, req); break;
    case KVTC__WIRE__REQUEST__BODY_PUT:
        handle_put(s, req, bulk, bulk_len, rndv_desc, preblob, preoff,
                   store_full);
        break;
    case KVTC__WIRE__REQUEST__BODY_GET: handle_get(s, req); break;
    case KVTC__WIRE__REQUEST__BODY_LOOKUP: handle_lookup(s, req); break;
    case KVTC__WIRE__REQUEST__BODY_DEL: handle_delete_or_pin(s, req, 0); break;
    case KVTC__WIRE__REQUEST__BODY_PIN: handle_delete_or_pin(s, req, 1); break;
    case KVTC__WIRE__REQUEST__BODY_STATS: handle_stats(s, req); break;
    case KVTC__WIRE__REQUEST__BODY_PROFILE:
        kvtcd_handle_profile(s, req, bulk, bulk_len, rndv_desc);
        break;
    default:
        kvtcd_send_error(s, req->id, ST(UNSUPPORTED), "unknown operation %d",
                         (int)req->body_case);
        break;
    }
}

ucs_status_t kvtcd_handle_request(kvtcd_session *s, const void *header,
                                  size_t header_len, void *data, size_t length,
                                  const ucp_am_recv_param_t *param)
{
    kvtcd_server *srv = s->srv;
    srv->m.requests++;
    if (srv->ltrace)
        srv->lt_am_ns = uv_hrtime(); /* local_trace.h: KVTCD_LT_AM */
    int rndv = (param->recv_attr & UCP_AM_RECV_ATTR_FLAG_RNDV) != 0;
    size_t mlen;
    int in_data;
    if (kvtc_wire_am_split(header, header_len, length, &mlen, &in_data) < 0) {
        kvtcd_send_error(s, 0, ST(INVALID),
                         "bad frame: header of %zu bytes", header_len);
        return UCS_OK; /* drops any rendezvous */
    }
    if (in_data && rndv) {
        /* The message is inside a rendezvous payload: fetch it all first.
         * Bulk beyond the message can only be a put's, so it goes straight
         * into the store; a bare message goes into a small buffer. */
        size_t bulk = length - mlen;
        uint64_t limit = (uint64_t)srv->cfg.max_batch * srv->cfg.max_chunk_bytes;
        if (srv->draining) {
            kvtcd_send_error(s, 0, ST(BUSY), "kvtcd is shutting down");
            return UCS_OK;
        }
        if (bulk > limit) {
            kvtcd_send_error(s, 0, ST(TOO_LARGE),
                             "request of %zu bytes over the daemon's limits",
                             length);
            return UCS_OK;
        }
        kvtcd_op *op = kvtcd_op_new(srv, KVTCD_OP_RECV, s);
        if (!op)
            return UCS_OK;
        op->rail = srv->cur_rail;
        op->msg_len = mlen;
        op->total = length;
        void *dst;
        if (bulk == 0) {
            /* A big message alone (a long Lookup, a large batch Get):
             * bounded in all, so many of them cannot exhaust memory. */
            if (srv->overflow_bytes + mlen > MSG_MAX) {
                kvtcd_op_free(op);
                kvtcd_send_error(s, 0, ST(BUSY), "too many large requests "
                                                 "in flight");
                kvtcd_session_close(s, "too many large requests in flight");
                return UCS_OK;
            }
            op->msg_buf = malloc(mlen);
            op->overflow = mlen;
            srv->overflow_bytes += mlen;
            dst = op->msg_buf;
        } else {
            int rc = kvtcd_index_reserve(&srv->index, length,
                                         kvtcd_now_ms(srv), &op->blob);
            if (rc == KVTC_EFULL && length <= OVERFLOW_MAX &&
                srv->overflow_bytes + length <= MSG_MAX) {
                /* The request id is inside the data we cannot store: take
                 * it into a small bounded side buffer, only to answer FULL
                 * to the right request. */
                op->msg_buf = malloc(length);
                op->overflow = length;
                srv->overflow_bytes += length;
                dst = op->msg_buf;
            } else if (rc == KVTC_EFULL) {
                /* Too big to read aside: the reply cannot name the
                 * request, so end the session rather than leave the
                 * client waiting for an answer that cannot come. */
                kvtcd_op_free(op);
                KVTCD_WARN("req", "store full and request too big to read; "
                                  "closing session=%llu bytes=%zu",
                           (unsigned long long)s->id, length);
                reply_put_full(s, 0, 0, length);
                kvtcd_session_close(s, "store full, unreadable request");
                return UCS_OK;
            } else {
                dst = rc == 0 ? op->blob->data : NULL;
            }
        }
        if (!dst) {
            kvtcd_op_free(op);
            kvtcd_send_error(s, 0, ST(INTERNAL), "out of memory");
            return UCS_OK;
        }
        start_recv(op, data, dst, length);
        return UCS_OK;
    }
    Kvtc__Wire__Request *req = NULL;
    const uint8_t *msg = in_data ? (const uint8_t *)data
                                 : (const uint8_t *)header + KVTC_WIRE_LEN_BYTES;
    if (kvtc_wire_unpack_request_msg(msg, mlen, &req) < 0) {
        kvtcd_send_error(s, 0, ST(INVALID), "malformed request message");
        return UCS_OK;
    }
    const uint8_t *bulk = in_data ? (const uint8_t *)data + mlen : data;
    size_t bulk_len = in_data ? length - mlen : length;
    dispatch(s, req, bulk, bulk_len, rndv ? data : NULL, NULL, 0, 0);
    srv->lt_am_ns = 0;
    kvtc_wire_request_free(req);
    return UCS_OK;
}
