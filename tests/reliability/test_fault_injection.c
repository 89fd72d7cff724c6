/* SPDX-License-Identifier: MIT */
/* test_fault_injection.c: fail the N-th allocation, for every N, across a
 * training step that uses every op family (the second-round ones through a
 * small CNN, an LSTM, a GRU and a transformer block; tg_tape_dot and
 * tg_summary of it) and every optimiser, a save, a load, tg_save_npy and tg_load_npy, tg_resume_save and
 * tg_resume_load, and each data loader (CSV, IDX plain and gzip'd, an IDX directory, the
 * batcher). For
 * each N on a fresh context:
 *   - the call that met the failure returns its error value and the message
 *     starts with that function's name and says "out of memory";
 *   - that call changed nothing (the parameters hash as before it);
 *   - after tg_clear_error and tg_reset, the whole workload runs again and
 *     ends with parameters bit-identical to an undisturbed run;
 *   - after tg_ctx_free every byte is back (the allocator's own count; ASan's
 *     LeakSanitizer checks the rest at exit).
 * The loop ends at the first N the workload does not reach; N - 1 is the
 * number of allocations covered, printed. */
#include <criterion/criterion.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "faulty_alloc.h"
#include "tapegrad.h"

static uint64_t params_hash(tg_ctx *ctx) {
    uint64_t h = 0;
    for (int i = 0; i < tg_param_count(ctx); i++) h = h * 31 + tg_hash(tg_param_at(ctx, i));
    return h;
}

static char ckpt[128], idx_dir[64], npy[128], resume[128];

/* The layers of the second-round workload: a small CNN, an embedding, an
 * LSTM, a GRU and a transformer block, all f64. */
typedef struct {
    tg_conv conv;
    tg_batchnorm bn;
    tg_dense fc;
    tg_embed emb;
    tg_lstm lstm;
    tg_gru gru;
    tg_transformer_block blk;
} model;

static void setup_model(tg_ctx *ctx, model *m) {
    cr_assert_eq(tg_conv_init(ctx, &m->conv, "conv", 1, 2, 3, 1, 1, 1, TG_F64), 0);
    cr_assert_eq(tg_batchnorm_init(ctx, &m->bn, "bn", 2, TG_F64), 0);
    cr_assert_eq(tg_dense_init(ctx, &m->fc, "fc", 8, 3, TG_F64, TG_INIT_XAVIER_UNIFORM), 0);
    cr_assert_eq(tg_embed_init(ctx, &m->emb, "emb", 5, 4, TG_F64), 0);
    cr_assert_eq(tg_lstm_init(ctx, &m->lstm, "lstm", 4, 3, 1, 1, TG_F64), 0);
    cr_assert_eq(tg_gru_init(ctx, &m->gru, "gru", 3, 2, 1, 1, TG_F64), 0);
    cr_assert_eq(tg_transformer_block_init(ctx, &m->blk, "blk.", 4, 2, 8, TG_F64), 0);
}

static void setup_params(tg_ctx *ctx, model *m) {
    const int64_t ws[2] = {4, 3}, bs[1] = {3}, cs[1] = {1};
    tg_tensor *w = tg_param(ctx, "w", TG_F64, 2, ws);
    tg_tensor *b = tg_param(ctx, "b", TG_F64, 1, bs);
    tg_tensor *c = tg_param(ctx, "c", TG_F64, 1, cs);
    cr_assert(w && b && c);
    double *pw = tg_data(w);
    for (int i = 0; i < 12; i++) pw[i] = 0.1 * (i - 6);
    ((double *)tg_data(b))[1] = 0.25;
    ((double *)tg_data(c))[0] = 1.5;
    setup_model(ctx, m);
}

/* The batcher's state, which a failing tg_resume_load must leave alone. */
static uint64_t batcher_hash(const tg_batcher *b) {
    uint64_t h = (uint64_t)b->pos * 31 + (uint64_t)b->batch * 7 + (uint64_t)b->epoch * 3 +
                 (uint64_t)b->fresh;
    for (int64_t i = 0; b->order && i < b->n; i++) h = h * 31 + (uint64_t)b->order[i];
    return h;
}

/* One stage: the call, the check that a failure names `fn` and changed
 * nothing. Evaluates to 1 when the call failed (the workload stops). */
