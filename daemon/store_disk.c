/* store_disk.c - the disk tier (see store_disk.h; docs/tiers.md "Disk
 * format" has the byte layout).
 *
 * Write path. An append reserves its place at the end of the active
 * segment (so offsets are handed out in call order), then writes its bytes
 * in pieces of at most 4 MiB: parts of the payload whose memory and file
 * offset are both aligned go straight from the caller's buffer, the rest
 * through bounce buffers from two bounded pools. The first block (header +
 * the payload's head) is written last, once every other piece is down: a
 * record whose write failed or was torn by a crash has no valid header, so
 * recovery never reports it. sync appends then join a group commit: one
 * fdatasync per segment at a time, covering every record finished before
 * it started.
 *
 * Segments: created (open, fallocate KEEP_SIZE, fsync of the directory) on
 * the thread pool; the file size is the end of what was written, which is
 * what `used` counts. A full segment is sealed once its writes are done:
 * fdatasync, preallocated tail trimmed, .sum written (tmp + rename), all on
 * the thread pool. A segment whose write failed is not appended to again.
 *
 * Liveness: every record of every segment is kept in a small array (offset,
 * length, seq, state), so release finds it by binary search, double
 * releases are ignored, and compaction knows what to copy. Tombstones
 * are not live, but a segment holding tombstones is only removed once no
 * older segment exists (an older segment may still hold the records they
 * hide); compaction copies them forward otherwise. Compaction copies keep
 * their original seq, so a tombstone written after the original still
 * hides the copy. */
#include "store_disk.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>
#include <xxhash.h>

#include "aio.h"
#include "fifo.h"
#include "kvtc_errors.h"
#include "log.h"
#include "segment.h"
#include "wire.h"

#define HDR KVTCD_SEG_HDR_BYTES
#define SMALL_BYTES (64u << 10)     /* bounce for small records, headers */
#define LARGE_BYTES (4u << 20)      /* bounce (and I/O piece) for the rest */
#define SMALL_MAX 256               /* 16 MiB of small bounce buffers */
#define LARGE_MAX 8                 /* 32 MiB of large ones */
#define MAX_ALIGN (64u << 10)
#define SCAN_WINDOW (4u << 20)
#define MAX_IO_CHUNK (1u << 30)     /* one iovec of a read at most */

enum rec_state {
    R_PENDING = 0,              /* being written */
    R_LIVE,                     /* a record the caller holds a loc of */
    R_DEAD,                     /* released or replaced */
    R_TOMB,                     /* a written tombstone */
    R_FAILED                    /* its write failed: no valid header */
};

typedef struct rec {
    uint64_t off, len, seq;
    uint32_t hdr_pos;           /* encoded header in seg->hdrs */
    uint16_t hdr_len;
    uint8_t kind;
    uint8_t state;
} rec;

typedef struct wop wop;

typedef struct seg {
    uint32_t id;
    int fd;
    uint64_t end;               /* bytes reserved = file length when done */
    uint64_t live, tomb;        /* bytes of live records / tombstones */
    rec *recs;
    size_t nrec, caprec;
    uint8_t *hdrs;              /* encoded headers, for the .sum */
    size_t hdrs_len, hdrs_cap;
    unsigned io;                /* appends, reads and syncs in flight */
    uint8_t full;               /* no more appends */
    uint8_t sealing, sealed;
    uint8_t failed;             /* a write failed: roll before appending */
    uint8_t compacting;
    uint8_t unlinked;
    wop *sync_wait, *sync_batch;
    uint8_t syncing;
    struct seg *znext;          /* unlinked, waiting for its I/O */
} seg;

struct kvtcd_disk;

struct wop {
    wop *next;                  /* roll/bounce FIFO, sync lists, deferred */
    struct kvtcd_disk *d;
    seg *s;
    uint64_t off, rec_len;
    const uint8_t *payload;
    size_t len;
    int sync;
    kvtcd_seg_hdr h;
    uint8_t hdr[HDR];
    size_t hdr_len;
    /* who is told */
    kvtcd_disk_write_cb wcb;
    kvtcd_disk_done_cb dcb;
    void *arg;
    /* progress */
    uint64_t next_piece;        /* record offset of the next body piece */
    uint64_t hpiece;            /* bytes of the first piece (header) */
    unsigned inflight;
    int waiting;                /* in the bounce FIFO */
    int header_sent, written;
    int status;
};

typedef struct piece {
    wop *w;
    uint8_t *bounce;
    int large;
} piece;

typedef struct rop {
    struct kvtcd_disk *d;
    seg *s;
    kvtcd_disk_loc loc;
    uint8_t *dst;
    uint8_t key[KVTCD_DISK_KEY_BYTES];
    uint64_t checksum;
    int check_key;
    kvtcd_disk_done_cb cb;
    void *arg;
    kvtcd_seg_hdr h;
    uv_work_t verify;           /* large payloads are checked off-loop */
    int status;
} rop;

typedef struct bpool {
    uint8_t **free;
    unsigned nfree, total, max;
    size_t bytes;
} bpool;

typedef struct compactor {
    seg *victim;
    size_t idx;
    uint8_t *buf;
    size_t buf_cap;
    int drop_tombs;
    kvtcd_disk_reloc_fn reloc;
    kvtcd_disk_done_cb done;
    void *arg;
    int status;
    int stop;
    rec cur;                    /* the record being moved */
    kvtcd_seg_hdr h;
    uv_work_t vreq;             /* its payload check, when large */
    int vstatus;
} compactor;

typedef struct work {
    uv_work_t req;
    struct kvtcd_disk *d;
    seg *s;
    int err;
    uint64_t prealloc;
    uint64_t data_end;          /* sealing: the file's new length */
    kvtcd_seg_sum sum;
    int fd;
} work;

struct kvtcd_disk {
    uv_loop_t *loop;
    kvtcd_aio *aio;
    char *dir;
    int dirfd;
    int direct;
    size_t align, mem_align;
    uint64_t capacity, seg_bytes;
    uint64_t used;              /* bytes of segment files (reserved) */
    uint64_t waiting_bytes;     /* appends waiting for a segment */
    uint64_t live;
    uint64_t seq;
    uint32_t next_id;
    seg **segs;                 /* by id, ascending */
    size_t nseg, capseg;
    seg *active;
    seg *zombies;
    int rolling;
    wop *roll_head, *roll_tail; /* waiting for a segment */
    wop *bwait_head, *bwait_tail; /* waiting for a bounce buffer */
    bpool small, large;
    wop *deferred;              /* finished inside an API call */
    uv_timer_t defer;
    unsigned in_api;
    kvtcd_disk_lost_fn lost;    /* records dropped without a release */
    void *lost_arg;
    unsigned wops, rops, works;
    compactor *comp;
    int comp_deferred;
    int closing, torn_down;
    void (*closed)(void *);
    void *closed_arg;
    kvtcd_disk_stats st;
};

static void wop_pump(wop *w);
static void wop_finish(wop *w, int status);
static void maybe_seal(kvtcd_disk *d, seg *s);
static void maybe_unlink(kvtcd_disk *d, seg *s);
static void try_close(kvtcd_disk *d);
static void start_roll(kvtcd_disk *d);
static void compact_next(kvtcd_disk *d);
static void arm_defer(kvtcd_disk *d);

/* ---- Small helpers ---------------------------------------------------- */

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

static uint64_t round_up(uint64_t v, uint64_t a)
{
    return (v + a - 1) & ~(a - 1);
}

static void *aligned_buf(size_t align, size_t n)
{
    void *p = NULL;
    if (posix_memalign(&p, align < 4096 ? 4096 : align, n) != 0)
        return NULL;
    return p;
}

