/* kvtc.h - libkvtc, the client of the kvtcd KV-cache store.
 *
 * A connection (kvtc_conn) talks to one kvtcd over UCX active messages
 * (client/server mode, TCP or shared memory). Chunks are addressed by
 * 32-byte keys inside the tenant namespace named at connect time. Every
 * operation exists twice:
 *   - blocking: kvtc_put_batch(), kvtc_get(), ... return when the daemon
 *     answered (or on error / timeout);
 *   - asynchronous: kvtc_put_batch_async(), ... return at once and report
 *     through a callback that kvtc_progress() runs. A scheduler folds a
 *     connection into its own event loop with kvtc_get_fd() + kvtc_arm() +
 *     kvtc_progress().
 *
 * Zero copy: puts send straight from the caller's buffers and large gets
 * land straight in them (UCX rendezvous), so those buffers belong to the
 * library until the operation completes. CUDA device buffers are accepted
 * when libkvtc was built with CUDA: they are staged through pinned host
 * memory when UCX lacks CUDA support (Debian's UCX does), and handed to UCX
 * directly when it has it.
 *
 * Thread-safety: a connection is used by one thread at a time (the caller
 * serializes; callbacks run on the thread that calls kvtc_progress or a
 * blocking call). Distinct connections are independent and may be used from
 * different threads concurrently. A connection with several puts or gets
 * in flight over UCX starts one thread of its own that hashes their bytes
 * (enum kvtc_check_mode); it never runs callbacks, and it is joined by
 * kvtc_disconnect. Operations may complete in another order than they were
 * submitted. The key, gather and scatter helpers are
 * pure functions, safe from any thread.
 *
 * fork(): UCX does not survive it. A child forked while its parent holds a
 * connection cannot connect (UCX's async thread stays behind; its connect
 * times out). Fork before the first kvtc_connect, or exec in the child.
 *
 * Errors: int-returning functions return 0 or a negative KVTC_E* code
 * (kvtc_errors.h). Daemon statuses map to codes: NOT_FOUND -> KVTC_ENOENT,
 * FULL -> KVTC_EFULL, INVALID -> KVTC_EINVAL, TOO_LARGE -> KVTC_ENOSPC,
 * VERSION -> KVTC_EVERSION, UNAUTHORIZED/PINNED -> KVTC_EPERM, CORRUPT ->
 * KVTC_ECORRUPT, BUSY -> KVTC_EBUSY, INTERNAL -> KVTC_EIO, PROFILE ->
 * KVTC_EPROFILE, UNSUPPORTED -> KVTC_ENOTSUP. A lost connection is
 * KVTC_ECONN, a timeout KVTC_ETIMEDOUT. kvtc_last_error() holds the
 * daemon's message (or the local reason) of the latest failure.
 *
 * Public structs that may grow carry a field_mask: set a bit for each
 * optional input field you fill (the UCX convention); unset fields take the
 * documented defaults, so zero-initialize (= {0}) and set what you need. */
#ifndef KVTC_H
#define KVTC_H

#include <stddef.h>
#include <stdint.h>

#include "kvtc_codec.h"
#include "kvtc_errors.h"

