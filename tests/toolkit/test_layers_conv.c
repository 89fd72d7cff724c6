/* SPDX-License-Identifier: MIT */
/* test_layers_conv.c: the convolution layer tg_conv (src/toolkit/layers_conv.c):
 * nn.Conv2d's parameter names, layouts and default initialisation, a forward
 * pass that is tg_conv2d, a small CNN that learns, and bad arguments. */
#include <math.h>

#include "../tg_test.h"

Test(layers_conv, names_shapes_and_pytorch_init)
{
    tg_ctx *c = tg_ctx_new(5);
    tg_conv l;
    cr_assert_eq(tg_conv_init(c, &l, "conv1", 3, 8, 5, 1, 2, 1, TG_F32), 0, "%s", tg_errmsg(c));
    cr_assert_eq(tg_param_find(c, "conv1.weight"), l.weight);
    cr_assert_eq(tg_param_find(c, "conv1.bias"), l.bias);
    cr_assert_eq(tg_ndim(l.weight), 4);
    const int64_t want[4] = {8, 3, 5, 5};
    for (int d = 0; d < 4; d++) cr_assert_eq(tg_dim(l.weight, d), want[d]);
    cr_assert_eq(tg_dim(l.bias, 0), 8);
    /* U(-1/sqrt(75), 1/sqrt(75)) for both: inside the bound, and filling it */
    const double bound = 1.0 / sqrt(75.0);
    double wmax = 0, bmax = 0;
    for (int64_t i = 0; i < tg_numel(l.weight); i++) {
        cr_assert(fabs(at(l.weight, i)) <= bound);
        wmax = fmax(wmax, fabs(at(l.weight, i)));
    }
    for (int64_t i = 0; i < tg_numel(l.bias); i++) {
        cr_assert(fabs(at(l.bias, i)) <= bound);
        bmax = fmax(bmax, fabs(at(l.bias, i)));
    }
    cr_assert(wmax > 0.9 * bound, "weights span %g of the bound %g", wmax, bound);
    cr_assert(bmax > 0.3 * bound, "biases span %g of the bound %g", bmax, bound);
    tg_ctx_free(c);
}

Test(layers_conv, no_bias_and_forward_is_conv2d)
{
    tg_ctx *c = tg_ctx_new(6);
    tg_conv l;
    cr_assert_eq(tg_conv_init(c, &l, "c", 2, 3, 3, 2, 1, 0, TG_F64), 0, "%s", tg_errmsg(c));
    cr_assert_null(l.bias);
    cr_assert_null(tg_param_find(c, "c.bias"));
    tg_tensor *x = rnd(c, TG_F64, (shp){4, {2, 2, 7, 6}}, -1, 1);
    tg_tensor *y = tg_conv_forward(c, &l, x), *r = tg_conv2d(c, x, l.weight, NULL, 2, 1);
    cr_assert_not_null(y, "%s", tg_errmsg(c));
    const int64_t want[4] = {2, 3, 4, 3};
    for (int d = 0; d < 4; d++) cr_assert_eq(tg_dim(y, d), want[d]);
    for (int64_t i = 0; i < tg_numel(y); i++) cr_assert_eq(at(y, i), at(r, i));
    tg_ctx_free(c);
}

/* conv -> relu -> max pool -> linear learns to tell a bright left half from a
 * bright right half in a few Adam steps, and a warm step allocates nothing */
Test(layers_conv, small_cnn_learns_without_allocating)
{
    tg_ctx *c = tg_ctx_new(8);
    tg_conv l;
    tg_dense d;
    cr_assert_eq(tg_conv_init(c, &l, "conv", 1, 4, 3, 1, 1, 1, TG_F32), 0);
    cr_assert_eq(tg_dense_init(c, &d, "fc", 4 * 4 * 4, 2, TG_F32, TG_INIT_XAVIER_UNIFORM), 0);
    tg_optim_opts o = tg_optim_defaults(TG_OPT_ADAM);
    o.lr = 0.01;
    tg_optim *opt = tg_optim_new(c, &o, NULL, 0);
    cr_assert_not_null(opt, "%s", tg_errmsg(c));
    const int n = 16;
    float xs[16 * 64];
    int32_t ys[16];
    for (int s = 0; s < n; s++) {
        ys[s] = s % 2;
        for (int i = 0; i < 64; i++)
            xs[s * 64 + i] = ((i % 8 < 4) == (s % 2 == 0) ? 1.0f : 0.0f) + 0.01f * (float)(i % 5);
    }
    double first = 0, last = 0;
    uint64_t grows = 0;
    for (int step = 0; step < 40; step++) {
        tg_tensor *x = tg_from(c, TG_F32, 4, (const int64_t[]){n, 1, 8, 8}, xs);
        tg_tensor *y = tg_from(c, TG_I32, 1, (const int64_t[]){n}, ys);
        tg_tensor *h = tg_max_pool2d(c, tg_relu(c, tg_conv_forward(c, &l, x)), 2, 2);
        tg_tensor *logits = tg_dense_forward(c, &d, tg_reshape(c, h, 2, (const int64_t[]){n, 64}),
                                             TG_ACT_NONE);
        tg_tensor *loss = tg_cross_entropy(c, logits, y);
        tg_zero_grad(c);
        tg_backward(c, loss);
        tg_optim_step(opt);
        cr_assert(tg_ok(c), "%s", tg_errmsg(c));
        if (step == 0) first = tg_item(loss);
        last = tg_item(loss);
        tg_reset(c);
        tg_mem_stats ms;
        tg_mem_stats_get(c, &ms);
        if (step == 1) grows = ms.arena_grows;
        if (step > 1) cr_assert_eq(ms.arena_grows, grows, "step %d grew the arena", step);
    }
    cr_assert(last < 0.2 * first, "loss %g -> %g", first, last);
    tg_optim_free(opt);
    tg_ctx_free(c);
}

Test(layers_conv, bad_arguments)
{
    tg_ctx *c = tg_ctx_new(1);
    tg_conv l;
    cr_assert_eq(tg_conv_init(c, &l, "c", 0, 3, 3, 1, 0, 1, TG_F32), -1);
    assert_err(c, "in_ch 0", "tg_conv_init", "in_ch 0", NULL);
    cr_assert_null(l.weight);
    cr_assert_eq(tg_conv_init(c, &l, "c", 1, 3, 3, 0, 0, 1, TG_F32), -1);
    assert_err(c, "stride 0", "tg_conv_init", "stride 0", NULL);
    cr_assert_eq(tg_conv_init(c, &l, "c", 1, 3, 3, 1, -1, 1, TG_F32), -1);
    assert_err(c, "padding -1", "tg_conv_init", "padding -1", NULL);
    cr_assert_eq(tg_conv_init(c, &l, "c", 1, 3, 3, 1, 0, 1, TG_I32), -1);
    assert_err(c, "dtype", "tg_conv_init", "f32 or f64", NULL);
    cr_assert_null(tg_param_find(c, "c.weight"), "a failing init created a parameter");
    cr_assert_eq(tg_conv_init(c, &l, "c", 2, 3, 3, 1, 0, 1, TG_F32), 0);
    tg_tensor *x = rnd(c, TG_F32, (shp){4, {1, 3, 5, 5}}, -1, 1);
    assert_null_err(c, tg_conv_forward(c, &l, x), "tg_conv2d", "3 channels", "expects 2");
    tg_conv empty = {0};
    assert_null_err(c, tg_conv_forward(c, &empty, x), "tg_conv_forward", "tg_conv_init", NULL);
    tg_ctx_free(c);
}
