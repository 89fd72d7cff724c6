/* SPDX-License-Identifier: MIT */
/* test_data.c: datasets, IDX and CSV loaders, shuffling, batches, split,
 * standardisation. IDX and CSV files are written into a fresh temporary
 * directory per test (plain and gzip'd through zlib); the small committed
 * fixtures under tests/data are loaded too. */
#include <criterion/criterion.h>

#include <dirent.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zlib.h>

#include "tapegrad.h"
#include "tg_test.h"

#ifndef TG_SOURCE_DIR
#define TG_SOURCE_DIR "."
#endif
#define FIXTURES TG_SOURCE_DIR "/tests/data"
#define FASHION_DIR "/usr/share/datasets/fashion-mnist"

/* ---- a temporary directory per test ---- */

static char tmpdir[64];
static tg_ctx *ctx;

static void setup(void) {
    strcpy(tmpdir, "/tmp/tg_data_XXXXXX");
    cr_assert(mkdtemp(tmpdir) != NULL);
    ctx = tg_ctx_new(1234);
    cr_assert(ctx);
}

static void teardown(void) {
    tg_ctx_free(ctx);
    DIR *d = opendir(tmpdir);
    if (!d) return;
    struct dirent *e;
    char p[512];
    while ((e = readdir(d))) {
        if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0) continue;
        snprintf(p, sizeof p, "%s/%s", tmpdir, e->d_name);
        unlink(p);
    }
    closedir(d);
    rmdir(tmpdir);
}

static const char *tmp_path(const char *name) {
    static char bufs[4][512];
    static int k;
    char *b = bufs[k++ % 4];
    snprintf(b, 512, "%s/%s", tmpdir, name);
    return b;
}

/* Write bytes to `name` in the temp dir, gzip'd through zlib when gz. */
static const char *write_bytes(const char *name, int gz, const void *data, size_t n) {
    const char *p = tmp_path(name);
    if (gz) {
        gzFile f = gzopen(p, "wb");
        cr_assert(f);
        if (n) cr_assert_eq(gzwrite(f, data, (unsigned)n), (int)n);
        cr_assert_eq(gzclose(f), Z_OK);
    } else {
        FILE *f = fopen(p, "wb");
        cr_assert(f);
        if (n) cr_assert_eq(fwrite(data, 1, n, f), n);
        fclose(f);
    }
    return p;
}

static const char *write_text(const char *name, const char *text) {
    return write_bytes(name, 0, text, strlen(text));
}

static size_t put_be32(unsigned char *p, uint32_t v) {
    p[0] = (unsigned char)(v >> 24);
    p[1] = (unsigned char)(v >> 16);
    p[2] = (unsigned char)(v >> 8);
    p[3] = (unsigned char)v;
    return 4;
}

/* An IDX file: header for (type, ndim, dims) then `data` (n bytes, already
 * big-endian), possibly with `extra` bytes appended or `cut` removed. */
static size_t idx_bytes(unsigned char *buf, int type, int ndim, const uint32_t *dims,
                        const void *data, size_t n) {
    size_t k = 0;
    buf[k++] = 0;
    buf[k++] = 0;
    buf[k++] = (unsigned char)type;
    buf[k++] = (unsigned char)ndim;
    for (int i = 0; i < ndim; i++) k += put_be32(buf + k, dims[i]);
    memcpy(buf + k, data, n);
    return k + n;
}

/* 5 images 3x2 and 5 labels */
static unsigned char IMG[30];
static const unsigned char LAB[5] = {3, 0, 1, 3, 2};

static void make_images(void) {
    for (int i = 0; i < 30; i++) IMG[i] = (unsigned char)((i * 53 + 7) % 256);
    IMG[0] = 0;
    IMG[1] = 255;
}

static const char *write_images(const char *name, int gz, size_t extra, size_t cut) {
    unsigned char buf[128];
    uint32_t dims[3] = {5, 3, 2};
    make_images();
    size_t n = idx_bytes(buf, 0x08, 3, dims, IMG, 30);
    memset(buf + n, 0xAB, extra);
    return write_bytes(name, gz, buf, n + extra - cut);
}

static const char *write_labels(const char *name, int gz, uint32_t count) {
    unsigned char buf[64];
    uint32_t dims[1] = {count};
    return write_bytes(name, gz, buf, idx_bytes(buf, 0x08, 1, dims, LAB, count));
}

/* ds loaded: n samples of 3x2 pixels in n_classes classes, pixels 0 and 255 first */
static void check_loaded(const tg_dataset *ds, int64_t n, int n_classes) {
    cr_assert_not_null(ds, "%s", tg_errmsg(ctx));
    cr_assert_eq(ds->n, n);
    cr_assert_eq(ds->n_features, 6);
    cr_assert_eq(ds->sample_ndim, 2);
    cr_assert_eq(ds->sample_shape[0], 3);
    cr_assert_eq(ds->sample_shape[1], 2);
    cr_assert_eq(ds->n_classes, n_classes);
    cr_assert_eq(ds->x[0], 0.0f);
    cr_assert_eq(ds->x[1], 1.0f);
}

static void check_tiny(const tg_dataset *ds) {
    check_loaded(ds, 5, 4);
    for (int i = 0; i < 30; i++) cr_assert_eq(ds->x[i], (float)IMG[i] / 255.0f, "pixel %d", i);
    for (int i = 0; i < 5; i++) cr_assert_eq(ds->labels[i], LAB[i]);
    cr_assert_null(ds->targets);
}

/* the message names the file and says `what` */
static void expect_error(const char *path, const char *what) {
    const char *m = tg_errmsg(ctx);
    cr_assert(!tg_ok(ctx), "expected an error about %s", what);
    if (path) cr_assert(strstr(m, path), "message lacks the path %s: %s", path, m);
    cr_assert(strstr(m, what), "message lacks \"%s\": %s", what, m);
}

/* r, a loader's result, must be NULL with an error as expect_error's; clears it */
static void expect_fail(const void *r, const char *path, const char *what) {
    cr_assert_null(r, "accepted: expected an error about %s", what);
    expect_error(path, what);
    tg_clear_error(ctx);
}

TestSuite(idx, .init = setup, .fini = teardown);

