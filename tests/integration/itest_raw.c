/* A bare UCP endpoint for the malformed-request tests: it sends whatever
 * frame a test builds, byte for byte, which libkvtc (rightly) never would. */
#include "itest.h"

#include "wire.h"

#include <criterion/criterion.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <ucp/api/ucp.h>

struct itest_raw {
    ucp_context_h ctx;
    ucp_worker_h worker;
    ucp_ep_h ep;
    int failed;         /* the endpoint reported an error */
    void *reply;        /* latest reply frame, not yet taken */
    size_t reply_len;
};

static long now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1000L + ts.tv_nsec / 1000000L;
}

static ucs_status_t on_reply(void *arg, const void *header, size_t header_length, void *data,
                             size_t length, const ucp_am_recv_param_t *param)
{
    struct itest_raw *r = arg;
    int rndv = (param->recv_attr & UCP_AM_RECV_ATTR_FLAG_RNDV) != 0;
    if (!r->reply && header_length) {
        /* A 4-byte header means the message travels in the data ("in data"
         * form, docs/protocol.md); rebuild the frame either way. Replies to
         * these tests are small, so such data is never rendezvous. */
        size_t extra = 0;
        if (header_length == KVTC_WIRE_LEN_BYTES && !rndv) {
            uint32_t n;
            memcpy(&n, header, 4);
            extra = n <= length ? n : length;
        }
        r->reply = malloc(header_length + extra);
        if (r->reply) {
            memcpy(r->reply, header, header_length);
            if (extra)
                memcpy((char *)r->reply + header_length, data, extra);
            r->reply_len = header_length + extra;
        }
    }
    /* UCS_OK drops a rendezvous payload unreceived (and releases eager data). */
    return UCS_OK;
}

static void on_ep_error(void *arg, ucp_ep_h ep, ucs_status_t status)
{
    ((struct itest_raw *)arg)->failed = 1;
}

/* Progress until the request completes (or the deadline). */
static ucs_status_t wait_req(struct itest_raw *r, void *req, int timeout_ms)
{
    if (req == NULL)
        return UCS_OK;
    if (UCS_PTR_IS_ERR(req))
        return UCS_PTR_STATUS(req);
    long end = now_ms() + timeout_ms;
    ucs_status_t st;
    while ((st = ucp_request_check_status(req)) == UCS_INPROGRESS && now_ms() < end)
        ucp_worker_progress(r->worker);
    if (st == UCS_INPROGRESS) {
        ucp_request_cancel(r->worker, req);
        while (ucp_request_check_status(req) == UCS_INPROGRESS)
            ucp_worker_progress(r->worker);
        st = UCS_ERR_TIMED_OUT;
    }
    ucp_request_free(req);
    return st;
}

/* A context and worker that take reply frames. */
static struct itest_raw *raw_new(void)
{
    struct itest_raw *r = calloc(1, sizeof *r);
    cr_assert_not_null(r);
    ucp_params_t cp = {.field_mask = UCP_PARAM_FIELD_FEATURES, .features = UCP_FEATURE_AM};
    ucs_status_t st = ucp_init(&cp, NULL, &r->ctx);
    cr_assert_eq(st, UCS_OK, "ucp_init: %s", ucs_status_string(st));
    ucp_worker_params_t wp = {.field_mask = UCP_WORKER_PARAM_FIELD_THREAD_MODE,
                              .thread_mode = UCS_THREAD_MODE_SINGLE};
    st = ucp_worker_create(r->ctx, &wp, &r->worker);
    cr_assert_eq(st, UCS_OK, "ucp_worker_create: %s", ucs_status_string(st));
    ucp_am_handler_param_t hp = {.field_mask = UCP_AM_HANDLER_PARAM_FIELD_ID |
                                               UCP_AM_HANDLER_PARAM_FIELD_CB |
                                               UCP_AM_HANDLER_PARAM_FIELD_ARG,
                                 .id = KVTC_WIRE_AM_REPLY,
                                 .cb = on_reply,
                                 .arg = r};
    st = ucp_worker_set_am_recv_handler(r->worker, &hp);
    cr_assert_eq(st, UCS_OK);
    return r;
}

/* Finish wire-up before the first send (UCX 1.13 on shared memory). */
static void raw_flush(struct itest_raw *r)
{
    ucp_request_param_t fp = {0};
    ucs_status_t st = wait_req(r, ucp_ep_flush_nbx(r->ep, &fp), 10000);
    cr_assert_eq(st, UCS_OK, "endpoint flush: %s", ucs_status_string(st));
}

struct itest_raw *itest_raw_open(const struct itest_daemon *d)
{
    return itest_raw_open_port(d->port);
}

struct itest_raw *itest_raw_open_port(int port)
{
    struct itest_raw *r = raw_new();
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    ucp_ep_params_t ep = {.field_mask = UCP_EP_PARAM_FIELD_FLAGS | UCP_EP_PARAM_FIELD_SOCK_ADDR |
                                        UCP_EP_PARAM_FIELD_ERR_HANDLING_MODE |
                                        UCP_EP_PARAM_FIELD_ERR_HANDLER,
                          .flags = UCP_EP_PARAMS_FLAGS_CLIENT_SERVER,
                          .sockaddr = {.addr = (struct sockaddr *)&sa, .addrlen = sizeof sa},
                          .err_mode = UCP_ERR_HANDLING_MODE_PEER,
                          .err_handler = {.cb = on_ep_error, .arg = r}};
    ucs_status_t st = ucp_ep_create(r->worker, &ep, &r->ep);
    cr_assert_eq(st, UCS_OK, "ucp_ep_create: %s", ucs_status_string(st));
    raw_flush(r);
    return r;
}

size_t itest_raw_max_header(struct itest_raw *r)
{
    ucp_worker_attr_t wa = {.field_mask = UCP_WORKER_ATTR_FIELD_MAX_AM_HEADER};
    if (ucp_worker_query(r->worker, &wa) != UCS_OK)
        return 0;
    return wa.max_am_header;
}

int itest_raw_send(struct itest_raw *r, unsigned am_id, const void *hdr, size_t hlen,
                   const void *data, size_t dlen)
{
    ucp_request_param_t p = {.op_attr_mask = UCP_OP_ATTR_FIELD_FLAGS,
                             .flags = UCP_AM_SEND_FLAG_REPLY};
    void *req = ucp_am_send_nbx(r->ep, am_id, hdr, hlen, data, dlen, &p);
    ucs_status_t st = wait_req(r, req, 10000);
    return st == UCS_OK ? 0 : -1;
}

void *itest_raw_wait_reply(struct itest_raw *r, int timeout_ms, size_t *len)
{
    long end = now_ms() + timeout_ms;
    while (!r->reply && !r->failed && now_ms() < end)
        ucp_worker_progress(r->worker);
    void *rep = r->reply;
    *len = r->reply_len;
    r->reply = NULL;
    r->reply_len = 0;
    return rep;
}

void itest_raw_close(struct itest_raw *r)
{
    if (!r)
        return;
    if (r->ep) {
        ucp_request_param_t p = {.op_attr_mask = UCP_OP_ATTR_FIELD_FLAGS,
                                 .flags = UCP_EP_CLOSE_FLAG_FORCE};
        wait_req(r, ucp_ep_close_nbx(r->ep, &p), 5000);
    }
    if (r->worker)
        ucp_worker_destroy(r->worker);
    if (r->ctx)
        ucp_cleanup(r->ctx);
    free(r->reply);
    free(r);
}
