/* Our GPU inflate (kernels/gpu_inflate.cu) against zlib and against the
 * same decoder on the host: thousands of pieces per batch from zlib (every
 * level and strategy, mixed blocks) and libdeflate, 1 byte to 64 KiB, with
 * 15-bit codes; damaged pieces (bit flips, truncation, wrong sizes) get
 * zlib's verdict and the host's exact error code; per-container statuses
 * in group mode. Every test skips when no GPU is present. */
#include <stdlib.h>
#include <string.h>

#include "../../kernels/gpu_inflate.h"
#include "../../kernels/inflate_core.h"
#include "gpu_test_util.h"
#include "inflate_gen.h"

#define SLOT 65536

struct pieces {
    uint32_t n;
    uint8_t **src;      /* padded to 4 (ig_padded) */
    size_t *len, *cap;
    uint8_t **want;     /* expected output (NULL: only the verdict counts) */
};

static void push(struct pieces *p, uint8_t *src, size_t len, size_t cap, uint8_t *want)
{
    p->src = realloc(p->src, sizeof *p->src * (p->n + 1));
    p->len = realloc(p->len, sizeof *p->len * (p->n + 1));
    p->cap = realloc(p->cap, sizeof *p->cap * (p->n + 1));
    p->want = realloc(p->want, sizeof *p->want * (p->n + 1));
    p->src[p->n] = src;
    p->len[p->n] = len;
    p->cap[p->n] = cap;
    p->want[p->n++] = want;
}

static void pieces_free(struct pieces *p)
{
    for (uint32_t i = 0; i < p->n; i++) {
        free(p->src[i]);
        free(p->want[i]);
    }
    free(p->src);
    free(p->len);
    free(p->cap);
    free(p->want);
}

/* Runs the batch on the device: statuses, stats and outputs come back. */
static void run(const struct pieces *p, int32_t *status, struct kvtc__inflate_stats *stats,
                uint8_t *out, const uint32_t *group, uint32_t n_groups)
{
    size_t total = 0, *off = malloc(sizeof(size_t) * p->n);
    for (uint32_t i = 0; i < p->n; i++) {
        off[i] = total;
        total += (p->len[i] + 15) / 16 * 16 + 16;
    }
    uint8_t *d_in, *d_out;
    void **hsrc = malloc(sizeof(void *) * p->n), **hdst = malloc(sizeof(void *) * p->n);
    void **d_src, **d_dst;
    size_t *d_len, *d_cap;
    int32_t *d_st;
    uint32_t *d_grp = NULL;
    struct kvtc__inflate_stats *d_stats;
    uint32_t ns = group ? n_groups : p->n;
    CUDA_OK(cudaMalloc((void **)&d_in, total + 16));
    CUDA_OK(cudaMalloc((void **)&d_out, (size_t)SLOT * p->n));
    CUDA_OK(cudaMemset(d_out, 0xA5, (size_t)SLOT * p->n));
    CUDA_OK(cudaMalloc((void **)&d_src, sizeof(void *) * p->n));
    CUDA_OK(cudaMalloc((void **)&d_dst, sizeof(void *) * p->n));
    CUDA_OK(cudaMalloc((void **)&d_len, sizeof(size_t) * p->n));
    CUDA_OK(cudaMalloc((void **)&d_cap, sizeof(size_t) * p->n));
    CUDA_OK(cudaMalloc((void **)&d_st, sizeof(int32_t) * ns));
    CUDA_OK(cudaMalloc((void **)&d_stats, sizeof *stats * p->n));
    for (uint32_t i = 0; i < p->n; i++) {
        CUDA_OK(cudaMemcpy(d_in + off[i], p->src[i], (p->len[i] + 3) / 4 * 4,
                           cudaMemcpyHostToDevice));
        hsrc[i] = d_in + off[i];
        hdst[i] = d_out + (size_t)SLOT * i;
    }
    CUDA_OK(cudaMemcpy(d_src, hsrc, sizeof(void *) * p->n, cudaMemcpyHostToDevice));
    CUDA_OK(cudaMemcpy(d_dst, hdst, sizeof(void *) * p->n, cudaMemcpyHostToDevice));
    CUDA_OK(cudaMemcpy(d_len, p->len, sizeof(size_t) * p->n, cudaMemcpyHostToDevice));
    CUDA_OK(cudaMemcpy(d_cap, p->cap, sizeof(size_t) * p->n, cudaMemcpyHostToDevice));
    CUDA_OK(cudaMemcpy(d_st, status, sizeof(int32_t) * ns, cudaMemcpyHostToDevice));
    if (group) {
        CUDA_OK(cudaMalloc((void **)&d_grp, sizeof(uint32_t) * p->n));
        CUDA_OK(cudaMemcpy(d_grp, group, sizeof(uint32_t) * p->n, cudaMemcpyHostToDevice));
    }
    cr_assert_eq(kvtc__inflate_batch((const void *const *)d_src, d_len, (void *const *)d_dst,
                                     d_cap, p->n, d_grp, d_st, stats ? d_stats : NULL, NULL),
                 0);
    CUDA_OK(cudaDeviceSynchronize());
    CUDA_OK(cudaMemcpy(status, d_st, sizeof(int32_t) * ns, cudaMemcpyDeviceToHost));
    if (stats)
        CUDA_OK(cudaMemcpy(stats, d_stats, sizeof *stats * p->n, cudaMemcpyDeviceToHost));
    CUDA_OK(cudaMemcpy(out, d_out, (size_t)SLOT * p->n, cudaMemcpyDeviceToHost));
    cudaFree(d_in);
    cudaFree(d_out);
    cudaFree(d_src);
    cudaFree(d_dst);
    cudaFree(d_len);
    cudaFree(d_cap);
    cudaFree(d_st);
    cudaFree(d_stats);
    cudaFree(d_grp);
    free(hsrc);
    free(hdst);
    free(off);
}

