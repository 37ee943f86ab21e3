/*
 * decode.cu — split-KV attention of a few query rows against a long (possibly paged) kv cache
 * (flash-decoding; gpu_kernels.md §1 "GQA/MQA", "Split-KV"), and the combine of the splits.
 *
 * GQA packing: the s_q rows of the group = nheads / nheads_k query heads that share a kv head
 * form one M dimension; packed row r is query row r / group of head hk * group + r % group,
 * so K and V are read once per group. A CTA owns one 16-row tile of packed rows, one kv head
 * and one split of the keys it can see. Its warps split those keys again: warp w takes the
 * FA_KC-key chunks w, w + FA_NWARPS, ... and streams them through its own FA_STAGES-deep cp.async
 * ring in shared memory (no CTA barrier in the loop), with its own online softmax (m_i, l_i,
 * acc); the warps merge once at the end. S = Q K^T and O += P V are mma.sync m16n8k16 with
 * the fragment use of fwd_mma.cu. Compute is small: the kernel is built to keep enough K/V
 * bytes in flight to run at HBM bandwidth.
 *
 * One split writes out and lse; more write f32 partials (lse -inf where a split has no keys)
 * that fa_decode_combine merges. Rows without keys: out 0, lse +inf.
 *
 * Macros: FA_DTYPE (1 f16, 2 bf16), FA_HD, FA_HDV (head dims rounded up to 32), FA_NWARPS,
 * FA_STAGES (>= 2), FA_KC (keys per chunk: 16 or 32). Any d, d_v and strides: with p.vec_io
 * rows move by cp.async, otherwise element by element, with the same arithmetic.
 */
#include "fa_mma.cuh"
#include "fa_decode.h"

#define KC FA_KC                    /* keys per warp chunk: KC / 16 k16 steps of P V */
#define NTHREADS (32 * FA_NWARPS)
#define SK_STRIDE (FA_HD + 8)       /* shared row stride of Q and K, elements */
#define SV_STRIDE (FA_HDV + 8)
#define STAGE_ELEMS (KC * (SK_STRIDE + SV_STRIDE))
#define WARP_ELEMS (FA_STAGES * STAGE_ELEMS)
#define SO_STRIDE (FA_HDV + 4)      /* the merge's f32 rows, in a warp's (free) ring */

#if FA_STAGES < 2 || (KC != 16 && KC != 32)
#error "FA_STAGES must be >= 2 (the merge reuses the ring), FA_KC 16 or 32"
#endif

static __device__ __forceinline__ fa_i64 shfl_i64(fa_i64 x, int lane) {
    const int lo = __shfl_sync(0xffffffffu, (int)x, lane);
    const int hi = __shfl_sync(0xffffffffu, (int)(x >> 32), lane);
    return ((fa_i64)hi << 32) | (unsigned)lo;
}

/* Rows [0, KC) of one tensor -> dst (KC, width) by the whole warp; rows at or past n_rows and
 * columns past dim are zeros. off: dense, the element offset of row 0 (rows rs apart); paged,
 * that of row lane % KC, held by that lane (the lanes copying a row take it by shuffle). */
static __device__ __forceinline__ void copy_rows(const fa_u16 *base, fa_i64 off, fa_i64 rs,
                                                 bool paged, int n_rows, int dim, int width,
                                                 int stride, fa_u16 *dst, bool vec, int lane) {
#pragma unroll
    for (int n = 0; n < KC * width / 8 / 32; ++n) {
        const int it = lane + 32 * n, r = it / (width / 8), col = it % (width / 8) * 8;
        const fa_i64 o = paged ? shfl_i64(off, r) : off + r * rs;
        const int n_valid = r < n_rows ? min(8, max(0, dim - col)) : 0;
        fa_copy8(dst + r * stride + col, n_valid ? base + o + col : base, n_valid, vec);
    }
}

/* Keys [j0, j0 + KC) of kv head hk -> a stage of this warp's ring (K rows, then V rows); keys
 * at or past j_stop (> j0) are zero-filled. Paged: lane l looks row l % KC up in the block
 * table once. */
static __device__ __forceinline__ void load_chunk(const fa_attn_params &p, const fa_seq &s, int j0,
                                                  int j_stop, int hk, int lane, fa_u16 *stage) {
    const bool paged = p.block_table != 0;
    const int j = paged ? j0 + (lane & (KC - 1)) : j0, n_rows = j_stop - j0;
    const fa_i64 ko = j < j_stop ? fa_kv_offset(p, s, j, hk, 0) : 0;
    const fa_i64 vo = j < j_stop ? fa_kv_offset(p, s, j, hk, 1) : 0;
    copy_rows((const fa_u16 *)p.k, ko, p.k_row_stride, paged, n_rows, p.d, FA_HD, SK_STRIDE, stage,
              p.vec_io, lane);
    copy_rows((const fa_u16 *)p.v, vo, p.v_row_stride, paged, n_rows, p.d_v, FA_HDV, SV_STRIDE,
              stage + KC * SK_STRIDE, p.vec_io, lane);
}

