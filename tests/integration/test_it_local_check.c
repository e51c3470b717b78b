/* Who verifies gets (docs/protocol.md, GetRequest.client_checks). Local
 * path: with KVTC_LOCAL_CHECK=client libkvtc hashes what kvtcd wrote into
 * its buffer against the reply's checksum and kvtcd skips its own read;
 * with =daemon kvtcd verifies before it writes. Over UCX libkvtc always
 * checks what arrived, and kvtcd re-reads the stored bytes beside the send
 * (KVTC_UCX_CHECK=daemon: before it), dropping a chunk that fails. Every
 * way, a stored byte flipped in kvtcd's memory makes the get fail with
 * KVTC_ECORRUPT: never the bytes with an OK. The flip comes from outside,
 * as a memory fault would: the test finds the chunk's unique marker in
 * kvtcd's memory (/proc/PID/maps + process_vm_readv; kvtcd is its child)
 * and rewrites one byte with process_vm_writev. */
#include "itest.h"

#include <criterion/criterion.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/uio.h>
#include <time.h>

#define SPACE 0x4c434b00u
#define MARK_LEN 32u
#define WINDOW (4u << 20)
#define MAP_MAX (4ull << 30)

static kvtc_conn *connect_check(const struct itest_daemon *d, const char *who)
{
    /* libkvtc reads KVTC_LOCAL and KVTC_LOCAL_CHECK when it connects. */
    setenv("KVTC_LOCAL", "auto", 1);
    setenv("KVTC_LOCAL_CHECK", who, 1);
    kvtc_conn *c = itest_connect(d);
    kvtc_server_info info;
    cr_assert_eq(kvtc_server_info_get(c, &info), 0);
    cr_assert_eq(info.local_path, 1, "local path not bound: %s", itest_log_tail(d));
    return c;
}

/* Flip one bit at offset off past every copy of mark[MARK_LEN] in pid's
 * writable mappings. Returns the number of copies changed. */
static int flip_in_process(pid_t pid, const uint8_t *mark, size_t off)
{
    char path[64];
    snprintf(path, sizeof path, "/proc/%d/maps", (int)pid);
    FILE *f = fopen(path, "r");
    cr_assert(f, "open %s", path);
    uint8_t *buf = malloc(WINDOW);
    cr_assert(buf);
    int flipped = 0;
    char line[512];
    while (fgets(line, sizeof line, f)) {
        uint64_t lo, hi;
        char perm[8];
        /* Private writable memory only, and not the sanitizers' shadow
         * (terabytes of address space under ASan): the host slab is far
         * below MAP_MAX. */
        if (sscanf(line, "%" SCNx64 "-%" SCNx64 " %7s", &lo, &hi, perm) != 3 ||
            perm[0] != 'r' || perm[1] != 'w' || perm[3] != 'p' || hi - lo > MAP_MAX)
            continue;
        for (uint64_t a = lo; a < hi; a += WINDOW - MARK_LEN) {
            size_t n = hi - a < WINDOW ? (size_t)(hi - a) : WINDOW;
            struct iovec l = {buf, n}, r = {(void *)(uintptr_t)a, n};
            ssize_t got = process_vm_readv(pid, &l, 1, &r, 1, 0);
            if (got < (ssize_t)MARK_LEN)
                continue;
            for (size_t i = 0; i + MARK_LEN <= (size_t)got; i++) {
                if (buf[i] != mark[0] || memcmp(buf + i, mark, MARK_LEN) != 0)
                    continue;
                uint8_t b;
                struct iovec bl = {&b, 1};
                struct iovec br = {(void *)(uintptr_t)(a + i + off), 1};
                cr_assert_eq(process_vm_readv(pid, &bl, 1, &br, 1, 0), 1);
                b ^= 0x10;
                cr_assert_eq(process_vm_writev(pid, &bl, 1, &br, 1, 0), 1);
                flipped++;
            }
            if (n < WINDOW)
                break;
        }
    }
    fclose(f);
    free(buf);
    return flipped;
}