Test(idx, plain_round_trip) {
    const char *ip = write_images("a-images", 0, 0, 0);
    const char *lp = write_labels("a-labels", 0, 5);
    tg_dataset *ds = tg_load_idx(ctx, ip, lp);
    check_tiny(ds);
    tg_dataset_free(ds);
    cr_assert(tg_ok(ctx));
}

Test(idx, gzip_round_trip_matches_plain) {
    tg_dataset *a = tg_load_idx(ctx, write_images("i", 0, 0, 0), write_labels("l", 0, 5));
    tg_dataset *b = tg_load_idx(ctx, write_images("i.gz", 1, 0, 0), write_labels("l.gz", 1, 5));
    check_tiny(a);
    check_tiny(b);
    cr_assert_eq(memcmp(a->x, b->x, 30 * sizeof(float)), 0);
    /* gzip'd is told by content, not by name: a gzip file without .gz */
    tg_dataset *c = tg_load_idx(ctx, write_images("gz-no-suffix", 1, 0, 0), NULL);
    cr_assert_not_null(c, "%s", tg_errmsg(ctx));
    cr_assert_null(c->labels);
    cr_assert_eq(c->n_classes, 0);
    cr_assert_eq(memcmp(a->x, c->x, 30 * sizeof(float)), 0);
    tg_dataset_free(a);
    tg_dataset_free(b);
    tg_dataset_free(c);
}

Test(idx, committed_fixtures) {
    tg_dataset *a = tg_load_idx(ctx, FIXTURES "/tiny-images-idx3-ubyte",
                                FIXTURES "/tiny-labels-idx1-ubyte");
    tg_dataset *b = tg_load_idx(ctx, FIXTURES "/tiny-images-idx3-ubyte.gz",
                                FIXTURES "/tiny-labels-idx1-ubyte.gz");
    check_loaded(a, 6, 3);
    check_loaded(b, 6, 3);
    cr_assert_float_eq(a->x[2], (float)((2 * 37 + 11) % 256) / 255.0f, 1e-7);
    cr_assert_eq(memcmp(a->x, b->x, 36 * sizeof(float)), 0);
    cr_assert_eq(memcmp(a->labels, b->labels, 6 * sizeof(int32_t)), 0);
    cr_assert_eq(a->labels[2], 2);
    tg_dataset_free(a);
    tg_dataset_free(b);

    expect_fail(tg_load_idx(ctx, FIXTURES "/bad-magic-idx3-ubyte", NULL), "bad-magic-idx3-ubyte",
                "at byte 0: bad magic 0x00000703");
    expect_fail(tg_load_idx(ctx, FIXTURES "/truncated-images-idx3-ubyte", NULL),
                "truncated-images-idx3-ubyte", "truncated at byte 47");
    expect_fail(
        tg_load_idx(ctx, FIXTURES "/tiny-images-idx3-ubyte", FIXTURES "/five-labels-idx1-ubyte"),
        "five-labels-idx1-ubyte", "has 6 items but");
}

Test(idx, other_element_types) {
    /* f32 images [3,2] with negative values, i32 labels, i16 labels */
    float v[6] = {-1.5f, 0.25f, 3.0f, 1e6f, -0.0f, 7.125f};
    unsigned char be[24], buf[64];
    for (int i = 0; i < 6; i++) {
        uint32_t u;
        memcpy(&u, &v[i], 4);
        put_be32(be + 4 * i, u);
    }
    uint32_t d2[2] = {3, 2}, d1[1] = {3};
    const char *ip = write_bytes("f32", 0, buf, idx_bytes(buf, 0x0D, 2, d2, be, 24));
    unsigned char lb[12];
    put_be32(lb, 7);
    put_be32(lb + 4, 0);
    put_be32(lb + 8, 70000);
    const char *lp = write_bytes("i32", 1, buf, idx_bytes(buf, 0x0C, 1, d1, lb, 12));
    tg_dataset *ds = tg_load_idx(ctx, ip, lp);
    cr_assert_not_null(ds, "%s", tg_errmsg(ctx));
    cr_assert_eq(ds->n, 3);
    cr_assert_eq(ds->n_features, 2);
    for (int i = 0; i < 6; i++) cr_assert_eq(ds->x[i], v[i], "element %d unscaled", i);
    cr_assert_eq(ds->labels[2], 70000);
    cr_assert_eq(ds->n_classes, 70001);
    tg_dataset_free(ds);

    unsigned char l16[6] = {0x00, 0x02, 0x01, 0x00, 0x00, 0x00}; /* 2, 256, 0 */
    lp = write_bytes("i16", 0, buf, idx_bytes(buf, 0x0B, 1, d1, l16, 6));
    ds = tg_load_idx(ctx, ip, lp);
    cr_assert_not_null(ds, "%s", tg_errmsg(ctx));
    cr_assert_eq(ds->labels[1], 256);
    cr_assert_eq(ds->n_classes, 257);
    tg_dataset_free(ds);
}

Test(idx, idx_dir_standard_names) {
    write_images("train-images-idx3-ubyte.gz", 1, 0, 0);
    write_labels("train-labels-idx1-ubyte", 0, 5);
    tg_dataset *ds = tg_load_idx_dir(ctx, tmpdir, "train");
    check_tiny(ds);
    tg_dataset_free(ds);
    expect_fail(tg_load_idx_dir(ctx, tmpdir, "test"), tmpdir, "t10k-images-idx3-ubyte.gz");
    expect_fail(tg_load_idx_dir(ctx, tmpdir, "validation"), NULL, "split must be");
}

Test(idx, bad_magic) {
    unsigned char buf[64];
    uint32_t dims[3] = {5, 3, 2};
    make_images();
    size_t n = idx_bytes(buf, 0x08, 3, dims, IMG, 30);
    buf[0] = 0x1f; /* not 00 00 */
    const char *p = write_bytes("bad", 0, buf, n);
    expect_fail(tg_load_idx(ctx, p, NULL), p, "at byte 0: bad magic 0x1f000803");

    /* images where labels are expected (3 dimensions) */
    const char *ip = write_images("im", 0, 0, 0);
    expect_fail(tg_load_idx(ctx, ip, ip), ip, "expected 0x00000801");

    /* 5 dimensions */
    buf[0] = 0;
    buf[3] = 5;
    p = write_bytes("5d", 1, buf, n);
    expect_fail(tg_load_idx(ctx, p, NULL), p, "bad magic 0x00000805");
}

