/* SPDX-License-Identifier: MIT */
/* tests/ops/test_ops_index.c: tg_permute, tg_slice, tg_concat, tg_embedding.
 * Values and gradients against PyTorch (tests/index_reference.py ->
 * index_reference.h), values against naive index loops, f64 gradient checks
 * through random-weighted projections, f32 against f64, the edge cases
 * (identity permutation, slices of size 0 and 1, negative axes, concat of 1
 * and of 9 or more tensors along every axis, repeated embedding indices, idx
 * of 0 to 3 dims) and every bad argument with its message and no change. */
#include <criterion/criterion.h>

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tapegrad.h"
#include "index_ref.h"
#include "tg_test.h"

TG_TEST_SUITE(index, 4242); /* ctx: a fresh context per test */

/* ---- helpers ------------------------------------------------------------ */

/* The projection every gradient check here uses: sum(w * y) with w fixed
 * random weights in [0.5, 1.5) of y's shape, made on first use. */
typedef struct {
    tg_tensor *w;
} proj;

static tg_tensor *project(tg_ctx *c, proj *p, tg_tensor *y)
{
    if (!y) return NULL;
    if (!p->w) {
        p->w = tg_param(c, NULL, tg_dtype_of(y), tg_ndim(y), tg_shape(y));
        cr_assert_not_null(p->w, "%s", tg_errmsg(c));
        tg_set_requires_grad(p->w, 0);
        tg_fill_uniform(c, p->w, 0.5, 1.5);
    }
    return tg_sum(c, tg_mul(c, y, p->w));
}

/* the failing call left the tape and the arena as they were */
typedef struct {
    int64_t tape;
    size_t arena;
} snap;

static snap snap_take(void)
{
    tg_mem_stats m;
    tg_mem_stats_get(ctx, &m);
    return (snap){tg_tape_len(ctx), m.arena_used};
}

static void assert_unchanged(snap s, const char *what)
{
    snap n = snap_take();
    cr_assert_eq(n.tape, s.tape, "%s: the tape grew", what);
    cr_assert_eq(n.arena, s.arena, "%s: the arena grew", what);
}

/* x's flat index of multi-index ix (row-major) */
static int64_t flat(const tg_tensor *x, const int64_t *ix)
{
    int64_t f = 0;
    for (int i = 0; i < tg_ndim(x); i++) f = f * tg_dim(x, i) + ix[i];
    return f;
}

/* next multi-index of shape (ndim dims) in row-major order; 0 after the last */
static int next_index(int ndim, const int64_t *shape, int64_t *ix)
{
    for (int i = ndim - 1; i >= 0; i--) {
        if (++ix[i] < shape[i]) return 1;
        ix[i] = 0;
    }
    return 0;
}

/* ---- tg_permute ----------------------------------------------------------- */

typedef struct {
    int perm[4];
    proj p;
} perm_arg;

static tg_tensor *fn_permute(tg_ctx *c, tg_tensor *const *in, void *user)
{
    perm_arg *a = user;
    return project(c, &a->p, tg_permute(c, in[0], a->perm));
}

/* x used twice: a permuted copy plus the identity permutation of x itself */
static tg_tensor *fn_permute_fanout(tg_ctx *c, tg_tensor *const *in, void *user)
{
    perm_arg *a = user;
    static const int id[4] = {0, 1, 2, 3};
    tg_tensor *y = tg_permute(c, in[0], a->perm);
    tg_tensor *z = tg_permute(c, tg_permute(c, in[0], id), a->perm);
    return project(c, &a->p, tg_add(c, y, tg_mul(c, z, z)));
}

Test(index, permute_matches_pytorch)
{
    for (int dti = 0; dti < 2; dti++) {
        tg_dtype dt = dti ? TG_F64 : TG_F32;
        double tol = dti ? 0 : 1e-6;
        tg_tensor *x = ref_in(ctx, dt, (shp){4, {2, 3, 4, 5}}, 0);
        tg_set_requires_grad(x, 1);
        tg_tensor *y = tg_permute(ctx, x, (int[]){2, 0, 3, 1});
        cr_assert_not_null(y, "%s", tg_errmsg(ctx));
        int64_t want[4] = {4, 2, 5, 3};
        for (int i = 0; i < 4; i++) cr_assert_eq(tg_dim(y, i), want[i]);
        assert_ref(y, 0, REF_permute_4d_y, tol, "permute 4d y");
        tg_backward(ctx, ref_loss(ctx, y));
        assert_ref(x, 1, REF_permute_4d_d0, tol, "permute 4d dx");

        tg_tensor *x3 = ref_in(ctx, dt, (shp){3, {3, 4, 5}}, 0);
        tg_set_requires_grad(x3, 1);
        tg_tensor *y3 = tg_permute(ctx, x3, (int[]){0, 2, 1});
        assert_ref(y3, 0, REF_permute_3d_y, tol, "permute 3d y");
        tg_backward(ctx, ref_loss(ctx, y3));
        assert_ref(x3, 1, REF_permute_3d_d0, tol, "permute 3d dx");
        tg_reset(ctx);
    }
}

