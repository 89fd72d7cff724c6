/* SPDX-License-Identifier: MIT */
/* fuzz_api.c: bytes decoded into a sequence of ops on tensors of random shapes
 * (0 to 4 dimensions, sizes 0 to 5) and dtypes, with arguments valid and
 * invalid (NULL inputs, wrong dtypes, bad axes, odd scalars), then backward.
 * The contract checked:
 *   - every call gives a result with no error, or NULL with an error whose
 *     message names the function; a failing call records nothing on the tape;
 *   - after tg_clear_error work goes on;
 *   - backward succeeds or names its error; in an f64 graph whose values are
 *     all bounded (see bounded) and whose scalar arguments are finite, every
 *     gradient is finite;
 *   - nothing crashes or leaks (ASan, UBSan, LeakSanitizer).
 * The op table: one row per op, with its signature kind. Adding an op is one
 * row, plus a kind (one case in call_op) if its signature is new. The
 * second-round ops and layers (conv, pools, norms, dropout, index, recurrent
 * cells and layers, attention, the transformer block) are K_CUSTOM rows: each
 * decodes its own arguments, valid ones often (matching widths, strides,
 * paddings, permutations) and invalid ones too (axes, perms and indices out
 * of range, causal with T != S, p outside [0,1), eps < 0 or NaN). */
#include <math.h>

#include "fuzz_common.h"

typedef struct bytes {
    const uint8_t *p;
    size_t n;
} bytes;

static unsigned take(bytes *b) {
    if (!b->n) return 0;
    b->n--;
    return *b->p++;
}

enum kind {
    K_UNARY,      /* (ctx, x) */
    K_BINARY,     /* (ctx, a, b) */
    K_SCALAR,     /* (ctx, x, double) */
    K_AXIS_KEEP,  /* (ctx, x, int axis, int keepdim) */
    K_RESHAPE,    /* (ctx, x, ndim, shape) */
    K_TERNARY,    /* (ctx, x, a, b) */
    K_CUSTOM,     /* a decoder of its own (f_custom): the second-round ops and layers */
    K_COUNT
};

typedef tg_tensor *(*f_unary)(tg_ctx *, tg_tensor *);
typedef tg_tensor *(*f_binary)(tg_ctx *, tg_tensor *, tg_tensor *);
typedef tg_tensor *(*f_scalar)(tg_ctx *, tg_tensor *, double);
typedef tg_tensor *(*f_axis_keep)(tg_ctx *, tg_tensor *, int, int);
typedef tg_tensor *(*f_reshape)(tg_ctx *, tg_tensor *, int, const int64_t *);
typedef tg_tensor *(*f_ternary)(tg_ctx *, tg_tensor *, tg_tensor *, tg_tensor *);
struct pool;
/* decodes its arguments from b, calls the op; clears *finite when the
 * arguments allow a legitimate non-finite gradient */
typedef tg_tensor *(*f_custom)(struct pool *, struct bytes *, int *finite);

typedef struct {
    const char *name;
    enum kind kind;
    void (*fn)(void);
    const double *scalars; /* K_SCALAR: values to pick from (NULL: the default table) */
    const char *alt;       /* a layer's init: its errors, and those of the ops the
                            * layer calls, name those functions (any tg_ name) */
} op_row;

#define ROW(f, k) {#f, k, (void (*)(void))f, NULL, NULL}
#define ROW_S(f, vals) {#f, K_SCALAR, (void (*)(void))f, vals, NULL}
/* fz_<f> decodes the arguments of f (defined below the table) */
#define ROW_C(f) {#f, K_CUSTOM, (void (*)(void))fz_##f, NULL, NULL}
#define ROW_L(f, init) {#f, K_CUSTOM, (void (*)(void))fz_##f, NULL, #init}

/* arguments that keep finite inputs finite where the math allows: no
 * fractional powers (x^0.5 has an infinite slope at 0) */
static const double pow_args[] = {2, 3, 1, 0, -1, -2, 4, 2};
static const double any_args[] = {0, 1, -1, 0.5, 2, -3, 1e-3, 10};

