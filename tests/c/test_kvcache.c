/*
 * test_kvcache.c — fa_fwd_kvcache against the float64 reference: dense and paged caches (page
 * sizes 1, 16, 256), appended k_new/v_new, rotary (interleaved and GPT-NeoX, rotary_dim < d),
 * cache_batch_idx, cache_leftpad, GQA, d != d_v, masks, ALiBi, softcap, num_splits 1 / 0 / 3,
 * long caches with many splits.
 * Besides out and lse (flash-attn's rule: 2x the plain error, 3x with rotary), the updated
 * caches must hold exactly the appended rows (k within an ulp of the rotation) and nothing else
 * may change. `test_kvcache isa` runs the short grid used per ISA.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cases.h"
#include "ref.h"

static const int32_t k_dtypes[3] = {FA_DTYPE_F32, FA_DTYPE_F16, FA_DTYPE_BF16};

typedef struct kvcfg {
    int32_t dtype;
    int64_t batch, s_q, s_cache, s_new, h, h_k, d, d_v; /* s_cache: capacity of a row */
    int pad;
    bool causal;
    int wl, wr;
    float softcap;
    int alibi;            /* 0, 1 (h) or 2 (b, h) */
    int64_t rotary_dim;   /* 0 = none (needs s_new > 0) */
    bool interleaved;
    int sin_pad;          /* rotary_sin's own stride padding (rotary_cos uses pad) */
    bool seqlens;         /* cache_seqlens given (forced with s_new) */
    bool batch_idx, leftpad;
    int page_size;        /* > 0: paged */
    int num_splits;
} kvcfg;

static kvcfg kv_basic(int32_t dtype, int64_t batch, int64_t s_q, int64_t s_cache, int64_t s_new,
                      int64_t h, int64_t h_k, int64_t d) {
    kvcfg c;
    memset(&c, 0, sizeof c);
    c.dtype = dtype, c.batch = batch, c.s_q = s_q, c.s_cache = s_cache, c.s_new = s_new;
    c.h = h, c.h_k = h_k, c.d = c.d_v = d;
    c.wl = c.wr = -1;
    c.seqlens = s_new > 0;
    c.interleaved = true;
    return c;
}

static void kv_describe(const kvcfg *c, char *buf, size_t n) {
    snprintf(buf, n,
             "kvcache %s b%lld sq%lld cache%lld new%lld h%lld/%lld d%lld/%lld pad%d%s win(%d,%d)%s%s "
             "rot%lld%s%s%s%s page%d splits%d",
             dtype_name(c->dtype), (long long)c->batch, (long long)c->s_q, (long long)c->s_cache,
             (long long)c->s_new, (long long)c->h, (long long)c->h_k, (long long)c->d,
             (long long)c->d_v, c->pad, c->causal ? " causal" : "", c->wl, c->wr,
             c->softcap > 0 ? " softcap" : "", c->alibi ? " alibi" : "", (long long)c->rotary_dim,
             c->rotary_dim ? (c->interleaved ? "i" : "n") : "", c->seqlens ? " seqlens" : "",
             c->batch_idx ? " batch_idx" : "", c->leftpad ? " leftpad" : "", c->page_size,
             c->num_splits);
}

typedef struct kvcase {
    kvcfg c;
    fa_options o;
    fa_kvcache_args a;
    tt q, k_cache, v_cache, k_new, v_new, cos, sin, alibi, out, lse;
    int32_t *seqlens, *batch_idx, *leftpad, *block_table;
} kvcase;

/* Rotary tables as GPT-style models build them: angle pos * 10000^(-2c / rotary_dim). */
static void fill_rotary(kvcase *kc, int64_t s_ro) {
    int64_t half = kc->c.rotary_dim / 2;
    kc->cos = TT(kc->c.dtype, kc->c.pad, s_ro, half);
    kc->sin = TT(kc->c.dtype, kc->c.pad + kc->c.sin_pad, s_ro, half);
    for (int64_t p = 0; p < s_ro; ++p)
        for (int64_t c = 0; c < half; ++c) {
            double angle = (double)p * pow(10000.0, -2.0 * (double)c / (double)kc->c.rotary_dim);
            PUT(&kc->cos.v, cos(angle), p, c);
            PUT(&kc->sin.v, sin(angle), p, c);
        }
    kc->a.rotary_cos = kc->cos.v, kc->a.rotary_sin = kc->sin.v;
}