static __device__ __forceinline__ void cp_async_wait_ring(void) {
    asm volatile("cp.async.wait_group %0;" ::"n"(FA_STAGES - 1) : "memory");
}

/* The A fragment of Q (16 rows) for dims [16 ks, 16 ks + 16). */
static __device__ __forceinline__ void load_q_frag(unsigned *a, const fa_u16 *sQ, int ks, int lane) {
    fa_ldmatrix_x4(a, fa_smem_addr(sQ + (lane & 15) * SK_STRIDE + ks * 16 + (lane >> 4) * 8));
}

/* A packed row of the tile: query row i of head h, and whether it exists. */
typedef struct packed_row {
    int i, h;
    bool ok;
} packed_row;

static __device__ __forceinline__ packed_row packed(const fa_seq &s, int hk, int group, int m) {
    packed_row r;
    r.i = m / group;
    r.h = hk * group + m % group;
    r.ok = r.i < s.seqlen_q;
    return r;
}

/* grid (m_blocks * num_splits, h_k, b) with the m-blocks of one split adjacent (they read the
 * same keys), block NTHREADS, dynamic smem
 * 2 * (16 * SK_STRIDE + FA_NWARPS * WARP_ELEMS) + 8 * 16 * FA_NWARPS bytes. */
extern "C" __global__ void __launch_bounds__(NTHREADS)
fa_decode(const __grid_constant__ fa_decode_params dp) {
    const fa_attn_params &p = dp.attn;
    extern __shared__ __align__(16) fa_u16 smem[];
    /* sQ (16 rows), sM and sL (per warp and row: m_i, l_i), then each warp's ring */
    fa_u16 *sQ = smem;
    float *sM = (float *)(sQ + 16 * SK_STRIDE), *sL = sM + 16 * FA_NWARPS;
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
    fa_u16 *rings = (fa_u16 *)(sL + 16 * FA_NWARPS), *ring = rings + warp * WARP_ELEMS;
    const int mb = blockIdx.x % dp.m_blocks, split = blockIdx.x / dp.m_blocks;
    const int hk = blockIdx.y, b = blockIdx.z, group = p.nheads / p.nheads_k, m0 = 16 * mb;
    const fa_seq s = fa_seq_of(p, b);

    /* The keys some row of the tile sees, [j_begin, j_end), cut into num_splits ranges of whole
     * rounds of FA_NWARPS chunks; this CTA's is [kb, ke). */
    const int i_min = m0 / group, i_max = min(s.seqlen_q - 1, (m0 + 15) / group);
    const int diag0 = s.seqlen_k - s.seqlen_q;
    const int j_begin = p.window_left < 0 ? 0 : max(0, i_min + diag0 - p.window_left);
    const int j_end = p.window_right < 0 ? s.seqlen_k
                                         : min(s.seqlen_k, i_max + diag0 + p.window_right + 1);
    const int round = KC * FA_NWARPS;
    const int rounds = j_end > j_begin ? (j_end - j_begin + round - 1) / round : 0;
    const int per_split = (rounds + dp.num_splits - 1) / dp.num_splits;
    const int kb = j_begin + split * per_split * round;
    const int ke = i_min < s.seqlen_q ? min(j_end, kb + per_split * round) : kb;
    /* this warp's chunks start at kb + (c * FA_NWARPS + warp) * KC, c < n_chunks */
    const int first = kb + warp * KC;
    const int n_chunks = ke > first ? (ke - first + round - 1) / round : 0;

    /* Q tile (16 packed rows, zeros past the rows and past d), its own cp.async group. */
    for (int c = threadIdx.x; c < 16 * (FA_HD / 8); c += NTHREADS) {
        const int r = c / (FA_HD / 8), col = c % (FA_HD / 8) * 8;
        const packed_row pr = packed(s, hk, group, m0 + r);
        const int n_valid = pr.ok ? min(8, max(0, p.d - col)) : 0;
        const fa_u16 *src =
            (const fa_u16 *)p.q + (n_valid ? FA_ROW_OFFSET(p, s, pr.i, pr.h, q) + col : 0);
        fa_copy8(sQ + r * SK_STRIDE + col, src, n_valid, p.vec_io);
    }
    fa_cp_async_commit();
    for (int c = 0; c < FA_STAGES - 1; ++c) {
        if (c < n_chunks) load_chunk(p, s, first + c * round, ke, hk, lane, ring + c * STAGE_ELEMS);
        fa_cp_async_commit();
    }

    /* This thread's rows g and g + 8 of the tile, for masks, ALiBi and the merge. */
    packed_row rows[2];
    float slope[2];
#pragma unroll
    for (int half = 0; half < 2; ++half) {
        rows[half] = packed(s, hk, group, m0 + g + 8 * half);
        slope[half] = fa_alibi_slope(p, b, rows[half].h);
    }
    const bool plain = p.softcap == 0.f && p.alibi == 0;

    float acc_o[FA_HDV / 8][4];
#pragma unroll
    for (int nv = 0; nv < FA_HDV / 8; ++nv)
#pragma unroll
        for (int e = 0; e < 4; ++e) acc_o[nv][e] = 0.f;
    float m_i[2] = {-FA_INF, -FA_INF}, l_i[2] = {0.f, 0.f};

    cp_async_wait_ring(); /* the Q group */
    __syncthreads();
#if FA_HD <= 128 /* Q's A fragments stay in registers (wider: re-read per chunk, for registers) */
    unsigned qa[FA_HD / 16][4];
#pragma unroll
    for (int ks = 0; ks < FA_HD / 16; ++ks) load_q_frag(qa[ks], sQ, ks, lane);
#endif

    for (int c = 0; c < n_chunks; ++c) {
        const int j0 = first + c * round;
        __syncwarp(); /* the stage refilled below was read in the previous iteration */
        if (c + FA_STAGES - 1 < n_chunks)
            load_chunk(p, s, j0 + (FA_STAGES - 1) * round, ke, hk, lane,
                       ring + (c + FA_STAGES - 1) % FA_STAGES * STAGE_ELEMS);
        fa_cp_async_commit(); /* possibly empty: one group per iteration */
        cp_async_wait_ring();
        __syncwarp(); /* chunk c, copied by every lane, is in shared memory */
        const fa_u16 *sK = ring + c % FA_STAGES * STAGE_ELEMS, *sV = sK + KC * SK_STRIDE;

        /* S = Q K^T: (16, KC) */
        float acc_s[KC / 8][4];
#pragma unroll
        for (int nt = 0; nt < KC / 8; ++nt)
#pragma unroll
            for (int e = 0; e < 4; ++e) acc_s[nt][e] = 0.f;
#pragma unroll
        for (int ks = 0; ks < FA_HD / 16; ++ks) {
#if FA_HD <= 128
            const unsigned *a = qa[ks];
#else
            unsigned a[4];
            load_q_frag(a, sQ, ks, lane);
#endif
#pragma unroll
            for (int np = 0; np < KC / 16; ++np) {
                unsigned bk[4];
                fa_ldmatrix_x4(bk, fa_smem_addr(sK + (np * 16 + (lane & 7) + ((lane >> 4) << 3)) *
                                                         SK_STRIDE +
                                                     ks * 16 + ((lane >> 3) & 1) * 8));
                fa_mma16816(acc_s[2 * np], a, bk[0], bk[1]);
                fa_mma16816(acc_s[2 * np + 1], a, bk[2], bk[3]);
            }
        }

        /* Scores in the log2 domain; the mask only on chunks that need it. */
        if (plain) {
#pragma unroll
            for (int nt = 0; nt < KC / 8; ++nt)
#pragma unroll
                for (int e = 0; e < 4; ++e) acc_s[nt][e] *= p.scale_log2;
        } else {
#pragma unroll
            for (int nt = 0; nt < KC / 8; ++nt)
#pragma unroll
                for (int e = 0; e < 4; ++e) {
                    const packed_row pr = rows[e >> 1];
                    acc_s[nt][e] = fa_score(p, s, acc_s[nt][e], slope[e >> 1], pr.i,
                                            j0 + nt * 8 + 2 * t + (e & 1)) * FA_LOG2E;
                }
        }
        const bool full = j0 + KC <= ke &&
                          (p.window_left < 0 || j0 >= i_max + diag0 - p.window_left) &&
                          (p.window_right < 0 || j0 + KC - 1 <= i_min + diag0 + p.window_right);
        if (!full) {
#pragma unroll
            for (int nt = 0; nt < KC / 8; ++nt)
#pragma unroll
                for (int e = 0; e < 4; ++e) {
                    const int j = j0 + nt * 8 + 2 * t + (e & 1);
                    if (j >= ke || !fa_visible(p, s, rows[e >> 1].i, j)) acc_s[nt][e] = -FA_INF;
                }
        }

        /* Online softmax: rescale acc_o and l_i by exp2(m_old - m_new), P = exp2(S - m_new);
         * acc_o only when some row's max moved (alpha = 1 is exact; decode maxima settle). */
        float alpha[2];
#pragma unroll
        for (int half = 0; half < 2; ++half) {
            float mx = -FA_INF;
#pragma unroll
            for (int nt = 0; nt < KC / 8; ++nt)
                mx = fmaxf(mx, fmaxf(acc_s[nt][2 * half], acc_s[nt][2 * half + 1]));
            const float m_new = fmaxf(m_i[half], fa_quad_max(mx));
            const float m_use = m_new == -FA_INF ? 0.f : m_new; /* avoid -inf - -inf */
            alpha[half] = fa_exp2(m_i[half] - m_use);
            m_i[half] = m_new;
            float sum = 0.f;
#pragma unroll
            for (int nt = 0; nt < KC / 8; ++nt)
#pragma unroll
                for (int e = 2 * half; e < 2 * half + 2; ++e) {
                    const float pr = fa_exp2(acc_s[nt][e] - m_use);
                    acc_s[nt][e] = pr;
                    sum += pr;
                }
            l_i[half] = l_i[half] * alpha[half] + sum;
        }
        if (__any_sync(0xffffffffu, alpha[0] != 1.f || alpha[1] != 1.f)) {
#pragma unroll
            for (int nv = 0; nv < FA_HDV / 8; ++nv)
#pragma unroll
                for (int e = 0; e < 4; ++e) acc_o[nv][e] *= alpha[e >> 1];
        }

        /* O += P V: P (16, KC) from the S accumulators, two n8 tiles per k16 A fragment. */
#pragma unroll
        for (int kk = 0; kk < KC / 16; ++kk) {
            unsigned a[4];
            a[0] = fa_pack2(acc_s[2 * kk][0], acc_s[2 * kk][1]);
            a[1] = fa_pack2(acc_s[2 * kk][2], acc_s[2 * kk][3]);
            a[2] = fa_pack2(acc_s[2 * kk + 1][0], acc_s[2 * kk + 1][1]);
            a[3] = fa_pack2(acc_s[2 * kk + 1][2], acc_s[2 * kk + 1][3]);
#pragma unroll
            for (int np = 0; np < FA_HDV / 16; ++np) {
                unsigned bv[4];
                fa_ldmatrix_x4_trans(
                    bv, fa_smem_addr(sV + (kk * 16 + (lane & 7) + ((lane >> 3) & 1) * 8) * SV_STRIDE +
                                     np * 16 + (lane >> 4) * 8));
                fa_mma16816(acc_o[2 * np], a, bv[0], bv[1]);
                fa_mma16816(acc_o[2 * np + 1], a, bv[2], bv[3]);
            }
        }
    }

    /* Merge the warps: each parks (m_i, l_i) and acc in shared memory (its ring is free now);
     * row r's scale per warp is exp2(m_w - m), with m the max over the warps. */
    fa_cp_async_wait_all();
    __syncwarp();
    float *sO = (float *)ring; /* (16, SO_STRIDE) */
#pragma unroll
    for (int half = 0; half < 2; ++half) {
        const int r = g + 8 * half;
        const float l = fa_quad_sum(l_i[half]);
        if (t == 0) sM[warp * 16 + r] = m_i[half], sL[warp * 16 + r] = l;
#pragma unroll
        for (int nv = 0; nv < FA_HDV / 8; ++nv) {
            sO[r * SO_STRIDE + nv * 8 + 2 * t] = acc_o[nv][2 * half];
            sO[r * SO_STRIDE + nv * 8 + 2 * t + 1] = acc_o[nv][2 * half + 1];
        }
    }
    __syncthreads();
    const bool direct = dp.num_splits == 1;
    const fa_i64 rows_all = (fa_i64)p.batch * p.nheads * p.seqlen_q; /* partial rows per split */
    if (threadIdx.x < 16) {
        const int r = threadIdx.x;
        float m = -FA_INF, l = 0.f;
        for (int w = 0; w < FA_NWARPS; ++w) m = fmaxf(m, sM[w * 16 + r]);
        const float m_use = m == -FA_INF ? 0.f : m;
        for (int w = 0; w < FA_NWARPS; ++w) {
            const float scale = fa_exp2(sM[w * 16 + r] - m_use);
            sM[w * 16 + r] = scale;
            l += scale * sL[w * 16 + r];
        }
        sL[r] = l > 0.f ? 1.f / l : 0.f; /* the row's 1 / l */
        const packed_row pr = packed(s, hk, group, m0 + r);
        const float lse = (m + log2f(l)) * FA_LN2;
        if (pr.ok && direct) {
            p.lse[fa_lse_offset(p, s, pr.i, pr.h)] = l > 0.f ? lse : FA_INF;
        } else if (pr.ok) {
            const fa_i64 row = ((fa_i64)b * p.nheads + pr.h) * p.seqlen_q + pr.i;
            dp.lse_part[split * rows_all + row] = l > 0.f ? lse : -FA_INF;
        }
    }
    __syncthreads();
    for (int idx = threadIdx.x; idx < 16 * FA_HDV; idx += NTHREADS) {
        const int r = idx / FA_HDV, col = idx % FA_HDV;
        const packed_row pr = packed(s, hk, group, m0 + r);
        if (!pr.ok || col >= p.d_v) continue;
        float o = 0.f;
#pragma unroll
        for (int w = 0; w < FA_NWARPS; ++w)
            o += sM[w * 16 + r] * ((const float *)(rings + w * WARP_ELEMS))[r * SO_STRIDE + col];
        o *= sL[r];
        if (direct) {
            ((fa_u16 *)p.o)[FA_ROW_OFFSET(p, s, pr.i, pr.h, o) + col] = fa_from_float(o);
        } else {
            const fa_i64 row = ((fa_i64)b * p.nheads + pr.h) * p.seqlen_q + pr.i;
            dp.o_part[(split * rows_all + row) * p.d_v + col] = o;
        }
    }
}

