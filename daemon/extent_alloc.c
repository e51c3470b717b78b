/* extent_alloc.c - segregated-fit extent allocator (see extent_alloc.h). */
#include "extent_alloc.h"

#include <stdlib.h>
#include <string.h>

#include "kvtc_errors.h"

#define SCAN_MAX 8 /* blocks of the request's own class tried */

static unsigned cls_of(uint64_t len)
{
    return 63u - (unsigned)__builtin_clzll(len);
}

static void free_insert(kvtcd_xalloc *a, kvtcd_xblock *e)
{
    unsigned c = cls_of(e->len);
    e->is_free = 1;
    e->cls = (uint8_t)c;
    e->fprev = NULL;
    e->fnext = a->free_head[c];
    if (e->fnext)
        e->fnext->fprev = e;
    a->free_head[c] = e;
    a->free_map |= 1ull << c;
    a->free_blocks++;
}

static void free_remove(kvtcd_xalloc *a, kvtcd_xblock *e)
{
    unsigned c = e->cls;
    if (e->fprev)
        e->fprev->fnext = e->fnext;
    else
        a->free_head[c] = e->fnext;
    if (e->fnext)
        e->fnext->fprev = e->fprev;
    if (!a->free_head[c])
        a->free_map &= ~(1ull << c);
    e->is_free = 0;
    e->fprev = e->fnext = NULL;
    a->free_blocks--;
}

static uint32_t tab_home(const kvtcd_xalloc *a, uint64_t off)
{
    return (uint32_t)(((off / a->align) * 0x9E3779B97F4A7C15ull) >> 32) &
           a->tab_mask;
}

kvtcd_xblock *kvtcd_xalloc_find(const kvtcd_xalloc *a, uint64_t off)
{
    if (!a->tab)
        return NULL;
    for (uint32_t i = tab_home(a, off);; i = (i + 1) & a->tab_mask) {
        kvtcd_xblock *e = a->tab[i];
        if (!e || e->off == off)
            return e;
    }
}

static int tab_grow(kvtcd_xalloc *a)
{
    uint32_t ocap = a->tab_mask + 1, ncap = ocap * 2;
    if (ncap < ocap)
        return KVTC_ENOMEM;
    kvtcd_xblock **nt = calloc(ncap, sizeof *nt);
    if (!nt)
        return KVTC_ENOMEM;
    kvtcd_xblock **old = a->tab;
    a->tab = nt;
    a->tab_mask = ncap - 1;
    for (uint32_t i = 0; i < ocap; i++) {
        if (!old[i])
            continue;
        uint32_t j = tab_home(a, old[i]->off);
        while (nt[j])
            j = (j + 1) & a->tab_mask;
        nt[j] = old[i];
    }
    free(old);
    return 0;
}

static int tab_put(kvtcd_xalloc *a, kvtcd_xblock *e)
{
    /* Load at most 1/2: probes stay short. */
    if ((uint64_t)(a->tab_count + 1) * 2 > (uint64_t)a->tab_mask + 1) {
        int rc = tab_grow(a);
        if (rc < 0)
            return rc;
    }
    uint32_t i = tab_home(a, e->off);
    while (a->tab[i])
        i = (i + 1) & a->tab_mask;
    a->tab[i] = e;
    a->tab_count++;
    e->in_tab = 1;
    return 0;
}

/* Backward-shift deletion: no tombstones, so lookups never degrade. */
static void tab_del(kvtcd_xalloc *a, kvtcd_xblock *e)
{
    uint32_t i = tab_home(a, e->off);
    while (a->tab[i] != e)
        i = (i + 1) & a->tab_mask;
    for (uint32_t j = (i + 1) & a->tab_mask; a->tab[j];
         j = (j + 1) & a->tab_mask) {
        uint32_t k = tab_home(a, a->tab[j]->off);
        /* Move tab[j] into the hole unless its home lies in (i, j]. */
        if (((j - k) & a->tab_mask) >= ((j - i) & a->tab_mask)) {
            a->tab[i] = a->tab[j];
            i = j;
        }
    }
    a->tab[i] = NULL;
    a->tab_count--;
    e->in_tab = 0;
}

