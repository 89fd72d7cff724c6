/* SPDX-License-Identifier: MIT */
/* char_gpt.c: a character-level transformer language model (a small GPT).
 *
 *   tokens [B,T] -> token embedding [V,C] + position embedding [T_max,C]
 *                -> L pre-layer-norm blocks (tg_transformer_block: causal
 *                   multi-head self-attention, GELU MLP of width F)
 *                -> final layer norm -> linear head [C,V] -> logits
 *   loss = mean over the B*T positions of -log softmax(logits)[next character]
 *
 * Defaults: 4 blocks, 4 heads, width 128, context 64, batch 32, MLP width 512,
 * AdamW lr 3e-4 (PyTorch's other defaults: betas 0.9/0.999, weight decay 0.01).
 * The vocabulary is the set of bytes in the text; the last tenth of the text is
 * held out, and val_loss is the mean loss in nats per character over all of it
 * (windows of the context length, each character predicted from the ones
 * before it in its window). Initialisation as PyTorch's modules: embeddings
 * N(0,1), linear layers U(-1/sqrt(in), 1/sqrt(in)), layer norms 1 and 0.
 *
 * Text: any file. The King James Bible: apt-get install bible-kjv, then
 *   bible "Gen1:1-Rev22:21" > kjv.txt
 *
 * Usage: char_gpt --text FILE [--steps N] [--seconds X] [--seed S] [--sample N]
 *        [--json] [--layers L] [--heads H] [--width C] [--context T] [--batch B]
 *        [--ff F] [--lr X] [--threads N] [--log-every N] [--eval-chars N]
 *   --seconds X     train for X seconds of wall time instead of --steps steps
 *   --sample N      after training, print N generated characters
 *   --eval-chars N  evaluate val_loss on the first N held-out characters only
 *                   (default: all of them)
 *   --json          end with one JSON line: val_loss, ms_per_step and more
 * Exit status 0 when training lowered the loss on the held-out text (compared
 * on its first 4096 characters before and after training), and a warm
 * training step did not grow the arena; 1 otherwise, 2 on bad arguments or
 * input.
 */
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "tapegrad.h"

#include "example_util.h"

#define MAX_LAYERS 16
#define CHECK_CHARS 4096 /* held-out characters compared before and after training */

typedef struct {
    const char *text;
    long steps, seed, sample, layers, heads, width, context, batch, ff, threads, log_every;
    long eval_chars;
    double lr, seconds;
    int json;
} options;

typedef struct {
    int64_t vocab, width, context;
    int n_layers;
    tg_embed tok_emb, pos_emb;    /* [V,C], [T_max,C] */
    tg_transformer_block block[MAX_LAYERS];
    tg_layernorm ln_f;
    tg_dense head;                /* [C,V] */
} gpt;

/* splitmix64: the batches' and the sampler's random numbers */
static uint64_t next_u64(uint64_t *s)
{
    uint64_t z = (*s += 0x9e3779b97f4a7c15u);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9u;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebu;
    return z ^ (z >> 31);
}
static double next_unit(uint64_t *s) { return (double)(next_u64(s) >> 11) * 0x1.0p-53; }

static int gpt_init(tg_ctx *ctx, gpt *m, int64_t vocab, const options *o)
{
    memset(m, 0, sizeof *m);
    m->vocab = vocab, m->width = o->width, m->context = o->context, m->n_layers = (int)o->layers;
    if (tg_embed_init(ctx, &m->tok_emb, "tok_emb", vocab, o->width, TG_F32) != 0 ||
        tg_embed_init(ctx, &m->pos_emb, "pos_emb", o->context, o->width, TG_F32) != 0)
        return -1;
    for (int l = 0; l < m->n_layers; l++) {
        char prefix[32];
        snprintf(prefix, sizeof prefix, "blocks.%d.", l);
        if (tg_transformer_block_init(ctx, &m->block[l], prefix, o->width, o->heads, o->ff,
                                      TG_F32) != 0)
            return -1;
    }
    if (tg_layernorm_init(ctx, &m->ln_f, "ln_f", o->width, TG_F32) != 0 ||
        tg_dense_init(ctx, &m->head, "head", o->width, vocab, TG_F32, TG_INIT_ZEROS) != 0)
        return -1;
    const double bound = 1 / sqrt((double)o->width); /* nn.Linear's default */
    tg_fill_uniform(ctx, m->head.weight, -bound, bound);
    tg_fill_uniform(ctx, m->head.bias, -bound, bound);
    return tg_ok(ctx) ? 0 : -1;
}

