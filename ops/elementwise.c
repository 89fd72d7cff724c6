/* ops/elementwise.c: elementwise ops, binary ones with NumPy broadcasting.
 *
 *   binary (broadcasting): tg_add, tg_sub, tg_mul, tg_div
 *   unary:                 tg_scale, tg_neg, tg_exp, tg_log, tg_pow,
 *                          tg_identity, tg_step
 *
 * Every op reads top to bottom: public function (checks, output, record,
 * forward), forward kernel, backward kernel. Kernels are written once for
 * float and double (TGI_FLOAT_DISPATCH + <tgmath.h>). Local gradients and
 * numerical notes: docs/ops-elementwise.md.
 *
 * Broadcasting. The output of a binary op has the broadcast shape of a and b
 * (tgi_bcast_init). Forward reads a[ia] and b[ib] for every output element i,
 * where ia/ib come from element strides that are 0 on broadcast axes. Backward
 * is the transpose of that gather: it ADDS d loss/d y[i] (times the local
 * derivative) into da[ia] and db[ib], so an input element that fed k output
 * elements receives the sum of their k contributions: the reduction over the
 * broadcast axes. Both directions share one iterator (struct bshape below):
 * axes of size 1 are dropped and adjacent axes merged where both inputs are
 * contiguous across them, so the common cases collapse to one flat loop:
 *   same shapes            -> 1 row of numel, strides (1,1)
 *   a [m,n] with scalar b  -> 1 row of numel, strides (1,0)
 *   a [m,n] with row b [n] -> m rows of n,    strides (1,1), b's row stride 0
 *   a [m,1] with b [1,n]   -> m rows of n,    strides (0,1)
 * and the innermost loop is instantiated with literal strides 0/1 so gcc can
 * vectorise it; a stride-0 target in backward is reduced in a local double.
 *
 * Fast path. The two commonest cases, inputs of one shape and a one-element
 * operand (a scalar), skip the broadcast layout altogether: the public
 * function classifies the pair (binary_kind), the node keeps the kind
 * (attribute i[0]), and forward and backward run the same row kernels over
 * the flat arrays directly. Results are the same bits as through the
 * general iterator, which collapses these cases to the same single row.
 *
 * Threads. Elementwise loops over large tensors (tgi_threads_for) are split
 * into contiguous chunks, one per thread (TGI_PAR_CHUNKS); element i depends only
 * on element i of the inputs, so the result is the same whatever the thread
 * count. Reductions (a broadcast target in backward) stay in one thread, in
 * order. exp and log use the vector kernels of src/kernels/vmath.h.
 */
#include <tgmath.h>

#include "internal.h"
#include "vmath.h"

/* ======================================================================== */
/* Shared helpers                                                           */
/* ======================================================================== */

/* Checks for a unary op on floats: x non-NULL, of this ctx, f32 or f64. */
static int check_unary(tg_ctx *ctx, const char *fn, const tg_tensor *x)
{
    return tgi_check_arg(ctx, fn, "x", x) && tgi_check_float(ctx, fn, "x", x);
}

/* Checks for a binary op: both non-NULL, floats of one dtype. (Whether the
 * shapes broadcast is checked by tgi_bcast_init, on the general path only.)
 * Returns 1 if usable. */
static int check_binary(tg_ctx *ctx, const char *fn, const tg_tensor *a, const tg_tensor *b)
{
    if (!tgi_check_arg(ctx, fn, "a", a) || !tgi_check_arg(ctx, fn, "b", b))
        return 0;
    if (!tgi_check_float(ctx, fn, "a", a) || !tgi_check_float(ctx, fn, "b", b))
        return 0;
    return tgi_check_same_dtype(ctx, fn, a, b);
}


/* The vector exp and log of src/kernels/vmath.h for the element type T of
 * TGI_FLOAT_DISPATCH, picked by the type of the output pointer. */
#define V_EXP(y, x, n) _Generic((y), float *: tgi_vexp_f32, double *: tgi_vexp_f64)(y, x, n)
#define V_LOG(y, x, n) _Generic((y), float *: tgi_vlog_f32, double *: tgi_vlog_f64)(y, x, n)

/* How a binary op's operands pair up (node attribute i[0]). */
enum {
    BIN_GENERAL,  /* any other broadcast: the bshape iterator */
    BIN_SAME,     /* a and b of one shape: y[i] = f(a[i], b[i]) */
    BIN_B_SCALAR, /* b has one element and no more axes than a: y has a's shape */
    BIN_A_SCALAR, /* a has one element and no more axes than b: y has b's shape */
};
/* The kind in which input SIDE (a or b) is the broadcast scalar. */
#define BIN_SCALAR_a BIN_A_SCALAR
#define BIN_SCALAR_b BIN_B_SCALAR

