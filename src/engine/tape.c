/* SPDX-License-Identifier: MIT */
/* tape.c: recording ops, backward, reset, and the custom-op entry point.
 *
 * The tape is an array of nodes appended in call order. Call order is already
 * a topological order (an op's inputs exist before it is called), so backward
 * is a reverse loop over the array: no recursion, no sort.
 */
#include "internal.h"

#include <stdio.h>

/* ---- recording ---- */

int tgi_should_record(const tg_ctx *ctx, tg_tensor *const *in, int n) {
    if (ctx->no_grad) return 0;
    for (int i = 0; i < n; i++)
        if (in[i] && (in[i]->flags & TGI_REQ_GRAD)) return 1;
    return 0;
}

static int tape_grow(tg_ctx *ctx) {
    int64_t cap = ctx->tape_cap ? ctx->tape_cap * 2 : 256;
    tgi_node *t = tgi_realloc(ctx, ctx->tape, (size_t)ctx->tape_cap * sizeof(tgi_node),
                              (size_t)cap * sizeof(tgi_node));
    if (!t) return -1;
    /* call.attr of built-in nodes points into the node itself: re-point it */
    for (int64_t i = 0; i < ctx->tape_len; i++)
        if (t[i].inline_attr) t[i].call.attr = &t[i].attr;
    ctx->tape = t;
    ctx->tape_cap = cap;
    return 0;
}

/* A call of op(in) -> out, no attributes, nothing saved. */
static inline void call_init(tg_op_call *c, tg_ctx *ctx, const tg_op *op, tg_tensor *out,
                             tg_tensor *const *in, int n) {
    c->op = op;
    c->ctx = ctx;
    c->out = out;
    for (int i = 0; i < TG_MAX_INPUTS; i++) c->in[i] = i < n ? in[i] : NULL;
    c->n_in = n;
    c->attr = NULL;
    c->saved = NULL;
}

/* Append a node for op(in) -> out (room on the tape checked by the caller). */
static inline tg_op_call *append_node(tg_ctx *ctx, const tg_op *op, tg_tensor *out,
                                      tg_tensor *const *in, int n) {
    tgi_node *nd = &ctx->tape[ctx->tape_len];
    tg_op_call *c = &nd->call;
    call_init(c, ctx, op, out, in, n);
    nd->inline_attr = 0;
    out->flags |= TGI_REQ_GRAD;
    out->node = ctx->tape_len++;
    return c;
}

int tgi_record(tg_ctx *ctx, const tg_op *op, tg_tensor *out, tg_tensor *const *in, int n,
               tg_op_call **node) {
    *node = NULL;
    if (!tgi_should_record(ctx, in, n)) return 0;
    /* anomaly mode: this op's forward runs after it is recorded, so the
     * outputs of the nodes before it are checked now */
    if (ctx->anomaly && tgi_anomaly_forward(ctx) != 0) return -1;
    if (ctx->tape_len == ctx->tape_cap && tape_grow(ctx) != 0) return -1;
    *node = append_node(ctx, op, out, in, n);
    return 0;
}

/* Take the last node (out's) off the tape again. */
static void unrecord(tg_ctx *ctx, tg_tensor *out) {
    if (out->node >= 0 && out->node == ctx->tape_len - 1) ctx->tape_len--;
    out->flags &= ~(uint32_t)TGI_REQ_GRAD;
    out->node = -1;
}

