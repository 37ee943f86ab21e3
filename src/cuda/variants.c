/*
 * variants.c — the kernel variants: tile tables, the -D strings that name a variant, and
 * the list fa_precompile compiles ("every shipped variant").
 *
 * Shipped = what the dispatcher picks for d == d_v: the tensor-core forward for f16/bf16 at
 * every padded head dim (32..256) with and without dropout (and the sm_90a wgmma forward at
 * d 64 and 128), and the SIMT forward (f32 and
 * attn_probs) and backward for f32/f16/bf16 at every width, the split-KV decode for f16/bf16 at
 * every padded head dim. Other combinations (d != d_v in the tensor-core forward and the
 * decode) compile at first use.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cuda_backend.h"

int fa_round_hd(int64_t d) { return (int)((d + 31) / 32 * 32); }

/* FLASHATTN_CUDA_TILES="mt,nwarps,bn" overrides the table (tuning experiments only). */
static bool tiles_override(fa_fwd_tiles *t) {
    const char *env = getenv("FLASHATTN_CUDA_TILES");
    return env && sscanf(env, "%d,%d,%d", &t->mt, &t->nwarps, &t->bn) == 3 && t->mt >= 1 &&
           t->mt <= 4 && t->nwarps >= 1 && t->nwarps <= 16 && t->bn >= 16 && t->bn % 16 == 0;
}

/* Candidates per head dim, best first (measured on H100, docs/cuda.md); the first whose shared
 * memory fits the device is taken. */
fa_fwd_tiles fa_fwd_mma_tiles(int hd, int hdv, int smem_limit) {
    fa_fwd_tiles t;
    if (tiles_override(&t)) return t;
    static const fa_fwd_tiles small[] = {{2, 4, 64}, {1, 4, 64}, {1, 4, 32}};
    static const fa_fwd_tiles medium[] = {{2, 4, 64}, {1, 4, 64}, {1, 4, 32}};
    static const fa_fwd_tiles large[] = {{1, 4, 64}, {1, 4, 32}, {1, 4, 16}};
    const int widest = hd > hdv ? hd : hdv;
    const fa_fwd_tiles *list = widest <= 64 ? small : widest <= 128 ? medium : large;
    for (int i = 0; i < 2; ++i)
        if ((int)fa_fwd_mma_smem(hd, hdv, list[i]) <= smem_limit) return list[i];
    return list[2];
}

unsigned fa_fwd_mma_smem(int hd, int hdv, fa_fwd_tiles t) {
    const int bm = 16 * t.mt * t.nwarps;
    return (unsigned)(2 * (bm * (hd + 8) + 2 * t.bn * (hd + 8 + hdv + 8))); /* Q + 2 x (K, V) */
}

void fa_fwd_mma_defines(char *out, size_t size, int dtype, int hd, int hdv, bool dropout,
                        fa_fwd_tiles t) {
    snprintf(out, size, "-DFA_DTYPE=%d -DFA_HD=%d -DFA_HDV=%d -DFA_MT=%d -DFA_NWARPS=%d -DFA_BN=%d "
             "-DFA_DROPOUT=%d", dtype, hd, hdv, t.mt, t.nwarps, t.bn, dropout ? 1 : 0);
}

/* Split-KV decode (decode.cu), measured on H100 (docs/cuda.md): one CTA of 8 warps per SM, each
 * warp a 2-stage ring of 32-key (d <= 64) or 16-key chunks; d > 128: 4 warps, 3 stages. What
 * does not fit the device's shared memory is cut: stages, then chunk keys, then warps. */
