/* transport.c - UCX for kvtcd: context, worker driven from the libuv loop,
 * sockaddr listener, one session per endpoint, AM receive, reply sends.
 *
 * Driving UCP from libuv (DESIGN.md section 6): a uv_poll on the worker's
 * event fd and a uv_prepare hook both run "progress until 0, then
 * ucp_worker_arm; on UCS_ERR_BUSY repeat". The loop is bounded; when the
 * bound is hit a uv_idle keeps the loop spinning (without blocking in
 * epoll) so one burst cannot starve timers, signals and the admin port. */
#include <arpa/inet.h>
#include <netdb.h>
#include <stdarg.h>
#include <stdio.h>
#include <sched.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>

#include "fifo.h"
#include "kvtc_errors.h"
#include "local_path.h"
#include "log.h"
#include "rails.h"
#include "server.h"

#define PROGRESS_BOUND 1024 /* ucp_worker_progress calls per drive */
#define ARM_ROUNDS 16       /* BUSY re-tries per drive */
#define TICK_MS 50          /* fallback progress period */
#define SPIN_MS 100         /* busy-poll this long after the last event */

/* ---- sessions and ops ---------------------------------------------------- */

void kvtcd_session_unref(kvtcd_session *s)
{
    if (s && --s->refs == 0)
        free(s);
}

kvtcd_op *kvtcd_op_new(kvtcd_server *srv, int kind, kvtcd_session *s)
{
    kvtcd_op *op = calloc(1, sizeof *op);
    if (!op)
        return NULL;
    op->kind = kind;
    op->sess = s;
    s->refs++;
    op->next = srv->ops;
    if (srv->ops)
        srv->ops->prev = op;
    srv->ops = op;
    srv->n_ops++;
    return op;
}

void kvtcd_op_free(kvtcd_op *op)
{
    if (!op)
        return;
    kvtcd_server *srv = op->sess->srv;
    if (op->prev)
        op->prev->next = op->next;
    else
        srv->ops = op->next;
    if (op->next)
        op->next->prev = op->prev;
    srv->n_ops--;
    if (op->ctx_free)
        op->ctx_free(op->ctx);
    kvtcd_hashjob_fini(&op->hash);
    free(op->tmpl);
    free(op->has_checksum);
    kvtcd_blob_unref(op->blob);
    free(op->msg_buf);
    srv->overflow_bytes -= op->overflow;
    free(op->header);
    for (uint32_t i = 0; i < op->n_holds; i++)
        kvtcd_blob_unref(op->holds[i]);
    free(op->holds);
    free(op->iov);
    free(op->lcopy);
    free(op->lremote);
    kvtcd_session_unref(op->sess);
    free(op);
}

static void session_unlink(kvtcd_server *srv, kvtcd_session *s)
{
    if (s->prev)
        s->prev->next = s->next;
    else
        srv->sessions = s->next;
    if (s->next)
        s->next->prev = s->prev;
    s->prev = s->next = NULL;
    srv->n_sessions--;
}

static void drop_bulk_queue(kvtcd_session *s);

/* Mark s closed and queue its endpoint for closing from the drive loop:
 * UCX callbacks (where failures are reported) must not close endpoints. */
static void session_fail(kvtcd_session *s, const char *why)
{
    kvtcd_server *srv = s->srv;
    if (!s->open)
        return;
    s->open = 0;
    session_unlink(srv, s);
    kvtcd_local_detach(s);
    drop_bulk_queue(s);
    for (uint32_t r = 0; r < KVTCD_MAX_RAILS; r++)
        if (s->rail_ep[r]) {
            kvtcd_rail_close_ep(srv, r, s->rail_ep[r]);
            s->rail_ep[r] = NULL;
        }
    s->close_pending = 1;
    s->close_next = srv->close_queue;
    srv->close_queue = s;
    KVTCD_INFO("session", "closed session=%llu peer=%s reason=\"%s\"",
               (unsigned long long)s->id, s->peer, why);
}

void kvtcd_session_close(kvtcd_session *s, const char *why)
{
    session_fail(s, why);
}

static void on_close_done(void *req, ucs_status_t status, void *user_data)
{
    kvtcd_session *s = user_data;
    s->srv->closing--;
    ucp_request_free(req);
    kvtcd_session_unref(s); /* the endpoint's reference */
}

/* Force-close one endpoint of s; the endpoint's reference on s goes when
 * the close completes. */
static void close_one(kvtcd_server *srv, kvtcd_session *s, ucp_ep_h ep)
{
    ucp_request_param_t p = {
        .op_attr_mask = UCP_OP_ATTR_FIELD_FLAGS | UCP_OP_ATTR_FIELD_CALLBACK |
                        UCP_OP_ATTR_FIELD_USER_DATA,
        .flags = UCP_EP_CLOSE_FLAG_FORCE,
        .cb.send = on_close_done,
        .user_data = s,
    };
    ucs_status_ptr_t r = ucp_ep_close_nbx(ep, &p);
    if (r != NULL && !UCS_PTR_IS_ERR(r)) {
        srv->closing++;
        return;
    }
    kvtcd_session_unref(s);
}

