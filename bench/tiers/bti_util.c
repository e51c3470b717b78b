/* Clock and scratch-directory helpers of kvtc-bench-tiers. */
#include "bti.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "kvtc_errors.h"

double bti_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

int bti_mkdtemp(const char *parent, const char *name, char path[512])
{
    snprintf(path, 512, "%s/%s-XXXXXX", parent, name);
    if (!mkdtemp(path)) {
        fprintf(stderr, "bench-tiers: mkdtemp %s: %s\n", path, strerror(errno));
        return KVTC_EIO;
    }
    return 0;
}

/* Apply fn to every regular file of dir. */
static void each_file(const char *dir, void (*fn)(const char *path))
{
    DIR *d = opendir(dir);
    struct dirent *e;
    char p[1024];
    if (!d)
        return;
    while ((e = readdir(d))) {
        if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, ".."))
            continue;
        snprintf(p, sizeof p, "%s/%s", dir, e->d_name);
        fn(p);
    }
    closedir(d);
}

static void unlink_one(const char *p)
{
    unlink(p);
}

static void uncache_one(const char *p)
{
    int fd = open(p, O_RDONLY);
    if (fd < 0)
        return;
    posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED);
    close(fd);
}

void bti_rmdir(const char *dir)
{
    each_file(dir, unlink_one);
    rmdir(dir);
}

void bti_uncache(const char *dir)
{
    sync();
    each_file(dir, uncache_one);
}
