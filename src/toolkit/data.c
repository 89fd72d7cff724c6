/* SPDX-License-Identifier: MIT */
/* data.c: datasets in memory, shuffling, mini-batches, train/test split and
 * standardisation.
 *
 * A tg_dataset is one block from the context's allocator: the struct, then
 * x [n, n_features] floats, then labels [n] or targets [n, n_targets], each
 * part starting on a 64-byte boundary. One allocation, one free
 * (tg_dataset_free), and the block's size is remembered in the struct so the
 * user may lower n freely. Datasets outlive tg_reset but not the context.
 *
 * Batches are copied out of a dataset into arena temporaries (they die at
 * tg_reset), so a training loop that resets every step allocates nothing on
 * the heap per batch; the batcher's sample order is allocated once.
 */
#if defined(__linux__) && !defined(_DEFAULT_SOURCE)
#define _DEFAULT_SOURCE /* madvise, MADV_HUGEPAGE */
#endif
#include "toolkit.h"

#include <math.h>
#if defined(__linux__)
#include <sys/mman.h>
#endif

#define DS_ALIGN ((size_t)64)

/* Batches gather rows from random places of a data set; with 4 KiB pages nearly
 * every row costs a TLB miss and a page walk (Fashion-MNIST's 188 MB of images: a
 * batch of 64 rows took 38-43 us to gather, 28-31 us with 2 MiB pages). So a large
 * block asks Linux for transparent huge pages, before anything touches it, over the
 * whole 2 MiB-aligned pages inside it. Only advice: a no-op where THP is off
 * ("never") or the allocator's memory is not anonymous (madvise then fails, and is
 * ignored); results never depend on it. */
static void advise_huge_pages(void *p, size_t bytes) {
#if defined(__linux__) && defined(MADV_HUGEPAGE)
    const uintptr_t huge = (uintptr_t)1 << 21;
    if (bytes < 8 * huge) return;
    const uintptr_t lo = ((uintptr_t)p + huge - 1) & ~(huge - 1);
    const uintptr_t hi = ((uintptr_t)p + bytes) & ~(huge - 1);
    if (hi > lo) (void)madvise((void *)lo, (size_t)(hi - lo), MADV_HUGEPAGE);
#else
    (void)p;
    (void)bytes;
#endif
}

static size_t align_up(size_t v) { return (v + DS_ALIGN - 1) & ~(DS_ALIGN - 1); }

/* a * b * elem without overflow of size_t (and of int64_t for a * b);
 * 0 on overflow */
static int mul_size(int64_t a, int64_t b, size_t elem, size_t *out) {
    if (a < 0 || b < 0) return 0;
    if (a == 0 || b == 0) {
        *out = 0;
        return 1;
    }
    if ((uint64_t)a > (uint64_t)INT64_MAX / (uint64_t)b) return 0;
    uint64_t ab = (uint64_t)a * (uint64_t)b;
    if (ab > (uint64_t)(SIZE_MAX / 2) / elem) return 0;
    *out = (size_t)ab * elem;
    return 1;
}

/* Allocate a dataset block. fn names the public caller for messages.
 * n_targets: 0 labels, > 0 targets, < 0 neither. zero: fill with zeros;
 * else the data parts are left uninitialised, so the loaders touch only the
 * pages they fill (a forged header asking for 20 GB costs nothing until
 * that much data has actually been read). Used by idx.c and csv.c too. */
