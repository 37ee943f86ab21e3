/*
 * fwd.c — fa_cpu_fwd: describes a batched or varlen forward (seqused_k, leftpad_k, paged
 * k/v) as one fa_seq per sequence and hands it to the engine (fwd_engine.c).
 */
#include "cpu/fwd_engine.h"

static int64_t total_q_rows(const fa_problem *p, const fa_fwd_args *a) {
    return p->varlen ? a->q.shape[0] : p->batch * p->max_seqlen_q;
}

fa_status fa_cpu_fwd_workspace(fa_context *ctx, const fa_problem *p, const fa_fwd_args *a,
                               size_t *bytes) {
    fa_cpu_state *state = fa_cpu_state_of(ctx);
    *bytes = fa_engine_workspace(p, state->isa, fa_pool_size(state->pool), total_q_rows(p, a));
    return FA_OK;
}

static int32_t at(const fa_tensor *t, int64_t i) {
    return ((const int32_t *)t->data)[i * t->stride[0]];
}

/* Sequence b: q rows [cu_q[b], cu_q[b+1]); keys from cu_k[b] + leftpad (or page 0 of its
 * block_table row), count (seqused_k or cu_k[b+1] - cu_k[b]) - leftpad. */
static fa_seq varlen_seq(const fa_problem *p, const fa_fwd_args *a, int64_t b) {
    int64_t q0 = at(&a->cu_seqlens_q, b), k0 = at(&a->cu_seqlens_k, b);
    int64_t pad = p->has_leftpad_k ? at(&a->leftpad_k, b) : 0;
    int64_t used = p->has_seqused_k ? at(&a->seqused_k, b) : at(&a->cu_seqlens_k, b + 1) - k0;
    fa_seq sq = {.q_off = q0 * a->q.stride[0], .o_off = q0 * a->out.stride[0],
                 .lse_off = q0 * a->softmax_lse.stride[1],
                 .s_q = at(&a->cu_seqlens_q, b + 1) - q0, .s_k = used - pad};
    if (p->paged) {
        sq.pages = (const int32_t *)a->block_table.data + b * a->block_table.stride[0];
    } else {
        sq.k_off = (k0 + pad) * a->k.stride[0];
        sq.v_off = (k0 + pad) * a->v.stride[0];
    }
    return sq;
}

static fa_seq batched_seq(const fa_problem *p, const fa_fwd_args *a, int64_t b) {
    return (fa_seq){.q_off = b * a->q.stride[0], .o_off = b * a->out.stride[0],
                    .lse_off = b * a->softmax_lse.stride[0], .k_off = b * a->k.stride[0],
                    .v_off = b * a->v.stride[0], .s_q = p->max_seqlen_q, .s_k = p->max_seqlen_k};
}

/* Token/head strides: batched tensors are (b, s, h, d), varlen (total, h, d), paged (n, page, h, d). */
static void set_strides(const fa_problem *p, const fa_fwd_args *a, fa_attn_plan *pl) {
    int kv_tok = p->varlen && !p->paged ? 0 : 1;
    int q_tok = p->varlen ? 0 : 1;
    pl->q_row = a->q.stride[q_tok];
    pl->q_head = a->q.stride[q_tok + 1];
    pl->o_row = a->out.stride[q_tok];
    pl->o_head = a->out.stride[q_tok + 1];
    pl->lse_row = a->softmax_lse.stride[p->varlen ? 1 : 2];
    pl->lse_head = a->softmax_lse.stride[p->varlen ? 0 : 1];
    pl->k_row = a->k.stride[kv_tok];
    pl->k_head = a->k.stride[kv_tok + 1];
    pl->v_row = a->v.stride[kv_tok];
    pl->v_head = a->v.stride[kv_tok + 1];
    pl->k_page = a->k.stride[0];
    pl->v_page = a->v.stride[0];
}

fa_status fa_cpu_fwd(fa_context *ctx, const fa_problem *p, const fa_fwd_args *a, void *ws,
                     size_t ws_bytes) {
    fa_cpu_state *state = fa_cpu_state_of(ctx);
    fa_attn_plan pl = {.p = p, .isa = state->isa, .num_threads = fa_pool_size(state->pool),
                       .q = a->q.data, .out = a->out.data, .lse = a->softmax_lse.data,
                       .k = a->k.data, .v = a->v.data};
    set_strides(p, a, &pl);
    fa_seq *seqs = fa_engine_seqs(ws);
    for (int64_t b = 0; b < p->batch; ++b)
        seqs[b] = p->varlen ? varlen_seq(p, a, b) : batched_seq(p, a, b);
    pl.seqs = seqs;
    if (p->alibi != FA_ALIBI_NONE) {
        pl.alibi = a->alibi_slopes.data;
        pl.alibi_batch = p->alibi == FA_ALIBI_PER_BATCH ? a->alibi_slopes.stride[0] : 0;
    }
    if (p->return_probs) {
        pl.probs = a->attn_probs.data;
        for (int i = 0; i < 4; ++i) pl.probs_stride[i] = a->attn_probs.stride[i];
        pl.probs_rows = a->attn_probs.shape[2];
        pl.probs_cols = a->attn_probs.shape[3];
    }
    return fa_engine_run(state->pool, &pl, total_q_rows(p, a), ws, ws_bytes);
}
