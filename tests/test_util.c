#include "test_util.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static const char *join(const char *env, const char *fallback, const char *rel)
{
    static __thread char buf[4096];
    const char *base = getenv(env);
    if (!base || !*base)
        base = fallback;
    snprintf(buf, sizeof buf, "%s/%s", base, rel);
    return buf;
}

const char *kvtc_test_shared_path(const char *rel)
{
    const char *p = join("KVTC_SHARED", "../shared", rel);
    return access(p, R_OK) == 0 ? p : NULL;
}

const char *kvtc_test_build_path(const char *rel)
{
    return join("KVTC_BUILD", "build", rel);
}

const char *kvtc_test_tmpdir(void)
{
    const char *t = getenv("TMPDIR");
    return t && *t ? t : "/tmp";
}

char *kvtc_test_write_temp(const char *text)
{
    static __thread char path[4096];
    snprintf(path, sizeof path, "%s/kvtc-test-XXXXXX", kvtc_test_tmpdir());
    int fd = mkstemp(path);
    if (fd < 0)
        return NULL;
    size_t n = strlen(text);
    int ok = write(fd, text, n) == (ssize_t)n;
    close(fd);
    if (!ok) {
        unlink(path);
        return NULL;
    }
    return path;
}

void *kvtc_test_read_file(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return NULL;
    char *buf = NULL;
    if (fseek(f, 0, SEEK_END) == 0) {
        long n = ftell(f);
        if (n >= 0 && fseek(f, 0, SEEK_SET) == 0) {
            buf = malloc((size_t)n + 1);
            if (buf && fread(buf, 1, (size_t)n, f) != (size_t)n) {
                free(buf);
                buf = NULL;
            } else if (buf) {
                *len = (size_t)n;
            }
        }
    }
    fclose(f);
    return buf;
}
