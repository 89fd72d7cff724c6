/* SPDX-License-Identifier: MIT */
/* xor.c: a 2-4-1 MLP learns XOR, which no single line can separate.
 *
 *   h = tanh(x W1^T + b1)      x [4,2], W1 [4,2], b1 [4]     (tg_mlp, layer fc1)
 *   z = h W2^T + b2            W2 [1,4], b2 [1]              (tg_mlp, layer fc2: logits)
 *   p = sigmoid(z)                                           (tg_sigmoid)
 *   loss = mean((p - y)^2)                                   (tg_mse)
 *
 * The forward pass is made only of ops; tg_backward derives every gradient
 * from the tape, and a tg_optim (plain SGD, full batch) moves every
 * parameter against its gradient.
 *
 * Usage: xor [seed]     (default seed 1; exit status 0 when the truth table
 *                        is 4/4 right)
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>

#include "tapegrad.h"

#include "example_util.h"

static int fail(tg_ctx *ctx, tg_optim *opt) {
    fprintf(stderr, "xor: %s\n", tg_errmsg(ctx));
    tg_optim_free(opt);
    tg_ctx_free(ctx);
    return 1;
}

int main(int argc, char **argv) {
    uint64_t seed = 1;
    if (parse_seed_arg(argc, argv, "xor", &seed)) return 2;
    tg_ctx *ctx = tg_ctx_new(seed);
    if (!ctx) return 1;

    /* 2-4-1, tanh between the layers; Xavier-uniform weights with tanh's
     * gain break the symmetry between the hidden units */
    tg_mlp mlp;
    tg_mlp_init(ctx, &mlp, "fc", 3, (const int64_t[]){2, 4, 1}, TG_ACT_TANH, TG_F32);
    tg_optim_opts o = tg_optim_defaults(TG_OPT_SGD);
    o.lr = 2.0; /* a tiny, full-batch problem takes a large step */
    tg_optim *opt = tg_optim_new(ctx, &o, NULL, 0);
    if (!tg_ok(ctx)) return fail(ctx, opt);

    const float xv[8] = {0, 0, 0, 1, 1, 0, 1, 1};
    const float yv[4] = {0, 1, 1, 0};
    const int epochs = 3000;
    float p[4] = {0};

    printf("XOR with a 2-4-1 MLP (tanh hidden, sigmoid output, MSE, SGD lr %.1f), seed %llu\n",
           o.lr, (unsigned long long)seed);
    for (int epoch = 0; epoch <= epochs; epoch++) {
        tg_tensor *x = tg_from(ctx, TG_F32, 2, (const int64_t[]){4, 2}, xv);
        tg_tensor *y = tg_from(ctx, TG_F32, 2, (const int64_t[]){4, 1}, yv);
        tg_tensor *out = tg_sigmoid(ctx, tg_mlp_forward(ctx, &mlp, x));
        tg_tensor *loss = tg_mse(ctx, out, y);
        if (!tg_ok(ctx)) return fail(ctx, opt);
        if (epoch % 250 == 0) printf("epoch %4d  loss %.6f\n", epoch, tg_item(loss));
        if (epoch == epochs) {
            tg_copy_out(out, TG_F32, p);
        } else {
            tg_zero_grad(ctx);
            tg_backward(ctx, loss);
            tg_optim_step(opt);
        }
        tg_reset(ctx);
        if (!tg_ok(ctx)) return fail(ctx, opt);
    }

    int right = 0;
    printf("\n x1 x2 | target | output\n");
    for (int i = 0; i < 4; i++) {
        int pred = p[i] >= 0.5f;
        right += pred == (int)yv[i];
        printf("  %d  %d |   %d    | %.3f -> %d\n", (int)xv[2 * i], (int)xv[2 * i + 1], (int)yv[i],
               p[i], pred);
    }
    printf("accuracy: %d/4\n", right);
    tg_optim_free(opt);
    tg_ctx_free(ctx);
    return right == 4 ? 0 : 1;
}
