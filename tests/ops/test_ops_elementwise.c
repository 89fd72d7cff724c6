/* SPDX-License-Identifier: MIT */
/* tests/ops/test_ops_elementwise.c: tg_add, tg_sub, tg_mul, tg_div (broadcasting),
 * tg_scale, tg_neg, tg_exp, tg_log, tg_pow, tg_identity, tg_step.
 * Gradient checks in f64 over the full Jacobian on many shapes, forward values
 * against hand-computed ones and a naive broadcasting loop, f32 against f64,
 * fan-out, and every kind of bad input. */
#include <criterion/criterion.h>

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "tapegrad.h"
#include "tg_test.h"

/* ---- helpers ------------------------------------------------------------ */

TG_TEST_SUITE(elementwise, 20240607); /* ctx: a fresh context per test */

/* ---- binary ops --------------------------------------------------------- */

typedef tg_tensor *(*binop)(tg_ctx *, tg_tensor *, tg_tensor *);
typedef struct {
    binop f;
    const char *name;
} binop_info;

static const binop_info BINOPS[] = {
    {tg_add, "tg_add"}, {tg_sub, "tg_sub"}, {tg_mul, "tg_mul"}, {tg_div, "tg_div"}};
#define N_BINOPS (int)(sizeof BINOPS / sizeof BINOPS[0])

static tg_tensor *fn_binop(tg_ctx *c, tg_tensor *const *in, void *user)
{
    return ((const binop_info *)user)->f(c, in[0], in[1]);
}

/* pairs of shapes that broadcast, and the shape they broadcast to */
typedef struct {
    shp a, b, out;
} bcase;

static const bcase BCASES[] = {
    {{2, {3, 4}}, {1, {4}}, {2, {3, 4}}},                   /* row vector */
    {{1, {4}}, {2, {3, 4}}, {2, {3, 4}}},                   /* row vector first */
    {{2, {3, 1}}, {2, {1, 4}}, {2, {3, 4}}},                /* outer product */
    {{3, {2, 3, 4}}, {2, {3, 1}}, {3, {2, 3, 4}}},          /* column, 3-D */
    {{0, {0}}, {2, {2, 3}}, {2, {2, 3}}},                   /* 0-dim scalar */
    {{2, {2, 3}}, {0, {0}}, {2, {2, 3}}},                   /* scalar second */
    {{1, {1}}, {1, {5}}, {1, {5}}},                         /* [1] + [5] */
    {{4, {2, 1, 3, 1}}, {4, {1, 4, 1, 2}}, {4, {2, 4, 3, 2}}}, /* 4-D alternating */
    {{4, {2, 3, 1, 2}}, {2, {4, 1}}, {4, {2, 3, 4, 2}}},    /* 4-D, middle broadcast */
    {{2, {2, 5}}, {2, {2, 5}}, {2, {2, 5}}},                /* same shape, non-square */
    {{1, {1}}, {1, {1}}, {1, {1}}},                         /* one element */
    {{0, {0}}, {0, {0}}, {0, {0}}},                         /* two scalars */
    {{2, {5, 1}}, {1, {3}}, {2, {5, 3}}},                   /* [5,1] x [3] */
    {{3, {1, 1, 7}}, {1, {7}}, {3, {1, 1, 7}}},             /* leading ones */
};
#define N_BCASES (int)(sizeof BCASES / sizeof BCASES[0])

static double ref_binop(int op, double u, double v)
{
    switch (op) {
    case 0: return u + v;
    case 1: return u - v;
    case 2: return u * v;
    default: return u / v;
    }
}

/* flat index into t (shape s) of the output multi-index idx (output ndim nd) */
static int64_t bidx(shp s, int nd, const int64_t *idx)
{
    int64_t off = 0;
    for (int k = 0; k < s.ndim; k++) {
        int64_t i = idx[k + nd - s.ndim];
        off = off * s.shape[k] + (s.shape[k] == 1 ? 0 : i);
    }
    return off;
}

