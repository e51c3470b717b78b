/* The operations: requests built from the caller's arguments, replies
 * checked and copied back. Replies are untrusted: counts, sizes and keys
 * are checked against the request before any byte lands in a buffer. */
#include <stdlib.h>
#include <string.h>

#include "internal.h"

#define MAX_KEYS KVTC_WIRE_MAX_BATCH

static size_t batch_limit(const kvtc_conn *c)
{
    return c->info.max_batch && c->info.max_batch < MAX_KEYS ? c->info.max_batch
                                                             : MAX_KEYS;
}

static int check_batch(kvtc_conn *c, const void *arr, size_t n)
{
    if (!arr || n == 0) {
        kvtc__set_error(c, "empty batch");
        return KVTC_EINVAL;
    }
    if (n > batch_limit(c)) {
        kvtc__set_error(c, "batch of %zu exceeds the daemon's limit of %zu", n,
                        batch_limit(c));
        return KVTC_EINVAL;
    }
    return 0;
}

/* Keys as protobuf bytes pointing into the caller's array (packing copies
 * them, so they need not outlive the submit). */
static ProtobufCBinaryData *wire_keys(const kvtc_key *keys, size_t n)
{
    ProtobufCBinaryData *b = calloc(n, sizeof *b);
    if (!b)
        return NULL;
    for (size_t i = 0; i < n; i++) {
        b[i].len = KVTC_KEY_BYTES;
        b[i].data = (uint8_t *)keys[i].bytes;
    }
    return b;
}

/* ---- Put ------------------------------------------------------------------ */

/* Send req with op's payload (op->iov) as its bulk bytes. */
static int send_payload(kvtc_conn *c, struct kvtc__op *op, Kvtc__Wire__Request *req, int direct)
{
    size_t bytes = 0;
    for (size_t i = 0; i < op->iov_n; i++)
        bytes += op->iov[i].length;
    kvtc__rail_pick(c, op, bytes);
    if (op->iov_n == 1)
        return kvtc__op_send(c, op, req, op->iov[0].buffer, op->iov[0].length,
                             ucp_dt_make_contig(1), direct);
    return kvtc__op_send(c, op, req, op->iov, op->iov_n, ucp_dt_make_iov(), direct);
}

void kvtc__put_later_free(struct kvtc__put_later *l)
{
    if (!l)
        return;
    free(l->metas);
    free(l->mptr);
    free(l->lays);
    free(l);
}

void kvtc__put_send_later(struct kvtc__op *op)
{
    kvtc_conn *c = op->conn;
    struct kvtc__put_later *l = op->later;
    Kvtc__Wire__PutRequest pr = KVTC__WIRE__PUT_REQUEST__INIT;
    pr.n_chunks = op->n;
    pr.chunks = l->mptr;
    pr.has_ttl_ms = l->has_ttl;
    pr.ttl_ms = l->ttl_ms;
    Kvtc__Wire__Request req = KVTC__WIRE__REQUEST__INIT;
    req.body_case = KVTC__WIRE__REQUEST__BODY_PUT;
    req.put = &pr;
    int rc = c->failed ? c->failed : send_payload(c, op, &req, 0);
    op->later = NULL;
    kvtc__put_later_free(l); /* the frame is packed: nothing points here */
    if (rc)
        kvtc__op_fail_unsent(op, rc);
}

