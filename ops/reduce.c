/* SPDX-License-Identifier: MIT */
/* ops/reduce.c: reductions.
 *
 *   tg_sum        all elements -> 0-dim
 *   tg_mean       all elements -> 0-dim
 *   tg_sum_axis   one axis, removed or kept as size 1
 *   tg_mean_axis  one axis, removed or kept as size 1
 *   tg_max_axis   one axis, removed or kept as size 1; gradient to the first maximum
 *
 * Every op reads top to bottom: public function (checks, output, record,
 * forward), forward kernel, backward kernel. Sums accumulate in double for
 * both dtypes, so an f32 sum of many elements keeps f32 accuracy. Local
 * gradients and numerical notes: docs/ops.md.
 *
 * Threads: the sums run in one thread, in order (their bits would otherwise
 * depend on how the elements were split); the backward broadcasts of tg_sum
 * and tg_mean are elementwise and split over threads for large x.
 */
#include "ops.h"

/* Sum of n elements of x, accumulated in double (x is float or double). */
#define SUM_DOUBLE(x, n, result)                                                       \
    do {                                                                               \
        const T *restrict px_ = (x);                                                   \
        double acc_ = 0;                                                               \
        for (int64_t i_ = 0; i_ < (n); i_++)                                           \
            acc_ += (double)px_[i_];                                                   \
        (result) = acc_;                                                               \
    } while (0)

/* The public function of a reduction of every element: checks x, a 0-dim
 * output, record and forward. */
static tg_tensor *reduce_all(tg_ctx *ctx, const char *fn, const tg_op *op, tg_tensor *x)
{
    if (!ctx || !tgi_check_float_arg(ctx, fn, "x", x, NULL))
        return NULL;
    tg_tensor *out = tgi_tensor_new(ctx, fn, x->dtype, 0, NULL, 0);
    if (!out)
        return NULL;
    return tgi_op_run(ctx, op, out, &x, 1, NULL, 0);
}

/* y = (sum_i x_i) / div, the sum in double, rounded once: div 1 for a sum,
 * numel for a mean. */
static int scalar_sum(tg_op_call *c, double div)
{
    TGI_FLOAT_DISPATCH(c->out->dtype, {
        double s;
        SUM_DOUBLE((const T *)c->in[0]->data, c->in[0]->numel, s);
        ((T *)c->out->data)[0] = (T)(s / div);
    });
    return 0;
}

/* dx[lo:hi] += g (all of x's gradient elements get the scalar's) */
typedef struct {
    tg_dtype dt;
    void *dx;
    double g; /* rounded to T once, as the loop always did */
} scalar_grad_job;
TGI_PAR_FN void scalar_grad_range(void *arg, int64_t lo, int64_t hi)
{
    const scalar_grad_job *j = arg;
    TGI_FLOAT_DISPATCH(j->dt, {
        T *restrict dx = (T *)j->dx;
        const T g = (T)j->g;
        for (int64_t i = lo; i < hi; i++)
            dx[i] += g;
    });
}

/* dx_i += dy / div for every element of x (the 0-dim gradient broadcast
 * back): div 1 for a sum, numel for a mean. */
static void scalar_grad_back(tg_op_call *c, double div)
{
    tg_tensor *x = c->in[0];
    if (!tgi_needs_grad(x))
        return;
    TGI_FLOAT_DISPATCH(x->dtype, {
        T *restrict dx = (T *)tg_grad_acc(x);
        const T *dy = (const T *)tg_grad(c->out);
        if (!dx || !dy)
            return;
        scalar_grad_job j = {x->dtype, dx, (double)dy[0] / div};
        TGI_PAR_RUN(c->ctx, x->numel, scalar_grad_range, &j);
    });
}

/* The public function of a reduction over one axis: checks x and the axis
 * (negative counts from the end; outside [-ndim, ndim) is an error naming it
 * and x's shape, a 0-dim x has no axis), the output without the axis (or
 * with it as size 1), record and forward; the normalised axis is attribute
 * i[0]. */
