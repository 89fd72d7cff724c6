/* SPDX-License-Identifier: MIT */
/* test_ops_conv_relu_pool.c: tg_conv_relu_pool_forward, the convolution
 * layer, relu and a max pool as one node (ops/conv.c).
 *
 * Its values must be those of the three ops bit for bit (the same sums, the
 * same first maximum, the same relu), its gradients theirs to rounding (the
 * sums run in another order) through each backward path: the scatter path
 * (dy reaches few of the convolution's outputs), the weight gradient alone
 * from the pool's dy (an input without a gradient, one channel), the dense
 * passes (an input with one channel and a gradient, an x that is not
 * finite); float64 gradient checks; the same bits for any thread count;
 * errors. */
#include <math.h>

#include "tg_test.h"

typedef struct {
    int padding, pool;
} rp_args;

/* in: x, w, b (or 2 inputs: no bias) */
static tg_tensor *fused_fn(tg_ctx *c, tg_tensor *const *in, void *user)
{
    const rp_args *a = user;
    const tg_conv l = {in[1], in[2], tg_dim(in[1], 1), tg_dim(in[1], 0),
                       (int)tg_dim(in[1], 2), 1, a->padding};
    return tg_conv_relu_pool_forward(c, &l, in[0], a->pool);
}

static tg_tensor *fused_nobias_fn(tg_ctx *c, tg_tensor *const *in, void *user)
{
    const rp_args *a = user;
    const tg_conv l = {in[1], NULL, tg_dim(in[1], 1), tg_dim(in[1], 0), (int)tg_dim(in[1], 2), 1,
                       a->padding};
    return tg_conv_relu_pool_forward(c, &l, in[0], a->pool);
}

/* the three ops it stands for */
static tg_tensor *composed(tg_ctx *c, tg_tensor *x, tg_tensor *w, tg_tensor *b, int padding,
                           int pool)
{
    return tg_relu(c, tg_max_pool2d(c, tg_conv2d(c, x, w, b, 1, padding), pool, pool));
}

Test(conv_relu_pool, f64_gradient_checks)
{
    /* 8 channels (a vector of doubles), pool 2; 3 channels, pool 3 over 8 x 5
     * (rows and columns left over); pool 1; no bias */
    static const struct {
        shp xs, ws;
        rp_args a;
        int bias;
        const char *what;
    } cases[] = {
        {{4, {2, 8, 6, 6}}, {4, {3, 8, 3, 3}}, {1, 2}, 1, "8 channels, pool 2"},
        {{4, {1, 3, 7, 4}}, {4, {4, 3, 2, 2}}, {1, 3}, 1, "3 channels, pool 3"},
        {{4, {1, 3, 7, 4}}, {4, {4, 3, 2, 2}}, {0, 1}, 1, "pool 1"},
        {{4, {2, 8, 6, 6}}, {4, {3, 8, 3, 3}}, {1, 2}, 0, "no bias"},
    };
    tg_ctx *c = tg_ctx_new(21);
    for (size_t k = 0; k < sizeof cases / sizeof cases[0]; k++) {
        rp_args a = cases[k].a;
        tg_tensor *in[3] = {rnd(c, TG_F64, cases[k].xs, -1, 1), rnd(c, TG_F64, cases[k].ws, -1, 1),
                            rand1(c, TG_F64, cases[k].ws.shape[0], -0.5, 1)};
        tg_fn fn = cases[k].bias ? fused_fn : fused_nobias_fn;
        gradcheck_ok(c, fn, &a, in, 2 + cases[k].bias, cases[k].what);
        assert_grads_nonzero(c, fn, &a, in, 2 + cases[k].bias, LOSS_SUM_W, cases[k].what);
    }
    tg_ctx_free(c);
}

/* |v - want| within tol of want's scale; NaN and infinities exactly */
static void expect_same(const tg_tensor *t, const tg_tensor *want, int grad, double tol,
                        const char *what, const char *part)
{
    const int64_t n = tg_numel(t);
    cr_assert_eq(n, tg_numel(want), "%s: %s sizes", what, part);
    double scale = 1;
    for (int64_t i = 0; i < n; i++) {
        const double u = grad ? grad_at(want, i) : at(want, i);
        if (isfinite(u)) scale = fmax(scale, fabs(u));
    }
    for (int64_t i = 0; i < n; i++) {
        const double v = grad ? grad_at(t, i) : at(t, i), u = grad ? grad_at(want, i) : at(want, i);
        if (isfinite(u))
            cr_assert(fabs(v - u) <= tol * scale, "%s: %s[%lld] = %.9g, expected %.9g", what,
                      part, (long long)i, v, u);
        else
            cr_assert(isnan(u) ? isnan(v) : v == u, "%s: %s[%lld] = %g, expected %g", what,
                      part, (long long)i, v, u);
    }
}

