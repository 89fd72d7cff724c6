/* SPDX-License-Identifier: MIT */
/**
 * @file tapegrad.h
 * @brief tapegrad: reverse-mode automatic differentiation for tensors, in C11.
 *
 * A forward pass records every tensor operation on a tape owned by a context
 * (tg_ctx). tg_backward() replays the tape in reverse and applies each op's
 * local gradient, so the backpropagation of any network falls out of the chain
 * rule.
 *
 * Conventions used throughout this header:
 * - Tensors are contiguous, row-major, 0 to 4 dimensions, dtype TG_F32, TG_F64
 *   or TG_I32 (class labels only).
 * - Ownership: every tg_tensor* is owned by its context. Temporaries (op
 *   outputs, tg_new, tg_from) live until tg_reset(); parameters (tg_param)
 *   live until tg_ctx_free(). Never call free() on anything returned here
 *   unless the function's comment says so.
 * - Errors: the first error is recorded in the context (tg_ok, tg_errmsg) with a
 *   message naming the function and the shapes. A failing call returns NULL (or
 *   a non-zero code); every later call that receives NULL returns NULL at once,
 *   so a whole forward pass can be checked with one tg_ok() at the end.
 * - Matmul means C = A B with A [m,k] and B [k,n].
 */
#ifndef TAPEGRAD_H
#define TAPEGRAD_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#ifdef __cplusplus
extern "C" {
#endif

#if defined(TG_BUILDING_LIBRARY) && defined(__GNUC__)
#define TG_API __attribute__((visibility("default")))
#else
#define TG_API
#endif

#if defined(__GNUC__)
#define TG_PRINTF(f, a) __attribute__((format(printf, f, a)))
#else
#define TG_PRINTF(f, a)
#endif

#define TG_MAX_DIMS 4      /**< tensors have 0 to TG_MAX_DIMS dimensions */
#define TG_MAX_INPUTS 8    /**< an op takes 1 to TG_MAX_INPUTS tensor inputs */

/* ======================================================================== */
/** @name Types and context                                                 */
/* ======================================================================== */

typedef enum { TG_F32, TG_F64, TG_I32 } tg_dtype;
typedef struct tg_ctx tg_ctx;
typedef struct tg_tensor tg_tensor;

/** Create a context: tape, arena, parameter list, random generator (seeded
 *  with @p seed), grad mode on, no error. Returns NULL only if out of memory.
 *  Free with tg_ctx_free(). */
TG_API tg_ctx *tg_ctx_new(uint64_t seed);

/** Lua-style allocator: returns a block of @p nsize bytes replacing @p ptr
 *  (of @p osize bytes, NULL if new); frees @p ptr and returns NULL when
 *  @p nsize is 0. Returning NULL for nsize > 0 is an out-of-memory error. */
typedef void *(*tg_alloc_fn)(void *ud, void *ptr, size_t osize, size_t nsize);

/** As tg_ctx_new, with every allocation of this context routed through
 *  @p alloc (the library's one allocation point; useful for fault injection). */
TG_API tg_ctx *tg_ctx_new_with_alloc(uint64_t seed, tg_alloc_fn alloc, void *ud);

/** Free the context and everything it owns (parameters, temporaries, tape). */
TG_API void tg_ctx_free(tg_ctx *ctx);

/* ======================================================================== */
/** @name Errors                                                            */
/* ======================================================================== */

/** 1 while no error has been recorded, else 0. */
TG_API int tg_ok(const tg_ctx *ctx);
/** The first error's message, "" if none. Owned by the context. */
TG_API const char *tg_errmsg(const tg_ctx *ctx);
/** Forget the recorded error, so calls work again. */
TG_API void tg_clear_error(tg_ctx *ctx);
/** Record an error (printf-style) unless one is recorded already. For use
 *  by custom ops, loaders and user code; starts with the function's name by
 *  convention ("myop: ..."). */
TG_API void tg_set_error(tg_ctx *ctx, const char *fmt, ...) TG_PRINTF(2, 3);

/** Called once, at the first error, with its message (e.g. to print a
 *  backtrace or abort while debugging). NULL removes it. */
typedef void (*tg_error_fn)(const tg_ctx *ctx, const char *msg, void *user);
TG_API void tg_set_error_callback(tg_ctx *ctx, tg_error_fn fn, void *user);

/* ======================================================================== */
/** @name Tensors                                                           */
/* ======================================================================== */

/** A temporary of zeros; lives until tg_reset. NULL on error. */
TG_API tg_tensor *tg_new(tg_ctx *ctx, tg_dtype dt, int ndim, const int64_t *shape);
/** A temporary holding a copy of @p data (numel elements of dtype @p dt). */
TG_API tg_tensor *tg_from(tg_ctx *ctx, tg_dtype dt, int ndim, const int64_t *shape,
                          const void *data);
/** A temporary leaf that reads @p data in place instead of copying it (as
 *  PyTorch's from_blob / from_numpy): for an input batch that already sits in
 *  the caller's memory, such as consecutive rows of a dataset. Same lifetime as
 *  any temporary (until tg_reset); until then the caller must keep @p data
 *  allocated and unchanged. tapegrad never writes to it: tg_fill,
 *  tg_fill_uniform, tg_fill_normal and tg_init_tensor refuse such a tensor. Its
 *  gradient, if it requires one, is tapegrad's own memory. @p data must be
 *  aligned to the element size (4 or 8 bytes). NULL on error. */
TG_API tg_tensor *tg_wrap(tg_ctx *ctx, tg_dtype dt, int ndim, const int64_t *shape,
                          const void *data);
/** A 0-dimensional temporary holding @p value. */
TG_API tg_tensor *tg_scalar(tg_ctx *ctx, tg_dtype dt, double value);

/** A parameter: zeros, requires grad, lives until tg_ctx_free. Floating dtypes
 *  only. @p name (copied; may be NULL, then "param<i>") must be unique within
 *  the context. Its gradient storage is reserved with it, so training never
 *  allocates for parameters. */
TG_API tg_tensor *tg_param(tg_ctx *ctx, const char *name, tg_dtype dt, int ndim,
                           const int64_t *shape);
/** Mark a leaf (a tensor made by tg_new/tg_from/tg_param, not by an op) as
 *  requiring a gradient (on = 1) or not (on = 0). On a non-leaf: an error. */
TG_API void tg_set_requires_grad(tg_tensor *t, int on);
/** 1 if gradients flow into @p t. */
TG_API int tg_requires_grad(const tg_tensor *t);

TG_API void *tg_data(const tg_tensor *t);
/** The gradient (same dtype and shape as t), NULL while none has reached t. */
TG_API void *tg_grad(const tg_tensor *t);
TG_API int tg_ndim(const tg_tensor *t);
/** Size of @p axis; negative axes count from the end; 0 if out of range. */
TG_API int64_t tg_dim(const tg_tensor *t, int axis);
/** The shape array (tg_ndim entries), owned by the tensor. */
TG_API const int64_t *tg_shape(const tg_tensor *t);
TG_API int64_t tg_numel(const tg_tensor *t);
TG_API tg_dtype tg_dtype_of(const tg_tensor *t);
/** The tensor's name: the parameter name, "" for temporaries. */
TG_API const char *tg_name(const tg_tensor *t);
/** A one-element tensor's value as a double (NaN if t is NULL or not one element). */
TG_API double tg_item(const tg_tensor *t);
/** XXH3-64 of dtype, shape and data. */
TG_API uint64_t tg_hash(const tg_tensor *t);
/** Writes "[4,3]" (or "[]" for a scalar) into buf; returns buf. */
TG_API char *tg_shape_str(const tg_tensor *t, char *buf, size_t size);
/** Size in bytes of one element of @p dt. */
TG_API size_t tg_dtype_size(tg_dtype dt);
/** "f32", "f64", "i32". */
TG_API const char *tg_dtype_name(tg_dtype dt);

/** Fill @p t's data (no op is recorded) with a constant. */
TG_API void tg_fill(tg_tensor *t, double value);
/** Copy @p t's data into @p dst (numel elements, converted to @p dt). 0 ok. */
TG_API int tg_copy_out(const tg_tensor *t, tg_dtype dt, void *dst);

/* ======================================================================== */
/** @name Parameters                                                        */
/* ======================================================================== */

/** Number of parameters in the context, in creation order. */
TG_API int tg_param_count(const tg_ctx *ctx);
/** The i-th parameter (0-based), NULL if out of range. */
TG_API tg_tensor *tg_param_at(const tg_ctx *ctx, int i);
/** The parameter named @p name, NULL if there is none (not an error). */
TG_API tg_tensor *tg_param_find(const tg_ctx *ctx, const char *name);

/* ======================================================================== */
/** @name Random numbers (seeded, deterministic, per context)               */
/* ======================================================================== */

TG_API uint64_t tg_rand_u64(tg_ctx *ctx);
/** Uniform in [0, 1). */
TG_API double tg_rand_uniform(tg_ctx *ctx);
/** Standard normal. */
TG_API double tg_rand_normal(tg_ctx *ctx);
/** Uniform integer in [0, n). */
TG_API uint64_t tg_rand_below(tg_ctx *ctx, uint64_t n);
/** Fill a float tensor's data with U[lo, hi). */
TG_API void tg_fill_uniform(tg_ctx *ctx, tg_tensor *t, double lo, double hi);
/** Fill a float tensor's data with N(mean, std^2). */
TG_API void tg_fill_normal(tg_ctx *ctx, tg_tensor *t, double mean, double std);
/** Re-seed the context's generator. */
TG_API void tg_seed(tg_ctx *ctx, uint64_t seed);

/* ======================================================================== */
/** @name Ops                                                               */
/* Each op returns a new temporary (NULL on error) and records itself on the
 * tape when grad mode is on and an input requires a gradient. Inputs must
 * share one floating dtype. Local gradients: docs/ops.md.                   */
/* ======================================================================== */

/** C = A B, A [m,k], B [k,n] -> [m,n]; batched: A [...,m,k], B [...,k,n] with
 *  the leading dimensions broadcast -> [...,m,n] (torch.matmul). */
TG_API tg_tensor *tg_matmul(tg_ctx *ctx, tg_tensor *a, tg_tensor *b);
/** x [m,n] + b [n] (b added to every row). */
TG_API tg_tensor *tg_add_bias(tg_ctx *ctx, tg_tensor *x, tg_tensor *b);
/** Elementwise with NumPy broadcasting. */
TG_API tg_tensor *tg_add(tg_ctx *ctx, tg_tensor *a, tg_tensor *b);
TG_API tg_tensor *tg_sub(tg_ctx *ctx, tg_tensor *a, tg_tensor *b);
TG_API tg_tensor *tg_mul(tg_ctx *ctx, tg_tensor *a, tg_tensor *b);
TG_API tg_tensor *tg_div(tg_ctx *ctx, tg_tensor *a, tg_tensor *b);
/** s * x. */
TG_API tg_tensor *tg_scale(tg_ctx *ctx, tg_tensor *x, double s);
TG_API tg_tensor *tg_neg(tg_ctx *ctx, tg_tensor *x);
TG_API tg_tensor *tg_exp(tg_ctx *ctx, tg_tensor *x);
/** Natural log; log of a non-positive value gives -inf/NaN as in C. */
TG_API tg_tensor *tg_log(tg_ctx *ctx, tg_tensor *x);
/** x^p elementwise. */
TG_API tg_tensor *tg_pow(tg_ctx *ctx, tg_tensor *x, double p);
/** Sum of all elements -> 0-dimensional tensor. */
TG_API tg_tensor *tg_sum(tg_ctx *ctx, tg_tensor *x);
/** Mean of all elements -> 0-dimensional tensor. */
TG_API tg_tensor *tg_mean(tg_ctx *ctx, tg_tensor *x);
/** Sum over @p axis (negative counts from the end); keepdim keeps it as size 1. */
TG_API tg_tensor *tg_sum_axis(tg_ctx *ctx, tg_tensor *x, int axis, int keepdim);
/** 2-D transpose [m,n] -> [n,m] (a copy). */
TG_API tg_tensor *tg_transpose(tg_ctx *ctx, tg_tensor *x);
/** Same data, new shape (same numel); one entry may be -1 (inferred). */
TG_API tg_tensor *tg_reshape(tg_ctx *ctx, tg_tensor *x, int ndim, const int64_t *shape);
/** y = x (a copy; gradient passes through). */
TG_API tg_tensor *tg_identity(tg_ctx *ctx, tg_tensor *x);
/** 1 if x >= 0 else 0; its gradient is 0 everywhere (the perceptron's step). */
TG_API tg_tensor *tg_step(tg_ctx *ctx, tg_tensor *x);
/** 1 / (1 + exp(-x)), evaluated without overflow. */
TG_API tg_tensor *tg_sigmoid(tg_ctx *ctx, tg_tensor *x);
/** c / (1 + exp(-beta x)); c and beta one element each, learnable when they
 *  require grad. */
TG_API tg_tensor *tg_sigmoid_scaled(tg_ctx *ctx, tg_tensor *x, tg_tensor *c, tg_tensor *beta);
TG_API tg_tensor *tg_tanh(tg_ctx *ctx, tg_tensor *x);
/** max(x, 0); gradient 1 for x > 0, 0 otherwise. */
TG_API tg_tensor *tg_relu(tg_ctx *ctx, tg_tensor *x);
/** x if x > 0 else slope * x. */
TG_API tg_tensor *tg_leaky_relu(tg_ctx *ctx, tg_tensor *x, double slope);
/** Softmax along the last axis (row maximum subtracted). */
TG_API tg_tensor *tg_softmax(tg_ctx *ctx, tg_tensor *x);
/** log(softmax(x)) along the last axis, computed stably. */
TG_API tg_tensor *tg_log_softmax(tg_ctx *ctx, tg_tensor *x);

/* ---- elementwise and reductions (second round) ----------------------- */

/** sqrt(x); gradient 1 / (2 sqrt(x)) (inf at 0, as PyTorch). */
TG_API tg_tensor *tg_sqrt(tg_ctx *ctx, tg_tensor *x);
/** |x|; gradient sign(x), 0 at 0. */
TG_API tg_tensor *tg_abs(tg_ctx *ctx, tg_tensor *x);
/** min(max(x, lo), hi); gradient 1 inside [lo, hi], else 0. lo <= hi. */
TG_API tg_tensor *tg_clamp(tg_ctx *ctx, tg_tensor *x, double lo, double hi);
/** x Phi(x), the erf form of GELU (F.gelu, approximate='none'). */
TG_API tg_tensor *tg_gelu(tg_ctx *ctx, tg_tensor *x);
/** log(1 + exp(x)) (F.softplus; x for x > 20); gradient sigmoid(x). */
TG_API tg_tensor *tg_softplus(tg_ctx *ctx, tg_tensor *x);
/** Mean over @p axis (negative counts from the end); keepdim keeps it as size 1. */
TG_API tg_tensor *tg_mean_axis(tg_ctx *ctx, tg_tensor *x, int axis, int keepdim);
/** Values of x.max(axis); the gradient goes to the first maximum. */
TG_API tg_tensor *tg_max_axis(tg_ctx *ctx, tg_tensor *x, int axis, int keepdim);

/* ---- shape and indexing ----------------------------------------------- */
/* tg_matmul also takes a [...,m,k] x b [...,k,n], the leading (batch)
 * dimensions broadcast, as torch.matmul for operands of 2 or more dimensions. */

/** x.permute(perm): @p perm has tg_ndim(x) entries, a permutation of 0..ndim-1. */
TG_API tg_tensor *tg_permute(tg_ctx *ctx, tg_tensor *x, const int *perm);
/** x.narrow(axis, start, end - start), a copy; a negative axis counts from the
 *  end; 0 <= start <= end <= size. */
TG_API tg_tensor *tg_slice(tg_ctx *ctx, tg_tensor *x, int axis, int64_t start, int64_t end);
/** torch.cat(xs, axis) of @p n >= 1 tensors of one dtype whose shapes agree
 *  except along @p axis. */
TG_API tg_tensor *tg_concat(tg_ctx *ctx, tg_tensor *const *xs, int n, int axis);
/** F.embedding: weight [V,D], idx TG_I32 of any shape -> idx.shape + [D]; an
 *  index outside [0,V) is an error. */
TG_API tg_tensor *tg_embedding(tg_ctx *ctx, tg_tensor *weight, tg_tensor *idx);

/* ---- convolution and pooling, NCHW ------------------------------------ */

/** F.conv2d: x [N,C,H,W], w [O,C,kh,kw], b [O] or NULL -> [N,O,Ho,Wo],
 *  Ho = (H + 2 padding - kh) / stride + 1 (likewise Wo); zero padding. */
TG_API tg_tensor *tg_conv2d(tg_ctx *ctx, tg_tensor *x, tg_tensor *w, tg_tensor *b, int stride,
                            int padding);
/** F.max_pool2d(x, kernel, stride), no padding; the gradient goes to the first
 *  maximum of each window. */
TG_API tg_tensor *tg_max_pool2d(tg_ctx *ctx, tg_tensor *x, int kernel, int stride);
/** F.avg_pool2d(x, kernel, stride), no padding. */
TG_API tg_tensor *tg_avg_pool2d(tg_ctx *ctx, tg_tensor *x, int kernel, int stride);

/* ---- normalisation and regularisation --------------------------------- */

/** F.layer_norm(x, (D,), weight, bias, eps) over the last axis (size D);
 *  weight and bias [D] or NULL. */
TG_API tg_tensor *tg_layer_norm(tg_ctx *ctx, tg_tensor *x, tg_tensor *weight, tg_tensor *bias,
                                double eps);
/** F.batch_norm: x [N,C] or [N,C,H,W]. Training: the batch statistics normalise
 *  (biased variance) and running_mean/running_var [C] are updated in place
 *  (unbiased variance, r = (1 - momentum) r + momentum batch); they may be NULL
 *  (nothing updated). Eval: the running statistics normalise (required).
 *  weight, bias [C] or NULL. */
TG_API tg_tensor *tg_batch_norm(tg_ctx *ctx, tg_tensor *x, tg_tensor *running_mean,
                                tg_tensor *running_var, tg_tensor *weight, tg_tensor *bias,
                                int training, double momentum, double eps);
/** Inverted dropout from the context's generator: each element is 0 with
 *  probability p, else x / (1 - p); identity when !training or p == 0.
 *  p in [0, 1). */
TG_API tg_tensor *tg_dropout(tg_ctx *ctx, tg_tensor *x, double p, int training);

/* ---- recurrent cells, PyTorch's layouts and gate orders ---------------- */

/** nn.LSTMCell: x [N,in], h and c [N,H], w_ih [4H,in], w_hh [4H,H], biases
 *  [4H] or NULL, gates i,f,g,o. Returns h' and sets *c_out = c'. */
TG_API tg_tensor *tg_lstm_cell(tg_ctx *ctx, tg_tensor *x, tg_tensor *h, tg_tensor *c,
                               tg_tensor *w_ih, tg_tensor *w_hh, tg_tensor *b_ih,
                               tg_tensor *b_hh, tg_tensor **c_out);
/** nn.GRUCell: x [N,in], h [N,H], w_ih [3H,in], w_hh [3H,H], biases [3H] or
 *  NULL, gates r,z,n. Returns h'. */
TG_API tg_tensor *tg_gru_cell(tg_ctx *ctx, tg_tensor *x, tg_tensor *h, tg_tensor *w_ih,
                              tg_tensor *w_hh, tg_tensor *b_ih, tg_tensor *b_hh);

/* ---- attention --------------------------------------------------------- */

/** softmax(q k^T / sqrt(D)) v: q [B,H,T,D], k and v [B,H,S,D] -> [B,H,T,D];
 *  when @p causal, position j > i is masked out (then T == S). */
TG_API tg_tensor *tg_attention(tg_ctx *ctx, tg_tensor *q, tg_tensor *k, tg_tensor *v,
                               int causal);

/* ---- losses: mean over the batch, a one-element (0-dimensional) result -- */

/** mean((pred - target)^2). The 1/(2N) convention: tg_scale(ctx, tg_mse(..), 0.5). */
TG_API tg_tensor *tg_mse(tg_ctx *ctx, tg_tensor *pred, tg_tensor *target);
/** mean(|pred - target|); gradient sign(p - t), 0 at p == t. */
TG_API tg_tensor *tg_l1(tg_ctx *ctx, tg_tensor *pred, tg_tensor *target);
/** Fused log-softmax + negative log-likelihood: logits [N,C]; target TG_I32 [N]
 *  class indices in [0,C), or [N,C] probabilities (same dtype as logits).
 *  Mean over N. Gradient wrt logits: (softmax - target) / N. */
TG_API tg_tensor *tg_cross_entropy(tg_ctx *ctx, tg_tensor *logits, tg_tensor *target);
/** Binary cross-entropy on probabilities, mean over all elements. The
 *  probabilities are clamped into [1e-7, 1 - 1e-7] (f32) or [1e-12, 1 - 1e-12]
 *  (f64) before the log, so 0 and 1 give large finite losses, not inf. */
TG_API tg_tensor *tg_bce(tg_ctx *ctx, tg_tensor *prob, tg_tensor *target);
/** Binary cross-entropy on logits: mean of max(x,0) - x t + log(1 + exp(-|x|)). */
TG_API tg_tensor *tg_bce_with_logits(tg_ctx *ctx, tg_tensor *logits, tg_tensor *target);

/* ---- fused layers ------------------------------------------------------ */

/** Activation selector for fused and layer APIs. */
typedef enum {
    TG_ACT_NONE,
    TG_ACT_RELU,
    TG_ACT_TANH,
    TG_ACT_SIGMOID,
    TG_ACT_LEAKY_RELU, /* slope 0.01 */
    TG_ACT_COUNT
} tg_act;

/** act(x W + b): x [m,in], W [in,out], b [out] or NULL. One node on the tape;
 *  same values and gradients as tg_matmul, tg_add_bias and the activation. */
TG_API tg_tensor *tg_linear(tg_ctx *ctx, tg_tensor *x, tg_tensor *w, tg_tensor *b, tg_act act);
/** Apply an activation by selector (TG_ACT_NONE returns x itself). */
TG_API tg_tensor *tg_activate(tg_ctx *ctx, tg_tensor *x, tg_act act);

/* ======================================================================== */
/** @name Backward and modes                                               */
/* ======================================================================== */

/** Backpropagate from @p loss (one element): seeds d loss/d loss = 1 and walks
 *  the tape from loss's node down to the first, adding into every grad. */
TG_API void tg_backward(tg_ctx *ctx, tg_tensor *loss);
/** Every parameter's grad to 0, as PyTorch 1.13's zero_grad(): a grad that
 *  exists stays allocated (tg_grad() non-NULL) and holds zeros. */
TG_API void tg_zero_grad(tg_ctx *ctx);
/** Drop the tape and all temporaries; keeps the memory for the next step. */
TG_API void tg_reset(tg_ctx *ctx);
/** on = 1: stop recording (inference); on = 0: record. Returns the previous
 *  setting of "no grad" (1 if recording was off). */
TG_API int tg_no_grad(tg_ctx *ctx, int on);
/** on = 1 (the default): training mode; on = 0: evaluation mode, as
 *  nn.Module.train() / eval(). The layers that differ between the two
 *  (dropout, batch norm) read it. Returns the previous mode. */
TG_API int tg_train_mode(tg_ctx *ctx, int on);
/** 1 in training mode (the default), 0 in evaluation mode. */
TG_API int tg_is_training(const tg_ctx *ctx);
/** Anomaly mode, as PyTorch's detect_anomaly: with on = 1 the first op whose
 *  forward or backward produces a NaN or an infinity records an error naming
 *  the op, its tape node and the shapes ("tg_detect_anomaly: backward of log
 *  (node 3) produced a NaN at element 5 of the gradient of input 0 [4,3]").
 *  An op's output is checked as its forward returns (then the op returns
 *  NULL), or for the ops that record before they compute when the next op is
 *  recorded and before tg_backward walks the tape (docs/reliability.md). Every value
 *  is read once more, so it is for debugging. Off by default (and then costs a
 *  branch). Returns the previous setting. */
TG_API int tg_detect_anomaly(tg_ctx *ctx, int on);

/** Number of nodes on the tape. */
TG_API int64_t tg_tape_len(const tg_ctx *ctx);
/** Print the tape, one node a line (op, input and output shapes), to @p f. */
TG_API void tg_tape_print(const tg_ctx *ctx, FILE *f);

/** Memory figures of a context. */
typedef struct {
    size_t arena_capacity;   /**< bytes reserved by the arena */
    size_t arena_used;       /**< bytes in use now */
    size_t arena_peak;       /**< most bytes ever in use */
    size_t arena_chunks;     /**< chunks the arena holds */
    uint64_t arena_grows;    /**< times the arena asked the allocator for memory */
    size_t param_bytes;      /**< data + grad of every parameter */
    int64_t tape_capacity;   /**< nodes the tape can hold without growing */
} tg_mem_stats;
TG_API void tg_mem_stats_get(const tg_ctx *ctx, tg_mem_stats *out);

/** Threads used by GEMM and large elementwise kernels (default: the cores
 *  available). Results are bit-identical whatever the count. Returns 0. */
TG_API int tg_set_threads(tg_ctx *ctx, int n);
TG_API int tg_get_threads(const tg_ctx *ctx);

/* ======================================================================== */
/** @name Custom ops                                                        */
/* A user op is defined exactly as the built-in ones are: a tg_op with a
 * forward and a backward, applied with tg_apply. See docs/guide.md and
 * examples/custom_op.c.                                                      */
/* ======================================================================== */

/** One application of an op: what forward and backward see. It is also the
 *  tape node. */
typedef struct tg_op_call {
    const struct tg_op *op;
    tg_ctx *ctx;
    tg_tensor *out;                  /**< the output (data allocated before forward) */
    tg_tensor *in[TG_MAX_INPUTS];    /**< the inputs */
    int n_in;
    const void *attr;                /**< copy of the attributes given to tg_apply */
    void *saved;                     /**< forward may point this at tg_scratch memory */
} tg_op_call;

typedef struct tg_op {
    const char *name;
    /** Compute call->out's data from the inputs. Return 0, or report with
     *  tg_set_error and return -1. */
    int (*forward)(tg_op_call *call);
    /** Add (never assign) d loss/d in[i] into tg_grad_acc(call->in[i]) for each
     *  input with tg_requires_grad(call->in[i]); tg_grad(call->out) is d loss/d out.
     *  NULL: the op has no gradient (like tg_step). */
    void (*backward)(tg_op_call *call);
} tg_op;

/** Apply @p op to @p n inputs: checks them (non-NULL, same context), makes the
 *  output (zeros, dtype @p dt, shape @p ndim/@p shape), copies @p attr_size
 *  bytes of @p attr, runs forward, and records the call when a gradient is
 *  needed. Attributes of up to 64 bytes are kept in the tape node itself (no
 *  arena memory, as for the built-in ops, which take this same path), larger
 *  ones in the arena; call->attr is 8-byte aligned either way. A forward that
 *  fails leaves nothing on the tape. Returns the output or NULL. */
TG_API tg_tensor *tg_apply(tg_ctx *ctx, const tg_op *op, tg_tensor *const *inputs, int n,
                           tg_dtype dt, int ndim, const int64_t *shape,
                           const void *attr, size_t attr_size);
/** Inside backward: the gradient buffer of @p t, allocated and zeroed on first
 *  use; add into it. */
TG_API void *tg_grad_acc(tg_tensor *t);
/** Arena memory (64-byte aligned, uninitialised) living until tg_reset; for
 *  what forward saves for backward. NULL on out of memory (error recorded). */
TG_API void *tg_scratch(tg_ctx *ctx, size_t bytes);

/* ======================================================================== */
/** @name Gradient checking                                                 */
/* ======================================================================== */

/** A function of tensors to check: builds its output from inputs with ops. */
typedef tg_tensor *(*tg_fn)(tg_ctx *ctx, tg_tensor *const *inputs, void *user);
/** Finite-difference step and tolerances; 0 -> 1e-6, 1e-5, 1e-3. */
typedef struct { double eps, atol, rtol; } tg_gradcheck_opts;
/** Compare fn's analytic gradients with central differences, for every element
 *  of every input (TG_F64 inputs) and, when the output has several elements,
 *  for every output element (the full Jacobian). Passes when
 *  |analytic - numeric| <= atol + rtol * |numeric| everywhere. Returns 1 on
 *  pass; 0 on failure, the reason (input, element, analytic, numeric) in
 *  tg_errmsg. Inputs may be temporaries or parameters; they, their grads and
 *  the tape recorded before the call are as they were afterwards. */
TG_API int tg_gradcheck(tg_ctx *ctx, tg_fn fn, void *user, tg_tensor *const *inputs, int n,
                        const tg_gradcheck_opts *opts);

/* ======================================================================== */
/** @name Checkpoints                                                       */
/* ======================================================================== */

/** Save every parameter, by name, as a safetensors file, atomically (temporary
 *  file, fsync, rename). 0 ok, -1 error (recorded). */
TG_API int tg_save(tg_ctx *ctx, const char *path);
/** Load every parameter by name; all or nothing (validated before any
 *  parameter is touched). 0 ok, -1 error (recorded, parameters unchanged). */
TG_API int tg_load(tg_ctx *ctx, const char *path);

/* ======================================================================== */
/** @name Checkpoint extras                                                 */
/* ======================================================================== */
/* File layout, validation and reading from Python: docs/checkpoints.md.
 * Like every function, these do nothing and return -1 (or NULL) while an
 * error is recorded in the context: tg_clear_error() first. */

/** As tg_save, and also store @p n extra string metadata entries
 *  (keys[i] = values[i], UTF-8, copied into the file's "__metadata__"), e.g.
 *  the network's architecture. Keys must be non-empty and distinct; "format"
 *  and keys starting with "tapegrad." are reserved (tapegrad writes them).
 *  @p keys and @p values may be NULL when @p n is 0. 0 ok, -1 error (recorded;
 *  a previous file at @p path is left intact). */
TG_API int tg_save_meta(tg_ctx *ctx, const char *path, const char *const *keys,
                        const char *const *values, int n);

/** Flags of tg_load_ex (tg_load uses 0: strict). */
enum {
    TG_LOAD_ALLOW_MISSING = 1, /**< parameters absent from the file keep their values */
    TG_LOAD_ALLOW_EXTRA = 2    /**< tensors of the file that are not parameters are
                                    ignored, whatever their dtype (I64, U8, ...; they
                                    are still validated) */
};

/** As tg_load, with @p flags (TG_LOAD_ALLOW_MISSING | TG_LOAD_ALLOW_EXTRA, or
 *  0). A tensor whose name matches a parameter must still match its dtype and
 *  shape; F16 and BF16 tensors load into F32 and F64 parameters, converted.
 *  All or nothing: 0 ok, -1 error (recorded, parameters unchanged). */
TG_API int tg_load_ex(tg_ctx *ctx, const char *path, int flags);

/** The value of metadata @p key in the checkpoint at @p path ("format",
 *  "tapegrad.xxh3", or a key given to tg_save_meta). The header is read and
 *  validated as tg_load does (not the data checksum; no parameter is touched).
 *  Returns a malloc'd copy that the caller releases with free() (it does not
 *  come from the context's allocator); NULL if the key is absent (no error
 *  recorded: tg_ok stays 1) or on error (recorded). */
TG_API char *tg_checkpoint_meta(tg_ctx *ctx, const char *path, const char *key);

/* ---- seeing a model (src/toolkit/inspect.c) ---- */

/** Print a table of the context's parameters to @p f: name, shape, dtype,
 *  element count and bytes, one line each in creation order, then the totals
 *  (values, trainable values, MiB). 0 ok, -1 on a write error or NULL @p f
 *  (recorded). Reads only. */
TG_API int tg_summary(tg_ctx *ctx, FILE *f);
/** Write the tape recorded since the last tg_reset to @p f as a Graphviz DOT
 *  graph (render with `dot -Tsvg`): a box per op ("#index name", output dtype and
 *  shape), an ellipse per leaf (parameters by name in bold, other inputs by dtype
 *  and shape), edges from inputs to ops; tensors that need a gradient are drawn
 *  solid, the others dashed. 0 ok, -1 on error (recorded). Reads only. */
TG_API int tg_tape_dot(tg_ctx *ctx, FILE *f);

/* ---- interop: one tensor to and from NumPy (src/toolkit/npy.c; docs/interop.md) ---- */

/** Write @p t to @p path as a NumPy .npy file (format 1.0, little-endian, C
 *  order: '<f4', '<f8' or '<i4'), which np.load reads. 0 ok, -1 error
 *  (recorded; a partly written file is removed). */
TG_API int tg_save_npy(tg_ctx *ctx, const tg_tensor *t, const char *path);
/** Read a .npy file (format 1.0 to 3.0, float32, float64 or int32, either byte
 *  order, C order, at most TG_MAX_DIMS dimensions) as a new tensor of that
 *  dtype and shape. Returns a temporary (lives until tg_reset; copy it into a
 *  parameter with memcpy on tg_data), or NULL on error (recorded, naming the
 *  file and what was wrong). */
TG_API tg_tensor *tg_load_npy(tg_ctx *ctx, const char *path);

/* ======================================================================== */
/** @name Layers and optimisers                                             */
/* ======================================================================== */

/* ======================================================================== */
/** @name Initialisation                                                    */
/* Formulas as torch.nn.init (docs/nn.md). Random draws come from the
 * context's seeded generator, so a seed gives the same weights every run.   */
/* ======================================================================== */

/** Weight initialisation schemes. */
typedef enum {
    TG_INIT_ZEROS,           /**< all 0 */
    TG_INIT_XAVIER_UNIFORM,  /**< U(-a, a), a = gain sqrt(6 / (fan_in + fan_out)) */
    TG_INIT_XAVIER_NORMAL,   /**< N(0, s^2), s = gain sqrt(2 / (fan_in + fan_out)) */
    TG_INIT_HE_UNIFORM,      /**< U(-a, a), a = gain sqrt(3 / fan_in) (kaiming_uniform_) */
    TG_INIT_HE_NORMAL,       /**< N(0, s^2), s = gain / sqrt(fan_in) (kaiming_normal_) */
    TG_INIT_COUNT
} tg_init;

/** Fill float tensor @p w's data (no op recorded) by scheme @p kind with
 *  fan-in @p fan_in and fan-out @p fan_out (both > 0; for a weight [in,out]
 *  they are in and out). @p gain 0 picks the scheme's default: 1 for Xavier,
 *  sqrt(2) (ReLU) for He; otherwise it must be positive and finite. Ignored
 *  for TG_INIT_ZEROS. Returns 0, or -1 with the error recorded in @p ctx. */
TG_API int tg_init_tensor(tg_ctx *ctx, tg_tensor *w, tg_init kind, int64_t fan_in,
                          int64_t fan_out, double gain);
/** The recommended gain for an activation, as torch.nn.init.calculate_gain:
 *  1 for none and sigmoid, 5/3 for tanh, sqrt(2) for relu,
 *  sqrt(2 / (1 + 0.01^2)) for leaky relu (slope 0.01). NaN for an unknown act. */
TG_API double tg_init_gain(tg_act act);
/** "zeros", "xavier_uniform", "xavier_normal", "he_uniform", "he_normal";
 *  "?" for an unknown value. A static string. */
TG_API const char *tg_init_name(tg_init kind);

/* ======================================================================== */
/** @name Layers                                                            */
/* Layers are thin: their forward is made of ops, their backward comes from
 * the tape. The structs are plain values the caller owns (on the stack or
 * inside its own structs); the tensors they point at are parameters owned by
 * the context and live until tg_ctx_free. There is nothing to free.          */
/* ======================================================================== */

/** A dense (fully connected) layer: y = act(x W^T + b), as torch.nn.Linear:
 *  the weight is kept [out,in], so its checkpoint is nn.Linear's state_dict. */
typedef struct {
    tg_tensor *weight;   /**< [out,in] parameter "<name>.weight", owned by the ctx */
    tg_tensor *bias;     /**< [out] parameter "<name>.bias", owned by the ctx */
    int64_t in, out;
} tg_dense;

/** Create the parameters of @p d: "<name>.weight" [out,in] initialised by
 *  @p init (gain 0: the scheme's default, see tg_init_tensor), and
 *  "<name>.bias" [out] set to zeros (tapegrad's choice; PyTorch's nn.Linear
 *  draws the bias from U(-1/sqrt(in), 1/sqrt(in)) instead). @p name NULL:
 *  the parameters get automatic names ("param<i>"). @p dt is TG_F32 or
 *  TG_F64. Returns 0, or -1 with the error recorded (then @p d is zeroed; a
 *  weight already created stays in the context). */
TG_API int tg_dense_init(tg_ctx *ctx, tg_dense *d, const char *name, int64_t in,
                         int64_t out, tg_dtype dt, tg_init init);
/** act(x W^T + b) for x [m,in] -> [m,out], one linear node on the tape (the
 *  same op as tg_linear, reading the [out,in] weight transposed in place).
 *  Returns a temporary (lives until tg_reset), or NULL on error. */
TG_API tg_tensor *tg_dense_forward(tg_ctx *ctx, const tg_dense *d, tg_tensor *x, tg_act act);

#define TG_MLP_MAX_LAYERS 16 /**< most dense layers in a tg_mlp */

/** A multilayer perceptron: dense layers with @c act between them and
 *  @c out_act after the last (TG_ACT_NONE as tg_mlp_init leaves it: the forward
 *  pass returns logits). */
typedef struct {
    int n_layers;
    tg_dense layer[TG_MLP_MAX_LAYERS];
    tg_act act;          /**< activation of the hidden layers */
    tg_act out_act;      /**< activation after the last layer (tg_mlp_init: TG_ACT_NONE); set
                              it to fuse, e.g., a sigmoid output into the last layer's node */
} tg_mlp;

/** Create an MLP with widths[0] inputs, widths[n_widths-1] outputs and
 *  n_widths - 1 dense layers (1 to TG_MLP_MAX_LAYERS) named "<prefix>1",
 *  "<prefix>2", ... (@p prefix NULL: "fc"), so the parameters are
 *  "fc1.weight", "fc1.bias", "fc2.weight", ... A prefix "" or ending in '.'
 *  gives the names of the equivalent nn.Sequential(Linear, act, Linear, ...):
 *  "0.weight", "2.weight", ... (or "body.0.weight", ... for "body."). Weights are initialised from
 *  @p act with its tg_init_gain: He uniform for relu and leaky relu, Xavier
 *  uniform for tanh, sigmoid and none; biases are zeros. Returns 0, or -1
 *  with the error recorded (then @p m is zeroed; layers created before the
 *  failure stay in the context). */
TG_API int tg_mlp_init(tg_ctx *ctx, tg_mlp *m, const char *prefix, int n_widths,
                       const int64_t *widths, tg_act act, tg_dtype dt);
/** As tg_mlp_init, with every weight initialised by @p init (gain: the
 *  scheme's default) instead of the choice made from @p act. */
TG_API int tg_mlp_init_ex(tg_ctx *ctx, tg_mlp *m, const char *prefix, int n_widths,
                          const int64_t *widths, tg_act act, tg_dtype dt, tg_init init);
/** x [m,widths[0]] -> logits [m,widths[last]]: each layer's tg_dense_forward,
 *  with m->act on the hidden layers and m->out_act (none unless the caller set
 *  it) on the last. Returns a temporary (lives until tg_reset), or NULL on error. */
TG_API tg_tensor *tg_mlp_forward(tg_ctx *ctx, const tg_mlp *m, tg_tensor *x);
/** Write the MLP's parameters (weight then bias, layer by layer: 2 n_layers
 *  of them) into @p out, which has room for @p cap. Returns the number of
 *  parameters (also when it exceeds cap: then only cap are written), -1 if
 *  @p m is NULL. The tensors are owned by the context. */
TG_API int tg_mlp_params(const tg_mlp *m, tg_tensor **out, int cap);

/* The layers of CNNs, recurrent networks and transformers follow. Each is a
 * plain struct like tg_dense, with an _init that creates its parameters under
 * the names the equivalent torch.nn module gives them, in PyTorch's layouts and
 * with PyTorch's default initialisation, and a _forward made of ops. */

/* ---- layers: convolution (src/toolkit/layers_conv.c) ---- */

/** A 2-D convolution layer, nn.Conv2d(in_ch, out_ch, kernel, stride, padding, bias). */
typedef struct {
    tg_tensor *weight;   /**< [out_ch,in_ch,kernel,kernel] parameter "<name>.weight", owned by the ctx */
    tg_tensor *bias;     /**< [out_ch] parameter "<name>.bias" (owned by the ctx), or NULL */
    int64_t in_ch, out_ch;
    int kernel, stride, padding;
} tg_conv;

/** Create the parameters of @p l as nn.Conv2d does: "<name>.weight"
 *  [out_ch,in_ch,kernel,kernel] and, when @p bias is non-zero,
 *  "<name>.bias" [out_ch], both drawn from U(-1/sqrt(fan_in), 1/sqrt(fan_in))
 *  with fan_in = in_ch kernel^2 (PyTorch's default: kaiming_uniform with
 *  a = sqrt(5) for the weight). @p name NULL: automatic names. Needs
 *  in_ch, out_ch, kernel, stride >= 1 and padding >= 0; @p dt TG_F32 or
 *  TG_F64. Returns 0, or -1 with the error recorded (then @p l is zeroed). */
TG_API int tg_conv_init(tg_ctx *ctx, tg_conv *l, const char *name, int64_t in_ch,
                        int64_t out_ch, int kernel, int stride, int padding, int bias,
                        tg_dtype dt);
/** tg_conv2d(x, weight, bias, stride, padding): x [N,in_ch,H,W] ->
 *  [N,out_ch,Ho,Wo]. Returns a temporary (lives until tg_reset), or NULL on error. */
TG_API tg_tensor *tg_conv_forward(tg_ctx *ctx, const tg_conv *l, tg_tensor *x);
/** The layer, then relu, then a max pool of pool x pool windows (stride pool):
 *  F.max_pool2d(F.relu(conv(x)), pool), the block of a LeNet-style network,
 *  as one tape node (stride-1 layers; others compose the three ops): the
 *  values and gradients of the three ops, without storing the convolution's
 *  output. x [N,in_ch,H,W] -> [N,out_ch,Ho/pool,Wo/pool] (rounded down).
 *  Returns a temporary (lives until tg_reset), or NULL on error. */
TG_API tg_tensor *tg_conv_relu_pool_forward(tg_ctx *ctx, const tg_conv *l, tg_tensor *x,
                                            int pool);

/* ---- layers: normalisation and dropout (src/toolkit/layers_norm.c) ---- */

/** nn.LayerNorm(dim): normalises the last axis (size @p dim) of its input,
 *  y = (x - mean) / sqrt(var + eps) weight + bias (tg_layer_norm). */
typedef struct {
    tg_tensor *weight;   /**< [dim] parameter "<name>.weight", ones; owned by the ctx */
    tg_tensor *bias;     /**< [dim] parameter "<name>.bias", zeros; owned by the ctx */
    int64_t dim;
    double eps;          /**< 1e-5 (PyTorch's default); may be changed */
} tg_layernorm;

/** Create the parameters of @p ln as nn.LayerNorm(dim) does: "<name>.weight"
 *  ones and "<name>.bias" zeros, both [dim] (@p name NULL: automatic names),
 *  eps 1e-5. @p dt is TG_F32 or TG_F64. Returns 0, or -1 with the error
 *  recorded (then @p ln is zeroed). */
TG_API int tg_layernorm_init(tg_ctx *ctx, tg_layernorm *ln, const char *name, int64_t dim,
                             tg_dtype dt);
/** tg_layer_norm(x, weight, bias, eps) over x's last axis, which must have
 *  size dim: x [..., dim] -> x's shape. A temporary, or NULL on error. */
TG_API tg_tensor *tg_layernorm_forward(tg_ctx *ctx, const tg_layernorm *ln, tg_tensor *x);

/** nn.BatchNorm1d(C) on [N,C] / nn.BatchNorm2d(C) on [N,C,H,W]: in training
 *  mode (tg_train_mode) the batch statistics normalise and update the running
 *  statistics; in evaluation mode the running statistics normalise. */
typedef struct {
    tg_tensor *weight;        /**< [C] parameter "<name>.weight", ones */
    tg_tensor *bias;          /**< [C] parameter "<name>.bias", zeros */
    tg_tensor *running_mean;  /**< [C] "<name>.running_mean", zeros; state: no gradient */
    tg_tensor *running_var;   /**< [C] "<name>.running_var", ones; state: no gradient */
    int64_t channels;
    double momentum;          /**< 0.1: r = (1 - momentum) r + momentum batch */
    double eps;               /**< 1e-5 */
} tg_batchnorm;

/** Create the parameters of @p bn as nn.BatchNorm2d(channels) does, under
 *  its state_dict names: "<name>.weight" ones, "<name>.bias" zeros,
 *  "<name>.running_mean" zeros, "<name>.running_var" ones, all [channels]
 *  (@p name NULL: automatic names); momentum 0.1, eps 1e-5. The running
 *  statistics are parameters so that tg_save/tg_load carry them, with their
 *  gradient turned off (tg_set_requires_grad(t, 0)): backward never reaches
 *  them and the optimisers leave them alone. PyTorch's num_batches_tracked
 *  is not kept (docs/nn.md). Returns 0, or -1 with the error recorded (then
 *  @p bn is zeroed; parameters created before the failure stay). */
TG_API int tg_batchnorm_init(tg_ctx *ctx, tg_batchnorm *bn, const char *name, int64_t channels,
                             tg_dtype dt);
/** tg_batch_norm(x, running_mean, running_var, weight, bias,
 *  tg_is_training(ctx), momentum, eps): x [N,C] or [N,C,H,W] -> x's shape.
 *  In training mode it updates the running statistics in place. A temporary,
 *  or NULL on error (then nothing is updated). */
TG_API tg_tensor *tg_batchnorm_forward(tg_ctx *ctx, const tg_batchnorm *bn, tg_tensor *x);

/** nn.Dropout(p): tg_dropout(x, p, tg_is_training(ctx)), so a model's forward
 *  drops in training mode and is the identity in evaluation mode. */
TG_API tg_tensor *tg_dropout_forward(tg_ctx *ctx, tg_tensor *x, double p);

/* ---- layers: embedding (src/toolkit/layers_embed.c) ---- */

/** An embedding table, nn.Embedding: token v's vector is row v of the weight. */
typedef struct {
    tg_tensor *weight;   /**< [num,dim] parameter "<name>.weight", owned by the ctx */
    int64_t num, dim;    /**< number of tokens, width of each vector */
} tg_embed;

/** Create the parameter of @p e: "<name>.weight" [num,dim] drawn from
 *  N(0, 1) as nn.Embedding does (@p name NULL: an automatic name). @p num is
 *  1 to INT32_MAX (indices are i32), @p dim > 0, @p dt TG_F32 or TG_F64.
 *  Returns 0, or -1 with the error recorded (then @p e is zeroed). */
TG_API int tg_embed_init(tg_ctx *ctx, tg_embed *e, const char *name, int64_t num, int64_t dim,
                         tg_dtype dt);
/** idx TG_I32 of any shape (up to 3 dims), every entry in [0, num) ->
 *  idx.shape + [dim], one tg_embedding node. Returns a temporary (lives
 *  until tg_reset), or NULL on error. */
TG_API tg_tensor *tg_embed_forward(tg_ctx *ctx, const tg_embed *e, tg_tensor *idx);

/* ---- layers: recurrent (src/toolkit/layers_rnn.c) ---- */

#define TG_RNN_MAX_LAYERS 8 /**< most stacked layers in a tg_lstm or tg_gru */

/** A stack of recurrent layers over a sequence: nn.LSTM or nn.GRU with
 *  num_layers, batch_first=False, no dropout, one direction. tg_lstm and tg_gru
 *  are this struct; @c gates says which (4: LSTM, 3: GRU). Layer l's parameters
 *  are "<name>.weight_ih_l<l>" [gH,in_l], "<name>.weight_hh_l<l>" [gH,H],
 *  "<name>.bias_ih_l<l>" and "<name>.bias_hh_l<l>" [gH] (in_0 = input_size, else
 *  H), nn.LSTM's state_dict names and layouts; owned by the ctx. */
typedef struct {
    int64_t input_size, hidden_size;
    int num_layers;
    int gates;  /**< 4 for an LSTM (i,f,g,o), 3 for a GRU (r,z,n) */
    tg_tensor *weight_ih[TG_RNN_MAX_LAYERS], *weight_hh[TG_RNN_MAX_LAYERS];
    tg_tensor *bias_ih[TG_RNN_MAX_LAYERS], *bias_hh[TG_RNN_MAX_LAYERS]; /**< NULL without bias */
} tg_rnn;
typedef tg_rnn tg_lstm; /**< made by tg_lstm_init */
typedef tg_rnn tg_gru;  /**< made by tg_gru_init */

/** Create an LSTM's parameters (see tg_rnn) with num_layers 1 to
 *  TG_RNN_MAX_LAYERS, biases when @p bias, every one drawn from
 *  U(-1/sqrt(H), 1/sqrt(H)) as PyTorch does. @p name NULL: the bare names of a
 *  standalone nn.LSTM ("weight_ih_l0", ...). Returns 0, or -1 with the error
 *  recorded (then @p m is zeroed). */
TG_API int tg_lstm_init(tg_ctx *ctx, tg_lstm *m, const char *name, int64_t input_size,
                        int64_t hidden_size, int num_layers, int bias, tg_dtype dt);
/** nn.LSTM's forward: x [T,N,input_size] -> output [T,N,H] (the last layer's h
 *  at every step). h0, c0 [L,N,H] or NULL (zeros). When @p h_n / @p c_n are not
 *  NULL they receive the final states [L,N,H]. The tape unrolls the steps: two
 *  nodes per tg_lstm_cell, plus a copy per step of x and one to stack the
 *  outputs. Returns a temporary, or NULL on error (then *h_n, *c_n are NULL). */
TG_API tg_tensor *tg_lstm_forward(tg_ctx *ctx, const tg_lstm *m, tg_tensor *x, tg_tensor *h0,
                                  tg_tensor *c0, tg_tensor **h_n, tg_tensor **c_n);
/** As tg_lstm_init for a GRU (3H gate rows; nn.GRU's names). */
TG_API int tg_gru_init(tg_ctx *ctx, tg_gru *m, const char *name, int64_t input_size,
                       int64_t hidden_size, int num_layers, int bias, tg_dtype dt);
/** nn.GRU's forward: x [T,N,input_size], h0 [L,N,H] or NULL -> output [T,N,H];
 *  *h_n (if not NULL) = the final states [L,N,H]. */
TG_API tg_tensor *tg_gru_forward(tg_ctx *ctx, const tg_gru *m, tg_tensor *x, tg_tensor *h0,
                                 tg_tensor **h_n);
/** Write the parameters (per layer: weight_ih, weight_hh, bias_ih, bias_hh, as
 *  nn.LSTM's parameters()) into @p out, which has room for @p cap. Returns the
 *  number (also when it exceeds cap), -1 if @p m is NULL. */
TG_API int tg_rnn_params(const tg_rnn *m, tg_tensor **out, int cap);

/* ---- layers: transformer (src/toolkit/layers_transformer.c) ---- */

/** A pre-layer-norm transformer block, as nn.TransformerEncoderLayer(d_model,
 *  nhead, dim_feedforward, dropout=0, activation="gelu", batch_first=True,
 *  norm_first=True) computes it (with @p causal, under a causal mask):
 *      h = x + out_proj(attention(ln1(x)))      (multi-head self-attention)
 *      y = h + linear2(gelu(linear1(ln2(h))))
 *  The query, key and value projections are one fused dense layer (in_proj,
 *  [3E,E]: output features 0..E-1 give q, E..2E-1 k, 2E..3E-1 v); head i of
 *  q, k, v is features i*E/H .. (i+1)*E/H - 1 of each, as in PyTorch. Parameter names
 *  (after the prefix) are PyTorch's: "self_attn.in_proj_weight",
 *  "self_attn.in_proj_bias", "self_attn.out_proj.weight", ".bias",
 *  "linear1.*", "linear2.*", "norm1.*", "norm2.*"; the dense weights are
 *  [out,in] as in PyTorch, so a block's parameters load into
 *  nn.TransformerEncoderLayer (docs/nn.md). No dropout. The tensors are
 *  parameters owned by the context; there is nothing to free. */
typedef struct {
    tg_dense in_proj;     /**< [3E,E] and [3E]: the fused q, k, v projection */
    tg_dense out_proj;    /**< [E,E] and [E] */
    tg_dense linear1;     /**< [d_ff,E] and [d_ff] */
    tg_dense linear2;     /**< [E,d_ff] and [E] */
    tg_layernorm norm1;   /**< [E], before the attention */
    tg_layernorm norm2;   /**< [E], before the MLP */
    int64_t d_model;      /**< E, the width */
    int64_t n_heads;      /**< H; E is a multiple of H */
    int64_t d_ff;         /**< width of the GELU MLP */
} tg_transformer_block;

/** Create the block's parameters under the names above, each preceded by
 *  @p prefix (e.g. "blocks.0."; NULL or "" for none), initialised as PyTorch
 *  does: in_proj weight Xavier uniform over [3E,E], its bias 0; out_proj
 *  weight U(-1/sqrt(E), 1/sqrt(E)), bias 0; linear1 and linear2 as
 *  nn.Linear, weight and bias U(-1/sqrt(in), 1/sqrt(in)); layer norms 1 and
 *  0. @p n_heads >= 1 divides @p d_model >= 1; @p d_ff >= 1; @p dt TG_F32 or
 *  TG_F64. Returns 0, or -1 with the error recorded (then @p blk is zeroed;
 *  parameters made before the failure stay in the context). */
TG_API int tg_transformer_block_init(tg_ctx *ctx, tg_transformer_block *blk, const char *prefix,
                                     int64_t d_model, int64_t n_heads, int64_t d_ff,
                                     tg_dtype dt);
/** x [B,T,E] -> [B,T,E] through the block; @p causal masks position j > i in
 *  the attention. Returns a temporary (lives until tg_reset), or NULL on error. */
TG_API tg_tensor *tg_transformer_block_forward(tg_ctx *ctx, const tg_transformer_block *blk,
                                               tg_tensor *x, int causal);
/** Write the block's 12 parameters (in_proj, out_proj, linear1, linear2
 *  weight then bias, then norm1 and norm2 weight then bias) into @p out, which
 *  has room for @p cap. Returns 12 (also when cap is smaller: then only cap
 *  are written), -1 if @p blk is NULL. */
TG_API int tg_transformer_block_params(const tg_transformer_block *blk, tg_tensor **out, int cap);

/* ======================================================================== */
/** @name Optimisers                                                        */
/* PyTorch's update rules and defaults (torch.optim, version 1.13), written
 * out in docs/optim.md. The state (moment buffers) is allocated once, when
 * the optimiser is made, through the context's allocator: a step never
 * allocates. A parameter whose gradient is NULL (tg_grad() is NULL: no
 * gradient has reached it) is skipped, and its state does not advance, as in
 * PyTorch for a .grad of None; a zero gradient is not skipped. A parameter
 * that does not require grad (tg_set_requires_grad(p, 0)) is skipped too,
 * weight decay included, even if it holds an old gradient. On x86 the
 * updates run with subnormal numbers flushed to zero (docs/optim.md).       */
/* ======================================================================== */

typedef enum { TG_OPT_SGD, TG_OPT_RMSPROP, TG_OPT_ADAM, TG_OPT_ADAMW, TG_OPT_COUNT } tg_opt_kind;

/** Hyper-parameters; a field the kind does not use is ignored. Start from
 *  tg_optim_defaults(kind) and change what you need. */
typedef struct {
    tg_opt_kind kind;
    double lr;           /**< learning rate, >= 0 */
    double momentum;     /**< SGD, RMSprop: >= 0 */
    double dampening;    /**< SGD */
    double weight_decay; /**< >= 0; L2 added to the gradient, AdamW: decoupled */
    double alpha;        /**< RMSprop: smoothing constant, >= 0 */
    double eps;          /**< RMSprop, Adam, AdamW: >= 0 */
    double beta1, beta2; /**< Adam, AdamW: in [0, 1) */
    int nesterov;        /**< SGD: needs momentum > 0 and dampening 0 */
    int centered;        /**< RMSprop */
    int amsgrad;         /**< Adam, AdamW */
} tg_optim_opts;

/** PyTorch's defaults for @p kind; the fields it does not use are 0.
 *  SGD: lr 0.01 (PyTorch has no default lr for SGD; tapegrad picks 0.01),
 *  momentum 0, dampening 0, weight_decay 0, nesterov 0.
 *  RMSprop: lr 0.01, alpha 0.99, eps 1e-8, weight_decay 0, momentum 0, centered 0.
 *  Adam: lr 0.001, betas 0.9 and 0.999, eps 1e-8, weight_decay 0, amsgrad 0.
 *  AdamW: as Adam with weight_decay 0.01.
 *  An unknown kind gives all zeros with that kind (tg_optim_new rejects it). */
TG_API tg_optim_opts tg_optim_defaults(tg_opt_kind kind);
/** "sgd", "rmsprop", "adam", "adamw"; "?" for an unknown value. */
TG_API const char *tg_optim_kind_name(tg_opt_kind kind);

/** An optimiser: options, its parameter list and their state. */
typedef struct tg_optim tg_optim;

/** Make an optimiser over @p n parameters @p params (made by tg_param, of
 *  this context, no duplicates), or, with @p params NULL and @p n 0, over every
 *  parameter the context has now (parameters created later are not
 *  included). Options are checked (kind known; lr, momentum, weight_decay,
 *  alpha, eps >= 0; betas in [0,1); nesterov only with momentum > 0 and
 *  dampening 0) and copied. Returns the optimiser, owned by the caller: free
 *  it with tg_optim_free before tg_ctx_free. NULL on error (recorded). */
TG_API tg_optim *tg_optim_new(tg_ctx *ctx, const tg_optim_opts *o, tg_tensor *const *params,
                              int n);
/** One update of every parameter that has a gradient, from its gradient.
 *  Never allocates. Returns 0; -1 if @p opt is NULL or an error is already
 *  recorded in the context (then nothing is updated). */
TG_API int tg_optim_step(tg_optim *opt);
/** The update of tg_optim_step applied to one shard of every parameter:
 *  elements [cut(@p shard), cut(@p shard + 1)) of a parameter of numel
 *  elements, where cut(k) = k * numel / @p nshards rounded down to a multiple
 *  of 64 bytes (cut(nshards) = numel), so no two shards share a cache line.
 *  Each element's update depends on that element alone, so the calls for
 *  shards 0 .. nshards-1, made by different processes or threads on parameters
 *  and state in shared memory, give the bits of one tg_optim_step. Counts as
 *  a step (each caller makes one per step). For sharded data-parallel steps
 *  (tg_mpi_step, tapegrad/mpi.h). -1 on a bad shard (recorded). */
TG_API int tg_optim_step_shard(tg_optim *opt, int shard, int nshards);
/** Bytes of the optimiser's state (its moment buffers; 0 for plain SGD):
 *  one block, which tg_optim_move_state can move. */
TG_API size_t tg_optim_state_bytes(const tg_optim *opt);
/** Move the optimiser's state into @p mem (tg_optim_state_bytes long, 64-byte
 *  aligned, kept alive by the caller; e.g. memory shared between processes),
 *  or back into the optimiser's own block when @p mem is NULL. With @p copy
 *  the values move along; without, the state is what the new place holds
 *  (another process filled it). While it is moved, tg_optim_step refuses (an
 *  error: the state is taken to be shared, so steps go by shards,
 *  tg_optim_step_shard); saving and loading it (tg_resume_*) work on it where
 *  it is. 0 ok, -1 error (recorded). */
TG_API int tg_optim_move_state(tg_optim *opt, void *mem, int copy);
/** Set the learning rate (e.g. from a tg_sched). A negative or NaN @p lr is
 *  an error (recorded) and keeps the old one. */
TG_API void tg_optim_set_lr(tg_optim *opt, double lr);
/** The current learning rate; NaN if @p opt is NULL. */
TG_API double tg_optim_get_lr(const tg_optim *opt);
/** Number of tg_optim_step calls that succeeded so far. -1 if @p opt is NULL. */
TG_API int64_t tg_optim_step_count(const tg_optim *opt);
/** The options in use (lr as last set); NULL if @p opt is NULL. Owned by
 *  the optimiser. */
TG_API const tg_optim_opts *tg_optim_opts_of(const tg_optim *opt);
/** Free the optimiser and its state (through the context's allocator, so
 *  before tg_ctx_free). NULL is fine. */
TG_API void tg_optim_free(tg_optim *opt);

/** Plain gradient descent, p -= lr * grad, on every parameter of the context
 *  that has a gradient. Returns 0, or -1 (error recorded; lr < 0 or NaN). */
TG_API int tg_sgd_step(tg_ctx *ctx, double lr);

/** Clip gradients by their global L2 norm, as torch.nn.utils.clip_grad_norm_:
 *  norm = sqrt(sum over all elements of all gradients of g^2); if
 *  max_norm / (norm + 1e-6) < 1, every gradient is multiplied by it.
 *  Parameters without a gradient are left out. @p params NULL and @p n 0:
 *  every parameter of the context. @p max_norm must be >= 0 and finite.
 *  Returns the norm before clipping (0 when no gradient exists); when it is
 *  not finite, the gradients are left untouched (PyTorch would scale them
 *  by 0 or NaN). Returns -1 on error (recorded). */
TG_API double tg_clip_grad_norm(tg_ctx *ctx, tg_tensor *const *params, int n, double max_norm);

/* ======================================================================== */
/** @name Learning-rate schedules                                           */
/* ======================================================================== */

typedef enum {
    TG_SCHED_CONSTANT,    /**< base_lr */
    TG_SCHED_STEP,        /**< base_lr gamma^floor(s / step_size) (StepLR) */
    TG_SCHED_EXPONENTIAL, /**< base_lr gamma^s (ExponentialLR) */
    TG_SCHED_COSINE,      /**< min_lr + (base_lr - min_lr)(1 + cos(pi s / T)) / 2,
                               T = total_steps - warmup_steps (CosineAnnealingLR);
                               min_lr for s >= T */
    TG_SCHED_COUNT
} tg_sched_kind;

/** A learning-rate schedule: a plain value, filled by the caller.
 *  With warmup_steps W > 0, steps 0 .. W-1 give base_lr (step+1) / W (a
 *  linear warm-up reaching base_lr at step W-1), and step >= W gives the
 *  schedule of @c kind at s = step - W. Without warm-up, s = step. */
typedef struct {
    tg_sched_kind kind;
    double base_lr;      /**< >= 0 */
    double gamma;        /**< STEP, EXPONENTIAL: decay factor, > 0 */
    double min_lr;       /**< COSINE: eta_min, in [0, base_lr] */
    int64_t step_size;   /**< STEP: > 0 */
    int64_t total_steps; /**< COSINE: > warmup_steps (the warm-up included) */
    int64_t warmup_steps;/**< >= 0 */
} tg_sched;

/** The learning rate at @p step (0-based: the lr for the step-th update).
 *  NaN if @p s is NULL or invalid (see tg_sched_check) or @p step < 0. */
TG_API double tg_sched_lr(const tg_sched *s, int64_t step);
/** 0 if @p s is a valid schedule, else -1 with the reason recorded in @p ctx. */
TG_API int tg_sched_check(tg_ctx *ctx, const tg_sched *s);


/* ======================================================================== */
/** @name Data and metrics                                                  */
/* ======================================================================== */

/* ---- datasets (src/toolkit/data.c) --------------------------------------------- */

/** A dataset in memory: n samples of n_features floats, with class labels or
 *  regression targets (or neither).
 *
 *  Ownership: made by tg_dataset_new, the loaders, tg_dataset_subset and
 *  tg_dataset_split; freed with tg_dataset_free (never free()). Its memory
 *  comes from the context's allocator, so a dataset must be freed BEFORE the
 *  context it was made with. It is not a tensor and does not die at tg_reset;
 *  batches are copied out of it into temporaries (tg_dataset_batch,
 *  tg_batcher_next). Fields may be read and written freely (lowering @c n
 *  keeps the first samples); the two private fields must not be touched. */
typedef struct tg_dataset {
    int64_t n;              /**< number of samples */
    int64_t n_features;     /**< floats per sample (the flattened sample shape) */
    float *x;               /**< [n, n_features], row-major */
    int32_t *labels;        /**< [n] class indices in [0, n_classes), or NULL */
    float *targets;         /**< [n, n_targets] regression targets, or NULL */
    int64_t n_targets;      /**< 0 unless targets */
    int n_classes;          /**< max label + 1 (loaders); 0 without labels */
    int sample_ndim;        /**< shape of one sample before flattening: */
    int64_t sample_shape[3];/**< IDX images [rows, cols]; otherwise [n_features] */
    tg_ctx *owner_;         /**< private: the context whose allocator holds it */
    size_t bytes_;          /**< private: size of the block */
} tg_dataset;

/** A dataset of @p n samples (n >= 0) of @p n_features (>= 1) zeros. With
 *  @p n_targets == 0 it has labels (zeros; set them and n_classes yourself),
 *  with n_targets > 0 it has [n, n_targets] float targets, with n_targets < 0
 *  neither. NULL on error. Free with tg_dataset_free. */
TG_API tg_dataset *tg_dataset_new(tg_ctx *ctx, int64_t n, int64_t n_features,
                                  int64_t n_targets);
/** Free a dataset (NULL is fine). Must be called before tg_ctx_free of the
 *  context that made it. */
TG_API void tg_dataset_free(tg_dataset *ds);
/** A new dataset holding copies of samples idx[0..m) of @p ds (any order,
 *  repeats allowed; each index in [0, ds->n)). Free with tg_dataset_free. */
TG_API tg_dataset *tg_dataset_subset(tg_ctx *ctx, const tg_dataset *ds, const int64_t *idx,
                                     int64_t m);
/** Copy samples idx[0..m) of @p ds into temporaries (live until tg_reset):
 *  *x is [m, n_features] of dtype @p x_dtype (TG_F32 or TG_F64); *y is TG_I32
 *  [m] labels, or [m, n_targets] targets of dtype x_dtype, or NULL when the
 *  dataset has neither (@p y may be NULL to skip it). 0 ok, -1 error. */
TG_API int tg_dataset_batch(tg_ctx *ctx, const tg_dataset *ds, const int64_t *idx, int64_t m,
                            tg_dtype x_dtype, tg_tensor **x, tg_tensor **y);
/** Random split into two new datasets (free both with tg_dataset_free):
 *  round(n * test_fraction) samples go to *test (at least 1 and at most n-1),
 *  the rest to *train; each part keeps the original order of its samples.
 *  test_fraction <= 0 means 0.2; it must be < 1. Drawn from the context's
 *  generator, so the same seed gives the same split. Needs n >= 2. 0 ok,
 *  -1 error (*train and *test set to NULL). */
TG_API int tg_dataset_split(tg_ctx *ctx, const tg_dataset *ds, double test_fraction,
                            tg_dataset **train, tg_dataset **test);

/** Permute idx[0..n) in place with Fisher-Yates, drawing from the context's
 *  generator (tg_rand_below): the same seed gives the same permutation. Fill
 *  idx with 0..n-1 first for a random permutation of the samples. */
TG_API void tg_shuffle_indices(tg_ctx *ctx, int64_t *idx, int64_t n);

/* ---- loaders (src/toolkit/idx.c, src/toolkit/csv.c) ------------------------------------ */

/** Load an IDX pair (the MNIST format), each file gzip'd or not (detected by
 *  its content). @p images_path: magic 0x0000 08 dd (u8; also i8 09, i16 0B,
 *  i32 0C, f32 0D, f64 0E), dd = 1 to 4 dimensions, big-endian u32 sizes
 *  [n, ...]. u8 values are scaled to [0,1] (byte / 255); other types are
 *  converted unscaled. @p labels_path (may be NULL: no labels): 1-dimensional,
 *  integer type, values >= 0; n_classes = max + 1. Malformed files (bad magic,
 *  truncated, trailing bytes, size overflow, image/label count mismatch) are
 *  rejected with the file name and the byte offset (in the uncompressed
 *  stream) in the message. Free with tg_dataset_free. */
TG_API tg_dataset *tg_load_idx(tg_ctx *ctx, const char *images_path, const char *labels_path);
/** tg_load_idx on the standard MNIST / Fashion-MNIST names in @p dir:
 *  @p split "train" -> train-images-idx3-ubyte[.gz] and
 *  train-labels-idx1-ubyte[.gz]; "test" (or "t10k") -> t10k-...; also the
 *  "train-images.idx3-ubyte" spelling. */
TG_API tg_dataset *tg_load_idx_dir(tg_ctx *ctx, const char *dir, const char *split);

/** What the y columns of a CSV file are. */
typedef enum {
    TG_CSV_Y_LABELS,   /**< one column of class labels (non-negative integers) */
    TG_CSV_Y_TARGETS,  /**< n_y columns of float regression targets */
    TG_CSV_Y_NONE      /**< every column is a feature */
} tg_csv_y;
/** Header handling of tg_load_csv. */
typedef enum {
    TG_CSV_HEADER_AUTO, /**< the first line is a header if a field is not a number */
    TG_CSV_HEADER_YES,
    TG_CSV_HEADER_NO
} tg_csv_header;
/** Options of tg_load_csv. Start from tg_csv_defaults() and change fields:
 *  a zeroed struct means "labels in column 0". */
typedef struct {
    char delimiter;        /**< field separator, default ',' (0 means ',') */
    tg_csv_header header;  /**< default TG_CSV_HEADER_AUTO */
    tg_csv_y y_kind;       /**< default TG_CSV_Y_LABELS */
    const char *y_name;    /**< the (first) y column by header name; overrides y_col */
    int y_col;             /**< the (first) y column by index, negative counts from
                                the end; default -1 (the last column) */
    int n_y;               /**< TG_CSV_Y_TARGETS: number of consecutive target
                                columns from the first one; default 1 */
} tg_csv_opts;
/** Defaults: ',', header auto-detected, class labels in the last column. */
TG_API tg_csv_opts tg_csv_defaults(void);
/** Load a numeric CSV file (opts NULL = tg_csv_defaults()). Fields may be
 *  surrounded by spaces and by double quotes; CRLF line ends, a UTF-8 BOM and
 *  blank lines are accepted. Every other column is a feature, in file order.
 *  Rows with the wrong number of fields, empty, non-numeric or non-finite
 *  fields, and labels that are not non-negative integers are rejected with a
 *  "tg_load_csv: path:line: ..." message. Numbers are read with strtod (the C
 *  locale's '.' decimal point). Free with tg_dataset_free. */
TG_API tg_dataset *tg_load_csv(tg_ctx *ctx, const char *path, const tg_csv_opts *opts);

/* ---- batches (src/toolkit/data.c) ---------------------------------------------- */

/** Flags of tg_batcher_init. */
enum {
    TG_BATCH_SHUFFLE = 1,   /**< a new permutation every epoch */
    TG_BATCH_DROP_LAST = 2, /**< skip the last batch when it is smaller */
    TG_BATCH_F64 = 4        /**< x (and float targets) as TG_F64 instead of TG_F32 */
};
/** Iterates over a dataset in mini-batches, epoch after epoch. Fields are
 *  read-only for the user (epoch, n_batches are useful). */
typedef struct {
    tg_ctx *ctx;
    const tg_dataset *ds;
    int64_t batch_size;
    int flags;
    int64_t n;          /**< ds->n at init (the dataset must keep it) */
    int64_t *order;     /**< [n] sample order of this epoch (ctx allocator) */
    int64_t pos;        /**< next position in order */
    int64_t n_batches;  /**< batches per epoch */
    int64_t batch;      /**< batches produced in this epoch */
    int64_t epoch;      /**< epochs completed */
    int fresh;          /**< the next call starts an epoch */
    int shard_rank;     /**< this process's share of each batch (tg_batcher_shard) */
    int shard_count;    /**< number of shares; 0 or 1: not sharded */
    int64_t global_size;/**< samples in the latest batch, all shares together */
    int64_t share_size; /**< samples in this process's share of it (rows of x) */
} tg_batcher;
/** Prepare @p b to iterate over @p ds (which must outlive it and keep its n) in batches of
 *  @p batch_size (>= 1) samples; @p flags: TG_BATCH_* or'ed (1 = shuffle).
 *  Allocates the order array once; free with tg_batcher_free. 0 ok, -1 error. */
TG_API int tg_batcher_init(tg_batcher *b, tg_ctx *ctx, const tg_dataset *ds,
                           int64_t batch_size, int flags);
/** The next batch of this epoch as temporaries (see tg_dataset_batch; they
 *  die at tg_reset, nothing is allocated on the heap): returns 1 and sets *x,
 *  *y; returns 0 at the end of the epoch (the next call starts a new epoch,
 *  reshuffled when shuffling); -1 on error. The last batch of an epoch is
 *  smaller when batch_size does not divide n, unless TG_BATCH_DROP_LAST. */
TG_API int tg_batcher_next(tg_batcher *b, tg_tensor **x, tg_tensor **y);
/** Free the order array (b may be zeroed or already freed). */
TG_API void tg_batcher_free(tg_batcher *b);
/** Data-parallel training: make @p b give share @p rank (0 to @p count - 1)
 *  of each batch to this process, one of @p count processes that iterate the
 *  same dataset with the same seed (so they shuffle alike). batch_size is
 *  then the global batch: each batch of m samples (in the order one process
 *  would see them) is cut into @p count contiguous runs, rank r taking
 *  positions [m r / count, m (r + 1) / count), so the shares of ranks 0, 1,
 *  ... put end to end are exactly the batch one unsharded batcher gives, in
 *  the same order. A last partial batch smaller than @p count is dropped
 *  (every share must have a sample); n_batches counts what is given.
 *  After each batch, global_size is m and share_size this rank's part: weigh
 *  this rank's mean-loss gradient by share_size / global_size before summing
 *  over ranks to get the gradient of the mean over the global batch. Call it
 *  after tg_batcher_init, before the first batch of an epoch; count 1 undoes
 *  it. Needs 1 <= count <= batch_size. 0 ok, -1 error (recorded).
 *  (owned by data) */
TG_API int tg_batcher_shard(tg_batcher *b, int rank, int count);

/* ---- resumable training (src/toolkit/resume.c; docs/checkpoints.md, "Resuming") ---- */

/** Save what a training run needs to continue bit-identically, beside the
 *  model file (tg_save keeps holding just the parameters): the context's
 *  random state, @p opt's state (moments, per-parameter step counts, step
 *  count, learning rate; NULL: none), @p b's state (sample order and position;
 *  NULL: none) and @p epoch (the caller's count of completed epochs). The
 *  schedule position is the step count (tg_sched_lr(s, step)). Written
 *  atomically (temporary file, rename). 0 ok, -1 error (recorded). */
TG_API int tg_resume_save(tg_ctx *ctx, const char *path, tg_optim *opt, const tg_batcher *b,
                          int64_t epoch);
/** Restore what tg_resume_save wrote into @p opt and @p b (either may be NULL:
 *  not restored), made the same way as before (same optimiser kind and options
 *  that set its buffers, same parameters in the same order, same data set size,
 *  batch size and flags), and the context's random state; *@p epoch (if not
 *  NULL) gets the saved epoch. Everything is validated (and the checksum
 *  checked) before anything changes. 0 ok, -1 error (recorded). */
TG_API int tg_resume_load(tg_ctx *ctx, const char *path, tg_optim *opt, tg_batcher *b,
                          int64_t *epoch);

/* ---- standardisation (src/toolkit/data.c) -------------------------------------- */

/** Per-feature standardisation x' = (x - mean) / std. */
typedef struct {
    int64_t n_features;
    float *mean;        /**< [n_features] */
    float *std;         /**< [n_features]; 1 for constant features */
    tg_ctx *owner_;     /**< private: the allocator of mean and std */
} tg_scaler;
/** Fit @p s on @p train (the training part only): mean and population
 *  standard deviation of every feature, computed in double. A feature whose
 *  std is 0 (or below 1e-8 |mean|) gets std 1, so it is only centred.
 *  Free with tg_scaler_free, before the context. 0 ok, -1 error. */
TG_API int tg_scaler_fit(tg_ctx *ctx, tg_scaler *s, const tg_dataset *train);
/** Standardise @p ds's features in place with @p s's statistics. 0 ok; -1
 *  if the feature counts differ (error recorded in s's context). */
TG_API int tg_scaler_apply(const tg_scaler *s, tg_dataset *ds);
/** Free mean and std (s may be zeroed or already freed). */
TG_API void tg_scaler_free(tg_scaler *s);

/* ---- metrics (src/toolkit/metrics.c) ------------------------------------------- */

/** Fraction of correct predictions, in [0,1]. @p pred: [N,C] scores (logits or
 *  probabilities; the class is the argmax, the first on ties), or [N] / [N,1]
 *  probabilities of class 1 (class 1 when >= 0.5). @p labels: TG_I32 [N]
 *  classes, float [N] / [N,1] 0-or-1 targets, or float [N,C] one-hot /
 *  probability rows (argmax). NaN on error (recorded in pred's context). */
TG_API double tg_accuracy(const tg_tensor *pred, const tg_tensor *labels);
/** As tg_accuracy for binary predictions [N] / [N,1] with a threshold of your
 *  choice (0 for logits, 0.5 for probabilities). */
TG_API double tg_binary_accuracy(const tg_tensor *pred, const tg_tensor *labels,
                                 double threshold);
/** Add counts to a confusion matrix: matrix[t * n_classes + p] += 1 for each
 *  sample of true class t predicted as p (rows are true classes). pred and
 *  labels as in tg_accuracy ([N] probabilities need n_classes == 2). Classes
 *  outside [0, n_classes) are an error. 0 ok, -1 error. */
TG_API int tg_confusion(tg_ctx *ctx, const tg_tensor *pred, const tg_tensor *labels,
                        int n_classes, int64_t *matrix);
/** Print a confusion matrix as a table (rows: true class) with each class's
 *  recall, to @p f. */
TG_API void tg_confusion_print(FILE *f, const int64_t *matrix, int n_classes);

/** A running mean, e.g. of batch losses over an epoch. Zero-initialise it. */
typedef struct { double sum; int64_t n; } tg_mean_meter;
/** Add @p value with weight @p count (a batch's mean loss and its size, so
 *  a smaller last batch weighs less); count <= 0 counts as 1. */
TG_API void tg_mean_meter_add(tg_mean_meter *m, double value, int64_t count);
/** The weighted mean so far; NaN before anything was added. */
TG_API double tg_mean_meter_mean(const tg_mean_meter *m);
/** Back to empty. */
TG_API void tg_mean_meter_reset(tg_mean_meter *m);

/* ---- progress line (src/toolkit/progress.c) ------------------------------------ */

/** A training progress display. On a terminal: one line redrawn in place
 *  ("epoch 2/10  batch 120/469  loss 0.4312  9821 samples/s  ETA 1m12s"),
 *  at most ~10 times a second. Otherwise (a file, a pipe, CI): only one plain
 *  line per epoch. Zero-initialise, or just call tg_progress_begin. */
typedef struct {
    FILE *out;
    int tty;
    int64_t epochs, batches;    /**< totals (0 = unknown) */
    int64_t epoch;              /**< epochs ended so far */
    int64_t batch;              /**< batches done in this epoch */
    int64_t samples;            /**< samples done in this epoch */
    int64_t batches_done;       /**< batches done since begin */
    tg_mean_meter loss;         /**< this epoch's loss */
    double t_begin, t_epoch, t_drawn, t_last; /**< times (monotonic seconds) */
    int drawn;                  /**< a line is on the terminal */
} tg_progress;
/** Start: @p out is the stream (NULL = stderr); @p epochs and
 *  @p batches_per_epoch are the totals shown (0 = unknown). */
TG_API void tg_progress_begin(tg_progress *p, FILE *out, int64_t epochs,
                              int64_t batches_per_epoch);
/** One batch of @p batch_samples samples is done with mean loss @p loss;
 *  redraws the line on a terminal (at most every 0.1 s, and at the epoch's
 *  last batch). */
TG_API void tg_progress_update(tg_progress *p, int64_t batch_samples, double loss);
/** End the epoch: prints "epoch e/E  loss L  N samples/s  T s" and, when
 *  @p fmt is not NULL, two spaces and the formatted text (e.g. "test acc
 *  %.4f"), then a newline. Returns the epoch's mean loss. */
TG_API double tg_progress_end_epoch(tg_progress *p, const char *fmt, ...) TG_PRINTF(2, 3);


#ifdef __cplusplus
}
#endif
#endif /* TAPEGRAD_H */
