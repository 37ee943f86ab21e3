/*
 * harness.h — the tiny test harness of libflashattn's C tests (no framework).
 *
 *   - CHECK(cond, fmt, ...) records a failure with file:line and keeps going.
 *   - Each test runs on its own RNG stream: seed = FA_TEST_SEED (printed) mixed with the test's
 *     name, so one test can be rerun alone (argv[1] = a substring of its name).
 *   - tt: a host tensor that owns its memory. With pad > 0 every stride has `pad` elements of
 *     padding and the view starts `pad` elements in; padding holds a NaN pattern, so a kernel
 *     that reads it produces NaN, and tt_padding_intact() shows whether one wrote to it.
 *   - TT_F64 is a test-only dtype for float64 reference results.
 */
#ifndef FA_TEST_HARNESS_H
#define FA_TEST_HARNESS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "flashattn.h"

/* ---------------------------------------------------------------- checks */
extern int g_failures;

void check_fail(const char *file, int line, const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 3, 4)))
#endif
    ;

#define CHECK(cond, ...)                                                                           \
    do {                                                                                           \
        if (!(cond)) check_fail(__FILE__, __LINE__, __VA_ARGS__);                                  \
    } while (0)

/* A library call that must succeed; the message names the call and the library's reason. */
#define CHECK_OK(expr)                                                                             \
    do {                                                                                           \
        fa_status check_ok_status_ = (expr);                                                       \
        CHECK(check_ok_status_ == FA_OK, "%s -> %s: %s", #expr,                                    \
              fa_status_string(check_ok_status_), fa_last_error_message());                        \
    } while (0)

/* ---------------------------------------------------------------- runner */
typedef struct test_case {
    const char *name;
    void (*fn)(void);
} test_case;

/* Runs every test whose name contains argv[1] (all without it); 0 when all passed. */
int test_main(int argc, char **argv, const test_case *tests, int num_tests);

/* The context tests run on: cpu, FA_TEST_THREADS threads (default 2). Owned by the harness. */
fa_context *test_ctx(void);
/* A cpu context with a given thread count (cached; owned by the harness). */
fa_context *test_ctx_threads(int num_threads);
bool test_verbose(void); /* FA_TEST_VERBOSE=1: print every case */
bool test_quick(void);   /* FA_TEST_QUICK=1: a smaller grid (sanitizer builds) */

/* ---------------------------------------------------------------- random numbers */
uint64_t rng_u64(void);             /* xoshiro256**, reseeded per test */
double rng_uniform(void);           /* [0, 1) */
double rng_normal(void);            /* N(0, 1) */
int64_t rng_int(int64_t lo, int64_t hi); /* uniform in [lo, hi] */
uint64_t test_seed(void);
int64_t *rng_permutation(int64_t n); /* a random permutation of 0..n-1; free() it */

/* ---------------------------------------------------------------- dtypes */
#define TT_F64 100

size_t dtype_size(int32_t dtype);
const char *dtype_name(int32_t dtype);
double round_to(int32_t dtype, double x); /* to the nearest value of dtype (ties to even) */
double dtype_eps(int32_t dtype);          /* distance from 1 to the next value */
uint16_t f32_to_f16_bits(float f);
float f16_bits_to_f32(uint16_t h);
uint16_t f32_to_bf16_bits(float f);
float bf16_bits_to_f32(uint16_t h);

/* ---------------------------------------------------------------- tensors */
typedef struct tt {
    fa_tensor v;          /* the view handed to the library */
    unsigned char *base;  /* owning allocation */
    size_t bytes;
} tt;

tt tt_make(int32_t dtype, int pad, int ndim, const int64_t *shape);
#define TT_SHAPE(...) ((const int64_t[]){__VA_ARGS__})
#define TT_NDIM(...) ((int)(sizeof((const int64_t[]){__VA_ARGS__}) / sizeof(int64_t)))
/* TT(dtype, pad, dims...): a tensor of that shape. */
#define TT(dtype, pad, ...) tt_make((dtype), (pad), TT_NDIM(__VA_ARGS__), TT_SHAPE(__VA_ARGS__))
void tt_free(tt *t);
fa_tensor tt_none(void); /* an absent optional tensor */

