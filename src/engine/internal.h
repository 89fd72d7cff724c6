/* SPDX-License-Identifier: MIT */
/* internal.h: what the engine's files share with the op files and the toolkit. Not installed; every symbol here
 * is hidden from the shared library (built with -fvisibility=hidden). Internal
 * cross-file names carry the tgi_ prefix. */
#ifndef TG_INTERNAL_H
#define TG_INTERNAL_H

#include "tapegrad.h"

#include <stdarg.h>
#include <stdbool.h>
#include <string.h>

#include "gemm.h"
#include "pool.h"

#define TG_ALIGN 64

/* tensor flags */
enum {
    TGI_REQ_GRAD = 1u << 0, /* gradients flow into this tensor */
    TGI_PARAM = 1u << 1,    /* owned by the ctx until tg_ctx_free */
    TGI_LEAF = 1u << 2,     /* made by tg_new/tg_from/tg_param, not by an op */
    /* a parameter's gradient is zeros not yet written: grad is NULL, and its first
     * writer (tgi_grad_first) assigns into grad_store; tgi_settle_grads writes
     * the zeros of any gradient no writer reached */
    TGI_GRAD_PENDING = 1u << 3,
    /* the caller holds a pointer to this parameter's gradient (the public tg_grad or
     * tg_grad_acc gave it out): tg_zero_grad clears it at once, as the caller may
     * read or add into it before backward */
    TGI_GRAD_SEEN = 1u << 4,
    /* made by tg_wrap: data is the caller's memory, which tapegrad only reads
     * (tgi_check_writable refuses the functions that would write it) */
    TGI_WRAPPED = 1u << 5,
};

struct tg_tensor {
    void *data;
    void *grad;          /* NULL until a gradient reaches the tensor */
    tg_ctx *ctx;
    int64_t numel;
    int64_t shape[TG_MAX_DIMS];
    int ndim;
    tg_dtype dtype;
    uint32_t flags;
    int64_t node;        /* index of the producing tape node, -1 for leaves */
    void *grad_store;    /* parameters: grad storage reserved at creation */
    const char *name;    /* parameters: owned copy; temporaries: "" */
    uint64_t gen;        /* temporaries: ctx->gen when made (tg_reset ends it); params: 0 */
};

/* arena: a list of chunks, bump allocation, rewound by tg_reset */
typedef struct tgi_chunk {
    struct tgi_chunk *next;
    size_t size;         /* usable bytes after the header */
    size_t used;
    unsigned char *base; /* 64-byte aligned start */
} tgi_chunk;

typedef struct {
    tgi_chunk *head, *cur;
    size_t capacity, used_before_cur, chunks;
    size_t peak; /* the most in use at once up to the last rewind (arena.c: arena_peak) */
    uint64_t grows;
} tgi_arena;

typedef struct { tgi_chunk *cur; size_t used, used_before_cur; } tgi_arena_mark;

/* Start of shard r of n elements of es bytes, of nshards: r n / nshards
 * rounded down to a cache line (n at r = nshards), so no two shards share a
 * line (tg_optim_step_shard, and the MPI part's sharded sums). */
static inline int64_t tgi_shard_start(int64_t n, int r, int nshards, size_t es) {
    if (r >= nshards) return n;
    const int64_t line = TG_ALIGN / (int64_t)es;
    return (n * r / nshards) / line * line;
}

#define TGI_PI 3.14159265358979323846
/* TG_ACT_LEAKY_RELU's slope (tapegrad.h), for tg_activate, tg_linear, tg_init_gain */
#define TGI_LEAKY_SLOPE 0.01

/* Inline attribute storage for built-in ops: 8 words per node. */
#define TGI_ATTR_WORDS 8
typedef union { double f[TGI_ATTR_WORDS]; int64_t i[TGI_ATTR_WORDS]; } tgi_attr;

/* A tape node: the op call (what forward/backward see) and its attributes. */
typedef struct {
    tg_op_call call;  /* first member: a tg_op_call* of the tape is a tgi_node* */
    tgi_attr attr;
    int inline_attr;  /* call.attr points at attr (re-pointed when the tape grows) */
} tgi_node;

