/* SPDX-License-Identifier: MIT */
/* test_ops_conv_direct.c: tg_conv2d's stride-1 direct path (ops/conv.c).
 *
 * With stride 1 and padding below the kernel's size, tg_conv2d computes from
 * zero-bordered copies of the planes in tiles of whole vectors, with narrower
 * tiles at the end of the positions and of the output channels. These cases
 * reach every tile width: float64 gradient checks of small geometries whose
 * position count and channel count leave tails of one and two vectors, then
 * float32 results of the geometries the examples use (and odd ones) against a
 * plain loop over the definition, in double. */
#include <math.h>

#include "tg_test.h"

typedef struct {
    int padding, bias;
} conv_args;

static tg_tensor *conv_fn(tg_ctx *c, tg_tensor *const *in, void *user)
{
    const conv_args *a = user;
    return tg_conv2d(c, in[0], in[1], a->bias ? in[2] : NULL, 1, a->padding);
}

/* the full Jacobian of a stride-1 conv2d for x [xs], w [ws], b [O] (or none) */
static void gradcheck_s1(shp xs, shp ws, int bias, int padding, const char *what)
{
    tg_ctx *c = tg_ctx_new(5);
    tg_tensor *in[3] = {rnd(c, TG_F64, xs, -1, 1), rnd(c, TG_F64, ws, -1, 1),
                        bias ? rand1(c, TG_F64, ws.shape[0], -1, 1) : NULL};
    conv_args a = {padding, bias};
    gradcheck_ok(c, conv_fn, &a, in, bias ? 3 : 2, what);
    assert_grads_nonzero(c, conv_fn, &a, in, bias ? 3 : 2, LOSS_SUM_W, what);
    tg_ctx_free(c);
}

Test(conv_direct_grad, position_tails)
{
    /* 5 x 8 positions: one tile of 3 vectors of 8 doubles and a tail of 2 */
    gradcheck_s1((shp){4, {2, 3, 5, 7}}, (shp){4, {11, 3, 3, 5}}, 1, 1, "3x5 pad 1, tail 2");
    /* 5 x 6 positions: a tile of 3 vectors and a tail of 1; 3 output channels */
    gradcheck_s1((shp){4, {1, 2, 4, 5}}, (shp){4, {3, 2, 2, 2}}, 0, 1, "2x2 pad 1, tail 1");
}

Test(conv_direct_grad, channel_tails_and_1x1)
{
    /* 20 output channels: a tile of 2 vectors of doubles and a tail of 1 */
    gradcheck_s1((shp){4, {2, 2, 3, 3}}, (shp){4, {20, 2, 3, 3}}, 1, 1, "20 channels");
    gradcheck_s1((shp){4, {2, 9, 2, 3}}, (shp){4, {2, 9, 1, 1}}, 1, 0, "1x1, 9 in channels");
}

Test(conv_direct_grad, stride_1_padding_not_below_the_kernel)
{
    /* padding >= kernel: not the direct path (the unfolding and the GEMM) */
    gradcheck_s1((shp){4, {1, 2, 3, 3}}, (shp){4, {2, 2, 2, 2}}, 1, 2, "2x2 pad 2");
}

/* x feeds two convolutions: the second backward adds to the dx the first assigned */
static tg_tensor *conv_twice_fn(tg_ctx *c, tg_tensor *const *in, void *user)
{
    (void)user;
    return tg_add(c, tg_conv2d(c, in[0], in[1], NULL, 1, 1), tg_conv2d(c, in[0], in[2], NULL, 1, 2));
}

Test(conv_direct_grad, x_used_twice)
{
    tg_ctx *c = tg_ctx_new(6);
    tg_tensor *in[3] = {rnd(c, TG_F64, (shp){4, {2, 3, 5, 6}}, -1, 1),
                        rnd(c, TG_F64, (shp){4, {4, 3, 3, 3}}, -1, 1),
                        rnd(c, TG_F64, (shp){4, {4, 3, 5, 5}}, -1, 1)};
    gradcheck_ok(c, conv_twice_fn, NULL, in, 3, "x in two convolutions");
    tg_ctx_free(c);
}

/* ---- float32 against the definition ------------------------------------- */

