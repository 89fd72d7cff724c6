/* SPDX-License-Identifier: MIT */
/* mpi.c: data-parallel training over MPI (include/tapegrad/mpi.h).
 *
 * Every collective here starts with a sync point: one small allreduce (MAX of
 * four int64) that carries "has this rank an error?", the lowest failing rank,
 * and a hash of the parameter layout (names, dtypes, shapes). When a rank has
 * failed, the failing rank's message is broadcast and every rank records it and
 * returns -1 before any gradient moves, so no rank is left waiting in a
 * collective the failed one will never join. Different layouts would make the
 * gradient reductions disagree on their lengths (undefined in MPI, a hang or a
 * crash in practice), so they are refused at the same point.
 *
 * Gradients travel one of two ways (docs/distributed.md has the measurements):
 *
 * - Shared memory, when every rank of the communicator is on one machine (the
 *   default then). The parameters' gradient storage (grad_store) is moved, at
 *   the first tg_mpi_average_grads, into this rank's segment of an MPI-3
 *   shared-memory window, so backward writes each rank's gradient where every
 *   other rank can read it: nothing is packed or copied before the reduction.
 *   Each rank also writes its weight and which parameters have a gradient into
 *   its segment's header. The sync point's allreduce is the barrier after which
 *   all of that is final. Then rank r sums its r-th part of every gradient over
 *   the ranks' segments, in rank order (sum_q w_q g_q, the same arithmetic and
 *   order whoever computes it), and writes the sum into that part of every
 *   rank's segment; a barrier, and every rank holds the whole sum, bit-equal to
 *   the others'. Per rank that reads the gradient's size once and writes it
 *   once, where MPI_Allreduce between two processes costs a pack, several
 *   copies through MPI's shared-memory transport, and an unpack.
 *   tg_mpi_free moves the gradients back into the parameters' own storage.
 *
 * - MPI_Allreduce, across machines or when tg_mpi_set_shared turned the first
 *   way off: each parameter's data and grad are one heap block of their own
 *   (src/engine/tensor.c), so the gradients are packed, already multiplied by
 *   this rank's weight, into one buffer reserved once (per dtype: f32
 *   parameters, then f64 ones), reduced with one MPI_Allreduce (the default) or
 *   in buckets of bucket_bytes, and unpacked. With buckets, bucket k+1 is packed
 *   while bucket k is in flight, and bucket k is unpacked while k+1 is. Only
 *   parameters that have a gradient on some rank take part (a second small
 *   allreduce, MAX of one byte per parameter).
 *
 * Either way a parameter no rank touched keeps a NULL gradient and the
 * optimisers skip it, as in one process.
 *
 * The library's internal header is used for three things: the context's
 * allocator (every byte of this file's own goes through it), its random
 * generator's state (broadcast with the parameters so that all ranks shuffle
 * alike), and the parameters' grad_store (moved into the shared window).
 */
#include "tapegrad/mpi.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <xxhash.h>

#include "internal.h"

#define DEFAULT_BUCKET 0 /* one allreduce of everything: docs/distributed.md */
#define MSG_LEN 512

struct tg_mpi {
    tg_ctx *ctx;
    MPI_Comm comm;
    int rank, size;
    int one_node;             /* every rank shares memory with this one */
    int shared;               /* tg_mpi_set_shared: use the window when one_node */
    int failed_together;      /* the latest sync point failed on every rank */
    size_t bucket_bytes;
    unsigned char *buf;       /* packed gradients (the allreduce way) */
    size_t buf_bytes;
    unsigned char *has;       /* per parameter: [0, n) has a gradient on some rank,
                                 [n, 2n) had one here when the call began */
    size_t has_bytes;
    MPI_Request *reqs;
    size_t reqs_bytes;
    /* the shared-memory way: a window of one segment per rank, each a header
     * (this rank's weight, then one byte per parameter: has a gradient) and
     * every parameter's gradient at off[i], all aligned to TG_ALIGN */
    MPI_Win win;
    int win_np;               /* parameters in the window; 0: no window */
    uint64_t win_layout;      /* their layout hash */
    unsigned char **seg;      /* [size]: each rank's segment, in this address space */
    size_t seg_bytes;
    size_t *off;              /* [2 win_np]: offset of parameter i's gradient; with
                                 win_opt, [win_np + i]: of its data in rank 0's segment */
    size_t off_bytes;
    void **own;               /* [2 win_np]: the parameters' own grad_store; [win_np + i]:
                                 their own data (with win_opt) */
    size_t own_bytes;
    /* tg_mpi_step's sharded steps: the parameters' data and this optimiser's
     * state live once, in rank 0's segment after the gradients (at off[win_np +
     * i] and state_off); NULL: the window holds gradients only */
    tg_optim *win_opt;
    size_t state_off;
    tg_mpi_stats st;
};

