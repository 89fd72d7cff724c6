/* SPDX-License-Identifier: MIT */
/* arena.c: the one allocation point and the arena of temporaries.
 *
 * Every byte the library takes goes through ctx->alloc (Lua-style), so a user
 * can replace it and out-of-memory is raised in one place (tgi_realloc).
 *
 * The arena holds every temporary (op outputs, inputs built per step, their
 * grads, what ops save for backward). It is a list of 64-byte aligned chunks
 * with a bump pointer. tg_reset rewinds it to the first chunk; if a step needed
 * more than one chunk, the reset replaces them by one chunk as large as the peak
 * so far, so from the second step on a training loop allocates nothing and a
 * reset is O(1).
 */
#include "internal.h"

#include <stdlib.h>

#define TGI_CHUNK_MIN ((size_t)1 << 16)

void *tgi_default_alloc(void *ud, void *ptr, size_t osize, size_t nsize) {
    (void)ud;
    (void)osize;
    if (nsize == 0) {
        free(ptr);
        return NULL;
    }
    return realloc(ptr, nsize);
}

void *tgi_realloc(tg_ctx *ctx, void *p, size_t osize, size_t nsize) {
    void *q = nsize > TGI_ALLOC_MAX ? NULL : ctx->alloc(ctx->alloc_ud, p, osize, nsize);
    if (!q && nsize > 0) tgi_oom(ctx, nsize);
    return q;
}

void tgi_oom(tg_ctx *ctx, size_t n) {
    tg_set_error(ctx, "%s: out of memory: could not allocate %zu bytes",
                 ctx->api ? ctx->api : "tapegrad", n);
}

void *tgi_malloc(tg_ctx *ctx, size_t n) { return tgi_realloc(ctx, NULL, 0, n ? n : 1); }

void *tgi_calloc(tg_ctx *ctx, size_t n) {
    void *p = tgi_malloc(ctx, n);
    if (p) memset(p, 0, n ? n : 1);
    return p;
}

void tgi_free(tg_ctx *ctx, void *p, size_t size) {
    if (p) ctx->alloc(ctx->alloc_ud, p, size ? size : 1, 0);
}

/* Aligned blocks: over-allocate, align by hand, keep the raw pointer just
 * before the aligned one. */
void *tgi_malloc_aligned(tg_ctx *ctx, size_t n) {
    if (n > TGI_ALLOC_MAX) {
        tgi_oom(ctx, n);
        return NULL;
    }
    size_t total = n + TG_ALIGN + sizeof(void *);
    unsigned char *raw = tgi_malloc(ctx, total);
    if (!raw) return NULL;
    uintptr_t a = ((uintptr_t)(raw + sizeof(void *)) + TG_ALIGN - 1) & ~(uintptr_t)(TG_ALIGN - 1);
    ((void **)a)[-1] = raw;
    return (void *)a;
}

void tgi_free_aligned(tg_ctx *ctx, void *p, size_t n) {
    if (!p) return;
    tgi_free(ctx, ((void **)p)[-1], n + TG_ALIGN + sizeof(void *));
}

/* ---- arena ---- */

static tgi_chunk *chunk_new(tg_ctx *ctx, size_t size) {
    size_t total = sizeof(tgi_chunk) + TG_ALIGN + size;
    tgi_chunk *c = tgi_malloc(ctx, total);
    if (!c) return NULL;
    c->next = NULL;
    c->size = size;
    c->used = 0;
    c->base = (unsigned char *)(((uintptr_t)(c + 1) + TG_ALIGN - 1) & ~(uintptr_t)(TG_ALIGN - 1));
    TGI_POISON(c->base, size);
    ctx->arena.capacity += size;
    ctx->arena.chunks++;
    ctx->arena.grows++;
    return c;
}

static void chunk_free(tg_ctx *ctx, tgi_chunk *c) {
    TGI_UNPOISON(c->base, c->size); /* the allocator may reuse it */
    ctx->arena.capacity -= c->size;
    ctx->arena.chunks--;
    tgi_free(ctx, c, sizeof(tgi_chunk) + TG_ALIGN + c->size);
}

static size_t arena_used(const tgi_arena *a) {
    return a->cur ? a->used_before_cur + a->cur->used : 0;
}

/* The most bytes in use at once so far: a->peak covers what came before the
 * last rewind (every rewind and chunk change notes it), the rest is in use now. */
static size_t arena_peak(const tgi_arena *a) {
    size_t u = arena_used(a);
    return u > a->peak ? u : a->peak;
}

/* The inline fast path (internal.h) bumps the pointer of the current chunk;
 * here the current chunk is full (or there is none). */