static int process_close_queue(kvtcd_server *srv)
{
    int did = 0;
    while (srv->close_queue) {
        kvtcd_session *s = srv->close_queue;
        srv->close_queue = s->close_next;
        s->close_next = NULL;
        s->close_pending = 0;
        did = 1;
        ucp_ep_h ep = s->ep, bulk = s->bulk_ep;
        s->ep = s->bulk_ep = NULL;
        /* The bulk endpoint first: its transfers (shared memory) are the
         * ones that may still touch our buffers. */
        if (bulk)
            close_one(srv, s, bulk);
        if (ep)
            close_one(srv, s, ep);
    }
    return did;
}

static void on_ep_error(void *arg, ucp_ep_h ep, ucs_status_t status)
{
    kvtcd_session *s = arg;
    s->srv->m.disconnects++;
    session_fail(s, ucs_status_string(status));
}

/* ---- driving the worker --------------------------------------------------- */

static void on_idle(uv_idle_t *h);

static void idle_on(kvtcd_server *srv)
{
    if (!srv->idle_on) {
        uv_idle_start(&srv->idle, on_idle);
        srv->idle_on = 1;
    }
}

static void drive(kvtcd_server *srv, int from_poll)
{
    if (srv->in_progress || !srv->worker)
        return;
    srv->in_progress = 1;
    if (srv->ltrace) {
        /* Woken by the event fd after arming: the loop slept in epoll. */
        srv->lt_wake_ns = uv_hrtime();
        srv->lt_slept = from_poll && srv->lt_armed;
        srv->lt_armed = 0;
    }
    uint64_t now = uv_now(srv->loop);
    for (int round = 0; round < ARM_ROUNDS; round++) {
        unsigned n = 0;
        while (ucp_worker_progress(srv->worker)) {
            srv->last_event_ms = now;
            if (++n >= PROGRESS_BOUND)
                goto busy;
        }
        /* This batch of requests is in: start its small local copies
         * together (local_path.h); replies of those run here want
         * progress before arming. */
        if (kvtcd_local_flush(srv))
            continue;
        if (process_close_queue(srv))
            continue; /* closing queued work: progress it before arming */
        /* While transfers are in flight, UCX (1.13, tcp and sm) has work
         * that does not make the event fd readable (rendezvous steps
         * queued from callbacks); sleeping in epoll would stall them until
         * the next tick. So spin while transfers move, and arm once they
         * are done or have been silent for SPIN_MS. Local copies in
         * flight likewise, where cores are spare: their completion is then
         * seen without a wakeup. */
        if ((srv->n_ucx_pending > 0 && now - srv->last_event_ms < SPIN_MS) ||
            kvtcd_local_poll_wanted(srv))
            goto busy;
        ucs_status_t st = ucp_worker_arm(srv->worker);
        if (st == UCS_OK) {
            srv->lt_armed = 1;
            if (srv->idle_on) {
                uv_idle_stop(&srv->idle);
                srv->idle_on = 0;
            }
            srv->in_progress = 0;
            return;
        }
        if (st != UCS_ERR_BUSY) {
            KVTCD_ERROR("ucx", "ucp_worker_arm failed err=\"%s\"",
                        ucs_status_string(st));
            break;
        }
    }
busy:
    kvtcd_local_flush(srv);
    process_close_queue(srv);
    idle_on(srv);
    srv->in_progress = 0;
}

void kvtcd_transport_progress(kvtcd_server *srv)
{
    drive(srv, 0);
}

static void on_poll(uv_poll_t *h, int status, int events)
{
    drive(h->data, 1);
}

static void on_prepare(uv_prepare_t *h)
{
    drive(h->data, 0);
}

/* The loop polls (local copies or transfers in flight): between rounds it
 * yields, so a client or copy worker the kernel woke on this CPU runs at
 * once rather than after the polling ends. */
static void on_idle(uv_idle_t *h)
{
    drive(h->data, 0);
    if (kvtcd_spin_yield())
        sched_yield();
}

/* UCX defers some work (endpoint error handling, wire-up steps) to
 * one-shot progress callbacks that do not make the event fd readable; a
 * slow tick makes sure they run even when no traffic wakes the loop. */
static void on_tick(uv_timer_t *t)
{
    drive(t->data, 0);
}

/* ---- receiving ------------------------------------------------------------- */

static kvtcd_session *session_of_ep(kvtcd_server *srv, ucp_ep_h ep)
{
    for (kvtcd_session *s = srv->sessions; s; s = s->next) {
        if (s->bulk_ep == ep || s->ep == ep) {
            /* Move to front: a client sends many requests in a row. */
            if (s != srv->sessions) {
                s->prev->next = s->next;
                if (s->next)
                    s->next->prev = s->prev;
                s->prev = NULL;
                s->next = srv->sessions;
                srv->sessions->prev = s;
                srv->sessions = s;
            }
            return s;
        }
    }
    return NULL;
}

