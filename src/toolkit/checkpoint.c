/* SPDX-License-Identifier: MIT */
/* checkpoint.c: checkpoints. Every parameter of a context, by name, in a safetensors
 * file (https://github.com/huggingface/safetensors), so weights move to and
 * from the Python ecosystem:
 *
 *   [8 bytes]  N, the header length, little-endian u64
 *   [N bytes]  UTF-8 JSON object, padded with spaces so that 8 + N % 8 == 0:
 *                "__metadata__": {"format": "pt", "tapegrad.xxh3": "<16 hex>", ...},
 *                "<name>": {"dtype": "F32", "shape": [3,4], "data_offsets": [B, E]},
 *                ...
 *   [rest]     the data section: every tensor's raw little-endian bytes, in
 *              parameter order, back to back; offsets are relative to its start
 *
 * Saving is atomic (temporary file in the same directory, fsync, rename,
 * fsync of the directory). Loading validates everything (layout, JSON, types,
 * dtypes, sizes, offsets, names, checksum) before it copies anything into a
 * parameter. JSON goes through libjansson; the checksum is XXH3-64 of the
 * data section. See docs/checkpoints.md. */
#if !defined(_GNU_SOURCE) && !defined(_XOPEN_SOURCE)
#define _XOPEN_SOURCE 700 /* mkstemp, fsync, fchmod */
#endif

#include "toolkit.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <jansson.h>
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

#define XXH_STATIC_LINKING_ONLY /* XXH3_state_t on the stack */
#include <xxhash.h>

#define IO_MAX_HEADER 100000000ull   /* the reference reader's limit */
#define IO_META_KEY "__metadata__"
#define IO_SUM_KEY "tapegrad.xxh3"
#define IO_CHUNK ((size_t)1 << 16)   /* byte-swap buffer on big-endian hosts */

/* ======================================================================== */
/* Byte order                                                               */
/* ======================================================================== */

/* Files are little-endian. On a big-endian host every element is swapped on
 * the way out and on the way in. The test suite forces the swap on a
 * little-endian host through this hook, so the code path is exercised. */
int tgi_io_force_byteswap(int on);   /* returns the previous setting */
static int io_force_swap;

int tgi_io_force_byteswap(int on) {
    int prev = io_force_swap;
    io_force_swap = on;
    return prev;
}

static int io_need_swap(void) {
    return !tgi_host_is_le() || io_force_swap;
}

/* ======================================================================== */
/* dtypes and small helpers                                                 */
/* ======================================================================== */

/* The dtypes a safetensors file may hold. Those of tapegrad load into
 * parameters of the same dtype; F16 and BF16 load into F32 and F64 parameters
 * (converted exactly: every half is a float); the others can only be skipped
 * (TG_LOAD_ALLOW_EXTRA), e.g. a BatchNorm's I64 num_batches_tracked. */
typedef struct {
    const char *name;
    unsigned size;
    int tg; /* the tg_dtype, or -1 */
} io_fdtype;
enum { IO_F32, IO_F64, IO_I32, IO_F16, IO_BF16 }; /* the first rows of io_fdtypes */
static const io_fdtype io_fdtypes[] = {
    {"F32", 4, TG_F32}, {"F64", 8, TG_F64}, {"I32", 4, TG_I32}, {"F16", 2, -1},
    {"BF16", 2, -1},    {"I64", 8, -1},     {"U64", 8, -1},     {"U32", 4, -1},
    {"I16", 2, -1},     {"U16", 2, -1},     {"I8", 1, -1},      {"U8", 1, -1},
    {"BOOL", 1, -1},    {"F8_E4M3", 1, -1}, {"F8_E5M2", 1, -1},
};
#define IO_N_FDTYPES ((int)(sizeof io_fdtypes / sizeof io_fdtypes[0]))

/* a tapegrad dtype's name in safetensors ("F32") */
static const char *io_dtype_str(tg_dtype dt) {
    for (int i = 0; i < IO_N_FDTYPES; i++)
        if (io_fdtypes[i].tg == (int)dt) return io_fdtypes[i].name;
    return "?";
}

static int io_fdtype_parse(const char *s) {
    for (int i = 0; i < IO_N_FDTYPES; i++)
        if (strcmp(s, io_fdtypes[i].name) == 0) return i;
    return -1;
}

/* an IEEE half (F16) or bfloat16 (BF16), little-endian at p, as a double */
static double io_half_value(const unsigned char *p, int fdt) {
    uint32_t h = (uint32_t)p[0] | (uint32_t)p[1] << 8;
    if (fdt == IO_BF16) {
        uint32_t bits = h << 16;
        float v;
        memcpy(&v, &bits, sizeof v);
        return v;
    }
    int sign = h >> 15, exp = (h >> 10) & 31;
    double mant = (double)(h & 1023), v;
    if (exp == 0) v = ldexp(mant, -24);                          /* subnormal */
    else if (exp == 31) v = mant ? NAN : INFINITY;
    else v = ldexp(mant + 1024.0, exp - 25);
    return sign ? -v : v;
}

static const char *io_json_type(const json_t *j) {
    switch (json_typeof(j)) {
    case JSON_OBJECT: return "an object";
    case JSON_ARRAY: return "an array";
    case JSON_STRING: return "a string";
    case JSON_INTEGER: return "an integer";
    case JSON_REAL: return "a real number";
    case JSON_TRUE:
    case JSON_FALSE: return "a boolean";
    case JSON_NULL: return "null";
    }
    return "an unknown value";
}

