/* SPDX-License-Identifier: MIT */
/* metrics.c: accuracy, confusion matrices and a running mean.
 *
 * Predictions and labels are read from tensors of any of the shapes a
 * classifier produces, without recording anything on the tape:
 *   pred   [N,C] scores (C >= 2): the class is the argmax (first on ties);
 *          [N] or [N,1] probabilities of class 1: class 1 when >= threshold.
 *   labels TG_I32 [N] (or [N,1]) class indices;
 *          float [N] or [N,1] binary targets: class 1 when >= 0.5;
 *          float [N,C] one-hot or probability rows: the argmax.
 */
#include "toolkit.h"

#include <math.h>

/* Value i of a tensor as a double, whatever its dtype. */
static double at(const tg_tensor *t, int64_t i) {
    switch (t->dtype) {
    case TG_F32: return ((const float *)t->data)[i];
    case TG_F64: return ((const double *)t->data)[i];
    default: return ((const int32_t *)t->data)[i];
    }
}

static int64_t argmax_row(const tg_tensor *t, int64_t i, int64_t c) {
    int64_t best = 0;
    double bv = at(t, i * c);
    for (int64_t j = 1; j < c; j++) {
        double v = at(t, i * c + j);
        if (v > bv || (isnan(bv) && !isnan(v))) {
            bv = v;
            best = j;
        }
    }
    return best;
}

/* Rows N and columns C of a pred/labels tensor: 1-D -> C = 1, [N,C] -> C. */
static int rows_cols(const tg_tensor *t, int64_t *n, int64_t *c) {
    if (t->ndim == 1) {
        *n = t->shape[0];
        *c = 1;
        return 1;
    }
    if (t->ndim == 2) {
        *n = t->shape[0];
        *c = t->shape[1];
        return 1;
    }
    return 0;
}

typedef struct {
    const tg_tensor *pred, *labels;
    int64_t n, pc, lc; /* rows, pred columns, label columns */
    double threshold;
} cls_view;

/* Check pred and labels; ctx is where errors go (may be NULL). */
static int view_init(tg_ctx *ctx, const char *fn, const tg_tensor *pred, const tg_tensor *labels,
                     double threshold, cls_view *v) {
    if (!pred || !labels) {
        if (ctx && tg_ok(ctx))
            tg_set_error(ctx, "%s: argument %s is NULL", fn, pred ? "labels" : "pred");
        return 0;
    }
    if (!tg_ok(ctx)) return 0;
    if (labels->ctx != pred->ctx || (ctx && pred->ctx != ctx)) {
        tg_set_error(ctx, "%s: pred and labels belong to different contexts", fn);
        return 0;
    }
    char bp[64], bl[64];
    int64_t ln = 0;
    if (pred->dtype == TG_I32 || !rows_cols(pred, &v->n, &v->pc) ||
        !rows_cols(labels, &ln, &v->lc) || ln != v->n || v->n < 1 ||
        (labels->dtype == TG_I32 && v->lc != 1)) {
        tg_set_error(ctx, "%s: pred must be float [N,C], [N] or [N,1] and labels i32 [N] or "
                          "float [N], [N,1] or [N,C] with the same N >= 1; got pred %s %s, "
                          "labels %s %s", fn, tg_dtype_name(pred->dtype), TGI_SHAPE(pred, bp),
                     tg_dtype_name(labels->dtype), TGI_SHAPE(labels, bl));
        return 0;
    }
    if (labels->dtype != TG_I32 && v->lc > 1 && v->pc > 1 && v->lc != v->pc) {
        tg_set_error(ctx, "%s: pred has %lld classes but labels has %lld columns: pred %s, "
                          "labels %s", fn, (long long)v->pc, (long long)v->lc,
                     TGI_SHAPE(pred, bp), TGI_SHAPE(labels, bl));
        return 0;
    }
    v->pred = pred;
    v->labels = labels;
    v->threshold = threshold;
    return 1;
}

static int64_t pred_class(const cls_view *v, int64_t i) {
    if (v->pc == 1) return at(v->pred, i) >= v->threshold ? 1 : 0;
    return argmax_row(v->pred, i, v->pc);
}

static int64_t true_class(const cls_view *v, int64_t i) {
    if (v->labels->dtype == TG_I32) return ((const int32_t *)v->labels->data)[i];
    if (v->lc == 1) return at(v->labels, i) >= 0.5 ? 1 : 0;
    return argmax_row(v->labels, i, v->lc);
}

