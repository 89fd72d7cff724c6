/* SPDX-License-Identifier: MIT */
/* tests/ops/test_ops_matmul.c: tg_matmul, tg_add_bias, tg_linear.
 * Gradient checks in f64 over the full Jacobian, values against naive loops,
 * the fused layer against its unfused composition, f32 against f64, errors. */
#include <criterion/criterion.h>

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "tapegrad.h"
#include "internal.h" /* tgi_default_alloc */
#include "tg_test.h"

/* ---- helpers ------------------------------------------------------------ */

TG_TEST_SUITE(matmul, 1234); /* ctx: a fresh context per test */

/* a copy of t's data as doubles (malloc'd) */
static double *copy_d(const tg_tensor *t)
{
    double *p = malloc((size_t)tg_numel(t) * sizeof *p + 1);
    cr_assert_eq(tg_copy_out(t, TG_F64, p), 0);
    return p;
}

/* a copy of t's gradient as doubles (malloc'd); NULL if it has none */
static double *copy_grad(const tg_tensor *t)
{
    if (!tg_grad(t)) return NULL;
    int64_t n = tg_numel(t);
    double *p = malloc((size_t)n * sizeof *p + 1);
    for (int64_t i = 0; i < n; i++) p[i] = grad_at(t, i);
    return p;
}

static int any_nonzero(const double *p, int64_t n)
{
    for (int64_t i = 0; i < n; i++)
        if (p[i] != 0) return 1;
    return 0;
}

static double max_abs_diff(const double *a, const double *b, int64_t n)
{
    double m = 0;
    for (int64_t i = 0; i < n; i++) {
        double d = fabs(a[i] - b[i]);
        if (!(d <= m)) m = d; /* NaN propagates */
    }
    return m;
}

/* Backpropagate the fixed random projection u^T y v (u [1,m], v [n,1] drawn
 * from the ctx's seeded generator): a one-element loss whose gradient wrt y is
 * the rank-one matrix u v^T, nonzero everywhere. Returns that gradient. */
static double *backprop_projection(tg_tensor *y, double **u_out, double **v_out)
{
    tg_dtype dt = tg_dtype_of(y);
    tg_tensor *u = rand2(ctx, dt, 1, tg_dim(y, 0), 0.5, 1.5);
    tg_tensor *v = rand2(ctx, dt, tg_dim(y, 1), 1, -1.5, -0.5);
    tg_tensor *loss = tg_matmul(ctx, tg_matmul(ctx, u, y), v);
    cr_assert_not_null(loss, "%s", tg_errmsg(ctx));
    tg_backward(ctx, loss);
    cr_assert(tg_ok(ctx), "%s", tg_errmsg(ctx));
    double *ud = copy_d(u), *vd = copy_d(v);
    int64_t m = tg_dim(y, 0), n = tg_dim(y, 1);
    double *dy = malloc((size_t)(m * n) * sizeof *dy + 1);
    for (int64_t i = 0; i < m; i++)
        for (int64_t j = 0; j < n; j++) dy[i * n + j] = ud[i] * vd[j];
    if (u_out) *u_out = ud; else free(ud);
    if (v_out) *v_out = vd; else free(vd);
    return dy;
}

/* naive C = A B in double */
static void naive_matmul(const double *a, const double *b, double *c, int64_t m, int64_t k,
                         int64_t n)
{
    for (int64_t i = 0; i < m; i++)
        for (int64_t j = 0; j < n; j++) {
            double s = 0;
            for (int64_t p = 0; p < k; p++) s += a[i * k + p] * b[p * n + j];
            c[i * n + j] = s;
        }
}

static double act_ref(tg_act act, double p)
{
    switch (act) {
    case TG_ACT_RELU: return p > 0 ? p : 0;
    case TG_ACT_LEAKY_RELU: return p > 0 ? p : 0.01 * p;
    case TG_ACT_TANH: return tanh(p);
    case TG_ACT_SIGMOID: return 1 / (1 + exp(-p));
    default: return p;
    }
}

static double act_deriv_ref(tg_act act, double p)
{
    switch (act) {
    case TG_ACT_RELU: return p > 0 ? 1 : 0;
    case TG_ACT_LEAKY_RELU: return p > 0 ? 1 : 0.01;
    case TG_ACT_TANH: return 1 - tanh(p) * tanh(p);
    case TG_ACT_SIGMOID: { double s = 1 / (1 + exp(-p)); return s * (1 - s); }
    default: return 1;
    }
}

static const char *act_name(tg_act act)
{
    static const char *names[] = {"none", "relu", "tanh", "sigmoid", "leaky_relu"};
    return names[act];
}

/* ---- gradient checks: tg_matmul ----------------------------------------- */

static tg_tensor *fn_matmul(tg_ctx *c, tg_tensor *const *in, void *user)
{
    (void)user;
    return tg_matmul(c, in[0], in[1]);
}

static void check_matmul_grad(int64_t m, int64_t k, int64_t n)
{
    tg_tensor *a = rand2(ctx, TG_F64, m, k, -1, 1), *b = rand2(ctx, TG_F64, k, n, -1, 1);
    tg_set_requires_grad(a, 1);
    tg_set_requires_grad(b, 1);
    tg_tensor *in[2] = {a, b};
    cr_assert(tg_gradcheck(ctx, fn_matmul, NULL, in, 2, NULL), "[%lld,%lld]x[%lld,%lld]: %s",
              (long long)m, (long long)k, (long long)k, (long long)n, tg_errmsg(ctx));

    /* the same gradients by hand: dA = dC B^T, dB = A^T dC, and not all zero */
    tg_tensor *y = tg_matmul(ctx, a, b);
    double *dc = backprop_projection(y, NULL, NULL);
    double *ad = copy_d(a), *bd = copy_d(b), *ga = copy_grad(a), *gb = copy_grad(b);
    cr_assert_not_null(ga);
    cr_assert_not_null(gb);
    cr_assert(any_nonzero(ga, m * k) && any_nonzero(gb, k * n));
    for (int64_t i = 0; i < m; i++)
        for (int64_t p = 0; p < k; p++) {
            double s = 0;
            for (int64_t j = 0; j < n; j++) s += dc[i * n + j] * bd[p * n + j];
            cr_assert_float_eq(ga[i * k + p], s, 1e-12);
        }
    for (int64_t p = 0; p < k; p++)
        for (int64_t j = 0; j < n; j++) {
            double s = 0;
            for (int64_t i = 0; i < m; i++) s += ad[i * k + p] * dc[i * n + j];
            cr_assert_float_eq(gb[p * n + j], s, 1e-12);
        }
    free(dc); free(ad); free(bd); free(ga); free(gb);
}