/* write (wr 1) or read (wr 0) all n bytes at p, retrying on EINTR and short
 * transfers; 0 ok, -1 errno set (a write that writes nothing: EIO; a read that
 * meets the end of the file first: 0) */
static int io_transfer_all(int fd, unsigned char *p, size_t n, int wr) {
    while (n > 0) {
        ssize_t k = wr ? write(fd, p, n) : read(fd, p, n);
        if (k < 0) {
            if (errno == EINTR) continue;
            return -1;
        }
        if (k == 0) {
            errno = wr ? EIO : 0;
            return -1;
        }
        p += k;
        n -= (size_t)k;
    }
    return 0;
}

/* write all of buf; 0 ok, -1 errno set (buf is only read: the cast is safe) */
static int io_write_all(int fd, const void *buf, size_t n) {
    return io_transfer_all(fd, (unsigned char *)buf, n, 1);
}

/* read exactly n bytes; 0 ok, -1 errno set (errno 0: end of file first) */
static int io_read_all(int fd, void *buf, size_t n) {
    return io_transfer_all(fd, buf, n, 0);
}

static const char *io_errno_str(int e) {
    return e ? strerror(e) : "unexpected end of file";
}

/* ======================================================================== */
/* Jansson's out-of-memory                                                  */
/* ======================================================================== */

/* Jansson's allocator is one setting for the whole process (json_set_alloc_funcs),
 * so it cannot go through a context's allocator: two contexts on two threads,
 * or the application's own Jansson calls, would share it. Jansson also reports
 * some failed allocations as syntax errors, or yields a truncated string. So
 * its allocations are watched instead: on first use a thin wrapper is put in
 * front of whatever functions are installed (malloc and free by default); it
 * forwards every call and notes a failed allocation in a per-thread flag, and
 * any failure of a save or a load after Jansson ran out of memory is reported
 * as out of memory. */
static json_malloc_t io_json_next_malloc;
static json_free_t io_json_next_free;
static _Thread_local int io_json_oom;

static void *io_json_malloc(size_t n) {
    void *p = io_json_next_malloc(n);
    if (!p) io_json_oom = 1;
    return p;
}

static void io_json_free(void *p) { io_json_next_free(p); }

static void io_json_install(void) {
    json_get_alloc_funcs(&io_json_next_malloc, &io_json_next_free);
    if (io_json_next_malloc != io_json_malloc) json_set_alloc_funcs(io_json_malloc, io_json_free);
}

static pthread_once_t io_json_once = PTHREAD_ONCE_INIT;

/* Before each save or load: the wrapper in place, the flag clear. */
static void io_json_begin(void) {
    pthread_once(&io_json_once, io_json_install);
    io_json_oom = 0;
}

/* ======================================================================== */
/* Saving                                                                   */
/* ======================================================================== */

/* 1 if s is valid UTF-8 as Jansson checks it (no overlong forms, no
 * surrogates, nothing past U+10FFFF). Checked here first, so that Jansson
 * refusing a string afterwards can only mean it ran out of memory. */
static int io_utf8_ok(const char *s) {
    const unsigned char *p = (const unsigned char *)s;
    while (*p) {
        unsigned c = *p++, n;
        uint32_t v;
        if (c < 0x80) continue;
        if (c < 0xC2) return 0;
        if (c < 0xE0) n = 1, v = c & 0x1F;
        else if (c < 0xF0) n = 2, v = c & 0x0F;
        else if (c < 0xF5) n = 3, v = c & 0x07;
        else return 0;
        for (unsigned k = 0; k < n; k++, p++) {
            if ((*p & 0xC0) != 0x80) return 0;
            v = v << 6 | (*p & 0x3F);
        }
        if ((n == 2 && v < 0x800) || (n == 3 && v < 0x10000) || v > 0x10FFFF ||
            (v >= 0xD800 && v <= 0xDFFF))
            return 0;
    }
    return 1;
}


/* One save in progress: what the cleanup path must release. */
typedef struct {
    tg_ctx *ctx;
    const char *path;
    unsigned char *head;  /* 8-byte length + JSON + padding */
    size_t head_size;
    unsigned char *swapbuf; /* IO_CHUNK bytes, big-endian hosts only */
    char *tmp;            /* "<path>.tmp.XXXXXX" */
    size_t tmp_size;
    char *dir;            /* the directory holding path */
    size_t dir_size;
    int fd;
    int tmp_exists;
} io_save;

/* Record "<fn>: <path>: <message>", the message from fmt and ap, or the
 * Jansson out-of-memory message when that is what failed while `doing` the
 * header ("building", "reading"). */
static void io_report(tg_ctx *ctx, const char *fn, const char *path, const char *doing,
                      const char *fmt, va_list ap) TG_PRINTF(5, 0);
static void io_report(tg_ctx *ctx, const char *fn, const char *path, const char *doing,
                      const char *fmt, va_list ap) {
    char msg[400];
    vsnprintf(msg, sizeof msg, fmt, ap);
    if (io_json_oom) snprintf(msg, sizeof msg, "out of memory in Jansson %s the header", doing);
    tg_set_error(ctx, "%s: %s: %s", fn, path, msg);
}

