/* SPDX-License-Identifier: MIT */
/* ops/conv.c: convolution and pooling, NCHW: tg_conv2d, tg_max_pool2d, tg_avg_pool2d.
 *
 * tg_conv2d is one node. With stride 1 and padding below the kernel's size
 * (every layer of a LeNet-style network) it takes the direct path: the
 * image's planes are copied into a zero-bordered layout in which every
 * window is a shifted view of the plane, so forward, the input gradient and
 * the weight gradient are each one pass of register-tiled multiply-adds over
 * the image, with nothing unfolded (see "stride 1: the direct path" below).
 * Any other geometry goes through the GEMM (src/kernels/gemm.h): each
 * image's receptive fields are unfolded into a column matrix (im2col) [C kh
 * kw, Ho Wo], a product with the weights read as [O, C kh kw] writes the
 * image's output, and backward unfolds again and folds the column gradient
 * back (col2im). Images are taken one after the other, in order, so every sum
 * has one order whatever the thread count (the GEMM splits only its output
 * between threads). Local gradients in full: docs/ops.md, "Convolution and
 * pooling". */
#include "ops.h"

/* The vector paths that move lanes (the 2x2 max pool, dy's transposition)
 * need __builtin_shufflevector (GCC 12, clang); without it they are scalar. */
#if defined(__has_builtin)
#if __has_builtin(__builtin_shufflevector)
#define POOL_VEC 1
#endif
#endif

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
 * Saves nothing: backward recomputes what it needs from x in tg_scratch
 * buffers. Numerics: the direct path adds the bias to each output's sum; the
 * GEMM path writes it into y before the GEMM accumulates; db sums in double. */
TGI_OP(conv2d);

/* tg_conv2d's argument checks, for fn: 1 if usable, else 0 with the error */
static int check_conv(tg_ctx *ctx, const char *fn, const tg_tensor *x, const tg_tensor *w,
                      const tg_tensor *b, int stride, int padding)
{
    if (!tgi_check_xwb(ctx, fn, x, w, b)) return 0;
    char sx[64], sw[64], sb[64];
    if (x->ndim != 4 || w->ndim != 4) {
        tg_set_error(ctx, "%s: x must be 4-D [N,C,H,W] and w 4-D [O,C,kh,kw]: x is %s, w is %s",
                     fn, TGI_SHAPE(x, sx), TGI_SHAPE(w, sw));
        return 0;
    }
    const int64_t c_x = x->shape[1], c_w = w->shape[1];
    if (c_x != c_w) {
        tg_set_error(ctx, "%s: x %s has %lld channels but w %s expects %lld", fn,
                     TGI_SHAPE(x, sx), (long long)c_x, TGI_SHAPE(w, sw), (long long)c_w);
        return 0;
    }
    if (b && (b->ndim != 1 || b->shape[0] != w->shape[0])) {
        tg_set_error(ctx, "%s: bias must be [%lld] to match w %s, got b %s", fn,
                     (long long)w->shape[0], TGI_SHAPE(w, sw), TGI_SHAPE(b, sb));
        return 0;
    }
    if (stride < 1 || padding < 0) {
        tg_set_error(ctx, "%s: stride must be >= 1 and padding >= 0, got stride %d, padding %d "
                          "(x is %s, w is %s)", fn, stride, padding, TGI_SHAPE(x, sx),
                     TGI_SHAPE(w, sw));
        return 0;
    }
    int64_t hp = x->shape[2] + 2 * (int64_t)padding, wp = x->shape[3] + 2 * (int64_t)padding;
    if (w->shape[2] < 1 || w->shape[3] < 1 || w->shape[2] > hp || w->shape[3] > wp) {
        tg_set_error(ctx, "%s: kernel %lldx%lld does not fit the padded input %lldx%lld "
                          "(x is %s, w is %s, padding %d)", fn, (long long)w->shape[2],
                     (long long)w->shape[3], (long long)hp, (long long)wp, TGI_SHAPE(x, sx),
                     TGI_SHAPE(w, sw), padding);
        return 0;
    }
    return 1;
}

tg_tensor *tg_conv2d(tg_ctx *ctx, tg_tensor *x, tg_tensor *w, tg_tensor *b, int stride,
                     int padding)
{
    static const char fn[] = "tg_conv2d";
    if (!ctx || !check_conv(ctx, fn, x, w, b, stride, padding)) return NULL;
    geom g = geom_of(x, w->shape[2], w->shape[3], stride, padding);
    int64_t shape[4] = {g.n, w->shape[0], g.ho, g.wo};
    tg_tensor *out = tgi_tensor_new(ctx, fn, x->dtype, 4, shape, 0);
    if (!out) return NULL;
    tg_tensor *in[3] = {x, w, b};
    tgi_attr at = {.i = {0}};
    geom_save(&at, &g);
    return tgi_op_run(ctx, &op_conv2d, out, in, b ? 3 : 2, &at, sizeof at);
}

/* ---- the general path: unfolding (im2col) and the GEMM ----------------- */

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

/* One sweep over the receptive fields of an image x [C,H,W] and its columns
 * col [K,P] (K = C kh kw, P = Ho Wo): unfolding (fold == 0) writes
 * col = im2col(x), zeros where the window leaves the image; folding (fold
 * == 1) adds col into x, the transpose (col2im). */
#define SWEEP_BODY(T)                                                                     \
    for (int64_t ch = 0; ch < g->c; ch++)                                                 \
        for (int64_t i = 0; i < g->kh; i++)                                               \
            for (int64_t j = 0; j < g->kw; j++) {                                         \
                T *row = col + ((ch * g->kh + i) * g->kw + j) * g->ho * g->wo;            \
                T *plane = x + ch * g->h * g->w;                                          \
                int64_t oh0, oh1, ow0, ow1;                                               \
                valid_range(g->h, g->ho, g->s, i - g->p, &oh0, &oh1);                     \
                valid_range(g->w, g->wo, g->s, j - g->p, &ow0, &ow1);                     \
                if (!fold) {                                                              \
                    for (int64_t q = 0; q < oh0 * g->wo; q++) row[q] = 0;                 \
                    for (int64_t q = oh1 * g->wo; q < g->ho * g->wo; q++) row[q] = 0;     \
                }                                                                         \
                for (int64_t oh = oh0; oh < oh1; oh++) {                                  \
                    T *r = row + oh * g->wo;                                              \
                    T *xr = plane + (oh * g->s + i - g->p) * g->w + j - g->p;             \
                    if (fold) {                                                           \
                        for (int64_t ow = ow0; ow < ow1; ow++) xr[ow * g->s] += r[ow];    \
                        continue;                                                         \
                    }                                                                     \
                    for (int64_t ow = 0; ow < ow0; ow++) r[ow] = 0;                       \
                    for (int64_t ow = ow0; ow < ow1; ow++) r[ow] = xr[ow * g->s];         \
                    for (int64_t ow = ow1; ow < g->wo; ow++) r[ow] = 0;                   \
                }                                                                         \
            }

TGI_AVX2_CLONES static void sweep_f32(float *restrict col, float *restrict x, const geom *g,
                                      int fold) { SWEEP_BODY(float) }
TGI_AVX2_CLONES static void sweep_f64(double *restrict col, double *restrict x, const geom *g,
                                      int fold) { SWEEP_BODY(double) }
/* col = im2col(x_n);  dx_n += col2im(col) */
#define IM2COL(col, x, g) _Generic((col), float *: sweep_f32, double *: sweep_f64)(col, (void *)(x), g, 0)
#define COL2IM(dx, col, g) _Generic((col), float *: sweep_f32, double *: sweep_f64)(col, dx, g, 1)

/* sum[p] = the sum of the plane r[p] [0..n) in double, in 8 interleaved
 * partial sums (vectorised; the order is fixed, so the bits are too), for 4
 * planes at once (independent chains of adds) */
typedef double ps_v8d __attribute__((vector_size(64)));
typedef double ps_u8d __attribute__((vector_size(64), aligned(8), may_alias));
typedef float ps_v8f __attribute__((vector_size(32)));
typedef float ps_u8f __attribute__((vector_size(32), aligned(4), may_alias));
#define PLANE_SUMS_BODY(LOAD8)                                                            \
    ps_v8d acc[4] = {{0}};                                                                \
    int64_t q = 0;                                                                        \
    for (; q + 8 <= n; q += 8)                                                            \
        for (int p = 0; p < 4; p++) acc[p] += LOAD8(r[p] + q);                            \
    for (; q < n; q++)                                                                    \
        for (int p = 0; p < 4; p++) acc[p][0] += (double)r[p][q];                         \
    for (int p = 0; p < 4; p++)                                                           \
        sum[p] = ((acc[p][0] + acc[p][1]) + (acc[p][2] + acc[p][3])) +                    \
                 ((acc[p][4] + acc[p][5]) + (acc[p][6] + acc[p][7]));
#define PS_LOAD_F32(a) __builtin_convertvector(*(const ps_u8f *)(a), ps_v8d)
#define PS_LOAD_F64(a) (*(const ps_u8d *)(a))

TGI_AVX512_CLONES static void plane_sums_f32(double *sum, const float *const *r, int64_t n)
{
    PLANE_SUMS_BODY(PS_LOAD_F32)
}
TGI_AVX512_CLONES static void plane_sums_f64(double *sum, const double *const *r, int64_t n)
{
    PLANE_SUMS_BODY(PS_LOAD_F64)
}
#define PLANE_SUMS(sum, r, n)                                                             \
    _Generic((r), const float **: plane_sums_f32, const double **: plane_sums_f64)(sum, r, n)

/* y_n = b (broadcast over the plane), then y_n += W col_n, image by image */
static int conv2d_fwd_gemm(tg_ctx *ctx, tg_tensor *out, const tg_tensor *x, const tg_tensor *w,
                           const tg_tensor *b, const geom *g)
{
    const int64_t o = w->shape[0], k = g->c * g->kh * g->kw, np = g->ho * g->wo;
    /* the columns live only during this call: the arena is rewound after it
     * (the output was allocated before them) */
    const tgi_arena_mark mark = tgi_arena_get_mark(ctx);
    void *colv = tg_scratch(ctx, (size_t)(k * np) * tgi_dtype_size(x->dtype) + 1);
    int rc = colv ? 0 : -1;
    TGI_FLOAT_DISPATCH(x->dtype, {
        const T *xd = x->data, *bd = b ? (const T *)b->data : NULL;
        T *y = out->data, *col = colv;
        for (int64_t n = 0; n < g->n && rc == 0; n++) {
            T *yn = y + n * o * np;
            if (bd)
                for (int64_t oc = 0; oc < o; oc++)
                    for (int64_t q = 0; q < np; q++) yn[oc * np + q] = bd[oc];
            IM2COL(col, xd + n * g->c * g->h * g->w, g);
            rc = tgi_op_gemm(ctx, "tg_conv2d", x->dtype, 0, 0, o, np, k, w->data, k, col, np,
                             bd != NULL, yn, np);
        }
    });
    tgi_arena_rewind(ctx, mark);
    return rc;
}

/* dW += dy_n col_n^T (dwv not NULL), dx_n += fold(W^T dy_n) (dxv not NULL),
 * image by image, col_n unfolded again into one scratch buffer */
