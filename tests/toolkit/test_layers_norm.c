/* SPDX-License-Identifier: MIT */
/* test_layers_norm.c: the normalisation and dropout layers (tg_layernorm,
 * tg_batchnorm, tg_dropout_forward) and the optimisers' handling of
 * parameters that do not require grad.
 *
 * Names, shapes and PyTorch's default values of the parameters; forwards
 * equal to the ops they wrap; batch norm's running statistics: no gradient,
 * untouched by every optimiser (weight decay included) so that after a
 * training step they hold exactly the batch-statistics update; evaluation
 * mode normalising with them and leaving them alone; a checkpoint round trip
 * carrying them; dropout following the mode; errors. */
#include <criterion/criterion.h>

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "tapegrad.h"
#include "tg_test.h"

TG_TEST_SUITE(layers_norm, 77); /* ctx: a fresh context per test */

/* every element of t equals v */
static void assert_all(const tg_tensor *t, double v, const char *what)
{
    for (int64_t i = 0; i < tg_numel(t); i++)
        cr_assert_eq(at(t, i), v, "%s[%lld] = %g, want %g", what, (long long)i, at(t, i), v);
}

Test(layers_norm, layernorm_parameters_and_forward)
{
    tg_layernorm ln;
    cr_assert_eq(tg_layernorm_init(ctx, &ln, "ln1", 6, TG_F32), 0, "%s", tg_errmsg(ctx));
    cr_assert_eq(tg_param_find(ctx, "ln1.weight"), ln.weight);
    cr_assert_eq(tg_param_find(ctx, "ln1.bias"), ln.bias);
    cr_assert_eq(tg_numel(ln.weight), 6);
    cr_assert_eq(tg_dtype_of(ln.bias), TG_F32);
    assert_all(ln.weight, 1, "weight");
    assert_all(ln.bias, 0, "bias");
    cr_assert_eq(ln.eps, 1e-5);
    cr_assert_eq(ln.dim, 6);
    tg_fill_uniform(ctx, ln.weight, 0.5, 1.5);
    tg_fill_uniform(ctx, ln.bias, -1, 1);
    tg_tensor *x = rnd(ctx, TG_F32, (shp){3, {2, 3, 6}}, -2, 2);
    tg_tensor *y = tg_layernorm_forward(ctx, &ln, x);
    tg_tensor *want = tg_layer_norm(ctx, x, ln.weight, ln.bias, 1e-5);
    cr_assert(y && want, "%s", tg_errmsg(ctx));
    cr_assert_eq(tg_hash(y), tg_hash(want));
    tg_backward(ctx, tg_sum(ctx, tg_mul(ctx, y, rnd(ctx, TG_F32, (shp){3, {2, 3, 6}}, -1, 1))));
    cr_assert(tg_ok(ctx), "%s", tg_errmsg(ctx));
    cr_assert_not_null(tg_grad(ln.weight));
    cr_assert_not_null(tg_grad(ln.bias));
}

Test(layers_norm, batchnorm_parameters)
{
    tg_batchnorm bn;
    cr_assert_eq(tg_batchnorm_init(ctx, &bn, "features.1", 4, TG_F64), 0, "%s", tg_errmsg(ctx));
    const char *names[4] = {"features.1.weight", "features.1.bias", "features.1.running_mean",
                            "features.1.running_var"};
    tg_tensor *ts[4] = {bn.weight, bn.bias, bn.running_mean, bn.running_var};
    const double init[4] = {1, 0, 0, 1};
    for (int i = 0; i < 4; i++) {
        cr_assert_eq(tg_param_find(ctx, names[i]), ts[i], "%s", names[i]);
        cr_assert_eq(tg_ndim(ts[i]), 1);
        cr_assert_eq(tg_numel(ts[i]), 4);
        assert_all(ts[i], init[i], names[i]);
        cr_assert_eq(tg_requires_grad(ts[i]), i < 2, "%s requires_grad", names[i]);
    }
    cr_assert_eq(bn.momentum, 0.1);
    cr_assert_eq(bn.eps, 1e-5);
    cr_assert_eq(bn.channels, 4);
}

