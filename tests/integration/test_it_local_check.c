/* Who verifies gets (docs/protocol.md, GetRequest.client_checks). Local
 * path: with KVTC_LOCAL_CHECK=client libkvtc hashes what kvtcd wrote into
 * its buffer against the reply's checksum and kvtcd skips its own read;
 * with =daemon kvtcd verifies before it writes. Over UCX libkvtc always
 * checks what arrived, and kvtcd re-reads the stored bytes beside the send
 * at most once an --audit-interval (KVTC_UCX_CHECK=daemon: before it, every
 * time), dropping a chunk that fails. Every way, a stored byte flipped in
 * kvtcd's memory makes the get fail with KVTC_ECORRUPT: never the bytes
 * with an OK. The flip comes from outside,
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

/* Chunks stored for a test: chunk i is len[i] bytes seeded seed0 + i,
 * under key (SPACE, seed0 + i), with a get item into dst[i]. */
#define MAX_CHUNKS 8
struct chunks {
    uint32_t n, seed0;
    size_t len[MAX_CHUNKS];
    uint8_t *src[MAX_CHUNKS], *dst[MAX_CHUNKS];
    kvtc_get_item it[MAX_CHUNKS];
};

/* Chunk i's buffers, bytes and get item; its key. */
static kvtc_key chunk_init(struct chunks *ch, uint32_t i, size_t size)
{
    ch->len[i] = size;
    ch->src[i] = malloc(size);
    ch->dst[i] = calloc(1, size);
    cr_assert(ch->src[i] && ch->dst[i]);
    itest_fill(ch->src[i], size, ch->seed0 + i);
    kvtc_key k = itest_key(SPACE, ch->seed0 + i);
    ch->it[i] = (kvtc_get_item){.key = k, .buf = ch->dst[i], .capacity = size};
    return k;
}

static void chunks_put(kvtc_conn *c, struct chunks *ch, const size_t *sizes, uint32_t n,
                       uint32_t seed0)
{
    cr_assert_leq(n, MAX_CHUNKS);
    ch->n = n;
    ch->seed0 = seed0;
    for (uint32_t i = 0; i < n; i++) {
        kvtc_key k = chunk_init(ch, i, sizes[i]);
        cr_assert_eq(kvtc_put(c, &k, ch->src[i], sizes[i]), 0, "put: %s", kvtc_last_error(c));
    }
}

static void chunks_free(struct chunks *ch)
{
    for (uint32_t i = 0; i < ch->n; i++) {
        free(ch->src[i]);
        free(ch->dst[i]);
    }
}

/* Flip a byte of chunk i where kvtcd keeps it (its bytes at 4096.. are
 * unique to it: seeded fill). */
static void chunks_flip(const struct itest_daemon *d, const struct chunks *ch, uint32_t i)
{
    cr_assert_geq(flip_in_process(d->pid, ch->src[i] + 4096, MARK_LEN + 7), 1,
                  "chunk %u not found in kvtcd's memory", i);
}

/* After a batch get of chunks [0, n): victim refused as corrupt, the
 * others intact. */
static void chunks_expect_victim(const struct chunks *ch, uint32_t n, uint32_t victim)
{
    for (uint32_t i = 0; i < n; i++) {
        if (i == victim) {
            cr_expect_eq(ch->it[i].status, KVTC_ECORRUPT);
        } else {
            cr_expect_eq(ch->it[i].status, 0);
            cr_expect(itest_check(ch->dst[i], ch->len[i], ch->seed0 + i));
        }
    }
}

