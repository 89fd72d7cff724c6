/* SPDX-License-Identifier: MIT */
/* test_defects.c: one test per defect of the reliability review (issue 10),
 * each written to fail before its fix. */
#include <criterion/criterion.h>

#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zlib.h>

#define XXH_INLINE_ALL
#include <xxhash.h>

#include "internal.h"
#include "faulty_alloc.h"
#include "tapegrad.h"
#undef tg_scratch /* the public function, as a user calls it (internal.h maps it) */

#ifndef TGI_UNPOISON /* (an engine without arena poisoning) */
#define TGI_UNPOISON(p, n) ((void)(p), (void)(n))
#endif

static char dir[64];

static void mkdir_tmp(void) {
    snprintf(dir, sizeof dir, "/tmp/tg_rel_XXXXXX");
    cr_assert_not_null(mkdtemp(dir));
}

static void path_in(char *out, size_t n, const char *name) { snprintf(out, n, "%s/%s", dir, name); }

static void write_bytes(const char *path, const void *p, size_t n) {
    FILE *f = fopen(path, "wb");
    cr_assert_not_null(f);
    cr_assert_eq(fwrite(p, 1, n, f), n);
    fclose(f);
}

static void assert_err_has(tg_ctx *ctx, const char *what) {
    cr_assert(!tg_ok(ctx), "expected an error containing \"%s\"", what);
    cr_assert(strstr(tg_errmsg(ctx), what), "message \"%s\" lacks \"%s\"", tg_errmsg(ctx), what);
}

/* ---- 1: tg_save never replaces what is not a regular file ---- */

Test(defect1, save_refuses_a_fifo_a_device_and_a_symlink) {
    mkdir_tmp();
    tg_ctx *ctx = tg_ctx_new(1);
    tg_param(ctx, "w", TG_F32, 1, (int64_t[]){3});
    char fifo[128], target[128], link[128];
    path_in(fifo, sizeof fifo, "fifo");
    cr_assert_eq(mkfifo(fifo, 0600), 0);
    cr_assert_eq(tg_save(ctx, fifo), -1);
    assert_err_has(ctx, "is a FIFO; tg_save replaces only a regular file");
    struct stat st;
    cr_assert_eq(lstat(fifo, &st), 0);
    cr_assert(S_ISFIFO(st.st_mode), "the FIFO was replaced");
    tg_clear_error(ctx);

    /* a device (a character device: /dev/null, which must stay one) */
    cr_assert_eq(tg_save(ctx, "/dev/null"), -1);
    assert_err_has(ctx, "is a character device");
    cr_assert_eq(stat("/dev/null", &st), 0);
    cr_assert(S_ISCHR(st.st_mode));
    tg_clear_error(ctx);

    /* a symbolic link to a checkpoint: refused, link and target as they were */
    path_in(target, sizeof target, "real.safetensors");
    path_in(link, sizeof link, "link.safetensors");
    cr_assert_eq(tg_save(ctx, target), 0, "%s", tg_errmsg(ctx));
    cr_assert_eq(symlink(target, link), 0);
    cr_assert_eq(tg_save(ctx, link), -1);
    assert_err_has(ctx, "is a symbolic link");
    cr_assert_eq(lstat(link, &st), 0);
    cr_assert(S_ISLNK(st.st_mode));
    tg_clear_error(ctx);
    /* a directory */
    cr_assert_eq(tg_save(ctx, dir), -1);
    assert_err_has(ctx, "is a directory");
    tg_ctx_free(ctx);
}

/* ---- 2: the loaders never block or read without end ---- */

static void expect_not_regular(tg_ctx *ctx, const char *kind) {
    assert_err_has(ctx, kind);
    assert_err_has(ctx, "not a regular file");
    tg_clear_error(ctx);
}