static void conv2d_bwd_gemm(tg_ctx *ctx, const tg_tensor *x, const tg_tensor *w, const void *dyv,
                            void *dwv, void *dxv, const geom *g)
{
    const int64_t o = w->shape[0], k = g->c * g->kh * g->kw, np = g->ho * g->wo;
    const tgi_arena_mark mark = tgi_arena_get_mark(ctx);
    void *colv = tg_scratch(ctx, (size_t)(k * np) * tgi_dtype_size(x->dtype) + 1);
    int rc = colv ? 0 : -1; /* a GEMM out of memory (recorded) stops the loop */
    TGI_FLOAT_DISPATCH(x->dtype, {
        const T *xd = x->data, *dy = dyv;
        T *col = colv, *dx = dxv;
        for (int64_t n = 0; n < g->n && rc == 0; n++) {
            const T *dyn = dy + n * o * np;
            if (dwv) { /* [O,K] += [O,P] ([K,P] stored, read as its transpose) */
                IM2COL(col, xd + n * g->c * g->h * g->w, g);
                rc = tgi_op_gemm(ctx, "tg_conv2d", x->dtype, 0, 1, o, k, np, dyn, np, col, np, 1,
                                 dwv, k);
            }
            if (dx && rc == 0) { /* [K,P] = ([O,K] stored, read as its transpose) [O,P] */
                rc = tgi_op_gemm(ctx, "tg_conv2d", x->dtype, 1, 0, k, np, o, w->data, k, dyn, np,
                                 0, col, np);
                if (rc == 0) COL2IM(dx + n * g->c * g->h * g->w, col, g);
            }
        }
    });
    tgi_arena_rewind(ctx, mark);
}

/* ---- stride 1: the direct path ------------------------------------------ */

/* With stride 1 and padding p < kh, kw, the convolution is computed from the
 * image itself, never unfolded. Its planes are copied into a zero-bordered
 * layout: ph zero rows above and below, pw zero columns on the left, rows wr
 * >= W + pw apart (wr >= Wo too). The window of output (oh, ow) then reads
 * plane[q + i wr + j] at q = oh wr + ow: where it runs off a row's right end
 * it reads the next row's left border, which is zero. Every output position
 * is computed in that layout, the columns ow >= Wo and the positions past
 * Ho wr as throw-away values:
 *   forward   y[o][q]   = sum over k = (c,i,j) of w[o][k] xp[c][q + i wr + j]
 *   dx        the same sum over dy padded by kh-1-p rows and kw-1-p columns,
 *             with the kernel flipped and its channel axes swapped
 *   dW        dw[o][k] += sum over the images and q of dy[o][q] xp[c][q + i wr + j]
 * K1 computes the first two in tiles of D_MR rows by D_NV vectors of
 * positions, each term a broadcast weight times a vector of the shifted plane.
 * K2 computes the third in tiles of D_KR values of k by D_OV vectors of o,
 * each term a broadcast plane value times a vector of dy transposed to
 * [q][o]. Each sum runs over k (K1), or over the images then q (K2), in one
 * fixed order. */
#define D_VB 64 /* bytes per vector */
#define D_MR 8
#define D_NV 3
#define D_KR 13
#define D_OV 2

typedef float d_vf32 __attribute__((vector_size(D_VB)));
typedef double d_vf64 __attribute__((vector_size(D_VB)));
typedef float d_uf32 __attribute__((vector_size(D_VB), aligned(4), may_alias));
typedef double d_uf64 __attribute__((vector_size(D_VB), aligned(8), may_alias));

/* The tiles' multiply-adds are contracted into FMAs, as the GEMM's kernels
 * compute them (the library is otherwise built with -ffp-contract=off). */
#if defined(__clang__)
#define D_CONTRACT _Pragma("clang fp contract(fast)")
#define D_FMA_ATTR
#else
#define D_CONTRACT
#define D_FMA_ATTR __attribute__((optimize("fp-contract=fast")))
#endif

/* The zero-bordered layout of a plane [h,w] for a kh x kw window with padding
 * ph, pw: row width wr, plane size, nq = Ho wr positions computed, rounded
 * up to whole vectors as qr. */
typedef struct {
    int64_t h, w, ph, pw, wr, plane, nq, qr;
} dlay;

static dlay dlay_of(int64_t h, int64_t w, int64_t ph, int64_t pw, const geom *g, size_t esize)
{
    const int64_t ho = h + 2 * ph - g->kh + 1, wo = w + 2 * pw - g->kw + 1;
    const int64_t t = (int64_t)(D_VB / esize);
    dlay L = {h, w, ph, pw, w + pw > wo ? w + pw : wo, 0, 0, 0};
    L.plane = (h + 2 * ph) * L.wr;
    L.nq = ho * L.wr;
    L.qr = (L.nq + t - 1) / t * t;
    return L;
}

/* Elements of a buffer of nch planes in layout L, with the slack the tiles
 * read past its end */
static int64_t dlay_size(const dlay *L, int64_t nch, const geom *g)
{
    return nch * L->plane + L->qr + g->kw;
}

/* nr rows of nc elements, rows ds apart in d and ss apart in s: d = s
 * (mode 0), d = s + bias (mode 1) or d += s (mode 2). A row of at least RL
 * elements goes in whole 32-byte vectors, the last one ending at the row's
 * end (overlapping the one before it: it is computed before the others are
 * stored, so the overlap gets the same values twice, never added twice). */
#define ROWS_LD(V, W, p) ((V)(*(const W *)(p)))
#define ROWS_VEC(V, W, i)                                                                  \
    (mode == 2   ? ROWS_LD(V, W, sr + (i)) + ROWS_LD(V, W, dr + (i))                             \
     : mode == 1 ? ROWS_LD(V, W, sr + (i)) + bias                                             \
                 : ROWS_LD(V, W, sr + (i)))
#define ROWS_BODY(T, V, W)                                                                 \
    enum { RL = 32 / sizeof(T) };                                                         \
    for (int64_t r = 0; r < nr; r++) {                                                    \
        T *restrict dr = d + r * ds;                                                      \
        const T *restrict sr = s + r * ss;                                                \
        if (nc < RL) {                                                                    \
            for (int64_t c = 0; c < nc; c++)                                              \
                dr[c] = mode == 2 ? sr[c] + dr[c] : mode == 1 ? sr[c] + bias : sr[c];     \
            continue;                                                                     \
        }                                                                                 \
        const V last = ROWS_VEC(V, W, nc - RL);                                              \
        for (int64_t c = 0; c + RL < nc; c += RL) *(W *)(dr + c) = ROWS_VEC(V, W, c);        \
        *(W *)(dr + nc - RL) = last;                                                      \
    }
typedef float d_hv32 __attribute__((vector_size(32)));
typedef double d_hv64 __attribute__((vector_size(32)));
typedef float d_hf32 __attribute__((vector_size(32), aligned(4), may_alias));
typedef double d_hf64 __attribute__((vector_size(32), aligned(8), may_alias));
TGI_AVX512_CLONES static void rows_f32(float *d, int64_t ds, const float *s, int64_t ss,
                                       int64_t nr, int64_t nc, int mode, float bias)
{
    ROWS_BODY(float, d_hv32, d_hf32)
}
TGI_AVX512_CLONES static void rows_f64(double *d, int64_t ds, const double *s, int64_t ss,
                                       int64_t nr, int64_t nc, int mode, double bias)
{
    ROWS_BODY(double, d_hv64, d_hf64)
}
#define ROWS(d, ds, s, ss, nr, nc, mode, bias)                                            \
    _Generic((d), float *: rows_f32, double *: rows_f64)(d, ds, s, ss, nr, nc, mode, bias)

/* xp (nch planes in layout L, borders zero) = the interior, x [nch,h,w] */
#define DLAY_FILL(xp, x, nch, L)                                                          \
    for (int64_t ch_ = 0; ch_ < (nch); ch_++)                                             \
    ROWS((xp) + ch_ * (L).plane + (L).ph * (L).wr + (L).pw, (L).wr,                       \
         (x) + ch_ * (L).h * (L).w, (L).w, (L).h, (L).w, 0, 0)

/* dt [q][op] = dy_n [o][np] moved into layout L's positions q = oh wr + ow
 * (transposed: the o values of a position side by side), in 16 x 16 blocks;
 * BLOCK16 (when it returns 1) does a whole block of 16 channels */
#define TO_ROWS_BODY(T, BLOCK16)                                                          \
    for (int64_t oh = 0; oh < L->nq / L->wr; oh++)                                        \
        for (int64_t ow0 = 0; ow0 < wo; ow0 += 16)                                        \
            for (int64_t m0 = 0; m0 < o; m0 += 16) {                                      \
                const int64_t nb = wo - ow0 < 16 ? wo - ow0 : 16;                         \
                const int64_t mb = o - m0 < 16 ? o - m0 : 16;                             \
                const T *restrict s = dy + m0 * np + oh * wo + ow0;                       \
                T *restrict d = dt + (oh * L->wr + ow0) * op + m0;                        \
                if (mb == 16 && BLOCK16) continue;                                        \
                for (int64_t t = 0; t < nb; t++)                                          \
                    for (int64_t m = 0; m < mb; m++) d[t * op + m] = s[m * np + t];       \
            }
#ifdef POOL_VEC
typedef float tr_v16 __attribute__((vector_size(64)));
typedef float tr_u16 __attribute__((vector_size(64), aligned(4), may_alias));
/* rows i and i + B (i & B == 0) of a 16 x 16 transposition in steps B = 8, 4,
 * 2, 1: the top-right B x B blocks of the pair swap with the bottom-left */
#define TR_I(B, e) (((e) & (B)) ? 16 + (e) - (B) : (e))
#define TR_J(B, e) (((e) & (B)) ? 16 + (e) : (e) + (B))
#define TR_IDX(F, B)                                                                      \
    F(B, 0), F(B, 1), F(B, 2), F(B, 3), F(B, 4), F(B, 5), F(B, 6), F(B, 7), F(B, 8), F(B, 9), \
        F(B, 10), F(B, 11), F(B, 12), F(B, 13), F(B, 14), F(B, 15)
#define TR_STEP(B)                                                                        \
    for (int i = 0; i < 16; i++)                                                          \
        if (!(i & (B))) {                                                                 \
            const tr_v16 a_ = r[i], b_ = r[i + (B)];                                      \
            r[i] = __builtin_shufflevector(a_, b_, TR_IDX(TR_I, B));                      \
            r[i + (B)] = __builtin_shufflevector(a_, b_, TR_IDX(TR_J, B));                \
        }
/* d[t op + m] = s[m np + t] for m < 16, t < nb, reading s[m np + 16) whole:
 * 0 when that would pass the plane's end (oh wo + ow0 + 16 > np) */
__attribute__((always_inline)) static inline int to_rows_block16(float *restrict d, int64_t op, const float *restrict s,
                                  int64_t np, int64_t at, int64_t nb)
{
    if (at + 16 > np) return 0;
    tr_v16 r[16];
    for (int m = 0; m < 16; m++) r[m] = *(const tr_u16 *)(s + m * np);
    TR_STEP(8)
    TR_STEP(4)
    TR_STEP(2)
    TR_STEP(1)
    for (int64_t t = 0; t < nb; t++) *(tr_u16 *)(d + t * op) = r[t];
    return 1;
}
#define TO_ROWS_BLOCK16 to_rows_block16(d, op, s, np, oh * wo + ow0, nb)
#else
#define TO_ROWS_BLOCK16 0
#endif
TGI_AVX512_CLONES static void to_rows_f32(float *dt, int64_t op, const float *dy, int64_t o,
                                          int64_t wo, const dlay *L)
{
    const int64_t np = L->nq / L->wr * wo;
    TO_ROWS_BODY(float, TO_ROWS_BLOCK16)
}
TGI_AVX512_CLONES static void to_rows_f64(double *dt, int64_t op, const double *dy, int64_t o,
                                          int64_t wo, const dlay *L)
{
    const int64_t np = L->nq / L->wr * wo;
    TO_ROWS_BODY(double, 0)
}
#define TO_ROWS(dt, op, dy, o, wo, L)                                                     \
    _Generic((dt), float *: to_rows_f32, double *: to_rows_f64)(dt, op, dy, o, wo, L)

