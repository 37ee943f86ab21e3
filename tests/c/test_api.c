/*
 * test_api.c — the API surface: every class of invalid input returns the right status with a
 * message naming the argument (and never crashes), workspace too small, unavailable backends;
 * status strings, versions, ABI introspection, options defaults, contexts.
 */
#include <math.h>
#include <pthread.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cases.h"

/* ---------------------------------------------------------------- helpers */
static void expect(fa_status got, fa_status want, const char *needle, const char *what) {
    const char *msg = fa_last_error_message();
    CHECK(got == want, "%s: got %s (%s), want %s", what, fa_status_string(got), msg,
          fa_status_string(want));
    if (want != FA_OK) {
        CHECK(msg && strstr(msg, needle), "%s: message \"%s\" does not name \"%s\"", what,
              msg ? msg : "(null)", needle);
    } else {
        CHECK(msg && msg[0] == '\0', "%s: message \"%s\" after a success", what, msg ? msg : "");
    }
}

/* Runs the workspace query and the call itself (with a generous workspace when the call
 * must fail, so that only the argument can be the reason); both must give `want`. */
#define EXPECT_OP(size_fn, run_fn, a, o, want, needle, what)                                    \
    do {                                                                                       \
        size_t bytes_ = 0;                                                                     \
        expect(size_fn(test_ctx(), (a), (o), &bytes_), (want), (needle), (what));              \
        void *ws_ = alloc_workspace(1 << 20);                                                  \
        expect(run_fn(test_ctx(), (a), (o), ws_, (want) == FA_OK ? bytes_ : (size_t)1 << 20),  \
               (want), (needle), (what));                                                      \
        free(ws_);                                                                             \
    } while (0)

static void expect_fwd(const fa_fwd_args *a, const fa_options *o, fa_status want,
                       const char *needle, const char *what) {
    EXPECT_OP(fa_fwd_workspace_size, fa_fwd, a, o, want, needle, what);
}

static void expect_bwd(const fa_bwd_args *a, const fa_options *o, fa_status want,
                       const char *needle, const char *what) {
    EXPECT_OP(fa_bwd_workspace_size, fa_bwd, a, o, want, needle, what);
}

static void expect_kv(const fa_kvcache_args *a, const fa_options *o, fa_status want,
                      const char *needle, const char *what) {
    EXPECT_OP(fa_fwd_kvcache_workspace_size, fa_fwd_kvcache, a, o, want, needle, what);
}

/* ---------------------------------------------------------------- forward */
/* Mutation i of a valid batched call; returns its name (NULL past the last) and the text the
 * message must contain. */