/* logits [B*T,V] of the token ids x [B,T] (T <= context) */
static tg_tensor *gpt_forward(tg_ctx *ctx, const gpt *m, const int32_t *ids, int64_t b, int64_t t)
{
    const int64_t bt[2] = {b, t};
    int32_t pos[1024];
    for (int64_t i = 0; i < t; i++) pos[i] = (int32_t)i;
    tg_tensor *x = tg_from(ctx, TG_I32, 2, bt, ids);
    tg_tensor *p = tg_from(ctx, TG_I32, 1, &t, pos);
    tg_tensor *h = tg_add(ctx, tg_embed_forward(ctx, &m->tok_emb, x),
                          tg_embed_forward(ctx, &m->pos_emb, p));
    for (int l = 0; l < m->n_layers; l++) h = tg_transformer_block_forward(ctx, &m->block[l], h, 1);
    h = tg_layernorm_forward(ctx, &m->ln_f, h);
    const int64_t rows[2] = {b * t, m->width};
    return tg_dense_forward(ctx, &m->head, tg_reshape(ctx, h, 2, rows), TG_ACT_NONE);
}

/* Mean loss in nats per character over ids[0..n): windows of up to `context`
 * characters, batch at a time, each character after the first of a window
 * predicted from those before it. No tape, evaluation mode. -1 on error. */
static double evaluate(tg_ctx *ctx, const gpt *m, const int32_t *ids, int64_t n, int64_t batch)
{
    const int64_t t = m->context;
    int was_nograd = tg_no_grad(ctx, 1), was_train = tg_train_mode(ctx, 0);
    int32_t *x = malloc(sizeof *x * (size_t)(batch * t));
    int32_t *y = malloc(sizeof *y * (size_t)(batch * t));
    double total = 0;
    int64_t count = 0;
    for (int64_t start = 0; x && y && start + 1 < n && tg_ok(ctx);) {
        /* up to `batch` full windows of t inputs and their t targets, or the
         * shorter last window alone */
        const int64_t left = n - 1 - start; /* targets not yet predicted */
        int64_t nb = left < t ? 1 : (left / t < batch ? left / t : batch);
        const int64_t tt = left < t ? left : t, ny = nb * tt;
        for (int64_t w = 0; w < nb; w++, start += tt) {
            memcpy(x + w * tt, ids + start, sizeof *x * (size_t)tt);
            memcpy(y + w * tt, ids + start + 1, sizeof *y * (size_t)tt);
        }
        tg_tensor *logits = gpt_forward(ctx, m, x, nb, tt);
        tg_tensor *loss = tg_cross_entropy(ctx, logits, tg_from(ctx, TG_I32, 1, &ny, y));
        if (loss) total += tg_item(loss) * (double)ny, count += ny;
        tg_reset(ctx);
    }
    free(x), free(y);
    tg_no_grad(ctx, was_nograd), tg_train_mode(ctx, was_train);
    return tg_ok(ctx) && count > 0 ? total / (double)count : -1;
}

/* n characters drawn one at a time from the model's softmax, after a newline
 * (or the first character of the vocabulary) */
