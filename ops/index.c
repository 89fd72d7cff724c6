/* SPDX-License-Identifier: MIT */
/* ops/index.c: the shape and indexing family: ops that move elements to new
 * places without changing their values, as PyTorch defines them.
 *
 *   tg_permute    x.permute(perm)                 any rank, a copy
 *   tg_slice      x.narrow(axis, start, end-start) a copy
 *   tg_concat     torch.cat(xs, axis)             any number of tensors
 *   tg_embedding  F.embedding(idx, weight)        rows of weight picked by idx
 *
 * Every op reads top to bottom: public function (checks, output, record,
 * forward), forward kernel, backward kernel. Backward is the same movement
 * run the other way, adding into the gradient. Nothing is saved: the shapes
 * and the node's attributes say where every element came from. Local
 * gradients: docs/ops.md, "Shape and indexing". */
#include "ops.h"

#define PERM_TILE   32  /* side of the square tiles of a permute that moves the innermost axis */
#define PERM_MEMCPY 512 /* runs of at least this many bytes are copied by memcpy */

/* ---- helpers shared by the four ops ----------------------------------- */

/* In backward: 1 when dy has arrived and input i needs a gradient, with
 * *dy and *dx (input i's gradient, allocated on first use) set; else 0. */
static int grads_of(tg_op_call *c, int i, const void **dy, void **dx)
{
    *dy = tg_grad(c->out);
    if (!*dy || !tgi_needs_grad(c->in[i])) return 0;
    *dx = tg_grad_acc(c->in[i]);
    return *dx != NULL;
}

/* An axis in [-ndim, ndim) made non-negative; -1 (and the error "<fn>: axis
 * <axis> is out of range for <what> <shape> (<ndim> dims)") when outside. */
static int norm_axis(tg_ctx *ctx, const char *fn, const char *what, const tg_tensor *t, int axis)
{
    if (axis >= -t->ndim && axis < t->ndim) return axis < 0 ? axis + t->ndim : axis;
    char b[96];
    tg_set_error(ctx, "%s: axis %d is out of range for %s %s (%d dims)", fn, axis, what,
                 TGI_SHAPE(t, b), t->ndim);
    return -1;
}

/* Product of shape[from .. to). */
static int64_t span(const int64_t *shape, int from, int to)
{
    int64_t p = 1;
    for (int i = from; i < to; i++) p *= shape[i];
    return p;
}

/* n bytes (a multiple of 4) from s to d. A permute or a slice copies many
 * short runs (a head's 32 floats): fixed 64-byte moves, which the compiler
 * inlines, cost less than a memcpy call each. */
static inline void copy_run(void *restrict dv, const void *restrict sv, size_t n)
{
    if (n >= PERM_MEMCPY) {
        memcpy(dv, sv, n);
        return;
    }
    char *d = dv;
    const char *s = sv;
    for (; n >= 64; n -= 64, d += 64, s += 64) memcpy(d, s, 64);
    for (; n >= 8; n -= 8, d += 8, s += 8) memcpy(d, s, 8);
    if (n) memcpy(d, s, 4); /* the last float of an odd-length f32 run */
}

/* dst[r * dld + j] (+)= src[r * sld + j] for r < rows, j < len (in elements
 * of dt): the strided row copy slice and concat reduce to. acc: add (float
 * dtypes) instead of copy. */
static void copy_rows(tg_dtype dt, int acc, void *dst, int64_t dld, const void *src, int64_t sld,
                      int64_t rows, int64_t len)
{
    if (rows <= 0 || len <= 0) return;
    if (!acc) {
        const size_t es = tgi_dtype_size(dt);
        char *d = dst;
        const char *s = src;
        if (dld == len && sld == len) {
            memcpy(d, s, (size_t)(rows * len) * es);
            return;
        }
        for (int64_t r = 0; r < rows; r++)
            copy_run(d + (size_t)(r * dld) * es, s + (size_t)(r * sld) * es, (size_t)len * es);
        return;
    }
    TGI_FLOAT_DISPATCH(dt, {
        for (int64_t r = 0; r < rows; r++) {
            T *restrict d = (T *)dst + r * dld;
            const T *restrict s = (const T *)src + r * sld;
            for (int64_t j = 0; j < len; j++) d[j] += s[j];
        }
    });
}

