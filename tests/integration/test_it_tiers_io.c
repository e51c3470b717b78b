/* Round trips through the disk tier on each I/O path (--disk-io uring and
 * threads): sizes around the 4 KiB block and across bounce buffers, put
 * durably, read back from host RAM, then after a restart from the disk,
 * byte-exact; the daemon reports the backend it runs. */
#include "test_it_tiers.h"

#include <criterion/criterion.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>

#define SPACE 0x494f5400u

static const size_t sizes[] = {1, 2, 511, 4095, 4096, 4097, 8191, 65536, (1u << 20) + 3,
                               (4u << 20) - 1, (8u << 20) + 1, 0};
#define N (sizeof sizes / sizeof sizes[0])

static void roundtrip(const char *io, const char *backend, uint32_t space)
{
    struct itest_daemon d;
    struct tiers_opts o = {.durability = "durable", .disk_io = io};
    tiers_setup(ITEST_TLS_TCP);
    tiers_start(&d, &o);
    char *body = itest_metrics_body(&d);
    char want[64];
    snprintf(want, sizeof want, "backend=\"%s\"", backend);
    cr_assert(strstr(body, want), "--disk-io %s: /metrics does not say %s:\n%s", io, want, body);
    free(body);
    kvtc_conn *c = itest_connect(&d);
    for (uint32_t i = 0; i < N; i++) {
        int rc = tiers_put(c, space, i, sizes[i], NULL);
        cr_assert_eq(rc, 0, "%s: put of %zu B: %s (%s)", io, sizes[i], kvtc_strerror(rc),
                     kvtc_last_error(c));
    }
    for (uint32_t i = 0; i < N; i++)
        cr_assert(tiers_get(c, space, i, sizes[i], NULL), "%s: %zu B chunk lost", io, sizes[i]);
    kvtc_disconnect(c);
    int st = itest_daemon_signal_wait(&d, SIGTERM, 15000);
    cr_assert(st != -1 && WIFEXITED(st) && WEXITSTATUS(st) == 0, "SIGTERM: status %d\n%s", st,
              itest_log_tail(&d));

    tiers_launch(&d, &o);
    c = itest_connect(&d);
    double hits0 = tiers_metric(&d, TIERS_SERIES(TIERS_M_HITS, "disk"));
    for (uint32_t i = 0; i < N; i++)
        cr_assert(tiers_get(c, space, i, sizes[i], NULL), "%s: %zu B chunk lost in the restart", io,
                  sizes[i]);
    double hits = tiers_metric(&d, TIERS_SERIES(TIERS_M_HITS, "disk"));
    cr_assert_geq(hits - hits0, N, "%s: %zu reads after a restart, %.0f disk hits", io, N, hits - hits0);
    kvtc_disconnect(c);
    itest_daemon_stop(&d);
}

Test(it_tiers_io, roundtrip_threads, .timeout = 90)
{
    roundtrip("threads", "threadpool", SPACE);
}

Test(it_tiers_io, roundtrip_uring, .timeout = 90)
{
    tiers_require_uring();
    roundtrip("uring", "io_uring", SPACE + 1);
}
