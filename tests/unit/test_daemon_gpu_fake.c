/* test_daemon_gpu_fake.c - the fake CUDA driver (see its header). */
#include "test_daemon_gpu_fake.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#define FAKE_MEM_LIMIT (1ull << 30)
#define ERR_INVALID_VALUE 1
#define ERR_INVALID_DEVICE 101

enum { OP_COPY, OP_WAIT };

typedef struct fop {
    int kind;
    void *dst;
    const void *src;
    size_t n;
    struct kvtcd_CUstream_st *ws; /* OP_WAIT: wait for ws to reach seq */
    uint64_t seq;
} fop;

struct kvtcd_CUstream_st {
    fop *ops;
    size_t head, count, cap;
    uint64_t submitted, completed;
    int quit;
    pthread_t th;
    unsigned seed;
};

struct kvtcd_CUevent_st {
    struct kvtcd_CUstream_st *s;
    uint64_t seq;
};

/* One lock for every fake stream keeps cross-stream waits simple. */
static pthread_mutex_t g_mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t g_cv = PTHREAD_COND_INITIALIZER;
static uint64_t g_mem_used;
static atomic_int g_live;
static atomic_int g_fail_in;
static atomic_int g_copies;
/* cuMemHostRegister'ed ranges (the loop thread registers and unregisters;
 * stream threads never look: copies are classified when asked for). */
#define FAKE_MAX_REG 16
static struct { void *p; size_t n; } g_reg[FAKE_MAX_REG];
static atomic_int g_direct;
static atomic_int g_bad_unreg;
static atomic_int g_fail_reg;
static atomic_ullong g_reg_bytes;

int gpu_fake_copies(void)
{
    return atomic_load(&g_copies);
}

void gpu_fake_fail_copy(int n)
{
    atomic_store(&g_fail_in, n);
}

int gpu_fake_live(void)
{
    return atomic_load(&g_live);
}

int gpu_fake_direct_copies(void)
{
    return atomic_load(&g_direct);
}

uint64_t gpu_fake_registered_bytes(void)
{
    return atomic_load(&g_reg_bytes);
}

int gpu_fake_bad_unregisters(void)
{
    return atomic_load(&g_bad_unreg);
}

void gpu_fake_fail_register(int on)
{
    atomic_store(&g_fail_reg, on);
}

/* Whether [p, p+n) is mapped: the real driver cannot page-lock (nor
 * cleanly unlock) memory that is gone. */
static int mapped(const void *p, size_t n)
{
    long pg = sysconf(_SC_PAGESIZE);
    uintptr_t a = (uintptr_t)p & ~(uintptr_t)(pg - 1);
    size_t len = (size_t)((uintptr_t)p + n - a);
    /* Only the first and last page: a whole 1 GiB vector is not needed
     * to tell a freed region. */
    unsigned char v;
    if (mincore((void *)a, 1, &v) != 0)
        return 0;
    return mincore((void *)(a + ((len - 1) & ~(size_t)(pg - 1))), 1, &v) == 0;
}

/* Count a copy whose host side is inside a registered range: the tier
 * took its direct path (staging buffers come from cuMemAllocHost). */
static void classify(const void *host, size_t n)
{
    for (int i = 0; i < FAKE_MAX_REG; i++) {
        const uint8_t *b = g_reg[i].p;
        if (b && (const uint8_t *)host >= b &&
            (const uint8_t *)host + n <= b + g_reg[i].n) {
            atomic_fetch_add(&g_direct, 1);
            return;
        }
    }
}

static void *stream_main(void *arg)
{
    struct kvtcd_CUstream_st *s = arg;
    pthread_mutex_lock(&g_mu);
    for (;;) {
        while (!s->count && !s->quit)
            pthread_cond_wait(&g_cv, &g_mu);
        if (!s->count)
            break;
        fop op = s->ops[s->head];
        if (op.kind == OP_WAIT) {
            while (op.ws->completed < op.seq)
                pthread_cond_wait(&g_cv, &g_mu);
        } else {
            pthread_mutex_unlock(&g_mu);
            /* A DMA takes time: up to 100 us here, so copies on the two
             * streams interleave differently from run to run. */
            usleep((useconds_t)(rand_r(&s->seed) % 100));
            memcpy(op.dst, op.src, op.n);
            pthread_mutex_lock(&g_mu);
        }
        s->head = (s->head + 1) % s->cap;
        s->count--;
        s->completed++;
        pthread_cond_broadcast(&g_cv);
    }
    pthread_mutex_unlock(&g_mu);
    return NULL;
}

