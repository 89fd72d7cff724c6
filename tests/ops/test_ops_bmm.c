/* SPDX-License-Identifier: MIT */
/* tests/ops/test_ops_bmm.c: tg_matmul with batch dimensions (torch.matmul
 * for operands of 2 or more dims). Values and gradients against PyTorch
 * (tests/index_reference.py -> index_reference.h), against per-entry 2-D
 * products, f64 gradient checks of broadcast batches through random-weighted
 * projections, f32 against f64, and bad arguments. */
#include <criterion/criterion.h>

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "tapegrad.h"
#include "index_ref.h"
#include "tg_test.h"

TG_TEST_SUITE(bmm, 99); /* ctx: a fresh context per test */

typedef struct {
    shp a, b, y;
    const double *ry, *ra, *rb;
} ref_case;

Test(bmm, matches_pytorch)
{
    const ref_case cases[] = {
        {{4, {2, 1, 3, 4}},
         {3, {5, 4, 2}},
         {4, {2, 5, 3, 2}},
         REF_bmm_4x3_y,
         REF_bmm_4x3_d0,
         REF_bmm_4x3_d1},
        {{2, {3, 4}},
         {3, {2, 4, 5}},
         {3, {2, 3, 5}},
         REF_bmm_2x3_y,
         REF_bmm_2x3_d0,
         REF_bmm_2x3_d1},
        {{3, {2, 3, 4}},
         {3, {2, 4, 2}},
         {3, {2, 3, 2}},
         REF_bmm_3x3_y,
         REF_bmm_3x3_d0,
         REF_bmm_3x3_d1},
    };
    for (int k = 0; k < 3; k++) {
        for (int dti = 0; dti < 2; dti++) {
            tg_dtype dt = dti ? TG_F64 : TG_F32;
            double tol = dti ? 1e-14 : 2e-6;
            tg_tensor *a = ref_in(ctx, dt, cases[k].a, 0), *b = ref_in(ctx, dt, cases[k].b, 1);
            tg_set_requires_grad(a, 1);
            tg_set_requires_grad(b, 1);
            tg_tensor *y = tg_matmul(ctx, a, b);
            cr_assert_not_null(y, "%s", tg_errmsg(ctx));
            cr_assert_eq(tg_ndim(y), cases[k].y.ndim);
            for (int i = 0; i < tg_ndim(y); i++) cr_assert_eq(tg_dim(y, i), cases[k].y.shape[i]);
            assert_ref(y, 0, cases[k].ry, tol, "bmm y");
            tg_backward(ctx, ref_loss(ctx, y));
            assert_ref(a, 1, cases[k].ra, tol, "bmm da");
            assert_ref(b, 1, cases[k].rb, tol, "bmm db");
            tg_reset(ctx);
        }
    }
}

/* ---- gradient checks over broadcast batches ----------------------------- */

typedef struct {
    tg_tensor *w;
} proj;

static tg_tensor *fn_bmm(tg_ctx *c, tg_tensor *const *in, void *user)
{
    proj *p = user;
    tg_tensor *y = tg_matmul(c, in[0], in[1]);
    if (!y) return NULL;
    if (!p->w) {
        p->w = tg_param(c, NULL, TG_F64, tg_ndim(y), tg_shape(y));
        tg_set_requires_grad(p->w, 0);
        tg_fill_uniform(c, p->w, 0.5, 1.5);
    }
    return tg_sum(c, tg_mul(c, tg_tanh(c, y), p->w));
}

/* a @ a^T-like fan-out: the same tensor as both operands */
static tg_tensor *fn_bmm_self(tg_ctx *c, tg_tensor *const *in, void *user)
{
    tg_tensor *const both[2] = {in[0], in[0]};
    return fn_bmm(c, both, user);
}