Test(defect2, loaders_refuse_a_fifo_with_no_writer_at_once, .timeout = 10) {
    mkdir_tmp();
    char fifo[128];
    path_in(fifo, sizeof fifo, "fifo");
    cr_assert_eq(mkfifo(fifo, 0600), 0);
    tg_ctx *ctx = tg_ctx_new(1);
    tg_param(ctx, "w", TG_F32, 1, (int64_t[]){3});
    cr_assert_eq(tg_load(ctx, fifo), -1);
    expect_not_regular(ctx, "a FIFO");
    cr_assert_null(tg_checkpoint_meta(ctx, fifo, "format"));
    expect_not_regular(ctx, "a FIFO");
    cr_assert_null(tg_load_idx(ctx, fifo, NULL));
    expect_not_regular(ctx, "a FIFO");
    cr_assert_null(tg_load_csv(ctx, fifo, NULL));
    expect_not_regular(ctx, "a FIFO");
    cr_assert_null(tg_load_npy(ctx, fifo)); /* (these two blocked in fopen before) */
    expect_not_regular(ctx, "a FIFO");
    cr_assert_eq(tg_resume_load(ctx, fifo, NULL, NULL, NULL), -1);
    expect_not_regular(ctx, "a FIFO");
    /* tg_load_idx_dir finds names without opening them */
    char im[128];
    path_in(im, sizeof im, "train-images-idx3-ubyte");
    cr_assert_eq(mkfifo(im, 0600), 0);
    char lb[128];
    path_in(lb, sizeof lb, "train-labels-idx1-ubyte");
    cr_assert_eq(mkfifo(lb, 0600), 0);
    cr_assert_null(tg_load_idx_dir(ctx, dir, "train"));
    expect_not_regular(ctx, "a FIFO");
    tg_ctx_free(ctx);
}

Test(defect2, csv_refuses_an_endless_device, .timeout = 10) {
    tg_ctx *ctx = tg_ctx_new(1);
    cr_assert_null(tg_load_csv(ctx, "/dev/urandom", NULL));
    expect_not_regular(ctx, "a character device");
    cr_assert_null(tg_load_idx(ctx, "/dev/zero", NULL));
    expect_not_regular(ctx, "a character device");
    cr_assert_eq(tg_load(ctx, "/dev/zero"), -1);
    expect_not_regular(ctx, "a character device");
    tg_ctx_free(ctx);
}

/* ---- 3: sizes near SIZE_MAX do not wrap in the arena ---- */

static int nop_forward(tg_op_call *c) { (void)c; return 0; }

Test(defect3, huge_scratch_and_attr_sizes_are_out_of_memory) {
    tg_ctx *ctx = tg_ctx_new(1);
    cr_assert_null(tg_scratch(ctx, SIZE_MAX));
    assert_err_has(ctx, "tg_scratch: out of memory");
    tg_clear_error(ctx);
    cr_assert_null(tg_scratch(ctx, SIZE_MAX - 100));
    assert_err_has(ctx, "out of memory");
    tg_clear_error(ctx);
    cr_assert_null(tg_scratch(ctx, SIZE_MAX / 2 + 1));
    assert_err_has(ctx, "out of memory");
    tg_clear_error(ctx);
    /* an ordinary block still works afterwards */
    unsigned char *p = tg_scratch(ctx, 100);
    cr_assert_not_null(p);
    memset(p, 1, 100);
    static const tg_op op = {"huge_attr", nop_forward, NULL};
    tg_tensor *x = tg_new(ctx, TG_F32, 1, (int64_t[]){2});
    char attr[16] = {0};
    cr_assert_null(tg_apply(ctx, &op, &x, 1, TG_F32, 1, (int64_t[]){2}, attr, SIZE_MAX - 10));
    assert_err_has(ctx, "huge_attr: out of memory");
    tg_ctx_free(ctx);
}

/* ---- 4: no arithmetic on a NULL pointer in the GEMM's pack-A path (found by
 * clang's UBSan: this test fails in the clang sanitizer build before the fix) ---- */

