/* SPDX-License-Identifier: MIT */
/* tests/ops/test_ops_apply.c: every built-in op of more than one input, or
 * not elementwise, is a tg_op like a user's: tg_apply of the op taken from the
 * tape node of a direct call (with its attributes) gives the same bits, values
 * and gradients, as the direct call (assert_apply_matches in tg_test.h). The
 * one-input elementwise ops are checked row by row in test_ops_unary.c.
 *
 * Where tg_apply cannot repeat a call by itself, the test says how it is met:
 * tg_dropout draws its mask from the context's generator, so the generator is
 * reseeded before tg_apply (and p = 0 is tg_identity); tg_batch_norm in
 * training updates the running statistics in place, so a second run updates
 * them again (the cases use eval mode, or training without running
 * statistics); tg_lstm_cell has two outputs: its "lstm_cell" node makes c'
 * and writes h' into the h' tensor of the direct call, and its "lstm_cell_h"
 * node computes nothing, so the c' node is the one applied. */
#include <criterion/criterion.h>

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h" /* a direct call's tape node: its tg_op and attributes */
#include "tg_test.h"

TG_TEST_SUITE(apply, 8); /* ctx: a fresh context per test */

#define F(name, expr)                                                                  \
    static tg_tensor *name(tg_ctx *c, tg_tensor *const *in, void *user)                \
    {                                                                                  \
        (void)user;                                                                    \
        return expr;                                                                   \
    }
F(f_add, tg_add(c, in[0], in[1]))
F(f_sub, tg_sub(c, in[0], in[1]))
F(f_mul, tg_mul(c, in[0], in[1]))
F(f_div, tg_div(c, in[0], in[1]))
F(f_step, tg_step(c, in[0]))
F(f_sum, tg_sum(c, in[0]))
F(f_mean, tg_mean(c, in[0]))
F(f_sum_axis, tg_sum_axis(c, in[0], 1, 0))
F(f_mean_axis, tg_mean_axis(c, in[0], 0, 1))
F(f_max_axis, tg_max_axis(c, in[0], -1, 0))
F(f_transpose, tg_transpose(c, in[0]))
F(f_reshape, tg_reshape(c, in[0], 2, (int64_t[]){2, 6}))
F(f_sigmoid_scaled, tg_sigmoid_scaled(c, in[0], in[1], in[2]))
F(f_mse, tg_mse(c, in[0], in[1]))
F(f_l1, tg_l1(c, in[0], in[1]))
F(f_bce, tg_bce(c, in[0], in[1]))
F(f_bce_logits, tg_bce_with_logits(c, in[0], in[1]))
F(f_cross_entropy, tg_cross_entropy(c, in[0], in[1]))
F(f_matmul, tg_matmul(c, in[0], in[1]))
F(f_add_bias, tg_add_bias(c, in[0], in[1]))
F(f_linear_none, tg_linear(c, in[0], in[1], in[2], TG_ACT_NONE))
F(f_linear_relu, tg_linear(c, in[0], in[1], in[2], TG_ACT_RELU))
F(f_linear_tanh, tg_linear(c, in[0], in[1], in[2], TG_ACT_TANH))
F(f_linear_sigmoid, tg_linear(c, in[0], in[1], in[2], TG_ACT_SIGMOID))
F(f_linear_leaky, tg_linear(c, in[0], in[1], in[2], TG_ACT_LEAKY_RELU))
F(f_linear_nobias, tg_linear(c, in[0], in[1], NULL, TG_ACT_TANH))
F(f_bmm, tg_matmul(c, in[0], in[1]))
F(f_conv2d, tg_conv2d(c, in[0], in[1], in[2], 1, 1))
F(f_conv2d_s2, tg_conv2d(c, in[0], in[1], NULL, 2, 0))
F(f_conv2d_1x1, tg_conv2d(c, in[0], in[1], in[2], 1, 0))
F(f_max_pool, tg_max_pool2d(c, in[0], 2, 2))
F(f_max_pool_3s1, tg_max_pool2d(c, in[0], 3, 1))
F(f_avg_pool, tg_avg_pool2d(c, in[0], 2, 1))
F(f_layer_norm, tg_layer_norm(c, in[0], in[1], in[2], 1e-5))
F(f_layer_norm_bare, tg_layer_norm(c, in[0], NULL, NULL, 1e-5))
F(f_batch_norm_eval, tg_batch_norm(c, in[0], in[1], in[2], in[3], in[4], 0, 0.1, 1e-5))
F(f_batch_norm_train, tg_batch_norm(c, in[0], NULL, NULL, in[1], in[2], 1, 0.1, 1e-5))
F(f_dropout_p0, tg_dropout(c, in[0], 0.0, 1))
F(f_permute, tg_permute(c, in[0], (int[]){2, 0, 1}))
F(f_slice, tg_slice(c, in[0], 1, 1, 3))
F(f_concat, tg_concat(c, in, 3, -1))
F(f_embedding, tg_embedding(c, in[0], in[1]))
F(f_gru, tg_gru_cell(c, in[0], in[1], in[2], in[3], in[4], in[5]))
F(f_gru_nobias, tg_gru_cell(c, in[0], in[1], in[2], in[3], NULL, NULL))
F(f_attention, tg_attention(c, in[0], in[1], in[2], 0))
F(f_attention_causal, tg_attention(c, in[0], in[1], in[2], 1))

