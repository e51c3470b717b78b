/* Disk tier measurements of kvtc-bench-tiers: append/read throughput and
 * restart (recovery + index rebuild) time, through the kvtcd_disk API on a
 * real libuv loop, as kvtcd drives it. */
#include "bti.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <uv.h>
#include <xxhash.h>

#include "index.h"
#include "kvtc_errors.h"
#include "store_disk.h"

/* One operation slot: depth of them keep the store busy. */
struct slot {
    struct run *r;
    uint64_t i;     /* record number */
    uint8_t *buf;   /* read destination (aligned) */
};

struct run {
    uv_loop_t *loop;
    kvtcd_disk *d;
    const uint8_t *payload;
    size_t len;
    uint64_t checksum;
    uint64_t n, next, done;
    int err;
    kvtcd_disk_loc *locs;
    kvtcd_disk_meta meta;
};

static void key_of(uint64_t i, uint8_t key[KVTCD_DISK_KEY_BYTES])
{
    /* Distinct, spread keys (the store does not care, an index would). */
    uint64_t h[4] = {XXH3_64bits_withSeed(&i, sizeof i, 1), XXH3_64bits_withSeed(&i, sizeof i, 2),
                     XXH3_64bits_withSeed(&i, sizeof i, 3), i};
    memcpy(key, h, KVTCD_DISK_KEY_BYTES);
}

static void closed_cb(void *arg)
{
    *(int *)arg = 1;
}

/* Close the store and let the loop finish every handle. */
static void close_store(uv_loop_t *loop, kvtcd_disk *d)
{
    int closed = 0;
    kvtcd_disk_close(d, closed_cb, &closed);
    while (!closed)
        uv_run(loop, UV_RUN_ONCE);
    uv_run(loop, UV_RUN_NOWAIT);
}

static int keep_all(void *arg, const kvtcd_disk_meta *m, const kvtcd_disk_loc *loc)
{
    (void)m;
    (void)loc;
    ++*(uint64_t *)arg;
    return 0;
}

static void append_next(struct slot *s);

/* One op of s completed: counted, the run keeps its first error. Returns
 * status (nonzero: s stops). */
static int slot_done(struct slot *s, int status)
{
    struct run *r = s->r;
    r->done++;
    if (status && !r->err)
        r->err = status;
    return status;
}

static void appended(void *arg, int status, const kvtcd_disk_loc *loc)
{
    struct slot *s = arg;
    if (slot_done(s, status))
        return;
    if (s->r->locs)
        s->r->locs[s->i] = *loc;
    append_next(s);
}

static void append_next(struct slot *s)
{
    struct run *r = s->r;
    if (r->err || r->next >= r->n)
        return;
    s->i = r->next++;
    key_of(s->i, r->meta.key);
    int rc = kvtcd_disk_append(r->d, &r->meta, r->payload, r->len, 0, appended, s);
    if (rc) {
        r->err = rc;
        r->done++;
    }
}

static void read_next(struct slot *s);

static void readback(void *arg, int status)
{
    struct slot *s = arg;
    if (!slot_done(s, status))
        read_next(s);
}

static void read_next(struct slot *s)
{
    struct run *r = s->r;
    uint8_t key[KVTCD_DISK_KEY_BYTES];
    if (r->err || r->next >= r->n)
        return;
    s->i = r->next++;
    key_of(s->i, key);
    int rc = kvtcd_disk_read(r->d, &r->locs[s->i], s->buf, key, r->checksum, readback, s);
    if (rc) {
        r->err = rc;
        r->done++;
    }
}

/* Start depth slots with start(), run the loop until all n are done. */
static int drive(struct run *r, struct slot *slots, unsigned depth, void (*start)(struct slot *))
{
    r->next = r->done = 0;
    r->err = 0;
    for (unsigned k = 0; k < depth; k++) {
        slots[k].r = r;
        start(&slots[k]);
    }
    while (r->done < r->n && !r->err)
        uv_run(r->loop, UV_RUN_ONCE);
    /* After an error, let the ops in flight finish before anything is freed. */
    while (r->done < r->next)
        uv_run(r->loop, UV_RUN_ONCE);
    return r->err;
}