/* every permutation of a 4-D tensor, in both dtypes, against index arithmetic;
 * the gradient of sum(w * y) is w permuted back */
Test(index, permute_every_perm_against_index_loops)
{
    const shp shapes[] = {{4, {2, 3, 4, 5}}, {4, {3, 1, 2, 4}}, {4, {33, 2, 35, 3}}};
    for (int si = 0; si < 3; si++) {
        for (int code = 0; code < 256; code++) {
            int perm[4] = {code & 3, code >> 2 & 3, code >> 4 & 3, code >> 6 & 3};
            if ((1 << perm[0] | 1 << perm[1] | 1 << perm[2] | 1 << perm[3]) != 15) continue;
            for (int dti = 0; dti < 2; dti++) {
                tg_tensor *x = rnd(ctx, dti ? TG_F64 : TG_F32, shapes[si], -1, 1);
                tg_set_requires_grad(x, 1);
                tg_tensor *y = tg_permute(ctx, x, perm);
                cr_assert_not_null(y, "%s", tg_errmsg(ctx));
                tg_tensor *w =
                    rnd(ctx, tg_dtype_of(y),
                        (shp){4, {tg_dim(y, 0), tg_dim(y, 1), tg_dim(y, 2), tg_dim(y, 3)}}, -1, 1);
                tg_backward(ctx, tg_sum(ctx, tg_mul(ctx, y, w)));
                int64_t ix[4] = {0}, jx[4];
                do { /* ix indexes y; x's index has ix[k] on axis perm[k] */
                    for (int k = 0; k < 4; k++) jx[perm[k]] = ix[k];
                    cr_assert_eq(at(y, flat(y, ix)), at(x, flat(x, jx)), "perm %d%d%d%d", perm[0],
                                 perm[1], perm[2], perm[3]);
                    cr_assert_eq(grad_at(x, flat(x, jx)), at(w, flat(y, ix)));
                } while (next_index(4, tg_shape(y), ix));
                tg_reset(ctx);
            }
        }
    }
}

/* large enough to be split over threads: forward and backward give the same
 * bits with 1 and 2 threads, for a run-copy and a tiled permutation */
Test(index, permute_same_bits_for_any_thread_count)
{
    const int perms[2][4] = {{0, 2, 1, 3}, {3, 1, 2, 0}};
    for (int k = 0; k < 2; k++) {
        uint64_t h[2][2];
        for (int nt = 1; nt <= 2; nt++) {
            tg_ctx *c = tg_ctx_new(5);
            tg_set_threads(c, nt);
            tg_tensor *x = rnd(c, TG_F32, (shp){4, {16, 70, 4, 40}}, -1, 1);
            tg_set_requires_grad(x, 1);
            tg_tensor *y = tg_permute(c, x, perms[k]);
            tg_tensor *w =
                rnd(c, TG_F32, (shp){4, {tg_dim(y, 0), tg_dim(y, 1), tg_dim(y, 2), tg_dim(y, 3)}},
                    -1, 1);
            tg_backward(c, tg_sum(c, tg_mul(c, y, w)));
            cr_assert(tg_ok(c), "%s", tg_errmsg(c));
            h[nt - 1][0] = tg_hash(y);
            h[nt - 1][1] = tg_hash(tg_from(c, TG_F32, 4, tg_shape(x), tg_grad(x)));
            tg_ctx_free(c);
        }
        cr_assert_eq(h[0][0], h[1][0], "forward differs with 2 threads");
        cr_assert_eq(h[0][1], h[1][1], "backward differs with 2 threads");
    }
}

Test(index, permute_gradcheck)
{
    const struct {
        shp s;
        int perm[4];
    } cases[] = {
        {{4, {2, 3, 4, 5}}, {3, 1, 0, 2}},
        {{4, {2, 3, 4, 5}}, {0, 1, 2, 3}}, /* identity */
        {{4, {2, 3, 4, 5}}, {0, 2, 1, 3}},
        {{3, {3, 1, 4}}, {2, 0, 1}},
        {{2, {3, 5}}, {1, 0}},
        {{1, {6}}, {0}},
        {{0, {0}}, {0}},
        {{3, {2, 0, 3}}, {2, 1, 0}}, /* empty */
    };
    for (size_t k = 0; k < sizeof cases / sizeof cases[0]; k++) {
        perm_arg a = {.p = {0}};
        memcpy(a.perm, cases[k].perm, sizeof a.perm);
        tg_tensor *in[1] = {rnd(ctx, TG_F64, cases[k].s, -1, 1)};
        gradcheck_ok(ctx, fn_permute, &a, in, 1, "tg_permute");
        gradcheck_ok(ctx, fn_permute_fanout, &a, in, 1, "tg_permute fan-out");
        if (tg_numel(in[0]) > 0)
            assert_grads_nonzero(ctx, fn_permute_fanout, &a, in, 1, LOSS_SELF, "permute");
        tg_reset(ctx);
    }
}