static const char *fwd_mutation(int i, fa_fwd_args *a, fa_options *o, const char **needle,
                                int32_t *cu) {
    switch (i) {
    case 0: *needle = "q"; a->q.data = NULL; return "q NULL";
    case 1: *needle = "k"; a->k.data = NULL; return "k NULL";
    case 2: *needle = "v"; a->v.data = NULL; return "v NULL";
    case 3: *needle = "out"; a->out.data = NULL; return "out NULL";
    case 4: *needle = "softmax_lse"; a->softmax_lse.data = NULL; return "lse NULL";
    case 5: *needle = "q"; a->q.ndim = 3; return "q ndim 3 without cu_seqlens";
    case 6: *needle = "k"; a->k.ndim = 5; return "k ndim 5";
    case 7: *needle = "k"; a->k.shape[0] = 3; return "k batch mismatch";
    case 8: *needle = "v"; a->v.shape[1] = 6; return "v seqlen mismatch";
    case 9: *needle = "v"; a->v.shape[2] = 1; return "v nheads mismatch";
    case 10: *needle = "k"; a->k.shape[3] = 8; return "k head dim mismatch";
    case 11: *needle = "out"; a->out.shape[3] = 8; return "out head dim mismatch";
    case 12: *needle = "out"; a->out.shape[1] = 4; return "out seqlen mismatch";
    case 13: *needle = "softmax_lse"; a->softmax_lse.shape[2] = 4; return "lse shape mismatch";
    case 14: *needle = "q"; a->q.stride[3] = 2; return "q stride[last] 2";
    case 15: *needle = "v"; a->v.stride[3] = 0; return "v stride[last] 0";
    case 16: *needle = "out"; a->out.stride[3] = 3; return "out stride[last] 3";
    case 17: *needle = "q"; a->q.dtype = a->k.dtype = a->v.dtype = a->out.dtype = FA_DTYPE_I32; return "int32 q";
    case 18: *needle = "k"; a->k.dtype = FA_DTYPE_BF16; return "mixed dtypes q f16, k bf16";
    case 19: *needle = "out"; a->out.dtype = FA_DTYPE_F32; return "out dtype differs";
    case 20: *needle = "softmax_lse"; a->softmax_lse.dtype = FA_DTYPE_F16; return "lse f16";
    case 21: *needle = "nheads"; a->k.shape[2] = a->v.shape[2] = 3; return "nheads 4 % nheads_k 3";
    case 22: *needle = "head dim"; a->q.shape[3] = a->k.shape[3] = 0; return "head dim 0";
    case 23: *needle = "head dim"; a->q.shape[3] = a->k.shape[3] = 257; return "head dim 257";
    case 24: *needle = "head dim"; a->v.shape[3] = a->out.shape[3] = 300; return "v head dim 300";
    case 25: *needle = "dropout_p"; o->dropout_p = 1.0f; return "dropout_p 1";
    case 26: *needle = "dropout_p"; o->dropout_p = -0.1f; return "dropout_p < 0";
    case 27: *needle = "dropout_p"; o->dropout_p = NAN; return "dropout_p NaN";
    case 28: *needle = "softcap"; o->softcap = 5, o->dropout_p = 0.1f; return "softcap with dropout";
    case 29: *needle = "num_splits"; o->num_splits = 129; return "num_splits 129";
    case 30: *needle = "num_splits"; o->num_splits = -1; return "num_splits -1";
    case 31: *needle = "softmax_scale"; o->softmax_scale = INFINITY; return "scale inf";
    case 32: *needle = "cu_seqlens_k"; a->cu_seqlens_k = i32_tensor(cu, 1, 3, 0); return "cu_seqlens_k without q";
    case 33: *needle = "seqused_k"; a->seqused_k = i32_tensor(cu, 1, 2, 0); return "seqused_k batched";
    case 34: *needle = "block_table"; a->block_table = i32_tensor(cu, 2, 2, 1); return "block_table batched";
    case 35: *needle = "alibi_slopes"; a->alibi_slopes.shape[0] = 5; return "alibi (h + 1)";
    case 36: *needle = "alibi_slopes"; a->alibi_slopes.dtype = FA_DTYPE_F16; return "alibi f16";
    case 37: *needle = "alibi_slopes"; a->alibi_slopes.ndim = 3; return "alibi 3-D";
    case 38: *needle = "attn_probs"; a->attn_probs.shape[2] = 4; return "attn_probs too small";
    case 39: *needle = "attn_probs"; a->attn_probs.dtype = FA_DTYPE_F32; return "attn_probs dtype";
    case 40: *needle = "q"; a->q.shape[2] = -1; return "negative shape";
    case 41: *needle = "k"; a->k.stride[1] = -5; return "negative stride";
    case 42: *needle = "batch"; a->q.shape[0] = a->k.shape[0] = a->v.shape[0] = a->out.shape[0] = a->softmax_lse.shape[0] = 0; return "batch 0";
    default: return NULL;
    }
}

