/* SPDX-License-Identifier: MIT */
/* layers_norm.c: the normalisation and dropout layers: tg_layernorm (nn.LayerNorm),
 * tg_batchnorm (nn.BatchNorm1d / nn.BatchNorm2d) and tg_dropout_forward
 * (nn.Dropout).
 *
 * Thin, like the dense layer: each forward is one op of ops/norm.c, so the
 * backward pass comes from the tape. Parameters get PyTorch's names and
 * defaults, so a checkpoint is the module's state_dict (without batch norm's
 * num_batches_tracked, see docs/nn.md). Batch norm's running statistics are
 * parameters too, so tg_save and tg_load carry them, but they do not require
 * a gradient: backward never reaches them and the optimisers skip them (no
 * update, no weight decay); only the op's training forward changes them.
 * Batch norm and dropout read the context's mode (tg_train_mode). */
#include "toolkit.h"

#include <math.h>
#include <stdio.h>

/* A parameter [n] named "<name>.<suffix>" (automatic when name is NULL),
 * filled with value; requires a gradient when grad. NULL on error. */
static tg_tensor *vec_param(tg_ctx *ctx, const char *fn, const char *name, const char *suffix,
                            tg_dtype dt, int64_t n, double value, int grad)
{
    char full[TGI_NAME_MAX];
    if (name && tgi_param_name(ctx, fn, full, name, suffix)) return NULL;
    tg_tensor *t = tg_param(ctx, name ? full : NULL, dt, 1, &n);
    if (!t) return NULL;
    tg_fill(t, value);
    if (!grad) tg_set_requires_grad(t, 0);
    return t;
}

/* The checks both inits make: a layer pointer, n > 0, a float dtype, a name
 * that is NULL or not empty. 1 ok, else the error is recorded. */
static int check_init(tg_ctx *ctx, const char *fn, const void *layer, const char *name,
                      int64_t n, const char *what, tg_dtype dt)
{
    if (!tg_ok(ctx)) return 0;
    if (!layer) {
        tg_set_error(ctx, "%s: the layer argument is NULL", fn);
        return 0;
    }
    if (n <= 0) {
        tg_set_error(ctx, "%s: layer '%s' needs %s > 0, got %lld", fn, name ? name : "(unnamed)",
                     what, (long long)n);
        return 0;
    }
    if (dt != TG_F32 && dt != TG_F64) {
        tg_set_error(ctx, "%s: layer dtype must be f32 or f64, got %s", fn, tg_dtype_name(dt));
        return 0;
    }
    if (name && !*name) {
        tg_set_error(ctx, "%s: name is empty (pass NULL for automatic names)", fn);
        return 0;
    }
    return 1;
}

/* The start both inits share: clears the layer (size bytes, when it is not
 * NULL), runs check_init, then makes the affine parameters weight (ones) and
 * bias (zeros) of n elements. 1 ok, else the error is recorded. */
static int init_affine(tg_ctx *ctx, const char *fn, void *layer, size_t size, const char *name,
                       int64_t n, const char *what, tg_dtype dt, tg_tensor **w, tg_tensor **b)
{
    if (layer) memset(layer, 0, size);
    if (!check_init(ctx, fn, layer, name, n, what, dt)) return 0;
    *w = vec_param(ctx, fn, name, "weight", dt, n, 1.0, 1);
    *b = *w ? vec_param(ctx, fn, name, "bias", dt, n, 0.0, 1) : NULL;
    return *b != NULL;
}

/* ---- layer norm ----------------------------------------------------------- */

int tg_layernorm_init(tg_ctx *ctx, tg_layernorm *ln, const char *name, int64_t dim, tg_dtype dt)
{
    tg_tensor *w, *b;
    if (!ctx || !init_affine(ctx, "tg_layernorm_init", ln, sizeof *ln, name, dim, "dim", dt, &w, &b))
        return -1;
    *ln = (tg_layernorm){.weight = w, .bias = b, .dim = dim, .eps = 1e-5};
    return 0;
}

tg_tensor *tg_layernorm_forward(tg_ctx *ctx, const tg_layernorm *ln, tg_tensor *x)
{
    if (!ctx || !tgi_layer_ready(ctx, "tg_layernorm_forward", "ln", ln, ln ? ln->weight : NULL))
        return NULL;
    return tg_layer_norm(ctx, x, ln->weight, ln->bias, ln->eps);
}

/* ---- batch norm ----------------------------------------------------------- */

int tg_batchnorm_init(tg_ctx *ctx, tg_batchnorm *bn, const char *name, int64_t channels,
                      tg_dtype dt)
{
    static const char fn[] = "tg_batchnorm_init";
    tg_tensor *w, *b;
    if (!ctx || !init_affine(ctx, fn, bn, sizeof *bn, name, channels, "channels", dt, &w, &b))
        return -1;
    tg_tensor *rm = vec_param(ctx, fn, name, "running_mean", dt, channels, 0.0, 0);
    tg_tensor *rv = rm ? vec_param(ctx, fn, name, "running_var", dt, channels, 1.0, 0) : NULL;
    if (!rv) return -1;
    *bn = (tg_batchnorm){.weight = w, .bias = b, .running_mean = rm, .running_var = rv,
                         .channels = channels, .momentum = 0.1, .eps = 1e-5};
    return 0;
}

tg_tensor *tg_batchnorm_forward(tg_ctx *ctx, const tg_batchnorm *bn, tg_tensor *x)
{
    if (!ctx || !tgi_layer_ready(ctx, "tg_batchnorm_forward", "bn", bn, bn ? bn->weight : NULL))
        return NULL;
    return tg_batch_norm(ctx, x, bn->running_mean, bn->running_var, bn->weight, bn->bias,
                         tg_is_training(ctx), bn->momentum, bn->eps);
}

/* ---- dropout -------------------------------------------------------------- */

tg_tensor *tg_dropout_forward(tg_ctx *ctx, tg_tensor *x, double p)
{
    if (!ctx) return NULL;
    return tg_dropout(ctx, x, p, tg_is_training(ctx));
}
