/*
 * ref.c — see ref.h. Every layout (batched, varlen, paged, kvcache) is first gathered into one
 * dense float64 sequence; the attention itself is written once, row by row, for both the truth
 * (prec = TT_F64: every rounding below is the identity) and the plain same-dtype version.
 */
#include "ref.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "fa_philox.h"
#include "harness.h"

/* ---------------------------------------------------------------- the normalised problem */
typedef struct attn {
    int32_t prec;     /* TT_F64 or the dtype of q, k, v */
    int32_t acc;      /* TT_F64 or F32: matmul accumulators and softmax */
    int32_t sprec;    /* precision of the scores: f32 when the plain ALiBi bias promotes them */
    int64_t h, h_k, d, d_v;
    double scale, softcap, dscale; /* dscale = 1 / (1 - p) */
    int64_t left, right;           /* -1 = unbounded */
    bool is_causal, is_local;
    const fa_tensor *alibi;        /* f32 (h) or (b, h); NULL = none */
    const fa_options *opts;
} attn;

/* One sequence, gathered: q (s_q, h, d); ks = k * scale (s_k, h_k, d); vs = v / (1 - p)
 * (s_k, h_k, d_v), both rounded to prec. k, v hold the unscaled values. */
typedef struct seq {
    int64_t b, s_q, s_k;
    double *q, *ks, *vs;
} seq;

static double R(const attn *A, double x) { return round_to(A->prec, x); }
static double R_acc(const attn *A, double x) { return round_to(A->acc, x); }
static double acc_add(const attn *A, double acc, double x) { return R_acc(A, acc + x); }

/* flash-attn's normalisation (flash_api.cpp, as src/core/validate.c does it): causal folds
 * into right = 0, bounds >= max_sk become unbounded, causal is dropped for max_sq == 1 without
 * ALiBi, and a one-sided window gets max_sk on its open side. */
static attn attn_make(const fa_options *o, int32_t prec, int64_t h, int64_t h_k, int64_t d,
                      int64_t d_v, int64_t max_sq, int64_t max_sk, const fa_tensor *alibi) {
    attn A;
    memset(&A, 0, sizeof A);
    A.opts = o;
    A.prec = prec;
    A.acc = prec == TT_F64 ? TT_F64 : FA_DTYPE_F32;
    A.alibi = alibi && alibi->data ? alibi : NULL;
    A.sprec = prec == TT_F64 ? TT_F64 : (A.alibi ? FA_DTYPE_F32 : prec);
    A.h = h, A.h_k = h_k, A.d = d, A.d_v = d_v;
    A.scale = o->softmax_scale != 0 ? o->softmax_scale : 1.0 / sqrt((double)d);
    A.softcap = o->softcap > 0 ? o->softcap : 0;
    A.dscale = 1.0 / (1.0 - (double)o->dropout_p);
    A.left = o->window_left < 0 ? -1 : o->window_left;
    A.right = o->window_right < 0 ? -1 : o->window_right;
    if (o->causal && !(max_sq == 1 && !A.alibi)) A.right = 0;
    if (A.left >= max_sk) A.left = -1;
    if (A.right >= max_sk) A.right = -1;
    A.is_causal = A.left < 0 && A.right == 0;
    /* flash_api.cpp: a one-sided window gets max_sk on its open side; this matters on the
     * right when s_q > s_k + 1 (rows near the top then see no key) */
    if (A.left < 0 && A.right >= 0) A.left = max_sk;
    if (A.left >= 0 && A.right < 0) A.right = max_sk;
    A.is_local = (A.left >= 0 || A.right >= 0) && !A.is_causal;
    return A;
}

bool ref_dropout_keep(const fa_options *o, int64_t nheads, int64_t b, int64_t h, int64_t i,
                      int64_t j) {
    if (o->dropout_p <= 0) return true;
    fa_philox_u32x4 w = fa_dropout_words(o->rng_seed, o->rng_offset, (fa_u32)(b * nheads + h),
                                         (fa_u32)i, (fa_u32)(j / 4));
    return w.x[j % 4] >= fa_dropout_threshold(o->dropout_p);
}

static bool visible(const attn *A, const seq *S, int64_t i, int64_t j) {
    int64_t diag = i + S->s_k - S->s_q;
    return (A->left < 0 || j >= diag - A->left) && (A->right < 0 || j <= diag + A->right);
}

