/* rail_threads.c - a thread of its own for each rail's UCX worker.
 *
 * Over UCX payloads the thread that progresses a worker copies every byte
 * that worker moves (tcp: sendmsg, recv), so one client thread bounds a
 * lone connection's puts however many rails kvtcd offers
 * (docs/perf-notes.md, "Rails"). Here each rail's endpoint lives on a
 * worker of its own (UCS_THREAD_MODE_MULTI), progressed by a thread of its
 * own. The connection's thread still does everything else: it posts sends
 * and receives on a rail's worker itself (the worker's lock orders them
 * with the rail thread's progress), and it alone touches operations and
 * the connection. What UCX calls back on a rail thread (completions,
 * replies, endpoint errors) becomes an event in the connection's inbox, a
 * mutex-guarded list, and a ucp_worker_signal of the connection's worker
 * (its fd wakes); kvtc_progress runs the events (kvtc__rails_drain).
 *
 * A rail thread polls while requests it carries are in flight (UCX 1.13
 * has tcp work that does not wake the event fd) and a little after its
 * last event, then sleeps on its worker's fd; posting a request kicks it
 * awake (kvtc__rail_kick).
 *
 * What UCX hands a reply handler to keep must not be given back from
 * another thread before that handler has returned: UCX still touches it.
 * So kept reply data (eager data UCX reassembled, a rendezvous descriptor)
 * goes back to the rail thread once the connection's thread is done with
 * it, and the rail thread releases it between progress calls (rail_drop).
 * Eager data UCX does not let us keep, or too small to be worth the trip,
 * is copied into the event. Receiving a rendezvous descriptor
 * (ucp_am_recv_data_nbx) is safe from the connection's thread: it takes
 * the worker's lock, which the rail thread holds through each progress
 * call.
 *
 * Landings. A single-chunk get on a rail registers its buffer before its
 * request goes out (kvtc__rail_land). Its reply's handler takes that
 * landing, and the rail thread copies the eager bytes straight into the
 * buffer, checksumming them: after the progress call where UCX lets us
 * keep the bytes (outside the worker's lock, which the connection's
 * thread takes to post), else in the handler. Then the event carries only
 * the header: no hop to the connection's thread and back before the copy
 * (docs/perf-notes.md, "Landings"). The connection's thread checks the
 * reply as ever and finds the bytes there. An op done before its reply
 * came cancels its landing, waiting while the rail thread is still
 * writing into its buffer. */
#include <poll.h>
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "fifo.h"
#include "internal.h"
#include "wire.h"

#define RAIL_BUSY_SPIN_NS 100000000ull /* poll this long after the last
                                          event while requests are in flight */
#define RAIL_IDLE_SPIN_NS 200000ull    /* and this long with none: the next
                                          step of an operation usually comes
                                          within it, a sleep costs a wakeup */
#define RAIL_TICK_MS 50                /* longest sleep: UCX's deferred work */
#define RAIL_PROGRESS_BUDGET 64        /* progress calls between checks */
/* Eager reply data UCX lets us keep is kept from this size on: copying it
 * into the event cost the rail thread a copy and, at 256 KiB, the page
 * faults of a fresh buffer a reply (docs/perf-notes.md, "Rail threads"). */
#define RAIL_KEEP_MIN 32768u
/* Gets land on the rail thread from this size of buffer on: below it the
 * copy into the event is as cheap as the parse. */
#define RAIL_LAND_MIN 32768u
/* Replies waiting for the connection's thread. More than this is not an
 * answer to our requests: the connection fails rather than grow. */
#define RAIL_MAX_REPLIES 65536u