Test(it_local_check, client_checks_round_trips, .timeout = 120)
{
    struct itest_daemon d;
    itest_setup(ITEST_TLS_TCP);
    itest_daemon_start(&d, "256M", 0, NULL);
    kvtc_conn *c = connect_check(&d, "client");
    static const size_t sizes[] = {1024, (256u << 10) + 3, 4u << 20};
    enum { NS = sizeof sizes / sizeof sizes[0] };
    struct chunks ch;
    chunks_put(c, &ch, sizes, NS, 0);
    for (uint32_t i = 0; i < NS; i++) {
        size_t got = 0;
        cr_assert_eq(kvtc_get(c, &ch.it[i].key, ch.dst[i], sizes[i], &got), 0, "get %zu: %s",
                     sizes[i], kvtc_last_error(c));
        cr_assert_eq(got, sizes[i]);
        cr_assert(itest_check(ch.dst[i], sizes[i], i), "%zu B came back different", sizes[i]);
        memset(ch.dst[i], 0, sizes[i]);
    }
    /* A batch, every hit checked here. */
    cr_assert_eq(kvtc_get_batch(c, ch.it, NS, NULL), 0, "batch: %s", kvtc_last_error(c));
    chunks_expect_victim(&ch, NS, UINT32_MAX);
    cr_expect_geq(itest_daemon_metric(&d, "kvtc_local_client_checked_total"), 2.0 * NS);
    cr_expect_eq(itest_daemon_metric(&d, "kvtc_local_failures_total"), 0);
    kvtc_disconnect(c);
    chunks_free(&ch);
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
    static const size_t sizes[] = {256u << 10, 256u << 10, 256u << 10};
    enum { NK = 3, VICTIM = 1 };
    struct chunks ch;
    chunks_put(cc, &ch, sizes, NK, 100);
    chunks_flip(&d, &ch, VICTIM);

    /* Client check: kvtcd writes what it holds, libkvtc refuses it. */
    cr_assert_eq(kvtc_get_batch(cc, ch.it, NK, NULL), KVTC_ECORRUPT,
                 "client check let it through: %s", kvtc_last_error(cc));
    chunks_expect_victim(&ch, NK, VICTIM);
    size_t got = 0;
    const kvtc_key *vk = &ch.it[VICTIM].key;
    cr_expect_eq(kvtc_get(cc, vk, ch.dst[VICTIM], n, &got), KVTC_ECORRUPT);
    cr_expect_geq(itest_daemon_metric(&d, "kvtc_local_client_checked_total"), NK + 1.0);

    /* kvtcd's own check: the same chunk fails there, and leaves the index. */
    cr_expect_eq(kvtc_get(dc, vk, ch.dst[VICTIM], n, &got), KVTC_ECORRUPT,
                 "daemon check let it through: %s", kvtc_last_error(dc));
    cr_expect_eq(kvtc_get(dc, vk, ch.dst[VICTIM], n, &got), KVTC_ENOENT);
    cr_expect_geq(itest_daemon_metric(&d, "kvtc_corrupt_total"), 1.0);
    cr_expect_eq(itest_daemon_metric(&d, "kvtc_local_failures_total"), 0);
    kvtc_disconnect(cc);
    kvtc_disconnect(dc);
    chunks_free(&ch);
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
    /* every get re-reads what it sends (the default waits a minute after
     * the put's own check: ucx_get_audits_once_an_interval) */
    static const char *const every_get[] = {"--audit-interval", "0", NULL};
    itest_daemon_start(&d, "256M", 0, every_get);
    kvtc_conn *c = connect_ucx(&d, "client");
    kvtc_conn *dc = connect_ucx(&d, "daemon");
    /* eager (hashed inline by kvtcd) and rendezvous (on its pool) sizes */
    static const size_t sizes[] = {256u << 10, 4u << 20, 1024, 4u << 20};
    enum { NK = 4, VICTIM = 1, VICTIM2 = 3 };
    struct chunks ch;
    chunks_put(c, &ch, sizes, NK, 200);
    /* Intact: sent before kvtcd's own check (which runs beside the send),
     * every byte right. */
    cr_assert_eq(kvtc_get_batch(c, ch.it, NK, NULL), 0, "batch: %s", kvtc_last_error(c));
    chunks_expect_victim(&ch, NK, UINT32_MAX);
    cr_expect_geq(itest_daemon_metric(&d, "kvtc_gets_audited_total"), NK);

    chunks_flip(&d, &ch, VICTIM);
    chunks_flip(&d, &ch, VICTIM2);
    for (uint32_t i = 0; i < NK; i++)
        memset(ch.dst[i], 0, sizes[i]);
    /* libkvtc's check refuses the flipped chunk (kvtcd sent it unread);
     * the others come back intact. */
    cr_assert_eq(kvtc_get_batch(c, ch.it, VICTIM2, NULL), KVTC_ECORRUPT,
                 "the flipped chunk got through: %s", kvtc_last_error(c));
    chunks_expect_victim(&ch, VICTIM2, VICTIM);
    /* kvtcd's check beside the send found it too and dropped it: the key
     * leaves the index a moment after the reply. */
    const kvtc_key *vk = &ch.it[VICTIM].key, *vk2 = &ch.it[VICTIM2].key;
    for (int t = 0; t < 500 && present(c, vk); t++)
        nanosleep(&(struct timespec){0, 10 * 1000 * 1000}, NULL);
    cr_expect_eq(present(c, vk), 0, "the corrupt chunk stayed in the index");
    cr_expect_geq(itest_daemon_metric(&d, "kvtc_corrupt_total"), 1.0);
    size_t got = 0;
    cr_expect_eq(kvtc_get(c, vk, ch.dst[VICTIM], sizes[VICTIM], &got), KVTC_ENOENT);

    /* KVTC_UCX_CHECK=daemon: kvtcd verifies before sending; the chunk is
     * reported corrupt and gone at once. */
    cr_expect_eq(kvtc_get(dc, vk2, ch.dst[VICTIM2], sizes[VICTIM2], &got), KVTC_ECORRUPT,
                 "daemon check let it through: %s", kvtc_last_error(dc));
    cr_expect_eq(present(dc, vk2), 0);
    cr_expect_geq(itest_daemon_metric(&d, "kvtc_corrupt_total"), 2.0);
    kvtc_disconnect(c);
    kvtc_disconnect(dc);
    chunks_free(&ch);
    itest_daemon_stop(&d);
}

