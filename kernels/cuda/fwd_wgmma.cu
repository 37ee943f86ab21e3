/*
 * fwd_wgmma.cu — the sm_90a tensor-core forward: wgmma (warpgroup MMA, gpu_kernels.md §3-4).
 *
 * A CTA owns BM = 64 * FA_NWG query rows of one (sequence, head); warpgroup w owns rows
 * [64 w, 64 w + 64) and walks the key tiles of FA_BN keys last to first, like fwd_mma.cu.
 * S = Q K^T is a chain of wgmma m64nBNk16 with Q and K in shared memory; P stays in registers
 * as the A operand of O += P V (wgmma m64nHDk16, V in shared memory read MN-major). The
 * accumulator fragment of warp w % 4 of a warpgroup is the mma.sync m16n8 layout, so the score,
 * mask, softmax and output code is fa_fwd_tile.cuh's with FA_MT = 1.
 *
 * Q, K, V go global -> shared by cp.async (every thread, 16 bytes each) straight into the
 * 128-byte-swizzled layout of fa_wgmma.cuh; K and V rotate through FA_STAGES stages, so
 * FA_STAGES - 1 tiles are in flight while one is computed. One barrier per tile: it publishes
 * the tile and tells that every warp is done with the previous one, whose stage is then
 * refilled. wgmma reads shared memory through the async proxy: each thread fences its finished
 * copies (fence.proxy.async) before that barrier.
 *
 * Macros: FA_DTYPE (1 f16, 2 bf16), FA_HD (64 or 128; d = d_v, rounded up), FA_BN (64 or
 * 128), FA_NWG (1 or 2), FA_STAGES (2 or 3). Dense layouts with 16-byte aligned rows
 * (p.vec_io, no block table) and no dropout: fa_cuda_attention (fwd.c) sends everything else
 * to fwd_mma.cu.
 */
#if (FA_HD != 64 && FA_HD != 128) || (FA_BN != 64 && FA_BN != 128)
#error "fwd_wgmma.cu: FA_HD and FA_BN must be 64 or 128"
#endif
#define FA_MT 1
#define FA_HDV FA_HD
#define BM (64 * FA_NWG)
#define NTHREADS (128 * FA_NWG)
#include "fa_fwd_tile.cuh"
#include "fa_wgmma.cuh"

#if FA_BN == 64
#define wg_ss wg_ss64 /* S = Q K^T: m64 x FA_BN */
#else
#define wg_ss wg_ss128
#endif
#if FA_HD == 64
#define wg_rs wg_rs64 /* O += P V: m64 x FA_HD */
#else
#define wg_rs wg_rs128
#endif

/* Waits until at most FA_STAGES - 2 commit groups of this thread are in flight. */
static __device__ __forceinline__ void cp_async_wait_stages(void) {
    asm volatile("cp.async.wait_group %0;" ::"n"(FA_STAGES - 2) : "memory");
}

/* grid (ceil(max s_q / BM), h, b), block NTHREADS, dynamic smem
 * 2 * (BM + 2 * FA_STAGES * FA_BN) * FA_HD + 1024 bytes (Q, the stages of K and V, 1024-byte
 * alignment).
 * Row blocks run last first (under a causal mask they are the longest). */
