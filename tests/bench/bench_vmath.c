/* SPDX-License-Identifier: MIT */
/* bench_vmath.c: speed and accuracy of the vmath kernels (src/kernels/vmath.c).
 *
 *   bench_vmath [isa]            speed: elements per nanosecond of every kernel next to
 *                                a plain C loop (libm's expf/logf/tanhf/... for the
 *                                transcendental functions), n = 4096 and 1M, f32 and
 *                                f64, one thread; the ratio column compares the two
 *                                in the same run. About 30-60 s for all sets.
 *   bench_vmath accuracy [isa]   accuracy: the maximum error in ulps of exp, log, tanh
 *                                and sigmoid over every float in the range that
 *                                matters (exhaustive for f32) and over 2^24 random
 *                                doubles per function (f64), against libm in double
 *                                (f32) and long double (f64). A few minutes per set.
 *
 * isa: generic, avx2 or avx512; default: every set this CPU can run. Built with
 * -DTG_BUILD_BENCH=ON (the "bench" preset). Figures: docs/vmath.md. */
#include "bench_util.h"

#include <float.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "vmath.h"

/* timed in thread CPU time (cpu_now), so other processes on a busy machine do not count */

/* ---- the plain loops we compare with ----
 * REF_LOOPS(T, S, EXP, LOG, TANH, SQRT) defines ref_<kernel>_<S>, the C loop of each
 * kernel's formula on elements of type T, with libm's functions of that type. */

/* y = EXPR (of x[i]) */
#define REF_MAP(NAME, T, EXPR)                                                              \
    static void NAME(T *y, const T *x, int64_t n)                                           \
    {                                                                                       \
        for (int64_t i = 0; i < n; i++) y[i] = EXPR;                                        \
    }
/* a backward helper: dx += dy f'(A) (STMT), A the saved input x or output y */
#define REF_BWD(NAME, T, A, STMT)                                                           \
    static void NAME(T *dx, const T *A, const T *dy, int64_t n)                             \
    {                                                                                       \
        for (int64_t i = 0; i < n; i++) STMT;                                               \
    }
/* Adam with wd = 0.01 (the formula of vmath.h) */
#define REF_ADAM(NAME, T, SQRT)                                                             \
    static void NAME(T *p, const T *g, T *m, T *v, int64_t n)                               \
    {                                                                                       \
        for (int64_t i = 0; i < n; i++) {                                                   \
            T d = g[i] + (T)0.01 * p[i];                                                    \
            T mi = m[i] * (T)0.9 + (T)0.1 * d;                                              \
            T vi = v[i] * (T)0.999 + (T)0.001 * d * d;                                      \
            m[i] = mi;                                                                      \
            v[i] = vi;                                                                      \
            p[i] = p[i] - (T)1e-3 * (mi / (SQRT(vi) * (T)1.2 + (T)1e-8));                   \
        }                                                                                   \
    }
