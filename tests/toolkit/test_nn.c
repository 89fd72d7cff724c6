/* SPDX-License-Identifier: MIT */
/* test_nn.c: weight initialisation, dense layers and MLPs.
 *
 * Initialisation: the statistics of large tensors (bounds, mean, standard
 * deviation) against torch.nn.init's formulas, determinism per seed, errors.
 * Layers: parameter names and shapes, forward shapes and values against the
 * same ops composed by hand, gradients reaching every parameter, full-Jacobian
 * gradient checks of MLPs w.r.t. all their parameters in f64, f32 agreeing
 * with f64, errors. */
#include <criterion/criterion.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tapegrad.h"
#include "tg_test.h"

static tg_ctx *ctx;
static void setup(void) { ctx = tg_ctx_new(2024); }
static void teardown(void) { tg_ctx_free(ctx); }
TestSuite(nn, .init = setup, .fini = teardown);

typedef struct { double mean, sd, maxabs; } stats;
static stats stats_of(const tg_tensor *t) {
    int64_t n = tg_numel(t);
    double s = 0, s2 = 0, m = 0;
    for (int64_t i = 0; i < n; i++) {
        double v = at(t, i);
        s += v;
        s2 += v * v;
        if (fabs(v) > m) m = fabs(v);
    }
    double mean = s / (double)n;
    return (stats){mean, sqrt(s2 / (double)n - mean * mean), m};
}

/* ---- initialisation ---------------------------------------------------------- */

#define FAN_IN 200
#define FAN_OUT 300
#define N ((double)FAN_IN * FAN_OUT)

/* uniform U(-a, a): every value inside, the largest close to a, sd a/sqrt(3) */
static void check_uniform(const tg_tensor *w, double a, const char *what) {
    stats s = stats_of(w);
    double sd = a / sqrt(3.0);
    cr_assert_leq(s.maxabs, a, "%s: max %g beyond the bound %g", what, s.maxabs, a);
    cr_assert_geq(s.maxabs, 0.999 * a, "%s: max %g far inside the bound %g", what, s.maxabs, a);
    cr_assert_lt(fabs(s.mean), 5 * sd / sqrt(N), "%s: mean %g", what, s.mean);
    cr_assert_lt(fabs(s.sd / sd - 1), 0.02, "%s: sd %g, expected %g", what, s.sd, sd);
}

/* normal N(0, sd^2): mean and sd, and a tail that reaches past 4 sd */
static void check_normal(const tg_tensor *w, double sd, const char *what) {
    stats s = stats_of(w);
    cr_assert_lt(fabs(s.mean), 5 * sd / sqrt(N), "%s: mean %g", what, s.mean);
    cr_assert_lt(fabs(s.sd / sd - 1), 0.02, "%s: sd %g, expected %g", what, s.sd, sd);
    cr_assert_gt(s.maxabs, 3.5 * sd, "%s: no tail (max %g, sd %g)", what, s.maxabs, sd);
    cr_assert_lt(s.maxabs, 6.5 * sd, "%s: tail too long (max %g, sd %g)", what, s.maxabs, sd);
}

Test(nn, init_statistics_follow_torch_formulas) {
    tg_tensor *w = tg_new(ctx, TG_F64, 2, (int64_t[]){FAN_IN, FAN_OUT});
    double fi = FAN_IN, fo = FAN_OUT;

    cr_assert_eq(tg_init_tensor(ctx, w, TG_INIT_XAVIER_UNIFORM, FAN_IN, FAN_OUT, 0), 0);
    check_uniform(w, sqrt(6.0 / (fi + fo)), "xavier_uniform gain 1");
    cr_assert_eq(tg_init_tensor(ctx, w, TG_INIT_XAVIER_UNIFORM, FAN_IN, FAN_OUT, 5.0 / 3), 0);
    check_uniform(w, 5.0 / 3 * sqrt(6.0 / (fi + fo)), "xavier_uniform gain 5/3");

    cr_assert_eq(tg_init_tensor(ctx, w, TG_INIT_XAVIER_NORMAL, FAN_IN, FAN_OUT, 0), 0);
    check_normal(w, sqrt(2.0 / (fi + fo)), "xavier_normal gain 1");
    cr_assert_eq(tg_init_tensor(ctx, w, TG_INIT_XAVIER_NORMAL, FAN_IN, FAN_OUT, 2.0), 0);
    check_normal(w, 2.0 * sqrt(2.0 / (fi + fo)), "xavier_normal gain 2");

    /* He: default gain sqrt(2) (relu) */
    cr_assert_eq(tg_init_tensor(ctx, w, TG_INIT_HE_UNIFORM, FAN_IN, FAN_OUT, 0), 0);
    check_uniform(w, sqrt(2.0) * sqrt(3.0 / fi), "he_uniform");
    cr_assert_eq(tg_init_tensor(ctx, w, TG_INIT_HE_UNIFORM, FAN_IN, FAN_OUT, 1.0), 0);
    check_uniform(w, sqrt(3.0 / fi), "he_uniform gain 1");
    cr_assert_eq(tg_init_tensor(ctx, w, TG_INIT_HE_NORMAL, FAN_IN, FAN_OUT, 0), 0);
    check_normal(w, sqrt(2.0) / sqrt(fi), "he_normal");
    cr_assert_eq(tg_init_tensor(ctx, w, TG_INIT_HE_NORMAL, FAN_IN, 0, 0.5), 0,
                 "He needs no fan_out");
    check_normal(w, 0.5 / sqrt(fi), "he_normal gain 0.5");

    cr_assert_eq(tg_init_tensor(ctx, w, TG_INIT_ZEROS, 0, 0, -3), 0, "zeros ignores fans and gain");
    cr_assert_eq(stats_of(w).maxabs, 0.0);
    cr_assert(tg_ok(ctx), "%s", tg_errmsg(ctx));
}

