/*
 * fwd_engine.c — the blocked forward (FlashAttention-2, Algorithm 1) on the thread pool.
 * See fwd_engine.h for the decomposition into work items; the steps of one item are
 * load_q -> for each kv block { load_kv, qk, scores epilogue, softmax, dropout, pv }
 * -> finish_rows (or write_partial + combine_item when the kv range is split).
 *
 * Numerics: scores live in base 2 (scale * log2(e) folded into one multiplier), m_i/l_i/acc
 * are f32, the output is rounded once. A row that sees no key keeps m_i = -inf and ends with
 * out = 0, lse = +inf.
 */
#include "cpu/fwd_engine.h"

#include "fa_philox.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

/* ---------------------------------------------------------------- workspace layout */
typedef struct fa_item {
    int32_t b, hk, g0, ng; /* sequence, kv head, first q head of the group, q heads */
    int32_t nk;            /* kv heads hk .. hk + nk - 1, one tile each (decode); else 1 */
    int64_t i0, nq;        /* q rows [i0, i0 + nq) */
    int64_t cost;          /* kv blocks visited, for longest-first ordering */
} fa_item;

/* An item's rows are processed as up to FA_SUB tiles of <= FA_MAX_M stacked rows (q heads x
 * q rows) that share each packed kv block; a tile skips the blocks it cannot see. When one tile
 * holds all the q rows of a kv head (decode), an item takes up to FA_MAX_KV consecutive kv heads
 * instead (every kv head where the rows fit and the block's K and V stay in L2), one tile each:
 * per kv block it first reads the keys' rows across all its heads in memory order (key j of kv
 * head hk lies at j · k_row + hk · k_head; a dense cache's block is one run of memory), which
 * brings the block into the cache as one stream, and then packs each head from there. One
 * thread reading short runs a row apart, one head at a time, got a third of its read bandwidth
 * (docs/cpu.md). */
#define FA_SUB 4
#define FA_ITEM_ROWS (FA_SUB * FA_MAX_M) /* online-softmax rows of one item */
#define FA_MAX_KV 64                      /* kv heads of one decode item */
#define FA_WARM_BYTES (512 << 10)         /* K (or V) of one block of a decode item: within L2 */

typedef struct fa_layout {
    int64_t d_pad, dv_pad;
    int64_t ng_max, nq_max; /* rows of a tile: ng q heads x nq q rows <= FA_MAX_M */
    int64_t nk_max;         /* kv heads per item */
    int64_t max_items, splits;
    size_t seqs_off, items_off, partial_off, scratch_off, scratch_bytes, total;
} fa_layout;

/* Per-thread scratch regions (floats): f32 Q rows of one tile, the kernel operands (Q of
 * FA_ITEM_ROWS rows, K and V panels), the score tile, FA_ITEM_ROWS rows of acc/m/l, and one
 * spare row. */
typedef struct fa_scratch {
    float *qf, *qop, *kp, *vp, *s, *acc, *m, *l, *row;
} fa_scratch;

/* One tile of an item: its rows (as an item of its own) and its online-softmax state. */
typedef struct fa_tile {
    fa_item rows;
    float *qop; /* [m][d_pad] kernel operand */
    float *acc; /* [m][dv_pad] */
    float *m, *l;
    int64_t row0; /* first of its rows among the item's (scratch and partials) */
} fa_tile;

static int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }
static size_t align64(size_t n) { return (n + 63) & ~(size_t)63; }

static size_t scratch_floats(const fa_layout *L, float **regions, char *base) {
    const int64_t rows = FA_ITEM_ROWS;
    const int64_t sizes[] = {FA_MAX_M * L->d_pad,    rows * L->d_pad, FA_BLOCK_N * L->d_pad,
                             FA_BLOCK_N * L->dv_pad, rows * FA_BLOCK_N,
                             rows * L->dv_pad,       rows,            rows,
                             L->d_pad + L->dv_pad};
    size_t off = 0;
    for (size_t r = 0; r < sizeof sizes / sizeof sizes[0]; ++r) {
        if (regions) regions[r] = (float *)(base + off);
        off += align64((size_t)sizes[r] * sizeof(float));
    }
    return off;
}

/* nk_max: kv heads per item, each a tile that visits every kv block of the split. */
static int64_t choose_splits(const fa_problem *p, int threads, int64_t max_items, int64_t nk_max) {
    int64_t kv_blocks = ceil_div(p->max_seqlen_k, FA_BLOCK_N);
    if (kv_blocks <= 1) return 1;
    int64_t n = p->opts.num_splits;
    if (n == 0) { /* enough tasks for every thread twice over; >= 4 (kv head, kv block) per split */
        if (threads <= 1 || max_items >= 2 * (int64_t)threads) return 1;
        n = ceil_div(2 * (int64_t)threads, max_items);
        int64_t min_blocks = nk_max >= 4 ? 1 : 4 / nk_max;
        if (n > kv_blocks / min_blocks) n = kv_blocks / min_blocks;
    }
    if (n > kv_blocks) n = kv_blocks;
    if (n > 128) n = 128;
    return n < 1 ? 1 : n;
}