static ucs_status_t on_request_am(void *arg, const void *header,
                                  size_t header_length, void *data,
                                  size_t length,
                                  const ucp_am_recv_param_t *param)
{
    kvtcd_server *srv = arg;
    kvtcd_session *s = NULL;
    if ((param->recv_attr & UCP_AM_RECV_ATTR_FIELD_REPLY_EP) &&
        param->reply_ep)
        s = session_of_ep(srv, param->reply_ep);
    if (!s && (param->recv_attr & UCP_AM_RECV_ATTR_FIELD_REPLY_EP) &&
        param->reply_ep)
        /* An endpoint to our worker address: a bind, or dropped. */
        return kvtcd_handle_unbound(srv, param->reply_ep, header,
                                    header_length, data, length, param);
    if (!s) {
        /* No way to answer: the client did not set UCP_AM_SEND_FLAG_REPLY.
         * Returning UCS_OK drops eager data and any rendezvous. */
        srv->m.errors++;
        KVTCD_WARN("ucx", "request without a known reply endpoint dropped "
                          "header_bytes=%zu data_bytes=%zu",
                   header_length, length);
        return UCS_OK;
    }
    return kvtcd_handle_request(s, header, header_length, data, length,
                                param);
}

/* ---- accepting -------------------------------------------------------------- */

static void format_sockaddr(const struct sockaddr_storage *ss, char *buf,
                            size_t len, uint16_t *port)
{
    char host[INET6_ADDRSTRLEN] = "?";
    uint16_t p = 0;
    if (ss->ss_family == AF_INET) {
        const struct sockaddr_in *in = (const struct sockaddr_in *)ss;
        inet_ntop(AF_INET, &in->sin_addr, host, sizeof host);
        p = ntohs(in->sin_port);
        snprintf(buf, len, "%s:%u", host, p);
    } else if (ss->ss_family == AF_INET6) {
        const struct sockaddr_in6 *in6 = (const struct sockaddr_in6 *)ss;
        inet_ntop(AF_INET6, &in6->sin6_addr, host, sizeof host);
        p = ntohs(in6->sin6_port);
        snprintf(buf, len, "[%s]:%u", host, p);
    } else {
        snprintf(buf, len, "?");
    }
    if (port)
        *port = p;
}

kvtcd_session *kvtcd_session_find(kvtcd_server *srv, uint64_t id)
{
    for (kvtcd_session *s = srv->sessions; s; s = s->next)
        if (s->id == id)
            return s;
    return NULL;
}

static void session_link(kvtcd_server *srv, kvtcd_session *s)
{
    s->open = 1;
    s->next = srv->sessions;
    if (srv->sessions)
        srv->sessions->prev = s;
    srv->sessions = s;
    srv->n_sessions++;
    srv->m.sessions_total++;
}

/* Errors of an endpoint UCX created for us (a client connected to our
 * worker address) reach us only once we install a handler on it. */
static int set_err_handler(ucp_ep_h ep, kvtcd_session *s)
{
    ucp_ep_params_t p = {
        .field_mask = UCP_EP_PARAM_FIELD_ERR_HANDLER,
        .err_handler = {.cb = on_ep_error, .arg = s},
    };
    ucs_status_ptr_t r = ucp_ep_modify_nb(ep, &p);
    if (r == NULL)
        return 0;
    if (!UCS_PTR_IS_ERR(r)) {
        /* Never asynchronous for the error handler; be safe anyway. */
        ucp_request_free(r);
        return 0;
    }
    KVTCD_WARN("ucx", "cannot watch endpoint err=\"%s\"",
               ucs_status_string(UCS_PTR_STATUS(r)));
    return KVTC_EIO;
}

int kvtcd_session_bind_bulk(kvtcd_session *s, ucp_ep_h ep)
{
    if (!s->open || s->bulk_ep)
        return KVTC_EBUSY;
    int rc = set_err_handler(ep, s);
    if (rc < 0)
        return rc;
    s->bulk_ep = ep;
    s->refs++;
    return 0;
}

kvtcd_session *kvtcd_session_adopt(kvtcd_server *srv, ucp_ep_h ep)
{
    if (srv->draining || srv->n_sessions >= srv->cfg.max_sessions)
        return NULL;
    kvtcd_session *s = calloc(1, sizeof *s);
    if (!s)
        return NULL;
    s->srv = srv;
    s->refs = 1;
    s->id = ++srv->next_session_id;
    snprintf(s->peer, sizeof s->peer, "worker-address");
    if (getrandom(&s->bind_token, sizeof s->bind_token, 0) !=
            (ssize_t)sizeof s->bind_token ||
        set_err_handler(ep, s) < 0) {
        free(s);
        return NULL;
    }
    s->ep = ep;
    session_link(srv, s);
    KVTCD_INFO("session", "accepted session=%llu peer=%s",
               (unsigned long long)s->id, s->peer);
    return s;
}

