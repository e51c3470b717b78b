/* hash.c - checksum jobs on the libuv thread pool (see hash.h). */
#include "hash.h"

#include <stdlib.h>
#include <string.h>

#include "kvtc_errors.h"
#include "wire.h"

int kvtcd_hashjob_init(kvtcd_hashjob *job, uint32_t n)
{
    memset(job, 0, sizeof *job);
    job->n = n;
    size_t m = n ? n : 1;
    job->ptr = calloc(m, sizeof *job->ptr);
    job->len = calloc(m, sizeof *job->len);
    job->sum = calloc(m, sizeof *job->sum);
    if (!job->ptr || !job->len || !job->sum) {
        kvtcd_hashjob_fini(job);
        return KVTC_ENOMEM;
    }
    return 0;
}

void kvtcd_hashjob_fini(kvtcd_hashjob *job)
{
    free(job->ptr);
    free(job->len);
    free(job->sum);
    job->ptr = NULL;
    job->len = NULL;
    job->sum = NULL;
}

static void hash_all(kvtcd_hashjob *job)
{
    for (uint32_t i = 0; i < job->n; i++)
        job->sum[i] = kvtc_wire_checksum(job->ptr[i], job->len[i]);
}

static void on_work(uv_work_t *w)
{
    hash_all(w->data);
}

static void on_after(uv_work_t *w, int status)
{
    kvtcd_hashjob *job = w->data;
    if (status != 0)
        hash_all(job); /* canceled: cannot happen here, but stay correct */
    job->done(job);
}

void kvtcd_hashjob_run(uv_loop_t *loop, kvtcd_hashjob *job)
{
    uint64_t total = 0;
    for (uint32_t i = 0; i < job->n; i++)
        total += job->len[i];
    job->work.data = job;
    if (total >= KVTCD_HASH_OFFLOAD_MIN &&
        uv_queue_work(loop, &job->work, on_work, on_after) == 0)
        return;
    hash_all(job);
    job->done(job);
}
