/* SPDX-License-Identifier: MIT */
/* tests/ops/test_ops_losses.c: tg_mse, tg_l1, tg_cross_entropy, tg_bce,
 * tg_bce_with_logits.
 * Gradient checks in f64 (wrt both inputs where both are differentiable) on
 * several shapes; values against hand-computed ones; stability at +-1000;
 * f32 against f64; and every kind of bad input. */
#include <criterion/criterion.h>

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "tapegrad.h"
#include "tg_test.h"

/* ---- helpers ------------------------------------------------------------ */

TG_TEST_SUITE(losses, 77031); /* ctx: a fresh context per test */

static const shp SHAPES[] = {
    {0, {0}}, {1, {1}}, {1, {5}}, {2, {3, 4}}, {2, {4, 1}}, {3, {2, 3, 4}},
};
#define N_SHAPES ((int)(sizeof SHAPES / sizeof SHAPES[0]))

static tg_tensor *labels(int64_t n, const int32_t *y)
{
    tg_tensor *t = tg_from(ctx, TG_I32, 1, &n, y);
    cr_assert_not_null(t, "%s", tg_errmsg(ctx));
    return t;
}

/* ---- the elementwise losses as tg_fn ------------------------------------- */

typedef tg_tensor *(*lossfn)(tg_ctx *, tg_tensor *, tg_tensor *);
typedef struct {
    lossfn f;
    const char *name;
    double plo, phi, tlo, thi; /* ranges of the first and second input */
} loss_info;

static const loss_info LOSSES[] = {
    {tg_mse, "tg_mse", -2, 2, -2, 2},
    {tg_l1, "tg_l1", -2, 2, -2, 2},
    {tg_bce, "tg_bce", 0.05, 0.95, 0, 1},
    {tg_bce_with_logits, "tg_bce_with_logits", -4, 4, 0, 1},
};
#define N_LOSSES ((int)(sizeof LOSSES / sizeof LOSSES[0]))

/* 1.7 * loss: the backward must scale by the incoming d loss/d out, not 1 */
static tg_tensor *fn_loss(tg_ctx *c, tg_tensor *const *in, void *user)
{
    return tg_scale(c, ((const loss_info *)user)->f(c, in[0], in[1]), 1.7);
}

static tg_tensor *fn_loss_plain(tg_ctx *c, tg_tensor *const *in, void *user)
{
    return ((const loss_info *)user)->f(c, in[0], in[1]);
}

/* keep |p - t| >= gap (l1's kink out of the finite differences) */
static void apart(tg_tensor *p, const tg_tensor *t, double gap)
{
    for (int64_t i = 0; i < tg_numel(p); i++) {
        double d = at(p, i) - at(t, i);
        if (fabs(d) < gap) set_at(p, i, at(t, i) + (d < 0 ? -gap : gap));
    }
}

static void gradcheck_loss(tg_ctx *c, const void *row, shp s, const char *what)
{
    const loss_info *L = row;
    tg_tensor *p = rnd(c, TG_F64, s, L->plo, L->phi);
    tg_tensor *t = rnd(c, TG_F64, s, L->tlo, L->thi);
    if (L->f == tg_l1) apart(p, t, 0.1);
    tg_tensor *in[2] = {p, t};
    gradcheck_ok(c, fn_loss, (void *)L, in, 2, what);
    assert_grads_nonzero(c, fn_loss_plain, (void *)L, in, 2, LOSS_SELF, what);
}

Test(losses, gradcheck_elementwise_losses)
{
    EACH_ROW_AND_SHAPE(ctx, LOSSES, SHAPES, gradcheck_loss);
}

Test(losses, output_is_0dim_of_input_dtype)
{
    for (int d = 0; d < 2; d++) {
        tg_dtype dt = d ? TG_F32 : TG_F64;
        tg_tensor *p = rnd(ctx, dt, (shp){2, {3, 4}}, 0.1, 0.9),
                  *t = rnd(ctx, dt, (shp){2, {3, 4}}, 0, 1);
        for (int l = 0; l < N_LOSSES; l++) {
            tg_tensor *y = LOSSES[l].f(ctx, p, t);
            cr_assert_not_null(y, "%s", tg_errmsg(ctx));
            cr_assert_eq(tg_ndim(y), 0);
            cr_assert_eq(tg_numel(y), 1);
            cr_assert_eq(tg_dtype_of(y), dt);
        }
        int32_t y3[3] = {0, 1, 2};
        tg_tensor *ce = tg_cross_entropy(ctx, p, labels(3, y3));
        cr_assert_not_null(ce, "%s", tg_errmsg(ctx));
        cr_assert_eq(tg_ndim(ce), 0);
        cr_assert_eq(tg_dtype_of(ce), dt);
    }
}