Test(it_local_check, client_checks_round_trips, .timeout = 120)
{
    struct itest_daemon d;
    itest_setup(ITEST_TLS_TCP);
    itest_daemon_start(&d, "256M", 0, NULL);
    kvtc_conn *c = connect_check(&d, "client");
    static const size_t sizes[] = {1024, (256u << 10) + 3, 4u << 20};
    enum { NS = sizeof sizes / sizeof sizes[0] };
    uint8_t *src[NS], *dst[NS];
    kvtc_get_item it[NS];
    for (uint32_t i = 0; i < NS; i++) {
        src[i] = malloc(sizes[i]);
        dst[i] = malloc(sizes[i]);
        cr_assert(src[i] && dst[i]);
        itest_fill(src[i], sizes[i], i);
        kvtc_key k = itest_key(SPACE, i);
        cr_assert_eq(kvtc_put(c, &k, src[i], sizes[i]), 0, "put: %s", kvtc_last_error(c));
        size_t got = 0;
        memset(dst[i], 0, sizes[i]);
        cr_assert_eq(kvtc_get(c, &k, dst[i], sizes[i], &got), 0, "get %zu: %s", sizes[i],
                     kvtc_last_error(c));
        cr_assert_eq(got, sizes[i]);
        cr_assert(itest_check(dst[i], sizes[i], i), "%zu B came back different", sizes[i]);
        memset(dst[i], 0, sizes[i]);
        it[i] = (kvtc_get_item){.key = k, .buf = dst[i], .capacity = sizes[i]};
    }
    /* A batch, every hit checked here. */
    cr_assert_eq(kvtc_get_batch(c, it, NS, NULL), 0, "batch: %s", kvtc_last_error(c));
    for (uint32_t i = 0; i < NS; i++) {
        cr_assert_eq(it[i].status, 0);
        cr_assert(itest_check(dst[i], sizes[i], i));
    }
    cr_expect_geq(itest_daemon_metric(&d, "kvtc_local_client_checked_total"), 2.0 * NS);
    cr_expect_eq(itest_daemon_metric(&d, "kvtc_local_failures_total"), 0);
    kvtc_disconnect(c);
    for (uint32_t i = 0; i < NS; i++) {
        free(src[i]);
        free(dst[i]);
    }
    itest_daemon_stop(&d);
}

Test(it_local_check, flipped_stored_byte_fails_the_get, .timeout = 120)
{
    struct itest_daemon d;
    itest_setup(ITEST_TLS_TCP);
    itest_daemon_start(&d, "256M", 0, NULL);
    kvtc_conn *cc = connect_check(&d, "client");
    kvtc_conn *dc = connect_check(&d, "daemon");
    const size_t n = 256u << 10;
    enum { NK = 3, VICTIM = 1 };
    uint8_t *src[NK], *dst[NK];
    kvtc_get_item it[NK];
    uint8_t mark[MARK_LEN];
    for (uint32_t i = 0; i < NK; i++) {
        src[i] = malloc(n);
        dst[i] = malloc(n);
        cr_assert(src[i] && dst[i]);
        itest_fill(src[i], n, 100 + i);
        kvtc_key k = itest_key(SPACE, 100 + i);
        cr_assert_eq(kvtc_put(cc, &k, src[i], n), 0, "put: %s", kvtc_last_error(cc));
        it[i] = (kvtc_get_item){.key = k, .buf = dst[i], .capacity = n};
    }
    /* The victim's bytes at 4096.. are unique to it (seeded fill). */
    memcpy(mark, src[VICTIM] + 4096, MARK_LEN);
    int flipped = flip_in_process(d.pid, mark, MARK_LEN + 7);
    cr_assert_geq(flipped, 1, "chunk not found in kvtcd's memory");

    /* Client check: kvtcd writes what it holds, libkvtc refuses it. */
    cr_assert_eq(kvtc_get_batch(cc, it, NK, NULL), KVTC_ECORRUPT, "client check let it through: %s",
                 kvtc_last_error(cc));
    for (uint32_t i = 0; i < NK; i++) {
        if (i == VICTIM) {
            cr_expect_eq(it[i].status, KVTC_ECORRUPT);
        } else {
            cr_expect_eq(it[i].status, 0);
            cr_expect(itest_check(dst[i], n, 100 + i));
        }
    }
    size_t got = 0;
    cr_expect_eq(kvtc_get(cc, &it[VICTIM].key, dst[VICTIM], n, &got), KVTC_ECORRUPT);
    cr_expect_geq(itest_daemon_metric(&d, "kvtc_local_client_checked_total"), NK + 1.0);

    /* kvtcd's own check: the same chunk fails there, and leaves the index. */
    cr_expect_eq(kvtc_get(dc, &it[VICTIM].key, dst[VICTIM], n, &got), KVTC_ECORRUPT,
                 "daemon check let it through: %s", kvtc_last_error(dc));
    cr_expect_eq(kvtc_get(dc, &it[VICTIM].key, dst[VICTIM], n, &got), KVTC_ENOENT);
    cr_expect_geq(itest_daemon_metric(&d, "kvtc_corrupt_total"), 1.0);
    cr_expect_eq(itest_daemon_metric(&d, "kvtc_local_failures_total"), 0);
    kvtc_disconnect(cc);
    kvtc_disconnect(dc);
    for (uint32_t i = 0; i < NK; i++) {
        free(src[i]);
        free(dst[i]);
    }
    itest_daemon_stop(&d);
}

/* Over UCX: connect without the local path, KVTC_UCX_CHECK as given. */
static kvtc_conn *connect_ucx(const struct itest_daemon *d, const char *check)
{
    setenv("KVTC_LOCAL", "off", 1);
    setenv("KVTC_UCX_CHECK", check, 1);
    kvtc_conn *c = itest_connect(d);
    unsetenv("KVTC_LOCAL");
    unsetenv("KVTC_UCX_CHECK");
    kvtc_server_info info;
    cr_assert_eq(kvtc_server_info_get(c, &info), 0);
    cr_assert_eq(info.local_path, 0);
    return c;
}