int kvtc_put_batch_async(kvtc_conn *c, kvtc_put_item *items, size_t n,
                         const kvtc_op_params *p)
{
    if (!c)
        return KVTC_EINVAL;
    int rc = kvtc__need_cb(c, p);
    if (rc || (rc = check_batch(c, items, n)))
        return rc;
    uint64_t max_chunk = c->info.max_chunk_bytes ? c->info.max_chunk_bytes
                                                 : KVTC_WIRE_DEFAULT_MAX_CHUNK;
    int *dev = calloc(n, sizeof *dev);
    Kvtc__Wire__LocalIov *lv = NULL, **lvp = NULL;
    Kvtc__Wire__ChunkMeta *metas = calloc(n, sizeof *metas);
    Kvtc__Wire__ChunkMeta **mptr = calloc(n, sizeof *mptr);
    Kvtc__Wire__Layout *lays = calloc(n, sizeof *lays);
    struct kvtc__op *op = kvtc__op_new(c, KVTC__OP_PUT, p);
    if (!dev || !metas || !mptr || !lays || !op) {
        rc = KVTC_ENOMEM;
        goto cleanup;
    }
    size_t n_dev = 0, dev_bytes = 0, n_data = 0, put_bytes = 0;
    for (size_t i = 0; i < n; i++) {
        kvtc_put_item *it = &items[i];
        it->status = 0;
        if (it->size && !it->data) {
            kvtc__set_error(c, "chunk %zu: no data", i);
            rc = KVTC_EINVAL;
            goto cleanup;
        }
        if (it->size > max_chunk) {
            kvtc__set_error(c, "chunk %zu: %zu bytes exceeds the daemon's limit of %llu",
                            i, it->size, (unsigned long long)max_chunk);
            rc = KVTC_ENOSPC;
            goto cleanup;
        }
        if ((it->field_mask & KVTC_PUT_FIELD_LAYOUT) &&
            (!it->layout || kvtc_layout_check(it->layout))) {
            kvtc__set_error(c, "chunk %zu: bad layout", i);
            rc = KVTC_EINVAL;
            goto cleanup;
        }
        if ((it->field_mask & KVTC_PUT_FIELD_ENCODING) &&
            it->encoding != KVTC_ENCODING_RAW && it->encoding != KVTC_ENCODING_KVTC) {
            kvtc__set_error(c, "chunk %zu: encoding %u", i, it->encoding);
            rc = KVTC_EINVAL;
            goto cleanup;
        }
        if ((it->field_mask & KVTC_PUT_FIELD_RATIO) &&
            (!(it->target_ratio == 0 || it->target_ratio >= 1) ||
             it->target_ratio > 1e6f)) {
            kvtc__set_error(c, "chunk %zu: target_ratio %g (>= 1, or 0 for raw)", i,
                            (double)it->target_ratio);
            rc = KVTC_EINVAL;
            goto cleanup;
        }
        uint32_t mem = (it->field_mask & KVTC_PUT_FIELD_MEM) ? it->mem : KVTC_MEM_AUTO;
        if (it->size && (rc = kvtc__mem_classify(it->data, mem, &dev[i]))) {
            kvtc__set_error(c, "chunk %zu: device memory not supported by this build", i);
            goto cleanup;
        }
        n_dev += dev[i] != 0;
        dev_bytes += dev[i] ? it->size : 0;
        n_data += it->size != 0;
        put_bytes += it->size;
    }
    /* Local path: the daemon reads the buffers itself (host memory only;
     * device puts keep one path). It checksums the bytes as they land, so
     * ours would only re-read the same memory (KVTC_LOCAL_VERIFY=1 still
     * sends one for the daemon to check). */
    int local = c->local_ok && n_dev == 0 && n_data && put_bytes >= c->local_min;
    /* Pipelined over UCX: the checker thread hashes the payload while
     * this thread moves the operations ahead of it (checker.c). */
    int later = !local && n_dev == 0 && c->check_thread && c->n_inflight &&
                put_bytes >= KVTC_WIRE_RNDV_THRESH_BYTES && !c->failed;
    /* UCX takes device memory directly only when it has CUDA support and
     * the whole payload is device memory; otherwise stage it. */
    int direct = c->ucx_cuda && n_dev && n_dev == n_data;
    if (n_dev && !direct) {
        if ((rc = kvtc__pinned_alloc(dev_bytes, &op->staging)))
            goto cleanup;
    }
    size_t off = 0;
    op->iov = calloc(n_data ? n_data : 1, sizeof *op->iov);
    if (!op->iov) {
        rc = KVTC_ENOMEM;
        goto cleanup;
    }
    for (size_t i = 0; i < n; i++) {
        kvtc_put_item *it = &items[i];
        const void *host = it->data;
        if (dev[i] && !direct) {
            void *stage = (char *)op->staging + off;
            if ((rc = kvtc__cuda_copy(stage, it->data, it->size, 0))) {
                kvtc__set_error(c, "chunk %zu: device to host copy failed", i);
                goto cleanup;
            }
            off += it->size;
            host = stage;
        }
        Kvtc__Wire__ChunkMeta *m = &metas[i];
        kvtc__wire__chunk_meta__init(m);
        m->key.len = KVTC_KEY_BYTES;
        m->key.data = it->key.bytes;
        if (it->field_mask & KVTC_PUT_FIELD_PARENT) {
            m->has_parent = 1;
            m->parent.len = KVTC_KEY_BYTES;
            m->parent.data = it->parent.bytes;
        }
        m->size = it->size;
        if ((!dev[i] || !direct) && (!local || c->local_verify)) {
            /* Device memory handed straight to UCX is not readable here. */
            m->has_checksum = 1;
            if (!later)
                m->checksum = kvtc_wire_checksum(host, it->size);
        }
        if (it->field_mask & KVTC_PUT_FIELD_LAYOUT) {
            kvtc__wire__layout__init(&lays[i]);
            kvtc_wire_layout_to_msg(it->layout, &lays[i]);
            m->layout = &lays[i];
            m->has_first_pos = m->has_n_tokens = 1;
            m->first_pos = it->first_pos;
            m->n_tokens = it->n_tokens;
        }
        if (it->field_mask & KVTC_PUT_FIELD_FLAGS) {
            m->has_flags = 1;
            m->flags = it->flags;
        }
        if ((it->field_mask & KVTC_PUT_FIELD_RATIO) && it->target_ratio > 0) {
            m->has_target_ratio = 1;
            m->target_ratio = it->target_ratio;
        }
        if ((it->field_mask & KVTC_PUT_FIELD_ENCODING) &&
            it->encoding == KVTC_ENCODING_KVTC) {
            m->has_encoding = 1;
            m->encoding = KVTC__WIRE__ENCODING__KVTC;
        }
        mptr[i] = m;
        if (it->size) {
            op->iov[op->iov_n].buffer = (void *)host;
            op->iov[op->iov_n].length = it->size;
            op->iov_n++;
        }
    }
    op->out.put = items;
    op->n = n;
    int has_ttl = p && (p->field_mask & KVTC_OP_PARAM_FIELD_TTL);
    if (later) {
        struct kvtc__put_later *l = calloc(1, sizeof *l);
        if (!l) {
            rc = KVTC_ENOMEM;
            goto cleanup;
        }
        *l = (struct kvtc__put_later){.metas = metas, .mptr = mptr, .lays = lays,
                                      .has_ttl = has_ttl, .ttl_ms = has_ttl ? p->ttl_ms : 0};
        metas = NULL, mptr = NULL, lays = NULL; /* the op's now */
        op->later = l;
        if (kvtc__checker_take_put(c, op)) {
            op = NULL;
            goto cleanup;
        }
        /* No thread after all: hash here and send as usual. */
        metas = l->metas, mptr = l->mptr, lays = l->lays;
        op->later = NULL;
        free(l);
        for (size_t i = 0; i < n; i++)
            if (metas[i].has_checksum)
                metas[i].checksum = kvtc_wire_checksum(items[i].data, items[i].size);
    }
    Kvtc__Wire__PutRequest pr = KVTC__WIRE__PUT_REQUEST__INIT;
    pr.n_chunks = n;
    pr.chunks = mptr;
    if (has_ttl) {
        pr.has_ttl_ms = 1;
        pr.ttl_ms = p->ttl_ms;
    }
    Kvtc__Wire__Request req = KVTC__WIRE__REQUEST__INIT;
    req.body_case = KVTC__WIRE__REQUEST__BODY_PUT;
    req.put = &pr;
    /* The buffers stay the caller's until the callback, as over UCX. */
    if (local) {
        lv = calloc(op->iov_n, sizeof *lv);
        lvp = calloc(op->iov_n, sizeof *lvp);
        if (!lv || !lvp) {
            rc = KVTC_ENOMEM;
            goto cleanup;
        }
        for (size_t k = 0; k < op->iov_n; k++) {
            kvtc__wire__local_iov__init(&lv[k]);
            lv[k].addr = (uint64_t)(uintptr_t)op->iov[k].buffer;
            lv[k].len = op->iov[k].length;
            lvp[k] = &lv[k];
        }
        pr.n_local = op->iov_n;
        pr.local = lvp;
        op->local = 1;
        rc = kvtc__op_send(c, op, &req, NULL, 0, ucp_dt_make_contig(1), 0);
    } else if (op->iov_n == 0)
        rc = kvtc__op_send(c, op, &req, NULL, 0, ucp_dt_make_contig(1), 0);
    else
        rc = send_payload(c, op, &req, direct);
    if (!rc)
        op = NULL;
cleanup:
    kvtc__op_free(op);
    free(dev);
    free(lv);
    free(lvp);
    free(metas);
    free(mptr);
    free(lays);
    return rc;
}