/* An op applied to inputs of the given shapes, uniform in [lo, hi); an input
 * with `labels` set is i32 class indices in [0, 4). */
typedef struct {
    const char *name;
    tg_fn f;
    int n;
    shp in[6];
    double lo, hi;
    int labels; /* index of an i32 input, or -1 */
} apply_case;

static const apply_case CASES[] = {
    {"tg_add, same shapes", f_add, 2, {{2, {3, 4}}, {2, {3, 4}}}, -2, 2, -1},
    {"tg_add, scalar", f_add, 2, {{2, {3, 4}}, {0, {0}}}, -2, 2, -1},
    {"tg_sub, broadcast", f_sub, 2, {{2, {3, 1}}, {2, {1, 4}}}, -2, 2, -1},
    {"tg_mul, row", f_mul, 2, {{2, {3, 4}}, {1, {4}}}, -2, 2, -1},
    {"tg_div, scalar first", f_div, 2, {{0, {0}}, {2, {3, 4}}}, 0.5, 2, -1},
    {"tg_step", f_step, 1, {{2, {3, 4}}}, -2, 2, -1},
    {"tg_sum", f_sum, 1, {{2, {3, 4}}}, -2, 2, -1},
    {"tg_mean", f_mean, 1, {{3, {2, 3, 2}}}, -2, 2, -1},
    {"tg_sum_axis", f_sum_axis, 1, {{3, {2, 3, 2}}}, -2, 2, -1},
    {"tg_mean_axis", f_mean_axis, 1, {{3, {2, 3, 2}}}, -2, 2, -1},
    {"tg_max_axis", f_max_axis, 1, {{3, {2, 3, 2}}}, -2, 2, -1},
    {"tg_transpose", f_transpose, 1, {{2, {3, 4}}}, -2, 2, -1},
    {"tg_reshape", f_reshape, 1, {{2, {3, 4}}}, -2, 2, -1},
    {"tg_sigmoid_scaled", f_sigmoid_scaled, 3, {{2, {3, 4}}, {0, {0}}, {1, {1}}}, 0.5, 2, -1},
    {"tg_mse", f_mse, 2, {{2, {3, 4}}, {2, {3, 4}}}, -2, 2, -1},
    {"tg_l1", f_l1, 2, {{2, {3, 4}}, {2, {3, 4}}}, -2, 2, -1},
    {"tg_bce", f_bce, 2, {{2, {3, 4}}, {2, {3, 4}}}, 0.1, 0.9, -1},
    {"tg_bce_with_logits", f_bce_logits, 2, {{2, {3, 4}}, {2, {3, 4}}}, -2, 2, -1},
    {"tg_cross_entropy, indices", f_cross_entropy, 2, {{2, {3, 4}}, {1, {3}}}, -2, 2, 1},
    {"tg_cross_entropy, probabilities", f_cross_entropy, 2, {{2, {3, 4}}, {2, {3, 4}}}, 0.1,
     0.9, -1},
    {"tg_matmul", f_matmul, 2, {{2, {3, 4}}, {2, {4, 2}}}, -2, 2, -1},
    {"tg_add_bias", f_add_bias, 2, {{2, {3, 4}}, {1, {4}}}, -2, 2, -1},
    {"tg_linear, none", f_linear_none, 3, {{2, {3, 4}}, {2, {4, 5}}, {1, {5}}}, -1, 1, -1},
    {"tg_linear, relu", f_linear_relu, 3, {{2, {3, 4}}, {2, {4, 5}}, {1, {5}}}, -1, 1, -1},
    {"tg_linear, tanh", f_linear_tanh, 3, {{2, {3, 4}}, {2, {4, 5}}, {1, {5}}}, -1, 1, -1},
    {"tg_linear, sigmoid", f_linear_sigmoid, 3, {{2, {3, 4}}, {2, {4, 5}}, {1, {5}}}, -1, 1,
     -1},
    {"tg_linear, leaky relu", f_linear_leaky, 3, {{2, {3, 4}}, {2, {4, 5}}, {1, {5}}}, -1, 1,
     -1},
    {"tg_linear, no bias", f_linear_nobias, 2, {{2, {3, 4}}, {2, {4, 5}}}, -1, 1, -1},
    {"tg_matmul, batched", f_bmm, 2, {{3, {2, 3, 4}}, {3, {2, 4, 2}}}, -1, 1, -1},
    {"tg_matmul, batched, broadcast", f_bmm, 2, {{4, {2, 1, 3, 4}}, {3, {3, 4, 2}}}, -1, 1, -1},
    {"tg_conv2d", f_conv2d, 3, {{4, {2, 3, 5, 5}}, {4, {4, 3, 3, 3}}, {1, {4}}}, -1, 1, -1},
    {"tg_conv2d, stride 2, no bias", f_conv2d_s2, 2, {{4, {2, 2, 6, 5}}, {4, {3, 2, 2, 3}}},
     -1, 1, -1},
    {"tg_conv2d, 1x1", f_conv2d_1x1, 3, {{4, {2, 3, 4, 4}}, {4, {2, 3, 1, 1}}, {1, {2}}}, -1, 1,
     -1},
    {"tg_max_pool2d", f_max_pool, 1, {{4, {2, 3, 4, 6}}}, -1, 1, -1},
    {"tg_max_pool2d, 3x3 stride 1", f_max_pool_3s1, 1, {{4, {1, 2, 5, 5}}}, -1, 1, -1},
    {"tg_avg_pool2d", f_avg_pool, 1, {{4, {2, 3, 4, 4}}}, -1, 1, -1},
    {"tg_layer_norm", f_layer_norm, 3, {{3, {2, 3, 8}}, {1, {8}}, {1, {8}}}, -1, 1, -1},
    {"tg_layer_norm, no weight or bias", f_layer_norm_bare, 1, {{2, {3, 5}}}, -1, 1, -1},
    {"tg_batch_norm, eval", f_batch_norm_eval, 5,
     {{4, {2, 3, 2, 2}}, {1, {3}}, {1, {3}}, {1, {3}}, {1, {3}}}, 0.5, 2, -1},
    {"tg_batch_norm, training, no running statistics", f_batch_norm_train, 3,
     {{2, {4, 3}}, {1, {3}}, {1, {3}}}, -1, 1, -1},
    {"tg_dropout, p = 0", f_dropout_p0, 1, {{2, {3, 4}}}, -1, 1, -1},
    {"tg_permute", f_permute, 1, {{3, {2, 3, 4}}}, -1, 1, -1},
    {"tg_slice", f_slice, 1, {{3, {2, 4, 3}}}, -1, 1, -1},
    {"tg_concat", f_concat, 3, {{2, {2, 3}}, {2, {2, 1}}, {2, {2, 2}}}, -1, 1, -1},
    {"tg_embedding", f_embedding, 2, {{2, {4, 3}}, {1, {5}}}, -1, 1, 1},
    {"tg_gru_cell", f_gru, 6, {{2, {2, 3}}, {2, {2, 4}}, {2, {12, 3}}, {2, {12, 4}}, {1, {12}},
     {1, {12}}}, -1, 1, -1},
    {"tg_gru_cell, no biases", f_gru_nobias, 4, {{2, {2, 3}}, {2, {2, 4}}, {2, {12, 3}},
     {2, {12, 4}}}, -1, 1, -1},
    {"tg_attention", f_attention, 3, {{4, {2, 2, 3, 4}}, {4, {2, 2, 5, 4}}, {4, {2, 2, 5, 4}}},
     -1, 1, -1},
    {"tg_attention, causal", f_attention_causal, 3,
     {{4, {1, 2, 4, 4}}, {4, {1, 2, 4, 4}}, {4, {1, 2, 4, 4}}}, -1, 1, -1},
};
#define N_CASES (int)(sizeof CASES / sizeof CASES[0])