struct kvtc__rail {
    kvtc_conn *c;
    ucp_worker_h worker;
    int efd;
    pthread_t thread;
    int started;
    atomic_int stop;
    atomic_int sleeping;
    atomic_uint kicks;   /* requests posted by the connection's thread */
    atomic_int pending;  /* of those, still in flight */
    pthread_mutex_t mu;
    struct rail_drop *drops; /* descriptors for the thread to release */
    atomic_int has_drops;
    struct rail_copy *copies, *copies_tail; /* kept get data to copy */
    atomic_int has_copies;
    struct kvtc__landing *lands; /* gets whose replies may land here */
    atomic_int n_lands;
    /* Replies landing on this thread after the progress call that got
     * them (r's thread only). */
    struct rail_land_job *lands_head, *lands_tail;
};

struct rail_land_job {
    struct rail_land_job *next;
    struct kvtc__landing *l;
    void *desc;      /* UCX's, kept: released once copied */
    const void *src;
    size_t len;
    struct kvtc__rail_ev *ev; /* the reply's, handed over once copied */
};

struct rail_drop {
    struct rail_drop *next;
    void *desc;
};

/* A get reply's eager data the rail thread kept, to copy into its op's
 * destinations there (kvtc__rail_copy). */
struct rail_copy {
    struct rail_copy *next;
    struct kvtc__op *op;
    void *desc;
    const void *src;
    kvtc__rail_done_fn done;
};

enum rail_ev_kind { EV_DONE = 1, EV_REPLY, EV_EP_ERROR };

struct kvtc__rail_ev {
    struct kvtc__rail_ev *next;
    int kind;
    struct kvtc__rail *rail;
    /* EV_DONE: a request's completion, for done() (rail unset) */
    kvtc__rail_done_fn done;
    void *request;
    ucs_status_t status;
    size_t length;
    void *user_data;
    /* EV_EP_ERROR */
    ucp_ep_h ep;
    /* EV_REPLY: the header (copied), the data (copied, or kept: eager
     * data or a rendezvous descriptor UCX holds until released; NULL
     * when it landed) */
    void *data;
    int rndv;
    int kept;  /* eager data of UCX's: back to the rail thread after use */
    Kvtc__Wire__Reply *rep; /* it landed: its header, unpacked already */
    size_t hlen;
    unsigned char hdr[];
};

struct kvtc__rail_inbox {
    pthread_mutex_t mu;
    struct kvtc__rail_ev *head, *tail;
    size_t n_replies;
    int overflow; /* replies dropped: the connection fails */
};

/* ---- The rail thread ------------------------------------------------------ */

/* An event must not be lost: it is the only news of a request UCX is done
 * with. Without memory, wait for some rather than fail an op from here. */
static struct kvtc__rail_ev *ev_alloc(void)
{
    struct kvtc__rail_ev *ev;
    while (!(ev = calloc(1, sizeof *ev)))
        usleep(1000);
    return ev;
}

static int inbox_push(kvtc_conn *c, struct kvtc__rail_ev *ev)
{
    struct kvtc__rail_inbox *in = c->rail_inbox;
    int ok = 1;
    pthread_mutex_lock(&in->mu);
    if (ev->kind == EV_REPLY) {
        if (in->n_replies >= RAIL_MAX_REPLIES)
            ok = 0, in->overflow = 1;
        else
            in->n_replies++;
    }
    if (ok)
        KVTC_FIFO_PUSH(in->head, in->tail, ev, next);
    pthread_mutex_unlock(&in->mu);
    ucp_worker_signal(c->worker); /* any thread may */
    return ok;
}

/* The rail whose thread this is (NULL on the connection's thread, which
 * progresses a rail's worker itself only to close it). */
static _Thread_local struct kvtc__rail *this_rail;

void kvtc__rail_defer(kvtc_conn *c, kvtc__rail_done_fn done, void *request,
                      ucs_status_t status, size_t length, void *user_data)
{
    if (this_rail)
        atomic_fetch_sub(&this_rail->pending, 1);
    struct kvtc__rail_ev *ev = ev_alloc();
    *ev = (struct kvtc__rail_ev){.kind = EV_DONE, .done = done, .request = request,
                                 .status = status, .length = length, .user_data = user_data};
    inbox_push(c, ev);
}

