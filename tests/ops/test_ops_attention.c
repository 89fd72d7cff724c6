/* SPDX-License-Identifier: MIT */
/* tests/ops/test_ops_attention.c: tg_attention, and tgi_self_attention (the
 * same arithmetic read from a fused [B*T,3E] projection and written as [B*T,E]):
 * its gradient check, its agreement with the composed split / tg_attention /
 * merge, the same bits for 1 and 2 threads, its errors.
 * Gradient checks in f64 through a random-weighted projection sum(w * out) for
 * q, k and v, causal and not, on the edge shapes a user meets (T = 1, T != S,
 * B = H = 1, D = 1, one tensor as q, k and v); values and gradients against
 * PyTorch (tests/attention_reference.py); f32 against f64; the causal mask
 * (a masked key changes nothing before it); bit-identical results for 1 and 2
 * threads; no arena growth in a warm step; every bad argument's message, with
 * nothing recorded. */
#include <criterion/criterion.h>

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h" /* tgi_self_attention */
#include "tapegrad.h"
#include "tg_test.h"

TG_TEST_SUITE(attention, 20261203); /* ctx: a fresh context per test */

/* ---- PyTorch reference values (tests/attention_reference.py, torch 1.13) ---- */

/* causal: B=1 H=2 T=3 S=3 D=2 causal=1 */
static const double REF_CAUSAL_OUT[12] = {0.47942553860420301, 0.57286746010048128, 0.64533986824157896, 0.78718985149891496, 0.68228784580624047, 0.53238146805427744, -0.96831861416670717, -0.38313260088125056, 0.023215063364577015, -0.17758137586029604, -0.32517119127019922, 0.39499717344605967};
static const double REF_CAUSAL_DQ[12] = {0, 0, 0.00775529267432222, -0.0027487407683933901, 0.017472430201515191, 0.024676150422106635, 0, 0, -0.10773636003804762, -0.11416661684511897, -0.08105096834802962, -0.084918538967715909};
static const double REF_CAUSAL_DK[12] = {-0.11008610348784184, -0.12678488344182209, 0.22325123269464198, 0.23191518225439042, -0.11316512920679994, -0.10513029881256812, 0.082868473196588965, 0.21664238393764956, -0.070835907025132067, -0.19979921160778497, -0.012032566171456894, -0.016843172329864604};
static const double REF_CAUSAL_DV[12] = {1.1615837319026503, 1.3460789905865238, 0.68122553747643855, 0.76815353094579719, 0.25719073062091102, 0.28576747846767891, 1.5475152538902408, 1.0155402319402, 0.55896454752510083, 0.64174954465205947, 0.39352019858465831, 0.44271022340774058};
/* cross: B=2 H=1 T=2 S=4 D=3 causal=0 */
static const double REF_CROSS_OUT[12] = {0.28539745668443112, 0.25809604098023303, 0.56946247076651602, 0.41593792511214417, 0.42066094206676757, 0.50860342574716122, -0.67378036250939333, 0.0022333064756897281, 0.54144881187576788, -0.49392214255631633, 0.04481841225304839, 0.45593007446503248};
static const double REF_CROSS_DQ[12] = {0.073825344899325809, 0.10368532612782592, 0.12808449051234794, 0.078593451512461637, 0.11584051574403186, 0.1469865832076481, -0.049848695181946838, -0.061523461346430081, -0.069957958452915331, -0.03066349490052217, -0.02257306925860629, -0.013293783037945485};
static const double REF_CROSS_DK[24] = {0.12350576961371172, 0.16447535064364138, 0.18318396455270416, 0.035141273636655354, 0.049342626126033941, 0.056865685645977021, -0.12535263288319226, -0.16450576897752889, -0.1813938209722058, -0.033294410367174711, -0.049312207792146345, -0.058655829226475303, 0.00441724803915222, 0.032839632052579587, 0.056817325925368513, 0.046413036586427772, -0.0040753105432649317, -0.054012083509072724, -0.013533331338358415, -0.015054654349821946, -0.01453840051961325, -0.037296953287221594, -0.013709667159492726, 0.011733158103317445};
static const double REF_CROSS_DV[24] = {0.52682327726409306, 0.60614052155200748, 0.68545776583992191, 0.44252789304579415, 0.50951148440526628, 0.57649507576473835, 0.2269298741173732, 0.26299123799556912, 0.29905260187376498, 0.10371895557273948, 0.12135675604715701, 0.13899455652157455, 0.46366473001520569, 0.35862304064280914, 0.41193410389973095, 0.44770500589888229, 0.36499514288850199, 0.41788373891209929, 0.41705833783222224, 0.30249142588331035, 0.34892804318576143, 0.47157192625368993, 0.27389039058537856, 0.32125411400240844};

/* ---- helpers ------------------------------------------------------------ */

/* one case: B, H, T, S, D and the causal flag */
typedef struct {
    int64_t b, h, t, s, d;
    int causal;
} acase;

static tg_tensor *new4(tg_ctx *c, tg_dtype dt, int64_t b, int64_t h, int64_t t, int64_t d)
{
    return rnd(c, dt, (shp){4, {b, h, t, d}}, -1.5, 1.5);
}