#ifdef __cplusplus
extern "C" {
#endif

#define KVTC_KEY_BYTES 32
#define KVTC_KEY_HEX_LEN (2 * KVTC_KEY_BYTES) /* hex digits of a key */
#define KVTC_DEFAULT_SERVER "127.0.0.1:7700"

/* ======================================================================
 * Keys
 * ====================================================================== */

/* A chunk's key: 32 opaque bytes. The daemon compares keys for equality
 * only; kvtc_key_chain() names a whole token prefix like serving engines. */
typedef struct kvtc_key {
    uint8_t bytes[KVTC_KEY_BYTES];
} kvtc_key;

/* Parse exactly 64 hex digits (either case, nothing else) into *out.
 * Errors: KVTC_EINVAL (NULL, wrong length, non-hex digit). */
int kvtc_key_from_hex(const char *hex, kvtc_key *out);

/* Write key as 64 lower-case hex digits and a NUL into out. */
void kvtc_key_to_hex(const kvtc_key *key, char out[KVTC_KEY_HEX_LEN + 1]);

/* One chain step: *out = SHA-256(parent || fingerprint || tokens as u32
 * little-endian). parent == NULL for the first chunk of a sequence (nothing
 * is hashed in its place). fingerprint names the model (weights, rank,
 * dtype; any bytes, fp_len may be 0). out may alias parent.
 * Errors: KVTC_EINVAL (NULL out, NULL tokens with n_tokens > 0, NULL
 * fingerprint with fp_len > 0), KVTC_ENOMEM/KVTC_EIO (libcrypto failed). */
int kvtc_key_next(const kvtc_key *parent, const void *fingerprint,
                  size_t fp_len, const uint32_t *tokens, size_t n_tokens,
                  kvtc_key *out);

/* Keys of every whole chunk of a token sequence: key i covers tokens
 * [i*chunk_tokens, (i+1)*chunk_tokens) and chains from key i-1 (from parent,
 * which may be NULL, for i = 0). A trailing partial chunk gets no key, as in
 * the serving engines. Writes min(n_tokens / chunk_tokens, max_keys) keys
 * and their number into *n_keys. Errors: KVTC_EINVAL (chunk_tokens 0, NULL
 * arguments), as kvtc_key_next otherwise. */
int kvtc_key_chain(const kvtc_key *parent, const void *fingerprint,
                   size_t fp_len, const uint32_t *tokens, size_t n_tokens,
                   uint32_t chunk_tokens, kvtc_key *keys, size_t max_keys,
                   size_t *n_keys);

/* ======================================================================
 * Gather / scatter between engine layouts and the canonical chunk
 * ====================================================================== */

/* Where one layer's K (or V) lives in engine memory. Strides are in bytes
 * and may be any value (negative, overlapping views are the caller's
 * business); the head_dim elements of one (token, head) are contiguous. */
typedef struct kvtc_kv_view {
    void *base;           /* element [block 0 | token 0][head 0][dim 0] */
    int64_t token_stride; /* between consecutive tokens (inside a block) */
    int64_t head_stride;  /* between consecutive kv heads */
    int64_t block_stride; /* between consecutive physical blocks (paged) */
} kvtc_kv_view;

enum kvtc_engine_layout_field {
    /* block_tokens, block_table and n_blocks are set: token t of the
     * sequence lives in physical block block_table[t / block_tokens] at
     * slot t % block_tokens (vLLM paged blocks; SGLang token slots with
     * block_tokens = 1). Without it, token t is at base + t*token_stride. */
    KVTC_ENGINE_LAYOUT_FIELD_PAGED = 1u << 0
};

/* An engine's KV memory, described as a list of per-(layer, K|V) views.
 * Examples: per-layer HF tensors [heads][seq][dim]: token_stride = dim*es,
 * head_stride = seq*dim*es. vLLM [2][blocks][block][heads][dim] per layer:
 * views K = &t[0], V = &t[1], block_stride = block*heads*dim*es, token_stride
 * = heads*dim*es, head_stride = dim*es, PAGED with the sequence's block
 * table. */
typedef struct kvtc_engine_layout {
    uint64_t field_mask;         /* enum kvtc_engine_layout_field */
    uint32_t layers;             /* 1..KVTC_MAX_LAYERS */
    uint32_t kv_heads;           /* 1..KVTC_MAX_KV_HEADS */
    uint32_t head_dim;           /* 1..KVTC_MAX_HEAD_DIM */
    uint32_t elem_size;          /* bytes per element: 1, 2 or 4 */
    const kvtc_kv_view *views;   /* 2*layers: [2*l] = K, [2*l + 1] = V */
    uint32_t block_tokens;       /* PAGED: tokens per block, >= 1 */
    const uint32_t *block_table; /* PAGED: physical block of logical block i */
    size_t n_blocks;             /* PAGED: entries of block_table */
} kvtc_engine_layout;

/* Bytes of a canonical chunk [layer][k|v][token][kv_head][head_dim] of
 * n_tokens tokens for this layout; 0 when it overflows or el is NULL. */
size_t kvtc_canonical_bytes(const kvtc_engine_layout *el, uint32_t n_tokens);

/* Copy tokens [first_token, first_token + n_tokens) of the sequence from
 * the engine views into dst, canonical layout. Host memory only (device
 * memory needs a kernel: gather on the GPU, then put the device buffer).
 * Errors: KVTC_EINVAL (layout out of bounds, elem_size not 1/2/4, NULL
 * view base), KVTC_ENOSPC (dst_size < kvtc_canonical_bytes), KVTC_ENOENT (a
 * token's block is past n_blocks). Nothing is written on error. */
int kvtc_gather(const kvtc_engine_layout *el, uint32_t first_token,
                uint32_t n_tokens, void *dst, size_t dst_size);

/* The inverse: copy a canonical chunk src back into the engine views.
 * Errors as kvtc_gather (KVTC_EINVAL when src_size is not exactly
 * kvtc_canonical_bytes). Nothing is written on error. */
int kvtc_scatter(const kvtc_engine_layout *el, uint32_t first_token,
                 uint32_t n_tokens, const void *src, size_t src_size);

/* ======================================================================
 * Connections
 * ====================================================================== */

typedef struct kvtc_conn kvtc_conn;

enum kvtc_conn_param_field {
    KVTC_CONN_PARAM_FIELD_TENANT = 1u << 0,
    KVTC_CONN_PARAM_FIELD_TOKEN = 1u << 1,
    KVTC_CONN_PARAM_FIELD_CLIENT_NAME = 1u << 2,
    KVTC_CONN_PARAM_FIELD_CONNECT_TIMEOUT = 1u << 3,
    KVTC_CONN_PARAM_FIELD_OP_TIMEOUT = 1u << 4,
    KVTC_CONN_PARAM_FIELD_SPIN = 1u << 5,
    KVTC_CONN_PARAM_FIELD_BULK = 1u << 6,
    KVTC_CONN_PARAM_FIELD_LOCAL = 1u << 7,
    KVTC_CONN_PARAM_FIELD_CHECK_THREAD = 1u << 8,
    KVTC_CONN_PARAM_FIELD_RAILS = 1u << 9
};

/* Who checks the chunks that gets bring over UCX against their checksums
 * (every one is checked before the caller sees it). With other operations
 * in flight, a thread of the connection's own does, so the connection's
 * thread keeps moving bytes meanwhile; a lone get is checked inline. */
enum kvtc_check_mode {
    KVTC_CHECK_THREAD = 0, /* default (environment: KVTC_CHECK_THREAD=0 is INLINE) */
    KVTC_CHECK_INLINE = 1  /* always on the thread that calls kvtc_progress */
};

/* Rails (protocol 1.4): a daemon with rails (kvtcd --rails, by default on
 * hosts of 8 CPUs or more) has more UCX workers, each on a thread and a
 * port of its own. Over UCX payloads (a remote daemon,
 * or KVTC_LOCAL=off) one thread copies every byte its worker moves and is
 * the bound of a tcp stream, so libkvtc binds an endpoint to each rail and
 * sends puts and gets of 1 MiB or more there, round robin, and with rail
 * threads also those of 256 KiB or more that queue behind others in
 * flight; the rest, and everything over the local path, stays on the
 * first endpoint.
 * The same holds on this side: with rail threads, each rail endpoint gets
 * a UCX worker and a thread of libkvtc's own that moves its bytes; the
 * connection stays the caller's (its callbacks still run inside
 * kvtc_progress on the caller's thread, and its fd wakes for the threads'
 * events). kvtc_server_info.rails says how many rails are bound,
 * .rail_threads how many of them have threads. KVTC_RAIL_MIN=BYTES sends
 * every request of BYTES or more to the rails, and no other (a lone
 * request there pays the rails' thread hops). A single-chunk get into a
 * host buffer on a rail with a thread has its bytes copied in by that
 * thread as they arrive (KVTC_RAIL_LAND=0: by the usual copy job), so
 * the buffer may be written before the callback runs; it is not written
 * after it, whatever the status. */
enum kvtc_rails_mode {
    KVTC_RAILS_AUTO = 0,       /* default: whatever the daemon offers, with
                                  rail threads on hosts of 8 CPUs or more
                                  (environment: KVTC_RAILS=0 is OFF,
                                  KVTC_RAIL_THREADS=0|1 decides threads) */
    KVTC_RAILS_OFF = 1,
    KVTC_RAILS_NO_THREADS = 2, /* rails, moved by the caller's thread */
    KVTC_RAILS_THREADS = 3     /* rails, each with a thread, any host */
};

/* The bulk endpoint: after hello, libkvtc opens a second endpoint to the
 * daemon's UCX worker address and moves every request there. It may get
 * transports a HOST:PORT (sockaddr) endpoint never gets: UCX gives those a
 * TCP lane only. If it cannot be set up the connection stays on the first
 * endpoint (kvtc_server_info.bulk_endpoint says which). Off by default: with
 * the peer error handling libkvtc needs, Debian's UCX 1.13 gives it the
 * same TCP lane (shared memory only with UCX_{POSIX,SYSV}_ERROR_HANDLING=y,
 * measured ~10x slower); see docs/kvtcd.md, "Transport". */
enum kvtc_bulk_mode {
    KVTC_BULK_OFF = 0,   /* default */
    KVTC_BULK_AUTO = 1,  /* when the daemon is on this host */
    KVTC_BULK_ALWAYS = 2 /* try it for remote daemons too */
};

/* The local path (protocol 1.3): with a daemon on this host, libkvtc binds
 * a unix socket to its session and the daemon copies put and get bytes
 * straight between its store and the caller's buffers (process_vm_readv /
 * _writev: one copy, no UCX payload). It needs ptrace access from the
 * daemon (same user; libkvtc declares the daemon as its tracer for Yama).
 * Device buffers, compressed gets and remote daemons use UCX payloads; so
 * does a connection whose local copy once failed (that request fails with
 * KVTC_EIO). kvtc_server_info.local_path says whether it is in use. */
enum kvtc_local_mode {
    KVTC_LOCAL_AUTO = 0, /* default: when the daemon is on this host */
    KVTC_LOCAL_OFF = 1
};

typedef struct kvtc_conn_params {
    uint64_t field_mask;         /* enum kvtc_conn_param_field */
    const char *tenant;          /* namespace; default "default" */
    const char *token;           /* tenant token, when the daemon asks one */
    const char *client_name;     /* shows in daemon logs; default "libkvtc" */
    uint32_t connect_timeout_ms; /* connect + hello; default 5000 */
    uint32_t op_timeout_ms;      /* default per operation; default 60000,
                                    0: wait forever */
    uint32_t spin_us;            /* blocking calls and kvtc_wait_all poll
                                    this long after the last event before
                                    sleeping on the fd (a wakeup costs more
                                    than a short transfer); default 200,
                                    0: sleep at once. Waits on local-path
                                    operations only, when such waits
                                    lately took longer than this, poll
                                    20 us (polling would end before the
                                    reply anyway) */
    uint32_t bulk;               /* enum kvtc_bulk_mode; default: the
                                    environment's KVTC_BULK_EP (off, auto,
                                    always), else OFF */
    uint32_t local;              /* enum kvtc_local_mode; default: the
                                    environment's KVTC_LOCAL (off), else
                                    AUTO */
    uint32_t check_thread;       /* enum kvtc_check_mode; default THREAD */
    uint32_t rails;              /* enum kvtc_rails_mode; default AUTO */
} kvtc_conn_params;

/* Connect to server ("HOST:PORT", "[v6addr]:PORT"; NULL means
 * KVTC_DEFAULT_SERVER), say hello, and return the connection in *out.
 * params may be NULL. Strings are copied. UCX reads its usual environment
 * (UCX_TLS must allow tcp for client/server mode).
 * Errors: KVTC_EINVAL (bad address), KVTC_ECONN (refused, unreachable),
 * KVTC_ETIMEDOUT, KVTC_EVERSION (daemon of another major version),
 * KVTC_EPERM (bad tenant token), KVTC_ENOMEM. */
int kvtc_connect(const char *server, const kvtc_conn_params *params,
                 kvtc_conn **out);

/* Close the connection and free it. Operations still in flight complete
 * first with KVTC_ECANCELED (their callbacks run inside this call). NULL is
 * a no-op. */
void kvtc_disconnect(kvtc_conn *conn);

/* Allocate size bytes (rounded up to whole pages, zeroed) for chunk
 * buffers, in *out. Where the connection has the same-host local path and
 * the daemon accepts regions, the memory is shared with kvtcd (a sealed
 * memfd it maps too), so puts from it and gets into it are plain memory
 * copies in kvtcd rather than process_vm_readv/writev, which pin pages
 * and scale poorly across threads. Elsewhere it is ordinary memory, and
 * any buffer works with every call either way. A get or put uses the
 * shared copy when all its ranges lie in one such allocation. Valid until
 * kvtc_mem_free or kvtc_disconnect (which frees what is left); free it
 * only with no operation using it in flight. Costs a round trip to kvtcd:
 * allocate once, reuse. Errors: KVTC_EINVAL, KVTC_ENOMEM. */
int kvtc_mem_alloc(kvtc_conn *conn, size_t size, void **out);

/* Free memory from kvtc_mem_alloc on the same connection (NULL: no-op).
 * Errors: KVTC_EINVAL (not from kvtc_mem_alloc on conn). */
int kvtc_mem_free(kvtc_conn *conn, void *ptr);

/* Whether ptr lies in memory of conn's kvtc_mem_alloc that kvtcd shares:
 * 1 shared, 0 not (also for other memory). */
int kvtc_mem_shared(const kvtc_conn *conn, const void *ptr);

/* Message of the latest failed operation on conn: the daemon's reason or a
 * local one; "" when none. Owned by conn, valid until the next call on it.
 * kvtc_last_error(NULL) is why the calling thread's latest kvtc_connect
 * failed (thread-local storage). */
const char *kvtc_last_error(const kvtc_conn *conn);

/* What the daemon announced in its hello reply, and how device buffers are
 * moved. */
typedef struct kvtc_server_info {
    uint32_t major, minor;         /* daemon's protocol version */
    uint64_t session_id;
    uint64_t max_chunk_bytes;      /* largest chunk the daemon accepts */
    uint32_t max_batch;            /* most keys/chunks per request */
    char server_version[64];
    int device_memory;             /* enum kvtc_device_memory */
    uint32_t bulk_endpoint;        /* 1: requests travel on the bulk
                                      endpoint (kvtc_bulk_mode) */
    uint32_t local_path;           /* 1: bulk bytes move by the local
                                      path (kvtc_local_mode) */
    uint32_t rails;                /* rails bound: large puts and gets
                                      travel there (KVTC_RAILS) */
    uint32_t rail_threads;         /* of those, moved by threads of
                                      libkvtc's own (kvtc_rails_mode) */
    uint64_t reserved[6];
} kvtc_server_info;

enum kvtc_device_memory {
    KVTC_DEVICE_MEMORY_UNSUPPORTED = 0, /* built without CUDA, or no GPU */
    KVTC_DEVICE_MEMORY_STAGED = 1,      /* copied through pinned host memory */
    KVTC_DEVICE_MEMORY_DIRECT = 2       /* UCX moves device memory itself */
};

/* Fill *out. Errors: KVTC_EINVAL (NULL). */
int kvtc_server_info_get(const kvtc_conn *conn, kvtc_server_info *out);

/* ======================================================================
 * Operations: items, parameters
 * ====================================================================== */

enum kvtc_mem {
    KVTC_MEM_AUTO = 0, /* detect (cudaPointerGetAttributes when built with CUDA) */
    KVTC_MEM_HOST = 1,
    KVTC_MEM_CUDA = 2  /* device memory: KVTC_ENOTSUP without CUDA support */
};

enum kvtc_tier {
    KVTC_TIER_NONE = 0,
    KVTC_TIER_GPU = 1,
    KVTC_TIER_HOST = 2,
    KVTC_TIER_DISK = 3
};

enum kvtc_put_field {
    KVTC_PUT_FIELD_PARENT = 1u << 0, /* parent is set */
    KVTC_PUT_FIELD_LAYOUT = 1u << 1, /* layout, first_pos, n_tokens set */
    KVTC_PUT_FIELD_FLAGS = 1u << 2,  /* flags is set */
    KVTC_PUT_FIELD_MEM = 1u << 3,    /* mem is set (default AUTO) */
    KVTC_PUT_FIELD_RATIO = 1u << 4,  /* target_ratio is set: the daemon
                                        compresses the raw chunk */
    KVTC_PUT_FIELD_ENCODING = 1u << 5 /* encoding is set */
};

/* What a chunk's bytes are. */
enum kvtc_encoding {
    KVTC_ENCODING_RAW = 0, /* canonical chunk bytes (or opaque bytes) */
    KVTC_ENCODING_KVTC = 1 /* a kvtc container (kvtc_encode) */
};

enum kvtc_put_flags {
    KVTC_PUT_LIVE_WINDOW = 1u << 0 /* never transform-coded */
};

/* One chunk to store. The data buffer must stay untouched until the
 * operation completes (it is sent zero-copy). Without a layout the chunk is
 * opaque bytes.
 * Compression (protocol 1.2): with RATIO and a layout, the daemon
 * compresses the chunk with the profile it has for that layout, at the
 * profile's plan nearest target_ratio from above (else its highest); with
 * no profile for the layout, or the LIVE_WINDOW flag, it stores the chunk
 * raw (status 0 all the same). With ENCODING = KVTC, data is a container
 * the caller encoded (size = its bytes); the daemon checks it and refuses
 * it with KVTC_EPROFILE when it does not have the container's profile. */
typedef struct kvtc_put_item {
    uint64_t field_mask;        /* enum kvtc_put_field */
    kvtc_key key;
    kvtc_key parent;            /* the key this chunk extends */
    const void *data;           /* host or device memory (see mem) */
    size_t size;                /* bytes; may be 0 */
    const kvtc_layout *layout;  /* canonical chunk shape; copied at submit */
    uint32_t first_pos;         /* absolute position of the first token */
    uint32_t n_tokens;
    uint32_t flags;             /* enum kvtc_put_flags */
    uint32_t mem;               /* enum kvtc_mem */
    int status;                 /* out: 0 or KVTC_E* of this chunk */
    float target_ratio;         /* RATIO: >= 1 (0: store raw) */
    uint32_t encoding;          /* ENCODING: enum kvtc_encoding of data */
    uint64_t reserved[3];
} kvtc_put_item;

enum kvtc_get_field {
    KVTC_GET_FIELD_MEM = 1u << 0, /* mem is set (default AUTO) */
    KVTC_GET_FIELD_WANT = 1u << 1 /* want is set (default RAW) */
};

/* How a chunk stored compressed travels and lands (chunks stored raw
 * always travel and land raw). */
enum kvtc_want {
    KVTC_WANT_RAW = 0,      /* the daemon decodes; raw bytes travel */
    KVTC_WANT_KVTC = 1,     /* the container travels (~1/ratio of the
                               bytes) and libkvtc decodes it into buf: buf
                               gets the raw chunk. The profile is fetched
                               from the daemon once per connection and
                               cached. Where: see decoded_on. */
    KVTC_WANT_CONTAINER = 2 /* the container travels and lands in buf as
                               is (decode it with kvtc_decode or on a GPU) */
};

/* One chunk to fetch into buf (capacity bytes), zero-copy for large chunks.
 * Outputs are valid once the operation completed. A chunk larger than
 * capacity gets KVTC_ENOSPC and size tells how large it is. */
typedef struct kvtc_get_item {
    uint64_t field_mask;  /* enum kvtc_get_field */
    kvtc_key key;
    void *buf;            /* host or device memory (see mem) */
    size_t capacity;
    uint32_t mem;         /* enum kvtc_mem */
    int status;           /* out: 0, KVTC_ENOENT (miss), KVTC_ENOSPC, ... */
    size_t size;          /* out: the chunk's bytes */
    uint32_t tier;        /* out: enum kvtc_tier it was served from */
    int has_layout;       /* out: 1 when layout/first_pos/n_tokens are set */
    kvtc_layout layout;   /* out */
    uint32_t first_pos;   /* out */
    uint32_t n_tokens;    /* out */
    uint32_t want;        /* WANT: enum kvtc_want */
    uint32_t encoding;    /* out: enum kvtc_encoding of the bytes that
                             travelled (KVTC: it was stored compressed) */
    uint64_t wire_size;   /* out: bytes that travelled for this chunk */
    uint32_t decoded_on;  /* out: enum kvtc_decoded_on (was reserved: 0
                             there, which reads as KVTC_DECODED_NONE) */
    uint32_t reserved32;
    uint64_t reserved[1];
} kvtc_get_item;

/* Who decoded a KVTC_WANT_KVTC item's container (kvtc_get_item.decoded_on).
 * A buffer in host memory is decoded on the CPU. A CUDA device buffer is
 * decoded on its own GPU by libkvtc_gpu.so when that loads: the container
 * (~1/ratio of the chunk) is copied host -> device and decoded straight
 * into buf, bit-identical to kvtc_gpu_decode of that container with
 * libkvtc_gpu's default parameters (within the plan's error bound of the
 * CPU decode, not bit-identical to it). libkvtc_gpu.so is opened at run
 * time (libkvtc has no link-time dependency on it): the path in the
 * environment variable KVTC_GPU_LIB (only that one: a path that does not
 * load, e.g. /nonexistent, forces the CPU), else libkvtc_gpu.so next to
 * the library or program holding libkvtc, else the loader's search path.
 * Without it, or when the GPU path refuses the chunk (a layout it does
 * not cover, a CUDA error, any device-side error), the CPU decodes and the
 * raw chunk is copied to the device, as before. GPU codec contexts are
 * cached per connection for each (profile, plan, device). */
enum kvtc_decoded_on {
    KVTC_DECODED_NONE = 0, /* libkvtc decoded nothing: raw bytes travelled,
                              KVTC_WANT_CONTAINER, or the item failed */
    KVTC_DECODED_CPU = 1,
    KVTC_DECODED_GPU = 2
};

/* Daemon counters (StatsReply). field_mask says which the daemon filled. */
enum kvtc_stats_field {
    KVTC_STATS_FIELD_CHUNKS = 1u << 0,
    KVTC_STATS_FIELD_BYTES_USED = 1u << 1,
    KVTC_STATS_FIELD_BYTES_CAPACITY = 1u << 2,
    KVTC_STATS_FIELD_PUTS = 1u << 3,
    KVTC_STATS_FIELD_GETS = 1u << 4,
    KVTC_STATS_FIELD_HITS = 1u << 5,
    KVTC_STATS_FIELD_MISSES = 1u << 6,
    KVTC_STATS_FIELD_EVICTIONS = 1u << 7,
    KVTC_STATS_FIELD_REJECTED_FULL = 1u << 8,
    KVTC_STATS_FIELD_SESSIONS = 1u << 9,
    KVTC_STATS_FIELD_BYTES_IN = 1u << 10,
    KVTC_STATS_FIELD_BYTES_OUT = 1u << 11,
    KVTC_STATS_FIELD_ERRORS = 1u << 12,
    KVTC_STATS_FIELD_UPTIME_MS = 1u << 13,
    /* Protocol 1.2, the lower tiers (bytes_used/bytes_capacity above are
     * host RAM; an absent tier reports capacity 0). */
    KVTC_STATS_FIELD_GPU_BYTES_USED = 1u << 14,
    KVTC_STATS_FIELD_GPU_BYTES_CAPACITY = 1u << 15,
    KVTC_STATS_FIELD_DISK_BYTES_USED = 1u << 16,
    KVTC_STATS_FIELD_DISK_BYTES_CAPACITY = 1u << 17,
    KVTC_STATS_FIELD_DISK_LIVE_BYTES = 1u << 18,
    KVTC_STATS_FIELD_DISK_DIRTY_CHUNKS = 1u << 19,
    KVTC_STATS_FIELD_PROMOTIONS = 1u << 20,
    KVTC_STATS_FIELD_DEMOTIONS = 1u << 21,
    /* The daemon said whether it is durable; the answer is the
     * KVTC_STATS_DURABLE bit of field_mask (the struct had room for eight
     * more counters, not nine). */
    KVTC_STATS_FIELD_DURABLE = 1u << 22
};
/* In field_mask, with KVTC_STATS_FIELD_DURABLE: puts are acknowledged only
 * once on disk (kvtcd --durability durable). A flag, not a field. */
#define KVTC_STATS_DURABLE (1ull << 63)

typedef struct kvtc_stats {
    uint64_t field_mask; /* out: enum kvtc_stats_field, KVTC_STATS_DURABLE */
    uint64_t chunks, bytes_used, bytes_capacity;
    uint64_t puts, gets, hits, misses, evictions, rejected_full;
    uint64_t sessions, bytes_in, bytes_out, errors, uptime_ms;
    /* Were reserved[8]: the struct keeps its size, so programs built
     * against the earlier header keep working. */
    uint64_t gpu_bytes_used, gpu_bytes_capacity;
    uint64_t disk_bytes_used;     /* segment files */
    uint64_t disk_bytes_capacity;
    uint64_t disk_live_bytes;     /* live records */
    uint64_t disk_dirty_chunks;   /* cache mode: acknowledged, not on disk */
    uint64_t promotions;          /* copies made up a tier, all tiers */
    uint64_t demotions;           /* copies given up for a lower one */
} kvtc_stats;

/* A codec profile the daemon holds (protocol 1.2). */
typedef struct kvtc_profile_info {
    uint64_t id;                       /* kvtc_profile_id */
    kvtc_layout layout;
    uint64_t size;                     /* bytes of its .kvtcp */
    uint32_t n_plans;
    float ratios[KVTC_MAX_PLANS];      /* each plan's target ratio */
    uint64_t reserved[4];
} kvtc_profile_info;

/* Completion of an asynchronous operation: status is what the blocking
 * twin would have returned. Runs inside kvtc_progress(), a blocking call or
 * kvtc_disconnect() on the connection's thread; it may submit new
 * operations but must not disconnect its own connection. */
typedef void (*kvtc_done_cb)(int status, void *arg);

enum kvtc_op_param_field {
    KVTC_OP_PARAM_FIELD_CALLBACK = 1u << 0, /* cb, arg (required for _async) */
    KVTC_OP_PARAM_FIELD_TTL = 1u << 1,      /* ttl_ms */
    KVTC_OP_PARAM_FIELD_TIMEOUT = 1u << 2   /* timeout_ms */
};

typedef struct kvtc_op_params {
    uint64_t field_mask; /* enum kvtc_op_param_field */
    kvtc_done_cb cb;     /* _async only; blocking calls ignore it */
    void *arg;
    uint32_t ttl_ms;     /* put: expiry; pin: pin lifetime; 0: none */
    uint32_t timeout_ms; /* default: the connection's op_timeout_ms. An
                            operation that times out fails the connection
                            (it cannot be resumed): every other operation
                            in flight completes with KVTC_ECONN and later
                            calls fail with KVTC_ECONN. */
} kvtc_op_params;

/* ======================================================================
 * Blocking operations. params may be NULL. Each returns 0 when the whole
 * operation and every item succeeded; otherwise the first item's error (per
 * item codes are in the items / statuses) or the request's error. A
 * blocking call also progresses the connection's asynchronous operations
 * (their callbacks may run inside it).
 * ====================================================================== */

/* Store n chunks in one request. items[i].status gets each chunk's result. */
int kvtc_put_batch(kvtc_conn *conn, kvtc_put_item *items, size_t n,
                   const kvtc_op_params *params);

/* Fetch n chunks in one request into the items' buffers. A miss is
 * KVTC_ENOENT in that item's status (and the return value). */
int kvtc_get_batch(kvtc_conn *conn, kvtc_get_item *items, size_t n,
                   const kvtc_op_params *params);

/* Single-chunk conveniences (host or device memory, auto-detected). */
int kvtc_put(kvtc_conn *conn, const kvtc_key *key, const void *data,
             size_t size);
/* *size gets the chunk's size, also on KVTC_ENOSPC (size may be NULL). */
int kvtc_get(kvtc_conn *conn, const kvtc_key *key, void *buf,
             size_t capacity, size_t *size);

/* How many leading keys of the chain keys[0..n) are stored: *hits. tiers,
 * when not NULL, has n entries; the first *hits get each hit's tier.
 * Returns 0 whatever the hit count (a miss is not an error here). */
int kvtc_lookup(kvtc_conn *conn, const kvtc_key *keys, size_t n,
                const kvtc_op_params *params, size_t *hits, uint32_t *tiers);

/* Delete keys. statuses (n entries, may be NULL) gets each key's result
 * (KVTC_ENOENT when absent, KVTC_EPERM when pinned). */
int kvtc_delete(kvtc_conn *conn, const kvtc_key *keys, size_t n,
                const kvtc_op_params *params, int *statuses);

/* Pin keys against eviction, for params->ttl_ms (0 or unset: until
 * unpinned). statuses as kvtc_delete. */
int kvtc_pin(kvtc_conn *conn, const kvtc_key *keys, size_t n,
             const kvtc_op_params *params, int *statuses);
int kvtc_unpin(kvtc_conn *conn, const kvtc_key *keys, size_t n,
               const kvtc_op_params *params, int *statuses);

/* The daemon's counters. */
int kvtc_stats_get(kvtc_conn *conn, const kvtc_op_params *params,
                   kvtc_stats *out);

/* ---- Codec profiles (protocol 1.2) --------------------------------------
 * The daemon compresses chunks with the profile of their layout (see
 * kvtc_put_item). Profiles persist in the daemon's data dir when it has
 * one, else in its memory only. */

/* Upload a .kvtcp (data, size bytes; validated by the daemon). out (may be
 * NULL) gets its description. Uploading a profile the daemon has already
 * is not an error. Errors: KVTC_ECORRUPT / KVTC_EVERSION / KVTC_EINVAL
 * (not a valid profile), KVTC_ENOSPC (over the daemon's size or count
 * limit), as the other operations. */
int kvtc_profile_upload(kvtc_conn *conn, const void *data, size_t size,
                        const kvtc_op_params *params, kvtc_profile_info *out);
/* Describe up to max profiles into out (newest first); *n gets how many
 * were written. */
int kvtc_profile_list(kvtc_conn *conn, const kvtc_op_params *params,
                      kvtc_profile_info *out, size_t max, size_t *n);
/* Fetch profile id's .kvtcp bytes into buf (cap bytes); *size (may be
 * NULL) gets its size, also on KVTC_ENOSPC. Errors: KVTC_ENOENT. */
int kvtc_profile_get(kvtc_conn *conn, uint64_t id, void *buf, size_t cap,
                     const kvtc_op_params *params, size_t *size);
/* Delete profile id. Chunks compressed with it can no longer be served raw
 * (KVTC_EPROFILE) until it is uploaded again. Errors: KVTC_ENOENT. */
int kvtc_profile_delete(kvtc_conn *conn, uint64_t id,
                        const kvtc_op_params *params);

/* ======================================================================
 * Asynchronous operations: same arguments and results as the blocking
 * twins; params->cb is required. On 0 the operation was submitted: every
 * output pointer and item array (and put data / get buffers) must stay
 * valid until the callback ran, which happens exactly once, never inside
 * the submit call. Keys are copied at submit. On an error return nothing
 * was submitted and no callback will run.
 * ====================================================================== */

int kvtc_put_batch_async(kvtc_conn *conn, kvtc_put_item *items, size_t n,
                         const kvtc_op_params *params);
int kvtc_get_batch_async(kvtc_conn *conn, kvtc_get_item *items, size_t n,
                         const kvtc_op_params *params);
int kvtc_lookup_async(kvtc_conn *conn, const kvtc_key *keys, size_t n,
                      const kvtc_op_params *params, size_t *hits,
                      uint32_t *tiers);
int kvtc_delete_async(kvtc_conn *conn, const kvtc_key *keys, size_t n,
                      const kvtc_op_params *params, int *statuses);
int kvtc_pin_async(kvtc_conn *conn, const kvtc_key *keys, size_t n,
                   const kvtc_op_params *params, int *statuses);
int kvtc_unpin_async(kvtc_conn *conn, const kvtc_key *keys, size_t n,
                     const kvtc_op_params *params, int *statuses);
int kvtc_stats_get_async(kvtc_conn *conn, const kvtc_op_params *params,
                         kvtc_stats *out);
int kvtc_profile_upload_async(kvtc_conn *conn, const void *data, size_t size,
                              const kvtc_op_params *params,
                              kvtc_profile_info *out);
int kvtc_profile_list_async(kvtc_conn *conn, const kvtc_op_params *params,
                            kvtc_profile_info *out, size_t max, size_t *n);
int kvtc_profile_get_async(kvtc_conn *conn, uint64_t id, void *buf,
                           size_t cap, const kvtc_op_params *params,
                           size_t *size);
int kvtc_profile_delete_async(kvtc_conn *conn, uint64_t id,
                              const kvtc_op_params *params);

/* ---- Event-loop integration -------------------------------------------
 * Loop: kvtc_progress(); if kvtc_arm() == 0, sleep until *fd is readable
 * (epoll/poll, level or edge), else call kvtc_progress() again. */

/* A file descriptor that becomes readable when the connection has work.
 * Owned by conn: do not close or read it. Errors: KVTC_EINVAL. */
int kvtc_get_fd(const kvtc_conn *conn, int *fd);

/* Prepare to sleep on the fd. 0: armed, sleeping is safe; KVTC_EBUSY:
 * events are pending, call kvtc_progress() first; KVTC_ECONN: failed. */
int kvtc_arm(kvtc_conn *conn);

/* Make progress without blocking: moves data, runs completed operations'
 * callbacks and expires timed-out ones. Returns the number of operations
 * completed (>= 0), or KVTC_ECONN once the connection failed (operations
 * then still complete, with errors). */
int kvtc_progress(kvtc_conn *conn);

/* Operations submitted and not completed yet. */
size_t kvtc_inflight(const kvtc_conn *conn);

/* Progress, sleeping on the fd, until no operation is in flight or
 * timeout_ms passed (-1: no limit). 0: none in flight; KVTC_ETIMEDOUT. */
int kvtc_wait_all(kvtc_conn *conn, int timeout_ms);

#ifdef __cplusplus
}
#endif
#endif
