/* SPDX-License-Identifier: MIT */
/* gemm_kern.h: what a GEMM kernel set provides to the driver in gemm.c.
 * Internal to the gemm*.c files. One tgi_gemm_impl per instruction set; the driver
 * is type-agnostic (it moves void pointers by elem bytes), so a kernel set gives
 * one tgi_gemm_kern for float and one for double. */
#ifndef TG_GEMM_KERN_H
#define TG_GEMM_KERN_H

#include <stddef.h>
#include <stdint.h>

/* Microkernel: the MR x NR tile  C = (add ? C : 0) + a b, where
 *   a is a packed A micro-panel: kc steps of MR values (column p of the tile's rows),
 *   b is a packed B micro-panel: kc steps of NR values (row p of the tile's columns).
 * Only the top-left mr x nr corner of the tile is written (edge tiles); the packed
 * panels are zero-padded to full MR / NR. kc >= 1. */
typedef void (*tgi_gemm_ukr_fn)(int64_t kc, const void *a, const void *b, void *c,
                                int64_t ldc, int add, int mr, int nr);

/* Pack the mc x kc block of op(A) whose element (i,p) is A[i*rsa + p*csa] into
 * ceil(mc/MR) micro-panels of MR x kc (zero rows past mc). One of rsa, csa is 1. */
typedef void (*tgi_gemm_pack_a_fn)(int64_t mc, int64_t kc, const void *A, int64_t rsa,
                                   int64_t csa, void *out);
/* Pack the kc x nc block of op(B) whose element (p,j) is B[p*rsb + j*csb] into
 * ceil(nc/NR) micro-panels of kc x NR (zero columns past nc). One of rsb, csb is 1. */
typedef void (*tgi_gemm_pack_b_fn)(int64_t kc, int64_t nc, const void *B, int64_t rsb,
                                   int64_t csb, void *out);

/* Direct kernel (A unpacked): for one column panel of at most NR columns,
 * C[0:m, 0:nr] = (add ? C : 0) + A B with A(i,p) = A[i*rsa + p*csa] and
 * B(p,j) = B[p*ldb + j]. All NR columns of every B row must be readable (the driver
 * passes a packed, zero-padded kc x NR slice, or with bpk a full panel of a
 * row-major op(B)); only nr columns of C are written. k >= 1. Any m: MR-row tiles,
 * then one 9-11-row tile (if MR = 12) or 8 (if MR > 8), 4, 2, 1-row tiles. bpk: NULL, or (when m >= MR) a k x NR
 * buffer that the first tile fills with the rows of B it reads, so that the other
 * tiles read them from there (packing B inside the first tile's multiply-adds).
 * Each element is summed exactly as by the microkernel, so the two can share a
 * product. */
typedef void (*tgi_gemm_direct_fn)(int64_t m, int64_t k, const void *A, int64_t rsa,
                                   int64_t csa, const void *B, int64_t ldb, void *bpk, int add,
                                   void *C, int64_t ldc, int nr);

/* Microkernel that also packs A: a full MR x NR tile as tgi_gemm_ukr_fn with
 * mr = MR, where op(A) = A^T (MR contiguous values per k step, at asrc + p*csa) is
 * read in place and copied into the micro-panel apk on the way (kc x MR, the layout
 * tgi_gemm_pack_a_fn writes), for the tiles of the next column panels to read. */
typedef void (*tgi_gemm_ukr_pa_fn)(int64_t kc, const void *asrc, int64_t csa, void *apk,
                                   const void *b, void *c, int64_t ldc, int add, int nr);

typedef struct tgi_gemm_kern {
    int mr, nr;          /* register tile (rows x columns of C) */
    int mc, kc, nc;      /* cache blocks: packed A block mc x kc (L3), packed B block
                          * kc x nc (L2); one MR x kc micro-panel of A sits in L1 */
    tgi_gemm_ukr_fn ukr;
    tgi_gemm_pack_a_fn pack_a;
    tgi_gemm_pack_b_fn pack_b;
    tgi_gemm_direct_fn direct;
    tgi_gemm_ukr_pa_fn ukr_pa;
    /* the set for the blocked path, when it differs (a wider tile that reads fewer
     * values per multiply-add but wastes more on thin shapes), or NULL: this one */
    const struct tgi_gemm_kern *blocked;
    /* the set for products with at most its NR columns (both paths), or NULL */
    const struct tgi_gemm_kern *thin;
} tgi_gemm_kern;

typedef struct tgi_gemm_impl {
    const char *name;
    tgi_gemm_kern f32, f64;
} tgi_gemm_impl;

extern const tgi_gemm_impl tgi_gemm_impl_generic;
#if defined(__x86_64__)
extern const tgi_gemm_impl tgi_gemm_impl_avx2;
extern const tgi_gemm_impl tgi_gemm_impl_avx512;
#endif

#endif /* TG_GEMM_KERN_H */