/* what the gradient check differentiates: sum(w * attention(q, k, v)) with w
 * fixed (drawn once per case) */
typedef struct {
    int causal;
    tg_tensor *w;
} attn_user;

static tg_tensor *fn_attention(tg_ctx *c, tg_tensor *const *in, void *user)
{
    attn_user *u = user;
    return tg_sum(c, tg_mul(c, tg_attention(c, in[0], in[1], in[2], u->causal), u->w));
}

/* fn_attention with one tensor as q, k and v */
static tg_tensor *fn_self_attention(tg_ctx *c, tg_tensor *const *in, void *user)
{
    attn_user *u = user;
    return tg_sum(c, tg_mul(c, tg_attention(c, in[0], in[0], in[0], u->causal), u->w));
}

/* the output of attention with only the weights: for assert_grads_nonzero */
static tg_tensor *fn_attention_out(tg_ctx *c, tg_tensor *const *in, void *user)
{
    return tg_attention(c, in[0], in[1], in[2], ((attn_user *)user)->causal);
}

/* value i of the reference inputs (tests/attention_reference.py) */
static double ref_q(int64_t i) { return sin(0.37 * (double)i + 0.1); }
static double ref_k(int64_t i) { return cos(0.23 * (double)i - 0.4); }
static double ref_v(int64_t i) { return sin(0.11 * (double)i * (double)i + 0.5); }
static double ref_w(int64_t i) { return 0.5 + 0.1 * (double)(i % 7); }

static tg_tensor *filled(tg_ctx *c, tg_dtype dt, int64_t b, int64_t h, int64_t t, int64_t d,
                         double (*f)(int64_t))
{
    int64_t shape[4] = {b, h, t, d};
    tg_tensor *x = tg_new(c, dt, 4, shape);
    cr_assert_not_null(x, "%s", tg_errmsg(c));
    for (int64_t i = 0; i < tg_numel(x); i++) set_at(x, i, f(i));
    return x;
}

/* ---- gradient checks ---------------------------------------------------- */

static const acase CASES[] = {
    {2, 2, 4, 4, 3, 1}, /* causal */
    {2, 2, 4, 4, 3, 0}, /* not causal */
    {1, 1, 1, 1, 1, 1}, /* T = 1, B = H = 1, D = 1, causal */
    {1, 2, 1, 3, 2, 0}, /* T = 1 against three keys */
    {1, 2, 3, 5, 2, 0}, /* T != S */
    {2, 1, 5, 2, 4, 0}, /* T > S */
    {1, 1, 5, 5, 1, 1}, /* B = H = 1, D = 1, causal */
    {1, 1, 6, 6, 1, 0}, /* D = 1 */
    {1, 1, 36, 36, 2, 1}, /* causal over more than one block of 32 rows */
};
#define N_CASES ((int)(sizeof CASES / sizeof CASES[0]))

Test(attention, gradcheck_q_k_v_every_case)
{
    for (int ci = 0; ci < N_CASES; ci++) {
        const acase *a = &CASES[ci];
        char what[128];
        snprintf(what, sizeof what, "case %d: B=%lld H=%lld T=%lld S=%lld D=%lld causal=%d", ci,
                 (long long)a->b, (long long)a->h, (long long)a->t, (long long)a->s,
                 (long long)a->d, a->causal);
        tg_tensor *in[3] = {new4(ctx, TG_F64, a->b, a->h, a->t, a->d),
                            new4(ctx, TG_F64, a->b, a->h, a->s, a->d),
                            new4(ctx, TG_F64, a->b, a->h, a->s, a->d)};
        attn_user u = {a->causal, rnd(ctx, TG_F64, (shp){4, {a->b, a->h, a->t, a->d}}, 0.5, 1.5)};
        gradcheck_ok(ctx, fn_attention, &u, in, 3, what);
        if (a->s > 1) {
            assert_grads_nonzero(ctx, fn_attention_out, &u, in, 3, LOSS_SUM_W, what);
        } else { /* one key: its probability is 1 whatever q and k are */
            for (int j = 0; j < 3; j++) tg_set_requires_grad(in[j], 1);
            tg_backward(ctx, fn_attention(ctx, in, &u));
            cr_assert(tg_ok(ctx), "%s: %s", what, tg_errmsg(ctx));
            cr_assert_neq(grad_at(in[2], 0), 0.0, "%s: v", what);
            for (int j = 0; j < 2; j++)
                for (int64_t i = 0; i < tg_numel(in[j]); i++)
                    cr_assert_eq(grad_at(in[j], i), 0.0, "%s: input %d", what, j);
        }
        tg_reset(ctx);
    }
}

Test(attention, gradcheck_one_tensor_as_q_k_and_v)
{
    for (int causal = 0; causal < 2; causal++) {
        tg_tensor *x = new4(ctx, TG_F64, 2, 2, 4, 3);
        attn_user u = {causal, rnd(ctx, TG_F64, (shp){4, {2, 2, 4, 3}}, 0.5, 1.5)};
        gradcheck_ok(ctx, fn_self_attention, &u, &x, 1, causal ? "self, causal" : "self");
        tg_reset(ctx);
    }
}

/* Only v (or only q, or only k) requires a gradient: it gets the same gradient
 * as when all three do, and the others get none. */
