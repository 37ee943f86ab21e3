/*
 * fa_bwd.cuh — what the tensor-core backwards share (bwd_mma.cu, and bwd_wgmma.cu on sm_90a):
 *
 *   fa_bwd_pre:  D_i = rowsum(dO_i * O_i) -> softmax_d, and dq_accum rows zeroed
 *   dq_accum_prior, dq_accum_add4: a thread's dQ into dq_accum (atomic or deterministic)
 *   fa_bwd_dq:   dq = dq_accum (slices summed) * scale in the output dtype and strides
 *   bwd_p_ds:    a transposed score tile (keys x queries, mma.sync C layout) -> P~^T and dS^T
 *
 * dq_accum is f32 (slices, total_q rows, h, FA_HD), row R = q_batch * seqlen_q + q_row0 + i.
 * p.num_splits == 0: one slice, which the CTAs add into by f32 reductions in whatever order
 * they run (dq's last bits vary). Deterministic, p.num_splits = n >= 1: n slices
 * p.dq_accum_split_stride apart; slice x belongs to CTA x of the key-tile split, and each of
 * its elements to one thread, which adds by plain load-add-store in program order; fa_bwd_dq
 * sums the slices in the order 0..n-1. Same inputs, same bits.
 * Dropout and softcap follow bwd_simt.cu's math: dV uses P * keep / (1 - p), dS = P (dP - D)
 * with dP = keep * dO.V / (1 - p), times softcap's derivative 1 - tanh^2.
 */
#ifndef FA_BWD_CUH
#define FA_BWD_CUH

#include "fa_mma.cuh"

#define FA_BWD_AUX_WARPS 4 /* rows (one per warp) of a pre / dq block */

static __device__ __forceinline__ fa_i64 sd_offset(const fa_attn_params &p, const fa_seq &s, int i,
                                                   int h) {
    return s.q_batch * p.sd_batch_stride + (fa_i64)h * p.sd_head_stride + s.q_row0 + i;
}

/* Slices of dq_accum: p.num_splits when deterministic, else the one shared slice. */
static __device__ __forceinline__ int dq_accum_slices(const fa_attn_params &p) {
    return p.num_splits > 0 ? p.num_splits : 1;
}

/* Row i of head h in slice x of dq_accum: (slices, total_q, h, FA_HD) f32. */
static __device__ __forceinline__ float *dq_accum_split_row(const fa_attn_params &p,
                                                            const fa_seq &s, int i, int h, int x) {
    return p.dq_accum + x * p.dq_accum_split_stride +
           ((s.q_batch * p.seqlen_q + s.q_row0 + i) * p.nheads + h) * (fa_i64)FA_HD;
}

/* Row i of head h in slice 0. */
static __device__ __forceinline__ float *dq_accum_row(const fa_attn_params &p, const fa_seq &s,
                                                      int i, int h) {
    return dq_accum_split_row(p, s, i, h, 0);
}

struct __align__(16) fa_f32x4 {
    float x, y, z, w;
};

/* Deterministic calls add in place: a thread loads the partial sums of its 4 elements first
 * (dq_accum_prior, 16-byte aligned src; zeros where !in), early enough for the load to hide
 * under its MMAs, and dq_accum_add4 stores prior + v. Otherwise prior is zeros, unread, and
 * dq_accum_add4 is an f32 vector reduction into the one slice. */
static __device__ __forceinline__ fa_f32x4 dq_accum_prior(const fa_attn_params &p,
                                                          const float *src, bool in) {
    fa_f32x4 prior = {0.f, 0.f, 0.f, 0.f};
    if (p.num_splits > 0 && in) prior = *(const fa_f32x4 *)src;
    return prior;
}

static __device__ __forceinline__ void dq_accum_add4(const fa_attn_params &p, float *dst,
                                                     fa_f32x4 prior, float v0, float v1,
                                                     float v2, float v3) {
    if (p.num_splits == 0) {
        fa_red_add4(dst, v0, v1, v2, v3);
        return;
    }
    prior.x += v0, prior.y += v1, prior.z += v2, prior.w += v3;
    *(fa_f32x4 *)dst = prior;
}

/* Elements c..c+7 of a row of n (zeros past n) as floats: one 16-byte load when vec (rows
 * 16-byte aligned, n % 8 == 0). */
static __device__ __forceinline__ void load8f(const fa_u16 *row, int c, int n, bool vec,
                                              float *x) {
    fa_u16 e[8];
    if (vec) {
        *(uint4 *)e = *(const uint4 *)(row + c);
    } else {
#pragma unroll
        for (int k = 0; k < 8; ++k) e[k] = c + k < n ? row[c + k] : (fa_u16)0;
    }
#pragma unroll
    for (int k = 0; k < 8; ++k) x[k] = fa_to_float(e[k]);
}

