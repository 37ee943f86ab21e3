/*
 * fuzz_validate.c — a fuzz harness for the validation layer (and what it lets through).
 *
 * The fuzz bytes choose an operation (fwd, bwd, kvcache), tiny shapes, layouts (batched,
 * varlen, paged), options, index contents, and mutations of single tensors (NULL data, dtype,
 * rank, one shape or stride, negative values). Every buffer is allocated to exactly the extent
 * its shape and strides describe, so ASan sees any read or write outside what the library was
 * told it may touch. The library must never crash, must answer with a documented status and
 * a message on failure, and a successful call must leave no NaN in its outputs (inputs are
 * finite, outputs start at 0).
 *
 * Built with -fsanitize=fuzzer (clang, -DFA_FUZZ=ON) it is a libFuzzer target; otherwise the
 * main below feeds it random byte strings for FUZZ_SECONDS (default 20) or FUZZ_RUNS inputs.
 */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "harness.h"

/* ---------------------------------------------------------------- reading the bytes */
typedef struct fz {
    const uint8_t *p;
    size_t n;
    uint64_t values; /* PRNG state for tensor contents, seeded from the input */
} fz;

static unsigned fz_u8(fz *f) {
    if (!f->n) return 0;
    --f->n;
    return *f->p++;
}

static int fz_range(fz *f, int lo, int hi) { return lo + (int)(fz_u8(f) % (unsigned)(hi - lo + 1)); }
static bool fz_bool(fz *f, int percent) { return (int)(fz_u8(f) % 100) < percent; }

static double fz_value(fz *f) { /* a finite value in [-2, 2) */
    f->values = f->values * 6364136223846793005ull + 1442695040888963407ull;
    return (double)(f->values >> 11) * 0x1.0p-51 - 2.0;
}

/* Every allocation of one input, freed at the end. */
typedef struct arena {
    void *ptrs[64];
    int n;
} arena;

static void *arena_alloc(arena *A, size_t bytes) {
    void *p = malloc(bytes ? bytes : 1);
    if (A->n < 64) A->ptrs[A->n++] = p;
    return p;
}

static void arena_free(arena *A) {
    for (int i = 0; i < A->n; ++i) free(A->ptrs[i]);
    A->n = 0;
}

/* ---------------------------------------------------------------- tensors */
/* Elements from the first to past the last addressed element; 0 when the view is empty or
 * its description is impossible (then any access at all is a bug). */
static int64_t extent_of(const fa_tensor *t) {
    if (t->ndim < 1 || t->ndim > FA_MAX_DIMS) return 0;
    int64_t extent = 1;
    for (int k = 0; k < t->ndim; ++k) {
        if (t->shape[k] <= 0 || t->stride[k] < 0) return 0;
        if (t->shape[k] == 1) continue; /* its stride is never multiplied by more than 0 */
        if (t->shape[k] > (1 << 20) || t->stride[k] > (1 << 20)) return INT64_MAX; /* absurd */
        extent += (t->shape[k] - 1) * t->stride[k];
    }
    return extent;
}

static void fill_values(fz *f, fa_tensor *t, int64_t extent, size_t es) {
    for (int64_t i = 0; i < extent; ++i) {
        unsigned char *p = (unsigned char *)t->data + (size_t)i * es;
        double x = fz_value(f);
        switch (t->dtype) {
        case FA_DTYPE_F16: { uint16_t h = f32_to_f16_bits((float)x); memcpy(p, &h, 2); break; }
        case FA_DTYPE_BF16: { uint16_t h = f32_to_bf16_bits((float)x); memcpy(p, &h, 2); break; }
        case FA_DTYPE_F32: { float v = (float)x; memcpy(p, &v, 4); break; }
        default: memset(p, 0, es); break;
        }
    }
}

/* A contiguous tensor (optionally with padded strides), then at most one mutation, then memory
 * for exactly what the final description addresses. `output`: zeros instead of values. */
