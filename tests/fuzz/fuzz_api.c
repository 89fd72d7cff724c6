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
 * row, plus a kind (one case in call_op) if its signature is new. */
#include <math.h>

#include "fuzz_common.h"

typedef struct {
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
    K_COUNT
};

typedef tg_tensor *(*f_unary)(tg_ctx *, tg_tensor *);
typedef tg_tensor *(*f_binary)(tg_ctx *, tg_tensor *, tg_tensor *);
typedef tg_tensor *(*f_scalar)(tg_ctx *, tg_tensor *, double);
typedef tg_tensor *(*f_axis_keep)(tg_ctx *, tg_tensor *, int, int);
typedef tg_tensor *(*f_reshape)(tg_ctx *, tg_tensor *, int, const int64_t *);
typedef tg_tensor *(*f_ternary)(tg_ctx *, tg_tensor *, tg_tensor *, tg_tensor *);

typedef struct {
    const char *name;
    enum kind kind;
    void (*fn)(void);
    const double *scalars; /* K_SCALAR: values to pick from (NULL: the default table) */
} op_row;

#define ROW(f, k) {#f, k, (void (*)(void))f, NULL}
#define ROW_S(f, vals) {#f, K_SCALAR, (void (*)(void))f, vals}

/* arguments that keep finite inputs finite where the math allows: no
 * fractional powers (x^0.5 has an infinite slope at 0) */
static const double pow_args[] = {2, 3, 1, 0, -1, -2, 4, 2};
static const double any_args[] = {0, 1, -1, 0.5, 2, -3, 1e-3, 10};

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
    /* new families add their rows here (conv, norm, rnn, attention, index) */
};
#define N_OPS (sizeof ops / sizeof *ops)

#define POOL 24

typedef struct {
    tg_ctx *ctx;
    tg_tensor *t[POOL];
    int n;
} pool;

static tg_tensor *pick(pool *P, bytes *b) {
    unsigned k = take(b);
    if (k == 255) return NULL; /* an invalid argument: NULL */
    return P->n ? P->t[k % (unsigned)P->n] : NULL;
}

static tg_tensor *leaf(tg_ctx *ctx, bytes *b, int param, int id) {
    unsigned k = take(b);
    tg_dtype dt = (k & 7) == 7 ? TG_I32 : (k & 1) ? TG_F64 : TG_F32;
    int ndim = (int)((k >> 3) % 5);
    int64_t shape[4];
    for (int i = 0; i < ndim; i++) shape[i] = take(b) % 6;
    tg_tensor *t;
    if (param) {
        char name[16];
        snprintf(name, sizeof name, "p%d", id);
        t = tg_param(ctx, name, dt, ndim, shape);
    } else {
        t = tg_new(ctx, dt, ndim, shape);
    }
    if (!t) {
        fuzz_check_error(ctx, param ? "tg_param" : "tg_new");
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
    case K_COUNT: break;
    }
    return NULL;
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
    _Static_assert(K_COUNT == 6, "a new kind needs a case in call_op");
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
        const op_row *r = &ops[take(&b) % N_OPS];
        int64_t tape = tg_tape_len(ctx);
        int args_finite = 1;
        tg_tensor *y = call_op(ctx, r, &P, &b, &args_finite);
        if (!y) {
            if (tg_ok(ctx)) abort(); /* NULL must come with an error */
            if (strncmp(tg_errmsg(ctx), "tg_detect_anomaly", 17) != 0) {
                fuzz_check_error(ctx, r->name);
                if (tg_tape_len(ctx) != tape) abort(); /* a failing call records nothing */
            }
            tg_clear_error(ctx);
            continue;
        }
        if (!tg_ok(ctx)) abort();
        finite &= args_finite && bounded(y);
        if (P.n < POOL) P.t[P.n++] = y;
        else P.t[take(&b) % POOL] = y;
    }
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
    return 0;
}
