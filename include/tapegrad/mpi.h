/* SPDX-License-Identifier: MIT */
/**
 * @file tapegrad/mpi.h
 * @brief Data-parallel training over MPI: the optional part of tapegrad
 *        (library tapegrad_mpi, built when Open MPI is found).
 *
 * Every process (rank) holds the whole model. Each one computes the gradient
 * of its own share of the global batch (tg_batcher_shard), tg_mpi_average_grads
 * combines them into the gradient of the whole batch, and every rank takes the
 * same optimiser step, so the parameters stay equal everywhere. The pattern:
 *
 * @code
 *   MPI_Init(&argc, &argv);
 *   tg_ctx *ctx = tg_ctx_new(seed);                 // same seed on every rank
 *   tg_mpi *mp = tg_mpi_new(ctx, MPI_COMM_WORLD);
 *   ... build the model, load the data ...
 *   if (tg_mpi_broadcast_params(mp, 0) != 0) fail(tg_errmsg(ctx)); // all start equal
 *   tg_batcher_init(&b, ctx, train, global_batch, TG_BATCH_SHUFFLE);
 *   tg_mpi_shard(mp, &b);                           // this rank's share of each batch
 *   while (tg_batcher_next(&b, &x, &y) == 1) {
 *       tg_zero_grad(ctx);
 *       tg_backward(ctx, tg_cross_entropy(ctx, forward(x), y));
 *       // average the gradients, then opt's step; any rank's error stops all here
 *       if (tg_mpi_step(mp, tg_mpi_batch_weight(&b), opt) != 0) break;
 *       tg_reset(ctx);
 *   }
 *   tg_mpi_free(mp);                                 // before the optimiser
 *   tg_optim_free(opt);
 *   MPI_Finalize();
 * @endcode
 *
 * Errors. Every call here is collective: all ranks of the communicator make it,
 * in the same order. Each one is also a sync point for errors: a rank whose
 * context holds an error (a data file it could not read, a failed checkpoint)
 * says so in the call's first, small allreduce, and then every rank records
 * "rank R: <R's message>" (the lowest failing rank's) in its context and
 * returns -1, so all ranks leave their loops and exit with the message instead
 * of waiting forever for the failed one. A rank that cannot reach the next
 * sync point calls tg_mpi_abort, which prints its message and ends the whole
 * job (MPI_Abort). A rank that crashes or is killed is noticed by mpirun, which
 * ends the others. Failures of MPI itself (a peer gone mid-collective) also
 * end the job with MPI's message. See docs/distributed.md.
 *
 * Gradients: when all ranks are on one machine they are summed in an MPI-3
 * shared-memory window, into which the parameters' gradient storage moves at
 * the first tg_mpi_average_grads (tg_mpi_set_shared), and tg_mpi_step also
 * shards the optimiser's step there; otherwise one MPI_Allreduce of the packed
 * gradients.
 *
 * Ownership: a tg_mpi is the caller's: free it with tg_mpi_free before
 * tg_ctx_free, before MPI_Finalize and before the optimiser tg_mpi_step
 * stepped (it hands the gradients, data and state back from the
 * window). Its buffers come from the context's allocator, the window from MPI.
 */
#ifndef TAPEGRAD_MPI_H
#define TAPEGRAD_MPI_H

#include <mpi.h>

#include "tapegrad.h"

