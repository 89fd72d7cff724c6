/* idx.c: the IDX format of MNIST and Fashion-MNIST, gzip'd or not.
 *
 * An IDX file is a 4-byte magic 00 00 TT DD (TT the element type, DD the
 * number of dimensions), DD big-endian u32 sizes, then the elements in
 * row-major order, big-endian. zlib's gzread reads gzip'd and plain files
 * alike (it looks at the first bytes), so one reader serves both; every byte
 * offset in a message counts in the uncompressed stream, which for a plain
 * file is the file offset.
 *
 * The loader reads both headers first (so a count mismatch costs nothing),
 * then the elements through a fixed 64 KiB buffer converting as it goes (no
 * second copy of a 47 MB file), and finally insists that the file ends where
 * the header says. Nothing is read past a buffer: every read asks zlib for at
 * most the bytes the buffer holds.
 */
#include "toolkit.h"

#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <sys/stat.h>
#include <zlib.h>


#define IDX_CHUNK 65536 /* a multiple of every element size */

typedef struct {
    tg_ctx *ctx;
    const char *fn;   /* public function, for messages */
    const char *path;
    gzFile f;
    uint64_t off;     /* bytes consumed so far (uncompressed) */
    int type;         /* element type byte */
    int ndim;
    uint32_t dims[4];
    size_t esize;     /* bytes per element */
    uint64_t data_bytes; /* bytes of elements the header announces */
} idx_file;

static size_t elem_size(int type) {
    switch (type) {
    case 0x08: case 0x09: return 1; /* u8, i8 */
    case 0x0B: return 2;            /* i16 */
    case 0x0C: case 0x0D: return 4; /* i32, f32 */
    case 0x0E: return 8;            /* f64 */
    default: return 0;
    }
}

static const char *type_name(int type) {
    switch (type) {
    case 0x08: return "u8";
    case 0x09: return "i8";
    case 0x0B: return "i16";
    case 0x0C: return "i32";
    case 0x0D: return "f32";
    case 0x0E: return "f64";
    default: return "?";
    }
}

static uint32_t be32(const unsigned char *p) {
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | (uint32_t)p[3];
}

/* One big-endian element as a double. */
static double elem_value(int type, const unsigned char *p) {
    switch (type) {
    case 0x08: return p[0];
    case 0x09: return (int8_t)p[0];
    case 0x0B: return (int16_t)(uint16_t)((unsigned)p[0] << 8 | p[1]);
    case 0x0C: return (int32_t)be32(p);
    case 0x0D: {
        uint32_t u = be32(p);
        float v;
        memcpy(&v, &u, sizeof v);
        return v;
    }
    default: { /* 0x0E */
        uint64_t u = (uint64_t)be32(p) << 32 | be32(p + 4);
        double v;
        memcpy(&v, &u, sizeof v);
        return v;
    }
    }
}

/* Read exactly n bytes (n <= IDX_CHUNK) into buf, or record why not. `what`
 * says what was expected, for the message. 0 ok, -1 error. */
static int idx_read(idx_file *r, void *buf, size_t n, const char *what) {
    size_t got = 0;
    while (got < n) {
        int k = gzread(r->f, (unsigned char *)buf + got, (unsigned)(n - got));
        if (k < 0) {
            int zerr = 0;
            const char *msg = gzerror(r->f, &zerr);
            tg_set_error(r->ctx, "%s: %s: at byte %llu: read error: %s", r->fn, r->path,
                         (unsigned long long)(r->off + got),
                         zerr == Z_ERRNO ? strerror(errno) : msg);
            return -1;
        }
        if (k == 0) {
            int zerr = 0;
            const char *msg = gzerror(r->f, &zerr);
            if (zerr != Z_OK && zerr != Z_BUF_ERROR) {
                tg_set_error(r->ctx, "%s: %s: at byte %llu: read error: %s", r->fn, r->path,
                             (unsigned long long)(r->off + got),
                             zerr == Z_ERRNO ? strerror(errno) : msg);
            } else { /* end of file; Z_BUF_ERROR: a gzip stream cut short */
                tg_set_error(r->ctx, "%s: %s: truncated at byte %llu: expected %s%s%s%s",
                             r->fn, r->path, (unsigned long long)(r->off + got), what,
                             zerr == Z_BUF_ERROR ? " (gzip: " : "",
                             zerr == Z_BUF_ERROR ? msg : "", zerr == Z_BUF_ERROR ? ")" : "");
            }
            return -1;
        }
        got += (size_t)k;
    }
    r->off += n;
    return 0;
}

