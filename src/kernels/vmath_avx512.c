/* SPDX-License-Identifier: MIT */
/* vmath_avx512.c: the AVX-512 vmath kernels (Skylake-X and later, Zen 4/5): 16 floats
 * or 8 doubles per zmm register, comparisons into mask registers. Compiled into every
 * x86-64 build with function-level target attributes; vmath.c selects this set at run
 * time when the CPU (and OS) support AVX-512 F, DQ and VL. The tail of a row
 * (n % VL elements) goes through masked loads and stores, with the same arithmetic as
 * the body.
 *
 * Verification build: with -DTGI_VMATH_EMULATE_AVX512 the intrinsics come from SIMDe
 * (Debian libsimde-dev) instead of the compiler and vmath.c treats AVX-512 as present,
 * so these kernels can be tested on a CPU without AVX-512 (docs/vmath.md says how; SIMDe's
 * portable integer lanes are signed, so build that with -fwrapv under UBSan). Never set
 * in the real build. */
#if defined(__x86_64__)

#if defined(TGI_VMATH_EMULATE_AVX512)
#define SIMDE_ENABLE_NATIVE_ALIASES
#include <simde/x86/avx512.h>
#include <string.h>
#define TGI_VM_AVX512_TARGET
typedef simde__mmask16 tgi_vm_mask16;
typedef simde__mmask8 tgi_vm_mask8;
/* SIMDe 0.7 has no masked unaligned load/store: go through a zeroed vector */
#define TGI_VM_LOADN(V, p, n)                                                              \
    __extension__({                                                                        \
        V vl_;                                                                             \
        memset(&vl_, 0, sizeof vl_);                                                       \
        memcpy(&vl_, (p), (size_t)(n) * sizeof *(p));                                      \
        vl_;                                                                               \
    })
#define TGI_VM_STOREN(V, p, v, n)                                                          \
    __extension__({                                                                        \
        V vs_ = (v);                                                                       \
        memcpy((p), &vs_, (size_t)(n) * sizeof *(p));                                      \
    })
#else
#include <immintrin.h>
#define TGI_VM_AVX512_TARGET __attribute__((target("avx512f,avx512dq,avx512vl,fma")))
typedef __mmask16 tgi_vm_mask16;
typedef __mmask8 tgi_vm_mask8;
#endif
#include <math.h>
#include <stdint.h>

#include "vmath.h"

/* ---- float: 16 lanes ---- */
#define TMPL_F64 0
#define TMPL_SFX avx512_f32
#define TMPL_TARGET TGI_VM_AVX512_TARGET
#define T float
#define V __m512
#define VI __m512i
#define VM tgi_vm_mask16
#define VL 16
#define V_LOAD(p) _mm512_loadu_ps(p)
#define V_STORE(p, v) _mm512_storeu_ps((p), (v))
#if defined(TGI_VMATH_EMULATE_AVX512)
#define V_LOADN(p, n) TGI_VM_LOADN(__m512, p, n)
#define V_STOREN(p, v, n) TGI_VM_STOREN(__m512, p, v, n)
#else
#define V_LOADN(p, n) _mm512_maskz_loadu_ps((__mmask16)((1u << (n)) - 1u), (p))
#define V_STOREN(p, v, n) _mm512_mask_storeu_ps((p), (__mmask16)((1u << (n)) - 1u), (v))
#endif
#define V_SET1(s) _mm512_set1_ps(s)
#define V_ADD(a, b) _mm512_add_ps((a), (b))
#define V_SUB(a, b) _mm512_sub_ps((a), (b))
#define V_MUL(a, b) _mm512_mul_ps((a), (b))
#define V_DIV(a, b) _mm512_div_ps((a), (b))
#define V_SQRT(a) _mm512_sqrt_ps(a)
#define V_FMA(a, b, c) _mm512_fmadd_ps((a), (b), (c))
#define V_FNMA(a, b, c) _mm512_fnmadd_ps((a), (b), (c))
#define V_MAX(a, b) _mm512_max_ps((a), (b))
#define V_MIN(a, b) _mm512_min_ps((a), (b))
#define V_AND(a, b) _mm512_and_ps((a), (b))
#define V_OR(a, b) _mm512_or_ps((a), (b))
#define V_XOR(a, b) _mm512_xor_ps((a), (b))
#define V_ANDNOT(a, b) _mm512_andnot_ps((a), (b))
#define V_LT(a, b) _mm512_cmp_ps_mask((a), (b), _CMP_LT_OQ)
#define V_GT(a, b) _mm512_cmp_ps_mask((a), (b), _CMP_GT_OQ)
#define V_GE(a, b) _mm512_cmp_ps_mask((a), (b), _CMP_GE_OQ)
#define V_EQ(a, b) _mm512_cmp_ps_mask((a), (b), _CMP_EQ_OQ)
#define V_NLE(a, b) _mm512_cmp_ps_mask((a), (b), _CMP_NLE_UQ)
#define V_NGE(a, b) _mm512_cmp_ps_mask((a), (b), _CMP_NGE_UQ)
#define VM_OR(a, b) ((tgi_vm_mask16)((a) | (b)))
#define VM_ANY(m) ((m) != 0)
#define V_SEL(m, a, b) _mm512_mask_blend_ps((m), (b), (a))
#define V_AS_I(v) _mm512_castps_si512(v)
#define I_AS_V(i) _mm512_castsi512_ps(i)
#define I_SET1(s) _mm512_set1_epi32(s)
#define I_ADD(a, b) _mm512_add_epi32((a), (b))
#define I_SUB(a, b) _mm512_sub_epi32((a), (b))
#define I_AND(a, b) _mm512_and_si512((a), (b))
#define I_OR(a, b) _mm512_or_si512((a), (b))
#define I_XOR(a, b) _mm512_xor_si512((a), (b))
#define I_SLLI(a, n) _mm512_slli_epi32((a), (n))
#define I_SRLI(a, n) _mm512_srli_epi32((a), (n))
#include "vmath_tmpl.h"

