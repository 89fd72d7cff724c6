/* SPDX-License-Identifier: MIT */
/* gemm_tiny.h: the GEMM's path for tiny products, inline, for src/kernels/gemm.c's
 * entry points and for ops whose every product may be tiny (ops/matmul.c's
 * linear layer calls tiny_gemm_float itself, skipping the entry's arguments and
 * dispatch). Internal. Contract: gemm.h's, for m, n > 0 and m n k <= TINY_GEMM_WORK. */
#ifndef TG_GEMM_TINY_H
#define TG_GEMM_TINY_H

#include <stdint.h>
#include <string.h>

/* 0 while tests force a kernel set (then every product goes to that set), else 1;
 * defined in gemm.c. */
int tgi_gemm_tiny_ok(void);

/* Tiny products (m n k <= TINY_GEMM_WORK, e.g. the 4x2x4 layers of an XOR
 * network): in the caller's thread, with no workspace, dispatch or blocking,
 * which would cost more than the arithmetic. C is built in 16-byte vectors of VL
 * columns (GCC vector extensions: SSE2 on any x86-64, NEON on arm64), four rows
 * at a time: for each p, one vector of op(B)'s row p (read in place when B is not
 * transposed and the VL columns are there, or, for the last 2 or 3 columns of B
 * not transposed, the first two f32 in one 8-byte load; else gathered lane by
 * lane; zeros after column n) is multiplied by the four rows' A(i,p). When more
 * than four rows would gather the same vectors, op(B) is gathered once into a k x
 * ceil(n/VL) block of vectors on the stack (at most 512) instead. A single
 * column C[m,1] that is contiguous is computed as the row C^T = op(B)^T op(A)^T,
 * so that its m values fill the vectors. Every C(i,j) is 0 + A(i,0) B(0,j) +
 * A(i,1) B(1,j) + ... in order of p, each product rounded then added (no FMA),
 * then added to C when accumulating: the same bits as the plain scalar loop,
 * whatever nthreads is. */
