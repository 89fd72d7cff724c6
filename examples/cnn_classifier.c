/* SPDX-License-Identifier: MIT */
/* cnn_classifier.c: a small convolutional network on Fashion-MNIST.
 *
 *   x [N,1,28,28]
 *   conv1  1->16, 5x5, padding 2   -> [N,16,28,28], relu, max pool 2 -> [N,16,14,14]
 *   conv2 16->32, 5x5, padding 2   -> [N,32,14,14], relu, max pool 2 -> [N,32,7,7]
 *   flatten -> [N,1568], linear 1568->10 -> logits
 *   loss = mean cross-entropy; Adam lr 1e-3, batches of 64
 *
 * The convolutions are tg_conv layers (nn.Conv2d's names, layouts and
 * initialisation), each with its relu and max pool run as one node
 * (tg_conv_relu_pool_forward); the linear layer is initialised as nn.Linear (weight and
 * bias from U(-1/sqrt(1568), 1/sqrt(1568))). tests/bench/torch_cnn.py is the
 * same network and training in PyTorch, for timing against.
 *
 * Data: Fashion-MNIST from --data (default /usr/share/datasets/fashion-mnist,
 * Debian package dataset-fashion-mnist): 60,000 training and 10,000 test
 * images scaled to [0,1], then normalised with the mean and standard deviation
 * of the training pixels (torchvision's transforms.Normalize, as PyTorch's
 * recipes do; 0.286 and 0.353 on the full training set). With --synthetic N: N training and N/4 test images
 * of 28x28 made up here (class k: a bright 8x8 square at one of ten places,
 * with noise), so the program can be tried without the data set.
 *
 * Usage: cnn_classifier [--data DIR] [--epochs N] [--batch B] [--seed S]
 *                       [--threads T] [--limit N] [--test-limit N]
 *                       [--synthetic N] [--min-accuracy X] [--json]
 *   --limit N        train on the first N training images only
 *   --test-limit N   evaluate on the first N test images only
 *   --min-accuracy X exit status 1 unless the final test accuracy is >= X
 *   --json           last line on stdout: a JSON object with test_accuracy,
 *                    test_loss, train_loss, seconds_per_epoch (training only,
 *                    evaluation excluded; cpu_seconds_per_epoch: the same in
 *                    CPU time), samples_per_second and
 *                    warm_step_arena_grows (arena growths after the first step:
 *                    0 means a warm training step allocates nothing)
 * Exit status: 0 ok; 1 an error, the accuracy below --min-accuracy, or an arena
 * growth in a training step after the first (a warm step must allocate
 * nothing); 2 bad arguments.
 */
#define _POSIX_C_SOURCE 200809L /* clock_gettime */
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "tapegrad.h"

#include "example_util.h"

#define PROG "cnn_classifier"
#define FASHION_DIR "/usr/share/datasets/fashion-mnist"
#define SIDE 28
#define CLASSES 10
#define EVAL_BATCH 250

typedef struct {
    const char *data;
    long epochs, batch, seed, threads, limit, test_limit, synthetic;
    double min_accuracy;
    int json;
} options;

typedef struct {
    tg_conv conv1, conv2;
    tg_dense fc;
} cnn;

static int usage(const char *msg, const char *arg)
{
    fprintf(stderr, PROG ": %s%s%s\n", msg, arg ? " " : "", arg ? arg : "");
    fputs("usage: " PROG " [--data DIR] [--epochs N] [--batch B] [--seed S] [--threads T]\n"
          "       [--limit N] [--test-limit N] [--synthetic N] [--min-accuracy X] [--json]\n",
          stderr);
    return 2;
}

