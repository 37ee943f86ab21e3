/*
 * bwd.c — the backward. f16/bf16 with head dims <= 128 take the tensor-core kernels (bwd_mma.cu:
 * softmax_d and dq_accum zeroed, dK/dV per key tile with dQ added into the f32 workspace
 * dq_accum, dq converted). Not deterministic: a CTA per key tile, dQ by f32 atomics into one
 * dq_accum. Deterministic (FA2's way): dq_splits CTAs per (kv head, batch) stride over the key
 * tiles, each adding its dQ into its own dq_accum slice with plain stores, and the slices are
 * summed in a fixed order: bit-reproducible. On sm_90a, plain non-deterministic calls at head
 * dims 64 and 128 take bwd_wgmma.cu instead of bwd_mma.cu (same workspace, same pre/dq
 * kernels). f32 and head dims over 128 take the SIMT kernels
 * (bwd_simt.cu): softmax_d, then dK/dV with one writer per key and dQ with one writer per row;
 * no atomics, no workspace, bit-reproducible in both modes.
 */
#include <stdlib.h>
#include <string.h>

#include "cuda_backend.h"

/* Whether the tensor-core kernels run this call (else the SIMT ones). */
static bool use_mma(const fa_problem *p) {
    return (p->dtype == FA_DTYPE_F16 || p->dtype == FA_DTYPE_BF16) && p->d <= 128 &&
           p->d_v <= 128;
}

static int64_t total_q_rows(const fa_problem *p, const fa_bwd_args *a) {
    return p->varlen ? a->q.shape[0] : a->q.shape[0] * a->q.shape[1];
}

static fa_bwd_tiles tiles_of(fa_context *ctx, const fa_problem *p) {
    return fa_bwd_mma_tiles(fa_round_hd(p->d), fa_round_hd(p->d_v),
                            fa_cuda_state_of(ctx)->smem_optin);
}

/* Deterministic calls: CTAs per (kv head, batch), each with its own dq_accum slice; 0 when not
 * deterministic (a CTA per key tile, one shared slice). opts.num_splits forces it; else as many
 * as run at once: SMs x CTAs per SM over b * h_k (CTAs per SM by shared memory, threads and 255
 * registers a thread: ptxas gives the 8-warp tiles 208..255, so one CTA per SM). FA2 rounds
 * that quotient up, which with one CTA per SM starts a short second wave: b h_k = 64 on 132
 * SMs runs 3 splits as 192 CTAs of s_k / 3 keys in two waves, against 2 splits as 128 CTAs of
 * s_k / 2 in one. At most one split per key tile. */
static int dq_splits(fa_context *ctx, const fa_problem *p, fa_bwd_tiles t) {
    if (!p->opts.deterministic) return 0;
    const fa_cuda_state *state = fa_cuda_state_of(ctx);
    const int64_t threads = 32 * t.nwarps;
    int64_t per_sm = (state->smem_optin + 1024) /
                     ((int64_t)fa_bwd_mma_smem(fa_round_hd(p->d), fa_round_hd(p->d_v), t) + 1024);
    if (per_sm > 2048 / threads) per_sm = 2048 / threads;
    if (per_sm > 65536 / (256 * threads)) per_sm = 65536 / (256 * threads);
    const int64_t pairs = p->batch * p->nheads_k > 0 ? p->batch * p->nheads_k : 1;
    int64_t n = p->opts.num_splits > 0 ? p->opts.num_splits : state->sm_count * per_sm / pairs;
    const int64_t tiles = (p->max_seqlen_k + 16 * t.nwarps - 1) / (16 * t.nwarps);
    if (n > tiles) n = tiles;
    return n < 1 ? 1 : (int)n;
}

/* dq_accum: f32 (slices, total_q, h, round32(d)) for the tensor-core path, nothing for SIMT. */
fa_status fa_cuda_bwd_workspace(fa_context *ctx, const fa_problem *p, const fa_bwd_args *a,
                                size_t *bytes) {
    const int splits = use_mma(p) ? dq_splits(ctx, p, tiles_of(ctx, p)) : 0;
    *bytes = use_mma(p) ? (size_t)(splits > 0 ? splits : 1) * (size_t)total_q_rows(p, a) *
                              (size_t)p->nheads * (size_t)fa_round_hd(p->d) * sizeof(float)
                        : 0;
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
    params.total_q = total_q_rows(p, a);
    if (a->alibi_slopes.data) {
        params.alibi = a->alibi_slopes.data;
        params.alibi_batch_stride = a->alibi_slopes.ndim == 2 ? a->alibi_slopes.stride[0] : 0;
    }
    return params;
}

static unsigned ceil_div(int64_t a, int64_t b) { return (unsigned)((a + b - 1) / b); }

