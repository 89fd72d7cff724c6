/* SPDX-License-Identifier: MIT */
/* adaline.c: ADALINE, a linear neuron trained by gradient descent on the
 * squared error, finds the least-squares solution.
 *
 *   y_hat = x W + b              x [N,3], W [3,1], b [1]
 *   loss  = mean((y_hat - y)^2)  (tg_mse)
 *   W -= lr dL/dW, b -= lr dL/db (tg_backward, then tg_optim SGD)
 *
 * Widrow and Hoff's ADALINE differs from the perceptron in one place: the
 * error is measured on the linear output w.x + b, before any threshold, so
 * the loss is a smooth quadratic bowl and gradient descent rolls to its one
 * minimum. That minimum is the least-squares solution, which can also be
 * computed directly from the normal equations (X^T X) w = X^T y (with a
 * column of ones in X for the bias). This program does both and compares
 * them, and compares both with the weights the data were generated from.
 *
 * Data: N = 200 samples, 3 features ~ N(0,1), y = x w_true + b_true + noise,
 * noise ~ N(0, 0.1^2), all drawn from the context's seeded generator.
 *
 * Usage: adaline [seed]   (exit status 0 when the learned weights match
 *                          least squares within 1e-3)
 */
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>

#include "tapegrad.h"

#include "example_util.h"

#define N 200
#define F 3
#define P (F + 1) /* weights and the bias */

/* Solve A z = r (A [n,n], row-major, overwritten; r overwritten by z) by
 * Gaussian elimination with partial pivoting. Returns 0, -1 if singular. */
static int solve(int n, double *a, double *r) {
    for (int k = 0; k < n; k++) {
        int piv = k;
        for (int i = k + 1; i < n; i++)
            if (fabs(a[i * n + k]) > fabs(a[piv * n + k])) piv = i;
        if (fabs(a[piv * n + k]) < 1e-12) return -1;
        if (piv != k) {
            for (int j = 0; j < n; j++) {
                double t = a[k * n + j];
                a[k * n + j] = a[piv * n + j];
                a[piv * n + j] = t;
            }
            double t = r[k];
            r[k] = r[piv];
            r[piv] = t;
        }
        for (int i = k + 1; i < n; i++) {
            double f = a[i * n + k] / a[k * n + k];
            for (int j = k; j < n; j++) a[i * n + j] -= f * a[k * n + j];
            r[i] -= f * r[k];
        }
    }
    for (int k = n - 1; k >= 0; k--) {
        double s = r[k];
        for (int j = k + 1; j < n; j++) s -= a[k * n + j] * r[j];
        r[k] = s / a[k * n + k];
    }
    return 0;
}

/* Least squares with a bias column: z[0..F) weights, z[F] bias. */
static int least_squares(const double *x, const double *y, double z[P]) {
    double a[P * P] = {0};
    for (int i = 0; i < P; i++) z[i] = 0;
    for (int s = 0; s < N; s++) {
        double row[P];
        for (int j = 0; j < F; j++) row[j] = x[s * F + j];
        row[F] = 1; /* the bias column */
        for (int i = 0; i < P; i++) {
            for (int j = 0; j < P; j++) a[i * P + j] += row[i] * row[j]; /* X^T X */
            z[i] += row[i] * y[s];                                       /* X^T y */
        }
    }
    return solve(P, a, z);
}

int main(int argc, char **argv) {
    uint64_t seed = 1;
    if (parse_seed_arg(argc, argv, "adaline", &seed)) return 2;
    tg_ctx *ctx = tg_ctx_new(seed);
    if (!ctx) return 1;

    /* the data: y = x w_true + b_true + noise */
    const double w_true[F] = {2.0, -3.0, 0.5}, b_true = 1.0, noise_sd = 0.1;
    static double xv[N * F], yv[N];
    for (int s = 0; s < N; s++) {
        yv[s] = b_true;
        for (int j = 0; j < F; j++) {
            xv[s * F + j] = tg_rand_normal(ctx);
            yv[s] += w_true[j] * xv[s * F + j];
        }
        yv[s] += noise_sd * tg_rand_normal(ctx);
    }

    /* the neuron: W starts small and random, b at 0 */
    tg_tensor *w = tg_param(ctx, "adaline.weight", TG_F64, 2, (const int64_t[]){F, 1});
    tg_tensor *b = tg_param(ctx, "adaline.bias", TG_F64, 1, (const int64_t[]){1});
    tg_fill_uniform(ctx, w, -0.1, 0.1);
    tg_optim_opts o = tg_optim_defaults(TG_OPT_SGD);
    o.lr = 0.1;
    tg_optim *opt = tg_optim_new(ctx, &o, NULL, 0);
    const int epochs = 300;
    printf("ADALINE: y = x W + b, %d samples, %d features, noise sd %.1f\n", N, F, noise_sd);
    printf("full-batch gradient descent on the mean squared error, lr %.2f\n\n", o.lr);
    for (int epoch = 0; epoch <= epochs && tg_ok(ctx); epoch++) {
        tg_tensor *x = tg_from(ctx, TG_F64, 2, (const int64_t[]){N, F}, xv);
        tg_tensor *y = tg_from(ctx, TG_F64, 2, (const int64_t[]){N, 1}, yv);
        tg_tensor *loss = tg_mse(ctx, tg_add_bias(ctx, tg_matmul(ctx, x, w), b), y);
        if (epoch < 5 || epoch % 50 == 0) printf("epoch %3d  mse %.8f\n", epoch, tg_item(loss));
        if (epoch < epochs) {
            tg_zero_grad(ctx);
            tg_backward(ctx, loss);
            tg_optim_step(opt);
        }
        tg_reset(ctx);
    }
    if (!tg_ok(ctx)) {
        fprintf(stderr, "adaline: %s\n", tg_errmsg(ctx));
        tg_optim_free(opt);
        tg_ctx_free(ctx);
        return 1;
    }

    double z[P];
    if (least_squares(xv, yv, z) != 0) {
        fprintf(stderr, "adaline: the normal equations are singular\n");
        tg_optim_free(opt);
        tg_ctx_free(ctx);
        return 1;
    }
    const double *wl = tg_data(w), *bl = tg_data(b);
    double learned[P], truth[P];
    for (int j = 0; j < F; j++) learned[j] = wl[j], truth[j] = w_true[j];
    learned[F] = bl[0];
    truth[F] = b_true;

    double diff_ls = 0, diff_true = 0;
    printf("\n          gradient descent   least squares   true\n");
    for (int j = 0; j < P; j++) {
        char name[8];
        if (j < F) snprintf(name, sizeof name, "w%d", j + 1);
        else snprintf(name, sizeof name, "b");
        printf("  %-6s  %16.6f  %14.6f  %6.3f\n", name, learned[j], z[j], truth[j]);
        diff_ls = fmax(diff_ls, fabs(learned[j] - z[j]));
        diff_true = fmax(diff_true, fabs(learned[j] - truth[j]));
    }
    int ok = diff_ls < 1e-3;
    printf("\nmax |gradient descent - least squares| = %.2e (%s 1e-3)\n", diff_ls,
           ok ? "below" : "NOT below");
    printf("max |gradient descent - true weights|  = %.2e (the noise: least squares fits the\n"
           "sample, not the generator: expect a few times noise_sd / sqrt(N) = %.3f)\n",
           diff_true, noise_sd / sqrt((double)N));
    tg_optim_free(opt);
    tg_ctx_free(ctx);
    return ok ? 0 : 1;
}
