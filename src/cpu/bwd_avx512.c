/*
 * bwd_avx512.c — the backward's inner loops for AVX-512 (built with -mavx512f ...; chosen at
 * run time by bwd.c).
 *
 * gemm: a register-blocked C (+)= A·B. A block of MR rows × NV vectors of 16 columns stays in
 * zmm accumulators for the whole K loop: per k, NV loads of B, MR broadcasts of A and MR·NV
 * FMAs. Column tails use masked loads/stores (masked-off lanes are never touched, so nothing is
 * read past a row); row tails recompute the last row and skip its stores.
 */
#include <immintrin.h>

#include "cpu/bwd.h"

enum { MR = 6, NV_MAX = 4, W = 16 };

static inline __attribute__((always_inline)) void
gemm_block(const int nv, int64_t mr, int64_t K, const float *A, int64_t a_rs, int64_t a_cs,
           const float *B, int64_t ldb, float *C, int64_t ldc, __mmask16 tail, bool accumulate) {
    __m512 acc[MR][NV_MAX];
    const float *a[MR];
    __mmask16 mask[NV_MAX];
    for (int v = 0; v < nv; ++v) mask[v] = v == nv - 1 ? tail : (__mmask16)0xFFFF;
#pragma GCC unroll 8
    for (int r = 0; r < MR; ++r) {
        a[r] = A + (r < mr ? r : mr - 1) * a_rs;
#pragma GCC unroll 4
        for (int v = 0; v < nv; ++v)
            acc[r][v] = accumulate && r < mr ? _mm512_maskz_loadu_ps(mask[v], C + r * ldc + v * W)
                                             : _mm512_setzero_ps();
    }
    for (int64_t k = 0; k < K; ++k) {
        __m512 b[NV_MAX];
#pragma GCC unroll 4
        for (int v = 0; v < nv; ++v) b[v] = _mm512_maskz_loadu_ps(mask[v], B + k * ldb + v * W);
#pragma GCC unroll 8
        for (int r = 0; r < MR; ++r) {
            __m512 x = _mm512_set1_ps(a[r][k * a_cs]);
#pragma GCC unroll 4
            for (int v = 0; v < nv; ++v) acc[r][v] = _mm512_fmadd_ps(x, b[v], acc[r][v]);
        }
    }
#pragma GCC unroll 8
    for (int r = 0; r < MR; ++r) {
        if (r >= mr) break;
#pragma GCC unroll 4
        for (int v = 0; v < nv; ++v) _mm512_mask_storeu_ps(C + r * ldc + v * W, mask[v], acc[r][v]);
    }
}

static void gemm_avx512(int64_t M, int64_t N, int64_t K, const float *A, int64_t a_rs,
                        int64_t a_cs, const float *B, int64_t ldb, float *C, int64_t ldc,
                        bool accumulate) {
    for (int64_t n0 = 0; n0 < N; n0 += NV_MAX * W) {
        int64_t cols = N - n0 < NV_MAX * W ? N - n0 : NV_MAX * W;
        int nv = (int)((cols + W - 1) / W);
        int64_t rem = cols - (int64_t)(nv - 1) * W;
        __mmask16 tail = (__mmask16)(rem == W ? 0xFFFF : (1u << rem) - 1u);
        for (int64_t m0 = 0; m0 < M; m0 += MR) {
            int64_t mr = M - m0 < MR ? M - m0 : MR;
            const float *a = A + m0 * a_rs;
            float *c = C + m0 * ldc + n0;
            switch (nv) { /* constant nv: each case unrolls into its own register block */
            case 1: gemm_block(1, mr, K, a, a_rs, a_cs, B + n0, ldb, c, ldc, tail, accumulate); break;
            case 2: gemm_block(2, mr, K, a, a_rs, a_cs, B + n0, ldb, c, ldc, tail, accumulate); break;
            case 3: gemm_block(3, mr, K, a, a_rs, a_cs, B + n0, ldb, c, ldc, tail, accumulate); break;
            default: gemm_block(4, mr, K, a, a_rs, a_cs, B + n0, ldb, c, ldc, tail, accumulate); break;
            }
        }
    }
}

static float dot_avx512(const float *a, const float *b, int64_t n) { return fa_bwd_dot_fma(a, b, n); }

FA_BWD_KERNEL_TABLE(fa_bwd_kernels_avx512, gemm_avx512, dot_avx512);
