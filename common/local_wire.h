/* local_wire.h - the handshake on kvtcd's unix-domain socket (the same-host
 * local path, docs/protocol.md "Local path"), shared by kvtcd and libkvtc.
 *
 * Both ends run on one host (one kernel), so the two fixed-size records are
 * in the host's byte order. After the reply the socket stays open for the
 * session's life, carrying only region messages (below) where the daemon
 * offers them; either side closing it ends the local path of that session
 * (not the session). */
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
 * the local path) or a negative KVTC_E* code with a reason. Also the
 * answer to each region message. */
struct kvtc_local_reply {
    char magic[8];
    int32_t status;
    uint32_t flags;             /* handshake: KVTC_LOCAL_FLAG_*; 0 from
                                   daemons before regions */
    char msg[112];              /* NUL-terminated */
};

/* The daemon maps client memory shared with it (region messages). */
#define KVTC_LOCAL_FLAG_REGIONS 1u

/* Client -> daemon on a bound socket: a region of the client's memory that
 * is a sealed memfd (F_SEAL_SHRINK and F_SEAL_GROW), sent with the memfd
 * as SCM_RIGHTS (MAP), or the end of one (UNMAP, no descriptor). kvtcd
 * maps it and then copies into and out of it with plain loads and stores
 * instead of process_vm_writev/readv. The client waits for each answer
 * (a kvtc_local_reply) before it names the region in a request or frees
 * it, which orders the socket against the UCX requests. */
#define KVTC_LOCAL_REGION_MAGIC "KVTCRG01"
enum { KVTC_LOCAL_REGION_MAP = 1, KVTC_LOCAL_REGION_UNMAP = 2 };
struct kvtc_local_region {
    char magic[8];
    uint32_t op;                /* KVTC_LOCAL_REGION_* */
    uint32_t reserved;          /* 0 */
    uint64_t id;                /* the client's name for it, unique */
    uint64_t addr;              /* MAP: where the client mapped the memfd */
    uint64_t len;               /* MAP: bytes mapped from offset 0 */
};
/* Regions one session may have mapped at once, and the largest one. */
#define KVTC_LOCAL_MAX_REGIONS 256u
#define KVTC_LOCAL_MAX_REGION_BYTES (1ull << 40)

/* Largest LocalIov list of one Put (a Get has one per key). */
#define KVTC_LOCAL_MAX_IOV 4096u
/* Addresses at or above this are no process's memory (x86-64 with 5-level
 * paging and arm64 with 52-bit VAs stay below 2^57). */
#define KVTC_LOCAL_ADDR_LIMIT (1ull << 57)

#endif
