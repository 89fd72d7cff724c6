/* SPDX-License-Identifier: MIT */
/* tests/ops/test_ops_reduce_shape.c: tg_sum, tg_mean, tg_sum_axis, tg_mean_axis,
 * tg_max_axis, tg_transpose, tg_reshape. Gradient checks in f64 over the full
 * Jacobian, values against naive loops and PyTorch, f32 accuracy of long sums,
 * f32 against f64, and bad input. */
#include <criterion/criterion.h>

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "tapegrad.h"
#include "tg_test.h"

/* ---- helpers ------------------------------------------------------------ */

TG_TEST_SUITE(reduce_shape, 777); /* ctx: a fresh context per test */

static const shp SHAPES[] = {
    {0, {0}}, {1, {1}}, {1, {6}}, {2, {3, 4}}, {3, {2, 3, 4}}, {4, {2, 1, 3, 2}},
};
#define N_SHAPES (int)(sizeof SHAPES / sizeof SHAPES[0])

/* ---- tg_sum, tg_mean ---------------------------------------------------- */

static tg_tensor *fn_sum(tg_ctx *c, tg_tensor *const *in, void *user)
{
    return tg_sum(c, in[0]);
}
static tg_tensor *fn_mean(tg_ctx *c, tg_tensor *const *in, void *user)
{
    return tg_mean(c, in[0]);
}
/* a scalar output makes the Jacobian one row of constants: also check the
 * reduction composed with a nonlinear op so the test could fail */
static tg_tensor *fn_sum_sq(tg_ctx *c, tg_tensor *const *in, void *user)
{
    return tg_mul(c, tg_sum(c, tg_mul(c, in[0], in[1])), tg_mean(c, tg_exp(c, in[0])));
}

Test(reduce_shape, sum_mean_values_and_gradients)
{
    for (int k = 0; k < N_SHAPES; k++) {
        for (int dti = 0; dti < 2; dti++) {
            tg_dtype dt = dti ? TG_F64 : TG_F32;
            tg_tensor *x = rnd(ctx, dt, SHAPES[k], -1, 1);
            tg_set_requires_grad(x, 1);
            tg_tensor *s = tg_sum(ctx, x), *m = tg_mean(ctx, x);
            cr_assert_not_null(s, "%s", tg_errmsg(ctx));
            cr_assert_eq(tg_ndim(s), 0);
            cr_assert_eq(tg_ndim(m), 0);
            cr_assert_eq(tg_dtype_of(s), dt);
            double want = 0;
            for (int64_t i = 0; i < tg_numel(x); i++)
                want += at(x, i);
            cr_assert_float_eq(tg_item(s), want, dti ? 1e-14 : 1e-6);
            cr_assert_float_eq(tg_item(m), want / (double)tg_numel(x), dti ? 1e-14 : 1e-6);
            /* loss = 2 sum + 3 mean: dx = 2 + 3/n */
            tg_backward(ctx, tg_add(ctx, tg_scale(ctx, s, 2), tg_scale(ctx, m, 3)));
            cr_assert(tg_ok(ctx), "%s", tg_errmsg(ctx));
            for (int64_t i = 0; i < tg_numel(x); i++)
                cr_assert_float_eq(grad_at(x, i), 2 + 3.0 / (double)tg_numel(x), 1e-6);
        }
        tg_reset(ctx);
    }
}

Test(reduce_shape, sum_mean_gradcheck)
{
    for (int k = 0; k < N_SHAPES; k++) {
        tg_tensor *in[2] = {rnd(ctx, TG_F64, SHAPES[k], -1, 1), rnd(ctx, TG_F64, SHAPES[k], -1, 1)};
        gradcheck_ok(ctx, fn_sum, NULL, in, 1, "tg_sum");
        gradcheck_ok(ctx, fn_mean, NULL, in, 1, "tg_mean");
        gradcheck_ok(ctx, fn_sum_sq, NULL, in, 2, "sum * mean(exp)");
        assert_grads_nonzero(ctx, fn_sum, NULL, in, 1, LOSS_SUM_W, NULL);
        assert_grads_nonzero(ctx, fn_mean, NULL, in, 1, LOSS_SUM_W, NULL);
        assert_grads_nonzero(ctx, fn_sum_sq, NULL, in, 2, LOSS_SUM_W, NULL);
        tg_reset(ctx);
    }
}

/* f32 sums accumulate in double: 10^6 copies of 0.1f sum to 10^6 * 0.1f to
 * f32 precision (a float accumulator drifts by about 1%) */
