/* SPDX-License-Identifier: MIT */
/* test_anomaly.c: tg_detect_anomaly. The first op whose forward or backward
 * produces a NaN or an infinity records an error naming the op, its node and
 * the shapes; off by default; a clean graph runs as without it. */
#include <criterion/criterion.h>

#include <math.h>
#include <string.h>

#include "tapegrad.h"

static void assert_msg(tg_ctx *ctx, const char *want) {
    cr_assert(!tg_ok(ctx), "no error; expected \"%s\"", want);
    cr_assert(strstr(tg_errmsg(ctx), want), "message \"%s\" lacks \"%s\"", tg_errmsg(ctx), want);
}

Test(anomaly, off_by_default_a_nan_goes_through) {
    tg_ctx *ctx = tg_ctx_new(1);
    tg_tensor *x = tg_param(ctx, "x", TG_F64, 1, (int64_t[]){3});
    tg_fill(x, -1.0);
    tg_tensor *y = tg_sum(ctx, tg_log(ctx, x)); /* log(-1) = NaN */
    cr_assert_not_null(y);
    tg_backward(ctx, y);
    cr_assert(tg_ok(ctx), "%s", tg_errmsg(ctx));
    cr_assert(isnan(tg_item(y)));
    tg_ctx_free(ctx);
}

Test(anomaly, forward_nan_names_the_op_its_node_and_the_shapes) {
    tg_ctx *ctx = tg_ctx_new(1);
    cr_assert_eq(tg_detect_anomaly(ctx, 1), 0);
    tg_tensor *x = tg_param(ctx, "x", TG_F64, 2, (int64_t[]){2, 3});
    tg_fill(x, 2.0);
    ((double *)tg_data(x))[4] = -1;
    tg_tensor *a = tg_exp(ctx, x);  /* node 0: fine */
    cr_assert_not_null(a);
    tg_tensor *b = tg_log(ctx, x);  /* node 1: NaN at element 4, caught as it is made */
    cr_assert_null(b);
    assert_msg(ctx, "tg_detect_anomaly: forward of log (node 1) produced a NaN at element 4 of "
                    "its output [2,3] from inputs [2,3] f64");
    tg_ctx_free(ctx);
}

Test(anomaly, forward_anomaly_of_the_last_op_is_caught_before_backward) {
    tg_ctx *ctx = tg_ctx_new(1);
    tg_detect_anomaly(ctx, 1);
    tg_tensor *x = tg_param(ctx, "x", TG_F32, 1, (int64_t[]){1});
    tg_fill(x, 1.0);
    tg_tensor *s = tg_exp(ctx, tg_scale(ctx, x, 100.0)); /* the last op: e^100 in f32 */
    cr_assert_null(s);
    assert_msg(ctx, "forward of exp (node 1) produced +infinity at element 0 of its output [1]");
    tg_backward(ctx, s);
    cr_assert_null(tg_grad(x), "backward ran although the forward pass had an anomaly");
    tg_ctx_free(ctx);
}

Test(anomaly, backward_infinity_names_the_op_and_the_input) {
    tg_ctx *ctx = tg_ctx_new(1);
    tg_detect_anomaly(ctx, 1);
    tg_tensor *x = tg_param(ctx, "x", TG_F64, 2, (int64_t[]){2, 2});
    tg_fill(x, 1.0);
    ((double *)tg_data(x))[2] = 0.0;
    /* sqrt-like: pow(x, 0.5) is finite at 0, its slope 0.5 x^-0.5 is not */
    tg_tensor *y = tg_sum(ctx, tg_pow(ctx, x, 0.5));
    cr_assert(tg_ok(ctx), "%s", tg_errmsg(ctx));
    tg_backward(ctx, y);
    assert_msg(ctx, "tg_detect_anomaly: backward of pow (node 0, output [2,2]) produced "
                    "+infinity at element 2 of the gradient of input 0 [2,2]");
    tg_ctx_free(ctx);
}

static int bad_forward(tg_op_call *c) {
    double *o = tg_data(c->out);
    o[0] = 1;
    o[1] = NAN;
    return 0;
}

static void bad_backward(tg_op_call *c) { (void)c; }

