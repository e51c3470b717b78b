/* handle_profile.c - the Profile request: list, upload, get, delete
 * (docs/protocol.md, "Profiles").
 *
 * An upload's bytes are untrusted: they are size-checked before anything is
 * allocated, copied (eager) or received (rendezvous) into a buffer of their
 * own, then parsed and, with a data dir, written to disk on the thread pool
 * (a profile is up to a GiB: neither belongs on the loop thread). The reply
 * goes out when the profile is registered. */
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

#include "codec_serve.h"
#include "kvtc_errors.h"
#include "log.h"

#define ST(x) KVTC__WIRE__STATUS__##x
#define OP(x) KVTC__WIRE__PROFILE_OP__PROFILE_##x

/* ---- replies ---------------------------------------------------------------- */

typedef struct info_buf {
    Kvtc__Wire__ProfileInfo info;
    Kvtc__Wire__Layout layout;
    float ratios[KVTC_MAX_PLANS];
} info_buf;

static void info_of(const kvtcd_profile_ent *e, info_buf *b)
{
    kvtc__wire__profile_info__init(&b->info);
    kvtc__wire__layout__init(&b->layout);
    b->info.id = e->id;
    kvtc_wire_layout_to_msg(kvtc_profile_layout(e->p), &b->layout);
    b->info.layout = &b->layout;
    b->info.has_size = 1;
    b->info.size = e->len;
    uint32_t n = kvtc_profile_plan_count(e->p);
    if (n > KVTC_MAX_PLANS)
        n = KVTC_MAX_PLANS;
    for (uint32_t i = 0; i < n; i++) {
        kvtc_plan_info pi;
        b->ratios[i] = kvtc_profile_plan_info(e->p, i, &pi) ? 0
                                                            : pi.target_ratio;
    }
    b->info.n_ratios = n;
    b->info.ratios = b->ratios;
}

/* Reply with the profiles es[0..n) described; seg/hold: the .kvtcp bytes
 * to send along (GET) or NULL. */
static void reply_profiles(kvtcd_session *s, uint64_t id,
                           kvtcd_profile_ent *const *es, uint32_t n,
                           const kvtcd_seg *seg, kvtcd_blob *hold)
{
    info_buf *b = n ? calloc(n, sizeof *b) : NULL;
    Kvtc__Wire__ProfileInfo **ptrs = n ? calloc(n, sizeof *ptrs) : NULL;
    if (n && (!b || !ptrs)) {
        kvtcd_send_error(s, id, ST(INTERNAL), "profile: out of memory");
        goto cleanup;
    }
    for (uint32_t i = 0; i < n; i++) {
        info_of(es[i], &b[i]);
        ptrs[i] = &b[i].info;
    }
    Kvtc__Wire__ProfileReply pr = KVTC__WIRE__PROFILE_REPLY__INIT;
    pr.n_profiles = n;
    pr.profiles = ptrs;
    Kvtc__Wire__Reply rep = KVTC__WIRE__REPLY__INIT;
    rep.id = id;
    rep.status = ST(OK);
    rep.body_case = KVTC__WIRE__REPLY__BODY_PROFILE;
    rep.profile = &pr;
    kvtcd_send_reply(s, &rep, seg, seg ? 1 : 0, hold ? &hold : NULL,
                     hold ? 1 : 0);
cleanup:
    free(b);
    free(ptrs);
}

/* ---- upload ------------------------------------------------------------------ */

typedef struct upload {
    uv_work_t w;
    kvtcd_op *op;
    uint8_t *buf;
    size_t len;
    char dir[1100];
    kvtcd_profile_ent *e;   /* parsed */
    int rc;
    kvtcd_profiles *reg;    /* set while a registry slot is reserved */
} upload;

static void upload_free(void *p)
{
    upload *u = p;
    if (!u)
        return;
    if (u->reg)
        kvtcd_profiles_unreserve(u->reg);
    kvtcd_profile_unref(u->e);
    free(u->buf);
    free(u);
}

static void upload_work(uv_work_t *w)
{
    upload *u = w->data;
    u->rc = kvtcd_profile_parse(u->buf, u->len, &u->e);
    if (!u->rc && u->dir[0])
        u->rc = kvtcd_profile_persist(u->dir, u->e);
    /* The parsed entry keeps its own copy of the bytes. */
    free(u->buf);
    u->buf = NULL;
}

