/* admin.c - the admin HTTP port: GET /metrics (Prometheus text format 0.0.4)
 * and GET /healthz, served from the loop thread with uv_tcp and parsed by
 * http_parser (never by hand). One request per connection: the reply says
 * "Connection: close" and the connection closes once it is written. */
#include <http_parser.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "codec_serve.h"
#include "kvtc_errors.h"
#include "local_path.h"
#include "local_region.h"
#include "log.h"
#include "rails.h"
#include "server.h"
#include "store_host.h"

#define MAX_REQUEST_BYTES 16384 /* headers included; /metrics needs little */
#define MAX_URL 1024
#define MAX_CONNS 64

typedef struct admin_conn {
    uv_tcp_t tcp;
    uv_write_t wr;
    kvtcd_server *srv;
    http_parser parser;
    char url[MAX_URL + 1];
    size_t url_len;
    size_t received;
    int done;        /* a response is queued; ignore further input */
    int url_too_long;
    char *resp;
} admin_conn;

static uint32_t g_conns; /* open admin connections (loop thread only) */

static void on_conn_closed(uv_handle_t *h)
{
    admin_conn *c = h->data;
    free(c->resp);
    free(c);
    g_conns--;
}

static void conn_close(admin_conn *c)
{
    if (!uv_is_closing((uv_handle_t *)&c->tcp))
        uv_close((uv_handle_t *)&c->tcp, on_conn_closed);
}

static void on_written(uv_write_t *w, int status)
{
    conn_close(w->data);
}

static void respond(admin_conn *c, int code, const char *reason,
                    const char *ctype, const char *body, size_t body_len,
                    int head_only)
{
    c->done = 1;
    uv_read_stop((uv_stream_t *)&c->tcp);
    char hdr[256];
    int hl = snprintf(hdr, sizeof hdr,
                      "HTTP/1.1 %d %s\r\nContent-Type: %s\r\n"
                      "Content-Length: %zu\r\nConnection: close\r\n\r\n",
                      code, reason, ctype, body_len);
    size_t total = (size_t)hl + (head_only ? 0 : body_len);
    c->resp = malloc(total);
    if (!c->resp) {
        conn_close(c);
        return;
    }
    memcpy(c->resp, hdr, (size_t)hl);
    if (!head_only && body_len)
        memcpy(c->resp + hl, body, body_len);
    uv_buf_t b = uv_buf_init(c->resp, (unsigned)total);
    c->wr.data = c;
    if (uv_write(&c->wr, (uv_stream_t *)&c->tcp, &b, 1, on_written) < 0)
        conn_close(c);
}

/* Appends to a growing buffer; on allocation failure the buffer is marked
 * bad and later appends are no-ops. */
struct sbuf {
    char *p;
    size_t len, cap;
    int bad;
};

