/* SPDX-License-Identifier: MIT */
/* vmath_tmpl.h: the vmath kernels, written once over a small vector vocabulary and
 * instantiated per instruction set and element type by vmath_generic.c,
 * vmath_avx2.c and vmath_avx512.c. No include guard: included once per instantiation.
 * Method, coefficients' origin and measured errors: docs/vmath.md.
 *
 * The includer defines:
 *   TMPL_F64        1 for double, 0 for float (the template then defines T, the
 *                   element type, and TMPL_PICK(f, d): f for float, d for double)
 *   TMPL_SFX        suffix naming this instantiation (e.g. avx2_f32)
 *   TMPL_TARGET     function attribute enabling the instruction set, or nothing
 *   V, VI, VM       vector of VL elements; vector of VL integers of the element's
 *                   width; lane mask (result of a comparison)
 *   VL              lanes per vector
 *   V_LOAD(p), V_STORE(p, v)        unaligned load / store of VL elements
 *   V_LOADN(p, n), V_STOREN(p, v, n)  the first 0 < n < VL lanes only (other lanes
 *                   load as 0; memory past p[n-1] is never touched)
 *   V_SET1(s)       s in every lane
 *   V_ADD V_SUB V_MUL V_DIV (a, b), V_SQRT(a)   IEEE lane-wise operations
 *   V_FMA(a, b, c)  a*b + c, fused where the ISA has FMA;  V_FNMA(a, b, c)  c - a*b
 *   V_MAX(a, b)     a > b ? a : b  (so b when either is NaN: x86 maxps)
 *   V_MIN(a, b)     a < b ? a : b
 *   V_AND V_OR V_XOR (a, b), V_ANDNOT(a, b) = ~a & b   bitwise on elements
 *   V_LT V_GT V_GE V_EQ (a, b)      ordered comparisons (false if either is NaN)
 *   V_NLE V_NGE (a, b)              !(a <= b), !(a >= b)  (true if either is NaN)
 *   VM_OR(m1, m2), VM_ANY(m)        mask union; 1 if any lane is set
 *   V_SEL(m, a, b)  m ? a : b lane-wise
 *   V_AS_I(v), I_AS_V(i)            reinterpret the bits
 *   I_SET1(s), I_ADD I_SUB I_AND I_OR I_XOR (a, b), I_SLLI I_SRLI (a, imm)
 *                   integer lanes, wrapping; I_SRLI is a logical shift
 * and gets, all static: tgi_vm_<kernel>_SFX for every kernel of vmath.h.
 * With TMPL_KEEP_VOCAB defined, TMPL_TARGET, V, VI, VM, VL and the vocabulary outlive
 * the include, so an includer writes them once for both element types (with
 * TMPL_PICK, expanded inside the template) and includes the template twice.
 *
 * Every function handles an element the same way wherever it sits (the tail goes
 * through V_LOADN/V_STOREN with the same arithmetic), so results do not depend on n. */

#if TMPL_F64
#define T double
#define TMPL_PICK(f, d) d
#else
#define T float
#define TMPL_PICK(f, d) f
#endif
#define VM_CAT2(a, b) a##b
#define VM_CAT(a, b) VM_CAT2(a, b)
#define VM_NAME(base) VM_CAT(tgi_vm_, VM_CAT(base, VM_CAT(_, TMPL_SFX)))
#define VM_INLINE static inline __attribute__((always_inline)) TMPL_TARGET
#define VM_FUNC static TMPL_TARGET
#define VM_C(c) V_SET1((T)(c))
/* one Horner step: acc * x + c */
#define VM_H(acc, x, c) V_FMA((acc), (x), VM_C(c))
/* The polynomial with the coefficients c0, c1, .., highest degree first, at x:
 * (..(c0 x + c1) x + ..) x + cn, for 5, 7, 9, 11 or 12 coefficients. The Horner
 * steps are statements, one after the other, with constant coefficients: the
 * compiler sees the program a chain of VM_H assignments would give it. */
