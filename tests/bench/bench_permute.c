/* SPDX-License-Identifier: MIT */
/* bench_permute.c: tg_permute on a [32,64,4,32] f32 tensor (a transformer's
 * [B,T,H,D] activations), one thread, against tests/bench/torch_permute.py
 * (x.permute(...).contiguous() in PyTorch) run on the same machine.
 *
 *   build/bench/bench/bench_permute [reps]
 *
 * Prints, per permutation, the best and the median time of one call in
 * microseconds over reps timed batches of 20 calls (forward only, no tape,
 * tg_reset after each call so the output reuses its memory), and the time
 * of a backward pass through sum(permute(x)) (dx += dy permuted back, plus
 * the sum's fill of dy). */
#include "bench_util.h"

#include <stdio.h>
#include <stdlib.h>

#include "tapegrad.h"

#define BATCH 20

int main(int argc, char **argv)
{
    int reps = argc > 1 ? atoi(argv[1]) : 50;
    if (reps < 1 || reps > 10000) reps = 50;
    static const int perms[][4] = {{0, 2, 1, 3}, {0, 2, 3, 1}, {0, 1, 3, 2}, {3, 2, 1, 0}};
    tg_ctx *ctx = tg_ctx_new(1);
    tg_set_threads(ctx, 1);
    int64_t shape[4] = {32, 64, 4, 32};
    tg_tensor *x = tg_param(ctx, "x", TG_F32, 4, shape);
    tg_fill_uniform(ctx, x, -1, 1);
    double *t = malloc(sizeof(double) * (size_t)reps), *tb = malloc(sizeof(double) * (size_t)reps);
    printf("{\"shape\": [32,64,4,32], \"dtype\": \"f32\", \"threads\": 1, \"results\": [\n");
    for (size_t p = 0; p < sizeof perms / sizeof perms[0]; p++) {
        for (int r = 0; r < reps; r++) {
            tg_no_grad(ctx, 1);
            double t0 = wall_now();
            for (int i = 0; i < BATCH; i++) {
                tg_permute(ctx, x, perms[p]);
                tg_reset(ctx); /* the output's memory is reused, as PyTorch's allocator does */
            }
            t[r] = (wall_now() - t0) / BATCH * 1e6;
            tg_no_grad(ctx, 0);
            tg_tensor *loss = tg_sum(ctx, tg_permute(ctx, x, perms[p]));
            tg_backward(ctx, loss); /* warm: grads allocated */
            double t1 = wall_now();
            for (int i = 0; i < BATCH; i++) tg_backward(ctx, loss);
            /* includes the sum's backward, measured below */
            tb[r] = (wall_now() - t1) / BATCH * 1e6;
            tg_reset(ctx);
        }
        sort_doubles(t, (size_t)reps);
        sort_doubles(tb, (size_t)reps);
        printf(
            "  {\"perm\": [%d,%d,%d,%d], \"forward_us_best\": %.1f, \"forward_us_median\": %.1f, "
            "\"backward_us_best\": %.1f, \"backward_us_median\": %.1f}%s\n",
            perms[p][0], perms[p][1], perms[p][2], perms[p][3], t[0], t[reps / 2], tb[0],
            tb[reps / 2], p + 1 < sizeof perms / sizeof perms[0] ? "," : "");
    }
    printf("]}\n");
    if (!tg_ok(ctx)) fprintf(stderr, "%s\n", tg_errmsg(ctx));
    free(t);
    free(tb);
    tg_ctx_free(ctx);
    return 0;
}
