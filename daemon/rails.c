/* rails.c - rails: UCX workers on threads of their own (rails.h).
 *
 * Between a rail's thread and the loop there are two queues, each a
 * mutex-guarded list: commands to the rail (woken by an eventfd the rail
 * sleeps on beside its worker's) and events to the loop (a uv_async). A
 * rail's thread owns its worker, its endpoints and the request data it has
 * not given up; the loop sees endpoints and data only as handles. */
#include "rails.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <time.h>
#include <unistd.h>

#include "fifo.h"
#include "kvtc_errors.h"
#include "local_copy.h"
#include "log.h"
#include "server.h"

#define RAIL_SPIN_MS 100      /* poll this long after the last event while
                                 transfers move (transport.c: UCX 1.13 has
                                 work that does not wake the event fd) */
#define RAIL_IDLE_SPIN_NS 200000 /* and this long with none: a request's
                                 next step usually comes within it, and a
                                 sleep costs a wakeup (~50 us) a step */
#define RAIL_TICK_MS 50       /* longest sleep: UCX's deferred work */
#define RAIL_MAX_QUEUED 4096  /* requests handed to the loop, not handled */
#define RAIL_MAX_HEADER 65536 /* larger request headers: a bad client */
#define RAIL_CLOSE_ROUNDS 200000 /* progress calls a stop waits for closes */
#define RAIL_REFUSED_CLOSE_MS 1000 /* a refused endpoint's answer gets this long:
                                 a send completes when handed to tcp, and a
                                 close at once can overtake it */

enum rail_data_kind { RD_RNDV = 1, RD_UCX = 2, RD_COPY = 3 };

struct kvtcd_rail_data {
    struct kvtcd_rail_data *prev, *next; /* the rail's, until received or released */
    ucp_ep_h ep;
    void *data;      /* RD_RNDV: the descriptor; else the bytes */
    size_t len;
    int kind;        /* enum rail_data_kind */
    int dead;        /* its endpoint closed: descriptor already released */
};

typedef struct rail_ep {
    struct rail_ep *next;
    ucp_ep_h ep;
    int failed;           /* error seen or refused: no new work */
    uint64_t close_at_ms; /* refused: closed then, once its answer is out */
} rail_ep;

enum rail_cmd_kind { RC_RECV = 1, RC_RELEASE, RC_SEND, RC_CLOSE, RC_STOP };

typedef struct rail_cmd {
    struct rail_cmd *next;
    int kind;
    struct rail *rail;
    kvtcd_rail_data *d;     /* RECV, RELEASE */
    void *dst;              /* RECV */
    size_t len;
    ucp_ep_h ep;            /* SEND, CLOSE */
    const void *hdr;        /* SEND */
    size_t hlen;
    const void *data;
    size_t dlen;
    int iov;
    void *frame;            /* SEND: freed after (no op) */
    int close_after;        /* SEND: then close ep (a refused bind) */
    kvtcd_op *op;           /* RECV, SEND: the loop's */
    kvtcd_rail_done_cb done;
} rail_cmd;

enum rail_evt_kind { RE_REQ = 1, RE_DONE, RE_EP_FAILED };

typedef struct rail_evt {
    struct rail_evt *next;
    int kind;
    uint32_t rail;
    ucp_ep_h ep;
    void *hdr;              /* REQ: a copy */
    size_t hlen;
    kvtcd_rail_data *d;     /* REQ: NULL without data */
    size_t len;
    int rndv;
    kvtcd_op *op;           /* DONE */
    kvtcd_rail_done_cb done;
    ucs_status_t status;
    const char *why;        /* EP_FAILED: a static string */
} rail_evt;

typedef struct rail {
    struct kvtcd_rails *all;
    uint32_t idx;
    pthread_t th;
    int started;
    ucp_worker_h w;
    ucp_listener_h listener;
    uint16_t port;                  /* where the listener took */
    int wefd, cmd_efd, epfd;
    clockid_t cpu;
    int cpu_ok;
    pthread_mutex_t mu;             /* cmds */
    rail_cmd *cmd_head, *cmd_tail;
    atomic_uint queued;             /* requests the loop has not handled */
    /* the rail's thread only */
    kvtcd_rail_data *data;
    rail_ep *eps;
    uint32_t n_eps;
    uint32_t pending;               /* UCX requests in flight */
    uint32_t closing_later;         /* refused endpoints waiting to close */
    uint32_t closing;               /* endpoint closes in flight */
    uint64_t last_event_ms;
    uint64_t last_work_ns;          /* an event or a command */
    atomic_int stopping;
    int yield;
} rail;

