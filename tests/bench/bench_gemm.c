/* SPDX-License-Identifier: MIT */
/* bench_gemm.c: GFLOP/s of tapegrad's GEMM (src/kernels/gemm.c), next to OpenBLAS when the
 * build found it (TG_HAVE_CBLAS, linked with -lopenblas).
 *
 *   bench_gemm [kernel] [filter]
 *       kernel: generic, avx2 or avx512 (default, or "auto": the best this CPU runs)
 *       filter: run only the rows whose label contains this text (e.g. "mlp",
 *               "square"); rounds are doubled then, for steadier figures
 *
 * Square n x n x n for n = 64..1024 in the forms NN (A B), TN (A^T B) and NT (A B^T),
 * f32 and f64, one thread on both sides (best of several warm repetitions); then
 * two threads at 512 and 1024; then small and skinny shapes, including the forward
 * and backward products of a 784-128-10 MLP at batch 64 ("mlp") and of a
 * 784-1024-1024-10 MLP at batch 256 ("mlp256"), the latter's also on two threads.
 * Every result is checked
 * against OpenBLAS's (column "diff": max |ours - theirs| / max |theirs|).
 * OPENBLAS_CORETYPE in the environment picks OpenBLAS's kernels (SkylakeX = its
 * AVX-512 ones); on a CPU without AVX-512 that core would die of SIGILL, so then
 * the OpenBLAS columns are skipped. Runs in about 15-30 s. */
#include "bench_util.h"

#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

#include "gemm.h"
#include "pool.h"
#include "internal.h" /* tgi_default_alloc */

#ifdef TG_HAVE_CBLAS
#include <cblas.h>
void openblas_set_num_threads(int num_threads);
char *openblas_get_corename(void);
#endif

static int have_blas; /* OpenBLAS linked and safe to call on this CPU */
static const char *row_filter; /* only rows whose label contains this, if set */
static int headed;             /* the current section's header is printed */
static const char *pending_title;

/* One-thread runs are timed in the thread's CPU time, so that other processes on a
 * busy machine do not count; multi-threaded runs in wall time. */
static clockid_t timer_clock = CLOCK_MONOTONIC;

static double now(void) { return bench_clock(timer_clock); }

/* One GEMM to time: C[m,n] = op(A) op(B), form "NN", "TN" or "NT". */
typedef struct job {
    int dbl, ta, tb, threads, ours;
    int64_t m, n, k;
    const void *A, *B;
    void *C;
    tg_gemm_ws *ws;
} job;

static void run_job(const job *j)
{
    const int64_t lda = j->ta ? j->m : j->k, ldb = j->tb ? j->k : j->n;
    if (j->ours) {
        int rc = j->dbl ? tgi_gemm_f64(j->ws, j->threads, j->ta, j->tb, j->m, j->n, j->k,
                                       (const double *)j->A, lda, (const double *)j->B, ldb, 0,
                                       (double *)j->C, j->n)
                        : tgi_gemm_f32(j->ws, j->threads, j->ta, j->tb, j->m, j->n, j->k,
                                       (const float *)j->A, lda, (const float *)j->B, ldb, 0,
                                       (float *)j->C, j->n);
        if (rc) {
            fprintf(stderr, "bench_gemm: out of memory\n");
            exit(1);
        }
        return;
    }
#ifdef TG_HAVE_CBLAS
    openblas_set_num_threads(j->threads);
    const enum CBLAS_TRANSPOSE ta = j->ta ? CblasTrans : CblasNoTrans;
    const enum CBLAS_TRANSPOSE tb = j->tb ? CblasTrans : CblasNoTrans;
    if (j->dbl)
        cblas_dgemm(CblasRowMajor, ta, tb, (int)j->m, (int)j->n, (int)j->k, 1.0,
                    (const double *)j->A, (int)lda, (const double *)j->B, (int)ldb, 0.0,
                    (double *)j->C, (int)j->n);
    else
        cblas_sgemm(CblasRowMajor, ta, tb, (int)j->m, (int)j->n, (int)j->k, 1.0f,
                    (const float *)j->A, (int)lda, (const float *)j->B, (int)ldb, 0.0f,
                    (float *)j->C, (int)j->n);
#endif
}

/* Seconds per call of each of n jobs (ours, and OpenBLAS's if any): calls are grouped
 * into batches of about 10 ms, the jobs' batches alternate (so both see the same
 * machine), and each job's best batch of `rounds` counts, after a warm-up call. */
static void time_jobs(const job *jobs, int n, int rounds, double *best)
{
    int batch[2];
    timer_clock = jobs[0].threads == 1 ? CLOCK_THREAD_CPUTIME_ID : CLOCK_MONOTONIC;
    for (int i = 0; i < n; i++) {
        run_job(&jobs[i]);
        double t0 = now();
        run_job(&jobs[i]);
        const double one = now() - t0;
        batch[i] = one > 0.01 ? 1 : (int)(0.01 / (one > 1e-7 ? one : 1e-7)) + 1;
        best[i] = 1e30;
    }
    for (int r = 0; r < rounds; r++) {
        for (int i = 0; i < n; i++) {
            const double t0 = now();
            for (int b = 0; b < batch[i]; b++) run_job(&jobs[i]);
            const double t = (now() - t0) / batch[i];
            if (t < best[i]) best[i] = t;
        }
    }
}