static double alibi_bias(const attn *A, const seq *S, int64_t hq, int64_t i, int64_t j) {
    double slope = A->alibi->ndim == 1 ? AT(A->alibi, hq) : AT(A->alibi, S->b, hq);
    double dist = A->is_causal ? -(double)j : fabs((double)(i + S->s_k - S->s_q - j));
    return round_to(A->prec == TT_F64 ? TT_F64 : FA_DTYPE_F32, -slope * dist);
}

static double dot(const attn *A, const double *x, const double *y, int64_t n) {
    double acc = 0;
    for (int64_t c = 0; c < n; ++c) acc = acc_add(A, acc, x[c] * y[c]);
    return acc;
}

/* ---------------------------------------------------------------- one query row */
/* Scores of row i of head hq, then softmax: p (prec) and p_s (score precision, before the cast
 * to the dtype), pre (the score before softcap); returns lse (+inf when no key is visible). */
static double row_forward(const attn *A, const seq *S, int64_t hq, int64_t i, double *pre,
                          double *p, double *p_s) {
    int64_t hk = hq / (A->h / A->h_k);
    const double *qi = S->q + (i * A->h + hq) * A->d;
    double m = -INFINITY;
    for (int64_t j = 0; j < S->s_k; ++j) {
        double x = R(A, dot(A, qi, S->ks + (j * A->h_k + hk) * A->d, A->d));
        pre[j] = x;
        if (A->softcap > 0) x = R(A, R(A, tanh(R(A, x / A->softcap))) * A->softcap);
        if (A->alibi) x = round_to(A->sprec, x + alibi_bias(A, S, hq, i, j));
        p_s[j] = visible(A, S, i, j) ? x : -INFINITY;
        m = fmax(m, p_s[j]);
    }
    if (m == -INFINITY) {
        for (int64_t j = 0; j < S->s_k; ++j) p[j] = p_s[j] = 0;
        return INFINITY;
    }
    double sum = 0;
    for (int64_t j = 0; j < S->s_k; ++j) {
        p_s[j] = R_acc(A, exp(R_acc(A, p_s[j] - m)));
        sum = acc_add(A, sum, p_s[j]);
    }
    for (int64_t j = 0; j < S->s_k; ++j) {
        p_s[j] = R_acc(A, p_s[j] / sum);
        p[j] = R(A, p_s[j]);
    }
    return R_acc(A, m + R_acc(A, log(sum)));
}

static void seq_forward(const attn *A, const seq *S, double *out, double *lse, double *probs) {
    double *pre = malloc(sizeof(double) * (size_t)(3 * S->s_k + 1)), *p = pre + S->s_k,
           *p_s = p + S->s_k;
    for (int64_t hq = 0; hq < A->h; ++hq) {
        int64_t hk = hq / (A->h / A->h_k);
        for (int64_t i = 0; i < S->s_q; ++i) {
            lse[hq * S->s_q + i] = row_forward(A, S, hq, i, pre, p, p_s);
            for (int64_t j = 0; j < S->s_k; ++j) {
                if (probs) probs[(hq * S->s_q + i) * S->s_k + j] = p[j];
                if (!ref_dropout_keep(A->opts, A->h, S->b, hq, i, j)) p[j] = 0;
            }
            for (int64_t c = 0; c < A->d_v; ++c) {
                double acc = 0;
                for (int64_t j = 0; j < S->s_k; ++j)
                    acc = acc_add(A, acc, p[j] * S->vs[(j * A->h_k + hk) * A->d_v + c]);
                out[(i * A->h + hq) * A->d_v + c] = R(A, acc);
            }
        }
    }
    free(pre);
}

/* Backward of one sequence: dq (s_q, h, d); dk_h (s_k, h, d) and dv_h (s_k, h, d_v) are per
 * query head, unscaled accumulators (finished by seq_backward_finish). */