/* y, dx, dw, db of y = conv2d(x, w, b, 1, p) and the loss sum(r * y), by the
 * definition in double: buffers sized by the caller */
static void reference(const shp *xs, const shp *ws, int p, const double *x, const double *w,
                      const double *b, const double *r, double *y, double *dx, double *dw,
                      double *db)
{
    const int64_t n = xs->shape[0], ch = xs->shape[1], h = xs->shape[2], wd = xs->shape[3];
    const int64_t o = ws->shape[0], kh = ws->shape[2], kw = ws->shape[3];
    const int64_t ho = h + 2 * p - kh + 1, wo = wd + 2 * p - kw + 1;
    memset(dx, 0, (size_t)(n * ch * h * wd) * sizeof *dx);
    memset(dw, 0, (size_t)(o * ch * kh * kw) * sizeof *dw);
    memset(db, 0, (size_t)o * sizeof *db);
    for (int64_t s = 0; s < n; s++)
        for (int64_t m = 0; m < o; m++)
            for (int64_t oh = 0; oh < ho; oh++)
                for (int64_t ow = 0; ow < wo; ow++) {
                    const int64_t yi = ((s * o + m) * ho + oh) * wo + ow;
                    double acc = b[m];
                    for (int64_t c = 0; c < ch; c++)
                        for (int64_t i = 0; i < kh; i++)
                            for (int64_t j = 0; j < kw; j++) {
                                const int64_t ih = oh + i - p, iw = ow + j - p;
                                if (ih < 0 || ih >= h || iw < 0 || iw >= wd) continue;
                                const int64_t xi = ((s * ch + c) * h + ih) * wd + iw;
                                const int64_t wi = ((m * ch + c) * kh + i) * kw + j;
                                acc += w[wi] * x[xi];
                                dx[xi] += w[wi] * r[yi];
                                dw[wi] += x[xi] * r[yi];
                            }
                    y[yi] = acc;
                    db[m] += r[yi];
                }
}

/* the values of t against want, relative to the largest magnitude of want */
static void expect_close(const tg_tensor *t, const double *want, int grad, double tol,
                         const char *what, const char *part)
{
    const int64_t n = tg_numel(t);
    double scale = 1;
    for (int64_t i = 0; i < n; i++) scale = fmax(scale, fabs(want[i]));
    for (int64_t i = 0; i < n; i++) {
        const double v = grad ? grad_at(t, i) : at(t, i);
        cr_assert(fabs(v - want[i]) <= tol * scale, "%s: %s[%lld] = %.9g, expected %.9g", what,
                  part, (long long)i, v, want[i]);
    }
}

static double *values(const tg_tensor *t)
{
    double *v = malloc((size_t)tg_numel(t) * sizeof *v);
    cr_assert_not_null(v);
    for (int64_t i = 0; i < tg_numel(t); i++) v[i] = at(t, i);
    return v;
}

/* r [ys] drawn in [-1, 1), then all but one value in every `keep` set to 0
 * (keep 1: dense) */
static tg_tensor *loss_weights(tg_ctx *c, shp ys, int keep)
{
    tg_tensor *r = rnd(c, TG_F32, ys, -1, 1);
    for (int64_t i = 0; i < tg_numel(r); i++)
        if ((i * 7 + i / 5) % keep) set_at(r, i, 0);
    return r;
}

/* y, dx, dw, db of y = conv2d(x, w, b, 1, p) and the loss sum(r * y) against
 * the definition; r keeps one value in `keep` (the rest 0: a sparse dy takes
 * the scatter path); gx, gw: whether x and w require gradients */
