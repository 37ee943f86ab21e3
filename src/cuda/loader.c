/*
 * loader.c — finds libcuda and libnvrtc at run time and resolves a fixed table of entry points.
 *
 * Search order for each library: the env override (FLASHATTN_LIBCUDA / FLASHATTN_NVRTC, a full
 * path), a copy already loaded in this process (e.g. by torch), the nvidia/<pkg>/lib folders of
 * the pip wheels (nvidia/cu13/lib, nvidia/cuda_nvrtc/lib) beside the torch installation or the
 * flash_attn package loaded in this process, or in any site-packages folder an object was
 * loaded from, then the system loader path and /usr/local/cuda.
 * CUDA 12.x and 13.x are both accepted (sonames .12 and .13).
 */
#include <dlfcn.h>
#include <glob.h>
#include <link.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cuda_api.h"

fa_cuda_api fa_cu;

typedef struct fa_lib_state {
    pthread_once_t once;
    fa_status status;
    char reason[1024];
} fa_lib_state;

static fa_lib_state driver_state = {PTHREAD_ONCE_INIT, FA_OK, ""};
static fa_lib_state nvrtc_state = {PTHREAD_ONCE_INIT, FA_OK, ""};

/* ---------------------------------------------------------------- finding files */
/* Python package folders of the objects loaded in this process: the parent of torch/lib or
 * flash_attn/lib (torch's, or our own wheel's library), or any site-packages folder. The pip
 * wheels of the CUDA libraries live in <that folder>/nvidia/<pkg>/lib. */
#define FA_MAX_SITE_DIRS 8

typedef struct site_dirs {
    char dir[FA_MAX_SITE_DIRS][512];
    int n;
} site_dirs;

static void add_site_dir(site_dirs *sites, const char *path, size_t len) {
    if (len >= sizeof sites->dir[0] || sites->n == FA_MAX_SITE_DIRS) return;
    for (int i = 0; i < sites->n; ++i)
        if (strlen(sites->dir[i]) == len && strncmp(sites->dir[i], path, len) == 0) return;
    memcpy(sites->dir[sites->n], path, len);
    sites->dir[sites->n++][len] = '\0';
}

static int find_sites_cb(struct dl_phdr_info *info, size_t size, void *data) {
    (void)size;
    const char *name = info->dlpi_name;
    if (!name || !name[0]) return 0;
    static const char *const below[] = {"/torch/lib/", "/flash_attn/lib/"};
    for (int i = 0; i < 2; ++i) {
        const char *hit = strstr(name, below[i]);
        if (hit) add_site_dir(data, name, (size_t)(hit - name));
    }
    static const char *const sites[] = {"/site-packages/", "/dist-packages/"};
    for (int i = 0; i < 2; ++i) {
        const char *hit = strstr(name, sites[i]);
        if (hit) add_site_dir(data, name, (size_t)(hit - name) + strlen(sites[i]) - 1);
    }
    return 0;
}

/* Tries each file matching pattern in <site>/nvidia/<pkg>/lib, newest version first. */
static void *dlopen_from_wheels(const char *pattern) {
    site_dirs sites = {.n = 0};
    dl_iterate_phdr(find_sites_cb, &sites); /* collect first: no dlopen under the loader lock */
    void *handle = NULL;
    for (int d = 0; d < sites.n && !handle; ++d) {
        char full[768];
        snprintf(full, sizeof full, "%s/nvidia/*/lib/%s", sites.dir[d], pattern);
        glob_t found;
        if (glob(full, 0, NULL, &found) != 0) continue;
        for (size_t i = found.gl_pathc; i-- > 0 && !handle;) /* glob sorts: newest last */
            handle = dlopen(found.gl_pathv[i], RTLD_NOW | RTLD_LOCAL);
        globfree(&found);
    }
    return handle;
}

