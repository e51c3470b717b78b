/* dlist.h - a doubly linked list threaded through its items' own prev and
 * next link fields and kept as a head and a tail pointer, both NULL when it
 * is empty (so a zeroed struct holds an empty one). Macros, as fifo.h's, so
 * that one item may sit on several lists through different fields
 * (kvtcd's index: every entry on its LRU, those with a host copy also on
 * the host list). head, tail and item are evaluated more than once: pass
 * plain lvalues. No locking: the owner's. */
#ifndef KVTC_COMMON_DLIST_H
#define KVTC_COMMON_DLIST_H

#include <stddef.h>

/* Takes item (on the list) off it; its links become NULL. */
#define KVTC_DLIST_UNLINK(head, tail, item, prev, next)                                           \
    do {                                                                                           \
        if ((item)->prev)                                                                          \
            (item)->prev->next = (item)->next;                                                     \
        else                                                                                       \
            (head) = (item)->next;                                                                 \
        if ((item)->next)                                                                          \
            (item)->next->prev = (item)->prev;                                                     \
        else                                                                                       \
            (tail) = (item)->prev;                                                                 \
        (item)->prev = (item)->next = NULL;                                                        \
    } while (0)

/* Puts item (on no list) first. */
#define KVTC_DLIST_PUSH_HEAD(head, tail, item, prev, next)                                        \
    do {                                                                                           \
        (item)->prev = NULL;                                                                       \
        (item)->next = (head);                                                                     \
        if (head)                                                                                  \
            (head)->prev = (item);                                                                 \
        (head) = (item);                                                                           \
        if (!(tail))                                                                               \
            (tail) = (item);                                                                       \
    } while (0)

#endif
