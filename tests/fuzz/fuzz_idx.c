/* SPDX-License-Identifier: MIT */
/* fuzz_idx.c: tg_load_idx on arbitrary bytes, as given (the corpus holds plain
 * and gzip'd files) and gzip'd by the target, alone and with a labels file
 * made of the same bytes. */
#include <zlib.h>

#include "fuzz_common.h"

static void load(const char *images, const char *labels) {
    tg_ctx *ctx = tg_ctx_new(1);
    tg_dataset *ds = tg_load_idx(ctx, images, labels);
    if (!ds) fuzz_check_error(ctx, "tg_load_idx");
    else if (!tg_ok(ctx) || ds->n < 1 || ds->n_features < 1) abort();
    tg_dataset_free(ds);
    tg_ctx_free(ctx);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    const char *plain = fuzz_path("idx");
    char gz[300];
    snprintf(gz, sizeof gz, "%s.gz", plain);
    fuzz_write(plain, data, size);
    load(plain, NULL);
    load(plain, plain);
    /* the same bytes gzip'd: the stream path with valid compression */
    gzFile g = gzopen(gz, "wb1");
    if (!g) abort();
    if (size && gzwrite(g, data, (unsigned)size) != (int)size) abort();
    gzclose(g);
    load(gz, NULL);
    load(gz, plain);
    return 0;
}
