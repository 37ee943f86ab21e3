/*
 * fa_params.h — the kernel parameter blocks, one definition for the host (C11) and the
 * kernels (CUDA C through NVRTC). Passed by value as the single kernel argument, so the
 * layout must match on both sides: only 8- and 4-byte members, 8-byte ones first.
 *
 * Strides are in elements. A "row" is one token of one sequence. Varlen tensors have
 * batch stride 0 and add cu_seqlens[b] rows; lse/softmax_d likewise use lse_batch_stride 0
 * and add cu_seqlens_q[b] to the row.
 */
#ifndef FA_PARAMS_H
#define FA_PARAMS_H

#ifdef __CUDACC_RTC__
typedef long long fa_i64;
typedef int fa_i32;
typedef unsigned long long fa_p64;
#else
#include <stdint.h>
typedef int64_t fa_i64;
typedef int32_t fa_i32;
typedef uint64_t fa_p64;
#endif

/* Where sequence b's rows live and how long it is; shared by forward, backward and kvcache. */
typedef struct fa_attn_params {
    /* tensors (device pointers) */
    const void *q, *k, *v;
    void *o;
    float *lse;             /* fwd: out; bwd: in */
    void *probs;            /* fwd: optional attn_probs */
    const fa_i32 *cu_seqlens_q, *cu_seqlens_k; /* varlen, else NULL */
    const fa_i32 *seqused_k, *leftpad_k;       /* optional */
    const fa_i32 *block_table;                 /* paged, else NULL */
    const fa_i32 *batch_idx;                   /* kvcache: cache row of sequence b, else NULL */
    const fa_i32 *seqlens_k;                   /* kvcache: cache_seqlens (+ seqlen_new) */
    const float *alibi;                        /* optional slopes */
    /* backward */
    const void *dout;
    void *dq, *dk, *dv;
    float *softmax_d;       /* bwd: rowsum(dout * out), layout of lse */
    float *dq_accum;        /* bwd: f32 (nsplits, total_q rows, h, d) workspace */
    float *dk_accum, *dv_accum; /* bwd: f32 (total_k rows, h_k, d|d_v) workspace */
    /* kvcache */
    const void *k_new, *v_new;
    const void *rotary_cos, *rotary_sin;       /* (s_ro, rotary_dim / 2) */

    fa_i64 q_batch_stride, q_row_stride, q_head_stride;
    fa_i64 k_batch_stride, k_row_stride, k_head_stride; /* paged: batch stride = page stride */
    fa_i64 v_batch_stride, v_row_stride, v_head_stride;
    fa_i64 o_batch_stride, o_row_stride, o_head_stride;
    fa_i64 do_batch_stride, do_row_stride, do_head_stride;
    fa_i64 dq_batch_stride, dq_row_stride, dq_head_stride;
    fa_i64 dk_batch_stride, dk_row_stride, dk_head_stride;
    fa_i64 dv_batch_stride, dv_row_stride, dv_head_stride;
    fa_i64 lse_batch_stride, lse_head_stride;
    fa_i64 knew_batch_stride, knew_row_stride, knew_head_stride;
    fa_i64 vnew_batch_stride, vnew_row_stride, vnew_head_stride;
    fa_i64 cos_row_stride, sin_row_stride;
    fa_i64 sd_batch_stride, sd_head_stride; /* softmax_d, laid out like lse */
    fa_i64 probs_batch_stride, probs_head_stride, probs_row_stride;
    fa_i64 block_table_batch_stride;
    fa_i64 alibi_batch_stride;  /* 0 for per-head slopes */
    fa_i64 dq_accum_split_stride; /* elements between deterministic dq slices */
    fa_i64 total_q;             /* rows of q (batched: b * s_q) */
    fa_p64 rng_seed, rng_offset;

    fa_i32 batch, nheads, nheads_k, d, d_v;
    fa_i32 seqlen_q, seqlen_k; /* batched lengths; varlen: the maxima */
    fa_i32 page_size;
    fa_i32 window_left, window_right; /* -1 = unbounded */
    fa_i32 is_causal;          /* selects the ALiBi form */
    fa_i32 num_splits;         /* bwd deterministic: dq slices */
    float scale;               /* softmax scale */
    float scale_log2;          /* scale * log2(e) */
    float softcap;             /* 0 = off */
    float dropout_p;           /* 0 = off */
    float dropout_scale;       /* 1 / (1 - p) */
    unsigned int dropout_threshold;
    fa_i32 probs_rows, probs_cols; /* attn_probs extent (shape[2], shape[3]) */
    fa_i32 vec_io;             /* rows are 16-byte aligned, d and d_v multiples of 8 */
    fa_i32 seqlen_new;         /* kvcache: keys appended this call (added to seqlens_k[b]) */
    fa_i32 rotary_dim;         /* kvcache: 0 = no rotary */
    fa_i32 rotary_interleaved;
} fa_attn_params;

/* Query rows per 128-thread block of the backward's fa_bwd_pre and fa_bwd_dq (fa_bwd.cuh). */
#define FA_BWD_AUX_ROWS 16

#endif /* FA_PARAMS_H */
