/*
 * bwd_avx512.c — the backward's inner loops for AVX-512 (built with -mavx512f ...; chosen at
 * run time by bwd.c).
 *
 * gemm: a register-blocked C (+)= A·B. A block of MR rows × NV vectors of 16 columns stays in
 * zmm accumulators for the whole K loop: per k, NV loads of B, MR broadcasts of A and MR·NV
 * FMAs. Column tails use masked loads/stores (masked-off lanes are never touched, so nothing is
 * read past a row). A row tail of up to MR_TAIL rows takes a block of MR_TAIL rows (64 = 10·6 +
 * 4: no wasted FMAs at the tile sizes bwd.c uses); a longer one recomputes its last row and
 * skips its stores.
 *
 * gemm_bf16 (AVX512_BF16 hosts, bf16 inputs): the same block on vdpbf16ps, which multiplies
 * pairs of bf16 along K and adds both products into f32 lanes: twice the FLOPs per instruction.
 * pair_rows and round_tile build its operands (pairs along K) for all five products.
 */
#include <immintrin.h>

#include "cpu/bwd.h"
#include "cpu/cpu.h"

enum { MR = 6, MR_TAIL = 4, NV_MAX = 4, W = 16 };
#define FA_INLINE static inline __attribute__((always_inline))

/* Masks of the nv = ceil(cols / W) vectors of a column block (cols <= NV_MAX · W). */
FA_INLINE int column_masks(int64_t cols, __mmask16 mask[NV_MAX]) {
    int nv = (int)((cols + W - 1) / W);
    int64_t rem = cols - (int64_t)(nv - 1) * W;
    for (int v = 0; v < NV_MAX; ++v) mask[v] = (__mmask16)0xFFFF;
    mask[nv - 1] = (__mmask16)(rem == W ? 0xFFFF : (1u << rem) - 1u);
    return nv;
}

FA_INLINE void store_block(const int nv, const int rows, int64_t mr, float *C, int64_t ldc,
                           const __mmask16 mask[NV_MAX], __m512 acc[MR][NV_MAX]) {
#pragma GCC unroll 8
    for (int r = 0; r < rows; ++r) {
        if (r >= mr) break;
#pragma GCC unroll 4
        for (int v = 0; v < nv; ++v) _mm512_mask_storeu_ps(C + r * ldc + v * W, mask[v], acc[r][v]);
    }
}

/* rows (MR or MR_TAIL, a constant) × nv vectors; mr <= rows of them are real. */
FA_INLINE void gemm_block(const int nv, const int rows, int64_t mr, int64_t K, const float *A,
                          int64_t a_rs, int64_t a_cs, const float *B, int64_t ldb, float *C,
                          int64_t ldc, const __mmask16 mask[NV_MAX], bool accumulate) {
    __m512 acc[MR][NV_MAX];
    const float *a[MR];
#pragma GCC unroll 8
    for (int r = 0; r < rows; ++r) {
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
        for (int r = 0; r < rows; ++r) {
            __m512 x = _mm512_set1_ps(a[r][k * a_cs]);
#pragma GCC unroll 4
            for (int v = 0; v < nv; ++v) acc[r][v] = _mm512_fmadd_ps(x, b[v], acc[r][v]);
        }
    }
    store_block(nv, rows, mr, C, ldc, mask, acc);
}

/* One block of nv vectors (a run-time value made constant, so each case gets its own unrolled
 * register block). */
FA_INLINE void gemm_block_nv(const int rows, int nv, int64_t mr, int64_t K, const float *A,
                             int64_t a_rs, int64_t a_cs, const float *B, int64_t ldb, float *C,
                             int64_t ldc, const __mmask16 mask[NV_MAX], bool accumulate) {
    switch (nv) {
    case 1: gemm_block(1, rows, mr, K, A, a_rs, a_cs, B, ldb, C, ldc, mask, accumulate); break;
    case 2: gemm_block(2, rows, mr, K, A, a_rs, a_cs, B, ldb, C, ldc, mask, accumulate); break;
    case 3: gemm_block(3, rows, mr, K, A, a_rs, a_cs, B, ldb, C, ldc, mask, accumulate); break;
    default: gemm_block(4, rows, mr, K, A, a_rs, a_cs, B, ldb, C, ldc, mask, accumulate); break;
    }
}

