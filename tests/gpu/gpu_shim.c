/*
 * gpu_shim.c — runs the C tests' grid (tests/c: cases.c, ref.c, test_*.c) on the cuda backend.
 *
 * The test sources are compiled with fa_fwd, fa_bwd, fa_fwd_kvcache (and their workspace
 * queries) renamed to the shim_* functions below, and main renamed to gpu_wrapped_main. Each
 * shim copies every tensor of the call to device memory (the whole strided span, so padding and
 * poison travel too), runs the real call on a cuda context, copies the outputs (and the kv
 * cache) back, and checks for device errors. The tests then check the results against the
 * float64 reference exactly as they do for the cpu backend. Exit 77 (skip) without a GPU.
 */
#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "flashattn.h"

typedef int CUresult;
typedef unsigned long long CUdeviceptr;
typedef struct CUctx_st *CUcontext;

static struct {
    CUresult (*init)(unsigned);
    CUresult (*device_get)(int *, int);
    CUresult (*primary_retain)(CUcontext *, int);
    CUresult (*ctx_set)(CUcontext);
    CUresult (*alloc)(CUdeviceptr *, size_t);
    CUresult (*free_)(CUdeviceptr);
    CUresult (*h2d)(CUdeviceptr, const void *, size_t);
    CUresult (*d2h)(void *, CUdeviceptr, size_t);
    CUresult (*sync)(void);
    CUresult (*error_string)(CUresult, const char **);
} cu;

static fa_context *g_gpu;

static void *sym(void *lib, const char *name) {
    void *p = dlsym(lib, name);
    if (!p) {
        fprintf(stderr, "gpu_shim: libcuda lacks %s\n", name);
        exit(1);
    }
    return p;
}

/* A skip (77) when there is no usable GPU. */
static void gpu_init(void) {
    if (fa_backend_available(FA_BACKEND_CUDA) != FA_OK) {
        printf("SKIP: cuda backend unavailable: %s\n", fa_last_error_message());
        exit(77);
    }
    void *lib = dlopen("libcuda.so.1", RTLD_NOW);
    if (!lib) exit(77);
    *(void **)&cu.init = sym(lib, "cuInit");
    *(void **)&cu.device_get = sym(lib, "cuDeviceGet");
    *(void **)&cu.primary_retain = sym(lib, "cuDevicePrimaryCtxRetain");
    *(void **)&cu.ctx_set = sym(lib, "cuCtxSetCurrent");
    *(void **)&cu.alloc = sym(lib, "cuMemAlloc_v2");
    *(void **)&cu.free_ = sym(lib, "cuMemFree_v2");
    *(void **)&cu.h2d = sym(lib, "cuMemcpyHtoD_v2");
    *(void **)&cu.d2h = sym(lib, "cuMemcpyDtoH_v2");
    *(void **)&cu.sync = sym(lib, "cuCtxSynchronize");
    *(void **)&cu.error_string = sym(lib, "cuGetErrorString");
    int dev = 0;
    CUcontext ctx = NULL;
    if (cu.init(0) || cu.device_get(&dev, 0) || cu.primary_retain(&ctx, dev) || cu.ctx_set(ctx)) {
        printf("SKIP: no CUDA device\n");
        exit(77);
    }
    fa_status st = fa_context_create(FA_BACKEND_CUDA, 0, &g_gpu);
    if (st != FA_OK) {
        printf("FAIL: fa_context_create(cuda): %s\n", fa_last_error_message());
        exit(1);
    }
}

static void cu_check(CUresult r, const char *what) {
    if (r == 0) return;
    const char *msg = "?";
    cu.error_string(r, &msg);
    fprintf(stderr, "gpu_shim: %s failed: %s (%d)\n", what, msg, r);
    exit(1); /* a device fault poisons the context: nothing later can be trusted */
}

/* ---------------------------------------------------------------- mirrored tensors */
/* Tensors whose host spans overlap (views into one packed buffer) share one device range, so
 * outputs written through one view are not overwritten by another's copy. */
#define MAX_VIEWS 24

typedef struct mirrors {
    fa_tensor *view[MAX_VIEWS]; /* patched in place (in the copied args) */
    int is_output[MAX_VIEWS];
    int n;
    struct { char *lo, *hi; CUdeviceptr ptr; int is_output; } range[MAX_VIEWS];
    int num_ranges;
} mirrors;

static size_t elem_size(int32_t dtype) {
    return dtype == FA_DTYPE_F32 || dtype == FA_DTYPE_I32 ? 4 : dtype == FA_DTYPE_I64 ? 8 : 2;
}

static size_t span_bytes(const fa_tensor *t) {
    size_t last = 0;
    for (int i = 0; i < t->ndim; ++i) {
        if (t->shape[i] == 0) return 0;
        last += (size_t)((t->shape[i] - 1) * t->stride[i]);
    }
    return (last + 1) * elem_size(t->dtype);
}