static void sample_text(tg_ctx *ctx, const gpt *m, const unsigned char *itos, int32_t first,
                        long n, uint64_t *rng)
{
    int was_nograd = tg_no_grad(ctx, 1), was_train = tg_train_mode(ctx, 0);
    int32_t window[1024];
    int64_t len = 1;
    window[0] = first;
    double *p = malloc(sizeof *p * (size_t)m->vocab);
    for (long i = 0; i < n && p && tg_ok(ctx); i++) {
        tg_tensor *logits = gpt_forward(ctx, m, window, 1, len);
        if (!logits) break;
        const float *row = (const float *)tg_data(logits) + (len - 1) * m->vocab;
        double mx = row[0], sum = 0;
        for (int64_t v = 1; v < m->vocab; v++) mx = row[v] > mx ? row[v] : mx;
        for (int64_t v = 0; v < m->vocab; v++) sum += p[v] = exp(row[v] - mx);
        double u = next_unit(rng) * sum;
        int32_t next = (int32_t)m->vocab - 1;
        for (int64_t v = 0; v < m->vocab; v++)
            if ((u -= p[v]) < 0) {
                next = (int32_t)v;
                break;
            }
        tg_reset(ctx);
        putchar(itos[next]);
        if (len == m->context) memmove(window, window + 1, sizeof *window * (size_t)(--len));
        window[len++] = next;
    }
    putchar('\n');
    free(p);
    tg_no_grad(ctx, was_nograd), tg_train_mode(ctx, was_train);
}

static void usage(FILE *f)
{
    fprintf(f, "usage: char_gpt --text FILE [--steps N] [--seconds X] [--seed S] [--sample N]\n"
               "                [--json] [--layers L] [--heads H] [--width C] [--context T]\n"
               "                [--batch B] [--ff F] [--lr X] [--threads N] [--log-every N]\n"
               "                [--eval-chars N]\n");
}

static int parse_args(int argc, char **argv, options *o)
{
    *o = (options){.steps = 200, .seed = 1, .layers = 4, .heads = 4, .width = 128,
                   .context = 64, .batch = 32, .ff = 512, .lr = 3e-4, .log_every = 50};
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "--json")) {
            o->json = 1;
            continue;
        }
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
            usage(stdout);
            exit(0);
        }
        if (i + 1 >= argc) {
            fprintf(stderr, "char_gpt: %s needs a value\n", a);
            return -1;
        }
        const char *v = argv[++i];
        if (!strcmp(a, "--text")) {
            o->text = v;
            continue;
        }
        char *end;
        errno = 0;
        if (!strcmp(a, "--lr") || !strcmp(a, "--seconds")) {
            double *dst = a[2] == 'l' ? &o->lr : &o->seconds;
            *dst = strtod(v, &end);
            if (*end || errno || !(*dst > 0) || !isfinite(*dst)) goto bad;
            continue;
        }
        long n = strtol(v, &end, 10);
        if (*end || errno || n < 0) goto bad;
        struct { const char *name; long *dst; long lo, hi; } ints[] = {
            {"--steps", &o->steps, 0, 1L << 40},   {"--seed", &o->seed, 0, 1L << 62},
            {"--sample", &o->sample, 0, 1L << 30}, {"--layers", &o->layers, 1, MAX_LAYERS},
            {"--heads", &o->heads, 1, 1024},       {"--width", &o->width, 1, 1 << 16},
            {"--context", &o->context, 1, 1024},   {"--batch", &o->batch, 1, 1 << 16},
            {"--ff", &o->ff, 1, 1 << 20},          {"--threads", &o->threads, 1, 1024},
            {"--log-every", &o->log_every, 0, 1L << 40},
            {"--eval-chars", &o->eval_chars, 2, 1L << 40}};
        int found = 0;
        for (size_t k = 0; k < sizeof ints / sizeof ints[0]; k++)
            if (!strcmp(a, ints[k].name)) {
                if (n < ints[k].lo || n > ints[k].hi) goto bad;
                *ints[k].dst = n, found = 1;
            }
        if (found) continue;
        fprintf(stderr, "char_gpt: unknown option %s\n", a);
        usage(stderr);
        return -1;
    bad:
        fprintf(stderr, "char_gpt: bad value '%s' for %s\n", v, a);
        return -1;
    }
    if (!o->text) {
        fprintf(stderr, "char_gpt: --text FILE is required\n");
        usage(stderr);
        return -1;
    }
    if (o->width % o->heads) {
        fprintf(stderr, "char_gpt: --width %ld is not a multiple of --heads %ld\n", o->width,
                o->heads);
        return -1;
    }
    return 0;
}