static void test_invalid_fwd(void) {
    cfg c = cfg_basic(FA_DTYPE_F16, 2, 5, 7, 4, 2, 16, 16);
    c.alibi = 1, c.probs = true;
    fcase fc = case_make(&c);
    expect_fwd(&fc.f, &fc.o, FA_OK, "", "the valid call");
    int32_t cu[4] = {0, 3, 5, 7};
    for (int i = 0;; ++i) {
        fa_fwd_args a = fc.f;
        fa_options o = fc.o;
        const char *needle = "";
        const char *what = fwd_mutation(i, &a, &o, &needle, cu);
        if (!what) break;
        expect_fwd(&a, &o, FA_ERR_INVALID_ARGUMENT, needle, what);
    }
    size_t bytes = 0;
    expect(fa_fwd_workspace_size(NULL, &fc.f, &fc.o, &bytes), FA_ERR_INVALID_ARGUMENT, "ctx", "ctx NULL");
    expect(fa_fwd(NULL, &fc.f, &fc.o, NULL, 0), FA_ERR_INVALID_ARGUMENT, "ctx", "ctx NULL");
    expect(fa_fwd(test_ctx(), NULL, &fc.o, NULL, 0), FA_ERR_INVALID_ARGUMENT, "args", "args NULL");
    expect(fa_fwd(test_ctx(), &fc.f, NULL, NULL, 0), FA_ERR_INVALID_ARGUMENT, "opts", "opts NULL");
    expect(fa_fwd_workspace_size(test_ctx(), &fc.f, &fc.o, NULL), FA_ERR_INVALID_ARGUMENT, "bytes",
           "bytes NULL");
    /* workspace too small */
    CHECK_OK(fa_fwd_workspace_size(test_ctx(), &fc.f, &fc.o, &bytes));
    if (bytes > 0) {
        void *ws = alloc_workspace(bytes);
        expect(fa_fwd(test_ctx(), &fc.f, &fc.o, ws, bytes - 1), FA_ERR_WORKSPACE_TOO_SMALL,
               "workspace", "workspace one byte short");
        expect(fa_fwd(test_ctx(), &fc.f, &fc.o, NULL, bytes), FA_ERR_INVALID_ARGUMENT,
               "workspace", "workspace NULL");
        free(ws);
    }
    case_free(&fc);
}

/* Varlen index tensors: types, shapes and (host) contents. */
static const char *varlen_mutation(int i, fa_fwd_args *a, fa_options *o, const char **needle,
                                   int32_t *cu_q, int32_t *cu_k, int32_t *idx) {
    (void)o;
    switch (i) {
    case 0: *needle = "cu_seqlens_q"; a->cu_seqlens_q.dtype = FA_DTYPE_I64; return "cu_seqlens_q i64";
    case 1: *needle = "cu_seqlens_q"; a->cu_seqlens_q.ndim = 2; return "cu_seqlens_q 2-D";
    case 2: *needle = "cu_seqlens_k"; a->cu_seqlens_k.shape[0] += 1; return "cu_seqlens_k batch + 2";
    case 3: *needle = "cu_seqlens_k"; a->cu_seqlens_k.data = NULL; return "cu_seqlens_k missing";
    case 4: *needle = "cu_seqlens_q"; cu_q[1] = cu_q[2] + 1; return "cu_seqlens_q decreasing";
    case 5: *needle = "cu_seqlens_q"; cu_q[a->cu_seqlens_q.shape[0] - 1] += 1; return "cu_seqlens_q past total";
    case 6: *needle = "max_seqlen_q"; a->max_seqlen_q = 1; return "max_seqlen_q too small";
    case 7: *needle = "max_seqlen_k"; a->max_seqlen_k = 1; return "max_seqlen_k too small";
    case 8: *needle = "cu_seqlens_q"; cu_q[0] = -1; return "cu_seqlens_q[0] negative";
    case 9: *needle = "seqused_k"; idx[0] = 1000; a->seqused_k = i32_tensor(idx, 1, 3, 0); return "seqused_k past the sequence";
    case 10: *needle = "seqused_k"; a->seqused_k = i32_tensor(idx, 1, 2, 0); return "seqused_k shape";
    case 11: *needle = "leftpad_k"; idx[1] = 1000; a->leftpad_k = i32_tensor(idx, 1, 3, 0); return "leftpad_k past the sequence";
    case 12: *needle = "k"; a->k.ndim = 4; return "unpaged k 4-D";
    case 13: *needle = "cu_seqlens_k"; cu_k[2] = cu_k[1] - 1; return "cu_seqlens_k decreasing";
    case 14: *needle = "cu_seqlens_q"; a->cu_seqlens_q.shape[0] = 1, a->cu_seqlens_k.shape[0] = 1; return "batch 0 (one entry)";
    default: return NULL;
    }
}

