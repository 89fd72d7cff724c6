/* SPDX-License-Identifier: MIT */
/* gemm_pack_x86.h: transposing packs with 256-bit AVX2 shuffles, for gemm_avx2.c and
 * gemm_avx512.c (AVX-512F implies AVX2). No include guard: included once per kernel
 * file, which defines PACKX_TARGET (the function attribute) and PACKX_SFX (a name
 * suffix) and has <immintrin.h> (or SIMDe) included.
 *
 * Packing A = row-major [m,k] (forms A B and A B^T) and B^T (forms A B^T, A^T B^T)
 * turns rows into columns. One element at a time that costs 10-20% of a 512^3 GEMM;
 * here full panels go through 8x8 (f32) and 4x4 (f64) register transposes. The
 * functions take the panel width as an argument that is a constant at each call
 * site, so the loops unroll. Partial panels and k tails stay scalar. */

#define PACKX_CAT2(a, b) a##b
#define PACKX_CAT(a, b) PACKX_CAT2(a, b)
#define PACKX(name) PACKX_CAT(name, PACKX_SFX)

/* In-register transpose of the 8x8 float block x[0..7] (x[i] = row i). */
PACKX_TARGET static inline void PACKX(transpose8_ps_)(__m256 x[8])
{
    __m256 t[8], u[8];
    for (int i = 0; i < 4; i++) {
        t[2 * i] = _mm256_unpacklo_ps(x[2 * i], x[2 * i + 1]);
        t[2 * i + 1] = _mm256_unpackhi_ps(x[2 * i], x[2 * i + 1]);
    }
    for (int h = 0; h < 2; h++) {
        u[4 * h + 0] = _mm256_shuffle_ps(t[4 * h + 0], t[4 * h + 2], 0x44);
        u[4 * h + 1] = _mm256_shuffle_ps(t[4 * h + 0], t[4 * h + 2], 0xEE);
        u[4 * h + 2] = _mm256_shuffle_ps(t[4 * h + 1], t[4 * h + 3], 0x44);
        u[4 * h + 3] = _mm256_shuffle_ps(t[4 * h + 1], t[4 * h + 3], 0xEE);
    }
    for (int q = 0; q < 4; q++) {
        x[q] = _mm256_permute2f128_ps(u[q], u[q + 4], 0x20);
        x[q + 4] = _mm256_permute2f128_ps(u[q], u[q + 4], 0x31);
    }
}

/* In-register transpose of the 4x4 double block x[0..3]. */
PACKX_TARGET static inline void PACKX(transpose4_pd_)(__m256d x[4])
{
    const __m256d t0 = _mm256_unpacklo_pd(x[0], x[1]), t1 = _mm256_unpackhi_pd(x[0], x[1]);
    const __m256d t2 = _mm256_unpacklo_pd(x[2], x[3]), t3 = _mm256_unpackhi_pd(x[2], x[3]);
    x[0] = _mm256_permute2f128_pd(t0, t2, 0x20);
    x[1] = _mm256_permute2f128_pd(t1, t3, 0x20);
    x[2] = _mm256_permute2f128_pd(t0, t2, 0x31);
    x[3] = _mm256_permute2f128_pd(t1, t3, 0x31);
}

/* f32: MR rows of A (row stride lda) -> out[p*MR + r], MR in {4, 6, 8, 12, 16, ...}
 * (a multiple of 4, or 6). Eight k steps at a time, rows in groups of 8 transposed
 * together; a last group of 4 or 6 rows is padded with zero rows and stored narrower. */
PACKX_TARGET static inline __attribute__((always_inline)) void
PACKX(pack_a_rows_f32_)(const int MR, int64_t kc, const float *a, int64_t lda, float *out)
{
    int64_t p = 0;
    for (; p + 8 <= kc; p += 8) {
        for (int g = 0; g < MR; g += 8) {
            const int rows = MR - g < 8 ? MR - g : 8;
            __m256 x[8];
            for (int r = 0; r < 8; r++)
                x[r] = r < rows ? _mm256_loadu_ps(a + (g + r) * lda + p) : _mm256_setzero_ps();
            PACKX(transpose8_ps_)(x);
            for (int q = 0; q < 8; q++) {
                float *o = out + (p + q) * MR + g;
                if (rows == 8) {
                    _mm256_storeu_ps(o, x[q]);
                } else { /* 4 or 6 rows; no masked store, which is slow on AMD */
                    _mm_storeu_ps(o, _mm256_castps256_ps128(x[q]));
                    if (rows == 6) _mm_storel_pi((__m64 *)(o + 4), _mm256_extractf128_ps(x[q], 1));
                }
            }
        }
    }
    for (; p < kc; p++)
        for (int r = 0; r < MR; r++) out[p * MR + r] = a[r * lda + p];
}

