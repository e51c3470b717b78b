/* tier_copy.c - throughput of the GPU tier's copies (daemon/store_gpu.c)
 * next to plain driver copies on the same device, in one process.
 *
 *   kvtc-bench-gpu-tier [--total MiB] [--extent MiB] [--small KiB]
 *                       [--reps N] [--device N]
 *
 * Rows (GB/s = 1e9 bytes/s, median of --reps after one warm-up):
 *   tier staged/hN total bytes in --extent copies, all in flight at once,
 *                  from/to pageable malloc memory, the staging memcpy
 *                  split over 1+N threads (N = 0, 2, 4 and the default)
 *   tier small     the same bytes in --small KiB copies (per-copy cost)
 *   tier direct    from/to memory registered with kvtcd_gpu_register_host
 *   plain pinned   one cuMemcpyHtoD/DtoH of total bytes from cuMemHostAlloc
 *   plain pageable one cuMemcpyHtoD/DtoH of total bytes from malloc memory
 * Needs no CUDA headers (the driver is dlopen'ed like kvtcd does). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <uv.h>

#include "cuda_driver.h"
#include "kvtc_errors.h"
#include "log.h"
#include "par_copy.h"
#include "store_gpu.h"

#define MiB (1ull << 20)
#define MAX_REPS 64

static int g_done;

static void on_copy(void *arg, int status)
{
    if (status != 0) {
        fprintf(stderr, "copy failed: %s\n", kvtc_strerror(status));
        exit(1);
    }
    (void)arg;
    g_done++;
}

static int cmp_d(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

static double median(double *v, int n)
{
    qsort(v, (size_t)n, sizeof *v, cmp_d);
    return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

/* All n copies of ext bytes each in flight at once; GB/s. */
static double tier_pass(uv_loop_t *loop, kvtcd_gpu *g, kvtcd_gpu_loc *loc,
                        int n, uint64_t ext, uint8_t *host, int write)
{
    g_done = 0;
    uint64_t t0 = uv_hrtime();
    for (int i = 0; i < n; i++) {
        int rc = write ? kvtcd_gpu_write(g, &loc[i], host + (uint64_t)i * ext,
                                         ext, on_copy, NULL)
                       : kvtcd_gpu_read(g, &loc[i], host + (uint64_t)i * ext,
                                        ext, on_copy, NULL);
        if (rc < 0) {
            fprintf(stderr, "submit: %s\n", kvtc_strerror(rc));
            exit(1);
        }
    }
    while (g_done < n)
        uv_run(loop, UV_RUN_ONCE);
    double s = (double)(uv_hrtime() - t0) / 1e9;
    return (double)n * (double)ext / s / 1e9;
}

static void tier_rows(uv_loop_t *loop, kvtcd_gpu *g, const char *name,
                      uint64_t total, uint64_t ext, uint8_t *host,
                      uint8_t *check, int reps)
{
    int n = (int)(total / ext);
    kvtcd_gpu_loc *loc = calloc((size_t)n, sizeof *loc);
    if (!loc)
        exit(1);
    for (int i = 0; i < n; i++) {
        int rc = kvtcd_gpu_alloc(g, ext, &loc[i]);
        if (rc < 0) {
            fprintf(stderr, "alloc: %s\n", kvtc_strerror(rc));
            exit(1);
        }
    }
    double w[MAX_REPS], r[MAX_REPS];
    tier_pass(loop, g, loc, n, ext, host, 1); /* warm-up */
    for (int k = 0; k < reps; k++)
        w[k] = tier_pass(loop, g, loc, n, ext, host, 1);
    if (check) {
        /* Byte-exact before the timed reads: read into check, compare. */
        memset(check, 0xA5, total);
        tier_pass(loop, g, loc, n, ext, check, 0);
        if (memcmp(check, host, n * ext) != 0) {
            fprintf(stderr, "%s: read back differs\n", name);
            exit(1);
        }
    }
    uint8_t *dst = check ? check : host;
    tier_pass(loop, g, loc, n, ext, dst, 0);
    for (int k = 0; k < reps; k++)
        r[k] = tier_pass(loop, g, loc, n, ext, dst, 0);
    printf("%-15s %6d x %8.3f MiB  H2D %6.2f GB/s  D2H %6.2f GB/s\n", name, n,
           (double)ext / (double)MiB, median(w, reps), median(r, reps));
    for (int i = 0; i < n; i++)
        kvtcd_gpu_free(g, &loc[i]);
    free(loc);
}

static double now_s(void)
{
    return (double)uv_hrtime() / 1e9;
}

