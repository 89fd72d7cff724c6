/* SPDX-License-Identifier: MIT */
/* tg-mlp: train, evaluate and use a multilayer perceptron from the command line.
 *
 *   tg-mlp train   --data DIR|FILE.csv [options]   train, evaluate each epoch, save
 *   tg-mlp eval    --model M --data D [--json]      loss, accuracy, confusion matrix
 *   tg-mlp predict --model M --data D [--proba]     one class (or probabilities) per line
 *   tg-mlp plot    LOG --out FILE.svg               the loss and accuracy curves of --log
 *
 * Data: a directory holds an IDX data set with the MNIST file names
 * (train-images-idx3-ubyte[.gz], train-labels-..., t10k-...): train on the
 * train files, test on the t10k files. A file is a CSV (--delimiter): class
 * labels, integers or names, in one column (--label, default the last), split
 * 80/20 at random (--test-fraction, --seed) into training and test parts, and
 * --val-split keeps part of the training part for validation.
 *
 * The model is saved as a safetensors checkpoint (tg_save_meta) whose
 * metadata describe the network, so eval and predict rebuild it without
 * being told the architecture:
 *   tg_mlp.version   "2" (1: the weights were [in,out] and named fc1, fc2, ...)
 *   tg_mlp.widths    "784,128,10"   inputs, hidden widths, classes
 *   tg_mlp.act       "relu"         hidden activation (relu, tanh, sigmoid, leaky_relu, none)
 *   tg_mlp.input     "idx" | "csv"
 *   tg_mlp.label     the CSV label column as given (name or index; "-1": the last)
 *   tg_mlp.classes   the class names, one per line in class order, when the labels were words
 *   tg_mlp.scaler.mean, tg_mlp.scaler.std
 *                    with --standardize: per-feature mean and std fitted on the
 *                    training part, comma-separated, "%.9g" (exact for floats)
 *   tg_mlp.optimizer, tg_mlp.lr, tg_mlp.epochs, tg_mlp.batch, tg_mlp.seed,
 *   tg_mlp.test_accuracy   how it was trained (informational; epochs: those done)
 *   tg_mlp.best_val_loss   with --patience: the validation loss of the saved epoch
 * Beside it, MODEL.resume holds the optimiser, batcher and random state
 * (tg_resume_save), so that --resume MODEL continues the run exactly.
 * The parameters are those of the equivalent torch.nn.Sequential(Linear, act,
 * Linear, ...): "0.weight" [out,in], "0.bias" [out], "2.weight", ..., so the
 * file loads into it with load_state_dict(strict=True) (docs/interop.md).
 *
 * Exit status: 0 ok, 1 an error (data, model, file), 2 bad arguments.
 * Documentation: docs/cli.md.
 */
#define _POSIX_C_SOURCE 200809L /* stat, clock_gettime, getline, strndup, mkstemp */
#define _DEFAULT_SOURCE         /* getopt_long */
#include <errno.h>
#include <getopt.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "tapegrad.h"

#include "example_util.h"

#define PROG "tg-mlp"
#define MAX_WIDTH (1 << 24)
#define MAX_CLASSES 65536
#define EVAL_BATCH 1000
#define MODEL_VERSION "2"
#ifndef TG_MLP_VERSION
#define TG_MLP_VERSION "0.1.0"
#endif

/* ======================================================================== */
/* Options                                                                  */
/* ======================================================================== */

enum { CMD_TRAIN = 1, CMD_EVAL = 2, CMD_PREDICT = 4, CMD_PLOT = 8 };

typedef struct {
    int cmd;
    const char *data, *model, *label, *layers, *out, *log, *resume, *plot_log;
    char delimiter;
    tg_act act;
    const char *act_name;
    long epochs, batch, seed, threads, patience, warmup;
    const char *opt_name, *schedule;
    double lr, weight_decay, test_fraction, val_split, clip;
    int lr_set, wd_set, standardize, json, quiet, proba;
    int distributed; /* train --distributed: one rank of an mpirun job (TG_HAVE_MPI) */
} options;

static const char USAGE[] =
    "usage:\n"
    "  " PROG " train   -d DIR|FILE.csv [options]      train, evaluate each epoch, save\n"
    "  " PROG " eval    -m MODEL -d DIR|FILE.csv [--json] loss, accuracy, confusion matrix\n"
    "  " PROG " predict -m MODEL -d DIR|FILE [--proba]  one class (or probabilities) per line\n"
    "  " PROG " plot    LOG -o FILE.svg                 loss and accuracy curves of a --log\n"
    "  " PROG " --version | --help | COMMAND --help\n"
    "See docs/cli.md.\n";

static const char USAGE_TRAIN[] =
    "usage: " PROG " train -d DIR|FILE.csv [options]\n"
    "  -d, --data D           IDX directory (train-* and t10k-* files) or a CSV file\n"
    "  -L, --label L          CSV label column: header name or index (negative from the\n"
    "                         end); default the last. Labels are integers or names.\n"
    "  -t, --delimiter C      CSV field separator: one character, or 'tab' (default ',')\n"
    "  -l, --layers 128,64    hidden layer widths; '' or none: softmax regression (128)\n"
    "  -a, --act A            relu|tanh|sigmoid|leaky_relu (default relu)\n"
    "  -e, --epochs N         default 5\n"
    "  -b, --batch N          default 64\n"
    "  -O, --opt O            sgd|momentum|rmsprop|adam|adamw (default adam)\n"
    "  -r, --lr X             default 1e-3 (1e-2 for sgd and momentum)\n"
    "      --weight-decay X   default 0 (0.01 for adamw)\n"
    "      --schedule S       constant|cosine|step|exponential (default constant)\n"
    "      --warmup N         linear warm-up over the first N steps (default 0)\n"
    "      --clip X           clip the gradient norm to X (default: no clipping)\n"
    "  -s, --seed N           initialisation, shuffling and splits (default 1)\n"
    "      --test-fraction X  CSV only: held-out test fraction (default 0.2)\n"
    "      --val-split X      fraction of the training part kept for validation\n"
    "      --patience N       stop after N epochs without a better validation loss and\n"
    "                         keep the best model (needs --val-split)\n"
    "      --standardize      standardise features (fitted on the training part)\n"
    "  -o, --out PATH         the model (default model.safetensors); PATH.resume beside it\n"
    "      --resume PATH      continue the run that --out PATH saved, to --epochs\n"
    "      --log FILE         one line per epoch: CSV, or JSON lines for *.json/*.jsonl\n"
    "  -j, --threads N        threads for the kernels (default: all cores)\n"
    "      --json             last line on stdout: a JSON object of the results\n"
    "  -q, --quiet            no progress and no summary (the JSON line still prints)\n"
    "      --distributed      data-parallel under mpirun: --batch is the global batch,\n"
    "                         shared by the ranks; rank 0 prints, logs and saves\n";

static const char USAGE_EVAL[] =
    "usage: " PROG " eval -m MODEL -d DIR|FILE.csv [options]\n"
    "  -m, --model M          a model written by train\n"
    "  -d, --data D           an IDX directory (its t10k files) or a CSV file\n"
    "  -L, --label L          CSV label column (default: the one the model was trained on)\n"
    "  -t, --delimiter C      CSV field separator (default ',')\n"
    "  -j, --threads N        threads\n"
    "      --json             last line on stdout: a JSON object of the results\n"
    "  -q, --quiet            only the JSON line\n";

static const char USAGE_PREDICT[] =
    "usage: " PROG " predict -m MODEL -d DIR|FILE [options]\n"
    "  -m, --model M          a model written by train\n"
    "  -d, --data D           CSV with or without the label column, an IDX directory's\n"
    "                         t10k images or an IDX image file\n"
    "  -L, --label L          CSV label column (default: the model's)\n"
    "  -t, --delimiter C      CSV field separator (default ',')\n"
    "      --proba            the probabilities of the classes, comma-separated\n"
    "  -j, --threads N        threads\n";

static const char USAGE_PLOT[] =
    "usage: " PROG " plot LOG -o FILE.svg\n"
    "  LOG                    a file written by train --log (CSV or JSON lines)\n"
    "  -o, --out FILE.svg     the picture: loss and accuracy per epoch, train,\n"
    "                         validation and test\n";

static int usage_error(const char *fmt, ...) TG_PRINTF(1, 2);
static int usage_error(const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    fputs(PROG ": ", stderr);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputs("\n(" PROG " --help for usage)\n", stderr);
    return 2;
}

static const char *const ACT_NAMES[TG_ACT_COUNT] = {"none", "relu", "tanh", "sigmoid",
                                                    "leaky_relu"};

static int act_from_name(const char *s, tg_act *out) {
    for (int i = 0; i < TG_ACT_COUNT; i++)
        if (!strcmp(s, ACT_NAMES[i])) {
            *out = (tg_act)i;
            return 0;
        }
    return -1;
}

/* "128,64" -> widths; "" or "none" -> no hidden layer. Returns the count or -1. */
static int parse_widths(const char *s, int64_t *w, int cap) {
    if (!*s || !strcmp(s, "none")) return 0;
    int n = 0;
    const char *p = s;
    for (;;) {
        char *end;
        errno = 0;
        long long v = strtoll(p, &end, 10);
        if (errno || end == p || v < 1 || v > MAX_WIDTH || n >= cap) return -1;
        w[n++] = v;
        if (*end == '\0') return n;
        if (*end != ',') return -1;
        p = end + 1;
    }
}

/* The long options; `cmds` says which commands take each one. Short options
 * are the `val` letters; the others get values from 256 on. */
