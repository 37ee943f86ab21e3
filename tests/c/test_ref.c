/*
 * test_ref.c — checks the oracles themselves, without the library's kernels.
 *
 *   - ref_bwd (float64) equals central finite differences of sum(out * dout) through ref_fwd,
 *     for every option (causal, window, softcap, ALiBi, dropout, GQA, d != d_v, varlen).
 *   - The plain same-dtype implementation computes the same function: close to the float64
 *     truth in f32, and within a few dtype ulps in f16 and bf16.
 *   - Known closed forms: identical keys give the mean of v; a row without keys gives 0, +inf.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>

#include "cases.h"
#include "ref.h"

/* Tiny cases covering every option; inputs are float64 tensors (TT_F64). */
static int tiny_cfgs(int32_t dtype, cfg *out) {
    int n = 0;
    cfg c = cfg_basic(dtype, 2, 5, 6, 4, 2, 3, 5);
    out[n++] = c;
    c.causal = true;
    out[n++] = c;
    c.causal = false, c.wl = 1, c.wr = 2;
    out[n++] = c;
    c = cfg_basic(dtype, 2, 7, 3, 2, 1, 4, 3); /* s_q > s_k: rows without keys under causal */
    c.causal = true, c.alibi = 2;
    out[n++] = c;
    c.causal = false, c.alibi = 1, c.scale = 0.7f;
    out[n++] = c;
    c = cfg_basic(dtype, 2, 4, 5, 2, 2, 3, 2);
    c.softcap = 3.0f;
    out[n++] = c;
    c.softcap = 0, c.dropout = 0.3f;
    out[n++] = c;
    c = cfg_basic(dtype, 3, 4, 5, 3, 1, 2, 3);
    c.varlen = true, c.causal = true, c.dropout = 0.2f, c.alibi = 1;
    out[n++] = c;
    return n;
}

static double loss(const fcase *fc, const tt *out, const tt *lse) {
    ref_fwd(&fc->f, &fc->o, TT_F64, &out->v, &lse->v, NULL);
    return tt_dot(&out->v, &fc->dout.v);
}

static void fd_check(const cfg *c) {
    char desc[256];
    cfg_describe(c, desc, sizeof desc);
    fcase fc = case_make(c);
    tt out = tt_make(TT_F64, 0, fc.out.v.ndim, fc.out.v.shape);
    tt lse = tt_make(TT_F64, 0, fc.lse.v.ndim, fc.lse.v.shape);
    tt grads[3];
    const tt *inputs[3] = {&fc.q, &fc.k, &fc.v};
    for (int i = 0; i < 3; ++i) grads[i] = tt_make(TT_F64, 0, inputs[i]->v.ndim, inputs[i]->v.shape);
    ref_bwd(&fc.g, &fc.o, TT_F64, &grads[0].v, &grads[1].v, &grads[2].v);
    const double eps = 1e-5;
    for (int i = 0; i < 3; ++i) {
        const fa_tensor *x = &inputs[i]->v;
        double worst = 0, scale = fmax(1, tt_max_abs(&grads[i].v));
        int64_t idx[FA_MAX_DIMS];
        for (int64_t n = 0; n < tt_numel(x); ++n) {
            tt_unravel(x, n, idx);
            double x0 = tt_get(x, idx);
            tt_set(x, idx, x0 + eps);
            double up = loss(&fc, &out, &lse);
            tt_set(x, idx, x0 - eps);
            double down = loss(&fc, &out, &lse);
            tt_set(x, idx, x0);
            double fd = (up - down) / (2 * eps);
            worst = fmax(worst, fabs(fd - tt_get(&grads[i].v, idx)));
        }
        CHECK(worst <= 1e-7 * scale, "%s: d%c differs from finite differences by %.3g (scale %.3g)",
              desc, "qkv"[i], worst, scale);
    }
    for (int i = 0; i < 3; ++i) tt_free(&grads[i]);
    tt_free(&out), tt_free(&lse);
    case_free(&fc);
}

static void test_ref_backward_matches_finite_differences(void) {
    cfg cs[16];
    int n = tiny_cfgs(TT_F64, cs);
    for (int i = 0; i < n; ++i) fd_check(&cs[i]);
}

/* The plain version in dtype must compute the same function as the truth: its error is a few
 * roundings of the dtype (relative to the output's magnitude). */
