/* main.c - kvtcd entry point: configuration, then the server. */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

#include "config.h"
#include "kvtc_errors.h"
#include "log.h"
#include "server.h"

int main(int argc, char **argv)
{
    kvtcd_config cfg;
    char err[512] = "";
    int action = KVTCD_RUN;
    if (kvtcd_config_from_args(&cfg, argc, argv, &action, err, sizeof err) <
        0) {
        fprintf(stderr, "kvtcd: %s\n", err);
        return 2;
    }
    if (action == KVTCD_HELP) {
        fputs(kvtcd_usage(), stdout);
        return 0;
    }
    if (action == KVTCD_VERSION) {
        printf("kvtcd %s (protocol %u.%u)\n", KVTC_VERSION, KVTC_PROTO_MAJOR,
               KVTC_PROTO_MINOR);
        return 0;
    }
    kvtcd_log_set_level(cfg.log_level);
    /* A client vanishing mid-send must not kill the daemon. */
    signal(SIGPIPE, SIG_IGN);
    /* Checksums of large chunks run on libuv's thread pool (4 threads by
     * default): one per core, up to 16, unless the operator chose. */
    if (!getenv("UV_THREADPOOL_SIZE")) {
        long n = sysconf(_SC_NPROCESSORS_ONLN);
        char v[16];
        snprintf(v, sizeof v, "%ld", n < 4 ? 4 : n > 16 ? 16 : n);
        setenv("UV_THREADPOOL_SIZE", v, 0);
    }

    uv_loop_t loop;
    if (uv_loop_init(&loop) != 0) {
        fprintf(stderr, "kvtcd: cannot create the event loop\n");
        return 1;
    }
    kvtcd_server *srv = calloc(1, sizeof *srv);
    if (!srv)
        return 1;
    int rc = kvtcd_server_init(srv, &cfg, &loop);
    if (rc < 0) {
        fprintf(stderr, "kvtcd: cannot start: %s\n", kvtc_strerror(rc));
        free(srv);
        uv_loop_close(&loop);
        return 1;
    }
    rc = kvtcd_server_run(srv);
    free(srv);
    if (uv_loop_close(&loop) != 0)
        KVTCD_WARN("server", "event loop closed with handles left");
    return rc;
}
