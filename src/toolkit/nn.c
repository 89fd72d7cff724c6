/* SPDX-License-Identifier: MIT */
/* nn.c: weight initialisation, the dense layer and the MLP.
 *
 * Layers are thin: a forward pass is made of ops (one fused tg_linear per
 * dense layer), so the backward pass comes from the tape and nothing here is
 * hand-derived. The layer structs are plain values owned by the caller; the
 * tensors they point at are parameters owned by the context.
 *
 * Initialisation follows torch.nn.init (formulas in docs/nn.md):
 *   xavier_uniform  U(-a, a),   a = gain sqrt(6 / (fan_in + fan_out))
 *   xavier_normal   N(0, s^2),  s = gain sqrt(2 / (fan_in + fan_out))
 *   he_uniform      U(-a, a),   a = gain sqrt(3 / fan_in)
 *   he_normal       N(0, s^2),  s = gain / sqrt(fan_in)
 * drawn from the context's seeded generator, so a seed fixes the weights. */
#include "toolkit.h"

#include <math.h>
#include <stdio.h>

#define NN_NAME_MAX 256 /* longest parameter name we build, with its NUL */

/* ---- initialisation ---------------------------------------------------- */

const char *tg_init_name(tg_init kind) {
    switch (kind) {
    case TG_INIT_ZEROS: return "zeros";
    case TG_INIT_XAVIER_UNIFORM: return "xavier_uniform";
    case TG_INIT_XAVIER_NORMAL: return "xavier_normal";
    case TG_INIT_HE_UNIFORM: return "he_uniform";
    case TG_INIT_HE_NORMAL: return "he_normal";
    case TG_INIT_COUNT: break;
    }
    return "?";
}

/* torch.nn.init.calculate_gain for the activations tapegrad has. */
double tg_init_gain(tg_act act) {
    switch (act) {
    case TG_ACT_NONE: return 1.0;
    case TG_ACT_SIGMOID: return 1.0;
    case TG_ACT_TANH: return 5.0 / 3.0;
    case TG_ACT_RELU: return sqrt(2.0);
    case TG_ACT_LEAKY_RELU: return sqrt(2.0 / (1.0 + TGI_LEAKY_SLOPE * TGI_LEAKY_SLOPE));
    case TG_ACT_COUNT: break;
    }
    return NAN;
}

int tg_init_tensor(tg_ctx *ctx, tg_tensor *w, tg_init kind, int64_t fan_in, int64_t fan_out,
                   double gain) {
    static const char fn[] = "tg_init_tensor";
    if (!ctx) return -1;
    if (!tgi_check_arg(ctx, fn, "w", w)) return -1;
    if (!tgi_check_float(ctx, fn, "w", w) || !tgi_check_writable(ctx, fn, "w", w)) return -1;
    if ((unsigned)kind >= TG_INIT_COUNT) {
        tg_set_error(ctx, "%s: unknown init kind %d", fn, (int)kind);
        return -1;
    }
    if (kind == TG_INIT_ZEROS) {
        tg_fill(w, 0.0);
        return 0;
    }
    int xavier = kind == TG_INIT_XAVIER_UNIFORM || kind == TG_INIT_XAVIER_NORMAL;
    if (fan_in <= 0 || (xavier && fan_out <= 0)) {
        tg_set_error(ctx, "%s: %s needs fan_in%s > 0, got fan_in %lld, fan_out %lld", fn,
                     tg_init_name(kind), xavier ? " and fan_out" : "", (long long)fan_in,
                     (long long)fan_out);
        return -1;
    }
    if (gain == 0.0) gain = xavier ? 1.0 : sqrt(2.0);
    if (!(gain > 0.0) || !isfinite(gain)) {
        tg_set_error(ctx, "%s: gain must be positive and finite (or 0 for the default), got %g",
                     fn, gain);
        return -1;
    }
    double fi = (double)fan_in, fo = (double)fan_out;
    switch (kind) {
    case TG_INIT_XAVIER_UNIFORM: {
        double a = gain * sqrt(6.0 / (fi + fo));
        tg_fill_uniform(ctx, w, -a, a);
        break;
    }
    case TG_INIT_XAVIER_NORMAL: tg_fill_normal(ctx, w, 0.0, gain * sqrt(2.0 / (fi + fo))); break;
    case TG_INIT_HE_UNIFORM: {
        double a = gain * sqrt(3.0 / fi);
        tg_fill_uniform(ctx, w, -a, a);
        break;
    }
    case TG_INIT_HE_NORMAL: tg_fill_normal(ctx, w, 0.0, gain / sqrt(fi)); break;
    default: break;
    }
    return tg_ok(ctx) ? 0 : -1;
}

/* ---- dense layer ------------------------------------------------------- */

/* The init done by tg_dense_init, with an explicit gain (tg_mlp_init passes
 * the activation's gain). */
