/* internal.h - libkvtc's private types, shared by its few files. */
#ifndef KVTC_CLIENT_INTERNAL_H
#define KVTC_CLIENT_INTERNAL_H

#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>
#include <ucp/api/ucp.h>

#include "kvtc.h"
#include "wire.h"

enum kvtc__op_kind {
    KVTC__OP_HELLO,
    KVTC__OP_BIND,  /* Hello binding the bulk endpoint to the session */
    KVTC__OP_PUT,
    KVTC__OP_GET,
    KVTC__OP_LOOKUP,
    KVTC__OP_DELETE,
    KVTC__OP_PIN,
    KVTC__OP_STATS,
    KVTC__OP_PROFILE
};

/* Longest wait for kvtcd to finish with our memory when a connection with
 * local operations in flight fails (kvtc__local_drain). */
#define KVTC__LOCAL_DRAIN_MS 2000u

/* Default of KVTC_LOCAL_CHECK: whether libkvtc or kvtcd verifies the hits
 * of local gets (see kvtc__local_check_wanted). */
#define KVTC__LOCAL_CHECK_CLIENT_DEFAULT 0

/* Default KVTC_LOCAL_MIN: payloads from this size go by the local path. */
#define KVTC__LOCAL_MIN_DEFAULT 0u

/* Largest profile libkvtc receives (the daemon's own limit). */
#define KVTC__PROFILE_MAX_BYTES (1ull << 30)

/* Where one found chunk of a get reply lands, decided when the reply
 * arrives: the caller's buffer, a pinned staging slice (device buffer
 * without UCX CUDA support) or the discard scratch (buffer too small). */
struct kvtc__get_dest {
    void *at;
    size_t len;
    size_t item;      /* index into the op's items */
    int staged;       /* copy at to items[item].buf (device) at completion */
    int device;       /* the item's buffer is device memory */
    int has_checksum;
    uint64_t checksum; /* XXH3-64 the daemon announced */
    int summed;        /* sum holds the checksum of the bytes at `at` */
    uint64_t sum;
    int container;     /* a container in op->ctr_buf, decoded into the
                          item's buffer at completion (KVTC_WANT_KVTC) */
};

/* Where a single-chunk get on a threaded rail may land straight from its
 * rail thread's reply handler (rail_threads.c, "Landings"): what that
 * thread needs of the op, copied at submit, and what it did. */
enum kvtc__land_state {
    KVTC__LAND_NONE = 0,  /* not on a rail's list */
    KVTC__LAND_WAITING,   /* on it: the rail thread may take it */
    KVTC__LAND_COPYING,   /* taken: the rail thread writes buf */
    KVTC__LAND_DONE       /* the reply's bytes are in buf */
};
struct kvtc__landing {
    struct kvtc__landing *next; /* on its rail's list (the rail's lock) */
    struct kvtc__rail *rail;
    uint64_t id;                /* the request's */
    void *buf;                  /* the item's host buffer */
    size_t cap;
    uint8_t key[KVTC_KEY_BYTES];
    atomic_int state;           /* enum kvtc__land_state */
    size_t len;                 /* DONE: bytes in buf */
    int summed;                 /* DONE: sum is their XXH3-64 */
    uint64_t sum;
};

/* An internal fetch of a profile a get needs to decode (profile.c). */
struct kvtc__fetch {
    struct kvtc__op *parent;  /* the get waiting for it */
    uint64_t id;
    uint8_t *buf;             /* the .kvtcp bytes, malloc'd on reply */
    size_t len;
};

/* One operation, from submit to the callback. It completes when its send
 * finished (UCX no longer reads the caller's buffers), its reply was
 * handled and any payload receive finished (UCX no longer writes them). */
