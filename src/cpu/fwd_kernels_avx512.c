/*
 * fwd_kernels_avx512.c — AVX-512 micro-kernels of the forward (compiled with AVX-512
 * F/BW/VL/DQ + BF16 flags, run only where isa.c found them).
 *
 * Two sets:
 *   fa_fwd_kernels_avx512       f32 operands (f32 and f16 inputs; bf16 without AVX512_BF16):
 *                               Q [m][d_pad], Kᵀ panel [d_pad][64], V [64][dv_pad], all f32.
 *   fa_fwd_kernels_avx512_bf16  bf16 inputs: vdpbf16ps multiplies bf16 pairs with f32
 *                               accumulation, twice the f32 FMA rate. Operands are "VNNI"
 *                               pairs: Q [m][d_pad] bf16 (pairs along d), K panel
 *                               [d_pad/2][64][2], V panel [32][dv_pad][2] (pairs along keys),
 *                               and P is rounded to bf16 per row before PV (as flash-attn does
 *                               on GPUs).
 * Register blocking: a 6-row x 64-column accumulator block (24 zmm) for S = Q Kᵀ, and a
 * 6-row x 64-column block of the output for acc += P V, so each loaded K/V vector feeds 6
 * FMAs and each broadcast Q/P value 4.
 */
#include "cpu/fwd_engine.h"

#include <immintrin.h>
#include <math.h>
#include <string.h>

#define MR 6                  /* rows per register block */
#define NV 4                  /* zmm vectors across a register block: 64 keys or columns */
#define SV (FA_BLOCK_N / 16)  /* zmm vectors across a kv block */
#define FA_INLINE static inline __attribute__((always_inline))

/* ---------------------------------------------------------------- conversions */
void fa_avx512_load_row(int32_t dtype, const void *src, float *dst, int64_t n) {
    int64_t i = 0;
    if (dtype == FA_DTYPE_F16) {
        const uint16_t *s = src;
        for (; i + 16 <= n; i += 16)
            _mm512_storeu_ps(dst + i, _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(s + i))));
    } else if (dtype == FA_DTYPE_BF16) {
        const uint16_t *s = src;
        for (; i + 16 <= n; i += 16) {
            __m512i wide = _mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i *)(s + i)));
            _mm512_storeu_ps(dst + i, _mm512_castsi512_ps(_mm512_slli_epi32(wide, 16)));
        }
    } else {
        memcpy(dst, src, (size_t)n * sizeof(float));
        return;
    }
    if (i < n)
        fa_load_row_f32(dtype, (const uint16_t *)src + i, dst + i, n - i);
}

/* ---------------------------------------------------------------- softmax pieces */
/* 2^x: x = k + f with k = round(x), |f| <= 1/2; 2^f by a degree-6 polynomial (Cephes exp2f
 * coefficients, ~1 ulp), times 2^k by vscalefps. Inputs below -126 (and -inf) give exactly 0. */
FA_INLINE __m512 exp2_ps(__m512 x) {
    __mmask16 live = _mm512_cmp_ps_mask(x, _mm512_set1_ps(-126.0f), _CMP_GE_OQ);
    x = _mm512_max_ps(x, _mm512_set1_ps(-127.0f));
    __m512 k = _mm512_roundscale_ps(x, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m512 f = _mm512_sub_ps(x, k);
    __m512 p = _mm512_set1_ps(1.535336188319500e-4f);
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(1.339887440266574e-3f));
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(9.618437357674640e-3f));
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(5.550332471162809e-2f));
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(2.402264791363012e-1f));
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(6.931472028550421e-1f));
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(1.0f));
    return _mm512_maskz_scalef_ps(live, p, k);
}

