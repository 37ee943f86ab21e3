/* cases.c — see cases.h. */
#include "cases.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ref.h"

cfg cfg_basic(int32_t dtype, int64_t batch, int64_t s_q, int64_t s_k, int64_t h, int64_t h_k,
              int64_t d, int64_t d_v) {
    cfg c;
    memset(&c, 0, sizeof c);
    c.dtype = dtype;
    c.batch = batch, c.s_q = s_q, c.s_k = s_k, c.h = h, c.h_k = h_k, c.d = d, c.d_v = d_v;
    c.wl = c.wr = -1;
    return c;
}

cfg cfg_random(bool bwd) {
    const int32_t dtypes[3] = {FA_DTYPE_F32, FA_DTYPE_F16, FA_DTYPE_BF16};
    const int64_t heads[4][2] = {{1, 1}, {4, 4}, {6, 2}, {6, 1}};
    const int64_t dims[8] = {1, 8, 16, 40, 59, 64, 111, 128};
    int hi = (int)rng_int(0, 3);
    int64_t d = dims[rng_int(0, 7)];
    cfg c = cfg_basic(dtypes[rng_int(0, 2)], rng_int(1, 4), rng_int(1, 80), rng_int(0, 80),
                      heads[hi][0], heads[hi][1], d, rng_int(0, 2) ? d : dims[rng_int(0, 7)]);
    c.pad = (int)rng_int(0, 1) * (int)rng_int(1, 3);
    c.scale = rng_int(0, 3) ? 0 : 0.3f;
    c.causal = rng_int(0, 1);
    /* windows (and the backward's s_k) keep >= 2 keys per row: where every row sees one key,
     * the true dS is 0 and only flash-attn's D = rowsum(dout * out) from the rounded out is
     * left, which the plain version does not have (its error is 0: the rule cannot apply) */
    if (rng_int(0, 2) == 0) {
        c.wl = rng_int(0, 3) ? (int)rng_int(1, 30) : -1;
        c.wr = rng_int(0, 3) ? (int)rng_int(1, 30) : -1;
    }
    c.alibi = (int)rng_int(0, 2);
    if (rng_int(0, 3) == 0) c.softcap = 10.0f;
    else if (rng_int(0, 3) == 0) c.dropout = 0.2f;
    c.varlen = rng_int(0, 1);
    if (c.varlen && c.s_k == 0) c.s_k = 1; /* varlen draws lengths up to the maximum */
    if (bwd && c.s_k < 2) c.s_k = 2;        /* see the windows below */
    if (!bwd) {
        c.probs = rng_int(0, 3) == 0;
        if (c.varlen) {
            c.seqused = rng_int(0, 1);
            c.page_size = rng_int(0, 2) ? 0 : (int)rng_int(1, 20);
            c.leftpad = !c.page_size && rng_int(0, 1);
        }
    }
    return c;
}

int random_case_count(int dflt) {
    const char *env = getenv("FA_TEST_RANDOM");
    if (env) return atoi(env);
    return test_quick() ? (dflt + 3) / 4 : dflt;
}

void cfg_describe(const cfg *c, char *buf, size_t n) {
    snprintf(buf, n,
             "%s b%lld sq%lld sk%lld h%lld/%lld d%lld/%lld pad%d%s%s win(%d,%d)%s%s%s%s%s%s%s "
             "page%d%s splits%d",
             dtype_name(c->dtype), (long long)c->batch, (long long)c->s_q, (long long)c->s_k,
             (long long)c->h, (long long)c->h_k, (long long)c->d, (long long)c->d_v, c->pad,
             c->scale != 0 ? " scale" : "", c->causal ? " causal" : "", c->wl, c->wr,
             c->softcap > 0 ? " softcap" : "", c->alibi == 1 ? " alibi(h)" : c->alibi == 2 ? " alibi(b,h)" : "",
             c->dropout > 0 ? " dropout" : "", c->varlen ? " varlen" : "",
             c->seqused ? " seqused" : "", c->leftpad ? " leftpad" : "", c->probs ? " probs" : "",
             c->page_size, c->deterministic ? " deterministic" : "", c->num_splits);
}

