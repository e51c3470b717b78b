/* store_disk.h - the disk tier: append-only segment files of checksummed
 * records on local NVMe, written and read with O_DIRECT through kvtcd_aio
 * (io_uring from the loop, or libuv's thread pool where io_uring is
 * refused).
 *
 * On disk (docs/tiers.md has the byte layout):
 *   DIR/seg-NNNNNNNN.kvs   records appended back to back, each one aligned
 *                          to the direct-I/O block (4096 unless the file
 *                          system reports a smaller one). A record is a
 *                          header (magic, version, seq, kind, tenant, key,
 *                          parent, layout, sizes, payload XXH3, expiry,
 *                          header XXH3) then the payload, padded.
 *   DIR/seg-NNNNNNNN.sum   written when a segment is sealed (full): every
 *                          record header of it, checksummed; a restart
 *                          reads it instead of scanning the segment.
 * Records carry a store-wide sequence number: on restart the highest seq of
 * a key wins, a tombstone (delete) hides older records of its key. A torn
 * or corrupt record is dropped (and counted), never reported.
 *
 * Ownership: the store owns its files, fds and bounce buffers. Callers name
 * records by kvtcd_disk_loc; a loc is valid until kvtcd_disk_release() or
 * until the compactor relocates it (reloc callback).
 *
 * Loop-thread only; callbacks run on the loop thread, never inline from the
 * call that submitted the work. */
#ifndef KVTCD_STORE_DISK_H
#define KVTCD_STORE_DISK_H

#include <stddef.h>
#include <stdint.h>
#include <uv.h>

#include "kvtc_codec.h"

#define KVTCD_DISK_KEY_BYTES 32
#define KVTCD_DISK_TENANT_MAX 256

typedef struct kvtcd_disk kvtcd_disk;

/* Where a record lies. payload_off: the payload's offset from the start of
 * the record (the header's size); rec_len: the aligned record length (what
 * a read fetches). */
typedef struct kvtcd_disk_loc {
    uint32_t seg;
    uint32_t payload_off;
    uint64_t off;
    uint64_t rec_len;
} kvtcd_disk_loc;

/* A record's metadata: what the index needs to rebuild an entry. */
typedef struct kvtcd_disk_meta {
    char tenant[KVTCD_DISK_TENANT_MAX + 1];
    uint8_t key[KVTCD_DISK_KEY_BYTES];
    uint8_t parent[KVTCD_DISK_KEY_BYTES];
    uint8_t has_parent;
    uint8_t has_layout;
    uint8_t encoding;           /* Kvtc__Wire__Encoding */
    uint32_t first_pos, n_tokens, chunk_flags;
    kvtc_layout layout;
    uint64_t size;              /* payload bytes */
    uint64_t checksum;          /* XXH3-64 of the payload */
    uint64_t expire_unix_ms;    /* wall clock; 0: never */
    uint64_t seq;               /* filled by the store */
} kvtcd_disk_meta;

enum kvtcd_disk_io_mode {
    KVTCD_DISK_IO_AUTO = 0,     /* io_uring, else the thread pool */
    KVTCD_DISK_IO_URING = 1,    /* io_uring or fail */
    KVTCD_DISK_IO_THREADS = 2   /* libuv thread pool */
};

typedef struct kvtcd_disk_params {
    const char *dir;            /* created if missing */
    uint64_t capacity;          /* bytes of segment files at most */
    uint64_t segment_bytes;     /* 0: min(256 MiB, capacity / 8), >= 1 MiB */
    int io_mode;                /* enum kvtcd_disk_io_mode */
    unsigned queue_depth;       /* 0: 64 */
    int direct;                 /* 1: O_DIRECT (0 only for tests on file
                                   systems that refuse it) */
} kvtcd_disk_params;

/* Called by kvtcd_disk_open for every record that survives recovery (the
 * newest of its key, not deleted), oldest first. The callback returns 0 to
 * keep it, or non-zero to have the store treat it as dead space (e.g.
 * expired). */
typedef int (*kvtcd_disk_recover_fn)(void *arg, const kvtcd_disk_meta *m,
                                     const kvtcd_disk_loc *loc);

/* Open (or create) the store in p->dir and rebuild its contents: sealed
 * segments from their .sum files, others (and any whose .sum fails its
 * checksum) by scanning. Blocks (start-up only). Errors: KVTC_EIO (dir
 * unusable), KVTC_ENOTSUP (io_mode URING and io_uring refused),
 * KVTC_EINVAL, KVTC_ENOMEM. */
int kvtcd_disk_open(uv_loop_t *loop, const kvtcd_disk_params *p,
                    kvtcd_disk_recover_fn each, void *arg,
                    kvtcd_disk **out);

/* Stop accepting work, wait for in-flight I/O (callbacks get
 * KVTC_ECANCELED where not done), close files, then call closed(arg) from
 * the loop. */
void kvtcd_disk_close(kvtcd_disk *d, void (*closed)(void *arg), void *arg);

/* status: 0 or a KVTC_E* code. loc: where the record now lies (NULL on
 * error). */