struct kvtc__op {
    struct kvtc__op *next, *prev; /* in flight, or done (next only) */
    kvtc_conn *conn;
    enum kvtc__op_kind kind;
    uint64_t id;
    int status;
    int send_pending, reply_pending, recv_pending;
    int replied;                  /* the reply was handled */
    int per_item;                 /* the reply carried one status per item:
                                     those are authoritative, even when the
                                     request as a whole failed */
    uint64_t deadline_ns;         /* 0: none */
    kvtc_done_cb cb;
    void *arg;
    void *frame;                  /* packed request, freed at completion */
    size_t frame_len;
    ucp_dt_iov_t *iov;            /* put payload or get destinations */
    ucp_dt_iov_t *hdr_iov;        /* big frame: message + payload as data */
    size_t iov_n;
    void *staging;                /* pinned host memory (CUDA) */
    void *scratch;                /* discard target of oversize get chunks */
    struct kvtc__get_dest *dests;
    size_t n_dests;
    uint32_t want;                /* GET: the wire want (0 RAW, 1 KVTC) */
    uint8_t *ctr_buf;             /* GET: containers to decode here */
    int fetched;                  /* GET: profiles were fetched once */
    int waiting;                  /* GET: profile fetches outstanding */
    int local;                    /* PUT, GET: bytes by the local path */
    int local_check;              /* GET: we asked to check its hits here */
    uint64_t t_sub, t_rep;        /* KVTC_TRACE (trace.c): submitted, reply
                                     handled (0 when not traced) */
    uint64_t t_bulk;              /* KVTC_TRACE: its UCX send, or its
                                     rendezvous receive, completed (0: none) */
    struct kvtc__put_later *later; /* PUT: its request, waiting for the
                                     checker's checksums (checker.c) */
    /* A request whose payload goes by rendezvous waits here while another
     * one's is sent (conn.c, "one bulk send at a time"). */
    int bulk_send;
    ucp_ep_h ep;                  /* where its request goes: a rail, or NULL
                                     for kvtc__send_ep (conn.c, "Rails") */
    uint32_t stream;              /* 1 + its rail, 0: the usual endpoint */
    struct kvtc__rail *rail;      /* its rail's worker and thread, when the
                                     rail has them (rail_threads.c) */
    int land_ok;                  /* GET: may land on its rail thread */
    struct kvtc__landing land;
    struct kvtc__op *sendq_next;
    const void *q_hdr, *q_data;
    size_t q_hlen, q_count;
    ucp_request_param_t q_prm;
    size_t n;                     /* items / keys */
    union {
        kvtc_put_item *put;
        kvtc_get_item *get;
        struct { size_t *hits; uint32_t *tiers; } lookup;
        int *statuses;
        kvtc_stats *stats;
        struct {
            int op;                    /* Kvtc__Wire__ProfileOp */
            kvtc_profile_info *infos;  /* LIST, UPLOAD */
            size_t max;
            size_t *n;                 /* LIST */
            void *buf;                 /* GET */
            size_t cap;
            size_t *size;
            struct kvtc__fetch *fetch; /* GET for a decode: bytes go here */
        } prof;
    } out;
};

#define KVTC__MAX_RAILS 16u