static void upload_after(uv_work_t *w, int status)
{
    upload *u = w->data;
    kvtcd_op *op = u->op;
    kvtcd_session *s = op->sess;
    kvtcd_serve *sv = s->srv->serve;
    if (status != 0 && !u->rc)
        u->rc = KVTC_ECANCELED;
    if (u->rc) {
        s->srv->m.errors++;
        KVTCD_INFO("profile", "upload refused session=%llu bytes=%zu "
                              "err=\"%s\"",
                   (unsigned long long)s->id, u->len, kvtc_strerror(u->rc));
        kvtcd_send_error(s, op->req_id,
                         u->rc == KVTC_EIO ? ST(INTERNAL)
                                           : kvtc_wire_err_to_status(u->rc),
                         "profile upload: %s%s", kvtc_strerror(u->rc),
                         u->rc == KVTC_EIO ? " (cannot write the profile "
                                             "file)"
                                           : "");
        kvtcd_op_free(op);
        return;
    }
    kvtcd_profile_ent *e = u->e, *got;
    u->e = NULL;
    /* The slot reserved at admission becomes the profile's. */
    kvtcd_profiles_unreserve(u->reg);
    u->reg = NULL;
    int rc = kvtcd_profiles_add(&sv->profiles, e, &got);
    if (rc) {
        kvtcd_send_error(s, op->req_id, ST(TOO_LARGE),
                         "profile upload: %u profiles stored already (limit)",
                         KVTCD_MAX_PROFILES);
        kvtcd_op_free(op);
        return;
    }
    sv->profile_uploads++;
    KVTCD_INFO("profile", "uploaded id=%016" PRIx64 " bytes=%zu plans=%u "
                          "session=%llu",
               got->id, got->len, kvtc_profile_plan_count(got->p),
               (unsigned long long)s->id);
    reply_profiles(s, op->req_id, &got, 1, NULL, NULL);
    kvtcd_op_free(op);
}

/* The bytes are in u->buf: parse (and persist) on the thread pool. */
static void upload_start(upload *u)
{
    kvtcd_server *srv = u->op->sess->srv;
    u->w.data = u;
    if (uv_queue_work(srv->loop, &u->w, upload_work, upload_after) != 0) {
        upload_work(&u->w);
        upload_after(&u->w, 0);
    }
}

static void upload_recv_done(void *request, ucs_status_t status,
                             size_t length, void *user_data)
{
    kvtcd_op *op = user_data;
    ucp_request_free(request);
    op->ucx_req = NULL;
    op->sess->srv->n_ucx_pending--;
    if (status != UCS_OK) {
        op->sess->srv->m.errors++;
        kvtcd_op_free(op);
        return;
    }
    upload_start(op->ctx);
}

static void handle_upload(kvtcd_session *s, const Kvtc__Wire__Request *req,
                          const void *bulk, size_t bulk_len, void *rndv_desc)
{
    kvtcd_server *srv = s->srv;
    kvtcd_serve *sv = srv->serve;
    if (bulk_len == 0) {
        kvtcd_send_error(s, req->id, ST(INVALID),
                         "profile upload without the profile bytes");
        return;
    }
    if (bulk_len > KVTCD_PROFILE_MAX_BYTES) {
        kvtcd_send_error(s, req->id, ST(TOO_LARGE),
                         "profile upload of %zu bytes, limit %llu", bulk_len,
                         (unsigned long long)KVTCD_PROFILE_MAX_BYTES);
        return;
    }
    /* Reserved before the bytes are even received: uploads in flight
     * count, so none is written to disk and then refused by the limit. */
    if (kvtcd_profiles_reserve(&sv->profiles) < 0) {
        kvtcd_send_error(s, req->id, ST(TOO_LARGE),
                         "profile upload: %u profiles stored already (limit)",
                         KVTCD_MAX_PROFILES);
        return;
    }
    upload *u = calloc(1, sizeof *u);
    kvtcd_op *op = u ? kvtcd_op_new(srv, KVTCD_OP_RECV, s) : NULL;
    if (u) {
        u->reg = &sv->profiles;
        u->buf = malloc(bulk_len);
    } else {
        kvtcd_profiles_unreserve(&sv->profiles);
    }
    if (!op || !u->buf) {
        kvtcd_op_free(op);
        upload_free(u);
        kvtcd_send_error(s, req->id, ST(INTERNAL), "profile: out of memory");
        return;
    }
    u->op = op;
    u->len = bulk_len;
    memcpy(u->dir, sv->profiles.dir, sizeof u->dir);
    op->req_id = req->id;
    op->ctx = u;
    op->ctx_free = upload_free;
    if (!rndv_desc) {
        memcpy(u->buf, bulk, bulk_len);
        upload_start(u);
        return;
    }
    ucp_request_param_t p = {
        .op_attr_mask = UCP_OP_ATTR_FIELD_CALLBACK | UCP_OP_ATTR_FIELD_USER_DATA,
        .cb.recv_am = upload_recv_done,
        .user_data = op,
    };
    ucs_status_ptr_t r =
        ucp_am_recv_data_nbx(srv->worker, rndv_desc, u->buf, bulk_len, &p);
    if (r == NULL) {
        upload_start(u);
    } else if (UCS_PTR_IS_ERR(r)) {
        srv->m.errors++;
        kvtcd_send_error(s, req->id, ST(INTERNAL), "profile upload: %s",
                         ucs_status_string(UCS_PTR_STATUS(r)));
        kvtcd_op_free(op);
    } else {
        op->ucx_req = r;
        srv->n_ucx_pending++;
    }
}

