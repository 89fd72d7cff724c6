/* SPDX-License-Identifier: MIT */
/* activations.c: elementwise activations and the softmax family.
 *
 * Every op here reads top to bottom: the public function (argument checks,
 * output, tape record, forward), the forward kernel, then the backward kernel
 * with its derivative in one comment line. Kernels are written once for float
 * and double with TGI_FLOAT_DISPATCH and <tgmath.h>; sums are accumulated in
 * double. Backward always adds into tg_grad_acc(in[i]), one `if` per input.
 * Local gradients in full: docs/ops.md. */
#include "ops.h"

/* Elements of a row converted to double per call of tgi_vexp_f64. */
#define EXP_BLOCK 256

/* The last axis of x as rows x cols; a 0-dim tensor is one row of length 1. */
static void last_axis(const tg_tensor *x, int64_t *rows, int64_t *cols)
{
    *cols = x->ndim > 0 ? x->shape[x->ndim - 1] : 1;
    *rows = *cols > 0 ? x->numel / *cols : 0;
}

/* The forward of a softmax-family call, inside which BODY runs for every
 * row with xr the row of x, m its maximum, yr the row of y holding e^(x - m)
 * (the vector exp), sum their sum in double, in order, cols the row length. */
#define ROWS_FORWARD(c, ...)                                                           \
    do {                                                                               \
        int64_t rows, cols;                                                            \
        last_axis((c)->in[0], &rows, &cols);                                           \
        TGI_FLOAT_DISPATCH((c)->out->dtype, {                                          \
            for (int64_t r = 0; r < rows; r++) {                                       \
                const T *xr = (const T *)(c)->in[0]->data + r * cols;                  \
                T *yr = (T *)(c)->out->data + r * cols, m = xr[0];                     \
                for (int64_t j = 1; j < cols; j++)                                     \
                    if (xr[j] > m) m = xr[j];                                          \
                for (int64_t j = 0; j < cols; j++) yr[j] = xr[j] - m;                  \
                V_EXP(yr, yr, cols);                                                   \
                double sum = 0;                                                        \
                for (int64_t j = 0; j < cols; j++) sum += (double)yr[j];               \
                (void)m;                                                               \
                __VA_ARGS__                                                            \
            }                                                                          \
        });                                                                            \
    } while (0)

/* The backward of a softmax-family call: when x needs a gradient, BODY runs
 * for every row with yr, dyr, dxr the rows of y, dy and dx (cols long),
 * inside TGI_FLOAT_DISPATCH. */
#define ROWS_BACKWARD(c, ...)                                                          \
    do {                                                                               \
        tg_tensor *x_ = (c)->in[0];                                                    \
        if (!tgi_needs_grad(x_))                                                       \
            break;                                                                     \
        int64_t rows, cols;                                                            \
        last_axis(x_, &rows, &cols);                                                   \
        TGI_FLOAT_DISPATCH(x_->dtype, {                                                \
            const T *y_ = (c)->out->data, *dy_ = tg_grad((c)->out);                    \
            T *dx_ = tg_grad_acc(x_);                                                  \
            if (dx_ && dy_)                                                            \
                for (int64_t r = 0; r < rows; r++) {                                   \
                    const T *yr = y_ + r * cols, *dyr = dy_ + r * cols;                \
                    T *dxr = dx_ + r * cols;                                           \
                    __VA_ARGS__                                                        \
                }                                                                      \
        });                                                                            \
    } while (0)

/* Overflow-free sigmoid of one value v of type T (tgmath picks exp's
 * precision): 1/(1+e^-v) for v >= 0, e^v/(1+e^v) otherwise. */
#define SIGMOID_OF(v) ((v) >= 0 ? 1 / (1 + exp(-(v))) : exp(v) / (1 + exp(v)))

/* ======================================================================== */
/* tg_sigmoid                                                               */
/* x any shape -> y same shape. y = 1 / (1 + e^-x).                          */
/* dy/dx = y (1 - y). Saves: its output (the node's out).                    */
/* Numerical care: 1/(1+e^-x) for x >= 0, e^x/(1+e^x) otherwise (the vector  */
/* kernel of src/kernels/vmath.h, <= 2 ulp), so no exp overflows; sigmoid(+1000) is  */
/* exactly 1 and sigmoid(-1000) exactly 0.                                   */
/* ======================================================================== */

TGI_VMATH_OP(sigmoid, V_SIGMOID);

/* d sigmoid(x)/dx = y (1 - y) */
UNARY_VMATH_BACKWARD_FN(sigmoid, V_SIGMOID_BWD, out)

