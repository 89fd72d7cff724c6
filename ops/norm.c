/* SPDX-License-Identifier: MIT */
/* ops/norm.c: normalisation and dropout: tg_layer_norm, tg_batch_norm, tg_dropout.
 *
 * Each op is one fused node with its own backward. Every op reads top to
 * bottom: the public function (argument checks, output, saved memory, tape
 * record, forward), the forward kernel, then the backward kernel with its
 * derivative in one comment line. Kernels are written once for float and
 * double (TGI_FLOAT_DISPATCH); statistics and every sum are accumulated in
 * double. Local gradients in full: docs/ops.md, "Normalisation and dropout".
 *
 * Statistics. The mean and the biased variance of a group of values (a row
 * of layer norm, a channel of batch norm) come from one pass over the values
 * with sums shifted by the group's first value k: s1 = sum (x - k),
 * s2 = sum (x - k)^2, mean = k + s1 / n, var = s2 / n - (s1 / n)^2. The shift
 * keeps the subtraction from cancelling when |mean| is large against the
 * spread (the textbook one-pass E[x^2] - E[x]^2 does not). Layer norm's row
 * reductions run on 4 doubles at a time (GCC vector types, as
 * src/kernels/vmath_generic.c uses), keeping LANES partial sums in a fixed
 * order, so the bits do not depend on the machine's vector width.
 * rstd = 1 / sqrt(var + eps).
 *
 * Threads. Layer norm splits its rows (forward) and blocks of ROW_BLOCK rows
 * (backward) over the context's threads (run_ranges); the results do not
 * depend on the split. Batch norm and dropout run in the caller's thread
 * (dropout draws its mask in order from the one generator). */
#include "ops.h"

#define LANES 8 /* partial sums kept by the row reductions of layer norm: two v4d */

/* 4 doubles, and unaligned views of 4 doubles or 4 floats in memory. Macros,
 * not functions: a helper taking a 32-byte vector by value would be called
 * with another ABI from the AVX2 clone than the one it was compiled for. */
typedef double v4d __attribute__((vector_size(32)));
typedef double v4d_mem __attribute__((vector_size(32), aligned(8), may_alias));
typedef float v4f_mem __attribute__((vector_size(16), aligned(4), may_alias));
/* p[0..4) as v4d, p a const float * or const double * */
#define LOAD4(p)                                                                       \
    _Generic((p), const float *: __builtin_convertvector(*(const v4f_mem *)(p), v4d),  \
             const double *: *(const v4d_mem *)(p))
#define STORE4(p, v) (*(v4d_mem *)(p) = (v))
/* the 8 lanes of a and b summed in a fixed order */
#define HSUM8(a, b)                                                                    \
    ((((a)[0] + (b)[0]) + ((a)[1] + (b)[1])) + (((a)[2] + (b)[2]) + ((a)[3] + (b)[3])))

/* Work split over threads: fn(arg, u0, u1) on contiguous ranges of units
 * [0, units), one range per thread, the thread count from the op's total
 * work in elements (one range below tgi_threads_for's threshold). The
 * kernels make each unit's result independent of the split, so the bits do
 * not depend on the thread count. */
typedef void (*range_fn)(const void *arg, int64_t u0, int64_t u1);
static void run_ranges(tg_ctx *ctx, int64_t work, int64_t units, range_fn fn, const void *arg)
{
    int nt = work < TGI_PAR_MIN ? 1 : tgi_threads_for(ctx, work);
    if (nt > units) nt = (int)units;
    if (nt <= 1) {
        if (units > 0) fn(arg, 0, units);
        return;
    }
    tgi_par_units(ctx, nt, units, fn, arg);
}

/* 1 if eps is >= 0 and finite, else records "<fn>: eps must be ..." */
static int check_eps(tg_ctx *ctx, const char *fn, double eps)
{
    if (eps >= 0 && isfinite(eps)) return 1;
    tg_set_error(ctx, "%s: eps must be >= 0 and finite, got %g", fn, eps);
    return 0;
}

/* An optional per-feature tensor (weight, bias, running statistics): NULL is
 * fine; otherwise it must be of this ctx, of x's dtype and of shape [n].
 * 1 ok, else the error is recorded. what names x's axis ("D", "C"). */
static int check_vec(tg_ctx *ctx, const char *fn, const char *arg, const tg_tensor *v,
                     const tg_tensor *x, int64_t n, const char *what)
{
    if (!v) return 1;
    if (!tgi_check_arg(ctx, fn, arg, v) || !tgi_check_same_dtype(ctx, fn, x, v)) return 0;
    if (v->ndim == 1 && v->shape[0] == n) return 1;
    char bv[96], bx[96];
    tg_set_error(ctx, "%s: %s %s must be [%s] = [%lld] for x %s", fn, arg, TGI_SHAPE(v, bv), what,
                 (long long)n, TGI_SHAPE(x, bx));
    return 0;
}