void *tgi_arena_alloc_slow(tg_ctx *ctx, size_t n) {
    tgi_arena *a = &ctx->arena;
    if (n > TGI_ALLOC_MAX) { /* before rounding and doubling can wrap */
        tgi_oom(ctx, n);
        return NULL;
    }
    n = (n + TG_ALIGN - 1) & ~(size_t)(TG_ALIGN - 1);
    if (n == 0) n = TG_ALIGN;
    if (a->cur && a->cur->size - a->cur->used >= n) {
        void *p = a->cur->base + a->cur->used;
        a->cur->used += n;
        TGI_UNPOISON(p, n);
        return p;
    }
    a->peak = arena_peak(a); /* before the chunks change */
    /* Move on: the next chunk if it is large enough, else a new one inserted
     * after the current chunk. */
    if (!a->cur && a->head && a->head->size >= n) {
        a->cur = a->head;
        a->cur->used = 0;
        a->used_before_cur = 0;
    } else if (a->cur && a->cur->next && a->cur->next->size >= n) {
        a->used_before_cur += a->cur->used;
        a->cur = a->cur->next;
        a->cur->used = 0;
    } else {
        size_t last = a->cur ? a->cur->size : 0;
        size_t size = last * 2 > n ? last * 2 : n;
        if (size < TGI_CHUNK_MIN) size = TGI_CHUNK_MIN;
        tgi_chunk *c = chunk_new(ctx, size);
        if (!c) return NULL;
        if (a->cur) {
            c->next = a->cur->next;
            a->cur->next = c;
            a->used_before_cur += a->cur->used;
        } else {
            c->next = a->head;
            a->head = c;
            a->used_before_cur = 0;
        }
        a->cur = c;
    }
    void *p = a->cur->base;
    a->cur->used = n;
    TGI_UNPOISON(p, n);
    return p;
}

void tgi_arena_reset(tg_ctx *ctx) {
    tgi_arena *a = &ctx->arena;
    a->peak = arena_peak(a);
    /* More than one chunk: a step outgrew the first chunk. Replace them all by
     * one chunk of the peak size (once), so later steps fit in one. */
    if (a->chunks > 1) {
        size_t want = a->peak + a->peak / 8;
        tgi_chunk *c = a->head;
        while (c) {
            tgi_chunk *next = c->next;
            chunk_free(ctx, c);
            c = next;
        }
        a->head = chunk_new(ctx, want); /* on failure the arena simply starts empty */
    }
    for (tgi_chunk *c = a->head; c; c = c->next) TGI_POISON(c->base, c->size);
    a->cur = a->head;
    if (a->cur) a->cur->used = 0;
    a->used_before_cur = 0;
}

void tgi_arena_free(tg_ctx *ctx) {
    tgi_chunk *c = ctx->arena.head;
    while (c) {
        tgi_chunk *next = c->next;
        chunk_free(ctx, c);
        c = next;
    }
    memset(&ctx->arena, 0, sizeof ctx->arena);
}

tgi_arena_mark tgi_arena_get_mark(const tg_ctx *ctx) {
    tgi_arena_mark m = {ctx->arena.cur, ctx->arena.cur ? ctx->arena.cur->used : 0,
                        ctx->arena.used_before_cur};
    return m;
}

void tgi_arena_rewind(tg_ctx *ctx, tgi_arena_mark m) {
    tgi_arena *a = &ctx->arena;
    a->peak = arena_peak(a);
    if (!m.cur) { /* nothing was allocated at the mark */
        a->cur = a->head;
        if (a->cur) a->cur->used = 0;
        for (tgi_chunk *c = a->head; c; c = c->next) TGI_POISON(c->base, c->size);
        a->used_before_cur = 0;
        return;
    }
    a->cur = m.cur;
    a->cur->used = m.used;
    a->used_before_cur = m.used_before_cur;
    TGI_POISON(a->cur->base + m.used, a->cur->size - m.used);
    for (tgi_chunk *c = a->cur->next; c; c = c->next) TGI_POISON(c->base, c->size);
}

#undef tg_scratch /* the public function (internal.h maps the library's calls) */
void *tg_scratch(tg_ctx *ctx, size_t bytes) {
    if (!ctx) return NULL;
    tgi_api(ctx, "tg_scratch");
    return tgi_arena_alloc(ctx, bytes);
}

void tg_mem_stats_get(const tg_ctx *ctx, tg_mem_stats *out) {
    if (!out) return;
    memset(out, 0, sizeof *out);
    if (!ctx) return;
    out->arena_capacity = ctx->arena.capacity;
    out->arena_used = arena_used(&ctx->arena);
    out->arena_peak = arena_peak(&ctx->arena);
    out->arena_chunks = ctx->arena.chunks;
    out->arena_grows = ctx->arena.grows;
    out->param_bytes = ctx->param_bytes;
    out->tape_capacity = ctx->tape_cap;
}
