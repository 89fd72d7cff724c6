/* SPDX-License-Identifier: MIT */
/* tests/bench/bench_util.h: what the benchmark programs (tests/bench/bench_*.c) share:
 * their clocks, the sorting of timings, a small deterministic generator.
 * Header-only: every helper is `static inline`, so a program that uses only some of
 * them compiles warning-free. Include it first (it asks for POSIX clock_gettime; the
 * bench preset defines _POSIX_C_SOURCE for every program anyway). */
#ifndef BENCH_UTIL_H
#define BENCH_UTIL_H

#ifndef _POSIX_C_SOURCE
#define _POSIX_C_SOURCE 200809L
#endif

#include <stdint.h>
#include <stdlib.h>
#include <time.h>

/* ---- clocks ------------------------------------------------------------- */

/* the time of clock `id`, in seconds */
static inline double bench_clock(clockid_t id)
{
    struct timespec t;
    clock_gettime(id, &t);
    return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

/* wall time (CLOCK_MONOTONIC) */
static inline double wall_now(void) { return bench_clock(CLOCK_MONOTONIC); }

/* CPU time of the calling thread: time spent waiting for a core does not count, so
 * other processes on a busy machine count less */
static inline double cpu_now(void) { return bench_clock(CLOCK_THREAD_CPUTIME_ID); }

/* ---- timings ------------------------------------------------------------ */

static inline int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

/* v[0..n) in increasing order */
static inline void sort_doubles(double *v, size_t n) { qsort(v, n, sizeof *v, cmp_double); }

/* ---- inputs ------------------------------------------------------------- */

/* xorshift64: the same stream in every run (state: the program's own copy) */
static uint64_t bench_rng = 88172645463325252ull;
static inline uint64_t bench_rnd(void)
{
    bench_rng ^= bench_rng << 13;
    bench_rng ^= bench_rng >> 7;
    bench_rng ^= bench_rng << 17;
    return bench_rng;
}

/* uniform in [lo, hi), from the top 53 bits of bench_rnd */
static inline double bench_urand(double lo, double hi)
{
    return lo + (hi - lo) * (double)(bench_rnd() >> 11) * (1.0 / 9007199254740992.0);
}

#endif
