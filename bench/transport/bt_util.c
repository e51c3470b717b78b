/* Timing, keys, payloads and percentiles for the transport benchmark. */
#include "bt.h"

#include <stdlib.h>
#include <string.h>
#include <time.h>

uint64_t bt_now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static uint64_t splitmix(uint64_t *s)
{
    uint64_t z = (*s += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

void bt_key(uint32_t tag, uint32_t i, uint8_t key[BT_KEY_LEN])
{
    uint64_t s = ((uint64_t)tag << 32) | i;
    for (int w = 0; w < BT_KEY_LEN / 8; w++) {
        uint64_t v = splitmix(&s);
        memcpy(key + 8 * w, &v, 8);
    }
}

void bt_fill(void *buf, size_t len, uint64_t seed)
{
    uint8_t *p = buf;
    uint64_t s = seed;
    size_t i = 0;
    for (; i + 8 <= len; i += 8) {
        uint64_t v = splitmix(&s);
        memcpy(p + i, &v, 8);
    }
    if (i < len) {
        uint64_t v = splitmix(&s);
        memcpy(p + i, &v, len - i);
    }
}

static int cmp_u64(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return (x > y) - (x < y);
}

/* Nearest-rank quantile: the value below which a fraction q of samples lie. */
double bt_quantile(uint64_t *samples, size_t n, double q)
{
    if (n == 0)
        return 0.0;
    qsort(samples, n, sizeof *samples, cmp_u64);
    size_t rank = (size_t)(q * (double)n + 0.999999);
    if (rank < 1)
        rank = 1;
    if (rank > n)
        rank = n;
    return (double)samples[rank - 1];
}

void *bt_buf_alloc(const struct bt_backend *be, void *conn, size_t len)
{
    void *p = NULL;
    if (be->alloc)
        return be->alloc(conn, len, &p) == 0 ? p : NULL;
    return malloc(len);
}

void bt_buf_free(const struct bt_backend *be, void *conn, void *buf)
{
    if (!buf)
        return;
    if (be->release)
        be->release(conn, buf);
    else
        free(buf);
}
