/* SPDX-License-Identifier: MIT */
/* ops/ops.h: the op-writing kit, shared by every family file in ops/.
 *
 * An op is a tg_op {name, forward, backward}, exactly as a user's op: its
 * public function checks the arguments, makes the output and hands both to
 * tgi_op_run (src/engine/tape.c), which records the node when a gradient is
 * needed, copies the attributes into it and runs forward. So tg_apply(ctx,
 * &op_exp, ...) computes what tg_exp(ctx, ...) does. docs/guide.md, "Adding
 * a built-in op", shows the pattern; a one-input op is
 *
 *   TGI_OP(neg); // declares neg_forward, neg_backward; defines op_neg
 *
 *   tg_tensor *tg_neg(tg_ctx *ctx, tg_tensor *x)
 *   {
 *       return tgi_unary(ctx, "tg_neg", &op_neg, x, NULL);
 *   }
 *   UNARY_FORWARD_FN(neg, -u) // defines neg_forward (threads by chunks)
 *   // d(-x)/dx = -1
 *   UNARY_BACKWARD_FN(neg, -g) // defines neg_backward
 *
 * What is here: argument checks, the unary and binary (broadcasting) op
 * bodies and their forward/backward loop macros, the dtype-generic wrappers
 * of the vector kernels (src/kernels/vmath.h). The engine's internal.h
 * supplies the rest (TGI_FLOAT_DISPATCH, TGI_PAR_RUN, TGI_AVX2_CLONES,
 * TGI_LEAKY_SLOPE, tg_scratch, tgi_bcast). Not installed; every name is
 * static or a macro.
 */
#ifndef TG_OPS_H
#define TG_OPS_H

#include "internal.h"
#include "vmath.h"

#include <math.h>
#include <tgmath.h>

/* ======================================================================== */
/* Checks, attributes, recording state                                      */
/* ======================================================================== */

/* t present (else "<fn>: argument <name> is NULL", or silence after an
 * earlier error), f32 or f64, and of ref's dtype when ref is given. 1 if
 * usable. */
static inline int tgi_check_float_arg(tg_ctx *ctx, const char *fn, const char *name,
                                      const tg_tensor *t, const tg_tensor *ref)
{
    if (!tgi_check_arg(ctx, fn, name, t) || !tgi_check_float(ctx, fn, name, t))
        return 0;
    return !ref || tgi_check_same_dtype(ctx, fn, ref, t);
}

/* The operands of a product-like op: x, w of x's dtype, and b too when it
 * is given (NULL: no bias), each checked as by tgi_check_float_arg. */
static inline int tgi_check_xwb(tg_ctx *ctx, const char *fn, const tg_tensor *x,
                                const tg_tensor *w, const tg_tensor *b)
{
    return tgi_check_float_arg(ctx, fn, "x", x, NULL) && tgi_check_float_arg(ctx, fn, "w", w, x) &&
           (!b || tgi_check_float_arg(ctx, fn, "b", b, x));
}

/* Declare an op's forward and backward kernels and define its tg_op, named
 * NAME (as the tape prints it): TGI_OP(exp) makes op_exp = {"exp",
 * exp_forward, exp_backward}; the file then defines the two kernels. */
#define TGI_OP(NAME)                                                                   \
    static int NAME##_forward(tg_op_call *c);                                          \
    static void NAME##_backward(tg_op_call *c);                                        \
    static const tg_op op_##NAME = {#NAME, NAME##_forward, NAME##_backward}

/* The attributes of a call, as the public function passed them (a tgi_attr:
 * f[] doubles, i[] integers). */
#define TGI_ATTR(c) ((const tgi_attr *)(c)->attr)

/* Loops that gain from 512-bit vectors (a permute's strided copy) get an
 * AVX-512 clone besides TGI_AVX2_CLONES's, chosen at load time. */
#if defined(__x86_64__) && defined(__has_attribute)
#if __has_attribute(target_clones) && !defined(TGI_NO_TARGET_CLONES)
#define TGI_AVX512_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
#endif
#endif
#ifndef TGI_AVX512_CLONES
#define TGI_AVX512_CLONES
#endif

/* 1 if the call is a tape node (backward will run): forward saves what
 * backward needs (tg_scratch into c->saved) only then. */
static inline int tgi_recorded(const tg_op_call *c)
{
    const tg_ctx *ctx = c->ctx;
    return c->out->node >= 0 && c->out->node < ctx->tape_len &&
           &ctx->tape[c->out->node].call == c;
}

/* ======================================================================== */
/* Products and column sums                                                 */
/* ======================================================================== */

/* C[m,n] (row stride ldc) = (acc ? C : 0) + op(A) op(B) by dtype, through
 * src/kernels/gemm.h (ta, tb: A, B read transposed in place; zero sizes are
 * fine). 0, or -1 with "<fn>: out of memory (GEMM workspace ...)" recorded. */
static inline int tgi_op_gemm(tg_ctx *ctx, const char *fn, tg_dtype dt, int ta, int tb,
                              int64_t m, int64_t n, int64_t k, const void *a, int64_t lda,
                              const void *b, int64_t ldb, int acc, void *c, int64_t ldc)
{
    int rc = dt == TG_F32
                 ? tgi_gemm_f32(ctx->gemm, ctx->nthreads, ta, tb, m, n, k, (const float *)a,
                                lda, (const float *)b, ldb, acc, (float *)c, ldc)
                 : tgi_gemm_f64(ctx->gemm, ctx->nthreads, ta, tb, m, n, k, (const double *)a,
                                lda, (const double *)b, ldb, acc, (double *)c, ldc);
    if (rc != 0) {
        tg_set_error(ctx, "%s: out of memory (GEMM workspace for a [%lld,%lld]x[%lld,%lld] "
                          "product)", fn, (long long)m, (long long)k, (long long)k,
                     (long long)n);
        return -1;
    }
    return 0;
}

