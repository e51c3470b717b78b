/* itest.h - helpers for the integration tests: a real kvtcd child process,
 * libkvtc connections to it, the admin HTTP port, and a raw UCX endpoint
 * that sends hand-made frames.
 *
 * Criterion forks one process per test and runs two at once, so every test
 * starts its own daemon on its own port (port 0, read back from the port
 * file). A daemon dies with its test process (PR_SET_PDEATHSIG) even when an
 * assertion ends the test early. */
#ifndef KVTC_ITEST_H
#define KVTC_ITEST_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "kvtc.h"

/* Transport sets the tests run over (UCX_TLS). Note: with Debian's UCX 1.13
 * a client/server (sockaddr) endpoint ends up on am(tcp/lo) even when shared
 * memory is allowed (UCX_LOG_LEVEL=info shows its ep_cfg); the SM set still
 * covers whatever same-host path libkvtc/kvtcd open besides it. */
#define ITEST_TLS_SM "tcp,sm,self"
#define ITEST_TLS_TCP "tcp"

struct itest_daemon {
    pid_t pid;
    int port;        /* UCX listener */
    int admin_port;  /* HTTP /metrics, /healthz */
    char dir[256];   /* temp dir: port file, log, data dir */
    char addr[64];   /* "127.0.0.1:PORT" */
    char log[320];
    /* Why the next stop skips its leak check (NULL: it checks). For a stop
     * while a connection is still open: LeakSanitizer cannot follow UCX's
     * encoded pointers to a live connection's objects. */
    const char *skip_leak_check;
};

/* Skip the current test (cr_skip_test) with a clear message when
 * build/bin/kvtcd is missing. Also sets the UCX environment that every
 * test shares (loopback device, port reuse) and UCX_TLS to tls. */
void itest_setup(const char *tls);

/* Start kvtcd listening on 127.0.0.1:port (0: any) with --host-mem
 * host_mem; extra (NULL-terminated, may be NULL) adds arguments. Fails the
 * test when the daemon does not come up within the time limit. */
void itest_daemon_start(struct itest_daemon *d, const char *host_mem, int port,
                        const char *const *extra);

/* The two halves of itest_daemon_start, for restarts on the same data:
 * prepare makes d's temp dir (d->dir; put a --disk-dir under it), launch
 * starts kvtcd there (again after a stop by signal: the port file is reset,
 * the log appended, the port is new unless port != 0). */
void itest_daemon_prepare(struct itest_daemon *d);
void itest_daemon_launch(struct itest_daemon *d, const char *host_mem, int port,
                         const char *const *extra);

/* SIGKILL and reap; returns 1 when the daemon died of that signal (0 when
 * it had already exited some other way). d->dir stays for a relaunch. */
int itest_daemon_kill9(struct itest_daemon *d);

/* Send sig and wait for the exit; returns the raw wait status (-1 when it
 * had to be killed after a timeout). Asserts nothing. */
int itest_daemon_signal_wait(struct itest_daemon *d, int sig, int timeout_ms);

/* SIGTERM, assert exit status 0 and a log free of sanitizer reports, and
 * remove the temp dir. */
void itest_daemon_stop(struct itest_daemon *d);

/* Under ASan: fail the test if this process leaked so far (called by
 * itest_daemon_stop; no-op otherwise). */
void itest_expect_no_leaks(void);

/* 1 while the daemon process is alive. */
int itest_daemon_alive(struct itest_daemon *d);

/* Connect with libkvtc (asserting success). */
kvtc_conn *itest_connect(const struct itest_daemon *d);

/* Stats through libkvtc (asserting success). */
kvtc_stats itest_stats(kvtc_conn *c);

/* Poll stats until pred(stats, arg) holds or timeout_ms passes; returns 1
 * when it held. */
int itest_wait_stats(kvtc_conn *c, int (*pred)(const kvtc_stats *, void *),
                     void *arg, int timeout_ms);
/* itest_wait_stats predicate: the asking session is the only one left
 * (the others, e.g. killed clients', are gone). arg unused. */
int itest_one_session(const kvtc_stats *s, void *arg);

/* Deterministic key i of a test-local key space. */
/* An asynchronous operation's callback record: how often it ran (once is
 * right) and the status it last got. itest_done_cb is the callback. */
struct itest_done {
    int calls;
    int status;
};
void itest_done_cb(int status, void *arg);