#define FZ(f) static tg_tensor *fz_##f(struct pool *P, bytes *b, int *finite)
FZ(tg_permute);
FZ(tg_slice);
FZ(tg_concat);
FZ(tg_embedding);
FZ(tg_conv2d);
FZ(tg_max_pool2d);
FZ(tg_avg_pool2d);
FZ(tg_layer_norm);
FZ(tg_batch_norm);
FZ(tg_dropout);
FZ(tg_lstm_cell);
FZ(tg_gru_cell);
FZ(tg_attention);
FZ(tg_conv_forward);
FZ(tg_batchnorm_forward);
FZ(tg_embed_forward);
FZ(tg_lstm_forward);
FZ(tg_gru_forward);
FZ(tg_transformer_block_forward);

static const op_row ops[] = {
    /* matmul family */
    ROW(tg_matmul, K_BINARY),
    ROW(tg_add_bias, K_BINARY),
    /* elementwise */
    ROW(tg_add, K_BINARY),
    ROW(tg_sub, K_BINARY),
    ROW(tg_mul, K_BINARY),
    ROW(tg_div, K_BINARY),
    ROW_S(tg_scale, any_args),
    ROW(tg_neg, K_UNARY),
    ROW(tg_exp, K_UNARY),
    ROW(tg_log, K_UNARY),
    ROW_S(tg_pow, pow_args),
    /* reduce and shape */
    ROW(tg_sum, K_UNARY),
    ROW(tg_mean, K_UNARY),
    ROW(tg_sum_axis, K_AXIS_KEEP),
    ROW(tg_transpose, K_UNARY),
    ROW(tg_reshape, K_RESHAPE),
    /* activations */
    ROW(tg_identity, K_UNARY),
    ROW(tg_step, K_UNARY),
    ROW(tg_sigmoid, K_UNARY),
    ROW(tg_sigmoid_scaled, K_TERNARY),
    ROW(tg_tanh, K_UNARY),
    ROW(tg_relu, K_UNARY),
    ROW_S(tg_leaky_relu, any_args),
    ROW(tg_softmax, K_UNARY),
    ROW(tg_log_softmax, K_UNARY),
    /* losses */
    ROW(tg_mse, K_BINARY),
    ROW(tg_l1, K_BINARY),
    ROW(tg_cross_entropy, K_BINARY),
    ROW(tg_bce, K_BINARY),
    ROW(tg_bce_with_logits, K_BINARY),
    /* second round: shape and indexing (tg_matmul above covers the batched product) */
    ROW_C(tg_permute),
    ROW_C(tg_slice),
    ROW_C(tg_concat),
    ROW_C(tg_embedding),
    /* convolution and pooling */
    ROW_C(tg_conv2d),
    ROW_C(tg_max_pool2d),
    ROW_C(tg_avg_pool2d),
    /* normalisation and regularisation */
    ROW_C(tg_layer_norm),
    ROW_C(tg_batch_norm),
    ROW_C(tg_dropout),
    /* recurrent cells, attention */
    ROW_C(tg_lstm_cell),
    ROW_C(tg_gru_cell),
    ROW_C(tg_attention),
    /* layers (their parameters made on the spot, automatic names) */
    ROW_L(tg_conv_forward, tg_conv_init),
    ROW_L(tg_batchnorm_forward, tg_batchnorm_init),
    ROW_L(tg_embed_forward, tg_embed_init),
    ROW_L(tg_lstm_forward, tg_lstm_init),
    ROW_L(tg_gru_forward, tg_gru_init),
    ROW_L(tg_transformer_block_forward, tg_transformer_block_init),
};
#define N_OPS (sizeof ops / sizeof *ops)
/* The first-round rows: an input whose mode byte has bit 6 clear picks only
 * among them, so the regression inputs saved before the second round still
 * decode to the same calls. */
#define N_FIRST_ROUND 30

#define POOL 24

