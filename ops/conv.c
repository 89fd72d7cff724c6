/* SPDX-License-Identifier: MIT */
/* ops/conv.c: convolution and pooling, NCHW: tg_conv2d, tg_max_pool2d, tg_avg_pool2d.
 *
 * tg_conv2d is one node through the GEMM (src/kernels/gemm.h): each image's
 * receptive fields are unfolded into a column matrix (im2col) in one arena
 * buffer of [C kh kw, Ho Wo], and a product with the weights read as
 * [O, C kh kw] writes the image's output [O, Ho Wo] in place, which is NCHW.
 * Backward unfolds each image again (recomputing is cheaper than keeping a
 * batch of columns: 80 MB for 64 images of 16 channels and 5x5 kernels at
 * 28x28) and folds the column gradient back with col2im. Images are taken
 * one after the other, in order, so every sum has one order whatever the
 * thread count (the GEMM splits only its output between threads).
 * Local gradients in full: docs/ops.md, "Convolution and pooling". */
#include "ops.h"

/* ---- helpers shared by the ops ---------------------------------------- */

/* The geometry of one 2-D window sweep (a convolution or a pooling):
 * input planes [H,W], output planes [Ho,Wo], square stride s, padding p. */
typedef struct {
    int64_t n, c, h, w;   /* input [N,C,H,W] */
    int64_t kh, kw;       /* window */
    int64_t ho, wo;       /* output plane */
    int64_t s, p;
} geom;

/* Geometry from x and the window; the attribute words of a node hold it. */
static geom geom_of(const tg_tensor *x, int64_t kh, int64_t kw, int64_t s, int64_t p)
{
    geom g = {x->shape[0], x->shape[1], x->shape[2], x->shape[3], kh, kw, 0, 0, s, p};
    g.ho = (g.h + 2 * p - kh) / s + 1;
    g.wo = (g.w + 2 * p - kw) / s + 1;
    return g;
}

static void geom_save(tgi_attr *a, const geom *g)
{
    a->i[0] = g->kh, a->i[1] = g->kw, a->i[2] = g->s, a->i[3] = g->p;
}

static geom geom_load(const tg_op_call *c)
{
    const tgi_attr *a = TGI_ATTR(c);
    return geom_of(c->in[0], a->i[0], a->i[1], a->i[2], a->i[3]);
}

/* A 1x1 convolution with stride 1 and no padding needs no unfolding: col_n is x_n. */
static int is_pointwise(const geom *g)
{
    return g->kh == 1 && g->kw == 1 && g->s == 1 && g->p == 0;
}

/* x must be 4-D [N,C,H,W]; records "<fn>: x must be 4-D [N,C,H,W], got [..]" */
static int check_nchw(tg_ctx *ctx, const char *fn, const tg_tensor *x)
{
    if (x->ndim == 4) return 1;
    char sx[64];
    tg_set_error(ctx, "%s: x must be 4-D [N,C,H,W], got %s", fn, TGI_SHAPE(x, sx));
    return 0;
}

/* ======================================================================== */
/* tg_conv2d                                                                 */
/* ======================================================================== */

/* y = conv2d(x, w) + b.  x is [N,C,H,W], w is [O,C,kh,kw], b is [O] or absent,
 * y is [N,O,Ho,Wo], Ho = (H + 2p - kh) / s + 1, Wo likewise; x read as 0
 * outside the image (zero padding). With K = C kh kw, P = Ho Wo and col_n the
 * [K,P] unfolding of image n (col_n[(c,i,j), (oh,ow)] = x[n,c,oh s-p+i,ow s-p+j]):
 *   y_n = W col_n + b      (W read as [O,K])
 *   dW += dy_n col_n^T,  dcol_n = W^T dy_n then dx_n += fold(dcol_n),
 *   db[o] += sum over n and the plane of dy[n,o].
 * Saves nothing: backward recomputes col_n into one tg_scratch buffer [K,P].
 * Numerics: the bias is written into y before the GEMM accumulates into it;
 * db sums in double. */
TGI_OP(conv2d);