/* the forward against a naive broadcasting loop, in f32 and f64 */
Test(elementwise, binary_forward_matches_naive_broadcast)
{
    for (int dti = 0; dti < 2; dti++) {
        tg_dtype dt = dti ? TG_F64 : TG_F32;
        for (int op = 0; op < N_BINOPS; op++) {
            for (int k = 0; k < N_BCASES; k++) {
                const bcase *bc = &BCASES[k];
                tg_tensor *a = rnd(ctx, dt, bc->a, -2, 2);
                tg_tensor *b = rnd(ctx, dt, bc->b, 0.5, 2);
                tg_tensor *y = BINOPS[op].f(ctx, a, b);
                cr_assert_not_null(y, "%s case %d: %s", BINOPS[op].name, k, tg_errmsg(ctx));
                cr_assert_eq(tg_ndim(y), bc->out.ndim, "%s case %d", BINOPS[op].name, k);
                int64_t n = 1;
                for (int d = 0; d < bc->out.ndim; d++) {
                    cr_assert_eq(tg_dim(y, d), bc->out.shape[d]);
                    n *= bc->out.shape[d];
                }
                cr_assert_eq(tg_numel(y), n);
                for (int64_t i = 0; i < n; i++) {
                    int64_t idx[4] = {0}, r = i;
                    for (int d = bc->out.ndim - 1; d >= 0; d--) {
                        idx[d] = r % bc->out.shape[d];
                        r /= bc->out.shape[d];
                    }
                    double u = at(a, bidx(bc->a, bc->out.ndim, idx));
                    double v = at(b, bidx(bc->b, bc->out.ndim, idx));
                    double want = ref_binop(op, u, v);
                    if (dt == TG_F32)
                        want = (double)(float)ref_binop(op, (float)u, (float)v);
                    cr_assert_float_eq(at(y, i), want, dt == TG_F32 ? 1e-6 : 1e-14,
                                       "%s case %d element %lld: %g vs %g", BINOPS[op].name, k,
                                       (long long)i, at(y, i), want);
                }
                tg_reset(ctx);
            }
        }
    }
}

/* every binary op, every broadcasting case, full Jacobian in f64 */
Test(elementwise, binary_gradcheck_all_broadcast_cases)
{
    for (int op = 0; op < N_BINOPS; op++) {
        for (int k = 0; k < N_BCASES; k++) {
            const bcase *bc = &BCASES[k];
            tg_tensor *in[2] = {rnd(ctx, TG_F64, bc->a, -2, 2), rnd(ctx, TG_F64, bc->b, 0.5, 2)};
            if (op == 3) { /* denominators away from 0, of both signs */
                double *pb = tg_data(in[1]);
                for (int64_t i = 0; i < tg_numel(in[1]); i += 2)
                    pb[i] = -pb[i];
            }
            char what[64];
            snprintf(what, sizeof what, "%s case %d", BINOPS[op].name, k);
            gradcheck_ok(ctx, fn_binop, (void *)&BINOPS[op], in, 2, what);
            assert_grads_nonzero(ctx, fn_binop, (void *)&BINOPS[op], in, 2, LOSS_SUM_W, NULL);
            tg_reset(ctx);
        }
    }
}

/* only one input requires a gradient: the other gets none */
Test(elementwise, binary_grad_only_where_required)
{
    shp s34 = {2, {3, 4}}, s4 = {1, {4}};
    tg_tensor *a = rnd(ctx, TG_F64, s34, -1, 1), *b = rnd(ctx, TG_F64, s4, 1, 2);
    tg_set_requires_grad(b, 1);
    tg_backward(ctx, tg_sum(ctx, tg_mul(ctx, a, b)));
    cr_assert(tg_ok(ctx), "%s", tg_errmsg(ctx));
    cr_assert_null(tg_grad(a));
    for (int j = 0; j < 4; j++) {
        double want = 0;
        for (int i = 0; i < 3; i++)
            want += at(a, i * 4 + j);
        cr_assert_float_eq(grad_at(b, j), want, 1e-14);
    }
}

/* the backward's reduction over broadcast axes, by hand:
 * loss = sum(w * (a op b)) with a [3,4], b [4] */
Test(elementwise, broadcast_backward_reduces_by_hand)
{
    shp s34 = {2, {3, 4}}, s4 = {1, {4}};
    for (int op = 0; op < N_BINOPS; op++) {
        tg_tensor *a = rnd(ctx, TG_F64, s34, -1, 1), *b = rnd(ctx, TG_F64, s4, 0.5, 2);
        tg_tensor *w = rnd(ctx, TG_F64, s34, -1, 1);
        tg_set_requires_grad(a, 1);
        tg_set_requires_grad(b, 1);
        tg_backward(ctx, tg_sum(ctx, tg_mul(ctx, BINOPS[op].f(ctx, a, b), w)));
        cr_assert(tg_ok(ctx), "%s", tg_errmsg(ctx));
        for (int j = 0; j < 4; j++) {
            double bj = at(b, j), dbj = 0;
            for (int i = 0; i < 3; i++) {
                double aij = at(a, i * 4 + j), wij = at(w, i * 4 + j);
                double da = op == 0 ? wij : op == 1 ? wij : op == 2 ? wij * bj : wij / bj;
                double db = op == 0 ? wij : op == 1 ? -wij : op == 2 ? wij * aij
                                                                    : -wij * aij / (bj * bj);
                dbj += db;
                cr_assert_float_eq(grad_at(a, i * 4 + j), da, 1e-13, "%s da", BINOPS[op].name);
            }
            cr_assert_float_eq(grad_at(b, j), dbj, 1e-13, "%s db[%d]", BINOPS[op].name, j);
        }
        tg_reset(ctx);
    }
}

