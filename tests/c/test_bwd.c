/*
 * test_bwd.c — fa_bwd against the float64 reference's gradients (flash-attn's 3x rule, cases.h)
 * over lengths, head dims, GQA, dtypes and every option; central finite differences through
 * the library's f32 forward; gradients written into strided and packed views; deterministic
 * mode bit-identical across runs and accurate; thread counts agreeing.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cases.h"

static const int32_t k_dtypes[3] = {FA_DTYPE_F32, FA_DTYPE_F16, FA_DTYPE_BF16};


static void test_seqlens(void) {
    const int64_t lens[4] = {1, 7, 97, 300};
    int n = 0;
    for (int a = 0; a < 4; ++a)
        for (int b = 0; b < 4; ++b, ++n) {
            if (test_quick() && (a + b) % 2) continue;
            cfg c = cfg_basic(k_dtypes[n % 3], 2, lens[a], lens[b], 2, 1, 32, 32);
            c.causal = n % 2;
            case_check_bwd(&c);
        }
    /* seqlen_k = 0: every gradient of q is 0 */
    cfg c = cfg_basic(FA_DTYPE_F16, 2, 9, 0, 2, 1, 16, 16);
    case_check_bwd(&c);
    /* one long sequence (f32: the plain oracle in f16 is slow) */
    if (!test_quick()) {
        c = cfg_basic(FA_DTYPE_F32, 1, 1025, 1025, 1, 1, 32, 32);
        c.causal = true;
        case_check_bwd(&c);
    }
}

static void test_head_dims(void) {
    const int64_t dims[7] = {1, 8, 59, 64, 111, 128, 256};
    for (int i = 0; i < 7; ++i)
        for (int t = 0; t < 3; ++t) {
            if (test_quick() && t != i % 3) continue;
            cfg c = cfg_basic(k_dtypes[t], 1, 33, 47, 2, 1, dims[i], dims[(i + t) % 7]);
            c.causal = (i + t) % 2;
            case_check_bwd(&c);
        }
}

static void test_gqa_and_options(void) {
    const int64_t hk[3] = {6, 2, 1};
    for (int t = 0; t < 3; ++t)
        for (int i = 0; i < 3; ++i) {
            cfg base = cfg_basic(k_dtypes[t], 2, 45, 38, 6, hk[i], 40, 40);
            cfg c = base;
            c.causal = true;
            case_check_bwd(&c);
            c = base, c.wl = 7, c.wr = 2;
            case_check_bwd(&c);
            if (test_quick() && i) continue;
            c = base, c.softcap = 25.0f, c.causal = i == 1;
            case_check_bwd(&c);
            c = base, c.alibi = 1 + i % 2, c.causal = i != 1;
            case_check_bwd(&c);
            c = base, c.dropout = 0.17f, c.causal = i == 2;
            case_check_bwd(&c);
            c = base, c.scale = 0.21f, c.wl = 3, c.wr = -1;
            case_check_bwd(&c);
        }
}

static void test_varlen(void) {
    for (int t = 0; t < 3; ++t)
        for (int v = 0; v < 3; ++v) {
            cfg c = cfg_basic(k_dtypes[t], 5, 60, 75, 4, v == 1 ? 1 : 2, 48, 32);
            c.varlen = true;
            c.causal = v != 0;
            c.dropout = v == 2 ? 0.2f : 0;
            c.alibi = v == 0 ? 2 : 0;
            case_check_bwd(&c);
        }
}

/* Every gradient written into views with padding in every stride (cases check the padding). */
static void test_strided(void) {
    for (int t = 0; t < 3; ++t) {
        cfg c = cfg_basic(k_dtypes[t], 2, 37, 29, 4, 2, 24, 40);
        c.pad = 3;
        c.causal = t != 1;
        c.varlen = t == 2;
        case_check_bwd(&c);
    }
}

/* q, k, v and dq, dk, dv as views into packed (b, s, 3, h, d) buffers, as flash-attn's
 * qkvpacked functions pass them: the same bits as contiguous tensors, nothing else touched. */