static void on_conn_request(ucp_conn_request_h req, void *arg)
{
    kvtcd_server *srv = arg;
    char peer[64] = "?";
    ucp_conn_request_attr_t attr = {
        .field_mask = UCP_CONN_REQUEST_ATTR_FIELD_CLIENT_ADDR};
    if (ucp_conn_request_query(req, &attr) == UCS_OK)
        format_sockaddr(&attr.client_address, peer, sizeof peer, NULL);
    if (srv->draining || srv->n_sessions >= srv->cfg.max_sessions) {
        KVTCD_WARN("session", "rejected peer=%s reason=\"%s\"", peer,
                   srv->draining ? "shutting down" : "max_sessions reached");
        ucp_listener_reject(srv->listener, req);
        return;
    }
    kvtcd_session *s = calloc(1, sizeof *s);
    if (!s) {
        ucp_listener_reject(srv->listener, req);
        return;
    }
    s->srv = srv;
    s->refs = 1;
    s->id = ++srv->next_session_id;
    snprintf(s->peer, sizeof s->peer, "%s", peer);
    /* Unguessable, so no other client can take over this session's bulk
     * endpoint by naming its (sequential) id. */
    if (getrandom(&s->bind_token, sizeof s->bind_token, 0) !=
        (ssize_t)sizeof s->bind_token) {
        free(s);
        ucp_listener_reject(srv->listener, req);
        return;
    }
    ucp_ep_params_t ep = {
        .field_mask = UCP_EP_PARAM_FIELD_CONN_REQUEST |
                      UCP_EP_PARAM_FIELD_ERR_HANDLING_MODE |
                      UCP_EP_PARAM_FIELD_ERR_HANDLER,
        .conn_request = req,
        .err_mode = UCP_ERR_HANDLING_MODE_PEER,
        .err_handler = {.cb = on_ep_error, .arg = s},
    };
    ucs_status_t st = ucp_ep_create(srv->worker, &ep, &s->ep);
    if (st != UCS_OK) {
        KVTCD_WARN("session", "ucp_ep_create failed peer=%s err=\"%s\"",
                   peer, ucs_status_string(st));
        free(s);
        return;
    }
    session_link(srv, s);
    KVTCD_INFO("session", "accepted session=%llu peer=%s",
               (unsigned long long)s->id, peer);
}

static int resolve(const char *host, uint16_t port, struct sockaddr_storage *ss,
                   socklen_t *len)
{
    struct addrinfo hints = {.ai_family = AF_UNSPEC,
                             .ai_socktype = SOCK_STREAM,
                             .ai_flags = AI_PASSIVE};
    struct addrinfo *res = NULL;
    char ps[8];
    snprintf(ps, sizeof ps, "%u", port);
    int rc = getaddrinfo(host, ps, &hints, &res);
    if (rc != 0 || !res) {
        KVTCD_ERROR("ucx", "cannot resolve host=%s err=\"%s\"", host,
                    gai_strerror(rc));
        return KVTC_EINVAL;
    }
    memcpy(ss, res->ai_addr, res->ai_addrlen);
    *len = res->ai_addrlen;
    freeaddrinfo(res);
    return 0;
}

/* ---- setup and teardown ------------------------------------------------------ */

