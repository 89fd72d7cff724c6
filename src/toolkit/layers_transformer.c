/* SPDX-License-Identifier: MIT */
/* layers_transformer.c: the pre-layer-norm transformer block.
 *
 * A block is made of ops only (layer norm, dense layers, the fused
 * self-attention, GELU, dense layers with the residual add fused in, views);
 * its backward comes from the tape.
 * Names, initialisation and arithmetic follow PyTorch's
 * nn.TransformerEncoderLayer(norm_first=True, activation="gelu",
 * batch_first=True, dropout=0); see docs/nn.md. */
#include "toolkit.h"

#include <math.h>
#include <stdio.h>

#define BLOCK_N_PARAMS 12

/* "<prefix><suffix>" into buf; 0, or -1 (error recorded) if it does not fit. */
static int param_name(tg_ctx *ctx, const char *fn, char *buf, size_t size, const char *prefix,
                      const char *suffix)
{
    int n = snprintf(buf, size, "%s%s", prefix ? prefix : "", suffix);
    if (n < 0 || (size_t)n >= size) {
        tg_set_error(ctx, "%s: parameter name '%s%s' is longer than %zu characters", fn,
                     prefix ? prefix : "", suffix, size - 1);
        return -1;
    }
    return 0;
}

/* A [n] parameter "<prefix><suffix>" filled with `value`; NULL on error. */
static tg_tensor *vector_param(tg_ctx *ctx, const char *fn, const char *prefix,
                               const char *suffix, int64_t n, tg_dtype dt, double value)
{
    char name[256];
    if (param_name(ctx, fn, name, sizeof name, prefix, suffix) != 0) return NULL;
    tg_tensor *t = tg_param(ctx, name, dt, 1, &n);
    if (t) tg_fill(t, value);
    return t;
}

/* A dense layer "<prefix><suffix>" as nn.Linear initialises it: weight and
 * bias U(-1/sqrt(in), 1/sqrt(in)) (kaiming_uniform_ with a = sqrt(5)); with
 * zero_bias the bias stays 0 (MultiheadAttention's out_proj). */
static int linear_init(tg_ctx *ctx, const char *fn, tg_dense *d, const char *prefix,
                       const char *suffix, int64_t in, int64_t out, tg_dtype dt, int zero_bias)
{
    char name[256];
    if (param_name(ctx, fn, name, sizeof name, prefix, suffix) != 0) return -1;
    if (tg_dense_init(ctx, d, name, in, out, dt, TG_INIT_ZEROS) != 0) return -1;
    const double bound = 1.0 / sqrt((double)in);
    tg_fill_uniform(ctx, d->weight, -bound, bound);
    if (!zero_bias) tg_fill_uniform(ctx, d->bias, -bound, bound);
    return tg_ok(ctx) ? 0 : -1;
}

int tg_transformer_block_init(tg_ctx *ctx, tg_transformer_block *blk, const char *prefix,
                              int64_t d_model, int64_t n_heads, int64_t d_ff, tg_dtype dt)
{
    static const char fn[] = "tg_transformer_block_init";
    if (tgi_layer_begin(ctx, fn, blk, sizeof *blk, "blk")) return -1;
    if (d_model < 1 || n_heads < 1 || d_ff < 1 || d_model % n_heads != 0) {
        tg_set_error(ctx, "%s: need d_model >= 1 divisible by n_heads >= 1 and d_ff >= 1: "
                          "d_model %lld, n_heads %lld, d_ff %lld", fn, (long long)d_model,
                     (long long)n_heads, (long long)d_ff);
        return -1;
    }
    if (dt != TG_F32 && dt != TG_F64) {
        tg_set_error(ctx, "%s: dtype must be TG_F32 or TG_F64, got %d", fn, (int)dt);
        return -1;
    }
    tg_transformer_block b = {.d_model = d_model, .n_heads = n_heads, .d_ff = d_ff};
    const int64_t e = d_model, e3[2] = {3 * d_model, d_model};
    /* in_proj: MultiheadAttention's one [3E,E] weight (xavier_uniform_, fan_in E,
     * fan_out 3E) and zero bias, under its names */
    char name[256];
    if (param_name(ctx, fn, name, sizeof name, prefix, "self_attn.in_proj_weight") != 0)
        goto fail;
    b.in_proj.weight = tg_param(ctx, name, dt, 2, e3);
    b.in_proj.bias = vector_param(ctx, fn, prefix, "self_attn.in_proj_bias", 3 * e, dt, 0.0);
    b.in_proj.in = e, b.in_proj.out = 3 * e;
    if (!b.in_proj.weight || !b.in_proj.bias ||
        tg_init_tensor(ctx, b.in_proj.weight, TG_INIT_XAVIER_UNIFORM, e, 3 * e, 0.0) != 0)
        goto fail;
    if (linear_init(ctx, fn, &b.out_proj, prefix, "self_attn.out_proj", e, e, dt, 1) != 0 ||
        linear_init(ctx, fn, &b.linear1, prefix, "linear1", e, d_ff, dt, 0) != 0 ||
        linear_init(ctx, fn, &b.linear2, prefix, "linear2", d_ff, e, dt, 0) != 0)
        goto fail;
    if (param_name(ctx, fn, name, sizeof name, prefix, "norm1") != 0 ||
        tg_layernorm_init(ctx, &b.norm1, name, e, dt) != 0 ||
        param_name(ctx, fn, name, sizeof name, prefix, "norm2") != 0 ||
        tg_layernorm_init(ctx, &b.norm2, name, e, dt) != 0)
        goto fail;
    *blk = b;
    return 0;
fail:
    memset(blk, 0, sizeof *blk);
    return -1;
}