static void test_packed_views(void) {
    cfg c = cfg_basic(FA_DTYPE_F16, 2, 53, 53, 3, 3, 32, 32);
    c.causal = true;
    fcase fc = case_make(&c);
    bool ok = case_run_fwd(&fc, test_ctx()) && case_run_bwd(&fc, test_ctx());
    /* (b, s, 3 * h, d): q, k, v are heads [0, 3), [3, 6), [6, 9) */
    tt qkv = TT(c.dtype, 0, 2, 53, 9, 32), dqkv = TT(c.dtype, 0, 2, 53, 9, 32);
    fa_tensor in[3], grad[3];
    const tt *src[3] = {&fc.q, &fc.k, &fc.v};
    for (int i = 0; i < 3; ++i) {
        in[i] = qkv.v, grad[i] = dqkv.v;
        in[i].shape[2] = grad[i].shape[2] = 3;
        in[i].data = (char *)qkv.v.data + (size_t)i * 3 * 32 * dtype_size(c.dtype);
        grad[i].data = (char *)dqkv.v.data + (size_t)i * 3 * 32 * dtype_size(c.dtype);
        tt view = {in[i], NULL, 0};
        tt_copy_values(&view, &src[i]->v);
    }
    fa_bwd_args g = fc.g;
    g.q = in[0], g.k = in[1], g.v = in[2], g.dq = grad[0], g.dk = grad[1], g.dv = grad[2];
    tt_poison(&dqkv);
    size_t bytes = 0;
    CHECK_OK(fa_bwd_workspace_size(test_ctx(), &g, &fc.o, &bytes));
    void *ws = alloc_workspace(bytes);
    fa_status st = fa_bwd(test_ctx(), &g, &fc.o, ws, bytes);
    CHECK(st == FA_OK, "packed fa_bwd: %s: %s", fa_status_string(st), fa_last_error_message());
    if (ok && st == FA_OK)
        for (int i = 0; i < 3; ++i)
            CHECK(tt_bits_equal(&grad[i], i == 0 ? &fc.dq.v : i == 1 ? &fc.dk.v : &fc.dv.v),
                  "packed d%c differs from the contiguous gradient", "qkv"[i]);
    free(ws);
    tt_free(&qkv), tt_free(&dqkv);
    case_free(&fc);
}

/* Central differences of sum(out * dout) through the library's f32 forward. */
static double library_loss(fcase *fc) {
    if (!case_run_fwd(fc, test_ctx())) return NAN;
    return tt_dot(&fc->out.v, &fc->dout.v);
}

static void fd_library(const cfg *c) {
    char desc[256];
    cfg_describe(c, desc, sizeof desc);
    fcase fc = case_make(c);
    if (!case_run_fwd(&fc, test_ctx()) || !case_run_bwd(&fc, test_ctx())) {
        case_free(&fc);
        return;
    }
    const tt *x[3] = {&fc.q, &fc.k, &fc.v}, *grad[3] = {&fc.dq, &fc.dk, &fc.dv};
    const double eps = 1e-3;
    for (int i = 0; i < 3; ++i) {
        double worst = 0, scale = fmax(1, tt_max_abs(&grad[i]->v));
        int64_t idx[FA_MAX_DIMS];
        for (int64_t n = 0; n < tt_numel(&x[i]->v); ++n) {
            tt_unravel(&x[i]->v, n, idx);
            double x0 = tt_get(&x[i]->v, idx);
            tt_set(&x[i]->v, idx, x0 + eps);
            double up = library_loss(&fc);
            tt_set(&x[i]->v, idx, x0 - eps);
            double down = library_loss(&fc);
            tt_set(&x[i]->v, idx, x0);
            worst = fmax(worst, fabs((up - down) / (2 * eps) - tt_get(&grad[i]->v, idx)));
            if (isnan(worst)) break;
        }
        CHECK(worst <= 2e-3 * scale, "%s: library d%c differs from finite differences by %.3g", desc,
              "qkv"[i], worst);
    }
    case_free(&fc);
}

