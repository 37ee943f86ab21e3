/*
 * fwd_kernels_amx_avx512.c — AMX-BF16 micro-kernels of the forward for bf16 inputs (Intel
 * Sapphire Rapids and later). A tile multiply C[16][16] f32 += A[16][32] bf16 · B[16][16 pairs]
 * does 16 K-steps of a 16x16 block in one instruction, so QKᵀ and PV cost a fraction of the
 * softmax around them.
 *
 * Operands are those of the avx512_bf16 set (fa_avx512_prep_q_bf16 / pack_k_bf16 /
 * pack_v_bf16) with d padded to a multiple of 32 (one A tile row):
 *   QKᵀ: A = 16 Q rows x 32 d (row stride d_pad), B = K panel rows of 16 d-pairs x 16 keys
 *        (row stride FA_BLOCK_N pairs), C = S rows x 16 keys; 4 C tiles cover the 64 keys.
 *   PV:  A = 16 P rows x 32 keys (P rounded to bf16), B = V panel rows of 16 key-pairs x 16
 *        columns, C = acc rows x 16 columns, loaded from and stored back to acc.
 * Tiles are configured once per task (prepare: 8 tiles of 16 rows x 64 bytes) and released
 * after it, so other AMX users in the process keep working. Rows past m are computed on
 * scratch rows that exist but are never read back.
 */
#pragma GCC target("amx-tile,amx-bf16")
#include "cpu/fwd_engine.h"

#include <cpuid.h>
#include <immintrin.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>

#define FA_ARCH_REQ_XCOMP_PERM 0x1023
#define FA_XFEATURE_XTILEDATA 18
#define FA_INLINE static inline __attribute__((always_inline))

/* ---------------------------------------------------------------- availability */
static bool amx_ok;
static pthread_once_t amx_once = PTHREAD_ONCE_INIT;

/* cpuid.(7,0):edx bit 22 = AMX-BF16, bit 24 = AMX-TILE; Linux hands out the tile state only
 * after ARCH_REQ_XCOMP_PERM. */
static void amx_detect(void) {
    const char *env = getenv("FLASHATTN_CPU_ISA");
    if (env && *env && strcmp(env, "amx") != 0) return;
    unsigned a, b, c, d;
    if (!__get_cpuid_count(7, 0, &a, &b, &c, &d)) return;
    if (!(d & (1u << 22)) || !(d & (1u << 24))) return;
    amx_ok = syscall(SYS_arch_prctl, FA_ARCH_REQ_XCOMP_PERM, FA_XFEATURE_XTILEDATA) == 0;
}

bool fa_cpu_amx_usable(void) {
    pthread_once(&amx_once, amx_detect);
    return amx_ok;
}

/* ---------------------------------------------------------------- tile config */
typedef struct fa_tile_config {
    uint8_t palette, start_row, reserved[14];
    uint16_t colsb[16];
    uint8_t rows[16];
} fa_tile_config;

static void amx_prepare(void) {
    fa_tile_config cfg;
    memset(&cfg, 0, sizeof cfg);
    cfg.palette = 1;
    for (int t = 0; t < 8; ++t) {
        cfg.colsb[t] = 64;
        cfg.rows[t] = 16;
    }
    _tile_loadconfig(&cfg);
}

static void amx_release(void) { _tile_release(); }