static const size_t sizes[] = {1, 2, 7, 8, 9, 17, 255, 1000, 4097, 30000, 65535, 65536};
#define N_SIZES (sizeof sizes / sizeof sizes[0])

/* Every encoder, kind and size, as one batch; each piece's bytes and stats
 * must equal the input and the host decoder's. */
Test(gpu_inflate, every_encoder_kind_and_size_matches)
{
    GPU_OR_SKIP();
    static const int strat[] = {Z_DEFAULT_STRATEGY, Z_HUFFMAN_ONLY, Z_RLE, Z_FIXED};
    struct pieces p = {0};
    uint64_t seed = 11;
    for (int kind = 0; kind < IG_N_KINDS; kind++)
        for (size_t si = 0; si < N_SIZES; si++) {
            size_t n = sizes[si], len = 0;
            for (int e = 0; e < 12; e++) {
                uint8_t *data = malloc(n);
                ig_data(data, n, kind, &seed);
                uint8_t *z = e < 8   ? ig_zlib(data, n, e < 4 ? 1 + e * 2 : 0, strat[e % 4], 8,
                                                0, &len)
                             : e < 11 ? ig_libdeflate(data, n, (e - 8) * 6, &len)
                                      : ig_zlib(data, n, 6, Z_DEFAULT_STRATEGY, 1, 777, &len);
                cr_assert(z);
                push(&p, z, len, n, data);
            }
        }
    int32_t *st = calloc(p.n, 4);
    struct kvtc__inflate_stats *gs = calloc(p.n, sizeof *gs), tot = {0, 0, 0, 0, 0}, hs = tot;
    uint8_t *out = malloc((size_t)SLOT * p.n);
    run(&p, st, gs, out, NULL, 0);
    static struct kvtc__inflate_ws ws;
    uint8_t *host = malloc(SLOT);
    for (uint32_t i = 0; i < p.n; i++) {
        cr_assert_eq(st[i], 0, "piece %u (len %zu cap %zu): status %d", i, p.len[i], p.cap[i],
                     st[i]);
        cr_assert(!memcmp(out + (size_t)SLOT * i, p.want[i], p.cap[i]), "piece %u differs", i);
        cr_assert_eq(kvtc__inflate(p.src[i], (uint32_t)p.len[i], host, (uint32_t)p.cap[i], &ws,
                                   &hs),
                     0);
        cr_assert(!memcmp(&hs, &gs[i], sizeof hs), "piece %u: stats differ from the host's", i);
        tot.stored += hs.stored;
        tot.fixed += hs.fixed;
        tot.dynamic += hs.dynamic;
        tot.matches += hs.matches;
        tot.max_code_len = hs.max_code_len > tot.max_code_len ? hs.max_code_len : tot.max_code_len;
    }
    cr_log_info("%u pieces: %u stored, %u fixed, %u dynamic blocks, %u matches, codes up to %u "
                "bits", p.n, tot.stored, tot.fixed, tot.dynamic, tot.matches, tot.max_code_len);
    cr_assert(tot.stored && tot.fixed && tot.dynamic && tot.matches && tot.max_code_len == 15);
    free(host);
    free(out);
    free(gs);
    free(st);
    pieces_free(&p);
}