#define REF_LOOPS(T, S, EXP, LOG, TANH, SQRT)                                               \
    REF_MAP(ref_exp_##S, T, EXP(x[i]))                                                      \
    REF_MAP(ref_log_##S, T, LOG(x[i]))                                                      \
    REF_MAP(ref_tanh_##S, T, TANH(x[i]))                                                    \
    REF_MAP(ref_sigmoid_##S, T, (T)1.0 / ((T)1.0 + EXP(-x[i])))                             \
    REF_MAP(ref_relu_##S, T, (x[i] > 0 || isnan(x[i])) ? x[i] : 0)                          \
    REF_BWD(ref_sigmoid_bwd_##S, T, y, dx[i] += dy[i] * y[i] * (1 - y[i]))                  \
    REF_BWD(ref_tanh_bwd_##S, T, y, dx[i] += dy[i] * (1 - y[i] * y[i]))                     \
    REF_BWD(ref_relu_bwd_##S, T, x, if (x[i] > 0) dx[i] += dy[i])                           \
    REF_ADAM(ref_adam_##S, T, SQRT)
REF_LOOPS(float, f32, expf, logf, tanhf, sqrtf)
REF_LOOPS(double, f64, exp, log, tanh, sqrt)

/* ---- one benchmark row ---- */

enum { K_EXP, K_LOG, K_TANH, K_SIGMOID, K_RELU, K_SIG_BWD, K_TANH_BWD, K_RELU_BWD, K_AXPY,
       K_ADAM, K_COUNT };
static const char *const kname[K_COUNT] = {"exp",         "log",      "tanh",
                                           "sigmoid",     "relu",     "sigmoid_bwd",
                                           "tanh_bwd",    "relu_bwd", "axpy",
                                           "adam"};
static const char *const kbase[K_COUNT] = {"expf/exp",  "logf/log", "tanhf/tanh", "1/(1+expf(-x))",
                                           "C loop",    "C loop",   "C loop",     "C loop",
                                           "C loop",    "C loop"};

typedef struct {
    int k, dbl, ours;
    int64_t n;
    void *a, *b, *c, *d; /* x / dx, y, dy, ... */
} job;

/* run_f32 and run_f64: one call of kernel j->k, ours or the plain loop */
#define RUN_TYPED(T, S)                                                                     \
    static void run_##S(const job *j)                                                       \
    {                                                                                       \
        const int64_t n = j->n;                                                             \
        T *a = j->a, *b = j->b, *c = j->c, *d = j->d;                                       \
        switch (j->k) {                                                                     \
        case K_EXP: (j->ours ? tgi_vexp_##S : ref_exp_##S)(b, a, n); break;                 \
        case K_LOG: (j->ours ? tgi_vlog_##S : ref_log_##S)(b, a, n); break;                 \
        case K_TANH: (j->ours ? tgi_vtanh_##S : ref_tanh_##S)(b, a, n); break;              \
        case K_SIGMOID: (j->ours ? tgi_vsigmoid_##S : ref_sigmoid_##S)(b, a, n); break;     \
        case K_RELU: (j->ours ? tgi_vrelu_##S : ref_relu_##S)(b, a, n); break;              \
        case K_SIG_BWD: (j->ours ? tgi_vsigmoid_bwd_##S : ref_sigmoid_bwd_##S)(d, b, c, n); \
            break;                                                                          \
        case K_TANH_BWD: (j->ours ? tgi_vtanh_bwd_##S : ref_tanh_bwd_##S)(d, b, c, n);      \
            break;                                                                          \
        case K_RELU_BWD: (j->ours ? tgi_vrelu_bwd_##S : ref_relu_bwd_##S)(d, a, c, n);      \
            break;                                                                          \
        case K_AXPY:                                                                        \
            if (j->ours)                                                                    \
                tgi_vaxpy_##S(d, (T)1e-3, c, n);                                            \
            else                                                                            \
                for (int64_t i = 0; i < n; i++) d[i] += (T)1e-3 * c[i];                     \
            break;                                                                          \
        case K_ADAM:                                                                        \
            if (j->ours)                                                                    \
                tgi_vadam_##S(a, c, b, d, n, 1e-3, 0.9, 0.999, 1.2, 1e-8, 0.01, 0, 1e-3);   \
            else                                                                            \
                ref_adam_##S(a, c, b, d, n);                                                \
            break;                                                                          \
        }                                                                                   \
    }
RUN_TYPED(float, f32)
RUN_TYPED(double, f64)

static void run(const job *j)
{
    if (j->dbl)
        run_f64(j);
    else
        run_f32(j);
}

/* Inputs that keep every kernel on its common path (and Adam's state bounded). */
static void fill(const job *j)
{
    for (int64_t i = 0; i < j->n; i++) {
        double a, b = bench_urand(0.01, 0.99), c = bench_urand(-1, 1), d = bench_urand(0, 1e-3);
        switch (j->k) {
        case K_EXP: a = bench_urand(-10, 10); break;
        case K_LOG: a = exp(bench_urand(-10, 10)); break;
        case K_TANH: a = bench_urand(-4, 4); break;
        case K_ADAM: a = bench_urand(-1, 1); break;
        default: a = bench_urand(-10, 10); break;
        }
        if (j->dbl) {
            ((double *)j->a)[i] = a;
            ((double *)j->b)[i] = b;
            ((double *)j->c)[i] = c;
            ((double *)j->d)[i] = d;
        } else {
            ((float *)j->a)[i] = (float)a;
            ((float *)j->b)[i] = (float)b;
            ((float *)j->c)[i] = (float)c;
            ((float *)j->d)[i] = (float)d;
        }
    }
}

/* Elements per ns: calls grouped into batches of about 20 ms, best of 5 batches. */
static double rate(const job *j)
{
    fill(j);
    run(j);
    double t0 = cpu_now();
    run(j);
    double one = cpu_now() - t0;
    int batch = one > 0.02 ? 1 : (int)(0.02 / (one > 1e-7 ? one : 1e-7)) + 1;
    double best = 1e30;
    for (int r = 0; r < 5; r++) {
        if (j->k == K_ADAM || j->k >= K_SIG_BWD) fill(j); /* in-place kernels: keep values sane */
        t0 = cpu_now();
        for (int b = 0; b < batch; b++) run(j);
        double t = (cpu_now() - t0) / batch;
        if (t < best) best = t;
    }
    return (double)j->n / (best * 1e9);
}

static int bench_speed(const char *isa)
{
    const int64_t ns[2] = {4096, 1 << 20};
    /* the arrays start at different offsets within a page (17 cache lines apart), so
     * loads from one and stores to another do not alias in the low 12 address bits
     * ("4K aliasing"), which would slow some rows down by 2-3x at random */
    size_t bytes = (size_t)ns[1] * sizeof(double) + 4096 + 4 * 17 * 64;
    void *raw[4], *buf[4];
    for (int i = 0; i < 4; i++) {
        if (!(raw[i] = malloc(bytes))) {
            fprintf(stderr, "bench_vmath: out of memory\n");
            return 1;
        }
        uintptr_t a = ((uintptr_t)raw[i] + 4095) & ~(uintptr_t)4095;
        buf[i] = (void *)(a + (uintptr_t)i * 17 * 64);
    }
    printf("\nkernel set: %s  (elements per ns, one thread; ratio = ours / plain loop)\n",
           isa);
    printf("%-12s %-5s %8s %10s %10s %8s   %s\n", "kernel", "dtype", "n", "ours", "loop",
           "ratio", "loop is");
    for (int k = 0; k < K_COUNT; k++)
        for (int dbl = 0; dbl < 2; dbl++)
            for (int in = 0; in < 2; in++) {
                job j = {k, dbl, 1, ns[in], buf[0], buf[1], buf[2], buf[3]};
                double ours = rate(&j);
                j.ours = 0;
                double base = rate(&j);
                printf("%-12s %-5s %8lld %10.3f %10.3f %7.1fx   %s\n", kname[k],
                       dbl ? "f64" : "f32", (long long)ns[in], ours, base, ours / base,
                       kbase[k]);
                fflush(stdout);
            }
    for (int i = 0; i < 4; i++) free(raw[i]);
    return 0;
}

/* ---- accuracy ---- */

/* err_f32 (reference in double) and err_f64 (in long double): the error of y in ulps
 * of the exact value ref; 1e9 for a wrong special value. T has MANT significand bits,
 * and MIN = 2^EMIN is its least normal number. */
#define ERR_ULPS(S, T, R, FABS, ILOGB, LDEXP, MANT, MIN, EMIN)                              \
    static double err_##S(T y, R ref)                                                       \
    {                                                                                       \
        if (isnan(ref)) return isnan(y) ? 0 : 1e9;                                          \
        if (isinf((T)ref)) return y == (T)ref ? 0 : 1e9;                                    \
        if (!isfinite(y)) return 1e9;                                                       \
        const R r = FABS(ref); /* one ulp of T at r: 2^(e - MANT + 1) */                    \
        const int e = r < MIN ? EMIN : ILOGB(r);                                            \
        return (double)(FABS((R)y - ref) / LDEXP(1, e - MANT + 1));                         \
    }
ERR_ULPS(f32, float, double, fabs, ilogb, ldexp, 24, FLT_MIN, -126)
ERR_ULPS(f64, double, long double, fabsl, ilogbl, ldexpl, 53, DBL_MIN, -1022)

static double sig_d(double x) { return x >= 0 ? 1 / (1 + exp(-x)) : exp(x) / (1 + exp(x)); }
static long double sig_l(long double x)
{
    return x >= 0 ? 1 / (1 + expl(-x)) : expl(x) / (1 + expl(x));
}

/* A function: its f32 kernel against r32 (in double) on every float in [lo32, hi32],
 * its f64 kernel against r64 (in long double) on random doubles of [lo64, hi64] (log,
 * lo64 = hi64: random bit patterns of positive numbers). */
typedef struct {
    const char *name;
    void (*f32)(float *, const float *, int64_t);
    double (*r32)(double);
    float lo32, hi32;
    void (*f64)(double *, const double *, int64_t);
    long double (*r64)(long double);
    double lo64, hi64;
} afn;

/* walk the floats from lo to hi in order: next float after x */
static float next_up(float x) { return nextafterf(x, INFINITY); }

static int bench_accuracy(const char *isa)
{
    const afn fns[] = {
        {"exp", tgi_vexp_f32, exp, -104.0f, 89.0f, tgi_vexp_f64, expl, -746, 710},
        {"log", tgi_vlog_f32, log, 0x1p-149f, 0x1.fffffep127f, tgi_vlog_f64, logl, 0, 0},
        {"tanh", tgi_vtanh_f32, tanh, -20.0f, 20.0f, tgi_vtanh_f64, tanhl, -20, 20},
        {"sigmoid", tgi_vsigmoid_f32, sig_d, -104.0f, 89.0f, tgi_vsigmoid_f64, sig_l, -746, 40},
    };
    enum { CH = 1 << 16 };
    static float xf[CH], yf[CH];
    static double xd[CH], yd[CH];
    printf("\nkernel set: %s  (maximum error in ulps, and where)\n", isa);
    for (size_t f = 0; f < sizeof fns / sizeof fns[0]; f++) {
        /* f32: exhaustive over [lo32, hi32] */
        double m32 = 0;
        float at32 = 0;
        uint64_t count = 0;
        float x = fns[f].lo32;
        int done = 0;
        while (!done) {
            int k = 0;
            for (; k < CH && !done; k++) {
                xf[k] = x;
                if (x >= fns[f].hi32) done = 1;
                else x = next_up(x);
            }
            fns[f].f32(yf, xf, k);
            for (int i = 0; i < k; i++) {
                double e = err_f32(yf[i], fns[f].r32((double)xf[i]));
                if (e > m32) {
                    m32 = e;
                    at32 = xf[i];
                }
            }
            count += (uint64_t)k;
        }
        /* f64: 2^24 random points (log: random positive bit patterns, subnormals too;
         * others: half uniform on [lo, hi], half uniform on a range 1000 x narrower) */
        double m64 = 0, at64 = 0;
        for (int c = 0; c < 256; c++) {
            for (int i = 0; i < CH; i++) {
                if (fns[f].lo64 == fns[f].hi64) {
                    uint64_t b = bench_rnd() % 0x7ff0000000000000ull;
                    memcpy(&xd[i], &b, sizeof b);
                } else {
                    double s = (i & 1) ? 1e-3 : 1.0;
                    xd[i] = bench_urand(fns[f].lo64 * s, fns[f].hi64 * s);
                }
            }
            fns[f].f64(yd, xd, CH);
            for (int i = 0; i < CH; i++) {
                double e = err_f64(yd[i], fns[f].r64((long double)xd[i]));
                if (e > m64) {
                    m64 = e;
                    at64 = xd[i];
                }
            }
        }
        printf("%-8s f32 %.3f ulp at %-16a (%llu floats)   f64 %.3f ulp at %a (2^24 points)\n",
               fns[f].name, m32, (double)at32, (unsigned long long)count, m64, at64);
        fflush(stdout);
    }
    return 0;
}

int main(int argc, char **argv)
{
    int accuracy = 0;
    const char *only = NULL;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "accuracy") == 0) accuracy = 1;
        else only = argv[i];
    }
    const char *isas[3] = {"generic", "avx2", "avx512"};
    int rc = 0, ran = 0;
    for (int i = 0; i < 3; i++) {
        if (only && strcmp(only, isas[i]) != 0) continue;
        tgi_vmath_force(isas[i]);
        if (strcmp(tgi_vmath_isa(), isas[i]) != 0) {
            printf("\nkernel set %s: not available on this CPU (skipped)\n", isas[i]);
            continue;
        }
        ran++;
        rc |= accuracy ? bench_accuracy(isas[i]) : bench_speed(isas[i]);
    }
    tgi_vmath_force(NULL);
    if (!ran) {
        fprintf(stderr, "bench_vmath: no kernel set named %s\n", only ? only : "?");
        return 2;
    }
    return rc;
}
