/*
 * jit.c — NVRTC compilation, the disk cache and the in-process kernel cache.
 *
 * Disk entry <dir>/<key:016x>.cubin = header {magic, key, payload bytes, payload hash} + cubin.
 * Writes go to a unique temporary file and are renamed into place, so readers never see a
 * partial entry and many processes may compile the same variant at once (the last rename
 * wins; both entries are valid). An entry whose header does not match is compiled again.
 */
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "jit.h"

#define FA_JIT_MAGIC 0x3154494a41465f5full /* "_FAJIT1" */

/* ---------------------------------------------------------------- hashing (FNV-1a 64) */
static uint64_t hash_bytes(uint64_t h, const void *data, size_t n) {
    const unsigned char *p = data;
    for (size_t i = 0; i < n; ++i) h = (h ^ p[i]) * 0x100000001b3ull;
    return h;
}
static uint64_t hash_str(uint64_t h, const char *s) { return hash_bytes(h, s, strlen(s) + 1); }
#define FA_HASH_SEED 0xcbf29ce484222325ull

/* Hash of every embedded source, computed once. */
static uint64_t all_sources_hash;
static pthread_once_t sources_once = PTHREAD_ONCE_INIT;

static void init_sources_hash(void) {
    uint64_t h = FA_HASH_SEED;
    for (int i = 0; i < fa_cuda_num_sources; ++i) {
        h = hash_str(h, fa_cuda_sources[i].name);
        h = hash_str(h, fa_cuda_sources[i].text);
    }
    all_sources_hash = h;
}

static uint64_t sources_hash(void) {
    pthread_once(&sources_once, init_sources_hash);
    return all_sources_hash;
}

static const fa_source_file *find_source(const char *name) {
    for (int i = 0; i < fa_cuda_num_sources; ++i)
        if (strcmp(fa_cuda_sources[i].name, name) == 0) return &fa_cuda_sources[i];
    return NULL;
}

/* ---------------------------------------------------------------- cache folder */
static char cache_dir[1024];
static pthread_once_t cache_dir_once = PTHREAD_ONCE_INIT;

static void mkdir_p(char *path) {
    for (char *p = path + 1; *p; ++p) {
        if (*p != '/') continue;
        *p = '\0';
        mkdir(path, 0755);
        *p = '/';
    }
    mkdir(path, 0755);
}

static void init_cache_dir(void) {
    const char *off = getenv("FLASHATTN_JIT_CACHE");
    if (off && strcmp(off, "0") == 0) return;
    const char *dir = getenv("FLASHATTN_CACHE_DIR");
    const char *xdg = getenv("XDG_CACHE_HOME");
    const char *home = getenv("HOME");
    if (dir && dir[0])
        snprintf(cache_dir, sizeof cache_dir, "%s", dir);
    else if (xdg && xdg[0])
        snprintf(cache_dir, sizeof cache_dir, "%s/flashattn/jit", xdg);
    else if (home && home[0])
        snprintf(cache_dir, sizeof cache_dir, "%s/.cache/flashattn/jit", home);
    else
        return;
    mkdir_p(cache_dir);
    struct stat st;
    if (stat(cache_dir, &st) != 0 || !S_ISDIR(st.st_mode) || access(cache_dir, W_OK) != 0)
        cache_dir[0] = '\0'; /* unusable: run without a disk cache */
}

const char *fa_jit_cache_path(void) {
    pthread_once(&cache_dir_once, init_cache_dir);
    return cache_dir;
}

/* ---------------------------------------------------------------- disk entries */
typedef struct entry_header {
    uint64_t magic, key, bytes, payload_hash;
} entry_header;

static void entry_path(char *out, size_t size, uint64_t key) {
    snprintf(out, size, "%s/%016llx.cubin", fa_jit_cache_path(), (unsigned long long)key);
}

/* The cubin of key, malloc'ed, or NULL when absent or corrupt. */
static char *disk_read(uint64_t key, size_t *bytes) {
    if (!fa_jit_cache_path()[0]) return NULL;
    char path[1200];
    entry_path(path, sizeof path, key);
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    entry_header h;
    char *data = NULL;
    if (fread(&h, sizeof h, 1, f) == 1 && h.magic == FA_JIT_MAGIC && h.key == key &&
        h.bytes > 0 && h.bytes < ((uint64_t)1 << 30)) {
        data = malloc(h.bytes);
        if (data && (fread(data, 1, h.bytes, f) != h.bytes || fgetc(f) != EOF ||
                     hash_bytes(FA_HASH_SEED, data, h.bytes) != h.payload_hash)) {
            free(data); /* truncated, too long or damaged: compile again */
            data = NULL;
        }
    }
    fclose(f);
    if (data) *bytes = h.bytes;
    return data;
}

