/* codec_gpu.c - codec jobs on the GPU through a dlopen'ed libkvtc_gpu
 * (see codec_gpu.h). */
#include "codec_gpu.h"

#include <dlfcn.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <uv.h>

#include "config.h"
#include "cuda_driver.h"
#include "kvtc_errors.h"
#include "kvtc_gpu.h"
#include "log.h"
#include "wire.h"

/* Chunks and containers start at this alignment in the staging buffers
 * (the GPU codec reads them with wide loads). */
#define ALIGN 256u

/* The entry points we use, with kvtc_gpu.h's prototypes. */
typedef struct gpu_api {
    int (*available)(void);
    int (*create)(const kvtc_profile *p, uint32_t plan,
                  const kvtc_gpu_params *params, kvtc_gpu_codec **out);
    void (*free)(kvtc_gpu_codec *g);
    size_t (*encode_bound)(const kvtc_gpu_codec *g,
                           const kvtc_gpu_chunk *chunks, uint32_t n);
    int (*encode)(kvtc_gpu_codec *g, const kvtc_gpu_chunk *chunks, uint32_t n,
                  void *dst, size_t dst_cap, uint64_t *d_offsets,
                  uint64_t *d_sizes, int32_t *d_status, kvtc_gpu_stream s);
    int (*decode)(kvtc_gpu_codec *g, const kvtc_gpu_container *items,
                  uint32_t n, const void *src, int32_t *d_status,
                  kvtc_gpu_stream s);
} gpu_api;

/* A context for one (profile, plan); gc NULL with rc set when the GPU
 * refused it, so that it is not retried on every batch. */
typedef struct ctx_slot {
    kvtcd_profile_ent *e;  /* referenced; NULL: slot free */
    uint32_t plan;
    kvtc_gpu_codec *gc;
    int rc;
    uint64_t used;         /* LRU clock */
} ctx_slot;

/* A buffer that only grows. */
typedef struct dbuf {
    kvtcd_CUdeviceptr p;
    size_t cap;
} dbuf;
typedef struct hbuf {
    void *p;
    size_t cap;
} hbuf;

struct kvtcd_gpu_codec {
    gpu_api api;
    const kvtcd_cuda *cu;
    kvtcd_profiles *reg;
    int device;
    kvtcd_CUdevice dev;
    kvtcd_CUcontext ctx;
    kvtcd_CUstream stream;
    ctx_slot slots[KVTCD_GPU_CODECS];
    uint64_t clock;
    dbuf d_in, d_out, d_meta;
    hbuf h_in, h_out, h_meta;
    uint32_t fail_next;
    int proj;              /* enum kvtcd_gpu_projection */
};

/* ---- loading ----------------------------------------------------------------- */

/* dlopen the library: $KVTCD_GPU_CODEC_LIB only, when set (an operator
 * who names a file wants that one); else next to the binary; else the
 * loader's path. The handle is never closed: libcudart and nvCOMP keep
 * process-wide state (and threads) that do not survive an unload. */
static void *open_lib(char *why, size_t why_len)
{
    const char *env = getenv("KVTCD_GPU_CODEC_LIB");
    void *h;
    if (env && env[0]) {
        h = dlopen(env, RTLD_NOW | RTLD_LOCAL);
        if (!h)
            snprintf(why, why_len, "%s", dlerror());
        return h;
    }
    char exe[PATH_MAX];
    ssize_t n = readlink("/proc/self/exe", exe, sizeof exe - 1);
    if (n > 0) {
        exe[n] = '\0';
        char *slash = strrchr(exe, '/');
        if (slash) {
            *slash = '\0';
            char path[PATH_MAX + 32];
            snprintf(path, sizeof path, "%s/../lib/libkvtc_gpu.so", exe);
            if (access(path, F_OK) == 0) {
                h = dlopen(path, RTLD_NOW | RTLD_LOCAL);
                if (h)
                    return h;
                /* It is there but does not load (its CUDA or nvCOMP
                 * missing): that reason beats "not found" below. */
                snprintf(why, why_len, "%s", dlerror());
                return NULL;
            }
        }
    }
    h = dlopen("libkvtc_gpu.so", RTLD_NOW | RTLD_LOCAL);
    if (!h)
        snprintf(why, why_len, "%s", dlerror());
    return h;
}