struct tg_ctx {
    tg_alloc_fn alloc;
    void *alloc_ud;
    /* error */
    int has_error;
    char errmsg[512];
    tg_error_fn err_fn;
    void *err_user;
    /* modes */
    int no_grad;
    int training;       /* tg_train_mode: 1 train (default), 0 eval */
    int nthreads;
    int anomaly;        /* tg_detect_anomaly: check every op's output and gradients */
    int64_t anomaly_checked; /* tape nodes [0, this) have had their outputs checked */
    /* the public function running, for out-of-memory messages (tgi_api) */
    const char *api;
    /* generation of the temporaries: tg_reset increments it */
    uint64_t gen;
    /* memory */
    tgi_arena arena;
    tgi_node *tape;
    int64_t tape_len, tape_cap;
    tg_tensor **params;
    int n_params, cap_params;
    int grads_pending; /* tg_zero_grad left some parameter's zeros to its first writer */
    size_t param_bytes;
    /* rng: xoshiro256** */
    uint64_t rng[4];
    tg_gemm_ws *gemm;
    struct tgi_pool *pool; /* the threads of ctx->gemm and TGI_PAR_RUN (src/kernels/pool.h) */
};

/* ---- allocation (every byte goes through ctx->alloc) ----
 * Out-of-memory messages name the public function that was running: entry
 * points that allocate say who they are with tgi_api (a store, no check). */
static inline void tgi_api(tg_ctx *ctx, const char *fn) { ctx->api = fn; }
/* Requests above this many bytes are refused as out of memory before any
 * arithmetic on them can wrap (no allocator can serve half the address space). */
#define TGI_ALLOC_MAX (SIZE_MAX / 4)
void *tgi_malloc(tg_ctx *ctx, size_t n);           /* NULL + error on OOM */
void *tgi_calloc(tg_ctx *ctx, size_t n);
void *tgi_realloc(tg_ctx *ctx, void *p, size_t osize, size_t nsize);
/* records "<api>: out of memory: could not allocate n bytes" */
void tgi_oom(tg_ctx *ctx, size_t n);
void tgi_free(tg_ctx *ctx, void *p, size_t size);
/* 64-byte aligned heap blocks (for parameters); free with tgi_free_aligned */
void *tgi_malloc_aligned(tg_ctx *ctx, size_t n);
void tgi_free_aligned(tg_ctx *ctx, void *p, size_t n);
/* the default allocator */
void *tgi_default_alloc(void *ud, void *ptr, size_t osize, size_t nsize);

/* ---- arena ----
 * In an AddressSanitizer build the free part of every chunk is poisoned, and
 * tg_reset poisons all of it again, so any use of a temporary from an earlier
 * step (or a read past the 64-byte rounded end of a block) is reported. */
#if defined(__SANITIZE_ADDRESS__)
#define TGI_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define TGI_ASAN 1
#endif
#endif
#ifdef TGI_ASAN
void __asan_poison_memory_region(void const volatile *addr, size_t size);
void __asan_unpoison_memory_region(void const volatile *addr, size_t size);
#define TGI_POISON(p, n) __asan_poison_memory_region((p), (n))
#define TGI_UNPOISON(p, n) __asan_unpoison_memory_region((p), (n))
#else
#define TGI_POISON(p, n) ((void)(p), (void)(n))
#define TGI_UNPOISON(p, n) ((void)(p), (void)(n))
#endif
void *tgi_arena_alloc_slow(tg_ctx *ctx, size_t n);
/* 64-aligned, uninitialised; NULL + error when out of memory. The fast path
 * (room in the current chunk) is inline: a bump of the pointer. */
static inline void *tgi_arena_alloc(tg_ctx *ctx, size_t n) {
    tgi_chunk *c = ctx->arena.cur;
    /* r - 1 wraps to SIZE_MAX when n is 0 or so large that rounding wrapped:
     * both go to the slow path, which sees the caller's n */
    const size_t r = (n + TG_ALIGN - 1) & ~(size_t)(TG_ALIGN - 1);
    if (c && r - 1 < c->size - c->used) {
        void *p = c->base + c->used;
        c->used += r; /* (the peak is brought up to date when the arena rewinds) */
        TGI_UNPOISON(p, r);
        return p;
    }
    return tgi_arena_alloc_slow(ctx, n);
}
/* Inside the library tg_scratch keeps the name of the public function that
 * runs (set by tgi_api, e.g. by tgi_tensor_new), so that running out of
 * memory in an op's saved values says "tg_conv2d: out of memory", not
 * "tg_scratch: ..."; a user's call (the function in arena.c) names tg_scratch. */
