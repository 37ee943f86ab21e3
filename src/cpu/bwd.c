/*
 * bwd.c — the cpu backward: FlashAttention-2's Algorithm 2 (Dao 2023) in three passes over
 * the persistent pool.
 *
 *   1. prep   (parallel over token rows): Δ = rowsum(dO ∘ O) into softmax_d, and head-major
 *             f32 copies of q, dout, k and v, so every tile operand is contiguous and streams.
 *   2. main   (parallel over (kv chunk, sequence, kv head), longest chunks first): a task owns
 *             the dK/dV of its keys, BWD_GROUP kv blocks at a time, looping over the query heads
 *             of the GQA group and the q blocks that can see them. It adds dQ into its chunk's own
 *             f32 partial, so no two tasks ever write the same float.
 *   3. reduce (parallel over token rows): dQ = scale · Σ_chunks partial, in chunk order.
 * Every float is produced by one task in a fixed order and the split into tasks does not depend
 * on the thread count, so results are bit-identical across runs and thread counts:
 * deterministic mode costs nothing.
 *
 * One tile (q rows i of head h, keys j of its kv head), all in f32:
 *   S  = Q Kᵀ; s = scale·S → softcap → + ALiBi; P = exp(s − lse), 0 where masked
 *   dP = dO Vᵀ; with dropout Z = keep / (1 − p) from the forward's Philox stream
 *   dV += (P∘Z)ᵀ dO;  dS = P ∘ (dP∘Z − Δ) [∘ (1 − tanh²) with softcap]
 *   dK += dSᵀ Q;      dQ += dS K          (scale applied once, when dK and dQ are stored)
 * Row i sees the keys [lo_i, hi_i) of fa_problem's window rule; q blocks that see nothing of a
 * kv block are skipped, tiles that see all of it (without softcap, ALiBi or dropout) take one
 * fused exp + dS loop, the others go row by row. bf16 inputs on AVX512_BF16 run all five
 * products on vdpbf16ps: S and dP from the exact bf16 inputs, dV, dK and dQ from P∘Z and dS
 * rounded to bf16 (as FlashAttention feeds them to its tensor cores); every sum stays f32.
 *
 * Workspace (fa_cpu_bwd_workspace; nothing is allocated per call): the dQ partials
 * (chunks · rows_q · h · d f32), f32 copies of q, dout (rows_q · h · (d + d_v)) and k, v
 * (rows_k · h_k · (d + d_v)), bf16 copies of q, dout for the pair kernels, and per thread
 * about 4·64·(d + d_v) + 3·64² floats of tiles (with pairs, their bf16 operands as well).
 */
#include <math.h>
#include <string.h>

#include "cpu/cpu.h"
#include "cpu/bwd.h"
#include "fa_philox.h"

enum {
    BWD_BLOCK_M = 64,    /* q rows per tile */
    BWD_BLOCK_N = 64,    /* keys per kv block; a multiple of 4 (Philox draws 4 keys at once) */
    BWD_ROWS_PER_TASK = 16, /* prep and reduce */
    BWD_GROUP = 4,       /* kv blocks a task holds at once (see bwd_kv_group) */
    BWD_ALIGN = 64
};
/* The main pass aims for this many tasks, splitting keys into chunks (each with its own dQ
 * partial) when there are fewer (sequence, kv head) pairs. It does not depend on the thread
 * count, so neither do the results. */
#define BWD_MIN_TASKS 64
/* A chunk spans at least this many kv blocks: each chunk's dQ partial is zeroed, accumulated
 * into and summed once more, memory traffic worth amortising over enough keys. */
#define BWD_MIN_CHUNK_BLOCKS 4
/* The dQ partials may grow past one f32 copy of dQ up to this. */
#define BWD_PARTIALS_MAX_BYTES ((size_t)256 << 20)

/* ---------------------------------------------------------------- views */
/* Element (sequence b, token t, head h) of a tensor lies at data + (b·bs + t·ts + h·hs)·esize.
 * Batched tensors use b; varlen ones have bs = 0 and t counts from the packed start. */
typedef struct bwd_view {
    char *data;
    int32_t dtype;
    size_t esize;
    int64_t bs, ts, hs;
} bwd_view;

/* (b, s, h, d) or varlen (total, h, d) */
static bwd_view view_tokens(const fa_tensor *t, bool varlen) {
    bwd_view v = {(char *)t->data, t->dtype, fa_dtype_size(t->dtype), 0, 0, 0};
    v.bs = varlen ? 0 : t->stride[0];
    v.ts = varlen ? t->stride[0] : t->stride[1];
    v.hs = varlen ? t->stride[1] : t->stride[2];
    return v;
}

/* softmax_lse / softmax_d: (b, h, s) or varlen (h, total) */
static bwd_view view_lse(const fa_tensor *t, bool varlen) {
    bwd_view v = {(char *)t->data, t->dtype, sizeof(float), 0, 0, 0};
    v.bs = varlen ? 0 : t->stride[0];
    v.hs = varlen ? t->stride[0] : t->stride[1];
    v.ts = varlen ? t->stride[1] : t->stride[2];
    return v;
}

/* A contiguous workspace buffer, head-major so that a tile's rows are adjacent (no cache-set
 * aliasing between rows): (b, h, seqlen, d), or varlen (h, rows, d). */
static bwd_view view_buf(void *data, int32_t dtype, int64_t seqlen, int64_t rows, int64_t nheads,
                         int64_t d, bool varlen) {
    bwd_view v = {(char *)data, dtype, fa_dtype_size(dtype), 0, d, 0};
    v.bs = varlen ? 0 : nheads * seqlen * d;
    v.hs = varlen ? rows * d : seqlen * d;
    return v;
}

static inline void *view_at(const bwd_view *v, int64_t b, int64_t t, int64_t h) {
    return v->data + (b * v->bs + t * v->ts + h * v->hs) * (int64_t)v->esize;
}

static inline float *view_f(const bwd_view *v, int64_t b, int64_t t, int64_t h) {
    return (float *)view_at(v, b, t, h);
}