/* argv into o: 0 ok, 2 after a message */
static int parse_options(int argc, char **argv, options *o)
{
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "--json")) {
            o->json = 1;
            continue;
        }
        if (i + 1 >= argc) return usage("unknown option or missing value:", a);
        const char *v = argv[++i];
        int bad = 0;
        if (!strcmp(a, "--data")) o->data = v;
        else if (!strcmp(a, "--epochs")) bad = parse_long(v, 1, 100000, &o->epochs);
        else if (!strcmp(a, "--batch")) bad = parse_long(v, 1, 1L << 20, &o->batch);
        else if (!strcmp(a, "--seed")) bad = parse_long(v, 0, 0x7fffffffL, &o->seed);
        else if (!strcmp(a, "--threads")) bad = parse_long(v, 1, 1024, &o->threads);
        else if (!strcmp(a, "--limit")) bad = parse_long(v, 1, 1L << 30, &o->limit);
        else if (!strcmp(a, "--test-limit")) bad = parse_long(v, 1, 1L << 30, &o->test_limit);
        else if (!strcmp(a, "--synthetic")) bad = parse_long(v, 8, 1L << 24, &o->synthetic);
        else if (!strcmp(a, "--min-accuracy")) {
            char *end;
            o->min_accuracy = strtod(v, &end);
            bad = end == v || *end || !(o->min_accuracy >= 0 && o->min_accuracy <= 1);
        } else return usage("unknown option", a);
        if (bad) return usage("bad value for", a);
    }
    return 0;
}

/* n images of class i % 10: an 8x8 square of 0.8 at one of ten places on a
 * background of uniform noise in [0, 0.3) */
static tg_dataset *make_synthetic(tg_ctx *ctx, int64_t n)
{
    tg_dataset *ds = tg_dataset_new(ctx, n, SIDE * SIDE, 0);
    if (!ds) return NULL;
    ds->n_classes = CLASSES;
    ds->sample_ndim = 2;
    ds->sample_shape[0] = ds->sample_shape[1] = SIDE;
    for (int64_t s = 0; s < n; s++) {
        int k = (int)(s % CLASSES);
        ds->labels[s] = k;
        int r0 = 2 + (k / 5) * 12, c0 = 1 + (k % 5) * 5;
        float *img = ds->x + s * SIDE * SIDE;
        for (int p = 0; p < SIDE * SIDE; p++)
            img[p] = 0.3f * (float)tg_rand_below(ctx, 1000) / 1000.0f;
        for (int r = r0; r < r0 + 8; r++)
            for (int c = c0; c < c0 + 8 && c < SIDE; c++) img[r * SIDE + c] += 0.8f;
    }
    return ds;
}

/* x = (x - mean) / std over every pixel of tr and te, with the mean and
 * (population) standard deviation of tr's pixels summed in double */
static void normalise(const tg_dataset *tr, const tg_dataset *te)
{
    const int64_t n = tr->n * tr->n_features;
    double s = 0, ss = 0;
    for (int64_t i = 0; i < n; i++) s += tr->x[i], ss += (double)tr->x[i] * tr->x[i];
    const double mean = n ? s / (double)n : 0, var = n ? ss / (double)n - mean * mean : 0;
    const float m = (float)mean, inv = var > 0 ? (float)(1.0 / sqrt(var)) : 1.0f;
    const tg_dataset *ds[2] = {tr, te};
    for (int d = 0; d < 2; d++)
        for (int64_t i = 0; i < ds[d]->n * ds[d]->n_features; i++)
            ds[d]->x[i] = (ds[d]->x[i] - m) * inv;
}

/* the layers, with nn.Linear's default initialisation for fc */
static int cnn_init(tg_ctx *ctx, cnn *m)
{
    if (tg_conv_init(ctx, &m->conv1, "conv1", 1, 16, 5, 1, 2, 1, TG_F32) ||
        tg_conv_init(ctx, &m->conv2, "conv2", 16, 32, 5, 1, 2, 1, TG_F32) ||
        tg_dense_init(ctx, &m->fc, "fc", 32 * 7 * 7, CLASSES, TG_F32, TG_INIT_HE_UNIFORM))
        return -1;
    double bound = 1.0 / sqrt(32.0 * 7 * 7);
    tg_fill_uniform(ctx, m->fc.weight, -bound, bound);
    tg_fill_uniform(ctx, m->fc.bias, -bound, bound);
    return tg_ok(ctx) ? 0 : -1;
}

