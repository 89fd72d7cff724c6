/* SPDX-License-Identifier: MIT */
/* overfit.c: a network much larger than its data memorises the noise.
 *
 * 40 points of y = sin(3x) + noise (x uniform in [-1,1], noise sd 0.3) are
 * split 80/20 (tg_dataset_split) into 32 training and 8 test points. An MLP
 * 1-256-256-1 with tanh (about 66,000 parameters for 32 points) is trained
 * full-batch with Adam on the mean squared error. The training loss falls
 * below the noise level (0.3^2 = 0.09: no function can do better than that
 * on fresh points) because the network bends through the training points,
 * noise and all; the test loss stops falling and grows. The gap between the
 * two is overfitting. Since 8 test points are a noisy measure, the loss on
 * 1000 fresh points from the same distribution is printed too.
 *
 * The first layer's weights and biases are drawn from U(-6, 6) instead of
 * the default Xavier init: a unit tanh(w x + b) then changes fastest at
 * x = -b/w, spread over the input range, so the network can bend sharply
 * from the start. (With Xavier, w x stays within +-0.26 for one input and
 * 256 outputs, the network starts almost linear and needs many more steps to
 * memorise.)
 *
 * A second run with weight decay (Adam's weight_decay, an L2 penalty added
 * to the gradient) pulls the weights towards 0 and the function towards a
 * smooth one: the training loss stays near the noise level and the gap
 * narrows.
 *
 * Usage: overfit [--quick] [--epochs N] [--seed S]
 *   --quick   a 1-64-64-1 network and no weight-decay run (the test suite)
 * Exit status 0 when the final training loss is well below the test loss
 * (train < test / 2) for the run without weight decay.
 */
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tapegrad.h"

#include "example_util.h"

#define N_POINTS 40
#define N_FRESH 1000
#define NOISE_SD 0.3
#define FIRST_LAYER_INIT 6.0
#define WEIGHT_DECAY 1e-2

typedef struct {
    double train, test, fresh;
} losses;

/* fill ds with points (x, sin(3x) + noise), x ~ U(-1, 1) */
static void sample(tg_ctx *ctx, tg_dataset *ds) {
    for (int64_t i = 0; i < ds->n; i++) {
        double x = 2 * tg_rand_uniform(ctx) - 1;
        ds->x[i] = (float)x;
        ds->targets[i] = (float)(sin(3 * x) + NOISE_SD * tg_rand_normal(ctx));
    }
}

/* mean squared error of the model on a whole dataset, without recording */
static double eval_mse(tg_ctx *ctx, const tg_mlp *m, const tg_dataset *ds) {
    int prev = tg_no_grad(ctx, 1);
    tg_tensor *x = NULL, *y = NULL;
    double l = NAN;
    int64_t idx[N_FRESH];
    for (int64_t i = 0; i < ds->n && i < N_FRESH; i++) idx[i] = i;
    if (tg_dataset_batch(ctx, ds, idx, ds->n < N_FRESH ? ds->n : N_FRESH, TG_F32, &x, &y) == 0)
        l = tg_item(tg_mse(ctx, tg_mlp_forward(ctx, m, x), y));
    tg_reset(ctx);
    tg_no_grad(ctx, prev);
    return l;
}

/* Train a fresh MLP (in ctx, named by prefix) on train; print both losses
 * every `every` epochs. Returns the final losses (NaN on error). */