static int push(struct kvtcd_CUstream_st *s, fop op)
{
    pthread_mutex_lock(&g_mu);
    if (s->count == s->cap) {
        size_t ncap = s->cap ? s->cap * 2 : 16;
        fop *n = malloc(ncap * sizeof *n);
        if (!n) {
            pthread_mutex_unlock(&g_mu);
            return ERR_INVALID_VALUE;
        }
        for (size_t i = 0; i < s->count; i++)
            n[i] = s->ops[(s->head + i) % s->cap];
        free(s->ops);
        s->ops = n;
        s->head = 0;
        s->cap = ncap;
    }
    s->ops[(s->head + s->count) % s->cap] = op;
    s->count++;
    s->submitted++;
    pthread_cond_broadcast(&g_cv);
    pthread_mutex_unlock(&g_mu);
    return 0;
}

static int injected_failure(void)
{
    atomic_fetch_add(&g_copies, 1);
    int n = atomic_load(&g_fail_in);
    while (n > 0) {
        if (atomic_compare_exchange_weak(&g_fail_in, &n, n - 1))
            return n == 1;
    }
    return 0;
}

static kvtcd_CUresult f_ok_flags(unsigned f) { (void)f; return 0; }
static kvtcd_CUresult f_version(int *v) { *v = 13000; return 0; }
static kvtcd_CUresult f_count(int *c) { *c = 1; return 0; }
static kvtcd_CUresult f_dev_get(kvtcd_CUdevice *d, int ord)
{
    if (ord != 0)
        return ERR_INVALID_DEVICE;
    *d = 0;
    return 0;
}
static kvtcd_CUresult f_name(char *name, int len, kvtcd_CUdevice d)
{
    (void)d;
    strncpy(name, "fake GPU (host memory)", (size_t)len - 1);
    name[len - 1] = '\0';
    return 0;
}
static kvtcd_CUresult f_retain(kvtcd_CUcontext *c, kvtcd_CUdevice d)
{
    (void)d;
    *c = (kvtcd_CUcontext)(uintptr_t)0x1000;
    atomic_fetch_add(&g_live, 1);
    return 0;
}
static kvtcd_CUresult f_release(kvtcd_CUdevice d)
{
    (void)d;
    atomic_fetch_sub(&g_live, 1);
    return 0;
}
static kvtcd_CUresult f_ctx(kvtcd_CUcontext c) { (void)c; return 0; }
static kvtcd_CUresult f_pop(kvtcd_CUcontext *c) { *c = NULL; return 0; }

/* Device and host allocations carry their size in front. */
static void *fake_alloc(size_t n)
{
    uint8_t *p = NULL;
    if (posix_memalign((void **)&p, 256, n + 256) != 0)
        return NULL;
    memcpy(p, &n, sizeof n);
    atomic_fetch_add(&g_live, 1);
    return p + 256;
}
static size_t fake_free(void *q)
{
    uint8_t *p = (uint8_t *)q - 256;
    size_t n;
    memcpy(&n, p, sizeof n);
    free(p);
    atomic_fetch_sub(&g_live, 1);
    return n;
}

