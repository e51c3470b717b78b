/* tiers.h - the tier policy: where chunks live (host RAM, GPU memory,
 * disk), when they move, and what a put's acknowledgement promises.
 *
 * Host RAM is the landing and serving tier: puts arrive there (UCX
 * receives into host blobs) and gets are sent from there. Below it, an
 * optional GPU slab (store_gpu.h) and an optional disk store
 * (store_disk.h). docs/tiers.md describes the policy; in short:
 *
 * - Placement. With a disk tier every put is also written to disk: in
 *   durable mode before the put is acknowledged (and the chunk becomes
 *   visible only then), in cache mode behind it (a write-behind queue,
 *   several appends in flight). An entry with a disk or GPU copy is
 *   "clean": its host copy can be dropped at once.
 * - Demotion. A maintenance pass keeps host RAM under a high watermark
 *   (90%), down to 80%: it drops clean host copies, least recent first,
 *   and copies dirty ones to the GPU first where there is one. So the
 *   synchronous reserve on put arrival (kvtcd_index_reserve) rarely has
 *   to evict a chunk with no other copy.
 * - Promotion. A get of a chunk with no host copy reads it (GPU or disk,
 *   checksum verified) into a fresh host blob, serves it and keeps it as
 *   the chunk's host copy.
 * - Eviction from the last tier is prefix-aware (index.h) and respects
 *   pins and TTLs. The disk tier evicts when its live bytes pass 90% of its
 *   capacity or an append finds it full; dead space is compacted in the
 *   background.
 * - Faults: a failed append (ENOSPC, EIO) marks the disk tier degraded for
 *   a back-off; cache-mode chunks stay in RAM and are written later,
 *   durable puts fail. A failed read fails that key's get; a corrupt record
 *   drops its chunk. No GPU: warned once, the GPU tier has capacity 0.
 *
 * Loop-thread only. Callbacks run on the loop thread, never inline from
 * the call that started the work. */
#ifndef KVTCD_TIERS_H
#define KVTCD_TIERS_H

#include <stddef.h>
#include <stdint.h>
#include <uv.h>

#include "index.h"
#include "store_disk.h"

typedef struct kvtcd_tiers kvtcd_tiers;

typedef struct kvtcd_tiers_params {
    uv_loop_t *loop;
    kvtcd_index *ix;          /* borrowed; ix->tier is host RAM */
    uint64_t clock_base_ms;   /* index time = uv_now(loop) - this */
    const char *disk_dir;     /* NULL or "": no disk tier */
    uint64_t disk_size;       /* 0: 80% of the free space, >= 64 MiB */
    uint64_t segment_bytes;   /* 0: the store's default */
    int disk_io;              /* enum kvtcd_disk_io_mode */
    int disk_direct;          /* 1: O_DIRECT (0 only for tests) */
    int durable;              /* 1: acks wait for fdatasync */
    uint64_t gpu_mem;         /* 0: no GPU tier */
    int gpu_device;
} kvtcd_tiers_params;

/* Open the lower tiers and rebuild the index from the disk store (blocks:
 * start-up only). A GPU that cannot be opened is logged once and left
 * out; with one, the host tier's region (ix->tier, when it is the host
 * slab) is page-locked for the GPU's copies (refused: logged once, copies
 * go through staging). A disk tier that cannot be opened is an error.
 * Errors: KVTC_EIO,
 * KVTC_ENOTSUP (io_uring asked for and refused), KVTC_EINVAL,
 * KVTC_ENOMEM. */
int kvtcd_tiers_open(const kvtcd_tiers_params *p, kvtcd_tiers **out);

/* Stop: queued durable puts and deletes complete with KVTC_ECANCELED,
 * queued write-behind is abandoned (call kvtcd_tiers_dirty first to drain
 * it), in-flight I/O ends (completing or KVTC_ECANCELED), then closed(arg)
 * runs from the loop. After that the index's drop hook is unset and the
 * host region is no longer page-locked for the GPU: destroy the host tier
 * only then. Free t with kvtcd_tiers_free. */
void kvtcd_tiers_close(kvtcd_tiers *t, void (*closed)(void *arg), void *arg);
/* Free t after closed() ran (NULL is a no-op). */
void kvtcd_tiers_free(kvtcd_tiers *t);

/* Completion of a put, a delete or a load that did not finish at once. */
typedef void (*kvtcd_tiers_done_fn)(void *arg);

/* Store one chunk of a put: tmpl as for kvtcd_index_insert, its bytes at
 * blob->data + off (the caller keeps its own reference). *rc gets 0 or a
 * KVTC_E* code: KVTC_EFULL (disk full), KVTC_EIO (write failed),
 * KVTC_EBUSY (shutting down), KVTC_ENOMEM (durable: also when the synced
 * record cannot be indexed; the key's older version goes and a tombstone
 * follows). Returns 0 when done (*rc set),
 * 1 when done(arg) will run once *rc is set (durable mode: after the
 * record is on stable storage; rc and arg must stay valid until then). */