static void io_save_fail(io_save *s, const char *fmt, ...) TG_PRINTF(2, 3);
static void io_save_fail(io_save *s, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    io_report(s->ctx, "tg_save", s->path, "building", fmt, ap);
    va_end(ap);
}

static void io_save_cleanup(io_save *s) {
    if (s->fd >= 0) close(s->fd);
    if (s->tmp_exists) unlink(s->tmp);
    tgi_free(s->ctx, s->tmp, s->tmp_size);
    tgi_free(s->ctx, s->dir, s->dir_size);
    tgi_free(s->ctx, s->head, s->head_size);
    tgi_free(s->ctx, s->swapbuf, IO_CHUNK);
}

/* Feed a parameter's bytes in file (little-endian) order to the hash and, if
 * fd >= 0, to the file. */
static int io_emit(io_save *s, XXH3_state_t *st, const tg_tensor *p, int fd) {
    const unsigned char *src = p->data;
    size_t bytes = tgi_bytes(p), esize = tg_dtype_size(p->dtype);
    if (!s->swapbuf) {
        if (st) XXH3_64bits_update(st, src, bytes);
        return fd >= 0 ? io_write_all(fd, src, bytes) : 0;
    }
    size_t step = IO_CHUNK - IO_CHUNK % esize;
    for (size_t off = 0; off < bytes; off += step) {
        size_t n = bytes - off < step ? bytes - off : step;
        memcpy(s->swapbuf, src + off, n);
        tgi_byteswap(s->swapbuf, n, esize);
        if (st) XXH3_64bits_update(st, s->swapbuf, n);
        if (fd >= 0 && io_write_all(fd, s->swapbuf, n) < 0) return -1;
    }
    return 0;
}

/* Build the padded header: 8-byte length then the JSON. 0 ok, -1 error. */
static int io_build_header(io_save *s, uint64_t sum, const char *const *keys,
                           const char *const *values, int n) {
    tg_ctx *ctx = s->ctx;
    int rc = -1;
    json_t *root = json_object(), *meta = json_object();
    char hex[17];
    snprintf(hex, sizeof hex, "%016" PRIx64, sum);
    /* (jansson's *_new setters take the value's reference even when they fail) */
    if (!root || json_object_set_new(root, IO_META_KEY, meta) < 0) {
        if (!root) json_decref(meta);
        io_save_fail(s, "out of memory building the header");
        goto done;
    }
    if (json_object_set_new(meta, "format", json_string("pt")) < 0 ||
        json_object_set_new(meta, IO_SUM_KEY, json_string(hex)) < 0) {
        io_save_fail(s, "out of memory building the header");
        goto done;
    }
    for (int i = 0; i < n; i++) { /* (UTF-8 checked by io_save_check) */
        if (json_object_set_new(meta, keys[i], json_string(values[i])) < 0) {
            io_save_fail(s, "out of memory building the header");
            goto done;
        }
    }
    uint64_t off = 0;
    for (int i = 0; i < ctx->n_params; i++) {
        const tg_tensor *p = ctx->params[i];
        json_t *shape = json_array(), *ent = json_object();
        if (!shape || !ent) {
            json_decref(shape);
            json_decref(ent);
            io_save_fail(s, "out of memory building the header");
            goto done;
        }
        for (int d = 0; d < p->ndim; d++) json_array_append_new(shape, json_integer(p->shape[d]));
        uint64_t end = off + tgi_bytes(p);
        json_object_set_new(ent, "dtype", json_string(io_dtype_str(p->dtype)));
        json_object_set_new(ent, "shape", shape);
        json_object_set_new(ent, "data_offsets",
                            json_pack("[II]", (json_int_t)off, (json_int_t)end));
        if (json_object_size(ent) != 3 || json_array_size(shape) != (size_t)p->ndim) {
            json_decref(ent);
            io_save_fail(s, "out of memory building the header");
            goto done;
        }
        if (json_object_set_new(root, p->name, ent) < 0) { /* (names checked) */
            io_save_fail(s, "out of memory building the header");
            goto done;
        }
        off = end;
    }
    const size_t flags = JSON_COMPACT | JSON_PRESERVE_ORDER;
    size_t len = json_dumpb(root, NULL, 0, flags);
    if (len == 0) { /* a valid object always serialises: Jansson ran out of memory */
        io_save_fail(s, "out of memory serialising the header");
        goto done;
    }
    size_t padded = (len + 7) & ~(size_t)7; /* 8 + padded is a multiple of 8 */
    s->head_size = 8 + padded;
    s->head = tgi_malloc(ctx, s->head_size);
    if (!s->head) goto done;
    if (json_dumpb(root, (char *)s->head + 8, len, flags) != len) {
        io_save_fail(s, "out of memory serialising the header");
        goto done;
    }
    memset(s->head + 8 + len, ' ', padded - len);
    tgi_put_le64(s->head, (uint64_t)padded);
    rc = 0;
done:
    json_decref(root);
    return rc;
}