/* the identity permutation is a copy: same values, new storage, gradient w */
Test(index, permute_identity_and_zero_dims)
{
    tg_tensor *x = rnd(ctx, TG_F64, (shp){3, {2, 3, 4}}, -1, 1);
    tg_tensor *y = tg_permute(ctx, x, (int[]){0, 1, 2});
    cr_assert_neq(tg_data(y), tg_data(x));
    cr_assert_eq(tg_hash(y), tg_hash(x));
    int64_t none = 0;
    tg_tensor *s = tg_new(ctx, TG_F32, 0, &none);
    tg_fill(s, 2.5);
    tg_tensor *t = tg_permute(ctx, s, NULL);
    cr_assert_not_null(t, "%s", tg_errmsg(ctx));
    cr_assert_eq(tg_ndim(t), 0);
    cr_assert_eq(tg_item(t), 2.5);
}

static tg_tensor *raw_permute(tg_ctx *c, tg_tensor *const *in, void *user)
{
    return tg_permute(c, in[0], user);
}

Test(index, permute_f32_agrees_with_f64)
{
    tg_tensor *in[1] = {rnd(ctx, TG_F64, (shp){4, {3, 5, 2, 7}}, -1, 1)};
    f32_agrees_with_f64(ctx, raw_permute, (int[]){3, 0, 2, 1}, in, 1, "tg_permute");
}

Test(index, permute_bad_arguments)
{
    tg_tensor *x = rnd(ctx, TG_F64, (shp){3, {2, 3, 4}}, -1, 1);
    tg_set_requires_grad(x, 1);
    snap s = snap_take();
    assert_null_err(ctx, tg_permute(ctx, x, (int[]){0, 1, 1}), "tg_permute", "(0,1,1)",
                    "not a permutation of 0..2 for x [2,3,4]");
    assert_null_err(ctx, tg_permute(ctx, x, (int[]){0, 3, 1}), "tg_permute", "(0,3,1)", "[2,3,4]");
    assert_null_err(ctx, tg_permute(ctx, x, (int[]){-1, 0, 1}), "tg_permute", "(-1,0,1)", NULL);
    assert_null_err(ctx, tg_permute(ctx, x, NULL), "tg_permute", "perm is NULL", "[2,3,4]");
    assert_null_err(ctx, tg_permute(ctx, NULL, (int[]){0}), "tg_permute", "x is NULL", NULL);
    assert_unchanged(s, "tg_permute");
    tg_tensor *xi = convert(ctx, x, TG_I32);
    assert_null_err(ctx, tg_permute(ctx, xi, (int[]){0, 1, 2}), "tg_permute", "i32", NULL);
    /* NULL in while an error is recorded: NULL out, the first message kept */
    tg_set_error(ctx, "first");
    cr_assert_null(tg_permute(ctx, x, (int[]){0, 1, 2}));
    cr_assert_str_eq(tg_errmsg(ctx), "first");
}

/* ---- tg_slice ------------------------------------------------------------- */

typedef struct {
    int axis;
    int64_t start, end;
    proj p;
} slice_arg;

static tg_tensor *fn_slice(tg_ctx *c, tg_tensor *const *in, void *user)
{
    slice_arg *a = user;
    tg_tensor *y = tg_slice(c, in[0], a->axis, a->start, a->end);
    /* a second, overlapping slice of the same x: gradients add up */
    tg_tensor *z = tg_slice(c, in[0], a->axis, a->start, a->end);
    return project(c, &a->p, tg_add(c, y, tg_mul(c, z, z)));
}

Test(index, slice_matches_pytorch)
{
    for (int dti = 0; dti < 2; dti++) {
        tg_dtype dt = dti ? TG_F64 : TG_F32;
        tg_tensor *x = ref_in(ctx, dt, (shp){3, {3, 5, 4}}, 0);
        tg_set_requires_grad(x, 1);
        tg_tensor *y = tg_slice(ctx, x, -2, 1, 4);
        cr_assert_not_null(y, "%s", tg_errmsg(ctx));
        cr_assert(tg_dim(y, 0) == 3 && tg_dim(y, 1) == 3 && tg_dim(y, 2) == 4);
        assert_ref(y, 0, REF_slice_neg_y, dti ? 0 : 1e-6, "slice y");
        tg_backward(ctx, ref_loss(ctx, y));
        assert_ref(x, 1, REF_slice_neg_d0, dti ? 0 : 1e-6, "slice dx");
        tg_reset(ctx);
    }
}

