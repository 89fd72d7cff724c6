/* SPDX-License-Identifier: MIT */
/* ops/attention.c: scaled dot-product attention, one fused node.
 *
 *   tg_attention        q, k, v [B,H,T,D] (heads apart) -> [B,H,T,D]
 *   tgi_self_attention  the fused projection qkv [B*T,3E] -> [B*T,E] (heads side
 *                       by side, as nn.MultiheadAttention's in_proj writes them
 *                       and its out_proj reads them): the same arithmetic read and
 *                       written in place, with no head split or merge copies
 *
 * Per (batch, head) pair the op is three products and a row softmax (the products
 * by the GEMM, or in f32 with D and S multiples of 16 by a kernel of this file,
 * at_rows_f32 and at_abt_f32); the pairs are
 * independent, so they are split over the context's threads, each thread running
 * whole pairs with its own GEMM workspace, which gives the same bits for any
 * thread count. Local gradients in full: docs/ops.md, "Attention". */
#include "ops.h"

#include <stdatomic.h>

/* Below this many multiply-adds (forward: 2 B H T S D) the pairs are not split over
 * threads: waking a team costs more than it saves. */
#define ATTN_PAR_MIN_FLOPS ((int64_t)1 << 22)
/* GEMM calls per (b,h) pair in one pass (backward: dV, dP, dQ, dK) */
#define ATTN_GEMMS_PER_PAIR 4
#define ATTN_GEMM_GROW ((size_t)65536) /* the GEMM workspace grows in 64 KiB steps */

/* ======================================================================== */
/* Per-thread GEMM workspaces                                               */
/* ======================================================================== */

/* The context's GEMM workspace serves one caller thread at a time, so threads
 * that each run whole (b,h) pairs get a workspace of their own: made per call
 * (tgi_gemm_ws_new) on an allocator that bumps through a slice of arena memory
 * taken before the parallel region. Nothing reaches the heap, and a warm
 * training step takes the same slices from the arena again. Frees are no-ops:
 * the slice goes back with the arena at tg_reset. */
typedef struct {
    unsigned char *base;
    size_t size, used;
} attn_bump;

static void *bump_alloc(void *ud, void *ptr, size_t osize, size_t nsize)
{
    (void)osize;
    attn_bump *b = ud;
    if (nsize == 0 || ptr) return NULL; /* a free (no-op), or a resize (never asked) */
    const size_t n = (nsize + TG_ALIGN - 1) & ~(size_t)(TG_ALIGN - 1);
    if (n < nsize || b->size - b->used < n) return NULL;
    void *p = b->base + b->used;
    b->used += n;
    return p;
}

/* An upper bound of the workspace bytes one single-threaded m x n x k product
 * reserves (gemm.c: packed panels of at most (m + MR) x kc and kc x (n + NR),
 * MR, NR <= 32, kc <= k; the direct path needs less), rounded up to its growth
 * step, plus alignment. */
static size_t gemm_ws_bound(int64_t m, int64_t n, int64_t k, size_t esz)
{
    size_t need = (size_t)(m + n + 64) * (size_t)k * esz + 256;
    return (need + ATTN_GEMM_GROW - 1) / ATTN_GEMM_GROW * ATTN_GEMM_GROW + 2 * TG_ALIGN;
}

/* One thread's tools: its GEMM workspace and a [T,S] buffer (the scores when P is
 * not kept, or dP and dS in backward). */
typedef struct {
    tg_gemm_ws *ws;
    attn_bump bump;
    void *buf;
    float *bt; /* [D,S]: K or V transposed, or [max(T,S),D] packed rows (at_fast) */
} attn_team;

/* Where one operand's [rows,D] matrix of pair p = (b,h) starts, in elements from
 * the operand's base: b * bs + h * hs; its rows are ld elements apart. */
typedef struct {
    int64_t bs, hs, ld;
} attn_layout;

/* The shapes of one call. */
typedef struct {
    int64_t bh, h, t, s, d; /* B*H pairs, heads, query and key positions, head size */
    int causal;
    double scale;           /* 1 / sqrt(D) */
    tg_dtype dt;
    attn_layout lq, lkv, lo; /* q (and dq); k, v (and dk, dv); the output (and dO) */
} attn_dims;

/* The byte offset of pair p's matrix in an operand of layout l. */
static size_t pair_off(const attn_dims *a, const attn_layout *l, int64_t p)
{
    return (size_t)((p / a->h) * l->bs + (p % a->h) * l->hs) * tg_dtype_size(a->dt);
}

/* How many threads split the pairs (1: the caller's thread alone). */
static int attn_threads(const tg_ctx *ctx, const attn_dims *a)
{
    const int64_t flops = 2 * a->bh * a->t * a->s * a->d;
    if (ctx->nthreads <= 1 || a->bh < 2 || flops < ATTN_PAR_MIN_FLOPS) return 1;
    return a->bh < ctx->nthreads ? (int)a->bh : ctx->nthreads;
}

static int at_fast(const attn_dims *a);

/* Make nt teams: each with a [T,S] buffer when need_buf and, when nt > 1, its own workspace
 * sized for the largest product of the pass (workspace bytes `ws_bytes`). With
 * nt == 1 the context's workspace serves. Returns NULL with the error recorded. */
