/*
 * bwd_mma.cu — the sm_80+ tensor-core backward (FA2 structure, gpu_kernels.md §2).
 *
 *   fa_bwd_pre:      D_i = rowsum(dO_i * O_i), dq_accum zeroed (fa_bwd.cuh)
 *   fa_bwd_mma:      a CTA owns key tiles of BN = 16 * FA_NWARPS keys of one kv head (one
 *                    tile; or, deterministic, every p.num_splits-th); warp w owns keys
 *                    [16 w, 16 w + 16). K_j, V_j stay in shared memory, dK_j, dV_j in f32
 *                    registers. The CTA walks the query blocks of BM rows that can see its keys,
 *                    for every query head of the GQA group (so dK/dV have one writer), and per
 *                    block computes, all transposed so that rows are keys:
 *                      S^T = K Q^T, P^T = exp2(S^T * scale_log2 - lse * log2e)   (masked -> 0)
 *                      dP^T = V dO^T, dS^T = P^T (dP^T - D)                       (registers)
 *                      dV += P^T dO, dK += dS^T Q        (P^T, dS^T are the A operands in place)
 *                      dQ_i += dS K      (dS through shared memory, f32 vector reductions
 *                                         or, deterministic, load-add-store into the CTA's
 *                                         own dq_accum slice; in the next iteration, after
 *                                         its barrier)
 *                    Q_i, dO_i (and lse_i, D_i) of the next block load by cp.async into a second
 *                    buffer while this one is computed.
 *   fa_bwd_dq:       dq = dq_accum (slices summed in order) * scale (fa_bwd.cuh)
 *
 * The reductions make dq's last bits depend on the order CTAs run. Deterministic calls (FA2's
 * way, gpu_kernels.md §2) run p.num_splits CTAs per (kv head, batch) that stride over the key
 * tiles, CTA x adding into slice x only; a runtime flag, so one variant serves both modes.
 *
 * Macros: FA_DTYPE (1 f16, 2 bf16), FA_HD, FA_HDV (head dims rounded up to 32, <= 128),
 * FA_BM (query rows per block), FA_NWARPS, FA_DROPOUT (0/1). BN = 16 * FA_NWARPS must be 1, 2
 * or 4 times FA_BM. p.vec_io: 16-byte aligned rows of every tensor, d and d_v multiples of 8
 * (tiles by cp.async, outputs by pairs); otherwise element by element, same arithmetic.
 */
#include "fa_bwd.cuh"

#define BN (16 * FA_NWARPS)
#define NTHREADS (32 * FA_NWARPS)
#define SQ_STRIDE (FA_HD + 8) /* shared row strides (elements): 16 bytes of padding */
#define SV_STRIDE (FA_HDV + 8)
#define SS_STRIDE (FA_BM + 8)
#define DQ_WN (BN / FA_BM)      /* warps along the head dim of dQ = dS K */
#define DQ_WIDTH (FA_HD / DQ_WN) /* head dims of dQ per warp */
/* deterministic: C tiles of dQ whose prior sums load before the MMAs (32 registers at most) */
#define DQ_PRE (DQ_WIDTH / 8 < 8 ? DQ_WIDTH / 8 : 8)

#if BN % FA_BM != 0 || BN / FA_BM > 4
#error "BN must be FA_BM, 2 * FA_BM or 4 * FA_BM"
#endif
#if DQ_WIDTH % 16 != 0
#error "FA_HD / (BN / FA_BM) must be a multiple of 16"
#endif

/* rows x width tile -> shared (row stride sstride); rows past n_rows and dims past dim are
 * zeros. tile: the first row in global memory, rs apart. */
static __device__ __forceinline__ void load_tile(fa_u16 *dst, int sstride, const fa_u16 *tile,
                                                 fa_i64 rs, int rows, int n_rows, int width,
                                                 int dim, bool vec) {
    const int chunks = width / 8;
    for (int c = threadIdx.x; c < rows * chunks; c += NTHREADS) {
        const int r = c / chunks, col = (c % chunks) * 8;
        const int n_valid = r < n_rows ? min(8, max(0, dim - col)) : 0;
        fa_copy8(dst + r * sstride + col, n_valid ? tile + r * rs + col : tile, n_valid, vec);
    }
}

/* Q, dO rows [m0, m0 + FA_BM) of head h -> sQ, sdO (cp.async, not waited); lse * log2e and D
 * -> sL, sD (plain stores; +inf and 0 past the sequence, so those rows get P = 0). */
