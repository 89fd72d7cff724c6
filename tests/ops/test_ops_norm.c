/* SPDX-License-Identifier: MIT */
/* tests/ops/test_ops_norm.c: tg_layer_norm, tg_batch_norm, tg_dropout.
 * Gradient checks in f64 through random-weighted projections sum(r * y) of
 * every input (x, weight, bias) of both norms, in training and eval, with and
 * without weight and bias, on [N,C] and [N,C,H,W], a batch of 1 and odd
 * sizes; values, gradients and running statistics after several steps
 * against PyTorch (tests/ops/norm_reference.py prints the arrays below);
 * dropout's statistics, scaling, mask and gradient; f32 against f64; and
 * every bad argument, which must leave everything as it was. */
#include <criterion/criterion.h>

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "tapegrad.h"
#include "tg_test.h"

TG_TEST_SUITE(norm, 20261203); /* ctx: a fresh context per test */

/* ---- PyTorch reference values (tests/ops/norm_reference.py) ------------- */

static const double LN_Y[15] = {
    -0.7922562411289189, -0.11165274667229111, 0.96471204415585265, 0.80013481382245999,
    -1.0923721170041503, 0.92056005082274028, -0.63593419055948253, -1.6550513352575882,
    -0.054848416244698946, 0.35490310614493803, 0.29215910735480766, 1.5909052405229596,
    0.3126403427028569, -0.57737245108182689, -1.3523105142756724};
static const double LN_DX[15] = {
    1.2990283682984389, 1.1804501108943708, 0.22387017958745781, -0.78985293996926897,
    -1.9134957188109987, -0.27728607730348132, 0.083886701420913562, -0.15050996425374105,
    0.40080437850044426, -0.056895038364135841, -0.92514888013387542, -0.0019666020677699958,
    0.32423088494201791, 0.75802409706885054, -0.15513949980922292};
static const double LN_DW[5] = {
    -1.3178847661749111, -1.4850882458141772, -1.9157741476506118, -0.68673545350275311,
    -1.5993725694180405};
static const double LN_DB[5] = {
    1.3780739386845435, 1.8671116915879382, 2.0783266352349932, 1.8518755111690708,
    1.3591320154310667};
static const double BN4_Y[36] = {
    2.2164541841780578, 0.83586225102305878, -0.037534062098836064, -0.47820560762157299,
    -1.0914348214441982, -0.020819598502627309, -0.4051917470052353, 0.33831290470346947,
    1.6436135090801329, 0.74796980894963916, -0.54176146463552788, -1.3165753195017269,
    -1.3631653605259288, -1.1915258562549205, -0.49955219503909748, -0.084777978935792489,
    1.0909803392214135, 1.3034519048034243, 1.6202080008752497, 1.2833977357918755,
    -0.18118658721651495, -0.86523968096384396, -0.48877581777170148, -0.39272599624894672,
    -0.38209791401528159, 1.0038947996023835, 0.86669075361379833, 1.1250352435969257,
    -0.38913723050493615, -2.0907533438836472, -0.93079020222813136, -1.3374814872058403,
    -0.69906498898617964, 0.43066502367891879, 0.72378498152255544, 1.3574758199495796};
static const double BN4_DX[36] = {
    0.77484887949015135, 0.53992873926749918, -0.23020292526518055, -0.87230343723534398,
    -0.79778639274098639, -0.2152991440588044, 0.865704342783573, 1.2849476466015286,
    0.60486149136699385, -0.46520169909739612, -1.2392764220461803, -1.1242054842768425,
    -0.061607525236991402, 0.63013402444056443, 0.85815941061682344, 0.47685992869278671,
    -0.35829020348345553, -0.93312764860833275, -1.0786211309450091, -0.32427824282415235,
    0.69061997326689928, 1.1105434346005394, 0.64369472135203143, -0.24114447490764299,
    -1.2750853995268951, -1.3569330917728837, -0.36534761125101906, 0.75019515031734352,
    1.3618291489575101, 0.95851192794426832, -0.18649067081656404, -0.68397002547339547,
    -0.69145927975862476, -0.19633626301629545, 0.47325414287728845, 0.67287410976619633};
static const double BN4_DW[3] = {
    1.2867237834979142, 1.0077187050896104, 1.4033368631285394};
static const double BN4_DB[3] = {
    6.2879493403627889, 6.4781708538016733, 6.3190339284198691};
static const double BN4_RM[3] = {
    0.076534358156297805, 0.14395761751942251, -0.041585053662229851};
static const double BN4_RV[3] = {
    1.0221881365823826, 1.0019282409211796, 1.0321146023442198};
static const double BN4_EVAL[36] = {
    0.78044011675198088, -0.60275992469604134, -0.79903747909484835, -0.18669516105866971,
    0.1582298639552886, 1.59423729861713, 2.1084072726613288, 1.7177778011871254,
    1.6001524476156452, 0.16722088811707117, -0.84723394333637692, -0.73477577790726567,
    -0.82418706948934506, 0.30320624314366573, 1.4916270020538649, 1.6300556750211252,
    2.0956311538082959, 1.2996074280634859, 0.18307584521591624, -0.15205106243209821,
    -0.89377612554829644, -0.51052785756494501, 0.77696907813664529, 1.2343958837789049,
    2.0911350369011363, 2.1725296616123373, 0.95769152933781476, 0.4362557623872409,
    -0.71194018486269228, -1.279180038478781, -0.26739816442019754, 0.16593667213242203,
    1.2582820834190331, 2.1993900183382293, 1.6150594647047594, 1.3179943042877698};
