/* SPDX-License-Identifier: MIT */
/* losses.c: loss functions. Every loss returns a 0-dimensional tensor: the
 * mean over the batch (over all elements for the elementwise losses, over the
 * N rows for cross-entropy). An empty input gives NaN, as a mean of nothing.
 *
 *   elementwise (pred and target of one shape): tg_mse, tg_l1, tg_bce,
 *                                               tg_bce_with_logits
 *   rows of logits:                             tg_cross_entropy
 *
 * Every op reads top to bottom: public function (checks, output, record,
 * forward), forward kernel, backward kernel with its derivative in one comment
 * line. Kernels are written once for float and double (TGI_FLOAT_DISPATCH +
 * <tgmath.h>); every sum is accumulated in double, and so is each element's
 * loss term. Backward ADDS into tg_grad_acc(in[i]) under one `if` per input;
 * g below is d loss/d out (the seed arriving at the 0-dim output) divided by
 * the number of terms averaged. Local gradients in full: docs/ops.md.
 */
#include "ops.h"

/* Elements converted to double per call of a vmath f64 kernel (exp of a row
 * of logits, sigmoid of a run of logits): a stack block, 2 KB. */
#define VBLOCK 256

/* ======================================================================== */
/* Shared helpers                                                           */
/* ======================================================================== */

/* A 0-dimensional output of dtype dt, a float dtype checked by the caller
 * (NULL with the error recorded when out of memory, naming fn). */
static tg_tensor *scalar_out(tg_ctx *ctx, const char *fn, tg_dtype dt)
{
    tgi_api(ctx, fn);
    return tgi_tensor_make(ctx, dt, 0, NULL, 1);
}

/* Store v into the 0-dimensional tensor t. */
static void set_scalar(tg_tensor *t, double v)
{
    TGI_FLOAT_DISPATCH(t->dtype, { *(T *)t->data = (T)v; });
}

/* 1/n, or NaN for an empty mean (so the loss is NaN, not a division trap). */
static double inv_count(int64_t n) { return n > 0 ? 1.0 / (double)n : NAN; }

/* d loss/d out of a loss node divided by the n terms averaged; 0 when no
 * gradient reached the output (then backward has nothing to add). */
static int seed_over(const tg_op_call *c, int64_t n, double *g)
{
    const void *dy = c->out->grad;
    if (!dy || n == 0) return 0;
    TGI_FLOAT_DISPATCH(c->out->dtype, { *g = (double)*(const T *)dy / (double)n; });
    return 1;
}

/* Common body of the elementwise losses f(a, b), a and b of one shape:
 * checks (non-NULL, this ctx, floats, one dtype, one shape), 0-dim output,
 * record and forward (op->forward: PAIR_LOSS_FORWARD). */
static tg_tensor *pair_loss(tg_ctx *ctx, const char *fn, const tg_op *op, tg_tensor *a,
                            const char *an, tg_tensor *b, const char *bn)
{
    if (!ctx) return NULL;
    if (!tgi_check_arg(ctx, fn, an, a) || !tgi_check_arg(ctx, fn, bn, b)) return NULL;
    if (!tgi_check_float(ctx, fn, an, a) || !tgi_check_float(ctx, fn, bn, b) ||
        !tgi_check_same_dtype(ctx, fn, a, b) || !tgi_check_same_shape(ctx, fn, a, b))
        return NULL;
    tg_tensor *out = scalar_out(ctx, fn, a->dtype);
    if (!out) return NULL;
    tg_tensor *in[2] = {a, b};
    return tgi_op_run(ctx, op, out, in, 2, NULL, 0);
}

/* The forward of an elementwise loss NAME: the mean of the per-element
 * terms whose sum NAME_sum(a, b) returns (in double). */