/* x [8,3,2,2]: the expected running statistics after one training step from
 * (0, 1) with momentum 0.1: 0.1 mean, 0.9 + 0.1 unbiased variance */
static void expected_running(const tg_tensor *x, double *rm, double *rv)
{
    for (int c = 0; c < 3; c++) {
        double m, v;
        channel_stats(x, c, 1, &m, &v);
        rm[c] = 0.1 * m;
        rv[c] = 0.9 + 0.1 * v;
    }
}

/* A training step through a batch norm layer with each optimiser, weight
 * decay on: the weight and bias move, the running statistics hold exactly
 * the batch-statistics update (no gradient, no update, no decay). */
Test(layers_norm, training_step_leaves_running_stats_to_batch_update)
{
    for (int kind = 0; kind < TG_OPT_COUNT; kind++) {
        tg_ctx *c = tg_ctx_new(5);
        tg_batchnorm bn;
        cr_assert_eq(tg_batchnorm_init(c, &bn, "bn", 3, TG_F64), 0, "%s", tg_errmsg(c));
        tg_optim_opts o = tg_optim_defaults((tg_opt_kind)kind);
        o.weight_decay = 0.5;
        o.momentum = kind == TG_OPT_SGD || kind == TG_OPT_RMSPROP ? 0.9 : 0;
        o.lr = 0.1;
        tg_optim *opt = tg_optim_new(c, &o, NULL, 0); /* every parameter, running stats too */
        cr_assert_not_null(opt, "%s", tg_errmsg(c));
        tg_tensor *x = tg_new(c, TG_F64, 4, (int64_t[]){8, 3, 2, 2});
        tg_fill_uniform(c, x, -1, 3);
        tg_tensor *r = tg_new(c, TG_F64, 4, (int64_t[]){8, 3, 2, 2});
        tg_fill_uniform(c, r, -1, 1);
        double rm[3], rv[3];
        expected_running(x, rm, rv);
        tg_tensor *loss = tg_sum(c, tg_mul(c, tg_batchnorm_forward(c, &bn, x), r));
        tg_zero_grad(c);
        tg_backward(c, loss);
        cr_assert_eq(tg_optim_step(opt), 0);
        cr_assert(tg_ok(c), "%s", tg_errmsg(c));
        cr_assert_null(tg_grad(bn.running_mean), "%s", tg_optim_kind_name(o.kind));
        cr_assert_null(tg_grad(bn.running_var));
        for (int k = 0; k < 3; k++) {
            cr_assert(fabs(at(bn.running_mean, k) - rm[k]) < 1e-15,
                      "%s running_mean[%d]: %.17g vs %.17g", tg_optim_kind_name(o.kind), k,
                      at(bn.running_mean, k), rm[k]);
            cr_assert(fabs(at(bn.running_var, k) - rv[k]) < 1e-15,
                      "%s running_var[%d]: %.17g vs %.17g", tg_optim_kind_name(o.kind), k,
                      at(bn.running_var, k), rv[k]);
            cr_assert_neq(at(bn.weight, k), 1.0, "%s: the weight did not move",
                          tg_optim_kind_name(o.kind));
        }
        tg_optim_free(opt);
        tg_ctx_free(c);
    }
}

/* A parameter frozen after a gradient reached it keeps its value under every
 * optimiser (weight decay and momentum included) and tg_sgd_step. */
