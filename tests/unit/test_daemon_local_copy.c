/* The local path's copy workers (daemon/local_copy.h) without a network:
 * jobs run first come first served and start to end on one thread, done
 * runs on the loop thread exactly once per job, done may submit more,
 * close waits for the jobs in flight; and the local_copy_threads setting
 * (INI key, flag, bounds, the example file). */
#include <criterion/criterion.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <uv.h>

#include "config.h"
#include "kvtc_errors.h"
#include "local_copy.h"
#include "local_path.h"
#include "test_util.h"

struct tjob {
    kvtcd_cjob cj;                 /* first: the callbacks cast back */
    int idx;
    int sleep_us;
    int run_count;                 /* written on the worker */
    pthread_t run_thread;
    struct tstate *st;
};

struct tstate {
    uv_loop_t loop;
    kvtcd_cworkers *w;
    pthread_t loop_thread;
    int n_jobs;
    int started;                   /* atomic: run order counter */
    int *start_order;              /* job index by start position */
    int finished;                  /* atomic */
    int done_count;
    int *done_seen;                /* times done ran, per job */
    int done_off_loop;             /* done ran on another thread */
    int max_running, running;      /* atomics: concurrency seen */
    int chain_left;                /* done submits this many more */
    struct tjob *jobs;
};

static void sleep_us(int us)
{
    struct timespec ts = {us / 1000000, (long)(us % 1000000) * 1000};
    nanosleep(&ts, NULL);
}

static void job_run(kvtcd_cjob *cj)
{
    struct tjob *j = (struct tjob *)cj;
    struct tstate *st = j->st;
    int pos = __atomic_fetch_add(&st->started, 1, __ATOMIC_SEQ_CST);
    st->start_order[pos] = j->idx;
    int r = __atomic_add_fetch(&st->running, 1, __ATOMIC_SEQ_CST);
    int m = __atomic_load_n(&st->max_running, __ATOMIC_SEQ_CST);
    while (r > m && !__atomic_compare_exchange_n(&st->max_running, &m, r, 0,
                                                 __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST))
        ;
    j->run_thread = pthread_self();
    j->run_count++;
    if (j->sleep_us)
        sleep_us(j->sleep_us);
    __atomic_sub_fetch(&st->running, 1, __ATOMIC_SEQ_CST);
    __atomic_add_fetch(&st->finished, 1, __ATOMIC_SEQ_CST);
}

static void job_done(kvtcd_cjob *cj)
{
    struct tjob *j = (struct tjob *)cj;
    struct tstate *st = j->st;
    if (!pthread_equal(pthread_self(), st->loop_thread) ||
        pthread_equal(j->run_thread, st->loop_thread))
        st->done_off_loop++;
    st->done_seen[j->idx]++;
    st->done_count++;
    if (st->chain_left > 0) {
        /* Submitting from done: the next job of the chain. */
        st->chain_left--;
        struct tjob *n = &st->jobs[j->idx + 1];
        kvtcd_cworkers_submit(st->w, &n->cj);
    }
}

static void state_init(struct tstate *st, int n, unsigned threads, unsigned spin_us)
{
    memset(st, 0, sizeof *st);
    cr_assert_eq(uv_loop_init(&st->loop), 0);
    st->loop_thread = pthread_self();
    st->n_jobs = n;
    st->start_order = calloc((size_t)n, sizeof *st->start_order);
    st->done_seen = calloc((size_t)n, sizeof *st->done_seen);
    st->jobs = calloc((size_t)n, sizeof *st->jobs);
    cr_assert(st->start_order && st->done_seen && st->jobs);
    for (int i = 0; i < n; i++) {
        st->jobs[i].idx = i;
        st->jobs[i].st = st;
        st->jobs[i].cj.run = job_run;
        st->jobs[i].cj.done = job_done;
    }
    cr_assert_eq(kvtcd_cworkers_create(&st->loop, threads, spin_us, &st->w), 0);
}

/* Run the loop until every job's done ran, then close the workers and run
 * the loop to its end (the close must let it finish). */
static void state_finish(struct tstate *st)
{
    while (st->done_count < st->n_jobs)
        uv_run(&st->loop, UV_RUN_ONCE);
    cr_assert_eq(kvtcd_cworkers_busy(st->w), 0);
    kvtcd_cworkers_close(st->w);
    cr_assert_eq(uv_run(&st->loop, UV_RUN_DEFAULT), 0);
    cr_assert_eq(uv_loop_close(&st->loop), 0);
    for (int i = 0; i < st->n_jobs; i++) {
        cr_assert_eq(st->done_seen[i], 1, "job %d: done ran %d times", i, st->done_seen[i]);
        cr_assert_eq(st->jobs[i].run_count, 1, "job %d ran %d times", i, st->jobs[i].run_count);
    }
    cr_assert_eq(st->done_off_loop, 0, "done ran off the loop thread (or run on it)");
}

