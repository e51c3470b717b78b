/* local_path.c - kvtcd's unix socket, the links bound through it, and the
 * process_vm_readv/writev copies (see local_path.h). */
#include "local_path.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/un.h>
#include <unistd.h>
#include <xxhash.h>
#if defined(__x86_64__) || defined(__i386__)
#include <xxh_x86dispatch.h>
#define LP_XXH3_UPDATE XXH3_64bits_update_dispatch
#else
#define LP_XXH3_UPDATE XXH3_64bits_update
#endif

#include "fifo.h"
#include "kvtc.pb-c.h"
#include "kvtc_errors.h"
#include "local_region.h"
#include "local_wire.h"
#include "log.h"

/* Handshakes not finished yet: a bounded number, so idle connects cannot
 * pile up descriptors. */
#define MAX_PENDING 64u
/* One process_vm_* call moves at most this much: small enough that the
 * checksum reads it back from cache, large enough that the call costs
 * nothing next to the copy. */
#define PIECE (256u << 10)
/* Remote ranges per call (the kernel's UIO_MAXIOV is 1024). */
#define MAX_RIOV 1024u
/* Lone small copies of a pipelining session after which it is treated as
 * one request at a time again (kvtcd_local_flush). */
#define BURST_DECAY 16u

struct kvtcd_local_link {
    kvtcd_local_link *prev, *next; /* lp->links while the socket is open */
    kvtcd_local *lp;               /* NULL once closing */
    kvtcd_server *srv;
    kvtcd_session *sess;           /* bound session, NULL before / after */
    int fd;
    uv_poll_t poll;
    pid_t pid;                     /* from SO_PEERCRED */
    int pidfd;
    uint32_t refs;                 /* 1 for the open socket, + 1 per copy */
    int closed;                    /* set (atomically: copies read it) once
                                      the link closes: copies stop at their
                                      next piece */
    size_t got;                    /* handshake bytes read so far */
    struct kvtc_local_hello hello;
    /* Batching small copies (loop thread): burst is set once this
     * session's copies came several to a batch (it pipelines); alone
     * counts its lone copies since (BURST_DECAY of them clear burst). */
    int burst;
    uint32_t alone;
    uint32_t inflight;             /* its copies not done yet (loop) */
    /* Client memory shared with us (local_region.h), and a region
     * message being read: bytes so far and the descriptor it brought. */
    kvtcd_regions regions;
    struct kvtc_local_region rmsg;
    size_t rgot;
    int rfd;
};

struct kvtcd_local {
    kvtcd_server *srv;
    int fd;
    uv_poll_t poll;
    char name[128];                /* announced: "@abstract" or a path */
    char path[sizeof(((struct sockaddr_un *)0)->sun_path)]; /* file to
                                      unlink at close; "" for abstract */
    char host_id[64];
    kvtcd_local_link *links;
    uint32_t n_pending;
    kvtcd_cworkers *cw;            /* the copy workers */
    unsigned spin_us;              /* their polling window (0: none) */
    int batch;                     /* small copies: 1 deferred to the end
                                      of the batch and spread over the
                                      workers, 0 each on the loop thread
                                      where it arrives (few cores) */
    kvtcd_lcopy *pend_head, *pend_tail; /* small copies deferred to the
                                      end of the batch (kvtcd_local_flush) */
    /* Polling policy (kvtcd_local_spin_ok): */
    unsigned cpus, workers;
    int spin_always;               /* KVTCD_LOCAL_SPIN_POLICY=always */
    unsigned n_active;             /* links with inflight > 0 */
    int polling;                   /* the policy's answer now */
    uint64_t linger_ns;            /* loop polls this long after a reply */
    uint64_t last_done_ns;         /* when a copy was last answered */
};

/* ---- the polling policy --------------------------------------------------- */

int kvtcd_local_spin_ok(unsigned cpus, unsigned workers, unsigned clients)
{
    /* + 1: the loop thread. */
    return (uint64_t)clients + workers + 1 <= cpus;
}

/* Recompute whether threads may poll (after n_active changed). */
static void update_polling(kvtcd_local *lp)
{
    int on = lp->spin_us &&
             (lp->spin_always ||
              kvtcd_local_spin_ok(lp->cpus, lp->workers, lp->n_active));
    if (on != lp->polling) {
        lp->polling = on;
        kvtcd_cworkers_set_spin(lp->cw, on);
    }
}

/* ---- links ---------------------------------------------------------------- */

/* The socket closes only here, once no copy uses the link any more: a
 * client that closes its end and waits for ours (libkvtc does, before it
 * reports canceled operations) knows that kvtcd no longer touches its
 * memory. */
