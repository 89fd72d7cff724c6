/* SPDX-License-Identifier: MIT */
/* tests/ops/test_ops_unary.c: every one-input elementwise op (and the row-wise
 * softmax pair), from one table keyed by name. A row brings its op into every
 * test below:
 *   - values and gradients against PyTorch at five points of the op's range
 *     (the row's numbers, written by tests/ops_reference.py from its expression);
 *   - tg_gradcheck (full Jacobian, f64) on six shapes from 0-D to 4-D, and a
 *     non-zero gradient;
 *   - f32 against f64;
 *   - tg_apply of the op's tg_op (taken from the tape node of a direct call,
 *     with its attributes) against the direct call: the same bits, values and
 *     gradients;
 *   - the messages for a NULL and an i32 argument, and NULL without a ctx.
 * tg_step (gradient 0 by definition) is tested in test_ops_elementwise.c. */
#include <criterion/criterion.h>

#include <math.h>
#include <stdio.h>
#include <string.h>

#include "internal.h" /* a direct call's tape node: its tg_op and attributes */
#include "tg_test.h"

TG_TEST_SUITE(unary, 20261203); /* ctx: a fresh context per test */

/* points of the PyTorch comparison: x_k = lo + (hi - lo) (k + 0.5) / NREF,
 * and the weights of the loss sum_k W_k y_k whose gradient is compared */
#define NREF 5
static double ref_x(double lo, double hi, int k) { return lo + (hi - lo) * (k + 0.5) / NREF; }
static double ref_w(int k) { return (k + 1.0) / NREF; }

typedef tg_tensor *(*unop)(tg_ctx *, tg_tensor *);
typedef struct {
    const char *name;  /* the public function (as messages name it), then "(attributes)" */
    unop f;
    double lo, hi;     /* range of x: finite differences stay inside it */
    double kink[2];    /* points random inputs keep 0.05 away from (NAN: none) */
    const char *torch; /* the op in PyTorch, an expression of x (F is torch.nn.functional) */
    double y[NREF], dx[NREF]; /* PyTorch's y and d(sum_k W_k y_k)/dx at the points */
} unary_case;

#define NOKINK {NAN, NAN}

static tg_tensor *scale_m25(tg_ctx *c, tg_tensor *x) { return tg_scale(c, x, -2.5); }
static tg_tensor *pow_2(tg_ctx *c, tg_tensor *x) { return tg_pow(c, x, 2); }
static tg_tensor *pow_3(tg_ctx *c, tg_tensor *x) { return tg_pow(c, x, 3); }
static tg_tensor *pow_half(tg_ctx *c, tg_tensor *x) { return tg_pow(c, x, 0.5); }
static tg_tensor *pow_m1(tg_ctx *c, tg_tensor *x) { return tg_pow(c, x, -1); }
static tg_tensor *leaky_02(tg_ctx *c, tg_tensor *x) { return tg_leaky_relu(c, x, 0.2); }
static tg_tensor *leaky_m05(tg_ctx *c, tg_tensor *x) { return tg_leaky_relu(c, x, -0.5); }
static tg_tensor *clamp_m05_08(tg_ctx *c, tg_tensor *x) { return tg_clamp(c, x, -0.5, 0.8); }

/* The table: one row per op (or per attribute worth its own row). The value
 * lists are written by `/usr/bin/python3 tests/ops_reference.py --update`. */