static __device__ __forceinline__ void load_q_block(const fa_attn_params &p, const fa_seq &s,
                                                    walk_pos w, fa_u16 *sQ, fa_u16 *sdO,
                                                    float *sL, float *sD) {
    const int n_rows = min(FA_BM, s.seqlen_q - w.m0);
    load_tile(sQ, SQ_STRIDE, (const fa_u16 *)p.q + FA_ROW_OFFSET(p, s, w.m0, w.h, q),
              p.q_row_stride, FA_BM, n_rows, FA_HD, p.d, p.vec_io);
    load_tile(sdO, SV_STRIDE, (const fa_u16 *)p.dout + FA_ROW_OFFSET(p, s, w.m0, w.h, do),
              p.do_row_stride, FA_BM, n_rows, FA_HDV, p.d_v, p.vec_io);
    for (int r = threadIdx.x; r < FA_BM; r += NTHREADS) {
        const bool in = r < n_rows;
        sL[r] = in ? p.lse[fa_lse_offset(p, s, w.m0 + r, w.h)] * FA_LOG2E : FA_INF;
        sD[r] = in ? p.softmax_d[sd_offset(p, s, w.m0 + r, w.h)] : 0.f;
    }
}

/* acc[nt] (16 x 8 tiles along n) = A (16 x 16 * ksteps, rows of sA from row0) times B^T where
 * B rows are the n index (sB, n rows of width 16 * ksteps): both by ldmatrix, non-transposed. */
#define MMA_ABT(acc, sA, a_stride, sB, b_stride, NT, KSTEPS)                                      \
    _Pragma("unroll") for (int ks = 0; ks < (KSTEPS); ++ks) {                                      \
        unsigned a[4];                                                                             \
        fa_ldmatrix_x4(a, fa_smem_addr((sA) + (lane & 15) * (a_stride) + ks * 16 +                 \
                                       (lane >> 4) * 8));                                          \
        _Pragma("unroll") for (int np = 0; np < (NT) / 2; ++np) {                                  \
            unsigned bb[4];                                                                        \
            fa_ldmatrix_x4(bb, fa_smem_addr((sB) + (np * 16 + (lane & 7) + ((lane >> 4) << 3)) *   \
                                                       (b_stride) +                                \
                                                   ks * 16 + ((lane >> 3) & 1) * 8));              \
            fa_mma16816(acc[2 * np], a, bb[0], bb[1]);                                             \
            fa_mma16816(acc[2 * np + 1], a, bb[2], bb[3]);                                         \
        }                                                                                          \
    }

/* acc[nt] (16 x NT*8) += A B: A (16 x FA_BM) is pa[kk], the k16 fragments of the warp's score
 * tiles packed to 16 bits; B (FA_BM x NT*8) is row-major in shared memory (k rows). */
#define MMA_CB(acc, pa, sB, b_stride, NT)                                                          \
    _Pragma("unroll") for (int kk = 0; kk < FA_BM / 16; ++kk) {                                    \
        _Pragma("unroll") for (int np = 0; np < (NT) / 2; ++np) {                                  \
            unsigned bb[4];                                                                        \
            fa_ldmatrix_x4_trans(bb, fa_smem_addr((sB) + (kk * 16 + (lane & 7) +                   \
                                                          ((lane >> 3) & 1) * 8) * (b_stride) +    \
                                                  np * 16 + (lane >> 4) * 8));                     \
            fa_mma16816(acc[2 * np], pa[kk], bb[0], bb[1]);                                        \
            fa_mma16816(acc[2 * np + 1], pa[kk], bb[2], bb[3]);                                    \
        }                                                                                          \
    }

/* acc_dq (16 query rows from mrow x DQ_WIDTH dims from dim0, C layout) = dS K over the BN keys:
 * A = dS by ldmatrix.trans of sdS (dS^T, keys x queries), B = K (keys x dims, ldmatrix.trans). */