static void link_unref(kvtcd_local_link *l)
{
    if (--l->refs)
        return;
    if (l->fd >= 0)
        close(l->fd);
    if (l->pidfd >= 0)
        close(l->pidfd);
    free(l);
}

static void on_link_closed(uv_handle_t *h)
{
    link_unref(h->data);
}

/* Unbind l from its session and close its socket. */
static void link_close(kvtcd_local_link *l)
{
    kvtcd_local *lp = l->lp;
    if (!lp)
        return;
    if (l->sess) {
        l->sess->local = NULL;
        l->sess = NULL;
    } else {
        lp->n_pending--;
    }
    if (l->prev)
        l->prev->next = l->next;
    else
        lp->links = l->next;
    if (l->next)
        l->next->prev = l->prev;
    l->prev = l->next = NULL;
    l->lp = NULL;
    /* Copies in flight keep their region mapped until they end. */
    kvtcd_regions_clear(&l->regions);
    if (l->rfd >= 0)
        close(l->rfd);
    l->rfd = -1;
    if (l->inflight) {
        /* Its copies still finish, but its client no longer waits. */
        lp->n_active--;
        update_polling(lp);
    }
    __atomic_store_n(&l->closed, 1, __ATOMIC_RELEASE);
    uv_poll_stop(&l->poll);
    uv_close((uv_handle_t *)&l->poll, on_link_closed);
}

static void send_reply(int fd, int status, uint32_t flags, const char *msg)
{
    struct kvtc_local_reply r;
    memset(&r, 0, sizeof r);
    memcpy(r.magic, KVTC_LOCAL_MAGIC, sizeof r.magic);
    r.status = status;
    r.flags = flags;
    snprintf(r.msg, sizeof r.msg, "%s", msg);
    /* 128 bytes into a fresh socket's empty buffer: never short; if the
     * peer is gone it learns nothing anyway. */
    ssize_t n = send(fd, &r, sizeof r, MSG_NOSIGNAL | MSG_DONTWAIT);
    (void)n;
}

static int pidfd_exited(int pidfd)
{
    struct pollfd p = {.fd = pidfd, .events = POLLIN};
    return poll(&p, 1, 0) != 0; /* readable: exited; error: assume so */
}

/* The whole hello arrived: check it, bind or refuse. */
static void handshake(kvtcd_local_link *l)
{
    kvtcd_server *srv = l->srv;
    const struct kvtc_local_hello *h = &l->hello;
    char why[112];
    int st = 0;
    kvtcd_session *s = NULL;
    if (memcmp(h->magic, KVTC_LOCAL_MAGIC, sizeof h->magic) != 0) {
        st = KVTC_EPROTO;
        snprintf(why, sizeof why, "not a kvtc local-path hello");
        goto refuse;
    }
    s = kvtcd_session_find(srv, h->session_id);
    if (srv->draining) {
        st = KVTC_EBUSY;
        snprintf(why, sizeof why, "kvtcd is shutting down");
        goto refuse;
    }
    if (!s || !s->hello_done || s->bind_token != h->token) {
        /* One answer for all three: no hint about which sessions exist. */
        st = KVTC_EPERM;
        snprintf(why, sizeof why, "no such session or wrong token");
        goto refuse;
    }
    if (s->local || s->local_failed) {
        st = KVTC_EINVAL;
        snprintf(why, sizeof why, "session has (or had) a local path");
        goto refuse;
    }
    struct ucred cr;
    socklen_t crlen = sizeof cr;
    if (getsockopt(l->fd, SOL_SOCKET, SO_PEERCRED, &cr, &crlen) != 0 ||
        cr.pid <= 0) {
        /* 0 when the peer's pid namespace is not ours (or below it). */
        st = KVTC_EPERM;
        snprintf(why, sizeof why, "peer pid not visible (another pid "
                                  "namespace?)");
        goto refuse;
    }
    l->pid = cr.pid;
    l->pidfd = (int)syscall(SYS_pidfd_open, cr.pid, 0);
    if (l->pidfd < 0) {
        st = KVTC_ENOTSUP;
        snprintf(why, sizeof why, "pidfd_open: %s", strerror(errno));
        goto refuse;
    }
    uint8_t probe[KVTC_LOCAL_PROBE_BYTES];
    struct iovec li = {probe, sizeof probe};
    struct iovec ri = {(void *)(uintptr_t)h->probe_addr, sizeof probe};
    ssize_t n = process_vm_readv(l->pid, &li, 1, &ri, 1, 0);
    if (n != (ssize_t)sizeof probe) {
        st = KVTC_EPERM;
        snprintf(why, sizeof why, "process_vm_readv: %s (ptrace access: "
                                  "same user, Yama scope <= 1)",
                 n < 0 ? strerror(errno) : "short read");
        goto refuse;
    }
    /* The pid was the client's during the probe only if it is alive now. */
    if (memcmp(probe, h->probe, sizeof probe) != 0 || pidfd_exited(l->pidfd)) {
        st = KVTC_EPERM;
        snprintf(why, sizeof why, "probe mismatch");
        goto refuse;
    }
    l->sess = s;
    s->local = l;
    l->lp->n_pending--;
    srv->m.local_links++;
    KVTCD_INFO("session", "local path bound session=%llu pid=%d",
               (unsigned long long)s->id, (int)l->pid);
    send_reply(l->fd, 0, KVTC_LOCAL_FLAG_REGIONS, "ok");
    return;
refuse:
    srv->m.local_refused++;
    KVTCD_WARN("session", "local path refused session=%llu reason=\"%s\"",
               (unsigned long long)(s ? s->id : 0), why);
    send_reply(l->fd, st, 0, why);
    link_close(l);
}

