/*
 * fa_philox.h — the dropout RNG, one definition for every backend.
 *
 * Valid C11 and CUDA C: the cuda backend embeds this file in its kernel sources, so a mask
 * drawn on the GPU equals the one drawn on the CPU bit for bit.
 *
 * Philox4x32-10 (Salmon et al., SC'11). The element (b, h, i, j) — sequence b, query head h,
 * query row i and key position j, both counted within the sequence — draws
 *     counter = { j / 4, i, b * nheads + h, (uint32) offset }
 *     key     = { (uint32) seed, (uint32)(seed >> 32) ^ (uint32)(offset >> 32) }
 * and takes word j % 4 of the result. It is kept iff word >= fa_dropout_threshold(p), so the
 * keep probability is 1 - p to within 2^-32. Kept values are scaled by 1 / (1 - p).
 */
#ifndef FA_PHILOX_H
#define FA_PHILOX_H

#ifdef __CUDACC_RTC__
#define FA_PHILOX_FN static __device__ __forceinline__
typedef unsigned int fa_u32;
typedef unsigned long long fa_u64;
#else
#include <stdint.h>
#define FA_PHILOX_FN static inline
typedef uint32_t fa_u32;
typedef uint64_t fa_u64;
#endif

typedef struct fa_philox_u32x4 {
    fa_u32 x[4];
} fa_philox_u32x4;

FA_PHILOX_FN fa_u32 fa_mulhilo32(fa_u32 a, fa_u32 b, fa_u32 *hi) {
    fa_u64 product = (fa_u64)a * (fa_u64)b;
    *hi = (fa_u32)(product >> 32);
    return (fa_u32)product;
}

FA_PHILOX_FN fa_philox_u32x4 fa_philox4x32_10(fa_philox_u32x4 ctr, fa_u32 key0, fa_u32 key1) {
    for (int round = 0; round < 10; ++round) {
        fa_u32 hi0, hi1;
        fa_u32 lo0 = fa_mulhilo32(0xD2511F53u, ctr.x[0], &hi0);
        fa_u32 lo1 = fa_mulhilo32(0xCD9E8D57u, ctr.x[2], &hi1);
        fa_philox_u32x4 next = {{hi1 ^ ctr.x[1] ^ key0, lo1, hi0 ^ ctr.x[3] ^ key1, lo0}};
        ctr = next;
        key0 += 0x9E3779B9u;
        key1 += 0xBB67AE85u;
    }
    return ctr;
}

/* The 4 words for key positions 4*(j/4) .. 4*(j/4)+3 of row i in head bh = b * nheads + h. */
FA_PHILOX_FN fa_philox_u32x4 fa_dropout_words(fa_u64 seed, fa_u64 offset, fa_u32 bh, fa_u32 i,
                                              fa_u32 j_group) {
    fa_philox_u32x4 ctr = {{j_group, i, bh, (fa_u32)offset}};
    return fa_philox4x32_10(ctr, (fa_u32)seed, (fa_u32)(seed >> 32) ^ (fa_u32)(offset >> 32));
}

/* Words below this are dropped: round(p * 2^32), saturated. */
FA_PHILOX_FN fa_u32 fa_dropout_threshold(float p) {
    double t = (double)p * 4294967296.0;
    return t >= 4294967295.0 ? 0xFFFFFFFFu : (fa_u32)t;
}

#endif /* FA_PHILOX_H */
