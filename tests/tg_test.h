/* SPDX-License-Identifier: MIT */
/* tests/tg_test.h: helpers shared by the test suites (the op suites tests/ops/test_ops_*.c
 * first, and those of the toolkit and the kernels).
 * Header-only: every helper is `static inline`, so a suite that uses only
 * some of them compiles warning-free. Helpers that create tensors or look at
 * the error state take the tg_ctx explicitly (first argument); those that
 * only read a tensor do not need one. Every helper fails the current
 * Criterion test (cr_assert) instead of returning an error. */
#ifndef TG_TEST_H
#define TG_TEST_H

#include <criterion/criterion.h>

#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tapegrad.h"

/* A Criterion suite NAME whose tests each get a fresh context `ctx`, its
 * generator seeded with SEED (made in .init, freed in .fini). */
#define TG_TEST_SUITE(NAME, SEED)                                                      \
    static tg_ctx *ctx;                                                                \
    static void setup(void) { ctx = tg_ctx_new(SEED); }                                \
    static void teardown(void) { tg_ctx_free(ctx); }                                   \
    TestSuite(NAME, .init = setup, .fini = teardown)

/* a shape: ndim (0 to 4) and the first ndim sizes */
typedef struct {
    int ndim;
    int64_t shape[4];
} shp;

/* ---- tensors ------------------------------------------------------------ */

/* a new tensor of shape s in dtype dt, uniform in [lo, hi) from c's generator */
static inline tg_tensor *rnd(tg_ctx *c, tg_dtype dt, shp s, double lo, double hi)
{
    tg_tensor *t = tg_new(c, dt, s.ndim, s.shape);
    cr_assert_not_null(t, "%s", tg_errmsg(c));
    tg_fill_uniform(c, t, lo, hi);
    return t;
}

/* rnd of shape [r,cols] */
static inline tg_tensor *rand2(tg_ctx *c, tg_dtype dt, int64_t r, int64_t cols, double lo,
                               double hi)
{
    return rnd(c, dt, (shp){2, {r, cols}}, lo, hi);
}

/* rnd of shape [n] */
static inline tg_tensor *rand1(tg_ctx *c, tg_dtype dt, int64_t n, double lo, double hi)
{
    return rnd(c, dt, (shp){1, {n}}, lo, hi);
}

/* element i (flat index) of a float tensor, as a double; no ctx needed */
static inline double at(const tg_tensor *t, int64_t i)
{
    return tg_dtype_of(t) == TG_F32 ? (double)((const float *)tg_data(t))[i]
                                    : ((const double *)tg_data(t))[i];
}

/* store v (rounded to f32 for an f32 tensor) at flat index i; no ctx needed */
static inline void set_at(tg_tensor *t, int64_t i, double v)
{
    if (tg_dtype_of(t) == TG_F32)
        ((float *)tg_data(t))[i] = (float)v;
    else
        ((double *)tg_data(t))[i] = v;
}

/* element i of t's gradient as a double; asserts t has a gradient; no ctx needed */
static inline double grad_at(const tg_tensor *t, int64_t i)
{
    const void *g = tg_grad(t);
    cr_assert_not_null(g, "no gradient reached the tensor");
    return tg_dtype_of(t) == TG_F32 ? (double)((const float *)g)[i] : ((const double *)g)[i];
}

/* a new tensor of dtype dt and the given shape holding v[0 .. numel) */
static inline tg_tensor *from_nd(tg_ctx *c, tg_dtype dt, int ndim, const int64_t *shape,
                                 const double *v)
{
    tg_tensor *t = tg_new(c, dt, ndim, shape);
    cr_assert_not_null(t, "%s", tg_errmsg(c));
    for (int64_t i = 0; i < tg_numel(t); i++) set_at(t, i, v[i]);
    return t;
}

/* a new 1-D tensor [n] of dtype dt holding v[0 .. n) */
static inline tg_tensor *from1(tg_ctx *c, tg_dtype dt, int64_t n, const double *v)
{
    return from_nd(c, dt, 1, &n, v);
}