Test(defect4, matmul_backward_of_an_mlp_layer_is_defined_behaviour) {
    tg_ctx *ctx = tg_ctx_new(1);
    tg_tensor *x = tg_new(ctx, TG_F32, 2, (int64_t[]){64, 784});
    tg_tensor *w = tg_param(ctx, "w", TG_F32, 2, (int64_t[]){784, 128});
    tg_fill_uniform(ctx, x, 0, 1);
    tg_fill_uniform(ctx, w, -0.1, 0.1);
    tg_set_requires_grad(x, 1);
    tg_backward(ctx, tg_sum(ctx, tg_matmul(ctx, x, w)));
    cr_assert(tg_ok(ctx), "%s", tg_errmsg(ctx));
    /* d sum(x w)/dw[p][j] = sum_i x[i][p] */
    const float *gx = tg_data(x), *g = tg_grad(w);
    double col = 0;
    for (int i = 0; i < 64; i++) col += gx[i * 784 + 5];
    cr_assert_float_eq(g[5 * 128 + 7], col, 1e-3 * col);
    tg_ctx_free(ctx);
}

/* ---- 5: batch sizes up to INT64_MAX ---- */

Test(defect5, batcher_with_int64_max_batch_size_counts_one_batch) {
    tg_ctx *ctx = tg_ctx_new(1);
    tg_dataset *ds = tg_dataset_new(ctx, 10, 2, 0);
    tg_batcher b;
    cr_assert_eq(tg_batcher_init(&b, ctx, ds, INT64_MAX, 0), 0, "%s", tg_errmsg(ctx));
    cr_assert_eq(b.n_batches, 1);
    tg_tensor *x, *y;
    cr_assert_eq(tg_batcher_next(&b, &x, &y), 1);
    cr_assert_eq(tg_dim(x, 0), 10);
    cr_assert_eq(tg_batcher_next(&b, &x, &y), 0);
    tg_batcher_free(&b);
    cr_assert_eq(tg_batcher_init(&b, ctx, ds, INT64_MAX, TG_BATCH_DROP_LAST), 0);
    cr_assert_eq(b.n_batches, 0);
    tg_batcher_free(&b);
    tg_dataset_free(ds);
    tg_ctx_free(ctx);
}

/* ---- 6: trailing bytes after a gzip'd IDX file are refused, as after a plain one ---- */

static void gzip_file(const char *src, const char *dst, const char *tail, size_t tail_n) {
    FILE *f = fopen(src, "rb");
    cr_assert_not_null(f);
    unsigned char buf[4096];
    size_t n = fread(buf, 1, sizeof buf, f);
    fclose(f);
    gzFile g = gzopen(dst, "wb");
    cr_assert_not_null(g);
    cr_assert_eq(gzwrite(g, buf, (unsigned)n), (int)n);
    gzclose(g);
    if (tail_n) {
        FILE *a = fopen(dst, "ab");
        fwrite(tail, 1, tail_n, a);
        fclose(a);
    }
}

Test(defect6, bytes_after_a_gzip_stream_are_refused) {
    mkdir_tmp();
    tg_ctx *ctx = tg_ctx_new(1);
    char gz[128];
    path_in(gz, sizeof gz, "labels.gz");
    gzip_file(TG_SOURCE_DIR "/tests/data/tiny-labels-idx1-ubyte", gz, NULL, 0);
    tg_dataset *ds = tg_load_idx(ctx, gz, NULL);
    cr_assert_not_null(ds, "%s", tg_errmsg(ctx));
    tg_dataset_free(ds);
    gzip_file(TG_SOURCE_DIR "/tests/data/tiny-labels-idx1-ubyte", gz, "junk", 4);
    cr_assert_null(tg_load_idx(ctx, gz, NULL));
    assert_err_has(ctx, "unexpected data after the end");
    tg_clear_error(ctx);
    /* a second gzip member is data, as gzip -dc reads it: here it is extra data */
    gzip_file(TG_SOURCE_DIR "/tests/data/tiny-labels-idx1-ubyte", gz, NULL, 0);
    char gz2[128];
    path_in(gz2, sizeof gz2, "one.gz");
    gzip_file(TG_SOURCE_DIR "/tests/data/tiny-labels-idx1-ubyte", gz2, NULL, 0);
    FILE *a = fopen(gz, "ab"), *b = fopen(gz2, "rb");
    unsigned char buf[4096];
    size_t n = fread(buf, 1, sizeof buf, b);
    fwrite(buf, 1, n, a);
    fclose(a);
    fclose(b);
    cr_assert_null(tg_load_idx(ctx, gz, NULL));
    assert_err_has(ctx, "unexpected data after the end given by the header");
    tg_ctx_free(ctx);
}