Test(nn, init_f32_and_deterministic_per_seed) {
    uint64_t h[3];
    uint64_t seeds[3] = {5, 5, 6};
    for (int k = 0; k < 3; k++) {
        tg_ctx *c = tg_ctx_new(seeds[k]);
        tg_tensor *w = tg_new(c, TG_F32, 2, (int64_t[]){FAN_IN, FAN_OUT});
        cr_assert_eq(tg_init_tensor(c, w, TG_INIT_HE_UNIFORM, FAN_IN, FAN_OUT, 0), 0);
        if (k == 0) check_uniform(w, sqrt(6.0 / FAN_IN), "he_uniform f32");
        h[k] = tg_hash(w);
        tg_ctx_free(c);
    }
    cr_assert_eq(h[0], h[1], "same seed, same weights");
    cr_assert_neq(h[0], h[2], "another seed, other weights");
}

Test(nn, init_gain_and_names) {
    cr_assert_eq(tg_init_gain(TG_ACT_NONE), 1.0);
    cr_assert_eq(tg_init_gain(TG_ACT_SIGMOID), 1.0);
    cr_assert_float_eq(tg_init_gain(TG_ACT_TANH), 5.0 / 3.0, 1e-15);
    cr_assert_float_eq(tg_init_gain(TG_ACT_RELU), sqrt(2.0), 1e-15);
    cr_assert_float_eq(tg_init_gain(TG_ACT_LEAKY_RELU), sqrt(2.0 / (1 + 1e-4)), 1e-15);
    cr_assert(isnan(tg_init_gain(TG_ACT_COUNT)));
    cr_assert_str_eq(tg_init_name(TG_INIT_XAVIER_NORMAL), "xavier_normal");
    cr_assert_str_eq(tg_init_name(TG_INIT_HE_UNIFORM), "he_uniform");
    cr_assert_str_eq(tg_init_name(TG_INIT_COUNT), "?");
}

static void expect_error(int rc, const char *msg) {
    cr_assert_eq(rc, -1, "expected -1 for '%s'", msg);
    cr_assert(!tg_ok(ctx));
    cr_assert(strstr(tg_errmsg(ctx), msg), "message '%s' lacks '%s'", tg_errmsg(ctx), msg);
    tg_clear_error(ctx);
}

Test(nn, init_bad_arguments) {
    tg_tensor *w = tg_new(ctx, TG_F64, 2, (int64_t[]){3, 4});
    tg_tensor *wi = tg_new(ctx, TG_I32, 2, (int64_t[]){3, 4});
    cr_assert_eq(tg_init_tensor(NULL, w, TG_INIT_ZEROS, 3, 4, 0), -1);
    expect_error(tg_init_tensor(ctx, NULL, TG_INIT_ZEROS, 3, 4, 0),
                 "tg_init_tensor: argument w is NULL");
    expect_error(tg_init_tensor(ctx, wi, TG_INIT_HE_NORMAL, 3, 4, 0),
                 "tg_init_tensor: w must be f32 or f64, got i32 [3,4]");
    expect_error(tg_init_tensor(ctx, w, TG_INIT_COUNT, 3, 4, 0),
                 "tg_init_tensor: unknown init kind 5");
    expect_error(tg_init_tensor(ctx, w, (tg_init)-1, 3, 4, 0), "unknown init kind -1");
    expect_error(tg_init_tensor(ctx, w, TG_INIT_HE_UNIFORM, 0, 4, 0),
                 "tg_init_tensor: he_uniform needs fan_in > 0, got fan_in 0, fan_out 4");
    expect_error(tg_init_tensor(ctx, w, TG_INIT_XAVIER_NORMAL, 3, -1, 0),
                 "xavier_normal needs fan_in and fan_out > 0");
    expect_error(tg_init_tensor(ctx, w, TG_INIT_XAVIER_NORMAL, 3, 4, -1.0), "gain must be positive");
    expect_error(tg_init_tensor(ctx, w, TG_INIT_XAVIER_NORMAL, 3, 4, NAN), "gain must be positive");
    expect_error(tg_init_tensor(ctx, w, TG_INIT_XAVIER_NORMAL, 3, 4, INFINITY), "gain");
    /* an error already recorded: -1, message kept */
    tg_set_error(ctx, "earlier");
    cr_assert_eq(tg_init_tensor(ctx, NULL, TG_INIT_ZEROS, 3, 4, 0), -1);
    cr_assert_str_eq(tg_errmsg(ctx), "earlier");
}

/* ---- dense layer ---------------------------------------------------------------- */