static void test_invalid_varlen(void) {
    cfg c = cfg_basic(FA_DTYPE_BF16, 3, 6, 8, 2, 1, 8, 8);
    c.varlen = true;
    fcase fc = case_make(&c);
    expect_fwd(&fc.f, &fc.o, FA_OK, "", "the valid varlen call");
    int32_t keep_q[4], keep_k[4], idx[3] = {0, 0, 0};
    memcpy(keep_q, fc.cu_q, sizeof keep_q), memcpy(keep_k, fc.cu_k, sizeof keep_k);
    for (int i = 0;; ++i) {
        fa_fwd_args a = fc.f;
        fa_options o = fc.o;
        const char *needle = "";
        memset(idx, 0, sizeof idx);
        const char *what = varlen_mutation(i, &a, &o, &needle, fc.cu_q, fc.cu_k, idx);
        if (!what) break;
        expect_fwd(&a, &o, FA_ERR_INVALID_ARGUMENT, needle, what);
        memcpy(fc.cu_q, keep_q, sizeof keep_q), memcpy(fc.cu_k, keep_k, sizeof keep_k);
    }
    case_free(&fc);

    /* paged: a block_table entry out of range, and a table too short for the keys */
    c.page_size = 4;
    fc = case_make(&c);
    expect_fwd(&fc.f, &fc.o, FA_OK, "", "the valid paged call");
    int32_t saved = fc.block_table[0];
    fc.block_table[0] = (int32_t)fc.k.v.shape[0];
    expect_fwd(&fc.f, &fc.o, FA_ERR_INVALID_ARGUMENT, "block_table", "block_table entry = num_blocks");
    fc.block_table[0] = -1;
    expect_fwd(&fc.f, &fc.o, FA_ERR_INVALID_ARGUMENT, "block_table", "block_table entry -1");
    fc.block_table[0] = saved;
    fa_fwd_args a = fc.f;
    a.block_table.shape[1] = 1;
    expect_fwd(&a, &fc.o, FA_ERR_INVALID_ARGUMENT, "block_table", "block_table too short");
    a = fc.f;
    a.leftpad_k = i32_tensor(fc.leftpad, 1, 3, 0);
    expect_fwd(&a, &fc.o, FA_ERR_INVALID_ARGUMENT, "leftpad_k", "block_table with leftpad_k");
    case_free(&fc);
}

static void test_invalid_bwd(void) {
    cfg c = cfg_basic(FA_DTYPE_F32, 2, 5, 6, 4, 2, 8, 8);
    fcase fc = case_make(&c);
    CHECK(case_run_fwd(&fc, test_ctx()), "forward");
    expect_bwd(&fc.g, &fc.o, FA_OK, "", "the valid backward");
    for (int i = 0; i < 9; ++i) {
        fa_bwd_args g = fc.g;
        fa_options o = fc.o;
        const char *needle = "";
        switch (i) {
        case 0: needle = "dout"; g.dout.data = NULL; break;
        case 1: needle = "dq"; g.dq.shape[1] = 4; break;
        case 2: needle = "dk"; g.dk.stride[3] = 2; break;
        case 3: needle = "dv"; g.dv.dtype = FA_DTYPE_F16; break;
        case 4: needle = "softmax_d"; g.softmax_d.dtype = FA_DTYPE_F16; break;
        case 5: needle = "softmax_lse"; g.softmax_lse.shape[1] = 3; break;
        case 6: needle = "out"; g.out.shape[3] = 4; break;
        case 7: needle = "dropout_p"; o.dropout_p = 2; break;
        case 8: needle = "softmax_d"; g.softmax_d.data = NULL; break;
        }
        char what[64];
        snprintf(what, sizeof what, "bwd mutation %d (%s)", i, needle);
        expect_bwd(&g, &o, FA_ERR_INVALID_ARGUMENT, needle, what);
    }
    size_t bytes = 0;
    CHECK_OK(fa_bwd_workspace_size(test_ctx(), &fc.g, &fc.o, &bytes));
    if (bytes > 0) {
        void *ws = alloc_workspace(bytes);
        expect(fa_bwd(test_ctx(), &fc.g, &fc.o, ws, bytes - 1), FA_ERR_WORKSPACE_TOO_SMALL,
               "workspace", "bwd workspace one byte short");
        free(ws);
    }
    case_free(&fc);
}

/* ---------------------------------------------------------------- kvcache */
typedef struct kvbase {
    tt q, kc, vc, kn, vn, cos, sin, out, lse;
    int32_t seqlens[2], idx[2], table[2 * 4];
    fa_kvcache_args a;
    fa_options o;
} kvbase;