Test(reduce_shape, f32_long_sum_is_accurate)
{
    int64_t n = 1000000;
    tg_tensor *x = tg_new(ctx, TG_F32, 1, &n);
    tg_fill(x, 0.1);
    double want = (double)n * (double)0.1f;
    cr_assert_float_eq(tg_item(tg_sum(ctx, x)), want, want * 1e-7);
    cr_assert_float_eq(tg_item(tg_mean(ctx, x)), (double)0.1f, 1e-8);
    int64_t s2[2] = {1000, 1000};
    tg_tensor *x2 = tg_reshape(ctx, x, 2, s2);
    tg_tensor *c0 = tg_sum_axis(ctx, x2, 0, 0), *c1 = tg_sum_axis(ctx, x2, 1, 0);
    cr_assert_float_eq(at(c0, 17), 1000 * (double)0.1f, 1e-4);
    cr_assert_float_eq(at(c1, 17), 1000 * (double)0.1f, 1e-4);
}

Test(reduce_shape, mean_of_empty_is_nan)
{
    int64_t s = 0;
    tg_tensor *x = tg_new(ctx, TG_F64, 1, &s);
    cr_assert_not_null(x, "%s", tg_errmsg(ctx));
    cr_assert(isnan(tg_item(tg_mean(ctx, x))));
    cr_assert_float_eq(tg_item(tg_sum(ctx, x)), 0, 0);
}

/* ---- tg_sum_axis -------------------------------------------------------- */

typedef struct {
    int axis, keepdim;
} axis_arg;

static tg_tensor *fn_sum_axis(tg_ctx *c, tg_tensor *const *in, void *user)
{
    const axis_arg *a = user;
    return tg_sum_axis(c, in[0], a->axis, a->keepdim);
}

Test(reduce_shape, sum_axis_3d_every_axis)
{
    shp s = {3, {2, 3, 4}};
    for (int axis = -3; axis < 3; axis++) {
        for (int keepdim = 0; keepdim < 2; keepdim++) {
            int ax = axis < 0 ? axis + 3 : axis;
            for (int dti = 0; dti < 2; dti++) {
                tg_dtype dt = dti ? TG_F64 : TG_F32;
                tg_tensor *x = rnd(ctx, dt, s, -1, 1);
                tg_tensor *y = tg_sum_axis(ctx, x, axis, keepdim);
                cr_assert_not_null(y, "%s", tg_errmsg(ctx));
                cr_assert_eq(tg_ndim(y), keepdim ? 3 : 2);
                int d = 0;
                for (int k = 0; k < 3; k++) {
                    if (k == ax && !keepdim)
                        continue;
                    cr_assert_eq(tg_dim(y, d), k == ax ? 1 : s.shape[k], "axis %d keepdim %d",
                                 axis, keepdim);
                    d++;
                }
                /* values against a naive loop */
                for (int i = 0; i < 2; i++)
                    for (int j = 0; j < 3; j++)
                        for (int l = 0; l < 4; l++) {
                            int idx[3] = {i, j, l};
                            if (idx[ax] != 0)
                                continue;
                            double want = 0;
                            for (int r = 0; r < s.shape[ax]; r++) {
                                idx[ax] = r;
                                want += at(x, (idx[0] * 3 + idx[1]) * 4 + idx[2]);
                            }
                            idx[ax] = 0;
                            /* output index with the axis at 0 (keepdim) or removed:
                             * the flat offset is the same */
                            int64_t o = ax == 0   ? j * 4 + l
                                        : ax == 1 ? i * 4 + l
                                                  : i * 3 + j;
                            cr_assert_float_eq(at(y, o), want, dti ? 1e-14 : 1e-6);
                        }
            }
            axis_arg a = {axis, keepdim};
            tg_tensor *in[1] = {rnd(ctx, TG_F64, s, -1, 1)};
            char what[64];
            snprintf(what, sizeof what, "tg_sum_axis axis %d keepdim %d", axis, keepdim);
            gradcheck_ok(ctx, fn_sum_axis, &a, in, 1, what);
            assert_grads_nonzero(ctx, fn_sum_axis, &a, in, 1, LOSS_SUM_W, NULL);
            tg_reset(ctx);
        }
    }
}