static inline void *tgi_scratch(tg_ctx *ctx, size_t n) {
    return ctx ? tgi_arena_alloc(ctx, n) : NULL;
}
#define tg_scratch(ctx, n) tgi_scratch(ctx, n)
void tgi_arena_reset(tg_ctx *ctx);
void tgi_arena_free(tg_ctx *ctx);
tgi_arena_mark tgi_arena_get_mark(const tg_ctx *ctx);
void tgi_arena_rewind(tg_ctx *ctx, tgi_arena_mark m);

/* ---- errors ---- */
void tgi_verror(tg_ctx *ctx, const char *fmt, va_list ap);
/* Argument checks. Each has an inline fast path (the common, valid case costs
 * a compare or two) and an out-of-line slow path that records the error.
 *
 * tgi_check_arg: 1 if t is usable. NULL with no error recorded records
 * "<fn>: argument <arg> is NULL"; a tensor of another ctx is an error too, as is
 * a temporary made before the last tg_reset (its generation stamp is old); and
 * while an error is recorded every check fails (NULL in, NULL out). A passing
 * check names fn for out-of-memory messages (tgi_api). */
int tgi_check_arg_slow(tg_ctx *ctx, const char *fn, const char *arg, const tg_tensor *t);
static inline int tgi_check_arg(tg_ctx *ctx, const char *fn, const char *arg, const tg_tensor *t) {
    if (t && t->ctx == ctx && !ctx->has_error && (t->gen == ctx->gen || t->gen == 0)) {
        ctx->api = fn; /* out-of-memory messages name the op (tgi_api) */
        return 1;
    }
    return tgi_check_arg_slow(ctx, fn, arg, t);
}
/* 1 if t is f32 or f64, else records "<fn>: <arg> must be f32 or f64, got i32 [shape]" */
int tgi_check_float_slow(tg_ctx *ctx, const char *fn, const char *arg, const tg_tensor *t);
static inline int tgi_check_float(tg_ctx *ctx, const char *fn, const char *arg, const tg_tensor *t) {
    if (t->dtype == TG_F32 || t->dtype == TG_F64) return 1;
    return tgi_check_float_slow(ctx, fn, arg, t);
}
/* 1 unless t was made by tg_wrap (its data is the caller's read-only memory),
 * else records "<fn>: <arg> wraps the caller's memory (tg_wrap) ..." */
int tgi_check_writable_slow(tg_ctx *ctx, const char *fn, const char *arg, const tg_tensor *t);
static inline int tgi_check_writable(tg_ctx *ctx, const char *fn, const char *arg,
                                     const tg_tensor *t) {
    if (!(t->flags & TGI_WRAPPED)) return 1;
    return tgi_check_writable_slow(ctx, fn, arg, t);
}
/* 1 if a and b have the same dtype, else records an error naming both */
int tgi_check_same_dtype_slow(tg_ctx *ctx, const char *fn, const tg_tensor *a, const tg_tensor *b);
static inline int tgi_check_same_dtype(tg_ctx *ctx, const char *fn, const tg_tensor *a,
                                       const tg_tensor *b) {
    if (a->dtype == b->dtype) return 1;
    return tgi_check_same_dtype_slow(ctx, fn, a, b);
}
/* 1 if a and b have the same shape, else records an error naming both */
int tgi_check_same_shape_slow(tg_ctx *ctx, const char *fn, const tg_tensor *a, const tg_tensor *b);
static inline int tgi_check_same_shape(tg_ctx *ctx, const char *fn, const tg_tensor *a,
                                       const tg_tensor *b) {
    if (a->ndim == b->ndim && a->numel == b->numel) {
        int same = 1;
        for (int i = 0; i < a->ndim; i++) same &= a->shape[i] == b->shape[i];
        if (same) return 1;
    }
    return tgi_check_same_shape_slow(ctx, fn, a, b);
}