enum {
    OPT_WD = 256, OPT_TEST_FRACTION, OPT_STANDARDIZE, OPT_JSON, OPT_PROBA, OPT_VAL_SPLIT,
    OPT_PATIENCE, OPT_SCHEDULE, OPT_WARMUP, OPT_CLIP, OPT_LOG, OPT_RESUME, OPT_VERSION,
    OPT_DISTRIBUTED
};
typedef struct {
    struct option o;
    int cmds;
} cli_option;
#define ALL_CMDS (CMD_TRAIN | CMD_EVAL | CMD_PREDICT)
static const cli_option OPTIONS[] = {
    {{"data", required_argument, NULL, 'd'}, ALL_CMDS},
    {{"model", required_argument, NULL, 'm'}, CMD_EVAL | CMD_PREDICT},
    {{"label", required_argument, NULL, 'L'}, ALL_CMDS},
    {{"delimiter", required_argument, NULL, 't'}, ALL_CMDS},
    {{"threads", required_argument, NULL, 'j'}, ALL_CMDS},
    {{"quiet", no_argument, NULL, 'q'}, CMD_TRAIN | CMD_EVAL},
    {{"json", no_argument, NULL, OPT_JSON}, CMD_TRAIN | CMD_EVAL},
    {{"proba", no_argument, NULL, OPT_PROBA}, CMD_PREDICT},
    {{"layers", required_argument, NULL, 'l'}, CMD_TRAIN},
    {{"act", required_argument, NULL, 'a'}, CMD_TRAIN},
    {{"epochs", required_argument, NULL, 'e'}, CMD_TRAIN},
    {{"batch", required_argument, NULL, 'b'}, CMD_TRAIN},
    {{"opt", required_argument, NULL, 'O'}, CMD_TRAIN},
    {{"lr", required_argument, NULL, 'r'}, CMD_TRAIN},
    {{"weight-decay", required_argument, NULL, OPT_WD}, CMD_TRAIN},
    {{"seed", required_argument, NULL, 's'}, CMD_TRAIN},
    {{"test-fraction", required_argument, NULL, OPT_TEST_FRACTION}, CMD_TRAIN},
    {{"val-split", required_argument, NULL, OPT_VAL_SPLIT}, CMD_TRAIN},
    {{"patience", required_argument, NULL, OPT_PATIENCE}, CMD_TRAIN},
    {{"schedule", required_argument, NULL, OPT_SCHEDULE}, CMD_TRAIN},
    {{"warmup", required_argument, NULL, OPT_WARMUP}, CMD_TRAIN},
    {{"clip", required_argument, NULL, OPT_CLIP}, CMD_TRAIN},
    {{"standardize", no_argument, NULL, OPT_STANDARDIZE}, CMD_TRAIN},
    {{"out", required_argument, NULL, 'o'}, CMD_TRAIN | CMD_PLOT},
    {{"log", required_argument, NULL, OPT_LOG}, CMD_TRAIN},
    {{"resume", required_argument, NULL, OPT_RESUME}, CMD_TRAIN},
    {{"distributed", no_argument, NULL, OPT_DISTRIBUTED}, CMD_TRAIN},
    {{"help", no_argument, NULL, 'h'}, ALL_CMDS | CMD_PLOT},
};
#define N_OPTIONS ((int)(sizeof OPTIONS / sizeof OPTIONS[0]))

/* edit distance of a and b (short strings), for "did you mean" */
static int edit_distance(const char *a, const char *b) {
    int la = (int)strlen(a), lb = (int)strlen(b);
    if (la > 40 || lb > 40) return 99;
    int d[41][41];
    for (int i = 0; i <= la; i++) d[i][0] = i;
    for (int j = 0; j <= lb; j++) d[0][j] = j;
    for (int i = 1; i <= la; i++)
        for (int j = 1; j <= lb; j++) {
            int sub = d[i - 1][j - 1] + (a[i - 1] != b[j - 1]);
            int del = d[i - 1][j] + 1, ins = d[i][j - 1] + 1;
            d[i][j] = sub < del ? (sub < ins ? sub : ins) : (del < ins ? del : ins);
        }
    return d[la][lb];
}

/* "unknown option '--epoch' (did you mean --epochs?)" */
static int unknown_option(const char *arg, int cmd, const char *cmd_name) {
    char name[64];
    const char *a = arg;
    while (*a == '-') a++;
    snprintf(name, sizeof name, "%.*s", (int)strcspn(a, "="), a);
    const char *best = NULL;
    int best_d = 3; /* at most 2 edits away, or a prefix */
    for (int i = 0; i < N_OPTIONS; i++) {
        const char *o = OPTIONS[i].o.name;
        int d = edit_distance(name, o);
        if (d > 0 && *name && !strncmp(o, name, strlen(name))) d = 1;
        if (d < best_d) best_d = d, best = o;
    }
    if (best && best_d > 0) {
        int ok_here = 0;
        for (int i = 0; i < N_OPTIONS; i++)
            if (!strcmp(OPTIONS[i].o.name, best)) ok_here = (OPTIONS[i].cmds & cmd) != 0;
        if (ok_here) return usage_error("unknown option '%s' (did you mean --%s?)", arg, best);
    }
    if (best && best_d == 0)
        return usage_error("--%s is not an option of %s", best, cmd_name);
    return usage_error("unknown option '%s' for %s", arg, cmd_name);
}

/* the value of an option with a value; 0 ok, 2 after a message */
static int set_option(options *o, int c, const char *v) {
    switch (c) {
    case 'd': o->data = v; break;
    case 'm': o->model = v; break;
    case 'L': o->label = v; break;
    case 't':
        if (!strcmp(v, "tab") || !strcmp(v, "\\t")) o->delimiter = '\t';
        else if (strlen(v) == 1 && v[0] != '"' && v[0] != '\n' && v[0] != '\r') o->delimiter = v[0];
        else return usage_error("--delimiter: '%s' is not one character (or 'tab')", v);
        break;
    case 'j':
        if (parse_long(v, 1, 1024, &o->threads))
            return usage_error("--threads: '%s' is not 1 to 1024", v);
        break;
    case 'q': o->quiet = 1; break;
    case OPT_JSON: o->json = 1; break;
    case OPT_PROBA: o->proba = 1; break;
    case OPT_STANDARDIZE: o->standardize = 1; break;
    case OPT_DISTRIBUTED: o->distributed = 1; break;
    case 'l': o->layers = v; break;
    case 'a':
        if (act_from_name(v, &o->act) || o->act == TG_ACT_NONE)
            return usage_error("--act: '%s' is not relu, tanh, sigmoid or leaky_relu", v);
        o->act_name = v;
        break;
    case 'e':
        if (parse_long(v, 1, 1000000, &o->epochs))
            return usage_error("--epochs: '%s' is not an integer from 1 to 1000000", v);
        break;
    case 'b':
        if (parse_long(v, 1, 1L << 24, &o->batch))
            return usage_error("--batch: '%s' is not an integer from 1 to %ld", v, 1L << 24);
        break;
    case 'O':
        if (strcmp(v, "sgd") && strcmp(v, "momentum") && strcmp(v, "rmsprop") && strcmp(v, "adam") &&
            strcmp(v, "adamw"))
            return usage_error("--opt: '%s' is not sgd, momentum, rmsprop, adam or adamw", v);
        o->opt_name = v;
        break;
    case 'r':
        if (parse_double(v, -DBL_MAX, DBL_MAX, &o->lr) || o->lr <= 0)
            return usage_error("--lr: '%s' is not a positive number", v);
        o->lr_set = 1;
        break;
    case OPT_WD:
        if (parse_double(v, -DBL_MAX, DBL_MAX, &o->weight_decay) || o->weight_decay < 0)
            return usage_error("--weight-decay: '%s' is not a number >= 0", v);
        o->wd_set = 1;
        break;
    case 's':
        if (parse_long(v, 0, 0x7fffffffL, &o->seed))
            return usage_error("--seed: '%s' is not an integer from 0 to 2147483647", v);
        break;
    case OPT_TEST_FRACTION:
        if (parse_double(v, 0, 1, &o->test_fraction) || o->test_fraction == 0 ||
            o->test_fraction == 1)
            return usage_error("--test-fraction: '%s' is not a number in (0, 1)", v);
        break;
    case OPT_VAL_SPLIT:
        if (parse_double(v, 0, 1, &o->val_split) || o->val_split == 0 || o->val_split == 1)
            return usage_error("--val-split: '%s' is not a number in (0, 1)", v);
        break;
    case OPT_PATIENCE:
        if (parse_long(v, 1, 1000000, &o->patience))
            return usage_error("--patience: '%s' is not an integer from 1 to 1000000", v);
        break;
    case OPT_SCHEDULE:
        if (strcmp(v, "constant") && strcmp(v, "cosine") && strcmp(v, "step") &&
            strcmp(v, "exponential"))
            return usage_error("--schedule: '%s' is not constant, cosine, step or exponential", v);
        o->schedule = v;
        break;
    case OPT_WARMUP:
        if (parse_long(v, 0, 1L << 40, &o->warmup))
            return usage_error("--warmup: '%s' is not a number of steps >= 0", v);
        break;
    case OPT_CLIP:
        if (parse_double(v, -DBL_MAX, DBL_MAX, &o->clip) || !(o->clip > 0))
            return usage_error("--clip: '%s' is not a positive number", v);
        break;
    case 'o':
        if (!*v) return usage_error("--out: empty path");
        o->out = v;
        break;
    case OPT_LOG:
        if (!*v) return usage_error("--log: empty path");
        o->log = v;
        break;
    case OPT_RESUME:
        if (!*v) return usage_error("--resume: empty path");
        o->resume = v;
        break;
    }
    return 0;
}

static const char *usage_of(int cmd) {
    return cmd == CMD_TRAIN ? USAGE_TRAIN : cmd == CMD_EVAL ? USAGE_EVAL
                                        : cmd == CMD_PREDICT ? USAGE_PREDICT : USAGE_PLOT;
}

/* argv[1..] (argv[1] is the command) into o with getopt_long: the options of
 * o->cmd only. Returns 0, 1 after --help, or 2 after a message. */
static int parse_options(int argc, char **argv, options *o) {
    struct option longopts[N_OPTIONS + 1];
    char shorts[64] = ":"; /* ':' first: a missing value is reported as such */
    int n = 0;
    for (int i = 0; i < N_OPTIONS; i++) {
        if (!(OPTIONS[i].cmds & o->cmd)) continue;
        longopts[n++] = OPTIONS[i].o;
        int c = OPTIONS[i].o.val;
        if (c < 256) {
            size_t l = strlen(shorts);
            shorts[l] = (char)c;
            shorts[l + 1] = '\0';
            if (OPTIONS[i].o.has_arg == required_argument) strcat(shorts, ":");
        }
    }
    memset(&longopts[n], 0, sizeof longopts[n]);
    const char *cmd_name = argv[1];
    optind = 2;
    opterr = 0;
    int c;
    while ((c = getopt_long(argc, argv, shorts, longopts, NULL)) != -1) {
        if (c == 'h') {
            fputs(usage_of(o->cmd), stdout);
            return 1;
        }
        if (c == ':') {
            const char *a = argv[optind - 1];
            return usage_error("option %s needs a value", a);
        }
        if (c == '?') {
            const char *a = argv[optind - 1];
            if (optopt && optopt < 256 && strncmp(a, "--", 2) != 0) {
                char s[3] = {'-', (char)optopt, 0};
                return unknown_option(s, o->cmd, cmd_name);
            }
            return unknown_option(a, o->cmd, cmd_name);
        }
        int r = set_option(o, c, optarg);
        if (r) return r;
    }
    if (o->cmd == CMD_PLOT) {
        if (optind != argc - 1) return usage_error("plot takes one LOG file (got %d)", argc - optind);
        o->plot_log = argv[optind];
        if (!o->out) return usage_error("plot needs --out FILE.svg");
        return 0;
    }
    if (optind < argc) return usage_error("unexpected argument '%s'", argv[optind]);
    if (!o->data || !*o->data) return usage_error("--data is required");
    if (o->cmd != CMD_TRAIN && (!o->model || !*o->model)) return usage_error("--model is required");
    if (o->patience && !o->val_split)
        return usage_error("--patience needs --val-split (early stopping watches the validation loss)");
    if (o->distributed && o->resume)
        return usage_error("--distributed does not take --resume (start the run again)");
    return 0;
}