#define VM_POLY(x, ...) VM_CAT(VM_P, VM_NARGS(__VA_ARGS__))((x), __VA_ARGS__)
#define VM_NARGS(...) VM_NARGS_(__VA_ARGS__, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0)
#define VM_NARGS_(a, b, c, d, e, f, g, h, i, j, k, l, n, ...) n
/* H = acc, then H = H x + a (and H = H x + b): Horner steps as statements */
#define VM_HORNER1(H, acc, x, a) __extension__({ V H = (acc); H = VM_H(H, x, a); H; })
#define VM_HORNER(H, acc, x, a, b)                                                         \
    __extension__({                                                                        \
        V H = (acc);                                                                       \
        H = VM_H(H, x, a);                                                                 \
        H = VM_H(H, x, b);                                                                 \
        H;                                                                                 \
    })
#define VM_P5(x, a, b, c, d, e) VM_HORNER(p5_, VM_HORNER(p3_, VM_C(a), x, b, c), x, d, e)
#define VM_P7(x, a, b, c, d, e, f, g) VM_HORNER(p7_, VM_P5(x, a, b, c, d, e), x, f, g)
#define VM_P9(x, a, b, c, d, e, f, g, h, i) VM_HORNER(p9_, VM_P7(x, a, b, c, d, e, f, g), x, h, i)
#define VM_P11(x, a, b, c, d, e, f, g, h, i, j, k)                                         \
    VM_HORNER(p11_, VM_P9(x, a, b, c, d, e, f, g, h, i), x, j, k)
#define VM_P12(x, a, b, c, d, e, f, g, h, i, j, k, l)                                      \
    VM_HORNER1(p12_, VM_P11(x, a, b, c, d, e, f, g, h, i, j, k), x, l)

/* ---- constants ----------------------------------------------------------------- */
#if TMPL_F64
#define VM_MB 52                          /* mantissa bits */
#define VM_BIAS 1023
#define VM_SHIFT 0x1.8p52                 /* adding it rounds |v| < 2^51 to an integer */
#define VM_LOG2E 0x1.71547652b82fep0
#define VM_LN2HI 0x1.62e42feep-1          /* 32 significant bits: k * LN2HI is exact */
#define VM_LN2LO 0x1.a39ef35793c76p-33    /* ln 2 - LN2HI */
#define VM_EXP_LO (-746.0)                /* exp(x) < 2^-1075 below: rounds to +0 */
#define VM_EXP_HI 710.0                   /* exp(x) > DBL_MAX above */
#define VM_EXP_KFAST 1022.0               /* |k| <= this: 2^k is a normal number */
#define VM_MIN_NORMAL 0x1p-1022
#define VM_SUB_SCALE 0x1p54               /* log: makes a subnormal input normal */
#define VM_SUB_BITS 54.0
#define VM_LOG_OFF 0x40195f619980c433     /* 2^63 - bits(sqrt(1/2)) */
#define VM_LOG_EBIAS 0x1.0000000000800p52 /* 2^52 + 2048 */
#define VM_EXPMASK ((int64_t)-0x10000000000000) /* sign and exponent bits */
#define VM_MAGIC 0x4330000000000000       /* bits(2^52) */
#define VM_SIGNBIT INT64_MIN
#define VM_TANH_CUT 0.625
#define VM_TANH_SAT 20.0                  /* tanh(|x| >= 20) rounds to 1 */
#else
#define VM_MB 23
#define VM_BIAS 127
#define VM_SHIFT 0x1.8p23f
#define VM_LOG2E 0x1.715476p0f
#define VM_LN2HI 0x1.62e4p-1f             /* 15 significant bits: k * LN2HI is exact */
#define VM_LN2LO 0x1.7f7d1cp-20f          /* ln 2 - LN2HI */
#define VM_EXP_LO (-104.0f)               /* exp(x) < 2^-150 below: rounds to +0 */
#define VM_EXP_HI 89.0f                   /* exp(x) > FLT_MAX above */
#define VM_EXP_KFAST 126.0f
#define VM_MIN_NORMAL 0x1p-126f
#define VM_SUB_SCALE 0x1p24f
#define VM_SUB_BITS 24.0f
#define VM_LOG_OFF 0x40cafb0d             /* 2^31 - bits(sqrt(1/2)) */
#define VM_LOG_EBIAS 0x1.0002p23f         /* 2^23 + 256 */
#define VM_EXPMASK ((int32_t)-0x800000)
#define VM_MAGIC 0x4b000000               /* bits(2^23) */
#define VM_SIGNBIT INT32_MIN
#define VM_TANH_CUT 0.625f
#define VM_TANH_SAT 20.0f
#endif

