/* SPDX-License-Identifier: MIT */
/* test_training.c: whole training runs, end to end.
 *
 * - Same seed, same build: bit-identical parameters after training with
 *   shuffled batches and Adam (tg_hash of every parameter); a different seed
 *   gives different parameters; the thread count does not change them.
 * - An MLP separates two rings (not linearly separable) on held-out data;
 *   softmax regression cannot.
 * - Every optimiser lowers the loss on the same problem.
 * - ADALINE (a linear neuron, MSE, gradient descent) reaches the
 *   least-squares solution of the normal equations.
 * - A model saved with its architecture in the metadata is rebuilt from it
 *   and predicts exactly as before (what tg-mlp eval does).
 */
#include <criterion/criterion.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "tapegrad.h"
#include "tg_test.h"

#define CHECK_OK(ctx) cr_assert(tg_ok(ctx), "tapegrad error: %s", tg_errmsg(ctx))

/* Two noisy concentric rings in 2-D, n points, labels alternating 0 (inner,
 * radius 0.5) and 1 (outer, radius 1.0), drawn from ctx's generator. */
static tg_dataset *rings(tg_ctx *ctx, int64_t n) {
    tg_dataset *ds = tg_dataset_new(ctx, n, 2, 0);
    cr_assert_not_null(ds, "%s", tg_errmsg(ctx));
    for (int64_t i = 0; i < n; i++) {
        int c = (int)(i % 2);
        double r = (c ? 1.0 : 0.5) + 0.1 * (tg_rand_uniform(ctx) - 0.5);
        double t = 6.283185307179586 * tg_rand_uniform(ctx);
        ds->x[2 * i] = (float)(r * cos(t));
        ds->x[2 * i + 1] = (float)(r * sin(t));
        ds->labels[i] = c;
    }
    ds->n_classes = 2;
    return ds;
}

/* Train m on ds for `epochs` epochs in shuffled batches; returns the mean
 * loss of the last epoch. */
static double fit(tg_ctx *ctx, tg_mlp *m, const tg_dataset *ds, const tg_optim_opts *o,
                  int epochs, int64_t batch) {
    tg_tensor *params[2 * TG_MLP_MAX_LAYERS];
    int np = tg_mlp_params(m, params, 2 * TG_MLP_MAX_LAYERS);
    tg_optim *opt = tg_optim_new(ctx, o, params, np);
    cr_assert_not_null(opt, "%s", tg_errmsg(ctx));
    tg_batcher b;
    cr_assert_eq(tg_batcher_init(&b, ctx, ds, batch, TG_BATCH_SHUFFLE), 0, "%s", tg_errmsg(ctx));
    double last = NAN;
    for (int e = 0; e < epochs; e++) {
        tg_mean_meter mm = {0};
        tg_tensor *x, *y;
        while (tg_batcher_next(&b, &x, &y) == 1) {
            int64_t n = tg_dim(x, 0); /* x is gone after the step */
            tg_tensor *loss = tg_cross_entropy(ctx, tg_mlp_forward(ctx, m, x), y);
            tg_mean_meter_add(&mm, train_step(ctx, opt, loss), n);
        }
        CHECK_OK(ctx);
        last = tg_mean_meter_mean(&mm);
    }
    tg_batcher_free(&b);
    tg_optim_free(opt);
    return last;
}

/* accuracy of m on all of ds */
static double accuracy(tg_ctx *ctx, const tg_mlp *m, const tg_dataset *ds) {
    int64_t *idx = malloc((size_t)ds->n * sizeof *idx);
    cr_assert_not_null(idx);
    for (int64_t i = 0; i < ds->n; i++) idx[i] = i;
    tg_tensor *x, *y;
    int prev = tg_no_grad(ctx, 1);
    cr_assert_eq(tg_dataset_batch(ctx, ds, idx, ds->n, TG_F32, &x, &y), 0, "%s", tg_errmsg(ctx));
    double acc = tg_accuracy(tg_mlp_forward(ctx, m, x), y);
    CHECK_OK(ctx);
    tg_reset(ctx);
    tg_no_grad(ctx, prev);
    free(idx);
    return acc;
}

/* ---- determinism ---------------------------------------------------------- */

#define DET_PARAMS 6 /* 3 layers: weight and bias each */

