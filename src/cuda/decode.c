/*
 * decode.c — the split-KV decode path of a kv-cache step (decode.cu): when it applies, how many
 * splits, the workspace of their partials, the launches (decode, then combine when split).
 */
#include <math.h>
#include <string.h>

#include "cuda_backend.h"
#include "fa_decode.h"

enum { DECODE_ROWS = 16, DECODE_MAX_ROWS = 64, DECODE_MAX_SPLITS = 128 };

/* Packed rows: the s_q rows of every query head that shares a kv head. */
static int64_t packed_rows(const fa_problem *p) {
    return p->max_seqlen_q * (p->nheads / p->nheads_k);
}

bool fa_cuda_decode_applies(const fa_problem *p) {
    return (p->dtype == FA_DTYPE_F16 || p->dtype == FA_DTYPE_BF16) &&
           packed_rows(p) <= DECODE_MAX_ROWS;
}

static fa_decode_tiles tiles_of(fa_context *ctx, const fa_problem *p) {
    return fa_decode_tiles_for(fa_round_hd(p->d), fa_round_hd(p->d_v),
                               fa_cuda_state_of(ctx)->smem_optin);
}

static int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

/* FA2's num_splits_heuristic: none when the CTAs fill 80% of the slots (SMs x CTAs per SM);
 * else the fewest splits whose wave efficiency (waves / ceil(waves)) is within 85% of the best,
 * skipping counts that leave the rounds per split unchanged. */
static int heuristic_splits(int64_t ctas, int64_t slots, int64_t rounds) {
    if ((double)ctas >= 0.8 * (double)slots) return 1;
    int64_t most = rounds < DECODE_MAX_SPLITS ? rounds : DECODE_MAX_SPLITS;
    double eff[DECODE_MAX_SPLITS + 1] = {0}, best = 0;
    for (int64_t n = 1; n <= most; ++n) {
        if (n > 1 && ceil_div(rounds, n) == ceil_div(rounds, n - 1)) continue;
        double waves = (double)(ctas * n) / (double)slots;
        eff[n] = waves / ceil(waves);
        if (eff[n] > best) best = eff[n];
    }
    for (int64_t n = 1; n <= most; ++n)
        if (eff[n] >= 0.85 * best) return (int)n;
    return 1;
}

static int num_splits(fa_context *ctx, const fa_problem *p) {
    if (p->opts.num_splits > 0) return p->opts.num_splits;
    const fa_cuda_state *state = fa_cuda_state_of(ctx);
    const fa_decode_tiles t = tiles_of(ctx, p);
    /* CTAs per SM by shared memory (the SM has 1 KB more than a block may take, 1 KB of it
     * reserved per CTA) and by threads */
    int64_t per_sm = (state->smem_optin + 1024) /
                     ((int64_t)fa_decode_smem(fa_round_hd(p->d), fa_round_hd(p->d_v), t) + 1024);
    if (per_sm > 2048 / (32 * t.nwarps)) per_sm = 2048 / (32 * t.nwarps);
    if (per_sm < 1) per_sm = 1;
    const int64_t ctas = ceil_div(packed_rows(p), DECODE_ROWS) * p->nheads_k * p->batch;
    const int64_t rounds = ceil_div(p->max_seqlen_k, (int64_t)t.kc * t.nwarps);
    return heuristic_splits(ctas, per_sm * state->sm_count, rounds > 0 ? rounds : 1);
}

/* (splits, b, h, s_q) rows of d_v partial outputs, then the same rows of lse. */
static size_t partial_rows(const fa_problem *p, int splits) {
    return (size_t)splits * (size_t)(p->batch * p->nheads * p->max_seqlen_q);
}

size_t fa_cuda_decode_workspace(fa_context *ctx, const fa_problem *p) {
    const int splits = num_splits(ctx, p);
    return splits > 1 ? partial_rows(p, splits) * (size_t)(p->d_v + 1) * sizeof(float) : 0;
}

fa_status fa_cuda_decode(fa_context *ctx, const fa_problem *p, const fa_attn_params *params,
                         void *ws) {
    fa_decode_params dp;
    memset(&dp, 0, sizeof dp);
    dp.attn = *params;
    dp.num_splits = num_splits(ctx, p);
    dp.m_blocks = (fa_i32)ceil_div(packed_rows(p), DECODE_ROWS);
    if (dp.num_splits > 1) {
        dp.o_part = ws;
        dp.lse_part = dp.o_part + partial_rows(p, dp.num_splits) * (size_t)p->d_v;
    }
    const int hd = fa_round_hd(p->d), hdv = fa_round_hd(p->d_v);
    const fa_decode_tiles t = tiles_of(ctx, p);
    fa_launch l;
    memset(&l, 0, sizeof l);
    l.program = "decode.cu";
    fa_decode_defines(l.defines, sizeof l.defines, p->dtype, hd, hdv, t);
    l.kernel = "fa_decode";
    l.grid[0] = (unsigned)(dp.m_blocks * dp.num_splits);
    l.grid[1] = (unsigned)p->nheads_k;
    l.grid[2] = (unsigned)p->batch;
    l.block = 32u * (unsigned)t.nwarps;
    l.smem = fa_decode_smem(hd, hdv, t);
    /* fa_cuda_launch passes the block by address; the kernel takes the whole fa_decode_params */
    fa_status status = fa_cuda_launch(ctx, &l, &dp.attn);
    if (status != FA_OK || dp.num_splits == 1) return status;
    l.kernel = "fa_decode_combine";
    l.grid[0] = (unsigned)ceil_div(p->batch * p->nheads * p->max_seqlen_q, 4);
    l.grid[1] = l.grid[2] = 1;
    l.block = 128;
    l.smem = 0;
    return fa_cuda_launch(ctx, &l, &dp.attn);
}
