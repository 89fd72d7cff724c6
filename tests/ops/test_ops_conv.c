/* SPDX-License-Identifier: MIT */
/* test_ops_conv.c: tg_conv2d, tg_max_pool2d, tg_avg_pool2d (ops/conv.c).
 *
 * Gradients: float64 central differences of sum(r * f(x)) with fixed random
 * r, for every input, over the geometries a user meets (stride > 1, padding,
 * odd and non-square planes, a kernel as large as the padded input, a batch
 * of 1, no bias, 1x1 kernels). Values: against PyTorch's F.conv2d /
 * F.max_pool2d / F.avg_pool2d (tests/conv_reference.py writes
 * conv_reference.h). Then f32 against f64, the same bits for 1 and 2
 * threads, and each bad argument's message with nothing recorded. */
#include <math.h>

#include "tg_test.h"

/* one F.conv2d case: x [xs], w [ws], a bias [ws[0]] when bias; y and the
 * gradients of sum(r * y), ny, nx, nw elements (db: ws[0], or NULL) */
typedef struct {
    const char *name;
    int64_t xs[4], ws[4];
    int bias, stride, padding;
    int64_t ny, nx, nw;
    const double *y, *dx, *dw, *db;
} conv_ref;

/* one pooling case: max (1) or avg (0) pool of x [xs] with kernel and stride
 * to y [ys]; y and the gradient of sum(r * y), ny and nx elements */
typedef struct {
    const char *name;
    int max;
    int64_t xs[4];
    int kernel, stride;
    int64_t ys[4];
    int64_t ny, nx;
    const double *y, *dx;
} pool_ref;

#include "conv_reference.h" /* CONV_REFS and POOL_REFS */

/* ---- inputs of the reference cases (the formulas of conv_reference.py) ---- */

static tg_tensor *formula(tg_ctx *c, tg_dtype dt, shp s, int which)
{
    tg_tensor *t = tg_new(c, dt, s.ndim, s.shape);
    cr_assert_not_null(t, "%s", tg_errmsg(c));
    for (int64_t i = 0; i < tg_numel(t); i++) {
        double v = which == 0   ? sin(0.37 * (double)i + 0.1)
                   : which == 1 ? 0.5 * cos(0.53 * (double)i + 0.2)
                   : which == 2 ? 0.1 * (double)i - 0.15
                                : sin(0.11 * (double)i + 0.5);
        set_at(t, i, v);
    }
    return t;
}
enum { F_X, F_W, F_B, F_R };

/* t (or its gradient, grad 1) against PyTorch's want: what names the case */
static void expect_ref(const tg_tensor *t, const double *want, int64_t n, double tol, int grad,
                       const char *what, const char *part)
{
    char name[64];
    snprintf(name, sizeof name, "%s %s (PyTorch)", what, part);
    assert_near(t, want, n, tol, grad, name);
}

/* y = op(inputs), loss = sum(r * y) with r = formula F_R of y's shape */
static tg_tensor *proj_loss(tg_ctx *c, tg_tensor *y)
{
    cr_assert_not_null(y, "%s", tg_errmsg(c));
    shp s = {tg_ndim(y), {0}};
    for (int d = 0; d < s.ndim; d++) s.shape[d] = tg_dim(y, d);
    tg_tensor *r = formula(c, tg_dtype_of(y), s, F_R);
    return tg_sum(c, tg_mul(c, y, r));
}

/* the shape of a reference table's 4-D sizes */
static shp shape4(const int64_t *d) { return (shp){4, {d[0], d[1], d[2], d[3]}}; }