/* 1 while k is in the index. */
static size_t present(kvtc_conn *c, const kvtc_key *k)
{
    size_t hits = 0;
    cr_assert_eq(kvtc_lookup(c, k, 1, NULL, &hits, NULL), 0);
    return hits;
}

Test(it_local_check, ucx_get_of_flipped_byte_fails_and_leaves_the_index, .timeout = 120)
{
    struct itest_daemon d;
    itest_setup(ITEST_TLS_TCP);
    itest_daemon_start(&d, "256M", 0, NULL);
    kvtc_conn *c = connect_ucx(&d, "client");
    kvtc_conn *dc = connect_ucx(&d, "daemon");
    /* eager (hashed inline by kvtcd) and rendezvous (on its pool) sizes */
    static const size_t sizes[] = {256u << 10, 4u << 20, 1024, 4u << 20};
    enum { NK = 4, VICTIM = 1, VICTIM2 = 3 };
    uint8_t *src[NK], *dst[NK];
    kvtc_get_item it[NK];
    for (uint32_t i = 0; i < NK; i++) {
        src[i] = malloc(sizes[i]);
        dst[i] = malloc(sizes[i]);
        cr_assert(src[i] && dst[i]);
        itest_fill(src[i], sizes[i], 200 + i);
        kvtc_key k = itest_key(SPACE, 200 + i);
        cr_assert_eq(kvtc_put(c, &k, src[i], sizes[i]), 0, "put: %s", kvtc_last_error(c));
        it[i] = (kvtc_get_item){.key = k, .buf = dst[i], .capacity = sizes[i]};
    }
    /* Intact: sent before kvtcd's own check (which runs beside the send),
     * every byte right. */
    cr_assert_eq(kvtc_get_batch(c, it, NK, NULL), 0, "batch: %s", kvtc_last_error(c));
    for (uint32_t i = 0; i < NK; i++)
        cr_assert(itest_check(dst[i], sizes[i], 200 + i), "%zu B came back different", sizes[i]);
    cr_expect_geq(itest_daemon_metric(&d, "kvtc_gets_audited_total"), NK);

    uint8_t mark[MARK_LEN];
    memcpy(mark, src[VICTIM] + 4096, MARK_LEN);
    cr_assert_geq(flip_in_process(d.pid, mark, MARK_LEN + 7), 1, "chunk not found in kvtcd's memory");
    memcpy(mark, src[VICTIM2] + 4096, MARK_LEN);
    cr_assert_geq(flip_in_process(d.pid, mark, MARK_LEN + 7), 1, "chunk 2 not found in kvtcd's memory");
    for (uint32_t i = 0; i < NK; i++)
        memset(dst[i], 0, sizes[i]);
    /* libkvtc's check refuses the flipped chunk (kvtcd sent it unread);
     * the others come back intact. */
    cr_assert_eq(kvtc_get_batch(c, it, VICTIM2, NULL), KVTC_ECORRUPT,
                 "the flipped chunk got through: %s", kvtc_last_error(c));
    for (uint32_t i = 0; i < VICTIM2; i++) {
        if (i == VICTIM) {
            cr_expect_eq(it[i].status, KVTC_ECORRUPT);
        } else {
            cr_expect_eq(it[i].status, 0);
            cr_expect(itest_check(dst[i], sizes[i], 200 + i));
        }
    }
    /* kvtcd's check beside the send found it too and dropped it: the key
     * leaves the index a moment after the reply. */
    for (int t = 0; t < 500 && present(c, &it[VICTIM].key); t++)
        nanosleep(&(struct timespec){0, 10 * 1000 * 1000}, NULL);
    cr_expect_eq(present(c, &it[VICTIM].key), 0, "the corrupt chunk stayed in the index");
    cr_expect_geq(itest_daemon_metric(&d, "kvtc_corrupt_total"), 1.0);
    size_t got = 0;
    cr_expect_eq(kvtc_get(c, &it[VICTIM].key, dst[VICTIM], sizes[VICTIM], &got), KVTC_ENOENT);

    /* KVTC_UCX_CHECK=daemon: kvtcd verifies before sending; the chunk is
     * reported corrupt and gone at once. */
    cr_expect_eq(kvtc_get(dc, &it[VICTIM2].key, dst[VICTIM2], sizes[VICTIM2], &got), KVTC_ECORRUPT,
                 "daemon check let it through: %s", kvtc_last_error(dc));
    cr_expect_eq(present(dc, &it[VICTIM2].key), 0);
    cr_expect_geq(itest_daemon_metric(&d, "kvtc_corrupt_total"), 2.0);
    kvtc_disconnect(c);
    kvtc_disconnect(dc);
    for (uint32_t i = 0; i < NK; i++) {
        free(src[i]);
        free(dst[i]);
    }
    itest_daemon_stop(&d);
}
