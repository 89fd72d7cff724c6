/* SPDX-License-Identifier: MIT */
/* tests/ops/test_ops_block_fused.c: the transformer block's internal fused nodes
 * besides attention (ops/matmul.c tgi_linear_residual and tgi_linear_gelu,
 * ops/shape.c tgi_view).
 * Each: a double-precision gradient check through a random-weighted projection,
 * the bits of the composed ops it replaces (forward and gradients, also adding
 * into a gradient that exists), its errors with nothing recorded. */
#include <criterion/criterion.h>

#include <math.h>
#include <string.h>

#include "internal.h" /* tgi_linear_residual, tgi_linear_gelu, tgi_view */
#include "tapegrad.h"
#include "tg_test.h"

TG_TEST_SUITE(block_fused, 20261204);

/* ---- tgi_linear_residual ------------------------------------------------ */

/* in: x [m,in], w [out,in], b [out], r (any shape of m*out elements) */
static tg_tensor *fn_lr_out(tg_ctx *c, tg_tensor *const *in, void *user)
{
    (void)user;
    return tgi_linear_residual(c, "test", in[0], in[1], in[2], in[3]);
}

static tg_tensor *fn_lr(tg_ctx *c, tg_tensor *const *in, void *user)
{
    return tg_sum(c, tg_mul(c, fn_lr_out(c, in, NULL), (tg_tensor *)user));
}

/* f64 gradient checks of a layer node fn (sum(w * out), fn_out its output) over
 * m, in, out cases: inputs x [m,in], w [out,in], b [out], and with n_in 4 a
 * residual r [1,m,out] */
static void gradcheck_layer(tg_fn fn, tg_fn fn_out, int n_in, const int64_t (*cases)[3], int n)
{
    for (int ci = 0; ci < n; ci++) {
        const int64_t m = cases[ci][0], k = cases[ci][1], o = cases[ci][2];
        tg_tensor *in[4] = {rnd(ctx, TG_F64, (shp){2, {m, k}}, -1, 1),
                            rnd(ctx, TG_F64, (shp){2, {o, k}}, -1, 1),
                            rnd(ctx, TG_F64, (shp){1, {o}}, -1, 1),
                            rnd(ctx, TG_F64, (shp){3, {1, m, o}}, -1, 1)};
        tg_tensor *w = rnd(ctx, TG_F64, (shp){2, {m, o}}, 0.5, 1.5);
        char what[64];
        snprintf(what, sizeof what, "m %lld in %lld out %lld", (long long)m, (long long)k,
                 (long long)o);
        gradcheck_ok(ctx, fn, w, in, n_in, what);
        assert_grads_nonzero(ctx, fn_out, NULL, in, n_in, LOSS_SUM_W, what);
        tg_reset(ctx);
    }
}

Test(block_fused, linear_residual_gradcheck)
{
    static const int64_t cases[][3] = {{5, 3, 4}, {1, 1, 1}, {7, 6, 2}}; /* m, in, out */
    gradcheck_layer(fn_lr, fn_lr_out, 4, cases, 3);
}

/* The same bits as tg_add(r, tgi_linear_wt(x, w, b)), forward and backward, f32
 * and f64; a second backward adds into the gradients the first left. */
Test(block_fused, linear_residual_is_linear_then_add_bit_for_bit)
{
    for (int f = 0; f < 2; f++) {
        const tg_dtype dt = f ? TG_F64 : TG_F32;
        tg_tensor *in[4] = {rnd(ctx, dt, (shp){2, {37, 24}}, -1, 1),
                            rnd(ctx, dt, (shp){2, {19, 24}}, -1, 1),
                            rnd(ctx, dt, (shp){1, {19}}, -1, 1),
                            rnd(ctx, dt, (shp){2, {37, 19}}, -1, 1)};
        tg_tensor *w = rnd(ctx, dt, (shp){2, {37, 19}}, 0.5, 1.5);
        for (int i = 0; i < 4; i++) tg_set_requires_grad(in[i], 1);
        tg_tensor *y1 = fn_lr_out(ctx, in, NULL);
        tg_tensor *y2 = tg_add(ctx, in[3], tgi_linear_wt(ctx, "test", in[0], in[1], in[2],
                                                          TG_ACT_NONE));
        cr_assert(tg_ok(ctx), "%s", tg_errmsg(ctx));
        cr_assert_eq(tg_hash(y1), tg_hash(y2), "dtype %d: forward bits differ", (int)dt);
        uint64_t g1[4];
        tg_backward(ctx, tg_sum(ctx, tg_mul(ctx, y2, w)));
        for (int i = 0; i < 4; i++)
            g1[i] = tg_hash(tg_from(ctx, dt, tg_ndim(in[i]), tg_shape(in[i]), tg_grad(in[i])));
        tg_zero_grad(ctx);
        for (int i = 0; i < 4; i++) memset(tg_grad(in[i]), 0, (size_t)tg_numel(in[i]) * (f ? 8 : 4));
        tg_backward(ctx, tg_sum(ctx, tg_mul(ctx, y1, w)));
        for (int i = 0; i < 4; i++)
            cr_assert_eq(tg_hash(tg_from(ctx, dt, tg_ndim(in[i]), tg_shape(in[i]), tg_grad(in[i]))),
                         g1[i], "dtype %d: gradient of input %d differs", (int)dt, i);
        tg_reset(ctx);
    }
}

