/* SPDX-License-Identifier: MIT */
/* fuzz_npy.c: tg_load_npy on arbitrary bytes. A load gives a tensor whose
 * data the file holds exactly (every element read here, so ASan sees any
 * overrun), or an error naming tg_load_npy. A loaded tensor is saved again
 * with tg_save_npy and reloaded: the same dtype, shape and bytes. */
#include "fuzz_common.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    const char *path = fuzz_path("t.npy");
    char again[300];
    snprintf(again, sizeof again, "%s.again.npy", path);
    fuzz_write(path, data, size);
    tg_ctx *ctx = tg_ctx_new(1);
    tg_tensor *t = tg_load_npy(ctx, path);
    if (!t) {
        fuzz_check_error(ctx, "tg_load_npy");
    } else {
        if (!tg_ok(ctx)) abort();
        size_t bytes = (size_t)tg_numel(t) * tg_dtype_size(tg_dtype_of(t));
        if (bytes > size) abort(); /* more data than the file holds */
        volatile unsigned char acc = 0;
        for (size_t i = 0; i < bytes; i++) acc ^= ((const unsigned char *)tg_data(t))[i];
        (void)acc;
        if (tg_save_npy(ctx, t, again) != 0) {
            fuzz_check_error(ctx, "tg_save_npy");
        } else {
            tg_tensor *u = tg_load_npy(ctx, again);
            if (!u || tg_dtype_of(u) != tg_dtype_of(t) || tg_ndim(u) != tg_ndim(t) ||
                memcmp(tg_shape(u), tg_shape(t), (size_t)tg_ndim(t) * sizeof(int64_t)) != 0 ||
                (bytes && memcmp(tg_data(u), tg_data(t), bytes) != 0)) {
                fprintf(stderr, "tg_save_npy then tg_load_npy does not give the tensor back: %s\n",
                        tg_errmsg(ctx));
                abort();
            }
        }
        unlink(again);
    }
    tg_ctx_free(ctx);
    return 0;
}