tg_tensor *tgi_op_run(tg_ctx *ctx, const tg_op *op, tg_tensor *out, tg_tensor *const *in, int n,
                      const void *attr, size_t attr_size) {
    tg_op_call *c, local;
    tgi_attr local_attr;
    void *at = NULL; /* where the attributes live for this call */
    if (op->backward && out->dtype != TG_I32 && tgi_should_record(ctx, in, n)) {
        if (ctx->anomaly && tgi_anomaly_forward(ctx) != 0) return NULL;
        if (ctx->tape_len == ctx->tape_cap && tape_grow(ctx) != 0) return NULL;
        c = append_node(ctx, op, out, in, n);
        tgi_node *nd = (tgi_node *)(void *)c;
        if (attr_size && attr_size <= sizeof nd->attr) {
            nd->inline_attr = 1; /* re-pointed when the tape grows */
            at = &nd->attr;
        }
    } else { /* nothing to record: forward runs on a call that lives on the stack */
        c = &local;
        call_init(c, ctx, op, out, in, n);
        if (attr_size && attr_size <= sizeof local_attr) at = &local_attr;
    }
    if (attr_size == sizeof(tgi_attr)) { /* the built-ins' size: an inlined copy */
        memcpy(at, attr, sizeof(tgi_attr));
    } else if (attr_size) {
        if (!at) at = tgi_arena_alloc(ctx, attr_size);
        if (!at) {
            if (c != &local) unrecord(ctx, out);
            return NULL;
        }
        memcpy(at, attr, attr_size);
    }
    c->attr = at;
    if (op->forward(c) != 0 || !tg_ok(ctx)) {
        if (tg_ok(ctx)) tg_set_error(ctx, "%s: forward failed", op->name ? op->name : "tg_apply");
        if (c != &local) unrecord(ctx, out);
        return NULL;
    }
    if (ctx->anomaly && out->dtype != TG_I32) { /* this op's output, checked at once */
        const int64_t node = c == &local ? -1 : out->node;
        if (tgi_anomaly_output(ctx, op->name ? op->name : "tg_apply", node, out, in, n) != 0)
            return NULL;
        if (node >= 0) ctx->anomaly_checked = node + 1;
    }
    return out;
}

tgi_attr *tgi_node_attr(tg_op_call *c) {
    return &((tgi_node *)(void *)c)->attr;
}

int tg_no_grad(tg_ctx *ctx, int on) {
    if (!ctx) return 0;
    int prev = ctx->no_grad;
    ctx->no_grad = on ? 1 : 0;
    return prev;
}

int tg_train_mode(tg_ctx *ctx, int on) {
    if (!ctx) return 0;
    int prev = ctx->training;
    ctx->training = on ? 1 : 0;
    return prev;
}

int tg_is_training(const tg_ctx *ctx) { return ctx ? ctx->training : 0; }

int tg_detect_anomaly(tg_ctx *ctx, int on) {
    if (!ctx) return 0;
    int prev = ctx->anomaly;
    ctx->anomaly = on ? 1 : 0;
    if (on && !prev) ctx->anomaly_checked = ctx->tape_len; /* from now on */
    return prev;
}

/* ---- anomaly mode ---- */

/* Index of the first NaN or infinity in a float buffer, -1 if none. */
static int64_t anomaly_find(tg_dtype dt, const void *p, int64_t n) {
    int64_t bad = -1;
    if (dt == TG_I32 || !p) return -1;
    TGI_FLOAT_DISPATCH(dt, {
        const T *x = p;
        for (int64_t i = 0; i < n && bad < 0; i++)
            if (!__builtin_isfinite(x[i])) bad = i;
    });
    return bad;
}

static const char *anomaly_kind(tg_dtype dt, const void *p, int64_t i) {
    double v = dt == TG_F32 ? (double)((const float *)p)[i] : ((const double *)p)[i];
    return v != v ? "a NaN" : v > 0 ? "+infinity" : "-infinity";
}

/* " from inputs [4,3] f32, [3] f32" */
static void anomaly_inputs(tg_tensor *const *in, int n, char *buf, size_t size) {
    size_t len = 0;
    buf[0] = '\0';
    for (int k = 0; k < n && len < size; k++) {
        char b[96];
        if (!in[k]) continue;
        int w = snprintf(buf + len, size - len, "%s%s %s", k ? ", " : " from inputs ",
                         TGI_SHAPE(in[k], b), tg_dtype_name(in[k]->dtype));
        if (w < 0) break;
        len += (size_t)w;
    }
}

