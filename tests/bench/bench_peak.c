/* SPDX-License-Identifier: MIT */
/* bench_peak.c: the FMA peak of one core, the ceiling that the GEMM is measured against.
 *
 *   bench_peak [--json PATH] [--quick]
 *
 * A loop of fused multiply-adds on registers only (no loads or stores), in the widest
 * vectors this CPU runs (512-bit with AVX-512F, else 256-bit with AVX2+FMA, else
 * scalar), 16 independent accumulators so that the FMA units never wait on a result
 * (latency 4 x 2 units = 8 in flight at least), f32 and f64, one thread. GFLOP/s =
 * 2 x lanes x FMAs / thread CPU time, the best of several repeats of about 0.1 s
 * (0.04 s with --quick). script/bench divides the GEMM's rate at n = 1024 by it
 * (issue 13's "fraction of peak" target). With --json the figures are written as JSON
 * lines ({"side":"tapegrad","key":"peak.f32_gflops",...}) as bench_train does. */
#include "bench_util.h"

#include <immintrin.h>
#include <stdio.h>
#include <string.h>

/* 16 chains acc_i = acc_i * m + c, `iters` times; returns a sum so nothing is dead. */
#define CHAINS(T, FMA, ADD, SET1, RED)                                                     \
    T a0 = SET1(1.0), a1 = SET1(1.1), a2 = SET1(1.2), a3 = SET1(1.3), a4 = SET1(1.4),     \
      a5 = SET1(1.5), a6 = SET1(1.6), a7 = SET1(1.7), a8 = SET1(1.8), a9 = SET1(1.9),     \
      a10 = SET1(2.0), a11 = SET1(2.1), a12 = SET1(2.2), a13 = SET1(2.3), a14 = SET1(2.4), \
      a15 = SET1(2.5);                                                                     \
    const T m = SET1(0.9999999), c = SET1(1e-7);                                           \
    for (long i = 0; i < iters; i++) {                                                     \
        __asm__ volatile("" ::: "memory");                                                 \
        a0 = FMA(a0, m, c); a1 = FMA(a1, m, c); a2 = FMA(a2, m, c); a3 = FMA(a3, m, c);    \
        a4 = FMA(a4, m, c); a5 = FMA(a5, m, c); a6 = FMA(a6, m, c); a7 = FMA(a7, m, c);    \
        a8 = FMA(a8, m, c); a9 = FMA(a9, m, c); a10 = FMA(a10, m, c);                      \
        a11 = FMA(a11, m, c); a12 = FMA(a12, m, c); a13 = FMA(a13, m, c);                  \
        a14 = FMA(a14, m, c); a15 = FMA(a15, m, c);                                        \
    }                                                                                      \
    T s = ADD(ADD(ADD(ADD(a0, a1), ADD(a2, a3)), ADD(ADD(a4, a5), ADD(a6, a7))),           \
              ADD(ADD(ADD(a8, a9), ADD(a10, a11)), ADD(ADD(a12, a13), ADD(a14, a15))));    \
    return RED(s)

static double red512s(__m512 v) __attribute__((target("avx512f")));
static double red512s(__m512 v) { return (double)_mm512_reduce_add_ps(v); }
static double red512d(__m512d v) __attribute__((target("avx512f")));
static double red512d(__m512d v) { return _mm512_reduce_add_pd(v); }
static double red256s(__m256 v) __attribute__((target("avx2,fma")));
static double red256s(__m256 v)
{
    float f[8];
    _mm256_storeu_ps(f, v);
    return (double)(f[0] + f[1] + f[2] + f[3] + f[4] + f[5] + f[6] + f[7]);
}
static double red256d(__m256d v) __attribute__((target("avx2,fma")));
static double red256d(__m256d v)
{
    double d[4];
    _mm256_storeu_pd(d, v);
    return d[0] + d[1] + d[2] + d[3];
}
static float fmas(float a, float b, float c) { return a * b + c; }
static double fmad(double a, double b, double c) { return a * b + c; }
static float adds(float a, float b) { return a + b; }
static double addd(double a, double b) { return a + b; }
static float set1s(double x) { return (float)x; }
static double set1d(double x) { return x; }
static double ids(float x) { return (double)x; }
static double idd(double x) { return x; }
#define SET512S(x) _mm512_set1_ps((float)(x))
#define SET512D(x) _mm512_set1_pd(x)
#define SET256S(x) _mm256_set1_ps((float)(x))
#define SET256D(x) _mm256_set1_pd(x)

