/* Key chaining: SHA-256(parent || fingerprint || tokens as u32 LE), pinned
 * against vectors computed independently with Python's hashlib:
 *   h = hashlib.sha256(); h.update(parent or b""); h.update(fp)
 *   h.update(b"".join(struct.pack("<I", t) for t in tokens)) */
#include <criterion/criterion.h>
#include <string.h>

#include "kvtc.h"

static const char FP[] = "llama-3-8b/tp0/bf16";

static void expect_hex(const kvtc_key *k, const char *hex)
{
    char got[KVTC_KEY_HEX_LEN + 1];
    kvtc_key_to_hex(k, got);
    cr_assert_str_eq(got, hex);
}

Test(keys, first_and_second_chunk_match_hashlib)
{
    uint32_t t[32];
    for (uint32_t i = 0; i < 32; i++)
        t[i] = i + 1;
    kvtc_key k1, k2;
    cr_assert_eq(kvtc_key_next(NULL, FP, strlen(FP), t, 16, &k1), 0);
    expect_hex(&k1, "84ca8c82572062817c5d39000c1fe03e96f9c57d65c82ffa6b2f64be11fb6025");
    cr_assert_eq(kvtc_key_next(&k1, FP, strlen(FP), t + 16, 16, &k2), 0);
    expect_hex(&k2, "8a28444585bfe00f8d6c20c7bfc20c75f243e83317ee4ffa366d54e4033552c5");
    /* out may alias parent */
    cr_assert_eq(kvtc_key_next(&k1, FP, strlen(FP), t + 16, 16, &k1), 0);
    cr_assert_eq(memcmp(&k1, &k2, sizeof k1), 0);
}

Test(keys, token_ids_are_little_endian_u32)
{
    const uint32_t t[] = {0, 0xFFFFFFFFu, 0x12345678u};
    kvtc_key k;
    cr_assert_eq(kvtc_key_next(NULL, NULL, 0, t, 3, &k), 0);
    expect_hex(&k, "bd3e331ac95ef6f89afcef3dd0b8df31cb04a18842afd2aafed480efc192371b");
    cr_assert_eq(kvtc_key_next(NULL, NULL, 0, NULL, 0, &k), 0);
    expect_hex(&k, "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
}

Test(keys, long_chunk_crosses_internal_batches)
{
    uint32_t t[1000];
    for (uint32_t i = 0; i < 1000; i++)
        t[i] = i * 7919u % 50000u;
    kvtc_key k;
    cr_assert_eq(kvtc_key_next(NULL, FP, strlen(FP), t, 1000, &k), 0);
    expect_hex(&k, "3c8dd9a4e59b477ddd749b7989c792e0dccd7483114fdc1d52c2f57c7b9567d4");
}

Test(keys, chain_keys_whole_chunks_only)
{
    uint32_t t[32];
    for (uint32_t i = 0; i < 32; i++)
        t[i] = i + 1;
    kvtc_key root;
    cr_assert_eq(kvtc_key_next(NULL, FP, strlen(FP), t, 16, &root), 0);
    uint32_t toks[10];
    for (uint32_t i = 0; i < 10; i++)
        toks[i] = 100 + i;
    kvtc_key keys[4];
    size_t n = 99;
    /* 10 tokens in chunks of 4: two keys, the trailing 2 tokens get none */
    cr_assert_eq(kvtc_key_chain(&root, FP, strlen(FP), toks, 10, 4, keys, 4, &n), 0);
    cr_assert_eq(n, 2);
    expect_hex(&keys[0], "1e30f53328afc3a43831e12c173c5b9dae656b4a354cad1dbf72b236bbecfb5b");
    expect_hex(&keys[1], "fbf03c64b3d913a5dfc802d74af3e6f3494f9b1ce714659dd70397c3d0f042a7");
    /* max_keys caps the output */
    cr_assert_eq(kvtc_key_chain(&root, FP, strlen(FP), toks, 10, 4, keys, 1, &n), 0);
    cr_assert_eq(n, 1);
    expect_hex(&keys[0], "1e30f53328afc3a43831e12c173c5b9dae656b4a354cad1dbf72b236bbecfb5b");
    cr_assert_eq(kvtc_key_chain(&root, FP, strlen(FP), toks, 10, 0, keys, 4, &n), KVTC_EINVAL);
}

Test(keys, distinct_fingerprints_distinct_keys)
{
    const uint32_t t[] = {1, 2, 3, 4};
    kvtc_key a, b;
    cr_assert_eq(kvtc_key_next(NULL, "m1", 2, t, 4, &a), 0);
    cr_assert_eq(kvtc_key_next(NULL, "m2", 2, t, 4, &b), 0);
    cr_assert_neq(memcmp(&a, &b, sizeof a), 0);
}

Test(keys, hex_round_trip_and_rejects)
{
    const char *hex = "84CA8C82572062817c5d39000c1fe03e96f9c57d65c82ffa6b2f64be11fb6025";
    kvtc_key k;
    cr_assert_eq(kvtc_key_from_hex(hex, &k), 0);
    cr_assert_eq(k.bytes[0], 0x84);
    cr_assert_eq(k.bytes[31], 0x25);
    expect_hex(&k, "84ca8c82572062817c5d39000c1fe03e96f9c57d65c82ffa6b2f64be11fb6025");
    cr_assert_eq(kvtc_key_from_hex("84ca", &k), KVTC_EINVAL);
    cr_assert_eq(kvtc_key_from_hex("", &k), KVTC_EINVAL);
    /* one digit too many, one non-hex digit */
    cr_assert_eq(kvtc_key_from_hex("84ca8c82572062817c5d39000c1fe03e96f9c57d65c82ffa6b2f64be11fb60250",
                                   &k), KVTC_EINVAL);
    cr_assert_eq(kvtc_key_from_hex("84ca8c82572062817c5d39000c1fe03e96f9c57d65c82ffa6b2f64be11fb602g",
                                   &k), KVTC_EINVAL);
    cr_assert_eq(kvtc_key_from_hex(NULL, &k), KVTC_EINVAL);
    cr_assert_eq(kvtc_key_next(NULL, NULL, 0, NULL, 3, &k), KVTC_EINVAL);
}
