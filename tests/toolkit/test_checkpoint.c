/* SPDX-License-Identifier: MIT */
/* tests/toolkit/test_checkpoint.c: checkpoints (tg_save, tg_load and the extras).
 * Round trips are bit-exact (tg_hash before and after); every malformed file
 * is rejected with its own message and leaves parameters and grads untouched;
 * failed saves leave the previous file intact and no temporary behind; an
 * independent Python reader agrees with what we wrote. */
#include <criterion/criterion.h>

#include <dirent.h>
#include <errno.h>
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>
#include <xxhash.h>

#include "tapegrad.h"

#ifndef TG_SOURCE_DIR
#define TG_SOURCE_DIR "."
#endif

/* test hook in src/toolkit/checkpoint.c: byte-swap as a big-endian host would */
int tgi_io_force_byteswap(int on);

/* ---- fixtures ----------------------------------------------------------- */

static char dir[64];       /* a fresh directory per test */
static tg_ctx *ctx;

static void rm_tree(const char *path)
{
    DIR *d = opendir(path);
    if (!d) return;
    struct dirent *e;
    char sub[512];
    while ((e = readdir(d))) {
        if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, "..")) continue;
        snprintf(sub, sizeof sub, "%s/%s", path, e->d_name);
        if (unlink(sub) != 0) rm_tree(sub);
    }
    closedir(d);
    rmdir(path);
}

static void setup(void)
{
    snprintf(dir, sizeof dir, "/tmp/tg_io_XXXXXX");
    cr_assert_not_null(mkdtemp(dir));
    ctx = tg_ctx_new(1234);
    cr_assert_not_null(ctx);
}

static void teardown(void)
{
    tg_ctx_free(ctx);
    rm_tree(dir);
}

TestSuite(io, .init = setup, .fini = teardown);

/* dir/name, in one of a few rotating buffers */
static const char *in_dir(const char *name)
{
    static char bufs[4][256];
    static int k;
    char *b = bufs[k++ % 4];
    snprintf(b, sizeof bufs[0], "%s/%s", dir, name);
    return b;
}

/* ---- files -------------------------------------------------------------- */

static unsigned char *slurp(const char *path, size_t *size)
{
    FILE *f = fopen(path, "rb");
    cr_assert_not_null(f, "cannot open %s", path);
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    unsigned char *b = malloc((size_t)n + 1);
    cr_assert_eq(fread(b, 1, (size_t)n, f), (size_t)n);
    fclose(f);
    *size = (size_t)n;
    return b;
}

static void spit(const char *path, const void *data, size_t size)
{
    FILE *f = fopen(path, "wb");
    cr_assert_not_null(f, "cannot create %s", path);
    cr_assert_eq(fwrite(data, 1, size, f), size);
    cr_assert_eq(fclose(f), 0);
}

static void put_le64(unsigned char *p, uint64_t v)
{
    for (int i = 0; i < 8; i++) p[i] = (unsigned char)(v >> (8 * i));
}

static uint64_t get_le64(const unsigned char *p)
{
    uint64_t v = 0;
    for (int i = 0; i < 8; i++) v |= (uint64_t)p[i] << (8 * i);
    return v;
}

/* a safetensors file by hand: length, header text as given, data */
static void write_st(const char *path, const char *json, const void *data, size_t dlen)
{
    size_t n = strlen(json);
    unsigned char *b = malloc(8 + n + dlen + 1);
    put_le64(b, n);
    memcpy(b + 8, json, n);
    if (dlen) memcpy(b + 8 + n, data, dlen);
    spit(path, b, 8 + n + dlen);
    free(b);
}

/* names of the entries of dir other than `keep1`/`keep2` (e.g. temporaries) */
static int stray_files(const char *keep1, const char *keep2)
{
    DIR *d = opendir(dir);
    cr_assert_not_null(d);
    struct dirent *e;
    int n = 0;
    while ((e = readdir(d))) {
        if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, "..")) continue;
        if ((keep1 && !strcmp(e->d_name, keep1)) || (keep2 && !strcmp(e->d_name, keep2))) continue;
        cr_log_error("stray file %s/%s", dir, e->d_name);
        n++;
    }
    closedir(d);
    return n;
}

/* ---- models ------------------------------------------------------------- */

/* A model with f32 and f64 parameters of 0 to 4 dimensions, and an empty one. */
#define NBIG 6
static void make_big(tg_ctx *c, double mean)
{
    const int64_t s_w[2] = {3, 4}, s_b[1] = {4}, s_3[3] = {2, 3, 2}, s_4[4] = {2, 1, 2, 3},
                  s_e[1] = {0};
    tg_tensor *p[NBIG] = {
        tg_param(c, "layer1.weight", TG_F32, 2, s_w), tg_param(c, "layer1.bias", TG_F32, 1, s_b),
        tg_param(c, "w64", TG_F64, 3, s_3),           tg_param(c, "scale", TG_F64, 0, NULL),
        tg_param(c, "t4", TG_F32, 4, s_4),            tg_param(c, "empty", TG_F64, 1, s_e),
    };
    for (int i = 0; i < NBIG; i++) {
        cr_assert_not_null(p[i], "%s", tg_errmsg(c));
        tg_fill_normal(c, p[i], mean, 1.0);
    }
    cr_assert(tg_ok(c), "%s", tg_errmsg(c));
}

/* The small model of the hand-built files: a F32 [2,3] (24 bytes), b F64 [2]
 * (16 bytes); the file's values are 1..6 and 7.25, -8.5. */
static void make_small(tg_ctx *c)
{
    const int64_t sa[2] = {2, 3}, sb[1] = {2};
    tg_tensor *a = tg_param(c, "a", TG_F32, 2, sa), *b = tg_param(c, "b", TG_F64, 1, sb);
    cr_assert(a && b, "%s", tg_errmsg(c));
    tg_fill(a, -1.0);
    tg_fill(b, -2.0);
}

static const float small_a[6] = {1, 2, 3, 4, 5, 6};
static const double small_b[2] = {7.25, -8.5};

/* the small model's 40 data bytes in little-endian order, then 24 spare bytes */
static unsigned char small_data[64];
static void fill_small_data(void)
{
    memset(small_data, 0x5a, sizeof small_data);
    for (int i = 0; i < 6; i++) {
        uint32_t u;
        memcpy(&u, &small_a[i], 4);
        for (int k = 0; k < 4; k++) small_data[4 * i + k] = (unsigned char)(u >> (8 * k));
    }
    for (int i = 0; i < 2; i++) {
        uint64_t u;
        memcpy(&u, &small_b[i], 8);
        put_le64(small_data + 24 + 8 * i, u);
    }
}

static const char *small_json =
    "{\"a\":{\"dtype\":\"F32\",\"shape\":[2,3],\"data_offsets\":[0,24]},"
    "\"b\":{\"dtype\":\"F64\",\"shape\":[2],\"data_offsets\":[24,40]}}";

/* ---- snapshots: hashes of every parameter and copies of their grads ------ */