typedef void (*kvtcd_disk_write_cb)(void *arg, int status,
                                    const kvtcd_disk_loc *loc);
typedef void (*kvtcd_disk_done_cb)(void *arg, int status);

/* Append a record of payload (len bytes, any alignment; must stay valid
 * and unchanged until cb). sync: cb only after the record is on stable
 * storage (fdatasync; concurrent syncs are grouped). m->size is taken
 * from len; m->checksum must be the payload's XXH3-64
 * (kvtc_wire_checksum): it is stored, not recomputed, and every read
 * checks it. Immediate errors: KVTC_EFULL (capacity: release or compact
 * first), KVTC_EINVAL, KVTC_ECANCELED (closing). Errors through cb:
 * KVTC_ENOSPC (the file system is full), KVTC_EIO, KVTC_ECANCELED. */
int kvtcd_disk_append(kvtcd_disk *d, const kvtcd_disk_meta *m,
                      const void *payload, size_t len, int sync,
                      kvtcd_disk_write_cb cb, void *arg);

/* Append a tombstone: after a restart, older records of (tenant, key) stay
 * deleted. sync as for append. */
int kvtcd_disk_tombstone(kvtcd_disk *d, const char *tenant,
                         const uint8_t key[KVTCD_DISK_KEY_BYTES], int sync,
                         kvtcd_disk_done_cb cb, void *arg);

/* Read the whole record at loc into dst (loc->rec_len bytes, aligned to
 * kvtcd_disk_align()), then verify it: header checksum, the key and
 * checksum expected (from the index), payload checksum. status
 * KVTC_ECORRUPT when any check fails (the caller drops the entry), KVTC_EIO
 * when the read fails. On 0 the payload is at dst + loc->payload_off.
 * Immediate errors: KVTC_ENOENT (no such record any more: released and
 * its segment deleted, or dropped by compaction as corrupt: a miss),
 * KVTC_EINVAL (loc inconsistent, dst misaligned), KVTC_ECANCELED. */
int kvtcd_disk_read(kvtcd_disk *d, const kvtcd_disk_loc *loc, void *dst,
                    const uint8_t key[KVTCD_DISK_KEY_BYTES],
                    uint64_t checksum, kvtcd_disk_done_cb cb, void *arg);

/* The record at loc is dead (evicted, replaced, deleted): its bytes become
 * reclaimable. A sealed segment with no live bytes is unlinked. */
void kvtcd_disk_release(kvtcd_disk *d, const kvtcd_disk_loc *loc);

/* Compaction: rewrite the live records of the sealed segment with the most
 * dead space (when at least min_dead_ratio of it is dead) to the head,
 * then unlink it. reloc(arg, m, old, new) is asked for each live record
 * once its copy is written: it returns 1 when the caller moved its
 * reference to new, 0 when the record died meanwhile (the copy is then
 * released). done(arg, status) when the step ends; returns KVTC_ENOENT at
 * once when no segment qualifies, KVTC_EBUSY while a step runs. */
typedef int (*kvtcd_disk_reloc_fn)(void *arg, const kvtcd_disk_meta *m,
                                   const kvtcd_disk_loc *old_loc,
                                   const kvtcd_disk_loc *new_loc);
int kvtcd_disk_compact(kvtcd_disk *d, double min_dead_ratio,
                       kvtcd_disk_reloc_fn reloc, kvtcd_disk_done_cb done,
                       void *arg);

/* Optional: lost(arg, loc) is told of each live record the store gives up
 * without a release: compaction found it corrupt and dropped it (nothing
 * to move). Reads of loc fail from then on (KVTC_ECORRUPT, then
 * KVTC_ENOENT once the segment is deleted), so the owner forgets it. Runs
 * on the loop, never inside a call into the store; it must not call
 * kvtcd_disk_release for loc. fn NULL: nobody is told. */
typedef void (*kvtcd_disk_lost_fn)(void *arg, const kvtcd_disk_loc *loc);
void kvtcd_disk_set_lost(kvtcd_disk *d, kvtcd_disk_lost_fn fn, void *arg);

typedef struct kvtcd_disk_stats {
    uint64_t capacity;          /* bytes allowed */
    uint64_t used;              /* bytes of segment files */
    uint64_t live;              /* bytes of live records */
    uint64_t segments;
    uint64_t records_written, bytes_written;
    uint64_t records_read, bytes_read;
    uint64_t syncs;
    uint64_t corrupt;           /* records dropped: at recovery or on read */
    uint64_t errors;            /* failed I/O (EIO, ENOSPC) */
    uint64_t compactions;
    uint64_t recovered;         /* records rebuilt at open */
    double recover_seconds;
} kvtcd_disk_stats;

void kvtcd_disk_get_stats(const kvtcd_disk *d, kvtcd_disk_stats *out);
/* "io_uring" or "threadpool". */
const char *kvtcd_disk_backend(const kvtcd_disk *d);
/* Alignment of read buffers and record lengths (a power of two). */
size_t kvtcd_disk_align(const kvtcd_disk *d);

#endif
