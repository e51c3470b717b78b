/* tiers.c - the tier policy (see tiers.h and docs/tiers.md).
 *
 * Asynchronous work never keeps a pointer to an index entry: entries may
 * be evicted, replaced or deleted while a write or read is in flight. A
 * job names its entry by (namespace, key, gen) and looks it up again when
 * it completes; a different gen means the version it worked for is gone,
 * and the job undoes its own effect (releases the record it wrote, frees
 * the GPU extent it filled).
 *
 * Every append and tombstone goes through one FIFO (t->q), so records of
 * one key reach the store in the order the requests came: a tombstone
 * queued after a put's record gets the higher sequence number.
 *
 * Durable puts and deletes take effect in memory when their record is
 * synced, and up to MAX_APPENDS complete in any order. So each one gets a
 * ticket when it is accepted (acceptance order = queue order = the order
 * of their sequence numbers on disk), and a per-key state (kstate, kept
 * while any of the key's durable ops is pending) remembers the ticket of
 * the latest one that took effect. A completion older than that changes
 * nothing in memory (a put releases its record), since the disk already
 * lets the newer record or tombstone win: memory and disk agree, and both
 * follow the order the requests were accepted in. */
#include "tiers.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <time.h>

#include <xxhash.h>

#include "kvtc_errors.h"
#include "log.h"
#include "store_gpu.h"
#include "store_host.h"

#define MAX_APPENDS 16          /* appends + tombstones in flight */
#define MAX_GPU_COPIES 16       /* host -> GPU demotions in flight */
#define HOST_HIGH_PCT 90        /* demotion starts above ... */
#define HOST_LOW_PCT 80         /* ... and stops below */
#define DISK_HIGH_PCT 90        /* disk eviction (live bytes) */
#define DISK_LOW_PCT 85
#define DISK_PRESSURE_PCT 90    /* segment bytes: compact eagerly */
#define MAINT_MS 100
#define COMPACT_MS 2000
#define DEGRADE_MS 5000
#define SPACE_WAIT_MS 2000      /* a durable write waits this for room */
#define DEMOTE_SCAN_MAX 4096    /* entries one pass looks at */
#define MIN_DEFAULT_DISK (64ull << 20)
#define KSTATE_BUCKETS 4096     /* keys with durable ops pending */

enum job_kind { J_CACHE = 0, J_DURABLE = 1, J_TOMB = 2 };

typedef struct wjob {
    struct wjob *prev, *next;
    kvtcd_tiers *t;
    int kind;
    uint32_t ns;
    uint8_t key[KVTCD_KEY_BYTES];
    uint64_t gen;               /* J_CACHE: the version */
    kvtcd_blob *blob;           /* J_DURABLE: held from the start;
                                   J_CACHE: while in flight */
    size_t off;
    uint64_t size;
    kvtcd_entry *tmpl;          /* J_DURABLE: inserted once on disk */
    uint64_t ticket;            /* durable: acceptance order (0: cache) */
    int compensating;           /* a tombstone for a record memory lost */
    uint64_t deadline_ms;       /* J_DURABLE, J_TOMB: stop waiting for room */
    uint32_t full_tries;        /* appends refused KVTC_EFULL so far */
    int sync;
    int *rc;
    kvtcd_tiers_done_fn done;
    void *arg;
} wjob;

/* A read from the GPU or disk into a host blob. */
typedef struct ljob {
    kvtcd_tiers *t;
    uint32_t ns;
    uint8_t key[KVTCD_KEY_BYTES];
    uint64_t gen;
    uint64_t checksum;
    uint64_t size;
    int from;                   /* KVTCD_T_GPU or KVTCD_T_DISK */
    kvtcd_disk_loc dloc;
    kvtcd_gpu_loc gloc;
    kvtcd_blob *blob;
    size_t off;
    kvtcd_tiers_load_fn cb;
    void *arg;
} ljob;

/* A host -> GPU copy (demotion). */
typedef struct gjob {
    kvtcd_tiers *t;
    uint32_t ns;
    uint8_t key[KVTCD_KEY_BYTES];
    uint64_t gen;
    kvtcd_gpu_loc loc;
    kvtcd_blob *blob;
} gjob;

/* A key with durable ops accepted and not finished. */
typedef struct kstate {
    struct kstate *next;
    uint32_t ns;
    uint8_t key[KVTCD_KEY_BYTES];
    uint32_t pending;           /* its durable ops not finished */
    uint64_t latest;            /* ticket of the latest accepted */
    int latest_tomb;            /* ... and it is a delete */
    uint64_t applied;           /* ticket of the latest that took effect */
    int owe_tomb;               /* a record of the key is on disk that
                                   memory does not hold (its insert
                                   failed): a later record or a tombstone
                                   must cover it */
} kstate;

struct kvtcd_tiers {
    uv_loop_t *loop;
    kvtcd_index *ix;
    uint64_t clock_base_ms;
    int durable;
    kvtcd_disk *d;
    kvtcd_gpu *g;
    uint64_t gpu_capacity;
    uint64_t gpu_host_registered; /* bytes of the host region page-locked */
    /* write FIFO */
    wjob *q_head, *q_tail;
    uint64_t queued;            /* jobs in q */
    uint32_t appends;           /* in flight */
    uint64_t dirty;             /* entries QUEUED or WRITING */
    uint64_t busy;              /* durable puts, tombstones, loads */
    uint64_t next_ticket;
    kstate **kst;               /* KSTATE_BUCKETS chains */
    int pumping;
    int space_wait;             /* head job found the disk full */
    uint64_t degraded_until;    /* loop ms; 0: healthy */
    int degraded_rc;
    int degraded_logged;
    uint32_t gpu_copies;        /* demotions in flight */
    int compacting;
    uint64_t compact_rounds;    /* eager rounds left */
    /* timers */
    uv_timer_t maint, compact;
    int kicked;
    /* shutdown */
    int closing;
    int close_pending;
    void (*closed)(void *arg);
    void *closed_arg;
};

static uint64_t now_ms(const kvtcd_tiers *t)
{
    return uv_now(t->loop) - t->clock_base_ms;
}

static uint64_t wall_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

/* The status a client sees for a failed disk operation. */
static int map_disk_err(int status)
{
    switch (status) {
    case 0: return 0;
    case KVTC_ENOSPC:
    case KVTC_EFULL: return KVTC_EFULL;
    case KVTC_ECANCELED: return KVTC_EBUSY;
    case KVTC_ECORRUPT: return KVTC_ECORRUPT;
    case KVTC_ENOMEM: return KVTC_ENOMEM;
    default: return KVTC_EIO;
    }
}

static int degraded(const kvtcd_tiers *t)
{
    return t->degraded_until && now_ms(t) < t->degraded_until;
}

/* The entry a job worked for, if that version is still stored. */
static kvtcd_entry *find_gen(kvtcd_tiers *t, uint32_t ns, const uint8_t *key,
                             uint64_t gen)
{
    kvtcd_entry *e = kvtcd_index_find(t->ix, ns, key, now_ms(t));
    return e && e->gen == gen ? e : NULL;
}

static int find_ns(const kvtcd_index *ix, const char *tenant, uint32_t *ns)
{
    for (uint32_t i = 0; i < ix->n_ns; i++) {
        if (strcmp(ix->ns_names[i], tenant) == 0) {
            *ns = i;
            return 0;
        }
    }
    return KVTC_ENOENT;
}