typedef struct pool {
    tg_ctx *ctx;
    tg_tensor *t[POOL];
    int n;
} pool;

/* Results of more than POOL_NUMEL elements are not kept: chains of growing
 * ops reached attention over 5,120 positions, minutes under the sanitizers
 * for nothing a small tensor does not also cover (4096 still reaches the
 * threaded paths, which start there). */
#define POOL_NUMEL 4096
static void pool_add(pool *P, bytes *b, tg_tensor *y) {
    if (y && tg_numel(y) > POOL_NUMEL) return;
    if (P->n < POOL) P->t[P->n++] = y;
    else P->t[take(b) % POOL] = y;
}

static tg_tensor *pick(pool *P, bytes *b) {
    unsigned k = take(b);
    if (k == 255) return NULL; /* an invalid argument: NULL */
    return P->n ? P->t[k % (unsigned)P->n] : NULL;
}

/* Leaves made by tg_wrap read these arrays, malloc'd at their exact size so
 * that ASan reports any op reading past an input's end; freed after the
 * context. */
static void *wrapped[4];
static int n_wrapped;

static tg_tensor *leaf(tg_ctx *ctx, bytes *b, int param, int id) {
    unsigned k = take(b);
    tg_dtype dt = (k & 7) == 7 ? TG_I32 : (k & 1) ? TG_F64 : TG_F32;
    int ndim = (int)((k >> 3) % 5);
    int64_t shape[4];
    for (int i = 0; i < ndim; i++) shape[i] = take(b) % 6;
    tg_tensor *t;
    const int wrap = !param && (k & 0x40) && n_wrapped < 4;
    if (param) {
        char name[16];
        snprintf(name, sizeof name, "p%d", id);
        t = tg_param(ctx, name, dt, ndim, shape);
    } else if (wrap) {
        /* the caller's memory, read in place (sizes are 0 to 5: numel <= 625) */
        int64_t n = 1;
        for (int i = 0; i < ndim; i++) n *= shape[i];
        void *mem = malloc(n ? (size_t)n * tg_dtype_size(dt) : 1);
        if (!mem) abort();
        wrapped[n_wrapped++] = mem;
        t = tg_wrap(ctx, dt, ndim, shape, mem);
    } else {
        t = tg_new(ctx, dt, ndim, shape);
    }
    if (!t) {
        fuzz_check_error(ctx, param ? "tg_param" : wrap ? "tg_wrap" : "tg_new");
        tg_clear_error(ctx);
        return NULL;
    }
    int64_t n = tg_numel(t);
    for (int64_t i = 0; i < n; i++) {
        int v = (int)take(b) - 128;
        if (dt == TG_I32) ((int32_t *)tg_data(t))[i] = v % 4 < 0 ? -(v % 4) : v % 4;
        else if (dt == TG_F32) ((float *)tg_data(t))[i] = (float)v / 32;
        else ((double *)tg_data(t))[i] = (double)v / 32;
    }
    if (!param && dt != TG_I32 && (k & 0x80)) tg_set_requires_grad(t, 1);
    return t;
}

/* *finite is cleared when an argument is not finite (x^inf is 0 on (0,1),
 * and its slope inf * 0 is NaN, as in PyTorch: not an error) */
