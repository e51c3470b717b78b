/* The kvtc CLI's command-line contract (issue 4), which other tools rely on,
 * and kvtc bench's round trips:
 *   kvtc -s HOST:PORT put KEY FILE | get KEY OUT | lookup KEY... | stats --json
 * exit 0 on success; on any failure (a miss included) a non-zero exit and
 * one line on stderr. */
#include "itest.h"

#include "test_util.h"

#include <criterion/criterion.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

struct cli {
    const char *bin;
    const char *server;
    char *out, *err;
    int code;
};

static int run_cli(struct cli *c, const char *a1, const char *a2, const char *a3, const char *a4,
                   const char *a5)
{
    free(c->out);
    free(c->err);
    char *argv[10] = {(char *)c->bin, "-s", (char *)c->server, (char *)a1, (char *)a2,
                      (char *)a3, (char *)a4, (char *)a5, NULL};
    c->code = itest_run(argv, &c->out, &c->err);
    cr_expect(!strstr(c->err, "Sanitizer") && !strstr(c->err, "runtime error:"), "kvtc %s: sanitizer report:\n%s",
              a1, c->err);
    return c->code;
}

static int lines(const char *s)
{
    int n = 0;
    for (; *s; s++)
        n += *s == '\n';
    return n;
}

/* A failure: exit 1 (not a usage error, not a crash) and exactly one
 * non-empty line on stderr. */
static void expect_failure(const struct cli *c, const char *what)
{
    cr_expect_eq(c->code, 1, "%s: exit %d, want 1 (stderr: %s)", what, c->code, c->err);
    cr_expect(c->err[0] && c->err[0] != '\n' && lines(c->err) == 1,
              "%s: stderr should be one line, got \"%s\"", what, c->err);
}

/* The integer after "name": in a JSON text; -1 when absent. */
static long long json_int(const char *s, const char *name)
{
    char pat[64];
    snprintf(pat, sizeof pat, "\"%s\"", name);
    const char *p = strstr(s, pat);
    if (!p)
        return -1;
    p += strlen(pat);
    while (*p == ' ' || *p == ':')
        p++;
    return strtoll(p, NULL, 10);
}

/* One JSON object on one line: "{...}\n", braces balanced outside strings. */
static int one_json_object(const char *s)
{
    size_t n = strlen(s);
    if (n < 3 || s[0] != '{' || s[n - 1] != '\n' || s[n - 2] != '}' || lines(s) != 1)
        return 0;
    int depth = 0, in_str = 0;
    for (size_t i = 0; i + 1 < n; i++) {
        char ch = s[i];
        if (in_str) {
            if (ch == '\\')
                i++;
            else if (ch == '"')
                in_str = 0;
        } else if (ch == '"') {
            in_str = 1;
        } else if (ch == '{' || ch == '[') {
            depth++;
        } else if (ch == '}' || ch == ']') {
            if (--depth < 0 || (depth == 0 && i != n - 2))
                return 0;
        }
    }
    return depth == 0 && !in_str;
}

static void write_file(const char *path, const void *buf, size_t n)
{
    FILE *f = fopen(path, "wb");
    cr_assert_not_null(f);
    cr_assert_eq(fwrite(buf, 1, n, f), n);
    fclose(f);
}

