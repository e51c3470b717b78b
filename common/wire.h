/* wire.h - framing of the kvtc wire protocol, shared by kvtcd and libkvtc.
 *
 * A request travels as UCX active message KVTC_WIRE_AM_REQUEST whose AM
 * header is a frame: a 4-byte little-endian length N followed by N bytes of
 * a packed kvtc.wire.Request (proto/kvtc.proto). A reply travels as
 * KVTC_WIRE_AM_REPLY with a packed kvtc.wire.Reply in the same framing. Bulk
 * chunk bytes are the AM payload, never protobuf `bytes`. docs/protocol.md
 * tells the whole story.
 *
 * Everything here is pure computation: thread-safe, no global state.
 * Unpacking trusts nothing: the length prefix is checked against
 * KVTC_WIRE_MAX_FRAME and the buffer before anything is allocated, and the
 * protobuf-c allocations of one unpack are capped (KVTC_WIRE_UNPACK_BUDGET),
 * so a small hostile frame cannot make the receiver allocate gigabytes. */
#ifndef KVTC_WIRE_H
#define KVTC_WIRE_H

#include <stddef.h>
#include <stdint.h>

#include "kvtc.pb-c.h"
#include "kvtc_codec.h"
#include "kvtc_errors.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Protocol version: a peer of another major is refused with STATUS_VERSION;
 * minors only add optional fields and are compatible both ways. */
#define KVTC_PROTO_MAJOR 1u
#define KVTC_PROTO_MINOR 4u

/* UCX active-message ids. */
#define KVTC_WIRE_AM_REQUEST 1u
#define KVTC_WIRE_AM_REPLY 2u

#define KVTC_WIRE_LEN_BYTES 4u          /* the length prefix */
#define KVTC_WIRE_KEY_BYTES 32u         /* every key and parent */
/* Largest packed message a frame may carry (the AM header). Hard protocol
 * cap; a Lookup of KVTC_WIRE_MAX_BATCH keys takes ~140 KiB. */
#define KVTC_WIRE_MAX_FRAME (1u << 20)
/* Cap on what protobuf-c may allocate while unpacking one frame. */
#define KVTC_WIRE_UNPACK_BUDGET (32u << 20)
/* Most keys or chunks one request may name. A daemon may announce a lower
 * limit in HelloReply.max_batch. */
#define KVTC_WIRE_MAX_BATCH 4096u
/* Default largest chunk a daemon accepts (HelloReply.max_chunk_bytes tells
 * a client the daemon's actual limit). */
#define KVTC_WIRE_DEFAULT_MAX_CHUNK (256ull << 20)
/* Longest tenant, token and client_name strings. */
#define KVTC_WIRE_MAX_NAME 256u
/* The tenant of a Hello that names none. */
#define KVTC_WIRE_DEFAULT_TENANT "default"

/* UCX rendezvous threshold both kvtcd and libkvtc set on their UCP context
 * when UCX_RNDV_THRESH is not in the environment (UCX's own choice is ~20
 * KiB on TCP). A rendezvous costs several round trips, each one needing
 * both processes on a CPU: on a loaded host (2 cores, load 7-12) 256 KiB
 * puts and gets took 3-7x longer by rendezvous than as eager sends. On an
 * idle host the two are even at that size, and from a few MiB rendezvous
 * (zero-copy) wins; eager messages also cost the receiver one copy more and
 * a buffer of their size while in flight. So below 1 MiB eager, from 1 MiB
 * on rendezvous. */
#define KVTC_WIRE_RNDV_THRESH "1m"
#define KVTC_WIRE_RNDV_THRESH_BYTES (1u << 20) /* the same, in bytes */

/* ---- Frames ----------------------------------------------------------- */

/* Check a frame's length prefix: buf must hold at least the prefix, the
 * prefix must be <= KVTC_WIRE_MAX_FRAME and exactly len - 4. On success
 * *body_len is the packed message's length. Errors: KVTC_EPROTO (truncated
 * or inconsistent), KVTC_EINVAL (NULL arguments). */
int kvtc_wire_frame_check(const void *buf, size_t len, size_t *body_len);

/* Bytes of the frame that would carry req / rep (prefix included). */
size_t kvtc_wire_request_frame_size(const Kvtc__Wire__Request *req);
size_t kvtc_wire_reply_frame_size(const Kvtc__Wire__Reply *rep);

/* Pack into a caller buffer of cap bytes; *len gets the frame's size.
 * Errors: KVTC_ENOSPC (cap too small), KVTC_EINVAL (message larger than
 * KVTC_WIRE_MAX_FRAME, or NULL arguments). */
int kvtc_wire_pack_request(const Kvtc__Wire__Request *req, void *buf,
                           size_t cap, size_t *len);
