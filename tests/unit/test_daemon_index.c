/* kvtcd internals without a network: the host tier's capacity accounting,
 * the index (namespaces, replace, LRU eviction, pins and their TTLs, put
 * TTLs, chain lookup) and the configuration (sizes, addresses, INI files,
 * flags overriding the file, bad values). */
#include <criterion/criterion.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "config.h"
#include "index.h"
#include "kvtc_errors.h"
#include "log.h"
#include "tier.h"
#include "wire.h"
#include "test_util.h"

static void make_key(uint8_t key[32], uint32_t i)
{
    memset(key, 0, 32);
    memcpy(key, &i, sizeof i);
    key[31] = 0xa5;
}

/* Put a chunk of size bytes (filled with byte i) under key i. */
static int put(kvtcd_index *ix, uint32_t ns, uint32_t i, size_t size,
               uint64_t now, uint64_t expire)
{
    kvtcd_blob *b = NULL;
    int rc = kvtcd_index_reserve(ix, size, now, &b);
    if (rc < 0)
        return rc;
    memset(b->data, (int)(i & 0xff), size);
    kvtcd_entry t;
    memset(&t, 0, sizeof t);
    t.ns = ns;
    make_key(t.key, i);
    t.size = size;
    t.checksum = kvtc_wire_checksum(b->data, size);
    t.expire_ms = expire;
    rc = kvtcd_index_insert(ix, &t, b, 0, now, NULL);
    kvtcd_blob_unref(b); /* the entry holds its own reference */
    return rc;
}

static kvtcd_entry *get(kvtcd_index *ix, uint32_t ns, uint32_t i, uint64_t now)
{
    uint8_t k[32];
    make_key(k, i);
    return kvtcd_index_find(ix, ns, k, now);
}

struct fixture {
    kvtcd_tier *tier;
    kvtcd_index ix;
    uint32_t ns;
};

static void setup(struct fixture *f, uint64_t capacity)
{
    kvtcd_log_set_level(KVTCD_LOG_ERROR);
    cr_assert_eq(kvtcd_store_host_create(capacity, NULL, &f->tier), 0);
    cr_assert_eq(kvtcd_index_init(&f->ix, f->tier), 0);
    cr_assert_eq(kvtcd_index_namespace(&f->ix, "default", &f->ns), 0);
}

static void teardown(struct fixture *f)
{
    kvtcd_index_fini(&f->ix);
    cr_assert_eq(f->tier->used, 0, "blobs leaked: %llu bytes",
                 (unsigned long long)f->tier->used);
    cr_assert_eq(f->tier->blobs, 0);
    kvtcd_tier_destroy(f->tier);
}

Test(daemon_store, capacity_accounting_and_refcounts)
{
    kvtcd_tier *t;
    cr_assert_eq(kvtcd_store_host_create(10000, NULL, &t), 0);
    kvtcd_blob *a, *b, *c;
    cr_assert_eq(kvtcd_tier_alloc(t, 6000, &a), 0);
    cr_assert_eq(((uintptr_t)a->data) % 4096, 0, "blob not page-aligned");
    cr_assert_eq(kvtcd_tier_alloc(t, 4000, &b), 0);
    cr_assert_eq(t->used, 10000);
    cr_assert_eq(kvtcd_tier_alloc(t, 1, &c), KVTC_EFULL);
    cr_assert_eq(kvtcd_tier_alloc(t, 20000, &c), KVTC_EFULL);
    /* An extra reference (an in-flight send) keeps the bytes counted. */
    kvtcd_blob_ref(a);
    kvtcd_blob_unref(a);
    cr_assert_eq(t->used, 10000);
    kvtcd_blob_unref(a);
    cr_assert_eq(t->used, 4000);
    cr_assert_eq(kvtcd_tier_alloc(t, 0, &c), 0, "empty chunks are allowed");
    kvtcd_blob_unref(c);
    kvtcd_blob_unref(b);
    cr_assert_eq(t->used, 0);
    cr_assert_eq(t->blobs, 0);
    kvtcd_tier_destroy(t);
}

