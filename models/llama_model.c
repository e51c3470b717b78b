/* llama_model.c - fp32 forward pass of a llama2.c checkpoint with a KV cache.
 * Follows llama2.c's run.c (RMSNorm eps 1e-5, interleaved RoPE, GQA, SwiGLU),
 * written for clarity over speed: stories260K runs ~1 ms per token. */
#include "llama_model.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

/* Sanity bounds on header fields: generous for llama2.c-sized models, tight
 * enough that products below cannot overflow 64 bits. */
#define MAX_DIM 16384u
#define MAX_HIDDEN 65536u
#define MAX_LAYERS 256u
#define MAX_VOCAB 262144u
#define MAX_SEQ 65536u
#define HEADER_INTS 7

struct kvtc_llama {
    kvtc_llama_config c;
    float *blob; /* every weight, in file order */
    const float *emb, *rms_att, *wq, *wk, *wv, *wo, *rms_ffn, *w1, *w2, *w3,
        *rms_final, *wcls;
};

struct kvtc_llama_state {
    const kvtc_llama *m;
    float *key, *value, *key_norope; /* [layer][pos][kv_dim] */
    float *x, *xb, *xb2, *q, *k, *v, *hb, *hb2, *att, *logits;
};

static void log_err(const char *path, const char *what)
{
    fprintf(stderr, "kvtc-llama: %s: %s\n", path, what);
}

/* Floats the weight arrays need; 0 when the header is out of bounds. */
static uint64_t weight_floats(const kvtc_llama_config *c)
{
    uint64_t d = c->dim, h = c->hidden_dim, L = c->n_layers, kv = c->kv_dim;
    uint64_t n = (uint64_t)c->vocab_size * d; /* token embedding */
    n += L * d;                               /* rms_att */
    n += L * d * d;                           /* wq */
    n += 2 * L * kv * d;                      /* wk, wv */
    n += L * d * d;                           /* wo */
    n += L * d;                               /* rms_ffn */
    n += 3 * L * h * d;                       /* w1, w2, w3 */
    n += d;                                   /* rms_final */
    n += (uint64_t)c->seq_len * c->head_dim;  /* freq_cis real + imag */
    if (!c->shared_classifier)
        n += (uint64_t)c->vocab_size * d;
    return n;
}

static int parse_header(const int32_t *hd, kvtc_llama_config *c)
{
    for (int i = 0; i < HEADER_INTS; i++)
        if (hd[i] == 0 || hd[i] == INT32_MIN)
            return KVTC_ECORRUPT;
    if (hd[0] < 0 || hd[1] < 0 || hd[2] < 0 || hd[3] < 0 || hd[4] < 0 || hd[6] < 0)
        return KVTC_ECORRUPT;
    c->dim = (uint32_t)hd[0];
    c->hidden_dim = (uint32_t)hd[1];
    c->n_layers = (uint32_t)hd[2];
    c->n_heads = (uint32_t)hd[3];
    c->n_kv_heads = (uint32_t)hd[4];
    /* llama2.c's convention: a negative vocab_size means a separate classifier */
    c->shared_classifier = hd[5] > 0;
    c->vocab_size = (uint32_t)(hd[5] > 0 ? hd[5] : -hd[5]);
    c->seq_len = (uint32_t)hd[6];
    if (c->dim > MAX_DIM || c->hidden_dim > MAX_HIDDEN || c->n_layers > MAX_LAYERS ||
        c->vocab_size > MAX_VOCAB || c->seq_len > MAX_SEQ || c->n_heads > c->dim ||
        c->n_kv_heads > c->n_heads || c->dim % c->n_heads != 0 ||
        c->n_heads % c->n_kv_heads != 0)
        return KVTC_ECORRUPT;
    c->head_dim = c->dim / c->n_heads;
    if (c->head_dim % 2 != 0) /* RoPE rotates pairs */
        return KVTC_ECORRUPT;
    c->kv_dim = c->n_kv_heads * c->head_dim;
    return 0;
}