/* off[k] for k = (ch,i,j) < nch kh kw: the offset ch plane + i wr + j of its
 * window element; entries up to n are 0 (the padding of the last tile) */
static void dlay_offsets(int64_t *off, int64_t n, int64_t nch, const dlay *L, const geom *g)
{
    int64_t k = 0;
    for (int64_t ch = 0; ch < nch; ch++)
        for (int64_t i = 0; i < g->kh; i++)
            for (int64_t j = 0; j < g->kw; j++) off[k++] = ch * L->plane + i * L->wr + j;
    while (k < n) off[k++] = 0;
}

/* One register tile of R rows by NV vectors: acc[r][v] = INIT, then for
 * each step t of the runs [t0, t0 + LEN) with t0 = 0, STRIDE, ... below N,
 * acc[r][v] += SCALAR * (vector at VEC), each in one FMA; then acc[r][v] is
 * stored at DST. The expressions read r, v and t. */
#define D_TILE(V, U, R, NV, N, STRIDE, LEN, INIT, SCALAR, VEC, DST)                       \
    {                                                                                     \
        V acc[R][NV];                                                                     \
        for (int r = 0; r < R; r++)                                                       \
            for (int v = 0; v < NV; v++) acc[r][v] = INIT;                                \
        for (int64_t t0 = 0; t0 < (N); t0 += (STRIDE))                                    \
            for (int64_t t = t0; t < t0 + (LEN); t++) {                                   \
                V bv[NV];                                                                 \
                for (int v = 0; v < NV; v++) bv[v] = *(const U *)(VEC);                   \
                for (int r = 0; r < R; r++)                                               \
                    for (int v = 0; v < NV; v++) acc[r][v] += (SCALAR) * bv[v];           \
            }                                                                             \
        for (int r = 0; r < R; r++)                                                       \
            for (int v = 0; v < NV; v++) *(U *)(DST) = acc[r][v];                         \
    }

/* K1, a tile of NV vectors of positions at q0 for the row block at a */
#define K1_TILE(V, U, NV)                                                                 \
    D_TILE(V, U, D_MR, NV, kk, kk, kk, (V){0}, a[t * D_MR + r], xp + off[t] + q0 + v * VL, \
           y + (mb * D_MR + r) * qr + q0 + v * VL)

/* y [mblocks D_MR][qr] = the K1 sums: ap the packed rows, [mblocks][kk][D_MR];
 * qr a whole number of vectors, in tiles of D_NV vectors then one narrower */
#define K1_BODY(T, V, U)                                                                  \
    D_CONTRACT                                                                            \
    enum { VL = D_VB / sizeof(T) };                                                       \
    for (int64_t mb = 0; mb < mblocks; mb++) {                                            \
        const T *a = ap + mb * kk * D_MR;                                                 \
        int64_t q0 = 0;                                                                   \
        for (; q0 + D_NV * VL <= qr; q0 += D_NV * VL) K1_TILE(V, U, D_NV)                 \
        if (qr - q0 == 2 * VL) K1_TILE(V, U, 2)                                           \
        if (qr - q0 == VL) K1_TILE(V, U, 1)                                               \
    }

/* K2, a tile of OV vectors of o at o0 for the D_KR rows at xr */
#define K2_TILE(V, U, OV)                                                                  \
    D_TILE(V, U, D_KR, OV, nq, wr, wo, *(const U *)(zt + r * op + v * VL), xr[r][t],      \
           dt + t * op + o0 + v * VL, zt + r * op + v * VL)

/* z [kblocks D_KR][op] += the K2 sums of one image: dt [nq][op] is dy
 * transposed (zero past o), summed over the positions ow < wo of each row of
 * wr; off the window offsets of the kblocks D_KR rows; op a whole number of
 * vectors, in tiles of D_OV vectors then one narrower */
#define K2_BODY(T, V, U)                                                                  \
    D_CONTRACT                                                                            \
    enum { VL = D_VB / sizeof(T) };                                                       \
    const T *xr[D_KR];                                                                    \
    for (int64_t kb = 0; kb < kblocks; kb++) {                                            \
        for (int r = 0; r < D_KR; r++) xr[r] = xp + off[kb * D_KR + r];                   \
        for (int64_t o0 = 0; o0 < op; o0 += D_OV * VL) {                                  \
            T *zt = z + kb * D_KR * op + o0;                                              \
            if (op - o0 >= D_OV * VL) K2_TILE(V, U, D_OV) else K2_TILE(V, U, 1)               \
        }                                                                                 \
    }

#define DEFINE_DIRECT(T, V, U, SFX)                                                       \
    TGI_AVX512_CLONES D_FMA_ATTR static void k1_##SFX(                                    \
        T *restrict y, const T *restrict ap, const T *restrict xp, const int64_t *off,    \
        int64_t mblocks, int64_t kk, int64_t qr)                                          \
    {                                                                                     \
        K1_BODY(T, V, U)                                                                  \
    }                                                                                     \
    TGI_AVX512_CLONES D_FMA_ATTR static void k2_##SFX(                                    \
        T *restrict z, const T *restrict dt, const T *restrict xp, const int64_t *off,    \
        int64_t kblocks, int64_t op, int64_t nq, int64_t wr, int64_t wo)                  \
    {                                                                                     \
        K2_BODY(T, V, U)                                                                  \
    }
DEFINE_DIRECT(float, d_vf32, d_uf32, f32)
DEFINE_DIRECT(double, d_vf64, d_uf64, f64)
#define K1(y, ap, xp, off, mblocks, kk, qr)                                               \
    _Generic((y), float *: k1_f32, double *: k1_f64)(y, ap, xp, off, mblocks, kk, qr)
#define K2(z, dt, xp, off, kblocks, op, nq, wr, wo)                                       \
    _Generic((z), float *: k2_f32, double *: k2_f64)(z, dt, xp, off, kblocks, op, nq, wr, wo)

/* Whether the direct path computes this geometry: stride 1 and padding below
 * the kernel, on a CPU with AVX-512. Its tiles keep 24 vectors of 64 bytes in
 * registers; with narrower registers they would spill, and the GEMM path is
 * the faster one there. */
static int is_direct(const geom *g)
{
#if defined(__x86_64__)
    return __builtin_cpu_supports("avx512f") && g->s == 1 && g->p < g->kh && g->p < g->kw;
#else
    (void)g;
    return 0;
#endif
}

static int64_t round_up(int64_t n, int64_t m) { return (n + m - 1) / m * m; }

/* ---- the direct passes, split over threads ------------------------------ */

/* A direct pass is cut into units: the images (forward, dx: each image's
 * output is its own) or fixed runs of D_CHUNK images (dW: each run sums into
 * its own z, and the runs' sums are added in order at the end), so the bits
 * do not depend on the thread count. Each thread has its own plane buffer
 * (zero borders) and its own K1 output or transposed dy. */
#define D_CHUNK 8
enum { D_FWD, D_DX, D_DW };

typedef struct {
    int which; /* D_FWD, D_DX or D_DW */
    tg_dtype dt;
    const geom *g;
    dlay L;             /* the layout of the planes read */
    const void *src;    /* x (forward, dW) or dy (dx), [N, nin, L.h, L.w] */
    const void *dy;     /* dW: dy [N, O, Ho, Wo] */
    void *dst;          /* y (forward), dx, or the runs' z [units][rows D_KR][op] (dW) */
    const void *ap;     /* K1: the packed rows [rows][kk][D_MR] */
    const void *bias;   /* forward: b or NULL */
    const int64_t *off; /* the window offsets, [kk] (K1) or [rows D_KR] (K2) */
    char *buf;          /* thread t's buffers at buf + t tbytes: planes, then y or dt */
    size_t tbytes, ybytes;
    int64_t nin, nout, rows, kk, op, units, nt;
    int add;            /* dx: add into dst (else assign: dst is a new gradient) */
    double *psum;       /* dW: NULL, or each image's dy plane sums [N][O] (for db) */
    int64_t pool;       /* 0, or the fused relu(max pool) of this window: */
    int32_t *arg;       /* forward: its window maxima (NULL: not saved) */
    /* dW: dy is the pool's [N,O,pn], reaching the maxima parg (indices in
     * the layout's plane) where its output py is > 0 */
    const void *py;
    const int32_t *parg;
    int64_t pn;
} djob;

static void relu_pool_epilogue(const djob *j, void *yb, int64_t n);

/* s[m] = the sum in double of plane m of dy [o][np] (PLANE_SUMS, 4 at a time) */
#define DY_SUMS_BODY(T)                                                                   \
    for (int64_t m = 0; m < o; m += 4) {                                                  \
        const T *r[4];                                                                    \
        double ps[4];                                                                     \
        for (int k = 0; k < 4; k++) r[k] = dy + (m + k < o ? m + k : o - 1) * np;         \
        PLANE_SUMS(ps, r, np);                                                            \
        for (int k = 0; k < 4 && m + k < o; k++) s[m + k] = ps[k];                        \
    }
static void dy_sums_f32(double *s, const float *dy, int64_t o, int64_t np) { DY_SUMS_BODY(float) }
static void dy_sums_f64(double *s, const double *dy, int64_t o, int64_t np) { DY_SUMS_BODY(double) }
#define dy_sums(s, dy, o, np)                                                             \
    _Generic((dy), const float *: dy_sums_f32, const double *: dy_sums_f64)(s, dy, o, np)

static void direct_units(const void *arg, int64_t u0, int64_t u1)
{
    const djob *j = arg;
    const geom *g = j->g;
    const dlay L = j->L;
    int64_t t = 0; /* the range [units t / nt, units (t + 1) / nt) starting at u0 */
    while (t + 1 < j->nt && j->units * (t + 1) / j->nt <= u0) t++;
    char *tb = j->buf + (size_t)t * j->tbytes;
    const int64_t hw_in = L.h * L.w, hw_out = j->which == D_DX ? g->h * g->w : g->ho * g->wo;
    TGI_FLOAT_DISPATCH(j->dt, {
        T *xp = (T *)(void *)tb, *yb = (T *)(void *)(tb + j->tbytes - j->ybytes);
        const T *src = j->src, *bd = j->bias;
        T *dst = j->dst;
        for (int64_t u = u0; u < u1; u++) {
            if (j->which == D_DW) {
                T *z = dst + u * j->rows * D_KR * j->op;
                const int64_t n1 = (u + 1) * D_CHUNK < g->n ? (u + 1) * D_CHUNK : g->n;
                for (int64_t n = u * D_CHUNK; n < n1; n++) {
                    if (j->psum) /* db's plane sums, while dy_n is read for dW */
                        dy_sums(j->psum + n * j->nout, (const T *)j->dy + n * j->nout * hw_out,
                                j->nout, hw_out);
                    DLAY_FILL(xp, src + n * j->nin * hw_in, j->nin, L);
                    if (j->pool) { /* dt from the pool's dy: (the windows do not overlap) */
                        const T *pd = (const T *)j->dy + n * j->nout * j->pn;
                        const T *py = (const T *)j->py + n * j->nout * j->pn;
                        const int32_t *pa = j->parg + n * j->nout * j->pn;
                        memset(yb, 0, (size_t)(L.nq * j->op) * sizeof(T));
                        for (int64_t m = 0; m < j->nout; m++)
                            for (int64_t q = m * j->pn; q < (m + 1) * j->pn; q++) {
                                const T sel[2] = {0, pd[q]}; /* (a select, not a branch) */
                                yb[pa[q] * j->op + m] = sel[py[q] > 0];
                            }
                    } else
                        TO_ROWS(yb, j->op, (const T *)j->dy + n * j->nout * hw_out, j->nout, g->wo, &L);
                    K2(z, (const T *)yb, (const T *)xp, j->off, j->rows, j->op, L.nq, L.wr,
                       g->wo);
                }
                continue;
            }
            DLAY_FILL(xp, src + u * j->nin * hw_in, j->nin, L);
            K1(yb, (const T *)j->ap, (const T *)xp, j->off, j->rows, j->kk, L.qr);
            if (j->pool) {
                relu_pool_epilogue(j, yb, u);
                continue;
            }
            const int64_t ho = j->which == D_DX ? g->h : g->ho, wo = j->which == D_DX ? g->w : g->wo;
            for (int64_t m = 0; m < j->nout; m++)
                ROWS(dst + (u * j->nout + m) * hw_out, wo, yb + m * L.qr, L.wr, ho, wo,
                     j->which == D_DX ? (j->add ? 2 : 0) : bd ? 1 : 0, bd ? bd[m] : (T)0);
        }
    });
}

