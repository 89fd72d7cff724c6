/* SPDX-License-Identifier: MIT */
/* ops/matmul.c: the matrix op family: tg_matmul, tg_add_bias, tg_linear.
 *
 * Every product goes through the GEMM (src/kernels/gemm.c) with its transpose flags,
 * so no transpose is ever materialised, and backward accumulates straight
 * into the gradient buffers (accumulate = 1). Shapes follow llm.c's habit:
 * x is [m,in], W is [in,out]. Local gradients in full: docs/ops.md. */
#include "ops.h"
#include "gemm_tiny.h"

/* relu's derivative applied to dy: d[i] = y[i] > 0 ? g[i] : 0. g[i] is read
 * unconditionally, so the loop is a compare and a blend (vectorised), not a
 * branch mispredicted on random signs. */
TGI_AVX2_CLONES static void relu_mask_f32(float *restrict d, const float *restrict y,
                                          const float *restrict g, int64_t n)
{
    for (int64_t i = 0; i < n; i++) {
        const float gi = g[i];
        d[i] = y[i] > 0.0f ? gi : 0.0f;
    }
}

TGI_AVX2_CLONES static void relu_mask_f64(double *restrict d, const double *restrict y,
                                          const double *restrict g, int64_t n)
{
    for (int64_t i = 0; i < n; i++) {
        const double gi = g[i];
        d[i] = y[i] > 0.0 ? gi : 0.0;
    }
}
#define RELU_MASK(d, y, g, n)                                                          \
    _Generic((d), float *: relu_mask_f32, double *: relu_mask_f64)(d, y, g, n)

/* ======================================================================== */
/* tg_matmul                                                                 */
/* ======================================================================== */

/* C = A B.  A is [m,k], B is [k,n], C is [m,n].
 *   dA += dC B^T   (GEMM, B read transposed in place)
 *   dB += A^T dC   (GEMM, A read transposed in place)
 * Saves nothing: the inputs themselves are what backward reads.
 * Numerics: the GEMM's summation order is fixed whatever the thread count, so
 * results are bit-identical across runs; f32 accumulates in f32. */
TGI_OP(matmul);
static tg_tensor *bmm(tg_ctx *ctx, tg_tensor *a, tg_tensor *b);

tg_tensor *tg_matmul(tg_ctx *ctx, tg_tensor *a, tg_tensor *b)
{
    static const char fn[] = "tg_matmul";
    if (!ctx) return NULL;
    if (!tgi_check_float_arg(ctx, fn, "a", a, NULL) || !tgi_check_float_arg(ctx, fn, "b", b, a))
        return NULL;
    if (a->ndim > 2 || b->ndim > 2) return bmm(ctx, a, b);
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
    return tgi_op_run(ctx, &op_matmul, out, in, 2, NULL, 0);
}

/* C[m,n] = A[m,k] B[k,n] */
static int matmul_forward(tg_op_call *c)
{
    const tg_tensor *a = c->in[0], *b = c->in[1];
    int64_t m = a->shape[0], k = a->shape[1], n = b->shape[1];
    return tgi_op_gemm(c->ctx, "tg_matmul", a->dtype, 0, 0, m, n, k, a->data, k, b->data, n, 0,
                       c->out->data, n);
}

