/* The daemon's life: clients that vanish mid-transfer, signals, restart on
 * the same port, and the admin HTTP port. */
#include "itest.h"

#include <criterion/criterion.h>
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define SPACE 0x4c494600u
#define BIG (160u << 20)

static void done_cb(int status, void *arg)
{
    *(int *)arg = status == 0 ? 1 : -1;
}

/* Child: on "go", start a large put (or get) and keep it moving until
 * killed. Tells the parent "s" once the transfer is under way and "d" if it
 * finished. It is forked before the parent touches UCX: UCX state does not
 * survive a fork, so the child builds its own from scratch. */
static void child_transfer(const struct itest_daemon *d, int go, int fd, int do_get)
{
    char ch;
    if (read(go, &ch, 1) != 1)
        _exit(2);
    kvtc_conn *c = NULL;
    if (kvtc_connect(d->addr, NULL, &c))
        _exit(3);
    uint8_t *buf = malloc(BIG);
    if (!buf)
        _exit(4);
    memset(buf, 0x5a, BIG);
    int done = 0;
    kvtc_op_params p = {.field_mask = KVTC_OP_PARAM_FIELD_CALLBACK, .cb = done_cb, .arg = &done};
    kvtc_put_item put = {.key = itest_key(SPACE, 1), .data = buf, .size = BIG};
    kvtc_get_item get = {.key = itest_key(SPACE, 0), .buf = buf, .capacity = BIG};
    int rc = do_get ? kvtc_get_batch_async(c, &get, 1, &p) : kvtc_put_batch_async(c, &put, 1, &p);
    if (rc)
        _exit(5);
    for (int i = 0; i < 5; i++)
        kvtc_progress(c);
    if (write(fd, "s", 1) != 1)
        _exit(6);
    for (;;) {
        kvtc_progress(c);
        if (done) {
            if (write(fd, "d", 1) != 1)
                _exit(6);
            pause();
        }
    }
}

struct victim {
    pid_t pid;
    int go;   /* write end: start */
    int news; /* read end: "s", "d" */
};

static struct victim spawn_victim(const struct itest_daemon *d, int do_get)
{
    int go[2], news[2];
    cr_assert_eq(pipe(go), 0);
    cr_assert_eq(pipe(news), 0);
    struct victim v = {.pid = fork()};
    cr_assert_geq(v.pid, 0);
    if (v.pid == 0) {
        close(go[1]);
        close(news[0]);
        child_transfer(d, go[0], news[1], do_get);
    }
    close(go[0]);
    close(news[1]);
    v.go = go[1];
    v.news = news[0];
    return v;
}

struct want {
    uint64_t chunks, bytes, sessions;
};

static int settled(const kvtc_stats *s, void *arg)
{
    const struct want *w = arg;
    return s->chunks == w->chunks && s->bytes_used <= w->bytes && s->sessions <= w->sessions;
}

/* Let the victim start its transfer, then SIGKILL it mid-way; returns 1 if
 * the transfer had completed anyway. */
static int kill_mid_transfer(struct victim *v)
{
    char ch = 0;
    cr_assert_eq(write(v->go, "g", 1), 1);
    struct pollfd p = {.fd = v->news, .events = POLLIN};
    cr_assert_eq(poll(&p, 1, 20000), 1, "child never started its transfer");
    if (read(v->news, &ch, 1) != 1) {
        int st = 0;
        waitpid(v->pid, &st, 0);
        cr_assert_fail("child died before its transfer: exit %d", WIFEXITED(st) ? WEXITSTATUS(st) : -1);
    }
    cr_assert_eq(ch, 's');
    struct timespec ts = {0, 20 * 1000000L};
    nanosleep(&ts, NULL);
    kill(v->pid, SIGKILL);
    int st;
    waitpid(v->pid, &st, 0);
    int finished = read(v->news, &ch, 1) == 1 && ch == 'd';
    close(v->news);
    close(v->go);
    return finished;
}

