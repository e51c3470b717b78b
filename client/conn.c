/* Connections: UCX setup, the reply handler, progress, waiting, failure.
 * Every UCX object of a connection is its own (context, workers,
 * endpoints), so distinct connections never share state and need no
 * locks. A connection's rail workers may have threads of their own
 * (rail_threads.c); their UCX callbacks come here as events, so all of a
 * connection's state is still touched by the caller's thread only. */
#include <errno.h>
#include <ifaddrs.h>
#include <netdb.h>
#include <netinet/in.h>
#include <poll.h>
#include <sched.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>

#include "fifo.h"
#include "internal.h"

#define DEFAULT_PORT "7700"
#define DEFAULT_CONNECT_TIMEOUT_MS 5000u
#define DEFAULT_OP_TIMEOUT_MS 60000u
#define DEFAULT_SPIN_US 200u
/* A burst of events must not keep one progress call forever. */
#define PROGRESS_BUDGET 1024
/* Longest sleep of a blocking wait between deadline checks. */
#define POLL_SLICE_MS 100
/* A blocking wait polls while rail threads carry its transfers, up to
 * this long into the wait (see wait_window). */
#define RAIL_WAIT_SPIN_NS 10000000u
/* Polling window of a wait on local-path operations whose replies
 * lately came after the whole window (see wait_window). */
#define LOCAL_SPIN_FLOOR_NS 20000u
/* How long disconnect waits for a graceful close before forcing it. */
#define CLOSE_GRACE_MS 2000u
/* Requests of this size take a rail, below KVTC_RAIL_MIN, when they queue
 * behind others on a connection whose rails have threads (kvtc__rail_pick). */
#define RAIL_PIPE_MIN (256u << 10)

static void close_ep(kvtc_conn *c, int force);

void kvtc__set_error(kvtc_conn *c, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(c->last_error, sizeof c->last_error, fmt, ap);
    va_end(ap);
}

uint64_t kvtc__now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static uint64_t deadline_after(uint32_t ms)
{
    return ms ? kvtc__now_ns() + (uint64_t)ms * 1000000ull : 0;
}

/* Why the calling thread's latest kvtc_connect failed: there is no
 * connection to hold it. */
static _Thread_local char connect_error[256];

const char *kvtc_last_error(const kvtc_conn *c)
{
    return c ? c->last_error : connect_error;
}

int kvtc_server_info_get(const kvtc_conn *c, kvtc_server_info *out)
{
    if (!c || !out)
        return KVTC_EINVAL;
    *out = c->info;
    return 0;
}

/* ---- Operations' life cycle -------------------------------------------- */

struct kvtc__op *kvtc__op_new(kvtc_conn *c, enum kvtc__op_kind kind,
                              const kvtc_op_params *p)
{
    struct kvtc__op *op = calloc(1, sizeof *op);
    if (!op)
        return NULL;
    op->conn = c;
    op->kind = kind;
    uint32_t ms = c->op_timeout_ms;
    if (p && (p->field_mask & KVTC_OP_PARAM_FIELD_TIMEOUT))
        ms = p->timeout_ms;
    op->deadline_ns = deadline_after(ms);
    if (p && (p->field_mask & KVTC_OP_PARAM_FIELD_CALLBACK)) {
        op->cb = p->cb;
        op->arg = p->arg;
    }
    return op;
}

void kvtc__op_free(struct kvtc__op *op)
{
    if (!op)
        return;
    kvtc__rail_land_cancel(op);
    free(op->frame);
    kvtc__put_later_free(op->later);
    free(op->iov);
    free(op->hdr_iov);
    free(op->dests);
    free(op->scratch);
    free(op->ctr_buf);
    kvtc__pinned_free(op->staging);
    free(op);
}

static void unlink_inflight(struct kvtc__op *op)
{
    kvtc_conn *c = op->conn;
    if (op->prev)
        op->prev->next = op->next;
    else
        c->inflight = op->next;
    if (op->next)
        op->next->prev = op->prev;
    op->next = op->prev = NULL;
    c->n_inflight--;
}

void kvtc__op_push_done(kvtc_conn *c, struct kvtc__op *op)
{
    KVTC_FIFO_PUSH(c->done_head, c->done_tail, op, next);
    c->n_done++;
}

void kvtc__op_fail_unsent(struct kvtc__op *op, int rc)
{
    op->status = rc;
    kvtc__op_push_done(op->conn, op);
}

void kvtc__op_maybe_done(struct kvtc__op *op)
{
    if (op->send_pending || op->reply_pending || op->recv_pending)
        return;
    unlink_inflight(op);
    kvtc__op_push_done(op->conn, op);
}

/* ---- One bulk send at a time ----------------------------------------------
 *
 * Requests whose payloads go by rendezvous (puts of >= 1 MiB) are posted
 * one after the other, the next when the last one's send completed. Posted
 * together, UCX (1.13, tcp) queues their data back to back and the message
 * that completes each transfer at kvtcd waits behind the next one's data:
 * kvtcd then received, verified and acknowledged a pipelined client's puts
 * all at once. kvtcd sends its bulk replies the same way (transport.c). */

static void send_cb(void *request, ucs_status_t status, void *user_data);

/* Hand op's saved send to UCX. */
static void post_send(kvtc_conn *c, struct kvtc__op *op)
{
    ucp_ep_h ep = op->ep ? op->ep : kvtc__send_ep(c);
    ucs_status_ptr_t sp = ucp_am_send_nbx(ep, KVTC_WIRE_AM_REQUEST, op->q_hdr, op->q_hlen,
                                          op->q_data, op->q_count, &op->q_prm);
    if (op->rail && !UCS_PTR_IS_ERR(sp))
        kvtc__rail_kick(op->rail, sp != NULL);
    if (sp != NULL && !UCS_PTR_IS_ERR(sp))
        return;
    if (UCS_PTR_IS_ERR(sp))
        send_cb(NULL, UCS_PTR_STATUS(sp), op);
    else
        send_cb(NULL, UCS_OK, op);
}

/* The posted bulk send ended: post the next one waiting. */
static void bulk_send_next(kvtc_conn *c, uint32_t stream)
{
    struct kvtc__sendq *q = &c->sendq[stream];
    q->sending = 0;
    struct kvtc__op *op = q->head;
    if (!op || c->failed)
        return;
    KVTC_FIFO_POP(q->head, q->tail, sendq_next);
    q->sending = 1;
    post_send(c, op);
}

/* The connection failed: sends still waiting are not posted. */
static void drop_send_queue(kvtc_conn *c)
{
    struct kvtc__op *op;
    for (uint32_t i = 0; i <= KVTC__MAX_RAILS; i++) {
        struct kvtc__sendq *q = &c->sendq[i];
        while ((op = q->head)) {
            KVTC_FIFO_POP(q->head, q->tail, sendq_next);
            op->send_pending = 0;
        }
        q->sending = 0;
    }
}

static void send_cb(void *request, ucs_status_t status, void *user_data)
{
    struct kvtc__op *op = user_data;
    kvtc_conn *c = op->conn;
    op->send_pending = 0;
    if (c->trace)
        op->t_bulk = kvtc__now_ns();
    if (status != UCS_OK && !op->status) {
        op->status = KVTC_ECONN;
        kvtc__set_error(c, "send failed: %s", ucs_status_string(status));
    }
    if (request)
        ucp_request_free(request);
    int bulk = op->bulk_send;
    uint32_t stream = op->stream;
    kvtc__op_maybe_done(op);
    if (bulk)
        bulk_send_next(c, stream);
}

/* Completions of requests on a rail's worker come from its thread: they
 * run here later (kvtc__rails_drain), in the same functions. */
static void send_done(void *request, ucs_status_t status, size_t length, void *user_data)
{
    (void)length;
    send_cb(request, status, user_data);
}

static void rail_send_cb(void *request, ucs_status_t status, void *user_data)
{
    struct kvtc__op *op = user_data;
    kvtc__rail_defer(op->conn, send_done, request, status, 0, op);
}

static size_t payload_bytes(const void *payload, size_t count, ucp_datatype_t dt)
{
    if (dt != ucp_dt_make_iov())
        return count;
    size_t n = 0;
    for (size_t i = 0; i < count; i++)
        n += ((const ucp_dt_iov_t *)payload)[i].length;
    return n;
}

