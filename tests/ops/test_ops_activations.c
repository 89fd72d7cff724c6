/* SPDX-License-Identifier: MIT */
/* tests/ops/test_ops_activations.c: tg_sigmoid, tg_sigmoid_scaled, tg_tanh, tg_relu,
 * tg_leaky_relu, tg_softmax, tg_log_softmax, tg_activate.
 * Gradient checks in f64 over the full Jacobian on several shapes, near kinks
 * and in saturation; forward values against closed forms; overflow-free
 * evaluation at +-1000; f32 against f64; and every kind of bad input.
 * Scalar losses for "is the gradient non-zero" use tg_mse(y, w) with fixed
 * random w (an op of this family's sibling file), so these tests depend on as
 * few other ops as possible. */
#include <criterion/criterion.h>

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "tapegrad.h"
#include "tg_test.h"

/* ---- helpers ------------------------------------------------------------ */

TG_TEST_SUITE(activations, 20240611); /* ctx: a fresh context per test */

/* the shapes every elementwise activation is checked on */
static const shp SHAPES[] = {
    {0, {0}},          /* one element, 0-dim */
    {1, {1}},          /* one element, 1-dim */
    {1, {5}},          /* [5] */
    {2, {3, 4}},       /* non-square */
    {2, {1, 7}},       /* one row */
    {3, {2, 3, 4}},    /* 3-D */
};
#define N_SHAPES ((int)(sizeof SHAPES / sizeof SHAPES[0]))

/* Move every element at least `gap` away from 0 (keeps relu's kink out of
 * the finite differences). */
static void away_from_zero(tg_tensor *t, double gap)
{
    for (int64_t i = 0; i < tg_numel(t); i++) {
        double v = at(t, i);
        if (fabs(v) < gap) set_at(t, i, v < 0 ? v - gap : v + gap);
    }
}

/* ---- unary ops as tg_fn ------------------------------------------------- */

typedef tg_tensor *(*unop)(tg_ctx *, tg_tensor *);
typedef struct {
    const char *name; /* the public function, as messages name it, then "(attributes)" */
    unop f;
} unop_info;

static tg_tensor *leaky_02(tg_ctx *c, tg_tensor *x) { return tg_leaky_relu(c, x, 0.2); }
static tg_tensor *leaky_neg(tg_ctx *c, tg_tensor *x) { return tg_leaky_relu(c, x, -0.5); }

static const unop_info UNOPS[] = {
    {"tg_sigmoid", tg_sigmoid},   {"tg_tanh", tg_tanh},
    {"tg_relu", tg_relu},         {"tg_leaky_relu(0.2)", leaky_02},
    {"tg_leaky_relu(-0.5)", leaky_neg},
    {"tg_softmax", tg_softmax},   {"tg_log_softmax", tg_log_softmax},
};
#define N_UNOPS ((int)(sizeof UNOPS / sizeof UNOPS[0]))

/* the row named `name` (tests select ops by name, never by position) */
#define unop_named(name) ROW_NAMED(UNOPS, name)

static tg_tensor *fn_unop(tg_ctx *c, tg_tensor *const *in, void *user)
{
    return ((const unop_info *)user)->f(c, in[0]);
}

/* ---- gradient checks ---------------------------------------------------- */

Test(activations, gradcheck_every_op_every_shape)
{
    for (int o = 0; o < N_UNOPS; o++)
        for (int s = 0; s < N_SHAPES; s++) {
            char what[96];
            snprintf(what, sizeof what, "%s on shape %d", UNOPS[o].name, s);
            tg_tensor *x = rnd(ctx, TG_F64, SHAPES[s], -2.5, 2.5);
            away_from_zero(x, 0.1);
            set_at(x, 0, fabs(at(x, 0))); /* relu: at least one element on the slope */
            tg_tensor *in[1] = {x};
            gradcheck_ok(ctx, fn_unop, (void *)&UNOPS[o], in, 1, what);
            /* softmax of a row of length 1 is the constant 1: zero gradient */
            int64_t last = SHAPES[s].ndim ? SHAPES[s].shape[SHAPES[s].ndim - 1] : 1;
            int row_op = UNOPS[o].f == tg_softmax || UNOPS[o].f == tg_log_softmax;
            if (!(row_op && last == 1))
                assert_grads_nonzero(ctx, fn_unop, (void *)&UNOPS[o], in, 1, LOSS_MSE_W, what);
            tg_reset(ctx);
        }
}