/* max |x - y| / max |y| over n elements */
static double rel_diff(int dbl, const void *x, const void *y, int64_t n)
{
    double dmax = 0, ymax = 0;
    for (int64_t i = 0; i < n; i++) {
        double a = dbl ? ((const double *)x)[i] : ((const float *)x)[i];
        double b = dbl ? ((const double *)y)[i] : ((const float *)y)[i];
        if (fabs(a - b) > dmax) dmax = fabs(a - b);
        if (fabs(b) > ymax) ymax = fabs(b);
    }
    return ymax > 0 ? dmax / ymax : dmax;
}

/* Time one shape both ways and print a row. */
static void bench_row(tg_gemm_ws *ws, const char *label, int dbl, const char *form, int64_t m,
                      int64_t n, int64_t k, int threads, int rounds)
{
    if (row_filter && !strstr(label, row_filter)) return;
    if (row_filter) rounds *= 2;
    if (!headed) {
        headed = 1;
        printf("\n%s\n", pending_title);
        printf("%-14s %-3s %-2s %5s %5s %5s %3s  %8s", "shape", "dt", "op", "m", "k", "n",
               "thr", "ours");
        if (have_blas) printf("  %8s  %6s  %8s", "openblas", "ratio", "diff");
        printf("  %9s\n", "us/call");
    }
    const int ta = form[0] == 'T', tb = form[1] == 'T';
    const size_t es = dbl ? sizeof(double) : sizeof(float);
    void *A = malloc((size_t)(m * k) * es), *B = malloc((size_t)(k * n) * es);
    void *C = malloc((size_t)(m * n) * es), *C2 = malloc((size_t)(m * n) * es);
    if (!A || !B || !C || !C2) {
        fprintf(stderr, "bench_gemm: out of memory\n");
        exit(1);
    }
    for (int64_t i = 0; i < m * k; i++) {
        if (dbl) ((double *)A)[i] = bench_urand(-1, 1);
        else ((float *)A)[i] = (float)bench_urand(-1, 1);
    }
    for (int64_t i = 0; i < k * n; i++) {
        if (dbl) ((double *)B)[i] = bench_urand(-1, 1);
        else ((float *)B)[i] = (float)bench_urand(-1, 1);
    }
    job jobs[2] = {{dbl, ta, tb, threads, 1, m, n, k, A, B, C, ws},
                   {dbl, ta, tb, threads, 0, m, n, k, A, B, C2, ws}};
    double best[2];
    const double flop = 2.0 * (double)m * (double)n * (double)k;
    time_jobs(jobs, have_blas ? 2 : 1, rounds, best);
    const double t_ours = best[0];
    printf("%-14s %-3s %-2s %5ld %5ld %5ld %3d  %8.1f", label, dbl ? "f64" : "f32", form,
           (long)m, (long)k, (long)n, threads, flop / t_ours * 1e-9);
    if (have_blas) {
        const double t_blas = best[1];
        printf("  %8.1f  %6.2f  %8.1e", flop / t_blas * 1e-9, t_blas / t_ours,
               rel_diff(dbl, C, C2, m * n));
    }
    printf("  %9.2f\n", t_ours * 1e6);
    fflush(stdout);
    free(A);
    free(B);
    free(C);
    free(C2);
}

/* Start a section; its header is printed before its first row that runs. */
static void header(const char *title)
{
    pending_title = title;
    headed = 0;
}