/* Read what there is of a region message, with the descriptor a MAP
 * brings (kept in l->rfd; any other descriptors closed). 1: complete, 0:
 * not yet, -1: EOF or error, -2: malformed. */
static int read_region_msg(kvtcd_local_link *l)
{
    union {
        struct cmsghdr h;
        char buf[CMSG_SPACE(4 * sizeof(int))];
    } cm;
    struct iovec iov = {(char *)&l->rmsg + l->rgot, sizeof l->rmsg - l->rgot};
    struct msghdr mh = {.msg_iov = &iov, .msg_iovlen = 1,
                        .msg_control = cm.buf, .msg_controllen = sizeof cm.buf};
    ssize_t n = recvmsg(l->fd, &mh, MSG_CMSG_CLOEXEC | MSG_DONTWAIT);
    int bad = (mh.msg_flags & MSG_CTRUNC) != 0;
    for (struct cmsghdr *c = CMSG_FIRSTHDR(&mh); n > 0 && c; c = CMSG_NXTHDR(&mh, c)) {
        if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS)
            continue;
        size_t nfd = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
        for (size_t i = 0; i < nfd; i++) {
            int fd;
            memcpy(&fd, CMSG_DATA(c) + i * sizeof(int), sizeof fd);
            if (l->rfd < 0 && !bad)
                l->rfd = fd;
            else {
                close(fd);
                bad = 1;
            }
        }
    }
    if (n < 0 && (errno == EAGAIN || errno == EINTR))
        return 0;
    if (n <= 0)
        return -1;
    if (bad)
        return -2;
    l->rgot += (size_t)n;
    return l->rgot == sizeof l->rmsg ? 1 : 0;
}

/* A whole region message: map or unmap, and answer it. A bad one gets an
 * error answer; the link and its other regions carry on. */
static void region_msg(kvtcd_local_link *l)
{
    char why[112] = "ok";
    int st;
    struct kvtc_local_region m = l->rmsg;
    int fd = l->rfd;
    l->rfd = -1;
    l->rgot = 0;
    if (memcmp(m.magic, KVTC_LOCAL_REGION_MAGIC, sizeof m.magic) != 0) {
        st = KVTC_EPROTO;
        snprintf(why, sizeof why, "not a region message");
    } else if (m.op == KVTC_LOCAL_REGION_MAP) {
        st = fd < 0 ? KVTC_EINVAL
                    : kvtcd_region_map(&l->regions, l->pid, fd, &m, why, sizeof why);
        if (fd < 0)
            snprintf(why, sizeof why, "region without its memfd");
    } else if (m.op == KVTC_LOCAL_REGION_UNMAP && fd < 0) {
        st = kvtcd_region_unmap(&l->regions, m.id);
        if (st)
            snprintf(why, sizeof why, "no such region");
    } else {
        st = KVTC_EINVAL;
        snprintf(why, sizeof why, "unknown region operation");
    }
    if (fd >= 0)
        close(fd); /* mapped (or refused): the descriptor is not needed */
    if (st) {
        l->srv->m.local_regions_refused++;
        KVTCD_WARN("session", "local region refused session=%llu reason=\"%s\"",
                   (unsigned long long)l->sess->id, why);
    }
    send_reply(l->fd, st, 0, why);
}