/* names: sonames to try, most preferred first; NULL-terminated. */
static void *open_library(const char *env_name, const char *const *names,
                          const char *wheel_pattern, char *reason, size_t reason_size) {
    const char *env = getenv(env_name);
    if (env && env[0]) {
        void *handle = dlopen(env, RTLD_NOW | RTLD_LOCAL);
        if (!handle) snprintf(reason, reason_size, "%s=%s: %s", env_name, env, dlerror());
        return handle;
    }
    for (const char *const *n = names; *n; ++n) {
        void *handle = dlopen(*n, RTLD_NOW | RTLD_LOCAL | RTLD_NOLOAD);
        if (handle) return handle;
    }
    if (wheel_pattern) {
        void *handle = dlopen_from_wheels(wheel_pattern);
        if (handle) return handle;
    }
    for (const char *const *n = names; *n; ++n) {
        void *handle = dlopen(*n, RTLD_NOW | RTLD_LOCAL);
        if (handle) return handle;
    }
    snprintf(reason, reason_size,
             "%s not found (looked at $%s, the process, nvidia/*/lib beside torch, flash_attn "
             "and site-packages, the system path and /usr/local/cuda)", names[0], env_name);
    return NULL;
}

/* Resolves name into *slot; false (with the reason) when missing. */
static bool resolve(void *handle, const char *name, void *slot, char *reason, size_t size) {
    void *sym = dlsym(handle, name);
    if (!sym) {
        snprintf(reason, size, "entry point %s missing (library too old?)", name);
        return false;
    }
    memcpy(slot, &sym, sizeof sym);
    return true;
}

#define FA_RESOLVE(handle, field, symbol)                                                          \
    ok = ok && resolve(handle, symbol, &fa_cu.field, state->reason, sizeof state->reason)

/* ---------------------------------------------------------------- driver */
static void load_driver_once(void) {
    fa_lib_state *state = &driver_state;
    static const char *const names[] = {"libcuda.so.1", "libcuda.so", NULL};
    void *h = open_library("FLASHATTN_LIBCUDA", names, NULL, state->reason, sizeof state->reason);
    if (!h) {
        state->status = FA_ERR_BACKEND_UNAVAILABLE;
        return;
    }
    bool ok = true;
    FA_RESOLVE(h, cuInit, "cuInit");
    FA_RESOLVE(h, cuDriverGetVersion, "cuDriverGetVersion");
    FA_RESOLVE(h, cuDeviceGetCount, "cuDeviceGetCount");
    FA_RESOLVE(h, cuDeviceGet, "cuDeviceGet");
    FA_RESOLVE(h, cuDeviceGetAttribute, "cuDeviceGetAttribute");
    FA_RESOLVE(h, cuCtxGetCurrent, "cuCtxGetCurrent");
    FA_RESOLVE(h, cuCtxSetCurrent, "cuCtxSetCurrent");
    FA_RESOLVE(h, cuCtxGetDevice, "cuCtxGetDevice");
    FA_RESOLVE(h, cuDevicePrimaryCtxRetain, "cuDevicePrimaryCtxRetain");
    FA_RESOLVE(h, cuDevicePrimaryCtxRelease, "cuDevicePrimaryCtxRelease_v2");
    FA_RESOLVE(h, cuLibraryLoadData, "cuLibraryLoadData");
    FA_RESOLVE(h, cuLibraryUnload, "cuLibraryUnload");
    FA_RESOLVE(h, cuLibraryGetKernel, "cuLibraryGetKernel");
    FA_RESOLVE(h, cuKernelSetAttribute, "cuKernelSetAttribute");
    FA_RESOLVE(h, cuLaunchKernel, "cuLaunchKernel");
    FA_RESOLVE(h, cuMemsetD32Async, "cuMemsetD32Async");
    FA_RESOLVE(h, cuGetErrorString, "cuGetErrorString");
    if (!ok) {
        state->status = FA_ERR_BACKEND_UNAVAILABLE;
        return;
    }
    fa_cu.cuDriverGetVersion(&fa_cu.driver_version); /* works before cuInit, without a GPU */
    CUresult r = fa_cu.cuInit(0);
    if (r != FA_CU_SUCCESS) {
        const char *msg = NULL;
        fa_cu.cuGetErrorString(r, &msg);
        snprintf(state->reason, sizeof state->reason, "cuInit failed: %s (error %d)",
                 msg ? msg : "unknown", r);
        state->status = FA_ERR_BACKEND_UNAVAILABLE;
        return;
    }
    int count = 0;
    if (fa_cu.cuDeviceGetCount(&count) != FA_CU_SUCCESS || count == 0) {
        snprintf(state->reason, sizeof state->reason, "no CUDA device");
        state->status = FA_ERR_BACKEND_UNAVAILABLE;
        return;
    }
    state->status = FA_OK;
}

