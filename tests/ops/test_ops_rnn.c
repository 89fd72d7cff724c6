/* SPDX-License-Identifier: MIT */
/* tests/ops/test_ops_rnn.c: tg_lstm_cell and tg_gru_cell.
 * f64 gradient checks of every input through a weighted projection of a chain of
 * steps (losses through h' only, c' only and both), with and without biases, batch 1,
 * one step, H != in; forward values against PyTorch's nn.LSTMCell / nn.GRUCell
 * (tests/rnn_reference.py); f32 against f64; bad arguments. */
#include <criterion/criterion.h>

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "rnn_reference.h"
#include "tapegrad.h"
#include "tg_test.h"

TG_TEST_SUITE(rnn, 4321); /* ctx: a fresh context per test */

/* t's elements set as tests/rnn_reference.py's fill(shape, s) */
static tg_tensor *filled(tg_dtype dt, int ndim, const int64_t *shape, int s)
{
    tg_tensor *t = tg_new(ctx, dt, ndim, shape);
    cr_assert_not_null(t, "%s", tg_errmsg(ctx));
    for (int64_t k = 0; k < tg_numel(t); k++)
        set_at(t, k, 0.5 * sin(0.7 * (double)k + 1.3 * s) + 0.1 * cos(0.3 * (double)k * s));
    return t;
}

static tg_tensor *filled2(tg_dtype dt, int64_t a, int64_t b, int s)
{
    int64_t sh[2] = {a, b};
    return filled(dt, 2, sh, s);
}

static tg_tensor *filled1(tg_dtype dt, int64_t a, int s)
{
    return filled(dt, 1, &a, s);
}

/* ---- the chained cells under test ----------------------------------------- */

enum { LOSS_H = 1, LOSS_C = 2, LOSS_BOTH = 3 };

typedef struct {
    int gru;             /* 0: LSTM, 1: GRU */
    int steps;           /* cells chained, the same x and weights at each */
    int loss;            /* LOSS_H, LOSS_C (LSTM only), LOSS_BOTH */
    int bias;            /* 0 none, 1 b_ih only, 2 b_hh only, 3 both */
    tg_tensor *wh, *wc;  /* projection weights [N,H] */
} chain;

/* inputs: x, h0, c0 (LSTM only), w_ih, w_hh, then the biases present */
static tg_tensor *run_chain(tg_ctx *c, tg_tensor *const *in, void *user)
{
    const chain *ch = user;
    int k = 0;
    tg_tensor *x = in[k++], *h = in[k++], *cs = ch->gru ? NULL : in[k++];
    tg_tensor *w_ih = in[k++], *w_hh = in[k++];
    tg_tensor *b_ih = ch->bias & 1 ? in[k++] : NULL, *b_hh = ch->bias & 2 ? in[k++] : NULL;
    tg_tensor *h1 = NULL;
    for (int t = 0; t < ch->steps; t++) {
        if (ch->gru) {
            h = tg_gru_cell(c, x, h, w_ih, w_hh, b_ih, b_hh);
        } else {
            tg_tensor *cn = NULL;
            h = tg_lstm_cell(c, x, h, cs, w_ih, w_hh, b_ih, b_hh, &cn);
            cs = cn;
        }
        if (t == 0) h1 = h;
    }
    if (!h) return NULL;
    tg_tensor *wh = ch->wh, *wc = ch->wc;
    if (tg_dtype_of(h) != tg_dtype_of(wh)) { /* the f32 run */
        wh = convert(c, wh, tg_dtype_of(h));
        wc = convert(c, wc, tg_dtype_of(h));
    }
    tg_tensor *loss = NULL;
    if (ch->loss & LOSS_H) loss = tg_sum(c, tg_mul(c, h, wh));
    if ((ch->loss & LOSS_C) && !ch->gru) { /* the GRU has no c' */
        tg_tensor *lc = tg_sum(c, tg_mul(c, cs, wc));
        loss = loss ? tg_add(c, loss, lc) : lc;
    }
    if (ch->loss == LOSS_BOTH && ch->steps > 1) /* an intermediate h' too */
        loss = tg_add(c, loss, tg_sum(c, tg_mul(c, h1, wc)));
    return loss;
}

