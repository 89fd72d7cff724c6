/* SPDX-License-Identifier: MIT */
/* test_gemm.c: the GEMM kernels (src/kernels/gemm.c) against a naive long-double reference.
 *
 * Every kernel set this CPU can run (generic, avx2, avx512) is forced in turn; every
 * shape is tried in the four forms (A B, A^T B, A B^T, A^T B^T), with and without
 * accumulate, in f32 and f64, with row strides wider than the logical rows. Padding
 * of A and B holds NaN (a kernel that reads it poisons the result) and padding of C
 * holds a sentinel that must survive. Sizes stay small enough for -O0 + ASan. */
#include <criterion/criterion.h>

#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "gemm.h"
#include "tg_test.h"

/* ------------------------------------------------------------------------------ */

/* the allocator's work once the counting is done: free for size 0, else realloc */
static void *free_or_realloc(void *ptr, size_t nsize)
{
    if (nsize == 0) {
        free(ptr);
        return NULL;
    }
    return realloc(ptr, nsize);
}

/* counts the allocations in *ud (an int; may be NULL) */
static void *test_alloc(void *ud, void *ptr, size_t osize, size_t nsize)
{
    (void)osize;
    if (ud && nsize) ++*(int *)ud;
    return free_or_realloc(ptr, nsize);
}

/* fails every request once *ud reaches 0 (counts down per allocation) */
static void *failing_alloc(void *ud, void *ptr, size_t osize, size_t nsize)
{
    (void)osize;
    int *budget = (int *)ud;
    if (nsize && *budget <= 0) return NULL;
    *budget -= nsize != 0;
    return free_or_realloc(ptr, nsize);
}

static uint64_t rng_state = 0x9E3779B97F4A7C15ull;
static double urand(void) /* uniform in [-1, 1) */
{
    rng_state ^= rng_state << 13;
    rng_state ^= rng_state >> 7;
    rng_state ^= rng_state << 17;
    return (double)(rng_state >> 11) * (2.0 / 9007199254740992.0) - 1.0;
}

static const char *const kernel_names[] = {"generic", "avx2", "avx512"};
#define NKERNELS 3

/* Force kernel set i; 0 if this CPU cannot run it. */
static int use_kernel(int i)
{
    tgi_gemm_force_kernel(kernel_names[i]);
    return strcmp(tgi_gemm_kernel_name(), kernel_names[i]) == 0;
}

#define C_SENTINEL 12345.0

/* One problem in stored form, with its reference result. */
typedef struct gemm_case {
    int dbl, ta, tb, acc;
    int64_t m, n, k, lda, ldb, ldc;
    void *A, *B, *C0;   /* element type; C0 is C before the call */
    double *want, *tol; /* [m, n] */
} gemm_case;