int kvtcd_transport_init(kvtcd_server *srv)
{
    ucp_config_t *config = NULL;
    ucs_status_t st = ucp_config_read(NULL, NULL, &config);
    if (st != UCS_OK) {
        KVTCD_ERROR("ucx", "ucp_config_read failed err=\"%s\"",
                    ucs_status_string(st));
        return KVTC_EIO;
    }
    /* The environment wins; see KVTC_WIRE_RNDV_THRESH for why. */
    if (!getenv("UCX_RNDV_THRESH") &&
        ucp_config_modify(config, "RNDV_THRESH", KVTC_WIRE_RNDV_THRESH) !=
            UCS_OK)
        KVTCD_WARN("ucx", "cannot set RNDV_THRESH=%s", KVTC_WIRE_RNDV_THRESH);
    ucp_params_t params = {
        .field_mask = UCP_PARAM_FIELD_FEATURES | UCP_PARAM_FIELD_NAME,
        .features = UCP_FEATURE_AM | UCP_FEATURE_WAKEUP,
        .name = "kvtcd",
    };
    if (srv->cfg.rails == KVTCD_RAILS_AUTO)
        srv->cfg.rails = kvtcd_rails_auto();
    if (srv->cfg.rails) {
        /* The rails' workers live on threads of their own. */
        params.field_mask |= UCP_PARAM_FIELD_MT_WORKERS_SHARED;
        params.mt_workers_shared = 1;
    }
    st = ucp_init(&params, config, &srv->ucp);
    ucp_config_release(config);
    if (st != UCS_OK) {
        KVTCD_ERROR("ucx", "ucp_init failed err=\"%s\"", ucs_status_string(st));
        srv->ucp = NULL;
        return KVTC_EIO;
    }
    ucp_worker_params_t wp = {
        .field_mask = UCP_WORKER_PARAM_FIELD_THREAD_MODE,
        .thread_mode = UCS_THREAD_MODE_SINGLE,
    };
    st = ucp_worker_create(srv->ucp, &wp, &srv->worker);
    if (st != UCS_OK) {
        KVTCD_ERROR("ucx", "ucp_worker_create failed err=\"%s\"",
                    ucs_status_string(st));
        srv->worker = NULL;
        return KVTC_EIO;
    }
    ucp_worker_attr_t wa = {.field_mask = UCP_WORKER_ATTR_FIELD_MAX_AM_HEADER};
    if (ucp_worker_query(srv->worker, &wa) == UCS_OK)
        srv->max_am_header = wa.max_am_header;
    else
        srv->max_am_header = 0; /* every reply frame goes in the data */

    ucp_am_handler_param_t ah = {
        .field_mask = UCP_AM_HANDLER_PARAM_FIELD_ID |
                      UCP_AM_HANDLER_PARAM_FIELD_CB |
                      UCP_AM_HANDLER_PARAM_FIELD_ARG |
                      UCP_AM_HANDLER_PARAM_FIELD_FLAGS,
        .id = KVTC_WIRE_AM_REQUEST,
        .cb = on_request_am,
        .arg = srv,
        .flags = UCP_AM_FLAG_WHOLE_MSG,
    };
    st = ucp_worker_set_am_recv_handler(srv->worker, &ah);
    if (st != UCS_OK) {
        KVTCD_ERROR("ucx", "cannot set AM handler err=\"%s\"",
                    ucs_status_string(st));
        return KVTC_EIO;
    }
    /* Clients on this host connect to it for shared-memory lanes. */
    st = ucp_worker_get_address(srv->worker, &srv->worker_addr,
                                &srv->worker_addr_len);
    if (st != UCS_OK) {
        KVTCD_WARN("ucx", "no worker address (bulk endpoints off) err=\"%s\"",
                   ucs_status_string(st));
        srv->worker_addr = NULL;
        srv->worker_addr_len = 0;
    }
    st = ucp_worker_get_efd(srv->worker, &srv->efd);
    if (st != UCS_OK) {
        KVTCD_ERROR("ucx", "ucp_worker_get_efd failed err=\"%s\"",
                    ucs_status_string(st));
        return KVTC_EIO;
    }

    struct sockaddr_storage ss;
    socklen_t sl;
    if (resolve(srv->cfg.listen_host, srv->cfg.listen_port, &ss, &sl) < 0)
        return KVTC_EINVAL;
    ucp_listener_params_t lp = {
        .field_mask = UCP_LISTENER_PARAM_FIELD_SOCK_ADDR |
                      UCP_LISTENER_PARAM_FIELD_CONN_HANDLER,
        .sockaddr = {.addr = (const struct sockaddr *)&ss, .addrlen = sl},
        .conn_handler = {.cb = on_conn_request, .arg = srv},
    };
    st = ucp_listener_create(srv->worker, &lp, &srv->listener);
    if (st != UCS_OK) {
        KVTCD_ERROR("ucx", "cannot listen addr=%s:%u err=\"%s\"",
                    srv->cfg.listen_host, srv->cfg.listen_port,
                    ucs_status_string(st));
        srv->listener = NULL;
        return KVTC_EIO;
    }
    ucp_listener_attr_t la = {.field_mask = UCP_LISTENER_ATTR_FIELD_SOCKADDR};
    if (ucp_listener_query(srv->listener, &la) == UCS_OK)
        format_sockaddr(&la.sockaddr, srv->listen_addr,
                        sizeof srv->listen_addr, &srv->bound_port);
    int rrc = kvtcd_rails_start(srv, (const struct sockaddr *)&ss, sl);
    if (rrc < 0)
        return rrc;

    uv_poll_init(srv->loop, &srv->poll, srv->efd);
    srv->poll.data = srv;
    uv_poll_start(&srv->poll, UV_READABLE, on_poll);
    uv_prepare_init(srv->loop, &srv->prepare);
    srv->prepare.data = srv;
    uv_prepare_start(&srv->prepare, on_prepare);
    uv_idle_init(srv->loop, &srv->idle);
    srv->idle.data = srv;
    uv_timer_init(srv->loop, &srv->tick);
    srv->tick.data = srv;
    uv_timer_start(&srv->tick, on_tick, TICK_MS, TICK_MS);
    srv->handles_open = 1;
    return 0;
}

void kvtcd_transport_stop_listening(kvtcd_server *srv)
{
    if (srv->listener) {
        ucp_listener_destroy(srv->listener);
        srv->listener = NULL;
    }
}

void kvtcd_transport_close_all(kvtcd_server *srv)
{
    while (srv->sessions)
        session_fail(srv->sessions, "daemon shutting down");
    drive(srv, 0);
}