static void check_conv_ref(tg_dtype dt, const conv_ref *k, double tol)
{
    tg_ctx *c = tg_ctx_new(1);
    tg_tensor *x = formula(c, dt, shape4(k->xs), F_X), *w = formula(c, dt, shape4(k->ws), F_W);
    tg_tensor *b = k->bias ? formula(c, dt, (shp){1, {k->ws[0]}}, F_B) : NULL;
    tg_set_requires_grad(x, 1);
    tg_set_requires_grad(w, 1);
    if (b) tg_set_requires_grad(b, 1);
    tg_tensor *y = tg_conv2d(c, x, w, b, k->stride, k->padding);
    cr_assert_not_null(y, "%s: %s", k->name, tg_errmsg(c));
    expect_ref(y, k->y, k->ny, tol, 0, k->name, "y");
    tg_backward(c, proj_loss(c, y));
    cr_assert(tg_ok(c), "%s: %s", k->name, tg_errmsg(c));
    expect_ref(x, k->dx, k->nx, tol, 1, k->name, "dx");
    expect_ref(w, k->dw, k->nw, tol, 1, k->name, "dw");
    if (b) expect_ref(b, k->db, k->ws[0], tol, 1, k->name, "db");
    tg_ctx_free(c);
}

Test(conv_ref, conv2d_matches_pytorch_f64)
{
    for (size_t i = 0; i < sizeof CONV_REFS / sizeof CONV_REFS[0]; i++)
        check_conv_ref(TG_F64, &CONV_REFS[i], 1e-12);
}

Test(conv_ref, conv2d_matches_pytorch_f32)
{
    for (size_t i = 0; i < sizeof CONV_REFS / sizeof CONV_REFS[0]; i++)
        check_conv_ref(TG_F32, &CONV_REFS[i], 2e-5);
}

static void check_pool_ref(tg_dtype dt, const pool_ref *k, double tol)
{
    tg_ctx *c = tg_ctx_new(1);
    tg_tensor *x = formula(c, dt, shape4(k->xs), F_X);
    tg_set_requires_grad(x, 1);
    tg_tensor *y = k->max ? tg_max_pool2d(c, x, k->kernel, k->stride)
                          : tg_avg_pool2d(c, x, k->kernel, k->stride);
    cr_assert_not_null(y, "%s: %s", k->name, tg_errmsg(c));
    for (int d = 0; d < 4; d++)
        cr_assert_eq(tg_dim(y, d), k->ys[d], "%s: y size %d", k->name, d);
    expect_ref(y, k->y, k->ny, tol, 0, k->name, "y");
    tg_backward(c, proj_loss(c, y));
    expect_ref(x, k->dx, k->nx, tol, 1, k->name, "dx");
    tg_ctx_free(c);
}

Test(conv_ref, pools_match_pytorch)
{
    for (size_t i = 0; i < sizeof POOL_REFS / sizeof POOL_REFS[0]; i++) {
        check_pool_ref(TG_F64, &POOL_REFS[i], 1e-13);
        check_pool_ref(TG_F32, &POOL_REFS[i], 1e-6);
    }
}

/* ---- gradient checks ------------------------------------------------------ */

typedef struct {
    int stride, padding, kernel, op; /* op: 0 conv2d, 1 max pool, 2 avg pool */
} fn_args;

static tg_tensor *conv_fn(tg_ctx *c, tg_tensor *const *in, void *user)
{
    const fn_args *a = user;
    return tg_conv2d(c, in[0], in[1], a->op == 3 ? NULL : in[2], a->stride, a->padding);
}

static tg_tensor *pool_fn(tg_ctx *c, tg_tensor *const *in, void *user)
{
    const fn_args *a = user;
    return a->op == 1 ? tg_max_pool2d(c, in[0], a->kernel, a->stride)
                      : tg_avg_pool2d(c, in[0], a->kernel, a->stride);
}

/* the full Jacobian of conv2d for x [xs], w [ws], b [O] (or none) */
static void gradcheck_conv(shp xs, shp ws, int bias, int stride, int padding, const char *what)
{
    tg_ctx *c = tg_ctx_new(7);
    tg_tensor *in[3] = {rnd(c, TG_F64, xs, -1, 1), rnd(c, TG_F64, ws, -1, 1),
                        bias ? rand1(c, TG_F64, ws.shape[0], -1, 1) : NULL};
    fn_args a = {stride, padding, 0, bias ? 0 : 3};
    int n = bias ? 3 : 2;
    gradcheck_ok(c, conv_fn, &a, in, n, what);
    assert_grads_nonzero(c, conv_fn, &a, in, n, LOSS_SUM_W, what);
    tg_ctx_free(c);
}

