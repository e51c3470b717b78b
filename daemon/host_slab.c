/* host_slab.c - extent allocator of the host tier's slab (see host_slab.h). */
#include <stdlib.h>
#include <string.h>

#include "host_slab.h"
#include "kvtc_errors.h"

#define SUB (1u << KVTCD_SLAB_SUB_BITS)

/* Class of an extent of n >= 1 pages. Monotonic in n, and each class holds
 * one contiguous range of sizes, so every extent of a class above
 * class_of(n) is larger than n: that is what lets alloc take any extent
 * from a higher class without looking at its size. */
static unsigned class_of(size_t n)
{
    unsigned fl = 63u - (unsigned)__builtin_clzll((unsigned long long)n);
    unsigned sl;
    if (fl >= KVTCD_SLAB_SUB_BITS)
        sl = (unsigned)(n >> (fl - KVTCD_SLAB_SUB_BITS)) & (SUB - 1);
    else
        sl = (unsigned)(n << (KVTCD_SLAB_SUB_BITS - fl)) & (SUB - 1);
    return fl * SUB + sl;
}

static void list_push(kvtcd_slab *s, kvtcd_extent *e)
{
    unsigned c = class_of(e->len);
    e->free = 1;
    e->prev = NULL;
    e->next = s->lists[c];
    if (e->next)
        e->next->prev = e;
    s->lists[c] = e;
    s->bitmap[c / 64] |= 1ull << (c % 64);
    s->free_pages += e->len;
    s->free_extents++;
}

static void list_remove(kvtcd_slab *s, kvtcd_extent *e)
{
    unsigned c = class_of(e->len);
    if (e->prev)
        e->prev->next = e->next;
    else
        s->lists[c] = e->next;
    if (e->next)
        e->next->prev = e->prev;
    if (!s->lists[c])
        s->bitmap[c / 64] &= ~(1ull << (c % 64));
    e->next = e->prev = NULL;
    e->free = 0;
    s->free_pages -= e->len;
    s->free_extents--;
}

/* First non-empty class strictly above c, or KVTCD_SLAB_CLASSES. */
static unsigned class_above(const kvtcd_slab *s, unsigned c)
{
    unsigned i = c + 1;
    while (i < KVTCD_SLAB_CLASSES) {
        uint64_t w = s->bitmap[i / 64] & (~0ull << (i % 64));
        if (w)
            return (i / 64) * 64 + (unsigned)__builtin_ctzll(w);
        i = (i / 64 + 1) * 64;
    }
    return KVTCD_SLAB_CLASSES;
}

int kvtcd_slab_init(kvtcd_slab *s, size_t pages)
{
    if (!s || pages == 0)
        return KVTC_EINVAL;
    memset(s, 0, sizeof *s);
    kvtcd_extent *e = calloc(1, sizeof *e);
    if (!e)
        return KVTC_ENOMEM;
    e->len = pages;
    s->pages = pages;
    s->head = e;
    list_push(s, e);
    return 0;
}

void kvtcd_slab_fini(kvtcd_slab *s)
{
    if (!s)
        return;
    kvtcd_extent *e = s->head;
    while (e) {
        kvtcd_extent *n = e->addr_next;
        free(e);
        e = n;
    }
    memset(s, 0, sizeof *s);
}

/* Best fit among the first KVTCD_SLAB_SCAN extents of class c. */
static kvtcd_extent *scan_class(kvtcd_slab *s, unsigned c, size_t n)
{
    kvtcd_extent *best = NULL;
    unsigned seen = 0;
    for (kvtcd_extent *e = s->lists[c]; e && seen < KVTCD_SLAB_SCAN;
         e = e->next, seen++) {
        if (e->len == n)
            return e;
        if (e->len > n && (!best || e->len < best->len))
            best = e;
    }
    return best;
}

int kvtcd_slab_alloc(kvtcd_slab *s, size_t n, kvtcd_extent **out)
{
    if (!s || n == 0 || !out)
        return KVTC_EINVAL;
    if (n > s->free_pages)
        return KVTC_EFULL;
    unsigned c = class_of(n);
    kvtcd_extent *e = scan_class(s, c, n);
    if (!e) {
        unsigned up = class_above(s, c);
        if (up == KVTCD_SLAB_CLASSES) {
            s->frag_fails++;
            return KVTC_EFULL;
        }
        e = s->lists[up];
    }
    if (e->len > n) {
        /* Split before unlinking, so a failed node allocation leaves the
         * slab as it was. */
        kvtcd_extent *rest = calloc(1, sizeof *rest);
        if (!rest)
            return KVTC_ENOMEM;
        list_remove(s, e);
        rest->off = e->off + n;
        rest->len = e->len - n;
        rest->addr_prev = e;
        rest->addr_next = e->addr_next;
        if (rest->addr_next)
            rest->addr_next->addr_prev = rest;
        e->addr_next = rest;
        e->len = n;
        list_push(s, rest);
    } else {
        list_remove(s, e);
    }
    if (e->off + e->len > s->hwm)
        s->hwm = e->off + e->len;
    *out = e;
    return 0;
}

/* Unlink b (free, right after a in address order) and grow a over it. */
static void absorb(kvtcd_extent *a, kvtcd_extent *b)
{
    a->len += b->len;
    a->addr_next = b->addr_next;
    if (b->addr_next)
        b->addr_next->addr_prev = a;
    free(b);
}

void kvtcd_slab_free(kvtcd_slab *s, kvtcd_extent *e)
{
    if (!s || !e || e->free)
        return;
    kvtcd_extent *next = e->addr_next, *prev = e->addr_prev;
    if (next && next->free) {
        list_remove(s, next);
        absorb(e, next);
    }
    if (prev && prev->free) {
        list_remove(s, prev);
        absorb(prev, e);
        e = prev;
    }
    list_push(s, e);
}

size_t kvtcd_slab_largest_free(const kvtcd_slab *s)
{
    size_t best = 0;
    for (unsigned c = KVTCD_SLAB_CLASSES; c-- > 0;) {
        if (!s->lists[c])
            continue;
        for (const kvtcd_extent *e = s->lists[c]; e; e = e->next)
            if (e->len > best)
                best = e->len;
        break;
    }
    return best;
}