Test(matmul, gradcheck_1x1_1x1) { check_matmul_grad(1, 1, 1); }
Test(matmul, gradcheck_3x4_4x5) { check_matmul_grad(3, 4, 5); }
Test(matmul, gradcheck_1x7_7x1) { check_matmul_grad(1, 7, 1); }
Test(matmul, gradcheck_5x1_1x3) { check_matmul_grad(5, 1, 3); }
Test(matmul, gradcheck_6x3_3x2) { check_matmul_grad(6, 3, 2); }
Test(matmul, gradcheck_17x9_9x13) { check_matmul_grad(17, 9, 13); }

static tg_tensor *fn_square(tg_ctx *c, tg_tensor *const *in, void *user)
{
    (void)user;
    return tg_matmul(c, in[0], in[0]); /* fan-out: both gradients land in one input */
}

Test(matmul, gradcheck_same_input_twice)
{
    tg_tensor *a = rand2(ctx, TG_F64, 4, 4, -1, 1);
    tg_set_requires_grad(a, 1);
    cr_assert(tg_gradcheck(ctx, fn_square, NULL, &a, 1, NULL), "%s", tg_errmsg(ctx));
}

Test(matmul, only_one_input_requires_grad)
{
    tg_tensor *a = rand2(ctx, TG_F64, 3, 4, -1, 1), *b = rand2(ctx, TG_F64, 4, 2, -1, 1);
    tg_set_requires_grad(b, 1);
    tg_tensor *y = tg_matmul(ctx, a, b);
    cr_assert(tg_requires_grad(y));
    free(backprop_projection(y, NULL, NULL));
    cr_assert_null(tg_grad(a), "a constant got a gradient");
    cr_assert_not_null(tg_grad(b));
}

/* Every backward adds (never assigns): a second round of tg_backward over the
 * same tape doubles the leaves' gradients, through every input of all three
 * ops (each op below has a leaf in each input position). */
Test(matmul, backward_twice_adds_twice)
{
    tg_tensor *x = rand2(ctx, TG_F64, 4, 3, -1, 1), *b0 = rand1(ctx, TG_F64, 3, -1, 1);
    tg_tensor *w1 = rand2(ctx, TG_F64, 3, 2, -1, 1), *b1 = rand1(ctx, TG_F64, 2, -1, 1);
    tg_tensor *w2 = rand2(ctx, TG_F64, 2, 3, -1, 1), *b2 = rand1(ctx, TG_F64, 3, -1, 1);
    tg_tensor *x2 = rand2(ctx, TG_F64, 4, 2, -1, 1), *w3 = rand2(ctx, TG_F64, 2, 3, -1, 1);
    tg_tensor *u = rand2(ctx, TG_F64, 1, 4, -1, 1), *v = rand2(ctx, TG_F64, 3, 1, -1, 1);
    tg_tensor *leaves[10] = {x, b0, w1, b1, w2, b2, x2, w3, u, v};
    for (int i = 0; i < 10; i++) tg_set_requires_grad(leaves[i], 1);
    tg_tensor *h = tg_add_bias(ctx, tg_matmul(ctx, tg_add_bias(ctx, x, b0), w1), b1);
    tg_tensor *y = tg_linear(ctx, h, w2, b2, TG_ACT_TANH);
    tg_tensor *y2 = tg_linear(ctx, x2, w3, NULL, TG_ACT_SIGMOID);
    tg_tensor *loss = tg_matmul(ctx, tg_matmul(ctx, u, y), v);
    tg_tensor *loss2 = tg_matmul(ctx, tg_matmul(ctx, u, y2), v);
    tg_backward(ctx, loss);
    tg_backward(ctx, loss2);
    double *g1[10];
    for (int i = 0; i < 10; i++) g1[i] = copy_grad(leaves[i]);
    tg_backward(ctx, loss);
    tg_backward(ctx, loss2);
    cr_assert(tg_ok(ctx), "%s", tg_errmsg(ctx));
    for (int i = 0; i < 10; i++) {
        int64_t n = tg_numel(leaves[i]);
        double *g2 = copy_grad(leaves[i]);
        cr_assert_not_null(g1[i], "leaf %d: no gradient", i);
        cr_assert(any_nonzero(g1[i], n), "leaf %d: zero gradient", i);
        for (int64_t j = 0; j < n; j++)
            cr_assert_float_eq(g2[j], 2 * g1[i][j], 1e-14, "leaf %d [%lld]", i, (long long)j);
        free(g1[i]);
        free(g2);
    }
}

/* ---- gradient checks: tg_add_bias --------------------------------------- */

static tg_tensor *fn_add_bias(tg_ctx *c, tg_tensor *const *in, void *user)
{
    (void)user;
    return tg_add_bias(c, in[0], in[1]);
}

static void check_add_bias_grad(int64_t m, int64_t n)
{
    tg_tensor *x = rand2(ctx, TG_F64, m, n, -1, 1), *b = rand1(ctx, TG_F64, n, -1, 1);
    tg_set_requires_grad(x, 1);
    tg_set_requires_grad(b, 1);
    tg_tensor *in[2] = {x, b};
    cr_assert(tg_gradcheck(ctx, fn_add_bias, NULL, in, 2, NULL), "%s", tg_errmsg(ctx));

    tg_tensor *y = tg_add_bias(ctx, x, b);
    double *xd = copy_d(x), *bd = copy_d(b), *yd = copy_d(y);
    for (int64_t i = 0; i < m; i++)
        for (int64_t j = 0; j < n; j++)
            cr_assert_eq(yd[i * n + j], xd[i * n + j] + bd[j]);
    double *dy = backprop_projection(y, NULL, NULL);
    double *gx = copy_grad(x), *gb = copy_grad(b);
    cr_assert(any_nonzero(gx, m * n) && any_nonzero(gb, n));
    for (int64_t j = 0; j < n; j++) {
        double s = 0;
        for (int64_t i = 0; i < m; i++) {
            s += dy[i * n + j];
            cr_assert_float_eq(gx[i * n + j], dy[i * n + j], 1e-14);
        }
        cr_assert_float_eq(gb[j], s, 1e-13);
    }
    free(xd); free(bd); free(yd); free(dy); free(gx); free(gb);
}