/* tg_scratch of n bytes, zeroed (NULL with the error recorded) */
static void *scratch0(tg_ctx *ctx, size_t n)
{
    void *p = tg_scratch(ctx, n + 1);
    if (p) memset(p, 0, n);
    return p;
}

/* Runs j over its units on up to the context's thread count, after giving
 * it nt per-thread buffers of its planes and ybytes more; work counts the
 * multiply-adds. 0, or -1 with the error recorded. */
static int direct_run(tg_ctx *ctx, djob *j, size_t ybytes, int64_t work)
{
    const size_t es = tgi_dtype_size(j->dt);
    int nt = tgi_threads_for(ctx, work);
    if (nt > j->units) nt = (int)j->units;
    if (nt < 1) nt = 1;
    j->nt = nt;
    j->ybytes = (ybytes + 63) & ~(size_t)63;
    j->tbytes = (((size_t)dlay_size(&j->L, j->nin, j->g) * es + 63) & ~(size_t)63) + j->ybytes;
    j->buf = scratch0(ctx, (size_t)nt * j->tbytes + 64);
    if (!j->buf) return -1;
    j->buf += (64 - (uintptr_t)j->buf % 64) % 64;
    if (nt == 1)
        direct_units(j, 0, j->units);
    else
        tgi_par_units(ctx, nt, j->units, direct_units, j);
    return 0;
}

/* The K1 rows: ap[(r / D_MR) kk + t][r % D_MR] = w[o][c][i][j] where, for
 * the forward (flip 0), r = o and t = (c,i,j); for dx (flip 1), r = c and
 * t = (o, kh-1-i, kw-1-j). rows: the row blocks. */
static void *pack_rows(tg_ctx *ctx, const tg_tensor *w, int flip, int64_t *rows)
{
    const int64_t o = w->shape[0], c = w->shape[1], kk = w->shape[2] * w->shape[3];
    const int64_t nr = flip ? c : o, k = flip ? o * kk : c * kk;
    *rows = round_up(nr, D_MR) / D_MR;
    void *apv = scratch0(ctx, (size_t)(*rows * D_MR * k) * tgi_dtype_size(w->dtype));
    if (!apv) return NULL;
    TGI_FLOAT_DISPATCH(w->dtype, {
        const T *wd = w->data;
        T *ap = apv;
        for (int64_t m = 0; m < o; m++)
            for (int64_t ch = 0; ch < c; ch++)
                for (int64_t t = 0; t < kk; t++) {
                    const int64_t r = flip ? ch : m, col = flip ? m * kk + kk - 1 - t : ch * kk + t;
                    ap[((r / D_MR) * k + col) * D_MR + r % D_MR] = wd[(m * c + ch) * kk + t];
                }
    });
    return apv;
}

/* The window offsets of nch planes in layout L, n entries (dlay_offsets) */
static int64_t *offsets(tg_ctx *ctx, int64_t n, int64_t nch, const dlay *L, const geom *g)
{
    int64_t *off = tg_scratch(ctx, (size_t)n * sizeof *off + 1);
    if (off) dlay_offsets(off, n, nch, L, g);
    return off;
}

/* y = conv2d(x, w) + b through K1, image by image */
static int conv2d_fwd_direct(tg_ctx *ctx, tg_tensor *out, const tg_tensor *x, const tg_tensor *w,
                             const tg_tensor *b, const geom *g)
{
    const size_t es = tgi_dtype_size(x->dtype);
    const tgi_arena_mark mark = tgi_arena_get_mark(ctx);
    djob j = {.which = D_FWD, .dt = x->dtype, .g = g, .L = dlay_of(g->h, g->w, g->p, g->p, g, es),
              .src = x->data, .dst = out->data, .bias = b ? b->data : NULL, .nin = g->c,
              .nout = w->shape[0], .kk = g->c * g->kh * g->kw, .units = g->n};
    j.ap = pack_rows(ctx, w, 0, &j.rows);
    j.off = j.ap ? offsets(ctx, j.kk, g->c, &j.L, g) : NULL;
    const int rc = j.off ? direct_run(ctx, &j, (size_t)(j.rows * D_MR * j.L.qr) * es,
                                      g->n * j.nout * j.kk * g->ho * g->wo)
                         : -1;
    tgi_arena_rewind(ctx, mark);
    return rc;
}

/* dx += (add) or = the convolution of dy padded by kh-1-p, kw-1-p with the
 * flipped, channel-swapped kernel, through K1 */
static int conv2d_dx_direct(tg_ctx *ctx, const tg_tensor *w, const void *dyv, void *dxv,
                            int add, const geom *g)
{
    const size_t es = tgi_dtype_size(w->dtype);
    const int64_t o = w->shape[0];
    const tgi_arena_mark mark = tgi_arena_get_mark(ctx);
    djob j = {.which = D_DX, .dt = w->dtype, .g = g,
              .L = dlay_of(g->ho, g->wo, g->kh - 1 - g->p, g->kw - 1 - g->p, g, es),
              .src = dyv, .dst = dxv, .nin = o, .nout = g->c, .kk = o * g->kh * g->kw,
              .units = g->n, .add = add};
    j.ap = pack_rows(ctx, w, 1, &j.rows);
    j.off = j.ap ? offsets(ctx, j.kk, o, &j.L, g) : NULL;
    const int rc = j.off ? direct_run(ctx, &j, (size_t)(j.rows * D_MR * j.L.qr) * es,
                                      g->n * g->c * j.kk * g->h * g->w)
                         : -1;
    tgi_arena_rewind(ctx, mark);
    return rc;
}

/* db[o] += the sum over the images in order of dy_n's plane o, each in double
 * (psum [N][O]: the planes' sums) */
#define DB_ADD_BODY(T)                                                                    \
    for (int64_t m = 0; m < o; m++) {                                                     \
        double s = 0.0;                                                                   \
        for (int64_t n = 0; n < nimg; n++) s += psum[n * o + m];                          \
        db[m] += (T)s;                                                                    \
    }
static void db_add_f32(float *db, const double *psum, int64_t nimg, int64_t o) { DB_ADD_BODY(float) }
static void db_add_f64(double *db, const double *psum, int64_t nimg, int64_t o) { DB_ADD_BODY(double) }
#define DB_ADD(db, psum, nimg, o)                                                         \
    _Generic((db), float *: db_add_f32, double *: db_add_f64)(db, psum, nimg, o)

/* dW += sum over the images of dy_n (*) x_n, through K2, in runs of D_CHUNK
 * images whose sums are added in order; db (when not NULL) += dy's plane
 * sums, taken image by image in the same pass. pooled (not NULL, db NULL):
 * dy is the fused pool's (pooled's pool, pn, py, parg). */
static int conv2d_dw_direct(tg_ctx *ctx, const tg_tensor *x, const tg_tensor *w, const void *dyv,
                            void *dwv, void *dbv, const geom *g, const djob *pooled)
{
    const size_t es = tgi_dtype_size(x->dtype);
    const int64_t o = w->shape[0], k = g->c * g->kh * g->kw;
    const tgi_arena_mark mark = tgi_arena_get_mark(ctx);
    djob j = {.which = D_DW, .dt = x->dtype, .g = g, .L = dlay_of(g->h, g->w, g->p, g->p, g, es),
              .src = x->data, .dy = dyv, .nin = g->c, .nout = o, .rows = round_up(k, D_KR) / D_KR,
              .op = round_up(o, (int64_t)(D_VB / es)), .units = (g->n + D_CHUNK - 1) / D_CHUNK};
    if (pooled) j.pool = pooled->pool, j.pn = pooled->pn, j.py = pooled->py, j.parg = pooled->parg;
    const int64_t zn = j.rows * D_KR * j.op; /* one run's z [rows D_KR][op] */
    j.off = offsets(ctx, j.rows * D_KR, g->c, &j.L, g);
    j.dst = j.off ? scratch0(ctx, (size_t)(j.units * zn) * es) : NULL;
    j.psum = dbv && j.dst ? tg_scratch(ctx, (size_t)(g->n * o) * sizeof *j.psum + 1) : NULL;
    int rc = j.dst && (j.psum || !dbv) ? direct_run(ctx, &j, (size_t)(j.L.nq * j.op) * es, g->n * o * k * g->ho * g->wo)
                   : -1;
    if (rc == 0)
        TGI_FLOAT_DISPATCH(x->dtype, {
            const T *z = j.dst;
            T *dw = dwv;
            for (int64_t m = 0; m < o; m++)
                for (int64_t kk = 0; kk < k; kk++) {
                    T s = z[kk * j.op + m];
                    for (int64_t u = 1; u < j.units; u++) s += z[u * zn + kk * j.op + m];
                    dw[m * k + kk] += s;
                }
            if (dbv) DB_ADD((T *)dbv, j.psum, g->n, o);
        });
    tgi_arena_rewind(ctx, mark);
    return rc;
}

/* ---- stride 1, a sparse dy: the scatter path ---------------------------- */

/* Behind a max pool dy is zero at three positions of every four (more behind
 * a relu). When few enough of dy's values are nonzero (sp_chosen) the direct
 * path's backward visits only those: each d = dy[o][oh][ow] adds its window's
 * terms, a vector of channels at a time,
 *   dx[c][oh+i-p][ow+j-p] += w[o][c][i][j] d,  dw[o][c][i][j] += x[c][oh+i-p][ow+j-p] d,
 * in channel-last zero-bordered copies (cp: C rounded up to whole vectors;
 * rows of wb = W + 2p, hb = H + 2p rows, so every window is in the copy):
 *   xs[(r wb + s) cp + c] = x[c][r-p][s-p] (0 outside the image), dxs (dx) alike,
 *   wt[((o kh + i) kw + j) cp + c] = w[o][c][i][j], dwt (dw) alike.
 * A zero d's terms are zeros when w and x are finite: w's finiteness chooses
 * the path, and an image whose x is not finite has every d visited, so the
 * sums are the dense path's, in another order (o, then the positions in
 * order, then the window). Units are D_CHUNK images, as dW's runs: each unit
 * sums its dw into its own dwt, and the units' dwt are added in order at the
 * end, so the bits do not depend on the thread count. */