/* ---------------------------------------------------------------- plan */
typedef struct bwd_layout {
    int64_t rows;   /* token rows of q: b·s_q, or varlen total_q */
    int64_t rows_k; /* token rows of k: b·s_k, or varlen total_k */
    bool pairs;     /* bf16 on AVX512_BF16: S and dP from bf16 pairs (gemm_bf16) */
    int64_t d2, dv2; /* head dims in pairs: ceil(d / 2), ceil(d_v / 2) */
    int64_t pair_rows; /* pairs: rows of qr, dor per head (each sequence starts a pair) */
    int64_t chunks; /* kv chunks per (sequence, kv head) = dQ partials */
    size_t part_bytes, copy_bytes, scratch_bytes, total_bytes;
} bwd_layout;

/* Per-thread scratch: the byte offset of each buffer (see bwd_scratch) and the total. */
typedef struct bwd_scratch_layout {
    size_t kt, dk, vt, dv, kt2, vt2, kp; /* in kv slot 0; slot g is g · slot bytes further */
    size_t slot;
    size_t s, dp, tc, z, row, words, lse, delta, p2, ds2, ds16; /* the tile's, after the slots */
    size_t total;
} bwd_scratch_layout;

typedef struct bwd_plan {
    const fa_problem *p;
    const fa_bwd_args *a;
    const fa_bwd_kernels *kern;
    bwd_layout L;
    bwd_view q, k, v, out, dout, lse, dsum, dq, dk, dv;
    bwd_view q32, do32, k32, v32; /* f32 copies, the tiles' operands */
    bwd_view q16, do16;           /* pairs: bf16 copies with even row lengths (2·d2, 2·dv2) */
    bwd_view qr, dor;             /* pairs: pairs of rows of q, dout (pair_row_of), (d), (d_v) */
    bwd_view part;      /* chunk 0 of the dQ partials; chunk c is part_chunk floats further */
    int64_t part_chunk;
    char *scratch;      /* scratch_layout.total bytes per thread */
    bwd_scratch_layout scratch_layout;
    int64_t group;      /* query heads per kv head */
    uint32_t drop_threshold;
    float drop_scale;   /* 1 / (1 - p) */
} bwd_plan;

typedef struct bwd_seq {
    int64_t b, q0, k0, sq, sk; /* index, first packed rows (0 when batched), lengths */
} bwd_seq;

static int32_t read_i32(const fa_tensor *t, int64_t i) {
    return ((const int32_t *)t->data)[i * t->stride[0]];
}

static bwd_seq seq_of(const bwd_plan *pl, int64_t b) {
    bwd_seq s = {b, 0, 0, pl->p->max_seqlen_q, pl->p->max_seqlen_k};
    if (pl->p->varlen) {
        s.q0 = read_i32(&pl->a->cu_seqlens_q, b);
        s.k0 = read_i32(&pl->a->cu_seqlens_k, b);
        s.sq = read_i32(&pl->a->cu_seqlens_q, b + 1) - s.q0;
        s.sk = read_i32(&pl->a->cu_seqlens_k, b + 1) - s.k0;
    }
    return s;
}

static size_t align_up(size_t n) { return (n + BWD_ALIGN - 1) / BWD_ALIGN * BWD_ALIGN; }
static int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

static size_t take(size_t *at, size_t bytes) {
    size_t offset = *at;
    *at += align_up(bytes);
    return offset;
}

static bwd_scratch_layout scratch_layout(const fa_problem *p, bool pairs) {
    const size_t bm = BWD_BLOCK_M, bn = BWD_BLOCK_N, f = sizeof(float), u = sizeof(uint32_t);
    const size_t on = pairs ? 1 : 0;
    const size_t d = (size_t)p->d, dv = (size_t)p->d_v, row = d > dv ? d : dv;
    const size_t off = pairs ? 0 : 1; /* f32 operands or pairs */
    bwd_scratch_layout o;
    size_t at = 0;
    o.kt = take(&at, off * d * bn * f);
    o.dk = take(&at, bn * d * f);
    o.vt = take(&at, off * dv * bn * f);
    o.dv = take(&at, bn * dv * f);
    o.kt2 = take(&at, on * (d + 1) / 2 * bn * u);
    o.vt2 = take(&at, on * (dv + 1) / 2 * bn * u);
    o.kp = take(&at, on * bn / 2 * d * u);
    o.slot = at;
    at *= BWD_GROUP;
    o.s = take(&at, bm * bn * f);
    o.dp = take(&at, bm * bn * f);
    o.tc = take(&at, bm * bn * f);
    o.z = take(&at, bn * f);
    o.row = take(&at, row * f);
    o.words = take(&at, (bn + 4) * sizeof(uint32_t));
    o.lse = take(&at, bm * f);
    o.delta = take(&at, bm * f);
    o.p2 = take(&at, on * bm / 2 * bn * u);
    o.ds2 = take(&at, on * bm / 2 * bn * u);
    o.ds16 = take(&at, on * bm * bn * sizeof(uint16_t));
    o.total = at;
    return o;
}