Test(reduce_shape, sum_axis_other_ranks)
{
    /* 1-D -> 0-dim; 2-D; 4-D on each axis; long inner extent (> one tile) */
    const shp shapes[] = {{1, {5}}, {2, {3, 1}}, {2, {1, 4}}, {4, {2, 3, 2, 2}}, {2, {3, 600}}};
    for (int k = 0; k < (int)(sizeof shapes / sizeof shapes[0]); k++) {
        for (int axis = 0; axis < shapes[k].ndim; axis++) {
            axis_arg a = {axis, 0};
            tg_tensor *in[1] = {rnd(ctx, TG_F64, shapes[k], -1, 1)};
            if (tg_numel(in[0]) <= 100) {
                gradcheck_ok(ctx, fn_sum_axis, &a, in, 1, "tg_sum_axis");
            }
            assert_grads_nonzero(ctx, fn_sum_axis, &a, in, 1, LOSS_SUM_W, NULL);
            tg_tensor *y = tg_sum_axis(ctx, in[0], axis, 0);
            double tot = 0, want = 0;
            for (int64_t i = 0; i < tg_numel(y); i++)
                tot += at(y, i);
            for (int64_t i = 0; i < tg_numel(in[0]); i++)
                want += at(in[0], i);
            cr_assert_float_eq(tot, want, 1e-12);
            tg_reset(ctx);
        }
    }
    tg_tensor *v = rnd(ctx, TG_F64, (shp){1, {5}}, 0, 1);
    cr_assert_eq(tg_ndim(tg_sum_axis(ctx, v, 0, 0)), 0);
    cr_assert_eq(tg_ndim(tg_sum_axis(ctx, v, -1, 1)), 1);
    /* 3 x 600 over axis 0: the inner extent spans several tiles */
    tg_tensor *w = rnd(ctx, TG_F32, (shp){2, {3, 600}}, -1, 1);
    tg_tensor *c = tg_sum_axis(ctx, w, 0, 0);
    for (int j = 0; j < 600; j += 37)
        cr_assert_float_eq(at(c, j), at(w, j) + at(w, 600 + j) + at(w, 1200 + j), 1e-6);
}

Test(reduce_shape, sum_axis_bad_axis)
{
    shp s = {3, {2, 3, 4}};
    tg_tensor *x = rnd(ctx, TG_F64, s, -1, 1);
    cr_assert_null(tg_sum_axis(ctx, x, 3, 0));
    assert_err(ctx, "axis 3", "tg_sum_axis", "axis 3", "[2,3,4]");
    cr_assert_null(tg_sum_axis(ctx, x, -4, 1));
    assert_err(ctx, "axis -4", "tg_sum_axis", "axis -4", "[2,3,4]");
    tg_tensor *sc = tg_scalar(ctx, TG_F64, 1);
    cr_assert_null(tg_sum_axis(ctx, sc, 0, 0));
    assert_err(ctx, "0-dim", "tg_sum_axis", "axis 0", "[]");
}

/* ---- tg_mean_axis, tg_max_axis ------------------------------------------ */

/* PyTorch's x.mean(axis) and x.max(axis).values of axis_x() below, and the
 * gradient of sum(w * y) (tests/ops_reference.py writes these rows) */
