/* local_copy.h - the local path's copy workers: a few threads of their
 * own that run copy jobs in arrival order (docs/kvtcd.md, "Local path").
 *
 * Why not libuv's thread pool: that pool runs the checksums of UCX puts,
 * codec jobs and disk I/O from one queue, so a codec burst would sit in
 * front of a client's 256 KiB copy; and it has a thread per core, so 16
 * clients' 1 MiB copies all ran at once, each at a sixteenth of the
 * machine beside the clients' own threads, and finished in an order the
 * scheduler chose (H100 host: P99 3.1x P50 at 16 clients). Here a job runs
 * start to end on one worker, jobs are taken first come first served
 * across all clients, and there are fewer workers than cores: a request
 * waits for those before it, then copies at one thread's full speed.
 *
 * Threads: create, submit, busy and close on the loop thread only; run on
 * a worker; done on the loop thread. */
#ifndef KVTCD_LOCAL_COPY_H
#define KVTCD_LOCAL_COPY_H

#include <stdint.h>
#include <uv.h>

#define KVTCD_CWORKERS_MAX 64u

typedef struct kvtcd_cworkers kvtcd_cworkers;
typedef struct kvtcd_cjob kvtcd_cjob;

/* One job; embed it in the caller's state. */
struct kvtcd_cjob {
    kvtcd_cjob *next;                 /* private to the workers */
    void (*run)(kvtcd_cjob *job);     /* on a worker thread */
    void (*done)(kvtcd_cjob *job);    /* on the loop thread, after run */
};

/* Start threads workers (1..KVTCD_CWORKERS_MAX) on loop. A worker that
 * finishes a job polls for the next one for spin_us microseconds before it
 * sleeps (a burst of requests then costs no wakeups; 0 on machines without
 * spare cores). Errors: KVTC_EINVAL, KVTC_ENOMEM (memory or threads
 * refused; nothing is left running). */
int kvtcd_cworkers_create(uv_loop_t *loop, unsigned threads, unsigned spin_us,
                          kvtcd_cworkers **out);

/* Queue job (run and done set) behind every job submitted before it. job
 * must stay valid until its done has been called. Not after close. */
void kvtcd_cworkers_submit(kvtcd_cworkers *w, kvtcd_cjob *job);

/* Open (on) or close the polling gate: while closed, a worker that runs
 * out of jobs sleeps at once, and one polling stops. Open at create. Loop
 * thread. */
void kvtcd_cworkers_set_spin(kvtcd_cworkers *w, int on);

/* Wall time the workers spent polling for jobs so far, all together (about
 * the CPU time polling cost). Any thread. */
uint64_t kvtcd_cworkers_polled_ns(const kvtcd_cworkers *w);

/* Jobs submitted whose done has not been called yet. */
unsigned kvtcd_cworkers_busy(const kvtcd_cworkers *w);

/* Stop: jobs already submitted still run and their done is called (the
 * loop must keep running); then the threads are joined, the loop handle
 * is closed and w is freed. NULL is a no-op. */
void kvtcd_cworkers_close(kvtcd_cworkers *w);

/* Workers for this machine: half the online CPUs, 2 to 8 (a copy runs at
 * 3-4 GB/s on one thread; the clients need cores too). */
unsigned kvtcd_cworkers_default_threads(void);

/* Whether polling threads (the copy workers, kvtcd's loop) call
 * sched_yield between polls: 1 unless KVTCD_LOCAL_SPIN_YIELD=0 (a knob for
 * measuring; docs/kvtcd.md "Polling yields"). Any thread. */
int kvtcd_spin_yield(void);

/* A worker's polling window after a job, where cores are spare: long
 * enough to span the gap between a pipelining client's groups of requests
 * (H100 host, 256 KiB gets at depth 4: 75-90 us from a copy's end to the
 * next group's hand-over; a worker woken instead started its copy ~13 us
 * late and copied 87 us where the loop thread, already running, took 62). */
#define KVTCD_CWORKERS_SPIN_US 150u

/* The default polling window: KVTCD_CWORKERS_SPIN_US with 8 or more online
 * CPUs, else 0 (on a machine with few cores a polling worker takes the
 * core the loop or a client needs). Either way the polling policy
 * (kvtcd_local_spin_ok) may close the gate while cores are short. */
unsigned kvtcd_cworkers_default_spin_us(void);

#endif