static attn_team *teams_new(tg_ctx *ctx, const char *fn, const attn_dims *a, int nt,
                            size_t ws_bytes, int need_buf)
{
    const size_t esz = tg_dtype_size(a->dt);
    attn_team *tm = tgi_arena_alloc(ctx, sizeof *tm * (size_t)nt);
    if (!tm) return NULL;
    for (int i = 0; i < nt; i++) {
        tm[i].ws = nt == 1 ? ctx->gemm : NULL;
        tm[i].bump = (attn_bump){NULL, 0, 0};
        tm[i].buf = NULL;
        tm[i].bt = NULL;
        if (at_fast(a) && !(tm[i].bt = tgi_arena_alloc(ctx, (size_t)((a->s > a->t ? a->s : a->t) *
                                                                   a->d) * sizeof(float))))
            return NULL;
        if (need_buf && !(tm[i].buf = tgi_arena_alloc(ctx, (size_t)(a->t * a->s) * esz + TG_ALIGN)))
            return NULL;
        if (nt == 1) continue;
        tm[i].bump.size = ws_bytes;
        tm[i].bump.base = tgi_arena_alloc(ctx, ws_bytes);
        if (!tm[i].bump.base) return NULL;
        tm[i].ws = tgi_gemm_ws_new(bump_alloc, &tm[i].bump);
        if (!tm[i].ws) {
            tg_set_error(ctx, "%s: out of memory (a thread's GEMM workspace)", fn);
            return NULL;
        }
    }
    return tm;
}

/* Workspace bytes a thread needs for the products of one pass: the struct and
 * one growth per product (a workspace only grows when a product needs more than
 * it has, and every pair runs the same products). */
static size_t pass_ws_bytes(const attn_dims *a, int backward)
{
    const size_t esz = tg_dtype_size(a->dt);
    const int64_t t = a->t, s = a->s, d = a->d;
    size_t b = 1024; /* the workspace struct */
    if (!backward) {
        b += gemm_ws_bound(t, s, d, esz) + gemm_ws_bound(t, d, s, esz);
    } else {
        b += gemm_ws_bound(s, d, t, esz) + gemm_ws_bound(t, s, d, esz) +
             gemm_ws_bound(t, d, s, esz) + gemm_ws_bound(s, d, t, esz);
    }
    return b;
}

/* C = op(A) op(B) (+ C when acc) on a team's workspace; 0 or -1 (out of memory). */
static int team_gemm(const attn_team *tm, int nth, tg_dtype dt, int ta, int tb, int64_t m,
                     int64_t n, int64_t k, const void *A, int64_t lda, const void *B,
                     int64_t ldb, int acc, void *C, int64_t ldc)
{
    return dt == TG_F32 ? tgi_gemm_f32(tm->ws, nth, ta, tb, m, n, k, A, lda, B, ldb, acc, C, ldc)
                        : tgi_gemm_f64(tm->ws, nth, ta, tb, m, n, k, A, lda, B, ldb, acc, C,
                                       ldc);
}

/* Causal products skip the masked half: the scores' row block [i0, i1) needs keys
 * [0, i1) only, and key block [j0, j1) of dV and dK gets terms from rows [j0, T)
 * only. Blocks of ATTN_CAUSAL_ROWS rows (one block of everything when not
 * causal). Skipped terms are products with exact zeros of P and dA, so the sums
 * are those of the full products. */
#define ATTN_CAUSAL_ROWS 32

static int64_t imin64(int64_t x, int64_t y) { return x < y ? x : y; }

/* ------------------------------------------------------------------------ */
/* The f32 row-broadcast kernel (AVX-512)                                   */
/* ------------------------------------------------------------------------ */

/* C [m,D] (+= when acc) = sum over k of a(r,k) B[k,:], where a(r,k) = A[r rs + k ks]
 * and B's rows are ldb apart: O = P V and dQ = dA K (rs = S, ks = 1), dV = P^T dO
 * and dK = dA^T Q (rs = 1, ks = S, A read transposed in place). B's rows are
 * contiguous D-vectors, so nothing is packed: tiles of 8 rows x 32 columns keep 16
 * accumulators in registers, one FMA per (row, vector) and k with a(r,k) broadcast.
 * Row r0's tile sums k over [lo, hi): lo = r0 when lo_diag (causal dV, dK: rows
 * before the key get exact zeros of P and dA), hi = r0 + 8 when hi_diag (causal
 * O, dQ: keys after the row), the full range [0, kn) otherwise. Each element is
 * summed in k order, one FMA at a time: the same bits for any thread count. */
#define AT_ROWS 8 /* rows of a tile */
#define AT_VL 16  /* floats in a vector */
typedef float at_v16 __attribute__((vector_size(64)));
typedef float at_u16 __attribute__((vector_size(64), aligned(4), may_alias));
/* gcc: contract each k step's multiply and add into one FMA; clang has no per-function
 * switch, and keeps the build's setting */
#if defined(__clang__)
#define AT_FMA_ATTR
#else
#define AT_FMA_ATTR __attribute__((optimize("fp-contract=fast")))
#endif

/* One tile: R rows, NV (1 to 4) vectors of columns; inlined with constant R, NV. */
__attribute__((always_inline)) static inline void
at_tile(float *restrict c, int64_t ldc, const float *restrict a, int64_t rs, int64_t ks,
        const float *restrict b, int64_t ldb, int64_t lo, int64_t hi, int acc, int R, int NV)
{
    at_v16 s[AT_ROWS][4];
    for (int r = 0; r < R; r++)
        for (int v = 0; v < NV; v++) s[r][v] = (at_v16){0};
    for (int64_t k = lo; k < hi; k++) {
        at_v16 bv[4];
        for (int v = 0; v < NV; v++) bv[v] = *(const at_u16 *)(b + k * ldb + v * AT_VL);
        for (int r = 0; r < R; r++) {
            const float x = a[r * rs + k * ks];
            for (int v = 0; v < NV; v++) s[r][v] += x * bv[v];
        }
    }
    for (int r = 0; r < R; r++)
        for (int v = 0; v < NV; v++) {
            at_u16 *cp = (at_u16 *)(c + r * ldc + v * AT_VL);
            if (acc)
                *cp += s[r][v];
            else
                *cp = s[r][v];
        }
}

