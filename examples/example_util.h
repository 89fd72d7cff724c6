/* SPDX-License-Identifier: MIT */
/* examples/example_util.h: what several example programs need besides tapegrad:
 * clocks, number arguments, a seed argument, a whole file, and the evaluation
 * of a classifier over a data set in batches. Header-only (every function is
 * `static inline`, so a program that uses some of them compiles warning-free);
 * not part of the library. */
#ifndef TG_EXAMPLE_UTIL_H
#define TG_EXAMPLE_UTIL_H

#include <errno.h>
#include <float.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "tapegrad.h"

/* ---- clocks ------------------------------------------------------------- */

/* wall-clock seconds */
static inline double now(void)
{
    struct timespec ts;
    timespec_get(&ts, TIME_UTC);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* CPU seconds of the process (all its threads): on a shared, busy machine a
 * fairer clock than the wall for comparing two programs */
static inline double cpu_now(void)
{
    return (double)clock() / CLOCKS_PER_SEC;
}

/* ---- arguments ---------------------------------------------------------- */

/* s as a whole decimal integer in [lo, hi] into *out: 0, or -1 (out untouched) */
static inline int parse_long(const char *s, long lo, long hi, long *out)
{
    char *end;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (errno || end == s || *end || v < lo || v > hi) return -1;
    *out = v;
    return 0;
}

/* s as a whole number in [lo, hi] (so never NaN) into *out: 0, or -1 */
static inline int parse_double(const char *s, double lo, double hi, double *out)
{
    char *end;
    errno = 0;
    double v = strtod(s, &end);
    if (errno || end == s || *end || !(v >= lo && v <= hi)) return -1;
    *out = v;
    return 0;
}

/* The command line "prog [seed]": *seed from argv[1] when given (else left
 * as it is). 0, or 2 after a message on stderr. */
static inline int parse_seed_arg(int argc, char **argv, const char *prog, uint64_t *seed)
{
    if (argc > 2) {
        fprintf(stderr, "usage: %s [seed]\n", prog);
        return 2;
    }
    if (argc == 2) {
        char *end;
        errno = 0;
        *seed = strtoull(argv[1], &end, 10);
        if (errno || end == argv[1] || *end) {
            fprintf(stderr, "%s: seed must be a non-negative integer, got '%s'\n", prog,
                    argv[1]);
            return 2;
        }
    }
    return 0;
}

/* ---- files -------------------------------------------------------------- */

/* The whole file (malloc'd), its length in *n; NULL with a message naming
 * prog on failure. */
static inline unsigned char *read_file(const char *prog, const char *path, int64_t *n)
{
    FILE *f = fopen(path, "rb");
    if (!f) {
        fprintf(stderr, "%s: cannot open %s: %s\n", prog, path, strerror(errno));
        return NULL;
    }
    size_t cap = 1 << 16, len = 0;
    unsigned char *buf = malloc(cap);
    while (buf) {
        len += fread(buf + len, 1, cap - len, f);
        if (len < cap) break;
        unsigned char *nb = realloc(buf, cap *= 2);
        if (!nb) free(buf);
        buf = nb;
    }
    int bad = ferror(f);
    fclose(f);
    if (!buf || bad) {
        fprintf(stderr, "%s: cannot read %s\n", prog, path);
        free(buf);
        return NULL;
    }
    *n = (int64_t)len;
    return buf;
}

/* ---- evaluation --------------------------------------------------------- */

/* A classifier's logits [n, classes] for the inputs x [n, ...]. */
typedef tg_tensor *(*logits_fn)(tg_ctx *ctx, const void *model, tg_tensor *x);

/* logits_fn of a tg_mlp */
static inline tg_tensor *mlp_logits(tg_ctx *ctx, const void *model, tg_tensor *x)
{
    return tg_mlp_forward(ctx, (const tg_mlp *)model, x);
}

/* Mean cross-entropy and accuracy of a classifier on ds, in batches of
 * `batch`, without recording; with confusion (n_classes^2 counts, may be
 * NULL) also its confusion matrix. 0, or -1 on an error (recorded in ctx;
 * *loss and *acc are then NaN). */
static inline int evaluate_classifier(tg_ctx *ctx, logits_fn logits_of, const void *model,
                                      const tg_dataset *ds, int64_t batch, int n_classes,
                                      int64_t *confusion, double *loss, double *acc)
{
    tg_batcher b;
    *loss = *acc = NAN;
    if (tg_batcher_init(&b, ctx, ds, batch, 0)) return -1;
    int prev = tg_no_grad(ctx, 1);
    tg_mean_meter ml = {0}, ma = {0};
    tg_tensor *x, *y;
    while (tg_batcher_next(&b, &x, &y) == 1) {
        tg_tensor *logits = logits_of(ctx, model, x);
        double l = tg_item(tg_cross_entropy(ctx, logits, y));
        if (!tg_ok(ctx)) break;
        tg_mean_meter_add(&ml, l, tg_dim(x, 0));
        tg_mean_meter_add(&ma, tg_accuracy(logits, y), tg_dim(x, 0));
        if (confusion) tg_confusion(ctx, logits, y, n_classes, confusion);
        tg_reset(ctx);
    }
    tg_reset(ctx);
    tg_no_grad(ctx, prev);
    tg_batcher_free(&b);
    if (!tg_ok(ctx)) return -1;
    *loss = tg_mean_meter_mean(&ml);
    *acc = tg_mean_meter_mean(&ma);
    return 0;
}

#endif /* TG_EXAMPLE_UTIL_H */