static void bwd_layout_of(const fa_problem *p, const fa_bwd_args *a, const fa_bwd_kernels *kern,
                          int threads, bwd_layout *L) {
    L->rows = p->varlen ? a->q.shape[0] : p->batch * p->max_seqlen_q;
    L->rows_k = p->varlen ? a->k.shape[0] : p->batch * p->max_seqlen_k;
    L->pairs = p->dtype == FA_DTYPE_BF16 && kern->gemm_bf16 != NULL;
    L->d2 = (p->d + 1) / 2;
    L->dv2 = (p->d_v + 1) / 2;
    size_t dq_bytes = (size_t)L->rows * (size_t)p->nheads * (size_t)p->d * sizeof(float);
    int64_t owners = p->batch * p->nheads_k;
    int64_t want = ceil_div(BWD_MIN_TASKS, owners);
    int64_t kv_blocks = ceil_div(p->max_seqlen_k, BWD_BLOCK_N);
    int64_t most = ceil_div(kv_blocks, BWD_MIN_CHUNK_BLOCKS);
    int64_t chunks = want < most ? want : most;
    size_t cap = dq_bytes > BWD_PARTIALS_MAX_BYTES ? dq_bytes : BWD_PARTIALS_MAX_BYTES;
    if (dq_bytes > 0 && (size_t)chunks > cap / dq_bytes) chunks = (int64_t)(cap / dq_bytes);
    L->chunks = chunks > 1 ? chunks : 1;
    L->part_bytes = align_up(dq_bytes * (size_t)L->chunks);
    size_t q_row = (size_t)p->nheads * (size_t)(p->d + p->d_v) * 4;
    size_t k_row = (size_t)p->nheads_k * (size_t)(p->d + p->d_v) * 4;
    L->copy_bytes = (size_t)L->rows * q_row + (size_t)L->rows_k * k_row + 4 * BWD_ALIGN;
    /* Sequence b's rows start at pair ceil((q0 + b) / 2) (varlen) or 0 of its own view. */
    L->pair_rows = p->varlen ? (L->rows + p->batch + 2) / 2 : ceil_div(p->max_seqlen_q, 2);
    if (L->pairs)
        L->copy_bytes += (size_t)L->rows * (size_t)p->nheads * (size_t)(L->d2 + L->dv2) * 4 +
                         (size_t)(p->varlen ? 1 : p->batch) * (size_t)L->pair_rows *
                             (size_t)p->nheads * (size_t)(p->d + p->d_v) * 4 +
                         4 * BWD_ALIGN;
    L->scratch_bytes = scratch_layout(p, L->pairs).total;
    L->total_bytes = BWD_ALIGN + L->part_bytes + L->copy_bytes + L->scratch_bytes * (size_t)threads;
}

static const fa_bwd_kernels *bwd_kernels_for(fa_cpu_isa isa) {
#if defined(FA_HAVE_X86)
    switch (isa) {
    case FA_ISA_SCALAR:
    case FA_ISA_NEON: return &fa_bwd_kernels_scalar;
    case FA_ISA_AVX2: return &fa_bwd_kernels_avx2;
    case FA_ISA_AVX512: return &fa_bwd_kernels_avx512;
    default: return &fa_bwd_kernels_avx512_bf16; /* AVX512_BF16 and any later x86 level */
    }
#else
    (void)isa;
    return &fa_bwd_kernels_scalar;
#endif
}

/* ---------------------------------------------------------------- scratch */
typedef struct bwd_scratch {
    float *kt;     /* (d, bn)   keys transposed, B operand of S = Q Kᵀ */
    float *dk;     /* (bn, d)   accumulators of the block */
    float *vt;     /* (dv, bn)  values transposed, B operand of dP = dO Vᵀ */
    float *dv;     /* (bn, dv) */
    float *s;      /* (bm, bn)  S, then P∘Z */
    float *dp;     /* (bm, bn)  dP, then dS */
    float *tc;     /* (bm, bn)  softcap: 1 - tanh² */
    float *z;      /* (bn)      dropout keep / (1 - p) of one row */
    uint32_t *words; /* (bn + 4) its Philox words */
    float *row;    /* (max(d, dv)) */
    uint32_t *kt2; /* (d2, bn)  pairs: bf16 pairs of kt along d */
    uint32_t *vt2; /* (dv2, bn) */
    float *lse;    /* (bm)      the tile's rows of softmax_lse and Δ */
    float *delta;  /* (bm) */
    /* pairs: the bf16 operands of dV, dK and dQ (pair_rows, round_tile) */
    uint32_t *kp;  /* (bn/2, d)  pairs of keys, B of dQ += dS K */
    uint32_t *p2;  /* (bm/2, bn) pairs of rows of P∘Z, A of dV += (P∘Z)ᵀ dO */
    uint32_t *ds2; /* (bm/2, bn) pairs of rows of dS, A of dK += dSᵀ Q */
    uint16_t *ds16; /* (bm, bn)  dS, A of dQ += dS K */
} bwd_scratch;

/* The thread's tile buffers with kv slot `slot` (< BWD_GROUP). */
static bwd_scratch bwd_scratch_of(const bwd_plan *pl, int thread, int slot) {
    const bwd_scratch_layout *o = &pl->scratch_layout;
    char *at = pl->scratch + o->total * (size_t)thread;
    char *kv = at + o->slot * (size_t)slot;
    bwd_scratch sc = {(float *)(kv + o->kt), (float *)(kv + o->dk),   (float *)(kv + o->vt),
                      (float *)(kv + o->dv), (float *)(at + o->s),    (float *)(at + o->dp),
                      (float *)(at + o->tc), (float *)(at + o->z),    (uint32_t *)(at + o->words),
                      (float *)(at + o->row), (uint32_t *)(kv + o->kt2), (uint32_t *)(kv + o->vt2),
                      (float *)(at + o->lse), (float *)(at + o->delta), (uint32_t *)(kv + o->kp),
                      (uint32_t *)(at + o->p2), (uint32_t *)(at + o->ds2),
                      (uint16_t *)(at + o->ds16)};
    return sc;
}

/* ---------------------------------------------------------------- pass 1: prep */
/* Token row r of a (b·seqlen or varlen total) layout as (view sequence index, token). */
static void row_coords(const bwd_plan *pl, int64_t r, int64_t seqlen, int64_t *b, int64_t *t) {
    bool varlen = pl->p->varlen;
    *b = varlen ? 0 : r / seqlen;
    *t = varlen ? r : r % seqlen;
}

/* Varlen rows outside [cu_seqlens[0], cu_seqlens[batch]) belong to no sequence. */
static bool row_in_sequences(const bwd_plan *pl, const fa_tensor *cu, int64_t t) {
    return !pl->p->varlen || (t >= read_i32(cu, 0) && t < read_i32(cu, pl->p->batch));
}

/* n bf16 values, then a zero when n is odd (the pair kernels read whole pairs). */
static void copy_pairs(uint16_t *dst, const void *src, int64_t n) {
    memcpy(dst, src, (size_t)n * sizeof(uint16_t));
    if (n % 2) dst[n] = 0;
}

/* The pair of rows that holds row i of sequence b: pairs (2k, 2k + 1) count from the sequence's
 * first row, at pair ceil((q0 + b) / 2) of a varlen layout (never shared with sequence b - 1). */
static int64_t pair_row_of(const bwd_plan *pl, int64_t b, int64_t q0, int64_t i) {
    return (pl->p->varlen ? (q0 + b + 1) / 2 : 0) + i / 2;
}

