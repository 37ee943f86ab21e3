/*
 * fwd.c — the forward: fills the parameter block from the validated problem and picks the
 * tensor-core kernel (f16/bf16, any layout) or the SIMT kernel (f32). attn_probs come from a
 * second kernel that reads the final lse.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cuda_backend.h"
#include "fa_philox.h"

void fa_cuda_rows(const fa_tensor *t, bool varlen, fa_i64 *batch, fa_i64 *row, fa_i64 *head) {
    if (varlen) { /* (total, h, d) */
        *batch = 0;
        *row = t->stride[0];
        *head = t->stride[1];
    } else { /* (b, s, h, d) */
        *batch = t->stride[0];
        *row = t->stride[1];
        *head = t->stride[2];
    }
}

void fa_cuda_fill_common(const fa_problem *p, fa_attn_params *params) {
    params->batch = (fa_i32)p->batch;
    params->nheads = (fa_i32)p->nheads;
    params->nheads_k = (fa_i32)p->nheads_k;
    params->d = (fa_i32)p->d;
    params->d_v = (fa_i32)p->d_v;
    params->seqlen_q = (fa_i32)p->max_seqlen_q;
    params->seqlen_k = (fa_i32)p->max_seqlen_k;
    params->window_left = p->window_left;
    params->window_right = p->window_right;
    params->is_causal = p->is_causal;
    params->scale = p->scale;
    params->scale_log2 = p->scale * 1.4426950408889634f;
    params->softcap = p->softcap;
    params->dropout_p = p->dropout_p;
    if (p->dropout_p > 0.f) {
        params->dropout_scale = 1.f / (1.f - p->dropout_p);
        params->dropout_threshold = fa_dropout_threshold(p->dropout_p);
        params->rng_seed = p->opts.rng_seed;
        params->rng_offset = p->opts.rng_offset;
    }
}

static void fill_alibi(const fa_tensor *alibi, fa_attn_params *params) {
    if (!alibi->data) return;
    params->alibi = alibi->data;
    params->alibi_batch_stride = alibi->ndim == 2 ? alibi->stride[0] : 0;
}

/* lse-like (b, h, s_q) or varlen (h, total_q). */
static void fill_lse(const fa_tensor *lse, bool varlen, fa_attn_params *params) {
    params->lse = lse->data;
    params->lse_batch_stride = varlen ? 0 : lse->stride[0];
    params->lse_head_stride = varlen ? lse->stride[0] : lse->stride[1];
}

/* Rows of 16-bit elements that cp.async can move 16 bytes at a time. */
bool fa_cuda_rows_aligned(const fa_tensor *t) {
    if ((uintptr_t)t->data % 16 != 0) return false;
    for (int i = 0; i < t->ndim - 1; ++i)
        if (t->stride[i] % 8 != 0) return false;
    return true;
}

/* Whether tiles can move 16 bytes at a time (cp.async) rather than element by element. */
static bool vector_io(const fa_problem *p, const fa_fwd_args *a) {
    return p->d % 8 == 0 && p->d_v % 8 == 0 && fa_cuda_rows_aligned(&a->q) && fa_cuda_rows_aligned(&a->k) &&
           fa_cuda_rows_aligned(&a->v) && fa_cuda_rows_aligned(&a->out);
}

static fa_attn_params fwd_params(const fa_problem *p, const fa_fwd_args *a) {
    fa_attn_params params;
    memset(&params, 0, sizeof params);
    fa_cuda_fill_common(p, &params);
    params.q = a->q.data;
    params.k = a->k.data;
    params.v = a->v.data;
    params.o = a->out.data;
    fa_cuda_rows(&a->q, p->varlen, &params.q_batch_stride, &params.q_row_stride,
                 &params.q_head_stride);
    fa_cuda_rows(&a->out, p->varlen, &params.o_batch_stride, &params.o_row_stride,
                 &params.o_head_stride);
    /* Paged k/v are (num_blocks, page_size, h_k, d): the batch stride is the page stride. */
    const bool k_rows = p->varlen && !p->paged;
    fa_cuda_rows(&a->k, k_rows, &params.k_batch_stride, &params.k_row_stride,
                 &params.k_head_stride);
    fa_cuda_rows(&a->v, k_rows, &params.v_batch_stride, &params.v_row_stride,
                 &params.v_head_stride);
    fill_lse(&a->softmax_lse, p->varlen, &params);
    if (p->varlen) {
        params.cu_seqlens_q = a->cu_seqlens_q.data;
        params.cu_seqlens_k = a->cu_seqlens_k.data;
        params.seqused_k = a->seqused_k.data;
        params.leftpad_k = a->leftpad_k.data;
    }
    if (p->paged) {
        params.block_table = a->block_table.data;
        params.block_table_batch_stride = a->block_table.stride[0];
        params.page_size = (fa_i32)p->page_size;
    }
    fill_alibi(&a->alibi_slopes, &params);
    if (p->return_probs) {
        params.probs = a->attn_probs.data;
        params.probs_batch_stride = a->attn_probs.stride[0];
        params.probs_head_stride = a->attn_probs.stride[1];
        params.probs_row_stride = a->attn_probs.stride[2];
        params.probs_rows = (fa_i32)a->attn_probs.shape[2];
        params.probs_cols = (fa_i32)a->attn_probs.shape[3];
    }
    params.total_q = p->varlen ? a->q.shape[0] : a->q.shape[0] * a->q.shape[1];
    params.vec_io = vector_io(p, a);
    return params;
}