/* ---------------------------------------------------------------- building a case */
static int64_t imin(int64_t a, int64_t b) { return a < b ? a : b; }

/* Per-sequence lengths: the first at the maximum, some empty, the rest random. */
static void draw_lengths(const cfg *c, fcase *fc) {
    for (int64_t b = 0; b < c->batch; ++b) {
        fc->len_q[b] = c->varlen ? rng_int(0, c->s_q) : c->s_q;
        fc->len_k[b] = c->varlen ? rng_int(0, c->s_k) : c->s_k;
    }
    if (c->varlen) {
        fc->len_q[0] = c->s_q, fc->len_k[0] = c->s_k;
        if (c->batch >= 3) fc->len_q[1] = 0, fc->len_k[2] = 0;
    }
}

/* Varlen keys: cu_seqlens_k counts leftpad rows and unused rows past seqused_k, all within
 * max_seqlen_k. Paged: pages of sequence b are a random subset of the pool. */
static int64_t build_varlen_keys(const cfg *c, fcase *fc) {
    int64_t total = 0;
    fc->cu_k[0] = 0;
    for (int64_t b = 0; b < c->batch; ++b) {
        int64_t room = c->s_k - fc->len_k[b];
        int64_t lp = c->leftpad ? rng_int(0, imin(3, room)) : 0;
        int64_t extra = c->seqused ? rng_int(0, imin(3, room - lp)) : 0;
        if (c->leftpad) fc->leftpad[b] = (int32_t)lp;
        if (c->seqused) fc->seqused[b] = (int32_t)(lp + fc->len_k[b]);
        total += lp + fc->len_k[b] + extra;
        fc->cu_k[b + 1] = (int32_t)total;
    }
    return total;
}

static int64_t build_pages(const cfg *c, fcase *fc, int64_t *max_blocks) {
    int64_t ps = c->page_size, need = 0;
    *max_blocks = (c->s_k + ps - 1) / ps + 1;
    for (int64_t b = 0; b < c->batch; ++b)
        need += (fc->cu_k[b + 1] - fc->cu_k[b] + ps - 1) / ps;
    int64_t num_blocks = need + 2;
    int64_t *perm = rng_permutation(num_blocks);
    fc->block_table = malloc(sizeof(int32_t) * (size_t)(c->batch * *max_blocks));
    int64_t next = 0;
    for (int64_t b = 0; b < c->batch; ++b) {
        int64_t used = (fc->cu_k[b + 1] - fc->cu_k[b] + ps - 1) / ps;
        for (int64_t i = 0; i < *max_blocks; ++i)
            fc->block_table[b * *max_blocks + i] =
                (int32_t)(i < used ? perm[next++] : rng_int(0, num_blocks - 1));
    }
    free(perm);
    return num_blocks;
}

static fa_tensor vec_i32(int32_t *data, int64_t n) { return i32_tensor(data, 1, n, 0); }

