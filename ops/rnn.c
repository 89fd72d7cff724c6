/* SPDX-License-Identifier: MIT */
/* ops/rnn.c: the recurrent cells, tg_lstm_cell and tg_gru_cell.
 *
 * Each cell is fused: two GEMMs forward (x W_ih^T and h W_hh^T, the weights read
 * transposed in place through src/kernels/gemm.h, never copied), then one pass over
 * the gate rows applying the nonlinearities with the vector kernels of
 * src/kernels/vmath.h and combining the gates. The activated gates are saved in
 * tg_scratch memory. Backward computes every gate's gradient in one pass, then GEMMs
 * for dx, dh, dW_ih, dW_hh and column sums for the biases. PyTorch's layouts and gate
 * orders (nn.LSTMCell: i,f,g,o; nn.GRUCell: r,z,n). Derivations: docs/ops.md,
 * "Recurrent cells". */
#include "ops.h" /* the engine's internals, V_TANH and V_SIGMOID, tgi_check_float_arg */

/* ---- helpers shared by the two cells ------------------------------------ */

/* The arguments of a cell: present, f32/f64, one dtype; x [N,in], h [N,H] (and
 * c [N,H] for the LSTM), w_ih [gH,in], w_hh [gH,H], biases [gH] or NULL, where g is
 * the number of gates. 1 if usable, else the error is recorded. */
static int check_cell(tg_ctx *ctx, const char *fn, int gates, const tg_tensor *x,
                      const tg_tensor *h, const tg_tensor *c, const tg_tensor *w_ih,
                      const tg_tensor *w_hh, const tg_tensor *b_ih, const tg_tensor *b_hh)
{
    const char *names[7] = {"x", "h", "c", "w_ih", "w_hh", "b_ih", "b_hh"};
    const tg_tensor *t[7] = {x, h, c, w_ih, w_hh, b_ih, b_hh};
    for (int k = 0; k < 7; k++) {
        if (k == 2 && gates == 3) continue;       /* the GRU has no c */
        if (k >= 5 && !t[k]) continue;            /* biases are optional */
        if (!tgi_check_float_arg(ctx, fn, names[k], t[k], k ? x : NULL)) return 0;
    }
    char sx[64], sh[64], sc[64], sw[64];
    if (x->ndim != 2 || h->ndim != 2 || (c && c->ndim != 2)) {
        tg_set_error(ctx, "%s: x, h%s must be 2-D ([N,in], [N,H]): x is %s, h is %s%s%s", fn,
                     c ? " and c" : "", TGI_SHAPE(x, sx), TGI_SHAPE(h, sh), c ? ", c is " : "",
                     c ? TGI_SHAPE(c, sc) : "");
        return 0;
    }
    if (h->shape[0] != x->shape[0]) {
        tg_set_error(ctx, "%s: h %s has batch %lld but x %s has batch %lld", fn,
                     TGI_SHAPE(h, sh), (long long)h->shape[0], TGI_SHAPE(x, sx),
                     (long long)x->shape[0]);
        return 0;
    }
    if (c && (c->shape[0] != h->shape[0] || c->shape[1] != h->shape[1])) {
        tg_set_error(ctx, "%s: c %s must have the shape of h %s", fn, TGI_SHAPE(c, sc),
                     TGI_SHAPE(h, sh));
        return 0;
    }
    const int64_t in = x->shape[1], H = h->shape[1], G = gates * H;
    const char *gn = gates == 4 ? "4H" : "3H";
    if (w_ih->ndim != 2 || w_ih->shape[0] != G || w_ih->shape[1] != in) {
        tg_set_error(ctx, "%s: w_ih must be [%s,in] = [%lld,%lld] for x %s and h %s, got %s",
                     fn, gn, (long long)G, (long long)in, TGI_SHAPE(x, sx), TGI_SHAPE(h, sh),
                     TGI_SHAPE(w_ih, sw));
        return 0;
    }
    if (w_hh->ndim != 2 || w_hh->shape[0] != G || w_hh->shape[1] != H) {
        tg_set_error(ctx, "%s: w_hh must be [%s,H] = [%lld,%lld] for h %s, got %s", fn, gn,
                     (long long)G, (long long)H, TGI_SHAPE(h, sh), TGI_SHAPE(w_hh, sw));
        return 0;
    }
    for (int k = 5; k < 7; k++)
        if (t[k] && (t[k]->ndim != 1 || t[k]->shape[0] != G)) {
            tg_set_error(ctx, "%s: %s must be [%s] = [%lld] for h %s, got %s", fn, names[k], gn,
                         (long long)G, TGI_SHAPE(h, sh), TGI_SHAPE(t[k], sw));
            return 0;
        }
    return 1;
}