static const struct {
    shp a, b;
} SHAPES[] = {
    {{4, {2, 1, 3, 4}}, {3, {5, 4, 2}}}, /* [2,1] x [5] -> [2,5] */
    {{2, {3, 4}}, {3, {2, 4, 5}}},       /* 2-D a stretched over b's batch */
    {{3, {2, 3, 4}}, {2, {4, 5}}},       /* 2-D b stretched over a's batch */
    {{3, {3, 2, 4}}, {3, {3, 4, 1}}},    /* n = 1 */
    {{3, {1, 1, 4}}, {3, {4, 4, 2}}},    /* batch 1 against 4, m = 1 */
    {{4, {2, 3, 2, 3}}, {4, {2, 3, 3, 2}}},
    {{4, {1, 3, 2, 3}}, {4, {2, 1, 3, 2}}}, /* both broadcast */
    {{3, {1, 2, 3}}, {2, {3, 2}}},
    {{3, {0, 2, 3}}, {2, {3, 2}}}, /* empty batch */
};
#define N_SHAPES (int)(sizeof SHAPES / sizeof SHAPES[0])

Test(bmm, gradcheck_broadcast_batches)
{
    for (int k = 0; k < N_SHAPES; k++) {
        tg_tensor *in[2] = {rnd(ctx, TG_F64, SHAPES[k].a, -1, 1),
                            rnd(ctx, TG_F64, SHAPES[k].b, -1, 1)};
        proj p = {NULL};
        gradcheck_ok(ctx, fn_bmm, &p, in, 2, "batched tg_matmul");
        if (tg_numel(in[0]) > 0) assert_grads_nonzero(ctx, fn_bmm, &p, in, 2, LOSS_SELF, "bmm");
        tg_reset(ctx);
    }
    tg_tensor *sq[1] = {rnd(ctx, TG_F64, (shp){3, {2, 3, 3}}, -1, 1)};
    proj p = {NULL};
    gradcheck_ok(ctx, fn_bmm_self, &p, sq, 1, "batched x @ x");
}

/* each batch entry of the output is the 2-D product of the entries it reads,
 * bit for bit (the same GEMM call), and a broadcast operand's gradient is
 * the sum of the 2-D gradients over the entries it was stretched across */
Test(bmm, entries_are_the_2d_products)
{
    for (int dti = 0; dti < 2; dti++) {
        tg_dtype dt = dti ? TG_F64 : TG_F32;
        const size_t es = dti ? 8 : 4;
        tg_tensor *a = rnd(ctx, dt, (shp){4, {2, 1, 5, 7}}, -1, 1);
        tg_tensor *b = rnd(ctx, dt, (shp){3, {3, 7, 6}}, -1, 1);
        tg_set_requires_grad(a, 1);
        tg_set_requires_grad(b, 1);
        tg_tensor *y = tg_matmul(ctx, a, b);
        cr_assert(tg_ndim(y) == 4 && tg_dim(y, 0) == 2 && tg_dim(y, 1) == 3);
        tg_tensor *g = rnd(ctx, dt, (shp){4, {2, 3, 5, 6}}, -1, 1);
        tg_backward(ctx, tg_sum(ctx, tg_mul(ctx, y, g)));
        tg_tensor *da = tg_new(ctx, dt, 4, tg_shape(a)), *db = tg_new(ctx, dt, 3, tg_shape(b));
        for (int i = 0; i < 2; i++) {
            for (int j = 0; j < 3; j++) {
                tg_tensor *ai =
                    tg_from(ctx, dt, 2, (int64_t[]){5, 7}, (char *)tg_data(a) + i * 35 * es);
                tg_tensor *bj =
                    tg_from(ctx, dt, 2, (int64_t[]){7, 6}, (char *)tg_data(b) + j * 42 * es);
                tg_set_requires_grad(ai, 1);
                tg_set_requires_grad(bj, 1);
                tg_tensor *yij = tg_matmul(ctx, ai, bj);
                cr_assert_eq(
                    memcmp(tg_data(yij), (char *)tg_data(y) + (i * 3 + j) * 30 * es, 30 * es), 0,
                    "entry [%d,%d] differs from the 2-D product", i, j);
                tg_tensor *gij = tg_from(ctx, dt, 2, (int64_t[]){5, 6},
                                         (char *)tg_data(g) + (i * 3 + j) * 30 * es);
                tg_backward(ctx, tg_sum(ctx, tg_mul(ctx, yij, gij)));
                for (int64_t e = 0; e < 35; e++)
                    set_at(da, i * 35 + e, at(da, i * 35 + e) + grad_at(ai, e));
                for (int64_t e = 0; e < 42; e++)
                    set_at(db, j * 42 + e, at(db, j * 42 + e) + grad_at(bj, e));
            }
        }
        for (int64_t e = 0; e < tg_numel(a); e++)
            cr_assert_float_eq(grad_at(a, e), at(da, e), dti ? 1e-13 : 1e-5);
        for (int64_t e = 0; e < tg_numel(b); e++)
            cr_assert_float_eq(grad_at(b, e), at(db, e), dti ? 1e-13 : 1e-5);
        tg_reset(ctx);
    }
}