#define TGI_COLSUM_BLOCK 256 /* columns summed per pass of tgi_colsum_acc */

/* db[j] += sum_i dy[i,j] for dy [m,n] (a bias's gradient): row-major sweeps
 * over blocks of columns, summed in double whatever the dtype, added into db
 * once per column; narrow dy (a few columns) in registers, inline at the call
 * (tiny layers pay no call), in the same order, so the bits are the same
 * either way. */
static __attribute__((noinline, unused)) void tgi_colsum_blocks(tg_dtype dt, int64_t m, int64_t n,
                                                               const void *dyv, void *dbv)
{
    double acc[TGI_COLSUM_BLOCK];
    TGI_FLOAT_DISPATCH(dt, {
        const T *dy = dyv;
        T *db = dbv;
        for (int64_t j0 = 0; j0 < n; j0 += TGI_COLSUM_BLOCK) {
            int64_t nb = n - j0 < TGI_COLSUM_BLOCK ? n - j0 : TGI_COLSUM_BLOCK;
            for (int64_t j = 0; j < nb; j++) acc[j] = 0.0;
            for (int64_t i = 0; i < m; i++) {
                const T *row = dy + i * n + j0;
                for (int64_t j = 0; j < nb; j++) acc[j] += (double)row[j];
            }
            for (int64_t j = 0; j < nb; j++) db[j0 + j] += (T)acc[j];
        }
    });
}
/* BODY with the constant W equal to n, for a narrow n (1 to 7 columns), so that
 * loops over a row's W elements unroll into straight code with no branch. */
#define TGI_NARROW_CASE(W_, ...)                                                       \
    case W_: {                                                                         \
        enum { W = W_ };                                                               \
        __VA_ARGS__                                                                    \
    } break;
#define TGI_NARROW(n, ...)                                                             \
    switch (n) {                                                                       \
        TGI_NARROW_CASE(1, __VA_ARGS__)                                                \
        TGI_NARROW_CASE(2, __VA_ARGS__)                                                \
        TGI_NARROW_CASE(3, __VA_ARGS__)                                                \
        TGI_NARROW_CASE(4, __VA_ARGS__)                                                \
        TGI_NARROW_CASE(5, __VA_ARGS__)                                                \
        TGI_NARROW_CASE(6, __VA_ARGS__)                                                \
        TGI_NARROW_CASE(7, __VA_ARGS__)                                                \
    default: break;                                                                    \
    }
static inline void tgi_colsum_acc(tg_dtype dt, int64_t m, int64_t n, const void *dyv, void *dbv)
{
    if (n >= 8) {
        tgi_colsum_blocks(dt, m, n, dyv, dbv);
        return;
    }
    TGI_FLOAT_DISPATCH(dt, {
        const T *dy = dyv;
        T *db = dbv;
        TGI_NARROW(n, { /* a row at a time into acc[0, W) */
            double acc[W] = {0};
            for (int64_t i = 0; i < m; i++)
                for (int j = 0; j < W; j++) acc[j] += (double)dy[i * W + j];
            for (int j = 0; j < W; j++) db[j] += (T)acc[j];
        });
    });
}

/* ======================================================================== */
/* Vector kernels for the element type T of TGI_FLOAT_DISPATCH              */
/* ======================================================================== */

/* src/kernels/vmath.h's f32 or f64 function, picked by the type of the first
 * pointer. y = f(x) over n elements; the _BWD ones dx += dy * f'(.). */
#define V_EXP(y, x, n) _Generic((y), float *: tgi_vexp_f32, double *: tgi_vexp_f64)(y, x, n)
#define V_LOG(y, x, n) _Generic((y), float *: tgi_vlog_f32, double *: tgi_vlog_f64)(y, x, n)
#define V_TANH(y, x, n) _Generic((y), float *: tgi_vtanh_f32, double *: tgi_vtanh_f64)(y, x, n)
#define V_SIGMOID(y, x, n)                                                             \
    _Generic((y), float *: tgi_vsigmoid_f32, double *: tgi_vsigmoid_f64)(y, x, n)
#define V_RELU(y, x, n) _Generic((y), float *: tgi_vrelu_f32, double *: tgi_vrelu_f64)(y, x, n)
#define V_SIGMOID_BWD(dx, y, dy, n)                                                    \
    _Generic((dx), float *: tgi_vsigmoid_bwd_f32, double *: tgi_vsigmoid_bwd_f64)(dx, y, dy, n)
#define V_TANH_BWD(dx, y, dy, n)                                                       \
    _Generic((dx), float *: tgi_vtanh_bwd_f32, double *: tgi_vtanh_bwd_f64)(dx, y, dy, n)
#define V_RELU_BWD(dx, x, dy, n)                                                       \
    _Generic((dx), float *: tgi_vrelu_bwd_f32, double *: tgi_vrelu_bwd_f64)(dx, x, dy, n)

/* ======================================================================== */
/* Unary ops: y of x's shape, y[i] depends on x[i] only                     */
/* ======================================================================== */

/* The whole public function of a one-input op on floats: checks x (present,
 * this ctx, f32 or f64), makes y of x's shape, records and runs op->forward
 * with the attributes attr (NULL: none). NULL on error. */
static inline tg_tensor *tgi_unary(tg_ctx *ctx, const char *fn, const tg_op *op, tg_tensor *x,
                                   const tgi_attr *attr)
{
    if (!ctx || !tgi_check_float_arg(ctx, fn, "x", x, NULL))
        return NULL;
    tg_tensor *out = tgi_tensor_make(ctx, x->dtype, x->ndim, x->shape, x->numel);
    if (!out)
        return NULL;
    return tgi_op_run(ctx, op, out, &x, 1, attr, attr ? sizeof *attr : 0);
}

