/* SPDX-License-Identifier: MIT */
/* optim.c: optimisers (SGD, RMSprop, Adam, AdamW), gradient clipping and
 * learning-rate schedules.
 *
 * The update rules are PyTorch's (torch.optim 1.13, the single-tensor "for
 * loop" implementations), operation for operation, so that a parameter
 * follows the same trajectory as in PyTorch to rounding; docs/optim.md writes
 * every formula out. Conventions below: p parameter, g its gradient, t the
 * number of updates this parameter has had (1 at its first), lr, wd weight
 * decay, mu momentum.
 *
 * Memory: the state of every parameter (momentum buffers, moments) lives in
 * one 64-byte aligned block allocated by tg_optim_new through the context's
 * allocator and zeroed; tg_optim_step never allocates. A parameter whose grad
 * is NULL is skipped and its t does not advance, as in PyTorch, where its
 * state is not even created until a gradient reaches it. So is a parameter
 * that does not require grad (frozen, or state such as batch norm's running
 * statistics), even when it holds a gradient from before it was frozen: no
 * update and no weight decay touch it.
 *
 * Kernels are written once for float and double (TGI_FLOAT_DISPATCH) as flat
 * loops over p, g and the state, one loop per case so that each is a
 * straight-line body gcc can vectorise. Scalars are converted to T before the
 * loop, as PyTorch converts its Python floats to the tensor's dtype. */
#include "toolkit.h"
#include "vmath.h"

#include <math.h>
#include <tgmath.h>
#if defined(__x86_64__) || defined(__i386__)
#include <xmmintrin.h> /* _mm_getcsr, _mm_setcsr */
#endif

#define OPT_MAX_BUFS 3 /* most state buffers one parameter needs (RMSprop, Adam) */
#define SGD_SMALL 32   /* elements of a parameter that sgd_plain_small sweeps */

struct tg_optim {
    tg_ctx *ctx;
    tg_optim_opts o;
    int n;                         /* parameters */
    int nbufs;                     /* state buffers per parameter */
    int64_t nsteps;                /* successful tg_optim_step calls */
    tg_tensor **params;            /* [n] */
    int64_t *t;                    /* [n] updates each parameter has had */
    void **buf;                    /* [n * nbufs] state buffers, inside `state` */
    void *state;                   /* one aligned block, state_bytes long */
    size_t state_bytes;
    void *moved;                   /* where tg_optim_move_state put the state, or NULL */
    int sgd_small;                 /* plain SGD, every parameter f32 and small (sgd_plain_small) */
};

/* ---- options ------------------------------------------------------------ */

const char *tg_optim_kind_name(tg_opt_kind kind) {
    switch (kind) {
    case TG_OPT_SGD: return "sgd";
    case TG_OPT_RMSPROP: return "rmsprop";
    case TG_OPT_ADAM: return "adam";
    case TG_OPT_ADAMW: return "adamw";
    case TG_OPT_COUNT: break;
    }
    return "?";
}

tg_optim_opts tg_optim_defaults(tg_opt_kind kind) {
    tg_optim_opts o;
    memset(&o, 0, sizeof o);
    o.kind = kind;
    switch (kind) {
    case TG_OPT_SGD: o.lr = 1e-2; break; /* PyTorch: lr required, the rest 0 */
    case TG_OPT_RMSPROP:
        o.lr = 1e-2;
        o.alpha = 0.99;
        o.eps = 1e-8;
        break;
    case TG_OPT_ADAM:
    case TG_OPT_ADAMW:
        o.lr = 1e-3;
        o.beta1 = 0.9;
        o.beta2 = 0.999;
        o.eps = 1e-8;
        o.weight_decay = kind == TG_OPT_ADAMW ? 1e-2 : 0.0;
        break;
    case TG_OPT_COUNT: break;
    }
    return o;
}

static int nonneg(double x) { return x >= 0.0 && isfinite(x); }

/* Checks the fields @p o's kind uses, as torch.optim's constructors do (and
 * finiteness besides). 0 ok, -1 with the error recorded. */