Test(apply, every_builtin_through_tg_apply)
{
    for (int k = 0; k < N_CASES; k++)
        for (int d = 0; d < 2; d++) {
            const apply_case *a = &CASES[k];
            tg_tensor *in[6];
            for (int i = 0; i < a->n; i++) {
                if (i == a->labels) {
                    int32_t lab[8];
                    for (int j = 0; j < 8; j++) lab[j] = (j * 3 + 1) % 4;
                    in[i] = tg_from(ctx, TG_I32, a->in[i].ndim, a->in[i].shape, lab);
                } else {
                    in[i] = rnd(ctx, d ? TG_F32 : TG_F64, a->in[i], a->lo, a->hi);
                }
            }
            assert_apply_matches(ctx, a->f, NULL, in, a->n, a->name);
            tg_reset(ctx);
        }
}

/* tg_dropout in training draws its mask from the context's generator: seeded
 * alike before the direct call and before tg_apply, the two agree; without
 * reseeding they draw different masks (so the reseeding is what makes them
 * agree). */
Test(apply, dropout_with_a_reseeded_generator)
{
    for (int d = 0; d < 2; d++) {
        tg_tensor *x = rnd(ctx, d ? TG_F32 : TG_F64, (shp){2, {4, 8}}, -1, 1);
        tg_set_requires_grad(x, 1);
        const uint64_t seed = 1234;
        tg_seed(ctx, seed);
        tg_tensor *y = tg_dropout(ctx, x, 0.5, 1);
        assert_node_applies(ctx, y, &x, 1, &seed, "tg_dropout, p = 0.5");
        const tg_op_call node = ctx->tape[y->node].call;
        tgi_attr attr = *(const tgi_attr *)node.attr;
        tg_tensor *y3 = tg_apply(ctx, node.op, node.in, 1, tg_dtype_of(y), 2, tg_shape(y), &attr,
                                 sizeof attr);
        cr_assert_not_null(y3, "%s", tg_errmsg(ctx));
        cr_assert_neq(memcmp(tg_data(y), tg_data(y3), (size_t)tg_numel(y) * (d ? 4 : 8)), 0,
                      "a second draw without reseeding gave the same mask");
        tg_reset(ctx);
    }
}