int kvtcd_tiers_put(kvtcd_tiers *t, const kvtcd_entry *tmpl, kvtcd_blob *blob,
                    size_t off, uint64_t now_ms, int *rc,
                    kvtcd_tiers_done_fn done, void *arg);

/* Delete e (unpinned: the caller checks; a pin added later does not stop
 * it). With a disk tier a tombstone is written so the chunk does not come
 * back after a restart; in durable mode the key goes, and done(arg) runs,
 * only once it is synced (*rc: 0, or KVTC_EFULL / KVTC_EIO / KVTC_EBUSY /
 * KVTC_ENOMEM and the entry stays). Durable puts and deletes of a key
 * take effect in the order they were accepted, however they complete: the
 * tombstone removes whatever version a put accepted before it left, and
 * not one accepted after it. Returns as kvtcd_tiers_put. */
int kvtcd_tiers_delete(kvtcd_tiers *t, kvtcd_entry *e, uint64_t now_ms,
                       int *rc, kvtcd_tiers_done_fn done, void *arg);

/* Delete (ns, key) when no entry is visible but a durable put of the key
 * is still being written (kvtcd_tiers_pending): that put was accepted
 * first, so the delete removes it. Returns as kvtcd_tiers_delete;
 * KVTC_ENOENT (*rc too) when nothing of the key is pending. */
int kvtcd_tiers_delete_key(kvtcd_tiers *t, uint32_t ns,
                           const uint8_t key[KVTCD_KEY_BYTES], uint64_t now_ms,
                           int *rc, kvtcd_tiers_done_fn done, void *arg);

/* 1 when durable puts or deletes of (ns, key) are accepted and not
 * finished: 2 when the latest of them is a delete. */
int kvtcd_tiers_pending(const kvtcd_tiers *t, uint32_t ns,
                        const uint8_t key[KVTCD_KEY_BYTES]);

/* A loaded chunk: status 0 and a blob reference the callee now owns, the
 * bytes at blob->data + off; or status KVTC_ECORRUPT (the chunk failed its
 * checksum and was dropped), KVTC_EIO (read failed), KVTC_EBUSY (no host
 * room to stage it, or shutting down), KVTC_ENOENT (its GPU copy failed
 * and its disk record is gone: dropped), and blob NULL. */
typedef void (*kvtcd_tiers_load_fn)(void *arg, int status, kvtcd_blob *blob,
                                    size_t off);
/* Bring e (no host copy: e->blob NULL) into a host blob from the GPU or
 * disk; cb runs later, and keeps the blob as e's host copy (promotion)
 * if e is still the same version. Immediate errors (cb never runs):
 * KVTC_EBUSY (no host room), KVTC_ENOENT (no lower copy, or its disk
 * record is gone: the disk copy is forgotten and e removed when it has no
 * other copy, so e may be freed), KVTC_ENOMEM. */
int kvtcd_tiers_load(kvtcd_tiers *t, kvtcd_entry *e, uint64_t now_ms,
                     kvtcd_tiers_load_fn cb, void *arg);

/* Count a get's hit (served from tier, enum kvtcd_tier_id) or miss. */
void kvtcd_tiers_count_get(kvtcd_tiers *t, const kvtcd_entry *e);

/* Chunks acknowledged but not yet on disk (queued + being written); 0
 * without a disk tier or in durable mode. */
uint64_t kvtcd_tiers_dirty(const kvtcd_tiers *t);
/* Durable writes, tombstones and loads in flight or queued. */
uint64_t kvtcd_tiers_busy(const kvtcd_tiers *t);
/* Run the maintenance pass soon (after puts that filled host RAM). */
void kvtcd_tiers_kick(kvtcd_tiers *t);

/* Everything /metrics and Stats report about the tiers. */
typedef struct kvtcd_tiers_stats {
    uint64_t capacity[KVTCD_N_TIERS];
    uint64_t used[KVTCD_N_TIERS];
    kvtcd_tier_counters c[KVTCD_N_TIERS];
    int has_disk, has_gpu, durable, degraded;
    uint64_t dirty;           /* see kvtcd_tiers_dirty */
    kvtcd_disk_stats disk;    /* zero without a disk tier */
    const char *backend;      /* "io_uring", "threadpool" or "" */
    uint64_t gpu_host_registered; /* host region bytes page-locked for the
                                     GPU's direct copies; 0: staged */
    char gpu_name[128];
} kvtcd_tiers_stats;
void kvtcd_tiers_get_stats(const kvtcd_tiers *t, kvtcd_tiers_stats *out);

#endif
