/* SPDX-License-Identifier: MIT */
/* mpi_mlp.c: data-parallel training of an MLP over MPI (built only with
 * tapegrad_mpi). Run it under mpirun:
 *
 *   mpirun -np 2 build/release/examples/mpi_mlp                 Fashion-MNIST
 *   mpirun -np 2 build/release/examples/mpi_mlp --generated     generated data
 *   mpirun -np 2 build/release/examples/mpi_mlp --bench 30      the scaling figure
 *   (as root, and with more ranks than cores: mpirun --allow-run-as-root --oversubscribe)
 *
 * Every rank loads the data, builds the same model from the same seed, and
 * takes the same optimiser step from the gradient of the whole global batch:
 *
 *   rank r:  x_r = its share of the global batch (tg_mpi_shard)
 *            g_r = d mean-loss(x_r) / d params               (tg_backward)
 *            g   = sum_r (|x_r| / |batch|) g_r               \ tg_mpi_step
 *            params -= Adam(g)                               /
 *
 * so P ranks train exactly as one process with the same global batch would
 * (up to the order of the sums; docs/distributed.md). On one machine
 * tg_mpi_step shards the last two lines: rank r sums and updates only its r-th
 * part of every parameter, which lives once, in shared memory, with Adam's
 * moments (--unsharded: tg_mpi_average_grads and tg_optim_step on every rank
 * instead, as across machines). Rank 0 alone prints
 * progress and writes the checkpoint; the test accuracy is computed by all
 * ranks on their shares of the test set and summed.
 *
 * Data:
 *   Fashion-MNIST from /usr/share/datasets/fashion-mnist (Debian package
 *   dataset-fashion-mnist), 784-256-10, Adam lr 1e-3, global batch 256, 3 epochs.
 *   --generated: 8,000 points of 32 features in 10 classes from a random
 *   linear teacher (a test split of 2,000), 32-128-10, Adam lr 1e-2.
 *   --bench STEPS: the big MLP 784-1024-1024-10 on random inputs, global batch
 *   256, SGD (lr 0.01); after 3 warm-up steps, STEPS timed steps. Rank 0 prints the
 *   samples/s and the time spent in communication.
 *
 * Options: [--data DIR] [--generated] [--epochs N] [--batch B] [--lr X] [--seed S]
 *          [--threads T (per rank, default 1)] [--ckpt PATH] [--bench STEPS]
 *          [--reduce shared|allreduce (the gradients' way: tg_mpi_set_shared)] [--bucket BYTES]
 *          [--unsharded]
 * Exit status: 0 when training reached its accuracy (Fashion-MNIST >= 0.80,
 * generated >= 0.80), 1 on an error (every rank prints it), 2 bad arguments.
 */
#define _POSIX_C_SOURCE 200809L /* clock_gettime */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "tapegrad.h"
#include "tapegrad/mpi.h"
#include "teacher_data.h"

#define FASHION_DIR "/usr/share/datasets/fashion-mnist"

typedef struct {
    const char *data, *ckpt;
    int generated, epochs, threads, bench, allreduce, unsharded;
    int64_t batch;
    double lr;
    uint64_t seed;
    long bucket;
} opts;

/* Mean loss and accuracy over the test set: each rank its share, summed. */
static int evaluate(tg_ctx *ctx, tg_mpi *mp, const tg_mlp *m, const tg_dataset *ds, double *loss,
                    double *acc) {
    tg_batcher b;
    double s[3] = {0, 0, 0}; /* loss sum, correct, samples */
    if (tg_batcher_init(&b, ctx, ds, 1000, 0) == 0 && tg_mpi_shard(mp, &b) == 0) {
        int prev = tg_no_grad(ctx, 1);
        tg_tensor *x, *y;
        while (tg_batcher_next(&b, &x, &y) == 1) {
            tg_tensor *logits = tg_mlp_forward(ctx, m, x);
            double l = tg_item(tg_cross_entropy(ctx, logits, y));
            double a = tg_ok(ctx) ? tg_accuracy(logits, y) : 0;
            s[0] += l * (double)b.share_size;
            s[1] += a * (double)b.share_size;
            s[2] += (double)b.share_size;
            tg_reset(ctx);
        }
        tg_no_grad(ctx, prev);
    }
    tg_batcher_free(&b);
    if (tg_mpi_sum(mp, s, 3) != 0) return -1; /* also the sync point of any error above */
    *loss = s[0] / s[2];
    *acc = s[1] / s[2];
    return 0;
}