/* the same data in dtype dt (any of f32, f64, i32): a new leaf in c */
static inline tg_tensor *convert(tg_ctx *c, const tg_tensor *t, tg_dtype dt)
{
    int64_t n = tg_numel(t);
    void *buf = malloc((size_t)n * 8 + 8);
    cr_assert_eq(tg_copy_out(t, dt, buf), 0);
    tg_tensor *r = tg_from(c, dt, tg_ndim(t), tg_shape(t), buf);
    free(buf);
    cr_assert_not_null(r);
    return r;
}

/* every element of t (or of its gradient, grad 1) within tol (relative to
 * 1 + |want|) of want[0 .. n), and t of n elements */
static inline void assert_near(const tg_tensor *t, const double *want, int64_t n, double tol,
                               int grad, const char *what)
{
    cr_assert_eq(tg_numel(t), n, "%s: numel %lld, want %lld", what, (long long)tg_numel(t),
                 (long long)n);
    for (int64_t i = 0; i < n; i++) {
        double v = grad ? grad_at(t, i) : at(t, i);
        cr_assert(fabs(v - want[i]) <= tol * (1 + fabs(want[i])), "%s[%lld]: %.17g, want %.17g",
                  what, (long long)i, v, want[i]);
    }
}

/* mean and variance (sum of squares over count - ddof) of channel c of x
 * [N,C,S...] seen as [N,C,S], S the product of the axes after C */
static inline void channel_stats(const tg_tensor *x, int64_t c, int ddof, double *mean,
                                 double *var)
{
    const int64_t nb = tg_dim(x, 0), ch = tg_dim(x, 1), sp = tg_numel(x) / (nb * ch);
    double m = 0, v = 0;
    for (int64_t n = 0; n < nb; n++)
        for (int64_t k = 0; k < sp; k++) m += at(x, (n * ch + c) * sp + k);
    m /= (double)(nb * sp);
    for (int64_t n = 0; n < nb; n++)
        for (int64_t k = 0; k < sp; k++) v += pow(at(x, (n * ch + c) * sp + k) - m, 2);
    *mean = m;
    *var = v / (double)(nb * sp - ddof);
}

/* ---- data sets ------------------------------------------------------------ */

/* n samples, 2 features: x = (i, -i), label i % 3, in a dataset of c */
static inline tg_dataset *counting_dataset(tg_ctx *c, int64_t n)
{
    tg_dataset *ds = tg_dataset_new(c, n, 2, 0);
    cr_assert_not_null(ds, "%s", tg_errmsg(c));
    for (int64_t i = 0; i < n; i++) {
        ds->x[2 * i] = (float)i;
        ds->x[2 * i + 1] = (float)-i;
        ds->labels[i] = (int32_t)(i % 3);
    }
    return ds;
}

/* ---- training ------------------------------------------------------------- */

/* One optimiser step on loss: zero the gradients, backpropagate, step, then
 * tg_reset (loss and every other arena tensor are gone after). Returns the
 * loss's value. */
static inline double train_step(tg_ctx *c, tg_optim *opt, tg_tensor *loss)
{
    cr_assert_not_null(loss, "%s", tg_errmsg(c));
    tg_zero_grad(c);
    tg_backward(c, loss);
    double v = tg_item(loss);
    tg_optim_step(opt);
    tg_reset(c);
    return v;
}

/* train_step on mean((p - y)^2) built from ops (sub, pow, mean), y an f64
 * tensor of p's shape holding ys */
static inline double mse_step(tg_ctx *c, tg_optim *opt, tg_tensor *p, const double *ys)
{
    cr_assert_not_null(p, "%s", tg_errmsg(c));
    tg_tensor *y = tg_from(c, TG_F64, tg_ndim(p), tg_shape(p), ys);
    return train_step(c, opt, tg_mean(c, tg_pow(c, tg_sub(c, p, y), 2.0)));
}

/* ---- gradients ---------------------------------------------------------- */

