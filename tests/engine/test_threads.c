/* SPDX-License-Identifier: MIT */
/* test_threads.c: results do not depend on the thread count.
 *
 * Large elementwise kernels split their arrays into one contiguous chunk per
 * thread, the GEMM splits its output tiles, and the optimisers split large
 * parameters; element i of every such result depends only on element i of
 * the inputs (the GEMM's sums run in a fixed order), so 1 and 2 threads must
 * give the same bits. Each test runs the same computation in two contexts
 * (same seed) with tg_set_threads 1 and 2 and compares tg_hash of every
 * result and gradient, and checks some values against a plain double
 * computation, so a chunk left unwritten or written twice fails both ways.
 * Sizes are above the threads' threshold (64K elements; GEMMs of some 8M
 * multiply-adds). Tiny tensors with many threads work too. */
#include <criterion/criterion.h>

#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "tapegrad.h"

#define CHECK_OK(ctx) cr_assert(tg_ok(ctx), "tapegrad error: %s", tg_errmsg(ctx))

/* a context with `threads` threads, seed 7 */
static tg_ctx *ctx_with(int threads)
{
    tg_ctx *ctx = tg_ctx_new(7);
    cr_assert_not_null(ctx);
    cr_assert_eq(tg_set_threads(ctx, threads), 0);
    cr_assert_eq(tg_get_threads(ctx), threads);
    return ctx;
}

/* tg_hash of t's gradient (a copy of it as a temporary) */
static uint64_t grad_hash(tg_ctx *ctx, const tg_tensor *t)
{
    cr_assert_not_null(tg_grad(t), "no gradient reached the tensor");
    int64_t shape[4];
    for (int i = 0; i < tg_ndim(t); i++) shape[i] = tg_dim(t, i);
    tg_tensor *g = tg_from(ctx, tg_dtype_of(t), tg_ndim(t), shape, tg_grad(t));
    CHECK_OK(ctx);
    return tg_hash(g);
}

static double elem(const void *p, tg_dtype dt, int64_t i)
{
    return dt == TG_F32 ? (double)((const float *)p)[i] : ((const double *)p)[i];
}

/* ---- a chain of elementwise ops over ~1M elements ------------------------- */

#define CHAIN_N ((int64_t)1 << 20)

typedef struct {
    uint64_t y, da, db, dc; /* hashes of the output and of the three gradients */
} chain_hashes;

/* a in [-4, 4), b in [0.5, 1.5), c [1] = 0.75:
 *   y = (relu(sigmoid(tanh(exp(0.3 a))) - 0.6) * b + a) / b - c * log(b) + 0.5 * leaky(a)
 * forward and backward (of sum(w * y) for a fixed random w). Every op but
 * the scalar c's is a large elementwise one: same-shape binary ops, a
 * scalar operand (c), unary ops with vector kernels and threads. */