static void seq_backward(const attn *A, const seq *S, const double *dout, double *dq,
                         double *dk_h, double *dv_h) {
    double *pre = malloc(sizeof(double) * (size_t)(5 * S->s_k + 1)), *p = pre + S->s_k,
           *p_s = p + S->s_k, *ds = p_s + S->s_k, *p_drop = ds + S->s_k;
    for (int64_t hq = 0; hq < A->h; ++hq) {
        int64_t hk = hq / (A->h / A->h_k);
        for (int64_t i = 0; i < S->s_q; ++i) {
            const double *qi = S->q + (i * A->h + hq) * A->d, *doi = dout + (i * A->h + hq) * A->d_v;
            row_forward(A, S, hq, i, pre, p, p_s);
            /* softmax backward: y is the softmax output the autograd graph saved */
            const double *y = A->sprec == A->prec ? p : p_s;
            double t = 0;
            for (int64_t j = 0; j < S->s_k; ++j) {
                bool keep = ref_dropout_keep(A->opts, A->h, S->b, hq, i, j);
                double da = keep ? R(A, dot(A, doi, S->vs + (j * A->h_k + hk) * A->d_v, A->d_v)) : 0;
                ds[j] = da;
                t = acc_add(A, t, da * y[j]);
                p_drop[j] = keep ? p[j] : 0;
            }
            for (int64_t j = 0; j < S->s_k; ++j) {
                double g = R(A, round_to(A->sprec, y[j] * (ds[j] - t)));
                if (A->softcap > 0) {
                    double th = R(A, tanh(R(A, pre[j] / A->softcap)));
                    g = R(A, R(A, R(A, g * A->softcap) * (1 - th * th)) / A->softcap);
                }
                ds[j] = g;
            }
            for (int64_t c = 0; c < A->d; ++c) {
                double acc = 0;
                for (int64_t j = 0; j < S->s_k; ++j)
                    acc = acc_add(A, acc, ds[j] * S->ks[(j * A->h_k + hk) * A->d + c]);
                dq[(i * A->h + hq) * A->d + c] = R(A, acc);
            }
            for (int64_t j = 0; j < S->s_k; ++j) {
                double *dkj = dk_h + (j * A->h + hq) * A->d, *dvj = dv_h + (j * A->h + hq) * A->d_v;
                for (int64_t c = 0; c < A->d; ++c) dkj[c] = acc_add(A, dkj[c], ds[j] * qi[c]);
                for (int64_t c = 0; c < A->d_v; ++c) dvj[c] = acc_add(A, dvj[c], p_drop[j] * doi[c]);
            }
        }
    }
    free(pre);
}

/* dk = scale * sum over the GQA group of dk_h, dv = dv_h / (1 - p), with the plain version's
 * roundings (each head's gradient in the dtype, then the group sum). */
static void seq_backward_finish(const attn *A, int64_t s_k, const double *dk_h,
                                const double *dv_h, double *dk, double *dv) {
    int64_t group = A->h / A->h_k;
    for (int64_t j = 0; j < s_k; ++j)
        for (int64_t hk = 0; hk < A->h_k; ++hk) {
            for (int64_t c = 0; c < A->d; ++c) {
                double acc = 0;
                for (int64_t g = 0; g < group; ++g)
                    acc = acc_add(A, acc, R(A, R(A, dk_h[(j * A->h + hk * group + g) * A->d + c]) * A->scale));
                dk[(j * A->h_k + hk) * A->d + c] = R(A, acc);
            }
            for (int64_t c = 0; c < A->d_v; ++c) {
                double acc = 0;
                for (int64_t g = 0; g < group; ++g)
                    acc = acc_add(A, acc, R(A, R(A, dv_h[(j * A->h + hk * group + g) * A->d_v + c]) * A->dscale));
                dv[(j * A->h_k + hk) * A->d_v + c] = R(A, acc);
            }
        }
}

/* ---------------------------------------------------------------- gathering */
/* Token (a, b) of t: t[a, b, :, :] when 4-D, t[a, :, :] when 3-D; nh * dd values in buf,
 * loaded, stored or added to the tensor. */
typedef enum token_op { TOKEN_LOAD, TOKEN_STORE, TOKEN_ADD } token_op;

static void token_io(const fa_tensor *t, int64_t a, int64_t b, double *buf, token_op op) {
    int64_t nh = t->shape[t->ndim - 2], dd = t->shape[t->ndim - 1];
    int64_t idx[FA_MAX_DIMS] = {a, b, 0, 0};
    int hdim = t->ndim - 2;
    for (int64_t h = 0; h < nh; ++h)
        for (int64_t c = 0; c < dd; ++c) {
            idx[hdim] = h;
            idx[hdim + 1] = c;
            double *x = buf + h * dd + c;
            if (op == TOKEN_LOAD) *x = tt_get(t, idx);
            else tt_set(t, idx, op == TOKEN_ADD ? tt_get(t, idx) + *x : *x);
        }
}

