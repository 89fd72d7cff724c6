/* SPDX-License-Identifier: MIT */
/* test_resume.c: a run stopped after epoch k and resumed from its model file
 * and its resume file ends bit-identical to the uninterrupted run; a resume
 * file that does not fit the optimiser or batcher is refused with a message
 * and changes nothing. */
#include <criterion/criterion.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "tg_test.h"

#define N 96
#define F 5
#define C 3
#define EPOCHS 6

static char dir[64];

static void setup(void) { scratch_make(dir, sizeof dir, "resume"); }
static void teardown(void) { scratch_remove(dir); }
TestSuite(resume, .init = setup, .fini = teardown);

static const char *in_dir(const char *name) { return scratch_path(dir, name); }

typedef struct {
    tg_ctx *ctx;
    tg_dataset *ds;
    tg_mlp m;
    tg_optim *opt;
    tg_batcher b;
    tg_sched s;
} run;

/* A run of the same configuration; the context is seeded with `seed` (a
 * resumed run is made with another seed: the resume file must bring the
 * random state back). The data is the same whatever the seed. */
static void run_make(run *r, uint64_t seed, tg_opt_kind kind)
{
    r->ctx = tg_ctx_new(seed);
    r->ds = tg_dataset_new(r->ctx, N, F, 0);
    cr_assert_not_null(r->ds, "%s", tg_errmsg(r->ctx));
    for (int i = 0; i < N; i++) {
        r->ds->labels[i] = i % C;
        for (int j = 0; j < F; j++)
            r->ds->x[i * F + j] = (float)((i * 37 + j * 11) % 17) / 17.0f + (float)(i % C) * (j == 1);
    }
    r->ds->n_classes = C;
    cr_assert_eq(tg_mlp_init(r->ctx, &r->m, "", 3, (int64_t[]){F, 8, C}, TG_ACT_TANH, TG_F32), 0);
    tg_optim_opts o = tg_optim_defaults(kind);
    if (kind == TG_OPT_SGD) o.momentum = 0.9;
    r->opt = tg_optim_new(r->ctx, &o, NULL, 0);
    cr_assert_not_null(r->opt, "%s", tg_errmsg(r->ctx));
    cr_assert_eq(tg_batcher_init(&r->b, r->ctx, r->ds, 10, TG_BATCH_SHUFFLE), 0);
    r->s = (tg_sched){.kind = TG_SCHED_COSINE, .base_lr = 1e-2, .min_lr = 1e-4,
                      .total_steps = EPOCHS * 10, .warmup_steps = 5};
}

static void run_free(run *r)
{
    tg_batcher_free(&r->b);
    tg_optim_free(r->opt);
    tg_dataset_free(r->ds);
    tg_ctx_free(r->ctx);
}

/* epochs [from, to): the lr from the schedule at the optimiser's step count,
 * noise drawn from the context's generator, a shuffling batcher */
static void run_epochs(run *r, int from, int to)
{
    for (int e = from; e < to; e++) {
        tg_tensor *x, *y;
        while (tg_batcher_next(&r->b, &x, &y) == 1) {
            tg_optim_set_lr(r->opt, tg_sched_lr(&r->s, tg_optim_step_count(r->opt)));
            /* input noise drawn from the context's generator */
            tg_tensor *noise = tg_new(r->ctx, TG_F32, 2, (int64_t[]){tg_dim(x, 0), F});
            tg_fill_uniform(r->ctx, noise, -0.1, 0.1);
            tg_tensor *logits = tg_mlp_forward(r->ctx, &r->m, tg_add(r->ctx, x, noise));
            tg_tensor *loss = tg_cross_entropy(r->ctx, logits, y);
            tg_zero_grad(r->ctx);
            tg_backward(r->ctx, loss);
            tg_optim_step(r->opt);
            tg_reset(r->ctx);
        }
    }
    cr_assert(tg_ok(r->ctx), "%s", tg_errmsg(r->ctx));
}

static void hashes(const run *r, uint64_t *h)
{
    for (int i = 0; i < tg_param_count(r->ctx); i++) h[i] = tg_hash(tg_param_at(r->ctx, i));
}