Test(anomaly, a_custom_op_is_checked_at_once) {
    tg_ctx *ctx = tg_ctx_new(1);
    tg_detect_anomaly(ctx, 1);
    static const tg_op op = {"my_op", bad_forward, bad_backward};
    tg_tensor *x = tg_param(ctx, "x", TG_F64, 1, (int64_t[]){2});
    cr_assert_null(tg_apply(ctx, &op, &x, 1, TG_F64, 1, (int64_t[]){2}, NULL, 0));
    assert_msg(ctx, "forward of my_op (node 0) produced a NaN at element 1 of its output [2]");
    tg_ctx_free(ctx);
}

Test(anomaly, a_clean_step_is_unchanged_and_the_mode_can_be_switched_off) {
    double got[2][3];
    for (int on = 0; on < 2; on++) {
        tg_ctx *ctx = tg_ctx_new(3);
        tg_detect_anomaly(ctx, on);
        tg_tensor *x = tg_param(ctx, "x", TG_F64, 1, (int64_t[]){3});
        tg_fill_uniform(ctx, x, 0.5, 1.5);
        tg_backward(ctx, tg_sum(ctx, tg_mul(ctx, tg_log(ctx, x), tg_sigmoid(ctx, x))));
        cr_assert(tg_ok(ctx), "%s", tg_errmsg(ctx));
        memcpy(got[on], tg_grad(x), sizeof got[on]);
        cr_assert_eq(tg_detect_anomaly(ctx, 0), on);
        tg_ctx_free(ctx);
    }
    cr_assert(memcmp(got[0], got[1], sizeof got[0]) == 0);
}

/* ---- the second-round ops. Those that run their forward after recording
 * are checked when the next op is recorded or backward starts, so each test
 * lets the graph go on to a loss and backward and then reads the error. ---- */

static tg_tensor *param_from(tg_ctx *ctx, const char *name, int ndim, const int64_t *shape,
                             const double *v) {
    tg_tensor *t = tg_param(ctx, name, TG_F64, ndim, shape);
    cr_assert_not_null(t);
    memcpy(tg_data(t), v, (size_t)tg_numel(t) * sizeof(double));
    return t;
}

static void loss_and_backward(tg_ctx *ctx, tg_tensor *y) {
    tg_tensor *l = y ? tg_sum(ctx, y) : NULL;
    if (l) tg_backward(ctx, l);
}

Test(anomaly, conv2d_forward_nan_names_conv2d) {
    tg_ctx *ctx = tg_ctx_new(1);
    tg_detect_anomaly(ctx, 1);
    /* x has an infinity (a leaf: not checked), w a zero tap: inf * 0 = NaN */
    double xv[9] = {1, 2, 3, 4, 5, 6, 7, 8, 9};
    xv[4] = INFINITY;
    tg_tensor *x = param_from(ctx, "x", 4, (int64_t[]){1, 1, 3, 3}, xv);
    tg_tensor *w = param_from(ctx, "w", 4, (int64_t[]){2, 1, 2, 2},
                              (double[]){0, 0, 0, 0, 1, 1, 1, 1});
    tg_tensor *y = tg_conv2d(ctx, x, w, NULL, 1, 0);
    loss_and_backward(ctx, y);
    assert_msg(ctx, "tg_detect_anomaly: forward of conv2d (node 0) produced a NaN at element 0 "
                    "of its output [1,2,2,2] from inputs [1,1,3,3] f64, [2,1,2,2] f64");
    tg_ctx_free(ctx);
}

Test(anomaly, layer_norm_forward_nan_names_layer_norm) {
    tg_ctx *ctx = tg_ctx_new(1);
    tg_detect_anomaly(ctx, 1);
    /* a constant row with eps 0: variance 0, (x - mean) / sqrt(0) = 0 / 0 */
    tg_tensor *x = param_from(ctx, "x", 2, (int64_t[]){2, 3}, (double[]){1, 2, 4, 5, 5, 5});
    tg_tensor *y = tg_layer_norm(ctx, x, NULL, NULL, 0.0);
    loss_and_backward(ctx, y);
    assert_msg(ctx, "tg_detect_anomaly: forward of layer_norm (node 0) produced a NaN at element 3 "
                    "of its output [2,3] from inputs [2,3] f64");
    tg_ctx_free(ctx);
}

