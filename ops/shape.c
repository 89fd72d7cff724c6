/* SPDX-License-Identifier: MIT */
/* ops/shape.c: ops that move elements without changing their values.
 *
 *   tg_transpose  2-D [m,n] -> [n,m] (a copy)
 *   tg_reshape    same elements in row-major order, new shape (a copy)
 *   tgi_view      the same, sharing x's data (internal: for a tensor no one
 *                 writes into, e.g. inside the transformer block)
 *
 * (tg_identity lives in ops/elementwise.c.) Every op reads top to bottom:
 * public function (checks, output, record, forward), forward kernel,
 * backward kernel. Local gradients: docs/ops.md.
 */
#include "ops.h"

/* ======================================================================== */
/* tg_transpose                                                             */
/* ======================================================================== */

/* y = x^T: x [m,n] -> y [n,m], y[j,i] = x[i,j]. dx[i,j] = dy[j,i] (the
 * gradient transposed back). Saves nothing. Only 2-D x: any other rank is an
 * error naming x's shape. Both directions copy in TR_TILE x TR_TILE tiles so
 * reads and writes stay in cache. */
#define TR_TILE 32

TGI_OP(transpose);

tg_tensor *tg_transpose(tg_ctx *ctx, tg_tensor *x)
{
    if (!ctx || !tgi_check_float_arg(ctx, "tg_transpose", "x", x, NULL))
        return NULL;
    if (x->ndim != 2) {
        char buf[96];
        tg_set_error(ctx, "tg_transpose: x must be 2-D, got %s (%d dims)", TGI_SHAPE(x, buf),
                     x->ndim);
        return NULL;
    }
    const int64_t shape[2] = {x->shape[1], x->shape[0]};
    tg_tensor *out = tgi_tensor_new(ctx, "tg_transpose", x->dtype, 2, shape, 0);
    if (!out)
        return NULL;
    return tgi_op_run(ctx, &op_transpose, out, &x, 1, NULL, 0);
}

/* dst[j,i] (+)= src[i,j], src [m,n], dst [n,m]; ACC is = or += */
#define TRANSPOSE_TILED(dst, src, m, n, ACC)                                           \
    do {                                                                               \
        for (int64_t i0 = 0; i0 < (m); i0 += TR_TILE) {                                \
            const int64_t i1 = (m) - i0 < TR_TILE ? (m) : i0 + TR_TILE;                \
            for (int64_t j0 = 0; j0 < (n); j0 += TR_TILE) {                            \
                const int64_t j1 = (n) - j0 < TR_TILE ? (n) : j0 + TR_TILE;            \
                for (int64_t i = i0; i < i1; i++)                                      \
                    for (int64_t j = j0; j < j1; j++)                                  \
                        (dst)[j * (m) + i] ACC (src)[i * (n) + j];                     \
            }                                                                          \
        }                                                                              \
    } while (0)

static int transpose_forward(tg_op_call *c)
{
    const int64_t m = c->in[0]->shape[0], n = c->in[0]->shape[1];
    TGI_FLOAT_DISPATCH(c->out->dtype, {
        T *restrict py = (T *)c->out->data;
        const T *restrict px = (const T *)c->in[0]->data;
        TRANSPOSE_TILED(py, px, m, n, =);
    });
    return 0;
}

/* d y[j,i]/d x[i,j] = 1 */
static void transpose_backward(tg_op_call *c)
{
    tg_tensor *x = c->in[0];
    if (!tgi_needs_grad(x))
        return;
    /* dy is [n,m]; dx [m,n] gets dy transposed: dx[i,j] += dy[j,i] */
    const int64_t m = x->shape[0], n = x->shape[1];
    TGI_FLOAT_DISPATCH(x->dtype, {
        T *restrict dx = (T *)tg_grad_acc(x);
        const T *restrict dy = (const T *)tg_grad(c->out);
        if (!dx || !dy)
            return;
        TRANSPOSE_TILED(dx, dy, n, m, +=);
    });
}

/* ======================================================================== */
/* tg_reshape                                                               */
/* ======================================================================== */

/* y = x with a new shape: the same elements in the same row-major order.
 * x any shape -> y `shape` (ndim 0..4, same numel). One entry may be -1: it
 * is inferred from numel and the others. dx = dy read with x's shape (an
 * elementwise add). Saves nothing. y is a copy, so writing into tg_data(y)
 * never changes x. Errors: ndim outside [0, 4], shape NULL with ndim > 0,
 * an entry < -1, two -1s, or a numel mismatch (naming both shapes). */
static const tg_op op_reshape = {"reshape", tgi_copy_forward, tgi_pass_backward};

