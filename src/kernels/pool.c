/* SPDX-License-Identifier: MIT */
/* pool.c: the thread pool (see pool.h).
 *
 * A job is published as one 64-bit word, the ticket:
 *   [gen: 31 bits][nt: 9][nchunks: 12][next: 12]
 * gen counts jobs, nt is the number of threads allowed to join, next the first
 * chunk nobody has taken. A thread takes chunk `next` by compare-and-swap of the
 * ticket it read (next + 1) and only while gen is the job it joined and next <
 * nchunks, so a worker that wakes late can neither take a chunk of a later job
 * nor one past the end. fn and arg are written before the ticket (release) and
 * read only after a successful take (acquire); the caller does not post the next
 * job before every chunk of this one is done, so they cannot change under a
 * worker that holds a chunk.
 *
 * Done is counted in `done`; the caller waits for done == nchunks. Both waits
 * (workers for a job, the caller for the last chunk) spin for TGI_POOL_SPIN_NS,
 * then sleep on a condition variable. The sleeper announces itself (sleepers,
 * caller_waiting) under the mutex before its last check; the waker changes the
 * word first and then looks at the announcement (both sequentially consistent),
 * and takes the mutex before signalling, so no wake-up is lost. */
#if defined(__linux__) && !defined(_GNU_SOURCE)
#define _GNU_SOURCE /* RUSAGE_THREAD */
#endif
#include "pool.h"

#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>

/* How long a thread spins before it sleeps. A training step posts its jobs a few
 * microseconds apart; a worker that slept between them would pay the scheduler's
 * wake-up (tens of microseconds) each time, and so does a caller that slept while
 * the other thread finished its last range. Longer spins take CPU time from
 * whatever else runs on the machine. So the pool spins TGI_POOL_SPIN_NS while its
 * threads have the cores to themselves and TGI_POOL_SPIN_BUSY_NS while they are
 * preempted often: at least TGI_POOL_BUSY_RATE involuntary context switches a
 * second (other processes wanting their cores), counted over windows of
 * TGI_POOL_WINDOW_NS. Big MLP, 2 threads against 1, Sapphire Rapids, 2 vCPUs:
 * 250 us always gave 1.92x idle (50 us: 1.82x) but 0.91x with the other core busy
 * (50 us: 0.98x). Its threads were preempted 30 times a second idle (kernel
 * threads), 700 times with a busy loop on the other core. */
#define TGI_POOL_SPIN_NS 250000
#define TGI_POOL_SPIN_BUSY_NS 50000
#define TGI_POOL_BUSY_RATE 150
#define TGI_POOL_WINDOW_NS 50000000

#define GEN_BITS 31
#define GEN_MASK ((UINT32_C(1) << GEN_BITS) - 1)

typedef struct {
    tgi_pool *pool;
    int id;          /* 1 .. TGI_POOL_MAX - 1 */
    uint32_t seen0;  /* the last job posted before it started */
    pthread_t th;
} pool_worker;

struct tgi_pool {
    tgi_alloc_fn alloc;
    void *ud;
    _Atomic uint64_t ticket;
    _Atomic int64_t done;
    _Atomic int sleepers;        /* workers in (or entering) cond_wait */
    _Atomic int caller_waiting;  /* the caller in (or entering) cond_wait */
    _Atomic int stop;
    _Atomic int busy;            /* a job runs (a nested one runs in its caller) */
    _Atomic int contended;       /* the last window's rate was TGI_POOL_BUSY_RATE or more */
    _Atomic int64_t win_start;   /* the current window: since when (now_ns), */
    _Atomic long win_switches;   /* and the involuntary context switches in it */
    pthread_mutex_t mu;
    pthread_cond_t work_cv, done_cv;
    tgi_pool_fn fn;              /* of the current job (see above) */
    void *arg;
    uint32_t gen;                /* the caller's: last job posted */
    long caller_nivcsw;          /* the caller's last count (count_switches), -1: none yet */
    int nworkers;                /* started: ids 1 .. nworkers */
    pool_worker w[TGI_POOL_MAX];
};

static inline uint64_t ticket_make(uint32_t gen, int nt, int64_t nchunks)
{
    return (uint64_t)gen << 33 | (uint64_t)nt << 24 | (uint64_t)nchunks << 12;
}
static inline uint32_t ticket_gen(uint64_t t) { return (uint32_t)(t >> 33); }
static inline int ticket_nt(uint64_t t) { return (int)(t >> 24 & 511); }
static inline int64_t ticket_nchunks(uint64_t t) { return (int64_t)(t >> 12 & 4095); }
static inline int64_t ticket_next(uint64_t t) { return (int64_t)(t & 4095); }

static inline void cpu_relax(void)
{
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#endif
}

static int64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

/* Adds the calling thread's involuntary context switches since it last counted
 * (*nivcsw: its count then, -1: never) to the pool's window; the thread that finds
 * the window over sets the verdict for the next one (see TGI_POOL_SPIN_NS). The
 * caller counts at every job it posts, a worker whenever it starts to wait, so a
 * thread that is preempted while it works is counted too. */