/* tg_gradcheck(c, fn, user, in, n, o) must pass and leave no error; what names the case */
static inline void gradcheck_opts(tg_ctx *c, tg_fn fn, void *user, tg_tensor **in, int n,
                                  const tg_gradcheck_opts *o, const char *what)
{
    int ok = tg_gradcheck(c, fn, user, in, n, o);
    cr_assert(ok, "%s: %s", what, tg_errmsg(c));
    cr_assert(tg_ok(c), "%s: %s", what, tg_errmsg(c));
}

/* gradcheck_opts with the default options */
static inline void gradcheck_ok(tg_ctx *c, tg_fn fn, void *user, tg_tensor **in, int n,
                                const char *what)
{
    gradcheck_opts(c, fn, user, in, n, NULL, what);
}

/* the scalar loss assert_grads_nonzero backpropagates from y = fn(in) */
typedef enum {
    LOSS_SUM_W, /* sum(w * y), w drawn uniform in [0.5, 1.5) */
    LOSS_MSE_W, /* mse(y, w), w drawn uniform in [-3, 3) */
    LOSS_SELF,  /* y itself (fn already returns a scalar loss) */
} loss_kind;

/* Mark in[0..n) as requiring grad, backpropagate the loss `how` of
 * fn(c, in, user) (the random w comes from c's generator), then assert every
 * input holds a gradient with a non-zero entry, so the gradient checks did
 * not pass vacuously. what (may be NULL) names the case in messages. */
static inline void assert_grads_nonzero(tg_ctx *c, tg_fn fn, void *user, tg_tensor **in, int n,
                                        loss_kind how, const char *what)
{
    if (!what) what = "assert_grads_nonzero";
    for (int k = 0; k < n; k++) tg_set_requires_grad(in[k], 1);
    tg_tensor *y = fn(c, in, user);
    cr_assert_not_null(y, "%s: %s", what, tg_errmsg(c));
    tg_tensor *loss = y;
    if (how != LOSS_SELF) {
        tg_tensor *w = tg_new(c, tg_dtype_of(y), tg_ndim(y), tg_shape(y));
        if (how == LOSS_SUM_W) {
            tg_fill_uniform(c, w, 0.5, 1.5);
            loss = tg_sum(c, tg_mul(c, y, w));
        } else {
            tg_fill_uniform(c, w, -3, 3);
            loss = tg_mse(c, y, w);
        }
    }
    tg_backward(c, loss);
    cr_assert(tg_ok(c), "%s: %s", what, tg_errmsg(c));
    for (int k = 0; k < n; k++) {
        int nz = 0;
        for (int64_t i = 0; i < tg_numel(in[k]); i++) nz |= grad_at(in[k], i) != 0;
        cr_assert(nz, "%s: input %d got an all-zero gradient", what, k);
    }
}

/* ---- tables keyed by name --------------------------------------------------- */

/* check(c, row, shape, what) for every row of a table (n rows of `size`
 * bytes, a const char * name at offset name_at) and every one of the
 * n_shapes shapes, rows outermost; what is "<name> on shape <index>". The
 * arena is reset after each. EACH_ROW_AND_SHAPE(c, TABLE, SHAPES, check) for
 * a table whose rows have a member `name`. */
static inline void each_row_and_shape(tg_ctx *c, const void *table, size_t size, size_t n,
                                      size_t name_at, const shp *shapes, size_t n_shapes,
                                      void (*check)(tg_ctx *, const void *, shp, const char *))
{
    for (size_t k = 0; k < n; k++)
        for (size_t s = 0; s < n_shapes; s++) {
            const char *row = (const char *)table + k * size;
            char what[128];
            snprintf(what, sizeof what, "%s on shape %zu", *(const char *const *)(row + name_at),
                     s);
            check(c, row, shapes[s], what);
            tg_reset(c);
        }
}
#define EACH_ROW_AND_SHAPE(c, TABLE, SHAPES, check)                                        \
    each_row_and_shape((c), (TABLE), sizeof(TABLE)[0], sizeof(TABLE) / sizeof(TABLE)[0],    \
                       offsetof(__typeof__((TABLE)[0]), name), (SHAPES),                     \
                       sizeof(SHAPES) / sizeof(SHAPES)[0], (check))

/* The row named `name` of a table of n rows of `size` bytes whose first
 * member is the row's name (a const char *); fails the test if there is none.
 * ROW_NAMED(TABLE, name) for a table array. */
