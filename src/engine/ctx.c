/* SPDX-License-Identifier: MIT */
/* ctx.c: the context (owner of everything), its sticky error, its random
 * generator and its thread count. Nothing in tapegrad is global: two contexts
 * can train on two threads. */
#include "internal.h"

#include <math.h>
#include <stdio.h>
#include <unistd.h>


static int default_threads(void) {
    long n = sysconf(_SC_NPROCESSORS_ONLN);
    if (n < 1) n = 1;
    if (n > 256) n = 256;
    return (int)n;
}

tg_ctx *tg_ctx_new_with_alloc(uint64_t seed, tg_alloc_fn alloc, void *ud) {
    if (!alloc) alloc = tgi_default_alloc;
    tg_ctx *ctx = alloc(ud, NULL, 0, sizeof(tg_ctx));
    if (!ctx) return NULL;
    memset(ctx, 0, sizeof *ctx);
    ctx->alloc = alloc;
    ctx->alloc_ud = ud;
    ctx->nthreads = default_threads();
    ctx->training = 1;
    ctx->gen = 1;
    tg_seed(ctx, seed);
    ctx->gemm = tgi_gemm_ws_new(alloc, ud);
    ctx->pool = tgi_pool_new(alloc, ud); /* no thread yet: they start at the first job */
    if (!ctx->gemm || !ctx->pool) {
        tgi_gemm_ws_free(ctx->gemm);
        tgi_pool_free(ctx->pool);
        alloc(ud, ctx, sizeof(tg_ctx), 0);
        return NULL;
    }
    tgi_gemm_ws_set_pool(ctx->gemm, ctx->pool);
    return ctx;
}

tg_ctx *tg_ctx_new(uint64_t seed) { return tg_ctx_new_with_alloc(seed, NULL, NULL); }

void tg_ctx_free(tg_ctx *ctx) {
    if (!ctx) return;
    for (int i = 0; i < ctx->n_params; i++) {
        tg_tensor *p = ctx->params[i];
        size_t bytes = tgi_bytes(p);
        size_t padded = (bytes + TG_ALIGN - 1) & ~(size_t)(TG_ALIGN - 1);
        tgi_free_aligned(ctx, p->data, 2 * padded);
        tgi_free(ctx, (void *)p->name, strlen(p->name) + 1);
        tgi_free(ctx, p, sizeof *p);
    }
    tgi_free(ctx, ctx->params, (size_t)ctx->cap_params * sizeof(tg_tensor *));
    tgi_free(ctx, ctx->tape, (size_t)ctx->tape_cap * sizeof(tgi_node));
    tgi_arena_free(ctx);
    tgi_gemm_ws_free(ctx->gemm);
    tgi_pool_free(ctx->pool);
    tg_alloc_fn alloc = ctx->alloc;
    void *ud = ctx->alloc_ud;
    alloc(ud, ctx, sizeof(tg_ctx), 0);
}

/* ---- errors ---- */

void tgi_verror(tg_ctx *ctx, const char *fmt, va_list ap) {
    if (!ctx || ctx->has_error) return;
    ctx->has_error = 1;
    vsnprintf(ctx->errmsg, sizeof ctx->errmsg, fmt, ap);
    if (ctx->err_fn) ctx->err_fn(ctx, ctx->errmsg, ctx->err_user);
}

void tg_set_error(tg_ctx *ctx, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    tgi_verror(ctx, fmt, ap);
    va_end(ap);
}

#undef tg_ok
int tg_ok(const tg_ctx *ctx) { return ctx && !ctx->has_error; }

const char *tg_errmsg(const tg_ctx *ctx) {
    if (!ctx) return "tg_errmsg: ctx is NULL";
    return ctx->has_error ? ctx->errmsg : "";
}

void tg_clear_error(tg_ctx *ctx) {
    if (!ctx) return;
    ctx->has_error = 0;
    ctx->errmsg[0] = '\0';
}

void tg_set_error_callback(tg_ctx *ctx, tg_error_fn fn, void *user) {
    if (!ctx) return;
    ctx->err_fn = fn;
    ctx->err_user = user;
}

const char *tgi_shape_str(int ndim, const int64_t *shape, char *buf, size_t size) {
    size_t len = 0;
    if (size == 0) return buf;
    buf[0] = '\0';
    len += (size_t)snprintf(buf + len, size - len, "[");
    for (int i = 0; i < ndim && len < size; i++)
        len += (size_t)snprintf(buf + len, size - len, i ? ",%lld" : "%lld", (long long)shape[i]);
    if (len < size) snprintf(buf + len, size - len, "]");
    return buf;
}

int tgi_check_arg_slow(tg_ctx *ctx, const char *fn, const char *arg, const tg_tensor *t) {
    if (!t) {
        if (tg_ok(ctx)) tg_set_error(ctx, "%s: argument %s is NULL", fn, arg);
        return 0;
    }
    if (t->ctx != ctx) {
        tg_set_error(ctx, "%s: argument %s belongs to another context", fn, arg);
        return 0;
    }
    if (tg_ok(ctx) && t->gen != ctx->gen && t->gen != 0) {
        tg_set_error(ctx, "%s: argument %s is a temporary from before the last tg_reset (its "
                          "memory has been reused); make it again in this step",
                     fn, arg);
        return 0;
    }
    return tg_ok(ctx);
}

int tgi_check_float_slow(tg_ctx *ctx, const char *fn, const char *arg, const tg_tensor *t) {
    if (t->dtype == TG_F32 || t->dtype == TG_F64) return 1;
    char b[96];
    tg_set_error(ctx, "%s: %s must be f32 or f64, got %s %s", fn, arg, tg_dtype_name(t->dtype),
                 TGI_SHAPE(t, b));
    return 0;
}