tg_tensor *tg_transformer_block_forward(tg_ctx *ctx, const tg_transformer_block *blk,
                                        tg_tensor *x, int causal)
{
    static const char fn[] = "tg_transformer_block_forward";
    if (!ctx || !tg_ok(ctx)) return NULL;
    if (!blk || !blk->in_proj.weight) {
        tg_set_error(ctx, "%s: the block has no parameters (was tg_transformer_block_init "
                          "called?)", fn);
        return NULL;
    }
    if (!tgi_check_arg(ctx, fn, "x", x)) return NULL;
    if (x->ndim != 3 || x->shape[2] != blk->d_model) {
        char sx[64];
        tg_set_error(ctx, "%s: x must be [B,T,%lld], got %s", fn, (long long)blk->d_model,
                     TGI_SHAPE(x, sx));
        return NULL;
    }
    if (!tgi_check_same_dtype(ctx, fn, blk->in_proj.weight, x)) return NULL;
    const int64_t b = x->shape[0], t = x->shape[1], e = blk->d_model, h = blk->n_heads;
    const int64_t rows_e[2] = {b * t, e}, bte[3] = {b, t, e};

    /* the residual stream as [B*T,E] rows from here on (a view of x: no copy) */
    tg_tensor *xr = tgi_view(ctx, fn, x, 2, rows_e);

    /* attention: x + out_proj(attention(ln1(x))) */
    tg_tensor *a = tg_layernorm_forward(ctx, &blk->norm1, xr);
    tg_tensor *qkv = tg_dense_forward(ctx, &blk->in_proj, a, TG_ACT_NONE);
    /* the heads of q, k and v read where in_proj wrote them, the output written
     * as out_proj reads it (PyTorch's head split and merge, without copies) */
    tg_tensor *att = tgi_self_attention(ctx, fn, qkv, b, h, causal);
    /* out_proj and the residual add in one node (the bits of tg_add(xr, out_proj(att))) */
    tg_tensor *x1 = tgi_linear_residual(ctx, fn, att, blk->out_proj.weight, blk->out_proj.bias,
                                        xr);

    /* MLP: x1 + linear2(gelu(linear1(ln2(x1)))) */
    tg_tensor *m = tg_layernorm_forward(ctx, &blk->norm2, x1);
    m = tgi_linear_gelu(ctx, fn, m, blk->linear1.weight, blk->linear1.bias); /* one node */
    tg_tensor *y = tgi_linear_residual(ctx, fn, m, blk->linear2.weight, blk->linear2.bias, x1);
    return tgi_view(ctx, fn, y, 3, bte);
}

int tg_transformer_block_params(const tg_transformer_block *blk, tg_tensor **out, int cap)
{
    if (!blk) return -1;
    tg_tensor *all[BLOCK_N_PARAMS] = {
        blk->in_proj.weight, blk->in_proj.bias, blk->out_proj.weight, blk->out_proj.bias,
        blk->linear1.weight, blk->linear1.bias, blk->linear2.weight, blk->linear2.bias,
        blk->norm1.weight,   blk->norm1.bias,   blk->norm2.weight,   blk->norm2.bias};
    for (int i = 0; i < BLOCK_N_PARAMS && i < cap && out; i++) out[i] = all[i];
    return BLOCK_N_PARAMS;
}
