/*
 * fwd_mma.cu — the sm_80+ tensor-core forward (FA2 structure, gpu_kernels.md §1).
 *
 * A CTA owns BM = 16 * FA_MT * FA_NWARPS query rows of one (sequence, head) and walks the key
 * tiles of FA_BN keys it can see, last tile first (the masked ones come first). Warp w owns
 * rows [16 * FA_MT * w, 16 * FA_MT * (w + 1)), so softmax needs no inter-warp reduction.
 * S = Q K^T with mma.sync m16n8k16 (Q and K read by ldmatrix), P stays in registers as the
 * A operand of O += P V (V read by ldmatrix.trans); scores, mask, softmax and output are
 * fa_fwd_tile.cuh's. Q, K, V tiles go global -> shared by cp.async into two buffers: K and V of
 * the next tile load while this one is computed, one barrier per tile. Shared rows are padded
 * by 16 bytes, so ldmatrix reads are free of bank conflicts. On sm_90a, fwd_wgmma.cu takes the
 * dense d = d_v = 64 / 128 cases without dropout; this kernel does everything else.
 *
 * Macros: FA_DTYPE (1 f16, 2 bf16), FA_HD, FA_HDV (head dims rounded up to 32), FA_MT,
 * FA_NWARPS, FA_BN, FA_DROPOUT (0/1). Any d, d_v and strides: with p.vec_io (16-byte aligned
 * rows, d and d_v multiples of 8) tiles move by cp.async, otherwise element by element; the
 * arithmetic is the same either way, so a strided call gives the bits of a contiguous one.
 */
#include "fa_fwd_tile.cuh"
#include "fa_mma.cuh"

#define BM (16 * FA_MT * FA_NWARPS)
#define NTHREADS (32 * FA_NWARPS)
#define SK_STRIDE (FA_HD + 8) /* shared row stride of Q and K, elements */
#define SV_STRIDE (FA_HDV + 8)

/* Q rows [m0, m0 + BM) of head h -> sQ (BM, FA_HD); zeros past the sequence and past d. */
static __device__ __forceinline__ void load_q(const fa_attn_params &p, const fa_seq &s, int m0,
                                              int h, fa_u16 *sQ) {
    const int chunks = FA_HD / 8;
    for (int c = threadIdx.x; c < BM * chunks; c += NTHREADS) {
        const int r = c / chunks, col = (c % chunks) * 8, i = m0 + r;
        const int n_valid = i < s.seqlen_q ? min(8, max(0, p.d - col)) : 0;
        const fa_u16 *src = (const fa_u16 *)p.q + (n_valid ? FA_ROW_OFFSET(p, s, i, h, q) + col : 0);
        fa_copy8(sQ + r * SK_STRIDE + col, src, n_valid, p.vec_io);
    }
}

/* Keys [n0, n0 + FA_BN) of kv head hk -> shared (FA_BN, width); is_v selects v. Any layout. */
static __device__ __forceinline__ void load_kv(const fa_attn_params &p, const fa_seq &s, int n0,
                                               int hk, int is_v, fa_u16 *dst) {
    const int width = is_v ? FA_HDV : FA_HD, stride = is_v ? SV_STRIDE : SK_STRIDE;
    const int chunks = width / 8, dim = is_v ? p.d_v : p.d;
    const fa_u16 *base = (const fa_u16 *)(is_v ? p.v : p.k);
    const fa_i64 rs = is_v ? p.v_row_stride : p.k_row_stride;
    /* dense layouts: the tile's rows are rs apart from one base; paged: looked up per row */
    const fa_u16 *tile = p.block_table ? base : base + fa_kv_offset(p, s, n0, hk, is_v);
    for (int c = threadIdx.x; c < FA_BN * chunks; c += NTHREADS) {
        const int r = c / chunks, col = (c % chunks) * 8, j = n0 + r;
        const int n_valid = j < s.seqlen_k ? min(8, max(0, dim - col)) : 0;
        const fa_u16 *src = !n_valid ? base
                            : p.block_table ? base + fa_kv_offset(p, s, j, hk, is_v) + col
                                            : tile + r * rs + col;
        fa_copy8(dst + r * stride + col, src, n_valid, p.vec_io);
    }
}

/* The fast copy of dense, 16-byte aligned K or V (width elements per row): width / 8 divides
 * NTHREADS, so a thread always moves the same 16-byte column, in rows r0, r0 + RSTEP, ...;
 * its source pointer for key 0 and its shared offset are computed once per CTA. */
#define KV_FAST(width) (NTHREADS % ((width) / 8) == 0 && FA_BN % (NTHREADS / ((width) / 8)) == 0)

typedef struct kv_stream {
    const fa_u16 *src; /* key 0 of this sequence and kv head, this thread's row r0 and column */
    fa_i64 rs;         /* elements between keys */
    int soff;          /* shared offset (elements) of this thread's first chunk */
    int r0;            /* this thread's first row; past any key when its column is past d */
} kv_stream;