/* ---- 7: zlib through the context's allocator; a library's out-of-memory is
 * reported as out-of-memory ---- */

Test(defect7, gzip_inflate_allocates_through_the_context) {
    faulty plain = {0, -1, 0, 0}, gz = {0, -1, 0, 0};
    tg_ctx *a = tg_ctx_new_with_alloc(1, faulty_alloc, &plain);
    tg_ctx *b = tg_ctx_new_with_alloc(1, faulty_alloc, &gz);
    long a0 = plain.count, b0 = gz.count;
    tg_dataset *da = tg_load_idx(a, TG_SOURCE_DIR "/tests/data/tiny-images-idx3-ubyte", NULL);
    tg_dataset *db = tg_load_idx(b, TG_SOURCE_DIR "/tests/data/tiny-images-idx3-ubyte.gz", NULL);
    cr_assert(da && db);
    /* inflate's state and its 32 KiB window */
    cr_assert_geq((gz.count - b0) - (plain.count - a0), 2, "gz %ld, plain %ld",
                  gz.count - b0, plain.count - a0);
    tg_dataset_free(da);
    tg_dataset_free(db);
    tg_ctx_free(a);
    tg_ctx_free(b);
}

static long json_allocs, json_fail_at = -1;
static void *json_failing_malloc(size_t n) {
    if (++json_allocs >= json_fail_at && json_fail_at > 0) return NULL;
    return malloc(n);
}

Test(defect7, jansson_out_of_memory_is_reported_as_such) {
    mkdir_tmp();
    char path[128];
    path_in(path, sizeof path, "c.safetensors");
    /* installed before tapegrad's first Jansson call, as an application's own
     * functions would be: tapegrad watches whatever is installed */
    json_set_alloc_funcs(json_failing_malloc, free);
    tg_ctx *ctx = tg_ctx_new(1);
    tg_param(ctx, "layer.weight", TG_F32, 2, (int64_t[]){3, 2});
    tg_param(ctx, "layer.bias", TG_F32, 1, (int64_t[]){3});
    cr_assert_eq(tg_save(ctx, path), 0);
    int failures = 0;
    for (json_fail_at = 1; json_fail_at < 400; json_fail_at++) { /* the N-th and after */
        json_allocs = 0;
        int rs = tg_save(ctx, path);
        const char *es = tg_ok(ctx) ? "" : strstr(tg_errmsg(ctx), "out of memory") ? "oom" : tg_errmsg(ctx);
        char save_msg[512];
        snprintf(save_msg, sizeof save_msg, "%s", es);
        tg_clear_error(ctx);
        json_allocs = 0;
        int rl = tg_load(ctx, path);
        if (rs != 0) {
            failures++;
            cr_assert_str_eq(save_msg, "oom", "fail at %ld: tg_save said %s", json_fail_at, save_msg);
        }
        if (rl != 0) {
            failures++;
            cr_assert(strstr(tg_errmsg(ctx), "out of memory"), "fail at %ld: tg_load said %s",
                      json_fail_at, tg_errmsg(ctx));
            tg_clear_error(ctx);
        }
        if (rs == 0 && rl == 0) break;
    }
    cr_assert_gt(failures, 5);
    json_fail_at = -1;
    tg_ctx_free(ctx);
}

/* ---- 8: out-of-memory messages name the function ---- */