static void run_chain(int threads, tg_dtype dt, int64_t n, chain_hashes *h, int check)
{
    tg_ctx *ctx = ctx_with(threads);
    tg_tensor *a = tg_param(ctx, "a", dt, 1, &n);
    tg_tensor *b = tg_param(ctx, "b", dt, 1, &n);
    tg_tensor *c = tg_param(ctx, "c", dt, 1, (int64_t[]){1});
    tg_tensor *w = tg_new(ctx, dt, 1, &n);
    CHECK_OK(ctx);
    tg_fill_uniform(ctx, a, -4, 4);
    tg_fill_uniform(ctx, b, 0.5, 1.5);
    tg_fill_uniform(ctx, w, -1, 1);
    if (dt == TG_F32)
        ((float *)tg_data(c))[0] = 0.75f;
    else
        ((double *)tg_data(c))[0] = 0.75;
    tg_tensor *half = tg_from(ctx, dt, 0, NULL, dt == TG_F32 ? (void *)&(float){0.6f}
                                                              : (void *)&(double){0.6});
    tg_tensor *s = tg_sigmoid(ctx, tg_tanh(ctx, tg_exp(ctx, tg_scale(ctx, a, 0.3))));
    tg_tensor *r = tg_relu(ctx, tg_sub(ctx, s, half));
    tg_tensor *q = tg_div(ctx, tg_add(ctx, tg_mul(ctx, r, b), a), b);
    tg_tensor *y = tg_add(ctx, tg_sub(ctx, q, tg_mul(ctx, c, tg_log(ctx, b))),
                          tg_scale(ctx, tg_leaky_relu(ctx, a, 0.1), 0.5));
    tg_tensor *loss = tg_sum(ctx, tg_mul(ctx, w, y));
    CHECK_OK(ctx);
    tg_backward(ctx, loss);
    CHECK_OK(ctx);
    h->y = tg_hash(y);
    h->da = grad_hash(ctx, a);
    h->db = grad_hash(ctx, b);
    h->dc = grad_hash(ctx, c);
    if (check) { /* values at spread indices (chunk edges included) against doubles */
        const double tol = dt == TG_F32 ? 2e-5 : 1e-12;
        int64_t idx[] = {0, 1, 15, 16, 17, n / 2 - 1, n / 2, n / 2 + 1, n - 17, n - 1};
        int nonzero = 0;
        for (int k = 0; k < (int)(sizeof idx / sizeof idx[0]) + 200; k++) {
            int64_t i = k < 10 ? idx[k] : (k - 10) * (n / 200) + k;
            double av = elem(tg_data(a), dt, i), bv = elem(tg_data(b), dt, i);
            double wv = elem(tg_data(w), dt, i);
            double sv = 1 / (1 + exp(-tanh(exp(0.3 * av))));
            double rv = sv - 0.6 > 0 ? sv - 0.6 : 0;
            double lk = av > 0 ? av : 0.1 * av;
            double yv = (rv * bv + av) / bv - 0.75 * log(bv) + 0.5 * lk;
            cr_assert(fabs(elem(tg_data(y), dt, i) - yv) <= tol * (1 + fabs(yv)),
                      "y[%lld] = %.9g, want %.9g", (long long)i, elem(tg_data(y), dt, i), yv);
            /* d y/d a = 1/b + 0.5 leaky'(a) + [r > 0] s' tanh'(e) e 0.3, e = exp(0.3 a) */
            double e = exp(0.3 * av), th = tanh(e);
            double dr = rv > 0 ? sv * (1 - sv) * (1 - th * th) * e * 0.3 : 0;
            double da = wv * (1 / bv + 0.5 * (av > 0 ? 1 : 0.1) + dr);
            cr_assert(fabs(elem(tg_grad(a), dt, i) - da) <= 10 * tol * (1 + fabs(da)),
                      "da[%lld] = %.9g, want %.9g", (long long)i, elem(tg_grad(a), dt, i), da);
            nonzero += da != 0;
        }
        cr_assert_gt(nonzero, 100);
    }
    tg_ctx_free(ctx);
}

static void chain_same_for_1_and_2_threads(tg_dtype dt, int64_t n)
{
    chain_hashes one, two;
    run_chain(1, dt, n, &one, 1);
    run_chain(2, dt, n, &two, 1);
    cr_assert_eq(one.y, two.y, "forward differs between 1 and 2 threads");
    cr_assert_eq(one.da, two.da, "grad of a differs between 1 and 2 threads");
    cr_assert_eq(one.db, two.db, "grad of b differs between 1 and 2 threads");
    cr_assert_eq(one.dc, two.dc, "grad of the scalar c differs between 1 and 2 threads");
}

Test(threads, elementwise_chain_f32_is_bit_identical)
{
    chain_same_for_1_and_2_threads(TG_F32, CHAIN_N);
}

Test(threads, elementwise_chain_f64_is_bit_identical)
{
    /* odd length: the last chunk is not a multiple of the vector width */
    chain_same_for_1_and_2_threads(TG_F64, CHAIN_N / 4 + 13);
}

/* ---- softmax, log_softmax and the losses on large inputs -------------------- */