Test(nn, dense_names_shapes_and_bias_zeros) {
    tg_dense d;
    cr_assert_eq(tg_dense_init(ctx, &d, "fc1", 5, 3, TG_F64, TG_INIT_XAVIER_UNIFORM), 0, "%s",
                 tg_errmsg(ctx));
    cr_assert_eq(d.in, 5);
    cr_assert_eq(d.out, 3);
    cr_assert_str_eq(tg_name(d.weight), "fc1.weight");
    cr_assert_str_eq(tg_name(d.bias), "fc1.bias");
    cr_assert_eq(tg_param_find(ctx, "fc1.weight"), d.weight);
    cr_assert_eq(tg_param_find(ctx, "fc1.bias"), d.bias);
    cr_assert_eq(tg_ndim(d.weight), 2);
    cr_assert_eq(tg_dim(d.weight, 0), 3, "[out,in], as nn.Linear keeps it");
    cr_assert_eq(tg_dim(d.weight, 1), 5);
    cr_assert_eq(tg_ndim(d.bias), 1);
    cr_assert_eq(tg_dim(d.bias, 0), 3);
    cr_assert(tg_requires_grad(d.weight) && tg_requires_grad(d.bias));
    cr_assert_eq(stats_of(d.bias).maxabs, 0.0, "bias starts at zeros");
    stats s = stats_of(d.weight);
    cr_assert_gt(s.maxabs, 0.0);
    cr_assert_leq(s.maxabs, sqrt(6.0 / 8.0));
    /* automatic names */
    tg_dense e;
    cr_assert_eq(tg_dense_init(ctx, &e, NULL, 2, 2, TG_F32, TG_INIT_ZEROS), 0);
    cr_assert_str_eq(tg_name(e.weight), "param2");
    cr_assert_str_eq(tg_name(e.bias), "param3");
    cr_assert_eq(tg_dtype_of(e.weight), TG_F32);
    cr_assert_eq(stats_of(e.weight).maxabs, 0.0);
}

static tg_tensor *rand_matrix(tg_ctx *c, tg_dtype dt, int64_t m, int64_t n) {
    tg_tensor *x = tg_new(c, dt, 2, (int64_t[]){m, n});
    tg_fill_uniform(c, x, -1.0, 1.0);
    return x;
}

static void assert_close(const tg_tensor *a, const tg_tensor *b, double tol, const char *what) {
    cr_assert_eq(tg_numel(a), tg_numel(b), "%s", what);
    for (int64_t i = 0; i < tg_numel(a); i++)
        cr_assert(fabs(at(a, i) - at(b, i)) <= tol * (1 + fabs(at(b, i))), "%s [%lld]: %.17g vs %.17g",
                  what, (long long)i, at(a, i), at(b, i));
}

Test(nn, dense_forward_equals_composed_ops) {
    tg_dense d;
    tg_dense_init(ctx, &d, "fc", 4, 3, TG_F64, TG_INIT_HE_NORMAL);
    tg_fill_uniform(ctx, d.bias, -0.5, 0.5); /* a non-zero bias, to see it added */
    tg_tensor *x = rand_matrix(ctx, TG_F64, 6, 4);
    for (int act = 0; act < TG_ACT_COUNT; act++) {
        tg_tensor *y = tg_dense_forward(ctx, &d, x, (tg_act)act);
        cr_assert_not_null(y, "%s", tg_errmsg(ctx));
        cr_assert_eq(tg_ndim(y), 2);
        cr_assert_eq(tg_dim(y, 0), 6);
        cr_assert_eq(tg_dim(y, 1), 3);
        tg_tensor *z = tg_activate(
            ctx, tg_add_bias(ctx, tg_matmul(ctx, x, tg_transpose(ctx, d.weight)), d.bias),
            (tg_act)act);
        char what[32];
        snprintf(what, sizeof what, "act %d", act);
        assert_close(y, z, 1e-14, what);
    }
    cr_assert(tg_ok(ctx), "%s", tg_errmsg(ctx));
}

