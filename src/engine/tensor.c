/* SPDX-License-Identifier: MIT */
/* tensor.c: making tensors (temporaries in the arena, parameters on the heap),
 * reading them, hashing them, filling them. */
#include "internal.h"

#include <math.h>
#include <stdio.h>
#include <xxhash.h>

#undef tg_dtype_size
size_t tg_dtype_size(tg_dtype dt) {
    switch (dt) {
    case TG_F32: return 4;
    case TG_F64: return 8;
    case TG_I32: return 4;
    }
    return 0;
}

const char *tg_dtype_name(tg_dtype dt) {
    switch (dt) {
    case TG_F32: return "f32";
    case TG_F64: return "f64";
    case TG_I32: return "i32";
    }
    return "invalid";
}

int64_t tgi_numel(int ndim, const int64_t *shape) {
    int64_t n = 1;
    for (int i = 0; i < ndim; i++) n *= shape[i];
    return n;
}

/* The error for a dtype, ndim or shape that check_shape refused; returns -1. */
static __attribute__((noinline, cold)) int64_t shape_error(tg_ctx *ctx, const char *fn, tg_dtype dt, int ndim,
                           const int64_t *shape) {
    if ((unsigned)dt > TG_I32) {
        tg_set_error(ctx, "%s: invalid dtype %d", fn, (int)dt);
    } else if (ndim < 0 || ndim > TG_MAX_DIMS) {
        tg_set_error(ctx, "%s: ndim must be 0 to %d, got %d", fn, TG_MAX_DIMS, ndim);
    } else if (ndim > 0 && !shape) {
        tg_set_error(ctx, "%s: shape is NULL for ndim %d", fn, ndim);
    } else {
        char b[128];
        tg_set_error(ctx, "%s: invalid shape %s", fn, tgi_shape_str(ndim, shape, b, sizeof b));
    }
    return -1;
}

/* Validates dtype, ndim and shape; returns numel or -1 with an error recorded.
 * Inline, so that the valid case costs a few compares; the messages are made out
 * of line. At most 2^40 elements: far beyond any real tensor. */
static inline int64_t check_shape(tg_ctx *ctx, const char *fn, tg_dtype dt, int ndim,
                                  const int64_t *shape) {
    const int64_t limit = (int64_t)1 << 40;
    if ((unsigned)dt > TG_I32 || (unsigned)ndim > TG_MAX_DIMS || (ndim > 0 && !shape))
        return shape_error(ctx, fn, dt, ndim, shape);
    int64_t n = 1;
    for (int i = 0; i < ndim; i++) {
        if (shape[i] < 0 || __builtin_mul_overflow(n, shape[i], &n) || n > limit)
            return shape_error(ctx, fn, dt, ndim, shape);
    }
    return n;
}

/* tgi_tensor_new's body, inline in this file's public functions */
static inline tg_tensor *tensor_new(tg_ctx *ctx, const char *fn, tg_dtype dt, int ndim,
                                    const int64_t *shape, int zero) {
    tgi_api(ctx, fn);
    int64_t n = check_shape(ctx, fn, dt, ndim, shape);
    if (n < 0) return NULL;
    tg_tensor *t = tgi_tensor_make(ctx, dt, ndim, shape, n);
    if (!t) return NULL;
    if (zero && n) memset(t->data, 0, tgi_bytes(t));
    return t;
}

tg_tensor *tgi_tensor_new(tg_ctx *ctx, const char *fn, tg_dtype dt, int ndim,
                          const int64_t *shape, int zero) {
    return tensor_new(ctx, fn, dt, ndim, shape, zero);
}

tg_tensor *tg_new(tg_ctx *ctx, tg_dtype dt, int ndim, const int64_t *shape) {
    if (!tg_ok(ctx)) return NULL;
    tg_tensor *t = tgi_tensor_new(ctx, "tg_new", dt, ndim, shape, 1);
    if (t) t->flags |= TGI_LEAF;
    return t;
}

/* memcpy for a tensor's data: 8 to 32 bytes (a few inputs of a tiny network) as two
 * overlapping fixed-size copies inline, the rest by the library's memcpy */
static inline void copy_data(void *dst, const void *src, size_t n) {
    unsigned char *d = dst;
    const unsigned char *s = src;
    if (n >= 16 && n <= 32) {
        memcpy(d, s, 16);
        memcpy(d + n - 16, s + n - 16, 16);
    } else if (n >= 8 && n < 16) {
        memcpy(d, s, 8);
        memcpy(d + n - 8, s + n - 8, 8);
    } else {
        memcpy(d, s, n);
    }
}

