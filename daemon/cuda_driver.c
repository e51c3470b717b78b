/* cuda_driver.c - dlopen'ed CUDA driver entry points (see cuda_driver.h). */
#include "cuda_driver.h"

#include <dlfcn.h>
#include <pthread.h>
#include <stdio.h>
#include <string.h>

#include "kvtc_errors.h"

static pthread_once_t g_once = PTHREAD_ONCE_INIT;
static kvtcd_cuda g_cuda;
static int g_rc = KVTC_ENOTSUP;
static char g_err[256] = "CUDA driver not loaded";
static const char *g_libname = "libcuda.so.1";
static const kvtcd_cuda *g_fake;

void kvtcd__cuda_set_table(const kvtcd_cuda *table)
{
    g_fake = table;
}

/* Tests point this at a library that does not exist to exercise the
 * "no driver" path on a machine that has one. Not thread-safe; call before
 * the first kvtcd_cuda_load of the process. */
void kvtcd__cuda_set_library(const char *name)
{
    g_libname = name;
}

static int sym(void *h, void **slot, const char *name, const char *alt)
{
    *slot = dlsym(h, name);
    if (!*slot && alt)
        *slot = dlsym(h, alt);
    if (!*slot) {
        snprintf(g_err, sizeof g_err, "%s: symbol %s missing (driver too old?)",
                 g_libname, name);
        return -1;
    }
    return 0;
}

static void load_once(void)
{
    /* RTLD_LOCAL: the driver's symbols stay out of the global namespace,
     * so a libcudart linked elsewhere in the process resolves its own. */
    void *h = dlopen(g_libname, RTLD_NOW | RTLD_LOCAL);
    if (!h) {
        const char *e = dlerror();
        snprintf(g_err, sizeof g_err, "%s", e ? e : "dlopen failed");
        return;
    }
    kvtcd_cuda c;
    memset(&c, 0, sizeof c);
#define S(field, name, alt) \
    if (sym(h, (void **)&c.field, name, alt) < 0) \
        return;
    S(cuInit, "cuInit", NULL)
    S(cuDriverGetVersion, "cuDriverGetVersion", NULL)
    S(cuDeviceGetCount, "cuDeviceGetCount", NULL)
    S(cuDeviceGet, "cuDeviceGet", NULL)
    S(cuDeviceGetName, "cuDeviceGetName", NULL)
    S(cuDevicePrimaryCtxRetain, "cuDevicePrimaryCtxRetain", NULL)
    S(cuDevicePrimaryCtxRelease, "cuDevicePrimaryCtxRelease_v2",
      "cuDevicePrimaryCtxRelease")
    S(cuCtxSetCurrent, "cuCtxSetCurrent", NULL)
    S(cuCtxPushCurrent, "cuCtxPushCurrent_v2", NULL)
    S(cuCtxPopCurrent, "cuCtxPopCurrent_v2", NULL)
    S(cuMemAlloc, "cuMemAlloc_v2", NULL)
    S(cuMemFree, "cuMemFree_v2", NULL)
    S(cuMemsetD8, "cuMemsetD8_v2", NULL)
    S(cuMemcpyHtoD, "cuMemcpyHtoD_v2", NULL)
    S(cuMemcpyDtoH, "cuMemcpyDtoH_v2", NULL)
    S(cuMemcpyHtoDAsync, "cuMemcpyHtoDAsync_v2", NULL)
    S(cuMemcpyDtoHAsync, "cuMemcpyDtoHAsync_v2", NULL)
    S(cuMemHostAlloc, "cuMemHostAlloc", NULL)
    S(cuMemFreeHost, "cuMemFreeHost", NULL)
    S(cuMemHostRegister, "cuMemHostRegister_v2", "cuMemHostRegister")
    S(cuMemHostUnregister, "cuMemHostUnregister", NULL)
    S(cuStreamCreate, "cuStreamCreate", NULL)
    S(cuStreamDestroy, "cuStreamDestroy_v2", NULL)
    S(cuStreamSynchronize, "cuStreamSynchronize", NULL)
    S(cuStreamWaitEvent, "cuStreamWaitEvent", NULL)
    S(cuEventCreate, "cuEventCreate", NULL)
    S(cuEventDestroy, "cuEventDestroy_v2", NULL)
    S(cuEventRecord, "cuEventRecord", NULL)
    S(cuEventQuery, "cuEventQuery", NULL)
    S(cuEventSynchronize, "cuEventSynchronize", NULL)
    S(cuGetErrorString, "cuGetErrorString", NULL)
#undef S
    kvtcd_CUresult r = c.cuInit(0);
    if (r != KVTCD_CUDA_SUCCESS) {
        char why[160];
        snprintf(g_err, sizeof g_err, "cuInit: %s",
                 kvtcd_cuda_strerror(&c, r, why, sizeof why));
        return;
    }
    g_cuda = c;
    g_rc = 0;
    g_err[0] = '\0';
}

int kvtcd_cuda_load(const kvtcd_cuda **out, char *err, size_t errlen)
{
    if (g_fake) {
        *out = g_fake;
        return 0;
    }
    pthread_once(&g_once, load_once);
    if (g_rc < 0) {
        if (err && errlen)
            snprintf(err, errlen, "%s", g_err);
        return g_rc;
    }
    *out = &g_cuda;
    return 0;
}

const char *kvtcd_cuda_strerror(const kvtcd_cuda *cu, kvtcd_CUresult r,
                                char *buf, size_t len)
{
    const char *s = NULL;
    if (!cu || !cu->cuGetErrorString ||
        cu->cuGetErrorString(r, &s) != KVTCD_CUDA_SUCCESS)
        s = NULL;
    snprintf(buf, len, "CUDA error %d (%s)", r, s ? s : "unknown");
    return buf;
}
