/*
 * fwd_kernels_avx2.c — AVX2 + FMA + F16C micro-kernels of the forward (f32 operands, the
 * layouts of fa_fwd_pack_*_f32). 16 ymm registers: S = Q Kᵀ and acc += P V both use a
 * 6-row x 16-column accumulator block (12 ymm) + 2 loaded vectors + 1 broadcast.
 */
#include "cpu/fwd_engine.h"

#include <immintrin.h>
#include <math.h>
#include <string.h>

#define MR 6
#define FA_INLINE static inline __attribute__((always_inline))

static void load_row(int32_t dtype, const void *src, float *dst, int64_t n) {
    int64_t i = 0;
    if (dtype == FA_DTYPE_F16) {
        const uint16_t *s = src;
        for (; i + 8 <= n; i += 8)
            _mm256_storeu_ps(dst + i, _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(s + i))));
    } else if (dtype == FA_DTYPE_BF16) {
        const uint16_t *s = src;
        for (; i + 8 <= n; i += 8) {
            __m256i wide = _mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)(s + i)));
            _mm256_storeu_ps(dst + i, _mm256_castsi256_ps(_mm256_slli_epi32(wide, 16)));
        }
    } else {
        memcpy(dst, src, (size_t)n * sizeof(float));
        return;
    }
    if (i < n) fa_load_row_f32(dtype, (const uint16_t *)src + i, dst + i, n - i);
}

/* In-register transpose of an 8 x 8 f32 block: r[i] = row i in, column i out. */
static inline void transpose8(__m256 r[8]) {
    __m256 t[8], u[8];
    for (int i = 0; i < 8; i += 2) {
        t[i] = _mm256_unpacklo_ps(r[i], r[i + 1]);
        t[i + 1] = _mm256_unpackhi_ps(r[i], r[i + 1]);
    }
    for (int g = 0; g < 8; g += 4) { /* u[g + k]: rows g..g+3, columns k and k + 4 */
        u[g] = _mm256_shuffle_ps(t[g], t[g + 2], _MM_SHUFFLE(1, 0, 1, 0));
        u[g + 1] = _mm256_shuffle_ps(t[g], t[g + 2], _MM_SHUFFLE(3, 2, 3, 2));
        u[g + 2] = _mm256_shuffle_ps(t[g + 1], t[g + 3], _MM_SHUFFLE(1, 0, 1, 0));
        u[g + 3] = _mm256_shuffle_ps(t[g + 1], t[g + 3], _MM_SHUFFLE(3, 2, 3, 2));
    }
    for (int k = 0; k < 4; ++k) {
        r[k] = _mm256_permute2f128_ps(u[k], u[4 + k], 0x20);
        r[k + 4] = _mm256_permute2f128_ps(u[k], u[4 + k], 0x31);
    }
}

/* Kᵀ panel [d_pad][FA_BLOCK_N] through 8 x 8 register transposes; rows go through f32. */
static void pack_k_f32(int32_t dtype, const void *const *rows, int n, int d, int d_pad, void *dst) {
    float *kt = dst, block[8][256 + 8]; /* d_pad <= 256, plus the overhang of the last 8 */
    for (int j0 = 0; j0 < FA_BLOCK_N; j0 += 8) {
        for (int i = 0; i < 8; ++i) {
            int done = 0;
            if (j0 + i < n) {
                load_row(dtype, rows[j0 + i], block[i], d);
                done = d;
            }
            memset(block[i] + done, 0, (size_t)(d_pad + 8 - done) * sizeof(float));
        }
        for (int c0 = 0; c0 < d_pad; c0 += 8) {
            __m256 r[8];
            for (int i = 0; i < 8; ++i) r[i] = _mm256_loadu_ps(block[i] + c0);
            transpose8(r);
            for (int i = 0; i < 8 && c0 + i < d_pad; ++i)
                _mm256_storeu_ps(kt + (c0 + i) * FA_BLOCK_N + j0, r[i]);
        }
    }
}

static void pack_v_f32(int32_t dtype, const void *const *rows, int n, int dv, int dv_pad,
                       void *dst) {
    fa_fwd_pack_v_f32(load_row, dtype, rows, n, dv, dv_pad, dst);
}