fcase case_make(const cfg *c) {
    fcase fc;
    memset(&fc, 0, sizeof fc);
    fc.c = *c;
    int64_t B = c->batch, pad = c->pad;
    fc.len_q = calloc((size_t)B + 1, sizeof(int64_t));
    fc.len_k = calloc((size_t)B + 1, sizeof(int64_t));
    fc.cu_q = calloc((size_t)B + 1, sizeof(int32_t));
    fc.cu_k = calloc((size_t)B + 1, sizeof(int32_t));
    fc.seqused = calloc((size_t)B + 1, sizeof(int32_t));
    fc.leftpad = calloc((size_t)B + 1, sizeof(int32_t));
    draw_lengths(c, &fc);

    fa_options *o = &fc.o;
    *o = fa_options_default();
    o->softmax_scale = c->scale;
    o->causal = c->causal;
    o->window_left = c->wl, o->window_right = c->wr;
    o->softcap = c->softcap;
    o->dropout_p = c->dropout;
    o->rng_seed = c->seed ? c->seed : rng_u64();
    o->rng_offset = rng_u64() >> rng_int(0, 63);
    o->deterministic = c->deterministic;
    o->num_splits = c->num_splits;

    fa_fwd_args *f = &fc.f;
    memset(f, 0, sizeof *f);
    int32_t dt = c->dtype;
    if (c->varlen) {
        int64_t total_q = 0;
        for (int64_t b = 0; b < B; ++b) fc.cu_q[b + 1] = (int32_t)(total_q += fc.len_q[b]);
        int64_t total_k = build_varlen_keys(c, &fc);
        fc.q = TT(dt, pad, total_q, c->h, c->d);
        fc.out = TT(dt, pad, total_q, c->h, c->d_v);
        fc.lse = TT(FA_DTYPE_F32, pad, c->h, total_q);
        if (c->page_size > 0) {
            int64_t max_blocks, num_blocks = build_pages(c, &fc, &max_blocks);
            fc.k = TT(dt, pad, num_blocks, c->page_size, c->h_k, c->d);
            fc.v = TT(dt, pad, num_blocks, c->page_size, c->h_k, c->d_v);
            f->block_table = i32_tensor(fc.block_table, 2, B, max_blocks);
        } else {
            fc.k = TT(dt, pad, total_k, c->h_k, c->d);
            fc.v = TT(dt, pad, total_k, c->h_k, c->d_v);
        }
        f->cu_seqlens_q = vec_i32(fc.cu_q, B + 1);
        f->cu_seqlens_k = vec_i32(fc.cu_k, B + 1);
        if (c->seqused) f->seqused_k = vec_i32(fc.seqused, B);
        if (c->leftpad) f->leftpad_k = vec_i32(fc.leftpad, B);
        f->max_seqlen_q = c->s_q, f->max_seqlen_k = c->s_k;
    } else {
        fc.q = TT(dt, pad, B, c->s_q, c->h, c->d);
        fc.k = TT(dt, pad, B, c->s_k, c->h_k, c->d);
        fc.v = TT(dt, pad, B, c->s_k, c->h_k, c->d_v);
        fc.out = TT(dt, pad, B, c->s_q, c->h, c->d_v);
        fc.lse = TT(FA_DTYPE_F32, pad, B, c->h, c->s_q);
    }
    /* flash-attn's tests scale q by softcap so that the cap bites */
    tt_randn(&fc.q, c->softcap > 0 ? c->softcap / 4 : 1.0);
    tt_randn(&fc.k, 1.0);
    tt_randn(&fc.v, 1.0);
    if (c->alibi) {
        fc.alibi = alibi_slopes(c->alibi == 2, B, c->h);
        f->alibi_slopes = fc.alibi.v;
    }
    if (c->probs) {
        fc.probs = TT(dt, 0, B, c->h, c->s_q + 1, c->s_k + 3);
        f->attn_probs = fc.probs.v;
    }
    f->q = fc.q.v, f->k = fc.k.v, f->v = fc.v.v, f->out = fc.out.v, f->softmax_lse = fc.lse.v;

    /* backward: dout like out, gradients like q, k, v, softmax_d like lse */
    fa_bwd_args *g = &fc.g;
    memset(g, 0, sizeof *g);
    fc.dout = tt_make(dt, pad, fc.out.v.ndim, fc.out.v.shape);
    fc.dq = tt_make(dt, pad, fc.q.v.ndim, fc.q.v.shape);
    fc.dk = tt_make(dt, pad, fc.k.v.ndim, fc.k.v.shape);
    fc.dv = tt_make(dt, pad, fc.v.v.ndim, fc.v.v.shape);
    fc.dsoft = tt_make(FA_DTYPE_F32, pad, fc.lse.v.ndim, fc.lse.v.shape);
    tt_randn(&fc.dout, 1.0);
    g->dout = fc.dout.v, g->q = fc.q.v, g->k = fc.k.v, g->v = fc.v.v, g->out = fc.out.v;
    g->softmax_lse = fc.lse.v;
    g->cu_seqlens_q = f->cu_seqlens_q, g->cu_seqlens_k = f->cu_seqlens_k;
    g->alibi_slopes = f->alibi_slopes;
    g->max_seqlen_q = f->max_seqlen_q, g->max_seqlen_k = f->max_seqlen_k;
    g->dq = fc.dq.v, g->dk = fc.dk.v, g->dv = fc.dv.v, g->softmax_d = fc.dsoft.v;
    return fc;
}