/* b 2, s_q 3, cache 16, 2 new tokens, h 4 / 2, d 16, rotary 8. */
static void kv_base(kvbase *k) {
    memset(k, 0, sizeof *k);
    k->q = TT(FA_DTYPE_F16, 0, 2, 3, 4, 16);
    k->kc = TT(FA_DTYPE_F16, 0, 2, 16, 2, 16);
    k->vc = TT(FA_DTYPE_F16, 0, 2, 16, 2, 16);
    k->kn = TT(FA_DTYPE_F16, 0, 2, 2, 2, 16);
    k->vn = TT(FA_DTYPE_F16, 0, 2, 2, 2, 16);
    k->cos = TT(FA_DTYPE_F16, 0, 20, 4);
    k->sin = TT(FA_DTYPE_F16, 0, 20, 4);
    k->out = TT(FA_DTYPE_F16, 0, 2, 3, 4, 16);
    k->lse = TT(FA_DTYPE_F32, 0, 2, 4, 3);
    tt *fill[] = {&k->q, &k->kc, &k->vc, &k->kn, &k->vn, &k->cos, &k->sin};
    for (size_t i = 0; i < sizeof fill / sizeof fill[0]; ++i) tt_randn(fill[i], 0.5);
    k->seqlens[0] = 5, k->seqlens[1] = 14;
    k->idx[0] = 1, k->idx[1] = 0;
    for (int i = 0; i < 8; ++i) k->table[i] = i % 4;
    fa_kvcache_args *a = &k->a;
    a->q = k->q.v, a->k_cache = k->kc.v, a->v_cache = k->vc.v, a->k_new = k->kn.v,
    a->v_new = k->vn.v, a->rotary_cos = k->cos.v, a->rotary_sin = k->sin.v, a->out = k->out.v,
    a->softmax_lse = k->lse.v;
    a->cache_seqlens = i32_tensor(k->seqlens, 1, 2, 0);
    k->o = fa_options_default();
    k->o.causal = true;
}

static void kv_base_free(kvbase *k) {
    tt *all[] = {&k->q, &k->kc, &k->vc, &k->kn, &k->vn, &k->cos, &k->sin, &k->out, &k->lse};
    for (size_t i = 0; i < sizeof all / sizeof all[0]; ++i) tt_free(all[i]);
}

static const char *kv_mutation(int i, kvbase *k, fa_kvcache_args *a, fa_options *o,
                               const char **needle) {
    switch (i) {
    case 0: *needle = "rotary"; a->k_new = a->v_new = tt_none(); a->cache_seqlens = tt_none(); return "rotary without k_new";
    case 1: *needle = "v_new"; a->v_new = tt_none(); return "k_new without v_new";
    case 2: *needle = "cache_seqlens"; a->cache_seqlens = tt_none(); return "k_new without cache_seqlens";
    case 3: *needle = "rotary"; a->rotary_sin = tt_none(); return "cos without sin";
    case 4: *needle = "rotary"; a->rotary_cos.shape[1] = a->rotary_sin.shape[1] = 9; return "rotary_dim 18 > d 16";
    case 5: *needle = "rotary"; a->rotary_cos.shape[0] = a->rotary_sin.shape[0] = 10; return "rotary table shorter than the cache";
    case 6: *needle = "rotary"; a->rotary_cos.dtype = FA_DTYPE_F32; return "rotary_cos dtype";
    case 7: *needle = "dropout"; o->dropout_p = 0.1f; return "dropout";
    case 8: *needle = "cache_seqlens"; k->seqlens[1] = 15; return "cache_seqlens + s_new > capacity";
    case 9: *needle = "cache_seqlens"; k->seqlens[0] = -1; return "cache_seqlens negative";
    case 10: *needle = "cache_batch_idx"; k->idx[0] = 2; a->cache_batch_idx = i32_tensor(k->idx, 1, 2, 0); return "cache_batch_idx out of range";
    case 11: *needle = "cache_leftpad"; k->idx[0] = 9; a->cache_leftpad = i32_tensor(k->idx, 1, 2, 0); return "cache_leftpad past the keys";
    case 12: *needle = "k_new"; a->k_new.shape[3] = 8; return "k_new head dim";
    case 13: *needle = "v_cache"; a->v_cache.shape[1] = 15; return "v_cache length";
    case 14: *needle = "k_cache"; a->k_cache.dtype = FA_DTYPE_BF16; return "k_cache dtype";
    case 15: /* paged: (8 blocks, 4, h_k, d); table (2, 4) */
        *needle = "cache_batch_idx";
        a->k_cache.shape[0] = a->v_cache.shape[0] = 8, a->k_cache.shape[1] = a->v_cache.shape[1] = 4;
        a->k_cache.stride[0] = a->v_cache.stride[0] = 4 * 2 * 16;
        a->block_table = i32_tensor(k->table, 2, 2, 4);
        a->cache_batch_idx = i32_tensor(k->idx, 1, 2, 0);
        return "block_table with cache_batch_idx";
    case 16:
        *needle = "cache_leftpad";
        a->k_cache.shape[0] = a->v_cache.shape[0] = 8, a->k_cache.shape[1] = a->v_cache.shape[1] = 4;
        a->k_cache.stride[0] = a->v_cache.stride[0] = 4 * 2 * 16;
        a->block_table = i32_tensor(k->table, 2, 2, 4);
        a->cache_leftpad = i32_tensor(k->idx, 1, 2, 0);
        return "block_table with cache_leftpad";
    case 17: *needle = "num_splits"; o->num_splits = 200; return "num_splits 200";
    case 18: *needle = "q"; a->q.data = NULL; return "q NULL";
    case 19: *needle = "out"; a->out.shape[1] = 2; return "out seqlen";
    default: return NULL;
    }
}

