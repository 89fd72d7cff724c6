/* SPDX-License-Identifier: MIT */
/* layers_conv.c: the 2-D convolution layer (nn.Conv2d).
 *
 * A thin layer: tg_conv_forward is one tg_conv2d node, its backward comes
 * from the tape; tg_conv_relu_pool_forward is the layer, relu and a max pool
 * as one node (ops/conv.c). Parameters are created under nn.Conv2d's names, in its
 * layout ([out_ch,in_ch,k,k] and [out_ch]) and with its default
 * initialisation, so a state_dict moves between the two as it is:
 *   weight: kaiming_uniform_(a = sqrt(5)), i.e. gain sqrt(2 / (1 + 5)) and
 *           bound gain sqrt(3 / fan_in) = 1 / sqrt(fan_in)
 *   bias:   U(-1/sqrt(fan_in), 1/sqrt(fan_in))
 * with fan_in = in_ch k^2, drawn from the context's seeded generator. */
#include "toolkit.h"

#include <math.h>
#include <stdio.h>

int tg_conv_init(tg_ctx *ctx, tg_conv *l, const char *name, int64_t in_ch, int64_t out_ch,
                 int kernel, int stride, int padding, int bias, tg_dtype dt)
{
    static const char fn[] = "tg_conv_init";
    if (tgi_layer_begin(ctx, fn, l, sizeof *l, "l")) return -1;
    const char *shown = name ? name : "(unnamed)";
    if (in_ch < 1 || out_ch < 1 || kernel < 1 || stride < 1 || padding < 0) {
        tg_set_error(ctx, "%s: layer '%s' needs in_ch, out_ch, kernel, stride >= 1 and "
                          "padding >= 0, got in_ch %lld, out_ch %lld, kernel %d, stride %d, "
                          "padding %d", fn, shown, (long long)in_ch, (long long)out_ch, kernel,
                     stride, padding);
        return -1;
    }
    if (dt != TG_F32 && dt != TG_F64) {
        tg_set_error(ctx, "%s: layer dtype must be f32 or f64, got %s", fn, tg_dtype_name(dt));
        return -1;
    }
    char wname[TGI_NAME_MAX], bname[TGI_NAME_MAX];
    if (name && (tgi_param_name(ctx, fn, wname, name, "weight") ||
                 tgi_param_name(ctx, fn, bname, name, "bias")))
        return -1;
    const int64_t fan_in = in_ch * kernel * kernel;
    const double bound = 1.0 / sqrt((double)fan_in);
    int64_t wshape[4] = {out_ch, in_ch, kernel, kernel}, bshape[1] = {out_ch};
    tg_tensor *w = tg_param(ctx, name ? wname : NULL, dt, 4, wshape);
    if (!w) return -1;
    tg_fill_uniform(ctx, w, -bound, bound);
    tg_tensor *b = NULL;
    if (bias) {
        b = tg_param(ctx, name ? bname : NULL, dt, 1, bshape);
        if (!b) return -1;
        tg_fill_uniform(ctx, b, -bound, bound);
    }
    if (!tg_ok(ctx)) return -1;
    *l = (tg_conv){w, b, in_ch, out_ch, kernel, stride, padding};
    return 0;
}

tg_tensor *tg_conv_forward(tg_ctx *ctx, const tg_conv *l, tg_tensor *x)
{
    if (!ctx || !tgi_layer_ready(ctx, "tg_conv_forward", "l", l, l ? l->weight : NULL))
        return NULL;
    return tg_conv2d(ctx, x, l->weight, l->bias, l->stride, l->padding);
}

tg_tensor *tg_conv_relu_pool_forward(tg_ctx *ctx, const tg_conv *l, tg_tensor *x, int pool)
{
    static const char fn[] = "tg_conv_relu_pool_forward";
    if (!ctx || !tgi_layer_ready(ctx, fn, "l", l, l ? l->weight : NULL)) return NULL;
    if (l->stride != 1)
        return tg_max_pool2d(ctx, tg_relu(ctx, tg_conv_forward(ctx, l, x)), pool, pool);
    return tgi_conv2d_relu_pool(ctx, fn, x, l->weight, l->bias, l->padding, pool);
}