/* gates[N,G] = x w_ih^T + h w_hh^T (w_hh NULL: only the first product) */
static int gate_products(tg_ctx *ctx, const char *fn, const tg_tensor *x, const tg_tensor *h,
                         const tg_tensor *w_ih, const tg_tensor *w_hh, void *gates)
{
    const int64_t N = x->shape[0], in = x->shape[1], G = w_ih->shape[0], H = h->shape[1];
    if (tgi_op_gemm(ctx, fn, x->dtype, 0, 1, N, G, in, x->data, in, w_ih->data, in, 0, gates,
                    G) != 0)
        return -1;
    if (w_hh && tgi_op_gemm(ctx, fn, x->dtype, 0, 1, N, G, H, h->data, H, w_hh->data, H, 1, gates,
                            G) != 0)
        return -1;
    return 0;
}

/* The weight gradients and the input gradient of one product y = a w^T with
 * a [N,k], w [G,k], given dY [N,G]: da += dY w;  dw += dY^T a. */
static int product_backward(tg_ctx *ctx, const char *fn, tg_tensor *a, tg_tensor *w,
                            const void *dy)
{
    const int64_t N = a->shape[0], k = a->shape[1], G = w->shape[0];
    if (tgi_needs_grad(a)) {
        void *da = tg_grad_acc(a);
        if (!da || tgi_op_gemm(ctx, fn, a->dtype, 0, 0, N, k, G, dy, G, w->data, k, 1, da, k) != 0)
            return -1;
    }
    if (tgi_needs_grad(w)) {
        void *dw = tg_grad_acc(w);
        if (!dw || tgi_op_gemm(ctx, fn, a->dtype, 1, 0, G, k, N, dy, G, a->data, k, 1, dw, k) != 0)
            return -1;
    }
    return 0;
}

/* db += colsum(dY) for a bias that needs it */
static void bias_backward(tg_tensor *b, int64_t N, const void *dy)
{
    if (!b || !tgi_needs_grad(b)) return;
    void *db = tg_grad_acc(b);
    if (db) tgi_colsum_acc(b->dtype, N, b->shape[0], dy, db);
}

/* The end of a cell's backward, from the gradients dp of x w_ih^T + b_ih and
 * dq of h w_hh^T + b_hh ([N,G] each; the LSTM's are one buffer): the
 * products' gradients, then the biases'. */
static void cell_products_backward(tg_ctx *ctx, const char *fn, tg_tensor *x, tg_tensor *h,
                                   tg_tensor *w_ih, tg_tensor *w_hh, tg_tensor *b_ih,
                                   tg_tensor *b_hh, const void *dp, const void *dq)
{
    if (product_backward(ctx, fn, x, w_ih, dp) != 0) return;
    if (product_backward(ctx, fn, h, w_hh, dq) != 0) return;
    bias_backward(b_ih, x->shape[0], dp);
    bias_backward(b_hh, x->shape[0], dq);
}

/* ======================================================================== */
/* tg_lstm_cell                                                              */
/* ======================================================================== */