/* ======================================================================== */
/* tg_permute                                                                */
/* ======================================================================== */

/* y = x.permute(perm): x [s_0,...,s_{r-1}] -> y [s_perm[0],...,s_perm[r-1]],
 * y[i_0,...,i_{r-1}] = x at index i_k on axis perm[k]. A copy, row-major.
 *   dx += dy.permute(inverse of perm)
 * Saves nothing (perm is in the node's attributes).
 * The copy follows a plan made once per call: axes of size 1 are dropped and
 * output axes that are also neighbours in x are merged, so the common cases
 * are a few long runs. When x's innermost axis stays innermost the copy is
 * whole runs (inline 64-byte moves or memcpy forward, one add loop
 * backward); otherwise it moves
 * PERM_TILE x PERM_TILE tiles between the output's innermost axis and x's,
 * so reads and writes both stay in cache. Large copies are split over the
 * context's threads by outer index; every element is written by exactly one
 * thread, so the bits do not depend on the thread count. */
typedef struct {
    int nd;                  /* merged axes of the output */
    int64_t n[TG_MAX_DIMS];  /* their sizes */
    int64_t ss[TG_MAX_DIMS]; /* element stride of each in the source */
    int64_t ds[TG_MAX_DIMS]; /* element stride of each in the (contiguous) destination */
    int inner;               /* the axis moved in the innermost loop with stride 1 in the source */
} perm_plan;

static void perm_plan_make(perm_plan *p, int ndim, const int64_t *src_shape, const int *perm);
static void perm_copy(tg_ctx *ctx, tg_dtype dt, int acc, void *dst, const void *src,
                      const perm_plan *p);
TGI_OP(permute);

tg_tensor *tg_permute(tg_ctx *ctx, tg_tensor *x, const int *perm)
{
    static const char fn[] = "tg_permute";
    if (!ctx || !tgi_check_arg(ctx, fn, "x", x) || !tgi_check_float(ctx, fn, "x", x)) return NULL;
    char bx[96];
    if (!perm && x->ndim > 0) {
        tg_set_error(ctx, "%s: argument perm is NULL (x is %s, %d dims)", fn, TGI_SHAPE(x, bx),
                     x->ndim);
        return NULL;
    }
    int seen = 0;
    for (int i = 0; i < x->ndim; i++) {
        if (perm[i] < 0 || perm[i] >= x->ndim || (seen >> perm[i] & 1)) {
            char bp[64];
            int len = 0;
            bp[len++] = '(';
            for (int k = 0; k < x->ndim && len < 48; k++)
                len += snprintf(bp + len, sizeof bp - (size_t)len, k ? ",%d" : "%d", perm[k]);
            snprintf(bp + len, sizeof bp - (size_t)len, ")");
            tg_set_error(ctx, "%s: perm %s is not a permutation of 0..%d for x %s", fn, bp,
                         x->ndim - 1, TGI_SHAPE(x, bx));
            return NULL;
        }
        seen |= 1 << perm[i];
    }
    int64_t shape[TG_MAX_DIMS];
    for (int i = 0; i < x->ndim; i++) shape[i] = x->shape[perm[i]];
    tg_tensor *out = tgi_tensor_new(ctx, fn, x->dtype, x->ndim, shape, 0);
    if (!out) return NULL;
    tgi_attr at = {.i = {0}};
    for (int i = 0; i < x->ndim; i++) at.i[i] = perm[i];
    return tgi_op_run(ctx, &op_permute, out, &x, 1, &at, sizeof at);
}