Test(idx, truncated) {
    /* header 16 bytes + 30 of data; cut 10: ends at byte 36 */
    const char *p = write_images("cut", 0, 0, 10);
    const char *lp = write_labels("l", 0, 5);
    cr_assert_null(tg_load_idx(ctx, p, lp));
    expect_error(p, "truncated at byte 36");
    cr_assert(strstr(tg_errmsg(ctx), "ending at byte 46"), "%s", tg_errmsg(ctx));
    tg_clear_error(ctx);

    /* the same inside a gzip stream */
    p = write_images("cut.gz", 1, 0, 10);
    expect_fail(tg_load_idx(ctx, p, lp), p, "truncated at byte 36");

    /* in the middle of the sizes */
    p = write_images("cut-header", 0, 0, 30 + 7);
    expect_fail(tg_load_idx(ctx, p, lp), p, "truncated at byte 9");

    /* an empty file */
    p = write_bytes("empty", 0, "", 0);
    expect_fail(tg_load_idx(ctx, p, lp), p, "truncated at byte 0");

    /* a gzip stream cut short (the compressed file truncated) */
    unsigned char raw[4096], comp[8192];
    uint32_t dims[3] = {100, 4, 10};
    unsigned char px[4000];
    for (int i = 0; i < 4000; i++) px[i] = (unsigned char)((i * 2654435761u) >> 24);
    size_t n = idx_bytes(raw, 0x08, 3, dims, px, 4000);
    (void)n;
    p = write_bytes("full.gz", 1, raw, 16 + 4000);
    FILE *f = fopen(p, "rb");
    size_t cn = fread(comp, 1, sizeof comp, f);
    fclose(f);
    p = write_bytes("chopped.gz", 0, comp, cn / 2);
    cr_assert_null(tg_load_idx(ctx, p, NULL));
    expect_error(p, "at byte");
    cr_assert(strstr(tg_errmsg(ctx), "truncated") || strstr(tg_errmsg(ctx), "read error"), "%s",
              tg_errmsg(ctx));
}

Test(idx, count_mismatch_and_trailing) {
    const char *ip = write_images("im", 0, 0, 0);
    const char *lp = write_labels("four", 0, 4);
    cr_assert_null(tg_load_idx(ctx, ip, lp));
    expect_error(lp, "has 5 items but");
    cr_assert(strstr(tg_errmsg(ctx), ip));
    cr_assert(strstr(tg_errmsg(ctx), "has 4 labels"), "%s", tg_errmsg(ctx));
    tg_clear_error(ctx);

    /* two bytes after the end given by the sizes */
    const char *tp = write_images("trailing.gz", 1, 2, 0);
    expect_fail(tg_load_idx(ctx, tp, NULL), tp, "at byte 46: unexpected data after the end");
    tp = write_images("trailing", 0, 1, 0);
    expect_fail(tg_load_idx(ctx, tp, NULL), tp, "at byte 46: unexpected data after the end");
}

Test(idx, sizes_zero_overflow_bad_labels) {
    unsigned char buf[64];
    uint32_t zero[3] = {5, 0, 2};
    const char *p = write_bytes("zero", 0, buf, idx_bytes(buf, 0x08, 3, zero, "", 0));
    expect_fail(tg_load_idx(ctx, p, NULL), p, "at byte 8: size 1 is 0");

    uint32_t huge[4] = {0xFFFFFFFFu, 0xFFFFFFFFu, 0xFFFFFFFFu, 0xFFFFFFFFu};
    p = write_bytes("huge", 0, buf, idx_bytes(buf, 0x08, 4, huge, "", 0));
    cr_assert_null(tg_load_idx(ctx, p, NULL));
    expect_error(p, "overflow");
    cr_assert(strstr(tg_errmsg(ctx), "at byte 8"), "%s", tg_errmsg(ctx));
    tg_clear_error(ctx);

    /* a plausible-looking but impossible size: 2^31 x 2^31 u8 */
    uint32_t big[2] = {0x80000000u, 0x80000000u};
    p = write_bytes("big", 0, buf, idx_bytes(buf, 0x08, 2, big, "", 0));
    expect_fail(tg_load_idx(ctx, p, NULL), p, "too many");

    /* negative label in an i8 file: byte 8 + 2 */
    const char *ip = write_images("im", 0, 0, 0);
    uint32_t d1[1] = {5};
    unsigned char neg[5] = {1, 2, 0xFF, 0, 1};
    p = write_bytes("neg", 0, buf, idx_bytes(buf, 0x09, 1, d1, neg, 5));
    expect_fail(tg_load_idx(ctx, ip, p), p, "at byte 10: label -1 is not a class index");

    /* float labels are refused */
    unsigned char fl[20] = {0};
    p = write_bytes("flab", 0, buf, idx_bytes(buf, 0x0D, 1, d1, fl, 20));
    expect_fail(tg_load_idx(ctx, ip, p), p, "f32 with 1 dimensions");
}

Test(idx, missing_file_and_sticky_error) {
    const char *p = tmp_path("does-not-exist");
    cr_assert_null(tg_load_idx(ctx, p, NULL));
    expect_error(p, "cannot open");
    char first[512];
    snprintf(first, sizeof first, "%s", tg_errmsg(ctx));
    /* with an error recorded, loaders return NULL and keep the first message */
    cr_assert_null(tg_load_idx(ctx, write_images("ok", 0, 0, 0), NULL));
    cr_assert_str_eq(tg_errmsg(ctx), first);
    tg_clear_error(ctx);
    cr_assert_null(tg_load_idx(ctx, NULL, NULL));
    expect_error(NULL, "tg_load_idx: argument images_path is NULL");
    cr_assert_null(tg_load_idx(NULL, p, NULL));
}

Test(idx, fashion_mnist_test_set) {
    struct stat st;
    if (stat(FASHION_DIR, &st) != 0 || !S_ISDIR(st.st_mode))
        cr_skip_test("%s does not exist (apt-get install dataset-fashion-mnist)", FASHION_DIR);
    tg_dataset *ds = tg_load_idx_dir(ctx, FASHION_DIR, "test");
    cr_assert_not_null(ds, "%s", tg_errmsg(ctx));
    cr_assert_eq(ds->n, 10000);
    cr_assert_eq(ds->n_features, 784);
    cr_assert_eq(ds->sample_shape[0], 28);
    cr_assert_eq(ds->sample_shape[1], 28);
    cr_assert_eq(ds->n_classes, 10);
    float lo = 1, hi = 0;
    for (int64_t i = 0; i < ds->n * ds->n_features; i++) {
        if (ds->x[i] < lo) lo = ds->x[i];
        if (ds->x[i] > hi) hi = ds->x[i];
    }
    cr_assert_eq(lo, 0.0f);
    cr_assert_eq(hi, 1.0f);
    int count[10] = {0};
    for (int64_t i = 0; i < ds->n; i++) count[ds->labels[i]]++;
    for (int c = 0; c < 10; c++) cr_assert_eq(count[c], 1000, "class %d", c); /* balanced */
    tg_dataset_free(ds);
}