static float hmax(__m256 v) {
    __m128 m = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    m = _mm_max_ps(m, _mm_movehl_ps(m, m));
    m = _mm_max_ss(m, _mm_movehdup_ps(m));
    return _mm_cvtss_f32(m);
}

static float hsum(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

/* 2^x as in the AVX-512 file; 2^k is built in the exponent bits. x < -126 gives 0. */
FA_INLINE __m256 exp2_ps(__m256 x) {
    __m256 live = _mm256_cmp_ps(x, _mm256_set1_ps(-126.0f), _CMP_GE_OQ);
    x = _mm256_max_ps(x, _mm256_set1_ps(-126.0f));
    __m256 k = _mm256_round_ps(x, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m256 f = _mm256_sub_ps(x, k);
    __m256 p = _mm256_set1_ps(1.535336188319500e-4f);
    p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(1.339887440266574e-3f));
    p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(9.618437357674640e-3f));
    p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(5.550332471162809e-2f));
    p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(2.402264791363012e-1f));
    p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(6.931472028550421e-1f));
    p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(1.0f));
    __m256i bits = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(k), _mm256_set1_epi32(127)), 23);
    return _mm256_and_ps(_mm256_mul_ps(p, _mm256_castsi256_ps(bits)), live);
}

#define NV (FA_BLOCK_N / 8) /* ymm vectors across a kv block (8) */

static void softmax(float *s, int m, float c, float *m_i, float *l_i, float *acc, int dv_pad) {
    const __m256 vc = _mm256_set1_ps(c);
    for (int r = 0; r < m; ++r) {
        float *row = s + r * FA_BLOCK_N;
        __m256 mx = _mm256_loadu_ps(row);
        for (int v = 1; v < NV; ++v) mx = _mm256_max_ps(mx, _mm256_loadu_ps(row + 8 * v));
        float m_blk = hmax(mx) * c;
        float m_new = m_blk > m_i[r] ? m_blk : m_i[r];
        if (m_new == -INFINITY) { /* nothing visible yet: P = 0 */
            memset(row, 0, FA_BLOCK_N * sizeof(float));
            continue;
        }
        const __m256 shift = _mm256_set1_ps(m_new);
        __m256 sum = _mm256_setzero_ps();
        for (int v = 0; v < NV; ++v) {
            __m256 p = exp2_ps(_mm256_fmsub_ps(_mm256_loadu_ps(row + 8 * v), vc, shift));
            _mm256_storeu_ps(row + 8 * v, p);
            sum = _mm256_add_ps(sum, p);
        }
        float alpha = _mm256_cvtss_f32(exp2_ps(_mm256_set1_ps(m_i[r] - m_new))); /* 0 at -inf */
        l_i[r] = l_i[r] * alpha + hsum(sum);
        m_i[r] = m_new;
        if (alpha != 1.0f) {
            float *o = acc + (size_t)r * dv_pad;
            const __m256 va = _mm256_set1_ps(alpha);
            for (int col = 0; col < dv_pad; col += 8)
                _mm256_storeu_ps(o + col, _mm256_mul_ps(_mm256_loadu_ps(o + col), va));
        }
    }
}

/* s[rows][16 columns] = Q[rows] Kᵀ[:, columns] for rows <= MR. */
FA_INLINE void qk_block(const float *q, const float *kt, int d_pad, float *s, const int rows) {
    __m256 acc[MR][2];
    for (int r = 0; r < rows; ++r) acc[r][0] = acc[r][1] = _mm256_setzero_ps();
    for (int c = 0; c < d_pad; ++c) {
        __m256 b0 = _mm256_loadu_ps(kt + c * FA_BLOCK_N), b1 = _mm256_loadu_ps(kt + c * FA_BLOCK_N + 8);
        for (int r = 0; r < rows; ++r) {
            __m256 a = _mm256_broadcast_ss(q + r * d_pad + c);
            acc[r][0] = _mm256_fmadd_ps(a, b0, acc[r][0]);
            acc[r][1] = _mm256_fmadd_ps(a, b1, acc[r][1]);
        }
    }
    for (int r = 0; r < rows; ++r) {
        _mm256_storeu_ps(s + r * FA_BLOCK_N, acc[r][0]);
        _mm256_storeu_ps(s + r * FA_BLOCK_N + 8, acc[r][1]);
    }
}