static seg *seg_find(const kvtcd_disk *d, uint32_t id)
{
    size_t lo = 0, hi = d->nseg;
    while (lo < hi) {
        size_t mid = (lo + hi) / 2;
        if (d->segs[mid]->id < id)
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo < d->nseg && d->segs[lo]->id == id ? d->segs[lo] : NULL;
}

static rec *rec_find(const seg *s, uint64_t off)
{
    size_t lo = 0, hi = s->nrec;
    while (lo < hi) {
        size_t mid = (lo + hi) / 2;
        if (s->recs[mid].off < off)
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo < s->nrec && s->recs[lo].off == off ? &s->recs[lo] : NULL;
}

static int seg_insert(kvtcd_disk *d, seg *s)
{
    if (d->nseg == d->capseg) {
        size_t cap = d->capseg ? d->capseg * 2 : 16;
        seg **n = realloc(d->segs, cap * sizeof *n);
        if (!n)
            return KVTC_ENOMEM;
        d->segs = n;
        d->capseg = cap;
    }
    size_t i = d->nseg;
    while (i > 0 && d->segs[i - 1]->id > s->id) {
        d->segs[i] = d->segs[i - 1];
        i--;
    }
    d->segs[i] = s;
    d->nseg++;
    return 0;
}

static void seg_remove(kvtcd_disk *d, seg *s)
{
    for (size_t i = 0; i < d->nseg; i++) {
        if (d->segs[i] == s) {
            memmove(&d->segs[i], &d->segs[i + 1],
                    (d->nseg - i - 1) * sizeof *d->segs);
            d->nseg--;
            return;
        }
    }
}

static void seg_free(seg *s)
{
    if (s->fd >= 0)
        close(s->fd);
    free(s->recs);
    free(s->hdrs);
    free(s);
}

static seg *seg_new(uint32_t id, int fd)
{
    seg *s = calloc(1, sizeof *s);
    if (s) {
        s->id = id;
        s->fd = fd;
    }
    return s;
}

static int rec_push(seg *s, const rec *r)
{
    if (s->nrec == s->caprec) {
        size_t cap = s->caprec ? s->caprec * 2 : 64;
        rec *n = realloc(s->recs, cap * sizeof *n);
        if (!n)
            return KVTC_ENOMEM;
        s->recs = n;
        s->caprec = cap;
    }
    s->recs[s->nrec++] = *r;
    return 0;
}

static int hdrs_push(seg *s, const uint8_t *h, size_t n, uint32_t *pos)
{
    if (s->hdrs_len + n > UINT32_MAX)
        return KVTC_ENOMEM;
    if (s->hdrs_len + n > s->hdrs_cap) {
        size_t cap = s->hdrs_cap ? s->hdrs_cap * 2 : 16384;
        while (cap < s->hdrs_len + n)
            cap *= 2;
        uint8_t *b = realloc(s->hdrs, cap);
        if (!b)
            return KVTC_ENOMEM;
        s->hdrs = b;
        s->hdrs_cap = cap;
    }
    memcpy(s->hdrs + s->hdrs_len, h, n);
    *pos = (uint32_t)s->hdrs_len;
    s->hdrs_len += n;
    return 0;
}

/* The oldest segment may drop its tombstones: nothing older is left for
 * them to hide. */
static int is_oldest(const kvtcd_disk *d, const seg *s)
{
    return d->nseg > 0 && d->segs[0] == s;
}

static void path_of(const kvtcd_disk *d, uint32_t id, const char *ext,
                    char *out, size_t cap)
{
    if (kvtcd_seg_name(out, cap, d->dir, id, ext) < 0)
        out[0] = '\0';
}

/* ---- Bounce buffers --------------------------------------------------- */

static uint8_t *bounce_get(kvtcd_disk *d, int large)
{
    bpool *p = large ? &d->large : &d->small;
    if (p->nfree)
        return p->free[--p->nfree];
    if (p->total >= p->max)
        return NULL;
    uint8_t *b = aligned_buf(d->align, p->bytes);
    if (b)
        p->total++;
    return b;
}

static void bounce_put(kvtcd_disk *d, uint8_t *b, int large)
{
    bpool *p = large ? &d->large : &d->small;
    p->free[p->nfree++] = b;
    /* Whoever waited for a buffer goes on, in arrival order. */
    wop *w;
    while ((w = d->bwait_head)) {
        KVTC_FIFO_POP(d->bwait_head, d->bwait_tail, next);
        w->next = NULL;
        w->waiting = 0;
        wop_pump(w);
        if (d->bwait_tail == w)
            break; /* it queued itself again: no buffer for it yet */
    }
}

static void bwait_push(kvtcd_disk *d, wop *w)
{
    w->waiting = 1;
    KVTC_FIFO_PUSH(d->bwait_head, d->bwait_tail, w, next);
}

static void pool_free(bpool *p)
{
    for (unsigned i = 0; i < p->nfree; i++)
        free(p->free[i]);
    free(p->free);
}

/* ---- Deferred completions --------------------------------------------- */

static void on_defer(uv_timer_t *t)
{
    kvtcd_disk *d = t->data;
    wop *list = d->deferred;
    d->deferred = NULL;
    /* In submission order. */
    wop *rev = NULL;
    while (list) {
        wop *n = list->next;
        list->next = rev;
        rev = list;
        list = n;
    }
    while (rev) {
        wop *n = rev->next;
        rev->next = NULL;
        wop_finish(rev, rev->status);
        rev = n;
    }
    if (d->comp_deferred) {
        d->comp_deferred = 0;
        compact_next(d);
    }
    try_close(d);
}

static void arm_defer(kvtcd_disk *d)
{
    if (!d->torn_down)
        uv_timer_start(&d->defer, on_defer, 0, 0);
}

/* ---- Group commit ------------------------------------------------------ */

static void start_sync(kvtcd_disk *d, seg *s);

static void on_sync(void *arg, int status)
{
    seg *s = arg;
    wop *batch = s->sync_batch;
    kvtcd_disk *d = batch ? batch->d : NULL;
    s->sync_batch = NULL;
    s->syncing = 0;
    s->io--;
    while (batch) {
        wop *n = batch->next;
        batch->next = NULL;
        d = batch->d;
        wop_finish(batch, status);
        batch = n;
    }
    if (s->sync_wait && d)
        start_sync(d, s);
    else if (d)
        maybe_seal(d, s);
}

static void start_sync(kvtcd_disk *d, seg *s)
{
    s->sync_batch = s->sync_wait;
    s->sync_wait = NULL;
    s->syncing = 1;
    s->io++;
    d->st.syncs++;
    int rc = kvtcd_aio_fdatasync(d->aio, s->fd, on_sync, s);
    if (rc < 0) {
        /* Report through the loop, not from inside this call chain. */
        s->io--;
        s->syncing = 0;
        wop *b = s->sync_batch;
        s->sync_batch = NULL;
        while (b) {
            wop *n = b->next;
            b->status = rc;
            b->next = d->deferred;
            d->deferred = b;
            b = n;
        }
        arm_defer(d);
    }
}

/* ---- Appends ------------------------------------------------------------ */

static void wop_finish(wop *w, int status)
{
    kvtcd_disk *d = w->d;
    if (d->in_api) {
        w->status = status;
        w->next = d->deferred;
        d->deferred = w;
        arm_defer(d);
        return;
    }
    seg *s = w->s;
    kvtcd_disk_loc loc = {0};
    if (s) {
        rec *r = rec_find(s, w->off);
        if (status == 0 && r) {
            if (w->h.kind == KVTCD_SEG_TOMBSTONE) {
                r->state = R_TOMB;
                s->tomb += w->rec_len;
            } else {
                r->state = R_LIVE;
                s->live += w->rec_len;
                d->live += w->rec_len;
            }
            d->st.records_written++;
            d->st.bytes_written += w->rec_len;
            loc = (kvtcd_disk_loc){.seg = s->id, .payload_off = HDR,
                                   .off = w->off, .rec_len = w->rec_len};
        } else {
            if (r)
                r->state = R_FAILED;
            if (status != KVTC_ECANCELED) {
                s->failed = 1;
                d->st.errors++;
                KVTCD_ERROR("disk", "append failed seg=%u off=%llu len=%llu "
                            "err=%s", s->id, (unsigned long long)w->off,
                            (unsigned long long)w->rec_len,
                            kvtc_strerror(status));
            }
        }
        s->io--;
    } else if (status != KVTC_ECANCELED) {
        d->st.errors++;
    }
    d->wops--;
    if (w->wcb)
        w->wcb(w->arg, status, status == 0 ? &loc : NULL);
    else if (w->dcb)
        w->dcb(w->arg, status);
    free(w);
    if (s) {
        if (s->failed && s == d->active)
            s->full = 1;
        maybe_seal(d, s);
    }
    try_close(d);
}

static void on_piece(void *arg, int status)
{
    piece *p = arg;
    wop *w = p->w;
    kvtcd_disk *d = w->d;
    w->inflight--;
    if (status < 0 && w->status == 0)
        w->status = status;
    uint8_t *b = p->bounce;
    int large = p->large;
    free(p);
    if (b)
        bounce_put(d, b, large);
    wop_pump(w);
}

/* Write iov (n entries, aligned) at the record offset rel; b/large: the
 * bounce buffer to give back when it is done. */
static int submit_piece(wop *w, struct iovec *iov, int n, uint64_t rel,
                        uint8_t *b, int large)
{
    piece *p = malloc(sizeof *p);
    if (!p)
        return KVTC_ENOMEM;
    *p = (piece){w, b, large};
    int rc = kvtcd_aio_write(w->d->aio, w->s->fd, iov, n, w->off + rel,
                             on_piece, p);
    if (rc < 0) {
        free(p);
        return rc;
    }
    w->inflight++;
    return 0;
}

/* Copy payload bytes [p0, p1) (payload-relative; past len: zeros) to b. */
static void fill(const wop *w, uint8_t *b, uint64_t p0, uint64_t p1)
{
    uint64_t have = p0 < w->len ? (p1 < w->len ? p1 : w->len) - p0 : 0;
    if (have)
        memcpy(b, w->payload + p0, have);
    memset(b + have, 0, p1 - p0 - have);
}

/* Advance w as far as buffers allow: body pieces first, the first block
 * (header) when all of them are down, then the sync or the callback. */
static void wop_pump(wop *w)
{
    kvtcd_disk *d = w->d;
    if (w->waiting)
        return; /* bounce_put resumes it */
    while (w->status == 0 && w->next_piece < w->rec_len) {
        uint64_t a = w->next_piece;
        uint64_t b = a + LARGE_BYTES < w->rec_len ? a + LARGE_BYTES
                                                  : w->rec_len;
        uint64_t p0 = a - HDR, p1 = b - HDR;
        /* The aligned run of the caller's payload in [p0, p1). */
        uint64_t direct = 0;
        if (p0 < w->len &&
            ((uintptr_t)(w->payload + p0) & (d->mem_align - 1)) == 0) {
            uint64_t top = p1 < w->len ? p1 : w->len;
            direct = (top - p0) & ~((uint64_t)d->align - 1);
        }
        struct iovec iov[2];
        int n = 0;
        uint8_t *bb = NULL;
        int large = 0;
        if (direct < p1 - p0) {
            uint64_t rest = p1 - p0 - direct;
            large = rest > SMALL_BYTES;
            bb = bounce_get(d, large);
            if (!bb) {
                bwait_push(d, w);
                return;
            }
            fill(w, bb, p0 + direct, p1);
        }
        if (direct)
            iov[n++] = (struct iovec){(void *)(w->payload + p0), direct};
        if (bb)
            iov[n++] = (struct iovec){bb, p1 - p0 - direct};
        int rc = submit_piece(w, iov, n, a, bb, large);
        if (rc < 0) {
            if (bb)
                bounce_put(d, bb, large);
            w->status = rc;
            break;
        }
        w->next_piece = b;
    }
    if (w->inflight)
        return;
    if (w->status < 0) {
        wop_finish(w, w->status);
        return;
    }
    if (!w->header_sent) {
        uint8_t *hb = bounce_get(d, 0);
        if (!hb) {
            bwait_push(d, w);
            return;
        }
        memcpy(hb, w->hdr, w->hdr_len);
        memset(hb + w->hdr_len, 0, HDR - w->hdr_len);
        fill(w, hb + HDR, 0, w->hpiece - HDR);
        struct iovec iov = {hb, w->hpiece};
        int rc = submit_piece(w, &iov, 1, 0, hb, 0);
        if (rc < 0) {
            bounce_put(d, hb, 0);
            wop_finish(w, rc);
            return;
        }
        w->header_sent = 1;
        return;
    }
    if (w->written)
        return;
    w->written = 1;
    if (w->sync) {
        seg *s = w->s;
        w->next = s->sync_wait;
        s->sync_wait = w;
        if (!s->syncing)
            start_sync(d, s);
        return;
    }
    wop_finish(w, 0);
}

/* Give w its place at the end of the active segment and start it. */
static int place(kvtcd_disk *d, wop *w)
{
    seg *s = d->active;
    w->s = s;
    w->off = s->end;
    w->h.seg = s->id;
    w->h.off = w->off;
    int rc = kvtcd_seg_hdr_encode(&w->h, w->hdr, sizeof w->hdr, &w->hdr_len);
    uint32_t pos = 0;
    if (rc == 0)
        rc = hdrs_push(s, w->hdr, w->hdr_len, &pos);
    rec r = {.off = w->off, .len = w->rec_len, .seq = w->h.m.seq,
             .hdr_pos = pos, .hdr_len = (uint16_t)w->hdr_len,
             .kind = w->h.kind, .state = R_PENDING};
    if (rc == 0)
        rc = rec_push(s, &r);
    if (rc < 0)
        return rc;
    s->end += w->rec_len;
    s->io++;
    d->used += w->rec_len;
    w->hpiece = w->rec_len <= SMALL_BYTES ? w->rec_len : d->align;
    w->next_piece = w->hpiece;
    wop_pump(w);
    return 0;
}

/* Whether w can go into the active segment now. A record larger than a
 * segment gets a segment of its own. */
static int fits_active(const kvtcd_disk *d, const wop *w)
{
    const seg *s = d->active;
    return s && !s->full && !s->failed && !d->rolling &&
           (s->end == 0 || s->end + w->rec_len <= d->seg_bytes);
}

static void roll_push(kvtcd_disk *d, wop *w)
{
    KVTC_FIFO_PUSH(d->roll_head, d->roll_tail, w, next);
    d->waiting_bytes += w->rec_len;
}

/* Start appends waiting for a segment while they fit. */
static void drain_roll(kvtcd_disk *d)
{
    while (d->roll_head && !d->rolling) {
        wop *w = d->roll_head;
        if (!fits_active(d, w)) {
            start_roll(d);
            return;
        }
        KVTC_FIFO_POP(d->roll_head, d->roll_tail, next);
        w->next = NULL;
        d->waiting_bytes -= w->rec_len;
        int rc = place(d, w);
        if (rc < 0)
            wop_finish(w, rc);
    }
}

static void fail_roll_waiters(kvtcd_disk *d, int status)
{
    wop *w;
    while ((w = d->roll_head)) {
        KVTC_FIFO_POP(d->roll_head, d->roll_tail, next);
        d->waiting_bytes -= w->rec_len;
        w->next = NULL;
        wop_finish(w, status);
    }
}

static void create_work(uv_work_t *req)
{
    work *k = req->data;
    kvtcd_disk *d = k->d;
    char path[4096];
    path_of(d, k->s->id, "kvs", path, sizeof path);
    int fd = open(path, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC |
                            (d->direct ? O_DIRECT : 0), 0644);
    if (fd < 0) {
        k->err = errno;
        return;
    }
    /* Reserve the blocks now (fewer extent updates under load, ENOSPC
     * seen early) without moving the file size: the size stays the end
     * of what was written, which recovery relies on. Refusal is fine. */
    if (k->prealloc)
        (void)fallocate(fd, FALLOC_FL_KEEP_SIZE, 0, (off_t)k->prealloc);
    /* The new name must survive a crash before any sync append in it is
     * acknowledged. */
    if (fsync(d->dirfd) < 0) {
        k->err = errno;
        close(fd);
        unlink(path);
        return;
    }
    k->fd = fd;
}

static void create_done(uv_work_t *req, int status)
{
    work *k = req->data;
    kvtcd_disk *d = k->d;
    seg *s = k->s;
    d->works--;
    d->rolling = 0;
    if (status < 0 || k->err || k->fd < 0) {
        int e = k->err ? k->err : EIO;
        KVTCD_ERROR("disk", "segment create failed seg=%u err=%s", s->id,
                    strerror(e));
        free(s);
        free(k);
        d->st.errors++;
        fail_roll_waiters(d, kvtcd_aio_errno(-e));
        try_close(d);
        return;
    }
    s->fd = k->fd;
    free(k);
    if (seg_insert(d, s) < 0) {
        seg_free(s);
        fail_roll_waiters(d, KVTC_ENOMEM);
        try_close(d);
        return;
    }
    d->active = s;
    d->st.segments = d->nseg;
    if (d->closing) {
        fail_roll_waiters(d, KVTC_ECANCELED);
        s->full = 1;
        maybe_seal(d, s);
        try_close(d);
        return;
    }
    drain_roll(d);
}

static void start_roll(kvtcd_disk *d)
{
    if (d->rolling)
        return;
    seg *old = d->active;
    if (old) {
        old->full = 1;
        maybe_seal(d, old);
    }
    work *k = calloc(1, sizeof *k);
    seg *s = k ? seg_new(d->next_id, -1) : NULL;
    if (!s) {
        free(k);
        fail_roll_waiters(d, KVTC_ENOMEM);
        return;
    }
    d->next_id++;
    k->d = d;
    k->s = s;
    k->fd = -1;
    uint64_t room = d->capacity > d->used ? d->capacity - d->used : 0;
    k->prealloc = room < d->seg_bytes ? room : d->seg_bytes;
    k->req.data = k;
    d->rolling = 1;
    d->works++;
    if (uv_queue_work(d->loop, &k->req, create_work, create_done) < 0) {
        d->works--;
        d->rolling = 0;
        free(s);
        free(k);
        fail_roll_waiters(d, KVTC_EIO);
    }
}

static int append_common(kvtcd_disk *d, wop *w)
{
    uint64_t need = d->used + d->waiting_bytes + w->rec_len;
    if (need > d->capacity) {
        free(w);
        return KVTC_EFULL;
    }
    d->wops++;
    if (fits_active(d, w) && !d->roll_head) {
        int rc = place(d, w);
        if (rc < 0) {
            d->wops--;
            free(w);
        }
        return rc;
    }
    roll_push(d, w);
    if (!d->rolling)
        drain_roll(d);
    return 0;
}

static wop *wop_new(kvtcd_disk *d, const void *payload, size_t len,
                    int sync)
{
    wop *w = calloc(1, sizeof *w);
    if (!w)
        return NULL;
    w->d = d;
    w->payload = payload;
    w->len = len;
    w->sync = sync;
    w->rec_len = kvtcd_seg_rec_len(len, d->align);
    w->h.align_shift = (uint8_t)__builtin_ctzll(d->align);
    return w;
}

static int tenant_ok(const char *t)
{
    return t && strnlen(t, KVTCD_DISK_TENANT_MAX + 1) <= KVTCD_DISK_TENANT_MAX;
}

int kvtcd_disk_append(kvtcd_disk *d, const kvtcd_disk_meta *m,
                      const void *payload, size_t len, int sync,
                      kvtcd_disk_write_cb cb, void *arg)
{
    if (!d || !m || !cb || (len && !payload) || !tenant_ok(m->tenant) ||
        len > KVTCD_SEG_MAX_PAYLOAD)
        return KVTC_EINVAL;
    if (d->closing)
        return KVTC_ECANCELED;
    wop *w = wop_new(d, payload, len, sync);
    if (!w)
        return KVTC_ENOMEM;
    w->h.kind = KVTCD_SEG_RECORD;
    w->h.m = *m;
    w->h.m.size = len;
    w->h.m.seq = ++d->seq;
    w->wcb = cb;
    w->arg = arg;
    d->in_api++;
    int rc = append_common(d, w);
    d->in_api--;
    return rc;
}

int kvtcd_disk_tombstone(kvtcd_disk *d, const char *tenant,
                         const uint8_t key[KVTCD_DISK_KEY_BYTES], int sync,
                         kvtcd_disk_done_cb cb, void *arg)
{
    if (!d || !key || !cb || !tenant_ok(tenant))
        return KVTC_EINVAL;
    if (d->closing)
        return KVTC_ECANCELED;
    wop *w = wop_new(d, NULL, 0, sync);
    if (!w)
        return KVTC_ENOMEM;
    w->h.kind = KVTCD_SEG_TOMBSTONE;
    snprintf(w->h.m.tenant, sizeof w->h.m.tenant, "%s", tenant);
    memcpy(w->h.m.key, key, KVTCD_DISK_KEY_BYTES);
    w->h.m.checksum = XXH3_64bits(NULL, 0);
    w->h.m.seq = ++d->seq;
    w->dcb = cb;
    w->arg = arg;
    d->in_api++;
    int rc = append_common(d, w);
    d->in_api--;
    return rc;
}

/* ---- Sealing and unlinking ---------------------------------------------- */

static int write_file(int dirfd, const char *path, const char *tmp,
                      const uint8_t *buf, size_t len)
{
    int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0)
        return errno;
    size_t done = 0;
    while (done < len) {
        ssize_t n = write(fd, buf + done, len - done);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0) {
            int e = n < 0 ? errno : EIO;
            close(fd);
            unlink(tmp);
            return e;
        }
        done += (size_t)n;
    }
    int e = fdatasync(fd) < 0 ? errno : 0;
    if (close(fd) < 0 && !e)
        e = errno;
    if (!e && rename(tmp, path) < 0)
        e = errno;
    if (e) {
        unlink(tmp);
        return e;
    }
    return fsync(dirfd) < 0 ? errno : 0;
}