static fa_tensor fz_tensor(fz *f, arena *A, int32_t dtype, int ndim, const int64_t *shape,
                           bool output) {
    fa_tensor t = tt_none();
    t.dtype = dtype;
    t.ndim = ndim;
    int64_t pad = fz_bool(f, 20) ? fz_range(f, 1, 2) : 0;
    for (int k = ndim - 1; k >= 0; --k) {
        t.shape[k] = shape[k];
        t.stride[k] = k == ndim - 1 ? 1 : t.stride[k + 1] * (shape[k + 1] > 0 ? shape[k + 1] : 1) + pad;
    }
    int k = ndim > 0 ? fz_range(f, 0, ndim - 1) : 0;
    bool absent = false;
    switch (fz_bool(f, 12) ? fz_range(f, 0, 8) : -1) {
    case 0: absent = true; break;
    case 1: t.dtype = fz_range(f, 0, 6); break;
    case 2: t.ndim = fz_range(f, 0, 5); break;
    case 3: t.shape[k] += fz_bool(f, 50) ? 1 : -1; break;
    case 4: t.stride[k] = fz_range(f, -1, 3); break;
    case 5: t.stride[ndim > 0 ? ndim - 1 : 0] = 2; break;
    case 6: t.shape[k] = -1; break;
    case 7: t.shape[k] = 257; break;
    case 8: t.stride[k] = INT64_MAX / 4; break;
    default: break;
    }
    if (absent) return tt_none();
    size_t es = dtype_size(t.dtype) ? dtype_size(t.dtype) : 4;
    int64_t extent = extent_of(&t);
    if (extent > (1 << 16)) extent = 0; /* absurd strides: one element, nothing may be read */
    t.data = arena_alloc(A, (size_t)extent * es);
    if (output) memset(t.data, 0, (size_t)extent * es);
    else fill_values(f, &t, extent, es);
    return t;
}

#define SHAPE(...) ((const int64_t[]){__VA_ARGS__})

/* An i32 vector given its values (a mutation may replace one). */
static fa_tensor fz_index(fz *f, arena *A, const int32_t *values, int64_t n) {
    int32_t *data = arena_alloc(A, sizeof(int32_t) * (size_t)(n > 0 ? n : 1));
    memcpy(data, values, sizeof(int32_t) * (size_t)(n > 0 ? n : 0));
    if (n > 0 && fz_bool(f, 10)) data[fz_range(f, 0, (int)n - 1)] = fz_range(f, -3, 40);
    fa_tensor t = i32_tensor(data, 1, n, 0);
    if (fz_bool(f, 3)) t.dtype = FA_DTYPE_I64;
    return t;
}

static fa_options fz_options(fz *f) {
    fa_options o = fa_options_default();
    const float scales[4] = {0, 0.5f, INFINITY, NAN};
    const float caps[4] = {0, 2.0f, -1.0f, NAN};
    const float drops[5] = {0, 0, 0.3f, 1.0f, NAN};
    o.softmax_scale = scales[fz_range(f, 0, 3) * fz_bool(f, 30)];
    o.causal = fz_bool(f, 40);
    o.window_left = fz_bool(f, 30) ? fz_range(f, -2, 6) : -1;
    o.window_right = fz_bool(f, 30) ? fz_range(f, -2, 6) : -1;
    o.softcap = caps[fz_range(f, 0, 3) * fz_bool(f, 25)];
    o.dropout_p = drops[fz_range(f, 0, 4) * fz_bool(f, 25)];
    o.rng_seed = fz_u8(f);
    o.deterministic = fz_bool(f, 30);
    o.num_splits = fz_bool(f, 20) ? fz_range(f, -1, 130) : fz_range(f, 0, 3);
    o.rotary_interleaved = fz_bool(f, 50);
    return o;
}

/* ---------------------------------------------------------------- checking a call */
static long g_runs, g_ok, g_rejected;

static bool nan_free(const fa_tensor *t) {
    int64_t extent = t->data ? extent_of(t) : 0;
    if (extent > (1 << 16)) return true;
    for (int64_t i = 0; i < extent && (t->dtype == FA_DTYPE_F32 || t->dtype == FA_DTYPE_F16 || t->dtype == FA_DTYPE_BF16); ++i) {
        const unsigned char *p = (const unsigned char *)t->data + (size_t)i * dtype_size(t->dtype);
        double x;
        if (t->dtype == FA_DTYPE_F32) { float v; memcpy(&v, p, 4); x = v; }
        else { uint16_t h; memcpy(&h, p, 2); x = t->dtype == FA_DTYPE_F16 ? f16_bits_to_f32(h) : bf16_bits_to_f32(h); }
        if (isnan(x)) return false;
    }
    return true;
}

