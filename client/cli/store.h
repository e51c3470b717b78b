/* store.h - what the store subcommands (put, get, lookup, stats, delete,
 * pin, bench) share: argument scanning, connecting, one-line errors. */
#ifndef KVTC_CLI_STORE_H
#define KVTC_CLI_STORE_H

#include <stddef.h>
#include <stdint.h>

#include "cli.h"
#include "kvtc.h"

#define KVTC_CLI_MAX_POS 4096

/* Parsed arguments of one subcommand. */
struct kvtc_cli_args {
    const char *cmd;  /* "put", ... for messages */
    int json;
    int help;
    size_t n_pos;
    char *pos[KVTC_CLI_MAX_POS];
};

/* A command-specific option: return 1 if it consumed argv[*i] (and maybe
 * more, advancing *i), 0 if unknown, -1 on a bad value (message printed). */
typedef int (*kvtc_cli_opt_fn)(void *ctx, int argc, char **argv, int *i);

/* Scan argv[1..]: --json, -h/--help, "--" and the command's own options
 * anywhere; the rest are positionals. Returns 0, or 2 after printing a
 * usage error. */
int kvtc_cli_scan(const struct kvtc_cli_global *g, const char *cmd, int argc,
                  char **argv, kvtc_cli_opt_fn opt, void *ctx,
                  struct kvtc_cli_args *a);

/* One line "kvtc CMD: what: reason" on stderr; returns 1 (the exit code). */
int kvtc_cli_fail(const struct kvtc_cli_args *a, const char *what, int rc,
                  const char *detail);
/* Usage error: one line, returns 2. */
int kvtc_cli_usage(const struct kvtc_cli_args *a, const char *msg);

/* Connect to -s / $KVTC_SERVER / the default. On failure prints the one
 * line and returns NULL. */
kvtc_conn *kvtc_cli_connect(const struct kvtc_cli_global *g,
                            const struct kvtc_cli_args *a);
/* The server address that kvtc_cli_connect uses. */
const char *kvtc_cli_server(const struct kvtc_cli_global *g);

/* Parse a 64-hex-digit key; prints the error line on failure. */
int kvtc_cli_key(const struct kvtc_cli_args *a, const char *hex, kvtc_key *out);
/* Every positional argument parsed as a key, in a malloc'ed array the
 * caller frees; NULL (error line printed) on a bad key or no memory. */
kvtc_key *kvtc_cli_keys(const struct kvtc_cli_args *a);

/* "4096", "256K", "4M", "1G" (binary units) -> bytes. 0 or KVTC_EINVAL. */
int kvtc_cli_size(const char *s, uint64_t *out);

/* Whole file (or stdin for "-") into a malloc'd buffer. 0 or -errno. */
int kvtc_cli_read_file(const char *path, void **buf, size_t *len);
/* Write atomically (temp file + rename; stdout for "-"). 0 or -errno. */
int kvtc_cli_write_file(const char *path, const void *buf, size_t len);

/* Seconds on a monotonic clock. */
double kvtc_cli_now(void);
/* Name of a tier for output. */
const char *kvtc_cli_tier_name(uint32_t tier);

#endif
