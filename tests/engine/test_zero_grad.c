/* SPDX-License-Identifier: MIT */
/* tests/engine/test_zero_grad.c: tg_zero_grad leaves a parameter's zeros to
 * backward's first writer (TGI_GRAD_PENDING) and writes them before anything
 * else reads the gradient. Whatever reads it sees exactly what an eager clear
 * gave: tg_grad, tg_grad_acc, a second backward, a parameter backward does not
 * reach, the optimisers, clipping, and whole training steps bit for bit against
 * a twin context whose gradients are cleared at once (TGI_GRAD_SEEN, as for a
 * parameter whose gradient pointer the caller holds). Gradients are filled with
 * garbage through their storage first, so a missed clear shows. */
#include <criterion/criterion.h>

#include <math.h>
#include <stdint.h>
#include <string.h>

#include "internal.h" /* the flags, and the storage to fill with garbage */
#include "tapegrad.h"

/* the public functions (which mark a parameter as held), not internal.h's inline ones */
#undef tg_grad
#undef tg_grad_acc
#undef tg_ok

#define CHECK_OK(c) cr_assert(tg_ok(c), "tapegrad error: %s", tg_errmsg(c))

static tg_ctx *ctx;
static void setup(void) { ctx = tg_ctx_new(11); }
static void teardown(void) { tg_ctx_free(ctx); }
TestSuite(zero_grad, .init = setup, .fini = teardown);

/* a parameter of shape [r,c] (c 0: [r]) filled uniformly in [-1,1) */
static tg_tensor *param(tg_ctx *c, const char *name, int64_t r, int64_t cols) {
    int64_t shape[2] = {r, cols};
    tg_tensor *p = tg_param(c, name, TG_F32, cols ? 2 : 1, shape);
    cr_assert_not_null(p, "%s", tg_errmsg(c));
    tg_fill_uniform(c, p, -1.0, 1.0);
    return p;
}

/* every element of the gradient's storage to a large value, without tg_grad (which
 * would mark the parameter as held by the caller) */
static void garbage(tg_tensor *p) {
    float *g = p->grad_store;
    for (int64_t i = 0; i < p->numel; i++) g[i] = 1e30f;
}

static void assert_zeros(const float *g, int64_t n, const char *what) {
    cr_assert_not_null(g, "%s: no gradient", what);
    for (int64_t i = 0; i < n; i++) cr_assert_eq(g[i], 0.0f, "%s: [%lld] = %g", what, (long long)i, g[i]);
}

/* loss = sum(relu(x w + b)) for a fixed x [8,in] */
static tg_tensor *loss_of(tg_ctx *c, tg_tensor *w, tg_tensor *b) {
    tg_tensor *x = tg_new(c, TG_F32, 2, (int64_t[]){8, tg_dim(w, 0)});
    float *xd = tg_data(x);
    for (int64_t i = 0; i < tg_numel(x); i++) xd[i] = (float)((i * 37 % 19) - 9) / 8.0f;
    return tg_sum(c, tg_linear(c, x, w, b, TG_ACT_RELU));
}

Test(zero_grad, grad_after_zero_grad_is_zeros) {
    tg_tensor *w = param(ctx, "w", 40, 24), *b = param(ctx, "b", 24, 0);
    tg_backward(ctx, loss_of(ctx, w, b));
    CHECK_OK(ctx);
    tg_reset(ctx);
    garbage(w);
    garbage(b);
    tg_zero_grad(ctx);
    cr_assert(w->flags & TGI_GRAD_PENDING, "the clear was not left to the first writer");
    assert_zeros(tg_grad(w), tg_numel(w), "w");
    assert_zeros(tg_grad(b), tg_numel(b), "b");
    cr_assert_eq(tg_grad(w), w->grad_store, "the gradient moved");
    /* the caller holds the pointer now: the next clear is done at once */
    garbage(w);
    tg_zero_grad(ctx);
    cr_assert(!(w->flags & TGI_GRAD_PENDING));
    assert_zeros(w->grad_store, tg_numel(w), "w held");
}