/* Loads a token scaled by mul and rounded to prec (the plain version's k * scale, v / (1-p)). */
static void load_token(const fa_tensor *t, int64_t a, int64_t b, double mul, int32_t prec,
                       double *dst) {
    token_io(t, a, b, dst, TOKEN_LOAD);
    int64_t n = t->shape[t->ndim - 2] * t->shape[t->ndim - 1];
    for (int64_t i = 0; i < n; ++i) dst[i] = round_to(prec, dst[i] * mul);
}

static void zero(const fa_tensor *t) {
    int64_t idx[FA_MAX_DIMS];
    TT_FOR_EACH(t, idx) tt_set(t, idx, 0);
}

/* Where the rows of one sequence live: q row i is token (q_a + i, q_b) or (q_a, i) ... */
typedef struct layout {
    bool varlen;      /* q, out 3-D (total, h, d) */
    int64_t q_row0;   /* varlen: first row of the sequence */
    int64_t k_row0;   /* varlen, unpaged: first key row (after leftpad) */
    const fa_tensor *block_table; /* paged: k[bt[b][p / ps], p % ps] */
    int64_t b;
} layout;

static void q_token(const layout *L, int64_t i, int64_t *a, int64_t *b) {
    if (L->varlen) *a = L->q_row0 + i, *b = 0;
    else *a = L->b, *b = i;
}

static void k_token(const layout *L, const fa_tensor *k, int64_t p, int64_t *a, int64_t *b) {
    if (L->block_table) {
        int64_t ps = k->shape[1];
        *a = (int64_t)AT(L->block_table, L->b, p / ps), *b = p % ps;
    } else if (L->varlen) {
        *a = L->k_row0 + p, *b = 0;
    } else {
        *a = L->b, *b = p;
    }
}

static seq seq_gather(const attn *A, const layout *L, const fa_tensor *q, const fa_tensor *k,
                      const fa_tensor *v, int64_t s_q, int64_t s_k) {
    seq S = {L->b, s_q, s_k, NULL, NULL, NULL};
    S.q = malloc(sizeof(double) * (size_t)(s_q * A->h * A->d + 1));
    S.ks = malloc(sizeof(double) * (size_t)(s_k * A->h_k * A->d + 1));
    S.vs = malloc(sizeof(double) * (size_t)(s_k * A->h_k * A->d_v + 1));
    int64_t a, b;
    for (int64_t i = 0; i < s_q; ++i) {
        q_token(L, i, &a, &b);
        load_token(q, a, b, 1.0, TT_F64, S.q + i * A->h * A->d);
    }
    for (int64_t p = 0; p < s_k; ++p) {
        k_token(L, k, p, &a, &b);
        load_token(k, a, b, A->scale, A->prec, S.ks + p * A->h_k * A->d);
        load_token(v, a, b, A->dscale, A->prec, S.vs + p * A->h_k * A->d_v);
    }
    return S;
}

static void seq_free(seq *S) {
    free(S->q);
    free(S->ks);
    free(S->vs);
}

/* Varlen lengths of sequence b: q rows, key count and the first key row. */
static void varlen_lengths(const fa_fwd_args *a, int64_t b, int64_t *s_q, int64_t *s_k,
                           int64_t *k_row0) {
    int64_t cq0 = (int64_t)AT(&a->cu_seqlens_q, b), cq1 = (int64_t)AT(&a->cu_seqlens_q, b + 1);
    int64_t ck0 = (int64_t)AT(&a->cu_seqlens_k, b), ck1 = (int64_t)AT(&a->cu_seqlens_k, b + 1);
    int64_t lp = a->leftpad_k.data ? (int64_t)AT(&a->leftpad_k, b) : 0;
    int64_t used = a->seqused_k.data ? (int64_t)AT(&a->seqused_k, b) : ck1 - ck0;
    *s_q = cq1 - cq0;
    *s_k = used - lp;
    *k_row0 = ck0 + lp;
}

