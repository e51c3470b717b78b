/* test_it_tiers.h - shared helpers of the tier integration tests
 * (test_it_tiers_*.c): a kvtcd with a disk tier on a data dir that
 * survives restarts, chunks whose bytes follow from their index, and the
 * tier metrics.
 *
 * Every chunk i of a key space has a fixed size and content, so a test can
 * check any chunk after any restart without keeping the bytes: a get must
 * return exactly those bytes or a miss, never anything else. */
#ifndef KVTC_TEST_IT_TIERS_H
#define KVTC_TEST_IT_TIERS_H

#include <stddef.h>
#include <stdint.h>

#include "itest.h"

/* Metric names of the tier metrics (docs/kvtcd.md). Series carry a label
 * tier="host|gpu|disk"; TIERS_SERIES() names one. */
#define TIERS_M_CAPACITY "kvtc_tier_capacity_bytes"
#define TIERS_M_USED "kvtc_tier_used_bytes"
#define TIERS_M_HITS "kvtc_tier_hits_total"
#define TIERS_M_PROMOTIONS "kvtc_tier_promotions_total"
#define TIERS_M_DEMOTIONS "kvtc_tier_demotions_total"
#define TIERS_M_EVICTIONS "kvtc_tier_evictions_total"
#define TIERS_M_ERRORS "kvtc_tier_errors_total"
#define TIERS_M_BYTES_WRITTEN "kvtc_tier_bytes_written_total"
#define TIERS_M_DISK_CORRUPT "kvtc_disk_corrupt_total"
#define TIERS_M_DISK_RECOVERED "kvtc_disk_recovered_total"
#define TIERS_M_DISK_DIRTY "kvtc_disk_dirty_chunks"
#define TIERS_SERIES(base, tier) base "{tier=\"" tier "\"}"

/* How a tier daemon is started. NULL fields take the defaults. */
struct tiers_opts {
    const char *host_mem;    /* default "64M" */
    const char *disk_size;   /* default "256M" */
    const char *durability;  /* default "durable" */
    const char *disk_io;     /* "uring", "threads"; default: none (auto) */
    const char *disk_dir;    /* default: d->dir/disk */
    const char *const *extra; /* more arguments, NULL-terminated */
};

/* itest_setup(tls), then skip with a clear message when this kvtcd has no
 * disk tier yet (its --help lacks --disk-dir or --durability). */
void tiers_setup(const char *tls);

/* Start kvtcd with a disk tier: tiers_start makes the temp dir first,
 * tiers_launch (re)starts on the dir of an earlier start. Both skip the
 * test when the daemon exports no disk tier capacity (not wired yet). */
void tiers_start(struct itest_daemon *d, const struct tiers_opts *o);
void tiers_launch(struct itest_daemon *d, const struct tiers_opts *o);

/* The default disk dir of d (static buffer). */
const char *tiers_disk_dir(const struct itest_daemon *d);

/* Skip the test with a clear message when this kernel refuses io_uring
 * (no io_uring_setup, io_uring_disabled, seccomp). */
void tiers_require_uring(void);

/* Chunk i of key space `space`: its key, size (a mix of odd and aligned
 * sizes up to max_size) and content seed. */
kvtc_key tiers_key(uint32_t space, uint32_t i);
size_t tiers_size(uint32_t space, uint32_t i, size_t max_size);
uint64_t tiers_seed(uint32_t space, uint32_t i);

/* Put chunk i (size bytes) with its content; returns the put's status.
 * parent (may be NULL) is the key it extends. */
int tiers_put(kvtc_conn *c, uint32_t space, uint32_t i, size_t size,
              const kvtc_key *parent);

/* Get chunk i: 1 when it came back byte-exact (*tier, may be NULL, gets
 * the tier it was served from), 0 on a miss (KVTC_ENOENT, or
 * KVTC_ECORRUPT: the daemon found the stored copy damaged and dropped it).
 * Any other outcome (wrong size, wrong bytes, another error) fails the
 * test. */
int tiers_get(kvtc_conn *c, uint32_t space, uint32_t i, size_t size,
              uint32_t *tier);

/* Presence through lookup (does not refresh recency). */
int tiers_present(kvtc_conn *c, uint32_t space, uint32_t i);

/* One metric of the daemon: the series name (with labels), asserting it
 * is exported. */
double tiers_metric(const struct itest_daemon *d, const char *series);
/* Like tiers_metric, -1 when the series is absent. */
double tiers_metric_opt(const struct itest_daemon *d, const char *series);
/* Sum of a metric over every tier label, asserting it is exported. */
double tiers_metric_sum(const struct itest_daemon *d, const char *base);

/* Poll series until it is <= want (below=1) or >= want (below=0), up to
 * timeout_ms; returns 1 when it got there. */
int tiers_wait_metric(const struct itest_daemon *d, const char *series,
                      double want, int below, int timeout_ms);

/* A seed for random choices: $KVTC_TEST_SEED when set, else the clock;
 * logged so a failing run can be repeated. */
unsigned tiers_rand_seed(const char *test);
/* Rounds of a randomized test: $KVTC_TEST_ROUNDS when set, else dflt. */
int tiers_rounds(int dflt);

void tiers_sleep_ms(int ms);
long tiers_now_ms(void);

#endif