Test(defect8, out_of_memory_names_the_function) {
    faulty c = {0, -1, 0, 0};
    tg_ctx *ctx = tg_ctx_new_with_alloc(1, faulty_alloc, &c);
    c.fail_at = c.count + 1;
    tg_tensor *a = tg_new(ctx, TG_F32, 2, (int64_t[]){4, 3});
    cr_assert_null(a);
    cr_assert(strncmp(tg_errmsg(ctx), "tg_new: out of memory: could not allocate", 41) == 0,
              "%s", tg_errmsg(ctx));
    tg_clear_error(ctx);
    a = tg_new(ctx, TG_F32, 2, (int64_t[]){4, 3});
    tg_tensor *b = tg_new(ctx, TG_F32, 2, (int64_t[]){3, 100000});
    cr_assert(a && b);
    c.fail_at = c.count + 1;
    cr_assert_null(tg_matmul(ctx, a, b));
    cr_assert(strncmp(tg_errmsg(ctx), "tg_matmul: out of memory", 24) == 0, "%s", tg_errmsg(ctx));
    tg_ctx_free(ctx);
}

/* ---- 9: the header starts with '{' and is padded with spaces only ---- */

static int load_header(tg_ctx *ctx, const char *path, const char *json) {
    unsigned char buf[256];
    size_t n = strlen(json);
    for (int i = 0; i < 8; i++) buf[i] = (unsigned char)(n >> (8 * i));
    memcpy(buf + 8, json, n);
    float v = 2.5f;
    memcpy(buf + 8 + n, &v, 4);
    write_bytes(path, buf, 8 + n + 4);
    return tg_load(ctx, path);
}

Test(defect9, header_whitespace_other_than_trailing_spaces_is_refused) {
    mkdir_tmp();
    char path[128];
    path_in(path, sizeof path, "h.safetensors");
    tg_ctx *ctx = tg_ctx_new(1);
    tg_tensor *w = tg_param(ctx, "w", TG_F32, 1, (int64_t[]){1});
    const char *ok = "{\"w\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}}   ";
    cr_assert_eq(load_header(ctx, path, ok), 0, "%s", tg_errmsg(ctx));
    cr_assert_eq(((float *)tg_data(w))[0], 2.5f);
    const char *bad[] = {
        " {\"w\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}}  ",
        "\n{\"w\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}}  ",
        "{\"w\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}}\n\n\t",
        "{\"w\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}} \t ",
    };
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        ((float *)tg_data(w))[0] = 7;
        cr_assert_eq(load_header(ctx, path, bad[i]), -1, "variant %zu was accepted", i);
        assert_err_has(ctx, "header must be a JSON object that starts with '{'");
        cr_assert_eq(((float *)tg_data(w))[0], 7.0f);
        tg_clear_error(ctx);
    }
    tg_ctx_free(ctx);
}

/* ---- 10: a tensor from before tg_reset is refused, never walked ---- */

Test(defect10, backward_on_a_loss_from_before_reset_is_an_error) {
    tg_ctx *ctx = tg_ctx_new(1);
    tg_tensor *w = tg_param(ctx, "w", TG_F64, 1, (int64_t[]){3});
    tg_fill(w, 1.0);
    tg_tensor *x = tg_new(ctx, TG_F64, 1, (int64_t[]){3});
    tg_tensor *loss = tg_sum(ctx, tg_mul(ctx, tg_exp(ctx, tg_mul(ctx, w, x)), x));
    cr_assert(tg_ok(ctx));
    tg_reset(ctx);
    /* a shorter tape in the new step */
    tg_tensor *y = tg_sum(ctx, w);
    cr_assert_not_null(y);
    tg_zero_grad(ctx);
    /* in a sanitizer build the old memory is poisoned (see the test below);
     * here it is made readable to check the stamp that every build has */
    TGI_UNPOISON(loss, sizeof *loss);
    tg_backward(ctx, loss);
    assert_err_has(ctx, "tg_backward: argument loss is a temporary from before the last tg_reset");
    const double *g = tg_grad(w);
    cr_assert(!g || (g[0] == 0 && g[1] == 0 && g[2] == 0), "gradients were written");
    tg_clear_error(ctx);
    /* the same for any op (x itself has been reused by y: only the stamp of
     * a tensor whose memory was not reused can tell) */
    cr_assert_null(tg_exp(ctx, loss));
    assert_err_has(ctx, "tg_exp: argument x is a temporary from before the last tg_reset");
    tg_ctx_free(ctx);
}

