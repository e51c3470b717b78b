/* Damaged segment files: bytes flipped in record headers and payloads (and
 * in the .sum files) while the daemon is down. After the restart a damaged
 * chunk is a miss, never wrong bytes; the corrupt metric counts it; every
 * other chunk is served byte-exact, also after one more restart.
 *
 * The test finds records the way an operator with a hex editor would: a
 * payload by its first bytes (every chunk's content is unique), its header
 * by the key bytes just before it. */
#include "test_it_tiers.h"

#include <criterion/criterion.h>
#include <dirent.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#define SPACE 0x434f5200u
#define N 64
#define PROBE 64            /* payload bytes searched for */
#define HEADER_MAX 4096     /* a header lies within this before its payload */

static size_t csize(uint32_t i)
{
    /* Large enough that the first PROBE bytes are unique; odd lengths. */
    return (200u << 10) + 977u * i + (i & 1);
}

struct where {
    char file[512];
    long payload;   /* offset of the payload in file, -1: not found */
    long key;       /* offset of the key bytes of its header */
};

static uint8_t *read_all(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    cr_assert_not_null(f, "open %s", path);
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    uint8_t *b = malloc(n > 0 ? (size_t)n : 1);
    cr_assert_not_null(b);
    cr_assert_eq(fread(b, 1, (size_t)n, f), (size_t)n);
    fclose(f);
    *len = (size_t)n;
    return b;
}

static void flip(const char *path, long off, uint8_t mask)
{
    int fd = open(path, O_RDWR);
    cr_assert_geq(fd, 0, "open %s", path);
    uint8_t b;
    cr_assert_eq(pread(fd, &b, 1, off), 1);
    b ^= mask;
    cr_assert_eq(pwrite(fd, &b, 1, off), 1);
    close(fd);
}

/* Segment (.kvs) and summary (.sum) files of dir. */
static int list_files(const char *dir, const char *suffix, char names[][512], int max)
{
    DIR *dp = opendir(dir);
    struct dirent *e;
    int n = 0;
    cr_assert_not_null(dp, "no disk dir %s", dir);
    while ((e = readdir(dp)) && n < max) {
        size_t l = strlen(e->d_name), sl = strlen(suffix);
        if (l > sl && strcmp(e->d_name + l - sl, suffix) == 0)
            snprintf(names[n++], 512, "%s/%s", dir, e->d_name);
    }
    closedir(dp);
    return n;
}

static void locate(const char *dir, struct where *w)
{
    char segs[64][512];
    int ns = list_files(dir, ".kvs", segs, 64);
    cr_assert_gt(ns, 0, "no segment files in %s", dir);
    for (uint32_t i = 0; i < N; i++)
        w[i].payload = w[i].key = -1;
    for (int s = 0; s < ns; s++) {
        size_t len;
        uint8_t *b = read_all(segs[s], &len);
        for (uint32_t i = 0; i < N; i++) {
            uint8_t probe[PROBE];
            itest_fill(probe, PROBE, tiers_seed(SPACE, i));
            uint8_t *p = memmem(b, len, probe, PROBE);
            if (!p)
                continue;
            kvtc_key k = tiers_key(SPACE, i);
            long po = p - b, from = po > HEADER_MAX ? po - HEADER_MAX : 0, ko = -1;
            for (long o = po - KVTC_KEY_BYTES; o >= from; o--)
                if (memcmp(b + o, k.bytes, KVTC_KEY_BYTES) == 0) {
                    ko = o;
                    break;
                }
            memcpy(w[i].file, segs[s], sizeof w[i].file); /* both 512 */
            w[i].payload = po;
            w[i].key = ko;
        }
        free(b);
    }
}

static void sigterm(struct itest_daemon *d)
{
    int st = itest_daemon_signal_wait(d, SIGTERM, 15000);
    cr_assert(st != -1 && WIFEXITED(st) && WEXITSTATUS(st) == 0, "SIGTERM: status %d\n%s", st,
              itest_log_tail(d));
}