TGI_AVX512_CLONES AT_FMA_ATTR static void
at_rows_f32(float *c, int64_t ldc, int64_t m, int64_t d, const float *a, int64_t rs, int64_t ks,
            const float *b, int64_t ldb, int64_t kn, int lo_diag, int hi_diag, int acc,
            float *pack)
{
    /* B's rows lie 3E or E floats apart in the fused layouts, a stride that maps
     * them onto few L1 sets; copied next to each other first they stay in L1. */
    if (ldb != d) {
        for (int64_t k = 0; k < kn; k++)
            for (int64_t j = 0; j < d; j += AT_VL)
                *(at_u16 *)(pack + k * d + j) = *(const at_u16 *)(b + k * ldb + j);
        b = pack;
        ldb = d;
    }
    for (int64_t r0 = 0; r0 < m;) {
        const int full = m - r0 >= AT_ROWS;
        const int64_t lo = lo_diag ? r0 : 0;
        const int64_t hi = hi_diag ? imin64(r0 + (full ? AT_ROWS : 1), kn) : kn;
        const float *ar = a + r0 * rs;
        float *cr = c + r0 * ldc;
        for (int64_t j = 0; j < d; j += 2 * AT_VL) {
            const int two = d - j >= 2 * AT_VL;
            if (full && two)
                at_tile(cr + j, ldc, ar, rs, ks, b + j, ldb, lo, hi, acc, AT_ROWS, 2);
            else if (full)
                at_tile(cr + j, ldc, ar, rs, ks, b + j, ldb, lo, hi, acc, AT_ROWS, 1);
            else if (two)
                at_tile(cr + j, ldc, ar, rs, ks, b + j, ldb, lo, hi, acc, 1, 2);
            else
                at_tile(cr + j, ldc, ar, rs, ks, b + j, ldb, lo, hi, acc, 1, 1);
        }
        r0 += full ? AT_ROWS : 1;
    }
}

/* lane l of round h: from x (lanes with bit h clear) or y, h lanes over */
#define AT_LO(h, l) (((l) & (h)) ? AT_VL + (l) - (h) : (l))
#define AT_HI(h, l) (((l) & (h)) ? AT_VL + (l) : (l) + (h))
#define AT_MASK(F, h)                                                                   \
    (at_i16){F(h, 0),  F(h, 1),  F(h, 2),  F(h, 3),  F(h, 4),  F(h, 5),  F(h, 6),  F(h, 7), \
             F(h, 8),  F(h, 9),  F(h, 10), F(h, 11), F(h, 12), F(h, 13), F(h, 14), F(h, 15)}

typedef int at_i16 __attribute__((vector_size(64)));
__attribute__((always_inline)) static inline void at_swap_blocks(at_v16 *v, int h)
{
    for (int r = 0; r < AT_VL; r++)
        if (!(r & h)) {
            const at_v16 x = v[r], y = v[r + h];
#if defined(__clang__) /* its __builtin_shufflevector wants constant lanes: lane by lane */
            at_v16 p, q;
            for (int l = 0; l < AT_VL; l++) {
                p[l] = (l & h) ? y[l - h] : x[l];
                q[l] = (l & h) ? y[l] : x[l + h];
            }
            v[r] = p;
            v[r + h] = q;
#else
            v[r] = __builtin_shuffle(x, y, AT_MASK(AT_LO, h));
            v[r + h] = __builtin_shuffle(x, y, AT_MASK(AT_HI, h));
#endif
        }
}

/* bt [D,S] = B [S,D]^T (B's rows ldb apart; S, D multiples of 16), by 16 x 16
 * blocks transposed in registers: four rounds of two-vector shuffles, round h
 * swapping the off-diagonal h x h sub-blocks of every 2h x 2h block. */
__attribute__((always_inline)) static inline void
at_transpose(float *restrict bt, const float *restrict b, int64_t ldb, int64_t s, int64_t d)
{
    for (int64_t j0 = 0; j0 < s; j0 += AT_VL)
        for (int64_t d0 = 0; d0 < d; d0 += AT_VL) {
            at_v16 v[AT_VL];
            for (int r = 0; r < AT_VL; r++) v[r] = *(const at_u16 *)(b + (j0 + r) * ldb + d0);
            at_swap_blocks(v, 8);
            at_swap_blocks(v, 4);
            at_swap_blocks(v, 2);
            at_swap_blocks(v, 1);
            for (int r = 0; r < AT_VL; r++) *(at_u16 *)(bt + (d0 + r) * s + j0) = v[r];
        }
}

/* Rows of the score-like tile: R rows x NV vectors, NV = 1..4 chosen at run time. */
#define AT_ABT_TILE(R)                                                                  \
    switch (nv) {                                                                       \
    case 4: at_tile(cr, s, ar, lda, 1, bt + j0, s, 0, d, 0, R, 4); break;               \
    case 3: at_tile(cr, s, ar, lda, 1, bt + j0, s, 0, d, 0, R, 3); break;               \
    case 2: at_tile(cr, s, ar, lda, 1, bt + j0, s, 0, d, 0, R, 2); break;               \
    default: at_tile(cr, s, ar, lda, 1, bt + j0, s, 0, d, 0, R, 1); break;              \
    }

/* C [T,S] (row stride S) = A [T,D] B [S,D]^T (the scores Q K^T, and dP = dO V^T),
 * B transposed into bt [D,S] first; tiles of 4 rows x up to 64 columns. Causal:
 * row block [i0, i0 + 4) computes columns [0, i0 + 4) rounded up to 16 only (the
 * row passes read no further). */