/* ---- mse and l1 values --------------------------------------------------- */

Test(losses, mse_l1_values_and_gradients)
{
    const int64_t sh[2] = {2, 2};
    const double pv[4] = {1, -2, 0.5, 3}, tv[4] = {0, -1, 0.5, 5};
    tg_tensor *p = from_nd(ctx, TG_F64, 2, sh, pv), *t = from_nd(ctx, TG_F64, 2, sh, tv);
    tg_set_requires_grad(p, 1);
    tg_set_requires_grad(t, 1);
    tg_tensor *m = tg_mse(ctx, p, t);
    cr_assert_float_eq(tg_item(m), (1 + 1 + 0 + 4) / 4.0, 1e-15);
    tg_backward(ctx, m);
    for (int i = 0; i < 4; i++) {
        cr_assert_float_eq(grad_at(p, i), 2 * (pv[i] - tv[i]) / 4, 1e-15);
        cr_assert_float_eq(grad_at(t, i), -2 * (pv[i] - tv[i]) / 4, 1e-15);
    }
    tg_reset(ctx);

    p = from_nd(ctx, TG_F64, 2, sh, pv), t = from_nd(ctx, TG_F64, 2, sh, tv);
    tg_set_requires_grad(p, 1);
    tg_set_requires_grad(t, 1);
    tg_tensor *a = tg_l1(ctx, p, t);
    cr_assert_float_eq(tg_item(a), (1 + 1 + 0 + 2) / 4.0, 1e-15);
    tg_backward(ctx, a);
    const double sg[4] = {1, -1, 0, -1}; /* 0 at equality */
    for (int i = 0; i < 4; i++) {
        cr_assert_eq(grad_at(p, i), sg[i] / 4);
        cr_assert_eq(grad_at(t, i), -sg[i] / 4);
    }
}

Test(losses, mse_of_a_tensor_with_itself)
{
    /* pred and target the same tensor: the two gradients cancel */
    tg_tensor *p = rnd(ctx, TG_F64, (shp){1, {6}}, -1, 1);
    tg_set_requires_grad(p, 1);
    tg_tensor *m = tg_mse(ctx, p, p);
    cr_assert_eq(tg_item(m), 0.0);
    tg_backward(ctx, m);
    for (int i = 0; i < 6; i++) cr_assert_eq(grad_at(p, i), 0.0);
}

Test(losses, empty_input_gives_nan)
{
    tg_tensor *p = tg_new(ctx, TG_F64, 2, (int64_t[]){0, 3});
    tg_tensor *t = tg_new(ctx, TG_F64, 2, (int64_t[]){0, 3});
    for (int l = 0; l < N_LOSSES; l++) {
        tg_tensor *y = LOSSES[l].f(ctx, p, t);
        cr_assert_not_null(y, "%s: %s", LOSSES[l].name, tg_errmsg(ctx));
        cr_assert(isnan(tg_item(y)), "%s of nothing: %g", LOSSES[l].name, tg_item(y));
    }
    tg_tensor *ce = tg_cross_entropy(ctx, p, tg_new(ctx, TG_I32, 1, (int64_t[]){0}));
    cr_assert_not_null(ce, "%s", tg_errmsg(ctx));
    cr_assert(isnan(tg_item(ce)));
}

/* ---- bce ------------------------------------------------------------------ */

Test(losses, bce_values_and_clamp)
{
    const double pv[4] = {0.2, 0.9, 0.5, 0.7}, tv[4] = {0, 1, 1, 0.25};
    tg_tensor *p = from_nd(ctx, TG_F64, 1, (int64_t[]){4}, pv),
              *t = from_nd(ctx, TG_F64, 1, (int64_t[]){4}, tv);
    double want = 0;
    for (int i = 0; i < 4; i++) want -= tv[i] * log(pv[i]) + (1 - tv[i]) * log(1 - pv[i]);
    cr_assert_float_eq(tg_item(tg_bce(ctx, p, t)), want / 4, 1e-15);

    /* p = 0 and p = 1: clamped, large but finite; gradient 0 where clamped */
    for (int d = 0; d < 2; d++) {
        tg_dtype dt = d ? TG_F32 : TG_F64;
        double eps = d ? 1e-7 : 1e-12;
        const double pe[2] = {0, 1}, te[2] = {1, 0};
        tg_tensor *pp = from_nd(ctx, dt, 1, (int64_t[]){2}, pe),
                  *tt = from_nd(ctx, dt, 1, (int64_t[]){2}, te);
        tg_set_requires_grad(pp, 1);
        tg_set_requires_grad(tt, 1);
        tg_tensor *y = tg_bce(ctx, pp, tt);
        cr_assert(isfinite(tg_item(y)));
        cr_assert_float_eq(tg_item(y), -log(eps), 1e-4 * -log(eps), "dtype %d: %g", d, tg_item(y));
        tg_backward(ctx, y);
        cr_assert(tg_ok(ctx), "%s", tg_errmsg(ctx));
        cr_assert_eq(grad_at(pp, 0), 0.0);
        cr_assert_eq(grad_at(pp, 1), 0.0);
        cr_assert(isfinite(grad_at(tt, 0)) && isfinite(grad_at(tt, 1)));
        /* correct predictions at the ends cost ~0 */
        const double pc[2] = {1, 0}, tc[2] = {1, 0};
        tg_tensor *yc = tg_bce(ctx, from_nd(ctx, dt, 1, (int64_t[]){2}, pc),
                               from_nd(ctx, dt, 1, (int64_t[]){2}, tc));
        cr_assert(tg_item(yc) >= 0 && tg_item(yc) < 1e-6, "%g", tg_item(yc));
    }
}