Test(activations, gradcheck_near_kinks)
{
    /* relu and leaky relu at +-1e-3 (eps 1e-6 never crosses 0) */
    const double v[6] = {1e-3, -1e-3, 2e-3, -2e-3, 1.5, -1.5};
    const unop_info *ops[3] = {unop_named("tg_relu"), unop_named("tg_leaky_relu(0.2)"),
                               unop_named("tg_leaky_relu(-0.5)")};
    for (int o = 0; o < 3; o++) {
        tg_tensor *x = from1(ctx, TG_F64, 6, v);
        tg_tensor *in[1] = {x};
        gradcheck_ok(ctx, fn_unop, (void *)ops[o], in, 1, ops[o]->name);
        tg_set_requires_grad(x, 1);
        tg_tensor *y = ops[o]->f(ctx, x);
        tg_backward(ctx, tg_mse(ctx, y, tg_new(ctx, TG_F64, 1, (int64_t[]){6})));
        cr_assert(tg_ok(ctx), "%s", tg_errmsg(ctx));
        /* dL/dy = 2 y / 6; dx = dL/dy * local slope */
        double slope = o == 0 ? 0.0 : o == 1 ? 0.2 : -0.5;
        for (int i = 0; i < 6; i++) {
            double local = v[i] > 0 ? 1.0 : slope;
            double yv = v[i] > 0 ? v[i] : slope * v[i];
            cr_assert_float_eq(grad_at(x, i), 2 * yv / 6 * local, 1e-15, "%s elem %d", ops[o]->name,
                               i);
        }
        tg_reset(ctx);
    }
}

Test(activations, gradcheck_saturation)
{
    /* sigmoid and tanh at +-8: tiny but non-zero derivatives, checked with a
     * tight atol so a wrong small value cannot hide under the default 1e-5 */
    const double v[4] = {8, -8, 7.5, -9};
    const tg_gradcheck_opts tight = {.eps = 1e-5, .atol = 1e-10, .rtol = 1e-4};
    const unop_info *ops[2] = {unop_named("tg_sigmoid"), unop_named("tg_tanh")};
    for (int o = 0; o < 2; o++) {
        tg_tensor *x = from1(ctx, TG_F64, 4, v);
        tg_tensor *in[1] = {x};
        gradcheck_opts(ctx, fn_unop, (void *)ops[o], in, 1, &tight, ops[o]->name);
        /* and against the closed form with seed 1 per element */
        tg_set_requires_grad(x, 1);
        tg_tensor *y = ops[o]->f(ctx, x);
        tg_tensor *zero = tg_new(ctx, TG_F64, 1, (int64_t[]){4});
        tg_backward(ctx, tg_mse(ctx, y, zero)); /* dL/dy = 2 y / 4 */
        for (int i = 0; i < 4; i++) {
            double yv, d;
            if (o == 0) {
                yv = 1 / (1 + exp(-v[i]));
                d = yv * (1 - yv);
            } else {
                yv = tanh(v[i]);
                d = 1 / (cosh(v[i]) * cosh(v[i]));
            }
            cr_assert_float_eq(at(y, i), yv, 1e-15);
            double want = 2 * yv / 4 * d;
            cr_assert(fabs(grad_at(x, i) - want) <= 1e-9 * fabs(want), "%s at %g: %.17g vs %.17g",
                      ops[o]->name, v[i], grad_at(x, i), want);
            cr_assert(grad_at(x, i) != 0);
        }
        tg_reset(ctx);
    }
}

Test(activations, softmax_full_jacobian_wide_rows)
{
    /* rows with spread-out logits: the Jacobian diag(y) - y y^T is far from 0 */
    const unop_info *ops[2] = {unop_named("tg_softmax"), unop_named("tg_log_softmax")};
    for (int o = 0; o < 2; o++) {
        tg_tensor *x = rnd(ctx, TG_F64, (shp){2, {3, 6}}, -4, 4);
        tg_tensor *in[1] = {x};
        gradcheck_ok(ctx, fn_unop, (void *)ops[o], in, 1, ops[o]->name);
        /* the plain sum of softmax is constant: a weighted projection is not */
        assert_grads_nonzero(ctx, fn_unop, (void *)ops[o], in, 1, LOSS_MSE_W, ops[o]->name);
        tg_reset(ctx);
    }
}

/* ---- sigmoid_scaled ----------------------------------------------------- */

typedef struct {
    tg_tensor *c, *beta; /* used when not given as inputs */
} scaled_user;

static tg_tensor *fn_scaled3(tg_ctx *c, tg_tensor *const *in, void *user)
{
    return tg_sigmoid_scaled(c, in[0], in[1], in[2]);
}

static tg_tensor *fn_scaled_x(tg_ctx *c, tg_tensor *const *in, void *user)
{
    const scaled_user *u = user;
    return tg_sigmoid_scaled(c, in[0], u->c, u->beta);
}

