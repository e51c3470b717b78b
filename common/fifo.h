/* fifo.h - a singly linked FIFO threaded through its items' own link
 * field and kept as a head and a tail pointer, both NULL when it is empty
 * (so a zeroed struct holds an empty one). Macros, so that any struct and
 * link field serve (libkvtc's done list and bulk send queue, kvtcd's reply
 * queue, aio and disk waiters, deferred local copies). head, tail and item
 * are evaluated more than once: pass plain lvalues. No locking: the
 * owner's. */
#ifndef KVTC_COMMON_FIFO_H
#define KVTC_COMMON_FIFO_H

#include <stddef.h>

/* Appends item; its link becomes NULL. */
#define KVTC_FIFO_PUSH(head, tail, item, link)                                                    \
    do {                                                                                           \
        (item)->link = NULL;                                                                       \
        if (tail)                                                                                  \
            (tail)->link = (item);                                                                 \
        else                                                                                       \
            (head) = (item);                                                                       \
        (tail) = (item);                                                                           \
    } while (0)

/* Unlinks the first item, which the caller has read from head (the FIFO
 * is not empty); that item's link is left as it was. */
#define KVTC_FIFO_POP(head, tail, link)                                                            \
    do {                                                                                           \
        (head) = (head)->link;                                                                     \
        if (!(head))                                                                               \
            (tail) = NULL;                                                                         \
    } while (0)

#endif