/* A fresh context: data, a 2-32-32-2 tanh MLP, Adam on shuffled batches of
 * 16 for 4 epochs. Writes the hash of every parameter (and of the initial
 * first weight). */
static void train_once(uint64_t seed, int threads, uint64_t hash[DET_PARAMS], uint64_t *init_hash) {
    tg_ctx *ctx = tg_ctx_new(seed);
    cr_assert_not_null(ctx);
    if (threads) tg_set_threads(ctx, threads);
    tg_dataset *ds = rings(ctx, 160);
    tg_mlp m;
    cr_assert_eq(tg_mlp_init(ctx, &m, "fc", 4, (const int64_t[]){2, 32, 32, 2}, TG_ACT_TANH, TG_F32),
                 0, "%s", tg_errmsg(ctx));
    if (init_hash) *init_hash = tg_hash(m.layer[0].weight);
    tg_optim_opts o = tg_optim_defaults(TG_OPT_ADAM);
    o.lr = 1e-2;
    fit(ctx, &m, ds, &o, 4, 16);
    tg_tensor *p[DET_PARAMS];
    cr_assert_eq(tg_mlp_params(&m, p, DET_PARAMS), DET_PARAMS);
    for (int i = 0; i < DET_PARAMS; i++) hash[i] = tg_hash(p[i]);
    tg_dataset_free(ds);
    tg_ctx_free(ctx);
}

Test(training, same_seed_gives_bit_identical_parameters) {
    uint64_t a[DET_PARAMS], b[DET_PARAMS], c[DET_PARAMS], init;
    train_once(1, 0, a, &init);
    train_once(1, 0, b, NULL);
    train_once(2, 0, c, NULL);
    cr_assert_neq(a[0], init, "training did not change the first weight");
    int differ = 0;
    for (int i = 0; i < DET_PARAMS; i++) {
        cr_assert_eq(a[i], b[i], "parameter %d differs between two runs with seed 1", i);
        differ += a[i] != c[i];
    }
    /* every parameter, biases included, depends on the seed */
    cr_assert_eq(differ, DET_PARAMS, "only %d of %d parameters differ with seed 2", differ,
                 DET_PARAMS);
}

Test(training, thread_count_does_not_change_the_result) {
    uint64_t one[DET_PARAMS], two[DET_PARAMS];
    train_once(5, 1, one, NULL);
    train_once(5, 2, two, NULL);
    for (int i = 0; i < DET_PARAMS; i++)
        cr_assert_eq(one[i], two[i], "parameter %d differs between 1 and 2 threads", i);
}

/* ---- learning --------------------------------------------------------------- */

Test(training, mlp_separates_rings_softmax_regression_cannot) {
    tg_ctx *ctx = tg_ctx_new(3);
    tg_dataset *all = rings(ctx, 400), *tr = NULL, *te = NULL;
    cr_assert_eq(tg_dataset_split(ctx, all, 0.25, &tr, &te), 0, "%s", tg_errmsg(ctx));
    tg_optim_opts o = tg_optim_defaults(TG_OPT_ADAM);
    o.lr = 1e-2;

    tg_mlp mlp, lin;
    tg_mlp_init(ctx, &mlp, "mlp", 3, (const int64_t[]){2, 16, 2}, TG_ACT_TANH, TG_F32);
    tg_mlp_init(ctx, &lin, "lin", 2, (const int64_t[]){2, 2}, TG_ACT_NONE, TG_F32);
    CHECK_OK(ctx);
    double l_mlp = fit(ctx, &mlp, tr, &o, 60, 32);
    double l_lin = fit(ctx, &lin, tr, &o, 60, 32);
    double a_mlp = accuracy(ctx, &mlp, te), a_lin = accuracy(ctx, &lin, te);
    cr_assert_gt(a_mlp, 0.95, "MLP test accuracy %.3f (last loss %.4f)", a_mlp, l_mlp);
    /* a line through two concentric rings gets about half of them right */
    cr_assert_lt(a_lin, 0.75, "softmax regression reached %.3f on rings?", a_lin);
    cr_assert_lt(l_mlp, l_lin / 2, "MLP loss %.4f, softmax regression %.4f", l_mlp, l_lin);
    tg_dataset_free(all);
    tg_dataset_free(tr);
    tg_dataset_free(te);
    tg_ctx_free(ctx);
}

