/* SPDX-License-Identifier: MIT */
/* gemm.c: the GEMM driver: workspace, kernel dispatch, blocking and threads.
 *
 *   C[m,n] = (accumulate ? C : 0) + op(A)[m,k] op(B)[k,n], row-major (see gemm.h).
 *
 * The kernels themselves live in gemm_tmpl.h, instantiated by gemm_generic.c,
 * gemm_avx2.c and gemm_avx512.c; this file only moves pointers (it is written once
 * for both element types, in bytes) and picks what runs.
 *
 * Transposes. op(A)(i,p) is A[i*rsa + p*csa] with (rsa, csa) = (lda, 1) for A and
 * (1, lda) for A^T; likewise op(B)(p,j) = B[p*rsb + j*csb]. Only the packing routines
 * look at these strides, so A^T B, A B^T and A^T B^T cost one strided copy of data
 * that is copied anyway, and no transpose is ever materialised.
 *
 * Blocked path (the GotoBLAS/BLIS structure, with the BLIS order of the two inner
 * loops). Loop order, outermost first:
 *
 *   ic: rows of C in blocks of at most MC (equal blocks, whole tiles)
 *     pc: k in steps of kc (k split into equal blocks of at most KC)
 *         pack op(A)[ic:ic+mc, pc:pc+kc] -> ~A: MR-row micro-panels  (lives in L3)
 *       jc: columns of C in blocks of at most NC (equal blocks, whole panels)
 *           pack op(B)[pc:pc+kc, jc:jc+nc] -> ~B: NR-column micro-panels  (lives in L2)
 *         ir: MR-row micro-panels of ~A   (one MR x kc micro-panel sits in L1)
 *           jr: NR-column micro-panels of ~B  (streamed from L2, along C's rows)
 *             microkernel: MR x NR tile of C in registers, kc multiply-adds each,
 *                          then C = C + tile (or C = tile on the first k block).
 *
 * With MC large, each operand is packed once per k block for m up to MC; C is read
 * and written once per k block, a tile row at a time. A kernel set may name a
 * second set for this path (tgi_gemm_kern.blocked: AVX-512 uses a wider tile here).
 * MR, NR, MC, KC, NC come from the kernel set (values and measurements in
 * docs/gemm.md). Packed panels are zero-padded to whole MR / NR. Full MR-row tiles
 * go to the microkernel (a partial column panel is computed whole and only its
 * valid columns written back); the last mc % MR rows go to the direct kernel's
 * smaller tiles, reading the same packed panels. When op(A) = A^T and the B block
 * is small, the full row panels are not packed beforehand: the first tile of each
 * (ukr_pa) reads A^T in place and writes the packed panel as it goes.
 *
 * Direct path. For small or skinny shapes packing A costs more than it saves, so
 * use_direct() sends them to the direct kernel: same register tile, A read in place
 * through its strides, and for each k block only one kc x NR slice of op(B) packed
 * at a time (reading B's rows in place is slow when ldb is a power of two: they
 * all land in the same few L1 sets). A row-major op(B) is packed by the first row
 * tile while it computes (or read in place when one tile covers all the rows).
 * Where the blocked path's wider tile pads no more columns than the direct tile
 * (direct_wide), the direct path runs that tile instead, on L1-sized k blocks.
 *
 * Threads. With nthreads > 1 the output is cut statically into ranges of whole
 * tiles, along n or m (a few ranges per thread, so that a thread the scheduler keeps
 * waiting leaves its ranges to the others); the threads of the workspace's pool
 * (pool.h) take the ranges one by one and run the same single-threaded algorithm on
 * each. On the blocked path every range of columns reads all of op(A), every range
 * of rows all of op(B): that operand is packed once, into a region of the workspace
 * all ranges read, by the job's first chunks (a few panels each), and each range
 * packs only its own part of the other operand. A range that finds a block of the
 * shared operand not yet written (the thread packing it is off its core) packs its
 * own copy instead of waiting. The k blocking depends only on k, and each element's
 * sum is computed identically by every routine (see gemm_tmpl.h), so the result
 * does not depend on nthreads or on who packed what. The choice between direct and
 * blocked path depends only on the shape.
 *
 * Workspace. One 64-byte-aligned buffer from the caller's allocator, carved per
 * call into the shared packed operand and per-thread regions; it grows when a call
 * needs more and is otherwise reused, so steady-state training allocates nothing
 * here. */
#include "gemm.h"

#include <stdatomic.h>
#include <stdint.h>
#include <string.h>

#include "pool.h"

#ifdef TG_USE_CBLAS
#include <cblas.h>
#include <limits.h>
#endif

#include "gemm_kern.h"

/* ---------------------------------------------------------------------------------
 * Workspace */

/* Most chunks in which a threaded blocked call packs its shared operand. */
#define GEMM_MAX_PACK_CHUNKS 256

/* One growable 64-byte-aligned buffer of the workspace. */
typedef struct ws_buf {
    void *raw;           /* what alloc returned (freed through alloc), or NULL */
    size_t raw_size;     /* its size, as passed to alloc */
    unsigned char *buf;  /* raw rounded up to 64 bytes */
    size_t cap;          /* usable bytes at buf */
} ws_buf;