static void on_link_event(uv_poll_t *h, int status, int events)
{
    kvtcd_local_link *l = h->data;
    if (status < 0) {
        link_close(l);
        return;
    }
    if (!l->sess) {
        /* The handshake, possibly in pieces. */
        ssize_t n = recv(l->fd, (char *)&l->hello + l->got,
                         sizeof l->hello - l->got, 0);
        if (n < 0 && (errno == EAGAIN || errno == EINTR))
            return;
        if (n <= 0) {
            link_close(l);
            return;
        }
        l->got += (size_t)n;
        if (l->got == sizeof l->hello)
            handshake(l);
        return;
    }
    /* Bound: region messages (local_region.h), or EOF when the client is
     * gone. Anything else ends the local path. */
    int n = read_region_msg(l);
    if (n == 0 && !(events & UV_DISCONNECT))
        return;
    if (n == 1) {
        region_msg(l);
        return;
    }
    KVTCD_INFO("session", "local path closed session=%llu reason=\"%s\"",
               (unsigned long long)l->sess->id,
               n == -2 ? "malformed region message" : "socket closed");
    link_close(l);
}

static void on_accept(uv_poll_t *h, int status, int events)
{
    kvtcd_local *lp = h->data;
    (void)events;
    if (status < 0)
        return;
    for (;;) {
        int fd = accept4(lp->fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd < 0)
            return; /* EAGAIN, or out of descriptors: retried next event */
        kvtcd_local_link *l = NULL;
        if (lp->n_pending >= MAX_PENDING || lp->srv->draining ||
            !(l = calloc(1, sizeof *l))) {
            close(fd);
            continue;
        }
        l->lp = lp;
        l->srv = lp->srv;
        l->fd = fd;
        l->pidfd = -1;
        l->rfd = -1;
        l->refs = 1;
        if (uv_poll_init(lp->srv->loop, &l->poll, fd) != 0) {
            close(fd);
            free(l);
            continue;
        }
        l->poll.data = l;
        l->next = lp->links;
        if (lp->links)
            lp->links->prev = l;
        lp->links = l;
        lp->n_pending++;
        uv_poll_start(&l->poll, UV_READABLE | UV_DISCONNECT, on_link_event);
    }
}

/* ---- the listener --------------------------------------------------------- */

static void read_boot_id(char *out, size_t len)
{
    out[0] = '\0';
    FILE *f = fopen("/proc/sys/kernel/random/boot_id", "r");
    if (!f)
        return;
    if (fgets(out, (int)len, f))
        out[strcspn(out, "\n")] = '\0';
    fclose(f);
}

/* KVTCD_LOCAL_SPIN_US overrides the workers' polling window (and with it
 * whether the loop polls for finished copies), for measuring. */
static unsigned spin_us(void)
{
    const char *e = getenv("KVTCD_LOCAL_SPIN_US");
    if (!e || !*e)
        return kvtcd_cworkers_default_spin_us();
    unsigned long v = strtoul(e, NULL, 0);
    return v > 10000 ? 10000u : (unsigned)v;
}

/* KVTCD_LOCAL_LINGER_US=N: how long the loop keeps polling after it
 * answered a local request, while the policy allows polling. */
static uint64_t linger_ns(void)
{
    const char *e = getenv("KVTCD_LOCAL_LINGER_US");
    unsigned long v = e && *e ? strtoul(e, NULL, 0) : KVTCD_LOCAL_LINGER_US;
    return (uint64_t)(v > 10000 ? 10000 : v) * 1000u;
}

/* KVTCD_LOCAL_SMALL=batch|inline overrides how small copies run (default:
 * batch with 8 or more online CPUs; with fewer, a worker has no core of
 * its own and inline is faster: 2-core box, 256 KiB gets at depth 4, 46-55
 * us per get inline, 64-67 us batched). */
static int small_batch(void)
{
    const char *e = getenv("KVTCD_LOCAL_SMALL");
    if (e && !strcmp(e, "batch"))
        return 1;
    if (e && !strcmp(e, "inline"))
        return 0;
    return sysconf(_SC_NPROCESSORS_ONLN) >= 8;
}