static int plain_rows(const kvtcd_cuda *cu, int device, uint64_t total,
                      uint8_t *pageable, int reps)
{
    kvtcd_CUdevice dev;
    kvtcd_CUcontext ctx;
    kvtcd_CUdeviceptr d = 0;
    void *pinned = NULL;
    if (cu->cuDeviceGet(&dev, device) || cu->cuDevicePrimaryCtxRetain(&ctx, dev) ||
        cu->cuCtxSetCurrent(ctx) || cu->cuMemAlloc(&d, total) ||
        cu->cuMemHostAlloc(&pinned, total, 0)) {
        fprintf(stderr, "plain: driver setup failed\n");
        return 1;
    }
    memcpy(pinned, pageable, total);
    uint8_t *srcs[2] = {pinned, pageable};
    const char *names[2] = {"plain pinned", "plain pageable"};
    for (int m = 0; m < 2; m++) {
        double w[MAX_REPS], r[MAX_REPS];
        for (int k = -1; k < reps; k++) {
            double t0 = now_s();
            if (cu->cuMemcpyHtoD(d, srcs[m], total))
                return 1;
            double t1 = now_s();
            if (cu->cuMemcpyDtoH(srcs[m], d, total))
                return 1;
            double t2 = now_s();
            if (k >= 0) {
                w[k] = (double)total / (t1 - t0) / 1e9;
                r[k] = (double)total / (t2 - t1) / 1e9;
            }
        }
        printf("%-15s %6d x %8.3f MiB  H2D %6.2f GB/s  D2H %6.2f GB/s\n",
               names[m], 1, (double)total / (double)MiB, median(w, reps),
               median(r, reps));
    }
    cu->cuMemFreeHost(pinned);
    cu->cuMemFree(d);
    cu->cuDevicePrimaryCtxRelease(dev);
    return 0;
}

static void on_closed(void *arg)
{
    *(int *)arg = 1;
}

int main(int argc, char **argv)
{
    uint64_t total = 256 * MiB, ext = 32 * MiB, small = 256 << 10;
    int reps = 5, device = 0;
    for (int i = 1; i + 1 < argc; i += 2) {
        long long v = atoll(argv[i + 1]);
        if (v <= 0) {
            fprintf(stderr, "bad value for %s\n", argv[i]);
            return 2;
        }
        if (!strcmp(argv[i], "--total"))
            total = (uint64_t)v * MiB;
        else if (!strcmp(argv[i], "--extent"))
            ext = (uint64_t)v * MiB;
        else if (!strcmp(argv[i], "--small"))
            small = (uint64_t)v << 10;
        else if (!strcmp(argv[i], "--reps"))
            reps = v > MAX_REPS ? MAX_REPS : (int)v;
        else if (!strcmp(argv[i], "--device"))
            device = (int)v;
        else {
            fprintf(stderr, "usage: %s [--total MiB] [--extent MiB] "
                    "[--small KiB] [--reps N] [--device N]\n", argv[0]);
            return 2;
        }
    }
    if (ext > total || small > total) {
        fprintf(stderr, "--extent and --small must not exceed --total\n");
        return 2;
    }
    kvtcd_log_set_level(KVTCD_LOG_WARN);
    uv_loop_t loop;
    uv_loop_init(&loop);
    uint8_t *a = NULL, *b = NULL, *reg = NULL;
    if (posix_memalign((void **)&a, 4096, total) ||
        posix_memalign((void **)&b, 4096, total) ||
        posix_memalign((void **)&reg, 4096, total))
        return 1;
    for (uint64_t i = 0; i < total; i += 8) {
        uint64_t v = i * 0x9e3779b97f4a7c15ull;
        memcpy(a + i, &v, 8);
    }
    memset(b, 0, total);
    memcpy(reg, a, total);

    kvtcd_gpu *g = NULL;
    int closed = 0, rc;
    static const int helpers[] = {0, 2, 4, -1};
    for (size_t h = 0; h < sizeof helpers / sizeof *helpers; h++) {
        kvtcd__gpu_set_copy_helpers(helpers[h]);
        rc = kvtcd_gpu_open(&loop, device, total, &g);
        if (rc < 0) {
            fprintf(stderr, "kvtcd_gpu_open: %s: %s\n", kvtc_strerror(rc),
                    kvtcd_gpu_last_error());
            return rc == KVTC_ENOTSUP ? 77 : 1;
        }
        if (h == 0) {
            kvtcd_gpu_stats st;
            kvtcd_gpu_get_stats(g, &st);
            printf("device %d: %s; %llu MiB per pass, median of %d; "
                   "default helpers %d\n", device, st.device_name,
                   (unsigned long long)(total / MiB), reps,
                   kvtcd_pcopy_default_helpers());
        }
        if (helpers[h] < 0)
            break; /* the default tier stays open for the rows below */
        char name[32];
        snprintf(name, sizeof name, "tier staged/h%d", helpers[h]);
        tier_rows(&loop, g, name, total, ext, a, b, reps);
        closed = 0;
        kvtcd_gpu_close(g, on_closed, &closed);
        while (!closed)
            uv_run(&loop, UV_RUN_ONCE);
    }
    tier_rows(&loop, g, "tier staged", total, ext, a, b, reps);
    tier_rows(&loop, g, "tier small", total, small, a, b, reps);
    double t0 = now_s();
    rc = kvtcd_gpu_register_host(g, reg, total);
    double treg = now_s() - t0;
    if (rc == 0) {
        printf("register_host  %llu MiB in %.1f ms\n",
               (unsigned long long)(total / MiB), treg * 1e3);
        tier_rows(&loop, g, "tier direct", total, ext, reg, NULL, reps);
    } else {
        printf("register_host refused: %s\n", kvtc_strerror(rc));
    }
    closed = 0;
    kvtcd_gpu_close(g, on_closed, &closed);
    while (!closed)
        uv_run(&loop, UV_RUN_ONCE);
    uv_loop_close(&loop);

    const kvtcd_cuda *cu = NULL;
    char why[200];
    if (kvtcd_cuda_load(&cu, why, sizeof why) < 0 ||
        plain_rows(cu, device, total, a, reps) != 0)
        return 1;
    free(a);
    free(b);
    free(reg);
    return 0;
}