tg_tensor *tg_conv2d(tg_ctx *ctx, tg_tensor *x, tg_tensor *w, tg_tensor *b, int stride,
                     int padding)
{
    static const char fn[] = "tg_conv2d";
    if (!ctx) return NULL;
    if (!tgi_check_xwb(ctx, fn, x, w, b)) return NULL;
    char sx[64], sw[64], sb[64];
    if (x->ndim != 4 || w->ndim != 4) {
        tg_set_error(ctx, "%s: x must be 4-D [N,C,H,W] and w 4-D [O,C,kh,kw]: x is %s, w is %s",
                     fn, TGI_SHAPE(x, sx), TGI_SHAPE(w, sw));
        return NULL;
    }
    if (x->shape[1] != w->shape[1]) {
        tg_set_error(ctx, "%s: x %s has %lld channels but w %s expects %lld", fn,
                     TGI_SHAPE(x, sx), (long long)x->shape[1], TGI_SHAPE(w, sw),
                     (long long)w->shape[1]);
        return NULL;
    }
    if (b && (b->ndim != 1 || b->shape[0] != w->shape[0])) {
        tg_set_error(ctx, "%s: bias must be [%lld] to match w %s, got b %s", fn,
                     (long long)w->shape[0], TGI_SHAPE(w, sw), TGI_SHAPE(b, sb));
        return NULL;
    }
    if (stride < 1 || padding < 0) {
        tg_set_error(ctx, "%s: stride must be >= 1 and padding >= 0, got stride %d, padding %d "
                          "(x is %s, w is %s)", fn, stride, padding, TGI_SHAPE(x, sx),
                     TGI_SHAPE(w, sw));
        return NULL;
    }
    int64_t hp = x->shape[2] + 2 * (int64_t)padding, wp = x->shape[3] + 2 * (int64_t)padding;
    if (w->shape[2] < 1 || w->shape[3] < 1 || w->shape[2] > hp || w->shape[3] > wp) {
        tg_set_error(ctx, "%s: kernel %lldx%lld does not fit the padded input %lldx%lld "
                          "(x is %s, w is %s, padding %d)", fn, (long long)w->shape[2],
                     (long long)w->shape[3], (long long)hp, (long long)wp, TGI_SHAPE(x, sx),
                     TGI_SHAPE(w, sw), padding);
        return NULL;
    }
    geom g = geom_of(x, w->shape[2], w->shape[3], stride, padding);
    int64_t shape[4] = {g.n, w->shape[0], g.ho, g.wo};
    tg_tensor *out = tgi_tensor_new(ctx, fn, x->dtype, 4, shape, 0);
    if (!out) return NULL;
    tg_tensor *in[3] = {x, w, b};
    tgi_attr at = {.i = {0}};
    geom_save(&at, &g);
    return tgi_op_run(ctx, &op_conv2d, out, in, b ? 3 : 2, &at, sizeof at);
}

/* Output rows [lo, hi) of input row range [0, n) for a window offset: the ow
 * (or oh) with 0 <= o s - p + i < n. */
static void valid_range(int64_t n, int64_t no, int64_t s, int64_t off, int64_t *lo, int64_t *hi)
{
    int64_t a = off < 0 ? (-off + s - 1) / s : 0;      /* first o with o s + off >= 0 */
    int64_t b = n - off <= 0 ? 0 : (n - off - 1) / s + 1; /* first o with o s + off >= n */
    if (b > no) b = no;
    if (a > b) a = b;
    *lo = a, *hi = b;
}

/* col [K,P] = unfold(x_n [C,H,W]); zeros where the window leaves the image.
 * Any stride; stride 1 takes IM2COL_S1_BODY instead. */
#define IM2COL_BODY(T)                                                                    \
    for (int64_t ch = 0; ch < g->c; ch++)                                                 \
        for (int64_t i = 0; i < g->kh; i++)                                               \
            for (int64_t j = 0; j < g->kw; j++) {                                         \
                T *row = col + ((ch * g->kh + i) * g->kw + j) * g->ho * g->wo;            \
                const T *plane = x + ch * g->h * g->w;                                    \
                int64_t oh0, oh1, ow0, ow1;                                               \
                valid_range(g->h, g->ho, g->s, i - g->p, &oh0, &oh1);                     \
                valid_range(g->w, g->wo, g->s, j - g->p, &ow0, &ow1);                     \
                for (int64_t q = 0; q < oh0 * g->wo; q++) row[q] = 0;                     \
                for (int64_t oh = oh0; oh < oh1; oh++) {                                  \
                    T *r = row + oh * g->wo;                                              \
                    const T *xr = plane + (oh * g->s + i - g->p) * g->w + j - g->p;       \
                    for (int64_t ow = 0; ow < ow0; ow++) r[ow] = 0;                       \
                    for (int64_t ow = ow0; ow < ow1; ow++) r[ow] = xr[ow * g->s];         \
                    for (int64_t ow = ow1; ow < g->wo; ow++) r[ow] = 0;                   \
                }                                                                         \
                for (int64_t q = oh1 * g->wo; q < g->ho * g->wo; q++) row[q] = 0;         \
            }

