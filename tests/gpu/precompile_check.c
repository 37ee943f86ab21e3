/*
 * precompile_check — compiles every shipped cuda kernel variant with NVRTC for each arch given
 * (default: sm_80 sm_90a), as `python -m flash_attn precompile` does. Needs libnvrtc, no GPU.
 * Any NVRTC error or warning fails. Exit codes: 0 ok, 1 failure, 77 NVRTC missing (a failure
 * too with --require-nvrtc, which CI passes).
 *
 *   precompile_check [--require-nvrtc] [sm_80 sm_90a ...]
 */
#define _POSIX_C_SOURCE 199309L /* clock_gettime */
#include <stdio.h>
#include <string.h>
#include <time.h>

#include "flashattn.h"

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

int main(int argc, char **argv) {
    int require = 0, first_arch = 1;
    if (argc > 1 && strcmp(argv[1], "--require-nvrtc") == 0) require = 1, first_arch = 2;
    const char *default_archs[] = {"sm_80", "sm_90a"};
    const char **archs = argc > first_arch ? (const char **)argv + first_arch : default_archs;
    const int num_archs = argc > first_arch ? argc - first_arch : 2;
    printf("cache: %s\n", fa_jit_cache_dir());
    for (int i = 0; i < num_archs; ++i) {
        int count = 0;
        const double t0 = now_s();
        const fa_status status = fa_precompile(FA_BACKEND_CUDA, archs[i], &count);
        const double dt = now_s() - t0;
        if (status == FA_ERR_BACKEND_UNAVAILABLE && !require) {
            printf("SKIP: %s\n", fa_last_error_message());
            return 77;
        }
        if (status != FA_OK) {
            printf("FAIL %s: %s: %s\n", archs[i], fa_status_string(status),
                   fa_last_error_message());
            return 1;
        }
        printf("ok %s: %d variants in %.1f s (%.2f s each)\n", archs[i], count, dt,
               count ? dt / count : 0.0);
    }
    return 0;
}
