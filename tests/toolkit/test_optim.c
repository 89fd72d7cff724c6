/* SPDX-License-Identifier: MIT */
/* test_optim.c: optimisers (SGD, RMSprop, Adam, AdamW), gradient clipping and
 * learning-rate schedules.
 *
 * The expected trajectories were computed once with PyTorch 1.13's optimisers
 * (torch.optim.*, foreach=False) by tests/optim_reference.py, which writes
 * tests/optim_reference.h; the test does not need torch. The problem they solve: parameters
 * p = [0.5, -1.2, 2.0] and q = [1.0, -0.5] with gradients grad p = c p + d and
 * grad q = e q + f (the gradient of a separable quadratic), evaluated at the
 * current parameters before each step; in the "skip" cases q has no gradient
 * at the second step, so PyTorch neither moves it nor advances its state. */
#include <criterion/criterion.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h" /* drop_grad: set a grad back to NULL (set_to_none) */
#include "tapegrad.h"
#include "tg_test.h"

#include "optim_reference.h" /* PyTorch's trajectories, schedules and clipping */

/* ---- the reference problem ------------------------------------------------- */

static const double P0[3] = {0.5, -1.2, 2.0}, Q0[2] = {1.0, -0.5};
static const double C[3] = {1.0, 2.0, 0.5}, D[3] = {0.3, -0.4, 0.1};
static const double E[2] = {1.5, 0.7}, F[2] = {-0.2, 0.25};

static double get(const tg_tensor *t, int i) {
    return tg_dtype_of(t) == TG_F32 ? ((float *)tg_data(t))[i] : ((double *)tg_data(t))[i];
}
static void set(tg_tensor *t, int i, double v) {
    if (tg_dtype_of(t) == TG_F32)
        ((float *)tg_data(t))[i] = (float)v;
    else
        ((double *)tg_data(t))[i] = v;
}
/* grad = a * x + b, written into t's gradient buffer */
static void set_grad_affine(tg_tensor *t, const double *a, const double *b) {
    void *g = tg_grad_acc(t);
    cr_assert_not_null(g);
    for (int i = 0; i < tg_numel(t); i++) {
        double v = a[i] * get(t, i) + b[i];
        if (tg_dtype_of(t) == TG_F32)
            ((float *)g)[i] = (float)v;
        else
            ((double *)g)[i] = v;
    }
}
/* What PyTorch's zero_grad(set_to_none=True) does: no gradient at all, so the
 * optimiser skips the parameter. (tg_zero_grad's doc comment promises this;
 * the tests set it directly so they test the optimiser alone.) */
static void drop_grad(tg_tensor *t) { t->grad = NULL; }

/* options that differ from tg_optim_defaults; 0 keeps the default */
typedef struct {
    double lr, momentum, dampening, weight_decay, alpha, beta1, beta2;
    int nesterov, centered, amsgrad;
} tweaks;

static tg_optim_opts tweaked(tg_opt_kind kind, const tweaks *t) {
    tg_optim_opts o = tg_optim_defaults(kind);
#define TWEAK(f) o.f = t->f ? t->f : o.f
    TWEAK(lr), TWEAK(momentum), TWEAK(dampening), TWEAK(weight_decay), TWEAK(alpha);
    TWEAK(beta1), TWEAK(beta2), TWEAK(nesterov), TWEAK(centered), TWEAK(amsgrad);
#undef TWEAK
    return o;
}

typedef struct {
    const char *name;
    tg_opt_kind kind;
    tweaks t;
    const double (*ref)[5];
    int skip; /* q has no gradient at step 2 */
} optim_case;

/* the cases of tests/optim_reference.py */
static const optim_case CASES[] = {
    {"sgd plain", TG_OPT_SGD, {.lr = 0.1}, ref_sgd_plain, 0},
    {"sgd momentum+wd", TG_OPT_SGD, {.lr = 0.1, .momentum = 0.9, .weight_decay = 0.01},
     ref_sgd_momentum_wd, 0},
    {"sgd dampening", TG_OPT_SGD, {.lr = 0.1, .momentum = 0.8, .dampening = 0.5},
     ref_sgd_dampening, 0},
    {"sgd nesterov+wd", TG_OPT_SGD,
     {.lr = 0.1, .momentum = 0.9, .weight_decay = 0.01, .nesterov = 1}, ref_sgd_nesterov_wd, 0},
    {"sgd momentum, q skipped", TG_OPT_SGD, {.lr = 0.1, .momentum = 0.9}, ref_sgd_momentum_skip,
     1},
    {"rmsprop default", TG_OPT_RMSPROP, {.lr = 0}, ref_rmsprop_default, 0},
    {"rmsprop centered+momentum+wd", TG_OPT_RMSPROP,
     {.lr = 0.01, .alpha = 0.9, .momentum = 0.9, .centered = 1, .weight_decay = 0.1},
     ref_rmsprop_centered_momentum_wd, 0},
    {"rmsprop momentum", TG_OPT_RMSPROP, {.lr = 0.02, .momentum = 0.5}, ref_rmsprop_momentum, 0},
    {"rmsprop centered", TG_OPT_RMSPROP, {.lr = 0.02, .centered = 1}, ref_rmsprop_centered, 0},
    {"adam default", TG_OPT_ADAM, {.lr = 0}, ref_adam_default, 0},
    {"adam wd", TG_OPT_ADAM, {.lr = 0.1, .weight_decay = 0.1}, ref_adam_wd, 0},
    {"adam amsgrad", TG_OPT_ADAM, {.lr = 0.1, .beta1 = 0.8, .beta2 = 0.9, .amsgrad = 1},
     ref_adam_amsgrad, 0},
    {"adam, q skipped", TG_OPT_ADAM, {.lr = 0.1}, ref_adam_skip, 1},
    {"adamw default", TG_OPT_ADAMW, {.lr = 0}, ref_adamw_default, 0},
    {"adamw wd", TG_OPT_ADAMW, {.lr = 0.1, .weight_decay = 0.1}, ref_adamw_wd, 0},
    {"adamw amsgrad", TG_OPT_ADAMW, {.lr = 0.1, .weight_decay = 0.05, .amsgrad = 1},
     ref_adamw_amsgrad, 0},
};