typedef struct {
    const char *op;
    int axis;
    double y[12], dx[24];
} axis_ref;
static const axis_ref AXIS_REF[] = {
/* ops_reference.py: axis */
    {"mean", 0,
     {-0.375, 0.0, 0.375, 0.75, -0.25, 0.125, 0.5, -0.5, -0.125, 0.25, -0.75, -0.375},
     {0.25, 0.4642857142857143, 0.6785714285714286, 0.39285714285714285, 0.6071428571428572,
      0.3214285714285714, 0.5357142857142857, 0.25, 0.4642857142857143,
      0.6785714285714286, 0.39285714285714285, 0.6071428571428572, 0.25,
      0.4642857142857143, 0.6785714285714286, 0.39285714285714285, 0.6071428571428572,
      0.3214285714285714, 0.5357142857142857, 0.25, 0.4642857142857143,
      0.6785714285714286, 0.39285714285714285, 0.6071428571428572}},
    {"mean", 1,
     {-0.6666666666666666, 0.16666666666666666, 0.08333333333333333, 0.0, 0.16666666666666666,
      0.08333333333333333, 0.0, -0.08333333333333333},
     {0.16666666666666666, 0.30952380952380953, 0.4523809523809524, 0.2619047619047619,
      0.16666666666666666, 0.30952380952380953, 0.4523809523809524, 0.2619047619047619,
      0.16666666666666666, 0.30952380952380953, 0.4523809523809524, 0.2619047619047619,
      0.4047619047619048, 0.21428571428571427, 0.35714285714285715, 0.16666666666666666,
      0.4047619047619048, 0.21428571428571427, 0.35714285714285715, 0.16666666666666666,
      0.4047619047619048, 0.21428571428571427, 0.35714285714285715, 0.16666666666666666}},
    {"mean", 2,
     {0.0, 0.125, -0.4375, 0.375, -0.1875, -0.0625},
     {0.125, 0.125, 0.125, 0.125, 0.23214285714285715, 0.23214285714285715,
      0.23214285714285715, 0.23214285714285715, 0.3392857142857143, 0.3392857142857143,
      0.3392857142857143, 0.3392857142857143, 0.19642857142857142, 0.19642857142857142,
      0.19642857142857142, 0.19642857142857142, 0.3035714285714286, 0.3035714285714286,
      0.3035714285714286, 0.3035714285714286, 0.1607142857142857, 0.1607142857142857,
      0.1607142857142857, 0.1607142857142857}},
    {"max", 0,
     {0.5, 0.5, 1.25, 1.25, 0.25, 1.0, 1.0, 0.0, 0.75, 0.75, -0.25, 0.5},
     {0.0, 0.9285714285714286, 0.0, 0.7857142857142857, 1.2142857142857144, 0.0,
      1.0714285714285714, 0.5, 0.0, 1.3571428571428572, 0.7857142857142857, 0.0, 0.5, 0.0,
      1.3571428571428572, 0.0, 0.0, 0.6428571428571428, 0.0, 0.0, 0.9285714285714286, 0.0,
      0.0, 1.2142857142857144}},
    {"max", 1,
     {0.25, 0.75, 1.0, 1.25, 0.75, 1.0, 1.25, 0.5},
     {0.0, 0.0, 0.0, 0.7857142857142857, 0.5, 0.0, 1.3571428571428572, 0.0, 0.0,
      0.9285714285714286, 0.0, 0.0, 0.0, 0.0, 1.0714285714285714, 0.0, 0.0,
      0.6428571428571428, 0.0, 0.0, 1.2142857142857144, 0.0, 0.0, 0.5}},
    {"max", 2,
     {1.25, 1.0, 0.75, 1.25, 1.0, 0.75},
     {0.0, 0.0, 0.0, 0.5, 0.0, 0.0, 0.9285714285714286, 0.0, 0.0, 1.3571428571428572, 0.0, 0.0,
      0.0, 0.0, 0.7857142857142857, 0.0, 0.0, 1.2142857142857144, 0.0, 0.0,
      0.6428571428571428, 0.0, 0.0, 0.0}},
/* ops_reference.py: axis end */
};
#define N_AXIS_REF (int)(sizeof AXIS_REF / sizeof AXIS_REF[0])
_Static_assert(N_AXIS_REF == 6, "AXIS_REF: mean and max over each of the 3 axes");

/* [2,3,4] with ties, (7 i mod 11 - 5) / 4, as tests/ops_reference.py makes it */
static tg_tensor *axis_x(tg_dtype dt)
{
    double v[24];
    for (int i = 0; i < 24; i++) v[i] = ((7 * i) % 11 - 5) / 4.0;
    return from_nd(ctx, dt, 3, (int64_t[]){2, 3, 4}, v);
}

static tg_tensor *axis_op(tg_ctx *c, const char *op, tg_tensor *x, int axis, int keepdim)
{
    return op[1] == 'e' ? tg_mean_axis(c, x, axis, keepdim) : tg_max_axis(c, x, axis, keepdim);
}

Test(reduce_shape, mean_max_axis_match_pytorch)
{
    for (int r = 0; r < N_AXIS_REF; r++)
        for (int neg = 0; neg < 2; neg++) {
            const axis_ref *ref = &AXIS_REF[r];
            tg_tensor *x = axis_x(TG_F64);
            tg_set_requires_grad(x, 1);
            tg_tensor *y = axis_op(ctx, ref->op, x, neg ? ref->axis - 3 : ref->axis, neg);
            cr_assert_not_null(y, "%s: %s", ref->op, tg_errmsg(ctx));
            cr_assert_eq(tg_ndim(y), neg ? 3 : 2);
            double w[12];
            for (int i = 0; i < 12; i++) w[i] = 0.5 + ((3 * i) % 7) / 7.0;
            tg_tensor *wt = from_nd(ctx, TG_F64, tg_ndim(y), tg_shape(y), w);
            tg_backward(ctx, tg_sum(ctx, tg_mul(ctx, y, wt)));
            cr_assert(tg_ok(ctx), "%s", tg_errmsg(ctx));
            for (int64_t i = 0; i < tg_numel(y); i++)
                cr_assert(fabs(at(y, i) - ref->y[i]) <= 1e-15, "%s axis %d y[%lld]: %g vs %g",
                          ref->op, ref->axis, (long long)i, at(y, i), ref->y[i]);
            for (int i = 0; i < 24; i++)
                cr_assert(fabs(grad_at(x, i) - ref->dx[i]) <= 1e-15,
                          "%s axis %d dx[%d]: %g vs %g", ref->op, ref->axis, i, grad_at(x, i),
                          ref->dx[i]);
            tg_reset(ctx);
        }
}