Test(it_lifecycle, client_killed_mid_transfer_frees_everything, .timeout = 90)
{
    struct itest_daemon d;
    /* TCP: slow enough on loopback that 160 MiB is still moving when the kill lands. */
    itest_setup(ITEST_TLS_TCP);
    itest_daemon_start(&d, "1G", 0, NULL);
    struct victim writer = spawn_victim(&d, 0), reader = spawn_victim(&d, 1);
    kvtc_conn *c = itest_connect(&d);
    kvtc_stats before = itest_stats(c);

    int finished = kill_mid_transfer(&writer);
    if (finished)
        cr_log_warn("the put completed before the kill: the stored chunk is legitimate");
    struct want w = {finished ? 1 : 0, finished ? BIG + (1u << 20) : 0, 1};
    cr_assert(itest_wait_stats(c, settled, &w, 15000),
              "after the kill: chunks %lu bytes_used %lu sessions %lu, want chunks %lu bytes <= %lu sessions 1",
              (unsigned long)itest_stats(c).chunks, (unsigned long)itest_stats(c).bytes_used,
              (unsigned long)itest_stats(c).sessions, (unsigned long)w.chunks, (unsigned long)w.bytes);
    cr_assert(itest_daemon_alive(&d), "kvtcd died:\n%s", itest_log_tail(&d));
    if (!finished)
        cr_assert_eq(itest_stats(c).bytes_used, before.bytes_used, "a dead writer's partial chunk kept memory");

    /* A reader killed mid-get: the chunk it was reading stays intact. */
    uint8_t *buf = malloc(BIG);
    itest_fill(buf, BIG, 77);
    kvtc_key k0 = itest_key(SPACE, 0);
    cr_assert_eq(kvtc_put(c, &k0, buf, BIG), 0);
    kill_mid_transfer(&reader);
    struct want w2 = {finished ? 2 : 1, 2ull * BIG + (2u << 20), 1};
    cr_assert(itest_wait_stats(c, settled, &w2, 15000), "sessions did not drop back to 1 after the reader died");
    memset(buf, 0, BIG);
    size_t got = 0;
    cr_assert_eq(kvtc_get(c, &k0, buf, BIG, &got), 0);
    cr_assert(got == BIG && itest_check(buf, BIG, 77), "chunk damaged by a reader's death");

    /* And new clients are served as before. */
    kvtc_conn *c2 = itest_connect(&d);
    kvtc_key k = itest_key(SPACE, 2);
    cr_assert_eq(kvtc_put(c2, &k, buf, 1u << 20), 0);
    cr_assert_eq(kvtc_get(c2, &k, buf, 1u << 20, &got), 0);
    free(buf);
    kvtc_disconnect(c2);
    kvtc_disconnect(c);
    itest_daemon_stop(&d);
}

/* Child: gets of one 4 MiB chunk, 8 in flight, until killed: kvtcd has one
 * bulk reply of this session in flight and others waiting behind it
 * (transport.c, one bulk reply at a time). Says "s" once under way. */
static void child_pipelined_gets(const struct itest_daemon *d, int fd)
{
    enum { DEPTH = 8 };
    kvtc_conn *c = NULL;
    if (kvtc_connect(d->addr, NULL, &c))
        _exit(3);
    static int done[DEPTH];
    static kvtc_get_item g[DEPTH];
    uint8_t *buf = malloc((size_t)DEPTH << 22);
    if (!buf)
        _exit(4);
    for (int round = 0;; round++) {
        for (int j = 0; j < DEPTH; j++) {
            g[j] = (kvtc_get_item){.key = itest_key(SPACE, 3), .buf = buf + ((size_t)j << 22),
                                   .capacity = 4u << 20};
            kvtc_op_params p = {.field_mask = KVTC_OP_PARAM_FIELD_CALLBACK, .cb = done_cb, .arg = &done[j]};
            if (kvtc_get_batch_async(c, &g[j], 1, &p))
                _exit(5);
        }
        if (kvtc_wait_all(c, 20000))
            _exit(6);
        if (round == 0 && write(fd, "s", 1) != 1)
            _exit(7);
    }
}