Test(layers_norm, optimisers_skip_frozen_parameters_with_old_gradients)
{
    for (int kind = 0; kind <= TG_OPT_COUNT; kind++) { /* TG_OPT_COUNT: tg_sgd_step */
        tg_ctx *c = tg_ctx_new(6);
        tg_tensor *p = tg_param(c, "p", TG_F32, 1, (int64_t[]){5});
        tg_tensor *q = tg_param(c, "q", TG_F32, 1, (int64_t[]){5});
        tg_fill(p, 2);
        tg_fill(q, 2);
        tg_backward(c, tg_sum(c, tg_mul(c, p, q)));
        cr_assert_not_null(tg_grad(p));
        tg_set_requires_grad(p, 0);
        if (kind < TG_OPT_COUNT) {
            tg_optim_opts o = tg_optim_defaults((tg_opt_kind)kind);
            o.weight_decay = 0.5;
            tg_optim *opt = tg_optim_new(c, &o, NULL, 0);
            cr_assert_eq(tg_optim_step(opt), 0);
            cr_assert_eq(tg_optim_step(opt), 0);
            tg_optim_free(opt);
        } else {
            cr_assert_eq(tg_sgd_step(c, 0.1), 0);
        }
        assert_all(p, 2, "frozen p");
        cr_assert_neq(at(q, 0), 2.0, "kind %d: q did not move", kind);
        tg_ctx_free(c);
    }
}

Test(layers_norm, eval_mode_uses_running_stats)
{
    tg_batchnorm bn;
    cr_assert_eq(tg_batchnorm_init(ctx, &bn, "bn", 2, TG_F64), 0, "%s", tg_errmsg(ctx));
    const double rm[2] = {0.5, -1}, rv[2] = {4, 0.25}, w[2] = {2, 3}, b[2] = {0.1, -0.2};
    for (int k = 0; k < 2; k++) {
        set_at(bn.running_mean, k, rm[k]);
        set_at(bn.running_var, k, rv[k]);
        set_at(bn.weight, k, w[k]);
        set_at(bn.bias, k, b[k]);
    }
    cr_assert_eq(tg_train_mode(ctx, 0), 1);
    tg_tensor *x = rnd(ctx, TG_F64, (shp){2, {5, 2}}, -2, 2);
    tg_tensor *y = tg_batchnorm_forward(ctx, &bn, x);
    cr_assert_not_null(y, "%s", tg_errmsg(ctx));
    for (int i = 0; i < 10; i++) {
        int k = i % 2;
        double want = (at(x, i) - rm[k]) / sqrt(rv[k] + 1e-5) * w[k] + b[k];
        cr_assert(fabs(at(y, i) - want) < 1e-14, "y[%d] = %.17g, want %.17g", i, at(y, i), want);
    }
    for (int k = 0; k < 2; k++) {
        cr_assert_eq(at(bn.running_mean, k), rm[k]);
        cr_assert_eq(at(bn.running_var, k), rv[k]);
    }
    /* a batch of 1 is fine in eval mode (PyTorch too), not in training */
    cr_assert_not_null(tg_batchnorm_forward(ctx, &bn, rnd(ctx, TG_F64, (shp){2, {1, 2}}, 0, 1)));
    tg_train_mode(ctx, 1);
    cr_assert_null(tg_batchnorm_forward(ctx, &bn, rnd(ctx, TG_F64, (shp){2, {1, 2}}, 0, 1)));
    assert_err(ctx, "batch of 1 in training", "tg_batch_norm", "more than 1 value per channel",
               NULL);
}

Test(layers_norm, checkpoint_carries_running_stats)
{
    tg_batchnorm bn;
    cr_assert_eq(tg_batchnorm_init(ctx, &bn, "bn", 3, TG_F32), 0, "%s", tg_errmsg(ctx));
    cr_assert_not_null(
        tg_batchnorm_forward(ctx, &bn, rnd(ctx, TG_F32, (shp){4, {4, 3, 2, 2}}, 1, 3)));
    const uint64_t hm = tg_hash(bn.running_mean), hv = tg_hash(bn.running_var);
    char path[] = "/tmp/tg_layers_norm_XXXXXX";
    int fd = mkstemp(path);
    cr_assert_geq(fd, 0);
    close(fd);
    cr_assert_eq(tg_save(ctx, path), 0, "%s", tg_errmsg(ctx));
    tg_fill(bn.running_mean, 7);
    tg_fill(bn.running_var, 7);
    cr_assert_eq(tg_load(ctx, path), 0, "%s", tg_errmsg(ctx));
    unlink(path);
    cr_assert_eq(tg_hash(bn.running_mean), hm);
    cr_assert_eq(tg_hash(bn.running_var), hv);
    cr_assert_eq(tg_requires_grad(bn.running_mean), 0, "a load turned the gradient on");
}