/* Every path, before any work: inputs readable, outputs' folders writable. */
static int check_input(const char *what, const char *path) {
    struct stat st;
    if (stat(path, &st) != 0)
        return fprintf(stderr, PROG ": %s %s: %s\n", what, path, strerror(errno)), 1;
    if (access(path, R_OK) != 0)
        return fprintf(stderr, PROG ": %s %s: not readable\n", what, path), 1;
    return 0;
}

static int check_output(const char *what, const char *path) {
    char dir[4096];
    snprintf(dir, sizeof dir, "%s", path);
    char *slash = strrchr(dir, '/');
    if (slash == dir) dir[1] = '\0';
    else if (slash) *slash = '\0';
    else snprintf(dir, sizeof dir, ".");
    struct stat st;
    if (stat(dir, &st) != 0 || !S_ISDIR(st.st_mode))
        return fprintf(stderr, PROG ": %s %s: the folder %s does not exist\n", what, path, dir), 1;
    if (access(dir, W_OK) != 0)
        return fprintf(stderr, PROG ": %s %s: the folder %s is not writable\n", what, path, dir), 1;
    if (stat(path, &st) == 0 && S_ISDIR(st.st_mode))
        return fprintf(stderr, PROG ": %s %s is a folder\n", what, path), 1;
    return 0;
}

static int check_paths(const options *o) {
    if (o->cmd == CMD_PLOT) return check_input("log", o->plot_log) || check_output("--out", o->out);
    if (check_input("--data", o->data)) return 1;
    if (o->model && check_input("--model", o->model)) return 1;
    if (o->cmd != CMD_TRAIN) return 0;
    if (check_output("--out", o->out)) return 1;
    if (o->log && check_output("--log", o->log)) return 1;
    if (o->resume) {
        char rs[4096];
        snprintf(rs, sizeof rs, "%s.resume", o->resume);
        if (check_input("--resume", o->resume) || check_input("--resume state", rs)) return 1;
    }
    return 0;
}

/* ======================================================================== */
/* Small helpers                                                            */
/* ======================================================================== */

static int is_dir(const char *path) {
    struct stat st;
    return stat(path, &st) == 0 && S_ISDIR(st.st_mode);
}

/* A growable string for the JSON line and the metadata values. */
typedef struct {
    char *p;
    size_t len, cap;
    int oom;
} sbuf;

static void sb_printf(sbuf *b, const char *fmt, ...) TG_PRINTF(2, 3);
static void sb_printf(sbuf *b, const char *fmt, ...) {
    if (b->oom) return;
    for (;;) {
        va_list ap;
        va_start(ap, fmt);
        int n = vsnprintf(b->p ? b->p + b->len : NULL, b->p ? b->cap - b->len : 0, fmt, ap);
        va_end(ap);
        if (n < 0) {
            b->oom = 1;
            return;
        }
        if (b->p && b->len + (size_t)n < b->cap) {
            b->len += (size_t)n;
            return;
        }
        size_t cap = b->cap ? b->cap : 256;
        while (cap <= b->len + (size_t)n) cap *= 2;
        char *q = realloc(b->p, cap);
        if (!q) {
            b->oom = 1;
            return;
        }
        b->p = q;
        b->cap = cap;
    }
}

/* a JSON string literal */
static void sb_json_str(sbuf *b, const char *s) {
    sb_printf(b, "\"");
    for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
        if (*p == '"' || *p == '\\') sb_printf(b, "\\%c", *p);
        else if (*p < 0x20) sb_printf(b, "\\u%04x", *p);
        else sb_printf(b, "%c", *p);
    }
    sb_printf(b, "\"");
}

/* a JSON number (null when not finite) */
static void sb_json_num(sbuf *b, double v) {
    if (isfinite(v)) sb_printf(b, "%.6g", v);
    else sb_printf(b, "null");
}

static int report(tg_ctx *ctx) {
    fprintf(stderr, PROG ": %s\n", ctx && *tg_errmsg(ctx) ? tg_errmsg(ctx) : "out of memory");
    return 1;
}

/* ======================================================================== */
/* Data                                                                     */
/* ======================================================================== */

/* CSV options for a label given as a header name or a column index. */
static tg_csv_opts csv_opts(const char *label, tg_csv_y kind, char delimiter) {
    tg_csv_opts c = tg_csv_defaults();
    c.y_kind = kind;
    if (delimiter) c.delimiter = delimiter;
    long idx;
    if (label && *label) {
        if (parse_long(label, -100000, 100000, &idx) == 0) c.y_col = (int)idx;
        else c.y_name = label;
    }
    return c;
}

/* max label + 1 over the datasets given (NULL ones skipped) */
static int classes_of(const tg_dataset *a, const tg_dataset *b) {
    int c = 0;
    if (a && a->n_classes > c) c = a->n_classes;
    if (b && b->n_classes > c) c = b->n_classes;
    return c;
}

/* x' = (x - mean) / std, feature by feature (as tg_scaler_apply) */
static void standardise(tg_dataset *ds, const float *mean, const float *std) {
    int64_t f = ds->n_features;
    for (int64_t i = 0; i < ds->n; i++) {
        float *r = ds->x + i * f;
        for (int64_t j = 0; j < f; j++) r[j] = (r[j] - mean[j]) / std[j];
    }
}

/* Mean cross-entropy, accuracy and (optionally) the confusion matrix of m on
 * ds, in batches, without recording. 0 ok, -1 error (recorded). */
static int evaluate(tg_ctx *ctx, const tg_mlp *m, const tg_dataset *ds, int n_classes,
                    double *loss, double *acc, int64_t *confusion) {
    return evaluate_classifier(ctx, mlp_logits, m, ds, EVAL_BATCH, n_classes, confusion, loss,
                               acc);
}

/* ======================================================================== */
/* Class names: CSV labels that are words                                   */
/* ======================================================================== */

/* The class names of a model or a data set, in class order. */
typedef struct {
    int n;
    char **name;
} class_names;

static void names_free(class_names *c) {
    for (int i = 0; i < c->n; i++) free(c->name[i]);
    free(c->name);
    c->n = 0;
    c->name = NULL;
}

static int names_find(const class_names *c, const char *s) {
    for (int i = 0; i < c->n; i++)
        if (!strcmp(c->name[i], s)) return i;
    return -1;
}

static int names_add(class_names *c, const char *s) {
    char **p = realloc(c->name, (size_t)(c->n + 1) * sizeof *p);
    if (!p) return -1;
    c->name = p;
    if (!(c->name[c->n] = strdup(s))) return -1;
    c->n++;
    return 0;
}

static int cmp_str(const void *a, const void *b) {
    return strcmp(*(char *const *)a, *(char *const *)b);
}

/* One CSV line split into fields [start, end) of line, quotes kept in the
 * text but honoured for the delimiter. Returns the field count (at most cap). */
static int split_fields(const char *line, char delim, const char **start, const char **end, int cap) {
    int n = 0, quoted = 0;
    const char *f = line, *p = line;
    for (;; p++) {
        if (*p == '"') quoted = !quoted;
        if ((*p == delim && !quoted) || *p == '\0' || *p == '\n' || *p == '\r') {
            if (n < cap) start[n] = f, end[n] = p;
            n++;
            if (*p != delim || quoted) break;
            f = p + 1;
        }
    }
    return n;
}

/* a field without surrounding blanks and quotes, into buf */
static const char *field_text(const char *s, const char *e, char *buf, size_t size) {
    while (s < e && (*s == ' ' || *s == '\t')) s++;
    while (e > s && (e[-1] == ' ' || e[-1] == '\t')) e--;
    if (e - s >= 2 && *s == '"' && e[-1] == '"') s++, e--;
    snprintf(buf, size, "%.*s", (int)(e - s), s);
    return buf;
}

static int is_number(const char *s) {
    char *end;
    if (!*s) return 0;
    strtod(s, &end);
    return *end == '\0';
}

#define MAX_FIELDS 65536

/* If the label column of the CSV at path holds words, write a copy with the
 * words replaced by class indices into a temporary file (*tmp, to remove) and
 * fill names: with known->n > 0 the indices are those of known (a word it
 * lacks is an error), else the sorted distinct words. Returns 0 with *tmp NULL
 * when the labels are numbers (or absent: allow_missing and one column fewer),
 * 0 with *tmp set after a rewrite, -1 after recording an error. */
static int csv_words_to_ids(tg_ctx *ctx, const char *path, char delim, const char *label,
                            const class_names *known, class_names *names, char **tmp) {
    *tmp = NULL;
    FILE *f = fopen(path, "r");
    if (!f) {
        tg_set_error(ctx, "%s: %s", path, strerror(errno));
        return -1;
    }
    const char **fs = malloc(MAX_FIELDS * sizeof *fs), **fe = malloc(MAX_FIELDS * sizeof *fe);
    char *line = NULL, buf[1024];
    size_t cap = 0;
    int rc = -1, col = -1, header = 0, words = 0, nf0 = 0;
    long lineno = 0;
    class_names seen = {0};
    FILE *out = NULL;
    if (!fs || !fe) goto oom;
    /* pass 1: the column, the header, the words */
    while (getline(&line, &cap, f) > 0) {
        lineno++;
        if (lineno == 1 && !strncmp(line, "\xEF\xBB\xBF", 3)) memmove(line, line + 3, strlen(line + 3) + 1);
        int nf = split_fields(line, delim, fs, fe, MAX_FIELDS);
        if (nf == 1 && fs[0] == fe[0]) continue; /* blank line */
        if (col < 0) {
            nf0 = nf;
            const char *other = delim != ';' && strchr(line, ';')    ? ";"
                                : delim != '\t' && strchr(line, '\t') ? "tab"
                                : delim != ',' && strchr(line, ',')   ? ","
                                                                     : NULL;
            if (nf == 1 && other) {
                tg_set_error(ctx, "%s: one column only with the delimiter '%s', but the first line "
                                  "has '%s' in it: try --delimiter '%s'",
                             path, delim == '\t' ? "tab" : (char[]){delim, 0}, other, other);
                goto done;
            }
            long idx = -1;
            int by_name = label && *label && parse_long(label, -100000, 100000, &idx) != 0;
            if (by_name) {
                for (int i = 0; i < nf && i < MAX_FIELDS && col < 0; i++)
                    if (!strcmp(field_text(fs[i], fe[i], buf, sizeof buf), label)) col = i;
                if (col < 0) { rc = 0; goto done; } /* the loader reports it */
                header = 1;
                continue;
            }
            col = idx < 0 ? nf + (int)idx : (int)idx;
            if (col < 0 || col >= nf) { rc = 0; goto done; }
            for (int i = 0; i < nf && i < MAX_FIELDS; i++)
                if (i != col && !is_number(field_text(fs[i], fe[i], buf, sizeof buf))) header = 1;
            if (header) continue;
        }
        if (nf != nf0 || col >= nf) { rc = 0; goto done; } /* the loader reports it */
        field_text(fs[col], fe[col], buf, sizeof buf);
        if (!is_number(buf)) words = 1;
        if (names_find(&seen, buf) < 0 && names_add(&seen, buf)) goto oom;
    }
    if (!words) { rc = 0; goto done; }
    if (known && known->n > 0) {
        for (int i = 0; i < seen.n; i++)
            if (names_find(known, seen.name[i]) < 0) {
                tg_set_error(ctx, "%s: the label '%s' is not one of the model's classes", path,
                             seen.name[i]);
                goto done;
            }
        for (int i = 0; i < known->n; i++)
            if (names_add(names, known->name[i])) goto oom;
    } else {
        qsort(seen.name, (size_t)seen.n, sizeof *seen.name, cmp_str);
        for (int i = 0; i < seen.n; i++)
            if (names_add(names, seen.name[i])) goto oom;
    }
    /* pass 2: the copy */
    char tpl[] = "/tmp/tg-mlp-labels-XXXXXX";
    int fd = mkstemp(tpl);
    if (fd < 0 || !(out = fdopen(fd, "w"))) {
        tg_set_error(ctx, "cannot create a temporary file: %s", strerror(errno));
        goto done;
    }
    if (!(*tmp = strdup(tpl))) goto oom;
    rewind(f);
    lineno = 0;
    while (getline(&line, &cap, f) > 0) {
        lineno++;
        if (lineno == 1 && !strncmp(line, "\xEF\xBB\xBF", 3)) memmove(line, line + 3, strlen(line + 3) + 1);
        int nf = split_fields(line, delim, fs, fe, MAX_FIELDS);
        if (nf == 1 && fs[0] == fe[0]) continue;
        if (header && lineno == 1) {
            fputs(line, out);
            continue;
        }
        for (int i = 0; i < nf; i++) {
            if (i) fputc(delim, out);
            if (i == col) fprintf(out, "%d", names_find(names, field_text(fs[i], fe[i], buf, sizeof buf)));
            else fwrite(fs[i], 1, (size_t)(fe[i] - fs[i]), out);
        }
        fputc('\n', out);
    }
    if (fclose(out) != 0) {
        out = NULL;
        tg_set_error(ctx, "cannot write a temporary file: %s", strerror(errno));
        goto done;
    }
    out = NULL;
    rc = 0;
    goto done;
oom:
    tg_set_error(ctx, "out of memory reading the class names of %s", path);
done:
    if (out) fclose(out);
    if (rc != 0 && *tmp) {
        remove(*tmp);
        free(*tmp);
        *tmp = NULL;
    }
    names_free(&seen);
    free(line);
    free(fs);
    free(fe);
    fclose(f);
    return rc;
}

