/*
 * Process-level safety nets: fork (a child never touches its parent's pools), exit (pools
 * still open are flushed and closed by an atexit fallback: cffi never runs Py_Finalize, so
 * nothing else would), and the thread-local text of the last logpool_new failure.
 */
#include "core.h" /* first: it defines _GNU_SOURCE */

#include <stdio.h>
#include <stdlib.h>
#include <string.h>


volatile unsigned logpool__fork_gen;
static pthread_mutex_t open_pools_lock = PTHREAD_MUTEX_INITIALIZER;
static logpool_t *open_pools;
static int atexit_registered;
static __thread char last_error[512];
static __thread int last_error_code;

static void after_fork_child(void)
{
    /* Pools and the Python runtime of the parent are unusable here: their threads did not
     * survive the fork, their mutexes may be held by a thread that no longer exists. */
    logpool__fork_gen++;
    pthread_mutex_init(&open_pools_lock, NULL);
    /* Nor are they this process's to close at exit: the exit fallback would spin on pools
     * whose close returns early here. */
    open_pools = NULL;
}

__attribute__((constructor)) static void logpool__load(void)
{
    pthread_atfork(NULL, NULL, after_fork_child);
}

unsigned logpool__fork_generation(void)
{
    return logpool__fork_gen;
}

void logpool__set_error(int code, const char *message)
{
    last_error_code = code;
    snprintf(last_error, sizeof last_error, "%s", message ? message : "");
}

LOGPOOL_API const char *logpool_last_error(void)
{
    return last_error;
}

LOGPOOL_API int logpool_last_error_code(void)
{
    return last_error_code;
}

uint64_t logpool__now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static void close_all_at_exit(void)
{
    logpool__close_all(-1);
}

/* Called by the Python side once the writers run: from now on the pool is visible to
 * logpool__close_all (the exit fallback). */
void logpool__pool_register(logpool_t *pool)
{
    pthread_mutex_lock(&open_pools_lock);
    pool->next_open = open_pools;
    open_pools = pool;
    if (!atexit_registered) {
        atexit_registered = 1;
        atexit(close_all_at_exit);
    }
    pthread_mutex_unlock(&open_pools_lock);
}

void logpool__pool_unregister(logpool_t *pool)
{
    pthread_mutex_lock(&open_pools_lock);
    for (logpool_t **p = &open_pools; *p != NULL; p = &(*p)->next_open) {
        if (*p == pool) {
            *p = pool->next_open;
            break;
        }
    }
    pthread_mutex_unlock(&open_pools_lock);
}

int logpool__close_all(int timeout_ms)
{
    int closed = 0;
    for (;;) {
        pthread_mutex_lock(&open_pools_lock);
        logpool_t *pool = open_pools;
        pthread_mutex_unlock(&open_pools_lock);
        if (pool == NULL)
            return closed;
        int t = timeout_ms >= 0 ? timeout_ms : pool->exit_flush_timeout_ms;
        int abandoned = logpool_close(pool, t); /* unregisters it */
        if (abandoned > 0)
            fprintf(stderr, "logpool: process exit: %d accepted messages abandoned after "
                            "%d ms\n", abandoned, t);
        closed++;
    }
}