static fa_layout make_layout(const fa_problem *p, const fa_fwd_kernels *kern, int threads,
                             int64_t total_q) {
    fa_layout L;
    L.d_pad = ceil_div(p->d, kern->d_align) * kern->d_align;
    L.dv_pad = (p->d_v + 15) & ~(int64_t)15;
    int64_t group = p->nheads / p->nheads_k;
    L.ng_max = group < FA_MAX_M ? group : FA_MAX_M;
    L.nq_max = FA_MAX_M / L.ng_max;
    bool one_tile = group <= FA_MAX_M && p->max_seqlen_q <= L.nq_max;
    L.nk_max = 1;
    if (one_tile) { /* decode: as many kv heads as the item's rows and L2 hold */
        int64_t head_bytes = FA_BLOCK_N * (p->d > p->d_v ? p->d : p->d_v) *
                             (int64_t)fa_dtype_size(p->dtype); /* K or V of one block */
        int64_t by_rows = FA_ITEM_ROWS / (group * (p->max_seqlen_q > 0 ? p->max_seqlen_q : 1));
        int64_t by_cache = FA_WARM_BYTES / head_bytes;
        L.nk_max = p->nheads_k < FA_MAX_KV ? p->nheads_k : FA_MAX_KV;
        L.nk_max = by_rows < L.nk_max ? by_rows : L.nk_max;
        L.nk_max = by_cache < L.nk_max ? by_cache : L.nk_max;
        if (L.nk_max < 1) L.nk_max = 1;
        L.nk_max = ceil_div(p->nheads_k, ceil_div(p->nheads_k, L.nk_max)); /* even items */
    }
    int64_t item_rows = L.nq_max * FA_SUB;
    int64_t row_blocks = p->varlen ? ceil_div(total_q, item_rows) + p->batch
                                   : p->batch * ceil_div(p->max_seqlen_q, item_rows);
    L.max_items = row_blocks * ceil_div(p->nheads_k, L.nk_max) * ceil_div(group, L.ng_max);
    L.splits = choose_splits(p, threads, L.max_items, L.nk_max);
    L.seqs_off = 0;
    L.items_off = align64((size_t)p->batch * sizeof(fa_seq));
    L.partial_off = L.items_off + align64((size_t)L.max_items * sizeof(fa_item));
    size_t partial =
        L.splits > 1 ? (size_t)(L.max_items * L.splits * FA_ITEM_ROWS * (L.dv_pad + 1)) : 0;
    L.scratch_off = L.partial_off + align64(partial * sizeof(float));
    L.scratch_bytes = scratch_floats(&L, NULL, NULL);
    L.total = L.scratch_off + L.scratch_bytes * (size_t)threads + 64; /* + 64: base alignment */
    return L;
}

static const fa_fwd_kernels *pick_kernels(fa_cpu_isa isa, const fa_problem *p);

size_t fa_engine_workspace(const fa_problem *p, fa_cpu_isa isa, int num_threads, int64_t total_q) {
    return make_layout(p, pick_kernels(isa, p), num_threads, total_q).total;
}

static char *aligned_base(void *ws) { return (char *)align64((size_t)(uintptr_t)ws); }

fa_seq *fa_engine_seqs(void *ws) { return (fa_seq *)aligned_base(ws); }

/* ---------------------------------------------------------------- masks */
/* Visible keys of query row i: [key_lo(i), key_hi(i)) within [0, s_k). */
static int64_t key_lo(const fa_problem *p, const fa_seq *sq, int64_t i) {
    if (p->window_left < 0) return 0;
    int64_t lo = i + sq->s_k - sq->s_q - p->window_left;
    return lo > 0 ? lo : 0;
}

static int64_t key_hi(const fa_problem *p, const fa_seq *sq, int64_t i) {
    if (p->window_right < 0) return sq->s_k;
    int64_t hi = i + sq->s_k - sq->s_q + p->window_right + 1;
    return hi < sq->s_k ? (hi > 0 ? hi : 0) : sq->s_k;
}

/* Keys [lo, hi) that some row of the item sees (rows share q indices across heads). */
static void item_key_range(const fa_problem *p, const fa_seq *sq, const fa_item *it, int64_t *lo,
                           int64_t *hi) {
    *lo = key_lo(p, sq, it->i0);
    *hi = key_hi(p, sq, it->i0 + it->nq - 1);
    if (*hi < *lo) *hi = *lo;
}

/* ---------------------------------------------------------------- items */
/* Does item x go before item y? Longest first; ties in creation order, so runs reproduce. */
static bool goes_before(const fa_item *x, const fa_item *y) {
    if (x->cost != y->cost) return x->cost > y->cost;
    if (x->b != y->b) return x->b < y->b;
    if (x->hk != y->hk) return x->hk < y->hk;
    if (x->g0 != y->g0) return x->g0 < y->g0;
    return x->i0 < y->i0;
}