static tg_tensor *call_op(tg_ctx *ctx, const op_row *r, pool *P, bytes *b, int *finite) {
    switch (r->kind) {
    case K_UNARY: return ((f_unary)r->fn)(ctx, pick(P, b));
    case K_BINARY: {
        tg_tensor *x = pick(P, b);
        return ((f_binary)r->fn)(ctx, x, pick(P, b));
    }
    case K_SCALAR: {
        tg_tensor *x = pick(P, b);
        unsigned k = take(b);
        double s = k == 254 ? NAN : k == 253 ? INFINITY : (r->scalars ? r->scalars : any_args)[k & 7];
        if (!isfinite(s)) *finite = 0;
        return ((f_scalar)r->fn)(ctx, x, s);
    }
    case K_AXIS_KEEP: {
        tg_tensor *x = pick(P, b);
        unsigned k = take(b);
        return ((f_axis_keep)r->fn)(ctx, x, (int)(k % 11) - 5, (int)((k >> 4) & 1));
    }
    case K_RESHAPE: {
        tg_tensor *x = pick(P, b);
        unsigned k = take(b);
        int ndim = (int)(k % 6) - (k & 0x80 ? 1 : 0); /* -1 and 5: invalid */
        int64_t shape[5];
        int64_t n = x ? tg_numel(x) : 1;
        for (int i = 0; i < 5; i++) shape[i] = 1;
        if (ndim >= 1) shape[0] = (k & 0x40) ? (int64_t)take(b) % 7 - 1 : n; /* often valid */
        return ((f_reshape)r->fn)(ctx, x, ndim, shape);
    }
    case K_TERNARY: {
        tg_tensor *x = pick(P, b), *y = pick(P, b);
        return ((f_ternary)r->fn)(ctx, x, y, pick(P, b));
    }
    case K_CUSTOM: return ((f_custom)r->fn)(P, b, finite);
    case K_COUNT: break;
    }
    return NULL;
}

/* ---- the decoders of the second-round ops ---- */

/* a small integer argument: mostly from vals (valid ones first), sometimes
 * anything in [-2, 5] */
static int small(bytes *b, const int *vals, int n) {
    unsigned k = take(b);
    return k >= 224 ? (int)(k % 8) - 2 : vals[k % (unsigned)n];
}

static int axis_arg(bytes *b) { return (int)(take(b) % 11) - 5; }

/* an eps for the normalisations: valid ones, 0 (a constant row divides by
 * 0: a legitimate NaN, so gradients are not checked), then invalid ones */
static double eps_arg(bytes *b, int *finite) {
    static const double e[8] = {1e-5, 1e-3, 0.1, 1, 1e-5, 0, -1e-5, NAN};
    double v = e[take(b) & 7];
    if (!(v > 0)) *finite = 0;
    return v;
}

FZ(tg_permute) {
    (void)finite;
    tg_tensor *x = pick(P, b);
    unsigned k = take(b);
    int perm[4] = {0, 1, 2, 3}, nd = x ? tg_ndim(x) : 4;
    if (nd > 0 && (k & 1)) /* a rotation: valid */
        for (int i = 0; i < nd; i++) perm[i] = (i + (int)(k >> 1)) % nd;
    else if (nd > 0 && (k & 2)) /* a reversal: valid */
        for (int i = 0; i < nd; i++) perm[i] = nd - 1 - i;
    else /* anything in [-1, 4]: repeats and out of range */
        for (int i = 0; i < 4; i++) perm[i] = (int)(take(b) % 6) - 1;
    return tg_permute(P->ctx, x, (k & 0xf0) == 0xf0 ? NULL : perm);
}

FZ(tg_slice) {
    (void)finite;
    tg_tensor *x = pick(P, b);
    int axis = axis_arg(b);
    int64_t start = (int64_t)(take(b) % 9) - 2, end = (int64_t)(take(b) % 9) - 2;
    return tg_slice(P->ctx, x, axis, start, end);
}

FZ(tg_concat) {
    (void)finite;
    tg_tensor *xs[5];
    int n = (int)(take(b) % 6) - 1; /* -1 to 4; 0 and -1 invalid */
    for (int i = 0; i < 5; i++) xs[i] = pick(P, b);
    if (n > 1 && (take(b) & 1)) /* often the same tensor again: shapes agree */
        for (int i = 1; i < n; i++) xs[i] = xs[0];
    return tg_concat(P->ctx, take(b) == 255 ? NULL : xs, n, axis_arg(b));
}