static inline const void *row_named(const void *table, size_t size, size_t n, const char *name)
{
    for (size_t k = 0; k < n; k++) {
        const void *at_k = (const char *)table + k * size;
        const char *const *row = at_k;
        if (strcmp(*row, name) == 0) return row;
    }
    cr_assert_fail("no row named %s", name);
    return NULL;
}
#define ROW_NAMED(TABLE, name)                                                         \
    ((const __typeof__((TABLE)[0]) *)row_named((TABLE), sizeof(TABLE)[0],              \
                                               sizeof(TABLE) / sizeof(TABLE)[0], (name)))

/* ---- errors ------------------------------------------------------------- */

/* c must hold an error whose message contains each non-NULL s1, s2, s3;
 * clears it. what names the case in messages. */
static inline void assert_err(tg_ctx *c, const char *what, const char *s1, const char *s2,
                              const char *s3)
{
    const char *m = tg_errmsg(c);
    cr_assert(!tg_ok(c), "%s: no error recorded", what);
    const char *want[3] = {s1, s2, s3};
    for (int k = 0; k < 3; k++)
        if (want[k])
            cr_assert_not_null(strstr(m, want[k]), "%s: '%s' not in '%s'", what, want[k], m);
    tg_clear_error(c);
}

/* r (an op's result) must be NULL and c's error must name fn and contain each
 * non-NULL s1, s2; clears it */
static inline void assert_null_err(tg_ctx *c, const tg_tensor *r, const char *fn, const char *s1,
                                   const char *s2)
{
    cr_assert_null(r, "%s: expected NULL", fn);
    assert_err(c, fn, fn, s1, s2);
}

/* A one-input op under the name its messages use. */
typedef struct {
    const char *name;
    tg_tensor *(*f)(tg_ctx *, tg_tensor *);
} named_unop;

/* op's messages for a NULL x ("<name>: argument x is NULL") and an i32 x
 * ("<name>: x must be f32 or f64, got i32 [2,2]"), and NULL for a NULL ctx. */
static inline void assert_x_arg_errors(tg_ctx *c, const named_unop *op)
{
    char want[128];
    cr_assert_null(op->f(c, NULL), "%s", op->name);
    snprintf(want, sizeof want, "%s: argument x is NULL", op->name);
    cr_assert_str_eq(tg_errmsg(c), want);
    tg_clear_error(c);
    tg_tensor *xi = tg_new(c, TG_I32, 2, (int64_t[]){2, 2});
    cr_assert_null(op->f(c, xi), "%s", op->name);
    snprintf(want, sizeof want, "%s: x must be f32 or f64, got i32 [2,2]", op->name);
    cr_assert_str_eq(tg_errmsg(c), want);
    tg_clear_error(c);
    cr_assert_null(op->f(NULL, xi), "%s", op->name);
}

/* ---- built-in ops through tg_apply ---------------------------------------- */

#ifdef TG_INTERNAL_H /* for suites that include internal.h before this header */
/* y must be the output of one built-in op's tape node (any node, not only
 * the last); the node gives the op's tg_op and attributes. tg_apply of that
 * op on the node's inputs must give the same bits, and backpropagating
 * sum(w * y) through either the same gradient bits into in[0 .. n) (the
 * float inputs of the call, already marked as requiring grad). reseed
 * (may be NULL): the generator is seeded with it before tg_apply, for an
 * op that draws random numbers (the direct call was made right after
 * seeding with the same value). */