/* TGI_PAR_RUN for the kit's elementwise loops: below TGI_PAR_MIN elements
 * the chunk function runs inlined on the whole range; the rest of
 * TGI_PAR_RUN (asking for threads, handing chunks to the pool) is out of
 * line in tgi_kit_par_run, so that a tiny op's path saves no registers and
 * builds no argument struct: ARG is a compound literal, evaluated only in
 * the branch that runs. */
#define KIT_PAR_RUN(ctx, n, fn, ...) /* ... is ARG */                                 \
    do {                                                                               \
        const int64_t kn_ = (n);                                                       \
        if (kn_ < TGI_PAR_MIN)                                                         \
            (fn)((__VA_ARGS__), 0, kn_);                                               \
        else                                                                           \
            tgi_kit_par_run((ctx), kn_, (fn), (__VA_ARGS__));                          \
    } while (0)
static __attribute__((noinline, unused)) void tgi_kit_par_run(tg_ctx *ctx, int64_t n,
                                                             tgi_range_fn fn, void *arg)
{
    TGI_PAR_RUN(ctx, n, fn, arg);
}

/* What the chunk functions of a unary op read: d the array written (y in
 * forward, dx in backward), x, y and dy the arrays read, a0 and a1 the
 * attributes f[0] and f[1] (0 when the op has none). */
typedef struct {
    void *d;
    const void *x, *y, *dy;
    double a0, a1;
    tg_dtype dtype;
} tgi_unary_arg;

/* The chunk arguments of call c as a compound literal, written inside
 * TGI_PAR_RUN's call so that the one-thread path builds nothing. */
#define TGI_UNARY_ARG(c, dst, dyp)                                                     \
    &(tgi_unary_arg)                                                                   \
    {                                                                                  \
        .d = (dst), .x = (c)->in[0]->data, .y = (c)->out->data, .dy = (dyp),           \
        .a0 = TGI_ATTR(c) ? TGI_ATTR(c)->f[0] : 0, .a1 = TGI_ATTR(c) ? TGI_ATTR(c)->f[1] : 0, \
        .dtype = (c)->out->dtype                                                       \
    }

/* The attributes a0, a1 in the element type, inside a chunk function. */
#define UNARY_CHUNK_ATTRS(p)                                                           \
    const T a0 = (T)(p)->a0, a1 = (T)(p)->a1;                                          \
    (void)a0, (void)a1

/* The element loops of a unary op over [lo, hi), inside TGI_FLOAT_DISPATCH:
 * y[i] = EXPR (u = x[i]), and dx[i] += EXPR (g = dy[i], u = x[i], w = y[i]). */
#define UNARY_FWD_LOOP(y, x, lo, hi, EXPR)                                             \
    do {                                                                               \
        T *restrict py = (T *)(y);                                                     \
        const T *restrict px = (const T *)(x);                                         \
        for (int64_t i = (lo); i < (hi); i++) {                                        \
            const T u = px[i];                                                         \
            (void)u;                                                                   \
            py[i] = (EXPR);                                                            \
        }                                                                              \
    } while (0)
#define UNARY_BWD_LOOP(dxp, dyp, x, y, lo, hi, EXPR)                                   \
    do {                                                                               \
        T *restrict dx = (T *)(dxp);                                                   \
        const T *restrict dy = (const T *)(dyp);                                       \
        const T *restrict px = (const T *)(x);                                         \
        const T *restrict py = (const T *)(y);                                         \
        for (int64_t i = (lo); i < (hi); i++) {                                        \
            const T g = dy[i], u = px[i], w = py[i];                                   \
            (void)g, (void)u, (void)w;                                                 \
            dx[i] += (EXPR);                                                           \
        }                                                                              \
    } while (0)

/* The gradients a unary op's backward reads and writes: 1 with *dx (x's, to
 * accumulate into) and *dy set when x needs a gradient and both exist, else 0. */
static inline int tgi_unary_grads(tg_op_call *c, void **dx, const void **dy)
{
    if (!tgi_needs_grad(c->in[0]))
        return 0;
    *dx = tg_grad_acc(c->in[0]);
    *dy = tg_grad(c->out);
    return *dx && *dy;
}

/* A chunk function FN(arg, lo, hi) over a tgi_unary_arg: the statement
 * LOOP with T, a0, a1 (the attributes) and p_ (the argument) in scope. */
#define UNARY_CHUNK_FN(FN, ...)                                                        \
    TGI_PAR_FN void FN(void *arg_, int64_t lo, int64_t hi)                             \
    {                                                                                  \
        const tgi_unary_arg *p_ = arg_;                                                \
        TGI_FLOAT_DISPATCH(p_->dtype, {                                                \
            UNARY_CHUNK_ATTRS(p_);                                                     \
            __VA_ARGS__;                                                               \
        });                                                                            \
    }

/* The forward NAME_forward of a unary op: y[i] = EXPR for every element
 * (u = x[i]; a0, a1 the attributes), in contiguous chunks over threads
 * through the chunk function NAME_fwd_chunk it defines first. */
