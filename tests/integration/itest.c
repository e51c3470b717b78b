/* Daemon process, connection and HTTP helpers of the integration tests. */
#include "itest.h"

#include "test_util.h"

#include <criterion/criterion.h>
#include <arpa/inet.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
#if defined(__SANITIZE_ADDRESS__)
#include <sanitizer/lsan_interface.h>
#endif

/* Sanitizer builds start slowly; a healthy daemon is up in well under this. */
#define START_TIMEOUT_MS 20000
#define STOP_TIMEOUT_MS 15000

static long now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1000L + ts.tv_nsec / 1000000L;
}

static void sleep_ms(int ms)
{
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

void itest_setup(const char *tls)
{
    const char *bin = kvtc_test_build_path("bin/kvtcd");
    if (access(bin, X_OK) != 0)
        cr_skip_test("kvtcd not built (%s missing): integration tests skipped", bin);
    setenv("UCX_NET_DEVICES", "lo", 1);
    setenv("UCX_TCP_CM_REUSEADDR", "y", 1);
    setenv("UCX_TLS", tls, 1);
}

/* The port file is "ucx_port admin_port"; accept it once it parses and has
 * stopped changing, so a half-written file is never read. */
static int read_ports(const char *path, int *port, int *admin)
{
    char a[64] = {0}, b[64] = {0};
    size_t len;
    char *s = kvtc_test_read_file(path, &len);
    if (!s)
        return -1;
    snprintf(a, sizeof a, "%.*s", (int)len, s);
    free(s);
    sleep_ms(20);
    s = kvtc_test_read_file(path, &len);
    if (!s)
        return -1;
    snprintf(b, sizeof b, "%.*s", (int)len, s);
    free(s);
    if (strcmp(a, b) || sscanf(a, "%d %d", port, admin) != 2 || *port <= 0 || *admin <= 0)
        return -1;
    return 0;
}

const char *itest_log_tail(const struct itest_daemon *d)
{
    static char tail[4096];
    size_t len = 0;
    char *s = kvtc_test_read_file(d->log, &len);
    tail[0] = '\0';
    if (s) {
        size_t from = len > sizeof tail - 1 ? len - (sizeof tail - 1) : 0;
        memcpy(tail, s + from, len - from);
        tail[len - from] = '\0';
        free(s);
    }
    return tail;
}

static void rm_tree(const char *dir);

/* A test ended early by a failed assertion never reaches itest_daemon_stop
 * (its daemon dies with it: PR_SET_PDEATHSIG). Its temp dir, named after
 * the test process, is removed by the next start once that process is
 * gone. */
static void collect_stale_dirs(void)
{
    const char *tmp = kvtc_test_tmpdir();
    DIR *dir = opendir(tmp);
    struct dirent *e;
    if (!dir)
        return;
    while ((e = readdir(dir))) {
        int pid;
        char path[512];
        if (sscanf(e->d_name, "kvtc-it-%d-", &pid) != 1 || pid <= 0)
            continue;
        if (kill(pid, 0) == 0 || errno != ESRCH)
            continue;
        snprintf(path, sizeof path, "%s/%s", tmp, e->d_name);
        rm_tree(path);
    }
    closedir(dir);
}

void itest_daemon_prepare(struct itest_daemon *d)
{
    char data[320];
    memset(d, 0, sizeof *d);
    collect_stale_dirs();
    snprintf(d->dir, sizeof d->dir, "%s/kvtc-it-%d-XXXXXX", kvtc_test_tmpdir(), (int)getpid());
    cr_assert_not_null(mkdtemp(d->dir), "mkdtemp: %s", strerror(errno));
    snprintf(data, sizeof data, "%s/data", d->dir);
    snprintf(d->log, sizeof d->log, "%s/kvtcd.log", d->dir);
    mkdir(data, 0700);
}

void itest_daemon_launch(struct itest_daemon *d, const char *host_mem, int port,
                         const char *const *extra)
{
    char pf[320], data[320], listen[64];
    const char *bin = kvtc_test_build_path("bin/kvtcd");
    cr_assert(d->dir[0] && d->pid <= 0, "itest_daemon_launch: prepare first, stop the last one");
    snprintf(pf, sizeof pf, "%s/ports", d->dir);
    snprintf(data, sizeof data, "%s/data", d->dir);
    snprintf(listen, sizeof listen, "127.0.0.1:%d", port);
    /* A restart must not read the last run's ports. */
    unlink(pf);
    d->port = d->admin_port = 0;
    d->pid = 0;

    const char *argv[40] = {bin, "--listen", listen, "--admin", "127.0.0.1:0", "--host-mem",
                            host_mem, "--data-dir", data, "--port-file", pf};
    int argc = 11;
    for (int i = 0; extra && extra[i] && argc < 39; i++)
        argv[argc++] = extra[i];
    argv[argc] = NULL;

    pid_t parent = getpid();
    d->pid = fork();
    cr_assert_geq(d->pid, 0, "fork: %s", strerror(errno));
    if (d->pid == 0) {
        /* Die with the test process, whatever ends it. */
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        if (getppid() != parent)
            _exit(127);
        /* Append: a restarted daemon's log follows the last run's. */
        int fd = open(d->log, O_WRONLY | O_CREAT | O_APPEND, 0600);
        if (fd >= 0) {
            dup2(fd, 1);
            dup2(fd, 2);
            close(fd);
        }
        execv(bin, (char *const *)argv);
        _exit(127);
    }
    long end = now_ms() + START_TIMEOUT_MS;
    while (now_ms() < end) {
        int st;
        if (waitpid(d->pid, &st, WNOHANG) == d->pid) {
            d->pid = 0;
            cr_assert_fail("kvtcd exited at start (status %d):\n%s", st, itest_log_tail(d));
        }
        if (read_ports(pf, &d->port, &d->admin_port) == 0)
            break;
        sleep_ms(20);
    }
    cr_assert_gt(d->port, 0, "kvtcd wrote no port file in %d ms:\n%s", START_TIMEOUT_MS,
                 itest_log_tail(d));
    if (port)
        cr_assert_eq(d->port, port, "kvtcd listens on %d, asked %d", d->port, port);
    snprintf(d->addr, sizeof d->addr, "127.0.0.1:%d", d->port);
}

void itest_daemon_start(struct itest_daemon *d, const char *host_mem, int port,
                        const char *const *extra)
{
    itest_daemon_prepare(d);
    itest_daemon_launch(d, host_mem, port, extra);
}

int itest_daemon_alive(struct itest_daemon *d)
{
    int st;
    if (d->pid <= 0)
        return 0;
    return waitpid(d->pid, &st, WNOHANG) == 0;
}

int itest_daemon_signal_wait(struct itest_daemon *d, int sig, int timeout_ms)
{
    int st = -1;
    if (d->pid <= 0)
        return -1;
    kill(d->pid, sig);
    long end = now_ms() + timeout_ms;
    for (;;) {
        pid_t r = waitpid(d->pid, &st, WNOHANG);
        if (r == d->pid)
            break;
        if (r < 0 || now_ms() > end) {
            kill(d->pid, SIGKILL);
            waitpid(d->pid, &st, 0);
            st = -1;
            break;
        }
        sleep_ms(10);
    }
    d->pid = 0;
    return st;
}

/* Detach every mount at or under dir (a tmpfs a failed test left behind),
 * so removing the tree cannot descend into a live mount or leave one
 * behind. Mount points are listed in /proc/self/mounts with spaces etc.
 * escaped as octal; our dirs have none. */
static void detach_mounts(const char *dir)
{
    size_t dl = strlen(dir);
    for (int pass = 0; pass < 4; pass++) {
        FILE *f = fopen("/proc/self/mounts", "r");
        char line[1024], mnt[512];
        int found = 0;
        if (!f)
            return;
        while (fgets(line, sizeof line, f)) {
            if (sscanf(line, "%*s %511s", mnt) != 1)
                continue;
            if (strncmp(mnt, dir, dl) == 0 && (mnt[dl] == '\0' || mnt[dl] == '/')) {
                umount2(mnt, MNT_DETACH);
                found = 1;
            }
        }
        fclose(f);
        if (!found)
            return;
    }
}

static void rm_tree(const char *dir)
{
    char cmd[600];
    /* The dir is ours (mkdtemp in the temp folder): a fixed pattern, nothing else. */
    const char *tmp = kvtc_test_tmpdir(), *base = strrchr(dir, '/');
    size_t tl = strlen(tmp);
    if (strncmp(dir, tmp, tl) == 0 && base == dir + tl && strncmp(base, "/kvtc-it-", 9) == 0 &&
        !strchr(dir, '\'')) {
        detach_mounts(dir);
        snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
        if (system(cmd) != 0)
            fprintf(stderr, "itest: could not remove %s\n", dir);
    }
}

void itest_daemon_stop(struct itest_daemon *d)
{
    if (d->pid <= 0) {
        /* Already reaped by the test: only the temp dir is left. */
        rm_tree(d->dir);
        return;
    }
    int st = itest_daemon_signal_wait(d, SIGTERM, STOP_TIMEOUT_MS);
    const char *tail = itest_log_tail(d);
    cr_expect(st != -1, "kvtcd did not exit within %d ms of SIGTERM:\n%s", STOP_TIMEOUT_MS, tail);
    cr_expect(st == -1 || (WIFEXITED(st) && WEXITSTATUS(st) == 0),
              "kvtcd exit status %d (signal %d) after SIGTERM, want 0:\n%s",
              WIFEXITED(st) ? WEXITSTATUS(st) : -1, WIFSIGNALED(st) ? WTERMSIG(st) : 0, tail);
    /* The whole log: a long leak report pushes its first line out of the tail. */
    size_t len = 0;
    char *all = kvtc_test_read_file(d->log, &len);
    if (all) {
        all[len] = '\0';
        cr_expect(!strstr(all, "LeakSanitizer") && !strstr(all, "AddressSanitizer") &&
                      !strstr(all, "runtime error:"),
                  "kvtcd sanitizer report:\n%s", tail);
        free(all);
    }
    rm_tree(d->dir);
    if (!d->skip_leak_check)
        itest_expect_no_leaks();
}

void itest_expect_no_leaks(void)
{
#if defined(__SANITIZE_ADDRESS__)
    /* Leaks of this test process so far (libkvtc's, the helpers'): a
     * LeakSanitizer report at exit would not fail the test by itself. */
    cr_expect_eq(__lsan_do_recoverable_leak_check(), 0, "LeakSanitizer found leaks in the test process (report above)");
#endif
}

kvtc_conn *itest_connect(const struct itest_daemon *d)
{
    kvtc_conn *c = NULL;
    kvtc_conn_params p = {0};
    p.field_mask = KVTC_CONN_PARAM_FIELD_CONNECT_TIMEOUT | KVTC_CONN_PARAM_FIELD_OP_TIMEOUT;
    p.connect_timeout_ms = 10000;
    p.op_timeout_ms = 30000;
    int rc = kvtc_connect(d->addr, &p, &c);
    cr_assert_eq(rc, 0, "kvtc_connect %s: %s", d->addr, kvtc_strerror(rc));
    return c;
}

kvtc_stats itest_stats(kvtc_conn *c)
{
    kvtc_stats s = {0};
    int rc = kvtc_stats_get(c, NULL, &s);
    cr_assert_eq(rc, 0, "kvtc_stats_get: %s (%s)", kvtc_strerror(rc), kvtc_last_error(c));
    return s;
}

int itest_one_session(const kvtc_stats *s, void *arg)
{
    (void)arg;
    return s->sessions == 1;
}

int itest_wait_stats(kvtc_conn *c, int (*pred)(const kvtc_stats *, void *), void *arg,
                     int timeout_ms)
{
    long end = now_ms() + timeout_ms;
    for (;;) {
        kvtc_stats s = itest_stats(c);
        if (pred(&s, arg))
            return 1;
        if (now_ms() > end)
            return 0;
        sleep_ms(50);
    }
}

static uint64_t mix(uint64_t *s)
{
    uint64_t z = (*s += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

void itest_done_cb(int status, void *arg)
{
    struct itest_done *d = arg;
    d->calls++;
    d->status = status;
}

kvtc_key itest_key(uint32_t space, uint32_t i)
{
    kvtc_key k;
    uint64_t s = ((uint64_t)space << 32) | i;
    for (int w = 0; w < 4; w++) {
        uint64_t v = mix(&s);
        memcpy(k.bytes + 8 * w, &v, 8);
    }
    return k;
}

void itest_fill(void *buf, size_t len, uint64_t seed)
{
    uint8_t *p = buf;
    uint64_t s = seed, v;
    size_t i = 0;
    for (; i + 8 <= len; i += 8) {
        v = mix(&s);
        memcpy(p + i, &v, 8);
    }
    v = mix(&s);
    memcpy(p + i, &v, len - i);
}

int itest_check(const void *buf, size_t len, uint64_t seed)
{
    const uint8_t *p = buf;
    uint64_t s = seed, v;
    size_t i = 0;
    for (; i + 8 <= len; i += 8) {
        v = mix(&s);
        if (memcmp(p + i, &v, 8))
            return 0;
    }
    v = mix(&s);
    return memcmp(p + i, &v, len - i) == 0;
}

int itest_http_get(int port, const char *path, char **body)
{
    *body = NULL;
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    if (fd < 0)
        return -1;
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    char req[512];
    int n = snprintf(req, sizeof req, "GET %s HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n", path);
    size_t cap = 1 << 16, len = 0;
    char *buf = malloc(cap + 1);
    int code = -1;
    if (!buf || connect(fd, (struct sockaddr *)&sa, sizeof sa) || write(fd, req, (size_t)n) != n)
        goto out;
    for (;;) {
        struct pollfd pfd = {.fd = fd, .events = POLLIN};
        if (poll(&pfd, 1, 10000) <= 0)
            break;
        if (len == cap) {
            char *nb = realloc(buf, 2 * cap + 1);
            if (!nb)
                goto out;
            buf = nb;
            cap *= 2;
        }
        ssize_t r = read(fd, buf + len, cap - len);
        if (r <= 0)
            break;
        len += (size_t)r;
    }
    buf[len] = '\0';
    if (sscanf(buf, "HTTP/1.%*d %d", &code) != 1)
        code = -1;
    char *b = strstr(buf, "\r\n\r\n");
    *body = strdup(b ? b + 4 : "");
out:
    free(buf);
    close(fd);
    return code;
}

static char *slurp_fd(int fd)
{
    size_t cap = 4096, len = 0;
    char *s = malloc(cap);
    ssize_t r;
    if (!s)
        return NULL;
    lseek(fd, 0, SEEK_SET);
    while ((r = read(fd, s + len, cap - len - 1)) > 0) {
        len += (size_t)r;
        if (len + 1 == cap) {
            char *ns = realloc(s, cap * 2);
            if (!ns)
                break;
            s = ns;
            cap *= 2;
        }
    }
    s[len] = '\0';
    return s;
}

int itest_run(char *const argv[], char **out, char **err)
{
    FILE *fo = tmpfile(), *fe = tmpfile();
    int st = -1;
    cr_assert(fo && fe, "tmpfile: %s", strerror(errno));
    pid_t pid = fork();
    cr_assert_geq(pid, 0);
    if (pid == 0) {
        dup2(fileno(fo), 1);
        dup2(fileno(fe), 2);
        execv(argv[0], argv);
        _exit(127);
    }
    waitpid(pid, &st, 0);
    *out = slurp_fd(fileno(fo));
    *err = slurp_fd(fileno(fe));
    fclose(fo);
    fclose(fe);
    return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

/* ---- A client killed mid-transfer ---------------------------------- */

char itest_putter_start(struct itest_putter *pt, const struct itest_daemon *d,
                        const kvtc_conn_params *params, size_t chunk, uint32_t space,
                        char (*tell)(const kvtc_server_info *info))
{
    int up[2], down[2];
    cr_assert_eq(pipe(up), 0);
    cr_assert_eq(pipe(down), 0);
    pt->pid = fork();
    cr_assert_geq(pt->pid, 0);
    if (pt->pid == 0) {
        close(up[0]);
        close(down[1]);
        kvtc_conn *c = NULL;
        if (kvtc_connect(d->addr, params, &c))
            _exit(2);
        kvtc_server_info info;
        kvtc_server_info_get(c, &info);
        uint8_t *buf = malloc(chunk);
        if (!buf)
            _exit(3);
        memset(buf, 7, chunk);
        char said = tell(&info);
        if (write(up[1], &said, 1) != 1 || read(down[0], &said, 1) != 1)
            _exit(4);
        for (uint32_t i = 0;; i++) {
            kvtc_key k = itest_key(space, i % 8);
            kvtc_put(c, &k, buf, chunk);
        }
    }
    close(up[1]);
    close(down[0]);
    pt->go_fd = down[1];
    char said = 0;
    cr_assert_eq(read(up[0], &said, 1), 1, "the putter did not connect");
    close(up[0]);
    return said;
}

void itest_putter_go(struct itest_putter *pt)
{
    char go = 1;
    cr_assert_eq(write(pt->go_fd, &go, 1), 1);
    close(pt->go_fd);
    pt->go_fd = -1;
}

void itest_putter_kill(struct itest_putter *pt, int after_ms)
{
    usleep((useconds_t)after_ms * 1000);
    kill(pt->pid, SIGKILL);
    waitpid(pt->pid, NULL, 0);
    pt->pid = 0;
}

/* ---- Metrics and file-system helpers (tiers) ------------------------ */

/* The value of the first sample of name in a Prometheus text body. name is
 * matched up to the value: "kvtc_x" matches "kvtc_x 3" only, and
 * "kvtc_x{tier=\"disk\"}" matches that series. */
int itest_metric(const char *body, const char *name, double *out)
{
    size_t nl = strlen(name);
    for (const char *p = body; p && *p; p = strchr(p, '\n'), p = p ? p + 1 : NULL) {
        if (*p == '#' || strncmp(p, name, nl) || (p[nl] != ' ' && p[nl] != '\t'))
            continue;
        char *end;
        double v = strtod(p + nl + 1, &end);
        if (end == p + nl + 1)
            return -1;
        *out = v;
        return 0;
    }
    return -1;
}

double itest_daemon_metric(const struct itest_daemon *d, const char *name)
{
    char *body = itest_metrics_body(d);
    double v = -1;
    itest_metric(body, name, &v);
    free(body);
    return v;
}

double itest_metric_sum(const char *body, const char *base, int *count)
{
    size_t bl = strlen(base);
    double sum = 0;
    int n = 0;
    for (const char *p = body; p && *p; p = strchr(p, '\n'), p = p ? p + 1 : NULL) {
        if (*p == '#' || strncmp(p, base, bl) || (p[bl] != '{' && p[bl] != ' '))
            continue;
        const char *v = p[bl] == '{' ? strchr(p + bl, '}') : p + bl;
        if (!v)
            continue;
        v += v[0] == '}';
        char *end;
        double x = strtod(v, &end);
        if (end != v) {
            sum += x;
            n++;
        }
    }
    if (count)
        *count = n;
    return sum;
}

char *itest_metrics_body(const struct itest_daemon *d)
{
    char *body = NULL;
    int code = itest_http_get(d->admin_port, "/metrics", &body);
    cr_assert_eq(code, 200, "/metrics: HTTP %d\n%s", code, itest_log_tail(d));
    cr_assert_not_null(body);
    return body;
}

int itest_daemon_kill9(struct itest_daemon *d)
{
    int st = itest_daemon_signal_wait(d, SIGKILL, 10000);
    return st != -1 && WIFSIGNALED(st) && WTERMSIG(st) == SIGKILL;
}

int itest_mount_tmpfs(const char *dir, const char *size)
{
    char opts[64];
    snprintf(opts, sizeof opts, "size=%s", size);
    if (mkdir(dir, 0700) && errno != EEXIST)
        return -errno;
    if (mount("tmpfs", dir, "tmpfs", 0, opts))
        return -errno;
    return 0;
}

void itest_umount(const char *dir)
{
    /* Lazy: a daemon killed a moment ago may still hold files open. */
    if (umount2(dir, MNT_DETACH) && errno != EINVAL && errno != ENOENT)
        fprintf(stderr, "itest: umount %s: %s\n", dir, strerror(errno));
}

static void round_done(int status, void *arg)
{
    (void)status;
    ++*(int *)arg;
}

void itest_disconnect_round(kvtc_conn *c, const kvtc_key *keys, uint32_t k, size_t n,
                            long delay_ms)
{
    uint8_t **dst = calloc(k, sizeof *dst);
    kvtc_get_item *gi = calloc(k, sizeof *gi);
    cr_assert(dst && gi);
    int done = 0;
    kvtc_op_params op = {.field_mask = KVTC_OP_PARAM_FIELD_CALLBACK, .cb = round_done,
                         .arg = &done};
    for (uint32_t i = 0; i < k; i++) {
        dst[i] = malloc(n);
        cr_assert_not_null(dst[i]);
        memset(dst[i], 0, n); /* resident before the daemon writes */
        gi[i].key = keys[i];
        gi[i].buf = dst[i];
        gi[i].capacity = n;
        cr_assert_eq(kvtc_get_batch_async(c, &gi[i], 1, &op), 0);
    }
    /* Let the daemon start copying, then walk away. */
    kvtc_progress(c);
    struct timespec ts = {0, delay_ms * 1000 * 1000};
    nanosleep(&ts, NULL);
    kvtc_disconnect(c);
    cr_assert_eq(done, (int)k, "callbacks ran %d of %u", done, k);
    for (uint32_t i = 0; i < k; i++)
        memset(dst[i], 0xee, n);
    ts.tv_nsec = 300 * 1000 * 1000;
    nanosleep(&ts, NULL);
    for (uint32_t i = 0; i < k; i++) {
        for (size_t j = 0; j < n; j += 4096)
            cr_assert_eq(dst[i][j], 0xee, "kvtcd wrote into buffer %u at %zu after "
                                          "kvtc_disconnect returned", i, j);
        free(dst[i]);
    }
    free(dst);
    free(gi);
}
