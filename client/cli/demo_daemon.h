/* demo_daemon.h - the private kvtcd that `kvtc demo` starts when it is not
 * given a server: the kvtcd binary beside this kvtc, on free ports, with
 * its data in a temporary folder, stopped with SIGTERM at the end. */
#ifndef KVTC_CLI_DEMO_DAEMON_H
#define KVTC_CLI_DEMO_DAEMON_H

#include <sys/types.h>

struct kvtc_demo_daemon {
    pid_t pid;       /* 0: not running */
    char dir[256];   /* temporary folder: ports, kvtcd.log, data/ */
    char bin[1024];  /* the kvtcd that runs */
    char addr[64];   /* "127.0.0.1:PORT" once listening */
    int admin_port;
};

/* Start kvtcd and wait until it listens (its port file appears). Must run
 * before this process opens any UCX connection (UCX does not survive
 * fork). The daemon dies with this process. On failure prints why on stderr
 * (with the daemon's log tail) and returns KVTC_ENOENT (no kvtcd beside
 * kvtc), KVTC_EIO (it exited or never listened) or KVTC_ENOMEM. */
int kvtc_demo_daemon_start(struct kvtc_demo_daemon *d);

/* SIGTERM, wait for the exit (SIGKILL after 10 s), remove the temporary
 * folder. Returns 0 when kvtcd exited with status 0, else prints the exit
 * status and the log tail and returns KVTC_EIO. A no-op (0) when not
 * started. */
int kvtc_demo_daemon_stop(struct kvtc_demo_daemon *d);

/* 1 while the daemon runs (it did not exit on its own). */
int kvtc_demo_daemon_alive(struct kvtc_demo_daemon *d);

#endif