/* The scores of a row stay in 4 registers from the max through the exponentials. */
void fa_avx512_softmax(float *s, int m, float c, float *m_i, float *l_i, float *acc, int dv_pad) {
    const __m512 vc = _mm512_set1_ps(c);
    for (int r = 0; r < m; ++r) {
        float *row = s + r * FA_BLOCK_N;
        __m512 x[SV];
        for (int v = 0; v < SV; ++v) x[v] = _mm512_loadu_ps(row + 16 * v);
        __m512 mx = x[0];
        for (int v = 1; v < SV; ++v) mx = _mm512_max_ps(mx, x[v]);
        float m_blk = _mm512_reduce_max_ps(mx) * c;
        float m_new = m_blk > m_i[r] ? m_blk : m_i[r];
        if (m_new == -INFINITY) { /* nothing visible yet: P = 0 */
            for (int v = 0; v < SV; ++v) _mm512_storeu_ps(row + 16 * v, _mm512_setzero_ps());
            continue;
        }
        const __m512 shift = _mm512_set1_ps(m_new);
        __m512 sum = _mm512_setzero_ps();
        for (int v = 0; v < SV; ++v) {
            __m512 p = exp2_ps(_mm512_fmsub_ps(x[v], vc, shift));
            _mm512_storeu_ps(row + 16 * v, p);
            sum = _mm512_add_ps(sum, p);
        }
        float alpha = _mm512_cvtss_f32(exp2_ps(_mm512_set1_ps(m_i[r] - m_new))); /* 0 at -inf */
        l_i[r] = l_i[r] * alpha + _mm512_reduce_add_ps(sum);
        m_i[r] = m_new;
        if (alpha != 1.0f) {
            float *o = acc + (size_t)r * dv_pad;
            const __m512 va = _mm512_set1_ps(alpha);
            for (int col = 0; col < dv_pad; col += 16)
                _mm512_storeu_ps(o + col, _mm512_mul_ps(_mm512_loadu_ps(o + col), va));
        }
    }
}

/* ---------------------------------------------------------------- f32 set */
/* In-register transpose of a 16 x 16 block of 32-bit elements: r[i] = row i in, column i out.
 * Three stages: interleave 32-bit pairs, then 64-bit pairs, then 128-bit lanes. */
static inline void transpose16(__m512i r[16]) {
    __m512i t[16], u[16];
    for (int i = 0; i < 16; i += 2) {
        t[i] = _mm512_unpacklo_epi32(r[i], r[i + 1]);
        t[i + 1] = _mm512_unpackhi_epi32(r[i], r[i + 1]);
    }
    for (int g = 0; g < 16; g += 4) { /* u[g + k]: rows g..g+3, columns k, k+4, k+8, k+12 */
        u[g] = _mm512_unpacklo_epi64(t[g], t[g + 2]);
        u[g + 1] = _mm512_unpackhi_epi64(t[g], t[g + 2]);
        u[g + 2] = _mm512_unpacklo_epi64(t[g + 1], t[g + 3]);
        u[g + 3] = _mm512_unpackhi_epi64(t[g + 1], t[g + 3]);
    }
    for (int k = 0; k < 4; ++k) {
        __m512i x_lo = _mm512_shuffle_i32x4(u[k], u[4 + k], _MM_SHUFFLE(1, 0, 1, 0));
        __m512i y_lo = _mm512_shuffle_i32x4(u[8 + k], u[12 + k], _MM_SHUFFLE(1, 0, 1, 0));
        __m512i x_hi = _mm512_shuffle_i32x4(u[k], u[4 + k], _MM_SHUFFLE(3, 2, 3, 2));
        __m512i y_hi = _mm512_shuffle_i32x4(u[8 + k], u[12 + k], _MM_SHUFFLE(3, 2, 3, 2));
        r[k] = _mm512_shuffle_i32x4(x_lo, y_lo, _MM_SHUFFLE(2, 0, 2, 0));
        r[k + 4] = _mm512_shuffle_i32x4(x_lo, y_lo, _MM_SHUFFLE(3, 1, 3, 1));
        r[k + 8] = _mm512_shuffle_i32x4(x_hi, y_hi, _MM_SHUFFLE(2, 0, 2, 0));
        r[k + 12] = _mm512_shuffle_i32x4(x_hi, y_hi, _MM_SHUFFLE(3, 1, 3, 1));
    }
}

/* Elements [c, c + 16) ∩ [c, d) of a row as 32-bit lanes: f32 values (f32/f16/bf16 rows), or
 * for pairs = true bf16 pairs (row of bf16, pair i = elements 2i, 2i + 1); zero elsewhere. */
static inline __m512i load16(int32_t dtype, const void *row, int c, int d, bool pairs) {
    if (pairs) {
        int left = d - 2 * c;
        __mmask32 m = left >= 32 ? 0xFFFFFFFFu : (left <= 0 ? 0 : (1u << left) - 1u);
        return _mm512_maskz_loadu_epi16(m, (const uint16_t *)row + 2 * c);
    }
    int left = d - c;
    __mmask16 m = left >= 16 ? 0xFFFF : (left <= 0 ? 0 : (__mmask16)((1u << left) - 1u));
    if (dtype == FA_DTYPE_F32) return _mm512_castps_si512(_mm512_maskz_loadu_ps(m, (const float *)row + c));
    __m256i h = _mm256_maskz_loadu_epi16(m, (const uint16_t *)row + c);
    if (dtype == FA_DTYPE_F16) return _mm512_castps_si512(_mm512_cvtph_ps(h));
    return _mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16);
}

