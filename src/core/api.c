/*
 * api.c — the public entry points: backend registry, contexts, and the three operations.
 * Each operation validates (validate.c), checks the workspace, then calls the backend.
 */
#include <stdlib.h>

#include "fa_internal.h"

/* ---------------------------------------------------------------- registry */
static const fa_backend_ops *backend_ops(fa_backend backend) {
    switch (backend) {
    case FA_BACKEND_CPU: return &fa_cpu_backend;
#ifdef FA_WITH_CUDA
    case FA_BACKEND_CUDA: return &fa_cuda_backend;
#endif
    default: return NULL;
    }
}

const char *fa_backend_name(fa_backend backend) {
    switch (backend) {
    case FA_BACKEND_AUTO: return "auto";
    case FA_BACKEND_CPU: return "cpu";
    case FA_BACKEND_CUDA: return "cuda";
    case FA_BACKEND_OPENCL: return "opencl";
    }
    return "unknown";
}

fa_status fa_backend_available(fa_backend backend) {
    if (backend == FA_BACKEND_AUTO) return FA_OK; /* cpu always is */
    const fa_backend_ops *ops = backend_ops(backend);
    if (!ops) {
        if (backend == FA_BACKEND_CUDA)
            return fa_fail(FA_ERR_BACKEND_UNAVAILABLE,
                           "cuda: this build of libflashattn has no cuda backend (FA_WITH_CUDA=OFF)");
        if (backend == FA_BACKEND_OPENCL)
            return fa_fail(FA_ERR_BACKEND_UNAVAILABLE, "opencl: not implemented yet");
        return fa_fail(FA_ERR_INVALID_ARGUMENT, "backend must be a fa_backend value (got %d)",
                       (int)backend);
    }
    fa_status status = ops->available();
    if (status == FA_OK) fa_clear_error();
    return status;
}

/* AUTO: the first usable backend in order of preference. */
static fa_backend resolve_auto(void) {
#ifdef FA_WITH_CUDA
    if (fa_cuda_backend.available() == FA_OK) return FA_BACKEND_CUDA;
#endif
    return FA_BACKEND_CPU;
}

/* ---------------------------------------------------------------- contexts */
fa_status fa_context_create(fa_backend backend, int device_index, fa_context **ctx) {
    FA_RETURN_IF(!ctx, FA_ERR_INVALID_ARGUMENT, "ctx is NULL");
    *ctx = NULL;
    if (backend == FA_BACKEND_AUTO) backend = resolve_auto();
    FA_FORWARD_IF(fa_backend_available(backend));
    FA_RETURN_IF(device_index < 0, FA_ERR_INVALID_ARGUMENT, "device_index must be >= 0 (got %d)",
                 device_index);
    fa_context *c = calloc(1, sizeof *c);
    FA_RETURN_IF(!c, FA_ERR_OUT_OF_MEMORY, "fa_context_create: out of host memory");
    c->ops = backend_ops(backend);
    c->backend = backend;
    c->device_index = device_index;
    fa_status status = c->ops->context_init(c);
    if (status != FA_OK) {
        free(c);
        return status;
    }
    *ctx = c;
    fa_clear_error();
    return FA_OK;
}

void fa_context_destroy(fa_context *ctx) {
    if (!ctx) return;
    ctx->ops->context_free(ctx);
    free(ctx);
}

fa_backend fa_context_backend(const fa_context *ctx) { return ctx ? ctx->backend : FA_BACKEND_AUTO; }

fa_status fa_context_set_num_threads(fa_context *ctx, int num_threads) {
    FA_RETURN_IF(!ctx, FA_ERR_INVALID_ARGUMENT, "ctx is NULL");
    FA_RETURN_IF(num_threads < 0, FA_ERR_INVALID_ARGUMENT, "num_threads must be >= 0 (got %d)",
                 num_threads);
    FA_RETURN_IF(!ctx->ops->set_num_threads, FA_ERR_UNSUPPORTED,
                 "num_threads: the %s backend has no thread pool", ctx->ops->name);
    FA_FORWARD_IF(ctx->ops->set_num_threads(ctx, num_threads));
    fa_clear_error();
    return FA_OK;
}

int fa_context_num_threads(const fa_context *ctx) { return ctx ? ctx->num_threads : 0; }

fa_status fa_context_set_stream(fa_context *ctx, void *stream) {
    FA_RETURN_IF(!ctx, FA_ERR_INVALID_ARGUMENT, "ctx is NULL");
    ctx->stream = stream;
    return FA_OK;
}

