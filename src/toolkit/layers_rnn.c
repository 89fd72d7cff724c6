/* SPDX-License-Identifier: MIT */
/* layers_rnn.c: nn.LSTM and nn.GRU over a sequence (tg_lstm, tg_gru).
 *
 * The tape unrolls the time steps: each step of each layer is one cell
 * (tg_lstm_cell / tg_gru_cell, ops/rnn.c). Two small ops of this file move data
 * between the [T,N,*] sequence and the per-step [N,*] tensors: seq_select copies
 * x[t] out of a sequence, seq_stack copies K step tensors into [K,N,*]. (General
 * slicing and concatenation ops, tg_slice and tg_concat, take this role once they
 * exist; these two are kept minimal: axis 0 only, contiguous copies.) */
#include "toolkit.h"

#include <math.h>
#include <stdio.h>

#define RNN_NAME_MAX 256 /* longest parameter name built, with its NUL */

/* ======================================================================== */
/* seq_select: y = x[t] for x [K,...], y [...] (axis 0 only)                */
/* dx[t] += dy. Saves nothing (the index is in the node's attributes).      */
/* ======================================================================== */

static void seq_select_backward(tg_op_call *c);
static const tg_op op_seq_select = {"seq_select", NULL, seq_select_backward};

static tg_tensor *seq_select(tg_ctx *ctx, const char *fn, tg_tensor *x, int64_t t)
{
    tg_tensor *y = tgi_tensor_new(ctx, fn, x->dtype, x->ndim - 1, x->shape + 1, 0);
    if (!y) return NULL;
    tg_op_call *c;
    if (tgi_record(ctx, &op_seq_select, y, &x, 1, &c) != 0) return NULL;
    if (c) tgi_node_attr(c)->i[0] = t;
    memcpy(y->data, (const char *)x->data + (size_t)t * tgi_bytes(y), tgi_bytes(y));
    return y;
}

/* d x[t] / dx: the identity on slice t */
static void seq_select_backward(tg_op_call *c)
{
    tg_tensor *x = c->in[0];
    const void *dy = tg_grad(c->out);
    if (!dy || !tgi_needs_grad(x)) return;
    char *dx = tg_grad_acc(x);
    if (!dx) return;
    const int64_t n = c->out->numel;
    TGI_FLOAT_DISPATCH(x->dtype, {
        T *d = (T *)(void *)dx + tgi_node_attr(c)->i[0] * n;
        const T *g = dy;
        for (int64_t i = 0; i < n; i++) d[i] += g[i];
    });
}

/* ======================================================================== */
/* seq_stack: y[k] = xs[k] for K tensors of one shape [...] -> y [K,...]    */
/* dxs[k] += dy[k]. The K inputs (K may exceed TG_MAX_INPUTS) are kept in   */
/* an arena array the node's `saved` points at; the node's in[0] is one of  */
/* them that needs a gradient, so the tape records it when any does.        */
/* ======================================================================== */

static void seq_stack_backward(tg_op_call *c);
static const tg_op op_seq_stack = {"seq_stack", NULL, seq_stack_backward};

static tg_tensor *seq_stack(tg_ctx *ctx, const char *fn, tg_tensor *const *xs, int64_t K)
{
    const tg_tensor *x0 = xs[0];
    int64_t shape[TG_MAX_DIMS];
    shape[0] = K;
    for (int d = 0; d < x0->ndim; d++) shape[d + 1] = x0->shape[d];
    tg_tensor *y = tgi_tensor_new(ctx, fn, x0->dtype, x0->ndim + 1, shape, 0);
    if (!y) return NULL;
    tg_tensor *rep = xs[0];
    for (int64_t k = 0; k < K; k++)
        if (tgi_needs_grad(xs[k])) {
            rep = xs[k];
            break;
        }
    const size_t step = tgi_bytes(x0);
    if (tgi_should_record(ctx, &rep, 1)) {
        tg_tensor **keep = tg_scratch(ctx, (size_t)K * sizeof *keep);
        tg_op_call *c = NULL;
        if (!keep || tgi_record(ctx, &op_seq_stack, y, &rep, 1, &c) != 0) return NULL;
        if (c) { /* always, as rep needs a gradient */
            memcpy(keep, xs, (size_t)K * sizeof *keep);
            c->saved = keep;
            tgi_node_attr(c)->i[0] = K;
        }
    }
    for (int64_t k = 0; k < K; k++) memcpy((char *)y->data + (size_t)k * step, xs[k]->data, step);
    return y;
}