/* The plan for dst = src.permute(perm) (src contiguous of src_shape). */
static void perm_plan_make(perm_plan *p, int ndim, const int64_t *src_shape, const int *perm)
{
    int64_t sstride[TG_MAX_DIMS], s = 1;
    for (int i = ndim - 1; i >= 0; i--) {
        sstride[i] = s;
        s *= src_shape[i];
    }
    p->nd = 0;
    for (int i = 0; i < ndim; i++) {
        int64_t n = src_shape[perm[i]], st = sstride[perm[i]];
        if (n == 1) continue;
        if (p->nd > 0 && p->ss[p->nd - 1] == st * n) { /* neighbours in src too: merge */
            p->n[p->nd - 1] *= n;
            p->ss[p->nd - 1] = st;
            continue;
        }
        p->n[p->nd] = n;
        p->ss[p->nd] = st;
        p->nd++;
    }
    int64_t d = 1;
    p->inner = -1;
    for (int i = p->nd - 1; i >= 0; i--) {
        p->ds[i] = d;
        d *= p->n[i];
        if (p->ss[i] == 1) p->inner = i;
    }
}

/* Copy (acc: add) the outer iterations [lo, hi) of plan p. An outer
 * iteration is one index of every axis except the innermost (and, for a
 * tiled plan, except p->inner): one run, or one tile-swept block. */
TGI_AVX512_CLONES static void perm_range(tg_dtype dt, int acc, void *dstv, const void *srcv,
                                   const perm_plan *p, int64_t lo, int64_t hi)
{
    const int last = p->nd - 1, tiled = p->inner != last;
    int64_t idx[TG_MAX_DIMS] = {0};
    int64_t so = 0, dof = 0, rest = lo;
    for (int i = last - 1; i >= 0; i--) { /* the index of outer iteration lo */
        if (tiled && i == p->inner) continue;
        idx[i] = rest % p->n[i];
        rest /= p->n[i];
        so += idx[i] * p->ss[i];
        dof += idx[i] * p->ds[i];
    }
    const int64_t len = p->n[last];
    TGI_FLOAT_DISPATCH(dt, {
        T *dst = dstv;
        const T *src = srcv;
        for (int64_t it = lo; it < hi;) {
            int64_t cnt = 1; /* outer iterations done in this pass */
            if (!tiled) {
                /* the runs left along the innermost outer axis, at fixed strides */
                const int64_t ds1 = last > 0 ? p->ds[last - 1] : 0;
                const int64_t ss1 = last > 0 ? p->ss[last - 1] : 0;
                cnt = last > 0 ? p->n[last - 1] - idx[last - 1] : 1;
                if (cnt > hi - it) cnt = hi - it;
                for (int64_t r = 0; r < cnt; r++) {
                    T *restrict d = dst + dof + r * ds1;
                    const T *restrict s = src + so + r * ss1;
                    if (acc)
                        for (int64_t j = 0; j < len; j++) d[j] += s[j];
                    else
                        copy_run(d, s, (size_t)len * sizeof(T));
                }
            } else {
                /* block: dst[a * dsa + b] (+)= src[a + b * ssb], a over the axis
                 * contiguous in src, b over the one contiguous in dst */
                const int64_t na = p->n[p->inner], dsa = p->ds[p->inner], ssb = p->ss[last];
                for (int64_t a0 = 0; a0 < na; a0 += PERM_TILE) {
                    const int64_t a1 = na - a0 < PERM_TILE ? na : a0 + PERM_TILE;
                    for (int64_t b0 = 0; b0 < len; b0 += PERM_TILE) {
                        const int64_t b1 = len - b0 < PERM_TILE ? len : b0 + PERM_TILE;
                        if (b1 - b0 < a1 - a0) { /* short rows of dst: sweep src rows */
                            for (int64_t b = b0; b < b1; b++) {
                                T *restrict d = dst + dof + b;
                                const T *restrict s = src + so + b * ssb;
                                if (acc)
                                    for (int64_t a = a0; a < a1; a++) d[a * dsa] += s[a];
                                else
                                    for (int64_t a = a0; a < a1; a++) d[a * dsa] = s[a];
                            }
                            continue;
                        }
                        for (int64_t a = a0; a < a1; a++) {
                            T *restrict d = dst + dof + a * dsa;
                            const T *restrict s = src + so + a;
                            if (acc)
                                for (int64_t b = b0; b < b1; b++) d[b] += s[b * ssb];
                            else
                                for (int64_t b = b0; b < b1; b++) d[b] = s[b * ssb];
                        }
                    }
                }
            }
            it += cnt;
            for (int i = last - 1; i >= 0; i--) { /* outer index + cnt (odometer) */
                if (tiled && i == p->inner) continue;
                so += cnt * p->ss[i];
                dof += cnt * p->ds[i];
                idx[i] += cnt;
                if (idx[i] < p->n[i]) break;
                so -= p->ss[i] * p->n[i]; /* cnt never passes the end: carry 1 */
                dof -= p->ds[i] * p->n[i];
                idx[i] = 0;
                cnt = 1;
            }
        }
    });
}