/* nn.LSTMCell. x [N,in], h, c [N,H], w_ih [4H,in], w_hh [4H,H], b_ih, b_hh [4H] or NULL.
 *   a = x w_ih^T + b_ih + h w_hh^T + b_hh            [N,4H], blocks i, f, g, o
 *   i = s(a_i), f = s(a_f), g = tanh(a_g), o = s(a_o)   (s: sigmoid)
 *   c' = f c + i g,  h' = o tanh(c')
 * Two outputs, two nodes sharing one saved state:
 *   node "lstm_cell"   out c', inputs x, h, c, w_ih, w_hh[, b_ih, b_hh]: does all the work;
 *   node "lstm_cell_h" out h', input c': computes nothing; its backward only tells the
 *     cell node that dh' is there (and makes sure the cell node runs).
 * Backward of the cell, with dh' (0 if no gradient reached h') and dc' (its own output's):
 *   dC  = dc' + dh' o (1 - tanh(c')^2)            (the total gradient of c')
 *   da_i = dC g i (1 - i);  da_f = dC c f (1 - f);  da_g = dC i (1 - g^2);
 *   da_o = dh' tanh(c') o (1 - o);  dc += dC f
 *   dx += da w_ih;  dh += da w_hh;  dw_ih += da^T x;  dw_hh += da^T h;  db_* += colsum(da)
 * Saves (tg_scratch): the activated gates [N,4H] and tanh(c') [N,H], and h'.
 * Numerics: the vector sigmoid never overflows (exp of -|a| only); tanh saturates. */
typedef struct {
    void *gates;      /* [N,4H]: i, f, g, o after their nonlinearities */
    void *tc;         /* [N,H]: tanh(c') */
    tg_tensor *h_out; /* h' */
    int dh_ready;     /* set by the h' node's backward, cleared by the cell's */
} lstm_saved;

TGI_OP(lstm_cell);
TGI_OP(lstm_cell_h);

/* The shared state of a cell's two nodes, whose address is their attribute
 * i[2]: the public function makes it, with h', before either node runs. */
static lstm_saved *lstm_state(const tg_op_call *call)
{
    return (lstm_saved *)(intptr_t)TGI_ATTR(call)->i[2];
}

tg_tensor *tg_lstm_cell(tg_ctx *ctx, tg_tensor *x, tg_tensor *h, tg_tensor *c, tg_tensor *w_ih,
                        tg_tensor *w_hh, tg_tensor *b_ih, tg_tensor *b_hh, tg_tensor **c_out)
{
    static const char fn[] = "tg_lstm_cell";
    if (!ctx) return NULL;
    if (c_out) *c_out = NULL;
    if (!check_cell(ctx, fn, 4, x, h, c, w_ih, w_hh, b_ih, b_hh)) return NULL;
    if (!c_out) {
        char sh[64];
        tg_set_error(ctx, "%s: c_out is NULL (the new cell state c' [%lld,%lld] is returned "
                          "through it; h is %s)", fn, (long long)h->shape[0],
                     (long long)h->shape[1], TGI_SHAPE(h, sh));
        return NULL;
    }
    const int64_t N = x->shape[0], H = h->shape[1];
    const size_t es = tgi_dtype_size(x->dtype);
    lstm_saved *s = tg_scratch(ctx, sizeof *s);
    tg_tensor *c_new = s ? tgi_tensor_new(ctx, fn, x->dtype, 2, h->shape, 0) : NULL;
    tg_tensor *h_new = c_new ? tgi_tensor_new(ctx, fn, x->dtype, 2, h->shape, 0) : NULL;
    void *gates = h_new ? tg_scratch(ctx, (size_t)(N * 4 * H) * es) : NULL;
    void *tc = gates ? tg_scratch(ctx, (size_t)(N * H) * es) : NULL;
    if (!tc) return NULL; /* out of memory, recorded */
    *s = (lstm_saved){gates, tc, h_new, 0};
    tg_tensor *in[7] = {x, h, c, w_ih, w_hh, NULL, NULL};
    int n_in = 5;
    if (b_ih) in[n_in++] = b_ih;
    if (b_hh) in[n_in++] = b_hh;
    const int64_t tape0 = ctx->tape_len;
    /* which biases are in[5], in[6]; the shared state */
    const tgi_attr at = {.i = {b_ih != NULL, b_hh != NULL, (int64_t)(intptr_t)s}};
    if (!tgi_op_run(ctx, &op_lstm_cell, c_new, in, n_in, &at, sizeof at)) return NULL;
    /* recorded when the cell node was (c' needs a gradient); computes nothing */
    if (!tgi_op_run(ctx, &op_lstm_cell_h, h_new, &c_new, 1, &at, sizeof at)) {
        ctx->tape_len = tape0; /* the tape could not grow: take the cell node back */
        return NULL;
    }
    *c_out = c_new;
    return h_new;
}

