/* The disk tier's record and summary formats (daemon/segment.c): every
 * field survives encode/parse, any damaged byte of a header or summary is
 * caught, lengths and names are computed and validated as specified. */
#include <criterion/criterion.h>
#include <string.h>
#include <xxhash.h>

#include "kvtc_errors.h"
#include "segment.h"

static void sample(kvtcd_seg_hdr *h, const char *tenant)
{
    memset(h, 0, sizeof *h);
    h->kind = KVTCD_SEG_RECORD;
    h->align_shift = 12;
    h->seg = 0x01020304;
    h->off = 0x123456789000ull;
    snprintf(h->m.tenant, sizeof h->m.tenant, "%s", tenant);
    for (int i = 0; i < 32; i++) {
        h->m.key[i] = (uint8_t)(i * 7 + 1);
        h->m.parent[i] = (uint8_t)(255 - i);
    }
    h->m.has_parent = 1;
    h->m.has_layout = 1;
    h->m.encoding = 3;
    h->m.first_pos = 4096;
    h->m.n_tokens = 128;
    h->m.chunk_flags = 0x5;
    h->m.layout = (kvtc_layout){.layers = 30, .kv_heads = 3, .head_dim = 64,
                                .dtype = 1, .chunk_tokens = 128,
                                .rope_style = 1, .rope_scaling = 2,
                                .rope_orig_max_pos = 8192,
                                .rope_theta = 100000.0f,
                                .rope_factor = 8.0f,
                                .rope_low_freq_factor = 1.0f,
                                .rope_high_freq_factor = 4.0f};
    h->m.size = 1234567;
    h->m.checksum = 0xfeedfacecafebeefull;
    h->m.expire_unix_ms = 1790000000123ull;
    h->m.seq = 99;
}

Test(daemon_segment, header_roundtrip_every_field)
{
    kvtcd_seg_hdr h, g;
    sample(&h, "tenant-a");
    uint8_t buf[KVTCD_SEG_HDR_BYTES];
    size_t n = 0;
    cr_assert_eq(kvtcd_seg_hdr_encode(&h, buf, sizeof buf, &n), 0);
    cr_assert_eq(n, kvtcd_seg_hdr_len(&h));
    cr_assert_eq(n % 8, 0);
    cr_assert_eq(kvtcd_seg_hdr_parse(buf, n, &g), 0);
    cr_assert_eq(memcmp(&h.m.layout, &g.m.layout, sizeof h.m.layout), 0);
    cr_assert_eq(g.kind, h.kind);
    cr_assert_eq(g.align_shift, 12);
    cr_assert_eq(kvtcd_seg_hdr_rec_len(&g), kvtcd_seg_rec_len(h.m.size, 4096));
    cr_assert_eq(g.seg, h.seg);
    cr_assert_eq(g.off, h.off);
    cr_assert_str_eq(g.m.tenant, "tenant-a");
    cr_assert_eq(memcmp(g.m.key, h.m.key, 32), 0);
    cr_assert_eq(memcmp(g.m.parent, h.m.parent, 32), 0);
    cr_assert_eq(g.m.has_parent, 1);
    cr_assert_eq(g.m.has_layout, 1);
    cr_assert_eq(g.m.encoding, 3);
    cr_assert_eq(g.m.first_pos, 4096);
    cr_assert_eq(g.m.n_tokens, 128);
    cr_assert_eq(g.m.chunk_flags, 5);
    cr_assert_eq(g.m.size, h.m.size);
    cr_assert_eq(g.m.checksum, h.m.checksum);
    cr_assert_eq(g.m.expire_unix_ms, h.m.expire_unix_ms);
    cr_assert_eq(g.m.seq, 99);
}