int kvtcd_local_init(kvtcd_server *srv)
{
    const char *cfgp = srv->cfg.local_path;
    if (!strcmp(cfgp, "off"))
        return 0;
    kvtcd_local *lp = calloc(1, sizeof *lp);
    if (!lp)
        return KVTC_ENOMEM;
    lp->srv = srv;
    lp->fd = -1;
    lp->spin_us = spin_us();
    lp->batch = small_batch();
    unsigned threads = srv->cfg.local_copy_threads
                           ? srv->cfg.local_copy_threads
                           : kvtcd_cworkers_default_threads();
    const char *pol = getenv("KVTCD_LOCAL_SPIN_POLICY");
    lp->spin_always = pol && !strcmp(pol, "always");
    long cpus = sysconf(_SC_NPROCESSORS_ONLN);
    lp->cpus = cpus > 0 ? (unsigned)cpus : 1;
    lp->workers = threads;
    lp->linger_ns = linger_ns();
    if (kvtcd_cworkers_create(srv->loop, threads, lp->spin_us, &lp->cw) < 0) {
        KVTCD_WARN("server", "local path off: cannot start %u copy "
                             "workers", threads);
        free(lp);
        return 0;
    }
    lp->polling = 1; /* the workers start with their gate open */
    update_polling(lp);
    read_boot_id(lp->host_id, sizeof lp->host_id);
    struct sockaddr_un sa;
    memset(&sa, 0, sizeof sa);
    sa.sun_family = AF_UNIX;
    socklen_t salen;
    if (!cfgp[0] || !strcmp(cfgp, "auto")) {
        /* Abstract: nothing on disk to go stale after a crash, and unique
         * while the UCX port is bound. */
        snprintf(lp->name, sizeof lp->name, "@kvtcd-%.100s", srv->listen_addr);
        size_t nl = strlen(lp->name + 1);
        if (nl > sizeof sa.sun_path - 1)
            nl = sizeof sa.sun_path - 1;
        memcpy(sa.sun_path + 1, lp->name + 1, nl);
        lp->name[1 + nl] = '\0';
        salen = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + 1 + nl);
    } else {
        /* config.c bounds the length. */
        snprintf(lp->name, sizeof lp->name, "%s", cfgp);
        snprintf(lp->path, sizeof lp->path, "%s", cfgp);
        snprintf(sa.sun_path, sizeof sa.sun_path, "%s", cfgp);
        salen = (socklen_t)sizeof sa;
        struct stat st;
        /* A socket left by a daemon that died; never anything else. */
        if (lstat(cfgp, &st) == 0 && S_ISSOCK(st.st_mode))
            unlink(cfgp);
    }
    lp->fd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (lp->fd < 0 || bind(lp->fd, (struct sockaddr *)&sa, salen) != 0 ||
        listen(lp->fd, 64) != 0) {
        KVTCD_WARN("server", "local path off: cannot listen path=%s "
                             "err=\"%s\"",
                   lp->name, strerror(errno));
        if (lp->fd >= 0)
            close(lp->fd);
        kvtcd_cworkers_close(lp->cw);
        free(lp);
        return 0;
    }
    if (lp->path[0])
        chmod(lp->path, 0660); /* the path is useless to other users */
    uv_poll_init(srv->loop, &lp->poll, lp->fd);
    lp->poll.data = lp;
    uv_poll_start(&lp->poll, UV_READABLE, on_accept);
    if (kvtcd_ltrace_open(getenv("KVTCD_LOCAL_TRACE"), &srv->ltrace) < 0)
        KVTCD_WARN("server", "local trace off: out of memory");
    srv->local = lp;
    KVTCD_INFO("server", "local path listening path=%s host_id=%s "
                         "copy_workers=%u spin_us=%u spin_policy=%s "
                         "linger_us=%llu small_copies=%s",
               lp->name, lp->host_id[0] ? lp->host_id : "-", threads,
               lp->spin_us, lp->spin_always ? "always" : "adaptive",
               (unsigned long long)(lp->linger_ns / 1000u),
               lp->batch ? "batch" : "inline");
    return 0;
}

static void on_listener_closed(uv_handle_t *h)
{
    kvtcd_local *lp = h->data;
    close(lp->fd);
    free(lp);
}

void kvtcd_local_close(kvtcd_server *srv)
{
    kvtcd_local *lp = srv->local;
    if (!lp)
        return;
    srv->local = NULL;
    while (lp->links)
        link_close(lp->links);
    /* Deferred copies (a drain that timed out) still run, to find their
     * link closed and report ECANCELED; the workers stop once every copy
     * has reported. */
    for (kvtcd_lcopy *j = lp->pend_head, *next; j; j = next) {
        next = j->pend_next;
        j->pend_next = NULL;
        kvtcd_cworkers_submit(lp->cw, &j->cj);
    }
    lp->pend_head = lp->pend_tail = NULL;
    kvtcd_cworkers_close(lp->cw);
    lp->cw = NULL;
    /* Copies still finishing are not traced: their records are dropped. */
    kvtcd_ltrace_close(srv->ltrace);
    srv->ltrace = NULL;
    if (lp->path[0])
        unlink(lp->path);
    uv_poll_stop(&lp->poll);
    uv_close((uv_handle_t *)&lp->poll, on_listener_closed);
}

const char *kvtcd_local_name(const kvtcd_server *srv)
{
    return srv->local ? srv->local->name : NULL;
}

const char *kvtcd_local_host_id(const kvtcd_server *srv)
{
    return srv->local && srv->local->host_id[0] ? srv->local->host_id : NULL;
}

void kvtcd_local_detach(kvtcd_session *s)
{
    if (s->local)
        link_close(s->local);
}

