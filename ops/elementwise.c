/* SPDX-License-Identifier: MIT */
/* ops/elementwise.c: elementwise ops, binary ones with NumPy broadcasting.
 *
 *   binary (broadcasting): tg_add, tg_sub, tg_mul, tg_div
 *   unary:                 tg_scale, tg_neg, tg_exp, tg_log, tg_sqrt, tg_abs,
 *                          tg_clamp, tg_pow,
 *                          tg_identity, tg_step
 *
 * Every op reads top to bottom: public function (checks, output, record,
 * forward), forward kernel, backward kernel. Kernels are written once for
 * float and double (TGI_FLOAT_DISPATCH + <tgmath.h>). Local gradients and
 * numerical notes: docs/ops.md.
 *
 * Broadcasting, the fast path for same shapes and scalars, and threads: the
 * binary plumbing of ops/ops.h, which describes them. exp and log use the
 * vector kernels of src/kernels/vmath.h.
 */
#include "ops.h"

/* ======================================================================== */
/* tg_add                                                                   */
/* ======================================================================== */

/* y = a + b, broadcast shape. da = dy, db = dy, each summed over the axes its
 * input was broadcast along. Saves nothing. */
TGI_OP(add);

tg_tensor *tg_add(tg_ctx *ctx, tg_tensor *a, tg_tensor *b)
{
    return tgi_binary(ctx, "tg_add", &op_add, a, b);
}

#define FWD_ROW_ADD(SA, SB) FWD_ROW(SA, SB, u + v)
BINARY_FORWARD_FN(add, ADD)

/* d(a+b)/da = 1, d(a+b)/db = 1 */
#define BWD_ROW_a_ADD(SA, SB) BWD_ROW(SA, SB, SA, g)
#define BWD_ROW_b_ADD(SA, SB) BWD_ROW(SA, SB, SB, g)
BINARY_BACKWARD_FN(add_bcast, ADD)
static void add_backward(tg_op_call *c)
{
    if (TGI_ATTR(c)->i[0] == BIN_SAME) { /* da = db = dy: copies into new buffers */
        tgi_pass_grad(c, 0);
        tgi_pass_grad(c, 1);
        return;
    }
    add_bcast_backward(c);
}

/* ======================================================================== */
/* tg_sub                                                                   */
/* ======================================================================== */

/* y = a - b, broadcast shape. da = dy, db = -dy, each summed over the axes
 * its input was broadcast along. Saves nothing. */
TGI_OP(sub);

tg_tensor *tg_sub(tg_ctx *ctx, tg_tensor *a, tg_tensor *b)
{
    return tgi_binary(ctx, "tg_sub", &op_sub, a, b);
}

#define FWD_ROW_SUB(SA, SB) FWD_ROW(SA, SB, u - v)
BINARY_FORWARD_FN(sub, SUB)

/* d(a-b)/da = 1, d(a-b)/db = -1 */
#define BWD_ROW_a_SUB(SA, SB) BWD_ROW(SA, SB, SA, g)
#define BWD_ROW_b_SUB(SA, SB) BWD_ROW(SA, SB, SB, -g)
BINARY_BACKWARD_FN(sub, SUB)

/* ======================================================================== */
/* tg_mul                                                                   */
/* ======================================================================== */

/* y = a * b, broadcast shape. da = dy * b, db = dy * a, each summed over the
 * axes its input was broadcast along. Saves nothing (reads a and b). */
TGI_OP(mul);

tg_tensor *tg_mul(tg_ctx *ctx, tg_tensor *a, tg_tensor *b)
{
    return tgi_binary(ctx, "tg_mul", &op_mul, a, b);
}

#define FWD_ROW_MUL(SA, SB) FWD_ROW(SA, SB, u * v)
BINARY_FORWARD_FN(mul, MUL)

/* d(ab)/da = b, d(ab)/db = a */
#define BWD_ROW_a_MUL(SA, SB) BWD_ROW(SA, SB, SA, g * v)
#define BWD_ROW_b_MUL(SA, SB) BWD_ROW(SA, SB, SB, g * u)
BINARY_BACKWARD_FN(mul, MUL)