FZ(tg_embedding) {
    (void)finite;
    tg_tensor *w = pick(P, b), *idx;
    unsigned k = take(b);
    if (k & 1) {
        idx = pick(P, b);
    } else { /* indices in [-2, 6]: out of range for small tables */
        int32_t v[6];
        int64_t n = (int64_t)(k >> 1) % 6;
        for (int64_t i = 0; i < n; i++) v[i] = (int32_t)(take(b) % 9) - 2;
        idx = tg_from(P->ctx, TG_I32, 1, &n, v);
        if (!idx) return NULL;
    }
    return tg_embedding(P->ctx, w, idx);
}

static const int strides[] = {1, 2, 1, 3}, pads[] = {0, 1, 0, 2}, kernels[] = {2, 1, 3, 2};

FZ(tg_conv2d) {
    (void)finite;
    tg_tensor *x = pick(P, b), *w = pick(P, b), *bias = take(b) & 1 ? pick(P, b) : NULL;
    int stride = small(b, strides, 4), padding = small(b, pads, 4);
    return tg_conv2d(P->ctx, x, w, bias, stride, padding);
}

FZ(tg_max_pool2d) {
    (void)finite;
    tg_tensor *x = pick(P, b);
    int kernel = small(b, kernels, 4);
    return tg_max_pool2d(P->ctx, x, kernel, small(b, strides, 4));
}

FZ(tg_avg_pool2d) {
    (void)finite;
    tg_tensor *x = pick(P, b);
    int kernel = small(b, kernels, 4);
    return tg_avg_pool2d(P->ctx, x, kernel, small(b, strides, 4));
}

FZ(tg_layer_norm) {
    tg_tensor *x = pick(P, b);
    unsigned k = take(b);
    tg_tensor *w = k & 1 ? pick(P, b) : NULL, *bias = k & 2 ? pick(P, b) : NULL;
    return tg_layer_norm(P->ctx, x, w, bias, eps_arg(b, finite));
}

static int bounded(const tg_tensor *t);

FZ(tg_batch_norm) {
    tg_tensor *x = pick(P, b);
    unsigned k = take(b);
    tg_tensor *rm = k & 1 ? pick(P, b) : NULL, *rv = k & 2 ? pick(P, b) : NULL;
    tg_tensor *w = k & 4 ? pick(P, b) : NULL, *bias = k & 8 ? pick(P, b) : NULL;
    static const double mom[4] = {0.1, 0, 1, -0.5};
    double eps = eps_arg(b, finite);
    tg_tensor *y = tg_batch_norm(P->ctx, x, rm, rv, w, bias, (k >> 4) & 1, mom[(k >> 5) & 3], eps);
    /* the running statistics are updated in place: still bounded? */
    if (rm && !bounded(rm)) *finite = 0;
    if (rv && !bounded(rv)) *finite = 0;
    return y;
}

FZ(tg_dropout) {
    (void)finite;
    static const double ps[8] = {0, 0.5, 0.1, 0.9, 1, -0.1, NAN, 1.5};
    tg_tensor *x = pick(P, b);
    unsigned k = take(b);
    return tg_dropout(P->ctx, x, ps[k & 7], (int)((k >> 3) & 1));
}

FZ(tg_lstm_cell) {
    (void)finite;
    tg_tensor *a[7];
    for (int i = 0; i < 7; i++) a[i] = pick(P, b);
    unsigned k = take(b);
    if (k & 1) a[5] = NULL;
    if (k & 2) a[6] = NULL;
    tg_tensor *c_new = NULL;
    tg_tensor *h = tg_lstm_cell(P->ctx, a[0], a[1], a[2], a[3], a[4], a[5], a[6],
                                (k & 0xfc) == 0xfc ? NULL : &c_new);
    if (h) pool_add(P, b, c_new);
    else if (c_new) abort(); /* a failing call leaves *c_out NULL */
    return h;
}

FZ(tg_gru_cell) {
    (void)finite;
    tg_tensor *a[6];
    for (int i = 0; i < 6; i++) a[i] = pick(P, b);
    unsigned k = take(b);
    return tg_gru_cell(P->ctx, a[0], a[1], a[2], a[3], k & 1 ? NULL : a[4], k & 2 ? NULL : a[5]);
}