/* "a\nb\nc" (the metadata form) -> names */
static int names_parse(const char *s, class_names *c) {
    while (*s) {
        size_t len = strcspn(s, "\n");
        char *w = strndup(s, len);
        int bad = !w || names_add(c, w);
        free(w);
        if (bad) return -1;
        s += len + (s[len] == '\n');
    }
    return 0;
}

/* ======================================================================== */
/* The model file                                                           */
/* ======================================================================== */

typedef struct {
    int n_widths;
    int64_t widths[TG_MLP_MAX_LAYERS + 1];
    tg_act act;
    char input[8];      /* "idx" or "csv" */
    char *label;        /* malloc'd, or NULL */
    float *mean, *std;  /* malloc'd [widths[0]], or NULL */
    class_names names;  /* the class names, when the labels were words */
    tg_mlp mlp;
} model;

static void model_free(model *md) {
    names_free(&md->names);
    free(md->label);
    free(md->mean);
    free(md->std);
    md->label = NULL;
    md->mean = md->std = NULL;
}

/* "0.5,1,2.25" -> exactly n floats; 0 ok, -1 otherwise */
static int parse_floats(const char *s, float *out, int64_t n) {
    const char *p = s;
    for (int64_t i = 0; i < n; i++) {
        char *end;
        errno = 0;
        double v = strtod(p, &end);
        if (errno || end == p || !isfinite(v)) return -1;
        out[i] = (float)v;
        if (i + 1 < n) {
            if (*end != ',') return -1;
            p = end + 1;
        } else if (*end) {
            return -1;
        }
    }
    return 0;
}

/* Rebuild the MLP described by path's metadata in ctx and load its
 * parameters. 0 ok; -1 error (recorded in ctx). */
static int model_load(tg_ctx *ctx, const char *path, model *md) {
    memset(md, 0, sizeof *md);
    char *widths = tg_checkpoint_meta(ctx, path, "tg_mlp.widths");
    if (!widths) {
        if (tg_ok(ctx))
            tg_set_error(ctx, "%s: not a tg-mlp model (no tg_mlp.widths in its metadata)", path);
        return -1;
    }
    int nw = parse_widths(widths, md->widths, TG_MLP_MAX_LAYERS + 1);
    free(widths);
    if (nw < 2) {
        tg_set_error(ctx, "%s: metadata tg_mlp.widths is malformed", path);
        return -1;
    }
    md->n_widths = nw;
    /* the parameters the widths describe must fit in the file: never allocate
     * a huge network because of a corrupt or hostile metadata string */
    double need = 0;
    for (int l = 0; l + 1 < nw; l++)
        need += ((double)md->widths[l] + 1) * (double)md->widths[l + 1] * sizeof(float);
    struct stat st;
    if (stat(path, &st) != 0 || need > (double)st.st_size) {
        tg_set_error(ctx, "%s: metadata tg_mlp.widths describes %.0f bytes of parameters, more"
                          " than the file holds", path, need);
        return -1;
    }
    char *act = tg_checkpoint_meta(ctx, path, "tg_mlp.act");
    int bad = !act || act_from_name(act, &md->act);
    free(act);
    if (bad) {
        if (tg_ok(ctx)) tg_set_error(ctx, "%s: metadata tg_mlp.act is missing or unknown", path);
        return -1;
    }
    char *input = tg_checkpoint_meta(ctx, path, "tg_mlp.input");
    snprintf(md->input, sizeof md->input, "%s", input ? input : "csv");
    free(input);
    md->label = tg_checkpoint_meta(ctx, path, "tg_mlp.label");
    char *classes = tg_checkpoint_meta(ctx, path, "tg_mlp.classes");
    bad = classes && (names_parse(classes, &md->names) ||
                      md->names.n != md->widths[md->n_widths - 1]);
    free(classes);
    if (bad) {
        tg_set_error(ctx, "%s: metadata tg_mlp.classes does not name %lld classes", path,
                     (long long)md->widths[md->n_widths - 1]);
        return -1;
    }
    char *mean = tg_checkpoint_meta(ctx, path, "tg_mlp.scaler.mean");
    char *std = tg_checkpoint_meta(ctx, path, "tg_mlp.scaler.std");
    if (!tg_ok(ctx)) {
        free(mean);
        free(std);
        return -1;
    }
    if (mean || std) {
        int64_t f = md->widths[0];
        md->mean = malloc((size_t)f * sizeof(float));
        md->std = malloc((size_t)f * sizeof(float));
        bad = !mean || !std || !md->mean || !md->std || parse_floats(mean, md->mean, f) ||
              parse_floats(std, md->std, f);
        for (int64_t j = 0; !bad && j < f; j++) bad = !(md->std[j] > 0);
        free(mean);
        free(std);
        if (bad) {
            tg_set_error(ctx, "%s: metadata tg_mlp.scaler.mean/std is malformed", path);
            return -1;
        }
    }
    char *version = tg_checkpoint_meta(ctx, path, "tg_mlp.version");
    bad = version && strcmp(version, MODEL_VERSION) != 0;
    if (bad)
        tg_set_error(ctx, "%s: a tg-mlp model of version %s; this tg-mlp reads version " MODEL_VERSION
                          " (PyTorch's layout: retrain, or transpose the weights and rename fc<i> to"
                          " <2(i-1)>)", path, version);
    free(version);
    if (bad) return -1;
    /* "": nn.Sequential's names */
    if (tg_mlp_init(ctx, &md->mlp, "", md->n_widths, md->widths, md->act, TG_F32)) return -1;
    return tg_load(ctx, path);
}

/* the widths as "784,128,10" (sep ",") or "784-128-10" (sep "-") */
static void widths_str(sbuf *b, const int64_t *w, int n, const char *sep) {
    for (int i = 0; i < n; i++) sb_printf(b, "%s%lld", i ? sep : "", (long long)w[i]);
}

/* ======================================================================== */
/* train                                                                    */
/* ======================================================================== */

/* CSV data with labels, words or numbers; names gets the words. NULL on error. */
static tg_dataset *load_labelled_csv(tg_ctx *ctx, const options *o, const char *label,
                                     const class_names *known, class_names *names) {
    char *tmp = NULL;
    if (csv_words_to_ids(ctx, o->data, o->delimiter ? o->delimiter : ',', label, known, names, &tmp))
        return NULL;
    tg_csv_opts co = csv_opts(label, TG_CSV_Y_LABELS, o->delimiter);
    tg_dataset *ds = tg_load_csv(ctx, tmp ? tmp : o->data, &co);
    if (tmp) {
        remove(tmp);
        /* the messages name the data file, not the temporary copy */
        const char *at = !ds && !tg_ok(ctx) ? strstr(tg_errmsg(ctx), tmp) : NULL;
        if (at) {
            char msg[600];
            snprintf(msg, sizeof msg, "%.*s%s%s (the labels as class numbers)",
                     (int)(at - tg_errmsg(ctx)), tg_errmsg(ctx), o->data, at + strlen(tmp));
            tg_clear_error(ctx);
            tg_set_error(ctx, "%s", msg);
        }
        free(tmp);
    }
    return ds;
}

/* What training runs on. */
typedef struct {
    tg_dataset *all, *tr, *va, *te;
    int classes, idx;
    class_names names;
    tg_scaler sc;
    double seconds;
} train_data;

static void train_data_free(train_data *d) {
    tg_dataset_free(d->all);
    tg_dataset_free(d->tr);
    tg_dataset_free(d->va);
    tg_dataset_free(d->te);
    tg_scaler_free(&d->sc);
    names_free(&d->names);
}

