/* SPDX-License-Identifier: MIT */
/* test_vmath.c: the vectorised kernels of src/kernels/vmath.c, on every kernel set this CPU
 * can run (generic, avx2, avx512: each forced in turn with tgi_vmath_force).
 *
 * Accuracy: exp, log, tanh and sigmoid are compared with libm evaluated in double
 * (for f32) and long double (for f64) over deterministic sweeps of their ranges plus
 * the hardest inputs the exhaustive search of bench_vmath found; the maximum error in
 * ulps must stay within the bounds of docs/vmath.md (table below). Special values,
 * tails, aliasing and position independence are checked bit for bit; the backward
 * helpers against long double; Adam bit for bit against the plain C loop of its
 * formula and against PyTorch's numbers (tests/optim_reference.py). */
#include <criterion/criterion.h>
#include <criterion/logging.h>

#include <float.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "optim_reference.h"
#include "tg_test.h"
#include "vmath.h"

/* ---- kernel sets ---------------------------------------------------------------- */

static const char *const isa_names[] = {"generic", "avx2", "avx512"};
#define N_ISA 3

/* Force set i; 0 if this CPU (or build) cannot run it. */
static int use_isa(int i)
{
    tgi_vmath_force(isa_names[i]);
    return strcmp(tgi_vmath_isa(), isa_names[i]) == 0;
}

static void restore_isa(void) { tgi_vmath_force(NULL); }

TestSuite(vmath, .fini = restore_isa);

/* ---- error measure ---------------------------------------------------------------- */

static double ulp_f32(double r)
{
    r = fabs(r);
    if (r < 0x1p-126) return 0x1p-149;
    int e;
    frexp(r, &e);
    return ldexp(1.0, e - 24);
}

static long double ulp_f64(long double r)
{
    r = fabsl(r);
    if (r < 0x1p-1022L) return 0x1p-1074L;
    int e;
    frexpl(r, &e);
    return ldexpl(1.0L, e - 53);
}

/* error of y in ulps of the exact value ref; 1e9 when a special value is wrong */
static double err_f32(float y, double ref)
{
    if (isnan(ref)) return isnan(y) ? 0 : 1e9;
    if (isinf((float)ref)) return y == (float)ref ? 0 : 1e9;
    if (!isfinite(y)) return 1e9;
    return fabs((double)y - ref) / ulp_f32(ref);
}

static double err_f64(double y, long double ref)
{
    if (isnan(ref)) return isnan(y) ? 0 : 1e9;
    if (isinf((double)ref)) return y == (double)ref ? 0 : 1e9;
    if (!isfinite(y)) return 1e9;
    return (double)(fabsl((long double)y - ref) / ulp_f64(ref));
}

static double sig_d(double x) { return x >= 0 ? 1 / (1 + exp(-x)) : exp(x) / (1 + exp(x)); }
static long double sig_l(long double x)
{
    return x >= 0 ? 1 / (1 + expl(-x)) : expl(x) / (1 + expl(x));
}

/* ---- deterministic inputs ------------------------------------------------------- */

