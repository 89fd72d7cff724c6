/* SPDX-License-Identifier: MIT */
/* resume.c: the state that makes training resumable, beside the model file.
 *
 * The model checkpoint (tg_save) holds exactly the parameters, so that it
 * stays a PyTorch state_dict. What else a run needs to continue as if it had
 * never stopped lives in a second file (docs/checkpoints.md, "Resuming"):
 *
 *   [8]  "TGRESUME"
 *   [8]  N, the header length, little-endian u64
 *   [N]  JSON: {"version":1, "byte_order":"little", "epoch":K,
 *               "rng":["<16 hex>" x4],                       the context's generator
 *               "optimizer":{"kind":"adam", "lr":..., "steps":S, "buffers":B,
 *                            "params":[{"name":..., "dtype":"F32", "numel":..., "t":...}, ...]},
 *               "batcher":{"n":..., "batch_size":..., "flags":..., "epoch":..., "pos":...,
 *                          "batch":..., "fresh":...}}
 *   [..] data: each parameter's B optimiser buffers (numel elements of its dtype,
 *        in the optimiser's parameter order), then the batcher's order (n int64)
 *   [8]  XXH3-64 of everything before it, little-endian u64
 *
 * Values are in the host's byte order, which the header names; a file of the
 * other order is refused. Loading validates all of it against the live
 * optimiser and batcher before changing anything. */
#if !defined(_GNU_SOURCE) && !defined(_XOPEN_SOURCE)
#define _XOPEN_SOURCE 700
#endif

#include "toolkit.h"

#include <errno.h>
#include <inttypes.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

#include <xxhash.h>

#define RS_MAGIC "TGRESUME"
#define RS_VERSION 1
#define RS_MAX_HEADER 100000000u

static const char *rs_order(void) {
    const uint16_t one = 1;
    unsigned char b;
    memcpy(&b, &one, 1);
    return b == 1 ? "little" : "big";
}

static size_t rs_buf_bytes(const tg_tensor *p) { return (size_t)p->numel * tg_dtype_size(p->dtype); }

/* the header of what is saved */
static json_t *rs_header(tg_ctx *ctx, const tgi_optim_view *ov, const tg_batcher *b, int64_t epoch) {
    json_t *h = json_object();
    json_object_set_new(h, "version", json_integer(RS_VERSION));
    json_object_set_new(h, "byte_order", json_string(rs_order()));
    json_object_set_new(h, "epoch", json_integer(epoch));
    json_t *rng = json_array();
    for (int i = 0; i < 4; i++) {
        char hex[17];
        snprintf(hex, sizeof hex, "%016" PRIx64, ctx->rng[i]);
        json_array_append_new(rng, json_string(hex));
    }
    json_object_set_new(h, "rng", rng);
    if (ov) {
        json_t *o = json_object(), *ps = json_array();
        json_object_set_new(o, "kind", json_string(tg_optim_kind_name(ov->opts->kind)));
        json_object_set_new(o, "lr", json_real(ov->opts->lr));
        json_object_set_new(o, "steps", json_integer(*ov->nsteps));
        json_object_set_new(o, "buffers", json_integer(ov->nbufs));
        for (int i = 0; i < ov->n; i++) {
            const tg_tensor *p = ov->params[i];
            json_t *e = json_object();
            json_object_set_new(e, "name", json_string(p->name ? p->name : ""));
            json_object_set_new(e, "dtype", json_string(tg_dtype_name(p->dtype)));
            json_object_set_new(e, "numel", json_integer(p->numel));
            json_object_set_new(e, "t", json_integer(ov->t[i]));
            json_array_append_new(ps, e);
        }
        json_object_set_new(o, "params", ps);
        json_object_set_new(h, "optimizer", o);
    }
    if (b) {
        json_t *j = json_object();
        json_object_set_new(j, "n", json_integer(b->n));
        json_object_set_new(j, "batch_size", json_integer(b->batch_size));
        json_object_set_new(j, "flags", json_integer(b->flags));
        json_object_set_new(j, "epoch", json_integer(b->epoch));
        json_object_set_new(j, "pos", json_integer(b->pos));
        json_object_set_new(j, "batch", json_integer(b->batch));
        json_object_set_new(j, "fresh", json_integer(b->fresh));
        json_object_set_new(h, "batcher", j);
    }
    return h;
}

