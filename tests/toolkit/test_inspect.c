/* SPDX-License-Identifier: MIT */
/* test_inspect.c: tg_summary's table and tg_tape_dot's graph (rendered by
 * Graphviz's dot when it is installed, so the syntax is checked by a real
 * reader). */
#define _POSIX_C_SOURCE 200809L
#include "tg_test.h"

#include <stdio.h>
#include <unistd.h>

/* what fn writes for ctx, as a malloc'd string */
static char *capture(int (*fn)(tg_ctx *, FILE *), tg_ctx *ctx, int *rc)
{
    char *buf = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&buf, &len);
    cr_assert_not_null(f);
    *rc = fn(ctx, f);
    fclose(f);
    return buf;
}

static int count(const char *s, const char *what)
{
    int n = 0;
    for (const char *p = strstr(s, what); p; p = strstr(p + 1, what)) n++;
    return n;
}

Test(inspect, summary_lists_every_parameter_and_the_totals)
{
    tg_ctx *ctx = tg_ctx_new(1);
    tg_mlp m;
    cr_assert_eq(tg_mlp_init(ctx, &m, "", 3, (int64_t[]){4, 8, 3}, TG_ACT_RELU, TG_F32), 0);
    tg_tensor *frozen = tg_param(ctx, "embed.weight", TG_F64, 2, (int64_t[]){10, 2});
    tg_set_requires_grad(frozen, 0);
    int rc;
    char *s = capture(tg_summary, ctx, &rc);
    cr_assert_eq(rc, 0);
    cr_assert_not_null(strstr(s, "parameter"), "%s", s);
    cr_assert_not_null(strstr(s, "0.weight      [8,4]"), "%s", s);
    cr_assert(strstr(s, " f32 ") && strstr(s, " f64 "), "%s", s);
    cr_assert_not_null(strstr(s, "          32           128\n"), "0.weight: 32 values, 128 bytes\n%s", s);
    cr_assert_not_null(strstr(s, "2.bias"), "%s", s);
    /* 32 + 8 + 24 + 3 + 20 values; 67 * 4 + 20 * 8 bytes */
    cr_assert_not_null(strstr(s, "          87           428\n"), "totals\n%s", s);
    cr_assert_not_null(strstr(s, "5 parameter tensors, 87 values (67 trainable)"), "%s", s);
    free(s);
    cr_assert_eq(tg_summary(ctx, NULL), -1);
    cr_assert_not_null(strstr(tg_errmsg(ctx), "tg_summary: argument f is NULL"));
    tg_ctx_free(ctx);
}

Test(inspect, tape_dot_shows_ops_shapes_gradients_and_parameter_names)
{
    tg_ctx *ctx = tg_ctx_new(1);
    tg_mlp m;
    cr_assert_eq(tg_mlp_init(ctx, &m, "", 3, (int64_t[]){4, 8, 3}, TG_ACT_TANH, TG_F32), 0);
    tg_tensor *x = tg_new(ctx, TG_F32, 2, (int64_t[]){5, 4});
    tg_fill_uniform(ctx, x, -1, 1);
    tg_tensor *y = tg_new(ctx, TG_I32, 1, (int64_t[]){5});
    /* layer by layer (tg_mlp_forward would make this small f32 network one node) */
    tg_tensor *h = tg_dense_forward(ctx, &m.layer[0], x, TG_ACT_TANH);
    tg_tensor *loss = tg_cross_entropy(ctx, tg_dense_forward(ctx, &m.layer[1], h, TG_ACT_NONE), y);
    cr_assert_not_null(loss, "%s", tg_errmsg(ctx));
    int rc;
    char *s = capture(tg_tape_dot, ctx, &rc);
    cr_assert_eq(rc, 0);
    cr_assert(!strncmp(s, "digraph tape {", 14) && strstr(s, "}\n"), "%s", s);
    cr_assert_eq(count(s, "shape=box"), 3, "two linear nodes and the loss\n%s", s);
    cr_assert_eq(count(s, "linear\\nf32 [5,8]"), 1, "%s", s);
    cr_assert_eq(count(s, "linear\\nf32 [5,3]"), 1, "%s", s);
    cr_assert_not_null(strstr(s, "label=\"0.weight\\nf32 [8,4]\""), "%s", s);
    cr_assert_not_null(strstr(s, "label=\"2.bias\\nf32 [3]\""), "%s", s);
    cr_assert_eq(count(s, "style=\"bold\""), 4, "four parameters, each once\n%s", s);
    cr_assert_not_null(strstr(s, "style=\"dashed\", label=\"f32 [5,4]\""), "x needs no gradient\n%s", s);
    cr_assert_not_null(strstr(s, "style=\"dashed\", label=\"i32 [5]\""), "%s", s);
    cr_assert_eq(count(s, " -> "), 8, "x (or h), w, b into each linear; logits, y into the loss\n%s", s);
    if (access("/usr/bin/dot", X_OK) == 0) {
        char path[] = "/tmp/tg_dot_XXXXXX";
        int fd = mkstemp(path);
        cr_assert(fd >= 0);
        cr_assert_eq(write(fd, s, strlen(s)), (ssize_t)strlen(s));
        close(fd);
        char cmd[128];
        snprintf(cmd, sizeof cmd, "/usr/bin/dot -Tsvg %s -o /dev/null", path);
        cr_assert_eq(system(cmd), 0, "Graphviz reads the graph");
        unlink(path);
    }
    free(s);
    tg_reset(ctx);
    s = capture(tg_tape_dot, ctx, &rc);
    cr_assert_eq(count(s, "shape=box"), 0, "an empty tape after tg_reset");
    free(s);
    cr_assert_eq(tg_tape_dot(ctx, NULL), -1);
    cr_assert_not_null(strstr(tg_errmsg(ctx), "tg_tape_dot: argument f is NULL"));
    tg_ctx_free(ctx);
}