/* ---- CSV ---- */

TestSuite(csv, .init = setup, .fini = teardown);

Test(csv, header_and_label_by_name) {
    const char *p = write_text("h.csv", "a,b,label,c\n1,2,0,3\n4,5,1,6\n-7.5,8e-1,3,0x10\n");
    tg_csv_opts o = tg_csv_defaults();
    o.y_name = "label";
    tg_dataset *ds = tg_load_csv(ctx, p, &o);
    cr_assert_not_null(ds, "%s", tg_errmsg(ctx));
    cr_assert_eq(ds->n, 3);
    cr_assert_eq(ds->n_features, 3);
    float want[9] = {1, 2, 3, 4, 5, 6, -7.5f, 0.8f, 16};
    for (int i = 0; i < 9; i++) cr_assert_eq(ds->x[i], want[i], "x[%d] = %g", i, ds->x[i]);
    cr_assert_eq(ds->labels[0], 0);
    cr_assert_eq(ds->labels[1], 1);
    cr_assert_eq(ds->labels[2], 3);
    cr_assert_eq(ds->n_classes, 4);
    tg_dataset_free(ds);

    o.y_name = "nope";
    expect_fail(tg_load_csv(ctx, p, &o), p, "no column named \"nope\"");
}

Test(csv, no_header_label_by_index) {
    const char *p = write_text("n.csv", "2,0.5,1.5\n1,2.5,3.5\n0,4.5,5.5\n");
    tg_csv_opts o = tg_csv_defaults();
    o.y_col = 0;
    tg_dataset *ds = tg_load_csv(ctx, p, &o);
    cr_assert_not_null(ds, "%s", tg_errmsg(ctx));
    cr_assert_eq(ds->n, 3); /* auto: the first line is numeric, so data */
    cr_assert_eq(ds->n_features, 2);
    cr_assert_eq(ds->labels[0], 2);
    cr_assert_eq(ds->labels[2], 0);
    cr_assert_eq(ds->x[0], 0.5f);
    cr_assert_eq(ds->x[5], 5.5f);
    cr_assert_eq(ds->n_classes, 3);
    tg_dataset_free(ds);

    /* negative index: from the end; the middle column as label */
    p = write_text("m.csv", "0.5,1,9\n0.25,0,8\n");
    o.y_col = -2;
    ds = tg_load_csv(ctx, p, &o);
    cr_assert_not_null(ds, "%s", tg_errmsg(ctx));
    cr_assert_eq(ds->labels[0], 1);
    cr_assert_eq(ds->x[0], 0.5f);
    cr_assert_eq(ds->x[1], 9.0f);
    cr_assert_eq(ds->x[3], 8.0f);
    tg_dataset_free(ds);

    /* defaults: the last column */
    ds = tg_load_csv(ctx, p, NULL);
    cr_assert_not_null(ds, "%s", tg_errmsg(ctx));
    cr_assert_eq(ds->labels[0], 9);
    cr_assert_eq(ds->n_classes, 10);
    tg_dataset_free(ds);

    o.y_col = 3;
    expect_fail(tg_load_csv(ctx, p, &o), p, "y_col 3 is outside the 3 columns");
}

Test(csv, crlf_bom_quotes_blank_lines) {
    const char *p = write_text("crlf.csv", "\xEF\xBB\xBF" "x , \"y\",class\r\n"
                                           "\r\n"
                                           " 1.5 , \"2\" ,1\r\n"
                                           "   \r\n"
                                           "3,\t4 ,\"0\"\r\n"
                                           "\r\n");
    tg_dataset *ds = tg_load_csv(ctx, p, NULL);
    cr_assert_not_null(ds, "%s", tg_errmsg(ctx));
    cr_assert_eq(ds->n, 2);
    cr_assert_eq(ds->n_features, 2);
    cr_assert_eq(ds->x[0], 1.5f);
    cr_assert_eq(ds->x[1], 2.0f);
    cr_assert_eq(ds->x[2], 3.0f);
    cr_assert_eq(ds->x[3], 4.0f);
    cr_assert_eq(ds->labels[0], 1);
    cr_assert_eq(ds->labels[1], 0);
    tg_dataset_free(ds);

    /* the committed iris fixture: CRLF, quoted header name, blank last line */
    tg_csv_opts o = tg_csv_defaults();
    o.y_name = "species";
    ds = tg_load_csv(ctx, FIXTURES "/iris-tiny.csv", &o);
    cr_assert_not_null(ds, "%s", tg_errmsg(ctx));
    cr_assert_eq(ds->n, 6);
    cr_assert_eq(ds->n_features, 4);
    cr_assert_eq(ds->n_classes, 3);
    cr_assert_eq(ds->x[4 * 5 + 2], 5.1f);
    cr_assert_eq(ds->labels[5], 2);
    tg_dataset_free(ds);
    /* no trailing newline at all */
    p = write_text("nonl.csv", "1,2,0\n3,4,1");
    ds = tg_load_csv(ctx, p, NULL);
    cr_assert_not_null(ds, "%s", tg_errmsg(ctx));
    cr_assert_eq(ds->n, 2);
    cr_assert_eq(ds->labels[1], 1);
    tg_dataset_free(ds);
}

Test(csv, wrong_field_count) {
    const char *p = write_text("bad.csv", "a,b,c\n1,2,0\n\n3,4\n5,6,1\n");
    cr_assert_null(tg_load_csv(ctx, p, NULL));
    char want[600];
    snprintf(want, sizeof want, "tg_load_csv: %s:4: expected 3 fields (as in line 1), got 2", p);
    cr_assert_str_eq(tg_errmsg(ctx), want);
    tg_clear_error(ctx);

    p = write_text("extra.csv", "1,2,0\n1,2,0,\n");
    expect_fail(tg_load_csv(ctx, p, NULL), p, ":2: expected 3 fields (as in line 1), got 4");

    expect_fail(tg_load_csv(ctx, FIXTURES "/bad-field-count.csv", NULL), "bad-field-count.csv:3:",
                "expected 3 fields");
}

