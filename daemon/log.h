/* log.h - structured log lines on stderr:
 *   2026-11-27T14:08:03.123Z info ucx accepted session=3 peer=127.0.0.1:5123
 * (timestamp, level, component, message with key=value pairs). The level is
 * process-wide; set it once at start. Lines are written with one write(2)
 * each, so concurrent writers never interleave inside a line. */
#ifndef KVTCD_LOG_H
#define KVTCD_LOG_H

enum kvtcd_log_level {
    KVTCD_LOG_DEBUG = 0,
    KVTCD_LOG_INFO = 1,
    KVTCD_LOG_WARN = 2,
    KVTCD_LOG_ERROR = 3
};

void kvtcd_log_set_level(int level);
int kvtcd_log_get_level(void);
/* "debug", "info", "warn"/"warning", "error" -> level; KVTC_EINVAL else. */
int kvtcd_log_parse_level(const char *s, int *level);
const char *kvtcd_log_level_name(int level);

void kvtcd_log(int level, const char *component, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

#define KVTCD_DEBUG(comp, ...) kvtcd_log(KVTCD_LOG_DEBUG, comp, __VA_ARGS__)
#define KVTCD_INFO(comp, ...) kvtcd_log(KVTCD_LOG_INFO, comp, __VA_ARGS__)
#define KVTCD_WARN(comp, ...) kvtcd_log(KVTCD_LOG_WARN, comp, __VA_ARGS__)
#define KVTCD_ERROR(comp, ...) kvtcd_log(KVTCD_LOG_ERROR, comp, __VA_ARGS__)

#endif