Test(activations, sigmoid_scaled_gradcheck_all_learnable)
{
    /* c 0-dim, beta [1] / [1,1]: any ndim with one element */
    const shp cshape[3] = {{0, {0}}, {1, {1}}, {2, {1, 1}}};
    for (int s = 0; s < N_SHAPES; s++) {
        tg_tensor *x = rnd(ctx, TG_F64, SHAPES[s], -2, 2);
        tg_tensor *c = rnd(ctx, TG_F64, cshape[s % 3], 0.5, 2.0);
        tg_tensor *beta = rnd(ctx, TG_F64, cshape[(s + 1) % 3], 0.3, 1.5);
        tg_tensor *in[3] = {x, c, beta};
        char what[64];
        snprintf(what, sizeof what, "tg_sigmoid_scaled shape %d", s);
        gradcheck_ok(ctx, fn_scaled3, NULL, in, 3, what);
        assert_grads_nonzero(ctx, fn_scaled3, NULL, in, 3, LOSS_MSE_W, what);
        tg_reset(ctx);
    }
}

Test(activations, sigmoid_scaled_constants_not_learnable)
{
    tg_tensor *x = rnd(ctx, TG_F64, (shp){2, {3, 4}}, -2, 2);
    scaled_user u = {tg_scalar(ctx, TG_F64, 1.7), tg_scalar(ctx, TG_F64, -0.8)};
    tg_tensor *in[1] = {x};
    gradcheck_ok(ctx, fn_scaled_x, &u, in, 1, "sigmoid_scaled wrt x only");
    tg_set_requires_grad(x, 1);
    tg_tensor *y = tg_sigmoid_scaled(ctx, x, u.c, u.beta);
    tg_backward(ctx, tg_mse(ctx, y, tg_new(ctx, TG_F64, 2, (int64_t[]){3, 4})));
    cr_assert(tg_ok(ctx), "%s", tg_errmsg(ctx));
    cr_assert_not_null(tg_grad(x));
    cr_assert_null(tg_grad(u.c), "c does not require grad: no gradient must reach it");
    cr_assert_null(tg_grad(u.beta));
    /* values: c / (1 + exp(-beta x)) */
    for (int64_t i = 0; i < 12; i++)
        cr_assert_float_eq(at(y, i), 1.7 / (1 + exp(0.8 * at(x, i))), 1e-14);

    /* neither x nor c/beta require grad: nothing is recorded */
    tg_reset(ctx);
    int64_t len0 = tg_tape_len(ctx);
    tg_tensor *x2 = rnd(ctx, TG_F64, (shp){1, {5}}, -1, 1);
    tg_tensor *y2 =
        tg_sigmoid_scaled(ctx, x2, tg_scalar(ctx, TG_F64, 2), tg_scalar(ctx, TG_F64, 3));
    cr_assert_not_null(y2);
    cr_assert_eq(tg_tape_len(ctx), len0);
    cr_assert_not(tg_requires_grad(y2));
}

Test(activations, sigmoid_scaled_params_closed_form)
{
    /* only c and beta learnable (parameters), x a constant: their gradients
     * are the sums over all elements */
    tg_tensor *c = tg_param(ctx, "c", TG_F64, 0, NULL);
    int64_t one = 1;
    tg_tensor *beta = tg_param(ctx, "beta", TG_F64, 1, &one);
    cr_assert_not_null(c, "%s", tg_errmsg(ctx));
    cr_assert_not_null(beta);
    tg_fill(c, 1.3);
    tg_fill(beta, 0.7);
    const double xv[5] = {-2, -0.5, 0.25, 1, 3};
    const double wv[5] = {0.3, -1, 2, 0.5, -0.7};
    tg_tensor *x = from1(ctx, TG_F64, 5, xv), *w = from1(ctx, TG_F64, 5, wv);
    tg_tensor *y = tg_sigmoid_scaled(ctx, x, c, beta);
    tg_backward(ctx, tg_mse(ctx, y, w));
    cr_assert(tg_ok(ctx), "%s", tg_errmsg(ctx));
    cr_assert_null(tg_grad(x));
    double dc = 0, db = 0;
    for (int i = 0; i < 5; i++) {
        double s = 1 / (1 + exp(-0.7 * xv[i]));
        double g = 2 * (1.3 * s - wv[i]) / 5; /* dL/dy */
        dc += g * s;
        db += g * 1.3 * s * (1 - s) * xv[i];
    }
    cr_assert_float_eq(grad_at(c, 0), dc, 1e-14);
    cr_assert_float_eq(grad_at(beta, 0), db, 1e-14);
    cr_assert(dc != 0 && db != 0);

    /* gradcheck with the parameters as inputs (x a temporary constant) */
    tg_tensor *in[3] = {x, c, beta};
    tg_set_requires_grad(x, 0);
    gradcheck_ok(ctx, fn_scaled3, NULL, in, 3, "sigmoid_scaled params");
    /* the check leaves the parameters' grads as they were */
    cr_assert_float_eq(grad_at(c, 0), dc, 1e-14);
}

