/* activations.c: elementwise activations and the softmax family.
 *
 * Every op here reads top to bottom: the public function (argument checks,
 * output, tape record, forward), the forward kernel, then the backward kernel
 * with its derivative in one comment line. Kernels are written once for float
 * and double with TGI_FLOAT_DISPATCH and <tgmath.h>; sums are accumulated in
 * double. Backward always adds into tg_grad_acc(in[i]), one `if` per input.
 * Local gradients in full: docs/ops-activations.md. */
#include "internal.h"
#include "vmath.h"

#include <math.h>
#include <tgmath.h>

/* ---- vector kernels and threads ------------------------------------------
 * The elementwise kernels call src/kernels/vmath.h's vector functions, picked for the
 * element type T of TGI_FLOAT_DISPATCH by the type of their first pointer. */
#define V_EXP(y, x, n) _Generic((y), float *: tgi_vexp_f32, double *: tgi_vexp_f64)(y, x, n)
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


/* The gradient arriving at a node's output (NULL if none reached it). */
static const void *out_grad(const tg_op_call *c) { return c->out->grad; }

/* Record the node when a gradient is needed. Returns 0 when the tape could
 * not grow (error recorded), else 1; *node is the node or NULL. */
static int record(tg_ctx *ctx, const tg_op *op, tg_tensor *out, tg_tensor *const *in, int n,
                  tg_op_call **node)
{
    *node = tgi_record(ctx, op, out, in, n);
    return *node != NULL || !tgi_should_record(ctx, in, n);
}

/* Common body of the one-input ops: checks x (non-NULL, this ctx, floating),
 * makes an output of x's shape, records the node (storing attr in it), runs
 * forward. NULL on error. */
static tg_tensor *unary_op(tg_ctx *ctx, const char *fn, const tg_op *op, tg_tensor *x,
                           const tgi_attr *attr,
                           void (*forward)(tg_tensor *, const tg_tensor *, const tgi_attr *))
{
    if (!ctx) return NULL;
    if (!tgi_check_arg(ctx, fn, "x", x) || !tgi_check_float(ctx, fn, "x", x)) return NULL;
    tg_tensor *out = tgi_tensor_new(ctx, fn, x->dtype, x->ndim, x->shape, 0);
    if (!out) return NULL;
    tg_op_call *c;
    if (!record(ctx, op, out, &x, 1, &c)) return NULL;
    if (c && attr) *tgi_node_attr(c) = *attr;
    forward(out, x, attr);
    return out;
}

/* Elements of a row converted to double per call of tgi_vexp_f64. */
#define EXP_BLOCK 256

/* The last axis of x as rows x cols; a 0-dim tensor is one row of length 1. */
static void last_axis(const tg_tensor *x, int64_t *rows, int64_t *cols)
{
    *cols = x->ndim > 0 ? x->shape[x->ndim - 1] : 1;
    *rows = *cols > 0 ? x->numel / *cols : 0;
}

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

static void sigmoid_forward(tg_tensor *y, const tg_tensor *x, const tgi_attr *at);
static void sigmoid_backward(tg_op_call *c);
static const tg_op op_sigmoid = {"sigmoid", NULL, sigmoid_backward};

tg_tensor *tg_sigmoid(tg_ctx *ctx, tg_tensor *x)
{
    return unary_op(ctx, "tg_sigmoid", &op_sigmoid, x, NULL, sigmoid_forward);
}

static void sigmoid_forward(tg_tensor *y, const tg_tensor *x, const tgi_attr *at)
{
    TGI_FLOAT_DISPATCH(x->dtype, {
        const T *px = x->data;
        T *py = y->data;
        TGI_PAR_CHUNKS(x->ctx, x->numel, lo, hi, { V_SIGMOID(py + lo, px + lo, hi - lo); });
    });
}

/* d sigmoid(x)/dx = y (1 - y) */
static void sigmoid_backward(tg_op_call *c)
{
    tg_tensor *x = c->in[0];
    if (tgi_needs_grad(x)) {
        TGI_FLOAT_DISPATCH(x->dtype, {
            const T *y = c->out->data, *dy = out_grad(c);
            T *dx = tg_grad_acc(x);
            if (dx && dy) /* dx += dy y (1 - y) */
                TGI_PAR_CHUNKS(c->ctx, x->numel, lo, hi,
                           { V_SIGMOID_BWD(dx + lo, y + lo, dy + lo, hi - lo); });
        });
    }
}