/* The fused node against the three ops on the same x, w, b (each a copy),
 * the loss sum(r * y): y bit for bit, dx, dw, db to tol. gx: x needs a
 * gradient; inf_at >= 0: x there is infinite */
static void against_composed(tg_dtype dt, shp xs, shp ws, int padding, int pool, int gx,
                             int64_t inf_at, const char *what)
{
    tg_ctx *c = tg_ctx_new(22);
    tg_tensor *x = rnd(c, dt, xs, -1, 1), *w = rnd(c, dt, ws, -0.5, 0.5);
    tg_tensor *b = rand1(c, dt, ws.shape[0], -0.3, 0.3);
    if (inf_at >= 0) set_at(x, inf_at, INFINITY);
    tg_tensor *x2 = convert(c, x, dt), *w2 = convert(c, w, dt), *b2 = convert(c, b, dt);
    tg_set_requires_grad(x, gx), tg_set_requires_grad(x2, gx);
    tg_set_requires_grad(w, 1), tg_set_requires_grad(w2, 1);
    tg_set_requires_grad(b, 1), tg_set_requires_grad(b2, 1);
    const tg_conv l = {w, b, ws.shape[1], ws.shape[0], (int)ws.shape[2], 1, padding};
    tg_tensor *y = tg_conv_relu_pool_forward(c, &l, x, pool);
    tg_tensor *y2 = composed(c, x2, w2, b2, padding, pool);
    cr_assert(y && y2, "%s: %s", what, tg_errmsg(c));
    cr_assert_eq(tg_ndim(y), 4);
    for (int k = 0; k < 4; k++) cr_assert_eq(tg_dim(y, k), tg_dim(y2, k), "%s: shape", what);
    tg_tensor *r = tg_new(c, dt, 4, tg_shape(y));
    tg_fill_uniform(c, r, -1, 1);
    tg_backward(c, tg_add(c, tg_sum(c, tg_mul(c, y, r)), tg_sum(c, tg_mul(c, y2, r))));
    cr_assert(tg_ok(c), "%s: %s", what, tg_errmsg(c));
    for (int64_t i = 0; i < tg_numel(y); i++) {
        const double u = at(y, i), v = at(y2, i);
        cr_assert(isnan(v) ? isnan(u) : u == v, "%s: y[%lld] = %.9g, the ops give %.9g", what,
                  (long long)i, u, v);
    }
    const double tol = dt == TG_F64 ? 1e-12 : 1e-5;
    if (gx) expect_same(x, x2, 1, tol, what, "dx");
    expect_same(w, w2, 1, tol, what, "dw");
    expect_same(b, b2, 1, tol, what, "db");
    tg_ctx_free(c);
}

Test(conv_relu_pool, the_three_ops_values_and_gradients)
{
    static const struct {
        tg_dtype dt;
        shp xs, ws;
        int padding, pool, gx;
        int64_t inf_at;
        const char *what;
    } cases[] = {
        {TG_F32, {4, {3, 1, 28, 28}}, {4, {16, 1, 5, 5}}, 2, 2, 0, -1, "conv1 of cnn_classifier"},
        {TG_F32, {4, {3, 16, 14, 14}}, {4, {32, 16, 5, 5}}, 2, 2, 1, -1, "conv2 of cnn_classifier"},
        {TG_F64, {4, {2, 16, 14, 14}}, {4, {32, 16, 5, 5}}, 2, 2, 1, -1, "conv2 in float64"},
        {TG_F32, {4, {2, 1, 12, 12}}, {4, {6, 1, 5, 5}}, 2, 2, 1, -1, "1 channel, dx: dense"},
        {TG_F32, {4, {2, 5, 9, 11}}, {4, {7, 5, 3, 3}}, 1, 3, 1, -1, "pool 3, rows left over"},
        {TG_F32, {4, {2, 16, 8, 8}}, {4, {4, 16, 3, 3}}, 1, 2, 1, 70, "an infinite x"},
        {TG_F64, {4, {1, 3, 6, 7}}, {4, {5, 3, 6, 7}}, 0, 1, 1, -1, "kernel = input, pool 1"},
    };
    for (size_t k = 0; k < sizeof cases / sizeof cases[0]; k++)
        against_composed(cases[k].dt, cases[k].xs, cases[k].ws, cases[k].padding, cases[k].pool,
                         cases[k].gx, cases[k].inf_at, cases[k].what);
}

/* with nt threads: y, then (in parts[1..3]) x, w, b holding their gradients
 * of sum(r * y), over 20 images; the tensors live in the returned context */