static const double BN2_Y[12] = {
    1.256919180401046, 0.38522599935977431, -0.77808384177938095, -1.3538042390345251,
    -1.6968145813226256, -0.76214344707019199, 0.033034415696625997, 1.1092929720921998,
    1.619786433542209, 0.86385064293685332, 0.4022956098706516, -0.47955914469263589};
static const double BN2_DX[12] = {
    0.29494042683392402, 0.52572255371029752, 0.23036652008916203, -0.17149862119799089,
    0.16002987351196435, 0.23982189612768073, 0.59728659229906844, 0.48787267954518798,
    0.065046666175565412, -0.72072839793500176, -1.1736251067674499, -0.53523508239240825};
static const double BN2_DW[3] = {
    2.1940214971342118, 2.3933395578344552, 1.6773740974117064};
static const double BN2_DB[3] = {
    2.4870765801897825, 1.8135799264352555, 1.2811622677830268};
static const double BN2_RM[3] = {
    0.41628226344313157, 0.14840371558020757, 0.32386346106846026};
static const double BN2_RV[3] = {
    1.2708412819442156, 1.3011984492453301, 1.2813200679074337};
static const double BN2_EVAL[12] = {
    0.41919162960836875, -0.7632379373513144, -1.2108128916473102, -0.44818437190009469,
    -0.055027645980257285, 0.92680264621294395, 1.6990965892579333, 1.5093821716760667,
    1.0465613484046503, 0.057558183282673529, -0.74141518760600356, -0.91984923794382856};

/* the closed forms of norm_reference.py */
static double fx(int64_t i, int t)
{
    return 1.5 * sin(0.7 * (double)i + 1.1 * t) + 0.3 * cos(2.3 * (double)i) + 0.2 * t;
}
static double fw(int64_t j) { return 1 + 0.1 * (double)j - 0.05 * (double)(j * j); }
static double fb(int64_t j) { return 0.2 - 0.15 * (double)j; }
static double fr(int64_t i) { return cos(0.9 * (double)i) + 0.5; }

/* a tensor of dtype dt and shape s filled with f(i) (f(i, t) for fx) */
static tg_tensor *formula(tg_dtype dt, shp s, double (*f)(int64_t))
{
    tg_tensor *t = tg_new(ctx, dt, s.ndim, s.shape);
    cr_assert_not_null(t, "%s", tg_errmsg(ctx));
    for (int64_t i = 0; i < tg_numel(t); i++) set_at(t, i, f(i));
    return t;
}
static tg_tensor *formula_x(tg_dtype dt, shp s, int step)
{
    tg_tensor *t = tg_new(ctx, dt, s.ndim, s.shape);
    cr_assert_not_null(t, "%s", tg_errmsg(ctx));
    for (int64_t i = 0; i < tg_numel(t); i++) set_at(t, i, fx(i, step));
    return t;
}

/* ---- the ops as tg_fn: sum(r * op(inputs)) ------------------------------ */

typedef struct {
    int has_w, has_b;       /* inputs: x, then weight, then bias when present */
    int training;           /* batch norm */
    tg_tensor *rm, *rv;     /* batch norm's running statistics (eval) */
    tg_tensor *r;           /* the projection weights, y's shape */
    double p;               /* dropout */
} ncase;

static void optional_inputs(const ncase *k, tg_tensor *const *in, tg_tensor **w, tg_tensor **b)
{
    int i = 1;
    *w = k->has_w ? in[i++] : NULL;
    *b = k->has_b ? in[i++] : NULL;
}

static tg_tensor *fn_ln(tg_ctx *c, tg_tensor *const *in, void *user)
{
    const ncase *k = user;
    tg_tensor *w, *b;
    optional_inputs(k, in, &w, &b);
    return tg_sum(c, tg_mul(c, tg_layer_norm(c, in[0], w, b, 1e-5), k->r));
}

static tg_tensor *fn_bn(tg_ctx *c, tg_tensor *const *in, void *user)
{
    const ncase *k = user;
    tg_tensor *w, *b;
    optional_inputs(k, in, &w, &b);
    tg_tensor *y = tg_batch_norm(c, in[0], k->training ? NULL : k->rm, k->training ? NULL : k->rv,
                                 w, b, k->training, 0.1, 1e-5);
    return tg_sum(c, tg_mul(c, y, k->r));
}

/* dropout with the generator reseeded, so every call draws the same mask */
static tg_tensor *fn_dropout(tg_ctx *c, tg_tensor *const *in, void *user)
{
    const ncase *k = user;
    tg_seed(c, 99);
    return tg_sum(c, tg_mul(c, tg_dropout(c, in[0], k->p, 1), k->r));
}

/* gradcheck fn on x [s] with weight/bias [nfeat] as k says, then assert that
 * each input received a non-zero gradient (nonzero_x: also x's) */
static void check_case(tg_fn fn, ncase *k, shp s, int64_t nfeat, int nonzero_x, const char *what)
{
    tg_tensor *in[3];
    int n = 0;
    in[n++] = rnd(ctx, TG_F64, s, -2, 2);
    if (k->has_w) in[n++] = rand1(ctx, TG_F64, nfeat, 0.5, 1.5);
    if (k->has_b) in[n++] = rand1(ctx, TG_F64, nfeat, -1, 1);
    k->r = rnd(ctx, TG_F64, s, -1.5, 1.5);
    gradcheck_ok(ctx, fn, k, in, n, what);
    if (nonzero_x) {
        assert_grads_nonzero(ctx, fn, k, in, n, LOSS_SELF, what);
        return;
    }
    /* D = 1: xh = 0, so only the bias has a gradient */
    for (int i = 0; i < n; i++) tg_set_requires_grad(in[i], 1);
    tg_backward(ctx, fn(ctx, in, k));
    int nz = 0;
    for (int64_t j = 0; j < tg_numel(in[n - 1]); j++) nz |= grad_at(in[n - 1], j) != 0;
    cr_assert(nz || !k->has_b, "%s: the bias got an all-zero gradient", what);
}