static void seal_work(uv_work_t *req)
{
    work *k = req->data;
    kvtcd_disk *d = k->d;
    seg *s = k->s;
    /* The .sum may only describe records that are on stable storage. */
    if (fdatasync(s->fd) < 0) {
        k->err = errno;
        return;
    }
    /* Give back the preallocated tail nobody will write, and failed
     * records at the end (their partial bytes would only be counted as
     * damage by a later scan). */
    (void)ftruncate(s->fd, (off_t)k->data_end);
    char path[4096], tmp[4200];
    path_of(d, s->id, "sum", path, sizeof path);
    snprintf(tmp, sizeof tmp, "%s.tmp", path);
    k->err = write_file(d->dirfd, path, tmp, k->sum.buf, k->sum.len);
}

static void seal_done(uv_work_t *req, int status)
{
    work *k = req->data;
    kvtcd_disk *d = k->d;
    seg *s = k->s;
    d->works--;
    s->sealing = 0;
    if (status < 0 || k->err) {
        /* Not fatal: the next start scans this segment instead. */
        KVTCD_WARN("disk", "sealing failed seg=%u err=%s", s->id,
                   strerror(k->err ? k->err : EIO));
    }
    s->sealed = 1;
    kvtcd_seg_sum_free(&k->sum);
    free(k);
    free(s->hdrs);
    s->hdrs = NULL;
    s->hdrs_len = s->hdrs_cap = 0;
    maybe_unlink(d, s);
    try_close(d);
}