struct tg_gemm_ws {
    tgi_alloc_fn alloc;
    void *ud;
    ws_buf pk;           /* packing buffers, carved per call into per-thread regions */
    ws_buf tr;           /* C^T of a thin product (gemm_thin_transposed) */
    tgi_pool *pool;      /* threads for nthreads > 1 (not owned), or NULL */
    uint64_t seq;        /* threaded blocked calls so far */
    /* ready[c] == seq: pack chunk c of the current call has been written */
    _Atomic uint64_t ready[GEMM_MAX_PACK_CHUNKS];
};

#define WS_ALIGN 64

tg_gemm_ws *tgi_gemm_ws_new(tgi_alloc_fn alloc, void *ud)
{
    if (!alloc) return NULL;
    tg_gemm_ws *ws = (tg_gemm_ws *)alloc(ud, NULL, 0, sizeof *ws);
    if (!ws) return NULL;
    memset(ws, 0, sizeof *ws);
    ws->alloc = alloc;
    ws->ud = ud;
    for (int c = 0; c < GEMM_MAX_PACK_CHUNKS; c++) atomic_init(&ws->ready[c], 0);
    return ws;
}

void tgi_gemm_ws_set_pool(tg_gemm_ws *ws, tgi_pool *pool)
{
    if (ws) ws->pool = pool;
}

void tgi_gemm_ws_free(tg_gemm_ws *ws)
{
    if (!ws) return;
    if (ws->pk.raw) ws->alloc(ws->ud, ws->pk.raw, ws->pk.raw_size, 0);
    if (ws->tr.raw) ws->alloc(ws->ud, ws->tr.raw, ws->tr.raw_size, 0);
    ws->alloc(ws->ud, ws, sizeof *ws, 0);
}

/* Make at least `bytes` usable bytes available at b->buf. Contents are not kept.
 * The new block is allocated before the old one is freed, so on failure the
 * buffer is as it was. */
static int ws_reserve(tg_gemm_ws *ws, ws_buf *b, size_t bytes)
{
    if (bytes <= b->cap) return 0;
    size_t want = (bytes + 65535u) & ~(size_t)65535u; /* grow in 64 KiB steps */
    if (want < bytes || want > SIZE_MAX - WS_ALIGN) return -1;
    void *raw = ws->alloc(ws->ud, NULL, 0, want + WS_ALIGN);
    if (!raw) return -1;
    if (b->raw) ws->alloc(ws->ud, b->raw, b->raw_size, 0);
    b->raw = raw;
    b->raw_size = want + WS_ALIGN;
    b->buf = (unsigned char *)(((uintptr_t)raw + (WS_ALIGN - 1)) & ~(uintptr_t)(WS_ALIGN - 1));
    b->cap = want;
    return 0;
}

static size_t round_up_bytes(size_t n) { return (n + (WS_ALIGN - 1)) & ~(size_t)(WS_ALIGN - 1); }

/* ---------------------------------------------------------------------------------
 * Kernel dispatch: chosen once from the CPU's features (idempotent, so a race between
 * two first callers only writes the same pointer twice); tests may force a set. */

#include "cpu.h"

TGI_ISA_SETS(g_sets, g_auto_impl, g_forced_impl, &tgi_gemm_impl_generic, &tgi_gemm_impl_avx2,
             &tgi_gemm_impl_avx512);

static const tgi_gemm_impl *get_impl(void) { return tgi_isa_pick(&g_sets); }

#ifdef TG_USE_CBLAS
/* With TG_USE_CBLAS the automatic choice is the installed CBLAS; a forced kernel
 * set (tests, benchmarks) still runs tapegrad's own. */
static int use_cblas(void)
{
    return atomic_load_explicit(&g_forced_impl, memory_order_acquire) == NULL;
}
#endif

/* Tests force a kernel set to exercise it on every shape, tiny ones included. */
static int forced_kernel_active(void)
{
    return atomic_load_explicit(&g_forced_impl, memory_order_relaxed) != NULL;
}

const char *tgi_gemm_kernel_name(void)
{
#ifdef TG_USE_CBLAS
    if (use_cblas()) return "cblas";
#endif
    return get_impl()->name;
}

void tgi_gemm_force_kernel(const char *name) { tgi_isa_force(&g_sets, name); }

/* ---------------------------------------------------------------------------------
 * One problem, described once for both paths. Pointers are bytes; strides elements. */

typedef struct gemm_problem {
    const tgi_gemm_kern *kern;
    size_t esz;                  /* sizeof(float) or sizeof(double) */
    int64_t m, n, k;
    const unsigned char *A, *B;
    int64_t rsa, csa, rsb, csb;  /* op(A)(i,p) = A[i*rsa + p*csa], op(B)(p,j) = B[p*rsb + j*csb] */
    int add;                     /* accumulate into C */
    unsigned char *C;
    int64_t ldc;
    int64_t kcb;                 /* k block: k split into equal blocks of at most KC */
} gemm_problem;

static int64_t imin(int64_t a, int64_t b) { return a < b ? a : b; }
static int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