static int resolve(void *h, gpu_api *a, char *why, size_t why_len)
{
    struct {
        void **slot;
        const char *name;
    } t[] = {
        {(void **)&a->available, "kvtc_gpu_available"},
        {(void **)&a->create, "kvtc_gpu_codec_create"},
        {(void **)&a->free, "kvtc_gpu_codec_free"},
        {(void **)&a->encode_bound, "kvtc_gpu_encode_bound"},
        {(void **)&a->encode, "kvtc_gpu_encode"},
        {(void **)&a->decode, "kvtc_gpu_decode"},
    };
    for (size_t i = 0; i < sizeof t / sizeof t[0]; i++) {
        *t[i].slot = dlsym(h, t[i].name);
        if (!*t[i].slot) {
            snprintf(why, why_len, "libkvtc_gpu: symbol %s missing",
                     t[i].name);
            return KVTC_ENOTSUP;
        }
    }
    return 0;
}

/* "what: CUDA error N (text)" into why; KVTC_ENOTSUP. */
static int cu_fail(const kvtcd_cuda *cu, kvtcd_CUresult r, const char *what,
                   char *why, size_t why_len)
{
    char b[160];
    snprintf(why, why_len, "%s: %s", what, kvtcd_cuda_strerror(cu, r, b, sizeof b));
    return KVTC_ENOTSUP;
}

int kvtcd_gpu_codec_open(int device, kvtcd_profiles *reg,
                         kvtcd_gpu_codec **out, char *why, size_t why_len)
{
    *out = NULL;
    kvtcd_gpu_codec *g = calloc(1, sizeof *g);
    if (!g)
        return KVTC_ENOMEM;
    g->reg = reg;
    g->device = device;
    int rc = KVTC_ENOTSUP;
    kvtcd_CUresult r;
    void *h = open_lib(why, why_len);
    if (!h)
        goto fail;
    if ((rc = resolve(h, &g->api, why, why_len)))
        goto fail;
    rc = KVTC_ENOTSUP;
    if (!g->api.available()) {
        snprintf(why, why_len, "no usable CUDA device");
        goto fail;
    }
    if ((rc = kvtcd_cuda_load(&g->cu, why, why_len)))
        goto fail;
    const kvtcd_cuda *cu = g->cu;
    if ((r = cu->cuDeviceGet(&g->dev, device)) != KVTCD_CUDA_SUCCESS) {
        rc = cu_fail(cu, r, "cuDeviceGet", why, why_len);
        goto fail;
    }
    /* The primary context is the one libcudart (inside libkvtc_gpu) uses:
     * our buffers and stream then live where its kernels run. */
    if ((r = cu->cuDevicePrimaryCtxRetain(&g->ctx, g->dev)) !=
        KVTCD_CUDA_SUCCESS) {
        rc = cu_fail(cu, r, "cuDevicePrimaryCtxRetain", why, why_len);
        goto fail;
    }
    if ((r = cu->cuCtxSetCurrent(g->ctx)) != KVTCD_CUDA_SUCCESS ||
        (r = cu->cuStreamCreate(&g->stream, KVTCD_CU_STREAM_NON_BLOCKING)) !=
            KVTCD_CUDA_SUCCESS) {
        rc = cu_fail(cu, r, "stream", why, why_len);
        goto fail;
    }
    *out = g;
    return 0;
fail:
    if (g->ctx)
        g->cu->cuDevicePrimaryCtxRelease(g->dev);
    free(g);
    return rc;
}

static void slot_clear(kvtcd_gpu_codec *g, ctx_slot *s)
{
    if (s->gc)
        g->api.free(s->gc);
    kvtcd_profile_unref(s->e);
    memset(s, 0, sizeof *s);
}