/* every axis (as given and counted from the end), slices of size 0, 1, all */
Test(index, slice_values_and_gradcheck_every_axis)
{
    const shp s = {4, {3, 4, 2, 5}};
    for (int ax = 0; ax < 4; ax++) {
        const int64_t n = s.shape[ax];
        const int64_t ranges[][2] = {{0, n}, {1, n - 1}, {1, 2}, {n - 1, n}, {2, 2}, {0, 0}};
        for (int r = 0; r < 6; r++) {
            for (int neg = 0; neg < 2; neg++) {
                slice_arg a = {neg ? ax - 4 : ax, ranges[r][0], ranges[r][1], {0}};
                tg_tensor *in[1] = {rnd(ctx, TG_F64, s, -1, 1)};
                tg_tensor *y = tg_slice(ctx, in[0], a.axis, a.start, a.end);
                cr_assert_not_null(y, "%s", tg_errmsg(ctx));
                cr_assert_eq(tg_dim(y, ax), a.end - a.start);
                int64_t ix[4] = {0}, jx[4];
                if (tg_numel(y) > 0) {
                    do {
                        memcpy(jx, ix, sizeof jx);
                        jx[ax] += a.start;
                        cr_assert_eq(at(y, flat(y, ix)), at(in[0], flat(in[0], jx)));
                    } while (next_index(4, tg_shape(y), ix));
                }
                gradcheck_ok(ctx, fn_slice, &a, in, 1, "tg_slice");
                if (tg_numel(y) > 0)
                    assert_grads_nonzero(ctx, fn_slice, &a, in, 1, LOSS_SELF, "slice");
                tg_reset(ctx);
            }
        }
    }
}

/* outside the slice dx stays 0; inside it is w (one slice, loss sum(w y)) */
Test(index, slice_gradient_lands_in_place)
{
    tg_tensor *x = rnd(ctx, TG_F32, (shp){2, {4, 6}}, -1, 1);
    tg_set_requires_grad(x, 1);
    tg_tensor *y = tg_slice(ctx, x, 1, 2, 5);
    tg_tensor *w = rnd(ctx, TG_F32, (shp){2, {4, 3}}, 1, 2);
    tg_backward(ctx, tg_sum(ctx, tg_mul(ctx, y, w)));
    for (int64_t i = 0; i < 4; i++)
        for (int64_t j = 0; j < 6; j++)
            cr_assert_eq(grad_at(x, i * 6 + j), j >= 2 && j < 5 ? at(w, i * 3 + j - 2) : 0.0);
}

static tg_tensor *raw_slice(tg_ctx *c, tg_tensor *const *in, void *user)
{
    const slice_arg *a = user;
    return tg_slice(c, in[0], a->axis, a->start, a->end);
}

Test(index, slice_f32_agrees_with_f64)
{
    tg_tensor *in[1] = {rnd(ctx, TG_F64, (shp){3, {3, 7, 4}}, -1, 1)};
    slice_arg a = {1, 2, 6, {0}};
    f32_agrees_with_f64(ctx, raw_slice, &a, in, 1, "tg_slice");
}

Test(index, slice_bad_arguments)
{
    tg_tensor *x = rnd(ctx, TG_F64, (shp){2, {4, 6}}, -1, 1);
    tg_set_requires_grad(x, 1);
    int64_t none = 0;
    tg_tensor *s0 = tg_new(ctx, TG_F64, 0, &none);
    snap s = snap_take();
    assert_null_err(ctx, tg_slice(ctx, x, 2, 0, 1), "tg_slice", "axis 2 is out of range",
                    "x [4,6] (2 dims)");
    assert_null_err(ctx, tg_slice(ctx, x, -3, 0, 1), "tg_slice", "axis -3", "[4,6]");
    assert_null_err(ctx, tg_slice(ctx, x, 1, 4, 3), "tg_slice", "[4, 3)", "axis 1 of x [4,6]");
    assert_null_err(ctx, tg_slice(ctx, x, 0, 2, 5), "tg_slice", "[2, 5)", "[0, 4]");
    assert_null_err(ctx, tg_slice(ctx, x, 0, -1, 2), "tg_slice", "[-1, 2)", NULL);
    assert_null_err(ctx, tg_slice(ctx, NULL, 0, 0, 1), "tg_slice", "x is NULL", NULL);
    assert_null_err(ctx, tg_slice(ctx, s0, 0, 0, 1), "tg_slice", "0-dim", NULL);
    assert_unchanged(s, "tg_slice");
    assert_null_err(ctx, tg_slice(ctx, convert(ctx, x, TG_I32), 0, 0, 1), "tg_slice", "i32", NULL);
}

