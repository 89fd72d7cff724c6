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

/* the vocabulary (vmath_x86.h), with AVX2's tails, comparisons and blends; 8 floats
 * or 4 doubles per register */
#define TMPL_ISA avx2
#define TMPL_TARGET __attribute__((target("avx2,fma")))
#define V TMPL_PICK(__m256, __m256d)
#define VI __m256i
#define VM V
#define VL TMPL_PICK(8, 4)
#define X86_P _mm256
#define X86_SI si256
#define X86_SET1I TMPL_PICK(epi32, epi64x)
#define V_LOADN(p, n) XV(maskload)((p), XV_CAT(tail_, X86_T, )(n))
#define V_STOREN(p, v, n) XV(maskstore)((p), XV_CAT(tail_, X86_T, )(n), (v))
#define V_CMP(a, b, c) XV(cmp)((a), (b), (c))
#define VM_OR(a, b) V_OR((a), (b))
#define VM_ANY(m) (XV(movemask)(m) != 0)
#define V_SEL(m, a, b) XV(blendv)((b), (a), (m))
#include "vmath_x86.h" /* both element types, and tgi_vmath_impl_avx2 */

#else
typedef int tgi_vmath_avx2_unused; /* ISO C wants a non-empty translation unit */
#endif
