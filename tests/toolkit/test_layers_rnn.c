/* SPDX-License-Identifier: MIT */
/* tests/toolkit/test_layers_rnn.c: tg_lstm and tg_gru over a sequence.
 * Output, final states and every gradient of a weighted loss against PyTorch's
 * nn.LSTM / nn.GRU with the same weights (tests/rnn_reference.py); parameter names,
 * shapes and init range; zero initial states; a gradient check through the
 * unrolled tape; a warm step allocates nothing; bad arguments. */
#include <criterion/criterion.h>

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "rnn_reference.h"
#include "tapegrad.h"
#include "tg_test.h"

TG_TEST_SUITE(layers_rnn, 99); /* ctx: a fresh context per test */

/* tests/rnn_reference.py's fill(shape, s) into t's data */
static void fill(tg_tensor *t, int s)
{
    for (int64_t k = 0; k < tg_numel(t); k++)
        set_at(t, k, 0.5 * sin(0.7 * (double)k + 1.3 * s) + 0.1 * cos(0.3 * (double)k * s));
}

static tg_tensor *filled(tg_dtype dt, int ndim, const int64_t *shape, int s)
{
    tg_tensor *t = tg_new(ctx, dt, ndim, shape);
    cr_assert_not_null(t, "%s", tg_errmsg(ctx));
    fill(t, s);
    return t;
}

static void assert_close(const double *got, const double *ref, int64_t n, double tol,
                         const char *what)
{
    for (int64_t i = 0; i < n; i++)
        cr_assert(fabs(got[i] - ref[i]) <= tol * (1 + fabs(ref[i])),
                  "%s[%lld]: %.17g, PyTorch %.17g", what, (long long)i, got[i], ref[i]);
}

static void assert_value(const tg_tensor *t, const double *ref, double tol, const char *what)
{
    cr_assert_not_null(t, "%s: %s", what, tg_errmsg(ctx));
    double *v = malloc((size_t)tg_numel(t) * sizeof *v + 1);
    tg_copy_out(t, TG_F64, v);
    assert_close(v, ref, tg_numel(t), tol, what);
    free(v);
}

static void assert_grad(const tg_tensor *t, const double *ref, double tol, const char *what)
{
    double *v = malloc((size_t)tg_numel(t) * sizeof *v + 1);
    for (int64_t i = 0; i < tg_numel(t); i++) v[i] = grad_at(t, i);
    assert_close(v, ref, tg_numel(t), tol, what);
    free(v);
}

/* sum(fill(y, s) * y) */
static tg_tensor *weighted(tg_tensor *y, int s)
{
    tg_tensor *w = filled(tg_dtype_of(y), tg_ndim(y), tg_shape(y), s);
    return tg_sum(ctx, tg_mul(ctx, w, y));
}

/* The reference model: 2 layers, T=3, N=2, in=3, H=4, parameters filled as the script. */
static void make_ref(tg_rnn *m, int gates, tg_dtype dt)
{
    int rc = gates == 4 ? tg_lstm_init(ctx, m, "rnn", 3, 4, 2, 1, dt)
                        : tg_gru_init(ctx, m, "rnn", 3, 4, 2, 1, dt);
    cr_assert_eq(rc, 0, "%s", tg_errmsg(ctx));
    int s = 10;
    for (int l = 0; l < 2; l++) {
        fill(m->weight_ih[l], s++);
        fill(m->weight_hh[l], s++);
        fill(m->bias_ih[l], s++);
        fill(m->bias_hh[l], s++);
    }
}

static const double *const ref_lstm_dparams[8] = {
    ref_lstm_dweight_ih_l0, ref_lstm_dweight_hh_l0, ref_lstm_dbias_ih_l0, ref_lstm_dbias_hh_l0,
    ref_lstm_dweight_ih_l1, ref_lstm_dweight_hh_l1, ref_lstm_dbias_ih_l1, ref_lstm_dbias_hh_l1};
static const double *const ref_gru_dparams[8] = {
    ref_gru_dweight_ih_l0, ref_gru_dweight_hh_l0, ref_gru_dbias_ih_l0, ref_gru_dbias_hh_l0,
    ref_gru_dweight_ih_l1, ref_gru_dweight_hh_l1, ref_gru_dbias_ih_l1, ref_gru_dbias_hh_l1};