#define MAXP 16
typedef struct {
    int n;
    uint64_t hash[MAXP];
    void *grad[MAXP];       /* the grad pointer */
    unsigned char *gcopy[MAXP];
    size_t gbytes[MAXP];
} snapshot;

/* give every parameter a non-zero gradient, so we can see that load leaves it */
static void set_grads(tg_ctx *c)
{
    for (int i = 0; i < tg_param_count(c); i++) {
        tg_tensor *p = tg_param_at(c, i);
        void *g = tg_grad_acc(p);
        for (int64_t k = 0; k < tg_numel(p); k++) {
            if (tg_dtype_of(p) == TG_F32) ((float *)g)[k] = 0.5f + (float)k;
            else ((double *)g)[k] = -0.25 - (double)k;
        }
    }
}

static snapshot snap(tg_ctx *c)
{
    snapshot s = {.n = tg_param_count(c)};
    cr_assert_leq(s.n, MAXP);
    for (int i = 0; i < s.n; i++) {
        tg_tensor *p = tg_param_at(c, i);
        s.hash[i] = tg_hash(p);
        s.grad[i] = tg_grad(p);
        s.gbytes[i] = (size_t)tg_numel(p) * tg_dtype_size(tg_dtype_of(p));
        s.gcopy[i] = malloc(s.gbytes[i] + 1);
        if (s.grad[i]) memcpy(s.gcopy[i], s.grad[i], s.gbytes[i]);
    }
    return s;
}

/* grads as in s; values as in s when same_values */
static void check_snap(tg_ctx *c, const snapshot *s, int same_values, const char *what)
{
    cr_assert_eq(tg_param_count(c), s->n);
    for (int i = 0; i < s->n; i++) {
        tg_tensor *p = tg_param_at(c, i);
        if (same_values)
            cr_assert_eq(tg_hash(p), s->hash[i], "%s: parameter '%s' changed", what, tg_name(p));
        cr_assert_eq(tg_grad(p), s->grad[i], "%s: grad of '%s' moved", what, tg_name(p));
        if (s->grad[i])
            cr_assert(memcmp(tg_grad(p), s->gcopy[i], s->gbytes[i]) == 0,
                      "%s: grad of '%s' changed", what, tg_name(p));
    }
}

static void free_snap(snapshot *s)
{
    for (int i = 0; i < s->n; i++) free(s->gcopy[i]);
}

/* tg_load(path) must fail with a message starting "tg_load: <path>: " and
 * containing `expect`, and leave parameters and grads as they were */
static void expect_load_fail(tg_ctx *c, const char *path, const char *expect, const char *what)
{
    snapshot s = snap(c);
    cr_assert_eq(tg_load(c, path), -1, "%s: tg_load accepted the file", what);
    cr_assert(!tg_ok(c), "%s: no error recorded", what);
    const char *msg = tg_errmsg(c);
    char prefix[300];
    snprintf(prefix, sizeof prefix, "tg_load: %s: ", path);
    cr_assert(strncmp(msg, prefix, strlen(prefix)) == 0, "%s: message '%s' lacks prefix '%s'",
              what, msg, prefix);
    cr_assert_not_null(strstr(msg, expect), "%s: message '%s' lacks '%s'", what, msg, expect);
    check_snap(c, &s, 1, what);
    free_snap(&s);
    tg_clear_error(c);
}

/* ---- round trips -------------------------------------------------------- */

Test(io, round_trip_is_bit_exact)
{
    make_big(ctx, 0.0);
    snapshot src = snap(ctx);
    const char *path = in_dir("model.safetensors");
    cr_assert_eq(tg_save(ctx, path), 0, "%s", tg_errmsg(ctx));

    tg_ctx *c2 = tg_ctx_new(99);
    make_big(c2, 3.0);
    set_grads(c2);
    snapshot before = snap(c2);
    for (int i = 0; i < NBIG - 1; i++) /* all but the empty one differ before loading */
        cr_assert_neq(before.hash[i], src.hash[i]);
    cr_assert_eq(tg_load(c2, path), 0, "%s", tg_errmsg(c2));
    for (int i = 0; i < NBIG; i++)
        cr_assert_eq(tg_hash(tg_param_at(c2, i)), src.hash[i], "param %d differs", i);
    check_snap(c2, &before, 0, "successful load"); /* grads untouched */
    /* loading twice is the same */
    cr_assert_eq(tg_load(c2, path), 0, "%s", tg_errmsg(c2));
    for (int i = 0; i < NBIG; i++) cr_assert_eq(tg_hash(tg_param_at(c2, i)), src.hash[i]);
    /* the scalar's value survives */
    cr_assert_eq(tg_item(tg_param_at(c2, 3)), tg_item(tg_param_at(ctx, 3)));
    free_snap(&before);
    free_snap(&src);
    tg_ctx_free(c2);
    cr_assert_eq(stray_files("model.safetensors", NULL), 0);
}

Test(io, save_replaces_an_existing_checkpoint)
{
    make_big(ctx, 0.0);
    const char *path = in_dir("ck");
    cr_assert_eq(tg_save(ctx, path), 0, "%s", tg_errmsg(ctx));
    snapshot first = snap(ctx);
    tg_fill(tg_param_at(ctx, 0), 42.0);
    snapshot second = snap(ctx);
    cr_assert_eq(tg_save(ctx, path), 0, "%s", tg_errmsg(ctx));
    tg_fill(tg_param_at(ctx, 0), 0.0);
    cr_assert_eq(tg_load(ctx, path), 0, "%s", tg_errmsg(ctx));
    check_snap(ctx, &second, 1, "reload");
    cr_assert_neq(first.hash[0], second.hash[0]);
    free_snap(&first);
    free_snap(&second);
    cr_assert_eq(stray_files("ck", NULL), 0);
}

Test(io, a_context_without_parameters_round_trips)
{
    const char *path = in_dir("none");
    cr_assert_eq(tg_save(ctx, path), 0, "%s", tg_errmsg(ctx));
    cr_assert_eq(tg_load(ctx, path), 0, "%s", tg_errmsg(ctx));
    /* and a non-empty model refuses it: its parameters are missing */
    make_small(ctx);
    expect_load_fail(ctx, path, "parameter 'a' (F32 [2,3]) is missing from the file", "empty file");
}

Test(io, header_is_padded_to_a_multiple_of_8)
{
    char name[16];
    for (int len = 1; len <= 9; len++) { /* names of every length mod 8 */
        tg_ctx *c = tg_ctx_new(len);
        memset(name, 'x', (size_t)len);
        name[len] = '\0';
        const int64_t shape[1] = {3};
        cr_assert_not_null(tg_param(c, name, TG_F32, 1, shape));
        const char *path = in_dir("pad");
        cr_assert_eq(tg_save(c, path), 0, "%s", tg_errmsg(c));
        size_t size;
        unsigned char *b = slurp(path, &size);
        uint64_t n = get_le64(b);
        cr_assert_eq((8 + n) % 8, 0, "name length %d: header length %llu", len,
                     (unsigned long long)n);
        cr_assert_eq(size, 8 + n + 12);
        cr_assert_eq(b[8], '{');
        size_t end = 8 + (size_t)n;
        while (end > 8 && b[end - 1] == ' ') end--;
        cr_assert_eq(b[end - 1], '}', "header must be JSON then spaces");
        cr_assert_lt(8 + n - end, 8, "at most 7 bytes of padding");
        free(b);
        tg_ctx_free(c);
    }
}