/* the inputs of a chain of sizes N, in, H in dtype dt; returns their count */
static int make_inputs(const chain *ch, tg_dtype dt, int64_t N, int64_t in, int64_t H,
                       tg_tensor **v)
{
    const int64_t G = (ch->gru ? 3 : 4) * H;
    int k = 0;
    v[k++] = filled2(dt, N, in, 1);
    v[k++] = filled2(dt, N, H, 2);
    if (!ch->gru) v[k++] = filled2(dt, N, H, 3);
    v[k++] = filled2(dt, G, in, 4);
    v[k++] = filled2(dt, G, H, 5);
    if (ch->bias & 1) v[k++] = filled1(dt, G, 6);
    if (ch->bias & 2) v[k++] = filled1(dt, G, 7);
    return k;
}

/* gradient check of every input, and a non-zero gradient for each */
static void check_chain(chain ch, int64_t N, int64_t in, int64_t H, const char *what)
{
    tg_tensor *v[7];
    ch.wh = rand2(ctx, TG_F64, N, H, 0.5, 1.5);
    ch.wc = rand2(ctx, TG_F64, N, H, -1.5, -0.5);
    int n = make_inputs(&ch, TG_F64, N, in, H, v);
    tg_gradcheck_opts o = {1e-6, 1e-7, 1e-5};
    gradcheck_opts(ctx, run_chain, &ch, v, n, &o, what);
    assert_grads_nonzero(ctx, run_chain, &ch, v, n, LOSS_SELF, what);
}

static const char *const LOSS_NAME[] = {"", "h'", "c'", "h' and c'"};
static const char *const BIAS_NAME[] = {"no bias", "b_ih only", "b_hh only", "both biases"};

/* check_chain of a chain of `steps` cells (GRU or LSTM), named by its parameters */
static void check_case(int gru, int steps, int loss, int bias, int64_t N, int64_t in, int64_t H)
{
    char what[96];
    snprintf(what, sizeof what, "%s T=%d loss on %s, %s, N=%lld in=%lld H=%lld",
             gru ? "gru" : "lstm", steps, LOSS_NAME[loss], BIAS_NAME[bias], (long long)N,
             (long long)in, (long long)H);
    check_chain((chain){gru, steps, loss, bias, NULL, NULL}, N, in, H, what);
}

Test(rnn, lstm_gradcheck_losses_through_h_c_and_both)
{
    for (int loss = LOSS_H; loss <= LOSS_BOTH; loss++) check_case(0, 3, loss, 3, 2, 3, 4);
}

Test(rnn, lstm_gradcheck_biases_none_or_one)
{
    for (int bias = 0; bias < 3; bias++) check_case(0, 3, LOSS_BOTH, bias, 2, 3, 4);
}

Test(rnn, lstm_gradcheck_batch1_one_step_h_ne_in)
{
    check_case(0, 1, LOSS_BOTH, 3, 1, 5, 2);
    check_case(0, 1, LOSS_H, 3, 3, 2, 5);
    check_case(0, 3, LOSS_C, 3, 1, 6, 3);
}

Test(rnn, gru_gradcheck)
{
    check_case(1, 3, LOSS_H, 3, 2, 3, 4);
    check_case(1, 3, LOSS_BOTH, 3, 2, 3, 4); /* an intermediate h' too */
    for (int bias = 0; bias < 3; bias++) check_case(1, 3, LOSS_H, bias, 2, 3, 4);
    check_case(1, 1, LOSS_H, 3, 1, 5, 2);
}

/* the full Jacobian of c' and of h' of one cell (not through a projection) */
static tg_tensor *one_lstm_h(tg_ctx *c, tg_tensor *const *in, void *user)
{
    tg_tensor *cn;
    tg_tensor *h = tg_lstm_cell(c, in[0], in[1], in[2], in[3], in[4], in[5], in[6], &cn);
    return *(int *)user ? cn : h;
}

Test(rnn, lstm_full_jacobian_of_each_output)
{
    chain ch = {0, 1, LOSS_BOTH, 3, NULL, NULL};
    tg_tensor *v[7];
    int n = make_inputs(&ch, TG_F64, 2, 3, 2, v);
    for (int which = 0; which < 2; which++)
        gradcheck_ok(ctx, one_lstm_h, &which, v, n, which ? "jacobian c'" : "jacobian h'");
}

/* ---- values against PyTorch ------------------------------------------------ */

static void assert_close(const tg_tensor *t, const double *ref, double tol, const char *what)
{
    for (int64_t i = 0; i < tg_numel(t); i++)
        cr_assert(fabs(at(t, i) - ref[i]) <= tol, "%s[%lld]: %.17g, PyTorch %.17g", what,
                  (long long)i, at(t, i), ref[i]);
}