static void plain_close(const cfg *c, double tol) {
    char desc[256];
    cfg_describe(c, desc, sizeof desc);
    fcase fc = case_make(c);
    tt r_out = tt_make(TT_F64, 0, fc.out.v.ndim, fc.out.v.shape);
    tt p_out = tt_make(TT_F64, 0, fc.out.v.ndim, fc.out.v.shape);
    tt r_lse = tt_make(TT_F64, 0, fc.lse.v.ndim, fc.lse.v.shape);
    tt p_lse = tt_make(TT_F64, 0, fc.lse.v.ndim, fc.lse.v.shape);
    ref_fwd(&fc.f, &fc.o, TT_F64, &r_out.v, &r_lse.v, NULL);
    ref_fwd(&fc.f, &fc.o, c->dtype, &p_out.v, &p_lse.v, NULL);
    double e_out = max_abs_diff(&p_out.v, &r_out.v), e_lse = max_abs_diff(&p_lse.v, &r_lse.v);
    CHECK(e_out <= tol && e_lse <= tol * 8, "%s: plain fwd err out %.3g lse %.3g > %.3g", desc,
          e_out, e_lse, tol);
    const tt *inputs[3] = {&fc.q, &fc.k, &fc.v};
    tt g_r[3], g_p[3];
    for (int i = 0; i < 3; ++i) {
        g_r[i] = tt_make(TT_F64, 0, inputs[i]->v.ndim, inputs[i]->v.shape);
        g_p[i] = tt_make(TT_F64, 0, inputs[i]->v.ndim, inputs[i]->v.shape);
    }
    ref_bwd(&fc.g, &fc.o, TT_F64, &g_r[0].v, &g_r[1].v, &g_r[2].v);
    ref_bwd(&fc.g, &fc.o, c->dtype, &g_p[0].v, &g_p[1].v, &g_p[2].v);
    for (int i = 0; i < 3; ++i) {
        double e = max_abs_diff(&g_p[i].v, &g_r[i].v);
        CHECK(e <= tol * 8, "%s: plain bwd err d%c %.3g > %.3g", desc, "qkv"[i], e, tol * 8);
        tt_free(&g_r[i]), tt_free(&g_p[i]);
    }
    tt_free(&r_out), tt_free(&p_out), tt_free(&r_lse), tt_free(&p_lse);
    case_free(&fc);
}

static void test_plain_implementation_is_the_same_function(void) {
    const int32_t dtypes[3] = {FA_DTYPE_F32, FA_DTYPE_F16, FA_DTYPE_BF16};
    const double tols[3] = {1e-5, 2e-2, 1.5e-1};
    for (int t = 0; t < 3; ++t) {
        cfg cs[16];
        int n = tiny_cfgs(dtypes[t], cs);
        for (int i = 0; i < n; ++i) plain_close(&cs[i], tols[t] * (cs[i].softcap > 0 ? 4 : 1));
    }
}

static void test_closed_forms(void) {
    /* identical keys: softmax is uniform, out = mean of v, lse = s + log(s_k) */
    cfg c = cfg_basic(TT_F64, 1, 3, 4, 2, 1, 2, 3);
    fcase fc = case_make(&c);
    int64_t idx[FA_MAX_DIMS];
    TT_FOR_EACH(&fc.k.v, idx) tt_set(&fc.k.v, idx, idx[3] + 1.0);
    tt out = tt_make(TT_F64, 0, fc.out.v.ndim, fc.out.v.shape);
    tt lse = tt_make(TT_F64, 0, fc.lse.v.ndim, fc.lse.v.shape);
    ref_fwd(&fc.f, &fc.o, TT_F64, &out.v, &lse.v, NULL);
    for (int64_t i = 0; i < 3; ++i)
        for (int64_t h = 0; h < 2; ++h) {
            double s = (AT(&fc.q.v, 0, i, h, 0) + 2 * AT(&fc.q.v, 0, i, h, 1)) / sqrt(2.0);
            CHECK(fabs(AT(&lse.v, 0, h, i) - (s + log(4.0))) < 1e-12, "uniform lse");
            for (int64_t e = 0; e < 3; ++e) {
                double mean = 0;
                for (int64_t j = 0; j < 4; ++j) mean += AT(&fc.v.v, 0, j, 0, e) / 4;
                CHECK(fabs(AT(&out.v, 0, i, h, e) - mean) < 1e-12, "uniform out");
            }
        }
    tt_free(&out), tt_free(&lse);
    case_free(&fc);

    /* causal with s_q > s_k: the first s_q - s_k rows see nothing: out 0, lse +inf */
    c = cfg_basic(TT_F64, 1, 5, 2, 1, 1, 2, 2);
    c.causal = true;
    fc = case_make(&c);
    out = tt_make(TT_F64, 0, fc.out.v.ndim, fc.out.v.shape);
    lse = tt_make(TT_F64, 0, fc.lse.v.ndim, fc.lse.v.shape);
    ref_fwd(&fc.f, &fc.o, TT_F64, &out.v, &lse.v, NULL);
    for (int64_t i = 0; i < 5; ++i) {
        bool empty = i < 3;
        CHECK(empty == isinf(AT(&lse.v, 0, 0, i)), "row %lld of causal 5x2", (long long)i);
        if (empty) CHECK(AT(&out.v, 0, i, 0, 0) == 0 && AT(&out.v, 0, i, 0, 1) == 0, "empty out");
    }
    tt_free(&out), tt_free(&lse);
    case_free(&fc);
}

int main(int argc, char **argv) {
    static const test_case tests[] = {
        {"ref_backward_matches_finite_differences", test_ref_backward_matches_finite_differences},
        {"plain_implementation_is_the_same_function", test_plain_implementation_is_the_same_function},
        {"closed_forms", test_closed_forms},
    };
    return test_main(argc, argv, tests, (int)(sizeof tests / sizeof tests[0]));
}
