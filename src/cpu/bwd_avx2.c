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
#include "cpu/cpu.h"

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

/* f16 through F16C, 8 at a time (the tail via convert.c); bf16 by shifts. */
static void load_row_avx2(int32_t dtype, const void *src, float *dst, int64_t n) {
    if (dtype != FA_DTYPE_F16) {
        if (dtype == FA_DTYPE_BF16) fa_bwd_bf16_load_loop(src, dst, n);
        else memcpy(dst, src, (size_t)n * sizeof(float));
        return;
    }
    const uint16_t *h = src;
    int64_t i = 0;
    for (; i + W <= n; i += W)
        _mm256_storeu_ps(dst + i, _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(h + i))));
    for (; i < n; ++i) dst[i] = fa_f16_to_f32(h[i]);
}

static void store_row_avx2(int32_t dtype, const float *src, void *dst, int64_t n) {
    if (dtype != FA_DTYPE_F16) {
        if (dtype == FA_DTYPE_BF16) fa_bwd_bf16_store_loop(src, dst, n);
        else memcpy(dst, src, (size_t)n * sizeof(float));
        return;
    }
    uint16_t *h = dst;
    int64_t i = 0;
    for (; i + W <= n; i += W)
        _mm_storeu_si128((__m128i *)(h + i),
                         _mm256_cvtps_ph(_mm256_loadu_ps(src + i),
                                         _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
    for (; i < n; ++i) h[i] = fa_f32_to_f16(src[i]);
}

FA_BWD_KERNEL_TABLE(fa_bwd_kernels_avx2, gemm_avx2, dot_avx2, NULL, NULL, NULL, NULL,
                    load_row_avx2, store_row_avx2);