/* Caches: dense rows (b_cache = batch + 2 with cache_batch_idx, a random injective map) or a
 * shuffled page pool; cache_seqlens leave room for s_new; leftpad <= cache_seqlens. */
static kvcase kv_make(const kvcfg *c) {
    kvcase kc;
    memset(&kc, 0, sizeof kc);
    kc.c = *c;
    int64_t B = c->batch;
    int32_t dt = c->dtype;
    kc.o = fa_options_default();
    kc.o.causal = c->causal, kc.o.window_left = c->wl, kc.o.window_right = c->wr;
    kc.o.softcap = c->softcap;
    kc.o.num_splits = c->num_splits;
    kc.o.rotary_interleaved = c->interleaved;
    fa_kvcache_args *a = &kc.a;
    kc.q = TT(dt, c->pad, B, c->s_q, c->h, c->d);
    kc.out = TT(dt, c->pad, B, c->s_q, c->h, c->d_v);
    kc.lse = TT(FA_DTYPE_F32, c->pad, B, c->h, c->s_q);
    kc.seqlens = calloc((size_t)B, sizeof(int32_t));
    kc.batch_idx = calloc((size_t)B, sizeof(int32_t));
    kc.leftpad = calloc((size_t)B, sizeof(int32_t));
    if (c->page_size > 0) {
        int64_t ps = c->page_size, max_blocks = (c->s_cache + ps - 1) / ps;
        int64_t num_blocks = B * max_blocks + 1;
        kc.k_cache = TT(dt, c->pad, num_blocks, ps, c->h_k, c->d);
        kc.v_cache = TT(dt, c->pad, num_blocks, ps, c->h_k, c->d_v);
        kc.block_table = malloc(sizeof(int32_t) * (size_t)(B * max_blocks));
        int64_t *perm = rng_permutation(num_blocks);
        for (int64_t i = 0; i < B * max_blocks; ++i) kc.block_table[i] = (int32_t)perm[i];
        free(perm);
        a->block_table = i32_tensor(kc.block_table, 2, B, max_blocks);
    } else {
        int64_t b_cache = c->batch_idx ? B + 2 : B;
        kc.k_cache = TT(dt, c->pad, b_cache, c->s_cache, c->h_k, c->d);
        kc.v_cache = TT(dt, c->pad, b_cache, c->s_cache, c->h_k, c->d_v);
        int64_t *perm = rng_permutation(b_cache); /* rows used with cache_batch_idx */
        for (int64_t b = 0; b < B; ++b) kc.batch_idx[b] = (int32_t)perm[b];
        free(perm);
        if (c->batch_idx) a->cache_batch_idx = i32_tensor(kc.batch_idx, 1, B, 0);
    }
    int64_t capacity = c->page_size > 0 ? a->block_table.shape[1] * c->page_size : c->s_cache;
    for (int64_t b = 0; b < B; ++b) {
        kc.seqlens[b] = (int32_t)rng_int(0, capacity - c->s_new);
        if (b == 0) kc.seqlens[b] = (int32_t)(capacity - c->s_new); /* a full row */
        if (b == 1) kc.seqlens[b] = 0;                              /* an empty one */
        kc.leftpad[b] = c->leftpad ? (int32_t)rng_int(0, kc.seqlens[b]) : 0;
    }
    if (c->seqlens) a->cache_seqlens = i32_tensor(kc.seqlens, 1, B, 0);
    if (c->leftpad) a->cache_leftpad = i32_tensor(kc.leftpad, 1, B, 0);
    tt_randn(&kc.q, c->softcap > 0 ? c->softcap / 4 : 1.0);
    tt_randn(&kc.k_cache, 1.0);
    tt_randn(&kc.v_cache, 1.0);
    if (c->s_new > 0) {
        kc.k_new = TT(dt, c->pad, B, c->s_new, c->h_k, c->d);
        kc.v_new = TT(dt, c->pad, B, c->s_new, c->h_k, c->d_v);
        tt_randn(&kc.k_new, 1.0);
        tt_randn(&kc.v_new, 1.0);
        a->k_new = kc.k_new.v, a->v_new = kc.v_new.v;
    }
    /* q rows sit at positions up to cache_seqlens + s_q - 1, past the capacity when s_q > s_new */
    if (c->rotary_dim > 0) fill_rotary(&kc, capacity + c->s_q);
    if (c->alibi) {
        kc.alibi = alibi_slopes(c->alibi == 2, B, c->h);
        a->alibi_slopes = kc.alibi.v;
    }
    a->q = kc.q.v, a->k_cache = kc.k_cache.v, a->v_cache = kc.v_cache.v;
    a->out = kc.out.v, a->softmax_lse = kc.lse.v;
    return kc;
}