FZ(tg_attention) {
    (void)finite;
    tg_tensor *q = pick(P, b), *k = pick(P, b), *v = pick(P, b);
    return tg_attention(P->ctx, q, k, v, (int)(take(b) & 1));
}

/* a layer's width: that of x's axis `ax` when x has it (valid), else 1 to 4 */
static int64_t width(bytes *b, const tg_tensor *x, int ax) {
    unsigned k = take(b);
    if (x && !(k & 0x80) && ax < tg_ndim(x) && tg_shape(x)[ax] > 0) return tg_shape(x)[ax];
    return (int64_t)(k % 5) - (k == 0x7f); /* 0 to 4, and -1 */
}

static tg_dtype dtype_arg(bytes *b, const tg_tensor *x) {
    unsigned k = take(b);
    if (k < 240 && x) return tg_dtype_of(x);
    return (tg_dtype)(k % 4);
}

FZ(tg_conv_forward) {
    (void)finite;
    tg_tensor *x = pick(P, b);
    int64_t in = width(b, x, 1), out = (int64_t)(take(b) % 4) + 1;
    int kernel = small(b, kernels, 4), stride = small(b, strides, 4), pad = small(b, pads, 4);
    tg_conv l;
    if (tg_conv_init(P->ctx, &l, NULL, in, out, kernel, stride, pad, (int)(take(b) & 1),
                     dtype_arg(b, x)) != 0)
        return NULL;
    return tg_conv_forward(P->ctx, &l, x);
}

FZ(tg_batchnorm_forward) {
    tg_tensor *x = pick(P, b);
    tg_batchnorm bn;
    if (tg_batchnorm_init(P->ctx, &bn, NULL, width(b, x, 1), dtype_arg(b, x)) != 0) return NULL;
    unsigned k = take(b);
    tg_train_mode(P->ctx, k & 1);
    if (k & 2) bn.eps = 0, *finite = 0;
    tg_tensor *y = tg_batchnorm_forward(P->ctx, &bn, x);
    tg_train_mode(P->ctx, 1);
    return y;
}

FZ(tg_embed_forward) {
    (void)finite;
    tg_tensor *idx = pick(P, b);
    tg_embed e;
    int64_t num = (int64_t)(take(b) % 6) - 1, dim = (int64_t)(take(b) % 4);
    if (tg_embed_init(P->ctx, &e, NULL, num, dim, dtype_arg(b, NULL)) != 0) return NULL;
    return tg_embed_forward(P->ctx, &e, idx);
}

/* h0, c0 [L,N,H]: often NULL */
static tg_tensor *state_arg(pool *P, bytes *b) {
    return take(b) & 1 ? pick(P, b) : NULL;
}

/* x from the pool and an LSTM (gru 0) or GRU m for it: hidden 0 to 3, 0 to 2
 * layers, bias or not from the byte *k (its bits 0x20 and up are the
 * caller's), the input width and the dtype from the next bytes. Returns the
 * init's result. */
static int rnn_layer(pool *P, bytes *b, tg_rnn *m, int gru, tg_tensor **x, unsigned *k) {
    *x = pick(P, b);
    *k = take(b);
    int64_t hidden = (int64_t)(*k % 4), in = width(b, *x, 2);
    int layers = (int)((*k >> 2) % 3), bias = (int)((*k >> 4) & 1);
    tg_dtype dt = dtype_arg(b, *x);
    return gru ? tg_gru_init(P->ctx, m, NULL, in, hidden, layers, bias, dt)
               : tg_lstm_init(P->ctx, m, NULL, in, hidden, layers, bias, dt);
}

FZ(tg_lstm_forward) {
    (void)finite;
    tg_lstm m;
    tg_tensor *x;
    unsigned k;
    if (rnn_layer(P, b, &m, 0, &x, &k) != 0) return NULL;
    tg_tensor *h0 = state_arg(P, b), *c0 = state_arg(P, b), *hn = NULL, *cn = NULL;
    tg_tensor *y = tg_lstm_forward(P->ctx, &m, x, h0, c0, (k & 0x20) ? &hn : NULL, &cn);
    if (y) {
        if (hn) pool_add(P, b, hn);
        pool_add(P, b, cn);
    } else if (hn || cn) {
        abort(); /* a failing call leaves *h_n, *c_n NULL */
    }
    return y;
}

