/*
 * jit.h — run-time compilation of the embedded kernel sources with NVRTC, a disk cache of the
 * cubins and an in-process cache of loaded kernels.
 *
 * A variant is a program (one embedded .cu file) plus a string of -D macros; nothing else
 * specialises a kernel. The disk key hashes every embedded source, the options, the arch and
 * the NVRTC and driver versions.
 */
#ifndef FA_CUDA_JIT_H
#define FA_CUDA_JIT_H

#include "cuda_api.h"

/* Generated at build time (cuda.cmake) from kernels/cuda/ and src/core/fa_philox.h. */
typedef struct fa_source_file {
    const char *name; /* "fwd.cu", "fa_philox.h", ... */
    const char *text;
} fa_source_file;
extern const fa_source_file fa_cuda_sources[];
extern const int fa_cuda_num_sources;

/* The kernel kernel_name of variant (program, defines) compiled for arch ("sm_80"), loaded. */
fa_status fa_jit_kernel(const char *program, const char *defines, const char *arch,
                        const char *kernel_name, CUkernel *kernel);

/* Compiles a variant into the disk cache (no GPU needed) unless a valid entry is there.
 * strict: any NVRTC log output (a warning) is an error. */
fa_status fa_jit_precompile_one(const char *program, const char *defines, const char *arch,
                                bool strict);

/* The cache folder in use, "" when off. Env: FLASHATTN_CACHE_DIR (folder), FLASHATTN_JIT_CACHE=0
 * (off); default $XDG_CACHE_HOME/flashattn/jit or ~/.cache/flashattn/jit. */
const char *fa_jit_cache_path(void);

#endif /* FA_CUDA_JIT_H */