/* ---------------------------------------------------------------- nvrtc */
/* libnvrtc dlopens libnvrtc-builtins by soname at compile time; a copy found outside the
 * loader path (a wheel folder, the env override) only works once its builtins are loaded. */
static void preload_builtins(void *nvrtc) {
    struct link_map *map = NULL;
    if (dlinfo(nvrtc, RTLD_DI_LINKMAP, &map) != 0 || !map || !map->l_name) return;
    char pattern[1024];
    snprintf(pattern, sizeof pattern, "%s", map->l_name);
    char *slash = strrchr(pattern, '/');
    if (!slash) return;
    snprintf(slash + 1, sizeof pattern - (size_t)(slash + 1 - pattern), "libnvrtc-builtins.so.*");
    glob_t found;
    if (glob(pattern, 0, NULL, &found) != 0) return;
    for (size_t i = 0; i < found.gl_pathc; ++i)
        if (!strstr(found.gl_pathv[i], ".alt.")) dlopen(found.gl_pathv[i], RTLD_NOW | RTLD_GLOBAL);
    globfree(&found);
}

static void load_nvrtc_once(void) {
    fa_lib_state *state = &nvrtc_state;
    static const char *const names[] = {"libnvrtc.so.13", "libnvrtc.so.12", "libnvrtc.so",
                                        "/usr/local/cuda/lib64/libnvrtc.so", NULL};
    void *h = open_library("FLASHATTN_NVRTC", names, "libnvrtc.so.1[23]", state->reason,
                           sizeof state->reason);
    if (!h) {
        state->status = FA_ERR_BACKEND_UNAVAILABLE;
        return;
    }
    preload_builtins(h);
    bool ok = true;
    FA_RESOLVE(h, nvrtcVersion, "nvrtcVersion");
    FA_RESOLVE(h, nvrtcCreateProgram, "nvrtcCreateProgram");
    FA_RESOLVE(h, nvrtcDestroyProgram, "nvrtcDestroyProgram");
    FA_RESOLVE(h, nvrtcCompileProgram, "nvrtcCompileProgram");
    FA_RESOLVE(h, nvrtcGetCUBINSize, "nvrtcGetCUBINSize");
    FA_RESOLVE(h, nvrtcGetCUBIN, "nvrtcGetCUBIN");
    FA_RESOLVE(h, nvrtcGetProgramLogSize, "nvrtcGetProgramLogSize");
    FA_RESOLVE(h, nvrtcGetProgramLog, "nvrtcGetProgramLog");
    FA_RESOLVE(h, nvrtcGetErrorString, "nvrtcGetErrorString");
    if (!ok) {
        state->status = FA_ERR_BACKEND_UNAVAILABLE;
        return;
    }
    int major = 0, minor = 0;
    fa_cu.nvrtcVersion(&major, &minor);
    if (major < 12) {
        snprintf(state->reason, sizeof state->reason, "libnvrtc %d.%d is too old (need 12.x or 13.x)",
                 major, minor);
        state->status = FA_ERR_BACKEND_UNAVAILABLE;
        return;
    }
    fa_cu.nvrtc_version = major * 1000 + minor * 10;
    state->status = FA_OK;
}

fa_status fa_cuda_load_driver(void) {
    pthread_once(&driver_state.once, load_driver_once);
    FA_RETURN_IF(driver_state.status != FA_OK, driver_state.status, "cuda: %s", driver_state.reason);
    return FA_OK;
}

fa_status fa_cuda_load_nvrtc(void) {
    pthread_once(&nvrtc_state.once, load_nvrtc_once);
    FA_RETURN_IF(nvrtc_state.status != FA_OK, nvrtc_state.status, "cuda: %s", nvrtc_state.reason);
    return FA_OK;
}

fa_status fa_cuda_check(CUresult result, const char *what) {
    if (result == FA_CU_SUCCESS) return FA_OK;
    const char *msg = NULL;
    if (fa_cu.cuGetErrorString) fa_cu.cuGetErrorString(result, &msg);
    return fa_fail(FA_ERR_DEVICE, "cuda: %s failed: %s (error %d)", what, msg ? msg : "unknown",
                   result);
}