/* Panel [cols][FA_BLOCK_N] of 32-bit lanes from n key rows: column c of key j at [c][j].
 * cols = d_pad (f32) or d_pad / 2 (bf16 pairs); 16 x 16 blocks go through registers. */
static void pack_transposed(int32_t dtype, const void *const *rows, int n, int d, int cols,
                            bool pairs, uint32_t *dst) {
    for (int j0 = 0; j0 < FA_BLOCK_N; j0 += 16)
        for (int c0 = 0; c0 < cols; c0 += 16) {
            __m512i r[16];
            for (int i = 0; i < 16; ++i)
                r[i] = j0 + i < n ? load16(dtype, rows[j0 + i], c0, d, pairs) : _mm512_setzero_si512();
            transpose16(r);
            for (int i = 0; i < 16 && c0 + i < cols; ++i)
                _mm512_storeu_si512((void *)(dst + (c0 + i) * FA_BLOCK_N + j0), r[i]);
        }
}

static void pack_k_f32(int32_t dtype, const void *const *rows, int n, int d, int d_pad, void *dst) {
    pack_transposed(dtype, rows, n, d, d_pad, false, dst);
}

static void pack_v_f32(int32_t dtype, const void *const *rows, int n, int dv, int dv_pad,
                       void *dst) {
    fa_fwd_pack_v_f32(fa_avx512_load_row, dtype, rows, n, dv, dv_pad, dst);
}


/* s[rows][64] = Q[rows] Kᵀ for rows <= MR (a compile-time constant after inlining). */
FA_INLINE void qk_block_f32(const float *q, const float *kt, int d_pad, float *s, const int rows) {
    __m512 acc[MR][NV];
    for (int r = 0; r < rows; ++r)
        for (int v = 0; v < NV; ++v) acc[r][v] = _mm512_setzero_ps();
    for (int c = 0; c < d_pad; ++c) {
        __m512 b[NV];
        for (int v = 0; v < NV; ++v) b[v] = _mm512_loadu_ps(kt + c * FA_BLOCK_N + 16 * v);
        for (int r = 0; r < rows; ++r) {
            __m512 a = _mm512_set1_ps(q[r * d_pad + c]);
            for (int v = 0; v < NV; ++v) acc[r][v] = _mm512_fmadd_ps(a, b[v], acc[r][v]);
        }
    }
    for (int r = 0; r < rows; ++r)
        for (int v = 0; v < NV; ++v) _mm512_storeu_ps(s + r * FA_BLOCK_N + 16 * v, acc[r][v]);
}

/* s[m][64 keys from kt] (row stride FA_BLOCK_N) for one 64-key chunk of the panel. */
static void qk_chunk_f32(const float *q, const float *kt, int m, int d_pad, float *s) {
    const float *kp = kt;
    int r = 0;
    for (; r + MR <= m; r += MR) qk_block_f32(q + r * d_pad, kp, d_pad, s + r * FA_BLOCK_N, MR);
    switch (m - r) {
    case 5: qk_block_f32(q + r * d_pad, kp, d_pad, s + r * FA_BLOCK_N, 5); break;
    case 4: qk_block_f32(q + r * d_pad, kp, d_pad, s + r * FA_BLOCK_N, 4); break;
    case 3: qk_block_f32(q + r * d_pad, kp, d_pad, s + r * FA_BLOCK_N, 3); break;
    case 2: qk_block_f32(q + r * d_pad, kp, d_pad, s + r * FA_BLOCK_N, 2); break;
    case 1: qk_block_f32(q + r * d_pad, kp, d_pad, s + r * FA_BLOCK_N, 1); break;
    default: break;
    }
}

static void qk_f32(const void *q, const void *kp, int m, int d_pad, float *s) {
    for (int jc = 0; jc < FA_BLOCK_N; jc += 16 * NV)
        qk_chunk_f32(q, (const float *)kp + jc, m, d_pad, s + jc);
}

/* s[m][FA_BLOCK_N] from K rows [FA_BLOCK_N][d_pad]: one dot product per (row, key), four keys
 * at a time; for one or two rows this beats transposing K into a panel. */