/* ---- Get ------------------------------------------------------------------ */

int kvtc_get_batch_async(kvtc_conn *c, kvtc_get_item *items, size_t n,
                         const kvtc_op_params *p)
{
    if (!c)
        return KVTC_EINVAL;
    int rc = kvtc__need_cb(c, p);
    if (rc || (rc = check_batch(c, items, n)))
        return rc;
    ProtobufCBinaryData *keys = calloc(n, sizeof *keys);
    Kvtc__Wire__LocalIov *lv = NULL, **lvp = NULL;
    size_t n_dev = 0, cap_total = 0;
    struct kvtc__op *op = kvtc__op_new(c, KVTC__OP_GET, p);
    if (op)
        op->dests = calloc(n, sizeof *op->dests);
    if (!keys || !op || !op->dests) {
        rc = KVTC_ENOMEM;
        goto cleanup;
    }
    for (size_t i = 0; i < n; i++) {
        kvtc_get_item *it = &items[i];
        it->status = 0;
        it->size = 0;
        it->tier = KVTC_TIER_NONE;
        it->has_layout = 0;
        it->encoding = KVTC_ENCODING_RAW;
        it->wire_size = 0;
        it->decoded_on = KVTC_DECODED_NONE;
        uint32_t want = (it->field_mask & KVTC_GET_FIELD_WANT) ? it->want : KVTC_WANT_RAW;
        if (want > KVTC_WANT_CONTAINER) {
            kvtc__set_error(c, "item %zu: want %u", i, want);
            rc = KVTC_EINVAL;
            goto cleanup;
        }
        /* One want per request: any compressed wish asks for containers,
         * and libkvtc decodes those the caller wants raw. */
        if (want != KVTC_WANT_RAW)
            op->want = 1;
        if (it->capacity && !it->buf) {
            kvtc__set_error(c, "item %zu: no buffer", i);
            rc = KVTC_EINVAL;
            goto cleanup;
        }
        uint32_t mem = (it->field_mask & KVTC_GET_FIELD_MEM) ? it->mem : KVTC_MEM_AUTO;
        int dev = 0;
        if (it->capacity && (rc = kvtc__mem_classify(it->buf, mem, &dev))) {
            kvtc__set_error(c, "item %zu: device memory not supported by this build", i);
            goto cleanup;
        }
        /* Remembered per item; the destinations are chosen when the reply
         * tells the sizes. */
        op->dests[i].staged = dev;
        n_dev += dev != 0;
        cap_total += it->capacity;
        keys[i].len = KVTC_KEY_BYTES;
        keys[i].data = it->key.bytes;
    }
    Kvtc__Wire__GetRequest gr = KVTC__WIRE__GET_REQUEST__INIT;
    gr.n_keys = n;
    gr.keys = keys;
    if (op->want) {
        gr.has_want = 1;
        gr.want = KVTC__WIRE__ENCODING__KVTC;
    }
    /* Local path: the daemon writes each hit into its item's buffer itself.
     * Raw host buffers only: containers are decoded here from a buffer of
     * their own, device buffers staged. */
    if (c->local_ok && !op->want && n_dev == 0 && cap_total &&
        cap_total >= c->local_min) {
        lv = calloc(n, sizeof *lv);
        lvp = calloc(n, sizeof *lvp);
        if (!lv || !lvp) {
            rc = KVTC_ENOMEM;
            goto cleanup;
        }
        for (size_t i = 0; i < n; i++) {
            kvtc__wire__local_iov__init(&lv[i]);
            if (items[i].capacity) {
                lv[i].addr = (uint64_t)(uintptr_t)items[i].buf;
                lv[i].len = items[i].capacity;
            }
            lvp[i] = &lv[i];
        }
        gr.n_local = n;
        gr.local = lvp;
        op->local = 1;
        if (c->local_client_check) {
            /* We hash what lands here (kvtc__op_finish): the daemon then
             * reads each stored chunk once, to copy it. A daemon of before
             * this field verifies anyway: checked twice, never unchecked. */
            gr.has_client_checks = 1;
            gr.client_checks = 1;
            op->local_check = 1;
        }
    } else if (!c->ucx_cuda && !c->ucx_daemon_check) {
        /* Over UCX every hit lands in memory we read (host buffers, or
         * staging for device ones) and kvtc__op_finish checks it against
         * the reply's checksum before the caller sees it, so kvtcd may send
         * before it re-reads the stored bytes itself (a cold 4 MiB read,
         * ~0.5 ms of every get on the H100 host). With CUDA-aware UCX a
         * device buffer is filled directly and not checked here. */
        gr.has_client_checks = 1;
        gr.client_checks = 1;
    }
    Kvtc__Wire__Request req = KVTC__WIRE__REQUEST__INIT;
    req.body_case = KVTC__WIRE__REQUEST__BODY_GET;
    req.get = &gr;
    op->out.get = items;
    op->n = n;
    if (!op->local) {
        /* Large hits come back on the rail the request takes. */
        size_t room = 0;
        for (size_t i = 0; i < n; i++)
            room += items[i].capacity;
        kvtc__rail_pick(c, op, room);
        /* One raw hit into host memory that we check: its rail thread may
         * copy it straight in (kvtc__rail_land, once the op has its id). */
        op->land_ok = op->rail && c->rail_land && n == 1 && !op->want && n_dev == 0 &&
                      gr.has_client_checks && gr.client_checks;
    }
    rc = kvtc__op_send(c, op, &req, NULL, 0, ucp_dt_make_contig(1), 0);
    if (!rc)
        op = NULL;
cleanup:
    kvtc__op_free(op);
    free(keys);
    free(lv);
    free(lvp);
    return rc;
}

