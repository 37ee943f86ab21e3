/*
 * fa_wgmma.cuh — PTX wrappers of the sm_90a warpgroup MMA (wgmma, gpu_kernels.md §3-4) and the
 * 128-byte-swizzled shared-memory tiles it reads, shared by fwd_wgmma.cu and bwd_wgmma.cu.
 *
 * A tile of (rows, FA_HD) 16-bit elements is stored as FA_HD / 64 atoms of (rows, 64) one after
 * the other; in an atom row r takes 128 bytes at r * 128, and its 16-byte chunk c sits in slot
 * c ^ (r % 8). Read along its rows it is a K-major operand (the k16 step moves 32 bytes inside
 * an atom, 64 columns move one atom); read down its columns it is MN-major (a k16 step is 16
 * rows = 2048 bytes, the leading byte offset is the atom stride rows * 128).
 *
 * An m64nN f32 accumulator gives warp w % 4 of the warpgroup rows 16 (w % 4) .. + 15 in the
 * mma.sync m16n8 layout: N / 8 tiles of 4 registers (fa_mma.cuh).
 *
 * The includer defines NTHREADS (threads of the CTA) and FA_HD before including.
 */
#ifndef FA_WGMMA_CUH
#define FA_WGMMA_CUH

#include "fa_mma.cuh"

#define CH (FA_HD / 8)        /* 16-byte chunks per row */
#define RSTEP (NTHREADS / CH) /* rows one pass of the CTA's threads covers (a multiple of 8) */
#define TILE_BYTES(rows) ((rows) * FA_HD * 2)

#if FA_DTYPE == 2
#define FA_WG_TYPE ".f32.bf16.bf16"
#else
#define FA_WG_TYPE ".f32.f16.f16"
#endif
#define FA_WG_R8(c, d, i)                                                                          \
    c(d[i]), c(d[i + 1]), c(d[i + 2]), c(d[i + 3]), c(d[i + 4]), c(d[i + 5]), c(d[i + 6]), c(d[i + 7])
/* The accumulator operands of an m64n64 (32 registers) and an m64n128 (64) wgmma: read and
 * written ("+f"), or only written ("=f": the product starts from zero, so the old values are
 * dead and need no registers before it). */
#define FA_WG_ACC32_(c, d) FA_WG_R8(c, d, 0), FA_WG_R8(c, d, 8), FA_WG_R8(c, d, 16), FA_WG_R8(c, d, 24)
#define FA_WG_ACC64_(c, d)                                                                         \
    FA_WG_ACC32_(c, d), FA_WG_R8(c, d, 32), FA_WG_R8(c, d, 40), FA_WG_R8(c, d, 48), FA_WG_R8(c, d, 56)
#define FA_WG_RW(x) "+f"(x)
#define FA_WG_W(x) "=f"(x)
#define FA_WG_ACC32(d) FA_WG_ACC32_(FA_WG_RW, d)
#define FA_WG_ACC64(d) FA_WG_ACC64_(FA_WG_RW, d)
#define FA_WG_OUT32(d) FA_WG_ACC32_(FA_WG_W, d)
#define FA_WG_OUT64(d) FA_WG_ACC64_(FA_WG_W, d)
#define FA_WG_REGS32 \
    "%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, " \
    "%16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, " \
    "%30, %31"
#define FA_WG_REGS64 \
    FA_WG_REGS32 ", %32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, " \
    "%46, %47, %48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, " \
    "%60, %61, %62, %63"

/* D (m64nN) (+)= A B; accumulate = 0 ignores D's old value.
 * wg_ssN: A and B from shared memory (descriptors da, db), both K-major; wg_ssN_t: both
 * MN-major (transposed); a _z suffix: D = A B, D write-only. */
#define FA_WG_SS(name, shape, regs, acc, ops, pred, trans)                                         \
    static __device__ __forceinline__ void name(float *d, unsigned long long da,                   \
                                                unsigned long long db, int accumulate) {           \
        asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %" pred ", 0;\n"                            \
                     "wgmma.mma_async.sync.aligned." shape FA_WG_TYPE " {" regs "}, " ops          \
                     ", p, 1, 1, " trans ";\n}"                                                    \
                     : acc(d)                                                                      \
                     : "l"(da), "l"(db), "r"(accumulate));                                         \
    }
FA_WG_SS(wg_ss64, "m64n64k16", FA_WG_REGS32, FA_WG_ACC32, "%32, %33", "34", "0, 0")
FA_WG_SS(wg_ss128, "m64n128k16", FA_WG_REGS64, FA_WG_ACC64, "%64, %65", "66", "0, 0")
FA_WG_SS(wg_ss64_z, "m64n64k16", FA_WG_REGS32, FA_WG_OUT32, "%32, %33", "34", "0, 0")
FA_WG_SS(wg_ss128_z, "m64n128k16", FA_WG_REGS64, FA_WG_OUT64, "%64, %65", "66", "0, 0")
FA_WG_SS(wg_ss64_t, "m64n64k16", FA_WG_REGS32, FA_WG_ACC32, "%32, %33", "34", "1, 1")
FA_WG_SS(wg_ss64_tz, "m64n64k16", FA_WG_REGS32, FA_WG_OUT32, "%32, %33", "34", "1, 1")

