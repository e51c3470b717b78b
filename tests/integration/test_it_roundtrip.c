/* Round trips through a real kvtcd over real UCX (shared memory and TCP on
 * loopback): bytes come back exactly, batches, misses, partial chains,
 * replace, delete, tenant isolation. */
#include "itest.h"

#include <criterion/criterion.h>
#include <stdlib.h>
#include <string.h>

#define SPACE 0x52540000u

static const size_t sizes[] = {1024, 4096, 65536 + 7, 1u << 20, (16u << 20) + 4096 - 1, 64u << 20};
#define N_SIZES (sizeof sizes / sizeof sizes[0])

/* Every size once, put then get, on one connection; the content is checked
 * byte for byte and the size is reported exactly. */
static void roundtrip_sizes(const char *tls)
{
    struct itest_daemon d;
    itest_setup(tls);
    itest_daemon_start(&d, "512M", 0, NULL);
    kvtc_conn *c = itest_connect(&d);
    size_t total = 0;
    for (size_t i = 0; i < N_SIZES; i++) {
        size_t n = sizes[i];
        uint8_t *src = malloc(n), *dst = malloc(n + 4096);
        cr_assert(src && dst);
        itest_fill(src, n, 1000 + i);
        kvtc_key k = itest_key(SPACE, (uint32_t)i);
        int rc = kvtc_put(c, &k, src, n);
        cr_assert_eq(rc, 0, "put %zu B over %s: %s (%s)", n, tls, kvtc_strerror(rc), kvtc_last_error(c));
        memset(dst, 0xa5, n + 4096);
        size_t got = 0;
        rc = kvtc_get(c, &k, dst, n + 4096, &got);
        cr_assert_eq(rc, 0, "get %zu B over %s: %s (%s)", n, tls, kvtc_strerror(rc), kvtc_last_error(c));
        cr_assert_eq(got, n, "get reports %zu B, put %zu B", got, n);
        cr_assert(itest_check(dst, n, 1000 + i), "%zu B chunk came back different over %s", n, tls);
        /* Nothing written past the chunk. */
        cr_assert_eq(dst[n], 0xa5);
        cr_assert_eq(dst[n + 4095], 0xa5);
        total += n;
        free(src);
        free(dst);
    }
    /* Every chunk is still there and still right after the others went in. */
    for (size_t i = 0; i < N_SIZES; i++) {
        uint8_t *dst = malloc(sizes[i]);
        size_t got = 0;
        kvtc_key k = itest_key(SPACE, (uint32_t)i);
        cr_assert_eq(kvtc_get(c, &k, dst, sizes[i], &got), 0);
        cr_assert(itest_check(dst, sizes[i], 1000 + i), "%zu B chunk changed", sizes[i]);
        free(dst);
    }
    kvtc_stats s = itest_stats(c);
    cr_expect(s.field_mask & KVTC_STATS_FIELD_CHUNKS);
    cr_expect_eq(s.chunks, N_SIZES, "stats.chunks %lu", (unsigned long)s.chunks);
    cr_expect_geq(s.bytes_used, total, "stats.bytes_used %lu < %zu stored", (unsigned long)s.bytes_used, total);
    cr_expect_geq(s.puts, N_SIZES);
    cr_expect_geq(s.hits, 2 * N_SIZES);
    kvtc_disconnect(c);
    itest_daemon_stop(&d);
}

Test(it_roundtrip, sizes_1k_to_64m_shared_memory, .timeout = 90)
{
    roundtrip_sizes(ITEST_TLS_SM);
}

Test(it_roundtrip, sizes_1k_to_64m_tcp, .timeout = 90)
{
    roundtrip_sizes(ITEST_TLS_TCP);
}

