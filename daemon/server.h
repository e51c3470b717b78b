/* server.h - kvtcd's state and the pieces that share it.
 *
 * One libuv loop thread owns everything below: the UCP worker (driven from
 * the loop by transport.c), sessions, the index and its tiers, the admin
 * HTTP server and the metrics. Nothing here is locked; nothing may be
 * touched from another thread.
 *
 * Files: server.c (lifecycle, signals, drain), transport.c (UCX context,
 * worker, listener, endpoints, AM receive, reply sends), handlers.c (one
 * function per request kind), admin.c (HTTP /metrics, /healthz). */
#ifndef KVTCD_SERVER_H
#define KVTCD_SERVER_H

#include <stdint.h>
#include <sys/uio.h>
#include <time.h>
#include <ucp/api/ucp.h>
#include <uv.h>

#include "config.h"
#include "hash.h"
#include "index.h"
#include "tier.h"
#include "tiers.h"
#include "wire.h"

/* Requests of one session in flight on its rails whose replies are routed
 * back there; beyond it a reply takes the session's first endpoint. */
#define KVTCD_RAIL_ROUTES 64

typedef struct kvtcd_server kvtcd_server;

typedef struct kvtcd_metrics {
    uint64_t requests;
    uint64_t puts;          /* chunks stored */
    uint64_t gets;          /* keys asked by Get */
    uint64_t hits, misses;
    uint64_t lookups, deletes, pins;
    uint64_t rejected_full; /* put chunks refused with FULL */
    uint64_t corrupt;       /* checksum mismatches (put or stored) */
    uint64_t bytes_in, bytes_out;
    uint64_t errors;        /* requests answered with an error status */
    uint64_t sessions_total;
    uint64_t disconnects;   /* sessions ended by error or peer close */
    /* the local path (local_path.c) */
    uint64_t local_links;   /* sessions that bound it */
    uint64_t local_refused; /* handshakes refused (token, probe, pid) */
    uint64_t local_puts, local_gets;     /* requests served by it */
    uint64_t local_bytes_in, local_bytes_out;
    uint64_t local_failures; /* copies that failed: session fell back */
    uint64_t local_copies_loop;    /* copies run on the loop thread */
    uint64_t local_copies_workers; /* copies run by the copy workers */
    uint64_t local_copies_shared;  /* copies into or out of client memory
                                      shared with us (local_region.h) */
    uint64_t local_regions_refused; /* region messages refused */
    uint64_t local_client_checked; /* local get hits the client verifies
                                      (GetRequest.client_checks) */
    uint64_t gets_audited;         /* UCX get hits sent before kvtcd
                                      re-verified them (client_checks) */
    uint64_t bulk_replies_waited;  /* replies that waited for their
                                      session's previous bulk reply */
    uint64_t rail_requests;        /* requests that came on a rail */
    uint64_t rail_binds;           /* rail endpoints bound to sessions */
} kvtcd_metrics;

typedef struct kvtcd_session {
    struct kvtcd_session *prev, *next; /* srv->sessions, while open */
    kvtcd_server *srv;
    ucp_ep_h ep;            /* the sockaddr endpoint the session began on */
    /* The client's second endpoint, opened to our worker address and bound
     * by a Hello{bind_session, bind_token} (docs/protocol.md, "Bulk
     * endpoint"): it has the shared-memory lanes a sockaddr endpoint lacks.
     * Once bound every reply goes out on it; either endpoint failing ends
     * the session. NULL until bound. */
    ucp_ep_h bulk_ep;
    uint64_t bind_token;    /* secret the bind must present */
    uint64_t id;
    uint32_t refs;          /* 1 while open, + 1 for a bound bulk_ep,
                               + 1 per in-flight op */
    int open;               /* 0 once the endpoint failed or closed */
    int close_pending;      /* queued for ucp_ep_close_nbx */
    struct kvtcd_session *close_next;
    int hello_done;
    uint32_t ns;
    char peer[64];
    /* The same-host local path (local_path.h), NULL when not bound; set
     * once the client proved on the unix socket that kvtcd may copy from
     * and to its memory. */
    struct kvtcd_local_link *local;
    int local_failed;       /* a copy failed: local requests refused */
    /* Replies with rendezvous-size payloads go out one at a time per
     * stream (transport.c, "one bulk reply at a time"): the others wait
     * here. [0]: the session's endpoint; [1 + r]: rail r. */
    struct kvtcd_bulk_q {
        struct kvtcd_op *head, *tail;
        int sending;
    } bulk_q[1 + KVTCD_MAX_RAILS];
    /* Rails (rails.h): the client's endpoint to each rail once bound (a
     * handle of the rail's; NULL until then), and which rail each request
     * in flight came on, so its reply goes back on the rails. */
    ucp_ep_h rail_ep[KVTCD_MAX_RAILS];
    struct {
        uint64_t id;
        uint32_t rail;
    } rail_route[KVTCD_RAIL_ROUTES];
    uint32_t n_rail_routes;
} kvtcd_session;