/* The landing of reply `id` (taken off the list), or NULL. */
static struct kvtc__landing *land_take(struct kvtc__rail *r, uint64_t id)
{
    pthread_mutex_lock(&r->mu);
    struct kvtc__landing **pp = &r->lands, *l;
    while ((l = *pp) && l->id != id)
        pp = &l->next;
    if (l) {
        *pp = l->next;
        l->next = NULL;
        atomic_fetch_sub(&r->n_lands, 1);
        atomic_store(&l->state, KVTC__LAND_COPYING);
    }
    pthread_mutex_unlock(&r->mu);
    return l;
}

/* Whether rep answers l with exactly one found raw chunk of length bytes,
 * checksummed, that fits: what get_plan (ops.c) would put in l->buf. */
static int land_fits(const struct kvtc__landing *l, const Kvtc__Wire__Reply *rep,
                     size_t length)
{
    if (rep->status != KVTC__WIRE__STATUS__OK || rep->body_case != KVTC__WIRE__REPLY__BODY_GET ||
        !rep->get || rep->get->n_results != 1 || (rep->get->has_local && rep->get->local))
        return 0;
    const Kvtc__Wire__GetResult *res = rep->get->results[0];
    const Kvtc__Wire__ChunkMeta *m = res->meta;
    return res->status == KVTC__WIRE__STATUS__OK && m && m->has_checksum &&
           m->size == length && length <= l->cap &&
           (!m->key.len || (m->key.len == KVTC_KEY_BYTES && !memcmp(m->key.data, l->key, KVTC_KEY_BYTES))) &&
           (!m->has_encoding || m->encoding == KVTC__WIRE__ENCODING__RAW);
}

/* The landing that reply (header, length bytes of eager data) fits, taken
 * off r's list (COPYING), with the header unpacked (*rep_out, the
 * caller's to free), or NULL. */
static struct kvtc__landing *land_match(struct kvtc__rail *r, const void *header,
                                        size_t header_length, size_t length,
                                        Kvtc__Wire__Reply **rep_out)
{
    size_t msg_len = 0;
    int in_data = 0;
    Kvtc__Wire__Reply *rep = NULL;
    if (length < RAIL_LAND_MIN ||
        kvtc_wire_am_split(header, header_length, length, &msg_len, &in_data) || in_data ||
        kvtc_wire_unpack_reply(header, header_length, &rep))
        return NULL; /* the connection's thread says what is wrong */
    struct kvtc__landing *l = land_take(r, rep->id);
    if (l && !land_fits(l, rep, length)) {
        atomic_store(&l->state, KVTC__LAND_NONE); /* the usual way */
        l = NULL;
    }
    if (l)
        *rep_out = rep; /* the connection's thread need not parse it again */
    else
        kvtc_wire_reply_free(rep);
    return l;
}

static void ev_free(struct kvtc__rail_ev *ev)
{
    if (ev->rep)
        kvtc_wire_reply_free(ev->rep);
    free(ev);
}

/* Copy and checksum the reply's bytes into l's buffer; then l is DONE
 * (the bytes before the state, the state before the reply's event). */
static void land_copy(struct kvtc__landing *l, const void *src, size_t length)
{
    l->len = length;
    l->summed = kvtc_wire_copy_checksum(l->buf, src, length, &l->sum) == 0;
    if (!l->summed)
        memcpy(l->buf, src, length);
    atomic_store(&l->state, KVTC__LAND_DONE);
}

/* Run the landings r's reply handler kept (on r's thread, between
 * progress calls: not under the worker's lock, which the connection's
 * thread takes to post), then hand their replies over. */
static void run_lands(struct kvtc__rail *r)
{
    struct rail_land_job *j = r->lands_head;
    r->lands_head = r->lands_tail = NULL;
    while (j) {
        struct rail_land_job *next = j->next;
        land_copy(j->l, j->src, j->len);
        ucp_am_data_release(r->worker, j->desc);
        if (!inbox_push(r->c, j->ev))
            ev_free(j->ev);
        free(j);
        j = next;
    }
}

