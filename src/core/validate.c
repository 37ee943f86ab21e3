/*
 * validate.c — the one place that checks arguments and builds the fa_problem every backend
 * trusts. Each failure names the argument, the expected and the actual value.
 */
#include <math.h>

#include "fa_internal.h"

#define INVALID FA_ERR_INVALID_ARGUMENT
#define FA_MAX_HEAD_DIM 256

static bool present(const fa_tensor *t) { return t->data != NULL; }

/* ---------------------------------------------------------------- one tensor */
static fa_status check_tensor(const fa_tensor *t, const char *name, int32_t ndim) {
    FA_RETURN_IF(!present(t), INVALID, "%s is required (its data pointer is NULL)", name);
    FA_RETURN_IF(t->ndim != ndim, INVALID, "%s must have %d dimensions (got %d)", name, ndim,
                 t->ndim);
    for (int32_t i = 0; i < ndim; ++i) {
        FA_RETURN_IF(t->shape[i] < 0, INVALID, "%s.shape[%d] must be >= 0 (got %lld)", name, i,
                     (long long)t->shape[i]);
        FA_RETURN_IF(t->stride[i] < 0, INVALID, "%s.stride[%d] must be >= 0 (got %lld)", name, i,
                     (long long)t->stride[i]);
    }
    bool empty = false;
    for (int32_t i = 0; i < ndim; ++i) empty = empty || t->shape[i] == 0;
    /* A last dimension of one element, or no element at all, has no stride to speak of. */
    FA_RETURN_IF(t->stride[ndim - 1] != 1 && !empty && t->shape[ndim - 1] > 1, INVALID,
                 "%s.stride[%d] must be 1: the last dimension must be contiguous (got %lld)", name,
                 ndim - 1, (long long)t->stride[ndim - 1]);
    /* The last element's offset must fit comfortably in int64 bytes, so that no backend's
     * address arithmetic can overflow. */
    const int64_t limit = INT64_C(1) << 56;
    int64_t extent = 0;
    for (int32_t i = 0; i < ndim; ++i) {
        if (t->shape[i] <= 1) continue;
        bool too_far = t->shape[i] >= limit ||
                       (t->stride[i] > 0 && t->shape[i] - 1 > (limit - extent) / t->stride[i]);
        FA_RETURN_IF(too_far, INVALID,
                     "%s.shape[%d] = %lld with stride %lld reaches past 2^56 elements", name, i,
                     (long long)t->shape[i], (long long)t->stride[i]);
        extent += (t->shape[i] - 1) * t->stride[i];
    }
    return FA_OK;
}

static fa_status check_dtype(const fa_tensor *t, const char *name, int32_t dtype) {
    FA_RETURN_IF(t->dtype != dtype, INVALID, "%s.dtype must be %s (got %s)", name,
                 fa_dtype_name(dtype), fa_dtype_name(t->dtype));
    return FA_OK;
}

static fa_status check_dim(const fa_tensor *t, const char *name, int axis, int64_t expected,
                           const char *what) {
    FA_RETURN_IF(t->shape[axis] != expected, INVALID, "%s.shape[%d] (%s) must be %lld (got %lld)",
                 name, axis, what, (long long)expected, (long long)t->shape[axis]);
    return FA_OK;
}

/* A tensor of the given rank whose shape equals `shape` and dtype equals `dtype`. */
static fa_status check_like(const fa_tensor *t, const char *name, int32_t ndim,
                            const int64_t *shape, const char *const *what, int32_t dtype) {
    FA_FORWARD_IF(check_tensor(t, name, ndim));
    FA_FORWARD_IF(check_dtype(t, name, dtype));
    for (int i = 0; i < ndim; ++i) FA_FORWARD_IF(check_dim(t, name, i, shape[i], what[i]));
    return FA_OK;
}

static fa_status check_float_dtype(const fa_tensor *t, const char *name) {
    FA_RETURN_IF(t->dtype != FA_DTYPE_F32 && t->dtype != FA_DTYPE_F16 &&
                     t->dtype != FA_DTYPE_BF16,
                 INVALID, "%s.dtype must be float32, float16 or bfloat16 (got %s)", name,
                 fa_dtype_name(t->dtype));
    return FA_OK;
}

