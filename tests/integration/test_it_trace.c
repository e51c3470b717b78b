/* libkvtc's KVTC_TRACE=PREFIX (client/trace.c): one CSV line per finished
 * operation, written at disconnect to PREFIX.<pid>.<session>.csv, which
 * bench/transport/trace_ops.py and trace_join.py read. Against a real
 * kvtcd over UCX (no local path): a rendezvous get's line carries when its
 * bulk receive ended, between its reply and its completion; a put's when
 * its send ended. */
#include "itest.h"
#include "test_util.h"

#include <criterion/criterion.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define SPACE 0x54524300u
#define KIND_PUT 2u /* enum kvtc__op_kind (client/internal.h) */
#define KIND_GET 3u

struct rec {
    uint64_t sess, req, sub, rep, done, bulk;
    unsigned kind, local, landed;
};

Test(it_trace, ucx_ops_carry_their_bulk_stamp, .timeout = 60)
{
    struct itest_daemon d;
    itest_setup(ITEST_TLS_TCP);
    itest_daemon_start(&d, "128M", 0, NULL);
    char dir[256];
    snprintf(dir, sizeof dir, "%s/kvtc-trace-XXXXXX", kvtc_test_tmpdir());
    cr_assert(mkdtemp(dir));
    char prefix[300];
    snprintf(prefix, sizeof prefix, "%s/t", dir);
    setenv("KVTC_TRACE", prefix, 1);
    setenv("KVTC_LOCAL", "off", 1);
    kvtc_conn *c = itest_connect(&d);
    unsetenv("KVTC_LOCAL");
    kvtc_server_info info;
    cr_assert_eq(kvtc_server_info_get(c, &info), 0);
    const size_t n = 4u << 20; /* rendezvous both ways */
    uint8_t *src = malloc(n), *dst = malloc(n);
    cr_assert(src && dst);
    itest_fill(src, n, 7);
    kvtc_key k = itest_key(SPACE, 1);
    cr_assert_eq(kvtc_put(c, &k, src, n), 0, "put: %s", kvtc_last_error(c));
    size_t got = 0;
    cr_assert_eq(kvtc_get(c, &k, dst, n, &got), 0, "get: %s", kvtc_last_error(c));
    cr_assert(itest_check(dst, n, 7));
    kvtc_disconnect(c); /* writes the trace */
    unsetenv("KVTC_TRACE");

    char path[400];
    snprintf(path, sizeof path, "%s.%d.%" PRIu64 ".csv", prefix, (int)getpid(), info.session_id);
    FILE *f = fopen(path, "r");
    cr_assert(f, "no trace at %s", path);
    char line[256];
    cr_assert(fgets(line, sizeof line, f));
    cr_expect_str_eq(line, "sess,req,kind,local,sub,rep,done,bulk,landed\n");
    int puts_seen = 0, gets_seen = 0;
    struct rec r;
    while (fscanf(f, "%" SCNu64 ",%" SCNu64 ",%u,%u,%" SCNu64 ",%" SCNu64 ",%" SCNu64 ",%" SCNu64 ",%u",
                  &r.sess, &r.req, &r.kind, &r.local, &r.sub, &r.rep, &r.done, &r.bulk,
                  &r.landed) == 9) {
        cr_expect_eq(r.landed, 0, "landed without rails");
        cr_expect_eq(r.sess, info.session_id);
        cr_expect_eq(r.local, 0);
        cr_expect(r.sub && r.rep >= r.sub && r.done >= r.rep, "stamps out of order");
        if (r.kind == KIND_GET) {
            gets_seen++;
            /* the data came after the reply's header, before completion */
            cr_expect(r.bulk >= r.rep && r.bulk <= r.done, "get bulk %" PRIu64 " not in [%" PRIu64
                      ", %" PRIu64 "]", r.bulk, r.rep, r.done);
        } else if (r.kind == KIND_PUT) {
            puts_seen++;
            cr_expect(r.bulk >= r.sub && r.bulk <= r.done, "put's send end out of order");
        }
    }
    fclose(f);
    cr_expect_eq(puts_seen, 1);
    cr_expect_eq(gets_seen, 1);
    unlink(path);
    rmdir(dir);
    free(src);
    free(dst);
    itest_daemon_stop(&d);
}