/* The gradient of the global batch, and the optimiser's step: sharded by
 * tg_mpi_step, or on every rank whole. A sync point. 0 ok, -1 error. */
static int mpi_step(tg_mpi *mp, const opts *o, const tg_batcher *b, tg_optim *opt) {
    if (!o->unsharded) return tg_mpi_step(mp, tg_mpi_batch_weight(b), opt);
    if (tg_mpi_average_grads(mp, tg_mpi_batch_weight(b)) != 0) return -1;
    return tg_optim_step(opt);
}

/* Train for o->epochs with opt; returns the final test accuracy, NaN on error. */
static double train(tg_ctx *ctx, tg_mpi *mp, const opts *o, tg_dataset *tr, tg_dataset *te,
                    tg_mlp *m, tg_optim *opt) {
    const int root = tg_mpi_rank(mp) == 0;
    tg_batcher b;
    if (tg_batcher_init(&b, ctx, tr, o->batch, TG_BATCH_SHUFFLE) == 0) tg_mpi_shard(mp, &b);
    /* every rank from rank 0's parameters and generator; a sync point for the above */
    if (tg_mpi_broadcast_params(mp, 0) != 0) {
        tg_batcher_free(&b);
        return NAN;
    }
    tg_progress pr;
    if (root) tg_progress_begin(&pr, stdout, o->epochs, b.n_batches);
    double acc = NAN;
    for (int e = 0; e < o->epochs; e++) {
        tg_tensor *x, *y;
        while (tg_batcher_next(&b, &x, &y) == 1) {
            tg_zero_grad(ctx);
            tg_tensor *loss = tg_cross_entropy(ctx, tg_mlp_forward(ctx, m, x), y);
            tg_backward(ctx, loss);
            double l = tg_ok(ctx) ? tg_item(loss) : NAN;
            /* a sync point: any rank's error stops every rank here */
            if (mpi_step(mp, o, &b, opt) != 0) goto out;
            tg_reset(ctx);
            /* rank 0's progress counts the global batch, with rank 0's loss */
            if (root) tg_progress_update(&pr, b.global_size, l);
        }
        double tl, ta;
        if (evaluate(ctx, mp, m, te, &tl, &ta) != 0) goto out;
        acc = ta;
        if (root) tg_progress_end_epoch(&pr, "test loss %.4f  test acc %.4f", tl, ta);
        if (o->ckpt && root) tg_save(ctx, o->ckpt);
        if (tg_mpi_check(mp) != 0) goto out; /* a failed save stops every rank */
    }
    if (tg_mpi_params_equal(mp) != 1 && tg_ok(ctx))
        tg_set_error(ctx, "mpi_mlp: the ranks' parameters differ after training");
out:
    tg_batcher_free(&b);
    return tg_ok(ctx) ? acc : NAN;
}

/* CPU seconds of this process (all its threads; waiting inside MPI counts too,
 * as MPI polls) */