static void meta_init(kvtcd_disk_meta *m, size_t len, uint64_t checksum)
{
    memset(m, 0, sizeof *m);
    snprintf(m->tenant, sizeof m->tenant, "bench");
    m->size = len;
    m->checksum = checksum;
}

int bti_disk_tput(const char *parent, int io_mode, size_t rec, uint64_t total, unsigned depth,
                  double *write_mb_s, double *read_mb_s, char backend[16])
{
    char dir[512];
    uv_loop_t loop;
    struct run r = {.loop = &loop, .len = rec};
    struct slot *slots = calloc(depth, sizeof *slots);
    uint8_t *payload = NULL;
    int rc = bti_mkdtemp(parent, "tput", dir);
    if (rc) {
        free(slots);
        return rc;
    }
    uv_loop_init(&loop);
    r.n = total / rec ? total / rec : 1;
    r.locs = calloc(r.n, sizeof *r.locs);
    if (!slots || !r.locs || posix_memalign((void **)&payload, 4096, rec)) {
        rc = KVTC_ENOMEM;
        goto cleanup;
    }
    /* Incompressible bytes (not that the disk cares). */
    for (size_t i = 0; i < rec; i += 8) {
        uint64_t v = XXH3_64bits_withSeed(&i, sizeof i, 7);
        memcpy(payload + i, &v, rec - i < 8 ? rec - i : 8);
    }
    r.payload = payload;
    r.checksum = XXH3_64bits(payload, rec);
    meta_init(&r.meta, rec, r.checksum);
    kvtcd_disk_params p = {.dir = dir, .capacity = r.n * (rec + (64u << 10)) + (512ull << 20),
                           .io_mode = io_mode, .direct = 1};
    uint64_t recovered = 0;
    rc = kvtcd_disk_open(&loop, &p, keep_all, &recovered, &r.d);
    if (rc)
        goto cleanup;
    snprintf(backend, 16, "%s", kvtcd_disk_backend(r.d));

    double t0 = bti_now();
    rc = drive(&r, slots, depth, append_next);
    double t1 = bti_now();
    if (rc) {
        fprintf(stderr, "bench-tiers: append: %s\n", kvtc_strerror(rc));
        goto close;
    }
    *write_mb_s = (double)r.n * (double)rec / (t1 - t0) / 1e6;

    size_t align = kvtcd_disk_align(r.d);
    for (unsigned k = 0; k < depth; k++)
        if (posix_memalign((void **)&slots[k].buf, align, r.locs[0].rec_len)) {
            rc = KVTC_ENOMEM;
            goto close;
        }
    t0 = bti_now();
    rc = drive(&r, slots, depth, read_next);
    t1 = bti_now();
    if (rc) {
        fprintf(stderr, "bench-tiers: read: %s\n", kvtc_strerror(rc));
        goto close;
    }
    /* The last read's bytes are the payload: the store served what it took. */
    if (memcmp(slots[0].buf + r.locs[slots[0].i].payload_off, payload, rec)) {
        fprintf(stderr, "bench-tiers: read back different bytes\n");
        rc = KVTC_ECORRUPT;
        goto close;
    }
    *read_mb_s = (double)r.n * (double)rec / (t1 - t0) / 1e6;
close:
    close_store(&loop, r.d);
cleanup:
    for (unsigned k = 0; slots && k < depth; k++)
        free(slots[k].buf);
    free(slots);
    free(payload);
    free(r.locs);
    uv_loop_close(&loop);
    bti_rmdir(dir);
    return rc;
}

/* ---- Restart ------------------------------------------------------------ */

struct rebuild {
    kvtcd_index *ix;
    uint32_t ns;
    uint64_t n;
    int err;
};

/* What kvtcd's recovery callback does with a record: an index entry with a
 * disk copy only. */