/* Half i % 2 of each pair of row i of (seq, head h) in dst, from src (n bf16); the last row of
 * an odd-length sequence pairs with zeros. */
static void put_row_pairs(const bwd_plan *pl, const bwd_view *dst, const bwd_seq *seq, int64_t h,
                          int64_t i, const uint16_t *src, int64_t n) {
    uint16_t *half = (uint16_t *)view_at(dst, seq->b, pair_row_of(pl, seq->b, seq->q0, i), h);
    bool last_alone = i == seq->sq - 1 && i % 2 == 0;
    for (int64_t c = 0; c < n; ++c) {
        half[2 * c + i % 2] = src[c];
        if (last_alone) half[2 * c + 1] = 0;
    }
}

/* The sequence holding packed q row t (varlen), or b's (batched); false outside every one. */
static bool q_row_seq(const bwd_plan *pl, int64_t b, int64_t t, bwd_seq *seq) {
    if (!pl->p->varlen) {
        *seq = seq_of(pl, b);
        return true;
    }
    const fa_tensor *cu = &pl->a->cu_seqlens_q;
    int64_t lo = 0, hi = pl->p->batch; /* the last sequence with start <= t */
    if (t < read_i32(cu, 0) || t >= read_i32(cu, hi)) return false;
    while (hi - lo > 1) {
        int64_t mid = (lo + hi) / 2;
        if (read_i32(cu, mid) <= t) lo = mid;
        else hi = mid;
    }
    *seq = seq_of(pl, lo);
    return true;
}

/* q row: copies of q and dout, Δ = dO · O rounded like dP (0 outside every sequence). */
static void prep_q_row(const bwd_plan *pl, int64_t r, float *o) {
    const fa_problem *p = pl->p;
    int64_t b, t;
    row_coords(pl, r, p->max_seqlen_q, &b, &t);
    bool live = row_in_sequences(pl, &pl->a->cu_seqlens_q, t);
    bwd_seq seq;
    bool paired = pl->L.pairs && q_row_seq(pl, b, t, &seq);
    for (int64_t h = 0; h < p->nheads; ++h) {
        float *dout = view_f(&pl->do32, b, t, h);
        pl->kern->load_row(p->dtype, view_at(&pl->dout, b, t, h), dout, p->d_v);
        pl->kern->load_row(p->dtype, view_at(&pl->q, b, t, h), view_f(&pl->q32, b, t, h), p->d);
        pl->kern->load_row(p->dtype, view_at(&pl->out, b, t, h), o, p->d_v);
        if (pl->L.pairs) {
            copy_pairs(view_at(&pl->q16, b, t, h), view_at(&pl->q, b, t, h), p->d);
            copy_pairs(view_at(&pl->do16, b, t, h), view_at(&pl->dout, b, t, h), p->d_v);
        }
        if (paired) {
            put_row_pairs(pl, &pl->qr, &seq, h, t - seq.q0, view_at(&pl->q, b, t, h), p->d);
            put_row_pairs(pl, &pl->dor, &seq, h, t - seq.q0, view_at(&pl->dout, b, t, h), p->d_v);
        }
        float delta = pl->L.pairs ? pl->kern->dot_pairs(dout, o, p->d_v)
                                  : pl->kern->dot(dout, o, p->d_v);
        *view_f(&pl->dsum, b, t, h) = live ? delta : 0.0f;
    }
}

/* k row: copies of k and v; varlen rows outside every sequence get zero gradients here. */
static void prep_k_row(const bwd_plan *pl, int64_t r) {
    const fa_problem *p = pl->p;
    int64_t b, t;
    row_coords(pl, r, p->max_seqlen_k, &b, &t);
    bool live = row_in_sequences(pl, &pl->a->cu_seqlens_k, t);
    for (int64_t h = 0; h < p->nheads_k; ++h) {
        pl->kern->load_row(p->dtype, view_at(&pl->k, b, t, h), view_f(&pl->k32, b, t, h), p->d);
        pl->kern->load_row(p->dtype, view_at(&pl->v, b, t, h), view_f(&pl->v32, b, t, h), p->d_v);
        if (!live) {
            memset(view_at(&pl->dk, b, t, h), 0, (size_t)p->d * pl->dk.esize);
            memset(view_at(&pl->dv, b, t, h), 0, (size_t)p->d_v * pl->dv.esize);
        }
    }
}

/* Tasks [0, q_tasks) cover q rows, the rest k rows. */
static void bwd_prep_task(void *arg, int64_t task, int thread) {
    const bwd_plan *pl = arg;
    int64_t q_tasks = ceil_div(pl->L.rows, BWD_ROWS_PER_TASK);
    bool is_q = task < q_tasks;
    int64_t r0 = (is_q ? task : task - q_tasks) * BWD_ROWS_PER_TASK;
    int64_t r1 = r0 + BWD_ROWS_PER_TASK, rows = is_q ? pl->L.rows : pl->L.rows_k;
    float *o = bwd_scratch_of(pl, thread, 0).row;
    for (int64_t r = r0; r < (r1 < rows ? r1 : rows); ++r) {
        if (is_q) prep_q_row(pl, r, o);
        else prep_k_row(pl, r);
    }
}

/* ---------------------------------------------------------------- pass 2: one tile */
/* Keys visible from query row i: [lo, hi), before clipping to a block. */
static void visible_keys(const fa_problem *p, const bwd_seq *s, int64_t i, int64_t *lo,
                         int64_t *hi) {
    int64_t diag = i + s->sk - s->sq;
    *lo = p->window_left >= 0 ? diag - p->window_left : 0;
    *hi = p->window_right >= 0 ? diag + p->window_right + 1 : s->sk;
    if (*lo < 0) *lo = 0;
    if (*hi > s->sk) *hi = s->sk;
}

/* Query rows that see at least one key of [j0, j1): [lo, hi). */
static void visible_queries(const fa_problem *p, const bwd_seq *s, int64_t j0, int64_t j1,
                            int64_t *lo, int64_t *hi) {
    int64_t shift = s->sk - s->sq;
    *lo = p->window_right >= 0 ? j0 - shift - p->window_right : 0;
    *hi = p->window_left >= 0 ? j1 - shift + p->window_left : s->sq;
    if (*lo < 0) *lo = 0;
    if (*hi > s->sq) *hi = s->sq;
}