Test(nn, dense_bad_arguments) {
    tg_dense d;
    cr_assert_eq(tg_dense_init(NULL, &d, "a", 2, 2, TG_F64, TG_INIT_ZEROS), -1);
    expect_error(tg_dense_init(ctx, NULL, "a", 2, 2, TG_F64, TG_INIT_ZEROS),
                 "tg_dense_init: argument d is NULL");
    expect_error(tg_dense_init(ctx, &d, "a", 0, 2, TG_F64, TG_INIT_ZEROS),
                 "tg_dense_init: layer 'a' needs in > 0 and out > 0, got in 0, out 2");
    cr_assert_null(d.weight, "a failed init leaves the layer zeroed");
    expect_error(tg_dense_init(ctx, &d, "a", 2, -2, TG_F64, TG_INIT_ZEROS), "out -2");
    expect_error(tg_dense_init(ctx, &d, "a", 2, 2, TG_I32, TG_INIT_ZEROS),
                 "layer dtype must be f32 or f64, got i32");
    expect_error(tg_dense_init(ctx, &d, "a", 2, 2, TG_F64, TG_INIT_COUNT), "unknown init kind");
    expect_error(tg_dense_init(ctx, &d, "", 2, 2, TG_F64, TG_INIT_ZEROS), "name is empty");
    char longname[400];
    memset(longname, 'x', sizeof longname - 1);
    longname[sizeof longname - 1] = '\0';
    expect_error(tg_dense_init(ctx, &d, longname, 2, 2, TG_F64, TG_INIT_ZEROS), "is too long");
    cr_assert_eq(tg_dense_init(ctx, &d, "a", 2, 2, TG_F64, TG_INIT_ZEROS), 0);
    tg_dense d2;
    expect_error(tg_dense_init(ctx, &d2, "a", 2, 2, TG_F64, TG_INIT_ZEROS),
                 "a parameter named 'a.weight' exists already");

    /* forward */
    tg_tensor *x = rand_matrix(ctx, TG_F64, 4, 3);
    cr_assert_null(tg_dense_forward(ctx, &d, x, TG_ACT_NONE));
    cr_assert_str_eq(tg_errmsg(ctx),
                     "tg_dense_forward: x is [4,3] but weight 'a.weight' is [2,2] (x must be [m,2])");
    tg_clear_error(ctx);
    tg_tensor *x1 = tg_new(ctx, TG_F64, 1, (int64_t[]){2});
    cr_assert_null(tg_dense_forward(ctx, &d, x1, TG_ACT_NONE));
    cr_assert(strstr(tg_errmsg(ctx), "x is [2] but"), "%s", tg_errmsg(ctx));
    tg_clear_error(ctx);
    tg_tensor *x32 = rand_matrix(ctx, TG_F32, 4, 2);
    cr_assert_null(tg_dense_forward(ctx, &d, x32, TG_ACT_NONE));
    cr_assert(strstr(tg_errmsg(ctx), "tg_dense_forward: dtypes differ"), "%s", tg_errmsg(ctx));
    tg_clear_error(ctx);
    tg_tensor *x2 = rand_matrix(ctx, TG_F64, 4, 2);
    cr_assert_null(tg_dense_forward(ctx, &d, x2, TG_ACT_COUNT));
    cr_assert(strstr(tg_errmsg(ctx), "tg_dense_forward: unknown activation"), "%s", tg_errmsg(ctx));
    tg_clear_error(ctx);
    cr_assert_null(tg_dense_forward(ctx, NULL, x2, TG_ACT_NONE));
    cr_assert_str_eq(tg_errmsg(ctx), "tg_dense_forward: argument d is NULL");
    tg_clear_error(ctx);
    cr_assert_null(tg_dense_forward(ctx, &d, NULL, TG_ACT_NONE));
    cr_assert_str_eq(tg_errmsg(ctx), "tg_dense_forward: argument x is NULL");
    tg_clear_error(ctx);
    tg_dense empty;
    memset(&empty, 0, sizeof empty);
    cr_assert_null(tg_dense_forward(ctx, &empty, x2, TG_ACT_NONE));
    cr_assert(strstr(tg_errmsg(ctx), "was tg_dense_init called?"), "%s", tg_errmsg(ctx));
    tg_clear_error(ctx);
    cr_assert_null(tg_dense_forward(NULL, &d, x2, TG_ACT_NONE));
    /* NULL after an earlier error: silent */
    tg_set_error(ctx, "earlier");
    cr_assert_null(tg_dense_forward(ctx, &d, NULL, TG_ACT_NONE));
    cr_assert_str_eq(tg_errmsg(ctx), "earlier");
}

/* ---- MLP -------------------------------------------------------------------------- */

Test(nn, mlp_names_shapes_and_params) {
    tg_mlp m;
    int64_t w[4] = {4, 8, 6, 3};
    cr_assert_eq(tg_mlp_init(ctx, &m, NULL, 4, w, TG_ACT_RELU, TG_F64), 0, "%s", tg_errmsg(ctx));
    cr_assert_eq(m.n_layers, 3);
    cr_assert_eq(m.act, TG_ACT_RELU);
    cr_assert_eq(tg_param_count(ctx), 6);
    const char *names[6] = {"fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias", "fc3.weight",
                            "fc3.bias"};
    tg_tensor *ps[8];
    cr_assert_eq(tg_mlp_params(&m, ps, 8), 6);
    for (int i = 0; i < 6; i++) {
        cr_assert_str_eq(tg_name(ps[i]), names[i]);
        cr_assert_eq(tg_param_find(ctx, names[i]), ps[i]);
        cr_assert_eq(tg_param_at(ctx, i), ps[i], "creation order");
    }
    for (int l = 0; l < 3; l++) {
        cr_assert_eq(tg_dim(m.layer[l].weight, 0), w[l + 1], "[out,in]");
        cr_assert_eq(tg_dim(m.layer[l].weight, 1), w[l]);
        cr_assert_eq(tg_dim(m.layer[l].bias, 0), w[l + 1]);
    }
    tg_tensor *two[2];
    cr_assert_eq(tg_mlp_params(&m, two, 2), 6, "the count even when cap is smaller");
    cr_assert_eq(two[1], m.layer[0].bias);
    cr_assert_eq(tg_mlp_params(&m, NULL, 0), 6);
    cr_assert_eq(tg_mlp_params(NULL, NULL, 0), -1);

    tg_mlp e;
    cr_assert_eq(tg_mlp_init(ctx, &e, "enc", 2, (int64_t[]){3, 2}, TG_ACT_TANH, TG_F32), 0);
    cr_assert_str_eq(tg_name(e.layer[0].weight), "enc1.weight");
    cr_assert_eq(tg_dtype_of(e.layer[0].bias), TG_F32);
    /* nn.Sequential's names: "" at the top, "<attr>." for one held by a module */
    tg_mlp q, r;
    cr_assert_eq(tg_mlp_init(ctx, &q, "", 3, (int64_t[]){3, 4, 2}, TG_ACT_RELU, TG_F32), 0);
    cr_assert_str_eq(tg_name(q.layer[0].weight), "0.weight");
    cr_assert_str_eq(tg_name(q.layer[1].bias), "2.bias");
    cr_assert_eq(tg_mlp_init(ctx, &r, "body.", 4, (int64_t[]){3, 4, 4, 2}, TG_ACT_TANH, TG_F32), 0,
                 "%s", tg_errmsg(ctx));
    cr_assert_str_eq(tg_name(r.layer[2].weight), "body.4.weight");

    tg_tensor *x = rand_matrix(ctx, TG_F64, 5, 4);
    tg_tensor *y = tg_mlp_forward(ctx, &m, x);
    cr_assert_not_null(y, "%s", tg_errmsg(ctx));
    cr_assert_eq(tg_dim(y, 0), 5);
    cr_assert_eq(tg_dim(y, 1), 3);
}