static void test_finite_differences(void) {
    cfg c = cfg_basic(FA_DTYPE_F32, 2, 5, 6, 4, 2, 3, 5);
    fd_library(&c);
    c.causal = true, c.alibi = 2;
    fd_library(&c);
    c = cfg_basic(FA_DTYPE_F32, 1, 6, 4, 2, 1, 4, 4);
    c.softcap = 2.0f, c.wl = 1, c.wr = 1;
    fd_library(&c);
    c = cfg_basic(FA_DTYPE_F32, 3, 5, 5, 2, 2, 3, 3);
    c.varlen = true, c.dropout = 0.25f, c.causal = true;
    fd_library(&c);
}

/* deterministic = true: bit-identical gradients run after run, with several threads. The cuda
 * tensor-core path (f16/bf16, d <= 128) splits the key tiles (128 or 64 keys) over num_splits
 * CTAs per (kv head, batch): the forced splits and the wide b * h_k case (a few splits on any
 * GPU) leave some CTA several tiles; the last case is GQA + causal + varlen at odd sizes. */
static void test_deterministic(void) {
    cfg cases[7];
    for (int t = 0; t < 3; ++t) {
        cases[t] = cfg_basic(k_dtypes[t], 2, 190, 170, 6, 2, 64, 64);
        cases[t].varlen = t == 2;
        cases[t].causal = t == 1;
    }
    cases[3] = cfg_basic(FA_DTYPE_F16, 1, 150, 700, 4, 1, 64, 64);
    cases[3].num_splits = 3;
    cases[4] = cfg_basic(FA_DTYPE_BF16, 4, 65, 401, 20, 10, 32, 32);
    cases[5] = cfg_basic(FA_DTYPE_F16, 2, 97, 333, 4, 2, 128, 128);
    cases[5].num_splits = 2, cases[5].wl = 100, cases[5].wr = 20;
    cases[6] = cfg_basic(FA_DTYPE_BF16, 3, 211, 333, 6, 2, 59, 59);
    cases[6].num_splits = 2, cases[6].causal = true, cases[6].varlen = true;
    for (int n = 0; n < 7; ++n) {
        cfg c = cases[n];
        c.deterministic = true;
        char desc[256];
        cfg_describe(&c, desc, sizeof desc);
        fcase fc = case_make(&c);
        if (!case_run_fwd(&fc, test_ctx()) || !case_run_bwd(&fc, test_ctx_threads(3))) {
            case_free(&fc);
            continue;
        }
        tt first[3] = {tt_clone(&fc.dq.v, 0), tt_clone(&fc.dk.v, 0), tt_clone(&fc.dv.v, 0)};
        for (int run = 0; run < 3; ++run) {
            if (!case_run_bwd(&fc, test_ctx_threads(3))) break;
            const tt *now[3] = {&fc.dq, &fc.dk, &fc.dv};
            for (int i = 0; i < 3; ++i)
                CHECK(tt_bits_equal(&first[i].v, &now[i]->v),
                      "%s: deterministic d%c changed on run %d (max diff %.3g)", desc, "qkv"[i],
                      run + 2, max_abs_diff(&first[i].v, &now[i]->v));
        }
        for (int i = 0; i < 3; ++i) tt_free(&first[i]);
        case_free(&fc);
    }
}

/* deterministic = true against the float64 reference: f16/bf16 (the cuda tensor-core split
 * path) over head dims, GQA, every option, varlen, and forced splits with several key tiles
 * per CTA. */
static void test_deterministic_grid(void) {
    const int64_t dims[4] = {32, 59, 64, 128};
    for (int i = 0; i < 8; ++i) {
        if (test_quick() && i % 2) continue;
        const int64_t d = dims[i % 4];
        cfg c = cfg_basic(k_dtypes[1 + i % 2], 2, 17 + 9 * i, 260 + 23 * i, 4, i < 4 ? 2 : 1,
                          d, i == 3 ? 96 : d);
        c.deterministic = true;
        c.num_splits = i % 3; /* 0: the SM-count rule */
        c.causal = i % 3 == 1;
        c.varlen = i == 2 || i == 5;
        if (i == 1) c.wl = 90, c.wr = 7;
        if (i == 4) c.softcap = 20.0f;
        if (i == 5) c.alibi = 2;
        if (i == 6) c.dropout = 0.15f;
        if (i == 7) c.pad = 3, c.scale = 0.3f;
        case_check_bwd(&c);
    }
}