static tg_tensor *reduce_axis(tg_ctx *ctx, const char *fn, const tg_op *op, tg_tensor *x,
                              int axis, int keepdim)
{
    if (!ctx || !tgi_check_float_arg(ctx, fn, "x", x, NULL))
        return NULL;
    if (axis < -x->ndim || axis >= x->ndim) {
        char buf[96];
        tg_set_error(ctx, "%s: axis %d out of range for x of shape %s (%d dims)", fn, axis,
                     TGI_SHAPE(x, buf), x->ndim);
        return NULL;
    }
    const tgi_attr at = {.i = {axis < 0 ? axis + x->ndim : axis}};
    int64_t shape[TG_MAX_DIMS];
    int nd = 0;
    for (int k = 0; k < x->ndim; k++) {
        if (k != at.i[0])
            shape[nd++] = x->shape[k];
        else if (keepdim)
            shape[nd++] = 1;
    }
    tg_tensor *out = tgi_tensor_new(ctx, fn, x->dtype, nd, shape, 0);
    if (!out)
        return NULL;
    return tgi_op_run(ctx, op, out, &x, 1, &at, sizeof at);
}

/* x as [outer, n, inner] around the call's axis (attribute i[0]) */
static void axis_split(const tg_op_call *c, int64_t *outer, int64_t *n, int64_t *inner)
{
    const tg_tensor *x = c->in[0];
    const int ax = (int)TGI_ATTR(c)->i[0];
    *outer = 1;
    *inner = 1;
    for (int k = 0; k < ax; k++)
        *outer *= x->shape[k];
    for (int k = ax + 1; k < x->ndim; k++)
        *inner *= x->shape[k];
    *n = x->shape[ax];
}

/* ======================================================================== */
/* tg_sum                                                                   */
/* ======================================================================== */

/* y = sum_i x_i: x any shape -> y 0-dim. dx_i = dy (the scalar broadcast
 * back). Saves nothing. Accumulates in double (f32 too), then rounds once.
 * An empty x sums to 0. */
TGI_OP(sum);

tg_tensor *tg_sum(tg_ctx *ctx, tg_tensor *x)
{
    return reduce_all(ctx, "tg_sum", &op_sum, x);
}

static int sum_forward(tg_op_call *c) { return scalar_sum(c, 1.0); }

/* d sum(x)/dx_i = 1 */
static void sum_backward(tg_op_call *c)
{
    scalar_grad_back(c, 1.0);
}

/* ======================================================================== */
/* tg_mean                                                                  */
/* ======================================================================== */

/* y = (1/n) sum_i x_i: x any shape (n = numel) -> y 0-dim. dx_i = dy / n.
 * Saves nothing. Accumulates in double, divides in double, rounds once. An
 * empty x gives 0/0 = NaN (as NumPy), and no gradient entries. */
TGI_OP(mean);

tg_tensor *tg_mean(tg_ctx *ctx, tg_tensor *x)
{
    return reduce_all(ctx, "tg_mean", &op_mean, x);
}

static int mean_forward(tg_op_call *c) { return scalar_sum(c, (double)c->in[0]->numel); }

/* d mean(x)/dx_i = 1/n */
static void mean_backward(tg_op_call *c)
{
    scalar_grad_back(c, (double)c->in[0]->numel);
}

/* ======================================================================== */
/* tg_sum_axis                                                              */
/* ======================================================================== */

/* y = sum over axis k of x. x [d0..k..dn] -> y [d0..dn] without axis k, or
 * [d0..1..dn] with keepdim (same data either way). Seen as x [outer, n,
 * inner] -> y [outer, inner]: y[o,i] = sum_j x[o,j,i]; dx[o,j,i] = dy[o,i]
 * (dy broadcast back along the axis). Saves the normalised axis (node
 * attribute i[0]). Negative axes count from the end; an axis outside
 * [-ndim, ndim) is an error naming the axis and x's shape (a 0-dim x has
 * no axis). Accumulates in double: a tile of up to SUM_TILE columns of the
 * inner extent at a time, so the loops over inner stay contiguous. */
