/* ops/matmul.c: the matrix op family: tg_matmul, tg_add_bias, tg_linear.
 *
 * Every product goes through the GEMM (src/kernels/gemm.c) with its transpose flags,
 * so no transpose is ever materialised, and backward accumulates straight
 * into the gradient buffers (accumulate = 1). Shapes follow llm.c's habit:
 * x is [m,in], W is [in,out]. Local gradients in full: docs/ops-matmul.md. */
#include "internal.h"
#include "vmath.h"

#include <tgmath.h>

#define LEAKY_SLOPE 0.01   /* TG_ACT_LEAKY_RELU's slope (tapegrad.h) */
#define COLSUM_BLOCK 256   /* columns summed per pass of colsum_acc */

/* ---- vector kernels and threads ------------------------------------------
 * The activations call src/kernels/vmath.h's vector functions, picked for the element
 * type T of TGI_FLOAT_DISPATCH by the type of their first pointer. */
#define V_TANH(y, x, n) _Generic((y), float *: tgi_vtanh_f32, double *: tgi_vtanh_f64)(y, x, n)
#define V_SIGMOID(y, x, n)                                                             \
    _Generic((y), float *: tgi_vsigmoid_f32, double *: tgi_vsigmoid_f64)(y, x, n)
#define V_RELU(y, x, n) _Generic((y), float *: tgi_vrelu_f32, double *: tgi_vrelu_f64)(y, x, n)

/* Loops the compiler vectorises get an AVX2 clone, chosen at load time. */
#if defined(__x86_64__) && defined(__has_attribute)
#if __has_attribute(target_clones) && !defined(TGI_NO_TARGET_CLONES) /* (TSan: resolvers run before it) */
#define AVX2_CLONES __attribute__((target_clones("avx2", "default")))
#endif
#endif
#ifndef AVX2_CLONES
#define AVX2_CLONES
#endif


/* relu's derivative applied to dy: d[i] = y[i] > 0 ? g[i] : 0. g[i] is read
 * unconditionally, so the loop is a compare and a blend (vectorised), not a
 * branch mispredicted on random signs. */
AVX2_CLONES static void relu_mask_f32(float *restrict d, const float *restrict y,
                                      const float *restrict g, int64_t n)
{
    for (int64_t i = 0; i < n; i++) {
        const float gi = g[i];
        d[i] = y[i] > 0.0f ? gi : 0.0f;
    }
}

AVX2_CLONES static void relu_mask_f64(double *restrict d, const double *restrict y,
                                      const double *restrict g, int64_t n)
{
    for (int64_t i = 0; i < n; i++) {
        const double gi = g[i];
        d[i] = y[i] > 0.0 ? gi : 0.0;
    }
}
#define RELU_MASK(d, y, g, n)                                                          \
    _Generic((d), float *: relu_mask_f32, double *: relu_mask_f64)(d, y, g, n)

/* ---- helpers shared by the three ops ---------------------------------- */

/* C[m,n] (row stride ldc) = (acc ? C : 0) + op(A) op(B), by dtype (src/kernels/gemm.h;
 * it accepts zero sizes). On a GEMM workspace failure records
 * "<fn>: out of memory ..." and returns -1. */
static int gemm(tg_ctx *ctx, const char *fn, tg_dtype dt, int ta, int tb, int64_t m,
                int64_t n, int64_t k, const void *a, int64_t lda, const void *b,
                int64_t ldb, int acc, void *c, int64_t ldc)
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

/* db[j] += sum_i dy[i,j] for dy [m,n]: row-major sweeps over blocks of
 * columns, summed in double whatever the dtype (so f32 column sums of a large
 * batch keep their precision), added into db once per column. Narrow dy (a
 * few columns) is summed one column at a time, in the same order. */
static void colsum_acc(tg_dtype dt, int64_t m, int64_t n, const void *dyv, void *dbv)
{
    double acc[COLSUM_BLOCK];
    TGI_FLOAT_DISPATCH(dt, {
        const T *dy = dyv;
        T *db = dbv;
        if (n < 8) {
            for (int64_t j = 0; j < n; j++) {
                double a = 0.0;
                for (int64_t i = 0; i < m; i++) a += (double)dy[i * n + j];
                db[j] += (T)a;
            }
            return;
        }
        for (int64_t j0 = 0; j0 < n; j0 += COLSUM_BLOCK) {
            int64_t nb = n - j0 < COLSUM_BLOCK ? n - j0 : COLSUM_BLOCK;
            for (int64_t j = 0; j < nb; j++) acc[j] = 0.0;
            for (int64_t i = 0; i < m; i++) {
                const T *row = dy + i * n + j0;
                for (int64_t j = 0; j < nb; j++) acc[j] += (double)row[j];
            }
            for (int64_t j = 0; j < nb; j++) db[j0 + j] += (T)acc[j];
        }
    });
}