/* Below this many multiply-adds (some 100-200 us of work on one core) more
 * threads are not worth it: waking them costs microseconds, and on a loaded
 * machine they wait for a core (a batch-64 MLP trained 20x slower with OpenMP
 * teams on its 64x784x128 products, when libgomp's workers spun). Products
 * with a dimension of at most 16 start lower: the operand that every range
 * reads whole is then thin, so more ranges add little work (the three n = 10
 * products of a 784-1024-1024-10 MLP, 2.6 M each, ran 1.7-2.2x faster on two
 * threads; 64 x 64 x 784, whose row ranges each pack all of op(B), ran 1.3x
 * slower). */
#define PAR_MIN_FLOPS (1 << 23)
#define PAR_MIN_FLOPS_THIN (1 << 21)
/* Ranges per thread: with one each, a thread the scheduler keeps off its core
 * holds every other thread back at the end of the call; with a few, the others
 * take its share. Each range reads the shared operand whole and writes C in its
 * own strip, so not many: on the big MLP's two-thread step, 3 each gave a median
 * 1.85x one thread against 1.80x with 4 (8 alternations; 6 each: slower still),
 * and kept 0.99-1.00x with the other core busy. Ranges that shrink towards the end
 * of the call (guided) did no better idle and worse busy (0.95-0.99x). */
#define RANGES_PER_THREAD 3

/* How many threads to use on `tiles` independent output tiles. */
static int threads_for(const tg_gemm_ws *ws, int nthreads, int64_t tiles, int64_t m, int64_t n,
                       int64_t k)
{
    if (nthreads <= 1 || !ws->pool) return 1;
    const int thin = m <= 16 || n <= 16 || k <= 16;
    if ((double)m * (double)n * (double)k < (double)(thin ? PAR_MIN_FLOPS_THIN : PAR_MIN_FLOPS))
        return 1;
    if (tiles < nthreads) return (int)(tiles < 1 ? 1 : tiles);
    return nthreads;
}

/* How many ranges nt threads share: a few each, never fewer tiles than a range. */
static int64_t ranges_for(int nt, int64_t tiles)
{
    const int64_t r = (int64_t)nt * RANGES_PER_THREAD;
    return r < tiles ? r : tiles;
}

/* Range r of nr gets tiles [lo, hi) of `tiles`. */
static void split_range(int64_t tiles, int64_t r, int64_t nr, int64_t *lo, int64_t *hi)
{
    *lo = tiles * r / nr;
    *hi = tiles * (r + 1) / nr;
}

/* One threaded call: what every range needs. */
typedef struct {
    const gemm_problem *P;
    unsigned char *buf;
    size_t per_thread, a_bytes;  /* per-thread buffers; blocked: A's panel first */
    int64_t tiles, nranges, npan;
    int split_n;
    /* Blocked path, threaded: the operand that every range reads whole (op(A) when the
     * ranges are columns, op(B) when they are rows), packed once by the job's first
     * npack chunks, or shared == NULL. Its k block at pc (kc deep) starts at
     * shared + pc * units * U elements (U = MR or NR), micro-panel u of it u * kc * U
     * further on; chunk c packs micro-panels [g*group, (g+1)*group) of k block b
     * (c = b * groups + g) and then sets ready[c] = seq. */
    unsigned char *shared;
    int64_t units, group, groups, npack;
    _Atomic uint64_t *ready;
    uint64_t seq;
} gemm_job;

/* How a call is shared: along C's column panels when it has at least as many of
 * them as row tiles, else along the row tiles; the ranges and threads for them (a
 * function of the shape and the thread count, never of timing). Returns the
 * threads to use; the caller sets the buffers. */
static int plan_job(const tg_gemm_ws *ws, const gemm_problem *P, int nthreads, int blocked,
                    gemm_job *J)
{
    const int64_t mtiles = ceil_div(P->m, P->kern->mr), npan = ceil_div(P->n, P->kern->nr);
    J->P = P;
    J->npan = npan;
    J->split_n = npan >= mtiles;
    if (blocked) {
        /* On the blocked path every range of rows reads all of op(B) (k x n), every
         * range of columns all of op(A) (m x k): packed once and shared (run_blocked),
         * but each range still brings it from L3 into its core's L2. Ranges of columns
         * also write C in strips a range wide instead of whole rows, which costs
         * about as much as bringing in m x n more of A (per k: it matters when k is
         * small). Split the way that moves less. Two threads, Sapphire Rapids:
         * 256 x 784 x 1024 (an MLP's forward) 1.80x one thread in columns, 1.40x in
         * rows; its weight gradient 784 x 256 x 1024 (A^T B) 1.66x in columns, 1.81x
         * in rows; 512^3 1.6x in columns (ranges one panel wide), 1.8x in rows. */
        const int tm = threads_for(ws, nthreads, mtiles, P->m, P->n, P->k);
        const int tn = threads_for(ws, nthreads, npan, P->m, P->n, P->k);
        if (tm > 1 && tn > 1) {
            const double rm = (double)ranges_for(tm, mtiles), rn = (double)ranges_for(tn, npan);
            const double m = (double)P->m, n = (double)P->n;
            J->split_n = rn * m + m * n / (double)P->k < rm * n;
        }
    }
    J->tiles = J->split_n ? npan : mtiles;
    const int nt = threads_for(ws, nthreads, J->tiles, P->m, P->n, P->k);
    J->nranges = nt == 1 ? 1 : ranges_for(nt, J->tiles);
    return nt;
}