static tg_tensor *fn_axis(tg_ctx *c, tg_tensor *const *in, void *user)
{
    const int *a = user; /* {op: 0 mean, 1 max; axis; keepdim} */
    return axis_op(c, a[0] ? "max" : "mean", in[0], a[1], a[2]);
}

Test(reduce_shape, mean_max_axis_gradcheck_and_f32)
{
    for (int s = 1; s < N_SHAPES; s++)
        for (int op = 0; op < 2; op++)
            for (int axis = -SHAPES[s].ndim; axis < SHAPES[s].ndim; axis++) {
                char what[64];
                snprintf(what, sizeof what, "%s shape %d axis %d", op ? "max" : "mean", s, axis);
                int user[3] = {op, axis, axis & 1};
                tg_tensor *x = rnd(ctx, TG_F64, SHAPES[s], -2, 2); /* no ties: distinct draws */
                tg_tensor *in[1] = {x};
                gradcheck_ok(ctx, fn_axis, user, in, 1, what);
                assert_grads_nonzero(ctx, fn_axis, user, in, 1, LOSS_MSE_W, what);
                tg_tensor *x32 = convert(ctx, x, TG_F32);
                tg_tensor *y64 = fn_axis(ctx, in, user), *y32 = fn_axis(ctx, &x32, user);
                for (int64_t i = 0; i < tg_numel(y64); i++)
                    cr_assert(fabs(at(y64, i) - at(y32, i)) <= 1e-6, "%s", what);
                tg_reset(ctx);
            }
}

Test(reduce_shape, max_axis_ties_nan_and_empty)
{
    /* ties: the gradient goes to the first maximum only */
    const double v[6] = {1, 3, 3, -1, 2, 2};
    tg_tensor *x = from_nd(ctx, TG_F64, 2, (int64_t[]){2, 3}, v);
    tg_set_requires_grad(x, 1);
    tg_tensor *y = tg_max_axis(ctx, x, 1, 0);
    tg_backward(ctx, tg_sum(ctx, y));
    cr_assert(tg_ok(ctx), "%s", tg_errmsg(ctx));
    cr_assert_eq(at(y, 0), 3.0);
    cr_assert_eq(at(y, 1), 2.0);
    const double want[6] = {0, 1, 0, 0, 1, 0};
    for (int i = 0; i < 6; i++) cr_assert_eq(grad_at(x, i), want[i], "dx[%d]", i);
    /* a NaN is the maximum (the first one), as in PyTorch */
    const double n[4] = {1, NAN, 5, NAN};
    tg_tensor *xn = from1(ctx, TG_F64, 4, n);
    tg_set_requires_grad(xn, 1);
    tg_tensor *yn = tg_max_axis(ctx, xn, 0, 0);
    cr_assert(isnan(at(yn, 0)));
    tg_backward(ctx, yn);
    const double wantn[4] = {0, 1, 0, 0};
    for (int i = 0; i < 4; i++) cr_assert_eq(grad_at(xn, i), wantn[i], "dx[%d]", i);
    /* mean over an empty axis is NaN; max over one is an error */
    tg_tensor *e = tg_new(ctx, TG_F64, 2, (int64_t[]){2, 0});
    tg_tensor *me = tg_mean_axis(ctx, e, 1, 0);
    cr_assert(tg_ok(ctx), "%s", tg_errmsg(ctx));
    cr_assert(isnan(at(me, 0)) && isnan(at(me, 1)));
    cr_assert_null(tg_max_axis(ctx, e, -1, 0));
    assert_err(ctx, "max empty", "tg_max_axis: cannot take the maximum of an empty axis",
               "axis -1 of x [2,0]", NULL);
    /* over the non-empty axis, an empty result */
    tg_tensor *m0 = tg_max_axis(ctx, e, 0, 1);
    cr_assert(tg_ok(ctx), "%s", tg_errmsg(ctx));
    cr_assert_eq(tg_numel(m0), 0);
}