#ifdef TGI_ASAN
/* In an AddressSanitizer build the arena is poisoned on tg_reset, so any use
 * of an old temporary stops the program with a report. */
Test(defect10, a_stale_temporary_is_caught_by_the_sanitizer, .exit_code = 1) {
    tg_ctx *ctx = tg_ctx_new(1);
    tg_tensor *x = tg_new(ctx, TG_F32, 1, (int64_t[]){16});
    tg_reset(ctx);
    volatile float *p = tg_data(x);
    fprintf(stderr, "%g\n", (double)p[3]); /* must not get here */
    tg_ctx_free(ctx);
    exit(0);
}
#endif

/* The stream reader across many input and output chunks (64 KiB each): a
 * gzip'd file gives exactly the plain file's dataset, for data that
 * compresses badly (many input chunks) and well (output far ahead of input). */
Test(defect6, a_large_gzip_file_reads_as_its_plain_copy) {
    mkdir_tmp();
    for (int kind = 0; kind < 2; kind++) {
        const uint32_t n = 700, rows = 28, cols = 28;
        size_t bytes = 16 + (size_t)n * rows * cols;
        unsigned char *buf = malloc(bytes);
        unsigned char h[16] = {0, 0, 8, 3};
        for (int i = 0; i < 3; i++) {
            uint32_t d = i == 0 ? n : i == 1 ? rows : cols;
            h[4 + 4 * i] = (unsigned char)(d >> 24);
            h[5 + 4 * i] = (unsigned char)(d >> 16);
            h[6 + 4 * i] = (unsigned char)(d >> 8);
            h[7 + 4 * i] = (unsigned char)d;
        }
        memcpy(buf, h, 16);
        uint64_t s = 88172645463325252ull;
        for (size_t i = 16; i < bytes; i++) {
            s ^= s << 13, s ^= s >> 7, s ^= s << 17;
            buf[i] = kind ? (unsigned char)(i % 251 == 0) : (unsigned char)s;
        }
        char plain[128], gz[128];
        path_in(plain, sizeof plain, "big");
        path_in(gz, sizeof gz, "big.gz");
        write_bytes(plain, buf, bytes);
        gzFile g = gzopen(gz, "wb9");
        cr_assert_eq(gzwrite(g, buf, (unsigned)bytes), (int)bytes);
        gzclose(g);
        free(buf);
        tg_ctx *ctx = tg_ctx_new(1);
        tg_dataset *a = tg_load_idx(ctx, plain, NULL), *b = tg_load_idx(ctx, gz, NULL);
        cr_assert(a && b, "kind %d: %s", kind, tg_errmsg(ctx));
        cr_assert_eq(a->n, 700);
        cr_assert(memcmp(a->x, b->x, (size_t)a->n * (size_t)a->n_features * sizeof(float)) == 0);
        tg_dataset_free(a);
        tg_dataset_free(b);
        tg_ctx_free(ctx);
    }
}

/* ---- the same defects in the second-round file formats (.npy, resume) ---- */

