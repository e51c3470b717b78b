/* local_wire.h - the handshake on kvtcd's unix-domain socket (the same-host
 * local path, docs/protocol.md "Local path"), shared by kvtcd and libkvtc.
 *
 * Both ends run on one host (one kernel), so the two fixed-size records are
 * in the host's byte order. The socket carries nothing else: after the
 * reply it stays open, idle, for the session's life; either side closing
 * it ends the local path of that session (not the session). */
#ifndef KVTC_LOCAL_WIRE_H
#define KVTC_LOCAL_WIRE_H

#include <stdint.h>

#define KVTC_LOCAL_MAGIC "KVTCLP01"  /* 8 bytes, no NUL on the wire */
#define KVTC_LOCAL_PROBE_BYTES 32u

/* Client -> daemon, right after connect. The daemon takes the client's pid
 * from SO_PEERCRED (never from here), checks session_id and token against
 * the UCX session (HelloReply.session_id, HelloReply.bind_token), then
 * reads probe_addr in the client with process_vm_readv and compares it
 * with probe[]: proof that it may read (and write) this process. */
struct kvtc_local_hello {
    char magic[8];
    uint64_t session_id;
    uint64_t token;
    uint64_t probe_addr;
    uint8_t probe[KVTC_LOCAL_PROBE_BYTES];
};

/* Daemon -> client: status 0 (the session's bulk bytes may now travel by
 * the local path) or a negative KVTC_E* code with a reason. */
struct kvtc_local_reply {
    char magic[8];
    int32_t status;
    uint32_t reserved;
    char msg[112];              /* NUL-terminated */
};

/* Largest LocalIov list of one Put (a Get has one per key). */
#define KVTC_LOCAL_MAX_IOV 4096u
/* Addresses at or above this are no process's memory (x86-64 with 5-level
 * paging and arm64 with 52-bit VAs stay below 2^57). */
#define KVTC_LOCAL_ADDR_LIMIT (1ull << 57)

#endif
