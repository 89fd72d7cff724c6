/* SPDX-License-Identifier: MIT */
/* gemm_tmpl.h: the GEMM kernels, written once over a small vector vocabulary and
 * instantiated per instruction set and element type (gemm_generic.c, gemm_avx2.c,
 * gemm_avx512.c). No include guard: included once per instantiation.
 *
 * The includer defines:
 *   TMPL_T          element type (float or double)
 *   TMPL_SFX        suffix that names this instantiation (e.g. avx2_f32)
 *   TMPL_TARGET     function attribute enabling the instruction set, or nothing
 *   TMPL_V, TMPL_VL vector type and its number of lanes
 *   TMPL_MR         rows of the register tile
 *   TMPL_NV         vectors per tile row, so NR = TMPL_NV * TMPL_VL columns
 *   TMPL_ZERO()     a zero vector
 *   TMPL_LOAD(p), TMPL_STORE(p, v)   unaligned vector load / store
 *   TMPL_BCAST(p)   the scalar *p in every lane
 *   TMPL_FMA(a, b, c)  a*b + c lane-wise (fused where the ISA has FMA)
 *   TMPL_ADD(a, b)  a + b lane-wise
 * and may define (optional, for the transposing packs that otherwise go scalar):
 *   TMPL_PACK_A_ROWS(kc, a, lda, out)  pack MR full rows of a row-major A (row stride
 *                   lda, contiguous along p) as one micro-panel: out[p*MR + r] = a[r*lda + p]
 *   TMPL_PACK_B_COLS(kc, b, ldb, out)  pack NR full columns of op(B) = B^T (column j at
 *                   b + j*ldb, contiguous along p): out[p*NR + j] = b[j*ldb + p]
 *   TMPL_KEEP_VOCAB keep all but TMPL_SFX, TMPL_MR, TMPL_NV defined afterwards, for
 *                   a second tile shape of the same type
 * and gets, all static:
 *   tgi_ukr_SFX, tgi_ukr_pa_SFX, tgi_pack_a_SFX, tgi_pack_b_SFX, tgi_direct_SFX
 *   (see gemm_kern.h)
 *
 * Every element of C is accumulated the same way in every routine here: a register
 * starts at 0, takes one multiply-add per k step in order, and is then added to C
 * (or stored). Where in a tile an element sits, or which routine computes it, does
 * not change its bits; that is what makes the thread count invisible in the result. */

#include <stdint.h> /* uintptr_t */
#include <string.h> /* memcpy */

#define TMPL_CAT2(a, b) a##b
#define TMPL_CAT(a, b) TMPL_CAT2(a, b)
#define TMPL_NAME(base) TMPL_CAT(base, TMPL_SFX)
#define TMPL_NR (TMPL_NV * TMPL_VL)
/* how many k steps ahead the packing kernels (tgi_ukr_pa_, the packing direct
 * tile) prefetch the op(A) / op(B) rows they copy; integer arithmetic, so that the
 * address may run past the matrix */
#ifndef TMPL_DIRECT_PF
#define TMPL_DIRECT_PF 16
#endif
#define TMPL_PREFETCH_AHEAD(ptr, stride)                                                 \
    __builtin_prefetch(                                                                  \
        (const void *)((uintptr_t)(ptr) +                                                \
                       (uintptr_t)(TMPL_DIRECT_PF * (stride)) * sizeof(TMPL_T)),         \
        0, 3)

/* Write an mr x nr corner of the register tile acc to C (add: C += acc). A full tile
 * goes straight from registers; an edge tile goes through a small stack buffer. The
 * additions are the same IEEE additions either way. */
