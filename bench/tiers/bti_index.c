/* Index measurements of kvtc-bench-tiers: heap bytes per stored chunk and
 * lookup latency, through the daemon's own index (daemon/index.c). */
#include "bti.h"

#include <malloc.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <xxhash.h>

#include "index.h"
#include "kvtc_errors.h"

static void key_of(uint64_t i, uint8_t key[KVTCD_KEY_BYTES])
{
    uint64_t h[4] = {XXH3_64bits_withSeed(&i, sizeof i, 11), XXH3_64bits_withSeed(&i, sizeof i, 12),
                     XXH3_64bits_withSeed(&i, sizeof i, 13), i};
    memcpy(key, h, KVTCD_KEY_BYTES);
}

static size_t heap_bytes(void)
{
    struct mallinfo2 m = mallinfo2();
    /* Arena bytes in use plus mmap'd blocks (large bucket arrays). */
    return m.uordblks + m.hblkhd;
}

static inline uint64_t ns_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static int cmp_u32(const void *a, const void *b)
{
    uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
    return x < y ? -1 : x > y;
}

static double pct(uint32_t *v, size_t n, double p)
{
    size_t i = (size_t)(p * (double)(n - 1) + 0.5);
    return v[i];
}

static uint64_t rng(uint64_t *s)
{
    *s ^= *s << 13;
    *s ^= *s >> 7;
    *s ^= *s << 17;
    return *s;
}

/* Room in a full host tier behind the n chunks only the disk holds (the
 * LRU's tail): each put's kvtcd_index_reserve drops the least recent clean
 * host copy. ROOM_CHUNKS host chunks of ROOM_BYTES, all on disk too. */
#define ROOM_CHUNKS 64u
#define ROOM_BYTES 4096u

static int room_put(kvtcd_index *ix, uint32_t ns, uint64_t i, uint64_t now)
{
    kvtcd_blob *b = NULL;
    int rc = kvtcd_index_reserve(ix, ROOM_BYTES, now, &b);
    if (rc)
        return rc;
    kvtcd_entry t;
    memset(&t, 0, sizeof t);
    t.ns = ns;
    key_of(UINT64_MAX / 2 + i, t.key);
    t.size = ROOM_BYTES;
    t.disk_state = KVTCD_DISK_CLEAN; /* as if written through */
    rc = kvtcd_index_insert(ix, &t, b, 0, now, NULL);
    kvtcd_blob_unref(b);
    return rc;
}

static int room(kvtcd_index *ix, uint32_t ns, uint64_t probes, uint32_t *lat,
                struct bti_index_res *out)
{
    int rc = 0;
    ix->lower_tiers = 1;
    for (uint64_t i = 0; i < ROOM_CHUNKS && !rc; i++)
        rc = room_put(ix, ns, i, 2);
    for (uint64_t j = 0; j < probes && !rc; j++) {
        uint64_t a = ns_now();
        rc = room_put(ix, ns, ROOM_CHUNKS + j, 3 + j);
        uint64_t dt = ns_now() - a;
        lat[j] = dt > UINT32_MAX ? UINT32_MAX : (uint32_t)dt;
    }
    if (rc) {
        fprintf(stderr, "bench-tiers: index room: %s\n", kvtc_strerror(rc));
        return rc;
    }
    qsort(lat, probes, sizeof *lat, cmp_u32);
    out->room_p50_ns = pct(lat, probes, 0.5);
    out->room_p99_ns = pct(lat, probes, 0.99);
    return 0;
}