static void sb_printf(struct sbuf *b, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
static void sb_printf(struct sbuf *b, const char *fmt, ...)
{
    if (b->bad)
        return;
    for (;;) {
        va_list ap;
        va_start(ap, fmt);
        int n = vsnprintf(b->p ? b->p + b->len : NULL,
                          b->p ? b->cap - b->len : 0, fmt, ap);
        va_end(ap);
        if (n < 0) {
            b->bad = 1;
            return;
        }
        if (b->p && (size_t)n < b->cap - b->len) {
            b->len += (size_t)n;
            return;
        }
        size_t ncap = (b->cap ? b->cap * 2 : 4096) + (size_t)n;
        char *np = realloc(b->p, ncap);
        if (!np) {
            b->bad = 1;
            return;
        }
        b->p = np;
        b->cap = ncap;
    }
}

static void metric(struct sbuf *b, const char *name, const char *type,
                   const char *help, uint64_t v)
{
    sb_printf(b, "# HELP kvtc_%s %s\n# TYPE kvtc_%s %s\nkvtc_%s %llu\n",
              name, help, name, type, name, (unsigned long long)v);
}

/* A clock's seconds as a counter; absent when the clock cannot be read. */
static void cpu_metric(struct sbuf *b, const char *name, const char *help,
                       clockid_t clock)
{
    struct timespec ts;
    if (clock_gettime(clock, &ts) != 0)
        return;
    sb_printf(b, "# HELP kvtc_%s %s\n# TYPE kvtc_%s counter\nkvtc_%s %.6f\n",
              name, help, name, name, ts.tv_sec + ts.tv_nsec * 1e-9);
}

/* Rails (rails.h): how many, what came on them, each one's CPU. */
static void render_rails(struct sbuf *b, const kvtcd_server *srv)
{
    uint32_t n = kvtcd_rails_count(srv);
    metric(b, "rails", "gauge",
           "Rails running: UCX workers on threads of their own that carry "
           "large puts and gets.", n);
    metric(b, "rail_binds_total", "counter",
           "Client endpoints bound to a session on a rail.", srv->m.rail_binds);
    metric(b, "rail_requests_total", "counter",
           "Requests that came on a rail.", srv->m.rail_requests);
    if (!n)
        return;
    sb_printf(b, "# HELP kvtc_rail_cpu_seconds_total CPU seconds of each rail's "
                 "thread (its tcp copies).\n# TYPE kvtc_rail_cpu_seconds_total "
                 "counter\n");
    for (uint32_t r = 0; r < n; r++) {
        double sec = kvtcd_rails_cpu_seconds(srv, r);
        if (sec >= 0)
            sb_printf(b, "kvtc_rail_cpu_seconds_total{rail=\"%u\"} %.6f\n", r, sec);
    }
}

static const char *const tier_names[KVTCD_N_TIERS] = {"host", "gpu",
                                                      "disk"};

/* One per-tier series: HELP/TYPE once, a sample per tier. */
static void tier_metric(struct sbuf *b, const char *name, const char *type,
                        const char *help, const uint64_t v[KVTCD_N_TIERS])
{
    sb_printf(b, "# HELP kvtc_tier_%s %s\n# TYPE kvtc_tier_%s %s\n", name,
              help, name, type);
    for (int i = 0; i < KVTCD_N_TIERS; i++)
        sb_printf(b, "kvtc_tier_%s{tier=\"%s\"} %llu\n", name, tier_names[i],
                  (unsigned long long)v[i]);
}

/* The tiers' series (docs/kvtcd.md, Admin port). */
static void render_tiers(struct sbuf *b, const kvtcd_server *srv)
{
    kvtcd_tiers_stats ts;
    kvtcd_tiers_get_stats(srv->tiers, &ts);
    uint64_t v[KVTCD_N_TIERS];
#define COUNTER(field, name, help)                                          \
    do {                                                                    \
        for (int i = 0; i < KVTCD_N_TIERS; i++)                             \
            v[i] = ts.c[i].field;                                           \
        tier_metric(b, name, "counter", help, v);                           \
    } while (0)
    tier_metric(b, "capacity_bytes", "gauge",
                "Bytes the tier may hold (0: tier absent).", ts.capacity);
    tier_metric(b, "used_bytes", "gauge", "Bytes the tier holds.", ts.used);
    COUNTER(hits, "hits_total", "Gets served from the tier.");
    COUNTER(misses, "misses_total",
            "Gets that reached the tier and did not find the chunk there.");
    COUNTER(promotions, "promotions_total",
            "Copies made into the tier from a lower one.");
    COUNTER(demotions, "demotions_total",
            "Copies the tier gave up because a lower tier holds the chunk.");
    COUNTER(evictions, "evictions_total",
            "Chunks dropped from the tier with no lower copy left.");
    COUNTER(bytes_read, "bytes_read_total", "Bytes read from the tier.");
    COUNTER(bytes_written, "bytes_written_total",
            "Bytes written to the tier.");
    COUNTER(errors, "errors_total", "Failed operations of the tier.");
#undef COUNTER
    const kvtcd_disk_stats *d = &ts.disk;
    metric(b, "disk_live_bytes", "gauge",
           "Bytes of live records in the disk tier.", d->live);
    metric(b, "disk_segments", "gauge", "Segment files of the disk tier.",
           d->segments);
    metric(b, "disk_syncs_total", "counter", "fdatasync calls.", d->syncs);
    metric(b, "disk_compactions_total", "counter",
           "Segments compacted.", d->compactions);
    metric(b, "disk_corrupt_total", "counter",
           "Disk records dropped as torn or corrupt (recovery and reads).",
           d->corrupt);
    metric(b, "disk_recovered_total", "counter",
           "Disk records rebuilt into the index at start.", d->recovered);
    sb_printf(b, "# HELP kvtc_disk_recover_seconds Seconds the start-up "
                 "recovery took.\n# TYPE kvtc_disk_recover_seconds gauge\n"
                 "kvtc_disk_recover_seconds %.6f\n",
              d->recover_seconds);
    sb_printf(b, "# HELP kvtc_disk_backend_info The disk tier's I/O "
                 "backend.\n# TYPE kvtc_disk_backend_info gauge\n"
                 "kvtc_disk_backend_info{backend=\"%s\"} %d\n",
              ts.has_disk ? ts.backend : "none", ts.has_disk);
    metric(b, "disk_degraded", "gauge",
           "1 while the disk tier backs off after a failed write.",
           (uint64_t)ts.degraded);
    metric(b, "disk_dirty_chunks", "gauge",
           "Chunks acknowledged but not yet written to disk (cache mode).",
           ts.dirty);
    metric(b, "gpu_host_registered_bytes", "gauge",
           "Host tier bytes page-locked for the GPU tier's direct copies "
           "(0: copies are staged).", ts.gpu_host_registered);
    metric(b, "durable", "gauge",
           "1 when puts are acknowledged only once on disk.",
           (uint64_t)ts.durable);
}

static void serve_metric(void *ctx, const char *name, const char *type,
                         const char *help, uint64_t v)
{
    metric(ctx, name, type, help, v);
}

/* The host slab's own gauges (store_host.h); absent for other tiers. */
static void render_host(struct sbuf *b, const kvtcd_server *srv)
{
    kvtcd_host_stats hs;
    if (!srv->host || kvtcd_store_host_stats(srv->host, &hs) < 0)
        return;
    metric(b, "host_resident_bytes", "gauge",
           "Host slab bytes made resident ahead of use.", hs.resident_bytes);
    metric(b, "host_locked_bytes", "gauge", "Host slab bytes mlock'ed.",
           hs.locked_bytes);
    metric(b, "host_free_extents", "gauge", "Free extents of the host slab.",
           hs.free_extents);
    metric(b, "host_largest_free_bytes", "gauge",
           "Largest free extent of the host slab.", hs.largest_free_bytes);
    metric(b, "host_fragmented_full_total", "counter",
           "Host allocations refused although enough bytes were free.",
           hs.frag_full);
}

int kvtcd_metrics_render(const kvtcd_server *srv, char **out, size_t *len)
{
    struct sbuf b = {0};
    const kvtcd_metrics *m = &srv->m;
    metric(&b, "chunks", "gauge", "Chunks stored.", srv->index.count);
    metric(&b, "bytes_used", "gauge", "Bytes of chunk data in host RAM.",
           srv->host->used);
    metric(&b, "bytes_capacity", "gauge", "Host RAM capacity for chunks.",
           srv->host->capacity);
    metric(&b, "sessions", "gauge", "Connected clients.", srv->n_sessions);
    metric(&b, "inflight_ops", "gauge",
           "Transfers in flight (bulk receives and reply sends).", srv->n_ops);
    metric(&b, "sessions_total", "counter", "Clients accepted.",
           m->sessions_total);
    metric(&b, "disconnects_total", "counter",
           "Sessions ended by peer close or error.", m->disconnects);
    metric(&b, "requests_total", "counter", "Requests received.",
           m->requests);
    metric(&b, "puts_total", "counter", "Chunks stored by Put.", m->puts);
    metric(&b, "gets_total", "counter", "Keys asked by Get.", m->gets);
    metric(&b, "hits_total", "counter", "Get keys served.", m->hits);
    metric(&b, "misses_total", "counter", "Get keys not served.", m->misses);
    metric(&b, "lookups_total", "counter", "Lookup requests.", m->lookups);
    metric(&b, "deletes_total", "counter", "Chunks deleted.", m->deletes);
    metric(&b, "pins_total", "counter", "Pin and unpin operations.", m->pins);
    metric(&b, "evictions_total", "counter",
           "Chunks evicted for room (prefix-aware LRU, all tiers).",
           srv->index.evictions);
    metric(&b, "expirations_total", "counter", "Chunks expired (TTL).",
           srv->index.expirations);
    metric(&b, "rejected_full_total", "counter",
           "Put chunks refused because the store was full.",
           m->rejected_full);
    metric(&b, "corrupt_total", "counter",
           "Checksum mismatches (put payloads and stored chunks).",
           m->corrupt);
    metric(&b, "gets_audited_total", "counter",
           "Get hits sent over UCX to a client that checks them itself, "
           "re-verified by kvtcd beside the send instead of before it "
           "(at most once per chunk an --audit-interval).",
           m->gets_audited);
    metric(&b, "bulk_replies_waited_total", "counter",
           "Replies with rendezvous-size payloads that waited for their "
           "session's previous one to be sent (one at a time per session).",
           m->bulk_replies_waited);
    metric(&b, "bytes_in_total", "counter", "Chunk bytes received.",
           m->bytes_in);
    metric(&b, "bytes_out_total", "counter", "Chunk bytes sent.",
           m->bytes_out);
    metric(&b, "errors_total", "counter",
           "Requests answered with an error status.", m->errors);
    metric(&b, "uptime_seconds", "gauge", "Seconds since start.",
           kvtcd_now_ms(srv) / 1000);
    if (srv->loop_cpu_clock_ok)
        cpu_metric(&b, "loop_cpu_seconds_total",
                   "CPU seconds of the loop thread, which runs every request "
                   "and every UCX transfer (tcp copies included): a rate "
                   "near 1 means it is the bound.",
                   srv->loop_cpu_clock);
    cpu_metric(&b, "process_cpu_seconds_total",
               "CPU seconds of the whole daemon (all threads).",
               CLOCK_PROCESS_CPUTIME_ID);
    render_rails(&b, srv);
    /* The same-host local path (local_path.h). */
    metric(&b, "local_links_total", "counter",
           "Sessions that bound the local path.", m->local_links);
    metric(&b, "local_refused_total", "counter",
           "Local-path handshakes refused.", m->local_refused);
    metric(&b, "local_puts_total", "counter",
           "Put requests copied by the local path.", m->local_puts);
    metric(&b, "local_gets_total", "counter",
           "Get requests written by the local path.", m->local_gets);
    metric(&b, "local_bytes_in_total", "counter",
           "Chunk bytes read from clients by the local path.",
           m->local_bytes_in);
    metric(&b, "local_bytes_out_total", "counter",
           "Chunk bytes written to clients by the local path.",
           m->local_bytes_out);
    metric(&b, "local_failures_total", "counter",
           "Local requests refused or failed (the session fell back to UCX "
           "payloads).",
           m->local_failures);
    metric(&b, "local_copies_loop_total", "counter",
           "Local-path copies run on the loop thread (small, alone).",
           m->local_copies_loop);
    metric(&b, "local_copies_workers_total", "counter",
           "Local-path copies run by the copy workers.",
           m->local_copies_workers);
    metric(&b, "local_copies_shared_total", "counter",
           "Local-path copies into or out of client memory shared with "
           "kvtcd (plain copies, no process_vm_*).",
           m->local_copies_shared);
    metric(&b, "local_regions", "gauge",
           "Client memory regions mapped now (all sessions).",
           kvtcd_regions_mapped());
    metric(&b, "local_regions_refused_total", "counter",
           "Region messages refused (bad memfd, probe, limits).",
           m->local_regions_refused);
    metric(&b, "local_client_checked_total", "counter",
           "Local get hits whose checksum the client verified (the daemon "
           "did not read them a second time).",
           m->local_client_checked);
    metric(&b, "local_active_clients", "gauge",
           "Sessions with a local-path copy in flight now.",
           (uint64_t)kvtcd_local_active_clients(srv));
    metric(&b, "local_polling", "gauge",
           "1 while the polling policy lets copy workers and the loop poll.",
           (uint64_t)kvtcd_local_polling(srv));
    metric(&b, "local_worker_poll_ms_total", "counter",
           "Milliseconds the local path's copy workers spent polling for "
           "jobs (about the CPU time polling cost).",
           kvtcd_local_polled_ns(srv) / 1000000u);
    metric(&b, "local_copies_in_flight", "gauge",
           "Local-path copies queued or running on the copy workers.",
           (uint64_t)kvtcd_local_copies_busy(srv));
    if (srv->tiers)
        render_tiers(&b, srv);
    render_host(&b, srv);
    if (srv->serve)
        kvtcd_serve_metrics_each(srv->serve, serve_metric, &b);
    if (b.bad) {
        free(b.p);
        return KVTC_ENOMEM;
    }
    *out = b.p;
    *len = b.len;
    return 0;
}

static int on_url(http_parser *p, const char *at, size_t len)
{
    admin_conn *c = p->data;
    if (c->url_len + len > MAX_URL) {
        c->url_too_long = 1;
        return 0;
    }
    memcpy(c->url + c->url_len, at, len);
    c->url_len += len;
    c->url[c->url_len] = '\0';
    return 0;
}

static int on_message_complete(http_parser *p)
{
    admin_conn *c = p->data;
    if (c->done)
        return 1;
    int head = p->method == HTTP_HEAD;
    if (c->url_too_long) {
        const char *m = "URI too long\n";
        respond(c, 414, "URI Too Long", "text/plain", m, strlen(m), head);
        return 1;
    }
    if (p->method != HTTP_GET && !head) {
        const char *m = "only GET and HEAD\n";
        respond(c, 405, "Method Not Allowed", "text/plain", m, strlen(m), 0);
        return 1;
    }
    struct http_parser_url u;
    http_parser_url_init(&u);
    char path[MAX_URL + 1] = "";
    if (http_parser_parse_url(c->url, c->url_len, 0, &u) == 0 &&
        (u.field_set & (1 << UF_PATH))) {
        memcpy(path, c->url + u.field_data[UF_PATH].off,
               u.field_data[UF_PATH].len);
        path[u.field_data[UF_PATH].len] = '\0';
    }
    if (strcmp(path, "/metrics") == 0) {
        char *body = NULL;
        size_t len = 0;
        if (kvtcd_metrics_render(c->srv, &body, &len) < 0) {
            const char *m = "out of memory\n";
            respond(c, 500, "Internal Server Error", "text/plain", m,
                    strlen(m), head);
            return 1;
        }
        respond(c, 200, "OK", "text/plain; version=0.0.4", body, len, head);
        free(body);
    } else if (strcmp(path, "/healthz") == 0) {
        if (c->srv->draining) {
            const char *m = "draining\n";
            respond(c, 503, "Service Unavailable", "text/plain", m, strlen(m),
                    head);
        } else {
            respond(c, 200, "OK", "text/plain", "ok\n", 3, head);
        }
    } else {
        const char *m = "not found: try /metrics or /healthz\n";
        respond(c, 404, "Not Found", "text/plain", m, strlen(m), head);
    }
    return 1; /* one request per connection */
}

static const http_parser_settings g_settings = {
    .on_url = on_url,
    .on_message_complete = on_message_complete,
};

static void on_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf)
{
    static char slab[4096]; /* loop thread only; consumed before next read */
    buf->base = slab;
    buf->len = sizeof slab;
}