void case_free(fcase *fc) {
    tt *all[] = {&fc->q, &fc->k, &fc->v, &fc->out, &fc->lse, &fc->probs, &fc->alibi,
                 &fc->dout, &fc->dq, &fc->dk, &fc->dv, &fc->dsoft};
    for (size_t i = 0; i < sizeof all / sizeof all[0]; ++i) tt_free(all[i]);
    free(fc->cu_q), free(fc->cu_k), free(fc->seqused), free(fc->leftpad), free(fc->block_table);
    free(fc->len_q), free(fc->len_k);
}

/* ---------------------------------------------------------------- running */
static bool call_ok(const fcase *fc, const char *call, fa_status st) {
    if (st != FA_OK) {
        char desc[256];
        cfg_describe(&fc->c, desc, sizeof desc);
        CHECK(0, "%s(%s) -> %s: %s", call, desc, fa_status_string(st), fa_last_error_message());
    }
    return st == FA_OK;
}

bool case_run_fwd(fcase *fc, fa_context *ctx) {
    tt_poison(&fc->out);
    tt_poison(&fc->lse);
    if (fc->c.probs) tt_poison(&fc->probs);
    size_t bytes = 0;
    fa_status st = fa_fwd_workspace_size(ctx, &fc->f, &fc->o, &bytes);
    void *ws = st == FA_OK ? alloc_workspace(bytes) : NULL;
    if (st == FA_OK) st = fa_fwd(ctx, &fc->f, &fc->o, ws, bytes);
    free(ws);
    return call_ok(fc, "fa_fwd", st);
}

bool case_run_bwd(fcase *fc, fa_context *ctx) {
    tt_poison(&fc->dq);
    tt_poison(&fc->dk);
    tt_poison(&fc->dv);
    tt_poison(&fc->dsoft);
    size_t bytes = 0;
    fa_status st = fa_bwd_workspace_size(ctx, &fc->g, &fc->o, &bytes);
    void *ws = st == FA_OK ? alloc_workspace(bytes) : NULL;
    if (st == FA_OK) st = fa_bwd(ctx, &fc->g, &fc->o, ws, bytes);
    free(ws);
    return call_ok(fc, "fa_bwd", st);
}

/* ---------------------------------------------------------------- checking */
double softmax_floor(const fa_tensor *lse, const fa_tensor *ref) {
    return 4 * 0x1.0p-24 * (1 + tt_max_abs(lse)) * tt_max_abs(ref);
}

static tt f64_like(const tt *t) { return tt_make(TT_F64, 0, t->v.ndim, t->v.shape); }

/* attn_probs: |probs| against the reference's probabilities, the sign against fa_philox.h's
 * mask, zeros outside each sequence. */
