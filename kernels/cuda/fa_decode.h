/*
 * fa_decode.h — the parameter block of the split-KV decode kernels (decode.cu), for the host
 * (src/cuda/decode.c) and the kernels. The attention's own block comes first, so the block
 * travels through fa_cuda_launch (which passes its argument by address and the kernel's
 * declared parameter type decides how many bytes are copied).
 */
#ifndef FA_DECODE_H
#define FA_DECODE_H

#include "fa_params.h"

typedef struct fa_decode_params {
    fa_attn_params attn;
    float *o_part;   /* splits > 1: (splits, b, h, s_q, d_v) f32 partial outputs */
    float *lse_part; /* splits > 1: (splits, b, h, s_q) their natural-log lse (-inf: no keys) */
    fa_i32 num_splits;
    fa_i32 m_blocks; /* 16-row tiles of the packed (s_q x nheads / nheads_k) rows */
} fa_decode_params;

#endif /* FA_DECODE_H */