__attribute__((target("avx512f"))) static double loop512s(long iters)
{
    CHAINS(__m512, _mm512_fmadd_ps, _mm512_add_ps, SET512S, red512s);
}
__attribute__((target("avx512f"))) static double loop512d(long iters)
{
    CHAINS(__m512d, _mm512_fmadd_pd, _mm512_add_pd, SET512D, red512d);
}
__attribute__((target("avx2,fma"))) static double loop256s(long iters)
{
    CHAINS(__m256, _mm256_fmadd_ps, _mm256_add_ps, SET256S, red256s);
}
__attribute__((target("avx2,fma"))) static double loop256d(long iters)
{
    CHAINS(__m256d, _mm256_fmadd_pd, _mm256_add_pd, SET256D, red256d);
}
static double loop1s(long iters) { CHAINS(float, fmas, adds, set1s, ids); }
static double loop1d(long iters) { CHAINS(double, fmad, addd, set1d, idd); }

typedef double (*loop_fn)(long);

/* Best GFLOP/s of `repeats` runs of about `seconds` each. */
static double peak(loop_fn f, int lanes, double seconds, int repeats, double *sink)
{
    long iters = 1000;
    for (;;) { /* calibrate */
        double t0 = cpu_now();
        *sink += f(iters);
        double t = cpu_now() - t0;
        if (t > seconds / 4) {
            iters = (long)((double)iters * seconds / t) + 1;
            break;
        }
        iters *= 4;
    }
    double best = 0;
    for (int r = 0; r < repeats; r++) {
        double t0 = cpu_now();
        *sink += f(iters);
        double t = cpu_now() - t0;
        double g = 2.0 * 16.0 * lanes * (double)iters / t * 1e-9;
        if (g > best) best = g;
    }
    return best;
}

int main(int argc, char **argv)
{
    const char *json = NULL;
    int quick = 0;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--quick")) quick = 1;
        else if (!strcmp(argv[i], "--json") && i + 1 < argc) json = argv[++i];
        else {
            fprintf(stderr, "usage: bench_peak [--json PATH] [--quick]\n");
            return 2;
        }
    }
    __builtin_cpu_init();
    loop_fn fs, fd;
    int bits;
    if (__builtin_cpu_supports("avx512f")) {
        fs = loop512s, fd = loop512d, bits = 512;
    } else if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) {
        fs = loop256s, fd = loop256d, bits = 256;
    } else {
        fs = loop1s, fd = loop1d, bits = 0;
    }
    const double secs = quick ? 0.04 : 0.1;
    const int reps = quick ? 5 : 9;
    double sink = 0;
    const double gs = peak(fs, bits ? bits / 32 : 1, secs, reps, &sink);
    const double gd = peak(fd, bits ? bits / 64 : 1, secs, reps, &sink);
    printf("FMA peak, one thread, %s registers only, 16 chains (best of %d, thread CPU time):\n",
           bits == 512 ? "512-bit (AVX-512F)" : bits == 256 ? "256-bit (AVX2+FMA)" : "scalar",
           reps);
    printf("  f32 %8.1f GFLOP/s\n  f64 %8.1f GFLOP/s\n", gs, gd);
    if (sink == 12345.678) printf("(%g)\n", sink); /* keeps the sums alive */
    if (json) {
        FILE *f = fopen(json, "w");
        if (!f) {
            perror(json);
            return 1;
        }
        fprintf(f, "{\"side\":\"tapegrad\",\"key\":\"peak.f32_gflops\",\"value\":%.2f,"
                   "\"unit\":\"GFLOP/s\"}\n", gs);
        fprintf(f, "{\"side\":\"tapegrad\",\"key\":\"peak.f64_gflops\",\"value\":%.2f,"
                   "\"unit\":\"GFLOP/s\"}\n", gd);
        fprintf(f, "{\"side\":\"tapegrad\",\"key\":\"peak.vector_bits\",\"value\":%d,"
                   "\"unit\":\"bits\"}\n", bits);
        fclose(f);
    }
    return 0;
}
