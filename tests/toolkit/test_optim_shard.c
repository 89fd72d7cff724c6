/* SPDX-License-Identifier: MIT */
/* test_optim_shard.c: an optimiser's step taken by shards (tg_optim_step_shard)
 * and its state moved elsewhere (tg_optim_move_state): what tg_mpi_step builds
 * on, checked in one process. The shards of a step, in any order, must give
 * the bits of tg_optim_step, for every update rule and both dtypes, with the
 * state where it was moved; the moved state goes back with its values; a
 * moved optimiser refuses tg_optim_step; bad shards are errors. */
#include <criterion/criterion.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "tapegrad.h"
#include "tg_test.h"

/* parameter sizes: below a cache line, a few lines, and more than TGI_PAR_MIN */
static const int64_t SIZES[] = {5, 333, 70001};
#define NP 3
#define STEPS 4

/* the same parameters, in f32 and f64 alternately, in a context of their own */
static tg_ctx *make_ctx(tg_tensor **p) {
    tg_ctx *c = tg_ctx_new(7);
    for (int i = 0; i < NP; i++) {
        char name[16];
        snprintf(name, sizeof name, "p%d", i);
        p[i] = tg_param(c, name, i % 2 ? TG_F64 : TG_F32, 1, &SIZES[i]);
        for (int64_t k = 0; k < SIZES[i]; k++) set_at(p[i], k, sin(0.37 * (double)k + i));
    }
    return c;
}

/* gradient of step s: a function of the parameter's value, index and s */
static void set_grads(tg_tensor **p, int s) {
    for (int i = 0; i < NP; i++) {
        void *g = tg_grad_acc(p[i]);
        cr_assert_not_null(g);
        for (int64_t k = 0; k < SIZES[i]; k++) {
            double v = 0.5 * at(p[i], k) + cos(0.11 * (double)k * (s + 1) + i);
            if (i % 2) ((double *)g)[k] = v;
            else ((float *)g)[k] = (float)v;
        }
    }
}

static void assert_params_equal(tg_tensor **a, tg_tensor **b, const char *what, int s) {
    for (int i = 0; i < NP; i++)
        cr_assert(!memcmp(tg_data(a[i]), tg_data(b[i]),
                          (size_t)SIZES[i] * tg_dtype_size(tg_dtype_of(a[i]))),
                  "%s: parameter %d differs after step %d", what, i, s);
}

/* As tg_mpi_step uses them: one optimiser per shard (per rank), over the same
 * parameters (shared memory) and one state, moved into mem by each, the first
 * with its values; each step, optimiser k updates shard k. */
#define NSHARDS 3
static void check_rule(tg_optim_opts o, const char *what) {
    tg_tensor *pa[NP], *pb[NP];
    tg_ctx *ca = make_ctx(pa), *cb = make_ctx(pb);
    tg_optim *a = tg_optim_new(ca, &o, NULL, 0), *b[NSHARDS];
    cr_assert_not_null(a, "%s: %s", what, tg_errmsg(ca));
    size_t bytes = tg_optim_state_bytes(a);
    void *mem = bytes ? aligned_alloc(64, bytes) : NULL;
    for (int k = 0; k < NSHARDS; k++) {
        b[k] = tg_optim_new(cb, &o, NULL, 0);
        cr_assert(b[k] && tg_optim_state_bytes(b[k]) == bytes, "%s", tg_errmsg(cb));
        cr_assert(tg_optim_move_state(b[k], mem, k == 0) == 0, "%s: %s", what, tg_errmsg(cb));
    }
    for (int s = 0; s < STEPS; s++) {
        set_grads(pa, s);
        set_grads(pb, s);
        cr_assert(tg_optim_step(a) == 0);
        for (int k = NSHARDS - 1; k >= 0; k--) /* any order */
            cr_assert(tg_optim_step_shard(b[k], k, NSHARDS) == 0, "%s: %s", what, tg_errmsg(cb));
        assert_params_equal(pa, pb, what, s);
    }
    /* the state goes back with its values: the next whole steps agree too */
    cr_assert(tg_optim_move_state(b[0], NULL, 1) == 0);
    if (mem) memset(mem, 0xff, bytes); /* nothing may still read it */
    for (int s = STEPS; s < STEPS + 2; s++) {
        set_grads(pa, s);
        set_grads(pb, s);
        cr_assert(tg_optim_step(a) == 0 && tg_optim_step(b[0]) == 0, "%s: %s", what,
                  tg_errmsg(cb));
        assert_params_equal(pa, pb, what, s);
    }
    cr_assert_eq(tg_optim_step_count(b[0]), STEPS + 2, "%s: a shard's step counts as a step",
                 what);
    free(mem);
    tg_optim_free(a);
    for (int k = 0; k < NSHARDS; k++) tg_optim_free(b[k]);
    tg_ctx_free(ca);
    tg_ctx_free(cb);
}