/* The biases of a recorded cell node: in[5], in[6] as attr i[0], i[1] say. */
static void node_biases(tg_op_call *call, int first, tg_tensor **b_ih, tg_tensor **b_hh)
{
    const tgi_attr *at = TGI_ATTR(call);
    int k = first;
    *b_ih = at->i[0] ? call->in[k++] : NULL;
    *b_hh = at->i[1] ? call->in[k] : NULL;
}

/* Add the two biases (either may be NULL) to each row of a [N,G]. */
static void add_biases(tg_dtype dt, int64_t N, int64_t G, void *av, const tg_tensor *b_ih,
                       const tg_tensor *b_hh)
{
    if (!b_ih && !b_hh) return;
    TGI_FLOAT_DISPATCH(dt, {
        T *a = av;
        const T *bi = b_ih ? b_ih->data : NULL, *bh = b_hh ? b_hh->data : NULL;
        for (int64_t r = 0; r < N; r++) {
            T *restrict ar = a + r * G;
            if (bi)
                for (int64_t j = 0; j < G; j++) ar[j] += bi[j];
            if (bh)
                for (int64_t j = 0; j < G; j++) ar[j] += bh[j];
        }
    });
}

/* a = x w_ih^T + h w_hh^T + biases; per row: the nonlinearities in place, then
 * c' = f c + i g, tanh(c'), h' = o tanh(c'). */
static int lstm_fwd(tg_ctx *ctx, tg_tensor *c_new, tg_tensor *h_new, const tg_tensor *x,
                    const tg_tensor *h, const tg_tensor *c, const tg_tensor *w_ih,
                    const tg_tensor *w_hh, const tg_tensor *b_ih, const tg_tensor *b_hh,
                    lstm_saved *s)
{
    const int64_t N = x->shape[0], H = h->shape[1], G = 4 * H;
    if (gate_products(ctx, "tg_lstm_cell", x, h, w_ih, w_hh, s->gates) != 0) return -1;
    add_biases(x->dtype, N, G, s->gates, b_ih, b_hh);
    TGI_FLOAT_DISPATCH(x->dtype, {
        T *a = s->gates, *tc = s->tc;
        const T *cp = c->data;
        T *cn = c_new->data, *hn = h_new->data;
        for (int64_t r = 0; r < N; r++) {
            T *ar = a + r * G;
            V_SIGMOID(ar, ar, 2 * H); /* i, f */
            V_TANH(ar + 2 * H, ar + 2 * H, H);
            V_SIGMOID(ar + 3 * H, ar + 3 * H, H);
            const T *restrict ig = ar, *restrict fg = ar + H, *restrict gg = ar + 2 * H;
            const T *restrict cr = cp + r * H;
            T *restrict cnr = cn + r * H;
            for (int64_t j = 0; j < H; j++) cnr[j] = fg[j] * cr[j] + ig[j] * gg[j];
            V_TANH(tc + r * H, cnr, H);
            const T *restrict og = ar + 3 * H, *restrict tcr = tc + r * H;
            T *restrict hnr = hn + r * H;
            for (int64_t j = 0; j < H; j++) hnr[j] = og[j] * tcr[j];
        }
    });
    return 0;
}