Test(defect1, npy_and_resume_saves_refuse_a_fifo_a_device_and_a_symlink, .timeout = 10) {
    mkdir_tmp();
    tg_ctx *ctx = tg_ctx_new(1);
    tg_tensor *w = tg_param(ctx, "w", TG_F32, 1, (int64_t[]){3});
    char fifo[128], target[128], link[128];
    path_in(fifo, sizeof fifo, "fifo");
    cr_assert_eq(mkfifo(fifo, 0600), 0);
    path_in(target, sizeof target, "real.npy");
    path_in(link, sizeof link, "link.npy");
    cr_assert_eq(tg_save_npy(ctx, w, target), 0, "%s", tg_errmsg(ctx));
    cr_assert_eq(symlink(target, link), 0);
    const char *paths[3] = {fifo, "/dev/null", link};
    const char *kinds[3] = {"a FIFO", "a character device", "a symbolic link"};
    struct stat st;
    for (int i = 0; i < 3; i++) {
        /* (before: tg_save_npy blocked on the FIFO, and a failed write removed the path) */
        cr_assert_eq(tg_save_npy(ctx, w, paths[i]), -1, "%s", paths[i]);
        assert_err_has(ctx, kinds[i]);
        assert_err_has(ctx, "tg_save_npy");
        tg_clear_error(ctx);
        /* (before: tg_resume_save renamed its temporary file over it) */
        cr_assert_eq(tg_resume_save(ctx, paths[i], NULL, NULL, 0), -1, "%s", paths[i]);
        assert_err_has(ctx, kinds[i]);
        assert_err_has(ctx, "tg_resume_save");
        tg_clear_error(ctx);
    }
    cr_assert_eq(lstat(fifo, &st), 0);
    cr_assert(S_ISFIFO(st.st_mode), "the FIFO was replaced");
    cr_assert_eq(stat("/dev/null", &st), 0);
    cr_assert(S_ISCHR(st.st_mode), "/dev/null was replaced");
    cr_assert_eq(lstat(link, &st), 0);
    cr_assert(S_ISLNK(st.st_mode), "the link was replaced");
    tg_ctx_free(ctx);
}

/* A resume file whose checksum is right (XXH3 is no secret) but whose
 * batcher order indexes past the data set: refused before anything changes.
 * (Before: restored, and the next tg_batcher_next read row 99 of 10.) */
Test(defect_resume, an_order_that_is_not_a_permutation_is_refused) {
    mkdir_tmp();
    char path[128];
    path_in(path, sizeof path, "state.resume");
    tg_ctx *ctx = tg_ctx_new(1);
    tg_dataset *ds = tg_dataset_new(ctx, 10, 2, 0);
    tg_batcher bt = {0};
    cr_assert_eq(tg_batcher_init(&bt, ctx, ds, 4, TG_BATCH_SHUFFLE), 0);
    cr_assert_eq(tg_resume_save(ctx, path, NULL, &bt, 0), 0, "%s", tg_errmsg(ctx));
    /* the file: ... order (10 int64) then the checksum (8) */
    FILE *f = fopen(path, "rb");
    cr_assert_not_null(f);
    unsigned char buf[4096];
    size_t n = fread(buf, 1, sizeof buf, f);
    fclose(f);
    cr_assert(n > 88 && n < sizeof buf);
    for (int bad = 0; bad < 2; bad++) {
        unsigned char b[4096];
        memcpy(b, buf, n);
        const int64_t v = bad ? 99 : (int64_t)b[n - 8 - 72]; /* out of range; a repeat of entry 1 */
        memcpy(b + n - 8 - 80, &v, 8);
        uint64_t sum = XXH3_64bits(b, n - 8);
        for (int i = 0; i < 8; i++) b[n - 8 + i] = (unsigned char)(sum >> (8 * i));
        write_bytes(path, b, n);
        int64_t order[10];
        memcpy(order, bt.order, sizeof order);
        cr_assert_eq(tg_resume_load(ctx, path, NULL, &bt, NULL), -1);
        assert_err_has(ctx, "tg_resume_load");
        assert_err_has(ctx, "is not a permutation");
        cr_assert(memcmp(order, bt.order, sizeof order) == 0, "the order changed");
        tg_clear_error(ctx);
    }
    tg_batcher_free(&bt);
    tg_dataset_free(ds);
    tg_ctx_free(ctx);
}