Test(daemon_store, freed_buffers_are_reused_within_capacity)
{
    kvtcd_tier *t;
    cr_assert_eq(kvtcd_store_host_create(3u << 20, NULL, &t), 0);
    kvtcd_blob *a, *b;
    cr_assert_eq(kvtcd_tier_alloc(t, 1u << 20, &a), 0);
    uint8_t *first = a->data;
    memset(a->data, 0x11, 1u << 20);
    kvtcd_blob_unref(a);
    cr_assert_eq(t->used, 0);
    /* Same page-rounded size: the cached buffer comes back. */
    cr_assert_eq(kvtcd_tier_alloc(t, (1u << 20) - 100, &a), 0);
    cr_assert_eq(a->data, first);
    cr_assert_eq(a->size, (1u << 20) - 100);
    cr_assert_eq(t->used, (1u << 20) - 100);
    kvtcd_blob_unref(a);
    /* A size that needs the cached bytes' room: the cache gives way. */
    cr_assert_eq(kvtcd_tier_alloc(t, 5u << 19, &b), 0);
    cr_assert_eq(kvtcd_tier_alloc(t, 1u << 20, &a), KVTC_EFULL);
    cr_assert_eq(kvtcd_tier_alloc(t, 1u << 19, &a), 0);
    cr_assert_eq(t->used, 3u << 20);
    kvtcd_blob_unref(a);
    kvtcd_blob_unref(b);
    cr_assert_eq(t->used, 0);
    cr_assert_eq(t->blobs, 0);
    kvtcd_tier_destroy(t); /* frees the cache; ASan checks */
}

Test(daemon_index, insert_find_replace_remove)
{
    struct fixture f;
    setup(&f, 1 << 20);
    cr_assert_eq(put(&f.ix, f.ns, 1, 1000, 0, 0), 0);
    kvtcd_entry *e = get(&f.ix, f.ns, 1, 0);
    cr_assert_not_null(e);
    cr_assert_eq(e->size, 1000);
    cr_assert_eq(e->blob->data[0], 1);
    cr_assert_null(get(&f.ix, f.ns, 2, 0));
    /* Replacing keeps one entry, frees the old bytes and keeps pins. */
    kvtcd_index_pin(&f.ix, e, 1, 0, 0);
    cr_assert_eq(put(&f.ix, f.ns, 1, 3000, 1, 0), 0);
    cr_assert_eq(f.ix.count, 1);
    cr_assert_eq(f.tier->used, 3000);
    e = get(&f.ix, f.ns, 1, 1);
    cr_assert_eq(e->size, 3000);
    cr_assert(kvtcd_entry_pinned(e, 1));
    kvtcd_index_remove(&f.ix, e);
    cr_assert_eq(f.ix.count, 0);
    cr_assert_eq(f.tier->used, 0);
    teardown(&f);
}

Test(daemon_index, namespaces_are_disjoint)
{
    struct fixture f;
    setup(&f, 1 << 20);
    uint32_t other, again;
    cr_assert_eq(kvtcd_index_namespace(&f.ix, "tenant-b", &other), 0);
    cr_assert_neq(other, f.ns);
    cr_assert_eq(kvtcd_index_namespace(&f.ix, "tenant-b", &again), 0);
    cr_assert_eq(again, other);
    cr_assert_eq(kvtcd_index_namespace(&f.ix, "", &again), KVTC_EINVAL);
    cr_assert_eq(put(&f.ix, f.ns, 7, 100, 0, 0), 0);
    cr_assert_null(get(&f.ix, other, 7, 0), "a tenant saw another's key");
    cr_assert_eq(put(&f.ix, other, 7, 200, 0, 0), 0);
    cr_assert_eq(get(&f.ix, f.ns, 7, 0)->size, 100);
    cr_assert_eq(get(&f.ix, other, 7, 0)->size, 200);
    teardown(&f);
}

Test(daemon_index, lru_eviction_order_and_touch)
{
    struct fixture f;
    setup(&f, 10 * 1000);
    for (uint32_t i = 0; i < 10; i++)
        cr_assert_eq(put(&f.ix, f.ns, i, 1000, i, 0), 0);
    cr_assert_eq(f.tier->used, 10000);
    /* Touch 0 so that 1 is now the least recently used. */
    kvtcd_index_touch(&f.ix, get(&f.ix, f.ns, 0, 10), 10);
    cr_assert_eq(put(&f.ix, f.ns, 100, 1000, 11, 0), 0);
    cr_assert_eq(f.ix.evictions, 1);
    cr_assert_not_null(get(&f.ix, f.ns, 0, 11));
    cr_assert_null(get(&f.ix, f.ns, 1, 11));
    cr_assert_not_null(get(&f.ix, f.ns, 2, 11));
    /* A chunk needing 2.5 slots evicts the next three least recent. */
    cr_assert_eq(put(&f.ix, f.ns, 101, 2500, 12, 0), 0);
    cr_assert_null(get(&f.ix, f.ns, 2, 12));
    cr_assert_null(get(&f.ix, f.ns, 3, 12));
    cr_assert_null(get(&f.ix, f.ns, 4, 12));
    cr_assert_not_null(get(&f.ix, f.ns, 5, 12));
    cr_assert_leq(f.tier->used, f.tier->capacity);
    /* Larger than the whole store: refused without evicting anything. */
    size_t before = f.ix.count;
    cr_assert_eq(put(&f.ix, f.ns, 102, 20000, 13, 0), KVTC_EFULL);
    cr_assert_eq(f.ix.count, before);
    teardown(&f);
}