/* tg_lstm_cell: its "lstm_cell" node, which makes c' (and h' with it), gives
 * through tg_apply the same c' and the same gradients; the h' it writes is
 * the direct call's h' tensor, rewritten with the same values. */
Test(apply, lstm_cell_through_its_cell_node)
{
    for (int d = 0; d < 2; d++)
        for (int bias = 0; bias < 2; bias++) {
            const tg_dtype dt = d ? TG_F32 : TG_F64;
            const shp s[7] = {{2, {2, 3}},  {2, {2, 4}},  {2, {2, 4}}, {2, {16, 3}},
                              {2, {16, 4}}, {1, {16}},    {1, {16}}};
            const int n = bias ? 7 : 5;
            tg_tensor *in[7];
            for (int k = 0; k < n; k++) {
                in[k] = rnd(ctx, dt, s[k], -1, 1);
                tg_set_requires_grad(in[k], 1);
            }
            tg_tensor *c_new = NULL;
            tg_tensor *h_new = tg_lstm_cell(ctx, in[0], in[1], in[2], in[3], in[4],
                                            bias ? in[5] : NULL, bias ? in[6] : NULL, &c_new);
            cr_assert(h_new && c_new, "%s", tg_errmsg(ctx));
            size_t bytes = (size_t)tg_numel(h_new) * (d ? 4 : 8);
            void *h_copy = malloc(bytes);
            memcpy(h_copy, tg_data(h_new), bytes);
            cr_assert_str_eq(ctx->tape[c_new->node].call.op->name, "lstm_cell");
            assert_node_applies(ctx, c_new, in, n, NULL,
                                bias ? "tg_lstm_cell" : "tg_lstm_cell, no biases");
            cr_assert_eq(memcmp(h_copy, tg_data(h_new), bytes), 0, "h' changed");
            free(h_copy);
            tg_reset(ctx);
        }
}