/* The argument checks every op here starts with: present (else "<fn>:
 * argument <name> is NULL", or silence after an earlier error), f32 or f64,
 * and the dtype of `ref` when given. 1 if usable. */
static int check_float_arg(tg_ctx *ctx, const char *fn, const char *name, const tg_tensor *t,
                           const tg_tensor *ref)
{
    if (!tgi_check_arg(ctx, fn, name, t)) return 0;
    if (!tgi_check_float(ctx, fn, name, t)) return 0;
    if (ref && !tgi_check_same_dtype(ctx, fn, ref, t)) return 0;
    return 1;
}

/* 1 if a node should have been recorded but the tape could not grow (the
 * error is recorded by tgi_record). */
static int record_failed(tg_ctx *ctx, const tg_op_call *c, tg_tensor *const *in, int n)
{
    return !c && tgi_should_record(ctx, in, n);
}

/* ======================================================================== */
/* tg_matmul                                                                 */
/* ======================================================================== */

/* C = A B.  A is [m,k], B is [k,n], C is [m,n].
 *   dA += dC B^T   (GEMM, B read transposed in place)
 *   dB += A^T dC   (GEMM, A read transposed in place)
 * Saves nothing: the inputs themselves are what backward reads.
 * Numerics: the GEMM's summation order is fixed whatever the thread count, so
 * results are bit-identical across runs; f32 accumulates in f32. */
static int matmul_fwd(tg_ctx *ctx, tg_tensor *out, const tg_tensor *a, const tg_tensor *b);
static int matmul_forward(tg_op_call *c);
static void matmul_backward(tg_op_call *c);
static const tg_op op_matmul = {"matmul", matmul_forward, matmul_backward};

tg_tensor *tg_matmul(tg_ctx *ctx, tg_tensor *a, tg_tensor *b)
{
    static const char fn[] = "tg_matmul";
    if (!ctx) return NULL;
    if (!check_float_arg(ctx, fn, "a", a, NULL) || !check_float_arg(ctx, fn, "b", b, a))
        return NULL;
    char sa[64], sb[64];
    if (a->ndim != 2 || b->ndim != 2) {
        tg_set_error(ctx, "%s: a and b must be 2-D: a is %s, b is %s", fn, TGI_SHAPE(a, sa),
                     TGI_SHAPE(b, sb));
        return NULL;
    }
    if (a->shape[1] != b->shape[0]) {
        tg_set_error(ctx, "%s: inner dimensions differ: a is %s, b is %s", fn, TGI_SHAPE(a, sa),
                     TGI_SHAPE(b, sb));
        return NULL;
    }
    int64_t shape[2] = {a->shape[0], b->shape[1]};
    tg_tensor *out = tgi_tensor_new(ctx, fn, a->dtype, 2, shape, 0);
    if (!out) return NULL;
    tg_tensor *in[2] = {a, b};
    tg_op_call *c = tgi_record(ctx, &op_matmul, out, in, 2);
    if (record_failed(ctx, c, in, 2)) return NULL;
    if (matmul_fwd(ctx, out, a, b) != 0) return NULL;
    return out;
}

/* C[m,n] = A[m,k] B[k,n] */
static int matmul_fwd(tg_ctx *ctx, tg_tensor *out, const tg_tensor *a, const tg_tensor *b)
{
    int64_t m = a->shape[0], k = a->shape[1], n = b->shape[1];
    return gemm(ctx, "tg_matmul", a->dtype, 0, 0, m, n, k, a->data, k, b->data, n, 0, out->data,
                n);
}

static int matmul_forward(tg_op_call *c)
{
    return matmul_fwd(c->ctx, c->out, c->in[0], c->in[1]);
}