static double now(void) { return MPI_Wtime(); }

/* ---- memory: through the context's allocator ---- */

static void *mem_resize(tg_ctx *ctx, void *p, size_t osize, size_t nsize) {
    return ctx->alloc(ctx->alloc_ud, p, osize, nsize);
}

/* Make *p hold at least n bytes (contents not kept). 0 ok, -1 out of memory. */
static int reserve(tg_mpi *mp, const char *fn, void *p, size_t *cap, size_t n) {
    void **pp = p;
    if (n <= *cap) return 0;
    void *q = mem_resize(mp->ctx, *pp, *cap, n);
    if (!q) {
        tg_set_error(mp->ctx, "%s: out of memory for %zu bytes of buffers", fn, n);
        return -1;
    }
    *pp = q;
    *cap = n;
    return 0;
}

/* ---- creation ---- */

tg_mpi *tg_mpi_new(tg_ctx *ctx, MPI_Comm comm) {
    static const char fn[] = "tg_mpi_new";
    if (!tg_ok(ctx)) return NULL;
    int inited = 0, finalized = 0;
    MPI_Initialized(&inited);
    MPI_Finalized(&finalized);
    if (!inited || finalized) {
        tg_set_error(ctx, "%s: MPI is %s (call MPI_Init first, MPI_Finalize last)", fn,
                     inited ? "finalised" : "not initialised");
        return NULL;
    }
    if (comm == MPI_COMM_NULL) {
        tg_set_error(ctx, "%s: comm is MPI_COMM_NULL", fn);
        return NULL;
    }
    tg_mpi *mp = mem_resize(ctx, NULL, 0, sizeof *mp);
    if (!mp) {
        tg_set_error(ctx, "%s: out of memory", fn);
        return NULL;
    }
    memset(mp, 0, sizeof *mp);
    mp->ctx = ctx;
    mp->bucket_bytes = DEFAULT_BUCKET;
    MPI_Comm_dup(comm, &mp->comm);
    /* a failed collective leaves the ranks out of step: end the job with MPI's
     * message rather than return into a state that can only hang */
    MPI_Comm_set_errhandler(mp->comm, MPI_ERRORS_ARE_FATAL);
    MPI_Comm_rank(mp->comm, &mp->rank);
    MPI_Comm_size(mp->comm, &mp->size);
    /* all ranks on one machine: the gradients can meet in shared memory */
    MPI_Comm node;
    int node_size = 0, all;
    MPI_Comm_split_type(mp->comm, MPI_COMM_TYPE_SHARED, 0, MPI_INFO_NULL, &node);
    MPI_Comm_size(node, &node_size);
    MPI_Comm_free(&node);
    MPI_Allreduce(&(int){node_size == mp->size}, &all, 1, MPI_INT, MPI_LAND, mp->comm);
    mp->one_node = all;
    mp->shared = 1;
    mp->win = MPI_WIN_NULL;
    return mp;
}

static void window_release(tg_mpi *mp, int mapped, int collective);

void tg_mpi_free(tg_mpi *mp) {
    if (!mp) return;
    tg_ctx *ctx = mp->ctx;
    int finalized = 0;
    MPI_Finalized(&finalized);
    /* MPI_Win_free waits for every rank: only when they are all here, i.e. none
     * is stopping alone with an error the others have not heard of (that rank
     * ends the job with MPI_Abort, which frees the window) */
    window_release(mp, !finalized, !finalized && (tg_ok(ctx) || mp->failed_together));
    if (!finalized && mp->comm != MPI_COMM_NULL) MPI_Comm_free(&mp->comm);
    if (mp->buf) mem_resize(ctx, mp->buf, mp->buf_bytes, 0);
    if (mp->has) mem_resize(ctx, mp->has, mp->has_bytes, 0);
    if (mp->reqs) mem_resize(ctx, mp->reqs, mp->reqs_bytes, 0);
    if (mp->seg) mem_resize(ctx, mp->seg, mp->seg_bytes, 0);
    if (mp->off) mem_resize(ctx, mp->off, mp->off_bytes, 0);
    if (mp->own) mem_resize(ctx, mp->own, mp->own_bytes, 0);
    mem_resize(ctx, mp, sizeof *mp, 0);
}

int tg_mpi_rank(const tg_mpi *mp) { return mp ? mp->rank : -1; }
int tg_mpi_size(const tg_mpi *mp) { return mp ? mp->size : 0; }
MPI_Comm tg_mpi_comm(const tg_mpi *mp) { return mp ? mp->comm : MPI_COMM_NULL; }