static int lstm_cell_forward(tg_op_call *call)
{
    tg_tensor *b_ih, *b_hh;
    node_biases(call, 5, &b_ih, &b_hh);
    lstm_saved *s = lstm_state(call);
    call->saved = s;
    return lstm_fwd(call->ctx, call->out, s->h_out, call->in[0], call->in[1], call->in[2],
                    call->in[3], call->in[4], b_ih, b_hh, s);
}

/* h' was computed with c' by the cell node */
static int lstm_cell_h_forward(tg_op_call *call)
{
    call->saved = lstm_state(call);
    return 0;
}

/* h' = o tanh(c'): the cell node does the arithmetic; here only: dh' is there */
static void lstm_cell_h_backward(tg_op_call *call)
{
    lstm_saved *s = call->saved;
    if (!tg_grad(call->out)) return;
    s->dh_ready = 1;
    (void)tg_grad_acc(call->in[0]); /* so that the cell node runs even if c' had no gradient */
}

/* dC = dc' + dh' o (1 - tc^2); da_i = dC g i(1-i); da_f = dC c f(1-f);
 * da_g = dC i (1-g^2); da_o = dh' tc o(1-o); dc += dC f; then the products' GEMMs */
static void lstm_cell_backward(tg_op_call *call)
{
    tg_ctx *ctx = call->ctx;
    lstm_saved *s = call->saved;
    tg_tensor *x = call->in[0], *h = call->in[1], *c = call->in[2], *w_ih = call->in[3],
              *w_hh = call->in[4], *b_ih, *b_hh;
    node_biases(call, 5, &b_ih, &b_hh);
    const void *dcv = tg_grad(call->out);
    const void *dhv = s->dh_ready ? tg_grad(s->h_out) : NULL;
    s->dh_ready = 0;
    if (!dcv) return;
    const int64_t N = x->shape[0], H = h->shape[1], G = 4 * H;
    void *dav = tg_scratch(ctx, (size_t)(N * G) * tgi_dtype_size(x->dtype));
    if (!dav) return;
    void *dcp = tgi_needs_grad(c) ? tg_grad_acc(c) : NULL;
    if (tgi_needs_grad(c) && !dcp) return;
    TGI_FLOAT_DISPATCH(x->dtype, {
        const T *a = s->gates, *tc = s->tc, *dcn = dcv, *dhn = dhv, *cv = c->data;
        T *da = dav, *dcprev = dcp;
        for (int64_t r = 0; r < N; r++) {
            const T *restrict ig = a + r * G, *restrict fg = ig + H, *restrict gg = ig + 2 * H,
                              *restrict og = ig + 3 * H, *restrict tcr = tc + r * H,
                              *restrict dcr = dcn + r * H, *restrict cr = cv + r * H;
            T *restrict di = da + r * G, *restrict df = di + H, *restrict dg = di + 2 * H,
                        *restrict dout = di + 3 * H;
            const T *restrict dhr = dhn ? dhn + r * H : NULL;
            T *restrict dcpr = dcprev ? dcprev + r * H : NULL;
            for (int64_t j = 0; j < H; j++) {
                const T dh = dhr ? dhr[j] : (T)0;
                const T t = tcr[j], i = ig[j], f = fg[j], g = gg[j], o = og[j];
                const T dC = dcr[j] + dh * o * ((T)1 - t * t);
                di[j] = dC * g * (i * ((T)1 - i));
                df[j] = dC * cr[j] * (f * ((T)1 - f));
                dg[j] = dC * i * ((T)1 - g * g);
                dout[j] = dh * t * (o * ((T)1 - o));
                if (dcpr) dcpr[j] += dC * f;
            }
        }
    });
    cell_products_backward(ctx, "tg_lstm_cell", x, h, w_ih, w_hh, b_ih, b_hh, dav, dav);
}

/* ======================================================================== */
/* tg_gru_cell                                                               */
/* ======================================================================== */

