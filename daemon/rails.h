/* rails.h - rails: UCX workers on threads of their own that carry clients'
 * large puts and gets beside the loop's worker.
 *
 * Over tcp the thread that progresses a UCX worker makes every kernel copy
 * of the bytes it moves, and one such thread saturates at ~4.5-5 GB/s on
 * the hosts measured: kvtcd's loop thread was the bound of every tcp
 * client together (docs/perf-notes.md, "One tcp stream's bound"). A rail
 * is one more worker, progressed by its own thread, with a listener of its
 * own on the daemon's host. HelloReply offers the rails' ports; a client
 * connects to each, binds the endpoint to its session with the bulk
 * endpoint's Hello{bind_session, bind_token} and sends its large Put and
 * Get requests there, spread over the rails; each bulk reply goes back on
 * the session's least loaded rail.
 *
 * A rail moves bytes and nothing else. Its thread hands every request that
 * arrives to the loop (kvtcd_rail_request, in transport.c), which handles
 * it like any other; the UCX work the handling needs - receive a
 * rendezvous into the store, send a reply - comes back to the rail as a
 * command, and the completion goes to the loop again. The loop never calls
 * UCX on a rail's worker or endpoints; a rail never touches the index, the
 * store or a session.
 *
 * A request's data (a rendezvous descriptor, UCX's persistent eager data,
 * or a copy) stays the rail's until the loop receives it
 * (kvtcd_rail_recv) or releases it (kvtcd_rail_release): exactly one of
 * the two for every request handed over. Closing an endpoint first
 * releases its rendezvous descriptors (UCX answers their senders); a
 * receive of one then fails. */
#ifndef KVTCD_RAILS_H
#define KVTCD_RAILS_H

#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>
#include <ucp/api/ucp.h>

typedef struct kvtcd_server kvtcd_server;
typedef struct kvtcd_op kvtcd_op;
typedef struct kvtcd_rails kvtcd_rails;
/* A request's data while the loop handles it (opaque, the rail's). */
typedef struct kvtcd_rail_data kvtcd_rail_data;

/* Completion of a command for op, on the loop thread. */
typedef void (*kvtcd_rail_done_cb)(kvtcd_op *op, ucs_status_t status);

/* Start srv->cfg.rails rails on srv->ucp (created for several workers),
 * each listening on listen's host (any port), and the loop's side of
 * their events. 0, or KVTC_E* with none left running. */
int kvtcd_rails_start(kvtcd_server *srv, const struct sockaddr *listen, socklen_t len);

/* Stop and join the rails: their endpoints closed, their data released,
 * their workers destroyed; events not yet handled are dropped (ops still
 * in flight are the caller's to free). Idempotent; closes the loop's
 * handle, so it belongs with the loop's other handles' closing. */
void kvtcd_rails_stop(kvtcd_server *srv);

/* Number of rails running. */
uint32_t kvtcd_rails_count(const kvtcd_server *srv);

/* Rail r's listening port (what HelloReply offers). */
uint16_t kvtcd_rails_port(const kvtcd_server *srv, uint32_t r);

/* CPU seconds rail r's thread has used, or -1 when unknown. */
double kvtcd_rails_cpu_seconds(const kvtcd_server *srv, uint32_t r);

/* ---- Loop side: commands to rail r (never blocking) ---- */

/* Receive data d (handed over with a request: rendezvous, or eager data
 * the rail's thread copies) into dst. done runs on the loop once it
 * arrived or failed. */
void kvtcd_rail_recv(kvtcd_server *srv, uint32_t r, kvtcd_rail_data *d, void *dst,
                     size_t len, kvtcd_op *op, kvtcd_rail_done_cb done);

/* Release request data d unread (a rendezvous is answered as dropped). */
void kvtcd_rail_release(kvtcd_server *srv, uint32_t r, kvtcd_rail_data *d);

/* Send a reply AM on endpoint ep of rail r: header hlen bytes, then data
 * (dlen bytes, or dlen ucp_dt_iov_t entries when iov). Everything must stay
 * valid until done runs on the loop. */
void kvtcd_rail_send(kvtcd_server *srv, uint32_t r, ucp_ep_h ep, const void *header,
                     size_t hlen, const void *data, size_t dlen, int iov, kvtcd_op *op,
                     kvtcd_rail_done_cb done);

/* Send a reply frame the rail frees afterwards (binds and refusals: no op);
 * with close_after, close ep once it has gone out. */
void kvtcd_rail_send_frame(kvtcd_server *srv, uint32_t r, ucp_ep_h ep, void *frame,
                           size_t frame_len, int close_after);

/* Close endpoint ep of rail r (forced): its pending transfers fail. */
void kvtcd_rail_close_ep(kvtcd_server *srv, uint32_t r, ucp_ep_h ep);

/* ---- Implemented by transport.c, called on the loop ---- */

/* A request arrived on endpoint ep of rail r: header as it came; data the
 * request's bytes (eager) or, with rndv, d itself to receive. Eager data
 * of KVTCD_RAIL_COPY_MIN bytes or more is received like rendezvous data
 * (d), so that the rail's thread copies it, not the loop. */
#define KVTCD_RAIL_COPY_MIN (64u << 10)
void kvtcd_rail_request(kvtcd_server *srv, uint32_t r, ucp_ep_h ep, const void *header,
                        size_t hlen, kvtcd_rail_data *d, const void *data, size_t len,
                        int rndv);

/* Endpoint ep of rail r failed (the client vanished or misbehaved). */
void kvtcd_rail_ep_failed(kvtcd_server *srv, uint32_t r, ucp_ep_h ep, const char *why);

#endif
