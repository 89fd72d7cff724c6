/* SPDX-License-Identifier: MIT */
/* test_layers_embed.c: the embedding layer (tg_embed).
 *
 * Parameter name, shape and dtype; N(0, 1) initialisation (statistics of a
 * large table, determinism per seed); the forward pass picks rows; gradients
 * of repeated tokens add up in their row, checked by finite differences in
 * f64 with the weight as a parameter; errors change nothing. */
#include <criterion/criterion.h>

#include <math.h>
#include <string.h>

#include "tapegrad.h"
#include "tg_test.h"

TG_TEST_SUITE(layers_embed, 31); /* ctx: a fresh context per test */

Test(layers_embed, parameter_name_shape_and_dtype)
{
    tg_embed e;
    int before = tg_param_count(ctx);
    cr_assert_eq(tg_embed_init(ctx, &e, "tok_emb", 11, 6, TG_F32), 0, "%s", tg_errmsg(ctx));
    cr_assert_eq(tg_param_count(ctx), before + 1);
    cr_assert_str_eq(tg_name(e.weight), "tok_emb.weight");
    cr_assert(tg_ndim(e.weight) == 2 && tg_dim(e.weight, 0) == 11 && tg_dim(e.weight, 1) == 6);
    cr_assert_eq(tg_dtype_of(e.weight), TG_F32);
    cr_assert(e.num == 11 && e.dim == 6);
    cr_assert(tg_requires_grad(e.weight));
    tg_embed u;
    cr_assert_eq(tg_embed_init(ctx, &u, NULL, 3, 2, TG_F64), 0, "%s", tg_errmsg(ctx));
    cr_assert_not_null(tg_name(u.weight));
    cr_assert_str_neq(tg_name(u.weight), "tok_emb.weight");
}

/* nn.Embedding's default: every entry N(0, 1) */
Test(layers_embed, init_is_standard_normal_and_seeded)
{
    tg_embed e;
    cr_assert_eq(tg_embed_init(ctx, &e, "e", 500, 200, TG_F64), 0);
    double s = 0, s2 = 0;
    int64_t n = tg_numel(e.weight), out3 = 0;
    for (int64_t i = 0; i < n; i++) {
        double v = at(e.weight, i);
        s += v;
        s2 += v * v;
        out3 += fabs(v) > 3;
    }
    double mean = s / (double)n, sd = sqrt(s2 / (double)n - mean * mean);
    cr_assert(fabs(mean) < 0.01, "mean %g", mean);
    cr_assert(fabs(sd - 1) < 0.01, "sd %g", sd);
    /* P(|z| > 3) = 0.27%: 270 of 10^5 expected */
    cr_assert(out3 > 150 && out3 < 400, "%lld beyond 3 sd", (long long)out3);
    tg_ctx *c2 = tg_ctx_new(31), *c3 = tg_ctx_new(32);
    tg_embed e2, e3;
    cr_assert_eq(tg_embed_init(c2, &e2, "e", 500, 200, TG_F64), 0);
    cr_assert_eq(tg_embed_init(c3, &e3, "e", 500, 200, TG_F64), 0);
    cr_assert_eq(tg_hash(e2.weight), tg_hash(e.weight));
    cr_assert_neq(tg_hash(e3.weight), tg_hash(e.weight));
    tg_ctx_free(c2);
    tg_ctx_free(c3);
}

Test(layers_embed, forward_picks_rows_and_gradients_add_up)
{
    tg_embed e;
    cr_assert_eq(tg_embed_init(ctx, &e, "emb", 5, 3, TG_F32), 0);
    const int32_t v[6] = {4, 0, 4, 2, 4, 0};
    tg_tensor *idx = tg_from(ctx, TG_I32, 2, (int64_t[]){2, 3}, v);
    tg_tensor *y = tg_embed_forward(ctx, &e, idx);
    cr_assert_not_null(y, "%s", tg_errmsg(ctx));
    cr_assert(tg_ndim(y) == 3 && tg_dim(y, 0) == 2 && tg_dim(y, 1) == 3 && tg_dim(y, 2) == 3);
    for (int i = 0; i < 6; i++)
        for (int j = 0; j < 3; j++) cr_assert_eq(at(y, i * 3 + j), at(e.weight, v[i] * 3 + j));
    tg_zero_grad(ctx);
    tg_backward(ctx, tg_sum(ctx, y));
    const double count[5] = {2, 0, 1, 0, 3};
    for (int r = 0; r < 5; r++)
        for (int j = 0; j < 3; j++) cr_assert_eq(grad_at(e.weight, r * 3 + j), count[r]);
}