/* d(AB)/dA: dA = dC B^T;  d(AB)/dB: dB = A^T dC */
static void matmul_backward(tg_op_call *c)
{
    tg_tensor *a = c->in[0], *b = c->in[1];
    const void *dc = tg_grad(c->out);
    if (!dc) return;
    int64_t m = a->shape[0], k = a->shape[1], n = b->shape[1];
    if (tgi_needs_grad(a)) { /* [m,k] += [m,n] ([k,n] stored, read as its transpose) */
        void *da = tg_grad_acc(a);
        if (!da || gemm(c->ctx, "tg_matmul", a->dtype, 0, 1, m, k, n, dc, n, b->data, n, 1, da,
                        k) != 0)
            return;
    }
    if (tgi_needs_grad(b)) { /* [k,n] += ([m,k] stored, read as its transpose) [m,n] */
        void *db = tg_grad_acc(b);
        if (!db || gemm(c->ctx, "tg_matmul", a->dtype, 1, 0, k, n, m, a->data, k, dc, n, 1, db,
                        n) != 0)
            return;
    }
}

/* ======================================================================== */
/* tg_add_bias                                                               */
/* ======================================================================== */

/* y = x + b, b added to every row.  x is [m,n], b is [n], y is [m,n].
 *   dx += dy
 *   db += column sums of dy (sum over the m rows)
 * Saves nothing (both local gradients are independent of the values).
 * Numerics: column sums accumulate in double, also for f32. */
static void add_bias_fwd(tg_tensor *out, const tg_tensor *x, const tg_tensor *b);
static int add_bias_forward(tg_op_call *c);
static void add_bias_backward(tg_op_call *c);
static const tg_op op_add_bias = {"add_bias", add_bias_forward, add_bias_backward};

tg_tensor *tg_add_bias(tg_ctx *ctx, tg_tensor *x, tg_tensor *b)
{
    static const char fn[] = "tg_add_bias";
    if (!ctx) return NULL;
    if (!check_float_arg(ctx, fn, "x", x, NULL) || !check_float_arg(ctx, fn, "b", b, x))
        return NULL;
    char sx[64], sb[64];
    if (x->ndim != 2 || b->ndim != 1) {
        tg_set_error(ctx, "%s: x must be 2-D [m,n] and b 1-D [n]: x is %s, b is %s", fn,
                     TGI_SHAPE(x, sx), TGI_SHAPE(b, sb));
        return NULL;
    }
    if (b->shape[0] != x->shape[1]) {
        tg_set_error(ctx, "%s: bias length differs from the columns of x: x is %s, b is %s", fn,
                     TGI_SHAPE(x, sx), TGI_SHAPE(b, sb));
        return NULL;
    }
    tg_tensor *out = tgi_tensor_new(ctx, fn, x->dtype, 2, x->shape, 0);
    if (!out) return NULL;
    tg_tensor *in[2] = {x, b};
    tg_op_call *c = tgi_record(ctx, &op_add_bias, out, in, 2);
    if (record_failed(ctx, c, in, 2)) return NULL;
    add_bias_fwd(out, x, b);
    return out;
}

/* y[i,j] = x[i,j] + b[j] */
static void add_bias_fwd(tg_tensor *out, const tg_tensor *x, const tg_tensor *b)
{
    int64_t m = x->shape[0], n = x->shape[1];
    TGI_FLOAT_DISPATCH(x->dtype, {
        const T *xd = x->data, *bd = b->data;
        T *y = out->data;
        for (int64_t i = 0; i < m; i++)
            for (int64_t j = 0; j < n; j++) y[i * n + j] = xd[i * n + j] + bd[j];
    });
}

static int add_bias_forward(tg_op_call *c)
{
    add_bias_fwd(c->out, c->in[0], c->in[1]);
    return 0;
}

/* d(x + b)/dx = 1;  d(x + b)/db[j] = sum over rows */
static void add_bias_backward(tg_op_call *c)
{
    tg_tensor *x = c->in[0], *b = c->in[1];
    const void *dyv = tg_grad(c->out);
    if (!dyv) return;
    int64_t m = x->shape[0], n = x->shape[1];
    if (tgi_needs_grad(x)) {
        void *dxv = tg_grad_acc(x);
        if (dxv) {
            TGI_FLOAT_DISPATCH(x->dtype, {
                const T *dy = dyv;
                T *dx = dxv;
                for (int64_t i = 0; i < m * n; i++) dx[i] += dy[i];
            });
        }
    }
    if (tgi_needs_grad(b)) {
        void *db = tg_grad_acc(b);
        if (db) colsum_acc(x->dtype, m, n, dyv, db);
    }
}

/* ======================================================================== */
/* tg_linear                                                                 */
/* ======================================================================== */