/* CSV files (file name, text) that tg_load_csv refuses with its defaults,
 * and what its message says */
static const struct {
    const char *file, *text, *what;
} BAD_CSV[] = {
    {"empty-field.csv", "1,2,0\n1,,0\n", ":2: feature field 2 is empty"},
    {"nan.csv", "1,2,0\nnan,2,0\n", ":2: feature field 1 \"nan\" is not finite"},
    {"range.csv", "1,2,0\n1e39,2,0\n", ":2: feature field 1 \"1e39\" is outside the float range"},
    {"frac.csv", "1,2,0\n1,2,2.5\n", ":2: label field 3 \"2.5\" is not a non-negative integer"},
    {"neg.csv", "x,y\n1,-1\n",
     ":2: label field 2 (\"y\") \"-1\" is not a non-negative integer"},
    {"quote.csv", "1,\"2,0\n", ":1: field 2: unterminated quote"},
    {"after.csv", "1,2,0\n1,\"2\"x,0\n", ":2: field 2: text after the closing quote"},
};

Test(csv, non_numeric_and_bad_values) {
    const char *p = write_text("nn.csv", "a,b,y\n1,2,0\n3,x1,1\n");
    cr_assert_null(tg_load_csv(ctx, p, NULL));
    char want[600];
    snprintf(want, sizeof want,
             "tg_load_csv: %s:3: feature field 2 (\"b\") \"x1\" is not a number", p);
    cr_assert_str_eq(tg_errmsg(ctx), want);
    tg_clear_error(ctx);

    tg_csv_opts o = tg_csv_defaults();
    o.delimiter = ';';
    o.header = TG_CSV_HEADER_NO;
    expect_fail(tg_load_csv(ctx, FIXTURES "/bad-number.csv", &o), "bad-number.csv:2:",
                "field 2 \"oops\" is not a number");

    for (size_t i = 0; i < sizeof BAD_CSV / sizeof BAD_CSV[0]; i++) {
        p = write_text(BAD_CSV[i].file, BAD_CSV[i].text);
        expect_fail(tg_load_csv(ctx, p, NULL), p, BAD_CSV[i].what);
    }
}

Test(csv, empty_and_header_only) {
    const char *p = write_text("e.csv", "\n  \r\n");
    expect_fail(tg_load_csv(ctx, p, NULL), p, "no data rows");
    p = write_text("h.csv", "a,b,c\n");
    expect_fail(tg_load_csv(ctx, p, NULL), p, "header but no data rows");
    /* y_name on a headerless file */
    p = write_text("d.csv", "1,2,0\n");
    tg_csv_opts o = tg_csv_defaults();
    o.y_name = "y";
    expect_fail(tg_load_csv(ctx, p, &o), p, "needs a header line");
    expect_fail(tg_load_csv(ctx, tmp_path("missing.csv"), NULL), "missing.csv", "cannot open");
}

Test(csv, regression_targets_and_no_y) {
    const char *p = write_text("r.csv", "f1,f2,t1,t2,f3\n1,2,0.5,-0.5,3\n4,5,1.5,-1.5,6\n");
    tg_csv_opts o = tg_csv_defaults();
    o.y_kind = TG_CSV_Y_TARGETS;
    o.y_name = "t1";
    o.n_y = 2;
    tg_dataset *ds = tg_load_csv(ctx, p, &o);
    cr_assert_not_null(ds, "%s", tg_errmsg(ctx));
    cr_assert_null(ds->labels);
    cr_assert_eq(ds->n_targets, 2);
    cr_assert_eq(ds->n_features, 3);
    float wx[6] = {1, 2, 3, 4, 5, 6}, wt[4] = {0.5f, -0.5f, 1.5f, -1.5f};
    for (int i = 0; i < 6; i++) cr_assert_eq(ds->x[i], wx[i]);
    for (int i = 0; i < 4; i++) cr_assert_eq(ds->targets[i], wt[i]);
    tg_dataset_free(ds);

    o.y_name = "f3"; /* two targets from the last column: past the end */
    expect_fail(tg_load_csv(ctx, p, &o), p, "go past the 5 columns");

    o = tg_csv_defaults();
    o.y_kind = TG_CSV_Y_NONE;
    ds = tg_load_csv(ctx, p, &o);
    cr_assert_not_null(ds, "%s", tg_errmsg(ctx));
    cr_assert_eq(ds->n_features, 5);
    cr_assert_null(ds->labels);
    cr_assert_null(ds->targets);
    tg_dataset_free(ds);

    /* one column only, as labels: no features */
    p = write_text("one.csv", "1\n2\n");
    expect_fail(tg_load_csv(ctx, p, NULL), p, "no feature columns");
}

/* ---- shuffling ---- */

TestSuite(shuffle, .init = setup, .fini = teardown);

static void iota(int64_t *a, int64_t n) {
    for (int64_t i = 0; i < n; i++) a[i] = i;
}

Test(shuffle, permutation_and_deterministic) {
    enum { N = 1000 };
    int64_t a[N], b[N], c[N];
    iota(a, N);
    iota(b, N);
    iota(c, N);
    tg_seed(ctx, 7);
    tg_shuffle_indices(ctx, a, N);
    tg_seed(ctx, 7);
    tg_shuffle_indices(ctx, b, N);
    tg_seed(ctx, 8);
    tg_shuffle_indices(ctx, c, N);
    cr_assert_eq(memcmp(a, b, sizeof a), 0, "same seed, same permutation");
    cr_assert_neq(memcmp(a, c, sizeof a), 0, "another seed, another permutation");
    char seen[N] = {0};
    int64_t moved = 0;
    for (int i = 0; i < N; i++) {
        cr_assert(a[i] >= 0 && a[i] < N);
        cr_assert_eq(seen[a[i]], 0, "%lld twice", (long long)a[i]);
        seen[a[i]] = 1;
        moved += a[i] != i;
    }
    cr_assert_gt(moved, N / 2);
    tg_shuffle_indices(ctx, a, 0); /* no-op */
    tg_shuffle_indices(ctx, a, 1);
    cr_assert(tg_ok(ctx));
}