static uint64_t rng_state;
static void rng_seed(uint64_t s) { rng_state = s * 0x9E3779B97F4A7C15ull + 1; }
static uint64_t rng_next(void)
{
    uint64_t z = (rng_state += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}
static double urand(double lo, double hi)
{
    return lo + (hi - lo) * (double)(rng_next() >> 11) * (1.0 / 9007199254740992.0);
}

/* A function under test, its references, its bounds (docs/vmath.md) and its sweep. */
typedef struct {
    const char *name;
    void (*f32)(float *, const float *, int64_t);
    void (*f64)(double *, const double *, int64_t);
    double (*r32)(double);
    long double (*r64)(long double);
    double bound32, bound64;                 /* max error in ulps, every kernel set */
    double ranges32[3][2], ranges64[3][2];   /* uniform sweeps; [0][0] > [0][1]: bit patterns */
    const float *hard32;                     /* worst inputs found by bench_vmath */
    int n_hard32;
    const double *hard64;
    int n_hard64;
} vfn;

#define SWEEP 30011 /* points per function and type and set: not a multiple of 16 */

static void measure(const vfn *f, double *max32, double *max64, float *at32, double *at64)
{
    static float xf[SWEEP], yf[SWEEP];
    static double xd[SWEEP], yd[SWEEP];
    rng_seed(42);
    for (int i = 0; i < SWEEP; i++) {
        const int r = i % 3;
        if (f->ranges32[0][0] > f->ranges32[0][1] && r == 0) {
            /* a random positive finite float / double, subnormals included */
            uint32_t b = (uint32_t)(rng_next() % 0x7f800000u);
            uint64_t c = rng_next() % 0x7ff0000000000000ull;
            memcpy(&xf[i], &b, sizeof b);
            memcpy(&xd[i], &c, sizeof c);
        } else {
            xf[i] = (float)urand(f->ranges32[r][0], f->ranges32[r][1]);
            xd[i] = urand(f->ranges64[r][0], f->ranges64[r][1]);
        }
    }
    for (int i = 0; i < f->n_hard32; i++) xf[i * 7] = f->hard32[i];
    for (int i = 0; i < f->n_hard64; i++) xd[i * 7] = f->hard64[i];
    f->f32(yf, xf, SWEEP);
    f->f64(yd, xd, SWEEP);
    *max32 = *max64 = 0;
    for (int i = 0; i < SWEEP; i++) {
        double e = err_f32(yf[i], f->r32((double)xf[i]));
        if (e > *max32) *max32 = e, *at32 = xf[i];
        e = err_f64(yd[i], f->r64((long double)xd[i]));
        if (e > *max64) *max64 = e, *at64 = xd[i];
    }
}

static void check_accuracy(const vfn *f)
{
    int ran = 0;
    for (int s = 0; s < N_ISA; s++) {
        if (!use_isa(s)) continue;
        ran++;
        double m32, m64;
        float a32 = 0;
        double a64 = 0;
        measure(f, &m32, &m64, &a32, &a64);
        cr_log_info("%s %s: f32 %.3f ulp (x = %a), f64 %.3f ulp (x = %a)", f->name,
                    isa_names[s], m32, (double)a32, m64, a64);
        cr_expect(m32 <= f->bound32, "%s %s f32: %.3f ulp at x = %a (bound %.2f)", f->name,
                  isa_names[s], m32, (double)a32, f->bound32);
        cr_expect(m64 <= f->bound64, "%s %s f64: %.3f ulp at x = %a (bound %.2f)", f->name,
                  isa_names[s], m64, a64, f->bound64);
        /* the sweep is not trivially exact either: some error was measured */
        cr_expect(m32 > 0.1 && m64 > 0.1, "%s %s: suspiciously exact sweep", f->name,
                  isa_names[s]);
    }
    cr_assert_geq(ran, 1, "no kernel set ran");
}

/* ---- accuracy ------------------------------------------------------------------- */

/* The worst inputs bench_vmath found: its exhaustive f32 search (every float of the
 * range, generic and avx2 sets) and its 2^24-point f64 searches, then this test's own. */
static const float hard_exp32[] = {0x1.2e3aa8p+5f, -0x1.b61052p+4f, -0x1.0f15b4p+4f,
                                   -0x1.336d82p+5f};
static const double hard_exp64[] = {0x1.1e7670c4c886cp+9, -0x1.3c5da45d20773p+8,
                                    -0x1.d9f8fed55accp+5};
static const float hard_log32[] = {0x1.69b14cp-1f, 0x1.65714cp-1f, 0x1.47494ap-1f};
static const double hard_log64[] = {0x1.688acb507dc07p+0, 0x1.90575edcf3f23p+0};
static const float hard_tanh32[] = {-0x1.43fa2p-1f, 0x1.45935ap-1f, -0x1.578ce2p-1f};
static const double hard_tanh64[] = {0x1.41ef1b4c4eap-1, -0x1.5e7e3513e5b6p-1};
static const float hard_sig32[] = {-0x1.0a111ap+2f, -0x1.f2b842p+0f, -0x1.36730ep+2f};
static const double hard_sig64[] = {-0x1.8f25deddb4cp+2, -0x1.8f3b8da9f3d7fp+2};

#define HARD(a) a, (int)(sizeof a / sizeof a[0])

enum { V_EXP, V_LOG, V_TANH, V_SIGMOID, V_COUNT };

/* ranges: first the three f32 sweeps, then the three f64 ones */
static const vfn VFNS[] = {
    [V_EXP] = {"exp", tgi_vexp_f32, tgi_vexp_f64, exp, expl, 1.05, 1.1,
               {{-104, 89}, {-1, 1}, {-87.5, -103}}, /* last: subnormal results */
               {{-746, 710}, {-1, 1}, {-708.5, -745}}, HARD(hard_exp32), HARD(hard_exp64)},
    [V_LOG] = {"log", tgi_vlog_f32, tgi_vlog_f64, log, logl, 1.0, 1.0,
               {{1, 0}, {0.5, 2}, {1e-30, 1e30}}, /* first: all bit patterns */
               {{1, 0}, {0.5, 2}, {1e-300, 1e300}}, HARD(hard_log32), HARD(hard_log64)},
    [V_TANH] = {"tanh", tgi_vtanh_f32, tgi_vtanh_f64, tanh, tanhl, 1.5, 1.5,
                {{-20, 20}, {-1, 1}, {-1e-3, 1e-3}}, {{-20, 20}, {-1, 1}, {-1e-3, 1e-3}},
                HARD(hard_tanh32), HARD(hard_tanh64)},
    [V_SIGMOID] = {"sigmoid", tgi_vsigmoid_f32, tgi_vsigmoid_f64, sig_d, sig_l, 2.5, 2.5,
                   {{-104, 89}, {-20, 20}, {-1e-3, 1e-3}}, {{-746, 40}, {-20, 20}, {-1e-3, 1e-3}},
                   HARD(hard_sig32), HARD(hard_sig64)},
};
_Static_assert(sizeof VFNS / sizeof VFNS[0] == V_COUNT, "a row per function");

Test(vmath, exp_accuracy) { check_accuracy(&VFNS[V_EXP]); }
Test(vmath, log_accuracy) { check_accuracy(&VFNS[V_LOG]); }
Test(vmath, tanh_accuracy) { check_accuracy(&VFNS[V_TANH]); }
Test(vmath, sigmoid_accuracy) { check_accuracy(&VFNS[V_SIGMOID]); }

/* ---- special values --------------------------------------------------------------- */

/* f(x) must be `want` exactly (same bits; any NaN for NaN), in f32 and f64 */
typedef struct {
    double x, want;
} sv;

static int same_bits_f32(float a, float b)
{
    return (isnan(a) && isnan(b)) || memcmp(&a, &b, sizeof a) == 0;
}
static int same_bits_f64(double a, double b)
{
    return (isnan(a) && isnan(b)) || memcmp(&a, &b, sizeof a) == 0;
}

static void check_specials(const char *name, void (*f32)(float *, const float *, int64_t),
                           void (*f64)(double *, const double *, int64_t), const sv *c, int n,
                           int only64)
{
    for (int s = 0; s < N_ISA; s++) {
        if (!use_isa(s)) continue;
        for (int i = 0; i < n; i++) {
            double yd;
            f64(&yd, &c[i].x, 1);
            cr_expect(same_bits_f64(yd, c[i].want), "%s %s f64(%a) = %a, want %a", name,
                      isa_names[s], c[i].x, yd, c[i].want);
            if (only64) continue;
            float xf = (float)c[i].x, yf;
            f32(&yf, &xf, 1);
            cr_expect(same_bits_f32(yf, (float)c[i].want), "%s %s f32(%a) = %a, want %a", name,
                      isa_names[s], (double)xf, (double)yf, c[i].want);
        }
    }
}

#define N_OF(a) ((int)(sizeof a / sizeof a[0]))

/* gelu (f32): y = x Phi(x) in ulps of y, and its derivative d = Phi + x phi in ulps of
 * |Phi| + |x phi| (d crosses 0 near x = -0.75, where a relative measure means nothing),
 * both in ulps of at least 2^-100 (the far tail x < -12.3 is measured absolutely),
 * against long double erfc and exp; bounds of docs/vmath.md. f64 is libm element by
 * element: bit for bit the scalar formula. */
#define GELU_BOUND_Y 5.0
#define GELU_BOUND_D 4.5

static long double gelu_phi_l(long double x) { return 0.5L * erfcl(-x / sqrtl(2.0L)); }
static long double gelu_dens_l(long double x)
{
    return expl(-x * x / 2) / sqrtl(2 * 3.14159265358979323846264338327950288L);
}

Test(vmath, gelu_accuracy)
{
    static float x[SWEEP], y[SWEEP], d[SWEEP], y2[SWEEP];
    const double ranges[4][2] = {{-16, 16}, {-4, 4}, {-1e-3, 1e-3}, {-15.5, -9}};
    int ran = 0;
    for (int s = 0; s < N_ISA; s++) {
        if (!use_isa(s)) continue;
        ran++;
        rng_seed(7);
        for (int i = 0; i < SWEEP; i++) x[i] = (float)urand(ranges[i % 4][0], ranges[i % 4][1]);
        tgi_vgelu_f32(y, d, x, SWEEP);
        tgi_vgelu_f32(y2, NULL, x, SWEEP);
        double my = 0, md = 0;
        float ay = 0, ad = 0;
        for (int i = 0; i < SWEEP; i++) {
            const long double ph = gelu_phi_l(x[i]), xp = x[i] * gelu_dens_l(x[i]);
            const double ry = (double)(x[i] * ph);
            /* the tail x < -12.3 (|y| < 2^-100, where e^(-x^2/2) nears the subnormals):
             * in ulps of 2^-100 */
            const double ey = fabs((double)y[i] - ry) / ulp_f32(fmax(fabs(ry), 0x1p-100));
            const double ed = fabs((double)d[i] - (double)(ph + xp)) /
                              ulp_f32(fmax((double)(fabsl(ph) + fabsl(xp)), 0x1p-100));
            if (ey > my) my = ey, ay = x[i];
            if (ed > md) md = ed, ad = x[i];
            cr_assert(same_bits_f32(y[i], y2[i]), "gelu %s: y depends on d at x = %a",
                      isa_names[s], (double)x[i]);
        }
        cr_log_info("gelu %s f32: y %.3f ulp (x = %a), d %.3f ulp (x = %a)", isa_names[s], my,
                    (double)ay, md, (double)ad);
        cr_expect(my <= GELU_BOUND_Y && md <= GELU_BOUND_D,
                  "gelu %s f32: y %.3f ulp at %a, d %.3f ulp at %a (bounds %.1f, %.1f)",
                  isa_names[s], my, (double)ay, md, (double)ad, GELU_BOUND_Y, GELU_BOUND_D);
        cr_expect(my > 0.1 && md > 0.1, "gelu %s: suspiciously exact sweep", isa_names[s]);
        /* specials: gelu(+-0) = +-0 with slope 1/2, far tails, infinities, NaN */
        const float xs[7] = {0.0f, -0.0f, 40, -40, INFINITY, -INFINITY, NAN};
        float ys[7], ds[7];
        tgi_vgelu_f32(ys, ds, xs, 7);
        cr_expect(same_bits_f32(ys[0], 0.0f) && same_bits_f32(ys[1], -0.0f), "gelu(+-0)");
        cr_expect(ds[0] == 0.5f && ds[1] == 0.5f, "gelu'(0) = %a", (double)ds[0]);
        cr_expect(ys[2] == 40 && ds[2] == 1 && ys[3] == 0 && ds[3] == 0, "gelu(+-40)");
        cr_expect(ys[4] == INFINITY && ds[4] == 1, "gelu(+inf)");
        cr_expect(isnan(ys[5]) && isnan(ys[6]) && isnan(ds[6]), "gelu(-inf), gelu(NaN)");
        /* f64: the scalar formula, bit for bit */
        const double xd[5] = {-7.5, -1.25, 1e-3, 0.75, 3.5};
        double yd[5], dd[5];
        tgi_vgelu_f64(yd, dd, xd, 5);
        for (int i = 0; i < 5; i++) {
            const double u = xd[i], e = erf(u * 0.70710678118654752440);
            const double wy = u * 0.5 * (1 + e);
            const double wd = 0.5 * (1 + e) + u * 0.39894228040143267794 * exp(-0.5 * u * u);
            cr_expect(same_bits_f64(yd[i], wy) && same_bits_f64(dd[i], wd),
                      "gelu %s f64(%a) = %a, %a; want %a, %a", isa_names[s], u, yd[i], dd[i],
                      wy, wd);
        }
    }
    cr_assert_geq(ran, 1, "no kernel set ran");
}

Test(vmath, exp_special_values)
{
    const sv both[] = {
        {0.0, 1.0},      {-0.0, 1.0},     {INFINITY, INFINITY}, {-INFINITY, 0.0},
        {NAN, NAN},      {1000, INFINITY}, {-1000, 0.0},         {1e30, INFINITY},
        {-1e30, 0.0},
    };
    check_specials("exp", tgi_vexp_f32, tgi_vexp_f64, both, N_OF(both), 0);
    const sv f64[] = {
        {709.79, INFINITY},
        {-745.0, 0x1p-1074}, /* the smallest subnormal */
        {-745.2, 0.0},
    };
    check_specials("exp", tgi_vexp_f32, tgi_vexp_f64, f64, N_OF(f64), 1);
    for (int s = 0; s < N_ISA; s++) {
        if (!use_isa(s)) continue;
        /* just below overflow, and around the normal / subnormal boundary */
        const double xd[] = {709.78, -708.39, -708.4, -720.5, -744.0};
        double yd[5];
        tgi_vexp_f64(yd, xd, 5);
        for (int i = 0; i < 5; i++)
            cr_expect(yd[i] > 0 && isfinite(yd[i]) && err_f64(yd[i], expl(xd[i])) <= 1.0,
                      "%s exp(%a) = %a", isa_names[s], xd[i], yd[i]);
        const float x[] = {88.72f, 88.73f, -103.0f, -104.0f, -87.4f};
        float y[5];
        tgi_vexp_f32(y, x, 5);
        cr_expect(isfinite(y[0]) && err_f32(y[0], exp((double)x[0])) <= 1.0,
                  "%s exp(88.72f) = %a", isa_names[s], (double)y[0]);
        cr_expect(isinf(y[1]) && y[1] > 0, "%s exp(88.73f) = %a", isa_names[s], (double)y[1]);
        cr_expect(y[2] == 0x1p-149f, "%s exp(-103f) = %a (smallest subnormal)", isa_names[s],
                  (double)y[2]);
        cr_expect(y[3] == 0 && !signbit(y[3]), "%s exp(-104f) = %a", isa_names[s],
                  (double)y[3]);
        /* a subnormal result, within one subnormal ulp */
        cr_expect(y[4] < FLT_MIN && y[4] > 0 && err_f32(y[4], exp((double)x[4])) <= 1.0,
                  "%s exp(-87.4f) = %a", isa_names[s], (double)y[4]);
    }
}

Test(vmath, log_special_values)
{
    const sv both[] = {
        {1.0, 0.0},         {0.0, -INFINITY}, {-0.0, -INFINITY},  {-1.0, NAN},
        {-INFINITY, NAN},   {INFINITY, INFINITY}, {NAN, NAN},     {2.0, 0x1.62e42fefa39efp-1},
    };
    check_specials("log", tgi_vlog_f32, tgi_vlog_f64, both, N_OF(both), 0);
    for (int s = 0; s < N_ISA; s++) {
        if (!use_isa(s)) continue;
        /* subnormal inputs, and the largest finite ones */
        const float xf[] = {0x1p-149f, 0x1.8p-140f, 0x1.fffffcp-127f, FLT_MAX, FLT_MIN};
        float yf[5];
        tgi_vlog_f32(yf, xf, 5);
        for (int i = 0; i < 5; i++)
            cr_expect(err_f32(yf[i], log((double)xf[i])) <= 1.0, "%s logf(%a) = %a",
                      isa_names[s], (double)xf[i], (double)yf[i]);
        const double xd[] = {0x1p-1074, 0x1.8p-1060, 0x1.ffffffffffffep-1023, DBL_MAX, DBL_MIN};
        double yd[5];
        tgi_vlog_f64(yd, xd, 5);
        for (int i = 0; i < 5; i++)
            cr_expect(err_f64(yd[i], logl((long double)xd[i])) <= 1.0, "%s log(%a) = %a",
                      isa_names[s], xd[i], yd[i]);
    }
}

Test(vmath, tanh_special_values)
{
    const sv both[] = {
        {0.0, 0.0},   {-0.0, -0.0},  {INFINITY, 1.0}, {-INFINITY, -1.0}, {NAN, NAN},
        {1000, 1.0},  {-1000, -1.0}, {20, 1.0},       {-25, -1.0},       {1e-30, 1e-30},
        {-1e-30, -1e-30},
    };
    check_specials("tanh", tgi_vtanh_f32, tgi_vtanh_f64, both, N_OF(both), 0);
    const sv f64[] = {{1e-300, 1e-300}, {0x1p-1074, 0x1p-1074}, {-0x1p-1070, -0x1p-1070}};
    check_specials("tanh", tgi_vtanh_f32, tgi_vtanh_f64, f64, N_OF(f64), 1);
    for (int s = 0; s < N_ISA; s++) {
        if (!use_isa(s)) continue;
        float x = 0x1p-140f, y; /* subnormal: tanh x = x */
        tgi_vtanh_f32(&y, &x, 1);
        cr_expect(y == x, "%s tanh(%a) = %a", isa_names[s], (double)x, (double)y);
        x = 9.1f; /* tanh(9.1) rounds to 1 in float */
        tgi_vtanh_f32(&y, &x, 1);
        cr_expect(y == 1.0f, "%s tanhf(9.1) = %a", isa_names[s], (double)y);
    }
}

Test(vmath, sigmoid_special_values)
{
    const sv both[] = {
        {0.0, 0.5},     {-0.0, 0.5},   {INFINITY, 1.0}, {-INFINITY, 0.0}, {NAN, NAN},
        {1000, 1.0},    {-1000, 0.0},  {1e30, 1.0},     {-1e30, 0.0},
    };
    check_specials("sigmoid", tgi_vsigmoid_f32, tgi_vsigmoid_f64, both, N_OF(both), 0);
    for (int s = 0; s < N_ISA; s++) {
        if (!use_isa(s)) continue;
        /* the negative tail keeps its tiny (subnormal) values */
        const float xf[] = {-100.0f, -90.0f, 40.0f};
        float yf[3];
        tgi_vsigmoid_f32(yf, xf, 3);
        cr_expect(yf[0] > 0 && err_f32(yf[0], sig_d(-100.0)) <= 2.5, "%s sigmoidf(-100) = %a",
                  isa_names[s], (double)yf[0]);
        cr_expect(yf[1] > 0 && err_f32(yf[1], sig_d(-90.0)) <= 2.5, "%s sigmoidf(-90) = %a",
                  isa_names[s], (double)yf[1]);
        cr_expect(yf[2] == 1.0f, "%s sigmoidf(40) = %a", isa_names[s], (double)yf[2]);
        const double xd[] = {-740.0, -700.0};
        double yd[2];
        tgi_vsigmoid_f64(yd, xd, 2);
        cr_expect(yd[0] > 0 && err_f64(yd[0], sig_l(-740.0L)) <= 2.5, "%s sigmoid(-740) = %a",
                  isa_names[s], yd[0]);
        cr_expect(err_f64(yd[1], sig_l(-700.0L)) <= 2.5, "%s sigmoid(-700) = %a",
                  isa_names[s], yd[1]);
    }
}

Test(vmath, relu_values)
{
    const sv both[] = {
        {3.5, 3.5},   {-2.0, 0.0},  {0.0, 0.0},         {-0.0, 0.0}, /* +0, as the op */
        {NAN, NAN},   {INFINITY, INFINITY}, {-INFINITY, 0.0}, {1e-40, 1e-40},
    };
    check_specials("relu", tgi_vrelu_f32, tgi_vrelu_f64, both, N_OF(both), 0);
}

/* ---- rows: tails, offsets, aliasing ------------------------------------------------- */

typedef void (*un32)(float *, const float *, int64_t);
typedef void (*un64)(double *, const double *, int64_t);

/* Every length 0..53 at every offset 0..3: the row result equals the one-element
 * results bit for bit, the output is untouched past n, and y == x works. */
static void check_rows(const char *name, un32 f32, un64 f64, double lo, double hi)
{
    enum { MAXN = 53, PAD = 8 };
    for (int s = 0; s < N_ISA; s++) {
        if (!use_isa(s)) continue;
        rng_seed(7);
        float xf[MAXN + 4], yf[MAXN + 4 + PAD], one_f[MAXN + 4], inpl_f[MAXN + 4];
        double xd[MAXN + 4], yd[MAXN + 4 + PAD], one_d[MAXN + 4], inpl_d[MAXN + 4];
        for (int i = 0; i < MAXN + 4; i++) {
            xd[i] = urand(lo, hi);
            xf[i] = (float)xd[i];
            f32(&one_f[i], &xf[i], 1);
            f64(&one_d[i], &xd[i], 1);
        }
        for (int n = 0; n <= MAXN; n++)
            for (int off = 0; off < 4; off++) {
                for (int i = 0; i < MAXN + 4 + PAD; i++) yf[i] = -7.0f, yd[i] = -7.0;
                f32(yf + off, xf + off, n);
                f64(yd + off, xd + off, n);
                memcpy(inpl_f, xf, sizeof xf);
                memcpy(inpl_d, xd, sizeof xd);
                f32(inpl_f + off, inpl_f + off, n);
                f64(inpl_d + off, inpl_d + off, n);
                for (int i = 0; i < MAXN + 4 + PAD; i++) {
                    const int in = i >= off && i < off + n;
                    if (in) {
                        cr_assert(same_bits_f32(yf[i], one_f[i]) && same_bits_f32(inpl_f[i], one_f[i]),
                                  "%s %s f32 n=%d off=%d element %d", name, isa_names[s], n, off, i);
                        cr_assert(same_bits_f64(yd[i], one_d[i]) && same_bits_f64(inpl_d[i], one_d[i]),
                                  "%s %s f64 n=%d off=%d element %d", name, isa_names[s], n, off, i);
                    } else {
                        cr_assert(yf[i] == -7.0f && yd[i] == -7.0,
                                  "%s %s n=%d off=%d: wrote element %d outside the row", name,
                                  isa_names[s], n, off, i);
                        if (i < MAXN + 4)
                            cr_assert(inpl_f[i] == xf[i] && inpl_d[i] == xd[i],
                                      "%s %s in place n=%d off=%d: touched element %d", name,
                                      isa_names[s], n, off, i);
                    }
                }
            }
    }
}

Test(vmath, rows_tails_and_aliasing)
{
    check_rows("exp", tgi_vexp_f32, tgi_vexp_f64, -100, 100); /* some lanes on the slow path */
    check_rows("log", tgi_vlog_f32, tgi_vlog_f64, -0.5, 50);  /* some special lanes */
    check_rows("tanh", tgi_vtanh_f32, tgi_vtanh_f64, -3, 3);
    check_rows("sigmoid", tgi_vsigmoid_f32, tgi_vsigmoid_f64, -120, 120);
    check_rows("relu", tgi_vrelu_f32, tgi_vrelu_f64, -1, 1);
}

/* ---- backward helpers ----------------------------------------------------------- */

typedef void (*bin32)(float *, const float *, const float *, int64_t);
typedef void (*bin64)(double *, const double *, const double *, int64_t);

/* the exact update dx + dy g(a) and a scale for its rounding error */
typedef long double (*bwd_ref)(long double dx, long double a, long double dy,
                               long double *scale);

static long double sig_bwd_ref(long double dx, long double y, long double dy, long double *sc)
{
    long double t = dy * y * (1 - y);
    *sc = fmaxl(fabsl(dx), fabsl(t));
    return dx + t;
}
static long double tanh_bwd_ref(long double dx, long double y, long double dy, long double *sc)
{
    long double t = dy * (1 - y * y);
    *sc = fmaxl(fabsl(dx), fabsl(t));
    return dx + t;
}
static long double relu_bwd_ref(long double dx, long double x, long double dy, long double *sc)
{
    long double r = x > 0 ? dx + dy : dx;
    *sc = fmaxl(fabsl(r), 0x1p-1000L);
    return r;
}

enum { BWD_N = 1003 };

/* one array in f64 and, rounded, in f32 */
typedef struct {
    double d[BWD_N];
    float f[BWD_N];
} both;

/* out = dx, then the helper adds dy g(a) into out, in f32 and in f64 */
static void bwd_into(bin32 f32, bin64 f64, both *out, const both *dx, const both *a,
                     const both *dy)
{
    memcpy(out->f, dx->f, sizeof out->f);
    memcpy(out->d, dx->d, sizeof out->d);
    f32(out->f, a->f, dy->f, BWD_N);
    f64(out->d, a->d, dy->d, BWD_N);
}

/* dx (random, so the helpers are seen to ADD) against the long double update: within
 * `bound` ulps of the larger of |dx| and |dy g(a)|; dx == dy aliasing gives the same. */
static void check_bwd(const char *name, bin32 f32, bin64 f64, bwd_ref ref, double alo,
                      double ahi, double bound)
{
    static both dx0, a, dy, dx, want, alias;
    for (int s = 0; s < N_ISA; s++) {
        if (!use_isa(s)) continue;
        rng_seed(11);
        for (int i = 0; i < BWD_N; i++) {
            dx0.d[i] = urand(-1, 1);
            a.d[i] = urand(alo, ahi);
            dy.d[i] = urand(-2, 2);
            dx0.f[i] = (float)dx0.d[i], a.f[i] = (float)a.d[i], dy.f[i] = (float)dy.d[i];
        }
        bwd_into(f32, f64, &dx, &dx0, &a, &dy);
        double m32 = 0, m64 = 0;
        int changed = 0;
        for (int i = 0; i < BWD_N; i++) {
            long double sc;
            long double r = ref(dx0.f[i], a.f[i], dy.f[i], &sc);
            double e = fabs((double)((long double)dx.f[i] - r)) / ulp_f32((double)sc);
            if (e > m32) m32 = e;
            r = ref(dx0.d[i], a.d[i], dy.d[i], &sc);
            e = (double)(fabsl((long double)dx.d[i] - r) / ulp_f64(sc));
            if (e > m64) m64 = e;
            changed += dx.d[i] != dx0.d[i];
        }
        cr_log_info("%s %s: f32 %.3f ulp, f64 %.3f ulp", name, isa_names[s], m32, m64);
        cr_expect(m32 <= bound && m64 <= bound, "%s %s: f32 %.3f ulp, f64 %.3f ulp (bound %.1f)",
                  name, isa_names[s], m32, m64, bound);
        cr_expect(changed > BWD_N / 4, "%s %s: dx hardly changed (%d of %d)", name,
                  isa_names[s], changed, BWD_N);
        /* dx may be dy itself */
        bwd_into(f32, f64, &want, &dy, &a, &dy);
        alias = dy;
        f32(alias.f, a.f, alias.f, BWD_N);
        f64(alias.d, a.d, alias.d, BWD_N);
        cr_expect(memcmp(alias.f, want.f, sizeof want.f) == 0 &&
                      memcmp(alias.d, want.d, sizeof want.d) == 0,
                  "%s %s: dx == dy differs", name, isa_names[s]);
    }
}

Test(vmath, backward_helpers)
{
    check_bwd("sigmoid_bwd", tgi_vsigmoid_bwd_f32, tgi_vsigmoid_bwd_f64, sig_bwd_ref, 0, 1, 3.0);
    check_bwd("tanh_bwd", tgi_vtanh_bwd_f32, tgi_vtanh_bwd_f64, tanh_bwd_ref, -1, 1, 3.0);
    check_bwd("relu_bwd", tgi_vrelu_bwd_f32, tgi_vrelu_bwd_f64, relu_bwd_ref, -1, 1, 0.5);
    /* relu_bwd leaves dx alone where x <= 0 (also for x = -0 and NaN), bit for bit */
    for (int s = 0; s < N_ISA; s++) {
        if (!use_isa(s)) continue;
        float x[5] = {0.0f, -0.0f, NAN, -1.0f, 2.0f}, dy[5] = {1, 1, 1, 1, 1};
        float dx[5] = {-0.0f, 0.25f, 0.5f, 0.75f, 1.0f};
        tgi_vrelu_bwd_f32(dx, x, dy, 5);
        cr_expect(signbit(dx[0]) && dx[0] == 0 && dx[1] == 0.25f && dx[2] == 0.5f &&
                      dx[3] == 0.75f && dx[4] == 2.0f,
                  "%s relu_bwd: %g %g %g %g %g", isa_names[s], dx[0], dx[1], dx[2], dx[3], dx[4]);
    }
}

Test(vmath, axpy)
{
    enum { N = 517 };
    static float yf[N], xf[N], y0f[N];
    static double yd[N], xd[N], y0d[N];
    for (int s = 0; s < N_ISA; s++) {
        if (!use_isa(s)) continue;
        rng_seed(5);
        for (int i = 0; i < N; i++) {
            yd[i] = urand(-1, 1), xd[i] = urand(-1, 1);
            yf[i] = (float)yd[i], xf[i] = (float)xd[i];
        }
        memcpy(y0f, yf, sizeof yf);
        memcpy(y0d, yd, sizeof yd);
        tgi_vaxpy_f32(yf, -0.3f, xf, N);
        tgi_vaxpy_f64(yd, -0.3, xd, N);
        for (int i = 0; i < N; i++) {
            long double r = (long double)y0f[i] + (long double)-0.3f * (long double)xf[i];
            long double sc = fmaxl(fabsl((long double)y0f[i]), fabsl(0.3L * xf[i]));
            cr_assert(fabsl(yf[i] - r) <= 1.5L * ulp_f32((double)sc), "%s f32 axpy %d: %a",
                      isa_names[s], i, (double)yf[i]);
            r = (long double)y0d[i] + (long double)-0.3 * (long double)xd[i];
            sc = fmaxl(fabsl((long double)y0d[i]), fabsl(0.3L * xd[i]));
            cr_assert(fabsl(yd[i] - r) <= 1.5L * ulp_f64(sc), "%s f64 axpy %d: %a",
                      isa_names[s], i, yd[i]);
        }
    }
}

/* ---- Adam ----------------------------------------------------------------------- */

/* The formula of vmath.h as a plain loop (the test is built as ISO C: no contraction). */
#define ADAM_REF(T)                                                                        \
    static void adam_ref_##T(T *p, const T *g, T *m, T *v, int n, double lr_t_,           \
                             double b1_, double b2_, double ibc2_, double eps_, double wd_,  \
                             int decoupled, double lr_)                                    \
    {                                                                                      \
        const T lr_t = (T)lr_t_, b1 = (T)b1_, b2 = (T)b2_, ibc2 = (T)ibc2_, eps = (T)eps_;  \
        const T wd = (T)wd_, b11 = (T)(1.0 - b1_), b21 = (T)(1.0 - b2_);                   \
        const T decay = (T)(1.0 - lr_ * wd_);                                              \
        for (int i = 0; i < n; i++) {                                                      \
            T pi = p[i], d = g[i];                                                         \
            if (decoupled) pi = pi * decay;                                                \
            else if (wd != 0) d = d + wd * pi;                                             \
            T mi = m[i] * b1 + b11 * d;                                                    \
            T vi = v[i] * b2 + b21 * d * d;                                                \
            m[i] = mi;                                                                     \
            v[i] = vi;                                                                     \
            p[i] = pi - lr_t * (mi / ((T)sqrt((double)vi) * ibc2 + eps));                  \
        }                                                                                  \
    }