static inline void assert_node_applies(tg_ctx *c, tg_tensor *y, tg_tensor **in, int n,
                                       const uint64_t *reseed, const char *what)
{
    cr_assert(y && tg_ok(c), "%s: %s", what, tg_errmsg(c));
    const tg_op_call node = c->tape[y->node].call;
    tgi_attr attr;
    memset(&attr, 0, sizeof attr);
    if (node.attr) memcpy(&attr, node.attr, sizeof attr);
    if (reseed) tg_seed(c, *reseed);
    tg_tensor *y2 = tg_apply(c, node.op, node.in, node.n_in, tg_dtype_of(y), tg_ndim(y),
                             tg_shape(y), node.attr ? &attr : NULL, node.attr ? sizeof attr : 0);
    cr_assert_not_null(y2, "%s: %s", what, tg_errmsg(c));
    size_t es = tg_dtype_of(y) == TG_F32 ? 4 : 8;
    cr_assert_eq(memcmp(tg_data(y), tg_data(y2), (size_t)tg_numel(y) * es), 0,
                 "%s: tg_apply's values differ from the direct call's", what);
    tg_tensor *w = tg_new(c, tg_dtype_of(y), tg_ndim(y), tg_shape(y));
    tg_fill_uniform(c, w, 0.5, 1.5);
    tg_backward(c, tg_sum(c, tg_mul(c, y, w)));
    void *g1[TG_MAX_INPUTS] = {0};
    for (int k = 0; k < n; k++) {
        if (!tg_grad(in[k])) continue;
        size_t bytes = (size_t)tg_numel(in[k]) * (tg_dtype_of(in[k]) == TG_F32 ? 4 : 8);
        g1[k] = malloc(bytes + 1);
        memcpy(g1[k], tg_grad(in[k]), bytes);
        memset(tg_grad(in[k]), 0, bytes);
    }
    tg_backward(c, tg_sum(c, tg_mul(c, y2, w)));
    cr_assert(tg_ok(c), "%s: %s", what, tg_errmsg(c));
    for (int k = 0; k < n; k++) {
        if (!g1[k]) continue;
        size_t bytes = (size_t)tg_numel(in[k]) * (tg_dtype_of(in[k]) == TG_F32 ? 4 : 8);
        int same = memcmp(g1[k], tg_grad(in[k]), bytes) == 0;
        free(g1[k]);
        cr_assert(same, "%s: tg_apply's gradient of input %d differs", what, k);
    }
}

/* y = fn(in) must be one built-in op's output, the last node of the tape
 * (the float inputs are marked as requiring grad first); then as
 * assert_node_applies. */
static inline void assert_apply_matches(tg_ctx *c, tg_fn fn, void *user, tg_tensor **in, int n,
                                        const char *what)
{
    for (int k = 0; k < n; k++)
        if (tg_dtype_of(in[k]) != TG_I32) tg_set_requires_grad(in[k], 1);
    tg_tensor *y = fn(c, in, user);
    cr_assert(y && tg_ok(c) && y->node == tg_tape_len(c) - 1, "%s: %s", what, tg_errmsg(c));
    assert_node_applies(c, y, in, n, NULL, what);
}
#endif
/* ---- kernel sets ---------------------------------------------------------- */

/* A kernel module's choice of set by name (force, e.g. tgi_gemm_force_kernel)
 * as its current() reports it: "generic" is taken, an unknown name ignored,
 * NULL goes back to the automatic choice `automatic`. what names the module. */
static inline void assert_force_by_name(void (*force)(const char *), const char *(*current)(void),
                                        const char *automatic, const char *what)
{
    force("generic");
    cr_assert_str_eq(current(), "generic", "%s: generic was not taken", what);
    force("no-such-kernel");
    cr_assert_str_eq(current(), "generic", "%s: an unknown name was not ignored", what);
    force(NULL);
    cr_assert_str_eq(current(), automatic, "%s: NULL did not restore the automatic set", what);
}

/* ---- a scratch directory per test: made in .init, removed in .fini ---- */
static inline void scratch_make(char *dir, size_t size, const char *tag)
{
    snprintf(dir, size, "/tmp/tg_%s_XXXXXX", tag);
    cr_assert_not_null(mkdtemp(dir));
}

static inline void scratch_remove(const char *dir)
{
    char cmd[160];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    cr_assert_eq(system(cmd), 0);
}

/* "<dir>/<name>" in one of four rotating buffers */
static inline const char *scratch_path(const char *dir, const char *name)
{
    static char buf[4][256];
    static int k;
    k = (k + 1) & 3;
    snprintf(buf[k], sizeof buf[k], "%s/%s", dir, name);
    return buf[k];
}

#endif /* TG_TEST_H */