void tg_mpi_set_bucket_bytes(tg_mpi *mp, size_t bytes) {
    if (mp) mp->bucket_bytes = bytes;
}

void tg_mpi_set_shared(tg_mpi *mp, int on) {
    if (mp) mp->shared = on != 0;
}

int tg_mpi_shared(const tg_mpi *mp) { return mp && mp->shared && mp->one_node && mp->size > 1; }

tg_mpi_stats tg_mpi_get_stats(const tg_mpi *mp) {
    tg_mpi_stats z = {0};
    return mp ? mp->st : z;
}

void tg_mpi_stats_reset(tg_mpi *mp) {
    if (mp) memset(&mp->st, 0, sizeof mp->st);
}

/* ---- the sync point ---- */

/* Hash of the parameter layout: names, dtypes and shapes, in order. */
static uint64_t layout_hash(const tg_ctx *ctx) {
    uint64_t h = (uint64_t)ctx->n_params;
    for (int i = 0; i < ctx->n_params; i++) {
        const tg_tensor *p = ctx->params[i];
        int64_t head[2 + TG_MAX_DIMS] = {(int64_t)p->dtype, (int64_t)p->ndim};
        for (int d = 0; d < p->ndim; d++) head[2 + d] = p->shape[d];
        h = XXH3_64bits_withSeed(head, sizeof head, h);
        h = XXH3_64bits_withSeed(p->name, strlen(p->name), h);
    }
    return h;
}

/* The allreduce of the sync point. v[0] error flag, v[1] size - rank of a
 * failing rank (MAX: the lowest), v[2] and v[3] +/- a 62-bit value that must be
 * equal on all ranks (MAX of both: equal iff max(v) == -max(-v)). */
static void sync_reduce(tg_mpi *mp, int err, uint64_t same, int64_t out[4]) {
    int64_t s = (int64_t)(same >> 2);
    int64_t v[4] = {err ? 1 : 0, err ? mp->size - mp->rank : 0, s, -s};
    double t0 = now();
    MPI_Allreduce(v, out, 4, MPI_INT64_T, MPI_MAX, mp->comm);
    mp->st.sync_seconds += now() - t0;
}

/* Collective: 0 when no rank has an error and `same` is equal on every rank;
 * else the error (the failing rank's message, or `what_differs`) is recorded on
 * every rank and -1 returned. */
static int sync_point(tg_mpi *mp, const char *fn, uint64_t same, const char *what_differs) {
    tg_ctx *ctx = mp->ctx;
    int64_t r[4];
    sync_reduce(mp, !tg_ok(ctx), same, r);
    if (r[0]) {
        int root = mp->size - (int)r[1];
        char msg[MSG_LEN] = {0};
        if (mp->rank == root) snprintf(msg, sizeof msg, "%s", tg_errmsg(ctx));
        MPI_Bcast(msg, MSG_LEN, MPI_CHAR, root, mp->comm);
        msg[MSG_LEN - 1] = 0;
        if (tg_ok(ctx)) tg_set_error(ctx, "%s: rank %d failed: %s", fn, root, msg);
        mp->failed_together = 1;
        return -1;
    }
    if (r[2] != -r[3]) {
        tg_set_error(ctx, "%s: %s", fn, what_differs);
        mp->failed_together = 1;
        return -1;
    }
    mp->failed_together = 0;
    return 0;
}

static int check_layout(tg_mpi *mp, const char *fn) {
    return sync_point(mp, fn, layout_hash(mp->ctx),
                      "the ranks have different parameters (names, dtypes or shapes, in "
                      "creation order); every rank must build the same model");
}

int tg_mpi_check(tg_mpi *mp) {
    if (!mp) return -1;
    return check_layout(mp, "tg_mpi_check");
}

/* ---- parameters ---- */

static MPI_Datatype mpi_type(tg_dtype dt) { return dt == TG_F64 ? MPI_DOUBLE : MPI_FLOAT; }