#define SP_COST 3 /* a visited value costs about as much as SP_COST dense ones */
#define SP_NB 25  /* dw's slots (vectors of a window) summed in registers at once */
#if defined(__clang__)
#define SP_UNROLL _Pragma("clang loop unroll(full)")
#else
#define SP_UNROLL _Pragma("GCC unroll 25")
#endif

typedef struct {
    const geom *g;
    tg_dtype dt;
    int add;                 /* dx: add into it (else assign: a new gradient) */
    int64_t o, cp, hb, wb, units, nt;
    const void *x, *dy, *wt; /* wt: NULL when there is no dx */
    void *dx, *dwt;          /* dx or NULL; dwt [units][o kh kw cp] or NULL */
    char *buf;               /* thread t's xs, dxs, the visited values and positions */
    size_t tbytes;           /* at buf + t tbytes */
    /* dy behind the fused pool (pool > 0): dy and its output py [N,O,pn], each
     * window maximum's index parg in the bordered plane, qof that index's
     * position in the conv's plane */
    int64_t pool, pn;
    const void *py;
    const int32_t *parg, *qof;
} sjob;

/* The elements of one o's dwt: the window's cp kh kw values, in slots of a
 * vector rounded up to whole runs of SP_NB slots */
static int64_t sp_dw_len(const geom *g, int64_t cp, int64_t vl)
{
    return round_up(g->kh * g->kw * cp / vl, SP_NB) * vl;
}

/* The bytes of a thread's buffers: xs, dxs, the visited values of one plane
 * of dy, then (int32) their positions, each position's offset in xs, the
 * slots' offsets */
static size_t sp_thread_bytes(const geom *g, int64_t cp, int64_t hb, int64_t wb, size_t es)
{
    const size_t plane = ((size_t)(hb * wb * cp) * es + 63) & ~(size_t)63;
    const int64_t vl = (int64_t)(D_VB / es);
    return 2 * plane + (((size_t)(g->ho * g->wo) * (8 + es) +
                         (size_t)(sp_dw_len(g, cp, vl) / vl) * 4 + 63) & ~(size_t)63);
}

/* The range of units [units t / nt, units (t + 1) / nt) that starts at u0 */
static int64_t unit_thread(int64_t units, int64_t nt, int64_t u0)
{
    int64_t t = 0;
    while (t + 1 < nt && units * (t + 1) / nt <= u0) t++;
    return t;
}

/* xs's interior = x_n [C,H,W] moved channel-last (rows wb, channels cp
 * apart): by 16 x 16 transpositions where 16 channels and 16 positions can
 * be read whole (f32), else one value at a time */
#define SP_FILL_BODY(T, BLOCK16)                                                          \
    const int64_t hw = g->h * g->w;                                                       \
    for (int64_t r = 0; r < g->h; r++)                                                    \
        for (int64_t q0 = 0; q0 < g->w; q0 += 16) {                                       \
            const int64_t nb = g->w - q0 < 16 ? g->w - q0 : 16;                           \
            T *d = xs + ((r + g->p) * wb + q0 + g->p) * cp;                               \
            const T *sx = xn + r * g->w + q0;                                             \
            int64_t c0 = 0;                                                               \
            while (c0 + 16 <= g->c && BLOCK16) c0 += 16;                                  \
            for (int64_t t = 0; t < nb; t++)                                              \
                for (int64_t c = c0; c < g->c; c++) d[t * cp + c] = sx[c * hw + t];       \
        }
#ifdef POOL_VEC
#define SP_BLOCK16 to_rows_block16(d + c0, cp, sx + c0 * hw, hw, r * g->w + q0, nb)
#else
#define SP_BLOCK16 0
#endif
__attribute__((always_inline)) static inline void sp_fill_f32(float *restrict xs,
                                                              const float *restrict xn,
                                                              const geom *g, int64_t wb, int64_t cp)
{
    SP_FILL_BODY(float, SP_BLOCK16)
}
__attribute__((always_inline)) static inline void sp_fill_f64(double *restrict xs,
                                                              const double *restrict xn,
                                                              const geom *g, int64_t wb, int64_t cp)
{
    SP_FILL_BODY(double, 0)
}
#define SP_FILL(xs, xn, g, wb, cp)                                                        \
    _Generic((xs), float *: sp_fill_f32, double *: sp_fill_f64)(xs, xn, g, wb, cp)

/* The offset in xs or dxs of slot e0 + e from a window's corner: from the
 * table, or for a 5-wide window of one vector of channels (the CNN layers')
 * from e itself, so the unrolled slots address by constants */
#define SP_OFF_TABLE(e0, e) off[(e0) + (e)]
#define SP_OFF_5(e0, e) ((e0 + e) / 5 * rs + (e0 + e) % 5 * VL)
/* dx += the window of w times each visited d, SP_NB slots of w in registers */
#define SP_DX_BLOCKS(T, V, U, OFF)                                                            \
    for (int64_t e0 = 0; e0 < ns; e0 += SP_NB) {                                              \
        V wv[SP_NB];                                                                          \
        SP_UNROLL for (int e = 0; e < SP_NB; e++) wv[e] = *(const U *)(wm + (e0 + e) * VL);   \
        for (int64_t t = 0; t < cnt; t++) {                                                   \
            const V d = (V){0} + dv[t];                                                       \
            T *a = dxs + qmap[lst[t]];                                                        \
            SP_UNROLL for (int e = 0; e < SP_NB; e++) *(U *)(a + OFF(e0, e)) += d * wv[e];    \
        }                                                                                     \
    }
/* dw += the window of x times each visited d, SP_NB slots summed in registers
 * (slots past ns: throw-away sums in dwt's padding) */
#define SP_DW_BLOCKS(T, V, U, OFF)                                                            \
    for (int64_t e0 = 0; e0 < nsp; e0 += SP_NB) {                                             \
        T *dwm = dwt + (m * nsp + e0) * VL;                                                   \
        V acc[SP_NB];                                                                         \
        SP_UNROLL for (int e = 0; e < SP_NB; e++) acc[e] = *(const U *)(dwm + e * VL);        \
        for (int64_t t = 0; t < cnt; t++) {                                                   \
            const V d = (V){0} + dv[t];                                                       \
            const T *b = xs + qmap[lst[t]];                                                   \
            SP_UNROLL for (int e = 0; e < SP_NB; e++) acc[e] += d * *(const U *)(b + OFF(e0, e)); \
        }                                                                                     \
        SP_UNROLL for (int e = 0; e < SP_NB; e++) *(U *)(dwm + e * VL) = acc[e];              \
    }
#define SP_UNITS_BODY(T, V, U, BITS, EXP)                                                     \
    D_CONTRACT                                                                                \
    enum { VL = D_VB / sizeof(T) };                                                           \
    const geom *g = j->g;                                                                     \
    const int64_t cp = j->cp, wb = j->wb, o = j->o, kw = g->kw, ns = g->kh * kw * cp / VL;    \
    const int64_t nsp = round_up(ns, SP_NB), np = g->ho * g->wo, hw = g->h * g->w;            \
    const int64_t plane = j->hb * wb * cp, rs = wb * cp;                                      \
    const int five = kw == 5 && ns == SP_NB && cp == VL;                                      \
    const size_t pb = ((size_t)plane * sizeof(T) + 63) & ~(size_t)63;                         \
    char *tb = j->buf + (size_t)unit_thread(j->units, j->nt, u0) * j->tbytes;                 \
    T *xs = (T *)(void *)tb, *dxs = (T *)(void *)(tb + pb);                                   \
    T *dv = (T *)(void *)(tb + 2 * pb);                                                       \
    int32_t *lst = (int32_t *)(void *)(dv + np), *qmap = lst + np, *off = qmap + np;          \
    for (int64_t q = 0; q < np; q++) qmap[q] = (int32_t)((q / g->wo * wb + q % g->wo) * cp);  \
    for (int64_t e = 0; e < nsp; e++) { /* slot e: vector e % (cp / VL) of window place k */  \
        const int64_t k = e / (cp / VL), v = e % (cp / VL);                                   \
        off[e] = e < ns ? (int32_t)((k / kw * wb + k % kw) * cp + v * VL) : 0;                \
    }                                                                                         \
    const T *x = j->x, *dy = j->dy, *wt = j->wt;                                              \
    T *dx = j->dx;                                                                            \
    for (int64_t u = u0; u < u1; u++) {                                                       \
        T *dwt = j->dwt ? (T *)j->dwt + u * o * nsp * VL : NULL; /* sp_dw_len */              \
        const int64_t n1 = (u + 1) * D_CHUNK < g->n ? (u + 1) * D_CHUNK : g->n;               \
        for (int64_t n = u * D_CHUNK; n < n1; n++) {                                          \
            int all = 0; /* x_n not finite (an exponent of all ones): every d is visited */   \
            if (dwt) {                                                                        \
                const T *xn = x + n * g->c * hw;                                              \
                const BITS *xb = (const BITS *)(const void *)xn;                              \
                BITS bad = 0; /* (behind the fused pool, x is known finite) */                \
                for (int64_t i = 0; i < g->c * hw && !j->pool; i++) bad |= (BITS)((xb[i] & EXP) == EXP); \
                all = bad != 0;                                                               \
                SP_FILL(xs, xn, g, wb, cp);                                                   \
            }                                                                                 \
            for (int64_t m = 0; m < o; m++) {                                                 \
                int64_t cnt = 0; /* the positions of the nonzero d (a NaN too: not +-0) */    \
                if (j->pool) { /* the fused pool's: at each window maximum whose output is > 0 */ \
                    const int64_t p0 = (n * o + m) * j->pn;                                   \
                    const T *py = (const T *)j->py + p0, *pd = dy + p0;                       \
                    const BITS *db = (const BITS *)(const void *)pd;                          \
                    const int32_t *pa = j->parg + p0;                                         \
                    for (int64_t q = 0; q < j->pn; q++) {                                     \
                        lst[cnt] = j->qof[pa[q]], dv[cnt] = pd[q];                            \
                        cnt += (py[q] > 0) & ((BITS)(db[q] << 1) != 0);                       \
                    }                                                                         \
                } else {                                                                      \
                    const T *dm = dy + (n * o + m) * np;                                      \
                    const BITS *db = (const BITS *)(const void *)dm;                          \
                    for (int64_t q = 0; q < np; q++) {                                        \
                        lst[cnt] = (int32_t)q, dv[cnt] = dm[q];                               \
                        cnt += ((BITS)(db[q] << 1) != 0) | all;                               \
                    }                                                                         \
                }                                                                             \
                const T *wm = wt ? wt + m * ns * VL : NULL;                                   \
                if (wm && five) {                                                             \
                    SP_DX_BLOCKS(T, V, U, SP_OFF_5)                                           \
                } else if (wm && ns % SP_NB == 0) {                                           \
                    SP_DX_BLOCKS(T, V, U, SP_OFF_TABLE)                                       \
                } else if (wm) {                                                              \
                    for (int64_t t = 0; t < cnt; t++) {                                       \
                        const V d = (V){0} + dv[t];                                           \
                        T *a = dxs + qmap[lst[t]];                                            \
                        for (int64_t e = 0; e < ns; e++)                                      \
                            *(U *)(a + off[e]) += d * *(const U *)(wm + e * VL);              \
                    }                                                                         \
                }                                                                             \
                if (dwt && five) {                                                            \
                    SP_DW_BLOCKS(T, V, U, SP_OFF_5)                                           \
                } else if (dwt) {                                                             \
                    SP_DW_BLOCKS(T, V, U, SP_OFF_TABLE)                                       \
                }                                                                             \
            }                                                                                 \
            if (!dx) continue;                                                                \
            T *dxn = dx + n * g->c * hw; /* the interior of dxs, back to [C,H,W] */           \
            for (int64_t r = 0; r < g->h; r++)                                                \
                for (int64_t q = 0; q < g->w; q++) {                                          \
                    const T *d = dxs + ((r + g->p) * wb + q + g->p) * cp;                     \
                    for (int64_t c = 0; c < g->c; c++) {                                      \
                        T *e = dxn + c * hw + r * g->w + q;                                   \
                        *e = j->add ? *e + d[c] : d[c];                                       \
                    }                                                                         \
                }                                                                             \
            memset(dxs, 0, (size_t)plane * sizeof(T));                                        \
        }                                                                                     \
    }