Test(rnn, values_match_pytorch_cells)
{
    for (int dtk = 0; dtk < 2; dtk++) {
        tg_dtype dt = dtk ? TG_F32 : TG_F64;
        double tol = dtk ? 2e-6 : 1e-14;
        chain ch = {0, 1, LOSS_BOTH, 3, NULL, NULL};
        tg_tensor *v[7];
        make_inputs(&ch, dt, 2, 3, 4, v);
        tg_tensor *cn = NULL;
        tg_tensor *h = tg_lstm_cell(ctx, v[0], v[1], v[2], v[3], v[4], v[5], v[6], &cn);
        cr_assert_not_null(h, "%s", tg_errmsg(ctx));
        assert_close(h, ref_lstm_h, tol, "lstm h'");
        assert_close(cn, ref_lstm_c, tol, "lstm c'");
        chain cg = {1, 1, LOSS_H, 3, NULL, NULL};
        make_inputs(&cg, dt, 2, 3, 4, v);
        h = tg_gru_cell(ctx, v[0], v[1], v[2], v[3], v[4], v[5]);
        cr_assert_not_null(h, "%s", tg_errmsg(ctx));
        assert_close(h, ref_gru_h, tol, "gru h'");
    }
}

/* ---- f32 against f64 ------------------------------------------------------- */

Test(rnn, f32_agrees_with_f64)
{
    for (int gru = 0; gru < 2; gru++) {
        chain ch = {gru, 3, LOSS_BOTH, 3, NULL, NULL};
        ch.wh = rand2(ctx, TG_F64, 3, 5, 0.5, 1.5);
        ch.wc = rand2(ctx, TG_F64, 3, 5, -1.5, -0.5);
        tg_tensor *v64[7], *v32[7];
        int n = make_inputs(&ch, TG_F64, 3, 4, 5, v64);
        make_inputs(&ch, TG_F32, 3, 4, 5, v32);
        for (int k = 0; k < n; k++) {
            tg_set_requires_grad(v64[k], 1);
            tg_set_requires_grad(v32[k], 1);
        }
        tg_tensor *l64 = run_chain(ctx, v64, &ch), *l32 = run_chain(ctx, v32, &ch);
        cr_assert_not_null(l32, "%s", tg_errmsg(ctx));
        tg_backward(ctx, l64);
        tg_backward(ctx, l32);
        cr_assert(tg_ok(ctx), "%s", tg_errmsg(ctx));
        cr_assert(fabs(at(l64, 0) - at(l32, 0)) <= 1e-5 * (1 + fabs(at(l64, 0))),
                  "loss %g vs %g", at(l64, 0), at(l32, 0));
        for (int k = 0; k < n; k++)
            for (int64_t i = 0; i < tg_numel(v64[k]); i++) {
                double a = grad_at(v64[k], i), b = grad_at(v32[k], i);
                cr_assert(fabs(a - b) <= 2e-5 * (1 + fabs(a)), "gru %d input %d [%lld]: %g vs %g",
                          gru, k, (long long)i, a, b);
            }
    }
}

/* ---- the tape: nodes, no-grad, a second backward --------------------------- */

Test(rnn, nodes_recorded_and_no_grad_gives_same_values)
{
    chain ch = {0, 1, LOSS_BOTH, 3, NULL, NULL};
    tg_tensor *v[7];
    make_inputs(&ch, TG_F64, 2, 3, 4, v);
    tg_tensor *cn1, *cn2;
    int prev = tg_no_grad(ctx, 1);
    tg_tensor *h1 = tg_lstm_cell(ctx, v[0], v[1], v[2], v[3], v[4], v[5], v[6], &cn1);
    tg_no_grad(ctx, prev);
    cr_assert_eq(tg_tape_len(ctx), 0);
    tg_set_requires_grad(v[3], 1);
    tg_tensor *h2 = tg_lstm_cell(ctx, v[0], v[1], v[2], v[3], v[4], v[5], v[6], &cn2);
    cr_assert_eq(tg_tape_len(ctx), 2, "the cell node and the h' node");
    for (int64_t i = 0; i < 8; i++) {
        cr_assert_eq(at(h1, i), at(h2, i));
        cr_assert_eq(at(cn1, i), at(cn2, i));
    }
    tg_tensor *g = tg_gru_cell(ctx, v[0], v[1], filled2(TG_F64, 12, 3, 4), filled2(TG_F64, 12, 4, 5),
                                NULL, NULL);
    cr_assert_not_null(g, "%s", tg_errmsg(ctx));
    cr_assert_eq(tg_tape_len(ctx), 2, "nothing of the GRU needs a gradient");
}