/* The inputs of a node: x, then weight and bias when given; *iw and *ib get
 * their positions (0 when absent: position 0 is x). Returns the count. */
static int gather_inputs(tg_tensor **in, tg_tensor *x, tg_tensor *w, tg_tensor *b, int64_t *iw,
                         int64_t *ib)
{
    int n = 0;
    in[n++] = x;
    *iw = w ? n : 0;
    if (w) in[n++] = w;
    *ib = b ? n : 0;
    if (b) in[n++] = b;
    return n;
}

/* t's gradient += sums (t's numel doubles, rounded to t's dtype) */
static void grad_add_sums(tg_tensor *t, const double *sums)
{
    TGI_FLOAT_DISPATCH(t->dtype, {
        T *g = tg_grad_acc(t);
        if (g)
            for (int64_t i = 0; i < t->numel; i++) g[i] += (T)sums[i];
    });
}

/* mean and rstd of a group from its shifted sums (see the file comment) */
static void stats_from_sums(double k, double s1, double s2, double n, double eps, double *mean,
                            double *rstd, double *var)
{
    const double m1 = s1 / n;
    double v = s2 / n - m1 * m1;
    if (v < 0) v = 0;
    *mean = k + m1;
    *rstd = 1.0 / sqrt(v + eps);
    if (var) *var = v;
}

/* ======================================================================== */
/* tg_layer_norm                                                            */
/* x [..., D] (1 to 4 dims), weight and bias [D] or NULL -> y of x's shape. */
/* Per row r (every index but the last): mean_r, var_r (biased), rstd_r =    */
/* 1/sqrt(var_r + eps), xh = (x - mean_r) rstd_r, y = xh w + b (F.layer_norm */
/* over (D,)). With g = dy w and means over the row:                         */
/*   dx = rstd (g - mean(g) - xh mean(g xh))                                 */
/*   dw = sum over rows of dy xh,   db = sum over rows of dy.                */
/* Saves: mean and rstd of every row (2 rows doubles, tg_scratch, only when  */
/* recorded); backward recomputes xh from x. Attributes: i[0] rows, i[1] D,  */
/* i[2], i[3] the positions of weight and bias among the inputs (0: absent), */
/* f[4] eps.                                                                 */
/* Numerical care: shifted one-pass statistics in double; eps >= 0.          */
/* ======================================================================== */

TGI_OP(layer_norm);

tg_tensor *tg_layer_norm(tg_ctx *ctx, tg_tensor *x, tg_tensor *weight, tg_tensor *bias,
                         double eps)
{
    static const char fn[] = "tg_layer_norm";
    if (!ctx) return NULL;
    if (!tgi_check_arg(ctx, fn, "x", x) || !tgi_check_float(ctx, fn, "x", x)) return NULL;
    if (x->ndim < 1) {
        char bx[96];
        tg_set_error(ctx, "%s: x %s has no last axis to normalise over (needs 1 to 4 dims)", fn,
                     TGI_SHAPE(x, bx));
        return NULL;
    }
    const int64_t d = x->shape[x->ndim - 1], rows = d > 0 ? x->numel / d : 0;
    if (!check_vec(ctx, fn, "weight", weight, x, d, "D") ||
        !check_vec(ctx, fn, "bias", bias, x, d, "D") || !check_eps(ctx, fn, eps))
        return NULL;

    tg_tensor *out = tgi_tensor_new(ctx, fn, x->dtype, x->ndim, x->shape, 0);
    if (!out) return NULL;
    tg_tensor *in[3];
    tgi_attr at = {.i = {rows, d}};
    const int n = gather_inputs(in, x, weight, bias, &at.i[2], &at.i[3]);
    at.f[4] = eps;
    return tgi_op_run(ctx, &op_layer_norm, out, in, n, &at, sizeof at);
}

/* Shifted sums s1 = sum (x - k), s2 = sum (x - k)^2 of one row of n values
 * (T, from TGI_FLOAT_DISPATCH), in LANES partial sums. */