/* ---------------------------------------------------------------------------------
 * Blocked path */

/* The block of at most `max` that splits `len` into equal parts, rounded up to a
 * multiple of `unit` (so 1024 columns in blocks of at most 480 become 352, 352, 320
 * instead of 480, 480, 64). */
static int64_t even_block(int64_t len, int64_t max, int64_t unit)
{
    const int64_t b = ceil_div(len, ceil_div(len, max));
    return imin(ceil_div(b, unit) * unit, max);
}

/* Largest B block (bytes) with which the blocked path packs A^T inside its first
 * tiles: about the size of L1d (48 KiB on Sapphire Rapids, 32 KiB on Zen 3). */
#define FUSE_MAX_B 49152

/* Micro-panels [u0, u1) of the shared operand's k block at pc (kc deep): where they
 * start, or NULL if a chunk that packs some of them has not finished (its thread may
 * be off its core: the range then packs its own copy instead of waiting). */
static const unsigned char *shared_block(const gemm_job *J, int64_t pc, int64_t kc, int64_t u0,
                                         int64_t u1)
{
    const gemm_problem *P = J->P;
    const int64_t U = J->split_n ? P->kern->mr : P->kern->nr, base = pc / P->kcb * J->groups;
    for (int64_t g = u0 / J->group; g <= (u1 - 1) / J->group; g++)
        if (atomic_load_explicit(&J->ready[base + g], memory_order_acquire) != J->seq)
            return NULL;
    return J->shared + (size_t)((pc * J->units + u0 * kc) * U) * P->esz;
}

/* Tests: every g_unpacked-th pack chunk (0: none) does nothing, as if its thread
 * were still at it, so that the ranges' own packing is exercised. */
static _Atomic int g_unpacked;

void tgi_gemm_test_unpacked(int every) { atomic_store(&g_unpacked, every > 0 ? every : 0); }

/* Pack chunk c of a threaded blocked call (see gemm_job). */
static void pack_chunk(const gemm_job *J, int64_t c)
{
    const int skip = atomic_load_explicit(&g_unpacked, memory_order_relaxed);
    if (skip && c % skip == 0) return;
    const gemm_problem *P = J->P;
    const tgi_gemm_kern *K = P->kern;
    const size_t es = P->esz;
    const int64_t pc = c / J->groups * P->kcb, kc = imin(P->kcb, P->k - pc);
    const int64_t u0 = c % J->groups * J->group, u1 = imin(u0 + J->group, J->units);
    if (J->split_n) {
        const int64_t MR = K->mr, i0 = u0 * MR;
        K->pack_a(imin(u1 * MR, P->m) - i0, kc, P->A + (size_t)(i0 * P->rsa + pc * P->csa) * es,
                  P->rsa, P->csa, J->shared + (size_t)((pc * J->units + u0 * kc) * MR) * es);
    } else {
        const int64_t NR = K->nr, j0 = u0 * NR;
        K->pack_b(kc, imin(u1 * NR, P->n) - j0, P->B + (size_t)(pc * P->rsb + j0 * P->csb) * es,
                  P->rsb, P->csb, J->shared + (size_t)((pc * J->units + u0 * kc) * NR) * es);
    }
    atomic_store_explicit(&J->ready[c], J->seq, memory_order_release);
}

/* The sequential blocked algorithm on rows [i0,i1) x columns [j0,j1) of C; with J,
 * the shared operand's blocks are read from J->shared where ready. */
