/* Mixed batches: when some items of a Put, Delete or Pin fail and others
 * succeed, libkvtc reports each item's own status (the daemon's per-item
 * body is authoritative even when Reply.status is not OK), and the items
 * that succeeded really are stored, deleted or pinned. */
#include "itest.h"

#include <criterion/criterion.h>
#include <stdlib.h>
#include <string.h>

#define SPACE 0x4d495800u
#define CHUNK (4u << 20)
#define N 3

/* A wrong checksum on chunk 1 only. The public API always checksums what
 * it sends, so the test changes the caller's bytes after the submit: a
 * rendezvous-sized payload over TCP is read only when this process
 * progresses again (the daemon asks for it first), so the daemon gets the
 * changed bytes and the checksum of the original ones. */
Test(client_batch_status, put_one_bad_chunk_others_stored, .timeout = 90)
{
    struct itest_daemon d;
    itest_setup(ITEST_TLS_TCP);
    /* The corruption is injected through UCX's deferred read (see above);
     * by the local path the daemon reads the bytes and checksums them
     * itself, so there is nothing to inject into. */
    setenv("KVTC_LOCAL", "off", 1);
    itest_daemon_start(&d, "256M", 0, NULL);
    kvtc_conn *c = itest_connect(&d);

    uint8_t *buf[N];
    kvtc_put_item it[N];
    for (int i = 0; i < N; i++) {
        buf[i] = malloc(CHUNK);
        cr_assert(buf[i]);
        itest_fill(buf[i], CHUNK, 700 + (uint64_t)i);
        it[i] = (kvtc_put_item){.key = itest_key(SPACE, (uint32_t)i),
                                .data = buf[i], .size = CHUNK};
    }
    struct itest_done dn = {0};
    kvtc_op_params p = {.field_mask = KVTC_OP_PARAM_FIELD_CALLBACK,
                        .cb = itest_done_cb, .arg = &dn};
    cr_assert_eq(kvtc_put_batch_async(c, it, N, &p), 0, "%s", kvtc_last_error(c));
    buf[1][CHUNK / 2] ^= 0x5a; /* before any progress */
    cr_assert_eq(kvtc_wait_all(c, 60000), 0);
    cr_assert_eq(dn.calls, 1);
    cr_expect_eq(dn.status, KVTC_ECORRUPT, "batch status %d (%s)", dn.status,
                 kvtc_strerror(dn.status));
    cr_expect_eq(it[0].status, 0, "chunk 0: %s", kvtc_strerror(it[0].status));
    cr_expect_eq(it[1].status, KVTC_ECORRUPT, "chunk 1: %s", kvtc_strerror(it[1].status));
    cr_expect_eq(it[2].status, 0, "chunk 2: %s", kvtc_strerror(it[2].status));

    /* The good chunks are stored byte for byte; the bad one is not. */
    uint8_t *dst = malloc(CHUNK);
    cr_assert(dst);
    for (int i = 0; i < N; i++) {
        size_t got = 0;
        memset(dst, 0, CHUNK);
        int rc = kvtc_get(c, &it[i].key, dst, CHUNK, &got);
        if (i == 1) {
            cr_expect_eq(rc, KVTC_ENOENT, "corrupt chunk stored: %s", kvtc_strerror(rc));
            continue;
        }
        cr_assert_eq(rc, 0, "get %d: %s (%s)", i, kvtc_strerror(rc), kvtc_last_error(c));
        cr_expect_eq(got, CHUNK);
        cr_expect(itest_check(dst, CHUNK, 700 + (uint64_t)i), "chunk %d differs", i);
    }
    free(dst);
    for (int i = 0; i < N; i++)
        free(buf[i]);
    kvtc_disconnect(c);
    itest_daemon_stop(&d);
}

/* Delete and Pin of a stored key next to a missing one: the stored key is
 * handled, the missing one reported, the call fails with the first error. */
Test(client_batch_status, delete_and_pin_mixed, .timeout = 60)
{
    struct itest_daemon d;
    itest_setup(ITEST_TLS_SM);
    itest_daemon_start(&d, "64M", 0, NULL);
    kvtc_conn *c = itest_connect(&d);
    kvtc_key keys[2] = {itest_key(SPACE, 10), itest_key(SPACE, 11)};
    uint8_t small[100];
    itest_fill(small, sizeof small, 10);
    cr_assert_eq(kvtc_put(c, &keys[0], small, sizeof small), 0);

    int st[2] = {99, 99};
    kvtc_key rev[2] = {keys[1], keys[0]}; /* the miss first */
    cr_expect_eq(kvtc_pin(c, rev, 2, NULL, st), KVTC_ENOENT);
    cr_expect_eq(st[0], KVTC_ENOENT);
    cr_expect_eq(st[1], 0);
    /* Pinned for real: a delete of it is refused. */
    st[0] = st[1] = 99;
    cr_expect_eq(kvtc_delete(c, keys, 2, NULL, st), KVTC_EPERM);
    cr_expect_eq(st[0], KVTC_EPERM);
    cr_expect_eq(st[1], KVTC_ENOENT);
    st[0] = st[1] = 99;
    cr_expect_eq(kvtc_unpin(c, keys, 2, NULL, st), KVTC_ENOENT);
    cr_expect_eq(st[0], 0);
    cr_expect_eq(st[1], KVTC_ENOENT);
    st[0] = st[1] = 99;
    cr_expect_eq(kvtc_delete(c, keys, 2, NULL, st), KVTC_ENOENT);
    cr_expect_eq(st[0], 0);
    cr_expect_eq(st[1], KVTC_ENOENT);
    size_t hits = 9;
    cr_assert_eq(kvtc_lookup(c, keys, 1, NULL, &hits, NULL), 0);
    cr_expect_eq(hits, 0, "deleted key still there");
    kvtc_disconnect(c);
    itest_daemon_stop(&d);
}
