/* SPDX-License-Identifier: MIT */
/* vmath.h: vectorised transcendental and elementwise kernels. Internal, not part of
 * the public API; the op files and the optimisers call them.
 *
 * Every kernel works on rows of contiguous arrays of n >= 0 elements (n <= 0: nothing
 * happens). An output may be the very same array as an input (y == x, dx == dy), but
 * must not overlap it partially. No alignment is required. Element i of the result
 * depends only on element i of the inputs (and the scalar arguments), never on n, on
 * alignment or on where in a vector the element sits, so a caller may split a row
 * between threads anywhere and gets the same bits.
 *
 * The instruction set is chosen once at run time (AVX-512, AVX2+FMA, or portable C),
 * so one build runs on any x86-64; results of the transcendental kernels differ
 * between instruction sets by at most the documented error bounds.
 *
 * Accuracy: maximum error in units in the last place of the result, measured against
 * libm in higher precision over every float of the range (f32) and 2^24 random doubles
 * (f64), generic and avx2 sets; the bounds are what tests/kernels/test_vmath.c asserts for every
 * set. Details, the AVX-512 figures and the method: docs/vmath.md.
 *              measured f32 / f64     asserted bound f32 / f64
 *   exp          1.014 / 0.978            1.05 / 1.1     subnormal results are kept
 *   log          0.923 / 0.781            1.0  / 1.0     subnormal inputs too
 *   tanh         1.466 / 1.396            1.5  / 1.5     full relative accuracy near 0
 *   sigmoid      2.402 / 2.303            2.5  / 2.5
 *   gelu y       4.464 / libm             5.0  / -      test sweep; |y| < 2^-100: ulps of 2^-100
 *   gelu d       4.107 / libm             4.5  / -      in ulps of |Phi| + |x phi|
 *
 * Special values: exp(NaN) = NaN, exp(+inf) = +inf, exp(-inf) = +0, exp overflows to
 * +inf and underflows to +0; log(x < 0) = NaN, log(+-0) = -inf, log(+inf) = +inf;
 * tanh(+-0) = +-0, tanh(+-inf) = +-1; sigmoid(+inf) = 1, sigmoid(-inf) = 0,
 * sigmoid(-0) = 0.5; every function maps NaN to NaN. The kernels assume the default
 * floating-point environment (round to nearest; no flush-to-zero), as C does. */
#ifndef TG_VMATH_H
#define TG_VMATH_H

#include <stdint.h>

/* ---- transcendental functions: y[i] = f(x[i]) ---- */
void tgi_vexp_f32(float *y, const float *x, int64_t n);
void tgi_vexp_f64(double *y, const double *x, int64_t n);
void tgi_vlog_f32(float *y, const float *x, int64_t n);
void tgi_vlog_f64(double *y, const double *x, int64_t n);
void tgi_vtanh_f32(float *y, const float *x, int64_t n);
void tgi_vtanh_f64(double *y, const double *x, int64_t n);
/* sigmoid(x) = 1 / (1 + exp(-x)), computed as e / (1 + e) with e = exp(x) for x < 0 */
void tgi_vsigmoid_f32(float *y, const float *x, int64_t n);
void tgi_vsigmoid_f64(double *y, const double *x, int64_t n);

/* ---- gelu (erf form, F.gelu): y[i] = x Phi(x); when d is not NULL also
 * d[i] = Phi(x) + x phi(x), gelu's derivative, for backward (d aliases neither x nor y).
 * f32 vectorised (error bounds below and in docs/vmath.md); f64 is libm's erf and exp
 * in PyTorch's arrangement, element by element. */
void tgi_vgelu_f32(float *y, float *d, const float *x, int64_t n);
void tgi_vgelu_f64(double *y, double *d, const double *x, int64_t n);

/* ---- relu: y[i] = x[i] > 0 ? x[i] : +0; NaN passes through ---- */
void tgi_vrelu_f32(float *y, const float *x, int64_t n);
void tgi_vrelu_f64(double *y, const double *x, int64_t n);

/* ---- backward helpers: all ADD into dx (dx may be dy itself) ---- */
/* dx += dy y (1 - y), y = sigmoid(x) */
void tgi_vsigmoid_bwd_f32(float *dx, const float *y, const float *dy, int64_t n);
void tgi_vsigmoid_bwd_f64(double *dx, const double *y, const double *dy, int64_t n);
/* dx += dy (1 - y^2), y = tanh(x) */
void tgi_vtanh_bwd_f32(float *dx, const float *y, const float *dy, int64_t n);
void tgi_vtanh_bwd_f64(double *dx, const double *y, const double *dy, int64_t n);
/* dx += x > 0 ? dy : 0, where x_or_y is relu's input or its output (same test) */
void tgi_vrelu_bwd_f32(float *dx, const float *x_or_y, const float *dy, int64_t n);
void tgi_vrelu_bwd_f64(double *dx, const double *x_or_y, const double *dy, int64_t n);

/* ---- optimiser sweeps, in place on flat arrays ---- */
/* Adam / AdamW step t (PyTorch 1.13 torch.optim.Adam / AdamW, amsgrad off), per element:
 *   decoupled (AdamW):  p = p * (1 - lr wd);  d = g
 *   else (Adam):        d = wd != 0 ? g + wd p : g
 *   m = beta1 m + (1 - beta1) d
 *   v = beta2 v + ((1 - beta2) d) d
 *   p = p - lr_t (m / (sqrt(v) inv_sqrt_bc2 + eps))
 * with lr_t = lr / (1 - beta1^t) and inv_sqrt_bc2 = 1 / sqrt(1 - beta2^t), computed by
 * the caller in double. The hyperparameters are doubles for both element types:
 * 1 - beta1, 1 - beta2 and 1 - lr wd are formed in double and then every constant is
 * rounded once to the element type, as PyTorch does for float tensors (rounding beta2 =
 * 0.999 to float first would change 1 - beta2 by 1.3e-5 relative). Evaluated in exactly
 * this order with IEEE operations and no fused multiply-add, so every instruction set
 * gives the same bits as the plain C loop of this formula (in an ISO C build, where
 * the compiler does not contract a*b+c; docs/vmath.md). */