/* Hot accessors, inlined inside the library (the exported functions remain
 * for users; their definitions #undef these). */
static inline int tgi_ok(const tg_ctx *ctx) { return ctx && !ctx->has_error; }
static inline size_t tgi_dtype_size(tg_dtype dt) { return dt == TG_F64 ? 8 : 4; }
#define tg_ok(ctx) tgi_ok(ctx)
#define tg_dtype_size(dt) tgi_dtype_size(dt)
/* A gradient that exists already is returned inline; making one (tg_grad_acc
 * in tape.c) is out of line. */
void *tgi_grad_acc_new(tg_tensor *t);
/* Zeros pending since tg_zero_grad (TGI_GRAD_PENDING), written: every parameter's
 * (tgi_settle_grads, O(1) when none is pending: before anything reads or adds
 * into gradients outside backward's first writers), or one tensor's. */
void tgi_settle_grads_slow(tg_ctx *ctx);
static inline void tgi_settle_grads(tg_ctx *ctx) {
    if (ctx && ctx->grads_pending) tgi_settle_grads_slow(ctx);
}
void *tgi_settle_grad(tg_tensor *t);
static inline void *tgi_grad(const tg_tensor *t) {
    if (t && (t->flags & TGI_GRAD_PENDING)) return tgi_settle_grad((tg_tensor *)t);
    return t ? t->grad : NULL;
}
static inline void *tgi_grad_acc(tg_tensor *t) {
    return t && t->grad ? t->grad : tgi_grad_acc_new(t);
}
#define tg_grad(t) tgi_grad(t)
#define tg_grad_acc(t) tgi_grad_acc(t)

/* "[4,3]" into buf (for messages) */
const char *tgi_shape_str(int ndim, const int64_t *shape, char *buf, size_t size);
#define TGI_SHAPE(t, buf) tgi_shape_str((t)->ndim, (t)->shape, (buf), sizeof(buf))

/* ---- tensors ---- */
/* A new temporary with uninitialised data (callers that need zeros memset). */
tg_tensor *tgi_tensor_new(tg_ctx *ctx, const char *fn, tg_dtype dt, int ndim,
                          const int64_t *shape, int zero);
/* Every field of a new tensor t of data `data` and a valid shape with numel n:
 * a temporary of this step, no flags, no grad (tg_param then makes it a
 * parameter). */
static inline void tgi_tensor_init(tg_tensor *t, tg_ctx *ctx, void *data, tg_dtype dt, int ndim,
                                   const int64_t *shape, int64_t n) {
    t->data = data;
    t->grad = NULL;
    t->ctx = ctx;
    t->numel = n;
    t->ndim = ndim;
    for (int i = 0; i < TG_MAX_DIMS; i++) t->shape[i] = i < ndim ? shape[i] : 1;
    t->dtype = dt;
    t->flags = 0;
    t->node = -1;
    t->grad_store = NULL;
    t->name = "";
    t->gen = ctx->gen;
}
/* tgi_tensor_new without the checks, inline, for a shape known to be valid
 * (an input's, say) with numel n: the new temporary, data uninitialised, or
 * NULL with the out-of-memory error recorded (naming ctx->api). */
/* A temporary's head in the arena: the struct, rounded up so its data stays aligned */
#define TGI_TENSOR_HEAD ((sizeof(tg_tensor) + TG_ALIGN - 1) & ~(size_t)(TG_ALIGN - 1))
static inline tg_tensor *tgi_tensor_make(tg_ctx *ctx, tg_dtype dt, int ndim,
                                         const int64_t *shape, int64_t n) {
    const size_t head = TGI_TENSOR_HEAD;
    unsigned char *mem = tgi_arena_alloc(ctx, head + (size_t)n * (dt == TG_F64 ? 8u : 4u));
    if (!mem) return NULL;
    tg_tensor *t = (tg_tensor *)(void *)mem;
    tgi_tensor_init(t, ctx, mem + head, dt, ndim, shape, n);
    return t;
}
int64_t tgi_numel(int ndim, const int64_t *shape);
static inline size_t tgi_bytes(const tg_tensor *t) {
    return (size_t)t->numel * tg_dtype_size(t->dtype);
}
static inline int tgi_needs_grad(const tg_tensor *t) {
    return t && (t->flags & TGI_REQ_GRAD);
}
/* Inside backward, for a kernel that writes EVERY element of t's gradient: the
 * buffer, with *fresh = 1 when it was just made and is uninitialised (the kernel
 * assigns: the first writer needs no zeroing), else *fresh = 0 and the kernel adds
 * into it as into tg_grad_acc's. NULL (and *fresh = 0) on out of memory. */