/* An in-flight operation that holds UCX resources: a put whose bulk data
 * is still arriving, or a reply being sent. */
enum kvtcd_op_kind {
    KVTCD_OP_PUT = 1,  /* a put: bulk arriving into blob, then hashed */
    KVTCD_OP_SEND = 2, /* a reply being sent */
    KVTCD_OP_RECV = 3, /* an "in data" request arriving by rendezvous */
    KVTCD_OP_GET = 4,  /* a get: hits read from lower tiers, re-verified
                          (or, for a client that checks, see AUDIT) */
    KVTCD_OP_KEYS = 5, /* a delete or pin (durable deletes wait for their
                          tombstones) */
    KVTCD_OP_AUDIT = 6 /* a get's hits re-verified after they were sent to
                          a client that checks them itself */
};

typedef struct kvtcd_op {
    struct kvtcd_op *prev, *next;      /* srv->ops */
    int kind;
    kvtcd_session *sess;
    uint64_t req_id;
    void *ucx_req;                     /* NULL when completed inline */
    /* PUT */
    kvtcd_entry *tmpl;                 /* n_chunks templates (ns, key, meta) */
    uint8_t *has_checksum;
    uint32_t n_chunks;
    kvtcd_blob *blob;                  /* receives the payload */
    uint64_t total;
    uint32_t ttl_ms;
    uint64_t t0_ns;                    /* uv_hrtime() at arrival */
    uint64_t t1_ns;                    /* bulk arrived */
    size_t put_base;                   /* chunk 0's offset in blob */
    kvtcd_hashjob hash;                /* PUT, GET: checksums */
    void *ctx;                         /* GET: its state */
    void (*ctx_free)(void *ctx);
    /* RECV: the message lands at msg_buf (no bulk) or blob->data (bulk
     * follows the msg_len message bytes) */
    void *msg_buf;
    size_t msg_len;
    size_t overflow;                   /* msg_buf bytes counted in
                                          srv->overflow_bytes */
    /* SEND */
    void *header;                      /* packed reply frame */
    size_t header_len;
    kvtcd_blob **holds;                /* blobs the payload points into */
    uint32_t n_holds;
    ucp_dt_iov_t *iov;                 /* what is sent: [message], payload */
    size_t send_hlen;                  /* AM header bytes of header */
    const void *send_data;             /* AM data: a buffer or iov */
    size_t send_dlen;                  /* its bytes, or iov entries */
    int send_iov;                      /* send_data is an iov */
    int send_bulk;                     /* counts as the session's bulk reply */
    int rail_load;                     /* counted in srv->rail_bulk[rail - 1] */
    uint32_t rail;                     /* SEND: goes out on this rail (+1);
                                          RECV: its request came on it */
    struct kvtcd_op *bulk_q_next;      /* session's bulk_q */
    /* PUT, GET by the local path (local_path.h): the copy and the client's
     * ranges it uses, freed with the op */
    struct kvtcd_lcopy *lcopy;
    struct iovec *lremote;
} kvtcd_op;