static void run_case(const optim_case *k, tg_dtype dt) {
    tg_ctx *ctx = tg_ctx_new(1);
    tg_tensor *p = tg_param(ctx, "p", dt, 1, (int64_t[]){3});
    tg_tensor *q = tg_param(ctx, "q", dt, 1, (int64_t[]){2});
    for (int i = 0; i < 3; i++) set(p, i, P0[i]);
    for (int i = 0; i < 2; i++) set(q, i, Q0[i]);
    tg_optim_opts o = tweaked(k->kind, &k->t);
    tg_optim *opt = tg_optim_new(ctx, &o, NULL, 0);
    cr_assert_not_null(opt, "%s: %s", k->name, tg_errmsg(ctx));
    /* f64 follows PyTorch's float64 trajectory to rounding; f32 to float precision */
    double tol = dt == TG_F64 ? 1e-13 : 2e-6;
    for (int step = 0; step < 4; step++) {
        drop_grad(p);
        drop_grad(q);
        set_grad_affine(p, C, D);
        if (!(k->skip && step == 1)) set_grad_affine(q, E, F);
        cr_assert_eq(tg_optim_step(opt), 0, "%s", k->name);
        for (int i = 0; i < 5; i++) {
            double got = i < 3 ? get(p, i) : get(q, i - 3);
            double want = k->ref[step][i];
            cr_assert(fabs(got - want) <= tol * (1 + fabs(want)),
                      "%s %s step %d element %d: got %.17g, PyTorch %.17g", k->name,
                      tg_dtype_name(dt), step + 1, i, got, want);
        }
    }
    cr_assert_eq(tg_optim_step_count(opt), 4);
    cr_assert(tg_ok(ctx), "%s", tg_errmsg(ctx));
    tg_optim_free(opt);
    tg_ctx_free(ctx);
}

/* every case of CASES for the optimiser kind, in f64 and f32; n of them */
static void run_cases(tg_opt_kind kind, int n) {
    int ran = 0;
    for (size_t i = 0; i < sizeof CASES / sizeof CASES[0]; i++) {
        if (CASES[i].kind != kind) continue;
        run_case(&CASES[i], TG_F64);
        run_case(&CASES[i], TG_F32);
        ran++;
    }
    cr_assert_eq(ran, n, "%d cases of %s", ran, tg_optim_kind_name(kind));
}

/* ---- defaults -------------------------------------------------------------- */

Test(optim, defaults_are_pytorchs) {
    tg_optim_opts s = tg_optim_defaults(TG_OPT_SGD);
    cr_assert_eq(s.kind, TG_OPT_SGD);
    cr_assert_eq(s.lr, 0.01);
    cr_assert(s.momentum == 0 && s.dampening == 0 && s.weight_decay == 0 && !s.nesterov);
    tg_optim_opts r = tg_optim_defaults(TG_OPT_RMSPROP);
    cr_assert(r.lr == 1e-2 && r.alpha == 0.99 && r.eps == 1e-8 && r.weight_decay == 0 &&
              r.momentum == 0 && !r.centered);
    tg_optim_opts a = tg_optim_defaults(TG_OPT_ADAM);
    cr_assert(a.lr == 1e-3 && a.beta1 == 0.9 && a.beta2 == 0.999 && a.eps == 1e-8 &&
              a.weight_decay == 0 && !a.amsgrad);
    tg_optim_opts w = tg_optim_defaults(TG_OPT_ADAMW);
    cr_assert(w.lr == 1e-3 && w.beta1 == 0.9 && w.beta2 == 0.999 && w.eps == 1e-8 &&
              w.weight_decay == 1e-2 && !w.amsgrad);
    cr_assert_str_eq(tg_optim_kind_name(TG_OPT_ADAMW), "adamw");
    cr_assert_str_eq(tg_optim_kind_name((tg_opt_kind)42), "?");
}

/* ---- each optimiser against PyTorch ------------------------------------------ */

Test(optim, sgd_matches_pytorch) { run_cases(TG_OPT_SGD, 5); }

Test(optim, rmsprop_matches_pytorch) { run_cases(TG_OPT_RMSPROP, 4); }

Test(optim, adam_matches_pytorch) { run_cases(TG_OPT_ADAM, 4); }

Test(optim, adamw_matches_pytorch) { run_cases(TG_OPT_ADAMW, 3); }

/* ---- skipping, subsets, lr --------------------------------------------------- */