static void fz_check(fa_status st, const char *op) {
    ++g_runs;
    if (st == FA_OK) {
        ++g_ok;
        return;
    }
    ++g_rejected;
    const char *msg = fa_last_error_message();
    if (st != FA_ERR_INVALID_ARGUMENT && st != FA_ERR_UNSUPPORTED && st != FA_ERR_OUT_OF_MEMORY) {
        fprintf(stderr, "fuzz: %s returned %s: %s\n", op, fa_status_string(st), msg);
        abort();
    }
    if (!msg || !msg[0]) {
        fprintf(stderr, "fuzz: %s returned %s without a message\n", op, fa_status_string(st));
        abort();
    }
}

static void require(bool cond, const char *what) {
    if (!cond) {
        fprintf(stderr, "fuzz: %s\n", what);
        abort();
    }
}

/* FUZZ_TRACE=1 prints every tensor of a call before it runs (to find what crashed). */
static bool trace_on(void) {
    static int on = -1;
    if (on < 0) on = getenv("FUZZ_TRACE") && atoi(getenv("FUZZ_TRACE"));
    return on;
}

static void trace(const char *name, const fa_tensor *t) {
    if (!trace_on() || !t->data) return;
    fprintf(stderr, "  %-14s %-4s ndim %d shape", name, dtype_name(t->dtype), t->ndim);
    for (int k = 0; k < t->ndim && k < FA_MAX_DIMS; ++k) fprintf(stderr, " %lld", (long long)t->shape[k]);
    fprintf(stderr, " stride");
    for (int k = 0; k < t->ndim && k < FA_MAX_DIMS; ++k) fprintf(stderr, " %lld", (long long)t->stride[k]);
    if (t->dtype == FA_DTYPE_I32 && t->ndim == 1 && t->shape[0] <= 8) {
        fprintf(stderr, " =");
        for (int64_t i = 0; i < t->shape[0]; ++i) fprintf(stderr, " %d", ((const int32_t *)t->data)[i]);
    }
    fputc('\n', stderr);
}

#define TRACE(a, field) trace(#field, &(a)->field)

/* The workspace query, then the call with that workspace (skipped when huge). */
#define FZ_RUN(size_fn, run_fn, ctx, a, o, name)                                                \
    do {                                                                                        \
        size_t bytes_ = 0;                                                                      \
        fa_status st_ = size_fn((ctx), (a), (o), &bytes_);                                      \
        fz_check(st_, name " workspace");                                                       \
        if (st_ == FA_OK && bytes_ <= ((size_t)64 << 20)) {                                     \
            void *ws_ = malloc(bytes_ ? bytes_ : 1);                                            \
            st_ = run_fn((ctx), (a), (o), ws_, bytes_);                                         \
            free(ws_);                                                                          \
            fz_check(st_, name);                                                                \
            last_ok = st_ == FA_OK;                                                             \
        }                                                                                       \
    } while (0)

static fa_context *fz_ctx(void) {
    static fa_context *ctx;
    if (!ctx && fa_context_create(FA_BACKEND_CPU, 0, &ctx) == FA_OK)
        fa_context_set_num_threads(ctx, 2);
    return ctx;
}

/* ---------------------------------------------------------------- the three operations */
typedef struct dims {
    int32_t dtype;
    int64_t batch, s_q, s_k, h, h_k, d, d_v;
    int32_t len_q[4], len_k[4], cu_q[5], cu_k[5];
    int64_t total_q, total_k;
} dims;