static __device__ __forceinline__ void dq_mma(float (*acc_dq)[4], const fa_u16 *sdS,
                                              const fa_u16 *sK, int mrow, int dim0) {
    const int lane = threadIdx.x & 31;
#pragma unroll
    for (int nt = 0; nt < DQ_WIDTH / 8; ++nt)
#pragma unroll
        for (int e = 0; e < 4; ++e) acc_dq[nt][e] = 0.f;
#pragma unroll
    for (int ks = 0; ks < BN / 16; ++ks) {
        unsigned a[4];
        const int mat = lane >> 3;
        const int key = ks * 16 + (lane & 7) + (mat >> 1) * 8;
        fa_ldmatrix_x4_trans(a, fa_smem_addr(sdS + key * SS_STRIDE + mrow + (mat & 1) * 8));
#pragma unroll
        for (int np = 0; np < DQ_WIDTH / 16; ++np) {
            unsigned bb[4];
            const int key = ks * 16 + (lane & 7) + ((lane >> 3) & 1) * 8;
            fa_ldmatrix_x4_trans(
                bb, fa_smem_addr(sK + key * SQ_STRIDE + dim0 + np * 16 + (lane >> 4) * 8));
            fa_mma16816(acc_dq[2 * np], a, bb[0], bb[1]);
            fa_mma16816(acc_dq[2 * np + 1], a, bb[2], bb[3]);
        }
    }
}

/* Lanes t, t ^ 1 swap halves of a C tile c: even t gets row g, odd t row g + 8, each with the 4
 * consecutive dims 8 nt + 2 (t & 2) .. + 3 in v. */
static __device__ __forceinline__ void dq_quad(const float *c, bool odd, float *v) {
    const float r0 = __shfl_xor_sync(0xffffffffu, odd ? c[0] : c[2], 1);
    const float r1 = __shfl_xor_sync(0xffffffffu, odd ? c[1] : c[3], 1);
    v[0] = odd ? r0 : c[0], v[1] = odd ? r1 : c[1];
    v[2] = odd ? c[2] : r0, v[3] = odd ? c[3] : r1;
}

/* dQ_i += dS K for block w, whose dS^T (BN keys x FA_BM queries, every warp's) is in sdS, into
 * dq_accum slice `slice`: warp -> 16 query rows x DQ_WIDTH dims, one 16-byte add per lane and C
 * tile (dq_quad). Every element of the block has one thread, fixed by (i mod FA_BM, dim), so
 * deterministic calls add in place in program order; their loads of the prior sums are issued
 * before the MMAs (two paths, so that the atomic one keeps its registers). */
static __device__ __forceinline__ void dq_update(const fa_attn_params &p, const fa_seq &s,
                                                 walk_pos w, int slice, const fa_u16 *sdS,
                                                 const fa_u16 *sK) {
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
    const int mrow = (warp % (FA_BM / 16)) * 16, dim0 = (warp / (FA_BM / 16)) * DQ_WIDTH;
    const bool odd = t & 1;
    const int i = w.m0 + mrow + g + (odd ? 8 : 0);
    const bool in = i < s.seqlen_q;
    float *row = dq_accum_split_row(p, s, i, w.h, slice) + dim0 + 2 * (t & 2);
    float acc_dq[DQ_WIDTH / 8][4], v[4];
    if (p.num_splits > 0) {
        fa_f32x4 prior[DQ_PRE];
#pragma unroll
        for (int nt = 0; nt < DQ_PRE; ++nt) prior[nt] = dq_accum_prior(p, row + nt * 8, in);
        dq_mma(acc_dq, sdS, sK, mrow, dim0);
#pragma unroll
        for (int nt = 0; nt < DQ_WIDTH / 8; ++nt) {
            dq_quad(acc_dq[nt], odd, v);
            const fa_f32x4 pr = nt < DQ_PRE ? prior[nt] : dq_accum_prior(p, row + nt * 8, in);
            if (in) dq_accum_add4(p, row + nt * 8, pr, v[0], v[1], v[2], v[3]);
        }
    } else {
        dq_mma(acc_dq, sdS, sK, mrow, dim0);
#pragma unroll
        for (int nt = 0; nt < DQ_WIDTH / 8; ++nt) {
            dq_quad(acc_dq[nt], odd, v);
            if (in) fa_red_add4(row + nt * 8, v[0], v[1], v[2], v[3]);
        }
    }
}

/* A warp's 16 rows of dK or dV (acc: NT tiles of 16 x 8) times mul -> rows g (row0) and g + 8
 * (row8) of the output, those that exist (ok0, ok8), dims < dim. */
#define STORE_ROWS(acc, NT, dim, row0, row8, ok0, ok8, mul)                                        \
    _Pragma("unroll") for (int nt = 0; nt < (NT); ++nt) {                                          \
        const int col = nt * 8 + 2 * t;                                                            \
        _Pragma("unroll") for (int half = 0; half < 2; ++half) {                                   \
            fa_u16 *row = half ? (row8) : (row0);                                                  \
            const float x0 = acc[nt][2 * half] * (mul), x1 = acc[nt][2 * half + 1] * (mul);        \
            if (!(half ? (ok8) : (ok0))) continue;                                                 \
            if (p.vec_io) {                                                                        \
                if (col < (dim)) *(unsigned *)(row + col) = fa_pack2(x0, x1);                      \
            } else { /* same rounding as fa_pack2 */                                               \
                if (col < (dim)) row[col] = fa_from_float(x0);                                     \
                if (col + 1 < (dim)) row[col + 1] = fa_from_float(x1);                             \
            }                                                                                      \
        }                                                                                          \
    }