int bti_index(uint64_t n, uint64_t probes, struct bti_index_res *out)
{
    kvtcd_tier *host = NULL;
    kvtcd_index ix;
    uint32_t ns = 0;
    uint32_t *lat = malloc((probes ? probes : 1) * sizeof *lat);
    int rc;
    memset(out, 0, sizeof *out);
    if (!lat)
        return KVTC_ENOMEM;
    /* A real host tier, for the room measurement; created before the
     * heap is counted: the entries are the index's cost. */
    rc = kvtcd_store_host_create((uint64_t)ROOM_CHUNKS * ROOM_BYTES, NULL, &host);
    if (rc) {
        free(lat);
        return rc;
    }
    size_t before = heap_bytes();
    rc = kvtcd_index_init(&ix, host);
    if (rc) {
        kvtcd_tier_destroy(host);
        free(lat);
        return rc;
    }
    kvtcd_index_namespace(&ix, "bench", &ns);

    /* Entries as a restart rebuilds them: a disk copy, no host copy. Every
     * 8th chunk extends the one before (the child table counts it). */
    kvtcd_entry t;
    memset(&t, 0, sizeof t);
    t.ns = ns;
    t.size = 1u << 20;
    t.disk_state = KVTCD_DISK_CLEAN;
    t.dloc.rec_len = (1u << 20) + 4096;
    double t0 = bti_now();
    for (uint64_t i = 0; i < n; i++) {
        key_of(i, t.key);
        t.has_parent = i % 8 != 0;
        if (t.has_parent)
            key_of(i - 1, t.parent);
        t.checksum = i;
        t.dloc.off = i * t.dloc.rec_len;
        rc = kvtcd_index_insert(&ix, &t, NULL, 0, 1, NULL);
        if (rc) {
            fprintf(stderr, "bench-tiers: index insert %llu: %s\n", (unsigned long long)i,
                    kvtc_strerror(rc));
            goto cleanup;
        }
    }
    out->insert_s = bti_now() - t0;
    out->bytes_per_entry = (double)(heap_bytes() - before) / (double)n;

    /* The clock's own cost, measured the same way as a probe. */
    uint64_t s = 0x9e3779b97f4a7c15ull;
    for (uint64_t j = 0; j < probes; j++) {
        uint64_t a = ns_now();
        lat[j] = (uint32_t)(ns_now() - a);
    }
    qsort(lat, probes, sizeof *lat, cmp_u32);
    out->timer_ns = pct(lat, probes, 0.5);

    uint8_t key[KVTCD_KEY_BYTES];
    double sum = 0;
    for (uint64_t j = 0; j < probes; j++) {
        key_of(rng(&s) % n, key);
        uint64_t a = ns_now();
        kvtcd_entry *e = kvtcd_index_find(&ix, ns, key, 1);
        uint64_t dt = ns_now() - a;
        if (!e) {
            fprintf(stderr, "bench-tiers: index lost a key\n");
            rc = KVTC_EIO;
            goto cleanup;
        }
        lat[j] = dt > UINT32_MAX ? UINT32_MAX : (uint32_t)dt;
        sum += (double)dt;
    }
    qsort(lat, probes, sizeof *lat, cmp_u32);
    out->find_p50_ns = pct(lat, probes, 0.5);
    out->find_p99_ns = pct(lat, probes, 0.99);
    out->find_mean_ns = sum / (double)probes;

    /* A chain of 8 consecutive keys (one parent run), as a prefix lookup. */
    uint8_t keys[8][KVTCD_KEY_BYTES];
    const uint8_t *kp[8];
    uint64_t chains = probes / 8 ? probes / 8 : 1;
    for (uint64_t j = 0; j < chains; j++) {
        uint64_t first = (rng(&s) % (n / 8 ? n / 8 : 1)) * 8;
        for (int k = 0; k < 8; k++) {
            key_of(first + (uint64_t)k < n ? first + (uint64_t)k : n - 1, keys[k]);
            kp[k] = keys[k];
        }
        uint64_t a = ns_now();
        uint32_t hits = kvtcd_index_lookup(&ix, ns, kp, 8, 1, NULL);
        uint64_t dt = ns_now() - a;
        (void)hits;
        lat[j] = dt > UINT32_MAX ? UINT32_MAX : (uint32_t)dt;
    }
    qsort(lat, chains, sizeof *lat, cmp_u32);
    out->lookup8_p50_ns = pct(lat, chains, 0.5);
    out->lookup8_p99_ns = pct(lat, chains, 0.99);
    rc = room(&ix, ns, probes / 100 ? probes / 100 : 1, lat, out);
cleanup:
    kvtcd_index_fini(&ix);
    kvtcd_tier_destroy(host);
    free(lat);
    return rc;
}