fa_decode_tiles fa_decode_tiles_for(int hd, int hdv, int smem_limit) {
    const int widest = hd > hdv ? hd : hdv;
    fa_decode_tiles t = widest <= 64 ? (fa_decode_tiles){8, 2, 32}
                        : widest <= 128 ? (fa_decode_tiles){8, 2, 16}
                                        : (fa_decode_tiles){4, 3, 16};
    /* FLASHATTN_CUDA_DECODE="nwarps,stages,kc" overrides it (tuning experiments only) */
    const char *env = getenv("FLASHATTN_CUDA_DECODE");
    fa_decode_tiles e;
    if (env && sscanf(env, "%d,%d,%d", &e.nwarps, &e.stages, &e.kc) == 3 && e.nwarps >= 1 &&
        e.nwarps <= 8 && e.stages >= 2 && e.stages <= 8 && (e.kc == 16 || e.kc == 32))
        t = e;
    while ((int)fa_decode_smem(hd, hdv, t) > smem_limit && (t.stages > 2 || t.kc > 16 || t.nwarps > 1)) {
        if (t.stages > 2)
            --t.stages;
        else if (t.kc > 16)
            t.kc = 16;
        else
            t.nwarps /= 2;
    }
    return t;
}

unsigned fa_decode_smem(int hd, int hdv, fa_decode_tiles t) {
    /* Q (16 rows) + per warp a ring of stages x kc keys x (K, V) + m_i, l_i per warp and row */
    return (unsigned)(2 * (16 * (hd + 8) + t.nwarps * t.stages * t.kc * (hd + 8 + hdv + 8)) +
                      8 * 16 * t.nwarps);
}

void fa_decode_defines(char *out, size_t size, int dtype, int hd, int hdv, fa_decode_tiles t) {
    snprintf(out, size, "-DFA_DTYPE=%d -DFA_HD=%d -DFA_HDV=%d -DFA_NWARPS=%d -DFA_STAGES=%d -DFA_KC=%d",
             dtype, hd, hdv, t.nwarps, t.stages, t.kc);
}

/* H100 (docs/cuda.md): one warpgroup of 64 rows (two CTAs per SM) by 64 keys (d 128) or 128
 * keys (d 64), three stages. */
fa_wgmma_tiles fa_fwd_wgmma_tiles(int hd) { return (fa_wgmma_tiles){1, hd == 64 ? 128 : 64, 3}; }

/* Q, the K and V stages, 1024 bytes of alignment. */
unsigned fa_fwd_wgmma_smem(int hd, fa_wgmma_tiles t) {
    return 2u * (64u * (unsigned)t.nwg + 2u * (unsigned)(t.stages * t.bn)) * (unsigned)hd + 1024;
}

void fa_fwd_wgmma_defines(char *out, size_t size, int dtype, int hd, fa_wgmma_tiles t) {
    snprintf(out, size, "-DFA_DTYPE=%d -DFA_HD=%d -DFA_BN=%d -DFA_NWG=%d -DFA_STAGES=%d", dtype, hd,
             t.bn, t.nwg, t.stages);
}

void fa_simt_defines(char *out, size_t size, int dtype, int64_t d_max) {
    snprintf(out, size, "-DFA_DTYPE=%d -DFA_CHUNKS=%d", dtype, (int)((d_max + 31) / 32));
}