/* Key tile [n0, n0 + BN) of kv head hk in sequence s: dK, dV written, dQ added into dq_accum
 * slice `slice`. Shared memory (16-bit): sK (BN, SQ), sV (BN, SV), sQ 2 x (FA_BM, SQ), sdO
 * 2 x (FA_BM, SV), sdS 2 x (BN, SS); sL, sD 2 x FA_BM f32. Block it uses buffers it & 1; its
 * dQ update runs in iteration it + 1, after the one barrier per iteration has made every
 * warp's dS^T visible. */
static __device__ __forceinline__ void key_tile(const fa_attn_params &p, const fa_seq &s, int b,
                                                int hk, int n0, int slice, fa_u16 *smem) {
    fa_u16 *sK = smem, *sV = sK + BN * SQ_STRIDE, *sQ0 = sV + BN * SV_STRIDE;
    fa_u16 *sdO0 = sQ0 + 2 * FA_BM * SQ_STRIDE, *sdS0 = sdO0 + 2 * FA_BM * SV_STRIDE;
    float *sL0 = (float *)(sdS0 + 2 * BN * SS_STRIDE), *sD0 = sL0 + 2 * FA_BM;
    const int Q_BUF = FA_BM * SQ_STRIDE, DO_BUF = FA_BM * SV_STRIDE, DS_BUF = BN * SS_STRIDE;

    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
    const int kw0 = warp * 16; /* this warp's first key within the tile */
    const bwd_walk wk = bwd_walk_of(p, s, hk, n0, BN);
    const int total = wk.total;

    float acc_dk[FA_HD / 8][4], acc_dv[FA_HDV / 8][4];
#pragma unroll
    for (int nt = 0; nt < FA_HD / 8; ++nt)
#pragma unroll
        for (int e = 0; e < 4; ++e) acc_dk[nt][e] = 0.f;
#pragma unroll
    for (int nt = 0; nt < FA_HDV / 8; ++nt)
#pragma unroll
        for (int e = 0; e < 4; ++e) acc_dv[nt][e] = 0.f;

    if (total > 0) {
        const int n_keys = s.seqlen_k - n0;
        load_tile(sK, SQ_STRIDE, (const fa_u16 *)p.k + fa_kv_offset(p, s, n0, hk, 0),
                  p.k_row_stride, BN, n_keys, FA_HD, p.d, p.vec_io);
        load_tile(sV, SV_STRIDE, (const fa_u16 *)p.v + fa_kv_offset(p, s, n0, hk, 1),
                  p.v_row_stride, BN, n_keys, FA_HDV, p.d_v, p.vec_io);
        load_q_block(p, s, walk_at(wk, 0), sQ0, sdO0, sL0, sD0);
        fa_cp_async_commit();
    }

    for (int it = 0, buf = 0; it < total; ++it, buf ^= 1) {
        const walk_pos w = walk_at(wk, it);
        const fa_u16 *sQ = sQ0 + buf * Q_BUF, *sdO = sdO0 + buf * DO_BUF;
        const float *sL = sL0 + buf * FA_BM, *sD = sD0 + buf * FA_BM;
        fa_cp_async_wait_all();
        __syncthreads(); /* block it in shared memory, dS^T of block it - 1 complete; every
                          * warp done with block it - 1 and the dQ update of block it - 2 */
        if (it + 1 < total) {
            load_q_block(p, s, walk_at(wk, it + 1), sQ0 + (buf ^ 1) * Q_BUF,
                         sdO0 + (buf ^ 1) * DO_BUF, sL0 + (buf ^ 1) * FA_BM,
                         sD0 + (buf ^ 1) * FA_BM);
            fa_cp_async_commit();
        }
        if (it > 0)
            dq_update(p, s, walk_at(wk, it - 1), slice,
                      sdS0 + (buf ^ 1) * DS_BUF, sK);

        /* S^T = K Q^T and dP^T = V dO^T: (16 keys, FA_BM queries) per warp. */
        float acc_s[FA_BM / 8][4], acc_dp[FA_BM / 8][4];
#pragma unroll
        for (int nt = 0; nt < FA_BM / 8; ++nt)
#pragma unroll
            for (int e = 0; e < 4; ++e) acc_s[nt][e] = acc_dp[nt][e] = 0.f;
        MMA_ABT(acc_s, sK + kw0 * SQ_STRIDE, SQ_STRIDE, sQ, SQ_STRIDE, FA_BM / 8, FA_HD / 16);
        MMA_ABT(acc_dp, sV + kw0 * SV_STRIDE, SV_STRIDE, sdO, SV_STRIDE, FA_BM / 8, FA_HDV / 16);

        const int m_last = min(w.m0 + FA_BM, s.seqlen_q) - 1;
        bwd_p_ds(p, s, b, w.h, w.m0, n0 + kw0, bwd_tile_full(p, s, w.m0, m_last, n0, BN), acc_s,
                 acc_dp, sL, sD);

        /* P~^T and dS^T as 16-bit A fragments; dS^T -> sdS (keys x queries) for dQ = dS K. */
        unsigned pa_p[FA_BM / 16][4], pa_ds[FA_BM / 16][4];
        PACK_A(pa_p, acc_s);
        PACK_A(pa_ds, acc_dp);
        fa_u16 *sdS = sdS0 + buf * DS_BUF;
#pragma unroll
        for (int kk = 0; kk < FA_BM / 16; ++kk) {
            fa_u16 *row = sdS + (kw0 + g) * SS_STRIDE + kk * 16 + 2 * t;
            *(unsigned *)row = pa_ds[kk][0];
            *(unsigned *)(row + 8 * SS_STRIDE) = pa_ds[kk][1];
            *(unsigned *)(row + 8) = pa_ds[kk][2];
            *(unsigned *)(row + 8 * SS_STRIDE + 8) = pa_ds[kk][3];
        }

        /* dV += P~^T dO, dK += dS^T Q. */
        MMA_CB(acc_dv, pa_p, sdO, SV_STRIDE, FA_HDV / 8);
        MMA_CB(acc_dk, pa_ds, sQ, SQ_STRIDE, FA_HD / 8);
    }
    if (total > 0) {
        __syncthreads(); /* dS^T of the last block complete */
        dq_update(p, s, walk_at(wk, total - 1), slice,
                  sdS0 + ((total - 1) & 1) * DS_BUF, sK);
    }

    /* dK = acc_dk * scale, dV = acc_dv; keys past the sequence are not written. */
    const int j0 = n0 + kw0 + g, j8 = j0 + 8;
    const fa_i64 dk0 = s.k_batch * p.dk_batch_stride + (s.k_row0 + j0) * p.dk_row_stride +
                       (fa_i64)hk * p.dk_head_stride;
    const fa_i64 dv0 = s.k_batch * p.dv_batch_stride + (s.k_row0 + j0) * p.dv_row_stride +
                       (fa_i64)hk * p.dv_head_stride;
    const bool ok0 = j0 < s.seqlen_k, ok8 = j8 < s.seqlen_k;
    fa_u16 *dk = (fa_u16 *)p.dk + dk0, *dv = (fa_u16 *)p.dv + dv0;
    STORE_ROWS(acc_dk, FA_HD / 8, p.d, dk, dk + 8 * p.dk_row_stride, ok0, ok8, p.scale);
    STORE_ROWS(acc_dv, FA_HDV / 8, p.d_v, dv, dv + 8 * p.dv_row_stride, ok0, ok8, 1.f);
}

/* grid (tiles, h_k, b), block NTHREADS, dynamic smem fa_bwd_mma_smem bytes. p.num_splits == 0:
 * a CTA per key tile (tiles = ceil(max s_k / BN)), dQ by reductions into the one slice.
 * Deterministic: tiles = p.num_splits, CTA x takes key tiles x, x + tiles, ... and owns slice x. */
extern "C" __global__ void __launch_bounds__(NTHREADS, 1)
fa_bwd_mma(const __grid_constant__ fa_attn_params p) {
    extern __shared__ __align__(16) fa_u16 smem[];
    const int b = blockIdx.z, hk = blockIdx.y, slice = p.num_splits > 0 ? blockIdx.x : 0;
    const fa_seq s = fa_seq_of(p, b);
    for (int n0 = blockIdx.x * BN; n0 < s.seqlen_k; n0 += gridDim.x * BN) {
        if (n0 != blockIdx.x * BN) __syncthreads(); /* the last tile's dQ update is done with sK */
        key_tile(p, s, b, hk, n0, slice, smem);
    }
}