Test(elementwise, binary_forward_by_hand)
{
    const double a[3] = {1, 2, 3}, ten = 10, four[2] = {4, -8};
    tg_tensor *x = from1(ctx, TG_F64, 3, a), *s = from1(ctx, TG_F64, 1, &ten);
    tg_tensor *y = tg_add(ctx, x, s);
    cr_assert_float_eq(at(y, 0), 11, 0);
    cr_assert_float_eq(at(y, 2), 13, 0);
    y = tg_sub(ctx, s, x);
    cr_assert_float_eq(at(y, 0), 9, 0);
    cr_assert_float_eq(at(y, 2), 7, 0);
    /* [2,1] * [1,3] -> [2,3] outer product */
    int64_t s21[2] = {2, 1}, s13[2] = {1, 3};
    tg_tensor *col = tg_from(ctx, TG_F64, 2, s21, four), *row = tg_from(ctx, TG_F64, 2, s13, a);
    y = tg_mul(ctx, col, row);
    const double want[6] = {4, 8, 12, -8, -16, -24};
    cr_assert_eq(tg_dim(y, 0), 2);
    cr_assert_eq(tg_dim(y, 1), 3);
    for (int i = 0; i < 6; i++)
        cr_assert_float_eq(at(y, i), want[i], 0);
    y = tg_div(ctx, col, row);
    cr_assert_float_eq(at(y, 1), 2.0, 0);
    cr_assert_float_eq(at(y, 5), -8.0 / 3.0, 1e-15);
    /* 0-dim with 0-dim stays 0-dim */
    y = tg_mul(ctx, tg_scalar(ctx, TG_F64, 3), tg_scalar(ctx, TG_F64, -2));
    cr_assert_eq(tg_ndim(y), 0);
    cr_assert_float_eq(tg_item(y), -6, 0);
    /* division by zero is C's: inf, and 0/0 NaN */
    const double z[2] = {0, 0}, n2[2] = {1, 0};
    y = tg_div(ctx, from1(ctx, TG_F64, 2, n2), from1(ctx, TG_F64, 2, z));
    cr_assert(isinf(at(y, 0)) && at(y, 0) > 0);
    cr_assert(isnan(at(y, 1)));
    cr_assert(tg_ok(ctx));
}

/* a larger case goes through the same kernels with long rows */
Test(elementwise, binary_large_rows_match_naive)
{
    shp a_s = {2, {37, 300}}, b_s = {1, {300}}, c_s = {2, {37, 1}};
    for (int dti = 0; dti < 2; dti++) {
        tg_dtype dt = dti ? TG_F64 : TG_F32;
        tg_tensor *a = rnd(ctx, dt, a_s, -1, 1), *b = rnd(ctx, dt, b_s, 1, 2),
                  *c = rnd(ctx, dt, c_s, 1, 2);
        tg_tensor *y = tg_div(ctx, tg_mul(ctx, a, b), c);
        for (int i = 0; i < 37; i++)
            for (int j = 0; j < 300; j += 7) {
                double want = at(a, i * 300 + j) * at(b, j) / at(c, i);
                cr_assert_float_eq(at(y, i * 300 + j), want, dt == TG_F32 ? 1e-5 : 1e-14);
            }
    }
}

/* ---- unary ops ---------------------------------------------------------- */

typedef enum { U_SCALE, U_NEG, U_EXP, U_LOG, U_POW, U_IDENTITY, U_STEP, U_COUNT } ukind;
typedef struct {
    ukind k;
    double p;
} uop;

static tg_tensor *apply_u(tg_ctx *c, const uop *u, tg_tensor *x)
{
    switch (u->k) {
    case U_SCALE: return tg_scale(c, x, u->p);
    case U_NEG: return tg_neg(c, x);
    case U_EXP: return tg_exp(c, x);
    case U_LOG: return tg_log(c, x);
    case U_POW: return tg_pow(c, x, u->p);
    case U_IDENTITY: return tg_identity(c, x);
    default: return tg_step(c, x);
    }
}

static tg_tensor *fn_unary(tg_ctx *c, tg_tensor *const *in, void *user)
{
    return apply_u(c, user, in[0]);
}

static const shp USHAPES[] = {
    {0, {0}}, {1, {1}}, {1, {5}}, {2, {3, 4}}, {3, {2, 3, 4}}, {4, {2, 1, 3, 2}},
};
#define N_USHAPES (int)(sizeof USHAPES / sizeof USHAPES[0])