Test(block_fused, linear_residual_bad_arguments)
{
    tg_tensor *x = rnd(ctx, TG_F64, (shp){2, {4, 3}}, -1, 1), *w = rnd(ctx, TG_F64, (shp){2, {5, 3}}, -1, 1);
    tg_tensor *b = rnd(ctx, TG_F64, (shp){1, {5}}, -1, 1), *r = rnd(ctx, TG_F64, (shp){2, {4, 5}}, -1, 1);
    tg_set_requires_grad(x, 1);
    const int64_t len = tg_tape_len(ctx);
    assert_null_err(ctx, tgi_linear_residual(ctx, "tg_x", x, w, NULL, r), "tg_x", "needs a bias", NULL);
    assert_null_err(ctx, tgi_linear_residual(ctx, "tg_x", x, w, b, rnd(ctx, TG_F64, (shp){2, {4, 4}}, -1, 1)),
                    "tg_x", "m*out elements", "r is [4,4]");
    assert_null_err(ctx, tgi_linear_residual(ctx, "tg_x", x, rnd(ctx, TG_F64, (shp){2, {5, 2}}, -1, 1), b, r),
                    "tg_x", "w [out,in]", "w is [5,2]");
    assert_null_err(ctx, tgi_linear_residual(ctx, "tg_x", x, w, b, convert(ctx, r, TG_F32)), "tg_x",
                    "f32", NULL);
    assert_null_err(ctx, tgi_linear_residual(ctx, "tg_x", x, w, b, NULL), "tg_x", "argument r is NULL",
                    NULL);
    cr_assert_eq(tg_tape_len(ctx), len, "a failing call recorded a node");
    cr_assert_null(tg_grad(x), "a failing call left a gradient");
}

/* ---- tgi_linear_gelu ---------------------------------------------------- */

static tg_tensor *fn_lg_out(tg_ctx *c, tg_tensor *const *in, void *user)
{
    (void)user;
    return tgi_linear_gelu(c, "test", in[0], in[1], in[2]);
}

static tg_tensor *fn_lg(tg_ctx *c, tg_tensor *const *in, void *user)
{
    return tg_sum(c, tg_mul(c, fn_lg_out(c, in, NULL), (tg_tensor *)user));
}

Test(block_fused, linear_gelu_gradcheck)
{
    static const int64_t cases[][3] = {{5, 3, 4}, {1, 1, 1}, {3, 6, 9}}; /* m, in, out */
    gradcheck_layer(fn_lg, fn_lg_out, 3, cases, 3);
}

/* The same bits as tg_gelu(tgi_linear_wt(x, w, b)), forward and backward, f32 and
 * f64 (also with no gradient for x, and adding into gradients that exist). */
Test(block_fused, linear_gelu_is_linear_then_gelu_bit_for_bit)
{
    for (int f = 0; f < 4; f++) {
        const tg_dtype dt = f & 1 ? TG_F64 : TG_F32;
        tg_tensor *in[3] = {rnd(ctx, dt, (shp){2, {37, 24}}, -2, 2),
                            rnd(ctx, dt, (shp){2, {300, 24}}, -1, 1),
                            rnd(ctx, dt, (shp){1, {300}}, -1, 1)};
        tg_tensor *w = rnd(ctx, dt, (shp){2, {37, 300}}, 0.5, 1.5);
        for (int i = f < 2 ? 0 : 1; i < 3; i++) tg_set_requires_grad(in[i], 1);
        tg_tensor *y1 = fn_lg_out(ctx, in, NULL);
        tg_tensor *y2 = tg_gelu(ctx, tgi_linear_wt(ctx, "test", in[0], in[1], in[2], TG_ACT_NONE));
        cr_assert(tg_ok(ctx), "%s", tg_errmsg(ctx));
        cr_assert_eq(tg_hash(y1), tg_hash(y2), "case %d: forward bits differ", f);
        uint64_t g2[3] = {0};
        tg_backward(ctx, tg_sum(ctx, tg_mul(ctx, y2, w)));
        for (int i = f < 2 ? 0 : 1; i < 3; i++)
            g2[i] = tg_hash(tg_from(ctx, dt, tg_ndim(in[i]), tg_shape(in[i]), tg_grad(in[i])));
        for (int i = f < 2 ? 0 : 1; i < 3; i++)
            memset(tg_grad(in[i]), 0, (size_t)tg_numel(in[i]) * (f & 1 ? 8 : 4));
        tg_backward(ctx, tg_sum(ctx, tg_mul(ctx, y1, w)));
        for (int i = f < 2 ? 0 : 1; i < 3; i++)
            cr_assert_eq(tg_hash(tg_from(ctx, dt, tg_ndim(in[i]), tg_shape(in[i]), tg_grad(in[i]))),
                         g2[i], "case %d: gradient of input %d differs", f, i);
        cr_assert(f < 2 || tg_grad(in[0]) == NULL, "x got a gradient it does not need");
        tg_reset(ctx);
    }
}