static inline void *tgi_grad_first(tg_tensor *t, int *fresh) {
    *fresh = 0;
    if (!t) return NULL;
    if (t->grad) return t->grad;
    void *g = t->flags & TGI_PARAM ? t->grad_store : tgi_arena_alloc(t->ctx, tgi_bytes(t));
    if (!g) return NULL;
    t->grad = g;
    *fresh = 1;
    return g;
}

/* ---- tape ----
 * Every op, built-in or the user's, is a tg_op {name, forward, backward} and
 * goes through tgi_op_run: the built-ins after their own checks and output,
 * tg_apply after its generic ones. ops/ops.h wraps this for the op files.
 *
 * tgi_record appends a node when grad mode is on and an input requires a
 * grad (it sets out->flags |= TGI_REQ_GRAD and out->node). Returns 0 with
 * *node the node, or NULL when nothing needs recording; -1 when the tape
 * could not grow (error recorded, *node NULL). The node's attr is NULL. */
int tgi_record(tg_ctx *ctx, const tg_op *op, tg_tensor *out, tg_tensor *const *in, int n,
               tg_op_call **node);
/* 1 if any input needs grad and recording is on */
int tgi_should_record(const tg_ctx *ctx, tg_tensor *const *in, int n);
/* Record (when needed; never for an op without backward or an i32 output)
 * and run op->forward on out, whose data is allocated. attr_size bytes of
 * attr are copied: up to TGI_ATTR_WORDS words into the node itself (or onto
 * the stack when nothing is recorded), more into the arena. A failing forward
 * (non-zero or an error recorded) takes its node off the tape. Returns out,
 * or NULL on error. */
tg_tensor *tgi_op_run(tg_ctx *ctx, const tg_op *op, tg_tensor *out, tg_tensor *const *in, int n,
                      const void *attr, size_t attr_size);
/* The node's inline attribute area. */
tgi_attr *tgi_node_attr(tg_op_call *c);

/* Backward from `loss` seeded with `seed` (numel of loss elements, dtype of
 * loss; NULL = all ones), walking nodes [first, loss->node]. Used by
 * tg_backward (first = 0) and tg_gradcheck. */
void tgi_backward_from(tg_ctx *ctx, tg_tensor *loss, const void *seed, int64_t first);

/* ---- anomaly mode (tg_detect_anomaly) ----
 * tgi_anomaly_forward checks the outputs of the tape nodes not checked yet
 * (every recorded op before the call has finished its forward); called when a
 * node is recorded and before backward. tgi_anomaly_tensor checks one tensor's
 * data (forward of an unrecorded op). 0 finite, -1 error recorded. */
int tgi_anomaly_forward(tg_ctx *ctx);
int tgi_anomaly_output(tg_ctx *ctx, const char *op, int64_t node, const tg_tensor *out,
                       tg_tensor *const *in, int n);

/* ---- dtype dispatch: write a kernel once for float and double ----
 *   TGI_FLOAT_DISPATCH(t->dtype, { const T *x = ...; ... exp(x[i]) ... });
 * Inside, T is float or double; with <tgmath.h> included, exp/log/tanh/...
 * pick the right precision. */
#define TGI_FLOAT_DISPATCH(dt, ...)                                                    \
    do {                                                                               \
        if ((dt) == TG_F32) {                                                          \
            typedef float T;                                                           \
            __VA_ARGS__                                                                \
        } else {                                                                       \
            typedef double T;                                                          \
            __VA_ARGS__                                                                \
        }                                                                              \
    } while (0)