Test(losses, bce_equals_bce_with_logits_of_sigmoid)
{
    tg_tensor *x = rnd(ctx, TG_F64, (shp){2, {3, 5}}, -3, 3);
    tg_tensor *t = rnd(ctx, TG_F64, (shp){2, {3, 5}}, 0, 1);
    tg_tensor *a = tg_bce(ctx, tg_sigmoid(ctx, x), t);
    tg_tensor *b = tg_bce_with_logits(ctx, x, t);
    cr_assert_float_eq(tg_item(a), tg_item(b), 1e-13);
}

/* ---- bce_with_logits ------------------------------------------------------- */

Test(losses, bce_with_logits_at_1000)
{
    const double xs[4] = {1000, -1000, 1000, -1000}, ts[4] = {0, 0, 1, 1};
    const double want[4] = {1000, 0, 0, 1000};
    for (int d = 0; d < 2; d++) {
        tg_dtype dt = d ? TG_F32 : TG_F64;
        for (int i = 0; i < 4; i++) {
            tg_tensor *x = from_nd(ctx, dt, 0, NULL, &xs[i]),
                      *t = from_nd(ctx, dt, 0, NULL, &ts[i]);
            tg_set_requires_grad(x, 1);
            tg_set_requires_grad(t, 1);
            tg_tensor *y = tg_bce_with_logits(ctx, x, t);
            cr_assert_not_null(y, "%s", tg_errmsg(ctx));
            cr_assert_eq(tg_item(y), want[i], "x=%g t=%g: %g", xs[i], ts[i], tg_item(y));
            tg_backward(ctx, y);
            cr_assert(tg_ok(ctx), "%s", tg_errmsg(ctx));
            double s = xs[i] > 0 ? 1 : 0;
            cr_assert_eq(grad_at(x, 0), s - ts[i]);
            cr_assert_eq(grad_at(t, 0), -xs[i]);
        }
        /* a batch of them: the mean */
        tg_tensor *x = from_nd(ctx, dt, 1, (int64_t[]){4}, xs),
                  *t = from_nd(ctx, dt, 1, (int64_t[]){4}, ts);
        cr_assert_eq(tg_item(tg_bce_with_logits(ctx, x, t)), 500.0);
    }
}

/* ---- cross-entropy ---------------------------------------------------------- */

typedef struct {
    tg_tensor *target;
} ce_user;

static tg_tensor *fn_ce_idx(tg_ctx *c, tg_tensor *const *in, void *user)
{
    return tg_scale(c, tg_cross_entropy(c, in[0], ((ce_user *)user)->target), 1.3);
}

static tg_tensor *fn_ce_prob(tg_ctx *c, tg_tensor *const *in, void *user)
{
    return tg_scale(c, tg_cross_entropy(c, in[0], in[1]), 0.7);
}

static tg_tensor *fn_ce_prob_plain(tg_ctx *c, tg_tensor *const *in, void *user)
{
    return tg_cross_entropy(c, in[0], in[1]);
}

static tg_tensor *fn_ce_idx_plain(tg_ctx *c, tg_tensor *const *in, void *user)
{
    return tg_cross_entropy(c, in[0], ((ce_user *)user)->target);
}

/* reference: mean_i (logsumexp(x_i) - x_i,y_i), straightforwardly in double */
static double ce_ref(const tg_tensor *x, int64_t n, int64_t k, const int32_t *y)
{
    double loss = 0;
    for (int64_t i = 0; i < n; i++) {
        double s = 0;
        for (int64_t j = 0; j < k; j++) s += exp(at(x, i * k + j));
        loss += log(s) - at(x, i * k + y[i]);
    }
    return loss / (double)n;
}