/* Checks of the caller's arguments and of the names; 0 ok. */
static int io_save_check(io_save *s, const char *const *keys, const char *const *values, int n) {
    tg_ctx *ctx = s->ctx;
    if (n < 0) {
        io_save_fail(s, "metadata count is negative (%d)", n);
        return -1;
    }
    if (n > 0 && (!keys || !values)) {
        io_save_fail(s, "metadata %s is NULL with %d entries", !keys ? "keys" : "values", n);
        return -1;
    }
    for (int i = 0; i < n; i++) {
        if (!keys[i] || !values[i]) {
            io_save_fail(s, "metadata %s %d is NULL", !keys[i] ? "key" : "value", i);
            return -1;
        }
        if (!*keys[i] || strcmp(keys[i], "format") == 0 || strncmp(keys[i], "tapegrad.", 9) == 0) {
            io_save_fail(s, "metadata key '%s' is %s", keys[i],
                         *keys[i] ? "reserved (\"format\" and \"tapegrad.*\" are written by "
                                    "tapegrad)"
                                  : "empty");
            return -1;
        }
        for (int j = 0; j < i; j++)
            if (strcmp(keys[i], keys[j]) == 0) {
                io_save_fail(s, "metadata key '%s' is given twice", keys[i]);
                return -1;
            }
        if (!io_utf8_ok(keys[i])) {
            io_save_fail(s, "metadata key %d is not valid UTF-8", i);
            return -1;
        }
        if (!io_utf8_ok(values[i])) {
            io_save_fail(s, "metadata value of key '%s' is not valid UTF-8", keys[i]);
            return -1;
        }
    }
    for (int i = 0; i < ctx->n_params; i++) {
        if (!io_utf8_ok(ctx->params[i]->name)) {
            io_save_fail(s, "parameter name '%s' is not valid UTF-8", ctx->params[i]->name);
            return -1;
        }
        if (strcmp(ctx->params[i]->name, IO_META_KEY) == 0) {
            io_save_fail(s, "a parameter is named '" IO_META_KEY "', a name safetensors "
                            "reserves; rename it");
            return -1;
        }
    }
    return 0;
}

/* The rename replaces whatever is at path: only a regular file may be
 * replaced. A device, FIFO, socket, directory or symbolic link (even one to a
 * regular file: the link itself would be replaced) is refused; 0 ok. */
static int io_save_target(io_save *s) {
    struct stat st;
    if (lstat(s->path, &st) < 0 || S_ISREG(st.st_mode)) return 0; /* (absent: created) */
    io_save_fail(s, "is %s; tg_save replaces only a regular file%s", tgi_file_kind(st.st_mode),
                 S_ISLNK(st.st_mode) ? " (save to the path the link points to)" : "");
    return -1;
}

/* Mode for the new file: the mode of the file it replaces, else 0644. */
static mode_t io_file_mode(const char *path) {
    struct stat st;
    if (stat(path, &st) == 0 && S_ISREG(st.st_mode)) return st.st_mode & 0777;
    return 0644;
}

/* The directory holding path, for the fsync after the rename (allocated
 * before the rename, so nothing can fail for lack of memory after it). */
static int io_dir_of(io_save *s) {
    const char *slash = strrchr(s->path, '/');
    size_t len = !slash ? 1 : slash == s->path ? 1 : (size_t)(slash - s->path);
    s->dir_size = len + 1;
    if (!(s->dir = tgi_malloc(s->ctx, s->dir_size))) return -1;
    memcpy(s->dir, slash ? s->path : ".", len);
    s->dir[len] = '\0';
    return 0;
}

/* fsync the directory, so the rename itself is durable */
static int io_sync_dir(io_save *s) {
    int dfd = open(s->dir, O_RDONLY | O_DIRECTORY);
    if (dfd < 0 || (fsync(dfd) < 0 && errno != EINVAL && errno != ENOTSUP)) {
        io_save_fail(s, "written and renamed, but could not sync directory '%s': %s", s->dir,
                     strerror(errno));
        if (dfd >= 0) close(dfd);
        return -1;
    }
    close(dfd);
    return 0;
}

int tg_save_meta(tg_ctx *ctx, const char *path, const char *const *keys,
                 const char *const *values, int n) {
    if (!ctx || !tg_ok(ctx)) return -1;
    if (!path) {
        tg_set_error(ctx, "tg_save: argument path is NULL");
        return -1;
    }
    tgi_api(ctx, "tg_save");
    io_json_begin();
    io_save s = {.ctx = ctx, .path = path, .fd = -1};
    XXH3_state_t st;
    mode_t mode = io_file_mode(path);
    int fd;
    if (io_save_check(&s, keys, values, n) < 0 || io_save_target(&s) < 0) return -1;

    /* pass 1: the checksum of the data section as it will be on disk */
    if (io_need_swap() && !(s.swapbuf = tgi_malloc(ctx, IO_CHUNK))) goto fail;
    XXH3_64bits_reset(&st);
    for (int i = 0; i < ctx->n_params; i++) io_emit(&s, &st, ctx->params[i], -1);
    if (io_build_header(&s, XXH3_64bits_digest(&st), keys, values, n) < 0) goto fail;

    /* pass 2: header and data into a temporary file beside the target */
    s.tmp_size = strlen(path) + sizeof ".tmp.XXXXXX";
    if (!(s.tmp = tgi_malloc(ctx, s.tmp_size)) || io_dir_of(&s) < 0) goto fail;
    snprintf(s.tmp, s.tmp_size, "%s.tmp.XXXXXX", path);
    s.fd = mkstemp(s.tmp);
    if (s.fd < 0) {
        io_save_fail(&s, "cannot create temporary file '%s': %s", s.tmp, strerror(errno));
        goto fail;
    }
    s.tmp_exists = 1;
    if (fchmod(s.fd, mode) < 0 || io_write_all(s.fd, s.head, s.head_size) < 0) goto fail_errno;
    for (int i = 0; i < ctx->n_params; i++)
        if (io_emit(&s, NULL, ctx->params[i], s.fd) < 0) goto fail_errno;
    if (fsync(s.fd) < 0) goto fail_errno;
    fd = s.fd;
    s.fd = -1;
    if (close(fd) < 0) goto fail_errno;

    /* the switch: readers see the old file or the new one, never a mix */
    if (rename(s.tmp, path) < 0) {
        io_save_fail(&s, "cannot rename '%s' over it: %s", s.tmp, strerror(errno));
        goto fail;
    }
    s.tmp_exists = 0;
    if (io_sync_dir(&s) < 0) goto fail;
    io_save_cleanup(&s);
    return 0;

fail_errno:
    io_save_fail(&s, "cannot write temporary file '%s': %s", s.tmp, strerror(errno));
fail:
    io_save_cleanup(&s);
    return -1;
}

