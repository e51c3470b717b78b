/* Per-operation timestamps for finding where a request's time goes
 * (KVTC_TRACE=PREFIX; off by default, one branch per stamp when off).
 *
 * Each connection keeps one record per finished operation: when it was
 * submitted, when its reply was handled, when its bulk bytes finished
 * moving over UCX (its send, or its rendezvous receive; 0 if none) and
 * when its completion ran (and whether a get's bytes landed on its rail
 * thread: then it has no bulk stamp), on
 * CLOCK_MONOTONIC (kvtcd's KVTCD_LOCAL_TRACE uses the same clock, so
 * bench/transport/trace_join.py can line the two up by session and
 * request id). kvtc_disconnect writes them to PREFIX.<pid>.<session>.csv.
 * A connection is single-threaded, so nothing here is locked. */
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

#include "internal.h"

/* Records kept per connection at most (later ones are dropped). */
#define TRACE_MAX (1u << 20)

struct kvtc__trace_rec {
    uint64_t id;
    uint32_t kind, local, landed;
    uint64_t t_sub, t_rep, t_bulk, t_done;
};

struct kvtc__trace {
    struct kvtc__trace_rec *r;
    uint32_t n, cap;
};

void kvtc__trace_open(kvtc_conn *c)
{
    const char *e = getenv("KVTC_TRACE");
    if (e && *e)
        c->trace = calloc(1, sizeof *c->trace);
}

void kvtc__trace_op(kvtc_conn *c, const struct kvtc__op *op)
{
    struct kvtc__trace *t = c->trace;
    if (!t)
        return;
    if (t->n == t->cap) {
        uint32_t cap = t->cap ? t->cap * 2 : 4096;
        struct kvtc__trace_rec *nr =
            cap <= TRACE_MAX ? realloc(t->r, (size_t)cap * sizeof *nr) : NULL;
        if (!nr)
            return;
        t->r = nr;
        t->cap = cap;
    }
    t->r[t->n++] = (struct kvtc__trace_rec){
        .id = op->id, .kind = (uint32_t)op->kind, .local = (uint32_t)op->local,
        .landed = atomic_load(&op->land.state) == KVTC__LAND_DONE,
        .t_sub = op->t_sub, .t_rep = op->t_rep, .t_bulk = op->t_bulk,
        .t_done = kvtc__now_ns()};
}

void kvtc__trace_close(kvtc_conn *c)
{
    struct kvtc__trace *t = c->trace;
    const char *e = getenv("KVTC_TRACE");
    c->trace = NULL;
    if (!t)
        return;
    char path[4096];
    FILE *f = NULL;
    if (e && t->n) {
        snprintf(path, sizeof path, "%s.%d.%llu.csv", e, (int)getpid(),
                 (unsigned long long)c->info.session_id);
        f = fopen(path, "w");
    }
    if (f) {
        fprintf(f, "sess,req,kind,local,sub,rep,done,bulk,landed\n");
        for (uint32_t i = 0; i < t->n; i++)
            fprintf(f, "%llu,%llu,%u,%u,%llu,%llu,%llu,%llu,%u\n",
                    (unsigned long long)c->info.session_id,
                    (unsigned long long)t->r[i].id, t->r[i].kind, t->r[i].local,
                    (unsigned long long)t->r[i].t_sub,
                    (unsigned long long)t->r[i].t_rep,
                    (unsigned long long)t->r[i].t_done,
                    (unsigned long long)t->r[i].t_bulk, t->r[i].landed);
        fclose(f);
    }
    free(t->r);
    free(t);
}
