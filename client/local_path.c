/* The same-host local path, client side (docs/protocol.md, "Local path").
 *
 * After hello, a client whose kernel is the daemon's (HelloReply.host_id is
 * its own boot id) connects to the daemon's unix socket
 * (HelloReply.local_path), allows the daemon to ptrace-read it where Yama
 * asks for that (PR_SET_PTRACER with the daemon's pid from SO_PEERCRED),
 * and presents its session id and token plus a probe the daemon must read
 * out of this process. Once accepted, puts name their buffers and gets
 * their destinations (LocalIov) instead of moving bytes over UCX; the
 * daemon copies with process_vm_readv/writev. Anything that fails here
 * leaves the connection on UCX payloads: the local path is an optimization,
 * never a requirement. */
#include <errno.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/random.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <sys/un.h>
#include <unistd.h>

#include "internal.h"
#include "local_wire.h"

#ifndef PR_SET_PTRACER
#define PR_SET_PTRACER 0x59616d61
#endif

static int boot_id(char *out, size_t len)
{
    FILE *f = fopen("/proc/sys/kernel/random/boot_id", "r");
    if (!f)
        return -1;
    int ok = fgets(out, (int)len, f) != NULL;
    fclose(f);
    if (!ok)
        return -1;
    out[strcspn(out, "\n")] = '\0';
    return 0;
}

int kvtc__local_wanted(const kvtc_conn_params *params)
{
    if (params && (params->field_mask & KVTC_CONN_PARAM_FIELD_LOCAL))
        return params->local != KVTC_LOCAL_OFF;
    const char *e = getenv("KVTC_LOCAL");
    return !(e && (!strcmp(e, "off") || !strcmp(e, "0") || !strcmp(e, "no")));
}

int kvtc__local_check_wanted(void)
{
    const char *e = getenv("KVTC_LOCAL_CHECK");
    if (e && !strcmp(e, "client"))
        return 1;
    if (e && !strcmp(e, "daemon"))
        return 0;
    return KVTC__LOCAL_CHECK_CLIENT_DEFAULT;
}

/* Why the local path is not used, for KVTC_LOCAL_DEBUG (the connection
 * itself is fine either way). */
static void note(const char *why)
{
    if (getenv("KVTC_LOCAL_DEBUG"))
        fprintf(stderr, "libkvtc: local path not used: %s\n", why);
}

int kvtc__local_read_full(int fd, void *buf, size_t len, uint64_t deadline_ns)
{
    size_t got = 0;
    while (got < len) {
        int64_t ms = 1000;
        if (deadline_ns) {
            uint64_t now = kvtc__now_ns();
            if (now >= deadline_ns)
                return -1;
            ms = (int64_t)((deadline_ns - now) / 1000000u) + 1;
        }
        struct pollfd p = {.fd = fd, .events = POLLIN};
        int r = poll(&p, 1, (int)(ms > 1000 ? 1000 : ms));
        if (r < 0 && errno != EINTR)
            return -1;
        if (r <= 0)
            continue;
        ssize_t n = recv(fd, (char *)buf + got, len - got, 0);
        if (n < 0 && (errno == EINTR || errno == EAGAIN))
            continue;
        if (n <= 0)
            return -1;
        got += (size_t)n;
    }
    return 0;
}

