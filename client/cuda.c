/* Device buffers: detection and staging. Built with CUDA only when nvcc was
 * present at build time (KVTC_HAVE_CUDA); a machine without a GPU then
 * still works, treating every AUTO buffer as host memory. */
#include <stdlib.h>

#include "internal.h"

#ifdef KVTC_HAVE_CUDA
#include <cuda_runtime_api.h>
#include <pthread.h>

static pthread_once_t probe_once = PTHREAD_ONCE_INIT;
static int have_device;

static void probe(void)
{
    int n = 0;
    /* No driver or no GPU is an ordinary case here, not an error. */
    have_device = cudaGetDeviceCount(&n) == cudaSuccess && n > 0;
    (void)cudaGetLastError();
}

int kvtc__cuda_usable(void)
{
    pthread_once(&probe_once, probe);
    return have_device;
}

int kvtc__mem_classify(const void *p, uint32_t mem, int *is_dev)
{
    *is_dev = 0;
    if (mem == KVTC_MEM_HOST)
        return 0;
    if (mem != KVTC_MEM_AUTO && mem != KVTC_MEM_CUDA)
        return KVTC_EINVAL;
    if (!kvtc__cuda_usable())
        return mem == KVTC_MEM_CUDA ? KVTC_ENOTSUP : 0;
    if (mem == KVTC_MEM_CUDA) {
        *is_dev = 1;
        return 0;
    }
    struct cudaPointerAttributes a;
    if (cudaPointerGetAttributes(&a, p) != cudaSuccess) {
        /* Plain malloc'd memory is "unregistered", reported as an error
         * by older runtimes: that is host memory. */
        (void)cudaGetLastError();
        return 0;
    }
    /* Managed memory is host-accessible: UCX handles it as host. */
    *is_dev = a.type == cudaMemoryTypeDevice;
    return 0;
}

int kvtc__pinned_alloc(size_t size, void **out)
{
    if (cudaMallocHost(out, size ? size : 1) != cudaSuccess) {
        (void)cudaGetLastError();
        return KVTC_ENOMEM;
    }
    return 0;
}

void kvtc__pinned_free(void *p)
{
    if (p)
        cudaFreeHost(p);
}

int kvtc__cuda_copy(void *dst, const void *src, size_t size, int to_device)
{
    if (!size)
        return 0;
    if (cudaMemcpy(dst, src, size, to_device ? cudaMemcpyHostToDevice
                                             : cudaMemcpyDeviceToHost) != cudaSuccess) {
        (void)cudaGetLastError();
        return KVTC_EIO;
    }
    return 0;
}

#else /* !KVTC_HAVE_CUDA */

int kvtc__cuda_usable(void)
{
    return 0;
}

int kvtc__mem_classify(const void *p, uint32_t mem, int *is_dev)
{
    (void)p;
    *is_dev = 0;
    if (mem == KVTC_MEM_CUDA)
        return KVTC_ENOTSUP;
    return mem == KVTC_MEM_AUTO || mem == KVTC_MEM_HOST ? 0 : KVTC_EINVAL;
}

int kvtc__pinned_alloc(size_t size, void **out)
{
    (void)size;
    *out = NULL;
    return KVTC_ENOTSUP;
}

void kvtc__pinned_free(void *p)
{
    (void)p;
}

int kvtc__cuda_copy(void *dst, const void *src, size_t size, int to_device)
{
    (void)dst, (void)src, (void)size, (void)to_device;
    return KVTC_ENOTSUP;
}
#endif