/* A user op's attributes of up to 64 bytes live in the tape node (no arena
 * memory); larger ones are copied into the arena; both reach forward and
 * backward intact. */
typedef struct {
    double k[12];
} big_attr;

static int scale_fwd(tg_op_call *c)
{
    const double s = *(const double *)c->attr;
    const double *x = tg_data(c->in[0]);
    double *y = tg_data(c->out);
    for (int64_t i = 0; i < tg_numel(c->out); i++) y[i] = s * x[i];
    return 0;
}

static void scale_bwd(tg_op_call *c)
{
    const double s = *(const double *)c->attr;
    const double *dy = tg_grad(c->out);
    double *dx = tg_grad_acc(c->in[0]);
    for (int64_t i = 0; i < tg_numel(c->out); i++) dx[i] += s * dy[i];
}

static const tg_op user_scale = {"user_scale", scale_fwd, scale_bwd};

Test(apply, user_attributes_inline_and_in_the_arena)
{
    tg_tensor *x = rnd(ctx, TG_F64, (shp){1, {4}}, -1, 1);
    tg_set_requires_grad(x, 1);
    tg_mem_stats m_, m0, m1;
    double s = 3;
    tg_mem_stats_get(ctx, &m_);
    tg_tensor *y = tg_apply(ctx, &user_scale, &x, 1, TG_F64, 1, (int64_t[]){4}, &s, sizeof s);
    tg_mem_stats_get(ctx, &m0);
    big_attr big = {{-2}};
    tg_tensor *z = tg_apply(ctx, &user_scale, &x, 1, TG_F64, 1, (int64_t[]){4}, &big, sizeof big);
    tg_mem_stats_get(ctx, &m1);
    cr_assert(tg_ok(ctx), "%s", tg_errmsg(ctx));
    /* the second call took what the first took, and a copy of its 96-byte attribute */
    cr_assert_geq(m1.arena_used - m0.arena_used, m0.arena_used - m_.arena_used + 96);
    tg_backward(ctx, tg_sum(ctx, tg_add(ctx, y, z)));
    for (int i = 0; i < 4; i++) {
        cr_assert_eq(at(y, i), 3 * at(x, i));
        cr_assert_eq(at(z, i), -2 * at(x, i));
        cr_assert_eq(grad_at(x, i), 1.0);
    }
}

/* A failing forward leaves nothing on the tape. */
static int failing_fwd(tg_op_call *c)
{
    tg_set_error(c->ctx, "user_fail: no");
    return -1;
}
static const tg_op user_fail = {"user_fail", failing_fwd, scale_bwd};

Test(apply, failing_forward_records_nothing)
{
    tg_tensor *x = rnd(ctx, TG_F64, (shp){1, {4}}, -1, 1);
    tg_set_requires_grad(x, 1);
    int64_t len = tg_tape_len(ctx);
    cr_assert_null(tg_apply(ctx, &user_fail, &x, 1, TG_F64, 1, (int64_t[]){4}, NULL, 0));
    cr_assert_eq(tg_tape_len(ctx), len);
    cr_assert_str_eq(tg_errmsg(ctx), "user_fail: no");
}
