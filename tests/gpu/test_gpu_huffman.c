/* Our Huffman-only DEFLATE on the GPU (kernels/gpu_huffman_*.cu): the
 * encoder's pieces and index are byte-identical to the host reference
 * (kernels/huff_core.h, which tests/unit checks against zlib, libdeflate
 * and inflate_core.h) and zlib reads them; the indexed decoder gives the
 * input back, one thread per sub-range, and fails any tampered index
 * (moved, swapped, out of range entries, another piece count); codec level:
 * version 2 containers from the GPU decode on the CPU and, mixed in one
 * batch with CPU (version 1) ones, on the GPU; thousands of chunks; a
 * damaged index behind repaired checksums is KVTC_ECORRUPT on the GPU.
 * Every test skips when no GPU is present. */
#include <stdlib.h>
#include <string.h>

#include "../../codec/container.h"
#include "../../kernels/gpu_huffman.h"
#include "../../kernels/huff_core.h"
#include "../fuzz/repair.h"
#include "gpu_test_util.h"
#include "inflate_gen.h"

#define SLOT 65552u /* >= KVTC_HC_MAX_OUT, a multiple of 16 */

struct set {
    uint32_t n;
    uint8_t **data;
    uint32_t *len;
};

static void add(struct set *s, uint8_t *d, uint32_t len)
{
    s->data = realloc(s->data, sizeof *s->data * (s->n + 1));
    s->len = realloc(s->len, sizeof *s->len * (s->n + 1));
    s->data[s->n] = d;
    s->len[s->n++] = len;
}

/* count pieces of n0, n0 + step, ... bytes, of kinds[i % nk] in turn. */
static void add_ramp(struct set *s, uint32_t count, uint32_t n0, uint32_t step, const int *kinds,
                     uint32_t nk, uint64_t *seed)
{
    for (uint32_t i = 0; i < count; i++) {
        uint32_t n = n0 + step * i;
        uint8_t *p = malloc(n);
        ig_data(p, n, kinds[i % nk], seed);
        add(s, p, n);
    }
}

static void set_free(struct set *s)
{
    for (uint32_t i = 0; i < s->n; i++)
        free(s->data[i]);
    free(s->data);
    free(s->len);
}

/* Device copies of a set's pieces, their compressed slots and indexes. */
struct dev {
    uint32_t n;
    uint8_t *in, *cmp, *out, *idx;
    void **d_in, **d_cmp, **d_out;
    uint16_t **d_idx16;
    size_t *d_len, *d_clen;
    int32_t *d_st;
};

/* Where each piece starts in its input slot: 0 (16-byte aligned, as the
 * codec's pieces are) or 4 (the API's least alignment). */
static size_t in_offset;

