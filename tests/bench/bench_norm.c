/* SPDX-License-Identifier: MIT */
/* bench_norm.c: tg_layer_norm forward + backward on a transformer's shape.
 *
 *   bench_norm [rows cols reps]   default 2048 128 2000
 *
 * x [rows,cols], weight and bias [cols]: f32 parameters, whose gradients
 * accumulate from step to step; one step is y = tg_layer_norm(x, w, b, 1e-5),
 * then backward from y seeded with a fixed dy (so nothing but the layer norm
 * runs), then tg_reset. One thread.
 * Prints the median over 7 batches of reps/7 steps, in microseconds of thread CPU time per step
 * (so other processes on a busy machine count less).
 * tests/bench/norm_torch.py times the same in PyTorch (F.layer_norm, then
 * y.backward(dy)); docs/ops.md quotes the ratio. Built by the bench preset. */
#include "bench_util.h"

#include <stdio.h>
#include <stdlib.h>

#include "internal.h"

int main(int argc, char **argv)
{
    int64_t rows = argc > 1 ? atoll(argv[1]) : 2048, cols = argc > 2 ? atoll(argv[2]) : 128;
    int reps = argc > 3 ? atoi(argv[3]) : 2000;
    tg_ctx *ctx = tg_ctx_new(1);
    tg_set_threads(ctx, 1);
    tg_tensor *w = tg_param(ctx, "w", TG_F32, 1, &cols), *b = tg_param(ctx, "b", TG_F32, 1, &cols);
    tg_fill_uniform(ctx, w, 0.5, 1.5);
    tg_fill_uniform(ctx, b, -1, 1);
    const int64_t shape[2] = {rows, cols};
    tg_tensor *x = tg_param(ctx, "x", TG_F32, 2, shape);
    tg_fill_uniform(ctx, x, -1, 1);
    float *dy = malloc((size_t)(rows * cols) * sizeof *dy);
    for (int64_t i = 0; i < rows * cols; i++) dy[i] = (float)(2.0 * tg_rand_uniform(ctx) - 1.0);
    double t[7];
    const int per = reps / 7 > 0 ? reps / 7 : 1;
    for (int k = -1; k < 7; k++) { /* k = -1: warm-up */
        double t0 = cpu_now();
        for (int r = 0; r < per; r++) {
            tg_tensor *y = tg_layer_norm(ctx, x, w, b, 1e-5);
            tgi_backward_from(ctx, y, dy, 0);
            tg_reset(ctx);
        }
        if (k >= 0) t[k] = (cpu_now() - t0) / per;
    }
    if (!tg_ok(ctx)) {
        fprintf(stderr, "%s\n", tg_errmsg(ctx));
        return 1;
    }
    sort_doubles(t, 7);
    printf("tapegrad layer_norm fwd+bwd [%lld,%lld] f32, 1 thread: %.1f us/step (median of 7)\n",
           (long long)rows, (long long)cols, t[3] * 1e6);
    free(dy);
    tg_ctx_free(ctx);
    return 0;
}