/* An int32 vector of n elements (optional ones are checked only when present). */
static fa_status check_index(const fa_tensor *t, const char *name, int64_t n) {
    FA_FORWARD_IF(check_tensor(t, name, 1));
    FA_FORWARD_IF(check_dtype(t, name, FA_DTYPE_I32));
    return check_dim(t, name, 0, n, "batch");
}

static fa_status check_head_dim(int64_t d, const char *name) {
    FA_RETURN_IF(d < 1 || d > FA_MAX_HEAD_DIM, INVALID,
                 "%s (head dim) must be in 1..%d (got %lld)", name, FA_MAX_HEAD_DIM, (long long)d);
    return FA_OK;
}

static fa_status check_alibi(const fa_tensor *t, int64_t batch, int64_t nheads, fa_problem *p) {
    p->alibi = FA_ALIBI_NONE;
    if (!present(t)) return FA_OK;
    FA_RETURN_IF(t->ndim != 1 && t->ndim != 2, INVALID,
                 "alibi_slopes must have shape (nheads,) or (batch, nheads) (got %d dimensions)",
                 t->ndim);
    FA_FORWARD_IF(check_tensor(t, "alibi_slopes", t->ndim));
    FA_FORWARD_IF(check_dtype(t, "alibi_slopes", FA_DTYPE_F32));
    if (t->ndim == 2) FA_FORWARD_IF(check_dim(t, "alibi_slopes", 0, batch, "batch"));
    FA_FORWARD_IF(check_dim(t, "alibi_slopes", t->ndim - 1, nheads, "nheads"));
    p->alibi = t->ndim == 1 ? FA_ALIBI_PER_HEAD : FA_ALIBI_PER_BATCH;
    return FA_OK;
}

/* ---------------------------------------------------------------- options */
static fa_status check_options(const fa_options *o, fa_problem *p) {
    FA_RETURN_IF(!o, INVALID, "opts is NULL (use fa_options_default())");
    FA_RETURN_IF(!isfinite(o->softmax_scale), INVALID, "opts.softmax_scale must be finite (got %g)",
                 (double)o->softmax_scale);
    FA_RETURN_IF(!isfinite(o->softcap), INVALID, "opts.softcap must be finite (got %g)",
                 (double)o->softcap);
    FA_RETURN_IF(!(o->dropout_p >= 0.0f && o->dropout_p < 1.0f), INVALID,
                 "opts.dropout_p must be in [0, 1) (got %g)", (double)o->dropout_p);
    FA_RETURN_IF(o->softcap > 0.0f && o->dropout_p > 0.0f, INVALID,
                 "opts.softcap (%g) cannot be combined with opts.dropout_p (%g)",
                 (double)o->softcap, (double)o->dropout_p);
    FA_RETURN_IF(o->num_splits < 0 || o->num_splits > 128, INVALID,
                 "opts.num_splits must be in 0..128 (got %d)", o->num_splits);
    p->opts = *o;
    p->scale = o->softmax_scale != 0.0f ? o->softmax_scale : 1.0f / sqrtf((float)p->d);
    p->softcap = o->softcap > 0.0f ? o->softcap : 0.0f;
    p->dropout_p = o->dropout_p;
    return FA_OK;
}

/* flash-attn's rules (flash_api.cpp): causal folds into right = 0, causal is dropped for a single
 * query row without ALiBi, bounds >= s_k become unbounded, and a one-sided window gets s_k on
 * its open side. */
static void normalize_window(fa_problem *p, const fa_options *o) {
    int64_t left = o->window_left < 0 ? -1 : o->window_left;
    int64_t right = o->window_right < 0 ? -1 : o->window_right;
    bool causal = o->causal && !(p->max_seqlen_q == 1 && p->alibi == FA_ALIBI_NONE);
    if (causal) right = 0;
    if (left >= p->max_seqlen_k) left = -1;
    if (right >= p->max_seqlen_k) right = -1;
    p->is_causal = left < 0 && right == 0;
    if (left < 0 && right >= 0) left = p->max_seqlen_k;
    if (left >= 0 && right < 0) right = p->max_seqlen_k;
    p->is_local = !p->is_causal && (left >= 0 || right >= 0);
    p->window_left = (int32_t)left;
    p->window_right = (int32_t)right;
}