static __device__ __forceinline__ float warp_max(float x) {
    for (int o = 16; o > 0; o >>= 1) x = fmaxf(x, __shfl_xor_sync(0xffffffffu, x, o));
    return x;
}

/* out and lse from the splits' partials: lse = log sum_s exp(lse_s), out = sum_s exp(lse_s -
 * lse) o_s, splits in order. grid ceil(b * h * s_q / 4), block 128: a warp per (b, h, i) row,
 * lanes over d_v. */
extern "C" __global__ void __launch_bounds__(128)
fa_decode_combine(const __grid_constant__ fa_decode_params dp) {
    const fa_attn_params &p = dp.attn;
    const int lane = threadIdx.x & 31;
    const fa_i64 rows_all = (fa_i64)p.batch * p.nheads * p.seqlen_q;
    const fa_i64 row = (fa_i64)blockIdx.x * 4 + (threadIdx.x >> 5); /* (b * h + hh) * s_q + i */
    if (row >= rows_all) return;
    const int i = (int)(row % p.seqlen_q), h = (int)(row / p.seqlen_q % p.nheads);
    const fa_seq s = fa_seq_of(p, (int)(row / ((fa_i64)p.seqlen_q * p.nheads)));
    if (i >= s.seqlen_q) return; /* varlen: past this sequence's rows */
    const int n = dp.num_splits;
    float m = -FA_INF;
    for (int k = lane; k < n; k += 32) m = fmaxf(m, dp.lse_part[k * rows_all + row]);
    m = warp_max(m);
    float sum = 0.f;
    if (m != -FA_INF)
        for (int k = lane; k < n; k += 32) sum += expf(dp.lse_part[k * rows_all + row] - m);
    sum = fa_warp_sum(sum);
    const float lse = m + logf(sum);
    float acc[FA_HDV / 32];
#pragma unroll
    for (int c = 0; c < FA_HDV / 32; ++c) acc[c] = 0.f;
    for (int k = 0; m != -FA_INF && k < n; ++k) {
        const float w = expf(dp.lse_part[k * rows_all + row] - lse);
        if (w == 0.f) continue; /* uniform: an empty split, or one that does not matter */
        const float *o_k = dp.o_part + (k * rows_all + row) * p.d_v;
#pragma unroll
        for (int c = 0; c < FA_HDV / 32; ++c)
            if (lane + 32 * c < p.d_v) acc[c] += w * o_k[lane + 32 * c];
    }
    fa_u16 *out = (fa_u16 *)p.o + FA_ROW_OFFSET(p, s, i, h, o);
#pragma unroll
    for (int c = 0; c < FA_HDV / 32; ++c)
        if (lane + 32 * c < p.d_v) out[lane + 32 * c] = fa_from_float(acc[c]);
    if (lane == 0) p.lse[fa_lse_offset(p, s, i, h)] = m == -FA_INF ? FA_INF : lse;
}