Test(conv_grad, stride_padding_odd_sizes)
{
    gradcheck_conv((shp){4, {2, 3, 7, 5}}, (shp){4, {4, 3, 3, 3}}, 1, 2, 1, "stride 2 pad 1");
    gradcheck_conv((shp){4, {2, 2, 5, 6}}, (shp){4, {3, 2, 2, 3}}, 1, 3, 2, "stride 3 pad 2");
    gradcheck_conv((shp){4, {1, 2, 5, 5}}, (shp){4, {3, 2, 3, 3}}, 1, 1, 0, "stride 1 valid");
}

Test(conv_grad, kernel_equal_to_padded_input)
{
    gradcheck_conv((shp){4, {2, 2, 4, 3}}, (shp){4, {3, 2, 4, 3}}, 1, 1, 0, "kernel = input");
    gradcheck_conv((shp){4, {1, 2, 3, 2}}, (shp){4, {2, 2, 5, 4}}, 1, 1, 1,
                   "kernel = padded input");
}

Test(conv_grad, batch_of_one_no_bias_non_square)
{
    gradcheck_conv((shp){4, {1, 3, 6, 4}}, (shp){4, {2, 3, 3, 2}}, 0, 1, 1, "N=1 no bias");
    gradcheck_conv((shp){4, {3, 1, 3, 8}}, (shp){4, {2, 1, 2, 5}}, 0, 2, 2, "non-square");
}

Test(conv_grad, pointwise_1x1)
{
    gradcheck_conv((shp){4, {2, 3, 3, 4}}, (shp){4, {4, 3, 1, 1}}, 1, 1, 0, "1x1");
    gradcheck_conv((shp){4, {2, 3, 3, 4}}, (shp){4, {4, 3, 1, 1}}, 1, 2, 1, "1x1 stride 2 pad");
}

/* x of distinct values 0.05 apart (shuffled): no tie within any window, so
 * max pool has no kink within the finite-difference step */
static tg_tensor *distinct(tg_ctx *c, shp s)
{
    tg_tensor *t = tg_new(c, TG_F64, s.ndim, s.shape);
    int64_t n = tg_numel(t);
    for (int64_t i = 0; i < n; i++) set_at(t, i, 0.05 * (double)i - 1.0);
    uint64_t st = 12345;
    for (int64_t i = n - 1; i > 0; i--) { /* Fisher-Yates with a small LCG */
        st = st * 6364136223846793005ull + 1442695040888963407ull;
        int64_t j = (int64_t)((st >> 33) % (uint64_t)(i + 1));
        double a = at(t, i);
        set_at(t, i, at(t, j));
        set_at(t, j, a);
    }
    return t;
}

static void gradcheck_pool(int op, shp xs, int kernel, int stride, const char *what)
{
    tg_ctx *c = tg_ctx_new(9);
    tg_tensor *in[1] = {distinct(c, xs)};
    fn_args a = {stride, 0, kernel, op};
    gradcheck_ok(c, pool_fn, &a, in, 1, what);
    assert_grads_nonzero(c, pool_fn, &a, in, 1, LOSS_SUM_W, what);
    tg_ctx_free(c);
}

Test(pool_grad, max_and_avg)
{
    for (int op = 1; op <= 2; op++) {
        gradcheck_pool(op, (shp){4, {2, 2, 7, 5}}, 2, 2, "k2 s2 odd");
        gradcheck_pool(op, (shp){4, {1, 3, 6, 6}}, 3, 1, "k3 s1 overlapping");
        gradcheck_pool(op, (shp){4, {2, 1, 5, 4}}, 3, 2, "k3 s2 non-square");
        gradcheck_pool(op, (shp){4, {1, 2, 3, 4}}, 3, 3, "kernel = height");
    }
}

Test(pool_grad, max_pool_ties_go_to_the_first)
{
    tg_ctx *c = tg_ctx_new(1);
    tg_tensor *x = tg_new(c, TG_F64, 4, (const int64_t[]){1, 1, 2, 2});
    for (int i = 0; i < 4; i++) set_at(x, i, 1.0);
    tg_set_requires_grad(x, 1);
    tg_tensor *y = tg_max_pool2d(c, x, 2, 2);
    tg_backward(c, tg_sum(c, y));
    cr_assert_eq(grad_at(x, 0), 1.0);
    for (int i = 1; i < 4; i++) cr_assert_eq(grad_at(x, i), 0.0);
    tg_ctx_free(c);
}