/* ---- layer norm ----------------------------------------------------------- */

static const shp LN_SHAPES[] = {
    {2, {3, 5}},        /* rows */
    {2, {1, 7}},        /* a batch of 1 */
    {1, {6}},           /* one row, 1-D */
    {3, {2, 3, 5}},     /* odd sizes, 3-D */
    {4, {2, 1, 3, 4}},  /* 4-D */
    {2, {4, 1}},        /* D = 1: y = b, dx = 0 */
    {2, {2, 19}},       /* the 8-lane vector loops and a tail of 3 */
};

Test(norm, layer_norm_gradcheck_every_input)
{
    for (size_t s = 0; s < sizeof LN_SHAPES / sizeof LN_SHAPES[0]; s++)
        for (int wb = 0; wb < 4; wb++) {
            shp sh = LN_SHAPES[s];
            ncase k = {.has_w = wb & 1, .has_b = wb >> 1};
            char what[96];
            snprintf(what, sizeof what, "layer_norm shape %zu weight %d bias %d", s, k.has_w,
                     k.has_b);
            check_case(fn_ln, &k, sh, sh.shape[sh.ndim - 1], sh.shape[sh.ndim - 1] > 1, what);
            tg_reset(ctx);
        }
}

/* y = layer_norm(x, w, b) with all three requiring grad, then backward from
 * sum(r * y); returns y */
static tg_tensor *ln_with_grads(tg_tensor *x, tg_tensor *w, tg_tensor *b, tg_tensor *r)
{
    tg_set_requires_grad(x, 1);
    tg_set_requires_grad(w, 1);
    tg_set_requires_grad(b, 1);
    tg_tensor *y = tg_layer_norm(ctx, x, w, b, 1e-5);
    tg_backward(ctx, tg_sum(ctx, tg_mul(ctx, y, r)));
    cr_assert(tg_ok(ctx), "%s", tg_errmsg(ctx));
    return y;
}

Test(norm, layer_norm_matches_pytorch)
{
    tg_tensor *x = formula_x(TG_F64, (shp){2, {3, 5}}, 0);
    tg_tensor *w = formula(TG_F64, (shp){1, {5}}, fw), *b = formula(TG_F64, (shp){1, {5}}, fb);
    tg_tensor *y = ln_with_grads(x, w, b, formula(TG_F64, (shp){2, {3, 5}}, fr));
    assert_near(y, LN_Y, 15, 1e-13, 0, "y");
    assert_near(x, LN_DX, 15, 1e-12, 1, "dx");
    assert_near(w, LN_DW, 5, 1e-12, 1, "dw");
    assert_near(b, LN_DB, 5, 1e-12, 1, "db");
}

/* rows with a mean of 1e6 and a spread of 1: the shifted statistics do not
 * cancel (E[x^2] - E[x]^2 would lose every digit of an f32 variance here) */
Test(norm, layer_norm_large_offset)
{
    for (int d = 0; d < 2; d++) {
        tg_dtype dt = d ? TG_F32 : TG_F64;
        tg_tensor *x = tg_new(ctx, dt, 2, (int64_t[]){2, 64});
        for (int64_t i = 0; i < 128; i++) set_at(x, i, 1e6 + sin(1.7 * (double)i));
        tg_tensor *y = tg_layer_norm(ctx, x, NULL, NULL, 0);
        cr_assert_not_null(y, "%s", tg_errmsg(ctx));
        for (int r = 0; r < 2; r++) { /* two-pass reference in double, on x as stored */
            double m = 0, v = 0;
            for (int j = 0; j < 64; j++) m += at(x, r * 64 + j) / 64;
            for (int j = 0; j < 64; j++)
                v += (at(x, r * 64 + j) - m) * (at(x, r * 64 + j) - m) / 64;
            for (int j = 0; j < 64; j++) {
                double want = (at(x, r * 64 + j) - m) / sqrt(v);
                cr_assert(fabs(at(y, r * 64 + j) - want) < (d ? 1e-5 : 1e-9),
                          "%s [%d,%d]: %g vs %g", tg_dtype_name(dt), r, j, at(y, r * 64 + j), want);
            }
        }
    }
}

/* rows with a mean of 1e6 in f32 through batch norm too (the channel's
 * first value is its shift) */
Test(norm, batch_norm_large_offset)
{
    tg_tensor *x = tg_new(ctx, TG_F32, 2, (int64_t[]){64, 2});
    for (int64_t i = 0; i < 128; i++) set_at(x, i, 1e6 + sin(1.7 * (double)i));
    tg_tensor *y = tg_batch_norm(ctx, x, NULL, NULL, NULL, NULL, 1, 0.1, 0);
    cr_assert_not_null(y, "%s", tg_errmsg(ctx));
    for (int c = 0; c < 2; c++) {
        double m = 0, v = 0;
        for (int n = 0; n < 64; n++) m += at(x, n * 2 + c) / 64;
        for (int n = 0; n < 64; n++) v += (at(x, n * 2 + c) - m) * (at(x, n * 2 + c) - m) / 64;
        for (int n = 0; n < 64; n++) {
            double want = (at(x, n * 2 + c) - m) / sqrt(v);
            cr_assert(fabs(at(y, n * 2 + c) - want) < 1e-5, "[%d,%d]: %g vs %g", n, c,
                      at(y, n * 2 + c), want);
        }
    }
}

