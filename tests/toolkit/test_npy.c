/* SPDX-License-Identifier: MIT */
/* test_npy.c: tg_save_npy / tg_load_npy, round trips and against NumPy
 * (Debian's /usr/bin/python3 with python3-numpy; those tests skip without it). */
#include <criterion/criterion.h>

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "tg_test.h"

static tg_ctx *ctx;
static char dir[64];

static void setup(void)
{
    ctx = tg_ctx_new(7);
    scratch_make(dir, sizeof dir, "npy");
}

static void teardown(void)
{
    tg_ctx_free(ctx);
    scratch_remove(dir);
}

TestSuite(npy, .init = setup, .fini = teardown);

static const char *in_dir(const char *name) { return scratch_path(dir, name); }

static int have_numpy(void)
{
    return system("/usr/bin/python3 -c 'import numpy' >/dev/null 2>&1") == 0;
}

/* run a Python snippet with numpy as np; DIR is the test directory */
static int py(const char *code)
{
    char cmd[2048];
    snprintf(cmd, sizeof cmd, "DIR=%s /usr/bin/python3 -c \"import numpy as np, os; D=os.environ['DIR']; %s\"",
             dir, code);
    return system(cmd);
}

Test(npy, round_trip_every_dtype_and_rank)
{
    const int64_t shapes[4][4] = {{0}, {5}, {2, 3}, {2, 1, 3, 2}};
    const tg_dtype dts[3] = {TG_F32, TG_F64, TG_I32};
    for (int d = 0; d < 3; d++)
        for (int r = 0; r < 4; r++) {
            tg_tensor *t = tg_new(ctx, dts[d], r, shapes[r]);
            cr_assert_not_null(t, "%s", tg_errmsg(ctx));
            for (int64_t i = 0; i < tg_numel(t); i++) {
                if (dts[d] == TG_F32) ((float *)tg_data(t))[i] = (float)i / 3.0f - 1.5f;
                else if (dts[d] == TG_F64) ((double *)tg_data(t))[i] = (double)i / 7.0 - 2.0;
                else ((int32_t *)tg_data(t))[i] = (int32_t)(i * 1000003 - 7);
            }
            const char *path = in_dir("t.npy");
            cr_assert_eq(tg_save_npy(ctx, t, path), 0, "%s", tg_errmsg(ctx));
            FILE *f = fopen(path, "rb");
            unsigned char pre[10];
            cr_assert_eq(fread(pre, 1, 10, f), 10);
            fclose(f);
            cr_assert_eq((10 + (pre[8] | pre[9] << 8)) % 64, 0, "data aligned to 64 bytes");
            tg_tensor *u = tg_load_npy(ctx, path);
            cr_assert_not_null(u, "%s", tg_errmsg(ctx));
            cr_assert_eq(tg_dtype_of(u), dts[d]);
            cr_assert_eq(tg_ndim(u), r);
            for (int k = 0; k < r; k++) cr_assert_eq(tg_dim(u, k), shapes[r][k]);
            cr_assert_eq(memcmp(tg_data(u), tg_data(t), (size_t)tg_numel(t) * tg_dtype_size(dts[d])),
                         0, "dtype %d rank %d", d, r);
        }
}

Test(npy, numpy_reads_what_tapegrad_writes)
{
    if (!have_numpy()) cr_skip_test("SKIPPED: no numpy under /usr/bin/python3");
    tg_tensor *t = tg_new(ctx, TG_F32, 2, (int64_t[]){3, 4});
    for (int i = 0; i < 12; i++) ((float *)tg_data(t))[i] = (float)i * 0.25f - 1.0f;
    cr_assert_eq(tg_save_npy(ctx, t, in_dir("a.npy")), 0);
    tg_tensor *s = tg_new(ctx, TG_F64, 0, NULL);
    *(double *)tg_data(s) = -0.1;
    cr_assert_eq(tg_save_npy(ctx, s, in_dir("s.npy")), 0);
    cr_assert_eq(py("a=np.load(D+'/a.npy'); assert a.dtype==np.float32 and a.shape==(3,4), a;"
                    "assert (a==np.arange(12,dtype=np.float32).reshape(3,4)*0.25-1).all();"
                    "s=np.load(D+'/s.npy'); assert s.shape==() and s.dtype==np.float64 and s==-0.1"),
                 0);
}

