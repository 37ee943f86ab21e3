/*
 * bwd_simt.cu — the general backward: any dtype, any head dim <= 256, every option of a
 * forward without paging. One warp per row, lane l holding dims l, l + 32, ... as in
 * fwd_simt.cu. Three kernels, none with atomics, so the result is always bit-reproducible:
 *   fa_bwd_dot_do_o: D_i = rowsum(dO_i * O_i) -> softmax_d
 *   fa_bwd_dkdv:     one warp per key j of kv head hk, over the query heads of its group and
 *                    the rows that see j: dV_j = sum P~_ij dO_i, dK_j = sum dS_ij * scale * Q_i
 *   fa_bwd_dq:       one warp per query row i: dQ_i = sum_j dS_ij * scale * K_j, in f32
 * with P_ij = exp(s_ij - lse_i), P~ = P * keep / (1 - p), dP_ij = keep * (dO_i . V_j) / (1 - p),
 * dS_ij = P_ij (dP_ij - D_i) times softcap's derivative 1 - tanh^2.
 *
 * Macros: FA_DTYPE, FA_CHUNKS (1..8).
 */
#include "fa_common.cuh"

#ifndef FA_CHUNKS
#error "FA_CHUNKS must be defined"
#endif
#define FA_WARPS 4

/* Row i of a q-like tensor into per-lane registers (zeros past dim). */
#define LOAD_ROW(dst, base, off, dim)                                                              \
    _Pragma("unroll") for (int c = 0; c < FA_CHUNKS; ++c) {                                        \
        const int e = lane + 32 * c;                                                               \
        dst[c] = e < (dim) ? fa_to_float(((const fa_elem *)(base))[(off) + e]) : 0.f;              \
    }

static __device__ __forceinline__ float dot_row(const float *a, const float *b) {
    float x = 0.f;
#pragma unroll
    for (int c = 0; c < FA_CHUNKS; ++c) x += a[c] * b[c];
    return fa_warp_sum(x);
}

static __device__ __forceinline__ fa_i64 sd_offset(const fa_attn_params &p, const fa_seq &s,
                                                   int i, int h) {
    return s.q_batch * p.sd_batch_stride + (fa_i64)h * p.sd_head_stride + s.q_row0 + i;
}

/* dS_ij (before the scale) from the recomputed score and dP; 0 where j is not visible. */
static __device__ __forceinline__ float grad_score(const fa_attn_params &p, const fa_seq &s,
                                                   int b, int h, int i, int j, float qk,
                                                   float dov, float lse, float D, float slope,
                                                   float *p_dropped) {
    const float x = fa_score(p, s, qk, slope, i, j);
    const float prob = expf(x - lse);
    float dp = dov;
    *p_dropped = prob;
    if (p.dropout_p > 0.f) {
        const bool keep = fa_keep(p, b, h, i, j);
        *p_dropped = keep ? prob * p.dropout_scale : 0.f;
        dp = keep ? dov * p.dropout_scale : 0.f;
    }
    float ds = prob * (dp - D);
    if (p.softcap > 0.f) { /* d/dz softcap * tanh(z / softcap) = 1 - tanh^2 */
        const float th = fa_tanh(qk * p.scale / p.softcap);
        ds *= 1.f - th * th;
    }
    return ds;
}

/* grid (ceil(max s_q / 4), h, b), block 128: one warp per row. */
extern "C" __global__ void __launch_bounds__(128) fa_bwd_dot_do_o(const __grid_constant__ fa_attn_params p) {
    const int b = blockIdx.z, h = blockIdx.y, lane = threadIdx.x & 31;
    const int i = blockIdx.x * FA_WARPS + (threadIdx.x >> 5);
    const fa_seq s = fa_seq_of(p, b);
    if (i >= s.seqlen_q) return;
    float o[FA_CHUNKS], d_o[FA_CHUNKS];
    LOAD_ROW(o, p.o, FA_ROW_OFFSET(p, s, i, h, o), p.d_v);
    LOAD_ROW(d_o, p.dout, FA_ROW_OFFSET(p, s, i, h, do), p.d_v);
    const float D = dot_row(o, d_o);
    if (lane == 0) p.softmax_d[sd_offset(p, s, i, h)] = D;
}

