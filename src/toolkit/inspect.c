/* SPDX-License-Identifier: MIT */
/* inspect.c: seeing a model.
 *
 *   tg_summary   a table of the parameters: name, shape, dtype, count, bytes,
 *                and the totals (as torchinfo and Keras' summary print)
 *   tg_tape_dot  the tape as a Graphviz DOT graph: one box per recorded op with
 *                its output shape, one ellipse per leaf (parameters by name, in
 *                bold; inputs and constants by shape), edges from inputs to
 *                ops; what needs a gradient is drawn solid, the rest dashed
 *
 * Both only read the context; neither records anything or changes an error. */
#include "toolkit.h"

#include <stdio.h>

int tg_summary(tg_ctx *ctx, FILE *f) {
    if (!ctx) return -1;
    if (!f) {
        tg_set_error(ctx, "tg_summary: argument f is NULL");
        return -1;
    }
    int wname = 9; /* "parameter" */
    for (int i = 0; i < ctx->n_params; i++) {
        int l = (int)strlen(ctx->params[i]->name);
        if (l > wname) wname = l;
    }
    if (wname > 60) wname = 60;
    int64_t total = 0, trainable = 0;
    size_t bytes = 0;
    fprintf(f, "%-*s  %-20s  %-5s  %12s  %12s\n", wname, "parameter", "shape", "dtype", "count",
            "bytes");
    for (int i = 0; i < wname + 57; i++) fputc('-', f);
    fputc('\n', f);
    for (int i = 0; i < ctx->n_params; i++) {
        const tg_tensor *p = ctx->params[i];
        char shape[96];
        size_t b = (size_t)p->numel * tg_dtype_size(p->dtype);
        fprintf(f, "%-*s  %-20s  %-5s  %12lld  %12zu\n", wname, p->name, TGI_SHAPE(p, shape),
                tg_dtype_name(p->dtype), (long long)p->numel, b);
        total += p->numel;
        bytes += b;
        if (tgi_needs_grad(p)) trainable += p->numel;
    }
    for (int i = 0; i < wname + 57; i++) fputc('-', f);
    fputc('\n', f);
    fprintf(f, "%-*s  %-20s  %-5s  %12lld  %12zu\n", wname, "total", "", "", (long long)total,
            bytes);
    int mib = bytes >= 1024 * 1024;
    fprintf(f, "%d parameter tensors, %lld values (%lld trainable), %.2f %s\n", ctx->n_params,
            (long long)total, (long long)trainable, (double)bytes / (mib ? 1024.0 * 1024.0 : 1024.0),
            mib ? "MiB" : "KiB");
    return ferror(f) ? -1 : 0;
}

/* a DOT identifier for a leaf tensor: its address */
static void dot_leaf(FILE *f, const tg_tensor *t) {
    char shape[96];
    int grad = tgi_needs_grad(t);
    if (t->flags & TGI_PARAM)
        fprintf(f, "  t%p [shape=ellipse, style=\"bold%s\", label=\"%s\\n%s %s\"];\n", (const void *)t,
                grad ? "" : ",dashed", t->name, tg_dtype_name(t->dtype), TGI_SHAPE(t, shape));
    else
        fprintf(f, "  t%p [shape=ellipse, style=\"%s\", label=\"%s %s\"];\n", (const void *)t,
                grad ? "solid" : "dashed", tg_dtype_name(t->dtype), TGI_SHAPE(t, shape));
}

int tg_tape_dot(tg_ctx *ctx, FILE *f) {
    if (!ctx) return -1;
    if (!f) {
        tg_set_error(ctx, "tg_tape_dot: argument f is NULL");
        return -1;
    }
    /* leaves first, each once (a pointer set, open addressing): a leaf is an
     * input that no node of the tape made. (Allocated before anything is
     * written, under this function's name for an out-of-memory message.) */
    tgi_api(ctx, "tg_tape_dot");
    size_t cap = 16;
    while (cap < (size_t)ctx->tape_len * TG_MAX_INPUTS * 2) cap *= 2;
    const tg_tensor **set = tgi_calloc(ctx, cap * sizeof *set);
    if (!set) return -1;
    fputs("digraph tape {\n  rankdir=TB;\n  node [fontname=\"Helvetica\", fontsize=10];\n"
          "  edge [fontname=\"Helvetica\", fontsize=9];\n",
          f);
    for (int64_t n = 0; n < ctx->tape_len; n++) {
        const tg_op_call *c = &ctx->tape[n].call;
        for (int i = 0; i < c->n_in; i++) {
            const tg_tensor *t = c->in[i];
            if (!t || t->node >= 0) continue;
            size_t h = ((uintptr_t)t >> 4) * 0x9E3779B97F4A7C15ull & (cap - 1);
            while (set[h] && set[h] != t) h = (h + 1) & (cap - 1);
            if (set[h]) continue;
            set[h] = t;
            dot_leaf(f, t);
        }
    }
    tgi_free(ctx, set, cap * sizeof *set);
    for (int64_t n = 0; n < ctx->tape_len; n++) {
        const tg_op_call *c = &ctx->tape[n].call;
        char shape[96];
        int grad = tgi_needs_grad(c->out);
        fprintf(f, "  n%lld [shape=box, style=\"rounded,%s\", label=\"#%lld %s\\n%s %s\"];\n",
                (long long)n, grad ? "solid" : "dashed", (long long)n, c->op->name,
                tg_dtype_name(c->out->dtype), TGI_SHAPE(c->out, shape));
        for (int i = 0; i < c->n_in; i++) {
            const tg_tensor *t = c->in[i];
            if (!t) continue;
            const char *style = tgi_needs_grad(t) ? "solid" : "dashed";
            if (t->node >= 0)
                fprintf(f, "  n%lld -> n%lld [style=%s];\n", (long long)t->node, (long long)n, style);
            else
                fprintf(f, "  t%p -> n%lld [style=%s];\n", (const void *)t, (long long)n, style);
        }
    }
    fputs("}\n", f);
    return ferror(f) ? -1 : 0;
}