/* Open `path` and read its header. want_type/want_ndim (0 = any) give the
 * expected magic for the message; labels restricts to 1-D integer files. */
static int idx_open(idx_file *r, tg_ctx *ctx, const char *fn, const char *path, int labels) {
    memset(r, 0, sizeof *r);
    r->ctx = ctx;
    r->fn = fn;
    r->path = path;
    errno = 0;
    r->f = gzopen(path, "rb");
    if (!r->f) {
        tg_set_error(ctx, "%s: cannot open %s: %s", fn, path,
                     errno ? strerror(errno) : "out of memory");
        return -1;
    }
    gzbuffer(r->f, 1u << 17);
    const char *expect = labels ? "expected 0x00000801 (u8 labels, 1 dimension)"
                                : "expected 0x00000803 (u8 images, 3 dimensions) or another "
                                  "IDX type 08/09/0B/0C/0D/0E with 1 to 4 dimensions";
    unsigned char h[4];
    if (idx_read(r, h, 4, "a 4-byte IDX magic number") != 0) return -1;
    uint32_t magic = be32(h);
    r->type = h[2];
    r->ndim = h[3];
    r->esize = elem_size(r->type);
    if (h[0] != 0 || h[1] != 0 || r->esize == 0 || r->ndim < 1 || r->ndim > 4) {
        tg_set_error(ctx, "%s: %s: at byte 0: bad magic 0x%08lx, %s", fn, path,
                     (unsigned long)magic, expect);
        return -1;
    }
    if (labels && (r->ndim != 1 || r->type == 0x0D || r->type == 0x0E)) {
        tg_set_error(ctx, "%s: %s: at byte 0: magic 0x%08lx is %s with %d dimensions, %s", fn,
                     path, (unsigned long)magic, type_name(r->type), r->ndim, expect);
        return -1;
    }
    unsigned char d[16];
    char what[64];
    snprintf(what, sizeof what, "%d big-endian u32 sizes", r->ndim);
    if (idx_read(r, d, (size_t)r->ndim * 4, what) != 0) return -1;
    uint64_t count = 1; /* elements, overflow-checked against 2^62 */
    for (int i = 0; i < r->ndim; i++) {
        r->dims[i] = be32(d + 4 * i);
        if (r->dims[i] == 0) {
            tg_set_error(ctx, "%s: %s: at byte %d: size %d is 0", fn, path, 4 + 4 * i, i);
            return -1;
        }
        if (count > ((uint64_t)1 << 62) / r->dims[i]) {
            tg_set_error(ctx, "%s: %s: at byte %d: the sizes overflow (product of the first %d "
                              "exceeds 2^62)", fn, path, 4 + 4 * i, i + 1);
            return -1;
        }
        count *= r->dims[i];
    }
    /* the floats we make (4 bytes each) and the bytes we read must fit */
    if (count > (uint64_t)(SIZE_MAX / 8) || count > ((uint64_t)1 << 62) / 8) {
        tg_set_error(ctx, "%s: %s: at byte 4: %llu elements are too many", fn, path,
                     (unsigned long long)count);
        return -1;
    }
    r->data_bytes = count * r->esize;
    /* A plain file's size is known: check it before anything is allocated
     * (same messages as the streaming checks). A gzip'd file is checked as
     * it is read, into memory that is touched only as data arrives. */
    struct stat st;
    uint64_t end = 4 + 4 * (uint64_t)r->ndim + r->data_bytes;
    if (gzdirect(r->f) && stat(path, &st) == 0 && S_ISREG(st.st_mode)) {
        uint64_t size = (uint64_t)st.st_size;
        if (size < end) {
            tg_set_error(ctx, "%s: %s: truncated at byte %llu: expected %llu bytes of %s ending "
                              "at byte %llu", fn, path, (unsigned long long)size,
                         (unsigned long long)r->data_bytes, labels ? "labels" : "data",
                         (unsigned long long)end);
            return -1;
        }
        if (size > end) {
            tg_set_error(ctx, "%s: %s: at byte %llu: unexpected data after the end given by the "
                              "header's sizes", fn, path, (unsigned long long)end);
            return -1;
        }
    }
    return 0;
}

