/* SPDX-License-Identifier: MIT */
/* mpi_train.c: the program behind the MPI tests (tests/mpi/mpi_test.sh).
 *
 * Trains a 20-64-64-5 tanh MLP with SGD (momentum 0.9) on 2,000 generated
 * samples (5 classes from a random linear teacher), data-parallel over however
 * many ranks mpirun starts: each rank takes its share of every global batch
 * (tg_mpi_shard), gradients are combined by tg_mpi_average_grads. Under
 * `mpirun -np 1` it is the single-process reference: the same code, one share.
 * Two more parameters check the gradients a rank does not have: one only the
 * last rank's loss reaches (with a zero gradient), one no loss reaches; after
 * the first step every rank must have zeros for the first and none for the
 * second. At the end, tg_mpi_free must leave every gradient as it was.
 *
 * Options:
 *   --dtype f32|f64     parameters and batches (default f64)
 *   --steps N           optimiser steps (default 200)
 *   --batch B           global batch (default 64)
 *   --out PATH          rank 0 saves the final parameters there
 *   --compare REF       rank 0 compares them with checkpoint REF: prints the largest
 *                       relative difference max|a-b| / max|b| over the parameters
 *   --rtol X            ... and fails (exit 3) above X
 *   --hash              rank 0 prints one XXH3 of all final parameters
 *   --allreduce         gradients through MPI_Allreduce, not the shared-memory sum
 *   --sharded           tg_mpi_step (each rank sums and steps its shard of every
 *                       parameter, data and state shared) instead of
 *                       tg_mpi_average_grads + tg_optim_step
 *   --resume-out PATH   rank 0 saves the optimiser's state there at the end (tg_resume_save)
 *   --ckpt PATH --ckpt-every K   rank 0 saves a checkpoint every K steps
 *   --bad-data-rank R   rank R reads its data from a path that does not exist
 *   --fail-rank R --fail-step S  rank R records an error at step S
 *   --alone             ... and stops at once: frees its tg_mpi (which must not wait
 *                       for the others) and ends the job (tg_mpi_abort), exit 1
 *   --kill-rank R --kill-step S  rank R kills itself (SIGKILL) at step S
 *   --load PATH         no training: load checkpoint PATH into the model (exit 0 if it loads)
 * Exit status: 0 ok; 1 an error (the message on stderr, from every rank); 3 compare failed.
 */
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tapegrad.h"
#include "tapegrad/mpi.h"
#include "teacher_data.h" /* examples/ */

#define N_SAMPLES 2000
#define N_FEATURES 20
#define N_CLASSES 5
#define SEED 424242u

typedef struct {
    tg_dtype dt;
    int steps, batch, ckpt_every;
    int bad_data_rank, fail_rank, fail_step, alone, kill_rank, kill_step, hash, allreduce, sharded;
    double rtol;
    const char *out, *compare, *ckpt, *load, *resume_out;
} opts;

/* The MLP, and two parameters of [3] zeros outside it: "last_rank_only", in the
 * loss (times 0) on the last rank only, and "unused", in no loss. */
static int build_model(tg_ctx *ctx, tg_mlp *m, tg_dtype dt) {
    const int64_t widths[] = {N_FEATURES, 64, 64, N_CLASSES};
    if (tg_mlp_init(ctx, m, "fc", 4, widths, TG_ACT_TANH, dt) != 0) return -1;
    tg_param(ctx, "last_rank_only", dt, 1, (const int64_t[]){3});
    tg_param(ctx, "unused", dt, 1, (const int64_t[]){3});
    return tg_ok(ctx) ? 0 : -1;
}

/* After tg_mpi_average_grads: a parameter with a gradient on one rank has one
 * (of zeros) on every rank; one with none anywhere has none. After the sharded
 * tg_mpi_step a rank's gradient holds the sum in its own shard only: only
 * whether there is one is checked then. 0 ok, -1 error. */
