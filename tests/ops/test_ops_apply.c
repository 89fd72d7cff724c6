/* tests/ops/test_ops_apply.c: every built-in op of more than one input, or
 * not elementwise, is a tg_op like a user's: tg_apply of the op taken from the
 * tape node of a direct call (with its attributes) gives the same bits, values
 * and gradients, as the direct call (assert_apply_matches in tg_test.h). The
 * one-input elementwise ops are checked row by row in test_ops_unary.c. */
#include <criterion/criterion.h>

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h" /* a direct call's tape node: its tg_op and attributes */
#include "tg_test.h"

static tg_ctx *ctx;

static void setup(void) { ctx = tg_ctx_new(8); }
static void teardown(void) { tg_ctx_free(ctx); }

TestSuite(apply, .init = setup, .fini = teardown);

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

/* An op applied to inputs of the given shapes, uniform in [lo, hi); an input
 * with `labels` set is i32 class indices in [0, 4). */
typedef struct {
    const char *name;
    tg_fn f;
    int n;
    shp in[3];
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
};
#define N_CASES (int)(sizeof CASES / sizeof CASES[0])

Test(apply, every_builtin_through_tg_apply)
{
    for (int k = 0; k < N_CASES; k++)
        for (int d = 0; d < 2; d++) {
            const apply_case *a = &CASES[k];
            tg_tensor *in[3];
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