static int build_sum(const seg *s, kvtcd_seg_sum *sum)
{
    int rc = kvtcd_seg_sum_init(sum);
    for (size_t i = 0; rc == 0 && i < s->nrec; i++) {
        const rec *r = &s->recs[i];
        /* A record that never finished has no valid header on disk. */
        if (r->state == R_PENDING || r->state == R_FAILED)
            continue;
        rc = kvtcd_seg_sum_add(sum, s->hdrs + r->hdr_pos, r->hdr_len);
    }
    if (rc == 0)
        rc = kvtcd_seg_sum_finish(sum, s->id, s->end);
    if (rc < 0)
        kvtcd_seg_sum_free(sum);
    return rc;
}

static void maybe_seal(kvtcd_disk *d, seg *s)
{
    if (!s->full || s->sealed || s->sealing || s->io || s->sync_wait ||
        s->unlinked)
        return;
    if (d->active == s)
        d->active = NULL;
    uint64_t data_end = 0;
    for (size_t i = s->nrec; i-- > 0;) {
        if (s->recs[i].state != R_FAILED) {
            data_end = s->recs[i].off + s->recs[i].len;
            break;
        }
    }
    if (data_end < s->end) {
        d->used -= s->end - data_end;
        s->end = data_end;
    }
    work *k = calloc(1, sizeof *k);
    if (!k || build_sum(s, &k->sum) < 0) {
        free(k);
        s->sealed = 1; /* scanned at the next start */
        maybe_unlink(d, s);
        return;
    }
    k->d = d;
    k->s = s;
    k->data_end = data_end;
    k->req.data = k;
    s->sealing = 1;
    d->works++;
    if (uv_queue_work(d->loop, &k->req, seal_work, seal_done) < 0) {
        d->works--;
        s->sealing = 0;
        s->sealed = 1;
        kvtcd_seg_sum_free(&k->sum);
        free(k);
    }
}

static void on_unlinked(uv_fs_t *req)
{
    kvtcd_disk *d = req->data;
    if (req->result < 0 && req->result != UV_ENOENT)
        KVTCD_WARN("disk", "unlink failed path=%s err=%s", req->path,
                   uv_strerror((int)req->result));
    uv_fs_req_cleanup(req);
    free(req);
    d->works--;
    try_close(d);
}

static void unlink_path(kvtcd_disk *d, const char *path)
{
    uv_fs_t *req = malloc(sizeof *req);
    if (!req) {
        unlink(path);
        return;
    }
    req->data = d;
    d->works++;
    if (uv_fs_unlink(d->loop, req, path, on_unlinked) < 0) {
        d->works--;
        free(req);
        unlink(path);
    }
}

static void seg_drop(kvtcd_disk *d, seg *s)
{
    char path[4096];
    /* The summary first: a crash in between leaves a segment that is
     * scanned, never a summary without its segment. */
    path_of(d, s->id, "sum", path, sizeof path);
    unlink_path(d, path);
    path_of(d, s->id, "kvs", path, sizeof path);
    unlink_path(d, path);
    seg_remove(d, s);
    d->used -= s->end;
    d->live -= s->live;
    d->st.segments = d->nseg;
    s->unlinked = 1;
    if (s->io) {
        s->znext = d->zombies;
        d->zombies = s;
    } else {
        seg_free(s);
    }
}

static void maybe_unlink(kvtcd_disk *d, seg *s)
{
    while (s && s->sealed && !s->sealing && !s->compacting && !s->unlinked &&
           s->live == 0 && s != d->active &&
           (s->tomb == 0 || is_oldest(d, s))) {
        int was_oldest = is_oldest(d, s);
        seg_drop(d, s);
        /* The next oldest may have been kept only for its tombstones. */
        s = was_oldest && d->nseg ? d->segs[0] : NULL;
    }
}

static void zombie_reap(kvtcd_disk *d)
{
    for (seg **pp = &d->zombies; *pp;) {
        seg *s = *pp;
        if (s->io == 0) {
            *pp = s->znext;
            seg_free(s);
        } else {
            pp = &s->znext;
        }
    }
}

/* ---- Release ------------------------------------------------------------ */

void kvtcd_disk_release(kvtcd_disk *d, const kvtcd_disk_loc *loc)
{
    if (!d || !loc)
        return;
    seg *s = seg_find(d, loc->seg);
    rec *r = s ? rec_find(s, loc->off) : NULL;
    if (!r || r->state != R_LIVE || r->len != loc->rec_len) {
        KVTCD_WARN("disk", "release of an unknown or dead record seg=%u "
                   "off=%llu", loc->seg, (unsigned long long)loc->off);
        return;
    }
    r->state = R_DEAD;
    s->live -= r->len;
    d->live -= r->len;
    d->in_api++;
    maybe_unlink(d, s);
    d->in_api--;
}

/* ---- Reads -------------------------------------------------------------- */

/* Verify a record read into buf for loc: header, place, key (when given),
 * checksum, payload. */
static int verify_record(const kvtcd_disk_loc *loc, const uint8_t *buf,
                         const uint8_t *key, uint64_t checksum, int kind,
                         kvtcd_seg_hdr *h)
{
    if (kvtcd_seg_hdr_parse(buf, HDR, h) < 0)
        return KVTC_ECORRUPT;
    if (h->kind != kind || h->seg != loc->seg || h->off != loc->off ||
        kvtcd_seg_hdr_rec_len(h) != loc->rec_len)
        return KVTC_ECORRUPT;
    if (kind == KVTCD_SEG_TOMBSTONE)
        return 0;
    if (key && (memcmp(h->m.key, key, KVTCD_DISK_KEY_BYTES) != 0 ||
                h->m.checksum != checksum))
        return KVTC_ECORRUPT;
    if (kvtc_wire_checksum(buf + HDR, h->m.size) != h->m.checksum)
        return KVTC_ECORRUPT;
    return 0;
}