static kvtcd_CUresult f_alloc(kvtcd_CUdeviceptr *d, size_t n)
{
    pthread_mutex_lock(&g_mu);
    int over = g_mem_used + n > FAKE_MEM_LIMIT;
    if (!over)
        g_mem_used += n;
    pthread_mutex_unlock(&g_mu);
    if (over)
        return KVTCD_CUDA_ERROR_OUT_OF_MEMORY;
    void *p = fake_alloc(n);
    if (!p)
        return KVTCD_CUDA_ERROR_OUT_OF_MEMORY;
    /* Fresh device memory is not zero: poison it so a test that reads
     * what it never wrote sees garbage. */
    memset(p, 0xEE, n);
    *d = (kvtcd_CUdeviceptr)(uintptr_t)p;
    return 0;
}
static kvtcd_CUresult f_free(kvtcd_CUdeviceptr d)
{
    size_t n = fake_free((void *)(uintptr_t)d);
    pthread_mutex_lock(&g_mu);
    g_mem_used -= n;
    pthread_mutex_unlock(&g_mu);
    return 0;
}
static kvtcd_CUresult f_memset(kvtcd_CUdeviceptr d, unsigned char v, size_t n)
{
    memset((void *)(uintptr_t)d, v, n);
    return 0;
}
static kvtcd_CUresult f_htod(kvtcd_CUdeviceptr d, const void *s, size_t n)
{
    memcpy((void *)(uintptr_t)d, s, n);
    return 0;
}
static kvtcd_CUresult f_dtoh(void *d, kvtcd_CUdeviceptr s, size_t n)
{
    memcpy(d, (const void *)(uintptr_t)s, n);
    return 0;
}
static kvtcd_CUresult f_htod_async(kvtcd_CUdeviceptr d, const void *s,
                                   size_t n, kvtcd_CUstream st)
{
    if (injected_failure())
        return ERR_INVALID_VALUE;
    classify(s, n);
    fop op = {.kind = OP_COPY, .dst = (void *)(uintptr_t)d, .src = s, .n = n};
    return push(st, op);
}
static kvtcd_CUresult f_dtoh_async(void *d, kvtcd_CUdeviceptr s, size_t n,
                                   kvtcd_CUstream st)
{
    if (injected_failure())
        return ERR_INVALID_VALUE;
    classify(d, n);
    fop op = {.kind = OP_COPY, .dst = d, .src = (const void *)(uintptr_t)s,
              .n = n};
    return push(st, op);
}
static kvtcd_CUresult f_host_alloc(void **p, size_t n, unsigned flags)
{
    (void)flags;
    *p = fake_alloc(n);
    return *p ? 0 : KVTCD_CUDA_ERROR_OUT_OF_MEMORY;
}
static kvtcd_CUresult f_host_free(void *p)
{
    fake_free(p);
    return 0;
}
static kvtcd_CUresult f_host_register(void *p, size_t n, unsigned flags)
{
    (void)flags;
    if (atomic_load(&g_fail_reg) || !p || !n || !mapped(p, n))
        return KVTCD_CUDA_ERROR_OUT_OF_MEMORY;
    for (int i = 0; i < FAKE_MAX_REG; i++) {
        if (!g_reg[i].p) {
            g_reg[i].p = p;
            g_reg[i].n = n;
            atomic_fetch_add(&g_reg_bytes, n);
            atomic_fetch_add(&g_live, 1);
            return 0;
        }
    }
    return KVTCD_CUDA_ERROR_OUT_OF_MEMORY;
}
static kvtcd_CUresult f_host_unregister(void *p)
{
    for (int i = 0; i < FAKE_MAX_REG; i++) {
        if (g_reg[i].p == p) {
            if (!mapped(p, g_reg[i].n))
                atomic_fetch_add(&g_bad_unreg, 1);
            atomic_fetch_sub(&g_reg_bytes, g_reg[i].n);
            g_reg[i].p = NULL;
            g_reg[i].n = 0;
            atomic_fetch_sub(&g_live, 1);
            return 0;
        }
    }
    return ERR_INVALID_VALUE;
}
static kvtcd_CUresult f_stream_create(kvtcd_CUstream *out, unsigned flags)
{
    (void)flags;
    struct kvtcd_CUstream_st *s = calloc(1, sizeof *s);
    if (!s)
        return KVTCD_CUDA_ERROR_OUT_OF_MEMORY;
    s->seed = (unsigned)(uintptr_t)s;
    if (pthread_create(&s->th, NULL, stream_main, s) != 0) {
        free(s);
        return KVTCD_CUDA_ERROR_OUT_OF_MEMORY;
    }
    atomic_fetch_add(&g_live, 1);
    *out = s;
    return 0;
}
static kvtcd_CUresult f_stream_sync(kvtcd_CUstream s)
{
    pthread_mutex_lock(&g_mu);
    while (s->completed < s->submitted)
        pthread_cond_wait(&g_cv, &g_mu);
    pthread_mutex_unlock(&g_mu);
    return 0;
}
static kvtcd_CUresult f_stream_destroy(kvtcd_CUstream s)
{
    pthread_mutex_lock(&g_mu);
    s->quit = 1;
    pthread_cond_broadcast(&g_cv);
    pthread_mutex_unlock(&g_mu);
    pthread_join(s->th, NULL);
    free(s->ops);
    free(s);
    atomic_fetch_sub(&g_live, 1);
    return 0;
}
static kvtcd_CUresult f_event_create(kvtcd_CUevent *e, unsigned flags)
{
    (void)flags;
    *e = calloc(1, sizeof **e);
    if (!*e)
        return KVTCD_CUDA_ERROR_OUT_OF_MEMORY;
    atomic_fetch_add(&g_live, 1);
    return 0;
}
static kvtcd_CUresult f_event_destroy(kvtcd_CUevent e)
{
    free(e);
    atomic_fetch_sub(&g_live, 1);
    return 0;
}
static kvtcd_CUresult f_event_record(kvtcd_CUevent e, kvtcd_CUstream s)
{
    pthread_mutex_lock(&g_mu);
    e->s = s;
    e->seq = s->submitted;
    pthread_mutex_unlock(&g_mu);
    return 0;
}
static kvtcd_CUresult f_wait_event(kvtcd_CUstream s, kvtcd_CUevent e,
                                   unsigned flags)
{
    (void)flags;
    if (!e->s)
        return 0;
    pthread_mutex_lock(&g_mu);
    fop op = {.kind = OP_WAIT, .ws = e->s, .seq = e->seq};
    pthread_mutex_unlock(&g_mu);
    return push(s, op);
}
static kvtcd_CUresult f_event_query(kvtcd_CUevent e)
{
    pthread_mutex_lock(&g_mu);
    int done = !e->s || e->s->completed >= e->seq;
    pthread_mutex_unlock(&g_mu);
    return done ? 0 : KVTCD_CUDA_ERROR_NOT_READY;
}
static kvtcd_CUresult f_event_sync(kvtcd_CUevent e)
{
    pthread_mutex_lock(&g_mu);
    while (e->s && e->s->completed < e->seq)
        pthread_cond_wait(&g_cv, &g_mu);
    pthread_mutex_unlock(&g_mu);
    return 0;
}
static kvtcd_CUresult f_err_string(kvtcd_CUresult r, const char **s)
{
    *s = r == ERR_INVALID_VALUE ? "fake injected failure" : "fake error";
    return 0;
}