#define AT_ABT_ROWS 4
TGI_AVX512_CLONES AT_FMA_ATTR static void
at_abt_f32(float *c, int64_t t, int64_t s, int64_t d, const float *a, int64_t lda, const float *b,
           int64_t ldb, float *bt, int causal)
{
    at_transpose(bt, b, ldb, s, d);
    for (int64_t i0 = 0; i0 < t;) {
        const int full = t - i0 >= AT_ABT_ROWS;
        const int64_t rows = full ? AT_ABT_ROWS : 1;
        const int64_t w = causal ? imin64((i0 + rows + AT_VL - 1) / AT_VL * AT_VL, s) : s;
        const float *ar = a + i0 * lda;
        for (int64_t j0 = 0; j0 < w; j0 += 4 * AT_VL) {
            const int64_t nv = imin64(4, (w - j0) / AT_VL);
            float *cr = c + i0 * s + j0;
            if (full) {
                AT_ABT_TILE(AT_ABT_ROWS)
            } else {
                AT_ABT_TILE(1)
            }
        }
        i0 += rows;
    }
}

/* Whether a call's products take at_rows_f32: f32, D a multiple of 16, and a CPU
 * with AVX-512 (its 16 accumulators would spill on narrower vectors). */
static int at_fast(const attn_dims *a)
{
#if defined(__x86_64__)
    return a->dt == TG_F32 && a->d % AT_VL == 0 && a->s % AT_VL == 0 &&
           __builtin_cpu_supports("avx512f");
#else
    (void)a;
    return 0;
#endif
}

/* C [T,S] (row stride S) = A [T,D] B [S,D]^T, row block i0.. computing columns
 * [0, i1) when causal (the scores Q K^T, and dP = dO V^T) */
static int gemm_abt_rows(const attn_team *tm, int nth, const attn_dims *a, const void *A,
                         int64_t lda, const void *B, int64_t ldb, void *C)
{
    if (at_fast(a)) {
        at_abt_f32(C, a->t, a->s, a->d, A, lda, B, ldb, tm->bt, a->causal);
        return 0;
    }
    const size_t esz = tg_dtype_size(a->dt);
    const int64_t rb = a->causal ? ATTN_CAUSAL_ROWS : a->t;
    for (int64_t i0 = 0; i0 < a->t; i0 += rb) {
        const int64_t i1 = imin64(i0 + rb, a->t), w = a->causal ? i1 : a->s;
        if (team_gemm(tm, nth, a->dt, 0, 1, i1 - i0, w, a->d,
                      (const unsigned char *)A + (size_t)(i0 * lda) * esz, lda, B, ldb, 0,
                      (unsigned char *)C + (size_t)(i0 * a->s) * esz, a->s) != 0)
            return -1;
    }
    return 0;
}

/* C [T,D] (+= when acc) A [T,S] (row stride S) B [S,D], row block i0.. summing over
 * keys [0, i1) when causal (O = P V, and dQ = dA K) */
static int gemm_ab_rows(const attn_team *tm, int nth, const attn_dims *a, const void *A,
                        const void *B, int64_t ldb, int acc, void *C, int64_t ldc)
{
    if (at_fast(a)) {
        at_rows_f32(C, ldc, a->t, a->d, A, a->s, 1, B, ldb, a->s, 0, a->causal, acc, tm->bt);
        return 0;
    }
    const size_t esz = tg_dtype_size(a->dt);
    const int64_t rb = a->causal ? ATTN_CAUSAL_ROWS : a->t;
    for (int64_t i0 = 0; i0 < a->t; i0 += rb) {
        const int64_t i1 = imin64(i0 + rb, a->t), w = a->causal ? i1 : a->s;
        if (team_gemm(tm, nth, a->dt, 0, 0, i1 - i0, a->d, w,
                      (const unsigned char *)A + (size_t)(i0 * a->s) * esz, a->s, B, ldb, acc,
                      (unsigned char *)C + (size_t)(i0 * ldc) * esz, ldc) != 0)
            return -1;
    }
    return 0;
}

/* C [S,D] (+= when acc) A [T,S]^T (row stride S) B [T,D], key block j0.. summing
 * over rows [j0, T) when causal (dV = P^T dO, and dK = dA^T Q); each block of C
 * is written by one product, so acc 0 assigns every element */
static int gemm_atb_keys(const attn_team *tm, int nth, const attn_dims *a, const void *A,
                         const void *B, int64_t ldb, int acc, void *C, int64_t ldc)
{
    if (at_fast(a)) {
        at_rows_f32(C, ldc, a->s, a->d, A, 1, a->s, B, ldb, a->t, a->causal, 0, acc, tm->bt);
        return 0;
    }
    const size_t esz = tg_dtype_size(a->dt);
    const int64_t kb = a->causal ? ATTN_CAUSAL_ROWS : a->s;
    for (int64_t j0 = 0; j0 < a->s; j0 += kb) {
        const int64_t j1 = imin64(j0 + kb, a->s), r0 = a->causal ? j0 : 0;
        if (team_gemm(tm, nth, a->dt, 1, 0, j1 - j0, a->d, a->t - r0,
                      (const unsigned char *)A + (size_t)(r0 * a->s + j0) * esz, a->s,
                      (const unsigned char *)B + (size_t)(r0 * ldb) * esz, ldb, acc,
                      (unsigned char *)C + (size_t)(j0 * ldc) * esz, ldc) != 0)
            return -1;
    }
    return 0;
}

/* Run body(pair, team, nth) over pairs [0, a->bh): in the caller's thread when
 * nt == 1 (the GEMMs may then use the context's threads), else pairs split into
 * nt contiguous ranges, range i on team i, one GEMM thread each. Returns 0, or -1
 * when a product could not get workspace memory. */
typedef int (*attn_pair_fn)(const attn_dims *a, int64_t pair, const attn_team *tm, int nth,
                            void *user);