int kvtc_llama_load(const char *path, kvtc_llama **out)
{
    int rc = 0;
    FILE *f = NULL;
    kvtc_llama *m = NULL;
    int32_t hd[HEADER_INTS];
    struct stat st;

    if (!path || !out)
        return KVTC_EINVAL;
    *out = NULL;
    f = fopen(path, "rb");
    if (!f) {
        log_err(path, strerror(errno));
        return KVTC_EIO;
    }
    if (fstat(fileno(f), &st) != 0 || !S_ISREG(st.st_mode)) {
        log_err(path, "not a regular file");
        rc = KVTC_EIO;
        goto cleanup;
    }
    if ((uint64_t)st.st_size < sizeof hd || fread(hd, sizeof hd, 1, f) != 1) {
        log_err(path, "file shorter than the 28-byte header");
        rc = KVTC_ECORRUPT;
        goto cleanup;
    }
    m = calloc(1, sizeof *m);
    if (!m) {
        rc = KVTC_ENOMEM;
        goto cleanup;
    }
    rc = parse_header(hd, &m->c);
    if (rc) {
        log_err(path, "header out of bounds (not a llama2.c checkpoint?)");
        goto cleanup;
    }
    uint64_t nf = weight_floats(&m->c);
    if ((uint64_t)st.st_size != sizeof hd + 4 * nf) {
        char msg[160];
        snprintf(msg, sizeof msg, "size %llu bytes, header implies %llu",
                 (unsigned long long)st.st_size,
                 (unsigned long long)(sizeof hd + 4 * nf));
        log_err(path, msg);
        rc = KVTC_ECORRUPT;
        goto cleanup;
    }
    m->blob = malloc(nf * sizeof(float));
    if (!m->blob) {
        rc = KVTC_ENOMEM;
        goto cleanup;
    }
    if (fread(m->blob, sizeof(float), nf, f) != nf) {
        log_err(path, "short read");
        rc = KVTC_EIO;
        goto cleanup;
    }
    for (uint64_t i = 0; i < nf; i++) {
        if (!isfinite(m->blob[i])) {
            log_err(path, "non-finite weight");
            rc = KVTC_ECORRUPT;
            goto cleanup;
        }
    }
    {
        const kvtc_llama_config *c = &m->c;
        size_t d = c->dim, h = c->hidden_dim, L = c->n_layers, kv = c->kv_dim;
        const float *p = m->blob;
        m->emb = p;        p += (size_t)c->vocab_size * d;
        m->rms_att = p;    p += L * d;
        m->wq = p;         p += L * d * d;
        m->wk = p;         p += L * kv * d;
        m->wv = p;         p += L * kv * d;
        m->wo = p;         p += L * d * d;
        m->rms_ffn = p;    p += L * d;
        m->w1 = p;         p += L * h * d;
        m->w2 = p;         p += L * d * h;
        m->w3 = p;         p += L * h * d;
        m->rms_final = p;  p += d;
        p += (size_t)c->seq_len * c->head_dim; /* freq_cis: we compute RoPE */
        m->wcls = c->shared_classifier ? m->emb : p;
    }
    *out = m;
    m = NULL;
cleanup:
    kvtc_llama_free(m);
    fclose(f);
    return rc;
}

void kvtc_llama_free(kvtc_llama *m)
{
    if (!m)
        return;
    free(m->blob);
    free(m);
}

const kvtc_llama_config *kvtc_llama_get_config(const kvtc_llama *m)
{
    return &m->c;
}

void kvtc_llama_layout(const kvtc_llama *m, uint32_t chunk_tokens, kvtc_layout *out)
{
    memset(out, 0, sizeof *out);
    out->layers = m->c.n_layers;
    out->kv_heads = m->c.n_kv_heads;
    out->head_dim = m->c.head_dim;
    out->dtype = KVTC_DTYPE_FP32;
    out->chunk_tokens = chunk_tokens;
    out->rope_style = KVTC_ROPE_INTERLEAVED;
    out->rope_scaling = KVTC_ROPE_SCALING_NONE;
    out->rope_theta = 10000.0f;
    out->rope_factor = 1.0f;
}