double tg_binary_accuracy(const tg_tensor *pred, const tg_tensor *labels, double threshold) {
    tg_ctx *ctx = pred ? pred->ctx : labels ? labels->ctx : NULL;
    cls_view v;
    if (!view_init(ctx, "tg_binary_accuracy", pred, labels, threshold, &v)) return NAN;
    if (v.pc != 1) {
        char bp[64];
        tg_set_error(ctx, "tg_binary_accuracy: pred must be [N] or [N,1], got %s",
                     TGI_SHAPE(pred, bp));
        return NAN;
    }
    int64_t ok = 0;
    for (int64_t i = 0; i < v.n; i++) ok += pred_class(&v, i) == true_class(&v, i);
    return (double)ok / (double)v.n;
}

double tg_accuracy(const tg_tensor *pred, const tg_tensor *labels) {
    tg_ctx *ctx = pred ? pred->ctx : labels ? labels->ctx : NULL;
    cls_view v;
    if (!view_init(ctx, "tg_accuracy", pred, labels, 0.5, &v)) return NAN;
    int64_t ok = 0;
    for (int64_t i = 0; i < v.n; i++) ok += pred_class(&v, i) == true_class(&v, i);
    return (double)ok / (double)v.n;
}

int tg_confusion(tg_ctx *ctx, const tg_tensor *pred, const tg_tensor *labels, int n_classes,
                 int64_t *matrix) {
    static const char fn[] = "tg_confusion";
    if (!ctx) return -1;
    cls_view v;
    if (!view_init(ctx, fn, pred, labels, 0.5, &v)) return -1;
    if (!matrix) {
        tg_set_error(ctx, "%s: argument matrix is NULL", fn);
        return -1;
    }
    int64_t pc = v.pc == 1 ? 2 : v.pc;
    if (n_classes < 2 || pc != n_classes) {
        char bp[64];
        tg_set_error(ctx, "%s: n_classes is %d but pred %s predicts %lld classes", fn, n_classes,
                     TGI_SHAPE(pred, bp), (long long)pc);
        return -1;
    }
    /* check every true class before counting anything */
    for (int64_t i = 0; i < v.n; i++) {
        int64_t t = true_class(&v, i);
        if (t < 0 || t >= n_classes) {
            tg_set_error(ctx, "%s: label %lld of sample %lld is outside [0, %d)", fn, (long long)t,
                         (long long)i, n_classes);
            return -1;
        }
    }
    for (int64_t i = 0; i < v.n; i++) matrix[true_class(&v, i) * n_classes + pred_class(&v, i)]++;
    return 0;
}

void tg_confusion_print(FILE *f, const int64_t *matrix, int n_classes) {
    if (!f || !matrix || n_classes < 1) return;
    int64_t mx = 0;
    for (int64_t i = 0; i < (int64_t)n_classes * n_classes; i++)
        if (matrix[i] > mx) mx = matrix[i];
    int w = 5;
    for (int64_t m = mx; m >= 10000; m /= 10) w++;
    fprintf(f, "true\\pred");
    for (int j = 0; j < n_classes; j++) fprintf(f, " %*d", w, j);
    fprintf(f, "  recall\n");
    for (int i = 0; i < n_classes; i++) {
        int64_t row = 0;
        fprintf(f, "%9d", i);
        for (int j = 0; j < n_classes; j++) {
            fprintf(f, " %*lld", w, (long long)matrix[(int64_t)i * n_classes + j]);
            row += matrix[(int64_t)i * n_classes + j];
        }
        if (row) fprintf(f, "  %.4f\n", (double)matrix[(int64_t)i * n_classes + i] / (double)row);
        else fprintf(f, "       -\n");
    }
}

void tg_mean_meter_add(tg_mean_meter *m, double value, int64_t count) {
    if (!m) return;
    if (count <= 0) count = 1;
    m->sum += value * (double)count;
    m->n += count;
}

double tg_mean_meter_mean(const tg_mean_meter *m) {
    if (!m || m->n == 0) return NAN;
    return m->sum / (double)m->n;
}

void tg_mean_meter_reset(tg_mean_meter *m) {
    if (!m) return;
    m->sum = 0;
    m->n = 0;
}