Test(daemon_segment, header_without_parent_or_layout_reads_zeros)
{
    kvtcd_seg_hdr h, g;
    sample(&h, "");
    h.m.has_parent = 0;
    h.m.has_layout = 0;
    uint8_t buf[KVTCD_SEG_HDR_BYTES];
    size_t n;
    cr_assert_eq(kvtcd_seg_hdr_encode(&h, buf, sizeof buf, &n), 0);
    cr_assert_eq(kvtcd_seg_hdr_parse(buf, n, &g), 0);
    cr_assert_str_eq(g.m.tenant, "");
    cr_assert_eq(g.m.has_parent, 0);
    cr_assert_eq(g.m.layout.layers, 0);
    uint8_t zero[32] = {0};
    cr_assert_eq(memcmp(g.m.parent, zero, 32), 0);
}

Test(daemon_segment, longest_tenant_fits_the_header_area)
{
    kvtcd_seg_hdr h, g;
    sample(&h, "");
    memset(h.m.tenant, 'x', KVTCD_DISK_TENANT_MAX);
    h.m.tenant[KVTCD_DISK_TENANT_MAX] = '\0';
    uint8_t buf[KVTCD_SEG_HDR_BYTES];
    size_t n;
    cr_assert_eq(kvtcd_seg_hdr_encode(&h, buf, sizeof buf, &n), 0);
    cr_assert_leq(n, KVTCD_SEG_HDR_BYTES);
    cr_assert_eq(kvtcd_seg_hdr_parse(buf, n, &g), 0);
    cr_assert_eq(strlen(g.m.tenant), KVTCD_DISK_TENANT_MAX);
}

Test(daemon_segment, every_flipped_bit_is_caught)
{
    kvtcd_seg_hdr h, g;
    sample(&h, "t");
    uint8_t buf[KVTCD_SEG_HDR_BYTES];
    size_t n;
    cr_assert_eq(kvtcd_seg_hdr_encode(&h, buf, sizeof buf, &n), 0);
    for (size_t i = 0; i < n; i++) {
        for (int b = 0; b < 8; b++) {
            buf[i] ^= (uint8_t)(1u << b);
            int rc = kvtcd_seg_hdr_parse(buf, sizeof buf, &g);
            cr_assert(rc == KVTC_ECORRUPT, "byte %zu bit %d: rc %d", i, b, rc);
            buf[i] ^= (uint8_t)(1u << b);
        }
    }
    cr_assert_eq(kvtcd_seg_hdr_parse(buf, sizeof buf, &g), 0);
}

Test(daemon_segment, short_or_zero_input_is_corrupt)
{
    kvtcd_seg_hdr h, g;
    sample(&h, "tenant");
    uint8_t buf[KVTCD_SEG_HDR_BYTES];
    size_t n;
    cr_assert_eq(kvtcd_seg_hdr_encode(&h, buf, sizeof buf, &n), 0);
    for (size_t avail = 0; avail < n; avail++)
        cr_assert_eq(kvtcd_seg_hdr_parse(buf, avail, &g), KVTC_ECORRUPT);
    uint8_t zero[KVTCD_SEG_HDR_BYTES] = {0};
    cr_assert_eq(kvtcd_seg_hdr_parse(zero, sizeof zero, &g), KVTC_ECORRUPT);
    cr_assert(kvtcd_seg_is_zero(zero, sizeof zero));
    cr_assert(!kvtcd_seg_is_zero(buf, sizeof buf));
    zero[511] = 1;
    cr_assert(!kvtcd_seg_is_zero(zero, sizeof zero));
}

/* A header of another version with a valid checksum is a version error,
 * not corruption; one whose checksum fails is corruption either way. */
Test(daemon_segment, other_version_is_eversion)
{
    kvtcd_seg_hdr h, g;
    sample(&h, "t");
    uint8_t buf[KVTCD_SEG_HDR_BYTES];
    size_t n;
    cr_assert_eq(kvtcd_seg_hdr_encode(&h, buf, sizeof buf, &n), 0);
    buf[4] = 2;
    cr_assert_eq(kvtcd_seg_hdr_parse(buf, n, &g), KVTC_ECORRUPT);
    uint64_t sum = XXH3_64bits(buf, n - 8);
    for (int i = 0; i < 8; i++)
        buf[n - 8 + i] = (uint8_t)(sum >> (8 * i));
    cr_assert_eq(kvtcd_seg_hdr_parse(buf, n, &g), KVTC_EVERSION);
}