/* Writes one sequence's out (s_q, h, d_v) and lse (h, s_q) into the output tensors. */
static void scatter_out(const attn *A, const layout *L, const seq *S, double *out,
                        const double *lse, const fa_tensor *t_out, const fa_tensor *t_lse) {
    int64_t a, b;
    for (int64_t i = 0; i < S->s_q; ++i) {
        q_token(L, i, &a, &b);
        token_io(t_out, a, b, out + i * A->h * A->d_v, TOKEN_STORE);
        for (int64_t h = 0; h < A->h; ++h) {
            if (L->varlen) PUT(t_lse, lse[h * S->s_q + i], h, a);
            else PUT(t_lse, lse[h * S->s_q + i], L->b, h, i);
        }
    }
}

static void scatter_probs(const attn *A, const seq *S, const double *probs, const fa_tensor *t) {
    for (int64_t h = 0; h < A->h; ++h)
        for (int64_t i = 0; i < t->shape[2]; ++i)
            for (int64_t j = 0; j < t->shape[3]; ++j) {
                double x = i < S->s_q && j < S->s_k ? probs[(h * S->s_q + i) * S->s_k + j] : 0;
                PUT(t, x, S->b, h, i, j);
            }
}

static void *xcalloc(int64_t n) { return calloc((size_t)(n > 0 ? n : 1), sizeof(double)); }

/* The attention of a fwd/bwd call: shapes from the tensors, lengths maxima from varlen's
 * max_seqlen or the batched shapes. */
static attn attn_of_args(const fa_options *o, int32_t prec, const fa_tensor *q,
                         const fa_tensor *k, const fa_tensor *v, bool varlen, int64_t max_sq,
                         int64_t max_sk, const fa_tensor *alibi) {
    return attn_make(o, prec, q->shape[q->ndim - 2], k->shape[k->ndim - 2], q->shape[q->ndim - 1],
                     v->shape[v->ndim - 1], varlen ? max_sq : q->shape[1],
                     varlen ? max_sk : k->shape[1], alibi);
}

/* ---------------------------------------------------------------- forward */
void ref_fwd(const fa_fwd_args *a, const fa_options *o, int32_t prec, const fa_tensor *out,
             const fa_tensor *lse, const fa_tensor *probs) {
    bool varlen = a->cu_seqlens_q.data != NULL;
    int64_t batch = varlen ? a->cu_seqlens_q.shape[0] - 1 : a->q.shape[0];
    attn A = attn_of_args(o, prec, &a->q, &a->k, &a->v, varlen, a->max_seqlen_q, a->max_seqlen_k,
                          &a->alibi_slopes);
    int64_t h = A.h, d_v = A.d_v;
    for (int64_t b = 0; b < batch; ++b) {
        layout L = {varlen, 0, 0, a->block_table.data ? &a->block_table : NULL, b};
        int64_t s_q = a->q.shape[1], s_k = a->k.shape[1];
        if (varlen) {
            varlen_lengths(a, b, &s_q, &s_k, &L.k_row0);
            L.q_row0 = (int64_t)AT(&a->cu_seqlens_q, b);
        }
        seq S = seq_gather(&A, &L, &a->q, &a->k, &a->v, s_q, s_k);
        double *o_seq = xcalloc(s_q * h * d_v), *l_seq = xcalloc(h * s_q);
        double *p_seq = probs ? xcalloc(h * s_q * s_k) : NULL;
        seq_forward(&A, &S, o_seq, l_seq, p_seq);
        scatter_out(&A, &L, &S, o_seq, l_seq, out, lse);
        if (probs) scatter_probs(&A, &S, p_seq, probs);
        free(o_seq);
        free(l_seq);
        free(p_seq);
        seq_free(&S);
    }
}

