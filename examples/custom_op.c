/* SPDX-License-Identifier: MIT */
/* custom_op.c: define an op the library does not have, exactly as the built-in
 * ones are defined, and check its gradient against finite differences.
 *
 *   softplus(x) = log(1 + exp(beta x)) / beta          (a smooth ReLU)
 *   d softplus / dx = sigmoid(beta x)
 *
 * An op is a tg_op {name, forward, backward}; tg_apply makes its output, runs
 * forward and records the call on the tape, so tg_backward calls our backward
 * like any other. The attribute (beta) is copied by tg_apply and handed back
 * to both functions in call->attr.
 */
#include <math.h>
#include <stdio.h>

#include "tapegrad.h"

/* softplus without overflow: for large beta x, log(1 + e^z) = z + log1p(e^-z) */
static double softplus1(double z) { return z > 0 ? z + log1p(exp(-z)) : log1p(exp(z)); }
static double sigmoid1(double z) {
    return z >= 0 ? 1 / (1 + exp(-z)) : exp(z) / (1 + exp(z));
}

static int softplus_forward(tg_op_call *c) {
    double beta = *(const double *)c->attr;
    int64_t n = tg_numel(c->out);
    if (tg_dtype_of(c->out) == TG_F32) {
        const float *x = tg_data(c->in[0]);
        float *y = tg_data(c->out);
        for (int64_t i = 0; i < n; i++) y[i] = (float)(softplus1(beta * x[i]) / beta);
    } else {
        const double *x = tg_data(c->in[0]);
        double *y = tg_data(c->out);
        for (int64_t i = 0; i < n; i++) y[i] = softplus1(beta * x[i]) / beta;
    }
    return 0;
}

/* d softplus(x)/dx = sigmoid(beta x); always ADD into the input's gradient */
static void softplus_backward(tg_op_call *c) {
    if (!tg_requires_grad(c->in[0])) return;
    double beta = *(const double *)c->attr;
    int64_t n = tg_numel(c->out);
    if (tg_dtype_of(c->out) == TG_F32) {
        const float *x = tg_data(c->in[0]), *dy = tg_grad(c->out);
        float *dx = tg_grad_acc(c->in[0]);
        for (int64_t i = 0; i < n; i++) dx[i] += dy[i] * (float)sigmoid1(beta * x[i]);
    } else {
        const double *x = tg_data(c->in[0]), *dy = tg_grad(c->out);
        double *dx = tg_grad_acc(c->in[0]);
        for (int64_t i = 0; i < n; i++) dx[i] += dy[i] * sigmoid1(beta * x[i]);
    }
}

static const tg_op softplus_op = {"softplus", softplus_forward, softplus_backward};

/* The public function: check arguments, then apply. */
static tg_tensor *softplus(tg_ctx *ctx, tg_tensor *x, double beta) {
    if (!tg_ok(ctx)) return NULL;
    if (!x) {
        tg_set_error(ctx, "softplus: argument x is NULL");
        return NULL;
    }
    if (tg_dtype_of(x) == TG_I32 || !(beta > 0)) {
        tg_set_error(ctx, "softplus: needs a float tensor and beta > 0 (beta = %g)", beta);
        return NULL;
    }
    return tg_apply(ctx, &softplus_op, &x, 1, tg_dtype_of(x), tg_ndim(x), tg_shape(x), &beta,
                    sizeof beta);
}

static tg_tensor *check_fn(tg_ctx *ctx, tg_tensor *const *in, void *user) {
    return softplus(ctx, in[0], *(double *)user);
}

int main(void) {
    tg_ctx *ctx = tg_ctx_new(1);
    if (!ctx) return 1;
    int64_t shape[2] = {3, 4};
    tg_tensor *x = tg_new(ctx, TG_F64, 2, shape);
    tg_fill_uniform(ctx, x, -3, 3);

    int failures = 0;
    const double betas[3] = {0.5, 1.0, 4.0};
    for (int i = 0; i < 3; i++) {
        double beta = betas[i];
        /* the full Jacobian of softplus against central differences */
        int ok = tg_gradcheck(ctx, check_fn, &beta, &x, 1, NULL);
        printf("gradcheck softplus(beta=%.1f) on [3,4]: %s\n", beta, ok ? "pass" : tg_errmsg(ctx));
        failures += !ok;
        tg_clear_error(ctx);
    }

    /* and it composes with built-in ops: d/dx sum(softplus(x) * 2) = 2 sigmoid(x) */
    tg_set_requires_grad(x, 1);
    tg_tensor *loss = tg_sum(ctx, tg_scale(ctx, softplus(ctx, x, 1.0), 2.0));
    tg_backward(ctx, loss);
    const double *xd = tg_data(x), *g = tg_grad(x);
    double worst = 0;
    for (int i = 0; i < 12; i++) worst = fmax(worst, fabs(g[i] - 2 * sigmoid1(xd[i])));
    printf("backward through a chain: max error %.2e\n", worst);
    failures += !(worst < 1e-12) || !tg_ok(ctx);

    /* large inputs stay finite */
    tg_tensor *big = tg_from(ctx, TG_F32, 1, (int64_t[]){2}, (float[]){1000.0f, -1000.0f});
    const float *s = tg_data(softplus(ctx, big, 1.0));
    printf("softplus([1000, -1000]) = [%g, %g]\n", s[0], s[1]);
    failures += !(s[0] == 1000.0f && s[1] == 0.0f);

    tg_ctx_free(ctx);
    printf("%s\n", failures ? "FAILED" : "custom op: all checks pass");
    return failures ? 1 : 0;
}