static void read_finish(rop *o, int status)
{
    kvtcd_disk *d = o->d;
    d->rops--;
    if (status == KVTC_ECORRUPT) {
        d->st.corrupt++;
        KVTCD_WARN("disk", "corrupt record seg=%u off=%llu", o->loc.seg,
                   (unsigned long long)o->loc.off);
    }
    kvtcd_disk_done_cb cb = o->cb;
    void *cb_arg = o->arg;
    free(o);
    cb(cb_arg, status);
    try_close(d);
}

static void verify_work(uv_work_t *req)
{
    rop *o = req->data;
    o->status = verify_record(&o->loc, o->dst, o->check_key ? o->key : NULL,
                              o->checksum, KVTCD_SEG_RECORD, &o->h);
}

static void verify_done(uv_work_t *req, int status)
{
    rop *o = req->data;
    read_finish(o, status < 0 ? KVTC_EIO : o->status);
}

/* Payloads from this size are checksummed on the thread pool: XXH3 of a
 * 32 MiB chunk would hold the loop for milliseconds. */
#define VERIFY_OFFLOOP (1u << 20)

static void on_read(void *arg, int status)
{
    rop *o = arg;
    kvtcd_disk *d = o->d;
    /* The segment is not touched after this: it may go now. */
    o->s->io--;
    if (o->s->unlinked)
        zombie_reap(d);
    o->s = NULL;
    if (status == KVTC_ENOENT) {
        status = KVTC_ECORRUPT; /* the file ends inside the record */
    } else if (status < 0) {
        d->st.errors++;
        status = status == KVTC_ECANCELED ? status : KVTC_EIO;
    }
    if (status == 0) {
        d->st.records_read++;
        d->st.bytes_read += o->loc.rec_len;
        o->verify.data = o;
        if (o->loc.rec_len >= VERIFY_OFFLOOP &&
            uv_queue_work(d->loop, &o->verify, verify_work, verify_done) == 0)
            return;
        status = verify_record(&o->loc, o->dst,
                               o->check_key ? o->key : NULL, o->checksum,
                               KVTCD_SEG_RECORD, &o->h);
    }
    read_finish(o, status);
}

static int read_common(kvtcd_disk *d, const kvtcd_disk_loc *loc, void *dst,
                       const uint8_t *key, uint64_t checksum,
                       kvtcd_disk_done_cb cb, void *arg)
{
    if (!d || !loc || !dst || !cb || loc->payload_off != HDR ||
        loc->rec_len < HDR || (loc->rec_len & (HDR - 1)) ||
        ((uintptr_t)dst & (d->mem_align - 1)) ||
        loc->rec_len > (uint64_t)KVTCD_AIO_MAX_IOV * MAX_IO_CHUNK)
        return KVTC_EINVAL;
    if (d->closing)
        return KVTC_ECANCELED;
    seg *s = seg_find(d, loc->seg);
    rec *r = s ? rec_find(s, loc->off) : NULL;
    if (!r || r->len != loc->rec_len || r->state == R_PENDING ||
        r->state == R_FAILED)
        return KVTC_ENOENT;
    rop *o = calloc(1, sizeof *o);
    if (!o)
        return KVTC_ENOMEM;
    o->d = d;
    o->s = s;
    o->loc = *loc;
    o->dst = dst;
    if (key) {
        memcpy(o->key, key, KVTCD_DISK_KEY_BYTES);
        o->check_key = 1;
    }
    o->checksum = checksum;
    o->cb = cb;
    o->arg = arg;
    struct iovec iov[KVTCD_AIO_MAX_IOV];
    int n = 0;
    for (uint64_t at = 0; at < loc->rec_len; at += MAX_IO_CHUNK, n++) {
        uint64_t l = loc->rec_len - at;
        iov[n] = (struct iovec){(uint8_t *)dst + at,
                                l < MAX_IO_CHUNK ? l : MAX_IO_CHUNK};
    }
    int rc = kvtcd_aio_read(d->aio, s->fd, iov, n, loc->off, on_read, o);
    if (rc < 0) {
        free(o);
        return rc;
    }
    s->io++;
    d->rops++;
    return 0;
}

void kvtcd_disk_set_lost(kvtcd_disk *d, kvtcd_disk_lost_fn fn, void *arg)
{
    d->lost = fn;
    d->lost_arg = arg;
}

int kvtcd_disk_read(kvtcd_disk *d, const kvtcd_disk_loc *loc, void *dst,
                    const uint8_t key[KVTCD_DISK_KEY_BYTES],
                    uint64_t checksum, kvtcd_disk_done_cb cb, void *arg)
{
    if (!key)
        return KVTC_EINVAL;
    return read_common(d, loc, dst, key, checksum, cb, arg);
}

/* ---- Compaction ---------------------------------------------------------- */

static void compact_end(kvtcd_disk *d, int status)
{
    compactor *c = d->comp;
    seg *v = c->victim;
    v->compacting = 0;
    if (status == 0) {
        if (c->drop_tombs || v->tomb == 0) {
            for (size_t i = 0; i < v->nrec; i++)
                if (v->recs[i].state == R_TOMB)
                    v->recs[i].state = R_DEAD;
            v->tomb = 0;
        }
        d->st.compactions++;
    }
    d->comp = NULL;
    maybe_unlink(d, v);
    free(c->buf);
    kvtcd_disk_done_cb done = c->done;
    void *arg = c->arg;
    free(c);
    done(arg, status);
    try_close(d);
}

static void on_copy_written(void *arg, int status, const kvtcd_disk_loc *nl)
{
    kvtcd_disk *d = arg;
    compactor *c = d->comp;
    seg *v = c->victim;
    rec *r = rec_find(v, c->cur.off);
    if (status < 0) {
        compact_end(d, status);
        return;
    }
    kvtcd_disk_loc old = {.seg = v->id, .payload_off = HDR,
                          .off = c->cur.off, .rec_len = c->cur.len};
    if (c->cur.kind == KVTCD_SEG_TOMBSTONE) {
        if (r && r->state == R_TOMB) {
            r->state = R_DEAD;
            v->tomb -= r->len;
        }
    } else if (r && r->state == R_LIVE) {
        int moved = c->reloc(c->arg, &c->h.m, &old, nl);
        /* Either way the old place is dead now. */
        if (r->state == R_LIVE) {
            r->state = R_DEAD;
            v->live -= r->len;
            d->live -= r->len;
        }
        if (!moved)
            kvtcd_disk_release(d, nl);
    } else {
        kvtcd_disk_release(d, nl); /* released while it was copied */
    }
    compact_next(d);
}

static void on_tomb_copied(void *arg, int status)
{
    /* Tombstone copies report through on_copy_written's path. */
    on_copy_written(arg, status, NULL);
}

/* The record being moved was read (and checked: status). */
static void compact_verified(kvtcd_disk *d, int status)
{
    compactor *c = d->comp;
    seg *v = c->victim;
    d->rops--;
    rec *r = rec_find(v, c->cur.off);
    if (status == KVTC_ECORRUPT) {
        /* Nothing to move: the caller's reads of it would fail anyway. */
        d->st.corrupt++;
        KVTCD_WARN("disk", "corrupt record dropped by compaction seg=%u "
                   "off=%llu", v->id, (unsigned long long)c->cur.off);
        if (r && r->state == R_LIVE) {
            r->state = R_DEAD;
            v->live -= r->len;
            d->live -= r->len;
            /* Its owner still points at it: without this, it would learn
             * only from a failed read (or never, for a prefix lookup). */
            if (d->lost) {
                kvtcd_disk_loc lost = {.seg = v->id, .payload_off = HDR,
                                       .off = c->cur.off,
                                       .rec_len = c->cur.len};
                d->lost(d->lost_arg, &lost);
            }
        } else if (r && r->state == R_TOMB) {
            r->state = R_DEAD;
            v->tomb -= r->len;
        }
        compact_next(d);
        return;
    }
    if (status < 0 || c->stop || d->closing) {
        compact_end(d, status < 0 ? status : KVTC_ECANCELED);
        return;
    }
    if (!r || (r->state != R_LIVE && r->state != R_TOMB)) {
        compact_next(d); /* released while it was read */
        return;
    }
    wop *w = wop_new(d, c->buf + HDR, c->h.m.size, 1);
    if (!w) {
        compact_end(d, KVTC_ENOMEM);
        return;
    }
    w->h.kind = c->h.kind;
    w->h.m = c->h.m; /* seq kept: see the top of this file */
    w->arg = d;
    if (c->h.kind == KVTCD_SEG_TOMBSTONE)
        w->dcb = on_tomb_copied;
    else
        w->wcb = on_copy_written;
    int rc = append_common(d, w);
    if (rc < 0)
        compact_end(d, rc);
}

static void compact_verify_work(uv_work_t *req)
{
    kvtcd_disk *d = req->data;
    compactor *c = d->comp;
    kvtcd_disk_loc old = {.seg = c->victim->id, .payload_off = HDR,
                          .off = c->cur.off, .rec_len = c->cur.len};
    c->vstatus = verify_record(&old, c->buf, NULL, 0, c->cur.kind, &c->h);
}

static void compact_verify_done(uv_work_t *req, int status)
{
    kvtcd_disk *d = req->data;
    compact_verified(d, status < 0 ? KVTC_EIO : d->comp->vstatus);
}