Test(it_roundtrip, batch_put_get_with_misses, .timeout = 60)
{
    enum { N = 48 };
    struct itest_daemon d;
    itest_setup(ITEST_TLS_SM);
    itest_daemon_start(&d, "256M", 0, NULL);
    kvtc_conn *c = itest_connect(&d);

    kvtc_put_item put[N];
    uint8_t *src[N];
    memset(put, 0, sizeof put);
    for (int i = 0; i < N; i++) {
        /* Mixed sizes: eager and rendezvous in one request. */
        size_t n = i % 4 == 0 ? (1u << 20) + 17 : 3000 + 1000 * (size_t)i;
        src[i] = malloc(n);
        itest_fill(src[i], n, 7000 + (uint64_t)i);
        put[i].key = itest_key(SPACE + 1, (uint32_t)i);
        put[i].data = src[i];
        put[i].size = n;
        put[i].status = 12345;
    }
    int rc = kvtc_put_batch(c, put, N, NULL);
    cr_assert_eq(rc, 0, "put_batch: %s (%s)", kvtc_strerror(rc), kvtc_last_error(c));
    for (int i = 0; i < N; i++)
        cr_assert_eq(put[i].status, 0, "chunk %d: %s", i, kvtc_strerror(put[i].status));

    /* Get in another order, with two misses in the middle. */
    kvtc_get_item get[N + 2];
    memset(get, 0, sizeof get);
    for (int j = 0; j < N + 2; j++) {
        int i = (j * 7) % N;
        get[j].key = j == 5 || j == N ? itest_key(SPACE + 2, (uint32_t)j) : put[i].key;
        get[j].capacity = (2u << 20);
        get[j].buf = malloc(get[j].capacity);
    }
    rc = kvtc_get_batch(c, get, N + 2, NULL);
    cr_assert_eq(rc, KVTC_ENOENT, "get_batch with misses returns %s, want the miss", kvtc_strerror(rc));
    for (int j = 0; j < N + 2; j++) {
        int i = (j * 7) % N;
        if (j == 5 || j == N) {
            cr_assert_eq(get[j].status, KVTC_ENOENT, "item %d: %s", j, kvtc_strerror(get[j].status));
            continue;
        }
        cr_assert_eq(get[j].status, 0, "item %d: %s", j, kvtc_strerror(get[j].status));
        cr_assert_eq(get[j].size, put[i].size);
        cr_assert_eq(get[j].tier, KVTC_TIER_HOST);
        cr_assert(itest_check(get[j].buf, get[j].size, 7000 + (uint64_t)i), "item %d differs", j);
    }
    /* All hits: the batch succeeds as a whole. */
    rc = kvtc_get_batch(c, get, 4, NULL);
    cr_assert_eq(rc, 0, "%s", kvtc_strerror(rc));

    /* Too small a buffer: ENOSPC, with the real size reported. */
    uint8_t small[100];
    size_t sz = 0;
    rc = kvtc_get(c, &put[0].key, small, sizeof small, &sz);
    cr_assert_eq(rc, KVTC_ENOSPC, "%s", kvtc_strerror(rc));
    cr_assert_eq(sz, put[0].size);

    for (int i = 0; i < N; i++)
        free(src[i]);
    for (int j = 0; j < N + 2; j++)
        free(get[j].buf);
    kvtc_disconnect(c);
    itest_daemon_stop(&d);
}