#define ROW_SUMS(xr, n, k, s1, s2)                                                     \
    do {                                                                               \
        const v4d k_ = {(k), (k), (k), (k)};                                           \
        v4d a1_ = {0}, a2_ = {0}, b1_ = {0}, b2_ = {0};                                \
        int64_t j_ = 0;                                                                \
        for (; j_ + LANES <= (n); j_ += LANES) {                                       \
            const v4d d_ = LOAD4((const T *)(xr) + j_) - k_;                           \
            const v4d e_ = LOAD4((const T *)(xr) + j_ + 4) - k_;                       \
            a1_ += d_;                                                                 \
            a2_ += d_ * d_;                                                            \
            b1_ += e_;                                                                 \
            b2_ += e_ * e_;                                                            \
        }                                                                              \
        (s1) = HSUM8(a1_, b1_);                                                        \
        (s2) = HSUM8(a2_, b2_);                                                        \
        for (; j_ < (n); j_++) {                                                       \
            const double d_ = (double)(xr)[j_] - (k);                                  \
            (s1) += d_;                                                                \
            (s2) += d_ * d_;                                                           \
        }                                                                              \
    } while (0)

/* What the row kernels of layer norm read. */
typedef struct {
    tg_tensor *y;
    const tg_tensor *x, *w, *b;
    double eps;
    double *saved;          /* mean, rstd per row */
    const void *dy;         /* backward: the output's gradient */
    void *dx;               /* backward: x's gradient, or NULL */
    double *acc;            /* backward: per block of ROW_BLOCK rows, the dw then db sums [2 D] */
    int64_t d, rows;
} ln_args;

/* Rows whose dw and db sums layer norm's backward keeps together: a fixed
 * block, so how the rows are split over threads does not change the bits. */
#define ROW_BLOCK 256

static void layer_norm_rows(const void *arg, int64_t r0, int64_t r1);

/* Rows split over threads; each row independent. On a tape node, each
 * row's mean and rstd go to c->saved for backward. */
static int layer_norm_forward(tg_op_call *c)
{
    const tgi_attr *at = TGI_ATTR(c);
    const tg_tensor *x = c->in[0];
    const int64_t rows = at->i[0], d = at->i[1];
    double *saved = NULL;
    if (tgi_recorded(c) && rows > 0) {
        saved = tg_scratch(c->ctx, (size_t)rows * 2 * sizeof(double));
        if (!saved) return -1; /* error recorded by tg_scratch */
    }
    c->saved = saved;
    const ln_args a = {.y = c->out, .x = x, .w = at->i[2] ? c->in[at->i[2]] : NULL,
                       .b = at->i[3] ? c->in[at->i[3]] : NULL, .eps = at->f[4],
                       .saved = saved, .d = d};
    run_ranges(c->ctx, x->numel, rows, layer_norm_rows, &a);
    return 0;
}

/* Rows [r0, r1): one pass for the statistics, one for y = (x - mean) rstd w + b. */
TGI_AVX2_CLONES static void layer_norm_rows_k(const void *arg, int64_t r0, int64_t r1)
{
    const ln_args *a = arg;
    const int64_t d = a->d;
    double *saved = a->saved;
    TGI_FLOAT_DISPATCH(a->x->dtype, {
        const T *restrict pw = a->w ? a->w->data : NULL, *restrict pb = a->b ? a->b->data : NULL;
        for (int64_t r = r0; r < r1; r++) {
            const T *restrict xr = (const T *)a->x->data + r * d;
            T *restrict yr = (T *)a->y->data + r * d;
            const double k = (double)xr[0];
            double s1, s2, mean, rstd;
            ROW_SUMS(xr, d, k, s1, s2);
            stats_from_sums(k, s1, s2, (double)d, a->eps, &mean, &rstd, NULL);
            if (saved) {
                saved[2 * r] = mean;
                saved[2 * r + 1] = rstd;
            }
            /* x - mean as (x - k) - (mean - k): exact-ish in T even when |mean|
             * dwarfs the spread (a mean rounded to T would not be) */
            const T kt = xr[0], m1 = (T)(mean - k), rs = (T)rstd;
            if (pw && pb)
                for (int64_t j = 0; j < d; j++) yr[j] = ((xr[j] - kt) - m1) * rs * pw[j] + pb[j];
            else if (pw)
                for (int64_t j = 0; j < d; j++) yr[j] = ((xr[j] - kt) - m1) * rs * pw[j];
            else if (pb)
                for (int64_t j = 0; j < d; j++) yr[j] = ((xr[j] - kt) - m1) * rs + pb[j];
            else
                for (int64_t j = 0; j < d; j++) yr[j] = ((xr[j] - kt) - m1) * rs;
        }
    });
}

/* run_ranges is handed plain functions that call the clones: clang refuses to
 * multiversion a function declared before without the attribute, and calls
 * through a pointer to a static clone lost the argument (UBSan: a NULL arg). */