TGI_AVX512_CLONES D_FMA_ATTR static void sp_units_f32(const sjob *j, int64_t u0, int64_t u1)
{
    SP_UNITS_BODY(float, d_vf32, d_uf32, uint32_t, 0x7f800000u)
}
TGI_AVX512_CLONES D_FMA_ATTR static void sp_units_f64(const sjob *j, int64_t u0, int64_t u1)
{
    SP_UNITS_BODY(double, d_vf64, d_uf64, uint64_t, 0x7ff0000000000000u)
}
static void sp_units(const void *arg, int64_t u0, int64_t u1)
{
    const sjob *j = arg;
    if (j->dt == TG_F32) sp_units_f32(j, u0, u1);
    else sp_units_f64(j, u0, u1);
}

/* The nonzero values (bits other than the sign's: a NaN counts) of every
 * `step`th of the n planes of np values at d */
#define NONZEROS_BODY(BITS)                                                               \
    int64_t nz = 0;                                                                       \
    for (int64_t i = 0; i < n; i += step) {                                               \
        const BITS *b = (const BITS *)d + i * np;                                         \
        for (int64_t q = 0; q < np; q++) nz += (BITS)(b[q] << 1) != 0;                    \
    }                                                                                     \
    return nz;
TGI_AVX512_CLONES static int64_t nonzeros32(const void *d, int64_t n, int64_t np, int64_t step)
{
    NONZEROS_BODY(uint32_t)
}
TGI_AVX512_CLONES static int64_t nonzeros64(const void *d, int64_t n, int64_t np, int64_t step)
{
    NONZEROS_BODY(uint64_t)
}

/* 1 when the scatter path is the cheaper: dy's nonzero values (counted in
 * every 4th image, enough to tell), each costing SP_COST dense ones of cp
 * channels, against all of dy's of C channels; and w finite (its zero
 * products are zeros). */
static int sp_chosen(const tg_tensor *w, const void *dyv, const geom *g)
{
    const size_t es = tgi_dtype_size(w->dtype);
    const int64_t vl = (int64_t)(D_VB / es), cp = round_up(g->c, vl), o = w->shape[0];
    const int64_t np = o * g->ho * g->wo, counted = (g->n + 3) / 4 * np;
    const int64_t nz = es == 4 ? nonzeros32(dyv, g->n, np, 4) : nonzeros64(dyv, g->n, np, 4);
    int fin = 1;
    TGI_FLOAT_DISPATCH(w->dtype, {
        const T *wd = w->data;
        for (int64_t i = 0; i < w->numel; i++) fin &= wd[i] - wd[i] == 0;
    });
    return fin && nz * cp * SP_COST <= counted * g->c;
}

/* The scratch bytes of conv2d_bwd_sparse (for nt threads) */
static size_t sp_bytes(const geom *g, int64_t o, size_t es, int nt)
{
    const int64_t vl = (int64_t)(D_VB / es), cp = round_up(g->c, vl);
    const int64_t units = (g->n + D_CHUNK - 1) / D_CHUNK;
    return (size_t)(o * g->kh * g->kw * cp + units * o * sp_dw_len(g, cp, vl)) * es + 3 * 64 +
           (size_t)nt * sp_thread_bytes(g, cp, g->h + 2 * g->p, g->w + 2 * g->p, es);
}

/* dx (dxv not NULL; add: into it, else assign) and dW (dwv not NULL) by the
 * scatter path, from dy [N,O,Ho,Wo] or (pooled not NULL) from the fused
 * pool's dy and its window maxima (pooled's pool, pn, py, parg, qof); 0, or
 * -1 with the error recorded */
static int conv2d_bwd_sparse(tg_ctx *ctx, const tg_tensor *x, const tg_tensor *w,
                             const void *dyv, void *dwv, void *dxv, int add, const geom *g,
                             const sjob *pooled)
{
    const size_t es = tgi_dtype_size(x->dtype);
    const int64_t o = w->shape[0], kk = g->kh * g->kw;
    sjob j = {.g = g, .dt = x->dtype, .add = add, .o = o,
              .cp = round_up(g->c, (int64_t)(D_VB / es)), .hb = g->h + 2 * g->p,
              .wb = g->w + 2 * g->p, .units = (g->n + D_CHUNK - 1) / D_CHUNK, .x = x->data,
              .dy = dyv, .dx = dxv};
    if (pooled)
        j.pool = pooled->pool, j.pn = pooled->pn, j.py = pooled->py, j.parg = pooled->parg,
        j.qof = pooled->qof;
    const int64_t wn = o * kk * j.cp, zn = o * sp_dw_len(g, j.cp, (int64_t)(D_VB / es));
    const tgi_arena_mark mark = tgi_arena_get_mark(ctx);
    int nt = tgi_threads_for(ctx, g->n * o * kk * g->ho * g->wo);
    j.nt = nt > j.units ? j.units : nt < 1 ? 1 : nt;
    j.tbytes = sp_thread_bytes(g, j.cp, j.hb, j.wb, es);
    void *wt = dxv ? scratch0(ctx, (size_t)wn * es) : NULL;
    j.dwt = dwv ? scratch0(ctx, (size_t)(j.units * zn) * es) : NULL;
    j.buf = scratch0(ctx, (size_t)j.nt * j.tbytes);
    int rc = (dxv && !wt) || (dwv && !j.dwt) || !j.buf ? -1 : 0;
    if (rc == 0)
        TGI_FLOAT_DISPATCH(x->dtype, {
            const T *wd = w->data;
            T *wp = wt;
            const int64_t c = g->c;
            if (wp) /* wt[((m kh + i) kw + j) cp + ch] = w[m][ch][i][j] */
                for (int64_t m = 0; m < o; m++)
                    for (int64_t ch = 0; ch < c; ch++)
                        for (int64_t k = 0; k < kk; k++)
                            wp[(m * kk + k) * j.cp + ch] = wd[(m * c + ch) * kk + k];
            j.wt = wp;
            if (j.nt == 1)
                sp_units(&j, 0, j.units);
            else
                tgi_par_units(ctx, j.nt, j.units, sp_units, &j);
            const T *z = j.dwt;
            T *dw = dwv;
            if (dw) /* the units' sums, added in order */
                for (int64_t m = 0; m < o; m++)
                    for (int64_t ch = 0; ch < c; ch++)
                        for (int64_t k = 0; k < kk; k++) {
                            const int64_t e = m * (zn / o) + k * j.cp + ch;
                            T s = z[e];
                            for (int64_t u = 1; u < j.units; u++) s += z[u * zn + e];
                            dw[(m * c + ch) * kk + k] += s;
                        }
        });
    tgi_arena_rewind(ctx, mark);
    return rc;
}

/* The scratch bytes of the dense passes (conv2d_dx_direct, conv2d_dw_direct),
 * at most: the larger of the two, for nt threads */
static size_t dense_bwd_bytes(const geom *g, int64_t o, size_t es, int nt)
{
    const int64_t kk = g->kh * g->kw, vl = (int64_t)(D_VB / es);
    const dlay ld = dlay_of(g->ho, g->wo, g->kh - 1 - g->p, g->kw - 1 - g->p, g, es);
    const dlay lx = dlay_of(g->h, g->w, g->p, g->p, g, es);
    const int64_t r1 = round_up(g->c, D_MR), r2 = round_up(g->c * kk, D_KR), op = round_up(o, vl);
    const int64_t units = (g->n + D_CHUNK - 1) / D_CHUNK;
    const size_t dx = (size_t)(r1 * o * kk) * es + (size_t)(o * kk) * 8 +
                      (size_t)nt * ((size_t)(dlay_size(&ld, o, g) + r1 * ld.qr) * es + 128);
    const size_t dw = (size_t)r2 * 8 + (size_t)(units * r2 * op) * es + (size_t)(g->n * o) * 8 +
                      (size_t)nt * ((size_t)(dlay_size(&lx, g->c, g) + lx.nq * op) * es + 128);
    return (dx > dw ? dx : dw) + 5 * 64;
}

/* Which of the two backward paths a step takes depends on dy's values; the
 * arena is made large enough for either (a block of the larger scratch taken
 * and given back), so that a warm step never grows it whichever runs. 1 ok,
 * 0 with the error recorded. */
static int reserve_both(tg_ctx *ctx, const geom *g, int64_t o, size_t es)
{
    int nt = tgi_threads_for(ctx, g->n * o * g->c * g->kh * g->kw * g->ho * g->wo);
    if (nt < 1) nt = 1;
    const size_t a = sp_bytes(g, o, es, nt), b = dense_bwd_bytes(g, o, es, nt);
    const tgi_arena_mark mark = tgi_arena_get_mark(ctx);
    const void *p = tg_scratch(ctx, a > b ? a : b);
    tgi_arena_rewind(ctx, mark);
    return p != NULL;
}