/* Read `count` elements converting each to float into out; scale is 1 (as
 * is) or 1/255 (u8 to [0,1]). */
static int idx_read_floats(idx_file *r, float *out, uint64_t count, float scale) {
    unsigned char buf[IDX_CHUNK];
    float lut[256]; /* u8: exactly v / 255 (when scaling), 255 -> 1 */
    for (int v = 0; v < 256; v++) lut[v] = scale == 1.0f ? (float)v : (float)v / 255.0f;
    uint64_t done = 0;
    char what[96];
    while (done < count) {
        uint64_t k = count - done;
        if (k > IDX_CHUNK / r->esize) k = IDX_CHUNK / r->esize;
        snprintf(what, sizeof what, "%llu bytes of data ending at byte %llu",
                 (unsigned long long)r->data_bytes,
                 (unsigned long long)(4 + 4 * (uint64_t)r->ndim + r->data_bytes));
        if (idx_read(r, buf, (size_t)(k * r->esize), what) != 0) return -1;
        if (r->type == 0x08) {
            for (uint64_t i = 0; i < k; i++) out[done + i] = lut[buf[i]];
        } else {
            for (uint64_t i = 0; i < k; i++)
                out[done + i] = (float)(elem_value(r->type, buf + i * r->esize) * scale);
        }
        done += k;
    }
    return 0;
}

static int idx_read_labels(idx_file *r, int32_t *out, uint64_t count, int *n_classes) {
    unsigned char buf[IDX_CHUNK];
    uint64_t done = 0;
    int32_t max = -1;
    char what[96];
    while (done < count) {
        uint64_t k = count - done;
        if (k > IDX_CHUNK / r->esize) k = IDX_CHUNK / r->esize;
        uint64_t at = r->off;
        snprintf(what, sizeof what, "%llu bytes of labels ending at byte %llu",
                 (unsigned long long)r->data_bytes, (unsigned long long)(8 + r->data_bytes));
        if (idx_read(r, buf, (size_t)(k * r->esize), what) != 0) return -1;
        for (uint64_t i = 0; i < k; i++) {
            double v = elem_value(r->type, buf + i * r->esize);
            if (v < 0 || v >= INT32_MAX) {
                tg_set_error(r->ctx, "%s: %s: at byte %llu: label %.0f is not a class index "
                                     "(must be in [0, 2^31-1))", r->fn, r->path,
                             (unsigned long long)(at + i * r->esize), v);
                return -1;
            }
            out[done + i] = (int32_t)v;
            if (out[done + i] > max) max = out[done + i];
        }
        done += k;
    }
    *n_classes = (int)max + 1;
    return 0;
}

/* The file must end where its header says. */
static int idx_expect_end(idx_file *r) {
    unsigned char c;
    int k = gzread(r->f, &c, 1);
    if (k > 0) {
        tg_set_error(r->ctx, "%s: %s: at byte %llu: unexpected data after the end given by the "
                             "header's sizes", r->fn, r->path, (unsigned long long)r->off);
        return -1;
    }
    if (k < 0) {
        int zerr = 0;
        const char *msg = gzerror(r->f, &zerr);
        tg_set_error(r->ctx, "%s: %s: at byte %llu: read error: %s", r->fn, r->path,
                     (unsigned long long)r->off, zerr == Z_ERRNO ? strerror(errno) : msg);
        return -1;
    }
    return 0;
}

static void idx_close(idx_file *r) {
    if (r->f) gzclose(r->f);
    r->f = NULL;
}

