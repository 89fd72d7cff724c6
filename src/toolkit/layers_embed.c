/* layers_embed.c: the embedding layer, nn.Embedding's equivalent.
 *
 * One parameter, "<name>.weight" [num, dim], a table whose row v is the
 * vector of token v; the forward pass is one tg_embedding (ops/index.c), so
 * the backward pass (rows scatter-added) comes from the tape. The weight is
 * initialised as nn.Embedding does by default: N(0, 1), from the context's
 * seeded generator. */
#include "toolkit.h"

#include <stdio.h>

#define EMBED_NAME_MAX 256 /* longest parameter name built here, with its NUL */

int tg_embed_init(tg_ctx *ctx, tg_embed *e, const char *name, int64_t num, int64_t dim, tg_dtype dt)
{
    static const char fn[] = "tg_embed_init";
    if (!ctx) return -1;
    if (e) memset(e, 0, sizeof *e);
    if (!tg_ok(ctx)) return -1;
    if (!e) {
        tg_set_error(ctx, "%s: argument e is NULL", fn);
        return -1;
    }
    if (num <= 0 || dim <= 0 || num > INT32_MAX) {
        tg_set_error(ctx, "%s: layer '%s' needs 0 < num <= %d and dim > 0, got num %lld, dim %lld",
                     fn, name ? name : "(unnamed)", INT32_MAX, (long long)num, (long long)dim);
        return -1;
    }
    if (dt != TG_F32 && dt != TG_F64) {
        tg_set_error(ctx, "%s: layer dtype must be f32 or f64, got %s", fn, tg_dtype_name(dt));
        return -1;
    }
    char wname[EMBED_NAME_MAX];
    if (name) {
        if (!*name) {
            tg_set_error(ctx, "%s: name is empty (pass NULL for automatic names)", fn);
            return -1;
        }
        int len = snprintf(wname, sizeof wname, "%s.weight", name);
        if (len < 0 || len >= (int)sizeof wname) {
            tg_set_error(ctx, "%s: name '%.40s...' is too long (at most %d characters)", fn, name,
                         EMBED_NAME_MAX - 1 - (int)strlen(".weight"));
            return -1;
        }
    }
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
    static const char fn[] = "tg_embed_forward";
    if (!ctx || !tg_ok(ctx)) return NULL;
    if (!e) {
        tg_set_error(ctx, "%s: argument e is NULL", fn);
        return NULL;
    }
    if (!e->weight) {
        tg_set_error(ctx, "%s: the layer has no weight (was tg_embed_init called?)", fn);
        return NULL;
    }
    return tg_embedding(ctx, e->weight, idx);
}