static void count_switches(tgi_pool *pool, long *nivcsw)
{
#if defined(__linux__) && defined(RUSAGE_THREAD)
    struct rusage ru;
    if (getrusage(RUSAGE_THREAD, &ru) == 0) {
        if (*nivcsw >= 0 && ru.ru_nivcsw > *nivcsw)
            atomic_fetch_add_explicit(&pool->win_switches, ru.ru_nivcsw - *nivcsw,
                                      memory_order_relaxed);
        *nivcsw = ru.ru_nivcsw;
    }
    const int64_t now = now_ns();
    int64_t start = atomic_load_explicit(&pool->win_start, memory_order_relaxed);
    if (now - start >= TGI_POOL_WINDOW_NS &&
        atomic_compare_exchange_strong_explicit(&pool->win_start, &start, now,
                                                memory_order_relaxed, memory_order_relaxed)) {
        const long n = atomic_exchange_explicit(&pool->win_switches, 0, memory_order_relaxed);
        atomic_store_explicit(&pool->contended,
                              (double)n * 1e9 >= (double)TGI_POOL_BUSY_RATE * (double)(now - start),
                              memory_order_relaxed);
    }
#else
    (void)pool;
    (void)nivcsw;
#endif
}

/* How long a thread may spin now (see TGI_POOL_SPIN_NS). */
static int64_t spin_budget(tgi_pool *pool)
{
#if defined(__linux__) && defined(RUSAGE_THREAD)
    return atomic_load_explicit(&pool->contended, memory_order_relaxed) ? TGI_POOL_SPIN_BUSY_NS
                                                                        : TGI_POOL_SPIN_NS;
#else
    (void)pool;
    return TGI_POOL_SPIN_BUSY_NS; /* no count of preemptions: the short spin always */
#endif
}

int tgi_pool_spins_short(tgi_pool *pool) { return spin_budget(pool) == TGI_POOL_SPIN_BUSY_NS; }

/* Spins until cond holds or budget_ns pass. */
#define SPIN_UNTIL(cond, budget_ns)                                                    \
    do {                                                                               \
        int64_t deadline_ = 0;                                                         \
        for (unsigned i_ = 1;; i_++) {                                                 \
            if (cond) break;                                                           \
            cpu_relax();                                                               \
            if ((i_ & 63) == 0) {                                                      \
                const int64_t t_ = now_ns();                                           \
                if (!deadline_) deadline_ = t_ + (budget_ns);                          \
                else if (t_ > deadline_) break;                                        \
            }                                                                          \
        }                                                                              \
    } while (0)

/* Takes and runs chunks of job gen as thread `thread` until none is left. */
static void run_chunks(tgi_pool *pool, uint32_t gen, int thread)
{
    uint64_t t = atomic_load_explicit(&pool->ticket, memory_order_acquire);
    for (;;) {
        if (ticket_gen(t) != gen || ticket_next(t) >= ticket_nchunks(t)) return;
        if (!atomic_compare_exchange_weak_explicit(&pool->ticket, &t, t + 1,
                                                   memory_order_acq_rel, memory_order_acquire))
            continue; /* t now holds the current word */
        pool->fn(pool->arg, ticket_next(t), thread);
        const int64_t n = ticket_nchunks(t);
        if (atomic_fetch_add(&pool->done, 1) + 1 == n && atomic_load(&pool->caller_waiting)) {
            pthread_mutex_lock(&pool->mu);
            pthread_cond_signal(&pool->done_cv);
            pthread_mutex_unlock(&pool->mu);
        }
        t = atomic_load_explicit(&pool->ticket, memory_order_acquire);
    }
}

static int job_posted(tgi_pool *pool, uint32_t seen)
{
    return ticket_gen(atomic_load_explicit(&pool->ticket, memory_order_acquire)) != seen ||
           atomic_load_explicit(&pool->stop, memory_order_relaxed);
}

static void *worker_main(void *p)
{
    pool_worker *w = p;
    tgi_pool *pool = w->pool;
    uint32_t seen = w->seen0;
    long nivcsw = -1;
    for (;;) {
        count_switches(pool, &nivcsw);
        const int64_t budget = spin_budget(pool);
        SPIN_UNTIL(job_posted(pool, seen), budget);
        if (!job_posted(pool, seen)) {
            pthread_mutex_lock(&pool->mu);
            atomic_fetch_add(&pool->sleepers, 1);
            while (ticket_gen(atomic_load(&pool->ticket)) == seen && !atomic_load(&pool->stop))
                pthread_cond_wait(&pool->work_cv, &pool->mu);
            atomic_fetch_sub(&pool->sleepers, 1);
            pthread_mutex_unlock(&pool->mu);
        }
        if (atomic_load(&pool->stop)) return NULL;
        const uint64_t t = atomic_load_explicit(&pool->ticket, memory_order_acquire);
        seen = ticket_gen(t);
        if (w->id < ticket_nt(t)) run_chunks(pool, seen, w->id);
    }
}