static int op_pack(kvtc_conn *c, struct kvtc__op *op, Kvtc__Wire__Request *req)
{
    op->id = ++c->next_id;
    req->id = op->id;
    int rc = kvtc_wire_pack_request_alloc(req, &op->frame, &op->frame_len);
    if (rc == KVTC_EINVAL)
        kvtc__set_error(c, "request too large for one frame; split the batch");
    return rc;
}

static int op_submit(kvtc_conn *c, struct kvtc__op *op, const void *payload,
                     size_t count, ucp_datatype_t dt, int payload_cuda)
{
    if (c->failed) {
        kvtc__set_error(c, "connection failed earlier");
        return c->failed;
    }
    op->send_pending = 1;
    op->reply_pending = 1;
    if (c->trace)
        op->t_sub = kvtc__now_ns();
    op->next = c->inflight;
    if (c->inflight)
        c->inflight->prev = op;
    c->inflight = op;
    c->n_inflight++;

    ucp_request_param_t prm = {
        .op_attr_mask = UCP_OP_ATTR_FIELD_CALLBACK | UCP_OP_ATTR_FIELD_USER_DATA |
                        UCP_OP_ATTR_FIELD_FLAGS | UCP_OP_ATTR_FIELD_DATATYPE,
        .cb.send = op->rail ? rail_send_cb : send_cb,
        .user_data = op,
        .flags = UCP_AM_SEND_FLAG_REPLY,
        .datatype = dt,
    };
    if (payload_cuda) {
        prm.op_attr_mask |= UCP_OP_ATTR_FIELD_MEMORY_TYPE;
        prm.memory_type = UCS_MEMORY_TYPE_CUDA;
    }
    const void *hdr = op->frame;
    size_t hdr_len = op->frame_len;
    if (op->frame_len > c->max_am_header && payload_cuda) {
        /* One request carries one memory type: a host message in front of
         * device chunks cannot share it. */
        kvtc__set_error(c, "batch too large to send device memory directly; split it");
        unlink_inflight(op);
        return KVTC_ENOSPC;
    }
    if (op->frame_len > c->max_am_header) {
        /* Too big for an AM header: the 4-byte prefix alone is the header
         * and the message leads the data (docs/protocol.md, big frames). */
        size_t nb = (dt == ucp_dt_make_iov()) ? count : (count ? 1 : 0);
        ucp_dt_iov_t *iov = calloc(nb + 1, sizeof *iov);
        if (!iov) {
            unlink_inflight(op);
            return KVTC_ENOMEM;
        }
        iov[0].buffer = (char *)op->frame + KVTC_WIRE_LEN_BYTES;
        iov[0].length = op->frame_len - KVTC_WIRE_LEN_BYTES;
        if ((dt == ucp_dt_make_iov()))
            memcpy(iov + 1, payload, count * sizeof *iov);
        else if (count) {
            iov[1].buffer = (void *)payload;
            iov[1].length = count;
        }
        free(op->hdr_iov);
        op->hdr_iov = iov;
        hdr_len = KVTC_WIRE_LEN_BYTES;
        payload = iov;
        count = nb + 1;
        prm.datatype = ucp_dt_make_iov();
    }
    struct kvtc__sendq *q = &c->sendq[op->stream];
    size_t pbytes = payload_bytes(payload, count, prm.datatype);
    /* On a rail with a thread, a payload below UCX's rendezvous line goes
     * by rendezvous too: that thread then moves its bytes when kvtcd asks
     * for them, where eagerly this thread would push them into the socket
     * as it posts (256 KiB puts ~1.4x, docs/perf-notes.md "Rail threads"). */
    if (op->rail && pbytes >= RAIL_PIPE_MIN)
        prm.flags |= UCP_AM_SEND_FLAG_RNDV;
    if (pbytes >= KVTC_WIRE_RNDV_THRESH_BYTES || (prm.flags & UCP_AM_SEND_FLAG_RNDV)) {
        op->bulk_send = 1;
        op->q_hdr = hdr, op->q_hlen = hdr_len, op->q_data = payload, op->q_count = count;
        op->q_prm = prm;
        if (q->sending) {
            KVTC_FIFO_PUSH(q->head, q->tail, op, sendq_next);
            return 0;
        }
        q->sending = 1;
    }
    ucp_ep_h ep = op->ep ? op->ep : kvtc__send_ep(c);
    ucs_status_ptr_t sp =
        ucp_am_send_nbx(ep, KVTC_WIRE_AM_REQUEST, hdr, hdr_len, payload, count, &prm);
    if (UCS_PTR_IS_ERR(sp)) {
        if (op->bulk_send)
            q->sending = 0;
        kvtc__set_error(c, "send: %s", ucs_status_string(UCS_PTR_STATUS(sp)));
        unlink_inflight(op);
        return KVTC_ECONN;
    }
    if (sp == NULL) {
        op->send_pending = 0;
        if (op->bulk_send)
            q->sending = 0; /* nothing waits: it was the only one */
    }
    if (op->rail)
        kvtc__rail_kick(op->rail, sp != NULL);
    return 0;
}

int kvtc__op_send(kvtc_conn *c, struct kvtc__op *op, Kvtc__Wire__Request *req,
                  const void *payload, size_t payload_len, ucp_datatype_t dt,
                  int payload_cuda)
{
    int rc = op_pack(c, op, req);
    if (!rc && op->land_ok)
        kvtc__rail_land(op->rail, op); /* before its reply can come */
    if (!rc)
        rc = op_submit(c, op, payload, payload_len, dt, payload_cuda);
    return rc;
}

int kvtc__need_cb(kvtc_conn *c, const kvtc_op_params *p)
{
    if (!p || !(p->field_mask & KVTC_OP_PARAM_FIELD_CALLBACK) || !p->cb) {
        kvtc__set_error(c, "asynchronous call without a callback");
        return KVTC_EINVAL;
    }
    return 0;
}

/* A get's bytes landed: a UCX receive's completion, or (request NULL) a
 * rail thread's copy (kvtc__op_copy_on_rail). */
static void recv_cb(void *request, ucs_status_t status, size_t length, void *user_data)
{
    struct kvtc__op *op = user_data;
    (void)length;
    op->recv_pending = 0;
    if (op->conn->trace)
        op->t_bulk = kvtc__now_ns();
    if (status != UCS_OK && !op->status) {
        op->status = KVTC_ECONN;
        kvtc__set_error(op->conn, "receive failed: %s", ucs_status_string(status));
    }
    if (request)
        ucp_request_free(request);
    kvtc__op_maybe_done(op);
}

static void rail_recv_cb(void *request, ucs_status_t status, size_t length, void *user_data)
{
    struct kvtc__op *op = user_data;
    kvtc__rail_defer(op->conn, recv_cb, request, status, length, op);
}

/* The worker whose reply is being handled: a rendezvous descriptor is
 * received on the worker it came to. */
static ucp_worker_h am_worker(const kvtc_conn *c)
{
    return c->am_rail ? kvtc__rail_worker(c->am_rail) : c->worker;
}

/* A request posted on the worker of the reply being handled is in flight. */
static void am_kick(kvtc_conn *c, ucs_status_ptr_t sp)
{
    if (c->am_rail && UCS_PTR_IS_PTR(sp))
        kvtc__rail_kick(c->am_rail, 1);
}

int kvtc__op_copy_on_rail(struct kvtc__op *op, const void *bulk)
{
    /* The rail thread's cache holds the bytes, and the rails copy in
     * parallel where this thread copied every one of them
     * (docs/perf-notes.md, "Rail threads"). */
    kvtc_conn *c = op->conn;
    if (!c->am_rail || !c->am_kept)
        return 0;
    op->recv_pending = 1;
    if (kvtc__rail_copy(c->am_rail, op, c->am_kept, bulk, recv_cb)) {
        op->recv_pending = 0;
        return 0;
    }
    c->am_kept = NULL; /* the copy releases it */
    return 1;
}

ucs_status_t kvtc__op_recv_rndv(struct kvtc__op *op, void *rndv_desc, void *buf,
                                size_t count, ucp_datatype_t dt)
{
    kvtc_conn *c = op->conn;
    ucp_request_param_t prm = {
        .op_attr_mask = UCP_OP_ATTR_FIELD_CALLBACK | UCP_OP_ATTR_FIELD_USER_DATA |
                        UCP_OP_ATTR_FIELD_DATATYPE,
        .cb.recv_am = c->am_rail ? rail_recv_cb : recv_cb,
        .user_data = op,
        .datatype = dt,
    };
    op->recv_pending = 1;
    ucs_status_ptr_t sp = ucp_am_recv_data_nbx(am_worker(c), rndv_desc, buf, count, &prm);
    am_kick(c, sp);
    if (UCS_PTR_IS_ERR(sp)) {
        op->recv_pending = 0;
        op->status = KVTC_ECONN;
        kvtc__set_error(op->conn, "receive: %s", ucs_status_string(UCS_PTR_STATUS(sp)));
        return UCS_OK;
    }
    if (sp == NULL)
        op->recv_pending = 0;
    return UCS_INPROGRESS;
}