static void sift_down(fa_item *items, int64_t root, int64_t n) {
    for (int64_t child; (child = 2 * root + 1) < n; root = child) {
        if (child + 1 < n && goes_before(&items[child], &items[child + 1])) ++child;
        if (!goes_before(&items[root], &items[child])) return;
        fa_item t = items[root];
        items[root] = items[child];
        items[child] = t;
    }
}

/* Heapsort: in place and allocation-free (glibc's qsort may malloc). */
static void sort_items(fa_item *items, int64_t n) {
    for (int64_t i = n / 2 - 1; i >= 0; --i) sift_down(items, i, n);
    for (int64_t end = n - 1; end > 0; --end) {
        fa_item t = items[0];
        items[0] = items[end];
        items[end] = t;
        sift_down(items, 0, end);
    }
}

/* Every work item, longest first; -1 if there would be more than the layout planned for. */
static int64_t build_items(const fa_attn_plan *pl, const fa_layout *L, fa_item *items) {
    const fa_problem *p = pl->p;
    int64_t group = p->nheads / p->nheads_k, n = 0;
    for (int64_t b = 0; b < p->batch; ++b) {
        const fa_seq *sq = &pl->seqs[b];
        for (int64_t hk = 0; hk < p->nheads_k; hk += L->nk_max)
            for (int64_t g0 = 0; g0 < group; g0 += L->ng_max)
                for (int64_t i0 = 0; i0 < sq->s_q; i0 += L->nq_max * FA_SUB) {
                    int64_t nq = sq->s_q - i0 < L->nq_max * FA_SUB ? sq->s_q - i0 : L->nq_max * FA_SUB;
                    int64_t nk = p->nheads_k - hk < L->nk_max ? p->nheads_k - hk : L->nk_max;
                    fa_item it = {(int32_t)b, (int32_t)hk, (int32_t)g0,
                                  (int32_t)(group - g0 < L->ng_max ? group - g0 : L->ng_max),
                                  (int32_t)nk, i0, nq, 0};
                    int64_t lo, hi;
                    item_key_range(p, sq, &it, &lo, &hi);
                    it.cost = hi > lo ? ceil_div(hi, FA_BLOCK_N) - lo / FA_BLOCK_N : 0;
                    if (n == L->max_items) return -1;
                    items[n++] = it;
                }
    }
    sort_items(items, n);
    return n;
}

/* ---------------------------------------------------------------- the run's shared state */
typedef struct fa_run {
    const fa_attn_plan *pl;
    const fa_layout *L;
    const fa_fwd_kernels *kern;
    const fa_item *items;
    float *partials;
    char *scratch;
    size_t esize;
} fa_run;

static fa_scratch scratch_of(const fa_run *run, int thread) {
    float *r[9];
    scratch_floats(run->L, r, run->scratch + (size_t)thread * run->L->scratch_bytes);
    return (fa_scratch){r[0], r[1], r[2], r[3], r[4], r[5], r[6], r[7], r[8]};
}

static int64_t head_of(const fa_run *run, const fa_item *it, int64_t r) {
    int64_t group = run->pl->p->nheads / run->pl->p->nheads_k;
    return it->hk * group + it->g0 + r / it->nq;
}

/* Key j of sequence sq, head offset head_off, as a pointer into base. */
static const char *key_row(const fa_run *run, const fa_seq *sq, const char *base, int64_t off,
                           int64_t row_st, int64_t page_st, int64_t head_off, int64_t j) {
    int64_t e;
    if (sq->pages) {
        int64_t ps = run->pl->p->page_size;
        e = (int64_t)sq->pages[j / ps] * page_st + (j % ps) * row_st + head_off;
    } else {
        e = off + j * row_st + head_off;
    }
    return base + e * (int64_t)run->esize;
}

/* Rotary embedding of x[0, rotary_dim) at position pos in f32, rounded to the dtype after
 * (upstream rotates in registers and stores the dtype, for k into the cache and q into smem). */
void fa_rotate_row(const fa_problem *p, const char *cos, int64_t cos_stride, const char *sin,
                   int64_t sin_stride, float *x, int64_t pos) {
    int64_t half = p->rotary_dim / 2;
    size_t es = fa_dtype_size(p->dtype);
    float c[128], s[128]; /* rotary_dim <= d <= 256 */
    fa_load_row_f32(p->dtype, cos + (size_t)(pos * cos_stride) * es, c, half);
    fa_load_row_f32(p->dtype, sin + (size_t)(pos * sin_stride) * es, s, half);
    bool inter = p->opts.rotary_interleaved;
    for (int64_t t = 0; t < half; ++t) {
        int64_t a = inter ? 2 * t : t, b = inter ? 2 * t + 1 : t + half;
        float x0 = x[a], x1 = x[b];
        x[a] = x0 * c[t] - x1 * s[t];
        x[b] = x0 * s[t] + x1 * c[t];
    }
    if (p->dtype == FA_DTYPE_F16)
        for (int64_t t = 0; t < p->rotary_dim; ++t) x[t] = fa_f16_to_f32(fa_f32_to_f16(x[t]));
    if (p->dtype == FA_DTYPE_BF16)
        for (int64_t t = 0; t < p->rotary_dim; ++t) x[t] = fa_bf16_to_f32(fa_f32_to_bf16(x[t]));
}

