/* SPDX-License-Identifier: MIT */
/* vmath_generic.c: the portable vmath kernels, for any CPU and any compiler that has
 * GCC's vector extensions (gcc, clang): the algorithms of vmath_tmpl.h over 16-byte
 * vectors, which become SSE2 on x86-64, NEON on arm64 and plain scalar code where
 * the target has no SIMD. No FMA: V_FMA is a multiply and an add (the library is
 * built as ISO C, where gcc does not contract a*b+c), so results can differ from the
 * AVX2 / AVX-512 sets within the documented error bounds (docs/vmath.md). The tail
 * of a row goes through a zero-padded vector in memory. */
#include <math.h>
#include <stdint.h>
#include <string.h>

#include "vmath.h"

_Static_assert(sizeof(float) * 4 == 2 * sizeof(uint64_t), "16-byte vectors");

typedef float tgi_vm_v4f __attribute__((vector_size(16)));
typedef uint32_t tgi_vm_v4u __attribute__((vector_size(16)));
typedef int32_t tgi_vm_v4i __attribute__((vector_size(16)));
typedef double tgi_vm_v2d __attribute__((vector_size(16)));
typedef uint64_t tgi_vm_v2u __attribute__((vector_size(16)));
typedef int64_t tgi_vm_v2i __attribute__((vector_size(16)));

/* NAME(s): a VT of VL lanes, each s converted to the lane type */
#define GV_BROADCAST(NAME, VT, ST, VL)                                                     \
    static inline __attribute__((always_inline)) VT NAME(ST s)                             \
    {                                                                                      \
        VT v;                                                                              \
        for (int l = 0; l < VL; l++) v[l] = s;                                             \
        return v;                                                                          \
    }

/* The vocabulary, written once for both element types with GCC's generic vector
 * operators; V, VU (unsigned lanes) and VM (comparison results) name the types. */