static float alibi_slope(const bwd_plan *pl, int64_t b, int64_t h) {
    const fa_tensor *t = &pl->a->alibi_slopes;
    const float *s = t->data;
    if (pl->p->alibi == FA_ALIBI_PER_BATCH) return s[b * t->stride[0] + h * t->stride[1]];
    return s[h * t->stride[0]];
}

/* s[0, n) holds scale·q·k for keys j0 + [0, n) of row i: turn it into the final score
 * (softcap, then ALiBi), keeping 1 - tanh² in tc for the chain rule. */
static void score_transform(const bwd_plan *pl, const bwd_seq *seq, float slope, int64_t i,
                            int64_t j0, float *s, float *tc, int64_t n) {
    const fa_problem *p = pl->p;
    if (p->softcap > 0.0f) pl->kern->softcap(s, tc, n, p->softcap);
    if (p->alibi != FA_ALIBI_NONE) {
        int64_t diag = i + seq->sk - seq->sq;
        for (int64_t j = 0; j < n; ++j) {
            int64_t key = j0 + j;
            float dist = (float)(diag > key ? diag - key : key - diag);
            s[j] += p->is_causal ? slope * (float)key : -slope * dist;
        }
    }
}

/* z[0, n) = keep / (1 - p) for keys j0 + [0, n) of row i of head h (fa_philox.h). */
static void dropout_row(const bwd_plan *pl, const bwd_scratch *sc, const bwd_seq *seq, int64_t h,
                        int64_t i, int64_t j0, int64_t n) {
    const fa_options *o = &pl->p->opts;
    int64_t g0 = j0 / 4, skip = j0 - 4 * g0; /* the first group may start before j0 */
    pl->kern->dropout_words(sc->words, o->rng_seed, o->rng_offset,
                            (uint32_t)(seq->b * pl->p->nheads + h), (uint32_t)i, (uint32_t)g0,
                            ceil_div(skip + n, 4));
    for (int64_t j = 0; j < n; ++j)
        sc->z[j] = sc->words[skip + j] >= pl->drop_threshold ? pl->drop_scale : 0.0f;
}

/* One query row of a tile: s (scores in, P∘Z out) and dp (dP in, dS out) over nj keys from j0. */
static void tile_row(const bwd_plan *pl, const bwd_scratch *sc, const bwd_seq *seq, int64_t h,
                     float slope, int64_t i, int64_t j0, int64_t nj, float *s, float *dp,
                     float *tc) {
    const fa_problem *p = pl->p;
    int64_t lo, hi;
    visible_keys(p, seq, i, &lo, &hi);
    lo = (lo > j0 ? lo : j0) - j0;
    hi = (hi < j0 + nj ? hi : j0 + nj) - j0;
    float lse = *view_f(&pl->lse, seq->b, seq->q0 + i, h);
    if (hi <= lo || lse == INFINITY) lo = hi = 0; /* no visible key: the row adds nothing */
    for (int64_t j = 0; j < lo; ++j) s[j] = dp[j] = 0.0f;
    for (int64_t j = hi; j < nj; ++j) s[j] = dp[j] = 0.0f;
    int64_t n = hi - lo;
    if (n == 0) return;
    float *pr = s + lo, *dpr = dp + lo, *tcr = tc + lo;
    if (p->softcap > 0.0f || p->alibi != FA_ALIBI_NONE) {
        for (int64_t j = 0; j < n; ++j) pr[j] *= p->scale;
        score_transform(pl, seq, slope, i, j0 + lo, pr, tcr, n);
        pl->kern->exp_affine(pr, n, 1.0f, lse);
    } else {
        pl->kern->exp_affine(pr, n, p->scale, lse);
    }
    float delta = *view_f(&pl->dsum, seq->b, seq->q0 + i, h);
    if (p->dropout_p > 0.0f) {
        const float *z = sc->z;
        dropout_row(pl, sc, seq, h, i, j0 + lo, n);
        for (int64_t j = 0; j < n; ++j) {
            dpr[j] = pr[j] * (dpr[j] * z[j] - delta);
            pr[j] *= z[j];
        }
    } else {
        for (int64_t j = 0; j < n; ++j) dpr[j] = pr[j] * (dpr[j] - delta);
    }
    if (p->softcap > 0.0f)
        for (int64_t j = 0; j < n; ++j) dpr[j] *= tcr[j];
}

/* True when the tile needs no per-row work: every row sees every key of the block, with no
 * softcap, ALiBi or dropout and a finite lse; its lse and Δ are then gathered into sc. */
static bool plain_tile(const bwd_plan *pl, const bwd_scratch *sc, const bwd_seq *seq, int64_t h,
                       int64_t i0, int64_t mi, int64_t j0, int64_t nj) {
    const fa_problem *p = pl->p;
    if (p->softcap > 0.0f || p->alibi != FA_ALIBI_NONE || p->dropout_p > 0.0f) return false;
    int64_t lo, hi, lo_last, hi_first; /* visible ranges grow with i: check the extreme rows */
    visible_keys(p, seq, i0 + mi - 1, &lo_last, &hi);
    visible_keys(p, seq, i0, &lo, &hi_first);
    if (lo_last > j0 || hi_first < j0 + nj) return false;
    for (int64_t r = 0; r < mi; ++r) {
        sc->lse[r] = *view_f(&pl->lse, seq->b, seq->q0 + i0 + r, h);
        sc->delta[r] = *view_f(&pl->dsum, seq->b, seq->q0 + i0 + r, h);
        if (!(sc->lse[r] < INFINITY)) return false;
    }
    return true;
}

