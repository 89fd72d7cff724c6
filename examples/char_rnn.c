/* SPDX-License-Identifier: MIT */
/* char_rnn.c: a character-level LSTM language model on any text file.
 *
 *   x_t = onehot(char_t)            [T,N,V]   V: the distinct bytes of the file
 *   h   = LSTM(x), 2 layers         [T,N,H]   tg_lstm (nn.LSTM), zero initial states
 *   logits = h W + b                [T N,V]   tg_dense
 *   loss = mean -log softmax(logits)[char_{t+1}]   (tg_cross_entropy, nats per character)
 *
 * Training: N windows of T + 1 characters drawn at random positions of the first
 * nine tenths of the file each step, Adam (lr 2e-3), gradients clipped to norm 5 (as
 * Karpathy's char-rnn). Validation: the last tenth cut into windows of T characters,
 * each predicted from a zero state, every character counted: val_loss is the mean
 * negative log-likelihood in nats per character. --sample N then prints N characters
 * generated one at a time from the model's softmax, the LSTM's state carried along.
 *
 * Defaults: 2 layers of hidden 256, sequences of 64, batch 32, 1 thread.
 * Usage: char_rnn --text FILE [--steps N] [--seconds S] [--seed S] [--sample N]
 *                 [--hidden H] [--layers L] [--seq T] [--batch N] [--lr LR]
 *                 [--threads K] [--json]
 * The Bible text of script/demo: apt-get install bible-kjv; bible "Gen1:1-Rev22:21".
 * Exit status 0 when training worked: the loss fell (the last tenth of the steps'
 * mean training loss below the first step's) and warm steps allocated nothing
 * (tg_mem_stats arena_grows unchanged after the first step). */
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "tapegrad.h"

#include "example_util.h"

typedef struct {
    long steps, seed, sample, hidden, layers, seq, batch, threads;
    double seconds, lr;
    int json;
    const char *text;
} options;

typedef struct {
    tg_lstm lstm;
    tg_dense head;
    int64_t V, H;
    int L;
} model;

/* The one-hot inputs x [T,N,V] and the targets [T N] of the windows starting at
 * pos[0..N) (each T + 1 characters of ids). */
static int make_batch(tg_ctx *ctx, const model *m, const unsigned char *ids, const int64_t *pos,
                      int64_t T, int64_t N, float *onehot, int32_t *tgt, tg_tensor **x,
                      tg_tensor **y)
{
    memset(onehot, 0, (size_t)(T * N * m->V) * sizeof *onehot);
    for (int64_t t = 0; t < T; t++)
        for (int64_t b = 0; b < N; b++) {
            onehot[(t * N + b) * m->V + ids[pos[b] + t]] = 1.0f;
            tgt[t * N + b] = ids[pos[b] + t + 1];
        }
    const int64_t xs[3] = {T, N, m->V}, ys[1] = {T * N};
    *x = tg_from(ctx, TG_F32, 3, xs, onehot);
    *y = tg_from(ctx, TG_I32, 1, ys, tgt);
    return tg_ok(ctx) ? 0 : -1;
}

/* logits [T N,V] of x [T,N,V]; h0, c0 and the final states as tg_lstm_forward */
static tg_tensor *logits_of(tg_ctx *ctx, const model *m, tg_tensor *x, tg_tensor *h0,
                            tg_tensor *c0, tg_tensor **hn, tg_tensor **cn)
{
    tg_tensor *h = tg_lstm_forward(ctx, &m->lstm, x, h0, c0, hn, cn);
    if (!h) return NULL;
    const int64_t flat[2] = {tg_dim(h, 0) * tg_dim(h, 1), m->H};
    return tg_dense_forward(ctx, &m->head, tg_reshape(ctx, h, 2, flat), TG_ACT_NONE);
}