static int same_key(const ProtobufCBinaryData *b, const kvtc_key *k)
{
    return b->len == KVTC_KEY_BYTES && !memcmp(b->data, k->bytes, KVTC_KEY_BYTES);
}

/* Check a get reply and choose where each found chunk's bytes land. */
static int get_plan(struct kvtc__op *op, const Kvtc__Wire__GetReply *gr, size_t length)
{
    kvtc_conn *c = op->conn;
    if (!gr || gr->n_results != op->n) {
        kvtc__set_error(c, "get reply with %zu results for %zu keys",
                        gr ? gr->n_results : 0, op->n);
        return KVTC_EPROTO;
    }
    uint64_t total = 0, staged = 0, oversize = 0, ctr = 0;
    for (size_t i = 0; i < op->n; i++) {
        const Kvtc__Wire__GetResult *r = gr->results[i];
        kvtc_get_item *it = &op->out.get[i];
        it->status = kvtc_wire_status_to_err(r->status);
        if (it->status)
            continue;
        const Kvtc__Wire__ChunkMeta *m = r->meta;
        if (!m || (m->key.len && !same_key(&m->key, &it->key)) ||
            m->size > (uint64_t)SIZE_MAX - total) {
            kvtc__set_error(c, "get reply: bad description of chunk %zu", i);
            return KVTC_EPROTO;
        }
        total += m->size;
        it->size = (size_t)m->size;
        it->wire_size = m->size;
        it->encoding = m->has_encoding && m->encoding == KVTC__WIRE__ENCODING__KVTC
                           ? KVTC_ENCODING_KVTC : KVTC_ENCODING_RAW;
        uint32_t want = (it->field_mask & KVTC_GET_FIELD_WANT) ? it->want : KVTC_WANT_RAW;
        /* A container to decode lands aside; its raw size is checked
         * against the buffer when it is decoded. */
        op->dests[i].container = it->encoding == KVTC_ENCODING_KVTC &&
                                 want != KVTC_WANT_CONTAINER;
        if (op->dests[i].container) {
            ctr += m->size;
        }
        op->dests[i].has_checksum = m->has_checksum;
        op->dests[i].checksum = m->checksum;
        it->tier = r->has_tier ? (uint32_t)r->tier : KVTC_TIER_NONE;
        if (m->layout) {
            kvtc_wire_layout_from_msg(m->layout, &it->layout);
            it->has_layout = kvtc_layout_check(&it->layout) == 0;
            it->first_pos = m->has_first_pos ? m->first_pos : 0;
            it->n_tokens = m->has_n_tokens ? m->n_tokens : 0;
        }
        if (op->dests[i].container)
            ;
        else if (it->size > it->capacity)
            oversize = it->size > oversize ? it->size : oversize;
        else if (op->dests[i].staged && !c->ucx_cuda)
            staged += it->size;
    }
    int local = gr->has_local && gr->local;
    if (local && (!op->local || length || ctr)) {
        /* Written into our buffers: only what we asked for, raw. */
        kvtc__set_error(c, "get reply: local delivery not asked for or with "
                           "%zu payload bytes",
                        length);
        return KVTC_EPROTO;
    }
    if (local) {
        /* The daemon wrote every hit that fits into its item's buffer. */
        for (size_t i = 0; i < op->n; i++) {
            kvtc_get_item *it = &op->out.get[i];
            struct kvtc__get_dest *d = &op->dests[i];
            d->device = d->staged = 0;
            d->item = i;
            d->len = 0;
            if (it->status || !it->size)
                continue;
            if (it->size > it->capacity) {
                it->status = KVTC_ENOSPC;
                continue;
            }
            d->at = it->buf;
            d->len = it->size;
        }
        op->n_dests = op->n;
        return 0;
    }
    if (total != length) {
        kvtc__set_error(c, "get reply carries %zu bytes, its chunks %llu", length,
                        (unsigned long long)total);
        return KVTC_EPROTO;
    }
    /* Buffers: total == length bounds both, and UCX moves that much anyway. */
    if (oversize && !(op->scratch = malloc(oversize)))
        return KVTC_ENOMEM;
    if (ctr && !(op->ctr_buf = malloc(ctr)))
        return KVTC_ENOMEM;
    size_t ctr_off = 0;
    if (staged && kvtc__pinned_alloc(staged, &op->staging))
        return KVTC_ENOMEM;
    op->iov = calloc(op->n, sizeof *op->iov);
    if (!op->iov)
        return KVTC_ENOMEM;
    size_t off = 0;
    for (size_t i = 0; i < op->n; i++) {
        kvtc_get_item *it = &op->out.get[i];
        struct kvtc__get_dest *d = &op->dests[i];
        int dev = d->staged;
        d->staged = 0;
        d->device = dev;
        d->item = i;
        d->len = 0;
        if (it->status || !it->size)
            continue;
        d->len = it->size;
        if (d->container) {
            d->at = op->ctr_buf + ctr_off;
            ctr_off += it->size;
        } else if (it->size > it->capacity) {
            it->status = KVTC_ENOSPC;
            d->at = op->scratch;
        } else if (dev && !c->ucx_cuda) {
            d->at = (char *)op->staging + off;
            d->staged = 1;
            off += it->size;
        } else {
            d->at = it->buf;
        }
        op->iov[op->iov_n].buffer = d->at;
        op->iov[op->iov_n].length = d->len;
        op->iov_n++;
    }
    op->n_dests = op->n;
    return 0;
}

