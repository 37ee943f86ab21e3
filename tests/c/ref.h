/*
 * ref.h — the oracles of the C tests: naive attention, one query row at a time.
 *
 * prec = TT_F64 gives the float64 truth. prec = the inputs' dtype gives flash-attn's "plain
 * same-dtype implementation" (attention_ref(upcast=False, reorder_ops=True) and its autograd):
 * k * scale rounded to the dtype, every matmul accumulated in f32 and rounded to the dtype,
 * softcap and softmax computed in f32 and rounded, ALiBi bias promoting scores to f32, v scaled
 * by 1/(1-p) in the dtype; the lse is computed in f32. The library's error against the truth
 * must stay within a small multiple of the plain implementation's (harness.h: check_rule).
 *
 * Inputs are read through the library's own argument structs (any layout, strides, paging);
 * results go to TT_F64 tensors with the shapes of the library's outputs. Semantics: flashattn.h
 * and the fa_problem comment in src/core/fa_internal.h.
 */
#ifndef FA_TEST_REF_H
#define FA_TEST_REF_H

#include <stdbool.h>
#include <stdint.h>

#include "flashattn.h"

/* fa_philox.h's mask: whether element (b, h, i, j) of a sequence is kept. */
bool ref_dropout_keep(const fa_options *o, int64_t nheads, int64_t b, int64_t h, int64_t i,
                      int64_t j);

/* out like args->out, lse like args->softmax_lse; probs (may be NULL): (b, h, >= max s_q,
 * >= max s_k) normalised probabilities before dropout, 0 outside the sequence. */
void ref_fwd(const fa_fwd_args *a, const fa_options *o, int32_t prec, const fa_tensor *out,
             const fa_tensor *lse, const fa_tensor *probs);

/* dq, dk, dv like args->q, k, v. The gradient of sum(out * dout) of the reference forward. */
void ref_bwd(const fa_bwd_args *a, const fa_options *o, int32_t prec, const fa_tensor *dq,
             const fa_tensor *dk, const fa_tensor *dv);
/* rowsum(dout * out) in float64, softmax_lse's layout. */
void ref_softmax_d(const fa_bwd_args *a, const fa_tensor *softmax_d);

/* k_cache/v_cache: the caches as they must be after the call (the originals plus the appended
 * rows), shaped like args->k_cache/v_cache; out and lse as the library's. Call it before the
 * library, which updates the caches in place. */
void ref_kvcache(const fa_kvcache_args *a, const fa_options *o, int32_t prec,
                 const fa_tensor *k_cache, const fa_tensor *v_cache, const fa_tensor *out,
                 const fa_tensor *lse);

#endif /* FA_TEST_REF_H */