static void disk_write(uint64_t key, const char *cubin, size_t bytes) {
    if (!fa_jit_cache_path()[0]) return;
    char path[1200], tmp[1300];
    entry_path(path, sizeof path, key);
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    snprintf(tmp, sizeof tmp, "%s.tmp.%ld.%ld", path, (long)getpid(), (long)ts.tv_nsec);
    FILE *f = fopen(tmp, "wb");
    if (!f) return;
    entry_header h = {FA_JIT_MAGIC, key, bytes, hash_bytes(FA_HASH_SEED, cubin, bytes)};
    bool ok = fwrite(&h, sizeof h, 1, f) == 1 && fwrite(cubin, 1, bytes, f) == bytes;
    ok = (fclose(f) == 0) && ok;
    if (!ok || rename(tmp, path) != 0) remove(tmp); /* the cache is an optimisation only */
}

/* ---------------------------------------------------------------- NVRTC */
static fa_status nvrtc_check(nvrtcResult r, const char *what) {
    FA_RETURN_IF(r != 0, FA_ERR_COMPILE, "cuda: %s failed: %s", what, fa_cu.nvrtcGetErrorString(r));
    return FA_OK;
}

#define FA_MAX_OPTIONS 32

/* Splits defines ("-DA=1 -DB=2") into options after the fixed ones. */
static int build_options(const char *arch, const char *defines, char *storage, size_t size,
                         const char **options) {
    int n = 0;
    snprintf(storage, size, "--gpu-architecture=%s", arch);
    options[n++] = storage;
    options[n++] = "-std=c++17";
    /* no texture/runtime declarations: a faster front end (an unknown option before 12.4) */
    if (fa_cu.nvrtc_version >= 12040) options[n++] = "--minimal";
    size_t used = strlen(storage) + 1;
    snprintf(storage + used, size - used, "%s", defines);
    for (char *tok = strtok(storage + used, " "); tok && n < FA_MAX_OPTIONS;
         tok = strtok(NULL, " "))
        options[n++] = tok;
    return n;
}

static uint64_t disk_key(const char *program, const char *defines, const char *arch,
                         int driver_version) {
    uint64_t h = sources_hash();
    h = hash_str(h, program);
    h = hash_str(h, defines);
    h = hash_str(h, arch);
    h = hash_bytes(h, &fa_cu.nvrtc_version, sizeof fa_cu.nvrtc_version);
    return hash_bytes(h, &driver_version, sizeof driver_version);
}

/* Compiles (program, defines) for arch; *cubin is malloc'ed. */
static fa_status compile(const char *program, const char *defines, const char *arch, bool strict,
                         char **cubin, size_t *bytes) {
    FA_FORWARD_IF(fa_cuda_load_nvrtc());
    const fa_source_file *main_file = find_source(program);
    FA_RETURN_IF(!main_file, FA_ERR_INTERNAL, "cuda: no embedded kernel source %s", program);
    const char *names[32], *texts[32];
    int num_headers = 0;
    for (int i = 0; i < fa_cuda_num_sources && num_headers < 32; ++i) {
        if (&fa_cuda_sources[i] == main_file) continue;
        names[num_headers] = fa_cuda_sources[i].name;
        texts[num_headers++] = fa_cuda_sources[i].text;
    }
    nvrtcProgram prog = NULL;
    FA_FORWARD_IF(nvrtc_check(
        fa_cu.nvrtcCreateProgram(&prog, main_file->text, program, num_headers, texts, names),
        "nvrtcCreateProgram"));
    char storage[1024];
    const char *options[FA_MAX_OPTIONS];
    int num_options = build_options(arch, defines, storage, sizeof storage, options);
    nvrtcResult r = fa_cu.nvrtcCompileProgram(prog, num_options, options);
    size_t log_size = 0;
    fa_cu.nvrtcGetProgramLogSize(prog, &log_size);
    fa_status status = FA_OK;
    if (r != 0 || (strict && log_size > 1)) {
        char log[4096] = "";
        if (log_size > 1) {
            char *full = malloc(log_size);
            if (full && fa_cu.nvrtcGetProgramLog(prog, full) == 0)
                snprintf(log, sizeof log, "%s", full);
            free(full);
        }
        status = fa_fail(FA_ERR_COMPILE, "cuda: NVRTC %s %s [%s] for %s: %s",
                         r != 0 ? "failed on" : "warned on", program, defines, arch, log);
    } else {
        status = nvrtc_check(fa_cu.nvrtcGetCUBINSize(prog, bytes), "nvrtcGetCUBINSize");
        if (status == FA_OK) {
            *cubin = malloc(*bytes);
            if (!*cubin)
                status = fa_fail(FA_ERR_OUT_OF_MEMORY, "cuda: no memory for a cubin");
            else if ((status = nvrtc_check(fa_cu.nvrtcGetCUBIN(prog, *cubin), "nvrtcGetCUBIN")) !=
                     FA_OK) {
                free(*cubin);
                *cubin = NULL;
            }
        }
    }
    fa_cu.nvrtcDestroyProgram(&prog);
    return status;
}