static void add_view(mirrors *ms, fa_tensor *t, int is_output) {
    if (!t->data) return;
    ms->view[ms->n] = t;
    ms->is_output[ms->n++] = is_output;
}

/* Merges the views' spans into ranges, copies each range to the device, repoints the views. */
static void mirrors_upload(mirrors *ms) {
    ms->num_ranges = 0;
    for (int v = 0; v < ms->n; ++v) {
        char *lo = ms->view[v]->data, *hi = lo + span_bytes(ms->view[v]);
        if (hi == lo) continue;
        int r = 0;
        while (r < ms->num_ranges && (hi <= ms->range[r].lo || lo >= ms->range[r].hi)) ++r;
        if (r == ms->num_ranges) {
            ms->range[r].lo = lo, ms->range[r].hi = hi, ms->range[r].is_output = 0;
            ++ms->num_ranges;
        }
        if (lo < ms->range[r].lo) ms->range[r].lo = lo;
        if (hi > ms->range[r].hi) ms->range[r].hi = hi;
        ms->range[r].is_output |= ms->is_output[v];
        /* a grown range may now touch another: merge them (rare; restart the scan) */
        for (int o = 0; o < ms->num_ranges; ++o) {
            if (o == r || ms->range[o].hi <= ms->range[r].lo || ms->range[o].lo >= ms->range[r].hi)
                continue;
            if (ms->range[o].lo < ms->range[r].lo) ms->range[r].lo = ms->range[o].lo;
            if (ms->range[o].hi > ms->range[r].hi) ms->range[r].hi = ms->range[o].hi;
            ms->range[r].is_output |= ms->range[o].is_output;
            ms->range[o] = ms->range[--ms->num_ranges];
            o = -1;
        }
    }
    for (int r = 0; r < ms->num_ranges; ++r) {
        size_t bytes = (size_t)(ms->range[r].hi - ms->range[r].lo);
        cu_check(cu.alloc(&ms->range[r].ptr, bytes), "cuMemAlloc");
        cu_check(cu.h2d(ms->range[r].ptr, ms->range[r].lo, bytes), "cuMemcpyHtoD");
    }
    for (int v = 0; v < ms->n; ++v) {
        char *lo = ms->view[v]->data;
        void *dev = (void *)(uintptr_t)0x1000; /* empty views are never dereferenced */
        for (int r = 0; r < ms->num_ranges; ++r)
            if (span_bytes(ms->view[v]) && lo >= ms->range[r].lo && lo < ms->range[r].hi)
                dev = (void *)(uintptr_t)(ms->range[r].ptr + (size_t)(lo - ms->range[r].lo));
        ms->view[v]->data = dev;
    }
}

/* Waits for the device, copies ranges holding outputs back, frees everything. */
static void mirrors_finish(mirrors *ms, fa_status st) {
    cu_check(cu.sync(), "the kernels (cuCtxSynchronize)");
    for (int r = 0; r < ms->num_ranges; ++r) {
        if (ms->range[r].is_output && st == FA_OK)
            cu_check(cu.d2h(ms->range[r].lo, ms->range[r].ptr,
                            (size_t)(ms->range[r].hi - ms->range[r].lo)),
                     "cuMemcpyDtoH");
        cu.free_(ms->range[r].ptr);
    }
}

static CUdeviceptr alloc_ws(size_t bytes) {
    CUdeviceptr p = 0;
    if (bytes) cu_check(cu.alloc(&p, bytes), "cuMemAlloc(workspace)");
    return p;
}

/* ---------------------------------------------------------------- the shims */
fa_status shim_fa_fwd_workspace_size(fa_context *ctx, const fa_fwd_args *a, const fa_options *o,
                                     size_t *bytes);
fa_status shim_fa_fwd(fa_context *ctx, const fa_fwd_args *a, const fa_options *o, void *ws,
                      size_t ws_bytes);
fa_status shim_fa_bwd_workspace_size(fa_context *ctx, const fa_bwd_args *a, const fa_options *o,
                                     size_t *bytes);
fa_status shim_fa_bwd(fa_context *ctx, const fa_bwd_args *a, const fa_options *o, void *ws,
                      size_t ws_bytes);
fa_status shim_fa_fwd_kvcache_workspace_size(fa_context *ctx, const fa_kvcache_args *a,
                                             const fa_options *o, size_t *bytes);
fa_status shim_fa_fwd_kvcache(fa_context *ctx, const fa_kvcache_args *a, const fa_options *o,
                              void *ws, size_t ws_bytes);
int gpu_wrapped_main(int argc, char **argv);

fa_status shim_fa_fwd_workspace_size(fa_context *ctx, const fa_fwd_args *a, const fa_options *o,
                                     size_t *bytes) {
    (void)ctx;
    return fa_fwd_workspace_size(g_gpu, a, o, bytes);
}