struct kvtcd_rails {
    kvtcd_server *srv;
    uint32_t n;
    rail r[KVTCD_MAX_RAILS];
    pthread_mutex_t mu;             /* events */
    rail_evt *evt_head, *evt_tail;
    uv_async_t async;
    int async_open;
    int data_given;                 /* loop only: the request being handled
                                       had its data received or released
                                       (read here, never the record: the
                                       rail may have freed it by then) */
    struct sockaddr_storage listen_ss; /* the loop's listener's host, port 0 */
    socklen_t listen_len;
};

static uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static uint64_t now_ms(void)
{
    return now_ns() / 1000000u;
}

/* ---- the queues ---------------------------------------------------------- */

static void post_evt(rail *r, rail_evt *e)
{
    struct kvtcd_rails *a = r->all;
    e->rail = r->idx;
    pthread_mutex_lock(&a->mu);
    KVTC_FIFO_PUSH(a->evt_head, a->evt_tail, e, next);
    pthread_mutex_unlock(&a->mu);
    uv_async_send(&a->async);
}

static void post_cmd(rail *r, rail_cmd *c)
{
    c->rail = r;
    pthread_mutex_lock(&r->mu);
    KVTC_FIFO_PUSH(r->cmd_head, r->cmd_tail, c, next);
    pthread_mutex_unlock(&r->mu);
    uint64_t one = 1;
    while (write(r->cmd_efd, &one, sizeof one) < 0 && errno == EINTR)
        ;
}

/* A command the loop could not even allocate still owes its op a
 * completion: run it at once (on the loop, where the caller is). */
static rail_cmd *new_cmd(int kind, kvtcd_op *op, kvtcd_rail_done_cb done)
{
    rail_cmd *c = calloc(1, sizeof *c);
    if (!c && done)
        done(op, UCS_ERR_NO_MEMORY);
    if (c) {
        c->kind = kind;
        c->op = op;
        c->done = done;
    }
    return c;
}

static rail_ep *find_ep(rail *r, ucp_ep_h ep);

/* A command's completion, from the rail's thread to the loop. */
static void finish_cmd(rail *r, rail_cmd *c, ucs_status_t st)
{
    if (c->close_after) {
        /* Refused: no more requests; closed a while after its answer (see
         * RAIL_REFUSED_CLOSE_MS; never from inside UCX's callback). */
        rail_ep *e = find_ep(r, c->ep);
        if (e && !e->close_at_ms) {
            e->failed = 1;
            e->close_at_ms = now_ms() + RAIL_REFUSED_CLOSE_MS;
            r->closing_later++;
        }
    }
    if (c->done) {
        rail_evt *e = calloc(1, sizeof *e);
        if (e) {
            e->kind = RE_DONE;
            e->op = c->op;
            e->done = c->done;
            e->status = st;
            post_evt(r, e);
        } else {
            /* Cannot tell the loop: its op stays in flight until the
             * daemon stops. Logged, never silent. */
            KVTCD_ERROR("rails", "out of memory completing a transfer rail=%u", r->idx);
        }
    }
    free(c->frame);
    free(c);
}

/* ---- endpoints and data (rail thread) -------------------------------------- */

static rail_ep *find_ep(rail *r, ucp_ep_h ep)
{
    for (rail_ep *e = r->eps; e; e = e->next)
        if (e->ep == ep)
            return e;
    return NULL;
}

static void on_ep_error(void *arg, ucp_ep_h ep, ucs_status_t status)
{
    rail *r = arg;
    rail_ep *e = find_ep(r, ep);
    if (!e || e->failed)
        return;
    e->failed = 1;
    rail_evt *ev = calloc(1, sizeof *ev);
    if (!ev)
        return; /* the main endpoint's failure ends the session anyway */
    ev->kind = RE_EP_FAILED;
    ev->ep = ep;
    ev->why = "rail endpoint failed";
    post_evt(r, ev);
}

/* A client connected to this rail's listener: its endpoint, watched for
 * failure. Refused beyond max_sessions endpoints (a client that connects
 * and never binds holds one until it goes) and while stopping. */