/* The cubin from disk (the entry of this driver, else one precompiled without a driver), or
 * compiled now and stored. */
static fa_status get_cubin(const char *program, const char *defines, const char *arch,
                           char **cubin, size_t *bytes) {
    FA_FORWARD_IF(fa_cuda_load_nvrtc());
    uint64_t key = disk_key(program, defines, arch, fa_cu.driver_version);
    if ((*cubin = disk_read(key, bytes)) != NULL) return FA_OK;
    if (fa_cu.driver_version && (*cubin = disk_read(disk_key(program, defines, arch, 0), bytes)))
        return FA_OK;
    FA_FORWARD_IF(compile(program, defines, arch, false, cubin, bytes));
    disk_write(key, *cubin, *bytes);
    return FA_OK;
}

fa_status fa_jit_precompile_one(const char *program, const char *defines, const char *arch,
                                bool strict) {
    FA_FORWARD_IF(fa_cuda_load_nvrtc());
    const uint64_t key = disk_key(program, defines, arch, fa_cu.driver_version);
    size_t bytes = 0;
    char *cubin = disk_read(key, &bytes);
    if (cubin) { /* a valid entry: nothing to do (a damaged one is compiled again) */
        free(cubin);
        return FA_OK;
    }
    FA_FORWARD_IF(compile(program, defines, arch, strict, &cubin, &bytes));
    disk_write(key, cubin, bytes);
    free(cubin);
    return FA_OK;
}

/* ---------------------------------------------------------------- in-process cache */
#define FA_JIT_SLOTS 1024 /* open addressing; a process uses far fewer variants */

typedef struct loaded_kernel {
    uint64_t key; /* hash of program, defines, arch, kernel name; 0 = empty */
    CUkernel kernel;
} loaded_kernel;

static loaded_kernel table[FA_JIT_SLOTS];
static pthread_mutex_t table_lock = PTHREAD_MUTEX_INITIALIZER;

static uint64_t memory_key(const char *program, const char *defines, const char *arch,
                           const char *kernel_name) {
    uint64_t h = hash_str(FA_HASH_SEED, program);
    h = hash_str(h, defines);
    h = hash_str(h, arch);
    return hash_str(h, kernel_name) | 1;
}

fa_status fa_jit_kernel(const char *program, const char *defines, const char *arch,
                        const char *kernel_name, CUkernel *kernel) {
    uint64_t key = memory_key(program, defines, arch, kernel_name);
    pthread_mutex_lock(&table_lock);
    size_t slot = key % FA_JIT_SLOTS;
    for (size_t probe = 0; probe < FA_JIT_SLOTS; ++probe, slot = (slot + 1) % FA_JIT_SLOTS) {
        if (table[slot].key == key) {
            *kernel = table[slot].kernel;
            pthread_mutex_unlock(&table_lock);
            return FA_OK;
        }
        if (table[slot].key == 0) break;
    }
    /* Miss: compile or read the cubin under the lock, so one thread builds each variant. */
    char *cubin = NULL;
    size_t bytes = 0;
    fa_status status = get_cubin(program, defines, arch, &cubin, &bytes);
    CUlibrary lib = NULL;
    if (status == FA_OK) {
        status = fa_cuda_check(fa_cu.cuLibraryLoadData(&lib, cubin, NULL, NULL, 0, NULL, NULL, 0),
                               "cuLibraryLoadData");
        free(cubin);
    }
    if (status == FA_OK) {
        status = fa_cuda_check(fa_cu.cuLibraryGetKernel(kernel, lib, kernel_name), kernel_name);
        if (status == FA_OK && table[slot].key == 0) {
            table[slot].key = key;
            table[slot].kernel = *kernel;
        }
    }
    pthread_mutex_unlock(&table_lock);
    return status;
}
