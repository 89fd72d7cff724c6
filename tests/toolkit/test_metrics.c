/* SPDX-License-Identifier: MIT */
/* test_metrics.c: accuracy, confusion matrices, the mean meter and the
 * progress line, on hand-made predictions. */
#include <criterion/criterion.h>

#include <math.h>
#include <stdio.h>
#include <string.h>

#include "tapegrad.h"

static tg_ctx *ctx;
static void setup(void) { ctx = tg_ctx_new(1); }
static void teardown(void) { tg_ctx_free(ctx); }

TestSuite(metrics, .init = setup, .fini = teardown);

static tg_tensor *f32(int ndim, const int64_t *shape, const float *v) {
    tg_tensor *t = tg_from(ctx, TG_F32, ndim, shape, v);
    cr_assert_not_null(t, "%s", tg_errmsg(ctx));
    return t;
}

static tg_tensor *i32(int64_t n, const int32_t *v) {
    tg_tensor *t = tg_from(ctx, TG_I32, 1, (int64_t[]){n}, v);
    cr_assert_not_null(t, "%s", tg_errmsg(ctx));
    return t;
}

/* 5 samples, 3 classes; predicted classes 2, 0, 1, 1, 0 (row 4 ties 0 and
 * 2: the first wins) */
static const float LOGITS[15] = {0.1f, -1.0f, 2.0f,  /* 2 */
                                 3.0f, 0.0f, -3.0f,  /* 0 */
                                 -0.5f, 0.5f, 0.25f, /* 1 */
                                 1.0f, 4.0f, 2.0f,   /* 1 */
                                 1.5f, -2.0f, 1.5f}; /* 0 (tie with 2) */
static const int32_t LABELS[5] = {2, 0, 2, 1, 2};  /* right, right, wrong, right, wrong */

Test(metrics, accuracy_argmax) {
    tg_tensor *p = f32(2, (int64_t[]){5, 3}, LOGITS);
    tg_tensor *l = i32(5, LABELS);
    cr_assert_float_eq(tg_accuracy(p, l), 3.0 / 5.0, 1e-12);
    /* f64 predictions, and one-hot float labels */
    double pd[15];
    for (int i = 0; i < 15; i++) pd[i] = LOGITS[i];
    tg_tensor *p64 = tg_from(ctx, TG_F64, 2, (int64_t[]){5, 3}, pd);
    cr_assert_float_eq(tg_accuracy(p64, l), 0.6, 1e-12);
    float onehot[15] = {0};
    for (int i = 0; i < 5; i++) onehot[3 * i + LABELS[i]] = 1;
    cr_assert_float_eq(tg_accuracy(p, f32(2, (int64_t[]){5, 3}, onehot)), 0.6, 1e-12);
    /* softmax does not change the argmax */
    cr_assert_float_eq(tg_accuracy(tg_softmax(ctx, p), l), 0.6, 1e-12);
    cr_assert(tg_ok(ctx), "%s", tg_errmsg(ctx));
}

Test(metrics, accuracy_binary) {
    float prob[6] = {0.9f, 0.2f, 0.5f, 0.49f, 0.7f, 0.1f}; /* -> 1 0 1 0 1 0 */
    float target[6] = {1, 0, 0, 0, 0, 1};                  /* 3 right */
    int32_t lab[6] = {1, 0, 0, 0, 0, 1};
    tg_tensor *p1 = f32(1, (int64_t[]){6}, prob);
    tg_tensor *p2 = f32(2, (int64_t[]){6, 1}, prob);
    cr_assert_float_eq(tg_accuracy(p1, f32(1, (int64_t[]){6}, target)), 0.5, 1e-12);
    cr_assert_float_eq(tg_accuracy(p2, f32(2, (int64_t[]){6, 1}, target)), 0.5, 1e-12);
    cr_assert_float_eq(tg_accuracy(p2, i32(6, lab)), 0.5, 1e-12);
    /* logits with threshold 0 */
    float logit[6] = {2.0f, -1.0f, 0.0f, -0.01f, 0.3f, -4.0f};
    cr_assert_float_eq(tg_binary_accuracy(f32(1, (int64_t[]){6}, logit), i32(6, lab), 0.0), 0.5,
                       1e-12);
    cr_assert_float_eq(tg_binary_accuracy(p1, i32(6, lab), 0.95), 4.0 / 6.0, 1e-12);
    cr_assert(tg_ok(ctx));
    tg_tensor *p = f32(2, (int64_t[]){5, 3}, LOGITS);
    cr_assert(isnan(tg_binary_accuracy(p, i32(5, LABELS), 0.5)));
    cr_assert(strstr(tg_errmsg(ctx), "tg_binary_accuracy: pred must be [N] or [N,1], got [5,3]"),
              "%s", tg_errmsg(ctx));
}