/* Outer iterations [o0, o1) of one perm_copy. */
typedef struct {
    tg_dtype dt;
    int acc;
    void *dst;
    const void *src;
    const perm_plan *p;
} perm_job;
static void perm_units(const void *arg, int64_t o0, int64_t o1)
{
    const perm_job *j = arg;
    perm_range(j->dt, j->acc, j->dst, j->src, j->p, o0, o1);
}

/* dst (+)= src.permute as planned, split over threads by outer iterations. */
static void perm_copy(tg_ctx *ctx, tg_dtype dt, int acc, void *dst, const void *src,
                      const perm_plan *p)
{
    if (p->nd == 0) { /* every axis of size 1 (or none): one element */
        copy_rows(dt, acc, dst, 1, src, 1, 1, 1);
        return;
    }
    int64_t numel = 1;
    for (int i = 0; i < p->nd; i++) numel *= p->n[i];
    if (numel == 0) return;
    int64_t outer = numel / p->n[p->nd - 1];
    if (p->inner != p->nd - 1) outer /= p->n[p->inner];
    const int nt = numel < TGI_PAR_MIN ? 1 : tgi_threads_for(ctx, numel);
    if (nt <= 1 || outer < nt) {
        perm_range(dt, acc, dst, src, p, 0, outer);
        return;
    }
    perm_job j = {dt, acc, dst, src, p};
    tgi_par_units(ctx, nt, outer, perm_units, &j);
}

static int permute_forward(tg_op_call *c)
{
    int perm[TG_MAX_DIMS];
    for (int i = 0; i < c->in[0]->ndim; i++) perm[i] = (int)TGI_ATTR(c)->i[i];
    perm_plan p;
    perm_plan_make(&p, c->in[0]->ndim, c->in[0]->shape, perm);
    perm_copy(c->ctx, c->out->dtype, 0, c->out->data, c->in[0]->data, &p);
    return 0;
}

/* d y[i_0..]/d x[i at perm] = 1: dx += dy.permute(inv), inv[perm[k]] = k */
static void permute_backward(tg_op_call *c)
{
    tg_tensor *x = c->in[0];
    const void *dy = tg_grad(c->out);
    int fresh; /* a new gradient buffer: the permuted copy assigns */
    if (!dy || !tgi_needs_grad(x)) return;
    void *dx = tgi_grad_first(x, &fresh);
    if (!dx) return;
    int inv[TG_MAX_DIMS];
    for (int k = 0; k < x->ndim; k++) inv[TGI_ATTR(c)->i[k]] = k;
    perm_plan p;
    perm_plan_make(&p, x->ndim, c->out->shape, inv);
    perm_copy(c->ctx, x->dtype, !fresh, dx, dy, &p);
}