static void kv_free(kvcase *kc) {
    tt *all[] = {&kc->q, &kc->k_cache, &kc->v_cache, &kc->k_new, &kc->v_new, &kc->cos,
                 &kc->sin, &kc->alibi, &kc->out, &kc->lse};
    for (size_t i = 0; i < sizeof all / sizeof all[0]; ++i) tt_free(all[i]);
    free(kc->seqlens), free(kc->batch_idx), free(kc->leftpad), free(kc->block_table);
}

static bool kv_run(kvcase *kc, fa_context *ctx, const char *desc) {
    tt_poison(&kc->out);
    tt_poison(&kc->lse);
    size_t bytes = 0;
    fa_status st = fa_fwd_kvcache_workspace_size(ctx, &kc->a, &kc->o, &bytes);
    void *ws = st == FA_OK ? alloc_workspace(bytes) : NULL;
    if (st == FA_OK) st = fa_fwd_kvcache(ctx, &kc->a, &kc->o, ws, bytes);
    free(ws);
    CHECK(st == FA_OK, "fa_fwd_kvcache(%s) -> %s: %s", desc, fa_status_string(st),
          fa_last_error_message());
    return st == FA_OK;
}

static tt f64_like(const tt *t) { return tt_make(TT_F64, 0, t->v.ndim, t->v.shape); }

/* Runs a case with num_splits 1, 0 and 3 (or only its own) and checks everything. */
static void kv_check(const kvcfg *c) {
    char desc[320], what[400];
    kv_describe(c, desc, sizeof desc);
    if (test_verbose()) printf("  %s\n", desc);
    kvcase kc = kv_make(c);
    tt r_out = f64_like(&kc.out), r_lse = f64_like(&kc.lse), p_out = f64_like(&kc.out),
       p_lse = f64_like(&kc.lse), r_k = f64_like(&kc.k_cache), r_v = f64_like(&kc.v_cache),
       p_k = f64_like(&kc.k_cache), p_v = f64_like(&kc.v_cache);
    ref_kvcache(&kc.a, &kc.o, TT_F64, &r_k.v, &r_v.v, &r_out.v, &r_lse.v);
    ref_kvcache(&kc.a, &kc.o, c->dtype, &p_k.v, &p_v.v, &p_out.v, &p_lse.v);
    /* 3x: flash-attn's kvcache test (rotary), FA3's tests (softcap) */
    double factor = c->rotary_dim || c->softcap > 0 ? 3 : 2;
    tt first = f64_like(&kc.out);
    for (int s = 0; s < 3; ++s) {
        kc.o.num_splits = s == 0 ? c->num_splits : s == 1 ? 1 : 3;
        if (s > 0 && (c->num_splits != 0 || test_quick())) break;
        if (!kv_run(&kc, test_ctx(), desc)) break;
        snprintf(what, sizeof what, "%s [splits %d] out", desc, kc.o.num_splits);
        check_rule(what, &kc.out.v, &r_out.v, &p_out.v, factor, softmax_floor(&r_lse.v, &r_out.v));
        snprintf(what, sizeof what, "%s [splits %d] lse", desc, kc.o.num_splits);
        check_rule(what, &kc.lse.v, &r_lse.v, &p_lse.v, factor, 1e-5);
        /* rerunning appends the same rows again, so the caches stay as expected */
        snprintf(what, sizeof what, "%s v_cache", desc);
        check_close(what, &kc.v_cache.v, &r_v.v, 0, 0);
        snprintf(what, sizeof what, "%s k_cache", desc);
        check_close(what, &kc.k_cache.v, &r_k.v, c->rotary_dim ? 8 * 0x1.0p-23 : 0,
                    c->rotary_dim ? dtype_eps(c->dtype) : 0);
        CHECK(tt_padding_intact(&kc.out) && tt_padding_intact(&kc.lse) &&
                  tt_padding_intact(&kc.k_cache) && tt_padding_intact(&kc.v_cache),
              "%s: padding around an output or cache was written", desc);
        if (s == 0) {
            tt_copy_values(&first, &kc.out.v);
        } else {
            /* splits change the order of sums and where p is rounded (bf16 kernels): a few
             * dtype ulps at the output's scale (each run is also held to the rule above) */
            double mag = tt_max_abs(&first.v);
            snprintf(what, sizeof what, "%s splits %d vs %d", desc, kc.o.num_splits, c->num_splits);
            check_close(what, &kc.out.v, &first.v, 4 * dtype_eps(c->dtype) * mag + 1e-6, 0);
        }
    }
    tt *all[] = {&r_out, &r_lse, &p_out, &p_lse, &r_k, &r_v, &p_k, &p_v, &first};
    for (size_t i = 0; i < sizeof all / sizeof all[0]; ++i) tt_free(all[i]);
    kv_free(&kc);
}

