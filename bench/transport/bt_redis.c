/* Redis through hiredis: the store users pick today, measured with the same
 * workload as kvtcd. Values are binary-safe SET/GET of the whole chunk. */
#include "bt.h"

#include "kvtc_errors.h"

#include <hiredis/hiredis.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int redis_connect(const char *target, void **conn)
{
    char host[256];
    const char *colon = strrchr(target, ':');
    if (!colon || (size_t)(colon - target) >= sizeof host)
        return KVTC_EINVAL;
    memcpy(host, target, (size_t)(colon - target));
    host[colon - target] = '\0';
    int port = atoi(colon + 1);
    struct timeval tv = {5, 0};
    redisContext *c = redisConnectWithTimeout(host, port, tv);
    if (!c || c->err) {
        fprintf(stderr, "redis: connect %s: %s\n", target, c ? c->errstr : "out of memory");
        if (c)
            redisFree(c);
        return KVTC_ECONN;
    }
    *conn = c;
    return 0;
}

static int redis_put(void *conn, const uint8_t key[BT_KEY_LEN], const void *buf, size_t len)
{
    redisReply *r = redisCommand(conn, "SET %b %b", key, (size_t)BT_KEY_LEN, buf, len);
    if (!r) {
        fprintf(stderr, "redis: SET: %s\n", ((redisContext *)conn)->errstr);
        return KVTC_ECONN;
    }
    int rc = r->type == REDIS_REPLY_STATUS ? 0 : KVTC_EIO;
    freeReplyObject(r);
    return rc;
}

static int redis_get(void *conn, const uint8_t key[BT_KEY_LEN], void *buf, size_t len)
{
    redisReply *r = redisCommand(conn, "GET %b", key, (size_t)BT_KEY_LEN);
    if (!r) {
        fprintf(stderr, "redis: GET: %s\n", ((redisContext *)conn)->errstr);
        return KVTC_ECONN;
    }
    int rc = 0;
    if (r->type != REDIS_REPLY_STRING)
        rc = KVTC_ENOENT;
    else if ((size_t)r->len != len)
        rc = KVTC_ECORRUPT;
    else
        /* Copy out: a kvtc get lands in the caller's buffer, so Redis pays
         * for the same delivery. */
        memcpy(buf, r->str, len);
    freeReplyObject(r);
    return rc;
}

static int redis_del(void *conn, const uint8_t key[BT_KEY_LEN])
{
    redisReply *r = redisCommand(conn, "DEL %b", key, (size_t)BT_KEY_LEN);
    if (!r)
        return KVTC_ECONN;
    freeReplyObject(r);
    return 0;
}

/* hiredis pipelining: every command appended first, then every reply read. */
static int redis_many(void *conn, const uint8_t (*keys)[BT_KEY_LEN], void *const *bufs, size_t len,
                      size_t n, int put)
{
    redisContext *c = conn;
    int rc = 0;
    for (size_t i = 0; i < n; i++) {
        int r = put ? redisAppendCommand(c, "SET %b %b", keys[i], (size_t)BT_KEY_LEN, bufs[i], len)
                    : redisAppendCommand(c, "GET %b", keys[i], (size_t)BT_KEY_LEN);
        if (r != REDIS_OK)
            return KVTC_ENOMEM;
    }
    for (size_t i = 0; i < n; i++) {
        redisReply *r = NULL;
        if (redisGetReply(c, (void **)&r) != REDIS_OK || !r) {
            fprintf(stderr, "redis: pipelined reply: %s\n", c->errstr);
            return KVTC_ECONN;
        }
        if (put && r->type != REDIS_REPLY_STATUS)
            rc = rc ? rc : KVTC_EIO;
        else if (!put && (r->type != REDIS_REPLY_STRING || (size_t)r->len != len))
            rc = rc ? rc : KVTC_ENOENT;
        else if (!put)
            memcpy(bufs[i], r->str, len);
        freeReplyObject(r);
    }
    return rc;
}

static int redis_put_many(void *conn, const uint8_t (*keys)[BT_KEY_LEN], void *const *bufs, size_t len,
                          size_t n)
{
    return redis_many(conn, keys, bufs, len, n, 1);
}

static int redis_get_many(void *conn, const uint8_t (*keys)[BT_KEY_LEN], void *const *bufs, size_t len,
                          size_t n)
{
    return redis_many(conn, keys, bufs, len, n, 0);
}

static void redis_close(void *conn)
{
    redisFree(conn);
}

const struct bt_backend bt_redis_backend = {
    .name = "redis",
    .connect = redis_connect,
    .put = redis_put,
    .get = redis_get,
    .del = redis_del,
    .close = redis_close,
    .put_many = redis_put_many,
    .get_many = redis_get_many,
};