void kvtcd_gpu_codec_close(kvtcd_gpu_codec *g)
{
    if (!g)
        return;
    const kvtcd_cuda *cu = g->cu;
    cu->cuCtxSetCurrent(g->ctx);
    cu->cuStreamSynchronize(g->stream);
    for (uint32_t i = 0; i < KVTCD_GPU_CODECS; i++)
        slot_clear(g, &g->slots[i]);
    dbuf *d[] = {&g->d_in, &g->d_out, &g->d_meta};
    for (size_t i = 0; i < 3; i++)
        if (d[i]->p)
            cu->cuMemFree(d[i]->p);
    hbuf *hb[] = {&g->h_in, &g->h_out, &g->h_meta};
    for (size_t i = 0; i < 3; i++)
        if (hb[i]->p)
            cu->cuMemFreeHost(hb[i]->p);
    cu->cuStreamDestroy(g->stream);
    cu->cuDevicePrimaryCtxRelease(g->dev);
    free(g);
}

void kvtcd_gpu_codec_set_projection(kvtcd_gpu_codec *g, int proj)
{
    if (proj == g->proj)
        return;
    /* contexts are created with the projections: drop the cached ones */
    g->cu->cuStreamSynchronize(g->stream);
    for (uint32_t i = 0; i < KVTCD_GPU_CODECS; i++)
        slot_clear(g, &g->slots[i]);
    g->proj = proj;
}

int kvtcd_gpu_codec_projection(const kvtcd_gpu_codec *g)
{
    return g ? g->proj : KVTCD_GPU_PROJ_FP16;
}

void kvtcd__gpu_codec_fail_next(kvtcd_gpu_codec *g, uint32_t n)
{
    g->fail_next = n;
}

/* ---- buffers and contexts -------------------------------------------------- */

/* Grow by half again over the need, so a slowly rising batch size does
 * not reallocate every time. */
static size_t grown(size_t need)
{
    return need + need / 2 + 4096;
}

static int dbuf_need(kvtcd_gpu_codec *g, dbuf *b, size_t need)
{
    if (b->cap >= need)
        return 0;
    /* The stream may still read the old buffer. */
    g->cu->cuStreamSynchronize(g->stream);
    if (b->p)
        g->cu->cuMemFree(b->p);
    b->p = 0;
    b->cap = 0;
    size_t cap = grown(need);
    kvtcd_CUresult r = g->cu->cuMemAlloc(&b->p, cap);
    if (r != KVTCD_CUDA_SUCCESS) {
        b->p = 0;
        return r == KVTCD_CUDA_ERROR_OUT_OF_MEMORY ? KVTC_ENOMEM : KVTC_EIO;
    }
    b->cap = cap;
    return 0;
}

/* Pinned, so the async copies are real DMA and overlap nothing else on
 * the host. */
static int hbuf_need(kvtcd_gpu_codec *g, hbuf *b, size_t need)
{
    if (b->cap >= need)
        return 0;
    g->cu->cuStreamSynchronize(g->stream);
    if (b->p)
        g->cu->cuMemFreeHost(b->p);
    b->p = NULL;
    b->cap = 0;
    size_t cap = grown(need);
    if (g->cu->cuMemHostAlloc(&b->p, cap, 0) != KVTCD_CUDA_SUCCESS) {
        b->p = NULL;
        return KVTC_ENOMEM;
    }
    b->cap = cap;
    return 0;
}

/* The cached context of (e, plan), created on first use; NULL when the
 * GPU refuses it (then the group goes to the CPU). */
