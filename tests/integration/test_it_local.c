/* The same-host local path (docs/protocol.md "Local path"): byte-exact puts
 * and gets from 1 KiB to 64 MiB through process_vm_readv/writev, batches,
 * the asynchronous API, 16 concurrent clients, a client killed mid-transfer,
 * hostile local ranges from a raw peer, the fall back to UCX payloads
 * (path off, refused, a copy failing mid-session) and a daemon restart. */
#include "itest.h"

#include "local_wire.h"
#include "wire.h"

#include <criterion/criterion.h>
#include <signal.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/random.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define SPACE 0x4c4f4300u

static kvtc_conn *connect_mode(const struct itest_daemon *d, uint32_t local)
{
    kvtc_conn *c = NULL;
    kvtc_conn_params p = {.field_mask = KVTC_CONN_PARAM_FIELD_LOCAL |
                                        KVTC_CONN_PARAM_FIELD_CONNECT_TIMEOUT |
                                        KVTC_CONN_PARAM_FIELD_OP_TIMEOUT,
                          .local = local,
                          .connect_timeout_ms = 10000,
                          .op_timeout_ms = 60000};
    int rc = kvtc_connect(d->addr, &p, &c);
    cr_assert_eq(rc, 0, "connect: %s (%s)", kvtc_strerror(rc), kvtc_last_error(NULL));
    return c;
}

static uint32_t local_in_use(kvtc_conn *c)
{
    kvtc_server_info info;
    cr_assert_eq(kvtc_server_info_get(c, &info), 0);
    return info.local_path;
}

static void count_done(int status, void *arg)
{
    (void)status;
    ++*(int *)arg;
}

static void put_get_one(kvtc_conn *c, uint32_t i, size_t n)
{
    uint8_t *src = malloc(n ? n : 1), *dst = malloc(n + 64);
    cr_assert(src && dst);
    itest_fill(src, n, i);
    memset(dst, 0xa5, n + 64);
    kvtc_key k = itest_key(SPACE, i);
    cr_assert_eq(kvtc_put(c, &k, src, n), 0, "put %zu: %s", n, kvtc_last_error(c));
    size_t got = 0;
    /* A buffer larger than the chunk: only the chunk's bytes are written. */
    cr_assert_eq(kvtc_get(c, &k, dst, n + 64, &got), 0, "get %zu: %s", n, kvtc_last_error(c));
    cr_assert_eq(got, n);
    cr_assert(itest_check(dst, n, i), "%zu B came back different", n);
    for (size_t j = n; j < n + 64; j++)
        cr_assert_eq(dst[j], 0xa5, "byte %zu past a %zu-byte chunk written", j, n);
    free(src);
    free(dst);
}

Test(it_local, sizes_exact, .timeout = 180)
{
    struct itest_daemon d;
    itest_setup(ITEST_TLS_TCP);
    itest_daemon_start(&d, "512M", 0, NULL);
    kvtc_conn *c = connect_mode(&d, KVTC_LOCAL_AUTO);
    cr_assert_eq(local_in_use(c), 1, "local path not bound: %s", itest_log_tail(&d));
    static const size_t sizes[] = {1024,      4099,       65536,           256u << 10,
                                   1u << 20,  (4u << 20) + 1, 16u << 20, 64u << 20};
    size_t ns = sizeof sizes / sizeof sizes[0];
    for (uint32_t i = 0; i < ns; i++)
        put_get_one(c, i, sizes[i]);
    /* A buffer too small: ENOSPC, nothing written, the connection fine. */
    uint8_t small[100];
    memset(small, 0x5a, sizeof small);
    size_t got = 0;
    kvtc_key k0 = itest_key(SPACE, 0);
    cr_expect_eq(kvtc_get(c, &k0, small, sizeof small, &got), KVTC_ENOSPC);
    for (size_t j = 0; j < sizeof small; j++)
        cr_assert_eq(small[j], 0x5a);
    kvtc_key miss = itest_key(SPACE, 999);
    cr_expect_eq(kvtc_get(c, &miss, small, sizeof small, &got), KVTC_ENOENT);
    cr_expect_eq(local_in_use(c), 1);
    cr_expect_geq(itest_daemon_metric(&d, "kvtc_local_puts_total"), (double)ns);
    cr_expect_geq(itest_daemon_metric(&d, "kvtc_local_gets_total"), (double)ns);
    cr_expect_eq(itest_daemon_metric(&d, "kvtc_local_failures_total"), 0);
    kvtc_disconnect(c);
    itest_daemon_stop(&d);
}