size_t kvtc_llama_kv_floats(const kvtc_llama *m, uint32_t n)
{
    return (size_t)m->c.n_layers * 2 * n * m->c.kv_dim;
}

int kvtc_llama_state_create(const kvtc_llama *m, kvtc_llama_state **out)
{
    if (!m || !out)
        return KVTC_EINVAL;
    const kvtc_llama_config *c = &m->c;
    size_t cache = (size_t)c->n_layers * c->seq_len * c->kv_dim;
    kvtc_llama_state *s = calloc(1, sizeof *s);
    if (!s)
        return KVTC_ENOMEM;
    s->m = m;
    s->key = calloc(cache, sizeof(float));
    s->value = calloc(cache, sizeof(float));
    s->key_norope = calloc(cache, sizeof(float));
    s->x = calloc(c->dim, sizeof(float));
    s->xb = calloc(c->dim, sizeof(float));
    s->xb2 = calloc(c->dim, sizeof(float));
    s->q = calloc(c->dim, sizeof(float));
    s->k = calloc(c->kv_dim, sizeof(float));
    s->v = calloc(c->kv_dim, sizeof(float));
    s->hb = calloc(c->hidden_dim, sizeof(float));
    s->hb2 = calloc(c->hidden_dim, sizeof(float));
    s->att = calloc(c->seq_len, sizeof(float));
    s->logits = calloc(c->vocab_size, sizeof(float));
    if (!s->key || !s->value || !s->key_norope || !s->x || !s->xb || !s->xb2 ||
        !s->q || !s->k || !s->v || !s->hb || !s->hb2 || !s->att || !s->logits) {
        kvtc_llama_state_free(s);
        return KVTC_ENOMEM;
    }
    *out = s;
    return 0;
}

void kvtc_llama_state_free(kvtc_llama_state *s)
{
    if (!s)
        return;
    free(s->key);
    free(s->value);
    free(s->key_norope);
    free(s->x);
    free(s->xb);
    free(s->xb2);
    free(s->q);
    free(s->k);
    free(s->v);
    free(s->hb);
    free(s->hb2);
    free(s->att);
    free(s->logits);
    free(s);
}

static void rmsnorm(float *o, const float *x, const float *w, size_t n)
{
    float ss = 0.0f;
    for (size_t j = 0; j < n; j++)
        ss += x[j] * x[j];
    ss = 1.0f / sqrtf(ss / (float)n + 1e-5f);
    for (size_t j = 0; j < n; j++)
        o[j] = w[j] * (ss * x[j]);
}

/* o[out] = W[out][in] x[in] */
static void matmul(float *o, const float *x, const float *w, size_t in, size_t out)
{
    for (size_t i = 0; i < out; i++) {
        const float *row = w + i * in;
        float acc = 0.0f;
        for (size_t j = 0; j < in; j++)
            acc += row[j] * x[j];
        o[i] = acc;
    }
}

/* Interleaved RoPE on n floats (whole heads of head_dim) at position pos.
 * Angles in double so the codec's inverse can be checked tightly. */
static void rope(float *x, size_t n, uint32_t head_dim, uint32_t pos)
{
    for (size_t i = 0; i < n; i += 2) {
        size_t pair = (i % head_dim) / 2;
        double freq = pow(10000.0, -2.0 * (double)pair / (double)head_dim);
        double a = (double)pos * freq;
        float cr = (float)cos(a), ci = (float)sin(a);
        float x0 = x[i], x1 = x[i + 1];
        x[i] = x0 * cr - x1 * ci;
        x[i + 1] = x0 * ci + x1 * cr;
    }
}

static void softmax(float *x, size_t n)
{
    float mx = x[0];
    for (size_t i = 1; i < n; i++)
        if (x[i] > mx)
            mx = x[i];
    float sum = 0.0f;
    for (size_t i = 0; i < n; i++) {
        x[i] = expf(x[i] - mx);
        sum += x[i];
    }
    for (size_t i = 0; i < n; i++)
        x[i] /= sum;
}