/* ======================================================================== */
/* tg_div                                                                   */
/* ======================================================================== */

/* y = a / b, broadcast shape. da = dy / b, db = -dy * a / b^2 = -dy * y / b
 * (computed as (dy * y) / b, which does not overflow through b^2 for small
 * b), each summed over the axes its input was broadcast along. Saves nothing
 * (reads b and the output y). b = 0 gives inf/NaN as in C. */
TGI_OP(div);

tg_tensor *tg_div(tg_ctx *ctx, tg_tensor *a, tg_tensor *b)
{
    return tgi_binary(ctx, "tg_div", &op_div, a, b);
}

#define FWD_ROW_DIV(SA, SB) FWD_ROW(SA, SB, u / v)
BINARY_FORWARD_FN(div, DIV)

/* d(a/b)/da = 1/b, d(a/b)/db = -a/b^2 = -y/b */
#define BWD_ROW_a_DIV(SA, SB) BWD_ROW(SA, SB, SA, g / v)
#define BWD_ROW_b_DIV(SA, SB) BWD_ROW(SA, SB, SB, -(g * w) / v)
BINARY_BACKWARD_FN(div, DIV)

/* ======================================================================== */
/* Unary ops                                                                */
/* ======================================================================== */

/* ======================================================================== */
/* tg_scale                                                                 */
/* ======================================================================== */

/* y = s x, x's shape. dx = s dy. Saves s (node attribute f[0]). */
TGI_OP(scale);

tg_tensor *tg_scale(tg_ctx *ctx, tg_tensor *x, double s)
{
    const tgi_attr at = {.f = {s}};
    return tgi_unary(ctx, "tg_scale", &op_scale, x, &at);
}

/* forward; a0 = s */
UNARY_FORWARD_FN(scale, a0 * u)

/* d(s x)/dx = s */
UNARY_BACKWARD_FN(scale, a0 * g)

/* ======================================================================== */
/* tg_neg                                                                   */
/* ======================================================================== */

/* y = -x, x's shape. dx = -dy. Saves nothing. */
TGI_UNARY_OP(neg);

UNARY_FORWARD_FN(neg, -u)

/* d(-x)/dx = -1 */
UNARY_BACKWARD_FN(neg, -g)

/* ======================================================================== */
/* tg_exp                                                                   */
/* ======================================================================== */

/* y = e^x, x's shape. dx = dy * y. Saves nothing extra: backward reads the
 * output y instead of recomputing exp. The vector exp of src/kernels/vmath.h (<= 1
 * ulp). Overflows to inf above x ~ 88.7 (f32) or ~ 709.8 (f64), as C's exp;
 * the gradient is then inf too. */
TGI_VMATH_OP(exp, V_EXP);

/* d e^x/dx = e^x = y */
UNARY_BACKWARD_FN(exp, g * w)

/* ======================================================================== */
/* tg_log                                                                   */
/* ======================================================================== */

/* y = ln x, x's shape. dx = dy / x. Saves nothing (reads x). x = 0 gives
 * -inf and a gradient of +-inf; x < 0 gives NaN, as in C. No clamping:
 * callers that need it (tg_bce) clamp themselves. The vector log of
 * src/kernels/vmath.h (<= 1 ulp). */
TGI_VMATH_OP(log, V_LOG);

/* d ln x/dx = 1/x */
UNARY_BACKWARD_FN(log, g / u)

/* ======================================================================== */
/* tg_sqrt                                                                  */
/* ======================================================================== */

/* y = sqrt(x), x's shape. dx = dy / (2 y). Saves nothing (reads the output
 * y). x = 0 gives y = 0 and a gradient of +inf (NaN where dy = 0), x < 0
 * gives NaN, both as PyTorch. C's correctly rounded sqrt. */
TGI_UNARY_OP(sqrt);

UNARY_FORWARD_FN(sqrt, sqrt(u))

/* d sqrt(x)/dx = 1 / (2 sqrt(x)) = 1 / (2 y) */
UNARY_BACKWARD_FN(sqrt, g / (w + w))