static void case_make(gemm_case *t, int dbl, int ta, int tb, int64_t m, int64_t n, int64_t k,
                      int acc)
{
    t->dbl = dbl;
    t->ta = ta;
    t->tb = tb;
    t->acc = acc;
    t->m = m;
    t->n = n;
    t->k = k;
    /* stored shapes and row strides wider than the rows */
    const int64_t ar = ta ? k : m, ac = ta ? m : k; /* A stored [ar, ac] */
    const int64_t br = tb ? n : k, bc = tb ? k : n; /* B stored [br, bc] */
    t->lda = ac + 3;
    t->ldb = bc + 5;
    t->ldc = n + 7;
    const size_t asz = (size_t)(ar * t->lda), bsz = (size_t)(br * t->ldb);
    const size_t csz = (size_t)(m * t->ldc);
    double *a = malloc((asz + 1) * sizeof *a), *b = malloc((bsz + 1) * sizeof *b);
    double *c = malloc((csz + 1) * sizeof *c);
    const size_t es = dbl ? sizeof(double) : sizeof(float);
    t->A = malloc((asz + 1) * es);
    t->B = malloc((bsz + 1) * es);
    t->C0 = malloc((csz + 1) * es);
    t->want = malloc((size_t)(m * n + 1) * sizeof *t->want);
    t->tol = malloc((size_t)(m * n + 1) * sizeof *t->tol);
    cr_assert(a && b && c && t->A && t->B && t->C0 && t->want && t->tol);

    /* values rounded to the element type first, so the reference sees what gemm sees;
     * padding: NaN in A and B (must never be read into a result), sentinel in C */
#define ROUND(x) (dbl ? (x) : (double)(float)(x))
    for (size_t i = 0; i < asz; i++) a[i] = ((int64_t)i % t->lda < ac) ? ROUND(urand()) : NAN;
    for (size_t i = 0; i < bsz; i++) b[i] = ((int64_t)i % t->ldb < bc) ? ROUND(urand()) : NAN;
    for (size_t i = 0; i < csz; i++)
        c[i] = ((int64_t)i % t->ldc < n) ? (acc ? ROUND(urand()) : NAN) : C_SENTINEL;
#undef ROUND
    for (size_t i = 0; i < asz; i++) {
        if (dbl) ((double *)t->A)[i] = a[i];
        else ((float *)t->A)[i] = (float)a[i];
    }
    for (size_t i = 0; i < bsz; i++) {
        if (dbl) ((double *)t->B)[i] = b[i];
        else ((float *)t->B)[i] = (float)b[i];
    }
    for (size_t i = 0; i < csz; i++) {
        if (dbl) ((double *)t->C0)[i] = c[i];
        else ((float *)t->C0)[i] = (float)c[i];
    }

    /* naive reference in long double. Tolerance: the worst-case bound of a k-term
     * float sum, about k u sum|a b| (u the unit roundoff, 6e-8 / 1.1e-16), with a
     * factor 2 to spare; scaled by the absolute terms so cancellation cannot make it
     * too tight. Far below what a wrong element, or a lost k block, would give. */
    const double eps = dbl ? 2.3e-16 : 1.2e-7;
    for (int64_t i = 0; i < m; i++) {
        for (int64_t j = 0; j < n; j++) {
            long double s = 0, sabs = 0;
            for (int64_t p = 0; p < k; p++) {
                const double x = ta ? a[p * t->lda + i] : a[i * t->lda + p];
                const double y = tb ? b[j * t->ldb + p] : b[p * t->ldb + j];
                s += (long double)x * y;
                sabs += fabsl((long double)x * y);
            }
            if (acc) {
                s += c[i * t->ldc + j];
                sabs += fabs(c[i * t->ldc + j]);
            }
            t->want[i * n + j] = (double)s;
            t->tol[i * n + j] = eps * (double)(k + 2) * (double)sabs;
        }
    }
    free(a);
    free(b);
    free(c);
}

static void case_free(gemm_case *t)
{
    free(t->A);
    free(t->B);
    free(t->C0);
    free(t->want);
    free(t->tol);
}

/* Run the case with the current kernel set; 1 if it matches (else prints the first
 * bad element). */
static int case_run(const gemm_case *t, tg_gemm_ws *ws, int nthreads)
{
    const size_t es = t->dbl ? sizeof(double) : sizeof(float);
    const size_t csz = (size_t)(t->m * t->ldc);
    void *C = malloc((csz + 1) * es);
    cr_assert(C);
    memcpy(C, t->C0, csz * es);
    const int rc =
        t->dbl ? tgi_gemm_f64(ws, nthreads, t->ta, t->tb, t->m, t->n, t->k, (const double *)t->A,
                              t->lda, (const double *)t->B, t->ldb, t->acc, (double *)C, t->ldc)
               : tgi_gemm_f32(ws, nthreads, t->ta, t->tb, t->m, t->n, t->k, (const float *)t->A,
                              t->lda, (const float *)t->B, t->ldb, t->acc, (float *)C, t->ldc);
    cr_assert_eq(rc, 0, "gemm returned %d", rc);

    int ok = 1;
    for (int64_t i = 0; i < t->m && ok; i++) {
        for (int64_t j = 0; j < t->ldc && ok; j++) {
            const int64_t at = i * t->ldc + j;
            const double got = t->dbl ? ((double *)C)[at] : (double)((float *)C)[at];
            const double want = j < t->n ? t->want[i * t->n + j] : C_SENTINEL;
            const double tol = j < t->n ? t->tol[i * t->n + j] : 0.0;
            if (!(fabs(got - want) <= tol)) {
                fprintf(stderr, "%s %s ta=%d tb=%d %ldx%ldx%ld acc=%d threads=%d: "
                        "C[%ld,%ld] = %.17g, want %.17g (tol %.3g)%s\n",
                        tgi_gemm_kernel_name(), t->dbl ? "f64" : "f32", t->ta, t->tb,
                        (long)t->m, (long)t->n, (long)t->k, t->acc, nthreads, (long)i, (long)j,
                        got, want, tol, j < t->n ? "" : " (padding overwritten)");
                ok = 0;
            }
        }
    }
    free(C);
    return ok;
}

/* Each shape in the four forms, accumulate on and off, f32 and f64 (all 16
 * combinations, or with `sparse` 4 of them that still cover each form, each
 * precision and both accumulate modes), against every kernel set this CPU runs. */