void kvtc__get_copy(struct kvtc__op *op, const void *bulk)
{
    /* Checksummed as copied (one pass over memory instead of two);
     * kvtc__op_finish compares. The destinations are the dests with
     * bytes, in order (get_plan). */
    size_t off = 0;
    for (size_t i = 0; i < op->n_dests; i++) {
        struct kvtc__get_dest *d = &op->dests[i];
        if (!d->len)
            continue;
        const char *src = (const char *)bulk + off;
        if (!d->has_checksum || kvtc_wire_copy_checksum(d->at, src, d->len, &d->sum) != 0)
            memcpy(d->at, src, d->len);
        else
            d->summed = 1;
        off += d->len;
    }
}

static ucs_status_t get_reply(struct kvtc__op *op, const Kvtc__Wire__GetReply *gr,
                              const void *bulk, size_t length, void *rndv_desc)
{
    int rc = get_plan(op, gr, length);
    if (rc) {
        op->status = rc;
        return UCS_OK; /* drops a rendezvous payload */
    }
    if (!length)
        return UCS_OK;
    if (!rndv_desc && atomic_load(&op->land.state) == KVTC__LAND_DONE) {
        /* Its rail thread copied the bytes in already (kvtc__rail_land),
         * where get_plan puts them. */
        struct kvtc__get_dest *d = &op->dests[0];
        if (op->n_dests != 1 || d->at != op->land.buf || d->len != op->land.len) {
            kvtc__set_error(op->conn, "get reply: landed bytes do not match the reply");
            op->status = KVTC_EPROTO;
            return UCS_OK;
        }
        d->summed = op->land.summed;
        d->sum = op->land.sum;
        return UCS_OK;
    }
    if (!rndv_desc) {
        /* Eager: the bytes are here already and valid only during this
         * callback, unless a rail thread kept them for us: then it copies
         * them itself. */
        if (kvtc__op_copy_on_rail(op, bulk))
            return UCS_OK;
        kvtc__get_copy(op, bulk);
        return UCS_OK;
    }
    /* Rendezvous: UCX moves the bytes straight into the destinations. */
    if (op->iov_n == 1)
        return kvtc__op_recv_rndv(op, rndv_desc, op->iov[0].buffer, op->iov[0].length,
                                  ucp_dt_make_contig(1));
    return kvtc__op_recv_rndv(op, rndv_desc, op->iov, op->iov_n, ucp_dt_make_iov());
}

/* ---- Replies --------------------------------------------------------------- */

static int statuses_out(struct kvtc__op *op, size_t n_status, const Kvtc__Wire__Status *st,
                        int *out, size_t stride_is_put)
{
    if (n_status != op->n) {
        kvtc__set_error(op->conn, "reply with %zu statuses for %zu items", n_status, op->n);
        return KVTC_EPROTO;
    }
    int first = 0;
    op->per_item = stride_is_put != 0;
    for (size_t i = 0; i < op->n; i++) {
        int e = kvtc_wire_status_to_err(st[i]);
        if (stride_is_put)
            op->out.put[i].status = e;
        else if (out)
            out[i] = e;
        if (e && !first && !stride_is_put) {
            /* Delete / pin: the call fails with its first key's error. */
            first = e;
            kvtc__set_error(op->conn, "key %zu of %zu: %s", i, op->n, kvtc_strerror(e));
        }
    }
    return first;
}

/* kvtc_stats never grows: callers built against an older kvtc.h allocate
 * this size and stats_out writes all of it. */
_Static_assert(sizeof(kvtc_stats) == 23 * sizeof(uint64_t),
               "kvtc_stats changed size: an ABI break");

