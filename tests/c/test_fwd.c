/*
 * test_fwd.c — fa_fwd against the float64 reference (cases.h: flash-attn's 2x rule, poisoned
 * outputs, padding untouched): sequence lengths, head dims, GQA, dtypes, masks, ALiBi, softcap,
 * varlen with empty sequences, seqused_k, leftpad_k, paged KV, seqlen_k = 0, rows without keys,
 * strided = contiguous, thread counts. `test_fwd isa` runs the short grid used per ISA.
 */
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "cases.h"

static const int32_t k_dtypes[3] = {FA_DTYPE_F32, FA_DTYPE_F16, FA_DTYPE_BF16};

/* Every (s_q, s_k) pair of {1, 7, 97, 1025}; the 1025 x 1025 pair once, small heads. */
static void test_seqlens(void) {
    const int64_t lens[4] = {1, 7, 97, 1025};
    int n = 0;
    for (int a = 0; a < 4; ++a)
        for (int b = 0; b < 4; ++b, ++n) {
            int64_t sq = lens[a], sk = lens[b];
            bool big = sq * sk > 100000;
            if (big && test_quick() && sq != sk) continue;
            cfg c = cfg_basic(k_dtypes[n % 3], big ? 1 : 2, sq, sk, big ? 2 : 3, 1, big ? 32 : 40,
                              big ? 32 : 40);
            if (sq * sk > 1000000) c.dtype = FA_DTYPE_F32; /* the plain f16 oracle is slow */
            case_check_fwd(&c);
            c.causal = true;
            case_check_fwd(&c);
        }
}

static void test_head_dims(void) {
    const int64_t dims[7] = {1, 8, 59, 64, 111, 128, 256};
    for (int i = 0; i < 7; ++i)
        for (int t = 0; t < 3; ++t) {
            if (test_quick() && t != i % 3) continue;
            cfg c = cfg_basic(k_dtypes[t], 2, 37, 61, 4, 2, dims[i], dims[i]);
            c.causal = (i + t) % 2;
            case_check_fwd(&c);
        }
    /* d != d_v both ways */
    const int64_t pairs[4][2] = {{64, 32}, {32, 128}, {59, 111}, {256, 8}};
    for (int i = 0; i < 4; ++i) {
        cfg c = cfg_basic(k_dtypes[i % 3], 2, 29, 45, 3, 1, pairs[i][0], pairs[i][1]);
        c.alibi = i % 2 ? 1 : 0;
        case_check_fwd(&c);
    }
}

static void test_gqa(void) {
    const int64_t hk[3] = {6, 2, 1};
    for (int i = 0; i < 3; ++i)
        for (int t = 0; t < 3; ++t) {
            cfg c = cfg_basic(k_dtypes[t], 2, 50, 70, 6, hk[i], 64, 64);
            c.causal = t == 1;
            c.alibi = t == 2 ? 2 : 0;
            case_check_fwd(&c);
        }
}

/* Masks, softcap, ALiBi and scale, each dtype, with s_q < s_k and s_q > s_k. */
static void test_options(void) {
    for (int t = 0; t < 3; ++t)
        for (int shape = 0; shape < 2; ++shape) {
            int64_t sq = shape ? 97 : 33, sk = shape ? 33 : 97;
            cfg base = cfg_basic(k_dtypes[t], 2, sq, sk, 4, 2, 48, 48);
            cfg c = base;
            c.causal = true;
            case_check_fwd(&c);
            c = base, c.wl = 5, c.wr = 3;         /* local */
            case_check_fwd(&c);
            c = base, c.wl = 10, c.causal = true; /* causal + left window */
            case_check_fwd(&c);
            c = base, c.wl = 4, c.wr = -1;        /* one-sided windows */
            case_check_fwd(&c);
            c = base, c.wl = -1, c.wr = 0;        /* = causal */
            case_check_fwd(&c);
            c = base, c.wl = 0, c.wr = 0;         /* only the diagonal */
            case_check_fwd(&c);
            c = base, c.wl = 200, c.wr = 300;     /* bounds >= s_k are unbounded */
            case_check_fwd(&c);
            c = base, c.softcap = 30.0f;
            case_check_fwd(&c);
            c.causal = true, c.alibi = 1;
            case_check_fwd(&c);
            c = base, c.alibi = 1;
            case_check_fwd(&c);
            c.alibi = 2, c.causal = true;
            case_check_fwd(&c);
            c = base, c.alibi = 2, c.wl = 8, c.wr = 2;
            case_check_fwd(&c);
            c = base, c.scale = 0.37f;
            case_check_fwd(&c);
        }
}