/* x [m, 784] -> logits [m, 10] */
static tg_tensor *cnn_forward(tg_ctx *ctx, const cnn *m, tg_tensor *x)
{
    int64_t n = tg_dim(x, 0);
    tg_tensor *h = tg_reshape(ctx, x, 4, (const int64_t[]){n, 1, SIDE, SIDE});
    /* conv, relu, max pool 2: one node each (the convolution's output is
     * pooled as it is computed, never stored) */
    h = tg_conv_relu_pool_forward(ctx, &m->conv1, h, 2);
    h = tg_conv_relu_pool_forward(ctx, &m->conv2, h, 2);
    h = tg_reshape(ctx, h, 2, (const int64_t[]){n, 32 * 7 * 7});
    return tg_dense_forward(ctx, &m->fc, h, TG_ACT_NONE);
}

/* mean loss and accuracy over ds, without recording; 0 ok, -1 error */
static tg_tensor *cnn_logits(tg_ctx *ctx, const void *m, tg_tensor *x)
{
    return cnn_forward(ctx, m, x);
}

static int evaluate(tg_ctx *ctx, const cnn *m, const tg_dataset *ds, double *loss, double *acc)
{
    return evaluate_classifier(ctx, cnn_logits, m, ds, EVAL_BATCH, CLASSES, NULL, loss, acc);
}

static int fail(tg_ctx *ctx)
{
    fprintf(stderr, PROG ": %s\n", ctx && *tg_errmsg(ctx) ? tg_errmsg(ctx) : "out of memory");
    return 1;
}

