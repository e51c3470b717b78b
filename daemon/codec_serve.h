/* codec_serve.h - compression in kvtcd's serving path: the hooks the put and
 * get handlers call, and the Profile request.
 *
 * Put: a chunk arrives raw (stored as is, or compressed here when it asks
 * for a target ratio), or as a container the client compressed (checked,
 * then stored as is). Compression needs a layout, a registered profile of
 * exactly that layout and a chunk not flagged as the live window
 * (ChunkMeta.flags bit 0); anything else is stored raw, status OK. The
 * plan is the profile's smallest ratio >= the target, else its highest.
 * Compressed chunks of a put are copied into one new store blob (sized to
 * the compressed bytes) so the raw batch buffer is released.
 *
 * Get: want RAW of a chunk stored compressed is decoded here (thread pool)
 * and sent raw with the raw bytes' size and checksum; want KVTC sends what
 * is stored. A container that does not decode (profile deleted, checksum)
 * is never served as KV: that key fails (PROFILE / CORRUPT).
 *
 * Loop-thread only. */
#ifndef KVTCD_CODEC_SERVE_H
#define KVTCD_CODEC_SERVE_H

#include <stddef.h>
#include <stdint.h>
#include <ucp/api/ucp.h>

#include "codec_jobs.h"
#include "index.h"
#include "profiles.h"
#include "server.h"

/* ChunkMeta.flags: the live window, never transform-coded. */
#define KVTCD_CHUNK_LIVE_WINDOW 1u

typedef struct kvtcd_serve {
    kvtcd_profiles profiles;
    kvtcd_codec *codec;
    uint64_t put_compressed;     /* chunks compressed on put */
    uint64_t put_raw_no_profile; /* asked for a ratio, stored raw: no
                                    profile for the layout */
    uint64_t put_containers;     /* client containers accepted */
    uint64_t put_rejected;       /* client containers refused */
    uint64_t get_decoded;        /* chunks decoded for a raw get */
    uint64_t get_failed;         /* stored containers that did not decode */
    uint64_t profile_uploads, profile_deletes;
    int gpu_projection;          /* enum kvtcd_gpu_projection in use */
} kvtcd_serve;

/* Profiles from srv->cfg.data_dir (loaded now) and the codec scheduler on
 * srv->loop, into *out. Errors: as kvtcd_profiles_init, KVTC_ENOMEM. */
int kvtcd_serve_create(kvtcd_server *srv, kvtcd_serve **out);
/* After the loop ran dry. NULL is a no-op. */
void kvtcd_serve_destroy(kvtcd_serve *sv);

/* Every codec and profile counter as Prometheus samples: fn gets a name
 * (without the "kvtc_" prefix), "counter" or "gauge", a help line and the
 * value. For admin.c's /metrics. */
void kvtcd_serve_metrics_each(const kvtcd_serve *sv,
                              void (*fn)(void *ctx, const char *name,
                                         const char *type, const char *help,
                                         uint64_t v),
                              void *ctx);

/* ---- put ---------------------------------------------------------------- */

/* Validate the codec fields of a put (encoding, target_ratio) and keep what
 * the coding step needs. *ctx = NULL when no chunk asks for codec work: the
 * put path then stores bytes as they came. On a bad field returns
 * KVTC_EINVAL with why filled (the request gets INVALID). ctx is freed with
 * kvtcd_serve_put_free (fits kvtcd_op.ctx_free). */
int kvtcd_serve_put_prepare(const Kvtc__Wire__PutRequest *put, void **ctx,
                            char *why, size_t why_len);
void kvtcd_serve_put_free(void *ctx);

/* The coding step, between "payload checksummed" and "indexed". Chunk i is
 * described by tmpl[i] and lies at blob->data + off with chunk 0 at base
 * and the others after it; rc[i] is its result so far (0 or KVTC_E*; only
 * chunks at 0 are looked at). When done(arg) runs (on the loop, possibly
 * inside this call when nothing needs a job) tmpl[i] holds the stored
 * encoding, size and checksum, rc[i] may have become KVTC_EPROFILE /
 * KVTC_ECORRUPT / KVTC_EVERSION / KVTC_EINVAL (a client container refused),
 * and kvtcd_serve_put_where tells where each chunk's stored bytes lie.
 * blob, tmpl and rc must stay valid until then. */
void kvtcd_serve_put_run(kvtcd_server *srv, void *ctx, kvtcd_entry *tmpl,
                         kvtcd_blob *blob, size_t base, int *rc,
                         void (*done)(void *arg), void *arg);
/* The rc array given to kvtcd_serve_put_run. */
int *kvtcd_serve_put_status(void *ctx);
/* Where chunk i's stored bytes are after the step: the blob (borrowed from
 * ctx; kvtcd_index_insert takes its own reference) and the offset. */
kvtcd_blob *kvtcd_serve_put_where(void *ctx, uint32_t i, size_t *off);

/* ---- get ---------------------------------------------------------------- */

/* 1 when a hit stored with encoding must be decoded for want. */
int kvtcd_serve_get_decodes(int want, int encoding);

/* One hit to decode: segment and blob are replaced in place on success. */
typedef struct kvtcd_serve_dec {
    kvtcd_seg *seg;             /* in: the container; out: the raw bytes */
    kvtcd_blob **blob;          /* in: holds the container (its reference
                                   is dropped on success); out: a blob
                                   holding the raw bytes */
    uint64_t raw_bytes;         /* in: the decoded size the index
                                   expects (0: unknown); a host-slab blob
                                   of that size is the decode's target */
    int rc;                     /* out: 0 or KVTC_E* (seg/blob unchanged) */
    uint64_t sum;               /* out: XXH3-64 of the raw bytes */
} kvtcd_serve_dec;

/* Decode n hits off the loop thread, then done(arg) on the loop (never
 * inside this call). d[] and what it points to stay valid until then.
 * Each hit with raw_bytes set is decoded straight into a blob of the host
 * tier (the slab: resident, registered with UCX, and with CUDA when a GPU
 * tier exists), which the reply is then sent from; it is taken without
 * evicting anything (a raw get must not push stored chunks out) and held
 * only until the reply is sent, counted in the host tier's use meanwhile.
 * When the tier has no room, or the container's size differs, the chunk
 * goes to a malloc'd buffer as before. KVTCD_DECODE_MALLOC=1 in kvtcd's
 * environment always takes the malloc path (the path before issue #6,
 * kept selectable for the dpath benchmark). */
void kvtcd_serve_decode(kvtcd_server *srv, kvtcd_serve_dec *d, uint32_t n,
                        void (*done)(void *arg), void *arg);

/* ---- Profile request (handle_profile.c) ---------------------------------- */

/* Serve a Profile request: list, upload (bulk = the .kvtcp bytes: here, or
 * still to receive when rndv_desc is set), get, delete. */
void kvtcd_handle_profile(kvtcd_session *s, const Kvtc__Wire__Request *req,
                          const void *bulk, size_t bulk_len, void *rndv_desc);

#endif