/* ---------------------------------------------------------------- index contents (host) */
static fa_status check_cu_seqlens(const fa_tensor *t, const char *name, int64_t batch,
                                  int64_t total, int64_t max_len, const char *max_name,
                                  bool bounded_by_total) {
    const int32_t *cu = (const int32_t *)t->data;
    FA_RETURN_IF(cu[0] < 0, INVALID, "%s[0] must be >= 0 (got %d)", name, cu[0]);
    for (int64_t b = 0; b < batch; ++b) {
        int64_t len = (int64_t)cu[b + 1] - cu[b];
        FA_RETURN_IF(len < 0, INVALID, "%s must be non-decreasing (%s[%lld] = %d > %s[%lld] = %d)",
                     name, name, (long long)b, cu[b], name, (long long)b + 1, cu[b + 1]);
        FA_RETURN_IF(len > max_len, INVALID,
                     "%s: sequence %lld has length %lld, more than %s = %lld", name, (long long)b,
                     (long long)len, max_name, (long long)max_len);
    }
    FA_RETURN_IF(bounded_by_total && cu[batch] > total, INVALID,
                 "%s[%lld] = %d exceeds the %lld rows of the packed tensor", name, (long long)batch,
                 cu[batch], (long long)total);
    return FA_OK;
}

/* Entries of block_table row b that back positions [0, len) must name existing pages. */
static fa_status check_block_rows(const fa_tensor *bt, int64_t b, int64_t len, int64_t page_size,
                                  int64_t num_blocks) {
    const int32_t *row = (const int32_t *)bt->data + b * bt->stride[0];
    for (int64_t i = 0; i < (len + page_size - 1) / page_size; ++i)
        FA_RETURN_IF(row[i] < 0 || row[i] >= num_blocks, INVALID,
                     "block_table[%lld][%lld] must be in [0, %lld) (got %d)", (long long)b,
                     (long long)i, (long long)num_blocks, row[i]);
    return FA_OK;
}

static int32_t at(const fa_tensor *t, int64_t i) { return ((const int32_t *)t->data)[i]; }

/* Varlen key ranges: used keys per sequence, after seqused_k and leftpad_k. */
static fa_status check_varlen_keys(const fa_fwd_args *a, const fa_problem *p) {
    const int32_t *cu_k = (const int32_t *)a->cu_seqlens_k.data;
    int64_t capacity = p->paged ? a->block_table.shape[1] * p->page_size : INT64_MAX;
    for (int64_t b = 0; b < p->batch; ++b) {
        int64_t len = (int64_t)cu_k[b + 1] - cu_k[b];
        int64_t used = p->has_seqused_k ? at(&a->seqused_k, b) : len;
        FA_RETURN_IF(used < 0 || (p->has_seqused_k && !p->paged && used > len), INVALID,
                     "seqused_k[%lld] must be in [0, %lld] (got %lld)", (long long)b,
                     (long long)len, (long long)used);
        FA_RETURN_IF(used > capacity, INVALID,
                     "sequence %lld uses %lld keys but its block_table row holds %lld",
                     (long long)b, (long long)used, (long long)capacity);
        FA_RETURN_IF(used > p->max_seqlen_k, INVALID,
                     "sequence %lld uses %lld keys, more than max_seqlen_k = %lld", (long long)b,
                     (long long)used, (long long)p->max_seqlen_k);
        int64_t pad = p->has_leftpad_k ? at(&a->leftpad_k, b) : 0;
        FA_RETURN_IF(pad < 0 || pad > used, INVALID, "leftpad_k[%lld] must be in [0, %lld] (got %lld)",
                     (long long)b, (long long)used, (long long)pad);
        if (p->paged)
            FA_FORWARD_IF(check_block_rows(&a->block_table, b, used, p->page_size, a->k.shape[0]));
    }
    return FA_OK;
}