static void stats_out(kvtc_stats *s, const Kvtc__Wire__StatsReply *r)
{
    memset(s, 0, sizeof *s);
#define F(name, bit)                     \
    if (r->has_##name) {                 \
        s->name = r->name;               \
        s->field_mask |= KVTC_STATS_FIELD_##bit; \
    }
    F(chunks, CHUNKS) F(bytes_used, BYTES_USED) F(bytes_capacity, BYTES_CAPACITY)
    F(puts, PUTS) F(gets, GETS) F(hits, HITS) F(misses, MISSES)
    F(evictions, EVICTIONS) F(rejected_full, REJECTED_FULL) F(sessions, SESSIONS)
    F(bytes_in, BYTES_IN) F(bytes_out, BYTES_OUT) F(errors, ERRORS)
    F(uptime_ms, UPTIME_MS)
    F(gpu_bytes_used, GPU_BYTES_USED) F(gpu_bytes_capacity, GPU_BYTES_CAPACITY)
    F(disk_bytes_used, DISK_BYTES_USED) F(disk_bytes_capacity, DISK_BYTES_CAPACITY)
    F(disk_live_bytes, DISK_LIVE_BYTES) F(disk_dirty_chunks, DISK_DIRTY_CHUNKS)
    F(promotions, PROMOTIONS) F(demotions, DEMOTIONS)
#undef F
    if (r->has_durable) {
        s->field_mask |= KVTC_STATS_FIELD_DURABLE;
        if (r->durable)
            s->field_mask |= KVTC_STATS_DURABLE;
    }
}

static int hello_out(kvtc_conn *c, const Kvtc__Wire__HelloReply *h)
{
    if (!h) {
        kvtc__set_error(c, "hello reply without a body");
        return KVTC_EPROTO;
    }
    if (!kvtc_wire_version_ok(h->major)) {
        kvtc__set_error(c, "daemon speaks protocol %u.%u, this client %u.%u", h->major,
                        h->minor, KVTC_PROTO_MAJOR, KVTC_PROTO_MINOR);
        return KVTC_EVERSION;
    }
    c->info.major = h->major;
    c->info.minor = h->minor;
    c->info.session_id = h->has_session_id ? h->session_id : 0;
    c->info.max_chunk_bytes = h->has_max_chunk_bytes ? h->max_chunk_bytes : 0;
    c->info.max_batch = h->has_max_batch ? h->max_batch : 0;
    snprintf(c->info.server_version, sizeof c->info.server_version, "%s",
             h->server_version ? h->server_version : "");
    /* Kept for the local path (local_path.c). */
    if (h->has_bind_token)
        c->bind_token = h->bind_token;
    if (h->local_path && h->host_id && h->local_path[0] && !c->local_path &&
        strlen(h->local_path) < 128 && strlen(h->host_id) < 64) {
        c->local_path = strdup(h->local_path);
        c->host_id = strdup(h->host_id);
    }
    /* Kept for the rails (conn.c, "Rails"); a bind's reply carries none. */
    for (size_t i = 0; i < h->n_rail_port && c->n_rail_port < KVTC__MAX_RAILS; i++) {
        if (!h->rail_port[i] || h->rail_port[i] > 65535 || !h->has_bind_token)
            break; /* not a port */
        c->rail_port[c->n_rail_port++] = (uint16_t)h->rail_port[i];
        c->bind_token = h->bind_token;
    }
    /* Kept for the bulk endpoint (conn.c); a bind's reply carries none. An
     * address is a few hundred bytes: a huge one is not a worker address. */
    if (h->has_worker_address && h->has_bind_token && h->worker_address.len &&
        h->worker_address.len <= 65536 && !c->peer_addr) {
        c->peer_addr = malloc(h->worker_address.len);
        if (c->peer_addr) {
            memcpy(c->peer_addr, h->worker_address.data, h->worker_address.len);
            c->peer_addr_len = h->worker_address.len;
            c->bind_token = h->bind_token;
        }
    }
    return 0;
}