/* ---- f32 against f64, and threads ----------------------------------------- */

/* x [xs] uniform in [-1, 1), w [ws] in [-w_range, w_range), b [O] in [-1, 1),
 * drawn in that order from c's generator, all requiring grad */
typedef struct {
    tg_tensor *x, *w, *b;
} conv_in;

static conv_in conv_inputs(tg_ctx *c, tg_dtype dt, shp xs, shp ws, double w_range)
{
    conv_in t = {rnd(c, dt, xs, -1, 1), rnd(c, dt, ws, -w_range, w_range), NULL};
    t.b = rand1(c, dt, ws.shape[0], -1, 1);
    tg_set_requires_grad(t.x, 1);
    tg_set_requires_grad(t.w, 1);
    tg_set_requires_grad(t.b, 1);
    return t;
}

Test(conv_precision, f32_agrees_with_f64)
{
    tg_ctx *c = tg_ctx_new(3);
    conv_in in = conv_inputs(c, TG_F64, (shp){4, {3, 4, 11, 9}}, (shp){4, {5, 4, 3, 3}}, 0.5);
    tg_tensor *x64 = in.x, *w64 = in.w, *b64 = in.b;
    tg_tensor *x32 = convert(c, x64, TG_F32), *w32 = convert(c, w64, TG_F32),
              *b32 = convert(c, b64, TG_F32);
    tg_tensor *ts[6] = {x64, w64, b64, x32, w32, b32};
    for (int i = 0; i < 6; i++) tg_set_requires_grad(ts[i], 1);
    tg_tensor *y64 = tg_max_pool2d(c, tg_relu(c, tg_conv2d(c, x64, w64, b64, 1, 1)), 2, 2);
    tg_tensor *y32 = tg_max_pool2d(c, tg_relu(c, tg_conv2d(c, x32, w32, b32, 1, 1)), 2, 2);
    tg_tensor *z64 = tg_avg_pool2d(c, y64, 2, 1), *z32 = tg_avg_pool2d(c, y32, 2, 1);
    tg_backward(c, proj_loss(c, z64));
    tg_backward(c, proj_loss(c, z32));
    cr_assert(tg_ok(c), "%s", tg_errmsg(c));
    for (int64_t i = 0; i < tg_numel(z64); i++)
        cr_assert(fabs(at(z64, i) - at(z32, i)) <= 1e-5 * (1 + fabs(at(z64, i))), "y[%lld]",
                  (long long)i);
    for (int k = 0; k < 3; k++)
        for (int64_t i = 0; i < tg_numel(ts[k]); i++)
            cr_assert(fabs(grad_at(ts[k], i) - grad_at(ts[k + 3], i)) <=
                          1e-4 * (1 + fabs(grad_at(ts[k], i))),
                      "input %d grad[%lld]: %g vs %g", k, (long long)i, grad_at(ts[k], i),
                      grad_at(ts[k + 3], i));
    tg_ctx_free(c);
}

/* output and gradients of a conv big enough for the GEMM to split, with nt threads */
static void run_threads(int nt, float **out, size_t *bytes)
{
    tg_ctx *c = tg_ctx_new(11);
    tg_set_threads(c, nt);
    conv_in in = conv_inputs(c, TG_F32, (shp){4, {4, 16, 14, 14}}, (shp){4, {32, 16, 5, 5}}, 0.1);
    tg_tensor *x = in.x, *w = in.w, *b = in.b;
    tg_tensor *y = tg_conv2d(c, x, w, b, 1, 2);
    tg_backward(c, proj_loss(c, y));
    cr_assert(tg_ok(c), "%s", tg_errmsg(c));
    const tg_tensor *parts[4] = {y, x, w, b};
    size_t n = (size_t)(tg_numel(y) + tg_numel(x) + tg_numel(w) + tg_numel(b));
    float *buf = malloc(n * sizeof *buf), *p = buf;
    memcpy(p, tg_data(y), (size_t)tg_numel(y) * 4);
    p += tg_numel(y);
    for (int k = 1; k < 4; k++) {
        memcpy(p, tg_grad(parts[k]), (size_t)tg_numel(parts[k]) * 4);
        p += tg_numel(parts[k]);
    }
    *out = buf;
    *bytes = n * sizeof *buf;
    tg_ctx_free(c);
}