/* Backward writes d_pre over y's gradient: a second backward over the same tape
 * (which starts y's gradient from zero again) adds the same gradients once more. */
Test(block_fused, linear_gelu_second_backward_adds_the_same)
{
    tg_tensor *in[3] = {rnd(ctx, TG_F64, (shp){2, {9, 5}}, -2, 2),
                        rnd(ctx, TG_F64, (shp){2, {7, 5}}, -1, 1),
                        rnd(ctx, TG_F64, (shp){1, {7}}, -1, 1)};
    tg_tensor *w = rnd(ctx, TG_F64, (shp){2, {9, 7}}, 0.5, 1.5);
    for (int i = 0; i < 3; i++) tg_set_requires_grad(in[i], 1);
    tg_tensor *y = fn_lg_out(ctx, in, NULL);
    tg_tensor *loss = tg_sum(ctx, tg_mul(ctx, tg_mul(ctx, y, y), w)); /* y feeds a product */
    double first[3][63];
    tg_backward(ctx, loss);
    for (int i = 0; i < 3; i++)
        for (int64_t j = 0; j < tg_numel(in[i]); j++) first[i][j] = grad_at(in[i], j);
    tg_backward(ctx, loss);
    cr_assert(tg_ok(ctx), "%s", tg_errmsg(ctx));
    for (int i = 0; i < 3; i++)
        for (int64_t j = 0; j < tg_numel(in[i]); j++)
            cr_assert_eq(grad_at(in[i], j), 2 * first[i][j], "input %d [%lld]: %.17g, first %.17g",
                         i, (long long)j, grad_at(in[i], j), first[i][j]);
}

Test(block_fused, linear_gelu_bad_arguments)
{
    tg_tensor *x = rnd(ctx, TG_F64, (shp){2, {4, 3}}, -1, 1), *w = rnd(ctx, TG_F64, (shp){2, {5, 3}}, -1, 1);
    tg_set_requires_grad(x, 1);
    const int64_t len = tg_tape_len(ctx);
    assert_null_err(ctx, tgi_linear_gelu(ctx, "tg_x", x, w, NULL), "tg_x", "b [out]", "b is NULL");
    assert_null_err(ctx, tgi_linear_gelu(ctx, "tg_x", x, w, rnd(ctx, TG_F64, (shp){1, {4}}, -1, 1)),
                    "tg_x", "b [out]", "b is [4]");
    assert_null_err(ctx, tgi_linear_gelu(ctx, "tg_x", rnd(ctx, TG_F64, (shp){1, {3}}, -1, 1), w,
                                         rnd(ctx, TG_F64, (shp){1, {5}}, -1, 1)),
                    "tg_x", "x [m,in]", "x is [3]");
    cr_assert_eq(tg_tape_len(ctx), len, "a failing call recorded a node");
    cr_assert_null(tg_grad(x), "a failing call left a gradient");
}

/* ---- tgi_view ----------------------------------------------------------- */

static tg_tensor *fn_view_out(tg_ctx *c, tg_tensor *const *in, void *user)
{
    (void)user;
    static const int64_t s[3] = {2, 3, 4};
    return tgi_view(c, "test", in[0], 3, s);
}

static tg_tensor *fn_view(tg_ctx *c, tg_tensor *const *in, void *user)
{
    return tg_sum(c, tg_mul(c, tg_exp(c, fn_view_out(c, in, NULL)), (tg_tensor *)user));
}