typedef struct {
    const attn_dims *a;
    attn_team *tm;
    int nt;
    attn_pair_fn body;
    void *user;
    _Atomic int failed;
} pairs_job;
/* Range i of nt of the pairs, on team i (whichever thread runs it). */
static void pairs_chunk(void *arg, int64_t i, int thread)
{
    pairs_job *j = arg;
    (void)thread;
    const int64_t lo = j->a->bh * i / j->nt, hi = j->a->bh * (i + 1) / j->nt;
    for (int64_t p = lo; p < hi && !atomic_load(&j->failed); p++)
        if (j->body(j->a, p, &j->tm[i], 1, j->user) != 0) atomic_store(&j->failed, 1);
}

static int for_each_pair(tg_ctx *ctx, const attn_dims *a, attn_team *tm, int nt,
                         attn_pair_fn body, void *user)
{
    int failed = 0;
    if (nt == 1) {
        for (int64_t p = 0; p < a->bh && !failed; p++)
            failed = body(a, p, &tm[0], ctx->nthreads, user) != 0;
        return failed ? -1 : 0;
    }
    pairs_job j = {a, tm, nt, body, user, 0};
    tgi_pool_run(ctx->pool, nt, nt, pairs_chunk, &j);
    return atomic_load(&j.failed) ? -1 : 0;
}

/* ======================================================================== */
/* The row passes                                                           */
/* ======================================================================== */

/* Row passes over a pair's [T,S] matrix, 8 lanes wide so that the compiler
 * vectorises them without reordering any sum: lane l takes the elements j with
 * j % 8 == l (a maximum, or a sum in double), and the lanes are combined in a
 * fixed order at the end, so the bits do not depend on the vector width. */
#define ATTN_LANES 8

/* Scores -> probabilities, in place, for rows [0, t) of p [t,s]: row i's first n
 * (= i + 1 when causal, else s) entries get softmax(scale * a), the rest exactly 0
 * (no exp taken). Each row subtracts its maximum before the exp. */
#define SOFTMAX_ROWS_FN(T, SUF)                                                        \
    TGI_AVX512_CLONES static void softmax_rows_##SUF(T *p, int64_t t, int64_t s,        \
                                                      int causal, double scale)        \
    {                                                                                  \
        const T sc = (T)scale;                                                         \
        for (int64_t i = 0; i < t; i++) {                                              \
            T *restrict row = p + i * s;                                               \
            const int64_t n = causal ? i + 1 : s, nv = n / ATTN_LANES * ATTN_LANES;    \
            T mx[ATTN_LANES];                                                          \
            for (int l = 0; l < ATTN_LANES; l++) mx[l] = row[0];                       \
            for (int64_t j = 0; j < nv; j += ATTN_LANES)                               \
                for (int l = 0; l < ATTN_LANES; l++)                                   \
                    mx[l] = row[j + l] > mx[l] ? row[j + l] : mx[l];                   \
            T m = mx[0];                                                               \
            for (int l = 1; l < ATTN_LANES; l++) m = mx[l] > m ? mx[l] : m;            \
            for (int64_t j = nv; j < n; j++) m = row[j] > m ? row[j] : m;              \
            for (int64_t j = 0; j < n; j++) row[j] = (row[j] - m) * sc;                \
            V_EXP(row, row, n);                                                        \
            double sum[ATTN_LANES] = {0};                                              \
            for (int64_t j = 0; j < nv; j += ATTN_LANES)                               \
                for (int l = 0; l < ATTN_LANES; l++) sum[l] += (double)row[j + l];     \
            double tot = 0;                                                            \
            for (int l = 0; l < ATTN_LANES; l++) tot += sum[l];                        \
            for (int64_t j = nv; j < n; j++) tot += (double)row[j];                    \
            const T inv = (T)(1.0 / tot);                                              \
            for (int64_t j = 0; j < n; j++) row[j] *= inv;                             \
            for (int64_t j = n; j < s; j++) row[j] = 0;                                \
        }                                                                              \
    }
SOFTMAX_ROWS_FN(float, f32)
SOFTMAX_ROWS_FN(double, f64)

/* dP -> dA in place for rows [0, t): dA = P * (dP - rowsum(dP * P)) * scale over
 * row i's first n entries, 0 after them. */
#define DSOFTMAX_ROWS_FN(T, SUF)                                                       \
    TGI_AVX512_CLONES static void dsoftmax_rows_##SUF(T *da, const T *p, int64_t t,     \
                                                       int64_t s, int causal, double scale) \
    {                                                                                  \
        const T sc = (T)scale;                                                         \
        for (int64_t i = 0; i < t; i++) {                                              \
            const T *restrict pr = p + i * s;                                          \
            T *restrict dr = da + i * s;                                               \
            const int64_t n = causal ? i + 1 : s, nv = n / ATTN_LANES * ATTN_LANES;    \
            double dot[ATTN_LANES] = {0};                                              \
            for (int64_t j = 0; j < nv; j += ATTN_LANES)                               \
                for (int l = 0; l < ATTN_LANES; l++)                                   \
                    dot[l] += (double)dr[j + l] * (double)pr[j + l];                   \
            double tot = 0;                                                            \
            for (int l = 0; l < ATTN_LANES; l++) tot += dot[l];                        \
            for (int64_t j = nv; j < n; j++) tot += (double)dr[j] * (double)pr[j];     \
            const T d = (T)tot;                                                        \
            for (int64_t j = 0; j < n; j++) dr[j] = pr[j] * (dr[j] - d) * sc;          \
            for (int64_t j = n; j < s; j++) dr[j] = 0;                                 \
        }                                                                              \
    }
DSOFTMAX_ROWS_FN(float, f32)
DSOFTMAX_ROWS_FN(double, f64)

/* ======================================================================== */
/* The pair kernels and the passes                                          */
/* ======================================================================== */