/* ======================================================================== */
/* tg_sigmoid_scaled                                                        */
/* x any shape; c, beta one element each (any ndim) -> y of x's shape.       */
/* s = sigmoid(beta x), y = c s.                                             */
/* dy/dx = c s (1 - s) beta; dy/dc = s; dy/dbeta = c s (1 - s) x. The c and  */
/* beta gradients are sums over every element of x, accumulated in double.  */
/* Saves: nothing; backward recomputes s from x and beta (c may be 0, so s   */
/* cannot be recovered from y). Numerical care: the overflow-free sigmoid.   */
/* ======================================================================== */

TGI_OP(sigmoid_scaled);

tg_tensor *tg_sigmoid_scaled(tg_ctx *ctx, tg_tensor *x, tg_tensor *c, tg_tensor *beta)
{
    static const char fn[] = "tg_sigmoid_scaled";
    if (!ctx) return NULL;
    if (!tgi_check_arg(ctx, fn, "x", x) || !tgi_check_arg(ctx, fn, "c", c) ||
        !tgi_check_arg(ctx, fn, "beta", beta))
        return NULL;
    if (!tgi_check_float(ctx, fn, "x", x) || !tgi_check_float(ctx, fn, "c", c) ||
        !tgi_check_float(ctx, fn, "beta", beta) || !tgi_check_same_dtype(ctx, fn, x, c) ||
        !tgi_check_same_dtype(ctx, fn, x, beta))
        return NULL;
    if (c->numel != 1 || beta->numel != 1) {
        char bx[96], bc[96], bb[96];
        tg_set_error(ctx, "%s: c and beta must have one element each: x is %s, c is %s, beta is %s",
                     fn, TGI_SHAPE(x, bx), TGI_SHAPE(c, bc), TGI_SHAPE(beta, bb));
        return NULL;
    }
    tg_tensor *out = tgi_tensor_new(ctx, fn, x->dtype, x->ndim, x->shape, 0);
    if (!out) return NULL;
    tg_tensor *in[3] = {x, c, beta};
    return tgi_op_run(ctx, &op_sigmoid_scaled, out, in, 3, NULL, 0);
}

static int sigmoid_scaled_forward(tg_op_call *call)
{
    const tg_tensor *x = call->in[0], *c = call->in[1], *beta = call->in[2];
    tg_tensor *y = call->out;
    TGI_FLOAT_DISPATCH(x->dtype, {
        const T *px = x->data;
        const T cv = *(const T *)c->data, bv = *(const T *)beta->data;
        T *py = y->data;
        for (int64_t i = 0; i < x->numel; i++) {
            const T z = bv * px[i];
            py[i] = cv * SIGMOID_OF(z);
        }
    });
    return 0;
}

/* d y/dx = c s(1-s) beta;  d y/dc = s;  d y/dbeta = c s(1-s) x */
static void sigmoid_scaled_backward(tg_op_call *c)
{
    tg_tensor *x = c->in[0], *ct = c->in[1], *bt = c->in[2];
    TGI_FLOAT_DISPATCH(x->dtype, {
        const T *px = x->data, *dy = tg_grad(c->out);
        const T cv = *(const T *)ct->data, bv = *(const T *)bt->data;
        const int64_t n = x->numel;
        if (dy && tgi_needs_grad(x)) {
            T *dx = tg_grad_acc(x);
            if (dx)
                for (int64_t i = 0; i < n; i++) {
                    const T z = bv * px[i];
                    const T s = SIGMOID_OF(z);
                    dx[i] += dy[i] * cv * s * (1 - s) * bv;
                }
        }
        if (dy && tgi_needs_grad(ct)) {
            double acc = 0;
            for (int64_t i = 0; i < n; i++) {
                const T z = bv * px[i];
                acc += (double)dy[i] * (double)SIGMOID_OF(z);
            }
            T *dc = tg_grad_acc(ct);
            if (dc) dc[0] += (T)acc;
        }
        if (dy && tgi_needs_grad(bt)) {
            double acc = 0;
            for (int64_t i = 0; i < n; i++) {
                const T z = bv * px[i];
                const double s = (double)SIGMOID_OF(z);
                acc += (double)dy[i] * s * (1 - s) * (double)px[i];
            }
            T *db = tg_grad_acc(bt);
            if (db) db[0] += (T)((double)cv * acc);
        }
    });
}

/* ======================================================================== */
/* tg_tanh                                                                  */
/* x any shape -> y same shape. y = tanh(x). dy/dx = 1 - y^2.                */
/* Saves: its output. Numerical care: the vector tanh (src/kernels/vmath.h, <= 2     */
/* ulp) saturates to exactly +-1 without overflow.                           */
/* ======================================================================== */

TGI_VMATH_OP(tanh, V_TANH);

/* d tanh(x)/dx = 1 - y^2 */
UNARY_VMATH_BACKWARD_FN(tanh, V_TANH_BWD, out)

