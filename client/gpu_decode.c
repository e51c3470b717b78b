/* Decoding a get's containers on the caller's GPU (issue #6): when a
 * KVTC_WANT_KVTC item's buffer is CUDA device memory, the container goes
 * host -> device once (~1/ratio of the chunk's bytes) and libkvtc_gpu
 * decodes it straight into the caller's buffer, instead of a CPU decode
 * followed by a copy of the whole raw chunk.
 *
 * libkvtc_gpu.so is opened with dlopen, once per process, so libkvtc keeps
 * no link-time dependency on nvCOMP, cuBLAS or cuSOLVER: KVTC_GPU_LIB
 * names it (and only it: a path that does not load turns the GPU decode
 * off, which is how tests and deployments force the CPU path), else the
 * one next to the library holding this code, else the loader's search
 * path. Without it, the caller decodes on the CPU as before.
 *
 * A codec context costs uploads of the profile's bases and a cuBLAS
 * handle, so contexts are cached per connection for each (profile, plan,
 * device), creation failures included (a layout the GPU path does not
 * cover is not retried at every get). Decodes of one connection run on its
 * progress thread, which is what a context's one-thread rule needs. */
#include <stdlib.h>
#include <string.h>

#include "gpu_decode.h"
#include "internal.h"

#ifdef KVTC_HAVE_CUDA
#include <cuda_runtime_api.h>
#include <dlfcn.h>
#include <pthread.h>
#include <stdio.h>

#include "kvtc_gpu.h"

static struct {
    int (*create)(const kvtc_profile *, uint32_t, const kvtc_gpu_params *, kvtc_gpu_codec **);
    void (*free)(kvtc_gpu_codec *);
    int (*decode)(kvtc_gpu_codec *, const kvtc_gpu_container *, uint32_t, const void *,
                  int32_t *, kvtc_gpu_stream);
    int ok;
} api;
static pthread_once_t api_once = PTHREAD_ONCE_INIT;

static void *open_next_to_us(void)
{
    Dl_info di;
    if (!dladdr((void *)&kvtc__gpu_decode, &di) || !di.dli_fname)
        return NULL;
    const char *slash = strrchr(di.dli_fname, '/');
    if (!slash)
        return NULL;
    char path[4096];
    int n = snprintf(path, sizeof path, "%.*s/libkvtc_gpu.so", (int)(slash - di.dli_fname),
                     di.dli_fname);
    return n > 0 && (size_t)n < sizeof path ? dlopen(path, RTLD_NOW | RTLD_LOCAL) : NULL;
}

static void api_load(void)
{
    const char *env = getenv("KVTC_GPU_LIB");
    void *h;
    if (env && *env)
        h = dlopen(env, RTLD_NOW | RTLD_LOCAL);
    else if (!(h = open_next_to_us()))
        h = dlopen("libkvtc_gpu.so", RTLD_NOW | RTLD_LOCAL);
    if (!h) {
        (void)dlerror();
        return;
    }
    /* POSIX's sanctioned way to turn dlsym's object pointer into a
     * function pointer. */
    *(void **)&api.create = dlsym(h, "kvtc_gpu_codec_create");
    *(void **)&api.free = dlsym(h, "kvtc_gpu_codec_free");
    *(void **)&api.decode = dlsym(h, "kvtc_gpu_decode");
    api.ok = api.create && api.free && api.decode;
    if (!api.ok)
        dlclose(h);
}

struct gpu_ctx {
    struct gpu_ctx *next;
    const kvtc_profile *p;
    uint32_t plan;
    int device;
    kvtc_gpu_codec *g;      /* NULL: creation failed, use the CPU */
};

/* Per device: the stream decodes run on and the container's device copy. */
struct gpu_dev {
    struct gpu_dev *next;
    int device;
    cudaStream_t s;
    void *src;
    size_t src_cap;
    int32_t *status;
};

struct kvtc__gpu_state {
    struct gpu_ctx *ctxs;
    struct gpu_dev *devs;
    void *pinned;           /* the container, for an async H2D copy */
    size_t pinned_cap;
};

static void ctx_free(struct gpu_ctx *x)
{
    int prev = -1;
    if (x->g && cudaGetDevice(&prev) == cudaSuccess && prev != x->device)
        cudaSetDevice(x->device);
    if (x->g)
        api.free(x->g);
    if (prev >= 0 && prev != x->device)
        cudaSetDevice(prev);
    free(x);
}

void kvtc__gpu_forget(kvtc_conn *c, const kvtc_profile *p)
{
    if (!c->gpu)
        return;
    for (struct gpu_ctx **pp = &c->gpu->ctxs; *pp;) {
        struct gpu_ctx *x = *pp;
        if (x->p == p) {
            *pp = x->next;
            ctx_free(x);
        } else {
            pp = &x->next;
        }
    }
}

void kvtc__gpu_state_free(kvtc_conn *c)
{
    struct kvtc__gpu_state *st = c->gpu;
    if (!st)
        return;
    while (st->ctxs) {
        struct gpu_ctx *x = st->ctxs;
        st->ctxs = x->next;
        ctx_free(x);
    }
    while (st->devs) {
        struct gpu_dev *d = st->devs;
        st->devs = d->next;
        cudaStreamSynchronize(d->s);
        cudaFree(d->src);
        cudaFree(d->status);
        cudaStreamDestroy(d->s);
        free(d);
    }
    cudaFreeHost(st->pinned);
    (void)cudaGetLastError();
    free(st);
    c->gpu = NULL;
}