/* A large copy (a batch of an MLP-1024: 800 KB) in contiguous pieces over the
 * context's threads (TGI_PAR_RUN: below its threshold, one memcpy in this
 * thread); in one thread it was 1.4% of a two-thread step, the other thread
 * waiting. */
typedef struct {
    unsigned char *d;
    const unsigned char *s;
    size_t es;
} copy_job;
TGI_PAR_FN void copy_range(void *arg, int64_t lo, int64_t hi) {
    const copy_job *c = arg;
    memcpy(c->d + (size_t)lo * c->es, c->s + (size_t)lo * c->es, (size_t)(hi - lo) * c->es);
}
__attribute__((noinline)) static void copy_data_par(tg_ctx *ctx, tg_tensor *t, const void *data) {
    copy_job c = {t->data, data, tg_dtype_size(t->dtype)};
    TGI_PAR_RUN(ctx, t->numel, copy_range, &c);
}

tg_tensor *tg_from(tg_ctx *ctx, tg_dtype dt, int ndim, const int64_t *shape, const void *data) {
    if (!tg_ok(ctx)) return NULL;
    if (!data) {
        tg_set_error(ctx, "tg_from: data is NULL");
        return NULL;
    }
    tg_tensor *t = tensor_new(ctx, "tg_from", dt, ndim, shape, 0);
    if (!t) return NULL;
    t->flags |= TGI_LEAF;
    if (t->numel >= TGI_PAR_MIN)
        copy_data_par(ctx, t, data);
    else if (t->numel)
        copy_data(t->data, data, tgi_bytes(t));
    return t;
}

/* A leaf over the caller's memory: the tensor's head alone comes from the arena
 * (so it dies at tg_reset like any temporary), data points at the caller's
 * array. Nothing in the library writes a leaf's data except the fill and init
 * functions, which refuse a wrapped tensor (tgi_check_writable). Kernels need
 * no more alignment than the element's: every vector load is unaligned. */
tg_tensor *tg_wrap(tg_ctx *ctx, tg_dtype dt, int ndim, const int64_t *shape, const void *data) {
    static const char fn[] = "tg_wrap";
    if (!tg_ok(ctx)) return NULL;
    tgi_api(ctx, fn);
    int64_t n = check_shape(ctx, fn, dt, ndim, shape);
    if (n < 0) return NULL;
    if (!data) {
        tg_set_error(ctx, "%s: data is NULL", fn);
        return NULL;
    }
    const size_t es = tg_dtype_size(dt);
    if ((uintptr_t)data % es != 0) {
        char b[128];
        tg_set_error(ctx, "%s: data %p is not aligned to %zu bytes, the size of a %s element "
                          "(shape %s); tg_from copies from any address",
                     fn, data, es, tg_dtype_name(dt), tgi_shape_str(ndim, shape, b, sizeof b));
        return NULL;
    }
    tg_tensor *t = tgi_arena_alloc(ctx, TGI_TENSOR_HEAD);
    if (!t) return NULL;
    tgi_tensor_init(t, ctx, (void *)(uintptr_t)data, dt, ndim, shape, n);
    t->flags |= TGI_LEAF | TGI_WRAPPED;
    return t;
}

tg_tensor *tg_scalar(tg_ctx *ctx, tg_dtype dt, double value) {
    if (!tg_ok(ctx)) return NULL;
    tg_tensor *t = tgi_tensor_new(ctx, "tg_scalar", dt, 0, NULL, 0);
    if (!t) return NULL;
    t->flags |= TGI_LEAF;
    tg_fill(t, value);
    return t;
}

/* Parameters: the struct and name on the heap; data and grad in one 64-byte
 * aligned block (data first, grad after, each padded to 64 bytes), reserved at
 * creation so that training never allocates for them. */