static void test_invalid_kvcache(void) {
    kvbase k;
    kv_base(&k);
    expect_kv(&k.a, &k.o, FA_OK, "", "the valid kvcache call");
    int32_t seqlens[2] = {k.seqlens[0], k.seqlens[1]}, idx[2] = {k.idx[0], k.idx[1]};
    for (int i = 0;; ++i) {
        fa_kvcache_args a = k.a;
        fa_options o = k.o;
        const char *needle = "";
        const char *what = kv_mutation(i, &k, &a, &o, &needle);
        if (!what) break;
        expect_kv(&a, &o, FA_ERR_INVALID_ARGUMENT, needle, what);
        memcpy(k.seqlens, seqlens, sizeof seqlens), memcpy(k.idx, idx, sizeof idx);
    }
    kv_base_free(&k);
}

/* ---------------------------------------------------------------- the rest of the API */
static void test_status_and_version(void) {
    const char *names[] = {"FA_OK", "FA_ERR_INVALID_ARGUMENT", "FA_ERR_UNSUPPORTED",
                           "FA_ERR_BACKEND_UNAVAILABLE", "FA_ERR_OUT_OF_MEMORY",
                           "FA_ERR_WORKSPACE_TOO_SMALL", "FA_ERR_COMPILE", "FA_ERR_LAUNCH",
                           "FA_ERR_DEVICE", "FA_ERR_INTERNAL"};
    for (int s = 0; s < 10; ++s) {
        const char *got = fa_status_string((fa_status)s);
        CHECK(got && strcmp(got, names[s]) == 0, "fa_status_string(%d) = %s", s, got ? got : "NULL");
    }
    CHECK(fa_status_string((fa_status)77) != NULL, "unknown status gives NULL");
    CHECK(fa_version_number() == FA_VERSION_NUMBER, "version %u", fa_version_number());
    char want[32];
    snprintf(want, sizeof want, "%d.%d.%d", FA_VERSION_MAJOR, FA_VERSION_MINOR, FA_VERSION_PATCH);
    CHECK(strcmp(fa_version_string(), want) == 0, "version string %s", fa_version_string());
    CHECK(fa_abi_version() == FA_ABI_VERSION, "abi %u", fa_abi_version());
}