static void check_f32_with(shp xs, shp ws, int p, int keep, int gx, int gw, const char *what)
{
    tg_ctx *c = tg_ctx_new(9);
    tg_tensor *x = rnd(c, TG_F32, xs, -1, 1), *w = rnd(c, TG_F32, ws, -0.5, 0.5);
    tg_tensor *b = rand1(c, TG_F32, ws.shape[0], -1, 1);
    tg_set_requires_grad(x, gx);
    tg_set_requires_grad(w, gw);
    tg_set_requires_grad(b, 1);
    tg_tensor *y = tg_conv2d(c, x, w, b, 1, p);
    cr_assert_not_null(y, "%s: %s", what, tg_errmsg(c));
    shp ys = {4, {tg_dim(y, 0), tg_dim(y, 1), tg_dim(y, 2), tg_dim(y, 3)}};
    tg_tensor *r = loss_weights(c, ys, keep);
    tg_backward(c, tg_sum(c, tg_mul(c, y, r)));
    cr_assert(tg_ok(c), "%s: %s", what, tg_errmsg(c));
    double *xv = values(x), *wv = values(w), *bv = values(b), *rv = values(r);
    double *yr = malloc((size_t)tg_numel(y) * sizeof *yr);
    double *dx = malloc((size_t)tg_numel(x) * sizeof *dx);
    double *dw = malloc((size_t)tg_numel(w) * sizeof *dw);
    double *db = malloc((size_t)tg_numel(b) * sizeof *db);
    cr_assert(yr && dx && dw && db);
    reference(&xs, &ws, p, xv, wv, bv, rv, yr, dx, dw, db);
    expect_close(y, yr, 0, 1e-5, what, "y");
    if (gx) expect_close(x, dx, 1, 1e-5, what, "dx");
    else cr_assert_null(tg_grad(x), "%s: x needs no gradient", what);
    if (gw) expect_close(w, dw, 1, 1e-5, what, "dw");
    else cr_assert_null(tg_grad(w), "%s: w needs no gradient", what);
    expect_close(b, db, 1, 1e-5, what, "db");
    free(xv), free(wv), free(bv), free(rv), free(yr), free(dx), free(dw), free(db);
    tg_ctx_free(c);
}

static void check_f32(shp xs, shp ws, int p, const char *what)
{
    check_f32_with(xs, ws, p, 1, 1, 1, what);
}

Test(conv_direct_f32, the_examples_layers)
{
    check_f32((shp){4, {3, 1, 28, 28}}, (shp){4, {16, 1, 5, 5}}, 2, "conv1 of cnn_classifier");
    check_f32((shp){4, {3, 16, 14, 14}}, (shp){4, {32, 16, 5, 5}}, 2, "conv2 of cnn_classifier");
}

Test(conv_direct_f32, odd_geometries)
{
    /* 12 x 13 positions: 10 vectors of 16 floats, tiles of 3 and a tail of 1 */
    check_f32((shp){4, {2, 5, 12, 12}}, (shp){4, {7, 5, 3, 3}}, 1, "3x3 pad 1, 7 channels");
    check_f32((shp){4, {1, 3, 9, 17}}, (shp){4, {40, 3, 4, 2}}, 1, "4x2 pad 1, 40 channels");
    check_f32((shp){4, {2, 4, 6, 5}}, (shp){4, {5, 4, 6, 5}}, 0, "kernel = input");
}

/* ---- a sparse dy: the scatter path -------------------------------------- */

/* Behind a max pool most of dy is 0; with few enough nonzero values (below a
 * third of the channels' share of a vector: 16 f32 channels at 1 in 4, 5 at 1
 * in 16) backward visits only those */
Test(conv_direct_sparse, f32_against_the_definition)
{
    static const struct {
        shp xs, ws;
        int p, keep, gx, gw;
        const char *what;
    } cases[] = {
        {{4, {3, 16, 14, 14}}, {4, {32, 16, 5, 5}}, 2, 4, 1, 1, "conv2 of cnn_classifier, 1 in 4"},
        {{4, {2, 5, 12, 12}}, {4, {7, 5, 3, 3}}, 1, 16, 1, 1, "3x3 pad 1, 5 channels, 1 in 16"},
        {{4, {1, 20, 9, 7}}, {4, {6, 20, 4, 2}}, 1, 9, 1, 1, "4x2, 20 channels (2 vectors), 1 in 9"},
        {{4, {2, 16, 6, 5}}, {4, {5, 16, 6, 5}}, 0, 8, 1, 1, "kernel = input, 1 in 8"},
        {{4, {3, 16, 14, 14}}, {4, {32, 16, 5, 5}}, 2, 4, 0, 1, "dw only, 1 in 4"},
        {{4, {3, 16, 14, 14}}, {4, {32, 16, 5, 5}}, 2, 4, 1, 0, "dx only, 1 in 4"},
    };
    for (size_t k = 0; k < sizeof cases / sizeof cases[0]; k++)
        check_f32_with(cases[k].xs, cases[k].ws, cases[k].p, cases[k].keep, cases[k].gx,
                       cases[k].gw, cases[k].what);
}

