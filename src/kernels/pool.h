/* SPDX-License-Identifier: MIT */
/* pool.h: the library's own thread pool. Internal, not part of the public API.
 *
 * One pool per context (or per GEMM workspace that is given one). It starts no
 * thread until a job first asks for more than one, and then only as many as asked
 * (it grows when a later job asks for more, up to TGI_POOL_MAX). A job is nchunks
 * independent pieces of work, fn(arg, chunk, thread) for chunk in [0, nchunks):
 * the caller (thread 0) and up to nt - 1 workers (threads 1 .. nt - 1) take the
 * chunks one at a time from a shared counter, so whichever thread is running does
 * the work, and a worker the scheduler has not woken yet costs nothing (a busy
 * machine takes nothing from the caller). Which thread runs a chunk must not
 * change the chunk's result: per-thread scratch is indexed by `thread`, results
 * by `chunk`; then the bits do not depend on the thread count.
 *
 * Waiting. A worker spins for a while after its last chunk (the next job of a
 * training step usually follows within microseconds), then sleeps on a condition
 * variable; the caller waits for the last chunk the same way. The while is 250 us
 * when the pool's threads have their cores to themselves, 50 us when they are
 * preempted often (another process wants the cores: pool.c, TGI_POOL_SPIN_NS).
 * Nothing spins longer than that, whatever the load.
 *
 * A pool is used by one thread at a time (its context's); two contexts on two
 * threads have two pools. A job run from inside a job of the same pool runs
 * whole in the calling thread, as thread 0 (fn must allow it: nested jobs use
 * their own scratch). A job allocates nothing once the workers exist. */
#ifndef TG_POOL_H
#define TG_POOL_H

#include <stddef.h>
#include <stdint.h>

#include "gemm.h" /* tgi_alloc_fn */

#define TGI_POOL_MAX 256           /* threads, the caller included */
#define TGI_POOL_MAX_CHUNKS 4095   /* chunks of one job */

typedef struct tgi_pool tgi_pool;
typedef void (*tgi_pool_fn)(void *arg, int64_t chunk, int thread);

/* A pool without threads yet; NULL if out of memory. */
tgi_pool *tgi_pool_new(tgi_alloc_fn alloc, void *ud);
/* Stops and joins the workers, frees the pool; NULL is a no-op. */
void tgi_pool_free(tgi_pool *pool);
/* Runs fn(arg, c, t) once for every chunk c in [0, nchunks) on at most nt
 * threads (t < nt) and returns when all have returned. nt <= 1, a NULL pool, a
 * nested job, or workers that could not be started: fewer threads (down to the
 * caller alone), the same chunks. nchunks is at most TGI_POOL_MAX_CHUNKS. */
void tgi_pool_run(tgi_pool *pool, int nt, int64_t nchunks, tgi_pool_fn fn, void *arg);
/* 1 if the pool's waits are short now (its threads were preempted often in the
 * last window, or the system cannot tell), 0 if long; for tests. */
int tgi_pool_spins_short(tgi_pool *pool);

#endif /* TG_POOL_H */