/* d y[k] / d xs[k]: the identity, for each input that needs a gradient */
static void seq_stack_backward(tg_op_call *c)
{
    tg_tensor **xs = c->saved;
    const void *dy = tg_grad(c->out);
    if (!dy) return;
    const int64_t K = tgi_node_attr(c)->i[0], n = K ? c->out->numel / K : 0;
    for (int64_t k = 0; k < K; k++) {
        if (!tgi_needs_grad(xs[k])) continue;
        void *dx = tg_grad_acc(xs[k]);
        if (!dx) return;
        TGI_FLOAT_DISPATCH(c->out->dtype, {
            T *d = dx;
            const T *g = (const T *)dy + k * n;
            for (int64_t i = 0; i < n; i++) d[i] += g[i];
        });
    }
}

/* ======================================================================== */
/* init                                                                      */
/* ======================================================================== */

/* "<name>.<what>_l<l>" (or "<what>_l<l>" without a name) into buf */
static int rnn_param_name(tg_ctx *ctx, const char *fn, char *buf, const char *name,
                          const char *what, int l)
{
    int len = name ? snprintf(buf, RNN_NAME_MAX, "%s.%s_l%d", name, what, l)
                   : snprintf(buf, RNN_NAME_MAX, "%s_l%d", what, l);
    if (len < 0 || len >= RNN_NAME_MAX) {
        tg_set_error(ctx, "%s: name '%.40s...' is too long (at most %d characters)", fn, name,
                     RNN_NAME_MAX - 20);
        return -1;
    }
    return 0;
}

/* The parameters of an RNN of `gates` gates, each U(-1/sqrt(H), 1/sqrt(H)) in
 * nn.LSTM's order (per layer: weight_ih, weight_hh, bias_ih, bias_hh). */
static int rnn_init(tg_ctx *ctx, const char *fn, tg_rnn *m, int gates, const char *name,
                    int64_t input_size, int64_t hidden_size, int num_layers, int bias,
                    tg_dtype dt)
{
    if (!ctx) return -1;
    if (m) memset(m, 0, sizeof *m);
    if (!tg_ok(ctx)) return -1;
    if (!m) {
        tg_set_error(ctx, "%s: argument m is NULL", fn);
        return -1;
    }
    if (input_size <= 0 || hidden_size <= 0 || num_layers < 1 ||
        num_layers > TG_RNN_MAX_LAYERS) {
        tg_set_error(ctx, "%s: needs input_size > 0, hidden_size > 0 and num_layers in [1,%d], "
                          "got %lld, %lld, %d", fn, TG_RNN_MAX_LAYERS, (long long)input_size,
                     (long long)hidden_size, num_layers);
        return -1;
    }
    if (dt != TG_F32 && dt != TG_F64) {
        tg_set_error(ctx, "%s: dtype must be f32 or f64, got %s", fn, tg_dtype_name(dt));
        return -1;
    }
    if (name && !*name) {
        tg_set_error(ctx, "%s: name is empty (pass NULL for nn.%s's bare names)", fn,
                     gates == 4 ? "LSTM" : "GRU");
        return -1;
    }
    const double k = 1.0 / sqrt((double)hidden_size);
    const int64_t G = gates * hidden_size;
    static const char *what[4] = {"weight_ih", "weight_hh", "bias_ih", "bias_hh"};
    tg_rnn r = {input_size, hidden_size, num_layers, gates, {0}, {0}, {0}, {0}};
    for (int l = 0; l < num_layers; l++) {
        tg_tensor **slot[4] = {&r.weight_ih[l], &r.weight_hh[l], &r.bias_ih[l], &r.bias_hh[l]};
        const int64_t shapes[4][2] = {
            {G, l == 0 ? input_size : hidden_size}, {G, hidden_size}, {G, 0}, {G, 0}};
        for (int j = 0; j < (bias ? 4 : 2); j++) {
            char pname[RNN_NAME_MAX];
            if (rnn_param_name(ctx, fn, pname, name, what[j], l)) return -1;
            tg_tensor *p = tg_param(ctx, pname, dt, j < 2 ? 2 : 1, shapes[j]);
            if (!p) return -1;
            tg_fill_uniform(ctx, p, -k, k);
            *slot[j] = p;
        }
    }
    if (!tg_ok(ctx)) return -1;
    *m = r;
    return 0;
}