Test(nn, mlp_forward_is_layers_with_no_act_on_the_last) {
    tg_mlp m;
    int64_t w[4] = {3, 7, 5, 4};
    tg_mlp_init(ctx, &m, NULL, 4, w, TG_ACT_RELU, TG_F64);
    for (int l = 0; l < 3; l++) tg_fill_uniform(ctx, m.layer[l].bias, -0.3, 0.3);
    tg_tensor *x = rand_matrix(ctx, TG_F64, 16, 3);
    tg_tensor *y = tg_mlp_forward(ctx, &m, x);
    tg_tensor *h = tg_dense_forward(ctx, &m.layer[0], x, TG_ACT_RELU);
    h = tg_dense_forward(ctx, &m.layer[1], h, TG_ACT_RELU);
    h = tg_dense_forward(ctx, &m.layer[2], h, TG_ACT_NONE);
    assert_close(y, h, 1e-15, "mlp vs layers");
    int negatives = 0;
    for (int64_t i = 0; i < tg_numel(y); i++) negatives += at(y, i) < 0;
    cr_assert_gt(negatives, 0, "logits: no relu after the last layer");
    cr_assert_eq(tg_tape_len(ctx), 6, "one node per layer");
}

/* Weights are drawn by the activation's scheme and gain: the largest |w| of a
 * large layer sits just under the uniform bound. */
Test(nn, mlp_init_follows_activation) {
    struct { tg_act act; double bound; } k[4] = {
        {TG_ACT_RELU, sqrt(2.0) * sqrt(3.0 / 400)},                 /* He, gain sqrt 2 */
        {TG_ACT_LEAKY_RELU, sqrt(2.0 / (1 + 1e-4)) * sqrt(3.0 / 400)},
        {TG_ACT_TANH, 5.0 / 3 * sqrt(6.0 / 700)},                    /* Xavier, gain 5/3 */
        {TG_ACT_SIGMOID, sqrt(6.0 / 700)},                           /* Xavier, gain 1 */
    };
    for (int i = 0; i < 4; i++) {
        tg_ctx *c = tg_ctx_new(9);
        tg_mlp m;
        cr_assert_eq(tg_mlp_init(c, &m, NULL, 3, (int64_t[]){400, 300, 2}, k[i].act, TG_F32), 0);
        stats s = stats_of(m.layer[0].weight);
        cr_assert(s.maxabs <= k[i].bound && s.maxabs > 0.9995 * k[i].bound,
                  "act %d: max %g, bound %g", (int)k[i].act, s.maxabs, k[i].bound);
        tg_ctx_free(c);
    }
    tg_mlp z;
    cr_assert_eq(tg_mlp_init_ex(ctx, &z, "z", 3, (int64_t[]){3, 4, 2}, TG_ACT_RELU, TG_F64,
                                TG_INIT_ZEROS), 0);
    cr_assert_eq(stats_of(z.layer[0].weight).maxabs, 0.0, "the init override");
    tg_mlp n;
    cr_assert_eq(tg_mlp_init_ex(ctx, &n, "n", 2, (int64_t[]){FAN_IN, FAN_OUT}, TG_ACT_TANH, TG_F64,
                                TG_INIT_HE_NORMAL), 0);
    check_normal(n.layer[0].weight, sqrt(2.0 / FAN_IN), "override he_normal, default gain");
}

Test(nn, mlp_gradient_reaches_every_parameter) {
    tg_act acts[3] = {TG_ACT_RELU, TG_ACT_TANH, TG_ACT_SIGMOID};
    for (int a = 0; a < 3; a++) {
        tg_ctx *c = tg_ctx_new(77);
        tg_mlp m;
        tg_mlp_init(c, &m, NULL, 4, (int64_t[]){5, 9, 7, 3}, acts[a], TG_F32);
        tg_tensor *x = rand_matrix(c, TG_F32, 8, 5);
        tg_tensor *wts = rand_matrix(c, TG_F32, 8, 3);
        tg_tensor *loss = tg_sum(c, tg_mul(c, wts, tg_mlp_forward(c, &m, x)));
        tg_backward(c, loss);
        cr_assert(tg_ok(c), "%s", tg_errmsg(c));
        tg_tensor *ps[6];
        cr_assert_eq(tg_mlp_params(&m, ps, 6), 6);
        for (int i = 0; i < 6; i++) {
            const float *g = tg_grad(ps[i]);
            cr_assert_not_null(g, "%s has no gradient", tg_name(ps[i]));
            double s = 0;
            for (int64_t j = 0; j < tg_numel(ps[i]); j++) s += fabs(g[j]);
            cr_assert_gt(s, 0.0, "act %d: %s's gradient is all zeros", (int)acts[a], tg_name(ps[i]));
        }
        tg_ctx_free(c);
    }
}

