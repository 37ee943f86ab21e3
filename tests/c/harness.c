/* harness.c — see harness.h. */
#include "harness.h"

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

/* ---------------------------------------------------------------- checks and runner */
int g_failures;
static const char *g_current_test = "";
static int g_reported; /* failures printed in full for the current test */

void check_fail(const char *file, int line, const char *fmt, ...) {
    ++g_failures;
    if (++g_reported > 20) return; /* one bug can fail thousands of elements */
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "  FAIL %s (%s:%d): ", g_current_test, file, line);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
}

static uint64_t g_rng[4];
static uint64_t g_seed;
static bool g_verbose;

uint64_t test_seed(void) { return g_seed; }
bool test_verbose(void) { return g_verbose; }

bool test_quick(void) {
    const char *env = getenv("FA_TEST_QUICK");
    return env && atoi(env);
}

static uint64_t splitmix64(uint64_t *x) {
    uint64_t z = (*x += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

static void rng_seed(uint64_t seed) {
    for (int i = 0; i < 4; ++i) g_rng[i] = splitmix64(&seed);
}

static uint64_t rotl(uint64_t x, int k) { return (x << k) | (x >> (64 - k)); }

uint64_t rng_u64(void) {
    uint64_t *s = g_rng;
    uint64_t result = rotl(s[1] * 5, 7) * 9, t = s[1] << 17;
    s[2] ^= s[0];
    s[3] ^= s[1];
    s[1] ^= s[2];
    s[0] ^= s[3];
    s[2] ^= t;
    s[3] = rotl(s[3], 45);
    return result;
}

double rng_uniform(void) { return (double)(rng_u64() >> 11) * 0x1.0p-53; }

double rng_normal(void) {
    double u = rng_uniform(), v = rng_uniform();
    return sqrt(-2.0 * log(1.0 - u)) * cos(6.283185307179586 * v);
}

int64_t rng_int(int64_t lo, int64_t hi) {
    return lo + (int64_t)(rng_u64() % (uint64_t)(hi - lo + 1));
}

int64_t *rng_permutation(int64_t n) {
    int64_t *perm = malloc(sizeof(int64_t) * (size_t)(n > 0 ? n : 1));
    for (int64_t i = 0; i < n; ++i) perm[i] = i;
    for (int64_t i = n - 1; i > 0; --i) {
        int64_t j = rng_int(0, i), t = perm[i];
        perm[i] = perm[j], perm[j] = t;
    }
    return perm;
}

static uint64_t hash_name(const char *s) {
    uint64_t h = 1469598103934665603ull;
    for (; *s; ++s) h = (h ^ (unsigned char)*s) * 1099511628211ull;
    return h;
}

#define MAX_CTX_THREADS 16
static fa_context *g_ctx[MAX_CTX_THREADS + 1];

fa_context *test_ctx_threads(int num_threads) {
    if (num_threads < 1 || num_threads > MAX_CTX_THREADS) return NULL;
    if (!g_ctx[num_threads]) {
        fa_context *ctx = NULL;
        fa_status st = fa_context_create(FA_BACKEND_CPU, 0, &ctx);
        if (st == FA_OK) st = fa_context_set_num_threads(ctx, num_threads);
        if (st != FA_OK) {
            fprintf(stderr, "cannot make a cpu context with %d threads: %s: %s\n", num_threads,
                    fa_status_string(st), fa_last_error_message());
            fa_context_destroy(ctx);
            return NULL;
        }
        g_ctx[num_threads] = ctx;
    }
    return g_ctx[num_threads];
}

fa_context *test_ctx(void) {
    const char *env = getenv("FA_TEST_THREADS");
    return test_ctx_threads(env ? atoi(env) : 2);
}

int test_main(int argc, char **argv, const test_case *tests, int num_tests) {
    const char *filter = argc > 1 ? argv[1] : "";
    const char *env = getenv("FA_TEST_SEED");
    g_seed = env ? strtoull(env, NULL, 0) : 20251124ull;
    g_verbose = getenv("FA_TEST_VERBOSE") && atoi(getenv("FA_TEST_VERBOSE"));
    printf("seed %llu (FA_TEST_SEED to change), library %s\n", (unsigned long long)g_seed,
           fa_version_string());
    int failed_tests = 0, run = 0;
    for (int i = 0; i < num_tests; ++i) {
        if (!strstr(tests[i].name, filter)) continue;
        g_current_test = tests[i].name;
        g_reported = 0;
        rng_seed(g_seed ^ hash_name(tests[i].name));
        int before = g_failures;
        clock_t t0 = clock();
        tests[i].fn();
        double secs = (double)(clock() - t0) / CLOCKS_PER_SEC;
        bool ok = g_failures == before;
        failed_tests += !ok;
        ++run;
        printf("%-4s %-40s %6.2fs cpu%s\n", ok ? "ok" : "FAIL", tests[i].name, secs,
               ok ? "" : " <<<");
        fflush(stdout);
    }
    for (int i = 0; i <= MAX_CTX_THREADS; ++i) fa_context_destroy(g_ctx[i]);
    printf("%d of %d tests passed\n", run - failed_tests, run);
    if (run == 0) {
        printf("no test matches '%s'\n", filter);
        return 1;
    }
    return failed_tests ? 1 : 0;
}

/* ---------------------------------------------------------------- dtypes */
size_t dtype_size(int32_t dtype) {
    switch (dtype) {
    case FA_DTYPE_F32: case FA_DTYPE_I32: return 4;
    case FA_DTYPE_F16: case FA_DTYPE_BF16: return 2;
    case FA_DTYPE_I64: case TT_F64: return 8;
    default: return 0;
    }
}

const char *dtype_name(int32_t dtype) {
    switch (dtype) {
    case FA_DTYPE_F32: return "f32";
    case FA_DTYPE_F16: return "f16";
    case FA_DTYPE_BF16: return "bf16";
    case FA_DTYPE_I32: return "i32";
    case FA_DTYPE_I64: return "i64";
    case TT_F64: return "f64";
    default: return "?";
    }
}

/* Rounds to a binary format with `mant` fraction bits, smallest normal exponent emin and
 * largest finite value max, with one rounding (nearest, ties to even). */
static double round_binary(double x, int mant, int emin, double max) {
    if (!isfinite(x) || x == 0) return x;
    int e;
    frexp(x, &e); /* |x| in [2^(e-1), 2^e) */
    int exp = e - 1 < emin ? emin : e - 1;
    double ulp = ldexp(1.0, exp - mant);
    double r = nearbyint(x / ulp) * ulp;
    return fabs(r) > max ? copysign(INFINITY, x) : r;
}

double round_to(int32_t dtype, double x) {
    switch (dtype) {
    case FA_DTYPE_F32: return (double)(float)x;
    case FA_DTYPE_F16: return round_binary(x, 10, -14, 65504.0);
    case FA_DTYPE_BF16: return round_binary(x, 7, -126, 3.3895313892515355e38);
    default: return x;
    }
}

double dtype_eps(int32_t dtype) {
    switch (dtype) {
    case FA_DTYPE_F32: return 0x1.0p-23;
    case FA_DTYPE_F16: return 0x1.0p-10;
    case FA_DTYPE_BF16: return 0x1.0p-7;
    default: return 0x1.0p-52;
    }
}

uint16_t f32_to_f16_bits(float f) {
    double h = round_to(FA_DTYPE_F16, f);
    uint16_t sign = signbit(h) ? 0x8000 : 0;
    if (isnan(h)) return 0x7E00;
    if (isinf(h)) return sign | 0x7C00;
    double a = fabs(h);
    if (a < 0x1.0p-14) return sign | (uint16_t)(a * 0x1.0p24); /* subnormal or zero */
    int e;
    double m = frexp(a, &e); /* a = m 2^e, m in [0.5, 1) */
    return sign | (uint16_t)((e - 1 + 15) << 10) | (uint16_t)((m * 2 - 1) * 1024);
}

float f16_bits_to_f32(uint16_t h) {
    int exp = (h >> 10) & 0x1F, mant = h & 0x3FF;
    double v;
    if (exp == 0) v = ldexp(mant, -24);
    else if (exp == 31) v = mant ? NAN : INFINITY;
    else v = ldexp(1024 + mant, exp - 25);
    return (float)((h & 0x8000) ? -v : v);
}

uint16_t f32_to_bf16_bits(float f) {
    uint32_t bits;
    memcpy(&bits, &f, 4);
    if (isnan(f)) return (uint16_t)((bits >> 16) | 0x40);
    bits += 0x7FFF + ((bits >> 16) & 1);
    return (uint16_t)(bits >> 16);
}

float bf16_bits_to_f32(uint16_t h) {
    uint32_t bits = (uint32_t)h << 16;
    float f;
    memcpy(&f, &bits, 4);
    return f;
}

/* ---------------------------------------------------------------- tensors */
/* The NaN (or, for indices, absurd) pattern that fills padding. */
static void fill_pad_pattern(int32_t dtype, unsigned char *p) {
    switch (dtype) {
    case FA_DTYPE_F32: { uint32_t v = 0x7FC0A5A5u; memcpy(p, &v, 4); break; }
    case FA_DTYPE_F16: { uint16_t v = 0x7E5A; memcpy(p, &v, 2); break; }
    case FA_DTYPE_BF16: { uint16_t v = 0x7FC5; memcpy(p, &v, 2); break; }
    case FA_DTYPE_I32: { uint32_t v = 0xA5A5A5A5u; memcpy(p, &v, 4); break; }
    case FA_DTYPE_I64: { uint64_t v = 0xA5A5A5A5A5A5A5A5ull; memcpy(p, &v, 8); break; }
    default: { uint64_t v = 0x7FF8A5A5A5A5A5A5ull; memcpy(p, &v, 8); break; }
    }
}

fa_tensor tt_none(void) {
    fa_tensor t;
    memset(&t, 0, sizeof t);
    return t;
}

tt tt_make(int32_t dtype, int pad, int ndim, const int64_t *shape) {
    tt t;
    memset(&t, 0, sizeof t);
    t.v.dtype = dtype;
    t.v.ndim = ndim;
    int64_t extent = 1; /* elements from the first of the view to past its last */
    for (int k = ndim - 1; k >= 0; --k) {
        t.v.shape[k] = shape[k];
        t.v.stride[k] = k == ndim - 1 ? 1 : t.v.stride[k + 1] * t.v.shape[k + 1] + pad;
        if (t.v.stride[k] < 1) t.v.stride[k] = 1;
        if (shape[k] > 1) extent += (shape[k] - 1) * t.v.stride[k];
    }
    size_t es = dtype_size(dtype), elems = (size_t)(extent + 2 * pad);
    t.bytes = elems * es;
    t.base = malloc(t.bytes);
    for (size_t i = 0; i < elems; ++i) fill_pad_pattern(dtype, t.base + i * es);
    t.v.data = t.base + (size_t)pad * es;
    return t;
}

void tt_free(tt *t) {
    free(t->base);
    memset(t, 0, sizeof *t);
}

int64_t tt_numel(const fa_tensor *t) {
    int64_t n = 1;
    for (int k = 0; k < t->ndim; ++k) n *= t->shape[k];
    return n;
}

void tt_unravel(const fa_tensor *t, int64_t flat, int64_t idx[FA_MAX_DIMS]) {
    for (int k = t->ndim - 1; k >= 0; --k) {
        idx[k] = flat % t->shape[k];
        flat /= t->shape[k];
    }
}

static unsigned char *elem_ptr(const fa_tensor *t, const int64_t *idx) {
    int64_t off = 0;
    for (int k = 0; k < t->ndim; ++k) off += idx[k] * t->stride[k];
    return (unsigned char *)t->data + off * (int64_t)dtype_size(t->dtype);
}

double tt_get(const fa_tensor *t, const int64_t idx[FA_MAX_DIMS]) {
    const unsigned char *p = elem_ptr(t, idx);
    switch (t->dtype) {
    case FA_DTYPE_F32: { float v; memcpy(&v, p, 4); return v; }
    case FA_DTYPE_F16: { uint16_t v; memcpy(&v, p, 2); return f16_bits_to_f32(v); }
    case FA_DTYPE_BF16: { uint16_t v; memcpy(&v, p, 2); return bf16_bits_to_f32(v); }
    case FA_DTYPE_I32: { int32_t v; memcpy(&v, p, 4); return v; }
    case FA_DTYPE_I64: { int64_t v; memcpy(&v, p, 8); return (double)v; }
    default: { double v; memcpy(&v, p, 8); return v; }
    }
}

void tt_set(const fa_tensor *t, const int64_t idx[FA_MAX_DIMS], double x) {
    unsigned char *p = elem_ptr(t, idx);
    switch (t->dtype) {
    case FA_DTYPE_F32: { float v = (float)x; memcpy(p, &v, 4); break; }
    case FA_DTYPE_F16: { uint16_t v = f32_to_f16_bits((float)round_to(FA_DTYPE_F16, x)); memcpy(p, &v, 2); break; }
    case FA_DTYPE_BF16: { uint16_t v = f32_to_bf16_bits((float)round_to(FA_DTYPE_BF16, x)); memcpy(p, &v, 2); break; }
    case FA_DTYPE_I32: { int32_t v = (int32_t)x; memcpy(p, &v, 4); break; }
    case FA_DTYPE_I64: { int64_t v = (int64_t)x; memcpy(p, &v, 8); break; }
    default: memcpy(p, &x, 8); break;
    }
}

double tt_at_n(const fa_tensor *t, int n, const int64_t *idx) {
    (void)n; /* the caller passes exactly ndim indices */
    return tt_get(t, idx);
}

void tt_put_n(const fa_tensor *t, double x, int n, const int64_t *idx) {
    (void)n;
    tt_set(t, idx, x);
}

void tt_randn(const tt *t, double scale) {
    int64_t idx[FA_MAX_DIMS];
    TT_FOR_EACH(&t->v, idx) tt_set(&t->v, idx, round_to(t->v.dtype, scale * rng_normal()));
}

void tt_fill(const tt *t, double x) {
    int64_t idx[FA_MAX_DIMS];
    TT_FOR_EACH(&t->v, idx) tt_set(&t->v, idx, x);
}

void tt_poison(const tt *t) { tt_fill(t, NAN); }

void tt_copy_values(const tt *dst, const fa_tensor *src) {
    int64_t idx[FA_MAX_DIMS];
    TT_FOR_EACH(&dst->v, idx) tt_set(&dst->v, idx, tt_get(src, idx));
}

tt tt_clone(const fa_tensor *src, int pad) {
    tt t = tt_make(src->dtype, pad, src->ndim, src->shape);
    tt_copy_values(&t, src);
    return t;
}

bool tt_padding_intact(const tt *t) {
    size_t es = dtype_size(t->v.dtype), elems = t->bytes / es;
    unsigned char *in_view = calloc(elems, 1), pattern[8];
    int64_t idx[FA_MAX_DIMS];
    TT_FOR_EACH(&t->v, idx) in_view[(size_t)(elem_ptr(&t->v, idx) - t->base) / es] = 1;
    fill_pad_pattern(t->v.dtype, pattern);
    bool ok = true;
    for (size_t i = 0; i < elems && ok; ++i)
        ok = in_view[i] || memcmp(t->base + i * es, pattern, es) == 0;
    free(in_view);
    return ok;
}

bool tt_bits_equal(const fa_tensor *a, const fa_tensor *b) {
    if (a->dtype != b->dtype || a->ndim != b->ndim) return false;
    for (int k = 0; k < a->ndim; ++k)
        if (a->shape[k] != b->shape[k]) return false;
    size_t es = dtype_size(a->dtype);
    int64_t idx[FA_MAX_DIMS];
    TT_FOR_EACH(a, idx) {
        if (memcmp(elem_ptr(a, idx), elem_ptr(b, idx), es) != 0) return false;
    }
    return true;
}

bool tt_has_nan(const fa_tensor *t) {
    int64_t idx[FA_MAX_DIMS];
    TT_FOR_EACH(t, idx) {
        if (isnan(tt_get(t, idx))) return true;
    }
    return false;
}

double tt_max_abs(const fa_tensor *t) {
    double m = 0;
    int64_t idx[FA_MAX_DIMS];
    TT_FOR_EACH(t, idx) {
        double x = tt_get(t, idx);
        if (isfinite(x)) m = fmax(m, fabs(x));
    }
    return m;
}

double tt_dot(const fa_tensor *a, const fa_tensor *b) {
    double sum = 0;
    int64_t idx[FA_MAX_DIMS];
    TT_FOR_EACH(a, idx) sum += tt_get(a, idx) * tt_get(b, idx);
    return sum;
}

/* ---------------------------------------------------------------- comparisons */
/* |a - b| where infinities must agree exactly and NaN is infinitely wrong. */
static double elem_err(double a, double b) {
    if (isnan(a) || isnan(b)) return INFINITY;
    if (isinf(a) || isinf(b)) return a == b ? 0 : INFINITY;
    return fabs(a - b);
}

static double max_err_at(const fa_tensor *a, const fa_tensor *b, int64_t worst[FA_MAX_DIMS]) {
    double err = 0;
    int64_t idx[FA_MAX_DIMS];
    memset(worst, 0, sizeof(int64_t) * FA_MAX_DIMS);
    TT_FOR_EACH(a, idx) {
        double e = elem_err(tt_get(a, idx), tt_get(b, idx));
        if (e > err || (isinf(e) && !isinf(err))) {
            err = e;
            memcpy(worst, idx, sizeof(int64_t) * FA_MAX_DIMS);
        }
    }
    return err;
}

double max_abs_diff(const fa_tensor *a, const fa_tensor *b) {
    int64_t worst[FA_MAX_DIMS];
    return max_err_at(a, b, worst);
}

static void format_index(const fa_tensor *t, const int64_t *idx, char *buf, size_t n) {
    size_t len = (size_t)snprintf(buf, n, "[");
    for (int k = 0; k < t->ndim && len < n; ++k)
        len += (size_t)snprintf(buf + len, n - len, k ? ",%lld" : "%lld", (long long)idx[k]);
    if (len < n) snprintf(buf + len, n - len, "]");
}

bool check_rule(const char *what, const fa_tensor *lib, const fa_tensor *ref,
                const fa_tensor *plain, double factor, double floor) {
    int64_t worst[FA_MAX_DIMS], worst_pt[FA_MAX_DIMS];
    double err = max_err_at(lib, ref, worst);
    double err_pt = max_err_at(plain, ref, worst_pt);
    double slack = dtype_eps(lib->dtype) * tt_max_abs(ref); /* one ulp of the output's dtype */
    double bound = factor * (isinf(err_pt) ? 0 : err_pt) + slack + floor;
    bool ok = err <= bound; /* false for NaN and mismatched infinities */
    if (!ok) {
        char where[96];
        format_index(lib, worst, where, sizeof where);
        check_fail(__FILE__, __LINE__,
                   "%s: max|lib-ref| = %.3g > %.3g (= %g x plain err %.3g + slack %.3g + %.3g) "
                   "at %s: lib %.9g ref %.9g plain %.9g",
                   what, err, bound, factor, err_pt, slack, floor, where,
                   tt_get(lib, worst), tt_get(ref, worst), tt_get(plain, worst));
    } else if (test_verbose()) {
        printf("    %-22s err %.3g  plain %.3g  bound %.3g\n", what, err, err_pt, bound);
    }
    return ok;
}

bool check_close(const char *what, const fa_tensor *lib, const fa_tensor *ref, double atol,
                 double rtol) {
    int64_t idx[FA_MAX_DIMS];
    TT_FOR_EACH(lib, idx) {
        double a = tt_get(lib, idx), b = tt_get(ref, idx);
        double e = elem_err(a, b);
        if (!(e <= atol + rtol * fabs(b))) {
            char where[96];
            format_index(lib, idx, where, sizeof where);
            check_fail(__FILE__, __LINE__, "%s at %s: lib %.9g ref %.9g (atol %g rtol %g)", what,
                       where, a, b, atol, rtol);
            return false;
        }
    }
    return true;
}

/* ---------------------------------------------------------------- library helpers */
void *alloc_workspace(size_t bytes) { return malloc(bytes ? bytes : 1); }

fa_tensor i32_tensor(int32_t *data, int ndim, int64_t n0, int64_t n1) {
    fa_tensor t = tt_none();
    t.data = data;
    t.dtype = FA_DTYPE_I32;
    t.ndim = ndim;
    t.shape[0] = n0;
    t.stride[0] = ndim == 2 ? n1 : 1;
    if (ndim == 2) {
        t.shape[1] = n1;
        t.stride[1] = 1;
    }
    return t;
}

tt alibi_slopes(bool per_batch, int64_t batch, int64_t nheads) {
    tt t = per_batch ? TT(FA_DTYPE_F32, 0, batch, nheads) : TT(FA_DTYPE_F32, 0, nheads);
    int64_t idx[FA_MAX_DIMS];
    TT_FOR_EACH(&t.v, idx) tt_set(&t.v, idx, 0.3 * rng_uniform());
    return t;
}