/* The reply handler of a rail's worker: the reply waits for the
 * connection's thread. A rendezvous descriptor is kept (UCS_INPROGRESS), and
 * so is large eager data UCX lets us keep (UCX 1.13 hands multi-fragment
 * replies over reassembled); the connection's thread gives both back
 * through rail_drop, never by itself (kept multi-fragment replies released
 * from that thread crashed UCX 1.13's reassembly of later ones in
 * ucp_am_long_middle_handler). Other eager data is copied. A reply that
 * lands (kvtc__rail_land) goes into its op's buffer instead: after this
 * progress call where UCX lets us keep the bytes (run_lands), else here. */
static ucs_status_t rail_reply_cb(void *arg, const void *header, size_t header_length,
                                  void *data, size_t length, const ucp_am_recv_param_t *param)
{
    struct kvtc__rail *r = arg;
    int rndv = (param->recv_attr & UCP_AM_RECV_ATTR_FLAG_RNDV) != 0;
    int keepable = !rndv && (param->recv_attr & UCP_AM_RECV_ATTR_FLAG_DATA);
    Kvtc__Wire__Reply *rep = NULL;
    struct kvtc__landing *land = !rndv && atomic_load(&r->n_lands) > 0
                                     ? land_match(r, header, header_length, length, &rep)
                                     : NULL;
    int landed = land != NULL;
    int kept = keepable && !landed && length >= RAIL_KEEP_MIN;
    size_t copy = rndv || kept || landed ? 0 : length;
    struct kvtc__rail_ev *ev = malloc(sizeof *ev + header_length + copy);
    if (!ev && land) {
        atomic_store(&land->state, KVTC__LAND_NONE); /* the op fails below */
        land = NULL;
        kvtc_wire_reply_free(rep);
    }
    if (!ev) {
        pthread_mutex_lock(&r->c->rail_inbox->mu);
        r->c->rail_inbox->overflow = 1;
        pthread_mutex_unlock(&r->c->rail_inbox->mu);
        ucp_worker_signal(r->c->worker);
        return UCS_OK;
    }
    *ev = (struct kvtc__rail_ev){.kind = EV_REPLY, .rail = r, .length = length, .rndv = rndv,
                                 .kept = kept, .rep = rep, .hlen = header_length};
    memcpy(ev->hdr, header, header_length);
    ev->data = landed ? NULL : data;
    if (copy) {
        ev->data = ev->hdr + header_length;
        memcpy(ev->data, data, copy);
    }
    if (land) {
        /* Copied outside the worker's lock where UCX lets us keep the
         * bytes and this is r's thread (docs/perf-notes.md, "Landings"). */
        struct rail_land_job *j = keepable && this_rail == r ? malloc(sizeof *j) : NULL;
        if (j) {
            *j = (struct rail_land_job){.l = land, .desc = data, .src = data, .len = length, .ev = ev};
            KVTC_FIFO_PUSH(r->lands_head, r->lands_tail, j, next);
            return UCS_INPROGRESS;
        }
        land_copy(land, data, length);
    }
    if (!inbox_push(r->c, ev)) {
        ev_free(ev);
        return UCS_OK;
    }
    return rndv || kept ? UCS_INPROGRESS : UCS_OK;
}

/* Release the descriptors the connection dropped (on the rail's thread,
 * or once it stopped). */
static void release_drops(struct kvtc__rail *r)
{
    pthread_mutex_lock(&r->mu);
    struct rail_drop *d = r->drops;
    r->drops = NULL;
    atomic_store(&r->has_drops, 0);
    pthread_mutex_unlock(&r->mu);
    while (d) {
        struct rail_drop *next = d->next;
        ucp_am_data_release(r->worker, d->desc);
        free(d);
        d = next;
    }
}