int tg_save(tg_ctx *ctx, const char *path) { return tg_save_meta(ctx, path, NULL, NULL, 0); }

/* ======================================================================== */
/* Reading and validating a file                                            */
/* ======================================================================== */

/* One tensor entry of the header, validated. */
typedef struct {
    const char *name;      /* key in the parsed JSON (lives as long as it) */
    int fdt;               /* row of io_fdtypes */
    int ndim;
    int64_t shape[TG_MAX_DIMS];
    uint64_t begin, end;   /* relative to the data section */
    tg_tensor *param;      /* the matching parameter, NULL if none */
} io_entry;

/* An open checkpoint: header read, parsed and validated. */
typedef struct {
    tg_ctx *ctx;
    const char *fn;        /* "tg_load", "tg_checkpoint_meta" */
    const char *path;
    int fd;
    uint64_t file_size, head_len, data_size;
    char *head;
    size_t head_alloc;
    json_t *root;
    json_t *meta;          /* borrowed from root; NULL if absent */
    io_entry *ent;
    size_t n_ent, ent_alloc;
} io_file;

static int io_fail(io_file *f, const char *fmt, ...) TG_PRINTF(2, 3);
static int io_fail(io_file *f, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    io_report(f->ctx, f->fn, f->path, "reading", fmt, ap);
    va_end(ap);
    return -1;
}

static void io_close(io_file *f) {
    if (f->fd >= 0) close(f->fd);
    json_decref(f->root);
    tgi_free(f->ctx, f->head, f->head_alloc);
    tgi_free(f->ctx, f->ent, f->ent_alloc);
}

static int io_cmp_entry(const void *a, const void *b) {
    const io_entry *x = a, *y = b;
    if (x->begin != y->begin) return x->begin < y->begin ? -1 : 1;
    if (x->end != y->end) return x->end < y->end ? -1 : 1;
    return 0;
}

/* A JSON value that must be a non-negative integer; 0 ok. */
static int io_uint(io_file *f, const char *name, const char *what, size_t i, const json_t *v,
                   uint64_t *out) {
    if (!json_is_integer(v))
        return io_fail(f, "tensor '%s': %s[%zu] must be a non-negative integer, got %s", name,
                       what, i, io_json_type(v));
    json_int_t x = json_integer_value(v);
    if (x < 0)
        return io_fail(f, "tensor '%s': %s[%zu] must be a non-negative integer, got %lld", name,
                       what, i, (long long)x);
    *out = (uint64_t)x;
    return 0;
}

static const char *io_shape_str(const io_entry *e, char *buf, size_t size) {
    return tgi_shape_str(e->ndim, e->shape, buf, size);
}