static void on_compact_read(void *arg, int status)
{
    kvtcd_disk *d = arg;
    compactor *c = d->comp;
    c->victim->io--;
    if (status == KVTC_ENOENT)
        status = KVTC_ECORRUPT;
    if (status == 0 && c->cur.len >= VERIFY_OFFLOOP) {
        c->vreq.data = d;
        if (uv_queue_work(d->loop, &c->vreq, compact_verify_work,
                          compact_verify_done) == 0)
            return;
    }
    if (status == 0) {
        kvtcd_disk_loc old = {.seg = c->victim->id, .payload_off = HDR,
                              .off = c->cur.off, .rec_len = c->cur.len};
        status = verify_record(&old, c->buf, NULL, 0, c->cur.kind, &c->h);
    }
    compact_verified(d, status);
}

static void compact_next(kvtcd_disk *d)
{
    compactor *c = d->comp;
    seg *v = c->victim;
    if (d->in_api) {
        d->comp_deferred = 1;
        arm_defer(d);
        return;
    }
    if (c->stop || d->closing) {
        compact_end(d, KVTC_ECANCELED);
        return;
    }
    while (c->idx < v->nrec) {
        rec *r = &v->recs[c->idx++];
        if (r->state == R_LIVE ||
            (r->state == R_TOMB && !c->drop_tombs)) {
            c->cur = *r;
            if (r->len > c->buf_cap) {
                free(c->buf);
                c->buf = aligned_buf(d->align, r->len);
                c->buf_cap = c->buf ? r->len : 0;
                if (!c->buf) {
                    compact_end(d, KVTC_ENOMEM);
                    return;
                }
            }
            struct iovec iov[KVTCD_AIO_MAX_IOV];
            int n = 0;
            for (uint64_t at = 0; at < r->len && n < KVTCD_AIO_MAX_IOV;
                 at += MAX_IO_CHUNK, n++) {
                uint64_t l = r->len - at;
                iov[n] = (struct iovec){c->buf + at,
                                        l < MAX_IO_CHUNK ? l : MAX_IO_CHUNK};
            }
            int rc = kvtcd_aio_read(d->aio, v->fd, iov, n, r->off,
                                    on_compact_read, d);
            if (rc < 0) {
                compact_end(d, rc);
                return;
            }
            v->io++;
            d->rops++;
            return;
        }
    }
    compact_end(d, 0);
}

int kvtcd_disk_compact(kvtcd_disk *d, double min_dead_ratio,
                       kvtcd_disk_reloc_fn reloc, kvtcd_disk_done_cb done,
                       void *arg)
{
    if (!d || !reloc || !done || !(min_dead_ratio >= 0.0))
        return KVTC_EINVAL;
    if (d->closing)
        return KVTC_ECANCELED;
    if (d->comp)
        return KVTC_EBUSY;
    seg *best = NULL;
    double best_ratio = -1.0;
    for (size_t i = 0; i < d->nseg; i++) {
        seg *s = d->segs[i];
        if (!s->sealed || s->sealing || s == d->active || s->end == 0)
            continue;
        uint64_t keep = s->live + (i == 0 ? 0 : s->tomb);
        double ratio = (double)(s->end - keep) / (double)s->end;
        if (ratio > best_ratio) {
            best_ratio = ratio;
            best = s;
        }
    }
    if (!best || best_ratio < min_dead_ratio || best_ratio <= 0.0)
        return KVTC_ENOENT;
    compactor *c = calloc(1, sizeof *c);
    if (!c)
        return KVTC_ENOMEM;
    c->victim = best;
    c->drop_tombs = is_oldest(d, best);
    c->reloc = reloc;
    c->done = done;
    c->arg = arg;
    best->compacting = 1;
    d->comp = c;
    d->comp_deferred = 1;
    arm_defer(d);
    return 0;
}

/* ---- Recovery ------------------------------------------------------------ */

/* A record met at recovery, until survivors are chosen. */
typedef struct rhdr {
    const uint8_t *raw;         /* encoded header (in a sum or scan arena) */
    uint16_t len;
} rhdr;

typedef struct rseg {
    seg *s;
    uint8_t *arena;             /* .sum file or scanned headers */
    rhdr *hdrs;                 /* parallel to s->recs */
} rseg;

typedef struct wentry {
    uint64_t h0, h1;            /* XXH3-128 of tenant and key */
    uint64_t seq;
    uint32_t seg_idx, rec_idx;  /* +1; 0: empty */
} wentry;

static int scan_segment(kvtcd_disk *d, seg *s, uint64_t size, rseg *rs)
{
    uint8_t *win = aligned_buf(d->align, SCAN_WINDOW);
    size_t acap = 0, alen = 0;
    uint8_t *arena = NULL;
    int rc = 0, bad_run = 0;
    if (!win)
        return KVTC_ENOMEM;
    uint64_t win_off = 0, win_len = 0, off = 0;
    while (off + HDR <= size) {
        if (off < win_off || off + HDR > win_off + win_len) {
            win_off = off & ~((uint64_t)d->align - 1);
            ssize_t n;
            do
                n = pread(s->fd, win, SCAN_WINDOW, (off_t)win_off);
            while (n < 0 && errno == EINTR);
            if (n < 0) {
                KVTCD_ERROR("disk", "scan read failed seg=%u err=%s", s->id,
                            strerror(errno));
                rc = KVTC_EIO;
                break;
            }
            win_len = (uint64_t)n;
            if (win_off + win_len < off + HDR)
                break;
        }
        const uint8_t *p = win + (off - win_off);
        kvtcd_seg_hdr h;
        int prc = kvtcd_seg_hdr_parse(p, HDR, &h);
        if (prc == KVTC_EVERSION) {
            KVTCD_ERROR("disk", "segment of another format version seg=%u "
                        "off=%llu", s->id, (unsigned long long)off);
            rc = KVTC_EVERSION;
            break;
        }
        uint64_t rl = prc == 0 ? kvtcd_seg_hdr_rec_len(&h) : 0;
        if (prc == 0 && h.seg == s->id && h.off == off && rl) {
            if (off + rl > size) {
                /* Torn tail: the header made it, the payload did not. */
                d->st.corrupt++;
                break;
            }
            size_t hl = (size_t)kvtcd_seg_hdr_len(&h);
            if (alen + hl > acap) {
                size_t cap = acap ? acap * 2 : 65536;
                uint8_t *a = realloc(arena, cap);
                if (!a) {
                    rc = KVTC_ENOMEM;
                    break;
                }
                arena = a;
                acap = cap;
            }
            memcpy(arena + alen, p, hl);
            rec r = {.off = off, .len = rl, .seq = h.m.seq,
                     .hdr_pos = (uint32_t)alen, .hdr_len = (uint16_t)hl,
                     .kind = h.kind, .state = R_DEAD};
            alen += hl;
            if ((rc = rec_push(s, &r)) < 0)
                break;
            off += rl;
            bad_run = 0;
            continue;
        }
        /* Not a header here: a never-written block (zeros) is no news; a
         * damaged one is counted once, then resync 512 bytes at a time
         * (every record of any alignment starts at such an offset). */
        if (!bad_run && !kvtcd_seg_is_zero(p, HDR)) {
            d->st.corrupt++;
            bad_run = 1;
            KVTCD_WARN("disk", "damaged record skipped seg=%u off=%llu",
                       s->id, (unsigned long long)off);
        }
        off += HDR;
    }
    free(win);
    if (rc < 0) {
        free(arena);
        return rc;
    }
    rs->arena = arena;
    rs->hdrs = calloc(s->nrec ? s->nrec : 1, sizeof *rs->hdrs);
    if (!rs->hdrs)
        return KVTC_ENOMEM;
    for (size_t i = 0; i < s->nrec; i++)
        rs->hdrs[i] = (rhdr){arena + s->recs[i].hdr_pos, s->recs[i].hdr_len};
    return 0;
}

/* Records of s from its .sum; KVTC_ECORRUPT when the summary cannot be
 * trusted (the caller scans instead). */
static int load_sum(kvtcd_disk *d, seg *s, uint64_t size, rseg *rs)
{
    char path[4096];
    path_of(d, s->id, "sum", path, sizeof path);
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return KVTC_ENOENT;
    struct stat sb;
    uint8_t *buf = NULL;
    int rc = KVTC_ECORRUPT;
    /* A summary holds at most one header per aligned block of data. */
    if (fstat(fd, &sb) < 0 || sb.st_size <= 0 ||
        (uint64_t)sb.st_size > KVTCD_SEG_SUM_HEAD + 8 +
                                   (size / HDR + 1) * (HDR + 2))
        goto out;
    buf = malloc((size_t)sb.st_size);
    if (!buf) {
        rc = KVTC_ENOMEM;
        goto out;
    }
    size_t got = 0;
    while (got < (size_t)sb.st_size) {
        ssize_t n = read(fd, buf + got, (size_t)sb.st_size - got);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            goto out;
        got += (size_t)n;
    }
    uint32_t count;
    uint64_t data_end;
    if (kvtcd_seg_sum_verify(buf, got, s->id, &count, &data_end) < 0 ||
        data_end > size)
        goto out;
    rs->hdrs = calloc(count ? count : 1, sizeof *rs->hdrs);
    if (!rs->hdrs) {
        rc = KVTC_ENOMEM;
        goto out;
    }
    size_t pos = 0;
    uint64_t next_min = 0;
    for (uint32_t i = 0; i < count; i++) {
        const uint8_t *raw;
        size_t raw_len;
        kvtcd_seg_hdr h;
        if (kvtcd_seg_sum_next(buf, got, &pos, &raw, &raw_len, &h) < 0)
            goto bad;
        uint64_t rl = kvtcd_seg_hdr_rec_len(&h);
        if (h.seg != s->id || h.off < next_min || (h.off & (HDR - 1)) ||
            !rl || h.off + rl > data_end)
            goto bad;
        next_min = h.off + rl;
        rec r = {.off = h.off, .len = rl, .seq = h.m.seq,
                 .hdr_len = (uint16_t)raw_len, .kind = h.kind,
                 .state = R_DEAD};
        if (rec_push(s, &r) < 0) {
            rc = KVTC_ENOMEM;
            goto bad;
        }
        rs->hdrs[i] = (rhdr){raw, (uint16_t)raw_len};
    }
    rs->arena = buf;
    buf = NULL;
    rc = 0;
    goto out;
bad:
    free(rs->hdrs);
    rs->hdrs = NULL;
    s->nrec = 0;
out:
    free(buf);
    close(fd);
    return rc;
}