static int dense_init(tg_ctx *ctx, const char *fn, tg_dense *d, const char *name, int64_t in,
                      int64_t out, tg_dtype dt, tg_init init, double gain) {
    memset(d, 0, sizeof *d);
    if (in <= 0 || out <= 0) {
        tg_set_error(ctx, "%s: layer '%s' needs in > 0 and out > 0, got in %lld, out %lld", fn,
                     name ? name : "(unnamed)", (long long)in, (long long)out);
        return -1;
    }
    if (dt != TG_F32 && dt != TG_F64) {
        tg_set_error(ctx, "%s: layer dtype must be f32 or f64, got %s", fn, tg_dtype_name(dt));
        return -1;
    }
    if ((unsigned)init >= TG_INIT_COUNT) {
        tg_set_error(ctx, "%s: unknown init kind %d", fn, (int)init);
        return -1;
    }
    char wname[TGI_NAME_MAX], bname[TGI_NAME_MAX];
    if (name && (tgi_param_name(ctx, fn, wname, name, "weight") ||
                 tgi_param_name(ctx, fn, bname, name, "bias")))
        return -1;
    int64_t wshape[2] = {out, in}, bshape[1] = {out}; /* [out,in], as nn.Linear */
    tg_tensor *w = tg_param(ctx, name ? wname : NULL, dt, 2, wshape);
    if (!w || tg_init_tensor(ctx, w, init, in, out, gain)) return -1;
    tg_tensor *b = tg_param(ctx, name ? bname : NULL, dt, 1, bshape); /* zeros */
    if (!b) return -1;
    d->weight = w;
    d->bias = b;
    d->in = in;
    d->out = out;
    return 0;
}

int tg_dense_init(tg_ctx *ctx, tg_dense *d, const char *name, int64_t in, int64_t out,
                  tg_dtype dt, tg_init init) {
    static const char fn[] = "tg_dense_init";
    if (tgi_layer_begin(ctx, fn, d, sizeof *d, "d")) return -1;
    return dense_init(ctx, fn, d, name, in, out, dt, init, 0.0);
}

/* Checks the layer and x for a dense forward; fn names the public caller. */
static int check_dense(tg_ctx *ctx, const char *fn, const tg_dense *d, const tg_tensor *x,
                       tg_act act) {
    if (!d) {
        if (tg_ok(ctx)) tg_set_error(ctx, "%s: argument d is NULL", fn);
        return 0;
    }
    if (!d->weight) {
        tg_set_error(ctx, "%s: the layer has no weight (was tg_dense_init called?)", fn);
        return 0;
    }
    if (!tgi_check_arg(ctx, fn, "x", x)) return 0;
    if (!tgi_check_arg(ctx, fn, "d->weight", d->weight)) return 0;
    if (!tgi_check_float(ctx, fn, "x", x) || !tgi_check_same_dtype(ctx, fn, x, d->weight))
        return 0;
    if ((unsigned)act >= TG_ACT_COUNT) {
        tg_set_error(ctx, "%s: unknown activation %d", fn, (int)act);
        return 0;
    }
    if (x->ndim != 2 || x->shape[1] != d->in) {
        char bx[96], bw[96];
        tg_set_error(ctx, "%s: x is %s but weight '%s' is %s (x must be [m,%lld])", fn,
                     TGI_SHAPE(x, bx), tg_name(d->weight), TGI_SHAPE(d->weight, bw),
                     (long long)d->in);
        return 0;
    }
    return 1;
}

/* y = act(x W^T + b): x [m,in], W [out,in], b [out] -> y [m,out]. One fused
 * linear node (W read transposed in place), so the gradients of x, W and b
 * come from its backward. */
tg_tensor *tg_dense_forward(tg_ctx *ctx, const tg_dense *d, tg_tensor *x, tg_act act) {
    static const char fn[] = "tg_dense_forward";
    if (!ctx) return NULL;
    if (!check_dense(ctx, fn, d, x, act)) return NULL;
    return tgi_linear_wt(ctx, fn, x, d->weight, d->bias, act);
}

/* ---- MLP ---------------------------------------------------------------- */

/* He for the ReLU family, Xavier otherwise; both with the activation's gain. */
static tg_init init_for_act(tg_act act) {
    return act == TG_ACT_RELU || act == TG_ACT_LEAKY_RELU ? TG_INIT_HE_UNIFORM
                                                          : TG_INIT_XAVIER_UNIFORM;
}

