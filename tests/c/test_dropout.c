/*
 * test_dropout.c — dropout: the kept fraction is 1 - p statistically; the mask that attn_probs'
 * sign bits reveal is exactly fa_philox.h's; forward and backward apply that same mask (both are
 * checked against the reference that draws it from fa_philox.h); the mask depends on (seed,
 * offset) only.
 */
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "cases.h"
#include "ref.h"

/* The fraction of attn_probs entries inside the sequences whose sign says "dropped". */
static double dropped_fraction(const fcase *fc, int64_t *count) {
    int64_t dropped = 0, n = 0;
    for (int64_t b = 0; b < fc->c.batch; ++b)
        for (int64_t h = 0; h < fc->c.h; ++h)
            for (int64_t i = 0; i < fc->len_q[b]; ++i)
                for (int64_t j = 0; j < fc->len_k[b]; ++j, ++n)
                    dropped += signbit(AT(&fc->probs.v, b, h, i, j)) != 0;
    *count = n;
    return n ? (double)dropped / (double)n : 0;
}

static void test_kept_fraction(void) {
    const float ps[4] = {0.17f, 0.5f, 0.03f, 0.9f};
    for (int i = 0; i < 4; ++i) {
        cfg c = cfg_basic(FA_DTYPE_BF16, 2, 200, 230, 4, 2, 16, 16);
        c.dropout = ps[i], c.probs = true;
        fcase fc = case_make(&c);
        if (case_run_fwd(&fc, test_ctx())) {
            int64_t n;
            double frac = dropped_fraction(&fc, &n);
            double sigma = sqrt(ps[i] * (1 - ps[i]) / (double)n);
            CHECK(fabs(frac - ps[i]) <= 6 * sigma, "p = %g: dropped %.5f of %lld (6 sigma = %.5f)",
                  ps[i], frac, (long long)n, 6 * sigma);
        }
        case_free(&fc);
    }
    /* p = 0: nothing is dropped, no sign bit set */
    cfg c = cfg_basic(FA_DTYPE_F16, 1, 30, 40, 2, 2, 8, 8);
    c.probs = true;
    fcase fc = case_make(&c);
    int64_t n;
    if (case_run_fwd(&fc, test_ctx()))
        CHECK(dropped_fraction(&fc, &n) == 0, "p = 0 dropped something");
    case_free(&fc);
}

/* attn_probs (values and mask) and out against the reference, which draws the mask from
 * fa_philox.h: cases.c checks every sign bit against it. */
static void test_forward_mask(void) {
    const int32_t dtypes[3] = {FA_DTYPE_F32, FA_DTYPE_F16, FA_DTYPE_BF16};
    for (int t = 0; t < 3; ++t)
        for (int v = 0; v < 4; ++v) {
            cfg c = cfg_basic(dtypes[t], 3, 45, 70, 6, v == 1 ? 1 : 2, 32, 48);
            c.dropout = v == 3 ? 0.6f : 0.17f, c.probs = true;
            c.causal = v == 1;
            c.varlen = v == 2;
            c.alibi = v == 3 ? 2 : 0;
            c.wl = v == 0 ? 9 : -1, c.wr = v == 0 ? 4 : -1;
            case_check_fwd(&c);
        }
}

/* The backward regenerates the forward's mask: gradients against the reference with it. */
static void test_backward_mask(void) {
    const int32_t dtypes[3] = {FA_DTYPE_F32, FA_DTYPE_F16, FA_DTYPE_BF16};
    for (int t = 0; t < 3; ++t)
        for (int v = 0; v < 3; ++v) {
            cfg c = cfg_basic(dtypes[t], 3, 40, 33, 4, v == 0 ? 4 : 2, 24, 24);
            c.dropout = v == 2 ? 0.5f : 0.17f;
            c.causal = v == 1;
            c.varlen = v == 2;
            case_check_bwd(&c);
        }
}

/* Same (seed, offset): the same mask. Another offset (low or high 32 bits) or seed: another. */
static void test_seed_and_offset(void) {
    cfg c = cfg_basic(FA_DTYPE_F32, 1, 64, 64, 2, 2, 8, 8);
    c.dropout = 0.5f, c.probs = true;
    fcase fc = case_make(&c);
    tt first = tt_clone(&fc.probs.v, 0);
    const uint64_t seed = fc.o.rng_seed, offset = fc.o.rng_offset;
    bool ok = case_run_fwd(&fc, test_ctx());
    if (ok) tt_copy_values(&first, &fc.probs.v);
    const struct {
        uint64_t seed, offset;
        bool same;
        const char *what;
    } runs[4] = {{seed, offset, true, "the same seed and offset"},
                 {seed, offset + 1, false, "offset + 1"},
                 {seed, offset ^ (1ull << 40), false, "offset's high bits"},
                 {seed ^ (1ull << 50), offset, false, "seed's high bits"}};
    for (int r = 0; ok && r < 4; ++r) {
        fc.o.rng_seed = runs[r].seed, fc.o.rng_offset = runs[r].offset;
        if (!case_run_fwd(&fc, test_ctx())) break;
        int64_t differ = 0, n = tt_numel(&fc.probs.v), idx[FA_MAX_DIMS];
        for (int64_t k = 0; k < n; ++k) {
            tt_unravel(&fc.probs.v, k, idx);
            differ += signbit(tt_get(&fc.probs.v, idx)) != signbit(tt_get(&first.v, idx));
        }
        if (runs[r].same) CHECK(differ == 0, "%s: %lld mask bits differ", runs[r].what, (long long)differ);
        else CHECK(differ > n / 4, "%s: only %lld of %lld mask bits differ", runs[r].what,
                   (long long)differ, (long long)n);
    }
    tt_free(&first);
    case_free(&fc);
}

int main(int argc, char **argv) {
    static const test_case tests[] = {
        {"kept_fraction", test_kept_fraction},
        {"forward_mask", test_forward_mask},
        {"backward_mask", test_backward_mask},
        {"seed_and_offset", test_seed_and_offset},
    };
    return test_main(argc, argv, tests, (int)(sizeof tests / sizeof tests[0]));
}