static void qk_rows_f32(const void *qv, const void *kv, int m, int d_pad, float *s) {
    const float *q = qv, *k = kv;
    int tail = d_pad % 16;
    __mmask16 last = (__mmask16)((1u << tail) - 1u);
    for (int r = 0; r < m; ++r)
        for (int j = 0; j < FA_BLOCK_N; j += 4) {
            __m512 a[4] = {_mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps(),
                           _mm512_setzero_ps()};
            int c = 0;
            for (; c + 16 <= d_pad; c += 16) {
                __m512 x = _mm512_loadu_ps(q + r * d_pad + c);
                for (int t = 0; t < 4; ++t)
                    a[t] = _mm512_fmadd_ps(x, _mm512_loadu_ps(k + (j + t) * d_pad + c), a[t]);
            }
            if (tail) {
                __m512 x = _mm512_maskz_loadu_ps(last, q + r * d_pad + c);
                for (int t = 0; t < 4; ++t)
                    a[t] = _mm512_fmadd_ps(x, _mm512_maskz_loadu_ps(last, k + (j + t) * d_pad + c), a[t]);
            }
            for (int t = 0; t < 4; ++t) s[r * FA_BLOCK_N + j + t] = _mm512_reduce_add_ps(a[t]);
        }
}

/* acc[rows][cols] += P[rows][64] V[64][cols], cols = 16 * nv, for rows <= MR. */
FA_INLINE void pv_block_f32(const float *p, const float *v, int dv_pad, float *acc, const int rows,
                            const int nv) {
    __m512 o[MR][NV];
    for (int r = 0; r < rows; ++r)
        for (int u = 0; u < nv; ++u) o[r][u] = _mm512_loadu_ps(acc + r * dv_pad + 16 * u);
    for (int j = 0; j < FA_BLOCK_N; ++j) {
        __m512 b[NV];
        for (int u = 0; u < nv; ++u) b[u] = _mm512_loadu_ps(v + j * dv_pad + 16 * u);
        for (int r = 0; r < rows; ++r) {
            __m512 a = _mm512_set1_ps(p[r * FA_BLOCK_N + j]);
            for (int u = 0; u < nv; ++u) o[r][u] = _mm512_fmadd_ps(a, b[u], o[r][u]);
        }
    }
    for (int r = 0; r < rows; ++r)
        for (int u = 0; u < nv; ++u) _mm512_storeu_ps(acc + r * dv_pad + 16 * u, o[r][u]);
}

/* One block of rows across every column: 64-wide chunks, then 16-wide ones. */
FA_INLINE void pv_rows_f32(const float *p, const float *v, int dv_pad, float *acc, const int rows) {
    int c = 0;
    for (; c + 64 <= dv_pad; c += 64) pv_block_f32(p, v + c, dv_pad, acc + c, rows, NV);
    for (; c < dv_pad; c += 16) pv_block_f32(p, v + c, dv_pad, acc + c, rows, 1);
}

static void pv_f32(const float *p, const void *vp, int m, int dv_pad, float *acc) {
    int r = 0;
    for (; r + MR <= m; r += MR) pv_rows_f32(p + r * FA_BLOCK_N, vp, dv_pad, acc + r * dv_pad, MR);
    const float *pr = p + r * FA_BLOCK_N;
    float *ar = acc + r * dv_pad;
    switch (m - r) {
    case 5: pv_rows_f32(pr, vp, dv_pad, ar, 5); break;
    case 4: pv_rows_f32(pr, vp, dv_pad, ar, 4); break;
    case 3: pv_rows_f32(pr, vp, dv_pad, ar, 3); break;
    case 2: pv_rows_f32(pr, vp, dv_pad, ar, 2); break;
    case 1: pv_rows_f32(pr, vp, dv_pad, ar, 1); break;
    default: break;
    }
}

const fa_fwd_kernels fa_fwd_kernels_avx512 = {
    .name = "avx512", .d_align = 2, .load_row = fa_avx512_load_row, .store_row = fa_store_row_f32,
    .prep_q = fa_fwd_prep_q_f32, .pack_k = pack_k_f32, .pack_v = pack_v_f32, .qk = qk_f32,
    .qk_rows = qk_rows_f32,
    .pv = pv_f32, .softmax = fa_avx512_softmax};