/* ---- double: 8 lanes ---- */
#define TMPL_F64 1
#define TMPL_SFX avx512_f64
#define TMPL_TARGET TGI_VM_AVX512_TARGET
#define T double
#define V __m512d
#define VI __m512i
#define VM tgi_vm_mask8
#define VL 8
#define V_LOAD(p) _mm512_loadu_pd(p)
#define V_STORE(p, v) _mm512_storeu_pd((p), (v))
#if defined(TGI_VMATH_EMULATE_AVX512)
#define V_LOADN(p, n) TGI_VM_LOADN(__m512d, p, n)
#define V_STOREN(p, v, n) TGI_VM_STOREN(__m512d, p, v, n)
#else
#define V_LOADN(p, n) _mm512_maskz_loadu_pd((__mmask8)((1u << (n)) - 1u), (p))
#define V_STOREN(p, v, n) _mm512_mask_storeu_pd((p), (__mmask8)((1u << (n)) - 1u), (v))
#endif
#define V_SET1(s) _mm512_set1_pd(s)
#define V_ADD(a, b) _mm512_add_pd((a), (b))
#define V_SUB(a, b) _mm512_sub_pd((a), (b))
#define V_MUL(a, b) _mm512_mul_pd((a), (b))
#define V_DIV(a, b) _mm512_div_pd((a), (b))
#define V_SQRT(a) _mm512_sqrt_pd(a)
#define V_FMA(a, b, c) _mm512_fmadd_pd((a), (b), (c))
#define V_FNMA(a, b, c) _mm512_fnmadd_pd((a), (b), (c))
#define V_MAX(a, b) _mm512_max_pd((a), (b))
#define V_MIN(a, b) _mm512_min_pd((a), (b))
#define V_AND(a, b) _mm512_and_pd((a), (b))
#define V_OR(a, b) _mm512_or_pd((a), (b))
#define V_XOR(a, b) _mm512_xor_pd((a), (b))
#define V_ANDNOT(a, b) _mm512_andnot_pd((a), (b))
#define V_LT(a, b) _mm512_cmp_pd_mask((a), (b), _CMP_LT_OQ)
#define V_GT(a, b) _mm512_cmp_pd_mask((a), (b), _CMP_GT_OQ)
#define V_GE(a, b) _mm512_cmp_pd_mask((a), (b), _CMP_GE_OQ)
#define V_EQ(a, b) _mm512_cmp_pd_mask((a), (b), _CMP_EQ_OQ)
#define V_NLE(a, b) _mm512_cmp_pd_mask((a), (b), _CMP_NLE_UQ)
#define V_NGE(a, b) _mm512_cmp_pd_mask((a), (b), _CMP_NGE_UQ)
#define VM_OR(a, b) ((tgi_vm_mask8)((a) | (b)))
#define VM_ANY(m) ((m) != 0)
#define V_SEL(m, a, b) _mm512_mask_blend_pd((m), (b), (a))
#define V_AS_I(v) _mm512_castpd_si512(v)
#define I_AS_V(i) _mm512_castsi512_pd(i)
#define I_SET1(s) _mm512_set1_epi64(s)
#define I_ADD(a, b) _mm512_add_epi64((a), (b))
#define I_SUB(a, b) _mm512_sub_epi64((a), (b))
#define I_AND(a, b) _mm512_and_si512((a), (b))
#define I_OR(a, b) _mm512_or_si512((a), (b))
#define I_XOR(a, b) _mm512_xor_si512((a), (b))
#define I_SLLI(a, n) _mm512_slli_epi64((a), (n))
#define I_SRLI(a, n) _mm512_srli_epi64((a), (n))
#include "vmath_tmpl.h"

const tgi_vmath_impl tgi_vmath_impl_avx512 = TGI_VMATH_IMPL(avx512);

#else
typedef int tgi_vmath_avx512_unused; /* ISO C wants a non-empty translation unit */
#endif
