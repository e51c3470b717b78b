/* Key chaining with SHA-256 (OpenSSL libcrypto): a key names a whole token
 * prefix, the way vLLM/LMCache hash their blocks, so a lookup of a prompt's
 * chain finds the longest stored prefix. */
#include "keys.h"

#include <openssl/evp.h>
#include <string.h>

/* Tokens are hashed in u32 little-endian whatever the host order, so keys
 * agree across machines; converted in small batches to bound the stack. */
#define TOKEN_BATCH 256

int kvtc__key_hash(const uint8_t *parent, const void *fp, size_t fp_len,
                   const uint32_t *tokens, size_t n_tokens,
                   uint8_t out[KVTC_KEY_BYTES])
{
    if (!out || (!tokens && n_tokens) || (!fp && fp_len))
        return KVTC_EINVAL;
    int rc = KVTC_EIO;
    unsigned int md_len = 0;
    uint8_t md[EVP_MAX_MD_SIZE];
    uint8_t le[TOKEN_BATCH * 4];
    EVP_MD_CTX *ctx = EVP_MD_CTX_new();
    if (!ctx)
        return KVTC_ENOMEM;
    if (EVP_DigestInit_ex(ctx, EVP_sha256(), NULL) != 1)
        goto cleanup;
    if (parent && EVP_DigestUpdate(ctx, parent, KVTC_KEY_BYTES) != 1)
        goto cleanup;
    if (fp_len && EVP_DigestUpdate(ctx, fp, fp_len) != 1)
        goto cleanup;
    for (size_t i = 0; i < n_tokens;) {
        size_t m = n_tokens - i < TOKEN_BATCH ? n_tokens - i : TOKEN_BATCH;
        for (size_t j = 0; j < m; j++) {
            uint32_t t = tokens[i + j];
            le[4 * j] = (uint8_t)t;
            le[4 * j + 1] = (uint8_t)(t >> 8);
            le[4 * j + 2] = (uint8_t)(t >> 16);
            le[4 * j + 3] = (uint8_t)(t >> 24);
        }
        if (EVP_DigestUpdate(ctx, le, 4 * m) != 1)
            goto cleanup;
        i += m;
    }
    if (EVP_DigestFinal_ex(ctx, md, &md_len) != 1 || md_len != KVTC_KEY_BYTES)
        goto cleanup;
    memcpy(out, md, KVTC_KEY_BYTES);
    rc = 0;
cleanup:
    EVP_MD_CTX_free(ctx);
    return rc;
}

int kvtc_key_next(const kvtc_key *parent, const void *fingerprint,
                  size_t fp_len, const uint32_t *tokens, size_t n_tokens,
                  kvtc_key *out)
{
    if (!out)
        return KVTC_EINVAL;
    return kvtc__key_hash(parent ? parent->bytes : NULL, fingerprint, fp_len,
                          tokens, n_tokens, out->bytes);
}

int kvtc_key_chain(const kvtc_key *parent, const void *fingerprint,
                   size_t fp_len, const uint32_t *tokens, size_t n_tokens,
                   uint32_t chunk_tokens, kvtc_key *keys, size_t max_keys,
                   size_t *n_keys)
{
    if (!chunk_tokens || !n_keys || (!keys && max_keys) || (!tokens && n_tokens))
        return KVTC_EINVAL;
    *n_keys = 0;
    size_t whole = n_tokens / chunk_tokens;
    size_t n = whole < max_keys ? whole : max_keys;
    const kvtc_key *prev = parent;
    for (size_t i = 0; i < n; i++) {
        int rc = kvtc_key_next(prev, fingerprint, fp_len,
                               tokens + i * (size_t)chunk_tokens, chunk_tokens,
                               &keys[i]);
        if (rc)
            return rc;
        prev = &keys[i];
    }
    *n_keys = n;
    return 0;
}

static int hex_digit(char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

int kvtc_key_from_hex(const char *hex, kvtc_key *out)
{
    if (!hex || !out)
        return KVTC_EINVAL;
    kvtc_key k;
    for (size_t i = 0; i < KVTC_KEY_BYTES; i++) {
        /* Reading pairwise stops at a NUL before running past a short string. */
        int hi = hex_digit(hex[2 * i]);
        if (hi < 0)
            return KVTC_EINVAL;
        int lo = hex_digit(hex[2 * i + 1]);
        if (lo < 0)
            return KVTC_EINVAL;
        k.bytes[i] = (uint8_t)(hi << 4 | lo);
    }
    if (hex[KVTC_KEY_HEX_LEN] != '\0')
        return KVTC_EINVAL;
    *out = k;
    return 0;
}

void kvtc_key_to_hex(const kvtc_key *key, char out[KVTC_KEY_HEX_LEN + 1])
{
    static const char digits[] = "0123456789abcdef";
    for (size_t i = 0; i < KVTC_KEY_BYTES; i++) {
        out[2 * i] = digits[key->bytes[i] >> 4];
        out[2 * i + 1] = digits[key->bytes[i] & 15];
    }
    out[KVTC_KEY_HEX_LEN] = '\0';
}