ucs_status_t kvtc__op_reply(struct kvtc__op *op, Kvtc__Wire__Reply *rep,
                            const void *bulk, size_t length, void *rndv_desc)
{
    kvtc_conn *c = op->conn;
    op->replied = 1;
    int st = kvtc_wire_status_to_err(rep->status);
    if (rep->status == KVTC__WIRE__STATUS__LOCAL)
        kvtc__local_off(c); /* the daemon fell back: so do we */
    if (st) {
        op->status = st;
        kvtc__set_error(c, "%s", rep->message && rep->message[0] ? rep->message
                                                                  : kvtc_strerror(st));
        if (op->kind == KVTC__OP_PUT)
            for (size_t i = 0; i < op->n; i++)
                op->out.put[i].status = st;
        if (op->kind == KVTC__OP_GET)
            for (size_t i = 0; i < op->n; i++)
                op->out.get[i].status = st;
        if ((op->kind == KVTC__OP_DELETE || op->kind == KVTC__OP_PIN) && op->out.statuses) {
            /* Per-key statuses when the daemon sent them, else the
             * request's status for every key. */
            const Kvtc__Wire__DeleteReply *dr = rep->body_case == KVTC__WIRE__REPLY__BODY_DEL
                                                    ? rep->del : NULL;
            const Kvtc__Wire__PinReply *pr = rep->body_case == KVTC__WIRE__REPLY__BODY_PIN
                                                 ? rep->pin : NULL;
            size_t n_st = dr ? dr->n_status : pr ? pr->n_status : 0;
            const Kvtc__Wire__Status *sv = dr ? dr->status : pr ? pr->status : NULL;
            for (size_t i = 0; i < op->n; i++)
                op->out.statuses[i] = n_st == op->n ? kvtc_wire_status_to_err(sv[i]) : st;
        }
        /* A put's per-chunk statuses are the daemon's word on each chunk:
         * with Reply.status = the first failure's, the others may well be
         * stored (docs/protocol.md, Put). */
        if (op->kind == KVTC__OP_PUT && rep->body_case == KVTC__WIRE__REPLY__BODY_PUT &&
            rep->put && rep->put->n_status == op->n) {
            for (size_t i = 0; i < op->n; i++)
                op->out.put[i].status = kvtc_wire_status_to_err(rep->put->status[i]);
            op->per_item = 1;
        }
        return UCS_OK;
    }
    /* Only a get reply may carry bytes; anything else is dropped. */
    int rc = 0;
    ucs_status_t ret = UCS_OK;
    switch (op->kind) {
    case KVTC__OP_HELLO:
        rc = rep->body_case == KVTC__WIRE__REPLY__BODY_HELLO ? hello_out(c, rep->hello)
                                                            : KVTC_EPROTO;
        break;
    case KVTC__OP_BIND:
        /* Nothing to learn: the session's hello reply said it all. */
        rc = rep->body_case == KVTC__WIRE__REPLY__BODY_HELLO ? 0 : KVTC_EPROTO;
        break;
    case KVTC__OP_PUT:
        rc = rep->body_case == KVTC__WIRE__REPLY__BODY_PUT && rep->put
                 ? statuses_out(op, rep->put->n_status, rep->put->status, NULL, 1)
                 : KVTC_EPROTO;
        break;
    case KVTC__OP_GET:
        if (rep->body_case != KVTC__WIRE__REPLY__BODY_GET) {
            rc = KVTC_EPROTO;
            break;
        }
        ret = get_reply(op, rep->get, bulk, length, rndv_desc);
        rc = op->status;
        break;
    case KVTC__OP_LOOKUP:
        if (rep->body_case != KVTC__WIRE__REPLY__BODY_LOOKUP || !rep->lookup ||
            rep->lookup->hits > op->n) {
            rc = KVTC_EPROTO;
            break;
        }
        *op->out.lookup.hits = rep->lookup->hits;
        if (op->out.lookup.tiers)
            for (size_t i = 0; i < rep->lookup->hits; i++)
                op->out.lookup.tiers[i] = i < rep->lookup->n_tiers
                                              ? (uint32_t)rep->lookup->tiers[i]
                                              : KVTC_TIER_NONE;
        break;
    case KVTC__OP_DELETE:
        rc = rep->body_case == KVTC__WIRE__REPLY__BODY_DEL && rep->del
                 ? statuses_out(op, rep->del->n_status, rep->del->status,
                                op->out.statuses, 0)
                 : KVTC_EPROTO;
        break;
    case KVTC__OP_PIN:
        rc = rep->body_case == KVTC__WIRE__REPLY__BODY_PIN && rep->pin
                 ? statuses_out(op, rep->pin->n_status, rep->pin->status,
                                op->out.statuses, 0)
                 : KVTC_EPROTO;
        break;
    case KVTC__OP_STATS:
        if (rep->body_case != KVTC__WIRE__REPLY__BODY_STATS || !rep->stats)
            rc = KVTC_EPROTO;
        else
            stats_out(op->out.stats, rep->stats);
        break;
    case KVTC__OP_PROFILE:
        ret = kvtc__profile_reply(op, rep, bulk, length, rndv_desc);
        rc = op->status;
        break;
    }
    if (rc == KVTC_EPROTO && !op->status && !c->last_error[0])
        kvtc__set_error(c, "reply does not match its request");
    if (rc && !op->status)
        op->status = rc;
    return ret;
}

/* Whether the bytes of get op's destination i are to be checked here. */
static int dest_readable(const struct kvtc__op *op, size_t i)
{
    const kvtc_conn *c = op->conn;
    const struct kvtc__get_dest *d = &op->dests[i];
    const kvtc_get_item *it = &op->out.get[i];
    /* Device memory that UCX filled directly is not readable here. */
    if (!(d->staged || !c->ucx_cuda || d->at != it->buf || d->device == 0))
        return 0;
    /* By the local path either the daemon hashed each piece of the stored
     * bytes as it wrote it here (no transport in between), or we said we
     * would check (op->local_check): then here, end to end, before the
     * caller may see the bytes; a mismatch is ECORRUPT, never data.
     * KVTC_LOCAL_VERIFY=1 checks in both cases. */
    return !(op->local && !op->local_check && !c->local_verify);
}

int kvtc__get_dest_needs_sum(const struct kvtc__op *op, size_t i)
{
    if (i >= op->n_dests || i >= op->n)
        return 0;
    const struct kvtc__get_dest *d = &op->dests[i];
    return d->len && d->has_checksum && !d->summed && !op->status && !op->out.get[i].status &&
           dest_readable(op, i);
}

/* Runs outside UCX callbacks once nothing is pending: device copies,
 * checksums, and the op's overall status from its items. */
int kvtc__op_finish(struct kvtc__op *op)
{
    kvtc_conn *c = op->conn;
    if (op->kind == KVTC__OP_PUT) {
        for (size_t i = 0; i < op->n; i++) {
            kvtc_put_item *it = &op->out.put[i];
            /* Items the daemon reported on keep their own status; without
             * such a report every item shares the request's fate. */
            if (!op->replied || (op->status && !it->status && !op->per_item))
                it->status = op->status ? op->status : KVTC_ECONN;
            if (it->status && !op->status) {
                op->status = it->status;
                kvtc__set_error(c, "chunk %zu: %s", i, kvtc_strerror(it->status));
            }
        }
        return 0;
    }
    if (op->kind != KVTC__OP_GET)
        return 0;
    if (op->fetched)
        goto decode; /* back from profile fetches: checks were done */
    for (size_t i = 0; i < op->n; i++) {
        kvtc_get_item *it = &op->out.get[i];
        if (op->status) {
            if (!op->replied || !it->status)
                it->status = op->status;
            continue;
        }
        if (it->status)
            continue;
        const struct kvtc__get_dest *d = i < op->n_dests ? &op->dests[i] : NULL;
        if (!d || !d->len)
            continue;
        if (d->has_checksum && dest_readable(op, i) &&
            (d->summed ? d->sum : kvtc_wire_checksum(d->at, d->len)) != d->checksum) {
            it->status = KVTC_ECORRUPT;
            continue;
        }
        if (d->staged && kvtc__cuda_copy(it->buf, d->at, d->len, 1))
            it->status = KVTC_EIO;
    }
decode:
    if (!op->status && op->ctr_buf && kvtc__get_decode(op))
        return 1;
    if (!op->status)
        for (size_t i = 0; i < op->n; i++)
            if (op->out.get[i].status) {
                op->status = op->out.get[i].status;
                char hex[KVTC_KEY_HEX_LEN + 1];
                kvtc_key_to_hex(&op->out.get[i].key, hex);
                kvtc__set_error(c, "key %s: %s", hex, kvtc_strerror(op->status));
                break;
            }
    return 0;
}