/* Run the copies the connection handed r (on r's thread, or once it
 * stopped): the op waits for them (recv_pending), so its destinations are
 * ours to write until done() runs on the connection's thread. */
static void run_copies(struct kvtc__rail *r)
{
    pthread_mutex_lock(&r->mu);
    struct rail_copy *j = r->copies;
    r->copies = r->copies_tail = NULL;
    atomic_store(&r->has_copies, 0);
    pthread_mutex_unlock(&r->mu);
    while (j) {
        struct rail_copy *next = j->next;
        kvtc__get_copy(j->op, j->src);
        ucp_am_data_release(r->worker, j->desc);
        if (this_rail != r)
            atomic_fetch_sub(&r->pending, 1); /* kvtc__rail_defer does on r's */
        kvtc__rail_defer(r->c, j->done, NULL, UCS_OK, 0, j->op);
        free(j);
        j = next;
    }
}

void kvtc__rail_err_handler(void *arg, ucp_ep_h ep, ucs_status_t status)
{
    struct kvtc__rail *r = arg;
    struct kvtc__rail_ev *ev = ev_alloc();
    *ev = (struct kvtc__rail_ev){.kind = EV_EP_ERROR, .rail = r, .ep = ep, .status = status};
    inbox_push(r->c, ev);
}

static void *rail_main(void *arg)
{
    struct kvtc__rail *r = arg;
    this_rail = r;
    uint64_t last = kvtc__now_ns();
    unsigned seen = atomic_load(&r->kicks);
    for (;;) {
        int worked = 0;
        /* A copy waiting holds up a reply already here: it goes first. */
        for (int i = 0; i < RAIL_PROGRESS_BUDGET && !atomic_load(&r->has_copies) &&
                        !r->lands_head && ucp_worker_progress(r->worker);
             i++)
            worked = 1;
        if (r->lands_head) {
            run_lands(r);
            worked = 1;
        }
        if (atomic_load(&r->has_drops))
            release_drops(r);
        if (atomic_load(&r->has_copies)) {
            run_copies(r);
            worked = 1;
        }
        uint64_t now = kvtc__now_ns();
        if (worked) {
            last = now;
            continue;
        }
        if (atomic_load(&r->stop))
            break;
        unsigned k = atomic_load(&r->kicks);
        if (k != seen) {
            seen = k;
            last = now;
        }
        uint64_t window = atomic_load(&r->pending) > 0 ? RAIL_BUSY_SPIN_NS : RAIL_IDLE_SPIN_NS;
        if (now - last < window) {
            sched_yield(); /* let the connection's thread take the worker */
            continue;
        }
        /* Sleep unless a kick came since we looked: the connection's
         * thread signals only a rail it sees sleeping. */
        atomic_store(&r->sleeping, 1);
        if (atomic_load(&r->kicks) == seen && !atomic_load(&r->stop)) {
            ucs_status_t st = ucp_worker_arm(r->worker);
            if (st == UCS_OK) {
                struct pollfd p = {.fd = r->efd, .events = POLLIN};
                (void)poll(&p, 1, RAIL_TICK_MS);
            } else if (st != UCS_ERR_BUSY) {
                usleep(1000);
            }
        }
        atomic_store(&r->sleeping, 0);
        last = kvtc__now_ns();
    }
    return NULL;
}

/* ---- The connection's side ------------------------------------------------- */

/* Rail threads of this process's connections (reserved). */
static atomic_uint live_threads;

/* How many rail threads a process runs by default: as kvtcd's --rails
 * auto, a quarter of the CPUs, none below 8. More would take the cores
 * the connections' own threads and a local daemon need: 16 connections
 * of 4 rail threads each on a 16-CPU host ran 1 MiB gets at twice the
 * median latency of connections without (docs/perf-notes.md). */