int main(int argc, char **argv)
{
    options o = {.data = FASHION_DIR, .epochs = 5, .batch = 64, .seed = 1};
    int r = parse_options(argc, argv, &o);
    if (r) return r;
    tg_ctx *ctx = tg_ctx_new((uint64_t)o.seed);
    if (!ctx) return fail(NULL);
    if (o.threads) tg_set_threads(ctx, (int)o.threads);
    int rc = 1;
    tg_dataset *tr = NULL, *te = NULL;
    tg_optim *opt = NULL;
    tg_batcher b = {0};
    double t_load = now();
    if (o.synthetic) {
        tr = make_synthetic(ctx, o.synthetic);
        te = make_synthetic(ctx, o.synthetic / 4 < CLASSES ? CLASSES : o.synthetic / 4);
    } else {
        tr = tg_load_idx_dir(ctx, o.data, "train");
        te = tr ? tg_load_idx_dir(ctx, o.data, "test") : NULL;
    }
    if (!tr || !te) goto done;
    if (tr->n_features != SIDE * SIDE || te->n_features != SIDE * SIDE) {
        tg_set_error(ctx, "%s: images must be 28x28, got %lld pixels", o.data,
                     (long long)tr->n_features);
        goto done;
    }
    if (o.limit && o.limit < tr->n) tr->n = o.limit;
    if (o.test_limit && o.test_limit < te->n) te->n = o.test_limit;
    normalise(tr, te);
    t_load = now() - t_load;

    cnn m;
    if (cnn_init(ctx, &m)) goto done;
    tg_optim_opts oo = tg_optim_defaults(TG_OPT_ADAM); /* lr 1e-3 */
    opt = tg_optim_new(ctx, &oo, NULL, 0);
    if (!opt || tg_batcher_init(&b, ctx, tr, o.batch, TG_BATCH_SHUFFLE)) goto done;
    printf("data: %s: %lld training and %lld test images (%.1f s to load)\n",
           o.synthetic ? "synthetic" : o.data, (long long)tr->n, (long long)te->n, t_load);
    printf("model: conv 1->16 5x5, relu, maxpool 2, conv 16->32 5x5, relu, maxpool 2, "
           "linear 1568->10; adam lr %g, batch %ld, %ld epochs, seed %ld, %d threads\n",
           oo.lr, o.batch, o.epochs, o.seed, tg_get_threads(ctx));
    fflush(stdout);

    tg_progress p;
    tg_progress_begin(&p, stderr, o.epochs, b.n_batches);
    double t_train = 0, cpu_train = 0, train_loss = NAN, test_loss = NAN, test_acc = NAN;
    uint64_t grows_after_first = 0, grows_end = 0;
    int64_t steps = 0;
    for (long e = 0; e < o.epochs; e++) {
        tg_mean_meter ml = {0};
        tg_tensor *x, *y;
        int more;
        double t0 = now(), c0 = cpu_now();
        while ((more = tg_batcher_next(&b, &x, &y)) == 1) {
            tg_tensor *loss = tg_cross_entropy(ctx, cnn_forward(ctx, &m, x), y);
            tg_zero_grad(ctx);
            tg_backward(ctx, loss);
            tg_optim_step(opt);
            double l = tg_item(loss);
            if (!tg_ok(ctx)) goto done;
            tg_mean_meter_add(&ml, l, tg_dim(x, 0));
            tg_progress_update(&p, tg_dim(x, 0), l);
            tg_reset(ctx);
            tg_mem_stats ms;
            tg_mem_stats_get(ctx, &ms);
            if (++steps == 1) grows_after_first = ms.arena_grows;
            grows_end = ms.arena_grows;
        }
        t_train += now() - t0;
        cpu_train += cpu_now() - c0;
        if (more < 0) goto done;
        train_loss = tg_mean_meter_mean(&ml);
        uint64_t g = grows_end; /* evaluation may grow the arena; it is not a training step */
        if (evaluate(ctx, &m, te, &test_loss, &test_acc)) goto done;
        tg_mem_stats ms;
        tg_mem_stats_get(ctx, &ms);
        grows_after_first += ms.arena_grows - g;
        grows_end = ms.arena_grows;
        tg_progress_end_epoch(&p, "test loss %.4f  test acc %.4f", test_loss, test_acc);
    }
    double spe = t_train / (double)o.epochs;
    double sps = (double)tr->n * (double)o.epochs / t_train;
    printf("test accuracy %.4f, test loss %.4f, train loss %.4f; %.2f s per epoch (training "
           "only), %.0f samples/s\n",
           test_acc, test_loss, train_loss, spe, sps);
    if (o.json)
        printf("{\"test_accuracy\":%.4f,\"test_loss\":%.4f,\"train_loss\":%.4f,"
               "\"seconds_per_epoch\":%.3f,\"cpu_seconds_per_epoch\":%.3f,"
               "\"samples_per_second\":%.1f,\"epochs\":%ld,"
               "\"batch\":%ld,\"train_samples\":%lld,\"test_samples\":%lld,\"threads\":%d,"
               "\"warm_step_arena_grows\":%llu}\n",
               test_acc, test_loss, train_loss, spe, cpu_train / (double)o.epochs, sps, o.epochs,
               o.batch, (long long)tr->n, (long long)te->n, tg_get_threads(ctx),
               (unsigned long long)(grows_end - grows_after_first));
    rc = 0;
    if (!(test_acc >= o.min_accuracy)) {
        fprintf(stderr, PROG ": test accuracy %.4f is below --min-accuracy %.4f\n", test_acc,
                o.min_accuracy);
        rc = 1;
    }
    if (grows_end != grows_after_first) {
        fprintf(stderr, PROG ": the arena grew %llu times after the first training step\n",
                (unsigned long long)(grows_end - grows_after_first));
        rc = 1;
    }
done:
    if (rc && !tg_ok(ctx)) fail(ctx);
    fflush(stdout);
    tg_batcher_free(&b);
    tg_optim_free(opt);
    tg_dataset_free(tr);
    tg_dataset_free(te);
    tg_ctx_free(ctx);
    return rc;
}