static void against_pytorch(int gates, tg_dtype dt, double tol)
{
    tg_rnn m;
    make_ref(&m, gates, dt);
    int64_t xs[3] = {3, 2, 3}, ss[3] = {2, 2, 4};
    tg_tensor *x = filled(dt, 3, xs, 1), *h0 = filled(dt, 3, ss, 2), *c0 = filled(dt, 3, ss, 3);
    tg_set_requires_grad(x, 1);
    tg_set_requires_grad(h0, 1);
    tg_set_requires_grad(c0, 1);
    tg_tensor *hn = NULL, *cn = NULL;
    tg_tensor *out = gates == 4 ? tg_lstm_forward(ctx, &m, x, h0, c0, &hn, &cn)
                                : tg_gru_forward(ctx, &m, x, h0, &hn);
    cr_assert_not_null(out, "%s", tg_errmsg(ctx));
    cr_assert_eq(tg_ndim(out), 3);
    cr_assert_eq(tg_dim(out, 0), 3);
    cr_assert_eq(tg_dim(out, 2), 4);
    tg_tensor *loss = tg_add(ctx, weighted(out, 30), weighted(hn, 31));
    if (gates == 4) loss = tg_add(ctx, loss, weighted(cn, 32));
    tg_backward(ctx, loss);
    cr_assert(tg_ok(ctx), "%s", tg_errmsg(ctx));
    tg_tensor *params[8];
    cr_assert_eq(tg_rnn_params(&m, params, 8), 8);
    if (gates == 4) {
        assert_value(out, ref_lstm_out, tol, "out");
        assert_value(hn, ref_lstm_hn, tol, "h_n");
        assert_value(cn, ref_lstm_cn, tol, "c_n");
        assert_grad(x, ref_lstm_dx, tol, "dx");
        assert_grad(h0, ref_lstm_dh0, tol, "dh0");
        assert_grad(c0, ref_lstm_dc0, tol, "dc0");
        for (int k = 0; k < 8; k++) assert_grad(params[k], ref_lstm_dparams[k], tol, tg_name(params[k]));
    } else {
        assert_value(out, ref_gru_out, tol, "out");
        assert_value(hn, ref_gru_hn, tol, "h_n");
        assert_grad(x, ref_gru_dx, tol, "dx");
        assert_grad(h0, ref_gru_dh0, tol, "dh0");
        for (int k = 0; k < 8; k++) assert_grad(params[k], ref_gru_dparams[k], tol, tg_name(params[k]));
    }
}

Test(layers_rnn, lstm_matches_pytorch_f64) { against_pytorch(4, TG_F64, 1e-12); }
Test(layers_rnn, lstm_matches_pytorch_f32) { against_pytorch(4, TG_F32, 1e-5); }
Test(layers_rnn, gru_matches_pytorch_f64) { against_pytorch(3, TG_F64, 1e-12); }
Test(layers_rnn, gru_matches_pytorch_f32) { against_pytorch(3, TG_F32, 1e-5); }

Test(layers_rnn, names_shapes_and_init_as_pytorch)
{
    tg_lstm m;
    cr_assert_eq(tg_lstm_init(ctx, &m, "enc", 5, 16, 3, 1, TG_F32), 0, "%s", tg_errmsg(ctx));
    cr_assert_eq(tg_rnn_params(&m, NULL, 0), 12);
    const char *want[4] = {"enc.weight_ih_l2", "enc.weight_hh_l2", "enc.bias_ih_l2",
                           "enc.bias_hh_l2"};
    tg_tensor *p[12];
    tg_rnn_params(&m, p, 12);
    for (int j = 0; j < 4; j++) cr_assert_str_eq(tg_name(p[8 + j]), want[j]);
    cr_assert_eq(tg_dim(m.weight_ih[0], 0), 64);
    cr_assert_eq(tg_dim(m.weight_ih[0], 1), 5);
    cr_assert_eq(tg_dim(m.weight_ih[1], 1), 16);
    cr_assert_eq(tg_dim(m.weight_hh[2], 1), 16);
    double lo = 1, hi = -1;
    for (int k = 0; k < 12; k++)
        for (int64_t i = 0; i < tg_numel(p[k]); i++) {
            double v = at(p[k], i);
            lo = v < lo ? v : lo;
            hi = v > hi ? v : hi;
        }
    cr_assert(lo >= -0.25 && hi <= 0.25, "U(-1/sqrt(16), 1/sqrt(16)): [%g, %g]", lo, hi);
    cr_assert(lo < -0.24 && hi > 0.24, "the whole range is used: [%g, %g]", lo, hi);
    tg_gru g;
    cr_assert_eq(tg_gru_init(ctx, &g, NULL, 5, 16, 1, 0, TG_F64), 0, "%s", tg_errmsg(ctx));
    cr_assert_eq(tg_rnn_params(&g, p, 12), 2, "no biases");
    cr_assert_str_eq(tg_name(p[0]), "weight_ih_l0");
    cr_assert_eq(tg_dim(p[1], 0), 48);
}