/* ---- exp ------------------------------------------------------------------------
 * x = k ln2 + r, k = round(x / ln2), |r| <= ln2/2 (Cody-Waite: k LN2HI is exact and
 * so is x - k LN2HI; the second step rounds once). e^r = 1 + r + r^2 P(r), P the
 * minimax polynomial for the relative error of e^r on [-ln2/2, ln2/2] (degree 4 for
 * float, 10 for double; docs/vmath.md). Then e^x = e^r 2^k, with 2^k built in the
 * exponent bits. Where some lane needs a 2^k outside the normal range (results that
 * overflow or are subnormal) the scale is applied in two halves 2^k1 2^k2, so a
 * subnormal result is rounded once and an overflow gives +inf. x is first clamped
 * into [EXP_LO, EXP_HI], which keeps k small and sends +-inf to +inf and +0 through
 * the same arithmetic; NaN survives the clamp (V_MAX/V_MIN return x) and the
 * polynomial. k is read from the bits of x/ln2 + SHIFT, so no float-to-int
 * conversion ever sees a NaN. */
VM_INLINE V VM_NAME(exp_v)(V x)
{
    const V shift = VM_C(VM_SHIFT);
    x = V_MAX(VM_C(VM_EXP_LO), x);
    x = V_MIN(VM_C(VM_EXP_HI), x);
    const V z = V_FMA(x, VM_C(VM_LOG2E), shift); /* SHIFT + k */
    const V kf = V_SUB(z, shift);
    V r = V_FNMA(kf, VM_C(VM_LN2HI), x);
    r = V_FNMA(kf, VM_C(VM_LN2LO), r);
    const V r2 = V_MUL(r, r);
#if TMPL_F64
    const V q = VM_POLY(r,
        0x1.1e3d35fd21eadp-29, 0x1.af6bda7c84d9bp-26, 0x1.27e5b43375de1p-22,
        0x1.71ddf028587fep-19, 0x1.a01a01369f9c9p-16, 0x1.a01a01b37b43ep-13,
        0x1.6c16c16c30439p-10, 0x1.111111110ec65p-7, 0x1.5555555555503p-5,
        0x1.555555555555bp-3, 0x1p-1);
#else
    const V q = VM_POLY(r,
        0x1.6a244cp-10f, 0x1.1239d4p-7f, 0x1.5558f2p-5f, 0x1.555492p-3f,
        0x1.fffffcp-2f);
#endif
    const V p = V_ADD(V_FMA(q, r2, r), VM_C(1)); /* e^r */
    const VI k = I_SUB(V_AS_I(z), V_AS_I(shift));
    const V akf = V_ANDNOT(VM_C(-0.0), kf);
    if (!VM_ANY(V_GT(akf, VM_C(VM_EXP_KFAST))))
        return V_MUL(p, I_AS_V(I_SLLI(I_ADD(k, I_SET1(VM_BIAS)), VM_MB)));
    /* k1 = round(k / 2), k2 = k - k1: both within the normal exponent range */
    const VI k1 = I_SUB(V_AS_I(V_FMA(kf, VM_C(0.5), shift)), V_AS_I(shift));
    const VI k2 = I_SUB(k, k1);
    const V s1 = I_AS_V(I_SLLI(I_ADD(k1, I_SET1(VM_BIAS)), VM_MB));
    const V s2 = I_AS_V(I_SLLI(I_ADD(k2, I_SET1(VM_BIAS)), VM_MB));
    return V_MUL(V_MUL(p, s1), s2);
}

