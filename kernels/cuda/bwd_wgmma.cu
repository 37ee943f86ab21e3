/*
 * bwd_wgmma.cu — the sm_90a tensor-core backward: bwd_mma.cu's algorithm (FA2, gpu_kernels.md
 * §2) with every product a warpgroup MMA (wgmma).
 *
 * A CTA owns BN = 128 keys of one kv head, two warpgroups of 64 keys each; K, V stay in shared
 * memory and dK, dV in f32 registers. The CTA walks the query blocks of FA_BM rows that can see
 * its keys, for every query head of the GQA group (dK/dV have one writer), and per block:
 *
 *   S^T  = K Q^T, dP^T = V dO^T        wgmma m64 x FA_BM, K/V and Q/dO in shared memory
 *   P^T, dS^T                          registers (fa_bwd.cuh bwd_p_plain, bwd_ds_plain)
 *   dV  += P^T dO, dK += dS^T Q        A from registers, dO/Q read MN-major
 *   dQ_i += dS K                       dS^T through shared memory, read MN-major like K;
 *                                      f32 vector reductions into dq_accum (fa_bwd.cuh)
 *
 * dQ (FA_BM x FA_HD) is split between the warpgroups by columns when FA_BM = 64 (d 128: each
 * takes 64 dims) and by rows when FA_BM = 128 (d 64: each takes 64 queries): every case is an
 * m64n64 product over the 128 keys. Q, dO (and lse, D) of the next block load while this one is
 * computed, into the other of two buffers. Two barriers per block: one publishes the block's
 * tiles (and frees the other buffer), one publishes dS^T.
 *
 * Macros: FA_DTYPE (1 f16, 2 bf16), FA_HD (64 or 128; d = d_v rounds to it), FA_BM (128 for
 * d 64, 64 for d 128). Plain scores only (no softcap, ALiBi or dropout: their score code costs
 * registers this kernel does not have, and ptxas minutes) and p.vec_io (16-byte aligned rows,
 * d % 8 == 0): src/cuda/bwd.c sends everything else to bwd_mma.cu. fa_bwd_pre and fa_bwd_dq
 * (fa_bwd.cuh) run before and after it.
 */
#if !((FA_HD == 64 && FA_BM == 128) || (FA_HD == 128 && FA_BM == 64))
#error "bwd_wgmma.cu: (FA_HD, FA_BM) must be (64, 128) or (128, 64)"
#endif
#define BN 128
#define NTHREADS 256
#define FA_DROPOUT 0
#include "fa_bwd.cuh"
#include "fa_wgmma.cuh"

#if FA_BM == 64
#define wg_ss_s wg_ss64 /* S^T, dP^T: m64 x FA_BM */
#define wg_ss_sz wg_ss64_z
#else
#define wg_ss_s wg_ss128
#define wg_ss_sz wg_ss128_z
#endif
#if FA_HD == 64
#define wg_rs_d wg_rs64 /* dV, dK: m64 x FA_HD */
#else
#define wg_rs_d wg_rs128
#endif
#define DQ_ROWS_SPLIT (FA_BM == 128) /* dQ split by rows (else by columns) */

/* Q, dO rows [m0, m0 + FA_BM) of head h -> sQ, sdO (cp.async, committed, not waited). */
static __device__ __forceinline__ void load_q_block(const fa_attn_params &p, const fa_seq &s,
                                                    walk_pos w, unsigned sQ, unsigned sdO) {
    const int r0 = threadIdx.x / CH, col = threadIdx.x % CH * 8;
    const int lim = col < p.d ? s.seqlen_q - w.m0 - r0 : -0x40000000;
    load_tile(sQ, FA_BM, (const fa_u16 *)p.q + FA_ROW_OFFSET(p, s, w.m0 + r0, w.h, q) + col,
              p.q_row_stride, lim, p.q);
    load_tile(sdO, FA_BM, (const fa_u16 *)p.dout + FA_ROW_OFFSET(p, s, w.m0 + r0, w.h, do) + col,
              p.do_row_stride, lim, p.dout);
    fa_cp_async_commit();
}

/* lse * log2e and D of query m0 + x for thread x < FA_BM (+inf and 0 past the sequence, so
 * those rows get P = 0): read now, stored to shared memory a block later. */
static __device__ __forceinline__ float2 load_lse_d(const fa_attn_params &p, const fa_seq &s,
                                                    walk_pos w) {
    const int i = w.m0 + (int)threadIdx.x;
    float2 r = make_float2(FA_INF, 0.f);
    if (threadIdx.x < FA_BM && i < s.seqlen_q) {
        r.x = p.lse[fa_lse_offset(p, s, i, w.h)] * FA_LOG2E;
        r.y = p.softmax_d[sd_offset(p, s, i, w.h)];
    }
    return r;
}

