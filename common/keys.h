/* keys.h - key chaining and hex keys, shared by libkvtc and kvtcd.
 *
 * The public functions (kvtc_key_next, kvtc_key_chain, kvtc_key_from_hex,
 * kvtc_key_to_hex) are declared in include/kvtc.h; this header adds the
 * raw-byte form the daemon uses, which never needs struct kvtc_key. */
#ifndef KVTC_KEYS_H
#define KVTC_KEYS_H

#include <stddef.h>
#include <stdint.h>

#include "kvtc.h"

/* out = SHA-256(parent(32 bytes, or nothing when NULL) || fp || tokens as
 * u32 LE). out may alias parent. 0 or KVTC_EINVAL / KVTC_ENOMEM / KVTC_EIO. */
int kvtc__key_hash(const uint8_t *parent, const void *fp, size_t fp_len,
                   const uint32_t *tokens, size_t n_tokens,
                   uint8_t out[KVTC_KEY_BYTES]);

#endif
