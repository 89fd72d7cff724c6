/* SPDX-License-Identifier: MIT */
/* test_gemm_tiny.c: the tiny-product path of src/kernels/gemm.c (m n k <= 512, the layers
 * of an XOR-sized network), which runs only when no kernel set is forced and so is
 * not reached by test_gemm's per-kernel sweeps. It promises the bits of the plain
 * loop: C(i,j) = 0 + A(i,0) B(0,j) + A(i,1) B(1,j) + ... in order of p, then added
 * to C when accumulating. Checked bit for bit in every form, with and without
 * accumulation, with padded rows of C (ldc > n, padding untouched), strided A and
 * B, and the single-column case that the path computes as a row. */
#include <criterion/criterion.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "gemm.h"
#include "internal.h"

#define PLAIN_LOOP(T)                                                                  \
    static void plain_##T(int ta, int tb, int64_t m, int64_t n, int64_t k, const T *A,    \
                          int64_t lda, const T *B, int64_t ldb, int acc, T *C, int64_t ldc) \
    {                                                                                  \
        for (int64_t i = 0; i < m; i++)                                                \
            for (int64_t j = 0; j < n; j++) {                                          \
                T s = 0;                                                               \
                for (int64_t p = 0; p < k; p++) {                                      \
                    const T a = ta ? A[p * lda + i] : A[i * lda + p];                  \
                    const T b = tb ? B[j * ldb + p] : B[p * ldb + j];                  \
                    const T ab = a * b;                                                \
                    s = s + ab;                                                        \
                }                                                                      \
                C[i * ldc + j] = acc ? C[i * ldc + j] + s : s;                         \
            }                                                                          \
    }
PLAIN_LOOP(float)
PLAIN_LOOP(double)

/* deterministic values of mixed sign and magnitude, so that rounding differs
 * between summation orders */
static double val(uint64_t *s)
{
    *s = *s * 6364136223846793005ULL + 1442695040888963407ULL;
    return ((double)(*s >> 11) / 9007199254740992.0 - 0.5) * (1.0 + (double)((*s >> 3) & 7));
}

/* One shape in all four forms, acc 0/1, f32 and f64, ldc = n and n + 3 (and the
 * operands' leading dimensions padded by `pad`); returns the number of cases run. */
static int check(int64_t m, int64_t n, int64_t k, int64_t pad, tg_gemm_ws *ws)
{
    int cases = 0;
    for (int combo = 0; combo < 16; combo++) {
        const int ta = combo & 1, tb = (combo >> 1) & 1, acc = (combo >> 2) & 1,
                  dbl = combo >> 3;
        for (int wide = 0; wide < 2; wide++) {
            const int64_t lda = (ta ? m : k) + pad, ldb = (tb ? k : n) + pad;
            const int64_t ldc = n + (wide ? 3 : 0);
            const int64_t na = (ta ? k : m) * lda, nb = (tb ? n : k) * ldb, nc = m * ldc;
            double *buf = malloc((size_t)(na + nb + 2 * nc) * sizeof(double));
            cr_assert(buf);
            uint64_t s = (uint64_t)(m * 1000003 + n * 1009 + k * 17 + combo * 3 + wide);
            for (int64_t i = 0; i < na + nb + nc; i++) buf[i] = val(&s);
            /* C (to be computed by tgi_gemm_*) and R (by the plain loop) start equal */
#define RUN_CASE(T, GEMM, PLAIN, mem)                                                   \
    do {                                                                               \
        T *A = (mem), *B = A + na, *C = B + nb, *R = C + nc;                           \
        memcpy(R, C, (size_t)nc * sizeof *R);                                          \
        cr_assert_eq(GEMM(ws, 1, ta, tb, m, n, k, A, lda, B, ldb, acc, C, ldc), 0);    \
        PLAIN(ta, tb, m, n, k, A, lda, B, ldb, acc, R, ldc);                           \
        cr_assert(memcmp(C, R, (size_t)nc * sizeof *C) == 0,                           \
                  "%s %lldx%lldx%lld ta=%d tb=%d acc=%d ldc=%lld: not the plain loop's bits", \
                  #T, (long long)m, (long long)n, (long long)k, ta, tb, acc, (long long)ldc); \
    } while (0)
            if (dbl) {
                RUN_CASE(double, tgi_gemm_f64, plain_double, buf);
            } else {
                float *f = malloc((size_t)(na + nb + 2 * nc) * sizeof(float));
                cr_assert(f);
                for (int64_t i = 0; i < na + nb + nc; i++) f[i] = (float)buf[i];
                RUN_CASE(float, tgi_gemm_f32, plain_float, f);
                free(f);
            }
#undef RUN_CASE
            free(buf);
            cases++;
        }
    }
    return cases;
}

Test(gemm_tiny, plain_loop_bits_in_every_form)
{
    tg_gemm_ws *ws = tgi_gemm_ws_new(tgi_default_alloc, NULL);
    cr_assert(ws);
    /* the XOR 2-4-1 products, odd widths (vector tails), single rows and columns,
     * k = 1, and the largest products the path takes (m n k = 512) */
    static const int64_t shapes[][3] = {
        {4, 4, 2}, {4, 1, 4}, {4, 4, 1}, {2, 4, 4}, {1, 1, 1}, {3, 5, 7},  {7, 3, 5},
        {1, 9, 6}, {9, 1, 6}, {5, 2, 3}, {6, 7, 1}, {8, 8, 8}, {1, 512, 1}, {512, 1, 1},
        {1, 1, 512}, {2, 2, 128}, {16, 32, 1}, {4, 6, 21},
    };
    int cases = 0;
    for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; s++)
        for (int64_t pad = 0; pad <= 2; pad += 2)
            cases += check(shapes[s][0], shapes[s][1], shapes[s][2], pad, ws);
    cr_assert_eq(cases, 18 * 2 * 32);
    tgi_gemm_ws_free(ws);
}

Test(gemm_tiny, padding_of_c_untouched)
{
    /* C rows of 4 + 3 floats; the 3 after each row hold a sentinel */
    tg_gemm_ws *ws = tgi_gemm_ws_new(tgi_default_alloc, NULL);
    cr_assert(ws);
    float A[8] = {1, 2, 3, 4, 5, 6, 7, 8}, B[8] = {1, -1, 2, -2, 3, -3, 4, -4};
    float C[4 * 7];
    for (int i = 0; i < 28; i++) C[i] = 99.0f;
    cr_assert_eq(tgi_gemm_f32(ws, 1, 0, 0, 4, 4, 2, A, 2, B, 4, 0, C, 7), 0);
    for (int i = 0; i < 4; i++) {
        for (int j = 0; j < 4; j++)
            cr_assert_float_eq(C[i * 7 + j], A[2 * i] * B[j] + A[2 * i + 1] * B[4 + j], 0.0f);
        for (int j = 4; j < 7; j++) cr_assert_eq(C[i * 7 + j], 99.0f, "padding written");
    }
    tgi_gemm_ws_free(ws);
}
