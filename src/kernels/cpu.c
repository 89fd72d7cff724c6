/* SPDX-License-Identifier: MIT */
/* cpu.c: the CPU-feature probe and the choice of a kernel set (cpu.h). */
#include "cpu.h"

#include <stddef.h>
#include <string.h>

static const char *const isa_names[TGI_ISA_COUNT] = {"generic", "avx2", "avx512"};

int tgi_cpu_has(tgi_isa isa)
{
    switch (isa) {
    case TGI_ISA_GENERIC:
        return 1;
#if defined(__x86_64__)
    case TGI_ISA_AVX2:
        __builtin_cpu_init();
        return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
    case TGI_ISA_AVX512:
#if defined(TGI_VMATH_EMULATE_AVX512) || defined(TGI_GEMM_EMULATE_AVX512)
        return 1; /* verification build: the AVX-512 sets run on SIMDe */
#else
        /* libgcc's cpu model also checks (XGETBV) that the OS saves the zmm state */
        __builtin_cpu_init();
        return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512dq") &&
               __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("fma");
#endif
#endif
    default:
        return 0;
    }
}

const void *tgi_isa_choose(const tgi_isa_sets *s)
{
    int isa = TGI_ISA_COUNT - 1;
    while (isa > TGI_ISA_GENERIC && !(s->set[isa] && tgi_cpu_has((tgi_isa)isa))) isa--;
    atomic_store_explicit(s->chosen, s->set[isa], memory_order_release);
    return s->set[isa];
}

void tgi_isa_force(const tgi_isa_sets *s, const char *name)
{
    if (!name) {
        atomic_store_explicit(s->forced, NULL, memory_order_release);
        return;
    }
    for (int isa = 0; isa < TGI_ISA_COUNT; isa++)
        if (strcmp(name, isa_names[isa]) == 0 && s->set[isa] && tgi_cpu_has((tgi_isa)isa))
            atomic_store_explicit(s->forced, s->set[isa], memory_order_release);
}