Test(losses, cross_entropy_index_target_gradcheck)
{
    const int64_t dims[4][2] = {{4, 3}, {2, 5}, {1, 4}, {6, 2}};
    for (int s = 0; s < 4; s++) {
        int64_t n = dims[s][0], k = dims[s][1];
        tg_tensor *x = rnd(ctx, TG_F64, (shp){2, {n, k}}, -3, 3);
        int32_t y[6];
        for (int64_t i = 0; i < n; i++) y[i] = (int32_t)((i * 7 + 1) % k);
        ce_user u = {labels(n, y)};
        tg_tensor *in[1] = {x};
        gradcheck_ok(ctx, fn_ce_idx, &u, in, 1, "cross_entropy index");
        assert_grads_nonzero(ctx, fn_ce_idx_plain, &u, in, 1, LOSS_SELF, "cross_entropy index");
        /* value and gradient (p - onehot) / N */
        tg_tensor *l = tg_cross_entropy(ctx, x, u.target);
        cr_assert_float_eq(tg_item(l), ce_ref(x, n, k, y), 1e-13);
        tg_reset(ctx);
    }
}

Test(losses, cross_entropy_gradient_closed_form)
{
    const int64_t sh[2] = {2, 3};
    const double xv[6] = {1, 2, 3, 0.5, -1, 0};
    const int32_t y[2] = {2, 0};
    tg_tensor *x = from_nd(ctx, TG_F64, 2, sh, xv);
    tg_set_requires_grad(x, 1);
    tg_backward(ctx, tg_cross_entropy(ctx, x, labels(2, y)));
    cr_assert(tg_ok(ctx), "%s", tg_errmsg(ctx));
    for (int i = 0; i < 2; i++) {
        double den = 0;
        for (int j = 0; j < 3; j++) den += exp(xv[i * 3 + j]);
        for (int j = 0; j < 3; j++) {
            double p = exp(xv[i * 3 + j]) / den;
            cr_assert_float_eq(grad_at(x, i * 3 + j), (p - (j == y[i])) / 2, 1e-15);
        }
    }
}

Test(losses, cross_entropy_prob_target_gradcheck)
{
    const int64_t dims[3][2] = {{4, 3}, {2, 5}, {1, 4}};
    for (int s = 0; s < 3; s++) {
        int64_t n = dims[s][0], k = dims[s][1];
        tg_tensor *x = rnd(ctx, TG_F64, (shp){2, {n, k}}, -3, 3);
        tg_tensor *t = rnd(ctx, TG_F64, (shp){2, {n, k}}, 0.05, 1);
        for (int64_t i = 0; i < n; i++) { /* rows summing to 1 */
            double sum = 0;
            for (int64_t j = 0; j < k; j++) sum += at(t, i * k + j);
            for (int64_t j = 0; j < k; j++) set_at(t, i * k + j, at(t, i * k + j) / sum);
        }
        tg_tensor *in[2] = {x, t};
        gradcheck_ok(ctx, fn_ce_prob, NULL, in, 2, "cross_entropy probabilities");
        assert_grads_nonzero(ctx, fn_ce_prob_plain, NULL, in, 2, LOSS_SELF,
                             "cross_entropy probabilities");
        /* logits only learnable, target constant */
        tg_set_requires_grad(t, 0);
        tg_tensor *in1[1] = {x};
        ce_user u = {t};
        gradcheck_ok(ctx, fn_ce_idx, &u, in1, 1, "cross_entropy probabilities, constant target");
        tg_reset(ctx);
    }
    /* rows not summing to 1 (gradient (p sum(t) - t) / N) */
    tg_tensor *x = rnd(ctx, TG_F64, (shp){2, {3, 4}}, -2, 2);
    tg_tensor *t = rnd(ctx, TG_F64, (shp){2, {3, 4}}, 0.1, 2);
    tg_tensor *in[2] = {x, t};
    gradcheck_ok(ctx, fn_ce_prob, NULL, in, 2, "cross_entropy unnormalised target");
}

