/* checker.c - the checksums of pipelined UCX puts and gets, off the
 * caller's thread.
 *
 * libkvtc checks every chunk a get brings over UCX against the checksum
 * the daemon announced (XXH3-64, ~180 us per 4 MiB on the H100 host)
 * before the caller sees it, and hashes every put's payload for the daemon
 * to check. Inline, those hashes run on the connection's thread, and while
 * they run it moves no bytes: with several operations in flight the next
 * transfer stalls behind them (UCX over TCP progresses only when called).
 * So with other operations in flight:
 *   - a get that finished with bytes to check goes from run_done to the
 *     connection's checker thread, which fills each destination's sum
 *     (kvtc__get_dest.summed); back on the done list, kvtc__op_finish
 *     compares as before;
 *   - a put's payload is hashed there before it is sent: the thread fills
 *     the checksums its request announces, and kvtc_progress sends it
 *     (kvtc__put_send_later).
 * A lone get or put is hashed inline: nothing to overlap. The thread
 * starts with the first such operation and stops at kvtc_disconnect
 * (puts it holds then fail with KVTC_ECANCELED, unsent);
 * KVTC_CONN_PARAM_FIELD_CHECK_THREAD turns it off.
 *
 * The thread reads the caller's buffers (the op owns them until its
 * callback) and writes only the op's sums; an op is on one list at a time,
 * the checker's under its mutex. It wakes a connection sleeping on its fd
 * with ucp_worker_signal (callable from any thread). */
#include "fifo.h"
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
        KVTC_FIFO_POP(k->todo_head, k->todo_tail, next);
        pthread_mutex_unlock(&k->mu);
        if (op->later) {
            /* A put: the checksums its request announces. */
            Kvtc__Wire__ChunkMeta *m = op->later->metas;
            for (size_t i = 0; i < op->n; i++)
                if (m[i].has_checksum)
                    m[i].checksum = kvtc_wire_checksum(op->out.put[i].data, op->out.put[i].size);
        } else {
            for (size_t i = 0; i < op->n_dests; i++) {
                struct kvtc__get_dest *d = &op->dests[i];
                if (kvtc__get_dest_needs_sum(op, i)) {
                    d->sum = kvtc_wire_checksum(d->at, d->len);
                    d->summed = 1;
                }
            }
        }
        pthread_mutex_lock(&k->mu);
        KVTC_FIFO_PUSH(k->done_head, k->done_tail, op, next);
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
    (void)pthread_setname_np(k->thread, "kvtc-checker");
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

static int hand_over(kvtc_conn *c, struct kvtc__op *op)
{
    if (!c->checker && checker_start(c) != 0) {
        c->check_thread = 0; /* no thread: hash inline from now on */
        return 0;
    }
    struct kvtc__checker *k = c->checker;
    pthread_mutex_lock(&k->mu);
    KVTC_FIFO_PUSH(k->todo_head, k->todo_tail, op, next);
    k->n++;
    pthread_cond_signal(&k->cv);
    pthread_mutex_unlock(&k->mu);
    return 1;
}

int kvtc__checker_take(kvtc_conn *c, struct kvtc__op *op)
{
    if (!c->check_thread || op->kind != KVTC__OP_GET || op->status || op->fetched ||
        op->local || !c->n_inflight || bytes_to_sum(op) < KVTC_WIRE_RNDV_THRESH_BYTES)
        return 0;
    return hand_over(c, op);
}

int kvtc__checker_take_put(kvtc_conn *c, struct kvtc__op *op)
{
    return c->check_thread && hand_over(c, op);
}

/* cancel: puts are not sent but fail (the connection is going away). */
static void collect(kvtc_conn *c, int cancel)
{
    struct kvtc__checker *k = c->checker;
    if (!k)
        return;
    pthread_mutex_lock(&k->mu);
    struct kvtc__op *op = k->done_head;
    k->done_head = k->done_tail = NULL;
    pthread_mutex_unlock(&k->mu);
    while (op) {
        struct kvtc__op *next = op->next;
        pthread_mutex_lock(&k->mu);
        k->n--;
        pthread_mutex_unlock(&k->mu);
        op->next = NULL;
        if (op->later && cancel) {
            kvtc__op_fail_unsent(op, KVTC_ECANCELED);
        } else if (op->later) {
            kvtc__put_send_later(op); /* a put: its checksums are in */
        } else {
            /* A get, back among the finished ops: kvtc__op_finish compares
             * the sums. */
            kvtc__op_push_done(c, op);
        }
        op = next;
    }
}

void kvtc__checker_collect(kvtc_conn *c)
{
    collect(c, 0);
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
    collect(c, 1);
    pthread_cond_destroy(&k->cv);
    pthread_mutex_destroy(&k->mu);
    free(k);
    c->checker = NULL;
    c->check_thread = 0; /* the rest of the connection's life: inline */
}