int tgi_check_writable_slow(tg_ctx *ctx, const char *fn, const char *arg, const tg_tensor *t) {
    if (!(t->flags & TGI_WRAPPED)) return 1;
    char b[96];
    tg_set_error(ctx, "%s: %s (%s %s) wraps the caller's memory (tg_wrap), which tapegrad does "
                      "not write; copy it with tg_from to get a tensor of its own",
                 fn, arg, tg_dtype_name(t->dtype), TGI_SHAPE(t, b));
    return 0;
}

int tgi_check_same_dtype_slow(tg_ctx *ctx, const char *fn, const tg_tensor *a,
                              const tg_tensor *b) {
    if (a->dtype == b->dtype) return 1;
    char ba[96], bb[96];
    tg_set_error(ctx, "%s: dtypes differ: %s %s and %s %s", fn, tg_dtype_name(a->dtype),
                 TGI_SHAPE(a, ba), tg_dtype_name(b->dtype), TGI_SHAPE(b, bb));
    return 0;
}

int tgi_check_same_shape_slow(tg_ctx *ctx, const char *fn, const tg_tensor *a,
                              const tg_tensor *b) {
    int same = a->ndim == b->ndim;
    for (int i = 0; same && i < a->ndim; i++) same = a->shape[i] == b->shape[i];
    if (same) return 1;
    char ba[96], bb[96];
    tg_set_error(ctx, "%s: shapes differ: %s and %s", fn, TGI_SHAPE(a, ba), TGI_SHAPE(b, bb));
    return 0;
}

/* ---- random numbers: xoshiro256**, seeded through splitmix64 ---- */

static uint64_t splitmix64(uint64_t *s) {
    uint64_t z = (*s += 0x9e3779b97f4a7c15ULL);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}

void tg_seed(tg_ctx *ctx, uint64_t seed) {
    if (!ctx) return;
    uint64_t s = seed;
    for (int i = 0; i < 4; i++) ctx->rng[i] = splitmix64(&s);
}

static inline uint64_t rotl(uint64_t x, int k) { return (x << k) | (x >> (64 - k)); }

uint64_t tg_rand_u64(tg_ctx *ctx) {
    if (!ctx) return 0;
    uint64_t *s = ctx->rng;
    uint64_t result = rotl(s[1] * 5, 7) * 9;
    uint64_t t = s[1] << 17;
    s[2] ^= s[0];
    s[3] ^= s[1];
    s[1] ^= s[2];
    s[0] ^= s[3];
    s[2] ^= t;
    s[3] = rotl(s[3], 45);
    return result;
}

double tg_rand_uniform(tg_ctx *ctx) {
    return (double)(tg_rand_u64(ctx) >> 11) * 0x1.0p-53;
}

uint64_t tg_rand_below(tg_ctx *ctx, uint64_t n) {
    if (n == 0) return 0;
    /* rejection sampling: unbiased */
    uint64_t limit = UINT64_MAX - UINT64_MAX % n;
    uint64_t r;
    do r = tg_rand_u64(ctx);
    while (r >= limit);
    return r % n;
}

double tg_rand_normal(tg_ctx *ctx) {
    /* Box-Muller; u1 in (0,1] so log is finite */
    double u1 = 1.0 - tg_rand_uniform(ctx);
    double u2 = tg_rand_uniform(ctx);
    return sqrt(-2.0 * log(u1)) * cos(2.0 * TGI_PI * u2);
}

/* ---- threads ---- */

int tg_set_threads(tg_ctx *ctx, int n) {
    if (!ctx) return -1;
    if (n <= 0) n = default_threads();
    if (n > 256) n = 256;
    ctx->nthreads = n;
    return 0;
}

int tg_get_threads(const tg_ctx *ctx) { return ctx ? ctx->nthreads : 1; }

/* TGI_PAR_RUN's chunks on the pool: PAR_CHUNKS_PER_THREAD per thread, so that a
 * thread kept waiting for a core leaves its share to the others. */
#define PAR_CHUNKS_PER_THREAD 4
typedef struct {
    int64_t n;
    int nchunks;
    tgi_range_fn fn;
    void *arg;
} par_job;

static void par_chunk(void *p, int64_t c, int thread) {
    (void)thread;
    const par_job *j = p;
    const int64_t lo = tgi_chunk_at(j->n, j->nchunks, (int)c);
    const int64_t hi = tgi_chunk_at(j->n, j->nchunks, (int)c + 1);
    if (hi > lo) j->fn(j->arg, lo, hi);
}

void tgi_par_run_threads(tg_ctx *ctx, int nt, int64_t n, tgi_range_fn fn, void *arg) {
    par_job j = {n, nt * PAR_CHUNKS_PER_THREAD, fn, arg};
    tgi_pool_run(ctx->pool, nt, j.nchunks, par_chunk, &j);
}

typedef struct {
    tgi_units_fn fn;
    const void *arg;
    int64_t units;
    int nt;
} units_job;

static void units_chunk(void *p, int64_t t, int thread) {
    (void)thread;
    const units_job *j = p;
    j->fn(j->arg, j->units * t / j->nt, j->units * (t + 1) / j->nt);
}

void tgi_par_units(tg_ctx *ctx, int nt, int64_t units, tgi_units_fn fn, const void *arg) {
    units_job j = {fn, arg, units, nt};
    tgi_pool_run(ctx->pool, nt, nt, units_chunk, &j);
}

int tgi_threads_for(const tg_ctx *ctx, int64_t work) {
    if (ctx->nthreads <= 1 || work < (1 << 16)) return 1;
    int64_t n = work / (1 << 15);
    return n < ctx->nthreads ? (int)n : ctx->nthreads;
}