/* The warp's dS^T fragments (keys kw0 + g (+ 8), queries 16 kk + 2t (+ 1) (+ 8)) -> sdS, a
 * (BN keys, FA_BM queries) tile in the swizzled layout (one 4-byte store per pair). */
static __device__ __forceinline__ void store_ds(unsigned sdS, int kw0, const unsigned (*pa)[4]) {
    const int lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
#pragma unroll
    for (int kk = 0; kk < FA_BM / 16; ++kk)
#pragma unroll
        for (int e = 0; e < 4; ++e) { /* e: rows +8 (odd e), columns +8 (e >= 2) */
            const int key = kw0 + g + 8 * (e & 1), c = 2 * kk + (e >> 1); /* 16-byte chunk */
            const unsigned addr = sdS + (c >> 3) * BN * 128 + key * 128 +
                                  (((c & 7) ^ (key & 7)) << 4) + 4 * t;
            asm volatile("st.shared.b32 [%0], %1;" ::"r"(addr), "r"(pa[kk][e]) : "memory");
        }
}

/* acc (m64n64: this warp's 16 rows x 64 columns) -> dq_accum rows row0 + g (+ 8) of head h,
 * columns dim0 + ...: lanes t, t ^ 1 swap halves so that each adds 4 consecutive columns of
 * one row in one vector reduction. */
static __device__ __forceinline__ void dq_add(const fa_attn_params &p, const fa_seq &s, int h,
                                              int row0, int dim0, const float (*acc)[4]) {
    const int lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
    const bool odd = t & 1;
    const int i = row0 + g + (odd ? 8 : 0);
    float *row = dq_accum_row(p, s, i, h) + dim0 + 2 * (t & 2);
#pragma unroll
    for (int nt = 0; nt < 8; ++nt) {
        const float *c = acc[nt];
        const float r0 = __shfl_xor_sync(0xffffffffu, odd ? c[0] : c[2], 1);
        const float r1 = __shfl_xor_sync(0xffffffffu, odd ? c[1] : c[3], 1);
        if (i < s.seqlen_q) {
            if (odd) fa_red_add4(row + nt * 8, r0, r1, c[2], c[3]);
            else fa_red_add4(row + nt * 8, c[0], c[1], r0, r1);
        }
    }
}

/* A warp's 16 rows of dK or dV (acc: FA_HD / 8 tiles of 16 x 8) times mul -> rows j0 + g and
 * j0 + g + 8 of out (row stride rs), those below n_keys, dims below dim. */
static __device__ __forceinline__ void store_rows(fa_u16 *out, fa_i64 rs, int j0, int n_keys,
                                                  int dim, const float (*acc)[4], float mul) {
    const int lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
#pragma unroll
    for (int half = 0; half < 2; ++half) {
        const int j = j0 + g + 8 * half;
        if (j >= n_keys) continue;
        fa_u16 *row = out + j * rs;
#pragma unroll
        for (int nt = 0; nt < FA_HD / 8; ++nt) {
            const int col = nt * 8 + 2 * t;
            if (col < dim)
                *(unsigned *)(row + col) =
                    fa_pack2(acc[nt][2 * half] * mul, acc[nt][2 * half + 1] * mul);
        }
    }
}

static __device__ __forceinline__ void zero(float *acc, int n) {
#pragma unroll
    for (int i = 0; i < n; ++i) acc[i] = 0.f;
}

/* grid (ceil(max s_k / BN), h_k, b), block NTHREADS, dynamic smem fa_bwd_wgmma_smem bytes:
 * sK, sV (BN, FA_HD), 2 x sQ, 2 x sdO (FA_BM, FA_HD), sdS (BN, FA_BM), all swizzled 16-bit;
 * 2 x sL, 2 x sD (FA_BM) f32; 1024 bytes of alignment. Block it uses buffers it & 1. */