Test(matmul, add_bias_gradcheck_4x3) { check_add_bias_grad(4, 3); }
Test(matmul, add_bias_gradcheck_1x5) { check_add_bias_grad(1, 5); }
Test(matmul, add_bias_gradcheck_3x300) { check_add_bias_grad(3, 300); } /* > one colsum block */

Test(matmul, add_bias_f32_column_sums)
{
    /* 4096 rows of 0.1f: the f32 column sum is accumulated in double */
    tg_tensor *x = rand2(ctx, TG_F32, 4096, 3, 0, 1), *b = rand1(ctx, TG_F32, 3, 0, 1);
    tg_set_requires_grad(b, 1);
    tg_tensor *y = tg_add_bias(ctx, x, b);
    tg_tensor *u = rand2(ctx, TG_F32, 1, 4096, 0, 1), *v = rand2(ctx, TG_F32, 3, 1, 0, 1);
    tg_fill(u, 0.1);
    tg_fill(v, 1.0);
    tg_backward(ctx, tg_matmul(ctx, tg_matmul(ctx, u, y), v));
    cr_assert(tg_ok(ctx), "%s", tg_errmsg(ctx));
    const float *gb = tg_grad(b);
    for (int j = 0; j < 3; j++) cr_assert_float_eq(gb[j], 4096 * (double)0.1f, 1e-4);
}

/* ---- tg_linear ------------------------------------------------------------ */

typedef struct {
    tg_act act;
    tg_tensor *x, *w, *b; /* the fixed inputs, for checks over a subset */
    int which;            /* 0: in = {x, w[, b]}; 1: in = {w}; 2: in = {x} */
} linear_case;

static tg_tensor *fn_linear(tg_ctx *c, tg_tensor *const *in, void *user)
{
    linear_case *lc = user;
    switch (lc->which) {
    case 1: return tg_linear(c, lc->x, in[0], lc->b, lc->act);
    case 2: return tg_linear(c, in[0], lc->w, lc->b, lc->act);
    default: return tg_linear(c, in[0], in[1], lc->b ? in[2] : NULL, lc->act);
    }
}

/* Draws x [m,k], w [k,n] and (if with_b) b [n] with every pre-activation at
 * least 0.05 away from 0 (relu's and leaky relu's kink), redrawing from the
 * seeded generator until so; returns the pre-activations (malloc'd). */
static double *draw_linear(tg_dtype dt, int64_t m, int64_t k, int64_t n, int with_b,
                           tg_tensor **x, tg_tensor **w, tg_tensor **b)
{
    double *pre = malloc((size_t)(m * n) * sizeof *pre);
    for (int tries = 0; tries < 1000; tries++) {
        *x = rand2(ctx, dt, m, k, -1, 1);
        *w = rand2(ctx, dt, k, n, -1, 1);
        *b = with_b ? rand1(ctx, dt, n, -0.5, 0.5) : NULL;
        double *xd = copy_d(*x), *wd = copy_d(*w), *bd = with_b ? copy_d(*b) : NULL;
        naive_matmul(xd, wd, pre, m, k, n);
        int ok = 1;
        for (int64_t i = 0; i < m * n; i++) {
            if (bd) pre[i] += bd[i % n];
            if (fabs(pre[i]) < 0.05) ok = 0;
        }
        free(xd); free(wd); free(bd);
        if (ok) return pre;
    }
    cr_assert_fail("could not draw pre-activations away from 0");
    return NULL;
}

/* a [r,c] transposed to [c,r] (malloc'd) */
static double *transposed(const double *a, int64_t r, int64_t c)
{
    double *t = malloc((size_t)(r * c) * sizeof *t);
    for (int64_t i = 0; i < r; i++)
        for (int64_t j = 0; j < c; j++) t[j * r + i] = a[i * c + j];
    return t;
}

/* t's gradient: none unless needed, else not all zero and equal to want to
 * 1e-12; what and name say which case and input */
static void check_input_grad(const tg_tensor *t, const double *want, int needed,
                             const char *what, const char *name)
{
    double *g = copy_grad(t);
    if (!needed) {
        cr_assert_null(g, "%s: %s does not require grad but got one", what, name);
        return;
    }
    int64_t n = tg_numel(t);
    cr_assert_not_null(g, "%s: no gradient reached %s", what, name);
    cr_assert(any_nonzero(g, n), "%s: d%s is all zero", what, name);
    for (int64_t i = 0; i < n; i++)
        cr_assert_float_eq(g[i], want[i], 1e-12, "%s: d%s[%lld]", what, name, (long long)i);
    free(g);
}