/* Load, split (test, then validation from the training part) and standardise. */
static int train_load_data(tg_ctx *ctx, const options *o, train_data *d) {
    double t0 = now();
    d->idx = is_dir(o->data);
    if (d->idx) {
        if (o->label) return usage_error("--label applies to CSV data; %s is an IDX directory", o->data);
        d->tr = tg_load_idx_dir(ctx, o->data, "train");
        d->te = d->tr ? tg_load_idx_dir(ctx, o->data, "test") : NULL;
        if (d->tr && d->te && d->tr->n_features != d->te->n_features)
            tg_set_error(ctx, "%s: the train images have %lld features, the test images %lld",
                         o->data, (long long)d->tr->n_features, (long long)d->te->n_features);
    } else {
        d->all = load_labelled_csv(ctx, o, o->label, NULL, &d->names);
        if (d->all && d->all->n < 2)
            tg_set_error(ctx, "%s: %lld data rows; at least 2 are needed to split into training"
                              " and test parts", o->data, (long long)d->all->n);
        if (tg_ok(ctx)) tg_dataset_split(ctx, d->all, o->test_fraction, &d->tr, &d->te);
    }
    if (!tg_ok(ctx)) return 1;
    if (!d->tr->labels || !d->te->labels) {
        tg_set_error(ctx, "%s: the data has no labels", o->data);
        return 1;
    }
    d->classes = classes_of(d->all ? d->all : d->tr, d->te);
    if (d->names.n > d->classes) d->classes = d->names.n;
    if (d->classes < 2 || d->classes > MAX_CLASSES) {
        tg_set_error(ctx, "%s: the labels go from 0 to %d; tg-mlp needs 2 to %d classes (is"
                          " --label the right column?)", o->data, d->classes - 1, MAX_CLASSES);
        return 1;
    }
    if (o->val_split > 0) {
        tg_dataset *rest = NULL;
        if (d->tr->n < 2) {
            tg_set_error(ctx, "%s: %lld training rows cannot be split for validation", o->data,
                         (long long)d->tr->n);
            return 1;
        }
        if (tg_dataset_split(ctx, d->tr, o->val_split, &rest, &d->va)) return 1;
        tg_dataset_free(d->tr);
        d->tr = rest;
    }
    if (o->standardize &&
        (tg_scaler_fit(ctx, &d->sc, d->tr) || tg_scaler_apply(&d->sc, d->tr) ||
         tg_scaler_apply(&d->sc, d->te) || (d->va && tg_scaler_apply(&d->sc, d->va))))
        return 1;
    d->seconds = now() - t0;
    return 0;
}

/* The network, the optimiser, the schedule and the batcher. */
typedef struct {
    int hidden_n, n_widths;
    int64_t widths[TG_MLP_MAX_LAYERS + 1];
    int64_t n_params;
    tg_mlp m;
    tg_optim *opt;
    tg_optim_opts oo;
    tg_sched sched;
    tg_batcher b;
} train_model;

static tg_sched make_sched(const options *o, double lr, int64_t total_steps) {
    tg_sched s = {.kind = TG_SCHED_CONSTANT, .base_lr = lr, .gamma = 0.5, .min_lr = 0,
                  .step_size = 1, .total_steps = total_steps, .warmup_steps = o->warmup};
    if (!strcmp(o->schedule, "cosine")) s.kind = TG_SCHED_COSINE;
    else if (!strcmp(o->schedule, "exponential")) s.kind = TG_SCHED_EXPONENTIAL, s.gamma = 0.999;
    else if (!strcmp(o->schedule, "step")) {
        /* halve the rate every quarter of the run */
        s.kind = TG_SCHED_STEP;
        s.step_size = (total_steps - o->warmup) / 4 > 0 ? (total_steps - o->warmup) / 4 : 1;
    }
    if (s.total_steps <= s.warmup_steps) s.total_steps = s.warmup_steps + 1;
    return s;
}

static int train_build(tg_ctx *ctx, const options *o, const train_data *d, train_model *t) {
    t->widths[0] = d->tr->n_features;
    t->n_widths = t->hidden_n + 2;
    t->widths[t->n_widths - 1] = d->classes;
    tg_act act = t->hidden_n ? o->act : TG_ACT_NONE; /* softmax regression: no activation */
    if (tg_mlp_init(ctx, &t->m, "", t->n_widths, t->widths, act, TG_F32)) return 1;
    for (int i = 0; i < tg_param_count(ctx); i++) t->n_params += tg_numel(tg_param_at(ctx, i));
    tg_opt_kind kind = !strcmp(o->opt_name, "sgd") || !strcmp(o->opt_name, "momentum") ? TG_OPT_SGD
                       : !strcmp(o->opt_name, "rmsprop")                               ? TG_OPT_RMSPROP
                       : !strcmp(o->opt_name, "adamw")                                 ? TG_OPT_ADAMW
                                                                                       : TG_OPT_ADAM;
    t->oo = tg_optim_defaults(kind);
    if (!strcmp(o->opt_name, "momentum")) t->oo.momentum = 0.9;
    t->oo.lr = o->lr_set ? o->lr : kind == TG_OPT_SGD ? 1e-2 : 1e-3;
    if (o->wd_set) t->oo.weight_decay = o->weight_decay;
    t->opt = tg_optim_new(ctx, &t->oo, NULL, 0);
    if (!t->opt || tg_batcher_init(&t->b, ctx, d->tr, o->batch, TG_BATCH_SHUFFLE)) return 1;
    t->sched = make_sched(o, t->oo.lr, t->b.n_batches * o->epochs);
    return tg_sched_check(ctx, &t->sched) ? 1 : 0;
}

/* One epoch's figures (NaN where there is no such part). */
typedef struct {
    long epoch;
    double train_loss, train_acc, val_loss, val_acc, test_loss, test_acc, lr, seconds;
} epoch_stats;

/* ======================================================================== */
/* train --distributed: data-parallel training under mpirun (TG_HAVE_MPI)    */
/* ======================================================================== */

/* Every rank loads the data and builds the same model; rank 0's parameters and
 * random state go to all (so they shuffle alike), each rank takes its share of
 * every global batch (tg_mpi_shard), the gradients are averaged after backward,
 * and every rank takes the same step (on one machine sharded: tg_mpi_step;
 * with --clip, which needs the whole gradient on every rank, average, clip and
 * step). Rank 0 alone prints, logs and saves. An
 * error that every rank learns at a sync point (tg_mpi_*: "rank R: message")
 * ends each rank normally; an error of one rank alone ends the job (MPI_Abort)
 * after its message. docs/distributed.md. */
static int train_save(tg_ctx *ctx, const options *o, const train_data *d, train_model *t,
                      const epoch_stats *st, double best);
#ifdef TG_HAVE_MPI
static int cmd_train(options *o);
#include "tapegrad/mpi.h"

static struct {
    tg_mpi *mp;  /* NULL: not distributed */
    int synced;  /* the error is known to every rank (a sync point said so) */
} dist;

static int dist_sync(int r) { return r ? (dist.synced = 1, 1) : 0; }

/* After the context is made: join the job; ranks other than 0 go quiet. */
static int dist_begin(tg_ctx *ctx, options *o) {
    if (!o->distributed) return 0;
    dist.mp = tg_mpi_new(ctx, MPI_COMM_WORLD);
    if (!dist.mp) return 1;
    if (tg_mpi_rank(dist.mp) != 0) o->quiet = 1, o->json = 0, o->log = NULL;
    return 0;
}

/* After the model and batcher are built: all start from rank 0's state. */
static int dist_start(train_model *t) {
    if (!dist.mp) return 0;
    return dist_sync(tg_mpi_broadcast_params(dist.mp, 0)) || tg_mpi_shard(dist.mp, &t->b);
}

/* After backward: the optimiser's step from the gradient of the whole global
 * batch, clipped to norm clip (> 0) over params[0..np). */
static int dist_step(tg_ctx *ctx, const tg_batcher *b, tg_optim *opt, double clip,
                     tg_tensor **params, int np) {
    if (dist.mp && clip <= 0) return dist_sync(tg_mpi_step(dist.mp, tg_mpi_batch_weight(b), opt));
    if (dist.mp && dist_sync(tg_mpi_average_grads(dist.mp, tg_mpi_batch_weight(b)))) return 1;
    if (clip > 0) tg_clip_grad_norm(ctx, params, np, clip);
    tg_optim_step(opt);
    return 0;
}

/* An epoch's mean training loss and accuracy over all ranks' shares. */
static int dist_means(tg_mean_meter *loss, tg_mean_meter *acc) {
    if (!dist.mp) return 0;
    double v[4] = {loss->sum, (double)loss->n, acc->sum, (double)acc->n};
    if (dist_sync(tg_mpi_sum(dist.mp, v, 4))) return 1;
    loss->sum = v[0], loss->n = (int64_t)v[1], acc->sum = v[2], acc->n = (int64_t)v[3];
    return 0;
}

/* Rank 0 saves; then a sync point, so a failed save stops every rank. */
static int dist_save(tg_ctx *ctx, const options *o, const train_data *d, train_model *t,
                     const epoch_stats *st, double best) {
    if (!dist.mp) return train_save(ctx, o, d, t, st, best);
    if (tg_mpi_rank(dist.mp) == 0) train_save(ctx, o, d, t, st, best);
    return dist_sync(tg_mpi_check(dist.mp));
}

static void dist_end(void) {
    tg_mpi_free(dist.mp);
    dist.mp = NULL;
}

/* main: MPI around the command; an error of this rank alone ends the job. */
static int dist_main(int argc, char **argv, options *o) {
    MPI_Init(&argc, &argv);
    int rank;
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    int rc = check_paths(o) ? 1 : cmd_train(o);
    if (rc && !dist.synced) {
        fprintf(stderr, PROG ": rank %d failed (above); ending the job\n", rank);
        MPI_Abort(MPI_COMM_WORLD, rc);
    }
    MPI_Finalize();
    return rc;
}
#else
static int dist_begin(tg_ctx *ctx, options *o) { return (void)ctx, (void)o, 0; }
static int dist_start(train_model *t) { return (void)t, 0; }
static int dist_step(tg_ctx *ctx, const tg_batcher *b, tg_optim *opt, double clip,
                     tg_tensor **params, int np) {
    (void)b;
    if (clip > 0) tg_clip_grad_norm(ctx, params, np, clip);
    tg_optim_step(opt);
    return 0;
}
static int dist_means(tg_mean_meter *loss, tg_mean_meter *acc) { return (void)loss, (void)acc, 0; }
static int dist_save(tg_ctx *ctx, const options *o, const train_data *d, train_model *t,
                     const epoch_stats *st, double best) {
    return train_save(ctx, o, d, t, st, best);
}
static void dist_end(void) {}
#endif

/* One pass over the training part: scheduled rate, clipped gradients. */
static int train_epoch(tg_ctx *ctx, const options *o, train_model *t, tg_progress *p,
                       epoch_stats *st) {
    tg_mean_meter ml = {0}, ma = {0};
    tg_tensor *x, *y, *params[2 * TG_MLP_MAX_LAYERS];
    int np = tg_mlp_params(&t->m, params, 2 * TG_MLP_MAX_LAYERS);
    int more;
    while ((more = tg_batcher_next(&t->b, &x, &y)) == 1) {
        st->lr = tg_sched_lr(&t->sched, tg_optim_step_count(t->opt));
        tg_optim_set_lr(t->opt, st->lr);
        tg_tensor *logits = tg_mlp_forward(ctx, &t->m, x);
        tg_tensor *loss = tg_cross_entropy(ctx, logits, y);
        tg_zero_grad(ctx);
        tg_backward(ctx, loss);
        if (dist_step(ctx, &t->b, t->opt, o->clip, params, np)) break;
        double l = tg_item(loss);
        if (!tg_ok(ctx)) break;
        tg_mean_meter_add(&ml, l, tg_dim(x, 0));
        tg_mean_meter_add(&ma, tg_accuracy(logits, y), tg_dim(x, 0));
        if (!o->quiet) tg_progress_update(p, tg_dim(x, 0), l);
        tg_reset(ctx);
    }
    if (more < 0 || !tg_ok(ctx) || dist_means(&ml, &ma)) return 1;
    st->train_loss = tg_mean_meter_mean(&ml);
    st->train_acc = tg_mean_meter_mean(&ma);
    return 0;
}