#define TMPL_STORE_TILE(acc, c, ldc, add, mr, nr)                                           \
    do {                                                                                    \
        if ((mr) == TMPL_MR && (nr) == TMPL_NR) {                                           \
            _Pragma("GCC unroll 16") for (int i_ = 0; i_ < TMPL_MR; i_++) {                 \
                _Pragma("GCC unroll 8") for (int v_ = 0; v_ < TMPL_NV; v_++) {              \
                    TMPL_T *cp_ = (c) + i_ * (ldc) + v_ * TMPL_VL;                          \
                    TMPL_STORE(cp_, (add) ? TMPL_ADD(TMPL_LOAD(cp_), acc[i_][v_])           \
                                          : acc[i_][v_]);                                   \
                }                                                                           \
            }                                                                               \
        } else {                                                                            \
            _Alignas(64) TMPL_T tile_[TMPL_MR * TMPL_NR];                                   \
            _Pragma("GCC unroll 16") for (int i_ = 0; i_ < TMPL_MR; i_++)                   \
                _Pragma("GCC unroll 8") for (int v_ = 0; v_ < TMPL_NV; v_++)                \
                    TMPL_STORE(tile_ + i_ * TMPL_NR + v_ * TMPL_VL, acc[i_][v_]);           \
            for (int i_ = 0; i_ < (mr); i_++) {                                             \
                TMPL_T *cr_ = (c) + i_ * (ldc);                                             \
                const TMPL_T *tr_ = tile_ + i_ * TMPL_NR;                                   \
                if (add)                                                                    \
                    for (int j_ = 0; j_ < (nr); j_++) cr_[j_] = cr_[j_] + tr_[j_];          \
                else                                                                        \
                    for (int j_ = 0; j_ < (nr); j_++) cr_[j_] = tr_[j_];                    \
            }                                                                               \
        }                                                                                   \
    } while (0)

/* The microkernel. Register layout: acc[i][v] holds C[i, v*VL : (v+1)*VL] for the
 * MR rows of the tile (MR*NV vector registers); each k step loads the NR values of
 * packed B into NV registers, then per row broadcasts one packed A value and does
 * NV multiply-adds. The k loop is the only loop; the rest unrolls into straight code.
 * With `pack` (a constant), the MR values of step p are read from op(A) = A^T in
 * place (asrc + p*csa, contiguous) and also copied to the packed panel a, which the
 * tiles of the other column panels then read: packing A^T inside the multiply-adds. */
TMPL_TARGET static inline __attribute__((always_inline)) void
TMPL_NAME(tgi_ukr_body_)(const int pack, int64_t kc, const TMPL_T *a, const TMPL_T *asrc,
                         int64_t csa, TMPL_T *apk, const TMPL_T *b, TMPL_T *c, int64_t ldc,
                         int add, int mr, int nr)
{
    TMPL_V acc[TMPL_MR][TMPL_NV];

    for (int i = 0; i < mr; i++) { /* the tile's rows of C, needed at the end */
        __builtin_prefetch(c + i * ldc, 1, 3);
        __builtin_prefetch(c + i * ldc + TMPL_NR - 1, 1, 3);
    }
    _Pragma("GCC unroll 16") for (int i = 0; i < TMPL_MR; i++)
        _Pragma("GCC unroll 8") for (int v = 0; v < TMPL_NV; v++) acc[i][v] = TMPL_ZERO();

    _Pragma("GCC unroll 4") for (int64_t p = 0; p < kc; p++) {
        TMPL_V bb[TMPL_NV];
        const TMPL_T *ap = a;
        if (pack) {
            ap = asrc + p * csa;
            TMPL_PREFETCH_AHEAD(ap, csa);
            memcpy(apk + p * TMPL_MR, ap, sizeof(TMPL_T) * TMPL_MR);
        }
        _Pragma("GCC unroll 8") for (int v = 0; v < TMPL_NV; v++)
            bb[v] = TMPL_LOAD(b + v * TMPL_VL);
        _Pragma("GCC unroll 16") for (int i = 0; i < TMPL_MR; i++) {
            TMPL_V aa = TMPL_BCAST(ap + i);
            _Pragma("GCC unroll 8") for (int v = 0; v < TMPL_NV; v++)
                acc[i][v] = TMPL_FMA(aa, bb[v], acc[i][v]);
        }
        if (!pack) a += TMPL_MR; /* packing reads asrc; a is NULL then */
        b += TMPL_NR;
    }
    TMPL_STORE_TILE(acc, c, ldc, add, mr, nr);
}

TMPL_TARGET static void TMPL_NAME(tgi_ukr_)(int64_t kc, const void *av, const void *bv,
                                             void *cv, int64_t ldc, int add, int mr, int nr)
{
    TMPL_NAME(tgi_ukr_body_)(0, kc, (const TMPL_T *)av, NULL, 0, NULL, (const TMPL_T *)bv,
                             (TMPL_T *)cv, ldc, add, mr, nr);
}