/* ---- broadcasting (NumPy rules), used by elementwise binary ops ---- */
typedef struct {
    int ndim;                       /* of the output */
    int64_t shape[TG_MAX_DIMS];     /* output shape */
    int64_t sa[TG_MAX_DIMS];        /* element strides of a in output dims (0 on broadcast) */
    int64_t sb[TG_MAX_DIMS];
    int64_t numel;
    int a_full, b_full;             /* input has the output's shape (fast path) */
} tgi_bcast;
/* 0 ok; on mismatch records "<fn>: shapes [..] and [..] cannot be broadcast" */
int tgi_bcast_init(tg_ctx *ctx, const char *fn, const tg_tensor *a, const tg_tensor *b,
                   tgi_bcast *bc);

/* ---- threads ---- */
/* Number of threads worth using for `work` elementwise operations. */
int tgi_threads_for(const tg_ctx *ctx, int64_t work);

/* ---- elementwise work split over threads (used by the op files) ---- */
/* TGI_PAR_RUN(ctx, n, fn, arg): fn(arg, lo, hi) over chunks [lo, hi) of [0, n):
 * one call in the caller's thread below tgi_threads_for's threshold (the pool
 * is not touched), else a few contiguous chunks per thread, taken by the
 * context's threads (src/kernels/pool.h) as they come free. arg points to a
 * small struct of what the loop reads (a compound literal written in the call
 * costs the single-thread path nothing: it is evaluated in the branch that
 * runs), fn is a TGI_PAR_FN of the op file. A chunk's
 * result must depend only on its elements (element i on element i of the
 * inputs): then the bits do not depend on the thread count. Below TGI_PAR_MIN
 * elements (far under the threshold) the question is not even asked: tiny ops
 * are all overhead. */
#define TGI_PAR_MIN 4096
/* Chunk c of nt over n elements: starts on a multiple of 16 elements (64
 * bytes of f32), so no two threads write one cache line. */
static inline int64_t tgi_chunk_at(int64_t n, int nt, int c)
{
    return c >= nt ? n : (n / nt * c) & ~(int64_t)15;
}
/* Threads worth using for n elementwise operations: 1 below TGI_PAR_MIN
 * without asking tgi_threads_for. */
static inline int tgi_par_threads(const tg_ctx *ctx, int64_t n)
{
    return n < TGI_PAR_MIN ? 1 : tgi_threads_for(ctx, n);
}
typedef void (*tgi_range_fn)(void *arg, int64_t lo, int64_t hi);
/* How a TGI_PAR_RUN function is declared: inlined where the work stays in the
 * caller's thread (a tiny op pays no call and no second dtype dispatch), with
 * an out-of-line copy for the pool. */
#define TGI_PAR_FN static inline __attribute__((always_inline))
/* The work of TGI_PAR_RUN with nt > 1 threads (defined in ctx.c). */
void tgi_par_run_threads(tg_ctx *ctx, int nt, int64_t n, tgi_range_fn fn, void *arg);
/* fn(arg, u0, u1) on nt contiguous ranges of units [0, units) (range t is
 * [units t / nt, units (t + 1) / nt)), on the context's threads: for work
 * whose natural piece is not an element (rows, outer loops). */
typedef void (*tgi_units_fn)(const void *arg, int64_t u0, int64_t u1);
void tgi_par_units(tg_ctx *ctx, int nt, int64_t units, tgi_units_fn fn, const void *arg);
#define TGI_PAR_RUN(ctx, n, fn, ...) /* ... is arg (a compound literal may hold commas) */ \
    do {                                                                               \
        const int64_t n_ = (n);                                                        \
        const int nt_ = tgi_par_threads((ctx), n_);                                    \
        if (nt_ <= 1)                                                                  \
            (fn)((__VA_ARGS__), 0, n_);                                                \
        else                                                                           \
            tgi_par_run_threads((ctx), nt_, n_, (fn), (__VA_ARGS__));                  \
    } while (0)