/* ---- all three: empty tensors, and backward adds ---------------------------- */

Test(norm, empty_tensors)
{
    tg_tensor *x = tg_new(ctx, TG_F64, 2, (int64_t[]){0, 5});
    tg_set_requires_grad(x, 1);
    tg_tensor *ys[3] = {tg_layer_norm(ctx, x, NULL, NULL, 1e-5),
                        tg_batch_norm(ctx, x, rand1(ctx, TG_F64, 5, 0, 1),
                                      rand1(ctx, TG_F64, 5, 1, 2), NULL, NULL, 0, 0.1, 1e-5),
                        tg_dropout(ctx, x, 0.5, 1)};
    for (int k = 0; k < 3; k++) {
        cr_assert_not_null(ys[k], "op %d: %s", k, tg_errmsg(ctx));
        cr_assert_eq(tg_numel(ys[k]), 0);
        tg_backward(ctx, tg_sum(ctx, ys[k]));
        cr_assert(tg_ok(ctx), "op %d: %s", k, tg_errmsg(ctx));
    }
}

/* x feeds the op twice (y = op(x) + x) and backward runs twice: every
 * gradient is exactly twice the first one */
static tg_tensor *fn_ln_plus_x(tg_ctx *c, tg_tensor *const *in, void *user)
{
    (void)user;
    return tg_add(c, tg_layer_norm(c, in[0], in[1], in[2], 1e-5), in[0]);
}
static tg_tensor *fn_bn_plus_x(tg_ctx *c, tg_tensor *const *in, void *user)
{
    (void)user;
    return tg_add(c, tg_batch_norm(c, in[0], NULL, NULL, in[1], in[2], 1, 0.1, 1e-5), in[0]);
}

Test(norm, backward_adds_into_gradients)
{
    tg_fn fns[2] = {fn_ln_plus_x, fn_bn_plus_x};
    for (int k = 0; k < 2; k++) {
        tg_tensor *in[3] = {rnd(ctx, TG_F64, (shp){2, {6, 4}}, -2, 2),
                            rand1(ctx, TG_F64, 4, 0.5, 1.5), rand1(ctx, TG_F64, 4, -1, 1)};
        for (int i = 0; i < 3; i++) tg_set_requires_grad(in[i], 1);
        tg_tensor *r = rnd(ctx, TG_F64, (shp){2, {6, 4}}, -1, 1);
        tg_tensor *loss = tg_sum(ctx, tg_mul(ctx, fns[k](ctx, in, NULL), r));
        tg_backward(ctx, loss);
        double first[3][24];
        for (int i = 0; i < 3; i++)
            for (int64_t j = 0; j < tg_numel(in[i]); j++) first[i][j] = grad_at(in[i], j);
        tg_backward(ctx, loss);
        for (int i = 0; i < 3; i++)
            for (int64_t j = 0; j < tg_numel(in[i]); j++)
                cr_assert(fabs(grad_at(in[i], j) - 2 * first[i][j]) < 1e-12,
                          "op %d input %d [%lld]", k, i, (long long)j);
        in[0] = rnd(ctx, TG_F64, (shp){2, {6, 4}}, -2, 2); /* and the gradcheck of the sum */
        gradcheck_ok(ctx, fns[k], NULL, in, 3, k ? "batch_norm + x" : "layer_norm + x");
        tg_reset(ctx);
    }
}

/* layer norm splits rows over threads (forward) and blocks of rows
 * (backward): 1 and 2 threads give the same bits */
Test(norm, layer_norm_same_bits_on_1_and_2_threads)
{
    /* 90300 elements: above the threading threshold; f64, where a different
     * order of the double sums would show */
    const int64_t sh[2] = {300, 301};
    uint64_t h[2][4];
    for (int k = 0; k < 2; k++) {
        tg_reset(ctx);
        tg_seed(ctx, 4);
        tg_set_threads(ctx, k + 1);
        tg_tensor *x = rnd(ctx, TG_F64, (shp){2, {sh[0], sh[1]}}, -2, 2);
        tg_tensor *w = rand1(ctx, TG_F64, sh[1], 0.5, 1.5), *b = rand1(ctx, TG_F64, sh[1], -1, 1);
        tg_tensor *y = ln_with_grads(x, w, b, rnd(ctx, TG_F64, (shp){2, {sh[0], sh[1]}}, -1, 1));
        tg_tensor *gx = tg_from(ctx, TG_F64, 2, sh, tg_grad(x));
        tg_tensor *gw = tg_from(ctx, TG_F64, 1, &sh[1], tg_grad(w));
        tg_tensor *gb = tg_from(ctx, TG_F64, 1, &sh[1], tg_grad(b));
        h[k][0] = tg_hash(y);
        h[k][1] = tg_hash(gx);
        h[k][2] = tg_hash(gw);
        h[k][3] = tg_hash(gb);
    }
    for (int i = 0; i < 4; i++) cr_assert_eq(h[0][i], h[1][i], "result %d differs", i);
}

/* ---- batch norm ----------------------------------------------------------- */

static const shp BN_SHAPES[] = {
    {2, {4, 3}},        /* [N,C] */
    {2, {2, 1}},        /* two values per channel, the fewest training takes */
    {4, {2, 3, 2, 3}},  /* [N,C,H,W] */
    {4, {1, 2, 3, 3}},  /* a batch of 1 (H W values per channel) */
    {4, {3, 2, 1, 5}},  /* odd sizes */
};