TMPL_TARGET static void TMPL_NAME(tgi_ukr_pa_)(int64_t kc, const void *asrc, int64_t csa,
                                                void *apk, const void *bv, void *cv,
                                                int64_t ldc, int add, int nr)
{
    TMPL_NAME(tgi_ukr_body_)(1, kc, NULL, (const TMPL_T *)asrc, csa, (TMPL_T *)apk,
                             (const TMPL_T *)bv, (TMPL_T *)cv, ldc, add, TMPL_MR, nr);
}

/* Pack an mc x kc block of op(A) (element (i,p) at A[i*rsa + p*csa]) into MR-row
 * micro-panels: panel q holds rows q*MR.., stored as kc columns of MR values. */
TMPL_TARGET static void TMPL_NAME(tgi_pack_a_)(int64_t mc, int64_t kc, const void *Av,
                                                int64_t rsa, int64_t csa, void *outv)
{
    const TMPL_T *A = (const TMPL_T *)Av;
    TMPL_T *out = (TMPL_T *)outv;
    for (int64_t i0 = 0; i0 < mc; i0 += TMPL_MR, out += (int64_t)TMPL_MR * kc) {
        const int rows = mc - i0 < TMPL_MR ? (int)(mc - i0) : TMPL_MR;
        const TMPL_T *a = A + i0 * rsa;
        if (rsa == 1) {
            /* op(A) = A^T of a row-major [k,m]: a panel column is MR contiguous values */
            if (rows == TMPL_MR) {
                /* memcpy: a and out do not overlap, so the MR values move as a few
                 * wide loads and stores (element by element gcc kept them scalar:
                 * 10% of a 784x64x128 A^T B) */
                _Pragma("GCC unroll 4") for (int64_t p = 0; p < kc; p++)
                    memcpy(out + p * TMPL_MR, a + p * csa, sizeof(TMPL_T) * TMPL_MR);
            } else {
                for (int64_t p = 0; p < kc; p++)
                    for (int r = 0; r < TMPL_MR; r++)
                        out[p * TMPL_MR + r] = r < rows ? a[p * csa + r] : (TMPL_T)0;
            }
        } else {
            /* op(A) = A row-major [m,k]: each row is contiguous along p; transpose it
             * in. Rows are read as MR streams, the panel is written in order. */
            if (rows == TMPL_MR) {
#ifdef TMPL_PACK_A_ROWS
                TMPL_PACK_A_ROWS(kc, a, rsa, out);
                continue;
#endif
                const TMPL_T *ar[TMPL_MR];
                for (int r = 0; r < TMPL_MR; r++) ar[r] = a + r * rsa;
                for (int64_t p = 0; p < kc; p++)
                    _Pragma("GCC unroll 16") for (int r = 0; r < TMPL_MR; r++)
                        out[p * TMPL_MR + r] = ar[r][p];
            } else {
                for (int r = 0; r < TMPL_MR; r++) {
                    const TMPL_T *row = a + r * rsa;
                    for (int64_t p = 0; p < kc; p++)
                        out[p * TMPL_MR + r] = r < rows ? row[p] : (TMPL_T)0;
                }
            }
        }
    }
}

/* Pack a kc x nc block of op(B) (element (p,j) at B[p*rsb + j*csb]) into NR-column
 * micro-panels: panel q holds columns q*NR.., stored as kc rows of NR values. */
