/*
 * bwd_avx2.c — the backward's inner loops for AVX2 + FMA (built with -mavx2 -mfma; chosen at
 * run time by bwd.c).
 *
 * gemm: the register block of bwd_avx512.c sized for 16 ymm registers: MR rows × NV vectors of
 * 8 columns (6 × 2 = 12 accumulators, 2 B vectors, 1 broadcast). Column tails use maskload /
 * maskstore. A row tail of up to MR_TAIL rows takes a block of MR_TAIL rows (64 = 10·6 + 4: no
 * wasted FMAs at the tile sizes bwd.c uses); a longer one recomputes its last row and skips its
 * stores.
 */
#include <immintrin.h>

#include "cpu/bwd.h"
#include "cpu/cpu.h"

enum { MR = 6, MR_TAIL = 4, NV_MAX = 2, W = 8 };

static inline __attribute__((always_inline)) void
gemm_block(const int nv, const int rows, int64_t mr, int64_t K, const float *A, int64_t a_rs,
           int64_t a_cs, const float *B, int64_t ldb, float *C, int64_t ldc, __m256i tail,
           bool accumulate) {
    const __m256i all = _mm256_set1_epi32(-1);
    __m256 acc[MR][NV_MAX];
    const float *a[MR];
    __m256i mask[NV_MAX];
    for (int v = 0; v < nv; ++v) mask[v] = v == nv - 1 ? tail : all;
#pragma GCC unroll 8
    for (int r = 0; r < rows; ++r) {
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
        for (int r = 0; r < rows; ++r) {
            __m256 x = _mm256_broadcast_ss(&a[r][k * a_cs]);
#pragma GCC unroll 2
            for (int v = 0; v < nv; ++v) acc[r][v] = _mm256_fmadd_ps(x, b[v], acc[r][v]);
        }
    }
#pragma GCC unroll 8
    for (int r = 0; r < rows; ++r) {
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
            const float *b = B + n0;
            if (mr <= MR_TAIL && nv == 1)
                gemm_block(1, MR_TAIL, mr, K, a, a_rs, a_cs, b, ldb, c, ldc, tail, accumulate);
            else if (mr <= MR_TAIL)
                gemm_block(2, MR_TAIL, mr, K, a, a_rs, a_cs, b, ldb, c, ldc, tail, accumulate);
            else if (nv == 1)
                gemm_block(1, MR, mr, K, a, a_rs, a_cs, b, ldb, c, ldc, tail, accumulate);
            else
                gemm_block(2, MR, mr, K, a, a_rs, a_cs, b, ldb, c, ldc, tail, accumulate);
        }
    }
}

/* fa_bwd_expf (bwd.h) on 8 lanes: the same clamps, range reduction and polynomial (with FMAs);
 * 0 below -87.3, NaN stays NaN. */
static inline __m256 expf8(__m256 x) {
    const __m256 lo = _mm256_set1_ps(-87.3f);
    __m256 xc = _mm256_min_ps(_mm256_max_ps(x, lo), _mm256_set1_ps(88.3f)); /* NaN -> lo */
    __m256 n = _mm256_round_ps(_mm256_mul_ps(xc, _mm256_set1_ps(1.44269504f)),
                               _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693359375f), xc);
    r = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.12194440e-4f), r);
    __m256 p = _mm256_set1_ps(1.9875691500e-4f);
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.3981999507e-3f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(8.3334519073e-3f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(4.1665795894e-2f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.6666665459e-1f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(5.0000001201e-1f));
    p = _mm256_fmadd_ps(_mm256_mul_ps(p, r), r, _mm256_add_ps(r, _mm256_set1_ps(1.0f)));
    __m256i bits = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
    __m256 y = _mm256_mul_ps(p, _mm256_castsi256_ps(bits));
    y = _mm256_andnot_ps(_mm256_cmp_ps(x, lo, _CMP_LT_OQ), y);      /* below lo: 0 */
    return _mm256_blendv_ps(y, x, _mm256_cmp_ps(x, x, _CMP_UNORD_Q)); /* NaN: x */
}

/* Lanes [j, j + 8) ∩ [j, n) of a row. */
static inline __m256i lanes_below(int64_t left) {
    return _mm256_cmpgt_epi32(_mm256_set1_epi32(left > W ? W : (int)left),
                              _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
}

static void exp_affine_avx2(float *x, int64_t n, float a, float b) {
    const __m256 va = _mm256_set1_ps(a), vb = _mm256_set1_ps(b);
    for (int64_t j = 0; j < n; j += W) {
        __m256i m = lanes_below(n - j);
        __m256 v = _mm256_maskload_ps(x + j, m);
        _mm256_maskstore_ps(x + j, m, expf8(_mm256_fmsub_ps(va, v, vb)));
    }
}

static void probs_and_grads_avx2(float *s, float *dp, int64_t m, int64_t n, int64_t ld, float a,
                                 const float *lse, const float *delta) {
    const __m256 va = _mm256_set1_ps(a);
    for (int64_t r = 0; r < m; ++r) {
        float *p = s + r * ld, *g = dp + r * ld;
        const __m256 vb = _mm256_set1_ps(lse[r]), vd = _mm256_set1_ps(delta[r]);
        for (int64_t j = 0; j < n; j += W) {
            __m256i mk = lanes_below(n - j);
            __m256 pv = expf8(_mm256_fmsub_ps(va, _mm256_maskload_ps(p + j, mk), vb));
            __m256 gv = _mm256_mul_ps(pv, _mm256_sub_ps(_mm256_maskload_ps(g + j, mk), vd));
            _mm256_maskstore_ps(p + j, mk, pv);
            _mm256_maskstore_ps(g + j, mk, gv);
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

FA_BWD_KERNEL_TABLE_EXP(fa_bwd_kernels_avx2, gemm_avx2, exp_affine_avx2, probs_and_grads_avx2,
                        dot_avx2, NULL, NULL, NULL, NULL, load_row_avx2, store_row_avx2);