static void dev_up(struct dev *d, const struct set *s, uint32_t log2)
{
    d->n = s->n;
    CUDA_OK(cudaMalloc((void **)&d->in, (size_t)SLOT * s->n));
    CUDA_OK(cudaMalloc((void **)&d->cmp, (size_t)SLOT * s->n));
    CUDA_OK(cudaMalloc((void **)&d->out, (size_t)SLOT * s->n));
    CUDA_OK(cudaMalloc((void **)&d->idx, (size_t)512 * s->n));
    CUDA_OK(cudaMemset(d->cmp, 0xA5, (size_t)SLOT * s->n)); /* poison */
    CUDA_OK(cudaMemset(d->out, 0xA5, (size_t)SLOT * s->n));
    void **hi = malloc(sizeof(void *) * s->n), **hc = malloc(sizeof(void *) * s->n);
    void **ho = malloc(sizeof(void *) * s->n), **hx = malloc(sizeof(void *) * s->n);
    size_t *hl = malloc(sizeof(size_t) * s->n);
    for (uint32_t i = 0; i < s->n; i++) {
        CUDA_OK(cudaMemcpy(d->in + (size_t)SLOT * i + in_offset, s->data[i], s->len[i],
                           cudaMemcpyHostToDevice));
        hi[i] = d->in + (size_t)SLOT * i + in_offset;
        hc[i] = d->cmp + (size_t)SLOT * i;
        ho[i] = d->out + (size_t)SLOT * i;
        hx[i] = d->idx + (size_t)512 * i;
        hl[i] = s->len[i];
    }
    void ***arr[4] = {&d->d_in, &d->d_cmp, &d->d_out, (void ***)&d->d_idx16};
    void **src[4] = {hi, hc, ho, hx};
    for (int k = 0; k < 4; k++) {
        CUDA_OK(cudaMalloc((void **)arr[k], sizeof(void *) * s->n));
        CUDA_OK(cudaMemcpy(*arr[k], src[k], sizeof(void *) * s->n, cudaMemcpyHostToDevice));
    }
    CUDA_OK(cudaMalloc((void **)&d->d_len, sizeof(size_t) * s->n));
    CUDA_OK(cudaMalloc((void **)&d->d_clen, sizeof(size_t) * s->n));
    CUDA_OK(cudaMalloc((void **)&d->d_st, sizeof(int32_t) * s->n));
    CUDA_OK(cudaMemcpy(d->d_len, hl, sizeof(size_t) * s->n, cudaMemcpyHostToDevice));
    CUDA_OK(cudaMemset(d->d_st, 0x7f, sizeof(int32_t) * s->n));
    cr_assert_eq(kvtc__huff_encode_batch((const void *const *)d->d_in, d->d_len, s->n,
                                         (void *const *)d->d_cmp, d->d_clen, d->d_idx16, log2,
                                         d->d_st, NULL),
                 0);
    CUDA_OK(cudaDeviceSynchronize());
    free(hi), free(hc), free(ho), free(hx), free(hl);
}

static void dev_free(struct dev *d)
{
    void *p[] = {d->in, d->cmp, d->out, d->idx, d->d_in, d->d_cmp, d->d_out, d->d_idx16,
                 d->d_len, d->d_clen, d->d_st};
    for (size_t i = 0; i < sizeof p / sizeof p[0]; i++)
        cudaFree(p[i]);
}

static void decode(struct dev *d, uint32_t log2, int32_t *st)
{
    CUDA_OK(cudaMemset(d->d_st, 0x7f, sizeof(int32_t) * d->n));
    cr_assert_eq(kvtc__huff_decode_batch((const void *const *)d->d_cmp, d->d_clen,
                                         (void *const *)d->d_out, d->d_len,
                                         (const uint8_t *const *)d->d_idx16, d->n, log2, NULL,
                                         NULL, d->d_st, NULL),
                 0);
    CUDA_OK(cudaDeviceSynchronize());
    CUDA_OK(cudaMemcpy(st, d->d_st, sizeof(int32_t) * d->n, cudaMemcpyDeviceToHost));
}

static struct kvtc__hcode hc;
static struct kvtc__hc_ws hw;

static void sample_set(struct set *s)
{
    static const uint32_t sizes[] = {1, 2, 3, 8, 255, 256, 1000, 1024, 4097, 30000, 65535, 65536};
    uint64_t seed = 21;
    for (int kind = 0; kind < IG_N_KINDS; kind++)
        for (size_t k = 0; k < sizeof sizes / sizeof sizes[0]; k++) {
            uint8_t *p = malloc(sizes[k]);
            ig_data(p, sizes[k], kind, &seed);
            add(s, p, sizes[k]);
        }
    uint8_t *one = malloc(65536), *ramp = malloc(65536);
    memset(one, 0x42, 65536); /* a single symbol */
    for (uint32_t i = 0; i < 65536; i++)
        ramp[i] = (uint8_t)i; /* uniform: two stored blocks */
    add(s, one, 65536);
    add(s, ramp, 65536);
}

/* Every piece of sample_set encoded at log2 = 8, 10, 12: bytes and index
 * equal to the host reference's, zlib reads them, our decoder gives the
 * input back without writing past it. */