Test(it_lifecycle, client_killed_with_pipelined_gets_frees_its_session, .timeout = 90)
{
    struct itest_daemon d;
    itest_setup(ITEST_TLS_TCP);
    itest_daemon_start(&d, "256M", 0, NULL);
    int go[2], news[2];
    cr_assert_eq(pipe(go), 0);
    cr_assert_eq(pipe(news), 0);
    /* Before the parent touches UCX (fork). */
    pid_t pid = fork();
    cr_assert_geq(pid, 0);
    char ch = 0;
    if (pid == 0) {
        close(go[1]);
        close(news[0]);
        if (read(go[0], &ch, 1) != 1) /* the chunk is stored */
            _exit(2);
        child_pipelined_gets(&d, news[1]);
    }
    close(go[0]);
    close(news[1]);
    kvtc_conn *c = itest_connect(&d);
    uint8_t *buf = malloc(4u << 20);
    itest_fill(buf, 4u << 20, 5);
    kvtc_key k = itest_key(SPACE, 3);
    cr_assert_eq(kvtc_put(c, &k, buf, 4u << 20), 0);
    cr_assert_eq(write(go[1], "g", 1), 1);
    close(go[1]);
    struct pollfd p = {.fd = news[0], .events = POLLIN};
    cr_assert_eq(poll(&p, 1, 20000), 1, "child never got under way");
    cr_assert_eq(read(news[0], &ch, 1), 1);
    nanosleep(&(struct timespec){0, 30 * 1000000L}, NULL);
    kill(pid, SIGKILL);
    waitpid(pid, NULL, 0);
    close(news[0]);
    struct want w = {1, (4u << 20) + (1u << 20), 1};
    cr_assert(itest_wait_stats(c, settled, &w, 15000), "the killed reader's session stayed: sessions %lu",
              (unsigned long)itest_stats(c).sessions);
    cr_assert(itest_daemon_alive(&d), "kvtcd died:\n%s", itest_log_tail(&d));
    size_t got = 0;
    memset(buf, 0, 4u << 20);
    cr_assert_eq(kvtc_get(c, &k, buf, 4u << 20, &got), 0);
    cr_assert(got == 4u << 20 && itest_check(buf, 4u << 20, 5));
    free(buf);
    kvtc_disconnect(c);
    itest_daemon_stop(&d);
}

Test(it_lifecycle, restart_on_the_same_port, .timeout = 60)
{
    struct itest_daemon d;
    itest_setup(ITEST_TLS_SM);
    itest_daemon_start(&d, "64M", 0, NULL);
    int port = d.port;
    kvtc_conn *old = itest_connect(&d);
    uint8_t buf[8192], out[8192];
    itest_fill(buf, sizeof buf, 3);
    kvtc_key k = itest_key(SPACE, 3);
    cr_assert_eq(kvtc_put(old, &k, buf, sizeof buf), 0);
    /* The daemon goes away under a connected client. That client's UCX
     * objects are live but LeakSanitizer cannot see UCX's encoded pointers
     * to them yet: check leaks once it is disconnected (the next stop). */
    d.skip_leak_check = "a connection is still open";
    itest_daemon_stop(&d);
    size_t got;
    kvtc_op_params p = {.field_mask = KVTC_OP_PARAM_FIELD_TIMEOUT, .timeout_ms = 5000};
    kvtc_get_item gi = {.key = k, .buf = out, .capacity = sizeof out};
    int rc = kvtc_get_batch(old, &gi, 1, &p);
    cr_assert(rc == KVTC_ECONN || rc == KVTC_ETIMEDOUT || rc == KVTC_ECANCELED,
              "get on a dead daemon's connection: %s", kvtc_strerror(rc));
    kvtc_disconnect(old);

    itest_daemon_start(&d, "64M", port, NULL);
    kvtc_conn *c = itest_connect(&d);
    cr_assert_eq(kvtc_put(c, &k, buf, sizeof buf), 0);
    cr_assert_eq(kvtc_get(c, &k, out, sizeof out, &got), 0);
    cr_assert(got == sizeof buf && itest_check(out, got, 3));
    kvtc_disconnect(c);
    itest_daemon_stop(&d);
}

Test(it_lifecycle, sigint_and_sigterm_exit_0_with_clients_connected, .timeout = 60)
{
    int sigs[2] = {SIGTERM, SIGINT};
    for (int i = 0; i < 2; i++) {
        struct itest_daemon d;
        itest_setup(ITEST_TLS_SM);
        itest_daemon_start(&d, "64M", 0, NULL);
        kvtc_conn *c = itest_connect(&d);
        uint8_t buf[4096] = {1};
        kvtc_key k = itest_key(SPACE, 4);
        cr_assert_eq(kvtc_put(c, &k, buf, sizeof buf), 0);
        int st = itest_daemon_signal_wait(&d, sigs[i], 15000);
        cr_assert(st != -1 && WIFEXITED(st) && WEXITSTATUS(st) == 0, "signal %d: wait status %d:\n%s",
                  sigs[i], st, itest_log_tail(&d));
        const char *tail = itest_log_tail(&d);
        cr_assert(!strstr(tail, "Sanitizer") && !strstr(tail, "runtime error:"), "%s", tail);
        kvtc_disconnect(c);
        d.pid = 0;
        itest_daemon_stop(&d); /* removes the temp dir; nothing left to signal */
    }
}