void kvtcd_transport_close_handles(kvtcd_server *srv)
{
    /* Also after a start that failed half way: a rail's handle would keep
     * the loop alive. */
    kvtcd_rails_stop(srv);
    if (!srv->handles_open)
        return;
    srv->handles_open = 0;
    uv_poll_stop(&srv->poll);
    uv_close((uv_handle_t *)&srv->poll, NULL);
    uv_close((uv_handle_t *)&srv->prepare, NULL);
    uv_close((uv_handle_t *)&srv->idle, NULL);
    uv_timer_stop(&srv->tick);
    uv_close((uv_handle_t *)&srv->tick, NULL);
}

void kvtcd_transport_fini(kvtcd_server *srv)
{
    kvtcd_transport_stop_listening(srv);
    /* Sessions never closed (a start that failed half way). */
    while (srv->sessions)
        session_fail(srv->sessions, "daemon shutting down");
    if (srv->worker) {
        /* Destroying the worker may still complete requests (their
         * callbacks free their ops); whatever it abandons silently - a
         * client that stalled mid-rendezvous past the drain - is freed
         * below, without touching UCX again. */
        ucp_worker_h w = srv->worker;
        srv->worker = NULL;
        if (srv->worker_addr)
            ucp_worker_release_address(w, srv->worker_addr);
        srv->worker_addr = NULL;
        ucp_worker_destroy(w); /* destroys endpoints never closed */
    }
    while (srv->ops) {
        if (srv->ops->ucx_req)
            srv->n_ucx_pending--;
        srv->ops->ucx_req = NULL;
        kvtcd_op_free(srv->ops);
    }
    while (srv->close_queue) {
        kvtcd_session *s = srv->close_queue;
        srv->close_queue = s->close_next;
        /* One reference per endpoint never closed (the worker took them). */
        int refs = (s->ep != NULL) + (s->bulk_ep != NULL);
        s->ep = s->bulk_ep = NULL;
        while (refs--)
            kvtcd_session_unref(s);
    }
}

void kvtcd_transport_cleanup_context(kvtcd_server *srv)
{
    if (srv->ucp) {
        ucp_cleanup(srv->ucp);
        srv->ucp = NULL;
    }
}

/* ---- sending ------------------------------------------------------------------
 *
 * One bulk reply at a time: a session's replies whose payloads go by
 * rendezvous (>= KVTC_WIRE_RNDV_THRESH_BYTES) are posted one after the
 * other, the next when the last one's send completed. Posted together,
 * UCX (1.13, tcp) queues their data back to back on the endpoint, and the
 * message that completes the first transfer at the client queues behind
 * the second one's data: a pipelined client saw every get of its window
 * complete together, at the end, and then checked them one by one with
 * the link idle (docs/perf-notes.md, "Pipelined UCX tcp").
 * One at a time each completes when its own data has landed, and the
 * client checks it while the next one moves. */

static void on_send_done(void *req, ucs_status_t status, void *user_data);
static void send_done(kvtcd_op *op);

static uint32_t route_take(kvtcd_session *s, uint64_t id);

static void on_rail_send_done(kvtcd_op *op, ucs_status_t status)
{
    if (status != UCS_OK)
        KVTCD_DEBUG("ucx", "rail reply send ended session=%llu req=%llu err=\"%s\"",
                    (unsigned long long)op->sess->id, (unsigned long long)op->req_id,
                    ucs_status_string(status));
    send_done(op);
}

/* The rail (+1) a bulk reply of s goes out on: of the session's rails, the
 * one with the fewest bulk replies of all sessions posted and not sent,
 * counting one more where s itself is sending (it would wait for that).
 * Each client takes its rails round robin, so at any moment some rails
 * carry more transfers than others; answering on the idlest one evens
 * them out (16 clients' 1 MiB gets on 4 rails: docs/perf-notes.md). Ties
 * keep the request's own rail. */
static uint32_t least_loaded_rail(const kvtcd_session *s, uint32_t came_on)
{
    const kvtcd_server *srv = s->srv;
    uint32_t best = came_on, best_load = UINT32_MAX;
    for (uint32_t i = 0; i < KVTCD_MAX_RAILS; i++) {
        if (!s->rail_ep[i])
            continue;
        uint32_t load = srv->rail_bulk[i] + (s->bulk_q[1 + i].sending ? 1u : 0u);
        if (load < best_load || (load == best_load && i + 1 == came_on)) {
            best = i + 1;
            best_load = load;
        }
    }
    return best;
}