/* ---- tg_concat ------------------------------------------------------------ */

typedef struct {
    int n, axis;
    proj p;
} concat_arg;

static tg_tensor *fn_concat(tg_ctx *c, tg_tensor *const *in, void *user)
{
    concat_arg *a = user;
    tg_tensor *y = tg_concat(c, in, a->n, a->axis);
    return project(c, &a->p, tg_mul(c, y, tg_exp(c, y)));
}

Test(index, concat_matches_pytorch)
{
    for (int dti = 0; dti < 2; dti++) {
        tg_dtype dt = dti ? TG_F64 : TG_F32;
        double tol = dti ? 0 : 1e-6;
        tg_tensor *xs[3] = {ref_in(ctx, dt, (shp){2, {2, 3}}, 0),
                            ref_in(ctx, dt, (shp){2, {2, 1}}, 1),
                            ref_in(ctx, dt, (shp){2, {2, 2}}, 2)};
        for (int k = 0; k < 3; k++) tg_set_requires_grad(xs[k], 1);
        tg_tensor *y = tg_concat(ctx, xs, 3, 1);
        cr_assert_not_null(y, "%s", tg_errmsg(ctx));
        cr_assert(tg_dim(y, 0) == 2 && tg_dim(y, 1) == 6);
        assert_ref(y, 0, REF_concat_1_y, tol, "concat axis 1 y");
        tg_backward(ctx, ref_loss(ctx, y));
        assert_ref(xs[0], 1, REF_concat_1_d0, tol, "concat dx0");
        assert_ref(xs[1], 1, REF_concat_1_d1, tol, "concat dx1");
        assert_ref(xs[2], 1, REF_concat_1_d2, tol, "concat dx2");

        tg_tensor *ys[2] = {ref_in(ctx, dt, (shp){3, {1, 2, 3}}, 0),
                            ref_in(ctx, dt, (shp){3, {2, 2, 3}}, 1)};
        tg_set_requires_grad(ys[0], 1);
        tg_set_requires_grad(ys[1], 1);
        tg_tensor *z = tg_concat(ctx, ys, 2, 0);
        assert_ref(z, 0, REF_concat_0_y, tol, "concat axis 0 y");
        tg_backward(ctx, ref_loss(ctx, z));
        assert_ref(ys[0], 1, REF_concat_0_d0, tol, "concat axis 0 dx0");
        assert_ref(ys[1], 1, REF_concat_0_d1, tol, "concat axis 0 dx1");
        tg_reset(ctx);
    }
}

/* n = 1, 2, 3, 8, 9, 17, 70 tensors (9 and more go through groups of 8),
 * along every axis of 3-D tensors whose sizes along it differ (one of 0):
 * values against index loops, gradients by finite differences */
Test(index, concat_any_n_every_axis)
{
    const int ns[] = {1, 2, 3, 8, 9, 17, 70};
    for (size_t ni = 0; ni < sizeof ns / sizeof ns[0]; ni++) {
        const int n = ns[ni];
        for (int ax = -3; ax < 3; ax++) {
            const int a = ax < 0 ? ax + 3 : ax;
            tg_tensor *xs[70];
            int64_t total = 0;
            for (int k = 0; k < n; k++) {
                shp s = {3, {2, 3, 2}};
                s.shape[a] = n > 1 && k == 1 ? 0 : 1 + k % 3;
                total += s.shape[a];
                xs[k] = rnd(ctx, TG_F64, s, -1, 1);
            }
            tg_tensor *y = tg_concat(ctx, xs, n, ax);
            cr_assert_not_null(y, "n %d axis %d: %s", n, ax, tg_errmsg(ctx));
            cr_assert_eq(tg_dim(y, a), total);
            int64_t ix[3] = {0}, jx[3];
            do { /* find the input that holds y's index along a */
                int k = 0;
                memcpy(jx, ix, sizeof jx);
                while (jx[a] >= tg_dim(xs[k], a)) jx[a] -= tg_dim(xs[k++], a);
                cr_assert_eq(at(y, flat(y, ix)), at(xs[k], flat(xs[k], jx)), "n %d axis %d", n, ax);
            } while (next_index(3, tg_shape(y), ix));
            if (n <= 17) { /* the finite differences of 70 inputs are slow and add nothing */
                concat_arg arg = {n, ax, {0}};
                gradcheck_ok(ctx, fn_concat, &arg, xs, n, "tg_concat");
            } else {
                for (int k = 0; k < n; k++) tg_set_requires_grad(xs[k], 1);
                tg_tensor *w =
                    rnd(ctx, TG_F64, (shp){3, {tg_dim(y, 0), tg_dim(y, 1), tg_dim(y, 2)}}, -1, 1);
                tg_backward(ctx, tg_sum(ctx, tg_mul(ctx, tg_concat(ctx, xs, n, ax), w)));
                memset(ix, 0, sizeof ix);
                do {
                    int k = 0;
                    memcpy(jx, ix, sizeof jx);
                    while (jx[a] >= tg_dim(xs[k], a)) jx[a] -= tg_dim(xs[k++], a);
                    cr_assert_eq(grad_at(xs[k], flat(xs[k], jx)), at(w, flat(y, ix)));
                } while (next_index(3, tg_shape(y), ix));
            }
            tg_reset(ctx);
        }
    }
}