Test(losses, cross_entropy_onehot_matches_index)
{
    tg_tensor *x1 = rnd(ctx, TG_F64, (shp){2, {3, 4}}, -2, 2);
    tg_tensor *x2 = convert(ctx, x1, TG_F64);
    const int32_t y[3] = {3, 0, 1};
    double oh[12] = {0};
    for (int i = 0; i < 3; i++) oh[i * 4 + y[i]] = 1;
    tg_set_requires_grad(x1, 1);
    tg_set_requires_grad(x2, 1);
    tg_tensor *a = tg_cross_entropy(ctx, x1, labels(3, y));
    tg_tensor *b = tg_cross_entropy(ctx, x2, from_nd(ctx, TG_F64, 2, (int64_t[]){3, 4}, oh));
    cr_assert_float_eq(tg_item(a), tg_item(b), 1e-15);
    tg_backward(ctx, a);
    tg_backward(ctx, b);
    for (int i = 0; i < 12; i++) cr_assert_float_eq(grad_at(x1, i), grad_at(x2, i), 1e-16);
}

Test(losses, cross_entropy_1d_logits)
{
    const double xv[3] = {0.5, -1, 2};
    tg_tensor *x = from_nd(ctx, TG_F64, 1, (int64_t[]){3}, xv);
    tg_tensor *y0 = tg_new(ctx, TG_I32, 0, NULL);
    ((int32_t *)tg_data(y0))[0] = 2;
    tg_tensor *y1 = labels(1, (int32_t[]){2});
    double den = exp(0.5) + exp(-1) + exp(2);
    double want = log(den) - 2;
    cr_assert_float_eq(tg_item(tg_cross_entropy(ctx, x, y0)), want, 1e-15);
    cr_assert_float_eq(tg_item(tg_cross_entropy(ctx, x, y1)), want, 1e-15);
    cr_assert(tg_ok(ctx), "%s", tg_errmsg(ctx));
    ce_user u = {y0};
    tg_tensor *in[1] = {x};
    gradcheck_ok(ctx, fn_ce_idx, &u, in, 1, "cross_entropy [C] logits");
    /* probability target [C] */
    const double tv[3] = {0.2, 0.3, 0.5};
    tg_tensor *t = from_nd(ctx, TG_F64, 1, (int64_t[]){3}, tv);
    tg_tensor *in2[2] = {x, t};
    gradcheck_ok(ctx, fn_ce_prob, NULL, in2, 2, "cross_entropy [C] probabilities");
}

Test(losses, cross_entropy_large_logits)
{
    for (int d = 0; d < 2; d++) {
        tg_dtype dt = d ? TG_F32 : TG_F64;
        const double xv[2] = {1000, -1000};
        tg_tensor *x = from_nd(ctx, dt, 2, (int64_t[]){1, 2}, xv);
        tg_set_requires_grad(x, 1);
        tg_tensor *l1 = tg_cross_entropy(ctx, x, labels(1, (int32_t[]){1}));
        tg_tensor *l0 = tg_cross_entropy(ctx, x, labels(1, (int32_t[]){0}));
        cr_assert(tg_ok(ctx), "%s", tg_errmsg(ctx));
        cr_assert_eq(tg_item(l1), 2000.0);
        cr_assert_eq(tg_item(l0), 0.0);
        tg_backward(ctx, l1);
        cr_assert_eq(grad_at(x, 0), 1.0);
        cr_assert_eq(grad_at(x, 1), -1.0);
        /* probability target: [0.5, 0.5] costs 1000 */
        const double tv[2] = {0.5, 0.5};
        tg_tensor *lp = tg_cross_entropy(ctx, x, from_nd(ctx, dt, 2, (int64_t[]){1, 2}, tv));
        cr_assert_eq(tg_item(lp), 1000.0);
        /* huge equal logits: log(3) */
        const double bv[3] = {1000, 1000, 1000};
        tg_tensor *lb = tg_cross_entropy(ctx, from_nd(ctx, dt, 2, (int64_t[]){1, 3}, bv),
                                         labels(1, (int32_t[]){1}));
        cr_assert_float_eq(tg_item(lb), log(3.0), 1e-6);
    }
    /* finite gradients around 1000 pass the check */
    const double xv[6] = {1000, -1000, 999, 0, 1, -1};
    tg_tensor *x = from_nd(ctx, TG_F64, 2, (int64_t[]){2, 3}, xv);
    ce_user u = {labels(2, (int32_t[]){2, 0})};
    tg_tensor *in[1] = {x};
    gradcheck_ok(ctx, fn_ce_idx, &u, in, 1, "cross_entropy at 1000");
}

/* ---- f32 against f64 --------------------------------------------------------- */