kvtc_key itest_key(uint32_t space, uint32_t i);

/* Fill / check buffers whose bytes depend on seed (a wrong or shifted
 * chunk fails the check). */
void itest_fill(void *buf, size_t len, uint64_t seed);
int itest_check(const void *buf, size_t len, uint64_t seed);

/* One round of "a disconnect stops every write": asynchronous gets of
 * keys[0..k) (n bytes each) into fresh buffers, delay_ms for the daemon to
 * start copying, kvtc_disconnect(c); then asserts every callback ran and,
 * after poisoning the buffers and waiting 300 ms, that kvtcd wrote none of
 * them any more. c is gone afterwards. */
void itest_disconnect_round(kvtc_conn *c, const kvtc_key *keys, uint32_t k, size_t n,
                            long delay_ms);

/* HTTP GET of path on the admin port. Returns the status code (or -1) and
 * the body in *body (malloc'd, NUL-terminated; caller frees). */
int itest_http_get(int port, const char *path, char **body);

/* /metrics of the daemon (asserting HTTP 200); caller frees. */
char *itest_metrics_body(const struct itest_daemon *d);

/* One sample of a Prometheus text body: name is the metric name with its
 * labels exactly as printed ("kvtc_chunks", "kvtc_x{tier=\"disk\"}").
 * Returns 0 and *out, or -1 when absent. */
int itest_metric(const char *body, const char *name, double *out);
/* itest_metric on the daemon's /metrics fetched now; -1 when absent. */
double itest_daemon_metric(const struct itest_daemon *d, const char *name);

/* Sum of every series of metric base (any labels); *count (may be NULL)
 * gets how many series there were. */
double itest_metric_sum(const char *body, const char *base, int *count);

/* Mount a tmpfs of size ("8m") on dir (created if missing). Returns 0 or
 * -errno (EPERM when not root: the caller skips). itest_umount detaches
 * it; itest_daemon_stop and the stale-dir sweep also detach mounts left
 * under a daemon's temp dir. */
int itest_mount_tmpfs(const char *dir, const char *size);
void itest_umount(const char *dir);

/* Run argv (argv[0] a path) with stdout and stderr captured into malloc'd
 * strings; returns the exit status (-1 on a signal). */
int itest_run(char *const argv[], char **out, char **err);

/* Tail of the daemon log (static buffer), for failure messages. */
const char *itest_log_tail(const struct itest_daemon *d);

/* ---- A client killed mid-transfer ----------------------------------- */

/* A child process (forked before this process touches UCX: UCX state does
 * not survive a fork) that connects to d with params, tells its parent one
 * byte, tell(what its connection got), waits for itest_putter_go, then
 * puts chunks of `chunk` bytes under 8 keys of space until it is killed. */
struct itest_putter {
    pid_t pid;
    int go_fd;
};
/* Start it; returns the byte it told. */
char itest_putter_start(struct itest_putter *pt, const struct itest_daemon *d,
                        const kvtc_conn_params *params, size_t chunk, uint32_t space,
                        char (*tell)(const kvtc_server_info *info));
/* Let its puts begin (after this process has connected, say: a connect
 * would otherwise compete with them for a loaded kvtcd). */
void itest_putter_go(struct itest_putter *pt);
/* Wait after_ms (puts under way), SIGKILL it, reap it. */
void itest_putter_kill(struct itest_putter *pt, int after_ms);

/* ---- Raw UCX endpoint: hand-made frames ----------------------------- */

struct itest_raw;

/* Connect a bare UCP endpoint (AM, client/server) to the daemon. */
struct itest_raw *itest_raw_open(const struct itest_daemon *d);
/* The same to another listening port on 127.0.0.1 (a rail's). */
struct itest_raw *itest_raw_open_port(int port);
/* Send AM id am_id with the given header and payload, flagged for reply. */
int itest_raw_send(struct itest_raw *r, unsigned am_id, const void *hdr, size_t hlen,
                   const void *data, size_t dlen);
/* Wait for the next reply frame; returns its header bytes (malloc'd) or NULL
 * on timeout. */
void *itest_raw_wait_reply(struct itest_raw *r, int timeout_ms, size_t *len);
/* Largest AM header the local worker can send. */
size_t itest_raw_max_header(struct itest_raw *r);
void itest_raw_close(struct itest_raw *r);

#endif