/* --log: a CSV line (header first) or a JSON line per epoch */
static int log_is_json(const char *path) {
    size_t n = strlen(path);
    return (n >= 5 && !strcmp(path + n - 5, ".json")) || (n >= 6 && !strcmp(path + n - 6, ".jsonl"));
}

static const char LOG_FIELDS[] =
    "epoch,train_loss,train_accuracy,val_loss,val_accuracy,test_loss,test_accuracy,lr,seconds";

static void log_epoch(FILE *f, int json, const epoch_stats *s) {
    const double v[8] = {s->train_loss, s->train_acc, s->val_loss, s->val_acc,
                         s->test_loss,  s->test_acc,  s->lr,       s->seconds};
    if (json) {
        static const char *const keys[8] = {"train_loss", "train_accuracy", "val_loss",
                                            "val_accuracy", "test_loss", "test_accuracy", "lr",
                                            "seconds"};
        fprintf(f, "{\"epoch\":%ld", s->epoch);
        for (int i = 0; i < 8; i++)
            if (isfinite(v[i])) fprintf(f, ",\"%s\":%.9g", keys[i], v[i]);
            else fprintf(f, ",\"%s\":null", keys[i]);
        fputs("}\n", f);
    } else {
        fprintf(f, "%ld", s->epoch);
        for (int i = 0; i < 8; i++)
            if (isfinite(v[i])) fprintf(f, ",%.9g", v[i]);
            else fputs(",", f);
        fputc('\n', f);
    }
    fflush(f);
}

/* The model with its description in the metadata, and the resume state
 * beside it (PATH.resume). */
static int train_save(tg_ctx *ctx, const options *o, const train_data *d, train_model *t,
                      const epoch_stats *st, double best_val) {
    const char *keys[24], *vals[24];
    char s_lr[32], s_epochs[32], s_batch[32], s_seed[32], s_acc[32], s_best[40];
    sbuf sw = {0}, smean = {0}, sstd = {0}, snames = {0};
    int nk = 0, rc = 1;
    widths_str(&sw, t->widths, t->n_widths, ",");
    keys[nk] = "tg_mlp.version", vals[nk++] = MODEL_VERSION;
    keys[nk] = "tg_mlp.widths", vals[nk++] = sw.p ? sw.p : "";
    keys[nk] = "tg_mlp.act", vals[nk++] = ACT_NAMES[t->m.act];
    keys[nk] = "tg_mlp.input", vals[nk++] = d->idx ? "idx" : "csv";
    if (!d->idx) keys[nk] = "tg_mlp.label", vals[nk++] = o->label ? o->label : "-1";
    if (d->names.n) {
        for (int i = 0; i < d->names.n; i++) sb_printf(&snames, "%s%s", i ? "\n" : "", d->names.name[i]);
        keys[nk] = "tg_mlp.classes", vals[nk++] = snames.p ? snames.p : "";
    }
    if (o->standardize) {
        for (int64_t j = 0; j < d->sc.n_features; j++) {
            sb_printf(&smean, "%s%.9g", j ? "," : "", (double)d->sc.mean[j]);
            sb_printf(&sstd, "%s%.9g", j ? "," : "", (double)d->sc.std[j]);
        }
        keys[nk] = "tg_mlp.scaler.mean", vals[nk++] = smean.p ? smean.p : "";
        keys[nk] = "tg_mlp.scaler.std", vals[nk++] = sstd.p ? sstd.p : "";
    }
    snprintf(s_lr, sizeof s_lr, "%g", t->oo.lr);
    snprintf(s_epochs, sizeof s_epochs, "%ld", st->epoch);
    snprintf(s_batch, sizeof s_batch, "%ld", o->batch);
    snprintf(s_seed, sizeof s_seed, "%ld", o->seed);
    snprintf(s_acc, sizeof s_acc, "%.4f", st->test_acc);
    snprintf(s_best, sizeof s_best, "%.17g", best_val);
    keys[nk] = "tg_mlp.optimizer", vals[nk++] = o->opt_name;
    keys[nk] = "tg_mlp.lr", vals[nk++] = s_lr;
    keys[nk] = "tg_mlp.epochs", vals[nk++] = s_epochs;
    keys[nk] = "tg_mlp.batch", vals[nk++] = s_batch;
    keys[nk] = "tg_mlp.seed", vals[nk++] = s_seed;
    keys[nk] = "tg_mlp.test_accuracy", vals[nk++] = s_acc;
    if (isfinite(best_val)) keys[nk] = "tg_mlp.best_val_loss", vals[nk++] = s_best;
    char rpath[4096];
    snprintf(rpath, sizeof rpath, "%s.resume", o->out);
    if (sw.oom || smean.oom || sstd.oom || snames.oom) tg_set_error(ctx, "out of memory");
    else if (!tg_save_meta(ctx, o->out, keys, vals, nk) &&
             !tg_resume_save(ctx, rpath, t->opt, &t->b, st->epoch))
        rc = 0;
    free(sw.p);
    free(smean.p);
    free(sstd.p);
    free(snames.p);
    return rc;
}

/* --resume: the parameters, the optimiser, the batcher and the random state
 * of an earlier run; *epoch gets the epochs it had done. */
static int train_resume(tg_ctx *ctx, const options *o, train_model *t, long *epoch, double *best) {
    char rpath[4096];
    int64_t e = 0;
    snprintf(rpath, sizeof rpath, "%s.resume", o->resume);
    if (tg_load(ctx, o->resume) || tg_resume_load(ctx, rpath, t->opt, &t->b, &e)) return 1;
    char *b = tg_checkpoint_meta(ctx, o->resume, "tg_mlp.best_val_loss");
    if (b) *best = strtod(b, NULL);
    free(b);
    /* the two files are written one after the other: they must be of one epoch */
    char *me = tg_checkpoint_meta(ctx, o->resume, "tg_mlp.epochs");
    long model_epoch = me ? strtol(me, NULL, 10) : -1;
    free(me);
    if (tg_ok(ctx) && model_epoch != (long)e)
        tg_set_error(ctx, "%s is from epoch %ld but %s from epoch %lld: not one run's pair", o->resume,
                     model_epoch, rpath, (long long)e);
    *epoch = (long)e;
    return tg_ok(ctx) ? 0 : 1;
}

static void train_print_header(const options *o, const train_data *d, const train_model *t) {
    printf("data: %s (%s): %lld training, %lld validation and %lld test samples, %lld features, "
           "%d classes (%.1f s to load)\n",
           o->data, d->idx ? "IDX" : "CSV", (long long)d->tr->n, (long long)(d->va ? d->va->n : 0),
           (long long)d->te->n, (long long)d->tr->n_features, d->classes, d->seconds);
    sbuf dash = {0};
    widths_str(&dash, t->widths, t->n_widths, "-");
    printf("model: %s %s, %lld parameters; %s lr %g (%s), weight decay %g, batch %ld, %ld epochs,"
           " seed %ld\n",
           dash.p ? dash.p : "?", t->hidden_n ? ACT_NAMES[o->act] : "(softmax regression)",
           (long long)t->n_params, o->opt_name, t->oo.lr, o->schedule, t->oo.weight_decay,
           o->batch, o->epochs, o->seed);
    free(dash.p);
    fflush(stdout);
}

static int train_print_json(const options *o, const train_data *d, const train_model *t,
                            const epoch_stats *st, long epochs_run, double seconds) {
    sbuf json = {0};
    sb_printf(&json, "{\"command\":\"train\",\"epochs\":%ld,\"train_loss\":", epochs_run);
    sb_json_num(&json, st->train_loss);
    sb_printf(&json, ",\"val_loss\":");
    sb_json_num(&json, st->val_loss);
    sb_printf(&json, ",\"test_loss\":");
    sb_json_num(&json, st->test_loss);
    sb_printf(&json, ",\"test_accuracy\":");
    sb_json_num(&json, st->test_acc);
    sb_printf(&json, ",\"seconds\":%.3f,\"seconds_per_epoch\":%.3f,\"load_seconds\":%.3f", seconds,
              epochs_run ? seconds / (double)epochs_run : 0.0, d->seconds);
    sb_printf(&json, ",\"train_samples\":%lld,\"test_samples\":%lld,\"parameters\":%lld",
              (long long)d->tr->n, (long long)d->te->n, (long long)t->n_params);
    sb_printf(&json, ",\"widths\":[");
    for (int i = 0; i < t->n_widths; i++) sb_printf(&json, "%s%lld", i ? "," : "", (long long)t->widths[i]);
    sb_printf(&json, "],\"act\":\"%s\",\"optimizer\":\"%s\",\"lr\":%g,\"batch\":%ld,\"seed\":%ld",
              ACT_NAMES[t->m.act], o->opt_name, t->oo.lr, o->batch, o->seed);
    sb_printf(&json, ",\"model\":");
    sb_json_str(&json, o->out);
    sb_printf(&json, "}");
    if (!json.oom) printf("%s\n", json.p);
    free(json.p);
    return json.oom;
}