Test(losses, f32_matches_f64)
{
    for (int l = 0; l < N_LOSSES + 2; l++) {
        tg_tensor *p64, *t64;
        if (l < N_LOSSES) {
            p64 = rnd(ctx, TG_F64, (shp){2, {4, 5}}, LOSSES[l].plo, LOSSES[l].phi);
            t64 = rnd(ctx, TG_F64, (shp){2, {4, 5}}, LOSSES[l].tlo, LOSSES[l].thi);
        } else {
            p64 = rnd(ctx, TG_F64, (shp){2, {4, 5}}, -3, 3);
            t64 = rnd(ctx, TG_F64, (shp){2, {4, 5}}, 0, 1);
        }
        tg_tensor *p32 = convert(ctx, p64, TG_F32), *t32 = convert(ctx, t64, TG_F32);
        tg_tensor *y64, *y32;
        tg_set_requires_grad(p64, 1);
        tg_set_requires_grad(p32, 1);
        tg_set_requires_grad(t64, 1);
        tg_set_requires_grad(t32, 1);
        if (l < N_LOSSES) {
            y64 = LOSSES[l].f(ctx, p64, t64);
            y32 = LOSSES[l].f(ctx, p32, t32);
        } else if (l == N_LOSSES) { /* cross-entropy, probability target */
            y64 = tg_cross_entropy(ctx, p64, t64);
            y32 = tg_cross_entropy(ctx, p32, t32);
        } else { /* cross-entropy, indices */
            tg_tensor *y = labels(4, (int32_t[]){4, 0, 2, 1});
            tg_set_requires_grad(t64, 0);
            tg_set_requires_grad(t32, 0);
            y64 = tg_cross_entropy(ctx, p64, y);
            y32 = tg_cross_entropy(ctx, p32, y);
        }
        tg_backward(ctx, y64);
        tg_backward(ctx, y32);
        cr_assert(tg_ok(ctx), "loss %d: %s", l, tg_errmsg(ctx));
        double a = tg_item(y64), b = tg_item(y32);
        cr_assert(fabs(a - b) <= 1e-6 * (1 + fabs(a)), "loss %d: %.9g vs %.9g", l, a, b);
        for (int64_t i = 0; i < 20; i++) {
            a = grad_at(p64, i), b = grad_at(p32, i);
            cr_assert(fabs(a - b) <= 1e-6 * (1 + fabs(a)), "loss %d dp[%lld]: %g vs %g", l,
                      (long long)i, a, b);
            if (tg_requires_grad(t64)) {
                a = grad_at(t64, i), b = grad_at(t32, i);
                cr_assert(fabs(a - b) <= 1e-6 * (1 + fabs(a)), "loss %d dt[%lld]: %g vs %g", l,
                          (long long)i, a, b);
            }
        }
        tg_reset(ctx);
    }
}

/* ---- gradient accumulation ------------------------------------------------ */

/* the i-th loss (elementwise ones, then cross-entropy with probabilities) */
static tg_tensor *loss_k(int k, tg_tensor *p, tg_tensor *t)
{
    return k < N_LOSSES ? LOSSES[k].f(ctx, p, t) : tg_cross_entropy(ctx, p, t);
}

Test(losses, backward_adds_fan_out)
{
    /* p feeds three losses and t1 two: every path adds into the grads */
    for (int k = 0; k <= N_LOSSES; k++) {
        const double lo = k < N_LOSSES ? LOSSES[k].plo : -2, hi = k < N_LOSSES ? LOSSES[k].phi : 2;
        tg_tensor *p = rnd(ctx, TG_F64, (shp){2, {3, 4}}, lo, hi);
        tg_tensor *t1 = rnd(ctx, TG_F64, (shp){2, {3, 4}}, 0.1, 0.9);
        tg_tensor *t2 = rnd(ctx, TG_F64, (shp){2, {3, 4}}, 0.1, 0.9);
        tg_set_requires_grad(p, 1);
        tg_set_requires_grad(t1, 1);
        double g1[12], g2[12], gt[12];
        tg_backward(ctx, loss_k(k, p, t1));
        for (int i = 0; i < 12; i++) g1[i] = grad_at(p, i), gt[i] = grad_at(t1, i);
        memset(tg_grad(p), 0, sizeof g1);
        memset(tg_grad(t1), 0, sizeof g1);
        tg_backward(ctx, loss_k(k, p, t2));
        for (int i = 0; i < 12; i++) g2[i] = grad_at(p, i);
        memset(tg_grad(p), 0, sizeof g1);
        tg_tensor *sum = tg_add(ctx, loss_k(k, p, t1), loss_k(k, p, t2));
        tg_tensor *twice = tg_add(ctx, sum, loss_k(k, p, t1));
        tg_backward(ctx, twice);
        cr_assert(tg_ok(ctx), "loss %d: %s", k, tg_errmsg(ctx));
        for (int i = 0; i < 12; i++) {
            cr_assert_float_eq(grad_at(p, i), 2 * g1[i] + g2[i], 1e-14, "loss %d", k);
            cr_assert_float_eq(grad_at(t1, i), 2 * gt[i], 1e-14, "loss %d", k);
        }
        tg_reset(ctx);
    }
}