/* y = act(x W + b), one node.  x is [m,in], W is [in,out], b is [out] or
 * absent, y is [m,out]. With p = x W + b (the pre-activation) and
 * d_pre = dy * act'(p):
 *   dW += x^T d_pre,  dx += d_pre W^T,  db += column sums of d_pre.
 * Saves nothing beyond the output y: every supported act' can be written
 * from y (relu: y > 0; leaky relu: y > 0 iff p > 0 since the slope is > 0;
 * tanh: 1 - y^2; sigmoid: y (1 - y)), so p is never stored. Backward builds
 * d_pre in one tg_scratch buffer [m,out] (with TG_ACT_NONE it reads dy
 * directly). Numerics: sigmoid is evaluated without overflow (exp of a
 * non-positive number only); at p = 0 relu's derivative is 0 and leaky
 * relu's is the slope, as in tg_relu and tg_leaky_relu. */
static int linear_fwd(tg_ctx *ctx, tg_tensor *out, const tg_tensor *x, const tg_tensor *w,
                      const tg_tensor *b, tg_act act);
static int linear_forward(tg_op_call *c);
static void linear_backward(tg_op_call *c);
static const tg_op op_linear = {"linear", linear_forward, linear_backward};

tg_tensor *tg_linear(tg_ctx *ctx, tg_tensor *x, tg_tensor *w, tg_tensor *b, tg_act act)
{
    static const char fn[] = "tg_linear";
    if (!ctx) return NULL;
    if (!check_float_arg(ctx, fn, "x", x, NULL) || !check_float_arg(ctx, fn, "w", w, x))
        return NULL;
    if (b && !check_float_arg(ctx, fn, "b", b, x)) return NULL;
    char sx[64], sw[64], sb[64];
    if (x->ndim != 2 || w->ndim != 2) {
        tg_set_error(ctx, "%s: x and w must be 2-D ([m,in] and [in,out]): x is %s, w is %s", fn,
                     TGI_SHAPE(x, sx), TGI_SHAPE(w, sw));
        return NULL;
    }
    if (x->shape[1] != w->shape[0]) {
        tg_set_error(ctx, "%s: inner dimensions differ: x is %s, w is %s", fn, TGI_SHAPE(x, sx),
                     TGI_SHAPE(w, sw));
        return NULL;
    }
    if (b && (b->ndim != 1 || b->shape[0] != w->shape[1])) {
        tg_set_error(ctx, "%s: bias must be [%lld] to match w %s, got b %s", fn,
                     (long long)w->shape[1], TGI_SHAPE(w, sw), TGI_SHAPE(b, sb));
        return NULL;
    }
    if ((int)act < 0 || act >= TG_ACT_COUNT) {
        tg_set_error(ctx, "%s: unknown activation %d (x is %s, w is %s)", fn, (int)act,
                     TGI_SHAPE(x, sx), TGI_SHAPE(w, sw));
        return NULL;
    }
    int64_t shape[2] = {x->shape[0], w->shape[1]};
    tg_tensor *out = tgi_tensor_new(ctx, fn, x->dtype, 2, shape, 0);
    if (!out) return NULL;
    tg_tensor *in[3] = {x, w, b};
    int n_in = b ? 3 : 2;
    tg_op_call *c = tgi_record(ctx, &op_linear, out, in, n_in);
    if (record_failed(ctx, c, in, n_in)) return NULL;
    if (c) tgi_node_attr(c)->i[0] = (int64_t)act;
    if (linear_fwd(ctx, out, x, w, b, act) != 0) return NULL;
    return out;
}

/* y = act(x W + b): the GEMM writes x W into y, then one sweep adds the bias
 * and applies the activation in place (the vector kernels of src/kernels/vmath.h),
 * over contiguous chunks of y, several threads for a large y. */