static int binary_kind(const tg_tensor *a, const tg_tensor *b)
{
    if (a->ndim == b->ndim && a->numel == b->numel) {
        int same = 1;
        for (int k = 0; k < a->ndim; k++)
            same &= a->shape[k] == b->shape[k];
        if (same)
            return BIN_SAME;
    }
    if (b->numel == 1 && b->ndim <= a->ndim)
        return BIN_B_SCALAR;
    if (a->numel == 1 && a->ndim <= b->ndim)
        return BIN_A_SCALAR;
    return BIN_GENERAL;
}

/* Record the node (when a gradient is needed). Returns 0 when the tape could
 * not grow (error recorded), else 1; *node is the node or NULL. */
static int record(tg_ctx *ctx, const tg_op *op, tg_tensor *out, tg_tensor *const *in, int n,
                  tg_op_call **node)
{
    *node = tgi_record(ctx, op, out, in, n);
    return *node != NULL || !tgi_should_record(ctx, in, n);
}

/* The broadcast iteration space, padded to 4 axes: n[] the output's sizes,
 * sa[]/sb[] the element strides of a and b (0 on broadcast axes). Axes of
 * size 1 are dropped and mergeable neighbours merged (see the file comment). */
typedef struct {
    int64_t n[4], sa[4], sb[4];
} bshape;

static void bshape_init(const tgi_bcast *bc, bshape *s)
{
    int64_t n[4], sa[4], sb[4];
    int m = 0;
    for (int k = 0; k < bc->ndim; k++) {
        const int64_t nk = bc->shape[k];
        if (nk == 1)
            continue; /* one index: strides irrelevant */
        if (m > 0 && sa[m - 1] == bc->sa[k] * nk && sb[m - 1] == bc->sb[k] * nk) {
            n[m - 1] *= nk; /* contiguous (or broadcast) across both axes: merge */
            sa[m - 1] = bc->sa[k];
            sb[m - 1] = bc->sb[k];
        } else {
            n[m] = nk;
            sa[m] = bc->sa[k];
            sb[m] = bc->sb[k];
            m++;
        }
    }
    const int pad = 4 - m;
    for (int k = 0; k < 4; k++) {
        s->n[k] = k < pad ? 1 : n[k - pad];
        s->sa[k] = k < pad ? 0 : sa[k - pad];
        s->sb[k] = k < pad ? 0 : sb[k - pad];
    }
}

/* Loop over the rows (all axes but the last) of a bshape `s`, setting
 *   oo: offset of the row in the output, oa/ob: offsets of its a/b elements,
 *   n3: row length;
 * then run the body. */
#define BCAST_ROWS(s, ...)                                                             \
    do {                                                                               \
        const int64_t n3 = (s).n[3];                                                   \
        for (int64_t i0 = 0; i0 < (s).n[0]; i0++)                                      \
            for (int64_t i1 = 0; i1 < (s).n[1]; i1++)                                  \
                for (int64_t i2 = 0; i2 < (s).n[2]; i2++) {                            \
                    const int64_t oo = ((i0 * (s).n[1] + i1) * (s).n[2] + i2) * n3;    \
                    const int64_t oa = i0 * (s).sa[0] + i1 * (s).sa[1] + i2 * (s).sa[2]; \
                    const int64_t ob = i0 * (s).sb[0] + i1 * (s).sb[1] + i2 * (s).sb[2]; \
                    __VA_ARGS__                                                        \
                }                                                                      \
    } while (0)

/* Instantiate ROW(SA, SB) with literal inner strides when they are 0 or 1
 * (the only values contiguous inputs produce), else with the runtime ones. */
#define BCAST_INNER(s, ROW)                                                            \
    do {                                                                               \
        const int64_t sa3_ = (s).sa[3], sb3_ = (s).sb[3];                              \
        if (sa3_ == 1 && sb3_ == 1)                                                    \
            ROW(1, 1);                                                                 \
        else if (sa3_ == 1 && sb3_ == 0)                                               \
            ROW(1, 0);                                                                 \
        else if (sa3_ == 0 && sb3_ == 1)                                               \
            ROW(0, 1);                                                                 \
        else if (sa3_ == 0 && sb3_ == 0)                                               \
            ROW(0, 0);                                                                 \
        else                                                                           \
            ROW(sa3_, sb3_);                                                           \
    } while (0)

/* Forward of a broadcasting binary op, inside TGI_FLOAT_DISPATCH:
 * y[i] = the op's expression of u = a[ia], v = b[ib], through the row kernel
 * FWD_ROW_<OP>. */
