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

/* the vocabulary (vmath_x86.h), with AVX-512's masked tails, comparisons into mask
 * registers and blends; 16 floats or 8 doubles per register */
#define TMPL_ISA avx512
#define TMPL_TARGET TGI_VM_AVX512_TARGET
#define V TMPL_PICK(__m512, __m512d)
#define VI __m512i
#define VM TMPL_PICK(tgi_vm_mask16, tgi_vm_mask8)
#define VL TMPL_PICK(16, 8)
#define X86_P _mm512
#define X86_SI si512
#define X86_SET1I TMPL_PICK(epi32, epi64)
#if defined(TGI_VMATH_EMULATE_AVX512)
#define V_LOADN(p, n) TGI_VM_LOADN(V, p, n)
#define V_STOREN(p, v, n) TGI_VM_STOREN(V, p, v, n)
#else
#define V_LOADN(p, n) XV(maskz_loadu)((VM)((1u << (n)) - 1u), (p))
#define V_STOREN(p, v, n) XV(mask_storeu)((p), (VM)((1u << (n)) - 1u), (v))
#endif
#define V_CMP(a, b, c) XV_CAT(XV(cmp), _mask, )((a), (b), (c))
#define VM_OR(a, b) ((VM)((a) | (b)))
#define VM_ANY(m) ((m) != 0)
#define V_SEL(m, a, b) XV(mask_blend)((m), (b), (a))
#include "vmath_x86.h" /* both element types, and tgi_vmath_impl_avx512 */

#else
typedef int tgi_vmath_avx512_unused; /* ISO C wants a non-empty translation unit */
#endif
