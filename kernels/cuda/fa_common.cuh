/*
 * fa_common.cuh — what every kernel shares: element types, conversions, the sequence layout
 * (batched, varlen, paged, kvcache), the score transform (softcap, ALiBi, masks) and the
 * PTX wrappers of the tensor-core path. CUDA C compiled by NVRTC with no CUDA headers.
 *
 * Macros of a variant: FA_DTYPE (0 f32, 1 f16, 2 bf16 — the fa_dtype numbers).
 */
#ifndef FA_COMMON_CUH
#define FA_COMMON_CUH

#include "fa_params.h"
#include "fa_philox.h"

#ifndef FA_DTYPE
#error "FA_DTYPE must be defined"
#endif

#define FA_INF __int_as_float(0x7f800000)
#define FA_LOG2E 1.4426950408889634f
#define FA_LN2 0.6931471805599453f

typedef unsigned short fa_u16;
#if FA_DTYPE == 0
typedef float fa_elem;
#else
typedef fa_u16 fa_elem; /* f16 or bf16 bits */
#endif

/* ---------------------------------------------------------------- conversions */
static __device__ __forceinline__ float fa_to_float(fa_elem x) {
#if FA_DTYPE == 0
    return x;
#elif FA_DTYPE == 1
    float f;
    asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(x));
    return f;
#else
    return __uint_as_float(((unsigned)x) << 16);
#endif
}

static __device__ __forceinline__ fa_elem fa_from_float(float f) {
#if FA_DTYPE == 0
    return f;
#elif FA_DTYPE == 1
    fa_u16 h;
    asm("cvt.rn.f16.f32 %0, %1;" : "=h"(h) : "f"(f));
    return h;
#else
    fa_u16 h;
    asm("cvt.rn.bf16.f32 %0, %1;" : "=h"(h) : "f"(f));
    return h;
#endif
}

/* Two floats to one register of 16-bit pairs; lo lands in the low half. */
static __device__ __forceinline__ unsigned fa_pack2(float lo, float hi) {
    unsigned r;
#if FA_DTYPE == 2
    asm("cvt.rn.bf16x2.f32 %0, %1, %2;" : "=r"(r) : "f"(hi), "f"(lo));
#else
    asm("cvt.rn.f16x2.f32 %0, %1, %2;" : "=r"(r) : "f"(hi), "f"(lo));
#endif
    return r;
}

static __device__ __forceinline__ float fa_exp2(float x) {
    float y;
    asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));
    return y;
}

/* 16-bit paths use the hardware approximation; f32 keeps full precision. */
static __device__ __forceinline__ float fa_tanh(float x) {
#if FA_DTYPE == 0
    return tanhf(x);
#else
    float y;
    asm("tanh.approx.f32 %0, %1;" : "=f"(y) : "f"(x));
    return y;
#endif
}

/* ---------------------------------------------------------------- sequences */
/* Sequence b: its rows of q (q_row0 .. + seqlen_q) and how its keys are found. */
typedef struct fa_seq {
    int b;
    fa_i64 q_batch;    /* batch index into q/out/lse (0 for varlen) */
    fa_i64 q_row0;     /* first row of q/out/lse of this sequence (0 for batched) */
    fa_i64 k_row0;     /* first key row (dense layouts) */
    fa_i64 k_batch;    /* batch index into k/v (dense batched and kvcache) */
    int seqlen_q, seqlen_k;
} fa_seq;

static __device__ __forceinline__ fa_seq fa_seq_of(const fa_attn_params &p, int b) {
    fa_seq s;
    s.b = b;
    int leftpad = p.leftpad_k ? p.leftpad_k[b] : 0;
    if (p.cu_seqlens_q) {
        s.q_batch = 0;
        s.q_row0 = p.cu_seqlens_q[b];
        s.seqlen_q = p.cu_seqlens_q[b + 1] - p.cu_seqlens_q[b];
    } else {
        s.q_batch = b;
        s.q_row0 = 0;
        s.seqlen_q = p.seqlen_q;
    }
    int len_k;
    if (p.seqlens_k) {
        len_k = p.seqlens_k[b] + p.seqlen_new;
    } else if (p.seqused_k) {
        len_k = p.seqused_k[b];
    } else if (p.cu_seqlens_k) {
        len_k = p.cu_seqlens_k[b + 1] - p.cu_seqlens_k[b];
    } else {
        len_k = p.seqlen_k;
    }
    s.seqlen_k = len_k - leftpad;
    if (p.cu_seqlens_k && !p.block_table) {
        s.k_row0 = (fa_i64)p.cu_seqlens_k[b] + leftpad;
        s.k_batch = 0;
    } else {
        s.k_row0 = leftpad;
        s.k_batch = p.batch_idx ? p.batch_idx[b] : b;
    }
    return s;
}

