/* kvtc stats: the daemon's counters, human-readable or one JSON object. */
#include <stdio.h>

#include "store.h"

int kvtc_cmd_stats(const struct kvtc_cli_global *g, int argc, char **argv)
{
    struct kvtc_cli_args a;
    int rc = kvtc_cli_scan(g, "stats", argc, argv, NULL, NULL, &a);
    if (rc)
        return rc;
    if (a.help) {
        printf("usage: kvtc [-s HOST:PORT] stats [--json]\n"
               "Print the daemon's counters; --json prints one JSON object.\n");
        return 0;
    }
    if (a.n_pos)
        return kvtc_cli_usage(&a, "takes no arguments");
    kvtc_conn *c = kvtc_cli_connect(g, &a);
    if (!c)
        return 1;
    kvtc_stats s;
    if ((rc = kvtc_stats_get(c, NULL, &s))) {
        kvtc_cli_fail(&a, "stats", rc, kvtc_last_error(c));
        kvtc_disconnect(c);
        return 1;
    }
    kvtc_server_info info;
    kvtc_server_info_get(c, &info);
    kvtc_disconnect(c);
    const struct {
        const char *name;
        uint64_t bit, v;
    } f[] = {
        {"chunks", KVTC_STATS_FIELD_CHUNKS, s.chunks},
        {"bytes_used", KVTC_STATS_FIELD_BYTES_USED, s.bytes_used},
        {"bytes_capacity", KVTC_STATS_FIELD_BYTES_CAPACITY, s.bytes_capacity},
        {"puts", KVTC_STATS_FIELD_PUTS, s.puts},
        {"gets", KVTC_STATS_FIELD_GETS, s.gets},
        {"hits", KVTC_STATS_FIELD_HITS, s.hits},
        {"misses", KVTC_STATS_FIELD_MISSES, s.misses},
        {"evictions", KVTC_STATS_FIELD_EVICTIONS, s.evictions},
        {"rejected_full", KVTC_STATS_FIELD_REJECTED_FULL, s.rejected_full},
        {"sessions", KVTC_STATS_FIELD_SESSIONS, s.sessions},
        {"bytes_in", KVTC_STATS_FIELD_BYTES_IN, s.bytes_in},
        {"bytes_out", KVTC_STATS_FIELD_BYTES_OUT, s.bytes_out},
        {"errors", KVTC_STATS_FIELD_ERRORS, s.errors},
        {"uptime_ms", KVTC_STATS_FIELD_UPTIME_MS, s.uptime_ms},
        {"gpu_bytes_used", KVTC_STATS_FIELD_GPU_BYTES_USED, s.gpu_bytes_used},
        {"gpu_bytes_capacity", KVTC_STATS_FIELD_GPU_BYTES_CAPACITY, s.gpu_bytes_capacity},
        {"disk_bytes_used", KVTC_STATS_FIELD_DISK_BYTES_USED, s.disk_bytes_used},
        {"disk_bytes_capacity", KVTC_STATS_FIELD_DISK_BYTES_CAPACITY, s.disk_bytes_capacity},
        {"disk_live_bytes", KVTC_STATS_FIELD_DISK_LIVE_BYTES, s.disk_live_bytes},
        {"disk_dirty_chunks", KVTC_STATS_FIELD_DISK_DIRTY_CHUNKS, s.disk_dirty_chunks},
        {"promotions", KVTC_STATS_FIELD_PROMOTIONS, s.promotions},
        {"demotions", KVTC_STATS_FIELD_DEMOTIONS, s.demotions},
    };
    int has_durable = (s.field_mask & KVTC_STATS_FIELD_DURABLE) != 0;
    int durable = (s.field_mask & KVTC_STATS_DURABLE) != 0;
    const char *server = kvtc_cli_server(g);
    if (a.json) {
        /* The address and version are ours to print; escape the quote and
         * backslash just in case. */
        printf("{\"server\":\"");
        for (const char *p = server; *p; p++)
            printf(*p == '"' || *p == '\\' ? "\\%c" : "%c", *p);
        printf("\",\"server_version\":\"");
        for (const char *p = info.server_version; *p; p++)
            if ((unsigned char)*p >= 0x20)
                printf(*p == '"' || *p == '\\' ? "\\%c" : "%c", *p);
        printf("\"");
        for (size_t i = 0; i < sizeof f / sizeof f[0]; i++)
            if (s.field_mask & f[i].bit)
                printf(",\"%s\":%llu", f[i].name, (unsigned long long)f[i].v);
        if (has_durable)
            printf(",\"durable\":%s", durable ? "true" : "false");
        printf("}\n");
        return 0;
    }
    printf("%-19s %s (%s, protocol %u.%u)\n", "server", server,
           info.server_version[0] ? info.server_version : "?", info.major, info.minor);
    for (size_t i = 0; i < sizeof f / sizeof f[0]; i++)
        if (s.field_mask & f[i].bit)
            printf("%-19s %llu\n", f[i].name, (unsigned long long)f[i].v);
    if (has_durable)
        printf("%-19s %s\n", "durable", durable ? "yes" : "no");
    return 0;
}