static void encode_matches_reference(void)
{
    for (uint32_t log2 = KVTC_HC_LOG2_MIN; log2 <= KVTC_HC_LOG2_MAX; log2 += 2) {
        struct set s = {0};
        sample_set(&s);
        struct dev d;
        dev_up(&d, &s, log2);
        size_t *clen = malloc(sizeof(size_t) * s.n);
        int32_t *st = malloc(sizeof(int32_t) * s.n);
        CUDA_OK(cudaMemcpy(clen, d.d_clen, sizeof(size_t) * s.n, cudaMemcpyDeviceToHost));
        CUDA_OK(cudaMemcpy(st, d.d_st, sizeof(int32_t) * s.n, cudaMemcpyDeviceToHost));
        uint8_t *ref = malloc(KVTC_HC_MAX_OUT + 4), *got = malloc(SLOT), *out = malloc(65537);
        uint16_t ix[256], gix[256];
        for (uint32_t i = 0; i < s.n; i++) {
            cr_assert_eq(st[i], 0, "piece %u: status %d", i, st[i]);
            uint32_t rl = kvtc__hc_encode_ref(s.data[i], s.len[i], log2, ref, ix, &hc, &hw);
            cr_assert_eq(clen[i], rl, "piece %u (n %u): GPU %zu bytes, reference %u", i, s.len[i],
                         clen[i], rl);
            CUDA_OK(cudaMemcpy(got, d.cmp + (size_t)SLOT * i, (rl + 3) & ~3u,
                               cudaMemcpyDeviceToHost));
            cr_assert(!memcmp(got, ref, rl), "piece %u (n %u): bytes differ", i, s.len[i]);
            for (uint32_t b = rl; b < ((rl + 3) & ~3u); b++)
                cr_assert_eq(got[b], 0, "piece %u: tail byte not zeroed", i);
            uint32_t S = kvtc__hc_subranges(s.len[i], log2);
            CUDA_OK(cudaMemcpy(gix, d.idx + (size_t)512 * i, 2 * S, cudaMemcpyDeviceToHost));
            cr_assert(!memcmp(gix, ix, 2 * S), "piece %u: index differs", i);
            cr_assert_eq(ig_ref(got, rl, out, s.len[i]), 0, "piece %u: zlib refuses", i);
            cr_assert(!memcmp(out, s.data[i], s.len[i]));
        }
        decode(&d, log2, st);
        for (uint32_t i = 0; i < s.n; i++) {
            cr_assert_eq(st[i], 0, "log2 %u piece %u (n %u): decode status %d", log2, i, s.len[i],
                         st[i]);
            CUDA_OK(cudaMemcpy(got, d.out + (size_t)SLOT * i, s.len[i] + 1,
                               cudaMemcpyDeviceToHost));
            cr_assert(!memcmp(got, s.data[i], s.len[i]), "piece %u: decoded bytes differ", i);
            cr_assert_eq(got[s.len[i]], 0xA5, "piece %u: wrote past its output", i);
        }
        free(ref), free(got), free(out), free(clen), free(st);
        dev_free(&d);
        set_free(&s);
    }
}

Test(gpu_huffman, encoder_matches_reference_and_zlib_decoder_roundtrips)
{
    GPU_OR_SKIP();
    in_offset = 0;
    encode_matches_reference();
}

/* The encoder's loads for inputs only 4-byte aligned (its histogram then
 * reads words, not 16-byte vectors): the same bytes. */
Test(gpu_huffman, encoder_on_4_byte_aligned_pieces)
{
    GPU_OR_SKIP();
    in_offset = 4;
    encode_matches_reference();
    in_offset = 0;
}

/* Every entry of every piece moved by +-1, set out of range, or swapped
 * with its neighbour: each such piece fails, its neighbours decode. */