ADAM_REF(float)
ADAM_REF(double)

Test(vmath, adam_matches_scalar_loop)
{
    enum { N = 77, STEPS = 6 };
    const struct {
        double lr, wd;
        int decoupled;
    } cases[] = {{1e-3, 0, 0}, {0.1, 0.1, 0}, {1e-3, 1e-2, 1}, {0.1, 0.1, 1}};
    for (int s = 0; s < N_ISA; s++) {
        if (!use_isa(s)) continue;
        for (int c = 0; c < 4; c++) {
            float pf[N], gf[N], mf[N] = {0}, vf[N] = {0}, rpf[N], rmf[N] = {0}, rvf[N] = {0};
            double pd[N], gd[N], md[N] = {0}, vd[N] = {0}, rpd[N], rmd[N] = {0}, rvd[N] = {0};
            double p0[N];
            rng_seed(3 + (uint64_t)c);
            for (int i = 0; i < N; i++) pd[i] = p0[i] = urand(-2, 2), pf[i] = (float)pd[i];
            memcpy(rpf, pf, sizeof pf);
            memcpy(rpd, pd, sizeof pd);
            const double b1 = 0.9, b2 = 0.999, eps = 1e-8;
            for (int t = 1; t <= STEPS; t++) {
                for (int i = 0; i < N; i++) gd[i] = urand(-1, 1), gf[i] = (float)gd[i];
                const double bc1 = 1 - pow(b1, t), ibc2 = 1 / sqrt(1 - pow(b2, t));
                const double lr = cases[c].lr, wd = cases[c].wd;
                tgi_vadam_f32(pf, gf, mf, vf, N, lr / bc1, b1, b2, ibc2, eps, wd,
                              cases[c].decoupled, lr);
                adam_ref_float(rpf, gf, rmf, rvf, N, lr / bc1, b1, b2, ibc2, eps, wd,
                               cases[c].decoupled, lr);
                tgi_vadam_f64(pd, gd, md, vd, N, lr / bc1, b1, b2, ibc2, eps, wd,
                              cases[c].decoupled, lr);
                adam_ref_double(rpd, gd, rmd, rvd, N, lr / bc1, b1, b2, ibc2, eps, wd,
                                cases[c].decoupled, lr);
                cr_assert(memcmp(pf, rpf, sizeof pf) == 0 && memcmp(mf, rmf, sizeof mf) == 0 &&
                              memcmp(vf, rvf, sizeof vf) == 0,
                          "%s adam case %d step %d: f32 differs from the scalar loop",
                          isa_names[s], c, t);
                cr_assert(memcmp(pd, rpd, sizeof pd) == 0 && memcmp(md, rmd, sizeof md) == 0 &&
                              memcmp(vd, rvd, sizeof vd) == 0,
                          "%s adam case %d step %d: f64 differs from the scalar loop",
                          isa_names[s], c, t);
            }
            /* and the parameters moved */
            int moved = 0;
            for (int i = 0; i < N; i++) moved += pd[i] != p0[i] && pf[i] != (float)p0[i];
            cr_assert_eq(moved, N, "%s adam case %d: %d of %d parameters moved", isa_names[s],
                         c, moved, N);
        }
    }
}