static dims fz_dims(fz *f) {
    const int32_t dtypes[3] = {FA_DTYPE_F32, FA_DTYPE_F16, FA_DTYPE_BF16};
    const int64_t heads[4][2] = {{1, 1}, {2, 1}, {4, 2}, {3, 2}}; /* the last is invalid */
    dims D;
    memset(&D, 0, sizeof D);
    D.dtype = dtypes[fz_range(f, 0, 2)];
    D.batch = fz_range(f, 1, 4);
    D.s_q = fz_range(f, 0, 6), D.s_k = fz_range(f, 0, 6);
    int hi = fz_range(f, 0, 3) * fz_bool(f, 80);
    D.h = heads[hi][0], D.h_k = heads[hi][1];
    D.d = fz_range(f, 1, 9), D.d_v = fz_bool(f, 70) ? D.d : fz_range(f, 1, 9);
    for (int64_t b = 0; b < D.batch; ++b) {
        D.len_q[b] = fz_range(f, 0, (int)D.s_q);
        D.len_k[b] = fz_range(f, 0, (int)D.s_k);
        D.cu_q[b + 1] = D.cu_q[b] + D.len_q[b];
        D.cu_k[b + 1] = D.cu_k[b] + D.len_k[b];
    }
    D.total_q = D.cu_q[D.batch], D.total_k = D.cu_k[D.batch];
    return D;
}

static void fz_fwd(fz *f, arena *A) {
    dims D = fz_dims(f);
    fa_options o = fz_options(f);
    fa_fwd_args a;
    memset(&a, 0, sizeof a);
    bool varlen = fz_bool(f, 50), paged = varlen && fz_bool(f, 40);
    int32_t dt = D.dtype;
    int64_t B = D.batch;
    if (varlen) {
        int64_t ps = fz_range(f, 1, 4), max_blocks = (D.s_k + ps - 1) / ps + 1;
        a.q = fz_tensor(f, A, dt, 3, SHAPE(D.total_q, D.h, D.d), false);
        if (paged) {
            int64_t blocks = B * max_blocks;
            int32_t table[4 * 8];
            for (int64_t i = 0; i < B * max_blocks; ++i) table[i] = (int32_t)(fz_u8(f) % blocks);
            a.k = fz_tensor(f, A, dt, 4, SHAPE(blocks, ps, D.h_k, D.d), false);
            a.v = fz_tensor(f, A, dt, 4, SHAPE(blocks, ps, D.h_k, D.d_v), false);
            a.block_table = fz_index(f, A, table, B * max_blocks);
            a.block_table.ndim = 2, a.block_table.shape[0] = B, a.block_table.shape[1] = max_blocks;
            a.block_table.stride[0] = max_blocks, a.block_table.stride[1] = 1;
        } else {
            a.k = fz_tensor(f, A, dt, 3, SHAPE(D.total_k, D.h_k, D.d), false);
            a.v = fz_tensor(f, A, dt, 3, SHAPE(D.total_k, D.h_k, D.d_v), false);
        }
        a.cu_seqlens_q = fz_index(f, A, D.cu_q, B + 1);
        a.cu_seqlens_k = fz_index(f, A, D.cu_k, B + 1);
        int32_t used[4], pad[4];
        for (int64_t b = 0; b < B; ++b) {
            used[b] = fz_range(f, 0, D.len_k[b]);
            pad[b] = fz_range(f, 0, used[b]);
        }
        if (fz_bool(f, 30)) a.seqused_k = fz_index(f, A, used, B);
        if (fz_bool(f, 20)) a.leftpad_k = fz_index(f, A, pad, B);
        a.max_seqlen_q = D.s_q + fz_bool(f, 10), a.max_seqlen_k = D.s_k - fz_bool(f, 5);
        a.out = fz_tensor(f, A, dt, 3, SHAPE(D.total_q, D.h, D.d_v), true);
        a.softmax_lse = fz_tensor(f, A, FA_DTYPE_F32, 2, SHAPE(D.h, D.total_q), true);
    } else {
        a.q = fz_tensor(f, A, dt, 4, SHAPE(B, D.s_q, D.h, D.d), false);
        a.k = fz_tensor(f, A, dt, 4, SHAPE(B, D.s_k, D.h_k, D.d), false);
        a.v = fz_tensor(f, A, dt, 4, SHAPE(B, D.s_k, D.h_k, D.d_v), false);
        a.out = fz_tensor(f, A, dt, 4, SHAPE(B, D.s_q, D.h, D.d_v), true);
        a.softmax_lse = fz_tensor(f, A, FA_DTYPE_F32, 3, SHAPE(B, D.h, D.s_q), true);
    }
    if (fz_bool(f, 20))
        a.alibi_slopes = fz_bool(f, 50) ? fz_tensor(f, A, FA_DTYPE_F32, 1, SHAPE(D.h), false)
                                         : fz_tensor(f, A, FA_DTYPE_F32, 2, SHAPE(B, D.h), false);
    if (fz_bool(f, 15))
        a.attn_probs = fz_tensor(f, A, dt, 4, SHAPE(B, D.h, D.s_q, D.s_k), true);
    if (trace_on())
        fprintf(stderr, "fa_fwd max_seqlen %lld %lld causal %d window %d %d\n",
                (long long)a.max_seqlen_q, (long long)a.max_seqlen_k, o.causal, o.window_left,
                o.window_right);
    TRACE(&a, q), TRACE(&a, k), TRACE(&a, v), TRACE(&a, cu_seqlens_q), TRACE(&a, cu_seqlens_k);
    TRACE(&a, seqused_k), TRACE(&a, leftpad_k), TRACE(&a, block_table), TRACE(&a, alibi_slopes);
    TRACE(&a, out), TRACE(&a, softmax_lse), TRACE(&a, attn_probs);
    bool last_ok = false;
    FZ_RUN(fa_fwd_workspace_size, fa_fwd, fz_ctx(), &a, &o, "fa_fwd");
    if (last_ok) require(nan_free(&a.out) && nan_free(&a.attn_probs), "fa_fwd wrote NaN");
}