/* Damaged pieces: the device says what zlib says, with the host decoder's
 * exact code, and where both accept, zlib's bytes. */
Test(gpu_inflate, damaged_pieces_get_zlibs_verdict)
{
    GPU_OR_SKIP();
    struct pieces p = {0};
    uint64_t seed = 12;
    for (int kind = 0; kind < IG_N_KINDS; kind++)
        for (size_t n = 1; n <= 65536; n = n * 5 + 3)
            for (int r = 0; r < 40; r++) {
                size_t len = 0, cap = n;
                uint8_t *data = malloc(n);
                ig_data(data, n, kind, &seed);
                uint8_t *z = r % 3 == 2 ? ig_libdeflate(data, n, 6, &len)
                                        : ig_zlib(data, n, r % 3 ? 9 : 1,
                                                  r % 3 ? Z_HUFFMAN_ONLY : Z_DEFAULT_STRATEGY, 8,
                                                  0, &len);
                free(data);
                cr_assert(z);
                int how = (int)(ig_rand(&seed) % 4);
                if (how == 0 || how == 3)
                    for (int f = 0; f < 2; f++) {
                        size_t at = ig_rand(&seed) % 2 ? ig_rand(&seed) % (len < 64 ? len : 64)
                                                       : ig_rand(&seed) % len;
                        z[at] ^= (uint8_t)(1u << (ig_rand(&seed) % 8));
                    }
                if (how == 1)
                    len = ig_rand(&seed) % len;
                if (how >= 2)
                    cap = ig_rand(&seed) % 2 ? n + 1 : (n ? ig_rand(&seed) % n : 0);
                if (cap > 65536)
                    cap = 65536;
                uint8_t *ref = malloc(cap + 8);
                if (ig_ref(z, len, ref, cap)) {
                    free(ref);
                    ref = NULL;
                }
                push(&p, z, len, cap, ref);
            }
    int32_t *st = calloc(p.n, 4);
    uint8_t *out = malloc((size_t)SLOT * p.n), *host = malloc(SLOT);
    run(&p, st, NULL, out, NULL, 0);
    static struct kvtc__inflate_ws ws;
    uint32_t bad = 0;
    for (uint32_t i = 0; i < p.n; i++) {
        int h = kvtc__inflate(p.src[i], (uint32_t)p.len[i], host, (uint32_t)p.cap[i], &ws, NULL);
        cr_assert_eq(st[i], h, "piece %u: device %d, host %d", i, st[i], h);
        cr_assert_eq(st[i] == 0, p.want[i] != NULL, "piece %u: device %d vs zlib", i, st[i]);
        if (!st[i])
            cr_assert(!memcmp(out + (size_t)SLOT * i, p.want[i], p.cap[i]), "piece %u", i);
        bad += st[i] != 0;
    }
    cr_log_info("%u damaged pieces, %u rejected as zlib rejects them", p.n, bad);
    cr_assert_gt(bad, p.n / 4);
    free(host);
    free(out);
    free(st);
    pieces_free(&p);
}

/* Group mode: a bad piece fails its container only; a container that
 * already failed is skipped (its output untouched). */
Test(gpu_inflate, group_status_per_container)
{
    GPU_OR_SKIP();
    struct pieces p = {0};
    uint64_t seed = 13;
    uint32_t group[9];
    for (uint32_t i = 0; i < 9; i++) {
        size_t n = 65536 - i * 1000, len = 0;
        uint8_t *data = malloc(n);
        ig_data(data, n, IG_QUANT, &seed);
        uint8_t *z = ig_zlib(data, n, 9, Z_HUFFMAN_ONLY, 8, 0, &len);
        push(&p, z, len, i == 4 ? n - 1 : n, data); /* piece 4: declared one byte short */
        group[i] = i / 3;
    }
    int32_t st[3] = {0, 0, KVTC_EPROFILE};
    uint8_t *out = malloc((size_t)SLOT * p.n);
    run(&p, st, NULL, out, group, 3);
    cr_assert_eq(st[0], 0);
    cr_assert_eq(st[1], KVTC_ECORRUPT);
    cr_assert_eq(st[2], KVTC_EPROFILE);
    for (uint32_t i = 0; i < 3; i++)
        cr_assert(!memcmp(out + (size_t)SLOT * i, p.want[i], p.cap[i]));
    for (uint32_t i = 6; i < 9; i++)
        cr_assert_eq(out[(size_t)SLOT * i], 0xA5, "skipped piece %u was written", i);
    free(out);
    pieces_free(&p);
}
