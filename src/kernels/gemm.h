/* SPDX-License-Identifier: MIT */
/* gemm.h: the engine's matrix multiply. Internal, not part of the public API.
 *
 * Row-major throughout.
 *   C[m,n] (row stride ldc) = (accumulate ? C : 0) + op(A) op(B)
 *   ta == 0: A is [m,k], row stride lda;  ta == 1: A is stored as [k,m] (we use A^T), row stride lda
 *   tb == 0: B is [k,n], row stride ldb;  tb == 1: B is stored as [n,k] (we use B^T), row stride ldb
 *   k == 0 is allowed (C becomes 0 or is left as it is). m or n == 0: nothing to do.
 *   Returns 0, or -1 if the workspace could not grow (out of memory): then C is untouched.
 *
 * Results are bit-identical for any nthreads: threads split only the output, and every
 * element of C is reduced over k in the same order whatever the thread count.
 * Design notes, blocking parameters and measured figures: docs/gemm.md. */
#ifndef TG_GEMM_H
#define TG_GEMM_H

#include <stddef.h>
#include <stdint.h>

/* Packing buffers owned by one context; grows, never shrinks. Used by one caller
 * thread at a time (inside one call it may be split between the threads of the
 * pool it is given, src/kernels/pool.h). */
typedef struct tg_gemm_ws tg_gemm_ws;
struct tgi_pool;

/* Lua-style allocator: (ud, NULL, 0, n) allocates, (ud, p, osize, 0) frees. */
typedef void *(*tgi_alloc_fn)(void *ud, void *ptr, size_t osize, size_t nsize);

/* A new, empty workspace (NULL if out of memory); all memory goes through alloc. */
tg_gemm_ws *tgi_gemm_ws_new(tgi_alloc_fn alloc, void *ud);
/* Frees the workspace and its buffers; NULL is a no-op. */
void tgi_gemm_ws_free(tg_gemm_ws *ws);
/* The threads a call with nthreads > 1 runs on (not owned; NULL, the default:
 * every call runs in the caller's thread alone). */
void tgi_gemm_ws_set_pool(tg_gemm_ws *ws, struct tgi_pool *pool);

int tgi_gemm_f32(tg_gemm_ws *ws, int nthreads, int ta, int tb, int64_t m, int64_t n, int64_t k,
                 const float *A, int64_t lda, const float *B, int64_t ldb,
                 int accumulate, float *C, int64_t ldc);
int tgi_gemm_f64(tg_gemm_ws *ws, int nthreads, int ta, int tb, int64_t m, int64_t n, int64_t k,
                 const double *A, int64_t lda, const double *B, int64_t ldb,
                 int accumulate, double *C, int64_t ldc);

/* "avx512", "avx2" or "generic": the kernel set that runs on this CPU (after any force);
 * "cblas" in a build with TG_USE_CBLAS while no kernel set is forced. */
const char *tgi_gemm_kernel_name(void);
/* For tests and benchmarks: "generic", "avx2", "avx512", or NULL for the automatic
 * choice. A name this CPU (or this build) cannot run is ignored. Meant to be set
 * while no gemm call is running. */
void tgi_gemm_force_kernel(const char *name);
/* For tests: every `every`-th chunk that packs a threaded call's shared operand
 * leaves it unwritten (0: none), so that the ranges pack their own copies. */
void tgi_gemm_test_unpacked(int every);

#endif /* TG_GEMM_H */