int tgi_anomaly_output(tg_ctx *ctx, const char *op, int64_t node, const tg_tensor *out,
                       tg_tensor *const *in, int n) {
    int64_t i = anomaly_find(out->dtype, out->data, out->numel);
    if (i < 0) return 0;
    char b[96], ins[320];
    anomaly_inputs(in, n, ins, sizeof ins);
    tg_set_error(ctx, "tg_detect_anomaly: forward of %s (node %lld) produced %s at element %lld "
                      "of its output %s%s",
                 op, (long long)node, anomaly_kind(out->dtype, out->data, i), (long long)i,
                 TGI_SHAPE(out, b), ins);
    return -1;
}

int tgi_anomaly_forward(tg_ctx *ctx) {
    for (; ctx->anomaly_checked < ctx->tape_len; ctx->anomaly_checked++) {
        const tg_op_call *c = &ctx->tape[ctx->anomaly_checked].call;
        if (tgi_anomaly_output(ctx, c->op->name, ctx->anomaly_checked, c->out, c->in, c->n_in))
            return -1;
    }
    return 0;
}

/* After node i's backward: the gradients it added into its inputs. */
static int anomaly_backward(tg_ctx *ctx, int64_t node, const tg_op_call *c) {
    for (int k = 0; k < c->n_in; k++) {
        const tg_tensor *x = c->in[k];
        if (!x || !tgi_needs_grad(x) || !x->grad) continue;
        int64_t i = anomaly_find(x->dtype, x->grad, x->numel);
        if (i < 0) continue;
        char b[96], bo[96];
        tg_set_error(ctx, "tg_detect_anomaly: backward of %s (node %lld, output %s) produced %s "
                          "at element %lld of the gradient of input %d %s",
                     c->op->name, (long long)node, TGI_SHAPE(c->out, bo),
                     anomaly_kind(x->dtype, x->grad, i), (long long)i, k, TGI_SHAPE(x, b));
        return -1;
    }
    return 0;
}

int64_t tg_tape_len(const tg_ctx *ctx) { return ctx ? ctx->tape_len : 0; }

void tg_tape_print(const tg_ctx *ctx, FILE *f) {
    if (!ctx || !f) return;
    for (int64_t i = 0; i < ctx->tape_len; i++) {
        const tg_op_call *c = &ctx->tape[i].call;
        char b[96];
        fprintf(f, "%4lld %-16s", (long long)i, c->op->name);
        for (int k = 0; k < c->n_in; k++) {
            const tg_tensor *x = c->in[k];
            if (x->node >= 0)
                fprintf(f, " %%%lld%s", (long long)x->node, TGI_SHAPE(x, b));
            else if (x->flags & TGI_PARAM)
                fprintf(f, " %s%s", x->name, TGI_SHAPE(x, b));
            else
                fprintf(f, " leaf%s", TGI_SHAPE(x, b));
        }
        fprintf(f, " -> %s %s\n", TGI_SHAPE(c->out, b), tg_dtype_name(c->out->dtype));
    }
}

/* ---- gradients ---- */

/* Zero a gradient buffer: a large one in contiguous pieces over the context's
 * threads (TGI_PAR_RUN: below its threshold, one memset in this thread).
 * The millions of floats of an MLP-1024's gradients were a serial 2-3 % of its
 * step, time the second thread spent waiting. */
typedef struct {
    unsigned char *b;
    size_t es;
} zero_job;
TGI_PAR_FN void zero_range(void *arg, int64_t lo, int64_t hi) {
    const zero_job *z = arg;
    memset(z->b + (size_t)lo * z->es, 0, (size_t)(hi - lo) * z->es);
}
__attribute__((noinline)) static void zero_grad_par(tg_ctx *ctx, void *g, const tg_tensor *t) {
    zero_job z = {g, tg_dtype_size(t->dtype)};
    TGI_PAR_RUN(ctx, t->numel, zero_range, &z);
}

/* Every gradient buffer is a whole number of 64-byte blocks (an arena block, or a
 * parameter's padded half of its block): one of at most 64 bytes is cleared whole,
 * by a memset of constant size (two or four stores inline, no call). */