/* ======================================================================== */
/* tg_slice                                                                  */
/* ======================================================================== */

/* y = x.narrow(axis, start, end - start): x [..., s_axis, ...] ->
 * y [..., end - start, ...], y[.., i, ..] = x[.., start + i, ..].
 *   dx[.., start + i, ..] += dy[.., i, ..]; the rest of dx gets nothing
 * Saves nothing (axis and start are in the node's attributes). A negative
 * axis counts from the end; 0 <= start <= end <= s_axis (a slice of size 0
 * is allowed, as in PyTorch). Viewed as rows: outer = prod of the axes
 * before axis, each output row one contiguous run of the input row. */
static void slice_move(const tg_tensor *x, const tg_tensor *y, int axis, int64_t start, int acc,
                       void *xbuf, const void *ybuf);
TGI_OP(slice);

tg_tensor *tg_slice(tg_ctx *ctx, tg_tensor *x, int axis, int64_t start, int64_t end)
{
    static const char fn[] = "tg_slice";
    if (!ctx || !tgi_check_arg(ctx, fn, "x", x) || !tgi_check_float(ctx, fn, "x", x)) return NULL;
    char bx[96];
    if (x->ndim == 0) {
        tg_set_error(ctx, "%s: x must have at least 1 dim, got a 0-dim tensor", fn);
        return NULL;
    }
    const int ax = norm_axis(ctx, fn, "x", x, axis);
    if (ax < 0) return NULL;
    if (start < 0 || start > end || end > x->shape[ax]) {
        tg_set_error(ctx,
                     "%s: [start, end) = [%lld, %lld) is not inside [0, %lld] of axis %d "
                     "of x %s (need 0 <= start <= end <= size)",
                     fn, (long long)start, (long long)end, (long long)x->shape[ax], axis,
                     TGI_SHAPE(x, bx));
        return NULL;
    }
    int64_t shape[TG_MAX_DIMS];
    memcpy(shape, x->shape, sizeof shape);
    shape[ax] = end - start;
    tg_tensor *out = tgi_tensor_new(ctx, fn, x->dtype, x->ndim, shape, 0);
    if (!out) return NULL;
    const tgi_attr at = {.i = {ax, start}};
    return tgi_op_run(ctx, &op_slice, out, &x, 1, &at, sizeof at);
}

/* acc == 0: ybuf = the slice of xbuf;  acc == 1: the slice of xbuf += ybuf */
static void slice_move(const tg_tensor *x, const tg_tensor *y, int axis, int64_t start, int acc,
                       void *xbuf, const void *ybuf)
{
    const int64_t outer = span(x->shape, 0, axis), inner = span(x->shape, axis + 1, x->ndim);
    const int64_t xrow = x->shape[axis] * inner, yrow = y->shape[axis] * inner;
    const size_t es = tgi_dtype_size(x->dtype);
    char *xs = (char *)xbuf + (size_t)(start * inner) * es;
    if (acc)
        copy_rows(x->dtype, 1, xs, xrow, ybuf, yrow, outer, yrow);
    else
        copy_rows(x->dtype, 0, (void *)ybuf, yrow, xs, xrow, outer, yrow);
}

static int slice_forward(tg_op_call *c)
{
    const tgi_attr *a = TGI_ATTR(c);
    slice_move(c->in[0], c->out, (int)a->i[0], a->i[1], 0, c->in[0]->data, c->out->data);
    return 0;
}

/* d y[.., i, ..]/d x[.., start + i, ..] = 1 */
static void slice_backward(tg_op_call *c)
{
    tg_tensor *x = c->in[0];
    const void *dy;
    void *dx;
    if (!grads_of(c, 0, &dy, &dx)) return;
    const tgi_attr *a = TGI_ATTR(c);
    slice_move(x, c->out, (int)a->i[0], a->i[1], 1, dx, dy);
}

