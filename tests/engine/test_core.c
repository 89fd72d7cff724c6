/* SPDX-License-Identifier: MIT */
/* test_core.c: the engine itself — tensors, parameters, the error model, the
 * tape and backward (fan-out, deep chains, accumulation, zero_grad, no_grad),
 * the arena (flat memory over 10,000 steps), the random generator, hashing,
 * custom ops and tg_gradcheck's own behaviour. */
#include <criterion/criterion.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tapegrad.h"

static tg_ctx *ctx;
static void setup(void) { ctx = tg_ctx_new(7); }
static void teardown(void) { tg_ctx_free(ctx); }
TestSuite(core, .init = setup, .fini = teardown);

static tg_tensor *vec64(int64_t n, const double *v) {
    return tg_from(ctx, TG_F64, 1, &n, v);
}

/* ---- tensors ---- */

Test(core, new_and_from) {
    int64_t s[3] = {2, 3, 4};
    tg_tensor *t = tg_new(ctx, TG_F32, 3, s);
    cr_assert_not_null(t);
    cr_assert_eq(tg_ndim(t), 3);
    cr_assert_eq(tg_numel(t), 24);
    cr_assert_eq(tg_dim(t, -1), 4);
    cr_assert_eq(tg_dim(t, 5), 0);
    for (int i = 0; i < 24; i++) cr_assert_eq(((float *)tg_data(t))[i], 0.0f);
    cr_assert_null(tg_grad(t));
    cr_assert_eq((uintptr_t)tg_data(t) % 64, 0, "arena data is 64-byte aligned");
    double v[3] = {1, 2, 3};
    tg_tensor *u = vec64(3, v);
    cr_assert_eq(((double *)tg_data(u))[2], 3.0);
    v[2] = 9; /* tg_from copies */
    cr_assert_eq(((double *)tg_data(u))[2], 3.0);
    tg_tensor *sc = tg_scalar(ctx, TG_F64, 2.5);
    cr_assert_eq(tg_ndim(sc), 0);
    cr_assert_eq(tg_item(sc), 2.5);
    char b[32];
    cr_assert_str_eq(tg_shape_str(t, b, sizeof b), "[2,3,4]");
    cr_assert_str_eq(tg_shape_str(sc, b, sizeof b), "[]");
}

/* tg_from copies every length exactly, the short ones (copied inline) included */
Test(core, from_copies_every_small_length) {
    float f[12];
    double d[6];
    for (int i = 0; i < 12; i++) f[i] = (float)(i + 1) * 1.25f;
    for (int i = 0; i < 6; i++) d[i] = -(double)(i + 1) / 3.0;
    for (int64_t n = 1; n <= 12; n++) {
        const float *t = tg_data(tg_from(ctx, TG_F32, 1, &n, f));
        cr_assert_eq(memcmp(t, f, (size_t)n * sizeof *f), 0, "%lld floats", (long long)n);
        cr_assert_eq(t[n - 1], (float)n * 1.25f);
    }
    for (int64_t n = 1; n <= 6; n++) {
        const double *t = tg_data(tg_from(ctx, TG_F64, 1, &n, d));
        cr_assert_eq(memcmp(t, d, (size_t)n * sizeof *d), 0, "%lld doubles", (long long)n);
    }
}

/* tg_wrap reads the caller's array in place: the same pointer, later changes
 * visible, and every op gives the bits it gives on a copy. The arrays are
 * malloc'd at their exact size and start one element past malloc's alignment,
 * so that (under ASan) any kernel reading past the end of an input, or relying
 * on the arena's 64-byte alignment, is caught. */