/* O = softmax(Q K^T / sqrt(D)) V per (b,h), Q [T,D], K and V [S,D], O [T,D] (each
 * where its layout puts it); with causal (T == S), score (i,j) for j > i is masked
 * out: its probability is exactly 0 and no exp is taken for it.
 *   A = Q K^T / sqrt(D) [T,S],  P = softmax_rows(A),  O = P V.
 *   dV += P^T dO
 *   dP  = dO V^T,  dA = P * (dP - rowsum(dP * P))   (softmax's Jacobian, per row)
 *   dQ += dA K / sqrt(D),  dK += dA^T Q / sqrt(D)
 * Saves: P [B*H,T,S] (tg_scratch), written in place of the scores, so the score
 * matrix is stored once; backward needs nothing else (q, k, v are the inputs).
 * Numerics: each row subtracts its maximum before the exp; row sums and the
 * rowsum(dP * P) are accumulated in double; 1/sqrt(D) is folded into the softmax
 * pass and into dA. Threads split the (b,h) pairs, each pair's arithmetic is
 * the same whatever the split, so results are bit-identical for any thread count. */

/* The pointers a pass reads and writes (NULL where not needed); acc_*: add into
 * the gradient (0: the pass is its first writer and assigns). */
typedef struct {
    const void *q, *k, *v, *dout;
    void *out, *p, *dq, *dk, *dv; /* p: the kept probabilities, or NULL (team buffers) */
    int acc_q, acc_k, acc_v;
} attn_bufs;

/* One pair: A = Q K^T (GEMM, K read transposed in place), P = softmax_rows(A / sqrt(D))
 * in place, O = P V (GEMM). */
static int attention_pair_fwd(const attn_dims *a, int64_t pair, const attn_team *tm, int nth,
                              void *user)
{
    const attn_bufs *bf = user;
    const size_t off_q = pair_off(a, &a->lq, pair), off_k = pair_off(a, &a->lkv, pair);
    const unsigned char *q = (const unsigned char *)bf->q + off_q;
    const unsigned char *k = (const unsigned char *)bf->k + off_k;
    const unsigned char *v = (const unsigned char *)bf->v + off_k;
    unsigned char *o = (unsigned char *)bf->out + pair_off(a, &a->lo, pair);
    void *p = bf->p ? (unsigned char *)bf->p + (size_t)(pair * a->t * a->s) * tg_dtype_size(a->dt)
                    : tm->buf;
    if (gemm_abt_rows(tm, nth, a, q, a->lq.ld, k, a->lkv.ld, p) != 0) return -1;
    if (a->dt == TG_F32)
        softmax_rows_f32(p, a->t, a->s, a->causal, a->scale);
    else
        softmax_rows_f64(p, a->t, a->s, a->causal, a->scale);
    return gemm_ab_rows(tm, nth, a, p, v, a->lkv.ld, 0, o, a->lo.ld);
}

/* d(PV)/dV: dV += P^T dO;  d(PV)/dP: dP = dO V^T;  d softmax: dA = P (dP - <dP, P>);
 * d(QK^T/sqrt(D))/dQ: dQ += dA K / sqrt(D);  /dK: dK += dA^T Q / sqrt(D) */
static int attention_pair_bwd(const attn_dims *a, int64_t pair, const attn_team *tm, int nth,
                              void *user)
{
    const attn_bufs *bf = user;
    const size_t off_q = pair_off(a, &a->lq, pair), off_k = pair_off(a, &a->lkv, pair);
    const int64_t ldq = a->lq.ld, ldk = a->lkv.ld;
    const unsigned char *q = (const unsigned char *)bf->q + off_q;
    const unsigned char *k = (const unsigned char *)bf->k + off_k;
    const unsigned char *v = (const unsigned char *)bf->v + off_k;
    const unsigned char *dout = (const unsigned char *)bf->dout + pair_off(a, &a->lo, pair);
    const void *p = (const unsigned char *)bf->p + (size_t)(pair * a->t * a->s) * tg_dtype_size(a->dt);
    if (bf->dv && /* dV [S,D] += P^T [S,T] dO [T,D] */
        gemm_atb_keys(tm, nth, a, p, dout, a->lo.ld, bf->acc_v, (unsigned char *)bf->dv + off_k,
                      ldk) != 0)
        return -1;
    if (!bf->dq && !bf->dk) return 0;
    void *da = tm->buf; /* dP [T,S] = dO [T,D] V^T, then dA in place */
    if (gemm_abt_rows(tm, nth, a, dout, a->lo.ld, v, ldk, da) != 0) return -1;
    if (a->dt == TG_F32)
        dsoftmax_rows_f32(da, p, a->t, a->s, a->causal, a->scale);
    else
        dsoftmax_rows_f64(da, p, a->t, a->s, a->causal, a->scale);
    if (bf->dq && /* dQ [T,D] += dA [T,S] K [S,D] (dA carries the 1/sqrt(D)) */
        gemm_ab_rows(tm, nth, a, da, k, ldk, bf->acc_q, (unsigned char *)bf->dq + off_q, ldq) != 0)
        return -1;
    if (bf->dk && /* dK [S,D] += dA^T [S,T] Q [T,D] */
        gemm_atb_keys(tm, nth, a, da, q, ldq, bf->acc_k, (unsigned char *)bf->dk + off_k, ldk) != 0)
        return -1;
    return 0;
}

/* Forward over every pair; P goes to tg_scratch (c->saved) when the call is
 * recorded, else each thread's [T,S] buffer holds its pair's scores. */
static int attention_pass_fwd(tg_op_call *c, const char *fn, const attn_dims *a, attn_bufs *bf)
{
    tg_ctx *ctx = c->ctx;
    void *p = NULL;
    if (tgi_recorded(c) && a->bh * a->t * a->s > 0) {
        p = tg_scratch(ctx, (size_t)(a->bh * a->t * a->s) * tg_dtype_size(a->dt));
        if (!p) return -1;
    }
    c->saved = bf->p = p;
    const int nt = attn_threads(ctx, a);
    attn_team *tm = teams_new(ctx, fn, a, nt, pass_ws_bytes(a, 0), p == NULL);
    if (!tm) return -1;
    if (for_each_pair(ctx, a, tm, nt, attention_pair_fwd, bf) != 0) {
        tg_set_error(ctx, "%s: out of memory (GEMM workspace) for %lld pairs of [%lld,%lld] "
                          "queries", fn, (long long)a->bh, (long long)a->t, (long long)a->d);
        return -1;
    }
    return 0;
}