Test(reduce_shape, mean_max_axis_bad_arguments)
{
    tg_tensor *x = rnd(ctx, TG_F64, (shp){2, {2, 3}}, -1, 1);
    cr_assert_null(tg_mean_axis(ctx, x, 2, 0));
    assert_err(ctx, "mean axis", "tg_mean_axis: axis 2 out of range for x of shape [2,3]",
               NULL, NULL);
    cr_assert_null(tg_max_axis(ctx, x, -3, 0));
    assert_err(ctx, "max axis", "tg_max_axis: axis -3 out of range for x of shape [2,3]", NULL,
               NULL);
    cr_assert_null(tg_max_axis(ctx, tg_scalar(ctx, TG_F64, 1), 0, 0));
    assert_err(ctx, "max 0-dim", "tg_max_axis: axis 0 out of range", "(0 dims)", NULL);
    cr_assert_null(tg_mean_axis(ctx, NULL, 0, 0));
    assert_err(ctx, "mean NULL", "tg_mean_axis: argument x is NULL", NULL, NULL);
    cr_assert_null(tg_max_axis(ctx, NULL, 0, 0));
    assert_err(ctx, "max NULL", "tg_max_axis: argument x is NULL", NULL, NULL);
    tg_tensor *xi = tg_new(ctx, TG_I32, 1, (int64_t[]){3});
    cr_assert_null(tg_max_axis(ctx, xi, 0, 0));
    assert_err(ctx, "max i32", "tg_max_axis: x must be f32 or f64, got i32 [3]", NULL, NULL);
    cr_assert_null(tg_mean_axis(NULL, x, 0, 0));
    cr_assert(tg_ok(ctx));
}

/* ---- tg_transpose ------------------------------------------------------- */

static tg_tensor *fn_transpose(tg_ctx *c, tg_tensor *const *in, void *user)
{
    return tg_transpose(c, in[0]);
}

Test(reduce_shape, transpose_values_and_gradcheck)
{
    const shp shapes[] = {{2, {3, 5}}, {2, {1, 4}}, {2, {4, 1}}, {2, {1, 1}}, {2, {40, 70}}};
    for (int k = 0; k < (int)(sizeof shapes / sizeof shapes[0]); k++) {
        for (int dti = 0; dti < 2; dti++) {
            tg_tensor *x = rnd(ctx, dti ? TG_F64 : TG_F32, shapes[k], -1, 1);
            tg_tensor *y = tg_transpose(ctx, x);
            int64_t m = shapes[k].shape[0], n = shapes[k].shape[1];
            cr_assert_eq(tg_dim(y, 0), n);
            cr_assert_eq(tg_dim(y, 1), m);
            for (int64_t i = 0; i < m; i++)
                for (int64_t j = 0; j < n; j++)
                    cr_assert_eq(at(y, j * m + i), at(x, i * n + j));
            /* backward: loss = sum(w * x^T), dx = w^T */
            tg_set_requires_grad(x, 1);
            tg_tensor *w = rnd(ctx, dti ? TG_F64 : TG_F32, (shp){2, {n, m}}, -1, 1);
            tg_backward(ctx, tg_sum(ctx, tg_mul(ctx, tg_transpose(ctx, x), w)));
            cr_assert(tg_ok(ctx), "%s", tg_errmsg(ctx));
            for (int64_t i = 0; i < m; i++)
                for (int64_t j = 0; j < n; j++)
                    cr_assert_eq(grad_at(x, i * n + j), at(w, j * m + i));
        }
        if (shapes[k].shape[0] * shapes[k].shape[1] <= 20) {
            tg_tensor *in[1] = {rnd(ctx, TG_F64, shapes[k], -1, 1)};
            gradcheck_ok(ctx, fn_transpose, NULL, in, 1, "tg_transpose");
            assert_grads_nonzero(ctx, fn_transpose, NULL, in, 1, LOSS_SUM_W, NULL);
        }
        tg_reset(ctx);
    }
}

Test(reduce_shape, transpose_bad_rank)
{
    tg_tensor *x3 = rnd(ctx, TG_F64, (shp){3, {2, 3, 4}}, 0, 1);
    cr_assert_null(tg_transpose(ctx, x3));
    assert_err(ctx, "3-D", "tg_transpose", "2-D", "[2,3,4]");
    tg_tensor *x1 = rnd(ctx, TG_F64, (shp){1, {5}}, 0, 1);
    cr_assert_null(tg_transpose(ctx, x1));
    assert_err(ctx, "1-D", "tg_transpose", "[5]", NULL);
    cr_assert_null(tg_transpose(ctx, tg_scalar(ctx, TG_F64, 2)));
    assert_err(ctx, "0-D", "tg_transpose", "[]", NULL);
}

/* ---- tg_reshape --------------------------------------------------------- */

typedef struct {
    int ndim;
    int64_t shape[4];
} reshape_arg;

static tg_tensor *fn_reshape(tg_ctx *c, tg_tensor *const *in, void *user)
{
    const reshape_arg *r = user;
    /* a nonlinear op after the reshape, with a broadcast that depends on the
     * new shape, so a wrong element order would show */
    tg_tensor *y = tg_reshape(c, in[0], r->ndim, r->shape);
    return tg_mul(c, y, tg_exp(c, y));
}

