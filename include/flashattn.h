/*
 * flashattn.h — the one public header of libflashattn, a FlashAttention engine in C11.
 *
 * Read top to bottom: version, status, tensors, options, contexts, operations.
 *
 * Conventions
 *   - Every function that can fail returns fa_status. On failure a thread-local message
 *     (fa_last_error_message) names the argument, the expected and the actual value,
 *     e.g. "k.shape[2] (nheads_k) must divide q.shape[2] (nheads) = 6 (got 4)".
 *   - The library never aborts, exits, prints or allocates device memory on the hot path.
 *     The caller allocates outputs and workspace (ask fa_*_workspace_size first).
 *   - Tensors are plain structs; strides are in elements (as DLPack and PyTorch); the last
 *     dimension must be contiguous (stride 1). Any other stride is allowed.
 *   - Layouts follow flash-attn 2.x: batched (batch, seqlen, nheads, headdim), varlen
 *     (total_tokens, nheads, headdim) with cu_seqlens. Semantics match flash-attn 2.8.
 *   - A context belongs to one backend and one device; tensors passed to it must live there.
 */
#ifndef FLASHATTN_H
#define FLASHATTN_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#if defined(_WIN32) && defined(FA_BUILDING_SHARED)
#define FA_API __declspec(dllexport)
#elif defined(__GNUC__) && defined(FA_BUILDING_LIBRARY)
#define FA_API __attribute__((visibility("default")))
#else
#define FA_API
#endif

/* ---------------------------------------------------------------- version */
#define FA_VERSION_MAJOR 0
#define FA_VERSION_MINOR 1
#define FA_VERSION_PATCH 0
#define FA_VERSION_NUMBER (FA_VERSION_MAJOR * 10000 + FA_VERSION_MINOR * 100 + FA_VERSION_PATCH)
/* Bumped whenever a public struct changes layout. Public structs are append-only. */
#define FA_ABI_VERSION 1

FA_API unsigned fa_version_number(void);  /* FA_VERSION_NUMBER of the built library */
FA_API const char *fa_version_string(void); /* "0.1.0" */
FA_API unsigned fa_abi_version(void);

/* sizeof / offsetof of public structs, for bindings that mirror them (ctypes).
 * Unknown names return (size_t)-1. Example: fa_abi_offsetof("fa_fwd_args", "out"). */
FA_API size_t fa_abi_sizeof(const char *struct_name);
FA_API size_t fa_abi_offsetof(const char *struct_name, const char *field_name);

/* ---------------------------------------------------------------- status */
/* Numbers are fixed forever; new codes are appended. */
typedef enum fa_status {
    FA_OK = 0,
    FA_ERR_INVALID_ARGUMENT = 1,    /* a shape, stride, dtype or value is wrong */
    FA_ERR_UNSUPPORTED = 2,         /* valid, but this backend/build cannot do it */
    FA_ERR_BACKEND_UNAVAILABLE = 3, /* e.g. no libcuda on this machine */
    FA_ERR_OUT_OF_MEMORY = 4,
    FA_ERR_WORKSPACE_TOO_SMALL = 5,
    FA_ERR_COMPILE = 6,             /* run-time kernel compilation failed (message holds the log) */
    FA_ERR_LAUNCH = 7,
    FA_ERR_DEVICE = 8,              /* a driver call failed */
    FA_ERR_INTERNAL = 9
} fa_status;

FA_API const char *fa_status_string(fa_status status); /* static name, e.g. "FA_ERR_INVALID_ARGUMENT" */
/* Detail of the last failure on this thread ("" after a success). Valid until the next call. */
FA_API const char *fa_last_error_message(void);

/* ---------------------------------------------------------------- tensors */
typedef enum fa_dtype {
    FA_DTYPE_F32 = 0,
    FA_DTYPE_F16 = 1,
    FA_DTYPE_BF16 = 2,
    FA_DTYPE_I32 = 3,
    FA_DTYPE_I64 = 4
} fa_dtype;

#define FA_MAX_DIMS 4

/* A strided view. data == NULL marks an optional tensor as absent. */
typedef struct fa_tensor {
    void *data;
    int32_t dtype; /* fa_dtype */
    int32_t ndim;  /* 1..FA_MAX_DIMS */
    int64_t shape[FA_MAX_DIMS];
    int64_t stride[FA_MAX_DIMS]; /* in elements */
} fa_tensor;

