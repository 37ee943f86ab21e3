/*
 * bwd.c — the backward: three SIMT kernels (bwd_simt.cu), softmax_d first, then dK/dV with
 * one writer per key and dQ with one writer per row. No atomics and no workspace, so every
 * call is bit-reproducible and opts->deterministic costs nothing. A tensor-core backward
 * (FA2 §2: dq accumulated in f32 with atomics, a slice per split in deterministic mode) is the
 * next step; this one is the reference-grade path.
 */
#include <string.h>

#include "cuda_backend.h"

fa_status fa_cuda_bwd_workspace(fa_context *ctx, const fa_problem *p, const fa_bwd_args *a,
                                size_t *bytes) {
    (void)ctx, (void)p, (void)a;
    *bytes = 0;
    return FA_OK;
}

static fa_attn_params bwd_params(const fa_problem *p, const fa_bwd_args *a) {
    fa_attn_params params;
    memset(&params, 0, sizeof params);
    fa_cuda_fill_common(p, &params);
    params.q = a->q.data, params.k = a->k.data, params.v = a->v.data;
    params.o = a->out.data;
    params.dout = a->dout.data;
    params.dq = a->dq.data, params.dk = a->dk.data, params.dv = a->dv.data;
    const bool vl = p->varlen;
    fa_cuda_rows(&a->q, vl, &params.q_batch_stride, &params.q_row_stride, &params.q_head_stride);
    fa_cuda_rows(&a->k, vl, &params.k_batch_stride, &params.k_row_stride, &params.k_head_stride);
    fa_cuda_rows(&a->v, vl, &params.v_batch_stride, &params.v_row_stride, &params.v_head_stride);
    fa_cuda_rows(&a->out, vl, &params.o_batch_stride, &params.o_row_stride, &params.o_head_stride);
    fa_cuda_rows(&a->dout, vl, &params.do_batch_stride, &params.do_row_stride,
                 &params.do_head_stride);
    fa_cuda_rows(&a->dq, vl, &params.dq_batch_stride, &params.dq_row_stride,
                 &params.dq_head_stride);
    fa_cuda_rows(&a->dk, vl, &params.dk_batch_stride, &params.dk_row_stride,
                 &params.dk_head_stride);
    fa_cuda_rows(&a->dv, vl, &params.dv_batch_stride, &params.dv_row_stride,
                 &params.dv_head_stride);
    params.lse = a->softmax_lse.data;
    params.lse_batch_stride = vl ? 0 : a->softmax_lse.stride[0];
    params.lse_head_stride = vl ? a->softmax_lse.stride[0] : a->softmax_lse.stride[1];
    params.softmax_d = a->softmax_d.data;
    params.sd_batch_stride = vl ? 0 : a->softmax_d.stride[0];
    params.sd_head_stride = vl ? a->softmax_d.stride[0] : a->softmax_d.stride[1];
    if (vl) {
        params.cu_seqlens_q = a->cu_seqlens_q.data;
        params.cu_seqlens_k = a->cu_seqlens_k.data;
    }
    if (a->alibi_slopes.data) {
        params.alibi = a->alibi_slopes.data;
        params.alibi_batch_stride = a->alibi_slopes.ndim == 2 ? a->alibi_slopes.stride[0] : 0;
    }
    return params;
}

static unsigned ceil_div(int64_t a, int64_t b) { return (unsigned)((a + b - 1) / b); }

fa_status fa_cuda_bwd(fa_context *ctx, const fa_problem *p, const fa_bwd_args *a, void *ws,
                      size_t ws_bytes) {
    (void)ws, (void)ws_bytes;
    const fa_attn_params params = bwd_params(p, a);
    fa_launch l;
    memset(&l, 0, sizeof l);
    l.program = "bwd_simt.cu";
    fa_simt_defines(l.defines, sizeof l.defines, p->dtype, p->d > p->d_v ? p->d : p->d_v);
    l.block = 128;
    l.grid[2] = (unsigned)p->batch;
    fa_cuda_scope scope;
    FA_FORWARD_IF(fa_cuda_enter(ctx, &scope));
    /* softmax_d = rowsum(dout * out) */
    l.kernel = "fa_bwd_dot_do_o";
    l.grid[0] = ceil_div(p->max_seqlen_q, 4);
    l.grid[1] = (unsigned)p->nheads;
    fa_status status = fa_cuda_launch(ctx, &l, &params);
    /* dK, dV: one warp per key */
    if (status == FA_OK) {
        l.kernel = "fa_bwd_dkdv";
        l.grid[0] = ceil_div(p->max_seqlen_k, 4);
        l.grid[1] = (unsigned)p->nheads_k;
        status = fa_cuda_launch(ctx, &l, &params);
    }
    /* dQ: one warp per query row */
    if (status == FA_OK) {
        l.kernel = "fa_bwd_dq";
        l.grid[0] = ceil_div(p->max_seqlen_q, 4);
        l.grid[1] = (unsigned)p->nheads;
        status = fa_cuda_launch(ctx, &l, &params);
    }
    fa_cuda_leave(&scope);
    return status;
}