/* ======================================================================== */
/* tg_sigmoid_scaled                                                        */
/* x any shape; c, beta one element each (any ndim) -> y of x's shape.       */
/* s = sigmoid(beta x), y = c s.                                             */
/* dy/dx = c s (1 - s) beta; dy/dc = s; dy/dbeta = c s (1 - s) x. The c and  */
/* beta gradients are sums over every element of x, accumulated in double.  */
/* Saves: nothing; backward recomputes s from x and beta (c may be 0, so s   */
/* cannot be recovered from y). Numerical care: the overflow-free sigmoid.   */
/* ======================================================================== */

static void sigmoid_scaled_forward(tg_tensor *y, const tg_tensor *x, const tg_tensor *c,
                                   const tg_tensor *beta);
static void sigmoid_scaled_backward(tg_op_call *c);
static const tg_op op_sigmoid_scaled = {"sigmoid_scaled", NULL, sigmoid_scaled_backward};

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
    tg_op_call *node;
    if (!record(ctx, &op_sigmoid_scaled, out, in, 3, &node)) return NULL;
    sigmoid_scaled_forward(out, x, c, beta);
    return out;
}

static void sigmoid_scaled_forward(tg_tensor *y, const tg_tensor *x, const tg_tensor *c,
                                   const tg_tensor *beta)
{
    TGI_FLOAT_DISPATCH(x->dtype, {
        const T *px = x->data;
        const T cv = *(const T *)c->data, bv = *(const T *)beta->data;
        T *py = y->data;
        for (int64_t i = 0; i < x->numel; i++) {
            const T z = bv * px[i];
            py[i] = cv * SIGMOID_OF(z);
        }
    });
}