int tg_mpi_broadcast_params(tg_mpi *mp, int root) {
    static const char fn[] = "tg_mpi_broadcast_params";
    if (!mp) return -1;
    tg_ctx *ctx = mp->ctx;
    if (tg_ok(ctx) && (root < 0 || root >= mp->size))
        tg_set_error(ctx, "%s: root %d is not a rank of a communicator of %d", fn, root,
                     mp->size);
    if (check_layout(mp, fn) != 0) return -1;
    /* MPI counts are int: a parameter over 2^31 elements goes in pieces */
    const int64_t piece = (int64_t)1 << 30;
    for (int i = 0; i < ctx->n_params && !mp->win_opt; i++) { /* shared data: one copy */
        tg_tensor *p = ctx->params[i];
        size_t es = tg_dtype_size(p->dtype);
        for (int64_t at = 0; at < p->numel; at += piece) {
            int64_t n = p->numel - at < piece ? p->numel - at : piece;
            MPI_Bcast((unsigned char *)p->data + (size_t)at * es, (int)n, mpi_type(p->dtype),
                      root, mp->comm);
        }
    }
    MPI_Bcast(ctx->rng, 4, MPI_UINT64_T, root, mp->comm);
    return 0;
}

int tg_mpi_params_equal(tg_mpi *mp) {
    static const char fn[] = "tg_mpi_params_equal";
    if (!mp) return -1;
    if (check_layout(mp, fn) != 0) return -1;
    tg_ctx *ctx = mp->ctx;
    uint64_t h = 0;
    for (int i = 0; i < ctx->n_params; i++)
        h = XXH3_64bits_withSeed(&h, sizeof h, tg_hash(ctx->params[i]));
    int64_t r[4];
    sync_reduce(mp, 0, h, r);
    return r[2] == -r[3];
}

/* ---- gradients ---- */

/* One dtype's gradients as a virtual vector: parameters with has[i], in
 * order. Pack elements [lo, hi) of it into buf[lo, hi), times w (zeros for a
 * parameter without a gradient on this rank). */
#define PACK_RANGE(T)                                                                      \
    static void pack_##T(tg_ctx *ctx, const unsigned char *has, tg_dtype dt, T *buf,     \
                         int64_t lo, int64_t hi, T w) {                                    \
        int64_t base = 0;                                                                  \
        for (int i = 0; i < ctx->n_params && base < hi; i++) {                            \
            const tg_tensor *p = ctx->params[i];                                           \
            if (!has[i] || p->dtype != dt) continue;                                       \
            int64_t a = lo > base ? lo : base, b = hi < base + p->numel ? hi : base + p->numel; \
            const T *g = has[ctx->n_params + i] ? p->grad : NULL;                          \
            if (a < b) {                                                                   \
                if (g)                                                                     \
                    for (int64_t k = a; k < b; k++) buf[k] = w * g[k - base];              \
                else                                                                       \
                    memset(buf + a, 0, (size_t)(b - a) * sizeof(T));                      \
            }                                                                              \
            base += p->numel;                                                              \
        }                                                                                  \
    }
PACK_RANGE(float)
PACK_RANGE(double)

/* Copy elements [lo, hi) of the reduced vector back into the gradients. */
static void unpack_range(tg_ctx *ctx, const unsigned char *has, tg_dtype dt,
                         const unsigned char *buf, int64_t lo, int64_t hi) {
    int64_t base = 0;
    size_t es = tg_dtype_size(dt);
    for (int i = 0; i < ctx->n_params && base < hi; i++) {
        tg_tensor *p = ctx->params[i];
        if (!has[i] || p->dtype != dt) continue;
        int64_t a = lo > base ? lo : base, b = hi < base + p->numel ? hi : base + p->numel;
        if (a < b) {
            if (!p->grad) p->grad = p->grad_store; /* every element is written below */
            memcpy((unsigned char *)p->grad + (size_t)(a - base) * es, buf + (size_t)a * es,
                   (size_t)(b - a) * es);
        }
        base += p->numel;
    }
}

/* Elements per bucket for n elements of es bytes. */
static int64_t bucket_elems(const tg_mpi *mp, size_t es, int64_t n) {
    int64_t per = mp->bucket_bytes ? (int64_t)(mp->bucket_bytes / es) : n;
    if (per < 1) per = 1;
    if (per > ((int64_t)1 << 30)) per = (int64_t)1 << 30; /* MPI counts are int */
    return per;
}

/* Reduce one dtype's n gradient elements in buckets, pipelined (the buffers
 * are reserved already). */