/* ---------------------------------------------------------------- tests */
static void test_decode(void) {
    for (int t = 0; t < 3; ++t)
        for (int v = 0; v < 4; ++v) {
            kvcfg c = kv_basic(k_dtypes[t], 4, 1, 150, v % 2, 6, v < 2 ? 2 : 1, 64);
            c.causal = v == 1;
            c.seqlens = v != 0;
            kv_check(&c);
        }
}

static void test_prefill_shapes(void) {
    const int64_t shapes[4][3] = {{7, 97, 7}, {16, 64, 3}, {33, 200, 0}, {5, 1025, 5}};
    const int64_t dims[4][2] = {{59, 59}, {128, 64}, {8, 111}, {256, 256}};
    for (int i = 0; i < 4; ++i)
        for (int t = 0; t < 3; ++t) {
            if (test_quick() && t != i % 3) continue;
            kvcfg c = kv_basic(k_dtypes[t], i == 3 ? 2 : 3, shapes[i][0], shapes[i][1],
                               shapes[i][2], 4, 2, dims[i][0]);
            c.d_v = dims[i][1];
            c.seqlens = true;
            c.causal = (i + t) % 2;
            kv_check(&c);
        }
}

static void test_options(void) {
    for (int t = 0; t < 3; ++t) {
        kvcfg base = kv_basic(k_dtypes[t], 3, 9, 120, 4, 6, 2, 48);
        kvcfg c = base;
        c.wl = 20, c.wr = 0;
        kv_check(&c);
        c = base, c.wl = 5, c.wr = 3;
        kv_check(&c);
        c = base, c.softcap = 20.0f, c.causal = true;
        kv_check(&c);
        c = base, c.alibi = 1, c.causal = true;
        kv_check(&c);
        c = base, c.alibi = 2;
        kv_check(&c);
        c = base, c.seqlens = false, c.s_new = 0; /* the whole cache */
        kv_check(&c);
    }
}

static void test_rotary(void) {
    for (int t = 0; t < 3; ++t)
        for (int v = 0; v < 4; ++v) {
            kvcfg c = kv_basic(k_dtypes[t], 3, v == 3 ? 1 : 6, 90, 6, 4, 2, 64);
            c.rotary_dim = v == 2 ? 64 : 32; /* rotary_dim < d, and = d */
            c.interleaved = v % 2;
            c.causal = v != 1; /* q rotated per row when causal, at cache_seqlens otherwise */
            c.leftpad = v == 3;
            kv_check(&c);
        }
    kvcfg c = kv_basic(FA_DTYPE_F16, 2, 4, 64, 4, 2, 2, 40);
    c.rotary_dim = 16, c.wl = 3, c.wr = 1, c.interleaved = false; /* local: per row */
    kv_check(&c);
}