tgi_pool *tgi_pool_new(tgi_alloc_fn alloc, void *ud)
{
    if (!alloc) return NULL;
    tgi_pool *pool = alloc(ud, NULL, 0, sizeof *pool);
    if (!pool) return NULL;
    memset(pool, 0, sizeof *pool);
    pool->alloc = alloc;
    pool->ud = ud;
    atomic_init(&pool->ticket, 0);
    atomic_init(&pool->done, 0);
    atomic_init(&pool->sleepers, 0);
    atomic_init(&pool->caller_waiting, 0);
    atomic_init(&pool->stop, 0);
    atomic_init(&pool->busy, 0);
    atomic_init(&pool->contended, 0);
    atomic_init(&pool->win_start, 0);
    atomic_init(&pool->win_switches, 0);
    pool->caller_nivcsw = -1;
    if (pthread_mutex_init(&pool->mu, NULL) != 0) goto fail0;
    if (pthread_cond_init(&pool->work_cv, NULL) != 0) goto fail1;
    if (pthread_cond_init(&pool->done_cv, NULL) != 0) goto fail2;
    return pool;
fail2:
    pthread_cond_destroy(&pool->work_cv);
fail1:
    pthread_mutex_destroy(&pool->mu);
fail0:
    alloc(ud, pool, sizeof *pool, 0);
    return NULL;
}

void tgi_pool_free(tgi_pool *pool)
{
    if (!pool) return;
    pthread_mutex_lock(&pool->mu);
    atomic_store(&pool->stop, 1);
    pthread_cond_broadcast(&pool->work_cv);
    pthread_mutex_unlock(&pool->mu);
    for (int i = 1; i <= pool->nworkers; i++) pthread_join(pool->w[i].th, NULL);
    pthread_cond_destroy(&pool->done_cv);
    pthread_cond_destroy(&pool->work_cv);
    pthread_mutex_destroy(&pool->mu);
    pool->alloc(pool->ud, pool, sizeof *pool, 0);
}

/* Starts workers up to ids 1 .. want - 1 (fewer if the system refuses); the
 * threads block every signal, which belong to the program's own threads. */
static void start_workers(tgi_pool *pool, int want)
{
    if (want > TGI_POOL_MAX) want = TGI_POOL_MAX;
    if (pool->nworkers >= want - 1) return;
    sigset_t all, old;
    sigfillset(&all);
    pthread_sigmask(SIG_SETMASK, &all, &old);
    while (pool->nworkers < want - 1) {
        pool_worker *w = &pool->w[pool->nworkers + 1];
        w->pool = pool;
        w->id = pool->nworkers + 1;
        w->seen0 = pool->gen;
        if (pthread_create(&w->th, NULL, worker_main, w) != 0) break;
        pool->nworkers++;
    }
    pthread_sigmask(SIG_SETMASK, &old, NULL);
}

void tgi_pool_run(tgi_pool *pool, int nt, int64_t nchunks, tgi_pool_fn fn, void *arg)
{
    if (nchunks <= 0) return;
    if (nt > TGI_POOL_MAX) nt = TGI_POOL_MAX;
    if (nt > nchunks) nt = (int)nchunks;
    if (nt > 1 && pool && nchunks <= TGI_POOL_MAX_CHUNKS &&
        !atomic_exchange_explicit(&pool->busy, 1, memory_order_acquire)) {
        start_workers(pool, nt);
        if (nt > pool->nworkers + 1) nt = pool->nworkers + 1;
        if (nt > 1) {
            pool->fn = fn;
            pool->arg = arg;
            atomic_store_explicit(&pool->done, 0, memory_order_relaxed);
            count_switches(pool, &pool->caller_nivcsw);
            const uint32_t gen = pool->gen = (pool->gen + 1) & GEN_MASK;
            atomic_store(&pool->ticket, ticket_make(gen, nt, nchunks));
            if (atomic_load(&pool->sleepers) > 0) {
                pthread_mutex_lock(&pool->mu);
                pthread_cond_broadcast(&pool->work_cv);
                pthread_mutex_unlock(&pool->mu);
            }
            run_chunks(pool, gen, 0);
            if (atomic_load_explicit(&pool->done, memory_order_acquire) != nchunks) {
                const int64_t budget = spin_budget(pool);
                SPIN_UNTIL(atomic_load_explicit(&pool->done, memory_order_acquire) == nchunks,
                           budget);
            }
            if (atomic_load_explicit(&pool->done, memory_order_acquire) != nchunks) {
                pthread_mutex_lock(&pool->mu);
                atomic_store(&pool->caller_waiting, 1);
                while (atomic_load(&pool->done) != nchunks)
                    pthread_cond_wait(&pool->done_cv, &pool->mu);
                atomic_store(&pool->caller_waiting, 0);
                pthread_mutex_unlock(&pool->mu);
            }
            atomic_store_explicit(&pool->busy, 0, memory_order_release);
            return;
        }
        atomic_store_explicit(&pool->busy, 0, memory_order_release);
    }
    for (int64_t c = 0; c < nchunks; c++) fn(arg, c, 0);
}