Test(attention, gradient_of_one_input_alone)
{
    for (int causal = 0; causal < 2; causal++)
        for (int only = 0; only < 3; only++) {
            tg_tensor *q = new4(ctx, TG_F64, 2, 3, 5, 4), *k = new4(ctx, TG_F64, 2, 3, 5, 4),
                      *v = new4(ctx, TG_F64, 2, 3, 5, 4);
            tg_tensor *w = rnd(ctx, TG_F64, (shp){4, {2, 3, 5, 4}}, 0.5, 1.5);
            tg_tensor *in[3] = {q, k, v};
            for (int i = 0; i < 3; i++) tg_set_requires_grad(in[i], 1);
            tg_backward(ctx, tg_sum(ctx, tg_mul(ctx, tg_attention(ctx, q, k, v, causal), w)));
            cr_assert(tg_ok(ctx), "%s", tg_errmsg(ctx));
            tg_tensor *alone[3];
            for (int i = 0; i < 3; i++) {
                alone[i] = tg_from(ctx, TG_F64, 4, tg_shape(in[i]), tg_data(in[i]));
                tg_set_requires_grad(alone[i], i == only);
            }
            tg_backward(ctx, tg_sum(ctx, tg_mul(ctx, tg_attention(ctx, alone[0], alone[1],
                                                                  alone[2], causal), w)));
            cr_assert(tg_ok(ctx), "%s", tg_errmsg(ctx));
            for (int i = 0; i < 3; i++) {
                if (i != only) {
                    cr_assert_null(tg_grad(alone[i]), "input %d got a gradient", i);
                    continue;
                }
                cr_assert_eq(memcmp(tg_grad(alone[i]), tg_grad(in[i]),
                                    (size_t)tg_numel(in[i]) * sizeof(double)),
                             0, "input %d alone: another gradient (causal %d)", i, causal);
            }
            tg_reset(ctx);
        }
}

/* ---- values against PyTorch --------------------------------------------- */

static void check_reference(const acase *a, const double *out, const double *dq,
                            const double *dk, const double *dv, const char *name)
{
    tg_tensor *q = filled(ctx, TG_F64, a->b, a->h, a->t, a->d, ref_q);
    tg_tensor *k = filled(ctx, TG_F64, a->b, a->h, a->s, a->d, ref_k);
    tg_tensor *v = filled(ctx, TG_F64, a->b, a->h, a->s, a->d, ref_v);
    tg_tensor *w = filled(ctx, TG_F64, a->b, a->h, a->t, a->d, ref_w);
    tg_set_requires_grad(q, 1), tg_set_requires_grad(k, 1), tg_set_requires_grad(v, 1);
    tg_tensor *y = tg_attention(ctx, q, k, v, a->causal);
    cr_assert_not_null(y, "%s: %s", name, tg_errmsg(ctx));
    tg_backward(ctx, tg_sum(ctx, tg_mul(ctx, y, w)));
    cr_assert(tg_ok(ctx), "%s: %s", name, tg_errmsg(ctx));
    const int64_t nq = a->b * a->h * a->t * a->d, nk = a->b * a->h * a->s * a->d;
    assert_near(y, out, nq, 1e-13, 0, name);
    assert_near(q, dq, nq, 1e-13, 1, name);
    assert_near(k, dk, nk, 1e-13, 1, name);
    assert_near(v, dv, nk, 1e-13, 1, name);
}

Test(attention, values_and_gradients_match_pytorch)
{
    check_reference(&(acase){1, 2, 3, 3, 2, 1}, REF_CAUSAL_OUT, REF_CAUSAL_DQ, REF_CAUSAL_DK,
                    REF_CAUSAL_DV, "causal");
    check_reference(&(acase){2, 1, 2, 4, 3, 0}, REF_CROSS_OUT, REF_CROSS_DQ, REF_CROSS_DK,
                    REF_CROSS_DV, "cross");
}

/* ---- f32 against f64 ---------------------------------------------------- */

/* y32 and its inputs' gradients against the f64 run's, to f32 precision. */
static void assert_f32_near_f64(const tg_tensor *y32, const tg_tensor *y64,
                                tg_tensor *const *x32, tg_tensor *const *x64, int n,
                                const char *what)
{
    for (int64_t i = 0; i < tg_numel(y64); i++)
        cr_assert(fabs(at(y32, i) - at(y64, i)) <= 2e-6 * (1 + fabs(at(y64, i))),
                  "%s out[%lld]: f32 %.9g, f64 %.17g", what, (long long)i, at(y32, i),
                  at(y64, i));
    int nz = 0;
    for (int j = 0; j < n; j++) {
        for (int64_t i = 0; i < tg_numel(x64[j]); i++) {
            cr_assert(fabs(grad_at(x32[j], i) - grad_at(x64[j], i)) <=
                          1e-5 * (1 + fabs(grad_at(x64[j], i))),
                      "%s input %d grad[%lld]: f32 %.9g, f64 %.17g", what, j, (long long)i,
                      grad_at(x32[j], i), grad_at(x64[j], i));
            nz |= grad_at(x64[j], i) != 0;
        }
    }
    cr_assert(nz, "%s: no gradient", what);
}

