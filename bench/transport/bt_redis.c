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

static int redis_append(redisContext *c, const struct bt_window *w, size_t i, size_t j)
{
    uint8_t key[BT_KEY_LEN];
    w->next(w->arg, i, j, key);
    int r = w->put ? redisAppendCommand(c, "SET %b %b", key, (size_t)BT_KEY_LEN, w->bufs[j], w->len)
                   : redisAppendCommand(c, "GET %b", key, (size_t)BT_KEY_LEN);
    return r == REDIS_OK ? 0 : KVTC_ENOMEM;
}

/* hiredis pipelining as a sliding window: replies come in command order,
 * so the oldest command's slot is the one that finished, and its slot
 * takes the next command before the next reply is read. */
static int redis_window(void *conn, const struct bt_window *w)
{
    redisContext *c = conn;
    size_t depth = w->depth < w->n ? w->depth : w->n, next = 0;
    int rc = 0;
    for (; next < depth; next++)
        if ((rc = redis_append(c, w, next, next)))
            return rc;
    for (size_t i = 0; i < w->n; i++) {
        size_t j = i % depth; /* FIFO: operation i used slot i mod depth */
        redisReply *r = NULL;
        if (redisGetReply(c, (void **)&r) != REDIS_OK || !r) {
            fprintf(stderr, "redis: pipelined reply: %s\n", c->errstr);
            return KVTC_ECONN;
        }
        if (w->put && r->type != REDIS_REPLY_STATUS)
            rc = rc ? rc : KVTC_EIO;
        else if (!w->put && (r->type != REDIS_REPLY_STRING || (size_t)r->len != w->len))
            rc = rc ? rc : KVTC_ENOENT;
        else if (!w->put)
            memcpy(w->bufs[j], r->str, w->len);
        freeReplyObject(r);
        if (!rc)
            w->done(w->arg, i, j);
        if (next < w->n) {
            int arc = redis_append(c, w, next++, j);
            rc = rc ? rc : arc;
        }
    }
    return rc;
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
    .window = redis_window,
};