Test(it_cli, put_get_lookup_stats_contract, .timeout = 90)
{
    struct itest_daemon d;
    itest_setup(ITEST_TLS_SM);
    const char *bin = kvtc_test_build_path("bin/kvtc");
    if (access(bin, X_OK) != 0)
        cr_skip_test("kvtc CLI not built (%s missing)", bin);
    struct cli c = {.bin = strdup(bin)};
    itest_daemon_start(&d, "64M", 0, NULL);
    c.server = d.addr;

    char k1[65], k2[65], k3[65], in[300], out[300];
    kvtc_key key1 = itest_key(0xc1100000u, 1), key2 = itest_key(0xc1100000u, 2),
             key3 = itest_key(0xc1100000u, 3);
    kvtc_key_to_hex(&key1, k1);
    kvtc_key_to_hex(&key2, k2);
    kvtc_key_to_hex(&key3, k3);
    /* Upper-case hex is a valid key too. */
    for (char *p = k2; *p; p++)
        if (*p >= 'a' && *p <= 'f')
            *p = (char)(*p - 'a' + 'A');
    snprintf(in, sizeof in, "%s/in.bin", d.dir);
    snprintf(out, sizeof out, "%s/out.bin", d.dir);
    size_t n = (3u << 20) + 123;
    uint8_t *buf = malloc(n);
    itest_fill(buf, n, 31);
    write_file(in, buf, n);

    cr_assert_eq(run_cli(&c, "put", k1, in, NULL, NULL), 0, "put: exit %d: %s", c.code, c.err);
    cr_assert_eq(run_cli(&c, "put", k2, in, NULL, NULL), 0, "put (upper-case key): exit %d: %s", c.code, c.err);
    cr_assert_eq(run_cli(&c, "get", k1, out, NULL, NULL), 0, "get: exit %d: %s", c.code, c.err);
    size_t got_len = 0;
    uint8_t *got = kvtc_test_read_file(out, &got_len);
    cr_assert_not_null(got);
    cr_assert_eq(got_len, n, "get wrote %zu bytes, put %zu", got_len, n);
    cr_assert(memcmp(got, buf, n) == 0, "get wrote different bytes");
    free(got);

    /* The library sees what the CLI stored, under the same key. */
    kvtc_conn *conn = itest_connect(&d);
    size_t sz = 0;
    cr_assert_eq(kvtc_get(conn, &key2, buf, n, &sz), 0);
    cr_assert(sz == n && itest_check(buf, n, 31));

    /* lookup prints the number of leading keys present. */
    cr_assert_eq(run_cli(&c, "lookup", k1, k2, NULL, NULL), 0, "lookup: exit %d: %s", c.code, c.err);
    cr_expect_eq(atoi(c.out), 2, "lookup of 2 stored keys printed \"%s\"", c.out);
    run_cli(&c, "lookup", k1, k3, k2, NULL);
    cr_expect_eq(atoi(c.out), 1, "lookup k1 k3 k2 printed \"%s\" (exit %d)", c.out, c.code);
    /* no leading hit at all is a miss: the count, and exit 1 */
    cr_expect_eq(run_cli(&c, "lookup", k3, k1, NULL, NULL), 1, "lookup miss: exit %d", c.code);
    cr_expect_eq(atoi(c.out), 0, "lookup miss printed \"%s\"", c.out);

    /* stats --json: one JSON object with the counters. */
    cr_assert_eq(run_cli(&c, "stats", "--json", NULL, NULL, NULL), 0, "stats --json: exit %d: %s", c.code, c.err);
    cr_expect(one_json_object(c.out), "stats --json printed \"%s\"", c.out);
    cr_expect_eq(json_int(c.out, "chunks"), 2, "stats --json: %s", c.out);
    cr_expect_geq(json_int(c.out, "bytes_used"), 2 * (long long)n, "stats --json: %s", c.out);
    /* The lower tiers (protocol 1.2): none here, so capacities 0, not durable. */
    cr_expect_eq(json_int(c.out, "gpu_bytes_capacity"), 0, "stats --json: %s", c.out);
    cr_expect_eq(json_int(c.out, "disk_bytes_capacity"), 0, "stats --json: %s", c.out);
    cr_expect_eq(json_int(c.out, "disk_dirty_chunks"), 0, "stats --json: %s", c.out);
    cr_expect_eq(json_int(c.out, "promotions"), 0, "stats --json: %s", c.out);
    cr_expect_eq(json_int(c.out, "demotions"), 0, "stats --json: %s", c.out);
    cr_expect(strstr(c.out, "\"durable\":false") != NULL, "stats --json: %s", c.out);
    cr_expect_eq(run_cli(&c, "stats", NULL, NULL, NULL, NULL), 0, "stats: exit %d: %s", c.code, c.err);
    cr_expect(c.out[0] && !one_json_object(c.out), "human stats output expected: \"%s\"", c.out);
    cr_expect(strstr(c.out, "disk_bytes_capacity") && strstr(c.out, "durable "),
              "human stats without the tier lines: \"%s\"", c.out);
    /* --json for put and get too: one object naming the bytes moved. */
    cr_expect_eq(run_cli(&c, "put", "--json", k1, in, NULL), 0, "put --json: exit %d: %s", c.code, c.err);
    cr_expect(one_json_object(c.out) && json_int(c.out, "bytes") == (long long)n, "put --json printed \"%s\"", c.out);
    cr_expect_eq(run_cli(&c, "get", "--json", k1, out, NULL), 0, "get --json: exit %d: %s", c.code, c.err);
    cr_expect(one_json_object(c.out) && json_int(c.out, "bytes") == (long long)n, "get --json printed \"%s\"", c.out);
    /* --json for lookup too. */
    cr_expect_eq(run_cli(&c, "lookup", "--json", k1, k2, k3), 0, "lookup --json: exit %d: %s", c.code, c.err);
    cr_expect(one_json_object(c.out) && json_int(c.out, "hits") == 2, "lookup --json printed \"%s\"", c.out);

    /* Failures: a miss, a bad key, a missing file, an unreachable daemon. */
    run_cli(&c, "get", k3, out, NULL, NULL);
    expect_failure(&c, "get of a missing key");
    run_cli(&c, "get", "abc", out, NULL, NULL);
    cr_expect_neq(c.code, 0, "get with a 3-digit key succeeded");
    cr_expect_eq(lines(c.err), 1, "bad key: stderr \"%s\"", c.err);
    k3[63] = 'g';
    run_cli(&c, "put", k3, in, NULL, NULL);
    cr_expect_neq(c.code, 0, "put with a non-hex key succeeded");
    k3[63] = '0';
    run_cli(&c, "put", k3, "/nonexistent/file", NULL, NULL);
    expect_failure(&c, "put of a missing file");
    run_cli(&c, "put", k3, in, "extra", NULL);
    cr_expect_neq(c.code, 0, "put with an extra argument succeeded");

    kvtc_stats s = itest_stats(conn);
    cr_expect_eq(s.chunks, 2, "failed CLI calls stored something: %lu chunks", (unsigned long)s.chunks);
    kvtc_disconnect(conn);
    itest_daemon_stop(&d);

    /* The daemon is gone now: connection failures are failures too. */
    run_cli(&c, "stats", "--json", NULL, NULL, NULL);
    expect_failure(&c, "stats with no daemon");
    free(buf);
    free(c.out);
    free(c.err);
    free((char *)c.bin);
}

