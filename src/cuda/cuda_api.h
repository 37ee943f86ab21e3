/*
 * cuda_api.h — the few CUDA driver and NVRTC declarations the backend needs, written here so
 * that building needs no CUDA headers. Both libraries are dlopened at run time (loader.c) and
 * their entry points land in one table, fa_cu.
 */
#ifndef FA_CUDA_API_H
#define FA_CUDA_API_H

#include <stddef.h>

#include "fa_internal.h"

/* ---------------------------------------------------------------- driver types */
typedef int CUresult; /* 0 = CUDA_SUCCESS */
typedef int CUdevice;
typedef struct CUctx_st *CUcontext;
typedef struct CUstream_st *CUstream;
typedef struct CUfunc_st *CUfunction;
typedef struct CUlib_st *CUlibrary;
typedef struct CUkern_st *CUkernel;
typedef unsigned long long CUdeviceptr;

enum {
    FA_CU_SUCCESS = 0,
    FA_CU_ERROR_NOT_INITIALIZED = 3,
    FA_CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT = 16,
    FA_CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR = 75,
    FA_CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR = 76,
    FA_CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_BLOCK_OPTIN = 97,
    FA_CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES = 8
};

/* ---------------------------------------------------------------- nvrtc types */
typedef int nvrtcResult; /* 0 = NVRTC_SUCCESS */
typedef struct _nvrtcProgram *nvrtcProgram;

/* ---------------------------------------------------------------- entry points */
typedef struct fa_cuda_api {
    /* driver */
    CUresult (*cuInit)(unsigned flags);
    CUresult (*cuDriverGetVersion)(int *version);
    CUresult (*cuDeviceGetCount)(int *count);
    CUresult (*cuDeviceGet)(CUdevice *dev, int ordinal);
    CUresult (*cuDeviceGetAttribute)(int *value, int attribute, CUdevice dev);
    CUresult (*cuCtxGetCurrent)(CUcontext *ctx);
    CUresult (*cuCtxSetCurrent)(CUcontext ctx);
    CUresult (*cuCtxGetDevice)(CUdevice *dev);
    CUresult (*cuDevicePrimaryCtxRetain)(CUcontext *ctx, CUdevice dev);
    CUresult (*cuDevicePrimaryCtxRelease)(CUdevice dev);
    CUresult (*cuLibraryLoadData)(CUlibrary *lib, const void *code, void *jit_options,
                                  void **jit_values, unsigned num_jit, void *lib_options,
                                  void **lib_values, unsigned num_lib);
    CUresult (*cuLibraryUnload)(CUlibrary lib);
    CUresult (*cuLibraryGetKernel)(CUkernel *kernel, CUlibrary lib, const char *name);
    CUresult (*cuKernelSetAttribute)(int attribute, int value, CUkernel kernel, CUdevice dev);
    CUresult (*cuLaunchKernel)(CUfunction f, unsigned gx, unsigned gy, unsigned gz, unsigned bx,
                               unsigned by, unsigned bz, unsigned smem, CUstream stream,
                               void **params, void **extra);
    CUresult (*cuMemsetD32Async)(CUdeviceptr dst, unsigned value, size_t count, CUstream stream);
    CUresult (*cuGetErrorString)(CUresult error, const char **str);
    /* nvrtc */
    nvrtcResult (*nvrtcVersion)(int *major, int *minor);
    nvrtcResult (*nvrtcCreateProgram)(nvrtcProgram *prog, const char *src, const char *name,
                                      int num_headers, const char *const *headers,
                                      const char *const *include_names);
    nvrtcResult (*nvrtcDestroyProgram)(nvrtcProgram *prog);
    nvrtcResult (*nvrtcCompileProgram)(nvrtcProgram prog, int num_options,
                                       const char *const *options);
    nvrtcResult (*nvrtcGetCUBINSize)(nvrtcProgram prog, size_t *size);
    nvrtcResult (*nvrtcGetCUBIN)(nvrtcProgram prog, char *cubin);
    nvrtcResult (*nvrtcGetProgramLogSize)(nvrtcProgram prog, size_t *size);
    nvrtcResult (*nvrtcGetProgramLog)(nvrtcProgram prog, char *log);
    const char *(*nvrtcGetErrorString)(nvrtcResult result);
    int driver_version; /* e.g. 13000; 0 when libcuda is missing */
    int nvrtc_version;  /* major * 1000 + minor * 10, like the driver's */
} fa_cuda_api;

extern fa_cuda_api fa_cu;

/* loader.c: load once (thread-safe). FA_OK, or FA_ERR_BACKEND_UNAVAILABLE naming what is missing
 * and where it was looked for. The driver is needed to run, NVRTC to compile. */
fa_status fa_cuda_load_driver(void);
fa_status fa_cuda_load_nvrtc(void);
/* FA_ERR_DEVICE with "what: <driver error string>" for a failed driver call. */
fa_status fa_cuda_check(CUresult result, const char *what);

#endif /* FA_CUDA_API_H */