Test(training, every_optimiser_lowers_the_loss) {
    struct {
        tg_opt_kind kind;
        double lr, momentum;
        const char *name;
    } cases[] = {{TG_OPT_SGD, 0.3, 0, "sgd"},
                 {TG_OPT_SGD, 0.05, 0.9, "momentum"},
                 {TG_OPT_RMSPROP, 1e-2, 0, "rmsprop"},
                 {TG_OPT_ADAM, 1e-2, 0, "adam"},
                 {TG_OPT_ADAMW, 1e-2, 0, "adamw"}};
    for (size_t k = 0; k < sizeof cases / sizeof cases[0]; k++) {
        tg_ctx *ctx = tg_ctx_new(11);
        tg_dataset *ds = rings(ctx, 128);
        tg_mlp m;
        tg_mlp_init(ctx, &m, "fc", 3, (const int64_t[]){2, 16, 2}, TG_ACT_TANH, TG_F32);
        tg_optim_opts o = tg_optim_defaults(cases[k].kind);
        o.lr = cases[k].lr;
        o.momentum = cases[k].momentum;
        double first = fit(ctx, &m, ds, &o, 1, 16);
        double last = fit(ctx, &m, ds, &o, 30, 16);
        cr_assert(isfinite(first) && isfinite(last), "%s: loss %g -> %g", cases[k].name, first, last);
        cr_assert_lt(last, 0.6 * first, "%s: loss %.4f -> %.4f", cases[k].name, first, last);
        tg_dataset_free(ds);
        tg_ctx_free(ctx);
    }
}

/* ---- ADALINE against least squares ---------------------------------------- */

#define AN 120
#define AF 3

/* Gaussian elimination with partial pivoting on [n, n+1] augmented rows. */
static void solve(int n, double a[][AF + 2]) {
    for (int k = 0; k < n; k++) {
        int piv = k;
        for (int i = k + 1; i < n; i++)
            if (fabs(a[i][k]) > fabs(a[piv][k])) piv = i;
        for (int j = 0; j <= n; j++) {
            double t = a[k][j];
            a[k][j] = a[piv][j];
            a[piv][j] = t;
        }
        cr_assert_gt(fabs(a[k][k]), 1e-9, "singular normal equations");
        for (int i = k + 1; i < n; i++) {
            double f = a[i][k] / a[k][k];
            for (int j = k; j <= n; j++) a[i][j] -= f * a[k][j];
        }
    }
    for (int k = n - 1; k >= 0; k--) {
        for (int j = k + 1; j < n; j++) a[k][n] -= a[k][j] * a[j][n];
        a[k][n] /= a[k][k];
    }
}

Test(training, adaline_matches_least_squares) {
    tg_ctx *ctx = tg_ctx_new(7);
    static double x[AN * AF], y[AN];
    const double w_true[AF] = {1.5, -0.5, 2.0}, b_true = -1.0;
    for (int s = 0; s < AN; s++) {
        y[s] = b_true + 0.2 * tg_rand_normal(ctx);
        for (int j = 0; j < AF; j++) {
            x[s * AF + j] = tg_rand_normal(ctx);
            y[s] += w_true[j] * x[s * AF + j];
        }
    }
    /* normal equations with a bias column: [X 1]^T [X 1] z = [X 1]^T y */
    double a[AF + 1][AF + 2];
    memset(a, 0, sizeof a);
    for (int s = 0; s < AN; s++) {
        double row[AF + 1] = {x[s * AF], x[s * AF + 1], x[s * AF + 2], 1};
        for (int i = 0; i <= AF; i++) {
            for (int j = 0; j <= AF; j++) a[i][j] += row[i] * row[j];
            a[i][AF + 1] += row[i] * y[s];
        }
    }
    solve(AF + 1, a);

    tg_dense d;
    cr_assert_eq(tg_dense_init(ctx, &d, "adaline", AF, 1, TG_F64, TG_INIT_XAVIER_UNIFORM), 0);
    tg_optim_opts o = tg_optim_defaults(TG_OPT_SGD);
    o.lr = 0.1;
    tg_optim *opt = tg_optim_new(ctx, &o, NULL, 0);
    double first = NAN, last = NAN;
    for (int e = 0; e < 400; e++) {
        tg_tensor *xt = tg_from(ctx, TG_F64, 2, (const int64_t[]){AN, AF}, x);
        tg_tensor *yt = tg_from(ctx, TG_F64, 2, (const int64_t[]){AN, 1}, y);
        tg_tensor *loss = tg_mse(ctx, tg_dense_forward(ctx, &d, xt, TG_ACT_NONE), yt);
        last = train_step(ctx, opt, loss);
        if (e == 0) first = last;
    }
    CHECK_OK(ctx);
    cr_assert_lt(last, first / 10, "loss %g -> %g", first, last);
    const double *w = tg_data(d.weight), *b = tg_data(d.bias);
    for (int j = 0; j < AF; j++)
        cr_assert_float_eq(w[j], a[j][AF + 1], 1e-6, "w%d: %.9f vs least squares %.9f", j, w[j],
                           a[j][AF + 1]);
    cr_assert_float_eq(b[0], a[AF][AF + 1], 1e-6, "b: %.9f vs least squares %.9f", b[0],
                       a[AF][AF + 1]);
    /* and both are near the weights the data came from (noise 0.2, N 120) */
    for (int j = 0; j < AF; j++) cr_assert_float_eq(w[j], w_true[j], 0.1);
    tg_optim_free(opt);
    tg_ctx_free(ctx);
}