/* a new parameter [n] of ctx, every value 1 */
static tg_tensor *ones_param(tg_ctx *ctx, const char *name, tg_dtype dt, int64_t n) {
    tg_tensor *t = tg_param(ctx, name, dt, 1, &n);
    cr_assert_not_null(t, "%s", tg_errmsg(ctx));
    tg_fill(t, 1.0);
    return t;
}

Test(optim, param_without_grad_is_untouched) {
    tg_ctx *ctx = tg_ctx_new(1);
    tg_tensor *a = ones_param(ctx, "a", TG_F64, 2), *b = ones_param(ctx, "b", TG_F64, 2);
    for (int kind = 0; kind < TG_OPT_COUNT; kind++) {
        tg_optim_opts o = tg_optim_defaults((tg_opt_kind)kind);
        o.weight_decay = 0.1; /* even decay must not touch b */
        o.momentum = kind == TG_OPT_SGD || kind == TG_OPT_RMSPROP ? 0.9 : 0;
        tg_optim *opt = tg_optim_new(ctx, &o, NULL, 0);
        cr_assert_not_null(opt, "%s", tg_errmsg(ctx));
        double *g = tg_grad_acc(a);
        g[0] = 1.0, g[1] = -1.0;
        cr_assert_null(tg_grad(b));
        double a0 = ((double *)tg_data(a))[0];
        for (int s = 0; s < 3; s++) cr_assert_eq(tg_optim_step(opt), 0);
        cr_assert_lt(((double *)tg_data(a))[0], a0, "%s moved a", tg_optim_kind_name(kind));
        cr_assert_eq(((double *)tg_data(b))[0], 1.0, "%s: b has no grad", tg_optim_kind_name(kind));
        cr_assert_eq(((double *)tg_data(b))[1], 1.0);
        tg_optim_free(opt);
    }
    tg_ctx_free(ctx);
}

#if defined(__x86_64__)
#include <xmmintrin.h>
/* The sweeps flush subnormals (src/toolkit/optim.c: x86's microcode assists made a Fashion-MNIST
 * Adam step twice as slow). A subnormal gradient counts as 0, so a parameter at 0 stays
 * at +0; a tiny normal one still moves it; and the caller's SSE mode is left as it was.
 * Both the one-thread path and the threaded one (a parameter above the threshold). */
Test(optim, subnormals_are_flushed_in_the_sweeps) {
    tg_ctx *ctx = tg_ctx_new(2);
    tg_set_threads(ctx, 2);
    enum { BIG = 1 << 17 };
    tg_tensor *small = tg_param(ctx, "small", TG_F32, 1, (int64_t[]){5});
    tg_tensor *big = tg_param(ctx, "big", TG_F32, 1, (int64_t[]){BIG});
    const tg_opt_kind kinds[3] = {TG_OPT_SGD, TG_OPT_RMSPROP, TG_OPT_ADAM};
    const unsigned int csr0 = _mm_getcsr();
    cr_assert_eq(csr0 & 0x8040u, 0u, "the test starts without FTZ/DAZ");
    for (int kk = 0; kk < 3; kk++) {
        for (int tiny_normal = 0; tiny_normal < 2; tiny_normal++) {
            const float gval = tiny_normal ? 1e-30f : 1e-39f; /* 1e-39: subnormal */
            tg_tensor *ps[2] = {small, big};
            for (int q = 0; q < 2; q++) {
                tg_fill(ps[q], 0.0);
                float *g = tg_grad_acc(ps[q]);
                for (int64_t i = 0; i < tg_numel(ps[q]); i++) g[i] = gval;
            }
            tg_optim_opts o = tg_optim_defaults(kinds[kk]);
            o.lr = 1e-3;
            tg_optim *opt = tg_optim_new(ctx, &o, NULL, 0);
            cr_assert_not_null(opt, "%s", tg_errmsg(ctx));
            cr_assert_eq(tg_optim_step(opt), 0, "%s", tg_errmsg(ctx));
            /* the mode (FTZ, DAZ, rounding, masks); bits 0-5 are sticky exception
             * flags that any floating-point code may raise */
            cr_assert_eq(_mm_getcsr() & ~0x3Fu, csr0 & ~0x3Fu, "%s left the SSE mode changed",
                         tg_optim_kind_name(kinds[kk]));
            for (int q = 0; q < 2; q++) {
                const float *p = tg_data(ps[q]);
                for (int64_t i = 0; i < tg_numel(ps[q]); i += 997) {
                    if (tiny_normal)
                        cr_assert_lt(p[i], 0.0f, "%s: a 1e-30 gradient moves p[%lld]",
                                     tg_optim_kind_name(kinds[kk]), (long long)i);
                    else
                        cr_assert(p[i] == 0.0f && !signbit(p[i]),
                                  "%s: a subnormal gradient moved p[%lld] to %a",
                                  tg_optim_kind_name(kinds[kk]), (long long)i, (double)p[i]);
                }
            }
            tg_optim_free(opt);
        }
    }
    tg_ctx_free(ctx);
}
#endif

