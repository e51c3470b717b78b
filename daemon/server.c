/* server.c - kvtcd lifecycle: build, serve, drain on SIGTERM/SIGINT, tear
 * down without leaks.
 *
 * Drain: stop accepting, answer new requests BUSY, wait (bounded) for the
 * transfers in flight to end (durable writes included) and for the
 * write-behind queue to empty, close every endpoint, close the tiers
 * (disk and GPU stores), then close the loop's handles and free the
 * store. */
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "kvtc_errors.h"
#include "log.h"
#include "codec_serve.h"
#include "local_path.h"
#include "server.h"
#include "store_host.h"

#define DRAIN_TICK_MS 10
#define DRAIN_MAX_MS 10000   /* transfers in flight, write-behind */
#define CLOSE_MAX_MS 3000    /* endpoint closes */

uint64_t kvtcd_now_ms(const kvtcd_server *srv)
{
    return uv_now(srv->loop) - srv->start_ms;
}

static int write_port_file(const kvtcd_server *srv)
{
    const char *path = srv->cfg.port_file;
    char tmp[1100];
    snprintf(tmp, sizeof tmp, "%s.tmp.%ld", path, (long)getpid());
    int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0) {
        KVTCD_ERROR("server", "cannot write port file path=%s err=\"%s\"",
                    tmp, strerror(errno));
        return KVTC_EIO;
    }
    char line[32];
    int n = snprintf(line, sizeof line, "%u %u\n", srv->bound_port,
                     srv->admin_port);
    int ok = write(fd, line, (size_t)n) == n;
    ok = (fsync(fd) == 0) && ok;
    ok = (close(fd) == 0) && ok;
    /* rename(2) is atomic: readers see no file or the whole line. */
    if (!ok || rename(tmp, path) != 0) {
        KVTCD_ERROR("server", "cannot write port file path=%s err=\"%s\"",
                    path, strerror(errno));
        unlink(tmp);
        return KVTC_EIO;
    }
    return 0;
}

/* The disk tier (a later issue) lives here; check it now so a bad path
 * fails at start, not at the first spill. */
static int prepare_data_dir(const char *dir)
{
    if (mkdir(dir, 0750) != 0 && errno != EEXIST) {
        KVTCD_ERROR("server", "cannot create data dir path=%s err=\"%s\"",
                    dir, strerror(errno));
        return KVTC_EIO;
    }
    struct stat st;
    if (stat(dir, &st) != 0 || !S_ISDIR(st.st_mode) ||
        access(dir, W_OK | X_OK) != 0) {
        KVTCD_ERROR("server", "data dir not a writable directory path=%s",
                    dir);
        return KVTC_EIO;
    }
    return 0;
}

static void on_signal(uv_signal_t *h, int signum)
{
    kvtcd_server *srv = h->data;
    if (srv->draining) {
        /* Signals often come in pairs (a supervisor and its child, a
         * process group): only a later one means "now". */
        if (kvtcd_now_ms(srv) >= srv->drain_started_ms + 1000) {
            KVTCD_WARN("server", "second signal=%d: exiting without drain",
                       signum);
            _exit(1);
        }
        return;
    }
    KVTCD_INFO("server", "signal=%d: draining", signum);
    kvtcd_server_stop(srv);
}

static void teardown_handles(kvtcd_server *srv)
{
    kvtcd_local_close(srv);
    kvtcd_transport_close_handles(srv);
    kvtcd_admin_close(srv);
    if (!uv_is_closing((uv_handle_t *)&srv->sigterm)) {
        uv_close((uv_handle_t *)&srv->sigterm, NULL);
        uv_close((uv_handle_t *)&srv->sigint, NULL);
        uv_close((uv_handle_t *)&srv->drain_timer, NULL);
    }
}

static void on_tiers_closed(void *arg)
{
    kvtcd_server *srv = arg;
    srv->tiers_closed = 1;
}

static void on_drain_tick(uv_timer_t *t)
{
    kvtcd_server *srv = t->data;
    uint64_t now = kvtcd_now_ms(srv);
    kvtcd_transport_progress(srv);
    if (srv->draining == 1) {
        uint64_t dirty = kvtcd_tiers_dirty(srv->tiers);
        if ((srv->n_ops > 0 || dirty > 0) && now < srv->drain_deadline_ms)
            return;
        if (srv->n_ops > 0)
            KVTCD_WARN("server", "drain timeout: abandoning transfers=%u",
                       srv->n_ops);
        if (dirty > 0)
            KVTCD_WARN("server", "drain timeout: chunks not written to disk "
                                 "(lost) count=%llu",
                       (unsigned long long)dirty);
        srv->draining = 2;
        srv->drain_deadline_ms = now + CLOSE_MAX_MS;
        kvtcd_transport_close_all(srv);
        return;
    }
    if (srv->draining == 2) {
        if (srv->closing > 0 && now < srv->drain_deadline_ms)
            return;
        /* Endpoints closed: what the tiers still have in flight (timed-out
         * durable writes, reads) completes or is canceled, its callbacks
         * freeing their ops, before the transport frees what is left. */
        srv->draining = 3;
        if (srv->tiers)
            kvtcd_tiers_close(srv->tiers, on_tiers_closed, srv);
        else
            srv->tiers_closed = 1;
        return;
    }
    if (srv->draining == 3) {
        if (!srv->tiers_closed)
            return;
        srv->draining = 4;
        uv_timer_stop(t);
        teardown_handles(srv);
    }
}