/* backward twice over the same tape adds the same gradient twice */
Test(rnn, second_backward_adds_the_same)
{
    chain ch = {0, 3, LOSS_H, 3, NULL, NULL};
    ch.wh = rand2(ctx, TG_F64, 2, 4, 0.5, 1.5);
    ch.wc = ch.wh;
    tg_tensor *v[7];
    int n = make_inputs(&ch, TG_F64, 2, 3, 4, v);
    for (int k = 0; k < n; k++) tg_set_requires_grad(v[k], 1);
    tg_tensor *loss = run_chain(ctx, v, &ch);
    tg_backward(ctx, loss);
    double g1 = grad_at(v[3], 5), gc = grad_at(v[2], 1);
    tg_backward(ctx, loss);
    cr_assert_float_eq(grad_at(v[3], 5), 2 * g1, 1e-12);
    cr_assert_float_eq(grad_at(v[2], 1), 2 * gc, 1e-12);
}

/* ---- bad arguments ---------------------------------------------------------- */

/* the call must fail with a message naming fn and s1, s2, leaving the tape as it was */
#define BAD_LSTM(x, h, c, wi, wh, bi, bh, s1, s2)                                           \
    do {                                                                                     \
        int64_t len0 = tg_tape_len(ctx);                                                     \
        tg_tensor *cn_ = (tg_tensor *)1;                                                     \
        tg_tensor *r_ = tg_lstm_cell(ctx, x, h, c, wi, wh, bi, bh, &cn_);                    \
        cr_assert_null(cn_, "c_out is set to NULL on error");                                \
        assert_null_err(ctx, r_, "tg_lstm_cell", s1, s2);                                    \
        cr_assert_eq(tg_tape_len(ctx), len0);                                                \
    } while (0)

#define BAD_GRU(x, h, wi, wh, bi, bh, s1, s2)                                                \
    do {                                                                                     \
        int64_t len0 = tg_tape_len(ctx);                                                     \
        tg_tensor *r_ = tg_gru_cell(ctx, x, h, wi, wh, bi, bh);                              \
        assert_null_err(ctx, r_, "tg_gru_cell", s1, s2);                                     \
        cr_assert_eq(tg_tape_len(ctx), len0);                                                \
    } while (0)