void kvtc__conn_fail(kvtc_conn *c, int err, const char *why)
{
    if (!c->failed) {
        c->failed = err == KVTC_ECANCELED ? KVTC_ECANCELED : KVTC_ECONN;
        kvtc__set_error(c, "%s", why);
    }
    /* Before any op in flight is reported: kvtcd may still be copying
     * into its buffers by the local path. */
    int local_ops = 0;
    for (struct kvtc__op *op = c->inflight; op && !local_ops; op = op->next)
        local_ops = op->local;
    if (local_ops)
        kvtc__local_drain(c);
    else
        kvtc__local_off(c);
    /* No reply will come any more; UCX completes the sends and receives
     * still in flight (with errors) once the endpoint is closed. */
    drop_send_queue(c);
    for (struct kvtc__op *op = c->inflight, *next; op; op = next) {
        next = op->next;
        if (!op->status)
            op->status = err;
        op->reply_pending = 0;
        kvtc__op_maybe_done(op);
    }
}

/* ---- The reply handler --------------------------------------------------- */

/* Hand a parsed reply to its op. */
static ucs_status_t dispatch(kvtc_conn *c, Kvtc__Wire__Reply *rep, const void *bulk,
                             size_t bulk_len, void *rndv_desc)
{
    struct kvtc__op *op = c->inflight;
    while (op && !(op->id == rep->id && op->reply_pending))
        op = op->next;
    ucs_status_t ret = UCS_OK;
    if (op) {
        op->reply_pending = 0;
        if (c->trace)
            op->t_rep = kvtc__now_ns();
        ret = kvtc__op_reply(op, rep, bulk, bulk_len, rndv_desc);
        kvtc__op_maybe_done(op);
    }
    /* An unknown id is a reply to an operation that is gone (timed out and
     * failed with the connection): drop it. Returning UCS_OK drops a
     * rendezvous payload too. */
    kvtc_wire_reply_free(rep);
    return ret;
}

ucs_status_t kvtc__reply_dispatch(kvtc_conn *c, Kvtc__Wire__Reply *rep, size_t length)
{
    return dispatch(c, rep, NULL, length, NULL);
}

/* An "in data" reply that came as rendezvous: message and bulk arrive
 * together into one buffer, then are handled as if eager. */
struct raw_reply {
    kvtc_conn *c;
    void *buf;
    size_t len, msg_len;
};

static void raw_recv_cb(void *request, ucs_status_t status, size_t length,
                        void *user_data)
{
    struct raw_reply *r = user_data;
    kvtc_conn *c = r->c;
    (void)length;
    c->raw_pending--;
    Kvtc__Wire__Reply *rep = NULL;
    if (status != UCS_OK)
        kvtc__conn_fail(c, KVTC_ECONN, "reply receive failed");
    else if (kvtc_wire_unpack_reply_msg(r->buf, r->msg_len, &rep))
        kvtc__conn_fail(c, KVTC_EPROTO, "malformed reply from the daemon");
    else
        dispatch(c, rep, (char *)r->buf + r->msg_len, r->len - r->msg_len, NULL);
    if (request)
        ucp_request_free(request);
    free(r->buf);
    free(r);
}

static void rail_raw_recv_cb(void *request, ucs_status_t status, size_t length,
                             void *user_data)
{
    struct raw_reply *r = user_data;
    kvtc__rail_defer(r->c, raw_recv_cb, request, status, length, r);
}

/* Most bytes a reply may carry: the frame plus every in-flight get's worth
 * of chunks. Anything larger is not a reply to us. */
static size_t reply_bound(const kvtc_conn *c)
{
    uint64_t max_chunk = c->info.max_chunk_bytes ? c->info.max_chunk_bytes
                                                 : KVTC_WIRE_DEFAULT_MAX_CHUNK;
    uint64_t b = KVTC_WIRE_MAX_FRAME;
    for (const struct kvtc__op *op = c->inflight; op; op = op->next)
        if (op->kind == KVTC__OP_GET && op->reply_pending)
            b += (uint64_t)op->n * max_chunk;
        else if (op->kind == KVTC__OP_PROFILE && op->reply_pending)
            b += KVTC__PROFILE_MAX_BYTES;
    return b > SIZE_MAX ? SIZE_MAX : (size_t)b;
}

ucs_status_t kvtc__reply_handle(kvtc_conn *c, const void *header, size_t header_length,
                                void *data, size_t length, int rndv)
{
    Kvtc__Wire__Reply *rep = NULL;
    size_t msg_len = 0;
    int in_data = 0;
    if (kvtc_wire_am_split(header, header_length, length, &msg_len, &in_data))
        goto bad;
    if (!in_data) {
        if (kvtc_wire_unpack_reply(header, header_length, &rep))
            goto bad;
        return dispatch(c, rep, rndv ? NULL : data, length, rndv ? data : NULL);
    }
    if (!rndv) {
        if (kvtc_wire_unpack_reply_msg(data, msg_len, &rep))
            goto bad;
        return dispatch(c, rep, (char *)data + msg_len, length - msg_len, NULL);
    }
    if (length > reply_bound(c))
        goto bad;
    struct raw_reply *r = calloc(1, sizeof *r);
    if (r)
        r->buf = malloc(length);
    if (!r || !r->buf) {
        free(r);
        kvtc__conn_fail(c, KVTC_ENOMEM, "out of memory for a reply");
        return UCS_OK;
    }
    r->c = c;
    r->len = length;
    r->msg_len = msg_len;
    ucp_request_param_t prm = {
        .op_attr_mask = UCP_OP_ATTR_FIELD_CALLBACK | UCP_OP_ATTR_FIELD_USER_DATA |
                        UCP_OP_ATTR_FIELD_DATATYPE,
        .cb.recv_am = c->am_rail ? rail_raw_recv_cb : raw_recv_cb,
        .user_data = r,
        .datatype = ucp_dt_make_contig(1),
    };
    c->raw_pending++;
    ucs_status_ptr_t sp = ucp_am_recv_data_nbx(am_worker(c), data, r->buf, length, &prm);
    am_kick(c, sp);
    if (UCS_PTR_IS_ERR(sp)) {
        c->raw_pending--;
        free(r->buf);
        free(r);
        kvtc__conn_fail(c, KVTC_ECONN, "reply receive failed");
        return UCS_OK;
    }
    if (sp == NULL)
        raw_recv_cb(NULL, UCS_OK, length, r);
    return UCS_INPROGRESS;
bad:
    /* A daemon that sends garbage cannot be trusted with the rest. */
    kvtc__conn_fail(c, KVTC_EPROTO, "malformed reply from the daemon");
    return UCS_OK;
}

static ucs_status_t reply_cb(void *arg, const void *header, size_t header_length,
                             void *data, size_t length,
                             const ucp_am_recv_param_t *param)
{
    return kvtc__reply_handle(arg, header, header_length, data, length,
                              (param->recv_attr & UCP_AM_RECV_ATTR_FLAG_RNDV) != 0);
}

static void err_cb(void *arg, ucp_ep_h ep, ucs_status_t status)
{
    kvtc_conn *c = arg;
    (void)ep;
    char why[128];
    snprintf(why, sizeof why, "%s: %s", c->info.major ? "connection lost" : "connect failed",
             ucs_status_string(status));
    kvtc__conn_fail(c, KVTC_ECONN, why);
}

/* The bulk endpoint failed. While it is being bound that only means "stay
 * on TCP" (bulk_setup sees bulk_flushed < 0); once requests travel on it,
 * it is the connection. */
static void bulk_err_cb(void *arg, ucp_ep_h ep, ucs_status_t status)
{
    kvtc_conn *c = arg;
    (void)ep;
    c->bulk_flushed = -1;
    if (c->bulk_state == KVTC__BULK_BOUND) {
        char why[128];
        snprintf(why, sizeof why, "connection lost (bulk endpoint): %s",
                 ucs_status_string(status));
        kvtc__conn_fail(c, KVTC_ECONN, why);
    }
}