static int cmd_train(options *o) {
    int rc = 1;
    tg_ctx *ctx = tg_ctx_new((uint64_t)o->seed);
    if (!ctx) return report(NULL);
    train_data d = {0};
    train_model t = {0};
    FILE *log = NULL;
    if (o->threads) tg_set_threads(ctx, (int)o->threads);
    if (dist_begin(ctx, o)) goto fail;
    t.hidden_n = parse_widths(o->layers, t.widths + 1, TG_MLP_MAX_LAYERS - 1);
    if (t.hidden_n < 0) {
        rc = usage_error("--layers: '%s' is not a comma-separated list of up to %d widths"
                         " from 1 to %d (or '' for none)", o->layers, TG_MLP_MAX_LAYERS - 1,
                         MAX_WIDTH);
        goto done;
    }
    int r = train_load_data(ctx, o, &d);
    if (r == 2) {
        rc = 2;
        goto done;
    }
    if (r || train_build(ctx, o, &d, &t) || dist_start(&t)) goto fail;
    long first = 0;
    double best = INFINITY;
    if (o->resume && train_resume(ctx, o, &t, &first, &best)) goto fail;
    if (first >= o->epochs) {
        fprintf(stderr, PROG ": %s has done %ld epochs already; ask for more with --epochs\n",
                o->resume, first);
        rc = 2;
        goto done;
    }
    if (o->log) {
        int fresh = !o->resume || access(o->log, F_OK) != 0;
        log = fopen(o->log, o->resume ? "a" : "w");
        if (!log) {
            fprintf(stderr, PROG ": --log %s: %s\n", o->log, strerror(errno));
            goto done;
        }
        if (fresh && !log_is_json(o->log)) fprintf(log, "%s\n", LOG_FIELDS);
    }
    if (!o->quiet) train_print_header(o, &d, &t);

    tg_progress p;
    if (!o->quiet) {
        tg_progress_begin(&p, stderr, o->epochs, t.b.n_batches);
        p.epoch = first;
    }
    epoch_stats st = {.val_loss = NAN, .val_acc = NAN};
    double t0 = now();
    long stale = 0, e;
    for (e = first; e < o->epochs; e++) {
        double te0 = now();
        st.epoch = e + 1;
        if (train_epoch(ctx, o, &t, &p, &st)) goto fail;
        if (d.va && evaluate(ctx, &t.m, d.va, d.classes, &st.val_loss, &st.val_acc, NULL)) goto fail;
        if (evaluate(ctx, &t.m, d.te, d.classes, &st.test_loss, &st.test_acc, NULL)) goto fail;
        st.seconds = now() - te0;
        if (!o->quiet) {
            if (d.va)
                tg_progress_end_epoch(&p, "val loss %.4f  val acc %.4f  test acc %.4f", st.val_loss,
                                      st.val_acc, st.test_acc);
            else
                tg_progress_end_epoch(&p, "test loss %.4f  test acc %.4f", st.test_loss, st.test_acc);
        }
        if (log) log_epoch(log, log_is_json(o->log), &st);
        if (!isfinite(st.train_loss)) {
            fprintf(stderr, PROG ": training diverged (the loss is %g); try a lower --lr\n",
                    st.train_loss);
            goto done;
        }
        /* keep the model of every epoch, or with --patience the best one */
        int better = o->patience && st.val_loss < best;
        if (better) best = st.val_loss, stale = 0;
        else stale++;
        if ((!o->patience || better) && dist_save(ctx, o, &d, &t, &st, best)) goto fail;
        if (o->patience && stale >= o->patience) {
            if (!o->quiet)
                fprintf(stderr, "early stop: no better validation loss for %ld epochs (best %.4f)\n",
                        stale, best);
            e++;
            break;
        }
    }
    double seconds = now() - t0;
    if (!o->quiet)
        printf("test accuracy %.4f, test loss %.4f, train loss %.4f (%ld epochs in %.1f s)\nsaved %s%s\n",
               st.test_acc, st.test_loss, st.train_loss, e - first, seconds, o->out,
               o->patience ? " (the epoch with the best validation loss)" : "");
    if (o->json && train_print_json(o, &d, &t, &st, e, seconds)) {
        tg_set_error(ctx, "out of memory");
        goto fail;
    }
    rc = 0;
    goto done;
fail:
    rc = report(ctx);
done:
    fflush(stdout);
    if (log) fclose(log);
    tg_batcher_free(&t.b);
    dist_end(); /* before the optimiser it steps (tg_mpi_free moves its state back) */
    tg_optim_free(t.opt);
    train_data_free(&d);
    tg_ctx_free(ctx);
    return rc;
}

/* ======================================================================== */
/* plot                                                                     */
/* ======================================================================== */

/* The columns of a --log file, in LOG_FIELDS order (NaN: absent). */
enum { L_EPOCH, L_TRAIN_LOSS, L_TRAIN_ACC, L_VAL_LOSS, L_VAL_ACC, L_TEST_LOSS, L_TEST_ACC, L_COUNT };
typedef struct {
    int n, cap;
    double (*row)[L_COUNT];
} log_rows;

/* a JSON line's number for key, NaN if absent or null */
static double json_line_num(const char *line, const char *key) {
    char pat[40];
    snprintf(pat, sizeof pat, "\"%s\":", key);
    const char *p = strstr(line, pat);
    if (!p) return NAN;
    p += strlen(pat);
    char *end;
    double v = strtod(p, &end);
    return end == p ? NAN : v;
}

static int read_log(const char *path, log_rows *lr) {
    static const char *const keys[L_COUNT] = {"epoch", "train_loss", "train_accuracy", "val_loss",
                                              "val_accuracy", "test_loss", "test_accuracy"};
    FILE *f = fopen(path, "r");
    if (!f) return fprintf(stderr, PROG ": %s: %s\n", path, strerror(errno)), 1;
    char *line = NULL;
    size_t cap = 0;
    long lineno = 0;
    int rc = 0;
    while (getline(&line, &cap, f) > 0) {
        lineno++;
        if (!strncmp(line, "epoch,", 6) || line[0] == '\n') continue;
        double r[L_COUNT];
        if (line[0] == '{') {
            for (int k = 0; k < L_COUNT; k++) r[k] = json_line_num(line, keys[k]);
        } else {
            const char *p = line;
            for (int k = 0; k < L_COUNT; k++) {
                char *end;
                r[k] = strtod(p, &end);
                if (end == p) r[k] = NAN;
                p = end;
                if (*p == ',') p++;
                else if (k + 1 < L_COUNT) { /* short line: the rest absent */
                    for (int j = k + 1; j < L_COUNT; j++) r[j] = NAN;
                    break;
                }
            }
        }
        if (!isfinite(r[L_EPOCH])) {
            fprintf(stderr, PROG ": %s:%ld: not a line of a tg-mlp --log (no epoch)\n", path, lineno);
            rc = 1;
            break;
        }
        if (lr->n == lr->cap) {
            int nc = lr->cap ? 2 * lr->cap : 64;
            void *q = realloc(lr->row, (size_t)nc * sizeof *lr->row);
            if (!q) {
                rc = 1;
                break;
            }
            lr->row = q;
            lr->cap = nc;
        }
        memcpy(lr->row[lr->n++], r, sizeof r);
    }
    free(line);
    fclose(f);
    if (!rc && lr->n == 0) fprintf(stderr, PROG ": %s: no epochs in the log\n", path), rc = 1;
    return rc;
}

/* One panel: the series cols of lr against the epoch, in the box (x0, y0, w, h). */
static void svg_panel(FILE *f, const log_rows *lr, const int *cols, int ncols, const char *title,
                      double x0, double y0, double w, double h, int is_acc) {
    static const char *const colour[L_COUNT] = {"", "#1f77b4", "#1f77b4", "#ff7f0e", "#ff7f0e",
                                                "#2ca02c", "#2ca02c"};
    static const char *const label[L_COUNT] = {"", "train", "train", "validation", "validation",
                                               "test", "test"};
    double e0 = lr->row[0][L_EPOCH], e1 = lr->row[lr->n - 1][L_EPOCH];
    double lo = is_acc ? 1 : INFINITY, hi = is_acc ? 0 : -INFINITY;
    for (int i = 0; i < lr->n; i++)
        for (int c = 0; c < ncols; c++) {
            double v = lr->row[i][cols[c]];
            if (isfinite(v)) lo = v < lo ? v : lo, hi = v > hi ? v : hi;
        }
    if (!(hi >= lo)) lo = 0, hi = 1;
    if (is_acc) lo = lo > 0.1 ? floor(lo * 10 - 1) / 10 : 0, hi = 1;
    else lo = 0, hi = hi > 0 ? hi * 1.05 : 1;
    if (e1 <= e0) e1 = e0 + 1;
    double px = x0 + 60, py = y0 + 30, pw = w - 80, ph = h - 70;
#define SX(e) (px + ((e) - e0) / (e1 - e0) * pw)
#define SY(v) (py + ph - ((v) - lo) / (hi - lo) * ph)
    fprintf(f, "<text x=\"%.1f\" y=\"%.1f\" font-size=\"16\" font-weight=\"bold\">%s</text>\n",
            px, y0 + 20, title);
    fprintf(f, "<rect x=\"%.1f\" y=\"%.1f\" width=\"%.1f\" height=\"%.1f\" fill=\"none\" "
               "stroke=\"#888\"/>\n", px, py, pw, ph);
    for (int k = 0; k <= 4; k++) { /* horizontal grid and labels */
        double v = lo + (hi - lo) * k / 4;
        fprintf(f, "<line x1=\"%.1f\" y1=\"%.1f\" x2=\"%.1f\" y2=\"%.1f\" stroke=\"#ddd\"/>\n", px,
                SY(v), px + pw, SY(v));
        fprintf(f, "<text x=\"%.1f\" y=\"%.1f\" font-size=\"11\" text-anchor=\"end\">%.3g</text>\n",
                px - 6, SY(v) + 4, v);
    }
    int ticks = (int)(e1 - e0) < 8 ? (int)(e1 - e0) : 8;
    for (int k = 0; k <= ticks; k++) {
        double e = e0 + (e1 - e0) * k / (ticks ? ticks : 1);
        fprintf(f, "<text x=\"%.1f\" y=\"%.1f\" font-size=\"11\" text-anchor=\"middle\">%.0f</text>\n",
                SX(e), py + ph + 16, e);
    }
    fprintf(f, "<text x=\"%.1f\" y=\"%.1f\" font-size=\"12\" text-anchor=\"middle\">epoch</text>\n",
            px + pw / 2, py + ph + 34);
    int leg = 0;
    for (int c = 0; c < ncols; c++) {
        int k = cols[c], any = 0;
        for (int i = 0; i < lr->n; i++) any |= isfinite(lr->row[i][k]);
        if (!any) continue;
        fprintf(f, "<polyline fill=\"none\" stroke=\"%s\" stroke-width=\"2\" points=\"", colour[k]);
        for (int i = 0; i < lr->n; i++)
            if (isfinite(lr->row[i][k]))
                fprintf(f, "%.1f,%.1f ", SX(lr->row[i][L_EPOCH]), SY(lr->row[i][k]));
        fputs("\"/>\n", f);
        if (lr->n == 1)
            fprintf(f, "<circle cx=\"%.1f\" cy=\"%.1f\" r=\"3\" fill=\"%s\"/>\n",
                    SX(lr->row[0][L_EPOCH]), SY(lr->row[0][k]), colour[k]);
        double lx = px + pw - 110, ly = py + 14 + 16 * leg++;
        fprintf(f, "<line x1=\"%.1f\" y1=\"%.1f\" x2=\"%.1f\" y2=\"%.1f\" stroke=\"%s\" "
                   "stroke-width=\"2\"/><text x=\"%.1f\" y=\"%.1f\" font-size=\"12\">%s</text>\n",
                lx, ly, lx + 20, ly, colour[k], lx + 26, ly + 4, label[k]);
    }
#undef SX
#undef SY
}

static int cmd_plot(const options *o) {
    log_rows lr = {0};
    if (read_log(o->plot_log, &lr)) {
        free(lr.row);
        return 1;
    }
    FILE *f = fopen(o->out, "w");
    if (!f) {
        fprintf(stderr, PROG ": --out %s: %s\n", o->out, strerror(errno));
        free(lr.row);
        return 1;
    }
    const double W = 900, H = 380;
    fprintf(f, "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n"
               "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"%.0f\" height=\"%.0f\" "
               "viewBox=\"0 0 %.0f %.0f\" font-family=\"sans-serif\">\n"
               "<rect width=\"100%%\" height=\"100%%\" fill=\"white\"/>\n", W, H, W, H);
    const int loss[3] = {L_TRAIN_LOSS, L_VAL_LOSS, L_TEST_LOSS};
    const int acc[3] = {L_TRAIN_ACC, L_VAL_ACC, L_TEST_ACC};
    svg_panel(f, &lr, loss, 3, "loss (cross-entropy)", 0, 0, W / 2, H, 0);
    svg_panel(f, &lr, acc, 3, "accuracy", W / 2, 0, W / 2, H, 1);
    fputs("</svg>\n", f);
    int bad = ferror(f);
    if (fclose(f) != 0 || bad) {
        fprintf(stderr, PROG ": --out %s: cannot write\n", o->out);
        free(lr.row);
        return 1;
    }
    printf("wrote %s (%d epochs)\n", o->out, lr.n);
    free(lr.row);
    return 0;
}