static void on_conn_request(ucp_conn_request_h req, void *arg)
{
    rail *r = arg;
    rail_ep *e = NULL;
    if (atomic_load(&r->stopping) || r->n_eps >= r->all->srv->cfg.max_sessions ||
        !(e = calloc(1, sizeof *e))) {
        ucp_listener_reject(r->listener, req);
        return;
    }
    ucp_ep_params_t p = {
        .field_mask = UCP_EP_PARAM_FIELD_CONN_REQUEST | UCP_EP_PARAM_FIELD_ERR_HANDLING_MODE |
                      UCP_EP_PARAM_FIELD_ERR_HANDLER,
        .conn_request = req,
        .err_mode = UCP_ERR_HANDLING_MODE_PEER,
        .err_handler = {.cb = on_ep_error, .arg = r},
    };
    if (ucp_ep_create(r->w, &p, &e->ep) != UCS_OK) {
        free(e);
        return;
    }
    e->next = r->eps;
    r->eps = e;
    r->n_eps++;
}

static void unlink_data(rail *r, kvtcd_rail_data *d)
{
    if (d->prev)
        d->prev->next = d->next;
    else
        r->data = d->next;
    if (d->next)
        d->next->prev = d->prev;
}

/* Give d's bytes or descriptor back (unless its endpoint's close did). */
static void drop_data(rail *r, kvtcd_rail_data *d)
{
    if (!d->dead) {
        if (d->kind == RD_COPY)
            free(d->data);
        else
            ucp_am_data_release(r->w, d->data);
    }
    unlink_data(r, d);
    free(d);
}

static void on_close_done(void *req, ucs_status_t status, void *user_data)
{
    rail *r = user_data;
    r->closing--;
    ucp_request_free(req);
}

/* Close ep (forced) after releasing its rendezvous descriptors: UCX then
 * answers their senders while it still can. */
static void close_ep(rail *r, ucp_ep_h ep)
{
    rail_ep **pp = &r->eps;
    while (*pp && (*pp)->ep != ep)
        pp = &(*pp)->next;
    if (!*pp)
        return; /* closed before */
    rail_ep *e = *pp;
    *pp = e->next;
    if (e->close_at_ms)
        r->closing_later--;
    free(e);
    r->n_eps--;
    for (kvtcd_rail_data *d = r->data; d; d = d->next)
        if (d->ep == ep && d->kind == RD_RNDV && !d->dead) {
            ucp_am_data_release(r->w, d->data);
            d->dead = 1;
        }
    ucp_request_param_t p = {
        .op_attr_mask = UCP_OP_ATTR_FIELD_FLAGS | UCP_OP_ATTR_FIELD_CALLBACK |
                        UCP_OP_ATTR_FIELD_USER_DATA,
        .flags = UCP_EP_CLOSE_FLAG_FORCE,
        .cb.send = on_close_done,
        .user_data = r,
    };
    ucs_status_ptr_t sp = ucp_ep_close_nbx(ep, &p);
    if (sp != NULL && !UCS_PTR_IS_ERR(sp))
        r->closing++;
}

/* ---- receiving requests (rail thread) --------------------------------------- */