int kvtc_wire_pack_reply(const Kvtc__Wire__Reply *rep, void *buf, size_t cap,
                         size_t *len);

/* Pack into a new malloc'd buffer the caller frees. Errors: KVTC_ENOMEM,
 * KVTC_EINVAL. */
int kvtc_wire_pack_request_alloc(const Kvtc__Wire__Request *req, void **buf,
                                 size_t *len);
int kvtc_wire_pack_reply_alloc(const Kvtc__Wire__Reply *rep, void **buf,
                               size_t *len);

/* Unpack a frame (prefix included). The result is freed with
 * kvtc_wire_request_free / kvtc_wire_reply_free. Errors: KVTC_EPROTO
 * (bad prefix, not a valid message, or over the allocation budget),
 * KVTC_EINVAL (NULL arguments). */
int kvtc_wire_unpack_request(const void *buf, size_t len,
                             Kvtc__Wire__Request **out);
int kvtc_wire_unpack_reply(const void *buf, size_t len,
                           Kvtc__Wire__Reply **out);
void kvtc_wire_request_free(Kvtc__Wire__Request *req);
void kvtc_wire_reply_free(Kvtc__Wire__Reply *rep);

/* ---- Active messages: where the message lies ---------------------------
 *
 * UCX caps an AM header (ucp_worker_query, UCP_WORKER_ATTR_FIELD_MAX_AM_HEADER;
 * about 8 KiB on tcp and shared memory), far below KVTC_WIRE_MAX_FRAME. So
 * a frame travels in one of two ways:
 *   inline:  AM header = the whole frame (4-byte N + N bytes), AM data =
 *            bulk bytes. Use it when 4 + N <= the worker's max AM header.
 *   in data: AM header = the 4-byte prefix alone, AM data = the N message
 *            bytes followed by the bulk bytes.
 * A header of exactly 4 bytes therefore means "in data" (an empty message
 * is never valid: id is required). */

/* Classify an incoming AM. On success *msg_len is N and *in_data says
 * where the message is: 0: header + 4; 1: the first N bytes of the data
 * (data_len bytes in all, so bulk = data_len - N). Errors: KVTC_EPROTO. */
int kvtc_wire_am_split(const void *header, size_t header_len, size_t data_len,
                       size_t *msg_len, int *in_data);

/* Unpack a bare message (no prefix) of len <= KVTC_WIRE_MAX_FRAME bytes:
 * for the "in data" form. Same errors and freeing as the frame forms. */
int kvtc_wire_unpack_request_msg(const void *msg, size_t len,
                                 Kvtc__Wire__Request **out);
int kvtc_wire_unpack_reply_msg(const void *msg, size_t len,
                               Kvtc__Wire__Reply **out);

/* ---- Validation helpers ----------------------------------------------- */

/* 1 when a key field holds exactly KVTC_WIRE_KEY_BYTES bytes. */
int kvtc_wire_key_ok(const ProtobufCBinaryData *key);
/* 1 when a peer speaking major can talk to us. */
int kvtc_wire_version_ok(uint32_t major);
/* 1 for a known Encoding value (proto2 enums arrive unchecked). */
int kvtc_wire_encoding_ok(int encoding);

/* Message <-> struct kvtc_layout. from_msg does not check bounds: call
 * kvtc_layout_check on the result. to_msg fills every optional field. */
void kvtc_wire_layout_from_msg(const Kvtc__Wire__Layout *msg,
                               kvtc_layout *out);
void kvtc_wire_layout_to_msg(const kvtc_layout *layout,
                             Kvtc__Wire__Layout *msg);

/* XXH3-64 of a payload, the checksum of ChunkMeta.checksum. */
uint64_t kvtc_wire_checksum(const void *buf, size_t len);
/* Copy len bytes src -> dst and set *sum to the checksum of the copy, in
 * one pass over memory (pieces hashed right after they are copied): where
 * bytes are copied anyway, checking them costs little more. Same value as
 * kvtc_wire_checksum(dst, len). Errors: KVTC_EINVAL, KVTC_ENOMEM. */
int kvtc_wire_copy_checksum(void *dst, const void *src, size_t len,
                            uint64_t *sum);

/* ---- Status <-> error codes ------------------------------------------- */

/* The KVTC_E* code a client reports for a wire status (OK -> 0). */
int kvtc_wire_status_to_err(int status);
/* The wire status a daemon answers for a KVTC_E* code (0 -> OK). */
Kvtc__Wire__Status kvtc_wire_err_to_status(int err);
/* "OK", "NOT_FOUND", ...; "UNKNOWN" for other values. Never NULL. */
const char *kvtc_wire_status_name(int status);

#ifdef __cplusplus
}
#endif
#endif