static int count_substr(const char *s, const char *sub)
{
    int n = 0;
    for (const char *p = s; (p = strstr(p, sub)); p += strlen(sub))
        n++;
    return n;
}

/* The value of the first sample line "name value" or "name{...} value". */
static double metric(const char *body, const char *name)
{
    size_t nl = strlen(name);
    for (const char *p = body; p && *p; p = strchr(p, '\n') ? strchr(p, '\n') + 1 : NULL) {
        if (strncmp(p, name, nl) == 0 && (p[nl] == ' ' || p[nl] == '{')) {
            const char *v = strchr(p + nl, ' ');
            return v ? strtod(v + 1, NULL) : -1;
        }
    }
    return -1;
}

Test(it_lifecycle, admin_metrics_and_healthz, .timeout = 60)
{
    struct itest_daemon d;
    itest_setup(ITEST_TLS_SM);
    itest_daemon_start(&d, "64M", 0, NULL);
    char *body = NULL;
    int code = itest_http_get(d.admin_port, "/healthz", &body);
    cr_assert_eq(code, 200, "/healthz: HTTP %d", code);
    free(body);

    code = itest_http_get(d.admin_port, "/metrics", &body);
    cr_assert_eq(code, 200, "/metrics: HTTP %d", code);
    cr_assert(count_substr(body, "# TYPE kvtc_") >= 5, "few kvtc_ metrics:\n%s", body);
    free(body);

    kvtc_conn *c = itest_connect(&d);
    uint8_t buf[1u << 16];
    itest_fill(buf, sizeof buf, 1);
    for (uint32_t i = 0; i < 3; i++) {
        kvtc_key k = itest_key(SPACE + 1, i);
        cr_assert_eq(kvtc_put(c, &k, buf, sizeof buf), 0);
    }
    kvtc_stats s = itest_stats(c);
    code = itest_http_get(d.admin_port, "/metrics", &body);
    cr_assert_eq(code, 200);
    /* /metrics and Stats report the same counters. */
    cr_expect_eq(metric(body, "kvtc_chunks"), (double)s.chunks, "kvtc_chunks:\n%s", body);
    cr_expect_eq(metric(body, "kvtc_bytes_used"), (double)s.bytes_used, "kvtc_bytes_used:\n%s", body);
    cr_expect_geq(metric(body, "kvtc_puts_total"), 3, "kvtc_puts_total:\n%s", body);
    /* The loop thread served the puts: some CPU, never more than the
     * daemon's, and the counters only grow. */
    double loop = metric(body, "kvtc_loop_cpu_seconds_total");
    double proc = metric(body, "kvtc_process_cpu_seconds_total");
    cr_expect_gt(loop, 0, "kvtc_loop_cpu_seconds_total:\n%s", body);
    cr_expect_leq(loop, proc, "loop %.6f s > process %.6f s", loop, proc);
    free(body);
    for (uint32_t i = 3; i < 8; i++) {
        kvtc_key k = itest_key(SPACE + 1, i);
        cr_assert_eq(kvtc_put(c, &k, buf, sizeof buf), 0);
    }
    cr_assert_eq(itest_http_get(d.admin_port, "/metrics", &body), 200);
    cr_expect_geq(metric(body, "kvtc_loop_cpu_seconds_total"), loop, "loop CPU went back");
    cr_expect_geq(metric(body, "kvtc_process_cpu_seconds_total"), proc, "process CPU went back");
    free(body);

    code = itest_http_get(d.admin_port, "/no-such-page", &body);
    cr_expect_eq(code, 404, "unknown path: HTTP %d", code);
    free(body);
    kvtc_disconnect(c);
    itest_daemon_stop(&d);
}
