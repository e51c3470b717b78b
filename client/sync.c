/* The blocking API: each call is its asynchronous twin plus a wait on the
 * connection's own progress loop, so both paths share one implementation. */
#include "internal.h"

struct waiter {
    int done;
    int status;
};

static void wake(int status, void *arg)
{
    struct waiter *w = arg;
    w->status = status;
    w->done = 1;
}

/* Params with our callback in place of the caller's, the rest kept. */
static kvtc_op_params with_waiter(const kvtc_op_params *p, struct waiter *w)
{
    kvtc_op_params q = p ? *p : (kvtc_op_params){0};
    q.field_mask |= KVTC_OP_PARAM_FIELD_CALLBACK;
    q.cb = wake;
    q.arg = w;
    return q;
}

/* Operation deadlines are enforced by progress (expire), which completes
 * the op, so waiting without a deadline here always ends. */
static int finish(kvtc_conn *c, int rc, struct waiter *w)
{
    if (rc)
        return rc;
    kvtc__wait_flag(c, &w->done, 0);
    return w->status;
}

int kvtc_put_batch(kvtc_conn *c, kvtc_put_item *items, size_t n,
                   const kvtc_op_params *p)
{
    struct waiter w = {0};
    kvtc_op_params q = with_waiter(p, &w);
    return finish(c, kvtc_put_batch_async(c, items, n, &q), &w);
}

int kvtc_get_batch(kvtc_conn *c, kvtc_get_item *items, size_t n,
                   const kvtc_op_params *p)
{
    struct waiter w = {0};
    kvtc_op_params q = with_waiter(p, &w);
    return finish(c, kvtc_get_batch_async(c, items, n, &q), &w);
}

int kvtc_put(kvtc_conn *c, const kvtc_key *key, const void *data, size_t size)
{
    if (!key)
        return KVTC_EINVAL;
    kvtc_put_item it = {.key = *key, .data = data, .size = size};
    return kvtc_put_batch(c, &it, 1, NULL);
}

int kvtc_get(kvtc_conn *c, const kvtc_key *key, void *buf, size_t capacity,
             size_t *size)
{
    if (!key)
        return KVTC_EINVAL;
    kvtc_get_item it = {.key = *key, .buf = buf, .capacity = capacity};
    int rc = kvtc_get_batch(c, &it, 1, NULL);
    if (size)
        *size = it.size;
    return rc;
}

int kvtc_lookup(kvtc_conn *c, const kvtc_key *keys, size_t n,
                const kvtc_op_params *p, size_t *hits, uint32_t *tiers)
{
    struct waiter w = {0};
    kvtc_op_params q = with_waiter(p, &w);
    return finish(c, kvtc_lookup_async(c, keys, n, &q, hits, tiers), &w);
}

int kvtc_delete(kvtc_conn *c, const kvtc_key *keys, size_t n,
                const kvtc_op_params *p, int *statuses)
{
    struct waiter w = {0};
    kvtc_op_params q = with_waiter(p, &w);
    return finish(c, kvtc_delete_async(c, keys, n, &q, statuses), &w);
}

int kvtc_pin(kvtc_conn *c, const kvtc_key *keys, size_t n,
             const kvtc_op_params *p, int *statuses)
{
    struct waiter w = {0};
    kvtc_op_params q = with_waiter(p, &w);
    return finish(c, kvtc_pin_async(c, keys, n, &q, statuses), &w);
}

int kvtc_unpin(kvtc_conn *c, const kvtc_key *keys, size_t n,
               const kvtc_op_params *p, int *statuses)
{
    struct waiter w = {0};
    kvtc_op_params q = with_waiter(p, &w);
    return finish(c, kvtc_unpin_async(c, keys, n, &q, statuses), &w);
}

int kvtc_stats_get(kvtc_conn *c, const kvtc_op_params *p, kvtc_stats *out)
{
    struct waiter w = {0};
    kvtc_op_params q = with_waiter(p, &w);
    return finish(c, kvtc_stats_get_async(c, &q, out), &w);
}

int kvtc_profile_upload(kvtc_conn *c, const void *data, size_t size,
                        const kvtc_op_params *p, kvtc_profile_info *out)
{
    struct waiter w = {0};
    kvtc_op_params q = with_waiter(p, &w);
    return finish(c, kvtc_profile_upload_async(c, data, size, &q, out), &w);
}

int kvtc_profile_list(kvtc_conn *c, const kvtc_op_params *p,
                      kvtc_profile_info *out, size_t max, size_t *n)
{
    struct waiter w = {0};
    kvtc_op_params q = with_waiter(p, &w);
    return finish(c, kvtc_profile_list_async(c, &q, out, max, n), &w);
}

int kvtc_profile_get(kvtc_conn *c, uint64_t id, void *buf, size_t cap,
                     const kvtc_op_params *p, size_t *size)
{
    struct waiter w = {0};
    kvtc_op_params q = with_waiter(p, &w);
    return finish(c, kvtc_profile_get_async(c, id, buf, cap, &q, size), &w);
}

int kvtc_profile_delete(kvtc_conn *c, uint64_t id, const kvtc_op_params *p)
{
    struct waiter w = {0};
    kvtc_op_params q = with_waiter(p, &w);
    return finish(c, kvtc_profile_delete_async(c, id, &q), &w);
}