fa_status fa_cuda_fwd_workspace(fa_context *ctx, const fa_problem *p, const fa_fwd_args *a,
                                size_t *bytes) {
    (void)ctx, (void)p, (void)a;
    *bytes = 0;
    return FA_OK;
}

static unsigned ceil_div(int64_t a, int64_t b) { return (unsigned)((a + b - 1) / b); }

/* The sm_90a wgmma forward (fwd_wgmma.cu) takes f16/bf16 on compute capability 9.0 with d = d_v
 * rounding to 64 or 128, dense 16-byte aligned rows and no dropout; tiles from
 * fa_fwd_wgmma_tiles. FLASHATTN_CUDA_WGMMA="nwg,bn,stages" overrides them and "0" turns the kernel off
 * (tuning experiments only). */
static bool wgmma_pick(const fa_cuda_state *st, const fa_problem *p, const fa_attn_params *params,
                       fa_wgmma_tiles *t) {
    const int hd = fa_round_hd(p->d);
    if (st->cc != 90 || p->d != p->d_v || (hd != 64 && hd != 128) || p->dropout_p > 0.f ||
        !params->vec_io || params->block_table)
        return false;
    const char *env = getenv("FLASHATTN_CUDA_WGMMA");
    fa_wgmma_tiles o;
    if (env && strcmp(env, "0") == 0) return false;
    if (env && sscanf(env, "%d,%d,%d", &o.nwg, &o.bn, &o.stages) == 3 &&
        (o.nwg == 1 || o.nwg == 2) && (o.bn == 64 || o.bn == 128) &&
        (o.stages == 2 || o.stages == 3))
        *t = o;
    else
        *t = fa_fwd_wgmma_tiles(hd);
    return (int)fa_fwd_wgmma_smem(hd, *t) <= st->smem_optin;
}

/* The attention kernel for params (tensor-core for f16/bf16, SIMT for f32); the caller has made
 * the context current. */
fa_status fa_cuda_attention(fa_context *ctx, const fa_problem *p, const fa_attn_params *params) {
    fa_launch l;
    memset(&l, 0, sizeof l);
    fa_wgmma_tiles w;
    if ((p->dtype == FA_DTYPE_F16 || p->dtype == FA_DTYPE_BF16) &&
        wgmma_pick(fa_cuda_state_of(ctx), p, params, &w)) {
        const int hd = fa_round_hd(p->d);
        l.program = "fwd_wgmma.cu";
        l.kernel = "fa_fwd_wgmma";
        fa_fwd_wgmma_defines(l.defines, sizeof l.defines, p->dtype, hd, w);
        l.grid[0] = ceil_div(p->max_seqlen_q, 64 * w.nwg);
        l.block = 128u * (unsigned)w.nwg;
        l.smem = fa_fwd_wgmma_smem(hd, w);
    } else if (p->dtype == FA_DTYPE_F16 || p->dtype == FA_DTYPE_BF16) {
        const int hd = fa_round_hd(p->d), hdv = fa_round_hd(p->d_v);
        const fa_fwd_tiles t = fa_fwd_mma_tiles(hd, hdv, fa_cuda_state_of(ctx)->smem_optin);
        l.program = "fwd_mma.cu";
        l.kernel = "fa_fwd_mma";
        fa_fwd_mma_defines(l.defines, sizeof l.defines, p->dtype, hd, hdv, p->dropout_p > 0.f, t);
        l.grid[0] = ceil_div(p->max_seqlen_q, 16 * t.mt * t.nwarps);
        l.block = 32u * (unsigned)t.nwarps;
        l.smem = fa_fwd_mma_smem(hd, hdv, t);
    } else {
        l.program = "fwd_simt.cu";
        l.kernel = "fa_fwd_simt";
        fa_simt_defines(l.defines, sizeof l.defines, p->dtype, p->d > p->d_v ? p->d : p->d_v);
        l.grid[0] = ceil_div(p->max_seqlen_q, 16);
        l.block = 128;
    }
    l.grid[1] = (unsigned)p->nheads;
    l.grid[2] = (unsigned)p->batch;
    return fa_cuda_launch(ctx, &l, params);
}

fa_status fa_cuda_fwd(fa_context *ctx, const fa_problem *p, const fa_fwd_args *a, void *ws,
                      size_t ws_bytes) {
    (void)ws, (void)ws_bytes;
    const fa_attn_params params = fwd_params(p, a);
    fa_cuda_scope scope;
    FA_FORWARD_IF(fa_cuda_enter(ctx, &scope));
    fa_status status = fa_cuda_attention(ctx, p, &params);
    if (status == FA_OK && p->return_probs) {
        fa_launch probs;
        memset(&probs, 0, sizeof probs);
        probs.program = "fwd_simt.cu";
        probs.kernel = "fa_fwd_probs";
        fa_simt_defines(probs.defines, sizeof probs.defines, p->dtype, p->d);
        probs.grid[0] = (unsigned)params.probs_rows;
        probs.grid[1] = (unsigned)p->nheads;
        probs.grid[2] = (unsigned)p->batch;
        probs.block = 128;
        status = fa_cuda_launch(ctx, &probs, &params);
    }
    fa_cuda_leave(&scope);
    return status;
}