static void layer_norm_rows(const void *arg, int64_t r0, int64_t r1)
{
    layer_norm_rows_k(arg, r0, r1);
}

static void layer_norm_backward_blocks(const void *arg, int64_t b0, int64_t b1);

/* d y/dx = rstd (I - 1/D - xh xh^T / D) diag(w);  d y/dw = xh;  d y/db = 1 */
static void layer_norm_backward(tg_op_call *c)
{
    const tgi_attr *at = TGI_ATTR(c);
    const int64_t rows = at->i[0], d = at->i[1], blocks = (rows + ROW_BLOCK - 1) / ROW_BLOCK;
    tg_tensor *x = c->in[0], *w = at->i[2] ? c->in[at->i[2]] : NULL;
    tg_tensor *b = at->i[3] ? c->in[at->i[3]] : NULL;
    const int need_x = tgi_needs_grad(x), need_w = tgi_needs_grad(w), need_b = tgi_needs_grad(b);
    if (!c->out->grad || rows == 0 || !(need_x || need_w || need_b)) return;
    ln_args a = {.x = x, .w = w, .saved = c->saved, .dy = c->out->grad, .d = d, .rows = rows};
    if (need_w || need_b) { /* per-block column sums of dy xh and dy, then their total */
        a.acc = tg_scratch(c->ctx, (size_t)(blocks + 1) * 2 * (size_t)d * sizeof(double));
        if (!a.acc) return;
        memset(a.acc, 0, (size_t)blocks * 2 * (size_t)d * sizeof(double));
    }
    if (need_x && !(a.dx = tg_grad_acc(x))) return;
    run_ranges(c->ctx, x->numel, blocks, layer_norm_backward_blocks, &a);
    if (!a.acc) return;
    double *total = a.acc + blocks * 2 * d;
    for (int64_t j = 0; j < 2 * d; j++) {
        double t = 0;
        for (int64_t k = 0; k < blocks; k++) t += a.acc[k * 2 * d + j];
        total[j] = t;
    }
    if (need_w) grad_add_sums(w, total);
    if (need_b) grad_add_sums(b, total + d);
}

/* Blocks [b0, b1) of ROW_BLOCK rows: per row one pass for sum g, sum g xh
 * (g = dy w) and the block's column sums, one for dx. */
TGI_AVX2_CLONES static void layer_norm_backward_blocks_k(const void *arg, int64_t b0, int64_t b1)
{
    const ln_args *a = arg;
    const int64_t d = a->d;
    const double *saved = a->saved;
    TGI_FLOAT_DISPATCH(a->x->dtype, {
        const T *restrict dy = a->dy;
        const T *restrict pw = a->w ? a->w->data : NULL;
        T *restrict dx = a->dx;
        const int64_t r1 = b1 * ROW_BLOCK < a->rows ? b1 * ROW_BLOCK : a->rows;
        for (int64_t r = b0 * ROW_BLOCK; r < r1; r++) {
            double *restrict acc_w = a->acc ? a->acc + (r / ROW_BLOCK) * 2 * d : NULL;
            double *restrict acc_b = acc_w ? acc_w + d : NULL;
            const T *restrict xr = (const T *)a->x->data + r * d, *restrict dyr = dy + r * d;
            const double mean = saved[2 * r], rstd = saved[2 * r + 1];
            const v4d mv = {mean, mean, mean, mean}, rv = {rstd, rstd, rstd, rstd};
            v4d a1 = {0}, a2 = {0}, c1 = {0}, c2 = {0};
            int64_t j = 0;
            for (; j + LANES <= d; j += LANES) {
                const v4d dy0 = LOAD4(dyr + j), dy1 = LOAD4(dyr + j + 4);
                const v4d xh0 = (LOAD4(xr + j) - mv) * rv, xh1 = (LOAD4(xr + j + 4) - mv) * rv;
                const v4d g0 = pw ? dy0 * LOAD4(pw + j) : dy0;
                const v4d g1 = pw ? dy1 * LOAD4(pw + j + 4) : dy1;
                a1 += g0;
                a2 += g0 * xh0;
                c1 += g1;
                c2 += g1 * xh1;
                if (acc_w) {
                    STORE4(acc_w + j, *(const v4d_mem *)(acc_w + j) + dy0 * xh0);
                    STORE4(acc_w + j + 4, *(const v4d_mem *)(acc_w + j + 4) + dy1 * xh1);
                    STORE4(acc_b + j, *(const v4d_mem *)(acc_b + j) + dy0);
                    STORE4(acc_b + j + 4, *(const v4d_mem *)(acc_b + j + 4) + dy1);
                }
            }
            double sg = HSUM8(a1, c1), sgx = HSUM8(a2, c2);
            for (; j < d; j++) {
                const double dyj = (double)dyr[j], xh = ((double)xr[j] - mean) * rstd;
                const double g = pw ? dyj * (double)pw[j] : dyj;
                sg += g;
                sgx += g * xh;
                if (acc_w) {
                    acc_w[j] += dyj * xh;
                    acc_b[j] += dyj;
                }
            }
            if (!dx) continue;
            const T mg = (T)(sg / (double)d), mgx = (T)(sgx / (double)d);
            const T kt = xr[0], m1 = (T)(mean - (double)kt), rs = (T)rstd;
            T *restrict dxr = dx + r * d;
            if (pw)
                for (int64_t jj = 0; jj < d; jj++)
                    dxr[jj] += rs * (dyr[jj] * pw[jj] - mg - ((xr[jj] - kt) - m1) * rs * mgx);
            else
                for (int64_t jj = 0; jj < d; jj++)
                    dxr[jj] += rs * (dyr[jj] - mg - ((xr[jj] - kt) - m1) * rs * mgx);
        }
    });
}