Test(gpu_huffman, tampered_indexes_fail_their_piece_only)
{
    GPU_OR_SKIP();
    struct set s = {0};
    uint64_t seed = 5;
    static const int kinds[] = {IG_FIB, IG_QUANT};
    add_ramp(&s, 96, 20000, 400, kinds, 2, &seed);
    struct dev d;
    dev_up(&d, &s, 10);
    int32_t *st = malloc(sizeof(int32_t) * s.n);
    decode(&d, 10, st);
    for (uint32_t i = 0; i < s.n; i++)
        cr_assert_eq(st[i], 0);
    uint16_t *ix = malloc((size_t)512 * s.n);
    CUDA_OK(cudaMemcpy(ix, d.idx, (size_t)512 * s.n, cudaMemcpyDeviceToHost));
    uint16_t *bad = malloc((size_t)512 * s.n);
    memcpy(bad, ix, (size_t)512 * s.n);
    for (uint32_t i = 0; i < s.n; i += 2) { /* odd pieces stay sound */
        uint16_t *e = bad + 256 * i;
        uint32_t S = kvtc__hc_subranges(s.len[i], 10), k = (i / 2) % S;
        switch ((i / 2) % 5) {
        case 0: e[k]++; break;
        case 1: e[k]--; break;
        case 2: e[k] = 0xffff; break;
        case 3:
            if (k + 1 == S)
                k--;
            { uint16_t t = e[k]; e[k] = e[k + 1]; e[k + 1] = t; }
            if (e[k] == e[k + 1])
                e[k]++;
            break;
        default: e[S - 1] += 8; break; /* the last one: past the end */
        }
    }
    CUDA_OK(cudaMemcpy(d.idx, bad, (size_t)512 * s.n, cudaMemcpyHostToDevice));
    decode(&d, 10, st);
    for (uint32_t i = 0; i < s.n; i++)
        if (i % 2)
            cr_assert_eq(st[i], 0, "sound piece %u: %d", i, st[i]);
        else
            cr_assert_neq(st[i], 0, "tampered piece %u accepted", i);
    /* another granularity than the index's, another symbol count */
    CUDA_OK(cudaMemcpy(d.idx, ix, (size_t)512 * s.n, cudaMemcpyHostToDevice));
    decode(&d, 9, st);
    for (uint32_t i = 0; i < s.n; i++)
        cr_assert_neq(st[i], 0);
    size_t *l1 = malloc(sizeof(size_t) * s.n);
    for (uint32_t i = 0; i < s.n; i++)
        l1[i] = s.len[i] - 1;
    CUDA_OK(cudaMemcpy(d.d_len, l1, sizeof(size_t) * s.n, cudaMemcpyHostToDevice));
    decode(&d, 10, st);
    for (uint32_t i = 0; i < s.n; i++)
        cr_assert_neq(st[i], 0);
    free(l1), free(ix), free(bad), free(st);
    dev_free(&d);
    set_free(&s);
}

/* Damaged block headers: a bit flipped in a piece's first 160 bytes, two
 * in its first 10, the block type changed, HLIT past 286. The GPU's
 * verdict and bytes are the host reference's (kvtc__hd_piece): the warp
 * that reads headers takes only what the reference takes. */