/* PyTorch 1.13's numbers for 4 steps of Adam / AdamW on the problem of
 * tests/optim_reference.py (two parameters p[3], q[2] taken as one flat array of 5,
 * gradient c x + d): ref_adam_default, ref_adam_wd, ref_adamw_default and ref_adamw_wd
 * of optim_reference.h. */

Test(vmath, adam_matches_pytorch)
{
    const struct {
        const char *name;
        const double (*ref)[5];
        double lr, wd;
        int decoupled;
    } cases[] = {
        {"adam default", ref_adam_default, 1e-3, 0, 0},
        {"adam wd", ref_adam_wd, 0.1, 0.1, 0},
        {"adamw default", ref_adamw_default, 1e-3, 1e-2, 1},
        {"adamw wd", ref_adamw_wd, 0.1, 0.1, 1},
    };
    const double c[5] = {1.0, 2.0, 0.5, 1.5, 0.7}, d[5] = {0.3, -0.4, 0.1, -0.2, 0.25};
    const double x0[5] = {0.5, -1.2, 2.0, 1.0, -0.5};
    for (int s = 0; s < N_ISA; s++) {
        if (!use_isa(s)) continue;
        for (int k = 0; k < 4; k++) {
            double p[5], g[5], m[5] = {0}, v[5] = {0};
            float pf[5], gf[5], mf[5] = {0}, vf[5] = {0};
            for (int i = 0; i < 5; i++) p[i] = x0[i], pf[i] = (float)x0[i];
            for (int t = 1; t <= 4; t++) {
                const double bc1 = 1 - pow(0.9, t), ibc2 = 1 / sqrt(1 - pow(0.999, t));
                const double lr = cases[k].lr, wd = cases[k].wd;
                for (int i = 0; i < 5; i++) g[i] = c[i] * p[i] + d[i];
                for (int i = 0; i < 5; i++) gf[i] = (float)(c[i] * (double)pf[i] + d[i]);
                tgi_vadam_f64(p, g, m, v, 5, lr / bc1, 0.9, 0.999, ibc2, 1e-8, wd,
                              cases[k].decoupled, lr);
                tgi_vadam_f32(pf, gf, mf, vf, 5, lr / bc1, 0.9, 0.999, ibc2, 1e-8, wd,
                              cases[k].decoupled, lr);
                for (int i = 0; i < 5; i++) {
                    const double want = cases[k].ref[t - 1][i];
                    cr_assert(fabs(p[i] - want) <= 1e-13 * (1 + fabs(want)),
                              "%s %s f64 step %d element %d: %.17g, PyTorch %.17g", isa_names[s],
                              cases[k].name, t, i, p[i], want);
                    cr_assert(fabs(pf[i] - want) <= 2e-6 * (1 + fabs(want)),
                              "%s %s f32 step %d element %d: %.9g, PyTorch %.17g", isa_names[s],
                              cases[k].name, t, i, (double)pf[i], want);
                }
            }
        }
    }
}