Test(norm, batch_norm_gradcheck_every_input_both_modes)
{
    for (size_t s = 0; s < sizeof BN_SHAPES / sizeof BN_SHAPES[0]; s++)
        for (int mode = 0; mode < 2; mode++)
            for (int wb = 0; wb < 4; wb++) {
                shp sh = BN_SHAPES[s];
                int64_t ch = sh.shape[1];
                ncase k = {.has_w = wb & 1, .has_b = wb >> 1, .training = mode};
                k.rm = rand1(ctx, TG_F64, ch, -0.5, 0.5);
                k.rv = rand1(ctx, TG_F64, ch, 0.5, 1.5);
                char what[96];
                snprintf(what, sizeof what, "batch_norm shape %zu %s weight %d bias %d", s,
                         mode ? "training" : "eval", k.has_w, k.has_b);
                check_case(fn_bn, &k, sh, ch, 1, what);
                tg_reset(ctx);
            }
}

/* three training steps (running statistics updated), the gradients of the
 * last, then an eval forward with the running statistics */
static void bn_reference(shp s, double mom, const double *want_y, const double *want_dx,
                         const double *want_dw, const double *want_db, const double *want_rm,
                         const double *want_rv, const double *want_eval)
{
    int64_t ch = s.shape[1], n = 1;
    for (int i = 0; i < s.ndim; i++) n *= s.shape[i];
    tg_tensor *rm = tg_param(ctx, "rm", TG_F64, 1, &ch), *rv = tg_param(ctx, "rv", TG_F64, 1, &ch);
    tg_fill(rv, 1);
    tg_set_requires_grad(rm, 0);
    tg_set_requires_grad(rv, 0);
    tg_tensor *w = tg_param(ctx, "w", TG_F64, 1, &ch), *b = tg_param(ctx, "b", TG_F64, 1, &ch);
    for (int64_t j = 0; j < ch; j++) {
        set_at(w, j, fw(j));
        set_at(b, j, fb(j));
    }
    tg_tensor *x = NULL, *y = NULL;
    for (int t = 0; t < 3; t++) {
        tg_reset(ctx);
        x = formula_x(TG_F64, s, t);
        tg_set_requires_grad(x, 1);
        y = tg_batch_norm(ctx, x, rm, rv, w, b, 1, mom, 1e-5);
        cr_assert_not_null(y, "%s", tg_errmsg(ctx));
    }
    tg_backward(ctx, tg_sum(ctx, tg_mul(ctx, y, formula(TG_F64, s, fr))));
    cr_assert(tg_ok(ctx), "%s", tg_errmsg(ctx));
    assert_near(y, want_y, n, 1e-12, 0, "y");
    assert_near(x, want_dx, n, 1e-12, 1, "dx");
    assert_near(w, want_dw, ch, 1e-12, 1, "dw");
    assert_near(b, want_db, ch, 1e-12, 1, "db");
    assert_near(rm, want_rm, ch, 1e-14, 0, "running_mean");
    assert_near(rv, want_rv, ch, 1e-14, 0, "running_var");
    cr_assert_null(tg_grad(rm));
    cr_assert_null(tg_grad(rv));
    tg_tensor *ye = tg_batch_norm(ctx, formula_x(TG_F64, s, 3), rm, rv, w, b, 0, mom, 1e-5);
    cr_assert_not_null(ye, "%s", tg_errmsg(ctx));
    assert_near(ye, want_eval, n, 1e-12, 0, "eval y");
    assert_near(rm, want_rm, ch, 1e-14, 0, "running_mean after eval");
    assert_near(rv, want_rv, ch, 1e-14, 0, "running_var after eval");
}

Test(norm, batch_norm_4d_matches_pytorch_over_steps)
{
    bn_reference((shp){4, {2, 3, 2, 3}}, 0.1, BN4_Y, BN4_DX, BN4_DW, BN4_DB, BN4_RM, BN4_RV,
                 BN4_EVAL);
}

Test(norm, batch_norm_2d_matches_pytorch_over_steps)
{
    bn_reference((shp){2, {4, 3}}, 0.3, BN2_Y, BN2_DX, BN2_DW, BN2_DB, BN2_RM, BN2_RV, BN2_EVAL);
}

/* running statistics NULL in training: same output, nothing to update */
Test(norm, batch_norm_training_without_running_stats)
{
    shp s = {4, {3, 2, 2, 2}};
    tg_tensor *x = rnd(ctx, TG_F64, s, -2, 2);
    tg_tensor *rm = tg_new(ctx, TG_F64, 1, (int64_t[]){2}),
              *rv = tg_new(ctx, TG_F64, 1, (int64_t[]){2});
    tg_tensor *y1 = tg_batch_norm(ctx, x, NULL, NULL, NULL, NULL, 1, 0.1, 1e-5);
    tg_tensor *y2 = tg_batch_norm(ctx, x, rm, rv, NULL, NULL, 1, 0.1, 1e-5);
    cr_assert(y1 && y2, "%s", tg_errmsg(ctx));
    cr_assert_eq(tg_hash(y1), tg_hash(y2));
    /* each channel of y has mean 0 and biased variance 1 - eps-ish */
    for (int c = 0; c < 2; c++) {
        double m, v;
        channel_stats(y1, c, 0, &m, &v);
        cr_assert(fabs(m) < 1e-12 && fabs(v - 1) < 1e-3, "channel %d: mean %g var %g", c, m, v);
    }
}

/* eval's backward uses the statistics saved at forward, not the running
 * statistics a later training step overwrote */