Test(zero_grad, grad_acc_after_zero_grad_adds_onto_zeros) {
    tg_tensor *w = param(ctx, "w", 16, 0);
    tg_backward(ctx, tg_sum(ctx, w));
    tg_reset(ctx);
    garbage(w);
    tg_zero_grad(ctx);
    cr_assert(w->flags & TGI_GRAD_PENDING);
    float *g = tg_grad_acc(w);
    assert_zeros(g, 16, "tg_grad_acc");
    g[3] += 2.0f;
    /* a backward after it adds onto what tg_grad_acc's caller wrote */
    tg_backward(ctx, tg_sum(ctx, w));
    CHECK_OK(ctx);
    for (int i = 0; i < 16; i++) cr_assert_eq(g[i], i == 3 ? 3.0f : 1.0f, "[%d] = %g", i, g[i]);
}

Test(zero_grad, second_backward_adds_twice) {
    tg_tensor *w = param(ctx, "w", 40, 24), *b = param(ctx, "b", 24, 0);
    /* once, from cleared gradients held by the caller: the reference */
    tg_tensor *l = loss_of(ctx, w, b);
    tg_backward(ctx, l);
    float ref[40 * 24];
    memcpy(ref, tg_grad(w), sizeof ref);
    tg_reset(ctx);
    w->flags &= ~(uint32_t)TGI_GRAD_SEEN;
    garbage(w);
    tg_zero_grad(ctx);
    cr_assert(w->flags & TGI_GRAD_PENDING);
    l = loss_of(ctx, w, b);
    tg_backward(ctx, l);
    tg_backward(ctx, l);
    CHECK_OK(ctx);
    const float *g = tg_grad(w);
    for (int i = 0; i < 40 * 24; i++) cr_assert_eq(g[i], ref[i] + ref[i], "[%d]: %g, once %g", i, g[i], ref[i]);
}

/* plain SGD with weight decay over every parameter */
static tg_optim *sgd_decay(double lr, double wd) {
    tg_optim_opts o = tg_optim_defaults(TG_OPT_SGD);
    o.lr = lr;
    o.weight_decay = wd;
    tg_optim *opt = tg_optim_new(ctx, &o, NULL, 0);
    cr_assert_not_null(opt, "%s", tg_errmsg(ctx));
    return opt;
}

/* u is `before` stepped once by sgd_decay(lr, wd) with a zero gradient */
static void assert_decayed(const tg_tensor *u, const float *before, float lr, float wd) {
    const float *x = tg_data(u);
    for (int64_t i = 0; i < tg_numel(u); i++) {
        const float want = before[i] - lr * (0.0f + wd * before[i]);
        cr_assert_eq(x[i], want, "u[%lld] = %.9g, want %.9g", (long long)i, x[i], want);
    }
}

/* an unreached parameter: zeros after backward, stepped by SGD with weight decay
 * (docs/optim.md), exactly as with an eager clear */
Test(zero_grad, unreached_parameter_is_zero_and_stepped) {
    tg_tensor *w = param(ctx, "w", 16, 0), *u = param(ctx, "u", 33, 0);
    tg_backward(ctx, tg_add(ctx, tg_sum(ctx, w), tg_sum(ctx, u))); /* both have a gradient */
    tg_reset(ctx);
    garbage(u);
    float before[33];
    memcpy(before, tg_data(u), sizeof before);
    tg_optim *opt = sgd_decay(0.1, 0.5);
    tg_zero_grad(ctx);
    cr_assert(u->flags & TGI_GRAD_PENDING);
    tg_backward(ctx, tg_sum(ctx, w)); /* u is not reached */
    CHECK_OK(ctx);
    cr_assert(!(u->flags & TGI_GRAD_PENDING), "backward left a pending gradient");
    assert_zeros(u->grad, 33, "u after backward");
    cr_assert_eq(tg_optim_step(opt), 0);
    assert_decayed(u, before, 0.1f, 0.5f);
    tg_optim_free(opt);
}

/* zero and step with no backward between: the optimiser steps zeros */
Test(zero_grad, step_without_backward_steps_zeros) {
    tg_tensor *u = param(ctx, "u", 21, 0);
    tg_backward(ctx, tg_sum(ctx, u));
    tg_reset(ctx);
    garbage(u);
    float before[21];
    memcpy(before, tg_data(u), sizeof before);
    tg_zero_grad(ctx);
    cr_assert_eq(tg_clip_grad_norm(ctx, NULL, 0, 1.0), 0.0, "clipping saw old values");
    garbage(u);
    tg_zero_grad(ctx);
    cr_assert_eq(tg_sgd_step(ctx, 0.5), 0);
    cr_assert_eq(memcmp(tg_data(u), before, sizeof before), 0, "tg_sgd_step moved u by old values");
    assert_zeros(u->grad, 21, "u after tg_sgd_step");
    garbage(u);
    tg_zero_grad(ctx);
    tg_optim *opt = sgd_decay(0.25, 0.5);
    cr_assert_eq(tg_optim_step_shard(opt, 1, 2), 0);
    cr_assert_eq(tg_optim_step_shard(opt, 0, 2), 0);
    assert_decayed(u, before, 0.25f, 0.5f);
    tg_optim_free(opt);
}