/* ---------------------------------------------------------------- backward */
void ref_bwd(const fa_bwd_args *a, const fa_options *o, int32_t prec, const fa_tensor *dq,
             const fa_tensor *dk, const fa_tensor *dv) {
    bool varlen = a->cu_seqlens_q.data != NULL;
    int64_t batch = varlen ? a->cu_seqlens_q.shape[0] - 1 : a->q.shape[0];
    attn A = attn_of_args(o, prec, &a->q, &a->k, &a->v, varlen, a->max_seqlen_q, a->max_seqlen_k,
                          &a->alibi_slopes);
    int64_t h = A.h, d = A.d, h_k = A.h_k, d_v = A.d_v;
    /* rows outside every sequence stay 0; dk and dv are summed into */
    zero(dq), zero(dk), zero(dv);
    for (int64_t b = 0; b < batch; ++b) {
        layout L = {varlen, 0, 0, NULL, b};
        int64_t s_q = a->q.shape[1], s_k = a->k.shape[1];
        if (varlen) {
            L.q_row0 = (int64_t)AT(&a->cu_seqlens_q, b);
            L.k_row0 = (int64_t)AT(&a->cu_seqlens_k, b);
            s_q = (int64_t)AT(&a->cu_seqlens_q, b + 1) - L.q_row0;
            s_k = (int64_t)AT(&a->cu_seqlens_k, b + 1) - L.k_row0;
        }
        seq S = seq_gather(&A, &L, &a->q, &a->k, &a->v, s_q, s_k);
        double *dout = xcalloc(s_q * h * d_v), *dq_s = xcalloc(s_q * h * d);
        double *dk_h = xcalloc(s_k * h * d), *dv_h = xcalloc(s_k * h * d_v);
        double *dk_s = xcalloc(s_k * h_k * d), *dv_s = xcalloc(s_k * h_k * d_v);
        int64_t ta, tb;
        for (int64_t i = 0; i < s_q; ++i) {
            q_token(&L, i, &ta, &tb);
            load_token(&a->dout, ta, tb, 1.0, TT_F64, dout + i * h * d_v);
        }
        seq_backward(&A, &S, dout, dq_s, dk_h, dv_h);
        seq_backward_finish(&A, s_k, dk_h, dv_h, dk_s, dv_s);
        for (int64_t i = 0; i < s_q; ++i) {
            q_token(&L, i, &ta, &tb);
            token_io(dq, ta, tb, dq_s + i * h * d, TOKEN_STORE);
        }
        for (int64_t p = 0; p < s_k; ++p) {
            k_token(&L, &a->k, p, &ta, &tb);
            token_io(dk, ta, tb, dk_s + p * h_k * d, TOKEN_ADD);
            token_io(dv, ta, tb, dv_s + p * h_k * d_v, TOKEN_ADD);
        }
        free(dout), free(dq_s), free(dk_h), free(dv_h), free(dk_s), free(dv_s);
        seq_free(&S);
    }
}

void ref_softmax_d(const fa_bwd_args *a, const fa_tensor *softmax_d) {
    bool varlen = a->cu_seqlens_q.data != NULL;
    int64_t h = a->q.shape[a->q.ndim - 2], d_v = a->v.shape[a->v.ndim - 1];
    int64_t rows = varlen ? a->q.shape[0] : a->q.shape[0] * a->q.shape[1];
    for (int64_t r = 0; r < rows; ++r)
        for (int64_t hq = 0; hq < h; ++hq) {
            double sum = 0;
            for (int64_t c = 0; c < d_v; ++c) {
                if (varlen) sum += AT(&a->dout, r, hq, c) * AT(&a->out, r, hq, c);
                else {
                    int64_t b = r / a->q.shape[1], i = r % a->q.shape[1];
                    sum += AT(&a->dout, b, i, hq, c) * AT(&a->out, b, i, hq, c);
                }
            }
            if (varlen) PUT(softmax_d, sum, hq, r);
            else PUT(softmax_d, sum, r / a->q.shape[1], hq, r % a->q.shape[1]);
        }
}

/* ---------------------------------------------------------------- kv cache */
/* Rotates x (n values of one head) at position pos, in place; interleaved pairs (2c, 2c+1),
 * GPT-NeoX pairs (c, c + rotary_dim / 2). */
static void rotate(const fa_kvcache_args *a, bool interleaved, int64_t pos, double *x) {
    int64_t half = a->rotary_cos.shape[1];
    for (int64_t c = 0; c < half; ++c) {
        double cs = AT(&a->rotary_cos, pos, c), sn = AT(&a->rotary_sin, pos, c);
        int64_t i0 = interleaved ? 2 * c : c, i1 = interleaved ? 2 * c + 1 : c + half;
        double x0 = x[i0], x1 = x[i1];
        x[i0] = x0 * cs - x1 * sn;
        x[i1] = x0 * sn + x1 * cs;
    }
}

/* Rotates every head of one token and rounds it to the dtype, as the caches store it. */
static void rotate_token(const fa_kvcache_args *a, const fa_options *o, int64_t pos, int64_t nh,
                         int64_t d, double *x) {
    if (!a->rotary_cos.data) return;
    for (int64_t h = 0; h < nh; ++h) {
        rotate(a, o->rotary_interleaved, pos, x + h * d);
        for (int64_t c = 0; c < d; ++c) x[h * d + c] = round_to(a->q.dtype, x[h * d + c]);
    }
}