Test(norm, batch_norm_eval_backward_uses_saved_stats)
{
    shp s = {2, {4, 3}};
    tg_tensor *x = rnd(ctx, TG_F64, s, -2, 2), *r = rnd(ctx, TG_F64, s, -1, 1);
    tg_tensor *rm = rand1(ctx, TG_F64, 3, -0.5, 0.5), *rv = rand1(ctx, TG_F64, 3, 0.5, 1.5);
    tg_set_requires_grad(x, 1);
    tg_tensor *loss =
        tg_sum(ctx, tg_mul(ctx, tg_batch_norm(ctx, x, rm, rv, NULL, NULL, 0, 0.1, 1e-5), r));
    double want[12];
    for (int i = 0; i < 12; i++) want[i] = at(r, i) / sqrt(at(rv, i % 3) + 1e-5);
    cr_assert_not_null(
        tg_batch_norm(ctx, rnd(ctx, TG_F64, s, 5, 9), rm, rv, NULL, NULL, 1, 0.9, 1e-5));
    tg_backward(ctx, loss);
    assert_near(x, want, 12, 1e-14, 1, "dx");
}

/* ---- dropout -------------------------------------------------------------- */

Test(norm, dropout_statistics_scale_and_gradient)
{
    const double p = 0.3;
    shp s = {2, {1000, 100}};
    tg_tensor *x = rnd(ctx, TG_F64, s, 1, 2), *r = rnd(ctx, TG_F64, s, -1, 1);
    tg_set_requires_grad(x, 1);
    tg_tensor *y = tg_dropout(ctx, x, p, 1);
    cr_assert_not_null(y, "%s", tg_errmsg(ctx));
    tg_backward(ctx, tg_sum(ctx, tg_mul(ctx, y, r)));
    int64_t zeros = 0;
    for (int64_t i = 0; i < 100000; i++) {
        if (at(y, i) == 0) {
            zeros++;
            cr_assert_eq(grad_at(x, i), 0.0, "dropped element %lld has a gradient", (long long)i);
        } else {
            cr_assert_eq(at(y, i), at(x, i) * (1 / (1 - p)), "kept element %lld", (long long)i);
            cr_assert_eq(grad_at(x, i), at(r, i) * (1 / (1 - p)), "gradient %lld", (long long)i);
        }
    }
    double frac = (double)zeros / 100000; /* sd 0.00145 */
    cr_assert(fabs(frac - p) < 0.01, "fraction of zeros %g, want %g", frac, p);
}

Test(norm, dropout_gradcheck)
{
    ncase k = {.p = 0.4};
    shp s = {3, {2, 3, 5}};
    tg_tensor *x = rnd(ctx, TG_F64, s, -2, 2);
    k.r = rnd(ctx, TG_F64, s, -1.5, 1.5);
    gradcheck_ok(ctx, fn_dropout, &k, &x, 1, "dropout");
    assert_grads_nonzero(ctx, fn_dropout, &k, &x, 1, LOSS_SELF, "dropout");
}

Test(norm, dropout_same_seed_same_mask)
{
    tg_tensor *x = rnd(ctx, TG_F32, (shp){2, {50, 40}}, 1, 2);
    tg_seed(ctx, 5);
    tg_tensor *a = tg_dropout(ctx, x, 0.5, 1);
    tg_seed(ctx, 5);
    tg_tensor *b = tg_dropout(ctx, x, 0.5, 1);
    tg_tensor *c = tg_dropout(ctx, x, 0.5, 1);
    cr_assert(a && b && c, "%s", tg_errmsg(ctx));
    cr_assert_eq(tg_hash(a), tg_hash(b));
    cr_assert_neq(tg_hash(a), tg_hash(c));
}

/* p = 0, and eval mode: the identity, still a node (the gradient flows), and
 * no draw from the generator */
Test(norm, dropout_identity_cases)
{
    const double ps[2] = {0, 0.5};
    const int train[2] = {1, 0};
    for (int k = 0; k < 2; k++) {
        tg_reset(ctx);
        tg_tensor *x = rnd(ctx, TG_F64, (shp){2, {4, 6}}, -2, 2),
                  *r = rnd(ctx, TG_F64, (shp){2, {4, 6}}, -1, 1);
        tg_set_requires_grad(x, 1);
        tg_seed(ctx, 11);
        tg_tensor *y = tg_dropout(ctx, x, ps[k], train[k]);
        uint64_t next = tg_rand_u64(ctx);
        tg_seed(ctx, 11);
        cr_assert_eq(next, tg_rand_u64(ctx), "case %d drew from the generator", k);
        cr_assert_not_null(y, "%s", tg_errmsg(ctx));
        cr_assert_eq(tg_hash(y), tg_hash(x), "case %d is not the identity", k);
        cr_assert(tg_requires_grad(y));
        tg_backward(ctx, tg_sum(ctx, tg_mul(ctx, y, r)));
        for (int i = 0; i < 24; i++) cr_assert_eq(grad_at(x, i), at(r, i));
    }
}

/* ---- f32 against f64 ------------------------------------------------------ */

