/* local_trace.h - per-request timestamps of the local path's copies, for
 * finding where a request's time goes (docs/kvtcd.md, "Local path").
 *
 * Off unless KVTCD_LOCAL_TRACE=PATH is set: then every local copy leaves
 * one record of uv_hrtime() stamps, in stage order, and the records are
 * written to PATH as CSV when the path closes. Stamps are taken on the
 * loop thread except RUN0/RUN1, which the worker writes into its own job
 * and the loop copies once the job is done: nothing here is shared between
 * threads. A full buffer (KVTCD_LTRACE_MAX records) drops later ones.
 * bench/transport/trace_join.py joins the file with libkvtc's KVTC_TRACE
 * records (same clock: CLOCK_MONOTONIC) into per-stage percentiles. */
#ifndef KVTCD_LOCAL_TRACE_H
#define KVTCD_LOCAL_TRACE_H

#include <stdint.h>

#define KVTCD_LTRACE_MAX (1u << 18)

/* Stages of one copy, in order. */
enum kvtcd_lt_stage {
    KVTCD_LT_WAKE = 0, /* the loop began the progress round that read the
                          request (after a sleep in epoll: when it woke) */
    KVTCD_LT_AM,       /* the request's AM callback ran (frame in hand) */
    KVTCD_LT_START,    /* decoded, looked up, room reserved: copy asked */
    KVTCD_LT_QUEUE,    /* handed to a worker, or begun on the loop */
    KVTCD_LT_RUN0,     /* the copy began (on its thread) */
    KVTCD_LT_RUN1,     /* the copy ended */
    KVTCD_LT_DONE,     /* the loop took the finished copy */
    KVTCD_LT_REPLY,    /* the reply was handed to UCX */
    KVTCD_LT_N
};

typedef struct kvtcd_ltrace kvtcd_ltrace;

/* One record, filled by the caller. */
typedef struct kvtcd_lt_rec {
    uint64_t sess, req;
    uint64_t bytes;
    uint32_t put;          /* 1: a put (client -> kvtcd), 0: a get */
    uint32_t where;        /* 0: on the loop, 1: on a worker */
    uint32_t busy;         /* copies queued or running when it was handed
                              over (this one excluded) */
    uint32_t slept;        /* the loop slept in epoll before WAKE */
    uint64_t t[KVTCD_LT_N];
} kvtcd_lt_rec;

/* A trace writing to path at close, or NULL (and no error) when path is
 * NULL or empty. Errors: KVTC_ENOMEM. */
int kvtcd_ltrace_open(const char *path, kvtcd_ltrace **out);

/* Keep a copy of r (dropped once the buffer is full). NULL t: no-op. */
void kvtcd_ltrace_add(kvtcd_ltrace *t, const kvtcd_lt_rec *r);

/* Write the records to the path given at open (one CSV line each, a
 * header first), free t. Errors are logged, not returned. NULL: no-op. */
void kvtcd_ltrace_close(kvtcd_ltrace *t);

#endif