static void blocked_range(const gemm_problem *P, const gemm_job *J, int64_t i0, int64_t i1,
                          int64_t j0, int64_t j1, unsigned char *abuf, unsigned char *bbuf)
{
    const tgi_gemm_kern *K = P->kern;
    const size_t es = P->esz;
    const int64_t MR = K->mr, NR = K->nr;
    const int64_t m = i1 - i0, n = j1 - j0, k = P->k;
    const int64_t MC = even_block(m, K->mc, MR), NC = even_block(n, K->nc, NR);
    /* op(A) = A^T: the first tile of each full row panel packs its rows of A as it
     * goes (ukr_pa), and only a last partial row panel is packed beforehand; but only
     * when the B block is small enough to leave in L1 the lines of A^T that the next
     * row panel's first tile reads again (MR values of each row of A^T at a time):
     * with a 512 x 512 f32 B block streaming past between two tiles, 1024^3 A^T B ran
     * 10% slower fused than packed in one pass */
    const int sha = J && J->shared && J->split_n, shb = J && J->shared && !J->split_n;
    const int fuse = !sha && P->rsa == 1 && K->ukr_pa != NULL &&
                     NC * P->kcb * (int64_t)es <= FUSE_MAX_B;

    for (int64_t ic = 0; ic < m; ic += MC) {
        const int64_t mc = imin(MC, m - ic);
        const int64_t mfull = mc / MR * MR, mpk = fuse ? mfull : 0;
        for (int64_t pc = 0; pc < k; pc += P->kcb) {
            const int64_t kc = imin(P->kcb, k - pc);
            const int add = P->add || pc > 0;
            const unsigned char *ablk = P->A + (size_t)((i0 + ic) * P->rsa + pc * P->csa) * es;
            const unsigned char *apk =
                sha ? shared_block(J, pc, kc, (i0 + ic) / MR, ceil_div(i0 + ic + mc, MR)) : NULL;
            if (!apk) {
                if (mpk < mc)
                    K->pack_a(mc - mpk, kc, ablk + (size_t)(mpk * P->rsa) * es, P->rsa, P->csa,
                              abuf + (size_t)(mpk * kc) * es);
                apk = abuf;
            }
            for (int64_t jc = 0; jc < n; jc += NC) {
                const int64_t nc = imin(NC, n - jc);
                const unsigned char *bpk =
                    shb ? shared_block(J, pc, kc, (j0 + jc) / NR, ceil_div(j0 + jc + nc, NR))
                        : NULL;
                if (!bpk) {
                    K->pack_b(kc, nc, P->B + (size_t)(pc * P->rsb + (j0 + jc) * P->csb) * es,
                              P->rsb, P->csb, bbuf);
                    bpk = bbuf;
                }
                unsigned char *cblk = P->C + (size_t)((i0 + ic) * P->ldc + j0 + jc) * es;
                /* one MR x kc micro-panel of A stays in L1 while the kc x NR micro-panels
                 * of B stream past it from L2, along the rows of C */
                for (int64_t ir = 0; ir < mfull; ir += MR) {
                    const unsigned char *ap = apk + (size_t)(ir * kc) * es;
                    unsigned char *crow = cblk + (size_t)(ir * P->ldc) * es;
                    int64_t jr = 0;
                    if (jc == 0 && fuse) {
                        K->ukr_pa(kc, ablk + (size_t)ir * es, P->csa, abuf + (size_t)(ir * kc) * es,
                                  bpk, crow, P->ldc, add, (int)imin(NR, nc));
                        jr = NR;
                    }
                    for (; jr < nc; jr += NR)
                        K->ukr(kc, ap, bpk + (size_t)(jr * kc) * es, crow + (size_t)jr * es,
                               P->ldc, add, (int)MR, (int)imin(NR, nc - jr));
                }
                if (mfull < mc) /* last rows: the direct kernel's smaller tiles on the packed
                                   panels (A(i,p) at a[i + p*MR]), same sums */
                    for (int64_t jr = 0; jr < nc; jr += NR)
                        K->direct(mc - mfull, kc, apk + (size_t)(mfull * kc) * es, 1, MR,
                                  bpk + (size_t)(jr * kc) * es, NR, NULL, add,
                                  cblk + (size_t)(mfull * P->ldc + jr) * es, P->ldc,
                                  (int)imin(NR, nc - jr));
            }
        }
    }
}

/* Chunk r of a threaded blocked call: the pack chunks first, then the ranges (each on
 * thread t's buffers). */
static void blocked_chunk(void *arg, int64_t r, int t)
{
    const gemm_job *J = arg;
    const gemm_problem *P = J->P;
    const int64_t MR = P->kern->mr, NR = P->kern->nr;
    if (r < J->npack) {
        pack_chunk(J, r);
        return;
    }
    unsigned char *abuf = J->buf + J->per_thread * (size_t)t, *bbuf = abuf + J->a_bytes;
    int64_t lo, hi;
    split_range(J->tiles, r - J->npack, J->nranges, &lo, &hi);
    if (J->split_n)
        blocked_range(P, J, 0, P->m, lo * NR, imin(hi * NR, P->n), abuf, bbuf);
    else
        blocked_range(P, J, lo * MR, imin(hi * MR, P->m), 0, P->n, abuf, bbuf);
}

/* Bytes of op(A) or op(B) one pack chunk of a threaded call packs, about: some
 * chunks per thread, so that a thread kept off its core leaves the rest to others. */
#define PACK_CHUNK_BYTES (128 * 1024)

/* Plans the shared operand of a threaded blocked call (see gemm_job); its bytes, or
 * 0 when there is none (k in more blocks than GEMM_MAX_PACK_CHUNKS). */
static size_t plan_shared(gemm_job *J)
{
    const gemm_problem *P = J->P;
    const int64_t U = J->split_n ? P->kern->mr : P->kern->nr;
    const int64_t nkb = ceil_div(P->k, P->kcb);
    J->units = ceil_div(J->split_n ? P->m : P->n, U);
    J->npack = 0;
    if (nkb > GEMM_MAX_PACK_CHUNKS) return 0;
    const int64_t per_kb = GEMM_MAX_PACK_CHUNKS / nkb; /* chunks per k block, at most */
    J->group = PACK_CHUNK_BYTES / (P->kcb * U * (int64_t)P->esz);
    if (J->group < 1) J->group = 1;
    if (J->group < ceil_div(J->units, per_kb)) J->group = ceil_div(J->units, per_kb);
    J->groups = ceil_div(J->units, J->group);
    J->npack = J->groups * nkb;
    return round_up_bytes((size_t)(P->k * J->units * U) * P->esz);
}