Test(layers_norm, dropout_follows_the_mode)
{
    tg_tensor *x = rnd(ctx, TG_F64, (shp){2, {40, 50}}, 1, 2);
    tg_tensor *yt = tg_dropout_forward(ctx, x, 0.5);
    tg_train_mode(ctx, 0);
    tg_tensor *ye = tg_dropout_forward(ctx, x, 0.5);
    cr_assert(yt && ye, "%s", tg_errmsg(ctx));
    int zeros = 0;
    for (int i = 0; i < 2000; i++) zeros += at(yt, i) == 0;
    cr_assert(zeros > 800 && zeros < 1200, "%d zeros of 2000 in training mode", zeros);
    cr_assert_eq(tg_hash(ye), tg_hash(x), "evaluation mode is not the identity");
}

Test(layers_norm, errors)
{
    tg_layernorm ln;
    tg_batchnorm bn;
    cr_assert_eq(tg_layernorm_init(ctx, &ln, "ln", 0, TG_F32), -1);
    assert_err(ctx, "dim 0", "tg_layernorm_init", "dim > 0", "got 0");
    cr_assert_null(ln.weight);
    cr_assert_eq(tg_batchnorm_init(ctx, &bn, "bn", 3, TG_I32), -1);
    assert_err(ctx, "i32", "tg_batchnorm_init", "f32 or f64", "i32");
    cr_assert_eq(tg_batchnorm_init(ctx, NULL, "bn", 3, TG_F32), -1);
    assert_err(ctx, "NULL layer", "tg_batchnorm_init", "NULL", NULL);
    cr_assert_eq(tg_batchnorm_init(ctx, &bn, "", 3, TG_F32), -1);
    assert_err(ctx, "empty name", "tg_batchnorm_init", "name is empty", NULL);
    cr_assert_eq(tg_param_count(ctx), 0, "a failing init created parameters");
    cr_assert_null(tg_batchnorm_forward(ctx, NULL, rnd(ctx, TG_F32, (shp){2, {2, 3}}, 0, 1)));
    assert_err(ctx, "forward NULL", "tg_batchnorm_forward", "bn is NULL", NULL);
    tg_layernorm blank = {0};
    cr_assert_null(tg_layernorm_forward(ctx, &blank, rnd(ctx, TG_F32, (shp){2, {2, 3}}, 0, 1)));
    assert_err(ctx, "not initialised", "tg_layernorm_forward", "was tg_layernorm_init called?",
               NULL);
    cr_assert_eq(tg_layernorm_init(ctx, &ln, "ln", 4, TG_F32), 0);
    cr_assert_null(tg_layernorm_forward(ctx, &ln, rnd(ctx, TG_F32, (shp){2, {2, 3}}, 0, 1)));
    assert_err(ctx, "wrong width", "tg_layer_norm", "weight [4] must be [D] = [3]", NULL);
    cr_assert_eq(tg_batchnorm_init(ctx, &bn, "bn", 4, TG_F32), 0);
    tg_train_mode(ctx, 0);
    cr_assert_null(tg_batchnorm_forward(ctx, &bn, rnd(ctx, TG_F32, (shp){3, {2, 4, 3}}, 0, 1)));
    assert_err(ctx, "3-D", "tg_batch_norm", "[N,C] or [N,C,H,W]", NULL);
}