/* Q rows of a tile: qf[r][d_pad] f32 (rotated when asked), then the kernel's operand. */
static void load_q(const fa_run *run, const fa_tile *t, float *qf) {
    const fa_attn_plan *pl = run->pl;
    const fa_item *it = &t->rows;
    const fa_seq *sq = &pl->seqs[it->b];
    int64_t d = pl->p->d, d_pad = run->L->d_pad, m = (int64_t)it->ng * it->nq;
    for (int64_t r = 0; r < m; ++r) {
        int64_t i = it->i0 + r % it->nq, h = head_of(run, it, r);
        const char *src = pl->q + (sq->q_off + i * pl->q_row + h * pl->q_head) * (int64_t)run->esize;
        float *dst = qf + r * d_pad;
        run->kern->load_row(pl->p->dtype, src, dst, d);
        for (int64_t c = d; c < d_pad; ++c) dst[c] = 0.0f;
        if (pl->p->rotary_dim > 0)
            fa_rotate_row(pl->p, pl->rot_cos, pl->rot_cos_row, pl->rot_sin, pl->rot_sin_row, dst,
                          sq->rotary_pos + (pl->rot_q_per_row ? i : 0));
    }
    run->kern->prep_q(qf, (int)m, (int)d, (int)d_pad, t->qop);
}

/* Decode items: reads one byte of every cache line of block j0's rows of K (v = false) or V over
 * the item's kv heads [hk, hk + nk), in memory order (a dense cache's block is one run): the
 * lines arrive as one stream and the packing of each head that follows finds them in the cache
 * (volatile: the values are not used, the loads must stay). */
static void warm_block(const fa_run *run, const fa_item *it, int64_t j0, bool v) {
    const fa_attn_plan *pl = run->pl;
    const fa_seq *sq = &pl->seqs[it->b];
    int64_t n = sq->s_k - j0 < FA_BLOCK_N ? sq->s_k - j0 : FA_BLOCK_N;
    int64_t head_st = v ? pl->v_head : pl->k_head, d = v ? pl->p->d_v : pl->p->d;
    int64_t bytes = ((it->nk - 1) * head_st + d) * (int64_t)run->esize;
    for (int64_t j = 0; j < n; ++j) {
        const volatile uint8_t *src = (const volatile uint8_t *)(
            v ? key_row(run, sq, pl->v, sq->v_off, pl->v_row, pl->v_page, it->hk * head_st, j0 + j)
              : key_row(run, sq, pl->k, sq->k_off, pl->k_row, pl->k_page, it->hk * head_st, j0 + j));
        for (int64_t c = 0; c < bytes; c += 64) (void)src[c];
        (void)src[bytes - 1]; /* the last line, when the run does not start on a line */
    }
}

/* Rows [j0, j0 + FA_BLOCK_N) ∩ [0, s_k) of K (v = false) or V packed into the kernel panel
 * (zero padded): K as the QK operand, or as plain rows for qk_rows (rowwise); V as the PV one. */
static void load_block(const fa_run *run, const fa_item *it, const fa_scratch *w, int64_t j0,
                       bool rowwise, bool v) {
    const fa_attn_plan *pl = run->pl;
    const fa_problem *p = pl->p;
    const fa_seq *sq = &pl->seqs[it->b];
    int64_t n = sq->s_k - j0 < FA_BLOCK_N ? sq->s_k - j0 : FA_BLOCK_N;
    const void *rows[FA_BLOCK_N];
    for (int64_t j = 0; j < n; ++j)
        rows[j] = v ? key_row(run, sq, pl->v, sq->v_off, pl->v_row, pl->v_page, it->hk * pl->v_head, j0 + j)
                    : key_row(run, sq, pl->k, sq->k_off, pl->k_row, pl->k_page, it->hk * pl->k_head, j0 + j);
    if (v)
        run->kern->pack_v(p->dtype, rows, (int)n, (int)p->d_v, (int)run->L->dv_pad, w->vp);
    else if (rowwise)
        run->kern->pack_v(p->dtype, rows, (int)n, (int)p->d, (int)run->L->d_pad, w->kp);
    else
        run->kern->pack_k(p->dtype, rows, (int)n, (int)p->d, (int)run->L->d_pad, w->kp);
}

/* ---------------------------------------------------------------- score epilogues */
/* Scores of the tile into base 2 with softcap, ALiBi and masks (the general path). */
static void scores_full(const fa_run *run, const fa_item *it, float *s, int64_t j0) {
    const fa_attn_plan *pl = run->pl;
    const fa_problem *p = pl->p;
    const fa_seq *sq = &pl->seqs[it->b];
    for (int64_t r = 0; r < (int64_t)it->ng * it->nq; ++r) {
        int64_t i = it->i0 + r % it->nq, h = head_of(run, it, r);
        int64_t lo = key_lo(p, sq, i), hi = key_hi(p, sq, i), diag = i + sq->s_k - sq->s_q;
        float slope = pl->alibi ? pl->alibi[it->b * pl->alibi_batch + h] : 0.0f;
        float *row = s + r * FA_BLOCK_N;
        for (int64_t j = 0; j < FA_BLOCK_N; ++j) {
            int64_t jj = j0 + j;
            if (jj < lo || jj >= hi) {
                row[j] = -INFINITY;
                continue;
            }
            float x = row[j] * p->scale;
            if (p->softcap > 0.0f) x = p->softcap * tanhf(x / p->softcap);
            if (pl->alibi)
                x += p->is_causal ? slope * (float)jj : -slope * (float)llabs(diag - jj);
            row[j] = x * FA_LOG2E;
        }
    }
}