/* ---- what gets recorded ------------------------------------------------------ */

Test(losses, target_without_grad_gets_none)
{
    tg_tensor *p = rnd(ctx, TG_F64, (shp){1, {4}}, 0.1, 0.9),
              *t = rnd(ctx, TG_F64, (shp){1, {4}}, 0, 1);
    tg_set_requires_grad(p, 1);
    for (int l = 0; l < N_LOSSES; l++) {
        tg_tensor *y = LOSSES[l].f(ctx, p, t);
        cr_assert(tg_requires_grad(y));
        tg_backward(ctx, y);
        cr_assert_null(tg_grad(t), "%s gave the constant target a gradient", LOSSES[l].name);
    }
    /* nothing requires grad: nothing recorded */
    int64_t len = tg_tape_len(ctx);
    tg_set_requires_grad(p, 0);
    for (int l = 0; l < N_LOSSES; l++) cr_assert_not(tg_requires_grad(LOSSES[l].f(ctx, p, t)));
    tg_tensor *x = rnd(ctx, TG_F64, (shp){2, {2, 2}}, -1, 1);
    cr_assert_not(tg_requires_grad(tg_cross_entropy(ctx, x, labels(2, (int32_t[]){0, 1}))));
    cr_assert_eq(tg_tape_len(ctx), len);
}

/* ---- bad input ----------------------------------------------------------------- */

Test(losses, elementwise_bad_input)
{
    tg_tensor *a = rnd(ctx, TG_F64, (shp){2, {3, 4}}, 0.1, 0.9);
    tg_tensor *b = rnd(ctx, TG_F64, (shp){2, {4, 3}}, 0.1, 0.9);
    tg_tensor *a32 = rnd(ctx, TG_F32, (shp){2, {3, 4}}, 0.1, 0.9);
    tg_tensor *ai = tg_new(ctx, TG_I32, 2, (int64_t[]){3, 4});
    static const char *argnames[N_LOSSES][2] = {
        {"pred", "target"}, {"pred", "target"}, {"prob", "target"}, {"logits", "target"}};
    for (int l = 0; l < N_LOSSES; l++) {
        const char *fn = LOSSES[l].name;
        char msg[96];
        cr_assert_null(LOSSES[l].f(ctx, a, b));
        assert_err(ctx, fn, fn, "[3,4]", "[4,3]");
        cr_assert_null(LOSSES[l].f(ctx, a, a32));
        assert_err(ctx, fn, fn, "f64 [3,4]", "f32 [3,4]");
        cr_assert_null(LOSSES[l].f(ctx, ai, a));
        assert_err(ctx, fn, fn, "must be f32 or f64", "i32 [3,4]");
        cr_assert_null(LOSSES[l].f(ctx, a, ai));
        assert_err(ctx, fn, fn, "target must be f32 or f64", NULL);
        cr_assert_null(LOSSES[l].f(ctx, NULL, a));
        snprintf(msg, sizeof msg, "%s: argument %s is NULL", fn, argnames[l][0]);
        cr_assert_str_eq(tg_errmsg(ctx), msg);
        tg_clear_error(ctx);
        cr_assert_null(LOSSES[l].f(ctx, a, NULL));
        snprintf(msg, sizeof msg, "%s: argument %s is NULL", fn, argnames[l][1]);
        cr_assert_str_eq(tg_errmsg(ctx), msg);
        tg_clear_error(ctx);
        cr_assert_null(LOSSES[l].f(NULL, a, a));
        /* a 0-dim against a [1]: shapes must match exactly */
        cr_assert_null(
            LOSSES[l].f(ctx, tg_scalar(ctx, TG_F64, 0.5), rnd(ctx, TG_F64, (shp){1, {1}}, 0, 1)));
        assert_err(ctx, fn, fn, "[]", "[1]");
    }
}

