/* SPDX-License-Identifier: MIT */
/* tsan_pool_gemm.c: the library's thread pool and the threaded GEMM under
 * ThreadSanitizer. Two threads of one pool share a call's packed operand through
 * release/acquire flags (src/kernels/gemm.c, "Shared packing"); a range that finds
 * a block unwritten packs its own copy. Here: products in both split directions
 * and all three forms, f32 and f64, with every pack chunk written, and with every
 * second one left unwritten (tgi_gemm_test_unpacked), each on 2 threads compared
 * bit for bit with 1 thread; then a context with tg_set_threads(ctx, 2) trains a
 * 256-wide MLP a few steps (GEMMs, element-wise jobs and the optimiser on the
 * pool). Exits 0 when every result matched and TSan reported nothing (halt_on_error). */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "gemm.h"
#include "internal.h" /* tgi_default_alloc */
#include "pool.h"
#include "tapegrad.h"

/* C = op(A) op(B) on 1 and on 2 threads; 1 when the bits agree. */
static int same_bits(tg_gemm_ws *ws, int dbl, int ta, int tb, int64_t m, int64_t n, int64_t k)
{
    const size_t es = dbl ? sizeof(double) : sizeof(float);
    unsigned char *A = malloc((size_t)(m * k) * es), *B = malloc((size_t)(k * n) * es);
    unsigned char *C1 = calloc((size_t)(m * n), es), *C2 = calloc((size_t)(m * n), es);
    if (!A || !B || !C1 || !C2) return 0;
    uint64_t s = 0x9e3779b97f4a7c15u;
    for (int64_t i = 0; i < m * k + k * n; i++) {
        s = s * 6364136223846793005u + 1442695040888963407u;
        const double v = (double)(s >> 11) / 9007199254740992.0 - 0.5;
        unsigned char *dst = i < m * k ? A + (size_t)i * es : B + (size_t)(i - m * k) * es;
        if (dbl)
            memcpy(dst, &v, es);
        else {
            const float f = (float)v;
            memcpy(dst, &f, es);
        }
    }
    const int64_t lda = ta ? m : k, ldb = tb ? k : n;
    int rc = 0;
    for (int nt = 1; nt <= 2; nt++)
        rc |= dbl ? tgi_gemm_f64(ws, nt, ta, tb, m, n, k, (double *)A, lda, (double *)B, ldb, 0,
                                 (double *)(nt == 1 ? C1 : C2), n)
                  : tgi_gemm_f32(ws, nt, ta, tb, m, n, k, (float *)A, lda, (float *)B, ldb, 0,
                                 (float *)(nt == 1 ? C1 : C2), n);
    const int ok = rc == 0 && memcmp(C1, C2, (size_t)(m * n) * es) == 0;
    if (!ok)
        fprintf(stderr, "%s ta %d tb %d %lldx%lldx%lld: 2 threads differ from 1 (rc %d)\n",
                dbl ? "f64" : "f32", ta, tb, (long long)m, (long long)n, (long long)k, rc);
    free(A), free(B), free(C1), free(C2);
    return ok;
}

/* A few steps of a 64-256-256-10 ReLU MLP on 2 threads; 1 when they ran. */
static int train_two_threads(void)
{
    tg_ctx *ctx = tg_ctx_new(3);
    if (!ctx || tg_set_threads(ctx, 2) != 0) return 0;
    const int64_t dims[] = {64, 256, 256, 10};
    tg_tensor *w[3], *b[3];
    for (int l = 0; l < 3; l++) {
        char name[8];
        snprintf(name, sizeof name, "w%d", l);
        w[l] = tg_param(ctx, name, TG_F32, 2, (int64_t[]){dims[l], dims[l + 1]});
        snprintf(name, sizeof name, "b%d", l);
        b[l] = tg_param(ctx, name, TG_F32, 1, (int64_t[]){dims[l + 1]});
        tg_fill_uniform(ctx, w[l], -0.1, 0.1);
    }
    tg_optim_opts o = tg_optim_defaults(TG_OPT_ADAM);
    tg_optim *opt = tg_optim_new(ctx, &o, NULL, 0);
    int32_t labels[256];
    for (int i = 0; i < 256; i++) labels[i] = i % 10;
    for (int step = 0; step < 4 && opt; step++) {
        tg_tensor *h = tg_new(ctx, TG_F32, 2, (int64_t[]){256, 64});
        tg_fill_uniform(ctx, h, -1, 1);
        for (int l = 0; l < 3; l++) {
            h = tg_add_bias(ctx, tg_matmul(ctx, h, w[l]), b[l]);
            if (l < 2) h = tg_relu(ctx, h);
        }
        tg_tensor *y = tg_from(ctx, TG_I32, 1, (int64_t[]){256}, labels);
        tg_tensor *loss = tg_cross_entropy(ctx, h, y);
        tg_zero_grad(ctx);
        tg_backward(ctx, loss);
        tg_optim_step(opt);
        tg_reset(ctx);
    }
    const int ok = opt && tg_ok(ctx);
    if (!ok) fprintf(stderr, "training on 2 threads: %s\n", tg_errmsg(ctx));
    tg_optim_free(opt);
    tg_ctx_free(ctx);
    return ok;
}

int main(void)
{
    tg_gemm_ws *ws = tgi_gemm_ws_new(tgi_default_alloc, NULL);
    tgi_pool *pool = tgi_pool_new(tgi_default_alloc, NULL);
    if (!ws || !pool) return 1;
    tgi_gemm_ws_set_pool(ws, pool);
    /* m x n x k: ranges of columns (op(A) shared) and of rows (op(B) shared), k in
     * two blocks, ragged edges (the shapes of test_gemm_blocking's shared-packing test) */
    static const int64_t shapes[][3] = {{40, 700, 531}, {700, 40, 531}, {450, 400, 301}};
    int ok = 1;
    for (int unpacked = 0; unpacked <= 2; unpacked += 2) {
        tgi_gemm_test_unpacked(unpacked);
        for (int dbl = 0; dbl < 2; dbl++)
            for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; s++)
                for (int f = 0; f < 3; f++) /* A B, A^T B, A B^T */
                    ok &= same_bits(ws, dbl, f == 1, f == 2, shapes[s][0], shapes[s][1],
                                    shapes[s][2]);
    }
    tgi_gemm_test_unpacked(0);
    tgi_gemm_ws_free(ws);
    tgi_pool_free(pool);
    ok &= train_two_threads();
    if (!ok) return 1;
    printf("pool and threaded GEMM under TSan: 2 threads gave 1 thread's bits\n");
    return 0;
}