int tg_lstm_init(tg_ctx *ctx, tg_lstm *m, const char *name, int64_t input_size,
                 int64_t hidden_size, int num_layers, int bias, tg_dtype dt)
{
    return rnn_init(ctx, "tg_lstm_init", m, 4, name, input_size, hidden_size, num_layers, bias,
                    dt);
}

int tg_gru_init(tg_ctx *ctx, tg_gru *m, const char *name, int64_t input_size,
                int64_t hidden_size, int num_layers, int bias, tg_dtype dt)
{
    return rnn_init(ctx, "tg_gru_init", m, 3, name, input_size, hidden_size, num_layers, bias,
                    dt);
}

int tg_rnn_params(const tg_rnn *m, tg_tensor **out, int cap)
{
    if (!m || m->num_layers < 0 || m->num_layers > TG_RNN_MAX_LAYERS) return -1;
    int k = 0;
    for (int l = 0; l < m->num_layers; l++) {
        tg_tensor *p[4] = {m->weight_ih[l], m->weight_hh[l], m->bias_ih[l], m->bias_hh[l]};
        for (int j = 0; j < 4; j++) {
            if (!p[j]) continue;
            if (out && k < cap) out[k] = p[j];
            k++;
        }
    }
    return k;
}

/* ======================================================================== */
/* forward                                                                   */
/* ======================================================================== */

/* An initial state [L,N,H] must match; NULL is fine. */
static int check_state(tg_ctx *ctx, const char *fn, const char *arg, const tg_rnn *m,
                       const tg_tensor *x, const tg_tensor *s)
{
    if (!s) return 1;
    if (!tgi_check_arg(ctx, fn, arg, s) || !tgi_check_same_dtype(ctx, fn, x, s)) return 0;
    if (s->ndim != 3 || s->shape[0] != m->num_layers || s->shape[1] != x->shape[1] ||
        s->shape[2] != m->hidden_size) {
        char bs[96], bx[96];
        tg_set_error(ctx, "%s: %s must be [L,N,H] = [%d,%lld,%lld] for x %s, got %s", fn, arg,
                     m->num_layers, (long long)x->shape[1], (long long)m->hidden_size,
                     TGI_SHAPE(x, bx), TGI_SHAPE(s, bs));
        return 0;
    }
    return 1;
}

static int check_rnn(tg_ctx *ctx, const char *fn, const tg_rnn *m, int gates,
                     const tg_tensor *x, const tg_tensor *h0, const tg_tensor *c0)
{
    if (!m) {
        if (tg_ok(ctx)) tg_set_error(ctx, "%s: argument m is NULL", fn);
        return 0;
    }
    if (!tgi_check_arg(ctx, fn, "x", x) || !tgi_check_float(ctx, fn, "x", x)) return 0;
    if (m->gates != gates || m->num_layers < 1 || m->num_layers > TG_RNN_MAX_LAYERS ||
        !m->weight_ih[0]) {
        tg_set_error(ctx, "%s: m was not made by %s", fn,
                     gates == 4 ? "tg_lstm_init" : "tg_gru_init");
        return 0;
    }
    if (!tgi_check_same_dtype(ctx, fn, x, m->weight_ih[0])) return 0;
    if (x->ndim != 3 || x->shape[2] != m->input_size || x->shape[0] < 1) {
        char bx[96];
        tg_set_error(ctx, "%s: x must be [T,N,input_size] = [T,N,%lld] with T >= 1, got %s",
                     fn, (long long)m->input_size, TGI_SHAPE(x, bx));
        return 0;
    }
    return check_state(ctx, fn, "h0", m, x, h0) && check_state(ctx, fn, "c0", m, x, c0);
}