Test(gpu_huffman, damaged_headers_judged_as_the_reference)
{
    GPU_OR_SKIP();
    struct set s = {0};
    uint64_t seed = 9;
    static const int kinds[] = {IG_RANDOM, IG_QUANT, IG_TEXT, IG_RUNS, IG_FIB, IG_FEW};
    add_ramp(&s, 240, 1000, 263, kinds, IG_N_KINDS, &seed);
    struct dev d;
    dev_up(&d, &s, 9);
    size_t *clen = malloc(sizeof(size_t) * s.n);
    uint8_t *cmp = malloc((size_t)SLOT * s.n), *ix = malloc((size_t)512 * s.n);
    CUDA_OK(cudaMemcpy(clen, d.d_clen, sizeof(size_t) * s.n, cudaMemcpyDeviceToHost));
    CUDA_OK(cudaMemcpy(cmp, d.cmp, (size_t)SLOT * s.n, cudaMemcpyDeviceToHost));
    CUDA_OK(cudaMemcpy(ix, d.idx, (size_t)512 * s.n, cudaMemcpyDeviceToHost));
    for (uint32_t i = 0; i < s.n; i++) {
        uint8_t *c = cmp + (size_t)SLOT * i;
        uint32_t span = clen[i] < 160 ? (uint32_t)clen[i] : 160, b;
        switch (i % 6) {
        case 3:
            b = (uint32_t)(ig_rand(&seed) % 80);
            c[b / 8] ^= (uint8_t)(1u << (b % 8));
            __attribute__((fallthrough)); /* and a second bit */
        case 0: case 1: case 2:
            b = (uint32_t)(ig_rand(&seed) % (8u * span));
            c[b / 8] ^= (uint8_t)(1u << (b % 8));
            break;
        case 4: c[0] ^= (uint8_t)(2u << (ig_rand(&seed) % 2)); break; /* another type */
        default: c[0] |= 0xf8; break; /* HLIT 31: 288 codes */
        }
    }
    CUDA_OK(cudaMemcpy(d.cmp, cmp, (size_t)SLOT * s.n, cudaMemcpyHostToDevice));
    int32_t *st = malloc(sizeof(int32_t) * s.n);
    decode(&d, 9, st);
    static struct kvtc__inflate_ws ws;
    static struct kvtc__hd_table tab;
    uint8_t *ref = malloc(65536), *got = malloc(65536);
    uint32_t took = 0, refused = 0;
    for (uint32_t i = 0; i < s.n; i++) {
        int rc = kvtc__hd_piece(cmp + (size_t)SLOT * i, (uint32_t)clen[i], ix + (size_t)512 * i,
                                9, ref, s.len[i], &ws, &tab);
        if (rc) {
            refused++;
            cr_assert_neq(st[i], 0, "piece %u: the reference refuses it (%d), the GPU took it", i,
                          rc);
            continue;
        }
        took++;
        cr_assert_eq(st[i], 0, "piece %u: the reference takes it, the GPU says %d", i, st[i]);
        CUDA_OK(cudaMemcpy(got, d.out + (size_t)SLOT * i, s.len[i], cudaMemcpyDeviceToHost));
        cr_assert(!memcmp(got, ref, s.len[i]), "piece %u: bytes differ from the reference", i);
    }
    cr_assert(took > 0 && refused > 0, "took %u, refused %u: both paths checked", took, refused);
    free(ref), free(got), free(st), free(clen), free(cmp), free(ix);
    dev_free(&d);
    set_free(&s);
}

/* ---- codec level ---- */

struct cbatch {
    uint32_t n;
    kvtc_chunk *c;
    uint8_t **v1, **v2;
    size_t *v1_len, *v2_len;
};

static void cbatch_free(struct cbatch *b)
{
    for (uint32_t i = 0; i < b->n; i++) {
        free((void *)b->c[i].data);
        free(b->v1[i]);
        free(b->v2[i]);
    }
    free(b->c), free(b->v1), free(b->v2), free(b->v1_len), free(b->v2_len);
}

/* n chunks: CPU (v1) containers and GPU ones with our coder (v2). */
static void cbatch_make(const kvtc_profile *p, kvtc_gpu_codec *g, uint32_t n, uint32_t tokens,
                        struct cbatch *b)
{
    const kvtc_layout *l = kvtc_profile_layout(p);
    b->n = n;
    b->c = calloc(n, sizeof *b->c);
    b->v1 = calloc(n, sizeof *b->v1);
    b->v2 = calloc(n, sizeof *b->v2);
    b->v1_len = calloc(n, sizeof(size_t));
    b->v2_len = calloc(n, sizeof(size_t));
    kvtc_encoder *enc = NULL;
    cr_assert_eq(kvtc_encoder_create(p, 1, KVTC_STAGE_DEFLATE, 0, &enc), 0);
    for (uint32_t i = 0; i < n; i++) {
        uint32_t t = tokens - (i % 7) * 3, pos = i * tokens;
        b->c[i] = (kvtc_chunk){gt_chunk(l, t, pos, 100 + i), t, pos, 0};
        size_t cap = kvtc_encode_bound(enc, t);
        b->v1[i] = malloc(cap);
        cr_assert_eq(kvtc_encode(enc, &b->c[i], b->v1[i], cap, &b->v1_len[i]), 0);
    }
    kvtc_encoder_free(enc);
    int32_t *st = calloc(n, 4);
    gt_gpu_encode(g, l, b->c, n, b->v2, b->v2_len, st);
    for (uint32_t i = 0; i < n; i++)
        cr_assert_eq(st[i], 0, "GPU encode chunk %u: %d", i, st[i]);
    free(st);
}