FZ(tg_gru_forward) {
    (void)finite;
    tg_gru m;
    tg_tensor *x, *hn = NULL;
    unsigned k;
    if (rnn_layer(P, b, &m, 1, &x, &k) != 0) return NULL;
    tg_tensor *y = tg_gru_forward(P->ctx, &m, x, state_arg(P, b), &hn);
    if (y) pool_add(P, b, hn);
    else if (hn) abort();
    return y;
}

FZ(tg_transformer_block_forward) {
    (void)finite;
    tg_tensor *x = pick(P, b);
    tg_transformer_block blk;
    int64_t e = width(b, x, 2);
    unsigned k = take(b);
    int64_t heads = k & 1 ? 1 : k & 2 ? e : (int64_t)(k >> 2) % 4; /* 0 and non-divisors: invalid */
    int64_t ff = (int64_t)(k >> 4) % 5;
    if (tg_transformer_block_init(P->ctx, &blk, NULL, e, heads, ff, dtype_arg(b, x)) != 0)
        return NULL;
    return tg_transformer_block_forward(P->ctx, &blk, x, (int)(take(b) & 1));
}

static double tg_item_at(const tg_tensor *t, int64_t i) {
    return tg_dtype_of(t) == TG_F32 ? (double)((const float *)tg_data(t))[i]
                                    : ((const double *)tg_data(t))[i];
}

static double grad_at(const tg_tensor *t, int64_t i) {
    return tg_dtype_of(t) == TG_F32 ? (double)((const float *)tg_grad(t))[i]
                                    : ((const double *)tg_grad(t))[i];
}

/* The values of a graph whose gradients must be finite: finite, and 0 or of
 * magnitude in [1e-4, 1e4]. Then every local derivative of the table's ops is
 * below about 1e12 (a / b^2 at its worst), and 16 ops cannot reach f64's
 * 1e308: an infinite gradient is a bug, not an overflow the math asks for.
 * (In f32, whose range ends at 3e38, a legitimate overflow is reachable: the
 * fuzzer found exp(87.9) = 1.5e38 times a loss slope of 19; so the check is
 * made on f64 graphs.) */
static int bounded(const tg_tensor *t) {
    if (tg_dtype_of(t) == TG_I32) return 1;
    int64_t n = tg_numel(t);
    for (int64_t i = 0; i < n; i++) {
        double a = fabs(tg_item_at(t, i));
        if (!(a == 0 || (a >= 1e-4 && a <= 1e4))) return 0;
    }
    return 1;
}

