/* The private kvtcd of `kvtc demo`. */
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "demo_daemon.h"
#include "kvtc_errors.h"

#define START_TIMEOUT_MS 15000
#define STOP_TIMEOUT_MS 10000
#define LOG_TAIL_BYTES 2048

static long now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void sleep_ms(long ms)
{
    struct timespec ts = {ms / 1000, (ms % 1000) * 1000000};
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR)
        ;
}

/* kvtcd beside the running kvtc: an installed pair and a build folder both
 * keep them in one bin directory, and $PATH might name another version. */
static int find_kvtcd(char *out, size_t cap)
{
    char self[1024];
    ssize_t n = readlink("/proc/self/exe", self, sizeof self - 1);
    if (n <= 0)
        return KVTC_ENOENT;
    self[n] = '\0';
    char *slash = strrchr(self, '/');
    if (!slash)
        return KVTC_ENOENT;
    *slash = '\0';
    if ((size_t)snprintf(out, cap, "%s/kvtcd", self) >= cap)
        return KVTC_ENOENT;
    return access(out, X_OK) == 0 ? 0 : KVTC_ENOENT;
}

static void log_tail(const struct kvtc_demo_daemon *d)
{
    char path[300], buf[LOG_TAIL_BYTES + 1];
    snprintf(path, sizeof path, "%s/kvtcd.log", d->dir);
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return;
    off_t end = lseek(fd, 0, SEEK_END);
    off_t from = end > LOG_TAIL_BYTES ? end - LOG_TAIL_BYTES : 0;
    ssize_t r = pread(fd, buf, LOG_TAIL_BYTES, from);
    close(fd);
    if (r <= 0)
        return;
    buf[r] = '\0';
    fprintf(stderr, "kvtc demo: kvtcd log (%s):\n%s%s", path, buf,
            buf[r - 1] == '\n' ? "" : "\n");
}

static int rm_entry(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
    (void)st;
    (void)flag;
    (void)ftw;
    remove(path);
    return 0;
}

static void remove_dir(struct kvtc_demo_daemon *d)
{
    if (d->dir[0])
        nftw(d->dir, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
    d->dir[0] = '\0';
}

static int read_ports(const char *path, int *port, int *admin)
{
    FILE *f = fopen(path, "r");
    if (!f)
        return -1;
    int ok = fscanf(f, "%d %d", port, admin) == 2 && *port > 0;
    fclose(f);
    return ok ? 0 : -1;
}

static void describe_exit(int st)
{
    if (WIFEXITED(st))
        fprintf(stderr, "kvtc demo: kvtcd exited with status %d\n", WEXITSTATUS(st));
    else if (WIFSIGNALED(st))
        fprintf(stderr, "kvtc demo: kvtcd died of signal %d (%s)\n", WTERMSIG(st),
                strsignal(WTERMSIG(st)));
}

int kvtc_demo_daemon_start(struct kvtc_demo_daemon *d)
{
    char pf[300], data[300], logp[300];
    const char *tmp = getenv("TMPDIR");
    memset(d, 0, sizeof *d);
    if (find_kvtcd(d->bin, sizeof d->bin)) {
        fprintf(stderr, "kvtc demo: no kvtcd beside this kvtc (%s); start one and pass "
                "-s HOST:PORT\n", d->bin[0] ? d->bin : "/proc/self/exe unreadable");
        return KVTC_ENOENT;
    }
    snprintf(d->dir, sizeof d->dir, "%s/kvtc-demo.XXXXXX", tmp && tmp[0] ? tmp : "/tmp");
    if (!mkdtemp(d->dir)) {
        fprintf(stderr, "kvtc demo: mkdtemp %s: %s\n", d->dir, strerror(errno));
        d->dir[0] = '\0';
        return KVTC_EIO;
    }
    snprintf(pf, sizeof pf, "%s/ports", d->dir);
    snprintf(data, sizeof data, "%s/data", d->dir);
    snprintf(logp, sizeof logp, "%s/kvtcd.log", d->dir);
    /* Port 0 for both listeners: a demo must not collide with a kvtcd
     * already serving on the defaults. */
    const char *argv[] = {d->bin, "--listen", "127.0.0.1:0", "--admin", "127.0.0.1:0",
                          "--data-dir", data, "--port-file", pf, NULL};
    pid_t parent = getpid();
    fflush(NULL);
    d->pid = fork();
    if (d->pid < 0) {
        fprintf(stderr, "kvtc demo: fork: %s\n", strerror(errno));
        d->pid = 0;
        remove_dir(d);
        return KVTC_EIO;
    }
    if (d->pid == 0) {
        /* Die with the demo, whatever ends it. */
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        if (getppid() != parent)
            _exit(127);
        int fd = open(logp, O_WRONLY | O_CREAT | O_APPEND, 0600);
        if (fd >= 0) {
            dup2(fd, 1);
            dup2(fd, 2);
            close(fd);
        }
        execv(d->bin, (char *const *)argv);
        _exit(127);
    }
    for (long end = now_ms() + START_TIMEOUT_MS; now_ms() < end; sleep_ms(20)) {
        int st, port = 0;
        if (waitpid(d->pid, &st, WNOHANG) == d->pid) {
            d->pid = 0;
            fprintf(stderr, "kvtc demo: kvtcd (%s) did not start\n", d->bin);
            describe_exit(st);
            log_tail(d);
            remove_dir(d);
            return KVTC_EIO;
        }
        if (read_ports(pf, &port, &d->admin_port) == 0) {
            snprintf(d->addr, sizeof d->addr, "127.0.0.1:%d", port);
            return 0;
        }
    }
    fprintf(stderr, "kvtc demo: kvtcd wrote no port file in %d ms\n", START_TIMEOUT_MS);
    log_tail(d);
    kill(d->pid, SIGKILL);
    waitpid(d->pid, NULL, 0);
    d->pid = 0;
    remove_dir(d);
    return KVTC_EIO;
}

int kvtc_demo_daemon_alive(struct kvtc_demo_daemon *d)
{
    int st;
    return d->pid > 0 && waitpid(d->pid, &st, WNOHANG) == 0;
}

int kvtc_demo_daemon_stop(struct kvtc_demo_daemon *d)
{
    int st = 0, rc = 0;
    if (d->pid <= 0) {
        remove_dir(d);
        return 0;
    }
    pid_t r = waitpid(d->pid, &st, WNOHANG);
    if (r == 0) {
        kill(d->pid, SIGTERM);
        for (long end = now_ms() + STOP_TIMEOUT_MS;
             (r = waitpid(d->pid, &st, WNOHANG)) == 0 && now_ms() < end; sleep_ms(20))
            ;
        if (r == 0) {
            fprintf(stderr, "kvtc demo: kvtcd ignored SIGTERM for %d ms; killed\n",
                    STOP_TIMEOUT_MS);
            kill(d->pid, SIGKILL);
            waitpid(d->pid, &st, 0);
            rc = KVTC_EIO;
        }
    }
    if (!rc && !(WIFEXITED(st) && WEXITSTATUS(st) == 0)) {
        fprintf(stderr, "kvtc demo: kvtcd failed\n");
        describe_exit(st);
        rc = KVTC_EIO;
    }
    if (rc)
        log_tail(d);
    d->pid = 0;
    remove_dir(d);
    return rc;
}