static int run_blocked(tg_gemm_ws *ws, const gemm_problem *P, int nthreads)
{
    const tgi_gemm_kern *K = P->kern;
    const int64_t MR = K->mr, NR = K->nr;
    gemm_job J;
    const int nt = plan_job(ws, P, nthreads, 1, &J);

    /* the largest range, and a thread's packing buffers for it */
    const int64_t tmax = ceil_div(J.tiles, J.nranges);
    const int64_t m_thr = J.split_n ? P->m : imin(P->m, tmax * MR);
    const int64_t n_thr = J.split_n ? imin(P->n, tmax * NR) : P->n;
    J.a_bytes = round_up_bytes((size_t)(ceil_div(imin(K->mc, m_thr), MR) * MR * P->kcb) * P->esz);
    J.per_thread = J.a_bytes + round_up_bytes((size_t)(ceil_div(imin(K->nc, n_thr), NR) * NR *
                                                       P->kcb) * P->esz);
    const size_t shared = nt > 1 ? plan_shared(&J) : 0;
    if (ws_reserve(ws, &ws->pk, shared + J.per_thread * (size_t)nt)) return -1;
    J.shared = shared ? ws->pk.buf : NULL;
    J.buf = ws->pk.buf + shared;
    J.ready = ws->ready;
    J.seq = ++ws->seq;

    if (nt == 1)
        blocked_range(P, NULL, 0, P->m, 0, P->n, J.buf, J.buf + J.a_bytes);
    else
        tgi_pool_run(ws->pool, nt, J.npack + J.nranges, blocked_chunk, &J);
    return 0;
}

/* ---------------------------------------------------------------------------------
 * Direct path */

/* Whether a shape goes to the direct path. A function of the shape and the
 * transposes only (never of the thread count). The thresholds were measured on
 * Zen 3 against the blocked path (docs/gemm.md). */
static int use_direct(const gemm_problem *P)
{
    const int64_t m = P->m, n = P->n, k = P->k;
    const double mnk = (double)m * (double)n * (double)k;
    /* Row-major A whose rows are a multiple of 2 KiB apart: the tile's MR rows, read
     * in place, map to one or two L1 sets and evict each other (f32 64x1024x1024 ran
     * at 40% of the blocked path, f64 1024x256x16 at 80%; at 1 KiB the direct path
     * still wins). Pack A unless the whole thing is tiny. */
    if (m > 4 && P->csa == 1 && (P->rsa * (int64_t)P->esz) % 2048 == 0 && mnk > 65536.0)
        return 0;
    const int f32 = P->esz == sizeof(float);
    if (n <= 16 || k <= 16) return 1;
    /* few rows: up to 64 in f32. In f64 the blocked path wins from m = 8 when op(B)
     * must be transposed into its slices (B^T); a row-major op(B) is packed by the
     * first row tile instead (direct_range), and then direct wins up to m = 32
     * (64 x 784 x 128 A^T B: 4% slower direct) */
    if (m <= (f32 ? 64 : 4)) return 1;
    if (!f32 && m <= 32 && P->csb == 1) return 1;
    /* small cubes: f32 up to about 100^3, f64 up to 64^3 (measured crossovers) */
    return mnk <= (f32 ? 1048576.0 : 262144.0);
}

/* k block of the direct path when it runs the blocked path's wide tile: a kc x NR
 * slice of op(B) of 24 KiB (f32 96 x 64, f64 96 x 32), which stays in L1 with the
 * rows of A the tiles read, as the narrow tile's 192 x 32 f32 slice does (with 128
 * or 192 the 64 x 784 x 64 A B^T of an MLP's forward ran 5-10% slower). */
#define DIRECT_WIDE_KC 96

/* Whether a direct product runs on the set's blocked-path tile (AVX-512: 6 x 64
 * f32, 6 x 32 f64) instead of its own (12 x 32, 12 x 16): 10 loads per 24
 * multiply-adds instead of 14, so faster where the wide tile wastes nothing on
 * padding: more rows than one narrow tile (which reads B in place when it covers
 * them all), at least one wide panel, and no more padded columns than the narrow
 * tile, or, when op(B) is row-major (its slices are copied by the first row tile,
 * not transposed), at most n/8 more (n = 784: 832 against 800). A function of the
 * shape only. Measured on Sapphire Rapids (docs/gemm.md): f32 64 x 784 x 64 A B^T
 * (an MLP's forward) +6-9%, 64 x 784 x 128 A B +7%, 64 x 64 x 784 A^T B +5%; the
 * A B^T with n = 784 lost 5% on the wide tile, hence the padding rule. */
static int direct_wide(const gemm_problem *P)
{
    const tgi_gemm_kern *K = P->kern, *W = K->blocked;
    if (!W || P->m <= K->mr || P->n < W->nr) return 0;
    const int64_t padw = ceil_div(P->n, W->nr) * W->nr, padn = ceil_div(P->n, K->nr) * K->nr;
    return padw == padn || (P->csb == 1 && padw - padn <= P->n / 8);
}

/* Column panels [q0,q1) (NR wide) x rows [i0,i1) of C. For each block of k and
 * each panel, the kc x NR slice of op(B) is copied into bbuf (which also transposes
 * B^T and zero-pads a partial panel): read in place, its rows would sit at a stride
 * of ldb and, for power-of-two widths, fight over a few L1 sets. A is read in place. */