static void check_shapes(const int64_t (*shapes)[3], int nshapes, int nthreads, int sparse)
{
    tg_gemm_ws *ws = tgi_gemm_ws_new(test_alloc, NULL);
    cr_assert(ws);
    for (int s = 0; s < nshapes; s++) {
        for (int combo = 0; combo < 16; combo++) {
            const int form = combo & 3, acc = (combo >> 2) & 1, dbl = combo >> 3;
            if (sparse && acc != ((form & 1) ^ (form >> 1))) continue;
            if (sparse && dbl != (form >> 1)) continue;
            gemm_case t;
            case_make(&t, dbl, form & 1, form >> 1, shapes[s][0], shapes[s][1], shapes[s][2],
                      acc);
            int ran = 0;
            for (int kn = 0; kn < NKERNELS; kn++) {
                if (!use_kernel(kn)) continue;
                ran++;
                cr_expect(case_run(&t, ws, nthreads), "kernel %s: %ldx%ldx%ld form %d acc %d %s",
                          kernel_names[kn], (long)shapes[s][0], (long)shapes[s][1],
                          (long)shapes[s][2], form, acc, dbl ? "f64" : "f32");
            }
            tgi_gemm_force_kernel(NULL);
            cr_assert_geq(ran, 1, "not even the generic kernel ran");
            case_free(&t);
        }
    }
    tgi_gemm_ws_free(ws);
}

/* ------------------------------------------------------------------------------ */

Test(gemm, dispatch_names_a_kernel)
{
    const char *name = tgi_gemm_kernel_name();
    cr_assert(strcmp(name, "generic") == 0 || strcmp(name, "avx2") == 0 ||
              strcmp(name, "avx512") == 0 || strcmp(name, "cblas") == 0,
              "unknown kernel name %s", name);
    assert_force_by_name(tgi_gemm_force_kernel, tgi_gemm_kernel_name, name, "gemm");
}

Test(gemm, tiny_and_prime_shapes)
{
    static const int64_t shapes[][3] = {
        {1, 1, 1}, {2, 3, 4}, {7, 13, 29}, {4, 4, 2}, {5, 17, 3}, {13, 7, 1}, {6, 16, 8},
        {12, 32, 5}, {11, 31, 9},
    };
    check_shapes(shapes, (int)(sizeof shapes / sizeof shapes[0]), 1, 0);
}

Test(gemm, vectors_and_skinny)
{
    static const int64_t shapes[][3] = {
        {1, 37, 50}, {45, 1, 33}, {1, 1, 70}, {1, 70, 1}, {70, 1, 1}, {3, 100, 40},
        {100, 3, 40}, {64, 10, 30}, {90, 16, 17}, {80, 17, 16},
    };
    check_shapes(shapes, (int)(sizeof shapes / sizeof shapes[0]), 1, 0);
}

Test(gemm, k_zero)
{
    static const int64_t shapes[][3] = {{5, 6, 0}, {1, 1, 0}, {80, 90, 0}};
    check_shapes(shapes, (int)(sizeof shapes / sizeof shapes[0]), 1, 0);
}

/* The blocked path: edge tiles, several k blocks (k > KC). */
Test(gemm, blocked_shapes)
{
    static const int64_t shapes[][3] = {{65, 65, 65}, {97, 70, 41}};
    check_shapes(shapes, (int)(sizeof shapes / sizeof shapes[0]), 1, 0);
    static const int64_t deep[][3] = {{70, 33, 600}};
    check_shapes(deep, 1, 1, 1);
}

/* Several MC row blocks and edge tiles on both sides. */
Test(gemm, large_ish)
{
    static const int64_t shapes[][3] = {{300, 257, 130}};
    check_shapes(shapes, 1, 1, 1);
}

/* Wider than NC (4080 or 4096 columns): several B panels. */
Test(gemm, wider_than_nc)
{
    static const int64_t shapes[][3] = {{66, 4200, 17}};
    check_shapes(shapes, 1, 1, 1);
}

/* Paths that pack while computing: the direct path's first row tile packing a
 * row-major B slice for the others (64 rows: MR tiles and a smaller last tile; two
 * k blocks), a single row tile reading B in place (m < MR), and the blocked path's
 * first column panel packing A^T (several MC blocks, a last partial row panel). */