struct kvtc_conn {
    ucp_context_h ctx;
    ucp_worker_h worker;
    ucp_ep_h ep;                /* HOST:PORT (sockaddr): TCP lanes only */
    /* To the daemon's worker address (shared memory when local): requests
     * go there once bound. The daemon watches both; either failing fails
     * the connection. */
    ucp_ep_h bulk_ep;
    int bulk_state;             /* enum kvtc__bulk_state */
    int bulk_flushed;           /* 0 pending, 1 done, -1 failed */
    void *peer_addr;            /* HelloReply.worker_address (malloc'd) */
    size_t peer_addr_len;
    uint64_t bind_token;
    int efd;
    int failed;                 /* 0, or the error every new op gets */
    int flushed;                /* endpoint wire-up finished */
    int ucx_cuda;               /* UCX moves CUDA memory itself */
    uint64_t next_id;
    struct kvtc__op *inflight;  /* doubly linked */
    size_t n_inflight;
    struct kvtc__op *done_head, *done_tail; /* callbacks not run yet */
    size_t n_done;
    uint32_t op_timeout_ms;
    uint64_t spin_ns;           /* busy-poll window of blocking waits */
    int spin_yield;             /* sched_yield while polling (spin_turn) */
    int ucx_daemon_check;       /* KVTC_UCX_CHECK=daemon: no client_checks
                                   on UCX gets */
    size_t max_am_header;       /* largest frame that travels as AM header */
    size_t raw_pending;         /* "in data" rendezvous replies arriving */
    kvtc_server_info info;
    struct kvtc__prof_cache *profiles; /* decoders of fetched profiles */
    struct kvtc__gpu_state *gpu; /* GPU decode contexts (gpu_decode.c) */
    /* The same-host local path (local_path.c): the daemon copies bulk
     * bytes from and to our buffers itself. */
    char *local_path;           /* HelloReply.local_path (malloc'd) */
    char *host_id;              /* HelloReply.host_id (malloc'd) */
    int local_fd;               /* the bound unix socket, -1 */
    int local_ok;               /* requests may name local ranges */
    size_t local_min;           /* smallest payload sent that way */
    int local_client_check;     /* local gets: we verify each hit against
                                   its checksum, the daemon skips its own
                                   pass (GetRequest.client_checks;
                                   KVTC_LOCAL_CHECK=client|daemon) */
    int local_verify;           /* checksum local puts and gets here too
                                   (KVTC_LOCAL_VERIFY=1) */
    uint64_t local_wait_ns;     /* how long blocking waits on local ops
                                   took lately (moving average; 0: none
                                   yet): sets their polling window */
    int local_regions;          /* the daemon maps shared memory
                                   (KVTC_LOCAL_FLAG_REGIONS) */
    struct kvtc__mem *mem;      /* kvtc_mem_alloc's blocks (shared_mem.c) */
    uint64_t mem_next_id;
    struct kvtc__trace *trace;  /* KVTC_TRACE records (trace.c), NULL */
    int check_thread;           /* pipelined UCX gets are checked on a
                                   thread of their own (checker.c) */
    struct kvtc__checker *checker; /* that thread, NULL until needed */
    /* Rails (conn.c): endpoints to the daemon's rail workers, each bound
     * to our session; large puts and gets go there, round robin. */
    uint16_t rail_port[KVTC__MAX_RAILS]; /* HelloReply.rail_port */
    uint32_t n_rail_port;
    struct sockaddr_storage server_ss;   /* the daemon's address (rails: its
                                            host, their ports) */
    socklen_t server_sslen;
    ucp_ep_h rail_ep[KVTC__MAX_RAILS];
    uint32_t n_rails;           /* bound (they are requests' from then on) */
    /* A worker and thread of its own for each rail (rail_threads.c), or
     * NULL: its endpoint is on the connection's worker. */
    struct kvtc__rail *rail_thr[KVTC__MAX_RAILS];
    struct kvtc__rail_inbox *rail_inbox; /* their events for this thread */
    uint32_t rail_thread_quota; /* reserved of the process's rail threads */
    struct kvtc__rail *am_rail; /* the rail whose reply is being handled */
    void *am_kept;              /* its eager data, kept by the rail thread
                                   (NULL: copied, or taken by a copy job) */
    uint32_t rail_next;
    size_t rail_min;            /* smallest request taking a rail
                                   (KVTC_RAIL_MIN, else 1 MiB) */
    size_t rail_pipe_min;       /* smallest taking one behind others in
                                   flight (0: none; kvtc__rail_pick) */
    int rail_land;              /* gets land on rail threads (landings;
                                   KVTC_RAIL_LAND=0: not) */
    int rail_flushed;           /* the endpoint being bound: 0, 1, -1 */
    /* Bulk sends one at a time per stream (conn.c): [0] the usual
     * endpoint, [1 + i] rail i. */
    struct kvtc__sendq {
        struct kvtc__op *head, *tail; /* waiting */
        int sending;                  /* one is posted */
    } sendq[1 + KVTC__MAX_RAILS];
    char last_error[256];
};

enum kvtc__bulk_state {
    KVTC__BULK_NONE = 0,
    KVTC__BULK_BINDING = 1, /* the bind Hello travels on bulk_ep */
    KVTC__BULK_BOUND = 2
};

/* The endpoint requests go out on. */
static inline ucp_ep_h kvtc__send_ep(const kvtc_conn *c)
{
    return c->bulk_state != KVTC__BULK_NONE && c->bulk_ep ? c->bulk_ep : c->ep;
}

/* Send op's request of `bytes` bulk bytes (its payload, or a get's
 * destinations) on a rail, round robin, when it is large enough and the
 * connection has rails (sets op->ep, op->stream). */
void kvtc__rail_pick(kvtc_conn *c, struct kvtc__op *op, size_t bytes);

