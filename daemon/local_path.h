/* local_path.h - the same-host single-copy data path (docs/kvtcd.md,
 * "Local path"; docs/protocol.md, "Local path").
 *
 * UCX refuses its shared-memory transports to endpoints with peer error
 * handling, which kvtcd needs, so on one host bulk bytes would cross tcp/lo.
 * Instead a client on this host connects to kvtcd's unix-domain socket,
 * presents its UCX session's id and token, and kvtcd takes its pid from
 * SO_PEERCRED, opens a pidfd and proves with a small process_vm_readv that
 * it may copy from and to that process. From then on a Put names ranges of
 * the client's memory instead of carrying an AM payload and kvtcd copies
 * them into the host store with process_vm_readv (checksummed piece by
 * piece as they land); a Get names destinations and kvtcd writes the hits
 * there with process_vm_writev before replying. Control messages stay on
 * UCX, and so does failure detection (the UCX endpoint's error ends the
 * session; the socket closing ends only the local path).
 *
 * Copies run on the path's own copy workers (local_copy.h), first come
 * first served across clients; a small copy that is alone runs on the loop
 * thread instead (below). Everything else runs on the loop thread, like the
 * rest of kvtcd (nothing here is locked). */
#ifndef KVTCD_LOCAL_PATH_H
#define KVTCD_LOCAL_PATH_H

#include <stddef.h>
#include <stdint.h>
#include <sys/uio.h>
#include <uv.h>

#include "local_copy.h"
#include "local_trace.h"
#include "server.h"

typedef struct kvtcd_local kvtcd_local;
typedef struct kvtcd_local_link kvtcd_local_link;

/* Listen on the configured socket (cfg.local_path: "" or "auto" -> the
 * abstract name "@kvtcd-HOST:PORT" of the bound UCX address, "off" ->
 * nothing, else a file system path, a stale socket there replaced). Call
 * after the UCX listener is bound. A socket that cannot be made is logged
 * and leaves the path off (kvtcd serves over UCX alone). Errors:
 * KVTC_ENOMEM only. */
int kvtcd_local_init(kvtcd_server *srv);

/* Stop listening and close every link (from teardown, on the loop
 * thread); the socket file, if any, is removed. Safe when off. */
void kvtcd_local_close(kvtcd_server *srv);

/* The name HelloReply.local_path announces, or NULL when the path is off.
 * Owned by srv. */
const char *kvtcd_local_name(const kvtcd_server *srv);

/* This kernel's boot id (HelloReply.host_id), or NULL. Owned by srv. */
const char *kvtcd_local_host_id(const kvtcd_server *srv);

/* s is closing: drop its link (the socket closes; copies in flight keep
 * the pid and pidfd until they finish). */
void kvtcd_local_detach(kvtcd_session *s);

/* A copy of s failed: log it (once per session), count it, and close the
 * session's local path; later local requests of s get STATUS_LOCAL. */
void kvtcd_local_fail(kvtcd_session *s, const char *why);

/* Turn the wire's LocalIov list of a Put into client ranges: at most
 * KVTC_LOCAL_MAX_IOV, none empty, none wrapping or reaching past
 * KVTC_LOCAL_ADDR_LIMIT, adding up to exactly total bytes. On success
 * *out is malloc'd (caller frees); on failure why says what is wrong.
 * Errors: KVTC_EINVAL, KVTC_ENOSPC (count over the limit), KVTC_ENOMEM. */
struct Kvtc__Wire__LocalIov;
int kvtcd_local_put_iovs(struct Kvtc__Wire__LocalIov *const *v, size_t n,
                         uint64_t total, struct iovec **out, char *why,
                         size_t whylen);

/* Check one Get destination (address, capacity): not wrapping, below
 * KVTC_LOCAL_ADDR_LIMIT. A zero address needs zero capacity. 0 or
 * KVTC_EINVAL. */
int kvtcd_local_dest_ok(uint64_t addr, uint64_t len);

typedef struct kvtcd_lcopy kvtcd_lcopy;
typedef void (*kvtcd_lcopy_done)(kvtcd_lcopy *job);

/* One copy between kvtcd's ranges and the client's: the n local ranges
 * (ptr[i], len[i]) back to back are the same byte stream as the remote
 * ranges back to back (equal totals). */