static uint32_t thread_budget(void)
{
    long n = sysconf(_SC_NPROCESSORS_ONLN);
    return n < 8 ? 0 : (uint32_t)(n / 4);
}

uint32_t kvtc__rail_threads_reserve(const kvtc_conn_params *params, uint32_t want)
{
    int mode = -1; /* -1 auto, 0 off, 1 on */
    if (params && (params->field_mask & KVTC_CONN_PARAM_FIELD_RAILS)) {
        if (params->rails == KVTC_RAILS_THREADS)
            mode = 1;
        else if (params->rails == KVTC_RAILS_NO_THREADS)
            mode = 0;
    }
    const char *e = getenv("KVTC_RAIL_THREADS");
    if (mode < 0 && e && *e)
        mode = strcmp(e, "0") && strcmp(e, "off");
    if (mode == 0 || want == 0)
        return 0;
    unsigned cur = atomic_load(&live_threads);
    do {
        if (mode < 0 && cur + want > thread_budget())
            return 0; /* all of a connection's rails or none */
    } while (!atomic_compare_exchange_weak(&live_threads, &cur, cur + want));
    return want;
}

void kvtc__rail_threads_unreserve(uint32_t n)
{
    atomic_fetch_sub(&live_threads, n);
}

static void rail_free(struct kvtc__rail *r)
{
    /* Landings still listed belong to ops in flight: they no longer
     * name r (its thread has stopped). */
    for (struct kvtc__landing *l = r->lands, *next; l; l = next) {
        next = l->next;
        l->next = NULL;
        atomic_store(&l->state, KVTC__LAND_NONE);
    }
    r->lands = NULL;
    if (r->worker) {
        release_drops(r);
        ucp_worker_destroy(r->worker);
    }
    pthread_mutex_destroy(&r->mu);
    free(r);
}

int kvtc__rail_start(kvtc_conn *c, struct kvtc__rail **out)
{
    *out = NULL;
    if (!c->rail_inbox) {
        struct kvtc__rail_inbox *in = calloc(1, sizeof *in);
        if (!in)
            return KVTC_ENOMEM;
        pthread_mutex_init(&in->mu, NULL);
        c->rail_inbox = in;
    }
    struct kvtc__rail *r = calloc(1, sizeof *r);
    if (!r)
        return KVTC_ENOMEM;
    r->c = c;
    r->efd = -1;
    pthread_mutex_init(&r->mu, NULL);
    ucp_worker_params_t wp = {
        .field_mask = UCP_WORKER_PARAM_FIELD_THREAD_MODE,
        .thread_mode = UCS_THREAD_MODE_MULTI,
    };
    ucp_worker_attr_t wa = {.field_mask = UCP_WORKER_ATTR_FIELD_THREAD_MODE |
                                          UCP_WORKER_ATTR_FIELD_MAX_AM_HEADER};
    if (ucp_worker_create(c->ctx, &wp, &r->worker) != UCS_OK) {
        r->worker = NULL;
        goto fail;
    }
    /* A UCX built without thread support would hand out a single-thread
     * worker: then the rails stay on the connection's thread. */
    if (ucp_worker_query(r->worker, &wa) != UCS_OK || wa.thread_mode != UCS_THREAD_MODE_MULTI ||
        ucp_worker_get_efd(r->worker, &r->efd) != UCS_OK ||
        kvtc__set_reply_handler(r->worker, rail_reply_cb, r) != UCS_OK)
        goto fail;
    if (wa.max_am_header < c->max_am_header)
        c->max_am_header = wa.max_am_header;
    if (pthread_create(&r->thread, NULL, rail_main, r) != 0)
        goto fail;
    (void)pthread_setname_np(r->thread, "kvtc-rail"); /* for top -H and profiles */
    r->started = 1;
    *out = r;
    return 0;
fail:
    rail_free(r);
    return KVTC_EIO;
}

ucp_worker_h kvtc__rail_worker(const struct kvtc__rail *r)
{
    return r->worker;
}