void kvtc__local_setup(kvtc_conn *c, uint64_t deadline_ns)
{
    char mine[64];
    struct sockaddr_un sa;
    int fd = -1;
    if (!c->local_path || !c->host_id || !c->bind_token) {
        note("the daemon offers none");
        return;
    }
    if (boot_id(mine, sizeof mine) != 0 || strcmp(mine, c->host_id) != 0) {
        note("the daemon runs on another host");
        return;
    }
    size_t nl = strlen(c->local_path);
    memset(&sa, 0, sizeof sa);
    sa.sun_family = AF_UNIX;
    socklen_t salen;
    if (c->local_path[0] == '@') {
        if (nl - 1 > sizeof sa.sun_path - 1) {
            note("socket name too long");
            return;
        }
        memcpy(sa.sun_path + 1, c->local_path + 1, nl - 1);
        salen = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + nl);
    } else {
        if (nl >= sizeof sa.sun_path) {
            note("socket path too long");
            return;
        }
        memcpy(sa.sun_path, c->local_path, nl);
        salen = (socklen_t)sizeof sa;
    }
    fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd >= 0 && deadline_ns) {
        /* A full backlog (daemon stalled) blocks connect: bounded by what
         * is left of the connect timeout. */
        uint64_t now = kvtc__now_ns();
        uint64_t left = deadline_ns > now ? deadline_ns - now : 1000000u;
        struct timeval tv = {.tv_sec = (time_t)(left / 1000000000u),
                             .tv_usec = (suseconds_t)(left % 1000000000u / 1000u) + 1};
        setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
    }
    if (fd < 0 || connect(fd, (struct sockaddr *)&sa, salen) != 0) {
        note("cannot connect to the daemon's socket");
        goto fail;
    }
    /* Yama (ptrace_scope 1) lets only a declared tracer read us: the
     * daemon, by the pid the kernel vouches for. EINVAL without Yama. */
    struct ucred cr;
    socklen_t crlen = sizeof cr;
    if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cr, &crlen) == 0 && cr.pid > 0)
        (void)prctl(PR_SET_PTRACER, (unsigned long)cr.pid, 0, 0, 0);
    struct kvtc_local_hello h;
    memset(&h, 0, sizeof h);
    memcpy(h.magic, KVTC_LOCAL_MAGIC, sizeof h.magic);
    h.session_id = c->info.session_id;
    h.token = c->bind_token;
    /* The daemon reads the probe out of this very buffer: proof that it
     * can reach our memory, before any request relies on it. */
    uint8_t probe[KVTC_LOCAL_PROBE_BYTES];
    if (getrandom(probe, sizeof probe, 0) != (ssize_t)sizeof probe) {
        note("getrandom failed");
        goto fail;
    }
    memcpy(h.probe, probe, sizeof probe);
    h.probe_addr = (uint64_t)(uintptr_t)probe;
    if (send(fd, &h, sizeof h, MSG_NOSIGNAL) != (ssize_t)sizeof h) {
        note("handshake send failed");
        goto fail;
    }
    struct kvtc_local_reply r;
    if (kvtc__local_read_full(fd, &r, sizeof r, deadline_ns) != 0 ||
        memcmp(r.magic, KVTC_LOCAL_MAGIC, sizeof r.magic) != 0) {
        note("no handshake reply");
        goto fail;
    }
    r.msg[sizeof r.msg - 1] = '\0';
    if (r.status != 0) {
        if (getenv("KVTC_LOCAL_DEBUG"))
            fprintf(stderr, "libkvtc: local path refused: %s\n", r.msg);
        goto fail;
    }
    c->local_fd = fd;
    c->local_ok = 1;
    c->local_regions = (r.flags & KVTC_LOCAL_FLAG_REGIONS) != 0;
    c->info.local_path = 1;
    return;
fail:
    if (fd >= 0)
        close(fd);
}

void kvtc__local_drain(kvtc_conn *c)
{
    if (c->local_fd < 0)
        return;
    /* kvtcd stops its copies for us once it sees our end close, and closes
     * its end only when none is left (daemon/local_path.c): until then it
     * may still write into buffers of operations we are about to report
     * as failed. Bounded: a daemon that does not answer is stuck or gone. */
    shutdown(c->local_fd, SHUT_WR);
    uint64_t end = kvtc__now_ns() + (uint64_t)KVTC__LOCAL_DRAIN_MS * 1000000u;
    for (;;) {
        uint64_t now = kvtc__now_ns();
        if (now >= end)
            break;
        struct pollfd p = {.fd = c->local_fd, .events = POLLIN};
        int r = poll(&p, 1, (int)((end - now) / 1000000u) + 1);
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0)
            break;
        char buf[64];
        ssize_t n = recv(c->local_fd, buf, sizeof buf, MSG_DONTWAIT);
        if (n < 0 && (errno == EINTR || errno == EAGAIN))
            continue;
        if (n <= 0)
            break; /* EOF: kvtcd is done with our memory */
    }
    kvtc__local_off(c);
}

void kvtc__local_off(kvtc_conn *c)
{
    c->local_ok = 0;
    c->local_regions = 0;
    c->info.local_path = 0;
    if (c->local_fd >= 0)
        close(c->local_fd);
    c->local_fd = -1;
}

void kvtc__local_free(kvtc_conn *c)
{
    kvtc__local_off(c);
    free(c->local_path);
    free(c->host_id);
    c->local_path = c->host_id = NULL;
}