Test(gpu_huffman, v2_containers_read_on_cpu_and_mixed_with_v1_on_gpu, .timeout = 300)
{
    GPU_OR_SKIP();
    kvtc_layout l = gt_layout(2, 1, 16, KVTC_DTYPE_BF16, KVTC_ROPE_HALF_SPLIT);
    kvtc_profile *p = gt_profile(&l, 512, 6);
    kvtc_gpu_params ours = {.field_mask = KVTC_GPU_PARAM_FIELD_INFLATE | KVTC_GPU_PARAM_FIELD_DEFLATE |
                                          KVTC_GPU_PARAM_FIELD_INDEX_LOG2 | KVTC_GPU_PARAM_FIELD_DECODE_INDEX,
                            .inflate = KVTC_GPU_INFLATE_NVCOMP,
                            .deflate = KVTC_GPU_DEFLATE_KVTC,
                            .index_log2 = 9,
                            .decode_index = KVTC_GPU_INDEX_ON};
    kvtc_gpu_codec *g = NULL;
    cr_assert_eq(kvtc_gpu_codec_create(p, 1, &ours, &g), 0);
    struct cbatch b;
    cbatch_make(p, g, 2000, 40, &b);
    kvtc_decoder *dec = NULL;
    cr_assert_eq(kvtc_decoder_create(p, &dec), 0);
    /* CPU reads v2 (and calls it v2); the CPU's decode is the reference */
    void **cpu = calloc(b.n, sizeof *cpu);
    size_t v1b = 0, v2b = 0;
    for (uint32_t i = 0; i < b.n; i++) {
        kvtc_container_info info;
        cr_assert_eq(kvtc_inspect(b.v2[i], b.v2_len[i], &info), 0);
        cr_assert_eq(info.version, 2);
        size_t rb = kvtc_chunk_bytes(&l, b.c[i].n_tokens);
        cpu[i] = malloc(rb);
        cr_assert_eq(kvtc_decode(dec, b.v2[i], b.v2_len[i], cpu[i], rb, NULL), 0, "chunk %u", i);
        v1b += b.v1_len[i], v2b += b.v2_len[i];
    }
    cr_log_info("2000 chunks: CPU v1 %zu bytes, GPU v2 %zu bytes", v1b, v2b);
    /* one batch: even chunks v2, odd v1; every decoder choice */
    uint8_t **mix = calloc(b.n, sizeof *mix);
    size_t *mlen = calloc(b.n, sizeof(size_t));
    for (uint32_t i = 0; i < b.n; i++)
        mix[i] = i % 2 ? b.v1[i] : b.v2[i], mlen[i] = i % 2 ? b.v1_len[i] : b.v2_len[i];
    kvtc_gpu_params modes[3] = {ours, ours, ours};
    modes[1].inflate = KVTC_GPU_INFLATE_KVTC;
    modes[2].decode_index = KVTC_GPU_INDEX_OFF;
    void **ref = NULL;
    for (int m = 0; m < 3; m++) {
        kvtc_gpu_codec *gm = NULL;
        cr_assert_eq(kvtc_gpu_codec_create(p, 1, &modes[m], &gm), 0);
        void **rec = calloc(b.n, sizeof *rec);
        int32_t *st = calloc(b.n, 4);
        gt_gpu_decode(gm, &l, b.c, b.n, mix, mlen, rec, st);
        for (uint32_t i = 0; i < b.n; i++) {
            cr_assert_eq(st[i], 0, "mode %d chunk %u: %d", m, i, st[i]);
            size_t rb = kvtc_chunk_bytes(&l, b.c[i].n_tokens);
            if (m == 0 && i % 2 == 0) {
                double e = gt_mse(&l, cpu[i], rec[i], b.c[i].n_tokens);
                double en = gt_energy(&l, cpu[i], b.c[i].n_tokens);
                cr_assert(e <= 1e-3 * en + 1e-12, "chunk %u: GPU vs CPU decode of v2", i);
            }
            if (ref)
                cr_assert(!memcmp(ref[i], rec[i], rb), "mode %d chunk %u differs", m, i);
        }
        if (ref) {
            for (uint32_t i = 0; i < b.n; i++)
                free(rec[i]);
            free(rec);
        } else {
            ref = rec;
        }
        free(st);
        kvtc_gpu_codec_free(gm);
    }
    for (uint32_t i = 0; i < b.n; i++)
        free(ref[i]), free(cpu[i]);
    free(ref), free(cpu), free(mix), free(mlen);
    kvtc_decoder_free(dec);
    kvtc_gpu_codec_free(g);
    cbatch_free(&b);
    kvtc_profile_free(p);
}