/* ---------------------------------------------------------------- kernels */
/* s[m][FA_BLOCK_N] = Q Kᵀ, 64 keys at a time; tiles 0-3: S, 4: Q, 5-7: K. */
static void qk_amx(const void *qv, const void *kp, int m, int d_pad, float *s) {
    const uint16_t *q = qv;
    const long k_stride = FA_BLOCK_N * 4, s_stride = FA_BLOCK_N * 4;
    for (int r0 = 0; r0 < m; r0 += 16)
        for (int j0 = 0; j0 < FA_BLOCK_N; j0 += 64) {
            const uint32_t *k = (const uint32_t *)kp + j0;
            _tile_zero(0);
            _tile_zero(1);
            _tile_zero(2);
            _tile_zero(3);
            for (int c = 0; c < d_pad; c += 32) {
                const uint32_t *kc = k + (c / 2) * FA_BLOCK_N;
                _tile_loadd(4, q + (long)r0 * d_pad + c, (long)d_pad * 2);
                _tile_loadd(5, kc, k_stride);
                _tile_dpbf16ps(0, 4, 5);
                _tile_loadd(6, kc + 16, k_stride);
                _tile_dpbf16ps(1, 4, 6);
                _tile_loadd(7, kc + 32, k_stride);
                _tile_dpbf16ps(2, 4, 7);
                _tile_loadd(5, kc + 48, k_stride);
                _tile_dpbf16ps(3, 4, 5);
            }
            float *sr = s + r0 * FA_BLOCK_N + j0;
            _tile_stored(0, sr, s_stride);
            _tile_stored(1, sr + 16, s_stride);
            _tile_stored(2, sr + 32, s_stride);
            _tile_stored(3, sr + 48, s_stride);
        }
}

/* acc[16 rows][16 nc columns] += P[16 rows][FA_BLOCK_N] V; tiles 0-3: acc, 4: P, 5-7: V. */
FA_INLINE void pv_cols(const uint16_t *pr, const uint32_t *v, int dv_pad, float *acc, int nc) {
    const long ld = (long)dv_pad * 4;
    _tile_loadd(0, acc, ld);
    if (nc > 1) _tile_loadd(1, acc + 16, ld);
    if (nc > 2) _tile_loadd(2, acc + 32, ld);
    if (nc > 3) _tile_loadd(3, acc + 48, ld);
    for (int kc = 0; kc < FA_BLOCK_N; kc += 32) {
        const uint32_t *vk = v + (kc / 2) * dv_pad;
        _tile_loadd(4, pr + kc, FA_BLOCK_N * 2);
        _tile_loadd(5, vk, ld);
        _tile_dpbf16ps(0, 4, 5);
        if (nc > 1) {
            _tile_loadd(6, vk + 16, ld);
            _tile_dpbf16ps(1, 4, 6);
        }
        if (nc > 2) {
            _tile_loadd(7, vk + 32, ld);
            _tile_dpbf16ps(2, 4, 7);
        }
        if (nc > 3) {
            _tile_loadd(5, vk + 48, ld);
            _tile_dpbf16ps(3, 4, 5);
        }
    }
    _tile_stored(0, acc, ld);
    if (nc > 1) _tile_stored(1, acc + 16, ld);
    if (nc > 2) _tile_stored(2, acc + 32, ld);
    if (nc > 3) _tile_stored(3, acc + 48, ld);
}

static void pv_amx(const float *p, const void *vp, int m, int dv_pad, float *acc) {
    uint16_t pb[FA_MAX_M * FA_BLOCK_N]; /* P as bf16, whole 16-row tiles */
    int rows = (m + 15) & ~15;
    fa_avx512_to_bf16(p, pb, rows * FA_BLOCK_N);
    for (int r0 = 0; r0 < m; r0 += 16)
        for (int c0 = 0; c0 < dv_pad; c0 += 64) {
            int nc = (dv_pad - c0) / 16 < 4 ? (dv_pad - c0) / 16 : 4;
            pv_cols(pb + r0 * FA_BLOCK_N, (const uint32_t *)vp + c0, dv_pad,
                    acc + (long)r0 * dv_pad + c0, nc);
        }
}

const fa_fwd_kernels fa_fwd_kernels_amx_bf16 = {
    .name = "amx_bf16", .d_align = 32, .prepare = amx_prepare, .release = amx_release,
    .load_row = fa_avx512_load_row, .store_row = fa_store_row_f32,
    .prep_q = fa_avx512_prep_q_bf16, .pack_k = fa_avx512_pack_k_bf16,
    .pack_v = fa_avx512_pack_v_bf16, .qk = qk_amx, .pv = pv_amx, .softmax = fa_avx512_softmax};