static losses run(tg_ctx *ctx, const char *prefix, int64_t width, int epochs, double wd,
                  const tg_dataset *train, const tg_dataset *test, const tg_dataset *fresh) {
    losses r = {NAN, NAN, NAN};
    tg_mlp m;
    if (tg_mlp_init(ctx, &m, prefix, 4, (const int64_t[]){1, width, width, 1}, TG_ACT_TANH,
                    TG_F32))
        return r;
    /* spread the first layer's tanh transitions over the inputs (see the top) */
    tg_fill_uniform(ctx, m.layer[0].weight, -FIRST_LAYER_INIT, FIRST_LAYER_INIT);
    tg_fill_uniform(ctx, m.layer[0].bias, -FIRST_LAYER_INIT, FIRST_LAYER_INIT);
    tg_tensor *params[2 * 3];
    int np = tg_mlp_params(&m, params, 6);
    tg_optim_opts o = tg_optim_defaults(TG_OPT_ADAM);
    o.lr = 3e-3;
    o.weight_decay = wd;
    tg_optim *opt = tg_optim_new(ctx, &o, params, np);
    if (!opt) return r;
    int64_t idx[N_POINTS];
    for (int64_t i = 0; i < train->n; i++) idx[i] = i;
    int every = epochs / 10 > 0 ? epochs / 10 : 1;
    printf("\n%s: MLP 1-%lld-%lld-1 tanh, Adam lr %.0e, weight decay %g, %d epochs\n", prefix,
           (long long)width, (long long)width, o.lr, wd, epochs);
    printf("  epoch   train mse   test mse   fresh mse\n");
    for (int epoch = 0; epoch <= epochs && tg_ok(ctx); epoch++) {
        if (epoch % every == 0 || epoch == epochs) {
            r.train = eval_mse(ctx, &m, train);
            r.test = eval_mse(ctx, &m, test);
            r.fresh = eval_mse(ctx, &m, fresh);
            printf("  %5d   %9.5f   %8.5f   %9.5f\n", epoch, r.train, r.test, r.fresh);
        }
        if (epoch == epochs) break;
        tg_tensor *x, *y;
        if (tg_dataset_batch(ctx, train, idx, train->n, TG_F32, &x, &y)) break;
        tg_tensor *loss = tg_mse(ctx, tg_mlp_forward(ctx, &m, x), y);
        tg_zero_grad(ctx);
        tg_backward(ctx, loss);
        tg_optim_step(opt);
        tg_reset(ctx);
    }
    tg_optim_free(opt);
    if (!tg_ok(ctx)) r.train = r.test = r.fresh = NAN;
    return r;
}

int main(int argc, char **argv) {
    int quick = 0;
    long epochs = -1, seed = 1;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--quick")) quick = 1;
        else if (!strcmp(argv[i], "--epochs") && i + 1 < argc &&
                 parse_long(argv[i + 1], 1, 1000000, &epochs) == 0)
            i++;
        else if (!strcmp(argv[i], "--seed") && i + 1 < argc &&
                 parse_long(argv[i + 1], 0, 0x7fffffff, &seed) == 0)
            i++;
        else {
            fprintf(stderr, "usage: overfit [--quick] [--epochs N] [--seed S]\n");
            return 2;
        }
    }
    int64_t width = quick ? 64 : 256;
    if (epochs < 0) epochs = 1000;

    tg_ctx *ctx = tg_ctx_new((uint64_t)seed);
    if (!ctx) return 1;
    /* batches of 32 rows: too small for threads to pay for themselves */
    tg_set_threads(ctx, 1);
    /* the data: 40 points of sin(3x) + noise, as a dataset with one target */
    tg_dataset *all = tg_dataset_new(ctx, N_POINTS, 1, 1);
    tg_dataset *fresh = tg_dataset_new(ctx, N_FRESH, 1, 1);
    tg_dataset *train = NULL, *test = NULL;
    if (all && fresh) {
        sample(ctx, all);
        tg_dataset_split(ctx, all, 0.2, &train, &test);
        sample(ctx, fresh);
    }
    losses plain = {NAN, NAN, NAN}, decayed = {NAN, NAN, NAN};
    if (tg_ok(ctx)) {
        printf("%d points of sin(3x) + N(0, %.1f^2): %lld to train on, %lld to test on\n",
               N_POINTS, NOISE_SD, (long long)train->n, (long long)test->n);
        printf("the noise alone costs %.3f of mean squared error on fresh points\n",
               NOISE_SD * NOISE_SD);
        plain = run(ctx, "big", width, (int)epochs, 0.0, train, test, fresh);
        if (!quick && tg_ok(ctx))
            decayed = run(ctx, "big_wd", width, (int)epochs, WEIGHT_DECAY, train, test, fresh);
    }
    int rc = 1;
    if (!tg_ok(ctx)) {
        fprintf(stderr, "overfit: %s\n", tg_errmsg(ctx));
    } else {
        printf("\nwithout weight decay: train mse %.5f, test mse %.5f (test / train = %.1f),"
               " fresh mse %.5f\n",
               plain.train, plain.test, plain.test / plain.train, plain.fresh);
        if (!quick)
            printf("with weight decay:    train mse %.5f, test mse %.5f (test / train = %.1f),"
                   " fresh mse %.5f\n",
                   decayed.train, decayed.test, decayed.test / decayed.train, decayed.fresh);
        rc = plain.train < plain.test / 2 ? 0 : 1;
        printf("%s\n", rc == 0 ? "the training loss is well below the test loss: the network "
                                 "memorised the training noise"
                               : "UNEXPECTED: no clear gap between training and test loss");
    }
    tg_dataset_free(all);
    tg_dataset_free(fresh);
    tg_dataset_free(train);
    tg_dataset_free(test);
    tg_ctx_free(ctx);
    return rc;
}