/* ---------------------------------------------------------------- forward */
static fa_status validate_fwd_varlen(const fa_fwd_args *a, bool host_data, fa_problem *p) {
    const fa_tensor *q = &a->q, *k = &a->k, *v = &a->v;
    FA_FORWARD_IF(check_tensor(q, "q", 3));
    FA_FORWARD_IF(check_tensor(&a->cu_seqlens_q, "cu_seqlens_q", 1));
    FA_FORWARD_IF(check_dtype(&a->cu_seqlens_q, "cu_seqlens_q", FA_DTYPE_I32));
    FA_RETURN_IF(a->cu_seqlens_q.shape[0] < 2, INVALID,
                 "cu_seqlens_q must have batch + 1 >= 2 entries (got %lld)",
                 (long long)a->cu_seqlens_q.shape[0]);
    p->varlen = true;
    p->batch = a->cu_seqlens_q.shape[0] - 1;
    FA_FORWARD_IF(check_index(&a->cu_seqlens_k, "cu_seqlens_k", p->batch + 1));
    p->paged = present(&a->block_table);
    int32_t kv_ndim = p->paged ? 4 : 3;
    FA_FORWARD_IF(check_tensor(k, "k", kv_ndim));
    FA_FORWARD_IF(check_tensor(v, "v", kv_ndim));
    p->nheads = q->shape[1];
    p->d = q->shape[2];
    p->nheads_k = k->shape[kv_ndim - 2];
    p->d_v = v->shape[kv_ndim - 1];
    FA_RETURN_IF(a->max_seqlen_q < 0 || a->max_seqlen_k < 0, INVALID,
                 "max_seqlen_q and max_seqlen_k must be >= 0 (got %lld, %lld)",
                 (long long)a->max_seqlen_q, (long long)a->max_seqlen_k);
    p->max_seqlen_q = a->max_seqlen_q;
    p->max_seqlen_k = a->max_seqlen_k;
    for (int i = 0; i < kv_ndim - 1; ++i)
        FA_FORWARD_IF(check_dim(v, "v", i, k->shape[i], i == kv_ndim - 2 ? "nheads_k" : "like k"));
    if (p->paged) {
        FA_FORWARD_IF(check_tensor(&a->block_table, "block_table", 2));
        FA_FORWARD_IF(check_dtype(&a->block_table, "block_table", FA_DTYPE_I32));
        FA_FORWARD_IF(check_dim(&a->block_table, "block_table", 0, p->batch, "batch"));
        FA_RETURN_IF(k->shape[1] < 1, INVALID, "k.shape[1] (page size) must be >= 1 (got %lld)",
                     (long long)k->shape[1]);
        FA_RETURN_IF(present(&a->leftpad_k), INVALID, "leftpad_k cannot be combined with block_table");
        p->page_size = k->shape[1];
    }
    p->has_seqused_k = present(&a->seqused_k);
    p->has_leftpad_k = present(&a->leftpad_k);
    if (p->has_seqused_k) FA_FORWARD_IF(check_index(&a->seqused_k, "seqused_k", p->batch));
    if (p->has_leftpad_k) FA_FORWARD_IF(check_index(&a->leftpad_k, "leftpad_k", p->batch));
    int64_t total_q = q->shape[0];
    const char *out_what[] = {"total_q", "nheads", "head dim of v"};
    FA_FORWARD_IF(check_like(&a->out, "out", 3, (int64_t[]){total_q, p->nheads, p->d_v}, out_what,
                             q->dtype));
    const char *lse_what[] = {"nheads", "total_q"};
    FA_FORWARD_IF(check_like(&a->softmax_lse, "softmax_lse", 2, (int64_t[]){p->nheads, total_q},
                             lse_what, FA_DTYPE_F32));
    if (!host_data) return FA_OK;
    FA_FORWARD_IF(check_cu_seqlens(&a->cu_seqlens_q, "cu_seqlens_q", p->batch, total_q,
                                   p->max_seqlen_q, "max_seqlen_q", true));
    FA_FORWARD_IF(check_cu_seqlens(&a->cu_seqlens_k, "cu_seqlens_k", p->batch, k->shape[0],
                                   p->paged ? INT64_MAX : p->max_seqlen_k, "max_seqlen_k",
                                   !p->paged));
    return check_varlen_keys(a, p);
}

