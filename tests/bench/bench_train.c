/* SPDX-License-Identifier: MIT */
/* bench_train.c: tapegrad on training workloads, the C half of the comparison
 * with PyTorch (tests/bench/torch_bench.py runs the same workloads with the same
 * hyper-parameters; script/bench runs both and prints the ratios).
 *
 *   bench_train [--quick] [--only LIST] [--json PATH]
 *       LIST: comma-separated among overhead, xor, mlp64, mlp1024 (default: all)
 *   bench_train --fashion [--quick] [--epochs N] [--threads N] [--data DIR]
 *               [--independent] [--json PATH]
 *   bench_train --profile xor|mlp64|mlp1024 [--steps N] [--threads N]
 *       only N steps of one workload (after a warm-up), for perf or callgrind
 *
 * Workloads (docs/performance.md has the full method):
 *   overhead  ns per recorded tg_add on [4] tensors (record + forward), per node
 *             of backward, per forward op without recording, per tg_from, per
 *             tg_reset.
 *   xor       2-4-1 MLP (tanh, then sigmoid as the MLP's out_act), MSE, full batch
 *             of 4, SGD lr 0.1:
 *             microseconds per step (build x and y, forward, zero_grad, backward,
 *             update, tg_reset), 1 thread; then the step split into phases.
 *   mlp64     784-64-10 ReLU, batch 64, cross-entropy, RMSprop lr 1e-3, synthetic
 *             data of Fashion-MNIST's shape; 1 and 2 threads.
 *   mlp1024   784-1024-1024-10 ReLU, batch 256, cross-entropy, SGD lr 0.01; 1 and 2
 *             threads.
 *   --fashion Fashion-MNIST, 784-128-10 ReLU, Adam lr 1e-3, batch 64, shuffled,
 *             seed 1, 5 epochs (1 with --quick): seconds per epoch, test accuracy
 *             after every epoch. Run it alone under /usr/bin/time -v for peak RSS.
 *             By default the initial weights and every epoch's sample order are
 *             the ones torch_bench.py uses (computed from the same splitmix64
 *             streams), so the two runs differ only by floating-point rounding;
 *             --independent uses tg_mlp_init's weights and tg_batcher's shuffle.
 *
 * Timing: clock_gettime(CLOCK_MONOTONIC), warm-up first, then the median (and the
 * spread) of several repeats; the thread's CPU time too (the steadier figure for
 * one-thread runs on a busy machine). Every context uses a counting allocator
 * (tg_ctx_new_with_alloc), and malloc/calloc/realloc/memalign are counted process
 * wide (glibc, all threads), so each workload also reports how many heap
 * allocations its warm, timed steps made (the design says: none).
 *
 * The human-readable table goes to stdout; --json PATH writes one JSON object per
 * line ({"side":"tapegrad","key":...,"value":...}) for script/bench.
 */
#include "bench_util.h"

#include <errno.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>

#include "tapegrad.h"

#ifndef TG_SOURCE_DIR
#define TG_SOURCE_DIR "."
#endif

#define FASHION_DIR "/usr/share/datasets/fashion-mnist"

/* ---- process-wide heap allocation counter (glibc) -----------------------
 * The executable's malloc & co. interpose the C library's for every shared
 * library too (libgomp, OpenBLAS); they count and forward to glibc's own
 * entry points. free is not interposed: everything still comes from glibc's
 * allocator. Off under AddressSanitizer, which has its own interposers. */
#if defined(__GLIBC__) && !defined(__SANITIZE_ADDRESS__) && !defined(TG_BENCH_NO_MALLOC_COUNT)
#define HAVE_MALLOC_COUNT 1
extern void *__libc_malloc(size_t n);
extern void *__libc_calloc(size_t n, size_t size);
extern void *__libc_realloc(void *p, size_t n);
extern void *__libc_memalign(size_t align, size_t n);
void *memalign(size_t align, size_t n);
void *aligned_alloc(size_t align, size_t n);
int posix_memalign(void **out, size_t align, size_t n);

static uint64_t g_heap_calls;
static void heap_count(void) { __atomic_fetch_add(&g_heap_calls, 1, __ATOMIC_RELAXED); }

void *malloc(size_t n) { heap_count(); return __libc_malloc(n); }
void *calloc(size_t n, size_t size) { heap_count(); return __libc_calloc(n, size); }
void *realloc(void *p, size_t n) { heap_count(); return __libc_realloc(p, n); }
void *memalign(size_t align, size_t n) { heap_count(); return __libc_memalign(align, n); }
void *aligned_alloc(size_t align, size_t n) { heap_count(); return __libc_memalign(align, n); }
int posix_memalign(void **out, size_t align, size_t n)
{
    if (align < sizeof(void *) || (align & (align - 1)) != 0) return EINVAL;
    heap_count();
    void *p = __libc_memalign(align, n);
    if (!p) return ENOMEM;
    *out = p;
    return 0;
}
static uint64_t heap_calls(void) { return __atomic_load_n(&g_heap_calls, __ATOMIC_RELAXED); }
#else
#define HAVE_MALLOC_COUNT 0
static uint64_t heap_calls(void) { return 0; }
#endif

/* ---- the counting allocator given to every context ---------------------- */

typedef struct {
    uint64_t calls; /* allocations + reallocations (frees not counted) */
    uint64_t frees;
} alloc_count;

static void *count_alloc(void *ud, void *ptr, size_t osize, size_t nsize)
{
    alloc_count *c = ud;
    (void)osize;
    if (nsize == 0) {
        if (ptr) c->frees++;
        free(ptr);
        return NULL;
    }
    c->calls++;
    return realloc(ptr, nsize);
}