Test(io, metadata_has_format_and_checksum)
{
    make_big(ctx, 0.0);
    const char *path = in_dir("m");
    const char *keys[] = {"arch", "note"}, *vals[] = {"784-128-10", "h\xc3\xa9llo \"quoted\""};
    cr_assert_eq(tg_save_meta(ctx, path, keys, vals, 2), 0, "%s", tg_errmsg(ctx));

    char *v = tg_checkpoint_meta(ctx, path, "arch");
    cr_assert_str_eq(v, "784-128-10");
    free(v);
    v = tg_checkpoint_meta(ctx, path, "note");
    cr_assert_str_eq(v, "h\xc3\xa9llo \"quoted\"");
    free(v);
    v = tg_checkpoint_meta(ctx, path, "format");
    cr_assert_str_eq(v, "pt");
    free(v);
    cr_assert_null(tg_checkpoint_meta(ctx, path, "absent"));
    cr_assert(tg_ok(ctx), "an absent key is not an error");

    /* the checksum is XXH3-64 of the data section, 16 lowercase hex digits */
    v = tg_checkpoint_meta(ctx, path, "tapegrad.xxh3");
    cr_assert_not_null(v);
    size_t size;
    unsigned char *b = slurp(path, &size);
    uint64_t n = get_le64(b);
    char want[17];
    snprintf(want, sizeof want, "%016llx",
             (unsigned long long)XXH3_64bits(b + 8 + n, size - 8 - (size_t)n));
    cr_assert_str_eq(v, want);
    free(v);
    free(b);

    /* it loads as usual */
    cr_assert_eq(tg_load(ctx, path), 0, "%s", tg_errmsg(ctx));
}

Test(io, checkpoint_meta_errors)
{
    cr_assert_null(tg_checkpoint_meta(ctx, in_dir("nope"), "arch"));
    cr_assert_not_null(strstr(tg_errmsg(ctx), "tg_checkpoint_meta: "));
    cr_assert_not_null(strstr(tg_errmsg(ctx), "cannot open: No such file or directory"));
    tg_clear_error(ctx);

    const char *path = in_dir("bad");
    write_st(path, "{\"__metadata__\":{\"arch\":3}}", NULL, 0);
    cr_assert_null(tg_checkpoint_meta(ctx, path, "arch"));
    cr_assert_not_null(strstr(tg_errmsg(ctx), "__metadata__ value of 'arch' must be a string, "
                                              "got an integer"),
                       "%s", tg_errmsg(ctx));
    tg_clear_error(ctx);

    /* a file without metadata: every key is absent */
    write_st(path, "{}", NULL, 0);
    cr_assert_null(tg_checkpoint_meta(ctx, path, "format"));
    cr_assert(tg_ok(ctx));

    cr_assert_null(tg_checkpoint_meta(ctx, path, NULL));
    cr_assert_str_eq(tg_errmsg(ctx), "tg_checkpoint_meta: argument key is NULL");
}

