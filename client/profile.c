/* Codec profiles: the Profile operations, and decoding the containers a
 * get asked for (KVTC_WANT_KVTC) with profiles fetched from the daemon once
 * per connection.
 *
 * A get whose containers name a profile this connection has not seen
 * fetches it before it completes: kvtc__op_finish hands the get to
 * internal Profile GET operations, and the last of them to complete
 * decodes, runs the get's callback and frees it. Replies are untrusted: a
 * fetched profile must load and carry the id it was fetched for. */
#include <stdlib.h>
#include <string.h>

#include "gpu_decode.h"
#include "internal.h"

#define POP(x) KVTC__WIRE__PROFILE_OP__PROFILE_##x
/* Profiles kept per connection; the oldest goes when full. */
#define CACHE_MAX 16

struct kvtc__prof_cache {
    struct kvtc__prof_cache *next;
    uint64_t id;
    kvtc_profile *p;
    kvtc_decoder *dec;
};

void kvtc__profile_cache_free(kvtc_conn *c)
{
    kvtc__gpu_state_free(c); /* its contexts read the profiles */
    struct kvtc__prof_cache *e = c->profiles;
    while (e) {
        struct kvtc__prof_cache *n = e->next;
        kvtc_decoder_free(e->dec);
        kvtc_profile_free(e->p);
        free(e);
        e = n;
    }
    c->profiles = NULL;
}

static struct kvtc__prof_cache *cache_find(kvtc_conn *c, uint64_t id)
{
    for (struct kvtc__prof_cache *e = c->profiles; e; e = e->next)
        if (e->id == id)
            return e;
    return NULL;
}

/* Take p (loaded, id checked) into the cache with a decoder. */
static int cache_add(kvtc_conn *c, kvtc_profile *p)
{
    struct kvtc__prof_cache *e = calloc(1, sizeof *e);
    if (!e)
        return KVTC_ENOMEM;
    int rc = kvtc_decoder_create(p, &e->dec);
    if (rc) {
        free(e);
        return rc;
    }
    e->id = kvtc_profile_id(p);
    e->p = p;
    e->next = c->profiles;
    c->profiles = e;
    size_t n = 0;
    for (struct kvtc__prof_cache **pp = &c->profiles; *pp; pp = &(*pp)->next) {
        if (++n > CACHE_MAX) {
            struct kvtc__prof_cache *old = *pp;
            *pp = NULL;
            kvtc_decoder_free(old->dec);
            kvtc__gpu_forget(c, old->p);
            kvtc_profile_free(old->p);
            free(old);
            break;
        }
    }
    return 0;
}

/* ---- requests ------------------------------------------------------------ */

static int profile_submit(kvtc_conn *c, struct kvtc__op *op, int pop, uint64_t id,
                          const void *payload, size_t len)
{
    Kvtc__Wire__ProfileRequest pr = KVTC__WIRE__PROFILE_REQUEST__INIT;
    pr.op = (Kvtc__Wire__ProfileOp)pop;
    if (pop == POP(GET) || pop == POP(DELETE)) {
        pr.has_id = 1;
        pr.id = id;
    }
    Kvtc__Wire__Request req = KVTC__WIRE__REQUEST__INIT;
    req.body_case = KVTC__WIRE__REQUEST__BODY_PROFILE;
    req.profile = &pr;
    op->out.prof.op = pop;
    return kvtc__op_send(c, op, &req, payload, len, ucp_dt_make_contig(1), 0);
}

/* Common start of the four calls. */
static struct kvtc__op *new_op(kvtc_conn *c, const kvtc_op_params *p, int *rc)
{
    *rc = kvtc__need_cb(c, p);
    if (*rc)
        return NULL;
    struct kvtc__op *op = kvtc__op_new(c, KVTC__OP_PROFILE, p);
    if (!op)
        *rc = KVTC_ENOMEM;
    return op;
}

static int finish_submit(struct kvtc__op *op, int rc)
{
    if (rc)
        kvtc__op_free(op);
    return rc;
}

int kvtc_profile_upload_async(kvtc_conn *c, const void *data, size_t size,
                              const kvtc_op_params *p, kvtc_profile_info *out)
{
    if (!c || !data || !size)
        return KVTC_EINVAL;
    if (size > KVTC__PROFILE_MAX_BYTES) {
        kvtc__set_error(c, "profile of %zu bytes exceeds the limit", size);
        return KVTC_ENOSPC;
    }
    int rc;
    struct kvtc__op *op = new_op(c, p, &rc);
    if (!op)
        return rc;
    op->out.prof.infos = out;
    op->out.prof.max = out ? 1 : 0;
    return finish_submit(op, profile_submit(c, op, POP(UPLOAD), 0, data, size));
}