static __device__ __forceinline__ kv_stream kv_stream_of(const fa_attn_params &p, const fa_seq &s,
                                                         int hk, int is_v, int width, int stride) {
    const int chunks = width / 8, r0 = threadIdx.x / chunks, col = threadIdx.x % chunks * 8;
    kv_stream k;
    k.rs = is_v ? p.v_row_stride : p.k_row_stride;
    k.src = (const fa_u16 *)(is_v ? p.v : p.k) + fa_kv_offset(p, s, 0, hk, is_v) + r0 * k.rs + col;
    k.soff = r0 * stride + col;
    k.r0 = col < (is_v ? p.d_v : p.d) ? r0 : 0x40000000;
    return k;
}

/* Keys [n0, n0 + FA_BN) through a kv_stream; rows past the sequence are zero-filled without
 * being read (their source is the tensor's base). */
static __device__ __forceinline__ void load_kv_fast(const kv_stream &k, const fa_seq &s, int n0,
                                                    int width, int stride, const void *base,
                                                    fa_u16 *dst) {
    const int rstep = NTHREADS / (width / 8);
    const int lim = s.seqlen_k - n0 - k.r0; /* pass i is valid iff i * rstep < lim */
    const fa_u16 *src = k.src + n0 * k.rs;
    const unsigned sdst = fa_smem_addr(dst + k.soff);
#pragma unroll
    for (int i = 0; i < FA_BN / rstep; ++i) {
        const bool valid = i * rstep < lim;
        fa_cp_async16(sdst + 2 * i * rstep * stride, valid ? (const void *)src : base, valid);
        src += rstep * k.rs;
    }
}

/* K and V of the key tile at n0 into the buffers at sK, sV (one commit group is the caller's). */
#define LOAD_KV_TILE(n0, sK, sV)                                                                   \
    do {                                                                                           \
        if (fast) {                                                                                \
            load_kv_fast(ks, s, n0, FA_HD, SK_STRIDE, p.k, sK);                                    \
            load_kv_fast(vs, s, n0, FA_HDV, SV_STRIDE, p.v, sV);                                   \
        } else {                                                                                   \
            load_kv(p, s, n0, hk, 0, sK);                                                          \
            load_kv(p, s, n0, hk, 1, sV);                                                          \
        }                                                                                          \
    } while (0)

/* grid (ceil(max s_q / BM), h, b), block NTHREADS, dynamic smem
 * 2 * (BM * SK_STRIDE + 2 * FA_BN * (SK_STRIDE + SV_STRIDE)) bytes. Row blocks run last first:
 * under a causal mask they are the longest, so the short ones fill the tail of the grid. */