static void fz_bwd(fz *f, arena *A) {
    dims D = fz_dims(f);
    fa_options o = fz_options(f);
    fa_bwd_args g;
    memset(&g, 0, sizeof g);
    int32_t dt = D.dtype;
    int64_t B = D.batch;
    if (fz_bool(f, 50)) {
        g.q = fz_tensor(f, A, dt, 3, SHAPE(D.total_q, D.h, D.d), false);
        g.k = fz_tensor(f, A, dt, 3, SHAPE(D.total_k, D.h_k, D.d), false);
        g.v = fz_tensor(f, A, dt, 3, SHAPE(D.total_k, D.h_k, D.d_v), false);
        g.out = fz_tensor(f, A, dt, 3, SHAPE(D.total_q, D.h, D.d_v), false);
        g.dout = fz_tensor(f, A, dt, 3, SHAPE(D.total_q, D.h, D.d_v), false);
        g.softmax_lse = fz_tensor(f, A, FA_DTYPE_F32, 2, SHAPE(D.h, D.total_q), false);
        g.dq = fz_tensor(f, A, dt, 3, SHAPE(D.total_q, D.h, D.d), true);
        g.dk = fz_tensor(f, A, dt, 3, SHAPE(D.total_k, D.h_k, D.d), true);
        g.dv = fz_tensor(f, A, dt, 3, SHAPE(D.total_k, D.h_k, D.d_v), true);
        g.softmax_d = fz_tensor(f, A, FA_DTYPE_F32, 2, SHAPE(D.h, D.total_q), true);
        g.cu_seqlens_q = fz_index(f, A, D.cu_q, B + 1);
        g.cu_seqlens_k = fz_index(f, A, D.cu_k, B + 1);
        g.max_seqlen_q = D.s_q, g.max_seqlen_k = D.s_k;
    } else {
        g.q = fz_tensor(f, A, dt, 4, SHAPE(B, D.s_q, D.h, D.d), false);
        g.k = fz_tensor(f, A, dt, 4, SHAPE(B, D.s_k, D.h_k, D.d), false);
        g.v = fz_tensor(f, A, dt, 4, SHAPE(B, D.s_k, D.h_k, D.d_v), false);
        g.out = fz_tensor(f, A, dt, 4, SHAPE(B, D.s_q, D.h, D.d_v), false);
        g.dout = fz_tensor(f, A, dt, 4, SHAPE(B, D.s_q, D.h, D.d_v), false);
        g.softmax_lse = fz_tensor(f, A, FA_DTYPE_F32, 3, SHAPE(B, D.h, D.s_q), false);
        g.dq = fz_tensor(f, A, dt, 4, SHAPE(B, D.s_q, D.h, D.d), true);
        g.dk = fz_tensor(f, A, dt, 4, SHAPE(B, D.s_k, D.h_k, D.d), true);
        g.dv = fz_tensor(f, A, dt, 4, SHAPE(B, D.s_k, D.h_k, D.d_v), true);
        g.softmax_d = fz_tensor(f, A, FA_DTYPE_F32, 3, SHAPE(B, D.h, D.s_q), true);
    }
    if (fz_bool(f, 20)) g.alibi_slopes = fz_tensor(f, A, FA_DTYPE_F32, 1, SHAPE(D.h), false);
    if (trace_on())
        fprintf(stderr, "fa_bwd causal %d window %d %d dropout %g\n", o.causal, o.window_left,
                o.window_right, (double)o.dropout_p);
    TRACE(&g, dout), TRACE(&g, q), TRACE(&g, k), TRACE(&g, v), TRACE(&g, out);
    TRACE(&g, softmax_lse), TRACE(&g, cu_seqlens_q), TRACE(&g, cu_seqlens_k);
    TRACE(&g, alibi_slopes), TRACE(&g, dq), TRACE(&g, dk), TRACE(&g, dv), TRACE(&g, softmax_d);
    bool last_ok = false;
    FZ_RUN(fa_bwd_workspace_size, fa_bwd, fz_ctx(), &g, &o, "fa_bwd");
    (void)last_ok; /* random out/lse need not come from a forward: no oracle for the values */
}

