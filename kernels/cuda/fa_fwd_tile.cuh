/*
 * fa_fwd_tile.cuh — the per-warp tile math the tensor-core forwards share (fwd_mma.cu with
 * mma.sync, fwd_wgmma.cu with wgmma): score transform, mask, online softmax, output.
 *
 * A warp owns FA_MT blocks of 16 query rows; its scores acc_s[FA_MT][FA_BN / 8][4] and output
 * acc_o[FA_MT][FA_HDV / 8][4] are m16n8 accumulator fragments (g = lane / 4, t = lane % 4):
 * element e of n8 tile nt of block mt is row 16 mt + g + 8 (e / 2), column 8 nt + 2 t + e % 2.
 * Both mma.sync and wgmma (per warp of a warpgroup) use this layout. m_i, l_i: [FA_MT][2]
 * (rows g and g + 8 of each block). row0 is the warp's first query row in the sequence.
 */
#ifndef FA_FWD_TILE_CUH
#define FA_FWD_TILE_CUH

#include "fa_common.cuh"
#include "fa_mma.cuh"

/* Per-CTA constants of the score transform. plain: scores stay raw dot products and the
 * softmax scales them on the fly (exp2(s sc - m sc), one FFMA); otherwise they are turned into
 * log2-domain scores first and sc = 1. A scale <= 0 would turn the row max into a min: not
 * plain. */
typedef struct fwd_consts {
    bool plain;
    float sc;               /* acc_s units -> log2 domain */
    float cap_in, cap_out;  /* softcap: scale / softcap, softcap * log2 e */
    float slope2;           /* ALiBi slope * log2 e */
} fwd_consts;

static __device__ __forceinline__ fwd_consts fwd_consts_of(const fa_attn_params &p, float slope) {
    fwd_consts c;
    c.plain = p.softcap == 0.f && slope == 0.f && p.scale_log2 > 0.f;
    c.sc = c.plain ? p.scale_log2 : 1.f;
    c.cap_in = p.softcap > 0.f ? p.scale / p.softcap : 0.f;
    c.cap_out = p.softcap * FA_LOG2E;
    c.slope2 = slope * FA_LOG2E;
    return c;
}

/* fa_score * log2 e for query row i (diag = i + s_k - s_q), key j. */
static __device__ __forceinline__ float score_log2(const fa_attn_params &p, const fwd_consts &c,
                                                   float dot, int diag, int j) {
    float x = p.softcap > 0.f ? c.cap_out * fa_tanh(dot * c.cap_in) : dot * p.scale_log2;
    if (c.slope2 != 0.f) {
        const int dist = diag - j;
        x += p.is_causal ? c.slope2 * (float)j : -c.slope2 * (float)(dist < 0 ? -dist : dist);
    }
    return x;
}

/* Softcap/ALiBi (unless plain) and the mask (unless full: every row sees every key of the
 * tile) on the scores of keys [n0, n0 + FA_BN). Uniform branches around whole loops, so the
 * plain path never pays for their code. */
static __device__ __forceinline__ void fwd_scores(const fa_attn_params &p, const fa_seq &s,
                                                  const fwd_consts &c, bool full, int row0, int n0,
                                                  float (*acc_s)[FA_BN / 8][4]) {
    const int g = (threadIdx.x & 31) >> 2, t = threadIdx.x & 3, diag0 = s.seqlen_k - s.seqlen_q;
    if (!c.plain) {
#pragma unroll
        for (int mt = 0; mt < FA_MT; ++mt)
#pragma unroll
            for (int nt = 0; nt < FA_BN / 8; ++nt)
#pragma unroll
                for (int e = 0; e < 4; ++e) {
                    const int i = row0 + mt * 16 + g + 8 * (e >> 1);
                    const int j = n0 + nt * 8 + 2 * t + (e & 1);
                    acc_s[mt][nt][e] = score_log2(p, c, acc_s[mt][nt][e], i + diag0, j);
                }
    }
    if (!full) { /* row i sees keys [lo, hi) (fa_visible) */
#pragma unroll
        for (int mt = 0; mt < FA_MT; ++mt)
#pragma unroll
            for (int half = 0; half < 2; ++half) {
                const long long diag = row0 + mt * 16 + g + 8 * half + diag0;
                const int lo = p.window_left < 0 ? 0 : (int)max(0LL, diag - p.window_left);
                const int hi = p.window_right < 0
                                   ? s.seqlen_k
                                   : (int)min((long long)s.seqlen_k, diag + p.window_right + 1);
#pragma unroll
                for (int nt = 0; nt < FA_BN / 8; ++nt)
#pragma unroll
                    for (int e = 2 * half; e < 2 * half + 2; ++e) {
                        const int j = n0 + nt * 8 + 2 * t + (e & 1);
                        if (j < lo || j >= hi) acc_s[mt][nt][e] = -FA_INF;
                    }
            }
    }
}

