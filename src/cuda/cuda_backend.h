/*
 * cuda_backend.h — what the cuda backend's host files share: the context state, kernel
 * launch, the parameter block filled from tensors, and the operations (fwd.c, bwd.c,
 * kvcache.c). Kernel variants are named in variants.c.
 */
#ifndef FA_CUDA_BACKEND_H
#define FA_CUDA_BACKEND_H

#include "cuda_api.h"
#include "fa_params.h"
#include "jit.h"

typedef struct fa_cuda_state {
    CUcontext cu_ctx;
    CUdevice device;
    bool primary;     /* we retained the device's primary context */
    int sm_count;
    int cc;           /* compute capability, e.g. 90 */
    int smem_optin;   /* max dynamic shared memory per block */
    char arch[16];    /* NVRTC target: "sm_80" for 8.x, "sm_90a" for 9.0, else sm_XY */
} fa_cuda_state;

static inline fa_cuda_state *fa_cuda_state_of(fa_context *ctx) {
    return (fa_cuda_state *)ctx->impl;
}

/* A kernel launch: variant (program, defines), entry point, grid, block, dynamic smem. */
typedef struct fa_launch {
    const char *program;
    char defines[256];
    const char *kernel;
    unsigned grid[3];
    unsigned block;
    unsigned smem;
} fa_launch;

/* Makes the context current for the duration of a call (restored by fa_cuda_leave). */
typedef struct fa_cuda_scope {
    CUcontext previous;
    bool switched;
} fa_cuda_scope;
fa_status fa_cuda_enter(fa_context *ctx, fa_cuda_scope *scope);
void fa_cuda_leave(const fa_cuda_scope *scope);

fa_status fa_cuda_launch(fa_context *ctx, const fa_launch *launch, const fa_attn_params *params);

/* ---------------------------------------------------------------- variants (variants.c) */
/* Tiles of the tensor-core forward for padded head dims. */
typedef struct fa_fwd_tiles {
    int mt, nwarps, bn;
} fa_fwd_tiles;
int fa_round_hd(int64_t d); /* head dim rounded up to a multiple of 32 */
fa_fwd_tiles fa_fwd_mma_tiles(int hd, int hdv, int smem_limit);
unsigned fa_fwd_mma_smem(int hd, int hdv, fa_fwd_tiles tiles);
void fa_fwd_mma_defines(char *out, size_t size, int dtype, int hd, int hdv, bool dropout,
                        fa_fwd_tiles tiles);

/* Tiles of the sm_90a forward (fwd_wgmma.cu): 64 * nwg query rows by bn keys, K and V in
 * `stages` stages. */
typedef struct fa_wgmma_tiles {
    int nwg, bn, stages;
} fa_wgmma_tiles;
fa_wgmma_tiles fa_fwd_wgmma_tiles(int hd);
unsigned fa_fwd_wgmma_smem(int hd, fa_wgmma_tiles tiles);
void fa_fwd_wgmma_defines(char *out, size_t size, int dtype, int hd, fa_wgmma_tiles tiles);
void fa_simt_defines(char *out, size_t size, int dtype, int64_t d_max);
fa_status fa_cuda_precompile(const char *arch, int *num_variants);

/* ---------------------------------------------------------------- operations */
fa_status fa_cuda_fwd_workspace(fa_context *ctx, const fa_problem *p, const fa_fwd_args *a,
                                size_t *bytes);
fa_status fa_cuda_fwd(fa_context *ctx, const fa_problem *p, const fa_fwd_args *a, void *ws,
                      size_t ws_bytes);
fa_status fa_cuda_bwd_workspace(fa_context *ctx, const fa_problem *p, const fa_bwd_args *a,
                                size_t *bytes);
fa_status fa_cuda_bwd(fa_context *ctx, const fa_problem *p, const fa_bwd_args *a, void *ws,
                      size_t ws_bytes);
fa_status fa_cuda_kvcache_workspace(fa_context *ctx, const fa_problem *p,
                                    const fa_kvcache_args *a, size_t *bytes);
fa_status fa_cuda_kvcache(fa_context *ctx, const fa_problem *p, const fa_kvcache_args *a,
                          void *ws, size_t ws_bytes);

/* The attention kernel (fwd.c) over the sequences params describes; context already current. */
fa_status fa_cuda_attention(fa_context *ctx, const fa_problem *p, const fa_attn_params *params);
/* Whether every non-last stride is a multiple of 8 elements and data is 16-byte aligned. */
bool fa_cuda_rows_aligned(const fa_tensor *t);

/* The options shared by every operation (scale, window, softcap, ALiBi mode, dropout). */
void fa_cuda_fill_common(const fa_problem *p, fa_attn_params *params);
/* Strides of a (b, s, h, d) or varlen (total, h, d) tensor into batch/row/head strides. */
void fa_cuda_rows(const fa_tensor *t, bool varlen, fa_i64 *batch, fa_i64 *row, fa_i64 *head);

/* ---------------------------------------------------------------- split-KV decode (decode.c) */
typedef struct fa_decode_tiles {
    int nwarps, stages, kc; /* warps, ring depth, keys per chunk */
} fa_decode_tiles;
fa_decode_tiles fa_decode_tiles_for(int hd, int hdv, int smem_limit);
unsigned fa_decode_smem(int hd, int hdv, fa_decode_tiles tiles);
void fa_decode_defines(char *out, size_t size, int dtype, int hd, int hdv, fa_decode_tiles tiles);
/* Whether a kv-cache step runs on the decode kernel (f16/bf16, s_q * nheads / nheads_k <= 64). */
bool fa_cuda_decode_applies(const fa_problem *p);
/* Workspace bytes of the split partials (0 with one split). */
size_t fa_cuda_decode_workspace(fa_context *ctx, const fa_problem *p);
/* The decode kernel (and the combine) over params; ws: fa_cuda_decode_workspace bytes. */
fa_status fa_cuda_decode(fa_context *ctx, const fa_problem *p, const fa_attn_params *params,
                         void *ws);

/* ---------------------------------------------------------------- tensor-core backward */
/* Tiles of bwd_mma.cu: bm query rows per block, nwarps warps, 16 * nwarps keys per CTA. */
typedef struct fa_bwd_tiles {
    int bm, nwarps;
} fa_bwd_tiles;
fa_bwd_tiles fa_bwd_mma_tiles(int hd, int hdv, int smem_limit);
unsigned fa_bwd_mma_smem(int hd, int hdv, fa_bwd_tiles tiles);
void fa_bwd_mma_defines(char *out, size_t size, int dtype, int hd, int hdv, bool dropout,
                        fa_bwd_tiles tiles);
fa_status fa_bwd_mma_precompile(const char *arch, int smem_limit, int *count);
/* bwd_wgmma.cu (sm_90a, head dim 64 or 128): 128 keys per CTA, bm query rows per block. */
int fa_bwd_wgmma_bm(int hd);
unsigned fa_bwd_wgmma_smem(int hd);
void fa_bwd_wgmma_defines(char *out, size_t size, int dtype, int hd);

#endif /* FA_CUDA_BACKEND_H */