/* Stride 1: the image is first copied into the interior of pad [C,H+2p,W+2p],
 * whose border the caller zeroed once (it stays zero). Then every output row
 * of every column row is wo contiguous elements of pad, copied as whole
 * chunks of COPY_CHUNK elements: a copy may run past its row's end, and the
 * next row's copy (written later, further on) overwrites the excess. So col
 * needs COPY_CHUNK ceil(wo / COPY_CHUNK) elements of slack at its end, and
 * pad as many (read, never used). */
#define COPY_CHUNK 16
#define IM2COL_S1_BODY(T)                                                                 \
    const int64_t hp = g->h + 2 * g->p, wp = g->w + 2 * g->p;                             \
    const int64_t nc = (g->wo + COPY_CHUNK - 1) / COPY_CHUNK;                             \
    for (int64_t ch = 0; ch < g->c; ch++)                                                 \
        for (int64_t h = 0; h < g->h; h++)                                                \
            memcpy(pad + (ch * hp + h + g->p) * wp + g->p, x + (ch * g->h + h) * g->w,    \
                   (size_t)g->w * sizeof(T));                                             \
    for (int64_t ch = 0; ch < g->c; ch++)                                                 \
        for (int64_t i = 0; i < g->kh; i++)                                               \
            for (int64_t j = 0; j < g->kw; j++) {                                         \
                T *row = col + ((ch * g->kh + i) * g->kw + j) * g->ho * g->wo;            \
                const T *src = pad + (ch * hp + i) * wp + j;                              \
                for (int64_t oh = 0; oh < g->ho; oh++)                                    \
                    for (int64_t t = 0; t < nc; t++)                                      \
                        memcpy(row + oh * g->wo + t * COPY_CHUNK,                         \
                               src + oh * wp + t * COPY_CHUNK, COPY_CHUNK * sizeof(T));   \
            }

/* dx_n [C,H,W] += fold(col [K,P]): the transpose of im2col */
#define COL2IM_BODY(T)                                                                    \
    for (int64_t ch = 0; ch < g->c; ch++)                                                 \
        for (int64_t i = 0; i < g->kh; i++)                                               \
            for (int64_t j = 0; j < g->kw; j++) {                                         \
                const T *row = col + ((ch * g->kh + i) * g->kw + j) * g->ho * g->wo;      \
                T *plane = dx + ch * g->h * g->w;                                         \
                int64_t oh0, oh1, ow0, ow1;                                               \
                valid_range(g->h, g->ho, g->s, i - g->p, &oh0, &oh1);                     \
                valid_range(g->w, g->wo, g->s, j - g->p, &ow0, &ow1);                     \
                for (int64_t oh = oh0; oh < oh1; oh++) {                                  \
                    const T *r = row + oh * g->wo;                                        \
                    T *xr = plane + (oh * g->s + i - g->p) * g->w + j - g->p;             \
                    if (g->s == 1)                                                        \
                        for (int64_t ow = ow0; ow < ow1; ow++) xr[ow] += r[ow];           \
                    else                                                                  \
                        for (int64_t ow = ow0; ow < ow1; ow++) xr[ow * g->s] += r[ow];    \
                }                                                                         \
            }

/* Stride 1: the transpose of IM2COL_S1_BODY. The column rows are added in
 * whole chunks (a fixed-length loop the compiler vectorises, the elements past
 * the row's end masked to 0) into dpad [C,H+2p,wq], zeroed here, whose rows are
 * wq = kw - 1 + COPY_CHUNK ceil(wo / COPY_CHUNK) wide so that a chunk never
 * leaves its row. The interior of dpad is then added into dx. */
