/* local_region.c - client memory shared with kvtcd (see local_region.h). */
#include "local_region.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <unistd.h>

#include "kvtc_errors.h"

#ifndef F_GET_SEALS
#define F_GET_SEALS 1034
#endif
#ifndef F_SEAL_SHRINK
#define F_SEAL_SHRINK 0x0002
#define F_SEAL_GROW 0x0004
#endif

/* Regions up to this size get their page tables filled at map time, so the
 * first copies into them take no faults; larger ones fault on first use,
 * on the copy workers, rather than hold the loop thread (a few ms at most
 * here; a client could otherwise make the loop populate a GiB a message). */
#define POPULATE_MAX (64ull << 20)
#define PROBE 16u

struct kvtcd_region {
    uint64_t id;
    uint64_t caddr, len;        /* the client's range */
    uint8_t *map;               /* kvtcd's mapping of the same pages */
    uint32_t refs;              /* 1 while in the table, + 1 per job */
};

static uint64_t g_mapped; /* atomic */

uint64_t kvtcd_regions_mapped(void)
{
    return __atomic_load_n(&g_mapped, __ATOMIC_RELAXED);
}

void kvtcd_region_unref(kvtcd_region *rg)
{
    if (!rg || --rg->refs)
        return;
    munmap(rg->map, rg->len);
    __atomic_fetch_sub(&g_mapped, 1, __ATOMIC_RELAXED);
    free(rg);
}

/* Does the client see at caddr + off what kvtcd writes at map + off? */
static int probe_at(pid_t pid, uint8_t *map, uint64_t caddr, uint64_t off)
{
    uint8_t saved[PROBE], mark[PROBE], back[PROBE];
    if (getrandom(mark, sizeof mark, 0) != (ssize_t)sizeof mark)
        return 0;
    memcpy(saved, map + off, PROBE);
    memcpy(map + off, mark, PROBE);
    struct iovec li = {back, PROBE};
    struct iovec ri = {(void *)(uintptr_t)(caddr + off), PROBE};
    ssize_t n = process_vm_readv(pid, &li, 1, &ri, 1, 0);
    memcpy(map + off, saved, PROBE);
    return n == (ssize_t)PROBE && memcmp(back, mark, PROBE) == 0;
}

int kvtcd_region_map(kvtcd_regions *t, pid_t pid, int fd,
                     const struct kvtc_local_region *m, char *why,
                     size_t whylen)
{
    long page = sysconf(_SC_PAGESIZE);
    uint64_t a = m->addr, len = m->len;
    if (m->reserved != 0 || len == 0 || len > KVTC_LOCAL_MAX_REGION_BYTES ||
        len % (uint64_t)page != 0 || a % (uint64_t)page != 0 ||
        a >= KVTC_LOCAL_ADDR_LIMIT || len > KVTC_LOCAL_ADDR_LIMIT - a) {
        snprintf(why, whylen, "bad region (address, length or reserved "
                              "field)");
        return KVTC_EINVAL;
    }
    if (t->n >= KVTC_LOCAL_MAX_REGIONS) {
        snprintf(why, whylen, "too many regions (%u)", KVTC_LOCAL_MAX_REGIONS);
        return KVTC_ENOSPC;
    }
    for (uint32_t i = 0; i < t->n; i++) {
        const kvtcd_region *o = t->r[i];
        if (o->id == m->id || (a < o->caddr + o->len && o->caddr < a + len)) {
            snprintf(why, whylen, "region id in use or overlapping another");
            return KVTC_EINVAL;
        }
    }
    /* A memfd whose size cannot change under our mapping: a shrink would
     * turn our copies into SIGBUS. */
    int seals = fcntl(fd, F_GET_SEALS);
    if (seals < 0 || (seals & (F_SEAL_SHRINK | F_SEAL_GROW)) !=
                         (F_SEAL_SHRINK | F_SEAL_GROW)) {
        snprintf(why, whylen, "not a memfd sealed against shrink and grow");
        return KVTC_EINVAL;
    }
    struct stat st;
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode) || (uint64_t)st.st_size < len) {
        snprintf(why, whylen, "memfd smaller than the region");
        return KVTC_EINVAL;
    }
    int flags = MAP_SHARED | (len <= POPULATE_MAX ? MAP_POPULATE : 0);
    uint8_t *map = mmap(NULL, len, PROT_READ | PROT_WRITE, flags, fd, 0);
    if (map == MAP_FAILED) {
        snprintf(why, whylen, "mmap: %s", strerror(errno));
        return KVTC_ENOMEM;
    }
    if (!probe_at(pid, map, a, 0) || !probe_at(pid, map, a, len - PROBE)) {
        munmap(map, len);
        snprintf(why, whylen, "the client's range is not this memfd");
        return KVTC_EINVAL;
    }
    kvtcd_region *rg = calloc(1, sizeof *rg);
    if (!rg) {
        munmap(map, len);
        snprintf(why, whylen, "out of memory");
        return KVTC_ENOMEM;
    }
    rg->id = m->id;
    rg->caddr = a;
    rg->len = len;
    rg->map = map;
    rg->refs = 1;
    t->r[t->n++] = rg;
    __atomic_fetch_add(&g_mapped, 1, __ATOMIC_RELAXED);
    return 0;
}

int kvtcd_region_unmap(kvtcd_regions *t, uint64_t id)
{
    for (uint32_t i = 0; i < t->n; i++) {
        if (t->r[i]->id != id)
            continue;
        kvtcd_region *rg = t->r[i];
        t->r[i] = t->r[--t->n];
        t->r[t->n] = NULL;
        kvtcd_region_unref(rg);
        return 0;
    }
    return KVTC_ENOENT;
}

void kvtcd_regions_clear(kvtcd_regions *t)
{
    while (t->n)
        kvtcd_region_unmap(t, t->r[t->n - 1]->id);
}

kvtcd_region *kvtcd_region_find(kvtcd_regions *t, const struct iovec *r,
                                size_t n)
{
    if (!t->n || !n)
        return NULL;
    uint64_t a0 = (uintptr_t)r[0].iov_base;
    kvtcd_region *rg = NULL;
    for (uint32_t i = 0; i < t->n && !rg; i++)
        if (a0 - t->r[i]->caddr < t->r[i]->len)
            rg = t->r[i];
    if (!rg)
        return NULL;
    for (size_t k = 0; k < n; k++) {
        uint64_t a = (uintptr_t)r[k].iov_base, l = r[k].iov_len;
        /* a - caddr wraps for addresses below the region: rejected too. */
        if (a - rg->caddr > rg->len || l > rg->len - (a - rg->caddr))
            return NULL;
    }
    rg->refs++;
    return rg;
}

size_t kvtcd_region_copy(const kvtcd_region *rg, int to_client,
                         const struct iovec *local, const struct iovec *r,
                         unsigned nr)
{
    uint8_t *lp = local->iov_base;
    size_t left = local->iov_len, moved = 0;
    for (unsigned k = 0; k < nr && left; k++) {
        size_t n = r[k].iov_len < left ? r[k].iov_len : left;
        uint8_t *shared = rg->map + ((uintptr_t)r[k].iov_base - rg->caddr);
        if (to_client)
            memcpy(shared, lp, n);
        else
            memcpy(lp, shared, n);
        lp += n;
        left -= n;
        moved += n;
    }
    return moved;
}