/* Backward over every pair, into the gradients bf names. */
static void attention_pass_bwd(tg_op_call *c, const char *fn, const attn_dims *a, attn_bufs *bf)
{
    tg_ctx *ctx = c->ctx;
    bf->p = c->saved;
    const int nt = attn_threads(ctx, a);
    attn_team *tm = teams_new(ctx, fn, a, nt, pass_ws_bytes(a, 1), bf->dq || bf->dk);
    if (!tm) return;
    if (for_each_pair(ctx, a, tm, nt, attention_pair_bwd, bf) != 0)
        tg_set_error(ctx, "%s: out of memory (GEMM workspace) in backward", fn);
}

/* ======================================================================== */
/* tg_attention                                                             */
/* ======================================================================== */

/* q [B,H,T,D], k and v [B,H,S,D], O [B,H,T,D]: each pair's matrix contiguous. */
TGI_OP(attention);

/* Argument checks of tg_attention: 1 if the call can go ahead. */
static int attention_check(tg_ctx *ctx, const char *fn, const tg_tensor *q, const tg_tensor *k,
                           const tg_tensor *v, int causal)
{
    if (!tgi_check_float_arg(ctx, fn, "q", q, NULL) || !tgi_check_float_arg(ctx, fn, "k", k, q) ||
        !tgi_check_float_arg(ctx, fn, "v", v, q))
        return 0;
    char sq[64], sk[64], sv[64];
    TGI_SHAPE(q, sq), TGI_SHAPE(k, sk), TGI_SHAPE(v, sv);
    if (q->ndim != 4 || k->ndim != 4 || v->ndim != 4) {
        tg_set_error(ctx, "%s: q, k and v must be 4-D ([B,H,T,D], [B,H,S,D], [B,H,S,D]): "
                          "q is %s, k is %s, v is %s", fn, sq, sk, sv);
        return 0;
    }
    static const char *const dim_name[4] = {"B", "H", "", "D"};
    for (int ax = 0; ax < 4; ax++) {
        if (ax == 2) continue;
        if (q->shape[ax] != k->shape[ax] || q->shape[ax] != v->shape[ax]) {
            tg_set_error(ctx, "%s: q, k and v differ in %s (axis %d): q is %s, k is %s, v is %s",
                         fn, dim_name[ax], ax, sq, sk, sv);
            return 0;
        }
    }
    if (k->shape[2] != v->shape[2]) {
        tg_set_error(ctx, "%s: k and v must have the same number of positions S (axis 2): "
                          "k is %s, v is %s", fn, sk, sv);
        return 0;
    }
    if (q->shape[3] == 0 || (k->shape[2] == 0 && q->shape[2] > 0)) {
        tg_set_error(ctx, "%s: D and S must be at least 1 (a softmax over no keys is "
                          "undefined): q is %s, k is %s", fn, sq, sk);
        return 0;
    }
    if (causal && q->shape[2] != k->shape[2]) {
        tg_set_error(ctx, "%s: causal attention needs T == S: q is %s (T = %lld), k is %s "
                          "(S = %lld)", fn, sq, (long long)q->shape[2], sk,
                     (long long)k->shape[2]);
        return 0;
    }
    return 1;
}

static attn_dims attention_dims(const tg_tensor *q, const tg_tensor *k, int causal)
{
    attn_dims a;
    a.h = q->shape[1];
    a.bh = q->shape[0] * a.h;
    a.t = q->shape[2];
    a.s = k->shape[2];
    a.d = q->shape[3];
    a.causal = causal != 0;
    a.scale = 1.0 / sqrt((double)a.d);
    a.dt = q->dtype;
    a.lq = (attn_layout){a.h * a.t * a.d, a.t * a.d, a.d};
    a.lkv = (attn_layout){a.h * a.s * a.d, a.s * a.d, a.d};
    a.lo = a.lq;
    return a;
}

tg_tensor *tg_attention(tg_ctx *ctx, tg_tensor *q, tg_tensor *k, tg_tensor *v, int causal)
{
    static const char fn[] = "tg_attention";
    if (!ctx) return NULL;
    if (!attention_check(ctx, fn, q, k, v, causal)) return NULL;
    tg_tensor *out = tgi_tensor_new(ctx, fn, q->dtype, 4, q->shape, 0);
    if (!out) return NULL;
    tg_tensor *in[3] = {q, k, v};
    const tgi_attr at = {.i = {causal != 0}};
    return tgi_op_run(ctx, &op_attention, out, in, 3, &at, sizeof at);
}

static int attention_forward(tg_op_call *c)
{
    const tg_tensor *q = c->in[0], *k = c->in[1], *v = c->in[2];
    const attn_dims a = attention_dims(q, k, (int)TGI_ATTR(c)->i[0]);
    attn_bufs bf = {.q = q->data, .k = k->data, .v = v->data, .out = c->out->data};
    return attention_pass_fwd(c, "tg_attention", &a, &bf);
}

/* The gradient of input i for backward: its first writer assigns (*acc = 0) unless
 * the tensor is also another input (one tensor as q and k gets both terms, added) */
static void *attention_grad(tg_op_call *c, int i, int *acc)
{
    tg_tensor *x = c->in[i];
    *acc = 1;
    if (!tgi_needs_grad(x)) return NULL;
    for (int j = 0; j < 3; j++)
        if (j != i && c->in[j] == x) return tg_grad_acc(x);
    int fresh;
    void *g = tgi_grad_first(x, &fresh);
    *acc = !fresh;
    return g;
}