/* ---- log ------------------------------------------------------------------------
 * x = 2^e m with m in [sqrt(1/2), sqrt(2)), found in the bits: d = bits(x) -
 * bits(sqrt(1/2)) has e in its exponent field, and bits(x) - (d & exponent field) is
 * m. (VM_LOG_OFF adds 2^31 / 2^63 so that d is never negative; e is then read as a
 * float with the 2^MB trick, exactly.) f = m - 1 is exact, in [-0.293, 0.415), and
 *   float:  log(1+f) = f - f^2/2 + f^3 P(f), P minimax of degree 7
 *   double: s = f/(2+f), log(1+f) = f - (f^2/2 - s (f^2/2 + R)), R = z Q(z), z = s^2,
 *           Q minimax of degree 6 (fdlibm's arrangement: the big terms stay exact)
 * log x = e LN2HI + (f + (e LN2LO + correction)), e LN2HI exact.
 * core: x positive, finite and normal; ebias = VM_LOG_EBIAS (+ VM_SUB_BITS when x was
 * scaled up by VM_SUB_SCALE). */
VM_INLINE V VM_NAME(log_core)(V x, V ebias)
{
    const V one = VM_C(1);
    const VI ix = V_AS_I(x);
    const VI d = I_ADD(ix, I_SET1(VM_LOG_OFF));
    const V e = V_SUB(I_AS_V(I_OR(I_SRLI(d, VM_MB), I_SET1(VM_MAGIC))), ebias);
    const V m = I_AS_V(I_XOR(I_SUB(ix, I_AND(d, I_SET1(VM_EXPMASK))), I_SET1(VM_SIGNBIT)));
    const V f = V_SUB(m, one);
#if TMPL_F64
    const V s = V_DIV(f, V_ADD(VM_C(2), f));
    const V z = V_MUL(s, s);
    const V q = VM_POLY(z,
        0x1.2f056376f3d8p-3, 0x1.39a1bab906fe1p-3, 0x1.74663ee859683p-3,
        0x1.c71c52095d94cp-3, 0x1.24924941f1243p-2, 0x1.999999997fdb7p-2,
        0x1.5555555555592p-1);
    const V R = V_MUL(z, q);
    const V hfsq = V_MUL(VM_C(0.5), V_MUL(f, f));
    const V t = V_FMA(s, V_ADD(hfsq, R), V_MUL(e, VM_C(VM_LN2LO)));
    return V_FMA(e, VM_C(VM_LN2HI), V_SUB(f, V_SUB(hfsq, t)));
#else
    const V q = VM_POLY(f, /* -1/2 + f P(f) */
        -0x1.38b586p-4f, 0x1.055b6cp-3f, -0x1.0d8542p-3f, 0x1.22da1cp-3f,
        -0x1.547244p-3f, 0x1.99a008p-3f, -0x1.000226p-2f, 0x1.555554p-2f, -0.5f);
    const V corr = V_MUL(V_MUL(f, f), q);         /* -f^2/2 + f^3 P(f) */
    const V lo = V_FMA(e, VM_C(VM_LN2LO), corr);
    return V_FMA(e, VM_C(VM_LN2HI), V_ADD(f, lo)); /* e LN2HI is exact */
#endif
}

/* log with the special cases: subnormal x is scaled up by 2^24 (float) / 2^54
 * (double) first; log(+-0) = -inf, log(x < 0) = NaN, log(+inf) = +inf, NaN -> NaN. */
VM_INLINE V VM_NAME(log_v)(V x)
{
    V y = VM_NAME(log_core)(x, VM_C(VM_LOG_EBIAS));
    const V zero = VM_C(0), inf = VM_C(INFINITY);
    const VM spec = VM_OR(V_NGE(x, VM_C(VM_MIN_NORMAL)), V_GE(x, inf));
    if (VM_ANY(spec)) {
        const V ys = VM_NAME(log_core)(V_MUL(x, VM_C(VM_SUB_SCALE)),
                                       VM_C(VM_LOG_EBIAS + VM_SUB_BITS));
        V s = V_SEL(V_EQ(x, zero), VM_C(-INFINITY), V_SEL(V_LT(x, zero), VM_C(NAN), x));
        s = V_SEL(V_GT(x, zero), ys, s); /* subnormal (and +inf, fixed next) */
        s = V_SEL(V_GE(x, inf), x, s);
        y = V_SEL(spec, s, y);
    }
    return y;
}