/* Causal with s_q > s_k and narrow windows leave rows without keys: out 0, lse +inf
 * (the rule compares infinities exactly); seqlen_k = 0 makes every row so. */
static void test_empty_rows(void) {
    for (int t = 0; t < 3; ++t) {
        cfg c = cfg_basic(k_dtypes[t], 2, 20, 5, 2, 1, 16, 16);
        c.causal = true;
        case_check_fwd(&c);
        c = cfg_basic(k_dtypes[t], 2, 20, 5, 2, 1, 16, 16);
        c.wl = 0, c.wr = 0;
        case_check_fwd(&c);
        c = cfg_basic(k_dtypes[t], 2, 9, 0, 2, 1, 16, 16);
        case_check_fwd(&c);
        c.causal = true, c.alibi = 1;
        case_check_fwd(&c);
    }
    /* and explicitly: zeros and +inf, nothing else */
    cfg c = cfg_basic(FA_DTYPE_F16, 1, 3, 0, 2, 2, 8, 8);
    fcase fc = case_make(&c);
    if (case_run_fwd(&fc, test_ctx())) {
        for (int64_t i = 0; i < 3; ++i)
            for (int64_t h = 0; h < 2; ++h) {
                CHECK(AT(&fc.lse.v, 0, h, i) == INFINITY, "seqlen_k = 0: lse[0,%lld,%lld] = %g",
                      (long long)h, (long long)i, AT(&fc.lse.v, 0, h, i));
                for (int64_t e = 0; e < 8; ++e)
                    CHECK(AT(&fc.out.v, 0, i, h, e) == 0, "seqlen_k = 0: out = %g",
                          AT(&fc.out.v, 0, i, h, e));
            }
    }
    case_free(&fc);
}

static void test_varlen(void) {
    for (int t = 0; t < 3; ++t)
        for (int v = 0; v < 6; ++v) {
            cfg c = cfg_basic(k_dtypes[t], 5, 70, 90, 6, v % 2 ? 2 : 6, 40, 40);
            c.varlen = true;
            c.causal = v == 1 || v == 4;
            c.seqused = v >= 2;
            c.leftpad = v >= 3;
            if (v == 2) c.wl = 6, c.wr = 1;
            if (v == 5) c.alibi = 2, c.softcap = 20.0f;
            case_check_fwd(&c);
        }
    /* s_q > s_k, and 1-token queries (decode-like) */
    cfg c = cfg_basic(FA_DTYPE_BF16, 4, 60, 12, 4, 1, 64, 64);
    c.varlen = true, c.causal = true;
    case_check_fwd(&c);
    c = cfg_basic(FA_DTYPE_F16, 6, 1, 200, 6, 2, 64, 64);
    c.varlen = true, c.causal = true, c.seqused = true;
    case_check_fwd(&c);
}

static void test_paged(void) {
    const int pages[3] = {1, 16, 256};
    for (int p = 0; p < 3; ++p)
        for (int t = 0; t < 3; ++t) {
            cfg c = cfg_basic(k_dtypes[t], 4, 40, p == 2 ? 300 : 75, 4, 2, 32, 32);
            c.varlen = true;
            c.page_size = pages[p];
            c.causal = t != 1;
            c.seqused = t == 2;
            case_check_fwd(&c);
        }
}

/* Views with padding in every stride give bit-identical results to contiguous tensors, and
 * the library reads its inputs only. */