/* d y/dx = c s(1-s) beta;  d y/dc = s;  d y/dbeta = c s(1-s) x */
static void sigmoid_scaled_backward(tg_op_call *c)
{
    tg_tensor *x = c->in[0], *ct = c->in[1], *bt = c->in[2];
    TGI_FLOAT_DISPATCH(x->dtype, {
        const T *px = x->data, *dy = out_grad(c);
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

static void tanh_forward(tg_tensor *y, const tg_tensor *x, const tgi_attr *at);
static void tanh_backward(tg_op_call *c);
static const tg_op op_tanh = {"tanh", NULL, tanh_backward};

tg_tensor *tg_tanh(tg_ctx *ctx, tg_tensor *x)
{
    return unary_op(ctx, "tg_tanh", &op_tanh, x, NULL, tanh_forward);
}

static void tanh_forward(tg_tensor *y, const tg_tensor *x, const tgi_attr *at)
{
    TGI_FLOAT_DISPATCH(x->dtype, {
        const T *px = x->data;
        T *py = y->data;
        TGI_PAR_CHUNKS(x->ctx, x->numel, lo, hi, { V_TANH(py + lo, px + lo, hi - lo); });
    });
}

/* d tanh(x)/dx = 1 - y^2 */
static void tanh_backward(tg_op_call *c)
{
    tg_tensor *x = c->in[0];
    if (tgi_needs_grad(x)) {
        TGI_FLOAT_DISPATCH(x->dtype, {
            const T *y = c->out->data, *dy = out_grad(c);
            T *dx = tg_grad_acc(x);
            if (dx && dy) /* dx += dy (1 - y^2) */
                TGI_PAR_CHUNKS(c->ctx, x->numel, lo, hi,
                           { V_TANH_BWD(dx + lo, y + lo, dy + lo, hi - lo); });
        });
    }
}

/* ======================================================================== */
/* tg_relu                                                                  */
/* x any shape -> y same shape. y = max(x, 0); NaN passes through.           */
/* dy/dx = 1 for x > 0, else 0 (0 at the kink x = 0). Saves: nothing (reads  */
/* its input x).                                                             */
/* ======================================================================== */

static void relu_forward(tg_tensor *y, const tg_tensor *x, const tgi_attr *at);
static void relu_backward(tg_op_call *c);
static const tg_op op_relu = {"relu", NULL, relu_backward};

tg_tensor *tg_relu(tg_ctx *ctx, tg_tensor *x)
{
    return unary_op(ctx, "tg_relu", &op_relu, x, NULL, relu_forward);
}

static void relu_forward(tg_tensor *y, const tg_tensor *x, const tgi_attr *at)
{
    TGI_FLOAT_DISPATCH(x->dtype, {
        const T *px = x->data;
        T *py = y->data;
        /* x > 0 or NaN: x; else +0 */
        TGI_PAR_CHUNKS(x->ctx, x->numel, lo, hi, { V_RELU(py + lo, px + lo, hi - lo); });
    });
}

/* d relu(x)/dx = [x > 0] */
static void relu_backward(tg_op_call *c)
{
    tg_tensor *x = c->in[0];
    if (tgi_needs_grad(x)) {
        TGI_FLOAT_DISPATCH(x->dtype, {
            const T *px = x->data, *dy = out_grad(c);
            T *dx = tg_grad_acc(x);
            if (dx && dy) /* dx += dy where x > 0 */
                TGI_PAR_CHUNKS(c->ctx, x->numel, lo, hi,
                           { V_RELU_BWD(dx + lo, px + lo, dy + lo, hi - lo); });
        });
    }
}

/* ======================================================================== */
/* tg_leaky_relu                                                            */
/* x any shape, slope a double -> y same shape. y = x if x > 0 else slope x. */
/* dy/dx = 1 for x > 0, else slope (slope at x = 0). Saves: slope (node      */
/* attribute f[0]).                                                          */
/* ======================================================================== */

static void leaky_relu_forward(tg_tensor *y, const tg_tensor *x, const tgi_attr *at);
static void leaky_relu_backward(tg_op_call *c);
static const tg_op op_leaky_relu = {"leaky_relu", NULL, leaky_relu_backward};

tg_tensor *tg_leaky_relu(tg_ctx *ctx, tg_tensor *x, double slope)
{
    const tgi_attr at = {.f = {slope}};
    return unary_op(ctx, "tg_leaky_relu", &op_leaky_relu, x, &at, leaky_relu_forward);
}

static void leaky_relu_forward(tg_tensor *y, const tg_tensor *x, const tgi_attr *at)
{
    TGI_FLOAT_DISPATCH(x->dtype, {
        const T *px = x->data;
        const T a = (T)at->f[0];
        T *py = y->data;
        TGI_PAR_CHUNKS(x->ctx, x->numel, lo, hi, {
            for (int64_t i = lo; i < hi; i++) py[i] = px[i] > 0 ? px[i] : a * px[i];
        });
    });
}

/* d leaky_relu(x)/dx = 1 if x > 0 else slope */
static void leaky_relu_backward(tg_op_call *c)
{
    tg_tensor *x = c->in[0];
    if (tgi_needs_grad(x)) {
        TGI_FLOAT_DISPATCH(x->dtype, {
            const T *px = x->data, *dy = out_grad(c);
            const T a = (T)tgi_node_attr(c)->f[0];
            T *dx = tg_grad_acc(x);
            if (dx && dy)
                TGI_PAR_CHUNKS(c->ctx, x->numel, lo, hi, {
                    for (int64_t i = lo; i < hi; i++) dx[i] += px[i] > 0 ? dy[i] : a * dy[i];
                });
        });
    }
}

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

static void softmax_forward(tg_tensor *y, const tg_tensor *x, const tgi_attr *at);
static void softmax_backward(tg_op_call *c);
static const tg_op op_softmax = {"softmax", NULL, softmax_backward};

tg_tensor *tg_softmax(tg_ctx *ctx, tg_tensor *x)
{
    return unary_op(ctx, "tg_softmax", &op_softmax, x, NULL, softmax_forward);
}

static void softmax_forward(tg_tensor *y, const tg_tensor *x, const tgi_attr *at)
{
    int64_t rows, cols;
    last_axis(x, &rows, &cols);
    TGI_FLOAT_DISPATCH(x->dtype, {
        for (int64_t r = 0; r < rows; r++) {
            const T *xr = (const T *)x->data + r * cols;
            T *yr = (T *)y->data + r * cols;
            T m = xr[0];
            for (int64_t j = 1; j < cols; j++)
                if (xr[j] > m) m = xr[j];
            for (int64_t j = 0; j < cols; j++) yr[j] = xr[j] - m;
            V_EXP(yr, yr, cols);
            double sum = 0;
            for (int64_t j = 0; j < cols; j++) sum += (double)yr[j];
            const double inv = 1.0 / sum;
            for (int64_t j = 0; j < cols; j++) yr[j] = (T)((double)yr[j] * inv);
        }
    });
}

/* d softmax(x)/dx = diag(y) - y y^T  =>  dx = y (dy - <dy, y>) */
static void softmax_backward(tg_op_call *c)
{
    tg_tensor *x = c->in[0];
    if (tgi_needs_grad(x)) {
        int64_t rows, cols;
        last_axis(x, &rows, &cols);
        TGI_FLOAT_DISPATCH(x->dtype, {
            const T *y = c->out->data, *dy = out_grad(c);
            T *dx = tg_grad_acc(x);
            if (dx && dy)
                for (int64_t r = 0; r < rows; r++) {
                    const T *yr = y + r * cols, *dyr = dy + r * cols;
                    T *dxr = dx + r * cols;
                    double dot = 0;
                    for (int64_t j = 0; j < cols; j++) dot += (double)dyr[j] * (double)yr[j];
                    for (int64_t j = 0; j < cols; j++)
                        dxr[j] += (T)((double)yr[j] * ((double)dyr[j] - dot));
                }
        });
    }
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

static void log_softmax_forward(tg_tensor *y, const tg_tensor *x, const tgi_attr *at);
static void log_softmax_backward(tg_op_call *c);
static const tg_op op_log_softmax = {"log_softmax", NULL, log_softmax_backward};

tg_tensor *tg_log_softmax(tg_ctx *ctx, tg_tensor *x)
{
    return unary_op(ctx, "tg_log_softmax", &op_log_softmax, x, NULL, log_softmax_forward);
}

static void log_softmax_forward(tg_tensor *y, const tg_tensor *x, const tgi_attr *at)
{
    int64_t rows, cols;
    last_axis(x, &rows, &cols);
    TGI_FLOAT_DISPATCH(x->dtype, {
        for (int64_t r = 0; r < rows; r++) {
            const T *xr = (const T *)x->data + r * cols;
            T *yr = (T *)y->data + r * cols;
            T m = xr[0];
            for (int64_t j = 1; j < cols; j++)
                if (xr[j] > m) m = xr[j];
            for (int64_t j = 0; j < cols; j++) yr[j] = xr[j] - m; /* y as scratch: */
            V_EXP(yr, yr, cols);                                   /* e^(x - m) */
            double sum = 0;
            for (int64_t j = 0; j < cols; j++) sum += (double)yr[j];
            const double lse = log(sum);
            for (int64_t j = 0; j < cols; j++) yr[j] = (T)((double)(xr[j] - m) - lse);
        }
    });
}

/* d log_softmax(x)/dx = I - 1 softmax^T  =>  dx = dy - e^y sum(dy) */
static void log_softmax_backward(tg_op_call *c)
{
    tg_tensor *x = c->in[0];
    if (tgi_needs_grad(x)) {
        int64_t rows, cols;
        last_axis(x, &rows, &cols);
        TGI_FLOAT_DISPATCH(x->dtype, {
            const T *y = c->out->data, *dy = out_grad(c);
            T *dx = tg_grad_acc(x);
            if (dx && dy)
                for (int64_t r = 0; r < rows; r++) {
                    const T *yr = y + r * cols, *dyr = dy + r * cols;
                    T *dxr = dx + r * cols;
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
                }
        });
    }
}

/* ======================================================================== */
/* tg_activate: apply an activation by selector                             */
/* TG_ACT_NONE returns x itself (no node); TG_ACT_LEAKY_RELU uses slope      */
/* 0.01; any other value than the tg_act enumerators is an error.            */
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
    case TG_ACT_LEAKY_RELU: return tg_leaky_relu(ctx, x, 0.01);
    case TG_ACT_COUNT: break;
    }
    char b[96];
    tg_set_error(ctx, "tg_activate: invalid activation %d (expected 0..%d) for x %s", (int)act,
                 (int)TG_ACT_COUNT - 1, TGI_SHAPE(x, b));
    return NULL;
}