static kvtc_gpu_codec *context_of(kvtcd_gpu_codec *g, kvtcd_profile_ent *e,
                                  uint32_t plan)
{
    ctx_slot *victim = &g->slots[0];
    for (uint32_t i = 0; i < KVTCD_GPU_CODECS; i++) {
        ctx_slot *s = &g->slots[i];
        if (s->e == e && s->plan == plan) {
            s->used = ++g->clock;
            return s->gc;
        }
        if (!s->e || (victim->e && s->used < victim->used))
            victim = s;
    }
    g->cu->cuStreamSynchronize(g->stream);
    slot_clear(g, victim);
    kvtc_gpu_params prm = {.field_mask = KVTC_GPU_PARAM_FIELD_DEVICE | KVTC_GPU_PARAM_FIELD_ENC_GEMM |
                                         KVTC_GPU_PARAM_FIELD_DEC_GEMM,
                           .device = g->device};
    prm.enc_gemm = g->proj == KVTCD_GPU_PROJ_FP8 ? KVTC_GPU_PROJ_FP8 : KVTC_GPU_PROJ_AUTO;
    prm.dec_gemm = g->proj == KVTCD_GPU_PROJ_DIRECT_DECODE ? KVTC_GPU_PROJ_DIRECT
                   : g->proj != KVTCD_GPU_PROJ_FP16       ? KVTC_GPU_PROJ_FP8
                                                          : KVTC_GPU_PROJ_AUTO;
    victim->rc = g->api.create(e->p, plan, &prm, &victim->gc);
    if (victim->rc == KVTC_ENOTSUP && g->proj != KVTCD_GPU_PROJ_FP16) {
        /* fp8 needs a row width that is a multiple of 16, the direct
         * decode rows of 16-byte units: this profile gets the plain
         * 16-bit projections rather than the CPU */
        KVTCD_WARN("codec", "GPU codec: projection option refused for a "
                            "profile; plain 16-bit there profile=%016llx plan=%u",
                   (unsigned long long)e->id, plan);
        prm.enc_gemm = prm.dec_gemm = KVTC_GPU_PROJ_AUTO;
        victim->rc = g->api.create(e->p, plan, &prm, &victim->gc);
    }
    if (victim->rc) {
        victim->gc = NULL;
        KVTCD_WARN("codec", "GPU codec refuses a profile; its chunks are "
                            "coded on the CPU profile=%016llx plan=%u "
                            "err=\"%s\"",
                   (unsigned long long)e->id, plan, kvtc_strerror(victim->rc));
    }
    kvtcd_profile_ref(e);
    victim->e = e;
    victim->plan = plan;
    victim->used = ++g->clock;
    return victim->gc;
}

/* ---- one group ----------------------------------------------------------------- */

static size_t up(size_t n)
{
    return (n + ALIGN - 1) / ALIGN * ALIGN;
}

/* Every item of a group to the CPU. */
static void to_cpu(kvtcd_codec_item **it, uint32_t m)
{
    for (uint32_t k = 0; k < m; k++)
        it[k]->on_cpu = 1;
}

#define CU(call)                                          \
    do {                                                  \
        if ((call) != KVTCD_CUDA_SUCCESS) {               \
            rc = KVTC_EIO;                                \
            goto out;                                     \
        }                                                 \
    } while (0)