#define SUM_TILE 256

TGI_OP(sum_axis);

tg_tensor *tg_sum_axis(tg_ctx *ctx, tg_tensor *x, int axis, int keepdim)
{
    return reduce_axis(ctx, "tg_sum_axis", &op_sum_axis, x, axis, keepdim);
}

/* the length of the call's axis, as a divisor */
static double axis_len(const tg_op_call *c) { return (double)c->in[0]->shape[TGI_ATTR(c)->i[0]]; }

/* y[o,i] = sum_j x[o,j,i] / div, the sum in double (div 1: the plain sum) */
static int axis_sum(tg_op_call *c, double div)
{
    int64_t outer, n, inner;
    axis_split(c, &outer, &n, &inner);
    TGI_FLOAT_DISPATCH(c->out->dtype, {
        const T *restrict px = (const T *)c->in[0]->data;
        T *restrict py = (T *)c->out->data;
        if (inner == 1) { /* the last axis (or all later axes of size 1) */
            for (int64_t o = 0; o < outer; o++) {
                double s;
                SUM_DOUBLE(px + o * n, n, s);
                py[o] = (T)(s / div);
            }
        } else {
            double acc[SUM_TILE];
            for (int64_t o = 0; o < outer; o++) {
                for (int64_t i0 = 0; i0 < inner; i0 += SUM_TILE) {
                    const int64_t w = inner - i0 < SUM_TILE ? inner - i0 : SUM_TILE;
                    for (int64_t i = 0; i < w; i++)
                        acc[i] = 0;
                    for (int64_t j = 0; j < n; j++) {
                        const T *restrict xr = px + (o * n + j) * inner + i0;
                        for (int64_t i = 0; i < w; i++)
                            acc[i] += (double)xr[i];
                    }
                    T *restrict yr = py + o * inner + i0;
                    for (int64_t i = 0; i < w; i++)
                        yr[i] = (T)(acc[i] / div);
                }
            }
        }
    });
    return 0;
}

/* The backward of an axis reduction: when x needs a gradient, BODY runs
 * inside TGI_FLOAT_DISPATCH with dx and dy (x's and y's gradients) and the
 * call's x as [outer, n, inner]. */
#define AXIS_BACKWARD(c, ...)                                                          \
    do {                                                                               \
        if (!tgi_needs_grad((c)->in[0]))                                               \
            break;                                                                     \
        int64_t outer, n, inner;                                                       \
        axis_split((c), &outer, &n, &inner);                                           \
        TGI_FLOAT_DISPATCH((c)->in[0]->dtype, {                                        \
            T *restrict dx = (T *)tg_grad_acc((c)->in[0]);                             \
            const T *restrict dy = (const T *)tg_grad((c)->out);                       \
            if (dx && dy) {                                                            \
                __VA_ARGS__                                                            \
            }                                                                          \
        });                                                                            \
    } while (0)

/* dx[o,j,i] += dy[o,i] / div for every j (div 1 for the sum: dy itself) */
static void axis_sum_back(tg_op_call *c, double div)
{
    AXIS_BACKWARD(c, {
        for (int64_t o = 0; o < outer; o++)
            for (int64_t j = 0; j < n; j++) {
                T *restrict dr = dx + (o * n + j) * inner;
                const T *restrict gr = dy + o * inner;
                if (div == 1.0)
                    for (int64_t i = 0; i < inner; i++)
                        dr[i] += gr[i];
                else
                    for (int64_t i = 0; i < inner; i++)
                        dr[i] += (T)((double)gr[i] / div);
            }
    });
}

static int sum_axis_forward(tg_op_call *c) { return axis_sum(c, 1.0); }

/* d y[o,i]/d x[o,j,i] = 1 */
static void sum_axis_backward(tg_op_call *c)
{
    axis_sum_back(c, 1.0);
}