static double cpu_seconds(void) {
    struct timespec ts;
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* The scaling figure: o->bench timed steps of the big MLP (times: the largest
 * over the ranks). */
static int bench(tg_ctx *ctx, tg_mpi *mp, const opts *o, tg_optim **opt_out) {
    const int64_t widths[] = {784, 1024, 1024, 10};
    const int64_t n = 8 * o->batch;
    tg_dataset *ds = teacher_data(ctx, n, 784, 10, 0.5);
    tg_mlp m;
    tg_mlp_init(ctx, &m, "fc", 4, widths, TG_ACT_RELU, TG_F32);
    tg_optim_opts oo = tg_optim_defaults(TG_OPT_SGD);
    oo.lr = 0.01;
    tg_optim *opt = *opt_out = tg_optim_new(ctx, &oo, NULL, 0);
    tg_batcher b;
    if (ds && tg_batcher_init(&b, ctx, ds, o->batch, TG_BATCH_SHUFFLE) == 0) tg_mpi_shard(mp, &b);
    if (tg_mpi_broadcast_params(mp, 0) != 0) {
        tg_dataset_free(ds);
        return 1;
    }
    double t0 = 0, compute = 0, cpu_compute = 0, cpu_avg = 0;
    for (int step = -3; step < o->bench; step++) {
        if (step == 0) {
            MPI_Barrier(tg_mpi_comm(mp));
            tg_mpi_stats_reset(mp);
            t0 = MPI_Wtime();
            compute = cpu_compute = cpu_avg = 0;
        }
        tg_tensor *x, *y;
        if (tg_batcher_next(&b, &x, &y) != 1) tg_batcher_next(&b, &x, &y);
        double c0 = MPI_Wtime(), u0 = cpu_seconds();
        tg_zero_grad(ctx);
        tg_backward(ctx, tg_cross_entropy(ctx, tg_mlp_forward(ctx, &m, x), y));
        compute += MPI_Wtime() - c0;
        double u1 = cpu_seconds();
        if (mpi_step(mp, o, &b, opt) != 0) break;
        double u2 = cpu_seconds();
        c0 = MPI_Wtime();
        tg_reset(ctx);
        compute += MPI_Wtime() - c0;
        cpu_compute += (u1 - u0) + (cpu_seconds() - u2);
        cpu_avg += u2 - u1;
    }
    double wall = MPI_Wtime() - t0;
    tg_mpi_stats st = tg_mpi_get_stats(mp);
    /* the slowest rank sets the pace: report rank 0's view and the largest times */
    double mx[6] = {st.comm_seconds, st.pack_seconds, st.sync_seconds, compute, cpu_compute, cpu_avg};
    double all[6];
    MPI_Allreduce(mx, all, 6, MPI_DOUBLE, MPI_MAX, tg_mpi_comm(mp));
    if (tg_ok(ctx) && tg_mpi_rank(mp) == 0) {
        double steps = o->bench;
        char how[64] = "one allreduce";
        if (tg_mpi_shared(mp))
            snprintf(how, sizeof how, "summed in shared memory%s",
                     o->unsharded ? "" : ", the step sharded");
        else if (o->bucket > 0) snprintf(how, sizeof how, "allreduce buckets of %ld bytes", o->bucket);
        printf("bench: 784-1024-1024-10 f32, global batch %lld, %d rank(s) x %d thread(s), "
               "%d steps\n", (long long)o->batch, tg_mpi_size(mp), o->threads, o->bench);
        printf("  %.1f samples/s  %.2f ms/step  compute %.2f ms/step\n",
               steps * (double)o->batch / wall, 1e3 * wall / steps, 1e3 * all[3] / steps);
        printf("  CPU time: compute %.2f ms/step, %s %.2f ms/step (with MPI polling while it "
               "waits)\n", 1e3 * all[4] / steps,
               o->unsharded ? "tg_mpi_average_grads + tg_optim_step" : "tg_mpi_step",
               1e3 * all[5] / steps);
        printf("  communication %.2f ms/step (reduce %.2f, pack+unpack %.2f, sync %.3f; "
               "%.1f%% of the step), %.1f MB reduced per step, %s\n",
               1e3 * (all[0] + all[1] + all[2]) / steps, 1e3 * all[0] / steps,
               1e3 * all[1] / steps, 1e3 * all[2] / steps,
               100 * (all[0] + all[1] + all[2]) / wall,
               st.calls ? (double)st.bytes / (double)st.calls / 1e6 : 0, how);
    }
    tg_batcher_free(&b);
    tg_dataset_free(ds);
    return tg_ok(ctx) ? 0 : 1;
}

static int parse(int argc, char **argv, opts *o) {
    *o = (opts){.data = FASHION_DIR, .epochs = 3, .threads = 1, .batch = 256, .lr = -1,
                .seed = 1, .bucket = -1};
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(a, "--generated")) { o->generated = 1; continue; }
        if (!strcmp(a, "--unsharded")) { o->unsharded = 1; continue; }
        if (!v) return -1;
        i++;
        if (!strcmp(a, "--data")) o->data = v;
        else if (!strcmp(a, "--epochs")) o->epochs = atoi(v);
        else if (!strcmp(a, "--batch")) o->batch = atoll(v);
        else if (!strcmp(a, "--lr")) o->lr = atof(v);
        else if (!strcmp(a, "--seed")) o->seed = strtoull(v, NULL, 10);
        else if (!strcmp(a, "--threads")) o->threads = atoi(v);
        else if (!strcmp(a, "--ckpt")) o->ckpt = v;
        else if (!strcmp(a, "--bucket")) o->bucket = atol(v);
        else if (!strcmp(a, "--reduce") && (!strcmp(v, "shared") || !strcmp(v, "allreduce")))
            o->allreduce = v[0] == 'a';
        else if (!strcmp(a, "--bench")) o->bench = atoi(v);
        else return -1;
    }
    if (o->lr < 0) o->lr = o->generated ? 1e-2 : 1e-3;
    return o->epochs < 1 || o->batch < 1 || o->threads < 1 || o->bench < 0 ? -1 : 0;
}