Test(activations, sigmoid_scaled_f32_matches_f64_and_saturates)
{
    tg_tensor *x64 = rnd(ctx, TG_F64, (shp){2, {4, 5}}, -3, 3);
    tg_tensor *x32 = convert(ctx, x64, TG_F32);
    tg_tensor *c64 = tg_scalar(ctx, TG_F64, 2.5), *b64 = tg_scalar(ctx, TG_F64, 1.25);
    tg_tensor *c32 = tg_scalar(ctx, TG_F32, 2.5), *b32 = tg_scalar(ctx, TG_F32, 1.25);
    tg_set_requires_grad(c64, 1);
    tg_set_requires_grad(b64, 1);
    tg_set_requires_grad(c32, 1);
    tg_set_requires_grad(b32, 1);
    tg_tensor *y64 = tg_sigmoid_scaled(ctx, x64, c64, b64);
    tg_tensor *y32 = tg_sigmoid_scaled(ctx, x32, c32, b32);
    tg_tensor *w64 = rnd(ctx, TG_F64, (shp){2, {4, 5}}, -1, 1);
    tg_backward(ctx, tg_mse(ctx, y64, w64));
    tg_backward(ctx, tg_mse(ctx, y32, convert(ctx, w64, TG_F32)));
    cr_assert(tg_ok(ctx), "%s", tg_errmsg(ctx));
    for (int64_t i = 0; i < 20; i++) cr_assert_float_eq(at(y32, i), at(y64, i), 1e-6);
    cr_assert_float_eq(grad_at(c32, 0), grad_at(c64, 0), 1e-5 * (1 + fabs(grad_at(c64, 0))));
    cr_assert_float_eq(grad_at(b32, 0), grad_at(b64, 0), 1e-5 * (1 + fabs(grad_at(b64, 0))));

    /* beta x = +-2000: c and 0 exactly, no NaN anywhere */
    const double big[2] = {1000, -1000};
    for (int d = 0; d < 2; d++) {
        tg_dtype dt = d ? TG_F32 : TG_F64;
        tg_tensor *xb = from1(ctx, dt, 2, big);
        tg_set_requires_grad(xb, 1);
        tg_tensor *cb = tg_scalar(ctx, dt, 3), *bb = tg_scalar(ctx, dt, 2);
        tg_set_requires_grad(cb, 1);
        tg_set_requires_grad(bb, 1);
        tg_tensor *yb = tg_sigmoid_scaled(ctx, xb, cb, bb);
        tg_backward(ctx, tg_mse(ctx, yb, tg_new(ctx, dt, 1, (int64_t[]){2})));
        cr_assert(tg_ok(ctx), "%s", tg_errmsg(ctx));
        cr_assert_eq(at(yb, 0), 3.0);
        cr_assert_eq(at(yb, 1), 0.0);
        cr_assert(isfinite(grad_at(xb, 0)) && isfinite(grad_at(xb, 1)));
        cr_assert(isfinite(grad_at(cb, 0)) && isfinite(grad_at(bb, 0)));
    }
}

/* ---- forward values ----------------------------------------------------- */

Test(activations, forward_values)
{
    const double v[6] = {-3, -0.5, 0, 0.25, 2, 10};
    for (int d = 0; d < 2; d++) {
        tg_dtype dt = d ? TG_F32 : TG_F64;
        double tol = d ? 1e-6 : 1e-15;
        tg_tensor *x = from1(ctx, dt, 6, v);
        tg_tensor *s = tg_sigmoid(ctx, x), *t = tg_tanh(ctx, x), *r = tg_relu(ctx, x),
                  *l = tg_leaky_relu(ctx, x, 0.1);
        cr_assert(tg_ok(ctx), "%s", tg_errmsg(ctx));
        for (int i = 0; i < 6; i++) {
            cr_assert_float_eq(at(s, i), 1 / (1 + exp(-v[i])), tol);
            cr_assert_float_eq(at(t, i), tanh(v[i]), tol);
            cr_assert_eq(at(r, i), v[i] > 0 ? v[i] : 0.0);
            cr_assert_float_eq(at(l, i), v[i] > 0 ? v[i] : 0.1 * v[i], tol);
        }
        cr_assert_eq(at(s, 2), 0.5);
        cr_assert_eq(tg_dtype_of(s), dt);
        cr_assert_eq(tg_ndim(s), 1);
        cr_assert_eq(tg_dim(s, 0), 6);
    }
}