void ref_kvcache(const fa_kvcache_args *a, const fa_options *o, int32_t prec,
                 const fa_tensor *k_cache, const fa_tensor *v_cache, const fa_tensor *out,
                 const fa_tensor *lse) {
    int64_t batch = a->q.shape[0], s_q = a->q.shape[1], h = a->q.shape[2], d = a->q.shape[3];
    int64_t h_k = a->k_cache.shape[2], d_v = a->v_cache.shape[3];
    bool paged = a->block_table.data != NULL;
    int64_t capacity = paged ? a->block_table.shape[1] * a->k_cache.shape[1] : a->k_cache.shape[1];
    int64_t s_new = a->k_new.data ? a->k_new.shape[1] : 0;
    attn A = attn_make(o, prec, h, h_k, d, d_v, s_q, capacity, &a->alibi_slopes);
    int64_t idx[FA_MAX_DIMS];
    TT_FOR_EACH(k_cache, idx) tt_set(k_cache, idx, tt_get(&a->k_cache, idx));
    TT_FOR_EACH(v_cache, idx) tt_set(v_cache, idx, tt_get(&a->v_cache, idx));
    double *tok = xcalloc(h * (d > d_v ? d : d_v));
    /* 1. the append, into the expected caches (every batch row before any attention) */
    for (int64_t b = 0; b < batch; ++b) {
        int64_t cb = a->cache_batch_idx.data ? (int64_t)AT(&a->cache_batch_idx, b) : b;
        int64_t cs = a->cache_seqlens.data ? (int64_t)AT(&a->cache_seqlens, b) : capacity;
        layout L = {false, 0, 0, paged ? &a->block_table : NULL, cb};
        L.b = paged ? b : cb;
        for (int64_t j = 0; j < s_new; ++j) {
            int64_t ta, tb;
            k_token(&L, k_cache, cs + j, &ta, &tb);
            load_token(&a->k_new, b, j, 1.0, TT_F64, tok);
            rotate_token(a, o, cs + j, h_k, d, tok);
            token_io(k_cache, ta, tb, tok, TOKEN_STORE);
            load_token(&a->v_new, b, j, 1.0, TT_F64, tok);
            token_io(v_cache, ta, tb, tok, TOKEN_STORE);
        }
    }
    /* 2. attention over keys [leftpad, cache_seqlens + s_new) of the updated rows */
    for (int64_t b = 0; b < batch; ++b) {
        int64_t cb = a->cache_batch_idx.data ? (int64_t)AT(&a->cache_batch_idx, b) : b;
        int64_t cs = a->cache_seqlens.data ? (int64_t)AT(&a->cache_seqlens, b) : capacity;
        int64_t lp = a->cache_leftpad.data ? (int64_t)AT(&a->cache_leftpad, b) : 0;
        int64_t s_k = cs + s_new - lp;
        seq S = {b, s_q, s_k, xcalloc(s_q * h * d), xcalloc(s_k * h_k * d), xcalloc(s_k * h_k * d_v)};
        layout L = {false, 0, 0, paged ? &a->block_table : NULL, paged ? b : cb};
        for (int64_t i = 0; i < s_q; ++i) {
            load_token(&a->q, b, i, 1.0, TT_F64, S.q + i * h * d);
            rotate_token(a, o, cs + (A.is_causal || A.is_local ? i : 0), h, d, S.q + i * h * d);
        }
        for (int64_t p = 0; p < s_k; ++p) {
            int64_t ta, tb;
            k_token(&L, k_cache, lp + p, &ta, &tb);
            load_token(k_cache, ta, tb, A.scale, prec, S.ks + p * h_k * d);
            load_token(v_cache, ta, tb, 1.0, prec, S.vs + p * h_k * d_v);
        }
        double *o_seq = xcalloc(s_q * h * d_v), *l_seq = xcalloc(h * s_q);
        seq_forward(&A, &S, o_seq, l_seq, NULL);
        layout Lq = {false, 0, 0, NULL, b};
        scatter_out(&A, &Lq, &S, o_seq, l_seq, out, lse);
        free(o_seq);
        free(l_seq);
        seq_free(&S);
    }
    free(tok);
}