Test(io, save_meta_rejects_bad_keys)
{
    make_small(ctx);
    const char *path = in_dir("m");
    struct {
        const char *k[2], *v[2];
        int n;
        const char *expect;
    } cases[] = {
        {{"format", NULL}, {"x", NULL}, 1, "metadata key 'format' is reserved"},
        {{"tapegrad.xxh3", NULL}, {"x", NULL}, 1, "metadata key 'tapegrad.xxh3' is reserved"},
        {{"", NULL}, {"x", NULL}, 1, "metadata key '' is empty"},
        {{"k", "k"}, {"x", "y"}, 2, "metadata key 'k' is given twice"},
        {{NULL, NULL}, {"x", NULL}, 1, "metadata key 0 is NULL"},
        {{"k", NULL}, {NULL, NULL}, 1, "metadata value 0 is NULL"},
        {{"k", NULL}, {"\xff", NULL}, 1, "metadata value of key 'k' is not valid UTF-8"},
        {{"\xff", NULL}, {"x", NULL}, 1, "metadata key 0 is not valid UTF-8"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        cr_assert_eq(tg_save_meta(ctx, path, cases[i].k, cases[i].v, cases[i].n), -1, "case %zu",
                     i);
        char prefix[300];
        snprintf(prefix, sizeof prefix, "tg_save: %s: %s", path, cases[i].expect);
        cr_assert(strncmp(tg_errmsg(ctx), prefix, strlen(prefix)) == 0, "case %zu: '%s'", i,
                  tg_errmsg(ctx));
        tg_clear_error(ctx);
    }
    cr_assert_eq(tg_save_meta(ctx, path, NULL, NULL, -1), -1);
    cr_assert_not_null(strstr(tg_errmsg(ctx), "metadata count is negative (-1)"));
    tg_clear_error(ctx);
    cr_assert_eq(tg_save_meta(ctx, path, NULL, NULL, 1), -1);
    cr_assert_not_null(strstr(tg_errmsg(ctx), "metadata keys is NULL with 1 entries"));
    tg_clear_error(ctx);
    cr_assert_eq(stray_files(NULL, NULL), 0, "no file may be created");
    cr_assert_eq(tg_save_meta(ctx, path, NULL, NULL, 0), 0, "%s", tg_errmsg(ctx));
}

Test(io, arguments_and_sticky_errors)
{
    cr_assert_eq(tg_save(NULL, "x"), -1);
    cr_assert_eq(tg_load(NULL, "x"), -1);
    cr_assert_null(tg_checkpoint_meta(NULL, "x", "k"));
    cr_assert_eq(tg_save(ctx, NULL), -1);
    cr_assert_str_eq(tg_errmsg(ctx), "tg_save: argument path is NULL");
    tg_clear_error(ctx);
    cr_assert_eq(tg_load(ctx, NULL), -1);
    cr_assert_str_eq(tg_errmsg(ctx), "tg_load: argument path is NULL");
    /* while an error is recorded, nothing is written */
    const char *path = in_dir("x");
    cr_assert_eq(tg_save(ctx, path), -1);
    cr_assert_str_eq(tg_errmsg(ctx), "tg_load: argument path is NULL");
    cr_assert_eq(access(path, F_OK), -1);
    tg_clear_error(ctx);
    cr_assert_eq(tg_load_ex(ctx, path, 0x40), -1);
    cr_assert_not_null(strstr(tg_errmsg(ctx), "unknown flags 0x40"));
    tg_clear_error(ctx);
    /* a parameter name safetensors reserves */
    const int64_t shape[1] = {1};
    cr_assert_not_null(tg_param(ctx, "__metadata__", TG_F32, 1, shape));
    cr_assert_eq(tg_save(ctx, path), -1);
    cr_assert_not_null(strstr(tg_errmsg(ctx), "a parameter is named '__metadata__'"));
    cr_assert_eq(access(path, F_OK), -1);
}

/* ---- loading files from other writers ------------------------------------ */

Test(io, file_without_checksum_loads)
{
    fill_small_data();
    make_small(ctx);
    set_grads(ctx);
    snapshot before = snap(ctx);
    const char *headers[] = {
        small_json, /* no metadata at all */
        "{\"__metadata__\":{\"format\":\"pt\"},"
        "\"b\":{\"shape\":[2],\"data_offsets\":[24,40],\"dtype\":\"F64\"},"
        "\"a\":{\"data_offsets\":[0,24],\"dtype\":\"F32\",\"shape\":[2,3]}}   ",
    };
    for (int h = 0; h < 2; h++) {
        tg_fill(tg_param_at(ctx, 0), 0.0);
        tg_fill(tg_param_at(ctx, 1), 0.0);
        const char *path = in_dir("other");
        write_st(path, headers[h], small_data, 40);
        cr_assert_eq(tg_load(ctx, path), 0, "header %d: %s", h, tg_errmsg(ctx));
        const float *a = tg_data(tg_param_at(ctx, 0));
        const double *b = tg_data(tg_param_at(ctx, 1));
        for (int i = 0; i < 6; i++) cr_assert_eq(a[i], small_a[i]);
        for (int i = 0; i < 2; i++) cr_assert_eq(b[i], small_b[i]);
        check_snap(ctx, &before, 0, "load from another writer");
    }
    free_snap(&before);
}

Test(io, tensors_stored_in_another_order_with_checksum_load)
{
    fill_small_data();
    make_small(ctx);
    /* b first in the data section, then a; checksum over that data */
    unsigned char data[40];
    memcpy(data, small_data + 24, 16);
    memcpy(data + 16, small_data, 24);
    char json[512];
    snprintf(json, sizeof json,
             "{\"a\":{\"dtype\":\"F32\",\"shape\":[2,3],\"data_offsets\":[16,40]},"
             "\"__metadata__\":{\"tapegrad.xxh3\":\"%016llx\"},"
             "\"b\":{\"dtype\":\"F64\",\"shape\":[2],\"data_offsets\":[0,16]}}",
             (unsigned long long)XXH3_64bits(data, 40));
    const char *path = in_dir("reordered");
    write_st(path, json, data, 40);
    cr_assert_eq(tg_load(ctx, path), 0, "%s", tg_errmsg(ctx));
    const float *a = tg_data(tg_param_at(ctx, 0));
    const double *b = tg_data(tg_param_at(ctx, 1));
    cr_assert_eq(a[5], 6.0f);
    cr_assert_eq(b[1], -8.5);
}

/* ---- malformed headers: each with its own message ------------------------ */

typedef struct {
    const char *what, *json;
    size_t dlen; /* bytes of small_data after the header */
    const char *expect;
} bad_case;

#define A_OK "\"a\":{\"dtype\":\"F32\",\"shape\":[2,3],\"data_offsets\":[0,24]}"
#define B_OK "\"b\":{\"dtype\":\"F64\",\"shape\":[2],\"data_offsets\":[24,40]}"

static const bad_case bad_cases[] = {
    {"unknown dtype",
     "{\"a\":{\"dtype\":\"Q4\",\"shape\":[2,3],\"data_offsets\":[0,24]}," B_OK "}", 40,
     "tensor 'a': unknown dtype 'Q4' (safetensors has F64, F32, F16, BF16, I64, I32"},
    {"shape/size mismatch",
     "{\"a\":{\"dtype\":\"F32\",\"shape\":[2,4],\"data_offsets\":[0,24]}," B_OK "}", 40,
     "tensor 'a': F32 [2,4] needs 32 bytes but data_offsets [0,24] span 24"},
    {"shape overflow",
     "{\"a\":{\"dtype\":\"F32\",\"shape\":[4294967296,4294967296,4294967296],"
     "\"data_offsets\":[0,24]}," B_OK "}",
     40, "tensor 'a': shape [4294967296,4294967296,4294967296] is too large"},
    {"byte size overflow",
     "{\"a\":{\"dtype\":\"F64\",\"shape\":[2305843009213693952,4],"
     "\"data_offsets\":[0,24]}," B_OK "}",
     40, "(its size in bytes overflows 64 bits)"},
    {"offsets out of bounds",
     "{" A_OK ",\"b\":{\"dtype\":\"F64\",\"shape\":[2],\"data_offsets\":[1000,1016]}}", 40,
     "tensor 'b': data_offsets [1000,1016] extend past the end of the data section (40 bytes"},
    {"overlapping offsets",
     "{" A_OK ",\"b\":{\"dtype\":\"F64\",\"shape\":[2],\"data_offsets\":[16,32]}}", 40,
     "tensors 'a' [0,24] and 'b' [16,32] overlap"},
    {"hole between tensors",
     "{" A_OK ",\"b\":{\"dtype\":\"F64\",\"shape\":[2],\"data_offsets\":[32,48]}}", 48,
     "hole in the data section: 8 unused bytes between tensor 'a' [0,24] and tensor 'b' [32,48]"},
    {"hole at the start",
     "{\"a\":{\"dtype\":\"F32\",\"shape\":[2,3],\"data_offsets\":[8,32]},"
     "\"b\":{\"dtype\":\"F64\",\"shape\":[2],\"data_offsets\":[32,48]}}",
     48, "hole in the data section: 8 unused bytes before the first tensor 'a' "
         "(data_offsets [8,32])"},
    {"bytes after the last tensor", "{" A_OK "," B_OK "}", 44,
     "4 unused bytes at the end of the data section: the tensors end at 40, the data section "
     "is 44 bytes"},
    {"BEGIN > END",
     "{" A_OK ",\"b\":{\"dtype\":\"F64\",\"shape\":[2],\"data_offsets\":[40,24]}}", 40,
     "tensor 'b': data_offsets [40,24] have BEGIN > END"},
    {"parameter missing", "{" A_OK "}", 24, "parameter 'b' (F64 [2]) is missing from the file"},
    {"extra tensor",
     "{" A_OK "," B_OK ",\"c\":{\"dtype\":\"I32\",\"shape\":[1],\"data_offsets\":[40,44]}}", 44,
     "tensor 'c' (I32 [1]) in the file is not a parameter of this context"},
    {"parameter shape mismatch",
     "{\"a\":{\"dtype\":\"F32\",\"shape\":[3,2],\"data_offsets\":[0,24]}," B_OK "}", 40,
     "tensor 'a': the file has shape [3,2], the parameter is [2,3]"},
    {"parameter dtype mismatch",
     "{\"a\":{\"dtype\":\"F64\",\"shape\":[3],\"data_offsets\":[0,24]}," B_OK "}", 40,
     "tensor 'a': the file has dtype F64, the parameter is F32"},
    {"invalid JSON", "{" A_OK ",\"b\":{\"dtype\":", 40, "header is not valid JSON: "},
    {"empty header", "", 40, "header must be a JSON object that starts with '{' at byte 8"},
    {"garbage after the JSON", "{" A_OK "," B_OK "} x", 40, "header is not valid JSON: "},
    {"integer too big for JSON",
     "{" A_OK ",\"b\":{\"dtype\":\"F64\",\"shape\":[2],"
     "\"data_offsets\":[24,99999999999999999999]}}",
     40, "header is not valid JSON: too big integer"},
    {"NUL in a string", "{" A_OK "," B_OK ",\"x\\u0000\":{}}", 40, "header is not valid JSON: "},
    {"duplicate tensor", "{" A_OK "," A_OK "," B_OK "}", 40, "duplicate object key"},
    {"non-UTF-8 header", "{\"a\xff\xfe\":{\"dtype\":\"F32\",\"shape\":[2,3],\"data_offsets\":[0,24]}}",
     24, "header is not valid UTF-8"},
    {"header is an array", "[1,2]", 40, "header must be a JSON object that starts with '{' at byte 8, got 0x5b"},
    {"shape as a string",
     "{\"a\":{\"dtype\":\"F32\",\"shape\":\"2,3\",\"data_offsets\":[0,24]}," B_OK "}", 40,
     "tensor 'a': shape must be an array of non-negative integers, got a string"},
    {"negative shape",
     "{\"a\":{\"dtype\":\"F32\",\"shape\":[-2,3],\"data_offsets\":[0,24]}," B_OK "}", 40,
     "tensor 'a': shape[0] must be a non-negative integer, got -2"},
    {"real in shape",
     "{\"a\":{\"dtype\":\"F32\",\"shape\":[2,3.0],\"data_offsets\":[0,24]}," B_OK "}", 40,
     "tensor 'a': shape[1] must be a non-negative integer, got a real number"},
    {"5 dimensions",
     "{\"a\":{\"dtype\":\"F32\",\"shape\":[1,1,2,3,1],\"data_offsets\":[0,24]}," B_OK "}", 40,
     "tensor 'a': shape has 5 dimensions, at most 4 are supported"},
    {"negative offset",
     "{" A_OK ",\"b\":{\"dtype\":\"F64\",\"shape\":[2],\"data_offsets\":[-16,40]}}", 40,
     "tensor 'b': data_offsets[0] must be a non-negative integer, got -16"},
    {"offset as a string",
     "{" A_OK ",\"b\":{\"dtype\":\"F64\",\"shape\":[2],\"data_offsets\":[24,\"40\"]}}", 40,
     "tensor 'b': data_offsets[1] must be a non-negative integer, got a string"},
    {"three offsets",
     "{" A_OK ",\"b\":{\"dtype\":\"F64\",\"shape\":[2],\"data_offsets\":[24,32,40]}}", 40,
     "tensor 'b': data_offsets must be an array of 2 non-negative integers [BEGIN, END], got an "
     "array of 3 elements"},
    {"offsets as an object",
     "{" A_OK ",\"b\":{\"dtype\":\"F64\",\"shape\":[2],\"data_offsets\":{}}}", 40,
     "integers [BEGIN, END], got an object"},
    {"dtype as a number",
     "{\"a\":{\"dtype\":32,\"shape\":[2,3],\"data_offsets\":[0,24]}," B_OK "}", 40,
     "tensor 'a': dtype must be a string, got an integer"},
    {"entry not an object", "{\"a\":[0,24]," B_OK "}", 40,
     "tensor 'a' must be an object {dtype, shape, data_offsets}, got an array"},
    {"unexpected key",
     "{\"a\":{\"dtype\":\"F32\",\"shape\":[2,3],\"data_offsets\":[0,24],\"foo\":1}," B_OK "}",
     40, "tensor 'a' has an unexpected key 'foo'"},
    {"missing key", "{\"a\":{\"dtype\":\"F32\",\"shape\":[2,3]}," B_OK "}", 40,
     "tensor 'a' lacks the key 'data_offsets'"},
    {"metadata value not a string", "{\"__metadata__\":{\"format\":1}," A_OK "," B_OK "}", 40,
     "__metadata__ value of 'format' must be a string, got an integer"},
    {"metadata not an object", "{\"__metadata__\":[]," A_OK "," B_OK "}", 40,
     "__metadata__ must be an object of strings, got an array"},
    {"malformed checksum", "{\"__metadata__\":{\"tapegrad.xxh3\":\"XYZ\"}," A_OK "," B_OK "}",
     40, "__metadata__ 'tapegrad.xxh3' is 'XYZ', not 16 lowercase hex digits"},
    {"wrong checksum",
     "{\"__metadata__\":{\"tapegrad.xxh3\":\"0123456789abcdef\"}," A_OK "," B_OK "}", 40,
     "checksum mismatch: __metadata__ says tapegrad.xxh3 0123456789abcdef, the data section "
     "hashes to "},
};

Test(io, malformed_headers_are_rejected)
{
    fill_small_data();
    make_small(ctx);
    set_grads(ctx);
    const char *path = in_dir("bad.safetensors");
    for (size_t i = 0; i < sizeof bad_cases / sizeof bad_cases[0]; i++) {
        write_st(path, bad_cases[i].json, small_data, bad_cases[i].dlen);
        expect_load_fail(ctx, path, bad_cases[i].expect, bad_cases[i].what);
    }
    /* the same files are fine once corrected */
    write_st(path, small_json, small_data, 40);
    cr_assert_eq(tg_load(ctx, path), 0, "%s", tg_errmsg(ctx));
    cr_assert_eq(((const float *)tg_data(tg_param_at(ctx, 0)))[0], 1.0f);
}

/* ---- damaged files saved by us ----------------------------------------- */

/* save the big model to `path`; returns the file's bytes */
static unsigned char *saved_big(const char *path, size_t *size, uint64_t *hlen)
{
    tg_ctx *c = tg_ctx_new(7);
    make_big(c, 0.0);
    cr_assert_eq(tg_save(c, path), 0, "%s", tg_errmsg(c));
    tg_ctx_free(c);
    unsigned char *b = slurp(path, size);
    *hlen = get_le64(b);
    return b;
}

/* The big model saved by another context to dir/good (its bytes b, size
 * bytes, header length hlen) and a path for a damaged copy; ctx holds the big
 * model with every value 5 and gradients set, which a failing load must keep. */
typedef struct {
    const char *good, *path;
    unsigned char *b;
    size_t size, hlen;
} saved_file;

static saved_file saved_and_damaged(const char *name)
{
    saved_file f = {in_dir("good"), in_dir(name), NULL, 0, 0};
    uint64_t hlen;
    f.b = saved_big(f.good, &f.size, &hlen);
    f.hlen = (size_t)hlen;
    make_big(ctx, 5.0);
    set_grads(ctx);
    return f;
}

Test(io, truncated_files_are_rejected)
{
    saved_file f = saved_and_damaged("cut");
    struct {
        size_t len;
        const char *expect;
    } cuts[] = {
        {0, "file is 0 bytes, too short to hold the 8-byte header length"},
        {3, "file is 3 bytes, too short"},
        {7, "file is 7 bytes, too short"},
        {8, "runs past the end of the file (8 bytes; truncated?)"},
        {8 + f.hlen / 2, "runs past the end of the file"},
        {8 + f.hlen - 1, "runs past the end of the file"},
        {8 + f.hlen, "extend past the end of the data section (0 bytes; file truncated?)"},
        {8 + f.hlen + 1, "extend past the end of the data section (1 bytes"},
        {8 + f.hlen + (f.size - 8 - f.hlen) / 2, "extend past the end of the data section"},
        {f.size - 1, "extend past the end of the data section"},
    };
    for (size_t i = 0; i < sizeof cuts / sizeof cuts[0]; i++) {
        cr_assert_lt(cuts[i].len, f.size);
        spit(f.path, f.b, cuts[i].len);
        char what[64];
        snprintf(what, sizeof what, "truncated to %zu of %zu bytes", cuts[i].len, f.size);
        expect_load_fail(ctx, f.path, cuts[i].expect, what);
    }
    /* the untruncated file loads */
    cr_assert_eq(tg_load(ctx, f.good), 0, "%s", tg_errmsg(ctx));
    free(f.b);
}

Test(io, bad_header_lengths_are_rejected)
{
    saved_file f = saved_and_damaged("bad");

    put_le64(f.b, f.size); /* longer than the file */
    spit(f.path, f.b, f.size);
    char expect[128];
    snprintf(expect, sizeof expect, "header length %zu runs past the end of the file (%zu bytes",
             f.size, f.size);
    expect_load_fail(ctx, f.path, expect, "header length = file size");

    put_le64(f.b, 100000001);
    spit(f.path, f.b, f.size);
    expect_load_fail(ctx, f.path, "header length 100000001 exceeds the limit of 100000000 bytes",
                     "header length > 100,000,000");

    put_le64(f.b, UINT64_MAX);
    spit(f.path, f.b, f.size);
    expect_load_fail(ctx, f.path, "header length 18446744073709551615 exceeds the limit",
                     "header length 2^64-1");

    put_le64(f.b, f.hlen - 1); /* one byte short: the JSON loses its last space or brace */
    spit(f.path, f.b, f.size);
    snapshot s = snap(ctx);
    cr_assert_eq(tg_load(ctx, f.path), -1);
    cr_assert_not_null(strstr(tg_errmsg(ctx), "tg_load: "));
    check_snap(ctx, &s, 1, "header length off by one");
    free_snap(&s);
    tg_clear_error(ctx);
    free(f.b);
}

Test(io, flipped_data_bytes_fail_the_checksum)
{
    saved_file f = saved_and_damaged("flip");
    size_t data = 8 + f.hlen; /* where the data section starts */
    size_t at[] = {data, data + (f.size - data) / 2, f.size - 1};
    for (int i = 0; i < 3; i++) {
        f.b[at[i]] ^= 0x10;
        spit(f.path, f.b, f.size);
        expect_load_fail(ctx, f.path, "checksum mismatch: __metadata__ says tapegrad.xxh3 ",
                         "flipped data byte");
        f.b[at[i]] ^= 0x10;
    }
    spit(f.path, f.b, f.size);
    cr_assert_eq(tg_load(ctx, f.path), 0, "%s", tg_errmsg(ctx));
    free(f.b);
}

Test(io, other_files_are_rejected)
{
    make_small(ctx);
    const char *missing = in_dir("missing");
    expect_load_fail(ctx, missing, "cannot open: No such file or directory", "missing file");
    expect_load_fail(ctx, dir, "not a regular file", "a directory");
}

/* ---- strict and non-strict loading ------------------------------------- */

Test(io, load_flags_allow_missing_and_extra)
{
    fill_small_data();
    make_small(ctx);
    const char *path = in_dir("f");

    write_st(path, "{" A_OK "}", small_data, 24); /* b missing */
    cr_assert_eq(tg_load(ctx, path), -1);
    tg_clear_error(ctx);
    cr_assert_eq(tg_load_ex(ctx, path, TG_LOAD_ALLOW_EXTRA), -1);
    tg_clear_error(ctx);
    cr_assert_eq(tg_load_ex(ctx, path, TG_LOAD_ALLOW_MISSING), 0, "%s", tg_errmsg(ctx));
    cr_assert_eq(((const float *)tg_data(tg_param_at(ctx, 0)))[2], 3.0f);
    cr_assert_eq(((const double *)tg_data(tg_param_at(ctx, 1)))[0], -2.0, "b keeps its value");

    /* c is extra (and of a dtype no parameter can have) */
    write_st(path,
             "{" A_OK "," B_OK ",\"c\":{\"dtype\":\"I32\",\"shape\":[1],\"data_offsets\":[40,44]}}",
             small_data, 44);
    cr_assert_eq(tg_load_ex(ctx, path, TG_LOAD_ALLOW_MISSING), -1);
    tg_clear_error(ctx);
    cr_assert_eq(tg_load_ex(ctx, path, TG_LOAD_ALLOW_EXTRA), 0, "%s", tg_errmsg(ctx));
    cr_assert_eq(((const double *)tg_data(tg_param_at(ctx, 1)))[0], 7.25);

    /* extra tensors of dtypes tapegrad does not have are skipped (a BatchNorm's
     * I64 num_batches_tracked, a U8 mask) ... */
    write_st(path,
             "{" A_OK "," B_OK ",\"c\":{\"dtype\":\"U8\",\"shape\":[4],\"data_offsets\":[40,44]},"
             "\"n\":{\"dtype\":\"I64\",\"shape\":[],\"data_offsets\":[44,52]}}",
             small_data, 52);
    cr_assert_eq(tg_load_ex(ctx, path, TG_LOAD_ALLOW_EXTRA), 0, "%s", tg_errmsg(ctx));
    cr_assert_eq(tg_load(ctx, path), -1, "strict loading refuses them");
    cr_assert_not_null(strstr(tg_errmsg(ctx), "tensor 'c' (U8 [4]) in the file is not a parameter"),
                       "%s", tg_errmsg(ctx));
    tg_clear_error(ctx);
    /* ... but a parameter's name with such a dtype is an error */
    write_st(path, "{\"a\":{\"dtype\":\"I64\",\"shape\":[2,3],\"data_offsets\":[0,48]}}",
             small_data, 48);
    cr_assert_eq(tg_load_ex(ctx, path, TG_LOAD_ALLOW_MISSING | TG_LOAD_ALLOW_EXTRA), -1);
    cr_assert_not_null(strstr(tg_errmsg(ctx), "tensor 'a': the file has dtype I64, the parameter is F32"),
                       "%s", tg_errmsg(ctx));
    tg_clear_error(ctx);
    /* extra tensors are still validated */
    write_st(path,
             "{" A_OK "," B_OK ",\"c\":{\"dtype\":\"U4\",\"shape\":[4],\"data_offsets\":[40,44]}}",
             small_data, 44);
    cr_assert_eq(tg_load_ex(ctx, path, TG_LOAD_ALLOW_EXTRA), -1);
    cr_assert_not_null(strstr(tg_errmsg(ctx), "tensor 'c': unknown dtype 'U4'"));
    tg_clear_error(ctx);
    /* and a matching name must still match dtype and shape */
    write_st(path, "{\"a\":{\"dtype\":\"F32\",\"shape\":[6],\"data_offsets\":[0,24]}}", small_data,
             24);
    cr_assert_eq(tg_load_ex(ctx, path, TG_LOAD_ALLOW_MISSING | TG_LOAD_ALLOW_EXTRA), -1);
    cr_assert_not_null(strstr(tg_errmsg(ctx), "the file has shape [6], the parameter is [2,3]"));
}

/* F16 and BF16 tensors load into F32 and F64 parameters, exactly */
Test(io, half_precision_tensors_load_into_float_parameters)
{
    const char *path = in_dir("half");
    tg_tensor *a = tg_param(ctx, "a", TG_F32, 1, (int64_t[]){6});
    tg_tensor *b = tg_param(ctx, "b", TG_F64, 1, (int64_t[]){3});
    /* F16: 1, -2.5, 0.5, 65504 (largest), 2^-24 (smallest subnormal), -0 */
    const uint16_t h[6] = {0x3C00, 0xC100, 0x3800, 0x7BFF, 0x0001, 0x8000};
    /* BF16: 1, -2.5, 3.140625 */
    const uint16_t bf[3] = {0x3F80, 0xC020, 0x4049};
    unsigned char data[18];
    for (int i = 0; i < 6; i++) data[2 * i] = h[i] & 255, data[2 * i + 1] = h[i] >> 8;
    for (int i = 0; i < 3; i++) data[12 + 2 * i] = bf[i] & 255, data[12 + 2 * i + 1] = bf[i] >> 8;
    write_st(path,
             "{\"a\":{\"dtype\":\"F16\",\"shape\":[6],\"data_offsets\":[0,12]},"
             "\"b\":{\"dtype\":\"BF16\",\"shape\":[3],\"data_offsets\":[12,18]}}",
             data, 18);
    cr_assert_eq(tg_load(ctx, path), 0, "%s", tg_errmsg(ctx));
    const float *av = tg_data(a);
    const float want[6] = {1.0f, -2.5f, 0.5f, 65504.0f, 0x1p-24f, -0.0f};
    for (int i = 0; i < 6; i++) cr_assert_eq(av[i], want[i], "a[%d] = %g", i, av[i]);
    cr_assert(signbit(av[5]), "-0 keeps its sign");
    const double *bv = tg_data(b);
    cr_assert(bv[0] == 1.0 && bv[1] == -2.5 && bv[2] == 3.140625);
    /* a half tensor must still match the parameter's shape */
    write_st(path, "{\"a\":{\"dtype\":\"F16\",\"shape\":[2,3],\"data_offsets\":[0,12]}}", data, 12);
    cr_assert_eq(tg_load_ex(ctx, path, TG_LOAD_ALLOW_MISSING), -1);
    cr_assert_not_null(strstr(tg_errmsg(ctx), "tensor 'a': the file has shape [2,3], the parameter is [6]"),
                       "%s", tg_errmsg(ctx));
}

/* ---- failing saves leave the previous checkpoint intact -------------------- */

/* tg_save(ctx, path) must fail with a message that starts "tg_save: <path>:
 * <what>", then " '<path>.tmp." when tmp, and contains cause (unless NULL);
 * clears the error */
static void expect_save_fail(const char *path, const char *what, int tmp, const char *cause)
{
    cr_assert_eq(tg_save(ctx, path), -1, "saving to %s did not fail", path);
    char expect[600];
    int k = snprintf(expect, sizeof expect, "tg_save: %s: %s", path, what);
    if (tmp) snprintf(expect + k, sizeof expect - (size_t)k, " '%s.tmp.", path);
    const char *m = tg_errmsg(ctx);
    cr_assert(strncmp(m, expect, strlen(expect)) == 0, "'%s' does not start with '%s'", m, expect);
    if (cause) cr_assert_not_null(strstr(m, cause), "'%s' lacks '%s'", m, cause);
    tg_clear_error(ctx);
}

/* the file at path holds size bytes equal to want's; what names the case */
static void expect_file_is(const char *path, const unsigned char *want, size_t size,
                           const char *what)
{
    size_t n;
    unsigned char *now = slurp(path, &n);
    cr_assert(n == size && memcmp(now, want, size) == 0, "%s: %s changed", what, path);
    free(now);
}

Test(io, save_into_a_missing_directory_fails)
{
    make_small(ctx);
    const char *path = in_dir("no/such/dir/ck.safetensors");
    expect_save_fail(path, "cannot create temporary file", 1, "No such file or directory");
    cr_assert_eq(stray_files(NULL, NULL), 0);
}

Test(io, save_over_a_directory_fails_and_leaves_no_temporary)
{
    make_small(ctx);
    const char *good = in_dir("ck");
    cr_assert_eq(tg_save(ctx, good), 0, "%s", tg_errmsg(ctx));
    size_t size;
    unsigned char *before = slurp(good, &size);

    const char *sub = in_dir("sub");
    cr_assert_eq(mkdir(sub, 0755), 0);
    expect_save_fail(sub, "is a directory; tg_save replaces only a regular file", 0, NULL);
    cr_assert_eq(stray_files("ck", "sub"), 0);
    expect_file_is(good, before, size, "saving over a directory");
    free(before);
}

Test(io, write_error_leaves_the_previous_checkpoint_intact)
{
    make_big(ctx, 0.0);
    const char *path = in_dir("ck");
    cr_assert_eq(tg_save(ctx, path), 0, "%s", tg_errmsg(ctx));
    size_t size;
    unsigned char *before = slurp(path, &size);
    snapshot saved = snap(ctx);

    /* a file size limit makes write() fail with EFBIG half-way (root too) */
    signal(SIGXFSZ, SIG_IGN);
    struct rlimit lim = {.rlim_cur = size / 2, .rlim_max = RLIM_INFINITY};
    cr_assert_eq(setrlimit(RLIMIT_FSIZE, &lim), 0);
    tg_fill(tg_param_at(ctx, 0), 9.0);
    expect_save_fail(path, "cannot write temporary file", 1, "File too large");
    lim.rlim_cur = RLIM_INFINITY;
    cr_assert_eq(setrlimit(RLIMIT_FSIZE, &lim), 0);

    cr_assert_eq(stray_files("ck", NULL), 0, "the temporary file must be removed");
    expect_file_is(path, before, size, "a failed write");
    cr_assert_eq(tg_load(ctx, path), 0, "%s", tg_errmsg(ctx));
    check_snap(ctx, &saved, 1, "previous checkpoint");
    free_snap(&saved);
    free(before);
}

/* an allocator that fails once `budget` allocations have been made */
static long budget = -1;
static void *failing_alloc(void *ud, void *ptr, size_t osize, size_t nsize)
{
    (void)ud;
    (void)osize;
    if (nsize == 0) {
        free(ptr);
        return NULL;
    }
    if (budget == 0) return NULL;
    if (budget > 0) budget--;
    return realloc(ptr, nsize);
}

/* io(c, path) with a budget of 0, 1, 2, ... allocations until it succeeds
 * (within 100); each failure must leave an error, which is cleared, then
 * check(c, k, user) for the budget k. Returns the number of failures. */
static int fail_each_allocation(tg_ctx *c, int (*io)(tg_ctx *, const char *), const char *path,
                                void (*check)(tg_ctx *, long, void *), void *user)
{
    for (long k = 0; k < 100; k++) {
        budget = k;
        int rc = io(c, path);
        budget = -1;
        if (rc == 0) return (int)k;
        cr_assert(!tg_ok(c), "a failure at allocation %ld left no error", k);
        tg_clear_error(c);
        check(c, k, user);
    }
    cr_assert_fail("%s never succeeded in 100 allocations", path);
    return 0;
}

/* the checkpoint a failing save must leave as it was */
typedef struct {
    const char *path;
    const unsigned char *bytes;
    size_t size;
} file_bytes;

static void save_left_file(tg_ctx *c, long k, void *user)
{
    (void)c;
    const file_bytes *f = user;
    cr_assert_eq(stray_files("ck", NULL), 0);
    char what[48];
    snprintf(what, sizeof what, "a save failing at allocation %ld", k);
    expect_file_is(f->path, f->bytes, f->size, what);
}

static void load_left_params(tg_ctx *c, long k, void *user)
{
    char what[48];
    snprintf(what, sizeof what, "a load failing at allocation %ld", k);
    check_snap(c, user, 1, what);
}

Test(io, out_of_memory_anywhere_in_save_or_load_is_clean)
{
    fill_small_data();
    tg_ctx *c = tg_ctx_new_with_alloc(5, failing_alloc, NULL);
    make_big(c, 0.0);
    const char *path = in_dir("ck");
    cr_assert_eq(tg_save(c, path), 0, "%s", tg_errmsg(c));
    size_t size;
    unsigned char *before = slurp(path, &size);
    tg_fill(tg_param_at(c, 0), 9.0);
    snapshot changed = snap(c);

    file_bytes f = {path, before, size};
    cr_assert_gt(fail_each_allocation(c, tg_save, path, save_left_file, &f), 0,
                 "no allocation was exercised");

    /* load: the parameters keep their values whenever it fails */
    tg_fill(tg_param_at(c, 0), 1.0);
    snapshot mine = snap(c);
    cr_assert_gt(fail_each_allocation(c, tg_load, path, load_left_params, &mine), 0);
    check_snap(c, &changed, 1, "loaded");
    free_snap(&mine);
    free_snap(&changed);
    free(before);
    tg_ctx_free(c);
}

/* ---- byte order -------------------------------------------------------- */

Test(io, big_endian_path_swaps_every_element)
{
    make_big(ctx, 0.0);
    snapshot orig = snap(ctx);
    const char *le = in_dir("le"), *be = in_dir("be");
    cr_assert_eq(tg_save(ctx, le), 0, "%s", tg_errmsg(ctx));
    tgi_io_force_byteswap(1);
    cr_assert_eq(tg_save(ctx, be), 0, "%s", tg_errmsg(ctx));
    tgi_io_force_byteswap(0);

    size_t sl, sb;
    unsigned char *bl = slurp(le, &sl), *bb = slurp(be, &sb);
    uint64_t nl = get_le64(bl), nb = get_le64(bb);
    cr_assert_eq(sl - nl, sb - nb, "same data section size");
    const unsigned char *dl = bl + 8 + nl, *db = bb + 8 + nb;
    /* element by element, the swapped file holds each element's bytes reversed */
    size_t off = 0;
    for (int i = 0; i < tg_param_count(ctx); i++) {
        tg_tensor *p = tg_param_at(ctx, i);
        size_t es = tg_dtype_size(tg_dtype_of(p));
        for (int64_t k = 0; k < tg_numel(p); k++, off += es)
            for (size_t j = 0; j < es; j++) cr_assert_eq(db[off + j], dl[off + es - 1 - j]);
    }
    cr_assert_eq(off, sl - 8 - nl);

    /* a swapping reader restores the values bit-exactly */
    tg_fill(tg_param_at(ctx, 0), 0.0);
    tgi_io_force_byteswap(1);
    cr_assert_eq(tg_load(ctx, be), 0, "%s", tg_errmsg(ctx));
    tgi_io_force_byteswap(0);
    check_snap(ctx, &orig, 1, "swapped round trip");
    free_snap(&orig);
    free(bl);
    free(bb);
}

/* ---- an independent reader agrees ---------------------------------------- */

Test(io, python_reader_agrees)
{
    if (access("/usr/bin/python3", X_OK) != 0)
        cr_skip_test("/usr/bin/python3 not found: the independent-reader check was skipped");
    make_big(ctx, 0.5);
    const char *path = in_dir("py.safetensors");
    const char *keys[] = {"arch"}, *vals[] = {"2-3-1"};
    cr_assert_eq(tg_save_meta(ctx, path, keys, vals, 1), 0, "%s", tg_errmsg(ctx));

    char cmd[600];
    snprintf(cmd, sizeof cmd, "/usr/bin/python3 '%s/tests/safetensors_read.py' '%s'",
             TG_SOURCE_DIR, path);
    FILE *f = popen(cmd, "r");
    cr_assert_not_null(f);
    char line[512];
    int seen[NBIG] = {0}, metas = 0;
    while (fgets(line, sizeof line, f)) {
        line[strcspn(line, "\n")] = '\0';
        char *name = strtok(line, "\t"), *dtype = strtok(NULL, "\t"), *shape = strtok(NULL, "\t"),
             *sum = strtok(NULL, "\t");
        cr_assert(name && dtype && shape, "bad line from the reader");
        if (!strcmp(name, "meta")) {
            if (!strcmp(dtype, "arch")) cr_assert_str_eq(shape, "2-3-1");
            if (!strcmp(dtype, "format")) cr_assert_str_eq(shape, "pt");
            metas++;
            continue;
        }
        cr_assert_not_null(sum);
        tg_tensor *p = tg_param_find(ctx, name);
        cr_assert_not_null(p, "reader printed unknown tensor '%s'", name);
        int i = 0;
        while (tg_param_at(ctx, i) != p) i++;
        seen[i]++;
        cr_assert_str_eq(dtype, tg_dtype_of(p) == TG_F32 ? "F32" : "F64");
        char sb[64];
        cr_assert_str_eq(shape, tg_shape_str(p, sb, sizeof sb));
        double want = 0.0; /* summed left to right in double, as the reader does */
        for (int64_t k = 0; k < tg_numel(p); k++)
            want += tg_dtype_of(p) == TG_F32 ? (double)((const float *)tg_data(p))[k]
                                             : ((const double *)tg_data(p))[k];
        cr_assert_eq(strtod(sum, NULL), want, "tensor '%s': reader sum %s, ours %.17g", name, sum,
                     want);
    }
    cr_assert_eq(pclose(f), 0, "the reader rejected the file");
    cr_assert_eq(metas, 3, "format, tapegrad.xxh3 and arch");
    for (int i = 0; i < NBIG; i++) cr_assert_eq(seen[i], 1, "tensor %d printed %d times", i, seen[i]);
}