static void layer_norm_backward_blocks(const void *arg, int64_t b0, int64_t b1)
{
    layer_norm_backward_blocks_k(arg, b0, b1);
}

/* ======================================================================== */
/* tg_batch_norm                                                            */
/* x [N,C] or [N,C,H,W] -> y of x's shape; running_mean, running_var,        */
/* weight, bias [C] or NULL. Seen as [N,C,S] with S = H W (1 for [N,C]);     */
/* channel c's M = N S values x[n,c,s] share mean_c and rstd_c:              */
/*   training: mean_c, var_c (biased) of the batch; the running statistics, */
/*     when given, become r = (1 - momentum) r + momentum stat, with the     */
/*     unbiased variance var_c M / (M - 1) (M must be > 1, as PyTorch);      */
/*   eval: mean_c = running_mean_c, var_c = running_var_c (both required).   */
/* rstd_c = 1/sqrt(var_c + eps), xh = (x - mean_c) rstd_c, y = xh w_c + b_c. */
/* Local gradients, sums over the M values of channel c:                     */
/*   training: dx = rstd w (dy - sum(dy)/M - xh sum(dy xh)/M)                */
/*   eval:     dx = rstd w dy (the statistics are constants)                 */
/*   dw_c = sum dy xh, db_c = sum dy; the running statistics get none.       */
/* Saves: mean_c, rstd_c and the shift k_c (see below) in tg_scratch, so     */
/* backward does not read the running statistics, which later steps          */
/* overwrite. Numerical care: x - mean is computed as (x - k) - (mean - k),  */
/* k_c the channel's first value, so an f32 channel whose mean dwarfs its    */
/* spread keeps its digits. The inputs: x, then weight, bias, running_mean,  */
/* running_var when given (forward reads or updates the running statistics; */
/* they get no gradient). Attributes: i[0] training; i[1..4] the positions  */
/* of weight, bias, running_mean, running_var among the inputs (0: absent); */
/* f[5] momentum, f[6] eps. A failing call updates nothing.                 */
/* ======================================================================== */

static void batch_norm_stats(const tg_tensor *x, int64_t nb, int64_t ch, int64_t sp, double eps,
                             double *st);
static void batch_norm_apply(tg_tensor *y, const tg_tensor *x, const tg_tensor *w,
                             const tg_tensor *b, int64_t nb, int64_t ch, int64_t sp,
                             const double *st);
TGI_OP(batch_norm);

/* x [N,C] or [N,C,H,W] seen as [N,C,S] */
static void bn_dims(const tg_tensor *x, int64_t *nb, int64_t *ch, int64_t *sp)
{
    *nb = x->shape[0], *ch = x->shape[1], *sp = x->ndim == 4 ? x->shape[2] * x->shape[3] : 1;
}

/* input number at->i[k] of c, or NULL when it is 0 (absent) */
#define BN_IN(c, at, k) ((at)->i[k] ? (c)->in[(at)->i[k]] : NULL)