static int all_finite(const tg_tensor *t, const void *p) {
    if (!p || tg_dtype_of(t) == TG_I32) return 1;
    int64_t n = tg_numel(t);
    for (int64_t i = 0; i < n; i++) {
        double v = tg_dtype_of(t) == TG_F32 ? (double)((const float *)p)[i] : ((const double *)p)[i];
        if (!isfinite(v)) return 0;
    }
    return 1;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    _Static_assert(K_COUNT == 7, "a new kind needs a case in call_op");
    if (strcmp(ops[N_FIRST_ROUND - 1].name, "tg_bce_with_logits") != 0) abort(); /* see N_FIRST_ROUND */
    bytes b = {data, size};
    pool P = {tg_ctx_new(1), {0}, 0};
    tg_ctx *ctx = P.ctx;
    unsigned mode = take(&b);
    if (mode & 1) tg_detect_anomaly(ctx, 1);
    tg_no_grad(ctx, (mode & 6) == 6);
    int n_leaves = 1 + (int)(mode >> 3) % 4;
    for (int i = 0; i < n_leaves; i++) {
        tg_tensor *t = leaf(ctx, &b, i & 1, i);
        if (t) P.t[P.n++] = t;
    }
    int finite = 1; /* every value so far is bounded (see bounded), every argument finite */
    for (int i = 0; i < P.n; i++) finite &= bounded(P.t[i]);
    for (int step = 0; step < 16 && b.n; step++) {
        const op_row *r = &ops[take(&b) % ((mode & 0x40) ? N_OPS : N_FIRST_ROUND)];
        int64_t tape = tg_tape_len(ctx);
        int args_finite = 1;
        tg_tensor *y = call_op(ctx, r, &P, &b, &args_finite);
        if (!y) {
            if (tg_ok(ctx)) abort(); /* NULL must come with an error */
            if (strncmp(tg_errmsg(ctx), "tg_detect_anomaly", 17) != 0) {
                if (r->alt && strncmp(tg_errmsg(ctx), "tg_", 3) == 0) {
                    /* a layer: its init failed (its parameters stay, as
                     * documented), or an op it called names itself */
                } else if (r->kind == K_CUSTOM && strncmp(tg_errmsg(ctx), "tg_from", 7) == 0) {
                    /* the decoder's own index tensor */
                } else {
                    fuzz_check_error(ctx, r->name);
                }
                if (tg_tape_len(ctx) != tape) abort(); /* a failing call records nothing */
            }
            tg_clear_error(ctx);
            continue;
        }
        if (!tg_ok(ctx)) abort();
        finite &= args_finite && bounded(y);
        pool_add(&P, &b, y);
    }
    /* the tape as a graph and the parameter table: a result or a named error */
    static FILE *sink;
    if (!sink && !(sink = fopen("/dev/null", "w"))) abort();
    if (tg_tape_dot(ctx, sink) != 0) fuzz_check_error(ctx, "tg_tape_dot");
    tg_clear_error(ctx);
    if (tg_summary(ctx, sink) != 0) fuzz_check_error(ctx, "tg_summary");
    tg_clear_error(ctx);
    /* backward from the sum of the last float result */
    tg_tensor *last = NULL;
    for (int i = P.n - 1; i >= 0 && !last; i--)
        if (tg_dtype_of(P.t[i]) != TG_I32) last = P.t[i];
    if (last) {
        tg_tensor *loss = tg_numel(last) == 1 ? last : tg_sum(ctx, last);
        if (loss) finite &= bounded(loss) && tg_dtype_of(loss) == TG_F64;
        if (loss && tg_requires_grad(loss)) {
            tg_backward(ctx, loss);
            if (!tg_ok(ctx)) {
                if (strncmp(tg_errmsg(ctx), "tg_detect_anomaly", 17) != 0)
                    fuzz_check_error(ctx, "tg_backward");
            } else if (finite) {
                for (int i = 0; i < P.n; i++)
                    if (!all_finite(P.t[i], tg_grad(P.t[i]))) {
                        fprintf(stderr, "non-finite gradient with finite values: tensor %d\n", i);
                        tg_tape_print(ctx, stderr);
                        for (int k = 0; k < P.n; k++) {
                            fprintf(stderr, "pool %d %s [%d-d, %lld] rg %d:", k,
                                    tg_dtype_name(tg_dtype_of(P.t[k])), tg_ndim(P.t[k]),
                                    (long long)tg_numel(P.t[k]), tg_requires_grad(P.t[k]));
                            for (int64_t e = 0; e < tg_numel(P.t[k]) && e < 8; e++)
                                if (tg_dtype_of(P.t[k]) != TG_I32)
                                    fprintf(stderr, " %g/%g", tg_item_at(P.t[k], e),
                                            tg_grad(P.t[k]) ? grad_at(P.t[k], e) : 0.0);
                            fprintf(stderr, "\n");
                        }
                        abort();
                    }
            }
        }
        tg_clear_error(ctx);
    }
    tg_reset(ctx);
    tg_ctx_free(ctx);
    while (n_wrapped) free(wrapped[--n_wrapped]);
    return 0;
}
