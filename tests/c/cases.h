/*
 * cases.h — one forward/backward test case from a compact description.
 *
 * A cfg names the axes that matter (dtype, shapes, masks, layout); case_make draws fresh
 * random inputs for it and wires the library's argument structs. case_check_fwd/bwd run the
 * library with poisoned outputs and check it against the float64 reference with flash-attn's
 * rule (2x the plain same-dtype error for out/lse, 3x with softcap as in FA3's tests, 3x for
 * gradients), NaN-free, with the padding of every strided tensor untouched.
 */
#ifndef FA_TEST_CASES_H
#define FA_TEST_CASES_H

#include "harness.h"

typedef struct cfg {
    int32_t dtype;
    int64_t batch, s_q, s_k, h, h_k, d, d_v; /* varlen: s_q, s_k are the maxima */
    int pad;             /* stride padding of every q/k/v/out/lse/grad tensor (0 = contiguous) */
    float scale;         /* 0 = default */
    bool causal;
    int wl, wr;          /* window; use -1, -1 for none */
    float softcap;
    int alibi;           /* 0 none, 1 slopes (h), 2 slopes (b, h) */
    float dropout;
    bool probs;          /* ask for attn_probs */
    bool varlen;         /* random lengths in [0, max], some empty */
    bool seqused, leftpad;
    int page_size;       /* > 0: paged k/v (varlen) */
    uint64_t seed;       /* dropout rng */
    bool deterministic;  /* opts.deterministic */
    int num_splits;      /* opts.num_splits (0 = heuristic) */
} cfg;

/* A random cfg over every axis (for the fwd; bwd = true keeps to what the backward takes:
 * no paging, seqused_k, leftpad_k or attn_probs). Shapes stay small. */
cfg cfg_random(bool bwd);
/* How many random cfgs a test draws: FA_TEST_RANDOM, else `dflt` (a quarter when quick). */
int random_case_count(int dflt);

/* A cfg with every option off: no window, default scale, contiguous, batched. */
cfg cfg_basic(int32_t dtype, int64_t batch, int64_t s_q, int64_t s_k, int64_t h, int64_t h_k,
              int64_t d, int64_t d_v);
void cfg_describe(const cfg *c, char *buf, size_t n);

typedef struct fcase {
    cfg c;
    fa_options o;
    fa_fwd_args f;
    fa_bwd_args g;
    tt q, k, v, out, lse, probs, alibi, dout, dq, dk, dv, dsoft;
    int32_t *cu_q, *cu_k, *seqused, *leftpad, *block_table; /* owned */
    int64_t *len_q, *len_k;                                  /* per sequence */
} fcase;

fcase case_make(const cfg *c);
void case_free(fcase *fc);

/* Runs fa_fwd on fc (outputs poisoned first); false when the call failed. */
bool case_run_fwd(fcase *fc, fa_context *ctx);
/* Runs fa_bwd (needs the forward's out and lse in fc); gradients poisoned first. */
bool case_run_bwd(fcase *fc, fa_context *ctx);

/* The f32 rounding of softmax arguments of size |lse| (exp(s - lse) recomputed from the lse, or
 * exp2 of scaled scores): about 4 * 2^-24 * (1 + max|lse|) relative, at the scale of max|ref|.
 * The plain implementation, exp(s - max) / sum, does not have it; it matters only in f32, where
 * the plain error is tiny (flash-attn itself tests fp16/bf16 only). */
double softmax_floor(const fa_tensor *lse, const fa_tensor *ref);

/* Full checks against the reference; each returns true when everything held. */
bool case_check_fwd(const cfg *c);
bool case_check_bwd(const cfg *c);

#endif /* FA_TEST_CASES_H */