/* ---- tanh -----------------------------------------------------------------------
 * |x| < 0.625: tanh x = x + x^3 P(x^2), P minimax for the relative error (degree 4
 * for float, 10 for double), so tanh keeps full relative accuracy near 0 (and
 * tanh(+-0) = +-0, tanh of a subnormal is itself).
 * Otherwise: t = exp(-2|x|) <= e^-1.25, tanh |x| = (1 - t) / (1 + t), no cancellation.
 * |x| is capped at 20 before exp (tanh(20) rounds to 1 in both types), so large |x|
 * gives exactly 1 and never takes exp's slow path. The sign of x is put back last. */
VM_INLINE V VM_NAME(tanh_v)(V x)
{
    const V one = VM_C(1);
    const V ax = V_ANDNOT(VM_C(-0.0), x);
    const V sgn = V_XOR(x, ax);
    const V t = VM_NAME(exp_v)(V_MUL(V_MIN(VM_C(VM_TANH_SAT), ax), VM_C(-2)));
    const V yb = V_FNMA(VM_C(2), V_DIV(t, V_ADD(one, t)), one); /* 1 - 2t/(1+t) */
    const V u = V_MUL(ax, ax);
#if TMPL_F64
    const V q = VM_POLY(u,
        -0x1.0da7279d1ed4cp-16, 0x1.4391213d2ed2dp-14, -0x1.df5579a5ac83ap-13,
        0x1.336612e39aab5p-11, -0x1.7d68a32fcd288p-10, 0x1.d6cf280ecc42dp-9,
        -0x1.226e162bf7af9p-7, 0x1.664f477adac7ep-6, -0x1.ba1ba1b5064bp-5,
        0x1.111111110accdp-3, -0x1.55555555554ffp-2);
#else
    const V q = VM_POLY(u,
        -0x1.75e1cep-8f, 0x1.52269cp-6f, -0x1.b83c5ap-5f, 0x1.110726p-3f,
        -0x1.555532p-2f);
#endif
    const V ys = V_FMA(V_MUL(ax, u), q, ax);
    return V_OR(V_SEL(V_LT(ax, VM_C(VM_TANH_CUT)), ys, yb), sgn);
}

/* ---- sigmoid --------------------------------------------------------------------
 * e = exp(-|x|) in (0, 1]: sigmoid x = 1 / (1 + e) for x >= 0, e / (1 + e) for x < 0.
 * Nothing overflows; the negative tail keeps its subnormal values and reaches +0,
 * the positive one reaches exactly 1. NaN: e is NaN and so is the quotient. */
VM_INLINE V VM_NAME(sigmoid_v)(V x)
{
    const V one = VM_C(1);
    const V e = VM_NAME(exp_v)(V_OR(x, VM_C(-0.0))); /* -|x| */
    return V_DIV(V_SEL(V_GE(x, VM_C(0)), one, e), V_ADD(one, e));
}

/* relu: x > 0 or NaN: x; else +0 (so relu(-0) = +0, as the scalar op) */
VM_INLINE V VM_NAME(relu_v)(V x)
{
    const V zero = VM_C(0);
    return V_SEL(V_NLE(x, zero), x, zero);
}

/* ---- gelu -----------------------------------------------------------------------
 * y = x Phi(x) and, for backward, d = Phi(x) + x phi(x), phi(x) = e^(-x^2/2) / sqrt(2 pi)
 * (the erf form of F.gelu; Phi the normal distribution function).
 * float: with a = |x| (capped at 15, where Phi(-a) is below the smallest subnormal),
 *   Phi(-a) = 1/2 e^(-a^2/2) G(a) / (1 + sqrt2 a),  G(a) = (1 + sqrt2 a) e^(a^2/2) erfc(a/sqrt2)
 * G is smooth and bounded on [0, 15] (1 at 0, 2/sqrt(pi) at infinity), approximated by
 * a degree-11 polynomial in q = (a - K)/(a + K), K = 2 sqrt2, which maps [0, 15] onto
 * [-1, 0.683] (weighted least squares towards minimax, relative error 7.4e-9 with the
 * coefficients rounded to float; docs/vmath.md). e^(-a^2/2) is exp(-s/2) (1 - t/2),
 * s + t = a^2 exactly (Dekker's product, no FMA needed), so the tail Phi(-a) keeps its
 * relative accuracy (no 1 + erf cancellation); Phi(x) = Phi(-a) for x < 0, else
 * 1 - Phi(-a). phi shares the exponential. NaN gives NaN; gelu(+inf) = +inf with
 * d = 1, gelu(-inf) = NaN (as F.gelu: -inf * 0). */
