/* SPDX-License-Identifier: MIT */
/* gemm_avx512.c: the AVX-512 GEMM kernel set (Skylake-X and later, Zen 4/5).
 * Compiled into every x86-64 build with function-level target attributes; gemm.c
 * selects it at run time when the CPU (and OS) support AVX-512 F, VL and DQ.
 *
 * Two register tiles per type (32 zmm registers), each with 24 accumulators:
 *   direct path (small and thin shapes): 12 rows x 2 zmm (f32 12 x 32, f64 12 x 16),
 *        + 2 for the B row + 1 broadcast = 27 registers; per k step 2 loads,
 *        12 broadcasts, 24 FMAs. The narrow tile wastes less on n = 10.
 *   blocked path: 6 rows x 4 zmm (f32 6 x 64, f64 6 x 32), + 4 + 1 = 29 registers;
 *        per k step 4 loads, 6 broadcasts, 24 FMAs: 10 loads per 24 FMAs instead of
 *        14, 3-8% faster at n = 1024 on Sapphire Rapids (docs/gemm.md); also on the
 *        direct path where it pads no more columns (gemm.c's direct_wide).
 *   thin products (n <= 16 f32, n <= 8 f64; both paths): 16 rows x 1 zmm, 16
 *        accumulators; n = 10 fills 10 of 16 lanes instead of 10 of 32 (f32 C[m,10]:
 *        1.3-1.5x faster).
 * Blocking of the blocked path (Sapphire Rapids: 48 KiB L1d, 2 MiB L2): the 6 x kc
 * A micro-panel (f32 kc = 512: 12 KiB) stays in L1 while the kc x nc B block (f32
 * 512 x 512: 1 MiB, f64 256 x 384: 768 KiB) streams from L2; the A block (mc = 1536
 * rows) lives in L3, so for m, n <= 1536 each operand is packed once per k block.
 * The direct path keeps kc = 192 (its kc x 32 B slice, 24 KiB, stays in L1).
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

/* Each type's vocabulary is kept (TMPL_KEEP_VOCAB) for its second tile shape. */
#define TMPL_T float
#define TMPL_TARGET TGI_AVX512_TARGET
#define TMPL_V __m512
#define TMPL_VL 16
#define TMPL_ZERO() _mm512_setzero_ps()
#define TMPL_LOAD(p) _mm512_loadu_ps(p)
#define TMPL_STORE(p, v) _mm512_storeu_ps((p), (v))
#define TMPL_BCAST(p) _mm512_set1_ps(*(p))
#define TMPL_FMA(a, b, c) _mm512_fmadd_ps((a), (b), (c))
#define TMPL_ADD(a, b) _mm512_add_ps((a), (b))
#define TMPL_PACK_A_ROWS(kc, a, lda, out) pack_a_rows_f32_avx512(TMPL_MR, kc, a, lda, out)
#define TMPL_PACK_B_COLS(kc, b, ldb, out) pack_b_cols_f32_avx512(TMPL_NR, kc, b, ldb, out)
#define TMPL_KEEP_VOCAB
#define TMPL_SFX avx512_f32
#define TMPL_MR 12
#define TMPL_NV 2
#include "gemm_tmpl.h"
#define TMPL_SFX avx512w_f32
#define TMPL_MR 6
#define TMPL_NV 4
#include "gemm_tmpl.h"
#undef TMPL_KEEP_VOCAB
#define TMPL_SFX avx512t_f32
#define TMPL_MR 16
#define TMPL_NV 1
#include "gemm_tmpl.h"

#define TMPL_T double
#define TMPL_TARGET TGI_AVX512_TARGET
#define TMPL_V __m512d
#define TMPL_VL 8
#define TMPL_ZERO() _mm512_setzero_pd()
#define TMPL_LOAD(p) _mm512_loadu_pd(p)
#define TMPL_STORE(p, v) _mm512_storeu_pd((p), (v))
#define TMPL_BCAST(p) _mm512_set1_pd(*(p))
#define TMPL_FMA(a, b, c) _mm512_fmadd_pd((a), (b), (c))
#define TMPL_ADD(a, b) _mm512_add_pd((a), (b))
#define TMPL_PACK_A_ROWS(kc, a, lda, out) pack_a_rows_f64_avx512(TMPL_MR, kc, a, lda, out)
#define TMPL_PACK_B_COLS(kc, b, ldb, out) pack_b_cols_f64_avx512(TMPL_NR, kc, b, ldb, out)
#define TMPL_KEEP_VOCAB
#define TMPL_SFX avx512_f64
#define TMPL_MR 12
#define TMPL_NV 2
#include "gemm_tmpl.h"
#define TMPL_SFX avx512w_f64
#define TMPL_MR 6
#define TMPL_NV 4
#include "gemm_tmpl.h"
#undef TMPL_KEEP_VOCAB
#define TMPL_SFX avx512t_f64
#define TMPL_MR 16
#define TMPL_NV 1
#include "gemm_tmpl.h"

/* a kernel set from one instantiation: tile, blocks (mc, kc, nc), blocked, thin */
#define AVX512_KERN(sfx, mr, nr, mc, kc, nc, blocked, thin)                              \
    {mr, nr, mc, kc, nc, tgi_ukr_##sfx, tgi_pack_a_##sfx, tgi_pack_b_##sfx,              \
     tgi_direct_##sfx, tgi_ukr_pa_##sfx, blocked, thin}

/* the blocked path's wide tiles and the thin products' narrow ones (see the top) */
static const tgi_gemm_kern avx512w_f32 = AVX512_KERN(avx512w_f32, 6, 64, 1536, 512, 512, NULL, NULL);
static const tgi_gemm_kern avx512w_f64 = AVX512_KERN(avx512w_f64, 6, 32, 1536, 256, 384, NULL, NULL);
static const tgi_gemm_kern avx512t_f32 = AVX512_KERN(avx512t_f32, 16, 16, 1536, 384, 512, NULL, NULL);
static const tgi_gemm_kern avx512t_f64 = AVX512_KERN(avx512t_f64, 16, 8, 1536, 384, 512, NULL, NULL);

const tgi_gemm_impl tgi_gemm_impl_avx512 = {
    "avx512",
    AVX512_KERN(avx512_f32, 12, 32, 240, 192, 4096, &avx512w_f32, &avx512t_f32),
    AVX512_KERN(avx512_f64, 12, 16, 120, 192, 4096, &avx512w_f64, &avx512t_f64),
};

#else
typedef int tgi_gemm_avx512_unused; /* ISO C wants a non-empty translation unit */
#endif
