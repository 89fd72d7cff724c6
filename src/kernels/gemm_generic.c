/* SPDX-License-Identifier: MIT */
/* gemm_generic.c: the portable GEMM kernel set, for any CPU and any compiler that
 * has GCC's vector extensions (gcc, clang). The kernels are the ones in
 * gemm_tmpl.h over 16-byte vectors: SSE2 on x86-64, NEON on arm64, plain scalar
 * code where the target has no SIMD. No FMA: each step is a multiply and an add
 * (the library is built as ISO C, where gcc does not contract a*b+c).
 *
 * f32: 4x8 register tile (8 accumulators of 4 floats); f64: 4x4 (8 of 2 doubles). */
#include <string.h>

#include "gemm_kern.h"

typedef float tgi_gv4f __attribute__((vector_size(16)));
typedef double tgi_gv2d __attribute__((vector_size(16)));

static inline tgi_gv4f gv4f_load(const float *p)
{
    tgi_gv4f v;
    memcpy(&v, p, sizeof v);
    return v;
}
static inline void gv4f_store(float *p, tgi_gv4f v) { memcpy(p, &v, sizeof v); }
static inline tgi_gv2d gv2d_load(const double *p)
{
    tgi_gv2d v;
    memcpy(&v, p, sizeof v);
    return v;
}
static inline void gv2d_store(double *p, tgi_gv2d v) { memcpy(p, &v, sizeof v); }

#define GENERIC_MC 1536
#define GENERIC_KC 256
#define GENERIC_NC 128

#define TMPL_T float
#define TMPL_SFX generic_f32
#define TMPL_TARGET
#define TMPL_V tgi_gv4f
#define TMPL_VL 4
#define TMPL_MR 4
#define TMPL_NV 2
#define TMPL_ZERO() ((tgi_gv4f){0.0f, 0.0f, 0.0f, 0.0f})
#define TMPL_LOAD(p) gv4f_load(p)
#define TMPL_STORE(p, v) gv4f_store((p), (v))
#define TMPL_BCAST(p) ((tgi_gv4f){*(p), *(p), *(p), *(p)})
#define TMPL_FMA(a, b, c) ((a) * (b) + (c))
#define TMPL_ADD(a, b) ((a) + (b))
#include "gemm_tmpl.h"

#define TMPL_T double
#define TMPL_SFX generic_f64
#define TMPL_TARGET
#define TMPL_V tgi_gv2d
#define TMPL_VL 2
#define TMPL_MR 4
#define TMPL_NV 2
#define TMPL_ZERO() ((tgi_gv2d){0.0, 0.0})
#define TMPL_LOAD(p) gv2d_load(p)
#define TMPL_STORE(p, v) gv2d_store((p), (v))
#define TMPL_BCAST(p) ((tgi_gv2d){*(p), *(p)})
#define TMPL_FMA(a, b, c) ((a) * (b) + (c))
#define TMPL_ADD(a, b) ((a) + (b))
#include "gemm_tmpl.h"

const tgi_gemm_impl tgi_gemm_impl_generic = {
    "generic",
    {4, 8, GENERIC_MC, GENERIC_KC, GENERIC_NC, tgi_ukr_generic_f32, tgi_pack_a_generic_f32,
     tgi_pack_b_generic_f32, tgi_direct_generic_f32,
     tgi_ukr_pa_generic_f32, NULL, NULL},
    {4, 4, GENERIC_MC, GENERIC_KC, GENERIC_NC, tgi_ukr_generic_f64, tgi_pack_a_generic_f64,
     tgi_pack_b_generic_f64, tgi_direct_generic_f64,
     tgi_ukr_pa_generic_f64, NULL, NULL},
};