#define TINY_GEMM_WORK 512
#define TINY_INLINE static inline __attribute__((always_inline))
#define TINY_GEMM(T, VT)                                                                   \
    /* lanes [0, w) of op(B)'s row p (op(B)(p,j) = B[p sbp + j sbj]), zeros after;       \
     * G = 0: the whole vector, contiguous (w not looked at); G = 1: lane by lane;         \
     * G = 2: all VL lanes, one by one; G = 3: w < VL contiguous lanes (sbj = 1), the      \
     * first pair of floats in one load */                                                 \
    TINY_INLINE VT tiny_brow_##T(const int G, const T *B, int64_t sbp, int64_t sbj,        \
                                 int64_t p, int64_t w)                                     \
    {                                                                                      \
        VT v = {0};                                                                        \
        const T *r = B + p * sbp;                                                          \
        if (G == 0)                                                                        \
            memcpy(&v, r, sizeof v);                                                       \
        else if (G == 3 && sizeof(VT) / sizeof(T) == 4 && w >= 2) {                       \
            memcpy(&v, r, 2 * sizeof(T));                                                  \
            if (w == 3) /* (a lane 2: f32 only) */                                         \
                v[2 % (sizeof(VT) / sizeof(T))] = r[2];                                    \
        } else if (G == 3)                                                                 \
            v[0] = r[0];                                                                   \
        else /* a constant trip count: unrolled, no loop made into a call */               \
            for (int q = 0; q < (int)(sizeof(VT) / sizeof(T)); q++)                       \
                if (G == 2 || q < w) v[q] = r[q * sbj];                                    \
        return v;                                                                          \
    }                                                                                      \
    /* c[0, w) = s (accumulate: c + s) */                                                  \
    TINY_INLINE void tiny_put_##T(T *c, VT s, int64_t w, int accumulate)                   \
    {                                                                                      \
        if (w == (int64_t)(sizeof(VT) / sizeof(T))) {                                      \
            if (accumulate) {                                                              \
                VT v;                                                                      \
                memcpy(&v, c, sizeof v);                                                   \
                s = v + s;                                                                 \
            }                                                                              \
            memcpy(c, &s, sizeof s);                                                       \
        } else {                                                                           \
            for (int q = 0; q < (int)(sizeof(VT) / sizeof(T)); q++)                       \
                if (q < w) c[q] = accumulate ? c[q] + s[q] : s[q];                         \
        }                                                                                  \
    }                                                                                      \
    /* C[0:m, 0:w) for m <= 4 and w <= VL: R = 4 rows (rows past m repeat row m - 1,       \
     * computed but not stored) or R = 1; op(B)'s rows read as tiny_brow's G says */       \
    TINY_INLINE void tiny_small_##T(const int R, const int G, int64_t m, int64_t w,        \
                                    int64_t k, const T *A, int64_t sai, int64_t sap,       \
                                    const T *B, int64_t sbp, int64_t sbj, int accumulate,  \
                                    T *C, int64_t ldc)                                     \
    {                                                                                      \
        const int64_t last = (m - 1) * sai;                                                \
        const T *a1 = A + (m > 1 ? sai : last), *a2 = A + (m > 2 ? 2 * sai : last);        \
        const T *a3 = A + (m > 3 ? 3 * sai : last);                                        \
        VT s0 = {0}, s1 = {0}, s2 = {0}, s3 = {0};                                         \
        for (int64_t p = 0; p < k; p++) {                                                  \
            const VT v = tiny_brow_##T(G, B, sbp, sbj, p, w);                              \
            const int64_t o = p * sap;                                                     \
            s0 += A[o] * v;                                                                \
            if (R > 1) {                                                                   \
                s1 += a1[o] * v;                                                           \
                s2 += a2[o] * v;                                                           \
                s3 += a3[o] * v;                                                           \
            }                                                                              \
        }                                                                                  \
        tiny_put_##T(C, s0, w, accumulate);                                                \
        if (R > 1) {                                                                       \
            if (m > 1) tiny_put_##T(C + ldc, s1, w, accumulate);                           \
            if (m > 2) tiny_put_##T(C + 2 * ldc, s2, w, accumulate);                       \
            if (m > 3) tiny_put_##T(C + 3 * ldc, s3, w, accumulate);                       \
        }                                                                                  \
    }                                                                                      \
    /* Any tiny shape: blocks of 4 rows x VL columns; op(B) is first gathered into        \
     * pad[k][ceil(n/VL)] when more than one row block would gather it */                 \
    static __attribute__((noinline, unused)) void tiny_blocks_##T(                                 \
        int64_t m, int64_t n, int64_t k, const T *A, int64_t sai, int64_t sap, const T *B, \
        int64_t sbp, int64_t sbj, int accumulate, T *C, int64_t ldc)                       \
    {                                                                                      \
        enum { VL = sizeof(VT) / sizeof(T) };                                              \
        VT pad[TINY_GEMM_WORK];                                                            \
        int padded = 0;                                                                    \
        if (m > 4 && (sbj != 1 || n % VL)) {                                               \
            const int64_t nv = (n + VL - 1) / VL;                                          \
            for (int64_t v = 0; v < nv; v++)                                               \
                for (int64_t p = 0; p < k; p++)                                            \
                    pad[p * nv + v] = tiny_brow_##T(1, B + v * VL * sbj, sbp, sbj, p,      \
                                                    n - v * VL);                           \
            B = (const T *)(const void *)pad, sbp = nv * VL, sbj = 1, padded = 1;          \
        }                                                                                  \
        for (int64_t j = 0; j < n; j += VL) {                                              \
            const int64_t w = n - j < VL ? n - j : VL;                                     \
            const int whole = padded || (sbj == 1 && w == VL);                             \
            for (int64_t i = 0; i < m; i += 4) {                                           \
                const int64_t mi = m - i < 4 ? m - i : 4;                                  \
                if (whole)                                                                 \
                    tiny_small_##T(4, 0, mi, w, k, A + i * sai, sai, sap, B + j * sbj, sbp, \
                                   sbj, accumulate, C + i * ldc + j, ldc);                 \
                else if (sbj == 1)                                                         \
                    tiny_small_##T(4, 3, mi, w, k, A + i * sai, sai, sap, B + j * sbj, sbp, \
                                   sbj, accumulate, C + i * ldc + j, ldc);                 \
                else                                                                       \
                    tiny_small_##T(4, 1, mi, w, k, A + i * sai, sai, sap, B + j * sbj, sbp, \
                                   sbj, accumulate, C + i * ldc + j, ldc);                 \
            }                                                                              \
        }                                                                                  \
    }                                                                                      \
    TINY_INLINE void tiny_gemm_##T(int ta, int tb, int64_t m, int64_t n, int64_t k,        \
                                   const T *A, int64_t lda, const T *B, int64_t ldb,       \
                                   int accumulate, T *C, int64_t ldc)                      \
    {                                                                                      \
        if (n == 1 && ldc == 1 && m > 1) { /* C^T[1,m] = op(B)^T[1,k] op(A)^T[k,m] */     \
            const T *t = A;                                                                \
            int64_t lt = lda, mt = m;                                                      \
            int tt = ta;                                                                   \
            A = B, lda = ldb, ta = !tb;                                                    \
            B = t, ldb = lt, tb = !tt;                                                     \
            m = 1, n = mt;                                                                 \
        }                                                                                  \
        const int64_t sai = ta ? 1 : lda, sap = ta ? lda : 1;                              \
        const int64_t sbp = tb ? 1 : ldb, sbj = tb ? ldb : 1;                              \
        if (m > 4 || n > (int64_t)(sizeof(VT) / sizeof(T))) {                              \
            tiny_blocks_##T(m, n, k, A, sai, sap, B, sbp, sbj, accumulate, C, ldc);        \
            return;                                                                        \
        }                                                                                  \
        const int full = n == (int64_t)(sizeof(VT) / sizeof(T));                           \
        const int g = full ? sbj != 1 ? 2 : 0 : sbj != 1 ? 1 : 3;                          \
        if (m == 1 && g == 0)                                                              \
            tiny_small_##T(1, 0, m, n, k, A, sai, sap, B, sbp, sbj, accumulate, C, ldc);   \
        else if (m == 1 && g == 2)                                                         \
            tiny_small_##T(1, 2, m, n, k, A, sai, sap, B, sbp, sbj, accumulate, C, ldc);   \
        else if (m == 1 && g == 3)                                                         \
            tiny_small_##T(1, 3, m, n, k, A, sai, sap, B, sbp, sbj, accumulate, C, ldc);   \
        else if (m == 1)                                                                   \
            tiny_small_##T(1, 1, m, n, k, A, sai, sap, B, sbp, sbj, accumulate, C, ldc);   \
        else if (g == 0)                                                                   \
            tiny_small_##T(4, 0, m, n, k, A, sai, sap, B, sbp, sbj, accumulate, C, ldc);   \
        else if (g == 2)                                                                   \
            tiny_small_##T(4, 2, m, n, k, A, sai, sap, B, sbp, sbj, accumulate, C, ldc);   \
        else if (g == 3)                                                                   \
            tiny_small_##T(4, 3, m, n, k, A, sai, sap, B, sbp, sbj, accumulate, C, ldc);   \
        else                                                                               \
            tiny_small_##T(4, 1, m, n, k, A, sai, sap, B, sbp, sbj, accumulate, C, ldc);   \
    }
typedef float tiny_v4f __attribute__((vector_size(16)));
typedef double tiny_v2d __attribute__((vector_size(16)));
TINY_GEMM(float, tiny_v4f)
TINY_GEMM(double, tiny_v2d)

/* The product goes to the tiny path when this holds and tgi_gemm_tiny_ok() (asked
 * once by a caller that makes several products). */
static inline int tgi_gemm_tiny_fits(int64_t m, int64_t n, int64_t k)
{
    return m > 0 && n > 0 && m * n * k <= TINY_GEMM_WORK;
}

#endif /* TG_GEMM_TINY_H */