static fa_status validate_fwd_batched(const fa_fwd_args *a, fa_problem *p) {
    const fa_tensor *q = &a->q, *k = &a->k, *v = &a->v;
    FA_FORWARD_IF(check_tensor(q, "q", 4));
    FA_FORWARD_IF(check_tensor(k, "k", 4));
    FA_FORWARD_IF(check_tensor(v, "v", 4));
    FA_RETURN_IF(present(&a->cu_seqlens_k), INVALID, "cu_seqlens_k needs cu_seqlens_q (varlen)");
    FA_RETURN_IF(present(&a->seqused_k), INVALID, "seqused_k needs cu_seqlens_q (varlen)");
    FA_RETURN_IF(present(&a->leftpad_k), INVALID, "leftpad_k needs cu_seqlens_q (varlen)");
    FA_RETURN_IF(present(&a->block_table), INVALID, "block_table needs cu_seqlens_q (varlen)");
    p->batch = q->shape[0];
    p->max_seqlen_q = q->shape[1];
    p->nheads = q->shape[2];
    p->d = q->shape[3];
    p->max_seqlen_k = k->shape[1];
    p->nheads_k = k->shape[2];
    p->d_v = v->shape[3];
    FA_FORWARD_IF(check_dim(k, "k", 0, p->batch, "batch"));
    for (int i = 0; i < 3; ++i)
        FA_FORWARD_IF(check_dim(v, "v", i, k->shape[i], i == 2 ? "nheads_k" : "like k"));
    const char *out_what[] = {"batch", "seqlen_q", "nheads", "head dim of v"};
    FA_FORWARD_IF(check_like(&a->out, "out", 4,
                             (int64_t[]){p->batch, p->max_seqlen_q, p->nheads, p->d_v}, out_what,
                             q->dtype));
    const char *lse_what[] = {"batch", "nheads", "seqlen_q"};
    return check_like(&a->softmax_lse, "softmax_lse", 3,
                      (int64_t[]){p->batch, p->nheads, p->max_seqlen_q}, lse_what, FA_DTYPE_F32);
}

/* What forward and backward share once the shapes are known. */
static fa_status check_common(const fa_tensor *q, const fa_tensor *k, const fa_tensor *v,
                              const fa_tensor *alibi, const char *k_name, const char *v_name,
                              const fa_options *o, fa_problem *p) {
    FA_FORWARD_IF(check_float_dtype(q, "q"));
    FA_FORWARD_IF(check_dtype(k, k_name, q->dtype));
    FA_FORWARD_IF(check_dtype(v, v_name, q->dtype));
    p->dtype = q->dtype;
    FA_RETURN_IF(p->batch < 1, INVALID, "batch must be >= 1 (got %lld)", (long long)p->batch);
    FA_RETURN_IF(p->nheads < 1, INVALID, "q.shape (nheads) must be >= 1 (got %lld)",
                 (long long)p->nheads);
    FA_RETURN_IF(p->nheads_k < 1 || p->nheads % p->nheads_k != 0, INVALID,
                 "%s.shape[-2] (nheads_k) must divide q's nheads = %lld (got %lld)", k_name,
                 (long long)p->nheads, (long long)p->nheads_k);
    FA_FORWARD_IF(check_head_dim(p->d, "q.shape[-1]"));
    FA_RETURN_IF(p->d_v < 1 || p->d_v > FA_MAX_HEAD_DIM, INVALID,
                 "%s.shape[-1] (head dim) must be in 1..%d (got %lld)", v_name, FA_MAX_HEAD_DIM,
                 (long long)p->d_v);
    FA_FORWARD_IF(check_dim(k, k_name, k->ndim - 1, p->d, "head dim of q"));
    FA_FORWARD_IF(check_alibi(alibi, p->batch, p->nheads, p));
    FA_FORWARD_IF(check_options(o, p));
    normalize_window(p, o);
    return FA_OK;
}

fa_status fa_validate_fwd(const fa_fwd_args *a, const fa_options *o, bool host_data,
                          fa_problem *p) {
    FA_RETURN_IF(!a, INVALID, "args is NULL");
    *p = (fa_problem){.op = FA_OP_FWD};
    if (present(&a->cu_seqlens_q))
        FA_FORWARD_IF(validate_fwd_varlen(a, host_data, p));
    else
        FA_FORWARD_IF(validate_fwd_batched(a, p));
    FA_FORWARD_IF(check_common(&a->q, &a->k, &a->v, &a->alibi_slopes, "k", "v", o, p));
    p->return_probs = present(&a->attn_probs);
    if (p->return_probs) {
        const fa_tensor *s = &a->attn_probs;
        FA_FORWARD_IF(check_tensor(s, "attn_probs", 4));
        FA_FORWARD_IF(check_dtype(s, "attn_probs", p->dtype));
        FA_FORWARD_IF(check_dim(s, "attn_probs", 0, p->batch, "batch"));
        FA_FORWARD_IF(check_dim(s, "attn_probs", 1, p->nheads, "nheads"));
        FA_RETURN_IF(s->shape[2] < p->max_seqlen_q || s->shape[3] < p->max_seqlen_k, INVALID,
                     "attn_probs.shape[2:] must be >= (max_seqlen_q, max_seqlen_k) = (%lld, %lld) "
                     "(got (%lld, %lld))",
                     (long long)p->max_seqlen_q, (long long)p->max_seqlen_k,
                     (long long)s->shape[2], (long long)s->shape[3]);
    }
    return FA_OK;
}

