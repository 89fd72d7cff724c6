/* SPDX-License-Identifier: MIT */
/* gemm_avx512.c: the AVX-512 GEMM kernel set (Skylake-X and later, Zen 4/5).
 * Compiled into every x86-64 build with function-level target attributes; gemm.c
 * selects it at run time when the CPU (and OS) support AVX-512 F, VL and DQ.
 *
 * Register tiles (32 zmm registers):
 *   f32: 12 x 32 = 24 accumulators (12 rows x 2 zmm of 16 floats), 2 for the packed B
 *        row, 1 for the broadcast A value: 27 registers. Per k step: 2 loads,
 *        12 broadcasts, 24 FMAs.
 *   f64: 12 x 16 = 24 accumulators (12 rows x 2 zmm of 8 doubles), same shape.
 * Blocking: kc = 192 keeps the kc x NR B micro-panel at 24 KiB (L1 is 32-48 KiB);
 * the mc x kc A block is 180 KiB in L2 (f32 mc = 240, f64 mc = 120).
 *
 * Verification build: with -DTGI_GEMM_EMULATE_AVX512 the intrinsics come from SIMDe
 * (Debian libsimde-dev) instead of the compiler and gemm.c treats AVX-512 as
 * present, so the kernels' logic can be tested on a CPU without AVX-512. Never set
 * in the real build. */
#if defined(__x86_64__)

#if defined(TGI_GEMM_EMULATE_AVX512)
#define SIMDE_ENABLE_NATIVE_ALIASES
#include <simde/x86/avx512.h>
#define TGI_AVX512_TARGET
#else
#include <immintrin.h>
#define TGI_AVX512_TARGET __attribute__((target("avx512f,avx512vl,avx512dq,fma")))
#endif

#include "gemm_kern.h"

/* transposing packs for full panels (see gemm_pack_x86.h) */
#define PACKX_TARGET TGI_AVX512_TARGET
#define PACKX_SFX avx512
#include "gemm_pack_x86.h"

#define TMPL_T float
#define TMPL_SFX avx512_f32
#define TMPL_TARGET TGI_AVX512_TARGET
#define TMPL_V __m512
#define TMPL_VL 16
#define TMPL_MR 12
#define TMPL_NV 2
#define TMPL_ZERO() _mm512_setzero_ps()
#define TMPL_LOAD(p) _mm512_loadu_ps(p)
#define TMPL_STORE(p, v) _mm512_storeu_ps((p), (v))
#define TMPL_BCAST(p) _mm512_set1_ps(*(p))
#define TMPL_FMA(a, b, c) _mm512_fmadd_ps((a), (b), (c))
#define TMPL_ADD(a, b) _mm512_add_ps((a), (b))
#define TMPL_PACK_A_ROWS(kc, a, lda, out) pack_a_rows_f32_avx512(12, kc, a, lda, out)
#define TMPL_PACK_B_COLS(kc, b, ldb, out) pack_b_cols_f32_avx512(32, kc, b, ldb, out)
#include "gemm_tmpl.h"

#define TMPL_T double
#define TMPL_SFX avx512_f64
#define TMPL_TARGET TGI_AVX512_TARGET
#define TMPL_V __m512d
#define TMPL_VL 8
#define TMPL_MR 12
#define TMPL_NV 2
#define TMPL_ZERO() _mm512_setzero_pd()
#define TMPL_LOAD(p) _mm512_loadu_pd(p)
#define TMPL_STORE(p, v) _mm512_storeu_pd((p), (v))
#define TMPL_BCAST(p) _mm512_set1_pd(*(p))
#define TMPL_FMA(a, b, c) _mm512_fmadd_pd((a), (b), (c))
#define TMPL_ADD(a, b) _mm512_add_pd((a), (b))
#define TMPL_PACK_A_ROWS(kc, a, lda, out) pack_a_rows_f64_avx512(12, kc, a, lda, out)
#define TMPL_PACK_B_COLS(kc, b, ldb, out) pack_b_cols_f64_avx512(16, kc, b, ldb, out)
#include "gemm_tmpl.h"

const tgi_gemm_impl tgi_gemm_impl_avx512 = {
    "avx512",
    {12, 32, 240, 192, 4096, tgi_ukr_avx512_f32, tgi_pack_a_avx512_f32,
     tgi_pack_b_avx512_f32, tgi_direct_avx512_f32,
     tgi_ukr_pa_avx512_f32},
    {12, 16, 120, 192, 4096, tgi_ukr_avx512_f64, tgi_pack_a_avx512_f64,
     tgi_pack_b_avx512_f64, tgi_direct_avx512_f64,
     tgi_ukr_pa_avx512_f64},
};

#else
typedef int tgi_gemm_avx512_unused; /* ISO C wants a non-empty translation unit */
#endif