/* ======================================================================== */
/* tg_concat                                                                 */
/* ======================================================================== */

/* y = torch.cat(xs, axis): n >= 1 tensors of one float dtype and rank >= 1
 * whose shapes agree except along axis -> y with the sizes along axis
 * summed; x_k occupies y[.., off_k .. off_k + s_k, ..].
 *   dx_k += dy[.., off_k .. off_k + s_k, ..]
 * Saves nothing (axis is in the node's attributes; the offsets follow from
 * the inputs' shapes). A node holds at most TG_MAX_INPUTS inputs, so more
 * tensors are concatenated in groups of TG_MAX_INPUTS, whose results are
 * concatenated in turn: ceil(n / 8) + ... nodes, every element copied
 * log_8(n) times rounded up (twice for n = 9 .. 64). A group of one tensor
 * is passed on as it is. The same tensor may appear several times: its
 * gradients add up. Viewed as rows: outer = prod of the axes before axis,
 * each output row the inputs' rows side by side. */
static tg_tensor *concat_group(tg_ctx *ctx, tg_tensor *const *xs, int n, int axis);
static void concat_move(tg_tensor *y, tg_tensor *const *xs, int n, int ax, int acc,
                        const void *ybuf);
TGI_OP(concat);

tg_tensor *tg_concat(tg_ctx *ctx, tg_tensor *const *xs, int n, int axis)
{
    static const char fn[] = "tg_concat";
    if (!ctx) return NULL;
    if (!tg_ok(ctx)) return NULL;
    if (!xs || n < 1) {
        tg_set_error(ctx, "%s: needs n >= 1 tensors in xs, got n = %d%s", fn, n,
                     xs ? "" : " and xs NULL");
        return NULL;
    }
    char name[32], b0[96], bk[96];
    for (int k = 0; k < n; k++) {
        snprintf(name, sizeof name, "xs[%d]", k);
        if (!tgi_check_arg(ctx, fn, name, xs[k]) || !tgi_check_float(ctx, fn, name, xs[k]))
            return NULL;
        if (!tgi_check_same_dtype(ctx, fn, xs[0], xs[k])) return NULL;
    }
    if (xs[0]->ndim == 0) {
        tg_set_error(ctx,
                     "%s: xs[0] is a 0-dim tensor; only tensors of 1 or more dims can be "
                     "concatenated",
                     fn);
        return NULL;
    }
    const int ax = norm_axis(ctx, fn, "xs[0]", xs[0], axis);
    if (ax < 0) return NULL;
    for (int k = 1; k < n; k++) {
        int agree = xs[k]->ndim == xs[0]->ndim;
        for (int i = 0; agree && i < xs[0]->ndim; i++)
            agree = i == ax || xs[k]->shape[i] == xs[0]->shape[i];
        if (!agree) {
            tg_set_error(ctx,
                         "%s: xs[%d] is %s but xs[0] is %s: shapes must agree except "
                         "along axis %d",
                         fn, k, TGI_SHAPE(xs[k], bk), TGI_SHAPE(xs[0], b0), axis);
            return NULL;
        }
    }
    return concat_group(ctx, xs, n, ax);
}

/* Valid xs, ax >= 0: one node of up to TG_MAX_INPUTS inputs, or groups of
 * them concatenated in turn. */