static void direct_range(const gemm_problem *P, int64_t q0, int64_t q1, int64_t i0, int64_t i1,
                         unsigned char *bbuf)
{
    const tgi_gemm_kern *K = P->kern;
    const size_t es = P->esz;
    const int64_t NR = K->nr;
    for (int64_t pc = 0; pc < P->k; pc += P->kcb) {
        const int64_t kc = imin(P->kcb, P->k - pc);
        const int add = P->add || pc > 0;
        const unsigned char *a = P->A + (size_t)(i0 * P->rsa + pc * P->csa) * es;
        for (int64_t q = q0; q < q1; q++) {
            const int64_t j = q * NR;
            const int nr = (int)imin(NR, P->n - j);
            const unsigned char *b = P->B + (size_t)(pc * P->rsb + j * P->csb) * es;
            unsigned char *c = P->C + (size_t)(i0 * P->ldc + j) * es;
            if (P->csb == 1 && nr == NR) {
                /* row-major op(B), full panel: read in place by a single row tile (each
                 * value is used once), else packed by the first row tile for the rest */
                K->direct(i1 - i0, kc, a, P->rsa, P->csa, b, P->rsb,
                          i1 - i0 > K->mr ? bbuf : NULL, add, c, P->ldc, nr);
                continue;
            }
            K->pack_b(kc, nr, b, P->rsb, P->csb, bbuf);
            K->direct(i1 - i0, kc, a, P->rsa, P->csa, bbuf, NR, NULL, add, c, P->ldc, nr);
        }
    }
}

/* Range r of a threaded direct call, on thread t's buffer. */
static void direct_chunk(void *arg, int64_t r, int t)
{
    const gemm_job *J = arg;
    const gemm_problem *P = J->P;
    unsigned char *bbuf = J->buf + J->per_thread * (size_t)t;
    int64_t lo, hi;
    split_range(J->tiles, r, J->nranges, &lo, &hi);
    if (J->split_n)
        direct_range(P, lo, hi, 0, P->m, bbuf);
    else
        direct_range(P, 0, J->npan, lo * P->kern->mr, imin(hi * P->kern->mr, P->m), bbuf);
}

static int run_direct(tg_gemm_ws *ws, const gemm_problem *P, int nthreads)
{
    gemm_job J;
    const int nt = plan_job(ws, P, nthreads, 0, &J);
    J.a_bytes = 0;
    J.per_thread = round_up_bytes((size_t)(P->kcb * P->kern->nr) * P->esz);
    if (ws_reserve(ws, &ws->pk, J.per_thread * (size_t)nt)) return -1;
    J.buf = ws->pk.buf;

    if (nt == 1)
        direct_range(P, 0, J.npan, 0, P->m, J.buf);
    else
        tgi_pool_run(ws->pool, nt, J.nranges, direct_chunk, &J);
    return 0;
}

/* ---------------------------------------------------------------------------------
 * Entry points */

/* Thin products: C[m, n] with n <= 16 and m >= 64, op(B) = B (forms A B and A^T B).
 * Row tiles put the n columns in the vector lanes, so n = 10 fills 10 of 16 (f32);
 * computed as C^T[n, m] = op(B)^T op(A)^T instead, the m rows run along the lanes
 * (and the direct kernel's 10-row tile covers the n = 10 rows of C^T). C^T goes to
 * the workspace and is then added into C transposed (a choice by shape only, so the
 * bits still do not depend on the thread count). Against OpenBLAS's SkylakeX kernels
 * (docs/gemm.md): f32 128x64x10 A^T B 0.54 -> 0.90x, 1024x256x10 A^T B 0.96 -> 2.2x,
 * 256x1024x10 A B 1.06 -> 1.4x; f64 256x1024x10 A B 0.75 -> 1.17x, 128x64x10 A^T B
 * 0.89 -> 1.17x; f64 64x128x10 A B lost 7%, hence the size limit for f64 A B. */
static int thin_transposed(size_t esz, int64_t m, int64_t n, int64_t k, int ta, int tb)
{
    if (tb || n > 16 || m < 64) return 0;
    return esz == sizeof(float) || ta || (double)m * (double)k >= 65536.0;
}

/* C[i, j] = (add ? C[i, j] : 0) + T[j, i] for T of n rows of m */
#define ADD_TRANSPOSED(T_)                                                                 \
    do {                                                                                   \
        T_ *c = (T_ *)C;                                                                   \
        const T_ *t = (const T_ *)T;                                                       \
        for (int64_t i = 0; i < m; i++)                                                    \
            for (int64_t j = 0; j < n; j++)                                                \
                c[i * ldc + j] = add ? c[i * ldc + j] + t[j * m + i] : t[j * m + i];       \
    } while (0)
static void add_transposed(void *C, int64_t ldc, const void *T, int64_t m, int64_t n, int add,
                           size_t esz)
{
    if (esz == sizeof(float))
        ADD_TRANSPOSED(float);
    else
        ADD_TRANSPOSED(double);
}
#undef ADD_TRANSPOSED

