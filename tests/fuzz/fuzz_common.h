/* SPDX-License-Identifier: MIT */
/* fuzz_common.h: what the fuzz targets share. Each target writes the input to
 * a file (the loaders read paths) in a private directory, runs the loader on
 * a fresh context, and checks the contract: a result, or an error whose
 * message names the function; nothing leaks (tg_ctx_free and LeakSanitizer). */
#ifndef TG_FUZZ_COMMON_H
#define TG_FUZZ_COMMON_H

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "tapegrad.h"

/* A file path private to this process, in /dev/shm when there is one. */
static inline const char *fuzz_path(const char *name) {
    static char path[256];
    if (!path[0]) {
        const char *d = access("/dev/shm", W_OK) == 0 ? "/dev/shm" : "/tmp";
        snprintf(path, sizeof path, "%s/tg_fuzz_%ld_%s", d, (long)getpid(), name);
    }
    return path;
}

static inline void fuzz_write(const char *path, const uint8_t *data, size_t size) {
    FILE *f = fopen(path, "wb");
    if (!f) abort();
    if (size && fwrite(data, 1, size, f) != size) abort();
    if (fclose(f) != 0) abort();
}

/* An error must name the function that failed. */
static inline void fuzz_check_error(tg_ctx *ctx, const char *fn) {
    if (tg_ok(ctx)) return;
    if (strncmp(tg_errmsg(ctx), fn, strlen(fn)) != 0) {
        fprintf(stderr, "error without the function's name (%s): %s\n", fn, tg_errmsg(ctx));
        abort();
    }
}

#endif