static int rs_write(FILE *f, const void *p, size_t n, XXH3_state_t *sum) {
    if (n && fwrite(p, 1, n, f) != n) return -1;
    if (sum) XXH3_64bits_update(sum, p, n);
    return 0;
}

/* the arguments both functions check; 0 ok */
static int rs_check_args(tg_ctx *ctx, const char *fn, const char *path, const tg_batcher *b) {
    if (!ctx || !tg_ok(ctx)) return -1;
    if (!path) {
        tg_set_error(ctx, "%s: argument path is NULL", fn);
        return -1;
    }
    if (b && !b->order) {
        tg_set_error(ctx, "%s: the batcher is not initialised", fn);
        return -1;
    }
    return 0;
}

int tg_resume_save(tg_ctx *ctx, const char *path, tg_optim *opt, const tg_batcher *b,
                   int64_t epoch) {
    static const char fn[] = "tg_resume_save";
    if (rs_check_args(ctx, fn, path, b)) return -1;
    tgi_api(ctx, fn);
    /* the rename replaces whatever is at path: only a regular file (as tg_save) */
    if (tgi_save_target(ctx, fn, path) != 0) return -1;
    tgi_optim_view ov;
    if (opt) tgi_optim_view_of(opt, &ov);
    json_t *h = rs_header(ctx, opt ? &ov : NULL, b, epoch);
    char *text = h ? json_dumps(h, JSON_COMPACT | JSON_REAL_PRECISION(17)) : NULL;
    json_decref(h);
    size_t plen = strlen(path) + 5;
    char *tmp = text ? tgi_malloc(ctx, plen) : NULL; /* (records its own error) */
    if (!tmp) {
        free(text);
        if (tg_ok(ctx)) tg_set_error(ctx, "%s: out of memory (the header)", fn);
        return -1;
    }
    snprintf(tmp, plen, "%s.tmp", path);
    FILE *f = fopen(tmp, "wb");
    int ok = f != NULL, err = errno;
    XXH3_state_t *sum = XXH3_createState();
    ok = ok && sum && XXH3_64bits_reset(sum) == XXH_OK;
    unsigned char len[8];
    tgi_put_le64(len, strlen(text));
    ok = ok && rs_write(f, RS_MAGIC, 8, sum) == 0 && rs_write(f, len, 8, sum) == 0 &&
         rs_write(f, text, strlen(text), sum) == 0;
    for (int i = 0; ok && opt && i < ov.n; i++)
        for (int k = 0; ok && k < ov.nbufs; k++)
            ok = rs_write(f, ov.buf[i * ov.nbufs + k], rs_buf_bytes(ov.params[i]), sum) == 0;
    if (ok && b) ok = rs_write(f, b->order, (size_t)b->n * sizeof *b->order, sum) == 0;
    if (ok) {
        tgi_put_le64(len, XXH3_64bits_digest(sum));
        ok = rs_write(f, len, 8, NULL) == 0;
    }
    if (!ok) err = errno;
    if (f && fclose(f) != 0 && ok) ok = 0, err = errno;
    if (ok && rename(tmp, path) != 0) ok = 0, err = errno;
    if (!ok) {
        tg_set_error(ctx, "%s: cannot write %s: %s", fn, path, strerror(err ? err : EIO));
        remove(tmp);
    }
    XXH3_freeState(sum);
    tgi_free(ctx, tmp, plen);
    free(text);
    return ok ? 0 : -1;
}

/* ---- loading ---- */

static int rs_fail(tg_ctx *ctx, const char *path, const char *fmt, ...) TG_PRINTF(3, 4);
static int rs_fail(tg_ctx *ctx, const char *path, const char *fmt, ...) {
    char msg[400];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    tg_set_error(ctx, "tg_resume_load: %s: %s", path, msg);
    return -1;
}

static int64_t rs_int(const json_t *o, const char *key, int *bad) {
    const json_t *v = json_object_get(o, key);
    if (!json_is_integer(v)) {
        *bad = 1;
        return 0;
    }
    return json_integer_value(v);
}