void kvtc__rail_kick(struct kvtc__rail *r, int in_flight)
{
    if (in_flight)
        atomic_fetch_add(&r->pending, 1);
    atomic_fetch_add(&r->kicks, 1);
    if (atomic_load(&r->sleeping))
        ucp_worker_signal(r->worker);
}

/* The connection is done with desc, reply data r's thread kept. */
static void rail_drop(struct kvtc__rail *r, void *desc)
{
    struct rail_drop *d;
    while (!(d = malloc(sizeof *d)))
        usleep(1000); /* see ev_alloc */
    d->desc = desc;
    pthread_mutex_lock(&r->mu);
    d->next = r->drops;
    r->drops = d;
    atomic_store(&r->has_drops, 1);
    pthread_mutex_unlock(&r->mu);
    kvtc__rail_kick(r, 0);
}

int kvtc__rail_copy(struct kvtc__rail *r, struct kvtc__op *op, void *desc, const void *src,
                    kvtc__rail_done_fn done)
{
    if (!r->started)
        return KVTC_ECANCELED; /* stopped (disconnecting): nobody would run it */
    struct rail_copy *j = malloc(sizeof *j);
    if (!j)
        return KVTC_ENOMEM;
    *j = (struct rail_copy){.op = op, .desc = desc, .src = src, .done = done};
    pthread_mutex_lock(&r->mu);
    KVTC_FIFO_PUSH(r->copies, r->copies_tail, j, next);
    atomic_store(&r->has_copies, 1);
    pthread_mutex_unlock(&r->mu);
    kvtc__rail_kick(r, 1); /* its done() comes from r's thread */
    return 0;
}

void kvtc__rail_land(struct kvtc__rail *r, struct kvtc__op *op)
{
    struct kvtc__landing *l = &op->land;
    const kvtc_get_item *it = &op->out.get[0];
    if (!r->started || it->capacity < RAIL_LAND_MIN)
        return;
    l->rail = r;
    l->id = op->id;
    l->buf = it->buf;
    l->cap = it->capacity;
    memcpy(l->key, it->key.bytes, KVTC_KEY_BYTES);
    atomic_store(&l->state, KVTC__LAND_WAITING);
    pthread_mutex_lock(&r->mu);
    l->next = r->lands;
    r->lands = l;
    atomic_fetch_add(&r->n_lands, 1);
    pthread_mutex_unlock(&r->mu);
}

void kvtc__rail_land_cancel(struct kvtc__op *op)
{
    struct kvtc__landing *l = &op->land;
    /* Only r's thread moves the state, and only from WAITING: NONE and
     * DONE are final, and r is alive while the state is WAITING
     * (rail_free clears its list). */
    if (atomic_load(&l->state) == KVTC__LAND_WAITING) {
        struct kvtc__rail *r = l->rail;
        pthread_mutex_lock(&r->mu);
        if (atomic_load(&l->state) == KVTC__LAND_WAITING) {
            struct kvtc__landing **pp = &r->lands;
            while (*pp && *pp != l)
                pp = &(*pp)->next;
            if (*pp) {
                *pp = l->next;
                atomic_fetch_sub(&r->n_lands, 1);
            }
            l->next = NULL;
            atomic_store(&l->state, KVTC__LAND_NONE);
        }
        pthread_mutex_unlock(&r->mu);
    }
    while (atomic_load(&l->state) == KVTC__LAND_COPYING)
        sched_yield(); /* a copy of at most one reply */
}

static void rail_stop(struct kvtc__rail *r)
{
    if (!r->started)
        return;
    atomic_store(&r->stop, 1);
    ucp_worker_signal(r->worker);
    pthread_join(r->thread, NULL);
    r->started = 0;
    run_lands(r);  /* kept by its last progress call */
    run_copies(r); /* posted after its last look: their ops wait for them */
}