void tgi_vadam_f32(float *p, const float *g, float *m, float *v, int64_t n, double lr_t,
                   double beta1, double beta2, double inv_sqrt_bc2, double eps,
                   double weight_decay, int decoupled, double lr);
void tgi_vadam_f64(double *p, const double *g, double *m, double *v, int64_t n, double lr_t,
                   double beta1, double beta2, double inv_sqrt_bc2, double eps,
                   double weight_decay, int decoupled, double lr);
/* y += a x (one fused multiply-add per element where the CPU has FMA) */
void tgi_vaxpy_f32(float *y, float a, const float *x, int64_t n);
void tgi_vaxpy_f64(double *y, double a, const double *x, int64_t n);

/* ---- instruction set ---- */
/* "avx512", "avx2" or "generic": the kernel set in use (after any tgi_vmath_force). */
const char *tgi_vmath_isa(void);
/* Tests and benchmarks only: use the named kernel set ("generic", "avx2", "avx512"),
 * or the automatic choice for NULL. A name this CPU (or this build) cannot run is
 * ignored. Not thread-safe with respect to kernels running at the same time. */
void tgi_vmath_force(const char *isa);

/* ---- kernel sets (for vmath.c and vmath_*.c only) ---- */
typedef void (*tgi_vm_un_f32)(float *, const float *, int64_t);
typedef void (*tgi_vm_un_f64)(double *, const double *, int64_t);
typedef void (*tgi_vm_bin_f32)(float *, const float *, const float *, int64_t);
typedef void (*tgi_vm_bin_f64)(double *, const double *, const double *, int64_t);

typedef struct tgi_vmath_impl {
    const char *name;
    tgi_vm_un_f32 exp_f32, log_f32, tanh_f32, sigmoid_f32, relu_f32;
    tgi_vm_un_f64 exp_f64, log_f64, tanh_f64, sigmoid_f64, relu_f64;
    tgi_vm_bin_f32 sigmoid_bwd_f32, tanh_bwd_f32, relu_bwd_f32;
    tgi_vm_bin_f64 sigmoid_bwd_f64, tanh_bwd_f64, relu_bwd_f64;
    void (*adam_f32)(float *, const float *, float *, float *, int64_t, double, double, double,
                     double, double, double, int, double);
    void (*adam_f64)(double *, const double *, double *, double *, int64_t, double, double,
                     double, double, double, double, int, double);
    void (*axpy_f32)(float *, float, const float *, int64_t);
    void (*axpy_f64)(double *, double, const double *, int64_t);
    void (*gelu_f32)(float *, float *, const float *, int64_t);
    void (*gelu_f64)(double *, double *, const double *, int64_t);
} tgi_vmath_impl;

/* Defined by vmath_generic.c, vmath_avx2.c and vmath_avx512.c (the last two only on
 * x86-64). */
extern const tgi_vmath_impl tgi_vmath_impl_generic;
extern const tgi_vmath_impl tgi_vmath_impl_avx2;
extern const tgi_vmath_impl tgi_vmath_impl_avx512;

/* The initialiser of a kernel set whose functions vmath_tmpl.h defined with suffixes
 * <isa>_f32 and <isa>_f64. */
#define TGI_VMATH_IMPL(isa)                                                                \
    {                                                                                      \
        .name = #isa, .exp_f32 = tgi_vm_exp_##isa##_f32, .log_f32 = tgi_vm_log_##isa##_f32,  \
        .tanh_f32 = tgi_vm_tanh_##isa##_f32, .sigmoid_f32 = tgi_vm_sigmoid_##isa##_f32,      \
        .relu_f32 = tgi_vm_relu_##isa##_f32, .exp_f64 = tgi_vm_exp_##isa##_f64,              \
        .log_f64 = tgi_vm_log_##isa##_f64, .tanh_f64 = tgi_vm_tanh_##isa##_f64,              \
        .sigmoid_f64 = tgi_vm_sigmoid_##isa##_f64, .relu_f64 = tgi_vm_relu_##isa##_f64,      \
        .sigmoid_bwd_f32 = tgi_vm_sigmoid_bwd_##isa##_f32,                                 \
        .tanh_bwd_f32 = tgi_vm_tanh_bwd_##isa##_f32,                                       \
        .relu_bwd_f32 = tgi_vm_relu_bwd_##isa##_f32,                                       \
        .sigmoid_bwd_f64 = tgi_vm_sigmoid_bwd_##isa##_f64,                                 \
        .tanh_bwd_f64 = tgi_vm_tanh_bwd_##isa##_f64,                                       \
        .relu_bwd_f64 = tgi_vm_relu_bwd_##isa##_f64, .adam_f32 = tgi_vm_adam_##isa##_f32,    \
        .adam_f64 = tgi_vm_adam_##isa##_f64, .axpy_f32 = tgi_vm_axpy_##isa##_f32,            \
        .axpy_f64 = tgi_vm_axpy_##isa##_f64, .gelu_f32 = tgi_vm_gelu_##isa##_f32,          \
        .gelu_f64 = tgi_vm_gelu_##isa##_f64,                                               \
    }

#endif /* TG_VMATH_H */
