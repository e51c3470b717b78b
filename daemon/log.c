/* log.c - structured log lines (see log.h). */
#include "log.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>
#include <time.h>
#include <unistd.h>

#include "kvtc_errors.h"

static int g_level = KVTCD_LOG_INFO;

void kvtcd_log_set_level(int level) { g_level = level; }
int kvtcd_log_get_level(void) { return g_level; }

int kvtcd_log_parse_level(const char *s, int *level)
{
    static const struct { const char *name; int level; } names[] = {
        {"debug", KVTCD_LOG_DEBUG}, {"info", KVTCD_LOG_INFO},
        {"warn", KVTCD_LOG_WARN},   {"warning", KVTCD_LOG_WARN},
        {"error", KVTCD_LOG_ERROR}};
    if (!s)
        return KVTC_EINVAL;
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++) {
        if (strcasecmp(s, names[i].name) == 0) {
            *level = names[i].level;
            return 0;
        }
    }
    return KVTC_EINVAL;
}

const char *kvtcd_log_level_name(int level)
{
    switch (level) {
    case KVTCD_LOG_DEBUG: return "debug";
    case KVTCD_LOG_INFO: return "info";
    case KVTCD_LOG_WARN: return "warn";
    default: return "error";
    }
}

void kvtcd_log(int level, const char *component, const char *fmt, ...)
{
    if (level < g_level)
        return;
    char line[2048];
    struct timespec ts;
    struct tm tm;
    clock_gettime(CLOCK_REALTIME, &ts);
    gmtime_r(&ts.tv_sec, &tm);
    int n = snprintf(line, sizeof line,
                     "%04d-%02d-%02dT%02d:%02d:%02d.%03ldZ %s %s ",
                     tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday, tm.tm_hour,
                     tm.tm_min, tm.tm_sec, ts.tv_nsec / 1000000L,
                     kvtcd_log_level_name(level), component);
    if (n < 0)
        return;
    va_list ap;
    va_start(ap, fmt);
    int m = vsnprintf(line + n, sizeof line - (size_t)n - 1, fmt, ap);
    va_end(ap);
    if (m < 0)
        return;
    size_t len = (size_t)n + (size_t)m;
    if (len > sizeof line - 2)
        len = sizeof line - 2; /* truncated: keep the newline */
    line[len++] = '\n';
    ssize_t w = write(STDERR_FILENO, line, len);
    (void)w;
}