/* ---------------------------------------------------------------- bf16 set (vdpbf16ps) */
/* n f32 values (n % 16 == 0) to bf16, round to nearest even. */
void fa_avx512_to_bf16(const float *src, uint16_t *dst, int n) {
    for (int i = 0; i < n; i += 16) {
        __m256bh h = _mm512_cvtneps_pbh(_mm512_loadu_ps(src + i));
        _mm256_storeu_si256((__m256i *)(dst + i), (__m256i)h);
    }
}

void fa_avx512_prep_q_bf16(const float *q, int m, int d, int d_pad, void *dst) {
    uint16_t *out = dst;
    int64_t n = (int64_t)m * d_pad, i = 0;
    (void)d;
    for (; i + 16 <= n; i += 16)
        _mm256_storeu_si256((__m256i *)(out + i), (__m256i)_mm512_cvtneps_pbh(_mm512_loadu_ps(q + i)));
    for (; i < n; ++i) out[i] = fa_f32_to_bf16(q[i]);
}

/* K panel [d_pad / 2][64] of bf16 pairs: pair c of key j, (k[j][2c], k[j][2c + 1]), at [c][j].
 * The inputs are bf16 already, so this is a 32-bit transpose. */
void fa_avx512_pack_k_bf16(int32_t dtype, const void *const *rows, int n, int d, int d_pad, void *dst) {
    pack_transposed(dtype, rows, n, d, d_pad / 2, true, dst);
}

/* V panel [32][dv_pad] of bf16 pairs along the keys: (v[2t][c], v[2t + 1][c]) at [t][c]. */
void fa_avx512_pack_v_bf16(int32_t dtype, const void *const *rows, int n, int dv, int dv_pad,
                        void *dst) {
    static const uint16_t zero_row[256];
    uint16_t *vp = dst;
    const __m512i interleave = _mm512_set_epi16(
        47, 15, 46, 14, 45, 13, 44, 12, 43, 11, 42, 10, 41, 9, 40, 8,
        39, 7, 38, 6, 37, 5, 36, 4, 35, 3, 34, 2, 33, 1, 32, 0);
    (void)dtype;
    for (int t = 0; t < FA_BLOCK_N / 2; ++t) {
        const uint16_t *a = 2 * t < n ? rows[2 * t] : zero_row;
        const uint16_t *b = 2 * t + 1 < n ? rows[2 * t + 1] : zero_row;
        uint16_t *out = vp + 2 * (size_t)t * dv_pad;
        int c = 0;
        for (; c + 16 <= dv; c += 16) {
            __m512i x = _mm512_castsi256_si512(_mm256_loadu_si256((const __m256i *)(a + c)));
            __m512i y = _mm512_castsi256_si512(_mm256_loadu_si256((const __m256i *)(b + c)));
            _mm512_storeu_si512((void *)(out + 2 * c), _mm512_permutex2var_epi16(x, interleave, y));
        }
        for (; c < dv_pad; ++c) {
            out[2 * c] = c < dv ? a[c] : 0;
            out[2 * c + 1] = c < dv ? b[c] : 0;
        }
    }
}

FA_INLINE __m512bh bcast_pair(const uint32_t *x) { return (__m512bh)_mm512_set1_epi32((int)*x); }

FA_INLINE void qk_block_bf16(const uint32_t *q, const uint32_t *kp, int d2, float *s,
                             const int rows) {
    __m512 acc[MR][NV];
    for (int r = 0; r < rows; ++r)
        for (int v = 0; v < NV; ++v) acc[r][v] = _mm512_setzero_ps();
    for (int c = 0; c < d2; ++c) {
        __m512bh b[NV];
        for (int v = 0; v < NV; ++v)
            b[v] = (__m512bh)_mm512_loadu_si512((const void *)(kp + c * FA_BLOCK_N + 16 * v));
        for (int r = 0; r < rows; ++r) {
            __m512bh a = bcast_pair(q + r * d2 + c);
            for (int v = 0; v < NV; ++v) acc[r][v] = _mm512_dpbf16_ps(acc[r][v], a, b[v]);
        }
    }
    for (int r = 0; r < rows; ++r)
        for (int v = 0; v < NV; ++v) _mm512_storeu_ps(s + r * FA_BLOCK_N + 16 * v, acc[r][v]);
}

