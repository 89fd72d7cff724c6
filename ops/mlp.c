/* SPDX-License-Identifier: MIT */
/* ops/mlp.c: a whole small MLP as one node (tgi_mlp_tiny, taken by tg_mlp_forward).
 *
 * A network whose every product is tiny (an XOR 2-4-1, a controller's 8-16-4)
 * spends its step on bookkeeping, not arithmetic: a node, an output tensor, the
 * checks and a gradient buffer per layer. Here the layers of one tg_mlp run in
 * one forward and one backward, with the hidden activations in the node's saved
 * memory. The arithmetic is tg_linear's, step for step (the GEMM's tiny path in
 * the same order, the bias added then the activation's vector kernel, the same
 * derivative expressions), so the results are the bits the layer-by-layer path
 * gives; the hidden layers are simply not tensors of their own. */
#include "ops.h"
#include "gemm_tiny.h"

/* x [m,k0] -> h_1 = act(x W_1^T + b_1) -> ... -> y = out_act(h_{L-1} W_L^T + b_L) [m,n_L],
 * inputs {x, W_1, b_1, ..., W_L, b_L}, W_l [n_l,k_l] (k_l = n_{l-1}), b_l [n_l];
 * f32, every m n_l k_l <= TINY_GEMM_WORK, L <= (TG_MAX_INPUTS - 1) / 2.
 * Backward, from dy_L = dy down, with d_l = dy_l * act'(h_l) (h_L = y, and out_act'
 * for it):
 *   dW_l += d_l^T h_{l-1},  db_l += column sums of d_l,  dy_{l-1} = d_l W_l
 * (h_0 = x; dx += d_1 W_1 when x needs it). act' is written from h_l as in
 * tg_linear (tanh 1 - h^2, sigmoid h (1 - h), relu [h > 0], leaky relu
 * h > 0 ? 1 : slope). Saves: the hidden activations h_1..h_{L-1}, and, on the
 * tape, room for two of them (or of y, with an out_act) for backward's dy_l and d_l. */
TGI_OP(mlp);

#define MLP_MAX_LAYERS ((TG_MAX_INPUTS - 1) / 2)

/* t can be read by this call: an f32 parameter or temporary of this ctx and step */
static inline int mlp_usable(const tg_ctx *ctx, const tg_tensor *t)
{
    return t && t->ctx == ctx && (t->gen == 0 || t->gen == ctx->gen) && t->dtype == TG_F32;
}

/* every side at most TINY_GEMM_WORK (no product below can wrap), and the product tiny */
static inline int mlp_tiny(int64_t m, int64_t n, int64_t k)
{
    return m <= TINY_GEMM_WORK && n <= TINY_GEMM_WORK && k <= TINY_GEMM_WORK &&
           tgi_gemm_tiny_fits(m, n, k);
}

/* the attributes: act, out_act, L, the floats of h_1..h_{L-1}, and the most floats of
 * one d_l backward needs a buffer for (the widest h_l, or y with an out_act) */
enum { MLP_ACT, MLP_OUT_ACT, MLP_LAYERS, MLP_HIDDEN, MLP_WIDEST };

tg_tensor *tgi_mlp_tiny(tg_ctx *ctx, const tg_mlp *net, tg_tensor *x)
{
    const int L = net->n_layers;
    if (ctx->has_error || L < 1 || L > MLP_MAX_LAYERS || !mlp_usable(ctx, x) || x->ndim != 2 ||
        (unsigned)net->act >= TG_ACT_COUNT || (unsigned)net->out_act >= TG_ACT_COUNT ||
        !tgi_gemm_tiny_ok())
        return NULL;
    const int64_t m = x->shape[0];
    int64_t k = x->shape[1], hidden = 0, widest = 0;
    tg_tensor *in[TG_MAX_INPUTS];
    in[0] = x;
    for (int l = 0; l < L; l++) {
        tg_tensor *w = net->layer[l].weight, *b = net->layer[l].bias;
        if (!mlp_usable(ctx, w) || !mlp_usable(ctx, b) || w->ndim != 2 || b->ndim != 1 ||
            w->shape[1] != k || b->shape[0] != w->shape[0] || !mlp_tiny(m, w->shape[0], k))
            return NULL;
        k = w->shape[0];
        in[1 + 2 * l] = w;
        in[2 + 2 * l] = b;
        if (l < L - 1) hidden += m * k;
        if (l < L - 1 || net->out_act != TG_ACT_NONE) widest = m * k > widest ? m * k : widest;
    }
    tgi_api(ctx, "tg_mlp_forward");
    const int64_t shape[2] = {m, k};
    tg_tensor *out = tgi_tensor_make(ctx, TG_F32, 2, shape, m * k);
    if (!out) return NULL;
    tgi_attr at;
    at.i[MLP_ACT] = (int64_t)net->act;
    at.i[MLP_OUT_ACT] = (int64_t)net->out_act;
    at.i[MLP_LAYERS] = L;
    at.i[MLP_HIDDEN] = hidden;
    at.i[MLP_WIDEST] = widest;
    for (int i = MLP_WIDEST + 1; i < TGI_ATTR_WORDS; i++) at.i[i] = 0;
    return tgi_op_run(ctx, &op_mlp, out, in, 1 + 2 * L, &at, sizeof at);
}