static int conv2d_forward(tg_op_call *c)
{
    geom g = geom_load(c);
    tg_tensor *out = c->out, *x = c->in[0], *w = c->in[1], *b = c->n_in > 2 ? c->in[2] : NULL;
    if (out->numel == 0) return 0;
    return is_direct(&g) ? conv2d_fwd_direct(c->ctx, out, x, w, b, &g)
                         : conv2d_fwd_gemm(c->ctx, out, x, w, b, &g);
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
    const int64_t o = w->shape[0], np = g.ho * g.wo;
    const int direct = is_direct(&g);
    int fresh = 0; /* the direct path writes every element of dx: a new one needs no zeroing */
    void *dwv = tgi_needs_grad(w) ? tg_grad_acc(w) : NULL;
    void *dxv = !tgi_needs_grad(x) ? NULL : direct ? tgi_grad_first(x, &fresh) : tg_grad_acc(x);
    void *dbv = b && tgi_needs_grad(b) ? tg_grad_acc(b) : NULL;
    if (!tg_ok(ctx)) return;
    if (!direct) {
        if (dwv || dxv) conv2d_bwd_gemm(ctx, x, w, dyv, dwv, dxv, &g);
    } else if ((dxv || dwv) && sp_chosen(w, dyv, &g)) {
        if (!reserve_both(ctx, &g, o, tgi_dtype_size(x->dtype)) ||
            conv2d_bwd_sparse(ctx, x, w, dyv, dwv, dxv, !fresh, &g, NULL) != 0)
            return;
    } else {
        if ((dxv || dwv) && !reserve_both(ctx, &g, o, tgi_dtype_size(x->dtype))) return;
        if (dxv && conv2d_dx_direct(ctx, w, dyv, dxv, !fresh, &g) != 0) return;
        if (dwv) { /* db in the same pass over dy */
            conv2d_dw_direct(ctx, x, w, dyv, dwv, dbv, &g, NULL);
            return;
        }
    }
    if (!dbv || !tg_ok(ctx)) return;
    const tgi_arena_mark mark = tgi_arena_get_mark(ctx);
    double *psum = tg_scratch(ctx, (size_t)(g.n * o) * sizeof *psum + 1);
    if (psum)
        TGI_FLOAT_DISPATCH(x->dtype, { /* images in order, each plane summed in double */
            const T *dy = dyv;
            for (int64_t n = 0; n < g.n; n++) dy_sums(psum + n * o, dy + n * o * np, o, np);
            DB_ADD((T *)dbv, psum, g.n, o);
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

/* What a pooling's backward reads: dy, the gradient buffer of x (fresh: just
 * made, uninitialised, for the backward to assign), the geometry, and the
 * count and sizes of the input and output planes. */
typedef struct {
    const void *dy;
    void *dx;
    int fresh;
    geom g;
    int64_t planes, hw, np;
} pool_bwd;

/* 0 when there is nothing to do (no dy, x needs no gradient, or out of
 * memory). whole: the backward writes every element of dx when fresh. */
static int pool_grads(tg_op_call *c, pool_bwd *p, int whole)
{
    p->dy = tg_grad(c->out);
    if (!p->dy || !tgi_needs_grad(c->in[0])) return 0;
    p->fresh = 0;
    p->dx = whole ? tgi_grad_first(c->in[0], &p->fresh) : tg_grad_acc(c->in[0]);
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

#ifdef POOL_VEC
typedef float pool_v16 __attribute__((vector_size(64)));
typedef float pool_u16 __attribute__((vector_size(64), aligned(4), may_alias));
typedef float pool_v8 __attribute__((vector_size(32)));
typedef float pool_u8 __attribute__((vector_size(32), aligned(4), may_alias));
typedef int32_t pool_i8 __attribute__((vector_size(32)));
typedef int32_t pool_j8 __attribute__((vector_size(32), aligned(4), may_alias));

/* MAX_POOL_2X2_BODY for f32, 8 windows at a time: the two input rows' 16
 * values deinterleaved into the windows' four corners, then MAX_TAKES and the
 * selects lane by lane. A row of 8 or more windows ends with the 8 that end
 * at its end (overlapping the 8 before, which they recompute the same); a
 * shorter row is computed 8 wide too, its lanes past the row's end reading on
 * into the next rows and writing outputs that the next rows then overwrite
 * (rows go in order). Where those 8 lanes would read past x or write past y
 * (the last rows), the windows go one at a time. */
#define POOL_EVEN(v) __builtin_shufflevector(v, v, 0, 2, 4, 6, 8, 10, 12, 14)
#define POOL_ODD(v) __builtin_shufflevector(v, v, 1, 3, 5, 7, 9, 11, 13, 15)
#define POOL_TAKE(v, m, k, kv)                                                            \
    {                                                                                     \
        const pool_i8 t_ = (v > m) | ((v != v) & (m == m));                               \
        m = (pool_v8)(((pool_i8)v & t_) | ((pool_i8)m & ~t_));                           \
        k = ((kv) & t_) | (k & ~t_);                                                      \
    }
TGI_AVX512_CLONES static void max_pool_2x2_f32(float *restrict y, int32_t *restrict arg,
                                               const float *restrict x, const geom *g)
{
    const int64_t planes = g->n * g->c, hw = g->h * g->w, np = g->ho * g->wo;
    const int64_t xn = planes * hw, yn = planes * np, wo = g->wo;
    const int32_t w = (int32_t)g->w;
    const pool_i8 lane2 = {0, 2, 4, 6, 8, 10, 12, 14};
    for (int64_t pl = 0; pl < planes; pl++)
        for (int64_t oh = 0; oh < g->ho; oh++) {
            const int64_t xo = pl * hw + 2 * oh * g->w, yo = pl * np + oh * wo;
            const float *r0 = x + xo, *r1 = r0 + g->w;
            int64_t ow = 0;
            for (; ow < wo; ow += 8) {
                if (ow + 8 > wo && wo >= 8) ow = wo - 8;
                if (yo + ow + 8 > yn || xo + g->w + 2 * ow + 16 > xn) break;
                const pool_v16 u0 = *(const pool_u16 *)(r0 + 2 * ow);
                const pool_v16 u1 = *(const pool_u16 *)(r1 + 2 * ow);
                const pool_v8 b = POOL_ODD(u0), c = POOL_EVEN(u1), d = POOL_ODD(u1);
                pool_v8 m = POOL_EVEN(u0);
                const pool_i8 k0 = lane2 + (int32_t)(2 * oh * g->w + 2 * ow);
                pool_i8 k = k0;
                POOL_TAKE(b, m, k, k0 + 1)
                POOL_TAKE(c, m, k, k0 + w)
                POOL_TAKE(d, m, k, k0 + w + 1)
                *(pool_u8 *)(y + yo + ow) = m;
                if (arg) *(pool_j8 *)(arg + yo + ow) = k;
            }
            for (; ow < wo; ow++) { /* the last rows: one window at a time */
                const int32_t k0 = (int32_t)(2 * oh * g->w + 2 * ow);
                const int32_t ks[4] = {k0, k0 + 1, k0 + w, k0 + w + 1};
                float m = x[pl * hw + k0];
                int32_t k = k0;
                for (int e = 1; e < 4; e++)
                    if (MAX_TAKES(x[pl * hw + ks[e]], m)) m = x[pl * hw + ks[e]], k = ks[e];
                y[yo + ow] = m;
                if (arg) arg[yo + ow] = k;
            }
        }
}

/* dx [planes][h][w] = dy at each 2x2 window's saved maximum, 0 at the other
 * three (the windows tile the planes: h = 2 ho, w = 2 wo), 8 windows at a
 * time as max_pool_2x2_f32 goes: a short row's lanes past its end write into
 * the next rows, which then overwrite them; the last rows one at a time. Each
 * value is dy + 0 (as the zeroed buffer plus dy would be: -0 becomes 0). */
#define POOL_ZIP(a, b) __builtin_shufflevector(a, b, 0, 8, 1, 9, 2, 10, 3, 11, 4, 12, 5, 13, 6, 14, 7, 15)
TGI_AVX512_CLONES static void max_unpool_2x2_f32(float *restrict dx, const float *restrict dy,
                                                 const int32_t *restrict arg, const geom *g)
{
    const int64_t planes = g->n * g->c, hw = g->h * g->w, np = g->ho * g->wo;
    const int64_t xn = planes * hw, yn = planes * np, wo = g->wo;
    const int32_t w = (int32_t)g->w;
    const pool_i8 lane2 = {0, 2, 4, 6, 8, 10, 12, 14};
    const pool_v8 zero = {0};
    for (int64_t pl = 0; pl < planes; pl++)
        for (int64_t oh = 0; oh < g->ho; oh++) {
            const int64_t xo = pl * hw + 2 * oh * g->w, yo = pl * np + oh * wo;
            float *r0 = dx + xo, *r1 = r0 + g->w;
            int64_t ow = 0;
            for (; ow < wo; ow += 8) {
                if (ow + 8 > wo && wo >= 8) ow = wo - 8;
                if (yo + ow + 8 > yn || xo + g->w + 2 * ow + 16 > xn) break;
                const pool_v8 d = *(const pool_u8 *)(dy + yo + ow);
                const pool_i8 at = *(const pool_j8 *)(arg + yo + ow) -
                                   (lane2 + (int32_t)(2 * oh * g->w + 2 * ow));
#define POOL_AT(e) ((pool_v8)((pool_i8)d & (at == (e))) + zero)
                *(pool_u16 *)(r0 + 2 * ow) = POOL_ZIP(POOL_AT(0), POOL_AT(1));
                *(pool_u16 *)(r1 + 2 * ow) = POOL_ZIP(POOL_AT(w), POOL_AT(w + 1));
#undef POOL_AT
            }
            for (; ow < wo; ow++) { /* the last rows: one window at a time */
                const int32_t at = arg[yo + ow] - (int32_t)(2 * oh * g->w + 2 * ow);
                const float d = dy[yo + ow];
                r0[2 * ow] = (at == 0 ? d : 0.0f) + 0.0f; /* + 0: as 0 + dy gives */
                r0[2 * ow + 1] = (at == 1 ? d : 0.0f) + 0.0f;
                r1[2 * ow] = (at == w ? d : 0.0f) + 0.0f;
                r1[2 * ow + 1] = (at == w + 1 ? d : 0.0f) + 0.0f;
            }
        }
}
#endif

/* y = each window's first maximum; arg (may be NULL) its index in the plane */
static void max_pool_fwd(tg_tensor *out, const tg_tensor *x, const geom *g, int32_t *arg)
{
    const int64_t planes = g->n * g->c, hw = g->h * g->w, np = g->ho * g->wo;
#ifdef POOL_VEC
    if (x->dtype == TG_F32 && g->kh == 2 && g->kw == 2 && g->s == 2) {
        max_pool_2x2_f32(out->data, arg, x->data, g);
        return;
    }
#endif
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

/* d max/dx = 1 at the saved first maximum, 0 elsewhere: dx[argmax] += dy.
 * Where the 2x2 windows tile the f32 planes and dx is fresh, dx is assigned
 * window by window (dy at the maximum, 0 at the other three) instead. */
static void max_pool2d_backward(tg_op_call *c)
{
    const tg_tensor *x = c->in[0];
    const geom g0 = geom_load(c);
    const int tiles = g0.kh == 2 && g0.kw == 2 && g0.s == 2 && g0.h == 2 * g0.ho &&
                      g0.w == 2 * g0.wo;
    pool_bwd p;
    if (!pool_grads(c, &p, tiles && x->dtype == TG_F32)) return;
    const int64_t planes = p.planes, hw = p.hw, np = p.np;
    const int32_t *arg = c->saved;
#ifdef POOL_VEC
    if (p.fresh) {
        max_unpool_2x2_f32(p.dx, p.dy, arg, &p.g);
        return;
    }
#endif
    if (p.fresh) memset(p.dx, 0, tgi_bytes(x));
    TGI_FLOAT_DISPATCH(x->dtype, {
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
    if (!pool_grads(c, &p, 0)) return;
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

/* ======================================================================== */
/* relu(max_pool2d(conv2d(x, w, b, 1, p), k, k)) in one node                */
/* ======================================================================== */

/* y = relu(max_pool2d(conv2d(x, w, b, 1, p), k, k)), the convolution layer of
 * a LeNet-style network (tg_conv_relu_pool_forward): x [N,C,H,W], w
 * [O,C,kh,kw], b [O] or absent, y [N,O,Ph,Pw] with Ph = (Ho - k) / k + 1, Pw
 * likewise (Ho, Wo the convolution's). The same values and gradients as the
 * three ops (and as PyTorch's max_pool2d(relu(conv2d)): relu is monotone, and
 * where a window's maximum is <= 0 both orders pass back zero):
 *   y = relu(the window's first maximum of conv2d(x, w) + b)
 *   d/dconv = dy at the window's first maximum where y > 0, else 0; then the
 *   convolution's dx, dW and db of that.
 * On the direct path the convolution's output is never stored: each image's
 * planes are pooled from the thread's tile buffer. Saves the index of each
 * window's maximum in that buffer (int32 per output, tg_scratch). Backward
 * lists the maxima with y > 0 for the scatter path, or (when that is not the
 * cheaper, w is not finite or x is not) writes them into a zeroed dy of the
 * convolution for the dense passes. Other geometries compose the three ops. */
TGI_OP(conv2d_relu_pool);

tg_tensor *tgi_conv2d_relu_pool(tg_ctx *ctx, const char *fn, tg_tensor *x, tg_tensor *w,
                                tg_tensor *b, int padding, int pool)
{
    if (!ctx || !check_conv(ctx, fn, x, w, b, 1, padding)) return NULL;
    const geom g = geom_of(x, w->shape[2], w->shape[3], 1, padding);
    if (pool < 1 || pool > g.ho || pool > g.wo) {
        char sx[64], sw[64];
        tg_set_error(ctx, "%s: pool %d must be >= 1 and fit the convolution's output %lldx%lld "
                          "(x is %s, w is %s, padding %d)", fn, pool, (long long)g.ho,
                     (long long)g.wo, TGI_SHAPE(x, sx), TGI_SHAPE(w, sw), padding);
        return NULL;
    }
    const size_t es = tgi_dtype_size(x->dtype);
    const dlay L = dlay_of(g.h, g.w, g.p, g.p, &g, es);
    if (!is_direct(&g) || pool > 15 || L.plane > INT32_MAX)
        return tg_relu(ctx, tg_max_pool2d(ctx, tg_conv2d(ctx, x, w, b, 1, padding), pool, pool));
    int64_t shape[4] = {g.n, w->shape[0], (g.ho - pool) / pool + 1, (g.wo - pool) / pool + 1};
    tg_tensor *out = tgi_tensor_new(ctx, fn, x->dtype, 4, shape, 0);
    if (!out) return NULL;
    tg_tensor *in[3] = {x, w, b};
    tgi_attr at = {.i = {0}};
    geom_save(&at, &g);
    at.i[4] = pool;
    return tgi_op_run(ctx, &op_conv2d_relu_pool, out, in, b ? 3 : 2, &at, sizeof at);
}

/* y [np][pn] = the maxima of the k x k windows (stride k) of the np planes
 * at xp, xs apart (rows pg->w apart), arg their indices in the plane (NULL:
 * not kept); f32 2x2 planes that lie end to end go in one call (only the
 * last plane's last row one window at a time) */
static void pool_planes(void *y, int32_t *arg, const void *xp, const geom *pg, int64_t np,
                        int64_t xs, tg_dtype dt)
{
    const int64_t pn = pg->ho * pg->wo;
#ifdef POOL_VEC
    if (dt == TG_F32 && pg->kh == 2) {
        if (xs == pg->h * pg->w) {
            geom all = *pg;
            all.c = np;
            max_pool_2x2_f32(y, arg, xp, &all);
            return;
        }
        for (int64_t m = 0; m < np; m++)
            max_pool_2x2_f32((float *)y + m * pn, arg ? arg + m * pn : NULL,
                             (const float *)xp + m * xs, pg);
        return;
    }
#endif
    TGI_FLOAT_DISPATCH(dt, {
        for (int64_t m = 0; m < np; m++)
            MAX_POOL_PLANE((T *)y + m * pn, arg ? arg + m * pn : NULL, (const T *)xp + m * xs, pg);
    });
}

/* Image n's output planes from its convolution sums yb [O][qr] (layout
 * j->L): + b, each window's first maximum (its index in the plane saved in
 * j->arg), relu */
static void relu_pool_epilogue(const djob *j, void *ybv, int64_t n)
{
    const geom *g = j->g;
    const int64_t k = j->pool, o = j->nout, wr = j->L.wr, qr = j->L.qr;
    /* the pooling's geometry over one plane of yb: rows wr apart */
    const geom pg = {1, 1, g->ho, wr, k, k, (g->ho - k) / k + 1, (g->wo - k) / k + 1, k, 0};
    const int64_t pn = pg.ho * pg.wo;
    TGI_FLOAT_DISPATCH(j->dt, {
        const T *bd = j->bias;
        T *yb = ybv, *y = (T *)j->dst + n * o * pn;
        if (bd)
            for (int64_t m = 0; m < o; m++)
                for (int64_t q = m * qr; q < m * qr + g->ho * wr; q++) yb[q] += bd[m];
        pool_planes(y, j->arg ? j->arg + n * o * pn : NULL, yb, &pg, o, qr, j->dt);
        for (int64_t q = 0; q < o * pn; q++) y[q] = y[q] > 0 || y[q] != y[q] ? y[q] : 0;
    });
}

static int conv2d_relu_pool_forward(tg_op_call *c)
{
    const geom g = geom_load(c);
    tg_ctx *ctx = c->ctx;
    tg_tensor *out = c->out, *x = c->in[0], *w = c->in[1], *b = c->n_in > 2 ? c->in[2] : NULL;
    int32_t *arg = NULL;
    if (tgi_recorded(c) && out->numel > 0) {
        arg = tg_scratch(ctx, (size_t)out->numel * sizeof *arg + 1);
        if (!arg) return -1; /* error recorded by tg_scratch */
    }
    c->saved = arg;
    if (out->numel == 0) return 0;
    const size_t es = tgi_dtype_size(x->dtype);
    const tgi_arena_mark mark = tgi_arena_get_mark(ctx);
    djob j = {.which = D_FWD, .dt = x->dtype, .g = &g, .L = dlay_of(g.h, g.w, g.p, g.p, &g, es),
              .src = x->data, .dst = out->data, .bias = b ? b->data : NULL, .nin = g.c,
              .nout = w->shape[0], .kk = g.c * g.kh * g.kw, .units = g.n,
              .pool = TGI_ATTR(c)->i[4], .arg = arg};
    j.ap = pack_rows(ctx, w, 0, &j.rows);
    j.off = j.ap ? offsets(ctx, j.kk, g.c, &j.L, &g) : NULL;
    const int rc = j.off ? direct_run(ctx, &j, (size_t)(j.rows * D_MR * j.L.qr) * es,
                                      g.n * j.nout * j.kk * g.ho * g.wo)
                         : -1;
    tgi_arena_rewind(ctx, mark);
    return rc;
}

/* The values of x that are not finite (an exponent of all ones) */
#define NONFINITE_BODY(BITS, EXP)                                                         \
    int64_t bad = 0;                                                                      \
    for (int64_t i = 0; i < n; i++) bad += (((const BITS *)d)[i] & EXP) == EXP;           \
    return bad;
TGI_AVX512_CLONES static int64_t nonfinite32(const void *d, int64_t n)
{
    NONFINITE_BODY(uint32_t, 0x7f800000u)
}
TGI_AVX512_CLONES static int64_t nonfinite64(const void *d, int64_t n)
{
    NONFINITE_BODY(uint64_t, 0x7ff0000000000000u)
}

/* v where keep, else +0, without a branch */
static inline double kept(double v, int keep)
{
    uint64_t u;
    memcpy(&u, &v, sizeof u);
    u &= -(uint64_t)keep;
    memcpy(&v, &u, sizeof v);
    return v;
}
/* the double of dy[q + i] where y[q + i] > 0, else 0 */
#define RP_TERM(i) kept((double)dy[q + (i)], y[q + (i)] > 0)

/* The convolution's dy reaches it at the window maxima whose output is > 0:
 * listed for the scatter path, else written into a zeroed dy [N,O,Ho,Wo]
 * for the dense passes. db: the sum of those values, image by image, in
 * double. */
static void conv2d_relu_pool_backward(tg_op_call *c)
{
    tg_ctx *ctx = c->ctx;
    tg_tensor *x = c->in[0], *w = c->in[1], *b = c->n_in > 2 ? c->in[2] : NULL;
    const void *dyv = tg_grad(c->out);
    if (!dyv || c->out->numel == 0) return;
    const geom g = geom_load(c);
    const size_t es = tgi_dtype_size(x->dtype);
    const dlay L = dlay_of(g.h, g.w, g.p, g.p, &g, es);
    const int64_t o = w->shape[0], k = TGI_ATTR(c)->i[4], np = g.ho * g.wo;
    const int64_t pn = c->out->shape[2] * c->out->shape[3];
    const int32_t *arg = c->saved;
    int fresh = 0;
    void *dwv = tgi_needs_grad(w) ? tg_grad_acc(w) : NULL;
    void *dxv = tgi_needs_grad(x) ? tgi_grad_first(x, &fresh) : NULL;
    void *dbv = b && tgi_needs_grad(b) ? tg_grad_acc(b) : NULL;
    if (!tg_ok(ctx) || !arg) return;
    const tgi_arena_mark mark = tgi_arena_get_mark(ctx);
    int32_t *qof = tg_scratch(ctx, (size_t)(g.ho * L.wr) * sizeof *qof + 1);
    double *psum = tg_scratch(ctx, (size_t)(g.n * o) * sizeof *psum + 1);
    void *dyc = tg_scratch(ctx, (size_t)(g.n * o * np) * es + 1); /* the dense passes' dy */
    if (!qof || !psum || !dyc || ((dxv || dwv) && !reserve_both(ctx, &g, o, es))) goto done;
    for (int64_t q = 0; q < g.ho * L.wr; q++) qof[q] = (int32_t)(q / L.wr * g.wo + q % L.wr);
    int64_t nact = 0; /* the values reaching the convolution */
    int bad = 0;      /* in the dense passes' terms, 0 times a value that is not finite */
    TGI_FLOAT_DISPATCH(x->dtype, {
        const T *dy = dyv, *y = c->out->data, *wd = w->data;
        for (int64_t pl = 0; pl < g.n * o; pl++) { /* in 4 interleaved sums */
            double s0 = 0.0, s1 = 0.0, s2 = 0.0, s3 = 0.0;
            int64_t q = pl * pn;
            for (; q + 4 <= (pl + 1) * pn; q += 4)
                s0 += RP_TERM(0), s1 += RP_TERM(1), s2 += RP_TERM(2), s3 += RP_TERM(3);
            for (; q < (pl + 1) * pn; q++) s0 += RP_TERM(0);
            psum[pl] = (s0 + s1) + (s2 + s3);
        }
        for (int64_t q = 0; q < c->out->numel; q++) nact += y[q] > 0;
        for (int64_t i = 0; i < w->numel; i++) bad |= !(wd[i] - wd[i] == 0);
    });
    if (dwv && !bad) bad = (es == 4 ? nonfinite32(x->data, x->numel) : nonfinite64(x->data, x->numel)) > 0;
    const int64_t cp = round_up(g.c, (int64_t)(D_VB / es));
    if ((dxv || dwv) && !bad && nact * cp * SP_COST <= g.n * o * np * g.c) {
        const sjob pooled = {.pool = k, .pn = pn, .py = c->out->data, .parg = arg, .qof = qof};
        if (conv2d_bwd_sparse(ctx, x, w, dyv, dwv, dxv, !fresh, &g, &pooled) != 0) goto done;
    } else if (dwv && !dxv) { /* K2's transposed dy made from the pool's */
        const djob pooled = {.pool = k, .pn = pn, .py = c->out->data, .parg = arg};
        if (conv2d_dw_direct(ctx, x, w, dyv, dwv, NULL, &g, &pooled) != 0) goto done;
    } else if (dxv || dwv) {
        memset(dyc, 0, (size_t)(g.n * o * np) * es);
        TGI_FLOAT_DISPATCH(x->dtype, {
            const T *dy = dyv, *y = c->out->data;
            T *d = dyc;
            for (int64_t pl = 0; pl < g.n * o; pl++) /* (the windows do not overlap) */
                for (int64_t q = pl * pn; q < (pl + 1) * pn; q++)
                    d[pl * np + qof[arg[q]]] = y[q] > 0 ? dy[q] : 0;
        });
        if (dxv && conv2d_dx_direct(ctx, w, dyc, dxv, !fresh, &g) != 0) goto done;
        if (dwv && conv2d_dw_direct(ctx, x, w, dyc, dwv, NULL, &g, NULL) != 0) goto done;
    }
    if (dbv) TGI_FLOAT_DISPATCH(x->dtype, { DB_ADD((T *)dbv, psum, g.n, o); });
done:
    tgi_arena_rewind(ctx, mark);
}