/* ---------------------------------------------------------------- options */
typedef struct fa_options {
    float softmax_scale;  /* 0 = default 1/sqrt(q head dim) */
    bool causal;          /* bottom-right aligned: query i sees key j iff j <= i + s_k - s_q */
    int32_t window_left;  /* local attention (left, right); -1 = unbounded */
    int32_t window_right;
    float softcap;        /* > 0: s = softcap * tanh(s / softcap), before ALiBi and masks */
    float dropout_p;      /* probability of dropping, in [0, 1); not with softcap or kvcache */
    uint64_t rng_seed;    /* dropout: counter-based RNG, same (seed, offset) = same mask */
    uint64_t rng_offset;
    bool deterministic;   /* backward: bit-reproducible dq accumulation */
    int32_t num_splits;   /* split-KV, and the dQ slices of a deterministic cuda backward:
                           * 0 = heuristic, 1 = no split, n > 1 forces n (<= 128) */
    bool rotary_interleaved; /* kvcache rotary: true pairs (0,1),(2,3)..; false GPT-NeoX halves */
} fa_options;

/* flash-attn's defaults: scale 1/sqrt(d), window (-1,-1), no dropout, num_splits 0,
 * rotary_interleaved true. */
FA_API fa_options fa_options_default(void);

/* ---------------------------------------------------------------- contexts */
typedef enum fa_backend {
    FA_BACKEND_AUTO = 0, /* the best available: cuda when usable, else cpu */
    FA_BACKEND_CPU = 1,
    FA_BACKEND_CUDA = 2,
    FA_BACKEND_OPENCL = 3 /* reserved, not implemented yet */
} fa_backend;

typedef struct fa_context fa_context;

FA_API const char *fa_backend_name(fa_backend backend); /* "cpu", "cuda", ... */
/* FA_OK when usable here; otherwise FA_ERR_BACKEND_UNAVAILABLE and the message says why. */
FA_API fa_status fa_backend_available(fa_backend backend);

/* device_index: GPU ordinal (ignored by cpu). The cuda backend uses the context current on the
 * calling thread when there is one, and the primary context of the device otherwise. */
FA_API fa_status fa_context_create(fa_backend backend, int device_index, fa_context **ctx);
FA_API void fa_context_destroy(fa_context *ctx); /* NULL is fine */
FA_API fa_backend fa_context_backend(const fa_context *ctx);
/* cpu: size of the persistent thread pool; 0 = default (FLASHATTN_NUM_THREADS, else all cores). */
FA_API fa_status fa_context_set_num_threads(fa_context *ctx, int num_threads);
FA_API int fa_context_num_threads(const fa_context *ctx);
/* cuda: the stream later calls run on (a CUstream; NULL = the legacy default stream). */
FA_API fa_status fa_context_set_stream(fa_context *ctx, void *stream);

/* ---------------------------------------------------------------- run-time compilation */
/* The cuda backend compiles its kernels at first use (NVRTC) and caches them on disk.
 * fa_jit_cache_dir: the cache folder in use ("" when the cache is off or cuda is not built).
 * fa_precompile: compiles every shipped kernel variant for arch (e.g. "sm_80", "sm_90a") into
 * the disk cache; needs libnvrtc but no GPU. *num_variants (may be NULL) gets the count. */
FA_API const char *fa_jit_cache_dir(void);
FA_API fa_status fa_precompile(fa_backend backend, const char *arch, int *num_variants);

/* ---------------------------------------------------------------- forward */
/*
 * Batched: q (b, s_q, h, d), k (b, s_k, h_k, d), v (b, s_k, h_k, d_v),
 *          out (b, s_q, h, d_v), softmax_lse f32 (b, h, s_q).
 * Varlen (cu_seqlens_q set): q (total_q, h, d), k/v (total_k, h_k, d|d_v),
 *          out (total_q, h, d_v), softmax_lse f32 (h, total_q).
 *          Sequence i covers rows [cu_seqlens_q[i], cu_seqlens_q[i+1]) of q, likewise for k.
 *          seqused_k (b): only the first seqused_k[i] keys of sequence i are used.
 *          leftpad_k (b): keys of sequence i start leftpad_k[i] rows later (and count from there).
 *          block_table (b, max_blocks): k/v are paged, (num_blocks, page_size, h_k, d); key
 *          position p of sequence i lives in page block_table[i][p / page_size], row p % page_size.
 *          Any page_size >= 1.
 * h % h_k == 0 (GQA: query head j reads kv head j / (h / h_k)). d, d_v in 1..256.
 * q, k, v, out share one dtype (f32, f16 or bf16); accumulation is always f32.
 * softmax_lse is the natural-log logsumexp of each row; a row with no visible key gets
 * out = 0 and lse = +inf.
 * attn_probs (optional, q's dtype, (b, h, >= max s_q, >= max s_k)): for testing, the
 * normalised probabilities exp(s - lse) before dropout, negated where dropout dropped them
 * (a dropped zero is written as -0.0); positions outside the sequence are 0.
 */
