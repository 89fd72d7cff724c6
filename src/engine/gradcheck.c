/* SPDX-License-Identifier: MIT */
/* gradcheck.c: compare the tape's gradients with central finite differences.
 *
 * For an output y of m elements and inputs of N elements in all, the analytic
 * Jacobian [m,N] comes from m backward passes seeded with the unit vectors e_j
 * (walking only the nodes fn recorded), the numeric one from 2N forward passes
 * under no-grad: (f(x + eps e_i) - f(x - eps e_i)) / 2 eps. Everything the check
 * touches is put back: input data, grads, flags, the tape length, the arena.
 */
#include "internal.h"

#include <math.h>

typedef struct {
    void *grad;           /* the input's grad pointer before the check */
    void *grad_copy;      /* its contents (heap), or NULL */
    uint32_t flags;
} saved_input;

static const double *grad_or_null(const tg_tensor *t) { return t->grad; }

/* One check: the function, its inputs, the output's and the inputs' sizes
 * (m, total), the two Jacobians [m,total] and a row buffer, on the heap. */
typedef struct {
    tg_ctx *ctx;
    tg_fn fn;
    void *user;
    tg_tensor *const *in;
    int n;
    int64_t m, total, tape0;
    double *ja, *jn, *fplus;
    size_t jbytes, fbytes;
} gcheck;

/* Non-NULL f64 inputs of this ctx and a function; else records why, 0. */
static int check_args(tg_ctx *ctx, tg_fn fn, tg_tensor *const *inputs, int n) {
    if (!fn || !inputs || n < 1) {
        tg_set_error(ctx, "tg_gradcheck: needs a function and at least one input (n = %d)", n);
        return 0;
    }
    for (int k = 0; k < n; k++) {
        char arg[32];
        snprintf(arg, sizeof arg, "input %d", k);
        if (!tgi_check_arg(ctx, "tg_gradcheck", arg, inputs[k])) return 0;
        if (inputs[k]->dtype != TG_F64) {
            char b[96];
            tg_set_error(ctx, "tg_gradcheck: input %d is %s %s; gradient checks need f64 inputs", k,
                         tg_dtype_name(inputs[k]->dtype), TGI_SHAPE(inputs[k], b));
            return 0;
        }
    }
    return 1;
}

/* Keep each input's grad pointer, a copy of its contents and its flags. */
static int save_inputs(tg_ctx *ctx, tg_tensor *const *inputs, int n, saved_input *saved) {
    tgi_settle_grads(ctx); /* zeros pending since tg_zero_grad are zeros kept */
    for (int k = 0; k < n; k++) {
        tg_tensor *t = inputs[k];
        saved[k].grad = t->grad;
        saved[k].flags = t->flags;
        saved[k].grad_copy = NULL;
    }
    for (int k = 0; k < n; k++) {
        tg_tensor *t = inputs[k];
        if (t->grad) {
            saved[k].grad_copy = tgi_malloc(ctx, tgi_bytes(t));
            if (!saved[k].grad_copy) return -1;
            memcpy(saved[k].grad_copy, t->grad, tgi_bytes(t));
        }
    }
    return 0;
}

/* Put back what save_inputs kept, in reverse order (an input may appear twice). */
static void restore_inputs(tg_ctx *ctx, tg_tensor *const *inputs, int n, saved_input *saved) {
    for (int k = n - 1; k >= 0; k--) {
        tg_tensor *t = inputs[k];
        t->flags = saved[k].flags;
        t->grad = saved[k].grad;
        if (saved[k].grad_copy) {
            memcpy(t->grad, saved[k].grad_copy, tgi_bytes(t));
            tgi_free(ctx, saved[k].grad_copy, tgi_bytes(t));
        } else if (!saved[k].grad && (t->flags & TGI_PARAM)) {
            /* the reserved storage was used by the check: leave it zeroed */
            memset(t->grad_store, 0, tgi_bytes(t));
        }
    }
}

/* y = fn(inputs) recorded on the tape with every input requiring a gradient;
 * checks it is f64. NULL (error recorded) if not. */