FA_INLINE void qk_rows(const float *q, const float *kt, int d_pad, float *s, const int rows) {
    for (int j = 0; j < FA_BLOCK_N; j += 16) qk_block(q, kt + j, d_pad, s + j, rows);
}

static void qk(const void *qv, const void *kp, int m, int d_pad, float *s) {
    const float *q = qv;
    int r = 0;
    for (; r + MR <= m; r += MR) qk_rows(q + r * d_pad, kp, d_pad, s + r * FA_BLOCK_N, MR);
    switch (m - r) {
    case 5: qk_rows(q + r * d_pad, kp, d_pad, s + r * FA_BLOCK_N, 5); break;
    case 4: qk_rows(q + r * d_pad, kp, d_pad, s + r * FA_BLOCK_N, 4); break;
    case 3: qk_rows(q + r * d_pad, kp, d_pad, s + r * FA_BLOCK_N, 3); break;
    case 2: qk_rows(q + r * d_pad, kp, d_pad, s + r * FA_BLOCK_N, 2); break;
    case 1: qk_rows(q + r * d_pad, kp, d_pad, s + r * FA_BLOCK_N, 1); break;
    default: break;
    }
}

/* acc[rows][16 columns] += P[rows][64] V[64][columns] for rows <= MR. */
FA_INLINE void pv_block(const float *p, const float *v, int dv_pad, float *acc, const int rows) {
    __m256 o[MR][2];
    for (int r = 0; r < rows; ++r) {
        o[r][0] = _mm256_loadu_ps(acc + r * dv_pad);
        o[r][1] = _mm256_loadu_ps(acc + r * dv_pad + 8);
    }
    for (int j = 0; j < FA_BLOCK_N; ++j) {
        __m256 b0 = _mm256_loadu_ps(v + j * dv_pad), b1 = _mm256_loadu_ps(v + j * dv_pad + 8);
        for (int r = 0; r < rows; ++r) {
            __m256 a = _mm256_broadcast_ss(p + r * FA_BLOCK_N + j);
            o[r][0] = _mm256_fmadd_ps(a, b0, o[r][0]);
            o[r][1] = _mm256_fmadd_ps(a, b1, o[r][1]);
        }
    }
    for (int r = 0; r < rows; ++r) {
        _mm256_storeu_ps(acc + r * dv_pad, o[r][0]);
        _mm256_storeu_ps(acc + r * dv_pad + 8, o[r][1]);
    }
}

FA_INLINE void pv_rows(const float *p, const float *v, int dv_pad, float *acc, const int rows) {
    for (int c = 0; c < dv_pad; c += 16) pv_block(p, v + c, dv_pad, acc + c, rows);
}

static void pv(const float *p, const void *vp, int m, int dv_pad, float *acc) {
    int r = 0;
    for (; r + MR <= m; r += MR) pv_rows(p + r * FA_BLOCK_N, vp, dv_pad, acc + r * dv_pad, MR);
    const float *pr = p + r * FA_BLOCK_N;
    float *ar = acc + r * dv_pad;
    switch (m - r) {
    case 5: pv_rows(pr, vp, dv_pad, ar, 5); break;
    case 4: pv_rows(pr, vp, dv_pad, ar, 4); break;
    case 3: pv_rows(pr, vp, dv_pad, ar, 3); break;
    case 2: pv_rows(pr, vp, dv_pad, ar, 2); break;
    case 1: pv_rows(pr, vp, dv_pad, ar, 1); break;
    default: break;
    }
}

const fa_fwd_kernels fa_fwd_kernels_avx2 = {
    .name = "avx2", .d_align = 2, .load_row = load_row, .store_row = fa_store_row_f32,
    .prep_q = fa_fwd_prep_q_f32, .pack_k = pack_k_f32, .pack_v = pack_v_f32, .qk = qk, .pv = pv,
    .softmax = softmax};