Test(it_roundtrip, lookup_partial_chains, .timeout = 60)
{
    enum { N = 8, STORED = 5 };
    struct itest_daemon d;
    itest_setup(ITEST_TLS_SM);
    itest_daemon_start(&d, "64M", 0, NULL);
    kvtc_conn *c = itest_connect(&d);

    uint32_t tokens[N * 16];
    for (uint32_t t = 0; t < N * 16; t++)
        tokens[t] = t * 31 + 7;
    kvtc_key keys[N];
    size_t nk = 0;
    cr_assert_eq(kvtc_key_chain(NULL, "model", 5, tokens, N * 16, 16, keys, N, &nk), 0);
    cr_assert_eq(nk, N);

    uint8_t buf[4096];
    for (int i = 0; i < STORED; i++) {
        kvtc_put_item it = {0};
        itest_fill(buf, sizeof buf, (uint64_t)i);
        it.key = keys[i];
        it.data = buf;
        it.size = sizeof buf;
        if (i > 0) {
            it.field_mask = KVTC_PUT_FIELD_PARENT;
            it.parent = keys[i - 1];
        }
        int rc = kvtc_put_batch(c, &it, 1, NULL);
        cr_assert_eq(rc, 0, "%s", kvtc_strerror(rc));
    }
    size_t hits = 99;
    uint32_t tiers[N];
    cr_assert_eq(kvtc_lookup(c, keys, N, NULL, &hits, tiers), 0);
    cr_assert_eq(hits, STORED, "lookup of %d keys, %d stored: %zu hits", N, STORED, hits);
    for (int i = 0; i < STORED; i++)
        cr_assert_eq(tiers[i], KVTC_TIER_HOST, "tier of hit %d: %u", i, tiers[i]);
    /* Only the chain's head stored. */
    cr_assert_eq(kvtc_lookup(c, keys, 1, NULL, &hits, NULL), 0);
    cr_assert_eq(hits, 1);
    /* A chain that starts with an unknown key has no leading hits, even
     * though later keys are stored. */
    kvtc_key other[3] = {itest_key(SPACE + 3, 0), keys[1], keys[2]};
    cr_assert_eq(kvtc_lookup(c, other, 3, NULL, &hits, NULL), 0);
    cr_assert_eq(hits, 0);
    /* A hole in the middle: the count stops there. */
    int st[1] = {99};
    cr_assert_eq(kvtc_delete(c, &keys[2], 1, NULL, st), 0);
    cr_assert_eq(st[0], 0);
    cr_assert_eq(kvtc_lookup(c, keys, N, NULL, &hits, NULL), 0);
    cr_assert_eq(hits, 2);
    /* Deleting it again: a miss. */
    cr_assert_eq(kvtc_delete(c, &keys[2], 1, NULL, st), KVTC_ENOENT);
    cr_assert_eq(st[0], KVTC_ENOENT, "status of a deleted key: %s", kvtc_strerror(st[0]));
    kvtc_disconnect(c);
    itest_daemon_stop(&d);
}

Test(it_roundtrip, replace_and_tenants, .timeout = 60)
{
    struct itest_daemon d;
    itest_setup(ITEST_TLS_SM);
    itest_daemon_start(&d, "64M", 0, NULL);
    kvtc_conn *a = itest_connect(&d);
    kvtc_conn *b = NULL;
    kvtc_conn_params p = {.field_mask = KVTC_CONN_PARAM_FIELD_TENANT, .tenant = "other-tenant"};
    cr_assert_eq(kvtc_connect(d.addr, &p, &b), 0);

    kvtc_key k = itest_key(SPACE + 4, 1);
    uint8_t v1[10000], v2[20000], out[20000];
    itest_fill(v1, sizeof v1, 1);
    itest_fill(v2, sizeof v2, 2);
    cr_assert_eq(kvtc_put(a, &k, v1, sizeof v1), 0);
    size_t sz = 0;
    /* Same key bytes, another tenant: invisible. */
    cr_assert_eq(kvtc_get(b, &k, out, sizeof out, &sz), KVTC_ENOENT);
    cr_assert_eq(kvtc_put(b, &k, v2, sizeof v2), 0);
    cr_assert_eq(kvtc_get(a, &k, out, sizeof out, &sz), 0);
    cr_assert_eq(sz, sizeof v1);
    cr_assert(itest_check(out, sz, 1), "tenant b's put leaked into tenant a");
    /* An empty chunk is a chunk too (kvtc.h: size may be 0). */
    kvtc_key e = itest_key(SPACE + 4, 2);
    int rc = kvtc_put(a, &e, v1, 0);
    cr_assert_eq(rc, 0, "put of 0 bytes: %s (%s)", kvtc_strerror(rc), kvtc_last_error(a));
    sz = 99;
    cr_assert_eq(kvtc_get(a, &e, out, sizeof out, &sz), 0);
    cr_assert_eq(sz, 0);
    /* A put of an existing key replaces it. */
    cr_assert_eq(kvtc_put(a, &k, v2, sizeof v2), 0);
    cr_assert_eq(kvtc_get(a, &k, out, sizeof out, &sz), 0);
    cr_assert_eq(sz, sizeof v2);
    cr_assert(itest_check(out, sz, 2));
    kvtc_disconnect(b);
    kvtc_disconnect(a);
    itest_daemon_stop(&d);
}