static ucs_status_t on_request(void *arg, const void *header, size_t header_length, void *data,
                               size_t length, const ucp_am_recv_param_t *param)
{
    rail *r = arg;
    r->last_event_ms = now_ms();
    if (!(param->recv_attr & UCP_AM_RECV_ATTR_FIELD_REPLY_EP) || !param->reply_ep)
        return UCS_OK; /* cannot be answered: dropped with its data */
    rail_ep *e = find_ep(r, param->reply_ep);
    if (!e || e->failed)
        return UCS_OK; /* not accepted here, or failing: dropped */
    if (atomic_load(&r->queued) >= RAIL_MAX_QUEUED || header_length > RAIL_MAX_HEADER) {
        /* A client flooding the rail: end its session (the loop closes
         * this endpoint with the others), drop this request. */
        on_ep_error(r, param->reply_ep, UCS_ERR_EXCEEDS_LIMIT);
        return UCS_OK;
    }
    int rndv = (param->recv_attr & UCP_AM_RECV_ATTR_FLAG_RNDV) != 0;
    rail_evt *ev = calloc(1, sizeof *ev);
    kvtcd_rail_data *d = NULL;
    int keep = 0;
    if (ev)
        ev->hdr = malloc(header_length ? header_length : 1);
    if (ev && ev->hdr && (length || rndv)) {
        d = calloc(1, sizeof *d);
        if (d && rndv) {
            d->kind = RD_RNDV;
            d->data = data;
            keep = 1;
        } else if (d && (param->recv_attr & UCP_AM_RECV_ATTR_FLAG_DATA)) {
            d->kind = RD_UCX;
            d->data = data;
            keep = 1;
        } else if (d) {
            d->kind = RD_COPY;
            d->data = malloc(length);
            if (d->data)
                memcpy(d->data, data, length);
        }
    }
    if (!ev || !ev->hdr || ((length || rndv) && (!d || !d->data))) {
        KVTCD_WARN("rails", "out of memory: request dropped rail=%u bytes=%zu", r->idx, length);
        if (d && d->kind == RD_COPY)
            free(d->data);
        free(d);
        if (ev)
            free(ev->hdr);
        free(ev);
        on_ep_error(r, param->reply_ep, UCS_ERR_NO_MEMORY);
        return UCS_OK;
    }
    if (d) {
        d->ep = param->reply_ep;
        d->len = length;
        d->next = r->data;
        if (r->data)
            r->data->prev = d;
        r->data = d;
    }
    memcpy(ev->hdr, header, header_length);
    ev->kind = RE_REQ;
    ev->ep = param->reply_ep;
    ev->hlen = header_length;
    ev->d = d;
    ev->len = length;
    ev->rndv = rndv;
    atomic_fetch_add(&r->queued, 1);
    post_evt(r, ev);
    return keep ? UCS_INPROGRESS : UCS_OK;
}

/* ---- commands (rail thread) ----------------------------------------------------- */

static void on_recv_done(void *req, ucs_status_t status, size_t length, void *user_data)
{
    rail_cmd *c = user_data;
    c->rail->pending--;
    ucp_request_free(req);
    finish_cmd(c->rail, c, status);
}

static void on_send_done(void *req, ucs_status_t status, void *user_data)
{
    rail_cmd *c = user_data;
    c->rail->pending--;
    ucp_request_free(req);
    finish_cmd(c->rail, c, status);
}

/* c's UCX request was posted: done at once, failed, or in flight. */
static void posted(rail *r, rail_cmd *c, ucs_status_ptr_t sp)
{
    if (sp == NULL) {
        finish_cmd(r, c, UCS_OK);
    } else if (UCS_PTR_IS_ERR(sp)) {
        finish_cmd(r, c, UCS_PTR_STATUS(sp));
    } else {
        r->pending++;
        r->last_event_ms = now_ms();
    }
}

static void run_recv(rail *r, rail_cmd *c)
{
    kvtcd_rail_data *d = c->d;
    if (d->dead) {
        drop_data(r, d);
        finish_cmd(r, c, UCS_ERR_CANCELED);
        return;
    }
    if (d->kind != RD_RNDV) {
        /* Eager data, received here rather than by the loop
         * (kvtcd_rail_request): as UCX would, refuse a short buffer. */
        int fits = d->len <= c->len;
        if (fits)
            memcpy(c->dst, d->data, d->len);
        drop_data(r, d);
        finish_cmd(r, c, fits ? UCS_OK : UCS_ERR_MESSAGE_TRUNCATED);
        return;
    }
    void *desc = d->data;
    unlink_data(r, d); /* UCX owns the descriptor from here */
    free(d);
    ucp_request_param_t p = {
        .op_attr_mask = UCP_OP_ATTR_FIELD_CALLBACK | UCP_OP_ATTR_FIELD_USER_DATA,
        .cb.recv_am = on_recv_done,
        .user_data = c,
    };
    posted(r, c, ucp_am_recv_data_nbx(r->w, desc, c->dst, c->len, &p));
}