Test(optim_shard, shards_give_the_bits_of_one_step) {
    tg_optim_opts o = tg_optim_defaults(TG_OPT_SGD);
    o.lr = 0.05;
    check_rule(o, "sgd");
    o.momentum = 0.9;
    o.nesterov = 1;
    o.weight_decay = 0.01;
    check_rule(o, "sgd nesterov");
    o = tg_optim_defaults(TG_OPT_RMSPROP);
    o.centered = 1;
    o.momentum = 0.5;
    check_rule(o, "rmsprop centered");
    o = tg_optim_defaults(TG_OPT_ADAM);
    check_rule(o, "adam");
    o.amsgrad = 1;
    check_rule(o, "adam amsgrad");
    o = tg_optim_defaults(TG_OPT_ADAMW);
    check_rule(o, "adamw");
}

Test(optim_shard, a_moved_state_refuses_the_whole_step) {
    tg_tensor *p[NP];
    tg_ctx *c = make_ctx(p);
    tg_optim_opts o = tg_optim_defaults(TG_OPT_ADAM);
    tg_optim *opt = tg_optim_new(c, &o, NULL, 0);
    size_t bytes = tg_optim_state_bytes(opt);
    cr_assert_gt(bytes, 0);
    void *mem = aligned_alloc(64, bytes);
    cr_assert(tg_optim_move_state(opt, mem, 1) == 0);
    set_grads(p, 0);
    double before = at(p[1], 3);
    cr_assert_eq(tg_optim_step(opt), -1);
    assert_err(c, "whole step while moved", "tg_optim_step", "tg_optim_move_state", NULL);
    cr_assert_eq(at(p[1], 3), before, "nothing moved");
    cr_assert_eq(tg_optim_step_count(opt), 0);
    cr_assert(tg_optim_move_state(opt, NULL, 1) == 0);
    cr_assert(tg_optim_step(opt) == 0, "%s", tg_errmsg(c));
    free(mem);
    tg_optim_free(opt);
    tg_ctx_free(c);
}

Test(optim_shard, bad_shards_and_memory_are_errors) {
    tg_tensor *p[NP];
    tg_ctx *c = make_ctx(p);
    tg_optim_opts o = tg_optim_defaults(TG_OPT_SGD);
    o.momentum = 0.9;
    tg_optim *opt = tg_optim_new(c, &o, NULL, 0);
    set_grads(p, 0);
    const int bad[][2] = {{-1, 2}, {2, 2}, {0, 0}, {3, -1}};
    for (size_t k = 0; k < sizeof bad / sizeof bad[0]; k++) {
        char want[64];
        snprintf(want, sizeof want, "shard %d of %d", bad[k][0], bad[k][1]);
        cr_assert_eq(tg_optim_step_shard(opt, bad[k][0], bad[k][1]), -1);
        assert_err(c, want, "tg_optim_step_shard", want, NULL);
    }
    cr_assert_eq(tg_optim_step_count(opt), 0);
    unsigned char *mem = aligned_alloc(64, tg_optim_state_bytes(opt) + 64);
    cr_assert_eq(tg_optim_move_state(opt, mem + 8, 1), -1);
    assert_err(c, "misaligned", "tg_optim_move_state", "64-byte aligned", NULL);
    cr_assert(tg_optim_step(opt) == 0, "the state did not move: %s", tg_errmsg(c));
    cr_assert_eq(tg_optim_step_shard(NULL, 0, 1), -1);
    cr_assert_eq(tg_optim_move_state(NULL, NULL, 1), -1);
    cr_assert_eq(tg_optim_state_bytes(NULL), 0);
    free(mem);
    tg_optim_free(opt);
    tg_ctx_free(c);
}