/* ======================================================================== */
/* eval and predict                                                         */
/* ======================================================================== */

/* Load the data for eval (labels required) or predict (labels optional and
 * ignored) and check it against the model. NULL on error (recorded). */
static tg_dataset *load_for_model(tg_ctx *ctx, const options *o, const model *md, int need_labels) {
    tg_dataset *ds = NULL;
    int64_t in = md->widths[0];
    const char *label = o->label ? o->label : md->label;
    if (is_dir(o->data)) {
        ds = tg_load_idx_dir(ctx, o->data, "test");
    } else if (!strcmp(md->input, "idx")) {
        if (need_labels) {
            tg_set_error(ctx, "%s: eval on IDX data needs the directory holding the t10k images"
                              " and labels", o->data);
            return NULL;
        }
        ds = tg_load_idx(ctx, o->data, NULL);
    } else if (need_labels) {
        class_names names = {0};
        ds = load_labelled_csv(ctx, o, label, &md->names, &names);
        names_free(&names);
    } else {
        /* with or without the label column: decide by the column count (a
         * column of class names does not load as numbers: then it is there) */
        tg_csv_opts co = csv_opts(NULL, TG_CSV_Y_NONE, o->delimiter);
        ds = tg_load_csv(ctx, o->data, &co);
        if (!ds && md->names.n) tg_clear_error(ctx);
        if (!ds || ds->n_features == in + 1) {
            tg_dataset_free(ds);
            class_names names = {0};
            ds = tg_ok(ctx) ? load_labelled_csv(ctx, o, label, &md->names, &names) : NULL;
            names_free(&names);
        }
    }
    if (!ds) return NULL;
    if (ds->n_features != in) {
        tg_set_error(ctx, "%s: the data has %lld features per sample, the model expects %lld%s",
                     o->data, (long long)ds->n_features, (long long)in,
                     need_labels ? "" : " (or one more column: the label)");
        tg_dataset_free(ds);
        return NULL;
    }
    if (need_labels && !ds->labels) {
        tg_set_error(ctx, "%s: the data has no labels", o->data);
        tg_dataset_free(ds);
        return NULL;
    }
    int classes = (int)md->widths[md->n_widths - 1];
    if (need_labels && ds->n_classes > classes) {
        tg_set_error(ctx, "%s: a label is %d, but the model has %d classes (0 to %d)", o->data,
                     ds->n_classes - 1, classes, classes - 1);
        tg_dataset_free(ds);
        return NULL;
    }
    if (ds->n < 1) {
        tg_set_error(ctx, "%s: no samples", o->data);
        tg_dataset_free(ds);
        return NULL;
    }
    if (md->mean) standardise(ds, md->mean, md->std);
    return ds;
}

/* What eval and predict work on: a context, the model and the data set
 * prepared for it. */
typedef struct {
    tg_ctx *ctx;
    model md;
    tg_dataset *ds;
} model_run;

/* Opens o->model and o->data (with labels when need_labels) in a new context.
 * 0 ok; -1 no context (nothing to close); 1 failed, the error is in r->ctx
 * (close r all the same). */
static int run_open(model_run *r, const options *o, int need_labels) {
    r->ds = NULL;
    r->ctx = tg_ctx_new(1);
    if (!r->ctx) return -1;
    if (o->threads) tg_set_threads(r->ctx, (int)o->threads);
    if (model_load(r->ctx, o->model, &r->md)) return 1;
    r->ds = load_for_model(r->ctx, o, &r->md, need_labels);
    return r->ds ? 0 : 1;
}

static void run_close(model_run *r) {
    model_free(&r->md);
    tg_dataset_free(r->ds);
    tg_ctx_free(r->ctx);
}

static int cmd_eval(options *o) {
    model_run r;
    int64_t *cm = NULL;
    sbuf json = {0};
    double t0 = now();
    int rc = run_open(&r, o, 1);
    if (rc < 0) return report(NULL);
    if (rc) goto fail;
    int classes = (int)r.md.widths[r.md.n_widths - 1];
    cm = calloc((size_t)classes * (size_t)classes, sizeof *cm);
    if (!cm) {
        tg_set_error(r.ctx, "out of memory for a %dx%d confusion matrix", classes, classes);
        goto fail;
    }
    double loss, acc;
    if (evaluate(r.ctx, &r.md.mlp, r.ds, classes, &loss, &acc, cm)) goto fail;
    double seconds = now() - t0;
    if (!o->quiet) {
        printf("model %s: ", o->model);
        sbuf w = {0};
        widths_str(&w, r.md.widths, r.md.n_widths, "-");
        printf("%s %s\n", w.p ? w.p : "?", r.md.n_widths > 2 ? ACT_NAMES[r.md.act] : "(softmax regression)");
        free(w.p);
        printf("data %s: %lld samples\n", o->data, (long long)r.ds->n);
        printf("loss %.4f  accuracy %.4f (%lld of %lld)\n\n", loss, acc,
               (long long)llround(acc * (double)r.ds->n), (long long)r.ds->n);
        printf("confusion matrix (rows: true class, columns: predicted):\n");
        tg_confusion_print(stdout, cm, classes);
        for (int c = 0; c < r.md.names.n; c++) printf("%sclass %d: %s", c ? ", " : "\n", c, r.md.names.name[c]);
        if (r.md.names.n) printf("\n");
    }
    if (o->json) {
        sb_printf(&json, "{\"command\":\"eval\",\"samples\":%lld,\"test_loss\":", (long long)r.ds->n);
        sb_json_num(&json, loss);
        sb_printf(&json, ",\"test_accuracy\":");
        sb_json_num(&json, acc);
        sb_printf(&json, ",\"seconds\":%.3f,\"confusion\":[", seconds);
        for (int t = 0; t < classes; t++) {
            sb_printf(&json, "%s[", t ? "," : "");
            for (int p = 0; p < classes; p++)
                sb_printf(&json, "%s%lld", p ? "," : "", (long long)cm[t * classes + p]);
            sb_printf(&json, "]");
        }
        sb_printf(&json, "]}");
        if (json.oom) {
            tg_set_error(r.ctx, "out of memory");
            goto fail;
        }
        printf("%s\n", json.p);
    }
    rc = 0;
    goto done;
fail:
    rc = report(r.ctx);
done:
    free(json.p);
    free(cm);
    fflush(stdout);
    run_close(&r);
    return rc;
}

static int cmd_predict(options *o) {
    model_run r;
    int rc = run_open(&r, o, 0);
    if (rc < 0) return report(NULL);
    if (rc) goto fail;
    int64_t classes = r.md.widths[r.md.n_widths - 1];
    int prev = tg_no_grad(r.ctx, 1);
    for (int64_t s = 0; s < r.ds->n && tg_ok(r.ctx); s += EVAL_BATCH) {
        int64_t m = r.ds->n - s < EVAL_BATCH ? r.ds->n - s : EVAL_BATCH;
        /* consecutive rows of the data set, read in place (no copy) */
        tg_tensor *x = tg_wrap(r.ctx, TG_F32, 2, (const int64_t[]){m, r.ds->n_features},
                               r.ds->x + s * r.ds->n_features);
        tg_tensor *logits = tg_mlp_forward(r.ctx, &r.md.mlp, x);
        if (o->proba) logits = tg_softmax(r.ctx, logits);
        if (!logits) break;
        const float *z = tg_data(logits);
        for (int64_t i = 0; o->proba && i < m; i++)
            for (int64_t c = 0; c < classes; c++)
                printf("%.9g%c", (double)z[i * classes + c], c + 1 < classes ? ',' : '\n');
        for (int64_t i = 0; !o->proba && i < m; i++) {
            int64_t best = 0; /* argmax, the first on ties */
            for (int64_t c = 1; c < classes; c++)
                if (z[i * classes + c] > z[i * classes + best]) best = c;
            if (r.md.names.n) printf("%s\n", r.md.names.name[best]);
            else printf("%lld\n", (long long)best);
        }
        tg_reset(r.ctx);
    }
    tg_no_grad(r.ctx, prev);
    if (!tg_ok(r.ctx)) goto fail;
    rc = 0;
    goto done;
fail:
    rc = report(r.ctx);
done:
    if (fflush(stdout) != 0 && rc == 0) {
        fprintf(stderr, PROG ": error writing the predictions: %s\n", strerror(errno));
        rc = 1;
    }
    run_close(&r);
    return rc;
}

int main(int argc, char **argv) {
    if (argc < 2) {
        fputs(PROG ": a command is needed (train, eval, predict or plot)\n", stderr);
        fputs(USAGE, stderr);
        return 2;
    }
    const char *c = argv[1];
    if (!strcmp(c, "--help") || !strcmp(c, "-h") || !strcmp(c, "help")) {
        fputs(USAGE, stdout);
        return 0;
    }
    if (!strcmp(c, "--version") || !strcmp(c, "-V")) {
        printf(PROG " " TG_MLP_VERSION " (tapegrad %s)\n", TG_MLP_VERSION);
        return 0;
    }
    options o = {.layers = "128", .act = TG_ACT_RELU, .act_name = "relu", .epochs = 5,
                 .batch = 64, .seed = 1, .opt_name = "adam", .schedule = "constant",
                 .test_fraction = 0.2};
    if (!strcmp(c, "train")) o.cmd = CMD_TRAIN;
    else if (!strcmp(c, "eval")) o.cmd = CMD_EVAL;
    else if (!strcmp(c, "predict")) o.cmd = CMD_PREDICT;
    else if (!strcmp(c, "plot")) o.cmd = CMD_PLOT;
    else if (c[0] == '-') return usage_error("%s: a command comes first (train, eval, predict or plot)", c);
    else return usage_error("unknown command '%s' (train, eval, predict or plot)", c);
    int r = parse_options(argc, argv, &o);
    if (r == 1) return 0; /* --help */
    if (r) return r;
    if (o.cmd == CMD_TRAIN && !o.out) o.out = "model.safetensors";
#ifdef TG_HAVE_MPI
    if (o.distributed) return dist_main(argc, argv, &o);
#else
    if (o.distributed) return usage_error("--distributed: this tg-mlp was built without MPI");
#endif
    if (check_paths(&o)) return 1;
    switch (o.cmd) {
    case CMD_TRAIN: return cmd_train(&o);
    case CMD_EVAL: return cmd_eval(&o);
    case CMD_PLOT: return cmd_plot(&o);
    default: return cmd_predict(&o);
    }
}