Test(it_local, batches_and_async, .timeout = 120)
{
    struct itest_daemon d;
    itest_setup(ITEST_TLS_TCP);
    itest_daemon_start(&d, "256M", 0, NULL);
    kvtc_conn *c = connect_mode(&d, KVTC_LOCAL_AUTO);
    cr_assert_eq(local_in_use(c), 1);
    enum { N = 48 };
    kvtc_put_item pi[N];
    kvtc_get_item gi[N + 2];
    uint8_t *src[N], *dst[N + 2];
    memset(pi, 0, sizeof pi);
    memset(gi, 0, sizeof gi);
    for (uint32_t i = 0; i < N; i++) {
        /* Empty, odd and MiB sizes side by side in one request. */
        size_t n = i % 7 == 0 ? 0 : (size_t)(i * 37777u) % (3u << 20) + i;
        src[i] = malloc(n + 1);
        itest_fill(src[i], n, 100 + i);
        pi[i].key = itest_key(SPACE, 100 + i);
        pi[i].data = src[i];
        pi[i].size = n;
    }
    cr_assert_eq(kvtc_put_batch(c, pi, N, NULL), 0, "put batch: %s", kvtc_last_error(c));
    for (uint32_t i = 0; i < N + 2; i++) {
        size_t cap = i < N ? pi[i].size : 64;
        dst[i] = malloc(cap + 1);
        gi[i].key = itest_key(SPACE, 100 + i); /* the last two miss */
        gi[i].buf = dst[i];
        gi[i].capacity = cap;
    }
    int rc = kvtc_get_batch(c, gi, N + 2, NULL);
    cr_expect_eq(rc, KVTC_ENOENT, "a batch with misses: %s", kvtc_strerror(rc));
    for (uint32_t i = 0; i < N; i++) {
        cr_assert_eq(gi[i].status, 0, "item %u: %s", i, kvtc_strerror(gi[i].status));
        cr_assert_eq(gi[i].size, pi[i].size);
        cr_assert(itest_check(dst[i], gi[i].size, 100 + i), "item %u differs", i);
    }
    cr_expect_eq(gi[N].status, KVTC_ENOENT);
    cr_expect_eq(gi[N + 1].status, KVTC_ENOENT);
    /* The asynchronous API: every get in flight at once, one per item. */
    int done = 0;
    kvtc_get_item ai[N];
    memset(ai, 0, sizeof ai);
    kvtc_op_params op = {.field_mask = KVTC_OP_PARAM_FIELD_CALLBACK, .cb = count_done,
                         .arg = &done};
    for (uint32_t i = 0; i < N; i++) {
        memset(dst[i], 0, pi[i].size + 1);
        ai[i].key = pi[i].key;
        ai[i].buf = dst[i];
        ai[i].capacity = pi[i].size;
        cr_assert_eq(kvtc_get_batch_async(c, &ai[i], 1, &op), 0, "%s", kvtc_last_error(c));
    }
    cr_assert_eq(kvtc_wait_all(c, 60000), 0, "%s", kvtc_last_error(c));
    cr_assert_eq(done, N);
    for (uint32_t i = 0; i < N; i++) {
        cr_assert_eq(ai[i].status, 0, "async item %u: %s", i, kvtc_strerror(ai[i].status));
        cr_assert(itest_check(dst[i], ai[i].size, 100 + i), "async item %u differs", i);
    }
    cr_expect_eq(local_in_use(c), 1);
    kvtc_disconnect(c);
    for (uint32_t i = 0; i < N; i++)
        free(src[i]);
    for (uint32_t i = 0; i < N + 2; i++)
        free(dst[i]);
    itest_daemon_stop(&d);
}