tg_tensor *tg_param(tg_ctx *ctx, const char *name, tg_dtype dt, int ndim, const int64_t *shape) {
    if (!tg_ok(ctx)) return NULL;
    tgi_api(ctx, "tg_param");
    if (dt != TG_F32 && dt != TG_F64) {
        tg_set_error(ctx, "tg_param: parameter '%s' must be f32 or f64, got %s",
                     name ? name : "(unnamed)", tg_dtype_name(dt));
        return NULL;
    }
    int64_t n = check_shape(ctx, "tg_param", dt, ndim, shape);
    if (n < 0) return NULL;
    char autoname[32];
    if (!name) {
        snprintf(autoname, sizeof autoname, "param%d", ctx->n_params);
        name = autoname;
    }
    if (!*name) {
        tg_set_error(ctx, "tg_param: name is empty");
        return NULL;
    }
    if (tg_param_find(ctx, name)) {
        tg_set_error(ctx, "tg_param: a parameter named '%s' exists already", name);
        return NULL;
    }
    if (ctx->n_params == ctx->cap_params) {
        int cap = ctx->cap_params ? ctx->cap_params * 2 : 16;
        tg_tensor **p = tgi_realloc(ctx, ctx->params, (size_t)ctx->cap_params * sizeof *p,
                                    (size_t)cap * sizeof *p);
        if (!p) return NULL;
        ctx->params = p;
        ctx->cap_params = cap;
    }
    size_t bytes = (size_t)n * tg_dtype_size(dt);
    size_t padded = (bytes + TG_ALIGN - 1) & ~(size_t)(TG_ALIGN - 1);
    tg_tensor *t = tgi_malloc(ctx, sizeof *t);
    size_t nlen = strlen(name) + 1;
    char *nm = t ? tgi_malloc(ctx, nlen) : NULL;
    unsigned char *block = nm ? tgi_malloc_aligned(ctx, 2 * padded) : NULL;
    if (!block) {
        if (nm) tgi_free(ctx, nm, nlen);
        if (t) tgi_free(ctx, t, sizeof *t);
        return NULL;
    }
    memcpy(nm, name, nlen);
    memset(block, 0, 2 * padded);
    memset(t, 0, sizeof *t);
    tgi_tensor_init(t, ctx, block, dt, ndim, shape, n);
    t->grad_store = block + padded;
    t->flags = TGI_LEAF | TGI_PARAM | TGI_REQ_GRAD;
    t->name = nm;
    t->gen = 0; /* a parameter outlives every tg_reset */
    ctx->params[ctx->n_params++] = t;
    ctx->param_bytes += 2 * padded;
    return t;
}

int tg_param_count(const tg_ctx *ctx) { return ctx ? ctx->n_params : 0; }

tg_tensor *tg_param_at(const tg_ctx *ctx, int i) {
    if (!ctx || i < 0 || i >= ctx->n_params) return NULL;
    return ctx->params[i];
}

tg_tensor *tg_param_find(const tg_ctx *ctx, const char *name) {
    if (!ctx || !name) return NULL;
    for (int i = 0; i < ctx->n_params; i++)
        if (strcmp(ctx->params[i]->name, name) == 0) return ctx->params[i];
    return NULL;
}

void tg_set_requires_grad(tg_tensor *t, int on) {
    if (!t) return;
    if (!(t->flags & TGI_LEAF)) {
        char b[96];
        tg_set_error(t->ctx,
                     "tg_set_requires_grad: tensor %s is the output of an op, not a leaf; "
                     "gradients reach it already when its inputs require them",
                     TGI_SHAPE(t, b));
        return;
    }
    if (on && t->dtype == TG_I32) {
        char b[96];
        tg_set_error(t->ctx, "tg_set_requires_grad: i32 tensor %s cannot require a gradient",
                     TGI_SHAPE(t, b));
        return;
    }
    if (on)
        t->flags |= TGI_REQ_GRAD;
    else
        t->flags &= ~(uint32_t)TGI_REQ_GRAD;
}

int tg_requires_grad(const tg_tensor *t) { return t && (t->flags & TGI_REQ_GRAD) ? 1 : 0; }

void *tg_data(const tg_tensor *t) { return t ? t->data : NULL; }
#undef tg_grad /* the public function: internal.h maps the library's calls */
void *tg_grad(const tg_tensor *t) {
    /* (a parameter is made on the heap by tg_param: its flags may be written) */
    if (t && (t->flags & TGI_PARAM)) ((tg_tensor *)t)->flags |= TGI_GRAD_SEEN;
    return tgi_grad(t);
}
int tg_ndim(const tg_tensor *t) { return t ? t->ndim : 0; }
const int64_t *tg_shape(const tg_tensor *t) { return t ? t->shape : NULL; }
int64_t tg_numel(const tg_tensor *t) { return t ? t->numel : 0; }
tg_dtype tg_dtype_of(const tg_tensor *t) { return t ? t->dtype : TG_F32; }
const char *tg_name(const tg_tensor *t) { return t ? t->name : ""; }

