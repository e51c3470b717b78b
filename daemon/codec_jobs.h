/* codec_jobs.h - compress, decompress and check chunks off the loop thread.
 *
 * Encoding a 256-token chunk takes milliseconds of CPU: on the loop thread
 * that stalls every client. Callers describe the work as a batch of items
 * (one per chunk of a request) and submit it; items of every submitted
 * batch wait in one FIFO, and whenever fewer than KVTCD_CODEC_MAX_JOBS jobs
 * run, the next job takes up to KVTCD_CODEC_JOB_ITEMS items (or
 * KVTCD_CODEC_JOB_BYTES input bytes) from the FIFO onto the libuv thread
 * pool, so under load one job carries chunks of many requests. A batch's
 * done callback runs on the loop thread once all its items finished, never
 * inside kvtcd_codec_submit. Encoders and decoders come from the profile's
 * pools (profiles.h): they are not thread-safe, each is used by one worker
 * at a time.
 *
 * With a GPU backend (codec_gpu.h, kvtcd_codec_set_gpu) encode and decode
 * items wait in a second FIFO instead: one GPU job at a time takes every
 * queued item up to KVTCD_GPU_JOB_BYTES onto the thread pool and codes them
 * in one launch per (profile, plan); items the GPU hands back (raw
 * containers, device errors, a failed launch) go to the front of the CPU
 * FIFO and finish there. Checks always run on the CPU.
 *
 * Loop-thread only, except what the workers do inside a job. */
#ifndef KVTCD_CODEC_JOBS_H
#define KVTCD_CODEC_JOBS_H

#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <uv.h>

#include "kvtc_codec.h"
#include "profiles.h"
#include "tier.h"

#define KVTCD_CODEC_MAX_JOBS 4
#define KVTCD_CODEC_JOB_ITEMS 64
#define KVTCD_CODEC_JOB_BYTES (64u << 20)

enum kvtcd_codec_kind {
    /* src: a canonical chunk -> out: a container (prof, plan) */
    KVTCD_CODEC_ENCODE = 1,
    /* src: a container -> out: the canonical chunk; the profile is the
     * one the container names (looked up in the registry) */
    KVTCD_CODEC_DECODE = 2,
    /* src: a container from a client: structure and checksums valid, its
     * profile registered and matching its layout (no output) */
    KVTCD_CODEC_CHECK = 3
};

typedef struct kvtcd_codec_batch kvtcd_codec_batch;

typedef struct kvtcd_codec_item {
    /* in */
    int kind;                   /* enum kvtcd_codec_kind */
    kvtcd_profile_ent *prof;    /* ENCODE: referenced by the caller */
    uint32_t plan;              /* ENCODE */
    const uint8_t *src;         /* stays valid until done (blob ref) */
    size_t len;
    uint32_t n_tokens;          /* ENCODE */
    uint32_t first_pos;         /* ENCODE */
    uint8_t *dst;               /* DECODE: where the chunk goes when it
                                   fits dst_cap (the caller's buffer, e.g.
                                   a host-slab blob the reply is sent
                                   from), else NULL: out is malloc'd */
    size_t dst_cap;
    /* out */
    int rc;                     /* 0 or KVTC_E* */
    uint8_t *out;               /* ENCODE, DECODE: dst, or malloc'd and
                                   then the caller owns it after done
                                   (free or adopt) */
    size_t out_len;
    uint64_t sum;               /* XXH3-64 of out */
    kvtc_container_info info;   /* DECODE, CHECK: the container's header */
    /* private */
    kvtcd_codec_batch *batch;
    struct kvtcd_codec_item *qnext;
    uint8_t on_cpu;             /* the GPU handed it back */
} kvtcd_codec_item;

struct kvtcd_codec_batch {
    kvtcd_codec_item *items;    /* n items, owned by the caller */
    uint32_t n;
    uint64_t max_out;           /* DECODE: largest output accepted */
    void (*done)(kvtcd_codec_batch *b);
    void *arg;
    uint32_t left;              /* private */
};

/* Let go of an item's output: free it unless it is the caller's dst. */
static inline void kvtcd_codec_item_drop_out(kvtcd_codec_item *it)
{
    if (it->out != it->dst)
        free(it->out);
    it->out = NULL;
    it->out_len = 0;
}

typedef struct kvtcd_codec_stats {
    uint64_t jobs;
    uint64_t encoded, encode_in_bytes, encode_out_bytes;
    uint64_t decoded, decode_in_bytes, decode_out_bytes;
    uint64_t checked;
    uint64_t failed;            /* items that ended with an error */
    uint64_t busy_ns;           /* worker time spent in jobs */
    uint64_t gpu_jobs;          /* GPU jobs run */
    uint64_t gpu_items;         /* items finished on the GPU */
    uint64_t gpu_fallback;      /* items the GPU handed to the CPU */
    uint64_t gpu_errors;        /* GPU launches that failed (their items
                                   went to the CPU) */
    uint64_t gpu_busy_ns;       /* time spent in GPU jobs */
} kvtcd_codec_stats;

typedef struct kvtcd_codec kvtcd_codec;
struct kvtcd_gpu_codec;

/* The scheduler for loop; reg is borrowed (it must outlive the scheduler).
 * Errors: KVTC_ENOMEM. */
int kvtcd_codec_create(uv_loop_t *loop, kvtcd_profiles *reg,
                       kvtcd_codec **out);
/* Free it (and its GPU backend). No batch may be pending (the loop ran
 * them all). */
void kvtcd_codec_destroy(kvtcd_codec *cj);
/* Run encode and decode items on g from now on; the scheduler owns g
 * (closed by kvtcd_codec_destroy). Call before the first submit. */
void kvtcd_codec_set_gpu(kvtcd_codec *cj, struct kvtcd_gpu_codec *g);
/* 1 when a GPU backend is set. */
int kvtcd_codec_uses_gpu(const kvtcd_codec *cj);
/* Queue every item of b (b->n >= 1); b->done runs on the loop thread
 * later. b and its items must stay put until then. */
void kvtcd_codec_submit(kvtcd_codec *cj, kvtcd_codec_batch *b);
/* Counters (loop thread). */
const kvtcd_codec_stats *kvtcd_codec_get_stats(const kvtcd_codec *cj);
/* Items queued or running. */
uint32_t kvtcd_codec_pending(const kvtcd_codec *cj);

/* A blob over malloc'd bytes (decoded chunks, profile bytes) so replies can
 * hold them like store blobs. It owns data (freed with free) unless
 * release is set: then release(arg) runs instead when the last reference
 * goes. Not counted in any store tier. Loop thread. Errors: KVTC_ENOMEM
 * (data is then not taken: the caller still owns it). */
int kvtcd_heap_blob(void *data, size_t len, void (*release)(void *arg),
                    void *arg, kvtcd_blob **out);

#endif