struct kvtcd_server {
    kvtcd_config cfg;
    uv_loop_t *loop;
    uint64_t start_ms;
    /* The loop thread's CPU clock: every request, UCX transfer and tcp
     * copy runs there, so it is what saturates first (/metrics). */
    clockid_t loop_cpu_clock;
    int loop_cpu_clock_ok;
    /* UCX, driven from the loop */
    ucp_context_h ucp;
    ucp_worker_h worker;
    ucp_listener_h listener;
    int efd;
    uv_poll_t poll;
    uv_prepare_t prepare;
    uv_idle_t idle;
    uv_timer_t tick;
    int idle_on;
    uint64_t last_event_ms;            /* loop time of the last UCX event */
    int in_progress;                   /* re-entrancy guard */
    int handles_open;
    size_t max_am_header;              /* larger reply frames go in data */
    ucp_address_t *worker_addr;        /* sent in HelloReply (bulk endpoint) */
    size_t worker_addr_len;
    char listen_addr[300];             /* "HOST:PORT" actually bound */
    uint16_t bound_port;
    /* state */
    kvtcd_tier *host;
    kvtcd_index index;
    kvtcd_tiers *tiers;                /* GPU and disk tiers, the policy */
    kvtcd_session *sessions;
    uint32_t n_sessions;
    kvtcd_session *close_queue;
    uint32_t closing;                  /* ep closes in flight */
    uint64_t next_session_id;
    kvtcd_op *ops;
    uint32_t n_ops;
    uint32_t n_ucx_pending;            /* ops waiting on a UCX request */
    uint64_t overflow_bytes;
    kvtcd_metrics m;
    struct kvtcd_serve *serve;         /* profiles + codec jobs
                                          (codec_serve.h) */
    struct kvtcd_rails *rails;         /* rails.h; NULL without */
    uint32_t cur_rail;                 /* rail (+1) of the request being
                                          dispatched; 0: the loop's worker */
    uint32_t rail_bulk[KVTCD_MAX_RAILS]; /* bulk replies posted to each rail,
                                          not sent yet (transport.c) */
    struct kvtcd_local *local;         /* unix socket of the local path
                                          (local_path.h); NULL when off */
    /* KVTCD_LOCAL_TRACE (local_trace.h): NULL when off; else the stamps
     * its records take from the loop: when the current progress round
     * began (and whether the loop had slept in epoll before it), and when
     * the request being dispatched arrived (0 outside dispatch). */
    struct kvtcd_ltrace *ltrace;
    uint64_t lt_wake_ns, lt_am_ns;
    int lt_slept, lt_armed;
    /* admin HTTP */
    uv_tcp_t admin;
    int admin_open;
    uint16_t admin_port;
    char admin_addr[300];
    /* lifecycle */
    uv_signal_t sigterm, sigint;
    uv_timer_t drain_timer;
    uint64_t drain_deadline_ms;
    uint64_t drain_started_ms;
    int draining;            /* 1 requests, 2 endpoints, 3 tiers, 4 done */
    int tiers_closed;
    int exit_code;
};

/* ---- server.c ---- */
/* Build everything (UCX, listener, admin, signals) from cfg. On failure
 * everything built so far is torn down. */
int kvtcd_server_init(kvtcd_server *srv, const kvtcd_config *cfg,
                      uv_loop_t *loop);
/* Run the loop until a signal (or kvtcd_server_stop) drains it; then tear
 * everything down. Returns the exit code (0 after a clean drain). */
int kvtcd_server_run(kvtcd_server *srv);
/* Begin the drain (as SIGTERM does). */
void kvtcd_server_stop(kvtcd_server *srv);
uint64_t kvtcd_now_ms(const kvtcd_server *srv);