/* kvtc bench round trips (--verify) with ordinary buffers and with buffers
 * shared with kvtcd (--shared); --shared fails cleanly, one line, where
 * kvtcd cannot share them (the local path switched off). */
Test(it_cli, bench_verifies_with_and_without_shared_buffers, .timeout = 90)
{
    struct itest_daemon d;
    itest_setup(ITEST_TLS_TCP);
    const char *bin = kvtc_test_build_path("bin/kvtc");
    if (access(bin, X_OK) != 0)
        cr_skip_test("kvtc CLI not built (%s missing)", bin);
    struct cli c = {.bin = strdup(bin)};
    itest_daemon_start(&d, "256M", 0, NULL);
    c.server = d.addr;
    run_cli(&c, "bench", "--size", "256K", "--verify", NULL);
    cr_expect_eq(c.code, 0, "bench: exit %d: %s", c.code, c.err);
    double before = itest_daemon_metric(&d, "kvtc_local_copies_shared_total");
    run_cli(&c, "bench", "--size", "256K", "--verify", "--shared");
    cr_expect_eq(c.code, 0, "bench --shared: exit %d: %s", c.code, c.err);
    cr_expect(strstr(c.out, "get") != NULL, "bench --shared printed \"%s\"", c.out);
    /* 256 puts and 256 gets of the default count went the shared way */
    cr_expect_geq(itest_daemon_metric(&d, "kvtc_local_copies_shared_total") - before, 512.0);
    setenv("KVTC_LOCAL", "off", 1);
    run_cli(&c, "bench", "--size", "256K", "--shared", NULL);
    unsetenv("KVTC_LOCAL");
    expect_failure(&c, "bench --shared without the local path");
    itest_daemon_stop(&d);
    free(c.out);
    free(c.err);
    free((char *)c.bin);
}