/* ======================================================================== */
/* tg_relu                                                                  */
/* x any shape -> y same shape. y = max(x, 0); NaN passes through.           */
/* dy/dx = 1 for x > 0, else 0 (0 at the kink x = 0). Saves: nothing (reads  */
/* its input x).                                                             */
/* ======================================================================== */

TGI_VMATH_OP(relu, V_RELU);

/* d relu(x)/dx = [x > 0] */
UNARY_VMATH_BACKWARD_FN(relu, V_RELU_BWD, in[0])

/* ======================================================================== */
/* tg_leaky_relu                                                            */
/* x any shape, slope a double -> y same shape. y = x if x > 0 else slope x. */
/* dy/dx = 1 for x > 0, else slope (slope at x = 0). Saves: slope (node      */
/* attribute f[0]).                                                          */
/* ======================================================================== */

TGI_OP(leaky_relu);

tg_tensor *tg_leaky_relu(tg_ctx *ctx, tg_tensor *x, double slope)
{
    const tgi_attr at = {.f = {slope}};
    return tgi_unary(ctx, "tg_leaky_relu", &op_leaky_relu, x, &at);
}

/* forward; a0 = slope */
UNARY_FORWARD_FN(leaky_relu, u > 0 ? u : a0 * u)

/* d leaky_relu(x)/dx = 1 if x > 0 else slope */
UNARY_BACKWARD_FN(leaky_relu, u > 0 ? g : a0 * g)

/* ======================================================================== */
/* tg_gelu                                                                  */
/* x any shape -> y same shape. y = x Phi(x) = x (1 + erf(x / sqrt 2)) / 2,  */
/* the erf form (F.gelu, approximate='none').                                */
/* dy/dx = Phi(x) + x phi(x), phi(x) = e^(-x^2/2) / sqrt(2 pi). Saves: that  */
/* derivative (tg_scratch, one element per element of x), computed by the    */
/* forward kernel along with y when the call is recorded. Numerical care:    */
/* the vector kernel of src/kernels/vmath.h; f32 evaluates Phi(-|x|) through */
/* e^(-x^2/2) and a bounded polynomial (no 1 + erf cancellation in the tail, */
/* no overflow), f64 is libm's erf and exp in PyTorch's arrangement.         */
/* ======================================================================== */

#define V_GELU(y, d, x, n)                                                             \
    _Generic((y), float *: tgi_vgelu_f32, double *: tgi_vgelu_f64)(y, d, x, n)

TGI_UNARY_OP(gelu);

static int gelu_forward(tg_op_call *c)
{
    const int64_t n = c->out->numel;
    void *d = NULL;
    if (n > 0 && tgi_recorded(c)) {
        d = tg_scratch(c->ctx, (size_t)n * tg_dtype_size(c->out->dtype));
        if (!d) return -1;
    }
    c->saved = d;
    TGI_FLOAT_DISPATCH(c->out->dtype, {
        T *py = (T *)c->out->data, *pd = d;
        const T *px = (const T *)c->in[0]->data;
        TGI_PAR_CHUNKS(c->ctx, n, lo, hi,
                       { V_GELU(py + lo, pd ? pd + lo : NULL, px + lo, hi - lo); });
    });
    return 0;
}

/* d gelu(x)/dx = Phi(x) + x phi(x), saved by forward */
static void gelu_backward(tg_op_call *c)
{
    if (!tgi_needs_grad(c->in[0]))
        return;
    int fresh; /* a new gradient buffer: assign instead of adding */
    TGI_FLOAT_DISPATCH(c->out->dtype, {
        const T *restrict pd = c->saved, *restrict dy = tg_grad(c->out);
        T *restrict dx = tgi_grad_first(c->in[0], &fresh);
        if (dx && dy && pd)
            TGI_PAR_CHUNKS(c->ctx, c->out->numel, lo, hi, {
                if (fresh)
                    for (int64_t i = lo; i < hi; i++) dx[i] = dy[i] * pd[i];
                else
                    for (int64_t i = lo; i < hi; i++) dx[i] += dy[i] * pd[i];
            });
    });
}

/* ======================================================================== */
/* tg_softplus                                                              */
/* ======================================================================== */

/* y = log(1 + e^x), x's shape (F.softplus with beta 1 and threshold 20: y = x
 * for x > 20, as PyTorch). dx = dy sigmoid(x) = dy e^x / (e^x + 1), dy where
 * x > 20. Saves nothing (reads x). log1p keeps y exact to rounding where e^x
 * is small; e^x overflows only past the threshold, where it is not used. */
TGI_UNARY_OP(softplus);

UNARY_FORWARD_FN(softplus, u > 20 ? u : log1p(exp(u)))

/* d log(1 + e^x)/dx = e^x / (e^x + 1) */
UNARY_BACKWARD_FN(softplus, u > 20 ? g : g * exp(u) / (exp(u) + 1))

