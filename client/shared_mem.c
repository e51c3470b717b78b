/* Chunk buffers shared with kvtcd (kvtc_mem_alloc; common/local_wire.h,
 * struct kvtc_local_region).
 *
 * A block is a sealed memfd mapped here; on a connection whose local path
 * is bound and whose daemon accepts regions, the memfd also goes to kvtcd
 * over the local socket, and kvtcd maps it. Each map and unmap waits for
 * kvtcd's answer, so a request naming the block is only sent once kvtcd
 * has it, and kvtcd has dropped a freed block before its address can be
 * reused. Nothing here is required: a block kvtcd does not take is still
 * good memory, moved by process_vm_readv/writev or UCX payloads. */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <unistd.h>

#include "internal.h"
#include "local_wire.h"

#ifndef MFD_ALLOW_SEALING
#define MFD_ALLOW_SEALING 0x0002U
#endif
#ifndef F_ADD_SEALS
#define F_ADD_SEALS 1033
#define F_SEAL_SEAL 0x0001
#define F_SEAL_SHRINK 0x0002
#define F_SEAL_GROW 0x0004
#endif

/* How long a map or unmap may wait for kvtcd's answer. */
#define REGION_ANSWER_MS 10000u

struct kvtc__mem {
    struct kvtc__mem *next;
    uint8_t *ptr;
    size_t len;
    uint64_t id;
    int shared;                 /* kvtcd mapped it */
};

static void note(const char *what, const char *why)
{
    if (getenv("KVTC_LOCAL_DEBUG"))
        fprintf(stderr, "libkvtc: buffer not shared with kvtcd: %s%s%s\n", what,
                why ? ": " : "", why ? why : "");
}

/* Send one region message (with fd when >= 0) and wait for the answer.
 * 0: done; a KVTC_E* from kvtcd; KVTC_ECONN: the socket failed (the local
 * path is then off: kvtcd drops our regions with it). */
static int region_call(kvtc_conn *c, uint32_t op, const struct kvtc__mem *m, int fd)
{
    struct kvtc_local_region msg;
    memset(&msg, 0, sizeof msg);
    memcpy(msg.magic, KVTC_LOCAL_REGION_MAGIC, sizeof msg.magic);
    msg.op = op;
    msg.id = m->id;
    msg.addr = (uint64_t)(uintptr_t)m->ptr;
    msg.len = m->len;
    union {
        struct cmsghdr h;
        char buf[CMSG_SPACE(sizeof(int))];
    } cm;
    struct iovec iov = {&msg, sizeof msg};
    struct msghdr mh = {.msg_iov = &iov, .msg_iovlen = 1};
    if (fd >= 0) {
        memset(&cm, 0, sizeof cm);
        mh.msg_control = cm.buf;
        mh.msg_controllen = sizeof cm.buf;
        struct cmsghdr *h = CMSG_FIRSTHDR(&mh);
        h->cmsg_level = SOL_SOCKET;
        h->cmsg_type = SCM_RIGHTS;
        h->cmsg_len = CMSG_LEN(sizeof(int));
        memcpy(CMSG_DATA(h), &fd, sizeof fd);
    }
    ssize_t n;
    do
        n = sendmsg(c->local_fd, &mh, MSG_NOSIGNAL);
    while (n < 0 && errno == EINTR);
    struct kvtc_local_reply r;
    uint64_t deadline = kvtc__now_ns() + (uint64_t)REGION_ANSWER_MS * 1000000u;
    if (n != (ssize_t)sizeof msg ||
        kvtc__local_read_full(c->local_fd, &r, sizeof r, deadline) != 0 ||
        memcmp(r.magic, KVTC_LOCAL_MAGIC, sizeof r.magic) != 0) {
        /* The socket's state is unknown now: give up the local path rather
         * than guess which messages kvtcd saw. */
        note("the local socket failed", NULL);
        kvtc__local_off(c);
        return KVTC_ECONN;
    }
    r.msg[sizeof r.msg - 1] = '\0';
    if (r.status)
        note("kvtcd refused it", r.msg);
    return r.status;
}

/* A sealed memfd of len bytes mapped here, or anonymous memory where
 * memfds are not available (*fd then -1). NULL when out of memory. */
static uint8_t *map_block(size_t len, int *fd)
{
    *fd = memfd_create("kvtc-buffer", MFD_CLOEXEC | MFD_ALLOW_SEALING);
    if (*fd >= 0 && (ftruncate(*fd, (off_t)len) != 0 ||
                     fcntl(*fd, F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL) != 0)) {
        close(*fd);
        *fd = -1;
    }
    /* Populated now, so the pages are charged to this process and kvtcd's
     * copies take no faults on them. */
    void *p = *fd >= 0 ? mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE, *fd, 0)
                       : mmap(NULL, len, PROT_READ | PROT_WRITE,
                              MAP_PRIVATE | MAP_ANONYMOUS | MAP_POPULATE, -1, 0);
    if (p == MAP_FAILED) {
        if (*fd >= 0)
            close(*fd);
        *fd = -1;
        return NULL;
    }
    return p;
}

int kvtc_mem_alloc(kvtc_conn *c, size_t size, void **out)
{
    if (!c || !out || size == 0)
        return KVTC_EINVAL;
    *out = NULL;
    size_t page = (size_t)sysconf(_SC_PAGESIZE);
    if (size > KVTC_LOCAL_MAX_REGION_BYTES)
        return KVTC_ENOMEM;
    size_t len = (size + page - 1) / page * page;
    struct kvtc__mem *m = calloc(1, sizeof *m);
    if (!m)
        return KVTC_ENOMEM;
    int fd;
    m->ptr = map_block(len, &fd);
    if (!m->ptr) {
        free(m);
        return KVTC_ENOMEM;
    }
    m->len = len;
    m->id = ++c->mem_next_id;
    if (fd < 0)
        note("no sealed memfd here", NULL);
    else if (c->local_ok && c->local_regions)
        m->shared = region_call(c, KVTC_LOCAL_REGION_MAP, m, fd) == 0;
    if (fd >= 0)
        close(fd); /* the mappings keep the memory */
    m->next = c->mem;
    c->mem = m;
    *out = m->ptr;
    return 0;
}

int kvtc_mem_free(kvtc_conn *c, void *ptr)
{
    if (!ptr)
        return 0;
    if (!c)
        return KVTC_EINVAL;
    struct kvtc__mem **pp = &c->mem;
    while (*pp && (*pp)->ptr != ptr)
        pp = &(*pp)->next;
    struct kvtc__mem *m = *pp;
    if (!m)
        return KVTC_EINVAL;
    *pp = m->next;
    /* kvtcd lets go first, so a later block at this address is never
     * confused with this one there. */
    if (m->shared && c->local_ok)
        (void)region_call(c, KVTC_LOCAL_REGION_UNMAP, m, -1);
    munmap(m->ptr, m->len);
    free(m);
    return 0;
}

int kvtc_mem_shared(const kvtc_conn *c, const void *ptr)
{
    if (!c || !c->local_ok)
        return 0;
    for (const struct kvtc__mem *m = c->mem; m; m = m->next)
        if ((const uint8_t *)ptr >= m->ptr && (const uint8_t *)ptr < m->ptr + m->len)
            return m->shared;
    return 0;
}

void kvtc__mem_free_all(kvtc_conn *c)
{
    while (c->mem) {
        struct kvtc__mem *m = c->mem;
        c->mem = m->next;
        munmap(m->ptr, m->len);
        free(m);
    }
}