Test(optim, explicit_subset_of_params) {
    tg_ctx *ctx = tg_ctx_new(1);
    tg_tensor *a = ones_param(ctx, "a", TG_F32, 3), *b = ones_param(ctx, "b", TG_F32, 3);
    float *ga = tg_grad_acc(a), *gb = tg_grad_acc(b);
    for (int i = 0; i < 3; i++) ga[i] = gb[i] = 1.0f;
    tg_optim_opts o = tg_optim_defaults(TG_OPT_SGD);
    o.lr = 0.5;
    tg_tensor *only[1] = {b};
    tg_optim *opt = tg_optim_new(ctx, &o, only, 1);
    cr_assert_not_null(opt, "%s", tg_errmsg(ctx));
    tg_optim_step(opt);
    cr_assert_eq(((float *)tg_data(a))[0], 1.0f, "a is not in the optimiser");
    cr_assert_eq(((float *)tg_data(b))[0], 0.5f);
    tg_optim_free(opt);
    /* "every parameter" means those that exist when the optimiser is made */
    opt = tg_optim_new(ctx, &o, NULL, 0);
    tg_tensor *late = tg_param(ctx, "late", TG_F32, 1, (int64_t[]){3});
    ((float *)tg_grad_acc(late))[0] = 1.0f;
    tg_optim_step(opt);
    cr_assert_eq(((float *)tg_data(a))[0], 0.5f);
    cr_assert_eq(((float *)tg_data(late))[0], 0.0f, "created after the optimiser: not in it");
    tg_optim_free(opt);
    tg_ctx_free(ctx);
}

Test(optim, set_lr_and_sgd_step) {
    tg_ctx *ctx = tg_ctx_new(1);
    tg_tensor *a = ones_param(ctx, "a", TG_F64, 1);
    ((double *)tg_grad_acc(a))[0] = 2.0;
    tg_optim_opts o = tg_optim_defaults(TG_OPT_SGD);
    tg_optim *opt = tg_optim_new(ctx, &o, NULL, 0);
    cr_assert_eq(tg_optim_get_lr(opt), 0.01);
    tg_optim_set_lr(opt, 0.25);
    cr_assert_eq(tg_optim_get_lr(opt), 0.25);
    cr_assert_eq(tg_optim_opts_of(opt)->lr, 0.25);
    tg_optim_step(opt);
    cr_assert_float_eq(((double *)tg_data(a))[0], 0.5, 1e-15);
    /* a bad lr is an error and keeps the old one */
    tg_optim_set_lr(opt, -1.0);
    cr_assert(!tg_ok(ctx));
    cr_assert(strstr(tg_errmsg(ctx), "tg_optim_set_lr: lr must be >= 0"), "%s", tg_errmsg(ctx));
    cr_assert_eq(tg_optim_get_lr(opt), 0.25);
    /* with an error recorded a step does nothing */
    cr_assert_eq(tg_optim_step(opt), -1);
    cr_assert_eq(((double *)tg_data(a))[0], 0.5);
    cr_assert_eq(tg_optim_step_count(opt), 1);
    tg_clear_error(ctx);
    tg_optim_set_lr(opt, NAN);
    cr_assert(!tg_ok(ctx));
    tg_clear_error(ctx);
    /* the convenience: plain descent on every parameter with a gradient */
    cr_assert_eq(tg_sgd_step(ctx, 0.1), 0);
    cr_assert_float_eq(((double *)tg_data(a))[0], 0.3, 1e-15);
    cr_assert_eq(tg_sgd_step(ctx, -0.1), -1);
    cr_assert(strstr(tg_errmsg(ctx), "tg_sgd_step"), "%s", tg_errmsg(ctx));
    cr_assert_eq(tg_sgd_step(NULL, 0.1), -1);
    tg_optim_free(opt);
    tg_ctx_free(ctx);
}

/* ---- errors ---------------------------------------------------------------------- */

static void expect_new_error(tg_ctx *ctx, tg_optim_opts o, tg_tensor *const *params, int n,
                             const char *msg) {
    tg_clear_error(ctx);
    tg_optim *opt = tg_optim_new(ctx, &o, params, n);
    cr_assert_null(opt, "expected an error: %s", msg);
    cr_assert(!tg_ok(ctx));
    cr_assert(strstr(tg_errmsg(ctx), msg), "message '%s' lacks '%s'", tg_errmsg(ctx), msg);
    cr_assert(strncmp(tg_errmsg(ctx), "tg_optim_new: ", 14) == 0, "%s", tg_errmsg(ctx));
    tg_clear_error(ctx);
}