Test(shuffle, uniform_over_permutations) {
    /* every permutation of 3 equally often: catches j drawn from [0, i) */
    int count[6] = {0};
    for (int t = 0; t < 6000; t++) {
        int64_t a[3] = {0, 1, 2};
        tg_shuffle_indices(ctx, a, 3);
        int code = (int)(a[0] * 2 + (a[1] > a[2]));
        count[code]++;
    }
    for (int k = 0; k < 6; k++) cr_assert(count[k] > 850 && count[k] < 1150, "%d: %d", k, count[k]);
}

/* ---- datasets, batches, split, scaler ---- */

TestSuite(dataset, .init = setup, .fini = teardown);

/* n samples, 2 features: x = (i, -i), label i % 3 */
static tg_dataset *counting(int64_t n) {
    tg_dataset *ds = counting_dataset(ctx, n);
    ds->n_classes = 3;
    return ds;
}

Test(dataset, new_and_arguments) {
    tg_dataset *ds = tg_dataset_new(ctx, 4, 3, 2);
    cr_assert_not_null(ds);
    cr_assert_null(ds->labels);
    cr_assert_not_null(ds->targets);
    for (int i = 0; i < 12; i++) cr_assert_eq(ds->x[i], 0.0f);
    for (int i = 0; i < 8; i++) cr_assert_eq(ds->targets[i], 0.0f);
    tg_dataset_free(ds);
    ds = tg_dataset_new(ctx, 0, 3, -1);
    cr_assert_not_null(ds);
    cr_assert_null(ds->labels);
    cr_assert_null(ds->targets);
    tg_dataset_free(ds);
    tg_dataset_free(NULL);
    expect_fail(tg_dataset_new(ctx, 4, 0, 0), NULL,
                "tg_dataset_new: need n >= 0 and n_features >= 1");
    cr_assert_null(tg_dataset_new(ctx, INT64_MAX / 2, 1000, 0));
    expect_error(NULL, "too large");
    cr_assert_null(tg_dataset_new(NULL, 1, 1, 0));
}

Test(dataset, subset_and_batch) {
    tg_dataset *ds = counting(10);
    int64_t idx[3] = {7, 2, 7};
    tg_dataset *s = tg_dataset_subset(ctx, ds, idx, 3);
    cr_assert_not_null(s, "%s", tg_errmsg(ctx));
    cr_assert_eq(s->n, 3);
    cr_assert_eq(s->x[0], 7.0f);
    cr_assert_eq(s->x[3], -2.0f);
    cr_assert_eq(s->labels[1], 2);
    cr_assert_eq(s->n_classes, 3);
    tg_tensor *x, *y;
    cr_assert_eq(tg_dataset_batch(ctx, ds, idx, 3, TG_F64, &x, &y), 0);
    cr_assert_eq(tg_dtype_of(x), TG_F64);
    cr_assert_eq(tg_dim(x, 0), 3);
    cr_assert_eq(tg_dim(x, 1), 2);
    cr_assert_eq(((double *)tg_data(x))[3], -2.0);
    cr_assert_eq(tg_dtype_of(y), TG_I32);
    cr_assert_eq(((int32_t *)tg_data(y))[0], 1);
    idx[1] = 10;
    expect_fail(tg_dataset_subset(ctx, ds, idx, 3), NULL,
                "tg_dataset_subset: index 10 (at position 1) is outside [0, 10)");
    cr_assert_eq(tg_dataset_batch(ctx, ds, idx, 3, TG_F32, &x, &y), -1);
    expect_fail(x, NULL, "tg_dataset_batch: index 10");
    cr_assert_eq(tg_dataset_batch(ctx, ds, idx, 1, TG_I32, &x, NULL), -1);
    expect_error(NULL, "x_dtype must be f32 or f64");
    tg_dataset_free(s);
    tg_dataset_free(ds);
}

/* Run one epoch; marks seen samples; returns the number of batches. */
static int run_epoch(tg_batcher *b, int *seen, int64_t *sizes, int64_t *first) {
    tg_tensor *x, *y;
    int nb = 0, r;
    while ((r = tg_batcher_next(b, &x, &y)) == 1) {
        cr_assert_eq(tg_ndim(x), 2);
        cr_assert_eq(tg_dim(x, 1), 2);
        cr_assert_eq(tg_dim(y, 0), tg_dim(x, 0));
        const float *xd = tg_data(x);
        const int32_t *yd = tg_data(y);
        for (int64_t i = 0; i < tg_dim(x, 0); i++) {
            int s = (int)xd[2 * i];
            cr_assert_eq(xd[2 * i + 1], (float)-s, "rows stay whole");
            cr_assert_eq(yd[i], s % 3, "labels follow their samples");
            seen[s]++;
            if (nb == 0 && i == 0 && first) *first = s;
        }
        sizes[nb++] = tg_dim(x, 0);
        tg_reset(ctx);
    }
    cr_assert_eq(r, 0, "%s", tg_errmsg(ctx));
    return nb;
}

Test(dataset, batches_cover_every_sample_once) {
    tg_dataset *ds = counting(10);
    tg_batcher b;
    cr_assert_eq(tg_batcher_init(&b, ctx, ds, 3, TG_BATCH_SHUFFLE), 0);
    cr_assert_eq(b.n_batches, 4);
    int64_t orders[3][10];
    for (int e = 0; e < 3; e++) {
        int seen[10] = {0};
        int64_t sizes[8];
        int nb = run_epoch(&b, seen, sizes, NULL);
        cr_assert_eq(nb, 4);
        cr_assert_eq(sizes[0], 3);
        cr_assert_eq(sizes[3], 1, "the last partial batch");
        for (int i = 0; i < 10; i++) cr_assert_eq(seen[i], 1, "epoch %d sample %d", e, i);
        cr_assert_eq(b.epoch, e + 1);
        memcpy(orders[e], b.order, sizeof orders[e]);
    }
    cr_assert(memcmp(orders[0], orders[1], sizeof orders[0]) != 0 ||
                  memcmp(orders[1], orders[2], sizeof orders[0]) != 0,
              "a new epoch reshuffles");
    tg_batcher_free(&b);
    tg_batcher_free(&b); /* twice is fine */

    /* without shuffling: in order; drop_last drops the 1-sample batch */
    cr_assert_eq(tg_batcher_init(&b, ctx, ds, 3, TG_BATCH_DROP_LAST), 0);
    cr_assert_eq(b.n_batches, 3);
    int seen[10] = {0};
    int64_t sizes[8], first = -1;
    cr_assert_eq(run_epoch(&b, seen, sizes, &first), 3);
    cr_assert_eq(first, 0);
    for (int i = 0; i < 9; i++) cr_assert_eq(seen[i], 1);
    cr_assert_eq(seen[9], 0);
    tg_batcher_free(&b);

    /* batch larger than the dataset: one batch of everything */
    cr_assert_eq(tg_batcher_init(&b, ctx, ds, 64, TG_BATCH_SHUFFLE), 0);
    memset(seen, 0, sizeof seen);
    cr_assert_eq(run_epoch(&b, seen, sizes, NULL), 1);
    cr_assert_eq(sizes[0], 10);
    tg_batcher_free(&b);
    tg_dataset_free(ds);
}