Test(reduce_shape, reshape_values_and_gradcheck)
{
    const struct {
        shp from;
        reshape_arg to;
        shp want;
    } cases[] = {
        {{2, {2, 6}}, {2, {3, 4}}, {2, {3, 4}}},
        {{2, {2, 6}}, {3, {-1, 2, 2}}, {3, {3, 2, 2}}},
        {{3, {2, 3, 2}}, {1, {-1}}, {1, {12}}},
        {{1, {12}}, {4, {1, 2, -1, 3}}, {4, {1, 2, 2, 3}}},
        {{1, {1}}, {0, {0}}, {0, {0}}},
        {{0, {0}}, {2, {1, -1}}, {2, {1, 1}}},
        {{2, {3, 5}}, {2, {5, 3}}, {2, {5, 3}}},
    };
    for (int k = 0; k < 7; k++) {
        tg_tensor *x = rnd(ctx, TG_F64, cases[k].from, -1, 1);
        tg_tensor *y = tg_reshape(ctx, x, cases[k].to.ndim, cases[k].to.shape);
        cr_assert_not_null(y, "case %d: %s", k, tg_errmsg(ctx));
        cr_assert_eq(tg_ndim(y), cases[k].want.ndim);
        for (int d = 0; d < cases[k].want.ndim; d++)
            cr_assert_eq(tg_dim(y, d), cases[k].want.shape[d], "case %d dim %d", k, d);
        cr_assert_neq(tg_data(y), tg_data(x), "reshape copies");
        for (int64_t i = 0; i < tg_numel(x); i++)
            cr_assert_eq(at(y, i), at(x, i));
        tg_tensor *in[1] = {x};
        gradcheck_ok(ctx, fn_reshape, (void *)&cases[k].to, in, 1, "tg_reshape");
        assert_grads_nonzero(ctx, fn_reshape, (void *)&cases[k].to, in, 1, LOSS_SUM_W, NULL);
        tg_reset(ctx);
    }
}

/* reshape then broadcast: [6] -> [2,3] times a [3] row; grad flows back flat */
Test(reduce_shape, reshape_backward_by_hand)
{
    tg_tensor *x = rnd(ctx, TG_F64, (shp){1, {6}}, -1, 1),
              *r = rnd(ctx, TG_F64, (shp){1, {3}}, 1, 2);
    tg_set_requires_grad(x, 1);
    int64_t s[2] = {2, -1};
    tg_backward(ctx, tg_sum(ctx, tg_mul(ctx, tg_reshape(ctx, x, 2, s), r)));
    cr_assert(tg_ok(ctx), "%s", tg_errmsg(ctx));
    for (int i = 0; i < 6; i++)
        cr_assert_eq(grad_at(x, i), at(r, i % 3));
}

Test(reduce_shape, reshape_errors)
{
    tg_tensor *x = rnd(ctx, TG_F64, (shp){2, {2, 3}}, 0, 1);
    int64_t s42[2] = {4, 2};
    cr_assert_null(tg_reshape(ctx, x, 2, s42));
    assert_err(ctx, "mismatch", "tg_reshape", "[2,3]", "[4,2]");
    int64_t s4m[2] = {4, -1};
    cr_assert_null(tg_reshape(ctx, x, 2, s4m));
    assert_err(ctx, "-1 not divisible", "tg_reshape", "[2,3]", "[4,-1]");
    int64_t smm[2] = {-1, -1};
    cr_assert_null(tg_reshape(ctx, x, 2, smm));
    assert_err(ctx, "two -1", "tg_reshape", "one -1", NULL);
    int64_t sneg[2] = {-2, -3};
    cr_assert_null(tg_reshape(ctx, x, 2, sneg));
    assert_err(ctx, "negative", "tg_reshape", "negative", "[2,3]");
    int64_t s0m[2] = {0, -1};
    cr_assert_null(tg_reshape(ctx, x, 2, s0m));
    assert_err(ctx, "0 with -1", "tg_reshape", "[2,3]", "[0,-1]");
    int64_t s5[5] = {1, 1, 1, 2, 3};
    cr_assert_null(tg_reshape(ctx, x, 5, s5));
    assert_err(ctx, "ndim 5", "tg_reshape", "ndim", "5");
    cr_assert_null(tg_reshape(ctx, x, -1, s5));
    assert_err(ctx, "ndim -1", "tg_reshape", "ndim", NULL);
    cr_assert_null(tg_reshape(ctx, x, 2, NULL));
    assert_err(ctx, "NULL shape", "tg_reshape", "shape is NULL", NULL);
    int64_t big[2] = {INT64_MAX / 2, 4};
    cr_assert_null(tg_reshape(ctx, x, 2, big));
    assert_err(ctx, "overflow", "tg_reshape", "[2,3]", NULL);
    cr_assert_null(tg_reshape(ctx, tg_scalar(ctx, TG_F64, 1), 1, s42));
    assert_err(ctx, "0-dim to [4]", "tg_reshape", "[]", "[4]");
}