/* gradcheck: the MLP's logits (several elements: the full Jacobian is
 * checked) as a function of all its parameters */
typedef struct { const tg_mlp *m; tg_tensor *x; } mlp_user;
static tg_tensor *mlp_fn(tg_ctx *c, tg_tensor *const *inputs, void *user) {
    mlp_user *u = user;
    (void)inputs; /* the inputs are the MLP's own parameters */
    return tg_mlp_forward(c, u->m, u->x);
}

Test(nn, mlp_gradcheck_wrt_parameters) {
    tg_act acts[4] = {TG_ACT_TANH, TG_ACT_SIGMOID, TG_ACT_RELU, TG_ACT_LEAKY_RELU};
    for (int a = 0; a < 4; a++) {
        tg_ctx *c = tg_ctx_new(31 + (uint64_t)a);
        tg_mlp m;
        tg_mlp_init(c, &m, NULL, 4, (int64_t[]){3, 5, 4, 2}, acts[a], TG_F64);
        for (int l = 0; l < 3; l++) tg_fill_uniform(c, m.layer[l].bias, -0.2, 0.2);
        tg_tensor *x = rand_matrix(c, TG_F64, 4, 3);
        tg_tensor *ps[6];
        tg_mlp_params(&m, ps, 6);
        mlp_user u = {&m, x};
        int ok = tg_gradcheck(c, mlp_fn, &u, ps, 6, NULL);
        cr_assert(ok, "act %d: %s", (int)acts[a], tg_errmsg(c));
        /* the gradients checked are not all zero */
        tg_tensor *wts = rand_matrix(c, TG_F64, 4, 2);
        tg_backward(c, tg_sum(c, tg_mul(c, wts, tg_mlp_forward(c, &m, x))));
        for (int i = 0; i < 6; i++) {
            const double *g = tg_grad(ps[i]);
            double s = 0;
            for (int64_t j = 0; j < tg_numel(ps[i]); j++) s += fabs(g[j]);
            cr_assert_gt(s, 1e-6, "%s", tg_name(ps[i]));
        }
        cr_assert(tg_ok(c), "%s", tg_errmsg(c));
        tg_ctx_free(c);
    }
}

Test(nn, mlp_f32_agrees_with_f64) {
    tg_ctx *c64 = tg_ctx_new(5), *c32 = tg_ctx_new(5);
    tg_mlp m64, m32;
    int64_t w[4] = {6, 16, 12, 4};
    tg_mlp_init(c64, &m64, NULL, 4, w, TG_ACT_TANH, TG_F64);
    tg_mlp_init(c32, &m32, NULL, 4, w, TG_ACT_TANH, TG_F32); /* same draws, rounded */
    tg_tensor *x64 = rand_matrix(c64, TG_F64, 10, 6);
    tg_tensor *x32 = rand_matrix(c32, TG_F32, 10, 6);
    tg_tensor *y64 = tg_mlp_forward(c64, &m64, x64);
    tg_tensor *y32 = tg_mlp_forward(c32, &m32, x32);
    assert_close(y32, y64, 1e-5, "f32 vs f64 logits");
    tg_backward(c64, tg_sum(c64, y64));
    tg_backward(c32, tg_sum(c32, y32));
    for (int l = 0; l < 3; l++) {
        const double *g64 = tg_grad(m64.layer[l].weight);
        const float *g32 = tg_grad(m32.layer[l].weight);
        for (int64_t i = 0; i < tg_numel(m64.layer[l].weight); i++)
            cr_assert(fabs(g32[i] - g64[i]) <= 1e-5 * (1 + fabs(g64[i])), "layer %d [%lld]", l,
                      (long long)i);
    }
    cr_assert(tg_ok(c64) && tg_ok(c32));
    tg_ctx_free(c64);
    tg_ctx_free(c32);
}

/* A small f32 MLP is one node (ops/mlp.c) and gives the bits of its layers, node by
 * node: outputs and every gradient compared with tg_dense_forward's chain, in a
 * second context with the same draws, for every activation and depth, with x
 * needing a gradient or not, the first layer frozen or not, and an activation
 * after the last layer (out_act) or not. */