static void run_rows(int threads, uint64_t h[4])
{
    tg_ctx *ctx = ctx_with(threads);
    int64_t shape[2] = {512, 300};
    tg_tensor *x = tg_param(ctx, "x", TG_F32, 2, shape);
    tg_tensor *w = tg_new(ctx, TG_F32, 2, shape);
    int32_t labels[512];
    for (int i = 0; i < 512; i++) labels[i] = (i * 37) % 300;
    tg_tensor *t = tg_from(ctx, TG_I32, 1, (int64_t[]){512}, labels);
    tg_tensor *p = tg_new(ctx, TG_F32, 2, shape);
    CHECK_OK(ctx);
    tg_fill_uniform(ctx, x, -5, 5);
    tg_fill_uniform(ctx, w, -1, 1);
    tg_fill_uniform(ctx, p, 0.05, 0.95);
    tg_tensor *sm = tg_softmax(ctx, x);
    tg_tensor *ls = tg_log_softmax(ctx, x);
    tg_tensor *loss = tg_add(ctx, tg_sum(ctx, tg_mul(ctx, w, tg_add(ctx, sm, ls))),
                             tg_add(ctx, tg_cross_entropy(ctx, x, t),
                                    tg_bce_with_logits(ctx, x, p)));
    CHECK_OK(ctx);
    tg_backward(ctx, loss);
    CHECK_OK(ctx);
    h[0] = tg_hash(sm);
    h[1] = tg_hash(ls);
    h[2] = tg_hash(loss);
    h[3] = grad_hash(ctx, x);
    /* each softmax row sums to 1 */
    for (int r = 0; r < 512; r += 51) {
        double s = 0;
        for (int j = 0; j < 300; j++) s += elem(tg_data(sm), TG_F32, r * 300 + j);
        cr_assert(fabs(s - 1) < 1e-5, "row %d of softmax sums to %.9g", r, s);
    }
    tg_ctx_free(ctx);
}

Test(threads, softmax_and_losses_are_bit_identical)
{
    uint64_t one[4], two[4];
    run_rows(1, one);
    run_rows(2, two);
    const char *what[4] = {"softmax", "log_softmax", "loss", "grad of x"};
    for (int i = 0; i < 4; i++)
        cr_assert_eq(one[i], two[i], "%s differs between 1 and 2 threads", what[i]);
}

/* ---- a large linear layer: GEMM forward and backward, bias, relu ---------- */

static void run_linear(int threads, tg_act act, uint64_t h[4])
{
    tg_ctx *ctx = ctx_with(threads);
    tg_tensor *x = tg_param(ctx, "x", TG_F32, 2, (int64_t[]){256, 320});
    tg_tensor *w = tg_param(ctx, "w", TG_F32, 2, (int64_t[]){320, 256});
    tg_tensor *b = tg_param(ctx, "b", TG_F32, 1, (int64_t[]){256});
    tg_tensor *v = tg_new(ctx, TG_F32, 2, (int64_t[]){256, 256});
    CHECK_OK(ctx);
    tg_fill_uniform(ctx, x, -1, 1);
    tg_fill_uniform(ctx, w, -0.1, 0.1);
    tg_fill_uniform(ctx, b, -0.2, 0.2);
    tg_fill_uniform(ctx, v, -1, 1);
    /* y = act(x W + b) (64K elements: bias and activation threaded too; 21M
     * multiply-adds per product) and a plain matmul of the same inputs */
    tg_tensor *y = tg_linear(ctx, x, w, b, act);
    tg_tensor *z = tg_matmul(ctx, x, w);
    tg_tensor *loss = tg_sum(ctx, tg_mul(ctx, v, tg_add(ctx, y, z)));
    CHECK_OK(ctx);
    tg_backward(ctx, loss);
    CHECK_OK(ctx);
    h[0] = tg_hash(y);
    h[1] = grad_hash(ctx, x);
    h[2] = grad_hash(ctx, w);
    h[3] = grad_hash(ctx, b);
    /* one output against a double dot product */
    for (int k = 0; k < 5; k++) {
        int64_t i = 17 + 50 * k, j = 3 + 50 * k;
        double p = elem(tg_data(b), TG_F32, j);
        for (int64_t q = 0; q < 320; q++)
            p += elem(tg_data(x), TG_F32, i * 320 + q) * elem(tg_data(w), TG_F32, q * 256 + j);
        double want = act == TG_ACT_RELU ? (p > 0 ? p : 0) : tanh(p);
        cr_assert(fabs(elem(tg_data(y), TG_F32, i * 256 + j) - want) < 1e-5, "y[%lld,%lld]",
                  (long long)i, (long long)j);
    }
    tg_ctx_free(ctx);
}