/* Layer l's initial state: s[l] when given, else zeros. */
static tg_tensor *initial_state(tg_ctx *ctx, const char *fn, tg_tensor *s, int l,
                                const int64_t *nh, tg_dtype dt)
{
    if (s) return seq_select(ctx, fn, s, l);
    return tgi_tensor_new(ctx, fn, dt, 2, nh, 1);
}

/* The common forward of both kinds: c0 / c_n only for the LSTM. */
static tg_tensor *rnn_forward(tg_ctx *ctx, const char *fn, const tg_rnn *m, int gates,
                              tg_tensor *x, tg_tensor *h0, tg_tensor *c0, tg_tensor **h_n,
                              tg_tensor **c_n)
{
    if (h_n) *h_n = NULL;
    if (c_n) *c_n = NULL;
    if (!ctx || !check_rnn(ctx, fn, m, gates, x, h0, c0)) return NULL;
    const int64_t T = x->shape[0], nh[2] = {x->shape[1], m->hidden_size};
    const int L = m->num_layers;
    const int64_t tape0 = ctx->tape_len;
    tg_tensor **seq = tg_scratch(ctx, (size_t)T * sizeof *seq);
    tg_tensor *hl[TG_RNN_MAX_LAYERS], *cl[TG_RNN_MAX_LAYERS];
    if (!seq) return NULL;
    for (int64_t t = 0; t < T; t++) {
        seq[t] = seq_select(ctx, fn, x, t);
        if (!seq[t]) goto fail;
    }
    for (int l = 0; l < L; l++) {
        tg_tensor *h = initial_state(ctx, fn, h0, l, nh, x->dtype);
        tg_tensor *c = gates == 4 ? initial_state(ctx, fn, c0, l, nh, x->dtype) : NULL;
        if (!h || (gates == 4 && !c)) goto fail;
        for (int64_t t = 0; t < T; t++) {
            if (gates == 4) {
                tg_tensor *cn = NULL;
                h = tg_lstm_cell(ctx, seq[t], h, c, m->weight_ih[l], m->weight_hh[l],
                                 m->bias_ih[l], m->bias_hh[l], &cn);
                c = cn;
            } else {
                h = tg_gru_cell(ctx, seq[t], h, m->weight_ih[l], m->weight_hh[l], m->bias_ih[l],
                                m->bias_hh[l]);
            }
            if (!h) goto fail;
            seq[t] = h; /* the next layer's input */
        }
        hl[l] = h;
        cl[l] = c;
    }
    tg_tensor *out = seq_stack(ctx, fn, seq, T);
    tg_tensor *hs = out && h_n ? seq_stack(ctx, fn, hl, L) : NULL;
    tg_tensor *cs = out && c_n && gates == 4 ? seq_stack(ctx, fn, cl, L) : NULL;
    if (!out || (h_n && !hs) || (c_n && gates == 4 && !cs)) goto fail;
    if (h_n) *h_n = hs;
    if (c_n) *c_n = cs;
    return out;
fail:
    if (ctx->tape_len > tape0) ctx->tape_len = tape0; /* nothing of a failed call stays */
    return NULL;
}

tg_tensor *tg_lstm_forward(tg_ctx *ctx, const tg_lstm *m, tg_tensor *x, tg_tensor *h0,
                           tg_tensor *c0, tg_tensor **h_n, tg_tensor **c_n)
{
    return rnn_forward(ctx, "tg_lstm_forward", m, 4, x, h0, c0, h_n, c_n);
}

tg_tensor *tg_gru_forward(tg_ctx *ctx, const tg_gru *m, tg_tensor *x, tg_tensor *h0,
                          tg_tensor **h_n)
{
    return rnn_forward(ctx, "tg_gru_forward", m, 3, x, h0, NULL, h_n, NULL);
}