Test(gemm, fused_packing_shapes)
{
    static const int64_t shapes[][3] = {{5, 40, 270}, {13, 64, 20}};
    check_shapes(shapes, (int)(sizeof shapes / sizeof shapes[0]), 1, 0);
    static const int64_t sparse[][3] = {{64, 48, 270}, {200, 48, 120}, {301, 35, 70}};
    check_shapes(sparse, (int)(sizeof sparse / sizeof sparse[0]), 1, 1);
}

/* The direct path on the blocked path's wide tile (AVX-512: more rows than one
 * narrow tile and whole wide panels): an MLP layer's 64 x 784 x 64 (k in 96-deep
 * blocks), and 27 rows (four 6-row tiles, then 2 + 1) by 192 columns over three k
 * blocks. */
Test(gemm, direct_wide_tile_shapes)
{
    static const int64_t shapes[][3] = {{64, 64, 784}, {27, 192, 200}};
    check_shapes(shapes, (int)(sizeof shapes / sizeof shapes[0]), 1, 0);
}

/* Two threads (the shapes are above the size where gemm starts a second thread):
 * direct path split along n, blocked path split along m. */
Test(gemm, two_threads_are_correct)
{
    static const int64_t tiny[][3] = {{7, 13, 29}};
    check_shapes(tiny, 1, 2, 0);
    static const int64_t shapes[][3] = {{40, 600, 100}, {400, 70, 80}};
    check_shapes(shapes, (int)(sizeof shapes / sizeof shapes[0]), 2, 1);
}

Test(gemm, m_or_n_zero_is_a_no_op)
{
    tg_gemm_ws *ws = tgi_gemm_ws_new(test_alloc, NULL);
    float c = 7.0f, a = 1.0f, b = 1.0f;
    cr_assert_eq(tgi_gemm_f32(ws, 1, 0, 0, 0, 1, 1, &a, 1, &b, 1, 0, &c, 1), 0);
    cr_assert_eq(tgi_gemm_f32(ws, 1, 0, 0, 1, 0, 1, &a, 1, &b, 1, 0, &c, 1), 0);
    cr_assert_eq(c, 7.0f);
    tgi_gemm_ws_free(ws);
}

/* 1 thread and 2 threads give the same bits, for every kernel set, path and form
 * (f32 for A B and A B^T, f64 for the others, to keep it quick under ASan). The
 * shapes are large enough for gemm to use the second thread. */
Test(gemm, threads_bit_identical)
{
    static const int64_t shapes[][3] = {
        {70, 400, 80}, {400, 70, 80}, {80, 100, 300}, /* blocked: split n, m, m; 2 k blocks */
        {40, 600, 100}, {3000, 10, 80},               /* direct: split n, m */
        {60, 1024, 200},                              /* direct, wide tile: split n */
    };
    tg_gemm_ws *ws = tgi_gemm_ws_new(test_alloc, NULL);
    for (int kn = 0; kn < NKERNELS; kn++) {
        if (!use_kernel(kn)) continue;
        for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; s++) {
            const int64_t m = shapes[s][0], n = shapes[s][1], k = shapes[s][2];
            const int64_t big = (m > n ? m : n) * (k + 1);
            for (int form = 0; form < 4; form++) {
                const int ta = form & 1, tb = form >> 1;
                const int64_t lda = ta ? m : k, ldb = tb ? k : n;
                double *A = malloc((size_t)big * sizeof *A), *B = malloc((size_t)big * sizeof *B);
                double *C1 = malloc((size_t)(m * n) * sizeof *C1);
                double *C2 = malloc((size_t)(m * n) * sizeof *C2);
                float *Af = malloc((size_t)big * sizeof *Af), *Bf = malloc((size_t)big * sizeof *Bf);
                float *D1 = malloc((size_t)(m * n) * sizeof *D1);
                float *D2 = malloc((size_t)(m * n) * sizeof *D2);
                for (int64_t i = 0; i < big; i++) {
                    A[i] = urand();
                    B[i] = urand();
                    Af[i] = (float)A[i];
                    Bf[i] = (float)B[i];
                }
                for (int64_t i = 0; i < m * n; i++) {
                    C1[i] = C2[i] = urand();
                    D1[i] = D2[i] = (float)C1[i];
                }
                if (ta) {
                    cr_assert_eq(tgi_gemm_f64(ws, 1, ta, tb, m, n, k, A, lda, B, ldb, 1, C1, n), 0);
                    cr_assert_eq(tgi_gemm_f64(ws, 2, ta, tb, m, n, k, A, lda, B, ldb, 1, C2, n), 0);
                } else {
                    cr_assert_eq(tgi_gemm_f32(ws, 1, ta, tb, m, n, k, Af, lda, Bf, ldb, 1, D1, n), 0);
                    cr_assert_eq(tgi_gemm_f32(ws, 2, ta, tb, m, n, k, Af, lda, Bf, ldb, 1, D2, n), 0);
                }
                cr_expect(memcmp(C1, C2, (size_t)(m * n) * sizeof *C1) == 0,
                          "%s f64 %ldx%ldx%ld form %d: 1 and 2 threads differ", kernel_names[kn],
                          (long)m, (long)n, (long)k, form);
                cr_expect(memcmp(D1, D2, (size_t)(m * n) * sizeof *D1) == 0,
                          "%s f32 %ldx%ldx%ld form %d: 1 and 2 threads differ", kernel_names[kn],
                          (long)m, (long)n, (long)k, form);
                free(A);
                free(B);
                free(C1);
                free(C2);
                free(Af);
                free(Bf);
                free(D1);
                free(D2);
            }
        }
    }
    tgi_gemm_force_kernel(NULL);
    tgi_gemm_ws_free(ws);
}