/* ---- AVX-512 computes what AVX2 computes ----------------------------------------
 * Both sets run the same template with the same fused operations in the same order,
 * lane by lane, so on real hardware their results agree bit for bit and the accuracy
 * figures measured for avx2 hold for avx512. Runs where the CPU has both. (Not in the
 * SIMDe verification build, whose emulated FMA is not fused.) */
Test(vmath, avx512_matches_avx2)
{
#if defined(TGI_VMATH_EMULATE_AVX512)
    cr_skip_test("SIMDe emulation: FMA not fused");
#else
    if (!use_isa(1) || !use_isa(2)) {
        cr_log_info("avx512 or avx2 not available: nothing to compare");
        cr_assert(1);
        return;
    }
    enum { N = 20011 };
    static float xf[N], a32[N], b32[N];
    static double xd[N], a64[N], b64[N];
    const struct {
        un32 f32;
        un64 f64;
        double lo, hi;
    } fs[] = {{tgi_vexp_f32, tgi_vexp_f64, -110, 100},
              {tgi_vlog_f32, tgi_vlog_f64, -1, 1e6},
              {tgi_vtanh_f32, tgi_vtanh_f64, -10, 10},
              {tgi_vsigmoid_f32, tgi_vsigmoid_f64, -120, 120}};
    for (int f = 0; f < 4; f++) {
        rng_seed(9 + (uint64_t)f);
        for (int i = 0; i < N; i++) xd[i] = urand(fs[f].lo, fs[f].hi), xf[i] = (float)xd[i];
        use_isa(1);
        fs[f].f32(a32, xf, N);
        fs[f].f64(a64, xd, N);
        use_isa(2);
        fs[f].f32(b32, xf, N);
        fs[f].f64(b64, xd, N);
        for (int i = 0; i < N; i++) {
            cr_assert(same_bits_f32(a32[i], b32[i]), "kernel %d f32(%a): avx2 %a, avx512 %a", f,
                      (double)xf[i], (double)a32[i], (double)b32[i]);
            cr_assert(same_bits_f64(a64[i], b64[i]), "kernel %d f64(%a): avx2 %a, avx512 %a", f,
                      xd[i], a64[i], b64[i]);
        }
    }
#endif
}