#define COL2IM_S1_BODY(T)                                                                 \
    const int64_t hp = g->h + 2 * g->p, nc = (g->wo + COPY_CHUNK - 1) / COPY_CHUNK;       \
    const int64_t wq = g->kw - 1 + COPY_CHUNK * nc;                                       \
    memset(dpad, 0, (size_t)(g->c * hp * wq) * sizeof(T));                                \
    for (int64_t ch = 0; ch < g->c; ch++)                                                 \
        for (int64_t i = 0; i < g->kh; i++)                                               \
            for (int64_t j = 0; j < g->kw; j++) {                                         \
                const T *row = col + ((ch * g->kh + i) * g->kw + j) * g->ho * g->wo;      \
                T *dst = dpad + (ch * hp + i) * wq + j;                                   \
                for (int64_t oh = 0; oh < g->ho; oh++)                                    \
                    for (int64_t t = 0; t < nc; t++) {                                    \
                        T *d = dst + oh * wq + t * COPY_CHUNK;                            \
                        const T *r = row + oh * g->wo + t * COPY_CHUNK;                   \
                        const int64_t rem = g->wo - t * COPY_CHUNK;                       \
                        for (int e = 0; e < COPY_CHUNK; e++) {                            \
                            const T v = r[e]; /* read unconditionally: a blend, no branch */ \
                            d[e] += e < rem ? v : (T)0;                                   \
                        }                                                                 \
                    }                                                                     \
            }                                                                             \
    for (int64_t ch = 0; ch < g->c; ch++)                                                 \
        for (int64_t h = 0; h < g->h; h++) {                                              \
            T *xr = dx + (ch * g->h + h) * g->w;                                          \
            const T *pr = dpad + (ch * hp + h + g->p) * wq + g->p;                        \
            for (int64_t w = 0; w < g->w; w++) xr[w] += pr[w];                            \
        }

/* The unfolding and folding of one image, for T = float and double */
#define DEFINE_UNFOLD(T, SFX)                                                             \
    TGI_AVX2_CLONES static void im2col_##SFX(T *restrict col, T *restrict pad,                \
                                         const T *restrict x, const geom *g)              \
    {                                                                                     \
        if (g->s == 1) {                                                                  \
            IM2COL_S1_BODY(T)                                                             \
        } else {                                                                          \
            IM2COL_BODY(T)                                                                \
        }                                                                                 \
    }                                                                                     \
    TGI_AVX2_CLONES static void col2im_##SFX(T *restrict dx, T *restrict dpad,                \
                                         const T *restrict col, const geom *g)            \
    {                                                                                     \
        if (g->s == 1) {                                                                  \
            COL2IM_S1_BODY(T)                                                             \
        } else {                                                                          \
            COL2IM_BODY(T)                                                                \
        }                                                                                 \
    }
DEFINE_UNFOLD(float, f32)
DEFINE_UNFOLD(double, f64)
#define IM2COL(col, pad, x, g)                                                            \
    _Generic((col), float *: im2col_f32, double *: im2col_f64)(col, pad, x, g)

/* The unfolding buffers of one image, from the arena: col [K,P] and, for
 * stride 1, pad [C,H+2p,W+2p] with its border zeroed (each with the slack
 * IM2COL_S1_BODY needs, zeroed) and, with fold set, dpad for COL2IM_S1_BODY.
 * 0, or -1 with the error recorded. */
static int unfold_buffers(tg_ctx *ctx, const geom *g, size_t esize, int fold, void **col,
                          void **pad, void **dpad)
{
    const int64_t nc = (g->wo + COPY_CHUNK - 1) / COPY_CHUNK, slack = COPY_CHUNK * nc;
    const int64_t k = g->c * g->kh * g->kw, np = g->ho * g->wo, hp = g->h + 2 * g->p;
    *col = tg_scratch(ctx, (size_t)(k * np + slack) * esize);
    *pad = *dpad = NULL;
    if (!*col) return -1;
    memset((char *)*col + (size_t)(k * np) * esize, 0, (size_t)slack * esize);
    if (g->s != 1) return 0;
    const size_t pbytes = (size_t)(g->c * hp * (g->w + 2 * g->p) + slack) * esize;
    *pad = tg_scratch(ctx, pbytes);
    if (!*pad) return -1;
    memset(*pad, 0, pbytes);
    if (fold) {
        *dpad = tg_scratch(ctx, (size_t)(g->c * hp * (g->kw - 1 + slack)) * esize);
        if (!*dpad) return -1;
    }
    return 0;
}
#define COL2IM(dx, dpad, col, g)                                                          \
    _Generic((dx), float *: col2im_f32, double *: col2im_f64)(dx, dpad, col, g)

/* sum of r[0..n) in double, in 8 interleaved partial sums (vectorised; the
 * order is fixed, so the bits are too) */
#define PLANE_SUM_BODY                                                                    \
    double acc[8] = {0};                                                                  \
    int64_t q = 0;                                                                        \
    for (; q + 8 <= n; q += 8)                                                            \
        for (int j = 0; j < 8; j++) acc[j] += (double)r[q + j];                           \
    for (; q < n; q++) acc[0] += (double)r[q];                                            \
    return ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7]));