Test(daemon_index, pins_block_eviction_until_unpinned_or_lapsed)
{
    struct fixture f;
    setup(&f, 3000);
    for (uint32_t i = 0; i < 3; i++)
        cr_assert_eq(put(&f.ix, f.ns, i, 1000, 0, 0), 0);
    kvtcd_index_pin(&f.ix, get(&f.ix, f.ns, 0, 0), 1, 0, 0);      /* forever */
    kvtcd_index_pin(&f.ix, get(&f.ix, f.ns, 1, 0), 1, 100, 0);    /* 100 ms */
    kvtcd_index_pin(&f.ix, get(&f.ix, f.ns, 2, 0), 1, 0, 0);
    /* Everything pinned: backpressure, nothing dropped. */
    cr_assert_eq(put(&f.ix, f.ns, 10, 1000, 50, 0), KVTC_EFULL);
    cr_assert_eq(f.ix.count, 3);
    /* Key 1's pin lapses at 100 ms: then it is evictable. */
    cr_assert(kvtcd_entry_pinned(get(&f.ix, f.ns, 1, 99), 99));
    cr_assert_not(kvtcd_entry_pinned(get(&f.ix, f.ns, 1, 100), 100));
    cr_assert_eq(put(&f.ix, f.ns, 10, 1000, 150, 0), 0);
    cr_assert_null(get(&f.ix, f.ns, 1, 150));
    /* Two pins need two unpins. */
    kvtcd_entry *e2 = get(&f.ix, f.ns, 2, 150);
    kvtcd_index_pin(&f.ix, e2, 1, 0, 150);
    kvtcd_index_pin(&f.ix, e2, 0, 0, 150);
    cr_assert(kvtcd_entry_pinned(e2, 150));
    kvtcd_index_pin(&f.ix, e2, 0, 0, 150);
    cr_assert_not(kvtcd_entry_pinned(e2, 150));
    /* Unpinning an unpinned key is harmless. */
    kvtcd_index_pin(&f.ix, e2, 0, 0, 150);
    cr_assert_eq(e2->pins, 0);
    /* A TTL pin on top of a permanent one does not shorten it. */
    kvtcd_entry *e0 = get(&f.ix, f.ns, 0, 150);
    kvtcd_index_pin(&f.ix, e0, 1, 10, 150);
    cr_assert(kvtcd_entry_pinned(e0, 100000));
    /* Key 2 (unpinned) is the one evicted now. */
    cr_assert_eq(put(&f.ix, f.ns, 11, 1000, 200, 0), 0);
    cr_assert_null(get(&f.ix, f.ns, 2, 200));
    cr_assert_not_null(get(&f.ix, f.ns, 0, 200));
    teardown(&f);
}

Test(daemon_index, put_ttl_expires)
{
    struct fixture f;
    setup(&f, 1 << 20);
    cr_assert_eq(put(&f.ix, f.ns, 1, 100, 0, 500), 0);
    cr_assert_not_null(get(&f.ix, f.ns, 1, 499));
    cr_assert_null(get(&f.ix, f.ns, 1, 500));
    cr_assert_eq(f.ix.expirations, 1);
    cr_assert_eq(f.tier->used, 0);
    teardown(&f);
}

Test(daemon_index, chain_lookup_counts_leading_hits)
{
    struct fixture f;
    setup(&f, 1 << 20);
    uint8_t keys[6][32];
    const uint8_t *kp[6];
    for (uint32_t i = 0; i < 6; i++) {
        make_key(keys[i], i);
        kp[i] = keys[i];
    }
    for (uint32_t i = 0; i < 6; i++)
        if (i != 3)
            cr_assert_eq(put(&f.ix, f.ns, i, 64, 0, 0), 0);
    int tiers[6] = {0};
    cr_assert_eq(kvtcd_index_lookup(&f.ix, f.ns, kp, 6, 0, tiers), 3);
    cr_assert_eq(tiers[0], KVTC__WIRE__TIER__TIER_HOST);
    cr_assert_eq(tiers[2], KVTC__WIRE__TIER__TIER_HOST);
    cr_assert_eq(kvtcd_index_lookup(&f.ix, f.ns, kp + 3, 3, 0, NULL), 0);
    cr_assert_eq(kvtcd_index_lookup(&f.ix, f.ns, kp + 4, 2, 0, NULL), 2);
    teardown(&f);
}