int kvtc_llama_forward(kvtc_llama_state *s, int32_t token, uint32_t pos,
                       const float **logits)
{
    if (!s || !logits)
        return KVTC_EINVAL;
    const kvtc_llama *m = s->m;
    const kvtc_llama_config *c = &m->c;
    if (token < 0 || (uint32_t)token >= c->vocab_size || pos >= c->seq_len)
        return KVTC_EINVAL;
    size_t d = c->dim, h = c->hidden_dim, kv = c->kv_dim, hd = c->head_dim;
    uint32_t group = c->n_heads / c->n_kv_heads;
    float inv_sqrt = 1.0f / sqrtf((float)hd);

    memcpy(s->x, m->emb + (size_t)token * d, d * sizeof(float));
    for (size_t l = 0; l < c->n_layers; l++) {
        size_t base = l * c->seq_len * kv;
        float *kc = s->key + base, *vc = s->value + base;
        rmsnorm(s->xb, s->x, m->rms_att + l * d, d);
        matmul(s->q, s->xb, m->wq + l * d * d, d, d);
        matmul(s->k, s->xb, m->wk + l * kv * d, d, kv);
        matmul(s->v, s->xb, m->wv + l * kv * d, d, kv);
        memcpy(s->key_norope + base + pos * kv, s->k, kv * sizeof(float));
        rope(s->q, d, c->head_dim, pos);
        rope(s->k, kv, c->head_dim, pos);
        memcpy(kc + pos * kv, s->k, kv * sizeof(float));
        memcpy(vc + pos * kv, s->v, kv * sizeof(float));

        for (uint32_t hh = 0; hh < c->n_heads; hh++) {
            const float *q = s->q + hh * hd;
            size_t koff = (hh / group) * hd;
            for (uint32_t t = 0; t <= pos; t++) {
                const float *kt = kc + t * kv + koff;
                float sc = 0.0f;
                for (size_t i = 0; i < hd; i++)
                    sc += q[i] * kt[i];
                s->att[t] = sc * inv_sqrt;
            }
            softmax(s->att, pos + 1);
            float *o = s->xb + hh * hd;
            memset(o, 0, hd * sizeof(float));
            for (uint32_t t = 0; t <= pos; t++) {
                const float *vt = vc + t * kv + koff;
                for (size_t i = 0; i < hd; i++)
                    o[i] += s->att[t] * vt[i];
            }
        }
        matmul(s->xb2, s->xb, m->wo + l * d * d, d, d);
        for (size_t i = 0; i < d; i++)
            s->x[i] += s->xb2[i];

        rmsnorm(s->xb, s->x, m->rms_ffn + l * d, d);
        matmul(s->hb, s->xb, m->w1 + l * h * d, d, h);
        matmul(s->hb2, s->xb, m->w3 + l * h * d, d, h);
        for (size_t i = 0; i < h; i++) {
            float a = s->hb[i];
            s->hb[i] = a / (1.0f + expf(-a)) * s->hb2[i];
        }
        matmul(s->xb, s->hb, m->w2 + l * d * h, h, d);
        for (size_t i = 0; i < d; i++)
            s->x[i] += s->xb[i];
    }
    rmsnorm(s->x, s->x, m->rms_final, d);
    matmul(s->logits, s->x, m->wcls, d, c->vocab_size);
    *logits = s->logits;
    return 0;
}

static int check_range(const kvtc_llama_state *s, uint32_t first, uint32_t n)
{
    if (!s || n == 0 || first >= s->m->c.seq_len || n > s->m->c.seq_len - first)
        return KVTC_EINVAL;
    return 0;
}

/* Cache rows are [layer][pos][kv_dim]; a canonical chunk is
 * [layer][k|v][token][kv_dim], so each (layer, k|v) is one contiguous copy. */
static void copy_kv(const kvtc_llama_state *s, const float *keys, uint32_t first,
                    uint32_t n, float *dst)
{
    const kvtc_llama_config *c = &s->m->c;
    size_t span = (size_t)n * c->kv_dim;
    for (size_t l = 0; l < c->n_layers; l++) {
        size_t src = (l * c->seq_len + first) * c->kv_dim;
        memcpy(dst + (2 * l) * span, keys + src, span * sizeof(float));
        memcpy(dst + (2 * l + 1) * span, s->value + src, span * sizeof(float));
    }
}