static int mlp_init(tg_ctx *ctx, const char *fn, tg_mlp *m, const char *prefix, int n_widths,
                    const int64_t *widths, tg_act act, tg_dtype dt, tg_init init,
                    double gain) {
    if (!ctx) return -1;
    if (m) memset(m, 0, sizeof *m);
    if (!tg_ok(ctx)) return -1;
    if (!m || !widths) {
        tg_set_error(ctx, "%s: argument %s is NULL", fn, !m ? "m" : "widths");
        return -1;
    }
    if (n_widths < 2 || n_widths - 1 > TG_MLP_MAX_LAYERS) {
        tg_set_error(ctx, "%s: n_widths must be 2 to %d (1 to %d layers), got %d", fn,
                     TG_MLP_MAX_LAYERS + 1, TG_MLP_MAX_LAYERS, n_widths);
        return -1;
    }
    if ((unsigned)act >= TG_ACT_COUNT) {
        tg_set_error(ctx, "%s: unknown activation %d", fn, (int)act);
        return -1;
    }
    for (int i = 0; i < n_widths; i++) {
        if (widths[i] <= 0) {
            tg_set_error(ctx, "%s: widths[%d] must be > 0, got %lld", fn, i, (long long)widths[i]);
            return -1;
        }
    }
    if (!prefix) prefix = "fc";
    /* "" or a prefix ending in '.': the names nn.Sequential(Linear, act, Linear,
     * ...) gives, the linear layers at the even indices: "<prefix>0", "<prefix>2" */
    size_t plen = strlen(prefix);
    int sequential = plen == 0 || prefix[plen - 1] == '.';
    for (int l = 0; l < n_widths - 1; l++) {
        char name[NN_NAME_MAX];
        int len = snprintf(name, sizeof name, "%s%d", prefix, sequential ? 2 * l : l + 1);
        if (len < 0 || len >= NN_NAME_MAX - 8) {
            tg_set_error(ctx, "%s: prefix '%.40s...' is too long", fn, prefix);
            memset(m, 0, sizeof *m);
            return -1;
        }
        if (dense_init(ctx, fn, &m->layer[l], name, widths[l], widths[l + 1], dt, init, gain)) {
            memset(m, 0, sizeof *m);
            return -1;
        }
    }
    m->n_layers = n_widths - 1;
    m->act = act;
    m->out_act = TG_ACT_NONE;
    return 0;
}

int tg_mlp_init(tg_ctx *ctx, tg_mlp *m, const char *prefix, int n_widths, const int64_t *widths,
                tg_act act, tg_dtype dt) {
    double gain = (unsigned)act < TG_ACT_COUNT ? tg_init_gain(act) : 1.0;
    return mlp_init(ctx, "tg_mlp_init", m, prefix, n_widths, widths, act, dt,
                    init_for_act(act), gain);
}

int tg_mlp_init_ex(tg_ctx *ctx, tg_mlp *m, const char *prefix, int n_widths,
                   const int64_t *widths, tg_act act, tg_dtype dt, tg_init init) {
    return mlp_init(ctx, "tg_mlp_init_ex", m, prefix, n_widths, widths, act, dt, init, 0.0);
}

/* x [m,widths[0]] -> out_act(act(...act(x W1^T + b1)...) W_L^T + b_L) [m,widths[L]]
 * (out_act none: logits). */
tg_tensor *tg_mlp_forward(tg_ctx *ctx, const tg_mlp *m, tg_tensor *x) {
    static const char fn[] = "tg_mlp_forward";
    if (!ctx) return NULL;
    if (m) { /* a small f32 network: one node for all its layers (ops/mlp.c), which
              * checks what it reads and leaves every error to the path below */
        tg_tensor *y = tgi_mlp_tiny(ctx, m, x);
        if (y || !tg_ok(ctx)) return y;
    }
    if (!m) {
        if (tg_ok(ctx)) tg_set_error(ctx, "%s: argument m is NULL", fn);
        return NULL;
    }
    if (m->n_layers < 1 || m->n_layers > TG_MLP_MAX_LAYERS) {
        if (tg_ok(ctx))
            tg_set_error(ctx, "%s: the MLP has %d layers (was tg_mlp_init called?)", fn,
                         m->n_layers);
        return NULL;
    }
    if ((unsigned)m->out_act >= TG_ACT_COUNT) {
        tg_set_error(ctx, "%s: unknown output activation %d", fn, (int)m->out_act);
        return NULL;
    }
    if (!check_dense(ctx, fn, &m->layer[0], x, m->n_layers > 1 ? m->act : m->out_act))
        return NULL;
    tg_tensor *h = x;
    for (int l = 0; l < m->n_layers; l++) {
        tg_act act = l == m->n_layers - 1 ? m->out_act : m->act;
        /* a later layer's input is the output of the layer before it, which
         * tgi_linear_wt checks against its weight */
        h = tgi_linear_wt(ctx, fn, h, m->layer[l].weight, m->layer[l].bias, act);
    }
    return h;
}

int tg_mlp_params(const tg_mlp *m, tg_tensor **out, int cap) {
    if (!m || m->n_layers < 0 || m->n_layers > TG_MLP_MAX_LAYERS) return -1;
    int k = 0;
    for (int l = 0; l < m->n_layers; l++) {
        tg_tensor *p[2] = {m->layer[l].weight, m->layer[l].bias};
        for (int j = 0; j < 2; j++) {
            if (!p[j]) continue; /* a layer whose bias the caller removed */
            if (out && k < cap) out[k] = p[j];
            k++;
        }
    }
    return k;
}