typedef struct {
    int padding, pool;
} conv_pool_args;

/* max_pool2d(conv2d(x, w, b, 1, padding), pool, pool): the conv's dy is 0
 * outside each window's maximum */
static tg_tensor *conv_pool_fn(tg_ctx *c, tg_tensor *const *in, void *user)
{
    const conv_pool_args *a = user;
    return tg_max_pool2d(c, tg_conv2d(c, in[0], in[1], in[2], 1, a->padding), a->pool, a->pool);
}

/* sum(r * conv2d(x, w, b, 1, 1)) with r [2,3,5,5] (in[3]) dense: a scalar
 * output, so the gradient check's dy is r, not one element at a time */
static tg_tensor *conv_dense_loss_fn(tg_ctx *c, tg_tensor *const *in, void *user)
{
    (void)user;
    return tg_sum(c, tg_mul(c, tg_conv2d(c, in[0], in[1], in[2], 1, 1), in[3]));
}

Test(conv_direct_sparse, f64_gradients_behind_a_max_pool_and_dense)
{
    tg_ctx *c = tg_ctx_new(8);
    /* 8 channels (one vector of doubles), 1 in 4 nonzero; 3 channels, 1 in 9 */
    tg_tensor *in[3] = {rnd(c, TG_F64, (shp){4, {2, 8, 6, 6}}, -1, 1),
                        rnd(c, TG_F64, (shp){4, {3, 8, 3, 3}}, -1, 1), rand1(c, TG_F64, 3, -1, 1)};
    conv_pool_args a = {1, 2};
    gradcheck_ok(c, conv_pool_fn, &a, in, 3, "8 channels, pool 2");
    assert_grads_nonzero(c, conv_pool_fn, &a, in, 3, LOSS_SUM_W, "8 channels, pool 2");
    tg_tensor *in3[3] = {rnd(c, TG_F64, (shp){4, {1, 3, 7, 6}}, -1, 1),
                         rnd(c, TG_F64, (shp){4, {4, 3, 2, 3}}, -1, 1), rand1(c, TG_F64, 4, -1, 1)};
    conv_pool_args b = {1, 3};
    gradcheck_ok(c, conv_pool_fn, &b, in3, 3, "3 channels, pool 3");
    /* the dense path, in float64 too */
    tg_tensor *in4[4] = {rnd(c, TG_F64, (shp){4, {2, 3, 5, 5}}, -1, 1),
                         rnd(c, TG_F64, (shp){4, {3, 3, 3, 3}}, -1, 1), rand1(c, TG_F64, 3, -1, 1),
                         rnd(c, TG_F64, (shp){4, {2, 3, 5, 5}}, 0.5, 1.5)};
    gradcheck_ok(c, conv_dense_loss_fn, NULL, in4, 4, "dense dy");
    tg_ctx_free(c);
}

/* an infinite x: every dy of its image is visited (0 times inf is NaN, as in
 * the dense sums), so dw is NaN or infinite exactly where the definition's is */
