/*
 * fa_bench.c — throughput of libflashattn's cpu backend, through the public API only.
 *
 *   build/bench/fa_bench [--quick] [--threads 1,all] [--min-time S] [--reps N]
 *
 * Prints, for each case and thread count, the median time of repeated calls after a warm-up:
 *   fwd, fwd+bwd  GFLOPS; FLOPs of the forward 4*b*h*sq*sk*d, halved when causal; the backward
 *                 counts 2.5x the forward (flash-attn's convention).
 *   decode        GB/s of K+V read by one query token per sequence against a long GQA cache.
 * and first the machine's memory copy bandwidth with all threads (bytes read + written, as STREAM
 * copy), so decode can be read as a fraction of it. Before each timed decode call a buffer of
 * twice the last-level cache is written, so K and V come from memory.
 *
 * Shapes: fwd/bwd keep batch * seqlen = 4096 tokens and nheads * d = 256, so every seqlen does
 * the same work per token. Each case's first call is checked: forward rows against a float64
 * reference, gradients for finiteness; a wrong case is reported and not timed.
 */
#include "flashattn.h"

#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define MAX_THREAD_COUNTS 8
#define TOKENS 4096
#define HIDDEN 256

typedef struct options {
    bool quick;
    int thread_counts[MAX_THREAD_COUNTS]; /* 0 = all cores */
    int num_thread_counts;
    double min_time; /* seconds of timed calls per case */
    int min_reps;
} options;

/* ---------------------------------------------------------------- timing */