static tg_ctx *run_threads(int nt, tg_tensor *parts[4])
{
    tg_ctx *c = tg_ctx_new(23);
    tg_set_threads(c, nt);
    tg_tensor *x = rnd(c, TG_F32, (shp){4, {20, 16, 10, 10}}, -1, 1);
    tg_tensor *w = rnd(c, TG_F32, (shp){4, {12, 16, 5, 5}}, -0.3, 0.3);
    tg_tensor *b = rand1(c, TG_F32, 12, -0.3, 0.3);
    tg_set_requires_grad(x, 1), tg_set_requires_grad(w, 1), tg_set_requires_grad(b, 1);
    const tg_conv l = {w, b, 16, 12, 5, 1, 2};
    tg_tensor *y = tg_conv_relu_pool_forward(c, &l, x, 2);
    cr_assert_not_null(y, "%s", tg_errmsg(c));
    tg_tensor *r = tg_new(c, TG_F32, 4, tg_shape(y));
    tg_fill_uniform(c, r, -1, 1);
    tg_backward(c, tg_sum(c, tg_mul(c, y, r)));
    cr_assert(tg_ok(c), "%s", tg_errmsg(c));
    parts[0] = y, parts[1] = x, parts[2] = w, parts[3] = b;
    return c;
}

Test(conv_relu_pool, same_bits_for_1_2_and_3_threads)
{
    tg_tensor *one[4], *more[4];
    tg_ctx *c1 = run_threads(1, one);
    for (int nt = 2; nt <= 3; nt++) {
        tg_ctx *c = run_threads(nt, more);
        for (int k = 0; k < 4; k++) {
            const void *a = k ? tg_grad(one[k]) : tg_data(one[k]);
            const void *b = k ? tg_grad(more[k]) : tg_data(more[k]);
            cr_assert_eq(memcmp(a, b, (size_t)tg_numel(one[k]) * sizeof(float)), 0,
                         "part %d differs between 1 and %d threads", k, nt);
        }
        tg_ctx_free(c);
    }
    tg_ctx_free(c1);
}

Test(conv_relu_pool, other_strides_compose_the_ops)
{
    tg_ctx *c = tg_ctx_new(24);
    tg_tensor *x = rnd(c, TG_F64, (shp){4, {1, 2, 9, 9}}, -1, 1);
    tg_tensor *w = rnd(c, TG_F64, (shp){4, {3, 2, 3, 3}}, -1, 1);
    const tg_conv l = {w, NULL, 2, 3, 3, 2, 1};
    tg_tensor *y = tg_conv_relu_pool_forward(c, &l, x, 2);
    tg_tensor *want = tg_max_pool2d(c, tg_relu(c, tg_conv2d(c, x, w, NULL, 2, 1)), 2, 2);
    cr_assert(y && want, "%s", tg_errmsg(c));
    cr_assert_eq(tg_numel(y), 2 * 3 * 2 * 2 / 2);
    for (int64_t i = 0; i < tg_numel(y); i++) cr_assert_eq(at(y, i), at(want, i));
    tg_ctx_free(c);
}

Test(conv_relu_pool, errors_name_the_function)
{
    tg_ctx *c = tg_ctx_new(25);
    tg_tensor *w = rnd(c, TG_F32, (shp){4, {3, 2, 3, 3}}, -1, 1);
    const tg_conv l = {w, NULL, 2, 3, 3, 1, 1};
    static const struct {
        shp xs;
        int pool, layer;
        const char *says;
    } cases[] = {
        {{4, {1, 2, 6, 6}}, 0, 1, "pool 0"},     {{4, {1, 2, 6, 6}}, -1, 1, "pool -1"},
        {{4, {1, 2, 6, 6}}, 7, 1, "pool 7"},     {{3, {2, 6, 6}}, 2, 1, "4-D"},
        {{4, {1, 1, 6, 6}}, 2, 1, "channels"},   {{4, {1, 2, 6, 6}}, 2, 0, "l"},
    };
    for (size_t k = 0; k < sizeof cases / sizeof cases[0]; k++) {
        tg_tensor *x = rnd(c, TG_F32, cases[k].xs, -1, 1);
        cr_assert_null(tg_conv_relu_pool_forward(c, cases[k].layer ? &l : NULL, x, cases[k].pool));
        cr_assert(strstr(tg_errmsg(c), "tg_conv_relu_pool_forward") &&
                      strstr(tg_errmsg(c), cases[k].says),
                  "case %zu: %s", k, tg_errmsg(c));
        tg_clear_error(c);
    }
    tg_ctx_free(c);
}