static void check_linear_shape(tg_act act, int with_b, int which, int64_t m, int64_t k,
                               int64_t n)
{
    tg_tensor *x, *w, *b;
    double *pre = draw_linear(TG_F64, m, k, n, with_b, &x, &w, &b);
    linear_case lc = {act, x, w, b, which};
    tg_tensor *in[3];
    int nin;
    if (which == 1) {
        in[0] = w; nin = 1;
    } else if (which == 2) {
        in[0] = x; nin = 1;
    } else {
        in[0] = x; in[1] = w; in[2] = b; nin = with_b ? 3 : 2;
    }
    for (int i = 0; i < nin; i++) tg_set_requires_grad(in[i], 1);
    cr_assert(tg_gradcheck(ctx, fn_linear, &lc, in, nin, NULL), "%s bias=%d which=%d: %s",
              act_name(act), with_b, which, tg_errmsg(ctx));

    /* values and gradients against the formulas, computed naively */
    int64_t tape0 = tg_tape_len(ctx);
    tg_tensor *y = tg_linear(ctx, x, w, b, act);
    cr_assert_not_null(y, "%s", tg_errmsg(ctx));
    cr_assert_eq(tg_tape_len(ctx), tape0 + 1, "tg_linear must be one node");
    double *yd = copy_d(y);
    for (int64_t i = 0; i < m * n; i++)
        cr_assert_float_eq(yd[i], act_ref(act, pre[i]), 1e-14, "%s y[%lld]", act_name(act),
                           (long long)i);
    double *dy = backprop_projection(y, NULL, NULL);
    double *dpre = malloc((size_t)(m * n) * sizeof *dpre);
    for (int64_t i = 0; i < m * n; i++) dpre[i] = dy[i] * act_deriv_ref(act, pre[i]);
    double *xd = copy_d(x), *wd = copy_d(w);
    /* dw = x^T dpre, dx = dpre w^T, db = the column sums of dpre */
    double *xt = transposed(xd, m, k), *wt = transposed(wd, k, n);
    double *ones = malloc((size_t)m * sizeof *ones);
    for (int64_t i = 0; i < m; i++) ones[i] = 1;
    double *want_w = malloc((size_t)(k * n) * sizeof *want_w);
    double *want_x = malloc((size_t)(m * k) * sizeof *want_x);
    double *want_b = malloc((size_t)n * sizeof *want_b);
    naive_matmul(xt, dpre, want_w, k, m, n);
    naive_matmul(dpre, wt, want_x, m, n, k);
    naive_matmul(ones, dpre, want_b, 1, m, n);
    char what[64];
    snprintf(what, sizeof what, "%s bias=%d which=%d", act_name(act), with_b, which);
    check_input_grad(w, want_w, which == 0 || which == 1, what, "w");
    check_input_grad(x, want_x, which == 0 || which == 2, what, "x");
    if (b) check_input_grad(b, want_b, which == 0, what, "b");
    free(pre); free(yd); free(dy); free(dpre); free(xd); free(wd);
    free(xt); free(wt); free(ones); free(want_w); free(want_x); free(want_b);
}

static void check_linear(tg_act act, int with_b, int which)
{
    check_linear_shape(act, with_b, which, 4, 3, 5);
}

Test(matmul, linear_none) { check_linear(TG_ACT_NONE, 1, 0); check_linear(TG_ACT_NONE, 0, 0); }
Test(matmul, linear_relu) { check_linear(TG_ACT_RELU, 1, 0); check_linear(TG_ACT_RELU, 0, 0); }
Test(matmul, linear_tanh) { check_linear(TG_ACT_TANH, 1, 0); check_linear(TG_ACT_TANH, 0, 0); }
Test(matmul, linear_sigmoid)
{
    check_linear(TG_ACT_SIGMOID, 1, 0);
    check_linear(TG_ACT_SIGMOID, 0, 0);
}
Test(matmul, linear_leaky_relu)
{
    check_linear(TG_ACT_LEAKY_RELU, 1, 0);
    check_linear(TG_ACT_LEAKY_RELU, 0, 0);
}

Test(matmul, linear_only_w_requires_grad)
{
    for (int a = 0; a < TG_ACT_COUNT; a++) {
        check_linear((tg_act)a, 1, 1);
        check_linear((tg_act)a, 0, 1);
    }
}

Test(matmul, linear_only_x_requires_grad)
{
    for (int a = 0; a < TG_ACT_COUNT; a++) {
        check_linear((tg_act)a, 1, 2);
        check_linear((tg_act)a, 0, 2);
    }
}

Test(matmul, linear_relu_has_both_signs)
{
    /* the relu checks above are only meaningful if some units are off */
    tg_tensor *x, *w, *b;
    double *pre = draw_linear(TG_F64, 4, 3, 5, 1, &x, &w, &b);
    int pos = 0, neg = 0;
    for (int i = 0; i < 20; i++) *(pre[i] > 0 ? &pos : &neg) += 1;
    cr_assert(pos > 0 && neg > 0);
    free(pre);
}

/* 8 or more columns with a bias: the activation's derivative and the bias's column
 * sums in one sweep (linear_act_grad_cols) */
Test(matmul, linear_wide_bias_gradcheck)
{
    for (int a = 1; a < TG_ACT_COUNT; a++) {
        check_linear_shape((tg_act)a, 1, 0, 3, 3, 9);
        check_linear_shape((tg_act)a, 1, 2, 3, 2, 17); /* w needs no gradient */
    }
}

/* f32 gradients of tg_linear(x, w, b, act) (fused: 1) or of tg_matmul ->
 * tg_add_bias -> tg_activate (0), on `threads` threads, from the projection u y v:
 * out[0..4] = dx, dW, db, y, dy (malloc'd raw f32; y and dy [m,n]) */
static void linear_f32_grads(tg_act act, int fused, int threads, float *const v[5], int64_t m,
                             int64_t k, int64_t n, float *out[5])
{
    tg_reset(ctx);
    tg_zero_grad(ctx);
    tg_set_threads(ctx, threads);
    tg_tensor *x = tg_from(ctx, TG_F32, 2, (int64_t[]){m, k}, v[0]);
    tg_tensor *w = tg_from(ctx, TG_F32, 2, (int64_t[]){k, n}, v[1]);
    tg_tensor *b = tg_from(ctx, TG_F32, 1, (int64_t[]){n}, v[2]);
    tg_tensor *t[5] = {x, w, b, NULL, NULL};
    for (int i = 0; i < 3; i++) tg_set_requires_grad(t[i], 1);
    tg_tensor *y = fused ? tg_linear(ctx, x, w, b, act)
                         : tg_activate(ctx, tg_add_bias(ctx, tg_matmul(ctx, x, w), b), act);
    tg_tensor *u = tg_from(ctx, TG_F32, 2, (int64_t[]){1, m}, v[3]);
    tg_tensor *vt = tg_from(ctx, TG_F32, 2, (int64_t[]){n, 1}, v[4]);
    tg_backward(ctx, tg_matmul(ctx, tg_matmul(ctx, u, y), vt));
    cr_assert(tg_ok(ctx), "%s", tg_errmsg(ctx));
    t[3] = t[4] = y;
    for (int i = 0; i < 5; i++) {
        const void *src = i == 3 ? tg_data(y) : tg_grad(t[i]);
        size_t bytes = (size_t)tg_numel(t[i]) * sizeof(float);
        cr_assert_not_null(src);
        out[i] = malloc(bytes);
        memcpy(out[i], src, bytes);
    }
}

