/* SPDX-License-Identifier: MIT */
/* gemm_avx2.c: the AVX2+FMA GEMM kernel set (Haswell and later, Zen 1-5). Compiled
 * into every x86-64 build with function-level target attributes, so the library
 * needs no -mavx2; gemm.c selects it at run time when the CPU has AVX2 and FMA.
 *
 * Register tiles (16 ymm registers):
 *   f32: 6 x 16  = 12 accumulators (6 rows x 2 ymm of 8 floats), 2 for the packed B
 *        row, 1 for the broadcast A value: 15 registers. Per k step: 2 loads,
 *        6 broadcasts, 12 FMAs.
 *   f64: 6 x 8   = 12 accumulators (6 rows x 2 ymm of 4 doubles), same shape.
 * Blocking: B micro-panel kc x 16 (f32: 16 KiB at kc = 256) stays in the 32 KiB L1
 * while MR x kc A micro-panels stream from the mc x kc A block in L2 (f32 mc = 144:
 * 144 KiB; f64 mc = 72: 144 KiB of a 512 KiB L2); the kc x nc B panel lives in L3. */
#if defined(__x86_64__)

#include <immintrin.h>

#include "gemm_kern.h"

#define AVX2_TARGET __attribute__((target("avx2,fma")))

/* transposing packs for full panels (see gemm_pack_x86.h) */
#define PACKX_TARGET AVX2_TARGET
#define PACKX_SFX avx2
#include "gemm_pack_x86.h"

/* ---------------------------------------------------------------------------------
 * Kernels (gemm_tmpl.h) */

#define TMPL_T float
#define TMPL_SFX avx2_f32
#define TMPL_TARGET AVX2_TARGET
#define TMPL_V __m256
#define TMPL_VL 8
#define TMPL_MR 6
#define TMPL_NV 2
#define TMPL_ZERO() _mm256_setzero_ps()
#define TMPL_LOAD(p) _mm256_loadu_ps(p)
#define TMPL_STORE(p, v) _mm256_storeu_ps((p), (v))
#define TMPL_BCAST(p) _mm256_broadcast_ss(p)
#define TMPL_FMA(a, b, c) _mm256_fmadd_ps((a), (b), (c))
#define TMPL_ADD(a, b) _mm256_add_ps((a), (b))
#define TMPL_PACK_A_ROWS(kc, a, lda, out) pack_a_rows_f32_avx2(6, kc, a, lda, out)
#define TMPL_PACK_B_COLS(kc, b, ldb, out) pack_b_cols_f32_avx2(16, kc, b, ldb, out)
#include "gemm_tmpl.h"

#define TMPL_T double
#define TMPL_SFX avx2_f64
#define TMPL_TARGET AVX2_TARGET
#define TMPL_V __m256d
#define TMPL_VL 4
#define TMPL_MR 6
#define TMPL_NV 2
#define TMPL_ZERO() _mm256_setzero_pd()
#define TMPL_LOAD(p) _mm256_loadu_pd(p)
#define TMPL_STORE(p, v) _mm256_storeu_pd((p), (v))
#define TMPL_BCAST(p) _mm256_broadcast_sd(p)
#define TMPL_FMA(a, b, c) _mm256_fmadd_pd((a), (b), (c))
#define TMPL_ADD(a, b) _mm256_add_pd((a), (b))
#define TMPL_PACK_A_ROWS(kc, a, lda, out) pack_a_rows_f64_avx2(6, kc, a, lda, out)
#define TMPL_PACK_B_COLS(kc, b, ldb, out) pack_b_cols_f64_avx2(8, kc, b, ldb, out)
#include "gemm_tmpl.h"

const tgi_gemm_impl tgi_gemm_impl_avx2 = {
    "avx2",
    {6, 16, 1536, 256, 240, tgi_ukr_avx2_f32, tgi_pack_a_avx2_f32, tgi_pack_b_avx2_f32,
     tgi_direct_avx2_f32,
     tgi_ukr_pa_avx2_f32, NULL, NULL},
    {6, 8, 1536, 256, 120, tgi_ukr_avx2_f64, tgi_pack_a_avx2_f64, tgi_pack_b_avx2_f64,
     tgi_direct_avx2_f64,
     tgi_ukr_pa_avx2_f64, NULL, NULL},
};

#else
typedef int tgi_gemm_avx2_unused; /* ISO C wants a non-empty translation unit */
#endif