static void reduce_dtype(tg_mpi *mp, tg_dtype dt, int64_t n, double weight) {
    if (n == 0) return;
    tg_ctx *ctx = mp->ctx;
    const size_t es = tg_dtype_size(dt);
    const int64_t per = bucket_elems(mp, es, n);
    const int64_t nb = (n + per - 1) / per;
    double tp = 0, tc = 0, t0;
    for (int64_t k = 0; k <= nb; k++) {
        if (k < nb) { /* pack bucket k and start its allreduce */
            int64_t lo = k * per, hi = lo + per < n ? lo + per : n;
            t0 = now();
            if (dt == TG_F32)
                pack_float(ctx, mp->has, dt, (float *)mp->buf, lo, hi, (float)weight);
            else
                pack_double(ctx, mp->has, dt, (double *)mp->buf, lo, hi, weight);
            tp += now() - t0;
            t0 = now();
            void *at = mp->buf + (size_t)lo * es;
            if (nb == 1) /* one bucket: the blocking collective, nothing to overlap */
                MPI_Allreduce(MPI_IN_PLACE, at, (int)(hi - lo), mpi_type(dt), MPI_SUM, mp->comm);
            else
                MPI_Iallreduce(MPI_IN_PLACE, at, (int)(hi - lo), mpi_type(dt), MPI_SUM, mp->comm,
                               &mp->reqs[k]);
            tc += now() - t0;
        }
        if (k > 0) { /* finish bucket k-1 and unpack it while it is in cache */
            int64_t lo = (k - 1) * per, hi = lo + per < n ? lo + per : n;
            t0 = now();
            if (nb > 1) MPI_Wait(&mp->reqs[k - 1], MPI_STATUS_IGNORE);
            tc += now() - t0;
            t0 = now();
            unpack_range(ctx, mp->has, dt, mp->buf, lo, hi);
            tp += now() - t0;
        }
    }
    mp->st.pack_seconds += tp;
    mp->st.comm_seconds += tc;
    mp->st.bytes += n * (int64_t)es;
}

/* ---- gradients through shared memory ---- */

#define HEADER_BYTES(np) (((sizeof(double) + (size_t)(np)) + TG_ALIGN - 1) & ~(size_t)(TG_ALIGN - 1))
#define SUM_BLOCK 1024 /* elements summed in a stack buffer, then written to every segment */

static size_t padded_bytes(const tg_tensor *p) {
    return (tgi_bytes(p) + TG_ALIGN - 1) & ~(size_t)(TG_ALIGN - 1);
}

/* Give the parameters their own gradient storage back (with the current
 * gradient, when the window is still mapped: MPI is not finalised), and free the
 * window: collectively when @p collective, else the memory is left to MPI (this
 * rank is about to end the job). */
static void window_release(tg_mpi *mp, int mapped, int collective) {
    if (mp->win_np == 0) return;
    tg_ctx *ctx = mp->ctx;
    for (int i = 0; i < mp->win_np && i < ctx->n_params; i++) {
        tg_tensor *p = ctx->params[i];
        if (p->grad_store != mp->seg[mp->rank] + mp->off[i]) continue;
        if (p->grad == p->grad_store) {
            if (mapped) memcpy(mp->own[i], p->grad, tgi_bytes(p));
            p->grad = mapped ? mp->own[i] : NULL;
        }
        p->grad_store = mp->own[i];
    }
    if (mp->win_opt) { /* the shared data and state back into each rank's own */
        for (int i = 0; i < mp->win_np && i < ctx->n_params; i++) {
            tg_tensor *p = ctx->params[i];
            if (p->data != mp->seg[0] + mp->off[mp->win_np + i]) continue;
            if (mapped) memcpy(mp->own[mp->win_np + i], p->data, tgi_bytes(p));
            p->data = mp->own[mp->win_np + i];
        }
        tg_optim_move_state(mp->win_opt, NULL, mapped);
        mp->win_opt = NULL;
    }
    if (collective) {
        MPI_Win_unlock_all(mp->win);
        MPI_Win_free(&mp->win);
    }
    mp->win = MPI_WIN_NULL;
    mp->win_np = 0;
}

/* Collective: a window for the current parameters, and their gradient storage
 * moved into this rank's segment (the buffers are reserved already; MPI's own
 * failures, such as no memory for the window, end the job). */
