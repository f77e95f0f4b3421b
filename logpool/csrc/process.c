/*
 * Process-level state: the fork generation (a child never touches its parent's pools), the
 * monotonic clock, and the thread-local text of the last logpool_new failure. The registry
 * of open pools and the exit fallback are the pool's (pool.c).
 */
#include "core.h" /* first: it defines _GNU_SOURCE */

#include <stdio.h>
#include <stdlib.h>
#include <string.h>


volatile unsigned logpool__fork_gen;
static __thread char last_error[512];
static __thread int last_error_code;

static void after_fork_child(void)
{
    /* Pools and the Python runtime of the parent are unusable here: their threads did not
     * survive the fork, their mutexes may be held by a thread that no longer exists. */
    logpool__fork_gen++;
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
