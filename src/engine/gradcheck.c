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

int tg_gradcheck(tg_ctx *ctx, tg_fn fn, void *user, tg_tensor *const *inputs, int n,
                 const tg_gradcheck_opts *opts) {
    if (!ctx) return 0;
    if (!tg_ok(ctx)) return 0;
    tgi_api(ctx, "tg_gradcheck");
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
    double eps = opts && opts->eps > 0 ? opts->eps : 1e-6;
    double atol = opts && opts->atol > 0 ? opts->atol : 1e-5;
    double rtol = opts && opts->rtol > 0 ? opts->rtol : 1e-3;

    int64_t total = 0;
    for (int k = 0; k < n; k++) total += inputs[k]->numel;

    /* save what we will disturb */
    saved_input sv[TG_MAX_INPUTS * 4];
    saved_input *saved = n <= (int)(sizeof sv / sizeof sv[0]) ? sv : tgi_calloc(ctx, (size_t)n * sizeof *saved);
    if (!saved) return 0;
    int ok = 0;
    double *ja = NULL, *jn = NULL, *fplus = NULL;
    size_t jbytes = 0, fbytes = 0;
    int64_t tape0 = ctx->tape_len;
    tgi_arena_mark mark = tgi_arena_get_mark(ctx);
    int prev_no_grad = ctx->no_grad;
    for (int k = 0; k < n; k++) {
        tg_tensor *t = inputs[k];
        saved[k].grad = t->grad;
        saved[k].flags = t->flags;
        saved[k].grad_copy = NULL;
        if (t->grad) {
            saved[k].grad_copy = tgi_malloc(ctx, tgi_bytes(t));
            if (!saved[k].grad_copy) goto done;
            memcpy(saved[k].grad_copy, t->grad, tgi_bytes(t));
        }
    }
    /* an input may appear twice in the list: restore in reverse order later */

    /* analytic Jacobian */
    ctx->no_grad = 0;
    for (int k = 0; k < n; k++) {
        inputs[k]->flags |= TGI_REQ_GRAD;
        inputs[k]->grad = NULL;
    }
    tg_tensor *y = fn(ctx, inputs, user);
    if (!y) {
        if (tg_ok(ctx)) tg_set_error(ctx, "tg_gradcheck: the function returned NULL");
        goto done;
    }
    if (y->dtype != TG_F64) {
        char b[96];
        tg_set_error(ctx, "tg_gradcheck: the function's output is %s %s; it must be f64",
                     tg_dtype_name(y->dtype), TGI_SHAPE(y, b));
        goto done;
    }
    int64_t m = y->numel;
    if (m == 0 || total == 0) {
        ok = 1;
        goto done;
    }
    if ((double)m * (double)total > 5e7) {
        tg_set_error(ctx, "tg_gradcheck: Jacobian of %lld x %lld is too large to check",
                     (long long)m, (long long)total);
        goto done;
    }
    jbytes = (size_t)m * (size_t)total * sizeof(double);
    ja = tgi_calloc(ctx, jbytes);
    jn = ja ? tgi_calloc(ctx, jbytes) : NULL;
    fbytes = (size_t)m * sizeof(double);
    fplus = jn ? tgi_malloc(ctx, fbytes) : NULL;
    if (!fplus) goto done;

    if (y->flags & TGI_REQ_GRAD) {
        double *seed = tgi_arena_alloc(ctx, fbytes);
        if (!seed) goto done;
        for (int64_t j = 0; j < m; j++) {
            memset(seed, 0, fbytes);
            seed[j] = 1.0;
            for (int k = 0; k < n; k++) inputs[k]->grad = NULL;
            if (y->node >= tape0) {
                tgi_backward_from(ctx, y, seed, tape0);
            } else { /* y is an input itself */
                double *g = tg_grad_acc(y);
                if (g) g[j] += 1.0;
            }
            if (!tg_ok(ctx)) goto done;
            int64_t col = 0;
            for (int k = 0; k < n; k++) {
                const double *g = grad_or_null(inputs[k]);
                for (int64_t i = 0; i < inputs[k]->numel; i++, col++)
                    ja[j * total + col] = g ? g[i] : 0.0;
            }
        }
    }

    /* numeric Jacobian */
    ctx->no_grad = 1;
    int64_t col = 0;
    for (int k = 0; k < n; k++) {
        double *x = inputs[k]->data;
        for (int64_t i = 0; i < inputs[k]->numel; i++, col++) {
            double v = x[i];
            tgi_arena_mark m2 = tgi_arena_get_mark(ctx);
            x[i] = v + eps;
            tg_tensor *yp = fn(ctx, inputs, user);
            if (yp && yp->numel == m) memcpy(fplus, yp->data, fbytes);
            tgi_arena_rewind(ctx, m2);
            x[i] = v - eps;
            tg_tensor *ym = fn(ctx, inputs, user);
            x[i] = v;
            if (!yp || !ym || yp->numel != m || ym->numel != m || ym->dtype != TG_F64) {
                tgi_arena_rewind(ctx, m2);
                if (tg_ok(ctx))
                    tg_set_error(ctx, "tg_gradcheck: the function gave no output or an output of "
                                      "another size when input %d element %lld was perturbed",
                                 k, (long long)i);
                goto done;
            }
            const double *fm = ym->data;
            for (int64_t j = 0; j < m; j++) jn[j * total + col] = (fplus[j] - fm[j]) / (2 * eps);
            tgi_arena_rewind(ctx, m2);
        }
    }

    /* compare */
    ok = 1;
    for (int64_t j = 0; j < m && ok; j++) {
        col = 0;
        for (int k = 0; k < n && ok; k++) {
            for (int64_t i = 0; i < inputs[k]->numel; i++, col++) {
                double a = ja[j * total + col], u = jn[j * total + col];
                if (!(fabs(a - u) <= atol + rtol * fabs(u))) {
                    char b[96];
                    ok = 0;
                    /* restore state first so the message is the recorded error */
                    ctx->no_grad = prev_no_grad;
                    tg_set_error(ctx,
                                 "tg_gradcheck: input %d %s element %lld, output element %lld: "
                                 "analytic %.10g, numeric %.10g (|diff| %.3g > atol %.3g + rtol %.3g * |numeric|)",
                                 k, TGI_SHAPE(inputs[k], b), (long long)i, (long long)j, a, u,
                                 fabs(a - u), atol, rtol);
                    break;
                }
            }
        }
    }

done:
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
    if (saved != sv) tgi_free(ctx, saved, (size_t)n * sizeof *saved);
    tgi_free(ctx, ja, jbytes);
    tgi_free(ctx, jn, jbytes);
    tgi_free(ctx, fplus, fbytes);
    ctx->tape_len = tape0;
    tgi_arena_rewind(ctx, mark);
    ctx->no_grad = prev_no_grad;
    return ok && tg_ok(ctx);
}