static void run_send(rail *r, rail_cmd *c)
{
    rail_ep *e = find_ep(r, c->ep);
    if (!e || e->failed) {
        finish_cmd(r, c, UCS_ERR_CANCELED);
        return;
    }
    ucp_request_param_t p = {
        .op_attr_mask = UCP_OP_ATTR_FIELD_CALLBACK | UCP_OP_ATTR_FIELD_USER_DATA,
        .cb.send = on_send_done,
        .user_data = c,
    };
    if (c->iov) {
        p.op_attr_mask |= UCP_OP_ATTR_FIELD_DATATYPE;
        p.datatype = ucp_dt_make_iov();
    }
    posted(r, c, ucp_am_send_nbx(c->ep, KVTC_WIRE_AM_REPLY, c->hdr, c->hlen, c->data, c->dlen,
                                 &p));
}

/* Run the commands queued so far; 1 if there were any. */
static int run_cmds(rail *r)
{
    pthread_mutex_lock(&r->mu);
    rail_cmd *c = r->cmd_head;
    r->cmd_head = r->cmd_tail = NULL;
    pthread_mutex_unlock(&r->mu);
    int any = c != NULL;
    while (c) {
        rail_cmd *next = c->next;
        switch (c->kind) {
        case RC_RECV: run_recv(r, c); break;
        case RC_SEND: run_send(r, c); break;
        case RC_RELEASE:
            drop_data(r, c->d);
            free(c);
            break;
        case RC_CLOSE:
            close_ep(r, c->ep);
            free(c);
            break;
        case RC_STOP:
            atomic_store(&r->stopping, 1);
            free(c);
            break;
        default: free(c); break;
        }
        c = next;
    }
    return any;
}

/* ---- the rail's thread ----------------------------------------------------------- */

/* Close the refused endpoints whose time has come. */
static void close_due(rail *r)
{
    uint64_t now = now_ms();
    rail_ep *e = r->eps;
    while (e) {
        rail_ep *next = e->next;
        if (e->close_at_ms && now >= e->close_at_ms)
            close_ep(r, e->ep); /* frees e */
        e = next;
    }
}

static void rail_sleep(rail *r)
{
    struct epoll_event evs[2];
    int n = epoll_wait(r->epfd, evs, 2, RAIL_TICK_MS);
    for (int i = 0; i < n; i++)
        if (evs[i].data.fd == r->cmd_efd) {
            uint64_t v;
            ssize_t rd = read(r->cmd_efd, &v, sizeof v);
            (void)rd; /* nonblocking: EAGAIN when another read won */
        }
}

static void rail_shutdown(rail *r)
{
    if (r->listener)
        ucp_listener_destroy(r->listener);
    r->listener = NULL;
    while (r->data)
        drop_data(r, r->data);
    while (r->eps)
        close_ep(r, r->eps->ep);
    for (unsigned i = 0; (r->closing || r->pending) && i < RAIL_CLOSE_ROUNDS; i++)
        ucp_worker_progress(r->w);
}

static void *rail_main(void *arg)
{
    rail *r = arg;
    for (;;) {
        int worked = 0;
        while (ucp_worker_progress(r->w))
            worked = 1;
        if (worked)
            r->last_event_ms = now_ms();
        if (run_cmds(r))
            worked = 1;
        if (worked) {
            r->last_work_ns = now_ns();
            continue;
        }
        if (atomic_load(&r->stopping))
            break;
        if (r->closing_later)
            close_due(r);
        if ((r->pending && now_ms() - r->last_event_ms < RAIL_SPIN_MS) ||
            now_ns() - r->last_work_ns < RAIL_IDLE_SPIN_NS) {
            if (r->yield)
                sched_yield();
            continue;
        }
        ucs_status_t st = ucp_worker_arm(r->w);
        if (st == UCS_ERR_BUSY)
            continue;
        if (st != UCS_OK) {
            KVTCD_ERROR("rails", "ucp_worker_arm failed rail=%u err=\"%s\"", r->idx,
                        ucs_status_string(st));
            usleep(1000);
            continue;
        }
        rail_sleep(r);
    }
    rail_shutdown(r);
    return NULL;
}

/* ---- the loop's side ----------------------------------------------------------------- */