/* tg_from copies a large array in pieces over the threads: every byte arrives, in
 * f32, f64 and i32, at a size that is no multiple of the pieces' alignment. */
Test(threads, tg_from_copies_every_element)
{
    const int64_t n = 300007; /* above the threshold, odd */
    double *src = malloc((size_t)n * sizeof *src);
    cr_assert_not_null(src);
    for (int64_t i = 0; i < n; i++) src[i] = (double)i * 0.75 - 1e5;
    tg_ctx *ctx = ctx_with(2);
    const tg_dtype dts[3] = {TG_F32, TG_F64, TG_I32};
    for (int d = 0; d < 3; d++) {
        /* n elements of the dtype from the first bytes of src (f32 and i32: half of them) */
        tg_tensor *t = tg_from(ctx, dts[d], 1, &n, src);
        CHECK_OK(ctx);
        cr_assert_eq(memcmp(tg_data(t), src, (size_t)n * tg_dtype_size(dts[d])), 0,
                     "%s: tg_from's copy differs from its source", tg_dtype_name(dts[d]));
    }
    tg_ctx_free(ctx);
    free(src);
}

Test(threads, linear_and_matmul_are_bit_identical)
{
    const tg_act acts[2] = {TG_ACT_RELU, TG_ACT_TANH};
    for (int a = 0; a < 2; a++) {
        uint64_t one[4], two[4];
        run_linear(1, acts[a], one);
        run_linear(2, acts[a], two);
        const char *what[4] = {"y", "grad of x", "grad of w", "grad of b"};
        for (int i = 0; i < 4; i++)
            cr_assert_eq(one[i], two[i], "act %d: %s differs between 1 and 2 threads", (int)acts[a],
                         what[i]);
    }
}

/* ---- Adam training steps of a 784-256-10 MLP -------------------------------- */

#define MLP_PARAMS 4
#define MLP_BATCH 256 /* hidden activations [256,256]: 64K elements, threaded */
#define MLP_STEPS 2    /* the second one uses the state the first one left */

static void train_mlp(int threads, tg_opt_kind kind, uint64_t h[MLP_PARAMS], uint64_t init[MLP_PARAMS])
{
    tg_ctx *ctx = ctx_with(threads);
    tg_mlp m;
    cr_assert_eq(tg_mlp_init(ctx, &m, "fc", 3, (const int64_t[]){784, 256, 10}, TG_ACT_RELU,
                             TG_F32),
                 0, "%s", tg_errmsg(ctx));
    tg_tensor *p[MLP_PARAMS];
    cr_assert_eq(tg_mlp_params(&m, p, MLP_PARAMS), MLP_PARAMS);
    if (init)
        for (int i = 0; i < MLP_PARAMS; i++) init[i] = tg_hash(p[i]);
    tg_optim_opts o = tg_optim_defaults(kind);
    tg_optim *opt = tg_optim_new(ctx, &o, NULL, 0);
    cr_assert_not_null(opt, "%s", tg_errmsg(ctx));
    int32_t labels[MLP_BATCH];
    for (int step = 0; step < MLP_STEPS; step++) {
        tg_tensor *x = tg_new(ctx, TG_F32, 2, (int64_t[]){MLP_BATCH, 784});
        CHECK_OK(ctx);
        tg_fill_uniform(ctx, x, 0, 1);
        for (int i = 0; i < MLP_BATCH; i++) labels[i] = (int32_t)tg_rand_below(ctx, 10);
        tg_tensor *y = tg_from(ctx, TG_I32, 1, (int64_t[]){MLP_BATCH}, labels);
        tg_tensor *loss = tg_cross_entropy(ctx, tg_mlp_forward(ctx, &m, x), y);
        tg_zero_grad(ctx);
        tg_backward(ctx, loss);
        cr_assert_eq(tg_optim_step(opt), 0, "%s", tg_errmsg(ctx));
        CHECK_OK(ctx);
        tg_reset(ctx);
    }
    for (int i = 0; i < MLP_PARAMS; i++) h[i] = tg_hash(p[i]);
    tg_optim_free(opt);
    tg_ctx_free(ctx);
}