tg_tensor *tg_batch_norm(tg_ctx *ctx, tg_tensor *x, tg_tensor *running_mean,
                         tg_tensor *running_var, tg_tensor *weight, tg_tensor *bias,
                         int training, double momentum, double eps)
{
    static const char fn[] = "tg_batch_norm";
    char bx[96];
    if (!ctx) return NULL;
    if (!tgi_check_arg(ctx, fn, "x", x) || !tgi_check_float(ctx, fn, "x", x)) return NULL;
    if (x->ndim != 2 && x->ndim != 4) {
        tg_set_error(ctx, "%s: x %s must be [N,C] or [N,C,H,W]", fn, TGI_SHAPE(x, bx));
        return NULL;
    }
    const int64_t nb = x->shape[0], ch = x->shape[1],
                  sp = x->ndim == 4 ? x->shape[2] * x->shape[3] : 1;
    if (!training && (!running_mean || !running_var)) {
        tg_set_error(ctx, "%s: eval mode (training 0) normalises with the running statistics, "
                          "but running_%s is NULL (x %s)",
                     fn, running_mean ? "var" : "mean", TGI_SHAPE(x, bx));
        return NULL;
    }
    if (!check_vec(ctx, fn, "running_mean", running_mean, x, ch, "C") ||
        !check_vec(ctx, fn, "running_var", running_var, x, ch, "C") ||
        !check_vec(ctx, fn, "weight", weight, x, ch, "C") ||
        !check_vec(ctx, fn, "bias", bias, x, ch, "C") || !check_eps(ctx, fn, eps))
        return NULL;
    if (training && (running_mean || running_var) && !(momentum >= 0 && momentum <= 1)) {
        tg_set_error(ctx, "%s: momentum must be in [0, 1], got %g", fn, momentum);
        return NULL;
    }
    if (training && nb * sp <= 1 && ch > 0) {
        tg_set_error(ctx, "%s: training needs more than 1 value per channel, x is %s", fn,
                     TGI_SHAPE(x, bx));
        return NULL;
    }

    tg_tensor *out = tgi_tensor_new(ctx, fn, x->dtype, x->ndim, x->shape, 0);
    if (!out) return NULL;
    tg_tensor *in[5];
    tgi_attr at = {.i = {training ? 1 : 0}};
    int n = gather_inputs(in, x, weight, bias, &at.i[1], &at.i[2]);
    at.i[3] = running_mean ? n : 0;
    if (running_mean) in[n++] = running_mean;
    at.i[4] = running_var ? n : 0;
    if (running_var) in[n++] = running_var;
    at.f[5] = momentum;
    at.f[6] = eps;
    return tgi_op_run(ctx, &op_batch_norm, out, in, n, &at, sizeof at);
}

/* The statistics (the batch's, or the running ones in eval mode) into
 * c->saved, y, then in training the running statistics. */
static int batch_norm_forward(tg_op_call *call)
{
    const tgi_attr *at = TGI_ATTR(call);
    const tg_tensor *x = call->in[0];
    tg_tensor *running_mean = BN_IN(call, at, 3), *running_var = BN_IN(call, at, 4);
    const int training = (int)at->i[0];
    const double momentum = at->f[5], eps = at->f[6];
    int64_t nb, ch, sp;
    bn_dims(x, &nb, &ch, &sp);
    double *st = ch > 0 ? tg_scratch(call->ctx, (size_t)ch * 4 * sizeof(double)) : NULL;
    if (ch > 0 && !st) return -1; /* error recorded by tg_scratch */
    call->saved = st;
    /* st: mean [C], rstd [C], biased batch variance [C], shift k [C] */
    double *mean = st, *rstd = st ? st + ch : NULL, *var = st ? st + 2 * ch : NULL;
    if (training) {
        if (ch > 0) batch_norm_stats(x, nb, ch, sp, eps, st); /* (C = 0: st is NULL) */
    } else {
        TGI_FLOAT_DISPATCH(x->dtype, {
            const T *rm = running_mean->data, *rv = running_var->data;
            for (int64_t c = 0; c < ch; c++) {
                mean[c] = st[3 * ch + c] = (double)rm[c];
                rstd[c] = 1.0 / sqrt((double)rv[c] + eps);
            }
        });
    }
    batch_norm_apply(call->out, x, BN_IN(call, at, 1), BN_IN(call, at, 2), nb, ch, sp, st);
    if (training && nb * sp > 1) { /* r = (1 - m) r + m stat, the variance unbiased */
        const double m = momentum, unbias = (double)(nb * sp) / (double)(nb * sp - 1);
        TGI_FLOAT_DISPATCH(x->dtype, {
            T *rm = running_mean ? running_mean->data : NULL;
            T *rv = running_var ? running_var->data : NULL;
            for (int64_t c = 0; c < ch; c++) {
                if (rm) rm[c] = (T)((1 - m) * (double)rm[c] + m * mean[c]);
                if (rv) rv[c] = (T)((1 - m) * (double)rv[c] + m * var[c] * unbias);
            }
        });
    }
    return 0;
}

/* Batch statistics per channel into st (mean, rstd, var, k; [C] each):
 * shifted sums in double over n and s. */