/* f64: MR rows of A -> out[p*MR + r], MR even: rows in groups of 4 (4x4 transpose),
 * a last pair by unpacking; four k steps at a time. */
PACKX_TARGET static inline __attribute__((always_inline)) void
PACKX(pack_a_rows_f64_)(const int MR, int64_t kc, const double *a, int64_t lda, double *out)
{
    int64_t p = 0;
    for (; p + 4 <= kc; p += 4) {
        int g = 0;
        for (; g + 4 <= MR; g += 4) {
            __m256d x[4];
            for (int r = 0; r < 4; r++) x[r] = _mm256_loadu_pd(a + (g + r) * lda + p);
            PACKX(transpose4_pd_)(x);
            for (int q = 0; q < 4; q++) _mm256_storeu_pd(out + (p + q) * MR + g, x[q]);
        }
        if (g < MR) { /* two rows left */
            const __m256d r0 = _mm256_loadu_pd(a + g * lda + p);
            const __m256d r1 = _mm256_loadu_pd(a + (g + 1) * lda + p);
            const __m256d lo = _mm256_unpacklo_pd(r0, r1); /* (r0, r1) at p, p+2 */
            const __m256d hi = _mm256_unpackhi_pd(r0, r1); /* (r0, r1) at p+1, p+3 */
            double *o = out + p * MR + g;
            _mm_storeu_pd(o, _mm256_castpd256_pd128(lo));
            _mm_storeu_pd(o + MR, _mm256_castpd256_pd128(hi));
            _mm_storeu_pd(o + 2 * MR, _mm256_extractf128_pd(lo, 1));
            _mm_storeu_pd(o + 3 * MR, _mm256_extractf128_pd(hi, 1));
        }
    }
    for (; p < kc; p++)
        for (int r = 0; r < MR; r++) out[p * MR + r] = a[r * lda + p];
}

/* NR columns of op(B) = B^T (column j at b + j*ldb) -> out[p*NR + j], NR a multiple
 * of W: NR/W register transposes of W x W per W k steps. Defined once for both types
 * (f32: 8 x 8, f64: 4 x 4). */
#define PACKX_DEF_B_COLS(name, T, VT, W, LOADU, STOREU, TRANSPOSE)                       \
    PACKX_TARGET static inline __attribute__((always_inline)) void PACKX(name)(          \
        const int NR, int64_t kc, const T *b, int64_t ldb, T *out)                       \
    {                                                                                    \
        int64_t p = 0;                                                                   \
        for (; p + W <= kc; p += W) {                                                    \
            for (int h = 0; h < NR; h += W) {                                            \
                VT x[W];                                                                 \
                for (int j = 0; j < W; j++) x[j] = LOADU(b + (h + j) * ldb + p);         \
                TRANSPOSE(x);                                                            \
                for (int q = 0; q < W; q++) STOREU(out + (p + q) * NR + h, x[q]);        \
            }                                                                            \
        }                                                                                \
        for (; p < kc; p++)                                                              \
            for (int j = 0; j < NR; j++) out[p * NR + j] = b[j * ldb + p];               \
    }
PACKX_DEF_B_COLS(pack_b_cols_f32_, float, __m256, 8, _mm256_loadu_ps, _mm256_storeu_ps,
                 PACKX(transpose8_ps_))
PACKX_DEF_B_COLS(pack_b_cols_f64_, double, __m256d, 4, _mm256_loadu_pd, _mm256_storeu_pd,
                 PACKX(transpose4_pd_))
#undef PACKX_DEF_B_COLS

#undef PACKX
#undef PACKX_CAT
#undef PACKX_CAT2
#undef PACKX_TARGET
#undef PACKX_SFX