static const kvtcd_cuda g_table = {
    .cuInit = f_ok_flags,
    .cuDriverGetVersion = f_version,
    .cuDeviceGetCount = f_count,
    .cuDeviceGet = f_dev_get,
    .cuDeviceGetName = f_name,
    .cuDevicePrimaryCtxRetain = f_retain,
    .cuDevicePrimaryCtxRelease = f_release,
    .cuCtxSetCurrent = f_ctx,
    .cuCtxPushCurrent = f_ctx,
    .cuCtxPopCurrent = f_pop,
    .cuMemAlloc = f_alloc,
    .cuMemFree = f_free,
    .cuMemsetD8 = f_memset,
    .cuMemcpyHtoD = f_htod,
    .cuMemcpyDtoH = f_dtoh,
    .cuMemcpyHtoDAsync = f_htod_async,
    .cuMemcpyDtoHAsync = f_dtoh_async,
    .cuMemHostAlloc = f_host_alloc,
    .cuMemFreeHost = f_host_free,
    .cuMemHostRegister = f_host_register,
    .cuMemHostUnregister = f_host_unregister,
    .cuStreamCreate = f_stream_create,
    .cuStreamDestroy = f_stream_destroy,
    .cuStreamSynchronize = f_stream_sync,
    .cuStreamWaitEvent = f_wait_event,
    .cuEventCreate = f_event_create,
    .cuEventDestroy = f_event_destroy,
    .cuEventRecord = f_event_record,
    .cuEventQuery = f_event_query,
    .cuEventSynchronize = f_event_sync,
    .cuGetErrorString = f_err_string,
};

const kvtcd_cuda *gpu_fake_table(void)
{
    return &g_table;
}