/* The key tiles some row of [m0, m_last] sees: [*n_begin, *n_end) (empty: equal). */
static __device__ __forceinline__ void fwd_key_tiles(const fa_attn_params &p, const fa_seq &s,
                                                     int m0, int m_last, int *n_begin, int *n_end) {
    const int diag0 = s.seqlen_k - s.seqlen_q;
    const int j_begin = p.window_left < 0 ? 0 : max(0, m0 + diag0 - p.window_left);
    const int j_end = p.window_right < 0 ? s.seqlen_k
                                         : min(s.seqlen_k, m_last + diag0 + p.window_right + 1);
    *n_begin = j_begin / FA_BN;
    *n_end = j_end > j_begin ? (j_end + FA_BN - 1) / FA_BN : *n_begin;
}

/* Whether every query row of [m0, m_last] sees every key of [n0, n0 + FA_BN). */
static __device__ __forceinline__ bool fwd_tile_full(const fa_attn_params &p, const fa_seq &s,
                                                     int m0, int m_last, int n0) {
    const int diag0 = s.seqlen_k - s.seqlen_q;
    return n0 + FA_BN <= s.seqlen_k &&
           (p.window_left < 0 || n0 >= m_last + diag0 - p.window_left) &&
           (p.window_right < 0 || n0 + FA_BN - 1 <= m0 + diag0 + p.window_right);
}

/* Online softmax: acc_s becomes P. m_i moves only when some row of the warp gains more than
 * 2^8 over it (then acc_o and l_i are rescaled by exp2((m_old - m_new) sc)); otherwise P =
 * exp2((S - m_i) sc) stays below 2^8, exact enough in f32 and bf16/f16, and the rescale of
 * acc_o, most tiles' largest cost after the MMAs, is skipped. */
static __device__ __forceinline__ void fwd_softmax(float sc, float (*acc_s)[FA_BN / 8][4],
                                                   float (*acc_o)[FA_HDV / 8][4], float (*m_i)[2],
                                                   float (*l_i)[2]) {
    float mx[FA_MT][2];
    bool grow = false;
#pragma unroll
    for (int mt = 0; mt < FA_MT; ++mt)
#pragma unroll
        for (int half = 0; half < 2; ++half) {
            float x = -FA_INF;
#pragma unroll
            for (int nt = 0; nt < FA_BN / 8; ++nt)
                x = fmaxf(x, fmaxf(acc_s[mt][nt][2 * half], acc_s[mt][nt][2 * half + 1]));
            mx[mt][half] = fa_quad_max(x);
            grow |= (mx[mt][half] - m_i[mt][half]) * sc > 8.f; /* -inf - -inf: NaN, false */
        }
    if (__any_sync(0xffffffffu, grow)) {
#pragma unroll
        for (int mt = 0; mt < FA_MT; ++mt)
#pragma unroll
            for (int half = 0; half < 2; ++half) {
                const float m_new = fmaxf(m_i[mt][half], mx[mt][half]);
                const float alpha = m_new == -FA_INF ? 1.f : fa_exp2((m_i[mt][half] - m_new) * sc);
                m_i[mt][half] = m_new;
                l_i[mt][half] *= alpha;
#pragma unroll
                for (int nv = 0; nv < FA_HDV / 8; ++nv) {
                    acc_o[mt][nv][2 * half] *= alpha;
                    acc_o[mt][nv][2 * half + 1] *= alpha;
                }
            }
    }
#pragma unroll
    for (int mt = 0; mt < FA_MT; ++mt)
#pragma unroll
        for (int half = 0; half < 2; ++half) {
            /* a row that has seen no key yet: m_i = -inf, P = exp2(-inf) = 0 */
            const float m_sc = m_i[mt][half] == -FA_INF ? 0.f : m_i[mt][half] * sc;
            float sum = 0.f;
#pragma unroll
            for (int nt = 0; nt < FA_BN / 8; ++nt)
#pragma unroll
                for (int e = 2 * half; e < 2 * half + 2; ++e) {
                    const float pr = fa_exp2(fmaf(acc_s[mt][nt][e], sc, -m_sc));
                    acc_s[mt][nt][e] = pr;
                    sum += pr;
                }
            l_i[mt][half] += sum;
        }
}