static void test_abi_introspection(void) {
#define SIZE(T) CHECK(fa_abi_sizeof(#T) == sizeof(T), "sizeof %s: %zu vs %zu", #T, fa_abi_sizeof(#T), sizeof(T))
#define OFF(T, F) CHECK(fa_abi_offsetof(#T, #F) == offsetof(T, F), "offsetof %s.%s: %zu vs %zu", #T, #F, fa_abi_offsetof(#T, #F), offsetof(T, F))
    SIZE(fa_tensor);
    SIZE(fa_options);
    SIZE(fa_fwd_args);
    SIZE(fa_bwd_args);
    SIZE(fa_kvcache_args);
    OFF(fa_tensor, data);
    OFF(fa_tensor, dtype);
    OFF(fa_tensor, ndim);
    OFF(fa_tensor, shape);
    OFF(fa_tensor, stride);
    OFF(fa_options, softmax_scale);
    OFF(fa_options, causal);
    OFF(fa_options, window_left);
    OFF(fa_options, window_right);
    OFF(fa_options, softcap);
    OFF(fa_options, dropout_p);
    OFF(fa_options, rng_seed);
    OFF(fa_options, rng_offset);
    OFF(fa_options, deterministic);
    OFF(fa_options, num_splits);
    OFF(fa_options, rotary_interleaved);
    OFF(fa_fwd_args, q);
    OFF(fa_fwd_args, k);
    OFF(fa_fwd_args, v);
    OFF(fa_fwd_args, cu_seqlens_q);
    OFF(fa_fwd_args, cu_seqlens_k);
    OFF(fa_fwd_args, seqused_k);
    OFF(fa_fwd_args, leftpad_k);
    OFF(fa_fwd_args, block_table);
    OFF(fa_fwd_args, alibi_slopes);
    OFF(fa_fwd_args, max_seqlen_q);
    OFF(fa_fwd_args, max_seqlen_k);
    OFF(fa_fwd_args, out);
    OFF(fa_fwd_args, softmax_lse);
    OFF(fa_fwd_args, attn_probs);
    OFF(fa_bwd_args, dout);
    OFF(fa_bwd_args, q);
    OFF(fa_bwd_args, k);
    OFF(fa_bwd_args, v);
    OFF(fa_bwd_args, out);
    OFF(fa_bwd_args, softmax_lse);
    OFF(fa_bwd_args, cu_seqlens_q);
    OFF(fa_bwd_args, cu_seqlens_k);
    OFF(fa_bwd_args, alibi_slopes);
    OFF(fa_bwd_args, max_seqlen_q);
    OFF(fa_bwd_args, max_seqlen_k);
    OFF(fa_bwd_args, dq);
    OFF(fa_bwd_args, dk);
    OFF(fa_bwd_args, dv);
    OFF(fa_bwd_args, softmax_d);
    OFF(fa_kvcache_args, q);
    OFF(fa_kvcache_args, k_cache);
    OFF(fa_kvcache_args, v_cache);
    OFF(fa_kvcache_args, k_new);
    OFF(fa_kvcache_args, v_new);
    OFF(fa_kvcache_args, cache_seqlens);
    OFF(fa_kvcache_args, cache_batch_idx);
    OFF(fa_kvcache_args, cache_leftpad);
    OFF(fa_kvcache_args, block_table);
    OFF(fa_kvcache_args, rotary_cos);
    OFF(fa_kvcache_args, rotary_sin);
    OFF(fa_kvcache_args, alibi_slopes);
    OFF(fa_kvcache_args, out);
    OFF(fa_kvcache_args, softmax_lse);
#undef SIZE
#undef OFF
    CHECK(fa_abi_sizeof("no_such_struct") == (size_t)-1, "unknown struct");
    CHECK(fa_abi_offsetof("fa_tensor", "no_such_field") == (size_t)-1, "unknown field");
    CHECK(fa_abi_offsetof("no_such_struct", "q") == (size_t)-1, "unknown struct field");
    CHECK(fa_abi_sizeof(NULL) == (size_t)-1 && fa_abi_offsetof(NULL, NULL) == (size_t)-1, "NULL names");
}