/* Also the f32 kernel's shapes (D and S multiples of 16): row tiles with tails
 * (T = 21), more than 64 keys (S = 80), D = 48 (a column tile of 16), causal. */
Test(attention, f32_agrees_with_f64)
{
    static const acase cs[] = {{2, 3, 17, 17, 8, 1}, {2, 2, 5, 9, 4, 0}, {1, 1, 1, 1, 1, 1},
                               {2, 1, 21, 32, 16, 0}, {1, 2, 80, 80, 48, 1},
                               {1, 2, 48, 48, 32, 1}, {1, 1, 37, 80, 32, 0}};
    for (int ci = 0; ci < (int)(sizeof cs / sizeof cs[0]); ci++) {
        const acase *a = &cs[ci];
        tg_tensor *x64[3] = {new4(ctx, TG_F64, a->b, a->h, a->t, a->d),
                             new4(ctx, TG_F64, a->b, a->h, a->s, a->d),
                             new4(ctx, TG_F64, a->b, a->h, a->s, a->d)};
        tg_tensor *w64 = rnd(ctx, TG_F64, (shp){4, {a->b, a->h, a->t, a->d}}, 0.5, 1.5);
        tg_tensor *x32[3];
        for (int i = 0; i < 3; i++) {
            x32[i] = convert(ctx, x64[i], TG_F32);
            tg_set_requires_grad(x32[i], 1), tg_set_requires_grad(x64[i], 1);
        }
        tg_tensor *w32 = convert(ctx, w64, TG_F32);
        tg_tensor *y64 = tg_attention(ctx, x64[0], x64[1], x64[2], a->causal);
        tg_tensor *y32 = tg_attention(ctx, x32[0], x32[1], x32[2], a->causal);
        tg_backward(ctx, tg_sum(ctx, tg_mul(ctx, y64, w64)));
        tg_backward(ctx, tg_sum(ctx, tg_mul(ctx, y32, w32)));
        cr_assert(tg_ok(ctx), "%s", tg_errmsg(ctx));
        char what[32];
        snprintf(what, sizeof what, "case %d", ci);
        assert_f32_near_f64(y32, y64, x32, x64, 3, what);
        tg_reset(ctx);
    }
}

/* ---- the causal mask ---------------------------------------------------- */

/* Row i sees keys 0..i only: changing the last key and value leaves every
 * earlier row's output bit for bit as it was, row 0 is v[0] exactly (one
 * probability of exactly 1), and no gradient reaches the last key from the
 * earlier rows' weights. */
Test(attention, causal_rows_ignore_later_keys)
{
    const int64_t B = 2, H = 2, T = 6, D = 3;
    tg_tensor *q = new4(ctx, TG_F64, B, H, T, D), *k = new4(ctx, TG_F64, B, H, T, D),
              *v = new4(ctx, TG_F64, B, H, T, D);
    tg_tensor *y0 = tg_attention(ctx, q, k, v, 1);
    cr_assert_not_null(y0, "%s", tg_errmsg(ctx));
    for (int64_t p = 0; p < B * H; p++) {
        for (int64_t j = 0; j < D; j++) {
            cr_assert_eq(at(y0, p * T * D + j), at(v, p * T * D + j), "pair %lld: row 0 != v[0]",
                         (long long)p);
            set_at(k, p * T * D + (T - 1) * D + j, 100.0 + (double)j);
            set_at(v, p * T * D + (T - 1) * D + j, -7.0);
        }
    }
    tg_tensor *y1 = tg_attention(ctx, q, k, v, 1);
    cr_assert_not_null(y1, "%s", tg_errmsg(ctx));
    for (int64_t p = 0; p < B * H; p++)
        for (int64_t i = 0; i < (T - 1) * D; i++)
            cr_assert_eq(at(y1, p * T * D + i), at(y0, p * T * D + i),
                         "pair %lld element %lld moved", (long long)p, (long long)i);
    /* weights on every row but the last: the last key and value get no gradient */
    tg_set_requires_grad(k, 1), tg_set_requires_grad(v, 1);
    tg_tensor *w = tg_new(ctx, TG_F64, 4, tg_shape(q));
    for (int64_t p = 0; p < B * H; p++)
        for (int64_t i = 0; i < (T - 1) * D; i++) set_at(w, p * T * D + i, 1.0 + 0.1 * (double)i);
    tg_backward(ctx, tg_sum(ctx, tg_mul(ctx, tg_attention(ctx, q, k, v, 1), w)));
    cr_assert(tg_ok(ctx), "%s", tg_errmsg(ctx));
    int nz = 0;
    for (int64_t p = 0; p < B * H; p++)
        for (int64_t j = 0; j < D; j++) {
            cr_assert_eq(grad_at(k, p * T * D + (T - 1) * D + j), 0.0);
            cr_assert_eq(grad_at(v, p * T * D + (T - 1) * D + j), 0.0);
            nz |= grad_at(v, p * T * D + j) != 0;
        }
    cr_assert(nz, "no gradient reached the first value");
}

/* Scores of +-1000 (q and k scaled up): every row's softmax is one-hot at its
 * largest score, nothing overflows, the output is that key's value exactly,
 * and the gradients are finite. */