static int rebuild_one(void *arg, const kvtcd_disk_meta *m, const kvtcd_disk_loc *loc)
{
    struct rebuild *b = arg;
    kvtcd_entry t;
    memset(&t, 0, sizeof t);
    t.ns = b->ns;
    memcpy(t.key, m->key, KVTCD_KEY_BYTES);
    t.size = m->size;
    t.checksum = m->checksum;
    t.disk_state = KVTCD_DISK_CLEAN;
    t.dloc = *loc;
    int rc = kvtcd_index_insert(b->ix, &t, NULL, 0, 1, NULL);
    if (rc && !b->err)
        b->err = rc;
    b->n++;
    return rc;
}

static const kvtcd_tier_ops no_ops;

/* Open dir, rebuilding a fresh index; time it. */
static int reopen(uv_loop_t *loop, const kvtcd_disk_params *p, double *open_s, double *rec_s,
                  uint64_t *recovered)
{
    kvtcd_tier host = {.ops = &no_ops, .name = "host"};
    kvtcd_index ix;
    kvtcd_disk *d = NULL;
    struct rebuild b = {.ix = &ix};
    int rc = kvtcd_index_init(&ix, &host);
    if (rc)
        return rc;
    kvtcd_index_namespace(&ix, "bench", &b.ns);
    bti_uncache(p->dir);
    double t0 = bti_now();
    rc = kvtcd_disk_open(loop, p, rebuild_one, &b, &d);
    double t1 = bti_now();
    if (!rc) {
        kvtcd_disk_stats st;
        kvtcd_disk_get_stats(d, &st);
        *open_s = t1 - t0;
        *rec_s = st.recover_seconds;
        *recovered = ix.count;
        close_store(loop, d);
    }
    kvtcd_index_fini(&ix);
    return rc ? rc : b.err;
}

static void drop_sums(const char *dir)
{
    char cmd[600];
    /* Our own scratch dir (mkdtemp): a fixed pattern only. */
    snprintf(cmd, sizeof cmd, "rm -f '%s'/*.sum", dir);
    if (!strchr(dir, '\'') && system(cmd) != 0)
        fprintf(stderr, "bench-tiers: could not remove .sum files\n");
}

int bti_restart(const char *parent, uint64_t n, size_t payload_len, unsigned depth,
                struct bti_restart_res *out)
{
    char dir[512];
    uv_loop_t loop;
    struct run r = {.loop = &loop, .len = payload_len, .n = n};
    struct slot *slots = calloc(depth, sizeof *slots);
    uint8_t *payload = calloc(1, payload_len ? payload_len : 1);
    int rc = bti_mkdtemp(parent, "restart", dir);
    if (rc) {
        free(slots);
        free(payload);
        return rc;
    }
    memset(out, 0, sizeof *out);
    out->n = n;
    uv_loop_init(&loop);
    if (!slots || !payload) {
        rc = KVTC_ENOMEM;
        goto cleanup;
    }
    memset(payload, 0xa5, payload_len);
    r.payload = payload;
    r.checksum = XXH3_64bits(payload, payload_len);
    meta_init(&r.meta, payload_len, r.checksum);
    kvtcd_disk_params p = {.dir = dir, .capacity = n * 8192 + (1ull << 30), .direct = 1};
    uint64_t none = 0;
    rc = kvtcd_disk_open(&loop, &p, keep_all, &none, &r.d);
    if (rc)
        goto cleanup;
    snprintf(out->backend, sizeof out->backend, "%s", kvtcd_disk_backend(r.d));
    double t0 = bti_now();
    rc = drive(&r, slots, depth, append_next);
    out->write_s = bti_now() - t0;
    kvtcd_disk_stats st;
    kvtcd_disk_get_stats(r.d, &st);
    out->disk_bytes = st.used;
    close_store(&loop, r.d);
    if (rc) {
        fprintf(stderr, "bench-tiers: restart: append: %s\n", kvtc_strerror(rc));
        goto cleanup;
    }
    rc = reopen(&loop, &p, &out->open_sum_s, &out->recover_sum_s, &out->recovered_sum);
    if (rc)
        goto cleanup;
    drop_sums(dir);
    rc = reopen(&loop, &p, &out->open_scan_s, &out->recover_scan_s, &out->recovered_scan);
cleanup:
    free(slots);
    free(payload);
    uv_loop_close(&loop);
    bti_rmdir(dir);
    return rc;
}