extern "C" __global__ void __launch_bounds__(NTHREADS, 1)
fa_fwd_wgmma(const __grid_constant__ fa_attn_params p) {
    extern __shared__ __align__(1024) unsigned char smem[];
    const unsigned sQ = (fa_smem_addr(smem) + 1023u) & ~1023u; /* swizzle atoms: 1024-aligned */
    const unsigned sK = sQ + TILE_BYTES(BM), sV = sK + FA_STAGES * TILE_BYTES(FA_BN);
    const int b = blockIdx.z, h = blockIdx.y, m0 = (gridDim.x - 1 - blockIdx.x) * BM;
    const fa_seq s = fa_seq_of(p, b);
    if (m0 >= s.seqlen_q) return;
    const int hk = h / (p.nheads / p.nheads_k);
    const int wg = threadIdx.x >> 7, row0 = m0 + 64 * wg + 16 * ((threadIdx.x >> 5) & 3);
    const fwd_consts c = fwd_consts_of(p, fa_alibi_slope(p, b, h));

    const int m_last = min(m0 + BM, s.seqlen_q) - 1;
    int n_begin, n_end;
    fwd_key_tiles(p, s, m0, m_last, &n_begin, &n_end);

    /* This thread's copy streams: first row x / CH, column 8 (x % CH) of Q, K, V. */
    const int r0 = threadIdx.x / CH, col = threadIdx.x % CH * 8;
    const fa_u16 *kp =
        (const fa_u16 *)p.k + fa_kv_offset(p, s, 0, hk, 0) + r0 * p.k_row_stride + col;
    const fa_u16 *vp =
        (const fa_u16 *)p.v + fa_kv_offset(p, s, 0, hk, 1) + r0 * p.v_row_stride + col;
    const int klim = col < p.d ? s.seqlen_k - r0 : -0x40000000; /* minus n0: rows of a tile */
    const int vlim = col < p.d_v ? s.seqlen_k - r0 : -0x40000000;
#define LOAD_KV(n0, st)                                                                            \
    do {                                                                                           \
        load_tile(sK + (st) * TILE_BYTES(FA_BN), FA_BN, kp + (n0) * p.k_row_stride,              \
                  p.k_row_stride, klim - (n0), p.k);                                               \
        load_tile(sV + (st) * TILE_BYTES(FA_BN), FA_BN, vp + (n0) * p.v_row_stride,              \
                  p.v_row_stride, vlim - (n0), p.v);                                               \
    } while (0)

    float acc_s[1][FA_BN / 8][4], acc_o[1][FA_HD / 8][4];
    float m_i[1][2] = {{-FA_INF, -FA_INF}}, l_i[1][2] = {{0.f, 0.f}};
#pragma unroll
    for (int i = 0; i < FA_BN / 8; ++i)
#pragma unroll
        for (int e = 0; e < 4; ++e) acc_s[0][i][e] = 0.f;
#pragma unroll
    for (int i = 0; i < FA_HD / 8; ++i)
#pragma unroll
        for (int e = 0; e < 4; ++e) acc_o[0][i][e] = 0.f;

    load_tile(sQ, BM, (const fa_u16 *)p.q + FA_ROW_OFFSET(p, s, m0 + r0, h, q) + col,
              p.q_row_stride, col < p.d ? s.seqlen_q - m0 - r0 : -0x40000000, p.q);
    fa_cp_async_commit(); /* Q: its own group, complete before the first tile's */
#pragma unroll
    for (int st = 0; st < FA_STAGES - 1; ++st) { /* tiles n_end - 1, n_end - 2, ... */
        if (n_end - 1 - st >= n_begin) LOAD_KV((n_end - 1 - st) * FA_BN, st);
        fa_cp_async_commit();
    }

    /* This warpgroup's Q rows; K-major descriptors step 32 bytes per k16 inside an atom. */
    const unsigned sQw = sQ + 64 * wg * 128;
    for (int n = n_end - 1, st = 0; n >= n_begin; --n, st = st == FA_STAGES - 1 ? 0 : st + 1) {
        const int n0 = n * FA_BN;
        const unsigned sKs = sK + st * TILE_BYTES(FA_BN), sVs = sV + st * TILE_BYTES(FA_BN);
        cp_async_wait_stages(); /* tile n (and Q) landed; the next FA_STAGES - 2 may fly */
        asm volatile("fence.proxy.async.shared::cta;" ::: "memory");
        __syncthreads();
        { /* every warp is done with tile n + 1: its stage takes tile n - FA_STAGES + 1 */
            const int back = st == 0 ? FA_STAGES - 1 : st - 1, nf = n - (FA_STAGES - 1);
            if (nf >= n_begin) LOAD_KV(nf * FA_BN, back);
            fa_cp_async_commit();
        }

        /* S = Q K^T: (64, FA_BN) per warpgroup. */
        wg_keep(&acc_s[0][0][0], FA_BN / 2);
        wg_fence();
#pragma unroll
        for (int kq = 0; kq < FA_HD / 16; ++kq)
            wg_ss(&acc_s[0][0][0], wg_desc(sQw + (kq >> 2) * BM * 128 + (kq & 3) * 32, 16),
                  wg_desc(sKs + (kq >> 2) * FA_BN * 128 + (kq & 3) * 32, 16), kq > 0);
        wg_commit_wait();
        wg_keep(&acc_s[0][0][0], FA_BN / 2);

        fwd_scores(p, s, c, fwd_tile_full(p, s, m0, m_last, n0), row0, n0, acc_s);
        fwd_softmax(c.sc, acc_s, acc_o, m_i, l_i);

        /* O += P V: V (FA_BN keys, FA_HD) is MN-major for this product: the leading byte
         * offset is the stride between its 64-column atoms, a k16 step is 16 rows (2048 bytes). */
        unsigned a[FA_BN / 16][4];
#pragma unroll
        for (int kk = 0; kk < FA_BN / 16; ++kk) fwd_p_frag(acc_s, 0, kk, a[kk]);
        wg_keep(&acc_o[0][0][0], FA_HD / 2);
        wg_fence();
#pragma unroll
        for (int kk = 0; kk < FA_BN / 16; ++kk)
            wg_rs(&acc_o[0][0][0], a[kk], wg_desc(sVs + kk * 2048, FA_BN * 128), 1);
        wg_commit_wait();
        wg_keep(&acc_o[0][0][0], FA_HD / 2);
    }
#undef LOAD_KV
    fwd_store(p, s, h, row0, c.sc, 1.f, acc_o, m_i, l_i);
}