/* The fused sweep's db is the column sums of d_pre = dy * act'(p) taken as
 * tgi_colsum_acc takes them (per column, rows in order, in double), bit for bit;
 * dx, dW and db are the same bits on one thread and on two; y is the unfused
 * chain's, and with relu and leaky relu (whose unfused backward computes d_pre
 * the same way) so are dx, dW and db. */
Test(matmul, linear_wide_bias_bits_f32)
{
    /* m n >= 65536: two threads split the sweeps; rows of 256 or more values take the
     * vector bias add in forward */
    const int64_t m = 400, k = 7, n = 300;
    const int64_t len[5] = {m * k, k * n, n, m, n};
    float *v[5];
    for (int q = 0; q < 5; q++) {
        tg_tensor *r = rand2(ctx, TG_F32, 1, len[q], -1, 1);
        v[q] = malloc((size_t)len[q] * sizeof(float));
        memcpy(v[q], tg_data(r), (size_t)len[q] * sizeof(float));
    }
    /* rows 0 and 1 of x equal and dy's rows 0 and 1 at +-2^60: d_pre's first two
     * rows cancel exactly when summed first, and swallow the other rows' sum when
     * it comes first, so the order of the rows shows in db's bits */
    memcpy(v[0] + k, v[0], (size_t)k * sizeof(float));
    v[3][0] = 0x1p60f;
    v[3][1] = -0x1p60f;
    const char *what[3] = {"dx", "dW", "db"};
    for (int a = 1; a < TG_ACT_COUNT; a++) {
        const tg_act act = (tg_act)a;
        float *one[5], *two[5], *ref[5];
        linear_f32_grads(act, 1, 1, v, m, k, n, one);
        linear_f32_grads(act, 1, 2, v, m, k, n, two);
        linear_f32_grads(act, 0, 1, v, m, k, n, ref);
        const float *y = one[3], *g = one[4], slope = 0.01f;
        for (int64_t j = 0; j < n; j++) { /* db[j] = 0 + (float)sum_i d_pre[i,j] */
            double acc = 0;
            for (int64_t i = 0; i < m; i++) {
                const float yi = y[i * n + j], gi = g[i * n + j];
                const float d = act == TG_ACT_RELU         ? (yi > 0 ? gi : 0.0f)
                                : act == TG_ACT_LEAKY_RELU ? (yi > 0 ? gi : slope * gi)
                                : act == TG_ACT_TANH       ? gi * (1.0f - yi * yi)
                                                           : gi * (yi * (1.0f - yi));
                acc += (double)d;
            }
            const float want = 0.0f + (float)acc;
            cr_assert(memcmp(&one[2][j], &want, sizeof want) == 0,
                      "%s: db[%lld] = %.9g, the column sum is %.9g", act_name(act),
                      (long long)j, (double)one[2][j], (double)want);
        }
        cr_assert(memcmp(one[3], ref[3], (size_t)(m * n) * sizeof(float)) == 0,
                  "%s: y differs from the unfused chain's", act_name(act));
        for (int q = 0; q < 3; q++) {
            const size_t bytes = (size_t)(q == 0 ? m * k : q == 1 ? k * n : n) * sizeof(float);
            cr_assert(memcmp(one[q], two[q], bytes) == 0, "%s: %s differs on two threads",
                      act_name(act), what[q]);
            if (act == TG_ACT_RELU || act == TG_ACT_LEAKY_RELU)
                cr_assert(memcmp(one[q], ref[q], bytes) == 0,
                          "%s: %s differs from the unfused chain's", act_name(act), what[q]);
        }
        for (int q = 0; q < 5; q++) {
            free(one[q]);
            free(two[q]);
            free(ref[q]);
        }
    }
    for (int q = 0; q < 5; q++) free(v[q]);
}

/* fused tg_linear against tg_matmul -> tg_add_bias -> tg_activate: values and
 * gradients of x, W and b equal to 1e-12 in f64 */
static void check_fused_vs_unfused(tg_act act, int with_b)
{
    int64_t m = 6, k = 5, n = 4;
    int64_t sx[2] = {m, k}, sw[2] = {k, n}, sb[1] = {n};
    char nx[32], nw[32], nb[32];
    snprintf(nx, sizeof nx, "x%d%d", (int)act, with_b);
    snprintf(nw, sizeof nw, "w%d%d", (int)act, with_b);
    snprintf(nb, sizeof nb, "b%d%d", (int)act, with_b);
    tg_tensor *x = tg_param(ctx, nx, TG_F64, 2, sx), *w = tg_param(ctx, nw, TG_F64, 2, sw);
    tg_tensor *b = with_b ? tg_param(ctx, nb, TG_F64, 1, sb) : NULL;
    cr_assert(tg_ok(ctx), "%s", tg_errmsg(ctx));
    tg_fill_uniform(ctx, x, -1, 1);
    tg_fill_uniform(ctx, w, -1, 1);
    if (b) tg_fill_uniform(ctx, b, -0.5, 0.5);
    tg_tensor *u = rand2(ctx, TG_F64, 1, m, -1, 1), *v = rand2(ctx, TG_F64, n, 1, -1, 1);
    double *uv = copy_d(u), *vv = copy_d(v);

    double *res[2][4];
    for (int pass = 0; pass < 2; pass++) {
        tg_reset(ctx);
        tg_zero_grad(ctx);
        u = tg_from(ctx, TG_F64, 2, (int64_t[]){1, m}, uv);
        v = tg_from(ctx, TG_F64, 2, (int64_t[]){n, 1}, vv);
        tg_tensor *y;
        if (pass == 0) {
            y = tg_linear(ctx, x, w, b, act);
        } else {
            y = tg_matmul(ctx, x, w);
            if (b) y = tg_add_bias(ctx, y, b);
            y = tg_activate(ctx, y, act);
        }
        cr_assert_not_null(y, "%s", tg_errmsg(ctx));
        tg_backward(ctx, tg_matmul(ctx, tg_matmul(ctx, u, y), v));
        cr_assert(tg_ok(ctx), "%s", tg_errmsg(ctx));
        res[pass][0] = copy_d(y);
        res[pass][1] = copy_grad(x);
        res[pass][2] = copy_grad(w);
        res[pass][3] = b ? copy_grad(b) : NULL;
    }
    int64_t len[4] = {m * n, m * k, k * n, n};
    const char *what[4] = {"y", "dx", "dW", "db"};
    for (int q = 0; q < (b ? 4 : 3); q++) {
        cr_assert_not_null(res[0][q]);
        cr_assert_not_null(res[1][q]);
        if (q > 0) cr_assert(any_nonzero(res[0][q], len[q]), "%s all zero", what[q]);
        double d = max_abs_diff(res[0][q], res[1][q], len[q]);
        cr_assert(d <= 1e-12, "%s bias=%d: %s differs by %g", act_name(act), with_b, what[q], d);
    }
    for (int p = 0; p < 2; p++)
        for (int q = 0; q < 4; q++) free(res[p][q]);
    free(uv); free(vv);
}