static void fz_kvcache(fz *f, arena *A) {
    dims D = fz_dims(f);
    fa_options o = fz_options(f);
    fa_kvcache_args a;
    memset(&a, 0, sizeof a);
    int32_t dt = D.dtype;
    int64_t B = D.batch, s_cache = fz_range(f, 1, 8), s_new = fz_bool(f, 50) ? fz_range(f, 0, 3) : 0;
    bool paged = fz_bool(f, 30);
    int64_t ps = fz_range(f, 1, 4), max_blocks = (s_cache + ps - 1) / ps;
    int64_t capacity = paged ? max_blocks * ps : s_cache;
    a.q = fz_tensor(f, A, dt, 4, SHAPE(B, D.s_q, D.h, D.d), false);
    a.out = fz_tensor(f, A, dt, 4, SHAPE(B, D.s_q, D.h, D.d_v), true);
    a.softmax_lse = fz_tensor(f, A, FA_DTYPE_F32, 3, SHAPE(B, D.h, D.s_q), true);
    int32_t seqlens[4], idx[4], pad[4], table[4 * 8];
    for (int64_t b = 0; b < B; ++b) {
        seqlens[b] = fz_range(f, 0, (int)(capacity - s_new > 0 ? capacity - s_new : 0));
        idx[b] = (int32_t)b;
        pad[b] = fz_range(f, 0, seqlens[b]);
    }
    if (paged) {
        int64_t blocks = B * max_blocks;
        for (int64_t i = 0; i < B * max_blocks; ++i) table[i] = (int32_t)(fz_u8(f) % blocks);
        a.k_cache = fz_tensor(f, A, dt, 4, SHAPE(blocks, ps, D.h_k, D.d), false);
        a.v_cache = fz_tensor(f, A, dt, 4, SHAPE(blocks, ps, D.h_k, D.d_v), false);
        a.block_table = fz_index(f, A, table, B * max_blocks);
        a.block_table.ndim = 2, a.block_table.shape[0] = B, a.block_table.shape[1] = max_blocks;
        a.block_table.stride[0] = max_blocks, a.block_table.stride[1] = 1;
    } else {
        a.k_cache = fz_tensor(f, A, dt, 4, SHAPE(B, s_cache, D.h_k, D.d), false);
        a.v_cache = fz_tensor(f, A, dt, 4, SHAPE(B, s_cache, D.h_k, D.d_v), false);
        if (fz_bool(f, 25)) a.cache_batch_idx = fz_index(f, A, idx, B);
        if (fz_bool(f, 25)) a.cache_leftpad = fz_index(f, A, pad, B);
    }
    if (s_new > 0 || fz_bool(f, 5)) {
        a.k_new = fz_tensor(f, A, dt, 4, SHAPE(B, s_new, D.h_k, D.d), false);
        a.v_new = fz_tensor(f, A, dt, 4, SHAPE(B, s_new, D.h_k, D.d_v), false);
    }
    if (s_new > 0 || fz_bool(f, 20)) a.cache_seqlens = fz_index(f, A, seqlens, B);
    if (fz_bool(f, 30)) {
        int64_t half = fz_range(f, 1, (int)(D.d / 2 > 0 ? D.d / 2 : 1));
        int64_t rows = capacity + D.s_q + fz_range(f, -2, 0);
        a.rotary_cos = fz_tensor(f, A, dt, 2, SHAPE(rows, half), false);
        a.rotary_sin = fz_tensor(f, A, dt, 2, SHAPE(rows, half), false);
    }
    if (fz_bool(f, 15)) a.alibi_slopes = fz_tensor(f, A, FA_DTYPE_F32, 2, SHAPE(B, D.h), false);
    if (trace_on())
        fprintf(stderr, "fa_fwd_kvcache causal %d window %d %d interleaved %d splits %d\n",
                o.causal, o.window_left, o.window_right, o.rotary_interleaved, o.num_splits);
    TRACE(&a, q), TRACE(&a, k_cache), TRACE(&a, v_cache), TRACE(&a, k_new), TRACE(&a, v_new);
    TRACE(&a, cache_seqlens), TRACE(&a, cache_batch_idx), TRACE(&a, cache_leftpad);
    TRACE(&a, block_table), TRACE(&a, rotary_cos), TRACE(&a, rotary_sin), TRACE(&a, alibi_slopes);
    TRACE(&a, out), TRACE(&a, softmax_lse);
    bool last_ok = false;
    FZ_RUN(fa_fwd_kvcache_workspace_size, fa_fwd_kvcache, fz_ctx(), &a, &o, "fa_fwd_kvcache");
    if (last_ok) require(nan_free(&a.out), "fa_fwd_kvcache wrote NaN");
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    fz f = {data, size, 0x9E3779B97F4A7C15ull ^ size};
    for (size_t i = 0; i < size && i < 16; ++i) f.values = f.values * 31 + data[i];
    arena A = {{0}, 0};
    switch (fz_u8(&f) % 3) {
    case 0: fz_fwd(&f, &A); break;
    case 1: fz_bwd(&f, &A); break;
    default: fz_kvcache(&f, &A); break;
    }
    arena_free(&A);
    return 0;
}