Test(activations, softmax_values_and_shapes)
{
    /* [2,3]: row by row */
    const double v[6] = {1, 2, 3, -1, 0, 5};
    tg_tensor *x = tg_from(ctx, TG_F64, 2, (int64_t[]){2, 3}, v);
    tg_tensor *y = tg_softmax(ctx, x), *ly = tg_log_softmax(ctx, x);
    cr_assert(tg_ok(ctx));
    cr_assert_eq(tg_ndim(y), 2);
    for (int r = 0; r < 2; r++) {
        double den = 0;
        for (int j = 0; j < 3; j++) den += exp(v[r * 3 + j]);
        double sum = 0;
        for (int j = 0; j < 3; j++) {
            cr_assert_float_eq(at(y, r * 3 + j), exp(v[r * 3 + j]) / den, 1e-15);
            cr_assert_float_eq(at(ly, r * 3 + j), v[r * 3 + j] - log(den), 1e-14);
            sum += at(y, r * 3 + j);
        }
        cr_assert_float_eq(sum, 1.0, 1e-15);
    }
    /* 0-dim: softmax of a scalar is 1, its log 0 */
    for (int d = 0; d < 2; d++) {
        tg_tensor *s = tg_scalar(ctx, d ? TG_F32 : TG_F64, 42.5);
        tg_tensor *ys = tg_softmax(ctx, s), *ls = tg_log_softmax(ctx, s);
        cr_assert(tg_ok(ctx), "%s", tg_errmsg(ctx));
        cr_assert_eq(tg_ndim(ys), 0);
        cr_assert_eq(tg_item(ys), 1.0);
        cr_assert_eq(tg_item(ls), 0.0);
    }
    /* a [4,0] tensor: nothing to do, no crash */
    tg_tensor *e = tg_new(ctx, TG_F64, 2, (int64_t[]){4, 0});
    tg_tensor *ye = tg_softmax(ctx, e);
    cr_assert_not_null(ye, "%s", tg_errmsg(ctx));
    cr_assert_eq(tg_numel(ye), 0);
}

/* ---- numerics at +-1000 ------------------------------------------------- */

Test(activations, softmax_large_logits)
{
    for (int d = 0; d < 2; d++) {
        tg_dtype dt = d ? TG_F32 : TG_F64;
        const double a[2] = {1000, 0}, b[2] = {-1000, 0}, c[2] = {1000, -1000};
        tg_tensor *ya = tg_softmax(ctx, from1(ctx, dt, 2, a));
        tg_tensor *yb = tg_softmax(ctx, from1(ctx, dt, 2, b));
        tg_tensor *lc = tg_log_softmax(ctx, from1(ctx, dt, 2, c));
        const double big[3] = {1000, 1000, 1000};
        tg_tensor *yu = tg_softmax(ctx, from1(ctx, dt, 3, big));
        cr_assert(tg_ok(ctx), "%s", tg_errmsg(ctx));
        assert_near(ya, (const double[]){1, 0}, 2, 0, 0, "softmax(1000, 0)");
        assert_near(yb, (const double[]){0, 1}, 2, 0, 0, "softmax(-1000, 0)");
        assert_near(lc, (const double[]){0, -2000}, 2, 0, 0, "log_softmax(1000, -1000)");
        for (int i = 0; i < 3; i++) cr_assert_float_eq(at(yu, i), 1.0 / 3, 1e-7);
    }
    /* and the gradients there are finite */
    const double c[3] = {1000, -1000, 999};
    tg_tensor *x = from1(ctx, TG_F64, 3, c);
    tg_tensor *in[1] = {x};
    gradcheck_ok(ctx, fn_unop, (void *)unop_named("tg_softmax"), in, 1, "softmax at 1000");
    gradcheck_ok(ctx, fn_unop, (void *)unop_named("tg_log_softmax"), in, 1,
                 "log_softmax at 1000");
}

Test(activations, sigmoid_tanh_at_1000)
{
    for (int d = 0; d < 2; d++) {
        tg_dtype dt = d ? TG_F32 : TG_F64;
        const double v[4] = {1000, -1000, 800, -800};
        tg_tensor *x = from1(ctx, dt, 4, v);
        tg_set_requires_grad(x, 1);
        tg_tensor *s = tg_sigmoid(ctx, x);
        tg_tensor *t = tg_tanh(ctx, x);
        cr_assert(tg_ok(ctx), "%s", tg_errmsg(ctx));
        assert_near(s, (const double[]){1, 0, 1, 0}, 4, 0, 0, "sigmoid(+-1000, +-800)");
        assert_near(t, (const double[]){1, -1, 1, -1}, 4, 0, 0, "tanh(+-1000, +-800)");
        tg_backward(ctx, tg_mse(ctx, s, tg_new(ctx, dt, 1, (int64_t[]){4})));
        cr_assert(tg_ok(ctx), "%s", tg_errmsg(ctx));
        for (int i = 0; i < 4; i++) {
            cr_assert(!isnan(at(s, i)));
            cr_assert_eq(grad_at(x, i), 0.0, "saturated sigmoid has zero slope, got %g",
                         grad_at(x, i));
        }
    }
}

/* ---- f32 against f64 ---------------------------------------------------- */