static void on_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf)
{
    admin_conn *c = s->data;
    if (nread < 0) {
        conn_close(c);
        return;
    }
    if (nread == 0 || c->done)
        return;
    c->received += (size_t)nread;
    if (c->received > MAX_REQUEST_BYTES) {
        const char *m = "request too large\n";
        respond(c, 431, "Request Header Fields Too Large", "text/plain", m,
                strlen(m), 0);
        return;
    }
    size_t used = http_parser_execute(&c->parser, &g_settings, buf->base,
                                      (size_t)nread);
    if (c->done)
        return;
    if (HTTP_PARSER_ERRNO(&c->parser) != HPE_OK || used != (size_t)nread) {
        const char *m = "bad request\n";
        respond(c, 400, "Bad Request", "text/plain", m, strlen(m), 0);
    }
}

static void on_connection(uv_stream_t *server, int status)
{
    kvtcd_server *srv = server->data;
    if (status < 0)
        return;
    admin_conn *c = calloc(1, sizeof *c);
    if (!c)
        return;
    c->srv = srv;
    uv_tcp_init(srv->loop, &c->tcp);
    c->tcp.data = c;
    g_conns++;
    if (uv_accept(server, (uv_stream_t *)&c->tcp) < 0 || g_conns > MAX_CONNS) {
        conn_close(c);
        return;
    }
    http_parser_init(&c->parser, HTTP_REQUEST);
    c->parser.data = c;
    uv_read_start((uv_stream_t *)&c->tcp, on_alloc, on_read);
}