static void meta_of(kvtcd_tiers *t, const kvtcd_entry *e, kvtcd_disk_meta *m)
{
    memset(m, 0, sizeof *m);
    const char *tenant = kvtcd_index_ns_name(t->ix, e->ns);
    snprintf(m->tenant, sizeof m->tenant, "%s", tenant ? tenant : "");
    memcpy(m->key, e->key, KVTCD_KEY_BYTES);
    memcpy(m->parent, e->parent, KVTCD_KEY_BYTES);
    m->has_parent = e->has_parent;
    m->has_layout = e->has_layout;
    m->encoding = e->encoding;
    m->first_pos = e->first_pos;
    m->n_tokens = e->n_tokens;
    m->chunk_flags = e->chunk_flags;
    m->layout = e->layout;
    m->size = e->size;
    m->checksum = e->checksum;
    if (e->expire_ms) {
        /* Loop time does not survive a restart; wall-clock time does. */
        uint64_t now = now_ms(t);
        uint64_t left = e->expire_ms > now ? e->expire_ms - now : 1;
        m->expire_unix_ms = wall_ms() + left;
    }
}

/* ---- the drop hook ----------------------------------------------------- */

/* A stored version goes away: its GPU extent and disk record become free.
 * Copies still being written are undone by their jobs (gen no longer
 * matches). */
static void on_drop(void *arg, kvtcd_entry *e)
{
    kvtcd_tiers *t = arg;
    if (e->disk_state == KVTCD_DISK_QUEUED || e->disk_state == KVTCD_DISK_WRITING)
        t->dirty--;
    if (t->closing)
        return; /* the stores are going: recovery sorts the records out */
    if (e->disk_state == KVTCD_DISK_CLEAN && t->d)
        kvtcd_disk_release(t->d, &e->dloc);
    if (e->gpu_state == KVTCD_GPU_VALID && t->g)
        kvtcd_gpu_free(t->g, &e->gloc);
}

/* ---- write FIFO -------------------------------------------------------- */

static void q_push(kvtcd_tiers *t, wjob *j, int front)
{
    j->prev = j->next = NULL;
    if (!t->q_head) {
        t->q_head = t->q_tail = j;
    } else if (front) {
        j->next = t->q_head;
        t->q_head->prev = j;
        t->q_head = j;
    } else {
        j->prev = t->q_tail;
        t->q_tail->next = j;
        t->q_tail = j;
    }
    t->queued++;
}

static void q_remove(kvtcd_tiers *t, wjob *j)
{
    if (j->prev)
        j->prev->next = j->next;
    else
        t->q_head = j->next;
    if (j->next)
        j->next->prev = j->prev;
    else
        t->q_tail = j->prev;
    j->prev = j->next = NULL;
    t->queued--;
}

static void job_free(wjob *j)
{
    kvtcd_blob_unref(j->blob);
    free(j->tmpl);
    free(j);
}

/* ---- the order of durable ops per key (see the top) ------------------- */

static kstate **kst_slot(const kvtcd_tiers *t, uint32_t ns, const uint8_t *key)
{
    uint8_t buf[sizeof ns + KVTCD_KEY_BYTES];
    memcpy(buf, &ns, sizeof ns);
    memcpy(buf + sizeof ns, key, KVTCD_KEY_BYTES);
    /* Seeded like the index: clients cannot aim keys at one chain. */
    uint64_t h = XXH3_64bits_withSeed(buf, sizeof buf, t->ix->seed);
    kstate **pp = &t->kst[h & (KSTATE_BUCKETS - 1)];
    while (*pp && !((*pp)->ns == ns &&
                    memcmp((*pp)->key, key, KVTCD_KEY_BYTES) == 0))
        pp = &(*pp)->next;
    return pp;
}

/* A durable put or delete of j's key is accepted: its ticket. Errors:
 * KVTC_ENOMEM (nothing changed). */
static int op_accept(kvtcd_tiers *t, wjob *j)
{
    kstate **pp = kst_slot(t, j->ns, j->key);
    kstate *k = *pp;
    if (!k) {
        k = calloc(1, sizeof *k);
        if (!k)
            return KVTC_ENOMEM;
        k->ns = j->ns;
        memcpy(k->key, j->key, KVTCD_KEY_BYTES);
        *pp = k;
    }
    k->pending++;
    j->ticket = ++t->next_ticket;
    k->latest = j->ticket;
    k->latest_tomb = j->kind == J_TOMB;
    return 0;
}

/* j's record is synced: 1 when it takes effect in memory (no op of the
 * key accepted after it has), and it becomes the latest that did; 0 when a
 * newer one took effect first (its record or tombstone, newer on disk
 * too, already decided the key). */
static int op_take_effect(kvtcd_tiers *t, wjob *j)
{
    kstate *k = *kst_slot(t, j->ns, j->key);
    if (!k || j->ticket < k->applied)
        return 0;
    k->applied = j->ticket;
    /* Its record or tombstone is newer than the one memory lost. */
    k->owe_tomb = 0;
    return 1;
}

static void on_lost(void *arg, const kvtcd_disk_loc *loc);
static int queue_durable_tomb(kvtcd_tiers *t, uint32_t ns, const uint8_t *key,
                              int compensating, int *rc,
                              kvtcd_tiers_done_fn done, void *arg);

/* A durable op ends (written or not). The key's state goes with its last
 * pending op, unless a record memory does not hold still needs covering:
 * then a tombstone is queued (only now: an earlier one would have hidden
 * the records of the key's later ops). */
static void op_finish(kvtcd_tiers *t, wjob *j)
{
    kstate **pp = kst_slot(t, j->ns, j->key);
    kstate *k = *pp;
    if (!k)
        return;
    if (j->compensating)
        k->owe_tomb = 0; /* tried once; on_tombstoned warned if it failed */
    if (--k->pending > 0)
        return;
    if (k->owe_tomb) {
        k->owe_tomb = 0;
        int rc = 0;
        if (t->closing ||
            queue_durable_tomb(t, k->ns, k->key, 1, &rc, NULL, NULL) != 1) {
            KVTCD_WARN("tiers", "no tombstone for a record the index "
                                "refused: the chunk may come back after a "
                                "restart");
        } else {
            return; /* k lives on with the tombstone */
        }
    }
    *pp = k->next;
    free(k);
}

/* A durable put or tombstone ends: tell its caller. */
static void job_finish(wjob *j, int rc)
{
    kvtcd_tiers *t = j->t;
    if (j->rc)
        *j->rc = rc;
    if (j->kind != J_CACHE)
        t->busy--;
    if (j->ticket)
        op_finish(t, j);
    kvtcd_tiers_done_fn done = j->done;
    void *arg = j->arg;
    job_free(j);
    if (done)
        done(arg);
}

/* A queued job that will not be written: a write-behind copy is just not
 * made (its entry, if still the one queued, stops waiting for the disk); a
 * durable put or tombstone is answered rc. */
static void job_drop(kvtcd_tiers *t, wjob *j, int rc)
{
    if (j->kind != J_CACHE) {
        job_finish(j, rc);
        return;
    }
    kvtcd_entry *e = find_gen(t, j->ns, j->key, j->gen);
    if (e && e->disk_state == KVTCD_DISK_QUEUED) {
        e->disk_state = KVTCD_DISK_NONE;
        t->dirty--;
    }
    job_free(j);
}

static void note_write_error(kvtcd_tiers *t, int status)
{
    if (status == KVTC_ECANCELED)
        return;
    t->ix->tc[KVTCD_T_DISK].errors++;
    if (status != KVTC_ENOSPC && status != KVTC_EIO && status != KVTC_EFULL)
        return;
    if (!degraded(t)) {
        /* One line per burst: the back-off silences the rest. */
        KVTCD_ERROR("tiers", "disk write failed: disk tier degraded for %d ms "
                             "err=\"%s\"",
                    DEGRADE_MS, kvtc_strerror(status));
        t->degraded_logged = 1;
    }
    t->degraded_until = now_ms(t) + DEGRADE_MS;
    t->degraded_rc = map_disk_err(status);
}