int main(int argc, char **argv)
{
#ifdef TG_HAVE_CBLAS
    /* OpenBLAS's threads spin for about 2^28 cycles after each of its calls (a tenth
     * of a second), on the core our pool's worker needs for the next batch: some
     * 2-thread rows of ours then ran at one thread's speed (f32 1024^3 A^T B 115
     * GFLOP/s instead of 250). The timeout is read when OpenBLAS loads, so run again
     * with it at its minimum unless the caller chose one. */
    if (!getenv("OPENBLAS_THREAD_TIMEOUT") && setenv("OPENBLAS_THREAD_TIMEOUT", "4", 1) == 0)
        execv("/proc/self/exe", argv); /* on failure, go on as we are */
#endif
    if (argc > 2) row_filter = argv[2];
    if (argc > 1 && strcmp(argv[1], "auto") != 0) {
        tgi_gemm_force_kernel(argv[1]);
    } else { /* the best set this CPU runs, forced so a TG_USE_CBLAS build measures ours */
        tgi_gemm_force_kernel("generic");
        tgi_gemm_force_kernel("avx2");
        tgi_gemm_force_kernel("avx512");
    }
    const char *coretype = getenv("OPENBLAS_CORETYPE");

#ifdef TG_HAVE_CBLAS
    have_blas = 1;
    __builtin_cpu_init();
    if (coretype && (strncasecmp(coretype, "skylakex", 8) == 0 ||
                     strncasecmp(coretype, "cooperlake", 10) == 0 ||
                     strncasecmp(coretype, "sapphire", 8) == 0) &&
        !__builtin_cpu_supports("avx512f")) {
        printf("OPENBLAS_CORETYPE=%s needs AVX-512, which this CPU lacks: "
               "OpenBLAS columns skipped\n", coretype);
        have_blas = 0;
    }
#endif
    printf("tapegrad gemm kernel: %s\n", tgi_gemm_kernel_name());
#ifdef TG_HAVE_CBLAS
    printf("OPENBLAS_CORETYPE: %s; OpenBLAS core: %s; OPENBLAS_THREAD_TIMEOUT: %s\n",
           coretype ? coretype : "(unset)", have_blas ? openblas_get_corename() : "(not used)",
           getenv("OPENBLAS_THREAD_TIMEOUT") ? getenv("OPENBLAS_THREAD_TIMEOUT") : "(unset)");
#else
    printf("OPENBLAS_CORETYPE: %s; built without OpenBLAS\n", coretype ? coretype : "(unset)");
#endif
    printf("GFLOP/s = 2 m n k / time%s\n",
           have_blas ? "; ratio = ours / OpenBLAS (above 1: we are faster)" : "");
    printf("1 thread: thread CPU time; 2 threads: wall time\n");

    tg_gemm_ws *ws = tgi_gemm_ws_new(tgi_default_alloc, NULL);
    tgi_pool *pool = tgi_pool_new(tgi_default_alloc, NULL); /* the 2-thread rows' workers */
    if (!ws || !pool) return 1;
    tgi_gemm_ws_set_pool(ws, pool);
    static const char *const forms[] = {"NN", "TN", "NT"};

    header("square, 1 thread");
    for (int dbl = 0; dbl < 2; dbl++)
        for (int64_t n = 64; n <= 1024; n *= 2)
            for (int f = 0; f < 3; f++)
                bench_row(ws, "square", dbl, forms[f], n, n, n, 1, n >= 512 ? 5 : 8);

    header("square, 2 threads");
    for (int dbl = 0; dbl < 2; dbl++)
        for (int64_t n = 512; n <= 1024; n *= 2)
            for (int f = 0; f < 3; f++) bench_row(ws, "square", dbl, forms[f], n, n, n, 2, 5);

    header("small and skinny, 1 thread");
    enum { N_SMALL = 4, N_LAYERS = 5, N_SK = N_SMALL + 3 * N_LAYERS };
    struct { char label[24]; const char *form; int64_t m, k, n; } sk[N_SK] = {
        {"tiny", "NN", 4, 2, 4},
        {"small", "NN", 16, 16, 16},
        {"small", "NN", 32, 32, 32},
        {"skinny", "NN", 64, 784, 64},
    };
    /* the three products of each dense layer y = x W (x [batch,in], W [in,out]) of a
     * 784-128-10 MLP at batch 64 ("mlp") and of a 784-1024-1024-10 one at batch 256
     * ("mlp256"): forward x W (NN), dW = x^T dy (TN), and the input's gradient
     * dy W^T (NT), named dX for the data and dH for a hidden layer */
    static const struct { const char *name, *dx; int64_t batch, in, out; } layers[N_LAYERS] = {
        {"mlp fc1", "dX", 64, 784, 128},      {"mlp fc2", "dH", 64, 128, 10},
        {"mlp256 fc1", "dX", 256, 784, 1024}, {"mlp256 fc2", "dH", 256, 1024, 1024},
        {"mlp256 fc3", "dH", 256, 1024, 10},
    };
    for (int l = 0; l < N_LAYERS; l++) {
        const int64_t b = layers[l].batch, in = layers[l].in, out = layers[l].out;
        const int64_t mkn[3][3] = {{b, in, out}, {in, b, out}, {b, out, in}};
        const char *const what[3] = {"fwd", "dW", layers[l].dx};
        for (int p = 0; p < 3; p++) { /* forms[p]: NN, TN, NT */
            int i = N_SMALL + 3 * l + p;
            snprintf(sk[i].label, sizeof sk[i].label, "%s %s", layers[l].name, what[p]);
            sk[i].form = forms[p], sk[i].m = mkn[p][0], sk[i].k = mkn[p][1], sk[i].n = mkn[p][2];
        }
    }
    for (int dbl = 0; dbl < 2; dbl++)
        for (int i = 0; i < N_SK; i++)
            bench_row(ws, sk[i].label, dbl, sk[i].form, sk[i].m, sk[i].n, sk[i].k, 1, 8);

    /* the big MLP's products large enough for a second thread, to set against the
     * 1-thread rows above */
    header("mlp256, 2 threads");
    for (int dbl = 0; dbl < 2; dbl++)
        for (int i = N_SMALL; i < N_SK; i++)
            if (strncmp(sk[i].label, "mlp256", 6) == 0 && sk[i].n > 16 && sk[i].k > 16)
                bench_row(ws, sk[i].label, dbl, sk[i].form, sk[i].m, sk[i].n, sk[i].k, 2, 8);

    tgi_gemm_ws_free(ws);
    tgi_pool_free(pool);
    return 0;
}