static tg_tensor *raw_bmm(tg_ctx *c, tg_tensor *const *in, void *user)
{
    (void)user;
    return tg_matmul(c, in[0], in[1]);
}

Test(bmm, f32_agrees_with_f64)
{
    for (int k = 0; k < N_SHAPES; k++) {
        tg_tensor *in[2] = {rnd(ctx, TG_F64, SHAPES[k].a, -1, 1),
                            rnd(ctx, TG_F64, SHAPES[k].b, -1, 1)};
        f32_agrees_with_f64(ctx, raw_bmm, NULL, in, 2, "batched tg_matmul");
        tg_reset(ctx);
    }
}

/* 2-D x 2-D is still the "matmul" node; a batch makes a "bmm" node */
Test(bmm, two_d_keeps_its_node)
{
    tg_tensor *a = rnd(ctx, TG_F64, (shp){2, {3, 4}}, -1, 1),
              *b = rnd(ctx, TG_F64, (shp){2, {4, 2}}, -1, 1);
    tg_tensor *a3 = rnd(ctx, TG_F64, (shp){3, {2, 3, 4}}, -1, 1);
    tg_set_requires_grad(a, 1);
    tg_set_requires_grad(a3, 1);
    cr_assert_not_null(tg_matmul(ctx, a, b));
    cr_assert_not_null(tg_matmul(ctx, a3, b));
    char buf[4096] = {0};
    FILE *f = fmemopen(buf, sizeof buf - 1, "w");
    tg_tape_print(ctx, f);
    fclose(f);
    char *m = strstr(buf, "matmul"), *bm = strstr(buf, "bmm");
    cr_assert(m && bm && m < bm, "tape: %s", buf);
}

Test(bmm, bad_arguments)
{
    tg_tensor *a3 = rnd(ctx, TG_F64, (shp){3, {2, 3, 4}}, -1, 1);
    tg_tensor *b3 = rnd(ctx, TG_F64, (shp){3, {3, 4, 5}}, -1, 1);
    tg_tensor *b4 = rnd(ctx, TG_F64, (shp){3, {2, 5, 5}}, -1, 1);
    tg_tensor *v = rnd(ctx, TG_F64, (shp){1, {4}}, -1, 1);
    tg_tensor *bf = rnd(ctx, TG_F32, (shp){3, {2, 4, 5}}, -1, 1);
    tg_set_requires_grad(a3, 1);
    int64_t tape = tg_tape_len(ctx);
    assert_null_err(ctx, tg_matmul(ctx, a3, b3), "tg_matmul",
                    "batch dimensions cannot be broadcast", "a is [2,3,4], b is [3,4,5]");
    assert_null_err(ctx, tg_matmul(ctx, a3, b4), "tg_matmul", "inner dimensions differ",
                    "a is [2,3,4], b is [2,5,5]");
    assert_null_err(ctx, tg_matmul(ctx, a3, v), "tg_matmul", "at least 2 dims", "b is [4]");
    assert_null_err(ctx, tg_matmul(ctx, v, b3), "tg_matmul", "at least 2 dims", "a is [4]");
    assert_null_err(ctx, tg_matmul(ctx, a3, bf), "tg_matmul", "f64", "f32");
    assert_null_err(ctx, tg_matmul(ctx, a3, convert(ctx, bf, TG_I32)), "tg_matmul", "i32", NULL);
    cr_assert_eq(tg_tape_len(ctx), tape);
}