/* NULL initial states are zeros; h_n, c_n may be left out */
Test(layers_rnn, null_states_are_zeros)
{
    tg_rnn m;
    make_ref(&m, 4, TG_F64);
    int64_t xs[3] = {3, 2, 3}, ss[3] = {2, 2, 4};
    tg_tensor *x = filled(TG_F64, 3, xs, 1), *z = tg_new(ctx, TG_F64, 3, ss);
    tg_tensor *hn1, *cn1;
    tg_tensor *a = tg_lstm_forward(ctx, &m, x, NULL, NULL, &hn1, &cn1);
    tg_tensor *b = tg_lstm_forward(ctx, &m, x, z, z, NULL, NULL);
    cr_assert_not_null(b, "%s", tg_errmsg(ctx));
    for (int64_t i = 0; i < tg_numel(a); i++) cr_assert_eq(at(a, i), at(b, i));
    /* h_n[last layer] is the output's last step */
    for (int64_t i = 0; i < 8; i++) cr_assert_eq(at(hn1, 8 + i), at(a, 16 + i));
}

/* a gradient check through the whole unrolled graph, T=1 and batch 1 included */
typedef struct {
    tg_rnn m;
    int gates;
    tg_tensor *w;
} layer_case;

static tg_tensor *run_layer(tg_ctx *c, tg_tensor *const *in, void *user)
{
    layer_case *lc = user;
    tg_tensor *hn, *cn;
    tg_tensor *out = lc->gates == 4 ? tg_lstm_forward(c, &lc->m, in[0], in[1], in[2], &hn, &cn)
                                    : tg_gru_forward(c, &lc->m, in[0], in[1], &hn);
    if (!out) return NULL;
    tg_tensor *loss = tg_add(c, tg_sum(c, tg_mul(c, out, lc->w)), tg_sum(c, hn));
    return lc->gates == 4 ? tg_add(c, loss, tg_sum(c, tg_mul(c, cn, cn))) : loss;
}

static void gradcheck_layer(int gates, int64_t T, int64_t N, int L, const char *what)
{
    layer_case lc = {.gates = gates};
    int rc = gates == 4 ? tg_lstm_init(ctx, &lc.m, what, 2, 3, L, 1, TG_F64)
                        : tg_gru_init(ctx, &lc.m, what, 2, 3, L, 1, TG_F64);
    cr_assert_eq(rc, 0, "%s", tg_errmsg(ctx));
    int64_t xs[3] = {T, N, 2}, ss[3] = {L, N, 3}, os[3] = {T, N, 3};
    tg_tensor *in[3 + 4 * TG_RNN_MAX_LAYERS];
    in[0] = rnd(ctx, TG_F64, (shp){3, {xs[0], xs[1], xs[2]}}, -1, 1);
    in[1] = rnd(ctx, TG_F64, (shp){3, {ss[0], ss[1], ss[2]}}, -1, 1);
    in[2] = rnd(ctx, TG_F64, (shp){3, {ss[0], ss[1], ss[2]}}, -1, 1);
    lc.w = rnd(ctx, TG_F64, (shp){3, {os[0], os[1], os[2]}}, 0.5, 1.5);
    int n = 3 + tg_rnn_params(&lc.m, in + 3, 4 * TG_RNN_MAX_LAYERS);
    if (gates == 3) { /* no c0: move the parameters down */
        memmove(in + 2, in + 3, (size_t)(n - 3) * sizeof *in);
        n--;
    }
    gradcheck_ok(ctx, run_layer, &lc, in, n, what);
}

Test(layers_rnn, gradcheck_unrolled)
{
    gradcheck_layer(4, 3, 2, 2, "lstm");
    gradcheck_layer(4, 1, 1, 1, "lstm_t1_n1");
    gradcheck_layer(3, 3, 2, 2, "gru");
    gradcheck_layer(3, 1, 1, 1, "gru_t1_n1");
}

