/* SPDX-License-Identifier: MIT */
/* examples/teacher_data.h: a generated classification data set, for the MPI
 * example (examples/mpi_mlp.c) and the MPI tests (tests/mpi/mpi_train.c).
 * Header-only; not part of the library. */
#ifndef TG_TEACHER_DATA_H
#define TG_TEACHER_DATA_H

#include <math.h>
#include <stdlib.h>

#include "tapegrad.h"

/* n points of f features x ~ N(0,1)^f in c classes: label = argmax(x T + noise
 * N(0,1)) for a random teacher T [f, c] ~ N(0,1), all drawn from ctx's generator
 * (the same seed gives the same data on every rank). NULL on error (recorded). */
static inline tg_dataset *teacher_data(tg_ctx *ctx, int64_t n, int f, int c, double noise) {
    tg_dataset *ds = tg_dataset_new(ctx, n, f, 0);
    double *t = malloc((size_t)f * (size_t)c * sizeof *t);
    if (!ds || !t) {
        free(t);
        tg_dataset_free(ds);
        if (tg_ok(ctx)) tg_set_error(ctx, "teacher_data: out of memory for %lld x %d", (long long)n, f);
        return NULL;
    }
    for (int i = 0; i < f * c; i++) t[i] = tg_rand_normal(ctx);
    for (int64_t s = 0; s < n; s++) {
        float *x = ds->x + s * f;
        for (int j = 0; j < f; j++) x[j] = (float)tg_rand_normal(ctx);
        int best = 0;
        double bv = -INFINITY;
        for (int k = 0; k < c; k++) {
            double v = noise * tg_rand_normal(ctx);
            for (int j = 0; j < f; j++) v += x[j] * t[j * c + k];
            if (v > bv) bv = v, best = k;
        }
        ds->labels[s] = best;
    }
    ds->n_classes = c;
    free(t);
    return ds;
}

#endif /* TG_TEACHER_DATA_H */