static void unary_gradcheck(uop u, double lo, double hi, const char *name)
{
    for (int k = 0; k < N_USHAPES; k++) {
        tg_tensor *in[1] = {rnd(ctx, TG_F64, USHAPES[k], lo, hi)};
        char what[64];
        snprintf(what, sizeof what, "%s p=%g shape %d", name, u.p, k);
        gradcheck_ok(ctx, fn_unary, &u, in, 1, what);
        assert_grads_nonzero(ctx, fn_unary, &u, in, 1, LOSS_SUM_W, NULL);
        tg_reset(ctx);
    }
}

Test(elementwise, scale_gradcheck) { unary_gradcheck((uop){U_SCALE, -2.5}, -2, 2, "tg_scale"); }
Test(elementwise, neg_gradcheck) { unary_gradcheck((uop){U_NEG, 0}, -2, 2, "tg_neg"); }
Test(elementwise, exp_gradcheck) { unary_gradcheck((uop){U_EXP, 0}, -3, 3, "tg_exp"); }
Test(elementwise, log_gradcheck) { unary_gradcheck((uop){U_LOG, 0}, 0.2, 5, "tg_log"); }
Test(elementwise, identity_gradcheck)
{
    unary_gradcheck((uop){U_IDENTITY, 0}, -2, 2, "tg_identity");
}
Test(elementwise, pow_gradcheck)
{
    unary_gradcheck((uop){U_POW, 2}, -2, 2, "tg_pow");
    unary_gradcheck((uop){U_POW, 3}, -2, 2, "tg_pow");
    unary_gradcheck((uop){U_POW, 0.5}, 0.3, 3, "tg_pow");
    unary_gradcheck((uop){U_POW, -1}, 0.5, 2, "tg_pow");
    unary_gradcheck((uop){U_POW, -1}, -2, -0.5, "tg_pow");
    unary_gradcheck((uop){U_POW, 1}, -2, 2, "tg_pow");
    unary_gradcheck((uop){U_POW, 2.7}, 0.3, 2, "tg_pow");
}

/* exp near saturation: large values in f64, values and gradient */
Test(elementwise, exp_large_values)
{
    shp s3 = {1, {3}};
    tg_tensor *x = rnd(ctx, TG_F64, s3, 19.5, 20.5);
    double *px = tg_data(x);
    px[0] = 20;
    uop u = {U_EXP, 0};
    tg_tensor *in[1] = {x};
    gradcheck_ok(ctx, fn_unary, &u, in, 1, "tg_exp at 20");
    tg_set_requires_grad(x, 1);
    tg_tensor *y = tg_exp(ctx, x);
    cr_assert_float_eq(at(y, 0), exp(20.0), 1e-6);
    tg_backward(ctx, tg_sum(ctx, y));
    cr_assert_float_eq(grad_at(x, 0), exp(20.0), 1e-6);
    /* f32 overflows where C's expf does, f64 does not */
    const double big[2] = {88.0, 89.0};
    tg_tensor *yf = tg_exp(ctx, from1(ctx, TG_F32, 2, big));
    cr_assert(isfinite(at(yf, 0)));
    cr_assert(isinf(at(yf, 1)));
    tg_tensor *yd = tg_exp(ctx, from1(ctx, TG_F64, 2, big));
    cr_assert(isfinite(at(yd, 1)));
    cr_assert_float_eq(at(yd, 1) / exp(89.0), 1.0, 1e-15);
}

Test(elementwise, unary_forward_by_hand)
{
    const double v[4] = {0, 1, 2, 4};
    tg_tensor *x = from1(ctx, TG_F64, 4, v);
    tg_tensor *y = tg_scale(ctx, x, -3);
    cr_assert_float_eq(at(y, 3), -12, 0);
    y = tg_neg(ctx, x);
    cr_assert_float_eq(at(y, 2), -2, 0);
    y = tg_exp(ctx, x);
    cr_assert_float_eq(at(y, 0), 1, 0);
    cr_assert_float_eq(at(y, 1), exp(1.0), 1e-15);
    y = tg_log(ctx, x);
    cr_assert(isinf(at(y, 0)) && at(y, 0) < 0);
    cr_assert_float_eq(at(y, 1), 0, 0);
    cr_assert_float_eq(at(y, 3), 2 * log(2.0), 1e-15);
    y = tg_pow(ctx, x, 3);
    cr_assert_float_eq(at(y, 2), 8, 1e-15);
    y = tg_pow(ctx, x, 0.5);
    cr_assert_float_eq(at(y, 3), 2, 1e-15);
    y = tg_pow(ctx, x, -1);
    cr_assert(isinf(at(y, 0)));
    cr_assert_float_eq(at(y, 3), 0.25, 1e-15);
    y = tg_pow(ctx, x, 0);
    cr_assert_float_eq(at(y, 0), 1, 0); /* 0^0 = 1 as in C */
    y = tg_identity(ctx, x);
    cr_assert_neq(tg_data(y), tg_data(x));
    for (int i = 0; i < 4; i++)
        cr_assert_float_eq(at(y, i), v[i], 0);
    /* fractional power of a negative number: NaN, as C's pow */
    const double neg = -4;
    y = tg_pow(ctx, from1(ctx, TG_F64, 1, &neg), 0.5);
    cr_assert(isnan(at(y, 0)));
    /* log of a negative number: NaN */
    y = tg_log(ctx, from1(ctx, TG_F64, 1, &neg));
    cr_assert(isnan(at(y, 0)));
    cr_assert(tg_ok(ctx));
}