static void batch_norm_stats(const tg_tensor *x, int64_t nb, int64_t ch, int64_t sp, double eps,
                             double *st)
{
    double *mean = st, *rstd = st + ch, *var = st + 2 * ch, *shift = st + 3 * ch;
    double *s1 = var, *s2 = rstd; /* the sums live in the outputs until the end */
    memset(s1, 0, (size_t)ch * sizeof(double));
    memset(s2, 0, (size_t)ch * sizeof(double));
    TGI_FLOAT_DISPATCH(x->dtype, {
        const T *px = x->data;
        for (int64_t c = 0; c < ch; c++) shift[c] = (double)px[c * sp];
        for (int64_t n = 0; n < nb; n++)
            for (int64_t c = 0; c < ch; c++) {
                const T *xs = px + (n * ch + c) * sp;
                const double k = shift[c];
                double a1 = 0, a2 = 0;
                for (int64_t s = 0; s < sp; s++) {
                    const double d = (double)xs[s] - k;
                    a1 += d;
                    a2 += d * d;
                }
                s1[c] += a1;
                s2[c] += a2;
            }
    });
    for (int64_t c = 0; c < ch; c++)
        stats_from_sums(shift[c], s1[c], s2[c], (double)(nb * sp), eps, &mean[c], &rstd[c],
                        &var[c]);
}

/* y = (x - k_c) scale_c + add_c with scale_c = rstd_c w_c,
 * add_c = b_c - (mean_c - k_c) scale_c */
static void batch_norm_apply(tg_tensor *y, const tg_tensor *x, const tg_tensor *w,
                             const tg_tensor *b, int64_t nb, int64_t ch, int64_t sp,
                             const double *st)
{
    if (ch == 0) return; /* st is NULL: no offset from it */
    const double *mean = st, *rstd = st + ch, *shift = st + 3 * ch;
    TGI_FLOAT_DISPATCH(x->dtype, {
        const T *px = x->data, *pw = w ? w->data : NULL, *pb = b ? b->data : NULL;
        T *py = y->data;
        for (int64_t n = 0; n < nb; n++)
            for (int64_t c = 0; c < ch; c++) {
                const double sc = rstd[c] * (pw ? (double)pw[c] : 1.0);
                const T scale = (T)sc, k = (T)shift[c];
                const T add = (T)((pb ? (double)pb[c] : 0.0) - (mean[c] - shift[c]) * sc);
                const T *xs = px + (n * ch + c) * sp;
                T *ys = py + (n * ch + c) * sp;
                for (int64_t s = 0; s < sp; s++) ys[s] = (xs[s] - k) * scale + add;
            }
    });
}

/* training: d y/dx = rstd w (I - 1/M - xh xh^T / M);  eval: rstd w;  d y/dw = xh;  d y/db = 1 */
static void batch_norm_backward(tg_op_call *c)
{
    const tgi_attr *at = TGI_ATTR(c);
    const int training = (int)at->i[0];
    tg_tensor *x = c->in[0], *w = BN_IN(c, at, 1), *b = BN_IN(c, at, 2);
    int64_t nb, ch, sp;
    bn_dims(x, &nb, &ch, &sp);
    const int need_x = tgi_needs_grad(x), need_w = tgi_needs_grad(w), need_b = tgi_needs_grad(b);
    if (!c->out->grad || ch == 0 || !(need_x || need_w || need_b)) return;
    const double *mean = c->saved, *rstd = mean + ch, *shift = mean + 3 * ch;
    /* sdy_c = sum dy, sdyx_c = sum dy xh */
    double *sdy = tg_scratch(c->ctx, (size_t)ch * 2 * sizeof(double));
    if (!sdy) return;
    double *sdyx = sdy + ch;
    memset(sdy, 0, (size_t)ch * 2 * sizeof(double));
    TGI_FLOAT_DISPATCH(x->dtype, {
        const T *px = x->data, *dy = c->out->grad, *pw = w ? w->data : NULL;
        for (int64_t n = 0; n < nb; n++)
            for (int64_t ci = 0; ci < ch; ci++) {
                const int64_t o = (n * ch + ci) * sp;
                const double m = mean[ci], rs = rstd[ci];
                double a1 = 0, a2 = 0;
                for (int64_t s = 0; s < sp; s++) {
                    a1 += (double)dy[o + s];
                    a2 += (double)dy[o + s] * (((double)px[o + s] - m) * rs);
                }
                sdy[ci] += a1;
                sdyx[ci] += a2;
            }
        if (need_x) {
            T *dx = tg_grad_acc(x);
            if (!dx) return;
            const double inv_m = 1.0 / (double)(nb * sp);
            for (int64_t n = 0; n < nb; n++)
                for (int64_t ci = 0; ci < ch; ci++) {
                    const int64_t o = (n * ch + ci) * sp;
                    const double g = rstd[ci] * (pw ? (double)pw[ci] : 1.0);
                    const T gs = (T)g, k = (T)shift[ci], m1 = (T)(mean[ci] - shift[ci]);
                    const T rs = (T)rstd[ci];
                    if (training) {
                        const T mdy = (T)(sdy[ci] * inv_m), mdyx = (T)(sdyx[ci] * inv_m);
                        for (int64_t s = 0; s < sp; s++)
                            dx[o + s] +=
                                gs * (dy[o + s] - mdy - ((px[o + s] - k) - m1) * rs * mdyx);
                    } else {
                        for (int64_t s = 0; s < sp; s++) dx[o + s] += gs * dy[o + s];
                    }
                }
        }
    });
    if (need_w) grad_add_sums(w, sdyx);
    if (need_b) grad_add_sums(b, sdy);
}