/* ---- Progress ---------------------------------------------------------- */

static void expire(kvtc_conn *c)
{
    uint64_t now = 0;
    for (struct kvtc__op *op = c->inflight; op; op = op->next) {
        if (!op->deadline_ns || !(op->reply_pending || op->recv_pending))
            continue;
        if (!now)
            now = kvtc__now_ns();
        if (now < op->deadline_ns)
            continue;
        /* The reply may still come and write into the caller's buffers, so
         * the only safe way out is to tear the endpoint down. */
        op->status = KVTC_ETIMEDOUT;
        kvtc__conn_fail(c, KVTC_ECONN, "operation timed out; connection closed");
        close_ep(c, 1);
        return;
    }
}

static int run_done(kvtc_conn *c)
{
    int n = 0;
    struct kvtc__op *op;
    kvtc__checker_collect(c);
    while ((op = c->done_head)) {
        KVTC_FIFO_POP(c->done_head, c->done_tail, next);
        c->n_done--;
        op->next = NULL;
        /* Done: no rail thread writes its buffers from here on. */
        kvtc__rail_land_cancel(op);
        if (kvtc__checker_take(c, op))
            continue; /* back on the done list once hashed (checker.c) */
        if (kvtc__op_finish(op)) {
            n++; /* waits for profile fetches, which complete it */
            continue;
        }
        kvtc__trace_op(c, op);
        if (op->cb)
            op->cb(op->status, op->arg);
        kvtc__op_free(op);
        n++;
    }
    return n;
}

int kvtc_progress(kvtc_conn *c)
{
    if (!c)
        return KVTC_EINVAL;
    for (int i = 0; i < PROGRESS_BUDGET && ucp_worker_progress(c->worker); i++)
        ;
    kvtc__rails_drain(c);
    if (c->failed && (c->ep || c->bulk_ep || c->n_rails))
        close_ep(c, 1);
    expire(c);
    int n = run_done(c);
    return c->failed ? KVTC_ECONN : n;
}

int kvtc_get_fd(const kvtc_conn *c, int *fd)
{
    if (!c || !fd)
        return KVTC_EINVAL;
    *fd = c->efd;
    return 0;
}

int kvtc_arm(kvtc_conn *c)
{
    if (!c)
        return KVTC_EINVAL;
    if (c->done_head)
        return KVTC_EBUSY;
    if (kvtc__checker_ready(c))
        return KVTC_EBUSY; /* hashed gets to finish */
    if (kvtc__rails_ready(c))
        return KVTC_EBUSY; /* rail threads' events to run */
    ucs_status_t st = ucp_worker_arm(c->worker);
    if (st == UCS_ERR_BUSY)
        return KVTC_EBUSY;
    if (st != UCS_OK)
        return KVTC_EIO;
    return c->failed && !c->n_inflight ? KVTC_ECONN : 0;
}

size_t kvtc_inflight(const kvtc_conn *c)
{
    return c ? c->n_inflight + c->n_done + kvtc__checker_pending(c) : 0;
}

/* Sleep on the wakeup fd for at most ms (bounded to a slice so deadlines
 * are checked even when no event comes). */
static void sleep_fd(kvtc_conn *c, int64_t ms)
{
    if (kvtc_arm(c) != 0)
        return;
    if (ms < 0 || ms > POLL_SLICE_MS)
        ms = POLL_SLICE_MS;
    struct pollfd pfd = {.fd = c->efd, .events = POLLIN};
    (void)poll(&pfd, 1, (int)ms);
}

/* One turn of a blocking wait's polling: give the CPU to whatever else
 * is runnable on it. On loopback the kernel tends to wake the daemon
 * thread we just sent to on our own CPU (the waker's); polling without
 * yielding kept it off that CPU for our whole window (H100 host traces:
 * 10-20% of local requests reached kvtcd ~200 us late, the default
 * window, docs/perf-notes.md "Registered buffers"). Returns at once when
 * nothing else wants the CPU. */
static void spin_turn(const kvtc_conn *c)
{
    if (c->spin_yield)
        sched_yield();
}

static int64_t ms_left(uint64_t deadline_ns)
{
    if (!deadline_ns)
        return -1;
    uint64_t now = kvtc__now_ns();
    return now >= deadline_ns ? 0 : (int64_t)((deadline_ns - now) / 1000000u);
}

/* 1 when every operation in flight goes by the local path: then nothing
 * is ours to progress but their replies, each of which comes once the
 * daemon's copy is done. */
static int all_local(const kvtc_conn *c)
{
    if (!c->local_ok || !c->n_inflight)
        return 0;
    for (const struct kvtc__op *op = c->inflight; op; op = op->next)
        if (!op->local)
            return 0;
    return 1;
}

/* How long a blocking wait polls before sleeping on the fd. Polling pays
 * for itself when the next event comes within the window: a rendezvous
 * transfer is a handful of events, and sleeping and waking between each
 * of them costs more than the transfer's own steps. A wait on local ops
 * has one event per op, its reply: when such waits lately took longer
 * than the whole window (a large copy, or a daemon busy with other
 * clients' copies), polling would end before the reply anyway and only
 * take a core from the copies, so the window shrinks to a brief check.
 * Same wakeups, fewer cores burned (16 clients of 1 MiB gets each polled
 * 200 us of their ~0.7 ms wait: ~4.5 cores on the H100 host). */
static uint64_t wait_window(const kvtc_conn *c, int local)
{
    if (local && c->local_wait_ns > c->spin_ns && c->spin_ns > LOCAL_SPIN_FLOOR_NS)
        return LOCAL_SPIN_FLOOR_NS;
    return c->spin_ns;
}

/* Whether a blocking wait that began at t0 polls on at now: within its
 * window, or while rail threads move its bytes. Their completions reach
 * this thread through the fd, and sleeping through the transfer puts a
 * wakeup (~40 us on the H200 host) after its last byte, where a
 * connection without rail threads moves the bytes itself and is awake. */
static int keep_polling(const kvtc_conn *c, uint64_t t0, uint64_t now, uint64_t spin_until)
{
    return now < spin_until || (now - t0 < RAIL_WAIT_SPIN_NS && kvtc__rails_busy(c));
}

static void note_local_wait(kvtc_conn *c, uint64_t t0)
{
    uint64_t d = kvtc__now_ns() - t0;
    c->local_wait_ns = c->local_wait_ns ? c->local_wait_ns - c->local_wait_ns / 8 + d / 8 : d;
}

int kvtc__wait_flag(kvtc_conn *c, const int *flag, uint64_t deadline_ns)
{
    uint64_t t0 = kvtc__now_ns();
    int local = all_local(c);
    uint64_t window = wait_window(c, local);
    uint64_t spin_until = t0 + window;
    for (;;) {
        kvtc_progress(c);
        if (*flag) {
            if (local)
                note_local_wait(c, t0);
            return 0;
        }
        uint64_t now = kvtc__now_ns();
        if (deadline_ns && now >= deadline_ns)
            return KVTC_ETIMEDOUT;
        if (keep_polling(c, t0, now, spin_until)) {
            spin_turn(c);
            continue;
        }
        sleep_fd(c, ms_left(deadline_ns));
        spin_until = kvtc__now_ns() + window;
    }
}

int kvtc_wait_all(kvtc_conn *c, int timeout_ms)
{
    if (!c)
        return KVTC_EINVAL;
    uint64_t deadline = timeout_ms < 0 ? 0 : deadline_after((uint32_t)timeout_ms);
    if (timeout_ms == 0)
        deadline = kvtc__now_ns();
    uint64_t t0 = kvtc__now_ns();
    int local = timeout_ms != 0 && all_local(c);
    uint64_t window = wait_window(c, local);
    uint64_t spin_until = t0 + window;
    for (;;) {
        kvtc_progress(c);
        if (!kvtc_inflight(c)) {
            if (local)
                note_local_wait(c, t0);
            return 0;
        }
        uint64_t now = kvtc__now_ns();
        if (deadline && now >= deadline)
            return KVTC_ETIMEDOUT;
        if (keep_polling(c, t0, now, spin_until)) {
            spin_turn(c);
            continue;
        }
        sleep_fd(c, ms_left(deadline));
        spin_until = kvtc__now_ns() + window;
    }
}

/* ---- Connect / disconnect ------------------------------------------------ */

static void close_cb(void *request, ucs_status_t status, void *user_data)
{
    (void)request, (void)status, (void)user_data;
}