Test(daemon_segment, bad_headers_are_refused_at_encode)
{
    kvtcd_seg_hdr h;
    uint8_t buf[KVTCD_SEG_HDR_BYTES];
    size_t n;
    sample(&h, "t");
    h.kind = 7;
    cr_assert_eq(kvtcd_seg_hdr_encode(&h, buf, sizeof buf, &n), KVTC_EINVAL);
    sample(&h, "t");
    h.kind = KVTCD_SEG_TOMBSTONE; /* with a payload size */
    cr_assert_eq(kvtcd_seg_hdr_encode(&h, buf, sizeof buf, &n), KVTC_EINVAL);
    h.m.size = 0;
    cr_assert_eq(kvtcd_seg_hdr_encode(&h, buf, sizeof buf, &n), 0);
    sample(&h, "t");
    cr_assert_eq(kvtcd_seg_hdr_encode(&h, buf, 100, &n), KVTC_EINVAL);
    h.m.size = KVTCD_SEG_MAX_PAYLOAD + 1;
    cr_assert_eq(kvtcd_seg_hdr_encode(&h, buf, sizeof buf, &n), KVTC_EINVAL);
    sample(&h, "t");
    h.align_shift = 8;
    cr_assert_eq(kvtcd_seg_hdr_encode(&h, buf, sizeof buf, &n), KVTC_EINVAL);
    h.align_shift = 17;
    cr_assert_eq(kvtcd_seg_hdr_encode(&h, buf, sizeof buf, &n), KVTC_EINVAL);
}

Test(daemon_segment, record_lengths)
{
    cr_assert_eq(kvtcd_seg_rec_len(0, 4096), 4096);
    cr_assert_eq(kvtcd_seg_rec_len(1, 4096), 4096);
    cr_assert_eq(kvtcd_seg_rec_len(4096 - 512, 4096), 4096);
    cr_assert_eq(kvtcd_seg_rec_len(4096 - 511, 4096), 8192);
    cr_assert_eq(kvtcd_seg_rec_len(1, 512), 1024);
    cr_assert_eq(kvtcd_seg_rec_len(0, 512), 512);
    cr_assert_eq(kvtcd_seg_rec_len(4 << 20, 512), (4 << 20) + 512);
    cr_assert_eq(kvtcd_seg_rec_len(1, 3000), 0);
    cr_assert_eq(kvtcd_seg_rec_len(KVTCD_SEG_MAX_PAYLOAD + 1, 4096), 0);
}

Test(daemon_segment, names)
{
    char p[256];
    cr_assert_eq(kvtcd_seg_name(p, sizeof p, "/d", 0xab, "kvs"), 0);
    cr_assert_str_eq(p, "/d/seg-000000ab.kvs");
    uint32_t s = 0;
    cr_assert_eq(kvtcd_seg_name_parse("seg-000000ab.kvs", "kvs", &s), 0);
    cr_assert_eq(s, 0xab);
    cr_assert_eq(kvtcd_seg_name_parse("seg-ffffffff.sum", "sum", &s), 0);
    cr_assert_eq(s, 0xffffffffu);
    const char *bad[] = {"seg-000000ab.sum", "seg-000000AB.kvs",
                         "seg-00000ab.kvs", "seg-000000ab.kvs.tmp",
                         "xeg-000000ab.kvs", "seg-0000g0ab.kvs", ""};
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++)
        cr_assert_eq(kvtcd_seg_name_parse(bad[i], "kvs", &s), KVTC_EINVAL,
                     "%s", bad[i]);
    cr_assert_eq(kvtcd_seg_name(p, 8, "/long/dir", 1, "kvs"), KVTC_EINVAL);
}

