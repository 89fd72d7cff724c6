/* SPDX-License-Identifier: MIT */
/* vmath.c: picks the vmath kernel set once from the CPU's features (AVX-512, then
 * AVX2+FMA, then the portable set) and forwards every tgi_v* call to it. The kernels
 * are in vmath_tmpl.h, instantiated by vmath_generic.c, vmath_avx2.c and
 * vmath_avx512.c; the CPU probe is cpu.c's, shared with the GEMM dispatcher. Method
 * and measurements in docs/vmath.md. */
#include "vmath.h"

#include "cpu.h"

/* Chosen on first use; tests and benchmarks may force a set (cpu.h). */
TGI_ISA_SETS(g_sets, g_auto_impl, g_forced_impl, &tgi_vmath_impl_generic, &tgi_vmath_impl_avx2,
             &tgi_vmath_impl_avx512);

static const tgi_vmath_impl *impl(void) { return tgi_isa_pick(&g_sets); }

const char *tgi_vmath_isa(void) { return impl()->name; }

void tgi_vmath_force(const char *isa) { tgi_isa_force(&g_sets, isa); }

/* ---- forwarding: n <= 0 never reaches a kernel; every function once per type ---- */
#define VM_FWD_UN(op, S, T)                                                                \
    void tgi_v##op##_##S(T *y, const T *x, int64_t n)                                      \
    {                                                                                      \
        if (n > 0) impl()->op##_##S(y, x, n);                                              \
    }
#define VM_FWD_BIN(op, S, T)                                                               \
    void tgi_v##op##_##S(T *dx, const T *a, const T *dy, int64_t n)                        \
    {                                                                                      \
        if (n > 0) impl()->op##_##S(dx, a, dy, n);                                         \
    }
#define VM_FWD(S, T)                                                                       \
    VM_FWD_UN(exp, S, T)                                                                   \
    VM_FWD_UN(log, S, T)                                                                   \
    VM_FWD_UN(tanh, S, T)                                                                  \
    VM_FWD_UN(sigmoid, S, T)                                                               \
    VM_FWD_UN(relu, S, T)                                                                  \
    VM_FWD_BIN(sigmoid_bwd, S, T)                                                          \
    VM_FWD_BIN(tanh_bwd, S, T)                                                             \
    VM_FWD_BIN(relu_bwd, S, T)                                                             \
    void tgi_vadam_##S(T *p, const T *g, T *m, T *v, int64_t n, double lr_t, double beta1, \
                       double beta2, double inv_sqrt_bc2, double eps, double weight_decay, \
                       int decoupled, double lr)                                           \
    {                                                                                      \
        if (n > 0)                                                                         \
            impl()->adam_##S(p, g, m, v, n, lr_t, beta1, beta2, inv_sqrt_bc2, eps,         \
                             weight_decay, decoupled, lr);                                 \
    }                                                                                      \
    void tgi_vaxpy_##S(T *y, T a, const T *x, int64_t n)                                   \
    {                                                                                      \
        if (n > 0) impl()->axpy_##S(y, a, x, n);                                           \
    }                                                                                      \
    void tgi_vgelu_##S(T *y, T *d, const T *x, int64_t n)                                  \
    {                                                                                      \
        if (n > 0) impl()->gelu_##S(y, d, x, n);                                           \
    }

VM_FWD(f32, float)
VM_FWD(f64, double)
