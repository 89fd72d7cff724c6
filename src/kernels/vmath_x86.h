/* SPDX-License-Identifier: MIT */
/* vmath_x86.h: the x86 vmath kernel sets, AVX2 (vmath_avx2.c) and AVX-512
 * (vmath_avx512.c): the vocabulary of vmath_tmpl.h in intrinsics, written once for
 * both instruction sets and both element types, and its instantiations. The
 * intrinsics' names are pasted together from the includer's
 *   X86_P    the register width: _mm256 or _mm512
 *   X86_SI   the integer register's suffix: si256 or si512
 *   X86_SET1I  the suffix of the integer broadcast, written with TMPL_PICK (epi32 for
 *            floats; epi64x in AVX2, epi64 in AVX-512 for doubles)
 * and, in each instantiation of vmath_tmpl.h, X86_T (ps for float, pd for double) and
 * X86_I (epi32 or epi64, integer lanes of the element's width). The includer defines
 * what differs between the two instruction sets: V_LOADN and V_STOREN (masked tails),
 * V_CMP(a, b, predicate), VM_OR, VM_ANY and V_SEL. Included once, with TMPL_KEEP_VOCAB
 * defined, so the vocabulary outlives each instantiation.
 *
 * It then instantiates vmath_tmpl.h for float and double with the suffixes
 * TMPL_ISA_f32 and TMPL_ISA_f64 (TMPL_ISA: avx2 or avx512) and defines the kernel set
 * tgi_vmath_impl_TMPL_ISA. */
#define TMPL_KEEP_VOCAB
#define X86_T TMPL_PICK(ps, pd)
#define X86_I TMPL_PICK(epi32, epi64)
#define XV_CAT2(a, b, c) a##b##c
#define XV_CAT(a, b, c) XV_CAT2(a, b, c)
#define XV(op) XV_CAT(X86_P, _##op##_, X86_T)  /* e.g. _mm256_add_ps */
#define XI(op) XV_CAT(X86_P, _##op##_, X86_I)  /* e.g. _mm256_add_epi32 */
#define XS(op) XV_CAT(X86_P, _##op##_, X86_SI) /* e.g. _mm256_and_si256 */

#define V_LOAD(p) XV(loadu)(p)
#define V_STORE(p, v) XV(storeu)((p), (v))
#define V_SET1(s) XV(set1)(s)
#define V_ADD(a, b) XV(add)((a), (b))
#define V_SUB(a, b) XV(sub)((a), (b))
#define V_MUL(a, b) XV(mul)((a), (b))
#define V_DIV(a, b) XV(div)((a), (b))
#define V_SQRT(a) XV(sqrt)(a)
#define V_FMA(a, b, c) XV(fmadd)((a), (b), (c))
#define V_FNMA(a, b, c) XV(fnmadd)((a), (b), (c))
#define V_MAX(a, b) XV(max)((a), (b))
#define V_MIN(a, b) XV(min)((a), (b))
#define V_AND(a, b) XV(and)((a), (b))
#define V_OR(a, b) XV(or)((a), (b))
#define V_XOR(a, b) XV(xor)((a), (b))
#define V_ANDNOT(a, b) XV(andnot)((a), (b))
#define V_LT(a, b) V_CMP((a), (b), _CMP_LT_OQ)
#define V_GT(a, b) V_CMP((a), (b), _CMP_GT_OQ)
#define V_GE(a, b) V_CMP((a), (b), _CMP_GE_OQ)
#define V_EQ(a, b) V_CMP((a), (b), _CMP_EQ_OQ)
#define V_NLE(a, b) V_CMP((a), (b), _CMP_NLE_UQ)
#define V_NGE(a, b) V_CMP((a), (b), _CMP_NGE_UQ)
#define V_AS_I(v) XV_CAT(X86_P, _cast, XV_CAT(X86_T, _, X86_SI))(v)  /* _mm256_castps_si256 */
#define I_AS_V(i) XV_CAT(X86_P, _cast, XV_CAT(X86_SI, _, X86_T))(i)  /* _mm256_castsi256_ps */
#define I_SET1(s) XV_CAT(X86_P, _set1_, X86_SET1I)(s)
#define I_ADD(a, b) XI(add)((a), (b))
#define I_SUB(a, b) XI(sub)((a), (b))
#define I_AND(a, b) XS(and)((a), (b))
#define I_OR(a, b) XS(or)((a), (b))
#define I_XOR(a, b) XS(xor)((a), (b))
#define I_SLLI(a, n) XI(slli)((a), (n))
#define I_SRLI(a, n) XI(srli)((a), (n))

#define TMPL_F64 0
#define TMPL_SFX XV_CAT(TMPL_ISA, _f32, )
#include "vmath_tmpl.h"
#define TMPL_F64 1
#define TMPL_SFX XV_CAT(TMPL_ISA, _f64, )
#include "vmath_tmpl.h"

#define XV_IMPL(isa) TGI_VMATH_IMPL(isa)
const tgi_vmath_impl XV_CAT(tgi_vmath_impl_, TMPL_ISA, ) = XV_IMPL(TMPL_ISA);