tg_dataset *tgi_dataset_alloc(tg_ctx *ctx, const char *fn, int64_t n, int64_t n_features,
                              int64_t n_targets, int zero) {
    size_t xb, lb = 0, tb = 0;
    tgi_api(ctx, fn);
    if (!mul_size(n, n_features, sizeof(float), &xb) ||
        (n_targets == 0 && !mul_size(n, 1, sizeof(int32_t), &lb)) ||
        (n_targets > 0 && !mul_size(n, n_targets, sizeof(float), &tb))) {
        tg_set_error(ctx, "%s: dataset of %lld samples x %lld features (%lld targets) is too large",
                     fn, (long long)n, (long long)n_features, (long long)n_targets);
        return NULL;
    }
    size_t off_x = align_up(sizeof(tg_dataset));
    size_t off_y = align_up(off_x + xb);
    size_t yb = n_targets == 0 ? lb : tb;
    if (off_y > SIZE_MAX - yb - DS_ALIGN) {
        tg_set_error(ctx, "%s: dataset of %lld samples x %lld features is too large", fn,
                     (long long)n, (long long)n_features);
        return NULL;
    }
    size_t total = off_y + yb;
    unsigned char *base = zero ? tgi_calloc(ctx, total) : tgi_malloc(ctx, total);
    if (!base) return NULL;
    advise_huge_pages(base, total);
    memset(base, 0, sizeof(tg_dataset));
    tg_dataset *ds = (tg_dataset *)base;
    ds->n = n;
    ds->n_features = n_features;
    ds->x = (float *)(base + off_x);
    if (n_targets == 0) {
        ds->labels = (int32_t *)(base + off_y);
    } else if (n_targets > 0) {
        ds->targets = (float *)(base + off_y);
        ds->n_targets = n_targets;
    }
    ds->sample_ndim = 1;
    ds->sample_shape[0] = n_features;
    ds->owner_ = ctx;
    ds->bytes_ = total;
    return ds;
}

tg_dataset *tg_dataset_new(tg_ctx *ctx, int64_t n, int64_t n_features, int64_t n_targets) {
    if (!tg_ok(ctx)) return NULL;
    if (n < 0 || n_features < 1) {
        tg_set_error(ctx, "tg_dataset_new: need n >= 0 and n_features >= 1, got n %lld, "
                          "n_features %lld", (long long)n, (long long)n_features);
        return NULL;
    }
    return tgi_dataset_alloc(ctx, "tg_dataset_new", n, n_features, n_targets, 1);
}

void tg_dataset_free(tg_dataset *ds) {
    if (!ds) return;
    tgi_free(ds->owner_, ds, ds->bytes_);
}

/* Checks shared by the functions that read a dataset. */
static int check_dataset(tg_ctx *ctx, const char *fn, const tg_dataset *ds) {
    if (!ds) {
        if (tg_ok(ctx)) tg_set_error(ctx, "%s: argument ds is NULL", fn);
        return 0;
    }
    if (!tg_ok(ctx)) return 0;
    if (ds->n < 0 || ds->n_features < 1 || !ds->x || (ds->targets && ds->n_targets < 1)) {
        tg_set_error(ctx, "%s: dataset is inconsistent (n %lld, n_features %lld, n_targets %lld)",
                     fn, (long long)ds->n, (long long)ds->n_features, (long long)ds->n_targets);
        return 0;
    }
    return 1;
}

static int check_indices(tg_ctx *ctx, const char *fn, const tg_dataset *ds, const int64_t *idx,
                         int64_t m) {
    for (int64_t i = 0; i < m; i++) {
        if (idx[i] < 0 || idx[i] >= ds->n) {
            tg_set_error(ctx, "%s: index %lld (at position %lld) is outside [0, %lld)", fn,
                         (long long)idx[i], (long long)i, (long long)ds->n);
            return 0;
        }
    }
    return 1;
}

static tg_dataset *subset(tg_ctx *ctx, const char *fn, const tg_dataset *ds, const int64_t *idx,
                          int64_t m) {
    int64_t kind = ds->labels ? 0 : ds->targets ? ds->n_targets : -1;
    tg_dataset *out = tgi_dataset_alloc(ctx, fn, m, ds->n_features, kind, 0);
    if (!out) return NULL;
    size_t row = (size_t)ds->n_features * sizeof(float);
    size_t trow = (size_t)ds->n_targets * sizeof(float);
    for (int64_t i = 0; i < m; i++) {
        int64_t s = idx[i];
        memcpy(out->x + i * ds->n_features, ds->x + s * ds->n_features, row);
        if (ds->labels) out->labels[i] = ds->labels[s];
        if (ds->targets) memcpy(out->targets + i * ds->n_targets, ds->targets + s * ds->n_targets, trow);
    }
    out->n_classes = ds->n_classes;
    out->sample_ndim = ds->sample_ndim;
    memcpy(out->sample_shape, ds->sample_shape, sizeof out->sample_shape);
    return out;
}