static tg_tensor *concat_group(tg_ctx *ctx, tg_tensor *const *xs, int n, int ax)
{
    if (n > TG_MAX_INPUTS) {
        const int ng = (n + TG_MAX_INPUTS - 1) / TG_MAX_INPUTS;
        tg_tensor *parts[TG_MAX_INPUTS];
        if (ng <= TG_MAX_INPUTS) {
            for (int g = 0; g < ng; g++) {
                const int lo = g * TG_MAX_INPUTS,
                          m = n - lo < TG_MAX_INPUTS ? n - lo : TG_MAX_INPUTS;
                parts[g] = m == 1 ? xs[lo] : concat_group(ctx, xs + lo, m, ax);
                if (!parts[g]) return NULL;
            }
            return concat_group(ctx, parts, ng, ax);
        }
        /* more than 64: split into TG_MAX_INPUTS nearly equal groups */
        for (int g = 0; g < TG_MAX_INPUTS; g++) {
            const int lo = (int)((int64_t)n * g / TG_MAX_INPUTS);
            const int hi = (int)((int64_t)n * (g + 1) / TG_MAX_INPUTS);
            parts[g] = concat_group(ctx, xs + lo, hi - lo, ax);
            if (!parts[g]) return NULL;
        }
        return concat_group(ctx, parts, TG_MAX_INPUTS, ax);
    }
    int64_t shape[TG_MAX_DIMS];
    memcpy(shape, xs[0]->shape, sizeof shape);
    shape[ax] = 0;
    for (int k = 0; k < n; k++) shape[ax] += xs[k]->shape[ax];
    tg_tensor *out = tgi_tensor_new(ctx, "tg_concat", xs[0]->dtype, xs[0]->ndim, shape, 0);
    if (!out) return NULL;
    const tgi_attr at = {.i = {ax}};
    return tgi_op_run(ctx, &op_concat, out, xs, n, &at, sizeof at);
}

/* acc == 0: ybuf (y's data) gets the inputs' rows side by side;  acc == 1:
 * each input that needs a gradient gets its part of ybuf (dy) added */
static void concat_move(tg_tensor *y, tg_tensor *const *xs, int n, int ax, int acc,
                        const void *ybuf)
{
    const int64_t outer = span(y->shape, 0, ax), inner = span(y->shape, ax + 1, y->ndim);
    const int64_t yrow = y->shape[ax] * inner;
    const size_t es = tgi_dtype_size(y->dtype);
    int64_t off = 0;
    for (int k = 0; k < n; k++) {
        tg_tensor *x = xs[k];
        const int64_t xrow = x->shape[ax] * inner;
        char *yk = (char *)ybuf + (size_t)(off * inner) * es;
        off += x->shape[ax];
        if (!acc) {
            copy_rows(y->dtype, 0, yk, yrow, x->data, xrow, outer, xrow);
        } else if (tgi_needs_grad(x)) {
            void *dx = tg_grad_acc(x);
            if (!dx) return;
            copy_rows(y->dtype, 1, dx, xrow, yk, yrow, outer, xrow);
        }
    }
}

static int concat_forward(tg_op_call *c)
{
    concat_move(c->out, c->in, c->n_in, (int)TGI_ATTR(c)->i[0], 0, c->out->data);
    return 0;
}

/* d y[.., off_k + i, ..]/d x_k[.., i, ..] = 1 */
static void concat_backward(tg_op_call *c)
{
    const void *dy = tg_grad(c->out);
    if (dy) concat_move(c->out, c->in, c->n_in, (int)TGI_ATTR(c)->i[0], 1, dy);
}

/* ======================================================================== */
/* tg_embedding                                                              */
/* ======================================================================== */

/* y = F.embedding(idx, weight): weight [V,D] float, idx TG_I32 of any shape
 * with up to 3 dims -> y idx.shape + [D], y[i.., :] = weight[idx[i..], :].
 *   dweight[v, :] += sum of dy[i.., :] over the positions i with idx[i] = v
 *   (scatter-add, in the order of i, so repeated indices add up and the bits
 *   are fixed); idx gets no gradient.
 * Saves nothing (backward reads idx, which lives at least as long as the
 * tape). Every index is checked before anything is written: one outside
 * [0, V) is an error naming its position and value, and nothing changes. */