static double secs_since(const struct timespec *t0)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)(t.tv_sec - t0->tv_sec) + (t.tv_nsec - t0->tv_nsec) * 1e-9;
}

/* --audit-interval: kvtcd re-reads a chunk it sends to a checking client
 * at most once an interval (the put's own check counts); libkvtc still
 * refuses a flipped byte on every get. */
Test(it_local_check, ucx_get_audits_once_an_interval, .timeout = 120)
{
    struct itest_daemon d;
    itest_setup(ITEST_TLS_TCP);
    static const char *const every_2s[] = {"--audit-interval", "2", NULL};
    itest_daemon_start(&d, "256M", 0, every_2s);
    kvtc_conn *c = connect_ucx(&d, "client");
    static const size_t sizes[] = {4u << 20, 256u << 10};
    enum { NK = 2, VICTIM = 0 };
    struct timespec t0;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    struct chunks ch;
    chunks_put(c, &ch, sizes, NK, 300);
    chunks_flip(&d, &ch, VICTIM);
    /* The client refuses the flipped chunk on every get. */
    double first = secs_since(&t0); /* the put's check was at most this long ago */
    cr_assert_eq(kvtc_get_batch(c, ch.it, NK, NULL), KVTC_ECORRUPT);
    chunks_expect_victim(&ch, NK, VICTIM);
    const kvtc_key *vk = &ch.it[VICTIM].key;
    if (first < 1.5) {
        /* Within the interval (a machine fast enough to get here in time;
         * under the sanitizers put and flip alone can take longer): kvtcd
         * did not re-read it, and it stays. */
        nanosleep(&(struct timespec){0, 200 * 1000 * 1000}, NULL);
        cr_expect_eq(itest_daemon_metric(&d, "kvtc_gets_audited_total"), 0);
        cr_expect_eq(present(c, vk), 1, "re-read within the interval");
    }
    /* Past the interval the next get is refused by the client again and
     * re-read beside the send; on a machine that was past it already at
     * the first get, that one was re-read and the chunk may be gone. */
    while (secs_since(&t0) < 2.3)
        nanosleep(&(struct timespec){0, 50 * 1000 * 1000}, NULL);
    size_t got = 0;
    int rc = kvtc_get(c, vk, ch.dst[VICTIM], sizes[VICTIM], &got);
    cr_expect(rc == KVTC_ECORRUPT || (first >= 1.5 && rc == KVTC_ENOENT),
              "a get past the interval: %s (%s); %.2f s to the first get", kvtc_strerror(rc),
              kvtc_last_error(c), first);
    /* Either way a get past the interval was re-read, and the chunk
     * leaves the index. */
    for (int t = 0; t < 500 && present(c, vk); t++)
        nanosleep(&(struct timespec){0, 10 * 1000 * 1000}, NULL);
    cr_expect_eq(present(c, vk), 0, "the corrupt chunk stayed past the interval");
    cr_expect_geq(itest_daemon_metric(&d, "kvtc_gets_audited_total"), 1.0);
    cr_expect_geq(itest_daemon_metric(&d, "kvtc_corrupt_total"), 1.0);
    kvtc_disconnect(c);
    chunks_free(&ch);
    itest_daemon_stop(&d);
}

static unsigned thread_count(void)
{
    unsigned n = 0;
    FILE *f = fopen("/proc/self/status", "r");
    char line[256];
    while (f && fgets(line, sizeof line, f))
        if (sscanf(line, "Threads: %u", &n) == 1)
            break;
    if (f)
        fclose(f);
    return n;
}

static void win_cb(int status, void *arg)
{
    int *slot = arg;
    *slot = status + 1000; /* set: 1000 + status */
}

/* chunks_put with every put in flight at once, each its own request: all
 * but the first are hashed on the checker thread (with check_thread). */