/* p = 2 at x = 0: value 0, gradient 0 (no NaN from 0^(p-1)) */
Test(elementwise, pow_two_at_zero)
{
    const double v[3] = {0, -1.5, 3};
    for (int dti = 0; dti < 2; dti++) {
        tg_tensor *x = from1(ctx, dti ? TG_F64 : TG_F32, 3, v);
        tg_set_requires_grad(x, 1);
        tg_backward(ctx, tg_sum(ctx, tg_pow(ctx, x, 2)));
        cr_assert(tg_ok(ctx), "%s", tg_errmsg(ctx));
        cr_assert_float_eq(grad_at(x, 0), 0, 0);
        cr_assert_float_eq(grad_at(x, 1), -3, 0);
        cr_assert_float_eq(grad_at(x, 2), 6, 0);
        /* p = 3 at 0 too */
        tg_tensor *x3 = from1(ctx, dti ? TG_F64 : TG_F32, 3, v);
        tg_set_requires_grad(x3, 1);
        tg_backward(ctx, tg_sum(ctx, tg_pow(ctx, x3, 3)));
        cr_assert_float_eq(grad_at(x3, 0), 0, 0);
        cr_assert_float_eq(grad_at(x3, 2), 27, 1e-5);
    }
}

/* ---- tg_step ------------------------------------------------------------ */

Test(elementwise, step_forward_and_zero_gradient)
{
    const double v[6] = {-2, -1e-300, 0, -0.0, 1e-300, 3};
    const double want[6] = {0, 0, 1, 1, 1, 1};
    for (int dti = 0; dti < 2; dti++) {
        tg_tensor *x = from1(ctx, dti ? TG_F64 : TG_F32, 6, v);
        tg_set_requires_grad(x, 1);
        tg_tensor *y = tg_step(ctx, x);
        cr_assert_not_null(y);
        for (int i = 0; i < 6; i++)
            cr_assert_float_eq(at(y, i), dti || i != 1 ? want[i] : (float)v[1] >= 0, 0,
                               "step element %d", i);
        cr_assert(tg_requires_grad(y), "step is recorded: its output requires grad");
        tg_tensor *w = from1(ctx, dti ? TG_F64 : TG_F32, 6, v);
        tg_backward(ctx, tg_sum(ctx, tg_mul(ctx, y, w)));
        cr_assert(tg_ok(ctx), "%s", tg_errmsg(ctx));
        cr_assert_not_null(tg_grad(x), "gradient 0 is a buffer of zeros, not NULL");
        for (int i = 0; i < 6; i++)
            cr_assert_float_eq(grad_at(x, i), 0, 0);
    }
    /* f32 rounds 1e-300 to 0, which steps to 1; -1e-300 rounds to -0.0: 1 */
}

/* step in a graph: only the other path carries gradient. loss = sum(step(x) * x):
 * d/dx = step(x) (the product rule's step'(x) x term is 0) */
Test(elementwise, step_in_graph)
{
    const double v[4] = {-1.5, -0.5, 0.5, 2};
    tg_tensor *x = from1(ctx, TG_F64, 4, v);
    tg_set_requires_grad(x, 1);
    tg_backward(ctx, tg_sum(ctx, tg_mul(ctx, tg_step(ctx, x), x)));
    cr_assert(tg_ok(ctx), "%s", tg_errmsg(ctx));
    const double want[4] = {0, 0, 1, 1};
    for (int i = 0; i < 4; i++)
        cr_assert_float_eq(grad_at(x, i), want[i], 0);
    /* and the gradient check agrees (away from the jump at 0) */
    uop u = {U_STEP, 0};
    tg_tensor *in[1] = {x};
    gradcheck_ok(ctx, fn_unary, &u, in, 1, "tg_step");
}

/* ---- f32 against f64 ---------------------------------------------------- */

/* f(a, b, c, d) = sum(w * (exp(a * b) / c - log(d)^2 + pow(d, 0.5) * 3 - (-a))),
 * a [3,4], b [4], c [3,1], d [3,4] */
