/* SPDX-License-Identifier: MIT */
/* npy.c: one tensor to and from NumPy's .npy format
 * (https://numpy.org/doc/stable/reference/generated/numpy.lib.format.html):
 *
 *   "\x93NUMPY" major minor   magic and version (1.0 written; 1.0, 2.0, 3.0 read)
 *   u16 (u32 from 2.0) HLEN   little-endian length of the header text
 *   header                    a Python dict literal, space-padded, ending in '\n':
 *                             {'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }
 *   data                      the elements in C order
 *
 * tg_save_npy writes little-endian ('<f4', '<f8', '<i4') with the header padded
 * so that the data starts at a multiple of 64 bytes, as NumPy does. tg_load_npy
 * reads either byte order and refuses Fortran order, other dtypes, more than
 * TG_MAX_DIMS dimensions and files whose size does not match the shape. */
#include "toolkit.h"

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

#define NPY_MAGIC "\x93NUMPY"
#define NPY_ALIGN 64
#define NPY_MAX_HEADER 65536 /* far more than any header of <= TG_MAX_DIMS dims */

/* each dtype's descr, without the byte order */
static const char *const npy_descrs[] = {[TG_F32] = "f4", [TG_F64] = "f8", [TG_I32] = "i4"};
#define NPY_N_DESCRS ((int)(sizeof npy_descrs / sizeof npy_descrs[0]))

static const char *npy_descr(tg_dtype dt) {
    return (unsigned)dt < NPY_N_DESCRS ? npy_descrs[dt] : "?";
}

int tg_save_npy(tg_ctx *ctx, const tg_tensor *t, const char *path) {
    static const char fn[] = "tg_save_npy";
    if (!ctx || !tg_ok(ctx)) return -1;
    if (!tgi_check_arg(ctx, fn, "t", t)) return -1;
    if (!path) {
        tg_set_error(ctx, "%s: argument path is NULL", fn);
        return -1;
    }
    char head[256];
    int len = snprintf(head, sizeof head, "{'descr': '<%s', 'fortran_order': False, 'shape': (",
                       npy_descr(t->dtype));
    for (int d = 0; d < t->ndim; d++)
        len += snprintf(head + len, sizeof head - (size_t)len, "%s%" PRId64 "%s", d ? ", " : "",
                        t->shape[d], t->ndim == 1 ? "," : "");
    len += snprintf(head + len, sizeof head - (size_t)len, "), }");
    /* spaces, then '\n', so that 10 + the header length is a multiple of 64 */
    int total = (10 + len + 1 + NPY_ALIGN - 1) / NPY_ALIGN * NPY_ALIGN, hlen = total - 10;
    while (len < hlen - 1) head[len++] = ' ';
    head[len++] = '\n';
    unsigned char pre[10] = {0x93, 'N', 'U', 'M', 'P', 'Y', 1, 0, (unsigned char)(hlen & 255),
                             (unsigned char)(hlen >> 8)};

    tgi_api(ctx, fn);
    if (tgi_save_target(ctx, fn, path) != 0) return -1;
    FILE *f = fopen(path, "wb");
    if (!f) {
        tg_set_error(ctx, "%s: cannot create %s: %s", fn, path, strerror(errno));
        return -1;
    }
    size_t esize = tg_dtype_size(t->dtype), bytes = (size_t)t->numel * esize;
    int ok = fwrite(pre, 1, sizeof pre, f) == sizeof pre && fwrite(head, 1, (size_t)len, f) == (size_t)len;
    if (ok && bytes) {
        if (tgi_host_is_le()) {
            ok = fwrite(t->data, 1, bytes, f) == bytes;
        } else { /* one element at a time, swapped */
            const unsigned char *p = t->data;
            for (int64_t i = 0; ok && i < t->numel; i++, p += esize) {
                unsigned char e[8];
                memcpy(e, p, esize);
                tgi_byteswap(e, esize, esize);
                ok = fwrite(e, 1, esize, f) == esize;
            }
        }
    }
    int err = errno;
    if (fclose(f) != 0 && ok) ok = 0, err = errno;
    if (!ok) {
        tg_set_error(ctx, "%s: cannot write %s: %s", fn, path, strerror(err));
        remove(path);
        return -1;
    }
    return 0;
}

/* the text after 'key': in the header dict, or NULL */
static const char *npy_value(const char *head, const char *key) {
    char pat[32];
    snprintf(pat, sizeof pat, "'%s'", key);
    const char *p = strstr(head, pat);
    if (!p) return NULL;
    p += strlen(pat);
    while (*p == ' ') p++;
    if (*p != ':') return NULL;
    p++;
    while (*p == ' ') p++;
    return p;
}