Test(optim, bad_arguments_are_errors) {
    tg_ctx *ctx = tg_ctx_new(1);
    tg_optim_opts sgd = tg_optim_defaults(TG_OPT_SGD);
    expect_new_error(ctx, sgd, NULL, 0, "no parameters");
    tg_tensor *a = tg_param(ctx, "a", TG_F32, 1, (int64_t[]){2});
    cr_assert_null(tg_optim_new(NULL, &sgd, NULL, 0));
    cr_assert_null(tg_optim_new(ctx, NULL, NULL, 0));
    cr_assert(strstr(tg_errmsg(ctx), "tg_optim_new: argument o is NULL"), "%s", tg_errmsg(ctx));
    tg_clear_error(ctx);

    tg_optim_opts o = sgd;
    o.kind = TG_OPT_COUNT;
    expect_new_error(ctx, o, NULL, 0, "unknown optimiser kind 4");
    o = sgd, o.lr = -0.1;
    expect_new_error(ctx, o, NULL, 0, "sgd lr must be >= 0 and finite, got -0.1");
    o = sgd, o.lr = NAN;
    expect_new_error(ctx, o, NULL, 0, "lr must be");
    o = sgd, o.lr = INFINITY;
    expect_new_error(ctx, o, NULL, 0, "lr must be");
    o = sgd, o.momentum = -1;
    expect_new_error(ctx, o, NULL, 0, "momentum must be");
    o = sgd, o.weight_decay = -1;
    expect_new_error(ctx, o, NULL, 0, "weight_decay must be");
    o = sgd, o.nesterov = 1;
    expect_new_error(ctx, o, NULL, 0, "nesterov needs momentum > 0 and dampening 0");
    o = sgd, o.nesterov = 1, o.momentum = 0.9, o.dampening = 0.1;
    expect_new_error(ctx, o, NULL, 0, "nesterov needs");
    tg_optim_opts adam = tg_optim_defaults(TG_OPT_ADAM);
    o = adam, o.beta1 = 1.0;
    expect_new_error(ctx, o, NULL, 0, "adam beta1 must be in [0, 1)");
    o = adam, o.beta2 = -0.5;
    expect_new_error(ctx, o, NULL, 0, "beta2 must be in [0, 1)");
    o = adam, o.eps = -1e-8;
    expect_new_error(ctx, o, NULL, 0, "eps must be");
    tg_optim_opts rms = tg_optim_defaults(TG_OPT_RMSPROP);
    o = rms, o.alpha = -0.5;
    expect_new_error(ctx, o, NULL, 0, "rmsprop alpha must be");
    /* fields a kind does not use are ignored */
    o = sgd, o.beta1 = 7;
    tg_optim *ok = tg_optim_new(ctx, &o, NULL, 0);
    cr_assert_not_null(ok, "%s", tg_errmsg(ctx));
    tg_optim_free(ok);

    /* the parameter list */
    expect_new_error(ctx, sgd, NULL, 3, "params is NULL with n 3");
    tg_tensor *list[3] = {a, NULL, a};
    expect_new_error(ctx, sgd, list, -1, "n -1");
    expect_new_error(ctx, sgd, list, 2, "argument params[1] is NULL");
    list[1] = a;
    expect_new_error(ctx, sgd, list, 2, "parameter 'a' is given twice (params[0] and params[1])");
    tg_tensor *tmp = tg_new(ctx, TG_F32, 1, (int64_t[]){2});
    tg_set_requires_grad(tmp, 1);
    list[1] = tmp;
    expect_new_error(ctx, sgd, list, 2, "params[1] (f32 [2]) is not a parameter made by tg_param");
    tg_ctx *other = tg_ctx_new(2);
    list[1] = tg_param(other, "b", TG_F32, 1, (int64_t[]){2});
    expect_new_error(ctx, sgd, list, 2, "params[1] belongs to another context");
    tg_ctx_free(other);

    /* with an error recorded: NULL, message unchanged */
    tg_set_error(ctx, "earlier: boom");
    cr_assert_null(tg_optim_new(ctx, &sgd, NULL, 0));
    cr_assert_str_eq(tg_errmsg(ctx), "earlier: boom");
    tg_clear_error(ctx);

    /* NULL optimiser */
    cr_assert_eq(tg_optim_step(NULL), -1);
    cr_assert(isnan(tg_optim_get_lr(NULL)));
    cr_assert_eq(tg_optim_step_count(NULL), -1);
    cr_assert_null(tg_optim_opts_of(NULL));
    tg_optim_set_lr(NULL, 0.1);
    tg_optim_free(NULL);
    cr_assert(tg_ok(ctx));
    tg_ctx_free(ctx);
}

/* ---- memory: state allocated once, a step never allocates --------------------- */

typedef struct { long calls, budget; long long live; } counter;
static void *counting_alloc(void *ud, void *p, size_t osize, size_t nsize) {
    counter *c = ud;
    if (nsize == 0) {
        if (p) c->live -= (long long)osize;
        free(p);
        return NULL;
    }
    c->calls++;
    if (c->budget >= 0 && c->calls > c->budget) return NULL;
    void *q = realloc(p, nsize);
    if (q) c->live += (long long)nsize - (long long)(p ? osize : 0);
    return q;
}

Test(optim, step_never_allocates) {
    counter cnt = {0, -1, 0};
    tg_ctx *ctx = tg_ctx_new_with_alloc(3, counting_alloc, &cnt);
    tg_tensor *w = tg_param(ctx, "w", TG_F32, 2, (int64_t[]){33, 17});
    tg_tensor *b = tg_param(ctx, "b", TG_F64, 1, (int64_t[]){17});
    tg_fill_normal(ctx, w, 0, 1);
    tg_fill_normal(ctx, b, 0, 1);
    float *gw = tg_grad_acc(w);
    double *gb = tg_grad_acc(b);
    for (int i = 0; i < 33 * 17; i++) gw[i] = 0.01f * (float)(i % 7 - 3);
    for (int i = 0; i < 17; i++) gb[i] = 0.1 * (i % 5 - 2);
    tg_optim_opts all[6] = {tg_optim_defaults(TG_OPT_SGD), tg_optim_defaults(TG_OPT_SGD),
                            tg_optim_defaults(TG_OPT_RMSPROP), tg_optim_defaults(TG_OPT_RMSPROP),
                            tg_optim_defaults(TG_OPT_ADAM), tg_optim_defaults(TG_OPT_ADAMW)};
    all[1].momentum = 0.9, all[1].nesterov = 1;
    all[3].momentum = 0.9, all[3].centered = 1;
    all[4].amsgrad = 1;
    for (int k = 0; k < 6; k++) {
        long long live0 = cnt.live;
        long calls0 = cnt.calls;
        tg_optim *opt = tg_optim_new(ctx, &all[k], NULL, 0);
        cr_assert_not_null(opt, "%s", tg_errmsg(ctx));
        cr_assert_gt(cnt.calls, calls0, "the optimiser is allocated through the ctx allocator");
        long before = cnt.calls;
        for (int s = 0; s < 20; s++) cr_assert_eq(tg_optim_step(opt), 0);
        tg_clip_grad_norm(ctx, NULL, 0, 1.0);
        tg_sgd_step(ctx, 0.0);
        cr_assert_eq(cnt.calls, before, "%s: %ld allocations in steps", tg_optim_kind_name(k),
                     cnt.calls - before);
        tg_optim_free(opt);
        cr_assert_eq(cnt.live, live0, "tg_optim_free gives back every byte");
    }
    cr_assert(tg_ok(ctx), "%s", tg_errmsg(ctx));
    tg_ctx_free(ctx);
    cr_assert_eq(cnt.live, 0);
}