/* ---- kernel set selection ------------------------------------------------------- */

Test(vmath, isa_selection)
{
    tgi_vmath_force(NULL);
    const char *autoname = tgi_vmath_isa();
    cr_assert(strcmp(autoname, "generic") == 0 || strcmp(autoname, "avx2") == 0 ||
                  strcmp(autoname, "avx512") == 0,
              "isa %s", autoname);
#if defined(__x86_64__) && !defined(TGI_VMATH_EMULATE_AVX512)
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512dq") &&
        __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("fma"))
        cr_assert_str_eq(autoname, "avx512");
    else if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma"))
        cr_assert_str_eq(autoname, "avx2");
    else
        cr_assert_str_eq(autoname, "generic");
#endif
    cr_log_info("automatic kernel set: %s", autoname);
    assert_force_by_name(tgi_vmath_force, tgi_vmath_isa, autoname, "vmath");
    /* n <= 0 touches nothing */
    float y = 5.0f, x = 1.0f;
    tgi_vexp_f32(&y, &x, 0);
    tgi_vexp_f32(&y, &x, -3);
    cr_assert(y == 5.0f);
}

#if defined(TGI_VMATH_EMULATE_AVX512)
/* test_vmath_avx512emu (CMakeLists.txt): the library is built with the AVX-512 set on
 * SIMDe, so the sweeps above also checked the AVX-512 kernels */
Test(vmath, avx512_set_runs_emulated)
{
    tgi_vmath_force(NULL);
    cr_assert_str_eq(tgi_vmath_isa(), "avx512");
}
#endif