/* nn.GRUCell. x [N,in], h [N,H], w_ih [3H,in], w_hh [3H,H], b_ih, b_hh [3H] or NULL.
 *   p = x w_ih^T + b_ih,  q = h w_hh^T + b_hh        [N,3H], blocks r, z, n
 *   r = s(p_r + q_r),  z = s(p_z + q_z),  n = tanh(p_n + r q_n),  h' = (1 - z) n + z h
 * Backward, with dh' the output's gradient:
 *   dn = dh' (1 - z) (1 - n^2)       (the gradient of n's pre-activation)
 *   dz = dh' (h - n) z (1 - z);  dr = dn q_n r (1 - r)
 *   dp = [dr, dz, dn],  dq = [dr, dz, dn r],  dh += dh' z + dq w_hh
 *   dx += dp w_ih;  dw_ih += dp^T x;  dw_hh += dq^T h;  db_ih += colsum(dp);  db_hh += colsum(dq)
 * Saves (tg_scratch): r, z, n and q_n, [N,4H] in one buffer.
 * Numerics: as the LSTM cell's. */
static int gru_fwd(tg_ctx *ctx, tg_tensor *out, const tg_tensor *x, const tg_tensor *h,
                   const tg_tensor *w_ih, const tg_tensor *w_hh, const tg_tensor *b_ih,
                   const tg_tensor *b_hh, void *saved);
TGI_OP(gru_cell);

tg_tensor *tg_gru_cell(tg_ctx *ctx, tg_tensor *x, tg_tensor *h, tg_tensor *w_ih,
                       tg_tensor *w_hh, tg_tensor *b_ih, tg_tensor *b_hh)
{
    static const char fn[] = "tg_gru_cell";
    if (!ctx) return NULL;
    if (!check_cell(ctx, fn, 3, x, h, NULL, w_ih, w_hh, b_ih, b_hh)) return NULL;
    tg_tensor *out = tgi_tensor_new(ctx, fn, x->dtype, 2, h->shape, 0);
    if (!out) return NULL;
    tg_tensor *in[6] = {x, h, w_ih, w_hh, b_ih, b_hh};
    int n_in = 4;
    if (b_ih) in[n_in++] = b_ih;
    if (b_hh) in[n_in++] = b_hh;
    const tgi_attr at = {.i = {b_ih != NULL, b_hh != NULL}}; /* which biases are in[4], in[5] */
    return tgi_op_run(ctx, &op_gru_cell, out, in, n_in, &at, sizeof at);
}

/* p and q by two GEMMs (q in a scratch buffer), then per row the gates and h' */
static int gru_fwd(tg_ctx *ctx, tg_tensor *out, const tg_tensor *x, const tg_tensor *h,
                   const tg_tensor *w_ih, const tg_tensor *w_hh, const tg_tensor *b_ih,
                   const tg_tensor *b_hh, void *saved)
{
    static const char fn[] = "tg_gru_cell";
    const int64_t N = x->shape[0], H = h->shape[1], G = 3 * H;
    const size_t es = tgi_dtype_size(x->dtype);
    void *p = tg_scratch(ctx, (size_t)(N * G) * es);
    void *q = p ? tg_scratch(ctx, (size_t)(N * G) * es) : NULL;
    if (!q) return -1;
    if (gate_products(ctx, fn, x, h, w_ih, NULL, p) != 0) return -1;
    if (gate_products(ctx, fn, h, h, w_hh, NULL, q) != 0) return -1;
    add_biases(x->dtype, N, G, p, b_ih, NULL);
    add_biases(x->dtype, N, G, q, b_hh, NULL);
    TGI_FLOAT_DISPATCH(x->dtype, {
        const T *hp = h->data;
        T *pa = p, *qa = q, *sv = saved, *y = out->data;
        for (int64_t r = 0; r < N; r++) {
            const T *restrict pr = pa + r * G, *restrict qr = qa + r * G;
            T *s = sv + r * 4 * H;
            for (int64_t j = 0; j < 2 * H; j++) s[j] = pr[j] + qr[j];
            V_SIGMOID(s, s, 2 * H); /* r, z */
            T *rg = s, *ng = s + 2 * H, *qn = s + 3 * H;
            for (int64_t j = 0; j < H; j++) {
                qn[j] = qr[2 * H + j];
                ng[j] = pr[2 * H + j] + rg[j] * qn[j];
            }
            V_TANH(ng, ng, H);
            const T *zg = s + H, *restrict hr = hp + r * H;
            T *restrict yr = y + r * H;
            for (int64_t j = 0; j < H; j++) yr[j] = ((T)1 - zg[j]) * ng[j] + zg[j] * hr[j];
        }
    });
    return 0;
}