static tg_tensor *record_output(gcheck *g) {
    tg_ctx *ctx = g->ctx;
    ctx->no_grad = 0;
    for (int k = 0; k < g->n; k++) {
        g->in[k]->flags |= TGI_REQ_GRAD;
        g->in[k]->grad = NULL;
    }
    tg_tensor *y = g->fn(ctx, g->in, g->user);
    if (!y) {
        if (tg_ok(ctx)) tg_set_error(ctx, "tg_gradcheck: the function returned NULL");
        return NULL;
    }
    if (y->dtype != TG_F64) {
        char b[96];
        tg_set_error(ctx, "tg_gradcheck: the function's output is %s %s; it must be f64",
                     tg_dtype_name(y->dtype), TGI_SHAPE(y, b));
        return NULL;
    }
    return y;
}

/* The two Jacobians [m,total] (zeros) and the row buffer; -1 if too large or
 * out of memory (error recorded). */
static int alloc_jacobians(gcheck *g) {
    if ((double)g->m * (double)g->total > 5e7) {
        tg_set_error(g->ctx, "tg_gradcheck: Jacobian of %lld x %lld is too large to check",
                     (long long)g->m, (long long)g->total);
        return -1;
    }
    g->jbytes = (size_t)g->m * (size_t)g->total * sizeof(double);
    g->ja = tgi_calloc(g->ctx, g->jbytes);
    g->jn = g->ja ? tgi_calloc(g->ctx, g->jbytes) : NULL;
    g->fbytes = (size_t)g->m * sizeof(double);
    g->fplus = g->jn ? tgi_malloc(g->ctx, g->fbytes) : NULL;
    return g->fplus ? 0 : -1;
}

/* Row j of the analytic Jacobian: backward from y seeded with e_j, walking
 * only the nodes fn recorded. -1 on error. */
static int analytic_jacobian(gcheck *g, tg_tensor *y) {
    tg_ctx *ctx = g->ctx;
    if (!(y->flags & TGI_REQ_GRAD)) return 0; /* no input reaches y: a zero Jacobian */
    double *seed = tgi_arena_alloc(ctx, g->fbytes);
    if (!seed) return -1;
    for (int64_t j = 0; j < g->m; j++) {
        memset(seed, 0, g->fbytes);
        seed[j] = 1.0;
        for (int k = 0; k < g->n; k++) g->in[k]->grad = NULL;
        if (y->node >= g->tape0) {
            tgi_backward_from(ctx, y, seed, g->tape0);
        } else { /* y is an input itself */
            double *gy = tg_grad_acc(y);
            if (gy) gy[j] += 1.0;
        }
        if (!tg_ok(ctx)) return -1;
        int64_t col = 0;
        for (int k = 0; k < g->n; k++) {
            const double *gk = grad_or_null(g->in[k]);
            for (int64_t i = 0; i < g->in[k]->numel; i++, col++)
                g->ja[j * g->total + col] = gk ? gk[i] : 0.0;
        }
    }
    return 0;
}

/* The numeric Jacobian by central differences, 2 total forward passes under
 * no-grad, each rewound from the arena. -1 on error. */
static int numeric_jacobian(gcheck *g, double eps) {
    tg_ctx *ctx = g->ctx;
    ctx->no_grad = 1;
    int64_t col = 0;
    for (int k = 0; k < g->n; k++) {
        double *x = g->in[k]->data;
        for (int64_t i = 0; i < g->in[k]->numel; i++, col++) {
            double v = x[i];
            tgi_arena_mark m2 = tgi_arena_get_mark(ctx);
            x[i] = v + eps;
            tg_tensor *yp = g->fn(ctx, g->in, g->user);
            if (yp && yp->numel == g->m) memcpy(g->fplus, yp->data, g->fbytes);
            tgi_arena_rewind(ctx, m2);
            x[i] = v - eps;
            tg_tensor *ym = g->fn(ctx, g->in, g->user);
            x[i] = v;
            if (!yp || !ym || yp->numel != g->m || ym->numel != g->m || ym->dtype != TG_F64) {
                tgi_arena_rewind(ctx, m2);
                if (tg_ok(ctx))
                    tg_set_error(ctx, "tg_gradcheck: the function gave no output or an output of "
                                      "another size when input %d element %lld was perturbed",
                                 k, (long long)i);
                return -1;
            }
            const double *fm = ym->data;
            for (int64_t j = 0; j < g->m; j++)
                g->jn[j * g->total + col] = (g->fplus[j] - fm[j]) / (2 * eps);
            tgi_arena_rewind(ctx, m2);
        }
    }
    return 0;
}

