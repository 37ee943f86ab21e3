/*
 * convert.c — f16/bf16 <-> f32 in portable C (bit manipulation, round to nearest even), and
 * whole rows of any float dtype to/from f32. Hot loops that convert in bulk use the ISA
 * files' vector versions; these are the reference and the fallback.
 */
#include "cpu/cpu.h"

#include <string.h>

static uint32_t f32_bits(float f) {
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    return u;
}

static float bits_f32(uint32_t u) {
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}

float fa_f16_to_f32(uint16_t h) {
    uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
    uint32_t exp = (h >> 10) & 0x1Fu;
    uint32_t mant = h & 0x3FFu;
    if (exp == 0x1F) return bits_f32(sign | 0x7F800000u | (mant << 13)); /* inf, NaN */
    if (exp != 0) return bits_f32(sign | ((exp + 112u) << 23) | (mant << 13));
    /* zero or subnormal: mant * 2^-24, exact in f32 */
    float mag = (float)mant * 5.9604644775390625e-8f;
    return sign ? -mag : mag;
}

uint16_t fa_f32_to_f16(float f) {
    uint32_t u = f32_bits(f);
    uint16_t sign = (uint16_t)((u >> 16) & 0x8000u);
    uint32_t abs = u & 0x7FFFFFFFu;
    if (abs > 0x7F800000u) return (uint16_t)(sign | 0x7E00u | ((abs >> 13) & 0x3FFu)); /* NaN */
    if (abs >= 0x477FF000u) return (uint16_t)(sign | 0x7C00u); /* rounds to >= 65520: inf */
    if (abs < 0x38800000u) {
        /* f16 subnormal (or zero): the value in units of 2^-24, rounded to nearest even */
        if (abs < 0x33000000u) return sign; /* below half the smallest subnormal */
        uint32_t exp = abs >> 23;
        uint32_t mant = (abs & 0x7FFFFFu) | 0x800000u;
        uint32_t shift = 126u - exp; /* 14..24 */
        uint32_t q = mant >> shift;
        uint32_t rem = mant & ((1u << shift) - 1u);
        uint32_t half = 1u << (shift - 1u);
        if (rem > half || (rem == half && (q & 1u))) ++q;
        return (uint16_t)(sign | q);
    }
    /* normal: rebias and round the 13 dropped bits to nearest even (carry may bump exp) */
    uint32_t r = abs - 0x38000000u;
    r += 0xFFFu + ((r >> 13) & 1u);
    return (uint16_t)(sign | (r >> 13));
}

float fa_bf16_to_f32(uint16_t h) { return bits_f32((uint32_t)h << 16); }

uint16_t fa_f32_to_bf16(float f) {
    uint32_t u = f32_bits(f);
    if ((u & 0x7FFFFFFFu) > 0x7F800000u) return (uint16_t)((u >> 16) | 0x40u); /* quiet NaN */
    u += 0x7FFFu + ((u >> 16) & 1u);
    return (uint16_t)(u >> 16);
}

void fa_load_row_f32(int32_t dtype, const void *src, float *dst, int64_t n) {
    if (dtype == FA_DTYPE_F32) {
        memcpy(dst, src, (size_t)n * sizeof(float));
    } else if (dtype == FA_DTYPE_F16) {
        const uint16_t *s = src;
        for (int64_t i = 0; i < n; ++i) dst[i] = fa_f16_to_f32(s[i]);
    } else {
        const uint16_t *s = src;
        for (int64_t i = 0; i < n; ++i) dst[i] = fa_bf16_to_f32(s[i]);
    }
}

void fa_store_row_f32(int32_t dtype, const float *src, void *dst, int64_t n) {
    if (dtype == FA_DTYPE_F32) {
        memcpy(dst, src, (size_t)n * sizeof(float));
    } else if (dtype == FA_DTYPE_F16) {
        uint16_t *d = dst;
        for (int64_t i = 0; i < n; ++i) d[i] = fa_f32_to_f16(src[i]);
    } else {
        uint16_t *d = dst;
        for (int64_t i = 0; i < n; ++i) d[i] = fa_f32_to_bf16(src[i]);
    }
}