struct kvtcd_lcopy {
    kvtcd_cjob cj;              /* private: the worker job */
    kvtcd_lcopy *pend_next;     /* private: deferred small copies */
    kvtcd_local_link *link;     /* set by kvtcd_lcopy_start, referenced */
    struct kvtcd_region *region; /* private: the shared region holding
                                   every remote range, referenced; NULL:
                                   process_vm_readv/writev */
    int to_client;              /* 0: process_vm_readv, 1: _writev */
    struct iovec *remote;       /* the client's ranges (caller owns) */
    size_t n_remote;
    uint32_t n;
    uint8_t **ptr;              /* kvtcd's ranges (caller owns) */
    size_t *len;
    uint64_t *sum;              /* XXH3-64 of each local range (NULL:
                                   none): reads hash what landed, writes
                                   hash each piece just before sending it
                                   (one pass over memory for both) */
    const uint8_t *hash_only;   /* writes: ranges i with hash_only[i] are
                                   hashed, not written (they have no
                                   remote range); NULL: none */
    int err;                    /* out: 0 or the errno of the failure
                                   (EFAULT for a short copy, ESRCH when
                                   the client exited) */
    kvtcd_lcopy_done done;      /* on the loop thread */
    void *arg;
    kvtcd_lt_rec lt;            /* KVTCD_LOCAL_TRACE: the caller sets req
                                   and put; the rest is stamped here */
};

/* Default KVTCD_LOCAL_LINGER_US: how long the loop polls after answering
 * a local request, for the next one (while polling is allowed). */
#define KVTCD_LOCAL_LINGER_US 0u

/* Copies of fewer bytes are small: one alone may run on the loop thread. */
#define KVTCD_LOCAL_INLINE_MAX (1u << 20)

/* Start job for session s; job->done runs later on the loop thread (never
 * inside this call). A copy of KVTCD_LOCAL_INLINE_MAX bytes or more goes
 * to the copy workers at once. A smaller one waits for the end of the
 * current batch of requests (kvtcd_local_flush): a thread hop there and
 * back costs a 256 KiB copy ~20% when it is the only one, yet several in
 * flight must overlap. Errors (done is not called): KVTC_ENOTSUP when s has
 * no live local link. */
int kvtcd_lcopy_start(kvtcd_session *s, kvtcd_lcopy *job);

/* End of a batch of requests (transport.c, after each round of UCX
 * progress): start the small copies deferred since the last call. When no
 * copy is in flight, the first runs here on the loop thread (its done
 * included) while the workers take the rest; otherwise all queue behind
 * the copies before them. Returns how many ran here (their replies may
 * want progress). */
int kvtcd_local_flush(kvtcd_server *srv);

/* Nonzero while the loop should poll instead of sleeping in epoll: the
 * polling policy allows it (kvtcd_local_spin_ok, KVTCD_LOCAL_SPIN_US > 0)
 * and copies are queued or running on the workers (a finished copy is then
 * answered without a wakeup) or a local request was answered less than
 * the linger window ago (KVTCD_LOCAL_LINGER_US: the next request of a
 * pipelining client is then read without one). */
int kvtcd_local_poll_wanted(const kvtcd_server *srv);

/* The polling policy (docs/kvtcd.md "Local path"): polling -- the copy
 * workers waiting for the next job, the loop waiting for finished copies
 * and the next request -- pays only while every thread that may want a
 * core has one: the loop, each copy worker (copying or polling) and one
 * thread per client with a local request in flight. Beyond that a polling
 * thread takes the core a woken client or a copy needs, and the wait for
 * it is what the tail latency is made of. 1: poll. Pure (unit-tested). */
int kvtcd_local_spin_ok(unsigned cpus, unsigned workers, unsigned clients);

/* Clients (sessions) with a local copy in flight now, and whether the
 * policy lets threads poll now; for /metrics and tests. */
unsigned kvtcd_local_active_clients(const kvtcd_server *srv);
int kvtcd_local_polling(const kvtcd_server *srv);
/* Wall time the copy workers spent polling so far (0 when off). */
uint64_t kvtcd_local_polled_ns(const kvtcd_server *srv);

/* Copies queued or running on the copy workers now (0 when the path is
 * off), for /metrics. */
unsigned kvtcd_local_copies_busy(const kvtcd_server *srv);

#endif