/* the header dict into dtype, byte order, shape; 0 ok, or a message */
static const char *npy_parse_header(const char *head, tg_dtype *dt, int *swap, int *ndim,
                                    int64_t *shape) {
    const char *d = npy_value(head, "descr"), *fo = npy_value(head, "fortran_order"),
               *sh = npy_value(head, "shape");
    if (!d || !fo || !sh) return "the header lacks 'descr', 'fortran_order' or 'shape'";
    if (strncmp(fo, "False", 5) != 0) return "Fortran order is not supported (save C order)";
    if (d[0] != '\'' || !d[1] || !d[2] || !d[3] || d[4] != '\'')
        return "descr is not one of '<f4', '<f8', '<i4' (or '>' / '=' byte orders)";
    char order = d[1];
    if (order == '=' || order == '|') order = tgi_host_is_le() ? '<' : '>';
    if (order != '<' && order != '>') return "descr has an unknown byte order";
    int k = 0;
    while (k < NPY_N_DESCRS && strncmp(d + 2, npy_descrs[k], 2) != 0) k++;
    if (k == NPY_N_DESCRS) return "descr is not f4, f8 or i4 (float32, float64, int32)";
    *dt = (tg_dtype)k;
    *swap = (order == '<') != tgi_host_is_le();
    if (*sh != '(') return "shape is not a tuple";
    const char *p = sh + 1;
    *ndim = 0;
    for (;;) {
        while (*p == ' ') p++;
        if (*p == ')') break;
        if (*ndim == TG_MAX_DIMS) return "more dimensions than tapegrad supports";
        char *end;
        errno = 0;
        long long v = strtoll(p, &end, 10);
        if (end == p || errno || v < 0) return "shape holds something other than sizes";
        shape[(*ndim)++] = v;
        p = end;
        while (*p == ' ') p++;
        if (*p == ',') p++;
        else if (*p != ')') return "shape is malformed";
    }
    return NULL;
}

tg_tensor *tg_load_npy(tg_ctx *ctx, const char *path) {
    static const char fn[] = "tg_load_npy";
    if (!ctx || !tg_ok(ctx)) return NULL;
    if (!path) {
        tg_set_error(ctx, "%s: argument path is NULL", fn);
        return NULL;
    }
    tgi_api(ctx, fn);
    /* a regular file only, checked before anything that could block (a FIFO) */
    struct stat st;
    int fd = tgi_open_regular(path, &st);
    if (fd == TGI_NOT_REGULAR) {
        tg_set_error(ctx, "%s: %s is %s, not a regular file", fn, path, tgi_file_kind(st.st_mode));
        return NULL;
    }
    FILE *f = fd >= 0 ? fdopen(fd, "rb") : NULL;
    if (!f) {
        tg_set_error(ctx, "%s: cannot open %s: %s", fn, path, strerror(errno));
        if (fd >= 0) close(fd);
        return NULL;
    }
    tg_tensor *t = NULL;
    char *head = NULL;
    const char *why = NULL;
    unsigned char pre[12];
    size_t hlen = 0;
    if (fread(pre, 1, 10, f) != 10 || memcmp(pre, NPY_MAGIC, 6) != 0) {
        why = "not a .npy file (no \\x93NUMPY magic)";
    } else if (pre[6] == 1) {
        hlen = (size_t)pre[8] | (size_t)pre[9] << 8;
    } else if (pre[6] == 2 || pre[6] == 3) {
        if (fread(pre + 10, 1, 2, f) != 2) why = "truncated header";
        hlen = (size_t)pre[8] | (size_t)pre[9] << 8 | (size_t)pre[10] << 16 | (size_t)pre[11] << 24;
    } else {
        why = "unknown .npy version";
    }
    if (!why && hlen > NPY_MAX_HEADER) why = "header longer than 64 KiB";
    if (!why && !(head = tgi_malloc(ctx, hlen + 1))) goto done; /* error recorded */
    if (!why && fread(head, 1, hlen, f) != hlen) why = "truncated header";
    tg_dtype dt = TG_F32;
    int swap = 0, ndim = 0;
    int64_t shape[TG_MAX_DIMS];
    if (!why) {
        head[hlen] = '\0';
        why = npy_parse_header(head, &dt, &swap, &ndim, shape);
    }
    if (!why) {
        long here = ftell(f);
        if (here < 0 || fseek(f, 0, SEEK_END) != 0) why = "cannot find the file size";
        long end = why ? 0 : ftell(f);
        if (!why && fseek(f, here, SEEK_SET) != 0) why = "cannot seek";
        uint64_t numel = 1;
        for (int d = 0; !why && d < ndim; d++) {
            if (shape[d] && numel > UINT64_MAX / (uint64_t)shape[d]) why = "shape too large";
            else numel *= (uint64_t)shape[d];
        }
        if (!why && (numel > UINT64_MAX / 8 ||
                     (uint64_t)(end - here) != numel * tg_dtype_size(dt))) {
            tg_set_error(ctx, "%s: %s: the shape needs %" PRIu64 " bytes of data, the file has %ld",
                         fn, path, numel * tg_dtype_size(dt), end - here);
            goto done;
        }
    }
    if (why) {
        tg_set_error(ctx, "%s: %s: %s", fn, path, why);
        goto done;
    }
    t = tgi_tensor_new(ctx, fn, dt, ndim, shape, 0);
    if (!t) goto done;
    size_t bytes = (size_t)t->numel * tg_dtype_size(dt);
    if (bytes && fread(t->data, 1, bytes, f) != bytes) {
        tg_set_error(ctx, "%s: %s: cannot read the data", fn, path);
        t = NULL;
        goto done;
    }
    if (swap) tgi_byteswap(t->data, (size_t)t->numel * tg_dtype_size(dt), tg_dtype_size(dt));
done:
    if (head) tgi_free(ctx, head, hlen + 1);
    fclose(f);
    return t;
}