static int check_partial_grads(tg_ctx *ctx, int sharded) {
    tg_tensor *one = tg_param_find(ctx, "last_rank_only"), *none = tg_param_find(ctx, "unused");
    const unsigned char *g = tg_grad(one);
    size_t n = (size_t)tg_numel(one) * tg_dtype_size(tg_dtype_of(one)), nonzero = 0;
    for (size_t k = 0; g && k < n && !sharded; k++) nonzero += g[k] != 0;
    if (!g || nonzero || tg_grad(none)) {
        tg_set_error(ctx, "mpi_train: after the first step last_rank_only's gradient is %s, "
                          "unused's is %s (want zeros, and none)",
                     !g ? "missing" : nonzero ? "not zero" : "zeros", tg_grad(none) ? "set" : "none");
        return -1;
    }
    return 0;
}

static uint64_t params_hash(tg_ctx *ctx) {
    uint64_t h = 0;
    for (int i = 0; i < tg_param_count(ctx); i++) h = h * 0x100000001B3u ^ tg_hash(tg_param_at(ctx, i));
    return h;
}

/* FNV-1a of every parameter's gradient bytes (0 for one without) */
static uint64_t grads_hash(tg_ctx *ctx) {
    uint64_t h = 0xcbf29ce484222325u;
    for (int i = 0; i < tg_param_count(ctx); i++) {
        tg_tensor *p = tg_param_at(ctx, i);
        const unsigned char *g = tg_grad(p);
        size_t n = g ? (size_t)tg_numel(p) * tg_dtype_size(tg_dtype_of(p)) : 0;
        for (size_t k = 0; k < n; k++) h = (h ^ g[k]) * 0x100000001B3u;
    }
    return h;
}

/* largest max|a-b| / max|b| over the parameters of ctx and REF's */
static int compare_with(tg_ctx *ctx, const opts *o) {
    tg_ctx *ref = tg_ctx_new(SEED);
    tg_mlp m;
    if (!ref || build_model(ref, &m, o->dt) != 0 || tg_load(ref, o->compare) != 0) {
        fprintf(stderr, "mpi_train: cannot load %s: %s\n", o->compare, ref ? tg_errmsg(ref) : "");
        tg_ctx_free(ref);
        return 1;
    }
    double worst = 0;
    for (int i = 0; i < tg_param_count(ctx); i++) {
        tg_tensor *a = tg_param_at(ctx, i), *b = tg_param_at(ref, i);
        double dmax = 0, bmax = 0;
        for (int64_t k = 0; k < tg_numel(a); k++) {
            double av = o->dt == TG_F32 ? ((float *)tg_data(a))[k] : ((double *)tg_data(a))[k];
            double bv = o->dt == TG_F32 ? ((float *)tg_data(b))[k] : ((double *)tg_data(b))[k];
            if (fabs(av - bv) > dmax) dmax = fabs(av - bv);
            if (fabs(bv) > bmax) bmax = fabs(bv);
        }
        double rel = bmax > 0 ? dmax / bmax : dmax;
        printf("  %-10s max|a-b| %.3e  max|b| %.3e  relative %.3e\n", tg_name(a), dmax, bmax, rel);
        if (rel > worst) worst = rel;
    }
    tg_ctx_free(ref);
    printf("largest relative difference %.3e (tolerance %.1e)\n", worst, o->rtol);
    return o->rtol > 0 && !(worst <= o->rtol) ? 3 : 0;
}