TGI_AVX2_CLONES static double plane_sum_f32(const float *r, int64_t n) { PLANE_SUM_BODY }
TGI_AVX2_CLONES static double plane_sum_f64(const double *r, int64_t n) { PLANE_SUM_BODY }
#define PLANE_SUM(r, n)                                                                   \
    _Generic((r), const float *: plane_sum_f32, const double *: plane_sum_f64)(r, n)

/* y_n = b (broadcast over the plane), then y_n += W col_n, image by image */
static int conv2d_fwd(tg_ctx *ctx, tg_tensor *out, const tg_tensor *x, const tg_tensor *w,
                      const tg_tensor *b, const geom *g)
{
    const int64_t o = w->shape[0], k = g->c * g->kh * g->kw, np = g->ho * g->wo;
    if (out->numel == 0) return 0;
    const int pw = is_pointwise(g);
    /* the columns live only during this call: the arena is rewound after it
     * (the output was allocated before them) */
    const tgi_arena_mark mark = tgi_arena_get_mark(ctx);
    void *colv = NULL, *padv = NULL;
    void *dpadv = NULL;
    if (!pw && unfold_buffers(ctx, g, tgi_dtype_size(x->dtype), 0, &colv, &padv, &dpadv) != 0) {
        tgi_arena_rewind(ctx, mark);
        return -1;
    }
    int rc = 0;
    TGI_FLOAT_DISPATCH(x->dtype, {
        const T *xd = x->data, *bd = b ? (const T *)b->data : NULL;
        T *y = out->data, *col = colv, *pad = padv;
        for (int64_t n = 0; n < g->n && rc == 0; n++) {
            const T *xn = xd + n * g->c * g->h * g->w;
            T *yn = y + n * o * np;
            if (bd)
                for (int64_t oc = 0; oc < o; oc++)
                    for (int64_t q = 0; q < np; q++) yn[oc * np + q] = bd[oc];
            if (!pw) IM2COL(col, pad, xn, g);
            rc = tgi_op_gemm(ctx, "tg_conv2d", x->dtype, 0, 0, o, np, k, w->data, k, pw ? xn : col,
                             np, bd != NULL, yn, np);
        }
    });
    tgi_arena_rewind(ctx, mark);
    return rc;
}

static int conv2d_forward(tg_op_call *c)
{
    geom g = geom_load(c);
    return conv2d_fwd(c->ctx, c->out, c->in[0], c->in[1], c->n_in > 2 ? c->in[2] : NULL, &g);
}

/* d(W col + b)/dW: dW += dy_n col_n^T;  /dx: dx_n += fold(W^T dy_n);
 * /db: db[o] += sum of dy[n,o,:,:] */
static void conv2d_backward(tg_op_call *c)
{
    tg_ctx *ctx = c->ctx;
    tg_tensor *x = c->in[0], *w = c->in[1], *b = c->n_in > 2 ? c->in[2] : NULL;
    const void *dyv = tg_grad(c->out);
    if (!dyv || c->out->numel == 0) return;
    geom g = geom_load(c);
    const int64_t o = w->shape[0], k = g.c * g.kh * g.kw, np = g.ho * g.wo;
    const int pw = is_pointwise(&g);
    void *dwv = tgi_needs_grad(w) ? tg_grad_acc(w) : NULL;
    void *dxv = tgi_needs_grad(x) ? tg_grad_acc(x) : NULL;
    void *dbv = b && tgi_needs_grad(b) ? tg_grad_acc(b) : NULL;
    if (!tg_ok(ctx)) return;
    /* the gradient buffers exist before the columns, which are given back at the end */
    const tgi_arena_mark mark = tgi_arena_get_mark(ctx);
    void *colv = NULL, *padv = NULL, *dpadv = NULL;
    if (!pw && (dwv || dxv) &&
        unfold_buffers(ctx, &g, tgi_dtype_size(x->dtype), dxv != NULL, &colv, &padv, &dpadv) != 0) {
        tgi_arena_rewind(ctx, mark);
        return;
    }
    TGI_FLOAT_DISPATCH(x->dtype, {
        const T *xd = x->data, *dy = dyv;
        T *col = colv, *pad = padv, *dpad = dpadv, *dx = dxv, *dbt = dbv;
        int rc = 0; /* a GEMM out of memory (recorded) stops the loop */
        for (int64_t n = 0; n < g.n && rc == 0; n++) {
            const T *xn = xd + n * g.c * g.h * g.w, *dyn = dy + n * o * np;
            T *dxn = dx ? dx + n * g.c * g.h * g.w : NULL;
            if (dwv) { /* [O,K] += [O,P] ([K,P] stored, read as its transpose) */
                if (!pw) IM2COL(col, pad, xn, &g);
                rc = tgi_op_gemm(ctx, "tg_conv2d", x->dtype, 0, 1, o, k, np, dyn, np, pw ? xn : col,
                                 np, 1, dwv, k);
            }
            if (dx && rc == 0) { /* [K,P] = ([O,K] stored, read as its transpose) [O,P] */
                rc = tgi_op_gemm(ctx, "tg_conv2d", x->dtype, 1, 0, k, np, o, w->data, k, dyn, np,
                                 pw, pw ? dxn : col, np); /* 1x1: straight into dx */
                if (!pw && rc == 0) COL2IM(dxn, dpad, col, &g);
            }
        }
        if (dbt && rc == 0) /* images in order, each channel's plane summed in double */
            for (int64_t oc = 0; oc < o; oc++) {
                double s = 0.0;
                for (int64_t n = 0; n < g.n; n++) s += PLANE_SUM(dy + (n * o + oc) * np, np);
                dbt[oc] += (T)s;
            }
    });
    tgi_arena_rewind(ctx, mark);
}

