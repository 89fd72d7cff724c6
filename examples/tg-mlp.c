/* tg-mlp: train, evaluate and use a multilayer perceptron from the command line.
 *
 *   tg-mlp train   --data DIR|FILE.csv [options]   train, evaluate each epoch, save
 *   tg-mlp eval    --model M --data D [--json]      loss, accuracy, confusion matrix
 *   tg-mlp predict --model M --data D               one predicted class per line
 *
 * Data: a directory holds an IDX data set with the MNIST file names
 * (train-images-idx3-ubyte[.gz], train-labels-..., t10k-...): train on the
 * train files, test on the t10k files. A file is a numeric CSV: class labels
 * in one column (--label, default the last), split 80/20 at random
 * (--test-fraction, --seed) into training and test parts.
 *
 * The model is saved as a safetensors checkpoint (tg_save_meta) whose
 * metadata describe the network, so eval and predict rebuild it without
 * being told the architecture:
 *   tg_mlp.version   "2" (1: the weights were [in,out] and named fc1, fc2, ...)
 *   tg_mlp.widths    "784,128,10"   inputs, hidden widths, classes
 *   tg_mlp.act       "relu"         hidden activation (relu, tanh, sigmoid, leaky_relu, none)
 *   tg_mlp.input     "idx" | "csv"
 *   tg_mlp.label     the CSV label column as given (name or index; "-1": the last)
 *   tg_mlp.scaler.mean, tg_mlp.scaler.std
 *                    with --standardize: per-feature mean and std fitted on the
 *                    training part, comma-separated, "%.9g" (exact for floats)
 *   tg_mlp.optimizer, tg_mlp.lr, tg_mlp.epochs, tg_mlp.batch, tg_mlp.seed,
 *   tg_mlp.test_accuracy   how it was trained (informational)
 * The parameters are those of the equivalent torch.nn.Sequential(Linear, act,
 * Linear, ...): "0.weight" [out,in], "0.bias" [out], "2.weight", ..., so the
 * file loads into it with load_state_dict(strict=True) (docs/interop.md).
 *
 * Exit status: 0 ok, 1 an error (data, model, file), 2 bad arguments.
 * Documentation: docs/cli.md.
 */
#define _POSIX_C_SOURCE 200809L /* stat, clock_gettime */
#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

#include "tapegrad.h"

#define PROG "tg-mlp"
#define MAX_WIDTH (1 << 24)
#define MAX_CLASSES 65536
#define EVAL_BATCH 1000
#define MODEL_VERSION "2"

/* ======================================================================== */
/* Options                                                                  */
/* ======================================================================== */

enum { CMD_TRAIN = 1, CMD_EVAL = 2, CMD_PREDICT = 4 };

typedef struct {
    int cmd;
    const char *data, *model, *label, *layers, *out;
    tg_act act;
    const char *act_name;
    long epochs, batch, seed, threads;
    const char *opt_name;
    double lr, weight_decay, test_fraction;
    int lr_set, wd_set, standardize, json, quiet, proba;
} options;

static const char USAGE[] =
    "usage:\n"
    "  " PROG " train   --data DIR|FILE.csv [options]\n"
    "  " PROG " eval    --model MODEL --data DIR|FILE.csv [--label L] [--json]\n"
    "  " PROG " predict --model MODEL --data DIR|FILE [--label L] [--proba]\n"
    "\n"
    "train options:\n"
    "  --data D             IDX directory (train-* and t10k-* files) or a CSV file\n"
    "  --label L            CSV label column: header name or index (negative from the\n"
    "                       end); default the last column\n"
    "  --layers 128,64      hidden layer widths; '' or none: no hidden layer (softmax\n"
    "                       regression); default 128\n"
    "  --act A              relu|tanh|sigmoid|leaky_relu (default relu)\n"
    "  --epochs N           default 5\n"
    "  --batch N            default 64\n"
    "  --opt O              sgd|momentum|rmsprop|adam|adamw (default adam)\n"
    "  --lr X               default 1e-3 (1e-2 for sgd and momentum)\n"
    "  --weight-decay X     default 0 (0.01 for adamw)\n"
    "  --seed N             initialisation, shuffling and CSV split (default 1)\n"
    "  --test-fraction X    CSV only: held-out fraction (default 0.2)\n"
    "  --standardize        standardise features (fitted on the training part)\n"
    "  --out PATH           where to save the model (default model.safetensors)\n"
    "  --threads N          threads for the kernels (default: all cores)\n"
    "  --json               last line on stdout: a JSON object of the results\n"
    "  --quiet              no progress and no summary (the JSON line still prints)\n"
    "\n"
    "eval prints loss, accuracy and the confusion matrix on D (an IDX directory's\n"
    "t10k files, or a whole CSV file); predict prints one class per line (CSV with\n"
    "or without the label column, an IDX directory's t10k images or an IDX image file);\n"
    "with --proba, the softmax probabilities of the classes instead, comma-separated.\n"
    "See docs/cli.md.\n";

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

