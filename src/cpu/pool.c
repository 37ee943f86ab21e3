/*
 * pool.c — the persistent thread pool of the cpu backend (see cpu.h).
 *
 * Workers are made once and sleep on a condition variable between runs. A run publishes
 * (fn, arg, num_tasks) under the mutex, bumps a generation counter and wakes everyone; tasks
 * are then claimed through one atomic counter (dynamic schedule, so callers order tasks
 * longest first). The calling thread works too, as thread 0, and the run returns when the
 * last worker has drained the counter. Nothing is allocated per run.
 *
 * Runs from different user threads on one pool are serialised by run_lock.
 */
#include "cpu/cpu.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>

struct fa_pool {
    int size;            /* threads including the caller */
    pthread_t *workers;  /* size - 1 */
    pthread_mutex_t run_lock;
    pthread_mutex_t mu;
    pthread_cond_t wake, done;
    uint64_t generation; /* bumped per run, guarded by mu */
    int busy;            /* workers still inside the current run, guarded by mu */
    bool stop;
    /* the current run */
    fa_pool_fn fn;
    void *arg;
    int64_t num_tasks;
    atomic_int_fast64_t next_task;
};

typedef struct fa_worker_start {
    fa_pool *pool;
    int thread;
} fa_worker_start;

static void drain_tasks(fa_pool *pool, int thread) {
    for (;;) {
        int64_t task = atomic_fetch_add_explicit(&pool->next_task, 1, memory_order_relaxed);
        if (task >= pool->num_tasks) return;
        pool->fn(pool->arg, task, thread);
    }
}

static void *worker_main(void *start_arg) {
    fa_worker_start start = *(fa_worker_start *)start_arg;
    free(start_arg);
    fa_pool *pool = start.pool;
    uint64_t seen = 0;
    pthread_mutex_lock(&pool->mu);
    for (;;) {
        while (!pool->stop && pool->generation == seen) pthread_cond_wait(&pool->wake, &pool->mu);
        if (pool->stop) break;
        seen = pool->generation;
        pthread_mutex_unlock(&pool->mu);
        drain_tasks(pool, start.thread);
        pthread_mutex_lock(&pool->mu);
        if (--pool->busy == 0) pthread_cond_signal(&pool->done);
    }
    pthread_mutex_unlock(&pool->mu);
    return NULL;
}

static void stop_workers(fa_pool *pool, int started) {
    pthread_mutex_lock(&pool->mu);
    pool->stop = true;
    pthread_cond_broadcast(&pool->wake);
    pthread_mutex_unlock(&pool->mu);
    for (int i = 0; i < started; ++i) pthread_join(pool->workers[i], NULL);
}

static void free_pool(fa_pool *pool) {
    pthread_cond_destroy(&pool->done);
    pthread_cond_destroy(&pool->wake);
    pthread_mutex_destroy(&pool->mu);
    pthread_mutex_destroy(&pool->run_lock);
    free(pool->workers);
    free(pool);
}

fa_status fa_pool_create(int num_threads, fa_pool **out) {
    *out = NULL;
    FA_RETURN_IF(num_threads < 1, FA_ERR_INVALID_ARGUMENT,
                 "num_threads must be >= 1 (got %d)", num_threads);
    fa_pool *pool = calloc(1, sizeof *pool);
    FA_RETURN_IF(!pool, FA_ERR_OUT_OF_MEMORY, "cpu thread pool: out of memory");
    pool->size = num_threads;
    pool->workers = calloc((size_t)num_threads, sizeof *pool->workers);
    if (!pool->workers) {
        free(pool);
        return fa_fail(FA_ERR_OUT_OF_MEMORY, "cpu thread pool: out of memory");
    }
    pthread_mutex_init(&pool->run_lock, NULL);
    pthread_mutex_init(&pool->mu, NULL);
    pthread_cond_init(&pool->wake, NULL);
    pthread_cond_init(&pool->done, NULL);
    atomic_init(&pool->next_task, 0);
    for (int i = 0; i < num_threads - 1; ++i) {
        fa_worker_start *start = malloc(sizeof *start);
        int rc = start ? 0 : -1;
        if (start) {
            *start = (fa_worker_start){pool, i + 1};
            rc = pthread_create(&pool->workers[i], NULL, worker_main, start);
            if (rc != 0) free(start);
        }
        if (rc != 0) {
            stop_workers(pool, i);
            free_pool(pool);
            return fa_fail(FA_ERR_INTERNAL, "cpu thread pool: could not start thread %d of %d",
                           i + 1, num_threads);
        }
    }
    *out = pool;
    return FA_OK;
}

void fa_pool_destroy(fa_pool *pool) {
    if (!pool) return;
    stop_workers(pool, pool->size - 1);
    free_pool(pool);
}

int fa_pool_size(const fa_pool *pool) { return pool->size; }

void fa_pool_run(fa_pool *pool, int64_t num_tasks, fa_pool_fn fn, void *arg) {
    if (num_tasks <= 0) return;
    if (pool->size == 1 || num_tasks == 1) {
        for (int64_t task = 0; task < num_tasks; ++task) fn(arg, task, 0);
        return;
    }
    pthread_mutex_lock(&pool->run_lock);
    pthread_mutex_lock(&pool->mu);
    pool->fn = fn;
    pool->arg = arg;
    pool->num_tasks = num_tasks;
    atomic_store_explicit(&pool->next_task, 0, memory_order_relaxed);
    pool->busy = pool->size - 1;
    pool->generation++;
    pthread_cond_broadcast(&pool->wake);
    pthread_mutex_unlock(&pool->mu);

    drain_tasks(pool, 0);

    pthread_mutex_lock(&pool->mu);
    while (pool->busy > 0) pthread_cond_wait(&pool->done, &pool->mu);
    pthread_mutex_unlock(&pool->mu);
    pthread_mutex_unlock(&pool->run_lock);
}