Test(metrics, accuracy_errors) {
    tg_tensor *p = f32(2, (int64_t[]){5, 3}, LOGITS);
    tg_tensor *l4 = i32(4, LABELS);
    cr_assert(isnan(tg_accuracy(p, l4)));
    cr_assert(strstr(tg_errmsg(ctx), "tg_accuracy:"), "%s", tg_errmsg(ctx));
    cr_assert(strstr(tg_errmsg(ctx), "pred f32 [5,3], labels i32 [4]"), "%s", tg_errmsg(ctx));
    tg_clear_error(ctx);
    cr_assert(isnan(tg_accuracy(p, NULL)));
    cr_assert_str_eq(tg_errmsg(ctx), "tg_accuracy: argument labels is NULL");
    tg_clear_error(ctx);
    cr_assert(isnan(tg_accuracy(NULL, NULL))); /* no context to report to */
    float four[8] = {0};
    tg_clear_error(ctx);
    cr_assert(isnan(tg_accuracy(p, f32(2, (int64_t[]){2, 4}, four))));
    cr_assert(!tg_ok(ctx));
}

Test(metrics, confusion_matrix_accumulates) {
    tg_tensor *p = f32(2, (int64_t[]){5, 3}, LOGITS);
    tg_tensor *l = i32(5, LABELS);
    int64_t m[9] = {0};
    cr_assert_eq(tg_confusion(ctx, p, l, 3, m), 0, "%s", tg_errmsg(ctx));
    /* rows true, columns predicted: (2,2) (0,0) (2,1) (1,1) (2,0) */
    int64_t want[9] = {1, 0, 0, /**/ 0, 1, 0, /**/ 1, 1, 1};
    for (int i = 0; i < 9; i++) cr_assert_eq(m[i], want[i], "cell %d: %lld", i, (long long)m[i]);
    cr_assert_eq(tg_confusion(ctx, p, l, 3, m), 0);
    for (int i = 0; i < 9; i++) cr_assert_eq(m[i], 2 * want[i], "accumulates");
    int64_t trace = m[0] + m[4] + m[8], all = 0;
    for (int i = 0; i < 9; i++) all += m[i];
    cr_assert_float_eq((double)trace / (double)all, tg_accuracy(p, l), 1e-12);

    /* binary: [N] probabilities, 2 classes */
    float prob[4] = {0.9f, 0.1f, 0.6f, 0.3f};
    int32_t lab[4] = {1, 1, 0, 0};
    int64_t b[4] = {0};
    cr_assert_eq(tg_confusion(ctx, f32(1, (int64_t[]){4}, prob), i32(4, lab), 2, b), 0);
    cr_assert_eq(b[0], 1); /* true 0, pred 0 */
    cr_assert_eq(b[1], 1); /* true 0, pred 1 */
    cr_assert_eq(b[2], 1); /* true 1, pred 0 */
    cr_assert_eq(b[3], 1);
}

Test(metrics, confusion_errors_leave_matrix_alone) {
    tg_tensor *p = f32(2, (int64_t[]){5, 3}, LOGITS);
    int32_t bad[5] = {0, 1, 3, 0, 0};
    int64_t m[9] = {0};
    cr_assert_eq(tg_confusion(ctx, p, i32(5, bad), 3, m), -1);
    cr_assert_str_eq(tg_errmsg(ctx), "tg_confusion: label 3 of sample 2 is outside [0, 3)");
    for (int i = 0; i < 9; i++) cr_assert_eq(m[i], 0, "nothing counted");
    tg_clear_error(ctx);
    cr_assert_eq(tg_confusion(ctx, p, i32(5, LABELS), 4, m), -1);
    cr_assert(strstr(tg_errmsg(ctx), "n_classes is 4 but pred [5,3] predicts 3 classes"), "%s",
              tg_errmsg(ctx));
    tg_clear_error(ctx);
    cr_assert_eq(tg_confusion(ctx, p, i32(5, LABELS), 3, NULL), -1);
    cr_assert_str_eq(tg_errmsg(ctx), "tg_confusion: argument matrix is NULL");
}