/* ---- a model rebuilt from its checkpoint metadata ------------------------- */

Test(training, model_rebuilt_from_checkpoint_metadata_predicts_the_same) {
    char path[512];
    snprintf(path, sizeof path, "%s/tests/test_training_%ld.safetensors", TG_BINARY_DIR,
             (long)getpid());
    tg_ctx *ctx = tg_ctx_new(21);
    tg_dataset *ds = rings(ctx, 64);
    tg_mlp m;
    tg_mlp_init(ctx, &m, "fc", 4, (const int64_t[]){2, 8, 4, 2}, TG_ACT_RELU, TG_F32);
    tg_optim_opts o = tg_optim_defaults(TG_OPT_ADAM);
    fit(ctx, &m, ds, &o, 2, 16);
    const char *keys[] = {"tg_mlp.widths", "tg_mlp.act"}, *vals[] = {"2,8,4,2", "relu"};
    cr_assert_eq(tg_save_meta(ctx, path, keys, vals, 2), 0, "%s", tg_errmsg(ctx));
    int64_t idx[64];
    for (int i = 0; i < 64; i++) idx[i] = i;
    tg_tensor *x;
    int prev = tg_no_grad(ctx, 1);
    tg_dataset_batch(ctx, ds, idx, 64, TG_F32, &x, NULL);
    uint64_t before = tg_hash(tg_mlp_forward(ctx, &m, x));
    CHECK_OK(ctx);
    tg_no_grad(ctx, prev);

    /* a fresh context knows only the file */
    tg_ctx *c2 = tg_ctx_new(99);
    char *w = tg_checkpoint_meta(c2, path, "tg_mlp.widths");
    char *act = tg_checkpoint_meta(c2, path, "tg_mlp.act");
    cr_assert(w && act, "%s", tg_errmsg(c2));
    cr_assert_str_eq(w, "2,8,4,2");
    cr_assert_str_eq(act, "relu");
    int64_t widths[8];
    int n = 0;
    for (char *p = w, *end; *p; p = *end ? end + 1 : end) widths[n++] = strtoll(p, &end, 10);
    tg_mlp m2;
    cr_assert_eq(tg_mlp_init(c2, &m2, "fc", n, widths, TG_ACT_RELU, TG_F32), 0);
    cr_assert_eq(tg_load(c2, path), 0, "%s", tg_errmsg(c2));
    tg_tensor *x2 = tg_from(c2, TG_F32, 2, (const int64_t[]){64, 2}, tg_data(x));
    uint64_t after = tg_hash(tg_mlp_forward(c2, &m2, x2));
    CHECK_OK(c2);
    cr_assert_eq(before, after, "the rebuilt model predicts differently");
    for (int l = 0; l < 3; l++)
        cr_assert_eq(tg_hash(m.layer[l].weight), tg_hash(m2.layer[l].weight));
    free(w);
    free(act);
    tg_ctx_free(c2);
    tg_dataset_free(ds);
    tg_ctx_free(ctx);
    remove(path);
}