/* One warp per row, lane l on elements 8l.. (16-byte accesses: these kernels are bandwidth
 * bound): D_i = rowsum(dO_i * O_i), and row i of head h zeroed in every dq_accum slice.
 * grid (ceil(max s_q / FA_BWD_AUX_WARPS), h, b), block 32 * FA_BWD_AUX_WARPS. */
extern "C" __global__ void __launch_bounds__(32 * FA_BWD_AUX_WARPS)
fa_bwd_pre(const __grid_constant__ fa_attn_params p) {
    const int b = blockIdx.z, h = blockIdx.y, lane = threadIdx.x & 31;
    const int i = blockIdx.x * FA_BWD_AUX_WARPS + (threadIdx.x >> 5);
    const fa_seq s = fa_seq_of(p, b);
    if (i >= s.seqlen_q) return;
    const fa_u16 *o = (const fa_u16 *)p.o + FA_ROW_OFFSET(p, s, i, h, o);
    const fa_u16 *d_o = (const fa_u16 *)p.dout + FA_ROW_OFFSET(p, s, i, h, do);
    float D = 0.f;
    for (int c = 8 * lane; c < p.d_v; c += 256) {
        float x[8], y[8];
        load8f(o, c, p.d_v, p.vec_io, x);
        load8f(d_o, c, p.d_v, p.vec_io, y);
#pragma unroll
        for (int k = 0; k < 8; ++k) D = fmaf(x[k], y[k], D);
    }
    D = fa_warp_sum(D);
    if (lane == 0) p.softmax_d[sd_offset(p, s, i, h)] = D;
    float *acc = dq_accum_row(p, s, i, h); /* rows of FA_HD floats: 16-byte aligned */
    for (int x = 0; x < dq_accum_slices(p); ++x)
#pragma unroll
        for (int c = 4 * lane; c < FA_HD; c += 128)
            *(float4 *)(acc + x * p.dq_accum_split_stride + c) = make_float4(0.f, 0.f, 0.f, 0.f);
}

/* One warp per row, lane l on elements 4l..: dq = (sum of the dq_accum slices, in order) *
 * scale. grid as fa_bwd_pre. */
extern "C" __global__ void __launch_bounds__(32 * FA_BWD_AUX_WARPS)
fa_bwd_dq(const __grid_constant__ fa_attn_params p) {
    const int b = blockIdx.z, h = blockIdx.y, lane = threadIdx.x & 31;
    const int i = blockIdx.x * FA_BWD_AUX_WARPS + (threadIdx.x >> 5);
    const fa_seq s = fa_seq_of(p, b);
    if (i >= s.seqlen_q) return;
    const float *acc = dq_accum_row(p, s, i, h);
    fa_u16 *dq = (fa_u16 *)p.dq + FA_ROW_OFFSET(p, s, i, h, dq);
    for (int c = 4 * lane; c < p.d; c += 128) {
        float4 sum = *(const float4 *)(acc + c);
        for (int x = 1; x < dq_accum_slices(p); ++x) {
            const float4 part = *(const float4 *)(acc + x * p.dq_accum_split_stride + c);
            sum.x += part.x, sum.y += part.y, sum.z += part.z, sum.w += part.w;
        }
        const float v[4] = {sum.x * p.scale, sum.y * p.scale, sum.z * p.scale, sum.w * p.scale};
        if (p.vec_io) { /* d % 8 == 0: all 4 exist; 8-byte aligned */
            *(uint2 *)(dq + c) = make_uint2(fa_pack2(v[0], v[1]), fa_pack2(v[2], v[3]));
        } else {
#pragma unroll
            for (int k = 0; k < 4; ++k)
                if (c + k < p.d) dq[c + k] = fa_from_float(v[k]);
        }
    }
}

/* Is key tile [n0, n0 + bn) visible, whole, from every row of [m0, m_last]? Then no mask. */
static __device__ __forceinline__ bool bwd_tile_full(const fa_attn_params &p, const fa_seq &s,
                                                     int m0, int m_last, int n0, int bn) {
    const int diag0 = s.seqlen_k - s.seqlen_q;
    return n0 + bn <= s.seqlen_k &&
           (p.window_left < 0 || n0 >= m_last + diag0 - p.window_left) &&
           (p.window_right < 0 || n0 + bn - 1 <= m0 + diag0 + p.window_right);
}

