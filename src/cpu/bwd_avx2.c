/*
 * bwd_avx2.c — the backward's inner loops for AVX2 + FMA (built with -mavx2 -mfma; chosen at
 * run time by bwd.c).
 *
 * gemm: the register block of bwd_avx512.c sized for 16 ymm registers: MR rows × NV vectors of
 * 8 columns (6 × 2 = 12 accumulators, 2 B vectors, 1 broadcast). Column tails use maskload /
 * maskstore, row tails recompute the last row and skip its stores.
 */
#include <immintrin.h>

#include "cpu/bwd.h"

enum { MR = 6, NV_MAX = 2, W = 8 };

static inline __attribute__((always_inline)) void
gemm_block(const int nv, int64_t mr, int64_t K, const float *A, int64_t a_rs, int64_t a_cs,
           const float *B, int64_t ldb, float *C, int64_t ldc, __m256i tail, bool accumulate) {
    const __m256i all = _mm256_set1_epi32(-1);
    __m256 acc[MR][NV_MAX];
    const float *a[MR];
    __m256i mask[NV_MAX];
    for (int v = 0; v < nv; ++v) mask[v] = v == nv - 1 ? tail : all;
#pragma GCC unroll 8
    for (int r = 0; r < MR; ++r) {
        a[r] = A + (r < mr ? r : mr - 1) * a_rs;
#pragma GCC unroll 2
        for (int v = 0; v < nv; ++v)
            acc[r][v] = accumulate && r < mr ? _mm256_maskload_ps(C + r * ldc + v * W, mask[v])
                                             : _mm256_setzero_ps();
    }
    for (int64_t k = 0; k < K; ++k) {
        __m256 b[NV_MAX];
#pragma GCC unroll 2
        for (int v = 0; v < nv; ++v) b[v] = _mm256_maskload_ps(B + k * ldb + v * W, mask[v]);
#pragma GCC unroll 8
        for (int r = 0; r < MR; ++r) {
            __m256 x = _mm256_broadcast_ss(&a[r][k * a_cs]);
#pragma GCC unroll 2
            for (int v = 0; v < nv; ++v) acc[r][v] = _mm256_fmadd_ps(x, b[v], acc[r][v]);
        }
    }
#pragma GCC unroll 8
    for (int r = 0; r < MR; ++r) {
        if (r >= mr) break;
#pragma GCC unroll 2
        for (int v = 0; v < nv; ++v) _mm256_maskstore_ps(C + r * ldc + v * W, mask[v], acc[r][v]);
    }
}

static void gemm_avx2(int64_t M, int64_t N, int64_t K, const float *A, int64_t a_rs,
                      int64_t a_cs, const float *B, int64_t ldb, float *C, int64_t ldc,
                      bool accumulate) {
    const __m256i lanes = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    for (int64_t n0 = 0; n0 < N; n0 += NV_MAX * W) {
        int64_t cols = N - n0 < NV_MAX * W ? N - n0 : NV_MAX * W;
        int nv = (int)((cols + W - 1) / W);
        int rem = (int)(cols - (int64_t)(nv - 1) * W);
        __m256i tail = _mm256_cmpgt_epi32(_mm256_set1_epi32(rem), lanes);
        for (int64_t m0 = 0; m0 < M; m0 += MR) {
            int64_t mr = M - m0 < MR ? M - m0 : MR;
            const float *a = A + m0 * a_rs;
            float *c = C + m0 * ldc + n0;
            if (nv == 1)
                gemm_block(1, mr, K, a, a_rs, a_cs, B + n0, ldb, c, ldc, tail, accumulate);
            else
                gemm_block(2, mr, K, a, a_rs, a_cs, B + n0, ldb, c, ldc, tail, accumulate);
        }
    }
}

static float dot_avx2(const float *a, const float *b, int64_t n) { return fa_bwd_dot_fma(a, b, n); }

FA_BWD_KERNEL_TABLE(fa_bwd_kernels_avx2, gemm_avx2, dot_avx2, NULL, NULL);