/* ---------------------------------------------------------------- backward */
/* t has ref's rank, shape and the given dtype ("dq.shape[2] must equal q.shape[2] = 6"). */
static fa_status check_same_shape(const fa_tensor *t, const char *name, const fa_tensor *ref,
                                  const char *ref_name, int32_t dtype) {
    FA_FORWARD_IF(check_tensor(t, name, ref->ndim));
    FA_FORWARD_IF(check_dtype(t, name, dtype));
    for (int i = 0; i < ref->ndim; ++i)
        FA_RETURN_IF(t->shape[i] != ref->shape[i], INVALID,
                     "%s.shape[%d] must equal %s.shape[%d] = %lld (got %lld)", name, i, ref_name, i,
                     (long long)ref->shape[i], (long long)t->shape[i]);
    return FA_OK;
}

/* dout like out, dq/dk/dv like q/k/v, softmax_d like softmax_lse (out and lse are checked by
 * the forward's rules). */
static fa_status check_grads(const fa_bwd_args *a, int32_t dtype) {
    FA_FORWARD_IF(check_same_shape(&a->dout, "dout", &a->out, "out", dtype));
    FA_FORWARD_IF(check_same_shape(&a->dq, "dq", &a->q, "q", dtype));
    FA_FORWARD_IF(check_same_shape(&a->dk, "dk", &a->k, "k", dtype));
    FA_FORWARD_IF(check_same_shape(&a->dv, "dv", &a->v, "v", dtype));
    return check_same_shape(&a->softmax_d, "softmax_d", &a->softmax_lse, "softmax_lse",
                            FA_DTYPE_F32);
}

fa_status fa_validate_bwd(const fa_bwd_args *a, const fa_options *o, bool host_data,
                          fa_problem *p) {
    FA_RETURN_IF(!a, INVALID, "args is NULL");
    *p = (fa_problem){.op = FA_OP_BWD};
    /* The shape rules are the forward's: reuse them through a forward view of the call. */
    fa_fwd_args f = {.q = a->q, .k = a->k, .v = a->v, .cu_seqlens_q = a->cu_seqlens_q,
                     .cu_seqlens_k = a->cu_seqlens_k, .alibi_slopes = a->alibi_slopes,
                     .max_seqlen_q = a->max_seqlen_q, .max_seqlen_k = a->max_seqlen_k,
                     .out = a->out, .softmax_lse = a->softmax_lse};
    if (present(&a->cu_seqlens_q))
        FA_FORWARD_IF(validate_fwd_varlen(&f, host_data, p));
    else
        FA_FORWARD_IF(validate_fwd_batched(&f, p));
    FA_FORWARD_IF(check_common(&a->q, &a->k, &a->v, &a->alibi_slopes, "k", "v", o, p));
    FA_FORWARD_IF(check_grads(a, p->dtype));
    p->op = FA_OP_BWD;
    return FA_OK;
}