void kvtcd_server_stop(kvtcd_server *srv)
{
    if (srv->draining)
        return;
    srv->draining = 1;
    srv->drain_started_ms = kvtcd_now_ms(srv);
    kvtcd_transport_stop_listening(srv);
    srv->drain_deadline_ms = kvtcd_now_ms(srv) + DRAIN_MAX_MS;
    uv_timer_start(&srv->drain_timer, on_drain_tick, 0, DRAIN_TICK_MS);
}

static void free_state(kvtcd_server *srv)
{
    kvtcd_transport_fini(srv);
    /* After the ops (which hold profile references) are gone. */
    kvtcd_serve_destroy(srv->serve);
    srv->serve = NULL;
    /* Blobs are registered with the UCP context: free them before it. */
    if (srv->index.buckets)
        kvtcd_index_fini(&srv->index);
    kvtcd_tiers_free(srv->tiers);
    srv->tiers = NULL;
    kvtcd_tier_destroy(srv->host);
    srv->host = NULL;
    kvtcd_transport_cleanup_context(srv);
}

int kvtcd_server_init(kvtcd_server *srv, const kvtcd_config *cfg,
                      uv_loop_t *loop)
{
    memset(srv, 0, sizeof *srv);
    srv->cfg = *cfg;
    srv->loop = loop;
    uv_update_time(loop);
    srv->start_ms = uv_now(loop);
    srv->loop_cpu_clock_ok =
        pthread_getcpuclockid(pthread_self(), &srv->loop_cpu_clock) == 0;
    uv_signal_init(loop, &srv->sigterm);
    uv_signal_init(loop, &srv->sigint);
    uv_timer_init(loop, &srv->drain_timer);
    srv->sigterm.data = srv->sigint.data = srv->drain_timer.data = srv;

    int rc = 0;
    if (cfg->data_dir[0] && (rc = prepare_data_dir(cfg->data_dir)) < 0)
        goto fail;
    rc = kvtcd_transport_init(srv);
    if (rc < 0)
        goto fail;
    /* After the UCX listener: the default socket name is its address. */
    rc = kvtcd_local_init(srv);
    if (rc < 0)
        goto fail;
    /* Unset knobs stay out of the mask: the store's default (and its
     * benchmark environment variables) apply. */
    kvtcd_host_opts ho = {0};
    if (cfg->host_prefault >= 0) {
        ho.field_mask |= KVTCD_HOST_OPT_PREFAULT;
        ho.prefault = cfg->host_prefault;
    }
    if (cfg->host_pin >= 0) {
        ho.field_mask |= KVTCD_HOST_OPT_PIN;
        ho.pin = cfg->host_pin;
    }
    rc = kvtcd_store_host_create_ex(cfg->host_mem, srv->ucp, &ho, &srv->host);
    if (rc < 0)
        goto fail;
    rc = kvtcd_index_init(&srv->index, srv->host);
    if (rc < 0)
        goto fail;
    kvtcd_tiers_params tp = {
        .loop = loop,
        .ix = &srv->index,
        .clock_base_ms = srv->start_ms,
        .disk_dir = cfg->disk_dir,
        .disk_size = cfg->disk_size,
        .disk_io = cfg->disk_io,
        .disk_direct = 1,
        .durable = cfg->durability == KVTCD_DURABILITY_DURABLE,
        .gpu_mem = cfg->gpu_mem,
        .gpu_device = (int)cfg->gpu_device,
    };
    rc = kvtcd_tiers_open(&tp, &srv->tiers);
    if (rc < 0)
        goto fail;
    rc = kvtcd_serve_create(srv, &srv->serve);
    if (rc < 0)
        goto fail;
    rc = kvtcd_admin_init(srv);
    if (rc < 0)
        goto fail;
    uv_signal_start(&srv->sigterm, on_signal, SIGTERM);
    uv_signal_start(&srv->sigint, on_signal, SIGINT);
    if (cfg->port_file[0]) {
        rc = write_port_file(srv);
        if (rc < 0)
            goto fail;
    }
    KVTCD_INFO("server", "listening ucx=%s admin=%s host_mem=%llu "
                         "disk_dir=%s gpu_mem=%llu durability=%s "
                         "max_chunk_bytes=%llu max_batch=%u version=%s",
               srv->listen_addr, srv->admin_addr,
               (unsigned long long)cfg->host_mem,
               cfg->disk_dir[0] ? cfg->disk_dir : "-",
               (unsigned long long)cfg->gpu_mem,
               cfg->durability == KVTCD_DURABILITY_DURABLE ? "durable"
                                                           : "cache",
               (unsigned long long)cfg->max_chunk_bytes, cfg->max_batch,
               KVTC_VERSION);
    /* The contract line tools parse (kvtcd --help documents it). */
    fprintf(stderr, "kvtcd: listening ucx=%s admin=%s\n", srv->listen_addr,
            srv->admin_addr);
    fflush(stderr);
    return 0;
fail:
    if (srv->tiers)
        kvtcd_tiers_close(srv->tiers, on_tiers_closed, srv);
    teardown_handles(srv);
    uv_run(loop, UV_RUN_DEFAULT); /* let the closes finish */
    free_state(srv);
    return rc;
}

int kvtcd_server_run(kvtcd_server *srv)
{
    uv_run(srv->loop, UV_RUN_DEFAULT);
    free_state(srv);
    KVTCD_INFO("server", "stopped puts=%llu gets=%llu hits=%llu",
               (unsigned long long)srv->m.puts,
               (unsigned long long)srv->m.gets,
               (unsigned long long)srv->m.hits);
    if (srv->cfg.port_file[0])
        unlink(srv->cfg.port_file);
    return srv->exit_code;
}