#define PAIR_LOSS_FORWARD(NAME)                                                        \
    static int NAME##_forward(tg_op_call *c)                                           \
    {                                                                                  \
        set_scalar(c->out, NAME##_sum(c->in[0], c->in[1]) * inv_count(c->in[0]->numel)); \
        return 0;                                                                      \
    }

/* Forward of a loss whose term depends on d = p - t only: the mean of TERM
 * (of d, in double), summed in order. */
#define DIFF_LOSS_FORWARD(c, TERM)                                                     \
    do {                                                                               \
        const tg_tensor *p = (c)->in[0], *t = (c)->in[1];                              \
        double sum = 0;                                                                \
        TGI_FLOAT_DISPATCH(p->dtype, {                                                 \
            const T *pp_ = p->data, *pt_ = t->data;                                    \
            for (int64_t i = 0; i < p->numel; i++) {                                   \
                const double d = (double)pp_[i] - (double)pt_[i];                      \
                sum += (TERM);                                                         \
            }                                                                          \
        });                                                                            \
        set_scalar((c)->out, sum * inv_count(p->numel));                               \
    } while (0)

/* The backward of an elementwise loss of a = in[0] and b = in[1] (n elements
 * each): BODY, inside TGI_FLOAT_DISPATCH, with pa, pb (their data), da, db
 * (their gradient buffers, NULL where no gradient is needed) and g (the seed
 * over n) in scope; nothing when no gradient reached the loss. */
#define PAIR_LOSS_BACKWARD(c, ...)                                                     \
    do {                                                                               \
        tg_tensor *a_ = (c)->in[0], *b_ = (c)->in[1];                                  \
        const int64_t n = a_->numel;                                                   \
        double g;                                                                      \
        if (!seed_over((c), n, &g))                                                    \
            break;                                                                     \
        TGI_FLOAT_DISPATCH(a_->dtype, {                                                \
            const T *pa = a_->data, *pb = b_->data;                                    \
            T *da = tgi_needs_grad(a_) ? tg_grad_acc(a_) : NULL;                       \
            T *db = tgi_needs_grad(b_) ? tg_grad_acc(b_) : NULL;                       \
            __VA_ARGS__                                                                \
        });                                                                            \
    } while (0)

/* Its form for a loss whose term depends on d = p - t only: dp += TERM,
 * dt -= TERM, each input that needs a gradient in turn; TERM of d and g. A
 * gradient buffer made here (tgi_grad_first) is written from 0 + TERM, without
 * clearing it first: the same bits. */
#define DIFF_LOSS_BACKWARD(c, TERM)                                                    \
    do {                                                                               \
        const tg_tensor *a_ = (c)->in[0], *b_ = (c)->in[1];                            \
        const int64_t n = a_->numel;                                                   \
        double g;                                                                      \
        if (!seed_over((c), n, &g))                                                    \
            break;                                                                     \
        for (int k_ = 0; k_ < 2; k_++) {                                               \
            tg_tensor *x_ = (c)->in[k_];                                               \
            int fresh_;                                                                \
            void *dv_ = tgi_needs_grad(x_) ? tgi_grad_first(x_, &fresh_) : NULL;       \
            if (!dv_)                                                                  \
                continue;                                                              \
            TGI_FLOAT_DISPATCH(a_->dtype, {                                            \
                const T *pa = a_->data, *pb = b_->data;                                \
                T *dd_ = dv_;                                                          \
                for (int64_t i = 0; i < n; i++) {                                      \
                    const double d = (double)pa[i] - (double)pb[i];                    \
                    const T old_ = fresh_ ? (T)0 : dd_[i];                             \
                    dd_[i] = k_ ? old_ - (T)(TERM) : old_ + (T)(TERM);                 \
                }                                                                      \
            });                                                                        \
        }                                                                              \
    } while (0)

/* ======================================================================== */
/* tg_mse                                                                   */
/* pred, target of one shape (N elements) -> []. L = sum (p - t)^2 / N.      */
/* dL/dp = 2 (p - t) / N; dL/dt = -2 (p - t) / N. Saves: nothing.            */
/* ======================================================================== */

TGI_OP(mse);

tg_tensor *tg_mse(tg_ctx *ctx, tg_tensor *pred, tg_tensor *target)
{
    return pair_loss(ctx, "tg_mse", &op_mse, pred, "pred", target, "target");
}

static int mse_forward(tg_op_call *c)
{
    DIFF_LOSS_FORWARD(c, d * d);
    return 0;
}

/* d mse/dp = 2 (p - t) / N, d mse/dt = -2 (p - t) / N */
static void mse_backward(tg_op_call *c)
{
    DIFF_LOSS_BACKWARD(c, 2 * g * d);
}

/* ======================================================================== */
/* tg_l1                                                                    */
/* pred, target of one shape (N elements) -> []. L = sum |p - t| / N.        */
/* dL/dp = sign(p - t) / N (0 where p == t); dL/dt = -sign(p - t) / N.       */
/* Saves: nothing.                                                           */
/* ======================================================================== */

TGI_OP(l1);

tg_tensor *tg_l1(tg_ctx *ctx, tg_tensor *pred, tg_tensor *target)
{
    return pair_loss(ctx, "tg_l1", &op_l1, pred, "pred", target, "target");
}

static int l1_forward(tg_op_call *c)
{
    DIFF_LOSS_FORWARD(c, fabs(d));
    return 0;
}

/* sign of d as -1, 0, +1 (0 for d == 0 and for NaN) */
static double sign_of(double d) { return (double)((d > 0) - (d < 0)); }

/* d l1/dp = sign(p - t) / N, d l1/dt = -sign(p - t) / N */
static void l1_backward(tg_op_call *c)
{
    DIFF_LOSS_BACKWARD(c, g * sign_of(d));
}

/* ======================================================================== */
/* tg_bce                                                                   */
/* prob, target of one shape (N elements) -> [].                            */
/* q = clamp(p, eps, 1 - eps) with eps = 1e-7 (f32) or 1e-12 (f64);          */
/* L = -sum (t log q + (1 - t) log(1 - q)) / N.                              */
/* dL/dp = (q - t) / (q (1 - q)) / N where eps <= p <= 1 - eps, and 0 where  */
/* p was clamped (the gradient of the clamped function); dL/dt =             */
/* (log(1 - q) - log q) / N. Saves: nothing.                                 */
/* Numerical care: the clamp keeps p = 0 and p = 1 finite (loss at most      */
/* -log eps per element); log(1 - q) is computed as log1p(-q). Targets are   */
/* not checked to lie in [0, 1].                                             */
/* ======================================================================== */

static double bce_sum(const tg_tensor *p, const tg_tensor *t);
TGI_OP(bce);

tg_tensor *tg_bce(tg_ctx *ctx, tg_tensor *prob, tg_tensor *target)
{
    return pair_loss(ctx, "tg_bce", &op_bce, prob, "prob", target, "target");
}

/* the clamp bound of tg_bce for a dtype */
static double bce_eps(tg_dtype dt) { return dt == TG_F32 ? 1e-7 : 1e-12; }

static double bce_sum(const tg_tensor *p, const tg_tensor *t)
{
    const double lo = bce_eps(p->dtype), hi = 1 - lo;
    double sum = 0;
    TGI_FLOAT_DISPATCH(p->dtype, {
        const T *pp = p->data, *pt = t->data;
        for (int64_t i = 0; i < p->numel; i++) {
            const double v = (double)pp[i], tv = (double)pt[i];
            const double q = v < lo ? lo : v > hi ? hi : v;
            sum -= tv * log(q) + (1 - tv) * log1p(-q);
        }
    });
    return sum;
}
PAIR_LOSS_FORWARD(bce)

/* d bce/dp = (q - t) / (q (1 - q)) / N inside the clamp, 0 outside;
 * d bce/dt = (log(1 - q) - log q) / N  (p, t: a and b of PAIR_LOSS_BACKWARD) */
static void bce_backward(tg_op_call *c)
{
    const double lo = bce_eps(c->in[0]->dtype), hi = 1 - lo;
    PAIR_LOSS_BACKWARD(c, {
        if (da)
            for (int64_t i = 0; i < n; i++) {
                const double v = (double)pa[i], tv = (double)pb[i];
                if (v >= lo && v <= hi) da[i] += (T)(g * (v - tv) / (v * (1 - v)));
            }
        if (db)
            for (int64_t i = 0; i < n; i++) {
                const double v = (double)pa[i];
                const double q = v < lo ? lo : v > hi ? hi : v;
                db[i] += (T)(g * (log1p(-q) - log(q)));
            }
    });
}

/* ======================================================================== */
/* tg_bce_with_logits                                                       */
/* logits x, target t of one shape (N elements) -> [].                       */
/* L = sum (max(x, 0) - x t + log(1 + e^-|x|)) / N                           */
/*   (= the bce of sigmoid(x), without forming the sigmoid).                 */
/* dL/dx = (sigmoid(x) - t) / N; dL/dt = -x / N. Saves: nothing.             */
/* Numerical care: e^-|x| <= 1 never overflows and log1p keeps the small     */
/* term exact, so x = +-1000 gives finite, exact losses (x = 1000, t = 0:    */
/* 1000; x = -1000, t = 0: 0); sigmoid is the overflow-free form. e^-|x|     */
/* and the sigmoid come from the f64 vector kernels (src/kernels/vmath.h), a block   */
/* of 256 elements at a time.                                                */
/* ======================================================================== */

static double bce_with_logits_sum(const tg_tensor *x, const tg_tensor *t);
TGI_OP(bce_with_logits);

tg_tensor *tg_bce_with_logits(tg_ctx *ctx, tg_tensor *logits, tg_tensor *target)
{
    return pair_loss(ctx, "tg_bce_with_logits", &op_bce_with_logits, logits, "logits", target,
                     "target");
}

static double bce_with_logits_sum(const tg_tensor *x, const tg_tensor *t)
{
    double sum = 0, e[VBLOCK];
    TGI_FLOAT_DISPATCH(x->dtype, {
        const T *px = x->data, *pt = t->data;
        for (int64_t i0 = 0; i0 < x->numel; i0 += VBLOCK) { /* e = e^-|x|, a block */
            const int64_t nb = x->numel - i0 < VBLOCK ? x->numel - i0 : VBLOCK;
            for (int64_t j = 0; j < nb; j++) e[j] = -fabs((double)px[i0 + j]);
            tgi_vexp_f64(e, e, nb);
            for (int64_t j = 0; j < nb; j++) {
                const double v = (double)px[i0 + j], tv = (double)pt[i0 + j];
                sum += (v > 0 ? v : 0) - v * tv + log1p(e[j]);
            }
        }
    });
    return sum;
}
PAIR_LOSS_FORWARD(bce_with_logits)

/* d/dx = (sigmoid(x) - t) / N, d/dt = -x / N  (x, t: a and b) */
static void bce_with_logits_backward(tg_op_call *c)
{
    PAIR_LOSS_BACKWARD(c, {
        if (da)
            for (int64_t i0 = 0; i0 < n; i0 += VBLOCK) { /* s = sigmoid(x) */
                const int64_t nb = n - i0 < VBLOCK ? n - i0 : VBLOCK;
                double s[VBLOCK];
                for (int64_t j = 0; j < nb; j++) s[j] = (double)pa[i0 + j];
                tgi_vsigmoid_f64(s, s, nb); /* overflow-free, as tg_sigmoid */
                for (int64_t j = 0; j < nb; j++)
                    da[i0 + j] += (T)(g * (s[j] - (double)pb[i0 + j]));
            }
        if (db)
            for (int64_t i = 0; i < n; i++) db[i] -= (T)(g * (double)pa[i]);
    });
}

/* ======================================================================== */
/* tg_cross_entropy                                                         */
/* logits x [N,C] (or [C], one row) and either                               */
/*   - class indices y: i32 [N] (or [] / [1] for [C] logits), each in [0,C), */
/*   - probabilities t: [N,C] of x's dtype (or [C] for [C] logits).          */
/* Fused log-softmax + negative log-likelihood, mean over the N rows:        */
/*   lse_i = m_i + log sum_j e^(x_ij - m_i), m_i the row maximum;            */
/*   indices:       L = sum_i (lse_i - x_i,y_i) / N                          */
/*   probabilities: L = -sum_ij t_ij (x_ij - lse_i) / N (terms with t = 0    */
/*                  are skipped: 0 log 0 = 0, so -inf logits stay finite).   */
/* dL/dx = (p - onehot(y)) / N, or (p sum_j t_ij - t) / N, p = softmax(x);   */
/* dL/dt = -log_softmax(x) / N (float targets that require a gradient).      */
/* Saves: p [N,C] (tg_scratch, call->saved), only when recorded.             */
/* Numerical care: the row maximum is subtracted and log_softmax is never    */
/* taken as the log of p, so logits of +-1000 give exact, finite losses      */
/* (logits [1000,-1000], target 1: 2000); e^(x - m) by tgi_vexp_f64 (<= 1    */
/* ulp) on the shifted row, summed in double in order.                       */
/* ======================================================================== */

TGI_OP(cross_entropy);

/* Rows and classes of the logits of cross-entropy; 0 if x is not [N,C] or [C]. */
static int ce_dims(const tg_tensor *x, int64_t *n, int64_t *k)
{
    if (x->ndim == 2) {
        *n = x->shape[0];
        *k = x->shape[1];
        return 1;
    }
    if (x->ndim == 1) {
        *n = 1;
        *k = x->shape[0];
        return 1;
    }
    return 0;
}

/* Checks the target of cross-entropy against logits x with n rows and k
 * classes: kind, shape, dtype and (for indices) every index's range. */
static int ce_check_target(tg_ctx *ctx, const tg_tensor *x, const tg_tensor *t, int64_t n,
                           int64_t k)
{
    static const char fn[] = "tg_cross_entropy";
    char bx[96], bt[96];
    if (t->dtype == TG_I32) {
        const int shape_ok = x->ndim == 2 ? (t->ndim == 1 && t->shape[0] == n)
                                          : (t->ndim == 0 || (t->ndim == 1 && t->shape[0] == 1));
        if (!shape_ok) {
            tg_set_error(ctx,
                         "%s: class-index target must be i32 %s for logits %s, got i32 %s",
                         fn, x->ndim == 2 ? "[N]" : "[] or [1]", TGI_SHAPE(x, bx),
                         TGI_SHAPE(t, bt));
            return 0;
        }
        const int32_t *y = t->data;
        for (int64_t i = 0; i < n; i++)
            if (y[i] < 0 || y[i] >= k) {
                tg_set_error(ctx,
                             "%s: target[%lld] = %d is outside [0,%lld) (logits %s have %lld "
                             "classes)",
                             fn, (long long)i, (int)y[i], (long long)k, TGI_SHAPE(x, bx),
                             (long long)k);
                return 0;
            }
        return 1;
    }
    if (!tgi_check_float(ctx, fn, "target", t) || !tgi_check_same_dtype(ctx, fn, x, t))
        return 0;
    int same = x->ndim == t->ndim;
    for (int d = 0; same && d < x->ndim; d++) same = x->shape[d] == t->shape[d];
    if (!same) {
        tg_set_error(ctx,
                     "%s: a probability target must have the logits' shape: logits %s, "
                     "target %s (or pass i32 class indices [N])",
                     fn, TGI_SHAPE(x, bx), TGI_SHAPE(t, bt));
        return 0;
    }
    return 1;
}

tg_tensor *tg_cross_entropy(tg_ctx *ctx, tg_tensor *logits, tg_tensor *target)
{
    static const char fn[] = "tg_cross_entropy";
    if (!ctx) return NULL;
    if (!tgi_check_arg(ctx, fn, "logits", logits) || !tgi_check_arg(ctx, fn, "target", target) ||
        !tgi_check_float(ctx, fn, "logits", logits))
        return NULL;
    int64_t n, k;
    char bx[96];
    if (!ce_dims(logits, &n, &k)) {
        tg_set_error(ctx, "%s: logits must be [N,C] (or [C]), got %s", fn, TGI_SHAPE(logits, bx));
        return NULL;
    }
    if (k == 0) {
        tg_set_error(ctx, "%s: logits %s have no classes", fn, TGI_SHAPE(logits, bx));
        return NULL;
    }
    if (!ce_check_target(ctx, logits, target, n, k)) return NULL;
    tg_tensor *out = scalar_out(ctx, fn, logits->dtype);
    if (!out) return NULL;
    tg_tensor *in[2] = {logits, target};
    return tgi_op_run(ctx, &op_cross_entropy, out, in, 2, NULL, 0);
}

/* Row maximum m of xr[0..k), then sum_j e^(xr[j] - m) in double: the
 * shifted row (xr[j] - m rounded to T, as it always was) goes through
 * tgi_vexp_f64 a block at a time and is summed in order j = 0..k-1. The last
 * block's exponentials stay in e[] (all of them when k <= VBLOCK). Inside
 * TGI_FLOAT_DISPATCH. */
#define ROW_SUMEXP(xr, k, m, sum, e)                                                   \
    do {                                                                               \
        m = (xr)[0];                                                                   \
        for (int64_t j_ = 1; j_ < (k); j_++)                                           \
            if ((xr)[j_] > m) m = (xr)[j_];                                            \
        sum = 0;                                                                       \
        for (int64_t j0_ = 0; j0_ < (k); j0_ += VBLOCK) {                              \
            const int64_t nb_ = (k) - j0_ < VBLOCK ? (k) - j0_ : VBLOCK;               \
            for (int64_t j_ = 0; j_ < nb_; j_++) (e)[j_] = (double)((xr)[j0_ + j_] - m); \
            tgi_vexp_f64((e), (e), nb_);                                               \
            for (int64_t j_ = 0; j_ < nb_; j_++) sum += (e)[j_];                       \
        }                                                                              \
    } while (0)

/* When recorded, saves softmax(x), row by row, in c->saved. */
static int cross_entropy_forward(tg_op_call *c)
{
    const tg_tensor *x = c->in[0], *target = c->in[1];
    int64_t n = 0, k = 0;
    ce_dims(x, &n, &k);
    void *probs = NULL;
    if (tgi_recorded(c)) {
        probs = tg_scratch(c->ctx, tgi_bytes(x));
        if (!probs && x->numel) return -1;
        c->saved = probs;
    }
    const int indices = target->dtype == TG_I32;
    double loss = 0;
    double e[VBLOCK];
    TGI_FLOAT_DISPATCH(x->dtype, {
        T *p = probs;
        for (int64_t i = 0; i < n; i++) {
            const T *xr = (const T *)x->data + i * k;
            T m;
            double sum;
            ROW_SUMEXP(xr, k, m, sum, e);
            const double lse = log(sum);
            if (p && k <= VBLOCK) /* e[] holds the row's e^(x - m) */
                for (int64_t j = 0; j < k; j++) p[i * k + j] = (T)(e[j] / sum);
            else if (p)
                for (int64_t j0 = 0; j0 < k; j0 += VBLOCK) {
                    const int64_t nb = k - j0 < VBLOCK ? k - j0 : VBLOCK;
                    for (int64_t j = 0; j < nb; j++) e[j] = (double)(xr[j0 + j] - m);
                    tgi_vexp_f64(e, e, nb);
                    for (int64_t j = 0; j < nb; j++) p[i * k + j0 + j] = (T)(e[j] / sum);
                }
            if (indices) {
                const int32_t y = ((const int32_t *)target->data)[i];
                loss += lse - (double)(xr[y] - m);
            } else {
                const T *tr = (const T *)target->data + i * k;
                for (int64_t j = 0; j < k; j++)
                    if (tr[j] != 0) loss -= (double)tr[j] * ((double)(xr[j] - m) - lse);
            }
        }
    });
    set_scalar(c->out, loss * inv_count(n));
    return 0;
}

/* d ce/dx = (p - onehot) / N (indices), (p sum(t) - t) / N (probabilities);
 * d ce/dt = -log_softmax(x) / N */
static void cross_entropy_backward(tg_op_call *c)
{
    tg_tensor *x = c->in[0], *t = c->in[1];
    int64_t n, k;
    double g;
    if (!ce_dims(x, &n, &k) || !seed_over(c, n, &g)) return;
    const int indices = t->dtype == TG_I32;
    TGI_FLOAT_DISPATCH(x->dtype, {
        const T *p = c->saved;
        if (tgi_needs_grad(x) && p) {
            T *dx = tg_grad_acc(x);
            if (dx)
                for (int64_t i = 0; i < n; i++) {
                    const T *pr = p + i * k;
                    T *dxr = dx + i * k;
                    if (indices) {
                        const int32_t y = ((const int32_t *)t->data)[i];
                        for (int64_t j = 0; j < k; j++)
                            dxr[j] += (T)(g * ((double)pr[j] - (j == y ? 1.0 : 0.0)));
                    } else {
                        const T *tr = (const T *)t->data + i * k;
                        double st = 0;
                        for (int64_t j = 0; j < k; j++) st += (double)tr[j];
                        for (int64_t j = 0; j < k; j++)
                            dxr[j] += (T)(g * ((double)pr[j] * st - (double)tr[j]));
                    }
                }
        }
        if (!indices && tgi_needs_grad(t)) {
            T *dt = tg_grad_acc(t);
            if (dt)
                for (int64_t i = 0; i < n; i++) { /* log_softmax recomputed from x */
                    const T *xr = (const T *)x->data + i * k;
                    T m;
                    double sum, e[VBLOCK];
                    ROW_SUMEXP(xr, k, m, sum, e);
                    const double lse = log(sum);
                    for (int64_t j = 0; j < k; j++)
                        dt[i * k + j] -= (T)(g * ((double)(xr[j] - m) - lse));
                }
        }
    });
}