/* ---- the request -------------------------------------------------------------- */

static void release_ent(void *arg)
{
    kvtcd_profile_unref(arg);
}

void kvtcd_handle_profile(kvtcd_session *s, const Kvtc__Wire__Request *req,
                          const void *bulk, size_t bulk_len, void *rndv_desc)
{
    kvtcd_server *srv = s->srv;
    kvtcd_serve *sv = srv->serve;
    const Kvtc__Wire__ProfileRequest *pr = req->profile;
    int op = (int)pr->op;
    if (op != OP(UPLOAD) && bulk_len) {
        kvtcd_send_error(s, req->id, ST(INVALID),
                         "unexpected %zu payload bytes", bulk_len);
        return;
    }
    if ((op == OP(GET) || op == OP(DELETE)) && !pr->has_id) {
        kvtcd_send_error(s, req->id, ST(INVALID), "profile: no id");
        return;
    }
    switch (op) {
    case OP(LIST): {
        kvtcd_profile_ent **es = calloc(KVTCD_MAX_PROFILES, sizeof *es);
        if (!es) {
            kvtcd_send_error(s, req->id, ST(INTERNAL),
                             "profile: out of memory");
            return;
        }
        uint32_t n = kvtcd_profiles_list(&sv->profiles, es,
                                         KVTCD_MAX_PROFILES);
        reply_profiles(s, req->id, es, n, NULL, NULL);
        for (uint32_t i = 0; i < n; i++)
            kvtcd_profile_unref(es[i]);
        free(es);
        return;
    }
    case OP(UPLOAD):
        handle_upload(s, req, bulk, bulk_len, rndv_desc);
        return;
    case OP(GET): {
        kvtcd_profile_ent *e = kvtcd_profiles_get(&sv->profiles, pr->id);
        if (!e) {
            kvtcd_send_error(s, req->id, ST(NOT_FOUND),
                             "profile %016" PRIx64 " not found", pr->id);
            return;
        }
        /* The bytes go out zero-copy; the blob keeps the profile alive
         * until the send is done, even if it is deleted meanwhile. */
        kvtcd_blob *b;
        if (kvtcd_heap_blob(e->bytes, e->len, release_ent, e, &b)) {
            kvtcd_profile_unref(e);
            kvtcd_send_error(s, req->id, ST(INTERNAL),
                             "profile: out of memory");
            return;
        }
        kvtcd_seg seg = {e->bytes, e->len};
        reply_profiles(s, req->id, &e, 1, &seg, b);
        kvtcd_blob_unref(b);
        return;
    }
    case OP(DELETE): {
        int rc = kvtcd_profiles_remove(&sv->profiles, pr->id);
        if (rc) {
            kvtcd_send_error(s, req->id, ST(NOT_FOUND),
                             "profile %016" PRIx64 " not found", pr->id);
            return;
        }
        sv->profile_deletes++;
        KVTCD_INFO("profile", "deleted id=%016" PRIx64 " session=%llu",
                   pr->id, (unsigned long long)s->id);
        reply_profiles(s, req->id, NULL, 0, NULL, NULL);
        return;
    }
    default:
        kvtcd_send_error(s, req->id, ST(INVALID), "profile: op %d", op);
        return;
    }
}