int kvtcd_admin_init(kvtcd_server *srv)
{
    struct sockaddr_storage ss;
    int rc = uv_ip4_addr(srv->cfg.admin_host, srv->cfg.admin_port,
                         (struct sockaddr_in *)&ss);
    if (rc < 0)
        rc = uv_ip6_addr(srv->cfg.admin_host, srv->cfg.admin_port,
                         (struct sockaddr_in6 *)&ss);
    if (rc < 0) {
        KVTCD_ERROR("admin", "bad admin address host=%s (use a numeric IP)",
                    srv->cfg.admin_host);
        return KVTC_EINVAL;
    }
    uv_tcp_init(srv->loop, &srv->admin);
    srv->admin.data = srv;
    srv->admin_open = 1;
    rc = uv_tcp_bind(&srv->admin, (const struct sockaddr *)&ss, 0);
    if (rc == 0)
        rc = uv_listen((uv_stream_t *)&srv->admin, 64, on_connection);
    if (rc < 0) {
        KVTCD_ERROR("admin", "cannot listen addr=%s:%u err=\"%s\"",
                    srv->cfg.admin_host, srv->cfg.admin_port, uv_strerror(rc));
        return KVTC_EIO;
    }
    struct sockaddr_storage bound;
    int blen = sizeof bound;
    uv_tcp_getsockname(&srv->admin, (struct sockaddr *)&bound, &blen);
    char host[64] = "?";
    if (bound.ss_family == AF_INET) {
        uv_ip4_name((struct sockaddr_in *)&bound, host, sizeof host);
        srv->admin_port = ntohs(((struct sockaddr_in *)&bound)->sin_port);
        snprintf(srv->admin_addr, sizeof srv->admin_addr, "%s:%u", host,
                 srv->admin_port);
    } else {
        uv_ip6_name((struct sockaddr_in6 *)&bound, host, sizeof host);
        srv->admin_port = ntohs(((struct sockaddr_in6 *)&bound)->sin6_port);
        snprintf(srv->admin_addr, sizeof srv->admin_addr, "[%s]:%u", host,
                 srv->admin_port);
    }
    return 0;
}

static void close_conn_walk(uv_handle_t *h, void *arg)
{
    kvtcd_server *srv = arg;
    if (h->type == UV_TCP && h != (uv_handle_t *)&srv->admin &&
        !uv_is_closing(h))
        uv_close(h, on_conn_closed);
}

void kvtcd_admin_close(kvtcd_server *srv)
{
    if (srv->admin_open) {
        srv->admin_open = 0;
        uv_close((uv_handle_t *)&srv->admin, NULL);
    }
    /* Connections still open (a scraper mid-request) go with it. The only
     * other TCP handles on this loop are these. */
    uv_walk(srv->loop, close_conn_walk, srv);
}
