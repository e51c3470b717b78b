/* Shared declarations of the kvtc CLI's subcommands. */
#ifndef KVTC_CLI_H
#define KVTC_CLI_H

/* Options given before the subcommand. */
struct kvtc_cli_global {
    const char *server; /* -s HOST:PORT, or NULL */
    int json;           /* --json before the command */
};

/* A subcommand: argv[0] is its name. Returns the process exit code:
 * 0 success, 1 failure (one line on stderr), 2 usage error. */
typedef int (*kvtc_cli_fn)(const struct kvtc_cli_global *g, int argc, char **argv);

struct kvtc_cli_cmd {
    const char *name;
    kvtc_cli_fn run;
    const char *help;
};

int kvtc_cmd_codec(const struct kvtc_cli_global *g, int argc, char **argv);
/* Store commands (cmd_put.c, cmd_get.c, ...; helpers in store.{h,c}). */
int kvtc_cmd_put(const struct kvtc_cli_global *g, int argc, char **argv);
int kvtc_cmd_get(const struct kvtc_cli_global *g, int argc, char **argv);
int kvtc_cmd_lookup(const struct kvtc_cli_global *g, int argc, char **argv);
int kvtc_cmd_stats(const struct kvtc_cli_global *g, int argc, char **argv);
int kvtc_cmd_delete(const struct kvtc_cli_global *g, int argc, char **argv);
int kvtc_cmd_pin(const struct kvtc_cli_global *g, int argc, char **argv);
int kvtc_cmd_unpin(const struct kvtc_cli_global *g, int argc, char **argv);
int kvtc_cmd_bench(const struct kvtc_cli_global *g, int argc, char **argv);
/* Codec profiles on the daemon, and `kvtc codec calibrate` under a short
 * name (cmd_profile.c). */
int kvtc_cmd_profile(const struct kvtc_cli_global *g, int argc, char **argv);
int kvtc_cmd_calibrate(const struct kvtc_cli_global *g, int argc, char **argv);
/* kvtc demo (cmd_demo.c; demo_daemon, demo_model, demo_store). */
int kvtc_cmd_demo(const struct kvtc_cli_global *g, int argc, char **argv);

#endif