Test(activations, f32_matches_f64)
{
    for (int o = 0; o < N_UNOPS; o++) {
        tg_tensor *x64 = rnd(ctx, TG_F64, (shp){2, {3, 5}}, -3, 3);
        away_from_zero(x64, 0.05);
        tg_tensor *x32 = convert(ctx, x64, TG_F32);
        tg_tensor *w64 = rnd(ctx, TG_F64, (shp){2, {3, 5}}, -1, 1);
        tg_tensor *w32 = convert(ctx, w64, TG_F32);
        tg_set_requires_grad(x64, 1);
        tg_set_requires_grad(x32, 1);
        tg_tensor *y64 = UNOPS[o].f(ctx, x64), *y32 = UNOPS[o].f(ctx, x32);
        tg_backward(ctx, tg_mse(ctx, y64, w64));
        tg_backward(ctx, tg_mse(ctx, y32, w32));
        cr_assert(tg_ok(ctx), "%s: %s", UNOPS[o].name, tg_errmsg(ctx));
        cr_assert_eq(tg_dtype_of(y32), TG_F32);
        for (int64_t i = 0; i < 15; i++) {
            double a = at(y64, i), b = at(y32, i);
            cr_assert(fabs(a - b) <= 2e-6 * (1 + fabs(a)), "%s y[%lld]: %g vs %g", UNOPS[o].name,
                      (long long)i, a, b);
            a = grad_at(x64, i), b = grad_at(x32, i);
            cr_assert(fabs(a - b) <= 2e-6 * (1 + fabs(a)), "%s dx[%lld]: %g vs %g",
                      UNOPS[o].name, (long long)i, a, b);
        }
        tg_reset(ctx);
    }
}

/* ---- gradient accumulation ---------------------------------------------- */

Test(activations, backward_adds_fan_out_and_twice)
{
    tg_tensor *x = rnd(ctx, TG_F64, (shp){2, {2, 4}}, -2, 2);
    tg_tensor *w1 = rnd(ctx, TG_F64, (shp){2, {2, 4}}, -1, 1);
    tg_tensor *w2 = rnd(ctx, TG_F64, (shp){2, {2, 4}}, -1, 1);
    tg_set_requires_grad(x, 1);
    for (int o = 0; o < N_UNOPS; o++) {
        /* each path alone */
        double g1[8], g2[8];
        tg_tensor *y = UNOPS[o].f(ctx, x);
        tg_backward(ctx, tg_mse(ctx, y, w1));
        for (int i = 0; i < 8; i++) g1[i] = grad_at(x, i);
        tg_zero_grad(ctx);
        memset(tg_grad(x), 0, sizeof(double) * 8); /* x is a temporary leaf */
        tg_backward(ctx, tg_mse(ctx, y, w2));
        for (int i = 0; i < 8; i++) g2[i] = grad_at(x, i);
        memset(tg_grad(x), 0, sizeof(double) * 8);
        /* y used by two losses: both paths add into dx */
        tg_tensor *loss = tg_add(ctx, tg_mse(ctx, y, w1), tg_mse(ctx, y, w2));
        tg_backward(ctx, loss);
        cr_assert(tg_ok(ctx), "%s: %s", UNOPS[o].name, tg_errmsg(ctx));
        for (int i = 0; i < 8; i++)
            cr_assert_float_eq(grad_at(x, i), g1[i] + g2[i], 1e-15, "%s", UNOPS[o].name);
        /* a second backward over the same tape adds the same amount again */
        tg_backward(ctx, loss);
        for (int i = 0; i < 8; i++)
            cr_assert_float_eq(grad_at(x, i), 2 * (g1[i] + g2[i]), 1e-15, "%s", UNOPS[o].name);
        memset(tg_grad(x), 0, sizeof(double) * 8);
    }
}

/* ---- no-grad mode --------------------------------------------------------- */

Test(activations, no_grad_records_nothing)
{
    tg_tensor *x = rnd(ctx, TG_F64, (shp){1, {4}}, -1, 1);
    tg_set_requires_grad(x, 1);
    int prev = tg_no_grad(ctx, 1);
    int64_t len0 = tg_tape_len(ctx);
    for (int o = 0; o < N_UNOPS; o++) {
        tg_tensor *y = UNOPS[o].f(ctx, x);
        cr_assert_not_null(y);
        cr_assert_not(tg_requires_grad(y));
    }
    cr_assert_eq(tg_tape_len(ctx), len0);
    tg_no_grad(ctx, prev);
    tg_tensor *y = tg_relu(ctx, x);
    cr_assert(tg_requires_grad(y));
    cr_assert_eq(tg_tape_len(ctx), len0 + 1);
}

/* ---- tg_activate ---------------------------------------------------------- */

