/* SPDX-License-Identifier: MIT */
/* test_gemm_blocking.c: the blocked path of the GEMM (src/kernels/gemm.c) at its block
 * boundaries. Shapes cross MC (1536 rows), KC (512 for f32, 256 for f64 on AVX-512)
 * and NC (512 / 384 columns), with rows left over after whole tiles of 6 and 12 and
 * columns after whole panels of 64 / 32 / 16 / 8 (and the 16-wide tile for n <= 16),
 * in the four forms, with and without accumulate, for every kernel set this CPU runs. Entries are small integers, so every
 * sum is exact in f32 and f64 whatever the order: the result must equal the reference
 * bit for bit, and the padding of A and B (NaN) must never reach it. Two threads on a
 * pool must give the same bits as one. */
#include <criterion/criterion.h>

#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "gemm.h"
#include "internal.h" /* tgi_default_alloc */
#include "pool.h"

static const char *const sets[] = {"generic", "avx2", "avx512"};

/* an integer in [-3, 3] from a counter (no state shared with other tests) */
static double small_int(uint64_t i)
{
    i = (i + 0x9E3779B97F4A7C15ull) * 0xBF58476D1CE4E5B9ull;
    return (double)((int)((i >> 33) % 7u) - 3);
}

/* One stored operand: rows x cols in a buffer with 3 extra NaN columns per row. */
typedef struct {
    int64_t rows, cols, ld;
    double *d;
    float *f;
} operand;

static operand operand_make(int64_t rows, int64_t cols, uint64_t seed, int nan_pad)
{
    operand o = {rows, cols, cols + 3, NULL, NULL};
    const size_t sz = (size_t)(rows * o.ld);
    o.d = malloc(sz * sizeof *o.d);
    o.f = malloc(sz * sizeof *o.f);
    cr_assert(o.d && o.f);
    for (size_t i = 0; i < sz; i++) {
        const double v = (int64_t)i % o.ld < cols ? small_int(seed + i) : nan_pad ? NAN : 0.0;
        o.d[i] = v;
        o.f[i] = (float)v;
    }
    return o;
}

static void operand_free(operand *o)
{
    free(o->d);
    free(o->f);
}

/* C = (acc ? C : 0) + op(A) op(B) with the given thread count; both types. */
static void run(tg_gemm_ws *ws, int nthreads, int ta, int tb, int64_t m, int64_t n, int64_t k,
                const operand *A, const operand *B, int acc, operand *C)
{
    cr_assert_eq(tgi_gemm_f64(ws, nthreads, ta, tb, m, n, k, A->d, A->ld, B->d, B->ld, acc, C->d,
                              C->ld),
                 0);
    cr_assert_eq(tgi_gemm_f32(ws, nthreads, ta, tb, m, n, k, A->f, A->ld, B->f, B->ld, acc, C->f,
                              C->ld),
                 0);
}

/* Every element of C against the exact sum, in both types. */
static void check(const char *set, int ta, int tb, int acc, int64_t m, int64_t n, int64_t k,
                  const operand *A, const operand *B, const operand *C0, const operand *C)
{
    int64_t bad = 0;
    for (int64_t i = 0; i < m; i++)
        for (int64_t j = 0; j < n; j++) {
            double want = acc ? C0->d[i * C0->ld + j] : 0.0;
            for (int64_t p = 0; p < k; p++)
                want += A->d[ta ? p * A->ld + i : i * A->ld + p] *
                        B->d[tb ? j * B->ld + p : p * B->ld + j];
            if (C->d[i * C->ld + j] != want || (double)C->f[i * C->ld + j] != want) bad++;
        }
    cr_expect_eq(bad, 0, "%s %ldx%ldx%ld ta %d tb %d acc %d: %ld wrong elements", set, (long)m,
                 (long)n, (long)k, ta, tb, acc, (long)bad);
}

