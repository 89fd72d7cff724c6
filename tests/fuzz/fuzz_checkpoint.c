/* SPDX-License-Identifier: MIT */
/* fuzz_checkpoint.c: tg_load and tg_checkpoint_meta on arbitrary bytes. The
 * context has parameters whose names and shapes the seed corpus uses, so
 * inputs that get through validation also reach the copy into parameters. A
 * failed load must leave the parameters as they were. */
#include "fuzz_common.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    const char *path = fuzz_path("ckpt.safetensors");
    fuzz_write(path, data, size);
    tg_ctx *ctx = tg_ctx_new(1);
    tg_tensor *w = tg_param(ctx, "layer.weight", TG_F32, 2, (int64_t[]){3, 2});
    tg_tensor *b = tg_param(ctx, "layer.bias", TG_F32, 1, (int64_t[]){3});
    tg_param(ctx, "d", TG_F64, 1, (int64_t[]){2});
    tg_fill(w, 0.5);
    tg_fill(b, -0.5);
    uint64_t hw = tg_hash(w), hb = tg_hash(b);
    for (int flags = 0; flags < 4; flags++) {
        int rc = tg_load_ex(ctx, path, flags);
        if (rc != 0) {
            fuzz_check_error(ctx, "tg_load");
            if (tg_hash(w) != hw || tg_hash(b) != hb) abort(); /* all or nothing */
            tg_clear_error(ctx);
        } else if (!tg_ok(ctx)) {
            abort();
        }
        hw = tg_hash(w);
        hb = tg_hash(b);
    }
    char *v = tg_checkpoint_meta(ctx, path, "format");
    if (!v) fuzz_check_error(ctx, "tg_checkpoint_meta");
    free(v);
    tg_ctx_free(ctx);
    return 0;
}