static void build_sum(kvtcd_seg_sum *s, uint32_t seg, int n)
{
    cr_assert_eq(kvtcd_seg_sum_init(s), 0);
    for (int i = 0; i < n; i++) {
        kvtcd_seg_hdr h;
        sample(&h, i % 2 ? "odd" : "an-even-tenant");
        h.seg = seg;
        h.off = (uint64_t)i * 8192;
        h.m.seq = (uint64_t)i + 1;
        uint8_t buf[KVTCD_SEG_HDR_BYTES];
        size_t len;
        cr_assert_eq(kvtcd_seg_hdr_encode(&h, buf, sizeof buf, &len), 0);
        cr_assert_eq(kvtcd_seg_sum_add(s, buf, len), 0);
    }
    cr_assert_eq(kvtcd_seg_sum_finish(s, seg, (uint64_t)n * 8192), 0);
}

Test(daemon_segment, summary_roundtrip)
{
    kvtcd_seg_sum s;
    build_sum(&s, 7, 1000);
    uint32_t count;
    uint64_t end;
    cr_assert_eq(kvtcd_seg_sum_verify(s.buf, s.len, 7, &count, &end), 0);
    cr_assert_eq(count, 1000);
    cr_assert_eq(end, 1000 * 8192);
    size_t pos = 0;
    const uint8_t *raw;
    size_t raw_len;
    kvtcd_seg_hdr h;
    for (int i = 0; i < 1000; i++) {
        cr_assert_eq(kvtcd_seg_sum_next(s.buf, s.len, &pos, &raw, &raw_len,
                                        &h), 0);
        cr_assert_eq(h.off, (uint64_t)i * 8192);
        cr_assert_eq(h.m.seq, (uint64_t)i + 1);
        cr_assert_str_eq(h.m.tenant, i % 2 ? "odd" : "an-even-tenant");
        cr_assert_eq(raw_len, kvtcd_seg_hdr_len(&h));
    }
    cr_assert_eq(kvtcd_seg_sum_next(s.buf, s.len, &pos, &raw, &raw_len, &h),
                 KVTC_ENOENT);
    /* Wrong segment number: a summary copied beside another segment. */
    cr_assert_eq(kvtcd_seg_sum_verify(s.buf, s.len, 8, &count, &end),
                 KVTC_ECORRUPT);
    kvtcd_seg_sum_free(&s);
}

Test(daemon_segment, empty_summary)
{
    kvtcd_seg_sum s;
    build_sum(&s, 1, 0);
    uint32_t count = 9;
    uint64_t end = 9;
    cr_assert_eq(kvtcd_seg_sum_verify(s.buf, s.len, 1, &count, &end), 0);
    cr_assert_eq(count, 0);
    cr_assert_eq(end, 0);
    size_t pos = 0;
    const uint8_t *raw;
    size_t raw_len;
    kvtcd_seg_hdr h;
    cr_assert_eq(kvtcd_seg_sum_next(s.buf, s.len, &pos, &raw, &raw_len, &h),
                 KVTC_ENOENT);
    kvtcd_seg_sum_free(&s);
}

Test(daemon_segment, damaged_summary_is_refused)
{
    kvtcd_seg_sum s;
    build_sum(&s, 3, 50);
    uint32_t count;
    uint64_t end;
    /* A flipped byte anywhere (sampled every 7 bytes), or a truncation. */
    for (size_t i = 0; i < s.len; i += 7) {
        s.buf[i] ^= 0x10;
        cr_assert_eq(kvtcd_seg_sum_verify(s.buf, s.len, 3, &count, &end),
                     KVTC_ECORRUPT, "byte %zu", i);
        s.buf[i] ^= 0x10;
    }
    for (size_t l = 0; l < s.len; l += 97)
        cr_assert_eq(kvtcd_seg_sum_verify(s.buf, l, 3, &count, &end),
                     KVTC_ECORRUPT);
    cr_assert_eq(kvtcd_seg_sum_verify(s.buf, s.len, 3, &count, &end), 0);
    kvtcd_seg_sum_free(&s);
}