#ifdef FA_FUZZ_STANDALONE
int main(void) {
    const char *secs_env = getenv("FUZZ_SECONDS"), *runs_env = getenv("FUZZ_RUNS");
    const char *seed_env = getenv("FA_TEST_SEED");
    double seconds = secs_env ? atof(secs_env) : 20;
    long max_runs = runs_env ? atol(runs_env) : -1;
    uint64_t state = seed_env ? strtoull(seed_env, NULL, 0) : (uint64_t)time(NULL);
    printf("fuzz_validate: seed %llu (FA_TEST_SEED), %.0f s (FUZZ_SECONDS)\n",
           (unsigned long long)state, seconds);
    fflush(stdout); /* the seed must survive a crash */
    uint8_t buf[512];
    clock_t t0 = clock();
    for (long run = 0; max_runs < 0 || run < max_runs; ++run) {
        if ((run & 63) == 0 && (double)(clock() - t0) / CLOCKS_PER_SEC > seconds) break;
        size_t n = (size_t)(state >> 33) % sizeof buf;
        for (size_t i = 0; i < n; ++i) {
            state = state * 6364136223846793005ull + 1442695040888963407ull;
            buf[i] = (uint8_t)(state >> 56);
        }
        state = state * 6364136223846793005ull + 1442695040888963407ull;
        LLVMFuzzerTestOneInput(buf, n);
    }
    printf("fuzz_validate: %ld calls, %ld succeeded, %ld rejected\n", g_runs, g_ok, g_rejected);
    fa_context_destroy(fz_ctx());
    return g_ok > 0 && g_rejected > 0 ? 0 : 1; /* both paths must have been exercised */
}
#endif