Test(matmul, linear_fused_equals_unfused)
{
    for (int a = 0; a < TG_ACT_COUNT; a++) {
        check_fused_vs_unfused((tg_act)a, 1);
        check_fused_vs_unfused((tg_act)a, 0);
    }
}

Test(matmul, linear_sigmoid_no_overflow)
{
    /* pre-activations of +-800: exp would overflow a naive formula */
    tg_tensor *x = rand2(ctx, TG_F32, 2, 1, 0, 0), *w = rand2(ctx, TG_F32, 1, 2, 0, 0);
    float xv[2] = {800, -800}, wv[2] = {1, -1};
    memcpy(tg_data(x), xv, sizeof xv);
    memcpy(tg_data(w), wv, sizeof wv);
    tg_tensor *y = tg_linear(ctx, x, w, NULL, TG_ACT_SIGMOID);
    cr_assert_not_null(y, "%s", tg_errmsg(ctx));
    assert_near(y, (const double[]){1, 0, 0, 1}, 4, 0, 0, "sigmoid of +-800");
}

/* ---- values, precision, size --------------------------------------------- */

Test(matmul, values_vs_naive)
{
    tg_tensor *a = rand2(ctx, TG_F64, 7, 11, -2, 2), *b = rand2(ctx, TG_F64, 11, 5, -2, 2);
    tg_tensor *y = tg_matmul(ctx, a, b);
    cr_assert_eq(tg_ndim(y), 2);
    cr_assert_eq(tg_dim(y, 0), 7);
    cr_assert_eq(tg_dim(y, 1), 5);
    double *ad = copy_d(a), *bd = copy_d(b), *yd = copy_d(y), ref[35];
    naive_matmul(ad, bd, ref, 7, 11, 5);
    cr_assert(max_abs_diff(yd, ref, 35) <= 1e-13);
    free(ad); free(bd); free(yd);

    /* a hand-computed product */
    double av[6] = {1, 2, 3, 4, 5, 6}, bv[6] = {7, 8, 9, 10, 11, 12};
    tg_tensor *p = tg_from(ctx, TG_F64, 2, (int64_t[]){2, 3}, av);
    tg_tensor *q = tg_from(ctx, TG_F64, 2, (int64_t[]){3, 2}, bv);
    assert_near(tg_matmul(ctx, p, q), (const double[]){58, 64, 139, 154}, 4, 0, 0, "p q");
}

Test(matmul, f32_agrees_with_f64_33x65x17)
{
    tg_tensor *a64 = rand2(ctx, TG_F64, 33, 65, -1, 1), *b64 = rand2(ctx, TG_F64, 65, 17, -1, 1);
    tg_tensor *c64 = rand1(ctx, TG_F64, 17, -1, 1);
    tg_tensor *a32 = convert(ctx, a64, TG_F32), *b32 = convert(ctx, b64, TG_F32);
    tg_tensor *c32 = convert(ctx, c64, TG_F32);
    tg_tensor *all[6] = {a64, b64, c64, a32, b32, c32};
    for (int i = 0; i < 6; i++) tg_set_requires_grad(all[i], 1);
    /* the f32 inputs are the f64 ones rounded: compare against f64 results
     * computed from the rounded values */
    tg_tensor *ar = convert(ctx, a32, TG_F64), *br = convert(ctx, b32, TG_F64);
    double *ref = copy_d(tg_matmul(ctx, ar, br));
    double *y32 = copy_d(tg_matmul(ctx, a32, b32));
    for (int i = 0; i < 33 * 17; i++) cr_assert_float_eq(y32[i], ref[i], 1e-4, "y[%d]", i);
    free(ref); free(y32);

    /* forward and backward of the fused layer in both precisions */
    tg_tensor *y64 = tg_linear(ctx, a64, b64, c64, TG_ACT_TANH);
    tg_tensor *y32t = tg_linear(ctx, a32, b32, c32, TG_ACT_TANH);
    double *v64 = copy_d(y64), *v32 = copy_d(y32t);
    cr_assert(max_abs_diff(v64, v32, 33 * 17) <= 5e-5);
    tg_seed(ctx, 99); /* the same projection u, v (up to rounding) in both precisions */
    free(backprop_projection(y64, NULL, NULL));
    tg_seed(ctx, 99);
    free(backprop_projection(y32t, NULL, NULL));
    int64_t len[3] = {33 * 65, 65 * 17, 17};
    for (int i = 0; i < 3; i++) {
        double *g64 = copy_grad(all[i]), *g32 = copy_grad(all[i + 3]);
        cr_assert(any_nonzero(g64, len[i]));
        double scale = 0;
        for (int64_t j = 0; j < len[i]; j++) scale = fmax(scale, fabs(g64[j]));
        double d = max_abs_diff(g64, g32, len[i]);
        cr_assert(d <= 1e-4 * scale, "grad %d: f32 differs from f64 by %g (scale %g)", i, d,
                  scale);
        free(g64); free(g32);
    }
    free(v64); free(v32);
}

static void check_large(tg_dtype dt, double tol)
{
    int64_t m = 64, k = 784, n = 128;
    tg_tensor *a = rand2(ctx, dt, m, k, 0, 1), *b = rand2(ctx, dt, k, n, -0.1, 0.1);
    tg_tensor *y = tg_matmul(ctx, a, b);
    cr_assert_not_null(y, "%s", tg_errmsg(ctx));
    double *ad = copy_d(a), *bd = copy_d(b), *yd = copy_d(y);
    double *ref = malloc((size_t)(m * n) * sizeof *ref);
    naive_matmul(ad, bd, ref, m, k, n);
    for (int64_t i = 0; i < m * n; i++) {
        double bound = 0; /* sum |a||b|: the scale of the rounding error */
        int64_t r = i / n, c = i % n;
        for (int64_t p = 0; p < k; p++) bound += fabs(ad[r * k + p] * bd[p * n + c]);
        cr_assert(fabs(yd[i] - ref[i]) <= tol * bound, "[%lld,%lld]: %.17g vs %.17g",
                  (long long)r, (long long)c, yd[i], ref[i]);
    }
    free(ad); free(bd); free(yd); free(ref);
}

