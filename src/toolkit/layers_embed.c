/* SPDX-License-Identifier: MIT */
/* layers_embed.c: the embedding layer, nn.Embedding's equivalent.
 *
 * One parameter, "<name>.weight" [num, dim], a table whose row v is the
 * vector of token v; the forward pass is one tg_embedding (ops/index.c), so
 * the backward pass (rows scatter-added) comes from the tape. The weight is
 * initialised as nn.Embedding does by default: N(0, 1), from the context's
 * seeded generator. */
#include "toolkit.h"

#include <stdio.h>

int tg_embed_init(tg_ctx *ctx, tg_embed *e, const char *name, int64_t num, int64_t dim, tg_dtype dt)
{
    static const char fn[] = "tg_embed_init";
    if (tgi_layer_begin(ctx, fn, e, sizeof *e, "e")) return -1;
    if (num <= 0 || dim <= 0 || num > INT32_MAX) {
        tg_set_error(ctx, "%s: layer '%s' needs 0 < num <= %d and dim > 0, got num %lld, dim %lld",
                     fn, name ? name : "(unnamed)", INT32_MAX, (long long)num, (long long)dim);
        return -1;
    }
    if (dt != TG_F32 && dt != TG_F64) {
        tg_set_error(ctx, "%s: layer dtype must be f32 or f64, got %s", fn, tg_dtype_name(dt));
        return -1;
    }
    char wname[TGI_NAME_MAX];
    if (name && tgi_param_name(ctx, fn, wname, name, "weight")) return -1;
    int64_t shape[2] = {num, dim};
    tg_tensor *w = tg_param(ctx, name ? wname : NULL, dt, 2, shape);
    if (!w) return -1;
    tg_fill_normal(ctx, w, 0.0, 1.0);
    e->weight = w;
    e->num = num;
    e->dim = dim;
    return 0;
}

tg_tensor *tg_embed_forward(tg_ctx *ctx, const tg_embed *e, tg_tensor *idx)
{
    if (!ctx || !tgi_layer_ready(ctx, "tg_embed_forward", "e", e, e ? e->weight : NULL))
        return NULL;
    return tg_embedding(ctx, e->weight, idx);
}
