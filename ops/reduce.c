/* ops/reduce.c: reductions.
 *
 *   tg_sum       all elements -> 0-dim
 *   tg_mean      all elements -> 0-dim
 *   tg_sum_axis  one axis, removed or kept as size 1
 *
 * Every op reads top to bottom: public function (checks, output, record,
 * forward), forward kernel, backward kernel. Sums accumulate in double for
 * both dtypes, so an f32 sum of many elements keeps f32 accuracy. Local
 * gradients and numerical notes: docs/ops-elementwise.md.
 *
 * Threads: the sums run in one thread, in order (their bits would otherwise
 * depend on how the elements were split); the backward broadcasts of tg_sum
 * and tg_mean are elementwise and split over threads for large x.
 */
#include "internal.h"


/* Record the node (when a gradient is needed). Returns 0 when the tape could
 * not grow (error recorded), else 1; *node is the node or NULL. */
static int record(tg_ctx *ctx, const tg_op *op, tg_tensor *out, tg_tensor *const *in, int n,
                  tg_op_call **node)
{
    *node = tgi_record(ctx, op, out, in, n);
    return *node != NULL || !tgi_should_record(ctx, in, n);
}

/* Sum of n elements of x, accumulated in double (x is float or double). */
#define SUM_DOUBLE(x, n, result)                                                       \
    do {                                                                               \
        const T *restrict px_ = (x);                                                   \
        double acc_ = 0;                                                               \
        for (int64_t i_ = 0; i_ < (n); i_++)                                           \
            acc_ += (double)px_[i_];                                                   \
        (result) = acc_;                                                               \
    } while (0)

/* ======================================================================== */
/* tg_sum                                                                   */
/* ======================================================================== */

/* y = sum_i x_i: x any shape -> y 0-dim. dx_i = dy (the scalar broadcast
 * back). Saves nothing. Accumulates in double (f32 too), then rounds once.
 * An empty x sums to 0. */
static void sum_forward(tg_tensor *y, const tg_tensor *x);
static void sum_backward(tg_op_call *c);
static const tg_op op_sum = {"sum", NULL, sum_backward};

tg_tensor *tg_sum(tg_ctx *ctx, tg_tensor *x)
{
    if (!ctx || !tgi_check_arg(ctx, "tg_sum", "x", x) ||
        !tgi_check_float(ctx, "tg_sum", "x", x))
        return NULL;
    tg_tensor *out = tgi_tensor_new(ctx, "tg_sum", x->dtype, 0, NULL, 0);
    if (!out)
        return NULL;
    tg_op_call *c;
    if (!record(ctx, &op_sum, out, &x, 1, &c))
        return NULL;
    sum_forward(out, x);
    return out;
}

static void sum_forward(tg_tensor *y, const tg_tensor *x)
{
    TGI_FLOAT_DISPATCH(y->dtype, {
        double s;
        SUM_DOUBLE((const T *)x->data, x->numel, s);
        ((T *)y->data)[0] = (T)s;
    });
}

/* d sum(x)/dx_i = 1 */
static void sum_backward(tg_op_call *c)
{
    tg_tensor *x = c->in[0];
    if (!tgi_needs_grad(x))
        return;
    TGI_FLOAT_DISPATCH(x->dtype, {
        T *restrict dx = (T *)tg_grad_acc(x);
        const T *dy = (const T *)tg_grad(c->out);
        if (!dx || !dy)
            return;
        const T g = dy[0];
        TGI_PAR_CHUNKS(c->ctx, x->numel, lo, hi, {
            for (int64_t i = lo; i < hi; i++)
                dx[i] += g;
        });
    });
}

/* ======================================================================== */
/* tg_mean                                                                  */
/* ======================================================================== */

/* y = (1/n) sum_i x_i: x any shape (n = numel) -> y 0-dim. dx_i = dy / n.
 * Saves nothing. Accumulates in double, divides in double, rounds once. An
 * empty x gives 0/0 = NaN (as NumPy), and no gradient entries. */
static void mean_forward(tg_tensor *y, const tg_tensor *x);
static void mean_backward(tg_op_call *c);
static const tg_op op_mean = {"mean", NULL, mean_backward};

tg_tensor *tg_mean(tg_ctx *ctx, tg_tensor *x)
{
    if (!ctx || !tgi_check_arg(ctx, "tg_mean", "x", x) ||
        !tgi_check_float(ctx, "tg_mean", "x", x))
        return NULL;
    tg_tensor *out = tgi_tensor_new(ctx, "tg_mean", x->dtype, 0, NULL, 0);
    if (!out)
        return NULL;
    tg_op_call *c;
    if (!record(ctx, &op_mean, out, &x, 1, &c))
        return NULL;
    mean_forward(out, x);
    return out;
}