Test(attention, huge_scores_stay_finite)
{
    for (int causal = 0; causal < 2; causal++) {
        const int64_t T = 4, D = 2;
        int64_t shape[4] = {1, 1, T, D};
        double qv[8], kv[8];
        for (int i = 0; i < T; i++) {
            qv[2 * i] = 40.0, qv[2 * i + 1] = 0.0; /* q . k = 40 k[j,0]: +-1000 */
            kv[2 * i] = i == 1 ? 25.0 : i == 3 ? 20.0 : -25.0, kv[2 * i + 1] = 1.0;
        }
        tg_tensor *q = from_nd(ctx, TG_F64, 4, shape, qv), *k = from_nd(ctx, TG_F64, 4, shape, kv);
        tg_tensor *v = new4(ctx, TG_F64, 1, 1, T, D);
        tg_set_requires_grad(q, 1), tg_set_requires_grad(k, 1), tg_set_requires_grad(v, 1);
        tg_tensor *y = tg_attention(ctx, q, k, v, causal);
        cr_assert_not_null(y, "%s", tg_errmsg(ctx));
        tg_backward(ctx, tg_sum(ctx, y));
        cr_assert(tg_ok(ctx), "%s", tg_errmsg(ctx));
        for (int64_t i = 0; i < T; i++) {
            /* the largest score of row i: key 1 when it is visible, else key 0 */
            const int64_t j = (!causal || i >= 1) ? 1 : 0;
            for (int64_t d = 0; d < D; d++)
                cr_assert_eq(at(y, i * D + d), at(v, j * D + d), "causal %d row %lld", causal,
                             (long long)i);
        }
        for (int64_t i = 0; i < T * D; i++)
            cr_assert(isfinite(grad_at(q, i)) && isfinite(grad_at(k, i)) &&
                      isfinite(grad_at(v, i)));
        tg_reset(ctx);
    }
}

/* Causal row i is the plain attention of query i over keys 0..i: checked row by
 * row against non-causal calls on copies of those keys, on a length that spans
 * several of the blocks the causal products are computed in. */
Test(attention, causal_row_equals_attention_over_its_prefix)
{
    const int64_t T = 37, D = 3;
    tg_tensor *q = new4(ctx, TG_F64, 1, 1, T, D), *k = new4(ctx, TG_F64, 1, 1, T, D),
              *v = new4(ctx, TG_F64, 1, 1, T, D);
    tg_tensor *y = tg_attention(ctx, q, k, v, 1);
    cr_assert_not_null(y, "%s", tg_errmsg(ctx));
    const double *qd = tg_data(q), *kd = tg_data(k), *vd = tg_data(v);
    for (int64_t i = 0; i < T; i++) {
        int64_t s1[4] = {1, 1, 1, D}, sp[4] = {1, 1, i + 1, D};
        tg_tensor *qi = tg_from(ctx, TG_F64, 4, s1, qd + i * D);
        tg_tensor *ki = tg_from(ctx, TG_F64, 4, sp, kd), *vi = tg_from(ctx, TG_F64, 4, sp, vd);
        tg_tensor *yi = tg_attention(ctx, qi, ki, vi, 0);
        cr_assert_not_null(yi, "%s", tg_errmsg(ctx));
        for (int64_t j = 0; j < D; j++)
            cr_assert(fabs(at(yi, j) - at(y, i * D + j)) <= 1e-14, "row %lld: %.17g against %.17g",
                      (long long)i, at(y, i * D + j), at(yi, j));
    }
}

/* ---- threads, modes, memory --------------------------------------------- */

/* forward and backward on a shape large enough to split the pairs over threads;
 * returns the hash of the output and of the three gradients combined */
static uint64_t run_hashed(tg_ctx *c, int threads, int causal)
{
    tg_set_threads(c, threads);
    tg_tensor *q = new4(c, TG_F32, 4, 4, 64, 32), *k = new4(c, TG_F32, 4, 4, 64, 32),
              *v = new4(c, TG_F32, 4, 4, 64, 32);
    tg_tensor *w = rnd(c, TG_F32, (shp){4, {4, 4, 64, 32}}, 0.5, 1.5);
    tg_set_requires_grad(q, 1), tg_set_requires_grad(k, 1), tg_set_requires_grad(v, 1);
    tg_tensor *y = tg_attention(c, q, k, v, causal);
    tg_backward(c, tg_sum(c, tg_mul(c, y, w)));
    cr_assert(tg_ok(c), "%s", tg_errmsg(c));
    uint64_t h = tg_hash(y);
    tg_tensor *in[3] = {q, k, v};
    for (int i = 0; i < 3; i++) {
        tg_tensor *g = tg_from(c, TG_F32, 4, tg_shape(in[i]), tg_grad(in[i]));
        h = h * 1000003u ^ tg_hash(g);
    }
    return h;
}

/* run(ctx, threads, causal) hashes the same bits on fresh contexts of one seed
 * for 1 and 2 threads, causal and not */
static void assert_same_bits_1_2(uint64_t (*run)(tg_ctx *, int, int), uint64_t seed)
{
    for (int causal = 0; causal < 2; causal++) {
        tg_ctx *c1 = tg_ctx_new(seed), *c2 = tg_ctx_new(seed);
        uint64_t h1 = run(c1, 1, causal), h2 = run(c2, 2, causal);
        cr_assert_eq(h1, h2, "causal %d: 1 thread %016llx, 2 threads %016llx", causal,
                     (unsigned long long)h1, (unsigned long long)h2);
        tg_ctx_free(c1), tg_ctx_free(c2);
    }
}