/* ---- f32 against f64 ---------------------------------------------------- */

static tg_tensor *fn_mixed(tg_ctx *c, tg_tensor *const *in, void *user)
{
    int64_t s[2] = {4, -1};
    tg_tensor *x = in[0]; /* [2,3,4] */
    tg_tensor *a = tg_sum_axis(c, tg_exp(c, x), 1, 0);         /* [2,4] */
    tg_tensor *b = tg_transpose(c, tg_reshape(c, x, 2, s));    /* [6,4] */
    tg_tensor *m = tg_mean(c, tg_mul(c, b, tg_sum_axis(c, a, 0, 1))); /* [6,4]*[1,4] */
    return tg_add(c, tg_sum(c, tg_mul(c, a, in[1])), m);
}

Test(reduce_shape, f32_agrees_with_f64)
{
    tg_tensor *x64 = rnd(ctx, TG_F64, (shp){3, {2, 3, 4}}, -1, 1);
    tg_tensor *w64 = rnd(ctx, TG_F64, (shp){2, {2, 4}}, -1, 1);
    tg_tensor *x32 = convert(ctx, x64, TG_F32), *w32 = convert(ctx, w64, TG_F32);
    tg_set_requires_grad(x64, 1);
    tg_set_requires_grad(x32, 1);
    tg_tensor *i64[2] = {x64, w64}, *i32[2] = {x32, w32};
    tg_tensor *y64 = fn_mixed(ctx, i64, NULL), *y32 = fn_mixed(ctx, i32, NULL);
    cr_assert_not_null(y32, "%s", tg_errmsg(ctx));
    tg_backward(ctx, y64);
    tg_backward(ctx, y32);
    cr_assert(tg_ok(ctx), "%s", tg_errmsg(ctx));
    cr_assert_float_eq(tg_item(y32), tg_item(y64), 1e-5 * (1 + fabs(tg_item(y64))));
    int nz = 0;
    for (int i = 0; i < 24; i++) {
        double g = grad_at(x64, i);
        nz |= g != 0;
        cr_assert_float_eq(grad_at(x32, i), g, 1e-5 * (1 + fabs(g)));
    }
    cr_assert(nz);
    tg_tensor *in[2] = {rnd(ctx, TG_F64, (shp){3, {2, 3, 4}}, -1, 1),
                        rnd(ctx, TG_F64, (shp){2, {2, 4}}, -1, 1)};
    gradcheck_ok(ctx, fn_mixed, NULL, in, 2, "mixed reduce/shape graph");
}

/* ---- bad input common to all five --------------------------------------- */

static tg_tensor *u_sum_axis(tg_ctx *c, tg_tensor *x) { return tg_sum_axis(c, x, 0, 0); }
static tg_tensor *u_mean_axis(tg_ctx *c, tg_tensor *x) { return tg_mean_axis(c, x, 0, 0); }
static tg_tensor *u_max_axis(tg_ctx *c, tg_tensor *x) { return tg_max_axis(c, x, 0, 0); }
static tg_tensor *u_reshape(tg_ctx *c, tg_tensor *x)
{
    return tg_reshape(c, x, 1, (int64_t[]){-1});
}

/* the one-input ops of this suite, keyed by the name their messages use */
static const named_unop OPS[] = {
    {"tg_sum", tg_sum},           {"tg_mean", tg_mean},           {"tg_sum_axis", u_sum_axis},
    {"tg_mean_axis", u_mean_axis}, {"tg_max_axis", u_max_axis},   {"tg_transpose", tg_transpose},
    {"tg_reshape", u_reshape},
};
#define N_OPS (int)(sizeof OPS / sizeof OPS[0])

Test(reduce_shape, null_int_and_chain)
{
    for (int k = 0; k < N_OPS; k++)
        assert_x_arg_errors(ctx, &OPS[k]);
    /* chain after an error: NULL all the way, first message kept */
    tg_tensor *x = rnd(ctx, TG_F64, (shp){1, {3}}, 0, 1);
    tg_tensor *t = tg_transpose(ctx, x);
    cr_assert_null(t);
    char first[512];
    snprintf(first, sizeof first, "%s", tg_errmsg(ctx));
    for (int k = 0; k < 5; k++)
        cr_assert_null(OPS[k].f(ctx, t));
    for (int k = 0; k < 5; k++)
        cr_assert_null(OPS[k].f(ctx, x)); /* valid input, but an error is pending */
    cr_assert_str_eq(tg_errmsg(ctx), first);
    cr_assert_not_null(strstr(first, "tg_transpose"));
}