static void wrap_vs_copy(int64_t m, int64_t k, int64_t n) {
    float *xs = malloc((size_t)(m * k + 1) * sizeof *xs);
    int32_t *ys = malloc((size_t)m * sizeof *ys);
    cr_assert(xs && ys);
    float *x = xs + 1; /* 4-byte aligned, not 16 */
    for (int64_t i = 0; i < m * k; i++) x[i] = (float)((i * 37 % 23) - 11) / 8.0f;
    for (int64_t i = 0; i < m; i++) ys[i] = (int32_t)(i % n);
    tg_tensor *w = tg_param(ctx, NULL, TG_F32, 2, (int64_t[]){k, n});
    tg_tensor *b = tg_param(ctx, NULL, TG_F32, 1, (int64_t[]){n});
    tg_fill_uniform(ctx, w, -0.5, 0.5);
    tg_fill_uniform(ctx, b, -0.1, 0.1);
    float *g[2][3], l[2];
    for (int wrap = 0; wrap < 2; wrap++) {
        int64_t xsh[2] = {m, k}, ysh[1] = {m};
        tg_tensor *tx = wrap ? tg_wrap(ctx, TG_F32, 2, xsh, x) : tg_from(ctx, TG_F32, 2, xsh, x);
        tg_tensor *ty = wrap ? tg_wrap(ctx, TG_I32, 1, ysh, ys) : tg_from(ctx, TG_I32, 1, ysh, ys);
        cr_assert_not_null(tx, "%s", tg_errmsg(ctx));
        if (wrap) {
            cr_assert_eq(tg_data(tx), (void *)x, "tg_wrap does not copy");
            cr_assert_eq(tg_data(ty), (void *)ys);
        }
        tg_set_requires_grad(tx, 1);
        /* a product, bias and activation, a sum of x with itself, a softmax and
         * sum over x, and cross-entropy with wrapped labels */
        tg_tensor *h = tg_linear(ctx, tx, w, b, TG_ACT_TANH);
        tg_tensor *s = tg_sum(ctx, tg_mul(ctx, tg_add(ctx, tx, tx), tg_softmax(ctx, tx)));
        tg_tensor *loss = tg_add(ctx, tg_cross_entropy(ctx, h, ty), s);
        tg_zero_grad(ctx);
        tg_backward(ctx, loss);
        cr_assert(tg_ok(ctx), "%s", tg_errmsg(ctx));
        l[wrap] = (float)tg_item(loss);
        const tg_tensor *src[3] = {tx, w, b};
        for (int i = 0; i < 3; i++) {
            size_t bytes = (size_t)tg_numel(src[i]) * sizeof(float);
            g[wrap][i] = malloc(bytes);
            memcpy(g[wrap][i], tg_grad(src[i]), bytes);
        }
        if (wrap) {
            x[0] += 1.0f; /* the tensor sees the caller's array, not a copy */
            cr_assert_eq(((float *)tg_data(tx))[0], x[0]);
        }
        tg_reset(ctx);
    }
    cr_assert_eq(memcmp(&l[0], &l[1], sizeof l[0]), 0, "%lldx%lldx%lld loss", (long long)m,
                 (long long)k, (long long)n);
    const int64_t sizes[3] = {m * k, k * n, n};
    for (int i = 0; i < 3; i++) {
        cr_assert_eq(memcmp(g[0][i], g[1][i], (size_t)sizes[i] * sizeof(float)), 0,
                     "%lldx%lldx%lld: gradient %d differs", (long long)m, (long long)k,
                     (long long)n, i);
        free(g[0][i]);
        free(g[1][i]);
    }
    free(xs);
    free(ys);
}

Test(core, wrap_reads_in_place_with_the_bits_of_a_copy) {
    wrap_vs_copy(1, 1, 1);
    wrap_vs_copy(3, 5, 2);
    wrap_vs_copy(4, 2, 1);
    wrap_vs_copy(7, 13, 10);
    wrap_vs_copy(67, 131, 10);  /* the direct GEMM path */
    wrap_vs_copy(256, 97, 33);  /* the blocked path, packing x */
}

Test(core, wrap_errors_and_what_it_refuses) {
    float v[5] = {1, 2, 3, 4, 5};
    const float before[5] = {1, 2, 3, 4, 5};
    cr_assert_null(tg_wrap(ctx, TG_F32, 1, (int64_t[]){2}, NULL));
    cr_assert(strstr(tg_errmsg(ctx), "tg_wrap: data is NULL"), "%s", tg_errmsg(ctx));
    tg_clear_error(ctx);
    cr_assert_null(tg_wrap(ctx, TG_F32, 1, (int64_t[]){-2}, v));
    cr_assert(strstr(tg_errmsg(ctx), "tg_wrap: invalid shape [-2]"), "%s", tg_errmsg(ctx));
    tg_clear_error(ctx);
    cr_assert_null(tg_wrap(ctx, TG_F32, 2, (int64_t[]){1, 2}, (char *)v + 2));
    cr_assert(strstr(tg_errmsg(ctx), "tg_wrap: data") &&
                  strstr(tg_errmsg(ctx), "is not aligned to 4 bytes") &&
                  strstr(tg_errmsg(ctx), "[1,2]"),
              "%s", tg_errmsg(ctx));
    tg_clear_error(ctx);
    cr_assert_null(tg_wrap(ctx, TG_F64, 1, (int64_t[]){2}, v + 1)); /* 4 bytes, not 8 */
    cr_assert(strstr(tg_errmsg(ctx), "not aligned to 8 bytes"), "%s", tg_errmsg(ctx));
    tg_clear_error(ctx);

    /* tapegrad does not write the caller's memory: every filler refuses */
    tg_tensor *t = tg_wrap(ctx, TG_F32, 1, (int64_t[]){5}, v);
    cr_assert_not_null(t);
    tg_fill(t, 7.0);
    cr_assert(strstr(tg_errmsg(ctx), "tg_fill: t (f32 [5]) wraps the caller's memory (tg_wrap)"),
              "%s", tg_errmsg(ctx));
    tg_clear_error(ctx);
    tg_fill_uniform(ctx, t, 0, 1);
    cr_assert(strstr(tg_errmsg(ctx), "tg_fill_uniform: t (f32 [5]) wraps"), "%s", tg_errmsg(ctx));
    tg_clear_error(ctx);
    tg_fill_normal(ctx, t, 0, 1);
    cr_assert(strstr(tg_errmsg(ctx), "tg_fill_normal: t (f32 [5]) wraps"), "%s", tg_errmsg(ctx));
    tg_clear_error(ctx);
    cr_assert_neq(tg_init_tensor(ctx, t, TG_INIT_ZEROS, 5, 5, 0.0), 0);
    cr_assert(strstr(tg_errmsg(ctx), "tg_init_tensor: w (f32 [5]) wraps"), "%s", tg_errmsg(ctx));
    tg_clear_error(ctx);
    cr_assert_eq(memcmp(v, before, sizeof v), 0, "the caller's array is untouched");

    /* a temporary like any other: tg_reset ends the tensor, not the array */
    tg_reset(ctx);
    cr_assert_eq(memcmp(v, before, sizeof v), 0);
}

