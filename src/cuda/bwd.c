/*
 * bwd.c — the backward. Not implemented yet on the GPU: refused with FA_ERR_UNSUPPORTED.
 */
#include "cuda_backend.h"

fa_status fa_cuda_bwd_workspace(fa_context *ctx, const fa_problem *p, const fa_bwd_args *a,
                                size_t *bytes) {
    (void)ctx, (void)p, (void)a;
    *bytes = 0;
    return FA_OK;
}

fa_status fa_cuda_bwd(fa_context *ctx, const fa_problem *p, const fa_bwd_args *a, void *ws,
                      size_t ws_bytes) {
    (void)ctx, (void)p, (void)a, (void)ws, (void)ws_bytes;
    return fa_fail(FA_ERR_UNSUPPORTED, "cuda: the backward (fa_bwd) is not implemented yet on the "
                                       "cuda backend; use the cpu backend");
}