/* ======================================================================== */
/* tg_dropout                                                               */
/* x any shape -> y of x's shape; p in [0, 1). Inverted dropout: element i  */
/* is kept when u_i >= p, u_i uniform in [0, 1) from the context's generator */
/* (tg_rand_uniform's 53 bits, one draw per element in order), so each is 0  */
/* with probability p; y_i = x_i / (1 - p) when kept, else 0.                */
/* dx = dy mask / (1 - p). Not training or p == 0: tg_identity (a node, so   */
/* gradients flow; no draw). Saves: the mask, one byte per element           */
/* (tg_scratch), only when recorded. Attributes: f[0] = 1 / (1 - p), f[1] p. */
/* ======================================================================== */

TGI_OP(dropout);

tg_tensor *tg_dropout(tg_ctx *ctx, tg_tensor *x, double p, int training)
{
    static const char fn[] = "tg_dropout";
    if (!ctx) return NULL;
    if (!tgi_check_arg(ctx, fn, "x", x) || !tgi_check_float(ctx, fn, "x", x)) return NULL;
    if (!(p >= 0 && p < 1)) {
        char bx[96];
        tg_set_error(ctx, "%s: p must be in [0, 1), got %g (x %s)", fn, p, TGI_SHAPE(x, bx));
        return NULL;
    }
    if (!training || p == 0) return tg_identity(ctx, x);

    tg_tensor *out = tgi_tensor_new(ctx, fn, x->dtype, x->ndim, x->shape, 0);
    if (!out) return NULL;
    const tgi_attr at = {.f = {1.0 / (1.0 - p), p}};
    return tgi_op_run(ctx, &op_dropout, out, &x, 1, &at, sizeof at);
}

/* The mask drawn in order (into c->saved on a tape node), y = x mask / (1 - p) */
static int dropout_forward(tg_op_call *c)
{
    tg_ctx *ctx = c->ctx;
    const tg_tensor *x = c->in[0];
    const double scale = TGI_ATTR(c)->f[0], p = TGI_ATTR(c)->f[1];
    unsigned char *mask = NULL;
    if (tgi_recorded(c) && x->numel > 0) {
        mask = tg_scratch(ctx, (size_t)x->numel);
        if (!mask) return -1; /* error recorded by tg_scratch */
    }
    c->saved = mask;
    /* keep when u >= p, u = (r >> 11) 2^-53: when r >> 11 >= ceil(p 2^53) */
    const uint64_t thr = (uint64_t)ceil(p * 0x1.0p53);
    TGI_FLOAT_DISPATCH(x->dtype, {
        const T *px = x->data;
        T *py = c->out->data;
        const T s = (T)scale;
        for (int64_t i = 0; i < x->numel; i++) {
            const unsigned char keep = (tg_rand_u64(ctx) >> 11) >= thr;
            if (mask) mask[i] = keep;
            py[i] = keep ? px[i] * s : (T)0;
        }
    });
    return 0;
}

/* d y/dx = mask / (1 - p) */
static void dropout_backward(tg_op_call *c)
{
    tg_tensor *x = c->in[0];
    const unsigned char *mask = c->saved;
    if (!tgi_needs_grad(x) || !c->out->grad || !mask) return;
    TGI_FLOAT_DISPATCH(x->dtype, {
        const T *dy = c->out->grad;
        const T s = (T)TGI_ATTR(c)->f[0];
        T *dx = tg_grad_acc(x);
        if (dx)
            for (int64_t i = 0; i < x->numel; i++) dx[i] += mask[i] ? dy[i] * s : (T)0;
    });
}
