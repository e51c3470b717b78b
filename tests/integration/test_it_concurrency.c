/* Many clients at once, each with its own connection (its own UCX worker),
 * against one daemon: every chunk comes back exactly, also when read by a
 * client other than its writer. */
#include "itest.h"

#include <criterion/criterion.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define SPACE 0x434f4e00u
#define PER_CLIENT 6

struct client {
    const struct itest_daemon *d;
    pthread_barrier_t *mid;
    int index, clients;
    int rc;
    char why[200];
};

static size_t chunk_size(int client, int j)
{
    /* Eager and rendezvous sizes, different for every client. */
    return (size_t)(j % 3 == 0 ? (1u << 20) + 64 * (unsigned)client : 4096 + 997 * (unsigned)(client + j));
}

static uint64_t seed_of(int client, int j)
{
    return ((uint64_t)client << 16) | (uint64_t)j;
}

static void *client_main(void *arg)
{
    struct client *t = arg;
    kvtc_conn *c = NULL;
    kvtc_conn_params p = {.field_mask = KVTC_CONN_PARAM_FIELD_CONNECT_TIMEOUT,
                          .connect_timeout_ms = 20000};
    uint8_t *buf = malloc(2u << 20);
    int rc = kvtc_connect(t->d->addr, &p, &c);
    if (rc) {
        snprintf(t->why, sizeof t->why, "connect: %s", kvtc_strerror(rc));
        goto wait;
    }
    for (int j = 0; j < PER_CLIENT && !rc; j++) {
        size_t n = chunk_size(t->index, j);
        itest_fill(buf, n, seed_of(t->index, j));
        kvtc_key k = itest_key(SPACE + (uint32_t)t->index, (uint32_t)j);
        if ((rc = kvtc_put(c, &k, buf, n)))
            snprintf(t->why, sizeof t->why, "put %d: %s (%s)", j, kvtc_strerror(rc), kvtc_last_error(c));
    }
    for (int j = 0; j < PER_CLIENT && !rc; j++) {
        size_t n = chunk_size(t->index, j), got = 0;
        kvtc_key k = itest_key(SPACE + (uint32_t)t->index, (uint32_t)j);
        if ((rc = kvtc_get(c, &k, buf, 2u << 20, &got)))
            snprintf(t->why, sizeof t->why, "get own %d: %s", j, kvtc_strerror(rc));
        else if (got != n || !itest_check(buf, n, seed_of(t->index, j)))
            snprintf(t->why, sizeof t->why, "own chunk %d differs (%zu B, want %zu)", j, got, n), rc = -100;
    }
wait:
    /* Everyone has written before anyone reads a neighbour's chunks. */
    pthread_barrier_wait(t->mid);
    int peer = (t->index + 1) % t->clients;
    for (int j = 0; j < PER_CLIENT && !rc; j++) {
        size_t n = chunk_size(peer, j), got = 0;
        kvtc_key k = itest_key(SPACE + (uint32_t)peer, (uint32_t)j);
        if ((rc = kvtc_get(c, &k, buf, 2u << 20, &got)))
            snprintf(t->why, sizeof t->why, "get peer %d/%d: %s", peer, j, kvtc_strerror(rc));
        else if (got != n || !itest_check(buf, n, seed_of(peer, j)))
            snprintf(t->why, sizeof t->why, "peer chunk %d/%d differs", peer, j), rc = -100;
    }
    t->rc = rc ? rc : (c ? 0 : -1);
    kvtc_disconnect(c);
    free(buf);
    return NULL;
}

static void run_clients(const char *tls, int clients)
{
    struct itest_daemon d;
    itest_setup(tls);
    itest_daemon_start(&d, "512M", 0, NULL);
    pthread_barrier_t mid;
    pthread_barrier_init(&mid, NULL, (unsigned)clients);
    struct client *t = calloc((size_t)clients, sizeof *t);
    pthread_t *tid = calloc((size_t)clients, sizeof *tid);
    for (int i = 0; i < clients; i++) {
        t[i] = (struct client){.d = &d, .mid = &mid, .index = i, .clients = clients};
        cr_assert_eq(pthread_create(&tid[i], NULL, client_main, &t[i]), 0);
    }
    for (int i = 0; i < clients; i++)
        pthread_join(tid[i], NULL);
    for (int i = 0; i < clients; i++)
        cr_expect_eq(t[i].rc, 0, "client %d of %d over %s: %s", i, clients, tls, t[i].why);

    kvtc_conn *c = itest_connect(&d);
    kvtc_stats s = itest_stats(c);
    cr_expect_eq(s.chunks, (uint64_t)clients * PER_CLIENT, "stats.chunks %lu", (unsigned long)s.chunks);
    cr_expect_geq(s.hits, (uint64_t)clients * PER_CLIENT * 2);
    kvtc_disconnect(c);
    pthread_barrier_destroy(&mid);
    free(t);
    free(tid);
    itest_daemon_stop(&d);
}

Test(it_concurrency, clients_24_shared_memory, .timeout = 120)
{
    run_clients(ITEST_TLS_SM, 24);
}

Test(it_concurrency, clients_16_tcp, .timeout = 120)
{
    run_clients(ITEST_TLS_TCP, 16);
}

/* --max-sessions: one client too many is refused at connect time; the
 * others keep working, and its slot is reusable once one leaves. */
Test(it_concurrency, max_sessions_refuses_the_extra_client, .timeout = 60)
{
    struct itest_daemon d;
    itest_setup(ITEST_TLS_SM);
    const char *extra[] = {"--max-sessions", "4", NULL};
    itest_daemon_start(&d, "64M", 0, extra);
    kvtc_conn *c[4];
    for (int i = 0; i < 4; i++)
        c[i] = itest_connect(&d);
    kvtc_conn *more = NULL;
    kvtc_conn_params p = {.field_mask = KVTC_CONN_PARAM_FIELD_CONNECT_TIMEOUT, .connect_timeout_ms = 5000};
    int rc = kvtc_connect(d.addr, &p, &more);
    cr_expect_neq(rc, 0, "a 5th client was accepted with --max-sessions 4");
    if (!rc)
        kvtc_disconnect(more);
    uint8_t buf[4096] = {7};
    for (int i = 0; i < 4; i++) {
        kvtc_key k = itest_key(SPACE + 100, (uint32_t)i);
        cr_assert_eq(kvtc_put(c[i], &k, buf, sizeof buf), 0, "client %d after the refusal", i);
    }
    kvtc_disconnect(c[3]);
    /* The daemon notices the departure asynchronously: retry for a while. */
    rc = -1;
    for (int tries = 0; tries < 50 && rc; tries++) {
        rc = kvtc_connect(d.addr, &p, &c[3]);
        if (rc) {
            struct timespec ts = {0, 100 * 1000000L};
            nanosleep(&ts, NULL);
        }
    }
    cr_assert_eq(rc, 0, "no room for a new client after one left: %s", kvtc_strerror(rc));
    for (int i = 0; i < 4; i++)
        kvtc_disconnect(c[i]);
    itest_daemon_stop(&d);
}