Test(core, bad_shapes_are_errors) {
    int64_t neg[2] = {2, -1};
    cr_assert_null(tg_new(ctx, TG_F32, 2, neg));
    cr_assert(strstr(tg_errmsg(ctx), "tg_new: invalid shape [2,-1]"), "%s", tg_errmsg(ctx));
    tg_clear_error(ctx);
    int64_t s5[5] = {1, 1, 1, 1, 1};
    cr_assert_null(tg_new(ctx, TG_F32, 5, s5));
    cr_assert(strstr(tg_errmsg(ctx), "ndim"), "%s", tg_errmsg(ctx));
    tg_clear_error(ctx);
    cr_assert_null(tg_from(ctx, TG_F32, 1, (int64_t[]){2}, NULL));
    cr_assert(strstr(tg_errmsg(ctx), "tg_from: data is NULL"));
    tg_clear_error(ctx);
    cr_assert_null(tg_new(ctx, (tg_dtype)9, 1, (int64_t[]){2}));
    cr_assert(strstr(tg_errmsg(ctx), "invalid dtype"));
}

Test(core, params_named_and_found) {
    tg_tensor *w = tg_param(ctx, "fc1.weight", TG_F32, 2, (int64_t[]){3, 2});
    tg_tensor *b = tg_param(ctx, NULL, TG_F64, 1, (int64_t[]){2});
    cr_assert_not_null(w);
    cr_assert_not_null(b);
    cr_assert_str_eq(tg_name(w), "fc1.weight");
    cr_assert_str_eq(tg_name(b), "param1");
    cr_assert_eq(tg_param_count(ctx), 2);
    cr_assert_eq(tg_param_at(ctx, 0), w);
    cr_assert_eq(tg_param_find(ctx, "param1"), b);
    cr_assert_null(tg_param_find(ctx, "nope"));
    cr_assert(tg_requires_grad(w));
    cr_assert_null(tg_param(ctx, "fc1.weight", TG_F32, 1, (int64_t[]){1}));
    cr_assert(strstr(tg_errmsg(ctx), "exists already"), "%s", tg_errmsg(ctx));
    tg_clear_error(ctx);
    cr_assert_null(tg_param(ctx, "labels", TG_I32, 1, (int64_t[]){1}));
    cr_assert(strstr(tg_errmsg(ctx), "must be f32 or f64"));
    /* parameters survive tg_reset */
    ((float *)tg_data(w))[0] = 4;
    tg_reset(ctx);
    cr_assert_eq(((float *)tg_data(w))[0], 4.0f);
}

/* ---- the error model ---- */

static int cb_calls;
static void on_error(const tg_ctx *c, const char *msg, void *user) {
    (void)c;
    cb_calls++;
    cr_assert(strstr(msg, "tg_matmul"));
    *(int *)user = 1;
}

Test(core, sticky_first_error_and_callback) {
    int flag = 0;
    cb_calls = 0;
    tg_set_error_callback(ctx, on_error, &flag);
    tg_tensor *a = tg_new(ctx, TG_F32, 2, (int64_t[]){4, 3});
    tg_tensor *b = tg_new(ctx, TG_F32, 2, (int64_t[]){2, 5});
    cr_assert(tg_ok(ctx));
    cr_assert_str_eq(tg_errmsg(ctx), "");
    tg_tensor *c = tg_matmul(ctx, a, b);
    cr_assert_null(c);
    cr_assert_not(tg_ok(ctx));
    cr_assert_str_eq(tg_errmsg(ctx), "tg_matmul: inner dimensions differ: a is [4,3], b is [2,5]");
    /* the chain after the error returns NULL and keeps the first message */
    cr_assert_null(tg_relu(ctx, c));
    cr_assert_null(tg_sum(ctx, tg_sigmoid(ctx, c)));
    cr_assert_null(tg_add(ctx, a, a), "calls with valid tensors also return NULL once an error is recorded");
    cr_assert_str_eq(tg_errmsg(ctx), "tg_matmul: inner dimensions differ: a is [4,3], b is [2,5]");
    cr_assert_eq(cb_calls, 1);
    cr_assert_eq(flag, 1);
    tg_clear_error(ctx);
    cr_assert(tg_ok(ctx));
    cr_assert_not_null(tg_add(ctx, a, a));
}