Test(attention, same_bits_for_one_and_two_threads) { assert_same_bits_1_2(run_hashed, 99); }

Test(attention, no_grad_mode_records_nothing_and_gives_the_same_values)
{
    tg_tensor *q = new4(ctx, TG_F64, 1, 2, 4, 3), *k = new4(ctx, TG_F64, 1, 2, 4, 3),
              *v = new4(ctx, TG_F64, 1, 2, 4, 3);
    tg_set_requires_grad(q, 1);
    tg_tensor *y = tg_attention(ctx, q, k, v, 1);
    int64_t len = tg_tape_len(ctx);
    cr_assert_eq(len, 1);
    tg_no_grad(ctx, 1);
    tg_tensor *y2 = tg_attention(ctx, q, k, v, 1);
    tg_no_grad(ctx, 0);
    cr_assert_not_null(y2, "%s", tg_errmsg(ctx));
    cr_assert_eq(tg_tape_len(ctx), len);
    cr_assert_eq(tg_hash(y), tg_hash(y2));
}

/* A warm step (same shapes after tg_reset) takes its memory from the arena as
 * the first did: after the first step (whose chunks the next tg_reset merges
 * into one) the arena does not grow, on one thread or two. */
Test(attention, warm_step_does_not_grow_the_arena)
{
    for (int threads = 1; threads <= 2; threads++) {
        tg_set_threads(ctx, threads);
        uint64_t grows[4];
        for (int step = 0; step < 4; step++) {
            tg_reset(ctx);
            tg_tensor *q = new4(ctx, TG_F32, 4, 4, 64, 32), *k = new4(ctx, TG_F32, 4, 4, 64, 32),
                      *v = new4(ctx, TG_F32, 4, 4, 64, 32);
            tg_set_requires_grad(q, 1), tg_set_requires_grad(k, 1), tg_set_requires_grad(v, 1);
            tg_backward(ctx, tg_sum(ctx, tg_attention(ctx, q, k, v, 1)));
            cr_assert(tg_ok(ctx), "%s", tg_errmsg(ctx));
            tg_mem_stats st;
            tg_mem_stats_get(ctx, &st);
            grows[step] = st.arena_grows;
        }
        cr_assert_eq(grows[2], grows[1], "threads %d: the arena grew in step 3", threads);
        cr_assert_eq(grows[3], grows[2], "threads %d: the arena grew in step 4", threads);
    }
}

Test(attention, empty_batch_gives_an_empty_output)
{
    tg_tensor *q = new4(ctx, TG_F64, 0, 2, 3, 4), *k = new4(ctx, TG_F64, 0, 2, 3, 4);
    tg_tensor *y = tg_attention(ctx, q, k, k, 1);
    cr_assert_not_null(y, "%s", tg_errmsg(ctx));
    cr_assert_eq(tg_numel(y), 0);
    cr_assert_eq(tg_dim(y, 3), 4);
}

/* ---- bad arguments ------------------------------------------------------ */

/* each call must fail with fn's name and the given pieces, record nothing and
 * leave no gradient anywhere */
static void expect_fail(tg_tensor *q, tg_tensor *k, tg_tensor *v, int causal, const char *s1,
                        const char *s2)
{
    int64_t len = tg_tape_len(ctx);
    tg_tensor *y = tg_attention(ctx, q, k, v, causal);
    cr_assert_eq(tg_tape_len(ctx), len, "a failing call recorded a node");
    assert_null_err(ctx, y, "tg_attention", s1, s2);
}

Test(attention, bad_arguments_name_the_problem_and_change_nothing)
{
    tg_tensor *q = new4(ctx, TG_F64, 2, 3, 4, 5), *k = new4(ctx, TG_F64, 2, 3, 6, 5);
    tg_set_requires_grad(q, 1);
    int64_t s3[3] = {3, 4, 5}, s_i[4] = {2, 3, 4, 5};
    tg_tensor *q3 = tg_new(ctx, TG_F64, 3, s3);
    expect_fail(q3, k, k, 0, "must be 4-D", "q is [3,4,5]");
    expect_fail(q, k, q3, 0, "must be 4-D", "v is [3,4,5]");
    expect_fail(q, new4(ctx, TG_F64, 1, 3, 6, 5), k, 0, "differ in B", "k is [1,3,6,5]");
    expect_fail(q, k, new4(ctx, TG_F64, 2, 2, 6, 5), 0, "differ in H", "v is [2,2,6,5]");
    expect_fail(q, new4(ctx, TG_F64, 2, 3, 6, 4), k, 0, "differ in D", "k is [2,3,6,4]");
    expect_fail(q, k, new4(ctx, TG_F64, 2, 3, 7, 5), 0, "same number of positions S",
                "v is [2,3,7,5]");
    expect_fail(q, k, k, 1, "causal attention needs T == S", "T = 4");
    expect_fail(new4(ctx, TG_F64, 2, 3, 4, 0), new4(ctx, TG_F64, 2, 3, 4, 0),
                new4(ctx, TG_F64, 2, 3, 4, 0), 0, "at least 1", NULL);
    expect_fail(q, new4(ctx, TG_F64, 2, 3, 0, 5), new4(ctx, TG_F64, 2, 3, 0, 5), 0,
                "at least 1", "k is [2,3,0,5]");
    expect_fail(q, convert(ctx, k, TG_F32), k, 0, "f32", "f64");
    expect_fail(tg_new(ctx, TG_I32, 4, s_i), k, k, 0, "must be f32 or f64", NULL);
    expect_fail(NULL, k, k, 0, "argument q is NULL", NULL);
    expect_fail(q, k, NULL, 0, "argument v is NULL", NULL);
    cr_assert_null(tg_grad(q), "a failing call left a gradient");
    /* while an error is recorded, a NULL argument returns NULL at once */
    tg_set_error(ctx, "earlier error");
    cr_assert_null(tg_attention(ctx, NULL, k, k, 0));
    cr_assert_str_eq(tg_errmsg(ctx), "earlier error");
    tg_clear_error(ctx);
    cr_assert_null(tg_attention(NULL, q, k, k, 0));
}