static void check_shape(tg_gemm_ws *ws, const char *set, int64_t m, int64_t n, int64_t k)
{
    for (int form = 0; form < 4; form++) {
        const int ta = form & 1, tb = form >> 1, acc = form == 1 || form == 2;
        operand A = operand_make(ta ? k : m, ta ? m : k, 1, 1);
        operand B = operand_make(tb ? n : k, tb ? k : n, 1u << 30, 1);
        operand C0 = operand_make(m, n, 3u << 30, 0), C = operand_make(m, n, 3u << 30, 0);
        run(ws, 1, ta, tb, m, n, k, &A, &B, acc, &C);
        check(set, ta, tb, acc, m, n, k, &A, &B, &C0, &C);
        operand_free(&A);
        operand_free(&B);
        operand_free(&C0);
        operand_free(&C);
    }
}

/* m beyond MC (two row blocks, the last with 1 row past whole tiles of 6), n beyond
 * NC with a partial last panel, k in two and three blocks, and the A^T forms whose
 * first tiles pack A (small B blocks) or not (large ones). */
Test(gemm_blocking, block_boundaries_exact)
{
    static const int64_t shapes[][3] = {
        {1543, 70, 40}, {70, 1100, 40}, {67, 130, 1100}, {97, 200, 530}, {130, 40, 300},
        {100, 10, 1021}, /* A B: rows of A 4 KiB apart, so the thin tile's blocked path */
        {300, 10, 200},  {64, 16, 70}, /* thin: computed as C^T when op(B) = B */
    };
    tg_gemm_ws *ws = tgi_gemm_ws_new(tgi_default_alloc, NULL);
    cr_assert(ws);
    for (int s = 0; s < 3; s++) {
        tgi_gemm_force_kernel(sets[s]);
        if (strcmp(tgi_gemm_kernel_name(), sets[s]) != 0) continue;
        for (size_t i = 0; i < sizeof shapes / sizeof shapes[0]; i++)
            check_shape(ws, sets[s], shapes[i][0], shapes[i][1], shapes[i][2]);
    }
    tgi_gemm_force_kernel(NULL);
    tgi_gemm_ws_free(ws);
}

/* C from 1 and from 2 threads (a real pool) in both types, for the forms in the
 * mask (bit f: ta = f & 1, tb = f >> 1; A^T B and A B^T accumulate); the count of
 * forms whose bits differ. */
static int threads_differ(tg_gemm_ws *ws, int64_t m, int64_t n, int64_t k, int forms)
{
    int differ = 0;
    for (int form = 0; form < 4; form++) {
        if (!(forms >> form & 1)) continue;
        const int ta = form & 1, tb = form >> 1, acc = form == 1 || form == 2;
        operand A = operand_make(ta ? k : m, ta ? m : k, 11, 1);
        operand B = operand_make(tb ? n : k, tb ? k : n, 12, 1);
        operand C1 = operand_make(m, n, 13, 0), C2 = operand_make(m, n, 13, 0);
        for (size_t e = 0; e < (size_t)(A.rows * A.ld); e++) {
            A.d[e] *= 0.37 + 1e-3 * (double)(e % 11); /* inexact sums */
            A.f[e] = (float)A.d[e];
        }
        run(ws, 1, ta, tb, m, n, k, &A, &B, acc, &C1);
        run(ws, 2, ta, tb, m, n, k, &A, &B, acc, &C2);
        const size_t csz = (size_t)(m * C1.ld);
        differ += memcmp(C1.d, C2.d, csz * sizeof *C1.d) != 0 ||
                  memcmp(C1.f, C2.f, csz * sizeof *C1.f) != 0;
        operand_free(&A);
        operand_free(&B);
        operand_free(&C1);
        operand_free(&C2);
    }
    return differ;
}

/* Each shape's C from 1 and from 2 threads on a real pool, all four forms: no
 * differing bits expected. */