tg_dataset *tg_dataset_subset(tg_ctx *ctx, const tg_dataset *ds, const int64_t *idx, int64_t m) {
    static const char fn[] = "tg_dataset_subset";
    if (!ctx || !check_dataset(ctx, fn, ds)) return NULL;
    if (m < 0 || (m > 0 && !idx)) {
        tg_set_error(ctx, "%s: need m >= 0 indices, got m %lld and idx %s", fn, (long long)m,
                     idx ? "given" : "NULL");
        return NULL;
    }
    if (!check_indices(ctx, fn, ds, idx, m)) return NULL;
    return subset(ctx, fn, ds, idx, m);
}

/* Gather rows idx[0..m) of a float [*, cols] table into a new temporary of
 * dtype dt, shape [m, cols]. */
static tg_tensor *gather_rows(tg_ctx *ctx, const char *fn, const float *src, int64_t cols,
                              const int64_t *idx, int64_t m, tg_dtype dt) {
    int64_t shape[2] = {m, cols};
    tg_tensor *t = tgi_tensor_new(ctx, fn, dt, 2, shape, 0);
    if (!t) return NULL;
    if (dt == TG_F32) {
        float *d = t->data;
        for (int64_t i = 0; i < m; i++)
            memcpy(d + i * cols, src + idx[i] * cols, (size_t)cols * sizeof(float));
    } else {
        double *d = t->data;
        for (int64_t i = 0; i < m; i++) {
            const float *s = src + idx[i] * cols;
            for (int64_t j = 0; j < cols; j++) d[i * cols + j] = s[j];
        }
    }
    return t;
}

/* The batch itself, arguments already checked. */
static int make_batch(tg_ctx *ctx, const char *fn, const tg_dataset *ds, const int64_t *idx,
                      int64_t m, tg_dtype dt, tg_tensor **x, tg_tensor **y) {
    tgi_api(ctx, fn);
    tg_tensor *tx = gather_rows(ctx, fn, ds->x, ds->n_features, idx, m, dt);
    if (!tx) return -1;
    tg_tensor *ty = NULL;
    if (y && ds->labels) {
        int64_t shape[1] = {m};
        ty = tgi_tensor_new(ctx, fn, TG_I32, 1, shape, 0);
        if (!ty) return -1;
        int32_t *d = ty->data;
        for (int64_t i = 0; i < m; i++) d[i] = ds->labels[idx[i]];
    } else if (y && ds->targets) {
        ty = gather_rows(ctx, fn, ds->targets, ds->n_targets, idx, m, dt);
        if (!ty) return -1;
    }
    *x = tx;
    if (y) *y = ty;
    return 0;
}

int tg_dataset_batch(tg_ctx *ctx, const tg_dataset *ds, const int64_t *idx, int64_t m,
                     tg_dtype x_dtype, tg_tensor **x, tg_tensor **y) {
    static const char fn[] = "tg_dataset_batch";
    if (x) *x = NULL;
    if (y) *y = NULL;
    if (!ctx || !check_dataset(ctx, fn, ds)) return -1;
    if (!x) {
        tg_set_error(ctx, "%s: argument x is NULL", fn);
        return -1;
    }
    if (m < 1 || !idx) {
        tg_set_error(ctx, "%s: need m >= 1 indices, got m %lld and idx %s", fn, (long long)m,
                     idx ? "given" : "NULL");
        return -1;
    }
    if (x_dtype != TG_F32 && x_dtype != TG_F64) {
        tg_set_error(ctx, "%s: x_dtype must be f32 or f64, got %s", fn, tg_dtype_name(x_dtype));
        return -1;
    }
    if (!check_indices(ctx, fn, ds, idx, m)) return -1;
    return make_batch(ctx, fn, ds, idx, m, x_dtype, x, y);
}