static void on_events(uv_async_t *h)
{
    struct kvtcd_rails *a = h->data;
    pthread_mutex_lock(&a->mu);
    rail_evt *e = a->evt_head;
    a->evt_head = a->evt_tail = NULL;
    pthread_mutex_unlock(&a->mu);
    /* The loop polls while rails have its transfers (transport.c, drive):
     * their completions then need no wakeup. */
    a->srv->last_event_ms = uv_now(a->srv->loop);
    while (e) {
        rail_evt *next = e->next;
        switch (e->kind) {
        case RE_REQ:
            atomic_fetch_sub(&a->r[e->rail].queued, 1);
            a->data_given = 0;
            kvtcd_rail_request(a->srv, e->rail, e->ep, e->hdr, e->hlen, e->d,
                               e->d && e->d->kind != RD_RNDV ? e->d->data : NULL, e->len,
                               e->rndv);
            /* Data the handling did not receive goes back now. */
            if (e->d && !a->data_given)
                kvtcd_rail_release(a->srv, e->rail, e->d);
            break;
        case RE_DONE:
            a->srv->n_ucx_pending--;
            e->done(e->op, e->status);
            break;
        case RE_EP_FAILED: kvtcd_rail_ep_failed(a->srv, e->rail, e->ep, e->why); break;
        default: break;
        }
        free(e->hdr);
        free(e);
        e = next;
    }
}

void kvtcd_rail_recv(kvtcd_server *srv, uint32_t r, kvtcd_rail_data *d, void *dst,
                     size_t len, kvtcd_op *op, kvtcd_rail_done_cb done)
{
    srv->rails->data_given = 1;
    rail_cmd *c = new_cmd(RC_RECV, op, done);
    if (!c) {
        kvtcd_rail_release(srv, r, d);
        return;
    }
    c->d = d;
    c->dst = dst;
    c->len = len;
    srv->n_ucx_pending++;
    post_cmd(&srv->rails->r[r], c);
}

/* A command with no completion (release, close). Without memory for it,
 * what it would free stays the rail's until the rail stops: logged. */
static void post_plain(kvtcd_server *srv, uint32_t r, int kind, kvtcd_rail_data *d, ucp_ep_h ep)
{
    rail_cmd *c = calloc(1, sizeof *c);
    if (!c) {
        KVTCD_ERROR("rails", "out of memory for a %s rail=%u",
                    kind == RC_RELEASE ? "release of request data" : "close", r);
        return;
    }
    c->kind = kind;
    c->d = d;
    c->ep = ep;
    post_cmd(&srv->rails->r[r], c);
}

void kvtcd_rail_release(kvtcd_server *srv, uint32_t r, kvtcd_rail_data *d)
{
    srv->rails->data_given = 1;
    post_plain(srv, r, RC_RELEASE, d, NULL);
}

void kvtcd_rail_send(kvtcd_server *srv, uint32_t r, ucp_ep_h ep, const void *header,
                     size_t hlen, const void *data, size_t dlen, int iov, kvtcd_op *op,
                     kvtcd_rail_done_cb done)
{
    rail_cmd *c = new_cmd(RC_SEND, op, done);
    if (!c)
        return;
    c->ep = ep;
    c->hdr = header;
    c->hlen = hlen;
    c->data = data;
    c->dlen = dlen;
    c->iov = iov;
    srv->n_ucx_pending++;
    post_cmd(&srv->rails->r[r], c);
}

void kvtcd_rail_send_frame(kvtcd_server *srv, uint32_t r, ucp_ep_h ep, void *frame,
                           size_t frame_len, int close_after)
{
    rail_cmd *c = new_cmd(RC_SEND, NULL, NULL);
    if (!c) {
        free(frame);
        if (close_after)
            kvtcd_rail_close_ep(srv, r, ep);
        return;
    }
    c->close_after = close_after;
    c->ep = ep;
    c->frame = frame;
    c->hdr = frame;
    c->hlen = frame_len;
    post_cmd(&srv->rails->r[r], c);
}

void kvtcd_rail_close_ep(kvtcd_server *srv, uint32_t r, ucp_ep_h ep)
{
    post_plain(srv, r, RC_CLOSE, NULL, ep);
}

/* ---- start and stop ------------------------------------------------------------------- */