static void state_free(struct tstate *st)
{
    free(st->start_order);
    free(st->done_seen);
    free(st->jobs);
}

Test(daemon_local_copy, create_rejects_bad_arguments)
{
    uv_loop_t loop;
    kvtcd_cworkers *w = (kvtcd_cworkers *)1;
    cr_assert_eq(uv_loop_init(&loop), 0);
    cr_assert_eq(kvtcd_cworkers_create(&loop, 0, 0, &w), KVTC_EINVAL);
    cr_assert_null(w);
    cr_assert_eq(kvtcd_cworkers_create(&loop, KVTCD_CWORKERS_MAX + 1, 0, &w), KVTC_EINVAL);
    cr_assert_eq(kvtcd_cworkers_create(NULL, 2, 0, &w), KVTC_EINVAL);
    kvtcd_cworkers_close(NULL); /* a no-op */
    cr_assert_eq(kvtcd_cworkers_busy(NULL), 0);
    cr_assert_eq(uv_loop_close(&loop), 0);
    unsigned t = kvtcd_cworkers_default_threads();
    cr_assert(t >= 2 && t <= 8, "default threads %u", t);
}

/* One worker: jobs start in submission order, one at a time. */
Test(daemon_local_copy, one_worker_is_fifo, .timeout = 30)
{
    struct tstate st;
    enum { N = 200 };
    state_init(&st, N, 1, 0);
    for (int i = 0; i < N; i++) {
        st.jobs[i].sleep_us = i % 7 == 0 ? 200 : 0;
        kvtcd_cworkers_submit(st.w, &st.jobs[i].cj);
    }
    cr_assert_eq(kvtcd_cworkers_busy(st.w), N);
    state_finish(&st);
    for (int i = 0; i < N; i++)
        cr_assert_eq(st.start_order[i], i, "position %d started job %d", i, st.start_order[i]);
    cr_assert_eq(st.max_running, 1);
    state_free(&st);
}

/* Several workers: every job once, done once each on the loop; they do
 * run side by side; with polling on and off. */
Test(daemon_local_copy, many_workers_each_job_once, .timeout = 60)
{
    for (unsigned spin = 0; spin <= 50; spin += 50) {
        struct tstate st;
        enum { N = 2000 };
        state_init(&st, N, 4, spin);
        for (int i = 0; i < N; i++) {
            st.jobs[i].sleep_us = i % 50 == 0 ? 2000 : 0;
            kvtcd_cworkers_submit(st.w, &st.jobs[i].cj);
        }
        state_finish(&st);
        cr_assert_geq(st.max_running, 2, "4 workers never overlapped (spin %u)", spin);
        cr_assert_leq(st.max_running, 4);
        state_free(&st);
    }
}

/* done submits the next job; a trickle with idle gaps (workers asleep
 * between jobs) still completes. */
Test(daemon_local_copy, done_submits_and_idle_gaps, .timeout = 30)
{
    struct tstate st;
    enum { N = 100 };
    state_init(&st, N, 2, 0);
    st.chain_left = N - 1;
    kvtcd_cworkers_submit(st.w, &st.jobs[0].cj);
    state_finish(&st);
    for (int i = 0; i < N; i++)
        cr_assert_eq(st.start_order[i], i);
    state_free(&st);
}

/* close with jobs queued and running: each still runs, its done is
 * called, and only then does the loop end. */
Test(daemon_local_copy, close_waits_for_jobs_in_flight, .timeout = 30)
{
    struct tstate st;
    enum { N = 40 };
    state_init(&st, N, 2, 0);
    for (int i = 0; i < N; i++) {
        st.jobs[i].sleep_us = 1000;
        kvtcd_cworkers_submit(st.w, &st.jobs[i].cj);
    }
    kvtcd_cworkers_close(st.w);
    kvtcd_cworkers_close(st.w); /* twice: a no-op */
    cr_assert_eq(uv_run(&st.loop, UV_RUN_DEFAULT), 0);
    cr_assert_eq(st.done_count, N);
    cr_assert_eq(st.finished, N);
    cr_assert_eq(uv_loop_close(&st.loop), 0);
    for (int i = 0; i < N; i++)
        cr_assert_eq(st.done_seen[i], 1);
    state_free(&st);
}