int main(int argc, char **argv)
{
    options o;
    if (parse_args(argc, argv, &o) != 0) return 2;
    int64_t n = 0;
    unsigned char *text = read_file("char_gpt", o.text, &n);
    if (!text) return 2;
    /* vocabulary: the bytes that occur, in byte order */
    int32_t stoi[256];
    unsigned char itos[256];
    int64_t vocab = 0;
    int seen[256] = {0};
    for (int64_t i = 0; i < n; i++) seen[text[i]] = 1;
    for (int c = 0; c < 256; c++)
        if (seen[c]) itos[vocab] = (unsigned char)c, stoi[c] = (int32_t)vocab++;
    const int64_t n_val = n / 10, n_train = n - n_val;
    if (n_train < o.context + 2 || n_val < 2) {
        fprintf(stderr, "char_gpt: %s has %lld bytes: too short for a context of %ld with a "
                        "held-out tenth\n", o.text, (long long)n, o.context);
        free(text);
        return 2;
    }
    int32_t *ids = malloc(sizeof *ids * (size_t)n);
    if (!ids) {
        free(text);
        return 2;
    }
    for (int64_t i = 0; i < n; i++) ids[i] = stoi[text[i]];
    free(text);
    const int32_t *train = ids, *val = ids + n_train;

    tg_ctx *ctx = tg_ctx_new((uint64_t)o.seed);
    if (!ctx) return 2;
    if (o.threads) tg_set_threads(ctx, (int)o.threads);
    gpt m;
    int rc = 1;
    tg_optim *opt = NULL;
    int32_t *bx = malloc(sizeof *bx * (size_t)(o.batch * o.context));
    int32_t *by = malloc(sizeof *by * (size_t)(o.batch * o.context));
    if (!bx || !by || gpt_init(ctx, &m, vocab, &o) != 0) goto done;
    tg_optim_opts oo = tg_optim_defaults(TG_OPT_ADAMW);
    oo.lr = o.lr;
    if (!(opt = tg_optim_new(ctx, &oo, NULL, 0))) goto done;
    int64_t n_params = 0;
    for (int i = 0; i < tg_param_count(ctx); i++) n_params += tg_numel(tg_param_at(ctx, i));
    printf("char_gpt: %s, %lld characters (%lld training, %lld held out), vocabulary %lld\n",
           o.text, (long long)n, (long long)n_train, (long long)n_val, (long long)vocab);
    printf("model: %ld blocks, %ld heads, width %ld, context %ld, MLP %ld, %lld parameters; "
           "batch %ld, AdamW lr %g, %d threads\n", o.layers, o.heads, o.width, o.context, o.ff,
           (long long)n_params, o.batch, o.lr, tg_get_threads(ctx));

    const int64_t check_n = n_val < CHECK_CHARS ? n_val : CHECK_CHARS;
    const double check_before = evaluate(ctx, &m, val, check_n, o.batch);
    uint64_t rng = (uint64_t)o.seed * 0x2545f4914f6cdd1du + 1;
    const int64_t ny = o.batch * o.context;
    double t_first = 0, t_rest = 0, cpu_rest = 0, loss_acc = 0, last_loss = NAN;
    long loss_n = 0;
    uint64_t grows_warm = 0;
    const double t_train = now();
    long step = 0;
    for (; (o.seconds > 0 ? now() - t_train < o.seconds : step < o.steps) && tg_ok(ctx); step++) {
        double t0 = now(), c0 = cpu_now();
        for (long b = 0; b < o.batch; b++) {
            int64_t at = (int64_t)(next_u64(&rng) % (uint64_t)(n_train - o.context));
            memcpy(bx + b * o.context, train + at, sizeof *bx * (size_t)o.context);
            memcpy(by + b * o.context, train + at + 1, sizeof *by * (size_t)o.context);
        }
        tg_tensor *logits = gpt_forward(ctx, &m, bx, o.batch, o.context);
        tg_tensor *loss = tg_cross_entropy(ctx, logits, tg_from(ctx, TG_I32, 1, &ny, by));
        tg_backward(ctx, loss);
        tg_optim_step(opt);
        if (!tg_ok(ctx)) break;
        last_loss = tg_item(loss);
        loss_acc += last_loss, loss_n++;
        tg_zero_grad(ctx);
        tg_reset(ctx);
        double dt = now() - t0;
        if (step == 0) {
            t_first = dt;
        } else {
            t_rest += dt;
            cpu_rest += cpu_now() - c0;
        }
        if (step == 1) { /* the arena has its size after the first step's reset */
            tg_mem_stats st;
            tg_mem_stats_get(ctx, &st);
            grows_warm = st.arena_grows;
        }
        const int last = o.seconds <= 0 && step + 1 == o.steps;
        if (o.log_every && ((step + 1) % o.log_every == 0 || last)) {
            printf("step %6ld  train loss %.4f  %.1f ms/step\n", step + 1, loss_acc / loss_n,
                   1e3 * (step ? t_rest / (double)step : t_first));
            fflush(stdout);
            loss_acc = 0, loss_n = 0;
        }
    }
    if (!tg_ok(ctx)) goto done;
    o.steps = step;
    tg_mem_stats st;
    tg_mem_stats_get(ctx, &st);
    const uint64_t warm_grows = o.steps >= 2 ? st.arena_grows - grows_warm : 0;
    const double ms_per_step = 1e3 * (o.steps > 1 ? t_rest / (double)(o.steps - 1) : t_first);
    const double cpu_ms_per_step = o.steps > 1 ? 1e3 * cpu_rest / (double)(o.steps - 1) : NAN;

    const double check_after = evaluate(ctx, &m, val, check_n, o.batch);
    const int64_t eval_n = o.eval_chars && o.eval_chars < n_val ? o.eval_chars : n_val;
    double t0 = now();
    const double val_loss = evaluate(ctx, &m, val, eval_n, o.batch);
    printf("held-out loss %.4f nats/char over %lld characters (%.1f s); first %lld: %.4f before "
           "training, %.4f after\n", val_loss, (long long)eval_n, now() - t0, (long long)check_n,
           check_before, check_after);
    printf("arena grows in warm steps: %llu\n", (unsigned long long)warm_grows);
    if (o.sample > 0) {
        printf("--- %ld sampled characters ---\n", o.sample);
        int32_t first = seen['\n'] ? stoi['\n'] : 0;
        sample_text(ctx, &m, itos, first, o.sample, &rng);
    }
    if (!tg_ok(ctx)) goto done;
    rc = check_after < check_before && warm_grows == 0 ? 0 : 1;
    if (rc) printf("UNEXPECTED: %s\n", warm_grows ? "a warm step grew the arena"
                                                   : "the held-out loss did not fall");
    if (o.json)
        printf("{\"val_loss\": %.6f, \"ms_per_step\": %.3f, \"cpu_ms_per_step\": %.3f, "
               "\"steps\": %ld, \"last_train_loss\": "
               "%.6f, \"val_loss_before\": %.6f, \"val_chars\": %lld, \"params\": %lld, "
               "\"threads\": %d, \"warm_arena_grows\": %llu, \"arena_capacity\": %zu}\n",
               val_loss, ms_per_step, cpu_ms_per_step, o.steps, last_loss, check_before,
               (long long)eval_n,
               (long long)n_params, tg_get_threads(ctx), (unsigned long long)warm_grows,
               st.arena_capacity);
done:
    if (!tg_ok(ctx)) {
        fprintf(stderr, "char_gpt: %s\n", tg_errmsg(ctx));
        rc = 1;
    }
    tg_optim_free(opt);
    tg_ctx_free(ctx);
    free(bx), free(by), free(ids);
    return rc;
}