/* Validate one tensor entry (everything that does not involve other entries). */
static int io_parse_entry(io_file *f, const char *name, const json_t *v, io_entry *e) {
    if (!json_is_object(v))
        return io_fail(f, "tensor '%s' must be an object {dtype, shape, data_offsets}, got %s",
                       name, io_json_type(v));
    const char *key;
    json_t *val;
    json_object_foreach((json_t *)v, key, val) {
        if (strcmp(key, "dtype") && strcmp(key, "shape") && strcmp(key, "data_offsets"))
            return io_fail(f, "tensor '%s' has an unexpected key '%s' (only dtype, shape and "
                              "data_offsets are allowed)",
                           name, key);
    }
    const json_t *dt = json_object_get(v, "dtype"), *shape = json_object_get(v, "shape"),
                 *offs = json_object_get(v, "data_offsets");
    if (!dt || !shape || !offs)
        return io_fail(f, "tensor '%s' lacks the key '%s'", name,
                       !dt ? "dtype" : !shape ? "shape" : "data_offsets");
    e->name = name;
    e->param = NULL;

    if (!json_is_string(dt))
        return io_fail(f, "tensor '%s': dtype must be a string, got %s", name, io_json_type(dt));
    if ((e->fdt = io_fdtype_parse(json_string_value(dt))) < 0)
        return io_fail(f, "tensor '%s': unknown dtype '%s' (safetensors has F64, F32, F16, "
                          "BF16, I64, I32, I16, I8, U64, U32, U16, U8, BOOL, F8_E4M3, F8_E5M2)",
                       name, json_string_value(dt));

    if (!json_is_array(shape))
        return io_fail(f, "tensor '%s': shape must be an array of non-negative integers, got %s",
                       name, io_json_type(shape));
    size_t nd = json_array_size(shape);
    if (nd > TG_MAX_DIMS)
        return io_fail(f, "tensor '%s': shape has %zu dimensions, at most %d are supported", name,
                       nd, TG_MAX_DIMS);
    e->ndim = (int)nd;
    uint64_t numel = 1;
    int overflow = 0;
    for (size_t d = 0; d < nd; d++) {
        uint64_t x;
        if (io_uint(f, name, "shape", d, json_array_get(shape, d), &x) < 0) return -1;
        e->shape[d] = (int64_t)x;
        if (x != 0 && numel > UINT64_MAX / x) overflow = 1;
        else numel *= x;
    }
    uint64_t esize = io_fdtypes[e->fdt].size;
    char sb[128];
    if (overflow || numel > UINT64_MAX / esize)
        return io_fail(f, "tensor '%s': shape %s is too large (its size in bytes overflows 64 "
                          "bits)",
                       name, io_shape_str(e, sb, sizeof sb));
    /* (with a 0 in the shape the product is 0, and larger dims cannot overflow it) */

    if (!json_is_array(offs) || json_array_size(offs) != 2) {
        char got[64];
        if (json_is_array(offs))
            snprintf(got, sizeof got, "an array of %zu elements", json_array_size(offs));
        else
            snprintf(got, sizeof got, "%s", io_json_type(offs));
        return io_fail(f, "tensor '%s': data_offsets must be an array of 2 non-negative "
                          "integers [BEGIN, END], got %s",
                       name, got);
    }
    if (io_uint(f, name, "data_offsets", 0, json_array_get(offs, 0), &e->begin) < 0 ||
        io_uint(f, name, "data_offsets", 1, json_array_get(offs, 1), &e->end) < 0)
        return -1;
    if (e->begin > e->end)
        return io_fail(f, "tensor '%s': data_offsets [%" PRIu64 ",%" PRIu64 "] have BEGIN > END",
                       name, e->begin, e->end);
    uint64_t need = numel * esize;
    if (e->end - e->begin != need)
        return io_fail(f, "tensor '%s': %s %s needs %" PRIu64 " bytes but data_offsets [%" PRIu64
                          ",%" PRIu64 "] span %" PRIu64,
                       name, io_fdtypes[e->fdt].name, io_shape_str(e, sb, sizeof sb), need,
                       e->begin, e->end, e->end - e->begin);
    if (e->end > f->data_size)
        return io_fail(f, "tensor '%s': data_offsets [%" PRIu64 ",%" PRIu64 "] extend past the "
                          "end of the data section (%" PRIu64 " bytes; file truncated?)",
                       name, e->begin, e->end, f->data_size);
    return 0;
}

/* __metadata__: an object whose values are strings; a tapegrad checksum, if
 * present, is 16 lowercase hex digits. */
static int io_check_meta(io_file *f, const json_t *meta) {
    if (!json_is_object(meta))
        return io_fail(f, IO_META_KEY " must be an object of strings, got %s",
                       io_json_type(meta));
    const char *key;
    json_t *val;
    json_object_foreach((json_t *)meta, key, val) {
        if (!json_is_string(val))
            return io_fail(f, IO_META_KEY " value of '%s' must be a string, got %s", key,
                           io_json_type(val));
    }
    const json_t *sum = json_object_get(meta, IO_SUM_KEY);
    if (sum) {
        const char *h = json_string_value(sum);
        size_t len = strlen(h);
        int ok = len == 16;
        for (size_t i = 0; ok && i < len; i++)
            ok = (h[i] >= '0' && h[i] <= '9') || (h[i] >= 'a' && h[i] <= 'f');
        if (!ok)
            return io_fail(f, IO_META_KEY " '" IO_SUM_KEY "' is '%.40s', not 16 lowercase hex "
                              "digits",
                           h);
    }
    return 0;
}

/* Offsets sorted by BEGIN must tile [0, data_size) exactly. */
static int io_check_layout(io_file *f) {
    if (f->n_ent > 1) qsort(f->ent, f->n_ent, sizeof *f->ent, io_cmp_entry);
    uint64_t at = 0;
    const io_entry *prev = NULL;
    for (size_t i = 0; i < f->n_ent; i++) {
        const io_entry *e = &f->ent[i];
        if (e->begin > at) {
            if (!prev)
                return io_fail(f, "hole in the data section: %" PRIu64 " unused bytes before the "
                                  "first tensor '%s' (data_offsets [%" PRIu64 ",%" PRIu64 "])",
                               e->begin, e->name, e->begin, e->end);
            return io_fail(f, "hole in the data section: %" PRIu64 " unused bytes between "
                              "tensor '%s' [%" PRIu64 ",%" PRIu64 "] and tensor '%s' [%" PRIu64
                              ",%" PRIu64 "]",
                           e->begin - at, prev->name, prev->begin, prev->end, e->name, e->begin,
                           e->end);
        }
        if (e->begin < at)
            return io_fail(f, "tensors '%s' [%" PRIu64 ",%" PRIu64 "] and '%s' [%" PRIu64
                              ",%" PRIu64 "] overlap",
                           prev->name, prev->begin, prev->end, e->name, e->begin, e->end);
        at = e->end;
        prev = e;
    }
    if (at != f->data_size)
        return io_fail(f, "%" PRIu64 " unused bytes at the end of the data section: the tensors "
                          "end at %" PRIu64 ", the data section is %" PRIu64 " bytes",
                       f->data_size - at, at, f->data_size);
    return 0;
}

