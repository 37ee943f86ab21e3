/*
 * bwd.h — what the cpu backward's files share: the per-ISA kernel table and the branch-free
 * exp that every ISA file compiles with its own vector width (bwd.c, bwd_avx2.c, bwd_avx512.c).
 */
#ifndef FA_CPU_BWD_H
#define FA_CPU_BWD_H

#include <math.h>
#include <stdbool.h>
#include <stdint.h>
#include <string.h>

/* The two inner loops of the backward, one implementation per instruction set. */
typedef struct fa_bwd_kernels {
    /* C (M, N) = [C +] A (M, K) · B (K, N): A[m][k] at A[m * a_rs + k * a_cs] (any layout, it is
     * only broadcast); B and C row-major with row strides ldb, ldc; all f32. */
    void (*gemm)(int64_t M, int64_t N, int64_t K, const float *A, int64_t a_rs, int64_t a_cs,
                 const float *B, int64_t ldb, float *C, int64_t ldc, bool accumulate);
    /* x[j] = exp(a * x[j] - b) for j < n. */
    void (*exp_affine)(float *x, int64_t n, float a, float b);
    /* a · b over n, rounded exactly as gemm rounds one element of C (same order, same FMA use),
     * so Δ = dO · O cancels dP = dO · V exactly where O = V (a single visible key). */
    float (*dot)(const float *a, const float *b, int64_t n);
} fa_bwd_kernels;

extern const fa_bwd_kernels fa_bwd_kernels_scalar;
#if defined(FA_HAVE_X86)
extern const fa_bwd_kernels fa_bwd_kernels_avx2;
extern const fa_bwd_kernels fa_bwd_kernels_avx512;
#endif

/*
 * exp(x) in f32 without branches, so that loops calling it vectorise: x = n ln2 + r with
 * |r| <= ln2 / 2, e^r by a degree-6 polynomial (Cephes' expf coefficients, ~1 ulp), 2^n put
 * straight into the exponent bits. Below -87.3 (where e^x is subnormal) the result is 0, so a
 * row whose lse is +inf gets P = 0; NaN stays NaN.
 */
static inline float fa_bwd_expf(float x) {
    const float lo = -87.3f, hi = 88.3f;
    const float round_magic = 12582912.0f; /* 1.5 * 2^23: adding it rounds to an integer */
    float xc = x >= lo ? x : lo; /* NaN -> lo: the int conversion below must see a number */
    xc = xc <= hi ? xc : hi;
    float n = (xc * 1.44269504f + round_magic) - round_magic;
    float r = xc - n * 0.693359375f; /* ln2 split in two so n * ln2_hi is exact */
    r = r - n * -2.12194440e-4f;
    float p = 1.9875691500e-4f;
    p = p * r + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    p = p * r * r + r + 1.0f;
    int32_t bits = ((int32_t)n + 127) << 23;
    float two_n;
    memcpy(&two_n, &bits, sizeof two_n);
    float y = x < lo ? 0.0f : p * two_n;
    return x == x ? y : x;
}

/* The exp_affine loop, instantiated by each ISA file. */
static inline void fa_bwd_exp_affine_loop(float *x, int64_t n, float a, float b) {
    for (int64_t j = 0; j < n; ++j) x[j] = fa_bwd_expf(a * x[j] - b);
}

/* The dot of the FMA kernels: one fused multiply-add per term, in order. */
static inline float fa_bwd_dot_fma(const float *a, const float *b, int64_t n) {
    float acc = 0.0f;
    for (int64_t i = 0; i < n; ++i) acc = fmaf(a[i], b[i], acc);
    return acc;
}

#endif /* FA_CPU_BWD_H */