/* ---- tgi_self_attention ------------------------------------------------- */

typedef struct {
    int64_t b, h;
    int causal;
    tg_tensor *w;
} sa_user;

static tg_tensor *fn_fused(tg_ctx *c, tg_tensor *const *in, void *user)
{
    sa_user *u = user;
    return tg_sum(c, tg_mul(c, tgi_self_attention(c, "test", in[0], u->b, u->h, u->causal), u->w));
}

static tg_tensor *fn_fused_out(tg_ctx *c, tg_tensor *const *in, void *user)
{
    sa_user *u = user;
    return tgi_self_attention(c, "test", in[0], u->b, u->h, u->causal);
}

/* the composed path: qkv [B*T,3E] -> [B,T,3H,D] -> [B,3H,T,D], q k v sliced,
 * tg_attention, [B,H,T,D] -> [B,T,H,D] -> [B*T,E] */
static tg_tensor *fn_composed(tg_ctx *c, tg_tensor *const *in, void *user)
{
    sa_user *u = user;
    static const int swap12[4] = {0, 2, 1, 3};
    const int64_t rows = tg_shape(in[0])[0], e = tg_shape(in[0])[1] / 3, t = rows / u->b;
    const int64_t split[4] = {u->b, t, 3 * u->h, e / u->h}, merged[2] = {rows, e};
    tg_tensor *heads = tg_permute(c, tg_reshape(c, in[0], 4, split), swap12);
    tg_tensor *att = tg_attention(c, tg_slice(c, heads, 1, 0, u->h),
                                  tg_slice(c, heads, 1, u->h, 2 * u->h),
                                  tg_slice(c, heads, 1, 2 * u->h, 3 * u->h), u->causal);
    return tg_reshape(c, tg_permute(c, att, swap12), 2, merged);
}

/* {B, T, H, D}: edge shapes (T = 1, one head, D = 1) and more than one causal block */
static const int64_t SA_CASES[][4] = {{2, 4, 2, 3}, {1, 1, 1, 1}, {2, 5, 1, 2}, {1, 3, 3, 1},
                                      {1, 36, 2, 2}};
#define N_SA_CASES ((int)(sizeof SA_CASES / sizeof SA_CASES[0]))

Test(attention, self_attention_gradcheck)
{
    for (int ci = 0; ci < N_SA_CASES; ci++)
        for (int causal = 0; causal < 2; causal++) {
            const int64_t b = SA_CASES[ci][0], t = SA_CASES[ci][1], h = SA_CASES[ci][2],
                          e = h * SA_CASES[ci][3];
            char what[96];
            snprintf(what, sizeof what, "B=%lld T=%lld H=%lld E=%lld causal=%d", (long long)b,
                     (long long)t, (long long)h, (long long)e, causal);
            tg_tensor *qkv = rnd(ctx, TG_F64, (shp){2, {b * t, 3 * e}}, -1.5, 1.5);
            sa_user u = {b, h, causal, rnd(ctx, TG_F64, (shp){2, {b * t, e}}, 0.5, 1.5)};
            gradcheck_ok(ctx, fn_fused, &u, &qkv, 1, what);
            if (t > 1) assert_grads_nonzero(ctx, fn_fused_out, &u, &qkv, 1, LOSS_SUM_W, what);
            tg_reset(ctx);
        }
}

/* The fused node gives the composed path's values and gradients (f64, to rounding),
 * also when qkv already has a gradient (the backward adds instead of assigning). */