static void window_create(tg_mpi *mp, uint64_t layout, tg_optim *opt) {
    tg_ctx *ctx = mp->ctx;
    const int np = ctx->n_params;
    size_t at = HEADER_BYTES(np);
    for (int i = 0; i < np; i++) {
        mp->off[i] = at;
        at += padded_bytes(ctx->params[i]);
    }
    const size_t grads_end = at;
    if (opt) { /* rank 0's segment also holds the data and the state */
        for (int i = 0; i < np; i++) {
            mp->off[np + i] = at;
            at += padded_bytes(ctx->params[i]);
        }
        mp->state_off = at;
        at += tg_optim_state_bytes(opt);
        if (mp->rank != 0) at = grads_end;
    }
    /* each segment on its own pages, so the alignment below is the same in every
     * process's mapping */
    MPI_Info info;
    MPI_Info_create(&info);
    MPI_Info_set(info, "alloc_shared_noncontig", "true");
    unsigned char *base = NULL;
    MPI_Win_allocate_shared((MPI_Aint)(at + TG_ALIGN), 1, info, mp->comm, &base, &mp->win);
    MPI_Info_free(&info);
    for (int q = 0; q < mp->size; q++) {
        MPI_Aint bytes;
        int unit;
        unsigned char *b;
        MPI_Win_shared_query(mp->win, q, &bytes, &unit, &b);
        mp->seg[q] = b + ((TG_ALIGN - (uintptr_t)b % TG_ALIGN) % TG_ALIGN);
    }
    /* the passive-target epoch the whole window lives in; MPI_Win_sync orders
     * this rank's stores and loads around each barrier */
    MPI_Win_lock_all(MPI_MODE_NOCHECK, mp->win);
    unsigned char *mine = mp->seg[mp->rank];
    for (int i = 0; i < np; i++) {
        tg_tensor *p = ctx->params[i];
        mp->own[i] = p->grad_store;
        p->grad_store = mine + mp->off[i];
        if (p->grad) {
            memcpy(p->grad_store, p->grad, tgi_bytes(p));
            p->grad = p->grad_store;
        }
    }
    if (opt) { /* rank 0's values go in; the others take them (the barrier after this) */
        unsigned char *s0 = mp->seg[0];
        for (int i = 0; i < np; i++) {
            tg_tensor *p = ctx->params[i];
            mp->own[np + i] = p->data;
            if (mp->rank == 0) memcpy(s0 + mp->off[np + i], p->data, tgi_bytes(p));
            p->data = s0 + mp->off[np + i];
        }
        tg_optim_move_state(opt, s0 + mp->state_off, mp->rank == 0);
    }
    mp->win_opt = opt;
    mp->win_np = np;
    mp->win_layout = layout;
}

/* This rank's header: its weight and which parameters have a gradient here. */
static void header_write(tg_mpi *mp, double weight) {
    unsigned char *h = mp->seg[mp->rank];
    memcpy(h, &weight, sizeof weight);
    for (int i = 0; i < mp->win_np; i++) h[sizeof(double) + i] = mp->ctx->params[i]->grad != NULL;
}

static double header_weight(const tg_mpi *mp, int q) {
    double w;
    memcpy(&w, mp->seg[q], sizeof w);
    return w;
}

/* Elements [lo, hi) of parameter i: sum over the ranks q that have a gradient
 * (src[0..ns), in rank order) of w_q g_q, written into the segments of ranks
 * [q0, q1). */
#define SUM_RANGE(T)                                                                       \
    static void sum_##T(tg_mpi *mp, size_t off, int64_t lo, int64_t hi, const int *src,  \
                        int ns, int q0, int q1) {                                          \
        T acc[SUM_BLOCK];                                                                  \
        for (int64_t k0 = lo; k0 < hi; k0 += SUM_BLOCK) {                                  \
            const int64_t m = hi - k0 < SUM_BLOCK ? hi - k0 : SUM_BLOCK;                   \
            for (int s = 0; s < ns; s++) {                                                 \
                const T *g = (const T *)(mp->seg[src[s]] + off) + k0;                      \
                const T w = (T)header_weight(mp, src[s]);                                  \
                if (s == 0)                                                                \
                    for (int64_t k = 0; k < m; k++) acc[k] = w * g[k];                     \
                else                                                                       \
                    for (int64_t k = 0; k < m; k++) acc[k] += w * g[k];                    \
            }                                                                              \
            for (int q = q0; q < q1; q++)                                                  \
                memcpy((T *)(mp->seg[q] + off) + k0, acc, (size_t)m * sizeof(T));         \
        }                                                                                  \
    }
SUM_RANGE(float)
SUM_RANGE(double)

/* After the sync point: this rank's part of every sum (rank r's part: shard r
 * of size, cut on cache lines so no two ranks write the same line), written to
 * every rank (@p all) or to this rank alone (the sharded step). */
