/* status.c — status names, the thread-local error message, dtypes, version and ABI facts. */
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "fa_internal.h"

static _Thread_local char fa_message[2048];

fa_status fa_fail(fa_status status, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(fa_message, sizeof fa_message, fmt, ap);
    va_end(ap);
    return status;
}

void fa_clear_error(void) { fa_message[0] = '\0'; }

const char *fa_last_error_message(void) { return fa_message; }

const char *fa_status_string(fa_status status) {
    switch (status) {
    case FA_OK: return "FA_OK";
    case FA_ERR_INVALID_ARGUMENT: return "FA_ERR_INVALID_ARGUMENT";
    case FA_ERR_UNSUPPORTED: return "FA_ERR_UNSUPPORTED";
    case FA_ERR_BACKEND_UNAVAILABLE: return "FA_ERR_BACKEND_UNAVAILABLE";
    case FA_ERR_OUT_OF_MEMORY: return "FA_ERR_OUT_OF_MEMORY";
    case FA_ERR_WORKSPACE_TOO_SMALL: return "FA_ERR_WORKSPACE_TOO_SMALL";
    case FA_ERR_COMPILE: return "FA_ERR_COMPILE";
    case FA_ERR_LAUNCH: return "FA_ERR_LAUNCH";
    case FA_ERR_DEVICE: return "FA_ERR_DEVICE";
    case FA_ERR_INTERNAL: return "FA_ERR_INTERNAL";
    }
    return "FA_ERR_UNKNOWN";
}

size_t fa_dtype_size(int32_t dtype) {
    switch (dtype) {
    case FA_DTYPE_F32: return 4;
    case FA_DTYPE_F16: return 2;
    case FA_DTYPE_BF16: return 2;
    case FA_DTYPE_I32: return 4;
    case FA_DTYPE_I64: return 8;
    default: return 0;
    }
}

const char *fa_dtype_name(int32_t dtype) {
    switch (dtype) {
    case FA_DTYPE_F32: return "float32";
    case FA_DTYPE_F16: return "float16";
    case FA_DTYPE_BF16: return "bfloat16";
    case FA_DTYPE_I32: return "int32";
    case FA_DTYPE_I64: return "int64";
    default: return "unknown";
    }
}

/* ---------------------------------------------------------------- version */
#define FA_STR2(x) #x
#define FA_STR(x) FA_STR2(x)

unsigned fa_version_number(void) { return FA_VERSION_NUMBER; }

const char *fa_version_string(void) {
    return FA_STR(FA_VERSION_MAJOR) "." FA_STR(FA_VERSION_MINOR) "." FA_STR(FA_VERSION_PATCH);
}

unsigned fa_abi_version(void) { return FA_ABI_VERSION; }

/* ---------------------------------------------------------------- ABI facts for bindings */
typedef struct fa_abi_field {
    const char *structure, *field;
    size_t offset;
} fa_abi_field;

#define FA_FIELD(s, f) {#s, #f, offsetof(s, f)}
static const fa_abi_field fa_abi_fields[] = {
    FA_FIELD(fa_tensor, data), FA_FIELD(fa_tensor, dtype), FA_FIELD(fa_tensor, ndim),
    FA_FIELD(fa_tensor, shape), FA_FIELD(fa_tensor, stride),

    FA_FIELD(fa_options, softmax_scale), FA_FIELD(fa_options, causal),
    FA_FIELD(fa_options, window_left), FA_FIELD(fa_options, window_right),
    FA_FIELD(fa_options, softcap), FA_FIELD(fa_options, dropout_p),
    FA_FIELD(fa_options, rng_seed), FA_FIELD(fa_options, rng_offset),
    FA_FIELD(fa_options, deterministic), FA_FIELD(fa_options, num_splits),
    FA_FIELD(fa_options, rotary_interleaved),

    FA_FIELD(fa_fwd_args, q), FA_FIELD(fa_fwd_args, k), FA_FIELD(fa_fwd_args, v),
    FA_FIELD(fa_fwd_args, cu_seqlens_q), FA_FIELD(fa_fwd_args, cu_seqlens_k),
    FA_FIELD(fa_fwd_args, seqused_k), FA_FIELD(fa_fwd_args, leftpad_k),
    FA_FIELD(fa_fwd_args, block_table), FA_FIELD(fa_fwd_args, alibi_slopes),
    FA_FIELD(fa_fwd_args, max_seqlen_q), FA_FIELD(fa_fwd_args, max_seqlen_k),
    FA_FIELD(fa_fwd_args, out), FA_FIELD(fa_fwd_args, softmax_lse),
    FA_FIELD(fa_fwd_args, attn_probs),

    FA_FIELD(fa_bwd_args, dout), FA_FIELD(fa_bwd_args, q), FA_FIELD(fa_bwd_args, k),
    FA_FIELD(fa_bwd_args, v), FA_FIELD(fa_bwd_args, out), FA_FIELD(fa_bwd_args, softmax_lse),
    FA_FIELD(fa_bwd_args, cu_seqlens_q), FA_FIELD(fa_bwd_args, cu_seqlens_k),
    FA_FIELD(fa_bwd_args, alibi_slopes), FA_FIELD(fa_bwd_args, max_seqlen_q),
    FA_FIELD(fa_bwd_args, max_seqlen_k), FA_FIELD(fa_bwd_args, dq), FA_FIELD(fa_bwd_args, dk),
    FA_FIELD(fa_bwd_args, dv), FA_FIELD(fa_bwd_args, softmax_d),

    FA_FIELD(fa_kvcache_args, q), FA_FIELD(fa_kvcache_args, k_cache),
    FA_FIELD(fa_kvcache_args, v_cache), FA_FIELD(fa_kvcache_args, k_new),
    FA_FIELD(fa_kvcache_args, v_new), FA_FIELD(fa_kvcache_args, cache_seqlens),
    FA_FIELD(fa_kvcache_args, cache_batch_idx), FA_FIELD(fa_kvcache_args, cache_leftpad),
    FA_FIELD(fa_kvcache_args, block_table), FA_FIELD(fa_kvcache_args, rotary_cos),
    FA_FIELD(fa_kvcache_args, rotary_sin), FA_FIELD(fa_kvcache_args, alibi_slopes),
    FA_FIELD(fa_kvcache_args, out), FA_FIELD(fa_kvcache_args, softmax_lse),
};

size_t fa_abi_sizeof(const char *struct_name) {
    static const struct {
        const char *name;
        size_t size;
    } sizes[] = {{"fa_tensor", sizeof(fa_tensor)},
                 {"fa_options", sizeof(fa_options)},
                 {"fa_fwd_args", sizeof(fa_fwd_args)},
                 {"fa_bwd_args", sizeof(fa_bwd_args)},
                 {"fa_kvcache_args", sizeof(fa_kvcache_args)}};
    if (!struct_name) return (size_t)-1;
    for (size_t i = 0; i < sizeof sizes / sizeof sizes[0]; ++i)
        if (strcmp(sizes[i].name, struct_name) == 0) return sizes[i].size;
    return (size_t)-1;
}

size_t fa_abi_offsetof(const char *struct_name, const char *field_name) {
    if (!struct_name || !field_name) return (size_t)-1;
    for (size_t i = 0; i < sizeof fa_abi_fields / sizeof fa_abi_fields[0]; ++i)
        if (strcmp(fa_abi_fields[i].structure, struct_name) == 0 &&
            strcmp(fa_abi_fields[i].field, field_name) == 0)
            return fa_abi_fields[i].offset;
    return (size_t)-1;
}