/* P of the two n8 tiles 2 kk, 2 kk + 1 of block mt as the A fragment of a k16 MMA step. */
static __device__ __forceinline__ void fwd_p_frag(const float (*acc_s)[FA_BN / 8][4], int mt,
                                                  int kk, unsigned *a) {
    a[0] = fa_pack2(acc_s[mt][2 * kk][0], acc_s[mt][2 * kk][1]);
    a[1] = fa_pack2(acc_s[mt][2 * kk][2], acc_s[mt][2 * kk][3]);
    a[2] = fa_pack2(acc_s[mt][2 * kk + 1][0], acc_s[mt][2 * kk + 1][1]);
    a[3] = fa_pack2(acc_s[mt][2 * kk + 1][2], acc_s[mt][2 * kk + 1][3]);
}

/* out = acc_o / l_i (times out_scale: 1 / (1 - dropout p)); lse = ln(sum exp(s)) =
 * (m_i sc + log2(l_i)) ln 2; rows without keys: 0, +inf. */
static __device__ __forceinline__ void fwd_store(const fa_attn_params &p, const fa_seq &s, int h,
                                                 int row0, float sc, float out_scale,
                                                 float (*acc_o)[FA_HDV / 8][4], float (*m_i)[2],
                                                 float (*l_i)[2]) {
    const int g = (threadIdx.x & 31) >> 2, t = threadIdx.x & 3;
#pragma unroll
    for (int mt = 0; mt < FA_MT; ++mt)
#pragma unroll
        for (int half = 0; half < 2; ++half) {
            const int i = row0 + mt * 16 + g + 8 * half;
            const float l = fa_quad_sum(l_i[mt][half]);
            if (i >= s.seqlen_q) continue;
            const float inv = (l > 0.f ? 1.f / l : 0.f) * out_scale;
            fa_u16 *out = (fa_u16 *)p.o + FA_ROW_OFFSET(p, s, i, h, o);
#pragma unroll
            for (int nv = 0; nv < FA_HDV / 8; ++nv) {
                const int col = nv * 8 + 2 * t;
                const float x0 = acc_o[mt][nv][2 * half] * inv, x1 = acc_o[mt][nv][2 * half + 1] * inv;
                if (p.vec_io) {
                    if (col < p.d_v) *(unsigned *)(out + col) = fa_pack2(x0, x1);
                } else { /* same rounding as fa_pack2 */
                    if (col < p.d_v) out[col] = fa_from_float(x0);
                    if (col + 1 < p.d_v) out[col + 1] = fa_from_float(x1);
                }
            }
            if (t == 0)
                p.lse[fa_lse_offset(p, s, i, h)] =
                    l > 0.f ? (m_i[mt][half] * sc + log2f(l)) * FA_LN2 : FA_INF;
        }
}

#endif /* FA_FWD_TILE_CUH */
