/* checker.c - the checksums of pipelined UCX gets, off the caller's thread.
 *
 * libkvtc checks every chunk a get brings over UCX against the checksum the
 * daemon announced (XXH3-64, ~180 us per 4 MiB on the H100 host) before
 * the caller sees it. Inline, that hash runs on the connection's thread
 * inside kvtc_progress, and while it runs that thread moves no bytes: with
 * several gets in flight the next transfer stalls behind it (UCX over TCP
 * progresses only when called). So when a get that finished has bytes to
 * check and other operations are still in flight, run_done hands it to the
 * connection's checker thread, which fills each destination's sum
 * (kvtc__get_dest.summed) and hands it back; kvtc_progress then finishes it
 * as before: compare, callback. A lone get is checked inline, as there is
 * nothing to overlap. The thread starts with the first such get and stops
 * at kvtc_disconnect; KVTC_CONN_PARAM_FIELD_CHECK_THREAD turns it off.
 *
 * The thread reads the caller's buffers (the op owns them until its
 * callback) and writes only the op's dests; the op sits on one list at a
 * time, the checker's under its mutex. It wakes a connection sleeping on
 * its fd with ucp_worker_signal (thread-safe). */
#include "internal.h"

#include <pthread.h>
#include <stdlib.h>

#include "wire.h"

struct kvtc__checker {
    pthread_t thread;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    struct kvtc__op *todo_head, *todo_tail; /* linked by op->next */
    struct kvtc__op *done_head, *done_tail;
    size_t n;                               /* handed over, not collected */
    int stop;
    ucp_worker_h worker;
};

static void push(struct kvtc__op **head, struct kvtc__op **tail, struct kvtc__op *op)
{
    op->next = NULL;
    if (*tail)
        (*tail)->next = op;
    else
        *head = op;
    *tail = op;
}

static void *checker_main(void *arg)
{
    struct kvtc__checker *k = arg;
    pthread_mutex_lock(&k->mu);
    for (;;) {
        struct kvtc__op *op = k->todo_head;
        if (!op) {
            if (k->stop)
                break;
            pthread_cond_wait(&k->cv, &k->mu);
            continue;
        }
        k->todo_head = op->next;
        if (!k->todo_head)
            k->todo_tail = NULL;
        pthread_mutex_unlock(&k->mu);
        for (size_t i = 0; i < op->n_dests; i++) {
            struct kvtc__get_dest *d = &op->dests[i];
            if (kvtc__get_dest_needs_sum(op, i)) {
                d->sum = kvtc_wire_checksum(d->at, d->len);
                d->summed = 1;
            }
        }
        pthread_mutex_lock(&k->mu);
        push(&k->done_head, &k->done_tail, op);
        ucp_worker_signal(k->worker);
    }
    pthread_mutex_unlock(&k->mu);
    return NULL;
}

static int checker_start(kvtc_conn *c)
{
    struct kvtc__checker *k = calloc(1, sizeof *k);
    if (!k)
        return KVTC_ENOMEM;
    k->worker = c->worker;
    pthread_mutex_init(&k->mu, NULL);
    pthread_cond_init(&k->cv, NULL);
    if (pthread_create(&k->thread, NULL, checker_main, k) != 0) {
        pthread_cond_destroy(&k->cv);
        pthread_mutex_destroy(&k->mu);
        free(k);
        return KVTC_ENOMEM;
    }
    c->checker = k;
    return 0;
}

/* Bytes op's hits would be hashed over at completion. */
static size_t bytes_to_sum(const struct kvtc__op *op)
{
    size_t total = 0;
    for (size_t i = 0; i < op->n_dests; i++)
        if (kvtc__get_dest_needs_sum(op, i))
            total += op->dests[i].len;
    return total;
}

int kvtc__checker_take(kvtc_conn *c, struct kvtc__op *op)
{
    if (!c->check_thread || op->kind != KVTC__OP_GET || op->status || op->fetched ||
        op->local || !c->n_inflight || bytes_to_sum(op) < KVTC_WIRE_RNDV_THRESH_BYTES)
        return 0;
    if (!c->checker && checker_start(c) != 0) {
        c->check_thread = 0; /* no thread: check inline from now on */
        return 0;
    }
    struct kvtc__checker *k = c->checker;
    pthread_mutex_lock(&k->mu);
    push(&k->todo_head, &k->todo_tail, op);
    k->n++;
    pthread_cond_signal(&k->cv);
    pthread_mutex_unlock(&k->mu);
    return 1;
}

void kvtc__checker_collect(kvtc_conn *c)
{
    struct kvtc__checker *k = c->checker;
    if (!k)
        return;
    pthread_mutex_lock(&k->mu);
    struct kvtc__op *op = k->done_head;
    k->done_head = k->done_tail = NULL;
    while (op) {
        struct kvtc__op *next = op->next;
        k->n--;
        /* Back among the finished ops: kvtc__op_finish compares the sums. */
        if (c->done_tail)
            c->done_tail->next = op;
        else
            c->done_head = op;
        c->done_tail = op;
        op->next = NULL;
        c->n_done++;
        op = next;
    }
    pthread_mutex_unlock(&k->mu);
}

size_t kvtc__checker_pending(const kvtc_conn *c)
{
    struct kvtc__checker *k = c->checker;
    if (!k)
        return 0;
    pthread_mutex_lock(&k->mu);
    size_t n = k->n;
    pthread_mutex_unlock(&k->mu);
    return n;
}

int kvtc__checker_ready(const kvtc_conn *c)
{
    struct kvtc__checker *k = c->checker;
    if (!k)
        return 0;
    pthread_mutex_lock(&k->mu);
    int ready = k->done_head != NULL;
    pthread_mutex_unlock(&k->mu);
    return ready;
}

void kvtc__checker_stop(kvtc_conn *c)
{
    struct kvtc__checker *k = c->checker;
    if (!k)
        return;
    pthread_mutex_lock(&k->mu);
    k->stop = 1; /* the thread finishes what it has, then exits */
    pthread_cond_signal(&k->cv);
    pthread_mutex_unlock(&k->mu);
    pthread_join(k->thread, NULL);
    kvtc__checker_collect(c);
    pthread_cond_destroy(&k->cv);
    pthread_mutex_destroy(&k->mu);
    free(k);
    c->checker = NULL;
    c->check_thread = 0; /* the rest of the connection's life: inline */
}