Test(npy, tapegrad_reads_what_numpy_writes)
{
    if (!have_numpy()) cr_skip_test("SKIPPED: no numpy under /usr/bin/python3");
    cr_assert_eq(py("np.save(D+'/f.npy', np.arange(24, dtype='<f8').reshape(2,3,4)/8);"
                    "np.save(D+'/b.npy', np.arange(6, dtype='>i4').reshape(6)-3);"
                    "np.save(D+'/v.npy', np.arange(3, dtype=np.float32));"
                    "np.save(D+'/fo.npy', np.asfortranarray(np.ones((2,3),np.float32)));"
                    "np.save(D+'/h.npy', np.ones(3, np.float16))"),
                 0);
    tg_tensor *f = tg_load_npy(ctx, in_dir("f.npy"));
    cr_assert_not_null(f, "%s", tg_errmsg(ctx));
    cr_assert(tg_dtype_of(f) == TG_F64 && tg_ndim(f) == 3 && tg_dim(f, 2) == 4);
    for (int i = 0; i < 24; i++) cr_assert_eq(((double *)tg_data(f))[i], i / 8.0);
    tg_tensor *b = tg_load_npy(ctx, in_dir("b.npy"));
    cr_assert_not_null(b, "%s", tg_errmsg(ctx));
    for (int i = 0; i < 6; i++) cr_assert_eq(((int32_t *)tg_data(b))[i], i - 3, "big-endian swapped");
    tg_tensor *v = tg_load_npy(ctx, in_dir("v.npy"));
    cr_assert(v && tg_ndim(v) == 1 && tg_dim(v, 0) == 3 && ((float *)tg_data(v))[2] == 2.0f);
    cr_assert_null(tg_load_npy(ctx, in_dir("fo.npy")));
    cr_assert_not_null(strstr(tg_errmsg(ctx), "Fortran order is not supported"), "%s", tg_errmsg(ctx));
    tg_clear_error(ctx);
    cr_assert_null(tg_load_npy(ctx, in_dir("h.npy")));
    cr_assert_not_null(strstr(tg_errmsg(ctx), "descr is not f4, f8 or i4"), "%s", tg_errmsg(ctx));
}

Test(npy, bad_files_and_arguments)
{
    const char *path = in_dir("bad.npy");
    FILE *f = fopen(path, "wb");
    fputs("hello, not numpy", f);
    fclose(f);
    cr_assert_null(tg_load_npy(ctx, path));
    cr_assert_not_null(strstr(tg_errmsg(ctx), "not a .npy file"), "%s", tg_errmsg(ctx));
    tg_clear_error(ctx);
    /* a truncated data section */
    tg_tensor *t = tg_new(ctx, TG_F32, 1, (int64_t[]){8});
    tg_fill(t, 1.0);
    cr_assert_eq(tg_save_npy(ctx, t, path), 0);
    FILE *g = fopen(path, "rb");
    fseek(g, 0, SEEK_END);
    long size = ftell(g);
    fclose(g);
    cr_assert_eq(size % 64, 32, "a 64-byte aligned header, then 32 bytes");
    cr_assert_eq(truncate(path, size - 16), 0);
    cr_assert_null(tg_load_npy(ctx, path));
    cr_assert_not_null(strstr(tg_errmsg(ctx), "the shape needs 32 bytes of data, the file has 16"),
                       "%s", tg_errmsg(ctx));
    tg_clear_error(ctx);
    cr_assert_null(tg_load_npy(ctx, in_dir("missing.npy")));
    cr_assert_not_null(strstr(tg_errmsg(ctx), "tg_load_npy: cannot open"), "%s", tg_errmsg(ctx));
    tg_clear_error(ctx);
    cr_assert_eq(tg_save_npy(ctx, t, "/nonexistent-dir/x.npy"), -1);
    cr_assert_not_null(strstr(tg_errmsg(ctx), "tg_save_npy: cannot create /nonexistent-dir/x.npy"));
    tg_clear_error(ctx);
    cr_assert_eq(tg_save_npy(ctx, NULL, path), -1);
    cr_assert_not_null(strstr(tg_errmsg(ctx), "tg_save_npy"), "%s", tg_errmsg(ctx));
    tg_clear_error(ctx);
    cr_assert_null(tg_load_npy(ctx, NULL));
}