/* Closing idle workers ends the loop at once. */
Test(daemon_local_copy, close_idle, .timeout = 10)
{
    uv_loop_t loop;
    kvtcd_cworkers *w = NULL;
    cr_assert_eq(uv_loop_init(&loop), 0);
    cr_assert_eq(kvtcd_cworkers_create(&loop, 8, 50, &w), 0);
    sleep_us(2000); /* the workers poll, then sleep */
    kvtcd_cworkers_close(w);
    cr_assert_eq(uv_run(&loop, UV_RUN_DEFAULT), 0);
    cr_assert_eq(uv_loop_close(&loop), 0);
}

/* The polling policy: poll only while the loop, every worker and one
 * thread per active client fit on the CPUs. */
Test(daemon_local_copy, spin_policy_decisions)
{
    /* The H100 host: 16 CPUs, 8 workers. */
    cr_assert_eq(kvtcd_local_spin_ok(16, 8, 0), 1);
    cr_assert_eq(kvtcd_local_spin_ok(16, 8, 1), 1);
    cr_assert_eq(kvtcd_local_spin_ok(16, 8, 7), 1);  /* 7 + 8 + 1 = 16 */
    cr_assert_eq(kvtcd_local_spin_ok(16, 8, 8), 0);
    cr_assert_eq(kvtcd_local_spin_ok(16, 8, 16), 0);
    cr_assert_eq(kvtcd_local_spin_ok(16, 8, 64), 0);
    /* More workers leave room for fewer clients. */
    cr_assert_eq(kvtcd_local_spin_ok(16, 12, 3), 1);
    cr_assert_eq(kvtcd_local_spin_ok(16, 12, 4), 0);
    /* A big machine polls for many clients. */
    cr_assert_eq(kvtcd_local_spin_ok(128, 8, 64), 1);
    cr_assert_eq(kvtcd_local_spin_ok(64, 8, 56), 0);
    /* Few cores: never (the 2-core box). */
    cr_assert_eq(kvtcd_local_spin_ok(2, 2, 0), 0);
    cr_assert_eq(kvtcd_local_spin_ok(1, 1, 0), 0);
    cr_assert_eq(kvtcd_local_spin_ok(0, 0, 0), 0);
    /* No overflow. */
    cr_assert_eq(kvtcd_local_spin_ok(16, 8, 0xffffffffu), 0);
    cr_assert_eq(kvtcd_local_spin_ok(0xffffffffu, 0xffffffffu, 0xffffffffu), 0);
}

/* Time the worker polls after one job with a 30 ms window and the gate as
 * given (closed after close_after_ms when that is >= 0), in ms. */
static double polled_after_job(int gate, int close_after_ms, double *closed_at_ms)
{
    struct tstate st;
    state_init(&st, 1, 1, 30000);
    kvtcd_cworkers_set_spin(st.w, gate);
    kvtcd_cworkers_submit(st.w, &st.jobs[0].cj);
    while (st.done_count < 1)
        uv_run(&st.loop, UV_RUN_ONCE);
    /* The window after a job opens once run returns: done ran later. */
    uint64_t p0 = kvtcd_cworkers_polled_ns(st.w), t0 = uv_hrtime();
    if (close_after_ms >= 0) {
        sleep_us(close_after_ms * 1000);
        kvtcd_cworkers_set_spin(st.w, 0);
        *closed_at_ms = (double)(uv_hrtime() - t0) / 1e6;
    }
    sleep_us(60000);
    double ms = (double)(kvtcd_cworkers_polled_ns(st.w) - p0) / 1e6;
    state_finish(&st);
    state_free(&st);
    return ms;
}

/* The gate: closed, a worker out of jobs sleeps at once; closing it stops
 * one that polls; open, it polls its window. Jobs run either way. */
Test(daemon_local_copy, spin_gate_stops_polling, .timeout = 30)
{
    double at = 0;
    double closed = polled_after_job(0, -1, &at);
    double stopped = polled_after_job(1, 5, &at);
    double open = polled_after_job(1, -1, &at);
    cr_log_info("polled after a job (30 ms window): gate closed %.1f ms, closed after %.1f "
                "ms: %.1f ms, open %.1f ms", closed, at, stopped, open);
    cr_expect_lt(closed, 1.0, "closed gate: polled %.1f ms", closed);
    /* (A loaded machine may wake this thread too late to tell.) */
    if (at < 15.0)
        cr_expect_lt(stopped, at + 10.0, "gate closed after %.1f ms: polled %.1f ms", at,
                     stopped);
    cr_expect_gt(open, 20.0, "open gate: polled only %.1f ms of a 30 ms window", open);
    /* Jobs still run with the gate closed, across idle gaps. */
    struct tstate st;
    enum { N = 50 };
    state_init(&st, N, 3, 1000);
    kvtcd_cworkers_set_spin(st.w, 0);
    st.chain_left = N - 1;
    kvtcd_cworkers_submit(st.w, &st.jobs[0].cj);
    state_finish(&st);
    state_free(&st);
}