#define BCAST_FORWARD(bc, out, a, b, OP)                                               \
    do {                                                                               \
        bshape s_;                                                                     \
        bshape_init(&(bc), &s_);                                                       \
        T *restrict py = (T *)(out)->data;                                             \
        const T *restrict pa = (const T *)(a)->data;                                   \
        const T *restrict pb = (const T *)(b)->data;                                   \
        if ((out)->numel == 0)                                                         \
            break;                                                                     \
        BCAST_ROWS(s_, {                                                               \
            T *restrict yr = py + oo;                                                  \
            const T *restrict ar = pa + oa;                                            \
            const T *restrict br = pb + ob;                                            \
            BCAST_INNER(s_, FWD_ROW_##OP);                                             \
        });                                                                            \
    } while (0)

/* Backward of a broadcasting binary op for one input, inside
 * TGI_FLOAT_DISPATCH: d[it] += the op's local term for every output element
 * i, through the row kernel BWD_ROW_<SIDE>_<OP>, which sees g = dy[i],
 * u = a[ia], v = b[ib], w = y[i]; `it` is ia (SIDE a) or ib (SIDE b). */
#define BCAST_BACKWARD(bc, call, d, SIDE, OP)                                          \
    do {                                                                               \
        bshape s_;                                                                     \
        bshape_init(&(bc), &s_);                                                       \
        const T *restrict dy = (const T *)tg_grad((call)->out);                        \
        const T *restrict py = (const T *)(call)->out->data;                           \
        const T *restrict pa = (const T *)(call)->in[0]->data;                         \
        const T *restrict pb = (const T *)(call)->in[1]->data;                         \
        T *restrict pd = (d);                                                          \
        if (!pd || !dy || (call)->out->numel == 0)                                     \
            break;                                                                     \
        BCAST_ROWS(s_, {                                                               \
            const T *restrict gr = dy + oo;                                            \
            const T *restrict yr = py + oo;                                            \
            const T *restrict ar = pa + oa;                                            \
            const T *restrict br = pb + ob;                                            \
            T *restrict dr = pd + o##SIDE;                                             \
            BCAST_INNER(s_, BWD_ROW_##SIDE##_##OP);                                    \
        });                                                                            \
    } while (0)

/* The row kernels; n3 is the row length. Each binary op defines
 * FWD_ROW_<OP>(SA,SB) and BWD_ROW_<side>_<OP>(SA,SB) from these. SA, SB are
 * the inner strides of a and b, ST the target's (SA or SB). A row along which
 * the target is broadcast (ST = 0) is summed in a double and added once. */
#define FWD_ROW(SA, SB, EXPR)                                                          \
    do {                                                                               \
        for (int64_t j = 0; j < n3; j++) {                                             \
            const T u = ar[j * (SA)], v = br[j * (SB)];                                \
            yr[j] = (EXPR);                                                            \
        }                                                                              \
    } while (0)

#define BWD_ROW(SA, SB, ST, EXPR)                                                      \
    do {                                                                               \
        if ((ST) == 0) {                                                               \
            double acc_ = 0;                                                           \
            for (int64_t j = 0; j < n3; j++) {                                         \
                const T g = gr[j], w = yr[j], u = ar[j * (SA)], v = br[j * (SB)];      \
                (void)g, (void)w, (void)u, (void)v;                                    \
                acc_ += (EXPR);                                                        \
            }                                                                          \
            dr[0] += (T)acc_;                                                          \
        } else {                                                                       \
            for (int64_t j = 0; j < n3; j++) {                                         \
                const T g = gr[j], w = yr[j], u = ar[j * (SA)], v = br[j * (SB)];      \
                (void)g, (void)w, (void)u, (void)v;                                    \
                dr[j * (ST)] += (EXPR);                                                \
            }                                                                          \
        }                                                                              \
    } while (0)

/* Forward on the fast path (kind BIN_SAME, BIN_B_SCALAR or BIN_A_SCALAR),
 * inside TGI_FLOAT_DISPATCH: the row kernel FWD_ROW_<OP> over chunks of the
 * flat output, with a scalar operand's stride 0. */
#define FAST_FORWARD(kind, out, a, b, OP)                                              \
    do {                                                                               \
        T *restrict py = (T *)(out)->data;                                             \
        const T *restrict pa = (const T *)(a)->data;                                   \
        const T *restrict pb = (const T *)(b)->data;                                   \
        TGI_PAR_CHUNKS((out)->ctx, (out)->numel, lo, hi, {                                 \
            const int64_t n3 = hi - lo;                                                \
            T *restrict yr = py + lo;                                                  \
            if ((kind) == BIN_SAME) {                                                  \
                const T *restrict ar = pa + lo, *restrict br = pb + lo;                \
                FWD_ROW_##OP(1, 1);                                                    \
            } else if ((kind) == BIN_B_SCALAR) {                                       \
                const T *restrict ar = pa + lo, *restrict br = pb;                     \
                FWD_ROW_##OP(1, 0);                                                    \
            } else {                                                                   \
                const T *restrict ar = pa, *restrict br = pb + lo;                     \
                FWD_ROW_##OP(0, 1);                                                    \
            }                                                                          \
        });                                                                            \
    } while (0)

/* Backward on the fast path for input SIDE, inside TGI_FLOAT_DISPATCH: the
 * row kernel BWD_ROW_<SIDE>_<OP>. When SIDE is the scalar operand its
 * gradient is a sum over every output element: one row, in order, in one
 * thread (the same bits as the general path); else elementwise chunks. */
#define FAST_BACKWARD(kind, call, d, SIDE, OP)                                         \
    do {                                                                               \
        const T *restrict dy = (const T *)tg_grad((call)->out);                        \
        const T *restrict py = (const T *)(call)->out->data;                           \
        const T *restrict pa = (const T *)(call)->in[0]->data;                         \
        const T *restrict pb = (const T *)(call)->in[1]->data;                         \
        T *restrict pd = (d);                                                          \
        const int64_t n_all = (call)->out->numel;                                      \
        if (!pd || !dy || n_all == 0)                                                  \
            break;                                                                     \
        if ((kind) == BIN_SCALAR_##SIDE) {                                             \
            const int64_t n3 = n_all;                                                  \
            const T *restrict gr = dy, *restrict yr = py, *restrict ar = pa,           \
                            *restrict br = pb;                                         \
            T *restrict dr = pd;                                                       \
            if ((kind) == BIN_A_SCALAR)                                                \
                BWD_ROW_##SIDE##_##OP(0, 1);                                           \
            else                                                                       \
                BWD_ROW_##SIDE##_##OP(1, 0);                                           \
            break;                                                                     \
        }                                                                              \
        TGI_PAR_CHUNKS((call)->ctx, n_all, lo, hi, {                                       \
            const int64_t n3 = hi - lo;                                                \
            const T *restrict gr = dy + lo, *restrict yr = py + lo;                    \
            T *restrict dr = pd + lo;                                                  \
            if ((kind) == BIN_SAME) {                                                  \
                const T *restrict ar = pa + lo, *restrict br = pb + lo;                \
                BWD_ROW_##SIDE##_##OP(1, 1);                                           \
            } else if ((kind) == BIN_B_SCALAR) {                                       \
                const T *restrict ar = pa + lo, *restrict br = pb;                     \
                BWD_ROW_##SIDE##_##OP(1, 0);                                           \
            } else {                                                                   \
                const T *restrict ar = pa, *restrict br = pb + lo;                     \
                BWD_ROW_##SIDE##_##OP(0, 1);                                           \
            }                                                                          \
        });                                                                            \
    } while (0)

/* A binary op's forward and backward kernels: the fast path or the general
 * broadcast (bc, which backward recomputes only for BIN_GENERAL nodes). */
#define BINARY_FORWARD(bc, kind, out, a, b, OP)                                        \
    do {                                                                               \
        if ((kind) == BIN_GENERAL)                                                     \
            BCAST_FORWARD(*(bc), out, a, b, OP);                                       \
        else                                                                           \
            FAST_FORWARD(kind, out, a, b, OP);                                         \
    } while (0)
#define BINARY_BACKWARD(bc, kind, call, d, SIDE, OP)                                   \
    do {                                                                               \
        if ((kind) == BIN_GENERAL)                                                     \
            BCAST_BACKWARD(bc, call, d, SIDE, OP);                                     \
        else                                                                           \
            FAST_BACKWARD(kind, call, d, SIDE, OP);                                    \
    } while (0)

typedef void (*binary_fwd)(const tgi_bcast *bc, int kind, tg_tensor *y, const tg_tensor *a,
                           const tg_tensor *b);

/* Common body of the four binary public functions: checks, the pairing of
 * a and b (binary_kind; the broadcast layout only when no fast path fits,
 * which also checks that the shapes broadcast), output, record (the kind in
 * the node), forward. */
static tg_tensor *binary_op(tg_ctx *ctx, const char *fn, const tg_op *op, tg_tensor *a,
                            tg_tensor *b, binary_fwd forward)
{
    if (!ctx || !check_binary(ctx, fn, a, b))
        return NULL;
    const int kind = binary_kind(a, b);
    tgi_bcast bc;
    tg_tensor *out;
    if (kind == BIN_GENERAL) {
        if (tgi_bcast_init(ctx, fn, a, b, &bc) != 0)
            return NULL;
        out = tgi_tensor_new(ctx, fn, a->dtype, bc.ndim, bc.shape, 0);
    } else {
        const tg_tensor *like = kind == BIN_A_SCALAR ? b : a; /* y has its shape */
        out = tgi_tensor_new(ctx, fn, a->dtype, like->ndim, like->shape, 0);
    }
    if (!out)
        return NULL;
    tg_tensor *in[2] = {a, b};
    tg_op_call *c;
    if (!record(ctx, op, out, in, 2, &c))
        return NULL;
    if (c)
        tgi_node_attr(c)->i[0] = kind;
    forward(kind == BIN_GENERAL ? &bc : NULL, kind, out, a, b);
    return out;
}

/* The kind of a recorded binary node, and for BIN_GENERAL its broadcast
 * layout, recomputed (it cannot fail: it succeeded when the node was
 * recorded). */
static int node_kind(tg_op_call *c, tgi_bcast *bc)
{
    const int kind = (int)tgi_node_attr(c)->i[0];
    if (kind == BIN_GENERAL)
        tgi_bcast_init(c->ctx, c->op->name, c->in[0], c->in[1], bc);
    return kind;
}

/* ======================================================================== */
/* tg_add                                                                   */
/* ======================================================================== */

/* y = a + b, broadcast shape. da = dy, db = dy, each summed over the axes its
 * input was broadcast along. Saves nothing. */
static void add_forward(const tgi_bcast *bc, int kind, tg_tensor *y, const tg_tensor *a,
                        const tg_tensor *b);
static void add_backward(tg_op_call *c);
static const tg_op op_add = {"add", NULL, add_backward};

tg_tensor *tg_add(tg_ctx *ctx, tg_tensor *a, tg_tensor *b)
{
    return binary_op(ctx, "tg_add", &op_add, a, b, add_forward);
}

#define FWD_ROW_ADD(SA, SB) FWD_ROW(SA, SB, u + v)
static void add_forward(const tgi_bcast *bc, int kind, tg_tensor *y, const tg_tensor *a,
                        const tg_tensor *b)
{
    TGI_FLOAT_DISPATCH(y->dtype, { BINARY_FORWARD(bc, kind, y, a, b, ADD); });
}

/* d(a+b)/da = 1, d(a+b)/db = 1 */
#define BWD_ROW_a_ADD(SA, SB) BWD_ROW(SA, SB, SA, g)
#define BWD_ROW_b_ADD(SA, SB) BWD_ROW(SA, SB, SB, g)
static void add_backward(tg_op_call *c)
{
    tgi_bcast bc;
    const int kind = node_kind(c, &bc);
    TGI_FLOAT_DISPATCH(c->out->dtype, {
        if (tgi_needs_grad(c->in[0]))
            BINARY_BACKWARD(bc, kind, c, (T *)tg_grad_acc(c->in[0]), a, ADD);
        if (tgi_needs_grad(c->in[1]))
            BINARY_BACKWARD(bc, kind, c, (T *)tg_grad_acc(c->in[1]), b, ADD);
    });
}

/* ======================================================================== */
/* tg_sub                                                                   */
/* ======================================================================== */

/* y = a - b, broadcast shape. da = dy, db = -dy, each summed over the axes
 * its input was broadcast along. Saves nothing. */
static void sub_forward(const tgi_bcast *bc, int kind, tg_tensor *y, const tg_tensor *a,
                        const tg_tensor *b);
static void sub_backward(tg_op_call *c);
static const tg_op op_sub = {"sub", NULL, sub_backward};

tg_tensor *tg_sub(tg_ctx *ctx, tg_tensor *a, tg_tensor *b)
{
    return binary_op(ctx, "tg_sub", &op_sub, a, b, sub_forward);
}

#define FWD_ROW_SUB(SA, SB) FWD_ROW(SA, SB, u - v)
static void sub_forward(const tgi_bcast *bc, int kind, tg_tensor *y, const tg_tensor *a,
                        const tg_tensor *b)
{
    TGI_FLOAT_DISPATCH(y->dtype, { BINARY_FORWARD(bc, kind, y, a, b, SUB); });
}

/* d(a-b)/da = 1, d(a-b)/db = -1 */
#define BWD_ROW_a_SUB(SA, SB) BWD_ROW(SA, SB, SA, g)
#define BWD_ROW_b_SUB(SA, SB) BWD_ROW(SA, SB, SB, -g)
static void sub_backward(tg_op_call *c)
{
    tgi_bcast bc;
    const int kind = node_kind(c, &bc);
    TGI_FLOAT_DISPATCH(c->out->dtype, {
        if (tgi_needs_grad(c->in[0]))
            BINARY_BACKWARD(bc, kind, c, (T *)tg_grad_acc(c->in[0]), a, SUB);
        if (tgi_needs_grad(c->in[1]))
            BINARY_BACKWARD(bc, kind, c, (T *)tg_grad_acc(c->in[1]), b, SUB);
    });
}

/* ======================================================================== */
/* tg_mul                                                                   */
/* ======================================================================== */

/* y = a * b, broadcast shape. da = dy * b, db = dy * a, each summed over the
 * axes its input was broadcast along. Saves nothing (reads a and b). */
static void mul_forward(const tgi_bcast *bc, int kind, tg_tensor *y, const tg_tensor *a,
                        const tg_tensor *b);
static void mul_backward(tg_op_call *c);
static const tg_op op_mul = {"mul", NULL, mul_backward};

tg_tensor *tg_mul(tg_ctx *ctx, tg_tensor *a, tg_tensor *b)
{
    return binary_op(ctx, "tg_mul", &op_mul, a, b, mul_forward);
}

#define FWD_ROW_MUL(SA, SB) FWD_ROW(SA, SB, u * v)
static void mul_forward(const tgi_bcast *bc, int kind, tg_tensor *y, const tg_tensor *a,
                        const tg_tensor *b)
{
    TGI_FLOAT_DISPATCH(y->dtype, { BINARY_FORWARD(bc, kind, y, a, b, MUL); });
}

/* d(ab)/da = b, d(ab)/db = a */
#define BWD_ROW_a_MUL(SA, SB) BWD_ROW(SA, SB, SA, g * v)
#define BWD_ROW_b_MUL(SA, SB) BWD_ROW(SA, SB, SB, g * u)
static void mul_backward(tg_op_call *c)
{
    tgi_bcast bc;
    const int kind = node_kind(c, &bc);
    TGI_FLOAT_DISPATCH(c->out->dtype, {
        if (tgi_needs_grad(c->in[0]))
            BINARY_BACKWARD(bc, kind, c, (T *)tg_grad_acc(c->in[0]), a, MUL);
        if (tgi_needs_grad(c->in[1]))
            BINARY_BACKWARD(bc, kind, c, (T *)tg_grad_acc(c->in[1]), b, MUL);
    });
}

/* ======================================================================== */
/* tg_div                                                                   */
/* ======================================================================== */

/* y = a / b, broadcast shape. da = dy / b, db = -dy * a / b^2 = -dy * y / b
 * (computed as (dy * y) / b, which does not overflow through b^2 for small
 * b), each summed over the axes its input was broadcast along. Saves nothing
 * (reads b and the output y). b = 0 gives inf/NaN as in C. */
static void div_forward(const tgi_bcast *bc, int kind, tg_tensor *y, const tg_tensor *a,
                        const tg_tensor *b);
static void div_backward(tg_op_call *c);
static const tg_op op_div = {"div", NULL, div_backward};

tg_tensor *tg_div(tg_ctx *ctx, tg_tensor *a, tg_tensor *b)
{
    return binary_op(ctx, "tg_div", &op_div, a, b, div_forward);
}

#define FWD_ROW_DIV(SA, SB) FWD_ROW(SA, SB, u / v)
static void div_forward(const tgi_bcast *bc, int kind, tg_tensor *y, const tg_tensor *a,
                        const tg_tensor *b)
{
    TGI_FLOAT_DISPATCH(y->dtype, { BINARY_FORWARD(bc, kind, y, a, b, DIV); });
}

/* d(a/b)/da = 1/b, d(a/b)/db = -a/b^2 = -y/b */
#define BWD_ROW_a_DIV(SA, SB) BWD_ROW(SA, SB, SA, g / v)
#define BWD_ROW_b_DIV(SA, SB) BWD_ROW(SA, SB, SB, -(g * w) / v)
static void div_backward(tg_op_call *c)
{
    tgi_bcast bc;
    const int kind = node_kind(c, &bc);
    TGI_FLOAT_DISPATCH(c->out->dtype, {
        if (tgi_needs_grad(c->in[0]))
            BINARY_BACKWARD(bc, kind, c, (T *)tg_grad_acc(c->in[0]), a, DIV);
        if (tgi_needs_grad(c->in[1]))
            BINARY_BACKWARD(bc, kind, c, (T *)tg_grad_acc(c->in[1]), b, DIV);
    });
}

/* ======================================================================== */
/* Unary ops                                                                */
/* ======================================================================== */

/* Common body of the unary public functions: checks, output of x's shape,
 * record (storing attr in the node), forward. */
static tg_tensor *unary_op(tg_ctx *ctx, const char *fn, const tg_op *op, tg_tensor *x,
                           const tgi_attr *attr,
                           void (*forward)(tg_tensor *, const tg_tensor *, const tgi_attr *))
{
    if (!ctx || !check_unary(ctx, fn, x))
        return NULL;
    tg_tensor *out = tgi_tensor_new(ctx, fn, x->dtype, x->ndim, x->shape, 0);
    if (!out)
        return NULL;
    tg_op_call *c;
    if (!record(ctx, op, out, &x, 1, &c))
        return NULL;
    if (c && attr)
        *tgi_node_attr(c) = *attr;
    forward(out, x, attr);
    return out;
}

/* Loop y[i] = EXPR(x[i]) (u = x[i]) inside TGI_FLOAT_DISPATCH. */
#define UNARY_FORWARD(y, x, EXPR)                                                      \
    do {                                                                               \
        T *restrict py = (T *)(y)->data;                                               \
        const T *restrict px = (const T *)(x)->data;                                   \
        TGI_PAR_CHUNKS((y)->ctx, (y)->numel, lo, hi, {                                     \
            for (int64_t i = lo; i < hi; i++) {                                        \
                const T u = px[i];                                                     \
                (void)u;                                                               \
                py[i] = (EXPR);                                                        \
            }                                                                          \
        });                                                                            \
    } while (0)

/* Loop dx[i] += EXPR (g = dy[i], u = x[i], w = y[i]) inside
 * TGI_FLOAT_DISPATCH, when the input needs a gradient. */
#define UNARY_BACKWARD(c, EXPR)                                                        \
    do {                                                                               \
        if (!tgi_needs_grad((c)->in[0]))                                               \
            break;                                                                     \
        T *restrict dx = (T *)tg_grad_acc((c)->in[0]);                                 \
        const T *restrict dy = (const T *)tg_grad((c)->out);                           \
        const T *restrict px = (const T *)(c)->in[0]->data;                            \
        const T *restrict py = (const T *)(c)->out->data;                              \
        if (!dx || !dy)                                                                \
            break;                                                                     \
        TGI_PAR_CHUNKS((c)->ctx, (c)->out->numel, lo, hi, {                                \
            for (int64_t i = lo; i < hi; i++) {                                        \
                const T g = dy[i], u = px[i], w = py[i];                               \
                (void)g, (void)u, (void)w;                                             \
                dx[i] += (EXPR);                                                       \
            }                                                                          \
        });                                                                            \
    } while (0)

/* ======================================================================== */
/* tg_scale                                                                 */
/* ======================================================================== */

/* y = s x, x's shape. dx = s dy. Saves s (node attribute f[0]). */
static void scale_forward(tg_tensor *y, const tg_tensor *x, const tgi_attr *at);
static void scale_backward(tg_op_call *c);
static const tg_op op_scale = {"scale", NULL, scale_backward};

tg_tensor *tg_scale(tg_ctx *ctx, tg_tensor *x, double s)
{
    const tgi_attr at = {.f = {s}};
    return unary_op(ctx, "tg_scale", &op_scale, x, &at, scale_forward);
}

static void scale_forward(tg_tensor *y, const tg_tensor *x, const tgi_attr *at)
{
    TGI_FLOAT_DISPATCH(y->dtype, {
        const T s = (T)at->f[0];
        UNARY_FORWARD(y, x, s * u);
    });
}

/* d(s x)/dx = s */
static void scale_backward(tg_op_call *c)
{
    const double s_ = tgi_node_attr(c)->f[0];
    TGI_FLOAT_DISPATCH(c->out->dtype, {
        const T s = (T)s_;
        UNARY_BACKWARD(c, s * g);
    });
}

/* ======================================================================== */
/* tg_neg                                                                   */
/* ======================================================================== */

/* y = -x, x's shape. dx = -dy. Saves nothing. */
static void neg_forward(tg_tensor *y, const tg_tensor *x, const tgi_attr *at);
static void neg_backward(tg_op_call *c);
static const tg_op op_neg = {"neg", NULL, neg_backward};

tg_tensor *tg_neg(tg_ctx *ctx, tg_tensor *x)
{
    return unary_op(ctx, "tg_neg", &op_neg, x, NULL, neg_forward);
}

static void neg_forward(tg_tensor *y, const tg_tensor *x, const tgi_attr *at)
{
    TGI_FLOAT_DISPATCH(y->dtype, { UNARY_FORWARD(y, x, -u); });
}

/* d(-x)/dx = -1 */
static void neg_backward(tg_op_call *c)
{
    TGI_FLOAT_DISPATCH(c->out->dtype, { UNARY_BACKWARD(c, -g); });
}

/* ======================================================================== */
/* tg_exp                                                                   */
/* ======================================================================== */

/* y = e^x, x's shape. dx = dy * y. Saves nothing extra: backward reads the
 * output y instead of recomputing exp. The vector exp of src/kernels/vmath.h (<= 1
 * ulp). Overflows to inf above x ~ 88.7 (f32) or ~ 709.8 (f64), as C's exp;
 * the gradient is then inf too. */
static void exp_forward(tg_tensor *y, const tg_tensor *x, const tgi_attr *at);
static void exp_backward(tg_op_call *c);
static const tg_op op_exp = {"exp", NULL, exp_backward};

tg_tensor *tg_exp(tg_ctx *ctx, tg_tensor *x)
{
    return unary_op(ctx, "tg_exp", &op_exp, x, NULL, exp_forward);
}

static void exp_forward(tg_tensor *y, const tg_tensor *x, const tgi_attr *at)
{
    TGI_FLOAT_DISPATCH(y->dtype, {
        T *py = y->data;
        const T *px = x->data;
        TGI_PAR_CHUNKS(y->ctx, y->numel, lo, hi, { V_EXP(py + lo, px + lo, hi - lo); });
    });
}

/* d e^x/dx = e^x = y */
static void exp_backward(tg_op_call *c)
{
    TGI_FLOAT_DISPATCH(c->out->dtype, { UNARY_BACKWARD(c, g * w); });
}

/* ======================================================================== */
/* tg_log                                                                   */
/* ======================================================================== */

/* y = ln x, x's shape. dx = dy / x. Saves nothing (reads x). x = 0 gives
 * -inf and a gradient of +-inf; x < 0 gives NaN, as in C. No clamping:
 * callers that need it (tg_bce) clamp themselves. The vector log of
 * src/kernels/vmath.h (<= 1 ulp). */
static void log_forward(tg_tensor *y, const tg_tensor *x, const tgi_attr *at);
static void log_backward(tg_op_call *c);
static const tg_op op_log = {"log", NULL, log_backward};

tg_tensor *tg_log(tg_ctx *ctx, tg_tensor *x)
{
    return unary_op(ctx, "tg_log", &op_log, x, NULL, log_forward);
}

static void log_forward(tg_tensor *y, const tg_tensor *x, const tgi_attr *at)
{
    TGI_FLOAT_DISPATCH(y->dtype, {
        T *py = y->data;
        const T *px = x->data;
        TGI_PAR_CHUNKS(y->ctx, y->numel, lo, hi, { V_LOG(py + lo, px + lo, hi - lo); });
    });
}

/* d ln x/dx = 1/x */
static void log_backward(tg_op_call *c)
{
    TGI_FLOAT_DISPATCH(c->out->dtype, { UNARY_BACKWARD(c, g / u); });
}

/* ======================================================================== */
/* tg_pow                                                                   */
/* ======================================================================== */

/* y = x^p (p a constant), x's shape. dx = dy * p x^(p-1). Saves p (node
 * attribute f[0]). p = 0: y = 1 (also 0^0), gradient 0. p = 1: y = x,
 * gradient dy (x^0 = 1 even at x = 0). p = 2 is computed as x*x and 2x,
 * exactly, and fine at x = 0. Other p use C's pow: fractional p at negative x
 * gives NaN, negative p at x = 0 gives inf, as in C. */
static void pow_forward(tg_tensor *y, const tg_tensor *x, const tgi_attr *at);
static void pow_backward(tg_op_call *c);
static const tg_op op_pow = {"pow", NULL, pow_backward};

tg_tensor *tg_pow(tg_ctx *ctx, tg_tensor *x, double p)
{
    const tgi_attr at = {.f = {p}};
    return unary_op(ctx, "tg_pow", &op_pow, x, &at, pow_forward);
}

static void pow_forward(tg_tensor *y, const tg_tensor *x, const tgi_attr *at)
{
    const double p_ = at->f[0];
    TGI_FLOAT_DISPATCH(y->dtype, {
        const T p = (T)p_;
        if (p_ == 2.0)
            UNARY_FORWARD(y, x, u * u);
        else if (p_ == 1.0)
            UNARY_FORWARD(y, x, u);
        else if (p_ == 0.0)
            UNARY_FORWARD(y, x, (T)1);
        else
            UNARY_FORWARD(y, x, pow(u, p));
    });
}

/* d x^p/dx = p x^(p-1) */
static void pow_backward(tg_op_call *c)
{
    const double p_ = tgi_node_attr(c)->f[0];
    TGI_FLOAT_DISPATCH(c->out->dtype, {
        const T p = (T)p_, pm1 = (T)(p_ - 1.0);
        if (p_ == 2.0)
            UNARY_BACKWARD(c, g * (u + u));
        else if (p_ == 1.0)
            UNARY_BACKWARD(c, g);
        else if (p_ == 0.0)
            UNARY_BACKWARD(c, (T)0);
        else
            UNARY_BACKWARD(c, g * p * pow(u, pm1));
    });
}

/* ======================================================================== */
/* tg_identity                                                              */
/* ======================================================================== */

/* y = x (a copy), x's shape. dx = dy. Saves nothing. */
static void identity_forward(tg_tensor *y, const tg_tensor *x, const tgi_attr *at);
static void identity_backward(tg_op_call *c);
static const tg_op op_identity = {"identity", NULL, identity_backward};

tg_tensor *tg_identity(tg_ctx *ctx, tg_tensor *x)
{
    return unary_op(ctx, "tg_identity", &op_identity, x, NULL, identity_forward);
}

static void identity_forward(tg_tensor *y, const tg_tensor *x, const tgi_attr *at)
{
    if (y->numel > 0)
        memcpy(y->data, x->data, tgi_bytes(x));
}

/* d x/dx = 1 */
static void identity_backward(tg_op_call *c)
{
    TGI_FLOAT_DISPATCH(c->out->dtype, { UNARY_BACKWARD(c, g); });
}

/* ======================================================================== */
/* tg_step                                                                  */
/* ======================================================================== */

/* y = 1 if x >= 0 else 0 (so step(0) = 1; NaN gives 0), x's shape.
 * dx = 0 everywhere (the true derivative almost everywhere; PyTorch's
 * convention for piecewise-constant ops). The node IS recorded, with a
 * backward that adds nothing but materialises x's gradient buffer: after
 * tg_backward, tg_grad(x) is a buffer of zeros, not NULL, exactly as for any
 * other input that gradients reached, and ops downstream of step see an
 * output that requires grad, as in PyTorch. Saves nothing. */
static void step_forward(tg_tensor *y, const tg_tensor *x, const tgi_attr *at);
static void step_backward(tg_op_call *c);
static const tg_op op_step = {"step", NULL, step_backward};

tg_tensor *tg_step(tg_ctx *ctx, tg_tensor *x)
{
    return unary_op(ctx, "tg_step", &op_step, x, NULL, step_forward);
}

static void step_forward(tg_tensor *y, const tg_tensor *x, const tgi_attr *at)
{
    TGI_FLOAT_DISPATCH(y->dtype, { UNARY_FORWARD(y, x, u >= (T)0 ? (T)1 : (T)0); });
}

/* d step(x)/dx = 0 (adds nothing; the gradient buffer exists afterwards) */
static void step_backward(tg_op_call *c)
{
    if (tgi_needs_grad(c->in[0]))
        (void)tg_grad_acc(c->in[0]);
}