/* d(AB)/dA: dA = dC B^T;  d(AB)/dB: dB = A^T dC */
static void matmul_backward(tg_op_call *c)
{
    tg_tensor *a = c->in[0], *b = c->in[1];
    const void *dc = tg_grad(c->out);
    if (!dc) return;
    int64_t m = a->shape[0], k = a->shape[1], n = b->shape[1];
    int fresh; /* a new gradient buffer: the GEMM assigns instead of adding */
    if (tgi_needs_grad(a)) { /* [m,k] += [m,n] ([k,n] stored, read as its transpose) */
        void *da = tgi_grad_first(a, &fresh);
        if (!da || tgi_op_gemm(c->ctx, "tg_matmul", a->dtype, 0, 1, m, k, n, dc, n, b->data, n,
                               !fresh, da, k) != 0)
            return;
    }
    if (tgi_needs_grad(b)) { /* [k,n] += ([m,k] stored, read as its transpose) [m,n] */
        void *db = tgi_grad_first(b, &fresh);
        if (!db || tgi_op_gemm(c->ctx, "tg_matmul", a->dtype, 1, 0, k, n, m, a->data, k, dc, n,
                               !fresh, db, n) != 0)
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
TGI_OP(add_bias);

tg_tensor *tg_add_bias(tg_ctx *ctx, tg_tensor *x, tg_tensor *b)
{
    static const char fn[] = "tg_add_bias";
    if (!ctx) return NULL;
    if (!tgi_check_float_arg(ctx, fn, "x", x, NULL) || !tgi_check_float_arg(ctx, fn, "b", b, x))
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
    return tgi_op_run(ctx, &op_add_bias, out, in, 2, NULL, 0);
}

/* y[i,j] = x[i,j] + b[j] */
static int add_bias_forward(tg_op_call *c)
{
    const tg_tensor *x = c->in[0], *b = c->in[1];
    tg_tensor *out = c->out;
    int64_t m = x->shape[0], n = x->shape[1];
    TGI_FLOAT_DISPATCH(x->dtype, {
        const T *xd = x->data, *bd = b->data;
        T *y = out->data;
        for (int64_t i = 0; i < m; i++)
            for (int64_t j = 0; j < n; j++) y[i * n + j] = xd[i * n + j] + bd[j];
    });
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
        if (db) tgi_colsum_acc(x->dtype, m, n, dyv, db);
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
/* The same node with the weight kept as nn.Linear keeps it (tgi_linear_wt):
 * W is [out,in] and y = act(x W^T + b); the GEMM reads W transposed in place
 * (attribute i[1] = 1), so
 *   dW += d_pre^T x  ([out,in]),  dx += d_pre W,  db as above. */
static int linear_fwd(tg_ctx *ctx, tg_tensor *out, const tg_tensor *x, const tg_tensor *w,
                      const tg_tensor *b, tg_act act, int wt);
TGI_OP(linear);

/* tgi_op_gemm for tg_linear, a tiny f32 product computed right here by the GEMM's
 * tiny path (inline: no entry point, no dispatch on what the call site fixes), the
 * same bits: a small layer's products cost little more than their arithmetic.
 * The node's products all have the same m n k: `tiny` (linear_tiny) says once
 * whether they may take that path. */
static inline int linear_tiny(tg_dtype dt, int64_t m, int64_t n, int64_t k)
{
    return dt == TG_F32 && m * n * k <= TINY_GEMM_WORK && tgi_gemm_tiny_ok();
}
static inline __attribute__((always_inline)) int
linear_gemm(tg_ctx *ctx, int tiny, tg_dtype dt, int ta, int tb, int64_t m, int64_t n, int64_t k,
            const void *a, int64_t lda, const void *b, int64_t ldb, int acc, void *c, int64_t ldc)
{
    if (tiny && tgi_gemm_tiny_fits(m, n, k)) {
        tiny_gemm_float(ta, tb, m, n, k, a, lda, b, ldb, acc, c, ldc);
        return 0;
    }
    return tgi_op_gemm(ctx, "tg_linear", dt, ta, tb, m, n, k, a, lda, b, ldb, acc, c, ldc);
}

/* tg_linear (wt 0: w [in,out]) and tgi_linear_wt (wt 1: w [out,in]) */
static tg_tensor *linear(tg_ctx *ctx, const char *fn, tg_tensor *x, tg_tensor *w, tg_tensor *b,
                         tg_act act, int wt)
{
    if (!ctx) return NULL;
    if (!tgi_check_xwb(ctx, fn, x, w, b)) return NULL;
    char sx[64], sw[64], sb[64];
    if (x->ndim != 2 || w->ndim != 2) {
        tg_set_error(ctx, "%s: x and w must be 2-D ([m,in] and %s): x is %s, w is %s", fn,
                     wt ? "[out,in]" : "[in,out]", TGI_SHAPE(x, sx), TGI_SHAPE(w, sw));
        return NULL;
    }
    const int64_t w_in = w->shape[wt ? 1 : 0], w_out = w->shape[wt ? 0 : 1];
    if (x->shape[1] != w_in) {
        tg_set_error(ctx, "%s: inner dimensions differ: x is %s, w is %s", fn, TGI_SHAPE(x, sx),
                     TGI_SHAPE(w, sw));
        return NULL;
    }
    if (b && (b->ndim != 1 || b->shape[0] != w_out)) {
        tg_set_error(ctx, "%s: bias must be [%lld] to match w %s, got b %s", fn,
                     (long long)w_out, TGI_SHAPE(w, sw), TGI_SHAPE(b, sb));
        return NULL;
    }
    if ((int)act < 0 || act >= TG_ACT_COUNT) {
        tg_set_error(ctx, "%s: unknown activation %d (x is %s, w is %s)", fn, (int)act,
                     TGI_SHAPE(x, sx), TGI_SHAPE(w, sw));
        return NULL;
    }
    int64_t shape[2] = {x->shape[0], w_out};
    const int64_t lim = (int64_t)1 << 20; /* both below: no check of the product needed */
    tg_tensor *out = shape[0] < lim && w_out < lim
                         ? tgi_tensor_make(ctx, x->dtype, 2, shape, shape[0] * w_out)
                         : tgi_tensor_new(ctx, fn, x->dtype, 2, shape, 0);
    if (!out) return NULL;
    tg_tensor *in[3] = {x, w, b};
    int n_in = b ? 3 : 2;
    const tgi_attr at = {.i = {(int64_t)act, wt}};
    return tgi_op_run(ctx, &op_linear, out, in, n_in, &at, sizeof at);
}

tg_tensor *tg_linear(tg_ctx *ctx, tg_tensor *x, tg_tensor *w, tg_tensor *b, tg_act act)
{
    return linear(ctx, "tg_linear", x, w, b, act, 0);
}

tg_tensor *tgi_linear_wt(tg_ctx *ctx, const char *fn, tg_tensor *x, tg_tensor *w, tg_tensor *b,
                         tg_act act)
{
    return linear(ctx, fn, x, w, b, act, 1);
}

/* y = act(x W + b): the GEMM writes x W into y, then one sweep adds the bias
 * and applies the activation in place (the vector kernels of src/kernels/vmath.h),
 * over contiguous chunks of y, several threads for a large y (TGI_PAR_RUN). */
typedef struct {
    tg_dtype dt;
    tg_act act;
    int64_t n;      /* row length of y */
    void *y;
    const void *b;  /* [n] or NULL */
    const void *g;  /* backward: dy */
} linear_job;

/* y[lo:hi] = act(y + b) over the chunk's (partial) rows */
TGI_PAR_FN void linear_bias_act(void *arg, int64_t lo, int64_t hi)
{
    const linear_job *j = arg;
    const int64_t n = j->n;
    const tg_act act = j->act;
    TGI_FLOAT_DISPATCH(j->dt, {
        T *y = j->y;
        const T *bd = j->b;
        const T slope = (T)TGI_LEAKY_SLOPE;
        /* y[i, j] += b[j]: a loop per (partial) row of the chunk, or for
         * a single column one loop */
        const int rows = bd && n < 8 && lo % n == 0 && (hi - lo) % n == 0;
        if (rows) /* whole narrow rows: the row loop of a constant width W */
            TGI_NARROW(n, {
                for (int64_t i = lo; i < hi; i += W)
                    for (int q = 0; q < W; q++) y[i + q] += bd[q];
            });
        for (int64_t i = lo, j0 = bd ? lo % n : 0; bd && !rows && i < hi; j0 = 0) {
            const int64_t len = n - j0 < hi - i ? n - j0 : hi - i;
            T *restrict yr = y + i;
            const T *restrict br = bd + j0;
            if (len >= 256) /* a long row: the widest vectors (1 * b[j] is b[j]) */
                _Generic(yr, float *: tgi_vaxpy_f32, double *: tgi_vaxpy_f64)(yr, 1, br, len);
            else
                for (int64_t q = 0; q < len; q++) yr[q] += br[q];
            i += len;
        }
        T *yc = y + lo;
        const int64_t len = hi - lo;
        switch (act) {
        case TG_ACT_RELU: V_RELU(yc, yc, len); break; /* NaN passes, as in tg_relu */
        case TG_ACT_LEAKY_RELU:
            for (int64_t q = 0; q < len; q++) yc[q] = yc[q] > 0 ? yc[q] : slope * yc[q];
            break;
        case TG_ACT_TANH: V_TANH(yc, yc, len); break;
        case TG_ACT_SIGMOID: V_SIGMOID(yc, yc, len); break; /* exp of -|p| only */
        default: break;                                      /* TG_ACT_NONE */
        }
    });
}

static int linear_fwd(tg_ctx *ctx, tg_tensor *out, const tg_tensor *x, const tg_tensor *w,
                      const tg_tensor *b, tg_act act, int wt)
{
    int64_t m = x->shape[0], k = x->shape[1], n = out->shape[1];
    const int tiny = linear_tiny(x->dtype, m, n, k);
    if (linear_gemm(ctx, tiny, x->dtype, 0, wt, m, n, k, x->data, k, w->data, wt ? k : n, 0,
                    out->data, n) != 0)
        return -1;
    if (!b && act == TG_ACT_NONE) return 0;
    KIT_PAR_RUN(ctx, m * n, linear_bias_act,
                &(linear_job){x->dtype, act, n, out->data, b ? b->data : NULL, NULL});
    return 0;
}

static int linear_forward(tg_op_call *c)
{
    return linear_fwd(c->ctx, c->out, c->in[0], c->in[1], c->n_in > 2 ? c->in[2] : NULL,
                      (tg_act)TGI_ATTR(c)->i[0], (int)TGI_ATTR(c)->i[1]);
}

/* d[lo:hi] = dy * act'(p), from y (j->b): d is j->y, dy j->g */
TGI_PAR_FN void linear_act_grad(void *arg, int64_t lo, int64_t hi)
{
    const linear_job *j = arg;
    TGI_FLOAT_DISPATCH(j->dt, {
        const T *y = j->b, *g = j->g;
        T *d = j->y;
        const T slope = (T)TGI_LEAKY_SLOPE;
        switch (j->act) {
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
}

/* acc[j] += r[j] in double over one row (len values): a step of tgi_colsum_acc's
 * sums (per column, rows in order, from 0 in double), so the same bits */
#define COLSUM_ROW_FN(T, SUF)                                                          \
    TGI_AVX512_CLONES static void colsum_row_##SUF(double *restrict acc,               \
                                                   const T *restrict r, int64_t len)   \
    {                                                                                  \
        for (int64_t j = 0; j < len; j++) acc[j] += (double)r[j];                      \
    }
COLSUM_ROW_FN(float, f32)
COLSUM_ROW_FN(double, f64)
#define COLSUM_ROW(acc, r, len)                                                        \
    _Generic((r), float *: colsum_row_f32, double *: colsum_row_f64)(acc, r, len)

/* db[j] += acc[j] (the column sums, in double) rounded to the dtype */
static void bias_grad_add(tg_dtype dt, void *db, const double *acc, int64_t n)
{
    TGI_FLOAT_DISPATCH(dt, {
        T *restrict pdb = db;
        for (int64_t j = 0; j < n; j++) pdb[j] += (T)acc[j];
    });
}

typedef struct {
    linear_job j; /* linear_act_grad's: d_pre (y), y (b), dy (g), n */
    int64_t m;
    double *acc;  /* [n] */
} act_cols_job;

/* linear_act_grad over columns [c0, c1) of every row, and acc[c0, c1) = the column
 * sums of d_pre there, each row added while it is in L1 (one pass over d_pre
 * instead of two: the bias gradient's sweep read it back from L2). A column's sum
 * runs over the rows in order whatever the columns' split between threads. */
static void linear_act_grad_cols(const void *arg, int64_t c0, int64_t c1)
{
    const act_cols_job *cj = arg;
    const int64_t n = cj->j.n;
    for (int64_t j = c0; j < c1; j++) cj->acc[j] = 0.0;
    for (int64_t i = 0; i < cj->m; i++) {
        linear_act_grad((void *)&cj->j, i * n + c0, i * n + c1);
        TGI_FLOAT_DISPATCH(cj->j.dt, {
            COLSUM_ROW(cj->acc + c0, (T *)cj->j.y + i * n + c0, c1 - c0);
        });
    }
}

/* d_pre = dy * act'(p), written from y:
 *   relu' = [y > 0];  leaky' = y > 0 ? 1 : slope;  tanh' = 1 - y^2;  sigmoid' = y (1 - y)
 * then d(xW + b)/dW: dW = x^T d_pre;  /dx: dx = d_pre W^T;  /db: db = colsum(d_pre)
 * With a bias to differentiate and 8 or more columns, db's column sums are taken in
 * the act' sweep (linear_act_grad_cols; the same bits as tgi_colsum_acc). */
static void linear_backward(tg_op_call *c)
{
    tg_ctx *ctx = c->ctx;
    tg_tensor *x = c->in[0], *w = c->in[1], *b = c->n_in > 2 ? c->in[2] : NULL;
    tg_act act = (tg_act)TGI_ATTR(c)->i[0];
    const int wt = (int)TGI_ATTR(c)->i[1];
    const void *dy = tg_grad(c->out);
    if (!dy) return;
    int64_t m = x->shape[0], k = x->shape[1], n = c->out->shape[1];
    const int tiny = linear_tiny(x->dtype, m, n, k);
    const void *dpre = dy;
    const int bgrad = b && tgi_needs_grad(b);
    double *acc = NULL; /* db's column sums, when the act' sweep takes them */
    if (act != TG_ACT_NONE && c->out->numel > 0) {
        void *buf = tg_scratch(ctx, tgi_bytes(c->out));
        if (!buf) return; /* error recorded by tg_scratch */
        int64_t len = c->out->numel;
        const linear_job j = {x->dtype, act, n, buf, c->out->data, dy};
        if (bgrad && n >= 8) {
            acc = tg_scratch(ctx, (size_t)n * sizeof(double));
            if (!acc) return;
            const act_cols_job cj = {j, m, acc};
            const int nt = tgi_par_threads(ctx, len);
            if (nt <= 1)
                linear_act_grad_cols(&cj, 0, n);
            else
                tgi_par_units(ctx, nt, n, linear_act_grad_cols, &cj);
        } else {
            TGI_PAR_RUN(ctx, len, linear_act_grad, (void *)&j);
        }
        dpre = buf;
    }
    int fresh; /* a new gradient buffer: the GEMM assigns instead of adding */
    if (tgi_needs_grad(w)) {
        void *dw = tgi_grad_first(w, &fresh);
        /* wt: [n,k] += ([m,n] stored, read as its transpose) [m,k]
         * else [k,n] += ([m,k] stored, read as its transpose) [m,n] */
        if (!dw || (wt ? linear_gemm(ctx, tiny, x->dtype, 1, 0, n, k, m, dpre, n, x->data, k,
                                     !fresh, dw, k)
                       : linear_gemm(ctx, tiny, x->dtype, 1, 0, k, n, m, x->data, k, dpre, n,
                                     !fresh, dw, n)) != 0)
            return;
    }
    if (tgi_needs_grad(x)) { /* [m,k] += [m,n] W, W read as stored ([n,k]) or transposed ([k,n]) */
        void *dx = tgi_grad_first(x, &fresh);
        if (!dx || linear_gemm(ctx, tiny, x->dtype, 0, !wt, m, k, n, dpre, n, w->data,
                               wt ? k : n, !fresh, dx, k) != 0)
            return;
    }
    if (bgrad) {
        void *db = tg_grad_acc(b);
        if (db && acc)
            bias_grad_add(x->dtype, db, acc, n);
        else if (db)
            tgi_colsum_acc(x->dtype, m, n, dpre, db);
    }
}

/* ======================================================================== */
/* tgi_linear_residual                                                       */
/* ======================================================================== */

/* y = r + (x W^T + b), one node: tgi_linear_wt's product, then the bias and the
 * residual in one pass, y[i,j] = r[i,j] + (p[i,j] + b[j]): the bits of
 * tg_add(r, tgi_linear_wt(x, W, b)) without the add's sweep and output. x [m,in],
 * W [out,in], b [out], r any shape of m*out elements (read as [m,out] rows).
 * Backward: the linear node's dW, dx, db from dy, and dr += dy (a copy when dr is
 * new). Saves nothing. */
TGI_OP(linear_residual);

tg_tensor *tgi_linear_residual(tg_ctx *ctx, const char *fn, tg_tensor *x, tg_tensor *w,
                               tg_tensor *b, tg_tensor *r)
{
    if (!ctx) return NULL;
    if (!tgi_check_xwb(ctx, fn, x, w, b) || !tgi_check_float_arg(ctx, fn, "r", r, x)) return NULL;
    if (!b) {
        tg_set_error(ctx, "%s: the residual layer needs a bias b", fn);
        return NULL;
    }
    if (x->ndim != 2 || w->ndim != 2 || b->ndim != 1 || x->shape[1] != w->shape[1] ||
        b->shape[0] != w->shape[0] || r->numel != x->shape[0] * w->shape[0]) {
        char sx[64], sw[64], sb[64], sr[64];
        tg_set_error(ctx, "%s: need x [m,in], w [out,in], b [out] and r of m*out elements: x is "
                          "%s, w is %s, b is %s, r is %s", fn, TGI_SHAPE(x, sx), TGI_SHAPE(w, sw),
                     TGI_SHAPE(b, sb), TGI_SHAPE(r, sr));
        return NULL;
    }
    const int64_t shape[2] = {x->shape[0], w->shape[0]};
    tg_tensor *out = tgi_tensor_new(ctx, fn, x->dtype, 2, shape, 0);
    if (!out) return NULL;
    tg_tensor *in[4] = {x, w, b, r};
    const tgi_attr at = {.i = {(int64_t)TG_ACT_NONE, 1}}; /* what linear_backward reads */
    return tgi_op_run(ctx, &op_linear_residual, out, in, 4, &at, sizeof at);
}

typedef struct {
    tg_dtype dt;
    int64_t n; /* row length of y */
    void *y;
    const void *b, *r;
} residual_job;

/* y[lo:hi] = r + (y + b) over the chunk's (partial) rows */
TGI_PAR_FN void linear_bias_residual(void *arg, int64_t lo, int64_t hi)
{
    const residual_job *j = arg;
    TGI_FLOAT_DISPATCH(j->dt, {
        T *y = j->y;
        const T *bd = j->b, *rd = j->r;
        for (int64_t i = lo; i < hi;) {
            const int64_t j0 = i % j->n, len = j->n - j0 < hi - i ? j->n - j0 : hi - i;
            T *restrict yr = y + i;
            const T *restrict rr = rd + i, *restrict br = bd + j0;
            for (int64_t q = 0; q < len; q++) yr[q] = rr[q] + (yr[q] + br[q]);
            i += len;
        }
    });
}

static int linear_residual_forward(tg_op_call *c)
{
    const tg_tensor *x = c->in[0];
    if (linear_fwd(c->ctx, c->out, x, c->in[1], NULL, TG_ACT_NONE, 1) != 0) return -1;
    KIT_PAR_RUN(c->ctx, c->out->numel, linear_bias_residual,
                &(residual_job){x->dtype, c->out->shape[1], c->out->data, c->in[2]->data,
                                c->in[3]->data});
    return 0;
}

/* d(r + x W^T + b)/dr = 1; the rest is the linear node's */
static void linear_residual_backward(tg_op_call *c)
{
    linear_backward(c); /* in[0..2] and the attributes as a linear node's */
    if (tg_ok(c->ctx)) tgi_pass_grad(c, 3);
}

/* ======================================================================== */
/* tgi_linear_gelu                                                           */
/* ======================================================================== */

/* y = gelu(x W^T + b), one node: tgi_linear_wt's product, then the bias and
 * F.gelu (the erf form) in one sweep, the bits of tg_gelu(tgi_linear_wt(x, W, b)).
 * x [m,in], W [out,in], b [out]. Saves gelu's derivative d = Phi(p) + p phi(p) at
 * the pre-activation p ([m,out], tg_scratch), as tg_gelu does. Backward:
 *   d_pre = dy * d (over dy, in place),  db += colsum(d_pre) (in the same sweep,
 *   in double, rows in order: tgi_colsum_acc's bits),  then dW and dx as the
 *   linear node's from d_pre.
 * The gelu node's output, its gradient buffer and one sweep each way are not made. */
TGI_OP(linear_gelu);

#define V_GELU_PRE(y, d, x, n)                                                          \
    _Generic((y), float *: tgi_vgelu_f32, double *: tgi_vgelu_f64)(y, d, x, n)

tg_tensor *tgi_linear_gelu(tg_ctx *ctx, const char *fn, tg_tensor *x, tg_tensor *w, tg_tensor *b)
{
    if (!ctx) return NULL;
    if (!tgi_check_xwb(ctx, fn, x, w, b)) return NULL;
    if (!b || x->ndim != 2 || w->ndim != 2 || b->ndim != 1 || x->shape[1] != w->shape[1] ||
        b->shape[0] != w->shape[0]) {
        char sx[64], sw[64], sb[64];
        tg_set_error(ctx, "%s: need x [m,in], w [out,in] and b [out]: x is %s, w is %s, b is %s",
                     fn, TGI_SHAPE(x, sx), TGI_SHAPE(w, sw), b ? TGI_SHAPE(b, sb) : "NULL");
        return NULL;
    }
    const int64_t shape[2] = {x->shape[0], w->shape[0]};
    tg_tensor *out = tgi_tensor_new(ctx, fn, x->dtype, 2, shape, 0);
    if (!out) return NULL;
    tg_tensor *in[3] = {x, w, b};
    const tgi_attr at = {.i = {(int64_t)TG_ACT_NONE, 1}}; /* what linear_backward reads */
    return tgi_op_run(ctx, &op_linear_gelu, out, in, 3, &at, sizeof at);
}

typedef struct {
    tg_dtype dt;
    int64_t n;        /* row length */
    void *y, *d;      /* forward: y in place, d the derivative (or NULL) */
    const void *b;
} gelu_job;

/* y[lo:hi] = gelu(y + b), d = gelu' there, over the chunk's (partial) rows */
TGI_PAR_FN void linear_bias_gelu(void *arg, int64_t lo, int64_t hi)
{
    const gelu_job *j = arg;
    TGI_FLOAT_DISPATCH(j->dt, {
        T *y = j->y, *d = j->d;
        const T *bd = j->b;
        for (int64_t i = lo; i < hi;) {
            const int64_t j0 = i % j->n, len = j->n - j0 < hi - i ? j->n - j0 : hi - i;
            T *restrict yr = y + i;
            const T *restrict br = bd + j0;
            for (int64_t q = 0; q < len; q++) yr[q] += br[q];
            V_GELU_PRE(yr, d ? d + i : NULL, yr, len);
            i += len;
        }
    });
}

static int linear_gelu_forward(tg_op_call *c)
{
    const tg_tensor *x = c->in[0];
    void *d = NULL;
    if (c->out->numel > 0 && tgi_recorded(c)) {
        d = tg_scratch(c->ctx, tgi_bytes(c->out));
        if (!d) return -1;
    }
    c->saved = d;
    if (linear_fwd(c->ctx, c->out, x, c->in[1], NULL, TG_ACT_NONE, 1) != 0) return -1;
    KIT_PAR_RUN(c->ctx, c->out->numel, linear_bias_gelu,
                &(gelu_job){x->dtype, c->out->shape[1], c->out->data, d, c->in[2]->data});
    return 0;
}

/* g [m,n] *= d (dy becomes d_pre in place), and acc[j] = sum over rows i in order
 * of d_pre[i,j] (in double) when acc is not NULL: rows of whole vectors */
#define GELU_PRE_GRAD_FN(T, SUF)                                                       \
    TGI_AVX512_CLONES static void gelu_pre_grad_##SUF(T *g, const T *d, double *acc,   \
                                                      int64_t m, int64_t n)            \
    {                                                                                  \
        for (int64_t j = 0; acc && j < n; j++) acc[j] = 0;                             \
        for (int64_t i = 0; i < m; i++) {                                              \
            T *restrict gr = g + i * n;                                                \
            const T *restrict dr = d + i * n;                                          \
            for (int64_t j = 0; j < n; j++) gr[j] *= dr[j];                            \
            if (acc) {                                                                 \
                double *restrict ar = acc;                                             \
                for (int64_t j = 0; j < n; j++) ar[j] += (double)gr[j];                \
            }                                                                          \
        }                                                                              \
    }
GELU_PRE_GRAD_FN(float, f32)
GELU_PRE_GRAD_FN(double, f64)

/* d gelu(p)/dp = d (saved); then the linear node's gradients of d_pre. d_pre is
 * written over dy, y's gradient: only this node reads it, and a backward starts it
 * from zero again (as every non-leaf gradient), so no buffer is taken for d_pre
 * (tg_grad(y) shows d_pre afterwards; y is the block's own temporary). */
static void linear_gelu_backward(tg_op_call *c)
{
    tg_tensor *b = c->in[2];
    void *dpre = tg_grad(c->out);
    if (!dpre || c->out->numel == 0) return;
    const int64_t m = c->out->shape[0], n = c->out->shape[1];
    double *acc = tgi_needs_grad(b) ? tg_scratch(c->ctx, (size_t)n * sizeof(double)) : NULL;
    if (tgi_needs_grad(b) && !acc) return;
    void *db = acc ? tg_grad_acc(b) : NULL;
    if (acc && !db) return;
    if (c->out->dtype == TG_F32)
        gelu_pre_grad_f32(dpre, c->saved, acc, m, n);
    else
        gelu_pre_grad_f64(dpre, c->saved, acc, m, n);
    if (acc) bias_grad_add(c->out->dtype, db, acc, n);
    /* the linear node's backward without its bias, reading d_pre as its dy */
    tg_op_call lc = *c;
    lc.n_in = 2;
    linear_backward(&lc);
}

/* ======================================================================== */
/* batched tg_matmul                                                         */
/* ======================================================================== */

/* C = A B per batch entry, torch.matmul for operands of 2 or more dims, one
 * of them more than 2.  A is [...,m,k], B is [...,k,n]; the leading (batch)
 * dims are aligned from the right and broadcast (a missing dim or a dim of 1
 * stretches), C is [batch...,m,n]. For each entry e of C's batch, with ea
 * and eb the entries of A and B it reads:
 *   C_e = A_ea B_eb
 *   dA_ea += dC_e B_eb^T,   dB_eb += A_ea^T dC_e
 * summed over every e that reads ea (eb): a broadcast operand's gradient is
 * the sum over the entries it was stretched across, in the order of e, so
 * the bits are fixed. One GEMM call per entry and direction, transposes
 * read in place. Saves nothing: the inputs are what backward reads.
 * 2-D x 2-D never comes here (op "matmul" above, unchanged). */
typedef struct {
    int nb;                    /* batch dims of C */
    int64_t shape[TG_MAX_DIMS]; /* C's batch sizes */
    int64_t sa[TG_MAX_DIMS];   /* matrix stride of A per batch dim, 0 where broadcast */
    int64_t sb[TG_MAX_DIMS];
    int64_t count;             /* entries in C's batch */
    int64_t m, k, n;
} bmm_plan;

/* The plan for a x b; 0, or -1 with the error recorded. */
static int bmm_plan_make(tg_ctx *ctx, const tg_tensor *a, const tg_tensor *b, bmm_plan *p)
{
    static const char fn[] = "tg_matmul";
    char sa[64], sb[64];
    if (a->ndim < 2 || b->ndim < 2) {
        tg_set_error(ctx, "%s: batched operands must both have at least 2 dims ([...,m,k] and "
                          "[...,k,n]): a is %s, b is %s", fn, TGI_SHAPE(a, sa), TGI_SHAPE(b, sb));
        return -1;
    }
    p->m = a->shape[a->ndim - 2];
    p->k = a->shape[a->ndim - 1];
    p->n = b->shape[b->ndim - 1];
    if (b->shape[b->ndim - 2] != p->k) {
        tg_set_error(ctx, "%s: inner dimensions differ: a is %s, b is %s", fn, TGI_SHAPE(a, sa),
                     TGI_SHAPE(b, sb));
        return -1;
    }
    const int na = a->ndim - 2, nbb = b->ndim - 2;
    p->nb = na > nbb ? na : nbb;
    int64_t stra = 1, strb = 1;
    p->count = 1;
    for (int i = p->nb - 1; i >= 0; i--) { /* right-aligned batch dims */
        const int ia = i - (p->nb - na), ib = i - (p->nb - nbb);
        const int64_t da = ia >= 0 ? a->shape[ia] : 1, db = ib >= 0 ? b->shape[ib] : 1;
        if (da != db && da != 1 && db != 1) {
            tg_set_error(ctx, "%s: batch dimensions cannot be broadcast: a is %s, b is %s", fn,
                         TGI_SHAPE(a, sa), TGI_SHAPE(b, sb));
            return -1;
        }
        p->shape[i] = da == 1 ? db : da;
        p->sa[i] = da == 1 ? 0 : stra;
        p->sb[i] = db == 1 ? 0 : strb;
        stra *= da;
        strb *= db;
        p->count *= p->shape[i];
    }
    return 0;
}

/* The matrices of A and B read by batch entry e of C. */
static void bmm_entry(const bmm_plan *p, int64_t e, int64_t *ea, int64_t *eb)
{
    *ea = *eb = 0;
    for (int i = p->nb - 1; i >= 0; i--) {
        const int64_t j = e % p->shape[i];
        e /= p->shape[i];
        *ea += j * p->sa[i];
        *eb += j * p->sb[i];
    }
}

TGI_OP(bmm);

static tg_tensor *bmm(tg_ctx *ctx, tg_tensor *a, tg_tensor *b)
{
    bmm_plan p;
    if (bmm_plan_make(ctx, a, b, &p) != 0) return NULL;
    int64_t shape[TG_MAX_DIMS];
    memcpy(shape, p.shape, sizeof(int64_t) * (size_t)p.nb);
    shape[p.nb] = p.m;
    shape[p.nb + 1] = p.n;
    tg_tensor *out = tgi_tensor_new(ctx, "tg_matmul", a->dtype, p.nb + 2, shape, 0);
    if (!out) return NULL;
    tg_tensor *in[2] = {a, b};
    return tgi_op_run(ctx, &op_bmm, out, in, 2, NULL, 0);
}

/* C_e[m,n] = A_ea[m,k] B_eb[k,n] for every batch entry e (the plan is made
 * again: it cannot fail, it succeeded in the public function) */
static int bmm_forward(tg_op_call *c)
{
    tg_ctx *ctx = c->ctx;
    const tg_tensor *a = c->in[0], *b = c->in[1];
    tg_tensor *out = c->out;
    bmm_plan p;
    if (bmm_plan_make(ctx, a, b, &p) != 0) return -1;
    const int64_t m = p.m, k = p.k, n = p.n;
    const size_t es = tgi_dtype_size(a->dtype);
    for (int64_t e = 0; e < p.count; e++) {
        int64_t ea, eb;
        bmm_entry(&p, e, &ea, &eb);
        if (tgi_op_gemm(ctx, "tg_matmul", a->dtype, 0, 0, m, n, k,
                        (const char *)a->data + ea * m * k * es, k,
                        (const char *)b->data + eb * k * n * es, n, 0,
                        (char *)out->data + e * m * n * es, n) != 0)
            return -1;
    }
    return 0;
}

/* d(A_ea B_eb)/dA_ea: dA_ea += dC_e B_eb^T;  d(A_ea B_eb)/dB_eb: dB_eb += A_ea^T dC_e */
static void bmm_backward(tg_op_call *c)
{
    tg_ctx *ctx = c->ctx;
    tg_tensor *a = c->in[0], *b = c->in[1];
    const char *dc = tg_grad(c->out);
    if (!dc) return;
    bmm_plan p;
    if (bmm_plan_make(ctx, a, b, &p) != 0) return;
    const int64_t m = p.m, k = p.k, n = p.n;
    const size_t es = tgi_dtype_size(a->dtype);
    char *da = tgi_needs_grad(a) ? tg_grad_acc(a) : NULL;
    char *db = tgi_needs_grad(b) ? tg_grad_acc(b) : NULL;
    for (int64_t e = 0; e < p.count; e++) {
        int64_t ea, eb;
        bmm_entry(&p, e, &ea, &eb);
        const char *dce = dc + e * m * n * es;
        if (da && tgi_op_gemm(ctx, "tg_matmul", a->dtype, 0, 1, m, k, n, dce, n,
                              (const char *)b->data + eb * k * n * es, n, 1, da + ea * m * k * es,
                              k) != 0)
            return;
        if (db && tgi_op_gemm(ctx, "tg_matmul", a->dtype, 1, 0, k, n, m,
                              (const char *)a->data + ea * m * k * es, k, dce, n, 1,
                              db + eb * k * n * es, n) != 0)
            return;
    }
}