static tg_tensor *mixed_graph(tg_ctx *c, tg_tensor *const *in, void *user)
{
    tg_tensor *a = in[0], *b = in[1], *cc = in[2], *d = in[3], *w = in[4];
    tg_tensor *t = tg_div(c, tg_exp(c, tg_mul(c, a, b)), cc);
    t = tg_sub(c, t, tg_pow(c, tg_log(c, d), 2));
    t = tg_add(c, t, tg_scale(c, tg_pow(c, d, 0.5), 3));
    t = tg_sub(c, t, tg_neg(c, tg_identity(c, a)));
    return tg_sum(c, tg_mul(c, t, w));
}

Test(elementwise, f32_agrees_with_f64)
{
    shp s34 = {2, {3, 4}}, s4 = {1, {4}}, s31 = {2, {3, 1}};
    tg_tensor *d64[5] = {rnd(ctx, TG_F64, s34, -1, 1), rnd(ctx, TG_F64, s4, -1, 1),
                         rnd(ctx, TG_F64, s31, 0.5, 2), rnd(ctx, TG_F64, s34, 0.5, 3),
                         rnd(ctx, TG_F64, s34, -1, 1)};
    tg_tensor *d32[5];
    for (int k = 0; k < 5; k++)
        d32[k] = convert(ctx, d64[k], TG_F32);
    for (int k = 0; k < 4; k++) {
        tg_set_requires_grad(d64[k], 1);
        tg_set_requires_grad(d32[k], 1);
    }
    tg_tensor *y64 = mixed_graph(ctx, d64, NULL), *y32 = mixed_graph(ctx, d32, NULL);
    cr_assert_not_null(y32, "%s", tg_errmsg(ctx));
    cr_assert_eq(tg_dtype_of(y32), TG_F32);
    tg_backward(ctx, y64);
    tg_backward(ctx, y32);
    cr_assert(tg_ok(ctx), "%s", tg_errmsg(ctx));
    cr_assert_float_eq(tg_item(y32), tg_item(y64), 1e-5 * (1 + fabs(tg_item(y64))));
    for (int k = 0; k < 4; k++)
        for (int64_t i = 0; i < tg_numel(d64[k]); i++) {
            double g64 = grad_at(d64[k], i), g32 = grad_at(d32[k], i);
            cr_assert_float_eq(g32, g64, 1e-5 * (1 + fabs(g64)), "input %d element %lld", k,
                               (long long)i);
        }
    /* and the same graph passes the f64 gradient check */
    tg_tensor *in[5] = {rnd(ctx, TG_F64, s34, -1, 1), rnd(ctx, TG_F64, s4, -1, 1),
                        rnd(ctx, TG_F64, s31, 0.5, 2), rnd(ctx, TG_F64, s34, 0.5, 3),
                        rnd(ctx, TG_F64, s34, -1, 1)};
    gradcheck_ok(ctx, mixed_graph, NULL, in, 5, "mixed graph");
}

/* ---- fan-out ------------------------------------------------------------ */

Test(elementwise, fan_out_add_self)
{
    shp s = {2, {2, 3}};
    tg_tensor *a = rnd(ctx, TG_F64, s, -1, 1);
    tg_set_requires_grad(a, 1);
    tg_backward(ctx, tg_sum(ctx, tg_add(ctx, a, a)));
    cr_assert(tg_ok(ctx), "%s", tg_errmsg(ctx));
    for (int i = 0; i < 6; i++)
        cr_assert_float_eq(grad_at(a, i), 2, 0);
    /* a - a: the two contributions cancel */
    tg_tensor *b = rnd(ctx, TG_F64, s, -1, 1);
    tg_set_requires_grad(b, 1);
    tg_backward(ctx, tg_sum(ctx, tg_sub(ctx, b, b)));
    for (int i = 0; i < 6; i++)
        cr_assert_float_eq(grad_at(b, i), 0, 0);
}

Test(elementwise, fan_out_mul_self)
{
    shp s = {2, {2, 3}};
    for (int dti = 0; dti < 2; dti++) {
        tg_tensor *x = rnd(ctx, dti ? TG_F64 : TG_F32, s, -2, 2);
        tg_set_requires_grad(x, 1);
        tg_backward(ctx, tg_sum(ctx, tg_mul(ctx, x, x)));
        cr_assert(tg_ok(ctx), "%s", tg_errmsg(ctx));
        for (int i = 0; i < 6; i++)
            cr_assert_float_eq(grad_at(x, i), 2 * at(x, i), 1e-6);
        /* x / x has gradient 0 */
        tg_tensor *z = rnd(ctx, dti ? TG_F64 : TG_F32, s, 0.5, 2);
        tg_set_requires_grad(z, 1);
        tg_backward(ctx, tg_sum(ctx, tg_div(ctx, z, z)));
        for (int i = 0; i < 6; i++)
            cr_assert_float_eq(grad_at(z, i), 0, 1e-6);
    }
}