Test(core, null_argument_named) {
    cr_assert_null(tg_relu(ctx, NULL));
    cr_assert(strstr(tg_errmsg(ctx), "tg_relu"), "%s", tg_errmsg(ctx));
    cr_assert(strstr(tg_errmsg(ctx), "NULL"), "%s", tg_errmsg(ctx));
    cr_assert_null(tg_relu(NULL, NULL), "a NULL ctx is not a crash");
    tg_backward(NULL, NULL);
    tg_reset(NULL);
    tg_ctx_free(NULL);
    cr_assert_not(tg_ok(NULL));
}

Test(core, tensor_of_another_context) {
    tg_ctx *other = tg_ctx_new(1);
    tg_tensor *a = tg_new(other, TG_F32, 1, (int64_t[]){3});
    tg_tensor *b = tg_new(ctx, TG_F32, 1, (int64_t[]){3});
    cr_assert_null(tg_add(ctx, a, b));
    cr_assert(strstr(tg_errmsg(ctx), "another context"), "%s", tg_errmsg(ctx));
    tg_ctx_free(other);
}

Test(core, backward_needs_a_scalar_float_loss) {
    tg_tensor *w = tg_param(ctx, "w", TG_F64, 1, (int64_t[]){3});
    tg_tensor *y = tg_exp(ctx, w);
    tg_backward(ctx, y);
    cr_assert(strstr(tg_errmsg(ctx), "tg_backward: loss must have one element, got [3]"),
              "%s", tg_errmsg(ctx));
    tg_clear_error(ctx);
    tg_tensor *c = tg_sum(ctx, tg_new(ctx, TG_F64, 1, (int64_t[]){3}));
    tg_backward(ctx, c);
    cr_assert(strstr(tg_errmsg(ctx), "does not require a gradient"), "%s", tg_errmsg(ctx));
    tg_clear_error(ctx);
    tg_backward(ctx, NULL);
    cr_assert(strstr(tg_errmsg(ctx), "tg_backward: argument loss is NULL"));
}

Test(core, set_requires_grad_only_on_leaves) {
    tg_tensor *x = tg_new(ctx, TG_F64, 1, (int64_t[]){2});
    cr_assert_not(tg_requires_grad(x));
    tg_set_requires_grad(x, 1);
    cr_assert(tg_requires_grad(x));
    tg_tensor *y = tg_exp(ctx, x);
    cr_assert(tg_requires_grad(y));
    tg_set_requires_grad(y, 0);
    cr_assert(strstr(tg_errmsg(ctx), "not a leaf"), "%s", tg_errmsg(ctx));
    tg_clear_error(ctx);
    tg_tensor *lab = tg_new(ctx, TG_I32, 1, (int64_t[]){2});
    tg_set_requires_grad(lab, 1);
    cr_assert(strstr(tg_errmsg(ctx), "i32"));
}

/* ---- the tape and backward ---- */

Test(core, fan_out_accumulates) {
    double v[3] = {1, -2, 3};
    tg_tensor *x = vec64(3, v);
    tg_set_requires_grad(x, 1);
    /* sum(x + x) -> 2 ; sum(x * x) -> 2x ; x used by three ops */
    tg_tensor *l = tg_sum(ctx, tg_add(ctx, x, x));
    tg_backward(ctx, l);
    for (int i = 0; i < 3; i++) cr_assert_float_eq(((double *)tg_grad(x))[i], 2.0, 1e-15);
    tg_reset(ctx);
    x = vec64(3, v);
    tg_set_requires_grad(x, 1);
    tg_backward(ctx, tg_sum(ctx, tg_mul(ctx, x, x)));
    for (int i = 0; i < 3; i++) cr_assert_float_eq(((double *)tg_grad(x))[i], 2 * v[i], 1e-15);
    tg_reset(ctx);
    x = vec64(3, v);
    tg_set_requires_grad(x, 1);
    tg_tensor *a = tg_exp(ctx, x), *b = tg_scale(ctx, x, 3.0), *c = tg_neg(ctx, x);
    tg_backward(ctx, tg_sum(ctx, tg_add(ctx, tg_add(ctx, a, b), c)));
    for (int i = 0; i < 3; i++)
        cr_assert_float_eq(((double *)tg_grad(x))[i], exp(v[i]) + 3 - 1, 1e-12);
    cr_assert(tg_ok(ctx));
}