typedef struct fa_fwd_args {
    fa_tensor q, k, v;
    fa_tensor cu_seqlens_q, cu_seqlens_k; /* i32 (b + 1), varlen only */
    fa_tensor seqused_k;                  /* i32 (b), optional, varlen only */
    fa_tensor leftpad_k;                  /* i32 (b), optional, varlen only, not with block_table */
    fa_tensor block_table;                /* i32 (b, max_blocks), optional, varlen only */
    fa_tensor alibi_slopes;               /* f32 (h) or (b, h), optional */
    int64_t max_seqlen_q, max_seqlen_k;   /* varlen: >= every sequence's length */
    fa_tensor out;                        /* output */
    fa_tensor softmax_lse;                /* output */
    fa_tensor attn_probs;                 /* optional output */
} fa_fwd_args;

FA_API fa_status fa_fwd_workspace_size(fa_context *ctx, const fa_fwd_args *args,
                                       const fa_options *opts, size_t *bytes);
FA_API fa_status fa_fwd(fa_context *ctx, const fa_fwd_args *args, const fa_options *opts,
                        void *workspace, size_t workspace_bytes);

/* ---------------------------------------------------------------- backward */
/*
 * The tensors of a forward call (same layouts, batched or varlen; no paging, seqused or
 * leftpad) plus dout (like out). Writes dq, dk, dv (shapes of q, k, v; any strides with the
 * last one 1, e.g. views into one packed buffer) and softmax_d = rowsum(dout * out) in
 * softmax_lse's layout. Dropout regenerates the forward's mask from (rng_seed, rng_offset).
 * dk/dv of a GQA group are summed over its query heads.
 */
typedef struct fa_bwd_args {
    fa_tensor dout, q, k, v, out, softmax_lse;
    fa_tensor cu_seqlens_q, cu_seqlens_k; /* i32 (b + 1), varlen only */
    fa_tensor alibi_slopes;               /* f32 (h) or (b, h), optional */
    int64_t max_seqlen_q, max_seqlen_k;   /* varlen only */
    fa_tensor dq, dk, dv;                 /* outputs */
    fa_tensor softmax_d;                  /* output, f32, layout of softmax_lse */
} fa_bwd_args;

FA_API fa_status fa_bwd_workspace_size(fa_context *ctx, const fa_bwd_args *args,
                                       const fa_options *opts, size_t *bytes);
FA_API fa_status fa_bwd(fa_context *ctx, const fa_bwd_args *args, const fa_options *opts,
                        void *workspace, size_t workspace_bytes);

/* ---------------------------------------------------------------- kv cache */
/*
 * Inference step over a cache (flash_attn_with_kvcache):
 *   q (b, s_q, h, d); k_cache/v_cache (b_cache, s_cache, h_k, d|d_v), or paged with
 *   block_table (b, max_blocks): (num_blocks, page_size, h_k, d|d_v), any page_size >= 1.
 *   k_new/v_new (b, s_new, h_k, d|d_v), optional, given together: written in place into cache
 *   row cache_batch_idx[i] (default i) at positions [cache_seqlens[i], cache_seqlens[i] + s_new),
 *   after rotary for k. Attention then covers keys [cache_leftpad[i], cache_seqlens[i] + s_new).
 *   cache_seqlens (b) i32, optional: valid tokens per row (default: all s_cache); required with
 *   k_new. The library never updates it.
 *   rotary_cos/rotary_sin (s_ro, rotary_dim / 2), q's dtype, optional, need k_new: rotates the
 *   new k at positions cache_seqlens[i] + j, and q at cache_seqlens[i] + j when causal or local,
 *   else at cache_seqlens[i]. rotary_dim is even and <= d.
 *   out (b, s_q, h, d_v), softmax_lse f32 (b, h, s_q).
 * Split-KV: opts->num_splits (0 = heuristic). No dropout.
 */
typedef struct fa_kvcache_args {
    fa_tensor q, k_cache, v_cache;
    fa_tensor k_new, v_new;          /* optional */
    fa_tensor cache_seqlens;         /* i32 (b), optional */
    fa_tensor cache_batch_idx;       /* i32 (b), optional, not with block_table */
    fa_tensor cache_leftpad;         /* i32 (b), optional, not with block_table */
    fa_tensor block_table;           /* i32 (b, max_blocks), optional */
    fa_tensor rotary_cos, rotary_sin; /* optional */
    fa_tensor alibi_slopes;          /* f32 (h) or (b, h), optional */
    fa_tensor out;                   /* output */
    fa_tensor softmax_lse;           /* output */
} fa_kvcache_args;

FA_API fa_status fa_fwd_kvcache_workspace_size(fa_context *ctx, const fa_kvcache_args *args,
                                               const fa_options *opts, size_t *bytes);
FA_API fa_status fa_fwd_kvcache(fa_context *ctx, const fa_kvcache_args *args,
                                const fa_options *opts, void *workspace, size_t workspace_bytes);

#ifdef __cplusplus
}
#endif
#endif /* FLASHATTN_H */