/* Raw scores stay raw; invisible keys become -inf (boundary blocks only). */
static void scores_mask(const fa_run *run, const fa_item *it, float *s, int64_t j0) {
    const fa_problem *p = run->pl->p;
    const fa_seq *sq = &run->pl->seqs[it->b];
    for (int64_t r = 0; r < (int64_t)it->ng * it->nq; ++r) {
        int64_t i = it->i0 + r % it->nq;
        int64_t lo = key_lo(p, sq, i) - j0, hi = key_hi(p, sq, i) - j0;
        /* clamped to the block as ints, so that the select below vectorises */
        int l = lo < 0 ? 0 : lo > FA_BLOCK_N ? FA_BLOCK_N : (int)lo;
        int h = hi < 0 ? 0 : hi > FA_BLOCK_N ? FA_BLOCK_N : (int)hi;
        float *row = s + r * FA_BLOCK_N;
        for (int j = 0; j < FA_BLOCK_N; ++j) row[j] = j < l || j >= h ? -INFINITY : row[j];
    }
}

/* Does some row of the item see only part of block [j0, j0 + FA_BLOCK_N)? */
static bool block_needs_mask(const fa_problem *p, const fa_seq *sq, const fa_item *it, int64_t j0) {
    int64_t last = it->i0 + it->nq - 1;
    return j0 + FA_BLOCK_N > sq->s_k || j0 < key_lo(p, sq, last) ||
           j0 + FA_BLOCK_N > key_hi(p, sq, it->i0);
}

/* ---------------------------------------------------------------- softmax, dropout */
/* Zero the dropped entries of P (the scaling by 1 / (1 - p) happens once at the end). */
static void apply_dropout(const fa_run *run, const fa_item *it, float *s, int64_t j0) {
    const fa_problem *p = run->pl->p;
    uint32_t threshold = fa_dropout_threshold(p->dropout_p);
    for (int64_t r = 0; r < (int64_t)it->ng * it->nq; ++r) {
        int64_t i = it->i0 + r % it->nq, h = head_of(run, it, r);
        uint32_t bh = (uint32_t)(it->b * p->nheads + h);
        float *row = s + r * FA_BLOCK_N;
        for (int64_t j = 0; j < FA_BLOCK_N; j += 4) {
            fa_philox_u32x4 words = fa_dropout_words(p->opts.rng_seed, p->opts.rng_offset, bh,
                                                     (uint32_t)i, (uint32_t)((j0 + j) / 4));
            for (int u = 0; u < 4; ++u)
                if (words.x[u] < threshold) row[j + u] = 0.0f;
        }
    }
}

/* ---------------------------------------------------------------- one work item */
static void store_out_row(const fa_run *run, const fa_item *it, int64_t r, const float *o,
                          float lse) {
    const fa_attn_plan *pl = run->pl;
    const fa_seq *sq = &pl->seqs[it->b];
    int64_t i = it->i0 + r % it->nq, h = head_of(run, it, r);
    char *dst = pl->out + (sq->o_off + i * pl->o_row + h * pl->o_head) * (int64_t)run->esize;
    run->kern->store_row(pl->p->dtype, o, dst, pl->p->d_v);
    pl->lse[sq->lse_off + i * pl->lse_row + h * pl->lse_head] = lse;
}

/* acc / l (times the dropout scale) into out; lse = ln(2) * (m + log2 l). */
static void finish_rows(const fa_run *run, const fa_tile *t) {
    float keep_scale = 1.0f / (1.0f - run->pl->p->dropout_p);
    for (int64_t r = 0; r < (int64_t)t->rows.ng * t->rows.nq; ++r) {
        float *acc = t->acc + r * run->L->dv_pad;
        bool empty = t->m[r] == -INFINITY;
        float inv = empty ? 0.0f : keep_scale / t->l[r];
        for (int64_t c = 0; c < run->pl->p->d_v; ++c) acc[c] *= inv;
        store_out_row(run, &t->rows, r, acc, empty ? INFINITY : (t->m[r] + log2f(t->l[r])) * FA_LN2);
    }
}

/* Partial of (item, split) from item row row0: rows of [o (dv_pad) | lse2 (base 2, -inf when
 * empty)]. */
static float *partial_of(const fa_run *run, int64_t item, int64_t split, int64_t row0) {
    size_t rec = (size_t)(run->L->dv_pad + 1);
    return run->partials + ((size_t)(item * run->L->splits + split) * FA_ITEM_ROWS + (size_t)row0) * rec;
}

