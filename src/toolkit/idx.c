/* SPDX-License-Identifier: MIT */
/* idx.c: the IDX format of MNIST and Fashion-MNIST, gzip'd or not.
 *
 * An IDX file is a 4-byte magic 00 00 TT DD (TT the element type, DD the
 * number of dimensions), DD big-endian u32 sizes, then the elements in
 * row-major order, big-endian. One reader serves gzip'd and plain files: it
 * looks at the first two bytes (1f 8b is gzip) and either inflates through
 * zlib's stream API, whose allocations go through the context's allocator, or
 * passes the bytes through. Every byte offset in a message counts in the
 * uncompressed stream, which for a plain file is the file offset. The file is
 * opened without blocking and must be a regular file (tgi_open_regular).
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
#include <unistd.h>
#include <zlib.h>


#define IDX_CHUNK 65536 /* a multiple of every element size */
#define IDX_IN 65536    /* bytes read from the file at a time */
/* deflate's best ratio is about 1032:1; a gzip file of M bytes cannot hold
 * more than this many bytes, so a header that claims more is refused before
 * anything is allocated for it */
#define IDX_GZ_RATIO 1100u

typedef struct {
    tg_ctx *ctx;
    const char *fn;   /* public function, for messages */
    const char *path;
    int fd;
    int gz;           /* 1: inflating a gzip stream */
    int zinit;        /* zs needs inflateEnd */
    int eof;          /* the file has no more bytes */
    int zend;         /* the gzip stream ended (Z_STREAM_END) */
    uint64_t file_size;
    unsigned char *in; /* IDX_IN bytes from the ctx allocator */
    z_stream zs;      /* gz: next_in/avail_in into `in`; plain: the same fields */
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

/* zlib's allocations through the context's allocator. zfree gets no size, so
 * each block carries it in a 16-byte prefix. */
static voidpf idx_zalloc(voidpf opaque, uInt items, uInt size) {
    tg_ctx *ctx = opaque;
    size_t n = (size_t)items * size;
    unsigned char *p = tgi_malloc(ctx, n + 16);
    if (!p) return Z_NULL;
    memcpy(p, &n, sizeof n);
    return p + 16;
}

static void idx_zfree(voidpf opaque, voidpf address) {
    if (!address) return;
    unsigned char *p = (unsigned char *)address - 16;
    size_t n;
    memcpy(&n, p, sizeof n);
    tgi_free(opaque, p, n + 16);
}

/* Refill the input buffer from the file; 0 ok (r->eof set at the end), -1 error. */
static int idx_fill(idx_file *r) {
    ssize_t k;
    do k = read(r->fd, r->in, IDX_IN);
    while (k < 0 && errno == EINTR);
    if (k < 0) {
        tg_set_error(r->ctx, "%s: %s: at byte %llu: read error: %s", r->fn, r->path,
                     (unsigned long long)r->off, strerror(errno));
        return -1;
    }
    r->zs.next_in = r->in;
    r->zs.avail_in = (uInt)k;
    if (k == 0) r->eof = 1;
    return 0;
}

/* After the end of a gzip member: another member may follow (gzip a b
 * concatenates), anything else is data the format does not allow. 0: a new
 * member started; 1: the file ends here; -1: error. */
static int idx_gz_next_member(idx_file *r) {
    if (!r->zs.avail_in && !r->eof && idx_fill(r) != 0) return -1;
    if (!r->zs.avail_in) return 1;
    if (r->zs.next_in[0] != 0x1f) {
        tg_set_error(r->ctx, "%s: %s: at byte %llu: unexpected data after the end of the gzip "
                             "stream", r->fn, r->path, (unsigned long long)r->off);
        return -1;
    }
    r->zend = 0;
    if (inflateReset(&r->zs) != Z_OK) {
        tg_set_error(r->ctx, "%s: %s: inflateReset failed", r->fn, r->path);
        return -1;
    }
    return 0;
}

/* Up to n bytes of the (uncompressed) stream into buf: the count (0 at the
 * end), or -1 with the error recorded. */
static long idx_src_read(idx_file *r, unsigned char *buf, size_t n) {
    size_t got = 0;
    while (got < n) {
        if (!r->gz) {
            if (!r->zs.avail_in) {
                if (r->eof) break;
                if (idx_fill(r) != 0) return -1;
                if (r->eof) break;
            }
            size_t k = r->zs.avail_in < n - got ? r->zs.avail_in : n - got;
            memcpy(buf + got, r->zs.next_in, k);
            r->zs.next_in += k;
            r->zs.avail_in -= (uInt)k;
            got += k;
            continue;
        }
        if (r->zend) {
            int m = idx_gz_next_member(r);
            if (m < 0) return -1;
            if (m > 0) break;
        }
        if (!r->zs.avail_in && !r->eof && idx_fill(r) != 0) return -1;
        r->zs.next_out = buf + got;
        r->zs.avail_out = (uInt)(n - got);
        int zr = inflate(&r->zs, Z_NO_FLUSH);
        got = n - r->zs.avail_out;
        if (zr == Z_STREAM_END) {
            r->zend = 1;
        } else if (zr == Z_MEM_ERROR) {
            return -1; /* recorded by the allocator */
        } else if (zr == Z_BUF_ERROR && r->eof && !r->zs.avail_in) {
            /* no progress possible and no input left: the stream is cut short
             * (Z_OK with input used up may still hold output or the trailer) */
            r->gz = 2;
            break;
        } else if (zr == Z_BUF_ERROR && r->zs.avail_in) {
            tg_set_error(r->ctx, "%s: %s: at byte %llu: corrupt gzip data: no progress", r->fn,
                         r->path, (unsigned long long)(r->off + got));
            return -1;
        } else if (zr != Z_OK && zr != Z_BUF_ERROR) {
            tg_set_error(r->ctx, "%s: %s: at byte %llu: corrupt gzip data: %s", r->fn, r->path,
                         (unsigned long long)(r->off + got), r->zs.msg ? r->zs.msg : "error");
            return -1;
        }
    }
    return (long)got;
}

/* Read exactly n bytes (n <= IDX_CHUNK) into buf, or record why not. `what`
 * says what was expected, for the message. 0 ok, -1 error. */
static int idx_read(idx_file *r, void *buf, size_t n, const char *what) {
    long k = idx_src_read(r, buf, n);
    if (k < 0) return -1;
    if ((size_t)k < n) {
        tg_set_error(r->ctx, "%s: %s: truncated at byte %llu: expected %s%s", r->fn, r->path,
                     (unsigned long long)(r->off + (uint64_t)k), what,
                     r->gz == 2 ? " (gzip: unexpected end of file)" : "");
        return -1;
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
    r->fd = -1;
    tgi_api(ctx, fn);
    struct stat st;
    r->fd = tgi_open_regular(path, &st);
    if (r->fd == TGI_NOT_REGULAR) {
        tg_set_error(ctx, "%s: %s is %s, not a regular file", fn, path, tgi_file_kind(st.st_mode));
        return -1;
    }
    if (r->fd < 0) {
        tg_set_error(ctx, "%s: cannot open %s: %s", fn, path, strerror(errno));
        return -1;
    }
    r->file_size = (uint64_t)st.st_size;
    if (!(r->in = tgi_malloc(ctx, IDX_IN)) || idx_fill(r) != 0) return -1;
    if (r->zs.avail_in >= 2 && r->in[0] == 0x1f && r->in[1] == 0x8b) {
        r->zs.zalloc = idx_zalloc;
        r->zs.zfree = idx_zfree;
        r->zs.opaque = ctx;
        int zr = inflateInit2(&r->zs, 16 + MAX_WBITS); /* gzip wrapper only */
        if (zr != Z_OK) {
            if (zr != Z_MEM_ERROR) tg_set_error(ctx, "%s: %s: zlib: %s", fn, path, zError(zr));
            return -1;
        }
        r->zinit = 1;
        r->gz = 1;
    }
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
    uint64_t end = 4 + 4 * (uint64_t)r->ndim + r->data_bytes;
    if (r->gz && end / IDX_GZ_RATIO > r->file_size) {
        tg_set_error(ctx, "%s: %s: at byte 4: the sizes announce %llu bytes, more than a gzip "
                          "file of %llu bytes can hold", fn, path, (unsigned long long)end,
                     (unsigned long long)r->file_size);
        return -1;
    }
    if (!r->gz) {
        uint64_t size = r->file_size;
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

/* The file must end where its header says: no more data, and for a gzip
 * file no more bytes after the stream either (idx_src_read refuses them). */
static int idx_expect_end(idx_file *r) {
    unsigned char c;
    long k = idx_src_read(r, &c, 1);
    if (k > 0) {
        tg_set_error(r->ctx, "%s: %s: at byte %llu: unexpected data after the end given by the "
                             "header's sizes", r->fn, r->path, (unsigned long long)r->off);
        return -1;
    }
    if (k < 0) return -1;
    if (r->gz == 2) {
        tg_set_error(r->ctx, "%s: %s: truncated at byte %llu: the gzip stream is cut short",
                     r->fn, r->path, (unsigned long long)r->off);
        return -1;
    }
    return 0;
}

static void idx_close(idx_file *r) {
    if (r->zinit) inflateEnd(&r->zs);
    r->zinit = 0;
    if (r->fd >= 0) close(r->fd);
    r->fd = -1;
    tgi_free(r->ctx, r->in, IDX_IN);
    r->in = NULL;
}

static tg_dataset *load_idx(tg_ctx *ctx, const char *fn, const char *images_path,
                            const char *labels_path) {
    idx_file im, lb;
    memset(&lb, 0, sizeof lb);
    lb.fd = -1;
    lb.ctx = ctx;
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
        struct stat st; /* (not fopen: it would block on a FIFO) */
        if (stat(out, &st) == 0) return 0;
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
