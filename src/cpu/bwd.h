/*
 * bwd.h — what the cpu backward's files share: the per-ISA kernel table, and the branch-free
 * element loops (exp, tanh, Philox) that every ISA file compiles with its own vector width
 * (bwd.c: portable, bwd_avx2.c, bwd_avx512.c).
 */
#ifndef FA_CPU_BWD_H
#define FA_CPU_BWD_H

#include <math.h>
#include <stdbool.h>
#include <stdint.h>
#include <string.h>

#include "fa_philox.h"

/* The inner loops of the backward, one implementation per instruction set. */
typedef struct fa_bwd_kernels {
    /* C (M, N) = [C +] A (M, K) · B (K, N): A[m][k] at A[m * a_rs + k * a_cs] (any layout, it is
     * only broadcast); B and C row-major with row strides ldb, ldc; all f32. */
    void (*gemm)(int64_t M, int64_t N, int64_t K, const float *A, int64_t a_rs, int64_t a_cs,
                 const float *B, int64_t ldb, float *C, int64_t ldc, bool accumulate);
    /* x[j] = exp(a * x[j] - b) for j < n. */
    void (*exp_affine)(float *x, int64_t n, float a, float b);
    /* A tile with every key visible and no softcap, ALiBi or dropout, rows r < m of length n
     * (row stride ld): s = P = exp(a · s - lse[r]), then dp = dS = P ∘ (dp - delta[r]). */
    void (*probs_and_grads)(float *s, float *dp, int64_t m, int64_t n, int64_t ld, float a,
                            const float *lse, const float *delta);
    /* a · b over n, rounded exactly as gemm rounds one element of C (same order, same FMA use),
     * so Δ = dO · O cancels dP = dO · V exactly where O = V (a single visible key). */
    float (*dot)(const float *a, const float *b, int64_t n);
    /* Softcap c: x[j] = c · tanh(x[j] / c), tc[j] = 1 - tanh² (the chain rule's factor). */
    void (*softcap)(float *x, float *tc, int64_t n, float c);
    /* Dropout words (fa_philox.h) of key groups g0 .. g0 + ng - 1 of row i in head bh:
     * w[4 g + l] is word l of group g0 + g. */
    void (*dropout_words)(uint32_t *w, uint64_t seed, uint64_t offset, uint32_t bh, uint32_t i,
                          uint32_t g0, int64_t ng);
    /* AVX512_BF16 only (else NULL), for bf16 inputs: C (M, N) [+]= A · B on vdpbf16ps, which
     * multiplies pairs of bf16 along K and adds both products into f32 lanes. A[m][k] is the
     * pair at A[m * a_rs + k * a_cs] (any layout, it is only broadcast); B holds pairs along
     * K, (K2, N) uint32 with row stride ldb; C is f32, row stride ldc. */
    void (*gemm_bf16)(int64_t M, int64_t N, int64_t K2, const uint32_t *A, int64_t a_rs,
                      int64_t a_cs, const uint32_t *B, int64_t ldb, float *C, int64_t ldc,
                      bool accumulate);
    /* With gemm_bf16: dst (ceil(m / 2), ld) = pairs of rows (x[2k][c], x[2k + 1][c]) of x (m, n),
     * row stride x_ld, whose f32 values are bf16 exactly; an odd m pairs its last row with 0. */
    void (*pair_rows)(uint32_t *dst, int64_t ld, const float *x, int64_t x_ld, int64_t m,
                      int64_t n);
    /* With gemm_bf16: the operands of dV, dK and dQ from a tile's P (s) and dS (ds), (m, n) of
     * row stride ld, rounded to bf16 (nearest even): pairs of rows of each into p2 and ds2
     * (ceil(m / 2), ld), as pair_rows; ds row by row into ds16 (m, ld), an odd n padded with 0. */
    void (*round_tile)(const float *s, const float *ds, int64_t m, int64_t n, int64_t ld,
                       uint32_t *p2, uint32_t *ds2, uint16_t *ds16);
    /* With gemm_bf16: a · b over n (f32 copies of bf16 values), rounded as gemm_bf16 rounds one
     * element of C (odd term, then even term, of each pair). */
    float (*dot_pairs)(const float *a, const float *b, int64_t n);
    /* fa_load_row_f32 / fa_store_row_f32 (cpu.h), vectorised: the same values, rounded to
     * nearest even. */
    void (*load_row)(int32_t dtype, const void *src, float *dst, int64_t n);
    void (*store_row)(int32_t dtype, const float *src, void *dst, int64_t n);
} fa_bwd_kernels;

extern const fa_bwd_kernels fa_bwd_kernels_scalar;
#if defined(FA_HAVE_X86)
extern const fa_bwd_kernels fa_bwd_kernels_avx2;
extern const fa_bwd_kernels fa_bwd_kernels_avx512;
extern const fa_bwd_kernels fa_bwd_kernels_avx512_bf16;
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

/* tanh(x) without branches: the odd Taylor series to x^13 below |x| = 0.4 (error < 2e-9
 * relative there), else (e - 1) / (e + 1) with e = exp(2|x|) (a few ulp; e saturates, so no
 * inf / inf). NaN stays NaN. */
static inline float fa_bwd_tanhf(float x) {
    float ax = fabsf(x), x2 = x * x;
    float q = 21844.0f / 6081075.0f; /* Taylor coefficients of tanh(x) / x - 1, in x² */
    q = q * x2 - 1382.0f / 155925.0f;
    q = q * x2 + 62.0f / 2835.0f;
    q = q * x2 - 17.0f / 315.0f;
    q = q * x2 + 2.0f / 15.0f;
    q = q * x2 - 1.0f / 3.0f;
    float small = x + x * x2 * q;
    float e = fa_bwd_expf(2.0f * ax);
    float big = copysignf((e - 1.0f) / (e + 1.0f), x);
    return ax < 0.4f ? small : big;
}

