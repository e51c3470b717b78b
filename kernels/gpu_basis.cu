/* gpu_basis.cu - see gpu_basis.h. Host code only. */
#include <pthread.h>
#include <unistd.h>

#include "gpu_basis.h"
#include "gpu_internal.h"

#define BASIS_MAX_THREADS 8u

struct basis_part {
    const kvtc__basis16 *a;
    uint32_t d0, d1;
};

static void fill_rows(const kvtc__basis16 *a, uint32_t d0, uint32_t d1)
{
    for (uint32_t d = d0; d < d1; d++) {
        const float *src = a->basis + (size_t)d * a->ncomp;
        float m = a->layer_mul[d / a->row_group];
        uint16_t *h = a->out + (size_t)d * a->ld;
        for (uint32_t c = 0; c < a->kp; c++) {
            float v = src[c] * a->scale[c] * m;
            h[c] = a->bf16 ? kvtc__f32_to_bf16(v) : kvtc__f32_to_f16(v);
        }
    }
}

static void *fill_part(void *arg)
{
    const struct basis_part *p = (const struct basis_part *)arg;
    fill_rows(p->a, p->d0, p->d1);
    return NULL;
}

extern "C" void kvtc__basis16_fill(const kvtc__basis16 *a, unsigned threads)
{
    if (threads == 0) {
        long n = sysconf(_SC_NPROCESSORS_ONLN);
        threads = n > 0 ? (unsigned)n : 1;
    }
    if (threads > BASIS_MAX_THREADS)
        threads = BASIS_MAX_THREADS;
    if (threads > a->rows)
        threads = a->rows ? a->rows : 1;
    struct basis_part part[BASIS_MAX_THREADS];
    pthread_t tid[BASIS_MAX_THREADS];
    int started[BASIS_MAX_THREADS] = {0};
    uint32_t per = (a->rows + threads - 1) / threads;
    for (unsigned t = 0; t < threads; t++) {
        part[t].a = a;
        part[t].d0 = t * per < a->rows ? t * per : a->rows;
        part[t].d1 = (t + 1) * per < a->rows ? (t + 1) * per : a->rows;
    }
    /* part 0 is this thread's; a part whose thread cannot start too */
    for (unsigned t = 1; t < threads; t++)
        started[t] = pthread_create(&tid[t], NULL, fill_part, &part[t]) == 0;
    fill_part(&part[0]);
    for (unsigned t = 1; t < threads; t++) {
        if (started[t])
            pthread_join(tid[t], NULL);
        else
            fill_part(&part[t]);
    }
}