extern "C" __global__ void __launch_bounds__(NTHREADS)
fa_fwd_mma(const __grid_constant__ fa_attn_params p) {
    extern __shared__ __align__(16) fa_u16 smem[];
    /* sQ (BM rows), then K buffers 0 and 1, then V buffers 0 and 1; buffer b of K is
     * sK0 + b * K_BUF (pointer arithmetic, not an array, which would live in local memory). */
    fa_u16 *sQ = smem, *sK0 = sQ + BM * SK_STRIDE, *sV0 = sK0 + 2 * FA_BN * SK_STRIDE;
    const int K_BUF = FA_BN * SK_STRIDE, V_BUF = FA_BN * SV_STRIDE;
    const int b = blockIdx.z, h = blockIdx.y, m0 = (gridDim.x - 1 - blockIdx.x) * BM;
    const fa_seq s = fa_seq_of(p, b);
    if (m0 >= s.seqlen_q) return;
    const int hk = h / (p.nheads / p.nheads_k);
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const int wrow0 = warp * 16 * FA_MT; /* this warp's first row within the tile */
    const fwd_consts c = fwd_consts_of(p, fa_alibi_slope(p, b, h));
    const bool fast = KV_FAST(FA_HD) && KV_FAST(FA_HDV) && p.vec_io && !p.block_table;
    const kv_stream ks = kv_stream_of(p, s, hk, 0, FA_HD, SK_STRIDE);
    const kv_stream vs = kv_stream_of(p, s, hk, 1, FA_HDV, SV_STRIDE);

    const int m_last = min(m0 + BM, s.seqlen_q) - 1;
    int n_begin, n_end;
    fwd_key_tiles(p, s, m0, m_last, &n_begin, &n_end);

    float acc_o[FA_MT][FA_HDV / 8][4];
    float m_i[FA_MT][2], l_i[FA_MT][2]; /* m_i in the units of acc_s (times sc: log2 domain) */
#pragma unroll
    for (int mt = 0; mt < FA_MT; ++mt) {
#pragma unroll
        for (int nv = 0; nv < FA_HDV / 8; ++nv)
#pragma unroll
            for (int e = 0; e < 4; ++e) acc_o[mt][nv][e] = 0.f;
        m_i[mt][0] = m_i[mt][1] = -FA_INF;
        l_i[mt][0] = l_i[mt][1] = 0.f;
    }

    load_q(p, s, m0, h, sQ);
    if (n_end > n_begin) LOAD_KV_TILE((n_end - 1) * FA_BN, sK0, sV0);
    fa_cp_async_commit();

    for (int n = n_end - 1, buf = 0; n >= n_begin; --n, buf ^= 1) {
        const int n0 = n * FA_BN;
        const fa_u16 *sK = sK0 + buf * K_BUF, *sV = sV0 + buf * V_BUF;
        fa_cp_async_wait_all();
        /* One barrier per tile: K(n), V(n) (and Q) are in shared memory, and every warp is done
         * with tile n + 1, whose buffers the next tile now refills while this one computes. */
        __syncthreads();
        if (n > n_begin) {
            LOAD_KV_TILE(n0 - FA_BN, sK0 + (buf ^ 1) * K_BUF, sV0 + (buf ^ 1) * V_BUF);
            fa_cp_async_commit();
        }

        /* S = Q K^T: (16 * FA_MT, FA_BN) per warp. */
        float acc_s[FA_MT][FA_BN / 8][4];
#pragma unroll
        for (int mt = 0; mt < FA_MT; ++mt)
#pragma unroll
            for (int nt = 0; nt < FA_BN / 8; ++nt)
#pragma unroll
                for (int e = 0; e < 4; ++e) acc_s[mt][nt][e] = 0.f;
#pragma unroll
        for (int kq = 0; kq < FA_HD / 16; ++kq) {
            unsigned a[FA_MT][4];
#pragma unroll
            for (int mt = 0; mt < FA_MT; ++mt)
                fa_ldmatrix_x4(a[mt], fa_smem_addr(sQ + (wrow0 + mt * 16 + (lane & 15)) * SK_STRIDE +
                                                   kq * 16 + (lane >> 4) * 8));
#pragma unroll
            for (int np = 0; np < FA_BN / 16; ++np) {
                unsigned bk[4];
                fa_ldmatrix_x4(bk, fa_smem_addr(sK + (np * 16 + (lane & 7) + ((lane >> 4) << 3)) *
                                                         SK_STRIDE +
                                                     kq * 16 + ((lane >> 3) & 1) * 8));
#pragma unroll
                for (int mt = 0; mt < FA_MT; ++mt) {
                    fa_mma16816(acc_s[mt][2 * np], a[mt], bk[0], bk[1]);
                    fa_mma16816(acc_s[mt][2 * np + 1], a[mt], bk[2], bk[3]);
                }
            }
        }

        fwd_scores(p, s, c, fwd_tile_full(p, s, m0, m_last, n0), m0 + wrow0, n0, acc_s);
        fwd_softmax(c.sc, acc_s, acc_o, m_i, l_i);

#if FA_DROPOUT
        /* Zero the dropped probabilities (l_i keeps them; 1 / (1 - p) is applied at the end). */
        const int g = lane >> 2, t = lane & 3;
#pragma unroll
        for (int mt = 0; mt < FA_MT; ++mt)
#pragma unroll
            for (int nt = 0; nt < FA_BN / 8; ++nt)
#pragma unroll
                for (int half = 0; half < 2; ++half) {
                    const int i = m0 + wrow0 + mt * 16 + g + 8 * half, j = n0 + nt * 8 + 2 * t;
                    const fa_philox_u32x4 w = fa_dropout_words(
                        p.rng_seed, p.rng_offset, (fa_u32)(b * p.nheads + h), (fa_u32)i,
                        (fa_u32)(j >> 2));
                    if (w.x[j & 3] < p.dropout_threshold) acc_s[mt][nt][2 * half] = 0.f;
                    if (w.x[(j & 3) + 1] < p.dropout_threshold) acc_s[mt][nt][2 * half + 1] = 0.f;
                }
#endif

        /* O += P V: P from the S accumulators (two n8 tiles = one k16 A fragment). */
#pragma unroll
        for (int kk = 0; kk < FA_BN / 16; ++kk) {
            unsigned a[FA_MT][4];
#pragma unroll
            for (int mt = 0; mt < FA_MT; ++mt) fwd_p_frag(acc_s, mt, kk, a[mt]);
#pragma unroll
            for (int np = 0; np < FA_HDV / 16; ++np) {
                unsigned bv[4];
                fa_ldmatrix_x4_trans(
                    bv, fa_smem_addr(sV + (kk * 16 + (lane & 7) + ((lane >> 3) & 1) * 8) * SV_STRIDE +
                                     np * 16 + (lane >> 4) * 8));
#pragma unroll
                for (int mt = 0; mt < FA_MT; ++mt) {
                    fa_mma16816(acc_o[mt][2 * np], a[mt], bv[0], bv[1]);
                    fa_mma16816(acc_o[mt][2 * np + 1], a[mt], bv[2], bv[3]);
                }
            }
        }
    }

#if FA_DROPOUT
    fwd_store(p, s, h, m0 + wrow0, c.sc, p.dropout_scale, acc_o, m_i, l_i);
#else
    fwd_store(p, s, h, m0 + wrow0, c.sc, 1.f, acc_o, m_i, l_i);
#endif
}