void tg_shuffle_indices(tg_ctx *ctx, int64_t *idx, int64_t n) {
    if (!ctx) return;
    if (!idx) {
        if (n > 0 && tg_ok(ctx)) tg_set_error(ctx, "tg_shuffle_indices: argument idx is NULL");
        return;
    }
    /* Fisher-Yates: position i takes a uniform pick among positions [0, i] */
    for (int64_t i = n - 1; i > 0; i--) {
        int64_t j = (int64_t)tg_rand_below(ctx, (uint64_t)i + 1);
        int64_t t = idx[i];
        idx[i] = idx[j];
        idx[j] = t;
    }
}

int tg_dataset_split(tg_ctx *ctx, const tg_dataset *ds, double test_fraction, tg_dataset **train,
                     tg_dataset **test) {
    static const char fn[] = "tg_dataset_split";
    if (train) *train = NULL;
    if (test) *test = NULL;
    if (!ctx || !check_dataset(ctx, fn, ds)) return -1;
    if (!train || !test) {
        tg_set_error(ctx, "%s: argument %s is NULL", fn, train ? "test" : "train");
        return -1;
    }
    if (test_fraction <= 0) test_fraction = 0.2;
    if (!(test_fraction < 1)) { /* also NaN */
        tg_set_error(ctx, "%s: test_fraction must be below 1, got %g", fn, test_fraction);
        return -1;
    }
    if (ds->n < 2) {
        tg_set_error(ctx, "%s: need at least 2 samples to split, got %lld", fn, (long long)ds->n);
        return -1;
    }
    int64_t n = ds->n;
    int64_t n_test = (int64_t)llround((double)n * test_fraction);
    if (n_test < 1) n_test = 1;
    if (n_test > n - 1) n_test = n - 1;

    size_t bytes = (size_t)n * sizeof(int64_t);
    int64_t *perm = tgi_malloc(ctx, bytes);
    unsigned char *in_test = tgi_calloc(ctx, (size_t)n);
    int rc = -1;
    if (!perm || !in_test) goto done;
    for (int64_t i = 0; i < n; i++) perm[i] = i;
    tg_shuffle_indices(ctx, perm, n);
    for (int64_t i = 0; i < n_test; i++) in_test[perm[i]] = 1;
    /* reuse perm: test indices then train indices, each in original order */
    int64_t a = 0, b = n_test;
    for (int64_t i = 0; i < n; i++) {
        if (in_test[i]) perm[a++] = i;
        else perm[b++] = i;
    }
    *test = subset(ctx, fn, ds, perm, n_test);
    *train = subset(ctx, fn, ds, perm + n_test, n - n_test);
    if (!*test || !*train) {
        tg_dataset_free(*test);
        tg_dataset_free(*train);
        *test = *train = NULL;
        goto done;
    }
    rc = 0;
done:
    tgi_free(ctx, perm, bytes);
    tgi_free(ctx, in_test, (size_t)n);
    return rc;
}

/* ---- batcher ---- */

/* Batches per epoch: the full ones, and the last partial one unless it is
 * dropped (TG_BATCH_DROP_LAST, or too small to give every shard a sample). */
static void count_batches(tg_batcher *b) {
    int64_t rem = b->n % b->batch_size, min_last = b->shard_count > 1 ? b->shard_count : 1;
    b->n_batches = b->n / b->batch_size + (!(b->flags & TG_BATCH_DROP_LAST) && rem >= min_last);
}

/* The start of a call that fills *obj (size bytes) from ds: obj present
 * ("<fn>: argument <arg> is NULL", unless an error is recorded already), then
 * zeroed; ctx present and ds a usable dataset. 0 to go on, else -1. */
static int begin_on_dataset(tg_ctx *ctx, const char *fn, void *obj, size_t size, const char *arg,
                            const tg_dataset *ds) {
    if (!obj) {
        if (tg_ok(ctx)) tg_set_error(ctx, "%s: argument %s is NULL", fn, arg);
        return -1;
    }
    memset(obj, 0, size);
    return !ctx || !check_dataset(ctx, fn, ds) ? -1 : 0;
}