TMPL_TARGET static void TMPL_NAME(tgi_pack_b_)(int64_t kc, int64_t nc, const void *Bv,
                                                int64_t rsb, int64_t csb, void *outv)
{
    const TMPL_T *B = (const TMPL_T *)Bv;
    TMPL_T *out = (TMPL_T *)outv;
    const int64_t full = nc / TMPL_NR; /* whole panels */
    if (csb == 1) {
        /* op(B) = B row-major [k,n]: a panel row is NR contiguous values. Eight rows
         * of B are walked together across all panels, so the reads are eight
         * sequential streams the prefetcher follows; panel by panel, every row would
         * be a new page (and a cache miss) when B is wide. */
        for (int64_t p0 = 0; p0 < kc; p0 += 8) {
            const int pn = kc - p0 < 8 ? (int)(kc - p0) : 8;
            for (int64_t q = 0; q < full; q++) {
                const TMPL_T *b = B + p0 * rsb + q * TMPL_NR;
                TMPL_T *o = out + q * TMPL_NR * kc + p0 * TMPL_NR;
                for (int pp = 0; pp < pn; pp++)
                    _Pragma("GCC unroll 8") for (int v = 0; v < TMPL_NV; v++)
                        TMPL_STORE(o + pp * TMPL_NR + v * TMPL_VL,
                                   TMPL_LOAD(b + pp * rsb + v * TMPL_VL));
            }
        }
        if (full * TMPL_NR < nc) { /* last panel, zero-padded */
            const int cols = (int)(nc - full * TMPL_NR);
            const TMPL_T *b = B + full * TMPL_NR;
            TMPL_T *o = out + full * TMPL_NR * kc;
            for (int64_t p = 0; p < kc; p++)
                for (int j = 0; j < TMPL_NR; j++)
                    o[p * TMPL_NR + j] = j < cols ? b[p * rsb + j] : (TMPL_T)0;
        }
        return;
    }
    /* op(B) = B^T of a row-major [n,k]: column j of a panel is contiguous along p in
     * memory; read it sequentially, scatter into the panel (small enough to stay in
     * L1 while it is written). */
    for (int64_t j0 = 0; j0 < nc; j0 += TMPL_NR, out += (int64_t)TMPL_NR * kc) {
        const int cols = nc - j0 < TMPL_NR ? (int)(nc - j0) : TMPL_NR;
        const TMPL_T *b = B + j0 * csb;
#ifdef TMPL_PACK_B_COLS
        if (cols == TMPL_NR) {
            TMPL_PACK_B_COLS(kc, b, csb, out);
            continue;
        }
#endif
        for (int j = 0; j < TMPL_NR; j++) {
            if (j < cols) {
                const TMPL_T *col = b + j * csb;
                for (int64_t p = 0; p < kc; p++) out[p * TMPL_NR + j] = col[p];
            } else {
                for (int64_t p = 0; p < kc; p++) out[p * TMPL_NR + j] = (TMPL_T)0;
            }
        }
    }
}

/* One tile of the direct kernel: `rows` (a compile-time constant after inlining) rows
 * of C by NR columns; A read through its strides (in place, or a packed panel with
 * rsa = 1, csa = MR), B through rows ldb apart. Register layout as in the
 * microkernel, with only the first `rows` rows of accumulators live. With `pack`
 * (also a constant), B is the caller's own op(B) and each row, once loaded, is also
 * stored to bpk[p*NR..]: the tile packs the slice that the later tiles read, and
 * the copy overlaps with its multiply-adds instead of running before them. */
TMPL_TARGET static inline __attribute__((always_inline)) void
TMPL_NAME(tgi_direct_tile_)(const int rows, const int pack, int64_t k, const TMPL_T *A,
                            int64_t rsa, int64_t csa, const TMPL_T *B, int64_t ldb,
                            TMPL_T *bpk, int add, TMPL_T *c, int64_t ldc, int nr)
{
    TMPL_V acc[TMPL_MR][TMPL_NV];
    const TMPL_T *ar[TMPL_MR];
    _Pragma("GCC unroll 16") for (int i = 0; i < TMPL_MR; i++) {
        ar[i] = A + (i < rows ? i : 0) * rsa;
        _Pragma("GCC unroll 8") for (int v = 0; v < TMPL_NV; v++) acc[i][v] = TMPL_ZERO();
    }
    for (int64_t p = 0; p < k; p++) {
        TMPL_V bb[TMPL_NV];
        const TMPL_T *brow = B + p * ldb;
        const int64_t off = p * csa;
        _Pragma("GCC unroll 8") for (int v = 0; v < TMPL_NV; v++)
            bb[v] = TMPL_LOAD(brow + v * TMPL_VL);
        if (pack) {
            TMPL_PREFETCH_AHEAD(brow, ldb);
            _Pragma("GCC unroll 8") for (int v = 0; v < TMPL_NV; v++)
                TMPL_STORE(bpk + p * TMPL_NR + v * TMPL_VL, bb[v]);
        }
        _Pragma("GCC unroll 16") for (int i = 0; i < TMPL_MR; i++) {
            if (i < rows) {
                TMPL_V aa = TMPL_BCAST(ar[i] + off);
                _Pragma("GCC unroll 8") for (int v = 0; v < TMPL_NV; v++)
                    acc[i][v] = TMPL_FMA(aa, bb[v], acc[i][v]);
            }
        }
    }
    TMPL_STORE_TILE(acc, c, ldc, add, rows, nr);
}

