/* SPDX-License-Identifier: MIT */
/* vmath_avx2.c: the AVX2+FMA vmath kernels (Haswell and later, Zen 1-5): 8 floats or
 * 4 doubles per ymm register. Compiled into every x86-64 build with function-level
 * target attributes, so the library needs no -mavx2; vmath.c selects this set at run
 * time when the CPU has AVX2 and FMA. The tail of a row (n % VL elements) goes
 * through masked loads and stores (vmaskmov), with the same arithmetic as the body. */
#if defined(__x86_64__)

#include <immintrin.h>
#include <math.h>
#include <stdint.h>

#include "vmath.h"

/* lane masks for the tail: the first n lanes of tail_*(n) are all ones */
static const int32_t tail32[16] = {-1, -1, -1, -1, -1, -1, -1, -1, 0, 0, 0, 0, 0, 0, 0, 0};
static const int64_t tail64[8] = {-1, -1, -1, -1, 0, 0, 0, 0};

__attribute__((target("avx2,fma"))) static inline __m256i tail_ps(int n)
{
    return _mm256_loadu_si256((const __m256i *)(const void *)(tail32 + 8 - n));
}
__attribute__((target("avx2,fma"))) static inline __m256i tail_pd(int n)
{
    return _mm256_loadu_si256((const __m256i *)(const void *)(tail64 + 4 - n));
}

/* ---- float: 8 lanes ---- */
#define TMPL_F64 0
#define TMPL_SFX avx2_f32
#define TMPL_TARGET __attribute__((target("avx2,fma")))
#define T float
#define V __m256
#define VI __m256i
#define VM __m256
#define VL 8
#define V_LOAD(p) _mm256_loadu_ps(p)
#define V_STORE(p, v) _mm256_storeu_ps((p), (v))
#define V_LOADN(p, n) _mm256_maskload_ps((p), tail_ps(n))
#define V_STOREN(p, v, n) _mm256_maskstore_ps((p), tail_ps(n), (v))
#define V_SET1(s) _mm256_set1_ps(s)
#define V_ADD(a, b) _mm256_add_ps((a), (b))
#define V_SUB(a, b) _mm256_sub_ps((a), (b))
#define V_MUL(a, b) _mm256_mul_ps((a), (b))
#define V_DIV(a, b) _mm256_div_ps((a), (b))
#define V_SQRT(a) _mm256_sqrt_ps(a)
#define V_FMA(a, b, c) _mm256_fmadd_ps((a), (b), (c))
#define V_FNMA(a, b, c) _mm256_fnmadd_ps((a), (b), (c))
#define V_MAX(a, b) _mm256_max_ps((a), (b))
#define V_MIN(a, b) _mm256_min_ps((a), (b))
#define V_AND(a, b) _mm256_and_ps((a), (b))
#define V_OR(a, b) _mm256_or_ps((a), (b))
#define V_XOR(a, b) _mm256_xor_ps((a), (b))
#define V_ANDNOT(a, b) _mm256_andnot_ps((a), (b))
#define V_LT(a, b) _mm256_cmp_ps((a), (b), _CMP_LT_OQ)
#define V_GT(a, b) _mm256_cmp_ps((a), (b), _CMP_GT_OQ)
#define V_GE(a, b) _mm256_cmp_ps((a), (b), _CMP_GE_OQ)
#define V_EQ(a, b) _mm256_cmp_ps((a), (b), _CMP_EQ_OQ)
#define V_NLE(a, b) _mm256_cmp_ps((a), (b), _CMP_NLE_UQ)
#define V_NGE(a, b) _mm256_cmp_ps((a), (b), _CMP_NGE_UQ)
#define VM_OR(a, b) _mm256_or_ps((a), (b))
#define VM_ANY(m) (_mm256_movemask_ps(m) != 0)
#define V_SEL(m, a, b) _mm256_blendv_ps((b), (a), (m))
#define V_AS_I(v) _mm256_castps_si256(v)
#define I_AS_V(i) _mm256_castsi256_ps(i)
#define I_SET1(s) _mm256_set1_epi32(s)
#define I_ADD(a, b) _mm256_add_epi32((a), (b))
#define I_SUB(a, b) _mm256_sub_epi32((a), (b))
#define I_AND(a, b) _mm256_and_si256((a), (b))
#define I_OR(a, b) _mm256_or_si256((a), (b))
#define I_XOR(a, b) _mm256_xor_si256((a), (b))
#define I_SLLI(a, n) _mm256_slli_epi32((a), (n))
#define I_SRLI(a, n) _mm256_srli_epi32((a), (n))
#include "vmath_tmpl.h"