/* ======================================================================== */
/* tg_abs                                                                   */
/* ======================================================================== */

/* y = |x|, x's shape. dx = dy sign(x), 0 at x = 0 (and for NaN), as
 * PyTorch. Saves nothing (reads x). */
TGI_UNARY_OP(abs);

UNARY_FORWARD_FN(abs, fabs(u))

/* d |x|/dx = sign(x) (0 at 0) */
UNARY_BACKWARD_FN(abs, u > 0 ? g : u < 0 ? -g : (T)0)

/* ======================================================================== */
/* tg_clamp                                                                 */
/* ======================================================================== */

/* y = min(max(x, lo), hi), x's shape (torch.clamp). dx = dy where lo <= x <=
 * hi (both ends included, as PyTorch), else 0. Saves lo and hi (attributes
 * f[0], f[1]). NaN passes through with a gradient of 0. lo > hi or a NaN
 * bound is an error naming both. */
TGI_OP(clamp);

tg_tensor *tg_clamp(tg_ctx *ctx, tg_tensor *x, double lo, double hi)
{
    if (ctx && tgi_check_float_arg(ctx, "tg_clamp", "x", x, NULL) && !(lo <= hi)) {
        char b[96];
        tg_set_error(ctx, "tg_clamp: needs lo <= hi, got lo %g and hi %g (x %s)", lo, hi,
                     TGI_SHAPE(x, b));
        return NULL;
    }
    const tgi_attr at = {.f = {lo, hi}};
    return tgi_unary(ctx, "tg_clamp", &op_clamp, x, &at);
}

/* forward; a0 = lo, a1 = hi */
UNARY_FORWARD_FN(clamp, u < a0 ? a0 : u > a1 ? a1 : u)

/* d clamp(x)/dx = [lo <= x <= hi] */
UNARY_BACKWARD_FN(clamp, u >= a0 && u <= a1 ? g : (T)0)

/* ======================================================================== */
/* tg_pow                                                                   */
/* ======================================================================== */

/* y = x^p (p a constant), x's shape. dx = dy * p x^(p-1). Saves p (node
 * attribute f[0]). p = 0: y = 1 (also 0^0), gradient 0. p = 1: y = x,
 * gradient dy (x^0 = 1 even at x = 0). p = 2 is computed as x*x and 2x,
 * exactly, and fine at x = 0. Other p use C's pow: fractional p at negative x
 * gives NaN, negative p at x = 0 gives inf, as in C. */
TGI_OP(pow);

tg_tensor *tg_pow(tg_ctx *ctx, tg_tensor *x, double p)
{
    const tgi_attr at = {.f = {p}};
    return tgi_unary(ctx, "tg_pow", &op_pow, x, &at);
}

static int pow_forward(tg_op_call *c)
{
    const double p_ = TGI_ATTR(c)->f[0];
    TGI_FLOAT_DISPATCH(c->out->dtype, {
        const T p = (T)p_;
        if (p_ == 2.0)
            UNARY_FORWARD(c, u * u);
        else if (p_ == 1.0)
            UNARY_FORWARD(c, u);
        else if (p_ == 0.0)
            UNARY_FORWARD(c, (T)1);
        else
            UNARY_FORWARD(c, pow(u, p));
    });
    return 0;
}

/* d x^p/dx = p x^(p-1) */
static void pow_backward(tg_op_call *c)
{
    const double p_ = TGI_ATTR(c)->f[0];
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
static const tg_op op_identity = {"identity", tgi_copy_forward, tgi_pass_backward};

tg_tensor *tg_identity(tg_ctx *ctx, tg_tensor *x)
{
    return tgi_unary(ctx, "tg_identity", &op_identity, x, NULL);
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
TGI_UNARY_OP(step);

UNARY_FORWARD_FN(step, u >= (T)0 ? (T)1 : (T)0)

/* d step(x)/dx = 0 (adds nothing; the gradient buffer exists afterwards) */
static void step_backward(tg_op_call *c)
{
    if (tgi_needs_grad(c->in[0]))
        (void)tg_grad_acc(c->in[0]);
}