static void ev_run(kvtc_conn *c, struct kvtc__rail_ev *ev)
{
    struct kvtc__rail *r = ev->rail;
    switch (ev->kind) {
    case EV_DONE:
        ev->done(ev->request, ev->status, ev->length, ev->user_data);
        break;
    case EV_REPLY: {
        c->am_rail = r;
        c->am_kept = ev->kept ? ev->data : NULL;
        ucs_status_t ret;
        if (ev->rep) {
            ret = kvtc__reply_dispatch(c, ev->rep, ev->length); /* frees it */
            ev->rep = NULL;
        } else {
            ret = kvtc__reply_handle(c, ev->hdr, ev->hlen, ev->data, ev->length, ev->rndv);
        }
        if ((ev->rndv && ret != UCS_INPROGRESS) || c->am_kept)
            rail_drop(r, ev->data); /* kept eager data no copy took: consumed */
        c->am_rail = NULL;
        c->am_kept = NULL;
        break;
    }
    case EV_EP_ERROR:
        kvtc__rail_ep_failed(c, ev->ep, ev->status);
        break;
    }
}

int kvtc__rails_drain(kvtc_conn *c)
{
    struct kvtc__rail_inbox *in = c->rail_inbox;
    if (!in)
        return 0;
    pthread_mutex_lock(&in->mu);
    struct kvtc__rail_ev *ev = in->head;
    in->head = in->tail = NULL;
    in->n_replies = 0;
    int overflow = in->overflow;
    pthread_mutex_unlock(&in->mu);
    int n = 0;
    while (ev) {
        struct kvtc__rail_ev *next = ev->next;
        ev_run(c, ev);
        ev_free(ev);
        ev = next;
        n++;
    }
    if (overflow)
        kvtc__conn_fail(c, KVTC_EPROTO, "the daemon sent more replies on a rail than we "
                                        "could hold");
    return n;
}

int kvtc__rails_busy(const kvtc_conn *c)
{
    for (uint32_t i = 0; i < KVTC__MAX_RAILS; i++)
        if (c->rail_thr[i] && atomic_load(&c->rail_thr[i]->pending) > 0)
            return 1;
    return 0;
}

int kvtc__rails_ready(kvtc_conn *c)
{
    struct kvtc__rail_inbox *in = c->rail_inbox;
    if (!in)
        return 0;
    pthread_mutex_lock(&in->mu);
    int ready = in->head != NULL || in->overflow;
    pthread_mutex_unlock(&in->mu);
    return ready;
}

void kvtc__rail_release(kvtc_conn *c, struct kvtc__rail *r)
{
    if (!r)
        return;
    rail_stop(r);
    kvtc__rails_drain(c); /* its events still name it */
    rail_free(r);
}

void kvtc__rails_stop(kvtc_conn *c)
{
    for (uint32_t i = 0; i < KVTC__MAX_RAILS; i++)
        if (c->rail_thr[i])
            rail_stop(c->rail_thr[i]);
}

void kvtc__rails_free(kvtc_conn *c)
{
    kvtc__rails_stop(c);
    struct kvtc__rail_inbox *in = c->rail_inbox;
    /* Events never run: what UCX kept for them goes back with the rest of
     * their rail's before its worker goes. */
    for (struct kvtc__rail_ev *ev = in ? in->head : NULL, *next; ev; ev = next) {
        next = ev->next;
        if (ev->kind == EV_REPLY && (ev->kept || ev->rndv))
            rail_drop(ev->rail, ev->data);
        ev_free(ev);
    }
    for (uint32_t i = 0; i < KVTC__MAX_RAILS; i++)
        if (c->rail_thr[i]) {
            rail_free(c->rail_thr[i]);
            c->rail_thr[i] = NULL;
        }
    kvtc__rail_threads_unreserve(c->rail_thread_quota);
    c->rail_thread_quota = 0;
    if (!in)
        return;
    pthread_mutex_destroy(&in->mu);
    free(in);
    c->rail_inbox = NULL;
}
