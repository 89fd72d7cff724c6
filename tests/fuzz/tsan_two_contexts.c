/* tsan_two_contexts.c: two contexts train on two threads at once (forward,
 * backward, an optimiser step, a save and a load each, on their own files),
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