/* q rows [i0, i0 + mi) of head h against the kv block [j0, j0 + nj) held in sc. */
static void bwd_tile(const bwd_plan *pl, const bwd_scratch *sc, const bwd_seq *seq, int64_t c,
                     int64_t h, int64_t i0, int64_t mi, int64_t j0, int64_t nj) {
    const fa_bwd_kernels *kern = pl->kern;
    const int64_t bn = BWD_BLOCK_N, d = pl->p->d, dv = pl->p->d_v;
    const float *q = view_f(&pl->q32, seq->b, seq->q0 + i0, h);          /* (mi, d) */
    const float *dout = view_f(&pl->do32, seq->b, seq->q0 + i0, h);      /* (mi, dv) */
    float *dq = view_f(&pl->part, seq->b, seq->q0 + i0, h) + c * pl->part_chunk; /* (mi, d) */
    const float *k = view_f(&pl->k32, seq->b, seq->k0 + j0, h / pl->group);     /* (nj, d) */
    const int64_t q_ld = pl->q32.ts, do_ld = pl->do32.ts, dq_ld = pl->part.ts;
    float slope = pl->p->alibi != FA_ALIBI_NONE ? alibi_slope(pl, seq->b, h) : 0.0f;

    if (pl->L.pairs) {
        const uint32_t *q2 = view_at(&pl->q16, seq->b, seq->q0 + i0, h);     /* (mi, d2) */
        const uint32_t *do2 = view_at(&pl->do16, seq->b, seq->q0 + i0, h);   /* (mi, dv2) */
        kern->gemm_bf16(mi, nj, pl->L.d2, q2, pl->L.d2, 1, sc->kt2, bn, sc->s, bn, false);
        kern->gemm_bf16(mi, nj, pl->L.dv2, do2, pl->L.dv2, 1, sc->vt2, bn, sc->dp, bn, false);
    } else {
        kern->gemm(mi, nj, d, q, q_ld, 1, sc->kt, bn, sc->s, bn, false);      /* S = Q Kᵀ */
        kern->gemm(mi, nj, dv, dout, do_ld, 1, sc->vt, bn, sc->dp, bn, false); /* dP = dO Vᵀ */
    }
    if (plain_tile(pl, sc, seq, h, i0, mi, j0, nj))
        kern->probs_and_grads(sc->s, sc->dp, mi, nj, bn, pl->p->scale, sc->lse, sc->delta);
    else
        for (int64_t r = 0; r < mi; ++r)
            tile_row(pl, sc, seq, h, slope, i0 + r, j0, nj, sc->s + r * bn, sc->dp + r * bn,
                     sc->tc + r * bn);
    if (pl->L.pairs) { /* P∘Z and dS rounded to bf16, as FlashAttention feeds its tensor cores */
        int64_t mi2 = ceil_div(mi, 2), nj2 = ceil_div(nj, 2);
        kern->round_tile(sc->s, sc->dp, mi, nj, bn, sc->p2, sc->ds2, sc->ds16);
        int64_t pr = pair_row_of(pl, seq->b, seq->q0, i0); /* i0 is even */
        const uint32_t *qr = view_at(&pl->qr, seq->b, pr, h);   /* (mi2, d) */
        const uint32_t *dor = view_at(&pl->dor, seq->b, pr, h); /* (mi2, dv) */
        kern->gemm_bf16(nj, dv, mi2, sc->p2, 1, bn, dor, dv, sc->dv, dv, true);
        kern->gemm_bf16(nj, d, mi2, sc->ds2, 1, bn, qr, d, sc->dk, d, true);
        kern->gemm_bf16(mi, d, nj2, (const uint32_t *)sc->ds16, bn / 2, 1, sc->kp, d, dq, dq_ld,
                        true);
        return;
    }
    kern->gemm(nj, dv, mi, sc->s, 1, bn, dout, do_ld, sc->dv, dv, true); /* dV += (P∘Z)ᵀ dO */
    kern->gemm(nj, d, mi, sc->dp, 1, bn, q, q_ld, sc->dk, d, true);     /* dK += dSᵀ Q */
    kern->gemm(mi, d, nj, sc->dp, bn, 1, k, d, dq, dq_ld, true);        /* dQ += dS K */
}

/* ---------------------------------------------------------------- pass 2: one kv block */
/* dst (ceil(n / 2), ld) = bf16 pairs (x[j][2c], x[j][2c + 1]) of x (rows, n), whose f32 values
 * are bf16 exactly (so the top half of each is its bf16); an odd n is padded with 0. */
static void pack_pairs(uint32_t *dst, int64_t ld, const float *x, int64_t rows, int64_t n) {
    for (int64_t j = 0; j < rows; ++j)
        for (int64_t c = 0; c < n; c += 2) {
            uint32_t lo, hi = 0;
            memcpy(&lo, &x[j * n + c], sizeof lo);
            if (c + 1 < n) memcpy(&hi, &x[j * n + c + 1], sizeof hi);
            dst[c / 2 * ld + j] = (lo >> 16) | (hi & 0xFFFF0000u);
        }
}

/* Keys [j0, j0 + nj) of kv head kvh, transposed: kt (d, bn), vt (dv, bn); with pairs, kt2 and
 * vt2 (pairs along d) and kp (pairs of keys) instead. */
static void load_kv_block(const bwd_plan *pl, const bwd_scratch *sc, const bwd_seq *seq,
                          int64_t kvh, int64_t j0, int64_t nj) {
    const int64_t bn = BWD_BLOCK_N, d = pl->p->d, dv = pl->p->d_v;
    const float *k = view_f(&pl->k32, seq->b, seq->k0 + j0, kvh); /* (nj, d) */
    const float *v = view_f(&pl->v32, seq->b, seq->k0 + j0, kvh); /* (nj, dv) */
    if (pl->L.pairs) {
        pack_pairs(sc->kt2, bn, k, nj, d);
        pack_pairs(sc->vt2, bn, v, nj, dv);
        pl->kern->pair_rows(sc->kp, d, k, d, nj, d);
        return;
    }
    for (int64_t j = 0; j < nj; ++j) {
        for (int64_t c = 0; c < d; ++c) sc->kt[c * bn + j] = k[j * d + c];
        for (int64_t c = 0; c < dv; ++c) sc->vt[c * bn + j] = v[j * dv + c];
    }
}