Test(it_tiers_corruption, flipped_bytes_are_misses, .timeout = 120)
{
    struct itest_daemon d;
    /* 64 MiB of disk: 8 MiB segments, so some are sealed (and get .sum). */
    struct tiers_opts o = {.durability = "durable", .disk_size = "64M", .host_mem = "64M"};
    tiers_setup(ITEST_TLS_TCP);
    unsigned seed = tiers_rand_seed("corruption"), rs = seed;
    tiers_start(&d, &o);
    kvtc_conn *c = itest_connect(&d);
    for (uint32_t i = 0; i < N; i++) {
        int rc = tiers_put(c, SPACE, i, csize(i), NULL);
        cr_assert_eq(rc, 0, "put %u: %s (%s)", i, kvtc_strerror(rc), kvtc_last_error(c));
    }
    kvtc_disconnect(c);
    sigterm(&d);

    char dir[320];
    snprintf(dir, sizeof dir, "%s", tiers_disk_dir(&d));
    struct where w[N];
    locate(dir, w);
    for (uint32_t i = 0; i < N; i++) {
        cr_assert_geq(w[i].payload, 0, "chunk %u: payload not found in any segment of %s", i, dir);
        cr_assert_geq(w[i].key, 0, "chunk %u: its key is not in the %d bytes before its payload",
                      i, HEADER_MAX);
    }

    /* A quarter of the chunks, alternately in the header (the key: covered
     * by the header checksum) and at a random byte of the payload. */
    int victim[N] = {0}, n_victims = 0;
    for (uint32_t i = 0; i < N; i++) {
        if (rand_r(&rs) % 4)
            continue;
        uint8_t mask = (uint8_t)(1u << (rand_r(&rs) % 8));
        long off = (n_victims & 1) ? w[i].key + (long)(rand_r(&rs) % KVTC_KEY_BYTES)
                                   : w[i].payload + (long)(rand_r(&rs) % csize(i));
        flip(w[i].file, off, mask);
        victim[i] = (n_victims & 1) ? 'h' : 'p';
        n_victims++;
    }
    if (n_victims < 2) { /* the dice were kind: damage two anyway */
        flip(w[0].file, w[0].payload + (long)(csize(0) / 2), 0x10);
        flip(w[1].file, w[1].key + 3, 0x01);
        victim[0] = victim[0] ? victim[0] : 'p';
        victim[1] = victim[1] ? victim[1] : 'h';
        n_victims = 0;
        for (uint32_t i = 0; i < N; i++)
            n_victims += victim[i] != 0;
    }
    /* Summaries: a damaged .sum must fall back to scanning, losing nothing. */
    char sums[64][512];
    int n_sums = list_files(dir, ".sum", sums, 64);
    /* Both recovery paths: sealed segments (with .sum) and the open one. */
    cr_assert_geq(n_sums, 1, "no sealed segment (.sum) in %s after ~15 MiB into a 64 MiB disk tier", dir);
    for (int s = 0; s < n_sums; s++) {
        struct stat st;
        cr_assert_eq(stat(sums[s], &st), 0);
        if (st.st_size > 0)
            flip(sums[s], (long)(rand_r(&rs) % (unsigned)st.st_size), 0x04);
    }

    for (int round = 0; round < 2; round++) {
        tiers_launch(&d, &o);
        c = itest_connect(&d);
        for (uint32_t i = 0; i < N; i++) {
            int got = tiers_get(c, SPACE, i, csize(i), NULL);
            if (victim[i])
                cr_assert(!got, "chunk %u with a flipped %s byte was served (KVTC_TEST_SEED=%u)", i,
                          victim[i] == 'h' ? "header" : "payload", seed);
            else
                cr_assert(got, "undamaged chunk %u lost (restart %d, %d .sum files damaged, KVTC_TEST_SEED=%u)\n%s",
                          i, round + 1, n_sums, seed, itest_log_tail(&d));
        }
        cr_log_info("corruption: %d of %d chunks damaged, %d .sum files damaged", n_victims, N, n_sums);
        if (round == 0) {
            /* Payload damage shows on every read. A damaged header may
             * pass for a torn tail (the last record of the open segment)
             * and be dropped without counting as corrupt. */
            int n_payload = 0;
            for (uint32_t i = 0; i < N; i++)
                n_payload += victim[i] == 'p';
            double corrupt = tiers_metric_sum(&d, TIERS_M_DISK_CORRUPT);
            cr_assert(corrupt >= n_payload && corrupt >= 1,
                      "%d damaged records (%d payloads), corrupt metric %.0f", n_victims, n_payload,
                      corrupt);
        }
        kvtc_disconnect(c);
        if (round == 0)
            sigterm(&d);
    }
    itest_daemon_stop(&d);
}