#define GV_DEFINE(P, T, V, VU, VM, VL, SQRT)                                               \
    static inline __attribute__((always_inline)) V P##_load(const T *p)                    \
    {                                                                                      \
        V v;                                                                               \
        memcpy(&v, p, sizeof v);                                                           \
        return v;                                                                          \
    }                                                                                      \
    static inline __attribute__((always_inline)) void P##_store(T *p, V v)                 \
    {                                                                                      \
        memcpy(p, &v, sizeof v);                                                           \
    }                                                                                      \
    static inline __attribute__((always_inline)) V P##_loadn(const T *p, int n)           \
    {                                                                                      \
        V v = {0};                                                                         \
        memcpy(&v, p, (size_t)n * sizeof(T));                                              \
        return v;                                                                          \
    }                                                                                      \
    static inline __attribute__((always_inline)) void P##_storen(T *p, V v, int n)        \
    {                                                                                      \
        memcpy(p, &v, (size_t)n * sizeof(T));                                              \
    }                                                                                      \
    GV_BROADCAST(P##_set1, V, T, VL)                                                       \
    GV_BROADCAST(P##_iset1, VU, uint64_t, VL)                                              \
    static inline __attribute__((always_inline)) V P##_sqrt(V a)                           \
    {                                                                                      \
        for (int l = 0; l < VL; l++) a[l] = SQRT(a[l]);                                    \
        return a;                                                                          \
    }                                                                                      \
    static inline __attribute__((always_inline)) V P##_sel(VM m, V a, V b)                 \
    {                                                                                      \
        return (V)(((VU)m & (VU)a) | (~(VU)m & (VU)b));                                    \
    }                                                                                      \
    static inline __attribute__((always_inline)) V P##_max(V a, V b)                       \
    {                                                                                      \
        return P##_sel(a > b, a, b);                                                       \
    }                                                                                      \
    static inline __attribute__((always_inline)) V P##_min(V a, V b)                       \
    {                                                                                      \
        return P##_sel(a < b, a, b);                                                       \
    }                                                                                      \
    static inline __attribute__((always_inline)) int P##_any(VM m)                         \
    {                                                                                      \
        uint64_t w[2];                                                                     \
        memcpy(w, &m, sizeof w);                                                           \
        return (w[0] | w[1]) != 0;                                                         \
    }

GV_DEFINE(gv4f, float, tgi_vm_v4f, tgi_vm_v4u, tgi_vm_v4i, 4, sqrtf)
GV_DEFINE(gv2d, double, tgi_vm_v2d, tgi_vm_v2u, tgi_vm_v2i, 2, sqrt)

/* The vocabulary of vmath_tmpl.h, the same text for both element types: GVP(op) names
 * the helper of the current type. TMPL_KEEP_VOCAB keeps it across the two includes. */
#define TMPL_KEEP_VOCAB
#define V_LOAD(p) GVP(load)(p)
#define V_STORE(p, v) GVP(store)((p), (v))
#define V_LOADN(p, n) GVP(loadn)((p), (n))
#define V_STOREN(p, v, n) GVP(storen)((p), (v), (n))
#define V_SET1(s) GVP(set1)(s)
#define V_ADD(a, b) ((a) + (b))
#define V_SUB(a, b) ((a) - (b))
#define V_MUL(a, b) ((a) * (b))
#define V_DIV(a, b) ((a) / (b))
#define V_SQRT(a) GVP(sqrt)(a)
#define V_FMA(a, b, c) ((a) * (b) + (c))
#define V_FNMA(a, b, c) ((c) - (a) * (b))
#define V_MAX(a, b) GVP(max)((a), (b))
#define V_MIN(a, b) GVP(min)((a), (b))
#define V_AND(a, b) ((V)((VI)(a) & (VI)(b)))
#define V_OR(a, b) ((V)((VI)(a) | (VI)(b)))
#define V_XOR(a, b) ((V)((VI)(a) ^ (VI)(b)))
#define V_ANDNOT(a, b) ((V)(~(VI)(a) & (VI)(b)))
#define V_LT(a, b) ((a) < (b))
#define V_GT(a, b) ((a) > (b))
#define V_GE(a, b) ((a) >= (b))
#define V_EQ(a, b) ((a) == (b))
#define V_NLE(a, b) (~((a) <= (b)))
#define V_NGE(a, b) (~((a) >= (b)))
#define VM_OR(a, b) ((a) | (b))
#define VM_ANY(m) GVP(any)(m)
#define V_SEL(m, a, b) GVP(sel)((m), (a), (b))
#define V_AS_I(v) ((VI)(v))
#define I_AS_V(i) ((V)(i))
#define I_SET1(s) GVP(iset1)((uint64_t)(s))
#define I_ADD(a, b) ((a) + (b))
#define I_SUB(a, b) ((a) - (b))
#define I_AND(a, b) ((a) & (b))
#define I_OR(a, b) ((a) | (b))
#define I_XOR(a, b) ((a) ^ (b))
#define I_SLLI(a, n) ((a) << (n))
#define I_SRLI(a, n) ((a) >> (n))

/* float: 4 lanes; double: 2 lanes */
#define GVP(op) TMPL_PICK(gv4f_##op, gv2d_##op)
#define TMPL_TARGET
#define V TMPL_PICK(tgi_vm_v4f, tgi_vm_v2d)
#define VI TMPL_PICK(tgi_vm_v4u, tgi_vm_v2u)
#define VM TMPL_PICK(tgi_vm_v4i, tgi_vm_v2i)
#define VL TMPL_PICK(4, 2)
#define TMPL_F64 0
#define TMPL_SFX generic_f32
#include "vmath_tmpl.h"
#define TMPL_F64 1
#define TMPL_SFX generic_f64
#include "vmath_tmpl.h"

const tgi_vmath_impl tgi_vmath_impl_generic = TGI_VMATH_IMPL(generic);