static void attention_backward(tg_op_call *c)
{
    tg_tensor *q = c->in[0], *k = c->in[1];
    const void *dout = tg_grad(c->out);
    if (!dout) return;
    const attn_dims a = attention_dims(q, k, (int)TGI_ATTR(c)->i[0]);
    if (a.bh * a.t * a.s == 0) return;
    attn_bufs bf = {.q = q->data, .k = k->data, .v = c->in[2]->data, .dout = dout};
    /* each input under its own `if`: a NULL gradient pointer skips its products */
    bf.dq = attention_grad(c, 0, &bf.acc_q);
    if (tgi_needs_grad(q) && !bf.dq) return;
    bf.dk = attention_grad(c, 1, &bf.acc_k);
    if (tgi_needs_grad(k) && !bf.dk) return;
    bf.dv = attention_grad(c, 2, &bf.acc_v);
    if (tgi_needs_grad(c->in[2]) && !bf.dv) return;
    attention_pass_bwd(c, "tg_attention", &a, &bf);
}

/* ======================================================================== */
/* tgi_self_attention                                                       */
/* ======================================================================== */

/* Multi-head self-attention straight from the fused projection, one node:
 * qkv [B*T,3E] (row b*T + t; columns [0,E) the queries, [E,2E) the keys, [2E,3E)
 * the values, head j in columns j*D.. of each, D = E/H) -> y [B*T,E], head j's
 * output in columns j*D.. of row b*T + t. This is
 *   merge_heads(tg_attention(split(qkv)))
 * with nn.MultiheadAttention's split and merge, but the pairs' GEMMs read q, k, v
 * and write y where they lie (row strides 3E and E), so no copy is made, and
 * backward writes dqkv as its first writer (no zeroing). Saves P as tg_attention. */
TGI_OP(self_attention);

static attn_dims self_attention_dims(const tg_tensor *qkv, int64_t b, int64_t h, int causal)
{
    attn_dims a;
    const int64_t e = qkv->shape[1] / 3;
    a.h = h;
    a.bh = b * h;
    a.t = a.s = b > 0 ? qkv->shape[0] / b : 0;
    a.d = e / h;
    a.causal = causal != 0;
    a.scale = 1.0 / sqrt((double)a.d);
    a.dt = qkv->dtype;
    a.lq = a.lkv = (attn_layout){a.t * 3 * e, a.d, 3 * e};
    a.lo = (attn_layout){a.t * e, a.d, e};
    return a;
}

tg_tensor *tgi_self_attention(tg_ctx *ctx, const char *fn, tg_tensor *qkv, int64_t b, int64_t h,
                              int causal)
{
    if (!ctx) return NULL;
    if (!tgi_check_float_arg(ctx, fn, "qkv", qkv, NULL)) return NULL;
    char sq[64];
    /* B = 0: an empty batch (no rows), as the composed ops allow */
    const int rows_ok =
        qkv->ndim == 2 && (b > 0 ? qkv->shape[0] % b == 0 : b == 0 && qkv->shape[0] == 0);
    if (!rows_ok || h < 1 || qkv->shape[1] % 3 != 0 || qkv->shape[1] == 0 ||
        (qkv->shape[1] / 3) % h != 0) {
        tg_set_error(ctx, "%s: qkv must be [B*T,3E] with E a multiple of the heads H >= 1 and "
                          "B dividing its rows (B 0 only without rows): qkv is %s, B %lld, "
                          "H %lld", fn,
                     TGI_SHAPE(qkv, sq), (long long)b, (long long)h);
        return NULL;
    }
    const int64_t shape[2] = {qkv->shape[0], qkv->shape[1] / 3};
    tg_tensor *out = tgi_tensor_new(ctx, fn, qkv->dtype, 2, shape, 0);
    if (!out) return NULL;
    const tgi_attr at = {.i = {causal != 0, b, h}};
    return tgi_op_run(ctx, &op_self_attention, out, &qkv, 1, &at, sizeof at);
}

static int self_attention_forward(tg_op_call *c)
{
    const tg_tensor *qkv = c->in[0];
    const tgi_attr *at = TGI_ATTR(c);
    const attn_dims a = self_attention_dims(qkv, at->i[1], at->i[2], (int)at->i[0]);
    const size_t e = (size_t)(qkv->shape[1] / 3) * tg_dtype_size(qkv->dtype);
    const unsigned char *base = qkv->data;
    attn_bufs bf = {.q = base, .k = base + e, .v = base + 2 * e, .out = c->out->data};
    return attention_pass_fwd(c, "tg_self_attention", &a, &bf);
}

/* dqkv: dq, dk, dv in its three column ranges, each element written once per pass */
static void self_attention_backward(tg_op_call *c)
{
    tg_tensor *qkv = c->in[0];
    const void *dout = tg_grad(c->out);
    if (!dout || !tgi_needs_grad(qkv)) return;
    const tgi_attr *at = TGI_ATTR(c);
    const attn_dims a = self_attention_dims(qkv, at->i[1], at->i[2], (int)at->i[0]);
    if (a.bh * a.t * a.s == 0) return;
    int fresh;
    unsigned char *g = tgi_grad_first(qkv, &fresh);
    if (!g) return;
    const size_t e = (size_t)(qkv->shape[1] / 3) * tg_dtype_size(qkv->dtype);
    const unsigned char *base = qkv->data;
    attn_bufs bf = {.q = base, .k = base + e, .v = base + 2 * e, .dout = dout,
                    .dq = g, .dk = g + e, .dv = g + 2 * e,
                    .acc_q = !fresh, .acc_k = !fresh, .acc_v = !fresh};
    attention_pass_bwd(c, "tg_self_attention", &a, &bf);
}