static void mlp_run(tg_ctx *c, int fused, int L, tg_act act, tg_act out_act, int x_grad,
                    int frozen, const float **y, const float **grads, int64_t *len)
{
    static const int64_t widths[4] = {3, 5, 4, 2};
    tg_mlp m;
    cr_assert_eq(tg_mlp_init(c, &m, NULL, L + 1, widths, act, TG_F32), 0);
    m.out_act = out_act;
    for (int l = 0; l < L; l++) tg_fill_uniform(c, m.layer[l].bias, -0.5, 0.5);
    tg_tensor *x = rand_matrix(c, TG_F32, 4, 3), *wts = rand_matrix(c, TG_F32, 4, widths[L]);
    tg_set_requires_grad(x, x_grad);
    tg_set_requires_grad(m.layer[0].weight, !frozen);
    tg_set_requires_grad(m.layer[0].bias, !frozen);
    tg_tensor *h = x;
    if (fused)
        h = tg_mlp_forward(c, &m, x);
    else
        for (int l = 0; l < L; l++)
            h = tg_dense_forward(c, &m.layer[l], h, l < L - 1 ? act : out_act);
    *len = tg_tape_len(c);
    tg_backward(c, tg_sum(c, tg_mul(c, wts, h)));
    cr_assert(tg_ok(c), "%s", tg_errmsg(c));
    *y = tg_data(h);
    for (int l = 0; l < L; l++) {
        grads[2 * l] = tg_grad(m.layer[l].weight);
        grads[2 * l + 1] = tg_grad(m.layer[l].bias);
    }
    grads[2 * L] = tg_grad(x);
}

Test(nn, small_f32_mlp_is_one_node_with_the_layers_bits) {
    static const int64_t widths[4] = {3, 5, 4, 2};
    for (int act = 0; act < TG_ACT_COUNT; act++)
        for (int L = 1; L <= 3; L++)
            for (int v = 0; v < 4; v++) {
                const int x_grad = v == 1, frozen = v == 2 && L > 1;
                const tg_act out = v == 3 ? (tg_act)((act + 2) % TG_ACT_COUNT) : TG_ACT_NONE;
                tg_ctx *c1 = tg_ctx_new(40 + (uint64_t)L), *c2 = tg_ctx_new(40 + (uint64_t)L);
                const float *y1, *y2, *g1[7], *g2[7];
                int64_t len1, len2;
                mlp_run(c1, 1, L, (tg_act)act, out, x_grad, frozen, &y1, g1, &len1);
                mlp_run(c2, 0, L, (tg_act)act, out, x_grad, frozen, &y2, g2, &len2);
                cr_assert_eq(len1, 1, "act %d, %d layers: one node", act, L);
                cr_assert_eq(len2, L - frozen, "a frozen first layer on x: not recorded");
                cr_assert_eq(memcmp(y1, y2, 4 * (size_t)widths[L] * sizeof(float)), 0,
                             "act %d, %d layers: output", act, L);
                for (int i = 0; i <= 2 * L; i++) {
                    const int64_t n = i == 2 * L ? 12
                                      : i % 2    ? widths[i / 2 + 1]
                                                 : widths[i / 2 + 1] * widths[i / 2];
                    const int none = (i == 2 * L && !x_grad) || (i < 2 && frozen);
                    cr_assert_eq(!g1[i], none, "act %d, %d layers, input %d", act, L, i);
                    cr_assert_eq(!g2[i], none);
                    if (!none)
                        cr_assert_eq(memcmp(g1[i], g2[i], (size_t)n * sizeof(float)), 0,
                                     "act %d, %d layers, variant %d: gradient of input %d", act,
                                     L, v, i);
                }
                tg_ctx_free(c1);
                tg_ctx_free(c2);
            }
}

/* The one node behaves as the layers do: a second backward adds the same
 * gradient again, no_grad records nothing, and a network that does not qualify
 * (a removed bias, f64, a large batch) goes layer by layer. */
Test(nn, small_mlp_node_backward_twice_no_grad_and_fallbacks) {
    tg_mlp m;
    cr_assert_eq(tg_mlp_init(ctx, &m, NULL, 4, (int64_t[]){2, 6, 3, 1}, TG_ACT_TANH, TG_F32), 0);
    for (int l = 0; l < 3; l++) tg_fill_uniform(ctx, m.layer[l].bias, -0.5, 0.5);
    tg_tensor *x = rand_matrix(ctx, TG_F32, 4, 2);
    tg_tensor *loss = tg_sum(ctx, tg_mlp_forward(ctx, &m, x));
    cr_assert_eq(tg_tape_len(ctx), 2);
    tg_backward(ctx, loss);
    float once[18];
    memcpy(once, tg_grad(m.layer[1].weight), sizeof once);
    tg_backward(ctx, loss);
    const float *twice = tg_grad(m.layer[1].weight);
    for (int i = 0; i < 18; i++) cr_assert_eq(twice[i], 2 * once[i], "[%d]", i);
    int prev = tg_no_grad(ctx, 1);
    tg_tensor *y = tg_mlp_forward(ctx, &m, x);
    tg_no_grad(ctx, prev);
    cr_assert_eq(tg_tape_len(ctx), 2, "nothing recorded under tg_no_grad");
    cr_assert_eq(tg_item(tg_sum(ctx, y)), tg_item(loss));
    tg_reset(ctx);

    x = rand_matrix(ctx, TG_F32, 200, 2); /* 200 x 2 x 6 > 512: not tiny */
    cr_assert_not_null(tg_mlp_forward(ctx, &m, x), "%s", tg_errmsg(ctx));
    cr_assert_eq(tg_tape_len(ctx), 3);
    x = rand_matrix(ctx, TG_F32, 4, 2);
    m.layer[2].bias = NULL;
    cr_assert_not_null(tg_mlp_forward(ctx, &m, x), "%s", tg_errmsg(ctx));
    cr_assert_eq(tg_tape_len(ctx), 6, "no bias: layer by layer");
    cr_assert(tg_ok(ctx), "%s", tg_errmsg(ctx));
    m.out_act = TG_ACT_COUNT;
    cr_assert_null(tg_mlp_forward(ctx, &m, x));
    cr_assert_str_eq(tg_errmsg(ctx), "tg_mlp_forward: unknown output activation 5");
}

