/* kvtcd's side of client memory shared on the local path
 * (daemon/local_region.h), with this process as the client: a sealed memfd
 * mapped here is accepted and copies through kvtcd's mapping show up in
 * ours (and the reverse); every bad region message is refused before
 * anything is used: unsealed or undersized memfds, other files, unaligned
 * or wrapping ranges, overlaps, reused ids, a full table, and an address
 * where the client has some other memory (the probe); lookups take only
 * ranges wholly inside one region. */
#include <criterion/criterion.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "kvtc_errors.h"
#include "local_region.h"

#define SEALS (F_SEAL_SHRINK | F_SEAL_GROW)

static int sealed_memfd(size_t len, int seals)
{
    int fd = memfd_create("t", MFD_CLOEXEC | MFD_ALLOW_SEALING);
    cr_assert(fd >= 0);
    cr_assert_eq(ftruncate(fd, (off_t)len), 0);
    if (seals)
        cr_assert_eq(fcntl(fd, F_ADD_SEALS, seals), 0);
    return fd;
}

static uint8_t *map_fd(int fd, size_t len)
{
    void *p = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    cr_assert(p != MAP_FAILED);
    return p;
}

static struct kvtc_local_region msg(uint64_t id, const void *addr, uint64_t len)
{
    struct kvtc_local_region m;
    memset(&m, 0, sizeof m);
    memcpy(m.magic, KVTC_LOCAL_REGION_MAGIC, sizeof m.magic);
    m.op = KVTC_LOCAL_REGION_MAP;
    m.id = id;
    m.addr = (uint64_t)(uintptr_t)addr;
    m.len = len;
    return m;
}

static int map_msg(kvtcd_regions *t, int fd, struct kvtc_local_region m)
{
    char why[112] = "";
    int rc = kvtcd_region_map(t, getpid(), fd, &m, why, sizeof why);
    if (rc)
        cr_log_info("refused: %s", why);
    return rc;
}

Test(daemon_local_region, copies_go_through_the_shared_pages)
{
    const size_t len = 1u << 20;
    int fd = sealed_memfd(len, SEALS);
    uint8_t *mine = map_fd(fd, len);
    memset(mine, 0x5a, len);
    kvtcd_regions t = {0};
    uint64_t before = kvtcd_regions_mapped();
    cr_assert_eq(map_msg(&t, fd, msg(1, mine, len)), 0);
    close(fd);
    cr_assert_eq(kvtcd_regions_mapped(), before + 1);
    cr_assert_eq(mine[0], 0x5a, "the probe must leave the client's bytes as they were");
    cr_assert_eq(mine[len - 1], 0x5a);

    struct iovec r[2] = {{mine + 4096, 1000}, {mine + 8192, 3000}};
    kvtcd_region *rg = kvtcd_region_find(&t, r, 2);
    cr_assert(rg);
    uint8_t src[4000], back[4000];
    for (size_t i = 0; i < sizeof src; i++)
        src[i] = (uint8_t)(i * 7 + 1);
    struct iovec l = {src, sizeof src};
    cr_assert_eq(kvtcd_region_copy(rg, 1, &l, r, 2), sizeof src);
    cr_assert_eq(memcmp(mine + 4096, src, 1000), 0);
    cr_assert_eq(memcmp(mine + 8192, src + 1000, 3000), 0);
    struct iovec lb = {back, sizeof back};
    cr_assert_eq(kvtcd_region_copy(rg, 0, &lb, r, 2), sizeof back);
    cr_assert_eq(memcmp(back, src, sizeof src), 0);

    /* Unmapped from the table while a job holds it: still mapped. */
    cr_assert_eq(kvtcd_region_unmap(&t, 1), 0);
    cr_assert_eq(kvtcd_region_unmap(&t, 1), KVTC_ENOENT);
    cr_assert_null(kvtcd_region_find(&t, r, 2));
    cr_assert_eq(kvtcd_regions_mapped(), before + 1);
    kvtcd_region_unref(rg);
    cr_assert_eq(kvtcd_regions_mapped(), before);
    munmap(mine, len);
}