/* n = 9 records ceil(9/8) + 1 nodes: the group of 8 and the final pair */
Test(index, concat_of_nine_records_two_nodes)
{
    tg_tensor *xs[9];
    for (int k = 0; k < 9; k++) {
        xs[k] = rnd(ctx, TG_F32, (shp){2, {2, 1 + k}}, -1, 1);
        tg_set_requires_grad(xs[k], 1);
    }
    int64_t before = tg_tape_len(ctx);
    tg_tensor *y = tg_concat(ctx, xs, 9, -1);
    cr_assert_not_null(y, "%s", tg_errmsg(ctx));
    cr_assert_eq(tg_tape_len(ctx) - before, 2);
    cr_assert_eq(tg_dim(y, 1), 45);
    /* one tensor: a single node, a copy */
    before = tg_tape_len(ctx);
    tg_tensor *z = tg_concat(ctx, xs, 1, 0);
    cr_assert_eq(tg_tape_len(ctx) - before, 1);
    cr_assert_neq(tg_data(z), tg_data(xs[0]));
    cr_assert_eq(tg_hash(z), tg_hash(xs[0]));
}

/* the same tensor three times: its gradient is the sum of its three parts */
Test(index, concat_repeated_input_accumulates)
{
    tg_tensor *x = rnd(ctx, TG_F64, (shp){2, {2, 3}}, -1, 1);
    tg_set_requires_grad(x, 1);
    tg_tensor *xs[3] = {x, x, x};
    concat_arg a = {3, 0, {0}};
    gradcheck_ok(ctx, fn_concat, &a, xs, 1, "concat of x, x, x");
    tg_tensor *y = tg_concat(ctx, xs, 3, 0);
    tg_tensor *w = rnd(ctx, TG_F64, (shp){2, {6, 3}}, -1, 1);
    tg_backward(ctx, tg_sum(ctx, tg_mul(ctx, y, w)));
    for (int64_t i = 0; i < 6; i++)
        cr_assert_float_eq(grad_at(x, i), at(w, i) + at(w, i + 6) + at(w, i + 12), 1e-15);
}

static tg_tensor *raw_concat(tg_ctx *c, tg_tensor *const *in, void *user)
{
    const concat_arg *a = user;
    return tg_concat(c, in, a->n, a->axis);
}

/* 10 tensors: through the groups of 8 */
Test(index, concat_f32_agrees_with_f64)
{
    tg_tensor *xs[10];
    for (int k = 0; k < 10; k++) xs[k] = rnd(ctx, TG_F64, (shp){3, {2, 1 + k % 4, 3}}, -1, 1);
    concat_arg a = {10, 1, {0}};
    f32_agrees_with_f64(ctx, raw_concat, &a, xs, 10, "tg_concat");
}