Test(losses, cross_entropy_bad_input)
{
    const char *fn = "tg_cross_entropy";
    tg_tensor *x = rnd(ctx, TG_F64, (shp){2, {4, 3}}, -1, 1);
    /* class index out of range: names the row, the value and C */
    cr_assert_null(tg_cross_entropy(ctx, x, labels(4, (int32_t[]){0, 1, 3, 2})));
    assert_err(ctx, fn, fn, "target[2] = 3", "[0,3)");
    cr_assert_null(tg_cross_entropy(ctx, x, labels(4, (int32_t[]){0, -1, 1, 2})));
    assert_err(ctx, fn, fn, "target[1] = -1", "[0,3)");
    /* index target of the wrong shape */
    cr_assert_null(tg_cross_entropy(ctx, x, labels(3, (int32_t[]){0, 1, 2})));
    assert_err(ctx, fn, fn, "[4,3]", "i32 [3]");
    tg_tensor *y2 = tg_new(ctx, TG_I32, 2, (int64_t[]){4, 1});
    cr_assert_null(tg_cross_entropy(ctx, x, y2));
    assert_err(ctx, fn, fn, "[4,3]", "[4,1]");
    /* probability target of the wrong shape / dtype */
    cr_assert_null(tg_cross_entropy(ctx, x, rnd(ctx, TG_F64, (shp){2, {3, 4}}, 0, 1)));
    assert_err(ctx, fn, fn, "logits [4,3]", "target [3,4]");
    cr_assert_null(tg_cross_entropy(ctx, x, rnd(ctx, TG_F32, (shp){2, {4, 3}}, 0, 1)));
    assert_err(ctx, fn, fn, "f64 [4,3]", "f32 [4,3]");
    cr_assert_null(tg_cross_entropy(ctx, x, rnd(ctx, TG_F64, (shp){1, {4}}, 0, 1)));
    assert_err(ctx, fn, fn, "[4,3]", "[4]");
    /* logits: i32, 3-D, 0-dim, no classes */
    tg_tensor *xi = tg_new(ctx, TG_I32, 2, (int64_t[]){4, 3});
    cr_assert_null(tg_cross_entropy(ctx, xi, labels(4, (int32_t[]){0, 0, 0, 0})));
    assert_err(ctx, fn, fn, "logits must be f32 or f64", "i32 [4,3]");
    cr_assert_null(tg_cross_entropy(ctx, rnd(ctx, TG_F64, (shp){3, {2, 2, 2}}, 0, 1),
                                    labels(2, (int32_t[]){0, 0})));
    assert_err(ctx, fn, fn, "[N,C]", "[2,2,2]");
    cr_assert_null(tg_cross_entropy(ctx, tg_scalar(ctx, TG_F64, 1), tg_new(ctx, TG_I32, 0, NULL)));
    assert_err(ctx, fn, fn, "[N,C]", "[]");
    cr_assert_null(tg_cross_entropy(ctx, tg_new(ctx, TG_F64, 2, (int64_t[]){2, 0}),
                                    labels(2, (int32_t[]){0, 0})));
    assert_err(ctx, fn, fn, "no classes", "[2,0]");
    /* [C] logits with a [2] index target */
    cr_assert_null(
        tg_cross_entropy(ctx, rnd(ctx, TG_F64, (shp){1, {3}}, 0, 1), labels(2, (int32_t[]){0, 1})));
    assert_err(ctx, fn, fn, "[3]", "i32 [2]");
    /* NULL */
    cr_assert_null(tg_cross_entropy(ctx, NULL, labels(1, (int32_t[]){0})));
    cr_assert_str_eq(tg_errmsg(ctx), "tg_cross_entropy: argument logits is NULL");
    tg_clear_error(ctx);
    cr_assert_null(tg_cross_entropy(ctx, x, NULL));
    cr_assert_str_eq(tg_errmsg(ctx), "tg_cross_entropy: argument target is NULL");
    tg_clear_error(ctx);
    cr_assert_null(tg_cross_entropy(NULL, x, x));
}

Test(losses, chain_after_error_keeps_first_message)
{
    tg_tensor *x = rnd(ctx, TG_F64, (shp){2, {2, 3}}, -1, 1);
    tg_tensor *good = labels(2, (int32_t[]){0, 1});
    tg_tensor *bad = tg_cross_entropy(ctx, x, labels(2, (int32_t[]){0, 7}));
    cr_assert_null(bad);
    char first[512];
    snprintf(first, sizeof first, "%s", tg_errmsg(ctx));
    cr_assert(strstr(first, "target[1] = 7"), "%s", first);
    cr_assert_null(tg_mse(ctx, bad, x));
    cr_assert_null(tg_l1(ctx, x, bad));
    cr_assert_null(tg_bce(ctx, bad, bad));
    cr_assert_null(tg_bce_with_logits(ctx, bad, x));
    cr_assert_null(tg_cross_entropy(ctx, bad, x));
    /* valid arguments return NULL too while the error stands */
    cr_assert_null(tg_mse(ctx, x, x));
    cr_assert_null(tg_cross_entropy(ctx, x, good));
    cr_assert_str_eq(tg_errmsg(ctx), first);
}