/* Out of memory: -1 and C untouched; the workspace stays usable. */
Test(gemm, out_of_memory_leaves_c_untouched)
{
    enum { M = 100, N = 90, K = 80 };
    static float A[M * K], B[K * N], C[M * N], C0[M * N];
    for (int i = 0; i < M * K; i++) A[i] = (float)urand();
    for (int i = 0; i < K * N; i++) B[i] = (float)urand();
    for (int i = 0; i < M * N; i++) C[i] = C0[i] = (float)urand();
    for (int kn = 0; kn < NKERNELS; kn++) {
        if (!use_kernel(kn)) continue;
        int budget = 1; /* the workspace struct itself, then nothing */
        tg_gemm_ws *ws = tgi_gemm_ws_new(failing_alloc, &budget);
        cr_assert(ws);
        cr_assert_eq(tgi_gemm_f32(ws, 1, 0, 0, M, N, K, A, K, B, N, 1, C, N), -1); /* blocked */
        cr_assert(memcmp(C, C0, sizeof C) == 0, "C changed after a failed call");
        cr_assert_eq(tgi_gemm_f32(ws, 2, 1, 1, 4, 30, 7, A, 4, B, 7, 0, C, N), -1); /* direct */
        cr_assert(memcmp(C, C0, sizeof C) == 0, "C changed after a failed call");
        budget = 1; /* now it can grow */
        cr_assert_eq(tgi_gemm_f32(ws, 1, 0, 0, M, N, K, A, K, B, N, 1, C, N), 0);
        memcpy(C, C0, sizeof C);
        tgi_gemm_ws_free(ws);
    }
    tgi_gemm_force_kernel(NULL);
}

/* After the first call of a shape, the same calls allocate nothing. */
Test(gemm, steady_state_does_not_allocate)
{
    int count = 0;
    tg_gemm_ws *ws = tgi_gemm_ws_new(test_alloc, &count);
    enum { M = 70, N = 40, K = 300 };
    static double A[M * K], B[K * N], C[M * N];
    for (int i = 0; i < M * K; i++) A[i] = urand();
    for (int i = 0; i < K * N; i++) B[i] = urand();
    /* the best kernel set this CPU runs (never an external BLAS) */
    for (int kn = 0; kn < NKERNELS; kn++) use_kernel(kn);
    for (int form = 0; form < 4; form++) /* warm up every form and both thread counts */
        for (int t = 1; t <= 2; t++)
            cr_assert_eq(tgi_gemm_f64(ws, t, form & 1, form >> 1, M, N, K, A, (form & 1) ? M : K,
                                      B, (form >> 1) ? K : N, 0, C, N), 0);
    const int before = count;
    for (int rep = 0; rep < 3; rep++)
        for (int form = 0; form < 4; form++)
            for (int t = 1; t <= 2; t++)
                cr_assert_eq(tgi_gemm_f64(ws, t, form & 1, form >> 1, M, N, K, A,
                                          (form & 1) ? M : K, B, (form >> 1) ? K : N, 1, C, N), 0);
    cr_assert_eq(count, before, "steady-state calls allocated %d times", count - before);
    tgi_gemm_force_kernel(NULL);
    tgi_gemm_ws_free(ws);
}

#if defined(TGI_GEMM_EMULATE_AVX512)
/* test_gemm_avx512emu (CMakeLists.txt): the library is built with the AVX-512 set on
 * SIMDe, so every shape above also ran through the AVX-512 kernels */
Test(gemm, avx512_set_runs_emulated)
{
    cr_assert_str_eq(tgi_gemm_kernel_name(), "avx512");
}
#endif