Test(activations, activate_dispatch)
{
    const double v[4] = {-2, -0.5, 0.5, 2};
    tg_tensor *x = from1(ctx, TG_F64, 4, v);
    cr_assert_eq(tg_activate(ctx, x, TG_ACT_NONE), x, "TG_ACT_NONE returns x itself");
    struct {
        tg_act a;
        unop f;
    } cases[4] = {{TG_ACT_RELU, tg_relu},
                  {TG_ACT_TANH, tg_tanh},
                  {TG_ACT_SIGMOID, tg_sigmoid},
                  {TG_ACT_LEAKY_RELU, NULL}};
    for (int k = 0; k < 4; k++) {
        tg_tensor *y = tg_activate(ctx, x, cases[k].a);
        cr_assert_not_null(y, "%s", tg_errmsg(ctx));
        cr_assert_neq(y, x);
        tg_tensor *ref = cases[k].f ? cases[k].f(ctx, x) : tg_leaky_relu(ctx, x, 0.01);
        for (int i = 0; i < 4; i++) cr_assert_eq(at(y, i), at(ref, i));
    }
    cr_assert_float_eq(at(tg_activate(ctx, x, TG_ACT_LEAKY_RELU), 0), -0.02, 1e-16);
    /* the gradient flows through the selected op */
    tg_set_requires_grad(x, 1);
    tg_tensor *y = tg_activate(ctx, x, TG_ACT_TANH);
    tg_backward(ctx, tg_mse(ctx, y, tg_new(ctx, TG_F64, 1, (int64_t[]){4})));
    cr_assert(tg_ok(ctx));
    cr_assert_float_eq(grad_at(x, 3), 2 * tanh(2) / 4 * (1 - tanh(2) * tanh(2)), 1e-15);
}

Test(activations, activate_invalid)
{
    tg_tensor *x = rnd(ctx, TG_F64, (shp){2, {2, 3}}, -1, 1);
    cr_assert_null(tg_activate(ctx, x, TG_ACT_COUNT));
    cr_assert_not(tg_ok(ctx));
    cr_assert(strstr(tg_errmsg(ctx), "tg_activate"), "%s", tg_errmsg(ctx));
    cr_assert(strstr(tg_errmsg(ctx), "invalid activation"), "%s", tg_errmsg(ctx));
    tg_clear_error(ctx);
    cr_assert_null(tg_activate(ctx, x, (tg_act)7)); /* still within the enum's bit range */
    cr_assert(strstr(tg_errmsg(ctx), "invalid activation 7"), "%s", tg_errmsg(ctx));
    tg_clear_error(ctx);
    cr_assert_null(tg_activate(ctx, NULL, TG_ACT_RELU));
    cr_assert_str_eq(tg_errmsg(ctx), "tg_activate: argument x is NULL");
    tg_clear_error(ctx);
    /* an i32 input to a real activation is refused by the op */
    tg_tensor *xi = tg_new(ctx, TG_I32, 1, (int64_t[]){3});
    cr_assert_null(tg_activate(ctx, xi, TG_ACT_SIGMOID));
    cr_assert(strstr(tg_errmsg(ctx), "tg_sigmoid"), "%s", tg_errmsg(ctx));
    cr_assert(strstr(tg_errmsg(ctx), "i32"), "%s", tg_errmsg(ctx));
    cr_assert_null(tg_activate(NULL, x, TG_ACT_RELU));
}

/* ---- bad input ------------------------------------------------------------ */

Test(activations, null_arguments)
{
    for (int o = 0; o < N_UNOPS; o++) {
        cr_assert_null(UNOPS[o].f(ctx, NULL));
        char want[96]; /* the function's name: the row's name up to "(" */
        snprintf(want, sizeof want, "%.*s: argument x is NULL",
                 (int)strcspn(UNOPS[o].name, "("), UNOPS[o].name);
        cr_assert_str_eq(tg_errmsg(ctx), want);
        tg_clear_error(ctx);
    }
    tg_tensor *x = rnd(ctx, TG_F64, (shp){1, {3}}, -1, 1), *s = tg_scalar(ctx, TG_F64, 1);
    cr_assert_null(tg_sigmoid_scaled(ctx, x, NULL, s));
    cr_assert_str_eq(tg_errmsg(ctx), "tg_sigmoid_scaled: argument c is NULL");
    tg_clear_error(ctx);
    cr_assert_null(tg_sigmoid_scaled(ctx, x, s, NULL));
    cr_assert_str_eq(tg_errmsg(ctx), "tg_sigmoid_scaled: argument beta is NULL");
    tg_clear_error(ctx);
    cr_assert_null(tg_sigmoid_scaled(ctx, NULL, s, s));
    cr_assert_str_eq(tg_errmsg(ctx), "tg_sigmoid_scaled: argument x is NULL");
    tg_clear_error(ctx);
    /* ctx NULL: NULL, nothing else to do */
    for (int o = 0; o < N_UNOPS; o++) cr_assert_null(UNOPS[o].f(NULL, x));
    cr_assert_null(tg_sigmoid_scaled(NULL, x, s, s));
    cr_assert(tg_ok(ctx));
}

