/* Helpers of the store subcommands. Every failure becomes exactly one line
 * on stderr: scripts and tests rely on that. */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "store.h"

int kvtc_cli_usage(const struct kvtc_cli_args *a, const char *msg)
{
    fprintf(stderr, "kvtc %s: %s (see kvtc %s --help)\n", a->cmd, msg, a->cmd);
    return 2;
}

int kvtc_cli_fail(const struct kvtc_cli_args *a, const char *what, int rc,
                  const char *detail)
{
    const char *why = detail && detail[0] ? detail : rc < 0 ? kvtc_strerror(rc) : strerror(rc);
    /* The daemon's message may carry a newline; keep the promise of one line. */
    char line[512];
    snprintf(line, sizeof line, "%s", why);
    for (char *p = line; *p; p++)
        if (*p == '\n' || *p == '\r')
            *p = ' ';
    fprintf(stderr, "kvtc %s: %s: %s\n", a->cmd, what, line);
    return 1;
}

int kvtc_cli_scan(const struct kvtc_cli_global *g, const char *cmd, int argc,
                  char **argv, kvtc_cli_opt_fn opt, void *ctx,
                  struct kvtc_cli_args *a)
{
    memset(a, 0, sizeof *a);
    a->cmd = cmd;
    a->json = g->json;
    int only_pos = 0;
    for (int i = 1; i < argc; i++) {
        char *s = argv[i];
        if (!only_pos && s[0] == '-' && s[1] != '\0') {
            if (!strcmp(s, "--")) {
                only_pos = 1;
                continue;
            }
            if (!strcmp(s, "--json")) {
                a->json = 1;
                continue;
            }
            if (!strcmp(s, "-h") || !strcmp(s, "--help")) {
                a->help = 1;
                continue;
            }
            int r = opt ? opt(ctx, argc, argv, &i) : 0;
            if (r == 1)
                continue;
            if (r < 0)
                return 2;
            char msg[256];
            snprintf(msg, sizeof msg, "unknown option '%s'", s);
            return kvtc_cli_usage(a, msg);
        }
        if (a->n_pos >= KVTC_CLI_MAX_POS)
            return kvtc_cli_usage(a, "too many arguments");
        a->pos[a->n_pos++] = s;
    }
    return 0;
}

const char *kvtc_cli_server(const struct kvtc_cli_global *g)
{
    if (g->server)
        return g->server;
    const char *env = getenv("KVTC_SERVER");
    return env && env[0] ? env : KVTC_DEFAULT_SERVER;
}

kvtc_conn *kvtc_cli_connect(const struct kvtc_cli_global *g,
                            const struct kvtc_cli_args *a)
{
    const char *server = kvtc_cli_server(g);
    kvtc_conn_params p = {.field_mask = KVTC_CONN_PARAM_FIELD_CLIENT_NAME,
                          .client_name = "kvtc-cli"};
    const char *tenant = getenv("KVTC_TENANT");
    if (tenant && tenant[0]) {
        p.field_mask |= KVTC_CONN_PARAM_FIELD_TENANT;
        p.tenant = tenant;
    }
    kvtc_conn *c = NULL;
    int rc = kvtc_connect(server, &p, &c);
    if (rc) {
        char what[300];
        snprintf(what, sizeof what, "cannot connect to %s", server);
        kvtc_cli_fail(a, what, rc, kvtc_last_error(NULL));
        return NULL;
    }
    return c;
}

int kvtc_cli_key(const struct kvtc_cli_args *a, const char *hex, kvtc_key *out)
{
    int rc = kvtc_key_from_hex(hex, out);
    if (rc) {
        char what[128];
        snprintf(what, sizeof what, "bad key '%.70s'", hex);
        kvtc_cli_fail(a, what, rc, "a key is exactly 64 hex digits");
    }
    return rc;
}