Test(optim, out_of_memory_at_creation_is_an_error) {
    tg_optim_opts o = tg_optim_defaults(TG_OPT_ADAM);
    o.amsgrad = 1;
    int failed = 0;
    for (long extra = 0; extra < 8; extra++) {
        counter cnt = {0, -1, 0};
        tg_ctx *ctx = tg_ctx_new_with_alloc(3, counting_alloc, &cnt);
        tg_param(ctx, "w", TG_F32, 2, (int64_t[]){8, 8});
        tg_param(ctx, "b", TG_F32, 1, (int64_t[]){8});
        long long live0 = cnt.live;
        cnt.budget = cnt.calls + extra; /* the (extra+1)-th allocation fails */
        tg_optim *opt = tg_optim_new(ctx, &o, NULL, 0);
        if (!opt) {
            failed++;
            cr_assert(strstr(tg_errmsg(ctx), "out of memory"), "%s", tg_errmsg(ctx));
            cr_assert_eq(cnt.live, live0, "a failed tg_optim_new leaks nothing");
        } else {
            cr_assert(tg_ok(ctx));
            tg_optim_free(opt);
        }
        tg_ctx_free(ctx);
        cr_assert_eq(cnt.live, 0);
    }
    cr_assert_geq(failed, 3, "every allocation point was hit");
}

/* ---- gradient clipping ---------------------------------------------------------- */

Test(optim, clip_grad_norm_matches_pytorch) {
    for (int pass = 0; pass < 2; pass++) {
        tg_dtype dt = pass ? TG_F32 : TG_F64;
        tg_ctx *ctx = tg_ctx_new(1);
        tg_tensor *a = tg_param(ctx, "a", dt, 1, (int64_t[]){2});
        tg_tensor *b = tg_param(ctx, "b", dt, 1, (int64_t[]){1});
        tg_tensor *unused = tg_param(ctx, "unused", dt, 1, (int64_t[]){4});
        tg_grad_acc(a), tg_grad_acc(b);
        double g[3] = {3, 4, 12};
        for (int i = 0; i < 2; i++) {
            if (dt == TG_F32) ((float *)tg_grad(a))[i] = (float)g[i];
            else ((double *)tg_grad(a))[i] = g[i];
        }
        if (dt == TG_F32) ((float *)tg_grad(b))[0] = 12.0f;
        else ((double *)tg_grad(b))[0] = 12.0;

        /* under the limit: untouched */
        double n = tg_clip_grad_norm(ctx, NULL, 0, 20.0);
        cr_assert_float_eq(n, 13.0, 1e-12);
        double v = dt == TG_F32 ? ((float *)tg_grad(a))[1] : ((double *)tg_grad(a))[1];
        cr_assert_eq(v, 4.0);
        cr_assert_null(tg_grad(unused), "a parameter without grad stays without");

        n = tg_clip_grad_norm(ctx, NULL, 0, 6.5);
        cr_assert_float_eq(n, 13.0, 1e-12, "the norm before clipping");
        double tol = dt == TG_F64 ? 1e-15 : 1e-6;
        for (int i = 0; i < 3; i++) {
            tg_tensor *t = i < 2 ? a : b;
            int j = i < 2 ? i : 0;
            double got = dt == TG_F32 ? ((float *)tg_grad(t))[j] : ((double *)tg_grad(t))[j];
            cr_assert(fabs(got - ref_clip[i]) <= tol * fabs(ref_clip[i]), "%d: %.17g vs %.17g",
                      i, got, ref_clip[i]);
        }
        /* a subset: only b */
        tg_tensor *only[1] = {b};
        n = tg_clip_grad_norm(ctx, only, 1, 1.0);
        cr_assert_float_eq(n, ref_clip[2], 1e-6);
        double bv = dt == TG_F32 ? ((float *)tg_grad(b))[0] : ((double *)tg_grad(b))[0];
        cr_assert_float_eq(bv, 1.0 / (1.0 + 1e-6 / ref_clip[2]), 1e-6);
        cr_assert(tg_ok(ctx), "%s", tg_errmsg(ctx));
        tg_ctx_free(ctx);
    }
}