static int check_opts(tg_ctx *ctx, const char *fn, const tg_optim_opts *o) {
    if ((unsigned)o->kind >= TG_OPT_COUNT) {
        tg_set_error(ctx, "%s: unknown optimiser kind %d", fn, (int)o->kind);
        return -1;
    }
    const char *k = tg_optim_kind_name(o->kind);
#define OPT_REQUIRE(cond, field, what)                                                     \
    do {                                                                                   \
        if (!(cond)) {                                                                     \
            tg_set_error(ctx, "%s: %s " #field " must be " what ", got %g", fn, k, (double)o->field); \
            return -1;                                                                     \
        }                                                                                  \
    } while (0)
    OPT_REQUIRE(nonneg(o->lr), lr, ">= 0 and finite");
    OPT_REQUIRE(nonneg(o->weight_decay), weight_decay, ">= 0 and finite");
    switch (o->kind) {
    case TG_OPT_SGD:
        OPT_REQUIRE(nonneg(o->momentum), momentum, ">= 0 and finite");
        OPT_REQUIRE(isfinite(o->dampening), dampening, "finite");
        if (o->nesterov && (o->momentum <= 0.0 || o->dampening != 0.0)) {
            tg_set_error(ctx,
                         "%s: sgd nesterov needs momentum > 0 and dampening 0, got momentum %g, "
                         "dampening %g",
                         fn, o->momentum, o->dampening);
            return -1;
        }
        break;
    case TG_OPT_RMSPROP:
        OPT_REQUIRE(nonneg(o->momentum), momentum, ">= 0 and finite");
        OPT_REQUIRE(nonneg(o->alpha), alpha, ">= 0 and finite");
        OPT_REQUIRE(nonneg(o->eps), eps, ">= 0 and finite");
        break;
    case TG_OPT_ADAM:
    case TG_OPT_ADAMW:
        OPT_REQUIRE(nonneg(o->eps), eps, ">= 0 and finite");
        OPT_REQUIRE(o->beta1 >= 0.0 && o->beta1 < 1.0, beta1, "in [0, 1)");
        OPT_REQUIRE(o->beta2 >= 0.0 && o->beta2 < 1.0, beta2, "in [0, 1)");
        break;
    case TG_OPT_COUNT: break;
    }
#undef OPT_REQUIRE
    return 0;
}

/* State buffers one parameter needs under @p o. */
static int bufs_needed(const tg_optim_opts *o) {
    switch (o->kind) {
    case TG_OPT_SGD: return o->momentum != 0.0;                 /* momentum_buffer */
    case TG_OPT_RMSPROP:                                        /* square_avg, grad_avg, buf */
        return 1 + (o->centered != 0) + (o->momentum > 0.0);
    case TG_OPT_ADAM:
    case TG_OPT_ADAMW: return 2 + (o->amsgrad != 0);           /* exp_avg, exp_avg_sq, max */
    case TG_OPT_COUNT: break;
    }
    return 0;
}

/* ---- making and freeing ------------------------------------------------- */

static size_t round_up(size_t n) { return (n + TG_ALIGN - 1) & ~(size_t)(TG_ALIGN - 1); }

void tg_optim_free(tg_optim *opt) {
    if (!opt) return;
    tg_ctx *ctx = opt->ctx;
    size_t n = (size_t)opt->n;
    if (opt->state) tgi_free_aligned(ctx, opt->state, opt->state_bytes);
    if (opt->buf) tgi_free(ctx, opt->buf, n * (size_t)opt->nbufs * sizeof *opt->buf);
    if (opt->t) tgi_free(ctx, opt->t, n * sizeof *opt->t);
    if (opt->params) tgi_free(ctx, opt->params, n * sizeof *opt->params);
    tgi_free(ctx, opt, sizeof *opt);
}

tg_optim *tg_optim_new(tg_ctx *ctx, const tg_optim_opts *o, tg_tensor *const *params, int n) {
    static const char fn[] = "tg_optim_new";
    if (!ctx || !tg_ok(ctx)) return NULL;
    tgi_api(ctx, fn);
    if (!o) {
        tg_set_error(ctx, "%s: argument o is NULL", fn);
        return NULL;
    }
    if (check_opts(ctx, fn, o)) return NULL;
    if (n < 0 || (!params && n != 0)) {
        tg_set_error(ctx, "%s: params is %s with n %d (pass params NULL and n 0 for every parameter)",
                     fn, params ? "given" : "NULL", n);
        return NULL;
    }
    int all = params == NULL;
    if (all) n = tg_param_count(ctx);
    if (n == 0) {
        tg_set_error(ctx, "%s: no parameters to optimise%s", fn,
                     all ? " (the context has none yet: create the layers first)" : "");
        return NULL;
    }
    for (int i = 0; i < n && !all; i++) {
        tg_tensor *p = params[i];
        char arg[32];
        snprintf(arg, sizeof arg, "params[%d]", i);
        if (!tgi_check_arg(ctx, fn, arg, p)) return NULL;
        if (!(p->flags & TGI_PARAM)) {
            char b[96];
            tg_set_error(ctx, "%s: %s (%s %s) is not a parameter made by tg_param", fn, arg,
                         tg_dtype_name(p->dtype), TGI_SHAPE(p, b));
            return NULL;
        }
        for (int j = 0; j < i; j++) {
            if (params[j] == p) {
                tg_set_error(ctx, "%s: parameter '%s' is given twice (params[%d] and %s)", fn,
                             p->name, j, arg);
                return NULL;
            }
        }
    }

    tg_optim *opt = tgi_malloc(ctx, sizeof *opt);
    if (!opt) return NULL;
    memset(opt, 0, sizeof *opt);
    opt->ctx = ctx;
    opt->o = *o;
    opt->n = n;
    opt->nbufs = bufs_needed(o);
    opt->params = tgi_malloc(ctx, (size_t)n * sizeof *opt->params);
    opt->t = opt->params ? tgi_calloc(ctx, (size_t)n * sizeof *opt->t) : NULL;
    if (opt->t && opt->nbufs)
        opt->buf = tgi_malloc(ctx, (size_t)n * (size_t)opt->nbufs * sizeof *opt->buf);
    if (!opt->t || (opt->nbufs && !opt->buf)) {
        tg_optim_free(opt);
        return NULL;
    }
    size_t bytes = 0;
    opt->sgd_small = o->kind == TG_OPT_SGD && o->momentum == 0.0;
    for (int i = 0; i < n; i++) {
        tg_tensor *p = all ? tg_param_at(ctx, i) : params[i];
        opt->params[i] = p;
        bytes += (size_t)opt->nbufs * round_up(tgi_bytes(p));
        opt->sgd_small &= p->dtype == TG_F32 && p->numel <= SGD_SMALL;
    }
    if (bytes) {
        opt->state = tgi_malloc_aligned(ctx, bytes);
        if (!opt->state) {
            tg_optim_free(opt);
            return NULL;
        }
        opt->state_bytes = bytes;
        memset(opt->state, 0, bytes); /* PyTorch starts every buffer at zeros */
        unsigned char *q = opt->state;
        for (int i = 0; i < n; i++) {
            for (int b = 0; b < opt->nbufs; b++) {
                opt->buf[i * opt->nbufs + b] = q;
                q += round_up(tgi_bytes(opt->params[i]));
            }
        }
    }
    return opt;
}

/* ---- sweeps: vector clones and threads -------------------------------------
 * Each update rule is a function over a range [lo, hi) of one parameter's
 * flat arrays. Its loops are compiled twice, for AVX2 and for baseline
 * x86-64 (TGI_AVX2_CLONES, chosen when the program loads; SGD on a 1.8M-element
 * parameter takes 0.27 instead of 0.43 ns an element, RMSprop's sqrt and
 * division gain more). This file is ISO C, where gcc does not contract
 * a*b+c into a fused multiply-add, and every operation is an IEEE one (sqrt
 * and division included), so both clones give the same bits. Adam's sweep is
 * tgi_vadam (src/kernels/vmath.h). A large parameter is split into contiguous ranges over threads
 * (par_ranges): element i of an update depends only on element i of p, g
 * and the state, so any thread count gives the same bits too. */
/* Subnormal numbers. The moments of a parameter whose gradient is almost always
 * zero (the weights of an image's border pixels, say) decay geometrically, m = beta1 m,
 * until they are subnormal, and the square of a gradient below ~1e-19 is subnormal at
 * once. x86 computes with subnormal operands or results through a microcode assist of
 * ~100 cycles: the Adam step of the Fashion-MNIST MLP (docs/performance.md) took
 * 95-100 us from its second epoch on instead of 46. So every sweep runs with SSE's
 * flush-to-zero and denormals-are-zero modes (MXCSR bits 15 and 6), set and restored
 * around it in each thread that runs one: subnormal inputs (gradients, moments) count
 * as 0 and subnormal results are stored as 0. Only values below 2^-126 (f32) or
 * 2^-1022 (f64) are affected; with eps = 1e-8 such a moment moves a parameter by less
 * than lr 1e-30, which changes only a parameter that is itself below ~1e-22 in
 * magnitude. Elsewhere (AArch64, ...) the sweeps keep subnormals. */
typedef struct {
#if defined(__x86_64__) || defined(__i386__)
    unsigned int csr;
#else
    int unused;
#endif
} fp_mode;

static inline fp_mode flush_subnormals_begin(void) {
    fp_mode m;
#if defined(__x86_64__) || defined(__i386__)
    m.csr = _mm_getcsr();
    _mm_setcsr(m.csr | 0x8040u); /* FTZ | DAZ */
#else
    m.unused = 0;
#endif
    return m;
}

static inline void flush_subnormals_end(fp_mode m) {
#if defined(__x86_64__) || defined(__i386__)
    _mm_setcsr(m.csr);
#else
    (void)m;
#endif
}

/* fn(k, p, st, lo, hi) over [0, n): a parameter below TGI_PAR_MIN elements
 * at once in the caller's thread, whose sweep loop (tg_optim_step,
 * tg_sgd_step) has set the flushing mode once for all its parameters; a
 * larger one through TGI_PAR_RUN (in the caller's thread below
 * tgi_threads_for's threshold, else contiguous ranges on the context's
 * threads), each range with subnormals flushed in the thread that runs it. */
typedef struct upd_k upd_k;
typedef void (*upd_fn)(const upd_k *k, tg_tensor *p, void *const *st, int64_t lo, int64_t hi);
typedef struct {
    upd_fn fn;
    const upd_k *k;
    tg_tensor *p;
    void *const *st;
    int64_t base; /* the chunks [lo, hi) of TGI_PAR_RUN are of [base, base + n) */
} upd_job;
TGI_PAR_FN void upd_range(void *arg, int64_t lo, int64_t hi) {
    const upd_job *j = arg;
    const fp_mode m = flush_subnormals_begin();
    j->fn(j->k, j->p, j->st, j->base + lo, j->base + hi);
    flush_subnormals_end(m);
}
/* fn over elements [lo, hi) of p (all of it, or one shard: tg_optim_step_shard) */
static void par_ranges(tg_ctx *ctx, upd_fn fn, const upd_k *k, tg_tensor *p, void *const *st,
                       int64_t lo, int64_t hi) {
    if (hi - lo < TGI_PAR_MIN)
        fn(k, p, st, lo, hi);
    else
        TGI_PAR_RUN(ctx, hi - lo, upd_range, &(upd_job){fn, k, p, st, lo});
}

/* The scalars of one update, in double (each kernel rounds them to T once). */
struct upd_k {
    const tg_optim_opts *o;
    int64_t t;              /* this parameter's update count, 1 at its first */
    double lr_t, inv_bc2;   /* Adam: lr / (1 - beta1^t), 1 / sqrt(1 - beta2^t) */
};

/* ---- SGD ----------------------------------------------------------------
 *   d = g + wd p
 *   mu != 0:  b = d at t = 1, else b = mu b + (1 - dampening) d
 *             d = d + mu b (nesterov) or d = b
 *   p = p - lr d                                                              */
/* mu = 0: the whole rule is one line (a function of its own, so that the
 * small parameters of a tiny network pay for nothing else) */
TGI_AVX2_CLONES static void sgd_plain_range(const upd_k *k, tg_tensor *p, void *const *st,
                                        int64_t lo, int64_t hi) {
    (void)st;
    TGI_FLOAT_DISPATCH(p->dtype, {
        T *restrict x = p->data;
        const T *restrict g = p->grad;
        const T lr = (T)k->o->lr, wd = (T)k->o->weight_decay;
        for (int64_t i = lo; i < hi; i++) x[i] = x[i] - lr * (g[i] + wd * x[i]);
    });
}

/* The same rule for an f32 parameter of at most SGD_SMALL elements (the layers
 * of a tiny network), inline in tg_optim_step's sweep: 4-lane vectors of the
 * same operations, so the same bits, without the call and the vector loop's
 * set-up that cost more than the few elements. */
typedef float sgd_v4f __attribute__((vector_size(16)));
static inline void sgd_plain_small(float *restrict x, const float *restrict g, float lr, float wd,
                                   int64_t n) {
    int64_t i = 0;
    for (; i + 4 <= n; i += 4) {
        sgd_v4f xv, gv;
        memcpy(&xv, x + i, sizeof xv);
        memcpy(&gv, g + i, sizeof gv);
        xv = xv - lr * (gv + wd * xv);
        memcpy(x + i, &xv, sizeof xv);
    }
    for (; i < n; i++) x[i] = x[i] - lr * (g[i] + wd * x[i]);
}

/* mu != 0 */
TGI_AVX2_CLONES static void sgd_range(const upd_k *k, tg_tensor *p, void *const *st, int64_t lo,
                                  int64_t hi) {
    const tg_optim_opts *o = k->o;
    const int64_t t = k->t;
    TGI_FLOAT_DISPATCH(p->dtype, {
        T *restrict x = p->data;
        const T *restrict g = p->grad;
        T *restrict b = st[0];
        const T lr = (T)o->lr, wd = (T)o->weight_decay, mu = (T)o->momentum;
        const T damp1 = (T)(1.0 - o->dampening);
        if (t == 1 && o->nesterov) {
            for (int64_t i = lo; i < hi; i++) {
                T d = g[i] + wd * x[i];
                b[i] = d;
                x[i] = x[i] - lr * (d + mu * d);
            }
        } else if (t == 1) {
            for (int64_t i = lo; i < hi; i++) {
                T d = g[i] + wd * x[i];
                b[i] = d;
                x[i] = x[i] - lr * d;
            }
        } else if (o->nesterov) {
            for (int64_t i = lo; i < hi; i++) {
                T d = g[i] + wd * x[i];
                T bi = b[i] * mu + damp1 * d;
                b[i] = bi;
                x[i] = x[i] - lr * (d + mu * bi);
            }
        } else {
            for (int64_t i = lo; i < hi; i++) {
                T d = g[i] + wd * x[i];
                T bi = b[i] * mu + damp1 * d;
                b[i] = bi;
                x[i] = x[i] - lr * bi;
            }
        }
    });
}

/* ---- RMSprop -------------------------------------------------------------
 *   d = g + wd p
 *   v = alpha v + (1 - alpha) d^2
 *   centered: a = alpha a + (1 - alpha) d;  den = sqrt(max(v - a^2, 0)) + eps
 *   else:     den = sqrt(v) + eps
 *   mu > 0:   b = mu b + d / den;  p = p - lr b
 *   else:     p = p - lr d / den
 * The max(., 0) guards against v - a^2 rounding below 0 (it is >= 0 exactly,
 * by Cauchy-Schwarz); PyTorch would give NaN there.                          */
/* One case's loop (CENTERED and MOM are constants, so the body is straight-line
 * code gcc vectorises), inside rmsprop_range. */
#define RMSPROP_LOOP(CENTERED, MOM)                                                    \
    do {                                                                               \
        for (int64_t i = lo; i < hi; i++) {                                            \
            T d = g[i] + wd * x[i];                                                    \
            T vi = v[i] * al + al1 * d * d;                                            \
            v[i] = vi;                                                                 \
            T den = sqrt(vi) + eps;                                                    \
            if (CENTERED) {                                                            \
                T ai = a[i] * al + al1 * d;                                            \
                a[i] = ai;                                                             \
                den = sqrt(fmax(vi - ai * ai, zero)) + eps;                            \
            }                                                                          \
            if (MOM) {                                                                 \
                T bi = b[i] * mu + d / den;                                            \
                b[i] = bi;                                                             \
                x[i] = x[i] - lr * bi;                                                 \
            } else {                                                                   \
                x[i] = x[i] - lr * (d / den);                                          \
            }                                                                          \
        }                                                                              \
    } while (0)
TGI_AVX2_CLONES static void rmsprop_range(const upd_k *k, tg_tensor *p, void *const *st, int64_t lo,
                                      int64_t hi) {
    const tg_optim_opts *o = k->o;
    int centered = o->centered != 0, mom = o->momentum > 0.0;
    TGI_FLOAT_DISPATCH(p->dtype, {
        T *restrict x = p->data;
        const T *restrict g = p->grad;
        T *restrict v = st[0];
        T *restrict a = centered ? st[1] : NULL;
        T *restrict b = mom ? st[1 + centered] : NULL;
        const T lr = (T)o->lr, wd = (T)o->weight_decay, mu = (T)o->momentum;
        const T al = (T)o->alpha, al1 = (T)(1.0 - o->alpha), eps = (T)o->eps;
        const T zero = 0;
        if (centered && mom)
            RMSPROP_LOOP(1, 1);
        else if (centered)
            RMSPROP_LOOP(1, 0);
        else if (mom)
            RMSPROP_LOOP(0, 1);
        else
            RMSPROP_LOOP(0, 0);
    });
}
#undef RMSPROP_LOOP

/* ---- Adam and AdamW --------------------------------------------------------
 *   Adam:  d = g + wd p           (L2 penalty in the gradient)
 *   AdamW: p = p (1 - lr wd); d = g (decoupled weight decay)
 *   m = beta1 m + (1 - beta1) d
 *   v = beta2 v + ((1 - beta2) d) d
 *   amsgrad: vmax = max(vmax, v), used for v below
 *   p = p - lr_t (m / (sqrt(v) inv_bc2 + eps))
 * with lr_t = lr / (1 - beta1^t) and inv_bc2 = 1 / sqrt(1 - beta2^t) formed in
 * double. PyTorch divides sqrt(v) by sqrt(1 - beta2^t); multiplying by its
 * reciprocal differs by an ulp at most (within the reference tests' bounds).
 * Without amsgrad the sweep is tgi_vadam (src/kernels/vmath.h), which gives the bits
 * of this formula evaluated in this order; amsgrad is the loop below, the
 * same formula on vmax.                                                      */
static void adam_range(const upd_k *k, tg_tensor *p, void *const *st, int64_t lo, int64_t hi) {
    const tg_optim_opts *o = k->o;
    const int adamw = o->kind == TG_OPT_ADAMW;
    const double wd = o->weight_decay;
    if (p->dtype == TG_F32)
        tgi_vadam_f32((float *)p->data + lo, (const float *)p->grad + lo, (float *)st[0] + lo,
                      (float *)st[1] + lo, hi - lo, k->lr_t, o->beta1, o->beta2, k->inv_bc2,
                      o->eps, wd, adamw, o->lr);
    else
        tgi_vadam_f64((double *)p->data + lo, (const double *)p->grad + lo, (double *)st[0] + lo,
                      (double *)st[1] + lo, hi - lo, k->lr_t, o->beta1, o->beta2, k->inv_bc2,
                      o->eps, wd, adamw, o->lr);
}

TGI_AVX2_CLONES static void adam_amsgrad_range(const upd_k *k, tg_tensor *p, void *const *st,
                                           int64_t lo, int64_t hi) {
    const tg_optim_opts *o = k->o;
    const int adamw = o->kind == TG_OPT_ADAMW;
    TGI_FLOAT_DISPATCH(p->dtype, {
        T *restrict x = p->data;
        const T *restrict g = p->grad;
        T *restrict m = st[0];
        T *restrict v = st[1];
        T *restrict vmax = st[2];
        const T wd = adamw ? (T)0 : (T)o->weight_decay;
        const T decay = adamw ? (T)(1.0 - o->lr * o->weight_decay) : (T)1;
        const T b1 = (T)o->beta1, b11 = (T)(1.0 - o->beta1);
        const T b2 = (T)o->beta2, b21 = (T)(1.0 - o->beta2);
        const T lr_t = (T)k->lr_t, inv_bc2 = (T)k->inv_bc2, eps = (T)o->eps;
        for (int64_t i = lo; i < hi; i++) {
            T d = g[i] + wd * x[i];
            T mi = m[i] * b1 + b11 * d;
            T vi = v[i] * b2 + (b21 * d) * d;
            T vm = fmax(vmax[i], vi);
            m[i] = mi;
            v[i] = vi;
            vmax[i] = vm;
            x[i] = x[i] * decay - lr_t * (mi / (sqrt(vm) * inv_bc2 + eps));
        }
    });
}

/* One update of shard k of n of every parameter with a gradient (all of it
 * when n is 1); the tiny network's sweep only for the whole step. */
static int step_shard(tg_optim *opt, int shard, int nshards) {
    tgi_settle_grads(opt->ctx); /* a step right after tg_zero_grad steps zeros */
    const tg_optim_opts *o = &opt->o;
    const fp_mode fm = flush_subnormals_begin(); /* for the small parameters (par_ranges) */
    const float lr32 = (float)o->lr, wd32 = (float)o->weight_decay;
    const int small = opt->sgd_small && nshards == 1;
    for (int i = 0; small && i < opt->n; i++) { /* a tiny network's whole sweep */
        tg_tensor *p = opt->params[i];
        if (!p->grad || !(p->flags & TGI_REQ_GRAD)) continue; /* no gradient, or frozen */
        ++opt->t[i];
        sgd_plain_small(p->data, p->grad, lr32, wd32, p->numel);
    }
    for (int i = 0; !small && i < opt->n; i++) {
        tg_tensor *p = opt->params[i];
        if (!p->grad || !(p->flags & TGI_REQ_GRAD)) continue; /* no gradient, or frozen */
        int64_t t = ++opt->t[i];
        void *const *st = opt->nbufs ? &opt->buf[i * opt->nbufs] : NULL;
        upd_k k = {o, t, 0.0, 0.0};
        upd_fn fn = NULL;
        switch (o->kind) {
        case TG_OPT_SGD: fn = o->momentum == 0.0 ? sgd_plain_range : sgd_range; break;
        case TG_OPT_RMSPROP: fn = rmsprop_range; break;
        case TG_OPT_ADAM:
        case TG_OPT_ADAMW:
            k.lr_t = o->lr / (1.0 - pow(o->beta1, (double)t));
            k.inv_bc2 = 1.0 / sqrt(1.0 - pow(o->beta2, (double)t));
            fn = o->amsgrad ? adam_amsgrad_range : adam_range;
            break;
        case TG_OPT_COUNT: break;
        }
        const size_t es = tg_dtype_size(p->dtype);
        if (fn)
            par_ranges(opt->ctx, fn, &k, p, st, tgi_shard_start(p->numel, shard, nshards, es),
                       tgi_shard_start(p->numel, shard + 1, nshards, es));
    }
    flush_subnormals_end(fm);
    opt->nsteps++;
    return 0;
}

int tg_optim_step(tg_optim *opt) {
    if (!opt) return -1;
    if (!tg_ok(opt->ctx)) return -1;
    if (opt->moved) {
        tg_set_error(opt->ctx, "tg_optim_step: the optimiser's state was moved by "
                               "tg_optim_move_state (it is shared): step it by shards "
                               "(tg_optim_step_shard, or tg_mpi_step)");
        return -1;
    }
    return step_shard(opt, 0, 1);
}

int tg_optim_step_shard(tg_optim *opt, int shard, int nshards) {
    if (!opt) return -1;
    if (!tg_ok(opt->ctx)) return -1;
    if (nshards < 1 || shard < 0 || shard >= nshards) {
        tg_set_error(opt->ctx, "tg_optim_step_shard: shard %d of %d (need 0 <= shard < nshards)",
                     shard, nshards);
        return -1;
    }
    return step_shard(opt, shard, nshards);
}

size_t tg_optim_state_bytes(const tg_optim *opt) { return opt ? opt->state_bytes : 0; }

/* The state buffers, rebased from the block at `from` to the one at `to`. */
static void rebase_state(tg_optim *opt, unsigned char *from, unsigned char *to) {
    for (int j = 0; j < opt->n * opt->nbufs; j++)
        opt->buf[j] = to + ((unsigned char *)opt->buf[j] - from);
}

int tg_optim_move_state(tg_optim *opt, void *mem, int copy) {
    if (!opt) return -1;
    if (mem && (uintptr_t)mem % TG_ALIGN != 0) {
        tg_set_error(opt->ctx, "tg_optim_move_state: mem %p is not %d-byte aligned", mem,
                     TG_ALIGN);
        return -1;
    }
    unsigned char *cur = opt->moved ? opt->moved : opt->state;
    unsigned char *to = mem ? mem : opt->state;
    if (opt->state && cur != to) {
        if (copy) memmove(to, cur, opt->state_bytes);
        rebase_state(opt, cur, to);
    }
    opt->moved = mem;
    return 0;
}

void tg_optim_set_lr(tg_optim *opt, double lr) {
    if (!opt) return;
    if (!nonneg(lr)) {
        tg_set_error(opt->ctx, "tg_optim_set_lr: lr must be >= 0 and finite, got %g", lr);
        return;
    }
    opt->o.lr = lr;
}

double tg_optim_get_lr(const tg_optim *opt) { return opt ? opt->o.lr : NAN; }

int64_t tg_optim_step_count(const tg_optim *opt) { return opt ? opt->nsteps : -1; }

const tg_optim_opts *tg_optim_opts_of(const tg_optim *opt) { return opt ? &opt->o : NULL; }

/* ---- plain gradient descent --------------------------------------------- */

/* p = p - lr g */
TGI_AVX2_CLONES static void gd_range(const upd_k *k, tg_tensor *p, void *const *st, int64_t lo,
                                 int64_t hi) {
    TGI_FLOAT_DISPATCH(p->dtype, {
        T *restrict x = p->data;
        const T *restrict g = p->grad;
        const T a = (T)k->o->lr;
        for (int64_t i = lo; i < hi; i++) x[i] = x[i] - a * g[i];
    });
}

int tg_sgd_step(tg_ctx *ctx, double lr) {
    if (!ctx || !tg_ok(ctx)) return -1;
    if (!nonneg(lr)) {
        tg_set_error(ctx, "tg_sgd_step: lr must be >= 0 and finite, got %g", lr);
        return -1;
    }
    tg_optim_opts o;
    memset(&o, 0, sizeof o);
    o.lr = lr;
    const upd_k k = {&o, 1, 0.0, 0.0};
    tgi_settle_grads(ctx);
    const fp_mode fm = flush_subnormals_begin(); /* for the small parameters (par_ranges) */
    for (int i = 0; i < ctx->n_params; i++) {
        tg_tensor *p = ctx->params[i];
        if (p->grad && (p->flags & TGI_REQ_GRAD))
            par_ranges(ctx, gd_range, &k, p, NULL, 0, p->numel);
    }
    flush_subnormals_end(fm);
    return 0;
}

/* ---- gradient clipping ---------------------------------------------------
 * torch.nn.utils.clip_grad_norm_ with norm_type 2:
 *   norm = sqrt(sum_p sum_i g_i^2),  c = max_norm / (norm + 1e-6)
 *   c < 1: g = c g for every gradient
 * The sum of squares is accumulated in double for both dtypes.               */
static int clip_list(tg_ctx *ctx, const char *fn, tg_tensor *const *params, int n,
                     tg_tensor *const **list, int *count) {
    if (n < 0 || (!params && n != 0)) {
        tg_set_error(ctx, "%s: params is %s with n %d (pass params NULL and n 0 for every parameter)",
                     fn, params ? "given" : "NULL", n);
        return -1;
    }
    if (!params) {
        *list = ctx->params;
        *count = ctx->n_params;
        return 0;
    }
    for (int i = 0; i < n; i++) {
        char arg[32];
        snprintf(arg, sizeof arg, "params[%d]", i);
        if (!tgi_check_arg(ctx, fn, arg, params[i])) return -1;
        if (!tgi_check_float(ctx, fn, arg, params[i])) return -1;
    }
    *list = params;
    *count = n;
    return 0;
}

double tg_clip_grad_norm(tg_ctx *ctx, tg_tensor *const *params, int n, double max_norm) {
    static const char fn[] = "tg_clip_grad_norm";
    if (!ctx || !tg_ok(ctx)) return -1.0;
    if (!nonneg(max_norm)) {
        tg_set_error(ctx, "%s: max_norm must be >= 0 and finite, got %g", fn, max_norm);
        return -1.0;
    }
    tg_tensor *const *list;
    int count;
    if (clip_list(ctx, fn, params, n, &list, &count)) return -1.0;
    tgi_settle_grads(ctx);
    double ss = 0.0;
    for (int k = 0; k < count; k++) {
        const tg_tensor *p = list[k];
        if (!p->grad) continue;
        int64_t m = p->numel;
        TGI_FLOAT_DISPATCH(p->dtype, {
            const T *restrict g = p->grad;
            double acc = 0.0;
            for (int64_t i = 0; i < m; i++) acc += (double)g[i] * (double)g[i];
            ss += acc;
        });
    }
    double norm = sqrt(ss);
    if (!isfinite(norm)) return norm; /* left untouched; the caller sees inf/NaN */
    double c = max_norm / (norm + 1e-6);
    if (c < 1.0) {
        for (int k = 0; k < count; k++) {
            tg_tensor *p = list[k];
            if (!p->grad) continue;
            int64_t m = p->numel;
            TGI_FLOAT_DISPATCH(p->dtype, {
                T *restrict g = p->grad;
                const T s = (T)c;
                for (int64_t i = 0; i < m; i++) g[i] = g[i] * s;
            });
        }
    }
    return norm;
}

/* ---- learning-rate schedules -------------------------------------------
 * With W = warmup_steps: step < W gives base_lr (step+1) / W; otherwise
 * s = step - W and
 *   CONSTANT     base_lr
 *   STEP         base_lr gamma^floor(s / step_size)            (StepLR)
 *   EXPONENTIAL  base_lr gamma^s                               (ExponentialLR)
 *   COSINE       T = total_steps - W; s < T:
 *                min_lr + (base_lr - min_lr) (1 + cos(pi s / T)) / 2
 *                s >= T: min_lr                          (CosineAnnealingLR) */

/* NULL if valid, else the reason (for tg_sched_check's message). */
static const char *sched_invalid(const tg_sched *s) {
    if ((unsigned)s->kind >= TG_SCHED_COUNT) return "unknown schedule kind";
    if (!nonneg(s->base_lr)) return "base_lr must be >= 0 and finite";
    if (s->warmup_steps < 0) return "warmup_steps must be >= 0";
    switch (s->kind) {
    case TG_SCHED_STEP:
        if (s->step_size <= 0) return "step_size must be > 0";
        /* fall through */
    case TG_SCHED_EXPONENTIAL:
        if (!(s->gamma > 0.0) || !isfinite(s->gamma)) return "gamma must be > 0 and finite";
        break;
    case TG_SCHED_COSINE:
        if (s->total_steps <= s->warmup_steps) return "total_steps must be > warmup_steps";
        if (!(s->min_lr >= 0.0 && s->min_lr <= s->base_lr))
            return "min_lr must be in [0, base_lr]";
        break;
    default: break;
    }
    return NULL;
}

int tg_sched_check(tg_ctx *ctx, const tg_sched *s) {
    if (!ctx) return -1;
    if (!s) {
        tg_set_error(ctx, "tg_sched_check: argument s is NULL");
        return -1;
    }
    const char *why = sched_invalid(s);
    if (why) {
        tg_set_error(ctx,
                     "tg_sched_check: %s (kind %d, base_lr %g, gamma %g, min_lr %g, step_size "
                     "%lld, total_steps %lld, warmup_steps %lld)",
                     why, (int)s->kind, s->base_lr, s->gamma, s->min_lr, (long long)s->step_size,
                     (long long)s->total_steps, (long long)s->warmup_steps);
        return -1;
    }
    return 0;
}

double tg_sched_lr(const tg_sched *s, int64_t step) {
    if (!s || step < 0 || sched_invalid(s)) return NAN;
    int64_t w = s->warmup_steps;
    if (step < w) return s->base_lr * (double)(step + 1) / (double)w;
    int64_t k = step - w;
    switch (s->kind) {
    case TG_SCHED_CONSTANT: return s->base_lr;
    case TG_SCHED_STEP: return s->base_lr * pow(s->gamma, (double)(k / s->step_size));
    case TG_SCHED_EXPONENTIAL: return s->base_lr * pow(s->gamma, (double)k);
    case TG_SCHED_COSINE: {
        int64_t T = s->total_steps - w;
        if (k >= T) return s->min_lr;
        return s->min_lr +
               (s->base_lr - s->min_lr) * (1.0 + cos(TGI_PI * (double)k / (double)T)) / 2.0;
    }
    default: break;
    }
    return NAN;
}

/* ---- the state, for saving and restoring it (resume.c) ------------------- */

void tgi_optim_view_of(tg_optim *opt, tgi_optim_view *v) {
    v->n = opt->n;
    v->nbufs = opt->nbufs;
    v->params = opt->params;
    v->t = opt->t;
    v->buf = opt->buf;
    v->nsteps = &opt->nsteps;
    v->opts = &opt->o;
}
