/* SPDX-License-Identifier: MIT */
/* cpu.h: the choice of a kernel set from the CPU's features, shared by the GEMM
 * (gemm.c) and vector-math (vmath.c) dispatchers. Internal, not part of the public API.
 *
 * A family of kernels has one set per instruction set, indexed by tgi_isa; its
 * dispatcher keeps two atomic pointers, the automatic choice (made on first use) and
 * the set tests and benchmarks force, and asks tgi_isa_pick which one runs. The two
 * families are chosen independently, each by its own pointers. */
#ifndef TG_CPU_H
#define TG_CPU_H

#include <stdatomic.h>

typedef enum {
    TGI_ISA_GENERIC, /* portable C: any CPU */
    TGI_ISA_AVX2,    /* AVX2 and FMA (x86-64 only) */
    TGI_ISA_AVX512,  /* AVX-512 F, DQ, VL and FMA, with the OS saving the zmm state */
    TGI_ISA_COUNT
} tgi_isa;

/* The kernel sets of one family, by tgi_isa (the x86 ones NULL where the build has
 * none), and the two choices. */
typedef struct {
    const void *set[TGI_ISA_COUNT];
    _Atomic(const void *) *chosen; /* the automatic choice, NULL until made (made
                                      idempotently: two first callers store the
                                      same set) */
    _Atomic(const void *) *forced; /* the set tgi_isa_force forced, or NULL */
} tgi_isa_sets;

/* Defines, in a dispatcher, the static tgi_isa_sets NAME over the family's three
 * kernel sets (the x86 ones are named on x86-64 only) and its atomic choices CHOSEN
 * and FORCED. */
#if defined(__x86_64__)
#define TGI_ISA_X86(...) __VA_ARGS__
#else
#define TGI_ISA_X86(...)
#endif
#define TGI_ISA_SETS(NAME, CHOSEN, FORCED, generic, avx2, avx512)                          \
    static _Atomic(const void *) CHOSEN, FORCED;                                           \
    static const tgi_isa_sets NAME = {                                                     \
        .set = {[TGI_ISA_GENERIC] = (generic),                                             \
                TGI_ISA_X86([TGI_ISA_AVX2] = (avx2), [TGI_ISA_AVX512] = (avx512))},         \
        .chosen = &(CHOSEN),                                                               \
        .forced = &(FORCED),                                                               \
    }

/* 1 if this CPU (and OS) runs the instruction set, else 0. In the verification
 * build (-DTGI_VMATH_EMULATE_AVX512 -DTGI_GEMM_EMULATE_AVX512) the AVX-512 sets run
 * on SIMDe and AVX-512 counts as present. */
int tgi_cpu_has(tgi_isa isa);

/* Makes and stores the automatic choice: the widest instruction set the CPU has. */
__attribute__((cold)) const void *tgi_isa_choose(const tgi_isa_sets *s);

/* The set that runs: the forced one, else the automatic choice, made on the first
 * call. Inline: every kernel call goes through it. */
static inline const void *tgi_isa_pick(const tgi_isa_sets *s)
{
    const void *f = atomic_load_explicit(s->forced, memory_order_acquire);
    if (f) return f;
    const void *a = atomic_load_explicit(s->chosen, memory_order_acquire);
    return a ? a : tgi_isa_choose(s);
}

/* Forces the set named "generic", "avx2" or "avx512"; NULL goes back to the
 * automatic choice. A name this CPU (or this build) cannot run is ignored. */
void tgi_isa_force(const tgi_isa_sets *s, const char *name);

#endif /* TG_CPU_H */