static void expect_threads_same(const int64_t (*shapes)[3], size_t count)
{
    tgi_pool *pool = tgi_pool_new(tgi_default_alloc, NULL);
    tg_gemm_ws *ws = tgi_gemm_ws_new(tgi_default_alloc, NULL);
    cr_assert(pool && ws);
    tgi_gemm_ws_set_pool(ws, pool);
    for (size_t i = 0; i < count; i++)
        cr_expect_eq(threads_differ(ws, shapes[i][0], shapes[i][1], shapes[i][2], 15), 0,
                     "%ldx%ldx%ld: 1 and 2 threads differ", (long)shapes[i][0],
                     (long)shapes[i][1], (long)shapes[i][2]);
    tgi_gemm_ws_free(ws);
    tgi_pool_free(pool);
}

/* Two threads on a real pool (ranges split along n, then along m) give the bits of one,
 * with random (inexact) values. */
Test(gemm_blocking, two_threads_same_bits)
{
    static const int64_t shapes[][3] = {{150, 1100, 300}, {1100, 150, 300}};
    expect_threads_same(shapes, sizeof shapes / sizeof shapes[0]);
}

/* Products with a dimension of at most 16 go to two threads from 2^21 multiply-adds
 * (others from 2^23): an MLP's last layer (n = 10 forward, k = 10 input gradient,
 * m = 10 weight gradient, computed as its transpose) at batch 256, 2.6 M each, and
 * a smaller one still single-threaded, all with the bits of one thread. */
Test(gemm_blocking, thin_products_threaded_same_bits)
{
    static const int64_t shapes[][3] = {
        {256, 10, 1024}, {256, 1024, 10}, {10, 1024, 256}, {1024, 10, 256}, {300, 13, 530},
        {100, 10, 1000},
    };
    expect_threads_same(shapes, sizeof shapes / sizeof shapes[0]);
}

/* A threaded blocked call packs once, for all its ranges, the operand each range
 * would read whole (op(A) when the ranges are columns, op(B) when they are rows).
 * Same bits as one thread, for every kernel set: ranges of columns and of rows,
 * rows left over after whole tiles and columns after whole panels, k in blocks the
 * last of which is shorter, n beyond NC (the shared B in two column blocks), A^T
 * packed inside the first tiles of a row range (small B blocks); and the NaN
 * padding of A and B never read. Then
 * with every second chunk of the shared operand left unpacked (as if its thread
 * were kept off its core): the ranges pack their own copies, with the same bits. */
Test(gemm_blocking, threads_shared_packing_same_bits)
{
    static const int64_t shapes[][4] = {
        /* m, n, k, forms */
        {40, 700, 531, 15},  /* ranges of columns (A shared), k blocks 266 + 265 in f32 */
        {700, 40, 531, 15},  /* ranges of rows (B shared) */
        {450, 400, 301, 1},  /* rows, n > NC: f64 k blocks 151 + 150 */
        {4000, 20, 150, 2},  /* rows, A^T packed by the first tiles */
    };
    tgi_pool *pool = tgi_pool_new(tgi_default_alloc, NULL);
    tg_gemm_ws *ws = tgi_gemm_ws_new(tgi_default_alloc, NULL);
    cr_assert(pool && ws);
    tgi_gemm_ws_set_pool(ws, pool);
    for (int s = 0; s < 3; s++) {
        tgi_gemm_force_kernel(sets[s]);
        if (strcmp(tgi_gemm_kernel_name(), sets[s]) != 0) continue;
        for (int u = 0; u < 2; u++) {
            tgi_gemm_test_unpacked(2 * u); /* none, then every second chunk */
            for (size_t i = 0; i < sizeof shapes / sizeof shapes[0]; i++)
                cr_expect_eq(threads_differ(ws, shapes[i][0], shapes[i][1], shapes[i][2],
                                            (int)shapes[i][3]),
                             0,
                             "%s %ldx%ldx%ld, pack chunks left unpacked: every %d-th (0: none): "
                             "1 and 2 threads differ",
                             sets[s], (long)shapes[i][0], (long)shapes[i][1], (long)shapes[i][2],
                             2 * u);
        }
    }
    tgi_gemm_test_unpacked(0);
    tgi_gemm_force_kernel(NULL);
    tgi_gemm_ws_free(ws);
    tgi_pool_free(pool);
}