#if !TMPL_F64
VM_INLINE V VM_NAME(gelu_v)(V x, V *d)
{
    const V one = VM_C(1), half = VM_C(0.5f);
    const V a = V_MIN(VM_C(15), V_ANDNOT(VM_C(-0.0f), x)); /* NaN stays NaN */
    const V q = V_DIV(V_SUB(a, VM_C(0x1.6a09e6p+1f)), V_ADD(a, VM_C(0x1.6a09e6p+1f)));
    const V p = VM_POLY(q, /* G(a) - 1, small: its rounding errors are too */
        0x1.4fbe68p-14f, 0x1.666166p-13f, -0x1.a3aebep-12f, -0x1.74c48cp-10f,
        0x1.482ba0p-10f, 0x1.1d6382p-7f, -0x1.072562p-7f, -0x1.bc270ap-5f,
        0x1.4ff9f8p-3f, -0x1.5407d0p-3f, -0x1.7bf5eap-4f, 0x1.1ba038p-2f);
    /* a^2 = s + t exactly: a = ah + al with 12 significant bits each */
    const V ah = I_AS_V(I_AND(V_AS_I(a), I_SET1((int32_t)-4096)));
    const V al = V_SUB(a, ah);
    const V s = V_MUL(a, a);
    const V t = V_ADD(V_ADD(V_SUB(V_MUL(ah, ah), s), V_MUL(V_ADD(ah, ah), al)), V_MUL(al, al));
    const V e0 = VM_NAME(exp_v)(V_MUL(s, V_SET1(-0.5f)));
    const V e = V_FNMA(V_MUL(half, t), e0, e0); /* e^(-a^2/2) */
    const V pm = V_MUL(V_DIV(V_MUL(half, V_ADD(one, p)), V_FMA(VM_C(0x1.6a09e6p+0f), a, one)), e);
    const V ph = V_SEL(V_LT(x, VM_C(0)), pm, V_SUB(one, pm)); /* Phi(x) */
    const V xc = V_OR(a, V_AND(VM_C(-0.0f), x));              /* x capped at +-15 */
    *d = V_FMA(V_MUL(xc, VM_C(0x1.988454p-2f)), e, ph);      /* Phi + x phi */
    return V_MUL(x, ph);
}

/* y = gelu(x); d = its derivative when d is not NULL (d may not alias x or y) */
VM_FUNC void VM_NAME(gelu)(T *y, T *d, const T *x, int64_t n)
{
    int64_t i = 0;
    V dv;
    for (; i + VL <= n; i += VL) {
        V_STORE(y + i, VM_NAME(gelu_v)(V_LOAD(x + i), &dv));
        if (d) V_STORE(d + i, dv);
    }
    if (i < n) {
        const int r_ = (int)(n - i);
        V_STOREN(y + i, VM_NAME(gelu_v)(V_LOADN(x + i, r_), &dv), r_);
        if (d) V_STOREN(d + i, dv, r_);
    }
}
#else
/* double: libm's erf and exp, element by element, in PyTorch's arrangement (the
 * precise path: the op tests hold f64 to PyTorch at 1e-12 relative) */
VM_FUNC void VM_NAME(gelu)(T *y, T *d, const T *x, int64_t n)
{
    for (int64_t i = 0; i < n; i++) {
        const T u = x[i], e = erf(u * 0.70710678118654752440);
        const T ph = 0.5 * (1 + e);
        y[i] = u * 0.5 * (1 + e);
        if (d) d[i] = ph + u * 0.39894228040143267794 * exp(-0.5 * u * u);
    }
}
#endif