Test(daemon_local_region, lookups_take_only_ranges_inside_one_region)
{
    const size_t len = 64u << 10;
    int fa = sealed_memfd(len, SEALS), fb = sealed_memfd(len, SEALS);
    uint8_t *a = map_fd(fa, len), *b = map_fd(fb, len);
    kvtcd_regions t = {0};
    cr_assert_eq(map_msg(&t, fa, msg(1, a, len)), 0);
    cr_assert_eq(map_msg(&t, fb, msg(2, b, len)), 0);
    struct iovec whole = {a, len}, past = {a + 1, len}, before = {a - 1, 2};
    struct iovec both[2] = {{a, 16}, {b, 16}};
    struct iovec wrap = {(void *)(uintptr_t)UINT64_MAX, 2};
    kvtcd_region *rg = kvtcd_region_find(&t, &whole, 1);
    cr_assert(rg);
    kvtcd_region_unref(rg);
    cr_assert_null(kvtcd_region_find(&t, &past, 1));
    cr_assert_null(kvtcd_region_find(&t, &before, 1));
    cr_assert_null(kvtcd_region_find(&t, both, 2), "two regions: the ordinary copy");
    cr_assert_null(kvtcd_region_find(&t, &wrap, 1));
    kvtcd_regions_clear(&t);
    cr_assert_eq(t.n, 0);
    close(fa);
    close(fb);
    munmap(a, len);
    munmap(b, len);
}

Test(daemon_local_region, bad_regions_are_refused)
{
    const size_t len = 64u << 10;
    kvtcd_regions t = {0};
    uint64_t before = kvtcd_regions_mapped();

    int unsealed = sealed_memfd(len, 0);
    uint8_t *u = map_fd(unsealed, len);
    cr_assert_eq(map_msg(&t, unsealed, msg(1, u, len)), KVTC_EINVAL, "unsealed memfd");

    int grow_only = sealed_memfd(len, F_SEAL_GROW);
    uint8_t *g = map_fd(grow_only, len);
    cr_assert_eq(map_msg(&t, grow_only, msg(1, g, len)), KVTC_EINVAL, "may shrink");

    int small = sealed_memfd(len / 2, SEALS);
    uint8_t *s = map_fd(small, len / 2);
    cr_assert_eq(map_msg(&t, small, msg(1, s, len)), KVTC_EINVAL, "memfd smaller than the region");

    FILE *tf = tmpfile();
    cr_assert(tf);
    cr_assert_eq(ftruncate(fileno(tf), (off_t)len), 0);
    cr_assert_eq(map_msg(&t, fileno(tf), msg(1, u, len)), KVTC_EINVAL, "not a memfd");
    fclose(tf);

    int fd = sealed_memfd(len, SEALS);
    uint8_t *m = map_fd(fd, len);
    struct kvtc_local_region bad = msg(1, m + 1, len - 4096);
    cr_assert_eq(map_msg(&t, fd, bad), KVTC_EINVAL, "unaligned address");
    cr_assert_eq(map_msg(&t, fd, msg(1, m, len - 1)), KVTC_EINVAL, "partial page");
    cr_assert_eq(map_msg(&t, fd, msg(1, m, 0)), KVTC_EINVAL, "empty");
    cr_assert_eq(map_msg(&t, fd, msg(1, (void *)(uintptr_t)(KVTC_LOCAL_ADDR_LIMIT - 4096), 8192)),
                 KVTC_EINVAL, "past the address limit");
    bad = msg(1, m, len);
    bad.reserved = 1;
    cr_assert_eq(map_msg(&t, fd, bad), KVTC_EINVAL, "reserved field set");
    /* The client names an address where it has other memory: the probe
     * written through this memfd does not show there. */
    cr_assert_eq(map_msg(&t, fd, msg(1, u, len)), KVTC_EINVAL, "another memfd at that address");
    cr_assert_eq(kvtcd_regions_mapped(), before);

    cr_assert_eq(map_msg(&t, fd, msg(1, m, len)), 0);
    cr_assert_eq(map_msg(&t, fd, msg(1, g, len)), KVTC_EINVAL, "id in use");
    cr_assert_eq(map_msg(&t, fd, msg(2, m, len)), KVTC_EINVAL, "overlaps region 1");
    kvtcd_regions_clear(&t);
    cr_assert_eq(kvtcd_regions_mapped(), before);
    close(unsealed);
    close(grow_only);
    close(small);
    close(fd);
    munmap(u, len);
    munmap(g, len);
    munmap(s, len / 2);
    munmap(m, len);
}

Test(daemon_local_region, the_table_has_a_limit)
{
    const size_t page = (size_t)sysconf(_SC_PAGESIZE);
    static uint8_t *m[KVTC_LOCAL_MAX_REGIONS + 1];
    kvtcd_regions t = {0};
    for (uint32_t i = 0; i <= KVTC_LOCAL_MAX_REGIONS; i++) {
        int fd = sealed_memfd(page, SEALS);
        m[i] = map_fd(fd, page);
        int rc = map_msg(&t, fd, msg(i + 1, m[i], page));
        cr_assert_eq(rc, i < KVTC_LOCAL_MAX_REGIONS ? 0 : KVTC_ENOSPC, "region %u", i);
        close(fd);
    }
    kvtcd_regions_clear(&t);
    for (uint32_t i = 0; i <= KVTC_LOCAL_MAX_REGIONS; i++)
        munmap(m[i], page);
}
