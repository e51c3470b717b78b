/* kvtc-bench-tiers: what the disk tier and the index cost.
 *
 *   kvtc-bench-tiers [--quick] [--dir DIR] [--runs N] [--size BYTES]
 *                    [--index N] [--probes N] [--restart N] [--json PATH]
 *
 * - Disk tier throughput through the kvtcd_disk API (in-process, real
 *   libuv loop, O_DIRECT): append then read of --size bytes in records of
 *   4 MiB and 32 MiB, 8 in flight, on each backend (io_uring, thread pool),
 *   next to fio's sequential O_DIRECT write and read (bs 4M, iodepth 8) of
 *   the same size in the same directory, in the same run. Median of --runs.
 * - Index: heap bytes per stored chunk (mallinfo2 around N inserts through
 *   kvtcd_index_insert), and the latency of kvtcd_index_find hits (and of
 *   8-key kvtcd_index_lookup chains) with N chunks stored.
 * - Restart: --restart records of 64 B payload (header + payload padded to
 *   the file system's direct-I/O alignment: 512 B or 4 KiB) appended through
 *   kvtcd_disk_append, the store closed, then kvtcd_disk_open with the
 *   index rebuilt from its callback: from .sum files, and by scanning
 *   (.sum files deleted). The files are dropped from the page cache first.
 *
 * --quick is a smoke run (seconds, small sizes); `make bench-tiers` runs
 * the full one and writes bench/results/tiers.json. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/statfs.h>
#include <sys/statvfs.h>
#include <sys/utsname.h>
#include <time.h>
#include <unistd.h>

#include "bti.h"
#include "kvtc_errors.h"
#include "store_disk.h"

#define MiB ((size_t)1 << 20)
#define MAX_RUNS 15
#define SKIPPED 1 /* a part --only left out (not an error) */

struct opts {
    const char *dir;
    const char *json;
    int quick, runs;
    const char *only;           /* NULL: all; "disk", "index", "restart" */
    uint64_t size, index_n, probes, restart_n;
    unsigned depth;
};

struct tput {
    int io_mode;
    const char *mode_name;
    size_t rec;
    char backend[16];
    int ok;
    double w[MAX_RUNS], r[MAX_RUNS];
    double w_med, r_med;
    char why[64];
};

static int cmp_d(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

static double median(const double *v, int n)
{
    double s[MAX_RUNS];
    memcpy(s, v, (size_t)n * sizeof *s);
    qsort(s, (size_t)n, sizeof *s, cmp_d);
    return n % 2 ? s[n / 2] : (s[n / 2 - 1] + s[n / 2]) / 2;
}

static void cpu_name(char *out, size_t len)
{
    FILE *f = fopen("/proc/cpuinfo", "r");
    char line[256];
    snprintf(out, len, "unknown");
    while (f && fgets(line, sizeof line, f))
        if (!strncmp(line, "model name", 10)) {
            char *c = strchr(line, ':');
            if (c) {
                snprintf(out, len, "%s", c + 2);
                out[strcspn(out, "\n")] = '\0';
            }
            break;
        }
    if (f)
        fclose(f);
}

static const char *fs_name(const char *dir)
{
    struct statfs s;
    if (statfs(dir, &s))
        return "unknown";
    switch ((unsigned long)s.f_type) {
    case 0xEF53: return "ext4";
    case 0x58465342: return "xfs";
    case 0x9123683E: return "btrfs";
    case 0x01021994: return "tmpfs";
    case 0x794c7630: return "overlayfs";
    default: return "other";
    }
}

static uint64_t free_bytes(const char *dir)
{
    struct statvfs v;
    return statvfs(dir, &v) ? 0 : (uint64_t)v.f_bavail * v.f_frsize;
}

static int parse_args(int argc, char **argv, struct opts *o)
{
    const char *t = getenv("TMPDIR");
    *o = (struct opts){.dir = t && *t ? t : "/tmp", .runs = 3, .size = 1024 * MiB,
                       .index_n = 10000000, .probes = 1000000, .restart_n = 1000000, .depth = 8};
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(a, "--quick")) {
            o->quick = 1;
            o->runs = 1;
            o->size = 64 * MiB;
            o->index_n = 100000;
            o->probes = 100000;
            o->restart_n = 10000;
        } else if (!strcmp(a, "--dir") && v)
            o->dir = argv[++i];
        else if (!strcmp(a, "--depth") && v)
            o->depth = (unsigned)atoi(argv[++i]);
        else if (!strcmp(a, "--only") && v)
            o->only = argv[++i];
        else if (!strcmp(a, "--json") && v)
            o->json = argv[++i];
        else if (!strcmp(a, "--runs") && v)
            o->runs = atoi(argv[++i]);
        else if (!strcmp(a, "--size") && v)
            o->size = strtoull(argv[++i], NULL, 0);
        else if (!strcmp(a, "--index") && v)
            o->index_n = strtoull(argv[++i], NULL, 0);
        else if (!strcmp(a, "--probes") && v)
            o->probes = strtoull(argv[++i], NULL, 0);
        else if (!strcmp(a, "--restart") && v)
            o->restart_n = strtoull(argv[++i], NULL, 0);
        else {
            fprintf(stderr,
                    "usage: %s [--quick] [--dir DIR] [--runs N] [--size BYTES] [--depth N]\n"
                    "          [--index N] [--probes N] [--restart N] [--only disk|index|restart]\n"
                    "          [--json PATH]\n",
                    argv[0]);
            return -1;
        }
    }
    if (o->runs < 1 || o->runs > MAX_RUNS || o->size < 32 * MiB || o->index_n < 1000 ||
        o->probes < 100 || o->restart_n < 100 || o->depth < 1 || o->depth > 256 ||
        (o->only && strcmp(o->only, "disk") && strcmp(o->only, "index") &&
         strcmp(o->only, "restart"))) {
        fprintf(stderr, "bench-tiers: runs 1..%d, size >= 32M, depth 1..256, index >= 1000, "
                        "probes >= 100, restart >= 100, --only disk|index|restart\n", MAX_RUNS);
        return -1;
    }
    /* The reference file holds full runs only: a partial one would
     * replace the other parts' numbers with "skipped". */
    if (!o->json)
        o->json = o->quick || o->only ? NULL : "bench/results/tiers.json";
    return 0;
}