int64_t tg_dim(const tg_tensor *t, int axis) {
    if (!t) return 0;
    if (axis < 0) axis += t->ndim;
    if (axis < 0 || axis >= t->ndim) return 0;
    return t->shape[axis];
}

char *tg_shape_str(const tg_tensor *t, char *buf, size_t size) {
    if (!buf || !size) return buf;
    if (!t) {
        snprintf(buf, size, "(null)");
        return buf;
    }
    tgi_shape_str(t->ndim, t->shape, buf, size);
    return buf;
}

static double get_elem(const tg_tensor *t, int64_t i) {
    switch (t->dtype) {
    case TG_F32: return ((const float *)t->data)[i];
    case TG_F64: return ((const double *)t->data)[i];
    case TG_I32: return ((const int32_t *)t->data)[i];
    }
    return NAN;
}

double tg_item(const tg_tensor *t) {
    if (!t || t->numel != 1) {
        if (t) {
            char b[96];
            tg_set_error(t->ctx, "tg_item: tensor %s has %lld elements, not one",
                         TGI_SHAPE(t, b), (long long)t->numel);
        }
        return NAN;
    }
    return get_elem(t, 0);
}

uint64_t tg_hash(const tg_tensor *t) {
    if (!t) return 0;
    int64_t head[2 + TG_MAX_DIMS] = {(int64_t)t->dtype, (int64_t)t->ndim};
    for (int i = 0; i < t->ndim; i++) head[2 + i] = t->shape[i];
    uint64_t seed = XXH3_64bits(head, sizeof head);
    return XXH3_64bits_withSeed(t->data, tgi_bytes(t), seed);
}

void tg_fill(tg_tensor *t, double value) {
    if (!t) return;
    if (!tgi_check_writable(t->ctx, "tg_fill", "t", t)) return;
    int64_t n = t->numel;
    switch (t->dtype) {
    case TG_F32: {
        float *p = t->data;
        for (int64_t i = 0; i < n; i++) p[i] = (float)value;
        break;
    }
    case TG_F64: {
        double *p = t->data;
        for (int64_t i = 0; i < n; i++) p[i] = value;
        break;
    }
    case TG_I32: {
        int32_t *p = t->data;
        for (int64_t i = 0; i < n; i++) p[i] = (int32_t)value;
        break;
    }
    }
}

int tg_copy_out(const tg_tensor *t, tg_dtype dt, void *dst) {
    if (!t || !dst) return -1;
    for (int64_t i = 0; i < t->numel; i++) {
        double v = get_elem(t, i);
        switch (dt) {
        case TG_F32: ((float *)dst)[i] = (float)v; break;
        case TG_F64: ((double *)dst)[i] = v; break;
        case TG_I32: ((int32_t *)dst)[i] = (int32_t)v; break;
        default: return -1;
        }
    }
    return 0;
}

static int check_fill(tg_ctx *ctx, const char *fn, tg_tensor *t) {
    if (!ctx) return 0;
    if (!tgi_check_arg(ctx, fn, "t", t)) return 0;
    return tgi_check_float(ctx, fn, "t", t) && tgi_check_writable(ctx, fn, "t", t);
}

void tg_fill_uniform(tg_ctx *ctx, tg_tensor *t, double lo, double hi) {
    if (!check_fill(ctx, "tg_fill_uniform", t)) return;
    for (int64_t i = 0; i < t->numel; i++) {
        double v = lo + (hi - lo) * tg_rand_uniform(ctx);
        if (t->dtype == TG_F32)
            ((float *)t->data)[i] = (float)v;
        else
            ((double *)t->data)[i] = v;
    }
}

void tg_fill_normal(tg_ctx *ctx, tg_tensor *t, double mean, double std) {
    if (!check_fill(ctx, "tg_fill_normal", t)) return;
    for (int64_t i = 0; i < t->numel; i++) {
        double v = mean + std * tg_rand_normal(ctx);
        if (t->dtype == TG_F32)
            ((float *)t->data)[i] = (float)v;
        else
            ((double *)t->data)[i] = v;
    }
}