/* Hand op to UCX; 0, or an error (op freed). */
static int post_send(kvtcd_op *op)
{
    kvtcd_session *s = op->sess;
    kvtcd_server *srv = s->srv;
    ucp_request_param_t p = {
        .op_attr_mask = UCP_OP_ATTR_FIELD_CALLBACK | UCP_OP_ATTR_FIELD_USER_DATA,
        .cb.send = on_send_done,
        .user_data = op,
    };
    if (op->send_iov) {
        p.op_attr_mask |= UCP_OP_ATTR_FIELD_DATATYPE;
        p.datatype = ucp_dt_make_iov();
    }
    if (op->rail) {
        /* On a rail of the session's: that thread sends it. */
        ucp_ep_h rep = s->rail_ep[op->rail - 1];
        if (op->send_bulk) {
            op->rail_load = 1;
            srv->rail_bulk[op->rail - 1]++;
        }
        if (!rep) {
            send_done(op); /* the session ended: nobody to answer */
            return KVTC_ECONN;
        }
        kvtcd_rail_send(srv, op->rail - 1, rep, op->header, op->send_hlen,
                        op->send_data, op->send_dlen, op->send_iov, op,
                        on_rail_send_done);
        return 0;
    }
    /* A bound bulk endpoint carries every reply: the client sends its
     * requests there too, and it has the shared-memory lanes. */
    ucp_ep_h ep = s->bulk_ep ? s->bulk_ep : s->ep;
    ucs_status_ptr_t r = ucp_am_send_nbx(ep, KVTC_WIRE_AM_REPLY, op->header, op->send_hlen,
                                         op->send_data, op->send_dlen, &p);
    if (r != NULL && !UCS_PTR_IS_ERR(r)) {
        op->ucx_req = r;
        srv->n_ucx_pending++;
        return 0;
    }
    int rc = 0;
    if (UCS_PTR_IS_ERR(r)) {
        KVTCD_WARN("ucx", "reply send failed session=%llu err=\"%s\"",
                   (unsigned long long)s->id, ucs_status_string(UCS_PTR_STATUS(r)));
        rc = KVTC_ECONN;
    }
    send_done(op);
    return rc;
}

/* op's send is over (done, failed or never posted): free it and, if it was
 * the session's bulk reply, post the next one waiting. */
static void send_done(kvtcd_op *op)
{
    kvtcd_session *s = op->sess;
    kvtcd_op *next = NULL;
    if (op->rail_load) {
        op->rail_load = 0;
        s->srv->rail_bulk[op->rail - 1]--;
    }
    if (op->send_bulk) {
        struct kvtcd_bulk_q *q = &s->bulk_q[op->rail];
        q->sending = 0;
        if (s->open && (next = q->head) != NULL) {
            KVTC_FIFO_POP(q->head, q->tail, bulk_q_next);
            q->sending = 1;
        }
    }
    /* Last: the op's reference may be the session's last one. next holds
     * a reference of its own. */
    kvtcd_op_free(op);
    if (next)
        (void)post_send(next); /* frees next on failure, posting the one after */
}

/* The session failed: replies still waiting are not sent. */
static void drop_bulk_queue(kvtcd_session *s)
{
    kvtcd_op *op;
    for (uint32_t i = 0; i <= KVTCD_MAX_RAILS; i++)
        while ((op = s->bulk_q[i].head)) {
            KVTC_FIFO_POP(s->bulk_q[i].head, s->bulk_q[i].tail, bulk_q_next);
            kvtcd_op_free(op);
        }
}

static void on_send_done(void *req, ucs_status_t status, void *user_data)
{
    kvtcd_op *op = user_data;
    if (status != UCS_OK)
        KVTCD_DEBUG("ucx", "reply send ended session=%llu req=%llu err=\"%s\"",
                    (unsigned long long)op->sess->id,
                    (unsigned long long)op->req_id, ucs_status_string(status));
    ucp_request_free(req);
    op->ucx_req = NULL;
    op->sess->srv->n_ucx_pending--;
    send_done(op);
}