/* what was written to f (a tmpfile), as a string in buf; closes f */
static char *written(FILE *f, char *buf, size_t size) {
    fflush(f);
    rewind(f);
    size_t n = fread(buf, 1, size - 1, f);
    buf[n] = '\0';
    fclose(f);
    return buf;
}

Test(metrics, confusion_print) {
    int64_t m[4] = {8, 2, 1, 9};
    FILE *f = tmpfile();
    tg_confusion_print(f, m, 2);
    char buf[512];
    cr_assert_gt(strlen(written(f, buf, sizeof buf)), 0);
    cr_assert(strstr(buf, "recall"), "%s", buf);
    cr_assert(strstr(buf, "0.8000"), "%s", buf);
    cr_assert(strstr(buf, "0.9000"), "%s", buf);
}

Test(metrics, mean_meter) {
    tg_mean_meter m = {0};
    cr_assert(isnan(tg_mean_meter_mean(&m)));
    tg_mean_meter_add(&m, 1.0, 3); /* a batch of 3 with mean loss 1 */
    tg_mean_meter_add(&m, 2.0, 1); /* a last batch of 1 */
    cr_assert_float_eq(tg_mean_meter_mean(&m), 1.25, 1e-12);
    tg_mean_meter_add(&m, 5.0, 0); /* count <= 0 counts as 1 */
    cr_assert_float_eq(tg_mean_meter_mean(&m), 2.0, 1e-12);
    tg_mean_meter_reset(&m);
    cr_assert(isnan(tg_mean_meter_mean(&m)));
}


TestSuite(progress);

Test(progress, plain_stream_one_line_per_epoch) {
    FILE *f = tmpfile();
    tg_progress p;
    tg_progress_begin(&p, f, 2, 3);
    cr_assert_eq(p.tty, 0);
    tg_progress_update(&p, 4, 1.0);
    tg_progress_update(&p, 4, 2.0);
    tg_progress_update(&p, 2, 4.0);
    double l = tg_progress_end_epoch(&p, "test acc %.2f", 0.5);
    cr_assert_float_eq(l, (4 * 1.0 + 4 * 2.0 + 2 * 4.0) / 10.0, 1e-12);
    tg_progress_update(&p, 10, 0.5);
    tg_progress_end_epoch(&p, NULL);
    char buf[1024];
    written(f, buf, sizeof buf);
    cr_assert_null(strchr(buf, '\r'), "no redrawing on a non-terminal: %s", buf);
    cr_assert_null(strchr(buf, '\033'), "no escape codes on a non-terminal: %s", buf);
    cr_assert_eq(strncmp(buf, "epoch 1/2  loss 2.0000  ", 24), 0, "%s", buf);
    char *second = strchr(buf, '\n');
    cr_assert_not_null(second);
    cr_assert(strstr(buf, "  test acc 0.50\n"), "%s", buf);
    cr_assert_eq(strncmp(second + 1, "epoch 2/2  loss 0.5000  ", 24), 0, "%s", second + 1);
    int lines = 0;
    for (char *c = buf; *c; c++) lines += *c == '\n';
    cr_assert_eq(lines, 2, "one line per epoch: %s", buf);
}

Test(progress, terminal_redraws_in_place) {
    FILE *f = tmpfile();
    tg_progress p;
    tg_progress_begin(&p, f, 3, 2);
    p.tty = 1; /* pretend the stream is a terminal */
    tg_progress_update(&p, 8, 0.75);
    tg_progress_update(&p, 8, 0.25); /* the last batch of the epoch always draws */
    tg_progress_end_epoch(&p, NULL);
    char buf[1024];
    written(f, buf, sizeof buf);
    cr_assert(strstr(buf, "\repoch 1/3  batch 2/2  loss 0.5000"), "%s", buf);
    cr_assert(strstr(buf, "ETA "), "%s", buf);
    cr_assert(strstr(buf, "\033[K"), "%s", buf);
    cr_assert(strstr(buf, "\repoch 1/3  loss 0.5000"), "the summary replaces the line: %s", buf);
    size_t len = strlen(buf);
    cr_assert(len > 0 && buf[len - 1] == '\n');
}

Test(progress, unknown_totals) {
    FILE *f = tmpfile();
    tg_progress p;
    tg_progress_begin(&p, f, 0, 0);
    tg_progress_update(&p, 1, 3.0);
    tg_progress_end_epoch(&p, NULL);
    char buf[256];
    written(f, buf, sizeof buf);
    cr_assert_eq(strncmp(buf, "epoch 1  loss 3.0000", 20), 0, "%s", buf);
}