Test(block_fused, view_shares_data_and_passes_the_gradient)
{
    tg_tensor *x = rnd(ctx, TG_F64, (shp){2, {6, 4}}, -1, 1);
    tg_tensor *w = rnd(ctx, TG_F64, (shp){3, {2, 3, 4}}, 0.5, 1.5);
    gradcheck_ok(ctx, fn_view, w, &x, 1, "view");
    assert_grads_nonzero(ctx, fn_view_out, NULL, &x, 1, LOSS_SUM_W, "view");
    tg_tensor *y = fn_view_out(ctx, &x, NULL);
    cr_assert_eq(tg_data(y), tg_data(x), "a view shares its input's data");
    cr_assert_eq(tg_ndim(y), 3);
    cr_assert_eq(tg_shape(y)[2], 4);
    /* the gradient is dy read with x's shape, added when x has one already */
    x = rnd(ctx, TG_F64, (shp){2, {6, 4}}, -1, 1);
    tg_set_requires_grad(x, 1);
    tg_backward(ctx, tg_sum(ctx, tg_mul(ctx, fn_view_out(ctx, &x, NULL), w)));
    tg_backward(ctx, tg_sum(ctx, tg_mul(ctx, fn_view_out(ctx, &x, NULL), w)));
    for (int64_t i = 0; i < 24; i++)
        cr_assert_eq(grad_at(x, i), 2 * at(w, i), "dx[%lld]", (long long)i);
}

/* x (a parameter, a leaf, or an op's output: the view shares its gradient
 * buffer) feeds a view and two other ops (one recorded before the view, one
 * after); two backward passes over the same tape. The leaf's gradient is the sum
 * of every term of both passes; the op output's, of the last pass (non-leaf
 * gradients start from zero in each backward); and the leaf under the op output
 * gets both passes, through the view's shared buffer. */
Test(block_fused, view_gradient_with_other_uses_and_two_backward_passes)
{
    static const int64_t s[3] = {2, 3, 4};
    for (int kind = 0; kind < 3; kind++) {
        tg_tensor *x, *leaf = NULL;
        if (kind == 0) {
            const int64_t sx[2] = {6, 4};
            x = tg_param(ctx, "view_x", TG_F64, 2, sx);
            tg_fill_uniform(ctx, x, -1, 1);
        } else {
            x = leaf = rnd(ctx, TG_F64, (shp){2, {6, 4}}, -1, 1);
            tg_set_requires_grad(x, 1);
            if (kind == 2) x = tg_scale(ctx, leaf, 0.5); /* an op's output */
        }
        const double passes = kind == 2 ? 1 : 2; /* passes summed in x's gradient */
        tg_tensor *w = rnd(ctx, TG_F64, (shp){3, {2, 3, 4}}, 0.5, 1.5);
        tg_tensor *before = tg_sum(ctx, tg_mul(ctx, x, x));                 /* d = 2 x */
        tg_tensor *viewed = tg_sum(ctx, tg_mul(ctx, tgi_view(ctx, "test", x, 3, s), w)); /* d = w */
        tg_tensor *after = tg_sum(ctx, tg_scale(ctx, x, 3.0));              /* d = 3 */
        tg_tensor *loss = tg_add(ctx, tg_add(ctx, before, viewed), after);
        tg_backward(ctx, loss);
        tg_backward(ctx, loss);
        cr_assert(tg_ok(ctx), "%s", tg_errmsg(ctx));
        for (int64_t i = 0; i < 24; i++) {
            const double want = passes * (2 * at(x, i) + at(w, i) + 3);
            cr_assert(fabs(grad_at(x, i) - want) <= 1e-12, "kind %d: dx[%lld] %.17g, want %.17g",
                      kind, (long long)i, grad_at(x, i), want);
            if (kind == 2) /* two passes reached the leaf, each through 0.5 x */
                cr_assert(fabs(grad_at(leaf, i) - 2 * 0.5 * want) <= 1e-12,
                          "dleaf[%lld] %.17g, want %.17g", (long long)i, grad_at(leaf, i), want);
        }
        tg_reset(ctx);
    }
}

Test(block_fused, view_bad_arguments)
{
    tg_tensor *x = rnd(ctx, TG_F64, (shp){2, {6, 4}}, -1, 1);
    const int64_t s5[2] = {5, 5}, sneg[2] = {-1, -24};
    assert_null_err(ctx, tgi_view(ctx, "tg_x", x, 2, s5), "tg_x", "cannot view", "[5,5]");
    assert_null_err(ctx, tgi_view(ctx, "tg_x", x, 2, sneg), "tg_x", "cannot view", "[6,4]");
    assert_null_err(ctx, tgi_view(ctx, "tg_x", x, 0, s5), "tg_x", "ndim must be in [1, 4]", NULL);
    assert_null_err(ctx, tgi_view(ctx, "tg_x", NULL, 2, s5), "tg_x", "argument x is NULL", NULL);
}