static inline void zero_grad_buf(tg_ctx *ctx, void *g, const tg_tensor *t) {
    if (t->numel > 0 && tgi_bytes(t) <= TG_ALIGN)
        memset(g, 0, TG_ALIGN);
    else if (t->numel < TGI_PAR_MIN) /* small: the plain memset, no thread question */
        memset(g, 0, tgi_bytes(t));
    else
        zero_grad_par(ctx, g, t);
}

/* tg_grad_acc for a tensor that has no gradient yet (internal.h has the rest) */
void *tgi_grad_acc_new(tg_tensor *t) {
    if (!t) return NULL;
    if (t->grad) return t->grad;
    size_t bytes = tgi_bytes(t);
    if (t->flags & TGI_PARAM) {
        t->grad = t->grad_store;
    } else {
        t->grad = tgi_arena_alloc(t->ctx, bytes);
        if (!t->grad) return NULL;
    }
    t->flags &= ~(uint32_t)TGI_GRAD_PENDING;
    if (bytes) zero_grad_buf(t->ctx, t->grad, t);
    return t->grad;
}

/* A pending gradient: its zeros, unless a first writer has written it already. */
void *tgi_settle_grad(tg_tensor *t) {
    t->flags &= ~(uint32_t)TGI_GRAD_PENDING;
    if (t->grad) return t->grad;
    t->grad = t->grad_store;
    if (t->numel > 0) zero_grad_buf(t->ctx, t->grad, t);
    return t->grad;
}

void tgi_settle_grads_slow(tg_ctx *ctx) {
    tg_tensor *const *ps = ctx->params;
    const int n = ctx->n_params;
    for (int i = 0; i < n; i++)
        if (ps[i]->flags & TGI_GRAD_PENDING) tgi_settle_grad(ps[i]);
    ctx->grads_pending = 0;
}

void tgi_backward_from(tg_ctx *ctx, tg_tensor *loss, const void *seed, int64_t first) {
    int64_t last = loss->node;
    /* Non-leaf grads on the walked part of the tape start from zero, so a
     * second backward over the same tape adds the same gradient to leaves. */
    for (int64_t i = first; i <= last; i++) {
        tg_tensor *o = ctx->tape[i].call.out;
        if (o->grad) zero_grad_buf(ctx, o->grad, o);
    }
    int fresh; /* a new buffer: the seed is its first writer (0 + 1 assigned) */
    void *g = tgi_grad_first(loss, &fresh);
    if (!g) return;
    if (seed) {
        memcpy(g, seed, tgi_bytes(loss));
    } else {
        TGI_FLOAT_DISPATCH(loss->dtype, {
            T *p = g;
            for (int64_t i = 0; i < loss->numel; i++) p[i] = fresh ? (T)1 : p[i] + (T)1;
        });
    }
    /* Backward kernels run with recording off: they compute, they don't record. */
    int prev = ctx->no_grad;
    ctx->no_grad = 1;
    for (int64_t i = last; i >= first; i--) {
        tg_op_call *c = &ctx->tape[i].call;
        if (!c->out->grad || !c->op->backward) continue;
        c->op->backward(c);
        if (!tg_ok(ctx)) break;
        if (ctx->anomaly && anomaly_backward(ctx, i, c) != 0) break;
    }
    ctx->no_grad = prev;
    tgi_settle_grads(ctx); /* the parameters the walk did not reach: their zeros */
}