/* 1 if |analytic - numeric| <= atol + rtol |numeric| everywhere; else records
 * the first element that is not and returns 0. */
static int compare_jacobians(gcheck *g, double atol, double rtol) {
    for (int64_t j = 0; j < g->m; j++) {
        int64_t col = 0;
        for (int k = 0; k < g->n; k++) {
            for (int64_t i = 0; i < g->in[k]->numel; i++, col++) {
                double a = g->ja[j * g->total + col], u = g->jn[j * g->total + col];
                if (!(fabs(a - u) <= atol + rtol * fabs(u))) {
                    char b[96];
                    tg_set_error(g->ctx,
                                 "tg_gradcheck: input %d %s element %lld, output element %lld: "
                                 "analytic %.10g, numeric %.10g "
                                 "(|diff| %.3g > atol %.3g + rtol %.3g * |numeric|)",
                                 k, TGI_SHAPE(g->in[k], b), (long long)i, (long long)j, a, u,
                                 fabs(a - u), atol, rtol);
                    return 0;
                }
            }
        }
    }
    return 1;
}

int tg_gradcheck(tg_ctx *ctx, tg_fn fn, void *user, tg_tensor *const *inputs, int n,
                 const tg_gradcheck_opts *opts) {
    if (!ctx || !tg_ok(ctx)) return 0;
    tgi_api(ctx, "tg_gradcheck");
    if (!check_args(ctx, fn, inputs, n)) return 0;
    double eps = opts && opts->eps > 0 ? opts->eps : 1e-6;
    double atol = opts && opts->atol > 0 ? opts->atol : 1e-5;
    double rtol = opts && opts->rtol > 0 ? opts->rtol : 1e-3;
    gcheck g = {.ctx = ctx, .fn = fn, .user = user, .in = inputs, .n = n,
                .tape0 = ctx->tape_len};
    for (int k = 0; k < n; k++) g.total += inputs[k]->numel;

    /* save what we will disturb */
    saved_input sv[TG_MAX_INPUTS * 4];
    saved_input *saved = n <= (int)(sizeof sv / sizeof sv[0])
                             ? sv
                             : tgi_calloc(ctx, (size_t)n * sizeof *saved);
    if (!saved) return 0;
    int ok = 0;
    tgi_arena_mark mark = tgi_arena_get_mark(ctx);
    int prev_no_grad = ctx->no_grad;
    if (save_inputs(ctx, inputs, n, saved) == 0) {
        tg_tensor *y = record_output(&g);
        if (y) {
            g.m = y->numel;
            if (g.m == 0 || g.total == 0)
                ok = 1;
            else if (alloc_jacobians(&g) == 0 && analytic_jacobian(&g, y) == 0 &&
                     numeric_jacobian(&g, eps) == 0)
                ok = compare_jacobians(&g, atol, rtol);
        }
    }
    restore_inputs(ctx, inputs, n, saved);
    if (saved != sv) tgi_free(ctx, saved, (size_t)n * sizeof *saved);
    tgi_free(ctx, g.ja, g.jbytes);
    tgi_free(ctx, g.jn, g.jbytes);
    tgi_free(ctx, g.fplus, g.fbytes);
    ctx->tape_len = g.tape0;
    tgi_arena_rewind(ctx, mark);
    ctx->no_grad = prev_no_grad;
    return ok && tg_ok(ctx);
}
