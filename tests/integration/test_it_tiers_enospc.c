/* The file system fills up under the disk tier: an 8 MiB tmpfs as
 * --disk-dir with a --disk-size far larger, so the store's own capacity
 * check passes and the writes meet a real ENOSPC.
 * - durable: puts beyond the space fail with an error and a message (never
 *   success), the disk error metric rises, the daemon keeps serving what it
 *   acknowledged;
 * - cache (restarted on the full file system): puts still succeed and are
 *   served from memory while the write-behind fails;
 * - after another restart every chunk acknowledged in durable mode is
 *   intact.
 * Needs root for the mount (skipped otherwise). */
#include "test_it_tiers.h"

#include <criterion/criterion.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>

#define SPACE 0x454e5300u
#define CHUNK ((1u << 20) + 123)
#define TRIES 24 /* 24 MiB of puts into 8 MiB */

static char mnt[320];

static void umount_fini(void)
{
    if (mnt[0])
        itest_umount(mnt);
    mnt[0] = '\0';
}

static void sigterm(struct itest_daemon *d)
{
    int st = itest_daemon_signal_wait(d, SIGTERM, 15000);
    cr_assert(st != -1 && WIFEXITED(st) && WEXITSTATUS(st) == 0, "SIGTERM: status %d\n%s", st,
              itest_log_tail(d));
}

Test(it_tiers_enospc, full_file_system, .timeout = 180, .fini = umount_fini)
{
    struct itest_daemon d;
    tiers_setup(ITEST_TLS_TCP);
    itest_daemon_prepare(&d);
    snprintf(mnt, sizeof mnt, "%s", tiers_disk_dir(&d));
    int rc = itest_mount_tmpfs(mnt, "8m");
    if (rc) {
        mnt[0] = '\0';
        itest_daemon_stop(&d);
        cr_skip_test("cannot mount a tmpfs for the ENOSPC test (%s; needs root): skipped",
                     strerror(-rc));
    }
    struct tiers_opts o = {.durability = "durable", .disk_size = "256M", .host_mem = "64M",
                           .disk_dir = mnt};
    tiers_launch(&d, &o);
    kvtc_conn *c = itest_connect(&d);

    /* Durable: fill the file system. */
    int acked[TRIES] = {0}, n_acked = 0, n_failed = 0, first_fail = -1;
    for (uint32_t i = 0; i < TRIES; i++) {
        rc = tiers_put(c, SPACE, i, CHUNK, NULL);
        if (rc == 0) {
            acked[i] = 1;
            n_acked++;
            continue;
        }
        cr_assert(rc != KVTC_ECONN && rc != KVTC_ETIMEDOUT,
                  "durable put %u on a full file system: %s: the daemon must answer\n%s", i,
                  kvtc_strerror(rc), itest_log_tail(&d));
        cr_assert_neq(kvtc_last_error(c)[0], '\0', "a failed durable put comes with a message");
        if (first_fail < 0) {
            first_fail = (int)i;
            cr_log_info("first durable put refused: %s (%s)", kvtc_strerror(rc), kvtc_last_error(c));
        }
        n_failed++;
    }
    cr_assert_gt(n_acked, 0, "no durable put fit into 8 MiB\n%s", itest_log_tail(&d));
    cr_assert_leq(n_acked, 8, "%d durable puts of 1 MiB acknowledged on an 8 MiB file system", n_acked);
    cr_assert_gt(n_failed, 0, "every durable put succeeded on a full 8 MiB file system");
    cr_assert(itest_daemon_alive(&d), "kvtcd died on ENOSPC:\n%s", itest_log_tail(&d));
    double errs = tiers_metric(&d, TIERS_SERIES(TIERS_M_ERRORS, "disk"));
    cr_assert_gt(errs, 0, "ENOSPC did not show in the disk error metric");
    /* Acknowledged ones are served; refused ones are not served as stored. */
    for (uint32_t i = 0; i < TRIES; i++) {
        int got = tiers_get(c, SPACE, i, CHUNK, NULL);
        if (acked[i])
            cr_assert(got, "acknowledged chunk %u lost on ENOSPC", i);
        else
            cr_assert(!got, "chunk %u was refused as durable but is served", i);
    }
    kvtc_disconnect(c);
    sigterm(&d);

    /* Cache mode on the full file system: memory still serves. */
    o.durability = "cache";
    tiers_launch(&d, &o);
    c = itest_connect(&d);
    double errs0 = tiers_metric(&d, TIERS_SERIES(TIERS_M_ERRORS, "disk"));
    for (uint32_t i = 0; i < 8; i++) {
        rc = tiers_put(c, SPACE + 1, i, CHUNK, NULL);
        cr_assert_eq(rc, 0, "cache put %u on a full file system: %s (%s)", i, kvtc_strerror(rc),
                     kvtc_last_error(c));
    }
    for (uint32_t i = 0; i < 8; i++)
        cr_assert(tiers_get(c, SPACE + 1, i, CHUNK, NULL), "cache chunk %u not served", i);
    cr_assert(tiers_wait_metric(&d, TIERS_SERIES(TIERS_M_ERRORS, "disk"), errs0 + 1, 0, 15000),
              "the failing write-behind did not show in the disk error metric (%.0f)\n%s", errs0,
              itest_log_tail(&d));
    for (uint32_t i = 0; i < 8; i++)
        cr_assert(tiers_get(c, SPACE + 1, i, CHUNK, NULL), "cache chunk %u lost after write errors", i);
    kvtc_disconnect(c);
    sigterm(&d);

    /* Durable again: what was acknowledged as durable is all there. */
    o.durability = "durable";
    tiers_launch(&d, &o);
    c = itest_connect(&d);
    for (uint32_t i = 0; i < TRIES; i++)
        if (acked[i])
            cr_assert(tiers_get(c, SPACE, i, CHUNK, NULL), "durable chunk %u lost after restart", i);
    kvtc_disconnect(c);
    itest_daemon_stop(&d); /* detaches the mount too */
    mnt[0] = '\0';
}