Test(matmul, large_64x784x128_f32) { check_large(TG_F32, 1e-5); }
Test(matmul, large_64x784x128_f64) { check_large(TG_F64, 1e-13); }

Test(matmul, thread_count_does_not_change_results)
{
    tg_tensor *x = rand2(ctx, TG_F32, 70, 130, -1, 1), *w = rand2(ctx, TG_F32, 130, 90, -1, 1);
    tg_tensor *b = rand1(ctx, TG_F32, 90, -1, 1);
    tg_set_threads(ctx, 1);
    uint64_t h1 = tg_hash(tg_linear(ctx, x, w, b, TG_ACT_RELU));
    tg_set_threads(ctx, 2);
    uint64_t h2 = tg_hash(tg_linear(ctx, x, w, b, TG_ACT_RELU));
    cr_assert_eq(h1, h2);
}

Test(matmul, no_grad_mode_computes_without_recording)
{
    int64_t s[2] = {3, 2};
    tg_tensor *w = tg_param(ctx, "w", TG_F64, 2, s);
    tg_fill_uniform(ctx, w, -1, 1);
    tg_tensor *x = rand2(ctx, TG_F64, 4, 3, -1, 1);
    tg_tensor *b = rand1(ctx, TG_F64, 2, -1, 1);
    double *ref = copy_d(tg_linear(ctx, x, w, b, TG_ACT_SIGMOID));
    int64_t tape0 = tg_tape_len(ctx);
    cr_assert_eq(tg_no_grad(ctx, 1), 0);
    tg_tensor *y1 = tg_matmul(ctx, x, w);
    tg_tensor *y2 = tg_add_bias(ctx, y1, b);
    tg_tensor *y3 = tg_linear(ctx, x, w, b, TG_ACT_SIGMOID);
    cr_assert_not_null(y3);
    cr_assert_eq(tg_tape_len(ctx), tape0);
    cr_assert(!tg_requires_grad(y1) && !tg_requires_grad(y2) && !tg_requires_grad(y3));
    double *v = copy_d(y3);
    cr_assert(max_abs_diff(v, ref, 8) == 0);
    double *v2 = copy_d(y2), *xd = copy_d(x), *wd = copy_d(w), *bd = copy_d(b), p[8];
    naive_matmul(xd, wd, p, 4, 3, 2);
    for (int i = 0; i < 8; i++) cr_assert_float_eq(v2[i], p[i] + bd[i % 2], 1e-14);
    tg_no_grad(ctx, 0);
    free(ref); free(v); free(v2); free(xd); free(wd); free(bd);
}

Test(matmul, empty_inner_dimension)
{
    tg_tensor *a = tg_new(ctx, TG_F64, 2, (int64_t[]){2, 0});
    tg_tensor *b = tg_new(ctx, TG_F64, 2, (int64_t[]){0, 3});
    if (!a || !b) { /* zero-sized tensors rejected by the engine: nothing to test */
        tg_clear_error(ctx);
        return;
    }
    tg_tensor *y = tg_matmul(ctx, a, b);
    cr_assert_not_null(y, "%s", tg_errmsg(ctx));
    const double *yd = tg_data(y);
    for (int i = 0; i < 6; i++) cr_assert_eq(yd[i], 0);
}

/* An allocator that can be told to fail, for the GEMM workspace's
 * out-of-memory path. */
static int alloc_fail;
static void *failing_alloc(void *ud, void *ptr, size_t osize, size_t nsize)
{
    if (nsize && alloc_fail) return NULL;
    return tgi_default_alloc(ud, ptr, osize, nsize);
}

Test(matmul, gemm_out_of_memory_is_an_error)
{
    tg_ctx *c = tg_ctx_new_with_alloc(7, failing_alloc, NULL);
    cr_assert_not_null(c);
    alloc_fail = 0;
    /* 2 MiB of arena, kept by tg_reset: room for the inputs and the output */
    cr_assert_not_null(tg_new(c, TG_F64, 1, (int64_t[]){1 << 18}));
    tg_reset(c);
    tg_tensor *a = tg_new(c, TG_F64, 2, (int64_t[]){200, 512});
    tg_tensor *b = tg_new(c, TG_F64, 2, (int64_t[]){512, 100});
    cr_assert_not_null(a);
    cr_assert_not_null(b);
    tg_fill_uniform(c, a, -1, 1);
    tg_fill_uniform(c, b, -1, 1);
    alloc_fail = 1; /* the output fits in the arena; the GEMM's packing buffers do not */
    tg_tensor *y = tg_matmul(c, a, b);
    alloc_fail = 0;
    cr_assert_null(y, "the GEMM needed no new workspace: this test no longer tests OOM");
    cr_assert(strstr(tg_errmsg(c), "tg_matmul"), "%s", tg_errmsg(c));
    cr_assert(strstr(tg_errmsg(c), "out of memory (GEMM"), "%s", tg_errmsg(c));
    tg_clear_error(c);
    cr_assert_not_null(tg_matmul(c, a, b), "%s", tg_errmsg(c));
    tg_ctx_free(c);
}

/* ---- errors --------------------------------------------------------------- */

Test(matmul, error_inner_dimensions_exact_message)
{
    tg_tensor *a = rand2(ctx, TG_F64, 4, 3, 0, 1), *b = rand2(ctx, TG_F64, 2, 5, 0, 1);
    cr_assert_null(tg_matmul(ctx, a, b));
    cr_assert_str_eq(tg_errmsg(ctx), "tg_matmul: inner dimensions differ: a is [4,3], b is [2,5]");
}