/* y and every input gradient of f(x, w, b) in f32 within tol of f64 */
typedef tg_tensor *(*op3)(tg_ctx *, tg_tensor *, tg_tensor *, tg_tensor *);
static tg_tensor *ln3(tg_ctx *c, tg_tensor *x, tg_tensor *w, tg_tensor *b)
{
    return tg_layer_norm(c, x, w, b, 1e-5);
}
static tg_tensor *bn_train3(tg_ctx *c, tg_tensor *x, tg_tensor *w, tg_tensor *b)
{
    return tg_batch_norm(c, x, NULL, NULL, w, b, 1, 0.1, 1e-5);
}
static tg_tensor *bn_eval3(tg_ctx *c, tg_tensor *x, tg_tensor *w, tg_tensor *b)
{
    int64_t ch = tg_dim(x, 1);
    tg_tensor *rm = tg_new(c, tg_dtype_of(x), 1, &ch), *rv = tg_new(c, tg_dtype_of(x), 1, &ch);
    for (int64_t j = 0; j < ch; j++) {
        set_at(rm, j, 0.1 * (double)j - 0.2);
        set_at(rv, j, 0.5 + 0.3 * (double)j);
    }
    return tg_batch_norm(c, x, rm, rv, w, b, 0, 0.1, 1e-5);
}
static tg_tensor *drop3(tg_ctx *c, tg_tensor *x, tg_tensor *w, tg_tensor *b)
{
    (void)w;
    (void)b;
    tg_seed(c, 3);
    return tg_dropout(c, x, 0.25, 1);
}

Test(norm, f32_matches_f64)
{
    const struct { op3 f; shp s; int64_t nf; const char *name; } cases[] = {
        {ln3, {3, {2, 5, 33}}, 33, "layer_norm"},
        {bn_train3, {4, {4, 3, 3, 5}}, 3, "batch_norm training"},
        {bn_eval3, {2, {7, 5}}, 5, "batch_norm eval"},
        {drop3, {2, {9, 11}}, 11, "dropout"},
    };
    for (size_t k = 0; k < sizeof cases / sizeof cases[0]; k++) {
        tg_reset(ctx);
        tg_tensor *x64 = rnd(ctx, TG_F64, cases[k].s, -2, 2),
                  *r64 = rnd(ctx, TG_F64, cases[k].s, -1, 1);
        tg_tensor *w64 = rand1(ctx, TG_F64, cases[k].nf, 0.5, 1.5),
                  *b64 = rand1(ctx, TG_F64, cases[k].nf, -1, 1);
        tg_tensor *t64[4] = {x64, w64, b64, r64}, *t32[4];
        for (int i = 0; i < 4; i++) t32[i] = convert(ctx, t64[i], TG_F32);
        tg_tensor *y[2];
        for (int d = 0; d < 2; d++) {
            tg_tensor **t = d ? t32 : t64;
            for (int i = 0; i < 3; i++) tg_set_requires_grad(t[i], 1);
            y[d] = cases[k].f(ctx, t[0], t[1], t[2]);
            tg_backward(ctx, tg_sum(ctx, tg_mul(ctx, y[d], t[3])));
            cr_assert(tg_ok(ctx), "%s: %s", cases[k].name, tg_errmsg(ctx));
        }
        for (int64_t i = 0; i < tg_numel(x64); i++) {
            cr_assert(fabs(at(y[0], i) - at(y[1], i)) < 1e-5, "%s y[%lld]", cases[k].name,
                      (long long)i);
            cr_assert(fabs(grad_at(x64, i) - grad_at(t32[0], i)) < 1e-4, "%s dx[%lld]: %g vs %g",
                      cases[k].name, (long long)i, grad_at(x64, i), grad_at(t32[0], i));
        }
        if (cases[k].f == drop3) continue;
        for (int64_t j = 0; j < cases[k].nf; j++) {
            cr_assert(fabs(grad_at(w64, j) - grad_at(t32[1], j)) <
                          1e-4 * (1 + fabs(grad_at(w64, j))),
                      "%s dw[%lld]", cases[k].name, (long long)j);
            cr_assert(fabs(grad_at(b64, j) - grad_at(t32[2], j)) <
                          1e-4 * (1 + fabs(grad_at(b64, j))),
                      "%s db[%lld]", cases[k].name, (long long)j);
        }
    }
}

/* ---- bad arguments: a message naming the function and the shapes, NULL,
 * nothing recorded, no running statistic touched, no draw ---------------- */

/* r must be NULL with an error naming fn and s1, s2; the tape still has
 * tape0 nodes */
static void bad(const tg_tensor *r, int64_t tape0, const char *fn, const char *s1, const char *s2)
{
    cr_assert_eq(tg_tape_len(ctx), tape0, "%s recorded a node", fn);
    assert_null_err(ctx, r, fn, s1, s2);
}

Test(norm, layer_norm_bad_arguments)
{
    tg_tensor *x = rnd(ctx, TG_F64, (shp){2, {2, 5}}, -1, 1);
    tg_set_requires_grad(x, 1);
    tg_tensor *w5 = rand1(ctx, TG_F64, 5, 0, 1), *w4 = rand1(ctx, TG_F64, 4, 0, 1);
    tg_tensor *w5f = rand1(ctx, TG_F32, 5, 0, 1);
    int64_t t0 = tg_tape_len(ctx);
    bad(tg_layer_norm(ctx, rnd(ctx, TG_F64, (shp){0, {0}}, 0, 1), NULL, NULL, 1e-5), t0,
        "tg_layer_norm", "x []", "no last axis");
    bad(tg_layer_norm(ctx, x, w4, NULL, 1e-5), t0, "tg_layer_norm", "weight [4] must be [D] = [5]",
        "x [2,5]");
    bad(tg_layer_norm(ctx, x, w5, w4, 1e-5), t0, "tg_layer_norm", "bias [4] must be [D] = [5]",
        NULL);
    bad(tg_layer_norm(ctx, x, rand2(ctx, TG_F64, 1, 5, 0, 1), NULL, 1e-5), t0, "tg_layer_norm",
        "weight [1,5]", NULL);
    bad(tg_layer_norm(ctx, x, w5f, NULL, 1e-5), t0, "tg_layer_norm", "f32", NULL);
    bad(tg_layer_norm(ctx, x, w5, NULL, -1e-5), t0, "tg_layer_norm", "eps must be >= 0", "-1e-05");
    bad(tg_layer_norm(ctx, x, w5, NULL, NAN), t0, "tg_layer_norm", "eps", "nan");
    bad(tg_layer_norm(ctx, NULL, w5, NULL, 1e-5), t0, "tg_layer_norm", "x is NULL", NULL);
    tg_tensor *xi = tg_new(ctx, TG_I32, 2, (int64_t[]){2, 5});
    bad(tg_layer_norm(ctx, xi, NULL, NULL, 1e-5), t0, "tg_layer_norm", "f32 or f64", NULL);
}