Test(core, deep_chain_no_recursion) {
    /* 20,000 nodes: a recursive backward would be in trouble; ours is a loop */
    tg_tensor *x = tg_param(ctx, "x", TG_F64, 0, NULL);
    ((double *)tg_data(x))[0] = 0.5;
    tg_tensor *y = x;
    for (int i = 0; i < 20000; i++) y = tg_scale(ctx, y, 1.0001);
    tg_backward(ctx, y);
    cr_assert(tg_ok(ctx), "%s", tg_errmsg(ctx));
    cr_assert_float_eq(((double *)tg_grad(x))[0], pow(1.0001, 20000), 1e-6);
    cr_assert_eq(tg_tape_len(ctx), 20000);
}

Test(core, stacked_sigmoids_vanish) {
    /* the vanishing gradient through stacked sigmoids: each layer multiplies by
     * s(1-s) <= 1/4 */
    tg_tensor *x = tg_param(ctx, "x", TG_F64, 0, NULL);
    tg_tensor *y = x;
    for (int i = 0; i < 10; i++) y = tg_sigmoid(ctx, y);
    tg_backward(ctx, y);
    double g = ((double *)tg_grad(x))[0];
    cr_assert(g > 0 && g < pow(0.25, 10) * 1.0001, "gradient %g", g);
}

Test(core, param_grad_accumulates_and_zero_grad_clears) {
    tg_tensor *w = tg_param(ctx, "w", TG_F64, 1, (int64_t[]){2});
    double *wd = tg_data(w);
    wd[0] = 1.5;
    wd[1] = -0.5;
    cr_assert_null(tg_grad(w));
    tg_tensor *l = tg_sum(ctx, tg_mul(ctx, w, w));
    tg_backward(ctx, l);
    double *g = tg_grad(w);
    cr_assert_not_null(g);
    cr_assert_float_eq(g[0], 3.0, 1e-15);
    /* a second backward on the same tape adds exactly the same gradient */
    tg_backward(ctx, l);
    cr_assert_float_eq(g[0], 6.0, 1e-15);
    cr_assert_float_eq(g[1], -2.0, 1e-15);
    /* and across steps too, until zero_grad */
    tg_reset(ctx);
    tg_backward(ctx, tg_sum(ctx, w));
    cr_assert_float_eq(g[0], 7.0, 1e-15);
    tg_zero_grad(ctx);
    cr_assert_eq(g[0], 0.0);
    cr_assert_eq(g[1], 0.0);
}

Test(core, intermediate_grads_inspectable_and_not_doubled) {
    tg_tensor *x = tg_param(ctx, "x", TG_F64, 1, (int64_t[]){2});
    ((double *)tg_data(x))[0] = 0.3;
    ((double *)tg_data(x))[1] = -0.7;
    tg_tensor *h = tg_tanh(ctx, x);
    tg_tensor *l = tg_sum(ctx, tg_scale(ctx, h, 2.0));
    tg_backward(ctx, l);
    tg_backward(ctx, l);
    /* the non-leaf h holds the gradient of one backward (2), not two */
    cr_assert_float_eq(((double *)tg_grad(h))[0], 2.0, 1e-15);
    cr_assert_float_eq(((double *)tg_grad(h))[1], 2.0, 1e-15);
}

Test(core, no_grad_records_nothing) {
    tg_tensor *w = tg_param(ctx, "w", TG_F32, 1, (int64_t[]){4});
    int prev = tg_no_grad(ctx, 1);
    cr_assert_eq(prev, 0);
    tg_tensor *y = tg_sum(ctx, tg_relu(ctx, tg_exp(ctx, w)));
    cr_assert_not_null(y);
    cr_assert_eq(tg_tape_len(ctx), 0);
    cr_assert_not(tg_requires_grad(y));
    cr_assert_float_eq(tg_item(y), 4.0, 1e-6, "forward still computes");
    cr_assert_eq(tg_no_grad(ctx, 0), 1);
    y = tg_sum(ctx, tg_exp(ctx, w));
    cr_assert_eq(tg_tape_len(ctx), 2);
    /* constants are not recorded even in grad mode */
    tg_tensor *k = tg_new(ctx, TG_F32, 1, (int64_t[]){4});
    tg_exp(ctx, k);
    cr_assert_eq(tg_tape_len(ctx), 2);
}

Test(core, tape_print_lists_nodes) {
    tg_tensor *w = tg_param(ctx, "w", TG_F32, 2, (int64_t[]){3, 2});
    tg_tensor *x = tg_new(ctx, TG_F32, 2, (int64_t[]){4, 3});
    tg_sum(ctx, tg_matmul(ctx, x, w));
    char *buf = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&buf, &len);
    tg_tape_print(ctx, f);
    fclose(f);
    cr_assert(strstr(buf, "matmul"), "%s", buf);
    cr_assert(strstr(buf, "w[3,2]"), "%s", buf);
    free(buf);
}

