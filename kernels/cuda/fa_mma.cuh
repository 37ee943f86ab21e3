/*
 * fa_mma.cuh — PTX wrappers of the sm_80+ tensor-core path: mma.sync m16n8k16 (f32
 * accumulators), ldmatrix and cp.async. Fragment layouts (g = lane / 4, t = lane % 4):
 *   A (16x16, row): a0 = A[g][2t..2t+1], a1 = A[g+8][2t..], a2 = A[g][2t+8..], a3 = A[g+8][2t+8..]
 *   B (16x8, col):  b0 = B[2t..2t+1][g], b1 = B[2t+8..2t+9][g]
 *   C (16x8):       c0,c1 = C[g][2t, 2t+1], c2,c3 = C[g+8][2t, 2t+1]
 */
#ifndef FA_MMA_CUH
#define FA_MMA_CUH

#include "fa_common.cuh"

static __device__ __forceinline__ void fa_mma16816(float *c, const unsigned *a, unsigned b0,
                                                   unsigned b1) {
/* Not volatile: a pure register operation the compiler may schedule freely. */
#if FA_DTYPE == 2
    asm("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 "
#else
    asm("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 "
#endif
                 "{%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};"
                 : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

static __device__ __forceinline__ unsigned fa_smem_addr(const void *p) {
    return (unsigned)__cvta_generic_to_shared(p);
}

static __device__ __forceinline__ void fa_ldmatrix_x4(unsigned *r, unsigned addr) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(addr));
}

static __device__ __forceinline__ void fa_ldmatrix_x4_trans(unsigned *r, unsigned addr) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(addr));
}

/* 16 bytes global -> shared; valid == false zero-fills without reading. */
static __device__ __forceinline__ void fa_cp_async16(unsigned dst, const void *src, bool valid) {
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;" ::"r"(dst), "l"(src),
                 "r"(valid ? 16 : 0));
}

static __device__ __forceinline__ void fa_cp_async_commit(void) {
    asm volatile("cp.async.commit_group;");
}

static __device__ __forceinline__ void fa_cp_async_wait_all(void) {
    asm volatile("cp.async.wait_all;" ::: "memory");
}

/* 8 elements global -> shared, of which the first n_valid exist (zeros after them); vec: one
 * cp.async (n_valid is then 0 or 8), else element by element. */
static __device__ __forceinline__ void fa_copy8(fa_u16 *dst, const fa_u16 *src, int n_valid,
                                                bool vec) {
    if (vec) {
        fa_cp_async16(fa_smem_addr(dst), src, n_valid > 0);
    } else {
#pragma unroll
        for (int e = 0; e < 8; ++e) dst[e] = e < n_valid ? src[e] : (fa_u16)0;
    }
}

/* Max / sum over the 4 lanes (a quad) that hold one row of an mma accumulator. */
static __device__ __forceinline__ float fa_quad_max(float x) {
    x = fmaxf(x, __shfl_xor_sync(0xffffffffu, x, 1));
    return fmaxf(x, __shfl_xor_sync(0xffffffffu, x, 2));
}

static __device__ __forceinline__ float fa_quad_sum(float x) {
    x += __shfl_xor_sync(0xffffffffu, x, 1);
    return x + __shfl_xor_sync(0xffffffffu, x, 2);
}

/* dst[0..3] += v (f32, 16-byte aligned global memory): one vector reduction on sm_90+. */
static __device__ __forceinline__ void fa_red_add4(float *dst, float v0, float v1, float v2,
                                                   float v3) {
#if __CUDA_ARCH__ >= 900
    asm volatile("red.global.add.v4.f32 [%0], {%1, %2, %3, %4};" ::"l"(dst), "f"(v0), "f"(v1),
                 "f"(v2), "f"(v3)
                 : "memory");
#else
    atomicAdd(dst, v0);
    atomicAdd(dst + 1, v1);
    atomicAdd(dst + 2, v2);
    atomicAdd(dst + 3, v3);
#endif
}

#endif /* FA_MMA_CUH */