fa_status fa_cuda_precompile(const char *arch, int *num_variants) {
    FA_FORWARD_IF(fa_cuda_load_nvrtc()); /* first: "" probes for NVRTC */
    FA_RETURN_IF(!arch || !arch[0], FA_ERR_INVALID_ARGUMENT, "arch must be a target like \"sm_80\"");
    fa_cuda_load_driver(); /* only for its version, part of the cache key; may be absent */
    fa_clear_error();
    FA_RETURN_IF(!fa_jit_cache_path()[0], FA_ERR_UNSUPPORTED,
                 "cuda: precompile needs the disk cache, which is off or not writable "
                 "(FLASHATTN_JIT_CACHE / FLASHATTN_CACHE_DIR)");
    /* Shared memory per block of the arch's flagship (A100 163 KB, H100 227 KB, else 99 KB): the
     * tiles the runtime picks there. */
    const int smem_limit = strcmp(arch, "sm_80") == 0   ? 163 * 1024
                           : strncmp(arch, "sm_90", 5) == 0 ? 227 * 1024
                                                            : 99 * 1024;
    int count = 0;
    char defines[256];
    for (int dtype = FA_DTYPE_F16; dtype <= FA_DTYPE_BF16; ++dtype)
        for (int hd = 32; hd <= 256; hd += 32)
            for (int dropout = 0; dropout <= 1; ++dropout) {
                fa_fwd_mma_defines(defines, sizeof defines, dtype, hd, hd, dropout,
                                   fa_fwd_mma_tiles(hd, hd, smem_limit));
                FA_FORWARD_IF(fa_jit_precompile_one("fwd_mma.cu", defines, arch, true));
                ++count;
            }
    if (strcmp(arch, "sm_90a") == 0) /* wgmma exists on sm_90a only */
        for (int dtype = FA_DTYPE_F16; dtype <= FA_DTYPE_BF16; ++dtype)
            for (int hd = 64; hd <= 128; hd += 64) {
                fa_fwd_wgmma_defines(defines, sizeof defines, dtype, hd, fa_fwd_wgmma_tiles(hd));
                FA_FORWARD_IF(fa_jit_precompile_one("fwd_wgmma.cu", defines, arch, true));
                ++count;
            }
    static const char *const simt_programs[] = {"fwd_simt.cu", "bwd_simt.cu"};
    for (int prog = 0; prog < 2; ++prog)
        for (int dtype = FA_DTYPE_F32; dtype <= FA_DTYPE_BF16; ++dtype)
            for (int d = 32; d <= 256; d += 32) {
                fa_simt_defines(defines, sizeof defines, dtype, d);
                FA_FORWARD_IF(fa_jit_precompile_one(simt_programs[prog], defines, arch, true));
                ++count;
            }
    for (int dtype = FA_DTYPE_F16; dtype <= FA_DTYPE_BF16; ++dtype)
        for (int hd = 32; hd <= 256; hd += 32) {
            fa_decode_defines(defines, sizeof defines, dtype, hd, hd,
                              fa_decode_tiles_for(hd, hd, smem_limit));
            FA_FORWARD_IF(fa_jit_precompile_one("decode.cu", defines, arch, true));
            ++count;
        }
    for (int dtype = FA_DTYPE_F32; dtype <= FA_DTYPE_BF16; ++dtype) {
        snprintf(defines, sizeof defines, "-DFA_DTYPE=%d", dtype);
        FA_FORWARD_IF(fa_jit_precompile_one("kvcache.cu", defines, arch, true));
        ++count;
    }
    FA_FORWARD_IF(fa_bwd_mma_precompile(arch, smem_limit, &count));
    if (num_variants) *num_variants = count;
    return FA_OK;
}

/* ---------------------------------------------------------------- tensor-core backward */
/* FLASHATTN_CUDA_BWD_TILES="bm,nwarps" overrides the table (tuning experiments only). */
static bool bwd_tiles_override(fa_bwd_tiles *t) {
    const char *env = getenv("FLASHATTN_CUDA_BWD_TILES");
    return env && sscanf(env, "%d,%d", &t->bm, &t->nwarps) == 2 && t->bm >= 16 &&
           t->bm % 16 == 0 && t->nwarps >= 1 && t->nwarps <= 16 && t->nwarps * 16 % t->bm == 0 &&
           t->nwarps * 16 / t->bm <= 4;
}

/* Candidates per head dim (<= 128), best first (H100, bf16 s4096, bwd TFLOPS: d128 64x8 210,
 * 32x8 192, 64x4 188; d64 64x8 190, 32x8 149; 128x8 gave 199 but is not through the GPU test grid
 * yet); the first whose shared memory fits is taken. The kernel needs BN = 16 * nwarps to be 1, 2
 * or 4 times bm and hd / (BN / bm) a multiple of 16. */