/* Mean nats per character over the windows of T characters of ids[0..n), N at a time. */
static double validate(tg_ctx *ctx, const model *m, const unsigned char *ids, int64_t n,
                       int64_t T, int64_t N, float *onehot, int32_t *tgt)
{
    int64_t windows = (n - 1) / T, *pos = malloc((size_t)N * sizeof *pos);
    double sum = 0;
    int64_t count = 0;
    int prev = tg_no_grad(ctx, 1);
    for (int64_t w0 = 0; pos && w0 < windows && tg_ok(ctx); w0 += N) {
        int64_t nb = windows - w0 < N ? windows - w0 : N;
        for (int64_t b = 0; b < nb; b++) pos[b] = (w0 + b) * T;
        tg_tensor *x, *y;
        if (make_batch(ctx, m, ids, pos, T, nb, onehot, tgt, &x, &y)) break;
        double l = tg_item(tg_cross_entropy(ctx, logits_of(ctx, m, x, NULL, NULL, NULL, NULL), y));
        sum += l * (double)(T * nb);
        count += T * nb;
        tg_reset(ctx);
    }
    tg_no_grad(ctx, prev);
    free(pos);
    return count && tg_ok(ctx) ? sum / (double)count : NAN;
}

/* Print n characters sampled from the model, starting after a newline. */
static void sample(tg_ctx *ctx, const model *m, const unsigned char *vocab, long n)
{
    const int64_t V = m->V, sh[3] = {m->L, 1, m->H}, xs[3] = {1, 1, V};
    size_t ssz = (size_t)(m->L * m->H) * sizeof(float);
    float *h = calloc(1, ssz), *c = calloc(1, ssz), *x = calloc((size_t)V, sizeof *x),
          *p = malloc((size_t)V * sizeof *p);
    int cur = 0;
    for (int64_t k = 0; k < V; k++)
        if (vocab[k] == '\n') cur = (int)k;
    int prev = tg_no_grad(ctx, 1);
    printf("\n--- %ld characters sampled ---\n", n);
    for (long i = 0; h && c && x && p && i < n && tg_ok(ctx); i++) {
        memset(x, 0, (size_t)V * sizeof *x);
        x[cur] = 1.0f;
        tg_tensor *hn, *cn;
        tg_tensor *lg = logits_of(ctx, m, tg_from(ctx, TG_F32, 3, xs, x),
                                  tg_from(ctx, TG_F32, 3, sh, h), tg_from(ctx, TG_F32, 3, sh, c),
                                  &hn, &cn);
        if (!lg) break;
        tg_copy_out(tg_softmax(ctx, lg), TG_F32, p);
        tg_copy_out(hn, TG_F32, h);
        tg_copy_out(cn, TG_F32, c);
        double u = tg_rand_uniform(ctx), acc = 0;
        cur = (int)V - 1;
        for (int64_t k = 0; k < V; k++) {
            acc += p[k];
            if (u < acc) {
                cur = (int)k;
                break;
            }
        }
        putchar(vocab[cur]);
        tg_reset(ctx);
    }
    printf("\n---\n");
    tg_no_grad(ctx, prev);
    free(h);
    free(c);
    free(x);
    free(p);
}

static void usage(FILE *f)
{
    fprintf(f, "usage: char_rnn --text FILE [--steps N] [--seconds S] [--seed S] [--sample N]\n"
               "                [--hidden H] [--layers L] [--seq T] [--batch N] [--lr LR]\n"
               "                [--threads K] [--json]\n"
               "  a character-level LSTM language model (default 2 layers of 256, sequences\n"
               "  of 64, batch 32, Adam lr 2e-3); the last tenth of FILE is held out.\n"
               "  --steps N    training steps (default 1000); --seconds S stops earlier\n"
               "  --sample N   print N generated characters at the end\n"
               "  --json       end with one JSON line (val_loss, ms_per_step, ...)\n");
}

static int parse_args(int argc, char **argv, options *o)
{
    *o = (options){.steps = 1000, .seed = 1, .hidden = 256, .layers = 2, .seq = 64,
                   .batch = 32, .threads = 1, .seconds = 0, .lr = 2e-3};
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        int ok = 1;
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
            usage(stdout);
            exit(0);
        } else if (!strcmp(a, "--json")) {
            o->json = 1;
            continue;
        } else if (!v) {
            ok = 0;
        } else if (!strcmp(a, "--text")) o->text = v;
        else if (!strcmp(a, "--steps")) ok = !parse_long(v, 1, 100000000, &o->steps);
        else if (!strcmp(a, "--seed")) ok = !parse_long(v, 0, 0x7fffffff, &o->seed);
        else if (!strcmp(a, "--sample")) ok = !parse_long(v, 0, 100000000, &o->sample);
        else if (!strcmp(a, "--hidden")) ok = !parse_long(v, 1, 65536, &o->hidden);
        else if (!strcmp(a, "--layers")) ok = !parse_long(v, 1, TG_RNN_MAX_LAYERS, &o->layers);
        else if (!strcmp(a, "--seq")) ok = !parse_long(v, 1, 100000, &o->seq);
        else if (!strcmp(a, "--batch")) ok = !parse_long(v, 1, 100000, &o->batch);
        else if (!strcmp(a, "--threads")) ok = !parse_long(v, 1, 1024, &o->threads);
        else if (!strcmp(a, "--seconds")) ok = !parse_double(v, 0, 1e9, &o->seconds);
        else if (!strcmp(a, "--lr")) ok = !parse_double(v, 0, 10, &o->lr);
        else ok = 0;
        if (!ok) {
            fprintf(stderr, "char_rnn: bad argument '%s'%s\n", a, v ? "" : " (or a missing value)");
            usage(stderr);
            return -1;
        }
        i++;
    }
    if (!o->text) {
        fprintf(stderr, "char_rnn: --text FILE is required\n");
        usage(stderr);
        return -1;
    }
    return 0;
}