/* Write the .sum of a segment recovered by scanning, so the next start
 * reads it instead. Failure only costs that next start a scan. */
static void write_recovered_sum(kvtcd_disk *d, seg *s, const rseg *rs)
{
    kvtcd_seg_sum sum;
    int rc = kvtcd_seg_sum_init(&sum);
    for (size_t i = 0; rc == 0 && i < s->nrec; i++)
        rc = kvtcd_seg_sum_add(&sum, rs->hdrs[i].raw, rs->hdrs[i].len);
    if (rc == 0)
        rc = kvtcd_seg_sum_finish(&sum, s->id, s->end);
    if (rc == 0) {
        char path[4096], tmp[4200];
        path_of(d, s->id, "sum", path, sizeof path);
        snprintf(tmp, sizeof tmp, "%s.tmp", path);
        int e = write_file(d->dirfd, path, tmp, sum.buf, sum.len);
        if (e)
            KVTCD_WARN("disk", "cannot write summary seg=%u err=%s", s->id,
                       strerror(e));
    }
    kvtcd_seg_sum_free(&sum);
}

static void key_hash(const kvtcd_seg_hdr *h, uint64_t *h0, uint64_t *h1)
{
    uint8_t buf[KVTCD_DISK_TENANT_MAX + 1 + KVTCD_DISK_KEY_BYTES];
    size_t tl = strlen(h->m.tenant);
    memcpy(buf, h->m.tenant, tl);
    buf[tl] = 0;
    memcpy(buf + tl + 1, h->m.key, KVTCD_DISK_KEY_BYTES);
    XXH128_hash_t x = XXH3_128bits(buf, tl + 1 + KVTCD_DISK_KEY_BYTES);
    *h0 = x.low64;
    *h1 = x.high64;
}

typedef struct surv {
    uint64_t seq;
    uint32_t seg_idx, rec_idx;
} surv;

static int surv_cmp(const void *a, const void *b)
{
    const surv *x = a, *y = b;
    if (x->seq != y->seq)
        return x->seq < y->seq ? -1 : 1;
    if (x->seg_idx != y->seg_idx)
        return x->seg_idx < y->seg_idx ? -1 : 1;
    return x->rec_idx < y->rec_idx ? -1 : x->rec_idx > y->rec_idx;
}

static int recover(kvtcd_disk *d, kvtcd_disk_recover_fn each, void *arg)
{
    int rc = 0;
    DIR *dir = opendir(d->dir);
    uint32_t *ids = NULL;
    size_t nids = 0, capids = 0;
    rseg *rs = NULL;
    wentry *tab = NULL;
    surv *sv = NULL;
    if (!dir)
        return KVTC_EIO;
    struct dirent *de;
    while ((de = readdir(dir))) {
        uint32_t id;
        size_t nl = strlen(de->d_name);
        if (nl > 8 && strcmp(de->d_name + nl - 8, ".sum.tmp") == 0) {
            unlinkat(d->dirfd, de->d_name, 0); /* an interrupted seal */
            continue;
        }
        if (kvtcd_seg_name_parse(de->d_name, "kvs", &id) < 0)
            continue;
        if (nids == capids) {
            size_t cap = capids ? capids * 2 : 64;
            uint32_t *n = realloc(ids, cap * sizeof *n);
            if (!n) {
                rc = KVTC_ENOMEM;
                goto out;
            }
            ids = n;
            capids = cap;
        }
        ids[nids++] = id;
    }
    closedir(dir);
    dir = NULL;
    rs = calloc(nids ? nids : 1, sizeof *rs);
    if (!rs) {
        rc = KVTC_ENOMEM;
        goto out;
    }
    size_t total = 0;
    for (size_t i = 0; i < nids; i++) {
        char path[4096];
        path_of(d, ids[i], "kvs", path, sizeof path);
        int fd = open(path, O_RDWR | O_CLOEXEC | (d->direct ? O_DIRECT : 0));
        struct stat sb;
        if (fd < 0 || fstat(fd, &sb) < 0) {
            KVTCD_ERROR("disk", "cannot open segment path=%s err=%s", path,
                        strerror(errno));
            if (fd >= 0)
                close(fd);
            rc = KVTC_EIO;
            goto out;
        }
        seg *s = seg_new(ids[i], fd);
        if (!s || seg_insert(d, s) < 0) {
            if (s)
                seg_free(s);
            else
                close(fd);
            rc = KVTC_ENOMEM;
            goto out;
        }
        uint64_t size = (uint64_t)sb.st_size;
        s->end = size;
        s->full = s->sealed = 1;
        d->used += size;
        if (ids[i] >= d->next_id)
            d->next_id = ids[i] + 1;
    }
    /* seg_insert sorted them: recover in id order. */
    for (size_t i = 0; i < d->nseg; i++) {
        seg *s = d->segs[i];
        rs[i].s = s;
        int lrc = load_sum(d, s, s->end, &rs[i]);
        if (lrc == KVTC_ENOMEM) {
            rc = lrc;
            goto out;
        }
        if (lrc < 0) {
            if (lrc == KVTC_ECORRUPT)
                KVTCD_WARN("disk", "summary rejected, scanning seg=%u",
                           s->id);
            rc = scan_segment(d, s, s->end, &rs[i]);
            if (rc < 0)
                goto out;
            write_recovered_sum(d, s, &rs[i]);
        }
        total += s->nrec;
    }

    /* Newest seq per (tenant, key) wins; equal seqs are a compaction copy
     * and its original (same bytes): the later segment wins. */
    size_t cap = 16;
    while (cap < total * 2)
        cap *= 2;
    tab = calloc(cap, sizeof *tab);
    if (!tab) {
        rc = KVTC_ENOMEM;
        goto out;
    }
    for (size_t i = 0; i < d->nseg; i++) {
        seg *s = d->segs[i];
        for (size_t j = 0; j < s->nrec; j++) {
            kvtcd_seg_hdr h;
            if (kvtcd_seg_hdr_parse(rs[i].hdrs[j].raw, rs[i].hdrs[j].len,
                                    &h) < 0) {
                rc = KVTC_ECORRUPT; /* verified above: cannot happen */
                goto out;
            }
            if (h.m.seq > d->seq)
                d->seq = h.m.seq;
            uint64_t h0, h1;
            key_hash(&h, &h0, &h1);
            size_t k = (size_t)h0 & (cap - 1);
            while (tab[k].seg_idx &&
                   (tab[k].h0 != h0 || tab[k].h1 != h1))
                k = (k + 1) & (cap - 1);
            if (!tab[k].seg_idx || h.m.seq >= tab[k].seq)
                tab[k] = (wentry){h0, h1, h.m.seq, (uint32_t)i + 1,
                                  (uint32_t)j + 1};
        }
    }
    size_t nsv = 0;
    sv = malloc((total ? total : 1) * sizeof *sv);
    if (!sv) {
        rc = KVTC_ENOMEM;
        goto out;
    }
    for (size_t k = 0; k < cap; k++) {
        if (!tab[k].seg_idx)
            continue;
        seg *s = d->segs[tab[k].seg_idx - 1];
        if (s->recs[tab[k].rec_idx - 1].kind == KVTCD_SEG_RECORD)
            sv[nsv++] = (surv){tab[k].seq, tab[k].seg_idx - 1,
                               tab[k].rec_idx - 1};
    }
    free(tab);
    tab = NULL;
    for (size_t i = 0; i < d->nseg; i++) {
        seg *s = d->segs[i];
        for (size_t j = 0; j < s->nrec; j++) {
            if (s->recs[j].kind == KVTCD_SEG_TOMBSTONE) {
                s->recs[j].state = R_TOMB;
                s->tomb += s->recs[j].len;
            }
        }
    }
    qsort(sv, nsv, sizeof *sv, surv_cmp);
    for (size_t i = 0; i < nsv; i++) {
        seg *s = d->segs[sv[i].seg_idx];
        rec *r = &s->recs[sv[i].rec_idx];
        kvtcd_seg_hdr h;
        const rhdr *raw = &rs[sv[i].seg_idx].hdrs[sv[i].rec_idx];
        if (kvtcd_seg_hdr_parse(raw->raw, raw->len, &h) < 0)
            continue;
        kvtcd_disk_loc loc = {.seg = s->id, .payload_off = HDR,
                              .off = r->off, .rec_len = r->len};
        r->state = R_LIVE;
        s->live += r->len;
        d->live += r->len;
        if (each && each(arg, &h.m, &loc) != 0) {
            r->state = R_DEAD;
            s->live -= r->len;
            d->live -= r->len;
            continue;
        }
        d->st.recovered++;
    }
out:
    if (dir)
        closedir(dir);
    free(ids);
    free(tab);
    free(sv);
    for (size_t i = 0; rs && i < nids; i++) {
        free(rs[i].arena);
        free(rs[i].hdrs);
    }
    free(rs);
    return rc;
}