/* rotary_cos and rotary_sin with different row strides: each must be read with its own. */
static void test_rotary_tables_with_own_strides(void) {
    kvcfg c = kv_basic(FA_DTYPE_F32, 2, 3, 40, 3, 2, 1, 16);
    c.rotary_dim = 8, c.causal = true, c.sin_pad = 5;
    kv_check(&c);
}

/* s_q > s_new under causal puts q rows at cache_seqlens + i >= the capacity: with a table of
 * exactly the capacity (flash-attn's minimum) those rows have no rotary entry. The library must
 * refuse (invalid argument) or stay inside the table; the padding after it is NaN, so reading
 * past it shows up in out (and ASan sees it in the sanitizer build). */
static void test_rotary_positions_past_the_table(void) {
    kvcfg c = kv_basic(FA_DTYPE_F32, 1, 6, 32, 2, 2, 2, 16);
    c.rotary_dim = 8, c.causal = true;
    kvcase kc = kv_make(&c);
    kc.seqlens[0] = 30; /* full: q rows at positions 30..35 */
    tt_free(&kc.cos), tt_free(&kc.sin);
    kc.c.rotary_dim = 8;
    fill_rotary(&kc, 32);
    size_t bytes = 0;
    fa_status st = fa_fwd_kvcache_workspace_size(test_ctx(), &kc.a, &kc.o, &bytes);
    void *ws = st == FA_OK ? alloc_workspace(bytes) : NULL;
    tt_poison(&kc.out);
    if (st == FA_OK) st = fa_fwd_kvcache(test_ctx(), &kc.a, &kc.o, ws, bytes);
    free(ws);
    CHECK(st == FA_OK || st == FA_ERR_INVALID_ARGUMENT, "rotary past the table: %s",
          fa_status_string(st));
    if (st == FA_OK)
        CHECK(!tt_has_nan(&kc.out.v) && !tt_has_nan(&kc.lse.v),
              "q rows at positions past rotary_cos.shape[0] read outside the table (NaN in out); "
              "validation should reject cache_seqlens + s_q > seqlen_ro when causal/local");
    kv_free(&kc);
}

static void test_batch_idx_and_leftpad(void) {
    for (int t = 0; t < 3; ++t) {
        kvcfg c = kv_basic(k_dtypes[t], 4, 5, 70, 3, 4, 1, 32);
        c.batch_idx = true, c.causal = t != 0;
        kv_check(&c);
        c.leftpad = true;
        kv_check(&c);
        c.batch_idx = false, c.alibi = 1;
        kv_check(&c);
        c.rotary_dim = 16, c.alibi = 0;
        kv_check(&c);
    }
}

static void test_paged(void) {
    const int pages[3] = {1, 16, 256};
    for (int p = 0; p < 3; ++p)
        for (int t = 0; t < 3; ++t) {
            kvcfg c = kv_basic(k_dtypes[t], 3, t == 0 ? 1 : 6, p == 2 ? 512 : 80, 3, 4, 2, 64);
            c.page_size = pages[p];
            c.causal = t != 1;
            c.rotary_dim = t == 2 ? 32 : 0;
            kv_check(&c);
        }
    /* the whole paged cache (no cache_seqlens), with ALiBi */
    kvcfg c = kv_basic(FA_DTYPE_BF16, 2, 3, 48, 0, 4, 1, 32);
    c.page_size = 16, c.alibi = 2, c.causal = true;
    kv_check(&c);
}

static void test_strided(void) {
    for (int t = 0; t < 3; ++t) {
        kvcfg c = kv_basic(k_dtypes[t], 3, 4, 50, 2, 4, 2, 32);
        c.pad = 3, c.causal = true, c.batch_idx = t == 1, c.page_size = t == 2 ? 16 : 0;
        c.rotary_dim = 16;
        kv_check(&c);
    }
}

