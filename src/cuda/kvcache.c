/*
 * kvcache.c — a kv-cache step: append k_new/v_new in place (rotating k), rotate q into the
 * workspace, then the attention over each sequence's keys [cache_leftpad[b], cache_seqlens[b] +
 * s_new) of the (possibly paged) cache: the split-KV decode kernel (decode.c) when the packed
 * query rows are few (f16/bf16), else the forward kernel, which does not split the keys
 * (opts->num_splits changes nothing there but speed).
 */
#include <stdio.h>
#include <string.h>

#include "cuda_backend.h"

/* Bytes of the rotated copy of q, rounded to 256 (0 without rotary). */
static size_t rotated_q_bytes(const fa_problem *p) {
    if (p->rotary_dim == 0) return 0;
    size_t bytes = (size_t)(p->batch * p->max_seqlen_q * p->nheads * p->d) * fa_dtype_size(p->dtype);
    return (bytes + 255) / 256 * 256;
}

fa_status fa_cuda_kvcache_workspace(fa_context *ctx, const fa_problem *p,
                                    const fa_kvcache_args *a, size_t *bytes) {
    (void)a;
    *bytes = rotated_q_bytes(p) + (fa_cuda_decode_applies(p) ? fa_cuda_decode_workspace(ctx, p) : 0);
    return FA_OK;
}

static void rows4(const fa_tensor *t, fa_i64 *batch, fa_i64 *row, fa_i64 *head) {
    fa_cuda_rows(t, false, batch, row, head);
}

static fa_attn_params kvcache_params(const fa_problem *p, const fa_kvcache_args *a) {
    fa_attn_params params;
    memset(&params, 0, sizeof params);
    fa_cuda_fill_common(p, &params);
    params.q = a->q.data, params.k = a->k_cache.data, params.v = a->v_cache.data;
    params.o = a->out.data;
    rows4(&a->q, &params.q_batch_stride, &params.q_row_stride, &params.q_head_stride);
    rows4(&a->k_cache, &params.k_batch_stride, &params.k_row_stride, &params.k_head_stride);
    rows4(&a->v_cache, &params.v_batch_stride, &params.v_row_stride, &params.v_head_stride);
    rows4(&a->out, &params.o_batch_stride, &params.o_row_stride, &params.o_head_stride);
    params.lse = a->softmax_lse.data;
    params.lse_batch_stride = a->softmax_lse.stride[0];
    params.lse_head_stride = a->softmax_lse.stride[1];
    params.seqlens_k = a->cache_seqlens.data;
    params.batch_idx = a->cache_batch_idx.data;
    params.leftpad_k = a->cache_leftpad.data;
    if (p->paged) {
        params.block_table = a->block_table.data;
        params.block_table_batch_stride = a->block_table.stride[0];
        params.page_size = (fa_i32)p->page_size;
    }
    if (a->alibi_slopes.data) {
        params.alibi = a->alibi_slopes.data;
        params.alibi_batch_stride = a->alibi_slopes.ndim == 2 ? a->alibi_slopes.stride[0] : 0;
    }
    if (p->has_new_kv) {
        params.k_new = a->k_new.data, params.v_new = a->v_new.data;
        rows4(&a->k_new, &params.knew_batch_stride, &params.knew_row_stride,
              &params.knew_head_stride);
        rows4(&a->v_new, &params.vnew_batch_stride, &params.vnew_row_stride,
              &params.vnew_head_stride);
        params.seqlen_new = (fa_i32)p->seqlen_new;
    }
    if (p->rotary_dim > 0) {
        params.rotary_cos = a->rotary_cos.data, params.rotary_sin = a->rotary_sin.data;
        params.cos_row_stride = a->rotary_cos.stride[0];
        params.sin_row_stride = a->rotary_sin.stride[0];
        params.rotary_dim = (fa_i32)p->rotary_dim;
        params.rotary_interleaved = p->opts.rotary_interleaved;
    }
    params.vec_io = p->d % 8 == 0 && p->d_v % 8 == 0 && fa_cuda_rows_aligned(&a->k_cache) &&
                    fa_cuda_rows_aligned(&a->v_cache) && fa_cuda_rows_aligned(&a->out) &&
                    fa_cuda_rows_aligned(&a->q);
    return params;
}

fa_status fa_cuda_kvcache(fa_context *ctx, const fa_problem *p, const fa_kvcache_args *a,
                          void *ws, size_t ws_bytes) {
    (void)ws_bytes;
    fa_attn_params params = kvcache_params(p, a);
    fa_launch l;
    memset(&l, 0, sizeof l);
    l.program = "kvcache.cu";
    snprintf(l.defines, sizeof l.defines, "-DFA_DTYPE=%d", p->dtype);
    l.block = 64;
    l.grid[2] = (unsigned)p->batch;
    fa_cuda_scope scope;
    FA_FORWARD_IF(fa_cuda_enter(ctx, &scope));
    fa_status status = FA_OK;
    if (p->has_new_kv) {
        l.kernel = "fa_kv_append";
        l.grid[0] = (unsigned)p->seqlen_new;
        l.grid[1] = (unsigned)p->nheads_k;
        status = fa_cuda_launch(ctx, &l, &params);
    }
    if (status == FA_OK && p->rotary_dim > 0) {
        fa_attn_params rot = params;
        rot.o = ws; /* q rotated, contiguous (b, s_q, h, d) */
        l.kernel = "fa_rotary_q";
        l.grid[0] = (unsigned)p->max_seqlen_q;
        l.grid[1] = (unsigned)p->nheads;
        status = fa_cuda_launch(ctx, &l, &rot);
        params.q = ws;
        params.vec_io = params.vec_io && (uintptr_t)ws % 16 == 0;
        params.q_head_stride = p->d;
        params.q_row_stride = p->nheads * p->d;
        params.q_batch_stride = p->max_seqlen_q * p->nheads * p->d;
    }
    if (status == FA_OK && fa_cuda_decode_applies(p)) /* split partials after q's copy */
        status = fa_cuda_decode(ctx, p, &params, ws ? (char *)ws + rotated_q_bytes(p) : NULL);
    else if (status == FA_OK)
        status = fa_cuda_attention(ctx, p, &params);
    fa_cuda_leave(&scope);
    return status;
}