static const unary_case UNARY[] = {
    {"tg_scale(-2.5)", scale_m25, -2, 2, NOKINK, "-2.5 * x",
     {4.0, 2.0, -0.0, -1.9999999999999996, -4.0},
     {-0.5, -1.0, -1.5, -2.0, -2.5}},
    {"tg_neg", tg_neg, -2, 2, NOKINK, "-x",
     {1.6, 0.8, -0.0, -0.7999999999999998, -1.6},
     {-0.2, -0.4, -0.6, -0.8, -1.0}},
    {"tg_exp", tg_exp, -3, 3, NOKINK, "torch.exp(x)",
     {0.09071795328941251, 0.30119421191220214, 1.0, 3.320116922736548, 11.023176380641605},
     {0.018143590657882503, 0.12047768476488085, 0.6, 2.6560935381892388, 11.023176380641605}},
    {"tg_log", tg_log, 0.2, 5, NOKINK, "torch.log(x)",
     {-0.38566248081198473, 0.494696241836107, 0.9555114450274363, 1.2697605448639393,
      1.5085119938441398},
     {0.2941176470588236, 0.24390243902439027, 0.23076923076923075, 0.2247191011235955,
      0.22123893805309736}},
    {"tg_sqrt", tg_sqrt, 0.2, 3, NOKINK, "torch.sqrt(x)",
     {0.6928203230275509, 1.0198039027185568, 1.2649110640673518, 1.4696938456699067,
      1.6492422502470643},
     {0.14433756729740646, 0.19611613513818407, 0.23717082451262844, 0.27216552697590873,
      0.3031695312954162}},
    {"tg_abs", tg_abs, -2, 2, {0, NAN}, "torch.abs(x)",
     {1.6, 0.8, 0.0, 0.7999999999999998, 1.6},
     {-0.2, -0.4, 0.0, 0.8, 1.0}},
    {"tg_clamp(-0.5,0.8)", clamp_m05_08, -2, 2, {-0.5, 0.8}, "torch.clamp(x, -0.5, 0.8)",
     {-0.5, -0.5, 0.0, 0.7999999999999998, 0.8},
     {0.0, 0.0, 0.6, 0.8, 0.0}},
    {"tg_pow(2)", pow_2, -2, 2, NOKINK, "x ** 2",
     {2.5600000000000005, 0.6400000000000001, 0.0, 0.6399999999999997, 2.5600000000000005},
     {-0.6400000000000001, -0.6400000000000001, 0.0, 1.2799999999999998, 3.2}},
    {"tg_pow(3)", pow_3, -2, 2, NOKINK, "x ** 3",
     {-4.096000000000001, -0.5120000000000001, 0.0, 0.5119999999999997, 4.096000000000001},
     {1.5360000000000005, 0.7680000000000002, 0.0, 1.5359999999999994, 7.6800000000000015}},
    {"tg_pow(0.5)", pow_half, 0.3, 3, NOKINK, "x ** 0.5",
     {0.754983443527075, 1.0535653752852738, 1.284523257866513, 1.4798648586948742,
      1.6522711641858305},
     {0.13245323570650439, 0.18983159915049982, 0.23354968324845687, 0.2702949513597944,
      0.30261376633440124}},
    {"tg_pow(-1)", pow_m1, 0.5, 2, NOKINK, "x ** -1",
     {1.5384615384615383, 1.0526315789473684, 0.8, 0.6451612903225806, 0.5405405405405405},
     {-0.47337278106508873, -0.443213296398892, -0.384, -0.3329864724245577,
      -0.2921840759678597}},
    {"tg_identity", tg_identity, -2, 2, NOKINK, "x.clone()",
     {-1.6, -0.8, 0.0, 0.7999999999999998, 1.6},
     {0.2, 0.4, 0.6, 0.8, 1.0}},
    {"tg_sigmoid", tg_sigmoid, -2.5, 2.5, NOKINK, "torch.sigmoid(x)",
     {0.11920292202211755, 0.2689414213699951, 0.5, 0.7310585786300049, 0.8807970779778823},
     {0.020998717080701303, 0.07864477329659274, 0.15, 0.15728954659318548,
      0.10499358540350662}},
    {"tg_tanh", tg_tanh, -2.5, 2.5, NOKINK, "torch.tanh(x)",
     {-0.9640275800758169, -0.7615941559557649, 0.0, 0.7615941559557649, 0.9640275800758169},
     {0.014130164970632887, 0.16798973664561045, 0.6, 0.3359794732912209, 0.07065082485316443}},
    {"tg_relu", tg_relu, -2.5, 2.5, {0, NAN}, "torch.relu(x)",
     {0.0, 0.0, 0.0, 1.0, 2.0},
     {0.0, 0.0, 0.0, 0.8, 1.0}},
    {"tg_leaky_relu(0.2)", leaky_02, -2.5, 2.5, {0, NAN}, "F.leaky_relu(x, 0.2)",
     {-0.4, -0.2, 0.0, 1.0, 2.0},
     {0.04000000000000001, 0.08000000000000002, 0.12, 0.8, 1.0}},
    {"tg_leaky_relu(-0.5)", leaky_m05, -2.5, 2.5, {0, NAN}, "F.leaky_relu(x, -0.5)",
     {1.0, 0.5, -0.0, 1.0, 2.0},
     {-0.1, -0.2, -0.3, 0.8, 1.0}},
    {"tg_gelu", tg_gelu, -3, 3, NOKINK, "F.gelu(x)",
     {-0.019674086219030773, -0.13808360426604993, 0.0, 1.0619163957339504, 2.38032591378097},
     {-0.00910986735660536, -0.04718143830325891, 0.3, 0.8943628766065178, 1.0455493367830269}},
    {"tg_softplus", tg_softplus, -3, 3, NOKINK, "F.softplus(x)",
     {0.08683615215394969, 0.26328246733803123, 0.6931471805599453, 1.4632824673380314,
      2.48683615215395},
     {0.016634539298784477, 0.09259008660039295, 0.3, 0.6148198267992142, 0.9168273035060777}},
    {"tg_softmax", tg_softmax, -2.5, 2.5, NOKINK, "torch.softmax(x, -1)",
     {0.011656230956039609, 0.031684920796124276, 0.08612854443626873, 0.23412165725273668,
      0.6364086465588309},
     {-0.008047325631884795, -0.015537914873620294, -0.025010722765851826,
      -0.02116186176049462, 0.0697578250318513}},
    {"tg_log_softmax", tg_log_softmax, -2.5, 2.5, NOKINK, "torch.log_softmax(x, -1)",
     {-4.451914395937593, -3.4519143959375933, -2.4519143959375933, -1.4519143959375933,
      -0.45191439593759325},
     {0.1650313071318812, 0.30494523761162723, 0.3416143666911938, 0.09763502824179018,
      -0.9092259396764927}},
};
#define N_UNARY ((int)(sizeof UNARY / sizeof UNARY[0]))