/* The same call on views with padding in every stride: bit-identical out, lse and caches. */
static void test_strided_equals_contiguous(void) {
    for (int t = 0; t < 3; ++t) {
        kvcfg c = kv_basic(k_dtypes[t], 3, 5, 60, 3, 4, 2, 32);
        c.causal = true, c.rotary_dim = t == 1 ? 16 : 0, c.page_size = t == 2 ? 8 : 0;
        c.batch_idx = t == 0, c.leftpad = t == 0;
        char desc[320];
        kv_describe(&c, desc, sizeof desc);
        kvcase kc = kv_make(&c);
        kvcase sv = kc; /* shares the index arrays; every tensor becomes a padded copy */
        tt *dense[] = {&kc.q, &kc.k_cache, &kc.v_cache, &kc.k_new, &kc.v_new, &kc.cos, &kc.sin,
                       &kc.out, &kc.lse};
        tt *padded[] = {&sv.q, &sv.k_cache, &sv.v_cache, &sv.k_new, &sv.v_new, &sv.cos, &sv.sin,
                        &sv.out, &sv.lse};
        const int pads[] = {3, 2, 4, 2, 3, 2, 2, 4, 1}; /* cos and sin alike (see test_rotary) */
        int n = (int)(sizeof dense / sizeof dense[0]);
        for (int i = 0; i < n; ++i)
            *padded[i] = dense[i]->base ? tt_clone(&dense[i]->v, pads[i]) : *dense[i];
        sv.a.q = sv.q.v, sv.a.k_cache = sv.k_cache.v, sv.a.v_cache = sv.v_cache.v;
        sv.a.out = sv.out.v, sv.a.softmax_lse = sv.lse.v;
        if (c.s_new) sv.a.k_new = sv.k_new.v, sv.a.v_new = sv.v_new.v;
        if (c.rotary_dim) sv.a.rotary_cos = sv.cos.v, sv.a.rotary_sin = sv.sin.v;
        if (kv_run(&kc, test_ctx(), desc) && kv_run(&sv, test_ctx(), desc)) {
            CHECK(tt_bits_equal(&kc.out.v, &sv.out.v) && tt_bits_equal(&kc.lse.v, &sv.lse.v),
                  "%s: strided out/lse differ from contiguous (max diff %.3g)", desc,
                  max_abs_diff(&kc.out.v, &sv.out.v));
            CHECK(tt_bits_equal(&kc.k_cache.v, &sv.k_cache.v) &&
                      tt_bits_equal(&kc.v_cache.v, &sv.v_cache.v),
                  "%s: strided caches differ from contiguous ones", desc);
            for (int i = 0; i < n; ++i)
                CHECK(!padded[i]->base || tt_padding_intact(padded[i]),
                      "%s: padding of tensor %d written", desc, i);
        }
        for (int i = 0; i < n; ++i)
            if (dense[i]->base) tt_free(padded[i]);
        kv_free(&kc);
    }
}

/* Random combinations of every kvcache axis (FA_TEST_RANDOM of them). */
static void test_random_configs(void) {
    for (int i = random_case_count(16); i > 0; --i) {
        int64_t dims[6] = {8, 16, 40, 59, 64, 128};
        int64_t heads[3][2] = {{4, 4}, {6, 2}, {6, 1}};
        int hi = (int)rng_int(0, 2);
        int64_t d = dims[rng_int(0, 5)];
        kvcfg c = kv_basic(k_dtypes[rng_int(0, 2)], rng_int(1, 4), rng_int(1, 12),
                           rng_int(8, 120), rng_int(0, 6), heads[hi][0], heads[hi][1], d);
        c.d_v = rng_int(0, 2) ? d : dims[rng_int(0, 5)];
        c.pad = (int)rng_int(0, 1) * (int)rng_int(1, 3);
        c.causal = rng_int(0, 1);
        if (rng_int(0, 2) == 0) c.wl = (int)rng_int(1, 40), c.wr = (int)rng_int(-1, 10);
        c.softcap = rng_int(0, 3) ? 0 : 15.0f;
        c.alibi = (int)rng_int(0, 2);
        c.seqlens = c.s_new > 0 || rng_int(0, 1);
        if (c.s_new > 0 && rng_int(0, 1)) {
            c.rotary_dim = 2 * rng_int(1, d / 2 > 0 ? d / 2 : 1);
            c.interleaved = rng_int(0, 1);
        }
        c.page_size = rng_int(0, 2) ? 0 : (int)rng_int(1, 32);
        c.batch_idx = !c.page_size && rng_int(0, 1);
        c.leftpad = !c.page_size && rng_int(0, 2) == 0;
        c.num_splits = (int)rng_int(0, 4);
        kv_check(&c);
    }
}

