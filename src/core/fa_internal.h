/*
 * fa_internal.h — what the core shares with the backends: errors, the validated problem and
 * the backend table. Backends include only this file (and flashattn.h through it); the core
 * never includes a backend header.
 *
 * Flow of every operation (src/core/api.c):
 *   public args -> validate.c (the one place that checks input) -> fa_problem
 *               -> workspace check -> ctx->ops->fwd/bwd/kvcache(ctx, problem, args, ws)
 * A backend may therefore trust every shape, stride, dtype and option it is handed.
 */
#ifndef FA_INTERNAL_H
#define FA_INTERNAL_H

#include "flashattn.h"

/* ---------------------------------------------------------------- errors */
#if defined(__GNUC__)
#define FA_PRINTF(fmt_idx, arg_idx) __attribute__((format(printf, fmt_idx, arg_idx)))
#else
#define FA_PRINTF(fmt_idx, arg_idx)
#endif

/* Records the thread-local message and returns status, so: return fa_fail(FA_ERR_..., "..."). */
fa_status fa_fail(fa_status status, const char *fmt, ...) FA_PRINTF(2, 3);
void fa_clear_error(void);

#define FA_RETURN_IF(cond, status, ...)                                                            \
    do {                                                                                           \
        if (cond) return fa_fail((status), __VA_ARGS__);                                           \
    } while (0)

#define FA_FORWARD_IF(expr)                                                                        \
    do {                                                                                           \
        fa_status fa_forward_status_ = (expr);                                                     \
        if (fa_forward_status_ != FA_OK) return fa_forward_status_;                                \
    } while (0)

size_t fa_dtype_size(int32_t dtype); /* 0 for an unknown dtype */
const char *fa_dtype_name(int32_t dtype);

/* ---------------------------------------------------------------- the problem */
typedef enum fa_op { FA_OP_FWD = 0, FA_OP_BWD = 1, FA_OP_KVCACHE = 2 } fa_op;

typedef enum fa_alibi_mode {
    FA_ALIBI_NONE = 0,
    FA_ALIBI_PER_HEAD = 1, /* slopes (h) */
    FA_ALIBI_PER_BATCH = 2 /* slopes (b, h) */
} fa_alibi_mode;

/*
 * Everything a backend needs to know besides the tensors themselves, normalised so that
 * backends share one meaning:
 *   - window_left/right: -1 = unbounded. causal is folded in as right = 0 (keeping left),
 *     bounds >= max_seqlen_k become -1, and causal is dropped when max_seqlen_q == 1 without
 *     ALiBi (as flash-attn does; it is equivalent).
 *   - is_causal = (left < 0 && right == 0); is_local = a window bound set and not is_causal.
 *     After is_causal is decided, a one-sided window gets max_seqlen_k on its open side
 *     (flash-attn's rule; it differs from unbounded only when s_q > s_k + 1), so both bounds
 *     are -1 or both are >= 0.
 * Key j is visible from query i of a sequence with lengths (s_q, s_k) iff
 *     (left  < 0 || j >= i + s_k - s_q - left) && (right < 0 || j <= i + s_k - s_q + right).
 * Score: s = scale * q.k; softcap: s = softcap * tanh(s / softcap); ALiBi adds
 *     is_causal ? +slope * j : -slope * |i + s_k - s_q - j|   (flash-attn's convention).
 */
typedef struct fa_problem {
    fa_op op;
    int32_t dtype;         /* of q, k, v, out */
    int64_t batch;         /* sequences */
    int64_t nheads, nheads_k, d, d_v;
    int64_t max_seqlen_q;  /* batched: s_q */
    int64_t max_seqlen_k;  /* batched: s_k; kvcache: cache capacity per row */
    bool varlen;           /* cu_seqlens given */
    bool paged;            /* block_table given */
    int64_t page_size;     /* paged: k.shape[1] */
    bool has_seqused_k, has_leftpad_k;
    fa_alibi_mode alibi;
    float scale;           /* resolved softmax scale */
    float softcap;         /* 0 = off */
    int32_t window_left, window_right;
    bool is_causal, is_local;
    float dropout_p;       /* 0 = off */
    bool return_probs;     /* fwd: attn_probs given */
    /* kvcache only */
    bool has_new_kv;       /* k_new/v_new given */
    int64_t seqlen_new;    /* k_new.shape[1] */
    bool has_cache_seqlens, has_batch_idx, has_cache_leftpad;
    int64_t rotary_dim;    /* 0 = no rotary */
    fa_options opts;       /* the caller's options (rng, deterministic, num_splits, ...) */
} fa_problem;

/* validate.c: the only place that checks arguments. FA_OK or FA_ERR_INVALID_ARGUMENT with a
 * message naming the argument. host_data: the tensors live in host memory, so the contents of
 * index tensors (cu_seqlens, seqused_k, leftpad, block_table, cache_seqlens, cache_batch_idx)
 * are checked too — after that no index a backend derives from them is out of bounds. */
fa_status fa_validate_fwd(const fa_fwd_args *args, const fa_options *opts, bool host_data,
                          fa_problem *problem);
fa_status fa_validate_bwd(const fa_bwd_args *args, const fa_options *opts, bool host_data,
                          fa_problem *problem);
fa_status fa_validate_kvcache(const fa_kvcache_args *args, const fa_options *opts, bool host_data,
                              fa_problem *problem);

/* ---------------------------------------------------------------- backends */
typedef struct fa_backend_ops {
    const char *name;
    /* FA_OK if usable on this machine, else FA_ERR_BACKEND_UNAVAILABLE with the reason. */
    fa_status (*available)(void);
    fa_status (*context_init)(fa_context *ctx); /* sets ctx->impl */
    void (*context_free)(fa_context *ctx);
    /* Optional (NULL: the call is refused as unsupported). */
    fa_status (*set_num_threads)(fa_context *ctx, int num_threads);
    fa_status (*precompile)(const char *arch, int *num_variants);
    const char *(*jit_cache_dir)(void);

    fa_status (*fwd_workspace)(fa_context *ctx, const fa_problem *p, const fa_fwd_args *a,
                               size_t *bytes);
    fa_status (*fwd)(fa_context *ctx, const fa_problem *p, const fa_fwd_args *a, void *ws,
                     size_t ws_bytes);
    fa_status (*bwd_workspace)(fa_context *ctx, const fa_problem *p, const fa_bwd_args *a,
                               size_t *bytes);
    fa_status (*bwd)(fa_context *ctx, const fa_problem *p, const fa_bwd_args *a, void *ws,
                     size_t ws_bytes);
    fa_status (*kvcache_workspace)(fa_context *ctx, const fa_problem *p,
                                   const fa_kvcache_args *a, size_t *bytes);
    fa_status (*kvcache)(fa_context *ctx, const fa_problem *p, const fa_kvcache_args *a, void *ws,
                         size_t ws_bytes);
} fa_backend_ops;

struct fa_context {
    const fa_backend_ops *ops;
    fa_backend backend;
    int device_index;
    int num_threads; /* cpu */
    void *stream;    /* cuda: CUstream */
    void *impl;      /* backend state */
};

/* One entry point per backend directory (src/<backend>/). */
extern const fa_backend_ops fa_cpu_backend;
extern const fa_backend_ops fa_cuda_backend; /* only when built with FA_WITH_CUDA */

#endif /* FA_INTERNAL_H */