static void gemm_avx512(int64_t M, int64_t N, int64_t K, const float *A, int64_t a_rs,
                        int64_t a_cs, const float *B, int64_t ldb, float *C, int64_t ldc,
                        bool accumulate) {
    __mmask16 mask[NV_MAX];
    for (int64_t n0 = 0; n0 < N; n0 += NV_MAX * W) {
        int nv = column_masks(N - n0 < NV_MAX * W ? N - n0 : NV_MAX * W, mask);
        for (int64_t m0 = 0; m0 < M; m0 += MR) {
            int64_t mr = M - m0 < MR ? M - m0 : MR;
            const float *a = A + m0 * a_rs, *b = B + n0;
            float *c = C + m0 * ldc + n0;
            if (mr <= MR_TAIL)
                gemm_block_nv(MR_TAIL, nv, mr, K, a, a_rs, a_cs, b, ldb, c, ldc, mask, accumulate);
            else
                gemm_block_nv(MR, nv, mr, K, a, a_rs, a_cs, b, ldb, c, ldc, mask, accumulate);
        }
    }
}

FA_INLINE void gemm_bf16_block(const int nv, const int rows, int64_t mr, int64_t K2,
                               const uint32_t *A, int64_t a_rs, int64_t a_cs, const uint32_t *B,
                               int64_t ldb, float *C, int64_t ldc, const __mmask16 mask[NV_MAX],
                               bool accumulate) {
    __m512 acc[MR][NV_MAX];
    const uint32_t *a[MR];
#pragma GCC unroll 8
    for (int r = 0; r < rows; ++r) {
        a[r] = A + (r < mr ? r : mr - 1) * a_rs;
#pragma GCC unroll 4
        for (int v = 0; v < nv; ++v)
            acc[r][v] = accumulate && r < mr ? _mm512_maskz_loadu_ps(mask[v], C + r * ldc + v * W)
                                             : _mm512_setzero_ps();
    }
    for (int64_t k = 0; k < K2; ++k) {
        __m512i b[NV_MAX];
#pragma GCC unroll 4
        for (int v = 0; v < nv; ++v) b[v] = _mm512_maskz_loadu_epi32(mask[v], B + k * ldb + v * W);
#pragma GCC unroll 8
        for (int r = 0; r < rows; ++r) {
            __m512i x = _mm512_set1_epi32((int)a[r][k * a_cs]);
#pragma GCC unroll 4
            for (int v = 0; v < nv; ++v)
                acc[r][v] = _mm512_dpbf16_ps(acc[r][v], (__m512bh)x, (__m512bh)b[v]);
        }
    }
    store_block(nv, rows, mr, C, ldc, mask, acc);
}

FA_INLINE void gemm_bf16_block_nv(const int rows, int nv, int64_t mr, int64_t K2,
                                  const uint32_t *A, int64_t a_rs, int64_t a_cs,
                                  const uint32_t *B, int64_t ldb, float *C, int64_t ldc,
                                  const __mmask16 mask[NV_MAX], bool acc) {
    switch (nv) {
    case 1: gemm_bf16_block(1, rows, mr, K2, A, a_rs, a_cs, B, ldb, C, ldc, mask, acc); break;
    case 2: gemm_bf16_block(2, rows, mr, K2, A, a_rs, a_cs, B, ldb, C, ldc, mask, acc); break;
    case 3: gemm_bf16_block(3, rows, mr, K2, A, a_rs, a_cs, B, ldb, C, ldc, mask, acc); break;
    default: gemm_bf16_block(4, rows, mr, K2, A, a_rs, a_cs, B, ldb, C, ldc, mask, acc); break;
    }
}