void kvtcd_local_fail(kvtcd_session *s, const char *why)
{
    s->srv->m.local_failures++;
    if (!s->local_failed)
        KVTCD_WARN("session", "local path failed, falling back to UCX "
                              "payloads session=%llu reason=\"%s\"",
                   (unsigned long long)s->id, why);
    s->local_failed = 1;
    kvtcd_local_detach(s);
}

/* ---- validation ------------------------------------------------------------ */

int kvtcd_local_dest_ok(uint64_t addr, uint64_t len)
{
    if (addr == 0)
        return len == 0 ? 0 : KVTC_EINVAL;
    if (addr >= KVTC_LOCAL_ADDR_LIMIT || len > KVTC_LOCAL_ADDR_LIMIT - addr)
        return KVTC_EINVAL;
    return 0;
}

int kvtcd_local_put_iovs(struct Kvtc__Wire__LocalIov *const *v, size_t n,
                         uint64_t total, struct iovec **out, char *why,
                         size_t whylen)
{
    *out = NULL;
    if (n > KVTC_LOCAL_MAX_IOV) {
        snprintf(why, whylen, "put: %zu local ranges, limit %u", n,
                 KVTC_LOCAL_MAX_IOV);
        return KVTC_ENOSPC;
    }
    uint64_t sum = 0;
    for (size_t i = 0; i < n; i++) {
        uint64_t a = v[i]->addr, l = v[i]->len;
        if (a == 0 || l == 0 || kvtcd_local_dest_ok(a, l) < 0 ||
            l > total - sum) {
            snprintf(why, whylen, "put: local range %zu (addr=0x%llx "
                                  "len=%llu) is empty, out of bounds or past "
                                  "the chunks' %llu bytes",
                     i, (unsigned long long)a, (unsigned long long)l,
                     (unsigned long long)total);
            return KVTC_EINVAL;
        }
        sum += l;
    }
    if (sum != total) {
        snprintf(why, whylen, "put: local ranges hold %llu bytes, the chunks "
                              "%llu",
                 (unsigned long long)sum, (unsigned long long)total);
        return KVTC_EINVAL;
    }
    struct iovec *iov = calloc(n ? n : 1, sizeof *iov);
    if (!iov)
        return KVTC_ENOMEM;
    for (size_t i = 0; i < n; i++) {
        iov[i].iov_base = (void *)(uintptr_t)v[i]->addr;
        iov[i].iov_len = (size_t)v[i]->len;
    }
    *out = iov;
    return 0;
}

/* ---- copies ---------------------------------------------------------------- */

/* The client shut down its end of the socket (libkvtc does when it gives
 * up on operations in flight, then waits for ours to close). The fd stays
 * open while a copy holds the link. */
static int peer_hung_up(int fd)
{
    struct pollfd p = {.fd = fd, .events = POLLRDHUP};
    return poll(&p, 1, 0) > 0 && (p.revents & (POLLRDHUP | POLLHUP | POLLERR));
}

