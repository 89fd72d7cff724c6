/* SPDX-License-Identifier: MIT */
/* test_pool.c: the thread pool (src/kernels/pool.h) and what rests on it.
 *
 * The pool alone: every chunk of a job runs exactly once, on a thread index
 * below the count asked for, for many jobs in a row (a lost wake-up or a late
 * worker taking a chunk of the next job shows here as a count off by one or a
 * hang); jobs after the workers fell asleep; a nested job runs in its caller;
 * more threads than chunks. Through the library: an SGD training step of an MLP
 * gives the same bits on 1, 2 and 3 threads, and two contexts training on two
 * threads at once (each with its own pool of two) give the same bits as each
 * one alone. */
#include <criterion/criterion.h>

#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "pool.h"
#include "tapegrad.h"

static void *sys_alloc(void *ud, void *p, size_t osize, size_t nsize)
{
    (void)ud, (void)osize;
    if (nsize == 0) {
        free(p);
        return NULL;
    }
    return realloc(p, nsize);
}

#define MAX_CHUNKS 1000

typedef struct {
    _Atomic int runs[MAX_CHUNKS];
    _Atomic int bad_thread;
    int nt;
    tgi_pool *pool; /* for the nested job */
} count_job;

static void count_chunk(void *arg, int64_t c, int t)
{
    count_job *j = arg;
    if (t < 0 || t >= j->nt) atomic_store(&j->bad_thread, 1);
    atomic_fetch_add(&j->runs[c], 1);
}

/* runs a job of n chunks on nt threads and checks each chunk ran once */
static void run_and_check(tgi_pool *pool, int nt, int64_t n, count_job *j)
{
    for (int64_t c = 0; c < n; c++) atomic_store(&j->runs[c], 0);
    atomic_store(&j->bad_thread, 0);
    j->nt = nt;
    tgi_pool_run(pool, nt, n, count_chunk, j);
    for (int64_t c = 0; c < n; c++)
        cr_assert_eq(atomic_load(&j->runs[c]), 1, "nt %d, %lld chunks: chunk %lld ran %d times",
                     nt, (long long)n, (long long)c, atomic_load(&j->runs[c]));
    cr_assert_eq(atomic_load(&j->bad_thread), 0, "a chunk ran on a thread index >= %d", nt);
}

Test(pool, every_chunk_runs_once)
{
    tgi_pool *pool = tgi_pool_new(sys_alloc, NULL);
    cr_assert_not_null(pool);
    static count_job j;
    for (int rep = 0; rep < 3000; rep++) { /* back to back: workers never sleep */
        const int nt = 1 + rep % 4;
        const int64_t n = 1 + (rep * 7) % 40;
        run_and_check(pool, nt, n, &j);
    }
    run_and_check(pool, 3, MAX_CHUNKS, &j);
    run_and_check(pool, 8, 3, &j); /* more threads than chunks */
    tgi_pool_free(pool);
}

Test(pool, jobs_after_the_workers_sleep)
{
    tgi_pool *pool = tgi_pool_new(sys_alloc, NULL);
    cr_assert_not_null(pool);
    static count_job j;
    for (int rep = 0; rep < 5; rep++) {
        run_and_check(pool, 2, 16, &j);
        nanosleep(&(struct timespec){0, 5000000}, NULL); /* 5 ms: well past the spin */
    }
    tgi_pool_free(pool);
}

/* Some 20-100 us of work, then the core to whoever else is runnable on it: with
 * every core busy, an involuntary context switch of the pool's thread (the count
 * the pool reads) at every chunk, as a busy machine's scheduler does at the end of
 * time slices. */
static void busy_chunk(void *arg, int64_t c, int t)
{
    (void)arg, (void)c, (void)t;
    volatile double x = 1;
    for (int i = 0; i < 20000; i++) x = x * 1.0000001 + 1e-9;
    sched_yield();
}

/* With every core taken by other processes, the pool's threads are preempted often,
 * and the pool spins briefly instead of taking CPU time from them. */
Test(pool, spins_short_when_the_cores_are_busy)
{
    tgi_pool *pool = tgi_pool_new(sys_alloc, NULL);
    cr_assert_not_null(pool);
    long cpus = sysconf(_SC_NPROCESSORS_ONLN);
    const int nhog = cpus < 1 ? 2 : cpus > 63 ? 64 : (int)cpus + 1;
    pid_t hog[64];
    int started = 0;
    for (; started < nhog; started++) {
        const pid_t p = fork();
        if (p == 0) { /* busy for 3 s at most, in case the test dies before it kills it */
            const time_t end = time(NULL) + 3;
            for (volatile unsigned long x = 0;; x++)
                if ((x & 0xfffff) == 0 && time(NULL) >= end) _exit(0);
        }
        if (p < 0) break;
        hog[started] = p;
    }
    struct timespec t0, t;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    int shortened = 0;
    do { /* about 0.5 s: windows of 50 ms */
        tgi_pool_run(pool, 2, 8, busy_chunk, NULL);
        shortened |= tgi_pool_spins_short(pool);
        clock_gettime(CLOCK_MONOTONIC, &t);
    } while ((t.tv_sec - t0.tv_sec) * 1000000000L + (t.tv_nsec - t0.tv_nsec) < 500000000L);
    for (int i = 0; i < started; i++) {
        kill(hog[i], SIGKILL);
        waitpid(hog[i], NULL, 0);
    }
    cr_assert_gt(started, 0);
    cr_expect(shortened, "%d busy processes on %ld cores: the pool's waits stayed long", started,
              cpus);
    tgi_pool_free(pool);
}