static bool check_probs(const fcase *fc, const char *desc, const tt *r_probs, const tt *p_probs) {
    const fa_tensor *t = &fc->probs.v;
    tt lib_abs = tt_make(t->dtype, 0, t->ndim, t->shape); /* |probs| is exact in the dtype */
    bool ok = true;
    int64_t idx[FA_MAX_DIMS];
    for (int64_t n = 0; n < tt_numel(t); ++n) {
        tt_unravel(t, n, idx);
        double x = tt_get(t, idx);
        int64_t b = idx[0], h = idx[1], i = idx[2], j = idx[3];
        tt_set(&lib_abs.v, idx, fabs(x));
        if (i < fc->len_q[b] && j < fc->len_k[b]) {
            bool keep = ref_dropout_keep(&fc->o, fc->c.h, b, h, i, j);
            if (ok && (bool)signbit(x) == keep) {
                CHECK(0, "%s: attn_probs[%lld,%lld,%lld,%lld] = %g but the mask %s it", desc,
                      (long long)b, (long long)h, (long long)i, (long long)j, x,
                      keep ? "keeps" : "drops");
                ok = false;
            }
        } else if (ok && x != 0) {
            CHECK(0, "%s: attn_probs[%lld,%lld,%lld,%lld] = %g outside the sequence (want 0)", desc,
                  (long long)b, (long long)h, (long long)i, (long long)j, x);
            ok = false;
        }
    }
    /* exp(s - lse) in f32 loses ~|lse| f32 ulps that the plain softmax (exp(s - max) / sum)
     * does not: a floor of a few f32 ulps of max|lse| (probs are <= 1) */
    double max_lse = tt_max_abs(&fc->lse.v);
    char what[320];
    snprintf(what, sizeof what, "%s |attn_probs|", desc);
    ok = check_rule(what, &lib_abs.v, &r_probs->v, &p_probs->v, 2, 0x1.0p-21 * (1 + max_lse)) && ok;
    tt_free(&lib_abs);
    return ok;
}

static bool check_padding(const char *desc, const char *name, const tt *t) {
    bool ok = tt_padding_intact(t);
    CHECK(ok, "%s: the library wrote into the padding around %s", desc, name);
    return ok;
}

bool case_check_fwd(const cfg *c) {
    char desc[256], what[320];
    cfg_describe(c, desc, sizeof desc);
    if (test_verbose()) printf("  fwd %s\n", desc);
    fcase fc = case_make(c);
    tt r_out = f64_like(&fc.out), r_lse = f64_like(&fc.lse), p_out = f64_like(&fc.out),
       p_lse = f64_like(&fc.lse), r_probs = {0}, p_probs = {0};
    if (c->probs) r_probs = f64_like(&fc.probs), p_probs = f64_like(&fc.probs);
    ref_fwd(&fc.f, &fc.o, TT_F64, &r_out.v, &r_lse.v, c->probs ? &r_probs.v : NULL);
    ref_fwd(&fc.f, &fc.o, c->dtype, &p_out.v, &p_lse.v, c->probs ? &p_probs.v : NULL);
    bool ok = case_run_fwd(&fc, test_ctx());
    double factor = c->softcap > 0 ? 3 : 2; /* FA3's tests: rtol 2, 3 with softcap */
    if (ok) {
        snprintf(what, sizeof what, "%s out", desc);
        ok = check_rule(what, &fc.out.v, &r_out.v, &p_out.v, factor,
                        softmax_floor(&r_lse.v, &r_out.v)) && ok;
        snprintf(what, sizeof what, "%s lse", desc);
        ok = check_rule(what, &fc.lse.v, &r_lse.v, &p_lse.v, factor, 1e-5) && ok;
        if (c->probs) ok = check_probs(&fc, desc, &r_probs, &p_probs) && ok;
        ok = check_padding(desc, "out", &fc.out) && ok;
        ok = check_padding(desc, "softmax_lse", &fc.lse) && ok;
    }
    tt_free(&r_out), tt_free(&r_lse), tt_free(&p_out), tt_free(&p_lse);
    tt_free(&r_probs), tt_free(&p_probs);
    case_free(&fc);
    return ok;
}

/* softmax_d = rowsum(dout * out): f32 accumulation of d_v products, so within
 * (d_v + 2) * 2^-24 * sum|dout * out| (doubled) of the float64 value. */
