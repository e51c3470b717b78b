/* kvtcd's command line and INI file: --help/--version, a config file with
 * flags overriding it, and a bad file refused at start. */
#include "itest.h"

#include "test_util.h"

#include <criterion/criterion.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static void write_text(const char *path, const char *text)
{
    FILE *f = fopen(path, "w");
    cr_assert_not_null(f);
    fputs(text, f);
    fclose(f);
}

Test(it_config, help_version_and_bad_flags, .timeout = 30)
{
    itest_setup(ITEST_TLS_SM);
    char *bin = strdup(kvtc_test_build_path("bin/kvtcd"));
    char *out, *err;
    char *help[] = {bin, "--help", NULL};
    cr_assert_eq(itest_run(help, &out, &err), 0, "--help: %s", err);
    cr_expect(strstr(out, "--listen") && strstr(out, "--host-mem"), "--help printed: %s", out);
    free(out);
    free(err);
    char *ver[] = {bin, "--version", NULL};
    cr_assert_eq(itest_run(ver, &out, &err), 0);
    cr_expect(strstr(out, "0.") != NULL, "--version printed: %s", out);
    free(out);
    free(err);
    /* Refused before anything listens; `timeout` bounds a daemon that would not be. */
    char *bad[] = {"/usr/bin/timeout", "10", bin, "--host-mem", "lots", "--listen", "127.0.0.1:0",
                   "--admin", "127.0.0.1:0", NULL};
    int code = itest_run(bad, &out, &err);
    cr_expect(code != 0 && code != 124, "--host-mem lots: exit %d", code);
    cr_expect(err[0] != '\0', "--host-mem lots: no message");
    free(out);
    free(err);
    free(bin);
}

Test(it_config, ini_file_with_flag_overrides, .timeout = 30)
{
    itest_setup(ITEST_TLS_SM);
    char ini[512];
    snprintf(ini, sizeof ini, "%s/kvtc-it-ini-XXXXXX", kvtc_test_tmpdir());
    int fd = mkstemp(ini);
    cr_assert_geq(fd, 0);
    close(fd);
    /* host_mem here is overridden by the --host-mem flag; max_chunk_bytes is not. */
    write_text(ini, "[server]\nlisten = 127.0.0.1:7700\n[store]\nhost_mem = 8M\n"
                    "host_prefault = on\nhost_pin = on\n"
                    "[limits]\nmax_chunk_bytes = 1M\nmax_batch = 16\n[log]\nlevel = warn\n");
    /* --host-prefault off overrides the file: nothing resident ahead of use. */
    const char *extra[] = {"--config", ini, "--host-prefault", "off", NULL};
    struct itest_daemon d;
    itest_daemon_start(&d, "32M", 0, extra);
    kvtc_conn *c = itest_connect(&d);
    kvtc_server_info info;
    cr_assert_eq(kvtc_server_info_get(c, &info), 0);
    cr_expect_eq(info.max_chunk_bytes, 1u << 20, "max_chunk_bytes from the file: %lu",
                 (unsigned long)info.max_chunk_bytes);
    cr_expect_eq(info.max_batch, 16);
    char *body = itest_metrics_body(&d);
    double resident = -1, locked = -1;
    cr_expect_eq(itest_metric(body, "kvtc_host_resident_bytes", &resident), 0);
    cr_expect_eq(itest_metric(body, "kvtc_host_locked_bytes", &locked), 0);
    cr_expect_eq(resident, 0, "--host-prefault off: %.0f bytes resident", resident);
    cr_expect_eq(locked, 0);
    free(body);
    kvtc_stats s = itest_stats(c);
    cr_expect_eq(s.bytes_capacity, 32u << 20, "--host-mem 32M should override host_mem = 8M: %lu",
                 (unsigned long)s.bytes_capacity);
    /* The file's limits are enforced. */
    uint8_t *buf = calloc(1, (2u << 20));
    kvtc_key k = itest_key(0xc0f16000u, 1);
    cr_expect_eq(kvtc_put(c, &k, buf, 2u << 20), KVTC_ENOSPC);
    cr_expect_eq(kvtc_put(c, &k, buf, 1u << 20), 0);
    free(buf);
    kvtc_disconnect(c);
    itest_daemon_stop(&d);

    /* An unknown key is an error, not a silent default. */
    write_text(ini, "[store]\nhost_mem = 8M\nhots_mem = 9M\n");
    char *bin = strdup(kvtc_test_build_path("bin/kvtcd"));
    char *bad[] = {"/usr/bin/timeout", "10", bin, "--config", ini, "--listen", "127.0.0.1:0",
                   "--admin", "127.0.0.1:0", NULL};
    char *out, *err;
    int code = itest_run(bad, &out, &err);
    cr_expect(code != 0 && code != 124, "config with an unknown key: exit %d", code);
    cr_expect(strstr(err, "hots_mem") != NULL, "the error should name the bad key: %s", err);
    free(out);
    free(err);
    free(bin);
    unlink(ini);
}