/* Encode m chunks of one (profile, plan) in one launch. */
static int encode_group(kvtcd_gpu_codec *g, kvtc_gpu_codec *gc,
                        kvtcd_codec_item **it, uint32_t m)
{
    const kvtcd_cuda *cu = g->cu;
    kvtc_gpu_chunk *ch = calloc(m, sizeof *ch);
    int rc = ch ? 0 : KVTC_ENOMEM;
    if (rc)
        goto out;
    size_t in_total = 0;
    for (uint32_t k = 0; k < m; k++)
        in_total += up(it[k]->len);
    if ((rc = hbuf_need(g, &g->h_in, in_total)) ||
        (rc = dbuf_need(g, &g->d_in, in_total)))
        goto out;
    size_t at = 0;
    for (uint32_t k = 0; k < m; k++) {
        memcpy((uint8_t *)g->h_in.p + at, it[k]->src, it[k]->len);
        ch[k] = (kvtc_gpu_chunk){(const void *)(uintptr_t)(g->d_in.p + at),
                                 it[k]->n_tokens, it[k]->first_pos, 0};
        at += up(it[k]->len);
    }
    size_t bound = g->api.encode_bound(gc, ch, m);
    size_t meta = (size_t)m * (8 + 8 + 4);
    if (!bound) {
        rc = KVTC_EINVAL;
        goto out;
    }
    if ((rc = dbuf_need(g, &g->d_out, bound)) ||
        (rc = hbuf_need(g, &g->h_out, bound)) ||
        (rc = dbuf_need(g, &g->d_meta, meta)) ||
        (rc = hbuf_need(g, &g->h_meta, meta)))
        goto out;
    CU(cu->cuMemcpyHtoDAsync(g->d_in.p, g->h_in.p, in_total, g->stream));
    kvtcd_CUdeviceptr d_off = g->d_meta.p, d_sz = d_off + 8ull * m,
                      d_st = d_sz + 8ull * m;
    rc = g->api.encode(gc, ch, m, (void *)(uintptr_t)g->d_out.p, bound,
                       (uint64_t *)(uintptr_t)d_off, (uint64_t *)(uintptr_t)d_sz,
                       (int32_t *)(uintptr_t)d_st,
                       (kvtc_gpu_stream)g->stream);
    if (rc)
        goto out;
    CU(cu->cuMemcpyDtoHAsync(g->h_meta.p, g->d_meta.p, meta, g->stream));
    CU(cu->cuStreamSynchronize(g->stream));
    const uint64_t *off = g->h_meta.p, *sz = off + m;
    const int32_t *st = (const int32_t *)(sz + m);
    /* Containers lie at bound-spaced offsets: copy each one rather than
     * the whole (mostly empty) output. */
    for (uint32_t k = 0; k < m; k++)
        if (st[k] == 0 && sz[k] && off[k] + sz[k] <= bound)
            CU(cu->cuMemcpyDtoHAsync((uint8_t *)g->h_out.p + off[k],
                                     g->d_out.p + off[k], sz[k], g->stream));
    CU(cu->cuStreamSynchronize(g->stream));
    for (uint32_t k = 0; k < m; k++) {
        kvtcd_codec_item *x = it[k];
        if (st[k] != 0 || !sz[k] || off[k] + sz[k] > bound ||
            !(x->out = malloc(sz[k]))) {
            x->on_cpu = 1;
            continue;
        }
        /* Copy and checksum in one pass over the container. */
        if (kvtc_wire_copy_checksum(x->out, (uint8_t *)g->h_out.p + off[k],
                                    sz[k], &x->sum) != 0) {
            free(x->out);
            x->out = NULL;
            x->on_cpu = 1;
            continue;
        }
        x->out_len = sz[k];
        x->rc = 0;
    }
out:
    free(ch);
    return rc;
}

static uint64_t in_total_of(kvtcd_codec_item **it, uint32_t m)
{
    uint64_t n = 0;
    for (uint32_t k = 0; k < m; k++)
        n += it[k]->len;
    return n;
}

/* Decode m containers of one (profile, plan) in one launch; it[k]->info
 * holds each header (kvtc_inspect'ed). */