static void stop_and_resume(tg_opt_kind kind, int k)
{
    run a, b, c;
    uint64_t ha[4], hc[4], hb[4];
    run_make(&a, 42, kind);
    run_epochs(&a, 0, EPOCHS);
    hashes(&a, ha);

    run_make(&b, 42, kind);
    run_epochs(&b, 0, k);
    cr_assert_eq(tg_save(b.ctx, in_dir("model.safetensors")), 0, "%s", tg_errmsg(b.ctx));
    cr_assert_eq(tg_resume_save(b.ctx, in_dir("model.resume"), b.opt, &b.b, k), 0, "%s",
                 tg_errmsg(b.ctx));
    run_epochs(&b, k, k + 1); /* a run that goes on changes nothing on disk */
    hashes(&b, hb);
    run_free(&b);

    run_make(&c, 7, kind); /* another seed: other weights, another random state */
    cr_assert_eq(tg_load(c.ctx, in_dir("model.safetensors")), 0, "%s", tg_errmsg(c.ctx));
    int64_t epoch = -1;
    cr_assert_eq(tg_resume_load(c.ctx, in_dir("model.resume"), c.opt, &c.b, &epoch), 0, "%s",
                 tg_errmsg(c.ctx));
    cr_assert_eq(epoch, k);
    cr_assert_eq(tg_optim_step_count(c.opt), k * 10);
    run_epochs(&c, (int)epoch, EPOCHS);
    hashes(&c, hc);
    for (int i = 0; i < 4; i++)
        cr_assert_eq(hc[i], ha[i], "%s, stopped after epoch %d: parameter %d differs from the "
                     "uninterrupted run", tg_optim_kind_name(kind), k, i);
    cr_assert_neq(hb[0], ha[0], "the hashes can differ (the test can fail)");
    run_free(&a);
    run_free(&c);
}

Test(resume, stopped_and_resumed_is_bit_identical_adam) { stop_and_resume(TG_OPT_ADAM, 2); }
Test(resume, stopped_and_resumed_is_bit_identical_sgd_momentum) { stop_and_resume(TG_OPT_SGD, 3); }
Test(resume, stopped_and_resumed_is_bit_identical_rmsprop) { stop_and_resume(TG_OPT_RMSPROP, 1); }

/* without the resume file (the model alone) the run is not the same: the
 * optimiser state and the random state matter */
Test(resume, the_model_file_alone_does_not_resume)
{
    run a, c;
    uint64_t ha[4], hc[4];
    run_make(&a, 42, TG_OPT_ADAM);
    run_epochs(&a, 0, 2);
    cr_assert_eq(tg_save(a.ctx, in_dir("m.safetensors")), 0);
    run_epochs(&a, 2, EPOCHS);
    hashes(&a, ha);
    run_make(&c, 42, TG_OPT_ADAM);
    cr_assert_eq(tg_load(c.ctx, in_dir("m.safetensors")), 0);
    run_epochs(&c, 2, EPOCHS);
    hashes(&c, hc);
    cr_assert_neq(ha[0], hc[0]);
    run_free(&a);
    run_free(&c);
}

static void expect_refused(run *r, const char *path, const char *msg)
{
    uint64_t before = tg_hash(tg_param_at(r->ctx, 0));
    int64_t steps = tg_optim_step_count(r->opt), epoch = -5;
    cr_assert_eq(tg_resume_load(r->ctx, path, r->opt, &r->b, &epoch), -1);
    cr_assert_not_null(strstr(tg_errmsg(r->ctx), msg), "'%s' does not say '%s'", tg_errmsg(r->ctx), msg);
    cr_assert_eq(epoch, -5, "nothing changed");
    cr_assert_eq(tg_optim_step_count(r->opt), steps);
    cr_assert_eq(tg_hash(tg_param_at(r->ctx, 0)), before);
    tg_clear_error(r->ctx);
}

Test(resume, mismatches_and_damage_are_refused)
{
    run a, other;
    run_make(&a, 1, TG_OPT_ADAM);
    run_epochs(&a, 0, 1);
    const char *path = in_dir("r.resume");
    cr_assert_eq(tg_resume_save(a.ctx, path, a.opt, &a.b, 1), 0);

    run_make(&other, 1, TG_OPT_SGD);
    expect_refused(&other, path, "tg_resume_load: ");
    expect_refused(&other, path, "the optimiser state is adam's, the optimiser is sgd");
    run_free(&other);

    /* a flipped byte */
    FILE *f = fopen(path, "r+b");
    fseek(f, -20, SEEK_END);
    int ch = fgetc(f);
    fseek(f, -20, SEEK_END);
    fputc(ch ^ 1, f);
    fclose(f);
    expect_refused(&a, path, "checksum mismatch");
    /* truncated, not a resume file, missing */
    cr_assert_eq(truncate(path, 10), 0);
    expect_refused(&a, path, "too short for a resume file");
    f = fopen(path, "wb");
    fputs("0123456789abcdefghijklmnopqrstuvwxyz", f);
    fclose(f);
    expect_refused(&a, path, "not a resume file");
    expect_refused(&a, in_dir("missing"), "cannot open");
    /* a batcher of another size */
    cr_assert_eq(tg_resume_save(a.ctx, path, a.opt, &a.b, 1), 0);
    tg_batcher_free(&a.b);
    cr_assert_eq(tg_batcher_init(&a.b, a.ctx, a.ds, 12, TG_BATCH_SHUFFLE), 0);
    expect_refused(&a, path, "the batcher state is for 96 samples in batches of 10");
    /* a save into a missing directory */
    cr_assert_eq(tg_resume_save(a.ctx, "/nonexistent-dir/r.resume", a.opt, NULL, 0), -1);
    cr_assert_not_null(strstr(tg_errmsg(a.ctx), "tg_resume_save: cannot write"));
    tg_clear_error(a.ctx);
    run_free(&a);
}
