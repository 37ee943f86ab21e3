/*
 * cpu.h — what the cpu backend's files share: the context state, the thread pool, the
 * instruction-set dispatch and the dtype conversions. Implemented in pool.c, isa.c and
 * convert.c; the backend table is cpu_backend.c; forward and kvcache in fwd*.c; backward in
 * bwd*.c.
 */
#ifndef FA_CPU_H
#define FA_CPU_H

#include "fa_internal.h"

/* ---------------------------------------------------------------- thread pool */
/* A persistent pool: threads are made once and wait on a condition variable between runs.
 * fa_pool_run hands tasks out through an atomic counter (dynamic schedule) and returns when
 * every task is done. The calling thread works too, as thread 0. */
typedef struct fa_pool fa_pool;
typedef void (*fa_pool_fn)(void *arg, int64_t task, int thread);

fa_status fa_pool_create(int num_threads, fa_pool **pool);
void fa_pool_destroy(fa_pool *pool);
int fa_pool_size(const fa_pool *pool);
void fa_pool_run(fa_pool *pool, int64_t num_tasks, fa_pool_fn fn, void *arg);

/* ---------------------------------------------------------------- isa */
typedef enum fa_cpu_isa {
    FA_ISA_SCALAR = 0, /* portable C */
    FA_ISA_AVX2 = 1,   /* + FMA, F16C */
    FA_ISA_AVX512 = 2, /* F, BW, VL, DQ */
    FA_ISA_AVX512_BF16 = 3,
    FA_ISA_NEON = 4
} fa_cpu_isa;

fa_cpu_isa fa_cpu_detect_isa(void); /* honours FLASHATTN_CPU_ISA=scalar|avx2|avx512|... to narrow */
const char *fa_cpu_isa_name(fa_cpu_isa isa);

/* ---------------------------------------------------------------- context state */
typedef struct fa_cpu_state {
    fa_pool *pool;
    fa_cpu_isa isa;
} fa_cpu_state;

static inline fa_cpu_state *fa_cpu_state_of(fa_context *ctx) { return (fa_cpu_state *)ctx->impl; }

/* ---------------------------------------------------------------- dtypes */
float fa_f16_to_f32(uint16_t h);
uint16_t fa_f32_to_f16(float f);   /* round to nearest even */
float fa_bf16_to_f32(uint16_t h);
uint16_t fa_f32_to_bf16(float f);  /* round to nearest even, NaN kept */
/* n elements of dtype at src (contiguous) to f32, and back. */
void fa_load_row_f32(int32_t dtype, const void *src, float *dst, int64_t n);
void fa_store_row_f32(int32_t dtype, const float *src, void *dst, int64_t n);

/* ---------------------------------------------------------------- operations */
fa_status fa_cpu_fwd_workspace(fa_context *ctx, const fa_problem *p, const fa_fwd_args *a,
                               size_t *bytes);
fa_status fa_cpu_fwd(fa_context *ctx, const fa_problem *p, const fa_fwd_args *a, void *ws,
                     size_t ws_bytes);
fa_status fa_cpu_bwd_workspace(fa_context *ctx, const fa_problem *p, const fa_bwd_args *a,
                               size_t *bytes);
fa_status fa_cpu_bwd(fa_context *ctx, const fa_problem *p, const fa_bwd_args *a, void *ws,
                     size_t ws_bytes);
fa_status fa_cpu_kvcache_workspace(fa_context *ctx, const fa_problem *p, const fa_kvcache_args *a,
                                   size_t *bytes);
fa_status fa_cpu_kvcache(fa_context *ctx, const fa_problem *p, const fa_kvcache_args *a, void *ws,
                         size_t ws_bytes);

#endif /* FA_CPU_H */
