/*
 * fwd_kernels_scalar.c — the portable micro-kernels (plain C11; the compiler vectorises the
 * inner loops for whatever the build targets). They define the reference operand layouts:
 *   Q operand  [m][d_pad] f32 (a copy of the tile)
 *   K panel    [d_pad][FA_BLOCK_N] f32 (Kᵀ, so QKᵀ streams contiguous key vectors)
 *   V panel    [FA_BLOCK_N][dv_pad] f32
 */
#include "cpu/fwd_engine.h"

#include <math.h>
#include <string.h>

void fa_fwd_prep_q_f32(const float *q, int m, int d, int d_pad, void *dst) {
    (void)d;
    memcpy(dst, q, (size_t)m * (size_t)d_pad * sizeof(float));
}

void fa_fwd_pack_k_f32(fa_load_row_fn load, int32_t dtype, const void *const *rows, int n, int d,
                       int d_pad, void *dst) {
    float *kt = dst, row[256];
    for (int j = 0; j < FA_BLOCK_N; ++j) {
        if (j < n) load(dtype, rows[j], row, d);
        for (int c = 0; c < d_pad; ++c) kt[c * FA_BLOCK_N + j] = j < n && c < d ? row[c] : 0.0f;
    }
}

void fa_fwd_pack_v_f32(fa_load_row_fn load, int32_t dtype, const void *const *rows, int n, int dv,
                       int dv_pad, void *dst) {
    float *v = dst;
    for (int j = 0; j < FA_BLOCK_N; ++j) {
        int done = 0;
        if (j < n) {
            load(dtype, rows[j], v + j * dv_pad, dv);
            done = dv;
        }
        memset(v + j * dv_pad + done, 0, (size_t)(dv_pad - done) * sizeof(float));
    }
}

static void pack_k(int32_t dtype, const void *const *rows, int n, int d, int d_pad, void *dst) {
    fa_fwd_pack_k_f32(fa_load_row_f32, dtype, rows, n, d, d_pad, dst);
}

static void pack_v(int32_t dtype, const void *const *rows, int n, int dv, int dv_pad, void *dst) {
    fa_fwd_pack_v_f32(fa_load_row_f32, dtype, rows, n, dv, dv_pad, dst);
}

/* s[m][FA_BLOCK_N] = Q Kᵀ */
static void qk(const void *qv, const void *kp, int m, int d_pad, float *s) {
    const float *q = qv, *kt = kp;
    for (int r = 0; r < m; ++r) {
        float acc[FA_BLOCK_N] = {0};
        for (int c = 0; c < d_pad; ++c) {
            float x = q[r * d_pad + c];
            const float *krow = kt + c * FA_BLOCK_N;
            for (int j = 0; j < FA_BLOCK_N; ++j) acc[j] += x * krow[j];
        }
        memcpy(s + r * FA_BLOCK_N, acc, sizeof acc);
    }
}

/* acc[m][dv_pad] += p[m][FA_BLOCK_N] V */
static void pv(const float *p, const void *vp, int m, int dv_pad, float *acc) {
    const float *v = vp;
    for (int r = 0; r < m; ++r) {
        float *o = acc + r * dv_pad;
        for (int j = 0; j < FA_BLOCK_N; ++j) {
            float x = p[r * FA_BLOCK_N + j];
            if (x == 0.0f) continue; /* masked or dropped */
            const float *vrow = v + j * dv_pad;
            for (int c = 0; c < dv_pad; ++c) o[c] += x * vrow[c];
        }
    }
}

static void softmax(float *s, int m, float c, float *m_i, float *l_i, float *acc, int dv_pad) {
    for (int r = 0; r < m; ++r) {
        float *row = s + r * FA_BLOCK_N, m_blk = -INFINITY, sum = 0.0f;
        for (int j = 0; j < FA_BLOCK_N; ++j) m_blk = row[j] > m_blk ? row[j] : m_blk;
        m_blk *= c;
        float m_new = m_blk > m_i[r] ? m_blk : m_i[r];
        if (m_new == -INFINITY) { /* nothing visible yet: P = 0 */
            memset(row, 0, FA_BLOCK_N * sizeof(float));
            continue;
        }
        for (int j = 0; j < FA_BLOCK_N; ++j) {
            row[j] = exp2f(row[j] * c - m_new);
            sum += row[j];
        }
        float alpha = exp2f(m_i[r] - m_new); /* 0 when m_i = -inf */
        l_i[r] = l_i[r] * alpha + sum;
        m_i[r] = m_new;
        if (alpha != 1.0f)
            for (int col = 0; col < dv_pad; ++col) acc[(size_t)r * dv_pad + col] *= alpha;
    }
}

const fa_fwd_kernels fa_fwd_kernels_scalar = {
    .name = "scalar", .d_align = 2, .load_row = fa_load_row_f32, .store_row = fa_store_row_f32,
    .prep_q = fa_fwd_prep_q_f32, .pack_k = pack_k, .pack_v = pack_v, .qk = qk, .pv = pv,
    .softmax = softmax};