static int parse(int argc, char **argv, opts *o) {
    *o = (opts){.dt = TG_F64, .steps = 200, .batch = 64, .bad_data_rank = -1, .fail_rank = -1,
                .kill_rank = -1};
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(a, "--hash")) { o->hash = 1; continue; }
        if (!strcmp(a, "--allreduce")) { o->allreduce = 1; continue; }
        if (!strcmp(a, "--sharded")) { o->sharded = 1; continue; }
        if (!strcmp(a, "--alone")) { o->alone = 1; continue; }
        if (!v) return -1;
        i++;
        if (!strcmp(a, "--dtype")) o->dt = !strcmp(v, "f32") ? TG_F32 : TG_F64;
        else if (!strcmp(a, "--steps")) o->steps = atoi(v);
        else if (!strcmp(a, "--batch")) o->batch = atoi(v);
        else if (!strcmp(a, "--out")) o->out = v;
        else if (!strcmp(a, "--compare")) o->compare = v;
        else if (!strcmp(a, "--rtol")) o->rtol = atof(v);
        else if (!strcmp(a, "--ckpt")) o->ckpt = v;
        else if (!strcmp(a, "--ckpt-every")) o->ckpt_every = atoi(v);
        else if (!strcmp(a, "--bad-data-rank")) o->bad_data_rank = atoi(v);
        else if (!strcmp(a, "--fail-rank")) o->fail_rank = atoi(v);
        else if (!strcmp(a, "--fail-step")) o->fail_step = atoi(v);
        else if (!strcmp(a, "--kill-rank")) o->kill_rank = atoi(v);
        else if (!strcmp(a, "--kill-step")) o->kill_step = atoi(v);
        else if (!strcmp(a, "--load")) o->load = v;
        else if (!strcmp(a, "--resume-out")) o->resume_out = v;
        else return -1;
    }
    return 0;
}

/* the whole run on one rank; returns the exit status */
static int run(tg_ctx *ctx, tg_mpi *mp, const opts *o, tg_optim **opt_out) {
    const int rank = tg_mpi_rank(mp);
    tg_dataset *ds = NULL;
    if (rank == o->bad_data_rank)
        ds = tg_load_csv(ctx, "/nonexistent/tapegrad-mpi-test/train.csv", NULL);
    else
        ds = teacher_data(ctx, N_SAMPLES, N_FEATURES, N_CLASSES, 0.3);
    tg_mlp m;
    build_model(ctx, &m, o->dt);
    /* sync point: a rank that could not load its data stops every rank here */
    if (tg_mpi_broadcast_params(mp, 0) != 0) {
        tg_dataset_free(ds);
        return 1;
    }
    tg_optim_opts oo = tg_optim_defaults(TG_OPT_SGD);
    oo.lr = 0.05;
    oo.momentum = 0.9;
    tg_optim *opt = tg_optim_new(ctx, &oo, NULL, 0);
    tg_batcher b;
    tg_batcher_init(&b, ctx, ds, o->batch,
                    TG_BATCH_SHUFFLE | TG_BATCH_DROP_LAST | (o->dt == TG_F64 ? TG_BATCH_F64 : 0));
    tg_mpi_shard(mp, &b);
    int rc = 0;
    double first_loss = NAN, last_loss = NAN;
    for (int step = 0; step < o->steps; step++) {
        tg_tensor *x, *y;
        int got = tg_batcher_next(&b, &x, &y);
        if (got == 0) got = tg_batcher_next(&b, &x, &y); /* the next epoch */
        if (rank == o->fail_rank && step == o->fail_step) {
            tg_set_error(ctx, "mpi_train: injected failure at step %d", step);
            if (o->alone) { /* no sync point: main frees and ends the job */
                rc = 4;
                break;
            }
        }
        if (rank == o->kill_rank && step == o->kill_step) raise(SIGKILL);
        tg_zero_grad(ctx);
        tg_tensor *loss = tg_cross_entropy(ctx, tg_mlp_forward(ctx, &m, x), y);
        if (rank == tg_mpi_size(mp) - 1) /* + 0 * sum: a gradient of zeros, on this rank only */
            loss = tg_add(ctx, loss, tg_scale(ctx, tg_sum(ctx, tg_param_find(ctx, "last_rank_only")), 0));
        tg_backward(ctx, loss);
        double l[2] = {tg_ok(ctx) ? tg_item(loss) * (double)b.share_size : 0, (double)b.share_size};
        /* the sync point of every step: any rank's error stops all of them here */
        int failed = o->sharded ? tg_mpi_step(mp, tg_mpi_batch_weight(&b), opt) != 0
                                : tg_mpi_average_grads(mp, tg_mpi_batch_weight(&b)) != 0;
        if (!failed && step == 0) check_partial_grads(ctx, o->sharded); /* tg_mpi_sum stops all */
        if (failed || tg_mpi_sum(mp, l, 2) != 0) {
            rc = 1;
            break;
        }
        if (step == 0) first_loss = l[0] / l[1];
        last_loss = l[0] / l[1];
        if (!o->sharded) tg_optim_step(opt);
        tg_reset(ctx);
        if (o->ckpt && o->ckpt_every > 0 && (step + 1) % o->ckpt_every == 0) {
            if (rank == 0) tg_save(ctx, o->ckpt);
            if (tg_mpi_check(mp) != 0) { /* a failed save stops every rank */
                rc = 1;
                break;
            }
        }
    }
    if (rc == 0) {
        int eq = tg_mpi_params_equal(mp);
        if (eq != 1) {
            if (eq == 0) tg_set_error(ctx, "mpi_train: the ranks' parameters differ after training");
            rc = 1;
        }
    }
    if (rc == 0 && rank == 0) {
        printf("loss %.6f -> %.6f over %d steps of %d samples on %d rank(s)\n", first_loss,
               last_loss, o->steps, o->batch, tg_mpi_size(mp));
        if (!(last_loss < 0.5 * first_loss)) {
            tg_set_error(ctx, "mpi_train: the loss did not halve (%g -> %g)", first_loss, last_loss);
            rc = 1;
        }
        if (rc == 0 && o->hash) printf("params hash %016llx\n", (unsigned long long)params_hash(ctx));
        if (rc == 0 && o->out && tg_save(ctx, o->out) != 0) rc = 1;
        if (rc == 0 && o->compare) rc = compare_with(ctx, o);
        if (rc == 0 && o->resume_out && tg_resume_save(ctx, o->resume_out, opt, &b, 0) != 0) rc = 1;
    }
    /* the optimiser outlives the tg_mpi that stepped it (tg_mpi_free moves its state back) */
    *opt_out = opt;
    tg_batcher_free(&b);
    tg_dataset_free(ds);
    return rc;
}