/* One client process of the concurrency test: its own keys, checked. */
static int child_client(const char *addr, uint32_t who)
{
    kvtc_conn *c = NULL;
    kvtc_conn_params p = {.field_mask = KVTC_CONN_PARAM_FIELD_CONNECT_TIMEOUT |
                                        KVTC_CONN_PARAM_FIELD_OP_TIMEOUT,
                          .connect_timeout_ms = 30000,
                          .op_timeout_ms = 120000};
    if (kvtc_connect(addr, &p, &c))
        return 2;
    kvtc_server_info info;
    kvtc_server_info_get(c, &info);
    int bad = info.local_path ? 0 : 3;
    size_t n = (1u << 20) + who * 4099u;
    uint8_t *src = malloc(n), *dst = malloc(n);
    for (uint32_t r = 0; r < 6 && !bad && src && dst; r++) {
        uint32_t id = 1000 + who * 16 + r;
        itest_fill(src, n, id);
        kvtc_key k = itest_key(SPACE, id);
        size_t got = 0;
        if (kvtc_put(c, &k, src, n) || kvtc_get(c, &k, dst, n, &got) || got != n ||
            !itest_check(dst, n, id))
            bad = 4;
    }
    free(src);
    free(dst);
    kvtc_disconnect(c);
    return bad;
}

Test(it_local, sixteen_clients, .timeout = 240)
{
    struct itest_daemon d;
    itest_setup(ITEST_TLS_TCP);
    itest_daemon_start(&d, "512M", 0, NULL);
    enum { NC = 16 };
    pid_t pids[NC];
    for (uint32_t i = 0; i < NC; i++) {
        pids[i] = fork();
        cr_assert_geq(pids[i], 0);
        if (pids[i] == 0)
            _exit(child_client(d.addr, i));
    }
    for (uint32_t i = 0; i < NC; i++) {
        int st = 0;
        cr_assert_eq(waitpid(pids[i], &st, 0), pids[i]);
        cr_expect(WIFEXITED(st) && WEXITSTATUS(st) == 0,
                  "client %u: status 0x%x (2 connect, 3 no local path, 4 bytes)", i, st);
    }
    cr_expect_geq(itest_daemon_metric(&d, "kvtc_local_links_total"), NC);
    cr_expect_geq(itest_daemon_metric(&d, "kvtc_local_puts_total"), NC * 6);
    itest_daemon_stop(&d);
}

Test(it_local, client_killed_mid_transfer, .timeout = 120)
{
    struct itest_daemon d;
    itest_setup(ITEST_TLS_TCP);
    itest_daemon_start(&d, "512M", 0, NULL);
    for (int round = 0; round < 2; round++) {
        int ready[2];
        cr_assert_eq(pipe(ready), 0);
        pid_t pid = fork();
        cr_assert_geq(pid, 0);
        if (pid == 0) {
            /* Puts (round 0) or gets (round 1) of 32 MiB without end. */
            close(ready[0]);
            kvtc_conn *c = NULL;
            if (kvtc_connect(d.addr, NULL, &c))
                _exit(2);
            size_t n = 32u << 20;
            uint8_t *b = malloc(n);
            itest_fill(b, n, 7);
            kvtc_key k = itest_key(SPACE, 5000);
            if (kvtc_put(c, &k, b, n))
                _exit(3);
            if (write(ready[1], "r", 1) != 1)
                _exit(4);
            for (uint32_t i = 0;; i++) {
                size_t got;
                kvtc_key ki = itest_key(SPACE, 5001 + i % 4);
                if (round == 0)
                    kvtc_put(c, &ki, b, n);
                else
                    kvtc_get(c, &k, b, n, &got);
            }
        }
        close(ready[1]);
        char x;
        cr_assert_eq(read(ready[0], &x, 1), 1, "child did not start");
        close(ready[0]);
        struct timespec ts = {0, 150 * 1000 * 1000};
        nanosleep(&ts, NULL);
        kill(pid, SIGKILL);
        waitpid(pid, NULL, 0);
        cr_assert(itest_daemon_alive(&d), "daemon died with its client: %s", itest_log_tail(&d));
        kvtc_conn *c = connect_mode(&d, KVTC_LOCAL_AUTO);
        cr_expect(itest_wait_stats(c, itest_one_session, NULL, 15000),
                  "the killed client's session never ended");
        cr_expect_eq(local_in_use(c), 1);
        put_get_one(c, 6000 + round, 3u << 20);
        kvtc_disconnect(c);
    }
    itest_daemon_stop(&d);
}