void tg_backward(tg_ctx *ctx, tg_tensor *loss) {
    if (!ctx) return;
    if (!tgi_check_arg(ctx, "tg_backward", "loss", loss)) return;
    tgi_api(ctx, "tg_backward");
    if (loss->numel != 1) {
        char b[96];
        tg_set_error(ctx,
                     "tg_backward: loss must have one element, got %s (%lld elements); "
                     "reduce it with tg_sum or tg_mean first",
                     TGI_SHAPE(loss, b), (long long)loss->numel);
        return;
    }
    if (!tgi_check_float(ctx, "tg_backward", "loss", loss)) return;
    if (loss->node >= ctx->tape_len || (loss->node >= 0 && ctx->tape[loss->node].call.out != loss)) {
        /* (tgi_check_arg catches a loss from before tg_reset by its stamp; this
         * guards the walk itself against any node that is not this loss's) */
        tg_set_error(ctx, "tg_backward: loss is not on the tape (node %lld of %lld): was it made "
                          "before the last tg_reset?",
                     (long long)loss->node, (long long)ctx->tape_len);
        return;
    }
    if (ctx->anomaly && tgi_anomaly_forward(ctx) != 0) return;
    if (!(loss->flags & TGI_REQ_GRAD)) {
        tg_set_error(ctx, "tg_backward: loss does not require a gradient: no parameter or "
                          "tensor marked with tg_set_requires_grad reaches it (or it was "
                          "computed under tg_no_grad)");
        return;
    }
    if (loss->node < 0) { /* a leaf: d loss/d loss = 1 and nothing else */
        TGI_FLOAT_DISPATCH(loss->dtype, {
            T *p = tg_grad_acc(loss);
            if (p) p[0] += (T)1;
        });
        tgi_settle_grads(ctx);
        return;
    }
    tgi_backward_from(ctx, loss, NULL, 0);
}

/* A parameter's gradient in its own storage that the caller holds no pointer to
 * (TGI_GRAD_SEEN) is not cleared here: it becomes pending (grad NULL,
 * TGI_GRAD_PENDING), so backward's first writer assigns (tgi_grad_first: beta 0
 * in the weight-gradient GEMMs, no memset before them, no read of the old values)
 * and tgi_settle_grads writes the zeros of the rest before anything else reads
 * them. The others are cleared now. Either way the gradient is zeros, as tg_grad
 * shows. */
void tg_zero_grad(tg_ctx *ctx) {
    if (!ctx) return;
    tg_tensor *const *ps = ctx->params;
    const int n = ctx->n_params;
    for (int i = 0; i < n; i++) {
        tg_tensor *p = ps[i];
        if (!p->grad) continue;
        if (p->grad == p->grad_store && !(p->flags & TGI_GRAD_SEEN)) {
            p->grad = NULL;
            p->flags |= TGI_GRAD_PENDING;
            ctx->grads_pending = 1;
        } else {
            zero_grad_buf(ctx, p->grad, p);
        }
    }
}

void tg_reset(tg_ctx *ctx) {
    if (!ctx) return;
    ctx->tape_len = 0;
    ctx->anomaly_checked = 0;
    ctx->gen++; /* every temporary made so far is now stale (tgi_check_arg) */
    tgi_arena_reset(ctx);
}

/* ---- custom ops ---- */

tg_tensor *tg_apply(tg_ctx *ctx, const tg_op *op, tg_tensor *const *inputs, int n, tg_dtype dt,
                    int ndim, const int64_t *shape, const void *attr, size_t attr_size) {
    if (!tg_ok(ctx)) return NULL;
    const char *name = op && op->name ? op->name : "tg_apply";
    if (!op || !op->forward) {
        tg_set_error(ctx, "tg_apply: op or its forward function is NULL");
        return NULL;
    }
    if (n < 1 || n > TG_MAX_INPUTS || !inputs) {
        tg_set_error(ctx, "%s: takes 1 to %d inputs, got %d", name, TG_MAX_INPUTS, n);
        return NULL;
    }
    for (int i = 0; i < n; i++) {
        char arg[32];
        snprintf(arg, sizeof arg, "input %d", i);
        if (!tgi_check_arg(ctx, name, arg, inputs[i])) return NULL;
    }
    if (attr_size && !attr) {
        tg_set_error(ctx, "%s: attr is NULL but attr_size is %zu", name, attr_size);
        return NULL;
    }
    tg_tensor *out = tgi_tensor_new(ctx, name, dt, ndim, shape, 1);
    if (!out) return NULL;
    return tgi_op_run(ctx, op, out, inputs, n, attr, attr_size);
}

#undef tg_grad_acc /* the public function: internal.h maps the library's calls */
void *tg_grad_acc(tg_tensor *t) {
    if (t && (t->flags & TGI_PARAM)) t->flags |= TGI_GRAD_SEEN;
    return tgi_grad_acc(t);
}