int main(int argc, char **argv) {
    MPI_Init(&argc, &argv);
    opts o;
    if (parse(argc, argv, &o) != 0) {
        fprintf(stderr, "mpi_train: bad arguments (see the comment at the top of mpi_train.c)\n");
        MPI_Finalize();
        return 2;
    }
    tg_ctx *ctx = tg_ctx_new(SEED);
    tg_set_threads(ctx, 1);
    int rc;
    if (o.load) {
        tg_mlp m;
        build_model(ctx, &m, o.dt);
        rc = tg_load(ctx, o.load) == 0 ? 0 : 1;
        printf("%s: %s\n", o.load, rc ? tg_errmsg(ctx) : "loads");
        tg_ctx_free(ctx);
        MPI_Finalize();
        return rc;
    }
    tg_mpi *mp = tg_mpi_new(ctx, MPI_COMM_WORLD);
    if (!mp) tg_mpi_abort(NULL, tg_errmsg(ctx));
    tg_mpi_set_shared(mp, !o.allreduce);
    tg_optim *opt = NULL;
    rc = run(ctx, mp, &o, &opt);
    if (rc == 1) fprintf(stderr, "mpi_train: rank %d: %s\n", tg_mpi_rank(mp), tg_errmsg(ctx));
    /* tg_mpi_free gives the parameters their own gradient storage back, with the
     * gradients of the last step in it */
    uint64_t before = grads_hash(ctx);
    tg_mpi_free(mp);
    tg_optim_free(opt);
    if (rc == 0 && grads_hash(ctx) != before) {
        fprintf(stderr, "mpi_train: the gradients changed in tg_mpi_free\n");
        rc = 1;
    }
    if (rc == 4) tg_mpi_abort(NULL, tg_errmsg(ctx)); /* the others are at a sync point */
    tg_ctx_free(ctx);
    MPI_Finalize();
    return rc;
}
