/*
 * isa.c — which vector instruction set the kernels may use, decided once per context.
 *
 * x86: __builtin_cpu_supports reads cpuid and also checks that the OS saves the wide
 * registers (xgetbv), so a "yes" here is safe to execute. aarch64: NEON is architectural.
 * FLASHATTN_CPU_ISA=scalar|avx2|avx512|avx512_bf16|neon can only narrow the choice (to test
 * the other paths on one machine); asking for more than the machine has keeps the detected.
 */
#include "cpu/cpu.h"

#include <stdlib.h>
#include <string.h>

static fa_cpu_isa detect_hardware(void) {
#if defined(FA_HAVE_X86) && (defined(__x86_64__) || defined(__i386__)) && defined(__GNUC__)
    __builtin_cpu_init();
    bool avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
                __builtin_cpu_supports("f16c");
    bool avx512 = avx2 && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
                  __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq");
    if (avx512 && __builtin_cpu_supports("avx512bf16")) return FA_ISA_AVX512_BF16;
    if (avx512) return FA_ISA_AVX512;
    if (avx2) return FA_ISA_AVX2;
    return FA_ISA_SCALAR;
#elif defined(__aarch64__)
    return FA_ISA_NEON; /* architectural; runs the portable kernels, compiler-vectorised */
#else
    return FA_ISA_SCALAR;
#endif
}

const char *fa_cpu_isa_name(fa_cpu_isa isa) {
    switch (isa) {
    case FA_ISA_SCALAR: return "scalar";
    case FA_ISA_AVX2: return "avx2";
    case FA_ISA_AVX512: return "avx512";
    case FA_ISA_AVX512_BF16: return "avx512_bf16";
    case FA_ISA_NEON: return "neon";
    }
    return "unknown";
}

/* Requested ISA within what the hardware has: x86 levels are ordered, NEON stands alone. */
static fa_cpu_isa narrow(fa_cpu_isa hardware, fa_cpu_isa wanted) {
    if (wanted == FA_ISA_SCALAR) return FA_ISA_SCALAR;
    if (hardware == FA_ISA_NEON || wanted == FA_ISA_NEON) return hardware;
    return wanted < hardware ? wanted : hardware;
}

fa_cpu_isa fa_cpu_detect_isa(void) {
    fa_cpu_isa hardware = detect_hardware();
    const char *env = getenv("FLASHATTN_CPU_ISA");
    if (!env || !*env) return hardware;
    static const fa_cpu_isa all[] = {FA_ISA_SCALAR, FA_ISA_AVX2, FA_ISA_AVX512, FA_ISA_AVX512_BF16,
                                     FA_ISA_NEON};
    for (size_t i = 0; i < sizeof all / sizeof all[0]; ++i)
        if (strcmp(env, fa_cpu_isa_name(all[i])) == 0) return narrow(hardware, all[i]);
    return hardware; /* unknown names do not widen anything */
}