static int decode_group(kvtcd_gpu_codec *g, kvtc_gpu_codec *gc,
                        kvtcd_codec_item **it, uint32_t m,
                        kvtcd_gpu_run_stats *rs)
{
    const kvtcd_cuda *cu = g->cu;
    uint64_t t0 = uv_hrtime(), t1 = t0, t2 = t0;
    kvtc_gpu_container *c = calloc(m, sizeof *c);
    int rc = c ? 0 : KVTC_ENOMEM;
    if (rc)
        goto out;
    size_t in_total = 0, out_total = 0;
    for (uint32_t k = 0; k < m; k++) {
        in_total += up(it[k]->len);
        out_total += up((size_t)it[k]->info.raw_bytes);
    }
    size_t meta = (size_t)m * 4;
    if ((rc = hbuf_need(g, &g->h_in, in_total)) ||
        (rc = dbuf_need(g, &g->d_in, in_total)) ||
        (rc = hbuf_need(g, &g->h_out, out_total)) ||
        (rc = dbuf_need(g, &g->d_out, out_total)) ||
        (rc = dbuf_need(g, &g->d_meta, meta)) ||
        (rc = hbuf_need(g, &g->h_meta, meta)))
        goto out;
    size_t at = 0, ot = 0;
    for (uint32_t k = 0; k < m; k++) {
        const kvtc_container_info *ci = &it[k]->info;
        memcpy((uint8_t *)g->h_in.p + at, it[k]->src, it[k]->len);
        c[k] = (kvtc_gpu_container){at, it[k]->len,
                                    (void *)(uintptr_t)(g->d_out.p + ot),
                                    ci->n_tokens, ci->first_pos, 0};
        at += up(it[k]->len);
        ot += up((size_t)ci->raw_bytes);
    }
    t1 = uv_hrtime();
    CU(cu->cuMemcpyHtoDAsync(g->d_in.p, g->h_in.p, in_total, g->stream));
    rc = g->api.decode(gc, c, m, (const void *)(uintptr_t)g->d_in.p,
                       (int32_t *)(uintptr_t)g->d_meta.p,
                       (kvtc_gpu_stream)g->stream);
    if (rc)
        goto out;
    CU(cu->cuMemcpyDtoHAsync(g->h_meta.p, g->d_meta.p, meta, g->stream));
    /* One D2H copy for the whole group into pinned staging. */
    CU(cu->cuMemcpyDtoHAsync(g->h_out.p, g->d_out.p, out_total, g->stream));
    CU(cu->cuStreamSynchronize(g->stream));
    t2 = uv_hrtime();
    const int32_t *st = g->h_meta.p;
    ot = 0;
    for (uint32_t k = 0; k < m; k++) {
        kvtcd_codec_item *x = it[k];
        size_t n = (size_t)x->info.raw_bytes;
        const uint8_t *src = (const uint8_t *)g->h_out.p + ot;
        ot += up(n);
        /* A device status (corrupt, other stage) is re-judged by the CPU,
         * which reports exactly what it always has. */
        if (st[k] != 0) {
            x->on_cpu = 1;
            continue;
        }
        /* Out of staging straight into the reply's buffer when the caller
         * gave one (else a malloc), checksummed as it is copied: one pass
         * over the decoded bytes instead of a copy and then a hash. The
         * checksum is the reply's (the raw bytes have no stored one). */
        x->out = x->dst && n <= x->dst_cap ? x->dst : malloc(n ? n : 1);
        if (!x->out ||
            kvtc_wire_copy_checksum(x->out, src, n, &x->sum) != 0) {
            kvtcd_codec_item_drop_out(x);
            x->on_cpu = 1;
            continue;
        }
        x->out_len = n;
        x->rc = 0;
        rs->out_bytes += n;
    }
out:
    if (t1 == t0)
        t1 = uv_hrtime();
    if (t2 == t0)
        t2 = t1;
    rs->stage_ns += t1 - t0;
    rs->device_ns += t2 - t1;
    rs->out_ns += uv_hrtime() - t2;
    rs->in_bytes += in_total_of(it, m);
    free(c);
    return rc;
}

/* ---- a run ------------------------------------------------------------------- */

/* The (profile, plan) an item is coded with on the GPU, referenced; NULL
 * when it must go to the CPU. DECODE items get their info here. */