fa_status shim_fa_fwd(fa_context *ctx, const fa_fwd_args *a, const fa_options *o, void *ws,
                      size_t ws_bytes) {
    (void)ctx, (void)ws;
    if (!a) return fa_fwd(g_gpu, a, o, NULL, ws_bytes);
    fa_fwd_args d = *a;
    mirrors ms = {.n = 0, .num_ranges = 0};
    fa_tensor *in[] = {&d.q, &d.k, &d.v, &d.cu_seqlens_q, &d.cu_seqlens_k, &d.seqused_k,
                       &d.leftpad_k, &d.block_table, &d.alibi_slopes};
    for (size_t i = 0; i < sizeof in / sizeof in[0]; ++i) add_view(&ms, in[i], 0);
    add_view(&ms, &d.out, 1);
    add_view(&ms, &d.softmax_lse, 1);
    add_view(&ms, &d.attn_probs, 1);
    mirrors_upload(&ms);
    CUdeviceptr w = alloc_ws(ws_bytes);
    fa_status st = fa_fwd(g_gpu, &d, o, (void *)(uintptr_t)w, ws_bytes);
    mirrors_finish(&ms, st);
    if (w) cu.free_(w);
    return st;
}

fa_status shim_fa_bwd_workspace_size(fa_context *ctx, const fa_bwd_args *a, const fa_options *o,
                                     size_t *bytes) {
    (void)ctx;
    return fa_bwd_workspace_size(g_gpu, a, o, bytes);
}

fa_status shim_fa_bwd(fa_context *ctx, const fa_bwd_args *a, const fa_options *o, void *ws,
                      size_t ws_bytes) {
    (void)ctx, (void)ws;
    if (!a) return fa_bwd(g_gpu, a, o, NULL, ws_bytes);
    fa_bwd_args d = *a;
    mirrors ms = {.n = 0, .num_ranges = 0};
    fa_tensor *in[] = {&d.dout, &d.q, &d.k, &d.v, &d.out, &d.softmax_lse, &d.cu_seqlens_q,
                       &d.cu_seqlens_k, &d.alibi_slopes};
    for (size_t i = 0; i < sizeof in / sizeof in[0]; ++i) add_view(&ms, in[i], 0);
    fa_tensor *out[] = {&d.dq, &d.dk, &d.dv, &d.softmax_d};
    for (size_t i = 0; i < sizeof out / sizeof out[0]; ++i) add_view(&ms, out[i], 1);
    mirrors_upload(&ms);
    CUdeviceptr w = alloc_ws(ws_bytes);
    fa_status st = fa_bwd(g_gpu, &d, o, (void *)(uintptr_t)w, ws_bytes);
    mirrors_finish(&ms, st);
    if (w) cu.free_(w);
    return st;
}

fa_status shim_fa_fwd_kvcache_workspace_size(fa_context *ctx, const fa_kvcache_args *a,
                                             const fa_options *o, size_t *bytes) {
    (void)ctx;
    return fa_fwd_kvcache_workspace_size(g_gpu, a, o, bytes);
}

fa_status shim_fa_fwd_kvcache(fa_context *ctx, const fa_kvcache_args *a, const fa_options *o,
                              void *ws, size_t ws_bytes) {
    (void)ctx, (void)ws;
    if (!a) return fa_fwd_kvcache(g_gpu, a, o, NULL, ws_bytes);
    fa_kvcache_args d = *a;
    mirrors ms = {.n = 0, .num_ranges = 0};
    fa_tensor *in[] = {&d.q, &d.k_new, &d.v_new, &d.cache_seqlens, &d.cache_batch_idx,
                       &d.cache_leftpad, &d.block_table, &d.rotary_cos, &d.rotary_sin,
                       &d.alibi_slopes};
    for (size_t i = 0; i < sizeof in / sizeof in[0]; ++i) add_view(&ms, in[i], 0);
    fa_tensor *out[] = {&d.k_cache, &d.v_cache, &d.out, &d.softmax_lse}; /* caches: in place */
    for (size_t i = 0; i < sizeof out / sizeof out[0]; ++i) add_view(&ms, out[i], 1);
    mirrors_upload(&ms);
    CUdeviceptr w = alloc_ws(ws_bytes);
    fa_status st = fa_fwd_kvcache(g_gpu, &d, o, (void *)(uintptr_t)w, ws_bytes);
    mirrors_finish(&ms, st);
    if (w) cu.free_(w);
    return st;
}

int main(int argc, char **argv) {
    gpu_init();
    printf("cuda backend, jit cache %s\n", fa_jit_cache_dir());
    int rc = gpu_wrapped_main(argc, argv);
    fa_context_destroy(g_gpu);
    return rc;
}