/* the row named `name` (the whole label, attributes included) */
#define unary_named(name) ROW_NAMED(UNARY, name)

/* the public function's name of a row: its label up to "(" */
static void fn_name(const unary_case *u, char *buf, size_t size)
{
    snprintf(buf, size, "%.*s", (int)strcspn(u->name, "("), u->name);
}

/* the row-wise ops, whose result mixes a row's elements */
static int row_op(const unary_case *u) { return u->f == tg_softmax || u->f == tg_log_softmax; }

static tg_tensor *fn_unary(tg_ctx *c, tg_tensor *const *in, void *user)
{
    return ((const unary_case *)user)->f(c, in[0]);
}

/* Move every element of x at least 0.05 away from the row's kinks. */
static void away_from_kinks(const unary_case *u, tg_tensor *x)
{
    for (int64_t i = 0; i < tg_numel(x); i++)
        for (int k = 0; k < 2; k++) {
            double v = at(x, i), d = v - u->kink[k];
            if (!isnan(u->kink[k]) && fabs(d) < 0.05)
                set_at(x, i, d < 0 ? u->kink[k] - 0.05 : u->kink[k] + 0.05);
        }
}

/* the reference point where PyTorch's gradient is largest */
static double steepest_point(const unary_case *u)
{
    int best = 0;
    for (int k = 1; k < NREF; k++)
        if (fabs(u->dx[k]) / ref_w(k) > fabs(u->dx[best]) / ref_w(best))
            best = k;
    return ref_x(u->lo, u->hi, best);
}

static const shp SHAPES[] = {
    {0, {0}}, {1, {1}}, {1, {5}}, {2, {3, 4}}, {3, {2, 3, 4}}, {4, {2, 1, 3, 2}},
};
#define N_SHAPES ((int)(sizeof SHAPES / sizeof SHAPES[0]))