/* ---- memory ---- */

Test(core, arena_flat_over_10000_steps) {
    tg_tensor *w1 = tg_param(ctx, "w1", TG_F32, 2, (int64_t[]){2, 4});
    tg_tensor *b1 = tg_param(ctx, "b1", TG_F32, 1, (int64_t[]){4});
    tg_tensor *w2 = tg_param(ctx, "w2", TG_F32, 2, (int64_t[]){4, 1});
    tg_fill_uniform(ctx, w1, -1, 1);
    tg_fill_uniform(ctx, w2, -1, 1);
    float xv[8] = {0, 0, 0, 1, 1, 0, 1, 1}, yv[4] = {0, 1, 1, 0};
    tg_mem_stats warm = {0}, end;
    for (int step = 0; step < 10000; step++) {
        tg_tensor *x = tg_from(ctx, TG_F32, 2, (int64_t[]){4, 2}, xv);
        tg_tensor *y = tg_from(ctx, TG_F32, 2, (int64_t[]){4, 1}, yv);
        tg_tensor *h = tg_tanh(ctx, tg_add_bias(ctx, tg_matmul(ctx, x, w1), b1));
        tg_tensor *l = tg_mse(ctx, tg_sigmoid(ctx, tg_matmul(ctx, h, w2)), y);
        tg_zero_grad(ctx);
        tg_backward(ctx, l);
        tg_reset(ctx);
        if (step == 10) tg_mem_stats_get(ctx, &warm);
    }
    cr_assert(tg_ok(ctx), "%s", tg_errmsg(ctx));
    tg_mem_stats_get(ctx, &end);
    cr_log_info("arena after warm-up: capacity %zu bytes, peak %zu bytes, chunks %zu, grows %llu",
                end.arena_capacity, end.arena_peak, end.arena_chunks,
                (unsigned long long)end.arena_grows);
    printf("arena after warm-up: capacity %zu bytes, peak %zu bytes, chunks %zu\n",
           end.arena_capacity, end.arena_peak, end.arena_chunks);
    cr_assert_eq(end.arena_capacity, warm.arena_capacity, "the arena stopped growing");
    cr_assert_eq(end.arena_grows, warm.arena_grows, "no allocation after warm-up");
    cr_assert_eq(end.arena_chunks, 1);
    cr_assert_eq(end.arena_used, 0, "reset rewinds");
}

/* Counting allocator: counts calls, and fails after `budget` allocations. */
typedef struct { long calls, budget; } counter;
static void *counting_alloc(void *ud, void *p, size_t osize, size_t nsize) {
    counter *c = ud;
    (void)osize;
    if (nsize == 0) {
        free(p);
        return NULL;
    }
    c->calls++;
    if (c->budget >= 0 && c->calls > c->budget) return NULL;
    return realloc(p, nsize);
}

Test(core, warm_step_allocates_nothing) {
    counter cnt = {0, -1};
    tg_ctx *c = tg_ctx_new_with_alloc(3, counting_alloc, &cnt);
    tg_tensor *w = tg_param(c, "w", TG_F32, 2, (int64_t[]){8, 8});
    long before = 0;
    for (int step = 0; step < 50; step++) {
        if (step == 5) before = cnt.calls;
        tg_tensor *x = tg_new(c, TG_F32, 2, (int64_t[]){16, 8});
        tg_tensor *l = tg_mean(c, tg_relu(c, tg_matmul(c, x, w)));
        tg_zero_grad(c);
        tg_backward(c, l);
        tg_reset(c);
    }
    cr_assert(tg_ok(c), "%s", tg_errmsg(c));
    cr_assert_eq(cnt.calls, before, "allocations after warm-up: %ld", cnt.calls - before);
    tg_ctx_free(c);
}

Test(core, out_of_memory_is_an_error) {
    /* fail each allocation point in turn: never a crash, always an error */
    for (long budget = 1; budget < 40; budget++) {
        counter cnt = {0, budget};
        tg_ctx *c = tg_ctx_new_with_alloc(3, counting_alloc, &cnt);
        if (!c) continue; /* the context itself could not be made: NULL, fine */
        tg_tensor *w = tg_param(c, "w", TG_F32, 2, (int64_t[]){64, 64});
        tg_tensor *x = tg_new(c, TG_F32, 2, (int64_t[]){300, 64});
        tg_tensor *l = tg_sum(c, tg_matmul(c, x, w));
        tg_backward(c, l);
        if (!tg_ok(c)) cr_assert(strstr(tg_errmsg(c), "out of memory"), "%s", tg_errmsg(c));
        tg_ctx_free(c);
    }
}

/* ---- random numbers and hashing ---- */