int kvtc_profile_list_async(kvtc_conn *c, const kvtc_op_params *p,
                            kvtc_profile_info *out, size_t max, size_t *n)
{
    if (!c || !n || (max && !out))
        return KVTC_EINVAL;
    int rc;
    struct kvtc__op *op = new_op(c, p, &rc);
    if (!op)
        return rc;
    *n = 0;
    op->out.prof.infos = out;
    op->out.prof.max = max;
    op->out.prof.n = n;
    return finish_submit(op, profile_submit(c, op, POP(LIST), 0, NULL, 0));
}

int kvtc_profile_get_async(kvtc_conn *c, uint64_t id, void *buf, size_t cap,
                           const kvtc_op_params *p, size_t *size)
{
    if (!c || (cap && !buf))
        return KVTC_EINVAL;
    int rc;
    struct kvtc__op *op = new_op(c, p, &rc);
    if (!op)
        return rc;
    if (size)
        *size = 0;
    op->out.prof.buf = buf;
    op->out.prof.cap = cap;
    op->out.prof.size = size;
    return finish_submit(op, profile_submit(c, op, POP(GET), id, NULL, 0));
}

int kvtc_profile_delete_async(kvtc_conn *c, uint64_t id, const kvtc_op_params *p)
{
    if (!c)
        return KVTC_EINVAL;
    int rc;
    struct kvtc__op *op = new_op(c, p, &rc);
    if (!op)
        return rc;
    return finish_submit(op, profile_submit(c, op, POP(DELETE), id, NULL, 0));
}

/* ---- replies ------------------------------------------------------------- */

static void info_out(kvtc_profile_info *o, const Kvtc__Wire__ProfileInfo *in)
{
    memset(o, 0, sizeof *o);
    o->id = in->id;
    if (in->layout)
        kvtc_wire_layout_from_msg(in->layout, &o->layout);
    o->size = in->has_size ? in->size : 0;
    o->n_plans = in->n_ratios < KVTC_MAX_PLANS ? (uint32_t)in->n_ratios : KVTC_MAX_PLANS;
    for (uint32_t i = 0; i < o->n_plans; i++)
        o->ratios[i] = in->ratios[i];
}

/* The bytes of a GET: into the caller's buffer or the fetch's own. */
static ucs_status_t get_bytes(struct kvtc__op *op, const void *bulk, size_t length,
                              void *rndv_desc)
{
    kvtc_conn *c = op->conn;
    struct kvtc__fetch *f = op->out.prof.fetch;
    void *dst;
    if (op->out.prof.size)
        *op->out.prof.size = length;
    if (f) {
        if (length > KVTC__PROFILE_MAX_BYTES || !(f->buf = malloc(length ? length : 1))) {
            op->status = KVTC_ENOMEM;
            return UCS_OK;
        }
        f->len = length;
        dst = f->buf;
    } else if (length > op->out.prof.cap) {
        op->status = KVTC_ENOSPC;
        kvtc__set_error(c, "profile of %zu bytes, buffer of %zu", length, op->out.prof.cap);
        return UCS_OK; /* drops a rendezvous payload */
    } else {
        dst = op->out.prof.buf;
    }
    if (!length)
        return UCS_OK;
    if (!rndv_desc) {
        memcpy(dst, bulk, length);
        return UCS_OK;
    }
    return kvtc__op_recv_rndv(op, rndv_desc, dst, length, ucp_dt_make_contig(1));
}

ucs_status_t kvtc__profile_reply(struct kvtc__op *op, const Kvtc__Wire__Reply *rep,
                                 const void *bulk, size_t length, void *rndv_desc)
{
    kvtc_conn *c = op->conn;
    const Kvtc__Wire__ProfileReply *pr =
        rep->body_case == KVTC__WIRE__REPLY__BODY_PROFILE ? rep->profile : NULL;
    int pop = op->out.prof.op;
    if (!pr || (pop == POP(GET) && pr->n_profiles != 1) ||
        (pop == POP(UPLOAD) && pr->n_profiles != 1) ||
        (pop != POP(GET) && length)) {
        op->status = KVTC_EPROTO;
        kvtc__set_error(c, "profile reply does not match its request");
        return UCS_OK;
    }
    if (pop == POP(GET)) {
        /* Bytes are bounded by what the daemon said the profile is. */
        if (pr->profiles[0]->id != (op->out.prof.fetch ? op->out.prof.fetch->id
                                                        : pr->profiles[0]->id) ||
            (pr->profiles[0]->has_size && pr->profiles[0]->size != length)) {
            op->status = KVTC_EPROTO;
            kvtc__set_error(c, "profile reply does not match its request");
            return UCS_OK;
        }
        return get_bytes(op, bulk, length, rndv_desc);
    }
    size_t n = pr->n_profiles < op->out.prof.max ? pr->n_profiles : op->out.prof.max;
    for (size_t i = 0; i < n; i++)
        info_out(&op->out.prof.infos[i], pr->profiles[i]);
    if (op->out.prof.n)
        *op->out.prof.n = n;
    return UCS_OK;
}

/* ---- decoding a get's containers -------------------------------------------- */