/* The header against the live optimiser and batcher; 0 ok. */
static int rs_check(tg_ctx *ctx, const char *path, const json_t *h, const tgi_optim_view *ov,
                    const tg_batcher *b) {
    int bad = 0;
    if (rs_int(h, "version", &bad) != RS_VERSION || bad)
        return rs_fail(ctx, path, "not version %d of the resume format", RS_VERSION);
    const char *order = json_string_value(json_object_get(h, "byte_order"));
    if (!order || strcmp(order, rs_order()) != 0)
        return rs_fail(ctx, path, "written on a %s-endian machine, this one is %s-endian",
                       order ? order : "?", rs_order());
    const json_t *rng = json_object_get(h, "rng");
    if (json_array_size(rng) != 4) return rs_fail(ctx, path, "'rng' is not 4 hex strings");
    for (int i = 0; i < 4; i++) {
        const char *s = json_string_value(json_array_get(rng, (size_t)i));
        if (!s || strlen(s) != 16) return rs_fail(ctx, path, "'rng' is not 4 hex strings");
    }
    rs_int(h, "epoch", &bad);
    if (bad) return rs_fail(ctx, path, "'epoch' is missing");
    const json_t *o = json_object_get(h, "optimizer");
    if (ov) {
        if (!o) return rs_fail(ctx, path, "the file holds no optimiser state");
        const char *kind = json_string_value(json_object_get(o, "kind"));
        if (!kind || strcmp(kind, tg_optim_kind_name(ov->opts->kind)) != 0)
            return rs_fail(ctx, path, "the optimiser state is %s's, the optimiser is %s",
                           kind ? kind : "?", tg_optim_kind_name(ov->opts->kind));
        int64_t nbufs = rs_int(o, "buffers", &bad);
        rs_int(o, "steps", &bad);
        const json_t *ps = json_object_get(o, "params");
        if (bad || !json_is_array(ps) || !json_is_number(json_object_get(o, "lr")))
            return rs_fail(ctx, path, "the optimiser entry is malformed");
        if (nbufs != ov->nbufs)
            return rs_fail(ctx, path, "the optimiser state has %lld buffers per parameter, this %s "
                                      "optimiser has %d (momentum, amsgrad or centered differ)",
                           (long long)nbufs, kind, ov->nbufs);
        if ((int64_t)json_array_size(ps) != ov->n)
            return rs_fail(ctx, path, "the optimiser state is for %zu parameters, the optimiser "
                                      "has %d", json_array_size(ps), ov->n);
        for (int i = 0; i < ov->n; i++) {
            const json_t *e = json_array_get(ps, (size_t)i);
            const tg_tensor *p = ov->params[i];
            const char *name = json_string_value(json_object_get(e, "name"));
            const char *dt = json_string_value(json_object_get(e, "dtype"));
            int64_t numel = rs_int(e, "numel", &bad);
            rs_int(e, "t", &bad);
            if (bad || !name || !dt) return rs_fail(ctx, path, "parameter entry %d is malformed", i);
            if (strcmp(name, p->name ? p->name : "") || strcmp(dt, tg_dtype_name(p->dtype)) ||
                numel != p->numel)
                return rs_fail(ctx, path, "parameter %d is '%s' (%s, %lld elements) in the file, "
                                          "'%s' (%s, %lld elements) in the optimiser",
                               i, name, dt, (long long)numel, p->name ? p->name : "",
                               tg_dtype_name(p->dtype), (long long)p->numel);
        }
    }
    const json_t *bj = json_object_get(h, "batcher");
    if (b) {
        if (!bj) return rs_fail(ctx, path, "the file holds no batcher state");
        int64_t n = rs_int(bj, "n", &bad), bs = rs_int(bj, "batch_size", &bad),
                fl = rs_int(bj, "flags", &bad), pos = rs_int(bj, "pos", &bad);
        rs_int(bj, "epoch", &bad), rs_int(bj, "batch", &bad), rs_int(bj, "fresh", &bad);
        if (bad) return rs_fail(ctx, path, "the batcher entry is malformed");
        if (n != b->n || bs != b->batch_size || fl != b->flags)
            return rs_fail(ctx, path, "the batcher state is for %lld samples in batches of %lld "
                                      "(flags %lld), the batcher has %lld in batches of %lld "
                                      "(flags %d)",
                           (long long)n, (long long)bs, (long long)fl, (long long)b->n,
                           (long long)b->batch_size, b->flags);
        if (pos < 0 || pos > n) return rs_fail(ctx, path, "the batcher position is out of range");
    }
    return 0;
}