/* a warm training step asks the allocator for nothing */
Test(layers_rnn, warm_step_allocates_nothing)
{
    tg_lstm m;
    cr_assert_eq(tg_lstm_init(ctx, &m, "lstm", 6, 8, 2, 1, TG_F32), 0);
    tg_tensor *p[8];
    int np = tg_rnn_params(&m, p, 8);
    tg_optim_opts o = tg_optim_defaults(TG_OPT_ADAM);
    tg_optim *opt = tg_optim_new(ctx, &o, p, np);
    cr_assert_not_null(opt, "%s", tg_errmsg(ctx));
    uint64_t grows[4];
    for (int step = 0; step < 4; step++) {
        tg_tensor *x = rnd(ctx, TG_F32, (shp){3, {5, 4, 6}}, -1, 1);
        tg_tensor *out = tg_lstm_forward(ctx, &m, x, NULL, NULL, NULL, NULL);
        tg_tensor *loss = tg_mean(ctx, tg_mul(ctx, out, out));
        tg_zero_grad(ctx);
        tg_backward(ctx, loss);
        tg_optim_step(opt);
        cr_assert(tg_ok(ctx), "%s", tg_errmsg(ctx));
        tg_reset(ctx);
        tg_mem_stats st;
        tg_mem_stats_get(ctx, &st);
        grows[step] = st.arena_grows;
    }
    cr_assert_eq(grows[3], grows[1], "arena grew after the first steps: %llu -> %llu",
                 (unsigned long long)grows[1], (unsigned long long)grows[3]);
    tg_optim_free(opt);
}

Test(layers_rnn, bad_arguments)
{
    tg_lstm m;
    tg_gru g;
    cr_assert_eq(tg_lstm_init(ctx, &m, "a", 3, 4, 2, 1, TG_F64), 0);
    cr_assert_eq(tg_gru_init(ctx, &g, "b", 3, 4, 1, 1, TG_F64), 0);
    int64_t xs[3] = {3, 2, 3};
    tg_tensor *x = filled(TG_F64, 3, xs, 1), *hn = (tg_tensor *)1, *cn = (tg_tensor *)1;
    int64_t len0 = tg_tape_len(ctx);
    /* x not [T,N,in] */
    tg_tensor *r = tg_lstm_forward(ctx, &m, filled(TG_F64, 2, xs + 1, 1), NULL, NULL, &hn, &cn);
    assert_null_err(ctx, r, "tg_lstm_forward", "[T,N,input_size] = [T,N,3]", "got [2,3]");
    cr_assert_null(hn);
    cr_assert_null(cn);
    int64_t x4[3] = {3, 2, 4};
    r = tg_gru_forward(ctx, &g, filled(TG_F64, 3, x4, 1), NULL, NULL);
    assert_null_err(ctx, r, "tg_gru_forward", "got [3,2,4]", NULL);
    /* states not [L,N,H] */
    int64_t s1[3] = {1, 2, 4};
    r = tg_lstm_forward(ctx, &m, x, filled(TG_F64, 3, s1, 2), NULL, NULL, NULL);
    assert_null_err(ctx, r, "tg_lstm_forward", "h0 must be [L,N,H] = [2,2,4]", "got [1,2,4]");
    int64_t s2[3] = {2, 2, 4};
    r = tg_lstm_forward(ctx, &m, x, NULL, convert(ctx, filled(TG_F64, 3, s2, 2), TG_F32), NULL,
                        NULL);
    assert_null_err(ctx, r, "tg_lstm_forward", "f32", NULL);
    /* the wrong kind, a dtype mismatch, NULLs */
    r = tg_lstm_forward(ctx, &g, x, NULL, NULL, NULL, NULL);
    assert_null_err(ctx, r, "tg_lstm_forward", "not made by tg_lstm_init", NULL);
    r = tg_gru_forward(ctx, &g, convert(ctx, x, TG_F32), NULL, NULL);
    assert_null_err(ctx, r, "tg_gru_forward", "f32", "f64");
    r = tg_gru_forward(ctx, NULL, x, NULL, NULL);
    assert_null_err(ctx, r, "tg_gru_forward", "argument m is NULL", NULL);
    r = tg_gru_forward(ctx, &g, NULL, NULL, NULL);
    assert_null_err(ctx, r, "tg_gru_forward", "argument x is NULL", NULL);
    cr_assert_eq(tg_tape_len(ctx), len0);
    /* init */
    tg_lstm z;
    cr_assert_eq(tg_lstm_init(ctx, &z, "z", 3, 4, TG_RNN_MAX_LAYERS + 1, 1, TG_F64), -1);
    assert_err(ctx, "layers", "tg_lstm_init", "num_layers in [1,8]", NULL);
    cr_assert_eq(tg_gru_init(ctx, &z, "z", 0, 4, 1, 1, TG_F64), -1);
    assert_err(ctx, "input", "tg_gru_init", "input_size > 0", NULL);
    cr_assert_eq(tg_lstm_init(ctx, &z, "z", 3, 4, 1, 1, TG_I32), -1);
    assert_err(ctx, "dtype", "tg_lstm_init", "f32 or f64", NULL);
    cr_assert_eq(tg_lstm_init(ctx, &z, "a", 3, 4, 1, 1, TG_F64), -1, "a.weight_ih_l0 exists");
    cr_assert(!tg_ok(ctx));
    tg_clear_error(ctx);
}