/* D (m64nN) (+)= A B with A from registers a[4] (the mma.sync A fragment of the warp's 16
 * rows) and B MN-major in shared memory. */
#define FA_WG_RS(name, shape, regs, acc, ops, pred)                                                \
    static __device__ __forceinline__ void name(float *d, const unsigned *a,                       \
                                                unsigned long long db, int accumulate) {           \
        asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %" pred ", 0;\n"                            \
                     "wgmma.mma_async.sync.aligned." shape FA_WG_TYPE " {" regs "}, " ops          \
                     ", p, 1, 1, 1;\n}"                                                            \
                     : acc(d)                                                                      \
                     : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(db), "r"(accumulate));     \
    }
FA_WG_RS(wg_rs64, "m64n64k16", FA_WG_REGS32, FA_WG_ACC32, "{%32, %33, %34, %35}, %36", "37")
FA_WG_RS(wg_rs128, "m64n128k16", FA_WG_REGS64, FA_WG_ACC64, "{%64, %65, %66, %67}, %68", "69")

static __device__ __forceinline__ void wg_fence(void) {
    asm volatile("wgmma.fence.sync.aligned;" ::: "memory");
}

static __device__ __forceinline__ void wg_commit(void) {
    asm volatile("wgmma.commit_group.sync.aligned;" ::: "memory");
}

/* Waits until at most n (an immediate) committed groups of this warpgroup are in flight. */
#define wg_wait(n) asm volatile("wgmma.wait_group.sync.aligned %0;" ::"n"(n) : "memory")

static __device__ __forceinline__ void wg_commit_wait(void) {
    wg_commit();
    wg_wait(0);
}

/* Pins n accumulators at this point: the compiler may not move their reads or writes across
 * (wgmma writes them behind its back until the wait). */
static __device__ __forceinline__ void wg_keep(float *d, int n) {
#pragma unroll
    for (int i = 0; i < n; ++i) asm volatile("" : "+f"(d[i])::"memory");
}

/* Keeps n A-fragment registers alive up to this point (a wgmma reads them until its wait). */
static __device__ __forceinline__ void wg_keep_a(const unsigned *a, int n) {
#pragma unroll
    for (int i = 0; i < n; ++i) asm volatile("" ::"r"(a[i]) : "memory");
}

/* Shared-memory matrix descriptor, 128-byte swizzle: start address, leading byte offset (the
 * stride between 64-element atoms of an MN-major operand; unused K-major), stride byte offset
 * 1024 (8 rows of 128 bytes). */
static __device__ __forceinline__ unsigned long long wg_desc(unsigned addr, unsigned lbo) {
    return (unsigned long long)((addr & 0x3FFFF) >> 4) |
           (unsigned long long)((lbo & 0x3FFFF) >> 4) << 16 |
           (unsigned long long)(1024 >> 4) << 32 | 1ull << 62;
}

/* Descriptor d moved by a byte offset (the address field counts 16-byte units). */
static __device__ __forceinline__ unsigned long long wg_desc_at(unsigned long long d,
                                                                unsigned bytes) {
    return d + (bytes >> 4);
}

/* A descriptor the compiler must build where it is used: one register pair in a loop instead of
 * a hoisted pair per k step (which costs the accumulators their registers). */
static __device__ __forceinline__ unsigned long long wg_desc_here(unsigned addr, unsigned lbo) {
    unsigned long long d = wg_desc(addr, lbo);
    asm volatile("" : "+l"(d));
    return d;
}

/* Byte offset of 16-byte chunk c of row r in a (rows, 64 k) swizzled tile. */
static __device__ __forceinline__ unsigned swz(int rows, int r, int c) {
    return (unsigned)((c >> 3) * rows * 128 + r * 128 + (((c & 7) ^ (r & 7)) << 4));
}

/* A (rows, FA_HD) tile -> shared at sdst by cp.async. Thread x moves chunk x % CH of rows
 * x / CH + i RSTEP, reading from src (its first row and chunk; rows rs elements apart); pass i
 * is zero-filled unless i RSTEP < lim (lim < 0: the chunk lies past d). */
static __device__ __forceinline__ void load_tile(unsigned sdst, int rows, const fa_u16 *src,
                                                 fa_i64 rs, int lim, const void *base) {
    const unsigned d0 = sdst + swz(rows, threadIdx.x / CH, threadIdx.x % CH);
#pragma unroll
    for (int i = 0; i < rows / RSTEP; ++i) {
        const bool valid = i * RSTEP < lim;
        fa_cp_async16(d0 + i * RSTEP * 128, valid ? (const void *)src : base, valid);
        src += RSTEP * rs;
    }
}

#endif /* FA_WGMMA_CUH */