static int rail_init(struct kvtcd_rails *a, rail *r, uint32_t idx)
{
    r->all = a;
    r->idx = idx;
    r->wefd = r->cmd_efd = r->epfd = -1;
    r->yield = kvtcd_spin_yield();
    pthread_mutex_init(&r->mu, NULL);
    ucp_worker_params_t wp = {
        .field_mask = UCP_WORKER_PARAM_FIELD_THREAD_MODE,
        .thread_mode = UCS_THREAD_MODE_SINGLE,
    };
    ucs_status_t st = ucp_worker_create(a->srv->ucp, &wp, &r->w);
    if (st != UCS_OK) {
        r->w = NULL;
        KVTCD_ERROR("rails", "ucp_worker_create failed rail=%u err=\"%s\"", idx,
                    ucs_status_string(st));
        return KVTC_EIO;
    }
    ucp_am_handler_param_t ah = {
        .field_mask = UCP_AM_HANDLER_PARAM_FIELD_ID | UCP_AM_HANDLER_PARAM_FIELD_CB |
                      UCP_AM_HANDLER_PARAM_FIELD_ARG | UCP_AM_HANDLER_PARAM_FIELD_FLAGS,
        .id = KVTC_WIRE_AM_REQUEST,
        .cb = on_request,
        .arg = r,
        .flags = UCP_AM_FLAG_WHOLE_MSG | UCP_AM_FLAG_PERSISTENT_DATA,
    };
    ucp_worker_attr_t wa = {.field_mask = UCP_WORKER_ATTR_FIELD_MAX_AM_HEADER};
    if (ucp_worker_set_am_recv_handler(r->w, &ah) != UCS_OK ||
        ucp_worker_get_efd(r->w, &r->wefd) != UCS_OK ||
        ucp_worker_query(r->w, &wa) != UCS_OK) {
        KVTCD_ERROR("rails", "cannot set up the worker of rail=%u", idx);
        return KVTC_EIO;
    }
    /* A listener of its own, beside the loop's, on the same address: an
     * endpoint a client opens to a worker address gets one tcp lane and no
     * RMA lane (UCX 1.13), so its rendezvous moves by AM fragments; one
     * from HOST:PORT gets the rendezvous lanes perftest has. */
    ucp_listener_params_t lp = {
        .field_mask = UCP_LISTENER_PARAM_FIELD_SOCK_ADDR | UCP_LISTENER_PARAM_FIELD_CONN_HANDLER,
        .sockaddr = {.addr = (const struct sockaddr *)&a->listen_ss, .addrlen = a->listen_len},
        .conn_handler = {.cb = on_conn_request, .arg = r},
    };
    ucp_listener_attr_t la = {.field_mask = UCP_LISTENER_ATTR_FIELD_SOCKADDR};
    if ((st = ucp_listener_create(r->w, &lp, &r->listener)) != UCS_OK ||
        ucp_listener_query(r->listener, &la) != UCS_OK) {
        KVTCD_ERROR("rails", "cannot listen rail=%u err=\"%s\"", idx, ucs_status_string(st));
        return KVTC_EIO;
    }
    r->port = ntohs(la.sockaddr.ss_family == AF_INET6
                        ? ((const struct sockaddr_in6 *)&la.sockaddr)->sin6_port
                        : ((const struct sockaddr_in *)&la.sockaddr)->sin_port);
    /* One limit for every reply frame, whichever worker sends it. */
    if (wa.max_am_header < a->srv->max_am_header)
        a->srv->max_am_header = wa.max_am_header;
    r->cmd_efd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    r->epfd = epoll_create1(EPOLL_CLOEXEC);
    struct epoll_event e1 = {.events = EPOLLIN, .data.fd = r->wefd};
    struct epoll_event e2 = {.events = EPOLLIN, .data.fd = r->cmd_efd};
    if (r->cmd_efd < 0 || r->epfd < 0 || epoll_ctl(r->epfd, EPOLL_CTL_ADD, r->wefd, &e1) < 0 ||
        epoll_ctl(r->epfd, EPOLL_CTL_ADD, r->cmd_efd, &e2) < 0) {
        KVTCD_ERROR("rails", "cannot set up the wakeups of rail=%u err=\"%s\"", idx,
                    strerror(errno));
        return KVTC_EIO;
    }
    if (pthread_create(&r->th, NULL, rail_main, r) != 0) {
        KVTCD_ERROR("rails", "cannot start the thread of rail=%u", idx);
        return KVTC_EIO;
    }
    char name[16];
    snprintf(name, sizeof name, "kvtcd-rail%u", idx % 100000u);
    (void)pthread_setname_np(r->th, name); /* for top -H and profiles */
    r->started = 1;
    r->cpu_ok = pthread_getcpuclockid(r->th, &r->cpu) == 0;
    return 0;
}