static void reduce_shared(tg_mpi *mp, int all) {
    tg_ctx *ctx = mp->ctx;
    const int np = mp->win_np;
    int *src = (int *)mp->has; /* the ranks that have parameter i's gradient */
    double t0 = now();
    MPI_Win_sync(mp->win); /* the others' gradients and headers, final at the sync point */
    for (int i = 0; i < np; i++) {
        tg_tensor *p = ctx->params[i];
        int ns = 0;
        for (int q = 0; q < mp->size; q++)
            if (mp->seg[q][sizeof(double) + i]) src[ns++] = q;
        if (ns == 0) continue; /* no rank has one: it stays without a gradient */
        /* none here: another rank's, summed into this rank's storage by the barrier
         * below (the headers are not read after it: a faster rank may be writing
         * its next one) */
        if (!p->grad) p->grad = p->grad_store;
        size_t es = tg_dtype_size(p->dtype);
        int64_t lo = tgi_shard_start(p->numel, mp->rank, mp->size, es);
        int64_t hi = tgi_shard_start(p->numel, mp->rank + 1, mp->size, es);
        int q0 = all ? 0 : mp->rank, q1 = all ? mp->size : mp->rank + 1;
        if (p->dtype == TG_F32) sum_float(mp, mp->off[i], lo, hi, src, ns, q0, q1);
        else sum_double(mp, mp->off[i], lo, hi, src, ns, q0, q1);
        mp->st.bytes += (int64_t)((size_t)p->numel * es);
    }
    mp->st.comm_seconds += now() - t0;
}

/* The barrier after every rank's writes to the window. */
static void window_barrier(tg_mpi *mp) {
    double t0 = now();
    MPI_Win_sync(mp->win);
    MPI_Barrier(mp->comm);
    MPI_Win_sync(mp->win);
    mp->st.comm_seconds += now() - t0;
}

/* Reserve, before the sync point, what reducing every gradient can need, so
 * that running out of memory is an error the other ranks hear of there. */
static int reserve_all(tg_mpi *mp, const char *fn, int shared) {
    tg_ctx *ctx = mp->ctx;
    if (!tg_ok(ctx)) return -1;
    int np = ctx->n_params;
    if (shared)
        return reserve(mp, fn, &mp->has, &mp->has_bytes, (size_t)mp->size * sizeof(int)) ||
               reserve(mp, fn, &mp->seg, &mp->seg_bytes, (size_t)mp->size * sizeof(void *)) ||
               reserve(mp, fn, &mp->off, &mp->off_bytes, (2 * (size_t)np + 1) * sizeof(size_t)) ||
               reserve(mp, fn, &mp->own, &mp->own_bytes, (2 * (size_t)np + 1) * sizeof(void *));
    int64_t n32 = 0, n64 = 0;
    for (int i = 0; i < np; i++) {
        if (ctx->params[i]->dtype == TG_F32) n32 += ctx->params[i]->numel;
        else n64 += ctx->params[i]->numel;
    }
    size_t most = (size_t)(n32 * 4 > n64 * 8 ? n32 * 4 : n64 * 8);
    int64_t p32 = bucket_elems(mp, 4, n32), p64 = bucket_elems(mp, 8, n64);
    size_t buckets = (size_t)(n32 / p32 > n64 / p64 ? n32 / p32 : n64 / p64) + 2;
    return reserve(mp, fn, &mp->has, &mp->has_bytes, 2 * (size_t)np + 1) ||
           reserve(mp, fn, &mp->buf, &mp->buf_bytes, most) ||
           reserve(mp, fn, &mp->reqs, &mp->reqs_bytes, buckets * sizeof(MPI_Request));
}

/* The allreduce way, after the sync point. */
static void reduce_allreduce(tg_mpi *mp, double weight) {
    tg_ctx *ctx = mp->ctx;
    int np = ctx->n_params;
    for (int i = 0; i < np; i++) mp->has[i] = mp->has[np + i] = ctx->params[i]->grad != NULL;
    double t0 = now();
    MPI_Allreduce(MPI_IN_PLACE, mp->has, np, MPI_UNSIGNED_CHAR, MPI_MAX, mp->comm);
    mp->st.sync_seconds += now() - t0;
    int64_t n32 = 0, n64 = 0;
    for (int i = 0; i < np; i++) {
        if (!mp->has[i]) continue;
        if (ctx->params[i]->dtype == TG_F32) n32 += ctx->params[i]->numel;
        else n64 += ctx->params[i]->numel;
    }
    /* cannot fail: everything was reserved before the sync point */
    reduce_dtype(mp, TG_F32, n32, weight);
    reduce_dtype(mp, TG_F64, n64, weight);
}

/* The first call (or new parameters, or another way): make the window, write
 * the header, and wait for every rank's. */
static void window_make(tg_mpi *mp, uint64_t layout, tg_optim *opt, double weight) {
    double t0 = now();
    window_create(mp, layout, opt);
    header_write(mp, weight);
    MPI_Win_sync(mp->win);
    MPI_Barrier(mp->comm);
    mp->st.pack_seconds += now() - t0;
}