/* ---- double: 4 lanes ---- */
#define TMPL_F64 1
#define TMPL_SFX avx2_f64
#define TMPL_TARGET __attribute__((target("avx2,fma")))
#define T double
#define V __m256d
#define VI __m256i
#define VM __m256d
#define VL 4
#define V_LOAD(p) _mm256_loadu_pd(p)
#define V_STORE(p, v) _mm256_storeu_pd((p), (v))
#define V_LOADN(p, n) _mm256_maskload_pd((p), tail_pd(n))
#define V_STOREN(p, v, n) _mm256_maskstore_pd((p), tail_pd(n), (v))
#define V_SET1(s) _mm256_set1_pd(s)
#define V_ADD(a, b) _mm256_add_pd((a), (b))
#define V_SUB(a, b) _mm256_sub_pd((a), (b))
#define V_MUL(a, b) _mm256_mul_pd((a), (b))
#define V_DIV(a, b) _mm256_div_pd((a), (b))
#define V_SQRT(a) _mm256_sqrt_pd(a)
#define V_FMA(a, b, c) _mm256_fmadd_pd((a), (b), (c))
#define V_FNMA(a, b, c) _mm256_fnmadd_pd((a), (b), (c))
#define V_MAX(a, b) _mm256_max_pd((a), (b))
#define V_MIN(a, b) _mm256_min_pd((a), (b))
#define V_AND(a, b) _mm256_and_pd((a), (b))
#define V_OR(a, b) _mm256_or_pd((a), (b))
#define V_XOR(a, b) _mm256_xor_pd((a), (b))
#define V_ANDNOT(a, b) _mm256_andnot_pd((a), (b))
#define V_LT(a, b) _mm256_cmp_pd((a), (b), _CMP_LT_OQ)
#define V_GT(a, b) _mm256_cmp_pd((a), (b), _CMP_GT_OQ)
#define V_GE(a, b) _mm256_cmp_pd((a), (b), _CMP_GE_OQ)
#define V_EQ(a, b) _mm256_cmp_pd((a), (b), _CMP_EQ_OQ)
#define V_NLE(a, b) _mm256_cmp_pd((a), (b), _CMP_NLE_UQ)
#define V_NGE(a, b) _mm256_cmp_pd((a), (b), _CMP_NGE_UQ)
#define VM_OR(a, b) _mm256_or_pd((a), (b))
#define VM_ANY(m) (_mm256_movemask_pd(m) != 0)
#define V_SEL(m, a, b) _mm256_blendv_pd((b), (a), (m))
#define V_AS_I(v) _mm256_castpd_si256(v)
#define I_AS_V(i) _mm256_castsi256_pd(i)
#define I_SET1(s) _mm256_set1_epi64x(s)
#define I_ADD(a, b) _mm256_add_epi64((a), (b))
#define I_SUB(a, b) _mm256_sub_epi64((a), (b))
#define I_AND(a, b) _mm256_and_si256((a), (b))
#define I_OR(a, b) _mm256_or_si256((a), (b))
#define I_XOR(a, b) _mm256_xor_si256((a), (b))
#define I_SLLI(a, n) _mm256_slli_epi64((a), (n))
#define I_SRLI(a, n) _mm256_srli_epi64((a), (n))
#include "vmath_tmpl.h"

const tgi_vmath_impl tgi_vmath_impl_avx2 = TGI_VMATH_IMPL(avx2);

#else
typedef int tgi_vmath_avx2_unused; /* ISO C wants a non-empty translation unit */
#endif