/* ======================================================================== */
/* tg_mean_axis                                                             */
/* ======================================================================== */

/* y = mean over axis k of x (x.mean(k, keepdim)): shapes and axis rules as
 * tg_sum_axis. y[o,i] = (sum_j x[o,j,i]) / n; dx[o,j,i] = dy[o,i] / n. Saves
 * the normalised axis (attribute i[0]). The sum in double, divided in
 * double, rounded once; an empty axis (n = 0) gives 0/0 = NaN as PyTorch. */
TGI_OP(mean_axis);

tg_tensor *tg_mean_axis(tg_ctx *ctx, tg_tensor *x, int axis, int keepdim)
{
    return reduce_axis(ctx, "tg_mean_axis", &op_mean_axis, x, axis, keepdim);
}

static int mean_axis_forward(tg_op_call *c) { return axis_sum(c, axis_len(c)); }

/* d y[o,i]/d x[o,j,i] = 1/n */
static void mean_axis_backward(tg_op_call *c)
{
    axis_sum_back(c, axis_len(c));
}

/* ======================================================================== */
/* tg_max_axis                                                              */
/* ======================================================================== */

/* y = the values of x.max(k, keepdim): shapes and axis rules as tg_sum_axis.
 * y[o,i] = max_j x[o,j,i]; dx[o,j*,i] += dy[o,i] at j* the FIRST index of
 * the maximum (PyTorch's choice among ties), nothing elsewhere. A NaN is the
 * maximum (the first NaN), as in PyTorch. Saves j* per output element
 * (int64, tg_scratch, call->saved) when recorded. An empty axis is an error
 * ("cannot take the maximum of an empty axis"), as in PyTorch. */
TGI_OP(max_axis);

tg_tensor *tg_max_axis(tg_ctx *ctx, tg_tensor *x, int axis, int keepdim)
{
    if (ctx && tgi_check_float_arg(ctx, "tg_max_axis", "x", x, NULL) && axis >= -x->ndim &&
        axis < x->ndim && x->shape[axis < 0 ? axis + x->ndim : axis] == 0) {
        char buf[96];
        tg_set_error(ctx, "tg_max_axis: cannot take the maximum of an empty axis: axis %d of x %s",
                     axis, TGI_SHAPE(x, buf));
        return NULL;
    }
    return reduce_axis(ctx, "tg_max_axis", &op_max_axis, x, axis, keepdim);
}

static int max_axis_forward(tg_op_call *c)
{
    int64_t outer, n, inner;
    axis_split(c, &outer, &n, &inner);
    int64_t *arg = NULL;
    if (tgi_recorded(c)) {
        arg = tg_scratch(c->ctx, (size_t)(outer * inner) * sizeof *arg);
        if (!arg && outer * inner > 0)
            return -1;
        c->saved = arg;
    }
    TGI_FLOAT_DISPATCH(c->out->dtype, {
        const T *restrict px = (const T *)c->in[0]->data;
        T *restrict py = (T *)c->out->data;
        for (int64_t o = 0; o < outer; o++)
            for (int64_t i = 0; i < inner; i++) {
                const T *xr = px + o * n * inner + i;
                T m = xr[0];
                int64_t jm = 0;
                for (int64_t j = 1; j < n && m == m; j++) { /* stop at a NaN */
                    const T v = xr[j * inner];
                    if (v > m || v != v) {
                        m = v;
                        jm = j;
                    }
                }
                py[o * inner + i] = m;
                if (arg)
                    arg[o * inner + i] = jm;
            }
    });
    return 0;
}

/* d y[o,i]/d x[o,j,i] = [j == j*] */
static void max_axis_backward(tg_op_call *c)
{
    const int64_t *arg = c->saved;
    if (!arg)
        return;
    AXIS_BACKWARD(c, {
        for (int64_t o = 0; o < outer; o++)
            for (int64_t i = 0; i < inner; i++)
                dx[(o * n + arg[o * inner + i]) * inner + i] += dy[o * inner + i];
    });
}
