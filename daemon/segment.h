/* segment.h - the disk tier's record and summary formats: pure encode,
 * parse and verify functions, no I/O (store_disk.c does the I/O).
 *
 * A record is a header (at most KVTCD_SEG_HDR_BYTES; the payload always
 * starts at that offset in the record) then the payload, padded to the
 * direct-I/O alignment. All integers are little-endian. The header carries
 * its own XXH3-64 and the payload's, the segment number and the record's
 * offset (so a header copied into some payload and found by a resync scan
 * at another place is not taken for a record). docs/tiers.md has the byte
 * layout.
 *
 * A summary (.sum) lists the headers of a sealed segment, checksummed, so
 * a restart reads one small file instead of scanning the segment.
 *
 * Thread-safety: all functions are reentrant (no shared state). */
#ifndef KVTCD_SEGMENT_H
#define KVTCD_SEGMENT_H

#include <stddef.h>
#include <stdint.h>

#include "store_disk.h"

#define KVTCD_SEG_MAGIC 0x3152564bu     /* "KVR1" */
#define KVTCD_SEG_SUM_MAGIC 0x3153564bu /* "KVS1" */
#define KVTCD_SEG_VERSION 1
/* The payload's offset in every record: the header area. 512 keeps small
 * chunks in one 4 KiB block and leaves payloads aligned on file systems
 * with 512-byte direct I/O, so aligned callers' buffers are written
 * without a copy. */
#define KVTCD_SEG_HDR_BYTES 512u
#define KVTCD_SEG_HDR_FIXED 184u        /* header bytes before the tenant */
#define KVTCD_SEG_SUM_HEAD 24u
/* Largest payload of one record (far above any chunk; keeps offset
 * arithmetic of untrusted headers away from overflow). */
#define KVTCD_SEG_MAX_PAYLOAD (1ull << 40)

enum kvtcd_seg_kind {
    KVTCD_SEG_RECORD = 1,
    KVTCD_SEG_TOMBSTONE = 2
};

/* One record header, decoded. m.size is the payload length, m.checksum
 * its XXH3-64, m.seq the store-wide sequence number. */
typedef struct kvtcd_seg_hdr {
    uint8_t kind;               /* enum kvtcd_seg_kind */
    uint8_t align_shift;        /* log2 of the alignment it was written
                                   with (9..16): records say their own
                                   length, whatever the store's alignment
                                   is when they are read */
    uint32_t seg;               /* segment number it was written to */
    uint64_t off;               /* offset of the record in that segment */
    kvtcd_disk_meta m;
} kvtcd_seg_hdr;

/* Bytes the encoded header of h takes (its hdr_len field): the fixed part,
 * the tenant, padding to 8, the header checksum. At most
 * KVTCD_SEG_HDR_BYTES. */
size_t kvtcd_seg_hdr_len(const kvtcd_seg_hdr *h);

/* Encode h into out (cap >= kvtcd_seg_hdr_len(h)); *len gets the bytes
 * written. The header checksum is computed here. Errors: KVTC_EINVAL (kind
 * unknown, tenant too long or with a NUL, payload too large, tombstone with
 * a payload). */
int kvtcd_seg_hdr_encode(const kvtcd_seg_hdr *h, uint8_t *out, size_t cap,
                         size_t *len);

/* Parse and verify a header from untrusted bytes (avail of them at buf):
 * magic, version, lengths, flags, header checksum. Errors: KVTC_ECORRUPT
 * (any check fails, or avail too short), KVTC_EVERSION (a valid-looking
 * header of another format version). Does not check seg/off against the
 * place it was read from: the caller does. */
int kvtcd_seg_hdr_parse(const void *buf, size_t avail, kvtcd_seg_hdr *out);

/* Record length on disk for a payload of len bytes: header area + payload
 * rounded up to align (a power of two). 0 when len is too large. */
uint64_t kvtcd_seg_rec_len(uint64_t len, size_t align);
/* The length of the record h heads (its payload, its alignment). */
uint64_t kvtcd_seg_hdr_rec_len(const kvtcd_seg_hdr *h);
#define KVTCD_SEG_MIN_SHIFT 9
#define KVTCD_SEG_MAX_SHIFT 16

/* 1 when the n bytes at buf are all zero (a never-written block). */
int kvtcd_seg_is_zero(const void *buf, size_t n);

/* File names: DIR/seg-NNNNNNNN.kvs and .sum. kvtcd_seg_name_parse returns
 * 0 and the number for "seg-<8 hex digits>.kvs" (ext "kvs") or ".sum"
 * names, KVTC_EINVAL for anything else. */
int kvtcd_seg_name(char *out, size_t cap, const char *dir, uint32_t seg,
                   const char *ext);
int kvtcd_seg_name_parse(const char *name, const char *ext, uint32_t *seg);

/* ---- Summary files -------------------------------------------------- */
/* Layout: magic u32, version u16, reserved u16, seg u32, count u32,
 * data_end u64 (segment bytes covered), then count entries (u16 length +
 * that many header bytes, as kvtcd_seg_hdr_encode wrote them), then the
 * XXH3-64 of everything before it. */

typedef struct kvtcd_seg_sum {
    uint8_t *buf;               /* owned; malloc'ed */
    size_t len, cap;
    uint32_t count;
} kvtcd_seg_sum;

/* Start an empty summary (reserves the head). Errors: KVTC_ENOMEM. */
int kvtcd_seg_sum_init(kvtcd_seg_sum *s);
/* Append one encoded header (hdr_len bytes). Errors: KVTC_ENOMEM,
 * KVTC_EINVAL (hdr_len out of range). */
int kvtcd_seg_sum_add(kvtcd_seg_sum *s, const uint8_t *hdr, size_t hdr_len);
/* Fill the head and append the checksum; s->buf[0..s->len) is then the
 * file. Errors: KVTC_ENOMEM. */
int kvtcd_seg_sum_finish(kvtcd_seg_sum *s, uint32_t seg, uint64_t data_end);
void kvtcd_seg_sum_free(kvtcd_seg_sum *s);

/* Verify a summary read from a file (untrusted): magic, version, segment
 * number, checksum, and that the entries fill it exactly. On 0, *count and
 * *data_end are set and kvtcd_seg_sum_next walks the entries. Errors:
 * KVTC_ECORRUPT, KVTC_EVERSION. */
int kvtcd_seg_sum_verify(const void *buf, size_t len, uint32_t seg,
                         uint32_t *count, uint64_t *data_end);
/* Next entry at *pos (start with *pos = 0) of a verified summary: its raw
 * header bytes (raw, raw_len) and the parsed header. Errors:
 * KVTC_ENOENT at the end, KVTC_ECORRUPT (an entry fails to parse). */
int kvtcd_seg_sum_next(const void *buf, size_t len, size_t *pos,
                       const uint8_t **raw, size_t *raw_len,
                       kvtcd_seg_hdr *out);

#endif
