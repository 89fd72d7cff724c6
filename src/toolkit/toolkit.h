/* toolkit.h: what the training toolkit's files share (not installed; hidden
 * from the shared library's exports). The toolkit is built on the public API and
 * the engine's internal.h; the engine knows nothing of it. */
#ifndef TG_TOOLKIT_H
#define TG_TOOLKIT_H

#include "internal.h"

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

#endif /* TG_TOOLKIT_H */