/* Rows that cp.async can move 16 bytes at a time and outputs written by pairs. */
static bool vector_io(const fa_problem *p, const fa_bwd_args *a) {
    const fa_tensor *t[] = {&a->q, &a->k, &a->v, &a->out, &a->dout, &a->dq, &a->dk, &a->dv};
    bool ok = p->d % 8 == 0 && p->d_v % 8 == 0;
    for (size_t i = 0; i < sizeof t / sizeof t[0]; ++i) ok = ok && fa_cuda_rows_aligned(t[i]);
    return ok;
}

/* The sm_90a wgmma kernel (bwd_wgmma.cu) takes compute capability 9.0 with d = d_v rounding to
 * 64 or 128, 16-byte aligned rows, plain scores (no softcap, ALiBi or dropout) and
 * deterministic off. FLASHATTN_CUDA_BWD_WGMMA=0 turns it off (tuning experiments only). */
static bool use_wgmma(const fa_cuda_state *st, const fa_problem *p, const fa_attn_params *params) {
    const int hd = fa_round_hd(p->d);
    const char *env = getenv("FLASHATTN_CUDA_BWD_WGMMA");
    return st->cc == 90 && p->d == p->d_v && (hd == 64 || hd == 128) && params->vec_io &&
           p->softcap == 0.f && !params->alibi && p->dropout_p == 0.f &&
           params->num_splits == 0 && (int)fa_bwd_wgmma_smem(hd) <= st->smem_optin &&
           !(env && strcmp(env, "0") == 0);
}

/* softmax_d and zeroed dq_accum, dK/dV (+ dq_accum) by bwd_wgmma.cu or bwd_mma.cu, dq.
 * Context current; params->num_splits set (dq_splits). */
static fa_status bwd_mma(fa_context *ctx, const fa_problem *p, const fa_attn_params *params,
                         fa_bwd_tiles t) {
    const int hd = fa_round_hd(p->d), hdv = fa_round_hd(p->d_v);
    const bool wgmma = use_wgmma(fa_cuda_state_of(ctx), p, params);
    fa_launch l;
    memset(&l, 0, sizeof l);
    l.program = wgmma ? "bwd_wgmma.cu" : "bwd_mma.cu";
    if (wgmma)
        fa_bwd_wgmma_defines(l.defines, sizeof l.defines, p->dtype, hd);
    else
        fa_bwd_mma_defines(l.defines, sizeof l.defines, p->dtype, hd, hdv, p->dropout_p > 0.f, t);
    l.grid[1] = (unsigned)p->nheads;
    l.grid[2] = (unsigned)p->batch;
    l.kernel = "fa_bwd_pre"; /* fa_bwd.cuh: FA_BWD_AUX_ROWS rows per block of 128 threads */
    l.block = 128u;
    l.grid[0] = ceil_div(p->max_seqlen_q, FA_BWD_AUX_ROWS);
    fa_status status = fa_cuda_launch(ctx, &l, params);
    if (status == FA_OK) {
        fa_launch m = l;
        m.kernel = wgmma ? "fa_bwd_wgmma" : "fa_bwd_mma";
        m.block = wgmma ? 256u : 32u * (unsigned)t.nwarps;
        m.grid[0] = params->num_splits > 0 ? (unsigned)params->num_splits
                                           : ceil_div(p->max_seqlen_k, 16 * t.nwarps);
        m.grid[1] = (unsigned)p->nheads_k;
        m.smem = wgmma ? fa_bwd_wgmma_smem(hd) : fa_bwd_mma_smem(hd, hdv, t);
        if (wgmma) m.grid[0] = ceil_div(p->max_seqlen_k, 128);
        status = fa_cuda_launch(ctx, &m, params);
    }
    if (status == FA_OK) {
        l.kernel = "fa_bwd_dq"; /* the grid of fa_bwd_pre */
        status = fa_cuda_launch(ctx, &l, params);
    }
    return status;
}

fa_status fa_cuda_bwd(fa_context *ctx, const fa_problem *p, const fa_bwd_args *a, void *ws,
                      size_t ws_bytes) {
    (void)ws_bytes; /* checked against fa_cuda_bwd_workspace by the caller */
    fa_attn_params params = bwd_params(p, a);
    if (use_mma(p)) {
        FA_RETURN_IF((uintptr_t)ws % 16 != 0, FA_ERR_INVALID_ARGUMENT,
                     "workspace must be 16-byte aligned for the cuda backward (got %p)", ws);
        const fa_bwd_tiles t = tiles_of(ctx, p);
        params.dq_accum = (float *)ws;
        params.num_splits = dq_splits(ctx, p, t);
        params.dq_accum_split_stride = params.total_q * p->nheads * fa_round_hd(p->d);
        params.vec_io = vector_io(p, a);
        fa_cuda_scope scope;
        FA_FORWARD_IF(fa_cuda_enter(ctx, &scope));
        const fa_status status = bwd_mma(ctx, p, &params, t);
        fa_cuda_leave(&scope);
        return status;
    }
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