Test(conv_direct_sparse, an_infinite_x_gives_the_definitions_nans)
{
    tg_ctx *c = tg_ctx_new(4);
    const shp xs = {4, {2, 16, 6, 6}}, ws = {4, {4, 16, 3, 3}};
    tg_tensor *x = rnd(c, TG_F32, xs, -1, 1), *w = rnd(c, TG_F32, ws, -0.5, 0.5);
    tg_tensor *b = rand1(c, TG_F32, 4, -1, 1);
    set_at(x, 16 * 36 + 3 * 36 + 14, INFINITY); /* image 1, channel 3, (2, 2) */
    tg_set_requires_grad(x, 1);
    tg_set_requires_grad(w, 1);
    tg_tensor *y = tg_conv2d(c, x, w, b, 1, 1);
    cr_assert_not_null(y, "%s", tg_errmsg(c));
    const shp ys = {4, {2, 4, 6, 6}};
    tg_tensor *r = loss_weights(c, ys, 8);
    tg_backward(c, tg_sum(c, tg_mul(c, y, r)));
    cr_assert(tg_ok(c), "%s", tg_errmsg(c));
    double *xv = values(x), *wv = values(w), *bv = values(b), *rv = values(r);
    double yr[2 * 4 * 36], dx[2 * 16 * 36], dw[4 * 16 * 9], db[4];
    reference(&xs, &ws, 1, xv, wv, bv, rv, yr, dx, dw, db);
    int nans = 0;
    for (int64_t i = 0; i < 4 * 16 * 9; i++) {
        const double v = grad_at(w, i);
        nans += isnan(dw[i]);
        if (isfinite(dw[i]))
            cr_assert(fabs(v - dw[i]) <= 1e-4, "dw[%lld] = %g, expected %g", (long long)i, v, dw[i]);
        else
            cr_assert(isnan(dw[i]) ? isnan(v) : v == dw[i], "dw[%lld] = %g, expected %g",
                      (long long)i, v, dw[i]);
    }
    cr_assert(nans > 0, "the case has 0 times inf in it");
    expect_close(x, dx, 1, 1e-5, "an infinite x", "dx");
    free(xv), free(wv), free(bv), free(rv);
    tg_ctx_free(c);
}

/* ---- threads -------------------------------------------------------------- */

/* y, dx, dw and db of a direct conv over 20 images (three runs of the weight
 * gradient's image chunks) with nt threads, as one float array; dy keeps 1
 * value in `keep` */
static float *run_threads(int nt, int keep, size_t *bytes)
{
    tg_ctx *c = tg_ctx_new(13);
    tg_set_threads(c, nt);
    const int64_t ch = keep > 1 ? 16 : 6; /* 16 channels: a dy of 1 in keep takes the scatter path */
    tg_tensor *in[3] = {rnd(c, TG_F32, (shp){4, {20, ch, 9, 11}}, -1, 1),
                        rnd(c, TG_F32, (shp){4, {12, ch, 3, 3}}, -0.3, 0.3),
                        rand1(c, TG_F32, 12, -1, 1)};
    for (int k = 0; k < 3; k++) tg_set_requires_grad(in[k], 1);
    tg_tensor *y = tg_conv2d(c, in[0], in[1], in[2], 1, 1);
    cr_assert_not_null(y, "%s", tg_errmsg(c));
    shp ys = {4, {tg_dim(y, 0), tg_dim(y, 1), tg_dim(y, 2), tg_dim(y, 3)}};
    tg_backward(c, tg_sum(c, tg_mul(c, y, loss_weights(c, ys, keep))));
    cr_assert(tg_ok(c), "%s", tg_errmsg(c));
    const tg_tensor *parts[4] = {y, in[0], in[1], in[2]};
    size_t n = 0;
    for (int k = 0; k < 4; k++) n += (size_t)tg_numel(parts[k]);
    float *buf = malloc(n * sizeof *buf), *p = buf;
    cr_assert_not_null(buf);
    for (int k = 0; k < 4; k++) {
        memcpy(p, k ? tg_grad(parts[k]) : tg_data(y), (size_t)tg_numel(parts[k]) * sizeof *p);
        p += tg_numel(parts[k]);
    }
    *bytes = n * sizeof *buf;
    tg_ctx_free(c);
    return buf;
}

Test(conv_direct_threads, same_bits_for_1_2_and_3_threads)
{
    for (int keep = 1; keep <= 4; keep += 3) { /* a dense dy, then 1 in 4 (the scatter path) */
        size_t n1, n;
        float *one = run_threads(1, keep, &n1);
        for (int nt = 2; nt <= 3; nt++) {
            float *more = run_threads(nt, keep, &n);
            cr_assert_eq(n, n1);
            cr_assert_eq(memcmp(one, more, n), 0, "dy 1 in %d: results differ between 1 and %d threads",
                         keep, nt);
            free(more);
        }
        free(one);
    }
}

/* ---- 2x2 max pool, 8 windows at a time (f32) ------------------------------ */