/* Close one endpoint. A forced close also completes every request still
 * posted on it, which is what frees the caller's buffers after a failure. */
static void close_one(ucp_worker_h w, ucp_ep_h *epp, int force)
{
    if (!*epp)
        return;
    ucp_request_param_t prm = {
        .op_attr_mask = UCP_OP_ATTR_FIELD_FLAGS | UCP_OP_ATTR_FIELD_CALLBACK,
        .flags = force ? UCP_EP_CLOSE_FLAG_FORCE : 0,
        .cb.send = close_cb,
    };
    ucs_status_ptr_t sp = ucp_ep_close_nbx(*epp, &prm);
    *epp = NULL;
    if (!UCS_PTR_IS_PTR(sp))
        return;
    /* Forced closes finish within a few progress calls; bound it anyway. */
    uint64_t end = kvtc__now_ns() + (uint64_t)CLOSE_GRACE_MS * 1000000ull;
    while (ucp_request_check_status(sp) == UCS_INPROGRESS && kvtc__now_ns() < end)
        ucp_worker_progress(w); /* a rail's: its lock orders us with its thread */
    if (ucp_request_check_status(sp) == UCS_INPROGRESS && !force) {
        /* A graceful close can hang on a dead peer: the worker teardown
         * will reclaim it. */
    }
    ucp_request_free(sp);
}

/* Close every endpoint (the rails and the bulk one first: their transfers
 * are the ones that may touch the caller's buffers directly). */
static void close_ep(kvtc_conn *c, int force)
{
    for (uint32_t i = 0; i < c->n_rails; i++)
        close_one(c->rail_thr[i] ? kvtc__rail_worker(c->rail_thr[i]) : c->worker,
                  &c->rail_ep[i], force);
    c->n_rails = 0;
    close_one(c->worker, &c->bulk_ep, force);
    close_one(c->worker, &c->ep, force);
}

/* "host:port", "[v6]:port", "host" -> socket address. */
static int resolve(kvtc_conn *c, const char *server, struct sockaddr_storage *ss,
                   socklen_t *len)
{
    char host[256];
    const char *port = DEFAULT_PORT;
    size_t n = strlen(server);
    if (n == 0 || n >= sizeof host) {
        kvtc__set_error(c, "bad server address '%s'", server);
        return KVTC_EINVAL;
    }
    memcpy(host, server, n + 1);
    char *h = host;
    if (h[0] == '[') {
        char *end = strchr(h, ']');
        if (!end || (end[1] != '\0' && end[1] != ':')) {
            kvtc__set_error(c, "bad server address '%s'", server);
            return KVTC_EINVAL;
        }
        *end = '\0';
        if (end[1] == ':')
            port = end + 2;
        h++;
    } else {
        char *colon = strrchr(h, ':');
        if (colon && strchr(h, ':') == colon) {
            *colon = '\0';
            port = colon + 1;
        }
    }
    char *endp;
    long pn = strtol(port, &endp, 10);
    if (*h == '\0' || *port == '\0' || *endp != '\0' || pn < 1 || pn > 65535) {
        kvtc__set_error(c, "bad server address '%s' (want HOST:PORT)", server);
        return KVTC_EINVAL;
    }
    struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM,
                             .ai_flags = AI_NUMERICSERV};
    struct addrinfo *ai = NULL;
    int g = getaddrinfo(h, port, &hints, &ai);
    if (g || !ai) {
        kvtc__set_error(c, "cannot resolve '%s': %s", h, gai_strerror(g));
        return KVTC_ECONN;
    }
    memcpy(ss, ai->ai_addr, ai->ai_addrlen);
    *len = ai->ai_addrlen;
    freeaddrinfo(ai);
    return 0;
}

static void flush_cb(void *request, ucs_status_t status, void *user_data)
{
    kvtc_conn *c = user_data;
    c->flushed = status == UCS_OK ? 1 : -1;
    ucp_request_free(request);
}

ucs_status_t kvtc__set_reply_handler(ucp_worker_h w, ucp_am_recv_callback_t cb, void *arg)
{
    ucp_am_handler_param_t hp = {
        .field_mask = UCP_AM_HANDLER_PARAM_FIELD_ID | UCP_AM_HANDLER_PARAM_FIELD_CB |
                      UCP_AM_HANDLER_PARAM_FIELD_ARG | UCP_AM_HANDLER_PARAM_FIELD_FLAGS,
        .id = KVTC_WIRE_AM_REPLY,
        .flags = UCP_AM_FLAG_WHOLE_MSG,
        .cb = cb,
        .arg = arg,
    };
    return ucp_worker_set_am_recv_handler(w, &hp);
}

static int ucx_setup(kvtc_conn *c)
{
    ucp_config_t *cfg = NULL;
    if (ucp_config_read(NULL, NULL, &cfg) != UCS_OK) {
        kvtc__set_error(c, "ucp_config_read failed");
        return KVTC_EIO;
    }
    /* The environment wins; see KVTC_WIRE_RNDV_THRESH for why. Best
     * effort: UCX's default threshold still works, only slower. */
    if (!getenv("UCX_RNDV_THRESH"))
        (void)ucp_config_modify(cfg, "RNDV_THRESH", KVTC_WIRE_RNDV_THRESH);
    ucp_params_t p = {
        .field_mask = UCP_PARAM_FIELD_FEATURES | UCP_PARAM_FIELD_NAME |
                      UCP_PARAM_FIELD_MT_WORKERS_SHARED,
        .features = UCP_FEATURE_AM | UCP_FEATURE_WAKEUP,
        .name = "libkvtc",
        .mt_workers_shared = 1, /* rail workers progress on threads of their own */
    };
    ucs_status_t st = ucp_init(&p, cfg, &c->ctx);
    ucp_config_release(cfg);
    if (st != UCS_OK) {
        kvtc__set_error(c, "ucp_init: %s", ucs_status_string(st));
        return KVTC_EIO;
    }
    ucp_context_attr_t ca = {.field_mask = UCP_ATTR_FIELD_MEMORY_TYPES};
    if (ucp_context_query(c->ctx, &ca) == UCS_OK)
        c->ucx_cuda = (ca.memory_types & UCS_BIT(UCS_MEMORY_TYPE_CUDA)) != 0;
    c->info.device_memory = !kvtc__cuda_usable() ? KVTC_DEVICE_MEMORY_UNSUPPORTED
                            : c->ucx_cuda ? KVTC_DEVICE_MEMORY_DIRECT
                                          : KVTC_DEVICE_MEMORY_STAGED;
    ucp_worker_params_t wp = {
        .field_mask = UCP_WORKER_PARAM_FIELD_THREAD_MODE,
        .thread_mode = UCS_THREAD_MODE_SINGLE,
    };
    if ((st = ucp_worker_create(c->ctx, &wp, &c->worker)) != UCS_OK) {
        kvtc__set_error(c, "ucp_worker_create: %s", ucs_status_string(st));
        return KVTC_EIO;
    }
    ucp_worker_attr_t wa = {.field_mask = UCP_WORKER_ATTR_FIELD_MAX_AM_HEADER};
    if ((st = ucp_worker_query(c->worker, &wa)) != UCS_OK) {
        kvtc__set_error(c, "ucp_worker_query: %s", ucs_status_string(st));
        return KVTC_EIO;
    }
    c->max_am_header = wa.max_am_header;
    if ((st = ucp_worker_get_efd(c->worker, &c->efd)) != UCS_OK) {
        kvtc__set_error(c, "ucp_worker_get_efd: %s", ucs_status_string(st));
        return KVTC_EIO;
    }
    if ((st = kvtc__set_reply_handler(c->worker, reply_cb, c)) != UCS_OK) {
        kvtc__set_error(c, "set_am_recv_handler: %s", ucs_status_string(st));
        return KVTC_EIO;
    }
    return 0;
}

static int hello(kvtc_conn *c, const kvtc_conn_params *params, uint64_t deadline);
static int bulk_wanted(const kvtc_conn_params *params, const struct sockaddr_storage *ss);
static int bulk_setup(kvtc_conn *c, uint64_t deadline);
static int rails_wanted(const kvtc_conn_params *params);
static int rails_setup(kvtc_conn *c, const kvtc_conn_params *params, uint64_t deadline);