/* Polling workers under churn: bursts with gaps around the polling window,
 * the gate flipped while jobs arrive, done chaining the next job: every job
 * runs once and no submission is left unanswered (a lost wakeup would hang
 * the loop until the timeout). */
Test(daemon_local_copy, polling_workers_lose_no_job, .timeout = 60)
{
    struct tstate st;
    enum { N = 3000 };
    state_init(&st, N, 4, 100);
    int next = 0;
    while (next < N) {
        int burst = 1 + next % 7;
        for (int k = 0; k < burst && next < N; k++, next++) {
            if (next % 97 == 0)
                kvtcd_cworkers_set_spin(st.w, (next / 97) % 2);
            kvtcd_cworkers_submit(st.w, &st.jobs[next].cj);
        }
        while (st.done_count < next - 4)
            uv_run(&st.loop, UV_RUN_ONCE);
        if (next % 5 == 0)
            sleep_us(next % 3 ? 50 : 150); /* inside, then past, the window */
    }
    state_finish(&st);
    state_free(&st);
    /* One job at a time, each submitted from the previous one's done. */
    state_init(&st, 500, 4, 100);
    st.chain_left = 499;
    kvtcd_cworkers_submit(st.w, &st.jobs[0].cj);
    state_finish(&st);
    for (int i = 0; i < 500; i++)
        cr_assert_eq(st.start_order[i], i);
    state_free(&st);
}

/* An INI file with text, under the test temp folder (asserted). */
static char *write_ini(const char *text)
{
    char *path = kvtc_test_write_temp(text);
    cr_assert_not_null(path, "cannot write a temporary INI file");
    return path;
}

Test(daemon_local_copy, config_threads)
{
    kvtcd_config c;
    int action;
    char err[256] = "";
    char *argv0[] = {"kvtcd", NULL};
    cr_assert_eq(kvtcd_config_from_args(&c, 1, argv0, &action, err, sizeof err), 0, "%s", err);
    cr_assert_eq(c.local_copy_threads, 0, "default: 0 (automatic)");
    char *argv[] = {"kvtcd", "--local-copy-threads", "6", NULL};
    cr_assert_eq(kvtcd_config_from_args(&c, 3, argv, &action, err, sizeof err), 0, "%s", err);
    cr_assert_eq(c.local_copy_threads, 6);
    char *path = write_ini("[server]\nlocal_copy_threads = 3\n");
    kvtcd_config_defaults(&c);
    cr_assert_eq(kvtcd_config_load_ini(&c, path, err, sizeof err), 0, "%s", err);
    cr_assert_eq(c.local_copy_threads, 3);
    char *argv2[] = {"kvtcd", "--config", path, "--local-copy-threads=5", NULL};
    cr_assert_eq(kvtcd_config_from_args(&c, 4, argv2, &action, err, sizeof err), 0, "%s", err);
    cr_assert_eq(c.local_copy_threads, 5);
    unlink(path);
    const char *bad[] = {"65", "-1", "two", ""};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        char *b[] = {"kvtcd", "--local-copy-threads", (char *)bad[i], NULL};
        cr_assert_lt(kvtcd_config_from_args(&c, 3, b, &action, err, sizeof err), 0,
                     "accepted \"%s\"", bad[i]);
        cr_assert_not_null(strstr(err, "local-copy-threads"), "%s", err);
    }
    cr_assert_not_null(strstr(kvtcd_usage(), "--local-copy-threads N"));
}

/* deploy/kvtcd.example.ini documents the local path's settings. */
Test(daemon_local_copy, example_ini_documents_local_path)
{
    const char *path = "deploy/kvtcd.example.ini";
    if (access(path, R_OK) != 0)
        cr_skip_test("%s not found (run from the repository root)", path);
    FILE *f = fopen(path, "r");
    cr_assert_not_null(f);
    static char text[1 << 16];
    size_t n = fread(text, 1, sizeof text - 1, f);
    fclose(f);
    text[n] = '\0';
    cr_assert_not_null(strstr(text, "; local_path = auto"));
    cr_assert_not_null(strstr(text, "; local_copy_threads = 0"));
}