/* rail_threads.c: a UCX worker and a thread for each rail. Everything
 * UCX calls back on a rail thread becomes an event that kvtc__rails_drain
 * runs on the connection's thread. */
typedef void (*kvtc__rail_done_fn)(void *request, ucs_status_t status, size_t length,
                                   void *user_data);
/* Threads for a connection's `want` rails: want (reserved) or 0, as
 * params say (KVTC_RAILS_THREADS / _NO_THREADS), else KVTC_RAIL_THREADS=
 * 0|1, else while the process's rail threads stay within a quarter of the
 * CPUs (none below 8). unreserve gives back what a connection did not
 * start or has stopped. */
uint32_t kvtc__rail_threads_reserve(const kvtc_conn_params *params, uint32_t want);
void kvtc__rail_threads_unreserve(uint32_t n);
/* A new rail worker (thread mode MULTI, our reply handler) and its thread
 * (lowers c->max_am_header to its own). KVTC_ENOMEM, KVTC_EIO. */
int kvtc__rail_start(kvtc_conn *c, struct kvtc__rail **out);
ucp_worker_h kvtc__rail_worker(const struct kvtc__rail *r);
/* The connection's thread posted a request on r's worker: r polls a while
 * (its reply is likely soon), and while in_flight (its completion is to
 * come on r's thread) until that completion. */
void kvtc__rail_kick(struct kvtc__rail *r, int in_flight);
/* A UCX completion of c's on a rail worker: done(...) runs later on the
 * connection's thread. For the callbacks of requests posted on a rail's
 * worker (they run on its thread). */
void kvtc__rail_defer(kvtc_conn *c, kvtc__rail_done_fn done, void *request,
                      ucs_status_t status, size_t length, void *user_data);
/* Copy a get's eager reply data r's thread kept (desc; the bytes from src)
 * into op's destinations on that thread, release desc there, then run
 * done(NULL, UCS_OK, 0, op) on the connection's thread. KVTC_ENOMEM, or
 * KVTC_ECANCELED when r's thread has stopped: not posted (copy it here). */
int kvtc__rail_copy(struct kvtc__rail *r, struct kvtc__op *op, void *desc, const void *src,
                    kvtc__rail_done_fn done);
/* Landings: op (a GET with land_ok, its id given) registers where its
 * reply's bytes go, before its request is posted; r's thread then copies
 * a matching eager reply there itself, checksumming it, and hands the
 * connection only the reply's header. cancel: op is done or gone; waits
 * while r's thread is writing its buffer. Both on the connection's
 * thread. KVTC_ENOMEM never: nothing is allocated. */
void kvtc__rail_land(struct kvtc__rail *r, struct kvtc__op *op);
void kvtc__rail_land_cancel(struct kvtc__op *op);
/* The error handler of a rail endpoint on r's worker (arg = r). */
void kvtc__rail_err_handler(void *arg, ucp_ep_h ep, ucs_status_t status);
/* Run the rail threads' events; how many ran. ready: some wait. busy:
 * requests the connection posted on a rail thread's worker are in
 * flight (their completions will come from there). */
int kvtc__rails_drain(kvtc_conn *c);
int kvtc__rails_ready(kvtc_conn *c);
int kvtc__rails_busy(const kvtc_conn *c);
/* Stop r's thread, run its events, destroy its worker (r unbound). */
void kvtc__rail_release(kvtc_conn *c, struct kvtc__rail *r);
/* Stop every rail thread / and free them with their workers (events
 * left are dropped: the requests they name are gone with the workers). */
void kvtc__rails_stop(kvtc_conn *c);
void kvtc__rails_free(kvtc_conn *c);
/* conn.c, for the rail events: a reply (as the UCX reply handler, rndv:
 * data is a rendezvous descriptor of c->am_rail's worker), and a rail
 * endpoint's error. */
ucs_status_t kvtc__reply_handle(kvtc_conn *c, const void *header, size_t header_length,
                                void *data, size_t length, int rndv);
/* A reply whose header was unpacked (rep, freed here) and whose length
 * bytes of eager data a rail thread landed already. */
ucs_status_t kvtc__reply_dispatch(kvtc_conn *c, Kvtc__Wire__Reply *rep, size_t length);
void kvtc__rail_ep_failed(kvtc_conn *c, ucp_ep_h ep, ucs_status_t status);