/* Open path, read the header and validate all of it (everything except the
 * names against the parameters and the checksum). 0 ok, -1 error recorded;
 * call io_close either way. */
static int io_open(io_file *f) {
    tgi_api(f->ctx, f->fn);
    io_json_begin();
    struct stat st;
    f->fd = tgi_open_regular(f->path, &st);
    if (f->fd == TGI_NOT_REGULAR)
        return io_fail(f, "is %s, not a regular file", tgi_file_kind(st.st_mode));
    if (f->fd < 0) return io_fail(f, "cannot open: %s", strerror(errno));
    f->file_size = (uint64_t)st.st_size;
    if (f->file_size < 8)
        return io_fail(f, "file is %" PRIu64 " bytes, too short to hold the 8-byte header "
                          "length (truncated?)",
                       f->file_size);
    unsigned char lenb[8];
    if (io_read_all(f->fd, lenb, 8) < 0)
        return io_fail(f, "cannot read the header length: %s", io_errno_str(errno));
    f->head_len = tgi_get_le64(lenb);
    if (f->head_len > IO_MAX_HEADER)
        return io_fail(f, "header length %" PRIu64 " exceeds the limit of %llu bytes (not a "
                          "safetensors file?)",
                       f->head_len, IO_MAX_HEADER);
    if (8 + f->head_len > f->file_size)
        return io_fail(f, "header length %" PRIu64 " runs past the end of the file (%" PRIu64
                          " bytes; truncated?)",
                       f->head_len, f->file_size);
    f->data_size = f->file_size - 8 - f->head_len;
    f->head_alloc = (size_t)f->head_len;
    if (!(f->head = tgi_malloc(f->ctx, f->head_alloc))) return -1;
    if (io_read_all(f->fd, f->head, f->head_alloc) < 0)
        return io_fail(f, "cannot read the header: %s", io_errno_str(errno));

    /* the format: the header starts with '{' and is padded with spaces only */
    size_t hl = f->head_alloc;
    while (hl > 0 && f->head[hl - 1] == ' ') hl--;
    if (hl == 0 || f->head[0] != '{')
        return io_fail(f, "header must be a JSON object that starts with '{' at byte 8, got "
                          "0x%02x",
                       hl ? (unsigned char)f->head[0] : 0);
    json_error_t jerr;
    f->root = json_loadb(f->head, hl, JSON_REJECT_DUPLICATES, &jerr);
    if (!f->root) {
        int oom = json_error_code(&jerr) == json_error_out_of_memory;
        if (oom)
            return io_fail(f, "out of memory parsing the header (%" PRIu64 " bytes)", f->head_len);
        if (json_error_code(&jerr) == json_error_invalid_utf8)
            return io_fail(f, "header is not valid UTF-8 (near byte %d of the header)",
                           jerr.position);
        return io_fail(f, "header is not valid JSON: %s (line %d, column %d)", jerr.text,
                       jerr.line, jerr.column);
    }
    if (!json_is_object(f->root))
        return io_fail(f, "header must be a JSON object, got %s", io_json_type(f->root));
    if (f->head[hl - 1] != '}') /* (Jansson skips any whitespace after the object) */
        return io_fail(f, "header must be a JSON object that starts with '{' and ends with '}' "
                          "followed only by spaces, got 0x%02x after it",
                       (unsigned char)f->head[hl - 1]);

    f->meta = json_object_get(f->root, IO_META_KEY);
    if (f->meta && io_check_meta(f, f->meta) < 0) return -1;

    size_t n = json_object_size(f->root) - (f->meta ? 1 : 0);
    f->ent_alloc = n * sizeof *f->ent;
    if (n && !(f->ent = tgi_malloc(f->ctx, f->ent_alloc))) return -1;
    const char *key;
    json_t *val;
    json_object_foreach(f->root, key, val) {
        if (val == f->meta) continue;
        if (io_parse_entry(f, key, val, &f->ent[f->n_ent]) < 0) return -1;
        f->n_ent++;
    }
    return io_check_layout(f);
}

/* ======================================================================== */
/* Loading                                                                  */
/* ======================================================================== */

/* Pair entries with parameters: same dtype and shape; a missing parameter
 * or an extra tensor is an error unless flags allow it. */
