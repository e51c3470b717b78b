/* config.c - defaults, INI file and flags (see config.h). */
#include "config.h"

#include <errno.h>
#include <ini.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

#include "kvtc_errors.h"
#include "local_copy.h"
#include "log.h"
#include "store_disk.h"
#include "wire.h"

static void set_err(char *err, size_t errlen, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static void set_err(char *err, size_t errlen, const char *fmt, ...)
{
    if (!err || !errlen)
        return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
}

void kvtcd_config_defaults(kvtcd_config *c)
{
    memset(c, 0, sizeof *c);
    snprintf(c->listen_host, sizeof c->listen_host, "%s", KVTCD_DEFAULT_HOST);
    c->listen_port = KVTCD_DEFAULT_PORT;
    snprintf(c->admin_host, sizeof c->admin_host, "%s", KVTCD_DEFAULT_HOST);
    c->admin_port = KVTCD_DEFAULT_ADMIN_PORT;
    uint64_t mem = 1ull << 30;
    long pages = sysconf(_SC_PHYS_PAGES), psz = sysconf(_SC_PAGESIZE);
    if (pages > 0 && psz > 0) {
        uint64_t quarter = (uint64_t)pages * (uint64_t)psz / 4;
        if (quarter < mem)
            mem = quarter;
    }
    if (mem < KVTCD_MIN_HOST_MEM)
        mem = KVTCD_MIN_HOST_MEM;
    c->host_mem = mem;
    c->max_chunk_bytes = KVTC_WIRE_DEFAULT_MAX_CHUNK;
    c->max_batch = KVTCD_DEFAULT_MAX_BATCH;
    c->max_sessions = KVTCD_DEFAULT_MAX_SESSIONS;
    c->bulk_endpoint = 1;
    c->rails = KVTCD_RAILS_AUTO;
    c->host_prefault = -1;
    c->host_pin = -1;
    c->audit_interval = KVTCD_DEFAULT_AUDIT_INTERVAL;
    c->log_level = KVTCD_LOG_INFO;
}

uint32_t kvtcd_rails_auto(void)
{
    long n = sysconf(_SC_NPROCESSORS_ONLN);
    if (n < 8)
        return 0;
    return n / 4 < 4 ? (uint32_t)(n / 4) : 4;
}

int kvtcd_parse_size(const char *s, uint64_t *out)
{
    if (!s || !*s || *s == '-' || *s == '+')
        return KVTC_EINVAL;
    errno = 0;
    char *end = NULL;
    unsigned long long v = strtoull(s, &end, 10);
    if (errno || end == s)
        return KVTC_EINVAL;
    unsigned shift = 0;
    switch (*end) {
    case 'k': case 'K': shift = 10; end++; break;
    case 'm': case 'M': shift = 20; end++; break;
    case 'g': case 'G': shift = 30; end++; break;
    case 't': case 'T': shift = 40; end++; break;
    default: break;
    }
    if (shift && (strcmp(end, "iB") == 0 || strcmp(end, "B") == 0))
        end += strlen(end);
    else if (!shift && (strcmp(end, "B") == 0 || strcmp(end, "b") == 0))
        end++;
    if (*end)
        return KVTC_EINVAL;
    if (shift && v > (UINT64_MAX >> shift))
        return KVTC_EINVAL;
    *out = (uint64_t)v << shift;
    return 0;
}

/* "on"/"1" or "off"/"0". */
static int parse_onoff(const char *s, int *out)
{
    if (strcmp(s, "on") == 0 || strcmp(s, "1") == 0)
        *out = 1;
    else if (strcmp(s, "off") == 0 || strcmp(s, "0") == 0)
        *out = 0;
    else
        return KVTC_EINVAL;
    return 0;
}

/* The names an option accepts and the value each sets. */
struct named {
    const char *name;
    int val;
};

static const struct named disk_io_names[] = {
    {"auto", KVTCD_DISK_IO_AUTO}, {"uring", KVTCD_DISK_IO_URING},
    {"io_uring", KVTCD_DISK_IO_URING}, {"threads", KVTCD_DISK_IO_THREADS}};
static const struct named durability_names[] = {
    {"cache", KVTCD_DURABILITY_CACHE}, {"durable", KVTCD_DURABILITY_DURABLE}};
static const struct named codec_device_names[] = {
    {"auto", KVTCD_CODEC_DEVICE_AUTO}, {"cpu", KVTCD_CODEC_DEVICE_CPU},
    {"gpu", KVTCD_CODEC_DEVICE_GPU}};
static const struct named gpu_projection_names[] = {
    {"fp16", KVTCD_GPU_PROJ_FP16}, {"fp8-decode", KVTCD_GPU_PROJ_FP8_DECODE},
    {"fp8", KVTCD_GPU_PROJ_FP8}, {"direct-decode", KVTCD_GPU_PROJ_DIRECT_DECODE}};
#define NAMES(t) t, sizeof t / sizeof t[0]

static int parse_named(const char *v, const struct named *t, size_t n, int *out)
{
    for (size_t i = 0; i < n; i++)
        if (strcmp(v, t[i].name) == 0) {
            *out = t[i].val;
            return 0;
        }
    return KVTC_EINVAL;
}

const char *kvtcd_gpu_projection_name(int proj)
{
    for (size_t i = 0; i < sizeof gpu_projection_names / sizeof gpu_projection_names[0]; i++)
        if (gpu_projection_names[i].val == proj)
            return gpu_projection_names[i].name;
    return "?";
}

static int parse_u32(const char *s, uint32_t lo, uint32_t hi, uint32_t *out)
{
    if (!s || !*s || *s == '-' || *s == '+')
        return KVTC_EINVAL;
    errno = 0;
    char *end = NULL;
    unsigned long long v = strtoull(s, &end, 10);
    if (errno || end == s || *end || v < lo || v > hi)
        return KVTC_EINVAL;
    *out = (uint32_t)v;
    return 0;
}

int kvtcd_parse_hostport(const char *s, char *host, size_t hostlen,
                         uint16_t *port)
{
    if (!s || !*s)
        return KVTC_EINVAL;
    const char *colon, *hs = s;
    size_t hl;
    if (*s == '[') {
        const char *rb = strchr(s, ']');
        if (!rb || rb[1] != ':')
            return KVTC_EINVAL;
        hs = s + 1;
        hl = (size_t)(rb - hs);
        colon = rb + 1;
    } else {
        colon = strrchr(s, ':');
        if (!colon || memchr(s, ':', (size_t)(colon - s)))
            return KVTC_EINVAL; /* bare IPv6 needs brackets */
        hl = (size_t)(colon - s);
    }
    if (hl == 0 || hl >= hostlen)
        return KVTC_EINVAL;
    uint32_t p;
    if (parse_u32(colon + 1, 0, 65535, &p) < 0)
        return KVTC_EINVAL;
    memcpy(host, hs, hl);
    host[hl] = '\0';
    *port = (uint16_t)p;
    return 0;
}

static int set_path(char *dst, size_t cap, const char *v)
{
    if (!v || !*v || strlen(v) >= cap)
        return KVTC_EINVAL;
    memcpy(dst, v, strlen(v) + 1);
    return 0;
}

/* One setting by its INI name; flags map onto the same names so the two
 * sources cannot drift apart. */
static int apply(kvtcd_config *c, const char *section, const char *name,
                 const char *v)
{
#define IS(sec, key) (strcmp(section, sec) == 0 && strcmp(name, key) == 0)
    if (IS("server", "listen"))
        return kvtcd_parse_hostport(v, c->listen_host, sizeof c->listen_host,
                                    &c->listen_port);
    if (IS("server", "admin"))
        return kvtcd_parse_hostport(v, c->admin_host, sizeof c->admin_host,
                                    &c->admin_port);
    if (IS("server", "port_file"))
        return set_path(c->port_file, sizeof c->port_file, v);
    if (IS("server", "max_sessions"))
        return parse_u32(v, 1, 65536, &c->max_sessions);
    if (IS("server", "bulk_endpoint"))
        return parse_onoff(v, &c->bulk_endpoint);
    if (IS("server", "local_path"))
        return set_path(c->local_path, sizeof c->local_path, v);
    if (IS("server", "local_copy_threads"))
        return parse_u32(v, 0, KVTCD_CWORKERS_MAX, &c->local_copy_threads);
    if (IS("server", "rails")) {
        if (!strcmp(v, "auto")) {
            c->rails = KVTCD_RAILS_AUTO;
            return 0;
        }
        return parse_u32(v, 0, KVTCD_MAX_RAILS, &c->rails);
    }
    if (IS("store", "audit_interval"))
        return parse_u32(v, 0, KVTCD_MAX_AUDIT_INTERVAL, &c->audit_interval);
    if (IS("store", "host_prefault"))
        return parse_onoff(v, &c->host_prefault);
    if (IS("store", "host_pin"))
        return parse_onoff(v, &c->host_pin);
    if (IS("store", "host_mem")) {
        uint64_t n;
        if (kvtcd_parse_size(v, &n) < 0 || n < KVTCD_MIN_HOST_MEM)
            return KVTC_EINVAL;
        c->host_mem = n;
        return 0;
    }
    if (IS("store", "data_dir"))
        return set_path(c->data_dir, sizeof c->data_dir, v);
    if (IS("store", "disk_dir"))
        return set_path(c->disk_dir, sizeof c->disk_dir, v);
    if (IS("store", "disk_size")) {
        uint64_t n;
        if (kvtcd_parse_size(v, &n) < 0 || n < KVTCD_MIN_DISK_SIZE)
            return KVTC_EINVAL;
        c->disk_size = n;
        return 0;
    }
    if (IS("store", "disk_io"))
        return parse_named(v, NAMES(disk_io_names), &c->disk_io);
    if (IS("store", "durability"))
        return parse_named(v, NAMES(durability_names), &c->durability);
    if (IS("store", "gpu_mem")) {
        /* 0 is valid: no GPU tier. */
        uint64_t n;
        if (kvtcd_parse_size(v, &n) < 0)
            return KVTC_EINVAL;
        c->gpu_mem = n;
        return 0;
    }
    if (IS("store", "gpu_device"))
        return parse_u32(v, 0, 1024, &c->gpu_device);
    if (IS("store", "codec_device"))
        return parse_named(v, NAMES(codec_device_names), &c->codec_device);
    if (IS("store", "gpu_projection"))
        return parse_named(v, NAMES(gpu_projection_names), &c->gpu_projection);
    if (IS("limits", "max_chunk_bytes")) {
        uint64_t n;
        if (kvtcd_parse_size(v, &n) < 0 || n == 0 || n > (1ull << 40))
            return KVTC_EINVAL;
        c->max_chunk_bytes = n;
        return 0;
    }
    if (IS("limits", "max_batch"))
        return parse_u32(v, 1, KVTC_WIRE_MAX_BATCH, &c->max_batch);
    if (IS("log", "level"))
        return kvtcd_log_parse_level(v, &c->log_level);
#undef IS
    return KVTC_ENOENT;
}

struct ini_ctx {
    kvtcd_config *c;
    char *err;
    size_t errlen;
    int rc;
};

static int ini_cb(void *user, const char *section, const char *name,
                  const char *value)
{
    struct ini_ctx *ctx = user;
    if (!name) /* inih reports bare section headers with name NULL */
        return 1;
    if (ctx->rc < 0)
        return 0; /* keep the first error's message */
    int rc = apply(ctx->c, section, name, value);
    if (rc == KVTC_ENOENT) {
        set_err(ctx->err, ctx->errlen, "unknown setting [%s] %s", section,
                name);
        ctx->rc = KVTC_EINVAL;
        return 0;
    }
    if (rc < 0) {
        set_err(ctx->err, ctx->errlen, "bad value for [%s] %s: '%s'",
                section, name, value);
        ctx->rc = KVTC_EINVAL;
        return 0;
    }
    return 1;
}

int kvtcd_config_load_ini(kvtcd_config *c, const char *path, char *err,
                          size_t errlen)
{
    FILE *f = fopen(path, "r");
    if (!f) {
        set_err(err, errlen, "cannot open config %s: %s", path,
                strerror(errno));
        return KVTC_EIO;
    }
    struct ini_ctx ctx = {c, err, errlen, 0};
    int line = ini_parse_file(f, ini_cb, &ctx);
    fclose(f);
    if (ctx.rc < 0) {
        /* Prefix the line number inih reports to the message. */
        char tmp[512];
        snprintf(tmp, sizeof tmp, "%s", err ? err : "");
        set_err(err, errlen, "%s:%d: %s", path, line, tmp);
        return ctx.rc;
    }
    if (line != 0) {
        set_err(err, errlen, "%s:%d: syntax error", path, line);
        return KVTC_EINVAL;
    }
    return 0;
}

static const struct flag {
    const char *flag, *section, *name;
} flags[] = {
    {"--listen", "server", "listen"},     {"--admin", "server", "admin"},
    {"--port-file", "server", "port_file"},
    {"--max-sessions", "server", "max_sessions"},
    {"--bulk-endpoint", "server", "bulk_endpoint"},
    {"--local-path", "server", "local_path"},
    {"--local-copy-threads", "server", "local_copy_threads"},
    {"--rails", "server", "rails"},
    {"--host-mem", "store", "host_mem"},  {"--data-dir", "store", "data_dir"},
    {"--host-prefault", "store", "host_prefault"},
    {"--host-pin", "store", "host_pin"},
    {"--audit-interval", "store", "audit_interval"},
    {"--disk-dir", "store", "disk_dir"},  {"--disk-size", "store", "disk_size"},
    {"--disk-io", "store", "disk_io"},
    {"--durability", "store", "durability"},
    {"--gpu-mem", "store", "gpu_mem"},
    {"--gpu-device", "store", "gpu_device"},
    {"--codec-device", "store", "codec_device"},
    {"--gpu-projection", "store", "gpu_projection"},
    {"--max-chunk", "limits", "max_chunk_bytes"},
    {"--max-batch", "limits", "max_batch"},
    {"--log-level", "log", "level"},
};

/* Splits "--flag=value" / "--flag value"; returns the value or NULL. */
static const char *flag_value(int argc, char **argv, int *i, const char *flag)
{
    size_t fl = strlen(flag);
    const char *a = argv[*i];
    if (strncmp(a, flag, fl) != 0)
        return NULL;
    if (a[fl] == '=')
        return a + fl + 1;
    if (a[fl] != '\0')
        return NULL;
    if (*i + 1 >= argc)
        return "";
    return argv[++*i];
}

int kvtcd_config_from_args(kvtcd_config *c, int argc, char **argv,
                           int *action, char *err, size_t errlen)
{
    kvtcd_config_defaults(c);
    *action = KVTCD_RUN;
    /* First pass: --help, --version and --config, so that flags override
     * the file whatever their order on the command line. */
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h")) {
            *action = KVTCD_HELP;
            return 0;
        }
        if (!strcmp(argv[i], "--version") || !strcmp(argv[i], "-V")) {
            *action = KVTCD_VERSION;
            return 0;
        }
        const char *v = flag_value(argc, argv, &i, "--config");
        if (v) {
            if (set_path(c->config_path, sizeof c->config_path, v) < 0) {
                set_err(err, errlen, "--config needs a file name");
                return KVTC_EINVAL;
            }
        }
    }
    if (c->config_path[0]) {
        int rc = kvtcd_config_load_ini(c, c->config_path, err, errlen);
        if (rc < 0)
            return rc;
    }
    for (int i = 1; i < argc; i++) {
        const char *v = flag_value(argc, argv, &i, "--config");
        if (v)
            continue;
        int matched = 0;
        for (size_t f = 0; f < sizeof flags / sizeof flags[0]; f++) {
            v = flag_value(argc, argv, &i, flags[f].flag);
            if (!v)
                continue;
            matched = 1;
            if (apply(c, flags[f].section, flags[f].name, v) < 0) {
                set_err(err, errlen, "bad value for %s: '%s'", flags[f].flag,
                        v);
                return KVTC_EINVAL;
            }
            break;
        }
        if (!matched) {
            set_err(err, errlen, "unknown argument '%s' (try --help)",
                    argv[i]);
            return KVTC_EINVAL;
        }
    }
    return kvtcd_config_validate(c, err, errlen);
}