fa_options fa_options_default(void) {
    return (fa_options){.softmax_scale = 0.0f, .window_left = -1, .window_right = -1,
                        .rotary_interleaved = true};
}

/* ---------------------------------------------------------------- run-time compilation */
const char *fa_jit_cache_dir(void) {
#ifdef FA_WITH_CUDA
    if (fa_cuda_backend.jit_cache_dir) return fa_cuda_backend.jit_cache_dir();
#endif
    return "";
}

fa_status fa_precompile(fa_backend backend, const char *arch, int *num_variants) {
    if (num_variants) *num_variants = 0;
    FA_RETURN_IF(!arch, FA_ERR_INVALID_ARGUMENT, "arch is NULL (expected e.g. \"sm_90a\")");
    const fa_backend_ops *ops = backend_ops(backend);
    if (!ops) return fa_backend_available(backend);
    FA_RETURN_IF(!ops->precompile, FA_ERR_UNSUPPORTED,
                 "backend: %s compiles nothing at run time", ops->name);
    FA_FORWARD_IF(ops->precompile(arch, num_variants));
    fa_clear_error();
    return FA_OK;
}

/* ---------------------------------------------------------------- operations */
static fa_status check_call(const fa_context *ctx, const void *args, size_t *bytes) {
    FA_RETURN_IF(!ctx, FA_ERR_INVALID_ARGUMENT, "ctx is NULL");
    FA_RETURN_IF(!args, FA_ERR_INVALID_ARGUMENT, "args is NULL");
    if (bytes) *bytes = 0;
    return FA_OK;
}

static fa_status check_workspace(size_t needed, const void *ws, size_t ws_bytes) {
    FA_RETURN_IF(ws_bytes < needed, FA_ERR_WORKSPACE_TOO_SMALL,
                 "workspace_bytes must be >= %zu for this call (got %zu)", needed, ws_bytes);
    FA_RETURN_IF(needed > 0 && !ws, FA_ERR_INVALID_ARGUMENT,
                 "workspace is NULL but this call needs %zu bytes", needed);
    return FA_OK;
}

static bool host_data(const fa_context *ctx) { return ctx->backend == FA_BACKEND_CPU; }

/* The six entry points share one shape: validate, size the workspace, run. */
#define FA_DEFINE_OP(op, args_t, validate, ws_fn, run_fn)                                          \
    fa_status op##_workspace_size(fa_context *ctx, const args_t *args, const fa_options *opts,    \
                                  size_t *bytes) {                                                 \
        FA_RETURN_IF(!bytes, FA_ERR_INVALID_ARGUMENT, "bytes is NULL");                            \
        FA_FORWARD_IF(check_call(ctx, args, bytes));                                               \
        fa_problem problem;                                                                        \
        FA_FORWARD_IF(validate(args, opts, host_data(ctx), &problem));                             \
        FA_FORWARD_IF(ctx->ops->ws_fn(ctx, &problem, args, bytes));                                \
        fa_clear_error();                                                                          \
        return FA_OK;                                                                              \
    }                                                                                              \
    fa_status op(fa_context *ctx, const args_t *args, const fa_options *opts, void *workspace,    \
                 size_t workspace_bytes) {                                                         \
        FA_FORWARD_IF(check_call(ctx, args, NULL));                                                \
        fa_problem problem;                                                                        \
        FA_FORWARD_IF(validate(args, opts, host_data(ctx), &problem));                             \
        size_t needed = 0;                                                                         \
        FA_FORWARD_IF(ctx->ops->ws_fn(ctx, &problem, args, &needed));                              \
        FA_FORWARD_IF(check_workspace(needed, workspace, workspace_bytes));                        \
        FA_FORWARD_IF(ctx->ops->run_fn(ctx, &problem, args, workspace, workspace_bytes));          \
        fa_clear_error();                                                                          \
        return FA_OK;                                                                              \
    }

FA_DEFINE_OP(fa_fwd, fa_fwd_args, fa_validate_fwd, fwd_workspace, fwd)
FA_DEFINE_OP(fa_bwd, fa_bwd_args, fa_validate_bwd, bwd_workspace, bwd)
FA_DEFINE_OP(fa_fwd_kvcache, fa_kvcache_args, fa_validate_kvcache, kvcache_workspace, kvcache)
