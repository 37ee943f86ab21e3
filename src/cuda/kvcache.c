/*
 * kvcache.c — the kv-cache step. Not implemented yet on the GPU: refused with
 * FA_ERR_UNSUPPORTED.
 */
#include "cuda_backend.h"

fa_status fa_cuda_kvcache_workspace(fa_context *ctx, const fa_problem *p,
                                    const fa_kvcache_args *a, size_t *bytes) {
    (void)ctx, (void)p, (void)a;
    *bytes = 0;
    return FA_OK;
}

fa_status fa_cuda_kvcache(fa_context *ctx, const fa_problem *p, const fa_kvcache_args *a,
                          void *ws, size_t ws_bytes) {
    (void)ctx, (void)p, (void)a, (void)ws, (void)ws_bytes;
    return fa_fail(FA_ERR_UNSUPPORTED, "cuda: the kv-cache step (fa_fwd_kvcache) is not "
                                       "implemented yet on the cuda backend; use the cpu backend");
}