int64_t tt_numel(const fa_tensor *t);
void tt_unravel(const fa_tensor *t, int64_t flat, int64_t idx[FA_MAX_DIMS]);
double tt_get(const fa_tensor *t, const int64_t idx[FA_MAX_DIMS]);
void tt_set(const fa_tensor *t, const int64_t idx[FA_MAX_DIMS], double x);
/* Indexed access with exactly ndim indices: AT(&t, i, j, ...), PUT(&t, x, i, j, ...). */
double tt_at_n(const fa_tensor *t, int n, const int64_t *idx);
void tt_put_n(const fa_tensor *t, double x, int n, const int64_t *idx);
#define AT(t, ...) tt_at_n((t), TT_NDIM(__VA_ARGS__), TT_SHAPE(__VA_ARGS__))
#define PUT(t, x, ...) tt_put_n((t), (x), TT_NDIM(__VA_ARGS__), TT_SHAPE(__VA_ARGS__))

void tt_randn(const tt *t, double scale);    /* N(0, scale^2), rounded to the dtype */
void tt_fill(const tt *t, double x);
void tt_poison(const tt *t);                 /* NaN in every element of the view */
void tt_copy_values(const tt *dst, const fa_tensor *src); /* same shape, any dtypes */
tt tt_clone(const fa_tensor *src, int pad);                /* same dtype and values */
bool tt_padding_intact(const tt *t);         /* padding still holds its NaN pattern */
bool tt_bits_equal(const fa_tensor *a, const fa_tensor *b); /* same shape and dtype */
bool tt_has_nan(const fa_tensor *t);
double tt_max_abs(const fa_tensor *t);                  /* over finite elements; 0 if none */
double tt_dot(const fa_tensor *a, const fa_tensor *b); /* sum of a * b, same shapes */

/* For every element of view t, with idx (int64_t[FA_MAX_DIMS]) holding its index; the body is
 * one statement. */
#define TT_FOR_EACH(t, idx)                                                                        \
    for (int64_t flat_ = 0, n_ = tt_numel(t); flat_ < n_; ++flat_)                                 \
        if (tt_unravel((t), flat_, (idx)), 1)

/* ---------------------------------------------------------------- comparisons */
/*
 * flash-attn's rule (tests/test_flash_attn.py): max|lib - ref| <= factor * max|plain - ref|
 * + atol, where ref is the float64 truth and plain the same-dtype implementation. atol is
 * FA3's slack (2 * max|(ref + 0.3 - 0.3) - ref|: one rounding of the output), taken as
 * eps(dtype) * max|ref|, plus `floor`. It matters where the plain implementation is exact (e.g.
 * one visible key). Positions where ref is +-inf must match exactly; NaN never passes.
 * Returns true when it holds; otherwise reports the worst element.
 */
bool check_rule(const char *what, const fa_tensor *lib, const fa_tensor *ref,
                const fa_tensor *plain, double factor, double floor);
/* max|a - b| over the view (inf when either has a NaN or the infinities differ). */
double max_abs_diff(const fa_tensor *a, const fa_tensor *b);
bool check_close(const char *what, const fa_tensor *lib, const fa_tensor *ref, double atol,
                 double rtol);

/* ---------------------------------------------------------------- library helpers */
/* Workspace sized by the library; freed with free(). */
void *alloc_workspace(size_t bytes);
fa_tensor i32_tensor(int32_t *data, int ndim, int64_t n0, int64_t n1); /* contiguous */
/* ALiBi slopes as flash-attn's tests draw them (0.3 * U[0, 1)): f32 (h), or (b, h) when
 * per_batch. */
tt alibi_slopes(bool per_batch, int64_t batch, int64_t nheads);

#endif /* FA_TEST_HARNESS_H */