static void store_kv_grads(const bwd_plan *pl, const bwd_scratch *sc, const bwd_seq *seq,
                           int64_t kvh, int64_t j0, int64_t nj) {
    const int64_t d = pl->p->d, dv = pl->p->d_v;
    for (int64_t j = 0; j < nj; ++j) {
        float *dk = sc->dk + j * d;
        for (int64_t c = 0; c < d; ++c) dk[c] *= pl->p->scale;
        pl->kern->store_row(pl->p->dtype, dk, view_at(&pl->dk, seq->b, seq->k0 + j0 + j, kvh), d);
        pl->kern->store_row(pl->p->dtype, sc->dv + j * dv,
                         view_at(&pl->dv, seq->b, seq->k0 + j0 + j, kvh), dv);
    }
}

/* kv blocks [blk0, blk0 + n) (n <= BWD_GROUP), one per scratch slot: every q tile that sees
 * one of them is visited once for all of them, so its operands and its dQ rows (in the chunk's
 * partial, far beyond L2) are read once per group instead of once per block. Each float still
 * sums in the same order as block by block. */
static void bwd_kv_group(const bwd_plan *pl, int thread, const bwd_seq *seq, int64_t c,
                         int64_t kvh, int64_t blk0, int n) {
    const fa_problem *p = pl->p;
    bwd_scratch sc[BWD_GROUP];
    int64_t j0[BWD_GROUP], nj[BWD_GROUP], lo[BWD_GROUP], hi[BWD_GROUP];
    int64_t i_lo = seq->sq, i_hi = 0; /* rows that see some block of the group */
    for (int g = 0; g < n; ++g) {
        sc[g] = bwd_scratch_of(pl, thread, g);
        j0[g] = (blk0 + g) * BWD_BLOCK_N;
        nj[g] = seq->sk - j0[g] < BWD_BLOCK_N ? seq->sk - j0[g] : BWD_BLOCK_N;
        load_kv_block(pl, &sc[g], seq, kvh, j0[g], nj[g]);
        memset(sc[g].dk, 0, (size_t)(nj[g] * p->d) * sizeof(float));
        memset(sc[g].dv, 0, (size_t)(nj[g] * p->d_v) * sizeof(float));
        visible_queries(p, seq, j0[g], j0[g] + nj[g], &lo[g], &hi[g]);
        if (lo[g] < hi[g]) {
            i_lo = lo[g] < i_lo ? lo[g] : i_lo;
            i_hi = hi[g] > i_hi ? hi[g] : i_hi;
        }
    }
    if (pl->L.pairs) i_lo -= i_lo % 2; /* tiles start a pair of rows; the extra row sees nothing */
    for (int64_t h = kvh * pl->group; h < (kvh + 1) * pl->group; ++h)
        for (int64_t i0 = i_lo; i0 < i_hi; i0 += BWD_BLOCK_M) {
            int64_t mi = i_hi - i0 < BWD_BLOCK_M ? i_hi - i0 : BWD_BLOCK_M;
            for (int g = 0; g < n; ++g)
                if (lo[g] < hi[g] && i0 < hi[g] && i0 + mi > lo[g])
                    bwd_tile(pl, &sc[g], seq, c, h, i0, mi, j0[g], nj[g]);
        }
    for (int g = 0; g < n; ++g) store_kv_grads(pl, &sc[g], seq, kvh, j0[g], nj[g]);
}

/* Task = (chunk c, sequence b, kv head): chunk-major, so with causal masks (where the first
 * keys are seen by the most queries) the longest tasks are handed out first. */
static void bwd_main_task(void *arg, int64_t task, int thread) {
    const bwd_plan *pl = arg;
    const fa_problem *p = pl->p;
    int64_t owners = p->batch * p->nheads_k;
    int64_t c = task / owners, b = task % owners / p->nheads_k, kvh = task % p->nheads_k;
    bwd_seq seq = seq_of(pl, b);
    /* This chunk's partial for the group's heads starts at zero. */
    for (int64_t h = kvh * pl->group; h < (kvh + 1) * pl->group; ++h)
        memset(view_f(&pl->part, b, seq.q0, h) + c * pl->part_chunk, 0,
               (size_t)(seq.sq * p->d) * sizeof(float));
    int64_t blocks = ceil_div(seq.sk, BWD_BLOCK_N), chunks = pl->L.chunks;
    int64_t end = (c + 1) * blocks / chunks;
    for (int64_t blk = c * blocks / chunks; blk < end; blk += BWD_GROUP)
        bwd_kv_group(pl, thread, &seq, c, kvh, blk,
                     end - blk < BWD_GROUP ? (int)(end - blk) : BWD_GROUP);
}

/* ---------------------------------------------------------------- pass 3: reduce dQ */
static void bwd_reduce_task(void *arg, int64_t task, int thread) {
    const bwd_plan *pl = arg;
    const fa_problem *p = pl->p;
    float *acc = bwd_scratch_of(pl, thread, 0).row;
    int64_t r1 = (task + 1) * BWD_ROWS_PER_TASK < pl->L.rows ? (task + 1) * BWD_ROWS_PER_TASK
                                                              : pl->L.rows;
    for (int64_t r = task * BWD_ROWS_PER_TASK; r < r1; ++r) {
        int64_t b, t;
        row_coords(pl, r, p->max_seqlen_q, &b, &t);
        bool live = row_in_sequences(pl, &pl->a->cu_seqlens_q, t);
        for (int64_t h = 0; h < p->nheads; ++h) {
            memset(acc, 0, (size_t)p->d * sizeof(float));
            for (int64_t c = 0; live && c < pl->L.chunks; ++c) {
                const float *part = view_f(&pl->part, b, t, h) + c * pl->part_chunk;
                for (int64_t e = 0; e < p->d; ++e) acc[e] += part[e];
            }
            for (int64_t e = 0; e < p->d; ++e) acc[e] *= p->scale;
            pl->kern->store_row(p->dtype, acc, view_at(&pl->dq, b, t, h), p->d);
        }
    }
}

/* ---------------------------------------------------------------- entry points */
fa_status fa_cpu_bwd_workspace(fa_context *ctx, const fa_problem *p, const fa_bwd_args *a,
                               size_t *bytes) {
    bwd_layout L;
    fa_cpu_state *state = fa_cpu_state_of(ctx);
    bwd_layout_of(p, a, bwd_kernels_for(state->isa), fa_pool_size(state->pool), &L);
    *bytes = L.total_bytes;
    return FA_OK;
}

