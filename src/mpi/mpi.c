/* SPDX-License-Identifier: MIT */
/* mpi.c: data-parallel training over MPI (include/tapegrad/mpi.h).
 *
 * Every collective here starts with a sync point: one small allreduce (MAX of
 * four int64) that carries "has this rank an error?", the lowest failing rank,
 * and a hash of the parameter layout (names, dtypes, shapes). When a rank has
 * failed, the failing rank's message is broadcast and every rank records it and
 * returns -1 before any gradient moves, so no rank is left waiting in a
 * collective the failed one will never join. Different layouts would make the
 * gradient allreduces disagree on their lengths (undefined in MPI, a hang or a
 * crash in practice), so they are refused at the same point.
 *
 * Gradients: each parameter's data and grad are one heap block of their own
 * (src/engine/tensor.c), so there is no flat gradient vector to reduce in place.
 * They are packed, already multiplied by this rank's weight, into one buffer
 * reserved once (per dtype: f32 parameters, then f64 ones), reduced with one
 * MPI_Allreduce (the default, the fastest measured here) or in buckets of
 * bucket_bytes, and unpacked. With buckets, bucket k+1 is packed while bucket
 * k is in flight, and bucket k is unpacked while k+1 is, so each bucket is
 * still in cache when it is unpacked (docs/distributed.md has the
 * measurements). Only parameters that have a gradient on some rank take part
 * (a second small allreduce, MAX of one byte per parameter), so a parameter no
 * rank touched keeps a NULL gradient and the optimisers skip it, as in one
 * process.
 *
 * The library's internal header is used for two things only: the context's
 * allocator (every byte goes through it) and its random generator's state
 * (broadcast with the parameters so that all ranks shuffle alike).
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
    size_t bucket_bytes;
    unsigned char *buf;       /* packed gradients */
    size_t buf_bytes;
    unsigned char *has;       /* per parameter: [0, n) has a gradient on some rank,
                                 [n, 2n) had one here when the call began */
    size_t has_bytes;
    MPI_Request *reqs;
    size_t reqs_bytes;
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
    return mp;
}

void tg_mpi_free(tg_mpi *mp) {
    if (!mp) return;
    tg_ctx *ctx = mp->ctx;
    int finalized = 0;
    MPI_Finalized(&finalized);
    if (!finalized && mp->comm != MPI_COMM_NULL) MPI_Comm_free(&mp->comm);
    if (mp->buf) mem_resize(ctx, mp->buf, mp->buf_bytes, 0);
    if (mp->has) mem_resize(ctx, mp->has, mp->has_bytes, 0);
    if (mp->reqs) mem_resize(ctx, mp->reqs, mp->reqs_bytes, 0);
    mem_resize(ctx, mp, sizeof *mp, 0);
}

int tg_mpi_rank(const tg_mpi *mp) { return mp ? mp->rank : -1; }
int tg_mpi_size(const tg_mpi *mp) { return mp ? mp->size : 0; }
MPI_Comm tg_mpi_comm(const tg_mpi *mp) { return mp ? mp->comm : MPI_COMM_NULL; }

void tg_mpi_set_bucket_bytes(tg_mpi *mp, size_t bytes) {
    if (mp) mp->bucket_bytes = bytes;
}

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
        return -1;
    }
    if (r[2] != -r[3]) {
        tg_set_error(ctx, "%s: %s", fn, what_differs);
        return -1;
    }
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
    for (int i = 0; i < ctx->n_params; i++) {
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

/* Reserve, before the sync point, what reducing every gradient can need, so
 * that running out of memory is an error the other ranks hear of there. */
static int reserve_all(tg_mpi *mp, const char *fn) {
    tg_ctx *ctx = mp->ctx;
    if (!tg_ok(ctx)) return -1;
    int np = ctx->n_params;
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

int tg_mpi_average_grads(tg_mpi *mp, double weight) {
    static const char fn[] = "tg_mpi_average_grads";
    if (!mp) return -1;
    tg_ctx *ctx = mp->ctx;
    reserve_all(mp, fn);
    if (check_layout(mp, fn) != 0) return -1;
    if (!(weight > 0)) weight = 1.0 / mp->size;
    if (mp->size == 1 && weight == 1) { /* the sum over one rank: nothing to do */
        mp->st.calls++;
        return 0;
    }
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
    mp->st.calls++;
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