/* ---- Key-list operations ------------------------------------------------- */

static int keys_async(kvtc_conn *c, enum kvtc__op_kind kind, const kvtc_key *keys,
                      size_t n, const kvtc_op_params *p, int pin, void *out1,
                      void *out2)
{
    if (!c)
        return KVTC_EINVAL;
    int rc = kvtc__need_cb(c, p);
    if (rc || (rc = check_batch(c, keys, n)))
        return rc;
    if (kind == KVTC__OP_LOOKUP && !out1) {
        kvtc__set_error(c, "lookup without a hits output");
        return KVTC_EINVAL;
    }
    ProtobufCBinaryData *wk = wire_keys(keys, n);
    struct kvtc__op *op = kvtc__op_new(c, kind, p);
    if (!wk || !op) {
        rc = KVTC_ENOMEM;
        goto cleanup;
    }
    Kvtc__Wire__Request req = KVTC__WIRE__REQUEST__INIT;
    Kvtc__Wire__LookupRequest lr = KVTC__WIRE__LOOKUP_REQUEST__INIT;
    Kvtc__Wire__DeleteRequest dr = KVTC__WIRE__DELETE_REQUEST__INIT;
    Kvtc__Wire__PinRequest pr = KVTC__WIRE__PIN_REQUEST__INIT;
    op->n = n;
    switch (kind) {
    case KVTC__OP_LOOKUP:
        lr.n_keys = n;
        lr.keys = wk;
        req.body_case = KVTC__WIRE__REQUEST__BODY_LOOKUP;
        req.lookup = &lr;
        op->out.lookup.hits = out1;
        op->out.lookup.tiers = out2;
        *(size_t *)out1 = 0;
        break;
    case KVTC__OP_DELETE:
        dr.n_keys = n;
        dr.keys = wk;
        req.body_case = KVTC__WIRE__REQUEST__BODY_DEL;
        req.del = &dr;
        op->out.statuses = out1;
        break;
    default:
        pr.n_keys = n;
        pr.keys = wk;
        pr.pin = pin != 0;
        if (pin && p && (p->field_mask & KVTC_OP_PARAM_FIELD_TTL)) {
            pr.has_ttl_ms = 1;
            pr.ttl_ms = p->ttl_ms;
        }
        req.body_case = KVTC__WIRE__REQUEST__BODY_PIN;
        req.pin = &pr;
        op->out.statuses = out1;
        break;
    }
    rc = kvtc__op_send(c, op, &req, NULL, 0, ucp_dt_make_contig(1), 0);
    if (!rc)
        op = NULL;
cleanup:
    kvtc__op_free(op);
    free(wk);
    return rc;
}

int kvtc_lookup_async(kvtc_conn *c, const kvtc_key *keys, size_t n,
                      const kvtc_op_params *p, size_t *hits, uint32_t *tiers)
{
    return keys_async(c, KVTC__OP_LOOKUP, keys, n, p, 0, hits, tiers);
}

int kvtc_delete_async(kvtc_conn *c, const kvtc_key *keys, size_t n,
                      const kvtc_op_params *p, int *statuses)
{
    return keys_async(c, KVTC__OP_DELETE, keys, n, p, 0, statuses, NULL);
}

int kvtc_pin_async(kvtc_conn *c, const kvtc_key *keys, size_t n,
                   const kvtc_op_params *p, int *statuses)
{
    return keys_async(c, KVTC__OP_PIN, keys, n, p, 1, statuses, NULL);
}

int kvtc_unpin_async(kvtc_conn *c, const kvtc_key *keys, size_t n,
                     const kvtc_op_params *p, int *statuses)
{
    return keys_async(c, KVTC__OP_PIN, keys, n, p, 0, statuses, NULL);
}

int kvtc_stats_get_async(kvtc_conn *c, const kvtc_op_params *p, kvtc_stats *out)
{
    if (!c || !out)
        return KVTC_EINVAL;
    int rc = kvtc__need_cb(c, p);
    if (rc)
        return rc;
    struct kvtc__op *op = kvtc__op_new(c, KVTC__OP_STATS, p);
    if (!op)
        return KVTC_ENOMEM;
    Kvtc__Wire__StatsRequest sr = KVTC__WIRE__STATS_REQUEST__INIT;
    Kvtc__Wire__Request req = KVTC__WIRE__REQUEST__INIT;
    req.body_case = KVTC__WIRE__REQUEST__BODY_STATS;
    req.stats = &sr;
    op->out.stats = out;
    rc = kvtc__op_send(c, op, &req, NULL, 0, ucp_dt_make_contig(1), 0);
    if (rc)
        kvtc__op_free(op);
    return rc;
}