int tg_mpi_average_grads(tg_mpi *mp, double weight) {
    static const char fn[] = "tg_mpi_average_grads";
    if (!mp) return -1;
    tg_ctx *ctx = mp->ctx;
    tgi_settle_grads(ctx); /* zeros pending since tg_zero_grad, before anyone reads them */
    if (!(weight > 0)) weight = 1.0 / mp->size;
    const int shared = tg_mpi_shared(mp);
    const uint64_t layout = layout_hash(ctx);
    /* the window as it is fits these parameters: the header goes in now, and the
     * sync point's allreduce is the barrier after which the others read it */
    const int ready = shared && mp->win_np > 0 && mp->win_layout == layout && !mp->win_opt;
    reserve_all(mp, fn, shared);
    if (ready) header_write(mp, weight);
    if (check_layout(mp, fn) != 0) return -1;
    mp->st.calls++;
    if (mp->size == 1 && weight == 1) return 0; /* the sum over one rank: nothing to do */
    if (!ready && mp->win_np > 0) window_release(mp, 1, 1); /* other parameters, or turned off */
    if (!shared) {
        reduce_allreduce(mp, weight);
        return 0;
    }
    if (!ready) window_make(mp, layout, NULL, weight);
    reduce_shared(mp, 1);
    window_barrier(mp); /* every part of every sum is written */
    return 0;
}

int tg_mpi_step(tg_mpi *mp, double weight, tg_optim *opt) {
    static const char fn[] = "tg_mpi_step";
    if (!mp) return -1;
    tg_ctx *ctx = mp->ctx;
    tgi_settle_grads(ctx); /* zeros pending since tg_zero_grad, before anyone reads them */
    if (!tg_mpi_shared(mp) || !opt) { /* one rank, across machines, or shared memory off */
        if (!opt && tg_ok(ctx)) tg_set_error(ctx, "%s: opt is NULL", fn);
        if (tg_mpi_average_grads(mp, weight) != 0) return -1;
        return tg_optim_step(opt);
    }
    if (!(weight > 0)) weight = 1.0 / mp->size;
    const uint64_t layout = layout_hash(ctx);
    const int ready = mp->win_np > 0 && mp->win_layout == layout && mp->win_opt == opt;
    reserve_all(mp, fn, 1);
    if (ready) header_write(mp, weight);
    if (check_layout(mp, fn) != 0) return -1;
    mp->st.calls++;
    if (!ready) {
        if (mp->win_np > 0) window_release(mp, 1, 1);
        window_make(mp, layout, opt, weight);
    }
    reduce_shared(mp, 0);
    /* this rank's shard of the sum is in its own gradients: its shard of every
     * parameter and of the state (both shared) steps with it */
    tg_optim_step_shard(opt, mp->rank, mp->size);
    window_barrier(mp); /* every shard of every parameter is updated */
    return 0;
}

int tg_mpi_shard(tg_mpi *mp, tg_batcher *b) {
    if (!mp) return -1;
    if (!b) {
        if (tg_ok(mp->ctx)) tg_set_error(mp->ctx, "tg_mpi_shard: argument b is NULL");
        return -1;
    }
    return tg_batcher_shard(b, mp->rank, mp->size);
}

double tg_mpi_batch_weight(const tg_batcher *b) {
    if (!b || b->global_size <= 0) return 0;
    return (double)b->share_size / (double)b->global_size;
}

int tg_mpi_sum(tg_mpi *mp, double *values, int n) {
    static const char fn[] = "tg_mpi_sum";
    if (!mp) return -1;
    if (tg_ok(mp->ctx) && (n < 0 || (n > 0 && !values)))
        tg_set_error(mp->ctx, "%s: need n >= 0 values, got n %d and values %s", fn, n,
                     values ? "given" : "NULL");
    /* n is part of what must agree: unequal counts would break the allreduce */
    if (sync_point(mp, fn, (uint64_t)n * 0x9E3779B97F4A7C15u,
                   "the ranks asked for sums of different lengths") != 0)
        return -1;
    if (n > 0) MPI_Allreduce(MPI_IN_PLACE, values, n, MPI_DOUBLE, MPI_SUM, mp->comm);
    return 0;
}

void tg_mpi_abort(tg_mpi *mp, const char *msg) {
    int rank = -1;
    MPI_Comm comm = MPI_COMM_WORLD;
    if (mp) {
        rank = mp->rank;
        comm = mp->comm;
        if (!msg) msg = tg_errmsg(mp->ctx);
    } else {
        MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    }
    if (!msg || !*msg) msg = "(no message)";
    fprintf(stderr, "tapegrad: rank %d: %s\n", rank, msg);
    fflush(stderr);
    MPI_Abort(comm, 1);
    abort(); /* MPI_Abort does not return; should an implementation, never go on */
}