static kvtcd_profile_ent *gpu_target(kvtcd_gpu_codec *g, kvtcd_codec_item *it,
                                     uint32_t *plan)
{
    if (it->kind == KVTCD_CODEC_ENCODE) {
        const kvtc_layout *l = kvtc_profile_layout(it->prof->p);
        if (it->n_tokens == 0 || it->n_tokens > KVTC_MAX_CHUNK_TOKENS ||
            it->len != kvtc_chunk_bytes(l, it->n_tokens))
            return NULL; /* the CPU says what is wrong */
        *plan = it->plan;
        kvtcd_profile_ref(it->prof);
        return it->prof;
    }
    if (it->kind != KVTCD_CODEC_DECODE ||
        kvtc_inspect(it->src, it->len, &it->info) != 0 ||
        it->info.mode != 0 || it->info.stage != KVTC_STAGE_DEFLATE ||
        it->info.raw_bytes > it->batch->max_out)
        return NULL;
    kvtcd_profile_ent *e = kvtcd_profiles_get(g->reg, it->info.profile_id);
    if (!e)
        return NULL;
    if (!kvtcd_layout_same(kvtc_profile_layout(e->p), &it->info.layout) ||
        it->info.plan >= kvtc_profile_plan_count(e->p) ||
        it->info.raw_bytes != kvtc_chunk_bytes(&it->info.layout,
                                               it->info.n_tokens)) {
        kvtcd_profile_unref(e);
        return NULL;
    }
    *plan = it->info.plan;
    return e;
}

typedef struct gkey {
    kvtcd_profile_ent *e;
    uint32_t plan;
    int kind;
    kvtcd_codec_item *it;
} gkey;

static int gkey_cmp(const void *a, const void *b)
{
    const gkey *x = a, *y = b;
    if (x->e != y->e)
        return (uintptr_t)x->e < (uintptr_t)y->e ? -1 : 1;
    if (x->plan != y->plan)
        return x->plan < y->plan ? -1 : 1;
    return x->kind - y->kind;
}

void kvtcd_gpu_codec_run(kvtcd_gpu_codec *g, kvtcd_codec_item **items,
                         uint32_t n, kvtcd_gpu_run_stats *rs)
{
    memset(rs, 0, sizeof *rs);
    gkey *keys = calloc(n ? n : 1, sizeof *keys);
    kvtcd_codec_item **grp = calloc(n ? n : 1, sizeof *grp);
    uint32_t nk = 0;
    for (uint32_t i = 0; i < n; i++) {
        items[i]->on_cpu = 0;
        uint32_t plan = 0;
        kvtcd_profile_ent *e = keys ? gpu_target(g, items[i], &plan) : NULL;
        if (!e) {
            items[i]->on_cpu = 1;
            continue;
        }
        keys[nk++] = (gkey){e, plan, items[i]->kind, items[i]};
    }
    /* Worker threads get no CUDA context of their own. */
    if (nk && (!grp || g->cu->cuCtxSetCurrent(g->ctx) != KVTCD_CUDA_SUCCESS)) {
        for (uint32_t i = 0; i < nk; i++)
            keys[i].it->on_cpu = 1;
        rs->errors++;
        goto out;
    }
    qsort(keys, nk, sizeof *keys, gkey_cmp);
    for (uint32_t i = 0; i < nk;) {
        uint32_t j = i, m = 0;
        while (j < nk && gkey_cmp(&keys[i], &keys[j]) == 0)
            grp[m++] = keys[j++].it;
        kvtc_gpu_codec *gc = context_of(g, keys[i].e, keys[i].plan);
        int rc = KVTC_ENOTSUP;
        if (gc && g->fail_next) {
            g->fail_next--;
            rc = KVTC_EIO;
        } else if (gc) {
            rc = keys[i].kind == KVTCD_CODEC_ENCODE
                     ? encode_group(g, gc, grp, m)
                     : decode_group(g, gc, grp, m, rs);
        }
        if (rc) {
            if (gc) {
                rs->errors++;
                KVTCD_WARN("codec", "GPU batch failed; its chunks are coded "
                                    "on the CPU chunks=%u err=\"%s\"",
                           m, kvtc_strerror(rc));
            }
            for (uint32_t k = 0; k < m; k++)
                kvtcd_codec_item_drop_out(grp[k]);
            to_cpu(grp, m);
        }
        i = j;
    }
out:
    for (uint32_t i = 0; i < nk; i++)
        kvtcd_profile_unref(keys[i].e);
    for (uint32_t i = 0; i < n; i++) {
        if (items[i]->on_cpu)
            rs->to_cpu++;
        else
            rs->done++;
    }
    free(keys);
    free(grp);
}