static int linear_fwd(tg_ctx *ctx, tg_tensor *out, const tg_tensor *x, const tg_tensor *w,
                      const tg_tensor *b, tg_act act)
{
    int64_t m = x->shape[0], k = x->shape[1], n = w->shape[1];
    if (gemm(ctx, "tg_linear", x->dtype, 0, 0, m, n, k, x->data, k, w->data, n, 0, out->data,
             n) != 0)
        return -1;
    if (!b && act == TG_ACT_NONE) return 0;
    TGI_FLOAT_DISPATCH(x->dtype, {
        T *y = out->data;
        const T *bd = b ? (const T *)b->data : NULL;
        const T slope = (T)LEAKY_SLOPE;
        TGI_PAR_CHUNKS(ctx, m * n, lo, hi, {
            /* y[i, j] += b[j] over the chunk's (partial) rows: a vector loop per
             * row, or for short rows (an XOR net's) one loop over the chunk */
            if (bd && n >= 16) {
                for (int64_t i = lo; i < hi;) {
                    const int64_t j0 = i % n, len = n - j0 < hi - i ? n - j0 : hi - i;
                    T *restrict yr = y + i;
                    const T *restrict br = bd + j0;
                    for (int64_t j = 0; j < len; j++) yr[j] += br[j];
                    i += len;
                }
            } else if (bd && lo < hi) {
                for (int64_t i = lo, j = lo % n; i < hi; i++) {
                    y[i] += bd[j];
                    j = j + 1 == n ? 0 : j + 1;
                }
            }
            T *yc = y + lo;
            const int64_t len = hi - lo;
            switch (act) {
            case TG_ACT_RELU: V_RELU(yc, yc, len); break; /* NaN passes, as in tg_relu */
            case TG_ACT_LEAKY_RELU:
                for (int64_t j = 0; j < len; j++) yc[j] = yc[j] > 0 ? yc[j] : slope * yc[j];
                break;
            case TG_ACT_TANH: V_TANH(yc, yc, len); break;
            case TG_ACT_SIGMOID: V_SIGMOID(yc, yc, len); break; /* exp of -|p| only */
            default: break;                                      /* TG_ACT_NONE */
            }
        });
    });
    return 0;
}

static int linear_forward(tg_op_call *c)
{
    return linear_fwd(c->ctx, c->out, c->in[0], c->in[1], c->n_in > 2 ? c->in[2] : NULL,
                      (tg_act)tgi_node_attr(c)->i[0]);
}

/* d_pre = dy * act'(p), written from y:
 *   relu' = [y > 0];  leaky' = y > 0 ? 1 : slope;  tanh' = 1 - y^2;  sigmoid' = y (1 - y)
 * then d(xW + b)/dW: dW = x^T d_pre;  /dx: dx = d_pre W^T;  /db: db = colsum(d_pre) */
static void linear_backward(tg_op_call *c)
{
    tg_ctx *ctx = c->ctx;
    tg_tensor *x = c->in[0], *w = c->in[1], *b = c->n_in > 2 ? c->in[2] : NULL;
    tg_act act = (tg_act)tgi_node_attr(c)->i[0];
    const void *dy = tg_grad(c->out);
    if (!dy) return;
    int64_t m = x->shape[0], k = x->shape[1], n = w->shape[1];
    const void *dpre = dy;
    if (act != TG_ACT_NONE && c->out->numel > 0) {
        void *buf = tg_scratch(ctx, tgi_bytes(c->out));
        if (!buf) return; /* error recorded by tg_scratch */
        int64_t len = c->out->numel;
        TGI_FLOAT_DISPATCH(x->dtype, {
            const T *y = c->out->data, *g = dy;
            T *d = buf;
            const T slope = (T)LEAKY_SLOPE;
            TGI_PAR_CHUNKS(ctx, len, lo, hi, {
                switch (act) {
                case TG_ACT_RELU: RELU_MASK(d + lo, y + lo, g + lo, hi - lo); break;
                case TG_ACT_LEAKY_RELU:
                    for (int64_t i = lo; i < hi; i++) d[i] = y[i] > 0 ? g[i] : slope * g[i];
                    break;
                case TG_ACT_TANH:
                    for (int64_t i = lo; i < hi; i++) d[i] = g[i] * ((T)1 - y[i] * y[i]);
                    break;
                case TG_ACT_SIGMOID:
                    for (int64_t i = lo; i < hi; i++) d[i] = g[i] * (y[i] * ((T)1 - y[i]));
                    break;
                default: break;
                }
            });
        });
        dpre = buf;
    }
    if (tgi_needs_grad(w)) { /* [k,n] += ([m,k] stored, read as its transpose) [m,n] */
        void *dw = tg_grad_acc(w);
        if (!dw || gemm(ctx, "tg_linear", x->dtype, 1, 0, k, n, m, x->data, k, dpre, n, 1, dw,
                        n) != 0)
            return;
    }
    if (tgi_needs_grad(x)) { /* [m,k] += [m,n] ([k,n] stored, read as its transpose) */
        void *dx = tg_grad_acc(x);
        if (!dx || gemm(ctx, "tg_linear", x->dtype, 0, 1, m, k, n, dpre, n, w->data, n, 1, dx,
                        k) != 0)
            return;
    }
    if (b && tgi_needs_grad(b)) {
        void *db = tg_grad_acc(b);
        if (db) colsum_acc(x->dtype, m, n, dpre, db);
    }
}