static tg_dataset *load_idx(tg_ctx *ctx, const char *fn, const char *images_path,
                            const char *labels_path) {
    idx_file im, lb;
    memset(&lb, 0, sizeof lb);
    tg_dataset *ds = NULL;
    if (idx_open(&im, ctx, fn, images_path, 0) != 0) goto fail;
    if (labels_path) {
        if (idx_open(&lb, ctx, fn, labels_path, 1) != 0) goto fail;
        if (lb.dims[0] != im.dims[0]) {
            tg_set_error(ctx, "%s: %s has %lu items but %s has %lu labels", fn, images_path,
                         (unsigned long)im.dims[0], labels_path, (unsigned long)lb.dims[0]);
            goto fail;
        }
    }
    int64_t n = im.dims[0], nf = 1;
    for (int i = 1; i < im.ndim; i++) nf *= im.dims[i];
    ds = tgi_dataset_alloc(ctx, fn, n, nf, labels_path ? 0 : -1, 0);
    if (!ds) goto fail;
    if (im.ndim > 1) {
        ds->sample_ndim = im.ndim - 1;
        for (int i = 1; i < im.ndim; i++) ds->sample_shape[i - 1] = im.dims[i];
    }
    float scale = im.type == 0x08 ? 1.0f / 255.0f : 1.0f;
    if (idx_read_floats(&im, ds->x, (uint64_t)n * (uint64_t)nf, scale) != 0) goto fail;
    if (idx_expect_end(&im) != 0) goto fail;
    if (labels_path) {
        if (idx_read_labels(&lb, ds->labels, (uint64_t)n, &ds->n_classes) != 0) goto fail;
        if (idx_expect_end(&lb) != 0) goto fail;
    }
    idx_close(&im);
    idx_close(&lb);
    return ds;
fail:
    idx_close(&im);
    idx_close(&lb);
    tg_dataset_free(ds);
    return NULL;
}

tg_dataset *tg_load_idx(tg_ctx *ctx, const char *images_path, const char *labels_path) {
    if (!tg_ok(ctx)) return NULL;
    if (!images_path) {
        tg_set_error(ctx, "tg_load_idx: argument images_path is NULL");
        return NULL;
    }
    return load_idx(ctx, "tg_load_idx", images_path, labels_path);
}

/* First existing file among dir/<prefix><name> for the candidate names;
 * writes it into out. 0 found, -1 not (the names tried in `tried`). */
static int find_file(const char *dir, const char *prefix, const char *const *names, char *out,
                     size_t size, char *tried, size_t tsize) {
    size_t tl = 0;
    tried[0] = '\0';
    for (int i = 0; names[i]; i++) {
        int len = snprintf(out, size, "%s/%s%s", dir, prefix, names[i]);
        if (len < 0 || (size_t)len >= size) continue;
        FILE *f = fopen(out, "rb");
        if (f) {
            fclose(f);
            return 0;
        }
        if (tl < tsize) {
            int w = snprintf(tried + tl, tsize - tl, "%s%s%s", i ? ", " : "", prefix, names[i]);
            if (w > 0) tl += (size_t)w;
        }
    }
    return -1;
}

tg_dataset *tg_load_idx_dir(tg_ctx *ctx, const char *dir, const char *split) {
    static const char fn[] = "tg_load_idx_dir";
    if (!tg_ok(ctx)) return NULL;
    if (!dir || !split) {
        tg_set_error(ctx, "%s: argument %s is NULL", fn, dir ? "split" : "dir");
        return NULL;
    }
    const char *prefix;
    if (strcmp(split, "train") == 0) prefix = "train";
    else if (strcmp(split, "test") == 0 || strcmp(split, "t10k") == 0) prefix = "t10k";
    else {
        tg_set_error(ctx, "%s: split must be \"train\" or \"test\", got \"%s\"", fn, split);
        return NULL;
    }
    static const char *const images[] = {"-images-idx3-ubyte", "-images-idx3-ubyte.gz",
                                         "-images.idx3-ubyte", "-images.idx3-ubyte.gz", NULL};
    static const char *const labels[] = {"-labels-idx1-ubyte", "-labels-idx1-ubyte.gz",
                                         "-labels.idx1-ubyte", "-labels.idx1-ubyte.gz", NULL};
    char ip[4096], lp[4096], tried[320];
    if (find_file(dir, prefix, images, ip, sizeof ip, tried, sizeof tried) != 0) {
        tg_set_error(ctx, "%s: no %s images in %s (tried %s)", fn, split, dir, tried);
        return NULL;
    }
    if (find_file(dir, prefix, labels, lp, sizeof lp, tried, sizeof tried) != 0) {
        tg_set_error(ctx, "%s: no %s labels in %s (tried %s)", fn, split, dir, tried);
        return NULL;
    }
    return load_idx(ctx, fn, ip, lp);
}
