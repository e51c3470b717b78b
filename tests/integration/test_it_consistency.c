/* Never serve wrong KV: while one client keeps replacing, deleting and
 * evicting (by filling a small store) a chunk, readers on other connections
 * get either a whole version of it or a miss, never a mix of versions or
 * bytes of a freed buffer. Gets of large chunks are sent zero-copy from the
 * daemon's buffer, so this is what holds that buffer until the send ends. */
#include "itest.h"

#include <criterion/criterion.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define SPACE 0x434f4e53u
#define CHUNK ((4u << 20) + 4096)
#define READERS 2

struct shared {
    const struct itest_daemon *d;
    atomic_int stop;
    atomic_int versions; /* versions put so far */
};

/* Version v of the chunk: v in the first 8 bytes, the rest from seed v. */
static void make_version(uint8_t *buf, uint64_t v)
{
    memcpy(buf, &v, 8);
    itest_fill(buf + 8, CHUNK - 8, v);
}

struct reader {
    struct shared *sh;
    int hits, misses;
    char why[160];
};

static void *reader_main(void *arg)
{
    struct reader *r = arg;
    kvtc_conn *c = NULL;
    uint8_t *buf = malloc(CHUNK);
    kvtc_key k = itest_key(SPACE, 0);
    if (kvtc_connect(r->sh->d->addr, NULL, &c)) {
        snprintf(r->why, sizeof r->why, "connect failed");
        goto out;
    }
    while (!atomic_load(&r->sh->stop)) {
        size_t got = 0;
        memset(buf, 0xee, 64);
        int rc = kvtc_get(c, &k, buf, CHUNK, &got);
        if (rc == KVTC_ENOENT) {
            r->misses++;
            continue;
        }
        if (rc) {
            snprintf(r->why, sizeof r->why, "get: %s (%s)", kvtc_strerror(rc), kvtc_last_error(c));
            break;
        }
        uint64_t v;
        memcpy(&v, buf, 8);
        if (got != CHUNK || v >= (uint64_t)atomic_load(&r->sh->versions) + 1 ||
            !itest_check(buf + 8, CHUNK - 8, v)) {
            snprintf(r->why, sizeof r->why, "get %d returned %zu bytes that are no whole version (head says %llu)",
                     r->hits, got, (unsigned long long)v);
            break;
        }
        r->hits++;
    }
out:
    kvtc_disconnect(c);
    free(buf);
    return NULL;
}

Test(it_consistency, readers_see_whole_versions_or_misses, .timeout = 90)
{
    struct itest_daemon d;
    itest_setup(ITEST_TLS_SM);
    /* Room for ~7 chunks: the filler puts below evict the hot chunk too. */
    itest_daemon_start(&d, "32M", 0, NULL);
    struct shared sh = {.d = &d};
    struct reader rd[READERS];
    pthread_t tid[READERS];
    memset(rd, 0, sizeof rd);
    for (int i = 0; i < READERS; i++) {
        rd[i].sh = &sh;
        cr_assert_eq(pthread_create(&tid[i], NULL, reader_main, &rd[i]), 0);
    }
    kvtc_conn *w = itest_connect(&d);
    uint8_t *buf = malloc(CHUNK);
    kvtc_key hot = itest_key(SPACE, 0);
    int rounds = 120, deletes = 0, fillers = 0;
    for (int v = 0; v < rounds; v++) {
        make_version(buf, (uint64_t)v);
        atomic_store(&sh.versions, v);
        int rc = kvtc_put(w, &hot, buf, CHUNK);
        cr_assert_eq(rc, 0, "put version %d: %s (%s)", v, kvtc_strerror(rc), kvtc_last_error(w));
        if (v % 5 == 4) {
            int st;
            rc = kvtc_delete(w, &hot, 1, NULL, &st);
            cr_assert(rc == 0 || rc == KVTC_ENOENT, "delete: %s", kvtc_strerror(rc));
            deletes++;
        } else if (v % 5 == 2) {
            /* Push the hot chunk out by filling the store. */
            for (int f = 0; f < 8; f++) {
                kvtc_key fk = itest_key(SPACE + 1, (uint32_t)(v * 8 + f));
                cr_assert_eq(kvtc_put(w, &fk, buf, CHUNK), 0);
                fillers++;
            }
        }
    }
    atomic_store(&sh.stop, 1);
    for (int i = 0; i < READERS; i++)
        pthread_join(tid[i], NULL);
    int hits = 0;
    for (int i = 0; i < READERS; i++) {
        cr_expect_eq(rd[i].why[0], '\0', "reader %d: %s", i, rd[i].why);
        hits += rd[i].hits;
    }
    cr_expect_gt(hits, 0, "the readers never got the chunk: the test proved nothing");
    kvtc_stats s = itest_stats(w);
    cr_expect_gt(s.evictions, 0, "no evictions happened");
    cr_log_info("consistency: %d hits, %d misses, %d deletes, %d filler puts, %lu evictions", hits,
                rd[0].misses + rd[1].misses, deletes, fillers, (unsigned long)s.evictions);
    cr_expect(itest_daemon_alive(&d));
    free(buf);
    kvtc_disconnect(w);
    itest_daemon_stop(&d);
}
