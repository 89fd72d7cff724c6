/* SPDX-License-Identifier: MIT */
/* toolkit.h: what the training toolkit's files share (not installed; hidden
 * from the shared library's exports). The toolkit is built on the public API and
 * the engine's internal.h; the engine knows nothing of it. */
#ifndef TG_TOOLKIT_H
#define TG_TOOLKIT_H

#include "internal.h"

#include <stdio.h>

/* ---- datasets (data.c; used by the loaders idx.c and csv.c) ----
 * A dataset block from the ctx allocator. n_targets: 0 labels, > 0 targets,
 * < 0 neither. zero: fill with zeros, else leave the data uninitialised. */
tg_dataset *tgi_dataset_alloc(tg_ctx *ctx, const char *fn, int64_t n, int64_t n_features,
                              int64_t n_targets, int zero);

/* ---- the optimiser's state (optim.c; saved and restored by resume.c) ----
 * Pointers into the live optimiser: buf[i * nbufs + k] is parameter i's k-th
 * state buffer (numel elements of its dtype), t[i] its update count. */
typedef struct {
    int n, nbufs;
    tg_tensor **params;
    int64_t *t;
    void **buf;
    int64_t *nsteps;
    tg_optim_opts *opts;
} tgi_optim_view;
void tgi_optim_view_of(tg_optim *opt, tgi_optim_view *v);
/* ---- opening files to read (fileio.c; used by the loaders and checkpoints) ----
 * Opens path read-only without blocking (a FIFO with no writer would block
 * open(), and a device never ends), checks with fstat that it is a regular file
 * and fills *st. Returns the fd (blocking again), or -1 with errno set, or
 * TGI_NOT_REGULAR (st->st_mode says what it is; tgi_file_kind names it). */
#define TGI_NOT_REGULAR (-2)
struct stat;
int tgi_open_regular(const char *path, struct stat *st);
const char *tgi_file_kind(unsigned mode); /* "a FIFO", "a directory", ... */
/* Before writing path: 0 if it is absent or a regular file; else (a FIFO
 * would block, a device must not be replaced or removed, a symbolic link's
 * target is not what the caller named) records "<fn>: <path> is <kind>; <fn>
 * replaces only a regular file" and returns -1. */
int tgi_save_target(tg_ctx *ctx, const char *fn, const char *path);

/* ---- byte order (checkpoint.c, resume.c, npy.c) ---- */
/* 1 on a little-endian host */
static inline int tgi_host_is_le(void)
{
    const uint16_t one = 1;
    unsigned char first;
    memcpy(&first, &one, 1);
    return first == 1;
}

/* reverse the bytes of each esize-byte element of buf[0 .. bytes) */
static inline void tgi_byteswap(unsigned char *buf, size_t bytes, size_t esize)
{
    for (size_t i = 0; i + esize <= bytes; i += esize)
        for (size_t a = i, b = i + esize - 1; a < b; a++, b--) {
            unsigned char c = buf[a];
            buf[a] = buf[b];
            buf[b] = c;
        }
}

/* little-endian 64-bit words */
static inline void tgi_put_le64(unsigned char *p, uint64_t v)
{
    for (int i = 0; i < 8; i++) p[i] = (unsigned char)(v >> (8 * i));
}

static inline uint64_t tgi_get_le64(const unsigned char *p)
{
    uint64_t v = 0;
    for (int i = 0; i < 8; i++) v |= (uint64_t)p[i] << (8 * i);
    return v;
}

/* ---- layers (nn.c and layers_*.c) ---- */
#define TGI_NAME_MAX 256 /* longest parameter name a layer builds, with its NUL */

/* The start of a layer's init: *layer (size bytes) zeroed when given. 0 to go
 * on; -1 when ctx is NULL, an error is recorded already, or layer is NULL
 * ("<fn>: argument <arg> is NULL"). */
static inline int tgi_layer_begin(tg_ctx *ctx, const char *fn, void *layer, size_t size,
                                  const char *arg)
{
    if (!ctx) return -1;
    if (layer) memset(layer, 0, size);
    if (!tg_ok(ctx)) return -1;
    if (!layer) {
        tg_set_error(ctx, "%s: argument %s is NULL", fn, arg);
        return -1;
    }
    return 0;
}

/* 1 if a forward can run on the layer (argument arg of fn, "tg_<x>_forward")
 * whose weight is given; else records why ("argument <arg> is NULL", or "the
 * layer has no weight (was tg_<x>_init called?)") unless an error is
 * recorded already. */
static inline int tgi_layer_ready(tg_ctx *ctx, const char *fn, const char *arg,
                                  const void *layer, const tg_tensor *weight)
{
    if (layer && weight) return 1;
    if (!tg_ok(ctx)) return 0;
    if (!layer)
        tg_set_error(ctx, "%s: argument %s is NULL", fn, arg);
    else
        tg_set_error(ctx, "%s: the layer has no weight (was %.*s_init called?)", fn,
                     (int)(strlen(fn) - strlen("_forward")), fn);
    return 0;
}

/* buf [TGI_NAME_MAX] = "<name>.<suffix>", a parameter's name. 0, or -1 with
 * the error recorded: "<fn>: name is empty (pass NULL for automatic names)"
 * or "<fn>: name '...' is too long (at most N characters)". */
static inline int tgi_param_name(tg_ctx *ctx, const char *fn, char *buf, const char *name,
                                 const char *suffix)
{
    if (!*name) {
        tg_set_error(ctx, "%s: name is empty (pass NULL for automatic names)", fn);
        return -1;
    }
    int len = snprintf(buf, TGI_NAME_MAX, "%s.%s", name, suffix);
    if (len < 0 || len >= TGI_NAME_MAX) {
        tg_set_error(ctx, "%s: name '%.40s...' is too long (at most %d characters)", fn, name,
                     TGI_NAME_MAX - 2 - (int)strlen(suffix));
        return -1;
    }
    return 0;
}

#endif /* TG_TOOLKIT_H */
