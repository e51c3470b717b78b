/* local_trace.c - the local path's per-request timestamps (see
 * local_trace.h). */
#include "local_trace.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kvtc_errors.h"
#include "log.h"

struct kvtcd_ltrace {
    char *path;
    kvtcd_lt_rec *rec;
    uint32_t n, cap;
    uint64_t dropped;
};

int kvtcd_ltrace_open(const char *path, kvtcd_ltrace **out)
{
    *out = NULL;
    if (!path || !*path)
        return 0;
    kvtcd_ltrace *t = calloc(1, sizeof *t);
    if (!t || !(t->path = strdup(path))) {
        free(t);
        return KVTC_ENOMEM;
    }
    /* Grown on demand: a trace of a short run stays small. */
    t->cap = 0;
    *out = t;
    return 0;
}

void kvtcd_ltrace_add(kvtcd_ltrace *t, const kvtcd_lt_rec *r)
{
    if (!t)
        return;
    if (t->n == t->cap) {
        uint32_t cap = t->cap ? t->cap * 2 : 4096;
        kvtcd_lt_rec *nr = cap <= KVTCD_LTRACE_MAX
                               ? realloc(t->rec, (size_t)cap * sizeof *nr)
                               : NULL;
        if (!nr) {
            t->dropped++;
            return;
        }
        t->rec = nr;
        t->cap = cap;
    }
    t->rec[t->n++] = *r;
}

void kvtcd_ltrace_close(kvtcd_ltrace *t)
{
    if (!t)
        return;
    FILE *f = fopen(t->path, "w");
    if (!f) {
        KVTCD_WARN("server", "local trace not written path=%s err=\"%s\"",
                   t->path, strerror(errno));
    } else {
        fprintf(f, "sess,req,put,bytes,where,busy,slept,wake,am,start,queue,"
                   "run0,run1,done,reply\n");
        for (uint32_t i = 0; i < t->n; i++) {
            const kvtcd_lt_rec *r = &t->rec[i];
            fprintf(f, "%llu,%llu,%u,%llu,%u,%u,%u",
                    (unsigned long long)r->sess, (unsigned long long)r->req,
                    r->put, (unsigned long long)r->bytes, r->where, r->busy,
                    r->slept);
            for (int k = 0; k < KVTCD_LT_N; k++)
                fprintf(f, ",%llu", (unsigned long long)r->t[k]);
            fputc('\n', f);
        }
        if (fclose(f) != 0)
            KVTCD_WARN("server", "local trace write failed path=%s",
                       t->path);
        else
            KVTCD_INFO("server", "local trace written path=%s records=%u "
                                 "dropped=%llu",
                       t->path, t->n, (unsigned long long)t->dropped);
    }
    free(t->rec);
    free(t->path);
    free(t);
}