static void pump(kvtcd_tiers *t);
static void make_disk_room(kvtcd_tiers *t, uint64_t need, int again);
static void start_compaction(kvtcd_tiers *t, int eager);

static void on_appended(void *arg, int status, const kvtcd_disk_loc *loc)
{
    wjob *j = arg;
    kvtcd_tiers *t = j->t;
    t->appends--;
    if (status == 0)
        t->ix->tc[KVTCD_T_DISK].bytes_written += j->size;
    else
        note_write_error(t, status);
    if (j->kind == J_CACHE) {
        kvtcd_entry *e = find_gen(t, j->ns, j->key, j->gen);
        if (e && e->disk_state == KVTCD_DISK_WRITING) {
            if (status == 0) {
                e->disk_state = KVTCD_DISK_CLEAN;
                e->dloc = *loc;
                t->dirty--;
            } else if (status == KVTC_ECANCELED || t->closing) {
                e->disk_state = KVTCD_DISK_NONE;
                t->dirty--;
            } else {
                /* Stays in RAM, dirty; written again after the back-off. */
                e->disk_state = KVTCD_DISK_QUEUED;
                kvtcd_blob_unref(j->blob);
                j->blob = NULL;
                q_push(t, j, 0);
                j = NULL;
            }
        } else if (status == 0 && !t->closing) {
            kvtcd_disk_release(t->d, loc); /* replaced or gone meanwhile */
        }
        if (j)
            job_free(j);
    } else {
        int rc = map_disk_err(status);
        if (status == 0 && !op_take_effect(t, j)) {
            /* A delete or put of the key accepted after this one took
             * effect first: this version is already replaced, here as on
             * disk. The put itself succeeded. */
            if (!t->closing)
                kvtcd_disk_release(t->d, loc);
        } else if (status == 0) {
            /* On stable storage: now the chunk becomes visible. */
            kvtcd_entry *tm = j->tmpl;
            tm->disk_state = KVTCD_DISK_CLEAN;
            tm->dloc = *loc;
            tm->gpu_state = KVTCD_GPU_NONE;
            rc = kvtcd_index_insert(t->ix, tm, j->blob, j->off, now_ms(t),
                                    NULL);
            if (rc < 0) {
                /* The record is synced (it would win at a restart) but
                 * cannot be served: the older version goes too, and the
                 * key is owed a tombstone so the refused put does not
                 * come back (op_finish). */
                kvtcd_entry *old = kvtcd_index_find(t->ix, j->ns, j->key,
                                                    now_ms(t));
                if (old)
                    kvtcd_index_remove(t->ix, old);
                if (!t->closing)
                    kvtcd_disk_release(t->d, loc);
                kstate *k = *kst_slot(t, j->ns, j->key);
                if (k)
                    k->owe_tomb = 1;
            }
        }
        job_finish(j, rc);
    }
    pump(t);
}

static void on_tombstoned(void *arg, int status)
{
    wjob *j = arg;
    kvtcd_tiers *t = j->t;
    t->appends--;
    if (status)
        note_write_error(t, status);
    if (j->ticket && status == 0 && op_take_effect(t, j)) {
        /* Durable delete: synced, so the key goes now, whatever version
         * a put accepted before the delete left there, and even if a pin
         * came after the delete was accepted (pins are checked when a
         * delete is accepted, as without a disk). */
        kvtcd_entry *e = kvtcd_index_find(t->ix, j->ns, j->key, now_ms(t));
        if (e)
            kvtcd_index_remove(t->ix, e);
    } else if (status && !j->done) {
        KVTCD_WARN("tiers", "tombstone not written: the deleted chunk may "
                            "come back after a restart err=\"%s\"",
                   kvtc_strerror(status));
    }
    job_finish(j, map_disk_err(status));
    pump(t);
}

/* Start j (taken off the queue). 0: in flight; 1: nothing to do (freed);
 * negative: the store's immediate error (j untouched). */
static int submit(kvtcd_tiers *t, wjob *j)
{
    kvtcd_disk_meta m;
    int rc;
    if (j->kind == J_CACHE) {
        kvtcd_entry *e = find_gen(t, j->ns, j->key, j->gen);
        if (!e || e->disk_state != KVTCD_DISK_QUEUED) {
            job_free(j); /* evicted, replaced or deleted meanwhile */
            return 1;
        }
        if (!e->blob) {
            /* Its host copy went (only a GPU copy left): not written. */
            e->disk_state = KVTCD_DISK_NONE;
            t->dirty--;
            job_free(j);
            return 1;
        }
        meta_of(t, e, &m);
        j->size = e->size;
        rc = kvtcd_disk_append(t->d, &m, e->blob->data + e->off, e->size, 0,
                               on_appended, j);
        if (rc == 0) {
            j->blob = e->blob;
            kvtcd_blob_ref(j->blob);
            e->disk_state = KVTCD_DISK_WRITING;
        }
        return rc;
    }
    if (j->kind == J_DURABLE) {
        meta_of(t, j->tmpl, &m);
        return kvtcd_disk_append(t->d, &m, j->blob->data + j->off, j->size, 1,
                                 on_appended, j);
    }
    const char *tenant = kvtcd_index_ns_name(t->ix, j->ns);
    return kvtcd_disk_tombstone(t->d, tenant ? tenant : "", j->key, j->sync,
                                on_tombstoned, j);
}

/* Start queued writes while there is room in flight. */
static void pump(kvtcd_tiers *t)
{
    if (t->pumping || !t->d)
        return;
    t->pumping = 1;
    while (t->q_head && t->appends < MAX_APPENDS) {
        wjob *j = t->q_head;
        uint64_t now = now_ms(t);
        if (t->closing) {
            q_remove(t, j);
            job_drop(t, j, KVTC_EBUSY);
            continue;
        }
        if (t->space_wait || degraded(t)) {
            /* Durable callers get an answer now or at their deadline;
             * write-behind just waits. */
            if (j->done && (degraded(t) || now >= j->deadline_ms)) {
                q_remove(t, j);
                job_finish(j, degraded(t) ? t->degraded_rc : KVTC_EFULL);
                continue;
            }
            break;
        }
        q_remove(t, j);
        int rc = submit(t, j);
        if (rc == 0) {
            t->appends++;
            continue;
        }
        if (rc == 1)
            continue;
        if (rc == KVTC_EFULL) {
            /* The store's capacity: evict down to the watermark and
             * compact; retry from the maintenance tick or when compaction
             * ends. Live bytes under the watermark may still not fit
             * (segment tails too short for a record, dead space compaction
             * has no room to move): every further refusal evicts one more
             * record's worth from the LRU tail, which empties the oldest
             * segments. */
            q_push(t, j, 1);
            t->space_wait = 1;
            make_disk_room(t, j->size + 4096, j->full_tries++ > 0);
            start_compaction(t, 1);
            continue;
        }
        KVTCD_ERROR("tiers", "disk append refused err=\"%s\"",
                    kvtc_strerror(rc));
        t->ix->tc[KVTCD_T_DISK].errors++;
        job_drop(t, j, map_disk_err(rc));
    }
    t->pumping = 0;
}

/* ---- eviction from the disk tier --------------------------------------- */

static int disk_evictable(void *arg, const kvtcd_entry *e)
{
    (void)arg;
    return e->disk_state == KVTCD_DISK_CLEAN &&
           e->gpu_state != KVTCD_GPU_WRITING;
}

/* The disk is the last tier: evict whole chunks (prefix-aware) until its
 * live bytes are need under the low watermark; again: the last try did not
 * make room, evict need bytes more in any case. */
