/* config.h - kvtcd configuration: embedded defaults, an INI file (libinih),
 * then command-line flags, each overriding the one before.
 *
 * INI keys (docs: deploy/kvtcd.example.ini):
 *   [server]  listen = HOST:PORT   admin = HOST:PORT   port_file = PATH
 *             max_sessions = N   bulk_endpoint = on|off
 *             local_path = auto|off|PATH   local_copy_threads = N
 *             rails = auto|N
 *   [store]   host_mem = SIZE      data_dir = DIR
 *             disk_dir = DIR   disk_size = SIZE   disk_io = auto|uring|threads
 *             durability = cache|durable   gpu_mem = SIZE   gpu_device = N
 *             codec_device = auto|cpu|gpu
 *             gpu_projection = fp16|fp8-decode|fp8|direct-decode
 *             host_prefault = on|off   host_pin = on|off
 *   [limits]  max_chunk_bytes = SIZE   max_batch = N
 *   [log]     level = debug|info|warn|error
 * Unknown sections or keys are errors (a typo must not silently fall back to
 * a default). Not thread-safe; used once at start and by tests. */
#ifndef KVTCD_CONFIG_H
#define KVTCD_CONFIG_H

#include <stddef.h>
#include <stdint.h>

#define KVTCD_DEFAULT_HOST "127.0.0.1"
#define KVTCD_DEFAULT_PORT 7700
#define KVTCD_DEFAULT_ADMIN_PORT 7701
#define KVTCD_DEFAULT_MAX_BATCH 1024u
#define KVTCD_DEFAULT_MAX_SESSIONS 1024u
#define KVTCD_MIN_HOST_MEM (1ull << 20)
/* The default --audit-interval (seconds) and its ceiling (a day). */
#define KVTCD_DEFAULT_AUDIT_INTERVAL 60u
#define KVTCD_MAX_AUDIT_INTERVAL 86400u

/* An explicit --disk-size below this is refused (one segment's worth). */
#define KVTCD_MIN_DISK_SIZE (1ull << 20)
/* The default disk size (80% of the free space) is at least this. */
#define KVTCD_DEFAULT_MIN_DISK_SIZE (64ull << 20)

/* When a put is acknowledged (docs/kvtcd.md, "Tiers and durability"). */
enum kvtcd_durability {
    KVTCD_DURABILITY_CACHE = 0,   /* once in host RAM; disk written behind */
    KVTCD_DURABILITY_DURABLE = 1  /* once on disk and fdatasync'ed */
};

/* Where compression and decoding run (docs/kvtcd.md, "Compression"). */
enum kvtcd_codec_device {
    KVTCD_CODEC_DEVICE_AUTO = 0,  /* the GPU (gpu_device) when libkvtc_gpu
                                     and a GPU are there, else the CPU */
    KVTCD_CODEC_DEVICE_CPU = 1,
    KVTCD_CODEC_DEVICE_GPU = 2    /* the GPU, or the daemon does not start */
};

/* The GPU codec's projection GEMMs (docs/kvtcd.md, "Compression";
 * kvtc_gpu_params.enc_gemm / dec_gemm): fp8 is e4m3 operands, faster and
 * a measured quality cost; containers are the same either way. */
enum kvtcd_gpu_projection {
    KVTCD_GPU_PROJ_FP16 = 0,        /* 16-bit both ways (the default) */
    KVTCD_GPU_PROJ_FP8_DECODE = 1,  /* e4m3 decode, 16-bit encode */
    KVTCD_GPU_PROJ_FP8 = 2,         /* e4m3 both ways */
    KVTCD_GPU_PROJ_DIRECT_DECODE = 3 /* 16-bit; the decode GEMM writes the
                                       chunks (KVTC_GPU_PROJ_DIRECT) */
};