/* the gates r, z, n and q_n go to tg_scratch (call->saved), [N,4H] */
static int gru_cell_forward(tg_op_call *call)
{
    tg_tensor *b_ih, *b_hh;
    node_biases(call, 4, &b_ih, &b_hh);
    const tg_tensor *x = call->in[0], *h = call->in[1];
    call->saved = tg_scratch(call->ctx, (size_t)(x->shape[0] * 4 * h->shape[1]) *
                                            tgi_dtype_size(x->dtype));
    if (!call->saved) return -1; /* error recorded by tg_scratch */
    return gru_fwd(call->ctx, call->out, x, h, call->in[2], call->in[3], b_ih, b_hh,
                   call->saved);
}

/* dn = dh'(1-z)(1-n^2); dz = dh'(h-n) z(1-z); dr = dn q_n r(1-r);
 * dp = [dr,dz,dn], dq = [dr,dz,dn r]; dh += dh' z; then the products' GEMMs */
static void gru_cell_backward(tg_op_call *call)
{
    tg_ctx *ctx = call->ctx;
    tg_tensor *x = call->in[0], *h = call->in[1], *w_ih = call->in[2], *w_hh = call->in[3],
              *b_ih, *b_hh;
    node_biases(call, 4, &b_ih, &b_hh);
    const void *dyv = tg_grad(call->out);
    if (!dyv) return;
    const int64_t N = x->shape[0], H = h->shape[1], G = 3 * H;
    const size_t es = tgi_dtype_size(x->dtype);
    void *dpv = tg_scratch(ctx, (size_t)(N * G) * es);
    void *dqv = dpv ? tg_scratch(ctx, (size_t)(N * G) * es) : NULL;
    if (!dqv) return;
    void *dhp = tgi_needs_grad(h) ? tg_grad_acc(h) : NULL;
    if (tgi_needs_grad(h) && !dhp) return;
    TGI_FLOAT_DISPATCH(x->dtype, {
        const T *sv = call->saved, *dy = dyv, *hv = h->data;
        T *dp = dpv, *dq = dqv, *dh = dhp;
        for (int64_t r = 0; r < N; r++) {
            const T *restrict rg = sv + r * 4 * H, *restrict zg = rg + H,
                              *restrict ng = rg + 2 * H, *restrict qn = rg + 3 * H,
                              *restrict dyr = dy + r * H, *restrict hr = hv + r * H;
            T *restrict dpr = dp + r * G, *restrict dqr = dq + r * G;
            T *restrict dhr = dh ? dh + r * H : NULL;
            for (int64_t j = 0; j < H; j++) {
                const T g = dyr[j], rr = rg[j], z = zg[j], n = ng[j];
                const T dn = g * ((T)1 - z) * ((T)1 - n * n);
                const T dz = g * (hr[j] - n) * (z * ((T)1 - z));
                const T dr = dn * qn[j] * (rr * ((T)1 - rr));
                dpr[j] = dr;
                dpr[H + j] = dz;
                dpr[2 * H + j] = dn;
                dqr[j] = dr;
                dqr[H + j] = dz;
                dqr[2 * H + j] = dn * rr;
                if (dhr) dhr[j] += g * z;
            }
        }
    });
    cell_products_backward(ctx, "tg_gru_cell", x, h, w_ih, w_hh, b_ih, b_hh, dpv, dqv);
}