Test(norm, batch_norm_bad_arguments_change_nothing)
{
    int64_t c3 = 3;
    tg_tensor *x = rnd(ctx, TG_F64, (shp){4, {2, 3, 2, 2}}, -1, 1);
    tg_set_requires_grad(x, 1);
    tg_tensor *rm = tg_param(ctx, "rm", TG_F64, 1, &c3), *rv = tg_param(ctx, "rv", TG_F64, 1, &c3);
    tg_fill(rm, 0.25);
    tg_fill(rv, 2);
    tg_set_requires_grad(rm, 0);
    tg_set_requires_grad(rv, 0);
    const uint64_t hm = tg_hash(rm), hv = tg_hash(rv);
    tg_tensor *w3 = rand1(ctx, TG_F64, 3, 0, 1), *w2 = rand1(ctx, TG_F64, 2, 0, 1);
    tg_tensor *r2 = rand1(ctx, TG_F64, 2, 0, 1);
    int64_t t0 = tg_tape_len(ctx);
    const char *fn = "tg_batch_norm";
    bad(tg_batch_norm(ctx, rnd(ctx, TG_F64, (shp){3, {2, 3, 4}}, 0, 1), rm, rv, w3, NULL, 1, 0.1,
                      1e-5),
        t0, fn, "x [2,3,4]", "must be [N,C] or [N,C,H,W]");
    bad(tg_batch_norm(ctx, x, rm, rv, w2, NULL, 1, 0.1, 1e-5), t0, fn,
        "weight [2] must be [C] = [3]", "x [2,3,2,2]");
    bad(tg_batch_norm(ctx, x, rm, rv, w3, w2, 1, 0.1, 1e-5), t0, fn, "bias [2] must be [C] = [3]",
        NULL);
    bad(tg_batch_norm(ctx, x, r2, rv, NULL, NULL, 1, 0.1, 1e-5), t0, fn,
        "running_mean [2] must be [C] = [3]", NULL);
    bad(tg_batch_norm(ctx, x, rm, r2, NULL, NULL, 1, 0.1, 1e-5), t0, fn,
        "running_var [2] must be [C] = [3]", NULL);
    bad(tg_batch_norm(ctx, x, NULL, rv, w3, NULL, 0, 0.1, 1e-5), t0, fn, "eval mode",
        "running_mean is NULL");
    bad(tg_batch_norm(ctx, x, rm, NULL, w3, NULL, 0, 0.1, 1e-5), t0, fn, "eval mode",
        "running_var is NULL");
    bad(tg_batch_norm(ctx, x, rm, rv, w3, NULL, 1, 0.1, -1), t0, fn, "eps must be >= 0", "-1");
    bad(tg_batch_norm(ctx, x, rm, rv, w3, NULL, 1, 1.5, 1e-5), t0, fn, "momentum must be in [0, 1]",
        "1.5");
    bad(tg_batch_norm(ctx, rnd(ctx, TG_F64, (shp){2, {1, 3}}, 0, 1), rm, rv, NULL, NULL, 1, 0.1,
                      1e-5),
        t0, fn, "more than 1 value per channel", "x is [1,3]");
    bad(tg_batch_norm(ctx, x, convert(ctx, rm, TG_F32), rv, NULL, NULL, 1, 0.1, 1e-5), t0, fn,
        "f32", NULL);
    cr_assert_eq(tg_hash(rm), hm, "running_mean changed by a failing call");
    cr_assert_eq(tg_hash(rv), hv, "running_var changed by a failing call");
    /* and a valid call does change them */
    cr_assert_not_null(tg_batch_norm(ctx, x, rm, rv, w3, NULL, 1, 0.1, 1e-5), "%s", tg_errmsg(ctx));
    cr_assert_neq(tg_hash(rm), hm);
    cr_assert_neq(tg_hash(rv), hv);
}

Test(norm, dropout_bad_p_changes_nothing)
{
    tg_tensor *x = rnd(ctx, TG_F32, (shp){2, {3, 4}}, -1, 1);
    tg_set_requires_grad(x, 1);
    int64_t t0 = tg_tape_len(ctx);
    const double ps[4] = {1, -0.1, 1.5, NAN};
    const char *shown[4] = {"got 1 ", "got -0.1", "got 1.5", "got nan"};
    for (int k = 0; k < 4; k++) {
        tg_seed(ctx, 8);
        bad(tg_dropout(ctx, x, ps[k], 1), t0, "tg_dropout", "p must be in [0, 1)", shown[k]);
        uint64_t next = tg_rand_u64(ctx);
        tg_seed(ctx, 8);
        cr_assert_eq(next, tg_rand_u64(ctx), "p %g drew from the generator", ps[k]);
    }
    bad(tg_dropout(ctx, x, 1, 0), t0, "tg_dropout", "p must be in [0, 1)", "x [3,4]");
}
