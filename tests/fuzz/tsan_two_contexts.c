/* SPDX-License-Identifier: MIT */
/* tsan_two_contexts.c: two contexts train on two threads at once (forward,
 * backward, an optimiser step, a save and a load each, on their own files;
 * then the second-round layers: a small CNN with batch norm, pooling and
 * dropout, an LSTM and a transformer block, a .npy and a resume file),
 * built with ThreadSanitizer: nothing in tapegrad is global, so nothing may
 * race. Exits 0 when both threads finished with the same parameters (same
 * seed, same work). */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "tapegrad.h"

typedef struct {
    int id;
    uint64_t hash;
    int ok;
} job;

/* The second-round layers: a few steps, then a .npy and a resume file.
 * Folds the layers' parameters into *hash; 1 ok. */
static int second_round(tg_ctx *ctx, int id, uint64_t *hash) {
    tg_conv conv;
    tg_batchnorm bn;
    tg_dense fc;
    tg_lstm lstm;
    tg_transformer_block blk;
    if (tg_conv_init(ctx, &conv, "conv", 1, 2, 3, 1, 1, 1, TG_F32) ||
        tg_batchnorm_init(ctx, &bn, "bn", 2, TG_F32) ||
        tg_dense_init(ctx, &fc, "fc", 8, 3, TG_F32, TG_INIT_XAVIER_UNIFORM) ||
        tg_lstm_init(ctx, &lstm, "lstm", 4, 3, 1, 1, TG_F32) ||
        tg_transformer_block_init(ctx, &blk, "blk.", 4, 2, 8, TG_F32))
        return 0;
    tg_optim_opts o = tg_optim_defaults(TG_OPT_ADAMW);
    tg_optim *opt = tg_optim_new(ctx, &o, NULL, 0);
    if (!opt) return 0;
    for (int step = 0; step < 5; step++) {
        tg_tensor *x = tg_new(ctx, TG_F32, 4, (int64_t[]){2, 1, 4, 4});
        tg_tensor *s = tg_new(ctx, TG_F32, 3, (int64_t[]){3, 2, 4});
        tg_fill_uniform(ctx, x, -1, 1);
        tg_fill_uniform(ctx, s, -1, 1);
        tg_tensor *h = tg_batchnorm_forward(ctx, &bn, tg_conv_forward(ctx, &conv, x));
        h = tg_dropout(ctx, tg_max_pool2d(ctx, h, 2, 2), 0.25, 1);
        h = tg_dense_forward(ctx, &fc, tg_reshape(ctx, h, 2, (int64_t[]){2, 8}), TG_ACT_RELU);
        tg_tensor *r = tg_lstm_forward(ctx, &lstm, s, NULL, NULL, NULL, NULL);
        tg_tensor *t = tg_transformer_block_forward(ctx, &blk, s, 1);
        tg_tensor *loss = tg_add(ctx, tg_add(ctx, tg_mean(ctx, h), tg_mean(ctx, r)), tg_mean(ctx, t));
        tg_zero_grad(ctx);
        tg_backward(ctx, loss);
        tg_optim_step(opt);
        tg_reset(ctx);
    }
    char npy[128], res[128];
    snprintf(npy, sizeof npy, "/tmp/tg_tsan_%ld_%d.npy", (long)getpid(), id);
    snprintf(res, sizeof res, "/tmp/tg_tsan_%ld_%d.resume", (long)getpid(), id);
    int ok = tg_ok(ctx) && tg_save_npy(ctx, conv.weight, npy) == 0 && tg_load_npy(ctx, npy) &&
             tg_resume_save(ctx, res, opt, NULL, 1) == 0 &&
             tg_resume_load(ctx, res, opt, NULL, NULL) == 0;
    unlink(npy);
    unlink(res);
    for (int i = 0; i < tg_param_count(ctx); i++) *hash = *hash * 31 + tg_hash(tg_param_at(ctx, i));
    tg_optim_free(opt);
    return ok;
}

static void *train(void *arg) {
    job *j = arg;
    tg_ctx *ctx = tg_ctx_new(7);
    tg_tensor *w = tg_param(ctx, "w", TG_F32, 2, (int64_t[]){8, 4});
    tg_tensor *b = tg_param(ctx, "b", TG_F32, 1, (int64_t[]){4});
    tg_fill_uniform(ctx, w, -0.5, 0.5);
    tg_optim_opts o = tg_optim_defaults(TG_OPT_ADAM);
    tg_optim *opt = tg_optim_new(ctx, &o, NULL, 0);
    for (int step = 0; step < 50; step++) {
        tg_tensor *x = tg_new(ctx, TG_F32, 2, (int64_t[]){16, 8});
        tg_fill_uniform(ctx, x, -1, 1);
        tg_tensor *y = tg_tanh(ctx, tg_add_bias(ctx, tg_matmul(ctx, x, w), b));
        tg_tensor *loss = tg_mean(ctx, tg_mul(ctx, y, y));
        tg_zero_grad(ctx);
        tg_backward(ctx, loss);
        tg_optim_step(opt);
        tg_reset(ctx);
    }
    char path[128];
    snprintf(path, sizeof path, "/tmp/tg_tsan_%ld_%d.safetensors", (long)getpid(), j->id);
    j->ok = tg_save(ctx, path) == 0 && tg_load(ctx, path) == 0 && tg_ok(ctx);
    if (!j->ok) fprintf(stderr, "thread %d: %s\n", j->id, tg_errmsg(ctx));
    unlink(path);
    j->hash = tg_hash(w);
    j->ok = j->ok && second_round(ctx, j->id, &j->hash);
    if (!j->ok) fprintf(stderr, "thread %d: %s\n", j->id, tg_errmsg(ctx));
    tg_optim_free(opt);
    tg_ctx_free(ctx);
    return NULL;
}

int main(void) {
    pthread_t t[2];
    job j[2] = {{0, 0, 0}, {1, 0, 0}};
    for (int i = 0; i < 2; i++) pthread_create(&t[i], NULL, train, &j[i]);
    for (int i = 0; i < 2; i++) pthread_join(t[i], NULL);
    if (!j[0].ok || !j[1].ok || j[0].hash != j[1].hash) {
        fprintf(stderr, "two contexts: ok %d %d, hashes %016llx %016llx\n", j[0].ok, j[1].ok,
                (unsigned long long)j[0].hash, (unsigned long long)j[1].hash);
        return 1;
    }
    printf("two contexts on two threads: same parameters %016llx\n", (unsigned long long)j[0].hash);
    return 0;
}