kvtc_key *kvtc_cli_keys(const struct kvtc_cli_args *a)
{
    kvtc_key *keys = calloc(a->n_pos ? a->n_pos : 1, sizeof *keys);
    if (!keys) {
        kvtc_cli_fail(a, "keys", KVTC_ENOMEM, NULL);
        return NULL;
    }
    for (size_t i = 0; i < a->n_pos; i++)
        if (kvtc_cli_key(a, a->pos[i], &keys[i])) {
            free(keys);
            return NULL;
        }
    return keys;
}

int kvtc_cli_size(const char *s, uint64_t *out)
{
    char *end;
    errno = 0;
    unsigned long long v = strtoull(s, &end, 10);
    if (end == s || errno || s[0] == '-')
        return KVTC_EINVAL;
    unsigned shift = 0;
    switch (*end) {
    case '\0': break;
    case 'k': case 'K': shift = 10; end++; break;
    case 'm': case 'M': shift = 20; end++; break;
    case 'g': case 'G': shift = 30; end++; break;
    default: return KVTC_EINVAL;
    }
    if (*end == 'i' && shift)
        end++;
    if ((*end == 'b' || *end == 'B') && shift)
        end++;
    if (*end || v > (UINT64_MAX >> shift))
        return KVTC_EINVAL;
    *out = (uint64_t)v << shift;
    return 0;
}

int kvtc_cli_read_file(const char *path, void **buf, size_t *len)
{
    int fd = strcmp(path, "-") ? open(path, O_RDONLY | O_CLOEXEC) : STDIN_FILENO;
    if (fd < 0)
        return -errno;
    size_t cap = 1 << 20, n = 0;
    struct stat st;
    if (fstat(fd, &st) == 0 && S_ISREG(st.st_mode) && st.st_size > 0)
        cap = (size_t)st.st_size + 1; /* +1: a read of 0 confirms the end */
    char *b = malloc(cap);
    int rc = 0;
    for (;;) {
        if (!b) {
            rc = -ENOMEM;
            break;
        }
        if (n == cap) {
            char *nb = realloc(b, cap * 2);
            if (!nb) {
                rc = -ENOMEM;
                break;
            }
            b = nb;
            cap *= 2;
        }
        ssize_t r = read(fd, b + n, cap - n);
        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0) {
            rc = -errno;
            break;
        }
        if (r == 0)
            break;
        n += (size_t)r;
    }
    if (fd != STDIN_FILENO)
        close(fd);
    if (rc) {
        free(b);
        return rc;
    }
    *buf = b;
    *len = n;
    return 0;
}

static int write_all(int fd, const void *buf, size_t len)
{
    const char *p = buf;
    while (len) {
        ssize_t w = write(fd, p, len);
        if (w < 0 && errno == EINTR)
            continue;
        if (w < 0)
            return -errno;
        p += w;
        len -= (size_t)w;
    }
    return 0;
}

int kvtc_cli_write_file(const char *path, const void *buf, size_t len)
{
    if (!strcmp(path, "-"))
        return write_all(STDOUT_FILENO, buf, len);
    /* A failed get must never leave a truncated OUT behind. */
    size_t n = strlen(path) + 16;
    char *tmp = malloc(n);
    if (!tmp)
        return -ENOMEM;
    snprintf(tmp, n, "%s.tmpXXXXXX", path);
    int fd = mkstemp(tmp);
    if (fd < 0) {
        int e = -errno;
        free(tmp);
        return e;
    }
    int rc = write_all(fd, buf, len);
    if (!rc && fchmod(fd, 0644) != 0)
        rc = -errno;
    if (close(fd) != 0 && !rc)
        rc = -errno;
    if (!rc && rename(tmp, path) != 0)
        rc = -errno;
    if (rc)
        unlink(tmp);
    free(tmp);
    return rc;
}

double kvtc_cli_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

const char *kvtc_cli_tier_name(uint32_t tier)
{
    switch (tier) {
    case KVTC_TIER_GPU: return "gpu";
    case KVTC_TIER_HOST: return "host";
    case KVTC_TIER_DISK: return "disk";
    default: return "none";
    }
}
