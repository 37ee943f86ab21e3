/*
 * fwd_simt.cu — the general forward: any dtype (f32 uses it always), any head dim <= 256,
 * any strides, every option. One warp per query row; lane l holds q and acc at dims
 * l, l + 32, ... (FA_CHUNKS = ceil(d / 32) of them). Also the attn_probs kernel.
 *
 * Macros: FA_DTYPE, FA_CHUNKS (1..8).
 */
#include "fa_common.cuh"

#ifndef FA_CHUNKS
#error "FA_CHUNKS must be defined"
#endif
#define FA_ROWS_PER_CTA 16
#define FA_WARPS 4

static __device__ __forceinline__ fa_elem load_elem(const void *base, fa_i64 offset) {
    return ((const fa_elem *)base)[offset];
}

/* grid (ceil(max s_q / 16), h, b), block 128. */
extern "C" __global__ void __launch_bounds__(128)
fa_fwd_simt(const __grid_constant__ fa_attn_params p) {
    const int b = blockIdx.z, h = blockIdx.y, warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const fa_seq s = fa_seq_of(p, b);
    const int hk = h / (p.nheads / p.nheads_k);
    const float slope = fa_alibi_slope(p, b, h);
    for (int r = warp; r < FA_ROWS_PER_CTA; r += FA_WARPS) {
        const int i = blockIdx.x * FA_ROWS_PER_CTA + r;
        if (i >= s.seqlen_q) return;
        const fa_i64 q_off = FA_ROW_OFFSET(p, s, i, h, q);
        float q[FA_CHUNKS], acc[FA_CHUNKS];
#pragma unroll
        for (int c = 0; c < FA_CHUNKS; ++c) {
            int dim = lane + 32 * c;
            q[c] = dim < p.d ? fa_to_float(load_elem(p.q, q_off + dim)) : 0.f;
            acc[c] = 0.f;
        }
        /* Visible keys form one interval [j0, j1). */
        const int diag = i + s.seqlen_k - s.seqlen_q;
        int j0 = p.window_left < 0 ? 0 : max(0, diag - p.window_left);
        int j1 = p.window_right < 0 ? s.seqlen_k : min(s.seqlen_k, diag + p.window_right + 1);
        float m_i = -FA_INF, l_i = 0.f;
        for (int j = j0; j < j1; ++j) {
            const fa_i64 k_off = fa_kv_offset(p, s, j, hk, 0);
            float dot = 0.f;
#pragma unroll
            for (int c = 0; c < FA_CHUNKS; ++c) {
                int dim = lane + 32 * c;
                if (dim < p.d) dot += q[c] * fa_to_float(load_elem(p.k, k_off + dim));
            }
            dot = fa_warp_sum(dot);
            float x = fa_score(p, s, dot, slope, i, j);
            float m_new = fmaxf(m_i, x);
            float alpha = expf(m_i - m_new);
            float pr = expf(x - m_new);
            l_i = l_i * alpha + pr;
            m_i = m_new;
            float pv = pr;
            if (p.dropout_p > 0.f) pv = fa_keep(p, b, h, i, j) ? pr * p.dropout_scale : 0.f;
            const fa_i64 v_off = fa_kv_offset(p, s, j, hk, 1);
#pragma unroll
            for (int c = 0; c < FA_CHUNKS; ++c) {
                int dim = lane + 32 * c;
                float v = dim < p.d_v ? fa_to_float(load_elem(p.v, v_off + dim)) : 0.f;
                acc[c] = acc[c] * alpha + pv * v;
            }
        }
        const float inv = l_i > 0.f ? 1.f / l_i : 0.f;
        const fa_i64 o_off = FA_ROW_OFFSET(p, s, i, h, o);
#pragma unroll
        for (int c = 0; c < FA_CHUNKS; ++c) {
            int dim = lane + 32 * c;
            if (dim < p.d_v) ((fa_elem *)p.o)[o_off + dim] = fa_from_float(acc[c] * inv);
        }
        if (lane == 0) {
            p.lse[fa_lse_offset(p, s, i, h)] = l_i > 0.f ? m_i + logf(l_i) : FA_INF;
        }
    }
}

/* attn_probs (b, h, rows, cols): exp(s - lse) for visible keys, 0 elsewhere, negated where
 * dropout drops; 0 outside the sequence. grid (rows, h, b), block 128. */
extern "C" __global__ void __launch_bounds__(128)
fa_fwd_probs(const __grid_constant__ fa_attn_params p) {
    const int b = blockIdx.z, h = blockIdx.y, i = blockIdx.x;
    const fa_seq s = fa_seq_of(p, b);
    const int hk = h / (p.nheads / p.nheads_k);
    const float slope = fa_alibi_slope(p, b, h);
    fa_elem *row = (fa_elem *)p.probs + b * p.probs_batch_stride + h * p.probs_head_stride +
                   (fa_i64)i * p.probs_row_stride;
    const bool in_q = i < s.seqlen_q;
    const float lse = in_q ? p.lse[fa_lse_offset(p, s, i, h)] : 0.f;
    const fa_i64 q_off = FA_ROW_OFFSET(p, s, i, h, q);
    for (int j = threadIdx.x; j < p.probs_cols; j += blockDim.x) {
        float prob = 0.f;
        if (in_q && j < s.seqlen_k) {
            if (fa_visible(p, s, i, j)) {
                const fa_i64 k_off = fa_kv_offset(p, s, j, hk, 0);
                float dot = 0.f;
                for (int dim = 0; dim < p.d; ++dim)
                    dot += fa_to_float(load_elem(p.q, q_off + dim)) *
                           fa_to_float(load_elem(p.k, k_off + dim));
                prob = expf(fa_score(p, s, dot, slope, i, j) - lse);
            }
            if (p.dropout_p > 0.f && !fa_keep(p, b, h, i, j)) prob = -prob; /* 0 -> -0.0 */
        }
        row[j] = fa_from_float(prob);
    }
}
