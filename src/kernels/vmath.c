/* SPDX-License-Identifier: MIT */
/* vmath.c: picks the vmath kernel set once from the CPU's features (AVX-512, then
 * AVX2+FMA, then the portable set) and forwards every tgi_v* call to it. The kernels
 * are in vmath_tmpl.h, instantiated by vmath_generic.c, vmath_avx2.c and
 * vmath_avx512.c; method and measurements in docs/vmath.md. */
#include "vmath.h"

#include <stdatomic.h>
#include <string.h>

/* Chosen on first use (idempotent, so a race between two first callers only stores
 * the same pointer twice); tests and benchmarks may force a set. */
static _Atomic(const tgi_vmath_impl *) g_auto_impl;
static _Atomic(const tgi_vmath_impl *) g_forced_impl;

#if defined(__x86_64__)
static int cpu_has_avx2(void)
{
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
}

static int cpu_has_avx512(void)
{
#if defined(TGI_VMATH_EMULATE_AVX512)
    return 1; /* verification build: the AVX-512 set runs on SIMDe (vmath_avx512.c) */
#else
    /* libgcc's cpu model also checks (XGETBV) that the OS saves the zmm state */
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512dq") &&
           __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("fma");
#endif
}
#endif

static const tgi_vmath_impl *detect_impl(void)
{
#if defined(__x86_64__)
    if (cpu_has_avx512()) return &tgi_vmath_impl_avx512;
    if (cpu_has_avx2()) return &tgi_vmath_impl_avx2;
#endif
    return &tgi_vmath_impl_generic;
}

static const tgi_vmath_impl *impl(void)
{
    const tgi_vmath_impl *f = atomic_load_explicit(&g_forced_impl, memory_order_acquire);
    if (f) return f;
    const tgi_vmath_impl *a = atomic_load_explicit(&g_auto_impl, memory_order_acquire);
    if (!a) {
        a = detect_impl();
        atomic_store_explicit(&g_auto_impl, a, memory_order_release);
    }
    return a;
}

const char *tgi_vmath_isa(void) { return impl()->name; }

void tgi_vmath_force(const char *isa)
{
    const tgi_vmath_impl *want = NULL;
    if (!isa) {
        atomic_store_explicit(&g_forced_impl, NULL, memory_order_release);
        return;
    }
    if (strcmp(isa, "generic") == 0) want = &tgi_vmath_impl_generic;
#if defined(__x86_64__)
    else if (strcmp(isa, "avx2") == 0 && cpu_has_avx2()) want = &tgi_vmath_impl_avx2;
    else if (strcmp(isa, "avx512") == 0 && cpu_has_avx512()) want = &tgi_vmath_impl_avx512;
#endif
    if (want) atomic_store_explicit(&g_forced_impl, want, memory_order_release);
}

/* ---- forwarding: n <= 0 never reaches a kernel ---- */
#define VM_FWD_UN(name, field, T)                                                          \
    void name(T *y, const T *x, int64_t n)                                                 \
    {                                                                                      \
        if (n > 0) impl()->field(y, x, n);                                                 \
    }
#define VM_FWD_BIN(name, field, T)                                                         \
    void name(T *dx, const T *a, const T *dy, int64_t n)                                   \
    {                                                                                      \
        if (n > 0) impl()->field(dx, a, dy, n);                                            \
    }

VM_FWD_UN(tgi_vexp_f32, exp_f32, float)
VM_FWD_UN(tgi_vexp_f64, exp_f64, double)
VM_FWD_UN(tgi_vlog_f32, log_f32, float)
VM_FWD_UN(tgi_vlog_f64, log_f64, double)
VM_FWD_UN(tgi_vtanh_f32, tanh_f32, float)
VM_FWD_UN(tgi_vtanh_f64, tanh_f64, double)
VM_FWD_UN(tgi_vsigmoid_f32, sigmoid_f32, float)
VM_FWD_UN(tgi_vsigmoid_f64, sigmoid_f64, double)
VM_FWD_UN(tgi_vrelu_f32, relu_f32, float)
VM_FWD_UN(tgi_vrelu_f64, relu_f64, double)
VM_FWD_BIN(tgi_vsigmoid_bwd_f32, sigmoid_bwd_f32, float)
VM_FWD_BIN(tgi_vsigmoid_bwd_f64, sigmoid_bwd_f64, double)
VM_FWD_BIN(tgi_vtanh_bwd_f32, tanh_bwd_f32, float)
VM_FWD_BIN(tgi_vtanh_bwd_f64, tanh_bwd_f64, double)
VM_FWD_BIN(tgi_vrelu_bwd_f32, relu_bwd_f32, float)
VM_FWD_BIN(tgi_vrelu_bwd_f64, relu_bwd_f64, double)

void tgi_vadam_f32(float *p, const float *g, float *m, float *v, int64_t n, double lr_t,
                   double beta1, double beta2, double inv_sqrt_bc2, double eps,
                   double weight_decay, int decoupled, double lr)
{
    if (n > 0)
        impl()->adam_f32(p, g, m, v, n, lr_t, beta1, beta2, inv_sqrt_bc2, eps, weight_decay,
                         decoupled, lr);
}

void tgi_vadam_f64(double *p, const double *g, double *m, double *v, int64_t n, double lr_t,
                   double beta1, double beta2, double inv_sqrt_bc2, double eps,
                   double weight_decay, int decoupled, double lr)
{
    if (n > 0)
        impl()->adam_f64(p, g, m, v, n, lr_t, beta1, beta2, inv_sqrt_bc2, eps, weight_decay,
                         decoupled, lr);
}

void tgi_vaxpy_f32(float *y, float a, const float *x, int64_t n)
{
    if (n > 0) impl()->axpy_f32(y, a, x, n);
}

void tgi_vaxpy_f64(double *y, double a, const double *x, int64_t n)
{
    if (n > 0) impl()->axpy_f64(y, a, x, n);
}

void tgi_vgelu_f32(float *y, float *d, const float *x, int64_t n)
{
    if (n > 0) impl()->gelu_f32(y, d, x, n);
}

void tgi_vgelu_f64(double *y, double *d, const double *x, int64_t n)
{
    if (n > 0) impl()->gelu_f64(y, d, x, n);
}