/* ---------------------------------------------------------------- kv cache */
static fa_status check_kvcache_tensors(const fa_kvcache_args *a, fa_problem *p) {
    const fa_tensor *q = &a->q, *kc = &a->k_cache, *vc = &a->v_cache;
    FA_FORWARD_IF(check_tensor(q, "q", 4));
    FA_FORWARD_IF(check_tensor(kc, "k_cache", 4));
    FA_FORWARD_IF(check_tensor(vc, "v_cache", 4));
    p->batch = q->shape[0];
    p->max_seqlen_q = q->shape[1];
    p->nheads = q->shape[2];
    p->d = q->shape[3];
    p->nheads_k = kc->shape[2];
    p->d_v = vc->shape[3];
    for (int i = 0; i < 3; ++i)
        FA_FORWARD_IF(check_dim(vc, "v_cache", i, kc->shape[i], i == 2 ? "nheads_k" : "like k_cache"));
    p->paged = present(&a->block_table);
    if (p->paged) {
        FA_FORWARD_IF(check_tensor(&a->block_table, "block_table", 2));
        FA_FORWARD_IF(check_dtype(&a->block_table, "block_table", FA_DTYPE_I32));
        FA_FORWARD_IF(check_dim(&a->block_table, "block_table", 0, p->batch, "batch"));
        FA_RETURN_IF(kc->shape[1] < 1, INVALID,
                     "k_cache.shape[1] (page size) must be >= 1 (got %lld)", (long long)kc->shape[1]);
        FA_RETURN_IF(present(&a->cache_batch_idx), INVALID,
                     "cache_batch_idx cannot be combined with block_table (paged KV cache)");
        FA_RETURN_IF(present(&a->cache_leftpad), INVALID,
                     "cache_leftpad cannot be combined with block_table (paged KV cache)");
        p->page_size = kc->shape[1];
        p->max_seqlen_k = a->block_table.shape[1] * p->page_size;
    } else {
        p->max_seqlen_k = kc->shape[1];
        if (!present(&a->cache_batch_idx))
            FA_RETURN_IF(kc->shape[0] < p->batch, INVALID,
                         "k_cache.shape[0] (batch_cache) must be >= batch = %lld (got %lld)",
                         (long long)p->batch, (long long)kc->shape[0]);
    }
    const char *out_what[] = {"batch", "seqlen_q", "nheads", "head dim of v_cache"};
    FA_FORWARD_IF(check_like(&a->out, "out", 4,
                             (int64_t[]){p->batch, p->max_seqlen_q, p->nheads, p->d_v}, out_what,
                             q->dtype));
    const char *lse_what[] = {"batch", "nheads", "seqlen_q"};
    return check_like(&a->softmax_lse, "softmax_lse", 3,
                      (int64_t[]){p->batch, p->nheads, p->max_seqlen_q}, lse_what, FA_DTYPE_F32);
}

static fa_status check_kvcache_new(const fa_kvcache_args *a, fa_problem *p) {
    p->has_new_kv = present(&a->k_new);
    FA_RETURN_IF(present(&a->v_new) != p->has_new_kv, INVALID,
                 "k_new and v_new must be given together (got %s)",
                 p->has_new_kv ? "k_new only" : "v_new only");
    p->has_cache_seqlens = present(&a->cache_seqlens);
    p->has_batch_idx = present(&a->cache_batch_idx);
    p->has_cache_leftpad = present(&a->cache_leftpad);
    if (p->has_cache_seqlens) FA_FORWARD_IF(check_index(&a->cache_seqlens, "cache_seqlens", p->batch));
    if (p->has_batch_idx) FA_FORWARD_IF(check_index(&a->cache_batch_idx, "cache_batch_idx", p->batch));
    if (p->has_cache_leftpad) FA_FORWARD_IF(check_index(&a->cache_leftpad, "cache_leftpad", p->batch));
    if (p->has_new_kv) {
        FA_RETURN_IF(!p->has_cache_seqlens, INVALID, "cache_seqlens is required with k_new/v_new");
        FA_FORWARD_IF(check_tensor(&a->k_new, "k_new", 4));
        p->seqlen_new = a->k_new.shape[1];
        const char *what[] = {"batch", "seqlen_new", "nheads_k", "head dim"};
        FA_FORWARD_IF(check_like(&a->k_new, "k_new", 4,
                                 (int64_t[]){p->batch, p->seqlen_new, p->nheads_k, p->d}, what,
                                 p->dtype));
        FA_FORWARD_IF(check_like(&a->v_new, "v_new", 4,
                                 (int64_t[]){p->batch, p->seqlen_new, p->nheads_k, p->d_v}, what,
                                 p->dtype));
    }
    FA_RETURN_IF(present(&a->rotary_cos) != present(&a->rotary_sin), INVALID,
                 "rotary_cos and rotary_sin must be given together");
    if (present(&a->rotary_cos)) {
        FA_RETURN_IF(!p->has_new_kv, INVALID, "rotary_cos/rotary_sin need k_new and v_new");
        FA_FORWARD_IF(check_tensor(&a->rotary_cos, "rotary_cos", 2));
        FA_FORWARD_IF(check_dtype(&a->rotary_cos, "rotary_cos", p->dtype));
        const char *what[] = {"seqlen_ro", "rotary_dim / 2"};
        FA_FORWARD_IF(check_like(&a->rotary_sin, "rotary_sin", 2, a->rotary_cos.shape, what, p->dtype));
        p->rotary_dim = 2 * a->rotary_cos.shape[1];
        FA_RETURN_IF(p->rotary_dim < 2 || p->rotary_dim > p->d, INVALID,
                     "rotary_dim = 2 * rotary_cos.shape[1] must be in 2..%lld (got %lld)",
                     (long long)p->d, (long long)p->rotary_dim);
        FA_RETURN_IF(a->rotary_cos.shape[0] < p->max_seqlen_k, INVALID,
                     "rotary_cos.shape[0] (seqlen_ro) must be >= the cache length %lld (got %lld)",
                     (long long)p->max_seqlen_k, (long long)a->rotary_cos.shape[0]);
    }
    return FA_OK;
}