static int gemm_any(tg_gemm_ws *ws, const tgi_gemm_kern *K, size_t esz, int nthreads, int ta,
                    int tb, int64_t m, int64_t n, int64_t k, const void *A, int64_t lda,
                    const void *B, int64_t ldb, int accumulate, void *C, int64_t ldc)
{
    if (m <= 0 || n <= 0) return 0;
    if (k <= 0) {
        if (!accumulate) /* all-zero bits are +0.0 for float and double */
            for (int64_t i = 0; i < m; i++) memset((unsigned char *)C + (size_t)(i * ldc) * esz, 0, (size_t)n * esz);
        return 0;
    }
    if (!ws) return -1;
    if (thin_transposed(esz, m, n, k, ta, tb)) {
        if (ws_reserve(ws, &ws->tr, (size_t)(m * n) * esz)) return -1;
        void *T = ws->tr.buf;
        /* op(B)^T = B^T (B stored [k, n]); op(A)^T = A^T, or A when ta */
        if (gemm_any(ws, K, esz, nthreads, 1, !ta, n, m, k, B, ldb, A, lda, 0, T, m)) return -1;
        add_transposed(C, ldc, T, m, n, accumulate != 0, esz);
        return 0;
    }
    gemm_problem P;
    P.kern = K;
    P.esz = esz;
    P.m = m;
    P.n = n;
    P.k = k;
    P.A = (const unsigned char *)A;
    P.B = (const unsigned char *)B;
    P.rsa = ta ? 1 : lda;
    P.csa = ta ? lda : 1;
    P.rsb = tb ? 1 : ldb;
    P.csb = tb ? ldb : 1;
    P.add = accumulate != 0;
    P.C = (unsigned char *)C;
    P.ldc = ldc;
    if (K->thin && n <= K->thin->nr) /* n = 10: a 16-wide tile wastes half as much */
        P.kern = K = K->thin;
    P.kcb = ceil_div(k, ceil_div(k, K->kc));
    if (use_direct(&P)) {
        if (direct_wide(&P)) { /* the blocked path's wider tile, on L1-sized slices */
            P.kern = K = K->blocked;
            P.kcb = ceil_div(k, ceil_div(k, DIRECT_WIDE_KC));
        }
        return run_direct(ws, &P, nthreads);
    }
    if (K->blocked) { /* the set's wider tile and its own blocks */
        P.kern = K = K->blocked;
        P.kcb = ceil_div(k, ceil_div(k, K->kc));
    }
    return run_blocked(ws, &P, nthreads);
}

#ifdef TG_USE_CBLAS
/* Build option TG_USE_CBLAS: unless a kernel set is forced, hand the product to the
 * installed CBLAS (when the sizes fit its int arguments). Its threading is its own:
 * results may then depend on OpenBLAS's thread count, and nthreads is not used. */
static int cblas_fits(int64_t m, int64_t n, int64_t k, int64_t lda, int64_t ldb, int64_t ldc)
{
    return use_cblas() && m > 0 && n > 0 && k > 0 && m <= INT_MAX && n <= INT_MAX && k <= INT_MAX &&
           lda <= INT_MAX && ldb <= INT_MAX && ldc <= INT_MAX;
}
#endif

#include "gemm_tiny.h" /* the tiny path (its comment there) */

int tgi_gemm_tiny_ok(void) { return !forced_kernel_active(); }

/* The entry points, written once for float (f32) and double (f64): the tiny path
 * (unless a kernel set is forced), else CBLAS in a TG_USE_CBLAS build, else the
 * kernel set's blocked or direct path. */
#ifdef TG_USE_CBLAS
#define GEMM_CBLAS(FN, T)                                                                  \
    if (cblas_fits(m, n, k, lda, ldb, ldc)) {                                              \
        FN(CblasRowMajor, ta ? CblasTrans : CblasNoTrans, tb ? CblasTrans : CblasNoTrans,  \
           (int)m, (int)n, (int)k, (T)1, A, (int)lda, B, (int)ldb, accumulate ? (T)1 : (T)0, \
           C, (int)ldc);                                                                   \
        return 0;                                                                          \
    }
#else
#define GEMM_CBLAS(FN, T)
#endif
#define GEMM_ENTRY(SUF, T, CBLAS_FN)                                                       \
    int tgi_gemm_##SUF(tg_gemm_ws *ws, int nthreads, int ta, int tb, int64_t m, int64_t n, \
                       int64_t k, const T *A, int64_t lda, const T *B, int64_t ldb,        \
                       int accumulate, T *C, int64_t ldc)                                  \
    {                                                                                      \
        if (ws && tgi_gemm_tiny_fits(m, n, k) && !forced_kernel_active()) {                    \
            tiny_gemm_##T(ta, tb, m, n, k, A, lda, B, ldb, accumulate, C, ldc);            \
            return 0;                                                                      \
        }                                                                                  \
        GEMM_CBLAS(CBLAS_FN, T)                                                            \
        return gemm_any(ws, &get_impl()->SUF, sizeof(T), nthreads, ta, tb, m, n, k, A, lda, \
                        B, ldb, accumulate, C, ldc);                                       \
    }
GEMM_ENTRY(f32, float, cblas_sgemm)
GEMM_ENTRY(f64, double, cblas_dgemm)