/* The loops below are instantiated by each ISA file, so each gets its own vector width. */
static inline void fa_bwd_probs_and_grads_loop(float *s, float *dp, int64_t m, int64_t n,
                                               int64_t ld, float a, const float *lse,
                                               const float *delta) {
    for (int64_t r = 0; r < m; ++r) {
        float *p = s + r * ld, *g = dp + r * ld;
        const float b = lse[r], dr = delta[r];
        for (int64_t j = 0; j < n; ++j) {
            p[j] = fa_bwd_expf(a * p[j] - b);
            g[j] = p[j] * (g[j] - dr);
        }
    }
}

static inline void fa_bwd_softcap_loop(float *x, float *tc, int64_t n, float c) {
    for (int64_t j = 0; j < n; ++j) {
        float t = fa_bwd_tanhf(x[j] / c);
        x[j] = c * t;
        tc[j] = 1.0f - t * t;
    }
}

/* bf16 <-> f32 as in convert.c, branch-free so that the loops vectorise. */
static inline void fa_bwd_bf16_load_loop(const uint16_t *src, float *dst, int64_t n) {
    for (int64_t i = 0; i < n; ++i) {
        uint32_t u = (uint32_t)src[i] << 16;
        memcpy(&dst[i], &u, sizeof u);
    }
}

static inline void fa_bwd_bf16_store_loop(const float *src, uint16_t *dst, int64_t n) {
    for (int64_t i = 0; i < n; ++i) {
        uint32_t u;
        memcpy(&u, &src[i], sizeof u);
        uint32_t rounded = (u + 0x7FFFu + ((u >> 16) & 1u)) >> 16;
        dst[i] = (uint16_t)((u & 0x7FFFFFFFu) > 0x7F800000u ? (u >> 16) | 0x40u : rounded);
    }
}

static inline void fa_bwd_dropout_words_loop(uint32_t *w, uint64_t seed, uint64_t offset,
                                             uint32_t bh, uint32_t i, uint32_t g0, int64_t ng) {
    for (int64_t g = 0; g < ng; ++g) {
        fa_philox_u32x4 r = fa_dropout_words(seed, offset, bh, i, g0 + (uint32_t)g);
        for (int l = 0; l < 4; ++l) w[4 * g + l] = r.x[l];
    }
}

static inline void fa_bwd_exp_affine_loop(float *x, int64_t n, float a, float b) {
    for (int64_t j = 0; j < n; ++j) x[j] = fa_bwd_expf(a * x[j] - b);
}

/* The dot of the FMA kernels: one fused multiply-add per term, in order. */
static inline float fa_bwd_dot_fma(const float *a, const float *b, int64_t n) {
    float acc = 0.0f;
    for (int64_t i = 0; i < n; ++i) acc = fmaf(a[i], b[i], acc);
    return acc;
}

/* Defines the kernel table `name` of one ISA file: its gemm and dot (and bf16 pair kernels or
 * NULL) plus the shared loops above, compiled with that file's flags. */
#define FA_BWD_KERNEL_TABLE(name, gemm_fn, dot_fn, gemm_bf16_fn, pair_rows_fn, round_tile_fn,     \
                            dot_pairs_fn, load_fn, store_fn)                                     \
    static void name##_exp_affine(float *x, int64_t n, float a, float b) {                       \
        fa_bwd_exp_affine_loop(x, n, a, b);                                                      \
    }                                                                                            \
    static void name##_probs_and_grads(float *s, float *dp, int64_t m, int64_t n, int64_t ld,    \
                                       float a, const float *lse, const float *delta) {          \
        fa_bwd_probs_and_grads_loop(s, dp, m, n, ld, a, lse, delta);                             \
    }                                                                                            \
    FA_BWD_KERNEL_TABLE_EXP(name, gemm_fn, name##_exp_affine, name##_probs_and_grads, dot_fn,     \
                            gemm_bf16_fn, pair_rows_fn, round_tile_fn, dot_pairs_fn, load_fn,    \
                            store_fn)

/* The same with the file's own exp_affine and probs_and_grads (where the compiler does not
 * vectorise the loops above: their selects need masks, which AVX2 lacks). */
#define FA_BWD_KERNEL_TABLE_EXP(name, gemm_fn, exp_fn, probs_fn, dot_fn, gemm_bf16_fn,           \
                                pair_rows_fn, round_tile_fn, dot_pairs_fn, load_fn, store_fn)    \
    static void name##_softcap(float *x, float *tc, int64_t n, float c) {                        \
        fa_bwd_softcap_loop(x, tc, n, c);                                                        \
    }                                                                                            \
    static void name##_dropout_words(uint32_t *w, uint64_t seed, uint64_t offset, uint32_t bh,   \
                                     uint32_t i, uint32_t g0, int64_t ng) {                      \
        fa_bwd_dropout_words_loop(w, seed, offset, bh, i, g0, ng);                               \
    }                                                                                            \
    const fa_bwd_kernels name = {gemm_fn,        exp_fn,               probs_fn,                  \
                                 dot_fn,         name##_softcap,       name##_dropout_words,      \
                                 gemm_bf16_fn,   pair_rows_fn,         round_tile_fn,             \
                                 dot_pairs_fn,   load_fn,              store_fn}

#endif /* FA_CPU_BWD_H */