/* one tensor used by three ops: gradients accumulate
 * loss = sum(exp(x)) + sum(scale(x, 3)) + sum(x * c) -> exp(x) + 3 + c */
Test(elementwise, fan_out_three_ops)
{
    shp s = {2, {3, 2}}, s2 = {1, {2}};
    tg_tensor *x = rnd(ctx, TG_F64, s, -1, 1), *c = rnd(ctx, TG_F64, s2, -1, 1);
    tg_set_requires_grad(x, 1);
    tg_tensor *l1 = tg_sum(ctx, tg_exp(ctx, x));
    tg_tensor *l2 = tg_sum(ctx, tg_scale(ctx, x, 3));
    tg_tensor *l3 = tg_sum(ctx, tg_mul(ctx, x, c));
    tg_backward(ctx, tg_add(ctx, tg_add(ctx, l1, l2), l3));
    cr_assert(tg_ok(ctx), "%s", tg_errmsg(ctx));
    for (int i = 0; i < 6; i++)
        cr_assert_float_eq(grad_at(x, i), exp(at(x, i)) + 3 + at(c, i % 2), 1e-14);
}

/* a non-leaf used twice; and a second backward adds the same amount again */
Test(elementwise, fan_out_nonleaf_and_second_backward)
{
    shp s = {1, {4}};
    tg_tensor *x = rnd(ctx, TG_F64, s, -1, 1);
    tg_set_requires_grad(x, 1);
    tg_tensor *h = tg_exp(ctx, x);
    tg_tensor *loss = tg_sum(ctx, tg_mul(ctx, h, h)); /* sum(e^{2x}) */
    tg_backward(ctx, loss);
    for (int i = 0; i < 4; i++)
        cr_assert_float_eq(grad_at(x, i), 2 * exp(2 * at(x, i)), 1e-13);
    tg_backward(ctx, loss);
    for (int i = 0; i < 4; i++)
        cr_assert_float_eq(grad_at(x, i), 4 * exp(2 * at(x, i)), 1e-13);
}

/* ---- no-grad mode ------------------------------------------------------- */

Test(elementwise, no_grad_records_nothing)
{
    shp s = {2, {2, 2}};
    tg_tensor *x = rnd(ctx, TG_F64, s, 0.5, 1);
    tg_set_requires_grad(x, 1);
    tg_no_grad(ctx, 1);
    tg_tensor *y = tg_log(ctx, tg_add(ctx, x, tg_pow(ctx, x, 2)));
    tg_no_grad(ctx, 0);
    cr_assert_not_null(y);
    cr_assert_eq(tg_tape_len(ctx), 0);
    cr_assert(!tg_requires_grad(y));
    cr_assert_float_eq(at(y, 1), log(at(x, 1) + at(x, 1) * at(x, 1)), 1e-15);
    /* inputs that need no grad record nothing either */
    tg_tensor *c = rnd(ctx, TG_F64, s, 0.5, 1);
    y = tg_mul(ctx, c, c);
    cr_assert_eq(tg_tape_len(ctx), 0);
    cr_assert(!tg_requires_grad(y));
}

/* ---- bad input ---------------------------------------------------------- */

Test(elementwise, binary_incompatible_shapes)
{
    shp s34 = {2, {3, 4}}, s3 = {1, {3}}, s234 = {3, {2, 3, 4}}, s24 = {2, {2, 4}};
    for (int op = 0; op < N_BINOPS; op++) {
        tg_tensor *a = rnd(ctx, TG_F64, s34, 1, 2), *b = rnd(ctx, TG_F64, s3, 1, 2);
        cr_assert_null(BINOPS[op].f(ctx, a, b));
        assert_err(ctx, BINOPS[op].name, BINOPS[op].name, "[3,4]", "[3]");
        tg_tensor *c = rnd(ctx, TG_F64, s234, 1, 2), *d = rnd(ctx, TG_F64, s24, 1, 2);
        cr_assert_null(BINOPS[op].f(ctx, d, c));
        assert_err(ctx, BINOPS[op].name, BINOPS[op].name, "[2,4]", "[2,3,4]");
    }
}

Test(elementwise, binary_mixed_dtypes)
{
    shp s = {2, {2, 3}};
    for (int op = 0; op < N_BINOPS; op++) {
        tg_tensor *a = rnd(ctx, TG_F32, s, 1, 2), *b = rnd(ctx, TG_F64, s, 1, 2);
        cr_assert_null(BINOPS[op].f(ctx, a, b));
        assert_err(ctx, BINOPS[op].name, BINOPS[op].name, "f32", "f64");
        cr_assert_null(BINOPS[op].f(ctx, b, a));
        assert_err(ctx, BINOPS[op].name, BINOPS[op].name, "f64", "f32");
    }
}