static void make_disk_room(kvtcd_tiers *t, uint64_t need, int again)
{
    kvtcd_disk_stats st;
    kvtcd_disk_get_stats(t->d, &st);
    /* Only down to the low watermark (minus need): beyond that the room
     * is dead space, and compaction (not eviction) gets it back. */
    uint64_t low = st.capacity / 100 * DISK_LOW_PCT;
    uint64_t target = st.live + need > low ? st.live + need - low : 0;
    if (again && target < need)
        target = need;
    uint64_t freed = 0, now = now_ms(t);
    kvtcd_entry *e;
    while (freed < target &&
           (e = kvtcd_index_victim(t->ix, now, disk_evictable, NULL))) {
        freed += e->dloc.rec_len ? e->dloc.rec_len : e->size;
        if (kvtcd_entry_expired(e, now)) {
            t->ix->expirations++;
        } else {
            t->ix->evictions++;
            t->ix->tc[KVTCD_T_DISK].evictions++;
        }
        kvtcd_index_remove(t->ix, e);
    }
}

/* ---- compaction -------------------------------------------------------- */

static int on_reloc(void *arg, const kvtcd_disk_meta *m,
                    const kvtcd_disk_loc *old_loc,
                    const kvtcd_disk_loc *new_loc)
{
    kvtcd_tiers *t = arg;
    uint32_t ns;
    if (find_ns(t->ix, m->tenant, &ns) < 0)
        return 0;
    kvtcd_entry *e = kvtcd_index_find(t->ix, ns, m->key, now_ms(t));
    if (!e || e->disk_state != KVTCD_DISK_CLEAN ||
        e->dloc.seg != old_loc->seg || e->dloc.off != old_loc->off)
        return 0;
    e->dloc = *new_loc;
    return 1;
}

static int disk_pressure(const kvtcd_tiers *t)
{
    kvtcd_disk_stats st;
    kvtcd_disk_get_stats(t->d, &st);
    return t->space_wait ||
           st.used > st.capacity / 100 * DISK_PRESSURE_PCT;
}

static void on_compacted(void *arg, int status)
{
    kvtcd_tiers *t = arg;
    t->compacting = 0;
    /* KVTC_EFULL: no room to move live records into; eviction makes
     * room instead. */
    if (status < 0 && status != KVTC_ENOENT && status != KVTC_ECANCELED &&
        status != KVTC_EFULL)
        KVTCD_WARN("tiers", "compaction failed err=\"%s\"",
                   kvtc_strerror(status));
    if (t->closing)
        return;
    t->space_wait = 0; /* room may have appeared: let the head retry */
    if (status == 0 && t->compact_rounds > 0) {
        t->compact_rounds--;
        start_compaction(t, 1);
    }
    pump(t);
}

/* eager: the disk is (nearly) full: compact segments with less dead space
 * and keep going while steps succeed. */
static void start_compaction(kvtcd_tiers *t, int eager)
{
    if (!t->d || t->compacting || t->closing)
        return;
    if (eager && t->compact_rounds == 0)
        t->compact_rounds = 8;
    int rc = kvtcd_disk_compact(t->d, eager ? 0.1 : 0.5, on_reloc,
                                on_compacted, t);
    if (rc == 0)
        t->compacting = 1;
    else
        t->compact_rounds = 0;
}

static void on_compact_timer(uv_timer_t *h)
{
    kvtcd_tiers *t = h->data;
    start_compaction(t, disk_pressure(t));
}

/* ---- GPU demotion ------------------------------------------------------ */

static void on_gpu_written(void *arg, int status)
{
    gjob *j = arg;
    kvtcd_tiers *t = j->t;
    t->gpu_copies--;
    kvtcd_entry *e = find_gen(t, j->ns, j->key, j->gen);
    if (e && e->gpu_state == KVTCD_GPU_WRITING && status == 0) {
        e->gpu_state = KVTCD_GPU_VALID;
        e->gloc = j->loc;
        t->ix->tc[KVTCD_T_GPU].bytes_written += e->size;
        t->ix->tc[KVTCD_T_HOST].demotions++;
        /* The host copy goes unless the disk still needs it. */
        kvtcd_tier *h = t->ix->tier;
        if (e->blob && (!t->d || e->disk_state == KVTCD_DISK_CLEAN) &&
            h->used > h->capacity / 100 * HOST_LOW_PCT)
            kvtcd_index_drop_host(t->ix, e);
    } else {
        if (e && e->gpu_state == KVTCD_GPU_WRITING)
            e->gpu_state = KVTCD_GPU_NONE;
        if (status && status != KVTC_ECANCELED) {
            t->ix->tc[KVTCD_T_GPU].errors++;
            KVTCD_WARN("tiers", "GPU copy failed err=\"%s\"",
                       kvtc_strerror(status));
        }
        if (!t->closing || status != KVTC_ECANCELED)
            kvtcd_gpu_free(t->g, &j->loc);
    }
    kvtcd_blob_unref(j->blob);
    free(j);
}

static int gpu_droppable(void *arg, const kvtcd_entry *e)
{
    (void)arg;
    return e->gpu_state == KVTCD_GPU_VALID;
}

/* Room in the slab: GPU copies of chunks held elsewhere go first (least
 * recent first); then, where the GPU is the last copy, whole chunks
 * (prefix-aware). */
static int make_gpu_room(kvtcd_tiers *t, uint64_t len, kvtcd_gpu_loc *loc)
{
    kvtcd_index *ix = t->ix;
    int rc = KVTC_EFULL;
    uint32_t scanned = 0;
    for (kvtcd_entry *e = ix->lru_tail; e && rc == KVTC_EFULL &&
                                        scanned < DEMOTE_SCAN_MAX;
         scanned++) {
        kvtcd_entry *prev = e->lru_prev;
        if (e->gpu_state == KVTCD_GPU_VALID &&
            (e->blob || e->disk_state == KVTCD_DISK_CLEAN)) {
            kvtcd_gpu_free(t->g, &e->gloc);
            e->gpu_state = KVTCD_GPU_NONE;
            ix->tc[KVTCD_T_GPU].demotions++;
            rc = kvtcd_gpu_alloc(t->g, len, loc);
        }
        e = prev;
    }
    uint64_t now = now_ms(t);
    kvtcd_entry *v;
    while (rc == KVTC_EFULL && !t->d &&
           (v = kvtcd_index_victim(ix, now, gpu_droppable, NULL))) {
        if (kvtcd_entry_expired(v, now)) {
            ix->expirations++;
        } else {
            ix->evictions++;
            ix->tc[KVTCD_T_GPU].evictions++;
        }
        kvtcd_index_remove(ix, v);
        rc = kvtcd_gpu_alloc(t->g, len, loc);
    }
    return rc;
}

static int gpu_demote(kvtcd_tiers *t, kvtcd_entry *e)
{
    kvtcd_gpu_loc loc;
    if (e->size == 0)
        return KVTC_EINVAL;
    int rc = kvtcd_gpu_alloc(t->g, e->size, &loc);
    if (rc == KVTC_EFULL)
        rc = make_gpu_room(t, e->size, &loc);
    if (rc < 0)
        return rc;
    gjob *j = calloc(1, sizeof *j);
    if (!j) {
        kvtcd_gpu_free(t->g, &loc);
        return KVTC_ENOMEM;
    }
    j->t = t;
    j->ns = e->ns;
    memcpy(j->key, e->key, KVTCD_KEY_BYTES);
    j->gen = e->gen;
    j->loc = loc;
    j->blob = e->blob;
    kvtcd_blob_ref(j->blob);
    rc = kvtcd_gpu_write(t->g, &loc, e->blob->data + e->off, e->size,
                         on_gpu_written, j);
    if (rc < 0) {
        kvtcd_gpu_free(t->g, &loc);
        kvtcd_blob_unref(j->blob);
        free(j);
        t->ix->tc[KVTCD_T_GPU].errors++;
        return rc;
    }
    e->gpu_state = KVTCD_GPU_WRITING;
    t->gpu_copies++;
    return 0;
}

