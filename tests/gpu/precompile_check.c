/*
 * precompile_check — compiles every shipped cuda kernel variant with NVRTC for each arch given
 * (default: sm_80 sm_90a), as `python -m flash_attn precompile` does. Needs libnvrtc, no GPU.
 * Any NVRTC error or warning fails. Without FLASHATTN_CACHE_DIR it compiles into a fresh
 * temporary folder, so every variant really goes through NVRTC.
 *
 *   precompile_check [--require-nvrtc] [--cache-test] [sm_80 sm_90a ...]
 *
 * --require-nvrtc: a missing libnvrtc fails (exit 1) instead of skipping (77); CI passes it.
 * --cache-test: then checks the disk cache (which must start empty, as the default temporary
 *               folder does): a second precompile rewrites no entry; a truncated and a damaged
 *               entry are detected and rebuilt.
 */
#define _POSIX_C_SOURCE 200809L /* clock_gettime, mkdtemp, setenv */
#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "flashattn.h"

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

#define MAX_ENTRIES 4096

typedef struct entry {
    char name[256];
    ino_t inode;
    off_t size;
} entry;

/* The *.cubin files of dir with their inode (a rewrite renames a new file into place). */
static int list_entries(const char *dir, entry *out) {
    DIR *d = opendir(dir);
    int n = 0;
    for (struct dirent *e; d && (e = readdir(d)) && n < MAX_ENTRIES;) {
        const size_t len = strlen(e->d_name);
        if (len < 7 || strcmp(e->d_name + len - 6, ".cubin") != 0) continue;
        char path[1024];
        struct stat st;
        snprintf(path, sizeof path, "%s/%s", dir, e->d_name);
        if (stat(path, &st) != 0) continue;
        snprintf(out[n].name, sizeof out[n].name, "%s", e->d_name);
        out[n].inode = st.st_ino;
        out[n++].size = st.st_size;
    }
    if (d) closedir(d);
    return n;
}

static const entry *find(const entry *list, int n, const char *name) {
    for (int i = 0; i < n; ++i)
        if (strcmp(list[i].name, name) == 0) return &list[i];
    return NULL;
}

static int precompile(const char *arch, int *count) {
    const fa_status st = fa_precompile(FA_BACKEND_CUDA, arch, count);
    if (st != FA_OK) printf("FAIL %s: %s: %s\n", arch, fa_status_string(st), fa_last_error_message());
    return st == FA_OK;
}

/* Truncates the first entry and flips a byte in the middle of the second. */
static int damage(const char *dir, const entry *a, const entry *b) {
    char path[1024];
    snprintf(path, sizeof path, "%s/%s", dir, a->name);
    if (truncate(path, a->size / 2) != 0) return 0;
    snprintf(path, sizeof path, "%s/%s", dir, b->name);
    FILE *f = fopen(path, "r+b");
    if (!f) return 0;
    fseek(f, (long)(b->size / 2), SEEK_SET);
    const int c = fgetc(f);
    fseek(f, (long)(b->size / 2), SEEK_SET);
    fputc(c ^ 0x5a, f);
    return fclose(f) == 0;
}

/* prior: the entries before this arch's first precompile; the new ones are this arch's. */
static int cache_test(const char *arch, const entry *prior, int num_prior) {
    static entry before[MAX_ENTRIES], after[MAX_ENTRIES], mine[2];
    const char *dir = fa_jit_cache_dir();
    int count = 0, num_mine = 0;
    const int n = list_entries(dir, before);
    for (int i = 0; i < n && num_mine < 2; ++i)
        if (!find(prior, num_prior, before[i].name)) mine[num_mine++] = before[i];
    if (num_mine < 2) {
        printf("FAIL cache-test: precompile %s wrote no entries to %s\n", arch, dir);
        return 0;
    }
    if (!precompile(arch, &count)) return 0;
    int rewritten = 0;
    const int n2 = list_entries(dir, after);
    for (int i = 0; i < n2; ++i) {
        const entry *old = find(before, n, after[i].name);
        rewritten += !old || old->inode != after[i].inode;
    }
    if (rewritten) {
        printf("FAIL cache-test: a second precompile rewrote %d valid entries\n", rewritten);
        return 0;
    }
    if (!damage(dir, &mine[0], &mine[1])) {
        printf("FAIL cache-test: could not damage entries in %s\n", dir);
        return 0;
    }
    if (!precompile(arch, &count)) return 0;
    const int m = list_entries(dir, after);
    for (int i = 0; i < 2; ++i) {
        const entry *now = find(after, m, mine[i].name);
        if (!now || now->inode == mine[i].inode || now->size != mine[i].size) {
            printf("FAIL cache-test: damaged entry %s was not rebuilt\n", mine[i].name);
            return 0;
        }
    }
    printf("ok cache-test %s: %d entries kept, a truncated and a damaged entry rebuilt\n", arch, n);
    return 1;
}

int main(int argc, char **argv) {
    int require = 0, test_cache = 0, first = 1;
    for (; first < argc && strncmp(argv[first], "--", 2) == 0; ++first) {
        if (strcmp(argv[first], "--require-nvrtc") == 0) require = 1;
        else if (strcmp(argv[first], "--cache-test") == 0) test_cache = 1;
    }
    static char tmp[] = "/tmp/fa-precompile-XXXXXX";
    if (!getenv("FLASHATTN_CACHE_DIR")) {
        if (!mkdtemp(tmp)) return 1;
        setenv("FLASHATTN_CACHE_DIR", tmp, 1);
    }
    const char *default_archs[] = {"sm_80", "sm_90a"};
    const char **archs = argc > first ? (const char **)argv + first : default_archs;
    const int num_archs = argc > first ? argc - first : 2;
    if (fa_precompile(FA_BACKEND_CUDA, "", NULL) == FA_ERR_BACKEND_UNAVAILABLE) { /* a probe */
        printf("%s: %s\n", require ? "FAIL" : "SKIP", fa_last_error_message());
        return require ? 1 : 77;
    }
    printf("cache: %s\n", fa_jit_cache_dir());
    static entry existing[MAX_ENTRIES];
    if (test_cache && list_entries(fa_jit_cache_dir(), existing) > 0) {
        printf("FAIL: --cache-test needs an empty cache folder (unset FLASHATTN_CACHE_DIR)\n");
        return 1;
    }
    for (int i = 0; i < num_archs; ++i) {
        int count = 0;
        const int num_prior = list_entries(fa_jit_cache_dir(), existing);
        const double t0 = now_s();
        if (!precompile(archs[i], &count)) return 1;
        const double dt = now_s() - t0;
        printf("ok %s: %d variants in %.1f s\n", archs[i], count, dt);
        fflush(stdout);
        if (test_cache && !cache_test(archs[i], existing, num_prior)) return 1;
    }
    return 0;
}