Test(dataset, batcher_deterministic_per_seed_and_f64_targets) {
    tg_dataset *ds = tg_dataset_new(ctx, 7, 1, 2);
    for (int i = 0; i < 7; i++) {
        ds->x[i] = (float)i;
        ds->targets[2 * i] = (float)(10 * i);
        ds->targets[2 * i + 1] = (float)(-10 * i);
    }
    int64_t firsts[2][7];
    for (int run = 0; run < 2; run++) {
        tg_seed(ctx, 99);
        tg_batcher b;
        cr_assert_eq(tg_batcher_init(&b, ctx, ds, 2, TG_BATCH_SHUFFLE | TG_BATCH_F64), 0);
        tg_tensor *x, *y;
        int k = 0;
        while (tg_batcher_next(&b, &x, &y) == 1) {
            cr_assert_eq(tg_dtype_of(x), TG_F64);
            cr_assert_eq(tg_dtype_of(y), TG_F64);
            cr_assert_eq(tg_dim(y, 1), 2);
            const double *xd = tg_data(x), *yd = tg_data(y);
            for (int64_t i = 0; i < tg_dim(x, 0); i++) {
                cr_assert_eq(yd[2 * i], 10 * xd[i]);
                cr_assert_eq(yd[2 * i + 1], -10 * xd[i]);
                firsts[run][k++] = (int64_t)xd[i];
            }
            tg_reset(ctx);
        }
        cr_assert_eq(k, 7);
        tg_batcher_free(&b);
    }
    cr_assert_eq(memcmp(firsts[0], firsts[1], sizeof firsts[0]), 0);
    tg_dataset_free(ds);
}

/* counts every allocation the context makes */
static int64_t n_allocs;
static void *counting_alloc(void *ud, void *ptr, size_t osize, size_t nsize) {
    (void)ud;
    (void)osize;
    if (nsize == 0) {
        free(ptr);
        return NULL;
    }
    if (!ptr || nsize > osize) n_allocs++;
    return realloc(ptr, nsize);
}

Test(dataset, no_heap_allocation_per_batch) {
    tg_ctx *c = tg_ctx_new_with_alloc(5, counting_alloc, NULL);
    cr_assert(c);
    tg_dataset *ds = tg_dataset_new(c, 1000, 20, 0);
    tg_batcher b;
    cr_assert_eq(tg_batcher_init(&b, c, ds, 32, TG_BATCH_SHUFFLE), 0);
    tg_tensor *x, *y;
    while (tg_batcher_next(&b, &x, &y) == 1) tg_reset(c); /* warm-up epoch */
    int64_t before = n_allocs;
    int batches = 0;
    for (int e = 0; e < 2; e++)
        while (tg_batcher_next(&b, &x, &y) == 1) {
            batches++;
            tg_reset(c);
        }
    cr_assert_eq(batches, 2 * 32);
    cr_assert_eq(n_allocs, before, "%lld allocations in two epochs",
                 (long long)(n_allocs - before));
    tg_batcher_free(&b);
    tg_dataset_free(ds);
    tg_ctx_free(c);
}

Test(dataset, batcher_arguments) {
    tg_dataset *ds = counting(5);
    tg_batcher b;
    cr_assert_eq(tg_batcher_init(&b, ctx, ds, 0, 0), -1);
    expect_error(NULL, "tg_batcher_init: batch_size must be >= 1, got 0");
    tg_clear_error(ctx);
    cr_assert_eq(tg_batcher_init(&b, ctx, ds, 2, 64), -1);
    expect_error(NULL, "unknown flags");
    tg_clear_error(ctx);
    cr_assert_eq(tg_batcher_init(&b, ctx, NULL, 2, 0), -1);
    expect_error(NULL, "tg_batcher_init: argument ds is NULL");
    tg_clear_error(ctx);
    tg_tensor *x;
    cr_assert_eq(tg_batcher_next(&b, &x, NULL), -1); /* failed init: unusable */
    tg_batcher_free(&b);
    /* y may be NULL: only x */
    cr_assert_eq(tg_batcher_init(&b, ctx, ds, 2, 0), 0);
    cr_assert_eq(tg_batcher_next(&b, &x, NULL), 1);
    cr_assert_eq(tg_dim(x, 0), 2);
    ds->n = 4; /* the order refers to 5 samples */
    cr_assert_eq(tg_batcher_next(&b, &x, NULL), -1);
    expect_error(NULL, "tg_batcher_next: the dataset has 4 samples but had 5 at tg_batcher_init");
    ds->n = 5;
    tg_batcher_free(&b);
    tg_dataset_free(ds);
}