/* ---- host demotion ----------------------------------------------------- */

/* Keep host RAM under the high watermark: from the LRU tail, copy chunks
 * to the GPU (spill order host -> GPU -> disk), and drop host copies that
 * a lower tier already holds. Dirty chunks wait for the write-behind. */
static void demote_host(kvtcd_tiers *t)
{
    kvtcd_index *ix = t->ix;
    kvtcd_tier *h = ix->tier;
    if (h->used <= h->capacity / 100 * HOST_HIGH_PCT)
        return;
    uint64_t need = h->used - h->capacity / 100 * HOST_LOW_PCT;
    uint64_t planned = 0;
    uint32_t scanned = 0;
    /* The host list: chunks only lower tiers hold, which fill the LRU's
     * tail behind a large disk tier, would use up the scan. */
    for (kvtcd_entry *e = ix->host_tail;
         e && planned < need && scanned < DEMOTE_SCAN_MAX; scanned++) {
        kvtcd_entry *prev;
        if (e->disk_state != KVTCD_DISK_WRITING && e->gpu_state == KVTCD_GPU_NONE && t->g &&
            t->gpu_copies < MAX_GPU_COPIES && gpu_demote(t, e) == 0) {
            planned += e->size;
            /* Read after the step: making GPU room may evict whole
             * chunks (no disk tier), the next one among them; e stays
             * (it has no GPU copy yet). */
            prev = e->host_prev;
        } else if (e->disk_state == KVTCD_DISK_CLEAN && e->gpu_state != KVTCD_GPU_WRITING) {
            prev = e->host_prev; /* (gpu_demote may have failed having evicted) */
            planned += e->size;
            kvtcd_index_drop_host(ix, e);
            ix->tc[KVTCD_T_HOST].demotions++;
        } else if (e->gpu_state == KVTCD_GPU_VALID && e->disk_state == KVTCD_DISK_NONE && !t->d) {
            prev = e->host_prev;
            planned += e->size;
            kvtcd_index_drop_host(ix, e);
            ix->tc[KVTCD_T_HOST].demotions++;
        } else {
            prev = e->host_prev;
        }
        e = prev;
    }
}

static void maintain(kvtcd_tiers *t)
{
    if (t->closing)
        return;
    demote_host(t);
    if (t->d) {
        kvtcd_disk_stats st;
        kvtcd_disk_get_stats(t->d, &st);
        if (st.live > st.capacity / 100 * DISK_HIGH_PCT)
            make_disk_room(t, 0, 0);
        if (t->degraded_until && !degraded(t)) {
            t->degraded_until = 0;
            if (t->degraded_logged)
                KVTCD_INFO("tiers", "disk tier retrying after back-off");
            t->degraded_logged = 0;
        }
        t->space_wait = 0; /* retry the head */
        pump(t);
    }
}

static void on_maint_timer(uv_timer_t *h)
{
    kvtcd_tiers *t = h->data;
    t->kicked = 0;
    maintain(t);
}

void kvtcd_tiers_kick(kvtcd_tiers *t)
{
    kvtcd_tier *h = t->ix->tier;
    if (t->closing || t->kicked ||
        h->used <= h->capacity / 100 * HOST_HIGH_PCT)
        return;
    /* Soon, not now: the put that filled RAM is still being answered. */
    t->kicked = 1;
    uv_timer_start(&t->maint, on_maint_timer, 0, MAINT_MS);
}

/* ---- open / close ------------------------------------------------------ */

typedef struct recover_ctx {
    kvtcd_tiers *t;
    uint64_t wall, now;
    uint64_t kept, expired, failed;
} recover_ctx;

static int on_recovered(void *arg, const kvtcd_disk_meta *m,
                        const kvtcd_disk_loc *loc)
{
    recover_ctx *rc = arg;
    kvtcd_tiers *t = rc->t;
    if (m->expire_unix_ms && m->expire_unix_ms <= rc->wall) {
        rc->expired++;
        return 1;
    }
    kvtcd_entry tm;
    memset(&tm, 0, sizeof tm);
    if (kvtcd_index_namespace(t->ix, m->tenant, &tm.ns) < 0) {
        rc->failed++;
        return 1;
    }
    memcpy(tm.key, m->key, KVTCD_KEY_BYTES);
    memcpy(tm.parent, m->parent, KVTCD_KEY_BYTES);
    tm.has_parent = m->has_parent;
    tm.has_layout = m->has_layout;
    tm.encoding = m->encoding;
    tm.first_pos = m->first_pos;
    tm.n_tokens = m->n_tokens;
    tm.chunk_flags = m->chunk_flags;
    tm.layout = m->layout;
    tm.size = m->size;
    tm.checksum = m->checksum;
    if (m->expire_unix_ms)
        tm.expire_ms = rc->now + (m->expire_unix_ms - rc->wall);
    tm.disk_state = KVTCD_DISK_CLEAN;
    tm.dloc = *loc;
    /* Oldest first: each insert goes to the LRU head, so the newest
     * records end up most recent. */
    if (kvtcd_index_insert(t->ix, &tm, NULL, 0, rc->now, NULL) < 0) {
        rc->failed++;
        return 1;
    }
    rc->kept++;
    return 0;
}

/* 80% of the free space of dir's file system, at least 64 MiB. */
static uint64_t default_disk_size(const char *dir)
{
    struct statvfs sv;
    uint64_t size = MIN_DEFAULT_DISK;
    if (statvfs(dir, &sv) == 0) {
        uint64_t free_bytes = (uint64_t)sv.f_bavail * sv.f_frsize;
        if (free_bytes / 10 * 8 > size)
            size = free_bytes / 10 * 8;
    }
    return size;
}

static int open_disk(kvtcd_tiers *t, const kvtcd_tiers_params *p)
{
    if (mkdir(p->disk_dir, 0750) != 0 && errno != EEXIST) {
        KVTCD_ERROR("tiers", "cannot create disk dir path=%s err=\"%s\"",
                    p->disk_dir, strerror(errno));
        return KVTC_EIO;
    }
    kvtcd_disk_params dp = {
        .dir = p->disk_dir,
        .capacity = p->disk_size ? p->disk_size
                                 : default_disk_size(p->disk_dir),
        .segment_bytes = p->segment_bytes,
        .io_mode = p->disk_io,
        .direct = p->disk_direct,
    };
    recover_ctx rc = {.t = t, .wall = wall_ms(), .now = now_ms(t)};
    int r = kvtcd_disk_open(t->loop, &dp, on_recovered, &rc, &t->d);
    if (r < 0) {
        KVTCD_ERROR("tiers", "cannot open the disk tier path=%s err=\"%s\"",
                    p->disk_dir, kvtc_strerror(r));
        t->d = NULL;
        return r;
    }
    kvtcd_disk_set_lost(t->d, on_lost, t);
    kvtcd_disk_stats st;
    kvtcd_disk_get_stats(t->d, &st);
    KVTCD_INFO("tiers", "disk tier path=%s capacity=%llu backend=%s "
                        "durability=%s recovered=%llu expired=%llu "
                        "corrupt=%llu seconds=%.3f",
               p->disk_dir, (unsigned long long)st.capacity,
               kvtcd_disk_backend(t->d), p->durable ? "durable" : "cache",
               (unsigned long long)rc.kept, (unsigned long long)rc.expired,
               (unsigned long long)st.corrupt, st.recover_seconds);
    if (rc.failed)
        KVTCD_WARN("tiers", "records not indexed at recovery count=%llu",
                   (unsigned long long)rc.failed);
    return 0;
}