Test(unary, table_is_complete_and_keyed_by_name)
{
    for (int o = 0; o < N_UNARY; o++) {
        for (int p = 0; p < o; p++)
            cr_assert_str_neq(UNARY[o].name, UNARY[p].name, "two rows named %s", UNARY[o].name);
        int filled = 0;
        for (int k = 0; k < NREF; k++) filled |= UNARY[o].y[k] != 0 || UNARY[o].dx[k] != 0;
        cr_assert(filled, "%s: no PyTorch values: run tests/ops_reference.py --update",
                  UNARY[o].name);
    }
    cr_assert_eq(unary_named("tg_softmax")->f, tg_softmax);
}

Test(unary, values_and_gradients_match_pytorch)
{
    for (int o = 0; o < N_UNARY; o++) {
        const unary_case *u = &UNARY[o];
        double xv[NREF], wv[NREF];
        for (int k = 0; k < NREF; k++) {
            xv[k] = ref_x(u->lo, u->hi, k);
            wv[k] = ref_w(k);
        }
        tg_tensor *x = from1(ctx, TG_F64, NREF, xv), *w = from1(ctx, TG_F64, NREF, wv);
        tg_set_requires_grad(x, 1);
        tg_tensor *y = u->f(ctx, x);
        tg_backward(ctx, tg_sum(ctx, tg_mul(ctx, y, w)));
        cr_assert(tg_ok(ctx), "%s: %s", u->name, tg_errmsg(ctx));
        for (int k = 0; k < NREF; k++) {
            cr_assert(fabs(at(y, k) - u->y[k]) <= 1e-12 * (1 + fabs(u->y[k])),
                      "%s y at %g: %.17g, PyTorch %.17g", u->name, xv[k], at(y, k), u->y[k]);
            cr_assert(fabs(grad_at(x, k) - u->dx[k]) <= 1e-12 * (1 + fabs(u->dx[k])),
                      "%s dx at %g: %.17g, PyTorch %.17g", u->name, xv[k], grad_at(x, k),
                      u->dx[k]);
        }
        tg_reset(ctx);
    }
}

static void gradcheck_unary(tg_ctx *c, const void *row, shp s, const char *what)
{
    const unary_case *u = row;
    tg_tensor *x = rnd(c, TG_F64, s, u->lo, u->hi);
    away_from_kinks(u, x);
    set_at(x, 0, steepest_point(u)); /* one element where the gradient is not 0 */
    tg_tensor *in[1] = {x};
    gradcheck_ok(c, fn_unary, (void *)u, in, 1, what);
    /* a row op over rows of length 1 is constant: a zero gradient is right */
    int64_t last = s.ndim ? s.shape[s.ndim - 1] : 1;
    if (!(row_op(u) && last == 1))
        assert_grads_nonzero(c, fn_unary, (void *)u, in, 1, LOSS_MSE_W, what);
}

Test(unary, gradcheck_every_shape)
{
    EACH_ROW_AND_SHAPE(ctx, UNARY, SHAPES, gradcheck_unary);
}

Test(unary, f32_agrees_with_f64)
{
    for (int o = 0; o < N_UNARY; o++) {
        const unary_case *u = &UNARY[o];
        tg_tensor *x64 = rnd(ctx, TG_F64, (shp){2, {4, 33}}, u->lo, u->hi);
        away_from_kinks(u, x64);
        tg_tensor *x32 = convert(ctx, x64, TG_F32);
        tg_set_requires_grad(x64, 1);
        tg_set_requires_grad(x32, 1);
        tg_tensor *y64 = u->f(ctx, x64), *y32 = u->f(ctx, x32);
        tg_backward(ctx, tg_sum(ctx, y64));
        tg_backward(ctx, tg_sum(ctx, y32));
        cr_assert(tg_ok(ctx), "%s: %s", u->name, tg_errmsg(ctx));
        for (int64_t i = 0; i < tg_numel(x64); i++) {
            double a = at(y64, i), b = at(y32, i), ga = grad_at(x64, i), gb = grad_at(x32, i);
            cr_assert(fabs(a - b) <= 4e-6 * (1 + fabs(a)), "%s y[%lld]: %g vs %g", u->name,
                      (long long)i, a, b);
            cr_assert(fabs(ga - gb) <= 4e-6 * (1 + fabs(ga)), "%s dx[%lld]: %g vs %g",
                      u->name, (long long)i, ga, gb);
        }
        tg_reset(ctx);
    }
}