/* The batcher's saved order (n int64 at p, unaligned) and counters; 0 ok. */
static int rs_check_order(tg_ctx *ctx, const char *path, const unsigned char *p, const json_t *bj,
                          const tg_batcher *b) {
    int bad = 0;
    int64_t epoch = rs_int(bj, "epoch", &bad), batch = rs_int(bj, "batch", &bad),
            fresh = rs_int(bj, "fresh", &bad);
    if (bad || epoch < 0 || batch < 0 || batch > b->n_batches || (fresh != 0 && fresh != 1))
        return rs_fail(ctx, path, "the batcher's epoch, batch or fresh is out of range");
    const size_t words = (size_t)b->n / 64 + 1;
    uint64_t *seen = tgi_malloc(ctx, words * 8);
    if (!seen) return -1; /* recorded */
    memset(seen, 0, words * 8);
    int rc = 0;
    for (int64_t i = 0; i < b->n && rc == 0; i++) {
        int64_t v;
        memcpy(&v, p + i * 8, 8);
        if (v < 0 || v >= b->n || (seen[v / 64] >> (v % 64) & 1))
            rc = rs_fail(ctx, path, "the batcher's sample order is not a permutation of 0..%lld "
                                    "(entry %lld is %lld)",
                         (long long)(b->n - 1), (long long)i, (long long)v);
        else seen[v / 64] |= 1ull << (v % 64);
    }
    tgi_free(ctx, seen, words * 8);
    return rc;
}