static void bwd_plan_init(bwd_plan *pl, fa_context *ctx, const fa_problem *p,
                          const fa_bwd_args *a, void *ws) {
    bool varlen = p->varlen;
    memset(pl, 0, sizeof *pl);
    pl->p = p;
    pl->a = a;
    pl->kern = bwd_kernels_for(fa_cpu_state_of(ctx)->isa);
    bwd_layout_of(p, a, pl->kern, fa_pool_size(fa_cpu_state_of(ctx)->pool), &pl->L);
    pl->q = view_tokens(&a->q, varlen);
    pl->k = view_tokens(&a->k, varlen);
    pl->v = view_tokens(&a->v, varlen);
    pl->out = view_tokens(&a->out, varlen);
    pl->dout = view_tokens(&a->dout, varlen);
    pl->dq = view_tokens(&a->dq, varlen);
    pl->dk = view_tokens(&a->dk, varlen);
    pl->dv = view_tokens(&a->dv, varlen);
    pl->lse = view_lse(&a->softmax_lse, varlen);
    pl->dsum = view_lse(&a->softmax_d, varlen);
    pl->group = p->nheads / p->nheads_k;

    char *at = (char *)align_up((size_t)ws);
    int64_t sq = p->max_seqlen_q, sk = p->max_seqlen_k, rows = pl->L.rows, rows_k = pl->L.rows_k;
    pl->part = view_buf(at, FA_DTYPE_F32, sq, rows, p->nheads, p->d, varlen);
    pl->part_chunk = rows * p->nheads * p->d;
    at += pl->L.part_bytes;
    bwd_view *copies[] = {&pl->q32, &pl->do32, &pl->k32, &pl->v32};
    const int64_t lens[] = {sq, sq, sk, sk}, nrows[] = {rows, rows, rows_k, rows_k};
    const int64_t heads[] = {p->nheads, p->nheads, p->nheads_k, p->nheads_k};
    const int64_t dims[] = {p->d, p->d_v, p->d, p->d_v};
    for (int i = 0; i < 4; ++i) {
        *copies[i] = view_buf(at, FA_DTYPE_F32, lens[i], nrows[i], heads[i], dims[i], varlen);
        at += align_up((size_t)(nrows[i] * heads[i] * dims[i]) * sizeof(float));
    }
    if (pl->L.pairs) {
        pl->q16 = view_buf(at, FA_DTYPE_BF16, sq, rows, p->nheads, 2 * pl->L.d2, varlen);
        at += align_up((size_t)(rows * p->nheads * pl->L.d2) * 4);
        pl->do16 = view_buf(at, FA_DTYPE_BF16, sq, rows, p->nheads, 2 * pl->L.dv2, varlen);
        at += align_up((size_t)(rows * p->nheads * pl->L.dv2) * 4);
        int64_t pairs = pl->L.pair_rows, seqs = varlen ? 1 : p->batch;
        pl->qr = view_buf(at, FA_DTYPE_I32, pairs, pairs, p->nheads, p->d, varlen);
        at += align_up((size_t)(seqs * pairs * p->nheads * p->d) * 4);
        pl->dor = view_buf(at, FA_DTYPE_I32, pairs, pairs, p->nheads, p->d_v, varlen);
        at += align_up((size_t)(seqs * pairs * p->nheads * p->d_v) * 4);
    }
    pl->scratch = at;
    pl->scratch_layout = scratch_layout(p, pl->L.pairs);
    if (p->dropout_p > 0.0f) {
        pl->drop_threshold = fa_dropout_threshold(p->dropout_p);
        pl->drop_scale = 1.0f / (1.0f - p->dropout_p);
    }
}

fa_status fa_cpu_bwd(fa_context *ctx, const fa_problem *p, const fa_bwd_args *a, void *ws,
                     size_t ws_bytes) {
    size_t need;
    FA_FORWARD_IF(fa_cpu_bwd_workspace(ctx, p, a, &need));
    FA_RETURN_IF(ws_bytes < need || !ws, FA_ERR_WORKSPACE_TOO_SMALL,
                 "cpu backward needs %zu workspace bytes (got %zu)", need, ws ? ws_bytes : 0);
    bwd_plan pl;
    bwd_plan_init(&pl, ctx, p, a, ws);
    fa_pool *pool = fa_cpu_state_of(ctx)->pool;
    int64_t q_tasks = ceil_div(pl.L.rows, BWD_ROWS_PER_TASK);
    int64_t k_tasks = ceil_div(pl.L.rows_k, BWD_ROWS_PER_TASK);
    fa_pool_run(pool, q_tasks + k_tasks, bwd_prep_task, &pl);
    fa_pool_run(pool, pl.L.chunks * p->batch * p->nheads_k, bwd_main_task, &pl);
    fa_pool_run(pool, q_tasks, bwd_reduce_task, &pl);
    return FA_OK;
}

/* ---------------------------------------------------------------- portable kernels */
static void gemm_scalar(int64_t M, int64_t N, int64_t K, const float *A, int64_t a_rs,
                        int64_t a_cs, const float *B, int64_t ldb, float *C, int64_t ldc,
                        bool accumulate) {
    for (int64_t m = 0; m < M; ++m) {
        float *c = C + m * ldc;
        if (!accumulate) memset(c, 0, (size_t)N * sizeof(float));
        for (int64_t k = 0; k < K; ++k) {
            const float a = A[m * a_rs + k * a_cs], *b = B + k * ldb;
            for (int64_t n = 0; n < N; ++n) c[n] += a * b[n];
        }
    }
}

/* Multiply then add, as gemm_scalar does (C11 does not contract a * b + c across statements). */
static float dot_scalar(const float *a, const float *b, int64_t n) {
    float acc = 0.0f;
    for (int64_t i = 0; i < n; ++i) {
        float term = a[i] * b[i];
        acc += term;
    }
    return acc;
}

FA_BWD_KERNEL_TABLE(fa_bwd_kernels_scalar, gemm_scalar, dot_scalar, NULL, NULL, NULL, NULL,
                    fa_load_row_f32, fa_store_row_f32);