/* Page-lock the host tier's region for the GPU's copies, so demotions
 * and promotions of chunks inside it go as one DMA from/to the chunk's own
 * bytes (54 GB/s on the H100 host, ~28 through the staging buffers).
 *
 * The whole region, once: cuMemHostRegister populates and pins every page
 * of it, so RSS reaches the host tier's capacity at start instead of
 * following use. That is within what --host-mem allows, and the
 * alternative (registering in steps as the slab fills) would stall the
 * loop at each step and leave chunks that straddle two ranges staged.
 * Chunks below a page live outside the region (store_host.h) and keep
 * using staging; so does everything when registering fails, which is
 * logged once here (the GPU store logs the driver's own reason). The GPU
 * tier unregisters when it closes, which kvtcd_tiers_close does before
 * the server destroys the host tier. */
static void register_host_region(kvtcd_tiers *t)
{
    void *base = NULL;
    size_t len = 0;
    int rc = kvtcd_store_host_region(t->ix->tier, &base, &len);
    if (rc < 0) {
        /* The per-blob host store (KVTCD_HOST_SLAB=0) has no one region. */
        KVTCD_INFO("tiers", "GPU copies of host chunks go through staging: "
                            "the host tier has no single region err=\"%s\"",
                   kvtc_strerror(rc));
        return;
    }
    uint64_t t0 = uv_hrtime();
    rc = kvtcd_gpu_register_host(t->g, base, len);
    if (rc < 0) {
        if (rc != KVTC_ENOMEM && rc != KVTC_EIO) /* else logged by the store */
            KVTCD_WARN("tiers", "host region not registered with the GPU: "
                                "copies go through staging bytes=%llu "
                                "err=\"%s\"",
                       (unsigned long long)len, kvtc_strerror(rc));
        return;
    }
    t->gpu_host_registered = len;
    KVTCD_INFO("tiers", "host region registered with the GPU (direct "
                        "copies) bytes=%llu ms=%.1f",
               (unsigned long long)len, (double)(uv_hrtime() - t0) / 1e6);
}

static void open_gpu(kvtcd_tiers *t, const kvtcd_tiers_params *p)
{
    int rc = kvtcd_gpu_open(t->loop, p->gpu_device, p->gpu_mem, &t->g);
    if (rc < 0) {
        /* Serving goes on from the other tiers. */
        KVTCD_WARN("tiers", "no GPU tier: gpu_mem=%llu device=%d err=\"%s\" "
                            "reason=\"%s\"",
                   (unsigned long long)p->gpu_mem, p->gpu_device,
                   kvtc_strerror(rc), kvtcd_gpu_last_error());
        t->g = NULL;
        t->ix->tc[KVTCD_T_GPU].errors++;
        return;
    }
    t->gpu_capacity = p->gpu_mem;
    KVTCD_INFO("tiers", "GPU tier capacity=%llu device=%d",
               (unsigned long long)p->gpu_mem, p->gpu_device);
    register_host_region(t);
}

int kvtcd_tiers_open(const kvtcd_tiers_params *p, kvtcd_tiers **out)
{
    if (!p || !p->loop || !p->ix || !out)
        return KVTC_EINVAL;
    kvtcd_tiers *t = calloc(1, sizeof *t);
    if (!t)
        return KVTC_ENOMEM;
    t->loop = p->loop;
    t->ix = p->ix;
    t->clock_base_ms = p->clock_base_ms;
    t->durable = p->durable;
    if (p->durable && !(p->disk_dir && p->disk_dir[0])) {
        free(t);
        return KVTC_EINVAL;
    }
    t->kst = calloc(KSTATE_BUCKETS, sizeof *t->kst);
    if (!t->kst) {
        free(t);
        return KVTC_ENOMEM;
    }
    /* Before recovery: records rebuilt into the index are released
     * through it like any other. */
    kvtcd_index_set_drop_hook(p->ix, on_drop, t);
    if (p->disk_dir && p->disk_dir[0]) {
        int rc = open_disk(t, p);
        if (rc < 0) {
            kvtcd_index_set_drop_hook(p->ix, NULL, NULL);
            free(t->kst);
            free(t);
            return rc;
        }
    }
    if (p->gpu_mem)
        open_gpu(t, p);
    /* Only these make host copies clean (kvtcd_index_reserve's first
     * step); it stays set, as entries keep their lower copies' states. */
    p->ix->lower_tiers = t->d != NULL || t->g != NULL;
    uv_timer_init(t->loop, &t->maint);
    uv_timer_init(t->loop, &t->compact);
    t->maint.data = t->compact.data = t;
    uv_timer_start(&t->maint, on_maint_timer, MAINT_MS, MAINT_MS);
    if (t->d)
        uv_timer_start(&t->compact, on_compact_timer, COMPACT_MS, COMPACT_MS);
    *out = t;
    return 0;
}

static void close_step(void *arg)
{
    kvtcd_tiers *t = arg;
    if (--t->close_pending > 0)
        return;
    t->d = NULL;
    t->g = NULL;
    kvtcd_index_set_drop_hook(t->ix, NULL, NULL);
    if (t->closed)
        t->closed(t->closed_arg);
}

static void on_timer_closed(uv_handle_t *h)
{
    close_step(h->data);
}

void kvtcd_tiers_close(kvtcd_tiers *t, void (*closed)(void *arg), void *arg)
{
    t->closing = 1;
    t->closed = closed;
    t->closed_arg = arg;
    t->close_pending = 3 + (t->d != NULL) + (t->g != NULL);
    pump(t); /* fails or abandons whatever is queued */
    uv_close((uv_handle_t *)&t->maint, on_timer_closed);
    uv_close((uv_handle_t *)&t->compact, on_timer_closed);
    if (t->d)
        kvtcd_disk_close(t->d, close_step, t);
    if (t->g)
        kvtcd_gpu_close(t->g, close_step, t);
    close_step(t); /* the caller's own step: pending never hits 0 early */
}

void kvtcd_tiers_free(kvtcd_tiers *t)
{
    if (!t)
        return;
    /* Every job finished before closed() ran: no key state is left. */
    for (size_t i = 0; t->kst && i < KSTATE_BUCKETS; i++) {
        while (t->kst[i]) {
            kstate *k = t->kst[i];
            t->kst[i] = k->next;
            free(k);
        }
    }
    free(t->kst);
    free(t);
}

/* ---- put, delete, load ------------------------------------------------- */

int kvtcd_tiers_put(kvtcd_tiers *t, const kvtcd_entry *tmpl, kvtcd_blob *blob,
                    size_t off, uint64_t now_ms_, int *rc,
                    kvtcd_tiers_done_fn done, void *arg)
{
    if (t->closing) {
        *rc = KVTC_EBUSY;
        return 0;
    }
    if (!t->d) {
        *rc = kvtcd_index_insert(t->ix, tmpl, blob, off, now_ms_, NULL);
        return 0;
    }
    wjob *j = calloc(1, sizeof *j);
    if (!j) {
        *rc = KVTC_ENOMEM;
        return 0;
    }
    j->t = t;
    j->ns = tmpl->ns;
    memcpy(j->key, tmpl->key, KVTCD_KEY_BYTES);
    j->size = tmpl->size;
    if (!t->durable) {
        kvtcd_entry *e;
        kvtcd_entry tm = *tmpl;
        tm.disk_state = KVTCD_DISK_NONE;
        tm.gpu_state = KVTCD_GPU_NONE;
        *rc = kvtcd_index_insert(t->ix, &tm, blob, off, now_ms_, &e);
        if (*rc < 0) {
            free(j);
            return 0;
        }
        e->disk_state = KVTCD_DISK_QUEUED;
        t->dirty++;
        j->kind = J_CACHE;
        j->gen = e->gen;
        q_push(t, j, 0);
        pump(t);
        return 0;
    }
    if (degraded(t)) {
        /* Fail fast during the back-off rather than queue behind it. */
        *rc = t->degraded_rc;
        free(j);
        return 0;
    }
    j->tmpl = malloc(sizeof *j->tmpl);
    if (!j->tmpl) {
        free(j);
        *rc = KVTC_ENOMEM;
        return 0;
    }
    *j->tmpl = *tmpl;
    j->kind = J_DURABLE;
    if (op_accept(t, j) < 0) {
        free(j->tmpl);
        free(j);
        *rc = KVTC_ENOMEM;
        return 0;
    }
    j->blob = blob;
    kvtcd_blob_ref(blob);
    j->off = off;
    j->sync = 1;
    j->deadline_ms = now_ms(t) + SPACE_WAIT_MS;
    j->rc = rc;
    j->done = done;
    j->arg = arg;
    t->busy++;
    q_push(t, j, 0);
    pump(t);
    return 1;
}