/* ---- transport.c ---- */
int kvtcd_transport_init(kvtcd_server *srv);
/* Stop accepting new connections. */
void kvtcd_transport_stop_listening(kvtcd_server *srv);
/* Queue every open session's endpoint for closing. */
void kvtcd_transport_close_all(kvtcd_server *srv);
/* ucp_cleanup, after every registered blob is gone. */
void kvtcd_transport_cleanup_context(kvtcd_server *srv);
/* Close the uv handles (poll, prepare, idle). */
void kvtcd_transport_close_handles(kvtcd_server *srv);
/* Destroy the worker and context; frees whatever op is still left. */
void kvtcd_transport_fini(kvtcd_server *srv);
/* Progress the worker now (bounded). */
void kvtcd_transport_progress(kvtcd_server *srv);
/* One piece of a reply's payload. */
typedef struct kvtcd_seg {
    const void *p;
    size_t len;
} kvtcd_seg;

/* Send a reply on s whose payload is segs[0..nsegs) back to back, sent
 * zero-copy (one iov). The segments stay valid until the send completes
 * because the op takes a reference on each of holds[] (the blobs they lie
 * in). */
int kvtcd_send_reply(kvtcd_session *s, const Kvtc__Wire__Reply *rep,
                     const kvtcd_seg *segs, uint32_t nsegs,
                     kvtcd_blob *const *holds, uint32_t n_holds);
/* A reply with only a status and message. */
int kvtcd_send_error(kvtcd_session *s, uint64_t req_id, int status,
                     const char *fmt, ...) __attribute__((format(printf, 4, 5)));
kvtcd_op *kvtcd_op_new(kvtcd_server *srv, int kind, kvtcd_session *s);
void kvtcd_op_free(kvtcd_op *op);
void kvtcd_session_unref(kvtcd_session *s);
/* End s now (its endpoint closes from the drive loop). */
void kvtcd_session_close(kvtcd_session *s, const char *why);
/* The open session with this id, or NULL. */
kvtcd_session *kvtcd_session_find(kvtcd_server *srv, uint64_t id);
/* Make ep (an endpoint UCX created when a client connected to our worker
 * address) s's bulk endpoint: its failures end s, replies go out on it. */
int kvtcd_session_bind_bulk(kvtcd_session *s, ucp_ep_h ep);
/* A session for an endpoint that came by worker address and is not bound
 * (yet): it can be answered and is closed like any other. NULL when the
 * daemon drains or has max_sessions already. */
kvtcd_session *kvtcd_session_adopt(kvtcd_server *srv, ucp_ep_h ep);
/* Request id of s came on rail r: its reply goes back there. */
void kvtcd_session_route(kvtcd_session *s, uint64_t id, uint32_t r);

/* ---- handlers.c ---- */
/* Handle one request frame from s. data/length/param as the AM callback got
 * them (bulk bytes: eager data or a rendezvous descriptor). Returns the
 * status for the AM callback (UCS_OK always; the data is consumed or
 * dropped here). */
ucs_status_t kvtcd_handle_request(kvtcd_session *s, const void *header,
                                  size_t header_len, void *data,
                                  size_t length,
                                  const ucp_am_recv_param_t *param);
/* A request from an endpoint no session knows: only a bind Hello (small,
 * inline) is taken; it binds the endpoint to its session or is refused.
 * Anything else is dropped. */
ucs_status_t kvtcd_handle_unbound(kvtcd_server *srv, ucp_ep_h ep,
                                  const void *header, size_t header_len,
                                  void *data, size_t length,
                                  const ucp_am_recv_param_t *param);
/* The same on endpoint ep of rail r (rails.h): a bind makes ep the
 * session's endpoint on that rail; anything else closes ep. */
void kvtcd_handle_rail_bind(kvtcd_server *srv, uint32_t r, ucp_ep_h ep,
                            const void *header, size_t header_len,
                            size_t length, int rndv);

/* ---- admin.c ---- */
int kvtcd_admin_init(kvtcd_server *srv);
void kvtcd_admin_close(kvtcd_server *srv);
/* Prometheus text of every counter and gauge into a malloc'd string. */
int kvtcd_metrics_render(const kvtcd_server *srv, char **out, size_t *len);

#endif