int kvtcd_xalloc_init(kvtcd_xalloc *a, uint64_t capacity, uint64_t align)
{
    if (!a || align == 0 || (align & (align - 1)))
        return KVTC_EINVAL;
    memset(a, 0, sizeof *a);
    capacity &= ~(align - 1);
    if (capacity == 0)
        return KVTC_EINVAL;
    a->capacity = capacity;
    a->align = align;
    a->tab_mask = 63;
    a->tab = calloc(a->tab_mask + 1, sizeof *a->tab);
    a->first = calloc(1, sizeof *a->first);
    if (!a->tab || !a->first) {
        kvtcd_xalloc_fini(a);
        return KVTC_ENOMEM;
    }
    a->first->len = capacity;
    free_insert(a, a->first);
    return 0;
}

void kvtcd_xalloc_fini(kvtcd_xalloc *a)
{
    if (!a)
        return;
    kvtcd_xblock *e = a->first;
    while (e) {
        kvtcd_xblock *n = e->anext;
        free(e);
        e = n;
    }
    free(a->tab);
    memset(a, 0, sizeof *a);
}

int kvtcd_xalloc_get(kvtcd_xalloc *a, uint64_t len, kvtcd_xblock **out)
{
    if (!a || !out || len == 0)
        return KVTC_EINVAL;
    if (len > a->capacity - a->used)
        return KVTC_EFULL;
    uint64_t need = (len + a->align - 1) & ~(a->align - 1);
    unsigned c = cls_of(need);
    kvtcd_xblock *e = NULL;
    /* A few blocks of the request's own class may fit (tighter than a
     * block of a larger class); bounded so the call stays O(1). */
    int scanned = 0;
    for (kvtcd_xblock *f = a->free_head[c]; f && scanned < SCAN_MAX;
         f = f->fnext, scanned++) {
        if (f->len >= need) {
            e = f;
            break;
        }
    }
    if (!e) {
        uint64_t larger =
            c + 1 < KVTCD_XA_CLASSES ? a->free_map & ~((2ull << c) - 1) : 0;
        if (!larger)
            return KVTC_EFULL;
        e = a->free_head[__builtin_ctzll(larger)];
    }
    kvtcd_xblock *rest = NULL;
    if (e->len > need) {
        rest = calloc(1, sizeof *rest);
        if (!rest)
            return KVTC_ENOMEM;
    }
    /* Grow the table before changing anything, so a failure leaves the
     * allocator as it was. */
    if ((uint64_t)(a->tab_count + 1) * 2 > (uint64_t)a->tab_mask + 1 &&
        tab_grow(a) < 0) {
        free(rest);
        return KVTC_ENOMEM;
    }
    free_remove(a, e);
    if (rest) {
        rest->off = e->off + need;
        rest->len = e->len - need;
        rest->aprev = e;
        rest->anext = e->anext;
        if (e->anext)
            e->anext->aprev = rest;
        e->anext = rest;
        e->len = need;
        free_insert(a, rest);
    }
    tab_put(a, e); /* cannot fail: room was made above */
    e->user[0] = e->user[1] = 0;
    e->user_flag = 0;
    a->used += e->len;
    a->used_blocks++;
    *out = e;
    return 0;
}

void kvtcd_xalloc_hide(kvtcd_xalloc *a, kvtcd_xblock *b)
{
    if (b->in_tab)
        tab_del(a, b);
}

void kvtcd_xalloc_put(kvtcd_xalloc *a, kvtcd_xblock *e)
{
    if (!a || !e || e->is_free)
        return;
    kvtcd_xalloc_hide(a, e);
    a->used -= e->len;
    a->used_blocks--;
    kvtcd_xblock *p = e->aprev, *n = e->anext;
    if (n && n->is_free) {
        free_remove(a, n);
        e->len += n->len;
        e->anext = n->anext;
        if (n->anext)
            n->anext->aprev = e;
        free(n);
    }
    if (p && p->is_free) {
        free_remove(a, p);
        p->len += e->len;
        p->anext = e->anext;
        if (e->anext)
            e->anext->aprev = p;
        free(e);
        e = p;
    }
    free_insert(a, e);
}

uint64_t kvtcd_xalloc_largest_free(const kvtcd_xalloc *a)
{
    if (!a->free_map)
        return 0;
    unsigned c = 63u - (unsigned)__builtin_clzll(a->free_map);
    uint64_t best = 0;
    for (const kvtcd_xblock *f = a->free_head[c]; f; f = f->fnext)
        if (f->len > best)
            best = f->len;
    return best;
}