/* ---- timing: wall_now, cpu_now (bench_util.h) ---------------------------- */

#define MAX_REPS 32

/* Seconds per step: median and spread over repeats. */
typedef struct {
    double med, min, max;
    double cpu_med;         /* median thread CPU seconds per step */
    int reps;
    int64_t steps;          /* steps per repeat */
    uint64_t ctx_allocs;    /* context allocator calls during the timed repeats */
    uint64_t heap_allocs;   /* process-wide malloc & co. during the timed repeats */
} timing;

static double median_of(double *v, int n)
{
    sort_doubles(v, (size_t)n);
    return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

/* A workload: run n steps, return the seconds they took. */
typedef double (*run_fn)(void *state, int64_t n);

/* Warm up (at least warm_s seconds and 3 steps), then `reps` repeats of `steps`
 * steps (steps 0: as many as fill target_s, within [min_steps, max_steps]). */
static timing measure(run_fn f, void *st, const alloc_count *ac, int64_t steps, double target_s,
                      int reps, int64_t min_steps, int64_t max_steps, double warm_s)
{
    timing r = {0};
    double spent = 0, last = 0;
    int64_t n = 1, last_n = 1, warm_steps = 0;
    while (spent < warm_s || warm_steps < 3) {
        last = f(st, n);
        last_n = n;
        spent += last;
        warm_steps += n;
        if (n < (1 << 20)) n *= 2;
    }
    if (steps <= 0) {
        double per = last / (double)last_n;
        steps = per > 0 ? (int64_t)ceil(target_s / per) : max_steps;
        if (steps < min_steps) steps = min_steps;
        if (steps > max_steps) steps = max_steps;
    }
    if (reps > MAX_REPS) reps = MAX_REPS;
    double v[MAX_REPS], cpu[MAX_REPS];
    uint64_t c0 = ac->calls, h0 = heap_calls();
    for (int i = 0; i < reps; i++) {
        double c = cpu_now();
        v[i] = f(st, steps) / (double)steps;
        cpu[i] = (cpu_now() - c) / (double)steps;
    }
    r.ctx_allocs = ac->calls - c0;
    r.heap_allocs = heap_calls() - h0;
    r.cpu_med = median_of(cpu, reps);
    r.med = median_of(v, reps);
    r.min = v[0];
    r.max = v[reps - 1];
    r.reps = reps;
    r.steps = steps;
    return r;
}

/* ---- output: JSON lines for script/bench ----------------------------------- */

static FILE *g_json;

static void emit(const char *key, double value, const char *unit, const timing *t)
{
    if (!g_json) return;
    fprintf(g_json, "{\"side\": \"tapegrad\", \"key\": \"%s\", \"value\": %.9g, \"unit\": \"%s\"",
            key, value, unit);
    if (t) {
        double scale = value / (t->med > 0 ? t->med : 1); /* same unit as value */
        fprintf(g_json,
                ", \"min\": %.9g, \"max\": %.9g, \"cpu\": %.9g, \"reps\": %d, \"steps\": %lld",
                t->min * scale, t->max * scale, t->cpu_med * scale, t->reps, (long long)t->steps);
    }
    fprintf(g_json, "}\n");
    fflush(g_json);
}

static void emit_str(const char *key, const char *value)
{
    if (!g_json) return;
    fprintf(g_json, "{\"side\": \"tapegrad\", \"key\": \"%s\", \"value\": \"%s\"}\n", key, value);
    fflush(g_json);
}

static void die(tg_ctx *ctx, const char *what)
{
    fprintf(stderr, "bench_train: %s: %s\n", what, ctx ? tg_errmsg(ctx) : "out of memory");
    exit(1);
}

static double load_average(void)
{
    double l = -1;
    FILE *f = fopen("/proc/loadavg", "r");
    if (f) {
        if (fscanf(f, "%lf", &l) != 1) l = -1;
        fclose(f);
    }
    return l;
}

static double peak_rss_mb(void)
{
    struct rusage u;
    if (getrusage(RUSAGE_SELF, &u) != 0) return -1;
    return (double)u.ru_maxrss / 1024.0; /* Linux: kilobytes */
}

/* ---- a small deterministic generator for synthetic data and shared init ----
 * splitmix64: the i-th value (i = 1, 2, ...) of stream `seed` is
 * mix(seed + i * 0x9e3779b97f4a7c15). torch_bench.py computes the same numbers
 * with NumPy, so both sides can start from identical weights. */
static uint64_t mix64(uint64_t z)
{
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}

static double stream_uniform(uint64_t seed, uint64_t i) /* [0,1) */
{
    return (double)(mix64(seed + (i + 1) * 0x9e3779b97f4a7c15ULL) >> 11) * 0x1.0p-53;
}

/* w [in,out] (tapegrad's layout) from U(-a, a), a = sqrt(6 / in): He uniform, as
 * tg_mlp_init draws for ReLU; value k (row-major) from stream `seed`. */
static void shared_init(tg_tensor *w, uint64_t seed)
{
    float *p = tg_data(w);
    int64_t in = tg_dim(w, 0), n = tg_numel(w);
    double a = sqrt(6.0 / (double)in);
    for (int64_t k = 0; k < n; k++)
        p[k] = (float)((2.0 * stream_uniform(seed, (uint64_t)k) - 1.0) * a);
}

/* The sample order of an epoch, shared with torch_bench.py: the indices sorted by
 * key stream_uniform(seed, i), ties by index (NumPy's stable argsort). */
typedef struct { double key; int64_t i; } keyed;

static int cmp_keyed(const void *a, const void *b)
{
    const keyed *x = a, *y = b;
    if (x->key != y->key) return x->key < y->key ? -1 : 1;
    return (x->i > y->i) - (x->i < y->i);
}

static void shared_order(int64_t *order, int64_t n, uint64_t seed)
{
    keyed *k = malloc((size_t)n * sizeof *k);
    if (!k) die(NULL, "shared_order");
    for (int64_t i = 0; i < n; i++) k[i] = (keyed){stream_uniform(seed, (uint64_t)i), i};
    qsort(k, (size_t)n, sizeof *k, cmp_keyed);
    for (int64_t i = 0; i < n; i++) order[i] = k[i].i;
    free(k);
}

/* A pool of synthetic samples: x in [0,1), labels in [0,10). */
typedef struct {
    int64_t n, features;
    float *x;
    int32_t *y;
} pool;

static pool pool_make(int64_t n, int64_t features, uint64_t seed)
{
    pool p = {n, features, malloc((size_t)(n * features) * sizeof(float)),
              malloc((size_t)n * sizeof(int32_t))};
    if (!p.x || !p.y) die(NULL, "synthetic data");
    for (int64_t i = 0; i < n * features; i++) p.x[i] = (float)stream_uniform(seed, (uint64_t)i);
    for (int64_t i = 0; i < n; i++)
        p.y[i] = (int32_t)(stream_uniform(seed + 1, (uint64_t)i) * 10.0);
    return p;
}

static void pool_free(pool *p)
{
    free(p->x);
    free(p->y);
}

/* ---- the table printed to stdout ------------------------------------------- */

static void fmt_us(char *buf, size_t size, double us)
{
    if (us < 100)
        snprintf(buf, size, "%.3f us", us);
    else if (us < 100000)
        snprintf(buf, size, "%.1f us", us);
    else
        snprintf(buf, size, "%.1f ms", us / 1000);
}

static void row_header(void)
{
    printf("%-44s %7s %12s %12s %12s %22s %s\n", "workload", "threads", "per step", "CPU/step",
           "samples/s", "spread (min..max)", "heap allocs (ctx / process) in timed steps");
}

static void row(const char *name, int threads, const timing *t, int64_t batch)
{
    char per[32], cpu[32], sps[32], spread[48];
    fmt_us(per, sizeof per, t->med * 1e6);
    fmt_us(cpu, sizeof cpu, t->cpu_med * 1e6);
    if (batch > 0)
        snprintf(sps, sizeof sps, "%.0f", (double)batch / t->med);
    else
        snprintf(sps, sizeof sps, "-");
    snprintf(spread, sizeof spread, "%.3g..%.3g us", t->min * 1e6, t->max * 1e6);
    printf("%-44s %7d %12s %12s %12s %22s %llu / %llu   (%d x %lld steps)\n", name, threads, per,
           threads == 1 ? cpu : "-", sps, spread, (unsigned long long)t->ctx_allocs, (unsigned long long)t->heap_allocs, t->reps,
           (long long)t->steps);
    fflush(stdout);
}

/* ==== workload: engine overhead =========================================== */

typedef struct {
    tg_ctx *ctx;
    tg_tensor *a, *b;
    int k; /* ops per chain */
} chain_state;

static void bench_overhead(int quick)
{
    alloc_count ac = {0};
    tg_ctx *ctx = tg_ctx_new_with_alloc(1, count_alloc, &ac);
    if (!ctx) die(NULL, "tg_ctx_new_with_alloc");
    tg_set_threads(ctx, 1);
    const int64_t shape[1] = {4};
    tg_tensor *a = tg_param(ctx, "a", TG_F32, 1, shape);
    tg_tensor *b = tg_param(ctx, "b", TG_F32, 1, shape);
    tg_fill(a, 0.5);
    tg_fill(b, 0.25);
    const float v4[4] = {1, 2, 3, 4};
    const int K = 1000, reps = quick ? 21 : 101, warm = 5;
    double rec[101], bwd[101], nog[101], from[101], rst[101];
    uint64_t c0 = 0, h0 = 0;
    for (int r = 0; r < warm + reps; r++) {
        if (r == warm) {
            c0 = ac.calls;
            h0 = heap_calls();
        }
        /* record + forward: a chain of K adds, every output requires a grad */
        double t0 = wall_now();
        tg_tensor *t = a;
        for (int i = 0; i < K; i++) t = tg_add(ctx, t, b);
        double t1 = wall_now();
        tg_tensor *loss = tg_sum(ctx, t);
        double t2 = wall_now();
        tg_backward(ctx, loss); /* K + 1 nodes */
        double t3 = wall_now();
        tg_reset(ctx);
        double t4 = wall_now();
        /* the same ops with recording off (inference) */
        int prev = tg_no_grad(ctx, 1);
        double t5 = wall_now();
        t = a;
        for (int i = 0; i < K; i++) t = tg_add(ctx, t, b);
        double t6 = wall_now();
        tg_no_grad(ctx, prev);
        tg_reset(ctx);
        /* building an input: tg_from of 4 floats */
        double t7 = wall_now();
        for (int i = 0; i < K; i++) t = tg_from(ctx, TG_F32, 1, shape, v4);
        double t8 = wall_now();
        tg_reset(ctx);
        if (!tg_ok(ctx)) die(ctx, "overhead");
        if (r >= warm) {
            int i = r - warm;
            rec[i] = (t1 - t0) / K * 1e9;
            bwd[i] = (t3 - t2) / (K + 1) * 1e9;
            rst[i] = (t4 - t3) * 1e9;
            nog[i] = (t6 - t5) / K * 1e9;
            from[i] = (t8 - t7) / K * 1e9;
        }
    }
    uint64_t ctx_allocs = ac.calls - c0, heap = heap_calls() - h0;
    double m_rec = median_of(rec, reps), m_bwd = median_of(bwd, reps), m_rst = median_of(rst, reps);
    double m_nog = median_of(nog, reps), m_from = median_of(from, reps);
    printf("engine overhead (1 thread, f32, median of %d chains of %d ops):\n", reps, K);
    printf("  tg_add [4]+[4], recorded (checks, output, node, forward)  %8.1f ns/op\n", m_rec);
    printf("  backward of that chain, per node (incl. grad zero/alloc)  %8.1f ns/node\n", m_bwd);
    printf("  tg_add [4]+[4] under tg_no_grad (forward only)            %8.1f ns/op\n", m_nog);
    printf("  tg_from of 4 floats                                       %8.1f ns\n", m_from);
    printf("  tg_reset after %d nodes                                 %8.1f ns\n", K + 1, m_rst);
    printf("  heap allocations in the timed chains: ctx allocator %llu, process %llu\n\n",
           (unsigned long long)ctx_allocs, (unsigned long long)heap);
    emit("overhead.add_record_ns", m_rec, "ns", NULL);
    emit("overhead.backward_ns_per_node", m_bwd, "ns", NULL);
    emit("overhead.add_nograd_ns", m_nog, "ns", NULL);
    emit("overhead.from_ns", m_from, "ns", NULL);
    emit("overhead.reset_ns", m_rst, "ns", NULL);
    emit("overhead.ctx_allocs", (double)ctx_allocs, "count", NULL);
    emit("overhead.heap_allocs", (double)heap, "count", NULL);
    tg_ctx_free(ctx);
}

/* ==== workload: XOR 2-4-1 ================================================== */

enum { XOR_FULL, XOR_FORWARD, XOR_FWD_BWD, XOR_NOGRAD, XOR_INPUTS };

typedef struct {
    tg_ctx *ctx;
    tg_mlp mlp;
    tg_optim *opt;
    int phase;
} xor_state;

static const float xor_x[8] = {0, 0, 0, 1, 1, 0, 1, 1};
static const float xor_y[4] = {0, 1, 1, 0};
static const int64_t xor_xshape[2] = {4, 2}, xor_yshape[2] = {4, 1};

static double xor_run(void *p, int64_t n)
{
    xor_state *s = p;
    tg_ctx *ctx = s->ctx;
    double t0 = wall_now();
    switch (s->phase) {
    case XOR_FULL:
        for (int64_t i = 0; i < n; i++) {
            tg_tensor *x = tg_from(ctx, TG_F32, 2, xor_xshape, xor_x);
            tg_tensor *y = tg_from(ctx, TG_F32, 2, xor_yshape, xor_y);
            tg_tensor *loss = tg_mse(ctx, tg_mlp_forward(ctx, &s->mlp, x), y);
            tg_zero_grad(ctx);
            tg_backward(ctx, loss);
            tg_optim_step(s->opt);
            tg_reset(ctx);
        }
        break;
    case XOR_FWD_BWD: /* no zero_grad, no update */
        for (int64_t i = 0; i < n; i++) {
            tg_tensor *x = tg_from(ctx, TG_F32, 2, xor_xshape, xor_x);
            tg_tensor *y = tg_from(ctx, TG_F32, 2, xor_yshape, xor_y);
            tg_backward(ctx, tg_mse(ctx, tg_mlp_forward(ctx, &s->mlp, x), y));
            tg_reset(ctx);
        }
        break;
    case XOR_FORWARD: /* recorded forward only */
    case XOR_NOGRAD:  /* forward with recording off */
        for (int64_t i = 0; i < n; i++) {
            tg_tensor *x = tg_from(ctx, TG_F32, 2, xor_xshape, xor_x);
            tg_tensor *y = tg_from(ctx, TG_F32, 2, xor_yshape, xor_y);
            tg_mse(ctx, tg_mlp_forward(ctx, &s->mlp, x), y);
            tg_reset(ctx);
        }
        break;
    case XOR_INPUTS: /* only the two tg_from and the reset */
        for (int64_t i = 0; i < n; i++) {
            tg_from(ctx, TG_F32, 2, xor_xshape, xor_x);
            tg_from(ctx, TG_F32, 2, xor_yshape, xor_y);
            tg_reset(ctx);
        }
        break;
    }
    double t = wall_now() - t0;
    if (!tg_ok(ctx)) die(ctx, "xor");
    return t;
}

static double xor_loss(xor_state *s, int64_t *tape_len)
{
    tg_ctx *ctx = s->ctx;
    tg_tensor *x = tg_from(ctx, TG_F32, 2, xor_xshape, xor_x);
    tg_tensor *y = tg_from(ctx, TG_F32, 2, xor_yshape, xor_y);
    double l = tg_item(tg_mse(ctx, tg_mlp_forward(ctx, &s->mlp, x), y));
    if (tape_len) *tape_len = tg_tape_len(ctx);
    tg_reset(ctx);
    return l;
}

/* The XOR network on ctx (made by `made_by`, NULL if that failed): one thread, the
 * 2-4-1 tanh MLP with a sigmoid after its last layer (out_act: the layer's node
 * applies it, as nn.Sequential(Linear, Tanh, Linear, Sigmoid)), SGD lr 0.1, phase
 * XOR_FULL. */
static xor_state xor_setup(tg_ctx *ctx, const char *made_by)
{
    if (!ctx) die(NULL, made_by);
    xor_state s = {.ctx = ctx, .phase = XOR_FULL};
    tg_set_threads(ctx, 1);
    tg_mlp_init(ctx, &s.mlp, "fc", 3, (const int64_t[]){2, 4, 1}, TG_ACT_TANH, TG_F32);
    s.mlp.out_act = TG_ACT_SIGMOID;
    tg_optim_opts o = tg_optim_defaults(TG_OPT_SGD);
    o.lr = 0.1;
    s.opt = tg_optim_new(ctx, &o, NULL, 0);
    if (!tg_ok(ctx)) die(ctx, "xor setup");
    return s;
}

/* --profile xor: only n full XOR steps after 1000 warm ones, nothing else, for
 * perf record / valgrind --tool=callgrind. */
static void profile_xor(int64_t n)
{
    xor_state s = xor_setup(tg_ctx_new(1), "tg_ctx_new");
    xor_run(&s, 1000);
    double t = xor_run(&s, n);
    printf("%lld XOR steps: %.3f us/step\n", (long long)n, t / (double)n * 1e6);
    tg_optim_free(s.opt);
    tg_ctx_free(s.ctx);
}

static void bench_xor(int quick)
{
    alloc_count ac = {0};
    xor_state s = xor_setup(tg_ctx_new_with_alloc(1, count_alloc, &ac), "tg_ctx_new_with_alloc");
    int64_t nodes = 0;
    double loss0 = xor_loss(&s, &nodes);

    const int64_t steps = quick ? 20000 : 100000;
    const int reps = quick ? 5 : 9;
    s.phase = XOR_FULL;
    timing t = measure(xor_run, &s, &ac, steps, 0, reps, 0, 0, 0.05);
    double loss1 = xor_loss(&s, NULL);
    row("XOR 2-4-1, batch 4, MSE, SGD (full step)", 1, &t, 0);
    emit("xor.us_per_step", t.med * 1e6, "us", &t);
    emit("xor.ctx_allocs", (double)t.ctx_allocs, "count", NULL);
    emit("xor.heap_allocs", (double)t.heap_allocs, "count", NULL);
    emit("xor.loss_first", loss0, "", NULL);
    emit("xor.loss_last", loss1, "", NULL);

    /* where the time of a step goes: the same loop with parts left out */
    static const struct { int phase; const char *name, *key; } parts[] = {
        {XOR_INPUTS, "  2 x tg_from + tg_reset", "xor.phase_inputs_us"},
        {XOR_NOGRAD, "  + forward under tg_no_grad", "xor.phase_nograd_us"},
        {XOR_FORWARD, "  + forward recorded", "xor.phase_forward_us"},
        {XOR_FWD_BWD, "  + backward", "xor.phase_fwd_bwd_us"},
    };
    double phase_us[4];
    for (int i = 0; i < 4; i++) {
        s.phase = parts[i].phase;
        int prev = tg_no_grad(s.ctx, parts[i].phase == XOR_NOGRAD);
        timing tp = measure(xor_run, &s, &ac, steps, 0, quick ? 3 : 5, 0, 0, 0.02);
        tg_no_grad(s.ctx, prev);
        phase_us[i] = tp.med * 1e6;
        emit(parts[i].key, phase_us[i], "us", &tp);
    }
    printf("  where an XOR step's %.3f us go (each line: a loop doing only that much):\n",
           t.med * 1e6);
    for (int i = 0; i < 4; i++)
        printf("    %-34s %8.3f us  (+%.3f)\n", parts[i].name, phase_us[i],
               phase_us[i] - (i ? phase_us[i - 1] : 0));
    printf("    %-34s %8.3f us  (+%.3f)\n", "  + zero_grad + SGD update", t.med * 1e6,
           t.med * 1e6 - phase_us[3]);
    printf("  loss %.4f before, %.4f after the timed steps; tape %lld nodes per step\n",
           loss0, loss1, (long long)nodes);
    tg_optim_free(s.opt);
    tg_ctx_free(s.ctx);
}

/* ==== workloads: MLPs on synthetic data ===================================== */

typedef struct {
    tg_ctx *ctx;
    tg_mlp mlp;
    tg_optim *opt;
    const pool *data;
    int64_t batch, pos;
    double last_loss;
} mlp_state;

static double mlp_run(void *p, int64_t n)
{
    mlp_state *s = p;
    tg_ctx *ctx = s->ctx;
    const int64_t f = s->data->features;
    const int64_t xshape[2] = {s->batch, f}, yshape[1] = {s->batch};
    tg_tensor *loss = NULL;
    double t0 = wall_now();
    for (int64_t i = 0; i < n; i++) {
        tg_tensor *x = tg_wrap(ctx, TG_F32, 2, xshape, s->data->x + s->pos * f);
        tg_tensor *y = tg_wrap(ctx, TG_I32, 1, yshape, s->data->y + s->pos);
        loss = tg_cross_entropy(ctx, tg_mlp_forward(ctx, &s->mlp, x), y);
        tg_zero_grad(ctx);
        tg_backward(ctx, loss);
        tg_optim_step(s->opt);
        if (i == n - 1) s->last_loss = tg_item(loss);
        tg_reset(ctx);
        s->pos += s->batch;
        if (s->pos + s->batch > s->data->n) s->pos = 0;
    }
    double t = wall_now() - t0;
    if (!tg_ok(ctx)) die(ctx, "mlp");
    return t;
}

/* --profile mlp64|mlp1024: only n steps (after 5 warm ones) with `threads`. */
static void profile_mlp(int big, int64_t n, int threads)
{
    pool data = pool_make(4096, 784, 42);
    mlp_state s = {0};
    s.ctx = tg_ctx_new(1);
    if (!s.ctx) die(NULL, "tg_ctx_new");
    tg_set_threads(s.ctx, threads);
    if (big)
        tg_mlp_init(s.ctx, &s.mlp, "fc", 4, (const int64_t[]){784, 1024, 1024, 10}, TG_ACT_RELU,
                    TG_F32);
    else
        tg_mlp_init(s.ctx, &s.mlp, "fc", 3, (const int64_t[]){784, 64, 10}, TG_ACT_RELU, TG_F32);
    tg_optim_opts o = tg_optim_defaults(big ? TG_OPT_SGD : TG_OPT_RMSPROP);
    o.lr = big ? 0.01 : 1e-3;
    s.opt = tg_optim_new(s.ctx, &o, NULL, 0);
    if (!tg_ok(s.ctx)) die(s.ctx, "mlp setup");
    s.data = &data;
    s.batch = big ? 256 : 64;
    mlp_run(&s, 5);
    double t = mlp_run(&s, n);
    printf("%lld %s steps, %d thread(s): %.1f us/step\n", (long long)n, big ? "mlp1024" : "mlp64",
           threads, t / (double)n * 1e6);
    tg_optim_free(s.opt);
    tg_ctx_free(s.ctx);
    pool_free(&data);
}

static void bench_mlp(const char *key, const char *name, int n_widths, const int64_t *widths,
                      int64_t batch, tg_opt_kind kind, double lr, int quick, const pool *data,
                      double t1_med[2])
{
    for (int threads = 1; threads <= 2; threads++) {
        alloc_count ac = {0};
        mlp_state s = {0};
        s.ctx = tg_ctx_new_with_alloc(1, count_alloc, &ac);
        if (!s.ctx) die(NULL, "tg_ctx_new_with_alloc");
        tg_set_threads(s.ctx, threads);
        tg_mlp_init(s.ctx, &s.mlp, "fc", n_widths, widths, TG_ACT_RELU, TG_F32);
        tg_optim_opts o = tg_optim_defaults(kind);
        o.lr = lr;
        s.opt = tg_optim_new(s.ctx, &o, NULL, 0);
        if (!tg_ok(s.ctx)) die(s.ctx, key);
        s.data = data;
        s.batch = batch;
        timing t = measure(mlp_run, &s, &ac, 0, quick ? 0.15 : 0.4, quick ? 3 : 5, 3, 100000,
                           quick ? 0.1 : 0.3);
        char label[96], k[96];
        snprintf(label, sizeof label, "%s", name);
        row(label, threads, &t, batch);
        snprintf(k, sizeof k, "%s.t%d.us_per_step", key, threads);
        emit(k, t.med * 1e6, "us", &t);
        snprintf(k, sizeof k, "%s.t%d.samples_per_s", key, threads);
        emit(k, (double)batch / t.med, "samples/s", NULL);
        snprintf(k, sizeof k, "%s.t%d.ctx_allocs", key, threads);
        emit(k, (double)t.ctx_allocs, "count", NULL);
        snprintf(k, sizeof k, "%s.t%d.heap_allocs", key, threads);
        emit(k, (double)t.heap_allocs, "count", NULL);
        snprintf(k, sizeof k, "%s.t%d.loss_last", key, threads);
        emit(k, s.last_loss, "", NULL);
        t1_med[threads - 1] = t.med;
        tg_optim_free(s.opt);
        tg_ctx_free(s.ctx);
    }
}

/* ==== Fashion-MNIST ========================================================= */

static int run_fashion(const char *dir, int epochs, int threads, int shared)
{
    alloc_count ac = {0};
    double t_start = wall_now();
    tg_ctx *ctx = tg_ctx_new_with_alloc(1, count_alloc, &ac);
    if (!ctx) die(NULL, "tg_ctx_new_with_alloc");
    tg_set_threads(ctx, threads);
    tg_dataset *train = tg_load_idx_dir(ctx, dir, "train");
    tg_dataset *test = tg_load_idx_dir(ctx, dir, "test");
    if (!tg_ok(ctx)) die(ctx, "loading Fashion-MNIST");
    double t_loaded = wall_now();

    tg_mlp mlp;
    tg_mlp_init(ctx, &mlp, "fc", 3, (const int64_t[]){784, 128, 10}, TG_ACT_RELU, TG_F32);
    if (shared) { /* the same starting weights as torch_bench.py; biases stay 0 */
        shared_init(mlp.layer[0].weight, 1001);
        shared_init(mlp.layer[1].weight, 1002);
    }
    tg_optim_opts o = tg_optim_defaults(TG_OPT_ADAM);
    o.lr = 1e-3;
    tg_optim *opt = tg_optim_new(ctx, &o, NULL, 0);
    tg_batcher tb, eb;
    tg_batcher_init(&tb, ctx, train, 64, TG_BATCH_SHUFFLE);
    tg_batcher_init(&eb, ctx, test, 1000, 0);
    if (!tg_ok(ctx)) die(ctx, "fashion setup");
    if (epochs > 64) epochs = 64;
    /* shared: every epoch's order computed up front (outside the timing, as in
     * torch_bench.py); batches then come from tg_dataset_batch in that order */
    int64_t *orders = NULL;
    if (shared) {
        orders = malloc((size_t)(epochs * train->n) * sizeof *orders);
        if (!orders) die(NULL, "orders");
        for (int e = 0; e < epochs; e++)
            shared_order(orders + e * train->n, train->n, 2001 + (uint64_t)e);
    }

    printf("Fashion-MNIST, MLP 784-128-10 ReLU, Adam lr 1e-3, batch 64, shuffled, seed 1, "
           "%d thread%s, %s\n",
           threads, threads == 1 ? "" : "s",
           shared ? "initial weights and sample order shared with PyTorch (tg_dataset_batch)"
                  : "tg_mlp_init's weights, tg_batcher's shuffle");
    printf("  loaded %lld train + %lld test samples in %.2f s\n", (long long)train->n,
           (long long)test->n, t_loaded - t_start);
    printf("  %5s %10s %10s %10s %10s\n", "epoch", "train s", "loss", "test acc", "eval s");
    emit("fashion.load_s", t_loaded - t_start, "s", NULL);
    emit("fashion.threads", threads, "", NULL);

    double ep_s[64], ep_cpu[64], acc = 0;
    uint64_t c_after1 = 0, h_after1 = 0;
    for (int e = 0; e < epochs; e++) {
        if (e == 1) {
            c_after1 = ac.calls;
            h_after1 = heap_calls();
        }
        double lsum = 0;
        int64_t lcount = 0;
        tg_tensor *x, *y;
        const int64_t *order = orders ? orders + e * train->n : NULL;
        int64_t pos = 0;
        double c0 = cpu_now();
        double t0 = wall_now();
        while (order ? pos < train->n : tg_batcher_next(&tb, &x, &y) == 1) {
            if (order) {
                int64_t m = train->n - pos < 64 ? train->n - pos : 64;
                if (tg_dataset_batch(ctx, train, order + pos, m, TG_F32, &x, &y) != 0) break;
                pos += m;
            }
            tg_tensor *loss = tg_cross_entropy(ctx, tg_mlp_forward(ctx, &mlp, x), y);
            tg_zero_grad(ctx);
            tg_backward(ctx, loss);
            tg_optim_step(opt);
            lsum += tg_item(loss) * (double)tg_dim(x, 0);
            lcount += tg_dim(x, 0);
            tg_reset(ctx);
        }
        double t1 = wall_now();
        ep_cpu[e] = cpu_now() - c0;
        if (!tg_ok(ctx)) die(ctx, "fashion training");
        /* test accuracy, batches of 1000, recording off */
        int prev = tg_no_grad(ctx, 1);
        double correct = 0;
        int64_t seen = 0;
        while (tg_batcher_next(&eb, &x, &y) == 1) {
            double a = tg_accuracy(tg_mlp_forward(ctx, &mlp, x), y);
            correct += a * (double)tg_dim(x, 0);
            seen += tg_dim(x, 0);
            tg_reset(ctx);
        }
        tg_no_grad(ctx, prev);
        double t2 = wall_now();
        if (!tg_ok(ctx) || seen == 0) die(ctx, "fashion evaluation");
        acc = correct / (double)seen;
        ep_s[e] = t1 - t0;
        printf("  %5d %10.3f %10.4f %9.2f%% %10.3f\n", e + 1, t1 - t0, lsum / (double)lcount,
               100 * acc, t2 - t1);
        fflush(stdout);
        char k[64];
        snprintf(k, sizeof k, "fashion.epoch%d.train_s", e + 1);
        emit(k, t1 - t0, "s", NULL);
        snprintf(k, sizeof k, "fashion.epoch%d.test_acc", e + 1);
        emit(k, 100 * acc, "%", NULL);
        snprintf(k, sizeof k, "fashion.epoch%d.loss", e + 1);
        emit(k, lsum / (double)lcount, "", NULL);
        snprintf(k, sizeof k, "fashion.epoch%d.eval_s", e + 1);
        emit(k, t2 - t1, "s", NULL);
    }
    double med = median_of(ep_s, epochs), cpu_med = median_of(ep_cpu, epochs);
    tg_mem_stats ms;
    tg_mem_stats_get(ctx, &ms);
    printf("  median %.3f s/epoch (%.0f samples/s; thread CPU time %.3f s/epoch); final test "
           "accuracy %.2f%%\n",
           med, (double)train->n / med, cpu_med, 100 * acc);
    if (epochs > 1)
        printf("  heap allocations in epochs 2-%d (training and evaluation): ctx allocator %llu, "
               "process %llu\n",
               epochs, (unsigned long long)(ac.calls - c_after1),
               (unsigned long long)(heap_calls() - h_after1));
    printf("  arena %.1f MB (peak use %.1f MB), parameters+grads %.2f MB, peak RSS %.1f MB\n",
           (double)ms.arena_capacity / 1e6, (double)ms.arena_peak / 1e6,
           (double)ms.param_bytes / 1e6, peak_rss_mb());
    timing te = {med, ep_s[0], ep_s[epochs - 1], cpu_med, epochs, train->n, 0, 0};
    emit("fashion.s_per_epoch", med, "s", &te);
    emit("fashion.samples_per_s", (double)train->n / med, "samples/s", NULL);
    emit("fashion.test_acc", 100 * acc, "%", NULL);
    emit("fashion.epochs", epochs, "", NULL);
    if (epochs > 1) {
        emit("fashion.ctx_allocs_after_epoch1", (double)(ac.calls - c_after1), "count", NULL);
        emit("fashion.heap_allocs_after_epoch1", (double)(heap_calls() - h_after1), "count", NULL);
    }
    emit("fashion.arena_mb", (double)ms.arena_capacity / 1e6, "MB", NULL);
    emit("fashion.self_peak_rss_mb", peak_rss_mb(), "MB", NULL);
    free(orders);
    tg_batcher_free(&tb);
    tg_batcher_free(&eb);
    tg_optim_free(opt);
    tg_dataset_free(train);
    tg_dataset_free(test);
    tg_ctx_free(ctx);
    return 0;
}

/* ==== main ================================================================== */

static int wanted(const char *only, const char *name)
{
    if (!only) return 1;
    size_t n = strlen(name);
    for (const char *p = only; *p;) {
        const char *e = strchr(p, ',');
        size_t len = e ? (size_t)(e - p) : strlen(p);
        if (len == n && strncmp(p, name, n) == 0) return 1;
        if (!e) break;
        p = e + 1;
    }
    return 0;
}

static void usage(void)
{
    fprintf(stderr,
            "usage: bench_train [--quick] [--only overhead,xor,mlp64,mlp1024] [--json PATH]\n"
            "       bench_train --fashion [--quick] [--epochs N] [--threads N] [--data DIR]\n"
            "                   [--independent] [--json PATH]\n"
            "       bench_train --profile xor|mlp64|mlp1024 [--steps N] [--threads N]\n");
    exit(2);
}

int main(int argc, char **argv)
{
    int quick = 0, fashion = 0, epochs = 0, threads = 1, shared = 1;
    long long steps = 0;
    const char *profile = NULL;
    const char *only = NULL, *json = NULL, *dir = FASHION_DIR;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        const char *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(a, "--quick")) quick = 1;
        else if (!strcmp(a, "--fashion")) fashion = 1;
        else if (!strcmp(a, "--independent")) shared = 0;
        else if (!strcmp(a, "--only") && v) only = argv[++i];
        else if (!strcmp(a, "--json") && v) json = argv[++i];
        else if (!strcmp(a, "--data") && v) dir = argv[++i];
        else if (!strcmp(a, "--epochs") && v) epochs = atoi(argv[++i]);
        else if (!strcmp(a, "--threads") && v) threads = atoi(argv[++i]);
        else if (!strcmp(a, "--profile") && v) profile = argv[++i];
        else if (!strcmp(a, "--steps") && v) steps = atoll(argv[++i]);
        else usage();
    }
    if (threads < 1) usage();
    if (profile) {
        if (!strcmp(profile, "xor")) profile_xor(steps > 0 ? steps : 1000000);
        else if (!strcmp(profile, "mlp64")) profile_mlp(0, steps > 0 ? steps : 2000, threads);
        else if (!strcmp(profile, "mlp1024")) profile_mlp(1, steps > 0 ? steps : 20, threads);
        else usage();
        return 0;
    }
    if (json) {
        g_json = fopen(json, "w");
        if (!g_json) {
            fprintf(stderr, "bench_train: cannot write %s: %s\n", json, strerror(errno));
            return 1;
        }
    }
    if (fashion) {
        if (epochs <= 0) epochs = quick ? 1 : 5;
        int rc = run_fashion(dir, epochs, threads, shared);
        if (g_json) fclose(g_json);
        return rc;
    }

    printf("tapegrad training benchmarks%s: CLOCK_MONOTONIC, warm-up, then the median of "
           "repeats.\n",
           quick ? " (quick)" : "");
    printf("load average %.2f at start: the machine is shared; compare ratios measured in the "
           "same run, not absolute figures.\n\n",
           load_average());
    emit_str("meta.mode", quick ? "quick" : "full");
    emit("meta.loadavg_start", load_average(), "", NULL);
    emit("meta.malloc_counted", HAVE_MALLOC_COUNT, "", NULL);

    if (wanted(only, "overhead")) bench_overhead(quick);
    int want64 = wanted(only, "mlp64"), want1024 = wanted(only, "mlp1024");
    if (wanted(only, "xor") || want64 || want1024) row_header();
    if (wanted(only, "xor")) bench_xor(quick);
    if (want64 || want1024) {
        pool data = pool_make(4096, 784, 42);
        double t[2];
        if (want64) {
            bench_mlp("mlp64", "MLP 784-64-10 ReLU, b64, CE, RMSprop", 3,
                      (const int64_t[]){784, 64, 10}, 64, TG_OPT_RMSPROP, 1e-3, quick, &data, t);
            printf("  2 threads vs 1: %.2fx\n", t[0] / t[1]);
        }
        if (want1024) {
            bench_mlp("mlp1024", "MLP 784-1024-1024-10 ReLU, b256, CE, SGD", 4,
                      (const int64_t[]){784, 1024, 1024, 10}, 256, TG_OPT_SGD, 0.01, quick, &data,
                      t);
            printf("  2 threads vs 1: %.2fx\n", t[0] / t[1]);
        }
        pool_free(&data);
    }
    printf("\nload average %.2f at the end.%s\n", load_average(),
           HAVE_MALLOC_COUNT ? "" : " (process-wide malloc counting unavailable: shown as 0)");
    emit("meta.loadavg_end", load_average(), "", NULL);
    if (g_json) fclose(g_json);
    return 0;
}