static void training_same_for_1_and_2_threads(tg_opt_kind kind)
{
    uint64_t one[MLP_PARAMS], two[MLP_PARAMS], init[MLP_PARAMS];
    train_mlp(1, kind, one, init);
    train_mlp(2, kind, two, NULL);
    for (int i = 0; i < MLP_PARAMS; i++) {
        cr_assert_neq(one[i], init[i], "%s: parameter %d did not change", tg_optim_kind_name(kind),
                      i);
        cr_assert_eq(one[i], two[i], "%s: parameter %d differs between 1 and 2 threads",
                     tg_optim_kind_name(kind), i);
    }
}

Test(threads, adam_training_is_bit_identical) { training_same_for_1_and_2_threads(TG_OPT_ADAM); }

Test(threads, rmsprop_training_is_bit_identical)
{
    training_same_for_1_and_2_threads(TG_OPT_RMSPROP);
}

/* ---- tiny tensors with many threads ------------------------------------------ */

Test(threads, tiny_tensors_with_many_threads)
{
    tg_ctx *ctx = ctx_with(64);
    tg_tensor *a = tg_param(ctx, "a", TG_F32, 1, (int64_t[]){4});
    tg_tensor *b = tg_param(ctx, "b", TG_F32, 1, (int64_t[]){4});
    tg_tensor *w = tg_param(ctx, "w", TG_F32, 2, (int64_t[]){4, 3});
    CHECK_OK(ctx);
    const float av[4] = {-1.5f, -0.25f, 0.5f, 2.0f}, bv[4] = {1, 2, 3, 4};
    memcpy(tg_data(a), av, sizeof av);
    memcpy(tg_data(b), bv, sizeof bv);
    float *wd = tg_data(w);
    for (int i = 0; i < 12; i++) wd[i] = 0.1f * (float)(i - 5);
    tg_optim_opts o = tg_optim_defaults(TG_OPT_ADAM);
    tg_optim *opt = tg_optim_new(ctx, &o, NULL, 0);
    cr_assert_not_null(opt, "%s", tg_errmsg(ctx));
    /* y = relu(a) * b + exp(a); loss = sum(y) + sum(tanh(a^T W)) */
    tg_tensor *y = tg_add(ctx, tg_mul(ctx, tg_relu(ctx, a), b), tg_exp(ctx, a));
    tg_tensor *h = tg_linear(ctx, tg_reshape(ctx, a, 2, (int64_t[]){1, 4}), w, NULL, TG_ACT_TANH);
    tg_tensor *loss = tg_add(ctx, tg_sum(ctx, y), tg_sum(ctx, h));
    CHECK_OK(ctx);
    tg_backward(ctx, loss);
    CHECK_OK(ctx);
    for (int i = 0; i < 4; i++) {
        double want = (av[i] > 0 ? av[i] : 0) * bv[i] + exp(av[i]);
        cr_assert(fabs(elem(tg_data(y), TG_F32, i) - want) < 1e-5, "y[%d]", i);
        /* d loss/d a_i = [a > 0] b + e^a + sum_j W_ij (1 - h_j^2) */
        double da = (av[i] > 0 ? bv[i] : 0) + exp(av[i]);
        for (int j = 0; j < 3; j++) {
            double hj = elem(tg_data(h), TG_F32, j);
            da += wd[i * 3 + j] * (1 - hj * hj);
        }
        cr_assert(fabs(elem(tg_grad(a), TG_F32, i) - da) < 1e-5, "da[%d] = %g, want %g", i,
                  elem(tg_grad(a), TG_F32, i), da);
        cr_assert_eq(elem(tg_grad(b), TG_F32, i), av[i] > 0 ? av[i] : 0, "db[%d]", i);
    }
    /* Adam's first step moves every parameter against its gradient's sign by lr */
    double sign[4];
    for (int i = 0; i < 4; i++) sign[i] = elem(tg_grad(a), TG_F32, i) > 0 ? 1 : -1;
    cr_assert_eq(tg_optim_step(opt), 0);
    for (int i = 0; i < 4; i++)
        cr_assert(fabs(elem(tg_data(a), TG_F32, i) - (av[i] - 1e-3 * sign[i])) < 1e-6,
                  "a[%d] after Adam: %.9g", i, elem(tg_data(a), TG_F32, i));
    tg_optim_free(opt);
    tg_ctx_free(ctx);
}