int tg_resume_load(tg_ctx *ctx, const char *path, tg_optim *opt, tg_batcher *b, int64_t *epoch) {
    static const char fn[] = "tg_resume_load";
    if (rs_check_args(ctx, fn, path, b)) return -1;
    tgi_api(ctx, fn);
    /* a regular file only, checked before anything that could block (a FIFO) */
    struct stat st;
    int fd = tgi_open_regular(path, &st);
    if (fd == TGI_NOT_REGULAR)
        return rs_fail(ctx, path, "is %s, not a regular file", tgi_file_kind(st.st_mode));
    FILE *f = fd >= 0 ? fdopen(fd, "rb") : NULL;
    if (!f) {
        int e = errno;
        if (fd >= 0) close(fd);
        return rs_fail(ctx, path, "cannot open: %s", strerror(e));
    }
    unsigned char *blob = NULL;
    size_t size = 0;
    json_t *h = NULL;
    int rc = -1;
    if (fseek(f, 0, SEEK_END) == 0) {
        long s = ftell(f);
        if (s > 0) size = (size_t)s;
        rewind(f);
    }
    if (size < 24) {
        rs_fail(ctx, path, "%zu bytes: too short for a resume file", size);
        goto done;
    }
    if (!(blob = tgi_malloc(ctx, size))) goto done;
    if (fread(blob, 1, size, f) != size) {
        rs_fail(ctx, path, "cannot read: %s", strerror(errno));
        goto done;
    }
    if (memcmp(blob, RS_MAGIC, 8) != 0) {
        rs_fail(ctx, path, "not a resume file (no TGRESUME magic)");
        goto done;
    }
    uint64_t hlen = tgi_get_le64(blob + 8);
    if (hlen > RS_MAX_HEADER || 16 + hlen + 8 > size) {
        rs_fail(ctx, path, "header length %" PRIu64 " does not fit the file (truncated?)", hlen);
        goto done;
    }
    if (XXH3_64bits(blob, size - 8) != tgi_get_le64(blob + size - 8)) {
        rs_fail(ctx, path, "checksum mismatch (file corrupted or truncated)");
        goto done;
    }
    json_error_t jerr;
    h = json_loadb((const char *)blob + 16, (size_t)hlen, JSON_REJECT_DUPLICATES, &jerr);
    if (!h && json_error_code(&jerr) == json_error_out_of_memory) {
        tg_set_error(ctx, "%s: out of memory reading the header of %s", fn, path);
        goto done;
    }
    if (!json_is_object(h)) {
        rs_fail(ctx, path, "the header is not a JSON object");
        goto done;
    }
    tgi_optim_view ov;
    if (opt) tgi_optim_view_of(opt, &ov);
    if (rs_check(ctx, path, h, opt ? &ov : NULL, b)) goto done;
    /* the sizes of the parts, from the header (the file may hold state that
     * was not asked for: opt or b NULL) */
    const json_t *oj = json_object_get(h, "optimizer"), *bj = json_object_get(h, "batcher");
    uint64_t data = 16 + hlen, obytes = 0;
    /* every count from the file is bounded by the file's size before any
     * product, so that no sum wraps (they are not checked against a live
     * optimiser or batcher when opt or b is NULL) */
    int bad = 0;
    if (oj) {
        int64_t nb = rs_int(oj, "buffers", &bad);
        const json_t *ps = json_object_get(oj, "params");
        if (nb < 0 || nb > 8) bad = 1;
        for (size_t i = 0; !bad && i < json_array_size(ps); i++) {
            const json_t *e = json_array_get(ps, i);
            const char *dt = json_string_value(json_object_get(e, "dtype"));
            size_t es = dt && !strcmp(dt, "f64") ? 8 : 4;
            int64_t numel = rs_int(e, "numel", &bad);
            if (numel < 0 || (uint64_t)numel > size) bad = 1;
            else obytes += (uint64_t)nb * (uint64_t)numel * es;
            if (obytes > size) bad = 1;
        }
    }
    int64_t bn = bj ? rs_int(bj, "n", &bad) : 0;
    if (bn < 0 || (uint64_t)bn > size / 8) bad = 1;
    if (bad) {
        rs_fail(ctx, path, "the optimiser or batcher entry is malformed");
        goto done;
    }
    uint64_t bbytes = (uint64_t)bn * 8;
    if (data + obytes + bbytes + 8 != size) {
        rs_fail(ctx, path, "the header describes %" PRIu64 " bytes of state, the file holds %" PRIu64,
                obytes + bbytes, (uint64_t)size - data - 8);
        goto done;
    }
    /* the saved order must be a permutation of 0..n-1 (tg_batcher_next
     * indexes the data set with it), the position within the epoch sane */
    if (b && rs_check_order(ctx, path, blob + data + obytes, bj, b) != 0) goto done;
    /* all checked: restore */
    const json_t *rng = json_object_get(h, "rng");
    for (int i = 0; i < 4; i++)
        ctx->rng[i] = strtoull(json_string_value(json_array_get(rng, (size_t)i)), NULL, 16);
    if (opt) {
        const unsigned char *p = blob + data;
        const json_t *ps = json_object_get(oj, "params");
        for (int i = 0; i < ov.n; i++) {
            for (int k = 0; k < ov.nbufs; k++) {
                size_t nbytes = rs_buf_bytes(ov.params[i]);
                memcpy(ov.buf[i * ov.nbufs + k], p, nbytes);
                p += nbytes;
            }
            ov.t[i] = json_integer_value(json_object_get(json_array_get(ps, (size_t)i), "t"));
        }
        *ov.nsteps = json_integer_value(json_object_get(oj, "steps"));
        ov.opts->lr = json_number_value(json_object_get(oj, "lr"));
    }
    if (b) {
        memcpy(b->order, blob + data + obytes, (size_t)b->n * sizeof *b->order);
        b->epoch = json_integer_value(json_object_get(bj, "epoch"));
        b->pos = json_integer_value(json_object_get(bj, "pos"));
        b->batch = json_integer_value(json_object_get(bj, "batch"));
        b->fresh = (int)json_integer_value(json_object_get(bj, "fresh"));
    }
    if (epoch) *epoch = json_integer_value(json_object_get(h, "epoch"));
    rc = 0;
done:
    json_decref(h);
    if (blob) tgi_free(ctx, blob, size);
    fclose(f);
    return rc;
}