/* ======================================================================== */
/* tg_softmax (last axis)                                                   */
/* x [..., C] -> y [..., C]; a 0-dim x is one row of length 1, so y = 1.     */
/* y_j = e^(x_j - m) / sum_k e^(x_k - m), m the row maximum.                 */
/* dx = y * (dy - sum_k dy_k y_k) per row (the Jacobian diag(y) - y y^T      */
/* applied to dy). Saves: its output. Numerical care: the row maximum is     */
/* subtracted, so no exp overflows (softmax([1000, 0]) = [1, 0]); the row's  */
/* e^(x - m) come from the vector exp (src/kernels/vmath.h, <= 1 ulp) and are summed */
/* in double, in order.                                                      */
/* ======================================================================== */

TGI_UNARY_OP(softmax);

static int softmax_forward(tg_op_call *c)
{
    ROWS_FORWARD(c, {
        const double inv = 1.0 / sum;
        for (int64_t j = 0; j < cols; j++) yr[j] = (T)((double)yr[j] * inv);
    });
    return 0;
}

/* d softmax(x)/dx = diag(y) - y y^T  =>  dx = y (dy - <dy, y>) */
static void softmax_backward(tg_op_call *c)
{
    ROWS_BACKWARD(c, {
        double dot = 0;
        for (int64_t j = 0; j < cols; j++) dot += (double)dyr[j] * (double)yr[j];
        for (int64_t j = 0; j < cols; j++)
            dxr[j] += (T)((double)yr[j] * ((double)dyr[j] - dot));
    });
}

/* ======================================================================== */
/* tg_log_softmax (last axis)                                               */
/* x [..., C] -> y [..., C]; a 0-dim x gives y = 0.                          */
/* y_j = x_j - m - log(sum_k e^(x_k - m)), m the row maximum.                */
/* dx = dy - softmax(x) * sum_k dy_k per row, softmax recomputed as e^y.     */
/* Saves: its output. Numerical care: never takes the log of a softmax, so   */
/* very negative log-probabilities stay finite and exact                     */
/* (log_softmax([1000, -1000]) = [0, -2000]); row sums in double, in order,  */
/* of the vector exp's e^(x - m); backward's e^y by tgi_vexp_f64.            */
/* ======================================================================== */

TGI_UNARY_OP(log_softmax);

static int log_softmax_forward(tg_op_call *c)
{
    ROWS_FORWARD(c, { /* y held e^(x - m) */
        const double lse = log(sum);
        for (int64_t j = 0; j < cols; j++) yr[j] = (T)((double)(xr[j] - m) - lse);
    });
    return 0;
}

/* d log_softmax(x)/dx = I - 1 softmax^T  =>  dx = dy - e^y sum(dy) */
static void log_softmax_backward(tg_op_call *c)
{
    ROWS_BACKWARD(c, {
        double sdy = 0;
        for (int64_t j = 0; j < cols; j++) sdy += (double)dyr[j];
        double e[EXP_BLOCK]; /* e^y in double, a block at a time */
        for (int64_t j0 = 0; j0 < cols; j0 += EXP_BLOCK) {
            const int64_t nb = cols - j0 < EXP_BLOCK ? cols - j0 : EXP_BLOCK;
            for (int64_t j = 0; j < nb; j++) e[j] = (double)yr[j0 + j];
            tgi_vexp_f64(e, e, nb);
            for (int64_t j = 0; j < nb; j++)
                dxr[j0 + j] += (T)((double)dyr[j0 + j] - e[j] * sdy);
        }
    });
}

/* ======================================================================== */
/* tg_activate: apply an activation by selector                             */
/* TG_ACT_NONE returns x itself (no node); TG_ACT_LEAKY_RELU uses slope      */
/* TGI_LEAKY_SLOPE (0.01); any other value than the tg_act enumerators is an */
/* error.                                                                    */
/* ======================================================================== */

tg_tensor *tg_activate(tg_ctx *ctx, tg_tensor *x, tg_act act)
{
    if (!ctx) return NULL;
    if (!tgi_check_arg(ctx, "tg_activate", "x", x)) return NULL;
    switch (act) {
    case TG_ACT_NONE: return x;
    case TG_ACT_RELU: return tg_relu(ctx, x);
    case TG_ACT_TANH: return tg_tanh(ctx, x);
    case TG_ACT_SIGMOID: return tg_sigmoid(ctx, x);
    case TG_ACT_LEAKY_RELU: return tg_leaky_relu(ctx, x, TGI_LEAKY_SLOPE);
    case TG_ACT_COUNT: break;
    }
    char b[96];
    tg_set_error(ctx, "tg_activate: invalid activation %d (expected 0..%d) for x %s", (int)act,
                 (int)TG_ACT_COUNT - 1, TGI_SHAPE(x, b));
    return NULL;
}