int kvtc_connect(const char *server, const kvtc_conn_params *params,
                 kvtc_conn **out)
{
    if (!out)
        return KVTC_EINVAL;
    *out = NULL;
    connect_error[0] = '\0';
    kvtc_conn *c = calloc(1, sizeof *c);
    if (!c)
        return KVTC_ENOMEM;
    c->efd = -1;
    c->local_fd = -1;
    uint64_t fm = params ? params->field_mask : 0;
    uint32_t connect_ms = (fm & KVTC_CONN_PARAM_FIELD_CONNECT_TIMEOUT)
                              ? params->connect_timeout_ms : DEFAULT_CONNECT_TIMEOUT_MS;
    c->op_timeout_ms = (fm & KVTC_CONN_PARAM_FIELD_OP_TIMEOUT) ? params->op_timeout_ms
                                                               : DEFAULT_OP_TIMEOUT_MS;
    c->spin_ns = (uint64_t)((fm & KVTC_CONN_PARAM_FIELD_SPIN) ? params->spin_us
                                                              : DEFAULT_SPIN_US) * 1000u;
    /* The checker thread (checker.c): on unless the caller or
     * KVTC_CHECK_THREAD=0 says no. */
    const char *ct = getenv("KVTC_CHECK_THREAD");
    c->check_thread = (fm & KVTC_CONN_PARAM_FIELD_CHECK_THREAD) ? params->check_thread != KVTC_CHECK_INLINE
                                                               : !(ct && !strcmp(ct, "0"));
    /* KVTC_SPIN_YIELD=0: poll without yielding (for measuring). */
    const char *yield = getenv("KVTC_SPIN_YIELD");
    c->spin_yield = !(yield && !strcmp(yield, "0"));
    /* KVTC_UCX_CHECK=daemon: kvtcd verifies a get's hits before it sends
     * them over UCX (we check them on arrival either way). */
    const char *uck = getenv("KVTC_UCX_CHECK");
    c->ucx_daemon_check = uck && !strcmp(uck, "daemon");
    uint64_t deadline = deadline_after(connect_ms);
    struct sockaddr_storage ss;
    socklen_t sslen = 0;
    int rc = resolve(c, server ? server : KVTC_DEFAULT_SERVER, &ss, &sslen);
    if (rc)
        goto fail;
    c->server_ss = ss;
    c->server_sslen = sslen;
    if ((rc = ucx_setup(c)))
        goto fail;

    ucp_ep_params_t ep = {
        .field_mask = UCP_EP_PARAM_FIELD_FLAGS | UCP_EP_PARAM_FIELD_SOCK_ADDR |
                      UCP_EP_PARAM_FIELD_ERR_HANDLING_MODE |
                      UCP_EP_PARAM_FIELD_ERR_HANDLER,
        .flags = UCP_EP_PARAMS_FLAGS_CLIENT_SERVER,
        .sockaddr = {.addr = (struct sockaddr *)&ss, .addrlen = sslen},
        .err_mode = UCP_ERR_HANDLING_MODE_PEER,
        .err_handler = {.cb = err_cb, .arg = c},
    };
    ucs_status_t st = ucp_ep_create(c->worker, &ep, &c->ep);
    if (st != UCS_OK) {
        c->ep = NULL;
        kvtc__set_error(c, "connect to %s: %s", server ? server : KVTC_DEFAULT_SERVER,
                        ucs_status_string(st));
        rc = KVTC_ECONN;
        goto fail;
    }
    /* UCX 1.13 can crash when a new client endpoint sends before wire-up
     * ends (shared memory): flush first, send only once it completed. */
    ucp_request_param_t fp = {
        .op_attr_mask = UCP_OP_ATTR_FIELD_CALLBACK | UCP_OP_ATTR_FIELD_USER_DATA,
        .cb.send = flush_cb,
        .user_data = c,
    };
    ucs_status_ptr_t sp = ucp_ep_flush_nbx(c->ep, &fp);
    if (UCS_PTR_IS_ERR(sp))
        c->flushed = -1;
    else if (sp == NULL)
        c->flushed = 1;
    int64_t t;
    while (!c->flushed && !c->failed && (t = ms_left(deadline)) != 0) {
        kvtc_progress(c);
        if (!c->flushed && !c->failed)
            sleep_fd(c, t);
    }
    if (c->flushed != 1) {
        if (c->failed || c->flushed < 0) {
            /* Keep the endpoint error's reason ("connection lost: ...") if
             * there was one; the caller names the address. */
            if (!c->last_error[0])
                kvtc__set_error(c, "connection refused or unreachable");
            rc = KVTC_ECONN;
        } else {
            kvtc__set_error(c, "connect to %s timed out", server ? server : KVTC_DEFAULT_SERVER);
            rc = KVTC_ETIMEDOUT;
        }
        goto fail;
    }
    if ((rc = hello(c, params, deadline)))
        goto fail;
    if (c->peer_addr && bulk_wanted(params, &ss) && (rc = bulk_setup(c, deadline)))
        goto fail;
    if (kvtc__local_wanted(params)) {
        /* Smallest payload worth a copy by the daemon's thread pool
         * (KVTC_LOCAL_MIN bytes); below it UCX's eager send is as fast. */
        const char *m = getenv("KVTC_LOCAL_MIN");
        c->local_min = m ? (size_t)strtoull(m, NULL, 0) : KVTC__LOCAL_MIN_DEFAULT;
        const char *v = getenv("KVTC_LOCAL_VERIFY");
        c->local_verify = v && strcmp(v, "0") != 0;
        c->local_client_check = kvtc__local_check_wanted();
        kvtc__local_setup(c, deadline);
    }
    if (c->n_rail_port && !c->local_ok && rails_wanted(params) &&
        (rc = rails_setup(c, params, deadline)))
        goto fail;
    kvtc__trace_open(c);
    *out = c;
    return 0;
fail:
    snprintf(connect_error, sizeof connect_error, "%s",
             c->last_error[0] ? c->last_error : kvtc_strerror(rc));
    kvtc_disconnect(c);
    return rc;
}

void kvtc_disconnect(kvtc_conn *c)
{
    if (!c)
        return;
    if (c->worker) {
        /* The checker reads the buffers of the puts and gets it holds:
         * let it finish. */
        kvtc__checker_stop(c);
        if (c->n_inflight)
            kvtc__conn_fail(c, KVTC_ECANCELED, "disconnected");
        /* Always forced: every operation has completed (or was canceled
         * above), so nothing is left to flush, and a graceful close that
         * waits on a peer that never answers leaves requests that
         * ucp_worker_destroy treats as a bug and aborts on. The daemon
         * sees the disconnect either way. */
        if (c->ep || c->bulk_ep || c->n_rails)
            close_ep(c, 1);
        /* Sends and receives posted on the closed endpoint complete now;
         * bounded, because the worker teardown reclaims any stragglers. */
        uint64_t end = kvtc__now_ns() + (uint64_t)CLOSE_GRACE_MS * 1000000ull;
        while ((c->n_inflight || c->raw_pending) && kvtc__now_ns() < end) {
            ucp_worker_progress(c->worker);
            kvtc__rails_drain(c);
        }
        kvtc__rails_stop(c);
        kvtc__rails_drain(c);
        run_done(c);
        kvtc__rails_free(c); /* their workers, before the one they signal */
        ucp_worker_destroy(c->worker);
        /* A request UCX never completed is gone with the worker, and with
         * it any access to the caller's buffers: finish its op here so the
         * callback still runs exactly once. */
        while (c->inflight) {
            struct kvtc__op *op = c->inflight;
            if (!op->status)
                op->status = KVTC_ECANCELED;
            op->send_pending = op->recv_pending = op->reply_pending = 0;
            kvtc__op_maybe_done(op);
        }
        run_done(c);
    }
    if (c->ctx)
        ucp_cleanup(c->ctx);
    kvtc__profile_cache_free(c);
    kvtc__local_free(c);
    kvtc__mem_free_all(c); /* after the local path closed: kvtcd let go */
    kvtc__trace_close(c);
    free(c->peer_addr);
    free(c);
}

/* ---- Hello --------------------------------------------------------------- */

struct sync_wait {
    int done;
    int status;
};

static void sync_cb(int status, void *arg)
{
    struct sync_wait *w = arg;
    w->status = status;
    w->done = 1;
}