#ifdef __cplusplus
extern "C" {
#endif

/** One context's view of a communicator (a duplicate of it, so tapegrad's
 *  messages never mix with the program's own). */
typedef struct tg_mpi tg_mpi;

/** Timings and volumes since tg_mpi_new (or tg_mpi_stats_reset). */
typedef struct {
    int64_t calls;       /**< tg_mpi_average_grads calls */
    int64_t bytes;       /**< gradient bytes reduced (each rank's whole gradient) */
    double comm_seconds; /**< wall time reducing: inside the allreduces, or summing
                              in shared memory and the barrier after it (waiting
                              included) */
    double pack_seconds; /**< wall time packing, scaling and unpacking gradients
                              (shared memory: making the window, first call only) */
    double sync_seconds; /**< wall time of the small error/layout allreduces (mostly
                              waiting for the slowest rank to finish its backward) */
} tg_mpi_stats;

/** Attach @p ctx to a duplicate of @p comm (MPI must be initialised; the
 *  program keeps calling MPI_Init and MPI_Finalize). Gradients go in one
 *  allreduce (tg_mpi_set_bucket_bytes to change it). Collective (it
 *  duplicates @p comm). Returns NULL on error
 *  (recorded in @p ctx). Not collective for errors: every rank must succeed. */
TG_API tg_mpi *tg_mpi_new(tg_ctx *ctx, MPI_Comm comm);
/** Free the duplicate communicator and the buffers, and give the parameters
 *  their own gradient storage back (with the current gradients). Collective
 *  when the gradients went through shared memory (MPI_Win_free), except on a
 *  rank whose context holds an error the others have not heard of at a sync
 *  point (it is about to end the job: tg_mpi_abort). NULL is fine. */
TG_API void tg_mpi_free(tg_mpi *mp);
/** This process's rank, and the number of ranks; -1 and 0 for NULL. */
TG_API int tg_mpi_rank(const tg_mpi *mp);
TG_API int tg_mpi_size(const tg_mpi *mp);
/** The duplicated communicator (for the program's own collectives). */
TG_API MPI_Comm tg_mpi_comm(const tg_mpi *mp);

/** The way of the allreduce (when the gradients do not go through shared
 *  memory, see tg_mpi_set_shared): buckets of at most @p bytes (0: all of them
 *  in one allreduce, the default), packed into one buffer reserved once.
 *  docs/distributed.md has the measurements behind the default. Must be the
 *  same on all ranks. */
TG_API void tg_mpi_set_bucket_bytes(tg_mpi *mp, size_t bytes);

/** When every rank of the communicator is on one machine, tg_mpi_average_grads
 *  sums the gradients in an MPI-3 shared-memory window (the default, @p on = 1):
 *  at its first call each parameter's gradient storage moves into this rank's
 *  segment of the window (so backward writes it there, and tg_grad points
 *  there), each rank sums its part of every gradient over all ranks in rank
 *  order and writes it to every rank, and tg_mpi_free moves the gradients back.
 *  @p on = 0: one MPI_Allreduce (or buckets) instead, as across machines. Must
 *  be the same on all ranks; takes effect at the next tg_mpi_average_grads. */
TG_API void tg_mpi_set_shared(tg_mpi *mp, int on);
/** 1 if tg_mpi_average_grads sums through shared memory (more than one rank,
 *  all on one machine, tg_mpi_set_shared on), else 0. */
TG_API int tg_mpi_shared(const tg_mpi *mp);

/** Collective sync point: 0 when no rank has an error recorded; else every
 *  rank records "rank R: <message>" (R: the lowest failing rank) and gets -1.
 *  Also checks that every rank has the same parameters (names, dtypes,
 *  shapes, in order), an error otherwise. Call it after each step that can
 *  fail on one rank only (loading data, writing a checkpoint). */
TG_API int tg_mpi_check(tg_mpi *mp);

/** Collective: copy every parameter's data, and the context's random
 *  generator state, from rank @p root to all ranks, so they start equal and
 *  shuffle alike. A sync point (tg_mpi_check) first. 0 ok, -1 error. */
TG_API int tg_mpi_broadcast_params(tg_mpi *mp, int root);

/** Collective: replace every parameter's gradient by the sum over ranks of
 *  weight_r * grad_r. With @p weight = this rank's share of the global batch
 *  (tg_mpi_batch_weight: share_size / global_size) and a mean loss, the result
 *  is the gradient of the mean over the whole global batch; @p weight <= 0
 *  means 1 / size, the plain average. A parameter without a gradient on a
 *  rank counts as zeros there; one without a gradient on every rank keeps
 *  none (so the optimisers skip it, as in one process). A sync point first
 *  (no gradient moves when a rank has an error). 0 ok, -1 error. */
TG_API int tg_mpi_average_grads(tg_mpi *mp, double weight);

/** Collective: tg_mpi_average_grads(mp, weight) and then tg_optim_step(opt)
 *  on every rank, in one call, with the same parameters to the bit. When the
 *  gradients go through shared memory (tg_mpi_shared), the step is sharded:
 *  at the first call the parameters' data and @p opt's state move into the
 *  window, one copy on the machine (rank 0's values), and each call has rank r
 *  sum only its shard of every gradient (tg_optim_step_shard's cut), into its
 *  own gradient storage, and update only that shard of every parameter and of
 *  the state. Each rank then reads and writes about 1/size of what the
 *  optimiser and the sum move otherwise, and the state takes one copy of
 *  memory instead of one per rank. After it, this rank's gradients hold the
 *  global gradient in its own shard only (clip gradients, or read them, with
 *  tg_mpi_average_grads and tg_optim_step instead). Rules while the step is
 *  sharded: the parameters are one copy, so write them (tg_load,
 *  tg_resume_load) before the first call (tg_mpi_broadcast_params then sends
 *  the generator state only); tg_optim_step refuses @p opt (its state is
 *  moved: tg_optim_move_state); free the tg_mpi before @p opt
 *  (tg_mpi_free moves the data and the state back into each rank's own
 *  memory). A call with another optimiser, or a tg_mpi_average_grads, moves
 *  them back first. Otherwise (one rank, across machines, shared memory
 *  off) exactly the two calls. A sync point first: on any rank's error nothing
 *  changes and every rank gets -1. 0 ok. */
TG_API int tg_mpi_step(tg_mpi *mp, double weight, tg_optim *opt);

/** Shard @p b for this rank: tg_batcher_shard(b, rank, size). 0 ok, -1 error
 *  (recorded; not a sync point). */
TG_API int tg_mpi_shard(tg_mpi *mp, tg_batcher *b);
/** share_size / global_size of @p b's latest batch (1 for an unsharded one,
 *  0 before the first batch). */
TG_API double tg_mpi_batch_weight(const tg_batcher *b);

/** Collective: a sum over ranks of @p n doubles, in place (e.g. a loss and a
 *  sample count for a global mean). 0 ok, -1 error (a sync point first). */
TG_API int tg_mpi_sum(tg_mpi *mp, double *values, int n);

/** 1 if every rank's parameters are bitwise equal to rank 0's (an XXH3 of all
 *  of them, compared across ranks), 0 if not, -1 on error. Collective. */
TG_API int tg_mpi_params_equal(tg_mpi *mp);

/** Print "tapegrad: rank R: <msg>" (the context's error when @p msg is NULL)
 *  to stderr and end every rank of the job with exit status 1 (MPI_Abort).
 *  For a rank that cannot reach the next sync point. Does not return. */
TG_API void tg_mpi_abort(tg_mpi *mp, const char *msg);

/** The statistics so far, and back to zero. */
TG_API tg_mpi_stats tg_mpi_get_stats(const tg_mpi *mp);
TG_API void tg_mpi_stats_reset(tg_mpi *mp);

#ifdef __cplusplus
}
#endif
#endif /* TAPEGRAD_MPI_H */
