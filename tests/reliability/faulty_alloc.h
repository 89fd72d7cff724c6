/* SPDX-License-Identifier: MIT */
/* faulty_alloc.h: a tg_alloc_fn for the reliability suites. It counts the
 * allocations (count), fails the fail_at-th one (never when fail_at <= 0) and
 * remembers that it did (failed), and keeps the bytes held (live), so a test
 * can check that nothing leaked after tg_ctx_free. */
#ifndef TG_FAULTY_ALLOC_H
#define TG_FAULTY_ALLOC_H

#include <stdlib.h>

typedef struct {
    long count, fail_at;
    long long live;
    int failed;
} faulty;

static inline void *faulty_alloc(void *ud, void *p, size_t osize, size_t nsize) {
    faulty *f = ud;
    if (nsize == 0) {
        if (p) f->live -= (long long)osize;
        free(p);
        return NULL;
    }
    if (++f->count == f->fail_at) {
        f->failed = 1;
        return NULL;
    }
    void *q = realloc(p, nsize);
    if (q) f->live += (long long)nsize - (p ? (long long)osize : 0);
    return q;
}

#endif