/* 1 and 2 threads: the same gradients up to the order of f32 sums (a few dtype ulps, or a few
 * dozen f32 ulps). */
static void test_threads_agree(void) {
    for (int t = 0; t < 3; ++t) {
        cfg c = cfg_basic(k_dtypes[t], 2, 150, 130, 4, 2, 64, 64);
        c.causal = t != 0;
        fcase fc = case_make(&c);
        if (!case_run_fwd(&fc, test_ctx_threads(1)) || !case_run_bwd(&fc, test_ctx_threads(1))) {
            case_free(&fc);
            continue;
        }
        tt one[3] = {tt_clone(&fc.dq.v, 0), tt_clone(&fc.dk.v, 0), tt_clone(&fc.dv.v, 0)};
        if (case_run_bwd(&fc, test_ctx_threads(2))) {
            const tt *two[3] = {&fc.dq, &fc.dk, &fc.dv};
            for (int i = 0; i < 3; ++i) {
                double mag = tt_max_abs(&one[i].v);
                char what[64];
                snprintf(what, sizeof what, "%s d%c 1 vs 2 threads", dtype_name(c.dtype), "qkv"[i]);
                double ulps = fmax(4 * dtype_eps(c.dtype), 32 * dtype_eps(FA_DTYPE_F32));
                check_close(what, &two[i]->v, &one[i].v, ulps * mag, 0);
            }
        }
        for (int i = 0; i < 3; ++i) tt_free(&one[i]);
        case_free(&fc);
    }
}

/* Random combinations of every axis the backward takes (FA_TEST_RANDOM of them). */
static void test_random_configs(void) {
    for (int i = random_case_count(16); i > 0; --i) {
        cfg c = cfg_random(true);
        c.deterministic = i % 2;
        case_check_bwd(&c);
    }
}

/* A short mix: what `ctest -L isa` runs on each instruction set. */
static void test_isa_grid(void) {
    const int64_t dims[4] = {8, 59, 64, 128};
    for (int i = 0; i < 4; ++i)
        for (int t = 0; t < 3; ++t) {
            cfg c = cfg_basic(k_dtypes[t], 2, 37, 45, 4, 2, dims[i], dims[(i + t) % 4]);
            c.causal = (i + t) % 2;
            c.varlen = i == 1;
            c.alibi = i == 2;
            c.dropout = i == 3 ? 0.1f : 0;
            case_check_bwd(&c);
        }
}

/* f16/bf16 with d = d_v (the tensor-core backwards' main path on a GPU: sm_90a wgmma at d
 * rounding to 64 or 128) over several key tiles and query blocks, with GQA, masks and dropout. */
static void test_long_tiles(void) {
    const int64_t dims[4] = {64, 128, 40, 104};
    for (int i = 0; i < 4; ++i)
        for (int t = 1; t < 3; ++t) {
            cfg c = cfg_basic(k_dtypes[t], 2, 333, 300, 2, i < 2 ? 1 : 2, dims[i], dims[i]);
            c.causal = t == 2;
            case_check_bwd(&c);
            if (test_quick() && i > 1) continue;
            c = cfg_basic(k_dtypes[t], 1, 261, 397, 2, 2, dims[i], dims[i]);
            c.causal = i != 1;
            c.wl = i == 2 ? 140 : -1;
            c.dropout = i == 3 ? 0.15f : 0;
            c.softcap = i == 0 ? 30.0f : 0;
            c.varlen = i == 1;
            case_check_bwd(&c);
        }
}

int main(int argc, char **argv) {
    static const test_case tests[] = {
        {"seqlens", test_seqlens},
        {"head_dims", test_head_dims},
        {"gqa_and_options", test_gqa_and_options},
        {"varlen", test_varlen},
        {"strided", test_strided},
        {"packed_views", test_packed_views},
        {"finite_differences", test_finite_differences},
        {"deterministic", test_deterministic},
        {"deterministic_grid", test_deterministic_grid},
        {"threads_agree", test_threads_agree},
        {"random_configs", test_random_configs},
        {"isa_grid", test_isa_grid},
        {"long_tiles", test_long_tiles},
    };
    return test_main(argc, argv, tests, (int)(sizeof tests / sizeof tests[0]));
}
