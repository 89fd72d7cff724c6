/* SPDX-License-Identifier: MIT */
/* tape_graph: see a model. Builds a 4-16-8-3 tanh MLP, prints its parameter
 * table (tg_summary), records one forward pass and its loss, and writes the
 * tape as Graphviz DOT (tg_tape_dot) to OUT.dot; when Graphviz is installed
 * (apt-get install graphviz) it renders OUT.svg with `dot -Tsvg`.
 *
 *   tape_graph [OUT]       default OUT: tape_graph (tape_graph.dot, .svg)
 */
#define _POSIX_C_SOURCE 200809L
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

#include "tapegrad.h"

int main(int argc, char **argv) {
    const char *out = argc > 1 ? argv[1] : "tape_graph";
    char dot[512], svg[512], cmd[1200];
    snprintf(dot, sizeof dot, "%s.dot", out);
    snprintf(svg, sizeof svg, "%s.svg", out);

    tg_ctx *ctx = tg_ctx_new(1);
    tg_mlp m;
    if (tg_mlp_init(ctx, &m, "", 4, (int64_t[]){4, 16, 8, 3}, TG_ACT_TANH, TG_F32)) goto fail;
    if (tg_summary(ctx, stdout)) goto fail;

    tg_tensor *x = tg_new(ctx, TG_F32, 2, (int64_t[]){32, 4});
    tg_tensor *y = tg_new(ctx, TG_I32, 1, (int64_t[]){32});
    tg_fill_uniform(ctx, x, -1, 1);
    tg_tensor *loss = tg_cross_entropy(ctx, tg_mlp_forward(ctx, &m, x), y);
    if (!loss) goto fail;
    FILE *f = fopen(dot, "w");
    if (!f) {
        perror(dot);
        tg_ctx_free(ctx);
        return 1;
    }
    int rc = tg_tape_dot(ctx, f);
    if (fclose(f) != 0 || rc) goto fail;
    printf("\nwrote %s (%s)\n", dot, "the tape of one forward pass and its loss");
    if (access("/usr/bin/dot", X_OK) == 0) {
        snprintf(cmd, sizeof cmd, "/usr/bin/dot -Tsvg '%s' -o '%s'", dot, svg);
        if (system(cmd) != 0) {
            fprintf(stderr, "tape_graph: dot failed on %s\n", dot);
            tg_ctx_free(ctx);
            return 1;
        }
        printf("wrote %s (Graphviz)\n", svg);
    } else {
        printf("Graphviz is not installed (apt-get install graphviz): render with dot -Tsvg %s\n", dot);
    }
    tg_ctx_free(ctx);
    return 0;
fail:
    fprintf(stderr, "tape_graph: %s\n", tg_errmsg(ctx));
    tg_ctx_free(ctx);
    return 1;
}