static void test_options_and_contexts(void) {
    fa_options o = fa_options_default();
    CHECK(o.softmax_scale == 0 && !o.causal && o.window_left == -1 && o.window_right == -1 &&
              o.softcap == 0 && o.dropout_p == 0 && !o.deterministic && o.num_splits == 0 &&
              o.rotary_interleaved,
          "fa_options_default differs from flash-attn's defaults");
    CHECK(strcmp(fa_backend_name(FA_BACKEND_CPU), "cpu") == 0, "cpu name");
    CHECK(strcmp(fa_backend_name(FA_BACKEND_CUDA), "cuda") == 0, "cuda name");
    CHECK(fa_backend_name((fa_backend)42) != NULL, "unknown backend name is NULL");
    expect(fa_backend_available(FA_BACKEND_CPU), FA_OK, "", "cpu available");
    fa_status st = fa_backend_available(FA_BACKEND_OPENCL);
    CHECK(st == FA_ERR_BACKEND_UNAVAILABLE || st == FA_ERR_UNSUPPORTED, "opencl: %s",
          fa_status_string(st));
    CHECK(fa_last_error_message()[0] != '\0', "opencl unavailable without a reason");
    fa_context *ctx = NULL;
    st = fa_context_create(FA_BACKEND_OPENCL, 0, &ctx);
    CHECK(st != FA_OK && ctx == NULL, "opencl context: %s", fa_status_string(st));
    expect(fa_context_create(FA_BACKEND_CPU, 0, NULL), FA_ERR_INVALID_ARGUMENT, "ctx",
           "context_create(NULL)");
    st = fa_context_create((fa_backend)42, 0, &ctx);
    CHECK(st != FA_OK && ctx == NULL, "backend 42: %s", fa_status_string(st));
    CHECK_OK(fa_context_create(FA_BACKEND_CPU, 0, &ctx));
    if (ctx) {
        CHECK(fa_context_backend(ctx) == FA_BACKEND_CPU, "context backend");
        CHECK(fa_context_num_threads(ctx) >= 1, "default threads %d", fa_context_num_threads(ctx));
        CHECK_OK(fa_context_set_num_threads(ctx, 3));
        CHECK(fa_context_num_threads(ctx) == 3, "threads %d", fa_context_num_threads(ctx));
        expect(fa_context_set_num_threads(ctx, -2), FA_ERR_INVALID_ARGUMENT, "num_threads",
               "negative threads");
        CHECK(fa_context_num_threads(ctx) == 3, "a failed set changed the pool");
        fa_context_destroy(ctx);
    }
    CHECK_OK(fa_context_create(FA_BACKEND_AUTO, 0, &ctx));
    fa_context_destroy(ctx);
    fa_context_destroy(NULL);
    expect(fa_context_set_num_threads(NULL, 2), FA_ERR_INVALID_ARGUMENT, "ctx", "threads on NULL");
}

/* The message is per thread: another thread's failure neither shows nor clears it. */
static void *fail_in_thread(void *arg) {
    const char **seen = arg;
    seen[0] = fa_last_error_message()[0] ? "not empty" : "";
    fa_context_set_num_threads(NULL, 1); /* fails here, with its own message */
    seen[1] = strstr(fa_last_error_message(), "ctx") ? "ctx" : "missing";
    return NULL;
}

static void test_thread_local_messages(void) {
    fa_options o = fa_options_default();
    o.dropout_p = 5;
    size_t bytes;
    fa_fwd_args a;
    memset(&a, 0, sizeof a);
    CHECK(fa_fwd_workspace_size(test_ctx(), &a, &o, &bytes) == FA_ERR_INVALID_ARGUMENT, "empty args");
    char mine[256];
    snprintf(mine, sizeof mine, "%s", fa_last_error_message());
    const char *seen[2] = {NULL, NULL};
    pthread_t t;
    CHECK(pthread_create(&t, NULL, fail_in_thread, seen) == 0, "pthread_create");
    pthread_join(t, NULL);
    CHECK(seen[0] && seen[0][0] == '\0', "a new thread sees another thread's message");
    CHECK(seen[1] && strcmp(seen[1], "ctx") == 0, "the thread's own failure has no message");
    CHECK(strcmp(mine, fa_last_error_message()) == 0, "another thread changed this thread's "
          "message: \"%s\" became \"%s\"", mine, fa_last_error_message());
}

int main(int argc, char **argv) {
    static const test_case tests[] = {
        {"invalid_fwd", test_invalid_fwd},
        {"invalid_varlen", test_invalid_varlen},
        {"invalid_bwd", test_invalid_bwd},
        {"invalid_kvcache", test_invalid_kvcache},
        {"status_and_version", test_status_and_version},
        {"abi_introspection", test_abi_introspection},
        {"options_and_contexts", test_options_and_contexts},
        {"thread_local_messages", test_thread_local_messages},
    };
    return test_main(argc, argv, tests, (int)(sizeof tests / sizeof tests[0]));
}
