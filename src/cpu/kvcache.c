/*
 * kvcache.c — fa_cpu_kvcache (flash_attn_with_kvcache): appends k_new/v_new in place (k after
 * rotary) into the cache rows, then runs the engine over keys [leftpad, seqlen + s_new) with
 * q rotated as upstream does. Split-KV comes from the engine (opts.num_splits).
 */
#include "cpu/fwd_engine.h"

#include <string.h>

static int32_t at(const fa_tensor *t, int64_t i) {
    return ((const int32_t *)t->data)[i * t->stride[0]];
}

fa_status fa_cpu_kvcache_workspace(fa_context *ctx, const fa_problem *p, const fa_kvcache_args *a,
                                   size_t *bytes) {
    (void)a;
    fa_cpu_state *state = fa_cpu_state_of(ctx);
    *bytes = fa_engine_workspace(p, state->isa, fa_pool_size(state->pool), p->batch * p->max_seqlen_q);
    return FA_OK;
}

typedef struct fa_append {
    const fa_problem *p;
    const fa_kvcache_args *a;
} fa_append;

/* Element offset of cache position pos of sequence b (head 0) in a (b_cache, s, h_k, d) or
 * paged (n, page, h_k, d) cache. */
static int64_t cache_offset(const fa_problem *p, const fa_kvcache_args *a, const fa_tensor *cache,
                            int64_t b, int64_t pos) {
    if (p->paged) {
        const int32_t *pages = (const int32_t *)a->block_table.data + b * a->block_table.stride[0];
        return (int64_t)pages[pos / p->page_size] * cache->stride[0] +
               (pos % p->page_size) * cache->stride[1];
    }
    int64_t row = p->has_batch_idx ? at(&a->cache_batch_idx, b) : b;
    return row * cache->stride[0] + pos * cache->stride[1];
}

/* Task (b, t): new token t of sequence b, every kv head, into cache position seqlen[b] + t. */
static void append_task(void *arg, int64_t task, int thread) {
    const fa_append *ap = arg;
    const fa_problem *p = ap->p;
    const fa_kvcache_args *a = ap->a;
    (void)thread;
    int64_t b = task / p->seqlen_new, t = task % p->seqlen_new;
    int64_t pos = at(&a->cache_seqlens, b) + t;
    size_t es = fa_dtype_size(p->dtype);
    int64_t k_dst = cache_offset(p, a, &a->k_cache, b, pos);
    int64_t v_dst = cache_offset(p, a, &a->v_cache, b, pos);
    for (int64_t hk = 0; hk < p->nheads_k; ++hk) {
        const char *k_src = (const char *)a->k_new.data +
                            (b * a->k_new.stride[0] + t * a->k_new.stride[1] + hk * a->k_new.stride[2]) * (int64_t)es;
        const char *v_src = (const char *)a->v_new.data +
                            (b * a->v_new.stride[0] + t * a->v_new.stride[1] + hk * a->v_new.stride[2]) * (int64_t)es;
        char *k_out = (char *)a->k_cache.data + (k_dst + hk * a->k_cache.stride[2]) * (int64_t)es;
        char *v_out = (char *)a->v_cache.data + (v_dst + hk * a->v_cache.stride[2]) * (int64_t)es;
        if (p->rotary_dim > 0) {
            float row[256];
            fa_load_row_f32(p->dtype, k_src, row, p->d);
            fa_rotate_row(p, a->rotary_cos.data, a->rotary_cos.stride[0], a->rotary_sin.data,
                          a->rotary_sin.stride[0], row, pos);
            fa_store_row_f32(p->dtype, row, k_out, p->d);
        } else {
            memmove(k_out, k_src, (size_t)p->d * es);
        }
        memmove(v_out, v_src, (size_t)p->d_v * es);
    }
}

/* Sequence b: keys [leftpad, seqlen + s_new) of its cache row (or pages). */
static fa_seq cache_seq(const fa_problem *p, const fa_kvcache_args *a, int64_t b) {
    int64_t seqlen = p->has_cache_seqlens ? at(&a->cache_seqlens, b) : p->max_seqlen_k;
    int64_t pad = p->has_cache_leftpad ? at(&a->cache_leftpad, b) : 0;
    fa_seq sq = {.q_off = b * a->q.stride[0], .o_off = b * a->out.stride[0],
                 .lse_off = b * a->softmax_lse.stride[0], .s_q = p->max_seqlen_q,
                 .s_k = seqlen + p->seqlen_new - pad, .rotary_pos = seqlen};
    if (p->paged)
        sq.pages = (const int32_t *)a->block_table.data + b * a->block_table.stride[0];
    else {
        sq.k_off = cache_offset(p, a, &a->k_cache, b, pad);
        sq.v_off = cache_offset(p, a, &a->v_cache, b, pad);
    }
    return sq;
}

fa_status fa_cpu_kvcache(fa_context *ctx, const fa_problem *p, const fa_kvcache_args *a, void *ws,
                         size_t ws_bytes) {
    fa_cpu_state *state = fa_cpu_state_of(ctx);
    if (p->has_new_kv && p->seqlen_new > 0) {
        fa_append ap = {p, a};
        fa_pool_run(state->pool, p->batch * p->seqlen_new, append_task, &ap);
    }
    fa_attn_plan pl = {.p = p, .isa = state->isa, .num_threads = fa_pool_size(state->pool),
                       .q = a->q.data, .out = a->out.data, .lse = a->softmax_lse.data,
                       .k = a->k_cache.data, .v = a->v_cache.data,
                       .q_row = a->q.stride[1], .q_head = a->q.stride[2],
                       .o_row = a->out.stride[1], .o_head = a->out.stride[2],
                       .lse_row = a->softmax_lse.stride[2], .lse_head = a->softmax_lse.stride[1],
                       .k_row = a->k_cache.stride[1], .k_head = a->k_cache.stride[2],
                       .k_page = a->k_cache.stride[0], .v_row = a->v_cache.stride[1],
                       .v_head = a->v_cache.stride[2], .v_page = a->v_cache.stride[0]};
    fa_seq *seqs = fa_engine_seqs(ws);
    for (int64_t b = 0; b < p->batch; ++b) seqs[b] = cache_seq(p, a, b);
    pl.seqs = seqs;
    if (p->alibi != FA_ALIBI_NONE) {
        pl.alibi = a->alibi_slopes.data;
        pl.alibi_batch = p->alibi == FA_ALIBI_PER_BATCH ? a->alibi_slopes.stride[0] : 0;
    }
    if (p->rotary_dim > 0) {
        pl.rot_cos = a->rotary_cos.data;
        pl.rot_sin = a->rotary_sin.data;
        pl.rot_cos_row = a->rotary_cos.stride[0];
        pl.rot_sin_row = a->rotary_sin.stride[0];
        pl.rot_q_per_row = p->is_causal || p->is_local; /* else every q row at cache_seqlens */
    }
    return fa_engine_run(state->pool, &pl, p->batch * p->max_seqlen_q, ws, ws_bytes);
}