/* y and dx of max_pool2d(x, 2, 2) with the loss sum(r * y), by a scan of each
 * window in row-major order keeping the first maximum (a NaN is a maximum) */
static void pool_reference(const float *x, const float *r, int64_t planes, int64_t h, int64_t w,
                           float *y, float *dx)
{
    const int64_t ho = h / 2, wo = w / 2;
    memset(dx, 0, (size_t)(planes * h * w) * sizeof *dx);
    for (int64_t p = 0; p < planes; p++)
        for (int64_t oh = 0; oh < ho; oh++)
            for (int64_t ow = 0; ow < wo; ow++) {
                int64_t best = p * h * w + 2 * oh * w + 2 * ow;
                for (int i = 0; i < 2; i++)
                    for (int j = 0; j < 2; j++) {
                        const int64_t at_ = p * h * w + (2 * oh + i) * w + 2 * ow + j;
                        const float v = x[at_], m = x[best];
                        if (v > m || (isnan(v) && !isnan(m))) best = at_;
                    }
                const int64_t yi = (p * ho + oh) * wo + ow;
                y[yi] = x[best];
                dx[best] += r[yi];
            }
}

/* max_pool2d(x, 2, 2) of x [n,ch,h,w] (ties and NaNs in it) against
 * pool_reference, values and gradient bit for bit; with twice, x also gets
 * the gradient 0.5 (through a second use) before the pool's backward adds its own */
static void pool_case(int64_t n, int64_t ch, int64_t h, int64_t w, int twice)
{
    tg_ctx *c = tg_ctx_new(3);
    tg_tensor *x = tg_new(c, TG_F32, 4, (int64_t[]){n, ch, h, w});
    cr_assert_not_null(x);
    float *xv = tg_data(x);
    const int64_t nx = tg_numel(x);
    for (int64_t i = 0; i < nx; i++) xv[i] = (float)((i * 7) % 5) - 2.0f;
    for (int64_t i = 5; i < nx; i += 25) xv[i] = NAN; /* with a second NaN sometimes */
    if (nx > 31) xv[30] = xv[31] = NAN;
    tg_set_requires_grad(x, 1);
    tg_tensor *y = tg_max_pool2d(c, x, 2, 2);
    cr_assert_not_null(y, "%s", tg_errmsg(c));
    tg_tensor *r = rnd(c, TG_F32, (shp){4, {n, ch, h / 2, w / 2}}, -1, 1);
    tg_tensor *loss = tg_sum(c, tg_mul(c, y, r));
    if (twice) loss = tg_add(c, loss, tg_scale(c, tg_sum(c, x), 0.5));
    tg_backward(c, loss);
    cr_assert(tg_ok(c), "%s", tg_errmsg(c));
    const int64_t ny = tg_numel(y);
    float *yr = malloc((size_t)ny * sizeof *yr), *dx = malloc((size_t)nx * sizeof *dx);
    cr_assert(yr && dx);
    pool_reference(xv, tg_data(r), n * ch, h, w, yr, dx);
    const float *yv = tg_data(y), *gv = tg_grad(x);
    for (int64_t i = 0; i < ny; i++)
        cr_assert(isnan(yr[i]) ? isnan(yv[i]) : yv[i] == yr[i],
                  "%lldx%lld: y[%lld] = %g, expected %g", (long long)h, (long long)w,
                  (long long)i, yv[i], yr[i]);
    for (int64_t i = 0; i < nx; i++) {
        const float want = twice ? dx[i] + 0.5f : dx[i];
        cr_assert(memcmp(&gv[i], &want, sizeof want) == 0,
                  "%lldx%lld%s: dx[%lld] = %g, expected %g", (long long)h, (long long)w,
                  twice ? " twice" : "", (long long)i, gv[i], want);
    }
    free(yr);
    free(dx);
    tg_ctx_free(c);
}