int kvtcd_tiers_delete(kvtcd_tiers *t, kvtcd_entry *e, uint64_t now,
                       int *rc, kvtcd_tiers_done_fn done, void *arg)
{
    (void)now;
    *rc = 0;
    if (!t->d || t->closing) {
        kvtcd_index_remove(t->ix, e);
        return 0;
    }
    /* Any key may have an older record on disk (released records stay
     * until compacted): always write the tombstone. */
    wjob *j = calloc(1, sizeof *j);
    if (!j) {
        if (t->durable) {
            *rc = KVTC_ENOMEM;
            return 0;
        }
        KVTCD_WARN("tiers", "out of memory for a tombstone: the deleted "
                            "chunk may come back after a restart");
        kvtcd_index_remove(t->ix, e);
        return 0;
    }
    if (t->durable) {
        free(j);
        return queue_durable_tomb(t, e->ns, e->key, 0, rc, done, arg);
    }
    j->t = t;
    j->kind = J_TOMB;
    j->ns = e->ns;
    memcpy(j->key, e->key, KVTCD_KEY_BYTES);
    j->size = 4096;
    kvtcd_index_remove(t->ix, e);
    t->busy++;
    q_push(t, j, 0);
    pump(t);
    return 0;
}

/* A durable delete of (ns, key); compensating: one the policy owes (no
 * caller, waits out a back-off instead of failing). Returns as
 * kvtcd_tiers_delete. */
static int queue_durable_tomb(kvtcd_tiers *t, uint32_t ns, const uint8_t *key,
                              int compensating, int *rc,
                              kvtcd_tiers_done_fn done, void *arg)
{
    if (!compensating && degraded(t)) {
        *rc = t->degraded_rc;
        return 0;
    }
    wjob *j = calloc(1, sizeof *j);
    if (!j) {
        *rc = KVTC_ENOMEM;
        return 0;
    }
    j->t = t;
    j->kind = J_TOMB;
    j->ns = ns;
    memcpy(j->key, key, KVTCD_KEY_BYTES);
    j->size = 4096;
    j->sync = 1;
    if (op_accept(t, j) < 0) {
        free(j);
        *rc = KVTC_ENOMEM;
        return 0;
    }
    j->compensating = compensating;
    j->deadline_ms = now_ms(t) + SPACE_WAIT_MS;
    if (!compensating) {
        j->rc = rc;
        j->done = done;
        j->arg = arg;
    }
    t->busy++;
    q_push(t, j, 0);
    pump(t);
    return 1;
}

int kvtcd_tiers_delete_key(kvtcd_tiers *t, uint32_t ns,
                           const uint8_t key[KVTCD_KEY_BYTES], uint64_t now,
                           int *rc, kvtcd_tiers_done_fn done, void *arg)
{
    (void)now;
    if (!t->d || !t->durable || t->closing ||
        !kvtcd_tiers_pending(t, ns, key)) {
        *rc = KVTC_ENOENT;
        return 0;
    }
    *rc = 0;
    return queue_durable_tomb(t, ns, key, 0, rc, done, arg);
}

int kvtcd_tiers_pending(const kvtcd_tiers *t, uint32_t ns,
                        const uint8_t key[KVTCD_KEY_BYTES])
{
    if (!t || !t->kst)
        return 0;
    const kstate *k = *kst_slot(t, ns, key);
    if (!k || k->pending == 0)
        return 0;
    return k->latest_tomb ? 2 : 1;
}

/* e's disk record is gone for good (the store dropped it as corrupt, or a
 * read found it missing): forget it without a release (the store already
 * let go), and the chunk too when no copy is left, so Lookup stops
 * reporting a chunk no get can serve. 1 when e was removed. */
static int disk_copy_lost(kvtcd_tiers *t, kvtcd_entry *e)
{
    KVTCD_WARN("tiers", "disk record lost: %s seg=%u off=%llu",
               e->blob || e->gpu_state == KVTCD_GPU_VALID
                   ? "the chunk stays in memory only"
                   : "chunk dropped",
               e->dloc.seg, (unsigned long long)e->dloc.off);
    t->ix->tc[KVTCD_T_DISK].errors++;
    e->disk_state = KVTCD_DISK_NONE;
    if (e->blob || e->gpu_state == KVTCD_GPU_VALID)
        return 0;
    kvtcd_index_remove(t->ix, e);
    return 1;
}

/* The store dropped a corrupt record in compaction. The index is keyed by
 * (namespace, key), not by location, so this walks it: a rare event (a
 * damaged disk), cheaper than a Lookup that lies until eviction. */
static void on_lost(void *arg, const kvtcd_disk_loc *loc)
{
    kvtcd_tiers *t = arg;
    for (kvtcd_entry *e = t->ix->lru_head; e; e = e->lru_next) {
        if (e->disk_state == KVTCD_DISK_CLEAN && e->dloc.seg == loc->seg &&
            e->dloc.off == loc->off) {
            disk_copy_lost(t, e);
            return;
        }
    }
}

static void load_finish(ljob *j, int status)
{
    kvtcd_tiers *t = j->t;
    kvtcd_blob *blob = status == 0 ? j->blob : NULL;
    if (status != 0)
        kvtcd_blob_unref(j->blob);
    t->busy--;
    kvtcd_tiers_load_fn cb = j->cb;
    void *arg = j->arg;
    size_t off = j->off;
    free(j);
    cb(arg, status, blob, off);
}

/* The read is in j->blob at j->off: keep it as the host copy. */
static void promote(kvtcd_tiers *t, ljob *j)
{
    kvtcd_entry *e = find_gen(t, j->ns, j->key, j->gen);
    if (!e || e->blob)
        return;
    kvtcd_index_set_host(t->ix, e, j->blob, j->off);
    t->ix->tc[KVTCD_T_HOST].promotions++;
}

static int start_disk_read(kvtcd_tiers *t, ljob *j);

static void on_disk_read(void *arg, int status)
{
    ljob *j = arg;
    kvtcd_tiers *t = j->t;
    if (status == 0) {
        j->off = j->dloc.payload_off;
        t->ix->tc[KVTCD_T_DISK].bytes_read += j->size;
        promote(t, j);
    } else if (status == KVTC_ECORRUPT) {
        /* Never serve wrong KV: the chunk goes. */
        KVTCD_ERROR("tiers", "disk record failed its checksum; chunk dropped "
                             "seg=%u off=%llu",
                    j->dloc.seg, (unsigned long long)j->dloc.off);
        kvtcd_entry *e = find_gen(t, j->ns, j->key, j->gen);
        if (e)
            kvtcd_index_remove(t->ix, e);
        t->ix->tc[KVTCD_T_DISK].errors++;
    } else if (status != KVTC_ECANCELED) {
        KVTCD_ERROR("tiers", "disk read failed seg=%u off=%llu err=\"%s\"",
                    j->dloc.seg, (unsigned long long)j->dloc.off,
                    kvtc_strerror(status));
        t->ix->tc[KVTCD_T_DISK].errors++;
        status = KVTC_EIO;
    } else {
        status = KVTC_EBUSY;
    }
    load_finish(j, status);
}

