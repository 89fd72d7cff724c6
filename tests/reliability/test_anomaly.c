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