Test(matmul, error_matmul_bad_inputs)
{
    tg_tensor *a = rand2(ctx, TG_F64, 4, 3, 0, 1), *b = rand2(ctx, TG_F64, 3, 5, 0, 1);
    tg_tensor *v = rand1(ctx, TG_F64, 3, 0, 1);
    tg_tensor *t3 = tg_new(ctx, TG_F64, 3, (int64_t[]){2, 3, 4});
    assert_null_err(ctx, tg_matmul(ctx, a, v), "tg_matmul", "[4,3]", "[3]");
    assert_null_err(ctx, tg_matmul(ctx, t3, b), "tg_matmul", "[2,3,4]", "[3,5]");
    assert_null_err(ctx, tg_matmul(ctx, NULL, b), "tg_matmul", "NULL", NULL);
    assert_null_err(ctx, tg_matmul(ctx, a, NULL), "tg_matmul", "NULL", NULL);
    assert_null_err(ctx, tg_matmul(ctx, a, convert(ctx, b, TG_F32)), "tg_matmul", NULL, NULL);
    assert_null_err(ctx, tg_matmul(ctx, convert(ctx, a, TG_I32), b), "tg_matmul", "i32", NULL);
    assert_null_err(ctx, tg_matmul(ctx, a, convert(ctx, b, TG_I32)), "tg_matmul", "i32", NULL);
    cr_assert_null(tg_matmul(NULL, a, b));
    cr_assert(tg_ok(ctx));
}

Test(matmul, error_add_bias_bad_inputs)
{
    tg_tensor *x = rand2(ctx, TG_F64, 4, 3, 0, 1), *b = rand1(ctx, TG_F64, 3, 0, 1);
    assert_null_err(ctx, tg_add_bias(ctx, x, rand1(ctx, TG_F64, 2, 0, 1)), "tg_add_bias", "[4,3]",
                    "[2]");
    assert_null_err(ctx, tg_add_bias(ctx, x, rand2(ctx, TG_F64, 1, 3, 0, 1)), "tg_add_bias",
                    "[4,3]", "[1,3]");
    assert_null_err(ctx, tg_add_bias(ctx, b, b), "tg_add_bias", "[3]", NULL);
    assert_null_err(ctx, tg_add_bias(ctx, NULL, b), "tg_add_bias", "NULL", NULL);
    assert_null_err(ctx, tg_add_bias(ctx, x, NULL), "tg_add_bias", "NULL", NULL);
    assert_null_err(ctx, tg_add_bias(ctx, x, convert(ctx, b, TG_F32)), "tg_add_bias", NULL, NULL);
    assert_null_err(ctx, tg_add_bias(ctx, convert(ctx, x, TG_I32), b), "tg_add_bias", "i32", NULL);
    cr_assert_null(tg_add_bias(NULL, x, b));
    cr_assert_not_null(tg_add_bias(ctx, x, b));
    cr_assert(tg_ok(ctx));
}

Test(matmul, error_linear_bad_inputs)
{
    tg_tensor *x = rand2(ctx, TG_F64, 4, 3, 0, 1), *w = rand2(ctx, TG_F64, 3, 5, 0, 1);
    tg_tensor *b = rand1(ctx, TG_F64, 5, 0, 1);
    assert_null_err(ctx, tg_linear(ctx, x, rand2(ctx, TG_F64, 2, 5, 0, 1), b, TG_ACT_RELU),
                    "tg_linear", "[4,3]", "[2,5]");
    assert_null_err(ctx, tg_linear(ctx, x, w, rand1(ctx, TG_F64, 4, 0, 1), TG_ACT_RELU),
                    "tg_linear", "[4]", "[3,5]");
    assert_null_err(ctx, tg_linear(ctx, x, w, rand2(ctx, TG_F64, 1, 5, 0, 1), TG_ACT_NONE),
                    "tg_linear", "[1,5]", NULL);
    assert_null_err(ctx, tg_linear(ctx, b, w, NULL, TG_ACT_NONE), "tg_linear", "[5]", "[3,5]");
    assert_null_err(ctx, tg_linear(ctx, x, w, b, (tg_act)99), "tg_linear", "99", NULL);
    assert_null_err(ctx, tg_linear(ctx, x, w, b, (tg_act)-1), "tg_linear", "-1", NULL);
    assert_null_err(ctx, tg_linear(ctx, NULL, w, b, TG_ACT_NONE), "tg_linear", "NULL", NULL);
    assert_null_err(ctx, tg_linear(ctx, x, NULL, b, TG_ACT_NONE), "tg_linear", "NULL", NULL);
    assert_null_err(ctx, tg_linear(ctx, x, convert(ctx, w, TG_F32), b, TG_ACT_NONE), "tg_linear",
                    NULL, NULL);
    assert_null_err(ctx, tg_linear(ctx, x, w, convert(ctx, b, TG_F32), TG_ACT_NONE), "tg_linear",
                    NULL, NULL);
    assert_null_err(ctx, tg_linear(ctx, convert(ctx, x, TG_I32), w, b, TG_ACT_NONE), "tg_linear",
                    "i32", NULL);
    assert_null_err(ctx, tg_linear(ctx, x, w, convert(ctx, b, TG_I32), TG_ACT_NONE), "tg_linear",
                    "i32", NULL);
    cr_assert_null(tg_linear(NULL, x, w, b, TG_ACT_NONE));
    cr_assert_not_null(tg_linear(ctx, x, w, NULL, TG_ACT_NONE)); /* no bias is fine */
    cr_assert(tg_ok(ctx), "%s", tg_errmsg(ctx));
}

Test(matmul, error_chain_returns_null_and_keeps_first_message)
{
    tg_tensor *x = rand2(ctx, TG_F64, 4, 3, 0, 1), *w = rand2(ctx, TG_F64, 2, 5, 0, 1);
    tg_tensor *b = rand1(ctx, TG_F64, 5, 0, 1);
    tg_tensor *h = tg_matmul(ctx, x, w);                 /* fails */
    tg_tensor *h2 = tg_add_bias(ctx, h, b);              /* NULL in, NULL out */
    tg_tensor *y = tg_linear(ctx, h2, w, b, TG_ACT_TANH);
    tg_tensor *z = tg_matmul(ctx, y, NULL);
    cr_assert_null(h);
    cr_assert_null(h2);
    cr_assert_null(y);
    cr_assert_null(z);
    cr_assert_str_eq(tg_errmsg(ctx), "tg_matmul: inner dimensions differ: a is [4,3], b is [2,5]");
}