/* y [m,n] = act(y + b): the bias row added to every row, then the activation */
static inline __attribute__((always_inline)) void
mlp_bias_act(float *restrict y, const float *restrict b, int64_t m, int64_t n, tg_act act)
{
    for (int64_t i = 0; i < m; i++)
        for (int64_t j = 0; j < n; j++) y[i * n + j] += b[j];
    const int64_t len = m * n;
    switch (act) {
    case TG_ACT_TANH: tgi_vtanh_f32(y, y, len); break;
    case TG_ACT_SIGMOID: tgi_vsigmoid_f32(y, y, len); break;
    case TG_ACT_RELU: tgi_vrelu_f32(y, y, len); break;
    case TG_ACT_LEAKY_RELU:
        for (int64_t i = 0; i < len; i++) y[i] = y[i] > 0 ? y[i] : (float)TGI_LEAKY_SLOPE * y[i];
        break;
    default: break;
    }
}

static int mlp_forward(tg_op_call *c)
{
    const tgi_attr *at = TGI_ATTR(c);
    const tg_act act = (tg_act)at->i[MLP_ACT], out_act = (tg_act)at->i[MLP_OUT_ACT];
    const int L = (int)at->i[MLP_LAYERS];
    const int64_t m = c->in[0]->shape[0];
    const int64_t room = at->i[MLP_HIDDEN] + (tgi_recorded(c) ? 2 * at->i[MLP_WIDEST] : 0);
    float *h = room ? tg_scratch(c->ctx, (size_t)room * sizeof(float)) : NULL;
    if (room && !h) return -1; /* out of memory, recorded by tg_scratch */
    c->saved = h;
    const float *a = c->in[0]->data;
    for (int l = 0; l < L; l++) {
        const tg_tensor *w = c->in[1 + 2 * l];
        const int64_t n = w->shape[0], k = w->shape[1];
        const int last = l == L - 1;
        float *y = last ? c->out->data : h;
        tiny_gemm_float(0, 1, m, n, k, a, k, w->data, k, 0, y, n);
        mlp_bias_act(y, c->in[2 + 2 * l]->data, m, n, last ? out_act : act);
        a = y;
        if (!last) h += m * n;
    }
    return 0;
}

/* d[i] = g[i] act'(h[i]) written from the activation's output h (d may be g) */
static inline __attribute__((always_inline)) void
mlp_act_grad(float *d, const float *h, const float *g, int64_t len, tg_act act)
{
    const float slope = (float)TGI_LEAKY_SLOPE;
    switch (act) {
    case TG_ACT_TANH:
        for (int64_t i = 0; i < len; i++) d[i] = g[i] * (1.0f - h[i] * h[i]);
        break;
    case TG_ACT_SIGMOID:
        for (int64_t i = 0; i < len; i++) d[i] = g[i] * (h[i] * (1.0f - h[i]));
        break;
    case TG_ACT_RELU:
        for (int64_t i = 0; i < len; i++) d[i] = h[i] > 0.0f ? g[i] : 0.0f;
        break;
    case TG_ACT_LEAKY_RELU:
        for (int64_t i = 0; i < len; i++) d[i] = h[i] > 0.0f ? g[i] : slope * g[i];
        break;
    default: break; /* TG_ACT_NONE: d is g */
    }
}

/* from the last layer down: dW_l, db_l, then dy_{l-1} = d_l W_l while a layer
 * below (or x) needs a gradient */
static void mlp_backward(tg_op_call *c)
{
    const tgi_attr *at = TGI_ATTR(c);
    const tg_act act = (tg_act)at->i[MLP_ACT], out_act = (tg_act)at->i[MLP_OUT_ACT];
    const int L = (int)at->i[MLP_LAYERS];
    tg_tensor *x = c->in[0];
    const int64_t m = x->shape[0];
    const float *d = tg_grad(c->out); /* d_L = dy */
    if (!d) return;
    int lowest = 0; /* the first input that needs a gradient: nothing below it does */
    while (lowest < 1 + 2 * L && !tgi_needs_grad(c->in[lowest])) lowest++;
    float *hl = NULL, *buf[2] = {NULL, NULL}; /* (nothing saved: none needed) */
    if (c->saved) {
        hl = (float *)c->saved + at->i[MLP_HIDDEN]; /* the end of layer l's input h_{l-1} */
        buf[0] = hl;                                /* then d_l, alternately */
        buf[1] = hl + at->i[MLP_WIDEST];
    }
    if (out_act != TG_ACT_NONE) { /* d_L = dy out_act'(y), beside dy (which stays as it is) */
        float *dl = buf[L & 1];
        mlp_act_grad(dl, c->out->data, d, c->out->numel, out_act);
        d = dl;
    }
    for (int l = L - 1; l >= 0; l--) {
        tg_tensor *w = c->in[1 + 2 * l], *b = c->in[2 + 2 * l];
        const int64_t n = w->shape[0], k = w->shape[1];
        const float *a = l ? hl - m * k : x->data; /* this layer's input h_{l-1} */
        int fresh;
        if (tgi_needs_grad(w)) { /* [n,k] (+)= ([m,n] read transposed) [m,k] */
            float *dw = tgi_grad_first(w, &fresh);
            if (!dw) return;
            tiny_gemm_float(1, 0, n, k, m, d, n, a, k, !fresh, dw, k);
        }
        if (tgi_needs_grad(b)) {
            float *db = tg_grad_acc(b);
            if (!db) return;
            tgi_colsum_acc(TG_F32, m, n, d, db);
        }
        if (lowest > 2 * l) return; /* nothing under this layer needs a gradient */
        if (l == 0) { /* [m,k] (+)= [m,n] W */
            float *dx = tgi_grad_first(x, &fresh);
            if (dx) tiny_gemm_float(0, 0, m, k, n, d, n, w->data, k, !fresh, dx, k);
            return;
        }
        float *dh = buf[l & 1];
        tiny_gemm_float(0, 0, m, k, n, d, n, w->data, k, 0, dh, k);
        hl -= m * k;
        mlp_act_grad(dh, hl, dh, m * k, act);
        d = dh;
    }
}