Test(daemon_index, many_entries_grow_the_table)
{
    struct fixture f;
    setup(&f, 64ull << 20);
    for (uint32_t i = 0; i < 5000; i++)
        cr_assert_eq(put(&f.ix, f.ns, i, 16, 0, 0), 0);
    cr_assert_gt(f.ix.nbuckets, 1024);
    for (uint32_t i = 0; i < 5000; i += 97) {
        kvtcd_entry *e = get(&f.ix, f.ns, i, 0);
        cr_assert_not_null(e, "key %u lost after growing", i);
        cr_assert_eq(e->blob->data[0], (uint8_t)(i & 0xff));
    }
    teardown(&f);
}

/* ---- config ------------------------------------------------------------- */

Test(daemon_config, sizes_and_addresses)
{
    uint64_t v;
    cr_assert_eq(kvtcd_parse_size("512M", &v), 0);
    cr_assert_eq(v, 512ull << 20);
    cr_assert_eq(kvtcd_parse_size("4G", &v), 0);
    cr_assert_eq(v, 4ull << 30);
    cr_assert_eq(kvtcd_parse_size("64KiB", &v), 0);
    cr_assert_eq(v, 64ull << 10);
    cr_assert_eq(kvtcd_parse_size("12345", &v), 0);
    cr_assert_eq(v, 12345);
    const char *bad[] = {"", "-1", "4X", "G", "1.5G", "99999999999T", "4 G",
                         "+5"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
        cr_assert_eq(kvtcd_parse_size(bad[i], &v), KVTC_EINVAL, "'%s'",
                     bad[i]);

    char host[64];
    uint16_t port;
    cr_assert_eq(kvtcd_parse_hostport("127.0.0.1:7700", host, sizeof host,
                                      &port), 0);
    cr_assert_str_eq(host, "127.0.0.1");
    cr_assert_eq(port, 7700);
    cr_assert_eq(kvtcd_parse_hostport("[::1]:0", host, sizeof host, &port),
                 0);
    cr_assert_str_eq(host, "::1");
    cr_assert_eq(port, 0);
    const char *badaddr[] = {"127.0.0.1", ":80", "h:65536", "h:-1", "h:x",
                             "::1:80", "[::1]80"};
    for (size_t i = 0; i < sizeof badaddr / sizeof badaddr[0]; i++)
        cr_assert_eq(kvtcd_parse_hostport(badaddr[i], host, sizeof host,
                                          &port), KVTC_EINVAL, "'%s'",
                     badaddr[i]);
}

Test(daemon_config, defaults)
{
    kvtcd_config c;
    int action;
    char err[256];
    char *argv[] = {"kvtcd", NULL};
    cr_assert_eq(kvtcd_config_from_args(&c, 1, argv, &action, err, sizeof err),
                 0, "%s", err);
    cr_assert_eq(action, KVTCD_RUN);
    cr_assert_str_eq(c.listen_host, "127.0.0.1");
    cr_assert_eq(c.listen_port, 7700);
    cr_assert_eq(c.admin_port, 7701);
    cr_assert_gt(c.host_mem, 0);
    cr_assert_leq(c.host_mem, 1ull << 30);
    cr_assert_eq(c.log_level, KVTCD_LOG_INFO);
}

static char *write_ini(const char *text)
{
    static char path[512];
    snprintf(path, sizeof path, "%s/kvtcd-test-%d.ini", kvtc_test_tmpdir(), (int)getpid());
    FILE *f = fopen(path, "w");
    cr_assert_not_null(f);
    fputs(text, f);
    fclose(f);
    return path;
}

Test(daemon_config, ini_then_flags_override)
{
    char *path = write_ini("; comment\n[server]\nlisten = 0.0.0.0:9000\n"
                           "admin = 127.0.0.1:9001\n[store]\nhost_mem = 2G\n"
                           "[limits]\nmax_batch = 64\n[log]\nlevel = debug\n");
    kvtcd_config c;
    int action;
    char err[256] = "";
    /* --host-mem comes before --config on the line and still wins. */
    char *argv[] = {"kvtcd", "--host-mem", "512M", "--config", path,
                    "--listen=127.0.0.1:0", NULL};
    cr_assert_eq(kvtcd_config_from_args(&c, 6, argv, &action, err, sizeof err),
                 0, "%s", err);
    cr_assert_eq(c.host_mem, 512ull << 20);
    cr_assert_str_eq(c.listen_host, "127.0.0.1");
    cr_assert_eq(c.listen_port, 0);
    cr_assert_eq(c.admin_port, 9001);
    cr_assert_eq(c.max_batch, 64);
    cr_assert_eq(c.log_level, KVTCD_LOG_DEBUG);
    /* max_chunk (default 256M) is clamped to the memory limit. */
    char *argv2[] = {"kvtcd", "--host-mem", "64M", NULL};
    cr_assert_eq(kvtcd_config_from_args(&c, 3, argv2, &action, err, sizeof err),
                 0, "%s", err);
    cr_assert_eq(c.max_chunk_bytes, 64ull << 20);
    unlink(path);
}

Test(daemon_config, bad_values_are_errors)
{
    kvtcd_config c;
    int action;
    char err[256];
    struct {
        int argc;
        char *argv[4];
        const char *msg;
    } cases[] = {
        {3, {"kvtcd", "--host-mem", "lots"}, "host-mem"},
        {3, {"kvtcd", "--host-mem", "1K"}, "host-mem"}, /* below minimum */
        {3, {"kvtcd", "--listen", "nohost"}, "listen"},
        {3, {"kvtcd", "--max-batch", "0"}, "max-batch"},
        {3, {"kvtcd", "--max-batch", "100000"}, "max-batch"},
        {3, {"kvtcd", "--log-level", "loud"}, "log-level"},
        {2, {"kvtcd", "--listen"}, "listen"}, /* value missing */
        {2, {"kvtcd", "--frobnicate"}, "unknown"},
        {3, {"kvtcd", "--config", "/nonexistent/kvtcd.ini"}, "cannot open"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        err[0] = '\0';
        int rc = kvtcd_config_from_args(&c, cases[i].argc, cases[i].argv,
                                        &action, err, sizeof err);
        cr_assert_lt(rc, 0, "case %zu accepted", i);
        cr_assert_not_null(strstr(err, cases[i].msg), "case %zu: '%s'", i,
                           err);
    }
    const char *bad_ini[] = {
        "[server]\nlisten = 1.2.3.4\n",      /* no port */
        "[store]\nhost_mem = -5\n",
        "[store]\nbogus_key = 1\n",          /* typo must not pass */
        "[nosuch]\nlisten = 1.2.3.4:5\n",
        "this is not ini\n",
    };
    for (size_t i = 0; i < sizeof bad_ini / sizeof bad_ini[0]; i++) {
        char *path = write_ini(bad_ini[i]);
        kvtcd_config_defaults(&c);
        err[0] = '\0';
        cr_assert_lt(kvtcd_config_load_ini(&c, path, err, sizeof err), 0,
                     "ini %zu accepted", i);
        cr_assert_not_null(strstr(err, path), "ini %zu: '%s'", i, err);
        unlink(path);
    }
}

Test(daemon_config, help_and_version)
{
    kvtcd_config c;
    int action;
    char err[64];
    char *h[] = {"kvtcd", "--host-mem", "bad", "--help", NULL};
    cr_assert_eq(kvtcd_config_from_args(&c, 4, h, &action, err, sizeof err), 0);
    cr_assert_eq(action, KVTCD_HELP);
    char *v[] = {"kvtcd", "--version", NULL};
    cr_assert_eq(kvtcd_config_from_args(&c, 2, v, &action, err, sizeof err), 0);
    cr_assert_eq(action, KVTCD_VERSION);
    cr_assert_not_null(strstr(kvtcd_usage(), "--port-file"));
}

Test(daemon_config, example_ini_is_valid)
{
    const char *path = "deploy/kvtcd.example.ini";
    if (access(path, R_OK) != 0)
        cr_skip_test("%s not found (run from the repository root)", path);
    kvtcd_config c;
    char err[256] = "";
    kvtcd_config_defaults(&c);
    cr_assert_eq(kvtcd_config_load_ini(&c, path, err, sizeof err), 0, "%s", err);
    cr_assert_eq(c.listen_port, 7700);
    cr_assert_eq(c.host_mem, 1ull << 30);
}