Test(index, concat_bad_arguments)
{
    tg_tensor *a = rnd(ctx, TG_F64, (shp){2, {2, 3}}, -1, 1);
    tg_tensor *b = rnd(ctx, TG_F64, (shp){2, {2, 4}}, -1, 1);
    tg_tensor *c3 = rnd(ctx, TG_F64, (shp){3, {2, 3, 1}}, -1, 1);
    tg_set_requires_grad(a, 1);
    tg_tensor *af = convert(ctx, a, TG_F32), *ai = convert(ctx, a, TG_I32);
    int64_t none = 0;
    tg_tensor *s0 = tg_new(ctx, TG_F64, 0, &none);
    snap s = snap_take();
    assert_null_err(ctx, tg_concat(ctx, (tg_tensor *[]){a, b}, 2, 0), "tg_concat",
                    "xs[1] is [2,4] but xs[0] is [2,3]", "except along axis 0");
    assert_null_err(ctx, tg_concat(ctx, (tg_tensor *[]){a, c3}, 2, 1), "tg_concat",
                    "xs[1] is [2,3,1]", NULL);
    assert_null_err(ctx, tg_concat(ctx, (tg_tensor *[]){a, b}, 2, 2), "tg_concat",
                    "axis 2 is out of range", "xs[0] [2,3]");
    assert_null_err(ctx, tg_concat(ctx, (tg_tensor *[]){a, b}, 2, -3), "tg_concat", "axis -3",
                    NULL);
    assert_null_err(ctx, tg_concat(ctx, (tg_tensor *[]){a, af}, 2, 0), "tg_concat", "f64", "f32");
    assert_null_err(ctx, tg_concat(ctx, (tg_tensor *[]){a, ai}, 2, 0), "tg_concat", "xs[1]", "i32");
    assert_null_err(ctx, tg_concat(ctx, (tg_tensor *[]){a, NULL}, 2, 0), "tg_concat",
                    "xs[1] is NULL", NULL);
    assert_null_err(ctx, tg_concat(ctx, (tg_tensor *[]){a}, 0, 0), "tg_concat", "n >= 1", "n = 0");
    assert_null_err(ctx, tg_concat(ctx, NULL, 2, 0), "tg_concat", "xs NULL", NULL);
    assert_null_err(ctx, tg_concat(ctx, (tg_tensor *[]){s0, s0}, 2, 0), "tg_concat", "0-dim", NULL);
    /* a mismatch in the 12th of 12 tensors: nothing of the first 8 is recorded */
    tg_tensor *many[12];
    for (int k = 0; k < 12; k++) many[k] = k < 11 ? a : b;
    assert_null_err(ctx, tg_concat(ctx, many, 12, 0), "tg_concat", "xs[11] is [2,4]", NULL);
    assert_unchanged(s, "tg_concat");
}

/* ---- tg_embedding --------------------------------------------------------- */

typedef struct {
    tg_tensor *idx;
    proj p;
} embed_arg;

static tg_tensor *fn_embed(tg_ctx *c, tg_tensor *const *in, void *user)
{
    embed_arg *a = user;
    tg_tensor *y = tg_embedding(c, in[0], a->idx);
    return project(c, &a->p, tg_mul(c, y, tg_exp(c, y)));
}

static tg_tensor *idx_of(tg_ctx *c, int ndim, const int64_t *shape, const int32_t *v)
{
    tg_tensor *t = tg_from(c, TG_I32, ndim, shape, v);
    cr_assert_not_null(t, "%s", tg_errmsg(c));
    return t;
}

Test(index, embedding_matches_pytorch)
{
    for (int dti = 0; dti < 2; dti++) {
        tg_dtype dt = dti ? TG_F64 : TG_F32;
        double tol = dti ? 0 : 1e-6;
        tg_tensor *w = ref_in(ctx, dt, (shp){2, {5, 3}}, 0);
        tg_set_requires_grad(w, 1);
        int32_t iv[6];
        for (int i = 0; i < 6; i++) iv[i] = REF_embed_idx[i];
        tg_tensor *idx = idx_of(ctx, 2, (int64_t[]){2, 3}, iv);
        tg_tensor *y = tg_embedding(ctx, w, idx);
        cr_assert_not_null(y, "%s", tg_errmsg(ctx));
        cr_assert(tg_ndim(y) == 3 && tg_dim(y, 0) == 2 && tg_dim(y, 1) == 3 && tg_dim(y, 2) == 3);
        assert_ref(y, 0, REF_embed_y, tol, "embedding y");
        tg_backward(ctx, ref_loss(ctx, y)); /* row 1 is picked three times */
        assert_ref(w, 1, REF_embed_d0, dti ? 1e-15 : 1e-6, "embedding dweight");
        tg_reset(ctx);
    }
}