Test(conv_threads, same_bits_for_1_and_2_threads)
{
    float *a, *b;
    size_t na, nb;
    run_threads(1, &a, &na);
    run_threads(2, &b, &nb);
    cr_assert_eq(na, nb);
    cr_assert_eq(memcmp(a, b, na), 0, "results differ between 1 and 2 threads");
    free(a);
    free(b);
}

/* ---- bad arguments --------------------------------------------------------- */

Test(conv_errors, each_bad_argument_names_the_problem)
{
    tg_ctx *c = tg_ctx_new(1);
    conv_in in = conv_inputs(c, TG_F32, (shp){4, {2, 3, 8, 8}}, (shp){4, {4, 3, 3, 3}}, 1);
    tg_tensor *x = in.x, *w = in.w, *b = in.b;
    int64_t tape = tg_tape_len(c);
    tg_tensor *x3 = rnd(c, TG_F32, (shp){3, {3, 8, 8}}, -1, 1);
    assert_null_err(c, tg_conv2d(c, x3, w, b, 1, 0), "tg_conv2d", "4-D", "[3,8,8]");
    tg_tensor *w2 = rnd(c, TG_F32, (shp){4, {4, 2, 3, 3}}, -1, 1);
    assert_null_err(c, tg_conv2d(c, x, w2, b, 1, 0), "tg_conv2d",
                    "x [2,3,8,8] has 3 channels but w [4,2,3,3] expects 2", NULL);
    tg_tensor *wbig = rnd(c, TG_F32, (shp){4, {4, 3, 11, 3}}, -1, 1);
    assert_null_err(c, tg_conv2d(c, x, wbig, b, 1, 1), "tg_conv2d", "kernel 11x3",
                    "padded input 10x10");
    assert_null_err(c, tg_conv2d(c, x, w, b, 0, 0), "tg_conv2d", "stride 0", NULL);
    assert_null_err(c, tg_conv2d(c, x, w, b, 1, -1), "tg_conv2d", "padding -1", NULL);
    tg_tensor *b5 = rand1(c, TG_F32, 5, -1, 1);
    assert_null_err(c, tg_conv2d(c, x, w, b5, 1, 0), "tg_conv2d", "bias must be [4]", "[5]");
    tg_tensor *w64 = rnd(c, TG_F64, (shp){4, {4, 3, 3, 3}}, -1, 1);
    assert_null_err(c, tg_conv2d(c, x, w64, b, 1, 0), "tg_conv2d", "f32", "f64");
    assert_null_err(c, tg_conv2d(c, x, NULL, b, 1, 0), "tg_conv2d", "NULL", NULL);

    assert_null_err(c, tg_max_pool2d(c, x3, 2, 2), "tg_max_pool2d", "4-D", "[3,8,8]");
    assert_null_err(c, tg_max_pool2d(c, x, 2, 0), "tg_max_pool2d", "stride 0", NULL);
    assert_null_err(c, tg_avg_pool2d(c, x, 0, 1), "tg_avg_pool2d", "kernel 0", NULL);
    assert_null_err(c, tg_avg_pool2d(c, x, 9, 1), "tg_avg_pool2d", "kernel 9 is larger",
                    "8x8");
    tg_tensor *xi = tg_new(c, TG_I32, 4, (const int64_t[]){1, 1, 2, 2});
    assert_null_err(c, tg_avg_pool2d(c, xi, 2, 1), "tg_avg_pool2d", "f32 or f64", NULL);
    cr_assert_eq(tg_tape_len(c), tape, "a failing call recorded a node");

    /* while an error is recorded, every call returns NULL and keeps the first message */
    tg_set_error(c, "earlier");
    cr_assert_null(tg_conv2d(c, x, w, b, 1, 0));
    cr_assert_null(tg_max_pool2d(c, x, 2, 2));
    cr_assert_str_eq(tg_errmsg(c), "earlier");
    tg_ctx_free(c);
}