static int io_match(io_file *f, int flags) {
    tg_ctx *ctx = f->ctx;
    char sa[128], sb[128];
    size_t matched = 0;
    for (int i = 0; i < ctx->n_params; i++) {
        tg_tensor *p = ctx->params[i];
        io_entry *e = NULL;
        for (size_t k = 0; k < f->n_ent && !e; k++)
            if (strcmp(f->ent[k].name, p->name) == 0) e = &f->ent[k];
        if (!e) {
            if (flags & TG_LOAD_ALLOW_MISSING) continue;
            return io_fail(f, "parameter '%s' (%s %s) is missing from the file", p->name,
                           io_dtype_str(p->dtype), TGI_SHAPE(p, sa));
        }
        int half = (e->fdt == IO_F16 || e->fdt == IO_BF16) && p->dtype != TG_I32;
        if (io_fdtypes[e->fdt].tg != (int)p->dtype && !half)
            return io_fail(f, "tensor '%s': the file has dtype %s, the parameter is %s", p->name,
                           io_fdtypes[e->fdt].name, io_dtype_str(p->dtype));
        int same = e->ndim == p->ndim;
        for (int d = 0; same && d < p->ndim; d++) same = e->shape[d] == p->shape[d];
        if (!same)
            return io_fail(f, "tensor '%s': the file has shape %s, the parameter is %s", p->name,
                           io_shape_str(e, sb, sizeof sb), TGI_SHAPE(p, sa));
        e->param = p;
        matched++;
    }
    if (matched < f->n_ent && !(flags & TG_LOAD_ALLOW_EXTRA))
        for (size_t k = 0; k < f->n_ent; k++)
            if (!f->ent[k].param)
                return io_fail(f, "tensor '%s' (%s %s) in the file is not a parameter of this "
                                  "context",
                               f->ent[k].name, io_fdtypes[f->ent[k].fdt].name,
                               io_shape_str(&f->ent[k], sb, sizeof sb));
    return 0;
}

int tg_load_ex(tg_ctx *ctx, const char *path, int flags) {
    if (!ctx || !tg_ok(ctx)) return -1;
    if (!path) {
        tg_set_error(ctx, "tg_load: argument path is NULL");
        return -1;
    }
    io_file f = {.ctx = ctx, .fn = "tg_load", .path = path, .fd = -1};
    unsigned char *data = NULL;
    size_t dsize = 0;
    int rc = -1;
    if (flags & ~(TG_LOAD_ALLOW_MISSING | TG_LOAD_ALLOW_EXTRA)) {
        io_fail(&f, "unknown flags 0x%x", (unsigned)flags);
        goto done;
    }
    if (io_open(&f) < 0 || io_match(&f, flags) < 0) goto done;

    /* the data section into a temporary buffer, then the checksum */
    if (f.data_size > SIZE_MAX) {
        io_fail(&f, "data section of %" PRIu64 " bytes does not fit in memory", f.data_size);
        goto done;
    }
    dsize = (size_t)f.data_size;
    if (!(data = tgi_malloc(ctx, dsize))) goto done;
    if (io_read_all(f.fd, data, dsize) < 0) {
        io_fail(&f, "cannot read the data section: %s", io_errno_str(errno));
        goto done;
    }
    const json_t *sum = f.meta ? json_object_get(f.meta, IO_SUM_KEY) : NULL;
    if (sum) {
        uint64_t want = strtoull(json_string_value(sum), NULL, 16);
        uint64_t got = XXH3_64bits(data, dsize);
        if (want != got) {
            io_fail(&f, "checksum mismatch: " IO_META_KEY " says " IO_SUM_KEY " %016" PRIx64
                        ", the data section hashes to %016" PRIx64 " (file corrupted)",
                    want, got);
            goto done;
        }
    }

    /* all checked: copy into the parameters (grads are not touched) */
    int swap = io_need_swap();
    for (size_t k = 0; k < f.n_ent; k++) {
        const io_entry *e = &f.ent[k];
        if (!e->param) continue;
        unsigned char *src = data + e->begin;
        if (io_fdtypes[e->fdt].tg < 0) { /* F16 or BF16 into an F32 or F64 parameter */
            for (int64_t i = 0; i < e->param->numel; i++) {
                double v = io_half_value(src + 2 * i, e->fdt);
                if (e->param->dtype == TG_F32) ((float *)e->param->data)[i] = (float)v;
                else ((double *)e->param->data)[i] = v;
            }
            continue;
        }
        if (swap) tgi_byteswap(src, e->end - e->begin, io_fdtypes[e->fdt].size);
        if (e->end > e->begin) memcpy(e->param->data, src, e->end - e->begin);
    }
    rc = 0;
done:
    tgi_free(ctx, data, dsize);
    io_close(&f);
    return rc;
}

int tg_load(tg_ctx *ctx, const char *path) { return tg_load_ex(ctx, path, 0); }

char *tg_checkpoint_meta(tg_ctx *ctx, const char *path, const char *key) {
    if (!ctx || !tg_ok(ctx)) return NULL;
    if (!path || !key) {
        tg_set_error(ctx, "tg_checkpoint_meta: argument %s is NULL", !path ? "path" : "key");
        return NULL;
    }
    io_file f = {.ctx = ctx, .fn = "tg_checkpoint_meta", .path = path, .fd = -1};
    char *out = NULL;
    if (io_open(&f) == 0 && f.meta) {
        const json_t *v = json_object_get(f.meta, key);
        if (v) {
            const char *s = json_string_value(v);
            size_t n = strlen(s) + 1;
            out = malloc(n); /* the caller's, freed with free(): not the ctx allocator */
            if (out) memcpy(out, s, n);
            else io_fail(&f, "out of memory copying metadata value of '%s'", key);
        }
    }
    io_close(&f);
    return out;
}
