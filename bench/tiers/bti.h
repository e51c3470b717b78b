/* bti.h - pieces of kvtc-bench-tiers (bench_tiers.c drives them). Each
 * measurement is one function: it sets up what it needs under the
 * directory it is given, measures, and removes its files. Results in plain
 * numbers; printing and JSON are bench_tiers.c's. */
#ifndef KVTC_BENCH_TIERS_BTI_H
#define KVTC_BENCH_TIERS_BTI_H

#include <stddef.h>
#include <stdint.h>

/* Seconds on the monotonic clock. */
double bti_now(void);
/* Make a fresh directory under parent ("parent/name-XXXXXX"); path gets it. */
int bti_mkdtemp(const char *parent, const char *name, char path[512]);
/* Remove the files of dir (one level: the stores write no subdirs), then
 * dir itself. */
void bti_rmdir(const char *dir);
/* Ask the kernel to drop dir's files from the page cache (fadvise), so a
 * restart reads them cold without dropping everyone's caches. */
void bti_uncache(const char *dir);

/* Disk tier throughput through the kvtcd_disk API, in-process on a libuv
 * loop: total bytes in records of rec bytes, depth appends (then reads) in
 * flight, no fdatasync (as fio --direct=1 without --fsync). io_mode: enum
 * kvtcd_disk_io_mode. MB/s are 1e6 bytes of payload per second. backend
 * gets what the store runs ("io_uring", "threadpool"). Errors: KVTC_E*
 * (KVTC_ENOTSUP: io_uring refused). */
int bti_disk_tput(const char *dir, int io_mode, size_t rec, uint64_t total,
                  unsigned depth, double *write_mb_s, double *read_mb_s,
                  char backend[16]);

/* fio sequential O_DIRECT write then read of size bytes in bs-byte blocks,
 * iodepth depth, in dir (io_uring engine, else libaio). MB/s as above.
 * engine gets the engine used. Returns 0, or -1 when fio is missing or
 * failed (msg says why). */
int bti_fio(const char *dir, uint64_t size, size_t bs, unsigned depth,
            double *write_mb_s, double *read_mb_s, char engine[16],
            char msg[256]);

/* Index: n entries (disk copies only, as after a restart) through
 * kvtcd_index_insert; bytes of heap per entry (mallinfo2, buckets and
 * child table included), insert rate, then probes random kvtcd_index_find
 * hits timed one by one (P50/P99 in ns; timer_ns is the clock's own cost,
 * included in them). */
struct bti_index_res {
    double bytes_per_entry;
    double insert_s;
    double find_p50_ns, find_p99_ns, find_mean_ns;
    double lookup8_p50_ns, lookup8_p99_ns; /* kvtcd_index_lookup, chains of 8 */
    double room_p50_ns, room_p99_ns;       /* a put into a full host tier behind
                                              the disk-only chunks (reserve and
                                              insert: a clean host copy goes) */
    double timer_ns;
};
int bti_index(uint64_t n, uint64_t probes, struct bti_index_res *out);

/* Restart: n records of payload bytes appended through kvtcd_disk_append
 * (depth in flight), the store closed, then reopened with the index
 * rebuilt from its recovery callback: from the .sum files, and again with
 * them deleted (a scan of every segment). Files are uncached first. */
struct bti_restart_res {
    uint64_t n, recovered_sum, recovered_scan;
    uint64_t disk_bytes;
    double write_s;
    double open_sum_s, open_scan_s;          /* kvtcd_disk_open + inserts */
    double recover_sum_s, recover_scan_s;    /* the store's recover_seconds */
    char backend[16];
};
int bti_restart(const char *dir, uint64_t n, size_t payload, unsigned depth,
                struct bti_restart_res *out);

#endif