int main(int argc, char **argv)
{
    options o;
    if (parse_args(argc, argv, &o)) return 2;
    int64_t n = 0;
    unsigned char *text = read_file("char_rnn", o.text, &n);
    if (!text) return 1;
    const int64_t T = o.seq, N = o.batch, n_train = n - n / 10, n_val = n / 10;
    if (n_train < T + 2 || n_val < T + 1) {
        fprintf(stderr, "char_rnn: %s has %lld bytes; --seq %lld needs at least %lld\n", o.text,
                (long long)n, (long long)T, (long long)(10 * (T + 2)));
        free(text);
        return 1;
    }
    /* the vocabulary: the distinct bytes, in byte order */
    unsigned char vocab[256];
    int index[256], V = 0;
    for (int b = 0; b < 256; b++) index[b] = -1;
    for (int64_t i = 0; i < n; i++) index[text[i]] = 0;
    for (int b = 0; b < 256; b++)
        if (index[b] == 0) {
            vocab[V] = (unsigned char)b;
            index[b] = V++;
        }
    for (int64_t i = 0; i < n; i++) text[i] = (unsigned char)index[text[i]];

    tg_ctx *ctx = tg_ctx_new((uint64_t)o.seed);
    if (!ctx) return 1;
    tg_set_threads(ctx, (int)o.threads);
    model m = {.V = V, .H = o.hidden, .L = (int)o.layers};
    tg_lstm_init(ctx, &m.lstm, "lstm", V, o.hidden, (int)o.layers, 1, TG_F32);
    tg_dense_init(ctx, &m.head, "head", o.hidden, V, TG_F32, TG_INIT_XAVIER_UNIFORM);
    tg_tensor *params[4 * TG_RNN_MAX_LAYERS + 2];
    int np = tg_rnn_params(&m.lstm, params, 4 * TG_RNN_MAX_LAYERS);
    params[np++] = m.head.weight;
    params[np++] = m.head.bias;
    tg_optim_opts oo = tg_optim_defaults(TG_OPT_ADAM);
    oo.lr = o.lr;
    tg_optim *opt = tg_ok(ctx) ? tg_optim_new(ctx, &oo, params, np) : NULL;
    float *onehot = malloc((size_t)(T * N * V) * sizeof *onehot);
    int32_t *tgt = malloc((size_t)(T * N) * sizeof *tgt);
    int64_t *pos = malloc((size_t)N * sizeof *pos), nparams = 0;
    int rc = 1;
    if (!opt || !onehot || !tgt || !pos) goto done;
    for (int k = 0; k < np; k++) nparams += tg_numel(params[k]);
    printf("char_rnn: %s, %lld bytes (%lld training, %lld held out), vocabulary %d\n", o.text,
           (long long)n, (long long)n_train, (long long)n_val, V);
    printf("LSTM %ld x %ld, sequences %lld, batch %lld, Adam lr %g, %lld parameters, "
           "%ld thread%s\n", o.layers, o.hidden, (long long)T, (long long)N, o.lr,
           (long long)nparams, o.threads, o.threads > 1 ? "s" : "");

    double t0 = now(), t_warm = 0, c_warm = 0, first_loss = NAN, recent = 0, tail_sum = 0;
    long steps = 0, tail_n = 0, every = o.steps >= 20 ? o.steps / 20 : 1;
    uint64_t grows_after_first = 0, grows_end = 0;
    for (long s = 1; s <= o.steps; s++) {
        for (int64_t b = 0; b < N; b++)
            pos[b] = (int64_t)tg_rand_below(ctx, (uint64_t)(n_train - T - 1));
        tg_tensor *x, *y;
        if (make_batch(ctx, &m, text, pos, T, N, onehot, tgt, &x, &y)) break;
        tg_tensor *loss = tg_cross_entropy(ctx, logits_of(ctx, &m, x, NULL, NULL, NULL, NULL), y);
        tg_zero_grad(ctx);
        tg_backward(ctx, loss);
        tg_clip_grad_norm(ctx, params, np, 5.0);
        tg_optim_step(opt);
        double l = tg_item(loss);
        tg_reset(ctx);
        if (!tg_ok(ctx)) break;
        steps = s;
        tg_mem_stats st;
        tg_mem_stats_get(ctx, &st);
        if (s == 1) {
            first_loss = l;
            recent = l;
            grows_after_first = st.arena_grows;
            t_warm = now();
            c_warm = cpu_now();
        }
        grows_end = st.arena_grows;
        recent = 0.9 * recent + 0.1 * l;
        if (s > o.steps - (o.steps + 9) / 10) {
            tail_sum += l;
            tail_n++;
        }
        if (s % every == 0 || s == 1 || s == o.steps)
            printf("  step %6ld/%ld  loss %.4f  (smoothed %.4f)  %.1f s\n", s, o.steps, l, recent,
                   now() - t0);
        fflush(stdout);
        if (o.seconds > 0 && now() - t0 >= o.seconds) {
            if (!tail_n) {
                tail_sum = l;
                tail_n = 1;
            }
            break;
        }
    }
    if (!tg_ok(ctx) || !steps) goto done;
    double train_s = now() - t0;
    double ms_per_step = steps > 1 ? 1e3 * (now() - t_warm) / (double)(steps - 1) : 1e3 * train_s;
    double cpu_ms_per_step = steps > 1 ? 1e3 * (cpu_now() - c_warm) / (double)(steps - 1) : NAN;
    double tv = now();
    double val = validate(ctx, &m, text + n_train, n_val, T, N, onehot, tgt);
    double val_s = now() - tv;
    double tail = tail_sum / (double)tail_n;
    printf("trained %ld steps in %.1f s (%.1f ms per step after the first, %.1f ms of CPU); "
           "training loss %.4f -> %.4f\n", steps, train_s, ms_per_step, cpu_ms_per_step,
           first_loss, tail);
    printf("held-out loss %.4f nats per character (%.3f bits), %.1f s to evaluate\n", val,
           val / log(2.0), val_s);
    printf("arena grows after the first step: %llu\n",
           (unsigned long long)(grows_end - grows_after_first));
    if (o.sample > 0) sample(ctx, &m, vocab, o.sample);
    int fell = tail < first_loss - 0.05 * first_loss;
    int no_alloc = grows_end == grows_after_first;
    rc = fell && no_alloc && isfinite(val) && tg_ok(ctx) ? 0 : 1;
    if (!fell) printf("UNEXPECTED: the training loss did not fall\n");
    if (!no_alloc) printf("UNEXPECTED: warm steps grew the arena\n");
    if (o.json)
        printf("{\"example\":\"char_rnn\",\"val_loss\":%.6f,\"ms_per_step\":%.3f,"
               "\"cpu_ms_per_step\":%.3f,\"steps\":%ld,"
               "\"first_loss\":%.6f,\"train_loss\":%.6f,\"seconds\":%.2f,\"params\":%lld,"
               "\"vocab\":%d,\"hidden\":%ld,\"layers\":%ld,\"seq\":%lld,\"batch\":%lld,"
               "\"threads\":%ld,\"arena_grows_warm\":%llu}\n",
               val, ms_per_step, cpu_ms_per_step, steps, first_loss, tail, train_s,
               (long long)nparams, V,
               o.hidden, o.layers, (long long)T, (long long)N, o.threads,
               (unsigned long long)(grows_end - grows_after_first));
done:
    if (!tg_ok(ctx)) fprintf(stderr, "char_rnn: %s\n", tg_errmsg(ctx));
    tg_optim_free(opt);
    tg_ctx_free(ctx);
    free(onehot);
    free(tgt);
    free(pos);
    free(text);
    return rc;
}