int kvtcd_send_reply(kvtcd_session *s, const Kvtc__Wire__Reply *rep,
                     const kvtcd_seg *segs, uint32_t nsegs,
                     kvtcd_blob *const *holds, uint32_t n_holds)
{
    kvtcd_server *srv = s->srv;
    if (!s->open)
        return KVTC_ECONN;
    kvtcd_op *op = kvtcd_op_new(srv, KVTCD_OP_SEND, s);
    if (!op)
        return KVTC_ENOMEM;
    op->req_id = rep->id;
    int rc = 0;
    if (n_holds) {
        op->holds = calloc(n_holds, sizeof *op->holds);
        if (!op->holds) {
            rc = KVTC_ENOMEM;
            goto fail;
        }
        for (uint32_t i = 0; i < n_holds; i++) {
            op->holds[i] = holds[i];
            kvtcd_blob_ref(holds[i]);
        }
        op->n_holds = n_holds;
    }
    rc = kvtc_wire_pack_reply_alloc(rep, &op->header, &op->header_len);
    if (rc < 0)
        goto fail;
    int in_data = op->header_len > srv->max_am_header;
    /* Payload segments (and, "in data", the message first) go out as one
     * iov, straight from where they lie: no copy, whatever their number.
     * Segments adjacent in memory are merged. */
    op->iov = calloc((size_t)nsegs + 1, sizeof *op->iov);
    if (!op->iov) {
        rc = KVTC_ENOMEM;
        goto fail;
    }
    size_t n = 0, payload_len = 0;
    if (in_data) {
        op->iov[n].buffer = (uint8_t *)op->header + KVTC_WIRE_LEN_BYTES;
        op->iov[n++].length = op->header_len - KVTC_WIRE_LEN_BYTES;
    }
    for (uint32_t i = 0; i < nsegs; i++) {
        payload_len += segs[i].len;
        if (segs[i].len == 0)
            continue;
        if (n > 0 && (!in_data || n > 1) &&
            (const uint8_t *)op->iov[n - 1].buffer + op->iov[n - 1].length ==
                (const uint8_t *)segs[i].p) {
            op->iov[n - 1].length += segs[i].len;
            continue;
        }
        op->iov[n].buffer = (void *)segs[i].p;
        op->iov[n++].length = segs[i].len;
    }
    op->send_hlen = in_data ? KVTC_WIRE_LEN_BYTES : op->header_len;
    if (n == 1) {
        op->send_data = op->iov[0].buffer;
        op->send_dlen = op->iov[0].length;
    } else if (n > 1) {
        op->send_iov = 1;
        op->send_data = op->iov;
        op->send_dlen = n;
    }
    srv->m.bytes_out += payload_len;
    op->rail = route_take(s, rep->id);
    if (op->rail && payload_len >= KVTC_WIRE_RNDV_THRESH_BYTES)
        op->rail = least_loaded_rail(s, op->rail);
    if (payload_len >= KVTC_WIRE_RNDV_THRESH_BYTES) {
        /* One at a time on each stream: the session's endpoint, a rail. */
        struct kvtcd_bulk_q *q = &s->bulk_q[op->rail];
        op->send_bulk = 1;
        if (q->sending) {
            srv->m.bulk_replies_waited++;
            KVTC_FIFO_PUSH(q->head, q->tail, op, bulk_q_next);
            return 0;
        }
        q->sending = 1;
    }
    return post_send(op);
fail:
    kvtcd_op_free(op);
    return rc;
}

/* ---- rails (rails.h) ------------------------------------------------------------ */

void kvtcd_session_route(kvtcd_session *s, uint64_t id, uint32_t r)
{
    if (s->n_rail_routes < KVTCD_RAIL_ROUTES) {
        s->rail_route[s->n_rail_routes].id = id;
        s->rail_route[s->n_rail_routes].rail = r + 1;
        s->n_rail_routes++;
    }
}

/* The rail (+1) request id of s came on, forgotten now; 0: none. */
static uint32_t route_take(kvtcd_session *s, uint64_t id)
{
    for (uint32_t i = 0; i < s->n_rail_routes; i++)
        if (s->rail_route[i].id == id) {
            uint32_t r = s->rail_route[i].rail;
            s->rail_route[i] = s->rail_route[--s->n_rail_routes];
            return r;
        }
    return 0;
}

static kvtcd_session *session_of_rail_ep(kvtcd_server *srv, uint32_t r, ucp_ep_h ep)
{
    for (kvtcd_session *s = srv->sessions; s; s = s->next)
        if (s->rail_ep[r] == ep)
            return s;
    return NULL;
}

void kvtcd_rail_request(kvtcd_server *srv, uint32_t r, ucp_ep_h ep, const void *header,
                        size_t hlen, kvtcd_rail_data *d, const void *data, size_t len,
                        int rndv)
{
    kvtcd_session *s = session_of_rail_ep(srv, r, ep);
    if (!s) {
        kvtcd_handle_rail_bind(srv, r, ep, header, hlen, len, rndv);
        return;
    }
    srv->m.rail_requests++;
    /* The loop would copy every rail's eager puts, one at a time; the
     * rails' threads copy them in parallel, from their own caches. */
    int recv = d && (rndv || len >= KVTCD_RAIL_COPY_MIN);
    ucp_am_recv_param_t prm = {
        .recv_attr = recv ? UCP_AM_RECV_ATTR_FLAG_RNDV : 0,
    };
    srv->cur_rail = r + 1;
    kvtcd_handle_request(s, header, hlen, recv ? (void *)d : (void *)data, len, &prm);
    srv->cur_rail = 0;
}

void kvtcd_rail_ep_failed(kvtcd_server *srv, uint32_t r, ucp_ep_h ep, const char *why)
{
    kvtcd_session *s = session_of_rail_ep(srv, r, ep);
    if (s)
        session_fail(s, why); /* closes this endpoint with its others */
    else
        kvtcd_rail_close_ep(srv, r, ep);
}

int kvtcd_send_error(kvtcd_session *s, uint64_t req_id, int status,
                     const char *fmt, ...)
{
    char msg[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    s->srv->m.errors++;
    KVTCD_DEBUG("req", "error session=%llu req=%llu status=%s msg=\"%s\"",
                (unsigned long long)s->id, (unsigned long long)req_id,
                kvtc_wire_status_name(status), msg);
    Kvtc__Wire__Reply rep = KVTC__WIRE__REPLY__INIT;
    rep.id = req_id;
    rep.status = (Kvtc__Wire__Status)status;
    rep.message = msg;
    return kvtcd_send_reply(s, &rep, NULL, 0, NULL, 0);
}