extern "C" __global__ void __launch_bounds__(NTHREADS, 1)
fa_bwd_wgmma(const __grid_constant__ fa_attn_params p) {
    extern __shared__ __align__(1024) unsigned char smem[];
    const unsigned sK = (fa_smem_addr(smem) + 1023u) & ~1023u; /* swizzle atoms: 1024-aligned */
    const unsigned sV = sK + TILE_BYTES(BN), sQ0 = sV + TILE_BYTES(BN);
    const unsigned sdO0 = sQ0 + 2 * TILE_BYTES(FA_BM), sdS = sdO0 + 2 * TILE_BYTES(FA_BM);
    float *sL0 = (float *)(smem + (sdS + BN * FA_BM * 2 - fa_smem_addr(smem))), *sD0 = sL0 + 2 * FA_BM;

    const int b = blockIdx.z, hk = blockIdx.y, n0 = blockIdx.x * BN;
    const fa_seq s = fa_seq_of(p, b);
    if (n0 >= s.seqlen_k) return;
    const int warp = threadIdx.x >> 5, wg = warp >> 2;
    const int kw0 = 16 * warp; /* this warp's first key in the tile (warpgroup wg: 64 wg..) */
    const bwd_walk wk = bwd_walk_of(p, s, hk, n0, BN);
    const int total = wk.total;

    /* f32 accumulators (m16n8 fragments, this warp's 16 rows): dK, dV (keys x dims) live
     * through the walk; S^T, dP^T (keys x queries) and dQ (queries x 64 dims) per block. */
    float acc_dk[FA_HD / 8][4], acc_dv[FA_HD / 8][4];
    float acc_s[FA_BM / 8][4], acc_dp[FA_BM / 8][4], acc_dq[8][4]; /* first written by _z */
    zero(&acc_dk[0][0], FA_HD / 2);
    zero(&acc_dv[0][0], FA_HD / 2);

    if (total > 0) {
        const int r0 = threadIdx.x / CH, col = threadIdx.x % CH * 8;
        const int lim = col < p.d ? s.seqlen_k - n0 - r0 : -0x40000000;
        load_tile(sK, BN, (const fa_u16 *)p.k + fa_kv_offset(p, s, n0 + r0, hk, 0) + col,
                  p.k_row_stride, lim, p.k);
        load_tile(sV, BN, (const fa_u16 *)p.v + fa_kv_offset(p, s, n0 + r0, hk, 1) + col,
                  p.v_row_stride, lim, p.v);
        const walk_pos w = walk_at(wk, 0);
        load_q_block(p, s, w, sQ0, sdO0); /* commits K, V and block 0 together */
        const float2 ld = load_lse_d(p, s, w);
        if (threadIdx.x < FA_BM) sL0[threadIdx.x] = ld.x, sD0[threadIdx.x] = ld.y;
    }

    /* K-major descriptors of this warpgroup's 64 keys step 32 bytes per k16 in an atom. */
    const unsigned sKw = sK + 64 * wg * 128, sVw = sV + 64 * wg * 128;
    for (int it = 0, buf = 0; it < total; ++it, buf ^= 1) {
        const walk_pos w = walk_at(wk, it);
        const unsigned sQ = sQ0 + buf * TILE_BYTES(FA_BM), sdO = sdO0 + buf * TILE_BYTES(FA_BM);
        const float *sL = sL0 + buf * FA_BM, *sD = sD0 + buf * FA_BM;
        fa_cp_async_wait_all();
        asm volatile("fence.proxy.async.shared::cta;" ::: "memory");
        __syncthreads(); /* block it in shared memory; every warp done with block it - 1 */
        float2 next_ld = make_float2(0.f, 0.f);
        if (it + 1 < total) {
            const walk_pos wn = walk_at(wk, it + 1);
            load_q_block(p, s, wn, sQ0 + (buf ^ 1) * TILE_BYTES(FA_BM),
                         sdO0 + (buf ^ 1) * TILE_BYTES(FA_BM));
            next_ld = load_lse_d(p, s, wn);
        }

        /* S^T = K Q^T, dP^T = V dO^T: (64 keys, FA_BM queries) per warpgroup. */
        wg_fence();
        /* K-major k16 steps: 32 bytes inside a 64-column atom, then the next atom. */
#define KSTEP(rows, kq) (((kq) >> 2) * (rows) * 128 + ((kq) & 3) * 32)
        const unsigned long long dK = wg_desc_here(sKw, 16), dQ = wg_desc_here(sQ, 16);
        wg_ss_sz(&acc_s[0][0], dK, dQ, 0);
#pragma unroll
        for (int kq = 1; kq < FA_HD / 16; ++kq)
            wg_ss_s(&acc_s[0][0], wg_desc_at(dK, KSTEP(BN, kq)), wg_desc_at(dQ, KSTEP(FA_BM, kq)),
                    1);
        wg_commit();
        const unsigned long long dV = wg_desc_here(sVw, 16), ddO = wg_desc_here(sdO, 16);
        wg_ss_sz(&acc_dp[0][0], dV, ddO, 0);
#pragma unroll
        for (int kq = 1; kq < FA_HD / 16; ++kq)
            wg_ss_s(&acc_dp[0][0], wg_desc_at(dV, KSTEP(BN, kq)),
                    wg_desc_at(ddO, KSTEP(FA_BM, kq)), 1);
#undef KSTEP
        wg_commit();

        /* P^T, dS^T: S^T is exponentiated while dP^T is still in the tensor cores. */
        const int m_last = min(w.m0 + FA_BM, s.seqlen_q) - 1;
        const bool full = bwd_tile_full(p, s, w.m0, m_last, n0, BN);
        wg_wait(1);
        wg_keep(&acc_s[0][0], FA_BM / 2);
        bwd_p_plain(p, s, w.m0, n0 + kw0, full, acc_s, sL);
        wg_wait(0);
        wg_keep(&acc_dp[0][0], FA_BM / 2);
        bwd_ds_plain(acc_s, acc_dp, sD);

        /* P^T, dS^T as 16-bit A fragments; dS^T -> sdS for dQ = dS K. */
        unsigned pa_p[FA_BM / 16][4], pa_ds[FA_BM / 16][4];
        PACK_A(pa_p, acc_s);
        PACK_A(pa_ds, acc_dp);
        store_ds(sdS, kw0, pa_ds);
        asm volatile("fence.proxy.async.shared::cta;" ::: "memory");

        /* dV += P^T dO, dK += dS^T Q: dO, Q (FA_BM queries, FA_HD) read MN-major. */
        wg_keep(&acc_dv[0][0], FA_HD / 2);
        wg_keep(&acc_dk[0][0], FA_HD / 2);
        wg_fence();
        const unsigned long long mdO = wg_desc_here(sdO, FA_BM * 128);
#pragma unroll
        for (int kk = 0; kk < FA_BM / 16; ++kk)
            wg_rs_d(&acc_dv[0][0], pa_p[kk], wg_desc_at(mdO, kk * 2048), 1);
        const unsigned long long mQ = wg_desc_here(sQ, FA_BM * 128);
#pragma unroll
        for (int kk = 0; kk < FA_BM / 16; ++kk)
            wg_rs_d(&acc_dk[0][0], pa_ds[kk], wg_desc_at(mQ, kk * 2048), 1);
        wg_commit();
        __syncthreads(); /* every warp's dS^T in sdS */

        /* dQ (64 x 64 per warpgroup) = dS K over the BN keys; dS^T and K read MN-major. */
#if DQ_ROWS_SPLIT
        const unsigned sA = sdS + wg * BN * 128, sB = sK;
        const int dq_row0 = w.m0 + 64 * wg + 16 * (warp & 3), dq_dim0 = 0;
#else
        const unsigned sA = sdS, sB = sK + wg * BN * 128;
        const int dq_row0 = w.m0 + 16 * (warp & 3), dq_dim0 = 64 * wg;
#endif
        const unsigned long long mA = wg_desc_here(sA, BN * 128), mB = wg_desc_here(sB, BN * 128);
        wg_ss64_tz(&acc_dq[0][0], mA, mB, 0);
#pragma unroll
        for (int kk = 1; kk < BN / 16; ++kk)
            wg_ss64_t(&acc_dq[0][0], wg_desc_at(mA, kk * 2048), wg_desc_at(mB, kk * 2048), 1);
        wg_commit_wait();
        wg_keep(&acc_dv[0][0], FA_HD / 2);
        wg_keep(&acc_dk[0][0], FA_HD / 2);
        wg_keep(&acc_dq[0][0], 32);
        wg_keep_a(&pa_p[0][0], FA_BM / 4);
        wg_keep_a(&pa_ds[0][0], FA_BM / 4);
        dq_add(p, s, w.h, dq_row0, dq_dim0, acc_dq);
        if (it + 1 < total && threadIdx.x < FA_BM) { /* buffer buf ^ 1 is free since the top */
            sL0[(buf ^ 1) * FA_BM + threadIdx.x] = next_ld.x;
            sD0[(buf ^ 1) * FA_BM + threadIdx.x] = next_ld.y;
        }
    }

    /* dK = acc_dk * scale, dV = acc_dv; keys past the sequence are not written. */
    const int n_keys = s.seqlen_k - n0;
    fa_u16 *dk = (fa_u16 *)p.dk + s.k_batch * p.dk_batch_stride +
                 (s.k_row0 + n0) * p.dk_row_stride + (fa_i64)hk * p.dk_head_stride;
    fa_u16 *dv = (fa_u16 *)p.dv + s.k_batch * p.dv_batch_stride +
                 (s.k_row0 + n0) * p.dv_row_stride + (fa_i64)hk * p.dv_head_stride;
    store_rows(dk, p.dk_row_stride, kw0, n_keys, p.d, acc_dk, p.scale);
    store_rows(dv, p.dv_row_stride, kw0, n_keys, p.d_v, acc_dv, 1.f);
}
