/* The fio reference of kvtc-bench-tiers: sequential O_DIRECT write then
 * read of the same file, what the disk tier's numbers are held against. */
#include "bti.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* bw_bytes of the job's "read" or "write" section in fio's JSON output. */
static int fio_bw(const char *json, const char *section, double *bytes_s)
{
    char pat[32];
    snprintf(pat, sizeof pat, "\"%s\" : {", section);
    const char *p = strstr(json, "\"jobs\"");
    p = p ? strstr(p, pat) : NULL;
    p = p ? strstr(p, "\"bw_bytes\" : ") : NULL;
    if (!p)
        return -1;
    *bytes_s = strtod(p + 13, NULL);
    return *bytes_s > 0 ? 0 : -1;
}

/* Run one fio job; out gets its stdout (malloc'd). */
static int run_fio(const char *dir, const char *rw, uint64_t size, size_t bs, unsigned depth,
                   const char *engine, char **out)
{
    char cmd[1024];
    /* dir is ours (mkdtemp under the bench's parent); refuse quotes. */
    if (strchr(dir, '\''))
        return -1;
    snprintf(cmd, sizeof cmd,
             "fio --name=w --directory='%s' --rw=%s --bs=%zu --size=%llu --direct=1 "
             "--ioengine=%s --iodepth=%u --output-format=json 2>/dev/null",
             dir, rw, bs, (unsigned long long)size, engine, depth);
    FILE *f = popen(cmd, "r");
    if (!f)
        return -1;
    size_t cap = 1 << 16, len = 0, r;
    char *buf = malloc(cap + 1);
    while (buf && (r = fread(buf + len, 1, cap - len, f)) > 0) {
        len += r;
        if (len == cap) {
            char *nb = realloc(buf, 2 * cap + 1);
            if (!nb)
                break;
            buf = nb;
            cap *= 2;
        }
    }
    int st = pclose(f);
    if (!buf)
        return -1;
    buf[len] = '\0';
    *out = buf;
    return st == 0 ? 0 : -1;
}

int bti_fio(const char *parent, uint64_t size, size_t bs, unsigned depth, double *write_mb_s,
            double *read_mb_s, char engine[16], char msg[256])
{
    static const char *engines[] = {"io_uring", "libaio"};
    char dir[512];
    int rc = -1;
    msg[0] = '\0';
    if (system("command -v fio >/dev/null 2>&1") != 0) {
        snprintf(msg, 256, "fio not installed (deploy/install-deps.sh lists it)");
        return -1;
    }
    if (bti_mkdtemp(parent, "fio", dir))
        return -1;
    for (size_t e = 0; e < sizeof engines / sizeof engines[0] && rc; e++) {
        char *out = NULL;
        double w = 0, r = 0;
        if (run_fio(dir, "write", size, bs, depth, engines[e], &out) || fio_bw(out, "write", &w)) {
            snprintf(msg, 256, "fio --ioengine=%s write failed", engines[e]);
            free(out);
            continue;
        }
        free(out);
        out = NULL;
        if (run_fio(dir, "read", size, bs, depth, engines[e], &out) || fio_bw(out, "read", &r)) {
            snprintf(msg, 256, "fio --ioengine=%s read failed", engines[e]);
            free(out);
            continue;
        }
        free(out);
        *write_mb_s = w / 1e6;
        *read_mb_s = r / 1e6;
        snprintf(engine, 16, "%s", engines[e]);
        msg[0] = '\0';
        rc = 0;
    }
    bti_rmdir(dir);
    return rc;
}