Test(elementwise, binary_null_and_int)
{
    shp s = {1, {3}};
    for (int op = 0; op < N_BINOPS; op++) {
        tg_tensor *a = rnd(ctx, TG_F64, s, 1, 2);
        cr_assert_null(BINOPS[op].f(ctx, NULL, a));
        assert_err(ctx, BINOPS[op].name, BINOPS[op].name, "argument a is NULL", NULL);
        cr_assert_null(BINOPS[op].f(ctx, a, NULL));
        assert_err(ctx, BINOPS[op].name, BINOPS[op].name, "argument b is NULL", NULL);
        cr_assert_null(BINOPS[op].f(NULL, a, a)); /* no ctx: just NULL */
        tg_tensor *i = tg_new(ctx, TG_I32, 1, (int64_t[]){3});
        cr_assert_null(BINOPS[op].f(ctx, a, i));
        assert_err(ctx, BINOPS[op].name, BINOPS[op].name, "i32", "b");
        cr_assert_null(BINOPS[op].f(ctx, i, a));
        assert_err(ctx, BINOPS[op].name, BINOPS[op].name, "i32", "a");
    }
}

static tg_tensor *call_unary(ukind k, tg_ctx *c, tg_tensor *x)
{
    uop u = {k, 2};
    return apply_u(c, &u, x);
}

/* the public function of each kind, indexed by the kind */
static const char *const UNAMES[] = {
    [U_SCALE] = "tg_scale", [U_NEG] = "tg_neg",           [U_EXP] = "tg_exp",
    [U_LOG] = "tg_log",     [U_POW] = "tg_pow",           [U_IDENTITY] = "tg_identity",
    [U_STEP] = "tg_step",
};
_Static_assert(sizeof UNAMES / sizeof UNAMES[0] == U_COUNT, "UNAMES: one name per ukind");

Test(elementwise, unary_null_and_int)
{
    tg_tensor *xi = tg_new(ctx, TG_I32, 2, (int64_t[]){2, 2});
    for (int k = U_SCALE; k < U_COUNT; k++) {
        cr_assert_null(call_unary(k, ctx, NULL));
        assert_err(ctx, UNAMES[k], UNAMES[k], "argument x is NULL", NULL);
        cr_assert_null(call_unary(k, ctx, xi));
        assert_err(ctx, UNAMES[k], UNAMES[k], "x must be f32 or f64, got i32 [2,2]", NULL);
        cr_assert_null(call_unary(k, NULL, xi));
    }
}

/* after an error every call that receives the NULL returns NULL and the
 * first message stays */
Test(elementwise, chain_after_error_keeps_first_message)
{
    shp s34 = {2, {3, 4}}, s5 = {1, {5}};
    tg_tensor *a = rnd(ctx, TG_F64, s34, 1, 2), *b = rnd(ctx, TG_F64, s5, 1, 2);
    tg_tensor *bad = tg_mul(ctx, a, b);
    cr_assert_null(bad);
    char first[512];
    snprintf(first, sizeof first, "%s", tg_errmsg(ctx));
    cr_assert_not_null(strstr(first, "tg_mul"));
    tg_tensor *t = bad;
    for (int k = U_SCALE; k < U_COUNT; k++)
        t = call_unary(k, ctx, t);
    cr_assert_null(t);
    for (int op = 0; op < N_BINOPS; op++) {
        cr_assert_null(BINOPS[op].f(ctx, bad, a));
        cr_assert_null(BINOPS[op].f(ctx, a, bad));
    }
    cr_assert_null(tg_sum(ctx, bad));
    cr_assert_str_eq(tg_errmsg(ctx), first);
    /* after clearing, things work again */
    tg_clear_error(ctx);
    cr_assert_not_null(tg_exp(ctx, a));
}

/* an empty tensor flows through without touching memory */
Test(elementwise, empty_tensors)
{
    shp s0 = {2, {0, 3}}, s3 = {1, {3}};
    tg_tensor *e = tg_new(ctx, TG_F64, s0.ndim, s0.shape), *r = rnd(ctx, TG_F64, s3, 1, 2);
    cr_assert_not_null(e, "%s", tg_errmsg(ctx));
    tg_set_requires_grad(e, 1);
    tg_tensor *y = tg_exp(ctx, tg_add(ctx, e, r));
    cr_assert_not_null(y, "%s", tg_errmsg(ctx));
    cr_assert_eq(tg_numel(y), 0);
    cr_assert_eq(tg_dim(y, 1), 3);
    tg_backward(ctx, tg_sum(ctx, y));
    cr_assert(tg_ok(ctx), "%s", tg_errmsg(ctx));
}