Test(core, rng_deterministic_and_sane) {
    tg_ctx *a = tg_ctx_new(123), *b = tg_ctx_new(123), *c = tg_ctx_new(124);
    int differ = 0;
    for (int i = 0; i < 100; i++) {
        uint64_t x = tg_rand_u64(a), y = tg_rand_u64(b), z = tg_rand_u64(c);
        cr_assert_eq(x, y);
        differ += x != z;
    }
    cr_assert_gt(differ, 95);
    double s = 0, s2 = 0, u = 0;
    int n = 200000;
    for (int i = 0; i < n; i++) {
        double r = tg_rand_normal(a);
        s += r;
        s2 += r * r;
        double q = tg_rand_uniform(a);
        cr_assert(q >= 0 && q < 1);
        u += q;
    }
    cr_assert_float_eq(s / n, 0.0, 0.01);
    cr_assert_float_eq(s2 / n, 1.0, 0.02);
    cr_assert_float_eq(u / n, 0.5, 0.01);
    for (int i = 0; i < 1000; i++) cr_assert_lt(tg_rand_below(a, 7), 7u);
    tg_ctx_free(a);
    tg_ctx_free(b);
    tg_ctx_free(c);
}

Test(core, hash_covers_dtype_shape_and_data) {
    double v[4] = {1, 2, 3, 4};
    tg_tensor *a = tg_from(ctx, TG_F64, 2, (int64_t[]){2, 2}, v);
    tg_tensor *b = tg_from(ctx, TG_F64, 2, (int64_t[]){2, 2}, v);
    tg_tensor *c = tg_from(ctx, TG_F64, 1, (int64_t[]){4}, v);
    cr_assert_eq(tg_hash(a), tg_hash(b));
    cr_assert_neq(tg_hash(a), tg_hash(c), "shape is hashed");
    ((double *)tg_data(b))[3] = 4.0000001;
    cr_assert_neq(tg_hash(a), tg_hash(b), "data is hashed");
    int32_t iv[2] = {0, 0};
    float fv[2] = {0, 0};
    cr_assert_neq(tg_hash(tg_from(ctx, TG_I32, 1, (int64_t[]){2}, iv)),
                  tg_hash(tg_from(ctx, TG_F32, 1, (int64_t[]){2}, fv)), "dtype is hashed");
}

/* ---- custom ops ---- */

/* cube: y = x^3, dy/dx = 3x^2; attribute: a scale factor */
static int cube_forward(tg_op_call *c) {
    double k = *(const double *)c->attr;
    const double *x = tg_data(c->in[0]);
    double *y = tg_data(c->out);
    for (int64_t i = 0; i < tg_numel(c->out); i++) y[i] = k * x[i] * x[i] * x[i];
    return 0;
}
static void cube_backward(tg_op_call *c) {
    double k = *(const double *)c->attr;
    const double *x = tg_data(c->in[0]), *dy = tg_grad(c->out);
    if (tg_requires_grad(c->in[0])) {
        double *dx = tg_grad_acc(c->in[0]);
        for (int64_t i = 0; i < tg_numel(c->out); i++) dx[i] += dy[i] * 3 * k * x[i] * x[i];
    }
}
static const tg_op cube_op = {"cube", cube_forward, cube_backward};
static tg_tensor *cube(tg_ctx *c, tg_tensor *x, double k) {
    return tg_apply(c, &cube_op, &x, 1, TG_F64, tg_ndim(x), tg_shape(x), &k, sizeof k);
}
static tg_tensor *cube_fn(tg_ctx *c, tg_tensor *const *in, void *user) {
    return cube(c, in[0], *(double *)user);
}
static void wrong_backward(tg_op_call *c) {
    const double *dy = tg_grad(c->out);
    double *dx = tg_grad_acc(c->in[0]);
    for (int64_t i = 0; i < tg_numel(c->out); i++) dx[i] += dy[i]; /* wrong on purpose */
}

Test(core, custom_op_applies_records_and_checks) {
    double v[3] = {0.5, -1.2, 2.0}, k = 0.7;
    tg_tensor *x = vec64(3, v);
    tg_set_requires_grad(x, 1);
    tg_tensor *y = cube(ctx, x, k);
    cr_assert_not_null(y);
    cr_assert_float_eq(((double *)tg_data(y))[1], k * -1.2 * -1.2 * -1.2, 1e-15);
    cr_assert_eq(tg_tape_len(ctx), 1);
    tg_backward(ctx, tg_sum(ctx, y));
    cr_assert_float_eq(((double *)tg_grad(x))[2], 3 * k * 4.0, 1e-12);
    cr_assert(tg_gradcheck(ctx, cube_fn, &k, &x, 1, NULL), "%s", tg_errmsg(ctx));

}

static tg_op wrong_global;
static tg_tensor *wrong_fn(tg_ctx *c, tg_tensor *const *in, void *user) {
    double k = 0.7;
    (void)user;
    tg_tensor *x = in[0];
    return tg_apply(c, &wrong_global, &x, 1, TG_F64, tg_ndim(x), tg_shape(x), &k, sizeof k);
}

