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

static float row_max(const float *s, int n) {
    float mx = -INFINITY;
    for (int j = 0; j < n; ++j) mx = s[j] > mx ? s[j] : mx;
    return mx;
}

static float exp_sum(float *s, int n, float c, float shift) {
    float sum = 0.0f;
    for (int j = 0; j < n; ++j) {
        s[j] = exp2f(s[j] * c - shift);
        sum += s[j];
    }
    return sum;
}

static void scale_row(float *x, int n, float a) {
    for (int i = 0; i < n; ++i) x[i] *= a;
}

const fa_fwd_kernels fa_fwd_kernels_scalar = {
    .name = "scalar", .d_align = 2, .load_row = fa_load_row_f32, .store_row = fa_store_row_f32,
    .prep_q = fa_fwd_prep_q_f32, .pack_k = pack_k, .pack_v = pack_v, .qk = qk, .pv = pv,
    .row_max = row_max, .exp_sum = exp_sum, .scale_row = scale_row};