/* ======================================================================== */
/* Pooling: the shared checks                                                */
/* ======================================================================== */

/* x 4-D float, kernel >= 1, stride >= 1, kernel <= H and W. 1 if usable. */
static int check_pool(tg_ctx *ctx, const char *fn, const tg_tensor *x, int kernel, int stride)
{
    if (!tgi_check_float_arg(ctx, fn, "x", x, NULL) || !check_nchw(ctx, fn, x)) return 0;
    char sx[64];
    if (kernel < 1 || stride < 1) {
        tg_set_error(ctx, "%s: kernel and stride must be >= 1, got kernel %d, stride %d "
                          "(x is %s)", fn, kernel, stride, TGI_SHAPE(x, sx));
        return 0;
    }
    if (kernel > x->shape[2] || kernel > x->shape[3]) {
        tg_set_error(ctx, "%s: kernel %d is larger than the input plane %lldx%lld (x is %s)", fn,
                     kernel, (long long)x->shape[2], (long long)x->shape[3], TGI_SHAPE(x, sx));
        return 0;
    }
    return 1;
}

/* What a pooling's backward reads: dy, the gradient buffer of x, the
 * geometry, and the count and sizes of the input and output planes. */
typedef struct {
    const void *dy;
    void *dx;
    geom g;
    int64_t planes, hw, np;
} pool_bwd;

/* 0 when there is nothing to do (no dy, x needs no gradient, or out of memory) */
static int pool_grads(tg_op_call *c, pool_bwd *p)
{
    p->dy = tg_grad(c->out);
    if (!p->dy || !tgi_needs_grad(c->in[0])) return 0;
    p->dx = tg_grad_acc(c->in[0]);
    if (!p->dx) return 0;
    p->g = geom_load(c);
    p->planes = p->g.n * p->g.c, p->hw = p->g.h * p->g.w, p->np = p->g.ho * p->g.wo;
    return 1;
}

/* The rest of a pooling's public function, after its checks: the output
 * [N,C,Ho,Wo] and tgi_op_run with the window as attributes. */
static tg_tensor *pool_run(tg_ctx *ctx, const char *fn, const tg_op *op, tg_tensor *x,
                           int kernel, int stride)
{
    const geom g = geom_of(x, kernel, kernel, stride, 0);
    int64_t shape[4] = {g.n, g.c, g.ho, g.wo};
    tg_tensor *out = tgi_tensor_new(ctx, fn, x->dtype, 4, shape, 0);
    if (!out) return NULL;
    tgi_attr at = {.i = {0}};
    geom_save(&at, &g);
    return tgi_op_run(ctx, op, out, &x, 1, &at, sizeof at);
}

/* ======================================================================== */
/* tg_max_pool2d                                                             */
/* ======================================================================== */

/* y[n,c,oh,ow] = max over the k x k window at (oh s, ow s) of x[n,c].
 * x is [N,C,H,W], y is [N,C,Ho,Wo], Ho = (H - k) / s + 1.
 *   dx[argmax] += dy: the whole gradient goes to the first maximum of the
 *   window (row-major order), as PyTorch's CPU kernel does; a NaN is a maximum.
 * Saves the flat index in the plane of each window's maximum (int32, one per
 * output element, in tg_scratch) when a node is recorded. */
TGI_OP(max_pool2d);