static void write_partial(const fa_run *run, const fa_tile *t, float *part) {
    int64_t dv_pad = run->L->dv_pad;
    for (int64_t r = 0; r < (int64_t)t->rows.ng * t->rows.nq; ++r) {
        float *o = part + r * (dv_pad + 1);
        bool empty = t->m[r] == -INFINITY;
        float inv = empty ? 0.0f : 1.0f / t->l[r];
        for (int64_t c = 0; c < dv_pad; ++c) o[c] = t->acc[r * dv_pad + c] * inv;
        o[dv_pad] = empty ? -INFINITY : t->m[r] + log2f(t->l[r]);
    }
}

/* Tiles of an item (rows [i0 + k * nq_max, ...)), with their state in the thread's scratch;
 * returns how many. */
static int make_tiles(const fa_run *run, const fa_item *it, const fa_scratch *w,
                      fa_tile tiles[FA_MAX_KV]) {
    int n = 0;
    int64_t row0 = 0;
    for (int64_t i0 = it->i0, k = 0; k < it->nk && i0 < it->i0 + it->nq; ++n) {
        fa_tile *t = &tiles[n];
        t->rows = *it;
        t->rows.hk = it->hk + (int32_t)k;
        t->rows.nk = 1;
        t->rows.i0 = i0;
        t->rows.nq = it->i0 + it->nq - i0 < run->L->nq_max ? it->i0 + it->nq - i0 : run->L->nq_max;
        if (it->nk > 1) ++k; /* the next kv head, same rows */
        else i0 += run->L->nq_max;
        int64_t m = (int64_t)t->rows.ng * t->rows.nq;
        t->row0 = row0;
        t->qop = w->qop + row0 * run->L->d_pad;
        t->acc = w->acc + row0 * run->L->dv_pad;
        t->m = w->m + row0;
        t->l = w->l + row0;
        row0 += m; /* <= FA_ITEM_ROWS: FA_SUB tiles, or nk_max tiles of the layout's rows */
        for (int64_t r = 0; r < m; ++r) {
            t->m[r] = -INFINITY;
            t->l[r] = 0.0f;
        }
        memset(t->acc, 0, (size_t)(m * run->L->dv_pad) * sizeof(float));
    }
    return n;
}

/* One kv block for one tile, with K packed in w->kp: s[m][FA_BLOCK_N] = P after S = Q Kᵀ, the
 * epilogue, the online softmax (which rescales acc) and dropout. */
static void attend_scores(const fa_run *run, const fa_tile *t, const fa_scratch *w, float *s,
                          int64_t j0, bool rowwise) {
    const fa_problem *p = run->pl->p;
    const fa_seq *sq = &run->pl->seqs[t->rows.b];
    int m = t->rows.ng * (int)t->rows.nq;
    if (rowwise)
        run->kern->qk_rows(t->qop, w->kp, m, (int)run->L->d_pad, s);
    else
        run->kern->qk(t->qop, w->kp, m, (int)run->L->d_pad, s);
    float c = p->scale * FA_LOG2E;
    if (p->softcap > 0.0f || p->alibi != FA_ALIBI_NONE || !(p->scale > 0.0f)) {
        scores_full(run, &t->rows, s, j0);
        c = 1.0f;
    } else if (block_needs_mask(p, sq, &t->rows, j0)) {
        scores_mask(run, &t->rows, s, j0);
    }
    run->kern->softmax(s, m, c, t->m, t->l, t->acc, (int)run->L->dv_pad);
    if (p->dropout_p > 0.0f) apply_dropout(run, &t->rows, s, j0);
}

static void attend_pv(const fa_run *run, const fa_tile *t, const fa_scratch *w, const float *s) {
    run->kern->pv(s, w->vp, t->rows.ng * (int)t->rows.nq, (int)run->L->dv_pad, t->acc);
}

/* Decode item, one kv block over all its kv heads: K's rows warmed, each head's scores (P into
 * its own rows of w->s), then V's rows warmed and each head's acc += P V. Only one of K and V
 * needs to stay in the cache at a time. */
static void attend_heads(const fa_run *run, const fa_item *it, const fa_tile *tiles, int n_tiles,
                         const int64_t *lo_t, const int64_t *hi_t, const fa_scratch *w,
                         int64_t j0, bool rowwise) {
    warm_block(run, it, j0, false);
    for (int k = 0; k < n_tiles; ++k)
        if (j0 < hi_t[k] && j0 + FA_BLOCK_N > lo_t[k]) {
            load_block(run, &tiles[k].rows, w, j0, rowwise, false);
            attend_scores(run, &tiles[k], w, w->s + tiles[k].row0 * FA_BLOCK_N, j0, rowwise);
        }
    warm_block(run, it, j0, true);
    for (int k = 0; k < n_tiles; ++k)
        if (j0 < hi_t[k] && j0 + FA_BLOCK_N > lo_t[k]) {
            load_block(run, &tiles[k].rows, w, j0, rowwise, true);
            attend_pv(run, &tiles[k], w, w->s + tiles[k].row0 * FA_BLOCK_N);
        }
}