/* a parameter no gradient ever reached stays without one */
Test(zero_grad, no_gradient_stays_none) {
    tg_tensor *w = param(ctx, "w", 5, 0);
    tg_zero_grad(ctx);
    cr_assert_null(tg_grad(w));
    cr_assert(!(w->flags & TGI_GRAD_PENDING));
}

/* ---- whole training steps against a twin cleared at once ---- */

typedef struct {
    tg_ctx *c;
    tg_tensor *w1, *b1, *w2, *b2, *unused;
    tg_optim *opt;
    uint64_t grows;
} net;

static void net_init(net *n, int threads, int eager) {
    n->c = tg_ctx_new(5);
    cr_assert_not_null(n->c);
    cr_assert_eq(tg_set_threads(n->c, threads), 0);
    n->w1 = param(n->c, "w1", 96, 160);
    n->b1 = param(n->c, "b1", 160, 0);
    n->w2 = param(n->c, "w2", 160, 10);
    n->b2 = param(n->c, "b2", 10, 0);
    n->unused = param(n->c, "unused", 7, 3);
    tg_optim_opts o = tg_optim_defaults(TG_OPT_ADAMW);
    o.lr = 0.01;
    n->opt = tg_optim_new(n->c, &o, NULL, 0);
    cr_assert_not_null(n->opt, "%s", tg_errmsg(n->c));
    if (eager)
        for (int i = 0; i < tg_param_count(n->c); i++) tg_grad(tg_param_at(n->c, i));
}

/* one step; on step 0 the unused parameter is reached too */
static void net_step(net *n, int step) {
    tg_ctx *c = n->c;
    tg_tensor *x = tg_new(c, TG_F32, 2, (int64_t[]){32, 96});
    float *xd = tg_data(x);
    for (int64_t i = 0; i < tg_numel(x); i++) xd[i] = (float)(((i + step) * 29 % 23) - 11) / 7.0f;
    tg_tensor *y = tg_new(c, TG_I32, 1, (int64_t[]){32});
    int32_t *yd = tg_data(y);
    for (int i = 0; i < 32; i++) yd[i] = (i * 7 + step) % 10;
    tg_tensor *h = tg_linear(c, x, n->w1, n->b1, TG_ACT_RELU);
    tg_tensor *loss = tg_cross_entropy(c, tg_linear(c, h, n->w2, n->b2, TG_ACT_NONE), y);
    if (step == 0) loss = tg_add(c, loss, tg_sum(c, n->unused));
    tg_zero_grad(c);
    tg_backward(c, loss);
    tg_optim_step(n->opt);
    CHECK_OK(c);
    tg_reset(c);
}

static void net_free(net *n) {
    tg_optim_free(n->opt);
    tg_ctx_free(n->c);
}

Test(zero_grad, training_steps_bit_identical_to_eager_clear) {
    net ref;
    net_init(&ref, 1, 1);
    for (int s = 0; s < 4; s++) net_step(&ref, s);
    for (int threads = 1; threads <= 2; threads++) {
        net lazy;
        net_init(&lazy, threads, 0);
        tg_mem_stats m0, m1;
        for (int s = 0; s < 4; s++) {
            if (s == 3) tg_mem_stats_get(lazy.c, &m0);
            net_step(&lazy, s);
        }
        tg_mem_stats_get(lazy.c, &m1);
        cr_assert_eq(m1.arena_grows, m0.arena_grows, "a warm step allocated");
        cr_assert(!(lazy.w1->flags & TGI_GRAD_SEEN), "the twin under test was cleared at once");
        for (int i = 0; i < tg_param_count(ref.c); i++) {
            tg_tensor *a = tg_param_at(ref.c, i), *b = tg_param_at(lazy.c, i);
            cr_assert_eq(tg_hash(a), tg_hash(b), "%d threads: %s differs", threads, tg_name(a));
            cr_assert_eq(memcmp(tg_grad(a), tg_grad(b), tgi_bytes(a)), 0, "%d threads: grad of %s differs",
                         threads, tg_name(a));
        }
        net_free(&lazy);
    }
    net_free(&ref);
}