Test(nn, mlp_bad_arguments) {
    tg_mlp m;
    int64_t w[3] = {3, 4, 2};
    cr_assert_eq(tg_mlp_init(NULL, &m, NULL, 3, w, TG_ACT_RELU, TG_F64), -1);
    expect_error(tg_mlp_init(ctx, NULL, NULL, 3, w, TG_ACT_RELU, TG_F64),
                 "tg_mlp_init: argument m is NULL");
    expect_error(tg_mlp_init(ctx, &m, NULL, 3, NULL, TG_ACT_RELU, TG_F64),
                 "tg_mlp_init: argument widths is NULL");
    expect_error(tg_mlp_init(ctx, &m, NULL, 1, w, TG_ACT_RELU, TG_F64),
                 "tg_mlp_init: n_widths must be 2 to 17 (1 to 16 layers), got 1");
    int64_t many[18];
    for (int i = 0; i < 18; i++) many[i] = 2;
    expect_error(tg_mlp_init(ctx, &m, NULL, 18, many, TG_ACT_RELU, TG_F64), "got 18");
    expect_error(tg_mlp_init(ctx, &m, NULL, 3, (int64_t[]){3, 0, 2}, TG_ACT_RELU, TG_F64),
                 "widths[1] must be > 0, got 0");
    expect_error(tg_mlp_init(ctx, &m, NULL, 3, w, TG_ACT_COUNT, TG_F64),
                 "tg_mlp_init: unknown activation");
    expect_error(tg_mlp_init(ctx, &m, NULL, 3, w, TG_ACT_RELU, TG_I32), "must be f32 or f64");
    expect_error(tg_mlp_init_ex(ctx, &m, NULL, 3, w, TG_ACT_RELU, TG_F64, TG_INIT_COUNT),
                 "tg_mlp_init_ex: unknown init kind");
    cr_assert_eq(m.n_layers, 0, "zeroed after a failure");
    /* 16 layers is the most */
    cr_assert_eq(tg_mlp_init(ctx, &m, "deep", 17, many, TG_ACT_TANH, TG_F32), 0, "%s",
                 tg_errmsg(ctx));
    cr_assert_eq(m.n_layers, 16);
    cr_assert_not_null(tg_param_find(ctx, "deep16.bias"));
    /* the same names twice */
    tg_mlp m2;
    expect_error(tg_mlp_init(ctx, &m2, "deep", 3, w, TG_ACT_RELU, TG_F64),
                 "a parameter named 'deep1.weight' exists already");

    /* forward */
    tg_tensor *x = rand_matrix(ctx, TG_F32, 2, 5);
    cr_assert_null(tg_mlp_forward(ctx, &m, x));
    cr_assert(strstr(tg_errmsg(ctx), "tg_mlp_forward: x is [2,5] but weight 'deep1.weight' is [2,2]"),
              "%s", tg_errmsg(ctx));
    tg_clear_error(ctx);
    cr_assert_null(tg_mlp_forward(ctx, NULL, x));
    cr_assert_str_eq(tg_errmsg(ctx), "tg_mlp_forward: argument m is NULL");
    tg_clear_error(ctx);
    tg_mlp empty;
    memset(&empty, 0, sizeof empty);
    cr_assert_null(tg_mlp_forward(ctx, &empty, x));
    cr_assert(strstr(tg_errmsg(ctx), "has 0 layers"), "%s", tg_errmsg(ctx));
    tg_clear_error(ctx);
    cr_assert_null(tg_mlp_forward(ctx, &m, NULL));
    cr_assert_str_eq(tg_errmsg(ctx), "tg_mlp_forward: argument x is NULL");
    tg_clear_error(ctx);
    cr_assert_null(tg_mlp_forward(NULL, &m, x));
}

/* The MLP trains: XOR with tanh, Adam, full batch. */
Test(nn, mlp_learns_xor) {
    tg_mlp m;
    tg_mlp_init(ctx, &m, NULL, 3, (int64_t[]){2, 8, 1}, TG_ACT_TANH, TG_F64);
    double xs[8] = {0, 0, 0, 1, 1, 0, 1, 1}, ys[4] = {0, 1, 1, 0};
    tg_optim_opts o = tg_optim_defaults(TG_OPT_ADAM);
    o.lr = 0.05;
    tg_optim *opt = tg_optim_new(ctx, &o, NULL, 0);
    double loss = 1;
    for (int s = 0; s < 300; s++) {
        tg_tensor *x = tg_from(ctx, TG_F64, 2, (int64_t[]){4, 2}, xs);
        loss = mse_step(ctx, opt, tg_sigmoid(ctx, tg_mlp_forward(ctx, &m, x)), ys);
    }
    cr_assert(tg_ok(ctx), "%s", tg_errmsg(ctx));
    cr_assert_lt(loss, 0.01, "XOR loss %g", loss);
    tg_optim_free(opt);
}