static bool check_softmax_d(const fcase *fc, const char *desc) {
    tt r = f64_like(&fc->dsoft), mag = f64_like(&fc->dsoft);
    ref_softmax_d(&fc->g, &r.v);
    fa_bwd_args abs_args = fc->g;
    tt abs_out = f64_like(&fc->out), abs_dout = f64_like(&fc->dout);
    int64_t idx[FA_MAX_DIMS];
    for (int64_t n = 0; n < tt_numel(&fc->out.v); ++n) {
        tt_unravel(&fc->out.v, n, idx);
        tt_set(&abs_out.v, idx, fabs(tt_get(&fc->out.v, idx)));
        tt_set(&abs_dout.v, idx, fabs(tt_get(&fc->dout.v, idx)));
    }
    abs_args.out = abs_out.v, abs_args.dout = abs_dout.v;
    ref_softmax_d(&abs_args, &mag.v);
    bool ok = true;
    for (int64_t n = 0; n < tt_numel(&r.v) && ok; ++n) {
        tt_unravel(&r.v, n, idx);
        double lib = tt_get(&fc->dsoft.v, idx), want = tt_get(&r.v, idx);
        double tol = 2.0 * (double)(fc->c.d_v + 2) * 0x1.0p-24 * tt_get(&mag.v, idx) + 1e-30;
        if (!(fabs(lib - want) <= tol)) {
            CHECK(0, "%s: softmax_d[%lld,%lld,%lld] = %.9g, want %.9g (tol %.3g)", desc,
                  (long long)idx[0], (long long)idx[1], (long long)idx[2], lib, want, tol);
            ok = false;
        }
    }
    tt_free(&r), tt_free(&mag), tt_free(&abs_out), tt_free(&abs_dout);
    return ok;
}

/* Where the plain implementation is exact (one visible key makes dS vanish), the library's
 * D = rowsum(dout * out) (flash-attn's formula) still leaves f32 rounding noise, summed over up
 * to max(s_q, s_k) terms like a random walk. */
static double grad_floor(const cfg *c) {
    return 16 * 0x1.0p-23 * sqrt((double)(c->s_q > c->s_k ? c->s_q : c->s_k));
}

bool case_check_bwd(const cfg *c) {
    char desc[256], what[320];
    cfg_describe(c, desc, sizeof desc);
    if (test_verbose()) printf("  bwd %s\n", desc);
    fcase fc = case_make(c);
    bool ok = case_run_fwd(&fc, test_ctx());
    tt r[3], p[3];
    const tt *lib[3] = {&fc.dq, &fc.dk, &fc.dv};
    const char *names[3] = {"dq", "dk", "dv"};
    for (int i = 0; i < 3; ++i) r[i] = f64_like(lib[i]), p[i] = f64_like(lib[i]);
    ref_bwd(&fc.g, &fc.o, TT_F64, &r[0].v, &r[1].v, &r[2].v);
    ref_bwd(&fc.g, &fc.o, c->dtype, &p[0].v, &p[1].v, &p[2].v);
    ok = ok && case_run_bwd(&fc, test_ctx());
    if (ok) {
        for (int i = 0; i < 3; ++i) {
            snprintf(what, sizeof what, "%s %s", desc, names[i]);
            double floor = grad_floor(c) + softmax_floor(&fc.lse.v, &r[i].v);
            ok = check_rule(what, &lib[i]->v, &r[i].v, &p[i].v, 3, floor) && ok;
            ok = check_padding(desc, names[i], lib[i]) && ok;
        }
        ok = check_softmax_d(&fc, desc) && ok;
        ok = check_padding(desc, "softmax_d", &fc.dsoft) && ok;
    }
    for (int i = 0; i < 3; ++i) tt_free(&r[i]), tt_free(&p[i]);
    case_free(&fc);
    return ok;
}