Test(attention, self_attention_equals_split_attention_merge)
{
    for (int causal = 0; causal < 2; causal++) {
        const int64_t b = 2, t = 7, h = 3, e = 6;
        tg_tensor *qkv = rnd(ctx, TG_F64, (shp){2, {b * t, 3 * e}}, -1.5, 1.5);
        tg_tensor *w = rnd(ctx, TG_F64, (shp){2, {b * t, e}}, 0.5, 1.5);
        sa_user u = {b, h, causal, w};
        tg_set_requires_grad(qkv, 1);
        tg_tensor *y1 = fn_fused_out(ctx, &qkv, &u), *y2 = fn_composed(ctx, &qkv, &u);
        cr_assert(tg_ok(ctx), "%s", tg_errmsg(ctx));
        for (int64_t i = 0; i < tg_numel(y1); i++)
            cr_assert(fabs(at(y1, i) - at(y2, i)) <= 1e-14, "causal %d: y[%lld] %.17g vs %.17g",
                      causal, (long long)i, at(y1, i), at(y2, i));
        double g1[3 * 2 * 7 * 6], g2[3 * 2 * 7 * 6];
        tg_backward(ctx, tg_sum(ctx, tg_mul(ctx, y2, w)));
        for (int64_t i = 0; i < tg_numel(qkv); i++) g2[i] = grad_at(qkv, i);
        /* the fused node adds into the gradient the composed path left */
        tg_backward(ctx, tg_sum(ctx, tg_mul(ctx, y1, w)));
        for (int64_t i = 0; i < tg_numel(qkv); i++) g1[i] = grad_at(qkv, i) - g2[i];
        for (int64_t i = 0; i < tg_numel(qkv); i++)
            cr_assert(fabs(g1[i] - g2[i]) <= 1e-13, "causal %d: dqkv[%lld] %.17g vs %.17g",
                      causal, (long long)i, g1[i], g2[i]);
        tg_reset(ctx);
    }
}

/* The fused layout in f32 (q, k, v rows 3E apart, the output's E apart) against
 * f64: D = 32 and 48, causal and not. */
Test(attention, self_attention_f32_agrees_with_f64)
{
    for (int ci = 0; ci < 4; ci++) {
        const int64_t b = 2, t = 48, h = 2, e = ci < 2 ? 64 : 96;
        const int causal = ci % 2;
        tg_tensor *x64 = rnd(ctx, TG_F64, (shp){2, {b * t, 3 * e}}, -1.5, 1.5);
        tg_tensor *w64 = rnd(ctx, TG_F64, (shp){2, {b * t, e}}, 0.5, 1.5);
        tg_tensor *x32 = convert(ctx, x64, TG_F32), *w32 = convert(ctx, w64, TG_F32);
        tg_set_requires_grad(x64, 1), tg_set_requires_grad(x32, 1);
        tg_tensor *y64 = tgi_self_attention(ctx, "test", x64, b, h, causal);
        tg_tensor *y32 = tgi_self_attention(ctx, "test", x32, b, h, causal);
        tg_backward(ctx, tg_sum(ctx, tg_mul(ctx, y64, w64)));
        tg_backward(ctx, tg_sum(ctx, tg_mul(ctx, y32, w32)));
        cr_assert(tg_ok(ctx), "%s", tg_errmsg(ctx));
        char what[48];
        snprintf(what, sizeof what, "E %lld causal %d", (long long)e, causal);
        assert_f32_near_f64(y32, y64, &x32, &x64, 1, what);
        tg_reset(ctx);
    }
}

static uint64_t sa_hashed(tg_ctx *c, int threads, int causal)
{
    tg_set_threads(c, threads);
    tg_tensor *qkv = rnd(c, TG_F32, (shp){2, {4 * 64, 3 * 128}}, -1.5, 1.5);
    tg_tensor *w = rnd(c, TG_F32, (shp){2, {4 * 64, 128}}, 0.5, 1.5);
    tg_set_requires_grad(qkv, 1);
    tg_tensor *y = tgi_self_attention(c, "test", qkv, 4, 4, causal);
    tg_backward(c, tg_sum(c, tg_mul(c, y, w)));
    cr_assert(tg_ok(c), "%s", tg_errmsg(c));
    tg_tensor *g = tg_from(c, TG_F32, 2, tg_shape(qkv), tg_grad(qkv));
    return tg_hash(y) * 1000003u ^ tg_hash(g);
}

Test(attention, self_attention_same_bits_for_one_and_two_threads)
{
    assert_same_bits_1_2(sa_hashed, 7);
}

Test(attention, self_attention_bad_arguments)
{
    tg_tensor *qkv = rnd(ctx, TG_F64, (shp){2, {6, 12}}, -1, 1);
    tg_tensor *q3 = rnd(ctx, TG_F64, (shp){3, {2, 3, 12}}, -1, 1);
    tg_set_requires_grad(qkv, 1);
    const struct {
        tg_tensor *x;
        int64_t b, h;
        const char *what;
    } bad[] = {{q3, 2, 2, "qkv is [2,3,12]"}, {qkv, 4, 2, "B 4"}, {qkv, 2, 3, "H 3"},
               {qkv, 0, 2, "B 0"},            {qkv, 2, 0, "H 0"},
               {rnd(ctx, TG_F64, (shp){2, {6, 10}}, -1, 1), 2, 1, "qkv is [6,10]"}};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        int64_t len = tg_tape_len(ctx);
        tg_tensor *y = tgi_self_attention(ctx, "tg_x", bad[i].x, bad[i].b, bad[i].h, 1);
        cr_assert_eq(tg_tape_len(ctx), len, "a failing call recorded a node");
        assert_null_err(ctx, y, "tg_x", "must be [B*T,3E]", bad[i].what);
    }
    cr_assert_null(tg_grad(qkv), "a failing call left a gradient");
}