static int hello(kvtc_conn *c, const kvtc_conn_params *params, uint64_t deadline)
{
    uint64_t fm = params ? params->field_mask : 0;
    Kvtc__Wire__Hello h = KVTC__WIRE__HELLO__INIT;
    h.major = KVTC_PROTO_MAJOR;
    h.minor = KVTC_PROTO_MINOR;
    h.tenant = (fm & KVTC_CONN_PARAM_FIELD_TENANT) ? (char *)params->tenant : NULL;
    h.token = (fm & KVTC_CONN_PARAM_FIELD_TOKEN) ? (char *)params->token : NULL;
    h.client_name = (fm & KVTC_CONN_PARAM_FIELD_CLIENT_NAME) ? (char *)params->client_name
                                                            : "libkvtc";
    const char *s[] = {h.tenant, h.token, h.client_name};
    for (size_t i = 0; i < 3; i++)
        if (s[i] && strlen(s[i]) > KVTC_WIRE_MAX_NAME) {
            kvtc__set_error(c, "tenant, token or client name longer than %u bytes",
                            KVTC_WIRE_MAX_NAME);
            return KVTC_EINVAL;
        }
    Kvtc__Wire__Request req = KVTC__WIRE__REQUEST__INIT;
    req.body_case = KVTC__WIRE__REQUEST__BODY_HELLO;
    req.hello = &h;

    struct sync_wait w = {0};
    kvtc_op_params op = {.field_mask = KVTC_OP_PARAM_FIELD_CALLBACK, .cb = sync_cb, .arg = &w};
    struct kvtc__op *o = kvtc__op_new(c, KVTC__OP_HELLO, &op);
    if (!o)
        return KVTC_ENOMEM;
    o->deadline_ns = deadline;
    int rc = kvtc__op_send(c, o, &req, NULL, 0, ucp_dt_make_contig(1), 0);
    if (rc) {
        kvtc__op_free(o);
        return rc;
    }
    kvtc__wait_flag(c, &w.done, 0);
    return w.status;
}

/* ---- The bulk endpoint ---------------------------------------------------
 *
 * UCX gives a client/server (sockaddr) endpoint a TCP lane only, whatever
 * UCX_TLS allows; an endpoint created from the daemon's worker address gets
 * every transport both workers have (shared memory and CMA on one host:
 * several times TCP's bandwidth). So after hello the client opens one to
 * HelloReply.worker_address and binds it to its session with a Hello
 * {bind_session, bind_token} sent on it; from then on every request goes
 * there and the daemon answers there. The sockaddr endpoint stays open: the
 * daemon watches it for this client's death. */

/* Loopback or one of this host's own addresses. */
static int addr_is_local(const struct sockaddr_storage *ss)
{
    if (ss->ss_family == AF_INET) {
        const struct sockaddr_in *in = (const struct sockaddr_in *)ss;
        if ((ntohl(in->sin_addr.s_addr) >> 24) == 127)
            return 1;
    } else if (ss->ss_family == AF_INET6) {
        const struct sockaddr_in6 *in6 = (const struct sockaddr_in6 *)ss;
        if (IN6_IS_ADDR_LOOPBACK(&in6->sin6_addr))
            return 1;
        if (IN6_IS_ADDR_V4MAPPED(&in6->sin6_addr) && in6->sin6_addr.s6_addr[12] == 127)
            return 1;
    } else {
        return 0;
    }
    struct ifaddrs *ifs = NULL;
    if (getifaddrs(&ifs) != 0)
        return 0;
    int local = 0;
    for (struct ifaddrs *i = ifs; i && !local; i = i->ifa_next) {
        if (!i->ifa_addr || i->ifa_addr->sa_family != ss->ss_family)
            continue;
        if (ss->ss_family == AF_INET)
            local = ((const struct sockaddr_in *)i->ifa_addr)->sin_addr.s_addr ==
                    ((const struct sockaddr_in *)ss)->sin_addr.s_addr;
        else
            local = !memcmp(&((const struct sockaddr_in6 *)i->ifa_addr)->sin6_addr,
                            &((const struct sockaddr_in6 *)ss)->sin6_addr,
                            sizeof(struct in6_addr));
    }
    freeifaddrs(ifs);
    return local;
}

static int bulk_wanted(const kvtc_conn_params *params, const struct sockaddr_storage *ss)
{
    uint32_t mode = KVTC_BULK_OFF;
    if (params && (params->field_mask & KVTC_CONN_PARAM_FIELD_BULK)) {
        mode = params->bulk;
    } else {
        const char *e = getenv("KVTC_BULK_EP");
        if (e && (!strcmp(e, "auto") || !strcmp(e, "on") || !strcmp(e, "1")))
            mode = KVTC_BULK_AUTO;
        else if (e && !strcmp(e, "always"))
            mode = KVTC_BULK_ALWAYS;
    }
    if (mode == KVTC_BULK_OFF)
        return 0;
    return mode == KVTC_BULK_ALWAYS || addr_is_local(ss);
}

static void ep_flush_cb(void *request, ucs_status_t status, void *user_data)
{
    int *flushed = user_data;
    if (*flushed == 0)
        *flushed = status == UCS_OK ? 1 : -1;
    ucp_request_free(request);
}

/* A rail with a thread: its flush ends on that thread. */
static void rail_flush_done(void *request, ucs_status_t status, size_t length, void *user_data)
{
    kvtc_conn *c = user_data;
    (void)length;
    ep_flush_cb(request, status, &c->rail_flushed);
}

static void rail_flush_cb(void *request, ucs_status_t status, void *user_data)
{
    kvtc__rail_defer(user_data, rail_flush_done, request, status, 0, user_data);
}

/* Progress until *flag is set, *flushed (the endpoint's state) went
 * negative, the connection failed or the deadline passed. */
static void ep_wait(kvtc_conn *c, const int *flag, const int *flushed, uint64_t deadline)
{
    int64_t t;
    while (!*flag && *flushed >= 0 && !c->failed && (t = ms_left(deadline)) != 0) {
        kvtc_progress(c);
        if (!*flag && *flushed >= 0 && !c->failed)
            sleep_fd(c, t > 10 ? 10 : t);
    }
}

/* Open an endpoint (ep: where to, and an error handler that sets *flushed
 * to -1) and bind it to our session with a Hello{bind_session,
 * bind_token} sent on it. 0: bound, in *epp. 1: not bound, its own failure
 * (closed): the connection goes on without it. < 0: the connection failed
 * or the daemon did not answer in time (it may have bound the endpoint, so
 * going on without it is not safe). */
static int bind_ep(kvtc_conn *c, const ucp_ep_params_t *ep, int *flushed, ucp_ep_h *epp,
                   const char *what, uint64_t deadline, struct kvtc__rail *rail)
{
    *flushed = 0;
    ucp_worker_h worker = rail ? kvtc__rail_worker(rail) : c->worker;
    if (ucp_ep_create(worker, ep, epp) != UCS_OK) {
        *epp = NULL;
        return 1;
    }
    /* As for the first endpoint: no send before wire-up ends. */
    ucp_request_param_t fp = {
        .op_attr_mask = UCP_OP_ATTR_FIELD_CALLBACK | UCP_OP_ATTR_FIELD_USER_DATA,
        .cb.send = rail ? rail_flush_cb : ep_flush_cb,
        .user_data = rail ? (void *)c : (void *)flushed,
    };
    ucs_status_ptr_t sp = ucp_ep_flush_nbx(*epp, &fp);
    if (UCS_PTR_IS_ERR(sp))
        *flushed = -1;
    else if (sp == NULL)
        *flushed = 1;
    else if (rail)
        kvtc__rail_kick(rail, 1);
    ep_wait(c, flushed, flushed, deadline); /* until 1 or -1 */
    int rc = 0;
    struct sync_wait w = {0};
    struct kvtc__op *o = NULL;
    if (*flushed != 1)
        goto fallback;
    Kvtc__Wire__Hello h = KVTC__WIRE__HELLO__INIT;
    h.major = KVTC_PROTO_MAJOR;
    h.minor = KVTC_PROTO_MINOR;
    h.has_bind_session = h.has_bind_token = 1;
    h.bind_session = c->info.session_id;
    h.bind_token = c->bind_token;
    Kvtc__Wire__Request req = KVTC__WIRE__REQUEST__INIT;
    req.body_case = KVTC__WIRE__REQUEST__BODY_HELLO;
    req.hello = &h;
    kvtc_op_params op = {.field_mask = KVTC_OP_PARAM_FIELD_CALLBACK, .cb = sync_cb, .arg = &w};
    /* No deadline of its own: an expired op fails the whole connection,
     * and this one may only fail the endpoint. */
    o = kvtc__op_new(c, KVTC__OP_BIND, &op);
    if (!o)
        goto fallback;
    o->deadline_ns = 0;
    o->ep = *epp;
    o->rail = rail;
    if (kvtc__op_send(c, o, &req, NULL, 0, ucp_dt_make_contig(1), 0)) {
        kvtc__op_free(o);
        o = NULL;
        goto fallback;
    }
    ep_wait(c, &w.done, flushed, deadline);
    if (w.done && w.status == 0 && *flushed >= 0)
        return 0;
    if (c->failed) {
        rc = c->failed;
    } else if (!w.done && *flushed >= 0) {
        kvtc__set_error(c, "binding %s timed out", what);
        rc = KVTC_ETIMEDOUT;
    }
fallback:
    /* The forced close completes the bind's send if it is still posted
     * (on a rail thread: its completion is an event, run here). */
    close_one(worker, epp, 1);
    kvtc__rails_drain(c);
    if (o && !w.done) {
        for (struct kvtc__op *x = c->inflight; x; x = x->next)
            if (x == o) {
                o->status = KVTC_ECONN;
                o->send_pending = o->reply_pending = o->recv_pending = 0;
                kvtc__op_maybe_done(o);
                break;
            }
        run_done(c);
    }
    *flushed = 0;
    if (rc)
        return rc;
    c->last_error[0] = '\0';
    return 1;
}