static void qk_chunk_bf16(const uint32_t *q, const uint32_t *kp, int m, int d_pad, float *s) {
    int d2 = d_pad / 2, r = 0;
    for (; r + MR <= m; r += MR) qk_block_bf16(q + r * d2, kp, d2, s + r * FA_BLOCK_N, MR);
    switch (m - r) {
    case 5: qk_block_bf16(q + r * d2, kp, d2, s + r * FA_BLOCK_N, 5); break;
    case 4: qk_block_bf16(q + r * d2, kp, d2, s + r * FA_BLOCK_N, 4); break;
    case 3: qk_block_bf16(q + r * d2, kp, d2, s + r * FA_BLOCK_N, 3); break;
    case 2: qk_block_bf16(q + r * d2, kp, d2, s + r * FA_BLOCK_N, 2); break;
    case 1: qk_block_bf16(q + r * d2, kp, d2, s + r * FA_BLOCK_N, 1); break;
    default: break;
    }
}

static void qk_bf16(const void *q, const void *kp, int m, int d_pad, float *s) {
    for (int jc = 0; jc < FA_BLOCK_N; jc += 16 * NV)
        qk_chunk_bf16(q, (const uint32_t *)kp + jc, m, d_pad, s + jc);
}

/* acc[rows][16 nv] += P[rows][64] V with P as bf16 pairs [rows][32] and V [32][dv_pad][2]. */
FA_INLINE void pv_block_bf16(const uint32_t *p, const uint32_t *v, int dv_pad, float *acc,
                             const int rows, const int nv) {
    __m512 o[MR][NV];
    for (int r = 0; r < rows; ++r)
        for (int u = 0; u < nv; ++u) o[r][u] = _mm512_loadu_ps(acc + r * dv_pad + 16 * u);
    for (int t = 0; t < FA_BLOCK_N / 2; ++t) {
        __m512bh b[NV];
        for (int u = 0; u < nv; ++u)
            b[u] = (__m512bh)_mm512_loadu_si512((const void *)(v + t * dv_pad + 16 * u));
        for (int r = 0; r < rows; ++r) {
            __m512bh a = bcast_pair(p + r * (FA_BLOCK_N / 2) + t);
            for (int u = 0; u < nv; ++u) o[r][u] = _mm512_dpbf16_ps(o[r][u], a, b[u]);
        }
    }
    for (int r = 0; r < rows; ++r)
        for (int u = 0; u < nv; ++u) _mm512_storeu_ps(acc + r * dv_pad + 16 * u, o[r][u]);
}

FA_INLINE void pv_rows_bf16(const uint32_t *p, const uint32_t *v, int dv_pad, float *acc,
                            const int rows) {
    int c = 0;
    for (; c + 64 <= dv_pad; c += 64) pv_block_bf16(p, v + c, dv_pad, acc + c, rows, NV);
    for (; c < dv_pad; c += 16) pv_block_bf16(p, v + c, dv_pad, acc + c, rows, 1);
}

static void pv_bf16(const float *p, const void *vp, int m, int dv_pad, float *acc) {
    uint32_t pb[FA_MAX_M * FA_BLOCK_N / 2]; /* P rounded to bf16 pairs along the keys */
    fa_avx512_to_bf16(p, (uint16_t *)pb, m * FA_BLOCK_N);
    int r = 0;
    const int pr = FA_BLOCK_N / 2;
    for (; r + MR <= m; r += MR) pv_rows_bf16(pb + r * pr, vp, dv_pad, acc + r * dv_pad, MR);
    switch (m - r) {
    case 5: pv_rows_bf16(pb + r * pr, vp, dv_pad, acc + r * dv_pad, 5); break;
    case 4: pv_rows_bf16(pb + r * pr, vp, dv_pad, acc + r * dv_pad, 4); break;
    case 3: pv_rows_bf16(pb + r * pr, vp, dv_pad, acc + r * dv_pad, 3); break;
    case 2: pv_rows_bf16(pb + r * pr, vp, dv_pad, acc + r * dv_pad, 2); break;
    case 1: pv_rows_bf16(pb + r * pr, vp, dv_pad, acc + r * dv_pad, 1); break;
    default: break;
    }
}

const fa_fwd_kernels fa_fwd_kernels_avx512_bf16 = {
    .name = "avx512_bf16", .d_align = 2, .load_row = fa_avx512_load_row, .store_row = fa_store_row_f32,
    .prep_q = fa_avx512_prep_q_bf16, .pack_k = fa_avx512_pack_k_bf16,
    .pack_v = fa_avx512_pack_v_bf16, .qk = qk_bf16, .pv = pv_bf16, .softmax = fa_avx512_softmax};
