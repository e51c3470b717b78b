/* kvtc_bench_cma: does process_vm_writev/readv into one process scale with
 * the threads doing it? (the local path's copy workers, issue #4)
 *
 * usage: kvtc_bench_cma [--size B] [--threads 1,2,4,8] [--ms N]
 *
 * A child process holds one destination region per thread (written once,
 * so its pages exist); each thread of this process copies size-byte pieces
 * from its own 64 MiB source (out of cache, like a host slab) into its
 * region of the child, back to back for --ms milliseconds, all threads at
 * once. Three ways: "write" (process_vm_writev), "hash+write" (XXH3 of the
 * piece first, then the write: kvtcd's get) and "read+hash"
 * (process_vm_readv, then XXH3 of what landed: kvtcd's put). One JSON line
 * per (way, threads): per-call P50/P99 in us and the aggregate GB/s. If
 * copies into one process serialized in the kernel (mmap lock, page
 * pinning), P50 would grow with threads. */

#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/uio.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
#include <xxhash.h>
#if defined(__x86_64__) || defined(__i386__)
#include <xxh_x86dispatch.h>
#define HASH XXH3_64bits_dispatch /* as kvtcd: AVX2/AVX-512 when there */
#else
#define HASH XXH3_64bits
#endif

#define SRC_BYTES (64u << 20)
#define MAX_THREADS 64
#define MAX_SAMPLES (1u << 20)

static size_t g_size = 256u << 10;
static pid_t g_child;
static uint8_t *g_dst;           /* same address in the child */
static volatile int g_go, g_stop;

struct th {
    pthread_t t;
    int idx, way;
    uint8_t *src;
    uint64_t *ns;
    size_t n;
    int err;
};

static uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static void *run(void *arg)
{
    struct th *t = arg;
    uint8_t *remote = g_dst + (size_t)t->idx * g_size;
    size_t off = 0;
    uint64_t sink = 0;
    while (!__atomic_load_n(&g_go, __ATOMIC_ACQUIRE))
        ;
    while (!__atomic_load_n(&g_stop, __ATOMIC_ACQUIRE) && t->n < MAX_SAMPLES) {
        struct iovec l = {t->src + off, g_size}, r = {remote, g_size};
        uint64_t a = now_ns();
        ssize_t n;
        if (t->way == 1)
            sink ^= HASH(l.iov_base, g_size);
        if (t->way == 2) {
            n = process_vm_readv(g_child, &l, 1, &r, 1, 0);
            sink ^= HASH(l.iov_base, g_size);
        } else {
            n = process_vm_writev(g_child, &l, 1, &r, 1, 0);
        }
        if (n != (ssize_t)g_size) {
            t->err = n < 0 ? errno : EFAULT;
            break;
        }
        t->ns[t->n++] = now_ns() - a;
        off = (off + g_size) % (SRC_BYTES - g_size + 1);
    }
    if (sink == 42)
        fputc(' ', stderr); /* keep the hash */
    return NULL;
}

static int cmp_u64(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

int main(int argc, char **argv)
{
    int threads[16] = {1, 2, 4, 8};
    int nt = 4;
    unsigned ms = 300;
    for (int i = 1; i + 1 < argc; i += 2) {
        if (!strcmp(argv[i], "--size"))
            g_size = strtoull(argv[i + 1], NULL, 0);
        else if (!strcmp(argv[i], "--ms"))
            ms = (unsigned)strtoul(argv[i + 1], NULL, 0);
        else if (!strcmp(argv[i], "--threads")) {
            nt = 0;
            for (char *p = argv[i + 1]; *p && nt < 16; p++) {
                threads[nt++] = (int)strtol(p, &p, 10);
                if (!*p)
                    break;
            }
        } else {
            fprintf(stderr, "usage: %s [--size B] [--threads 1,2,4,8] [--ms N]\n", argv[0]);
            return 2;
        }
    }
    if (g_size == 0 || g_size > SRC_BYTES) {
        fprintf(stderr, "--size out of range\n");
        return 2;
    }
    size_t dst_bytes = (size_t)MAX_THREADS * g_size;
    g_dst = mmap(NULL, dst_bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (g_dst == MAP_FAILED)
        return 1;
    int pfd[2];
    if (pipe(pfd) != 0)
        return 1;
    g_child = fork();
    if (g_child == 0) {
        memset(g_dst, 1, dst_bytes); /* its own pages, present */
        char c = 1;
        if (write(pfd[1], &c, 1) != 1)
            _exit(1);
        pause();
        _exit(0);
    }
    char c;
    if (g_child < 0 || read(pfd[0], &c, 1) != 1)
        return 1;
    static const char *ways[] = {"write", "hash+write", "read+hash"};
    int rc = 0;
    for (int way = 0; way < 3 && !rc; way++) {
        for (int k = 0; k < nt && !rc; k++) {
            int n = threads[k] < 1 ? 1 : threads[k] > MAX_THREADS ? MAX_THREADS : threads[k];
            struct th *t = calloc((size_t)n, sizeof *t);
            for (int i = 0; i < n; i++) {
                t[i].idx = i;
                t[i].way = way;
                t[i].src = malloc(SRC_BYTES);
                t[i].ns = malloc(MAX_SAMPLES * sizeof *t[i].ns);
                if (!t[i].src || !t[i].ns)
                    return 1;
                memset(t[i].src, 0x5a + i, SRC_BYTES);
            }
            g_go = g_stop = 0;
            for (int i = 0; i < n; i++)
                pthread_create(&t[i].t, NULL, run, &t[i]);
            uint64_t t0 = now_ns();
            __atomic_store_n(&g_go, 1, __ATOMIC_RELEASE);
            usleep(ms * 1000u);
            __atomic_store_n(&g_stop, 1, __ATOMIC_RELEASE);
            size_t total = 0;
            for (int i = 0; i < n; i++) {
                pthread_join(t[i].t, NULL);
                total += t[i].n;
                if (t[i].err) {
                    fprintf(stderr, "copy failed: %s\n", strerror(t[i].err));
                    rc = 1;
                }
            }
            double secs = (double)(now_ns() - t0) / 1e9;
            uint64_t *all = malloc((total ? total : 1) * sizeof *all);
            size_t m = 0;
            for (int i = 0; i < n; i++) {
                memcpy(all + m, t[i].ns, t[i].n * sizeof *all);
                m += t[i].n;
            }
            qsort(all, m, sizeof *all, cmp_u64);
            printf("{\"way\":\"%s\",\"size\":%zu,\"threads\":%d,\"calls\":%zu,\"p50_us\":%.1f,"
                   "\"p99_us\":%.1f,\"gb_s\":%.2f}\n",
                   ways[way], g_size, n, m, m ? all[m / 2] / 1e3 : 0.0,
                   m ? all[m * 99 / 100] / 1e3 : 0.0, (double)m * (double)g_size / secs / 1e9);
            fflush(stdout);
            free(all);
            for (int i = 0; i < n; i++) {
                free(t[i].src);
                free(t[i].ns);
            }
            free(t);
        }
    }
    kill(g_child, SIGKILL);
    waitpid(g_child, NULL, 0);
    return rc;
}