Test(dataset, split_sizes_disjoint_deterministic) {
    tg_dataset *ds = counting(100);
    tg_dataset *tr, *te, *tr2, *te2, *tr3, *te3;
    tg_seed(ctx, 42);
    cr_assert_eq(tg_dataset_split(ctx, ds, 0.2, &tr, &te), 0, "%s", tg_errmsg(ctx));
    cr_assert_eq(tr->n, 80);
    cr_assert_eq(te->n, 20);
    int seen[100] = {0};
    for (int64_t i = 0; i < tr->n; i++) seen[(int)tr->x[2 * i]]++;
    for (int64_t i = 0; i < te->n; i++) seen[(int)te->x[2 * i]]++;
    for (int i = 0; i < 100; i++) cr_assert_eq(seen[i], 1, "sample %d in exactly one part", i);
    for (int64_t i = 1; i < te->n; i++) cr_assert_lt(te->x[2 * (i - 1)], te->x[2 * i], "order kept");
    for (int64_t i = 0; i < tr->n; i++) cr_assert_eq(tr->labels[i], (int)tr->x[2 * i] % 3);
    cr_assert_eq(te->n_classes, 3);
    /* the test part is not simply the last 20 */
    cr_assert_lt(te->x[0], 80.0f);

    tg_seed(ctx, 42);
    cr_assert_eq(tg_dataset_split(ctx, ds, 0, &tr2, &te2), 0); /* 0 means 0.2 */
    cr_assert_eq(te2->n, 20);
    cr_assert_eq(memcmp(te->x, te2->x, 40 * sizeof(float)), 0, "same seed, same split");
    tg_seed(ctx, 43);
    cr_assert_eq(tg_dataset_split(ctx, ds, 0.2, &tr3, &te3), 0);
    cr_assert_neq(memcmp(te->x, te3->x, 40 * sizeof(float)), 0, "another seed, another split");
    tg_dataset_free(tr);
    tg_dataset_free(te);
    tg_dataset_free(tr2);
    tg_dataset_free(te2);
    tg_dataset_free(tr3);
    tg_dataset_free(te3);

    cr_assert_eq(tg_dataset_split(ctx, ds, 1.0, &tr, &te), -1);
    expect_fail(tr, NULL, "test_fraction must be below 1, got 1");
    /* tiny fractions still give one test sample; n = 2 works */
    ds->n = 2;
    cr_assert_eq(tg_dataset_split(ctx, ds, 0.001, &tr, &te), 0);
    cr_assert_eq(tr->n, 1);
    cr_assert_eq(te->n, 1);
    tg_dataset_free(tr);
    tg_dataset_free(te);
    ds->n = 1;
    cr_assert_eq(tg_dataset_split(ctx, ds, 0.5, &tr, &te), -1);
    expect_error(NULL, "need at least 2 samples");
    tg_dataset_free(ds);
}

Test(dataset, scaler_uses_train_statistics) {
    tg_dataset *ds = tg_dataset_new(ctx, 500, 3, 0);
    for (int i = 0; i < 500; i++) {
        ds->x[3 * i] = (float)(100 + 5 * tg_rand_normal(ctx));
        ds->x[3 * i + 1] = (float)(-3 + 0.01 * tg_rand_normal(ctx));
        ds->x[3 * i + 2] = 7.25f; /* constant */
    }
    tg_dataset *tr, *te;
    cr_assert_eq(tg_dataset_split(ctx, ds, 0.2, &tr, &te), 0);
    tg_dataset *te_orig = tg_dataset_subset(ctx, te, (int64_t[]){0, 1, 2}, 3);
    tg_scaler s;
    cr_assert_eq(tg_scaler_fit(ctx, &s, tr), 0, "%s", tg_errmsg(ctx));
    cr_assert_float_eq(s.mean[0], 100.0f, 1.0f);
    cr_assert_float_eq(s.std[0], 5.0f, 0.5f);
    cr_assert_eq(s.std[2], 1.0f, "constant feature: std 1");
    cr_assert_eq(s.mean[2], 7.25f);
    cr_assert_eq(tg_scaler_apply(&s, tr), 0);
    for (int j = 0; j < 3; j++) {
        double m = 0, v = 0;
        for (int64_t i = 0; i < tr->n; i++) m += tr->x[3 * i + j];
        m /= (double)tr->n;
        for (int64_t i = 0; i < tr->n; i++) v += (tr->x[3 * i + j] - m) * (tr->x[3 * i + j] - m);
        v /= (double)tr->n;
        cr_assert(fabs(m) < 1e-4, "feature %d mean %g", j, m);
        if (j < 2) cr_assert(fabs(sqrt(v) - 1) < 1e-4, "feature %d std %g", j, sqrt(v));
        else cr_assert_eq(v, 0.0, "constant stays constant (centred)");
    }
    cr_assert_eq(tg_scaler_apply(&s, te), 0);
    for (int i = 0; i < 3; i++)
        for (int j = 0; j < 3; j++)
            cr_assert_eq(te->x[3 * i + j], (te_orig->x[3 * i + j] - s.mean[j]) / s.std[j],
                         "test standardised with the train statistics");
    tg_dataset *other = tg_dataset_new(ctx, 2, 4, -1);
    cr_assert_eq(tg_scaler_apply(&s, other), -1);
    expect_error(NULL, "fitted on 3 features, the dataset has 4");
    tg_scaler_free(&s);
    tg_scaler_free(&s);
    tg_dataset_free(other);
    tg_dataset_free(te_orig);
    tg_dataset_free(tr);
    tg_dataset_free(te);
    tg_dataset_free(ds);
}

Test(dataset, end_to_end_csv_split_scale_batches) {
    /* the usual pipeline on a CSV: load, split, fit on train, batches */
    char text[8192];
    size_t k = (size_t)snprintf(text, sizeof text, "a,b,label\n");
    for (int i = 0; i < 50; i++)
        k += (size_t)snprintf(text + k, sizeof text - k, "%d,%d.5,%d\r\n", i, 100 - i, i % 2);
    const char *p = write_text("pipe.csv", text);
    tg_dataset *ds = tg_load_csv(ctx, p, NULL);
    cr_assert_not_null(ds, "%s", tg_errmsg(ctx));
    tg_dataset *tr, *te;
    cr_assert_eq(tg_dataset_split(ctx, ds, 0.2, &tr, &te), 0);
    tg_scaler s;
    cr_assert_eq(tg_scaler_fit(ctx, &s, tr), 0);
    cr_assert_eq(tg_scaler_apply(&s, tr), 0);
    cr_assert_eq(tg_scaler_apply(&s, te), 0);
    tg_batcher b;
    cr_assert_eq(tg_batcher_init(&b, ctx, tr, 16, TG_BATCH_SHUFFLE), 0);
    tg_tensor *x, *y;
    int64_t total = 0;
    while (tg_batcher_next(&b, &x, &y) == 1) {
        total += tg_dim(x, 0);
        tg_reset(ctx);
    }
    cr_assert_eq(total, 40);
    tg_batcher_free(&b);
    tg_scaler_free(&s);
    tg_dataset_free(tr);
    tg_dataset_free(te);
    tg_dataset_free(ds);
    cr_assert(tg_ok(ctx));
}