int main(int argc, char **argv)
{
    struct opts o;
    if (parse_args(argc, argv, &o))
        return 2;
    char cpu[128], note[256] = "";
    struct utsname un;
    uname(&un);
    cpu_name(cpu, sizeof cpu);
    time_t now = time(NULL);
    char date[32];
    strftime(date, sizeof date, "%Y-%m-%dT%H:%M:%SZ", gmtime(&now));

    /* Room: throughput files are removed after each step; the restart
     * set stays until its step ends. */
    uint64_t avail = free_bytes(o.dir), restart_need = o.restart_n * 4096 + (1ull << 30);
    if (avail && (!o.only || !strcmp(o.only, "restart")) && restart_need + 2 * o.size > avail) {
        uint64_t n = avail > 2 * o.size + (2ull << 30) ? (avail - 2 * o.size - (2ull << 30)) / 4096 : 0;
        if (n < 100) {
            fprintf(stderr, "bench-tiers: %s has %llu MiB free: too little\n", o.dir,
                    (unsigned long long)(avail / MiB));
            return 1;
        }
        snprintf(note, sizeof note, "restart scaled down from %llu to %llu records (%llu MiB free)",
                 (unsigned long long)o.restart_n, (unsigned long long)n,
                 (unsigned long long)(avail / MiB));
        o.restart_n = n;
        fprintf(stderr, "bench-tiers: %s\n", note);
    }
    printf("kvtc-bench-tiers: %s, %s %s, dir %s (%s), %d run(s)%s\n", cpu, un.sysname, un.release,
           o.dir, fs_name(o.dir), o.runs, o.quick ? " [quick]" : "");

    struct tput tp[4] = {
        {.io_mode = KVTCD_DISK_IO_URING, .mode_name = "uring", .rec = 4 * MiB},
        {.io_mode = KVTCD_DISK_IO_URING, .mode_name = "uring", .rec = 32 * MiB},
        {.io_mode = KVTCD_DISK_IO_THREADS, .mode_name = "threads", .rec = 4 * MiB},
        {.io_mode = KVTCD_DISK_IO_THREADS, .mode_name = "threads", .rec = 32 * MiB},
    };
    double fw[MAX_RUNS], fr[MAX_RUNS], fio_w = 0, fio_r = 0;
    char engine[16] = "", fmsg[256] = "";
    int do_disk = !o.only || !strcmp(o.only, "disk");
    int fio_ok = do_disk;
    for (int i = 0; i < 4; i++) {
        tp[i].ok = do_disk;
        snprintf(tp[i].why, sizeof tp[i].why, "skipped");
    }
    if (!do_disk)
        snprintf(fmsg, sizeof fmsg, "skipped");
    for (int run = 0; do_disk && run < o.runs; run++) {
        /* fio first in each run, then the store: both see the same disk state. */
        if (fio_ok && bti_fio(o.dir, o.size, 4 * MiB, o.depth, &fw[run], &fr[run], engine, fmsg)) {
            fprintf(stderr, "bench-tiers: %s: no fio reference\n", fmsg);
            fio_ok = 0;
        }
        for (int i = 0; i < 4; i++) {
            if (!tp[i].ok)
                continue;
            int rc = bti_disk_tput(o.dir, tp[i].io_mode, tp[i].rec, o.size, o.depth, &tp[i].w[run],
                                   &tp[i].r[run], tp[i].backend);
            if (rc) {
                snprintf(tp[i].why, sizeof tp[i].why, "%s", kvtc_strerror(rc));
                fprintf(stderr, "bench-tiers: disk %s %zu MiB: %s\n", tp[i].mode_name,
                        tp[i].rec / MiB, tp[i].why);
                tp[i].ok = 0;
            }
        }
    }
    if (fio_ok) {
        fio_w = median(fw, o.runs);
        fio_r = median(fr, o.runs);
    }
    if (do_disk)
        printf("\nDisk tier, %llu MiB per pass, %u in flight, O_DIRECT, median of %d (MB/s = 1e6 B/s)\n",
           (unsigned long long)(o.size / MiB), o.depth, o.runs);
    if (do_disk)
        printf("  %-28s %10s %10s %9s %9s\n", "", "write", "read", "w/fio", "r/fio");
    if (fio_ok)
        printf("  %-28s %10.0f %10.0f\n", engine[0] ? "fio bs=4M" : "fio", fio_w, fio_r);
    else if (do_disk)
        printf("  fio: %s\n", fmsg);
    for (int i = 0; do_disk && i < 4; i++) {
        char name[48];
        snprintf(name, sizeof name, "kvtcd_disk %s %zuM", tp[i].ok ? tp[i].backend : tp[i].mode_name,
                 tp[i].rec / MiB);
        if (!tp[i].ok) {
            printf("  %-28s %s\n", name, tp[i].why);
            continue;
        }
        tp[i].w_med = median(tp[i].w, o.runs);
        tp[i].r_med = median(tp[i].r, o.runs);
        if (fio_ok)
            printf("  %-28s %10.0f %10.0f %8.0f%% %8.0f%%\n", name, tp[i].w_med, tp[i].r_med,
                   100 * tp[i].w_med / fio_w, 100 * tp[i].r_med / fio_r);
        else
            printf("  %-28s %10.0f %10.0f\n", name, tp[i].w_med, tp[i].r_med);
    }
    fflush(stdout);

    struct bti_index_res ix;
    int ix_rc = !o.only || !strcmp(o.only, "index") ? bti_index(o.index_n, o.probes, &ix) : SKIPPED;
    if (ix_rc == SKIPPED)
        ;
    else if (ix_rc)
        fprintf(stderr, "bench-tiers: index: %s\n", kvtc_strerror(ix_rc));
    else {
        printf("\nIndex, %llu chunks stored\n", (unsigned long long)o.index_n);
        if (ix.bytes_per_entry > 0)
            printf("  heap per chunk        %8.0f B (entry, hash buckets, child counts)\n",
                   ix.bytes_per_entry);
        else /* ASan's allocator keeps mallinfo2 at 0 */
            printf("  heap per chunk             n/a (mallinfo2 sees no heap: replaced malloc, e.g. SAN=1)\n");
        printf("  insert                %8.2f s (%.2f M/s)\n", ix.insert_s,
               (double)o.index_n / ix.insert_s / 1e6);
        printf("  find hit P50 / P99    %8.0f / %.0f ns (mean %.0f; clock read %.0f ns included)\n",
               ix.find_p50_ns, ix.find_p99_ns, ix.find_mean_ns, ix.timer_ns);
        printf("  lookup 8-key chain    %8.0f / %.0f ns P50 / P99\n", ix.lookup8_p50_ns,
               ix.lookup8_p99_ns);
        printf("  put, host tier full   %8.0f / %.0f ns P50 / P99 (behind those disk-only chunks)\n",
               ix.room_p50_ns, ix.room_p99_ns);
    }
    fflush(stdout);

    struct bti_restart_res rs;
    int rs_rc = !o.only || !strcmp(o.only, "restart") ? bti_restart(o.dir, o.restart_n, 64, 64, &rs)
                                                        : SKIPPED;
    if (rs_rc == SKIPPED)
        ;
    else if (rs_rc)
        fprintf(stderr, "bench-tiers: restart: %s\n", kvtc_strerror(rs_rc));
    else {
        printf("\nRestart, %llu records of 64 B (%llu MiB of segments, %.0f B a record, %s)\n",
               (unsigned long long)rs.n, (unsigned long long)(rs.disk_bytes / MiB),
               (double)rs.disk_bytes / (double)rs.n, rs.backend);
        printf("  written in            %8.2f s (%.0f records/s)\n", rs.write_s,
               (double)rs.n / rs.write_s);
        printf("  open from .sum        %8.2f s (recovery %.2f s), %llu chunks indexed\n",
               rs.open_sum_s, rs.recover_sum_s, (unsigned long long)rs.recovered_sum);
        printf("  open by scanning      %8.2f s (recovery %.2f s), %llu chunks indexed\n",
               rs.open_scan_s, rs.recover_scan_s, (unsigned long long)rs.recovered_scan);
    }
    if (note[0])
        printf("  note: %s\n", note);

    if (o.json) {
        FILE *f = fopen(o.json, "w");
        if (!f) {
            fprintf(stderr, "bench-tiers: %s: %s\n", o.json, strerror(errno));
            return 1;
        }
        fprintf(f, "{\n  \"benchmark\": \"tiers\",\n  \"date\": \"%s\",\n  \"cpu\": \"%s\",\n"
                   "  \"online_cpus\": %ld,\n  \"kernel\": \"%s\",\n  \"dir_fs\": \"%s\",\n"
                   "  \"runs\": %d,\n  \"mb\": \"1e6 bytes of payload per second\",\n",
                date, cpu, sysconf(_SC_NPROCESSORS_ONLN), un.release, fs_name(o.dir), o.runs);
        fprintf(f, "  \"disk\": {\"bytes_per_pass\": %llu, \"in_flight\": %u, \"direct\": true, \"fdatasync\": false,\n",
                (unsigned long long)o.size, o.depth);
        if (fio_ok)
            fprintf(f, "    \"fio\": {\"engine\": \"%s\", \"bs\": 4194304, \"write_mb_s\": %.1f, \"read_mb_s\": %.1f},\n",
                    engine, fio_w, fio_r);
        else
            fprintf(f, "    \"fio\": null,\n");
        fprintf(f, "    \"store\": [\n");
        for (int i = 0; i < 4; i++) {
            fprintf(f, "      {\"backend\": \"%s\", \"record_bytes\": %zu, ",
                    tp[i].ok ? tp[i].backend : tp[i].mode_name, tp[i].rec);
            if (tp[i].ok)
                fprintf(f, "\"write_mb_s\": %.1f, \"read_mb_s\": %.1f, \"write_vs_fio\": %.3f, \"read_vs_fio\": %.3f}",
                        tp[i].w_med, tp[i].r_med, fio_ok ? tp[i].w_med / fio_w : 0,
                        fio_ok ? tp[i].r_med / fio_r : 0);
            else
                fprintf(f, "\"error\": \"%s\"}", tp[i].why);
            fprintf(f, "%s\n", i < 3 ? "," : "");
        }
        fprintf(f, "    ]},\n");
        if (!ix_rc)
            fprintf(f, "  \"index\": {\"chunks\": %llu, \"bytes_per_chunk\": %.1f, \"insert_s\": %.3f, "
                       "\"find_p50_ns\": %.0f, \"find_p99_ns\": %.0f, \"find_mean_ns\": %.1f, "
                       "\"lookup8_p50_ns\": %.0f, \"lookup8_p99_ns\": %.0f, \"clock_read_ns\": %.0f, "
                       "\"full_host_put_p50_ns\": %.0f, \"full_host_put_p99_ns\": %.0f},\n",
                    (unsigned long long)o.index_n, ix.bytes_per_entry, ix.insert_s, ix.find_p50_ns,
                    ix.find_p99_ns, ix.find_mean_ns, ix.lookup8_p50_ns, ix.lookup8_p99_ns,
                    ix.timer_ns, ix.room_p50_ns, ix.room_p99_ns);
        else
            fprintf(f, "  \"index\": null,\n");
        if (!rs_rc)
            fprintf(f, "  \"restart\": {\"records\": %llu, \"payload_bytes\": 64, \"disk_bytes\": %llu, "
                       "\"backend\": \"%s\", \"write_s\": %.3f, \"open_sum_s\": %.3f, \"recover_sum_s\": %.3f, "
                       "\"indexed_sum\": %llu, \"open_scan_s\": %.3f, \"recover_scan_s\": %.3f, "
                       "\"indexed_scan\": %llu, \"page_cache\": \"dropped (fadvise)\"},\n",
                    (unsigned long long)rs.n, (unsigned long long)rs.disk_bytes, rs.backend,
                    rs.write_s, rs.open_sum_s, rs.recover_sum_s,
                    (unsigned long long)rs.recovered_sum, rs.open_scan_s, rs.recover_scan_s,
                    (unsigned long long)rs.recovered_scan);
        else
            fprintf(f, "  \"restart\": null,\n");
        fprintf(f, "  \"note\": \"%s\"\n}\n", note);
        fclose(f);
        printf("wrote %s\n", o.json);
    }
    int failed = (ix_rc && ix_rc != SKIPPED) || (rs_rc && rs_rc != SKIPPED);
    for (int i = 0; do_disk && i < 4; i++)
        failed |= !tp[i].ok && tp[i].io_mode != KVTCD_DISK_IO_URING;
    return failed ? 1 : 0;
}