/* A v2 container whose index lies behind repaired checksums: the CPU may
 * decode it (it ignores the index), the GPU's indexed decoder must refuse
 * it; the batch's sound neighbours decode. */
Test(gpu_huffman, damaged_index_behind_checksums_is_corrupt_on_gpu)
{
    GPU_OR_SKIP();
    kvtc_layout l = gt_layout(4, 2, 32, KVTC_DTYPE_BF16, KVTC_ROPE_HALF_SPLIT);
    kvtc_profile *p = gt_profile(&l, 512, 7);
    kvtc_gpu_codec *g = NULL;
    cr_assert_eq(kvtc_gpu_codec_create(p, 1, NULL, &g), 0);
    struct cbatch b;
    cbatch_make(p, g, 40, 2000, &b);
    int touched = 0;
    for (uint32_t i = 0; i < b.n; i += 2) {
        struct kvtc__header h;
        cr_assert_eq(kvtc__container_parse(b.v2[i], b.v2_len[i], &h), 0);
        cr_assert(h.index_log2 >= KVTC__INDEX_LOG2_MIN && h.index_log2 <= KVTC__INDEX_LOG2_MAX);
        cr_assert_geq(h.n_pieces, 1);
        uint8_t *ix = b.v2[i] + REPAIR_HEADER + h.raw_bytes + 4ull * h.n_pieces;
        uint32_t S = (uint32_t)kvtc__index_entries(h.symbol_bytes, h.index_log2), k = (i / 2) % S;
        uint32_t v = ix[2 * k] | ix[2 * k + 1] << 8;
        if (v == 0)
            continue; /* a stored piece: nothing to move */
        v += (i / 2) % 3 == 0 ? 1 : (i / 2) % 3 == 1 ? -1 : 64;
        ix[2 * k] = (uint8_t)v, ix[2 * k + 1] = (uint8_t)(v >> 8);
        repair_checksums(b.v2[i], b.v2_len[i]);
        touched++;
    }
    cr_assert_gt(touched, 10);
    void **rec = calloc(b.n, sizeof *rec);
    int32_t *st = calloc(b.n, 4);
    gt_gpu_decode(g, &l, b.c, b.n, b.v2, b.v2_len, rec, st);
    for (uint32_t i = 0; i < b.n; i++) {
        if (i % 2)
            cr_assert_eq(st[i], 0, "sound chunk %u: %d", i, st[i]);
        else
            cr_assert(st[i] == KVTC_ECORRUPT || st[i] == 0, "chunk %u: %d", i, st[i]);
        free(rec[i]);
    }
    uint32_t refused = 0;
    for (uint32_t i = 0; i < b.n; i += 2)
        refused += st[i] == KVTC_ECORRUPT;
    cr_assert_geq(refused, (uint32_t)touched, "refused %u of %d tampered", refused, touched);
    free(rec), free(st);
    kvtc_gpu_codec_free(g);
    cbatch_free(&b);
    kvtc_profile_free(p);
}