/* Whether a tile's scores are plain dot products (no softcap, ALiBi or dropout): then P^T and
 * dS^T come from bwd_p_plain and bwd_ds_plain, else from bwd_p_ds. */
static __device__ __forceinline__ bool bwd_plain(const fa_attn_params &p, float slope) {
    return p.softcap == 0.f && slope == 0.f && !FA_DROPOUT;
}

/* Plain path, first half: acc_s = S^T -> P^T, masked unless full (it needs only S, so it can
 * run while dP^T is still being computed). Layout, sL and full as bwd_p_ds. */
static __device__ __forceinline__ void bwd_p_plain(const fa_attn_params &p, const fa_seq &s,
                                                   int m0, int j0, bool full, float (*acc_s)[4],
                                                   const float *sL) {
    const int lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
#pragma unroll
    for (int nt = 0; nt < FA_BM / 8; ++nt)
#pragma unroll
        for (int e = 0; e < 4; ++e) {
            const int r = nt * 8 + 2 * t + (e & 1);
            const float pr = fa_exp2(fmaf(acc_s[nt][e], p.scale_log2, -sL[r]));
            acc_s[nt][e] = full || fa_visible(p, s, m0 + r, j0 + g + 8 * (e >> 1)) ? pr : 0.f;
        }
}

/* Plain path, second half: acc_dp = dP^T -> dS^T = P^T (dP^T - D). */
static __device__ __forceinline__ void bwd_ds_plain(const float (*acc_s)[4], float (*acc_dp)[4],
                                                   const float *sD) {
    const int t = threadIdx.x & 3;
#pragma unroll
    for (int nt = 0; nt < FA_BM / 8; ++nt)
#pragma unroll
        for (int e = 0; e < 4; ++e)
            acc_dp[nt][e] = acc_s[nt][e] * (acc_dp[nt][e] - sD[nt * 8 + 2 * t + (e & 1)]);
}

/* A warp's 16 keys x FA_BM queries (acc[nt][e]: key j0 + g + 8 (e >> 1), query m0 + nt * 8 +
 * 2t + (e & 1)): acc_s = S^T -> P~^T (dropped and rescaled), acc_dp = dP^T -> dS^T. sL: lse *
 * log2e per query of the block (+inf past the sequence), sD: D. full: no mask in the tile. */
static __device__ __forceinline__ void bwd_p_ds(const fa_attn_params &p, const fa_seq &s, int b,
                                                int h, int m0, int j0, bool full,
                                                float (*acc_s)[4], float (*acc_dp)[4],
                                                const float *sL, const float *sD) {
    const int lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
    const float slope = fa_alibi_slope(p, b, h);
    const bool plain = p.softcap == 0.f && slope == 0.f;
    if (bwd_plain(p, slope)) {
        bwd_p_plain(p, s, m0, j0, full, acc_s, sL);
        bwd_ds_plain(acc_s, acc_dp, sD);
        return;
    }
#pragma unroll
    for (int nt = 0; nt < FA_BM / 8; ++nt)
#pragma unroll
        for (int e = 0; e < 4; ++e) {
            const int r = nt * 8 + 2 * t + (e & 1), i = m0 + r;
            const int j = j0 + g + 8 * (e >> 1);
            const float qk = acc_s[nt][e];
            float pr = 0.f, ds = 0.f;
            if (full || fa_visible(p, s, i, j)) {
                pr = fa_exp2(plain ? fmaf(qk, p.scale_log2, -sL[r])
                                   : fa_score(p, s, qk, slope, i, j) * FA_LOG2E - sL[r]);
                float dp = acc_dp[nt][e];
#if FA_DROPOUT
                const fa_philox_u32x4 wd =
                    fa_dropout_words(p.rng_seed, p.rng_offset, (fa_u32)(b * p.nheads + h),
                                     (fa_u32)i, (fa_u32)(j >> 2));
                const bool keep = wd.x[j & 3] >= p.dropout_threshold;
                dp = keep ? dp * p.dropout_scale : 0.f;
                ds = pr * (dp - sD[r]);
                pr = keep ? pr * p.dropout_scale : 0.f;
#else
                ds = pr * (dp - sD[r]);
#endif
                if (p.softcap > 0.f) { /* d/dz softcap * tanh(z / softcap) */
                    const float th = fa_tanh(qk * p.scale / p.softcap);
                    ds *= 1.f - th * th;
                }
            }
            acc_s[nt][e] = pr;
            acc_dp[nt][e] = ds;
        }
}

#endif /* FA_BWD_CUH */