/* q row i is rotated at cache_seqlens[b] + i when causal or local (else at cache_seqlens[b]),
 * which passes the end of rotary_cos when s_q > s_new; upstream reads out of bounds there. */
static fa_status check_q_rotary(const fa_kvcache_args *a, const fa_problem *p, int64_t b,
                                int64_t seqlen) {
    if (p->rotary_dim == 0) return FA_OK;
    int64_t row = (p->is_causal || p->is_local) ? p->max_seqlen_q - 1 : 0;
    FA_RETURN_IF(seqlen + row >= a->rotary_cos.shape[0], INVALID,
                 "rotary_cos.shape[0] (seqlen_ro) must be > %lld: q row %lld of sequence %lld is "
                 "rotated at cache_seqlens[%lld] + %lld (got %lld)",
                 (long long)(seqlen + row), (long long)row, (long long)b, (long long)b,
                 (long long)row, (long long)a->rotary_cos.shape[0]);
    return FA_OK;
}

/* Every row's keys [leftpad, seqlen + s_new) must fit the cache and its pages. */
static fa_status check_kvcache_contents(const fa_kvcache_args *a, const fa_problem *p) {
    for (int64_t b = 0; b < p->batch; ++b) {
        int64_t seqlen = p->has_cache_seqlens ? at(&a->cache_seqlens, b) : p->max_seqlen_k;
        FA_RETURN_IF(seqlen < 0 || seqlen + p->seqlen_new > p->max_seqlen_k, INVALID,
                     "cache_seqlens[%lld] + seqlen_new must be in [0, %lld] (the cache length) "
                     "(got %lld + %lld)",
                     (long long)b, (long long)p->max_seqlen_k, (long long)seqlen,
                     (long long)p->seqlen_new);
        int64_t end = seqlen + p->seqlen_new;
        int64_t pad = p->has_cache_leftpad ? at(&a->cache_leftpad, b) : 0;
        FA_RETURN_IF(pad < 0 || pad > end, INVALID,
                     "cache_leftpad[%lld] must be in [0, %lld] (got %lld)", (long long)b,
                     (long long)end, (long long)pad);
        if (p->has_batch_idx) {
            int64_t row = at(&a->cache_batch_idx, b);
            FA_RETURN_IF(row < 0 || row >= a->k_cache.shape[0], INVALID,
                         "cache_batch_idx[%lld] must be in [0, %lld) (got %lld)", (long long)b,
                         (long long)a->k_cache.shape[0], (long long)row);
        }
        if (p->paged)
            FA_FORWARD_IF(check_block_rows(&a->block_table, b, end, p->page_size, a->k_cache.shape[0]));
        FA_FORWARD_IF(check_q_rotary(a, p, b, seqlen));
    }
    return FA_OK;
}

fa_status fa_validate_kvcache(const fa_kvcache_args *a, const fa_options *o, bool host_data,
                              fa_problem *p) {
    FA_RETURN_IF(!a, INVALID, "args is NULL");
    *p = (fa_problem){.op = FA_OP_KVCACHE};
    FA_FORWARD_IF(check_kvcache_tensors(a, p));
    FA_FORWARD_IF(check_common(&a->q, &a->k_cache, &a->v_cache, &a->alibi_slopes, "k_cache",
                               "v_cache", o, p));
    FA_RETURN_IF(o->dropout_p > 0.0f, INVALID,
                 "opts.dropout_p must be 0 for the kv-cache forward (got %g)", (double)o->dropout_p);
    FA_FORWARD_IF(check_kvcache_new(a, p));
    return host_data ? check_kvcache_contents(a, p) : FA_OK;
}