/* Set up and bind the bulk endpoint; 0 also when it stays unbound. */
static int bulk_setup(kvtc_conn *c, uint64_t deadline)
{
    ucp_ep_params_t ep = {
        .field_mask = UCP_EP_PARAM_FIELD_REMOTE_ADDRESS | UCP_EP_PARAM_FIELD_ERR_HANDLING_MODE |
                      UCP_EP_PARAM_FIELD_ERR_HANDLER,
        .address = c->peer_addr,
        .err_mode = UCP_ERR_HANDLING_MODE_PEER,
        .err_handler = {.cb = bulk_err_cb, .arg = c},
    };
    c->bulk_state = KVTC__BULK_BINDING;
    int rc = bind_ep(c, &ep, &c->bulk_flushed, &c->bulk_ep, "the bulk endpoint", deadline, NULL);
    if (rc == 0) {
        c->bulk_state = KVTC__BULK_BOUND;
        c->info.bulk_endpoint = 1;
        if (getenv("KVTC_EP_INFO")) /* which lanes each endpoint got */
            ucp_ep_print_info(c->ep, stderr), ucp_ep_print_info(c->bulk_ep, stderr);
        return 0;
    }
    c->bulk_state = KVTC__BULK_NONE;
    return rc < 0 ? rc : 0;
}

/* ---- Rails ------------------------------------------------------------------
 *
 * A daemon with rails (UCX workers on threads of their own, each with a
 * listener of its own on the daemon's host; protocol 1.4) lists their
 * ports in HelloReply. Over UCX payloads every byte a
 * worker moves is copied by the thread that progresses it, and one thread
 * is the bound of a tcp stream; so the client binds an endpoint to each
 * rail, as the bulk endpoint is bound, and sends its large puts and gets
 * there round robin (kvtc__rail_pick); kvtcd answers each on the
 * session's least loaded rail. Not with the local path (bytes do not
 * travel on UCX then), nor with KVTC_RAILS=0. Once bound, a rail failing
 * fails the connection. The same bound holds for our thread, so each rail
 * endpoint gets a worker and a thread of its own where they pay
 * (rail_threads.c).
 *
 * Which requests: from 1 MiB (KVTC_RAIL_MIN), and where the rails have
 * threads, from 256 KiB those behind others in flight. A pipeline of
 * 256 KiB gets then spreads over the tcp streams and the rail threads copy
 * the replies in parallel (2.3-3x the first endpoint's rate on the H200
 * host), while a lone one keeps the first endpoint: on a rail it pays the
 * rails' hops (1.3-1.5 GB/s at one in flight against 2.1-3.1;
 * docs/perf-notes.md, "Rail threads"). */

static int rails_wanted(const kvtc_conn_params *params)
{
    if (params && (params->field_mask & KVTC_CONN_PARAM_FIELD_RAILS))
        return params->rails != KVTC_RAILS_OFF;
    const char *e = getenv("KVTC_RAILS");
    return !e || (strcmp(e, "0") && strcmp(e, "off"));
}

void kvtc__rail_ep_failed(kvtc_conn *c, ucp_ep_h ep, ucs_status_t status)
{
    for (uint32_t i = 0; i < c->n_rails; i++)
        if (c->rail_ep[i] == ep) {
            char why[128];
            snprintf(why, sizeof why, "connection lost (rail %u): %s", i,
                     ucs_status_string(status));
            kvtc__conn_fail(c, KVTC_ECONN, why);
            return;
        }
    c->rail_flushed = -1; /* the one being bound */
}

static void rail_err_cb(void *arg, ucp_ep_h ep, ucs_status_t status)
{
    kvtc__rail_ep_failed(arg, ep, status);
}

/* Bind a rail for each port (the daemon's host), in order, until one
 * cannot be bound. */
static int rails_setup(kvtc_conn *c, const kvtc_conn_params *params, uint64_t deadline)
{
    c->rail_thread_quota = kvtc__rail_threads_reserve(params, c->n_rail_port);
    int threads = c->rail_thread_quota > 0;
    for (uint32_t i = 0; i < c->n_rail_port; i++) {
        struct kvtc__rail *rail = NULL;
        if (threads && kvtc__rail_start(c, &rail) != 0)
            threads = 0; /* the rest stay on our thread */
        struct sockaddr_storage ss = c->server_ss;
        if (ss.ss_family == AF_INET6)
            ((struct sockaddr_in6 *)&ss)->sin6_port = htons(c->rail_port[i]);
        else
            ((struct sockaddr_in *)&ss)->sin_port = htons(c->rail_port[i]);
        ucp_ep_params_t p = {
            .field_mask = UCP_EP_PARAM_FIELD_FLAGS | UCP_EP_PARAM_FIELD_SOCK_ADDR |
                          UCP_EP_PARAM_FIELD_ERR_HANDLING_MODE | UCP_EP_PARAM_FIELD_ERR_HANDLER,
            .flags = UCP_EP_PARAMS_FLAGS_CLIENT_SERVER,
            .sockaddr = {.addr = (struct sockaddr *)&ss, .addrlen = c->server_sslen},
            .err_mode = UCP_ERR_HANDLING_MODE_PEER,
            .err_handler = {.cb = rail ? kvtc__rail_err_handler : rail_err_cb,
                            .arg = rail ? (void *)rail : (void *)c},
        };
        ucp_ep_h ep = NULL;
        int rc = bind_ep(c, &p, &c->rail_flushed, &ep, "a rail", deadline, rail);
        if (rc != 0) {
            kvtc__rail_release(c, rail);
            if (rc < 0)
                return rc;
            break;
        }
        c->rail_thr[c->n_rails] = rail;
        c->info.rail_threads += rail != NULL;
        c->rail_ep[c->n_rails++] = ep;
        if (getenv("KVTC_EP_INFO")) /* which lanes each endpoint got */
            ucp_ep_print_info(ep, stderr);
    }
    c->info.rails = c->n_rails;
    kvtc__rail_threads_unreserve(c->rail_thread_quota - c->info.rail_threads);
    c->rail_thread_quota = c->info.rail_threads;
    /* Clients that start together would take the same rail for their
     * first, second, ... request: spread them by session. */
    c->rail_next = (uint32_t)c->info.session_id;
    const char *m = getenv("KVTC_RAIL_MIN");
    c->rail_min = m && *m ? (size_t)strtoull(m, NULL, 0) : KVTC_WIRE_RNDV_THRESH_BYTES;
    c->rail_pipe_min = (m && *m) || !c->info.rail_threads ? 0 : RAIL_PIPE_MIN;
    const char *land = getenv("KVTC_RAIL_LAND"); /* 0: measure without */
    c->rail_land = !(land && !strcmp(land, "0"));
    return 0;
}

void kvtc__rail_pick(kvtc_conn *c, struct kvtc__op *op, size_t bytes)
{
    int behind = c->n_inflight > 0 && c->rail_pipe_min && bytes >= c->rail_pipe_min;
    if (!c->n_rails || (bytes < c->rail_min && !behind))
        return;
    uint32_t i = c->rail_next++ % c->n_rails;
    op->ep = c->rail_ep[i];
    op->rail = c->rail_thr[i];
    op->stream = 1 + i;
}