tg_tensor *tg_max_pool2d(tg_ctx *ctx, tg_tensor *x, int kernel, int stride)
{
    static const char fn[] = "tg_max_pool2d";
    if (!ctx || !check_pool(ctx, fn, x, kernel, stride)) return NULL;
    if (x->shape[2] * x->shape[3] > INT32_MAX) {
        char sx[64];
        tg_set_error(ctx, "%s: planes of more than 2^31 elements are not supported (x is %s)",
                     fn, TGI_SHAPE(x, sx));
        return NULL;
    }
    return pool_run(ctx, fn, &op_max_pool2d, x, kernel, stride);
}

/* v replaces the running maximum m: larger, or the first NaN (a NaN stays) */
#define MAX_TAKES(v, m) ((v) > (m) || ((v) != (v) && (m) == (m)))

/* The 2x2, stride 2 windows of one plane (the common case), without
 * branches: y[oh,ow] and the index in the plane of its first maximum. */
#define MAX_POOL_2X2_BODY(T)                                                              \
    for (int64_t oh = 0; oh < g->ho; oh++) {                                              \
        const T *r0 = xp + 2 * oh * g->w, *r1 = r0 + g->w;                                \
        T *yr = y + oh * g->wo;                                                           \
        int32_t *ar = arg ? arg + oh * g->wo : NULL;                                      \
        const int32_t base = (int32_t)(2 * oh * g->w), w = (int32_t)g->w;                 \
        for (int64_t ow = 0; ow < g->wo; ow++) {                                          \
            const T a = r0[2 * ow], b = r0[2 * ow + 1], c = r1[2 * ow], d = r1[2 * ow + 1]; \
            const int32_t k0 = base + 2 * (int32_t)ow;                                    \
            T m = a;                                                                      \
            int32_t k = k0;                                                               \
            const int tb = MAX_TAKES(b, m);                                               \
            m = tb ? b : m, k = tb ? k0 + 1 : k;                                          \
            const int tc = MAX_TAKES(c, m);                                               \
            m = tc ? c : m, k = tc ? k0 + w : k;                                          \
            const int td = MAX_TAKES(d, m);                                               \
            m = td ? d : m, k = td ? k0 + w + 1 : k;                                      \
            yr[ow] = m;                                                                   \
            if (ar) ar[ow] = k;                                                           \
        }                                                                                 \
    }

/* Any window: a row-major scan of each window */
#define MAX_POOL_ANY_BODY(T)                                                              \
    for (int64_t oh = 0; oh < g->ho; oh++)                                                \
        for (int64_t ow = 0; ow < g->wo; ow++) {                                          \
            int64_t best = oh * g->s * g->w + ow * g->s;                                  \
            T m = xp[best];                                                               \
            for (int64_t i = 0; i < g->kh; i++) {                                         \
                const int64_t r = (oh * g->s + i) * g->w + ow * g->s;                     \
                for (int64_t j = 0; j < g->kw; j++)                                       \
                    if (MAX_TAKES(xp[r + j], m)) m = xp[r + j], best = r + j;             \
            }                                                                             \
            y[oh * g->wo + ow] = m;                                                       \
            if (arg) arg[oh * g->wo + ow] = (int32_t)best;                                \
        }

#define DEFINE_MAX_POOL_PLANE(T, SFX)                                                     \
    /* out of line: inlined into the forward, its branch-free selects become  \
     * branches and spills (twice as slow) */                                     \
    __attribute__((noinline)) static void max_pool_plane_##SFX(                   \
        T *restrict y, int32_t *restrict arg, const T *restrict xp, const geom *g) \
    {                                                                                     \
        if (g->kh == 2 && g->kw == 2 && g->s == 2) {                                      \
            MAX_POOL_2X2_BODY(T)                                                          \
        } else {                                                                          \
            MAX_POOL_ANY_BODY(T)                                                          \
        }                                                                                 \
    }
DEFINE_MAX_POOL_PLANE(float, f32)
DEFINE_MAX_POOL_PLANE(double, f64)
#define MAX_POOL_PLANE(y, arg, xp, g)                                                     \
    _Generic((y), float *: max_pool_plane_f32, double *: max_pool_plane_f64)(y, arg, xp, g)

/* y = each window's first maximum; arg (may be NULL) its index in the plane */
static void max_pool_fwd(tg_tensor *out, const tg_tensor *x, const geom *g, int32_t *arg)
{
    const int64_t planes = g->n * g->c, hw = g->h * g->w, np = g->ho * g->wo;
    TGI_FLOAT_DISPATCH(x->dtype, {
        const T *xd = x->data;
        T *y = out->data;
        for (int64_t pl = 0; pl < planes; pl++)
            MAX_POOL_PLANE(y + pl * np, arg ? arg + pl * np : NULL, xd + pl * hw, g);
    });
}