typedef struct kvtcd_config {
    char listen_host[256];
    uint16_t listen_port;
    char admin_host[256];
    uint16_t admin_port;
    char data_dir[1024];      /* daemon state (not the disk tier) */
    char disk_dir[1024];      /* disk tier segments; "" = no disk tier */
    char port_file[1024];
    char config_path[1024];
    uint64_t host_mem;        /* bytes of chunk data in host RAM */
    int host_prefault;        /* 1/0: keep host memory resident ahead of
                                 use; -1: not set (the host store's
                                 default, on unless KVTCD_HOST_PREFAULT=0) */
    int host_pin;             /* 1/0: mlock it too; -1: not set (on unless
                                 KVTCD_HOST_PIN=0) */
    uint64_t disk_size;       /* bytes of segment files; 0 = 80% of the
                                 file system's free space at start */
    int disk_io;              /* enum kvtcd_disk_io_mode (store_disk.h) */
    int durability;           /* enum kvtcd_durability */
    uint64_t gpu_mem;         /* GPU slab bytes; 0 = no GPU tier */
    uint32_t gpu_device;      /* GPU tier and GPU codec */
    int codec_device;         /* enum kvtcd_codec_device */
    int gpu_projection;       /* enum kvtcd_gpu_projection */
    uint64_t max_chunk_bytes;
    uint32_t max_batch;
    uint32_t max_sessions;
    int bulk_endpoint;        /* offer the worker address in HelloReply */
    char local_path[108];     /* the local path's unix socket: "" or
                                 "auto" (abstract name), "off", a path
                                 (sun_path's size bounds it) */
    uint32_t local_copy_threads; /* the local path's copy workers; 0:
                                    half the CPUs, 2..8 */
    uint32_t rails;           /* UCX workers of their own threads that
                                 carry large puts and gets (rails.h); 0:
                                 none, all on the loop; KVTCD_RAILS_AUTO:
                                 kvtcd_rails_auto() */
    uint32_t audit_interval;  /* seconds: a stored chunk sent to a client
                                 that checks it is re-read beside the send
                                 at most once an interval (0: every time;
                                 docs/protocol.md, "Who checks a Get's
                                 bytes over UCX") */
    int log_level;            /* enum kvtcd_log_level */
} kvtcd_config;

#define KVTCD_MAX_RAILS 16u /* --rails */
#define KVTCD_RAILS_AUTO UINT32_MAX /* --rails auto (the default) */

/* Rails for this host (--rails auto): a quarter of the online CPUs, at
 * most 4; none below 8 CPUs, where their threads would take the cores the
 * loop and the clients need. */
uint32_t kvtcd_rails_auto(void);

enum kvtcd_action { KVTCD_RUN = 0, KVTCD_HELP = 1, KVTCD_VERSION = 2 };

/* Embedded defaults: 127.0.0.1:7700, admin 127.0.0.1:7701, host_mem =
 * min(1 GiB, RAM / 4), max chunk 256 MiB, batch 1024, level info. */
void kvtcd_config_defaults(kvtcd_config *c);

/* Apply an INI file over c. On failure err (errlen bytes) says which line
 * and why. Errors: KVTC_EIO (cannot read), KVTC_EINVAL (bad key or value). */
int kvtcd_config_load_ini(kvtcd_config *c, const char *path, char *err,
                          size_t errlen);

/* Defaults, then --config FILE (if given), then every other flag.
 * Flags take "--flag VALUE" or "--flag=VALUE". *action says whether to run
 * or print help/version. Errors: KVTC_EINVAL / KVTC_EIO with err filled. */
int kvtcd_config_from_args(kvtcd_config *c, int argc, char **argv,
                           int *action, char *err, size_t errlen);

/* Check cross-field constraints; max_chunk_bytes is clamped to host_mem.
 * durability durable without disk_dir is an error. */
int kvtcd_config_validate(kvtcd_config *c, char *err, size_t errlen);

/* "4096", "512K", "512M", "4G", "1T" (binary units, optional "iB"/"B").
 * Errors: KVTC_EINVAL (syntax, zero-free overflow). */
int kvtcd_parse_size(const char *s, uint64_t *out);
/* --gpu-projection's name of an enum kvtcd_gpu_projection value ("?" if none). */
const char *kvtcd_gpu_projection_name(int proj);
/* "HOST:PORT" or "[V6]:PORT"; port 0..65535 (0: pick one). */
int kvtcd_parse_hostport(const char *s, char *host, size_t hostlen,
                         uint16_t *port);

/* The --help text. */
const char *kvtcd_usage(void);

#endif