tg_tensor *tg_reshape(tg_ctx *ctx, tg_tensor *x, int ndim, const int64_t *shape)
{
    if (!ctx || !tgi_check_float_arg(ctx, "tg_reshape", "x", x, NULL))
        return NULL;
    if (ndim < 0 || ndim > TG_MAX_DIMS) {
        tg_set_error(ctx, "tg_reshape: ndim must be in [0, %d], got %d", TG_MAX_DIMS, ndim);
        return NULL;
    }
    if (ndim > 0 && !shape) {
        tg_set_error(ctx, "tg_reshape: argument shape is NULL (ndim %d)", ndim);
        return NULL;
    }
    char bx[96], bs[96];
    int64_t sh[TG_MAX_DIMS];
    int infer = -1, has_zero = 0;
    int64_t known = 1; /* product of the given sizes, -1 on overflow */
    for (int k = 0; k < ndim; k++) {
        sh[k] = shape[k];
        if (sh[k] == -1 && infer < 0) {
            infer = k;
        } else if (sh[k] == -1) {
            tg_set_error(ctx, "tg_reshape: only one -1 allowed, got %s for x of shape %s",
                         tgi_shape_str(ndim, shape, bs, sizeof bs), TGI_SHAPE(x, bx));
            return NULL;
        } else if (sh[k] < 0) {
            tg_set_error(ctx, "tg_reshape: negative size in %s for x of shape %s",
                         tgi_shape_str(ndim, shape, bs, sizeof bs), TGI_SHAPE(x, bx));
            return NULL;
        } else if (sh[k] == 0) {
            has_zero = 1;
        } else if (known > 0 && sh[k] > INT64_MAX / known) {
            known = -1; /* overflow: cannot match any real numel */
        } else if (known >= 0) {
            known *= sh[k];
        }
    }
    if (has_zero)
        known = 0;
    if (infer >= 0 && known > 0 && x->numel % known == 0)
        sh[infer] = x->numel / known;
    if ((infer >= 0 && (known <= 0 || x->numel % known != 0)) ||
        (infer < 0 && known != x->numel)) {
        tg_set_error(ctx, "tg_reshape: cannot reshape x of shape %s (%lld elements) into %s",
                     TGI_SHAPE(x, bx), (long long)x->numel,
                     tgi_shape_str(ndim, shape, bs, sizeof bs));
        return NULL;
    }
    tg_tensor *out = tgi_tensor_new(ctx, "tg_reshape", x->dtype, ndim, sh, 0);
    if (!out)
        return NULL;
    return tgi_op_run(ctx, &op_reshape, out, &x, 1, NULL, 0);
}

/* ======================================================================== */
/* tgi_view                                                                 */
/* ======================================================================== */

/* y = x with a new shape of as many elements, its data x's own (no copy: the
 * tensor is a view, as PyTorch's x.view(shape)). dx += dy. Saves nothing. For the
 * library's own graphs, where nothing writes into x or y after the view is made
 * (internal.h). Errors: ndim outside [1, 4], a negative size, or another element
 * count, naming both shapes.
 * The gradient is shared too: when x is an op's output (not a leaf) with no
 * gradient yet, dy's buffer becomes x's (no copy). Gradients only ever add, and
 * only this node reads y's gradient, so the one buffer holds x's sum from then on
 * (later terms of x land in it as well); a later backward over the same tape
 * starts both from zero (as every non-leaf's), and finds the two gradients one
 * buffer, already summed: nothing to pass. A leaf's gradient outlives a backward,
 * so it gets a copy. */
static int view_forward(tg_op_call *c)
{
    (void)c; /* y's data is x's */
    return 0;
}

static void view_backward(tg_op_call *c)
{
    tg_tensor *x = c->in[0];
    void *dy = c->out->grad;
    if (!dy || !tgi_needs_grad(x) || x->grad == dy)
        return;
    if (!x->grad && x->node >= 0 && !(x->flags & (TGI_PARAM | TGI_LEAF))) {
        x->grad = dy;
        return;
    }
    tgi_pass_grad(c, 0);
}
static const tg_op op_view = {"view", view_forward, view_backward};

tg_tensor *tgi_view(tg_ctx *ctx, const char *fn, tg_tensor *x, int ndim, const int64_t *shape)
{
    if (!ctx || !tgi_check_float_arg(ctx, fn, "x", x, NULL))
        return NULL;
    int64_t n = 1;
    int bad = ndim < 1 || ndim > TG_MAX_DIMS || !shape;
    for (int k = 0; !bad && k < ndim; k++) {
        bad = shape[k] < 0 || (shape[k] > 0 && n > INT64_MAX / shape[k]);
        n *= bad ? 1 : shape[k];
    }
    if (bad || n != x->numel) {
        char bx[96], bs[96];
        tg_set_error(ctx, "%s: cannot view x of shape %s as %s", fn, TGI_SHAPE(x, bx),
                     bad && (ndim < 1 || ndim > TG_MAX_DIMS || !shape)
                         ? "that (ndim must be in [1, 4])"
                         : tgi_shape_str(ndim, shape, bs, sizeof bs));
        return NULL;
    }
    tg_tensor *out = tgi_arena_alloc(ctx, sizeof *out);
    if (!out)
        return NULL;
    tgi_tensor_init(out, ctx, x->data, x->dtype, ndim, shape, n);
    return tgi_op_run(ctx, &op_view, out, &x, 1, NULL, 0);
}
