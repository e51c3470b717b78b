/* kvtc - command-line front end. Each subcommand lives in its own cmd_*.c. */
#include <stdio.h>
#include <string.h>

#include "cli.h"

static const struct kvtc_cli_cmd commands[] = {
    {"codec", kvtc_cmd_codec, "calibrate | encode | decode | inspect (files)"},
    {"put", kvtc_cmd_put, "KEY FILE: store a file as one raw chunk"},
    {"get", kvtc_cmd_get, "KEY OUT: fetch a chunk into a file"},
    {"lookup", kvtc_cmd_lookup, "KEY...: count the leading stored keys of a chain"},
    {"stats", kvtc_cmd_stats, "the daemon's counters"},
    {"delete", kvtc_cmd_delete, "KEY...: delete chunks"},
    {"pin", kvtc_cmd_pin, "KEY... [--ttl MS]: pin chunks against eviction"},
    {"unpin", kvtc_cmd_unpin, "KEY...: remove a pin"},
    {"bench", kvtc_cmd_bench, "put/get throughput and latency"},
    {"profile", kvtc_cmd_profile, "upload FILE | list | get ID OUT | delete ID: codec profiles"},
    {"calibrate", kvtc_cmd_calibrate, "[--layout SPEC ...] DUMP... OUT.kvtcp: build a profile"},
    {"demo", kvtc_cmd_demo, "a real model's KV stored compressed and restored (CPU)"},
};

static void usage(FILE *f)
{
    fprintf(f, "usage: kvtc [-s HOST:PORT] [--json] COMMAND [ARGS...]\n"
               "(server: -s, else $KVTC_SERVER, else %s; tenant: $KVTC_TENANT)\n\n"
               "commands:\n", "127.0.0.1:7700");
    for (size_t i = 0; i < sizeof commands / sizeof commands[0]; i++)
        fprintf(f, "  %-10s %s\n", commands[i].name, commands[i].help);
    fprintf(f, "\n'kvtc COMMAND --help' describes a command. kvtc %s\n", KVTC_VERSION);
}

int main(int argc, char **argv)
{
    struct kvtc_cli_global g = {0};
    int i = 1;
    for (; i < argc && argv[i][0] == '-'; i++) {
        if (!strcmp(argv[i], "-s") || !strcmp(argv[i], "--server")) {
            if (++i >= argc) {
                fprintf(stderr, "kvtc: -s needs HOST:PORT\n");
                return 2;
            }
            g.server = argv[i];
        } else if (!strcmp(argv[i], "--json")) {
            g.json = 1;
        } else if (!strcmp(argv[i], "-h") || !strcmp(argv[i], "--help")) {
            usage(stdout);
            return 0;
        } else if (!strcmp(argv[i], "--version")) {
            printf("kvtc %s\n", KVTC_VERSION);
            return 0;
        } else {
            fprintf(stderr, "kvtc: unknown option '%s' (see kvtc --help)\n", argv[i]);
            return 2;
        }
    }
    if (i >= argc) {
        usage(stderr);
        return 2;
    }
    for (size_t c = 0; c < sizeof commands / sizeof commands[0]; c++)
        if (!strcmp(argv[i], commands[c].name))
            return commands[c].run(&g, argc - i, argv + i);
    fprintf(stderr, "kvtc: unknown command '%s' (see kvtc --help)\n", argv[i]);
    return 2;
}