static void lcopy_run(kvtcd_cjob *cj)
{
    kvtcd_lcopy *j = (kvtcd_lcopy *)cj; /* cj is its first member */
    int traced = j->lt.t[KVTCD_LT_START] != 0;
    if (traced)
        j->lt.t[KVTCD_LT_RUN0] = uv_hrtime();
    pid_t pid = j->link->pid;
    int pidfd = j->link->pidfd;
    XXH3_state_t *st = NULL;
    if (j->sum && !(st = XXH3_createState())) {
        j->err = ENOMEM;
        return;
    }
    size_t ri = 0, roff = 0; /* cursor in the remote ranges */
    struct iovec r[MAX_RIOV];
    for (uint32_t i = 0; i < j->n && !j->err; i++) {
        if (st)
            XXH3_64bits_reset(st);
        size_t off = 0;
        if (j->hash_only && j->hash_only[i]) {
            if (st)
                LP_XXH3_UPDATE(st, j->ptr[i], j->len[i]);
            off = j->len[i];
        }
        while (off < j->len[i]) {
            size_t want = j->len[i] - off < PIECE ? j->len[i] - off : PIECE;
            size_t got = 0, tri = ri, troff = roff;
            unsigned nr = 0;
            while (got < want && nr < MAX_RIOV && tri < j->n_remote) {
                size_t left = j->remote[tri].iov_len - troff;
                size_t take = left < want - got ? left : want - got;
                r[nr].iov_base = (char *)j->remote[tri].iov_base + troff;
                r[nr].iov_len = take;
                nr++;
                got += take;
                troff += take;
                if (troff == j->remote[tri].iov_len) {
                    tri++;
                    troff = 0;
                }
            }
            if (got == 0) {
                j->err = EFAULT; /* totals disagree: never by validation */
                break;
            }
            if (__atomic_load_n(&j->link->closed, __ATOMIC_ACQUIRE) ||
                peer_hung_up(j->link->fd)) {
                /* The session ended, its local path closed, or the client
                 * shut its end (it gave up on its operations): it may be
                 * reusing this memory by now. Asked here, not only through
                 * the loop, so a busy loop cannot delay it. */
                j->err = ECANCELED;
                break;
            }
            struct iovec li = {j->ptr[i] + off, got};
            ssize_t n;
            /* Writes: hash the piece first, reading it into cache, so the
             * copy reads it from there. */
            if (st && j->to_client)
                LP_XXH3_UPDATE(st, j->ptr[i] + off, got);
            if (j->region) {
                /* Shared pages (local_region.h): plain copies, never into
                 * another process, so no pid check. */
                n = (ssize_t)kvtcd_region_copy(j->region, j->to_client, &li, r, nr);
            } else if (j->to_client) {
                /* Before every write: a pid whose process exited may be
                 * reused, and must never be written to. */
                if (pidfd_exited(pidfd)) {
                    j->err = ESRCH;
                    break;
                }
                n = process_vm_writev(pid, &li, 1, r, nr, 0);
            } else {
                n = process_vm_readv(pid, &li, 1, r, nr, 0);
            }
            if (n < 0) {
                j->err = errno ? errno : EIO;
                break;
            }
            if ((size_t)n != got) {
                j->err = EFAULT; /* a partial copy: part of a range unmapped */
                break;
            }
            if (st && !j->to_client)
                LP_XXH3_UPDATE(st, j->ptr[i] + off, got);
            off += got;
            ri = tri;
            roff = troff;
        }
        if (st && !j->err)
            j->sum[i] = (uint64_t)XXH3_64bits_digest(st);
    }
    /* Bytes read are the client's only if it still lives: a pid recycled
     * during the copy would have fed us another process's memory. */
    if (!j->err && pidfd_exited(pidfd))
        j->err = ESRCH;
    if (st)
        XXH3_freeState(st);
    if (traced)
        j->lt.t[KVTCD_LT_RUN1] = uv_hrtime();
}

/* Hand job to the workers (counted). */
static void to_workers(kvtcd_local *lp, kvtcd_lcopy *job)
{
    job->pend_next = NULL;
    if (job->lt.t[KVTCD_LT_START]) {
        job->lt.t[KVTCD_LT_QUEUE] = uv_hrtime();
        job->lt.where = 1;
        job->lt.busy = kvtcd_cworkers_busy(lp->cw);
    }
    lp->srv->m.local_copies_workers++;
    kvtcd_cworkers_submit(lp->cw, &job->cj);
}

static void lcopy_done(kvtcd_cjob *cj)
{
    kvtcd_lcopy *j = (kvtcd_lcopy *)cj;
    kvtcd_local_link *l = j->link;
    kvtcd_server *srv = l->srv;
    kvtcd_local *lp = l->lp; /* NULL once the link closed */
    j->link = NULL;
    kvtcd_region_unref(j->region);
    j->region = NULL;
    if (l->inflight && --l->inflight == 0 && lp) {
        lp->n_active--;
        update_polling(lp);
    }
    if (lp && lp->linger_ns)
        lp->last_done_ns = uv_hrtime();
    link_unref(l);
    if (!j->lt.t[KVTCD_LT_START] || !srv->ltrace) {
        j->done(j);
        return;
    }
    /* done answers the request and may free j: keep the record. */
    kvtcd_lt_rec r = j->lt;
    r.t[KVTCD_LT_DONE] = uv_hrtime();
    j->done(j);
    r.t[KVTCD_LT_REPLY] = uv_hrtime();
    kvtcd_ltrace_add(srv->ltrace, &r);
}

/* The loop runs job itself (flush): stamped as such when traced. */
static void run_here(kvtcd_lcopy *job)
{
    if (job->lt.t[KVTCD_LT_START]) {
        job->lt.t[KVTCD_LT_QUEUE] = uv_hrtime();
        job->lt.where = 0;
        job->lt.busy = kvtcd_cworkers_busy(job->link->lp->cw);
    }
    lcopy_run(&job->cj);
    lcopy_done(&job->cj);
}

/* KVTCD_LOCAL_INLINE_MAX (bytes) overrides the default, for measuring (0:
 * every copy goes to the workers). */
static uint64_t inline_max(void)
{
    static uint64_t v = UINT64_MAX;
    if (v == UINT64_MAX) {
        const char *e = getenv("KVTCD_LOCAL_INLINE_MAX");
        v = e ? strtoull(e, NULL, 0) : KVTCD_LOCAL_INLINE_MAX;
    }
    return v;
}

