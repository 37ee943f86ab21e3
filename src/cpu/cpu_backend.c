/*
 * cpu_backend.c — the cpu backend's entry in the backend table: context state (a persistent
 * thread pool and the detected instruction set) and the operations of fwd*.c, kvcache*.c
 * and bwd*.c.
 */
#include "cpu/cpu.h"

#include <stdlib.h>
#include <unistd.h>

static fa_status cpu_available(void) { return FA_OK; }

/* 0 = FLASHATTN_NUM_THREADS when set to a positive number, else every online core. */
static int resolve_num_threads(int requested) {
    if (requested > 0) return requested;
    const char *env = getenv("FLASHATTN_NUM_THREADS");
    if (env && *env) {
        char *end = NULL;
        long n = strtol(env, &end, 10);
        if (*end == '\0' && n > 0 && n <= 4096) return (int)n;
    }
    long cores = sysconf(_SC_NPROCESSORS_ONLN);
    return cores > 0 ? (int)cores : 1;
}

static fa_status cpu_set_num_threads(fa_context *ctx, int num_threads) {
    FA_RETURN_IF(num_threads < 0, FA_ERR_INVALID_ARGUMENT,
                 "num_threads must be >= 0 (0 = default) (got %d)", num_threads);
    fa_cpu_state *state = fa_cpu_state_of(ctx);
    int n = resolve_num_threads(num_threads);
    fa_pool *pool = NULL;
    FA_FORWARD_IF(fa_pool_create(n, &pool));
    fa_pool_destroy(state->pool);
    state->pool = pool;
    ctx->num_threads = n;
    return FA_OK;
}

static fa_status cpu_context_init(fa_context *ctx) {
    fa_cpu_state *state = calloc(1, sizeof *state);
    FA_RETURN_IF(!state, FA_ERR_OUT_OF_MEMORY, "cpu context: out of memory");
    state->isa = fa_cpu_detect_isa();
    ctx->impl = state;
    fa_status status = cpu_set_num_threads(ctx, ctx->num_threads);
    if (status != FA_OK) {
        free(state);
        ctx->impl = NULL;
    }
    return status;
}

static void cpu_context_free(fa_context *ctx) {
    fa_cpu_state *state = fa_cpu_state_of(ctx);
    if (!state) return;
    fa_pool_destroy(state->pool);
    free(state);
    ctx->impl = NULL;
}

const fa_backend_ops fa_cpu_backend = {
    .name = "cpu",
    .available = cpu_available,
    .context_init = cpu_context_init,
    .context_free = cpu_context_free,
    .set_num_threads = cpu_set_num_threads,
    .precompile = NULL,
    .jit_cache_dir = NULL,
    .fwd_workspace = fa_cpu_fwd_workspace,
    .fwd = fa_cpu_fwd,
    .bwd_workspace = fa_cpu_bwd_workspace,
    .bwd = fa_cpu_bwd,
    .kvcache_workspace = fa_cpu_kvcache_workspace,
    .kvcache = fa_cpu_kvcache,
};
