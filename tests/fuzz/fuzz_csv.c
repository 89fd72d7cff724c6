/* SPDX-License-Identifier: MIT */
/* fuzz_csv.c: tg_load_csv on arbitrary bytes, with options taken from the
 * first byte (delimiter, header mode, what the y columns are). */
#include "fuzz_common.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (size < 1) return 0;
    const char *path = fuzz_path("data.csv");
    fuzz_write(path, data + 1, size - 1);
    tg_csv_opts o = tg_csv_defaults();
    uint8_t k = data[0];
    static const char delims[] = {',', ';', '\t', ' '};
    o.delimiter = delims[k & 3];
    o.header = (tg_csv_header)((k >> 2) % 3);
    o.y_kind = (tg_csv_y)((k >> 4) % 3);
    o.n_y = 1 + ((k >> 6) & 1);
    o.y_col = (k & 0x80) ? 0 : -1;
    tg_ctx *ctx = tg_ctx_new(1);
    tg_dataset *ds = tg_load_csv(ctx, path, &o);
    if (!ds) fuzz_check_error(ctx, "tg_load_csv");
    else if (!tg_ok(ctx) || ds->n < 1 || ds->n_features < 1) abort();
    tg_dataset_free(ds);
    tg_ctx_free(ctx);
    return 0;
}
