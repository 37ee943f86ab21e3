/*
 * fwd_engine.h — the blocked online-softmax forward shared by fa_cpu_fwd and fa_cpu_kvcache.
 *
 * The operations only describe where things live (fa_attn_plan + one fa_seq per sequence);
 * the engine (fwd_engine.c) does the rest:
 *   tile      = up to FA_MAX_M stacked rows: a chunk of one GQA group's q heads x q rows, so
 *               one packed K/V block serves every q head of the group (decode: the whole
 *               group as the M rows of one tile);
 *   work item = (sequence b, kv head hk, head chunk, up to 4 consecutive tiles of q rows)
 *               sharing each packed kv block; a tile skips the blocks it cannot see;
 *   per kv block of FA_BLOCK_N keys: pack K/V (any dtype, paged or not) into the kernel
 *   set's panels (f32, or bf16 pairs for vdpbf16ps / AMX), S = Q Kᵀ (micro-kernel),
 *   masks/softcap/ALiBi only where needed, online softmax in base 2, dropout,
 *   acc += P V (micro-kernel); fully masked kv blocks are never visited.
 * Split-KV cuts an item's kv blocks into num_splits ranges whose (o, lse) partials are merged
 * by LSE afterwards. Items are handed out longest first through the pool's atomic counter.
 */
#ifndef FA_FWD_ENGINE_H
#define FA_FWD_ENGINE_H

#include "cpu/cpu.h"

#define FA_BLOCK_N 64   /* keys per kv block (a multiple of 64: kernels work in 64-key chunks) */
#define FA_MAX_M 64     /* stacked rows (q heads x q rows) per tile */
#define FA_ROWWISE_M 2  /* tiles this small use qk_rows where the kernel set has it */
#define FA_LOG2E 1.4426950408889634f
#define FA_LN2 0.6931471805599453f

/* Where sequence b lives; offsets are in elements from the plan's base pointers. */
typedef struct fa_seq {
    int64_t q_off, o_off, lse_off;
    int64_t k_off, v_off;  /* dense: key 0 of this sequence (kv head 0) */
    const int32_t *pages;  /* paged: block_table row (k_off/v_off unused) */
    int64_t s_q, s_k;      /* the lengths the masks use */
    int64_t rotary_pos;    /* kvcache rotary: position of q row 0 (cache_seqlens[b]) */
} fa_seq;

typedef struct fa_attn_plan {
    const fa_problem *p;
    fa_cpu_isa isa;
    int num_threads;
    const fa_seq *seqs; /* p->batch entries */
    /* tensors: base pointers and element strides (row = token, head = head axis) */
    const char *q;
    int64_t q_row, q_head;
    char *out;
    int64_t o_row, o_head;
    float *lse;
    int64_t lse_row, lse_head;
    const char *k, *v;
    int64_t k_row, k_head, k_page, v_row, v_head, v_page;
    /* ALiBi: slope of (b, h) = alibi[b * alibi_batch + h] */
    const float *alibi;
    int64_t alibi_batch;
    /* kvcache rotary on q (rotary_dim = p->rotary_dim; 0 = off) */
    const char *rot_cos, *rot_sin;
    int64_t rot_cos_row, rot_sin_row; /* row strides of cos and sin */
    bool rot_q_per_row; /* causal/local: q row i at rotary_pos + i, else all at rotary_pos */
    /* attn_probs (optional; (b, h, i, j) element strides) */
    char *probs;
    int64_t probs_stride[4];
    int64_t probs_rows, probs_cols;
} fa_attn_plan;

/* Workspace bytes for a problem run with this ISA on num_threads threads; total_q = rows of q
 * (varlen). */
size_t fa_engine_workspace(const fa_problem *p, fa_cpu_isa isa, int num_threads, int64_t total_q);
/* Where the caller writes the p->batch sequence descriptors inside that workspace. */
fa_seq *fa_engine_seqs(void *ws);
/* Runs the attention of the plan; ws holds fa_engine_workspace(...) bytes, seqs filled in. */
fa_status fa_engine_run(fa_pool *pool, const fa_attn_plan *plan, int64_t total_q, void *ws,
                        size_t ws_bytes);

/* Rotary of x[0, p->rotary_dim) at row pos of cos/sin (q's dtype, (seqlen_ro, rotary_dim / 2),
 * row strides given), interleaved or GPT-NeoX per p->opts, rounded to the dtype. */
void fa_rotate_row(const fa_problem *p, const char *cos, int64_t cos_stride, const char *sin,
                   int64_t sin_stride, float *x, int64_t pos);