/* The direct kernel over m rows of one column panel: full MR-row tiles, then the
 * remaining rows in one tile of 9-11 rows (when MR = 12) or in tiles of 8 (when
 * MR > 8), 4, 2 and 1 rows. With bpk (and
 * m >= MR), B is the caller's op(B) and the first tile packs it into bpk for the
 * others (see gemm_kern.h). */
TMPL_TARGET static void TMPL_NAME(tgi_direct_)(int64_t m, int64_t k, const void *Av,
                                                int64_t rsa, int64_t csa, const void *Bv,
                                                int64_t ldb, void *bpkv, int add, void *Cv,
                                                int64_t ldc, int nr)
{
    const TMPL_T *A = (const TMPL_T *)Av;
    const TMPL_T *B = (const TMPL_T *)Bv;
    TMPL_T *C = (TMPL_T *)Cv;
    int64_t i = 0;
    if (bpkv && m >= TMPL_MR) {
        TMPL_T *bpk = (TMPL_T *)bpkv;
        TMPL_NAME(tgi_direct_tile_)(TMPL_MR, 1, k, A, rsa, csa, B, ldb, bpk, add, C, ldc, nr);
        B = bpk;
        ldb = TMPL_NR;
        i = TMPL_MR;
    }
    for (; i + TMPL_MR <= m; i += TMPL_MR)
        TMPL_NAME(tgi_direct_tile_)(TMPL_MR, 0, k, A + i * rsa, rsa, csa, B, ldb, NULL, add,
                                    C + i * ldc, ldc, nr);
#if TMPL_MR == 12
    /* 9-11 rows left (C^T of a product with n = 10, gemm.c): one tile, not 8 + 2 + 1
     * (a 2-row tile has too few accumulators to hide the FMA latency) */
    if (m - i > 8) {
        if (m - i == 9)
            TMPL_NAME(tgi_direct_tile_)(9, 0, k, A + i * rsa, rsa, csa, B, ldb, NULL, add,
                                        C + i * ldc, ldc, nr);
        else if (m - i == 10)
            TMPL_NAME(tgi_direct_tile_)(10, 0, k, A + i * rsa, rsa, csa, B, ldb, NULL, add,
                                        C + i * ldc, ldc, nr);
        else
            TMPL_NAME(tgi_direct_tile_)(11, 0, k, A + i * rsa, rsa, csa, B, ldb, NULL, add,
                                        C + i * ldc, ldc, nr);
        return;
    }
#endif
#if TMPL_MR > 8
    for (; i + 8 <= m; i += 8)
        TMPL_NAME(tgi_direct_tile_)(8, 0, k, A + i * rsa, rsa, csa, B, ldb, NULL, add,
                                    C + i * ldc, ldc, nr);
#endif
#if TMPL_MR > 4
    for (; i + 4 <= m; i += 4)
        TMPL_NAME(tgi_direct_tile_)(4, 0, k, A + i * rsa, rsa, csa, B, ldb, NULL, add,
                                    C + i * ldc, ldc, nr);
#endif
    for (; i + 2 <= m; i += 2)
        TMPL_NAME(tgi_direct_tile_)(2, 0, k, A + i * rsa, rsa, csa, B, ldb, NULL, add,
                                    C + i * ldc, ldc, nr);
    for (; i < m; i++)
        TMPL_NAME(tgi_direct_tile_)(1, 0, k, A + i * rsa, rsa, csa, B, ldb, NULL, add,
                                    C + i * ldc, ldc, nr);
}

#undef TMPL_STORE_TILE
#undef TMPL_DIRECT_PF
#undef TMPL_PREFETCH_AHEAD
#undef TMPL_NR
#undef TMPL_NAME
#undef TMPL_CAT
#undef TMPL_CAT2
#undef TMPL_SFX
#undef TMPL_MR
#undef TMPL_NV
#ifndef TMPL_KEEP_VOCAB /* else the includer instantiates the same type again */
#undef TMPL_T
#undef TMPL_TARGET
#undef TMPL_V
#undef TMPL_VL
#undef TMPL_ZERO
#undef TMPL_LOAD
#undef TMPL_STORE
#undef TMPL_BCAST
#undef TMPL_FMA
#undef TMPL_ADD
#undef TMPL_PACK_A_ROWS
#undef TMPL_PACK_B_COLS
#endif