static tg_tensor *fn_embed(tg_ctx *c, tg_tensor *const *in, void *user)
{
    tg_embed e = {in[0], tg_dim(in[0], 0), tg_dim(in[0], 1)};
    tg_tensor *y = tg_embed_forward(c, &e, user);
    return tg_sum(c, tg_mul(c, tg_tanh(c, y), tg_scale(c, y, 0.7)));
}

Test(layers_embed, gradcheck_of_the_weight)
{
    tg_embed e;
    cr_assert_eq(tg_embed_init(ctx, &e, "emb", 6, 4, TG_F64), 0);
    const int32_t v[7] = {5, 1, 1, 3, 0, 1, 5};
    tg_tensor *idx = tg_from(ctx, TG_I32, 1, (int64_t[]){7}, v);
    tg_tensor *in[1] = {e.weight};
    gradcheck_ok(ctx, fn_embed, idx, in, 1, "tg_embed_forward");
    assert_grads_nonzero(ctx, fn_embed, idx, in, 1, LOSS_SELF, "tg_embed_forward");
}

Test(layers_embed, bad_arguments)
{
    tg_embed e;
    int n = tg_param_count(ctx);
    cr_assert_eq(tg_embed_init(ctx, &e, "e", 0, 4, TG_F32), -1);
    assert_err(ctx, "num 0", "tg_embed_init", "num 0", "'e'");
    cr_assert_null(e.weight);
    cr_assert_eq(tg_embed_init(ctx, &e, "e", 4, -1, TG_F32), -1);
    assert_err(ctx, "dim -1", "tg_embed_init", "dim -1", NULL);
    cr_assert_eq(tg_embed_init(ctx, &e, "e", 4, 2, TG_I32), -1);
    assert_err(ctx, "i32", "tg_embed_init", "i32", NULL);
    cr_assert_eq(tg_embed_init(ctx, &e, "", 4, 2, TG_F32), -1);
    assert_err(ctx, "empty name", "tg_embed_init", "name is empty", NULL);
    cr_assert_eq(tg_embed_init(ctx, NULL, "e", 4, 2, TG_F32), -1);
    assert_err(ctx, "NULL e", "tg_embed_init", "e is NULL", NULL);
    char longname[300];
    memset(longname, 'a', sizeof longname - 1);
    longname[sizeof longname - 1] = 0;
    cr_assert_eq(tg_embed_init(ctx, &e, longname, 4, 2, TG_F32), -1);
    assert_err(ctx, "long name", "tg_embed_init", "too long", NULL);
    cr_assert_eq(tg_param_count(ctx), n);

    tg_embed none = {0};
    tg_tensor *idx = tg_from(ctx, TG_I32, 1, (int64_t[]){2}, (int32_t[]){0, 4});
    cr_assert_null(tg_embed_forward(ctx, &none, idx));
    assert_err(ctx, "no weight", "tg_embed_forward", "tg_embed_init", NULL);
    cr_assert_null(tg_embed_forward(ctx, NULL, idx));
    assert_err(ctx, "NULL e", "tg_embed_forward", "e is NULL", NULL);
    cr_assert_eq(tg_embed_init(ctx, &e, "e", 4, 2, TG_F32), 0);
    int64_t tape = tg_tape_len(ctx);
    cr_assert_null(tg_embed_forward(ctx, &e, idx));
    assert_err(ctx, "index 4 of 4 rows", "tg_embedding", "= 4 is outside [0, 4)", NULL);
    cr_assert_eq(tg_tape_len(ctx), tape);
    cr_assert_null(tg_grad(e.weight));
}