/* y = each window's first maximum; on a tape node its index in the plane
 * (tg_scratch, c->saved) for backward */
static int max_pool2d_forward(tg_op_call *c)
{
    geom g = geom_load(c);
    int32_t *arg = NULL;
    if (tgi_recorded(c)) {
        arg = tg_scratch(c->ctx, (size_t)c->out->numel * sizeof *arg + 1);
        if (!arg) return -1; /* error recorded by tg_scratch */
    }
    c->saved = arg;
    max_pool_fwd(c->out, c->in[0], &g, arg);
    return 0;
}

/* d max/dx = 1 at the saved first maximum, 0 elsewhere: dx[argmax] += dy */
static void max_pool2d_backward(tg_op_call *c)
{
    pool_bwd p;
    if (!pool_grads(c, &p)) return;
    const int64_t planes = p.planes, hw = p.hw, np = p.np;
    const int32_t *arg = c->saved;
    TGI_FLOAT_DISPATCH(c->in[0]->dtype, {
        const T *dy = p.dy;
        T *dx = p.dx;
        for (int64_t pl = 0; pl < planes; pl++)
            for (int64_t q = 0; q < np; q++) dx[pl * hw + arg[pl * np + q]] += dy[pl * np + q];
    });
}

/* ======================================================================== */
/* tg_avg_pool2d                                                             */
/* ======================================================================== */

/* y[n,c,oh,ow] = (1/k^2) sum over the k x k window at (oh s, ow s) of x[n,c].
 * x is [N,C,H,W], y is [N,C,Ho,Wo], Ho = (H - k) / s + 1.
 *   dx[window] += dy / k^2 (overlapping windows add up).
 * Saves nothing (the local gradient is a constant). */
TGI_OP(avg_pool2d);

tg_tensor *tg_avg_pool2d(tg_ctx *ctx, tg_tensor *x, int kernel, int stride)
{
    static const char fn[] = "tg_avg_pool2d";
    if (!ctx || !check_pool(ctx, fn, x, kernel, stride)) return NULL;
    return pool_run(ctx, fn, &op_avg_pool2d, x, kernel, stride);
}

/* y = the window's sum (row-major order) times 1/k^2 */
static void avg_pool_fwd(tg_tensor *out, const tg_tensor *x, const geom *g)
{
    const int64_t planes = g->n * g->c, hw = g->h * g->w, np = g->ho * g->wo;
    TGI_FLOAT_DISPATCH(x->dtype, {
        const T *xd = x->data;
        T *y = out->data;
        const T inv = (T)1 / (T)(g->kh * g->kw);
        for (int64_t pl = 0; pl < planes; pl++) {
            const T *xp = xd + pl * hw;
            for (int64_t oh = 0; oh < g->ho; oh++)
                for (int64_t ow = 0; ow < g->wo; ow++) {
                    T s = 0;
                    for (int64_t i = 0; i < g->kh; i++) {
                        const T *r = xp + (oh * g->s + i) * g->w + ow * g->s;
                        for (int64_t j = 0; j < g->kw; j++) s += r[j];
                    }
                    y[pl * np + oh * g->wo + ow] = s * inv;
                }
        }
    });
}

static int avg_pool2d_forward(tg_op_call *c)
{
    geom g = geom_load(c);
    avg_pool_fwd(c->out, c->in[0], &g);
    return 0;
}

/* d mean/dx = 1/k^2 over the window: dx[window] += dy / k^2 */
static void avg_pool2d_backward(tg_op_call *c)
{
    pool_bwd p;
    if (!pool_grads(c, &p)) return;
    const geom g = p.g;
    const int64_t planes = p.planes, hw = p.hw, np = p.np;
    TGI_FLOAT_DISPATCH(c->in[0]->dtype, {
        const T *dy = p.dy;
        T *dx = p.dx;
        const T inv = (T)1 / (T)(g.kh * g.kw);
        for (int64_t pl = 0; pl < planes; pl++)
            for (int64_t oh = 0; oh < g.ho; oh++)
                for (int64_t ow = 0; ow < g.wo; ow++) {
                    const T d = dy[pl * np + oh * g.wo + ow] * inv;
                    for (int64_t i = 0; i < g.kh; i++) {
                        T *r = dx + pl * hw + (oh * g.s + i) * g.w + ow * g.s;
                        for (int64_t j = 0; j < g.kw; j++) r[j] += d;
                    }
                }
    });
}
