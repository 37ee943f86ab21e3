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

/* The aux kernels: 8 lanes per row, FA_BWD_AUX_ROWS rows per block of 128 threads. Row
 * blockIdx.x FA_BWD_AUX_ROWS + threadIdx.x / 8 of head blockIdx.y of sequence blockIdx.z; its
 * lane l (0..7) moves 16-byte pieces 8l, 8l + 64, ... (these kernels are bandwidth bound). */
#define AUX_LANES 8

/* Sum over the 8 lanes of a row (mask: those lanes; other rows' lanes may have left). */
static __device__ __forceinline__ float aux_row_sum(float x) {
    const unsigned mask = 0xffu << (threadIdx.x & 24);
    x += __shfl_xor_sync(mask, x, 4);
    x += __shfl_xor_sync(mask, x, 2);
    return x + __shfl_xor_sync(mask, x, 1);
}

/* D_i = rowsum(dO_i * O_i), and row i of head h zeroed in every dq_accum slice.
 * grid (ceil(max s_q / FA_BWD_AUX_ROWS), h, b), block 128. */
extern "C" __global__ void __launch_bounds__(128)
fa_bwd_pre(const __grid_constant__ fa_attn_params p) {
    const int b = blockIdx.z, h = blockIdx.y, l = threadIdx.x % AUX_LANES;
    const int i = blockIdx.x * FA_BWD_AUX_ROWS + threadIdx.x / AUX_LANES;
    const fa_seq s = fa_seq_of(p, b);
    if (i >= s.seqlen_q) return;
    const fa_u16 *o = (const fa_u16 *)p.o + FA_ROW_OFFSET(p, s, i, h, o);
    const fa_u16 *d_o = (const fa_u16 *)p.dout + FA_ROW_OFFSET(p, s, i, h, do);
    float D = 0.f;
    for (int c = 8 * l; c < p.d_v; c += 8 * AUX_LANES) {
        float x[8], y[8];
        load8f(o, c, p.d_v, p.vec_io, x);
        load8f(d_o, c, p.d_v, p.vec_io, y);
#pragma unroll
        for (int k = 0; k < 8; ++k) D = fmaf(x[k], y[k], D);
    }
    D = aux_row_sum(D);
    if (l == 0) p.softmax_d[sd_offset(p, s, i, h)] = D;
    float *acc = dq_accum_row(p, s, i, h); /* rows of FA_HD floats: 16-byte aligned */
    for (int x = 0; x < dq_accum_slices(p); ++x)
#pragma unroll
        for (int c = 4 * l; c < FA_HD; c += 4 * AUX_LANES)
            *(float4 *)(acc + x * p.dq_accum_split_stride + c) = make_float4(0.f, 0.f, 0.f, 0.f);
}

/* dq = (sum of the dq_accum slices, in order) * scale; lane l on elements 4l, 4l + 32, ...
 * grid as fa_bwd_pre. */
extern "C" __global__ void __launch_bounds__(128)
fa_bwd_dq(const __grid_constant__ fa_attn_params p) {
    const int b = blockIdx.z, h = blockIdx.y, l = threadIdx.x % AUX_LANES;
    const int i = blockIdx.x * FA_BWD_AUX_ROWS + threadIdx.x / AUX_LANES;
    const fa_seq s = fa_seq_of(p, b);
    if (i >= s.seqlen_q) return;
    const float *acc = dq_accum_row(p, s, i, h);
    fa_u16 *dq = (fa_u16 *)p.dq + FA_ROW_OFFSET(p, s, i, h, dq);
    for (int c = 4 * l; c < p.d; c += 4 * AUX_LANES) {
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

/* The walk of a key tile [n0, n0 + bn) of kv head hk: the query blocks of FA_BM rows that see
 * some of its keys, for every query head of the GQA group (so dK/dV have one writer), head-major.
 * Step it is head h0 + it / nblk, rows from (m_begin + it % nblk) FA_BM; total steps. */
struct bwd_walk {
    int h0, m_begin, nblk, total;
};

static __device__ __forceinline__ bwd_walk bwd_walk_of(const fa_attn_params &p, const fa_seq &s,
                                                       int hk, int n0, int bn) {
    /* Query rows that see some key of the tile: i in [j - diag0 - right, j - diag0 + left]. */
    const int diag0 = s.seqlen_k - s.seqlen_q, n_last = min(n0 + bn, s.seqlen_k) - 1;
    const int i_begin = p.window_right < 0 ? 0 : max(0, n0 - diag0 - p.window_right);
    const int i_end = p.window_left < 0 ? s.seqlen_q
                                        : min(s.seqlen_q, n_last - diag0 + p.window_left + 1);
    const int group = p.nheads / p.nheads_k;
    bwd_walk wk;
    wk.h0 = hk * group;
    wk.m_begin = i_begin / FA_BM;
    wk.nblk = i_end > i_begin ? (i_end + FA_BM - 1) / FA_BM - wk.m_begin : 0;
    wk.total = wk.nblk * group;
    return wk;
}

/* Step it of a walk: its query head and first row. */
struct walk_pos {
    int h, m0;
};

static __device__ __forceinline__ walk_pos walk_at(const bwd_walk &wk, int it) {
    walk_pos w;
    w.h = wk.h0 + it / wk.nblk;
    w.m0 = (wk.m_begin + it % wk.nblk) * FA_BM;
    return w;
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
 * run while dP^T is still being computed). Layout, sL and full as bwd_p_ds. The mask is
 * fa_visible as a range of block rows per key: rows [lo, hi] of key j0 + g (+ 8) see it. */
static __device__ __forceinline__ void bwd_p_plain(const fa_attn_params &p, const fa_seq &s,
                                                   int m0, int j0, bool full, float (*acc_s)[4],
                                                   const float *sL) {
    const int lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
    int lo[2] = {-0x7fffffff, -0x7fffffff}, hi[2] = {0x7fffffff, 0x7fffffff};
    if (!full)
#pragma unroll
        for (int half = 0; half < 2; ++half) {
            const int j = j0 + g + 8 * half, dj = j - (s.seqlen_k - s.seqlen_q) - m0;
            if (p.window_right >= 0) lo[half] = dj - p.window_right;
            if (p.window_left >= 0) hi[half] = dj + p.window_left;
            if (j >= s.seqlen_k) hi[half] = -1;
        }
#pragma unroll
    for (int nt = 0; nt < FA_BM / 8; ++nt)
#pragma unroll
        for (int e = 0; e < 4; ++e) {
            const int r = nt * 8 + 2 * t + (e & 1);
            const float pr = fa_exp2(fmaf(acc_s[nt][e], p.scale_log2, -sL[r]));
            acc_s[nt][e] = r >= lo[e >> 1] && r <= hi[e >> 1] ? pr : 0.f;
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

/* C tiles c[2kk], c[2kk + 1] (16 x 16, f32) -> the A fragment pa[kk] (16-bit pairs). */
#define PACK_A(pa, c)                                                                              \
    _Pragma("unroll") for (int kk = 0; kk < FA_BM / 16; ++kk) {                                    \
        pa[kk][0] = fa_pack2(c[2 * kk][0], c[2 * kk][1]);                                          \
        pa[kk][1] = fa_pack2(c[2 * kk][2], c[2 * kk][3]);                                          \
        pa[kk][2] = fa_pack2(c[2 * kk + 1][0], c[2 * kk + 1][1]);                                  \
        pa[kk][3] = fa_pack2(c[2 * kk + 1][2], c[2 * kk + 1][3]);                                  \
    }

#endif /* FA_BWD_CUH */
