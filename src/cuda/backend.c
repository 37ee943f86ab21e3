/*
 * backend.c — the cuda backend table: availability, contexts (the caller's current context,
 * else the device's primary one; never a new context), kernel launch and the JIT entry points.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cuda_backend.h"

static fa_status cuda_available(void) { return fa_cuda_load_driver(); }

static fa_status query(CUdevice dev, int attribute, int *value, const char *what) {
    return fa_cuda_check(fa_cu.cuDeviceGetAttribute(value, attribute, dev), what);
}

static fa_status cuda_context_init(fa_context *ctx) {
    FA_FORWARD_IF(fa_cuda_load_driver());
    fa_cuda_state *state = calloc(1, sizeof *state);
    FA_RETURN_IF(!state, FA_ERR_OUT_OF_MEMORY, "cuda: no memory for a context");
    fa_status status = fa_cuda_check(fa_cu.cuDeviceGet(&state->device, ctx->device_index),
                                     "cuDeviceGet");
    CUcontext current = NULL;
    CUdevice current_device = -1;
    if (status == FA_OK && fa_cu.cuCtxGetCurrent(&current) == FA_CU_SUCCESS && current &&
        fa_cu.cuCtxGetDevice(&current_device) == FA_CU_SUCCESS &&
        current_device == state->device) {
        state->cu_ctx = current; /* the caller's (e.g. torch's) context */
    } else if (status == FA_OK) {
        status = fa_cuda_check(fa_cu.cuDevicePrimaryCtxRetain(&state->cu_ctx, state->device),
                               "cuDevicePrimaryCtxRetain");
        state->primary = status == FA_OK;
    }
    int major = 0, minor = 0;
    if (status == FA_OK)
        status = query(state->device, FA_CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR, &major,
                       "compute capability");
    if (status == FA_OK)
        status = query(state->device, FA_CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR, &minor,
                       "compute capability");
    if (status == FA_OK)
        status = query(state->device, FA_CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT,
                       &state->sm_count, "multiprocessor count");
    if (status == FA_OK)
        status = query(state->device, FA_CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_BLOCK_OPTIN,
                       &state->smem_optin, "shared memory limit");
    if (status == FA_OK && major < 8)
        status = fa_fail(FA_ERR_UNSUPPORTED,
                         "cuda: device %d has compute capability %d.%d; the cuda backend needs "
                         "8.0 (Ampere) or newer",
                         ctx->device_index, major, minor);
    if (status != FA_OK) {
        if (state->primary) fa_cu.cuDevicePrimaryCtxRelease(state->device);
        free(state);
        return status;
    }
    state->cc = major * 10 + minor;
    /* One cubin per family where SASS is compatible (sm_80 runs on 8.x); 9.0 gets sm_90a so
     * that fa_precompile --arch sm_90a covers H100/H200. */
    if (major == 8)
        snprintf(state->arch, sizeof state->arch, "sm_80");
    else if (major == 9 && minor == 0)
        snprintf(state->arch, sizeof state->arch, "sm_90a");
    else
        snprintf(state->arch, sizeof state->arch, "sm_%d%d", major, minor);
    ctx->impl = state;
    return FA_OK;
}

static void cuda_context_free(fa_context *ctx) {
    fa_cuda_state *state = fa_cuda_state_of(ctx);
    if (!state) return;
    if (state->primary) fa_cu.cuDevicePrimaryCtxRelease(state->device);
    free(state);
    ctx->impl = NULL;
}

fa_status fa_cuda_enter(fa_context *ctx, fa_cuda_scope *scope) {
    fa_cuda_state *state = fa_cuda_state_of(ctx);
    scope->previous = NULL;
    scope->switched = false;
    FA_FORWARD_IF(fa_cuda_check(fa_cu.cuCtxGetCurrent(&scope->previous), "cuCtxGetCurrent"));
    if (scope->previous == state->cu_ctx) return FA_OK;
    FA_FORWARD_IF(fa_cuda_check(fa_cu.cuCtxSetCurrent(state->cu_ctx), "cuCtxSetCurrent"));
    scope->switched = true;
    return FA_OK;
}

void fa_cuda_leave(const fa_cuda_scope *scope) {
    if (scope->switched) fa_cu.cuCtxSetCurrent(scope->previous);
}

fa_status fa_cuda_launch(fa_context *ctx, const fa_launch *l, const fa_attn_params *params) {
    fa_cuda_state *state = fa_cuda_state_of(ctx);
    if (l->grid[0] == 0 || l->grid[1] == 0 || l->grid[2] == 0) return FA_OK; /* nothing to do */
    FA_RETURN_IF(l->grid[1] > 65535 || l->grid[2] > 65535, FA_ERR_UNSUPPORTED,
                 "cuda: %s needs a grid of (%u, %u, %u) blocks; heads and batch are limited to "
                 "65535 each on the cuda backend",
                 l->kernel, l->grid[0], l->grid[1], l->grid[2]);
    FA_RETURN_IF((int)l->smem > state->smem_optin, FA_ERR_UNSUPPORTED,
                 "cuda: %s [%s] needs %u bytes of shared memory; the device allows %d",
                 l->kernel, l->defines, l->smem, state->smem_optin);
    CUkernel kernel = NULL;
    FA_FORWARD_IF(fa_jit_kernel(l->program, l->defines, state->arch, l->kernel, &kernel));
    if (l->smem > 48 * 1024)
        FA_FORWARD_IF(fa_cuda_check(
            fa_cu.cuKernelSetAttribute(FA_CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES,
                                       (int)l->smem, kernel, state->device),
            "cuKernelSetAttribute"));
    void *args[] = {(void *)params};
    CUresult r = fa_cu.cuLaunchKernel((CUfunction)kernel, l->grid[0], l->grid[1], l->grid[2],
                                      l->block, 1, 1, l->smem, (CUstream)ctx->stream, args, NULL);
    FA_RETURN_IF(r != FA_CU_SUCCESS, FA_ERR_LAUNCH, "cuda: launching %s [%s] failed (error %d)",
                 l->kernel, l->defines, r);
    return FA_OK;
}

static fa_status cuda_precompile(const char *arch, int *num_variants) {
    return fa_cuda_precompile(arch, num_variants);
}

static const char *cuda_jit_cache_dir(void) { return fa_jit_cache_path(); }

const fa_backend_ops fa_cuda_backend = {
    .name = "cuda",
    .available = cuda_available,
    .context_init = cuda_context_init,
    .context_free = cuda_context_free,
    .set_num_threads = NULL,
    .precompile = cuda_precompile,
    .jit_cache_dir = cuda_jit_cache_dir,
    .fwd_workspace = fa_cuda_fwd_workspace,
    .fwd = fa_cuda_fwd,
    .bwd_workspace = fa_cuda_bwd_workspace,
    .bwd = fa_cuda_bwd,
    .kvcache_workspace = fa_cuda_kvcache_workspace,
    .kvcache = fa_cuda_kvcache,
};
