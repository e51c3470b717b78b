/* hash.h - XXH3-64 checksums of chunk bytes, off the loop thread.
 *
 * Hashing 64 MiB takes ~10 ms: on the loop thread that stalls every other
 * client. A job over one or more byte ranges runs on the libuv thread pool
 * when its total is at least KVTCD_HASH_OFFLOAD_MIN bytes (inline below
 * that, where the thread hop costs more than the hash), then calls done on
 * the loop thread. The ranges must stay valid and unmodified until done
 * runs: callers hold blob references. */
#ifndef KVTCD_HASH_H
#define KVTCD_HASH_H

#include <stddef.h>
#include <stdint.h>
#include <uv.h>

#define KVTCD_HASH_OFFLOAD_MIN (1u << 20)

typedef struct kvtcd_hashjob kvtcd_hashjob;
typedef void (*kvtcd_hash_done)(kvtcd_hashjob *job);

struct kvtcd_hashjob {
    uv_work_t work;
    uint32_t n;
    const uint8_t **ptr;   /* n ranges */
    size_t *len;
    uint64_t *sum;         /* out: n checksums */
    kvtcd_hash_done done;
    void *arg;             /* for done */
};

/* Allocate the n-range arrays of job (zeroed first). KVTC_ENOMEM. */
int kvtcd_hashjob_init(kvtcd_hashjob *job, uint32_t n);
void kvtcd_hashjob_fini(kvtcd_hashjob *job);
/* Hash every range, then call job->done (inline when small, or when the
 * thread pool refuses the work). */
void kvtcd_hashjob_run(uv_loop_t *loop, kvtcd_hashjob *job);

#endif