#define UNARY_FORWARD_FN(NAME, EXPR)                                                   \
    UNARY_CHUNK_FN(NAME##_fwd_chunk, UNARY_FWD_LOOP(p_->d, p_->x, lo, hi, EXPR))      \
    static int NAME##_forward(tg_op_call *c)                                           \
    {                                                                                  \
        KIT_PAR_RUN(c->ctx, c->out->numel, NAME##_fwd_chunk,                           \
                    TGI_UNARY_ARG(c, c->out->data, NULL));                             \
        return 0;                                                                      \
    }

/* The backward NAME_backward of a unary op: dx[i] += EXPR for every element
 * (g = dy[i], u = x[i], w = y[i]; a0, a1 the attributes) when x needs a
 * gradient, in chunks over threads through NAME_bwd_chunk. */
#define UNARY_BACKWARD_FN(NAME, EXPR)                                                  \
    UNARY_CHUNK_FN(NAME##_bwd_chunk,                                                   \
                   UNARY_BWD_LOOP(p_->d, p_->dy, p_->x, p_->y, lo, hi, EXPR))          \
    static void NAME##_backward(tg_op_call *c)                                         \
    {                                                                                  \
        void *dx_;                                                                     \
        const void *dy_;                                                               \
        if (tgi_unary_grads(c, &dx_, &dy_))                                            \
            KIT_PAR_RUN(c->ctx, c->out->numel, NAME##_bwd_chunk,                       \
                        TGI_UNARY_ARG(c, dx_, dy_));                                   \
    }

/* The same loops written inside a forward or backward of the file's own,
 * inside TGI_FLOAT_DISPATCH: UNARY_FORWARD and UNARY_BACKWARD run in the
 * caller's thread only (TGI_PAR_CHUNKS); a loop worth threads is written
 * with UNARY_FORWARD_FN and UNARY_BACKWARD_FN. */
/* Inside TGI_FLOAT_DISPATCH, in a unary op's forward: y[i] = EXPR for every
 * element (u = x[i]). */
#define UNARY_FORWARD(c, EXPR)                                                         \
    TGI_PAR_CHUNKS((c)->ctx, (c)->out->numel, i0_, i1_,                                \
                   UNARY_FWD_LOOP((c)->out->data, (c)->in[0]->data, i0_, i1_, EXPR);)

/* Inside TGI_FLOAT_DISPATCH, in a unary op's backward: dx[i] += EXPR for
 * every element (g = dy[i], u = x[i], w = y[i]) when x needs a gradient. */
#define UNARY_BACKWARD(c, EXPR)                                                        \
    do {                                                                               \
        void *dx_;                                                                     \
        const void *dy_;                                                               \
        if (tgi_unary_grads((c), &dx_, &dy_))                                          \
            TGI_PAR_CHUNKS((c)->ctx, (c)->out->numel, i0_, i1_,                        \
                           UNARY_BWD_LOOP(dx_, dy_, (c)->in[0]->data, (c)->out->data,  \
                                          i0_, i1_, EXPR););                           \
    } while (0)

/* A unary op's whole forward and backward loops, the dtype dispatch
 * included: UNARY_FORWARD and UNARY_BACKWARD with a0 and a1 the op's
 * attributes f[0] and f[1] in the element type (0 when it has none). */
#define UNARY_ATTRS(c)                                                                 \
    const tgi_attr *at_ = TGI_ATTR(c);                                                 \
    const T a0 = at_ ? (T)at_->f[0] : (T)0, a1 = at_ ? (T)at_->f[1] : (T)0;            \
    (void)a0, (void)a1
#define UNARY_FWD(c, EXPR)                                                             \
    TGI_FLOAT_DISPATCH((c)->out->dtype, {                                              \
        UNARY_ATTRS(c);                                                                \
        UNARY_FORWARD(c, EXPR);                                                        \
    })
#define UNARY_BWD(c, EXPR)                                                             \
    TGI_FLOAT_DISPATCH((c)->out->dtype, {                                              \
        UNARY_ATTRS(c);                                                                \
        UNARY_BACKWARD(c, EXPR);                                                       \
    })

/* The tg_op and the public function tg_NAME(ctx, x) of a one-input op
 * without attributes; the file writes NAME_forward and NAME_backward. */
#define TGI_UNARY_OP(NAME)                                                             \
    TGI_OP(NAME);                                                                      \
    tg_tensor *tg_##NAME(tg_ctx *ctx, tg_tensor *x)                                    \
    {                                                                                  \
        return tgi_unary(ctx, "tg_" #NAME, &op_##NAME, x, NULL);                       \
    }                                                                                  \
    static int NAME##_forward(tg_op_call *c) /* its definition follows the macro */

/* What the chunk functions of a vector-kernel op read: d the array written
 * (y, or dx), s the array read (x; in backward the output or the input), dy. */
typedef struct {
    void *d;
    const void *s, *dy;
    tg_dtype dtype;
} tgi_vmath_arg;

/* The tg_op, public function tg_NAME(ctx, x) and forward of a one-input op
 * whose forward is the vector kernel VF (V_EXP, V_TANH, ...), over chunks
 * on threads (NAME_fwd_chunk); the file writes NAME_backward. */
#define TGI_VMATH_OP(NAME, VF)                                                         \
    TGI_UNARY_OP(NAME);                                                                \
    TGI_PAR_FN void NAME##_fwd_chunk(void *arg_, int64_t lo, int64_t hi)              \
    {                                                                                  \
        const tgi_vmath_arg *p_ = arg_;                                                \
        TGI_FLOAT_DISPATCH(p_->dtype, { VF((T *)p_->d + lo, (const T *)p_->s + lo, hi - lo); }); \
    }                                                                                  \
    static int NAME##_forward(tg_op_call *c)                                           \
    {                                                                                  \
        KIT_PAR_RUN(c->ctx, c->out->numel, NAME##_fwd_chunk,                           \
                    &(tgi_vmath_arg){c->out->data, c->in[0]->data, NULL, c->out->dtype}); \
        return 0;                                                                      \
    }                                                                                  \
    static void NAME##_backward(tg_op_call *c) /* its definition follows the macro */

/* The backward NAME_backward of a unary op by a vector kernel VB
 * (V_TANH_BWD, ...): dx += dy * f'(s), s the output (SRC out) or the input
 * (SRC in[0]), over chunks on threads (NAME_bwd_chunk). */
#define UNARY_VMATH_BACKWARD_FN(NAME, VB, SRC)                                         \
    TGI_PAR_FN void NAME##_bwd_chunk(void *arg_, int64_t lo, int64_t hi)              \
    {                                                                                  \
        const tgi_vmath_arg *p_ = arg_;                                                \
        TGI_FLOAT_DISPATCH(p_->dtype, {                                                \
            VB((T *)p_->d + lo, (const T *)p_->s + lo, (const T *)p_->dy + lo, hi - lo); \
        });                                                                            \
    }                                                                                  \
    static void NAME##_backward(tg_op_call *c)                                         \
    {                                                                                  \
        if (!tgi_needs_grad(c->in[0]))                                                 \
            return;                                                                    \
        void *dx_ = tg_grad_acc(c->in[0]);                                             \
        const void *dy_ = tg_grad(c->out);                                             \
        if (dx_ && dy_)                                                                \
            KIT_PAR_RUN(c->ctx, c->out->numel, NAME##_bwd_chunk,                       \
                        &(tgi_vmath_arg){dx_, c->SRC->data, dy_, c->out->dtype});      \
    }

/* Forward and backward of the ops that move x's elements unchanged in
 * row-major order (tg_identity, tg_reshape): y = a copy of x; dx += dy. */
static inline int tgi_copy_forward(tg_op_call *c)
{
    if (c->out->numel > 0)
        memcpy(c->out->data, c->in[0]->data, tgi_bytes(c->in[0]));
    return 0;
}

/* dx += dy for input k of c, x of y's element count; a copy when x's gradient
 * buffer is new (its first writer assigns). */
static inline void tgi_pass_grad(tg_op_call *c, int k)
{
    tg_tensor *x = c->in[k];
    const void *dy = tg_grad(c->out);
    int fresh;
    if (!dy || !tgi_needs_grad(x))
        return;
    void *dx = tgi_grad_first(x, &fresh);
    if (dx && fresh) {
        if (x->numel > 0) memcpy(dx, dy, tgi_bytes(x));
    } else if (dx) {
        TGI_FLOAT_DISPATCH(x->dtype, {
            T *restrict d = dx;
            const T *restrict g = dy;
            TGI_PAR_CHUNKS(c->ctx, x->numel, lo, hi, {
                for (int64_t i = lo; i < hi; i++) d[i] += g[i];
            });
        });
    }
}

/* d y[i]/d x[i] = 1 (same flat index) */
static inline void tgi_pass_backward(tg_op_call *c) { tgi_pass_grad(c, 0); }

/* ======================================================================== */
/* Binary ops with NumPy broadcasting                                       */
/* ======================================================================== */
/*
 * The output of a binary op has the broadcast shape of a and b
 * (tgi_bcast_init). Forward reads a[ia] and b[ib] for every output element i,
 * where ia/ib come from element strides that are 0 on broadcast axes. Backward
 * is the transpose of that gather: it ADDS d loss/d y[i] (times the local
 * derivative) into da[ia] and db[ib], so an input element that fed k output
 * elements receives the sum of their k contributions: the reduction over the
 * broadcast axes. Both directions share one iterator (struct tgi_bshape):
 * axes of size 1 are dropped and adjacent axes merged where both inputs are
 * contiguous across them, so the common cases collapse to one flat loop:
 *   same shapes            -> 1 row of numel, strides (1,1)
 *   a [m,n] with scalar b  -> 1 row of numel, strides (1,0)
 *   a [m,n] with row b [n] -> m rows of n,    strides (1,1), b's row stride 0
 *   a [m,1] with b [1,n]   -> m rows of n,    strides (0,1)
 * and the innermost loop is instantiated with literal strides 0/1 so gcc can
 * vectorise it; a stride-0 target in backward is reduced in a local double.
 *
 * Fast path. The two commonest cases, inputs of one shape and a one-element
 * operand (a scalar), skip the broadcast layout altogether: the public
 * function classifies the pair (tgi_binary_kind), the node keeps the kind
 * (attribute i[0]), and forward and backward run the same row kernels over
 * the flat arrays directly. Results are the same bits as through the
 * general iterator, which collapses these cases to the same single row.
 *
 * Threads: on the fast path, elementwise chunks over threads (TGI_PAR_RUN on
 * the chunk functions the op's macros define); a reduction onto a scalar
 * operand in backward, and the general broadcast path, stay in one thread,
 * in order.
 *
 * An op OP defines its row kernels FWD_ROW_<OP>(SA,SB) and
 * BWD_ROW_a_<OP>(SA,SB), BWD_ROW_b_<OP>(SA,SB) from FWD_ROW and BWD_ROW
 * below; BINARY_FORWARD_FN(name, OP) and BINARY_BACKWARD_FN(name, OP) define
 * its forward and backward (with their chunk functions), tgi_binary(...)
 * its public function.
 */

/* How a binary op's operands pair up (node attribute i[0]). */
enum {
    BIN_GENERAL,  /* any other broadcast: the bshape iterator */
    BIN_SAME,     /* a and b of one shape: y[i] = f(a[i], b[i]) */
    BIN_B_SCALAR, /* b has one element and no more axes than a: y has a's shape */
    BIN_A_SCALAR, /* a has one element and no more axes than b: y has b's shape */
};
/* The kind in which input SIDE (a or b) is the broadcast scalar. */
#define BIN_SCALAR_a BIN_A_SCALAR
#define BIN_SCALAR_b BIN_B_SCALAR

static inline int tgi_binary_kind(const tg_tensor *a, const tg_tensor *b)
{
    if (a->ndim == b->ndim && a->numel == b->numel) {
        int same = 1;
        for (int k = 0; k < a->ndim; k++)
            same &= a->shape[k] == b->shape[k];
        if (same)
            return BIN_SAME;
    }
    if (b->numel == 1 && b->ndim <= a->ndim)
        return BIN_B_SCALAR;
    if (a->numel == 1 && a->ndim <= b->ndim)
        return BIN_A_SCALAR;
    return BIN_GENERAL;
}

/* The whole public function of a binary op: checks (both present, floats of
 * one dtype), the pairing of a and b (the broadcast layout only when no fast
 * path fits, which also checks that the shapes broadcast), output, and
 * tgi_op_run with the kind as attribute i[0]. */
static inline tg_tensor *tgi_binary(tg_ctx *ctx, const char *fn, const tg_op *op, tg_tensor *a,
                                    tg_tensor *b)
{
    if (!ctx || !tgi_check_float_arg(ctx, fn, "a", a, NULL) ||
        !tgi_check_float_arg(ctx, fn, "b", b, NULL) || !tgi_check_same_dtype(ctx, fn, a, b))
        return NULL;
    const tgi_attr at = {.i = {tgi_binary_kind(a, b)}};
    tg_tensor *out;
    if (at.i[0] == BIN_GENERAL) {
        tgi_bcast bc;
        if (tgi_bcast_init(ctx, fn, a, b, &bc) != 0)
            return NULL;
        out = tgi_tensor_new(ctx, fn, a->dtype, bc.ndim, bc.shape, 0);
    } else {
        const tg_tensor *like = at.i[0] == BIN_A_SCALAR ? b : a; /* y has its shape */
        out = tgi_tensor_new(ctx, fn, a->dtype, like->ndim, like->shape, 0);
    }
    if (!out)
        return NULL;
    tg_tensor *in[2] = {a, b};
    return tgi_op_run(ctx, op, out, in, 2, &at, sizeof at);
}

/* The kind of a binary call, and for BIN_GENERAL its broadcast layout,
 * recomputed (it cannot fail: it succeeded in the public function). */
static inline int tgi_binary_layout(const tg_op_call *c, tgi_bcast *bc)
{
    const int kind = (int)TGI_ATTR(c)->i[0];
    if (kind == BIN_GENERAL)
        tgi_bcast_init(c->ctx, c->op->name, c->in[0], c->in[1], bc);
    return kind;
}

/* The broadcast iteration space, padded to 4 axes: n[] the output's sizes,
 * sa[]/sb[] the element strides of a and b (0 on broadcast axes). Axes of
 * size 1 are dropped and mergeable neighbours merged. */
typedef struct {
    int64_t n[4], sa[4], sb[4];
} tgi_bshape;

static inline void tgi_bshape_init(const tgi_bcast *bc, tgi_bshape *s)
{
    int64_t n[4], sa[4], sb[4];
    int m = 0;
    for (int k = 0; k < bc->ndim; k++) {
        const int64_t nk = bc->shape[k];
        if (nk == 1)
            continue; /* one index: strides irrelevant */
        if (m > 0 && sa[m - 1] == bc->sa[k] * nk && sb[m - 1] == bc->sb[k] * nk) {
            n[m - 1] *= nk; /* contiguous (or broadcast) across both axes: merge */
            sa[m - 1] = bc->sa[k];
            sb[m - 1] = bc->sb[k];
        } else {
            n[m] = nk;
            sa[m] = bc->sa[k];
            sb[m] = bc->sb[k];
            m++;
        }
    }
    const int pad = 4 - m;
    for (int k = 0; k < 4; k++) {
        s->n[k] = k < pad ? 1 : n[k - pad];
        s->sa[k] = k < pad ? 0 : sa[k - pad];
        s->sb[k] = k < pad ? 0 : sb[k - pad];
    }
}

/* Loop over the rows (all axes but the last) of a tgi_bshape `s`, setting
 *   oo: offset of the row in the output, oa/ob: offsets of its a/b elements,
 *   n3: row length;
 * then run the body. */
#define BCAST_ROWS(s, ...)                                                             \
    do {                                                                               \
        const int64_t n3 = (s).n[3];                                                   \
        for (int64_t i0 = 0; i0 < (s).n[0]; i0++)                                      \
            for (int64_t i1 = 0; i1 < (s).n[1]; i1++)                                  \
                for (int64_t i2 = 0; i2 < (s).n[2]; i2++) {                            \
                    const int64_t oo = ((i0 * (s).n[1] + i1) * (s).n[2] + i2) * n3;    \
                    const int64_t oa = i0 * (s).sa[0] + i1 * (s).sa[1] + i2 * (s).sa[2]; \
                    const int64_t ob = i0 * (s).sb[0] + i1 * (s).sb[1] + i2 * (s).sb[2]; \
                    __VA_ARGS__                                                        \
                }                                                                      \
    } while (0)

/* Instantiate ROW(SA, SB) with literal inner strides when they are 0 or 1
 * (the only values contiguous inputs produce), else with the runtime ones. */
#define BCAST_INNER(s, ROW)                                                            \
    do {                                                                               \
        const int64_t sa3_ = (s).sa[3], sb3_ = (s).sb[3];                              \
        if (sa3_ == 1 && sb3_ == 1)                                                    \
            ROW(1, 1);                                                                 \
        else if (sa3_ == 1 && sb3_ == 0)                                               \
            ROW(1, 0);                                                                 \
        else if (sa3_ == 0 && sb3_ == 1)                                               \
            ROW(0, 1);                                                                 \
        else if (sa3_ == 0 && sb3_ == 0)                                               \
            ROW(0, 0);                                                                 \
        else                                                                           \
            ROW(sa3_, sb3_);                                                           \
    } while (0)

/* Forward on the general path, inside TGI_FLOAT_DISPATCH: y[i] = the op's
 * expression of u = a[ia], v = b[ib], through the row kernel FWD_ROW_<OP>. */
#define BCAST_FORWARD(bc, out, a, b, OP)                                               \
    do {                                                                               \
        tgi_bshape s_;                                                                 \
        tgi_bshape_init(&(bc), &s_);                                                   \
        T *restrict py = (T *)(out)->data;                                             \
        const T *restrict pa = (const T *)(a)->data;                                   \
        const T *restrict pb = (const T *)(b)->data;                                   \
        if ((out)->numel == 0)                                                         \
            break;                                                                     \
        BCAST_ROWS(s_, {                                                               \
            T *restrict yr = py + oo;                                                  \
            const T *restrict ar = pa + oa;                                            \
            const T *restrict br = pb + ob;                                            \
            BCAST_INNER(s_, FWD_ROW_##OP);                                             \
        });                                                                            \
    } while (0)

/* Backward on the general path for one input, inside TGI_FLOAT_DISPATCH:
 * d[it] += the op's local term for every output element i, through the row
 * kernel BWD_ROW_<SIDE>_<OP>, which sees g = dy[i], u = a[ia], v = b[ib],
 * w = y[i]; `it` is ia (SIDE a) or ib (SIDE b). */
#define BCAST_BACKWARD(bc, call, d, SIDE, OP)                                          \
    do {                                                                               \
        tgi_bshape s_;                                                                 \
        tgi_bshape_init(&(bc), &s_);                                                   \
        const T *restrict dy = (const T *)tg_grad((call)->out);                        \
        const T *restrict py = (const T *)(call)->out->data;                           \
        const T *restrict pa = (const T *)(call)->in[0]->data;                         \
        const T *restrict pb = (const T *)(call)->in[1]->data;                         \
        T *restrict pd = (d);                                                          \
        if (!pd || !dy || (call)->out->numel == 0)                                     \
            break;                                                                     \
        BCAST_ROWS(s_, {                                                               \
            const T *restrict gr = dy + oo;                                            \
            const T *restrict yr = py + oo;                                            \
            const T *restrict ar = pa + oa;                                            \
            const T *restrict br = pb + ob;                                            \
            T *restrict dr = pd + o##SIDE;                                             \
            BCAST_INNER(s_, BWD_ROW_##SIDE##_##OP);                                    \
        });                                                                            \
    } while (0)

/* The row kernels; n3 is the row length. SA, SB are the inner strides of a
 * and b, ST the target's (SA or SB). A row along which the target is
 * broadcast (ST = 0) is summed in a double and added once. */
#define FWD_ROW(SA, SB, EXPR)                                                          \
    do {                                                                               \
        for (int64_t j = 0; j < n3; j++) {                                             \
            const T u = ar[j * (SA)], v = br[j * (SB)];                                \
            yr[j] = (EXPR);                                                            \
        }                                                                              \
    } while (0)

#define BWD_ROW(SA, SB, ST, EXPR)                                                      \
    do {                                                                               \
        if ((ST) == 0) {                                                               \
            double acc_ = 0;                                                           \
            for (int64_t j = 0; j < n3; j++) {                                         \
                const T g = gr[j], w = yr[j], u = ar[j * (SA)], v = br[j * (SB)];      \
                (void)g, (void)w, (void)u, (void)v;                                    \
                acc_ += (EXPR);                                                        \
            }                                                                          \
            dr[0] += (T)acc_;                                                          \
        } else {                                                                       \
            for (int64_t j = 0; j < n3; j++) {                                         \
                const T g = gr[j], w = yr[j], u = ar[j * (SA)], v = br[j * (SB)];      \
                (void)g, (void)w, (void)u, (void)v;                                    \
                dr[j * (ST)] += (EXPR);                                                \
            }                                                                          \
        }                                                                              \
    } while (0)

/* In a chunk [lo, hi) of the flat output on the fast path: ar and br at the
 * chunk's operands (a scalar operand at its one element) and ROW(SA, SB)
 * with the kind's literal inner strides. */
#define FAST_KIND_ROW(kind, ROW)                                                       \
    do {                                                                               \
        if ((kind) == BIN_SAME) {                                                      \
            const T *restrict ar = pa + lo, *restrict br = pb + lo;                    \
            ROW(1, 1);                                                                 \
        } else if ((kind) == BIN_B_SCALAR) {                                           \
            const T *restrict ar = pa + lo, *restrict br = pb;                         \
            ROW(1, 0);                                                                 \
        } else {                                                                       \
            const T *restrict ar = pa, *restrict br = pb + lo;                         \
            ROW(0, 1);                                                                 \
        }                                                                              \
    } while (0)

/* What the fast path's chunk functions read: the output y, the inputs a
 * and b, for backward dy and d (the gradient of the input being filled),
 * the kind. */
typedef struct {
    void *d;
    const void *y, *a, *b, *dy;
    int kind;
    tg_dtype dtype;
} tgi_binary_arg;

/* The chunk arguments of call c as a compound literal (see TGI_UNARY_ARG). */
#define TGI_BINARY_ARG(c, knd, dst, dyp)                                                \
    &(tgi_binary_arg)                                                                  \
    {                                                                                  \
        .d = (dst), .y = (c)->out->data, .a = (c)->in[0]->data, .b = (c)->in[1]->data, \
        .dy = (dyp), .kind = (knd), .dtype = (c)->out->dtype                           \
    }

/* A chunk [lo, hi) of the fast path's forward: the row kernel FWD_ROW_<OP>
 * over the chunk, a scalar operand's stride 0. */
#define FAST_FORWARD_CHUNK(NAME, OP)                                                   \
    TGI_PAR_FN void NAME##_fwd_chunk(void *arg_, int64_t lo, int64_t hi)              \
    {                                                                                  \
        const tgi_binary_arg *p_ = arg_;                                               \
        TGI_FLOAT_DISPATCH(p_->dtype, {                                                \
            T *restrict py = (T *)p_->d;                                               \
            const T *restrict pa = (const T *)p_->a;                                   \
            const T *restrict pb = (const T *)p_->b;                                   \
            const int64_t n3 = hi - lo;                                                \
            T *restrict yr = py + lo;                                                  \
            FAST_KIND_ROW(p_->kind, FWD_ROW_##OP);                                     \
        });                                                                            \
    }

/* A chunk [lo, hi) of the fast path's backward for input SIDE when SIDE is
 * not the scalar operand: the row kernel BWD_ROW_<SIDE>_<OP>, elementwise. */
#define FAST_BACKWARD_CHUNK(NAME, SIDE, OP)                                            \
    TGI_PAR_FN void NAME##_bwd_##SIDE##_chunk(void *arg_, int64_t lo, int64_t hi)     \
    {                                                                                  \
        const tgi_binary_arg *p_ = arg_;                                               \
        TGI_FLOAT_DISPATCH(p_->dtype, {                                                \
            const T *restrict pa = (const T *)p_->a;                                   \
            const T *restrict pb = (const T *)p_->b;                                   \
            const int64_t n3 = hi - lo;                                                \
            const T *restrict gr = (const T *)p_->dy + lo;                             \
            const T *restrict yr = (const T *)p_->y + lo;                              \
            T *restrict dr = (T *)p_->d + lo;                                          \
            FAST_KIND_ROW(p_->kind, BWD_ROW_##SIDE##_##OP);                            \
        });                                                                            \
    }

/* Backward on the fast path for input SIDE, inside TGI_FLOAT_DISPATCH. When
 * SIDE is the scalar operand its gradient is a sum over every output
 * element: one row, in order, in one thread (the same bits as the general
 * path); else elementwise chunks over threads (NAME_bwd_<SIDE>_chunk). */
#define FAST_BACKWARD(NAME, kind, call, dgrad, SIDE, OP)                                   \
    do {                                                                               \
        const T *restrict dy = (const T *)tg_grad((call)->out);                        \
        T *restrict pd = (dgrad);                                                      \
        const int64_t n_all = (call)->out->numel;                                      \
        if (!pd || !dy || n_all == 0)                                                  \
            break;                                                                     \
        if ((kind) == BIN_SCALAR_##SIDE) {                                             \
            const int64_t n3 = n_all;                                                  \
            const T *restrict gr = dy, *restrict yr = (const T *)(call)->out->data,    \
                            *restrict ar = (const T *)(call)->in[0]->data,             \
                            *restrict br = (const T *)(call)->in[1]->data;             \
            T *restrict dr = pd;                                                       \
            if ((kind) == BIN_A_SCALAR)                                                \
                BWD_ROW_##SIDE##_##OP(0, 1);                                           \
            else                                                                       \
                BWD_ROW_##SIDE##_##OP(1, 0);                                           \
            break;                                                                     \
        }                                                                              \
        KIT_PAR_RUN((call)->ctx, n_all, NAME##_bwd_##SIDE##_chunk,                     \
                    TGI_BINARY_ARG(call, kind, pd, dy));                               \
    } while (0)

/* The layout of a binary call (kind_, and bc_ for BIN_GENERAL), then BODY
 * inside TGI_FLOAT_DISPATCH. */
#define BINARY_CALL(c, ...)                                                            \
    do {                                                                               \
        tgi_bcast bc_;                                                                 \
        const int kind_ = tgi_binary_layout((c), &bc_);                                \
        TGI_FLOAT_DISPATCH((c)->out->dtype, { __VA_ARGS__ });                          \
    } while (0)

/* A binary op's forward NAME_forward, after its FWD_ROW_<OP>: the general
 * broadcast, or the fast path over chunks on threads (NAME_fwd_chunk). */
#define BINARY_FORWARD_FN(NAME, OP)                                                    \
    FAST_FORWARD_CHUNK(NAME, OP)                                                       \
    static int NAME##_forward(tg_op_call *c)                                           \
    {                                                                                  \
        tgi_bcast bc_;                                                                 \
        const int kind_ = tgi_binary_layout(c, &bc_);                                  \
        if (kind_ == BIN_GENERAL) {                                                    \
            TGI_FLOAT_DISPATCH(c->out->dtype,                                          \
                               { BCAST_FORWARD(bc_, c->out, c->in[0], c->in[1], OP); }); \
        } else {                                                                       \
            KIT_PAR_RUN(c->ctx, c->out->numel, NAME##_fwd_chunk,                       \
                        TGI_BINARY_ARG(c, kind_, c->out->data, NULL));                 \
        }                                                                              \
        return 0;                                                                      \
    }

/* One input's gradient (SIDE a or b) of a binary op, inside TGI_FLOAT_DISPATCH. */
#define BINARY_BACKWARD_SIDE(NAME, bc, kind, c, SIDE, IDX, OP)                         \
    do {                                                                               \
        if (!tgi_needs_grad((c)->in[IDX]))                                             \
            break;                                                                     \
        T *d_ = (T *)tg_grad_acc((c)->in[IDX]);                                        \
        if ((kind) == BIN_GENERAL)                                                     \
            BCAST_BACKWARD(bc, c, d_, SIDE, OP);                                       \
        else                                                                           \
            FAST_BACKWARD(NAME, kind, c, d_, SIDE, OP);                                \
    } while (0)

/* A binary op's backward NAME_backward, after its BWD_ROW_a_<OP> and
 * BWD_ROW_b_<OP>: each input that needs a gradient. */
#define BINARY_BACKWARD_FN(NAME, OP)                                                   \
    FAST_BACKWARD_CHUNK(NAME, a, OP)                                                   \
    FAST_BACKWARD_CHUNK(NAME, b, OP)                                                   \
    static void NAME##_backward(tg_op_call *c)                                         \
    {                                                                                  \
        BINARY_CALL(c, {                                                               \
            BINARY_BACKWARD_SIDE(NAME, bc_, kind_, c, a, 0, OP);                       \
            BINARY_BACKWARD_SIDE(NAME, bc_, kind_, c, b, 1, OP);                       \
        });                                                                            \
    }

#endif /* TG_OPS_H */