/* ---- row loops ------------------------------------------------------------------ */
#define VM_UNARY(base)                                                                     \
    VM_FUNC void VM_NAME(base)(T * y, const T *x, int64_t n)                               \
    {                                                                                      \
        int64_t i = 0;                                                                     \
        for (; i + VL <= n; i += VL) V_STORE(y + i, VM_NAME(base##_v)(V_LOAD(x + i)));     \
        if (i < n) {                                                                       \
            const int r_ = (int)(n - i);                                                   \
            V_STOREN(y + i, VM_NAME(base##_v)(V_LOADN(x + i, r_)), r_);                    \
        }                                                                                  \
    }

VM_UNARY(exp)
VM_UNARY(log)
VM_UNARY(tanh)
VM_UNARY(sigmoid)
VM_UNARY(relu)

/* dx += op(a, dy) */
#define VM_BWD(base, expr)                                                                 \
    VM_INLINE V VM_NAME(base##_v)(V dx, V a, V dy) { return (expr); }                      \
    VM_FUNC void VM_NAME(base)(T * dx, const T *a, const T *dy, int64_t n)                 \
    {                                                                                      \
        int64_t i = 0;                                                                     \
        for (; i + VL <= n; i += VL)                                                       \
            V_STORE(dx + i, VM_NAME(base##_v)(V_LOAD(dx + i), V_LOAD(a + i), V_LOAD(dy + i))); \
        if (i < n) {                                                                       \
            const int r_ = (int)(n - i);                                                   \
            V_STOREN(dx + i,                                                               \
                     VM_NAME(base##_v)(V_LOADN(dx + i, r_), V_LOADN(a + i, r_),            \
                                       V_LOADN(dy + i, r_)),                               \
                     r_);                                                                  \
        }                                                                                  \
    }

/* d sigmoid = y (1 - y): dx + (dy y)(1 - y), the last multiply fused with the add */
VM_BWD(sigmoid_bwd, V_FMA(V_MUL(dy, a), V_SUB(VM_C(1), a), dx))
/* d tanh = 1 - y^2 = (1 - y)(1 + y): no cancellation near |y| = 1 even without FMA
 * (one of the two factors is exact there); then dx + dy (1 - y^2), fused */
VM_BWD(tanh_bwd, V_FMA(V_MUL(dy, V_SUB(VM_C(1), a)), V_ADD(VM_C(1), a), dx))
/* d relu = [x > 0]: dx + dy where x > 0, dx untouched elsewhere */
VM_BWD(relu_bwd, V_SEL(V_GT(a, VM_C(0)), V_ADD(dx, dy), dx))

/* y += a x */
VM_FUNC void VM_NAME(axpy)(T *y, T a, const T *x, int64_t n)
{
    const V va = V_SET1(a);
    int64_t i = 0;
    for (; i + VL <= n; i += VL) V_STORE(y + i, V_FMA(va, V_LOAD(x + i), V_LOAD(y + i)));
    if (i < n) {
        const int r = (int)(n - i);
        V_STOREN(y + i, V_FMA(va, V_LOADN(x + i, r), V_LOADN(y + i, r)), r);
    }
}

/* ---- Adam / AdamW (formula in vmath.h): no fused operations, the scalar order ---- */
typedef struct {
    V lr_t, b1, b11, b2, b21, inv_bc2, eps, wd, decay;
} VM_NAME(adam_k);

VM_INLINE void VM_NAME(adam_v)(const VM_NAME(adam_k) * k, int l2, int decoupled, V *p, V g,
                               V *m, V *v)
{
    V pv = *p;
    if (l2) g = V_ADD(g, V_MUL(k->wd, pv));
    if (decoupled) pv = V_MUL(pv, k->decay);
    const V mi = V_ADD(V_MUL(*m, k->b1), V_MUL(k->b11, g));
    const V vi = V_ADD(V_MUL(*v, k->b2), V_MUL(V_MUL(k->b21, g), g));
    const V den = V_ADD(V_MUL(V_SQRT(vi), k->inv_bc2), k->eps);
    *p = V_SUB(pv, V_MUL(k->lr_t, V_DIV(mi, den)));
    *m = mi;
    *v = vi;
}

VM_INLINE void VM_NAME(adam_loop)(const VM_NAME(adam_k) * k, int l2, int decoupled, T *p,
                                  const T *g, T *m, T *v, int64_t n)
{
    int64_t i = 0;
    for (; i + VL <= n; i += VL) {
        V pv = V_LOAD(p + i), mv = V_LOAD(m + i), vv = V_LOAD(v + i);
        VM_NAME(adam_v)(k, l2, decoupled, &pv, V_LOAD(g + i), &mv, &vv);
        V_STORE(p + i, pv);
        V_STORE(m + i, mv);
        V_STORE(v + i, vv);
    }
    if (i < n) {
        const int r = (int)(n - i);
        V pv = V_LOADN(p + i, r), mv = V_LOADN(m + i, r), vv = V_LOADN(v + i, r);
        VM_NAME(adam_v)(k, l2, decoupled, &pv, V_LOADN(g + i, r), &mv, &vv);
        V_STOREN(p + i, pv, r);
        V_STOREN(m + i, mv, r);
        V_STOREN(v + i, vv, r);
    }
}

VM_FUNC void VM_NAME(adam)(T *p, const T *g, T *m, T *v, int64_t n, double lr_t, double beta1,
                           double beta2, double inv_sqrt_bc2, double eps, double weight_decay,
                           int decoupled, double lr)
{
    /* every constant formed in double, then rounded once to T */
    const VM_NAME(adam_k) k = {
        .lr_t = V_SET1((T)lr_t),
        .b1 = V_SET1((T)beta1),
        .b11 = V_SET1((T)(1.0 - beta1)),
        .b2 = V_SET1((T)beta2),
        .b21 = V_SET1((T)(1.0 - beta2)),
        .inv_bc2 = V_SET1((T)inv_sqrt_bc2),
        .eps = V_SET1((T)eps),
        .wd = V_SET1((T)weight_decay),
        .decay = V_SET1((T)(1.0 - lr * weight_decay)),
    };
    /* the flags are constants in each call, so each loop is compiled without them */
    if (decoupled)
        VM_NAME(adam_loop)(&k, 0, 1, p, g, m, v, n);
    else if (weight_decay != 0)
        VM_NAME(adam_loop)(&k, 1, 0, p, g, m, v, n);
    else
        VM_NAME(adam_loop)(&k, 0, 0, p, g, m, v, n);
}

#undef VM_UNARY
#undef VM_BWD
#undef VM_H
#undef VM_POLY
#undef VM_NARGS
#undef VM_NARGS_
#undef VM_HORNER1
#undef VM_HORNER
#undef VM_P5
#undef VM_P7
#undef VM_P9
#undef VM_P11
#undef VM_P12
#undef VM_C
#undef VM_FUNC
#undef VM_INLINE
#undef VM_NAME
#undef VM_CAT
#undef VM_CAT2
#undef VM_MB
#undef VM_BIAS
#undef VM_SHIFT
#undef VM_LOG2E
#undef VM_LN2HI
#undef VM_LN2LO
#undef VM_EXP_LO
#undef VM_EXP_HI
#undef VM_EXP_KFAST
#undef VM_MIN_NORMAL
#undef VM_SUB_SCALE
#undef VM_SUB_BITS
#undef VM_LOG_OFF
#undef VM_LOG_EBIAS
#undef VM_EXPMASK
#undef VM_MAGIC
#undef VM_SIGNBIT
#undef VM_TANH_CUT
#undef VM_TANH_SAT
#undef TMPL_F64
#undef TMPL_SFX
#undef TMPL_PICK
#undef T
/* the includer's vocabulary (kept for the next instantiation with TMPL_KEEP_VOCAB) */
#ifndef TMPL_KEEP_VOCAB
#undef TMPL_TARGET
#undef V
#undef VI
#undef VM
#undef VL
#undef V_LOAD
#undef V_STORE
#undef V_LOADN
#undef V_STOREN
#undef V_SET1
#undef V_ADD
#undef V_SUB
#undef V_MUL
#undef V_DIV
#undef V_SQRT
#undef V_FMA
#undef V_FNMA
#undef V_MAX
#undef V_MIN
#undef V_AND
#undef V_OR
#undef V_XOR
#undef V_ANDNOT
#undef V_LT
#undef V_GT
#undef V_GE
#undef V_EQ
#undef V_NLE
#undef V_NGE
#undef VM_OR
#undef VM_ANY
#undef V_SEL
#undef V_AS_I
#undef I_AS_V
#undef I_SET1
#undef I_ADD
#undef I_SUB
#undef I_AND
#undef I_OR
#undef I_XOR
#undef I_SLLI
#undef I_SRLI
#endif