Test(it_local, fallback_off_and_failed, .timeout = 120)
{
    struct itest_daemon d;
    itest_setup(ITEST_TLS_TCP);
    /* Daemon with the path off: nothing offered, UCX payloads. */
    const char *off[] = {"--local-path", "off", NULL};
    itest_daemon_start(&d, "256M", 0, off);
    kvtc_conn *c = connect_mode(&d, KVTC_LOCAL_AUTO);
    cr_expect_eq(local_in_use(c), 0);
    put_get_one(c, 7000, (2u << 20) + 3);
    kvtc_disconnect(c);
    itest_daemon_stop(&d);

    /* A socket path of the operator's choice; a client that says no. */
    struct itest_daemon d2;
    itest_daemon_prepare(&d2);
    char path[400];
    snprintf(path, sizeof path, "%s/kvtcd.sock", d2.dir);
    const char *at[] = {"--local-path", path, NULL};
    itest_daemon_launch(&d2, "256M", 0, at);
    c = connect_mode(&d2, KVTC_LOCAL_OFF);
    cr_expect_eq(local_in_use(c), 0);
    put_get_one(c, 7001, 1u << 20);
    kvtc_disconnect(c);
    c = connect_mode(&d2, KVTC_LOCAL_AUTO);
    cr_assert_eq(local_in_use(c), 1, "path socket: %s", itest_log_tail(&d2));
    put_get_one(c, 7002, 5u << 20);

    /* A copy failing mid-session (a destination the daemon may not write:
     * read-only memory): that get fails with KVTC_EIO, the connection falls
     * back to UCX payloads and the next get of the same key is exact. */
    size_t n = 1u << 20;
    void *ro = mmap(NULL, n, PROT_READ, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    cr_assert_neq(ro, MAP_FAILED);
    size_t got = 0;
    uint8_t *buf = malloc(n);
    kvtc_key k1 = itest_key(SPACE, 7003);
    uint8_t *src = malloc(n);
    itest_fill(src, n, 7003);
    cr_assert_eq(kvtc_put(c, &k1, src, n), 0);
    int rc = kvtc_get(c, &k1, ro, n, &got);
    cr_expect_eq(rc, KVTC_EIO, "get into read-only memory: %s (%s)", kvtc_strerror(rc),
                 kvtc_last_error(c));
    cr_expect_eq(local_in_use(c), 0, "still on the local path after a failed copy");
    cr_assert_eq(kvtc_get(c, &k1, buf, n, &got), 0, "%s", kvtc_last_error(c));
    cr_assert(itest_check(buf, n, 7003));
    put_get_one(c, 7004, (3u << 20) + 1);
    cr_expect_geq(itest_daemon_metric(&d2, "kvtc_local_failures_total"), 1);
    munmap(ro, n);
    free(buf);
    free(src);
    kvtc_disconnect(c);
    itest_daemon_stop(&d2);
}

Test(it_local, daemon_restart, .timeout = 120)
{
    struct itest_daemon d;
    itest_setup(ITEST_TLS_TCP);
    itest_daemon_prepare(&d);
    itest_daemon_launch(&d, "256M", 0, NULL);
    kvtc_conn *c = connect_mode(&d, KVTC_LOCAL_AUTO);
    cr_assert_eq(local_in_use(c), 1);
    put_get_one(c, 8000, 2u << 20);
    cr_assert_eq(itest_daemon_kill9(&d), 1);
    /* Same port, same abstract socket name: the old one died with it. */
    itest_daemon_launch(&d, "256M", d.port, NULL);
    kvtc_conn *c2 = connect_mode(&d, KVTC_LOCAL_AUTO);
    cr_assert_eq(local_in_use(c2), 1, "after restart: %s", itest_log_tail(&d));
    put_get_one(c2, 8001, 4u << 20);
    /* The old connection fails cleanly; its buffers are never touched. */
    uint8_t small[64];
    size_t got;
    kvtc_key k = itest_key(SPACE, 8001);
    cr_expect_neq(kvtc_get(c, &k, small, sizeof small, &got), 0);
    kvtc_disconnect(c);
    kvtc_disconnect(c2);
    itest_daemon_stop(&d);
}

/* ---- A raw peer: hand-made requests with hostile local ranges ---------- */

static uint64_t raw_id = 500;

static Kvtc__Wire__Reply *raw_req(struct itest_raw *r, Kvtc__Wire__Request *req,
                                  const void *data, size_t dlen)
{
    void *buf = NULL;
    size_t len = 0;
    req->id = ++raw_id;
    cr_assert_eq(kvtc_wire_pack_request_alloc(req, &buf, &len), 0);
    int rc;
    if (len <= itest_raw_max_header(r)) {
        rc = itest_raw_send(r, KVTC_WIRE_AM_REQUEST, buf, len, data, dlen);
    } else {
        uint8_t *all = malloc(len - 4 + dlen);
        cr_assert_not_null(all);
        memcpy(all, (uint8_t *)buf + 4, len - 4);
        if (dlen)
            memcpy(all + len - 4, data, dlen);
        rc = itest_raw_send(r, KVTC_WIRE_AM_REQUEST, buf, 4, all, len - 4 + dlen);
        free(all);
    }
    cr_assert_eq(rc, 0, "raw send");
    size_t rl = 0;
    void *rep = itest_raw_wait_reply(r, 15000, &rl);
    cr_assert_not_null(rep, "no reply within 15 s");
    Kvtc__Wire__Reply *out = NULL;
    cr_assert_eq(kvtc_wire_unpack_reply(rep, rl, &out), 0);
    free(rep);
    free(buf);
    cr_assert_eq(out->id, req->id);
    return out;
}

static void expect_st(Kvtc__Wire__Reply *rep, int want, const char *what)
{
    cr_expect_eq((int)rep->status, want, "%s: %s, want %s (%s)", what,
                 kvtc_wire_status_name(rep->status), kvtc_wire_status_name(want),
                 rep->message ? rep->message : "");
    kvtc_wire_reply_free(rep);
}

/* A one-chunk put of size bytes whose bytes are said to lie at the n
 * ranges iov (no AM data unless data). */
static Kvtc__Wire__Reply *raw_put(struct itest_raw *r, uint32_t keyi, uint64_t size,
                                  const uint64_t (*iov)[2], size_t n, const void *data)
{
    Kvtc__Wire__ChunkMeta m = KVTC__WIRE__CHUNK_META__INIT;
    kvtc_key k = itest_key(SPACE, keyi);
    m.key.data = k.bytes;
    m.key.len = 32;
    m.size = size;
    Kvtc__Wire__ChunkMeta *mp = &m;
    Kvtc__Wire__LocalIov *lv = calloc(n ? n : 1, sizeof *lv);
    Kvtc__Wire__LocalIov **lvp = calloc(n ? n : 1, sizeof *lvp);
    for (size_t i = 0; i < n; i++) {
        kvtc__wire__local_iov__init(&lv[i]);
        lv[i].addr = iov[i][0];
        lv[i].len = iov[i][1];
        lvp[i] = &lv[i];
    }
    Kvtc__Wire__PutRequest pr = KVTC__WIRE__PUT_REQUEST__INIT;
    pr.n_chunks = 1;
    pr.chunks = &mp;
    pr.n_local = n;
    pr.local = lvp;
    Kvtc__Wire__Request req = KVTC__WIRE__REQUEST__INIT;
    req.body_case = KVTC__WIRE__REQUEST__BODY_PUT;
    req.put = &pr;
    Kvtc__Wire__Reply *rep = raw_req(r, &req, data, data ? size : 0);
    free(lv);
    free(lvp);
    return rep;
}

static Kvtc__Wire__Reply *raw_get(struct itest_raw *r, uint32_t keyi, uint64_t addr,
                                  uint64_t cap, int n_local)
{
    kvtc_key k = itest_key(SPACE, keyi);
    ProtobufCBinaryData key = {32, k.bytes};
    Kvtc__Wire__LocalIov lv = KVTC__WIRE__LOCAL_IOV__INIT, *lvp[2] = {&lv, &lv};
    lv.addr = addr;
    lv.len = cap;
    Kvtc__Wire__GetRequest gr = KVTC__WIRE__GET_REQUEST__INIT;
    gr.n_keys = 1;
    gr.keys = &key;
    gr.n_local = (size_t)n_local;
    gr.local = lvp;
    Kvtc__Wire__Request req = KVTC__WIRE__REQUEST__INIT;
    req.body_case = KVTC__WIRE__REQUEST__BODY_GET;
    req.get = &gr;
    return raw_req(r, &req, NULL, 0);
}

/* Handshake on the daemon's socket; returns the fd (reply status in *st). */
static int raw_bind(const char *path, uint64_t session, uint64_t token, int bad_probe,
                    int32_t *st)
{
    struct sockaddr_un sa;
    memset(&sa, 0, sizeof sa);
    sa.sun_family = AF_UNIX;
    size_t nl = strlen(path);
    cr_assert_eq(path[0], '@');
    memcpy(sa.sun_path + 1, path + 1, nl - 1);
    int fd = socket(AF_UNIX, SOCK_STREAM, 0);
    cr_assert_geq(fd, 0);
    cr_assert_eq(connect(fd, (struct sockaddr *)&sa,
                         (socklen_t)(offsetof(struct sockaddr_un, sun_path) + nl)),
                 0, "connect %s", path);
    static uint8_t probe[KVTC_LOCAL_PROBE_BYTES];
    cr_assert_eq(getrandom(probe, sizeof probe, 0), (ssize_t)sizeof probe);
    struct kvtc_local_hello h;
    memset(&h, 0, sizeof h);
    memcpy(h.magic, KVTC_LOCAL_MAGIC, 8);
    h.session_id = session;
    h.token = token;
    h.probe_addr = (uint64_t)(uintptr_t)probe;
    memcpy(h.probe, probe, sizeof probe);
    if (bad_probe)
        h.probe[0] ^= 1;
    cr_assert_eq(send(fd, &h, sizeof h, 0), (ssize_t)sizeof h);
    struct kvtc_local_reply rep;
    size_t got = 0;
    while (got < sizeof rep) {
        ssize_t n = recv(fd, (char *)&rep + got, sizeof rep - got, 0);
        cr_assert_gt(n, 0, "handshake reply cut short");
        got += (size_t)n;
    }
    *st = rep.status;
    return fd;
}

Test(it_local, hostile_ranges_rejected, .timeout = 120)
{
    struct itest_daemon d;
    itest_setup(ITEST_TLS_TCP);
    itest_daemon_start(&d, "256M", 0, NULL);
    struct itest_raw *r = itest_raw_open(&d);
    Kvtc__Wire__Hello h = KVTC__WIRE__HELLO__INIT;
    h.major = KVTC_PROTO_MAJOR;
    h.minor = 2;
    Kvtc__Wire__Request req = KVTC__WIRE__REQUEST__INIT;
    req.body_case = KVTC__WIRE__REQUEST__BODY_HELLO;
    req.hello = &h;
    /* A 1.2 client is not offered the path. */
    Kvtc__Wire__Reply *rep = raw_req(r, &req, NULL, 0);
    cr_assert_eq(rep->status, KVTC__WIRE__STATUS__OK);
    cr_expect_null(rep->hello->local_path);
    kvtc_wire_reply_free(rep);
    h.minor = KVTC_PROTO_MINOR;
    rep = raw_req(r, &req, NULL, 0);
    cr_assert_eq(rep->status, KVTC__WIRE__STATUS__OK);
    cr_assert_not_null(rep->hello->local_path, "1.3 hello reply without local_path");
    char path[128];
    snprintf(path, sizeof path, "%s", rep->hello->local_path);
    uint64_t sid = rep->hello->session_id, tok = rep->hello->bind_token;
    kvtc_wire_reply_free(rep);

    size_t n = 1u << 20;
    uint8_t *buf = malloc(n), *back = malloc(n);
    itest_fill(buf, n, 9000);
    uint64_t ok1[1][2] = {{(uint64_t)(uintptr_t)buf, n}};
    /* Before the socket is bound: LOCAL, nothing else happens. */
    expect_st(raw_put(r, 9000, n, ok1, 1, NULL), KVTC__WIRE__STATUS__LOCAL, "put unbound");

    /* Refused handshakes: wrong token, a probe that does not match. */
    int32_t st = 0;
    int fd = raw_bind(path, sid, tok ^ 1, 0, &st);
    cr_expect_eq(st, KVTC_EPERM, "wrong token: %d", st);
    close(fd);
    fd = raw_bind(path, sid, tok, 1, &st);
    cr_expect_eq(st, KVTC_EPERM, "bad probe: %d", st);
    close(fd);
    fd = raw_bind(path, sid, tok, 0, &st);
    cr_assert_eq(st, 0, "handshake refused: %d %s", st, itest_log_tail(&d));

    /* Bounds checked before anything happens: each is INVALID/TOO_LARGE
     * and leaves the path working. */
    uint64_t huge[1][2] = {{(uint64_t)(uintptr_t)buf, 1ull << 62}};
    expect_st(raw_put(r, 9000, n, huge, 1, NULL), KVTC__WIRE__STATUS__INVALID, "huge length");
    uint64_t wrap[1][2] = {{~0ull - 10, n}};
    expect_st(raw_put(r, 9000, n, wrap, 1, NULL), KVTC__WIRE__STATUS__INVALID, "wrapping range");
    uint64_t zero[1][2] = {{0, n}};
    expect_st(raw_put(r, 9000, n, zero, 1, NULL), KVTC__WIRE__STATUS__INVALID, "null range");
    uint64_t shortr[1][2] = {{(uint64_t)(uintptr_t)buf, n - 1}};
    expect_st(raw_put(r, 9000, n, shortr, 1, NULL), KVTC__WIRE__STATUS__INVALID, "sum short");
    size_t many = KVTC_LOCAL_MAX_IOV + 1;
    uint64_t (*lots)[2] = calloc(many, sizeof *lots);
    for (size_t i = 0; i < many; i++) {
        lots[i][0] = (uint64_t)(uintptr_t)buf + i;
        lots[i][1] = 1;
    }
    expect_st(raw_put(r, 9000, many, lots, many, NULL), KVTC__WIRE__STATUS__TOO_LARGE,
              "count over the limit");
    free(lots);
    expect_st(raw_put(r, 9000, n, ok1, 1, buf), KVTC__WIRE__STATUS__INVALID,
              "local ranges and AM data");
    expect_st(raw_get(r, 9000, (uint64_t)(uintptr_t)back, n, 2), KVTC__WIRE__STATUS__INVALID,
              "two destinations for one key");
    expect_st(raw_get(r, 9000, 1ull << 60, n, 1), KVTC__WIRE__STATUS__INVALID,
              "destination past user space");

    /* Valid: stored from our memory, written back into it. */
    uint64_t two[2][2] = {{(uint64_t)(uintptr_t)buf, 1000},
                          {(uint64_t)(uintptr_t)buf + 1000, n - 1000}};
    expect_st(raw_put(r, 9000, n, two, 2, NULL), KVTC__WIRE__STATUS__OK, "valid local put");
    memset(back, 0, n);
    rep = raw_get(r, 9000, (uint64_t)(uintptr_t)back, n, 1);
    cr_expect_eq(rep->status, KVTC__WIRE__STATUS__OK);
    cr_expect(rep->get && rep->get->has_local && rep->get->local);
    kvtc_wire_reply_free(rep);
    cr_expect(itest_check(back, n, 9000), "local get wrote other bytes");

    /* Unmapped memory: the copy fails (EFAULT), LOCAL, and the session
     * falls back: local requests refused, AM payloads fine. */
    uint8_t *gone = mmap(NULL, n, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    cr_assert_neq(gone, MAP_FAILED);
    munmap(gone, n);
    uint64_t unm[1][2] = {{(uint64_t)(uintptr_t)gone, n}};
    expect_st(raw_put(r, 9001, n, unm, 1, NULL), KVTC__WIRE__STATUS__LOCAL, "unmapped range");
    expect_st(raw_put(r, 9001, n, ok1, 1, NULL), KVTC__WIRE__STATUS__LOCAL, "after a failure");
    expect_st(raw_put(r, 9001, n, NULL, 0, buf), KVTC__WIRE__STATUS__OK, "AM put after it");
    close(fd);
    itest_raw_close(r);
    cr_assert(itest_daemon_alive(&d));
    /* Everyone else is served on. */
    kvtc_conn *c = connect_mode(&d, KVTC_LOCAL_AUTO);
    cr_expect_eq(local_in_use(c), 1);
    put_get_one(c, 9002, 2u << 20);
    kvtc_disconnect(c);
    free(buf);
    free(back);
    itest_daemon_stop(&d);
}

/* Operations canceled by a disconnect: once kvtc_disconnect returns, kvtcd
 * no longer writes into their buffers (libkvtc waits for it to let go). */
Test(it_local, disconnect_stops_writes, .timeout = 120)
{
    struct itest_daemon d;
    itest_setup(ITEST_TLS_TCP);
    itest_daemon_start(&d, "512M", 0, NULL);
    kvtc_conn *c = connect_mode(&d, KVTC_LOCAL_AUTO);
    cr_assert_eq(local_in_use(c), 1);
    enum { K = 4 };
    size_t n = 48u << 20;
    uint8_t *src = malloc(n);
    itest_fill(src, n, 9500);
    kvtc_key keys[K];
    for (uint32_t i = 0; i < K; i++) {
        keys[i] = itest_key(SPACE, 9500 + i);
        cr_assert_eq(kvtc_put(c, &keys[i], src, n), 0, "%s", kvtc_last_error(c));
    }
    for (int round = 0; round < 3; round++) {
        itest_disconnect_round(c, keys, K, n, round * 2);
        cr_assert(itest_daemon_alive(&d));
        c = connect_mode(&d, KVTC_LOCAL_AUTO);
        cr_assert_eq(local_in_use(c), 1);
    }
    put_get_one(c, 9600, 1u << 20);
    kvtc_disconnect(c);
    free(src);
    itest_daemon_stop(&d);
}