int kvtcd_config_validate(kvtcd_config *c, char *err, size_t errlen)
{
    /* A chunk can never be larger than the store: clamp rather than refuse,
     * so a small --host-mem works without also naming --max-chunk. */
    if (c->max_chunk_bytes > c->host_mem)
        c->max_chunk_bytes = c->host_mem;
    if (c->durability == KVTCD_DURABILITY_DURABLE && !c->disk_dir[0]) {
        /* Acknowledging "durable" with nowhere durable to write would be a
         * lie; --data-dir never implies a disk tier. */
        set_err(err, errlen, "durability durable needs a disk tier "
                             "(--disk-dir DIR or [store] disk_dir)");
        return KVTC_EINVAL;
    }
    if (c->host_mem < KVTCD_MIN_HOST_MEM) {
        set_err(err, errlen, "host_mem %llu below the minimum %llu",
                (unsigned long long)c->host_mem,
                (unsigned long long)KVTCD_MIN_HOST_MEM);
        return KVTC_EINVAL;
    }
    return 0;
}

const char *kvtcd_usage(void)
{
    return "usage: kvtcd [options]\n"
           "Serve KV-cache chunks over UCX (kvtc daemon).\n"
           "\n"
           "  --listen HOST:PORT    UCX listener (default 127.0.0.1:7700; port 0 picks one)\n"
           "  --admin HOST:PORT     HTTP /metrics and /healthz (default 127.0.0.1:7701)\n"
           "  --host-mem SIZE       host RAM for chunks, e.g. 512M, 4G\n"
           "                        (default min(1G, RAM/4))\n"
           "  --host-prefault on|off  keep host memory resident ahead of use on a\n"
           "                        background thread, so puts land in ready pages\n"
           "                        (default on)\n"
           "  --host-pin on|off     mlock that memory too, where RLIMIT_MEMLOCK or\n"
           "                        CAP_IPC_LOCK allow (default on; refusal logged)\n"
           "  --audit-interval SEC  re-read a stored chunk beside a send to a client\n"
           "                        that checks it at most once in SEC seconds\n"
           "                        (default 60; 0: on every get)\n"
           "  --data-dir DIR        daemon state directory (not the disk tier)\n"
           "  --disk-dir DIR        disk tier: segment files in DIR (created if\n"
           "                        missing); no disk tier without it\n"
           "  --disk-size SIZE      disk tier capacity (default 80% of the file\n"
           "                        system's free space at start, at least 64M)\n"
           "  --disk-io MODE        auto (io_uring, else threads), uring, threads\n"
           "  --durability MODE     cache: acknowledge puts once in RAM and write\n"
           "                        to disk behind (default); durable: acknowledge\n"
           "                        only once on disk and fdatasync'ed (needs\n"
           "                        --disk-dir)\n"
           "  --gpu-mem SIZE        GPU tier: slab of SIZE on --gpu-device (default\n"
           "                        0: no GPU tier)\n"
           "  --gpu-device N        CUDA device of the GPU tier and GPU codec\n"
           "                        (default 0)\n"
           "  --codec-device DEV    where chunks are compressed and decoded: auto\n"
           "                        (the GPU when libkvtc_gpu and a GPU are there,\n"
           "                        else the CPU; default), cpu, gpu (refuse to\n"
           "                        start without it)\n"
           "  --gpu-projection P    the GPU codec's projections: fp16 (default),\n"
           "                        fp8-decode (e4m3 decode GEMM: faster decoding,\n"
           "                        a small quality cost: docs/kvtcd.md), fp8\n"
           "                        (e4m3 both ways), direct-decode (16-bit, the\n"
           "                        decode GEMM writes the chunks: no rows pass)\n"
           "  --max-chunk SIZE      largest chunk accepted (default 256M)\n"
           "  --max-batch N         most chunks/keys per request (default 1024)\n"
           "  --max-sessions N      most concurrent clients (default 1024)\n"
           "  --bulk-endpoint on|off  offer the worker address so local clients\n"
           "                        add a shared-memory endpoint (default on)\n"
           "  --local-path auto|off|PATH  unix socket through which clients on\n"
           "                        this host get the single-copy local path\n"
           "                        (default auto: abstract @kvtcd-HOST:PORT)\n"
           "  --local-copy-threads N  threads that copy the local path's bytes\n"
           "                        (default 0: half the CPUs, 2 to 8)\n"
           "  --rails auto|N        UCX workers on threads of their own that\n"
           "                        carry clients' large puts and gets over\n"
           "                        UCX, beside the loop's (default auto: a\n"
           "                        quarter of the CPUs, at most 4, none\n"
           "                        below 8 CPUs; 0 to 16; docs/kvtcd.md,\n"
           "                        Transport)\n"
           "  --port-file PATH      once listening, write \"UCX_PORT ADMIN_PORT\\n\"\n"
           "                        to PATH (atomically)\n"
           "  --config FILE         INI file; flags override it\n"
           "  --log-level LEVEL     debug, info, warn, error (default info)\n"
           "  --help, --version\n"
           "\n"
           "Once listening it prints one line on stderr:\n"
           "  kvtcd: listening ucx=HOST:PORT admin=HOST:PORT\n"
           "SIGTERM/SIGINT drain in-flight requests and exit 0.\n";
}