static void embedding_gather(tg_tensor *out, const tg_tensor *w, const tg_tensor *idx);
TGI_OP(embedding);

tg_tensor *tg_embedding(tg_ctx *ctx, tg_tensor *weight, tg_tensor *idx)
{
    static const char fn[] = "tg_embedding";
    if (!ctx || !tgi_check_arg(ctx, fn, "weight", weight) || !tgi_check_arg(ctx, fn, "idx", idx) ||
        !tgi_check_float(ctx, fn, "weight", weight))
        return NULL;
    char bw[96], bi[96];
    if (weight->ndim != 2) {
        tg_set_error(ctx, "%s: weight must be 2-D [V,D], got %s", fn, TGI_SHAPE(weight, bw));
        return NULL;
    }
    if (idx->dtype != TG_I32) {
        tg_set_error(ctx,
                     "%s: idx must be i32 (indices into the %lld rows of weight %s), got "
                     "%s %s",
                     fn, (long long)weight->shape[0], TGI_SHAPE(weight, bw),
                     tg_dtype_name(idx->dtype), TGI_SHAPE(idx, bi));
        return NULL;
    }
    if (idx->ndim > TG_MAX_DIMS - 1) {
        tg_set_error(ctx,
                     "%s: idx %s has %d dims; the output idx.shape + [D] may have at most "
                     "%d",
                     fn, TGI_SHAPE(idx, bi), idx->ndim, TG_MAX_DIMS);
        return NULL;
    }
    const int32_t *ix = idx->data;
    const int64_t V = weight->shape[0];
    for (int64_t i = 0; i < idx->numel; i++) {
        if (ix[i] < 0 || ix[i] >= V) {
            tg_set_error(ctx,
                         "%s: idx[%lld] (flat) = %d is outside [0, %lld), the rows of "
                         "weight %s (idx is %s)",
                         fn, (long long)i, (int)ix[i], (long long)V, TGI_SHAPE(weight, bw),
                         TGI_SHAPE(idx, bi));
            return NULL;
        }
    }
    int64_t shape[TG_MAX_DIMS];
    memcpy(shape, idx->shape, sizeof(int64_t) * (size_t)idx->ndim);
    shape[idx->ndim] = weight->shape[1];
    tg_tensor *out = tgi_tensor_new(ctx, fn, weight->dtype, idx->ndim + 1, shape, 0);
    if (!out) return NULL;
    tg_tensor *in[2] = {weight, idx};
    return tgi_op_run(ctx, &op_embedding, out, in, 2, NULL, 0);
}

/* out[i, :] = w[idx[i], :] (indices already checked) */
static void embedding_gather(tg_tensor *out, const tg_tensor *w, const tg_tensor *idx)
{
    const int32_t *ix = idx->data;
    const size_t row = (size_t)w->shape[1] * tgi_dtype_size(w->dtype);
    for (int64_t i = 0; i < idx->numel; i++)
        memcpy((char *)out->data + (size_t)i * row, (const char *)w->data + (size_t)ix[i] * row,
               row);
}

static int embedding_forward(tg_op_call *c)
{
    embedding_gather(c->out, c->in[0], c->in[1]);
    return 0;
}

/* d y[i, :]/d weight[idx[i], :] = 1: dweight[idx[i], :] += dy[i, :] */
static void embedding_backward(tg_op_call *c)
{
    tg_tensor *w = c->in[0], *idx = c->in[1];
    const void *dy;
    void *dw;
    if (!grads_of(c, 0, &dy, &dw)) return;
    const int32_t *ix = idx->data;
    const int64_t D = w->shape[1];
    TGI_FLOAT_DISPATCH(w->dtype, {
        for (int64_t i = 0; i < idx->numel; i++) {
            T *restrict d = (T *)dw + ix[i] * D;
            const T *restrict g = (const T *)dy + i * D;
            for (int64_t j = 0; j < D; j++) d[j] += g[j];
        }
    });
}