int kvtc_llama_export_kv(const kvtc_llama_state *s, uint32_t first, uint32_t n,
                         float *dst)
{
    int rc = check_range(s, first, n);
    if (rc || !dst)
        return rc ? rc : KVTC_EINVAL;
    copy_kv(s, s->key, first, n, dst);
    return 0;
}

int kvtc_llama_export_kv_norope(const kvtc_llama_state *s, uint32_t first,
                                uint32_t n, float *dst)
{
    int rc = check_range(s, first, n);
    if (rc || !dst)
        return rc ? rc : KVTC_EINVAL;
    copy_kv(s, s->key_norope, first, n, dst);
    return 0;
}

int kvtc_llama_import_kv(kvtc_llama_state *s, uint32_t first, uint32_t n,
                         const float *src)
{
    int rc = check_range(s, first, n);
    if (rc || !src)
        return rc ? rc : KVTC_EINVAL;
    const kvtc_llama_config *c = &s->m->c;
    size_t span = (size_t)n * c->kv_dim;
    for (size_t l = 0; l < c->n_layers; l++) {
        size_t dst = (l * c->seq_len + first) * c->kv_dim;
        memcpy(s->key + dst, src + (2 * l) * span, span * sizeof(float));
        memcpy(s->value + dst, src + (2 * l + 1) * span, span * sizeof(float));
    }
    return 0;
}

/* xorshift64* (as llama2.c), its state seeded through splitmix64 so that
 * nearby seeds (1, 2, 3...) give unrelated streams and seed 0 works. */
static uint64_t splitmix64(uint64_t x)
{
    x += 0x9E3779B97F4A7C15ull;
    x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
    x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
    return x ^ (x >> 31);
}

static double rng_uniform(uint64_t *st)
{
    *st ^= *st >> 12;
    *st ^= *st << 25;
    *st ^= *st >> 27;
    uint64_t r = (*st * 0x2545F4914F6CDD1Dull) >> 11; /* 53 bits */
    return (double)r / 9007199254740992.0;
}

void kvtc_llama_log_softmax(const float *logits, uint32_t n, double *out)
{
    double mx = logits[0];
    for (uint32_t i = 1; i < n; i++)
        if (logits[i] > mx)
            mx = logits[i];
    double sum = 0.0;
    for (uint32_t i = 0; i < n; i++)
        sum += exp((double)logits[i] - mx);
    double lse = mx + log(sum);
    for (uint32_t i = 0; i < n; i++)
        out[i] = (double)logits[i] - lse;
}

int kvtc_llama_sample(kvtc_llama_state *s, uint64_t seed, uint32_t n,
                      int32_t *tokens)
{
    if (!s || !tokens || n == 0 || n > s->m->c.seq_len + 1)
        return KVTC_EINVAL;
    uint32_t vocab = s->m->c.vocab_size;
    double *lp = malloc(vocab * sizeof(double));
    if (!lp)
        return KVTC_ENOMEM;
    uint64_t st = splitmix64(seed);
    if (st == 0) /* xorshift's one fixed point */
        st = 1;
    int rc = 0;
    tokens[0] = KVTC_LLAMA_BOS;
    for (uint32_t t = 1; t < n; t++) {
        const float *logits;
        rc = kvtc_llama_forward(s, tokens[t - 1], t - 1, &logits);
        if (rc)
            break;
        kvtc_llama_log_softmax(logits, vocab, lp);
        double r = rng_uniform(&st), cdf = 0.0;
        int32_t pick = (int32_t)vocab - 1; /* rounding: cdf may end below 1 */
        for (uint32_t i = 0; i < vocab; i++) {
            cdf += exp(lp[i]);
            if (r < cdf) {
                pick = (int32_t)i;
                break;
            }
        }
        tokens[t] = pick;
    }
    free(lp);
    return rc;
}