static void mean_forward(tg_tensor *y, const tg_tensor *x)
{
    TGI_FLOAT_DISPATCH(y->dtype, {
        double s;
        SUM_DOUBLE((const T *)x->data, x->numel, s);
        ((T *)y->data)[0] = (T)(s / (double)x->numel);
    });
}

/* d mean(x)/dx_i = 1/n */
static void mean_backward(tg_op_call *c)
{
    tg_tensor *x = c->in[0];
    if (!tgi_needs_grad(x))
        return;
    TGI_FLOAT_DISPATCH(x->dtype, {
        T *restrict dx = (T *)tg_grad_acc(x);
        const T *dy = (const T *)tg_grad(c->out);
        if (!dx || !dy)
            return;
        const T g = (T)((double)dy[0] / (double)x->numel);
        TGI_PAR_CHUNKS(c->ctx, x->numel, lo, hi, {
            for (int64_t i = lo; i < hi; i++)
                dx[i] += g;
        });
    });
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

static void sum_axis_forward(tg_tensor *y, const tg_tensor *x, int axis);
static void sum_axis_backward(tg_op_call *c);
static const tg_op op_sum_axis = {"sum_axis", NULL, sum_axis_backward};

tg_tensor *tg_sum_axis(tg_ctx *ctx, tg_tensor *x, int axis, int keepdim)
{
    if (!ctx || !tgi_check_arg(ctx, "tg_sum_axis", "x", x) ||
        !tgi_check_float(ctx, "tg_sum_axis", "x", x))
        return NULL;
    if (axis < -x->ndim || axis >= x->ndim) {
        char buf[96];
        tg_set_error(ctx, "tg_sum_axis: axis %d out of range for x of shape %s (%d dims)",
                     axis, TGI_SHAPE(x, buf), x->ndim);
        return NULL;
    }
    const int ax = axis < 0 ? axis + x->ndim : axis;
    int64_t shape[TG_MAX_DIMS];
    int nd = 0;
    for (int k = 0; k < x->ndim; k++) {
        if (k != ax)
            shape[nd++] = x->shape[k];
        else if (keepdim)
            shape[nd++] = 1;
    }
    tg_tensor *out = tgi_tensor_new(ctx, "tg_sum_axis", x->dtype, nd, shape, 0);
    if (!out)
        return NULL;
    tg_op_call *c;
    if (!record(ctx, &op_sum_axis, out, &x, 1, &c))
        return NULL;
    if (c)
        tgi_node_attr(c)->i[0] = ax;
    sum_axis_forward(out, x, ax);
    return out;
}

/* x as [outer, n, inner] around axis ax */
static void axis_split(const tg_tensor *x, int ax, int64_t *outer, int64_t *n, int64_t *inner)
{
    *outer = 1;
    *inner = 1;
    for (int k = 0; k < ax; k++)
        *outer *= x->shape[k];
    for (int k = ax + 1; k < x->ndim; k++)
        *inner *= x->shape[k];
    *n = x->shape[ax];
}

static void sum_axis_forward(tg_tensor *y, const tg_tensor *x, int ax)
{
    int64_t outer, n, inner;
    axis_split(x, ax, &outer, &n, &inner);
    TGI_FLOAT_DISPATCH(y->dtype, {
        const T *restrict px = (const T *)x->data;
        T *restrict py = (T *)y->data;
        if (inner == 1) { /* the last axis (or all later axes of size 1) */
            for (int64_t o = 0; o < outer; o++)
                SUM_DOUBLE(px + o * n, n, py[o]);
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
                        yr[i] = (T)acc[i];
                }
            }
        }
    });
}

/* d y[o,i]/d x[o,j,i] = 1 */
static void sum_axis_backward(tg_op_call *c)
{
    tg_tensor *x = c->in[0];
    if (!tgi_needs_grad(x))
        return;
    int64_t outer, n, inner;
    axis_split(x, (int)tgi_node_attr(c)->i[0], &outer, &n, &inner);
    TGI_FLOAT_DISPATCH(x->dtype, {
        T *restrict dx = (T *)tg_grad_acc(x);
        const T *restrict dy = (const T *)tg_grad(c->out);
        if (!dx || !dy)
            return;
        for (int64_t o = 0; o < outer; o++)
            for (int64_t j = 0; j < n; j++) {
                T *restrict dr = dx + (o * n + j) * inner;
                const T *restrict gr = dy + o * inner;
                for (int64_t i = 0; i < inner; i++)
                    dr[i] += gr[i];
            }
    });
}