fa_bwd_tiles fa_bwd_mma_tiles(int hd, int hdv, int smem_limit) {
    fa_bwd_tiles t;
    if (bwd_tiles_override(&t)) return t;
    static const fa_bwd_tiles small[] = {{64, 8}, {64, 4}, {32, 4}};
    static const fa_bwd_tiles medium[] = {{64, 8}, {64, 4}, {32, 4}};
    const int widest = hd > hdv ? hd : hdv;
    const fa_bwd_tiles *list = widest <= 64 ? small : medium;
    for (int i = 0; i < 2; ++i)
        if ((int)fa_bwd_mma_smem(hd, hdv, list[i]) <= smem_limit) return list[i];
    return list[2];
}

/* K, V (bn rows), Q and dO (2 x bm rows), dS (2 x bn x bm), 16-bit; lse, D (2 x bm) f32. */
unsigned fa_bwd_mma_smem(int hd, int hdv, fa_bwd_tiles t) {
    const int bn = 16 * t.nwarps;
    return (unsigned)(2 * (bn * (hd + 8 + hdv + 8) + 2 * t.bm * (hd + 8 + hdv + 8) +
                           2 * bn * (t.bm + 8)) +
                      4 * 4 * t.bm);
}

void fa_bwd_mma_defines(char *out, size_t size, int dtype, int hd, int hdv, bool dropout,
                        fa_bwd_tiles t) {
    snprintf(out, size, "-DFA_DTYPE=%d -DFA_HD=%d -DFA_HDV=%d -DFA_BM=%d -DFA_NWARPS=%d "
             "-DFA_DROPOUT=%d", dtype, hd, hdv, t.bm, t.nwarps, dropout ? 1 : 0);
}

/* bwd_wgmma.cu: FA3's tiles (gpu_kernels.md §2): 128 x 128 at d 64, 64 x 128 at d 128. */
int fa_bwd_wgmma_bm(int hd) { return hd == 64 ? 128 : 64; }

/* K, V (128 rows), Q and dO (2 x bm rows), dS (128 x bm), 16-bit; lse, D (2 x bm) f32; 1024
 * bytes of alignment. */
unsigned fa_bwd_wgmma_smem(int hd) {
    const int bm = fa_bwd_wgmma_bm(hd);
    return (unsigned)(2 * (2 * 128 * hd + 4 * bm * hd + 128 * bm) + 4 * 4 * bm + 1024);
}

void fa_bwd_wgmma_defines(char *out, size_t size, int dtype, int hd) {
    snprintf(out, size, "-DFA_DTYPE=%d -DFA_HD=%d -DFA_BM=%d", dtype, hd, fa_bwd_wgmma_bm(hd));
}

/* f16/bf16 x head dims 32..128 x dropout, with the tiles the runtime picks on that smem; on
 * sm_90a also the wgmma kernels at head dims 64 and 128. */
fa_status fa_bwd_mma_precompile(const char *arch, int smem_limit, int *count) {
    char defines[256];
    if (strcmp(arch, "sm_90a") == 0)
        for (int dtype = FA_DTYPE_F16; dtype <= FA_DTYPE_BF16; ++dtype)
            for (int hd = 64; hd <= 128; hd += 64) {
                fa_bwd_wgmma_defines(defines, sizeof defines, dtype, hd);
                FA_FORWARD_IF(fa_jit_precompile_one("bwd_wgmma.cu", defines, arch, true));
                ++*count;
            }
    for (int dtype = FA_DTYPE_F16; dtype <= FA_DTYPE_BF16; ++dtype)
        for (int hd = 32; hd <= 128; hd += 32)
            for (int dropout = 0; dropout <= 1; ++dropout) {
                fa_bwd_mma_defines(defines, sizeof defines, dtype, hd, hd, dropout,
                                   fa_bwd_mma_tiles(hd, hd, smem_limit));
                FA_FORWARD_IF(fa_jit_precompile_one("bwd_mma.cu", defines, arch, true));
                ++*count;
            }
    return FA_OK;
}