/* Decode every container of op; profiles missing from the cache fail
 * their items with KVTC_EPROFILE. */
static void decode_all(struct kvtc__op *op)
{
    kvtc_conn *c = op->conn;
    kvtc_decoder *raw_dec = NULL;
    for (size_t i = 0; i < op->n_dests; i++) {
        struct kvtc__get_dest *d = &op->dests[i];
        kvtc_get_item *it = &op->out.get[i];
        if (!d->container || it->status || !d->len)
            continue;
        kvtc_container_info ci;
        int rc = kvtc_inspect(d->at, d->len, &ci);
        kvtc_decoder *dec = NULL;
        const kvtc_profile *prof = NULL;
        if (!rc && ci.mode == 1) {
            if (!raw_dec)
                rc = kvtc_decoder_create(NULL, &raw_dec);
            dec = raw_dec;
        } else if (!rc) {
            struct kvtc__prof_cache *e = cache_find(c, ci.profile_id);
            if (e)
                dec = e->dec, prof = e->p;
            else
                rc = KVTC_EPROFILE;
        }
        if (!rc && ci.raw_bytes > it->capacity) {
            it->size = (size_t)ci.raw_bytes;
            rc = KVTC_ENOSPC;
        }
        /* A device buffer: decoded on its GPU when libkvtc_gpu serves it,
         * else on the CPU and copied (gpu_decode.c). */
        if (!rc && d->device && !kvtc__gpu_decode(c, prof, &ci, d->at, d->len, it->buf)) {
            it->size = (size_t)ci.raw_bytes;
            it->decoded_on = KVTC_DECODED_GPU;
            continue;
        }
        if (!rc) {
            void *dst = it->buf;
            void *tmp = NULL;
            if (d->device && !(dst = tmp = malloc(ci.raw_bytes ? ci.raw_bytes : 1)))
                rc = KVTC_ENOMEM;
            if (!rc)
                rc = kvtc_decode(dec, d->at, d->len, dst, (size_t)ci.raw_bytes, NULL);
            if (!rc && d->device && kvtc__cuda_copy(it->buf, tmp, ci.raw_bytes, 1))
                rc = KVTC_EIO;
            free(tmp);
        }
        if (rc) {
            it->status = rc;
            continue;
        }
        it->size = (size_t)ci.raw_bytes;
        it->decoded_on = KVTC_DECODED_CPU;
    }
    kvtc_decoder_free(raw_dec);
}

/* One fetch done: cache the profile; the last one completes the get. */
static void fetched(int status, void *arg)
{
    struct kvtc__fetch *f = arg;
    struct kvtc__op *op = f->parent;
    kvtc_conn *c = op->conn;
    kvtc_profile *p = NULL;
    if (!status && f->buf && !cache_find(c, f->id) &&
        kvtc_profile_load(f->buf, f->len, &p) == 0) {
        if (kvtc_profile_id(p) != f->id || cache_add(c, p) != 0)
            kvtc_profile_free(p);
    }
    free(f->buf);
    free(f);
    if (--op->waiting)
        return;
    kvtc__op_finish(op); /* decodes now: op->fetched is set */
    if (op->cb)
        op->cb(op->status, op->arg);
    kvtc__op_free(op);
}

int kvtc__get_decode(struct kvtc__op *op)
{
    kvtc_conn *c = op->conn;
    if (!op->fetched) {
        op->fetched = 1;
        /* Profiles named by containers and not cached: fetch each once. */
        uint64_t ids[64];
        size_t n_ids = 0;
        for (size_t i = 0; i < op->n_dests && n_ids < 64; i++) {
            const struct kvtc__get_dest *d = &op->dests[i];
            kvtc_container_info ci;
            if (!d->container || op->out.get[i].status || !d->len ||
                kvtc_inspect(d->at, d->len, &ci) || ci.mode == 1 ||
                cache_find(c, ci.profile_id))
                continue;
            size_t k = 0;
            while (k < n_ids && ids[k] != ci.profile_id)
                k++;
            if (k == n_ids)
                ids[n_ids++] = ci.profile_id;
        }
        for (size_t k = 0; k < n_ids; k++) {
            struct kvtc__fetch *f = calloc(1, sizeof *f);
            kvtc_op_params p = {.field_mask = KVTC_OP_PARAM_FIELD_CALLBACK,
                                .cb = fetched, .arg = f};
            struct kvtc__op *fo = f ? kvtc__op_new(c, KVTC__OP_PROFILE, &p) : NULL;
            if (!fo) {
                free(f);
                continue;
            }
            f->parent = op;
            f->id = ids[k];
            fo->out.prof.fetch = f;
            op->waiting++;
            if (profile_submit(c, fo, POP(GET), ids[k], NULL, 0)) {
                op->waiting--;
                kvtc__op_free(fo);
                free(f);
            }
        }
        if (op->waiting)
            return 1;
    }
    decode_all(op);
    return 0;
}