/* grid (ceil(max s_k / 4), h_k, b), block 128: one warp per key. */
extern "C" __global__ void __launch_bounds__(128) fa_bwd_dkdv(const __grid_constant__ fa_attn_params p) {
    const int b = blockIdx.z, hk = blockIdx.y, lane = threadIdx.x & 31;
    const int j = blockIdx.x * FA_WARPS + (threadIdx.x >> 5);
    const fa_seq s = fa_seq_of(p, b);
    if (j >= s.seqlen_k) return;
    float k[FA_CHUNKS], v[FA_CHUNKS], dk[FA_CHUNKS], dv[FA_CHUNKS];
    LOAD_ROW(k, p.k, fa_kv_offset(p, s, j, hk, 0), p.d);
    LOAD_ROW(v, p.v, fa_kv_offset(p, s, j, hk, 1), p.d_v);
#pragma unroll
    for (int c = 0; c < FA_CHUNKS; ++c) dk[c] = dv[c] = 0.f;
    /* Rows that see key j: i in [j - diag0 - right, j - diag0 + left]. */
    const int diag0 = s.seqlen_k - s.seqlen_q;
    const int i0 = p.window_right < 0 ? 0 : max(0, j - diag0 - p.window_right);
    const int i1 = p.window_left < 0 ? s.seqlen_q : min(s.seqlen_q, j - diag0 + p.window_left + 1);
    const int group = p.nheads / p.nheads_k;
    for (int h = hk * group; h < (hk + 1) * group; ++h) {
        const float slope = fa_alibi_slope(p, b, h);
        for (int i = i0; i < i1; ++i) {
            float q[FA_CHUNKS], d_o[FA_CHUNKS];
            LOAD_ROW(q, p.q, FA_ROW_OFFSET(p, s, i, h, q), p.d);
            LOAD_ROW(d_o, p.dout, FA_ROW_OFFSET(p, s, i, h, do), p.d_v);
            const float lse = p.lse[fa_lse_offset(p, s, i, h)];
            const float D = p.softmax_d[sd_offset(p, s, i, h)];
            float p_dropped;
            const float ds = grad_score(p, s, b, h, i, j, dot_row(q, k), dot_row(d_o, v), lse, D,
                                        slope, &p_dropped) * p.scale;
#pragma unroll
            for (int c = 0; c < FA_CHUNKS; ++c) {
                dv[c] += p_dropped * d_o[c];
                dk[c] += ds * q[c];
            }
        }
    }
    const fa_i64 dk_off = s.k_batch * p.dk_batch_stride + (s.k_row0 + j) * p.dk_row_stride +
                          (fa_i64)hk * p.dk_head_stride;
    const fa_i64 dv_off = s.k_batch * p.dv_batch_stride + (s.k_row0 + j) * p.dv_row_stride +
                          (fa_i64)hk * p.dv_head_stride;
#pragma unroll
    for (int c = 0; c < FA_CHUNKS; ++c) {
        const int e = lane + 32 * c;
        if (e < p.d) ((fa_elem *)p.dk)[dk_off + e] = fa_from_float(dk[c]);
        if (e < p.d_v) ((fa_elem *)p.dv)[dv_off + e] = fa_from_float(dv[c]);
    }
}

/* grid (ceil(max s_q / 4), h, b), block 128: one warp per query row. */
extern "C" __global__ void __launch_bounds__(128) fa_bwd_dq(const __grid_constant__ fa_attn_params p) {
    const int b = blockIdx.z, h = blockIdx.y, lane = threadIdx.x & 31;
    const int i = blockIdx.x * FA_WARPS + (threadIdx.x >> 5);
    const fa_seq s = fa_seq_of(p, b);
    if (i >= s.seqlen_q) return;
    const int hk = h / (p.nheads / p.nheads_k);
    const float slope = fa_alibi_slope(p, b, h);
    float q[FA_CHUNKS], d_o[FA_CHUNKS], dq[FA_CHUNKS];
    LOAD_ROW(q, p.q, FA_ROW_OFFSET(p, s, i, h, q), p.d);
    LOAD_ROW(d_o, p.dout, FA_ROW_OFFSET(p, s, i, h, do), p.d_v);
#pragma unroll
    for (int c = 0; c < FA_CHUNKS; ++c) dq[c] = 0.f;
    const float lse = p.lse[fa_lse_offset(p, s, i, h)];
    const float D = p.softmax_d[sd_offset(p, s, i, h)];
    const int diag = i + s.seqlen_k - s.seqlen_q;
    const int j0 = p.window_left < 0 ? 0 : max(0, diag - p.window_left);
    const int j1 = p.window_right < 0 ? s.seqlen_k : min(s.seqlen_k, diag + p.window_right + 1);
    for (int j = j0; j < j1; ++j) {
        float k[FA_CHUNKS], v[FA_CHUNKS];
        LOAD_ROW(k, p.k, fa_kv_offset(p, s, j, hk, 0), p.d);
        LOAD_ROW(v, p.v, fa_kv_offset(p, s, j, hk, 1), p.d_v);
        float p_dropped;
        const float ds = grad_score(p, s, b, h, i, j, dot_row(q, k), dot_row(d_o, v), lse, D,
                                    slope, &p_dropped) * p.scale;
#pragma unroll
        for (int c = 0; c < FA_CHUNKS; ++c) dq[c] += ds * k[c];
    }
    const fa_i64 off = FA_ROW_OFFSET(p, s, i, h, dq);
#pragma unroll
    for (int c = 0; c < FA_CHUNKS; ++c) {
        const int e = lane + 32 * c;
        if (e < p.d) ((fa_elem *)p.dq)[off + e] = fa_from_float(dq[c]);
    }
}