Test(unary, apply_of_the_op_is_the_direct_call)
{
    for (int o = 0; o < N_UNARY; o++)
        for (int d = 0; d < 2; d++) {
            tg_tensor *in[1] = {rnd(ctx, d ? TG_F32 : TG_F64, (shp){2, {3, 5}}, UNARY[o].lo,
                                    UNARY[o].hi)};
            assert_apply_matches(ctx, fn_unary, (void *)&UNARY[o], in, 1, UNARY[o].name);
            tg_reset(ctx);
        }
}

Test(unary, null_and_i32_arguments)
{
    for (int o = 0; o < N_UNARY; o++) {
        char fn[64];
        fn_name(&UNARY[o], fn, sizeof fn);
        assert_x_arg_errors(ctx, &(named_unop){fn, UNARY[o].f});
    }
    cr_assert(tg_ok(ctx));
}

/* ---- edge cases of single ops ------------------------------------------- */

Test(unary, sqrt_abs_clamp_gelu_edges)
{
    /* sqrt at 0: y 0, gradient +inf (as PyTorch); abs at 0: gradient 0 */
    const double z[2] = {0, 4};
    tg_tensor *x = from1(ctx, TG_F64, 2, z);
    tg_set_requires_grad(x, 1);
    tg_backward(ctx, tg_sum(ctx, tg_sqrt(ctx, x)));
    cr_assert_eq(grad_at(x, 0), INFINITY);
    cr_assert_eq(grad_at(x, 1), 0.25);
    tg_tensor *xa = from1(ctx, TG_F64, 2, (double[]){0, -3});
    tg_set_requires_grad(xa, 1);
    tg_backward(ctx, tg_sum(ctx, tg_abs(ctx, xa)));
    cr_assert_eq(grad_at(xa, 0), 0.0);
    cr_assert_eq(grad_at(xa, 1), -1.0);
    /* clamp: both bounds included in the gradient; NaN passes with gradient 0 */
    tg_tensor *xc = from1(ctx, TG_F64, 4, (double[]){-0.5, 0.8, 0.9, NAN});
    tg_set_requires_grad(xc, 1);
    tg_tensor *yc = tg_clamp(ctx, xc, -0.5, 0.8);
    tg_backward(ctx, tg_sum(ctx, yc));
    cr_assert(tg_ok(ctx), "%s", tg_errmsg(ctx));
    cr_assert_eq(at(yc, 2), 0.8);
    cr_assert(isnan(at(yc, 3)));
    const double want[4] = {1, 1, 0, 0};
    for (int i = 0; i < 4; i++) cr_assert_eq(grad_at(xc, i), want[i], "clamp dx[%d]", i);
    /* gelu far out: x and 0, finite slopes 1 and 0 */
    tg_tensor *xg = from1(ctx, TG_F32, 2, (double[]){40, -40});
    tg_set_requires_grad(xg, 1);
    tg_tensor *yg = tg_gelu(ctx, xg);
    tg_backward(ctx, tg_sum(ctx, yg));
    cr_assert_eq(at(yg, 0), 40.0);
    cr_assert_eq(at(yg, 1), 0.0);
    cr_assert_eq(grad_at(xg, 0), 1.0);
    cr_assert_eq(grad_at(xg, 1), 0.0);
    /* clamp's bounds */
    cr_assert_null(tg_clamp(ctx, xc, 1, 0));
    assert_err(ctx, "clamp lo > hi", "tg_clamp: needs lo <= hi, got lo 1 and hi 0 (x [4])", NULL,
               NULL);
    cr_assert_null(tg_clamp(ctx, xc, NAN, 0));
    assert_err(ctx, "clamp NaN", "tg_clamp: needs lo <= hi", "lo nan", NULL);
}