Test(core, gradcheck_catches_a_wrong_backward_and_names_it) {
    wrong_global = (tg_op){"wrong_cube", cube_forward, wrong_backward};
    double v[3] = {0.5, -1.2, 2.0};
    tg_tensor *x = vec64(3, v);
    cr_assert_not(tg_gradcheck(ctx, wrong_fn, NULL, &x, 1, NULL));
    const char *m = tg_errmsg(ctx);
    cr_assert(strstr(m, "tg_gradcheck: input 0 [3] element 0, output element 0"), "%s", m);
    cr_assert(strstr(m, "analytic 1"), "%s", m);
    cr_assert(strstr(m, "numeric"), "%s", m);
}

Test(core, custom_op_errors) {
    tg_tensor *x = tg_new(ctx, TG_F64, 1, (int64_t[]){3});
    cr_assert_null(tg_apply(ctx, NULL, &x, 1, TG_F64, 1, (int64_t[]){3}, NULL, 0));
    cr_assert(strstr(tg_errmsg(ctx), "tg_apply"));
    tg_clear_error(ctx);
    tg_tensor *none[1] = {NULL};
    cr_assert_null(tg_apply(ctx, &cube_op, none, 1, TG_F64, 1, (int64_t[]){3}, NULL, 0));
    cr_assert(strstr(tg_errmsg(ctx), "cube: argument input 0 is NULL"), "%s", tg_errmsg(ctx));
    tg_clear_error(ctx);
    cr_assert_null(tg_apply(ctx, &cube_op, &x, 9, TG_F64, 1, (int64_t[]){3}, NULL, 0));
    cr_assert(strstr(tg_errmsg(ctx), "1 to 8 inputs"));
}

/* ---- gradcheck's contract: everything is put back ---- */

static tg_tensor *wsum_tanh(tg_ctx *c, tg_tensor *const *in, void *user) {
    (void)user;
    return tg_sum(c, tg_mul(c, tg_tanh(c, in[0]), in[1]));
}

Test(core, gradcheck_restores_state) {
    tg_tensor *p = tg_param(ctx, "p", TG_F64, 1, (int64_t[]){4});
    tg_fill_uniform(ctx, p, -1, 1);
    tg_tensor *pre = tg_sum(ctx, tg_scale(ctx, p, 3.0));
    tg_backward(ctx, pre); /* p's grad is now 3 everywhere */
    int64_t tape = tg_tape_len(ctx);
    tg_mem_stats before, after;
    tg_mem_stats_get(ctx, &before);
    uint64_t h = tg_hash(p);
    tg_tensor *w = tg_new(ctx, TG_F64, 1, (int64_t[]){4});
    tg_fill_uniform(ctx, w, -1, 1);
    tg_mem_stats_get(ctx, &before);
    tg_tensor *in[2] = {p, w};
    cr_assert(tg_gradcheck(ctx, wsum_tanh, NULL, in, 2, NULL), "%s", tg_errmsg(ctx));
    tg_mem_stats_get(ctx, &after);
    cr_assert_eq(tg_tape_len(ctx), tape);
    cr_assert_eq(tg_hash(p), h);
    cr_assert_null(tg_grad(w), "w had no grad before, has none after");
    cr_assert_not(tg_requires_grad(w));
    for (int i = 0; i < 4; i++) cr_assert_eq(((double *)tg_grad(p))[i], 3.0);
    cr_assert_eq(after.arena_used, before.arena_used);
    cr_assert_eq(tg_no_grad(ctx, 0), 0);
    /* and f32 inputs are refused with a clear message */
    tg_tensor *f = tg_new(ctx, TG_F32, 1, (int64_t[]){2});
    cr_assert_not(tg_gradcheck(ctx, wsum_tanh, NULL, &f, 1, NULL));
    cr_assert(strstr(tg_errmsg(ctx), "need f64"), "%s", tg_errmsg(ctx));
}

Test(core, threads_setting) {
    cr_assert_geq(tg_get_threads(ctx), 1);
    tg_set_threads(ctx, 1);
    cr_assert_eq(tg_get_threads(ctx), 1);
    tg_set_threads(ctx, 0);
    cr_assert_geq(tg_get_threads(ctx), 1);
}

/* ---- training / evaluation mode ---- */

Test(core, train_mode_switch) {
    cr_assert_eq(tg_is_training(ctx), 1, "a new context trains");
    cr_assert_eq(tg_train_mode(ctx, 0), 1, "returns the previous mode");
    cr_assert_eq(tg_is_training(ctx), 0);
    cr_assert_eq(tg_train_mode(ctx, 5), 0);
    cr_assert_eq(tg_is_training(ctx), 1, "any non-zero is training");
    cr_assert_eq(tg_is_training(NULL), 0);
    cr_assert_eq(tg_train_mode(NULL, 1), 0);
}
