/*
 * kvcache.cu — the parts of a kv-cache step around the attention itself (which is the
 * forward kernel reading the cache): the in-place append of k_new/v_new, with rotary on k,
 * and the rotary copy of q. Rotation runs in f32 and rounds once to the dtype.
 * Rotary pairs dims (2c, 2c + 1) when interleaved, else (c, c + rotary_dim / 2).
 *
 * Macros: FA_DTYPE.
 */
#include "fa_common.cuh"

/* Copies one token's head row src -> dst (d elements), rotating its first rotary_dim dims by
 * the angles of position pos. One CTA of threads shares the row. */
static __device__ __forceinline__ void rotate_row(const fa_attn_params &p, const fa_elem *src,
                                                  fa_elem *dst, int d, int pos, bool rotate) {
    const int half = rotate ? p.rotary_dim / 2 : 0;
    for (int c = threadIdx.x; c < half; c += blockDim.x) {
        const int i0 = p.rotary_interleaved ? 2 * c : c;
        const int i1 = p.rotary_interleaved ? 2 * c + 1 : c + half;
        const float cs = fa_to_float(((const fa_elem *)p.rotary_cos)[pos * p.cos_row_stride + c]);
        const float sn = fa_to_float(((const fa_elem *)p.rotary_sin)[pos * p.sin_row_stride + c]);
        const float x0 = fa_to_float(src[i0]), x1 = fa_to_float(src[i1]);
        dst[i0] = fa_from_float(x0 * cs - x1 * sn);
        dst[i1] = fa_from_float(x0 * sn + x1 * cs);
    }
    for (int e = 2 * half + threadIdx.x; e < d; e += blockDim.x) dst[e] = src[e];
}

/* Writes token j of k_new/v_new into the cache at position cache_seqlens[b] + j of cache row
 * batch_idx[b] (or b), through the block table when paged. grid (s_new, h_k, b), block 64. */
extern "C" __global__ void __launch_bounds__(64)
fa_kv_append(const __grid_constant__ fa_attn_params p) {
    const int b = blockIdx.z, hk = blockIdx.y, j = blockIdx.x;
    const int pos = p.seqlens_k[b] + j;
    fa_i64 k_off, v_off;
    if (p.block_table) {
        const fa_i64 page = p.block_table[b * p.block_table_batch_stride + pos / p.page_size];
        const int row = pos % p.page_size;
        k_off = page * p.k_batch_stride + row * p.k_row_stride + (fa_i64)hk * p.k_head_stride;
        v_off = page * p.v_batch_stride + row * p.v_row_stride + (fa_i64)hk * p.v_head_stride;
    } else {
        const fa_i64 cb = p.batch_idx ? p.batch_idx[b] : b;
        k_off = cb * p.k_batch_stride + (fa_i64)pos * p.k_row_stride + (fa_i64)hk * p.k_head_stride;
        v_off = cb * p.v_batch_stride + (fa_i64)pos * p.v_row_stride + (fa_i64)hk * p.v_head_stride;
    }
    const fa_elem *k_src = (const fa_elem *)p.k_new + b * p.knew_batch_stride +
                           (fa_i64)j * p.knew_row_stride + (fa_i64)hk * p.knew_head_stride;
    const fa_elem *v_src = (const fa_elem *)p.v_new + b * p.vnew_batch_stride +
                           (fa_i64)j * p.vnew_row_stride + (fa_i64)hk * p.vnew_head_stride;
    rotate_row(p, k_src, (fa_elem *)p.k + k_off, p.d, pos, p.rotary_dim > 0);
    rotate_row(p, v_src, (fa_elem *)p.v + v_off, p.d_v, pos, false);
}

/* q rotated into the contiguous (b, s_q, h, d) buffer p.o; position cache_seqlens[b] + i when
 * causal or local, else cache_seqlens[b]. grid (s_q, h, b), block 64. */
extern "C" __global__ void __launch_bounds__(64)
fa_rotary_q(const __grid_constant__ fa_attn_params p) {
    const int b = blockIdx.z, h = blockIdx.y, i = blockIdx.x;
    const bool per_token = p.window_left >= 0 || p.window_right >= 0;
    const int pos = p.seqlens_k[b] + (per_token ? i : 0);
    const fa_elem *src = (const fa_elem *)p.q + b * p.q_batch_stride + (fa_i64)i * p.q_row_stride +
                         (fa_i64)h * p.q_head_stride;
    fa_elem *dst = (fa_elem *)p.o + (((fa_i64)b * p.seqlen_q + i) * p.nheads + h) * p.d;
    rotate_row(p, src, dst, p.d, pos, true);
}