/* ---- Open, close, stats -------------------------------------------------- */

/* Direct-I/O alignment of files in d->dir: from statx where the kernel
 * reports it, else 4096. Also proves O_DIRECT works there. */
static int probe_align(kvtcd_disk *d)
{
    if (!d->direct) {
        d->align = 512;
        d->mem_align = 1;
        return 0;
    }
    char path[4096];
    snprintf(path, sizeof path, "%s/.probe-%ld", d->dir, (long)getpid());
    int fd = open(path, O_RDWR | O_CREAT | O_TRUNC | O_DIRECT | O_CLOEXEC,
                  0600);
    if (fd < 0) {
        KVTCD_ERROR("disk", "O_DIRECT refused dir=%s err=%s", d->dir,
                    strerror(errno));
        return KVTC_EIO;
    }
    size_t align = 4096, mem = 4096, blk = 0;
    struct statx sx;
    memset(&sx, 0, sizeof sx);
#ifdef STATX_DIOALIGN
    if (statx(fd, "", AT_EMPTY_PATH, STATX_BASIC_STATS | STATX_DIOALIGN,
              &sx) == 0 &&
        (sx.stx_mask & STATX_DIOALIGN) && sx.stx_dio_offset_align) {
        align = sx.stx_dio_offset_align;
        mem = sx.stx_dio_mem_align ? sx.stx_dio_mem_align : align;
    }
    blk = sx.stx_blksize;
#endif
    /* Whole file-system blocks: ext4 takes direct writes that are not
     * block-aligned one at a time (its unaligned-DIO path), which cost a
     * third of the write throughput here with 512-byte alignment. */
    if (blk > align && blk <= MAX_ALIGN && !(blk & (blk - 1)))
        align = blk;
    close(fd);
    unlink(path);
    /* Records start with a 512-byte header area: never align below it. */
    if (align < HDR)
        align = HDR;
    if (mem > align)
        align = mem;
    if (align > MAX_ALIGN || (align & (align - 1)) || (mem & (mem - 1))) {
        KVTCD_ERROR("disk", "unsupported direct-I/O alignment %zu", align);
        return KVTC_ENOTSUP;
    }
    d->align = align;
    d->mem_align = mem;
    return 0;
}

static void disk_free(kvtcd_disk *d)
{
    for (size_t i = 0; i < d->nseg; i++)
        seg_free(d->segs[i]);
    while (d->zombies) {
        seg *s = d->zombies;
        d->zombies = s->znext;
        seg_free(s);
    }
    free(d->segs);
    pool_free(&d->small);
    pool_free(&d->large);
    if (d->dirfd >= 0)
        close(d->dirfd);
    free(d->dir);
    free(d);
}

int kvtcd_disk_open(uv_loop_t *loop, const kvtcd_disk_params *p,
                    kvtcd_disk_recover_fn each, void *arg,
                    kvtcd_disk **out)
{
    if (!loop || !p || !out || !p->dir || !*p->dir || p->capacity == 0 ||
        p->io_mode < KVTCD_DISK_IO_AUTO || p->io_mode > KVTCD_DISK_IO_THREADS ||
        strlen(p->dir) > 3000)
        return KVTC_EINVAL;
    if (mkdir(p->dir, 0755) < 0 && errno != EEXIST) {
        KVTCD_ERROR("disk", "cannot create dir=%s err=%s", p->dir,
                    strerror(errno));
        return KVTC_EIO;
    }
    kvtcd_disk *d = calloc(1, sizeof *d);
    if (!d)
        return KVTC_ENOMEM;
    int rc = KVTC_ENOMEM;
    d->loop = loop;
    d->dirfd = -1;
    d->direct = p->direct;
    d->capacity = p->capacity;
    d->next_id = 1;
    d->dir = strdup(p->dir);
    d->small = (bpool){.max = SMALL_MAX, .bytes = SMALL_BYTES};
    d->large = (bpool){.max = LARGE_MAX, .bytes = LARGE_BYTES};
    d->small.free = calloc(SMALL_MAX, sizeof(uint8_t *));
    d->large.free = calloc(LARGE_MAX, sizeof(uint8_t *));
    if (!d->dir || !d->small.free || !d->large.free)
        goto fail;
    d->dirfd = open(p->dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (d->dirfd < 0) {
        KVTCD_ERROR("disk", "cannot open dir=%s err=%s", p->dir,
                    strerror(errno));
        rc = KVTC_EIO;
        goto fail;
    }
    if ((rc = probe_align(d)) < 0)
        goto fail;
    uint64_t sb = p->segment_bytes;
    if (!sb) {
        sb = p->capacity / 8;
        if (sb > (256u << 20))
            sb = 256u << 20;
    }
    if (sb < (1u << 20))
        sb = 1u << 20;
    d->seg_bytes = round_up(sb, d->align);

    double t0 = now_s();
    if ((rc = recover(d, each, arg)) < 0)
        goto fail;
    d->st.recover_seconds = now_s() - t0;

    /* Handles last: a failure above frees everything synchronously. */
    rc = kvtcd_aio_create(loop, p->io_mode, p->queue_depth, &d->aio);
    if (rc < 0)
        goto fail;
    uv_timer_init(loop, &d->defer);
    d->defer.data = d;
    /* Segments nothing survived in go now (through the loop). */
    for (int again = 1; again;) {
        again = 0;
        for (size_t i = 0; i < d->nseg && !again; i++) {
            size_t before = d->nseg;
            maybe_unlink(d, d->segs[i]);
            again = d->nseg != before;
        }
    }
    d->st.segments = d->nseg;
    if (d->used > d->capacity)
        KVTCD_WARN("disk", "store holds more than its capacity used=%llu "
                   "capacity=%llu", (unsigned long long)d->used,
                   (unsigned long long)d->capacity);
    KVTCD_INFO("disk", "opened dir=%s backend=%s align=%zu segments=%zu "
               "recovered=%llu corrupt=%llu seconds=%.3f", d->dir,
               kvtcd_aio_backend(d->aio), d->align, d->nseg,
               (unsigned long long)d->st.recovered,
               (unsigned long long)d->st.corrupt, d->st.recover_seconds);
    *out = d;
    return 0;
fail:
    disk_free(d);
    return rc;
}

static void on_timer_closed(uv_handle_t *h)
{
    kvtcd_disk *d = h->data;
    void (*closed)(void *) = d->closed;
    void *arg = d->closed_arg;
    disk_free(d);
    if (closed)
        closed(arg);
}

static void on_aio_closed(void *arg)
{
    kvtcd_disk *d = arg;
    d->aio = NULL;
    uv_close((uv_handle_t *)&d->defer, on_timer_closed);
}

static void try_close(kvtcd_disk *d)
{
    if (!d->closing || d->torn_down || d->in_api || d->wops || d->rops ||
        d->works || d->comp || d->deferred || d->rolling)
        return;
    /* Seal what is open, so the next start reads summaries, not data. */
    for (size_t i = 0; i < d->nseg; i++) {
        seg *s = d->segs[i];
        if (!s->sealed) {
            s->full = 1;
            maybe_seal(d, s);
        }
    }
    if (d->works)
        return;
    d->torn_down = 1;
    uv_timer_stop(&d->defer);
    kvtcd_aio_close(d->aio, on_aio_closed, d);
}

void kvtcd_disk_close(kvtcd_disk *d, void (*closed)(void *arg), void *arg)
{
    if (!d || d->closing)
        return;
    d->closing = 1;
    d->closed = closed;
    d->closed_arg = arg;
    d->in_api++;
    fail_roll_waiters(d, KVTC_ECANCELED);
    for (wop *w; (w = d->bwait_head);) {
        KVTC_FIFO_POP(d->bwait_head, d->bwait_tail, next);
        w->next = NULL;
        w->waiting = 0;
        w->status = KVTC_ECANCELED;
        if (!w->inflight)
            wop_finish(w, KVTC_ECANCELED);
        /* else its last piece finishes it */
    }
    if (d->comp)
        d->comp->stop = 1;
    d->in_api--;
    arm_defer(d);
}

void kvtcd_disk_get_stats(const kvtcd_disk *d, kvtcd_disk_stats *out)
{
    *out = d->st;
    out->capacity = d->capacity;
    out->used = d->used;
    out->live = d->live;
    out->segments = d->nseg;
}

const char *kvtcd_disk_backend(const kvtcd_disk *d)
{
    return kvtcd_aio_backend(d->aio);
}

size_t kvtcd_disk_align(const kvtcd_disk *d)
{
    return d->align;
}
