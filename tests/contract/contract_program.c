/* SPDX-License-Identifier: MIT */
/* A program written only against the public API contract of DESIGN.md: it must
 * compile and link against the built (shared) library with nothing else. It
 * fits y = 3x - 1 with one parameter pair, checks a gradient, and saves and
 * loads a checkpoint. Exit status 0 means every step behaved as the contract
 * says. */
#include <math.h>
#include <stdio.h>
#include <tapegrad.h>

static tg_tensor *square_sum(tg_ctx *ctx, tg_tensor *const *in, void *user) {
    (void)user;
    return tg_sum(ctx, tg_mul(ctx, in[0], in[0]));
}

int main(void) {
    tg_ctx *ctx = tg_ctx_new(42);
    if (!ctx) return 1;
    int64_t one[1] = {1}, xs[2] = {4, 1};
    tg_tensor *w = tg_param(ctx, "w", TG_F32, 2, (int64_t[]){1, 1});
    tg_tensor *b = tg_param(ctx, "b", TG_F32, 1, one);
    float xv[4] = {0, 1, 2, 3}, yv[4] = {-1, 2, 5, 8};
    double loss = 0;
    for (int step = 0; step < 500; step++) {
        tg_tensor *x = tg_from(ctx, TG_F32, 2, xs, xv);
        tg_tensor *y = tg_from(ctx, TG_F32, 2, xs, yv);
        tg_tensor *l = tg_mse(ctx, tg_add_bias(ctx, tg_matmul(ctx, x, w), b), y);
        tg_zero_grad(ctx);
        tg_backward(ctx, l);
        if (!tg_ok(ctx)) {
            fprintf(stderr, "error: %s\n", tg_errmsg(ctx));
            return 1;
        }
        loss = tg_item(l);
        float *wd = tg_data(w), *bd = tg_data(b);
        wd[0] -= 0.05f * ((float *)tg_grad(w))[0];
        bd[0] -= 0.05f * ((float *)tg_grad(b))[0];
        tg_reset(ctx);
    }
    float wv = ((float *)tg_data(w))[0], bv = ((float *)tg_data(b))[0];
    printf("w = %.4f, b = %.4f, loss = %.2e\n", wv, bv, loss);
    if (fabsf(wv - 3) > 1e-2f || fabsf(bv + 1) > 1e-2f) return 1;

    /* a wrong shape is an error, not a crash, and NULL flows through */
    tg_tensor *bad = tg_matmul(ctx, tg_new(ctx, TG_F32, 2, (int64_t[]){4, 3}),
                               tg_new(ctx, TG_F32, 2, (int64_t[]){2, 5}));
    if (bad || tg_ok(ctx) || tg_relu(ctx, bad)) return 1;
    printf("expected error: %s\n", tg_errmsg(ctx));
    tg_clear_error(ctx);

    tg_tensor *x64 = tg_from(ctx, TG_F64, 1, (int64_t[]){3}, (double[]){0.5, -1.5, 2.0});
    if (!tg_gradcheck(ctx, square_sum, NULL, &x64, 1, NULL)) {
        fprintf(stderr, "gradcheck failed: %s\n", tg_errmsg(ctx));
        return 1;
    }
    const char *path = "contract_program.safetensors";
    uint64_t h = tg_hash(w);
    if (tg_save(ctx, path) != 0) return 1;
    ((float *)tg_data(w))[0] = 0;
    if (tg_load(ctx, path) != 0 || tg_hash(w) != h) return 1;
    remove(path);
    tg_ctx_free(ctx);
    puts("contract program: ok");
    return 0;
}