/* Decode against long caches of odd lengths: on cuda the split-KV kernel with many splits
 * (heuristic, and forced counts that leave splits empty), GQA tiles of 4 to 64 packed rows
 * (MQA: 2 tiles, s_q 4 x 16 heads: 4), causal with s_q > 1, windows, softcap, ALiBi, paged
 * with odd page sizes, d != d_v, d 256. On cpu: items over many kv heads (MHA with more heads
 * than one item takes; d 256 where the stage holds a few heads), padded strides (heads not
 * adjacent), pages that break the runs of rows. */
static void test_long_decode(void) {
    static const struct {
        int64_t s_q, h, h_k, d, d_v, s_cache;
        int page, splits, wl;
        bool causal;
        float softcap;
        int alibi, pad;
    } cases[] = {
        {1, 40, 40, 64, 64, 1500, 0, 0, -1, false, 0.f, 0, 0},
        {2, 32, 16, 256, 256, 777, 5, 3, -1, true, 0.f, 0, 0},
        {1, 12, 6, 48, 48, 1300, 0, 0, -1, false, 0.f, 0, 3},
        {1, 16, 8, 64, 64, 1000, 3, 0, -1, false, 0.f, 1, 2},
        {1, 8, 2, 128, 128, 1601, 0, 0, -1, false, 0.f, 0, 0},
        {1, 32, 1, 64, 64, 1023, 16, 0, -1, false, 0.f, 0, 0},
        {4, 16, 1, 64, 64, 700, 0, 0, -1, true, 0.f, 0, 0},
        {2, 8, 2, 256, 256, 999, 0, 128, -1, true, 0.f, 0, 0},
        {1, 6, 2, 64, 128, 1100, 7, 5, -1, false, 0.f, 1, 0},
        {3, 4, 4, 96, 96, 901, 0, 0, 300, true, 30.f, 0, 0},
        {1, 8, 1, 32, 32, 2049, 1, 0, -1, false, 0.f, 2, 0},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; ++i)
        for (int t = 1; t < 3; ++t) {
            if (test_quick() && t != 1 + (int)i % 2) continue;
            kvcfg c = kv_basic(k_dtypes[t], 3, cases[i].s_q, cases[i].s_cache, 1, cases[i].h,
                               cases[i].h_k, cases[i].d);
            c.d_v = cases[i].d_v;
            c.page_size = cases[i].page, c.num_splits = cases[i].splits;
            c.causal = cases[i].causal, c.wl = cases[i].wl;
            if (c.wl >= 0) c.wr = 0;
            c.softcap = cases[i].softcap, c.alibi = cases[i].alibi, c.pad = cases[i].pad;
            kv_check(&c);
        }
}

static void test_isa_grid(void) {
    for (int t = 0; t < 3; ++t)
        for (int v = 0; v < 3; ++v) {
            kvcfg c = kv_basic(k_dtypes[t], 2, v == 0 ? 1 : 5, 100, 2, 4, 1, v == 2 ? 128 : 64);
            c.causal = v != 0, c.rotary_dim = v == 1 ? 32 : 0, c.page_size = v == 2 ? 16 : 0;
            c.num_splits = v;
            kv_check(&c);
        }
}

int main(int argc, char **argv) {
    static const test_case tests[] = {
        {"decode", test_decode},
        {"prefill_shapes", test_prefill_shapes},
        {"options", test_options},
        {"rotary", test_rotary},
        {"batch_idx_and_leftpad", test_batch_idx_and_leftpad},
        {"paged", test_paged},
        {"strided", test_strided},
        {"strided_equals_contiguous", test_strided_equals_contiguous},
        {"random_configs", test_random_configs},
        {"long_decode", test_long_decode},
        {"isa_grid", test_isa_grid},
        /* last: where these read out of bounds, ASan stops the program */
        {"rotary_tables_with_own_strides", test_rotary_tables_with_own_strides},
        {"rotary_positions_past_the_table", test_rotary_positions_past_the_table},
    };
    return test_main(argc, argv, tests, (int)(sizeof tests / sizeof tests[0]));
}