/* After kvtcd_rails_stop joined the thread. */
static void rail_fini(rail *r)
{
    rail_cmd *c = r->cmd_head; /* queued after the stop: never run */
    while (c) {
        rail_cmd *next = c->next;
        free(c->frame);
        free(c);
        c = next;
    }
    r->cmd_head = r->cmd_tail = NULL;
    if (r->w) {
        if (r->listener) /* a start that failed before the thread ran */
            ucp_listener_destroy(r->listener);
        r->listener = NULL;
        ucp_worker_destroy(r->w);
        r->w = NULL;
    }
    if (r->epfd >= 0)
        close(r->epfd);
    if (r->cmd_efd >= 0)
        close(r->cmd_efd);
    r->epfd = r->cmd_efd = -1;
    pthread_mutex_destroy(&r->mu);
}

static void free_rails(kvtcd_server *srv)
{
    struct kvtcd_rails *a = srv->rails;
    for (uint32_t i = 0; i < a->n; i++)
        rail_fini(&a->r[i]);
    /* Events nobody will handle: their ops are freed with the others. */
    rail_evt *e = a->evt_head;
    while (e) {
        rail_evt *next = e->next;
        free(e->hdr);
        free(e);
        e = next;
    }
    pthread_mutex_destroy(&a->mu);
    free(a);
    srv->rails = NULL;
}

static void on_async_closed(uv_handle_t *h)
{
    kvtcd_server *srv = h->data;
    free_rails(srv);
}

int kvtcd_rails_start(kvtcd_server *srv, const struct sockaddr *listen, socklen_t len)
{
    uint32_t n = srv->cfg.rails;
    if (n == 0)
        return 0;
    if (len > sizeof(struct sockaddr_storage))
        return KVTC_EINVAL;
    struct kvtcd_rails *a = calloc(1, sizeof *a);
    if (!a)
        return KVTC_ENOMEM;
    a->srv = srv;
    memcpy(&a->listen_ss, listen, len);
    a->listen_len = len;
    if (a->listen_ss.ss_family == AF_INET6)
        ((struct sockaddr_in6 *)&a->listen_ss)->sin6_port = 0;
    else
        ((struct sockaddr_in *)&a->listen_ss)->sin_port = 0;
    pthread_mutex_init(&a->mu, NULL);
    srv->rails = a;
    if (uv_async_init(srv->loop, &a->async, on_events) != 0) {
        pthread_mutex_destroy(&a->mu);
        free(a);
        srv->rails = NULL;
        return KVTC_EIO;
    }
    a->async.data = a;
    a->async_open = 1;
    for (uint32_t i = 0; i < n; i++) {
        a->n = i + 1;
        int rc = rail_init(a, &a->r[i], i);
        if (rc < 0) {
            kvtcd_rails_stop(srv);
            return rc;
        }
    }
    KVTCD_INFO("rails", "started rails=%u", n);
    return 0;
}

void kvtcd_rails_stop(kvtcd_server *srv)
{
    struct kvtcd_rails *a = srv->rails;
    if (!a || !a->async_open)
        return;
    /* Threads first: none may signal the handle once it is closing. */
    for (uint32_t i = 0; i < a->n; i++) {
        rail *r = &a->r[i];
        if (!r->started)
            continue;
        rail_cmd *c = calloc(1, sizeof *c);
        if (c) {
            c->kind = RC_STOP;
            post_cmd(r, c);
        } else {
            atomic_store(&r->stopping, 1); /* seen within a tick */
        }
        pthread_join(r->th, NULL);
        r->started = 0;
    }
    a->async_open = 0;
    a->async.data = srv;
    uv_close((uv_handle_t *)&a->async, on_async_closed);
}

uint32_t kvtcd_rails_count(const kvtcd_server *srv)
{
    return srv->rails && srv->rails->async_open ? srv->rails->n : 0;
}

uint16_t kvtcd_rails_port(const kvtcd_server *srv, uint32_t r)
{
    return srv->rails->r[r].port;
}

double kvtcd_rails_cpu_seconds(const kvtcd_server *srv, uint32_t r)
{
    const rail *rl = &srv->rails->r[r];
    struct timespec ts;
    if (!rl->started || !rl->cpu_ok || clock_gettime(rl->cpu, &ts) != 0)
        return -1;
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}