static struct gpu_ctx *ctx_get(struct kvtc__gpu_state *st, const kvtc_profile *p, uint32_t plan,
                               int device)
{
    for (struct gpu_ctx *x = st->ctxs; x; x = x->next)
        if (x->p == p && x->plan == plan && x->device == device)
            return x;
    struct gpu_ctx *x = calloc(1, sizeof *x);
    if (!x)
        return NULL;
    /* libkvtc_gpu's defaults, on this device: the decode is then the same
     * as that of a context made with NULL params. */
    kvtc_gpu_params gp = {.field_mask = KVTC_GPU_PARAM_FIELD_DEVICE, .device = device};
    x->p = p;
    x->plan = plan;
    x->device = device;
    if (api.create(p, plan, &gp, &x->g))
        x->g = NULL;
    (void)cudaGetLastError();
    x->next = st->ctxs;
    st->ctxs = x;
    return x;
}

static struct gpu_dev *dev_get(struct kvtc__gpu_state *st, int device, size_t len)
{
    struct gpu_dev *d = st->devs;
    while (d && d->device != device)
        d = d->next;
    if (!d) {
        if (!(d = calloc(1, sizeof *d)))
            return NULL;
        d->device = device;
        if (cudaStreamCreateWithFlags(&d->s, cudaStreamNonBlocking) != cudaSuccess) {
            free(d);
            return NULL;
        }
        if (cudaMalloc((void **)&d->status, sizeof *d->status) != cudaSuccess) {
            cudaStreamDestroy(d->s);
            free(d);
            return NULL;
        }
        d->next = st->devs;
        st->devs = d;
    }
    if (d->src_cap < len) {
        /* The stream was synchronized after the last decode: the old
         * buffer is idle. */
        cudaFree(d->src);
        d->src = NULL;
        d->src_cap = 0;
        if (cudaMalloc(&d->src, len) != cudaSuccess)
            return NULL;
        d->src_cap = len;
    }
    return d;
}

static int decode_on(struct kvtc__gpu_state *st, const kvtc_profile *p,
                     const kvtc_container_info *ci, const void *src, size_t len, void *dst,
                     int device)
{
    struct gpu_ctx *x = ctx_get(st, p, ci->plan, device);
    if (!x)
        return KVTC_ENOMEM;
    if (!x->g)
        return KVTC_ENOTSUP;
    struct gpu_dev *d = dev_get(st, device, len);
    if (!d)
        return KVTC_ENOMEM;
    if (st->pinned_cap < len) {
        cudaFreeHost(st->pinned);
        st->pinned = NULL;
        st->pinned_cap = 0;
        if (cudaMallocHost(&st->pinned, len) != cudaSuccess)
            return KVTC_ENOMEM;
        st->pinned_cap = len;
    }
    memcpy(st->pinned, src, len);
    kvtc_gpu_container item = {.src_off = 0, .src_len = len, .dst = dst,
                               .n_tokens = ci->n_tokens, .first_pos = ci->first_pos,
                               .flags = 0};
    int32_t status = KVTC_EIO;
    if (cudaMemcpyAsync(d->src, st->pinned, len, cudaMemcpyHostToDevice, d->s) != cudaSuccess)
        return KVTC_EIO;
    int rc = api.decode(x->g, &item, 1, d->src, d->status, (kvtc_gpu_stream)d->s);
    /* Synchronous for the caller: its buffer is ready when the get
     * completes, as with the CPU path. */
    if (cudaMemcpyAsync(&status, d->status, sizeof status, cudaMemcpyDeviceToHost, d->s) !=
            cudaSuccess ||
        cudaStreamSynchronize(d->s) != cudaSuccess)
        return KVTC_EIO;
    return rc ? rc : status;
}

int kvtc__gpu_decode(kvtc_conn *c, const kvtc_profile *p, const kvtc_container_info *ci,
                     const void *src, size_t len, void *dst)
{
    if (!p || ci->mode != 0 || !len)
        return KVTC_ENOTSUP; /* raw containers: a CPU copy is as good */
    pthread_once(&api_once, api_load);
    if (!api.ok)
        return KVTC_ENOTSUP;
    struct cudaPointerAttributes a;
    if (cudaPointerGetAttributes(&a, dst) != cudaSuccess || a.type != cudaMemoryTypeDevice) {
        (void)cudaGetLastError();
        return KVTC_ENOTSUP;
    }
    if (!c->gpu && !(c->gpu = calloc(1, sizeof *c->gpu)))
        return KVTC_ENOMEM;
    /* The caller's current device is its business: set ours, put it back. */
    int prev = -1;
    if (cudaGetDevice(&prev) != cudaSuccess ||
        (prev != a.device && cudaSetDevice(a.device) != cudaSuccess)) {
        (void)cudaGetLastError();
        return KVTC_EIO;
    }
    int rc = decode_on(c->gpu, p, ci, src, len, dst, a.device);
    if (prev != a.device)
        cudaSetDevice(prev);
    (void)cudaGetLastError();
    return rc;
}

#else /* !KVTC_HAVE_CUDA: no device buffers, so nothing to decode into */

int kvtc__gpu_decode(kvtc_conn *c, const kvtc_profile *p, const kvtc_container_info *ci,
                     const void *src, size_t len, void *dst)
{
    (void)c, (void)p, (void)ci, (void)src, (void)len, (void)dst;
    return KVTC_ENOTSUP;
}

void kvtc__gpu_forget(kvtc_conn *c, const kvtc_profile *p)
{
    (void)c, (void)p;
}

void kvtc__gpu_state_free(kvtc_conn *c)
{
    (void)c;
}
#endif