#define STAGE(fn, failed_expr)                                                               \
    do {                                                                                     \
        uint64_t before_ = params_hash(ctx);                                                 \
        if (failed_expr) {                                                                   \
            cr_assert(!tg_ok(ctx), "%s failed without an error", fn);                         \
            cr_assert(strncmp(tg_errmsg(ctx), fn, strlen(fn)) == 0 &&                        \
                          strstr(tg_errmsg(ctx), "out of memory"),                           \
                      "allocation %ld: the message does not name %s: %s", F->fail_at, fn,    \
                      tg_errmsg(ctx));                                                       \
            cr_assert_eq(params_hash(ctx), before_, "%s changed the parameters", fn);         \
            goto out;                                                                        \
        }                                                                                    \
    } while (0)

/* Forward through every op family, backward. NULL on failure. */
static tg_tensor *forward(tg_ctx *ctx, faulty *F, const char **fn) {
    tg_tensor *w = tg_param_find(ctx, "w"), *b = tg_param_find(ctx, "b"),
              *c = tg_param_find(ctx, "c");
    const double xv[8] = {0.5, -1, 0.25, 2, 1, 0.75, -0.5, 0.1};
    const int32_t yv[2] = {2, 0};
    (void)F;
    *fn = "tg_from";
    tg_tensor *x = tg_from(ctx, TG_F64, 2, (int64_t[]){2, 4}, xv);
    tg_tensor *y = tg_from(ctx, TG_I32, 1, (int64_t[]){2}, yv);
    if (!x || !y) return NULL;
#define OP(name, call)                                                                       \
    *fn = #name;                                                                             \
    tg_tensor *call_##name = call;                                                           \
    if (!call_##name) return NULL;
    OP(tg_matmul, tg_matmul(ctx, x, w))
    OP(tg_add_bias, tg_add_bias(ctx, call_tg_matmul, b))
    OP(tg_sigmoid_scaled, tg_sigmoid_scaled(ctx, call_tg_add_bias, c, c))
    OP(tg_tanh, tg_tanh(ctx, call_tg_sigmoid_scaled))
    OP(tg_relu, tg_relu(ctx, call_tg_add_bias))
    OP(tg_leaky_relu, tg_leaky_relu(ctx, call_tg_add_bias, 0.1))
    OP(tg_sigmoid, tg_sigmoid(ctx, call_tg_leaky_relu))
    OP(tg_identity, tg_identity(ctx, call_tg_sigmoid))
    OP(tg_step, tg_step(ctx, call_tg_identity))
    OP(tg_add, tg_add(ctx, call_tg_tanh, call_tg_relu))
    OP(tg_sub, tg_sub(ctx, call_tg_add, call_tg_step))
    OP(tg_mul, tg_mul(ctx, call_tg_sub, call_tg_sigmoid))
    OP(tg_exp, tg_exp(ctx, call_tg_mul))
    OP(tg_div, tg_div(ctx, call_tg_mul, call_tg_exp))
    OP(tg_log, tg_log(ctx, call_tg_exp))
    OP(tg_pow, tg_pow(ctx, call_tg_log, 2))
    OP(tg_scale, tg_scale(ctx, call_tg_pow, 0.5))
    OP(tg_neg, tg_neg(ctx, call_tg_div))
    OP(tg_transpose, tg_transpose(ctx, call_tg_scale))
    OP(tg_reshape, tg_reshape(ctx, call_tg_transpose, 2, (int64_t[]){2, 3}))
    OP(tg_softmax, tg_softmax(ctx, call_tg_reshape))
    OP(tg_log_softmax, tg_log_softmax(ctx, call_tg_neg))
    OP(tg_sum_axis, tg_sum_axis(ctx, call_tg_log_softmax, 1, 1))
    OP(tg_cross_entropy, tg_cross_entropy(ctx, call_tg_add_bias, y))
    OP(tg_mse, tg_mse(ctx, call_tg_softmax, call_tg_sigmoid))
    OP(tg_l1, tg_l1(ctx, call_tg_tanh, call_tg_softmax))
    OP(tg_bce, tg_bce(ctx, call_tg_sigmoid, call_tg_softmax))
    OP(tg_bce_with_logits, tg_bce_with_logits(ctx, call_tg_add_bias, call_tg_softmax))
    OP(tg_mean, tg_mean(ctx, call_tg_sum_axis))
    OP(tg_sum, tg_sum(ctx, call_tg_log_softmax))
    tg_tensor *parts[] = {call_tg_cross_entropy, call_tg_mse, call_tg_l1, call_tg_bce,
                          call_tg_bce_with_logits, call_tg_mean};
    tg_tensor *loss = call_tg_sum;
    for (int i = 0; i < 6; i++) {
        *fn = "tg_add";
        loss = tg_add(ctx, loss, parts[i]);
        if (!loss) return NULL;
    }
#undef OP
    return loss;
}

/* tg_resume_load; when it fails, it must leave the batcher and *epoch as they were. */
static int resume_load(tg_ctx *ctx, tg_optim *opt, tg_batcher *bt, int64_t *epoch) {
    const uint64_t before = batcher_hash(bt);
    const int64_t e = *epoch;
    int r = tg_resume_load(ctx, resume, opt, bt, epoch);
    if (r != 0) {
        cr_assert_eq(batcher_hash(bt), before, "a failing tg_resume_load changed the batcher");
        cr_assert_eq(*epoch, e, "a failing tg_resume_load changed the epoch");
    }
    return r;
}

/* Forward through the second-round ops and layers: a CNN (conv, batch norm,
 * max and average pooling, dropout, dense), an embedding into an LSTM and a
 * GRU, permute, slice and concat, a causal transformer block. NULL on failure. */
static tg_tensor *forward2(tg_ctx *ctx, const model *m, const char **fn) {
    double xv[50];
    for (int i = 0; i < 50; i++) xv[i] = 0.1 * ((i * 7) % 11) - 0.5;
    const int32_t yv[2] = {1, 2}, tok[6] = {0, 3, 1, 4, 2, 2};
    *fn = "tg_from";
    tg_tensor *x = tg_from(ctx, TG_F64, 4, (int64_t[]){2, 1, 5, 5}, xv);
    tg_tensor *y = tg_from(ctx, TG_I32, 1, (int64_t[]){2}, yv);
    tg_tensor *ids = tg_from(ctx, TG_I32, 2, (int64_t[]){3, 2}, tok);
    if (!x || !y || !ids) return NULL;
#define OPN(var, name, call)                                                                 \
    *fn = name;                                                                              \
    tg_tensor *var = call;                                                                   \
    if (!var) return NULL;
#define OP(name, call) OPN(v_##name, "tg_" #name, call)
    /* the CNN */
    OP(conv_forward, tg_conv_forward(ctx, &m->conv, x))             /* [2,2,5,5] */
    OP(batchnorm_forward, tg_batchnorm_forward(ctx, &m->bn, v_conv_forward))
    OP(max_pool2d, tg_max_pool2d(ctx, v_batchnorm_forward, 2, 2))  /* [2,2,2,2] */
    OP(avg_pool2d, tg_avg_pool2d(ctx, v_batchnorm_forward, 3, 2))  /* [2,2,2,2] */
    OP(dropout, tg_dropout(ctx, v_max_pool2d, 0.25, 1))
    OP(add, tg_add(ctx, v_dropout, v_avg_pool2d))
    OP(reshape, tg_reshape(ctx, v_add, 2, (int64_t[]){2, 8}))
    OP(dense_forward, tg_dense_forward(ctx, &m->fc, v_reshape, TG_ACT_RELU))
    OP(cross_entropy, tg_cross_entropy(ctx, v_dense_forward, y))
    /* the sequence models: tokens [T=3,N=2] -> [3,2,4] */
    OP(embed_forward, tg_embed_forward(ctx, &m->emb, ids))                    /* [3,2,4] */
    tg_tensor *hn = NULL, *cn = NULL;
    OP(lstm_forward, tg_lstm_forward(ctx, &m->lstm, v_embed_forward, NULL, NULL, &hn, &cn))
    OP(gru_forward, tg_gru_forward(ctx, &m->gru, v_lstm_forward, NULL, NULL)) /* [3,2,2] */
    OP(permute, tg_permute(ctx, v_embed_forward, (int[]){1, 0, 2}))          /* [2,3,4] */
    OP(slice, tg_slice(ctx, v_permute, 1, 1, 3))                              /* [2,2,4] */
    OP(concat, tg_concat(ctx, (tg_tensor *[]){v_permute, v_slice}, 2, 1))   /* [2,5,4] */
    OP(transformer_block_forward, tg_transformer_block_forward(ctx, &m->blk, v_concat, 1))
    OP(layer_norm, tg_layer_norm(ctx, v_transformer_block_forward, NULL, NULL, 1e-5))
    /* a batched product [2,5,4] x [2,4,5] */
    OPN(v_permute_t, "v_permute", tg_permute(ctx, v_layer_norm, (int[]){0, 2, 1}))
    OP(matmul, tg_matmul(ctx, v_layer_norm, v_permute_t))
    /* one more LSTM step by hand from the layer's final state [1,2,3] */
    OPN(v_slice_x0, "v_slice", tg_slice(ctx, v_embed_forward, 0, 0, 1))
    OPN(v_reshape_x0, "v_reshape", tg_reshape(ctx, v_slice_x0, 2, (int64_t[]){2, 4}))
    OPN(v_reshape_h, "v_reshape", tg_reshape(ctx, hn, 2, (int64_t[]){2, 3}))
    OPN(v_reshape_c, "v_reshape", tg_reshape(ctx, cn, 2, (int64_t[]){2, 3}))
    tg_tensor *c1 = NULL;
    OP(lstm_cell, tg_lstm_cell(ctx, v_reshape_x0, v_reshape_h, v_reshape_c,
                                  m->lstm.weight_ih[0], m->lstm.weight_hh[0], NULL, NULL, &c1))
    /* attention as a single head over the normalised block output */
    OPN(v_reshape_q, "v_reshape", tg_reshape(ctx, v_layer_norm, 4, (int64_t[]){2, 1, 5, 4}))
    OP(attention, tg_attention(ctx, v_reshape_q, v_reshape_q, v_reshape_q, 0))
    tg_tensor *parts[] = {v_gru_forward, v_matmul, v_lstm_cell, c1, v_attention};
    tg_tensor *loss = v_cross_entropy;
    for (int i = 0; i < 5; i++) {
        *fn = "tg_mean";
        tg_tensor *m_i = tg_mean(ctx, parts[i]);
        if (!m_i) return NULL;
        *fn = "v_add";
        loss = tg_add(ctx, loss, m_i);
        if (!loss) return NULL;
    }
#undef OP
#undef OPN
    return loss;
}

/* The whole workload; 1 if it ran to the end, 0 if an allocation failed. */
static int workload(tg_ctx *ctx, faulty *F, const model *m) {
    int done = 0;
    tg_optim *opt[TG_OPT_COUNT] = {0};
    tg_dataset *csv = NULL, *idx = NULL, *gz = NULL, *dir = NULL;
    tg_batcher bt = {0};
    const char *fn = "";
    tg_tensor *loss = NULL;

    /* a training step: every op family, then every optimiser */
    STAGE(fn, !(loss = forward(ctx, F, &fn)));
    tg_zero_grad(ctx);
    STAGE("tg_backward", (tg_backward(ctx, loss), !tg_ok(ctx)));
    /* the second-round ops and layers, on top: their gradients add in */
    tg_seed(ctx, 7); /* the same dropout mask in every run */
    STAGE(fn, !(loss = forward2(ctx, m, &fn)));
    /* seeing the model: the tape as a graph, the parameter table */
    FILE *sink = fopen("/dev/null", "w");
    cr_assert_not_null(sink);
    int dot = tg_tape_dot(ctx, sink), summary = tg_summary(ctx, sink);
    fclose(sink);
    STAGE("tg_tape_dot", dot != 0);
    STAGE("tg_summary", summary != 0);
    STAGE("tg_backward", (tg_backward(ctx, loss), !tg_ok(ctx)));
    for (int k = 0; k < TG_OPT_COUNT; k++) {
        tg_optim_opts o = tg_optim_defaults((tg_opt_kind)k);
        if (k == TG_OPT_SGD) o.momentum = 0.9;
        STAGE("tg_optim_new", !(opt[k] = tg_optim_new(ctx, &o, NULL, 0)));
        STAGE("tg_optim_step", tg_optim_step(opt[k]) != 0);
    }
    /* a checkpoint saved and loaded */
    STAGE("tg_save", tg_save(ctx, ckpt) != 0);
    STAGE("tg_load", tg_load(ctx, ckpt) != 0);
    /* every loader, and batches */
    STAGE("tg_load_csv", !(csv = tg_load_csv(ctx, TG_SOURCE_DIR "/tests/data/iris-tiny.csv", NULL)));
    STAGE("tg_load_idx", !(idx = tg_load_idx(ctx, TG_SOURCE_DIR "/tests/data/tiny-images-idx3-ubyte",
                                             TG_SOURCE_DIR "/tests/data/tiny-labels-idx1-ubyte")));
    STAGE("tg_load_idx", !(gz = tg_load_idx(ctx, TG_SOURCE_DIR "/tests/data/tiny-images-idx3-ubyte.gz",
                                            TG_SOURCE_DIR "/tests/data/tiny-labels-idx1-ubyte.gz")));
    STAGE("tg_load_idx_dir", !(dir = tg_load_idx_dir(ctx, idx_dir, "train")));
    STAGE("tg_batcher_init", tg_batcher_init(&bt, ctx, csv, 4, TG_BATCH_SHUFFLE) != 0);
    tg_tensor *bx, *by;
    STAGE("tg_batcher_next", tg_batcher_next(&bt, &bx, &by) != 1);
    /* one tensor through .npy */
    tg_tensor *w_npy = tg_param_find(ctx, "conv.weight");
    STAGE("tg_save_npy", tg_save_npy(ctx, w_npy, npy) != 0);
    STAGE("tg_load_npy", !tg_load_npy(ctx, npy));
    /* the training state: optimiser, batcher, generator */
    int64_t epoch = 0;
    STAGE("tg_resume_save", tg_resume_save(ctx, resume, opt[TG_OPT_ADAM], &bt, 3) != 0);
    STAGE("tg_resume_load", resume_load(ctx, opt[TG_OPT_ADAM], &bt, &epoch) != 0);
    cr_assert_eq(epoch, 3);
    done = 1;
out:
    tg_batcher_free(&bt);
    tg_dataset_free(csv);
    tg_dataset_free(idx);
    tg_dataset_free(gz);
    tg_dataset_free(dir);
    for (int k = 0; k < TG_OPT_COUNT; k++) tg_optim_free(opt[k]);
    return done;
}

Test(fault_injection, every_allocation_of_a_step_a_save_a_load_and_the_loaders) {
    snprintf(ckpt, sizeof ckpt, "/tmp/tg_fault_%ld.safetensors", (long)getpid());
    snprintf(npy, sizeof npy, "/tmp/tg_fault_%ld.npy", (long)getpid());
    snprintf(resume, sizeof resume, "/tmp/tg_fault_%ld.resume", (long)getpid());
    /* a directory with the standard names, for tg_load_idx_dir (gzip'd images) */
    snprintf(idx_dir, sizeof idx_dir, "/tmp/tg_fault_XXXXXX");
    cr_assert_not_null(mkdtemp(idx_dir));
    char im[128], lb[128];
    snprintf(im, sizeof im, "%s/train-images-idx3-ubyte.gz", idx_dir);
    snprintf(lb, sizeof lb, "%s/train-labels-idx1-ubyte", idx_dir);
    cr_assert_eq(symlink(TG_SOURCE_DIR "/tests/data/tiny-images-idx3-ubyte.gz", im), 0);
    cr_assert_eq(symlink(TG_SOURCE_DIR "/tests/data/tiny-labels-idx1-ubyte", lb), 0);
    /* the undisturbed run */
    faulty ref = {0, -1, 0, 0};
    tg_ctx *rc = tg_ctx_new_with_alloc(1, faulty_alloc, &ref);
    model rm;
    setup_params(rc, &rm);
    long base = ref.count;
    cr_assert(workload(rc, &ref, &rm), "%s", tg_errmsg(rc));
    long total = ref.count - base;
    uint64_t want = params_hash(rc);
    tg_ctx_free(rc);
    cr_assert_eq(ref.live, 0, "the reference run leaked %lld bytes", ref.live);

    long covered = 0;
    for (long n = 1; n <= total + 1; n++) {
        faulty F = {0, -1, 0, 0};
        tg_ctx *ctx = tg_ctx_new_with_alloc(1, faulty_alloc, &F);
        model m;
        setup_params(ctx, &m);
        F.fail_at = F.count + n;
        int done = workload(ctx, &F, &m);
        if (!F.failed) {
            cr_assert(done, "no failure injected, yet: %s", tg_errmsg(ctx));
            tg_ctx_free(ctx);
            break;
        }
        covered++;
        /* the failure may have been absorbed (e.g. the arena's resize at
         * reset): then the run completed; otherwise recover and redo it all */
        if (!done) {
            tg_clear_error(ctx);
            tg_reset(ctx);
            /* back to the initial parameters (the step may have run some optimisers) */
            tg_ctx *fresh = tg_ctx_new(1);
            model fm;
            setup_params(fresh, &fm);
            for (int i = 0; i < tg_param_count(ctx); i++)
                memcpy(tg_data(tg_param_at(ctx, i)), tg_data(tg_param_at(fresh, i)),
                       (size_t)tg_numel(tg_param_at(fresh, i)) * 8);
            tg_ctx_free(fresh);
            tg_zero_grad(ctx);
            cr_assert(workload(ctx, &F, &m), "allocation %ld: no recovery: %s", n, tg_errmsg(ctx));
        }
        cr_assert_eq(params_hash(ctx), want, "allocation %ld: parameters differ after recovery", n);
        tg_ctx_free(ctx);
        cr_assert_eq(F.live, 0, "allocation %ld: %lld bytes leaked", n, F.live);
    }
    unlink(ckpt);
    unlink(npy);
    unlink(resume);
    unlink(im);
    unlink(lb);
    rmdir(idx_dir);
    cr_assert_eq(covered, total, "covered %ld of %ld allocations", covered, total);
    printf("fault injection: %ld allocations covered, each failed in turn\n", covered);
    cr_log_info("fault injection: %ld allocations covered", covered);
}

/* ---- the arena's growth inside each second-round op ----
 * The training step above allocates from the arena's chunks, which rarely
 * grow during an op. Here each op runs with the current chunk filled up to
 * `room` free bytes, for every room in steps of TG_ALIGN (64) from 0 to what
 * the op takes, while the allocator fails its next call: each allocation the
 * op makes from the arena is in turn the one that needs a new chunk and
 * fails. The op then returns NULL, its message names it and says out of
 * memory, the tape is as before and batch norm's running statistics too;
 * with room enough it succeeds, and backward runs. */

enum { A_CONV, A_MAXPOOL, A_AVGPOOL, A_LAYERNORM, A_BATCHNORM, A_DROPOUT, A_PERMUTE, A_SLICE,
       A_CONCAT, A_EMBEDDING, A_BMM, A_LSTM, A_GRU, A_ATTENTION, A_CONV_RELU_POOL, A_MLP,
       A_COUNT };
static const char *const arena_fn[A_COUNT] = {
    "tg_conv2d", "tg_max_pool2d", "tg_avg_pool2d", "tg_layer_norm", "tg_batch_norm",
    "tg_dropout", "tg_permute", "tg_slice", "tg_concat", "tg_embedding", "tg_matmul",
    "tg_lstm_cell", "tg_gru_cell", "tg_attention", "tg_conv_relu_pool_forward",
    "tg_mlp_forward"};

static tg_tensor *prm(tg_ctx *ctx, const char *name, int ndim, const int64_t *shape) {
    tg_tensor *t = tg_param(ctx, name, TG_F64, ndim, shape);
    cr_assert_not_null(t, "%s", tg_errmsg(ctx));
    double *d = tg_data(t);
    for (int64_t i = 0; i < tg_numel(t); i++) d[i] = 0.1 * (double)((i * 7) % 13) - 0.6;
    return t;
}

/* the embedding's indices, a temporary made again after each tg_reset */
static tg_tensor *g_idx;

static void reset_with_idx(tg_ctx *ctx) {
    tg_reset(ctx);
    const int32_t iv[5] = {5, 0, 3, 3, 1};
    g_idx = tg_from(ctx, TG_I32, 1, (int64_t[]){5}, iv);
    cr_assert_not_null(g_idx, "%s", tg_errmsg(ctx));
}

static tg_tensor *arena_op(tg_ctx *ctx, int op) {
    tg_tensor *x4 = tg_param_find(ctx, "x4"), *w4 = tg_param_find(ctx, "w4"),
              *b = tg_param_find(ctx, "b3"), *x2 = tg_param_find(ctx, "x2"),
              *h = tg_param_find(ctx, "h"), *q = tg_param_find(ctx, "q");
    tg_tensor *c_new;
    switch (op) {
    case A_CONV: return tg_conv2d(ctx, x4, w4, b, 1, 1);
    case A_MAXPOOL: return tg_max_pool2d(ctx, x4, 2, 1);
    case A_AVGPOOL: return tg_avg_pool2d(ctx, x4, 3, 2);
    case A_LAYERNORM:
        return tg_layer_norm(ctx, x2, tg_param_find(ctx, "g4"), tg_param_find(ctx, "b4"), 1e-5);
    case A_BATCHNORM:
        return tg_batch_norm(ctx, x4, tg_param_find(ctx, "rm"), tg_param_find(ctx, "rv"),
                             tg_param_find(ctx, "g2"), NULL, 1, 0.1, 1e-5);
    case A_DROPOUT: return tg_dropout(ctx, x4, 0.5, 1);
    case A_PERMUTE: return tg_permute(ctx, x4, (int[]){3, 1, 0, 2});
    case A_SLICE: return tg_slice(ctx, x4, 2, 1, 4);
    case A_CONCAT: return tg_concat(ctx, (tg_tensor *[]){x4, x4, x4}, 3, 1);
    case A_EMBEDDING: return tg_embedding(ctx, x2, g_idx);
    case A_BMM: return tg_matmul(ctx, q, tg_param_find(ctx, "qt"));
    case A_LSTM:
        return tg_lstm_cell(ctx, x2, h, h, tg_param_find(ctx, "wi4"), tg_param_find(ctx, "wh4"),
                            tg_param_find(ctx, "bi4"), NULL, &c_new);
    case A_GRU:
        return tg_gru_cell(ctx, x2, h, tg_param_find(ctx, "wi3"), tg_param_find(ctx, "wh3"), NULL,
                           tg_param_find(ctx, "bh3"));
    case A_ATTENTION: return tg_attention(ctx, q, q, q, 1);
    case A_CONV_RELU_POOL: { /* one node: conv 2->3 3x3 pad 1, relu, max pool 2 */
        const tg_conv l = {w4, b, 2, 3, 3, 1, 1};
        return tg_conv_relu_pool_forward(ctx, &l, x4, 2);
    }
    case A_MLP: { /* a small f32 network: one node */
        tg_mlp m = {.n_layers = 2, .act = TG_ACT_TANH, .out_act = TG_ACT_SIGMOID};
        m.layer[0] = (tg_dense){tg_param_find(ctx, "m0.w"), tg_param_find(ctx, "m0.b"), 4, 3};
        m.layer[1] = (tg_dense){tg_param_find(ctx, "m1.w"), tg_param_find(ctx, "m1.b"), 3, 2};
        return tg_mlp_forward(ctx, &m, tg_param_find(ctx, "xf"));
    }
    }
    return NULL;
}

Test(fault_injection, every_arena_growth_inside_the_second_round_ops) {
    long sweeps = 0;
    for (int op = 0; op < A_COUNT; op++) {
        faulty F = {0, -1, 0, 0};
        tg_ctx *ctx = tg_ctx_new_with_alloc(1, faulty_alloc, &F);
        prm(ctx, "x4", 4, (int64_t[]){2, 2, 5, 5});
        prm(ctx, "w4", 4, (int64_t[]){3, 2, 3, 3});
        prm(ctx, "b3", 1, (int64_t[]){3});
        prm(ctx, "x2", 2, (int64_t[]){6, 4});
        prm(ctx, "g4", 1, (int64_t[]){4});
        prm(ctx, "b4", 1, (int64_t[]){4});
        prm(ctx, "g2", 1, (int64_t[]){2});
        tg_tensor *rm = prm(ctx, "rm", 1, (int64_t[]){2}), *rv = prm(ctx, "rv", 1, (int64_t[]){2});
        tg_fill(rv, 1.5);
        tg_set_requires_grad(rm, 0);
        tg_set_requires_grad(rv, 0);
        prm(ctx, "h", 2, (int64_t[]){6, 3});
        prm(ctx, "wi4", 2, (int64_t[]){12, 4});
        prm(ctx, "wh4", 2, (int64_t[]){12, 3});
        prm(ctx, "bi4", 1, (int64_t[]){12});
        prm(ctx, "wi3", 2, (int64_t[]){9, 4});
        prm(ctx, "wh3", 2, (int64_t[]){9, 3});
        prm(ctx, "bh3", 1, (int64_t[]){9});
        prm(ctx, "q", 4, (int64_t[]){2, 2, 5, 3});
        prm(ctx, "qt", 4, (int64_t[]){2, 2, 3, 5});
        const char *f32_names[5] = {"xf", "m0.w", "m0.b", "m1.w", "m1.b"};
        const int64_t f32_shapes[5][2] = {{6, 4}, {3, 4}, {3, 0}, {2, 3}, {2, 0}};
        for (int k = 0; k < 5; k++) {
            tg_tensor *t = tg_param(ctx, f32_names[k], TG_F32, f32_shapes[k][1] ? 2 : 1,
                                    f32_shapes[k]);
            cr_assert_not_null(t, "%s", tg_errmsg(ctx));
            for (int64_t i = 0; i < tg_numel(t); i++)
                ((float *)tg_data(t))[i] = 0.1f * (float)((i * 5) % 7) - 0.3f;
        }
        /* what the op takes from the arena */
        tg_mem_stats st;
        reset_with_idx(ctx);
        tg_mem_stats_get(ctx, &st);
        const size_t used0 = st.arena_used;
        cr_assert_not_null(arena_op(ctx, op), "%s: %s", arena_fn[op], tg_errmsg(ctx));
        tg_mem_stats_get(ctx, &st);
        const size_t need = st.arena_used - used0;
        int failures = 0;
        for (size_t room = 0; room <= need + 64; room += 64) {
            reset_with_idx(ctx);
            tg_tensor *r0 = tg_param_find(ctx, "rm"), *v0 = tg_param_find(ctx, "rv");
            memcpy(tg_data(r0), tg_data(rm), 16); /* (batch norm updated them) */
            tg_mem_stats_get(ctx, &st);
            cr_assert_eq(st.arena_chunks, 1);
            if (st.arena_capacity - st.arena_used > room) {
                size_t fill = (st.arena_capacity - st.arena_used - room) & ~(size_t)63;
                cr_assert_not_null(tg_scratch(ctx, fill));
            }
            const uint64_t h_rm = tg_hash(r0), h_rv = tg_hash(v0);
            const int64_t tape = tg_tape_len(ctx);
            F.failed = 0;
            F.fail_at = F.count + 1;
            tg_tensor *y = arena_op(ctx, op);
            F.fail_at = -1;
            if (!F.failed) {
                cr_assert_not_null(y, "%s (room %zu): %s", arena_fn[op], room, tg_errmsg(ctx));
                continue;
            }
            if (y) { /* the failure fell elsewhere and was absorbed: the op must be whole */
                cr_assert(tg_ok(ctx), "%s (room %zu) returned a result with an error: %s",
                          arena_fn[op], room, tg_errmsg(ctx));
                continue;
            }
            failures++;
            cr_assert(!tg_ok(ctx));
            cr_assert(strncmp(tg_errmsg(ctx), arena_fn[op], strlen(arena_fn[op])) == 0 &&
                          strstr(tg_errmsg(ctx), "out of memory"),
                      "%s (room %zu): %s", arena_fn[op], room, tg_errmsg(ctx));
            cr_assert_eq(tg_tape_len(ctx), tape, "%s (room %zu) left %lld nodes on the tape",
                         arena_fn[op], room, (long long)(tg_tape_len(ctx) - tape));
            cr_assert(tg_hash(r0) == h_rm && tg_hash(v0) == h_rv,
                      "%s (room %zu) changed the running statistics", arena_fn[op], room);
            tg_clear_error(ctx);
        }
        cr_assert(failures > 0, "%s: no allocation failed", arena_fn[op]);
        /* and it still works, backward too */
        reset_with_idx(ctx);
        tg_tensor *y = arena_op(ctx, op);
        cr_assert_not_null(y, "%s", tg_errmsg(ctx));
        tg_backward(ctx, tg_sum(ctx, y));
        cr_assert(tg_ok(ctx), "%s: %s", arena_fn[op], tg_errmsg(ctx));
        sweeps += failures;
        tg_ctx_free(ctx);
        cr_assert_eq(F.live, 0, "%s: %lld bytes leaked", arena_fn[op], F.live);
    }
    printf("fault injection: %ld failed arena growths inside the second-round ops\n", sweeps);
}