int tg_batcher_init(tg_batcher *b, tg_ctx *ctx, const tg_dataset *ds, int64_t batch_size,
                    int flags) {
    static const char fn[] = "tg_batcher_init";
    if (begin_on_dataset(ctx, fn, b, sizeof *b, "b", ds)) return -1;
    if (batch_size < 1) {
        tg_set_error(ctx, "%s: batch_size must be >= 1, got %lld", fn, (long long)batch_size);
        return -1;
    }
    if (flags & ~(TG_BATCH_SHUFFLE | TG_BATCH_DROP_LAST | TG_BATCH_F64)) {
        tg_set_error(ctx, "%s: unknown flags 0x%x", fn, (unsigned)flags);
        return -1;
    }
    tgi_api(ctx, fn);
    int64_t *order = tgi_malloc(ctx, (size_t)ds->n * sizeof(int64_t));
    if (!order) return -1;
    for (int64_t i = 0; i < ds->n; i++) order[i] = i;
    b->ctx = ctx;
    b->ds = ds;
    b->batch_size = batch_size;
    b->flags = flags;
    b->order = order;
    b->n = ds->n;
    b->shard_count = 1;
    count_batches(b);
    b->fresh = 1;
    return 0;
}

int tg_batcher_shard(tg_batcher *b, int rank, int count) {
    static const char fn[] = "tg_batcher_shard";
    if (!b || !b->ctx || !b->order) {
        if (b && b->ctx && tg_ok(b->ctx)) tg_set_error(b->ctx, "%s: batcher is not initialised", fn);
        return -1;
    }
    tg_ctx *ctx = b->ctx;
    if (!tg_ok(ctx)) return -1;
    if (count < 1 || rank < 0 || rank >= count || count > b->batch_size) {
        tg_set_error(ctx, "%s: need 0 <= rank < count <= batch_size (%lld), got rank %d of %d", fn,
                     (long long)b->batch_size, rank, count);
        return -1;
    }
    if (!b->fresh) {
        tg_set_error(ctx, "%s: the batcher is inside an epoch (batch %lld); shard it before the "
                          "first batch or at the end of an epoch", fn, (long long)b->batch);
        return -1;
    }
    b->shard_rank = rank;
    b->shard_count = count;
    count_batches(b);
    return 0;
}

int tg_batcher_next(tg_batcher *b, tg_tensor **x, tg_tensor **y) {
    static const char fn[] = "tg_batcher_next";
    if (x) *x = NULL;
    if (y) *y = NULL;
    if (!b) return -1;
    tg_ctx *ctx = b->ctx;
    if (!ctx || !tg_ok(ctx)) return -1;
    if (!b->order || !b->ds) {
        tg_set_error(ctx, "%s: batcher is not initialised (or was freed)", fn);
        return -1;
    }
    if (!x) {
        tg_set_error(ctx, "%s: argument x is NULL", fn);
        return -1;
    }
    const tg_dataset *ds = b->ds;
    if (ds->n != b->n) {
        tg_set_error(ctx, "%s: the dataset has %lld samples but had %lld at tg_batcher_init", fn,
                     (long long)ds->n, (long long)b->n);
        return -1;
    }
    if (b->fresh) {
        b->fresh = 0;
        b->pos = 0;
        b->batch = 0;
        if (b->flags & TG_BATCH_SHUFFLE) tg_shuffle_indices(ctx, b->order, b->n);
    }
    int64_t m = b->n - b->pos;
    if (m > b->batch_size) m = b->batch_size;
    const int64_t shards = b->shard_count > 1 ? b->shard_count : 1;
    if (m <= 0 || m < shards || ((b->flags & TG_BATCH_DROP_LAST) && m < b->batch_size)) {
        b->epoch++;
        b->fresh = 1;
        return 0;
    }
    /* this rank's contiguous run of the global batch order[pos, pos + m) */
    const int64_t lo = m * b->shard_rank / shards, hi = m * (b->shard_rank + 1) / shards;
    tg_dtype dt = (b->flags & TG_BATCH_F64) ? TG_F64 : TG_F32;
    if (make_batch(ctx, fn, ds, b->order + b->pos + lo, hi - lo, dt, x, y) != 0) return -1;
    b->pos += m;
    b->batch++;
    b->global_size = m;
    b->share_size = hi - lo;
    return 1;
}