static void chunks_put_pipelined(kvtc_conn *c, struct chunks *ch, const size_t *sizes,
                                 uint32_t n, uint32_t seed0)
{
    cr_assert_leq(n, MAX_CHUNKS);
    ch->n = n;
    ch->seed0 = seed0;
    kvtc_put_item pi[MAX_CHUNKS];
    int done[MAX_CHUNKS] = {0};
    for (uint32_t i = 0; i < n; i++) {
        pi[i] = (kvtc_put_item){.key = chunk_init(ch, i, sizes[i]), .data = ch->src[i], .size = sizes[i]};
        kvtc_op_params op = {.field_mask = KVTC_OP_PARAM_FIELD_CALLBACK, .cb = win_cb, .arg = &done[i]};
        cr_assert_eq(kvtc_put_batch_async(c, &pi[i], 1, &op), 0, "put: %s", kvtc_last_error(c));
    }
    cr_assert_eq(kvtc_wait_all(c, 60000), 0);
    for (uint32_t i = 0; i < n; i++)
        cr_assert_eq(done[i], 1000, "put %u: %s", i, kvtc_strerror(done[i] - 1000));
}

/* Pipelined puts and gets over UCX (several in flight, each its own
 * request) are hashed on the connection's checker thread
 * (client/checker.c): every put is stored with the right checksum (its
 * gets pass), the flipped chunk fails, the others arrive intact; with
 * KVTC_CHECK_INLINE the same happens on the caller's thread alone. */
static void pipelined(uint32_t check_mode)
{
    struct itest_daemon d;
    itest_setup(ITEST_TLS_TCP);
    itest_daemon_start(&d, "256M", 0, NULL);
    setenv("KVTC_LOCAL", "off", 1);
    kvtc_conn_params p = {.field_mask = KVTC_CONN_PARAM_FIELD_CHECK_THREAD,
                          .check_thread = check_mode};
    kvtc_conn *c = NULL;
    char target[64];
    snprintf(target, sizeof target, "127.0.0.1:%u", d.port);
    int rc = kvtc_connect(target, &p, &c);
    cr_assert_eq(rc, 0, "connect: %s", kvtc_strerror(rc));
    unsetenv("KVTC_LOCAL");
    enum { NK = 6, VICTIM = 2 };
    static const size_t sizes[NK] = {1u << 20, 4u << 20, 2u << 20, 4u << 20, (1u << 20) + 5, 3u << 20};
    struct chunks ch;
    unsigned before = thread_count();
    chunks_put_pipelined(c, &ch, sizes, NK, 300 + check_mode * 10);
    chunks_flip(&d, &ch, VICTIM);
    for (int round = 0; round < 2; round++) {
        int done[NK] = {0};
        for (uint32_t i = 0; i < NK; i++) {
            memset(ch.dst[i], 0, ch.len[i]);
            kvtc_op_params op = {.field_mask = KVTC_OP_PARAM_FIELD_CALLBACK, .cb = win_cb, .arg = &done[i]};
            cr_assert_eq(kvtc_get_batch_async(c, &ch.it[i], 1, &op), 0, "submit: %s", kvtc_last_error(c));
        }
        cr_assert_eq(kvtc_wait_all(c, 60000), 0);
        for (uint32_t i = 0; i < NK; i++) {
            cr_assert_neq(done[i], 0, "get %u never completed", i);
            if (i == VICTIM && round == 0) {
                cr_expect_eq(done[i] - 1000, KVTC_ECORRUPT, "the flipped chunk got through");
            } else if (i != VICTIM) {
                cr_expect_eq(done[i] - 1000, 0, "get %u: %s", i, kvtc_strerror(done[i] - 1000));
                cr_expect(itest_check(ch.dst[i], ch.len[i], ch.seed0 + i), "chunk %u differs", i);
            }
        }
    }
    /* kvtcd sent the pipelined gets' replies one at a time. */
    cr_expect_geq(itest_daemon_metric(&d, "kvtc_bulk_replies_waited_total"), 1.0);
    /* The checker is one thread of the connection's (joined when it
     * disconnects). */
    unsigned during = thread_count();
    cr_expect_eq(during, before + (check_mode == KVTC_CHECK_THREAD ? 1u : 0u),
                 "threads %u -> %u", before, during);
    kvtc_disconnect(c);
    chunks_free(&ch);
    itest_daemon_stop(&d);
}

Test(it_local_check, pipelined_ucx_puts_and_gets_hashed_on_a_thread, .timeout = 120)
{
    pipelined(KVTC_CHECK_THREAD);
}

Test(it_local_check, pipelined_ucx_puts_and_gets_hashed_inline, .timeout = 120)
{
    pipelined(KVTC_CHECK_INLINE);
}
