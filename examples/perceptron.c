/* SPDX-License-Identifier: MIT */
/* perceptron.c: Rosenblatt's perceptron learns AND and OR, and cannot learn XOR.
 *
 *   y_hat = step(w . x + b)          step(z) = 1 if z >= 0 else 0  (tg_step)
 *   w += eta (y - y_hat) x           the perceptron rule, one sample at a time
 *   b += eta (y - y_hat)
 *
 * There is no loss and no backpropagation here: the rule is written out,
 * and tg_step (whose gradient is 0 everywhere) only makes the prediction.
 * The perceptron convergence theorem says the rule reaches zero errors in a
 * finite number of updates whenever a line separates the two classes. AND
 * and OR are linearly separable; XOR is not (no line puts (0,1), (1,0) on
 * one side and (0,0), (1,1) on the other), so on XOR the weights cycle for
 * ever and never get all 4 points right.
 *
 * Usage: perceptron      (exit status 0 when AND and OR converge and XOR
 *                         does not, within 100 epochs)
 */
#include <stdio.h>
#include <string.h>

#include "tapegrad.h"

#define MAX_EPOCHS 100

static const float X[8] = {0, 0, 0, 1, 1, 0, 1, 1}; /* the 4 inputs, [4,2] */

/* y_hat = step(x w + b) for the 4 inputs at once: x [4,2], w [2,1], b [1].
 * Writes the predictions into pred[4]; returns the number that equal y. */
static int predict_all(tg_ctx *ctx, const float w[2], float b, const float y[4], float pred[4]) {
    tg_tensor *x = tg_from(ctx, TG_F32, 2, (const int64_t[]){4, 2}, X);
    tg_tensor *wt = tg_from(ctx, TG_F32, 2, (const int64_t[]){2, 1}, w);
    tg_tensor *bt = tg_from(ctx, TG_F32, 1, (const int64_t[]){1}, &b);
    tg_tensor *yh = tg_step(ctx, tg_add_bias(ctx, tg_matmul(ctx, x, wt), bt));
    int right = 0;
    if (tg_copy_out(yh, TG_F32, pred) == 0)
        for (int i = 0; i < 4; i++) right += pred[i] == y[i];
    tg_reset(ctx);
    return right;
}

/* Train on one truth table. Returns the epoch (1-based) after which all four
 * points were right, or 0 if that never happened within MAX_EPOCHS; -1 on
 * a library error. */
static int train(tg_ctx *ctx, const char *name, const float y[4], float w[2], float *b) {
    const float eta = 0.25f; /* a power of 2: the sums below are exact */
    float pred[4];
    w[0] = w[1] = 0;
    *b = 0;
    int best = 0;
    printf("\n%s (targets %g %g %g %g), eta %.2f, weights start at 0\n", name, y[0], y[1], y[2],
           y[3], eta);
    for (int epoch = 1; epoch <= MAX_EPOCHS; epoch++) {
        int updates = 0;
        for (int i = 0; i < 4; i++) {
            /* one sample: y_hat = step(w . x_i + b) through the tg_step op */
            tg_tensor *z = tg_scalar(ctx, TG_F32, w[0] * X[2 * i] + w[1] * X[2 * i + 1] + *b);
            double yh = tg_item(tg_step(ctx, z));
            tg_reset(ctx);
            float err = y[i] - (float)yh; /* -1, 0 or +1 */
            if (err != 0) {
                w[0] += eta * err * X[2 * i];
                w[1] += eta * err * X[2 * i + 1];
                *b += eta * err;
                updates++;
            }
        }
        int right = predict_all(ctx, w, *b, y, pred);
        if (!tg_ok(ctx)) return -1;
        if (right > best) best = right;
        if (epoch <= 10 || epoch % 20 == 0 || right == 4)
            printf("  epoch %3d  updates %d  right %d/4  w = (%+.2f, %+.2f)  b = %+.2f\n", epoch,
                   updates, right, w[0], w[1], *b);
        if (right == 4) {
            printf("  converged after %d epoch%s: w = (%.2f, %.2f), b = %.2f\n", epoch,
                   epoch == 1 ? "" : "s", w[0], w[1], *b);
            printf("  the line %.2f x1 %+.2f x2 %+.2f = 0 separates the classes"
                   " (step(0) = 1: on the line counts as 1)\n", w[0], w[1], *b);
            return epoch;
        }
    }
    printf("  no convergence in %d epochs: at best %d/4 right\n", MAX_EPOCHS, best);
    return 0;
}

int main(void) {
    tg_ctx *ctx = tg_ctx_new(1);
    if (!ctx) return 1;
    const float y_and[4] = {0, 0, 0, 1}, y_or[4] = {0, 1, 1, 1}, y_xor[4] = {0, 1, 1, 0};
    float w[2], b;
    printf("The perceptron rule: w += eta (y - y_hat) x, y_hat = step(w.x + b)\n");
    int e_and = train(ctx, "AND", y_and, w, &b);
    int e_or = e_and < 0 ? -1 : train(ctx, "OR", y_or, w, &b);
    int e_xor = e_or < 0 ? -1 : train(ctx, "XOR", y_xor, w, &b);
    if (e_and < 0 || e_or < 0 || e_xor < 0) {
        fprintf(stderr, "perceptron: %s\n", tg_errmsg(ctx));
        tg_ctx_free(ctx);
        return 1;
    }
    if (e_xor == 0)
        printf("\nXOR is not linearly separable: (0,1) and (1,0) must be on one side of a\n"
               "line and (0,0) and (1,1) on the other, which no line does. A single\n"
               "perceptron cannot represent it; a hidden layer can (see xor).\n");
    int ok = e_and > 0 && e_or > 0 && e_xor == 0;
    printf("\nAND: %s, OR: %s, XOR: %s -> %s\n", e_and ? "converged" : "did not converge",
           e_or ? "converged" : "did not converge", e_xor ? "converged" : "did not converge",
           ok ? "as the theory says" : "UNEXPECTED");
    tg_ctx_free(ctx);
    return ok ? 0 : 1;
}