Test(anomaly, attention_forward_nan_names_attention) {
    tg_ctx *ctx = tg_ctx_new(1);
    tg_detect_anomaly(ctx, 1);
    /* finite q and k whose scores overflow to +inf in both keys: the softmax
     * subtracts its maximum, inf - inf = NaN */
    tg_tensor *q = param_from(ctx, "q", 4, (int64_t[]){1, 1, 1, 1}, (double[]){1e200});
    tg_tensor *k = param_from(ctx, "k", 4, (int64_t[]){1, 1, 2, 1}, (double[]){1e200, 2e200});
    tg_tensor *v = param_from(ctx, "v", 4, (int64_t[]){1, 1, 2, 1}, (double[]){1, 2});
    tg_tensor *y = tg_attention(ctx, q, k, v, 0);
    loss_and_backward(ctx, y);
    assert_msg(ctx, "tg_detect_anomaly: forward of attention (node 0) produced a NaN at element 0 "
                    "of its output [1,1,1,1] from inputs [1,1,1,1] f64, [1,1,2,1] f64, "
                    "[1,1,2,1] f64");
    tg_ctx_free(ctx);
}

/* x, h, c [1,1], w_ih, w_hh [4,1] for an LSTM cell of one unit */
static tg_tensor *lstm_one(tg_ctx *ctx, double xv, tg_tensor **c_new) {
    tg_tensor *x = param_from(ctx, "x", 2, (int64_t[]){1, 1}, (double[]){xv});
    tg_tensor *h = param_from(ctx, "h", 2, (int64_t[]){1, 1}, (double[]){0.5});
    tg_tensor *c = param_from(ctx, "c", 2, (int64_t[]){1, 1}, (double[]){0.25});
    tg_tensor *wi = param_from(ctx, "w_ih", 2, (int64_t[]){4, 1},
                               (double[]){1e-300, 1e-300, 1e-300, 1e-300});
    tg_tensor *wh = param_from(ctx, "w_hh", 2, (int64_t[]){4, 1}, (double[]){0.1, 0.2, 0.3, 0.4});
    return tg_lstm_cell(ctx, x, h, c, wi, wh, NULL, NULL, c_new);
}

Test(anomaly, lstm_backward_infinity_names_lstm_cell) {
    tg_ctx *ctx = tg_ctx_new(1);
    tg_detect_anomaly(ctx, 1);
    /* a finite forward (x 1e300 against w_ih 1e-300: gates of order 1), the
     * output's slope 1e300; w_ih's gradient dgates x overflows */
    tg_tensor *c_new;
    tg_tensor *h = lstm_one(ctx, 1e300, &c_new);
    cr_assert_not_null(h, "%s", tg_errmsg(ctx));
    tg_tensor *l = tg_sum(ctx, tg_scale(ctx, h, 1e300));
    cr_assert(tg_ok(ctx), "%s", tg_errmsg(ctx));
    tg_backward(ctx, l);
    assert_msg(ctx, "tg_detect_anomaly: backward of lstm_cell (node 0, output [1,1]) produced ");
    assert_msg(ctx, "infinity at element 0 of the gradient of input 3 [4,1]");
    tg_ctx_free(ctx);
}

Test(anomaly, lstm_cell_outputs_are_checked_only_after_they_are_computed) {
    /* the arena holds NaNs from an earlier step: the cell's outputs, made
     * from that memory, must not be checked before the forward fills them */
    tg_ctx *ctx = tg_ctx_new(1);
    tg_detect_anomaly(ctx, 1);
    tg_tensor *junk = tg_new(ctx, TG_F64, 1, (int64_t[]){4096});
    cr_assert_not_null(junk);
    tg_fill(junk, NAN);
    tg_reset(ctx);
    tg_tensor *c_new;
    tg_tensor *h = lstm_one(ctx, 0.5, &c_new);
    cr_assert_not_null(h, "%s", tg_errmsg(ctx));
    tg_backward(ctx, tg_sum(ctx, tg_add(ctx, h, c_new)));
    cr_assert(tg_ok(ctx), "%s", tg_errmsg(ctx));
    tg_ctx_free(ctx);
}