static void attend(const fa_run *run, int64_t item, int64_t split, int thread) {
    const fa_item *it = &run->items[item];
    const fa_problem *p = run->pl->p;
    const fa_seq *sq = &run->pl->seqs[it->b];
    fa_scratch w = scratch_of(run, thread);
    fa_tile tiles[FA_MAX_KV];
    int n_tiles = make_tiles(run, it, &w, tiles);
    int64_t lo, hi, lo_t[FA_MAX_KV], hi_t[FA_MAX_KV];
    item_key_range(p, sq, it, &lo, &hi);
    int64_t blk0 = lo / FA_BLOCK_N, nblk = hi > lo ? ceil_div(hi, FA_BLOCK_N) - blk0 : 0;
    int64_t splits = run->L->splits;
    int64_t first = blk0 + nblk * split / splits, last = blk0 + nblk * (split + 1) / splits;
    for (int k = 0; k < n_tiles && first < last; ++k) {
        item_key_range(p, sq, &tiles[k].rows, &lo_t[k], &hi_t[k]);
        load_q(run, &tiles[k], w.qf);
    }
    /* tiles of one or two rows: qk_rows (then every tile of the item has that many rows) */
    bool rowwise = run->kern->qk_rows && (n_tiles == 1 || it->nk > 1) &&
                   tiles[0].rows.ng * tiles[0].rows.nq <= FA_ROWWISE_M;
    for (int64_t blk = first; blk < last; ++blk) {
        int64_t j0 = blk * FA_BLOCK_N;
        if (it->nk > 1) {
            attend_heads(run, it, tiles, n_tiles, lo_t, hi_t, &w, j0, rowwise);
            continue;
        }
        load_block(run, it, &w, j0, rowwise, false); /* shared by the tiles */
        load_block(run, it, &w, j0, rowwise, true);
        for (int k = 0; k < n_tiles; ++k)
            if (j0 < hi_t[k] && j0 + FA_BLOCK_N > lo_t[k]) {
                attend_scores(run, &tiles[k], &w, w.s, j0, rowwise);
                attend_pv(run, &tiles[k], &w, w.s);
            }
    }
    for (int k = 0; k < n_tiles; ++k) {
        if (splits > 1)
            write_partial(run, &tiles[k], partial_of(run, item, split, tiles[k].row0));
        else
            finish_rows(run, &tiles[k]);
    }
}

static void attend_task(void *arg, int64_t task, int thread) {
    const fa_run *run = arg;
    if (run->kern->prepare) run->kern->prepare();
    attend(run, task / run->L->splits, task % run->L->splits, thread);
    if (run->kern->release) run->kern->release();
}

/* Merge row r of tile t over the splits by their LSE. */
static void combine_row(const fa_run *run, int64_t item, const fa_tile *t, int64_t r,
                        float *o) {
    int64_t dv_pad = run->L->dv_pad, rec = dv_pad + 1;
    float top = -INFINITY;
    for (int64_t s = 0; s < run->L->splits; ++s) {
        float lse2 = partial_of(run, item, s, t->row0)[r * rec + dv_pad];
        top = lse2 > top ? lse2 : top;
    }
    memset(o, 0, (size_t)dv_pad * sizeof(float));
    if (top == -INFINITY) {
        store_out_row(run, &t->rows, r, o, INFINITY);
        return;
    }
    float total = 0.0f;
    for (int64_t s = 0; s < run->L->splits; ++s) {
        const float *part = partial_of(run, item, s, t->row0) + r * rec;
        float weight = exp2f(part[dv_pad] - top);
        if (weight == 0.0f) continue;
        total += weight;
        for (int64_t c = 0; c < dv_pad; ++c) o[c] += weight * part[c];
    }
    float keep_scale = 1.0f / (1.0f - run->pl->p->dropout_p);
    for (int64_t c = 0; c < dv_pad; ++c) o[c] *= keep_scale / total;
    store_out_row(run, &t->rows, r, o, (top + log2f(total)) * FA_LN2);
}

static void combine_task(void *arg, int64_t item, int thread) {
    const fa_run *run = arg;
    fa_scratch w = scratch_of(run, thread);
    fa_tile tiles[FA_MAX_KV];
    int n_tiles = make_tiles(run, &run->items[item], &w, tiles);
    for (int k = 0; k < n_tiles; ++k)
        for (int64_t r = 0; r < (int64_t)tiles[k].rows.ng * tiles[k].rows.nq; ++r)
            combine_row(run, item, &tiles[k], r, w.row);
}

/* ---------------------------------------------------------------- attn_probs (testing) */
static bool dropped(const fa_problem *p, int64_t b, int64_t h, int64_t i, int64_t j) {
    fa_philox_u32x4 words = fa_dropout_words(p->opts.rng_seed, p->opts.rng_offset,
                                             (uint32_t)(b * p->nheads + h), (uint32_t)i,
                                             (uint32_t)(j / 4));
    return words.x[j % 4] < fa_dropout_threshold(p->dropout_p);
}