Test(conv_direct_pool, ties_and_nans_go_to_the_first_maximum)
{
    tg_ctx *c = tg_ctx_new(3);
    const int64_t n = 2, ch = 3, h = 6, w = 21; /* 10 windows a row: 8, then 8 ending at 10 */
    tg_tensor *x = tg_new(c, TG_F32, 4, (int64_t[]){n, ch, h, w});
    cr_assert_not_null(x);
    float *xv = tg_data(x);
    for (int64_t i = 0; i < n * ch * h * w; i++) xv[i] = (float)((i * 7) % 5) - 2.0f;
    xv[5] = xv[30] = xv[31] = xv[200] = NAN; /* a window with two NaNs: the first one wins */
    tg_set_requires_grad(x, 1);
    tg_tensor *y = tg_max_pool2d(c, x, 2, 2);
    cr_assert_not_null(y, "%s", tg_errmsg(c));
    tg_tensor *r = rnd(c, TG_F32, (shp){4, {n, ch, h / 2, w / 2}}, -1, 1);
    tg_backward(c, tg_sum(c, tg_mul(c, y, r)));
    cr_assert(tg_ok(c), "%s", tg_errmsg(c));
    const int64_t ny = tg_numel(y), nx = tg_numel(x);
    float *yr = malloc((size_t)ny * sizeof *yr), *dx = malloc((size_t)nx * sizeof *dx);
    cr_assert(yr && dx);
    pool_reference(xv, tg_data(r), n * ch, h, w, yr, dx);
    const float *yv = tg_data(y), *gv = tg_grad(x);
    for (int64_t i = 0; i < ny; i++)
        cr_assert(isnan(yr[i]) ? isnan(yv[i]) : yv[i] == yr[i], "y[%lld] = %g, expected %g",
                  (long long)i, yv[i], yr[i]);
    for (int64_t i = 0; i < nx; i++)
        cr_assert_eq(gv[i], dx[i], "dx[%lld] = %g, expected %g", (long long)i, gv[i], dx[i]);
    free(yr);
    free(dx);
    tg_ctx_free(c);
}

Test(conv_direct_pool, every_row_width_and_plane_count)
{
    /* rows of 1 to 11 windows (short rows run 8 wide into the next rows, the
     * last rows one window at a time), even and odd planes, with and without
     * a gradient already in x */
    for (int64_t w = 2; w <= 23; w++)
        for (int twice = 0; twice < 2; twice++) {
            pool_case(1, 1, 2, w, twice);
            pool_case(2, 3, 6, w, twice);
            pool_case(1, 2, 7, w, twice);
        }
    pool_case(3, 4, 14, 14, 0); /* the CNN example's second pool */
}

Test(conv_direct_grad, empty_input_rows)
{
    /* x with no rows but padding: the output has rows (all padding), dx has no
     * element; dw gets nothing, db the sum of dy (found by the fuzzer: the dx
     * pass divided by the input's height) */
    for (int dt = 0; dt < 2; dt++) {
        tg_ctx *c = tg_ctx_new(1);
        const tg_dtype t = dt ? TG_F64 : TG_F32;
        tg_tensor *x = tg_new(c, t, 4, (int64_t[]){2, 3, 0, 5});
        tg_tensor *w = tg_param(c, "w", t, 4, (int64_t[]){4, 3, 3, 3});
        tg_tensor *b = tg_param(c, "b", t, 1, (int64_t[]){4});
        tg_fill(w, 0.5);
        tg_fill(b, 0.25);
        tg_set_requires_grad(x, 1);
        tg_tensor *y = tg_conv2d(c, x, w, b, 1, 2);
        cr_assert(y && tg_ndim(y) == 4 && tg_shape(y)[2] == 2 && tg_shape(y)[3] == 7,
                  "%s", tg_errmsg(c));
        for (int64_t i = 0; i < 2 * 4 * 14; i++) cr_assert_eq(at(y, i), 0.25, "y = the bias");
        tg_backward(c, tg_sum(c, y));
        cr_assert(tg_ok(c), "%s", tg_errmsg(c));
#define GRAD_AT(p, i) (dt ? ((const double *)(p))[i] : (double)((const float *)(p))[i])
        for (int64_t i = 0; i < 4; i++)
            cr_assert_eq(GRAD_AT(tg_grad(b), i), 2.0 * 2 * 7, "db = the sum of dy");
        for (int64_t i = 0; i < 4 * 27; i++) cr_assert_eq(GRAD_AT(tg_grad(w), i), 0.0, "dw");
#undef GRAD_AT
        tg_ctx_free(c);
    }
}