int kvtcd_lcopy_start(kvtcd_session *s, kvtcd_lcopy *job)
{
    kvtcd_local_link *l = s->local;
    if (!l || !l->lp || s->local_failed || !s->open)
        return KVTC_ENOTSUP;
    kvtcd_local *lp = l->lp;
    job->link = l;
    job->err = 0;
    l->refs++;
    if (l->inflight++ == 0) {
        lp->n_active++;
        update_polling(lp);
    }
    job->cj.run = lcopy_run;
    job->cj.done = lcopy_done;
    job->pend_next = NULL;
    job->region = kvtcd_region_find(&l->regions, job->remote, job->n_remote);
    if (job->region)
        s->srv->m.local_copies_shared++;
    kvtcd_server *srv = s->srv;
    if (srv->ltrace) {
        job->lt.sess = s->id;
        job->lt.slept = (uint32_t)srv->lt_slept;
        job->lt.t[KVTCD_LT_WAKE] = srv->lt_wake_ns;
        job->lt.t[KVTCD_LT_AM] = srv->lt_am_ns;
        job->lt.t[KVTCD_LT_START] = uv_hrtime();
    }
    uint64_t total = 0;
    for (uint32_t i = 0; i < job->n; i++)
        total += job->len[i];
    job->lt.bytes = total;
    if (total >= inline_max()) {
        to_workers(lp, job);
        return 0;
    }
    if (lp->batch && l->burst) {
        /* A session that pipelines: its copy goes to a worker now rather
         * than at the end of the batch (H100 host, 256 KiB gets at depth
         * 4: the group's last copy began ~12 us after its request, behind
         * the hand-over of the others). Its lone copies count towards
         * BURST_DECAY only while none of its others is in flight. */
        if (l->inflight > 1)
            l->alone = 0;
        else if (++l->alone >= BURST_DECAY)
            l->burst = 0;
        to_workers(lp, job);
        return 0;
    }
    KVTC_FIFO_PUSH(lp->pend_head, lp->pend_tail, job, pend_next);
    return 0;
}

int kvtcd_local_flush(kvtcd_server *srv)
{
    kvtcd_local *lp = srv->local;
    if (!lp || !lp->pend_head)
        return 0;
    kvtcd_lcopy *first = lp->pend_head;
    lp->pend_head = lp->pend_tail = NULL;
    if (!lp->batch) {
        /* Few cores: each on the loop, in arrival order. */
        int n = 0;
        for (kvtcd_lcopy *j = first, *next; j; j = next) {
            next = j->pend_next;
            j->pend_next = NULL;
            run_here(j);
            n++;
        }
        srv->m.local_copies_loop += (uint64_t)n;
        return n;
    }
    /* Alone (nothing queued or copying): here, saving the hop. Otherwise
     * behind the others, in arrival order. A lone copy of a session that
     * pipelines goes to a worker all the same: its next requests are
     * probably on the wire, and the loop must be free to read them and
     * hand them out, or they wait for this copy (a depth-4 client's first
     * request usually arrives alone, the other three a moment later). */
    int here = kvtcd_cworkers_busy(lp->cw) == 0;
    if (first->pend_next) {
        for (kvtcd_lcopy *j = first; j; j = j->pend_next) {
            j->link->burst = 1;
            j->link->alone = 0;
        }
    } else if (first->link->burst) {
        here = 0;
        if (++first->link->alone >= BURST_DECAY)
            first->link->burst = 0;
    }
    for (kvtcd_lcopy *j = here ? first->pend_next : first, *next; j; j = next) {
        next = j->pend_next;
        to_workers(lp, j);
    }
    if (!here)
        return 0;
    first->pend_next = NULL;
    srv->m.local_copies_loop++;
    run_here(first); /* may defer more copies: the next flush */
    return 1;
}

unsigned kvtcd_local_copies_busy(const kvtcd_server *srv)
{
    return srv->local ? kvtcd_cworkers_busy(srv->local->cw) : 0;
}

int kvtcd_local_poll_wanted(const kvtcd_server *srv)
{
    const kvtcd_local *lp = srv->local;
    if (!lp || !lp->polling)
        return 0;
    if (kvtcd_cworkers_busy(lp->cw) > 0)
        return 1;
    return lp->linger_ns && uv_hrtime() - lp->last_done_ns < lp->linger_ns;
}

unsigned kvtcd_local_active_clients(const kvtcd_server *srv)
{
    return srv->local ? srv->local->n_active : 0;
}

int kvtcd_local_polling(const kvtcd_server *srv)
{
    return srv->local ? srv->local->polling : 0;
}

uint64_t kvtcd_local_polled_ns(const kvtcd_server *srv)
{
    return srv->local ? kvtcd_cworkers_polled_ns(srv->local->cw) : 0;
}