Test(optim, clip_grad_norm_edges) {
    tg_ctx *ctx = tg_ctx_new(1);
    tg_tensor *a = tg_param(ctx, "a", TG_F64, 1, (int64_t[]){2});
    cr_assert_eq(tg_clip_grad_norm(ctx, NULL, 0, 1.0), 0.0, "no gradients: norm 0");
    double *g = tg_grad_acc(a);
    g[0] = INFINITY, g[1] = 1.0;
    cr_assert(isinf(tg_clip_grad_norm(ctx, NULL, 0, 1.0)));
    cr_assert_eq(g[1], 1.0, "a non-finite norm leaves the gradients alone");
    g[0] = 0.0;
    cr_assert_eq(tg_clip_grad_norm(ctx, NULL, 0, 0.0), 1.0);
    cr_assert_eq(g[1], 0.0, "max_norm 0 zeroes the gradients");
    cr_assert(tg_ok(ctx));

    cr_assert_eq(tg_clip_grad_norm(ctx, NULL, 0, -1.0), -1.0);
    cr_assert(strstr(tg_errmsg(ctx), "tg_clip_grad_norm: max_norm must be >= 0"), "%s",
              tg_errmsg(ctx));
    tg_clear_error(ctx);
    cr_assert_eq(tg_clip_grad_norm(ctx, NULL, 0, NAN), -1.0);
    tg_clear_error(ctx);
    cr_assert_eq(tg_clip_grad_norm(ctx, NULL, 2, 1.0), -1.0);
    cr_assert(strstr(tg_errmsg(ctx), "params is NULL with n 2"), "%s", tg_errmsg(ctx));
    tg_clear_error(ctx);
    tg_tensor *list[2] = {a, NULL};
    cr_assert_eq(tg_clip_grad_norm(ctx, list, 2, 1.0), -1.0);
    cr_assert(strstr(tg_errmsg(ctx), "tg_clip_grad_norm: argument params[1] is NULL"), "%s",
              tg_errmsg(ctx));
    tg_clear_error(ctx);
    list[1] = tg_new(ctx, TG_I32, 1, (int64_t[]){2});
    cr_assert_eq(tg_clip_grad_norm(ctx, list, 2, 1.0), -1.0);
    cr_assert(strstr(tg_errmsg(ctx), "params[1] must be f32 or f64"), "%s", tg_errmsg(ctx));
    tg_clear_error(ctx);
    cr_assert_eq(tg_clip_grad_norm(NULL, NULL, 0, 1.0), -1.0);
    tg_ctx_free(ctx);
}

/* ---- schedules -------------------------------------------------------------------- */

static void expect_sched(const tg_sched *s, const double *ref, int n, const char *what) {
    for (int i = 0; i < n; i++) {
        double lr = tg_sched_lr(s, i);
        cr_assert(fabs(lr - ref[i]) <= 1e-15 + 1e-12 * ref[i], "%s step %d: %.17g, PyTorch %.17g",
                  what, i, lr, ref[i]);
    }
}

Test(optim, schedules_match_pytorch) {
    tg_sched s = {.kind = TG_SCHED_STEP, .base_lr = 0.1, .gamma = 0.5, .step_size = 3};
    expect_sched(&s, ref_sched_step, 14, "step");
    s = (tg_sched){.kind = TG_SCHED_EXPONENTIAL, .base_lr = 0.1, .gamma = 0.9};
    expect_sched(&s, ref_sched_exponential, 14, "exponential");
    s = (tg_sched){.kind = TG_SCHED_COSINE, .base_lr = 0.1, .min_lr = 0.001, .total_steps = 10};
    expect_sched(&s, ref_sched_cosine, 11, "cosine");
    /* past total_steps tapegrad holds min_lr (PyTorch's cosine rises again) */
    for (int i = 10; i < 30; i++) cr_assert_eq(tg_sched_lr(&s, i), 0.001);
    s.warmup_steps = 4, s.total_steps = 14;
    expect_sched(&s, ref_sched_warmup_cosine, 14, "warm-up + cosine");
    s = (tg_sched){.kind = TG_SCHED_CONSTANT, .base_lr = 0.2, .warmup_steps = 5};
    double want[7] = {0.04, 0.08, 0.12, 0.16, 0.2, 0.2, 0.2};
    expect_sched(&s, want, 7, "warm-up + constant");
    s = (tg_sched){.kind = TG_SCHED_STEP, .base_lr = 1.0, .gamma = 0.1, .step_size = 2,
                   .warmup_steps = 2};
    double want2[6] = {0.5, 1.0, 1.0, 1.0, 0.1, 0.1};
    expect_sched(&s, want2, 6, "warm-up + step");
}

Test(optim, schedule_drives_optimiser) {
    tg_ctx *ctx = tg_ctx_new(1);
    tg_tensor *a = tg_param(ctx, "a", TG_F64, 1, (int64_t[]){1});
    tg_optim_opts o = tg_optim_defaults(TG_OPT_SGD);
    tg_optim *opt = tg_optim_new(ctx, &o, NULL, 0);
    tg_sched s = {.kind = TG_SCHED_EXPONENTIAL, .base_lr = 1.0, .gamma = 0.5};
    cr_assert_eq(tg_sched_check(ctx, &s), 0);
    double x = 0;
    for (int64_t step = 0; step < 5; step++) {
        ((double *)tg_grad_acc(a))[0] = 1.0;
        tg_optim_set_lr(opt, tg_sched_lr(&s, tg_optim_step_count(opt)));
        tg_optim_step(opt);
        x -= pow(0.5, (double)step);
    }
    cr_assert_float_eq(((double *)tg_data(a))[0], x, 1e-15);
    tg_optim_free(opt);
    tg_ctx_free(ctx);
}