/* conn.c */
/* Our handler of the daemon's replies (KVTC_WIRE_AM_REPLY, whole
 * messages) on worker w. */
ucs_status_t kvtc__set_reply_handler(ucp_worker_h w, ucp_am_recv_callback_t cb, void *arg);
void kvtc__set_error(kvtc_conn *c, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
uint64_t kvtc__now_ns(void);
/* Give op the next id, pack req (its id set) into op->frame and post it
 * (frame + payload), tracking op. Errors: KVTC_ENOSPC / KVTC_EINVAL when
 * the frame is too large, KVTC_ENOMEM, the connection's failure; nothing
 * stays behind except op, which the caller frees with kvtc__op_free. */
int kvtc__op_send(kvtc_conn *c, struct kvtc__op *op, Kvtc__Wire__Request *req,
                  const void *payload, size_t payload_len, ucp_datatype_t dt,
                  int payload_cuda);
/* KVTC_EINVAL (with the error text) unless p names a callback: the
 * asynchronous calls report only through it. */
int kvtc__need_cb(kvtc_conn *c, const kvtc_op_params *p);
/* Receive a reply's rendezvous bytes (rndv_desc) into buf, count units of
 * dt, for op: op finishes once they landed (or failed, op->status says
 * so). Returns what the UCX AM callback returns. */
ucs_status_t kvtc__op_recv_rndv(struct kvtc__op *op, void *rndv_desc, void *buf,
                                size_t count, ucp_datatype_t dt);
/* Have the rail thread that kept a get reply's eager bytes (c->am_kept)
 * copy them into op's destinations (kvtc__get_copy), op finishing once
 * they landed; 0 when they are not a rail thread's to copy (copy them
 * here). */
int kvtc__op_copy_on_rail(struct kvtc__op *op, const void *bulk);
/* ops.c: copy a get reply's eager bytes into op's destinations (in
 * order), checksumming them on the way where the daemon sent a checksum.
 * On any thread, while op waits for them. */
void kvtc__get_copy(struct kvtc__op *op, const void *bulk);
struct kvtc__op *kvtc__op_new(kvtc_conn *c, enum kvtc__op_kind kind,
                              const kvtc_op_params *p);
void kvtc__op_free(struct kvtc__op *op);
/* Finish op if nothing is pending any more. */
void kvtc__op_maybe_done(struct kvtc__op *op);
/* Queue op's completion: its callback runs later from kvtc_progress,
 * outside UCX callbacks, so it may submit new operations. */
void kvtc__op_push_done(kvtc_conn *c, struct kvtc__op *op);
/* An op that was never handed to UCX fails with rc: its callback runs from
 * kvtc_progress like any other. */
void kvtc__op_fail_unsent(struct kvtc__op *op, int rc);
/* Fail the connection: every op in flight gets err (the first timed-out
 * op keeps ETIMEDOUT), the endpoint is closed. */
void kvtc__conn_fail(kvtc_conn *c, int err, const char *why);
/* Run a blocking op to completion: submit already happened. */
int kvtc__wait_flag(kvtc_conn *c, const int *flag, uint64_t deadline_ns);

/* ops.c: the reply of op, already matched by id. The bulk bytes are
 * either here (bulk, length) or, when rndv_desc is set, a rendezvous
 * descriptor of length bytes still to receive. Returns what the UCX AM
 * callback should return. */
ucs_status_t kvtc__op_reply(struct kvtc__op *op, Kvtc__Wire__Reply *rep,
                            const void *bulk, size_t length, void *rndv_desc);
/* Device copies, checksum checks and decodes of a finished get, outside
 * UCX callbacks. Returns 1 when op waits for profile fetches instead (they
 * complete it: run its callback and free it), else 0. */
int kvtc__op_finish(struct kvtc__op *op);
/* A put's request while the checker hashes its payload: its chunk
 * metadata (the checksums to fill), owned by the op. */
struct kvtc__put_later {
    Kvtc__Wire__ChunkMeta *metas;
    Kvtc__Wire__ChunkMeta **mptr;
    Kvtc__Wire__Layout *lays;
    int has_ttl;
    uint32_t ttl_ms;
};
void kvtc__put_later_free(struct kvtc__put_later *l);
/* Checksums in: send it (ops.c). Errors complete the op with them. */
void kvtc__put_send_later(struct kvtc__op *op);

/* 1 when kvtc__op_finish hashes get op's destination i (its bytes are
 * readable here and not summed yet). */
int kvtc__get_dest_needs_sum(const struct kvtc__op *op, size_t i);

/* checker.c: a get whose hits need checking, finished while other ops are
 * in flight, is hashed on the connection's checker thread. take: 1 when
 * it took op (off every list until collect puts it back on the done list
 * with its sums), 0: check inline. pending: ops it holds; ready: some are
 * hashed; stop: wait for them, join the thread, collect. */
int kvtc__checker_take(kvtc_conn *c, struct kvtc__op *op);
/* A put whose payload the checker hashes before it is sent (op->later
 * set): 1 taken (kvtc__put_send_later sends it once collected), 0: hash
 * inline. */
int kvtc__checker_take_put(kvtc_conn *c, struct kvtc__op *op);
void kvtc__checker_collect(kvtc_conn *c);
size_t kvtc__checker_pending(const kvtc_conn *c);
int kvtc__checker_ready(const kvtc_conn *c);
void kvtc__checker_stop(kvtc_conn *c);

/* profile.c: the Profile reply of op. */
ucs_status_t kvtc__profile_reply(struct kvtc__op *op, const Kvtc__Wire__Reply *rep,
                                 const void *bulk, size_t length, void *rndv_desc);
/* Decode op's containers into their items' buffers (after checksums).
 * Returns 1 when profiles had to be fetched first (op completes later). */
int kvtc__get_decode(struct kvtc__op *op);
void kvtc__profile_cache_free(kvtc_conn *c);

/* local_path.c: the same-host local path. */
/* Whether params (else KVTC_LOCAL) allow it; on by default. */
int kvtc__local_wanted(const kvtc_conn_params *params);
/* After hello: connect to the daemon's socket and bind the session's local
 * path; on any failure the connection simply stays on UCX payloads. */
void kvtc__local_setup(kvtc_conn *c, uint64_t deadline_ns);
/* Who verifies local gets: 1 libkvtc (after the copy, on the caller's
 * core), 0 kvtcd (before it, on its copy workers). KVTC_LOCAL_CHECK=
 * client|daemon, else KVTC__LOCAL_CHECK_CLIENT_DEFAULT. */
int kvtc__local_check_wanted(void);
/* Stop using it (a copy failed, or the daemon refused a local request). */
void kvtc__local_off(kvtc_conn *c);
/* The connection fails with operations in flight: close our end and wait
 * (at most KVTC__LOCAL_DRAIN_MS) until kvtcd closes its own, which it does
 * once no copy into or out of our memory is running; then off. */
void kvtc__local_drain(kvtc_conn *c);
/* Read exactly len bytes from fd before deadline_ns (0: none). 0 or -1. */
int kvtc__local_read_full(int fd, void *buf, size_t len, uint64_t deadline_ns);
/* shared_mem.c: free every kvtc_mem_alloc block (disconnect). */
void kvtc__mem_free_all(kvtc_conn *c);
void kvtc__local_free(kvtc_conn *c);

/* trace.c: KVTC_TRACE=PREFIX per-op timestamps. open after hello (sets
 * c->trace when asked for), op before an op's completion runs, close at
 * disconnect (writes PREFIX.<pid>.<session>.csv). */
void kvtc__trace_open(kvtc_conn *c);
void kvtc__trace_op(kvtc_conn *c, const struct kvtc__op *op);
void kvtc__trace_close(kvtc_conn *c);

/* cuda.c: memory types. */
/* *is_dev = whether p is device memory. KVTC_ENOTSUP when mem asks for
 * CUDA and this build or machine has none. */
int kvtc__mem_classify(const void *p, uint32_t mem, int *is_dev);
int kvtc__cuda_usable(void);
int kvtc__pinned_alloc(size_t size, void **out);
void kvtc__pinned_free(void *p);
/* to_device: host -> device, else device -> host. */
int kvtc__cuda_copy(void *dst, const void *src, size_t size, int to_device);

#endif