static int parse_long(const char *s, long lo, long hi, long *out) {
    char *end;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (errno || end == s || *end || v < lo || v > hi) return -1;
    *out = v;
    return 0;
}

static int parse_double(const char *s, double *out) {
    char *end;
    errno = 0;
    double v = strtod(s, &end);
    if (errno || end == s || *end || !isfinite(v)) return -1;
    *out = v;
    return 0;
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

/* argv[2..] into o. Returns 0, or 2 after printing a message. */
static int parse_options(int argc, char **argv, options *o) {
    for (int i = 2; i < argc; i++) {
        const char *a = argv[i], *v = NULL;
        char name[64];
        /* --name=value or --name value */
        const char *eq = strchr(a, '=');
        if (!strncmp(a, "--", 2) && eq && (size_t)(eq - a) < sizeof name) {
            memcpy(name, a, (size_t)(eq - a));
            name[eq - a] = '\0';
            v = eq + 1;
        } else {
            snprintf(name, sizeof name, "%s", a);
        }
        int train = o->cmd == CMD_TRAIN;
        /* flags */
        if (!strcmp(name, "--help") || !strcmp(name, "-h")) {
            fputs(USAGE, stdout);
            return 1;
        }
        if (!strcmp(name, "--json") || !strcmp(name, "--quiet") || !strcmp(name, "--standardize") ||
            !strcmp(name, "--proba")) {
            if (v) return usage_error("%s takes no value", name);
            if (!strcmp(name, "--json") && o->cmd != CMD_PREDICT) o->json = 1;
            else if (!strcmp(name, "--quiet") && o->cmd != CMD_PREDICT) o->quiet = 1;
            else if (!strcmp(name, "--standardize") && train) o->standardize = 1;
            else if (!strcmp(name, "--proba") && o->cmd == CMD_PREDICT) o->proba = 1;
            else return usage_error("%s is not an option of this command", name);
            continue;
        }
        if (strncmp(name, "--", 2) != 0) return usage_error("unexpected argument '%s'", a);
        if (!v) {
            if (i + 1 >= argc) return usage_error("%s needs a value", name);
            v = argv[++i];
        }
        if (!strcmp(name, "--data")) o->data = v;
        else if (!strcmp(name, "--label")) o->label = v;
        else if (!strcmp(name, "--model") && !train) o->model = v;
        else if (!strcmp(name, "--threads")) {
            if (parse_long(v, 1, 1024, &o->threads)) return usage_error("--threads: '%s' is not 1 to 1024", v);
        } else if (!train) {
            return usage_error("%s is not an option of this command", name);
        } else if (!strcmp(name, "--layers")) {
            o->layers = v;
        } else if (!strcmp(name, "--act")) {
            if (act_from_name(v, &o->act) || o->act == TG_ACT_NONE)
                return usage_error("--act: '%s' is not relu, tanh, sigmoid or leaky_relu", v);
            o->act_name = v;
        } else if (!strcmp(name, "--epochs")) {
            if (parse_long(v, 1, 1000000, &o->epochs))
                return usage_error("--epochs: '%s' is not an integer from 1 to 1000000", v);
        } else if (!strcmp(name, "--batch")) {
            if (parse_long(v, 1, 1L << 24, &o->batch))
                return usage_error("--batch: '%s' is not an integer from 1 to %ld", v, 1L << 24);
        } else if (!strcmp(name, "--opt")) {
            if (strcmp(v, "sgd") && strcmp(v, "momentum") && strcmp(v, "rmsprop") &&
                strcmp(v, "adam") && strcmp(v, "adamw"))
                return usage_error("--opt: '%s' is not sgd, momentum, rmsprop, adam or adamw", v);
            o->opt_name = v;
        } else if (!strcmp(name, "--lr")) {
            if (parse_double(v, &o->lr) || o->lr <= 0)
                return usage_error("--lr: '%s' is not a positive number", v);
            o->lr_set = 1;
        } else if (!strcmp(name, "--weight-decay")) {
            if (parse_double(v, &o->weight_decay) || o->weight_decay < 0)
                return usage_error("--weight-decay: '%s' is not a number >= 0", v);
            o->wd_set = 1;
        } else if (!strcmp(name, "--seed")) {
            if (parse_long(v, 0, 0x7fffffffL, &o->seed))
                return usage_error("--seed: '%s' is not an integer from 0 to 2147483647", v);
        } else if (!strcmp(name, "--test-fraction")) {
            if (parse_double(v, &o->test_fraction) || !(o->test_fraction > 0) ||
                !(o->test_fraction < 1))
                return usage_error("--test-fraction: '%s' is not a number in (0, 1)", v);
        } else if (!strcmp(name, "--out")) {
            if (!*v) return usage_error("--out: empty path");
            o->out = v;
        } else {
            return usage_error("unknown option '%s'", name);
        }
    }
    if (!o->data || !*o->data) return usage_error("--data is required");
    if (o->cmd != CMD_TRAIN && (!o->model || !*o->model)) return usage_error("--model is required");
    return 0;
}

/* ======================================================================== */
/* Small helpers                                                            */
/* ======================================================================== */

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

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
static tg_csv_opts csv_opts(const char *label, tg_csv_y kind) {
    tg_csv_opts c = tg_csv_defaults();
    c.y_kind = kind;
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
    tg_batcher b;
    *loss = *acc = NAN;
    if (tg_batcher_init(&b, ctx, ds, EVAL_BATCH, 0)) return -1;
    int prev = tg_no_grad(ctx, 1);
    tg_mean_meter ml = {0}, ma = {0};
    tg_tensor *x, *y;
    while (tg_batcher_next(&b, &x, &y) == 1) {
        tg_tensor *logits = tg_mlp_forward(ctx, m, x);
        double l = tg_item(tg_cross_entropy(ctx, logits, y));
        if (!tg_ok(ctx)) break;
        tg_mean_meter_add(&ml, l, tg_dim(x, 0));
        tg_mean_meter_add(&ma, tg_accuracy(logits, y), tg_dim(x, 0));
        if (confusion) tg_confusion(ctx, logits, y, n_classes, confusion);
        tg_reset(ctx);
    }
    tg_reset(ctx);
    tg_no_grad(ctx, prev);
    tg_batcher_free(&b);
    if (!tg_ok(ctx)) return -1;
    *loss = tg_mean_meter_mean(&ml);
    *acc = tg_mean_meter_mean(&ma);
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
    tg_mlp mlp;
} model;

static void model_free(model *md) {
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

static int cmd_train(options *o) {
    int rc = 1;
    tg_ctx *ctx = tg_ctx_new((uint64_t)o->seed);
    if (!ctx) return report(NULL);
    tg_dataset *all = NULL, *tr = NULL, *te = NULL;
    tg_optim *opt = NULL;
    tg_batcher b = {0};
    tg_scaler sc = {0};
    sbuf json = {0}, sw = {0}, smean = {0}, sstd = {0};
    int hidden_n;
    int64_t widths[TG_MLP_MAX_LAYERS + 1];
    if (o->threads) tg_set_threads(ctx, (int)o->threads);

    hidden_n = parse_widths(o->layers, widths + 1, TG_MLP_MAX_LAYERS - 1);
    if (hidden_n < 0) {
        rc = usage_error("--layers: '%s' is not a comma-separated list of up to %d widths"
                         " from 1 to %d (or '' for none)", o->layers, TG_MLP_MAX_LAYERS - 1,
                         MAX_WIDTH);
        goto done;
    }

    if (hidden_n == 0) o->act = TG_ACT_NONE; /* softmax regression: no activation at all */

    /* ---- data ---- */
    double t_load = now();
    int idx = is_dir(o->data);
    if (idx) {
        if (o->label) {
            rc = usage_error("--label applies to CSV data; %s is an IDX directory", o->data);
            goto done;
        }
        tr = tg_load_idx_dir(ctx, o->data, "train");
        te = tr ? tg_load_idx_dir(ctx, o->data, "test") : NULL;
        if (tr && te && tr->n_features != te->n_features) {
            tg_set_error(ctx, "%s: the train images have %lld features, the test images %lld",
                         o->data, (long long)tr->n_features, (long long)te->n_features);
        }
    } else {
        tg_csv_opts co = csv_opts(o->label, TG_CSV_Y_LABELS);
        all = tg_load_csv(ctx, o->data, &co);
        if (all && all->n < 2)
            tg_set_error(ctx, "%s: %lld data rows; at least 2 are needed to split into training"
                              " and test parts", o->data, (long long)all->n);
        if (tg_ok(ctx)) tg_dataset_split(ctx, all, o->test_fraction, &tr, &te);
    }
    if (!tg_ok(ctx)) goto fail;
    if (!tr->labels || !te->labels) {
        tg_set_error(ctx, "%s: the data has no labels", o->data);
        goto fail;
    }
    int classes = classes_of(all ? all : tr, te);
    if (classes < 2 || classes > MAX_CLASSES) {
        tg_set_error(ctx, "%s: the labels go from 0 to %d; tg-mlp needs 2 to %d classes (is"
                          " --label the right column?)", o->data, classes - 1, MAX_CLASSES);
        goto fail;
    }
    if (o->standardize) {
        if (tg_scaler_fit(ctx, &sc, tr) || tg_scaler_apply(&sc, tr) || tg_scaler_apply(&sc, te))
            goto fail;
    }
    t_load = now() - t_load;

    /* ---- model and optimiser ---- */
    int n_widths = hidden_n + 2;
    widths[0] = tr->n_features;
    widths[n_widths - 1] = classes;
    tg_mlp m;
    if (tg_mlp_init(ctx, &m, "", n_widths, widths, o->act, TG_F32)) goto fail;
    int64_t n_params = 0;
    for (int i = 0; i < tg_param_count(ctx); i++) n_params += tg_numel(tg_param_at(ctx, i));

    tg_opt_kind kind = !strcmp(o->opt_name, "sgd") || !strcmp(o->opt_name, "momentum") ? TG_OPT_SGD
                       : !strcmp(o->opt_name, "rmsprop")                               ? TG_OPT_RMSPROP
                       : !strcmp(o->opt_name, "adamw")                                 ? TG_OPT_ADAMW
                                                                                       : TG_OPT_ADAM;
    tg_optim_opts oo = tg_optim_defaults(kind);
    if (!strcmp(o->opt_name, "momentum")) oo.momentum = 0.9;
    oo.lr = o->lr_set ? o->lr : kind == TG_OPT_SGD ? 1e-2 : 1e-3;
    if (o->wd_set) oo.weight_decay = o->weight_decay;
    opt = tg_optim_new(ctx, &oo, NULL, 0);
    if (!opt || tg_batcher_init(&b, ctx, tr, o->batch, TG_BATCH_SHUFFLE)) goto fail;

    widths_str(&sw, widths, n_widths, ",");
    if (!o->quiet) {
        printf("data: %s (%s): %lld training and %lld test samples, %lld features, %d classes"
               " (%.1f s to load)\n",
               o->data, idx ? "IDX" : "CSV", (long long)tr->n, (long long)te->n,
               (long long)tr->n_features, classes, t_load);
        sbuf dash = {0};
        widths_str(&dash, widths, n_widths, "-");
        printf("model: %s %s, %lld parameters; %s lr %g, weight decay %g, batch %ld, %ld epochs,"
               " seed %ld\n",
               dash.p ? dash.p : "?", hidden_n ? ACT_NAMES[o->act] : "(softmax regression)",
               (long long)n_params, o->opt_name, oo.lr, oo.weight_decay, o->batch, o->epochs,
               o->seed);
        free(dash.p);
        fflush(stdout);
    }

    /* ---- training ---- */
    tg_progress p;
    if (!o->quiet) tg_progress_begin(&p, stderr, o->epochs, b.n_batches);
    double t0 = now(), train_loss = NAN, test_loss = NAN, test_acc = NAN;
    for (long e = 0; e < o->epochs; e++) {
        tg_mean_meter ml = {0};
        tg_tensor *x, *y;
        int more;
        while ((more = tg_batcher_next(&b, &x, &y)) == 1) {
            tg_tensor *loss = tg_cross_entropy(ctx, tg_mlp_forward(ctx, &m, x), y);
            tg_zero_grad(ctx);
            tg_backward(ctx, loss);
            tg_optim_step(opt);
            double l = tg_item(loss);
            tg_mean_meter_add(&ml, l, tg_dim(x, 0));
            if (!o->quiet) tg_progress_update(&p, tg_dim(x, 0), l);
            tg_reset(ctx);
        }
        if (more < 0 || !tg_ok(ctx)) goto fail;
        train_loss = tg_mean_meter_mean(&ml);
        if (evaluate(ctx, &m, te, classes, &test_loss, &test_acc, NULL)) goto fail;
        if (!o->quiet) tg_progress_end_epoch(&p, "test loss %.4f  test acc %.4f", test_loss, test_acc);
        if (!isfinite(train_loss)) {
            fprintf(stderr, PROG ": training diverged (the loss is %g); try a lower --lr\n",
                    train_loss);
            goto done;
        }
    }
    double seconds = now() - t0;

    /* ---- save, with the architecture in the metadata ---- */
    const char *keys[16], *vals[16];
    char s_lr[32], s_epochs[32], s_batch[32], s_seed[32], s_acc[32];
    int nk = 0;
    keys[nk] = "tg_mlp.version", vals[nk++] = MODEL_VERSION;
    keys[nk] = "tg_mlp.widths", vals[nk++] = sw.p ? sw.p : "";
    keys[nk] = "tg_mlp.act", vals[nk++] = ACT_NAMES[o->act];
    keys[nk] = "tg_mlp.input", vals[nk++] = idx ? "idx" : "csv";
    if (!idx) keys[nk] = "tg_mlp.label", vals[nk++] = o->label ? o->label : "-1";
    if (o->standardize) {
        for (int64_t j = 0; j < sc.n_features; j++) {
            sb_printf(&smean, "%s%.9g", j ? "," : "", (double)sc.mean[j]);
            sb_printf(&sstd, "%s%.9g", j ? "," : "", (double)sc.std[j]);
        }
        keys[nk] = "tg_mlp.scaler.mean", vals[nk++] = smean.p ? smean.p : "";
        keys[nk] = "tg_mlp.scaler.std", vals[nk++] = sstd.p ? sstd.p : "";
    }
    snprintf(s_lr, sizeof s_lr, "%g", oo.lr);
    snprintf(s_epochs, sizeof s_epochs, "%ld", o->epochs);
    snprintf(s_batch, sizeof s_batch, "%ld", o->batch);
    snprintf(s_seed, sizeof s_seed, "%ld", o->seed);
    snprintf(s_acc, sizeof s_acc, "%.4f", test_acc);
    keys[nk] = "tg_mlp.optimizer", vals[nk++] = o->opt_name;
    keys[nk] = "tg_mlp.lr", vals[nk++] = s_lr;
    keys[nk] = "tg_mlp.epochs", vals[nk++] = s_epochs;
    keys[nk] = "tg_mlp.batch", vals[nk++] = s_batch;
    keys[nk] = "tg_mlp.seed", vals[nk++] = s_seed;
    keys[nk] = "tg_mlp.test_accuracy", vals[nk++] = s_acc;
    if (sw.oom || smean.oom || sstd.oom) {
        tg_set_error(ctx, "out of memory");
        goto fail;
    }
    if (tg_save_meta(ctx, o->out, keys, vals, nk)) goto fail;

    if (!o->quiet)
        printf("test accuracy %.4f, test loss %.4f, train loss %.4f (%ld epochs in %.1f s,"
               " %.2f s per epoch)\nsaved %s\n",
               test_acc, test_loss, train_loss, o->epochs, seconds, seconds / (double)o->epochs,
               o->out);
    if (o->json) {
        sb_printf(&json, "{\"command\":\"train\",\"epochs\":%ld,\"train_loss\":", o->epochs);
        sb_json_num(&json, train_loss);
        sb_printf(&json, ",\"test_loss\":");
        sb_json_num(&json, test_loss);
        sb_printf(&json, ",\"test_accuracy\":");
        sb_json_num(&json, test_acc);
        sb_printf(&json, ",\"seconds\":%.3f,\"seconds_per_epoch\":%.3f,\"load_seconds\":%.3f",
                  seconds, seconds / (double)o->epochs, t_load);
        sb_printf(&json, ",\"train_samples\":%lld,\"test_samples\":%lld,\"parameters\":%lld",
                  (long long)tr->n, (long long)te->n, (long long)n_params);
        sb_printf(&json, ",\"widths\":");
        sb_json_str(&json, sw.p ? sw.p : "");
        sb_printf(&json, ",\"act\":\"%s\",\"optimizer\":\"%s\",\"lr\":%g,\"batch\":%ld,\"seed\":%ld",
                  ACT_NAMES[o->act], o->opt_name, oo.lr, o->batch, o->seed);
        sb_printf(&json, ",\"model\":");
        sb_json_str(&json, o->out);
        sb_printf(&json, "}");
        if (json.oom) {
            tg_set_error(ctx, "out of memory");
            goto fail;
        }
        printf("%s\n", json.p);
    }
    rc = 0;
    goto done;
fail:
    rc = report(ctx);
done:
    fflush(stdout);
    free(json.p);
    free(sw.p);
    free(smean.p);
    free(sstd.p);
    tg_batcher_free(&b);
    tg_optim_free(opt);
    tg_scaler_free(&sc);
    tg_dataset_free(all);
    tg_dataset_free(tr);
    tg_dataset_free(te);
    tg_ctx_free(ctx);
    return rc;
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
        tg_csv_opts co = csv_opts(label, TG_CSV_Y_LABELS);
        ds = tg_load_csv(ctx, o->data, &co);
    } else {
        /* with or without the label column: decide by the column count */
        tg_csv_opts co = csv_opts(NULL, TG_CSV_Y_NONE);
        ds = tg_load_csv(ctx, o->data, &co);
        if (ds && ds->n_features == in + 1) {
            tg_dataset_free(ds);
            co = csv_opts(label, TG_CSV_Y_LABELS);
            ds = tg_load_csv(ctx, o->data, &co);
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

static int cmd_eval(options *o) {
    int rc = 1;
    tg_ctx *ctx = tg_ctx_new(1);
    if (!ctx) return report(NULL);
    if (o->threads) tg_set_threads(ctx, (int)o->threads);
    model md;
    tg_dataset *ds = NULL;
    int64_t *cm = NULL;
    sbuf json = {0};
    double t0 = now();
    if (model_load(ctx, o->model, &md)) goto fail;
    ds = load_for_model(ctx, o, &md, 1);
    if (!ds) goto fail;
    int classes = (int)md.widths[md.n_widths - 1];
    cm = calloc((size_t)classes * (size_t)classes, sizeof *cm);
    if (!cm) {
        tg_set_error(ctx, "out of memory for a %dx%d confusion matrix", classes, classes);
        goto fail;
    }
    double loss, acc;
    if (evaluate(ctx, &md.mlp, ds, classes, &loss, &acc, cm)) goto fail;
    double seconds = now() - t0;
    if (!o->quiet) {
        printf("model %s: ", o->model);
        sbuf w = {0};
        widths_str(&w, md.widths, md.n_widths, "-");
        printf("%s %s\n", w.p ? w.p : "?", md.n_widths > 2 ? ACT_NAMES[md.act] : "(softmax regression)");
        free(w.p);
        printf("data %s: %lld samples\n", o->data, (long long)ds->n);
        printf("loss %.4f  accuracy %.4f (%lld of %lld)\n\n", loss, acc,
               (long long)llround(acc * (double)ds->n), (long long)ds->n);
        printf("confusion matrix (rows: true class, columns: predicted):\n");
        tg_confusion_print(stdout, cm, classes);
    }
    if (o->json) {
        sb_printf(&json, "{\"command\":\"eval\",\"samples\":%lld,\"test_loss\":", (long long)ds->n);
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
            tg_set_error(ctx, "out of memory");
            goto fail;
        }
        printf("%s\n", json.p);
    }
    rc = 0;
    goto done;
fail:
    rc = report(ctx);
done:
    fflush(stdout);
    free(json.p);
    free(cm);
    model_free(&md);
    tg_dataset_free(ds);
    tg_ctx_free(ctx);
    return rc;
}

static int cmd_predict(options *o) {
    int rc = 1;
    tg_ctx *ctx = tg_ctx_new(1);
    if (!ctx) return report(NULL);
    if (o->threads) tg_set_threads(ctx, (int)o->threads);
    model md;
    tg_dataset *ds = NULL;
    if (model_load(ctx, o->model, &md)) goto fail;
    ds = load_for_model(ctx, o, &md, 0);
    if (!ds) goto fail;
    int64_t classes = md.widths[md.n_widths - 1];
    int prev = tg_no_grad(ctx, 1);
    for (int64_t s = 0; s < ds->n && tg_ok(ctx); s += EVAL_BATCH) {
        int64_t m = ds->n - s < EVAL_BATCH ? ds->n - s : EVAL_BATCH;
        tg_tensor *x = tg_from(ctx, TG_F32, 2, (const int64_t[]){m, ds->n_features},
                               ds->x + s * ds->n_features);
        tg_tensor *logits = tg_mlp_forward(ctx, &md.mlp, x);
        if (o->proba) logits = tg_softmax(ctx, logits);
        if (!logits) break;
        const float *z = tg_data(logits);
        for (int64_t i = 0; o->proba && i < m; i++)
            for (int64_t c = 0; c < classes; c++)
                printf("%.9g%c", (double)z[i * classes + c], c + 1 < classes ? ',' : '\n');
        for (int64_t i = 0; !o->proba && i < m; i++) {
            int64_t best = 0; /* argmax, the first on ties */
            for (int64_t c = 1; c < classes; c++)
                if (z[i * classes + c] > z[i * classes + best]) best = c;
            printf("%lld\n", (long long)best);
        }
        tg_reset(ctx);
    }
    tg_no_grad(ctx, prev);
    if (!tg_ok(ctx)) goto fail;
    rc = 0;
    goto done;
fail:
    rc = report(ctx);
done:
    if (fflush(stdout) != 0 && rc == 0) {
        fprintf(stderr, PROG ": error writing the predictions: %s\n", strerror(errno));
        rc = 1;
    }
    model_free(&md);
    tg_dataset_free(ds);
    tg_ctx_free(ctx);
    return rc;
}

int main(int argc, char **argv) {
    if (argc < 2) {
        fputs(PROG ": a command is needed (train, eval or predict)\n", stderr);
        fputs(USAGE, stderr);
        return 2;
    }
    const char *c = argv[1];
    if (!strcmp(c, "--help") || !strcmp(c, "-h") || !strcmp(c, "help")) {
        fputs(USAGE, stdout);
        return 0;
    }
    options o = {.layers = "128", .act = TG_ACT_RELU, .act_name = "relu", .epochs = 5,
                 .batch = 64, .seed = 1, .opt_name = "adam", .test_fraction = 0.2,
                 .out = "model.safetensors"};
    if (!strcmp(c, "train")) o.cmd = CMD_TRAIN;
    else if (!strcmp(c, "eval")) o.cmd = CMD_EVAL;
    else if (!strcmp(c, "predict")) o.cmd = CMD_PREDICT;
    else return usage_error("unknown command '%s' (train, eval or predict)", c);
    int r = parse_options(argc, argv, &o);
    if (r == 1) return 0; /* --help */
    if (r) return r;
    switch (o.cmd) {
    case CMD_TRAIN: return cmd_train(&o);
    case CMD_EVAL: return cmd_eval(&o);
    default: return cmd_predict(&o);
    }
}