Test(rnn, bad_arguments)
{
    const tg_dtype D = TG_F64;
    tg_tensor *x = filled2(D, 2, 3, 1), *h = filled2(D, 2, 4, 2), *c = filled2(D, 2, 4, 3);
    tg_tensor *wi = filled2(D, 16, 3, 4), *wh = filled2(D, 16, 4, 5), *b = filled1(D, 16, 6);
    tg_tensor *gwi = filled2(D, 12, 3, 4), *gwh = filled2(D, 12, 4, 5), *gb = filled1(D, 12, 6);
    tg_set_requires_grad(wi, 1);
    tg_set_requires_grad(gwi, 1);
    int64_t s3[3] = {1, 2, 3};
    tg_tensor *x3 = filled(D, 3, s3, 1);
    /* wrong ndim */
    BAD_LSTM(x3, h, c, wi, wh, b, b, "2-D", "[1,2,3]");
    BAD_GRU(x3, h, gwi, gwh, gb, gb, "2-D", "[1,2,3]");
    BAD_LSTM(x, filled1(D, 4, 2), c, wi, wh, b, b, "2-D", "h is [4]");
    /* w_ih not [4H,in] */
    BAD_LSTM(x, h, c, filled2(D, 16, 4, 4), wh, b, b, "w_ih must be [4H,in] = [16,3]",
             "got [16,4]");
    BAD_LSTM(x, h, c, gwi, wh, b, b, "w_ih must be [4H,in]", "got [12,3]");
    BAD_GRU(x, h, wi, gwh, gb, gb, "w_ih must be [3H,in] = [12,3]", "got [16,3]");
    BAD_LSTM(x, h, c, wi, filled2(D, 16, 3, 5), b, b, "w_hh must be [4H,H] = [16,4]",
             "got [16,3]");
    BAD_GRU(x, h, gwi, gwh, gb, filled1(D, 16, 6), "b_hh must be [3H] = [12]", "got [16]");
    BAD_LSTM(x, h, c, wi, wh, filled2(D, 1, 16, 6), b, "b_ih must be [4H] = [16]",
             "got [1,16]");
    /* h / c shape mismatch, batch mismatch */
    BAD_LSTM(x, h, filled2(D, 2, 5, 3), wi, wh, b, b, "c [2,5] must have the shape of h [2,4]",
             NULL);
    BAD_LSTM(x, filled2(D, 3, 4, 2), filled2(D, 3, 4, 3), wi, wh, b, b, "h [3,4] has batch 3",
             "x [2,3] has batch 2");
    BAD_GRU(x, filled2(D, 1, 4, 2), gwi, gwh, gb, gb, "has batch 1", "batch 2");
    /* mixed dtypes */
    BAD_LSTM(x, h, c, convert(ctx, wi, TG_F32), wh, b, b, "f64", "f32");
    BAD_GRU(x, convert(ctx, h, TG_F32), gwi, gwh, gb, gb, "f64", "f32");
    BAD_LSTM(x, h, c, wi, wh, b, convert(ctx, b, TG_F32), "f64", "f32");
    /* NULL arguments, NULL c_out, an integer tensor */
    BAD_LSTM(x, h, NULL, wi, wh, b, b, "argument c is NULL", NULL);
    BAD_GRU(x, h, NULL, gwh, gb, gb, "argument w_ih is NULL", NULL);
    tg_tensor *r = tg_lstm_cell(ctx, x, h, c, wi, wh, b, b, NULL);
    assert_null_err(ctx, r, "tg_lstm_cell", "c_out is NULL", "[2,4]");
    BAD_LSTM(convert(ctx, x, TG_I32), h, c, wi, wh, b, b, "must be f32 or f64", NULL);
    cr_assert_eq(tg_tape_len(ctx), 0);
    cr_assert_null(tg_grad(wi), "nothing reached the weights");
    /* a recorded error makes every later call return NULL at once */
    tg_set_error(ctx, "earlier");
    tg_tensor *cn;
    cr_assert_null(tg_lstm_cell(ctx, x, h, c, wi, wh, b, b, &cn));
    cr_assert_null(tg_gru_cell(ctx, x, h, gwi, gwh, gb, gb));
    cr_assert_str_eq(tg_errmsg(ctx), "earlier");
    tg_clear_error(ctx);
    cr_assert_null(tg_lstm_cell(NULL, x, h, c, wi, wh, b, b, &cn));
}

/* ---- threads ---------------------------------------------------------------- */

/* h', c' and every gradient of a 3-step chain, into out (flattened), with k threads */
static int64_t chain_bits(int gru, int k, float *out)
{
    tg_ctx *c = tg_ctx_new(7);
    tg_set_threads(c, k);
    tg_ctx *keep = ctx;
    ctx = c; /* the helpers above use ctx */
    chain ch = {gru, 3, LOSS_BOTH, 3, NULL, NULL};
    ch.wh = filled2(TG_F32, 64, 96, 8);
    ch.wc = filled2(TG_F32, 64, 96, 9);
    tg_tensor *v[7];
    int n = make_inputs(&ch, TG_F32, 64, 80, 96, v);
    for (int i = 0; i < n; i++) tg_set_requires_grad(v[i], 1);
    tg_tensor *loss = run_chain(c, v, &ch);
    tg_backward(c, loss);
    cr_assert(tg_ok(c), "%s", tg_errmsg(c));
    int64_t m = 0;
    out[m++] = (float)at(loss, 0);
    for (int i = 0; i < n; i++)
        for (int64_t j = 0; j < tg_numel(v[i]); j++) out[m++] = (float)grad_at(v[i], j);
    ctx = keep;
    tg_ctx_free(c);
    return m;
}

Test(rnn, same_bits_for_any_thread_count)
{
    size_t cap = 1 + 64 * 80 + 2 * 64 * 96 + 4 * 96 * (80 + 96) + 8 * 96;
    float *a = malloc(cap * sizeof *a), *b = malloc(cap * sizeof *b);
    for (int gru = 0; gru < 2; gru++) {
        int64_t m = chain_bits(gru, 1, a);
        cr_assert_eq(chain_bits(gru, 2, b), m);
        cr_assert(memcmp(a, b, (size_t)m * sizeof *a) == 0, "gru %d: 1 and 2 threads differ", gru);
    }
    free(a);
    free(b);
}