/* exp(s - lse) of one visible (i, j), recomputed in f32 from the inputs. */
static float prob_of(const fa_run *run, const fa_seq *sq, int64_t b, int64_t h, int64_t i,
                     int64_t j, const float *q, float *k) {
    const fa_attn_plan *pl = run->pl;
    const fa_problem *p = pl->p;
    int64_t hk = h / (p->nheads / p->nheads_k);
    float lse = pl->lse[sq->lse_off + i * pl->lse_row + h * pl->lse_head];
    if (j < key_lo(p, sq, i) || j >= key_hi(p, sq, i) || lse == INFINITY) return 0.0f;
    fa_load_row_f32(p->dtype, key_row(run, sq, pl->k, sq->k_off, pl->k_row, pl->k_page, hk * pl->k_head, j),
                    k, p->d);
    float dot = 0.0f;
    for (int64_t c = 0; c < p->d; ++c) dot += q[c] * k[c];
    float x = dot * p->scale;
    if (p->softcap > 0.0f) x = p->softcap * tanhf(x / p->softcap);
    if (pl->alibi) {
        float slope = pl->alibi[b * pl->alibi_batch + h];
        x += p->is_causal ? slope * (float)j : -slope * (float)llabs(i + sq->s_k - sq->s_q - j);
    }
    return expf(x - lse);
}

static void probs_task(void *arg, int64_t bh, int thread) {
    const fa_run *run = arg;
    const fa_attn_plan *pl = run->pl;
    const fa_problem *p = pl->p;
    int64_t b = bh / p->nheads, h = bh % p->nheads;
    const fa_seq *sq = &pl->seqs[b];
    fa_scratch w = scratch_of(run, thread);
    size_t es = run->esize;
    for (int64_t i = 0; i < pl->probs_rows; ++i) {
        if (i < sq->s_q)
            fa_load_row_f32(p->dtype, pl->q + (sq->q_off + i * pl->q_row + h * pl->q_head) * (int64_t)es,
                            w.qf, p->d);
        for (int64_t j = 0; j < pl->probs_cols; ++j) {
            float v = 0.0f;
            if (i < sq->s_q && j < sq->s_k) {
                v = prob_of(run, sq, b, h, i, j, w.qf, w.row);
                if (p->dropout_p > 0.0f && dropped(p, b, h, i, j)) v = -v;
            }
            const int64_t *st = pl->probs_stride;
            fa_store_row_f32(p->dtype, &v, pl->probs + (b * st[0] + h * st[1] + i * st[2] + j * st[3]) * (int64_t)es, 1);
        }
    }
}

/* ---------------------------------------------------------------- entry */
/* bf16 inputs run on AMX tiles where granted, else on vdpbf16ps with AVX512_BF16; f16 and f32
 * (and bf16 elsewhere) on f32 FMAs. Tiles of one or two rows (decode without GQA) have too
 * little to multiply for 16-row AMX tiles or K panels: they take the f32 set's dot products. */
static const fa_fwd_kernels *pick_kernels(fa_cpu_isa isa, const fa_problem *p) {
#if defined(FA_HAVE_X86)
    bool few_rows = p->nheads / p->nheads_k * p->max_seqlen_q <= FA_ROWWISE_M;
    if (isa == FA_ISA_AVX512_BF16 && p->dtype == FA_DTYPE_BF16 && !few_rows)
        return fa_cpu_amx_usable() ? &fa_fwd_kernels_amx_bf16 : &fa_fwd_kernels_avx512_bf16;
    if (isa == FA_ISA_AVX512 || isa == FA_ISA_AVX512_BF16) return &fa_fwd_kernels_avx512;
    if (isa == FA_ISA_AVX2) return &fa_fwd_kernels_avx2;
#endif
    (void)isa;
    (void)p;
    return &fa_fwd_kernels_scalar;
}

fa_status fa_engine_run(fa_pool *pool, const fa_attn_plan *pl, int64_t total_q, void *ws,
                        size_t ws_bytes) {
    const fa_fwd_kernels *kern = pick_kernels(pl->isa, pl->p);
    fa_layout L = make_layout(pl->p, kern, pl->num_threads, total_q);
    FA_RETURN_IF(ws_bytes < L.total, FA_ERR_WORKSPACE_TOO_SMALL,
                 "cpu forward: workspace_bytes must be >= %zu (got %zu)", L.total, ws_bytes);
    char *base = aligned_base(ws);
    fa_run run = {pl, &L, kern, (fa_item *)(base + L.items_off),
                  (float *)(base + L.partial_off), base + L.scratch_off, fa_dtype_size(pl->p->dtype)};
    int64_t n_items = build_items(pl, &L, (fa_item *)(base + L.items_off));
    FA_RETURN_IF(n_items < 0, FA_ERR_INTERNAL, "cpu forward: more work items than the %lld planned",
                 (long long)L.max_items);
    fa_pool_run(pool, n_items * L.splits, attend_task, &run);
    if (L.splits > 1) fa_pool_run(pool, n_items, combine_task, &run);
    if (pl->probs) fa_pool_run(pool, pl->p->batch * pl->p->nheads, probs_task, &run);
    return FA_OK;
}