/* idx of 0, 1, 2 and 3 dims, with repeats and a row never picked */
Test(index, embedding_idx_shapes_and_gradcheck)
{
    const int32_t v[24] = {3, 0, 3, 1, 3, 2, 0, 0, 1, 3, 2, 3, 0, 1, 1, 3, 2, 2, 0, 3, 1, 0, 2, 3};
    const shp ishapes[] = {{0, {0}}, {1, {5}}, {2, {2, 3}}, {3, {2, 3, 4}}, {1, {0}}};
    for (int k = 0; k < 5; k++) {
        tg_tensor *w = rnd(ctx, TG_F64, (shp){2, {5, 4}}, -1, 1); /* row 4 is never used */
        tg_tensor *idx = idx_of(ctx, ishapes[k].ndim, ishapes[k].shape, v);
        tg_tensor *y = tg_embedding(ctx, w, idx);
        cr_assert_not_null(y, "%s", tg_errmsg(ctx));
        cr_assert_eq(tg_ndim(y), ishapes[k].ndim + 1);
        for (int i = 0; i < ishapes[k].ndim; i++) cr_assert_eq(tg_dim(y, i), ishapes[k].shape[i]);
        cr_assert_eq(tg_dim(y, ishapes[k].ndim), 4);
        for (int64_t i = 0; i < tg_numel(idx); i++)
            for (int64_t j = 0; j < 4; j++) cr_assert_eq(at(y, i * 4 + j), at(w, v[i] * 4 + j));
        embed_arg a = {idx, {0}};
        tg_tensor *in[1] = {w};
        gradcheck_ok(ctx, fn_embed, &a, in, 1, "tg_embedding");
        if (tg_numel(idx) > 0) assert_grads_nonzero(ctx, fn_embed, &a, in, 1, LOSS_SELF, "embed");
        /* dweight row v = sum of dy over the positions holding v; row 4: 0 */
        tg_tensor *w2 = rnd(ctx, TG_F64, (shp){2, {5, 4}}, -1, 1);
        tg_set_requires_grad(w2, 1);
        tg_tensor *y2 = tg_embedding(ctx, w2, idx);
        tg_tensor *g = tg_new(ctx, TG_F64, tg_ndim(y2), tg_shape(y2));
        tg_fill_uniform(ctx, g, -1, 1);
        tg_backward(ctx, tg_sum(ctx, tg_mul(ctx, y2, g)));
        if (tg_numel(idx) == 0) {
            cr_assert(tg_grad(w2) == NULL || grad_at(w2, 0) == 0);
        } else {
            for (int64_t r = 0; r < 5; r++)
                for (int64_t j = 0; j < 4; j++) {
                    double want = 0;
                    for (int64_t i = 0; i < tg_numel(idx); i++)
                        if (v[i] == r) want += at(g, i * 4 + j);
                    cr_assert_float_eq(grad_at(w2, r * 4 + j), want, 1e-14);
                }
        }
        tg_reset(ctx);
    }
}

static tg_tensor *raw_embed(tg_ctx *c, tg_tensor *const *in, void *user)
{
    return tg_embedding(c, in[0], user);
}

Test(index, embedding_f32_agrees_with_f64)
{
    tg_tensor *in[1] = {rnd(ctx, TG_F64, (shp){2, {7, 5}}, -1, 1)};
    const int32_t v[8] = {6, 1, 1, 0, 6, 6, 3, 2};
    f32_agrees_with_f64(ctx, raw_embed, idx_of(ctx, 2, (int64_t[]){2, 4}, v), in, 1,
                        "tg_embedding");
}

Test(index, embedding_bad_arguments)
{
    tg_tensor *w = rnd(ctx, TG_F64, (shp){2, {4, 3}}, -1, 1);
    tg_set_requires_grad(w, 1);
    const int32_t v[5] = {0, 3, 4, -1, 1};
    tg_tensor *bad_hi = idx_of(ctx, 1, (int64_t[]){3}, v);     /* 0, 3, 4 */
    tg_tensor *bad_lo = idx_of(ctx, 1, (int64_t[]){2}, v + 3); /* -1, 1 */
    tg_tensor *ok = idx_of(ctx, 1, (int64_t[]){2}, v);
    tg_tensor *idx4 = tg_new(ctx, TG_I32, 4, (int64_t[]){1, 1, 1, 2});
    tg_tensor *fidx = rnd(ctx, TG_F64, (shp){1, {2}}, 0, 1);
    tg_tensor *wi = convert(ctx, w, TG_I32), *w1 = rnd(ctx, TG_F64, (shp){1, {4}}, -1, 1);
    snap s = snap_take();
    assert_null_err(ctx, tg_embedding(ctx, w, bad_hi), "tg_embedding", "idx[2] (flat) = 4",
                    "outside [0, 4), the rows of weight [4,3]");
    assert_null_err(ctx, tg_embedding(ctx, w, bad_lo), "tg_embedding", "idx[0] (flat) = -1",
                    "[0, 4)");
    assert_null_err(ctx, tg_embedding(ctx, wi, ok), "tg_embedding", "weight", "i32");
    assert_null_err(ctx, tg_embedding(ctx, w, fidx), "tg_embedding", "idx must be i32",
                    "got f64 [2]");
    assert_null_err(ctx, tg_embedding(ctx, w1, ok), "tg_embedding", "weight must be 2-D",
                    "got [4]");
    assert_null_err(ctx, tg_embedding(ctx, w, idx4), "tg_embedding", "idx [1,1,1,2] has 4 dims",
                    NULL);
    assert_null_err(ctx, tg_embedding(ctx, NULL, ok), "tg_embedding", "weight is NULL", NULL);
    assert_null_err(ctx, tg_embedding(ctx, w, NULL), "tg_embedding", "idx is NULL", NULL);
    assert_unchanged(s, "tg_embedding");
    cr_assert_null(tg_grad(w), "a failed call reached the gradient");
}