Test(activations, i32_input_refused)
{
    tg_tensor *xi = tg_new(ctx, TG_I32, 2, (int64_t[]){2, 3});
    for (int o = 0; o < N_UNOPS; o++) {
        cr_assert_null(UNOPS[o].f(ctx, xi));
        cr_assert(strstr(tg_errmsg(ctx), "must be f32 or f64, got i32 [2,3]"), "%s: %s",
                  UNOPS[o].name, tg_errmsg(ctx));
        tg_clear_error(ctx);
    }
    tg_tensor *x = rnd(ctx, TG_F64, (shp){1, {3}}, -1, 1), *s = tg_scalar(ctx, TG_F64, 1);
    tg_tensor *si = tg_new(ctx, TG_I32, 0, NULL);
    cr_assert_null(tg_sigmoid_scaled(ctx, x, si, s));
    cr_assert(strstr(tg_errmsg(ctx), "tg_sigmoid_scaled: c must be f32 or f64"), "%s",
              tg_errmsg(ctx));
    tg_clear_error(ctx);
}

Test(activations, sigmoid_scaled_bad_shapes_and_dtypes)
{
    tg_tensor *x = rnd(ctx, TG_F64, (shp){2, {3, 4}}, -1, 1);
    tg_tensor *s = tg_scalar(ctx, TG_F64, 1);
    tg_tensor *c2 = rnd(ctx, TG_F64, (shp){1, {2}}, 0, 1);
    cr_assert_null(tg_sigmoid_scaled(ctx, x, c2, s));
    const char *m = tg_errmsg(ctx);
    cr_assert(strstr(m, "tg_sigmoid_scaled") && strstr(m, "one element"), "%s", m);
    cr_assert(strstr(m, "c is [2]") && strstr(m, "x is [3,4]") && strstr(m, "beta is []"), "%s",
              m);
    tg_clear_error(ctx);
    tg_tensor *b0 = tg_new(ctx, TG_F64, 2, (int64_t[]){1, 0}); /* no element at all */
    cr_assert_null(tg_sigmoid_scaled(ctx, x, s, b0));
    cr_assert(strstr(tg_errmsg(ctx), "beta is [1,0]"), "%s", tg_errmsg(ctx));
    tg_clear_error(ctx);
    /* mixed dtypes */
    tg_tensor *s32 = tg_scalar(ctx, TG_F32, 1);
    cr_assert_null(tg_sigmoid_scaled(ctx, x, s32, s));
    cr_assert(strstr(tg_errmsg(ctx), "tg_sigmoid_scaled: dtypes differ"), "%s", tg_errmsg(ctx));
    cr_assert(strstr(tg_errmsg(ctx), "f64 [3,4]") && strstr(tg_errmsg(ctx), "f32 []"), "%s",
              tg_errmsg(ctx));
    tg_clear_error(ctx);
    cr_assert_null(tg_sigmoid_scaled(ctx, x, s, s32));
    cr_assert(strstr(tg_errmsg(ctx), "dtypes differ"), "%s", tg_errmsg(ctx));
    tg_clear_error(ctx);
}

Test(activations, chain_after_error_keeps_first_message)
{
    tg_tensor *x = rnd(ctx, TG_F64, (shp){2, {3, 4}}, -1, 1);
    tg_tensor *bad = tg_sigmoid_scaled(ctx, x, x, x); /* c not one element */
    cr_assert_null(bad);
    char first[512];
    snprintf(first, sizeof first, "%s", tg_errmsg(ctx));
    cr_assert(strstr(first, "tg_sigmoid_scaled"));
    tg_tensor *y = tg_softmax(ctx, tg_relu(ctx, tg_tanh(ctx, tg_sigmoid(ctx, bad))));
    cr_assert_null(y);
    cr_assert_null(tg_activate(ctx, bad, TG_ACT_RELU));
    cr_assert_null(tg_log_softmax(ctx, bad));
    cr_assert_null(tg_leaky_relu(ctx, bad, 0.1));
    /* valid arguments after an error return NULL too, the message stays */
    cr_assert_null(tg_sigmoid(ctx, x));
    cr_assert_str_eq(tg_errmsg(ctx), first);
}

Test(activations, tensor_of_another_context)
{
    tg_ctx *other = tg_ctx_new(1);
    tg_tensor *xo = tg_new(other, TG_F64, 1, (int64_t[]){3});
    cr_assert_null(tg_tanh(ctx, xo));
    cr_assert(strstr(tg_errmsg(ctx), "tg_tanh") && strstr(tg_errmsg(ctx), "another context"),
              "%s", tg_errmsg(ctx));
    tg_ctx_free(other);
}