Test(optim, bad_schedules) {
    tg_ctx *ctx = tg_ctx_new(1);
    tg_sched bad[] = {
        {.kind = TG_SCHED_COUNT, .base_lr = 0.1},
        {.kind = TG_SCHED_CONSTANT, .base_lr = -0.1},
        {.kind = TG_SCHED_CONSTANT, .base_lr = 0.1, .warmup_steps = -1},
        {.kind = TG_SCHED_STEP, .base_lr = 0.1, .gamma = 0.5, .step_size = 0},
        {.kind = TG_SCHED_STEP, .base_lr = 0.1, .step_size = 3},     /* gamma forgotten */
        {.kind = TG_SCHED_EXPONENTIAL, .base_lr = 0.1, .gamma = NAN},
        {.kind = TG_SCHED_COSINE, .base_lr = 0.1, .total_steps = 5, .warmup_steps = 5},
        {.kind = TG_SCHED_COSINE, .base_lr = 0.1, .min_lr = 0.2, .total_steps = 5},
    };
    const char *why[] = {"unknown schedule kind", "base_lr must be >= 0", "warmup_steps must be",
                         "step_size must be > 0", "gamma must be > 0", "gamma must be > 0",
                         "total_steps must be > warmup_steps", "min_lr must be in [0, base_lr]"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        cr_assert(isnan(tg_sched_lr(&bad[i], 0)), "case %zu", i);
        cr_assert_eq(tg_sched_check(ctx, &bad[i]), -1, "case %zu", i);
        cr_assert(strstr(tg_errmsg(ctx), why[i]) && strstr(tg_errmsg(ctx), "tg_sched_check: "),
                  "case %zu: %s", i, tg_errmsg(ctx));
        tg_clear_error(ctx);
    }
    tg_sched ok = {.kind = TG_SCHED_CONSTANT, .base_lr = 0.1};
    cr_assert(isnan(tg_sched_lr(&ok, -1)), "negative step");
    cr_assert(isnan(tg_sched_lr(NULL, 0)));
    cr_assert_eq(tg_sched_check(ctx, NULL), -1);
    cr_assert(strstr(tg_errmsg(ctx), "argument s is NULL"));
    cr_assert_eq(tg_sched_check(NULL, &ok), -1);
    tg_ctx_free(ctx);
}

/* ---- training converges with each optimiser ---------------------------------- */

/* y = 2x + 1 learnt by a 1-1 dense layer from 32 points in [-1, 1]; the loss is
 * the mean squared error built from ops (sub, pow, mean). */
static void fit_line(tg_optim_opts o, int steps, double tol) {
    tg_ctx *ctx = tg_ctx_new(11);
    tg_dense d;
    cr_assert_eq(tg_dense_init(ctx, &d, "lin", 1, 1, TG_F64, TG_INIT_XAVIER_UNIFORM), 0, "%s",
                 tg_errmsg(ctx));
    double xs[32], ys[32];
    for (int i = 0; i < 32; i++) {
        xs[i] = -1.0 + 2.0 * i / 31.0;
        ys[i] = 2.0 * xs[i] + 1.0;
    }
    tg_optim *opt = tg_optim_new(ctx, &o, NULL, 0);
    cr_assert_not_null(opt, "%s", tg_errmsg(ctx));
    double loss = 0;
    for (int s = 0; s < steps; s++) {
        tg_tensor *x = tg_from(ctx, TG_F64, 2, (int64_t[]){32, 1}, xs);
        loss = mse_step(ctx, opt, tg_dense_forward(ctx, &d, x, TG_ACT_NONE), ys);
    }
    cr_assert(tg_ok(ctx), "%s", tg_errmsg(ctx));
    double w = ((double *)tg_data(d.weight))[0], b = ((double *)tg_data(d.bias))[0];
    cr_assert(fabs(w - 2.0) < tol && fabs(b - 1.0) < tol, "%s: w %g b %g (loss %g)",
              tg_optim_kind_name(o.kind), w, b, loss);
    tg_optim_free(opt);
    tg_ctx_free(ctx);
}

Test(optim, regression_converges_with_each_optimiser) {
    tg_optim_opts o = tg_optim_defaults(TG_OPT_SGD);
    o.lr = 0.3;
    fit_line(o, 200, 1e-6);
    o.lr = 0.05, o.momentum = 0.9, o.nesterov = 1;
    fit_line(o, 300, 1e-6);
    o = tg_optim_defaults(TG_OPT_RMSPROP);
    fit_line(o, 1000, 2e-2); /* a constant lr leaves RMSprop jittering within ~lr */
    o.centered = 1, o.momentum = 0.5, o.lr = 0.005;
    fit_line(o, 600, 2e-2);
    o = tg_optim_defaults(TG_OPT_ADAM);
    o.lr = 0.05;
    fit_line(o, 500, 1e-3);
    o = tg_optim_defaults(TG_OPT_ADAMW);
    o.lr = 0.05;
    fit_line(o, 500, 2e-2); /* the default decoupled decay (0.01) holds w ~1% short of 2 */
}