static void nested_chunk(void *arg, int64_t c, int t)
{
    count_job *j = arg;
    (void)c, (void)t;
    /* the same pool from inside its job: runs whole in this thread */
    static _Thread_local count_job inner;
    inner.nt = 1;
    for (int i = 0; i < 5; i++) atomic_store(&inner.runs[i], 0);
    atomic_store(&inner.bad_thread, 0);
    tgi_pool_run(j->pool, 4, 5, count_chunk, &inner);
    for (int i = 0; i < 5; i++)
        if (atomic_load(&inner.runs[i]) != 1) atomic_store(&j->bad_thread, 1);
    if (atomic_load(&inner.bad_thread)) atomic_store(&j->bad_thread, 1);
}

Test(pool, nested_job_runs_in_its_caller)
{
    static count_job j;
    j.pool = tgi_pool_new(sys_alloc, NULL);
    cr_assert_not_null(j.pool);
    atomic_store(&j.bad_thread, 0);
    tgi_pool_run(j.pool, 2, 8, nested_chunk, &j);
    cr_assert_eq(atomic_load(&j.bad_thread), 0, "a nested job missed a chunk or used a worker");
    tgi_pool_free(j.pool);
}

Test(pool, null_pool_and_one_thread_run_in_the_caller)
{
    static count_job j;
    run_and_check(NULL, 1, 10, &j);
    j.nt = 1; /* a NULL pool with nt 4 still runs every chunk, all as thread 0 */
    for (int c = 0; c < 10; c++) atomic_store(&j.runs[c], 0);
    tgi_pool_run(NULL, 4, 10, count_chunk, &j);
    for (int c = 0; c < 10; c++) cr_assert_eq(atomic_load(&j.runs[c]), 1);
    cr_assert_eq(atomic_load(&j.bad_thread), 0);
}

/* ---- training through the library ------------------------------------------ */

#define NP 6 /* 784-512-256-10: three weights, three biases */

/* `steps` SGD (momentum) steps of a 784-512-256-10 MLP, batch 128, on
 * `threads` threads (hidden activations [128,512]: 64K elements, threaded;
 * the products well above the GEMM's threshold); h gets the parameters'
 * hashes. */
static void train_sgd(int threads, int steps, uint64_t h[NP])
{
    tg_ctx *ctx = tg_ctx_new(11);
    cr_assert_not_null(ctx);
    cr_assert_eq(tg_set_threads(ctx, threads), 0);
    tg_mlp m;
    cr_assert_eq(tg_mlp_init(ctx, &m, "fc", 4, (const int64_t[]){784, 512, 256, 10}, TG_ACT_RELU,
                             TG_F32),
                 0, "%s", tg_errmsg(ctx));
    tg_tensor *p[NP];
    cr_assert_eq(tg_mlp_params(&m, p, NP), NP);
    tg_optim_opts o = tg_optim_defaults(TG_OPT_SGD);
    o.lr = 0.05;
    o.momentum = 0.9;
    tg_optim *opt = tg_optim_new(ctx, &o, NULL, 0);
    cr_assert_not_null(opt, "%s", tg_errmsg(ctx));
    int32_t labels[128];
    for (int step = 0; step < steps; step++) {
        tg_tensor *x = tg_new(ctx, TG_F32, 2, (int64_t[]){128, 784});
        cr_assert(tg_ok(ctx), "%s", tg_errmsg(ctx));
        tg_fill_uniform(ctx, x, 0, 1);
        for (int i = 0; i < 128; i++) labels[i] = (int32_t)tg_rand_below(ctx, 10);
        tg_tensor *y = tg_from(ctx, TG_I32, 1, (int64_t[]){128}, labels);
        tg_tensor *loss = tg_cross_entropy(ctx, tg_mlp_forward(ctx, &m, x), y);
        tg_zero_grad(ctx);
        tg_backward(ctx, loss);
        cr_assert_eq(tg_optim_step(opt), 0, "%s", tg_errmsg(ctx));
        cr_assert(tg_ok(ctx), "%s", tg_errmsg(ctx));
        tg_reset(ctx);
    }
    for (int i = 0; i < NP; i++) h[i] = tg_hash(p[i]);
    tg_optim_free(opt);
    tg_ctx_free(ctx);
}

Test(pool, sgd_training_is_bit_identical_on_1_2_and_3_threads)
{
    uint64_t init[NP], h[3][NP];
    train_sgd(1, 0, init);
    for (int t = 1; t <= 3; t++) train_sgd(t, 2, h[t - 1]);
    for (int i = 0; i < NP; i++) {
        cr_assert_neq(h[0][i], init[i], "parameter %d did not change", i);
        cr_assert_eq(h[1][i], h[0][i], "parameter %d: 2 threads differ from 1", i);
        cr_assert_eq(h[2][i], h[0][i], "parameter %d: 3 threads differ from 1", i);
    }
}

typedef struct {
    uint64_t h[NP];
} train_result;

static void *train_thread(void *arg)
{
    train_result *r = arg;
    train_sgd(2, 2, r->h);
    return NULL;
}

Test(pool, two_contexts_on_two_threads)
{
    uint64_t alone[NP];
    train_sgd(2, 2, alone);
    pthread_t th[2];
    train_result r[2];
    for (int i = 0; i < 2; i++)
        cr_assert_eq(pthread_create(&th[i], NULL, train_thread, &r[i]), 0);
    for (int i = 0; i < 2; i++) pthread_join(th[i], NULL);
    for (int t = 0; t < 2; t++)
        for (int i = 0; i < NP; i++)
            cr_assert_eq(r[t].h[i], alone[i], "thread %d, parameter %d differs from a lone run", t,
                         i);
}