void tg_batcher_free(tg_batcher *b) {
    if (!b) return;
    if (b->order && b->ctx) tgi_free(b->ctx, b->order, (size_t)b->n * sizeof(int64_t));
    b->order = NULL;
}

/* ---- standardisation ---- */

int tg_scaler_fit(tg_ctx *ctx, tg_scaler *s, const tg_dataset *train) {
    static const char fn[] = "tg_scaler_fit";
    if (begin_on_dataset(ctx, fn, s, sizeof *s, "s", train)) return -1;
    if (train->n < 1) {
        tg_set_error(ctx, "%s: the dataset has no samples", fn);
        return -1;
    }
    int64_t f = train->n_features, n = train->n;
    size_t fb = (size_t)f * sizeof(float), db = (size_t)f * sizeof(double);
    float *mean = tgi_malloc(ctx, fb);
    float *std = tgi_malloc(ctx, fb);
    double *acc = tgi_calloc(ctx, db);
    double *m2 = tgi_calloc(ctx, db);
    int rc = -1;
    if (!mean || !std || !acc || !m2) goto done;
    /* two passes in double, row by row (cache-friendly): mean, then the
     * squared deviations from it */
    for (int64_t i = 0; i < n; i++) {
        const float *r = train->x + i * f;
        for (int64_t j = 0; j < f; j++) acc[j] += r[j];
    }
    for (int64_t j = 0; j < f; j++) acc[j] /= (double)n;
    for (int64_t i = 0; i < n; i++) {
        const float *r = train->x + i * f;
        for (int64_t j = 0; j < f; j++) {
            double d = r[j] - acc[j];
            m2[j] += d * d;
        }
    }
    for (int64_t j = 0; j < f; j++) {
        double sd = sqrt(m2[j] / (double)n);
        /* constant feature (up to rounding): centre only */
        if (!(sd > 1e-8 * fabs(acc[j])) || !isfinite(sd)) sd = 1;
        mean[j] = (float)acc[j];
        std[j] = (float)sd;
    }
    s->n_features = f;
    s->mean = mean;
    s->std = std;
    s->owner_ = ctx;
    mean = std = NULL;
    rc = 0;
done:
    tgi_free(ctx, mean, fb);
    tgi_free(ctx, std, fb);
    tgi_free(ctx, acc, db);
    tgi_free(ctx, m2, db);
    return rc;
}

int tg_scaler_apply(const tg_scaler *s, tg_dataset *ds) {
    static const char fn[] = "tg_scaler_apply";
    if (!s || !s->owner_ || !s->mean || !s->std) {
        if (ds && ds->owner_ && tg_ok(ds->owner_))
            tg_set_error(ds->owner_, "%s: scaler is NULL or not fitted", fn);
        return -1;
    }
    tg_ctx *ctx = s->owner_;
    if (!check_dataset(ctx, fn, ds)) return -1;
    if (ds->n_features != s->n_features) {
        tg_set_error(ctx, "%s: the scaler was fitted on %lld features, the dataset has %lld", fn,
                     (long long)s->n_features, (long long)ds->n_features);
        return -1;
    }
    int64_t f = s->n_features;
    for (int64_t i = 0; i < ds->n; i++) {
        float *r = ds->x + i * f;
        for (int64_t j = 0; j < f; j++) r[j] = (r[j] - s->mean[j]) / s->std[j];
    }
    return 0;
}

void tg_scaler_free(tg_scaler *s) {
    if (!s || !s->owner_) return;
    size_t fb = (size_t)s->n_features * sizeof(float);
    tgi_free(s->owner_, s->mean, fb);
    tgi_free(s->owner_, s->std, fb);
    s->mean = s->std = NULL;
    s->owner_ = NULL;
}