static void gemm_bf16_avx512(int64_t M, int64_t N, int64_t K2, const uint32_t *A, int64_t a_rs,
                             int64_t a_cs, const uint32_t *B, int64_t ldb, float *C, int64_t ldc,
                             bool accumulate) {
    __mmask16 mask[NV_MAX];
    for (int64_t n0 = 0; n0 < N; n0 += NV_MAX * W) {
        int nv = column_masks(N - n0 < NV_MAX * W ? N - n0 : NV_MAX * W, mask);
        for (int64_t m0 = 0; m0 < M; m0 += MR) {
            int64_t mr = M - m0 < MR ? M - m0 : MR;
            const uint32_t *a = A + m0 * a_rs, *b = B + n0;
            float *c = C + m0 * ldc + n0;
            if (mr <= MR_TAIL)
                gemm_bf16_block_nv(MR_TAIL, nv, mr, K2, a, a_rs, a_cs, b, ldb, c, ldc, mask,
                                   accumulate);
            else
                gemm_bf16_block_nv(MR, nv, mr, K2, a, a_rs, a_cs, b, ldb, c, ldc, mask, accumulate);
        }
    }
}

FA_INLINE __mmask16 tail_mask(int64_t n) {
    return (__mmask16)(n >= W ? 0xFFFF : (1u << n) - 1u);
}

/* Top halves of the f32 lanes of x0 (low) and x1 (high): pairs of values that are bf16 exactly. */
FA_INLINE __m512i pair_exact(__m512 x0, __m512 x1) {
    __m512i lo = _mm512_srli_epi32(_mm512_castps_si512(x0), 16);
    __m512i hi = _mm512_and_si512(_mm512_castps_si512(x1), _mm512_set1_epi32((int)0xFFFF0000u));
    return _mm512_or_si512(lo, hi);
}

static void pair_rows_avx512(uint32_t *dst, int64_t ld, const float *x, int64_t x_ld, int64_t m,
                             int64_t n) {
    for (int64_t k = 0; 2 * k < m; ++k) {
        const float *x0 = x + 2 * k * x_ld, *x1 = x0 + x_ld;
        bool odd = 2 * k + 1 == m;
        for (int64_t c = 0; c < n; c += W) {
            __mmask16 t = tail_mask(n - c);
            __m512 v1 = odd ? _mm512_setzero_ps() : _mm512_maskz_loadu_ps(t, x1 + c);
            _mm512_mask_storeu_epi32(dst + k * ld + c, t,
                                     pair_exact(_mm512_maskz_loadu_ps(t, x0 + c), v1));
        }
    }
}

/* Rows x0, x1 rounded to bf16 and interleaved lane by lane: pairs (x0[c], x1[c]). */
FA_INLINE __m512i pair_rounded(__m512 x0, __m512 x1) {
    /* cvtne2ps puts x0's bf16 in the low 16 halves, x1's in the high 16; the permutation
     * interleaves them (half 2c <- c, half 2c + 1 <- 16 + c). */
    const __m512i interleave = _mm512_set_epi16(
        31, 15, 30, 14, 29, 13, 28, 12, 27, 11, 26, 10, 25, 9, 24, 8,
        23, 7, 22, 6, 21, 5, 20, 4, 19, 3, 18, 2, 17, 1, 16, 0);
    __m512i both = (__m512i)_mm512_cvtne2ps_pbh(x1, x0);
    return _mm512_permutexvar_epi16(interleave, both);
}