static double now_s(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static double median(double *v, int n) {
    qsort(v, (size_t)n, sizeof *v, cmp_double);
    return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

typedef fa_status (*run_fn)(void *state);

/* Bytes written before each timed call so its inputs are not in the last-level cache;
 * NULL = no flush (compute-bound cases). */
typedef struct cache_flush {
    char *buf;
    size_t bytes;
} cache_flush;

/* One warm-up call, then calls until min_time (of timed calls) and min_reps are both reached,
 * at most 64. Returns the median seconds per call, or a negative value if a call failed. */
static double time_median(run_fn run, void *state, const options *o, const cache_flush *flush) {
    double t[64], total = 0.0;
    int n = 0;
    if (run(state) != FA_OK)
        return -1.0;
    for (; n < 64 && (n < o->min_reps || total < o->min_time); n++) {
        if (flush)
            memset(flush->buf, n & 0xff, flush->bytes);
        double t0 = now_s();
        if (run(state) != FA_OK)
            return -1.0;
        t[n] = now_s() - t0;
        total += t[n];
    }
    return median(t, n);
}

/* The last-level cache size from sysfs (Linux), else 32 MiB. */
static size_t llc_bytes(void) {
    size_t best = 0;
    for (int i = 0; i < 8; i++) {
        char path[96], text[32];
        snprintf(path, sizeof path, "/sys/devices/system/cpu/cpu0/cache/index%d/size", i);
        FILE *f = fopen(path, "r");
        if (!f)
            continue;
        if (fgets(text, sizeof text, f)) {
            char *end;
            size_t v = (size_t)strtoull(text, &end, 10);
            v <<= *end == 'K' ? 10 : *end == 'M' ? 20 : *end == 'G' ? 30 : 0;
            best = v > best ? v : best;
        }
        fclose(f);
    }
    return best ? best : (size_t)32 << 20;
}

/* ---------------------------------------------------------------- memory copy bandwidth */

typedef struct copy_job {
    char *dst;
    const char *src;
    size_t bytes;
} copy_job;

static void *copy_worker(void *arg) {
    copy_job *j = arg;
    memcpy(j->dst, j->src, j->bytes);
    return NULL;
}

/* Bytes read + written per second by nthreads memcpy's of disjoint slices of one buffer. */
static double copy_bandwidth(size_t bytes, int nthreads) {
    char *src = malloc(bytes), *dst = malloc(bytes);
    pthread_t tid[256];
    copy_job jobs[256];
    double t[16];
    if (!src || !dst || nthreads > 256) {
        free(src);
        free(dst);
        return 0.0;
    }
    memset(src, 1, bytes);
    memset(dst, 0, bytes); /* touch every page before timing */
    size_t slice = bytes / (size_t)nthreads;
    for (int rep = 0; rep < 16; rep++) {
        double t0 = now_s();
        for (int i = 0; i < nthreads; i++) {
            jobs[i] = (copy_job){dst + (size_t)i * slice, src + (size_t)i * slice, slice};
            pthread_create(&tid[i], NULL, copy_worker, &jobs[i]);
        }
        for (int i = 0; i < nthreads; i++)
            pthread_join(tid[i], NULL);
        t[rep] = now_s() - t0;
    }
    free(src);
    free(dst);
    return 2.0 * (double)(slice * (size_t)nthreads) / median(t, 16);
}

/* ---------------------------------------------------------------- tensors */

static size_t dtype_size(fa_dtype dt) { return dt == FA_DTYPE_F32 ? 4 : 2; }

static uint16_t f32_to_bf16(float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    u += 0x7fffu + ((u >> 16) & 1u); /* round to nearest even */
    return (uint16_t)(u >> 16);
}

static float bf16_to_f32(uint16_t h) {
    uint32_t u = (uint32_t)h << 16;
    float f;
    memcpy(&f, &u, 4);
    return f;
}

static float load(const fa_tensor *t, size_t i) {
    return t->dtype == FA_DTYPE_F32 ? ((const float *)t->data)[i]
                                    : bf16_to_f32(((const uint16_t *)t->data)[i]);
}

/* A contiguous 4-d (or lower) tensor; data is malloc'ed and must be freed by the caller. */
static fa_tensor tensor(fa_dtype dt, int ndim, const int64_t *shape) {
    fa_tensor t = {0};
    size_t n = 1;
    t.dtype = dt;
    t.ndim = ndim;
    for (int i = ndim - 1; i >= 0; i--) {
        t.shape[i] = shape[i];
        t.stride[i] = (int64_t)n;
        n *= (size_t)shape[i];
    }
    t.data = malloc(n * dtype_size(dt));
    return t;
}

static size_t numel(const fa_tensor *t) {
    size_t n = 1;
    for (int i = 0; i < t->ndim; i++)
        n *= (size_t)t->shape[i];
    return n;
}

static uint64_t rng_state = 0x9e3779b97f4a7c15ull;

static float uniform_pm1(void) { /* xorshift64*, uniform in [-1, 1) */
    rng_state ^= rng_state >> 12;
    rng_state ^= rng_state << 25;
    rng_state ^= rng_state >> 27;
    return (float)((rng_state * 0x2545f4914f6cdd1dull) >> 40) / (float)(1 << 23) - 1.0f;
}

static void fill(fa_tensor *t, bool random, float value) {
    size_t n = numel(t);
    for (size_t i = 0; i < n; i++) {
        float x = random ? uniform_pm1() * 1.7f : value; /* about unit variance */
        if (t->dtype == FA_DTYPE_F32)
            ((float *)t->data)[i] = x;
        else
            ((uint16_t *)t->data)[i] = f32_to_bf16(x);
    }
}

static bool all_finite(const fa_tensor *t) {
    size_t n = numel(t);
    for (size_t i = 0; i < n; i++)
        if (!isfinite(load(t, i)))
            return false;
    return true;
}

/* ---------------------------------------------------------------- float64 check */

/* Max |out - ref| over a few query rows of batch 0, head 0 (GQA: kv head 0); ref in float64.
 * q (b, sq, h, d), k/v (b, sk, hk, d), out (b, sq, h, d); bottom-right causal as flash-attn. */
static double check_rows(const fa_tensor *q, const fa_tensor *k, const fa_tensor *v,
                         const fa_tensor *out, bool causal) {
    int64_t sq = q->shape[1], sk = k->shape[1], d = q->shape[3];
    int64_t rows[3] = {0, sq / 2, sq - 1};
    double worst = 0.0, *p = malloc((size_t)sk * sizeof *p), acc[256];
    if (!p || d > 256) {
        free(p);
        return INFINITY;
    }
    for (int r = 0; r < 3; r++) {
        int64_t i = rows[r], last = causal ? i + sk - sq : sk - 1;
        double m = -INFINITY, l = 0.0;
        for (int64_t j = 0; j <= last; j++) {
            double s = 0.0;
            for (int64_t c = 0; c < d; c++)
                s += (double)load(q, (size_t)(i * q->stride[1] + c)) *
                     (double)load(k, (size_t)(j * k->stride[1] + c));
            p[j] = s / sqrt((double)d);
            m = fmax(m, p[j]);
        }
        for (int64_t c = 0; c < d; c++)
            acc[c] = 0.0;
        for (int64_t j = 0; j <= last; j++) {
            double e = exp(p[j] - m);
            l += e;
            for (int64_t c = 0; c < d; c++)
                acc[c] += e * (double)load(v, (size_t)(j * v->stride[1] + c));
        }
        for (int64_t c = 0; c < d; c++) {
            double ref = last >= 0 ? acc[c] / l : 0.0;
            double got = (double)load(out, (size_t)(i * out->stride[1] + c));
            worst = isfinite(got) ? fmax(worst, fabs(got - ref)) : INFINITY;
        }
    }
    free(p);
    return worst;
}

static double tolerance(fa_dtype dt) { return dt == FA_DTYPE_F32 ? 1e-4 : 2e-2; }

/* ---------------------------------------------------------------- cases */

typedef enum op_kind { OP_FWD, OP_FWD_BWD, OP_DECODE } op_kind;

static const char *const op_names[] = {"fwd", "fwd+bwd", "decode"};

typedef struct attn_case {
    op_kind op;
    fa_dtype dtype;
    int64_t batch, seqlen_q, seqlen_k, nheads, nheads_k, d;
    bool causal;
} attn_case;

/* Everything one case's calls need; the run_* functions below are what gets timed. */
typedef struct bench_state {
    fa_context *ctx;
    fa_options opts;
    fa_fwd_args fwd;
    fa_bwd_args bwd;
    fa_kvcache_args kv;
    fa_tensor *q, *k, *v, *out; /* views of the args above, for the check */
    void *ws;
    size_t ws_bytes;
} bench_state;

static fa_status run_fwd(void *p) {
    bench_state *s = p;
    return fa_fwd(s->ctx, &s->fwd, &s->opts, s->ws, s->ws_bytes);
}

static fa_status run_fwd_bwd(void *p) {
    bench_state *s = p;
    fa_status st = fa_fwd(s->ctx, &s->fwd, &s->opts, s->ws, s->ws_bytes);
    return st != FA_OK ? st : fa_bwd(s->ctx, &s->bwd, &s->opts, s->ws, s->ws_bytes);
}

static fa_status run_decode(void *p) {
    bench_state *s = p;
    return fa_fwd_kvcache(s->ctx, &s->kv, &s->opts, s->ws, s->ws_bytes);
}

static run_fn runner_for(op_kind op) {
    return op == OP_FWD ? run_fwd : op == OP_FWD_BWD ? run_fwd_bwd : run_decode;
}

static const char *status_message(fa_status st, char *msg, size_t n) {
    snprintf(msg, n, "%s: %s", fa_status_string(st), fa_last_error_message());
    return msg;
}

static double case_flops(const attn_case *c) {
    double f = 4.0 * (double)(c->batch * c->nheads) * (double)c->seqlen_q * (double)c->seqlen_k *
               (double)c->d;
    if (c->causal)
        f /= 2;
    return c->op == OP_FWD_BWD ? 3.5 * f : f;
}

static double kv_bytes(const attn_case *c) {
    return 2.0 * (double)(c->batch * c->seqlen_k * c->nheads_k * c->d) * (double)dtype_size(c->dtype);
}

/* The case's tensors: q/k/v/dout random, outputs allocated. */
static void alloc_case(const attn_case *c, bench_state *s) {
    int64_t qs[4] = {c->batch, c->seqlen_q, c->nheads, c->d};
    int64_t ks[4] = {c->batch, c->seqlen_k, c->nheads_k, c->d};
    int64_t ls[3] = {c->batch, c->nheads, c->seqlen_q};
    fa_tensor q = tensor(c->dtype, 4, qs), k = tensor(c->dtype, 4, ks), v = tensor(c->dtype, 4, ks);
    fa_tensor out = tensor(c->dtype, 4, qs), lse = tensor(FA_DTYPE_F32, 3, ls);
    fill(&q, true, 0);
    fill(&k, true, 0);
    fill(&v, true, 0);
    memset(&s->fwd, 0, sizeof s->fwd);
    memset(&s->bwd, 0, sizeof s->bwd);
    memset(&s->kv, 0, sizeof s->kv);
    if (c->op == OP_DECODE) {
        s->kv = (fa_kvcache_args){.q = q, .k_cache = k, .v_cache = v, .out = out, .softmax_lse = lse};
        s->q = &s->kv.q, s->k = &s->kv.k_cache, s->v = &s->kv.v_cache, s->out = &s->kv.out;
        return;
    }
    s->fwd = (fa_fwd_args){.q = q, .k = k, .v = v, .out = out, .softmax_lse = lse};
    s->q = &s->fwd.q, s->k = &s->fwd.k, s->v = &s->fwd.v, s->out = &s->fwd.out;
    if (c->op == OP_FWD_BWD) {
        fa_tensor dout = tensor(c->dtype, 4, qs);
        fill(&dout, true, 0);
        s->bwd = (fa_bwd_args){.dout = dout, .q = q, .k = k, .v = v, .out = out,
                               .softmax_lse = lse, .dq = tensor(c->dtype, 4, qs),
                               .dk = tensor(c->dtype, 4, ks), .dv = tensor(c->dtype, 4, ks),
                               .softmax_d = tensor(FA_DTYPE_F32, 3, ls)};
    }
}

static void free_case(bench_state *s) {
    void *ptrs[] = {s->fwd.q.data, s->fwd.k.data, s->fwd.v.data, s->fwd.out.data,
                    s->fwd.softmax_lse.data, s->bwd.dout.data, s->bwd.dq.data, s->bwd.dk.data,
                    s->bwd.dv.data, s->bwd.softmax_d.data, s->kv.q.data, s->kv.k_cache.data,
                    s->kv.v_cache.data, s->kv.out.data, s->kv.softmax_lse.data};
    for (size_t i = 0; i < sizeof ptrs / sizeof *ptrs; i++)
        free(ptrs[i]);
}

/* Sizes the workspace for the current thread count (it may depend on it). */
static fa_status size_workspace(const attn_case *c, bench_state *s) {
    size_t a = 0, b = 0;
    fa_status st = c->op == OP_DECODE
                       ? fa_fwd_kvcache_workspace_size(s->ctx, &s->kv, &s->opts, &a)
                       : fa_fwd_workspace_size(s->ctx, &s->fwd, &s->opts, &a);
    if (st == FA_OK && c->op == OP_FWD_BWD)
        st = fa_bwd_workspace_size(s->ctx, &s->bwd, &s->opts, &b);
    if (st != FA_OK)
        return st;
    free(s->ws);
    s->ws_bytes = a > b ? a : b;
    s->ws = s->ws_bytes ? malloc(s->ws_bytes) : NULL;
    return s->ws_bytes && !s->ws ? FA_ERR_OUT_OF_MEMORY : FA_OK;
}

/* One checked call on poisoned outputs: NULL when right, else what is wrong. */
static const char *first_call_check(const attn_case *c, bench_state *s, char *msg, size_t n) {
    fill(s->out, false, NAN);
    if (c->op == OP_FWD_BWD) {
        fill(&s->bwd.dq, false, NAN);
        fill(&s->bwd.dk, false, NAN);
        fill(&s->bwd.dv, false, NAN);
    }
    fa_status st = runner_for(c->op)(s);
    if (st != FA_OK)
        return status_message(st, msg, n);
    double err = check_rows(s->q, s->k, s->v, s->out, c->causal);
    if (!(err <= tolerance(c->dtype))) {
        snprintf(msg, n, "WRONG: max |out - ref64| = %.3g > %.3g", err, tolerance(c->dtype));
        return msg;
    }
    if (c->op == OP_FWD_BWD &&
        !(all_finite(&s->bwd.dq) && all_finite(&s->bwd.dk) && all_finite(&s->bwd.dv))) {
        snprintf(msg, n, "WRONG: non-finite gradient");
        return msg;
    }
    return NULL;
}

/* Runs one case at every thread count and prints one row each; returns false on failure. */
static bool bench_case(const attn_case *c, fa_context *ctx, const options *o, double copy_bw,
                       const cache_flush *flush) {
    bench_state s = {.ctx = ctx, .opts = fa_options_default()};
    bool ok = true;
    s.opts.causal = c->causal;
    alloc_case(c, &s);
    for (int i = 0; i < o->num_thread_counts; i++) {
        char msg[512];
        const char *problem;
        fa_status st = fa_context_set_num_threads(ctx, o->thread_counts[i]);
        if (st == FA_OK)
            st = size_workspace(c, &s);
        problem = st != FA_OK ? status_message(st, msg, sizeof msg)
                              : first_call_check(c, &s, msg, sizeof msg);
        double t = -1.0;
        if (!problem) {
            t = time_median(runner_for(c->op), &s, o, c->op == OP_DECODE ? flush : NULL);
            if (t < 0)
                problem = "a timed call failed";
        }
        printf("%-8s %-5s %4lld %6lld %6lld %-6s %5lld %3lld/%-3lld %7d", op_names[c->op],
               c->dtype == FA_DTYPE_F32 ? "f32" : "bf16", (long long)c->d, (long long)c->seqlen_q,
               (long long)c->seqlen_k, c->causal ? "yes" : "no", (long long)c->batch,
               (long long)c->nheads, (long long)c->nheads_k, fa_context_num_threads(ctx));
        if (problem) {
            printf("  %s\n", problem);
            ok = false;
        } else if (c->op == OP_DECODE) {
            double bw = kv_bytes(c) / t;
            printf(" %10.3f %10.2f GB/s (%.0f%% of copy)\n", t * 1e3, bw / 1e9,
                   copy_bw > 0 ? 100.0 * bw / copy_bw : 0.0);
        } else {
            printf(" %10.3f %10.1f GFLOPS\n", t * 1e3, case_flops(c) / t / 1e9);
        }
        fflush(stdout);
    }
    free(s.ws);
    free_case(&s);
    return ok;
}

/* ---------------------------------------------------------------- grid and main */

static int usage(void) {
    fprintf(stderr,
            "usage: fa_bench [--quick] [--threads LIST] [--min-time S] [--reps N]\n"
            "  --quick        a few small cases (seconds)\n"
            "  --threads LIST comma list of thread counts, 'all' = every core (default 1,all)\n"
            "  --min-time S   timed seconds per case and thread count (default 0.5; quick 0.1)\n"
            "  --reps N       at least N timed calls (default 3)\n");
    return 2;
}

static bool parse_threads(char *list, options *o) {
    o->num_thread_counts = 0;
    for (char *tok = strtok(list, ","); tok; tok = strtok(NULL, ",")) {
        int n = strcmp(tok, "all") == 0 ? 0 : atoi(tok);
        if (o->num_thread_counts == MAX_THREAD_COUNTS || n < 0 || (n == 0 && strcmp(tok, "all")))
            return false;
        o->thread_counts[o->num_thread_counts++] = n;
    }
    return o->num_thread_counts > 0;
}

static bool parse_options(int argc, char **argv, options *o) {
    *o = (options){.thread_counts = {1, 0}, .num_thread_counts = 2, .min_time = -1, .min_reps = 3};
    for (int i = 1; i < argc; i++) {
        bool has_value = i + 1 < argc;
        if (strcmp(argv[i], "--quick") == 0)
            o->quick = true;
        else if (strcmp(argv[i], "--threads") == 0 && has_value) {
            if (!parse_threads(argv[++i], o))
                return false;
        } else if (strcmp(argv[i], "--min-time") == 0 && has_value)
            o->min_time = atof(argv[++i]);
        else if (strcmp(argv[i], "--reps") == 0 && has_value)
            o->min_reps = atoi(argv[++i]);
        else
            return false;
    }
    if (o->min_time < 0)
        o->min_time = o->quick ? 0.1 : 0.5;
    o->min_reps = o->min_reps < 1 ? 1 : o->min_reps > 64 ? 64 : o->min_reps;
    return true;
}

/* Other work on the machine makes the numbers noisy: say how busy it was. */
static void print_load(void) {
    char line[128] = "unknown";
    FILE *f = fopen("/proc/loadavg", "r");
    if (f) {
        if (!fgets(line, sizeof line, f))
            strcpy(line, "unknown");
        fclose(f);
    }
    printf("load average (1/5/15 min, runnable/all, last pid): %s", line);
    if (!strchr(line, '\n'))
        printf("\n");
}

static void print_header(const char *what) {
    printf("\n%-8s %-5s %4s %6s %6s %-6s %5s %7s %7s %10s %10s\n", "op", "dtype", "d", "sq", "sk",
           "causal", "batch", "h/hk", "threads", "ms", what);
}

int main(int argc, char **argv) {
    options o;
    if (!parse_options(argc, argv, &o))
        return usage();
    if (fa_backend_available(FA_BACKEND_CPU) != FA_OK) {
        fprintf(stderr, "cpu backend unavailable: %s\n", fa_last_error_message());
        return 1;
    }
    fa_context *ctx = NULL;
    if (fa_context_create(FA_BACKEND_CPU, 0, &ctx) != FA_OK) {
        fprintf(stderr, "fa_context_create: %s\n", fa_last_error_message());
        return 1;
    }
    long cores = sysconf(_SC_NPROCESSORS_ONLN);
    double copy_bw = copy_bandwidth((size_t)(o.quick ? 64 : 512) << 20, cores > 0 ? (int)cores : 1);
    printf("libflashattn %s, cpu backend, %ld cores; median of >= %d calls and >= %.2f s after a "
           "warm-up call\nmemory copy bandwidth, all cores (read + write): %.1f GB/s\n",
           fa_version_string(), cores, o.min_reps, o.min_time, copy_bw / 1e9);
    print_load();

    const fa_dtype dtypes[] = {FA_DTYPE_F32, FA_DTYPE_BF16};
    const int64_t dims_full[] = {64, 128}, seqlens_full[] = {512, 1024, 2048, 4096};
    const int64_t caches_full[] = {1024, 4096, 16384};
    const int64_t dims_quick[] = {64}, seqlens_quick[] = {256, 1024}, caches_quick[] = {4096};
    const int64_t *dims = o.quick ? dims_quick : dims_full;
    const int64_t *seqlens = o.quick ? seqlens_quick : seqlens_full;
    const int64_t *caches = o.quick ? caches_quick : caches_full;
    int ndims = o.quick ? 1 : 2, nseq = o.quick ? 2 : 4, ncache = o.quick ? 1 : 3;
    int64_t tokens = o.quick ? 1024 : TOKENS;
    bool ok = true;

    print_header("GFLOPS");
    for (int op = OP_FWD; op <= OP_FWD_BWD; op++)
        for (int t = 0; t < 2; t++)
            for (int di = 0; di < ndims; di++)
                for (int causal = 0; causal < 2; causal++)
                    for (int si = 0; si < nseq; si++) {
                        int64_t s = seqlens[si], h = HIDDEN / dims[di];
                        int64_t b = tokens / s > 0 ? tokens / s : 1;
                        attn_case c = {(op_kind)op, dtypes[t], b, s, s, h, h, dims[di], causal};
                        ok &= bench_case(&c, ctx, &o, copy_bw, NULL);
                    }
    /* Decode is memory-bound: evict K/V from the cache before each call, as a long-running
     * server would find them. */
    cache_flush flush = {NULL, 2 * llc_bytes()};
    flush.buf = malloc(flush.bytes);
    if (!flush.buf) {
        fprintf(stderr, "out of memory for the cache flush buffer\n");
        return 1;
    }
    print_header("K+V read");
    for (int t = 0; t < 2; t++)
        for (int di = 0; di < ndims; di++)
            for (int ci = 0; ci < ncache; ci++) {
                attn_case c = {OP_DECODE, dtypes[t], 1, 1, caches[ci], 32, 8, dims[di], false};
                ok &= bench_case(&c, ctx, &o, copy_bw, &flush);
            }
    print_load();
    free(flush.buf);
    fa_context_destroy(ctx);
    return ok ? 0 : 1;
}