/* ---------------------------------------------------------------- micro-kernels (per ISA) */
/*
 * Operand layouts are owned by each kernel set: prep_q turns an f32 Q tile [m][d_pad] into
 * the QK left operand; pack_k / pack_v read n <= FA_BLOCK_N key rows straight from the inputs
 * (dtype, one pointer per key; keys n.. are zero) into the QK / PV right operands.
 *   qk: s[m][FA_BLOCK_N] = Q Kᵀ (raw dot products)
 *   pv: acc[m][dv_pad] += p[m][FA_BLOCK_N] · V   (p f32; kernels may round it to bf16)
 *   load_row/store_row: fa_load_row_f32/fa_store_row_f32, vectorised where the ISA can;
 *   softmax: one kv block's online-softmax step of m rows of scores s[m][FA_BLOCK_N] (raw
 *            scores times c are the base-2 logits): m_i = max(m_i, row max), s = P =
 *            2^(c s - m_i) (exactly 0 for -inf; 0 for a row with nothing visible yet),
 *            l_i = l_i 2^(m_old - m_i) + sum(P), acc rows [dv_pad] rescaled by the same.
 */
typedef void (*fa_load_row_fn)(int32_t dtype, const void *src, float *dst, int64_t n);
typedef struct fa_fwd_kernels {
    const char *name;
    int d_align;            /* d_pad = d rounded up to this */
    void (*prepare)(void);  /* optional: once per task before the kernels run (tile config) */
    void (*release)(void);  /* optional: once per task after them */
    fa_load_row_fn load_row;                                                  /* to f32 */
    void (*store_row)(int32_t dtype, const float *src, void *dst, int64_t n); /* from f32 */
    void (*prep_q)(const float *q, int m, int d, int d_pad, void *dst);
    void (*pack_k)(int32_t dtype, const void *const *rows, int n, int d, int d_pad, void *dst);
    void (*pack_v)(int32_t dtype, const void *const *rows, int n, int dv, int dv_pad, void *dst);
    void (*qk)(const void *q, const void *kp, int m, int d_pad, float *s);
    /* optional, for tiles of <= FA_ROWWISE_M rows (decode without GQA): qk with K packed by
     * pack_v as rows [FA_BLOCK_N][d_pad], which costs less than transposing it */
    void (*qk_rows)(const void *q, const void *k_rows, int m, int d_pad, float *s);
    void (*pv)(const float *p, const void *vp, int m, int dv_pad, float *acc);
    void (*softmax)(float *s, int m, float c, float *m_i, float *l_i, float *acc, int dv_pad);
} fa_fwd_kernels;

/* The f32 operand layouts shared by the f32 kernel sets (fwd_kernels_scalar.c):
 * Q [m][d_pad], Kᵀ panel [d_pad][FA_BLOCK_N], V panel [FA_BLOCK_N][dv_pad]; rows are
 * converted with the set's load_row. */
void fa_fwd_prep_q_f32(const float *q, int m, int d, int d_pad, void *dst);
void fa_fwd_pack_k_f32(fa_load_row_fn load, int32_t dtype, const void *const *rows, int n, int d,
                       int d_pad, void *dst);
void fa_fwd_pack_v_f32(fa_load_row_fn load, int32_t dtype, const void *const *rows, int n, int dv,
                       int dv_pad, void *dst);

extern const fa_fwd_kernels fa_fwd_kernels_scalar;
#if defined(FA_HAVE_X86)
extern const fa_fwd_kernels fa_fwd_kernels_avx2;
extern const fa_fwd_kernels fa_fwd_kernels_avx512;
extern const fa_fwd_kernels fa_fwd_kernels_avx512_bf16;
extern const fa_fwd_kernels fa_fwd_kernels_amx_bf16;
/* AMX-BF16 present, granted by the OS (arch_prctl) and not narrowed away by FLASHATTN_CPU_ISA
 * (set to anything but "amx"); decided once per process. */
bool fa_cpu_amx_usable(void);
/* AVX-512 pieces shared by the avx512, avx512_bf16 and amx sets (fwd_kernels_avx512.c). The
 * bf16 operands: Q [m][d_pad] bf16, K panel [d_pad / 2][FA_BLOCK_N] bf16 pairs along d,
 * V panel [FA_BLOCK_N / 2][dv_pad] bf16 pairs along the keys. */
void fa_avx512_load_row(int32_t dtype, const void *src, float *dst, int64_t n);
void fa_avx512_softmax(float *s, int m, float c, float *m_i, float *l_i, float *acc, int dv_pad);
void fa_avx512_to_bf16(const float *src, uint16_t *dst, int n); /* n % 16 == 0 */
void fa_avx512_prep_q_bf16(const float *q, int m, int d, int d_pad, void *dst);
void fa_avx512_pack_k_bf16(int32_t dtype, const void *const *rows, int n, int d, int d_pad,
                           void *dst);
void fa_avx512_pack_v_bf16(int32_t dtype, const void *const *rows, int n, int dv, int dv_pad,
                           void *dst);
#endif

#endif /* FA_FWD_ENGINE_H */