static void round_tile_avx512(const float *s, const float *ds, int64_t m, int64_t n, int64_t ld,
                              uint32_t *p2, uint32_t *ds2, uint16_t *ds16) {
    for (int64_t k = 0; 2 * k < m; ++k) {
        int64_t r = 2 * k;
        bool odd = r + 1 == m;
        for (int64_t c = 0; c < n; c += W) {
            __mmask16 t = tail_mask(n - c);
            __m512 s0 = _mm512_maskz_loadu_ps(t, s + r * ld + c);
            __m512 d0 = _mm512_maskz_loadu_ps(t, ds + r * ld + c);
            __m512 s1 = odd ? _mm512_setzero_ps() : _mm512_maskz_loadu_ps(t, s + (r + 1) * ld + c);
            __m512 d1 = odd ? _mm512_setzero_ps() : _mm512_maskz_loadu_ps(t, ds + (r + 1) * ld + c);
            _mm512_mask_storeu_epi32(p2 + k * ld + c, t, pair_rounded(s0, s1));
            _mm512_mask_storeu_epi32(ds2 + k * ld + c, t, pair_rounded(d0, d1));
        }
    }
    /* ds16 rows; lanes past n load as 0, so storing n rounded up to even pads an odd n. */
    for (int64_t r = 0; r < m; ++r)
        for (int64_t c = 0; c < n; c += W) {
            __mmask16 t = tail_mask(n - c), t_even = tail_mask((n - c + 1) & ~(int64_t)1);
            __m256i h = (__m256i)_mm512_cvtneps_pbh(_mm512_maskz_loadu_ps(t, ds + r * ld + c));
            _mm256_mask_storeu_epi16(ds16 + r * ld + c, t_even, h);
        }
}

static float dot_avx512(const float *a, const float *b, int64_t n) {
    return fa_bwd_dot_fma(a, b, n);
}

/* vdpbf16ps adds the odd product of a pair, then the even one, each rounded once (the products
 * of bf16 values are exact): one FMA each, in that order. */
static float dot_pairs_avx512(const float *a, const float *b, int64_t n) {
    float acc = 0.0f;
    for (int64_t i = 0; i + 1 < n; i += 2) {
        acc = fmaf(a[i + 1], b[i + 1], acc);
        acc = fmaf(a[i], b[i], acc);
    }
    return n % 2 ? fmaf(a[n - 1], b[n - 1], acc) : acc;
}

/* f16 through F16C, 16 at a time with masked tails; bf16 by shifts. */
static void load_row_avx512(int32_t dtype, const void *src, float *dst, int64_t n) {
    if (dtype == FA_DTYPE_F32) {
        memcpy(dst, src, (size_t)n * sizeof(float));
    } else if (dtype == FA_DTYPE_BF16) {
        fa_bwd_bf16_load_loop(src, dst, n);
    } else {
        const uint16_t *h = src;
        for (int64_t i = 0; i < n; i += W) {
            __mmask16 m = (__mmask16)(n - i >= W ? 0xFFFF : (1u << (n - i)) - 1u);
            __m256i x = _mm256_maskz_loadu_epi16(m, h + i);
            _mm512_mask_storeu_ps(dst + i, m, _mm512_cvtph_ps(x));
        }
    }
}

static void store_row_avx512(int32_t dtype, const float *src, void *dst, int64_t n) {
    if (dtype == FA_DTYPE_F32) {
        memcpy(dst, src, (size_t)n * sizeof(float));
    } else if (dtype == FA_DTYPE_BF16) {
        fa_bwd_bf16_store_loop(src, dst, n);
    } else {
        uint16_t *h = dst;
        for (int64_t i = 0; i < n; i += W) {
            __mmask16 m = (__mmask16)(n - i >= W ? 0xFFFF : (1u << (n - i)) - 1u);
            __m256i x = _mm512_cvtps_ph(_mm512_maskz_loadu_ps(m, src + i),
                                        _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
            _mm256_mask_storeu_epi16(h + i, m, x);
        }
    }
}

FA_BWD_KERNEL_TABLE(fa_bwd_kernels_avx512, gemm_avx512, dot_avx512, NULL, NULL, NULL, NULL,
                    load_row_avx512, store_row_avx512);
FA_BWD_KERNEL_TABLE(fa_bwd_kernels_avx512_bf16, gemm_avx512, dot_avx512, gemm_bf16_avx512,
                    pair_rows_avx512, round_tile_avx512, dot_pairs_avx512, load_row_avx512,
                    store_row_avx512);
