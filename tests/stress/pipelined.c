/* pipelined.c - many puts, then many gets, over UCX with a window of
 * requests in flight on one libkvtc connection, every byte checked.
 *
 *   pipelined HOST:PORT OPS DEPTH
 *
 * Built with ThreadSanitizer by `make test-tsan` (tests/stress/module.mk):
 * with several operations in flight libkvtc hashes on its checker thread
 * (client/checker.c) and sends one bulk payload at a time, and this drives
 * both. Exit status 0: every operation succeeded and every get returned its
 * chunk's bytes. */
#include "kvtc.h"

#include <poll.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MAX_DEPTH 64

static const size_t sizes[] = {512u << 10, (1u << 20) + 13, 2u << 20, 4u << 20};

struct slot {
    int busy, rc;
    size_t op;
    kvtc_put_item put;
    kvtc_get_item get;
    uint8_t *buf;
};

static size_t size_of(size_t op)
{
    return sizes[op % (sizeof sizes / sizeof sizes[0])];
}

static kvtc_key key_of(size_t op)
{
    kvtc_key k;
    memset(&k, 0, sizeof k);
    memcpy(k.bytes, &op, sizeof op);
    k.bytes[31] = 0x5a;
    return k;
}

/* Chunk op's bytes: a function of op and the offset. */
static void fill(uint8_t *p, size_t len, size_t op)
{
    uint64_t x = 0x9e3779b97f4a7c15ull * (op + 1);
    for (size_t i = 0; i < len; i++) {
        x ^= x << 13, x ^= x >> 7, x ^= x << 17;
        p[i] = (uint8_t)x;
    }
}

static void done(int status, void *arg)
{
    struct slot *s = arg;
    s->busy = 0;
    s->rc = status;
}

static int start(kvtc_conn *c, struct slot *s, size_t op, int put)
{
    kvtc_op_params p = {.field_mask = KVTC_OP_PARAM_FIELD_CALLBACK, .cb = done, .arg = s};
    s->op = op;
    s->busy = 1;
    s->rc = 0;
    if (put) {
        fill(s->buf, size_of(op), op);
        s->put = (kvtc_put_item){.key = key_of(op), .data = s->buf, .size = size_of(op)};
        return kvtc_put_batch_async(c, &s->put, 1, &p);
    }
    s->get = (kvtc_get_item){.key = key_of(op), .buf = s->buf, .capacity = 4u << 20};
    return kvtc_get_batch_async(c, &s->get, 1, &p);
}

/* One pass: ops operations, depth in flight; gets are checked byte by byte. */
static int pass(kvtc_conn *c, struct slot *slot, size_t ops, size_t depth, int put, uint8_t *want)
{
    size_t next = 0, finished = 0;
    unsigned idle = 0;
    while (finished < ops) {
        for (size_t j = 0; j < depth && next < ops; j++)
            if (!slot[j].busy && slot[j].op == SIZE_MAX) {
                int rc = start(c, &slot[j], next++, put);
                if (rc) {
                    fprintf(stderr, "pipelined: submit: %s\n", kvtc_strerror(rc));
                    return 1;
                }
            }
        int got = kvtc_progress(c);
        if (got < 0) {
            fprintf(stderr, "pipelined: connection failed: %s\n", kvtc_last_error(c));
            return 1;
        }
        /* Sleep on the fd now and then, as an event loop would: the
         * checker must wake it (ucp_worker_signal, kvtc_arm's EBUSY). */
        idle = got ? 0 : idle + 1;
        if (idle > 64 && kvtc_arm(c) == 0) {
            int fd;
            if (kvtc_get_fd(c, &fd) == 0)
                (void)poll(&(struct pollfd){.fd = fd, .events = POLLIN}, 1, 100);
            idle = 0;
        }
        for (size_t j = 0; j < depth; j++) {
            struct slot *s = &slot[j];
            if (s->busy || s->op == SIZE_MAX)
                continue;
            size_t len = size_of(s->op);
            if (s->rc) {
                fprintf(stderr, "pipelined: %s %zu: %s\n", put ? "put" : "get", s->op,
                        kvtc_strerror(s->rc));
                return 1;
            }
            if (!put) {
                fill(want, len, s->op);
                if (s->get.size != len || memcmp(s->buf, want, len)) {
                    fprintf(stderr, "pipelined: get %zu came back different\n", s->op);
                    return 1;
                }
            }
            s->op = SIZE_MAX;
            finished++;
        }
    }
    return 0;
}

int main(int argc, char **argv)
{
    if (argc != 4) {
        fprintf(stderr, "usage: pipelined HOST:PORT OPS DEPTH\n");
        return 2;
    }
    size_t ops = strtoull(argv[2], NULL, 10), depth = strtoull(argv[3], NULL, 10);
    if (!ops || !depth || depth > MAX_DEPTH)
        return 2;
    kvtc_conn_params p = {.field_mask = KVTC_CONN_PARAM_FIELD_LOCAL, .local = KVTC_LOCAL_OFF};
    kvtc_conn *c = NULL;
    int rc = kvtc_connect(argv[1], &p, &c);
    if (rc) {
        fprintf(stderr, "pipelined: connect %s: %s\n", argv[1], kvtc_strerror(rc));
        return 1;
    }
    struct slot slot[MAX_DEPTH];
    uint8_t *want = malloc(4u << 20);
    int bad = !want;
    for (size_t j = 0; j < depth; j++) {
        slot[j] = (struct slot){.op = SIZE_MAX, .buf = malloc(4u << 20)};
        bad |= !slot[j].buf;
    }
    for (int round = 0; !bad && round < 2; round++)
        bad = pass(c, slot, ops, depth, 1, want) || pass(c, slot, ops, depth, 0, want);
    kvtc_disconnect(c);
    for (size_t j = 0; j < depth; j++)
        free(slot[j].buf);
    free(want);
    if (!bad)
        printf("pipelined: %zu puts and gets, %zu in flight, twice: every byte right\n", ops, depth);
    return bad;
}