/* Offsets (elements) of row i of q-like tensors, and of lse-like ones. */
#define FA_ROW_OFFSET(p, s, i, h, name)                                                            \
    ((s).q_batch * (p).name##_batch_stride + ((s).q_row0 + (i)) * (p).name##_row_stride +          \
     (fa_i64)(h) * (p).name##_head_stride)

static __device__ __forceinline__ fa_i64 fa_lse_offset(const fa_attn_params &p, const fa_seq &s,
                                                       int i, int h) {
    return s.q_batch * p.lse_batch_stride + (fa_i64)h * p.lse_head_stride + s.q_row0 + i;
}

/* Offset (elements) of key j of sequence s, kv head hk, in k (is_v = 0) or v (1). */
static __device__ __forceinline__ fa_i64 fa_kv_offset(const fa_attn_params &p, const fa_seq &s,
                                                      int j, int hk, int is_v) {
    fa_i64 bs = is_v ? p.v_batch_stride : p.k_batch_stride;
    fa_i64 rs = is_v ? p.v_row_stride : p.k_row_stride;
    fa_i64 hs = is_v ? p.v_head_stride : p.k_head_stride;
    if (p.block_table) {
        int page = p.block_table[s.b * p.block_table_batch_stride + j / p.page_size];
        return (fa_i64)page * bs + (fa_i64)(j % p.page_size) * rs + (fa_i64)hk * hs;
    }
    return s.k_batch * bs + (s.k_row0 + j) * rs + (fa_i64)hk * hs;
}

/* ---------------------------------------------------------------- scores */
/* Is key j visible from query i (both within the sequence)? Windows as in fa_problem. */
static __device__ __forceinline__ bool fa_visible(const fa_attn_params &p, const fa_seq &s, int i,
                                                  int j) {
    int diag = i + s.seqlen_k - s.seqlen_q;
    return j < s.seqlen_k && (p.window_left < 0 || j >= diag - p.window_left) &&
           (p.window_right < 0 || j <= diag + p.window_right);
}

/* The natural-log score from the raw dot product q.k. slope: ALiBi slope (0 = none). */
static __device__ __forceinline__ float fa_score(const fa_attn_params &p, const fa_seq &s,
                                                 float dot, float slope, int i, int j) {
    float x = dot * p.scale;
    if (p.softcap > 0.f) x = p.softcap * fa_tanh(x / p.softcap);
    if (slope != 0.f) {
        int dist = i + s.seqlen_k - s.seqlen_q - j;
        x += p.is_causal ? slope * (float)j : -slope * (float)(dist < 0 ? -dist : dist);
    }
    return x;
}

static __device__ __forceinline__ float fa_alibi_slope(const fa_attn_params &p, int b, int h) {
    return p.alibi ? p.alibi[b * p.alibi_batch_stride + h] : 0.f;
}

/* Dropout: is element (sequence b, head h, row i, key j) kept? */
static __device__ __forceinline__ bool fa_keep(const fa_attn_params &p, int b, int h, int i,
                                               int j) {
    fa_philox_u32x4 w = fa_dropout_words(p.rng_seed, p.rng_offset, (fa_u32)(b * p.nheads + h),
                                         (fa_u32)i, (fa_u32)(j >> 2));
    return w.x[j & 3] >= p.dropout_threshold;
}

/* ---------------------------------------------------------------- warp helpers */
static __device__ __forceinline__ float fa_warp_sum(float x) {
    for (int o = 16; o > 0; o >>= 1) x += __shfl_xor_sync(0xffffffffu, x, o);
    return x;
}

#endif /* FA_COMMON_CUH */