static void test_strided_equals_contiguous(void) {
    for (int t = 0; t < 3; ++t)
        for (int varlen = 0; varlen < 2; ++varlen) {
            cfg c = cfg_basic(k_dtypes[t], 3, 45, 53, 4, 2, 24, 40);
            c.varlen = varlen;
            c.causal = t == 1;
            c.alibi = t == 2;
            fcase fc = case_make(&c);
            if (!case_run_fwd(&fc, test_ctx())) {
                case_free(&fc);
                continue;
            }
            tt q = tt_clone(&fc.q.v, 3), k = tt_clone(&fc.k.v, 5), v = tt_clone(&fc.v.v, 2);
            tt out = tt_clone(&fc.out.v, 7), lse = tt_clone(&fc.lse.v, 1);
            fcase strided = fc; /* shares the index arrays; only the tensors differ */
            strided.out = out, strided.lse = lse;
            strided.f.q = q.v, strided.f.k = k.v, strided.f.v = v.v;
            strided.f.out = out.v, strided.f.softmax_lse = lse.v;
            if (case_run_fwd(&strided, test_ctx())) {
                CHECK(tt_bits_equal(&out.v, &fc.out.v), "%s varlen=%d: strided out differs",
                      dtype_name(c.dtype), varlen);
                CHECK(tt_bits_equal(&lse.v, &fc.lse.v), "%s varlen=%d: strided lse differs",
                      dtype_name(c.dtype), varlen);
                CHECK(tt_padding_intact(&out) && tt_padding_intact(&lse), "padding written");
                CHECK(tt_bits_equal(&q.v, &fc.q.v) && tt_bits_equal(&k.v, &fc.k.v) &&
                          tt_bits_equal(&v.v, &fc.v.v) && tt_padding_intact(&q),
                      "the forward changed its inputs");
            }
            tt_free(&q), tt_free(&k), tt_free(&v), tt_free(&out), tt_free(&lse);
            case_free(&fc);
        }
    /* and through the checked path with padding everywhere */
    cfg c = cfg_basic(FA_DTYPE_BF16, 2, 31, 47, 6, 2, 72, 56);
    c.pad = 3, c.causal = true, c.probs = true, c.dropout = 0.1f;
    case_check_fwd(&c);
    c.varlen = true, c.leftpad = true, c.seqused = true, c.probs = false, c.dropout = 0;
    case_check_fwd(&c);
}

/* The same problem on 1, 2 and 3 threads: bit-identical out and lse. */
static void test_threads_agree(void) {
    for (int t = 0; t < 3; ++t) {
        cfg c = cfg_basic(k_dtypes[t], 3, 130, 150, 4, 2, 64, 64);
        c.varlen = t == 2;
        c.causal = t != 0;
        fcase fc = case_make(&c);
        tt out1 = tt_clone(&fc.out.v, 0), lse1 = tt_clone(&fc.lse.v, 0);
        bool ok = case_run_fwd(&fc, test_ctx_threads(1));
        tt_copy_values(&out1, &fc.out.v), tt_copy_values(&lse1, &fc.lse.v);
        for (int n = 2; ok && n <= 3; ++n) {
            ok = case_run_fwd(&fc, test_ctx_threads(n));
            CHECK(ok && tt_bits_equal(&out1.v, &fc.out.v) && tt_bits_equal(&lse1.v, &fc.lse.v),
                  "%s: 1 and %d threads give different results (max diff out %.3g)",
                  dtype_name(c.dtype), n, max_abs_diff(&out1.v, &fc.out.v));
        }
        tt_free(&out1), tt_free(&lse1);
        case_free(&fc);
    }
}

/* Random combinations of every axis (FA_TEST_RANDOM of them; the seed picks them). */
static void test_random_configs(void) {
    for (int i = random_case_count(24); i > 0; --i) {
        cfg c = cfg_random(false);
        case_check_fwd(&c);
    }
}

/* A mix of everything, short: what `ctest -L isa` runs on each instruction set. */
static void test_isa_grid(void) {
    const int64_t dims[5] = {8, 59, 64, 128, 256};
    for (int i = 0; i < 5; ++i)
        for (int t = 0; t < 3; ++t) {
            cfg c = cfg_basic(k_dtypes[t], 2, 41, 67, 4, 2, dims[i], dims[(i + t) % 5]);
            c.causal = (i + t) % 2;
            c.softcap = i == 1 ? 15.0f : 0;
            c.alibi = i == 2 ? 1 : 0;
            c.varlen = i == 3;
            c.wl = i == 4 ? 9 : -1;
            case_check_fwd(&c);
        }
}

int main(int argc, char **argv) {
    static const test_case tests[] = {
        {"seqlens", test_seqlens},
        {"head_dims", test_head_dims},
        {"gqa", test_gqa},
        {"options", test_options},
        {"empty_rows", test_empty_rows},
        {"varlen", test_varlen},
        {"paged", test_paged},
        {"strided_equals_contiguous", test_strided_equals_contiguous},
        {"threads_agree", test_threads_agree},
        {"random_configs", test_random_configs},
        {"isa_grid", test_isa_grid},
    };
    return test_main(argc, argv, tests, (int)(sizeof tests / sizeof tests[0]));
}