int main(int argc, char **argv) {
    MPI_Init(&argc, &argv);
    opts o;
    int rank;
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    if (parse(argc, argv, &o) != 0) {
        if (rank == 0)
            fprintf(stderr, "usage: mpirun -np P mpi_mlp [--data DIR] [--generated] [--epochs N] "
                            "[--batch B] [--lr X] [--seed S] [--threads T] [--ckpt PATH] "
                            "[--reduce shared|allreduce] [--bucket BYTES] [--bench STEPS] "
                            "[--unsharded]\n");
        MPI_Finalize();
        return 2;
    }
    tg_ctx *ctx = tg_ctx_new(o.seed); /* the same seed on every rank */
    tg_mpi *mp = ctx ? tg_mpi_new(ctx, MPI_COMM_WORLD) : NULL;
    if (!mp) tg_mpi_abort(NULL, ctx ? tg_errmsg(ctx) : "mpi_mlp: out of memory");
    tg_set_threads(ctx, o.threads);
    if (o.bucket >= 0) tg_mpi_set_bucket_bytes(mp, (size_t)o.bucket);
    if (o.allreduce) tg_mpi_set_shared(mp, 0);
    int rc;
    /* the optimiser outlives the tg_mpi that steps it (tg_mpi_free moves its state back) */
    tg_optim *opt = NULL;
    if (o.bench) {
        rc = bench(ctx, mp, &o, &opt);
    } else {
        tg_dataset *tr = NULL, *te = NULL;
        tg_mlp m;
        if (o.generated) {
            tg_dataset *all = teacher_data(ctx, 10000, 32, 10, 0.5);
            tg_dataset_split(ctx, all, 0.2, &tr, &te);
            tg_dataset_free(all);
            tg_mlp_init(ctx, &m, "fc", 3, (const int64_t[]){32, 128, 10}, TG_ACT_RELU, TG_F32);
        } else {
            tr = tg_load_idx_dir(ctx, o.data, "train");
            te = tr ? tg_load_idx_dir(ctx, o.data, "test") : NULL;
            tg_mlp_init(ctx, &m, "fc", 3, (const int64_t[]){784, 256, 10}, TG_ACT_RELU, TG_F32);
        }
        tg_optim_opts oo = tg_optim_defaults(TG_OPT_ADAM);
        oo.lr = o.lr;
        opt = tg_optim_new(ctx, &oo, NULL, 0);
        double acc = train(ctx, mp, &o, tr, te, &m, opt);
        rc = tg_ok(ctx) ? 0 : 1;
        if (rc == 0 && rank == 0) {
            printf("%d rank(s), global batch %lld: test accuracy %.4f%s%s\n", tg_mpi_size(mp),
                   (long long)o.batch, acc, o.ckpt ? ", checkpoint " : "", o.ckpt ? o.ckpt : "");
            if (!(acc >= 0.80)) {
                fprintf(stderr, "mpi_mlp: test accuracy %.4f is below 0.80\n", acc);
                rc = 1;
            }
        }
        tg_dataset_free(tr);
        tg_dataset_free(te);
    }
    if (!tg_ok(ctx)) fprintf(stderr, "mpi_mlp: rank %d: %s\n", rank, tg_errmsg(ctx));
    tg_mpi_free(mp);
    tg_optim_free(opt);
    tg_ctx_free(ctx);
    MPI_Finalize();
    return rc;
}