static void on_gpu_read(void *arg, int status)
{
    ljob *j = arg;
    kvtcd_tiers *t = j->t;
    if (status == 0) {
        t->ix->tc[KVTCD_T_GPU].bytes_read += j->size;
        promote(t, j);
        load_finish(j, 0);
        return;
    }
    if (status == KVTC_ECANCELED) {
        load_finish(j, KVTC_EBUSY);
        return;
    }
    KVTCD_ERROR("tiers", "GPU read failed err=\"%s\"", kvtc_strerror(status));
    t->ix->tc[KVTCD_T_GPU].errors++;
    /* The GPU copy is suspect: drop it; the disk copy may serve. */
    kvtcd_entry *e = find_gen(t, j->ns, j->key, j->gen);
    if (e && e->gpu_state == KVTCD_GPU_VALID) {
        kvtcd_gpu_free(t->g, &e->gloc);
        e->gpu_state = KVTCD_GPU_NONE;
        if (!e->blob && e->disk_state != KVTCD_DISK_CLEAN) {
            kvtcd_index_remove(t->ix, e);
            e = NULL;
        }
    }
    if (e && e->disk_state == KVTCD_DISK_CLEAN && t->d && !t->closing) {
        kvtcd_blob_unref(j->blob);
        j->blob = NULL;
        j->dloc = e->dloc;
        j->from = KVTCD_T_DISK;
        int rc = start_disk_read(t, j);
        if (rc == 0)
            return;
        if (rc == KVTC_ENOENT) {
            disk_copy_lost(t, e); /* e has no host copy: reserve kept it */
            load_finish(j, KVTC_ENOENT);
            return;
        }
    }
    load_finish(j, KVTC_EIO);
}

static int start_disk_read(kvtcd_tiers *t, ljob *j)
{
    size_t align = kvtcd_disk_align(t->d);
    if (j->dloc.rec_len == 0 || (j->dloc.rec_len & (align - 1)) ||
        j->dloc.payload_off + j->size > j->dloc.rec_len)
        return KVTC_EINVAL;
    int rc = kvtcd_index_reserve_copy(t->ix, j->dloc.rec_len, &j->blob);
    if (rc < 0)
        return rc == KVTC_EFULL ? KVTC_EBUSY : rc;
    if (((uintptr_t)j->blob->data & (align - 1)) != 0) {
        kvtcd_blob_unref(j->blob);
        j->blob = NULL;
        return KVTC_EINVAL;
    }
    rc = kvtcd_disk_read(t->d, &j->dloc, j->blob->data, j->key, j->checksum,
                         on_disk_read, j);
    if (rc < 0) {
        kvtcd_blob_unref(j->blob);
        j->blob = NULL;
        return rc == KVTC_EFULL ? KVTC_EBUSY : rc;
    }
    return 0;
}

int kvtcd_tiers_load(kvtcd_tiers *t, kvtcd_entry *e, uint64_t now,
                     kvtcd_tiers_load_fn cb, void *arg)
{
    if (t->closing)
        return KVTC_EBUSY;
    int from;
    if (e->gpu_state == KVTCD_GPU_VALID && t->g)
        from = KVTCD_T_GPU;
    else if (e->disk_state == KVTCD_DISK_CLEAN && t->d)
        from = KVTCD_T_DISK;
    else
        return KVTC_ENOENT;
    ljob *j = calloc(1, sizeof *j);
    if (!j)
        return KVTC_ENOMEM;
    j->t = t;
    j->ns = e->ns;
    memcpy(j->key, e->key, KVTCD_KEY_BYTES);
    j->gen = e->gen;
    j->checksum = e->checksum;
    j->size = e->size;
    j->from = from;
    j->dloc = e->dloc;
    j->gloc = e->gloc;
    j->cb = cb;
    j->arg = arg;
    int rc;
    if (from == KVTCD_T_DISK) {
        rc = start_disk_read(t, j);
        if (rc == KVTC_ENOENT)
            disk_copy_lost(t, e); /* a miss from now on */
    } else {
        /* Never a zero-byte blob: the GPU read needs len >= 1 and an
         * empty chunk has no GPU copy anyway. */
        rc = kvtcd_index_reserve_copy(t->ix, e->size, &j->blob);
        if (rc == 0) {
            j->off = 0;
            rc = kvtcd_gpu_read(t->g, &e->gloc, j->blob->data, e->size,
                                on_gpu_read, j);
            if (rc < 0) {
                kvtcd_blob_unref(j->blob);
                j->blob = NULL;
            }
        } else if (rc == KVTC_EFULL) {
            rc = KVTC_EBUSY;
        }
    }
    if (rc < 0) {
        free(j);
        return rc;
    }
    t->busy++;
    return 0;
}

/* ---- counters and stats ------------------------------------------------ */

void kvtcd_tiers_count_get(kvtcd_tiers *t, const kvtcd_entry *e)
{
    kvtcd_tier_counters *c = t->ix->tc;
    if (e && e->blob) {
        c[KVTCD_T_HOST].hits++;
        return;
    }
    c[KVTCD_T_HOST].misses++;
    if (t->g) {
        if (e && e->gpu_state == KVTCD_GPU_VALID) {
            c[KVTCD_T_GPU].hits++;
            return;
        }
        c[KVTCD_T_GPU].misses++;
    }
    if (t->d) {
        if (e && e->disk_state == KVTCD_DISK_CLEAN)
            c[KVTCD_T_DISK].hits++;
        else
            c[KVTCD_T_DISK].misses++;
    }
}

uint64_t kvtcd_tiers_dirty(const kvtcd_tiers *t)
{
    return t ? t->dirty : 0;
}

uint64_t kvtcd_tiers_busy(const kvtcd_tiers *t)
{
    return t ? t->busy : 0;
}

void kvtcd_tiers_get_stats(const kvtcd_tiers *t, kvtcd_tiers_stats *out)
{
    memset(out, 0, sizeof *out);
    const kvtcd_index *ix = t->ix;
    memcpy(out->c, ix->tc, sizeof out->c);
    out->capacity[KVTCD_T_HOST] = ix->tier->capacity;
    out->used[KVTCD_T_HOST] = ix->tier->used;
    out->durable = t->durable;
    out->dirty = t->dirty;
    out->backend = "";
    if (t->g) {
        kvtcd_gpu_stats gs;
        kvtcd_gpu_get_stats(t->g, &gs);
        out->has_gpu = 1;
        out->capacity[KVTCD_T_GPU] = gs.capacity;
        out->gpu_host_registered = t->gpu_host_registered;
        out->used[KVTCD_T_GPU] = gs.used;
        memcpy(out->gpu_name, gs.device_name, sizeof out->gpu_name);
        out->gpu_name[sizeof out->gpu_name - 1] = '\0';
    }
    if (t->d) {
        out->has_disk = 1;
        kvtcd_disk_get_stats(t->d, &out->disk);
        out->capacity[KVTCD_T_DISK] = out->disk.capacity;
        out->used[KVTCD_T_DISK] = out->disk.used;
        out->backend = kvtcd_disk_backend(t->d);
        out->degraded = degraded(t);
    }
}