/* The older form with the loop written in the macro's argument runs it in the
 * caller's thread, whatever n: C has no closures to hand BODY to another
 * thread. A loop worth threads is written for TGI_PAR_RUN. */
#define TGI_PAR_CHUNKS(ctx, n, lo, hi, ...)                                                \
    do {                                                                               \
        (void)(ctx);                                                                   \
        const int64_t lo = 0, hi = (n);                                                \
        __VA_ARGS__                                                                    \
    } while (0)

/* ---- the transformer block's fused nodes (internal, for src/toolkit) ---- */
/* (defined in ops/attention.c) Multi-head self-attention read from the fused
 * projection: qkv [B*T,3E] (queries, keys, values side by side, H heads of E/H
 * columns each) -> [B*T,E], the heads side by side; no split or merge copies.
 * Errors are named after fn. */
tg_tensor *tgi_self_attention(tg_ctx *ctx, const char *fn, tg_tensor *qkv, int64_t b, int64_t h,
                              int causal);
/* (ops/matmul.c) tgi_linear_wt's node plus a residual: x [m,in], w [out,in],
 * b [out], r of m*out elements (read as [m,out]) -> r + (x w^T + b) [m,out], the
 * bits of tg_add(r, tgi_linear_wt(x, w, b)) without the add's pass and copy. */
tg_tensor *tgi_linear_residual(tg_ctx *ctx, const char *fn, tg_tensor *x, tg_tensor *w,
                               tg_tensor *b, tg_tensor *r);
/* (ops/matmul.c) tgi_linear_wt's node with F.gelu after the bias: x [m,in],
 * w [out,in], b [out] -> gelu(x w^T + b) [m,out], the bits of
 * tg_gelu(tgi_linear_wt(x, w, b)) in one node (no separate gelu sweep). */
tg_tensor *tgi_linear_gelu(tg_ctx *ctx, const char *fn, tg_tensor *x, tg_tensor *w, tg_tensor *b);
/* (ops/shape.c) x's elements under shape (ndim 1..4, the same count) sharing x's
 * data: no copy, so only for tensors nothing writes into; dx += dy. */
tg_tensor *tgi_view(tg_ctx *ctx, const char *fn, tg_tensor *x, int ndim, const int64_t *shape);

/* Loops the compiler vectorises get an AVX2 clone, chosen at load time (the
 * clones give the same bits: ISO C, no contraction into FMA). */
#if defined(__x86_64__) && defined(__has_attribute)
#if __has_attribute(target_clones) && !defined(TGI_NO_TARGET_CLONES) /* (TSan: resolvers run before it) */
#define TGI_AVX2_CLONES __attribute__((target_clones("avx2", "default")))
#endif
#endif
#ifndef TGI_AVX2_CLONES
#define TGI_AVX2_CLONES
#endif
/* ---- an op entry point the toolkit uses (defined in ops/matmul.c) ----
 * tg_linear's node with the weight as nn.Linear keeps it: x [m,in], w [out,in],
 * b [out] or NULL -> act(x w^T + b) [m,out]; the GEMM reads w transposed in
 * place. Errors are named after fn (the public caller). */
tg_tensor *tgi_linear_wt(tg_ctx *ctx, const char *fn, tg_tensor *x, tg_tensor *w, tg_tensor *b,
                         tg_act act);
/* (ops/mlp.c) tg_mlp_forward of a small f32 network as one node, the layers' bits:
 * NULL with nothing done when the network or x does not qualify or is not valid, or
 * an error is recorded already (then the caller goes layer by layer, whose checks
 * say what is wrong), NULL with the error recorded when out of memory. */
tg_tensor *tgi_mlp_tiny(tg_ctx *ctx, const tg_mlp *net, tg_tensor *x);
/* (defined in ops/conv.c) relu(max_pool2d(conv2d(x, w, b, 1, padding), pool,
 * pool)) as one node: tg_conv_relu_pool_forward's. Errors named after fn. */
tg_tensor *tgi_conv2d_relu_pool(tg_ctx *ctx, const char *fn, tg_tensor *x, tg_tensor *w,
                                tg_tensor *b, int padding, int pool);

#endif /* TG_INTERNAL_H */
