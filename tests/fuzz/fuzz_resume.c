/* SPDX-License-Identifier: MIT */
/* fuzz_resume.c: tg_resume_load on arbitrary bytes, into a live Adam
 * optimiser over two parameters and a batcher over 10 samples in batches of
 * 4 (the setup the seeds were saved from). The first byte picks options: bit
 * 0 replaces the last 8 bytes by the XXH3-64 of the rest (the checksum is no
 * secret: anyone can make a file that passes it, so the validation behind it
 * must hold by itself), bit 1 loads no optimiser state, bit 2 no batcher
 * state. The contract: an error naming tg_resume_load with nothing changed,
 * or a state with which a whole epoch of batches and an optimiser step run
 * (ASan checks every index the restored order makes). */
#define XXH_INLINE_ALL
#include <xxhash.h>

#include "fuzz_common.h"

static uint64_t state_hash(tg_ctx *ctx, const tg_batcher *b) {
    uint64_t h = (uint64_t)b->pos * 31 + (uint64_t)b->batch * 7 + (uint64_t)b->epoch * 3 +
                 (uint64_t)b->fresh;
    for (int64_t i = 0; i < b->n; i++) h = h * 31 + (uint64_t)b->order[i];
    for (int i = 0; i < tg_param_count(ctx); i++) h = h * 31 + tg_hash(tg_param_at(ctx, i));
    return h;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (size < 1) return 0;
    const unsigned mode = data[0];
    data++, size--;
    const char *path = fuzz_path("state.resume");
    FILE *f = fopen(path, "wb");
    if (!f) abort();
    if (size && fwrite(data, 1, size, f) != size) abort();
    if ((mode & 1) && size >= 8) { /* a valid checksum over what precedes it */
        uint64_t sum = XXH3_64bits(data, size - 8);
        unsigned char le[8];
        for (int i = 0; i < 8; i++) le[i] = (unsigned char)(sum >> (8 * i));
        if (fseek(f, (long)(size - 8), SEEK_SET) != 0 || fwrite(le, 1, 8, f) != 8) abort();
    }
    if (fclose(f) != 0) abort();

    tg_ctx *ctx = tg_ctx_new(1);
    tg_tensor *w = tg_param(ctx, "w", TG_F32, 2, (int64_t[]){2, 3});
    tg_tensor *b = tg_param(ctx, "b", TG_F64, 1, (int64_t[]){3});
    tg_fill(w, 0.5);
    tg_fill(b, -0.25);
    tg_optim_opts o = tg_optim_defaults(TG_OPT_ADAM);
    tg_optim *opt = tg_optim_new(ctx, &o, NULL, 0);
    tg_dataset *ds = tg_dataset_new(ctx, 10, 2, 0);
    tg_batcher bt = {0};
    if (!opt || !ds || tg_batcher_init(&bt, ctx, ds, 4, TG_BATCH_SHUFFLE) != 0) abort();
    tg_optim *o_arg = (mode & 2) ? NULL : opt;
    tg_batcher *b_arg = (mode & 4) ? NULL : &bt;
    uint64_t before = state_hash(ctx, &bt);
    int64_t epoch = -7;
    if (tg_resume_load(ctx, path, o_arg, b_arg, &epoch) != 0) {
        fuzz_check_error(ctx, "tg_resume_load");
        if (state_hash(ctx, &bt) != before || epoch != -7) {
            fprintf(stderr, "a failing tg_resume_load changed the state\n");
            abort();
        }
    } else {
        if (!tg_ok(ctx)) abort();
        /* the restored state must be usable: an epoch and a bit of batches */
        tg_tensor *x, *y;
        for (int i = 0; i < 6; i++) {
            int r = tg_batcher_next(&bt, &x, &y);
            if (r < 0) {
                fuzz_check_error(ctx, "tg_batcher_next");
                break;
            }
        }
        tg_clear_error(ctx);
        float *gw = tg_grad_acc(w);
        double *gb = tg_grad_acc(b);
        if (!gw || !gb) abort();
        for (int i = 0; i < 6; i++) gw[i] = 0.125f;
        for (int i = 0; i < 3; i++) gb[i] = -0.5;
        if (tg_optim_step(opt) != 0) fuzz_check_error(ctx, "tg_optim_step");
    }
    tg_batcher_free(&bt);
    tg_dataset_free(ds);
    tg_optim_free(opt);
    tg_ctx_free(ctx);
    return 0;
}
