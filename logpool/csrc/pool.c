/*
 * A pool's lifecycle and the public ABI around it: new, flush, shutdown, close, free, stats,
 * metrics, and the registry of open pools the exit fallback closes (a little over 400
 * lines: the registry belongs with close, which it calls). log_cdata lives in hotpath.c,
 * the codes' messages and the version in codes.c; an agent-mode pool (agentmode.c) hands
 * each call to producer.c.
 */
#include "core.h" /* first: it defines _GNU_SOURCE */
#include "embedding.h"
#include "producer.h"

#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>


logpool_t *logpool__pool_alloc(int nsinks, int exit_flush_timeout_ms)
{
    if (nsinks <= 0)
        return NULL;
    logpool_t *pool = calloc(1, sizeof *pool);
    if (pool == NULL)
        return NULL;
    pool->sinks = calloc((size_t)nsinks, sizeof *pool->sinks);
    if (pool->sinks == NULL) {
        free(pool);
        return NULL;
    }
    pool->nsinks = nsinks;
    pool->generation = logpool__fork_gen;
    pool->exit_flush_timeout_ms = exit_flush_timeout_ms;
    pthread_mutex_init(&pool->close_lock, NULL);
    pthread_condattr_t attr;
    pthread_condattr_init(&attr);
    pthread_condattr_setclock(&attr, CLOCK_MONOTONIC);
    /* Critical sections are a memcpy or a pointer swap: a contended producer spins briefly
     * instead of sleeping in the kernel and waiting to be scheduled again. */
    pthread_mutexattr_t mattr;
    pthread_mutexattr_init(&mattr);
    pthread_mutexattr_settype(&mattr, PTHREAD_MUTEX_ADAPTIVE_NP);
    for (int i = 0; i < nsinks; i++) {
        logpool__sink_t *s = &pool->sinks[i];
        s->pool = pool;
        s->id = i;
        pthread_mutex_init(&s->lock, &mattr);
        pthread_cond_init(&s->wake, &attr);
        pthread_cond_init(&s->progress, &attr);
        pthread_cond_init(&s->spill_wake, &attr);
    }
    pthread_mutexattr_destroy(&mattr);
    pthread_condattr_destroy(&attr);
    return pool;
}

int logpool__sink_init(logpool_t *pool, int socket_id, const logpool__limits_t *l)
{
    if (pool == NULL || socket_id < 0 || socket_id >= pool->nsinks || l == NULL)
        return LOGPOOL_EINVAL;
    if (l->max_message_size > INT_MAX || l->max_message_size > l->max_buffer_length ||
        l->flush_limit == 0 || l->periodic_flush_ms == 0 || l->framing > LOGPOOL__FRAMING_OCTETS)
        return LOGPOOL_ECONFIG;
    logpool__sink_t *s = &pool->sinks[socket_id];
    s->flush_limit = l->flush_limit;
    s->spill_bytes = l->spill_bytes;
    s->periodic_ns = l->periodic_flush_ms * 1000000u;
    s->max_buffer_length = l->max_buffer_length;
    s->max_message_size = l->max_message_size;
    s->framing = (int)l->framing;
    size_t chunk = l->flush_limit;
    chunk = chunk < MIN_CHUNK ? MIN_CHUNK : chunk > MAX_CHUNK ? MAX_CHUNK : chunk;
    s->chunk_size = (chunk + 7) & ~(size_t)7; /* end slots at the end must be aligned */
    /* Frames are bounded by max_buffer_length; their bookkeeping and unfilled chunk room by
     * a quarter more and one chunk (README "Memory"): only messages of a few bytes reach it
     * before max_buffer_length. */
    s->max_memory = l->max_buffer_length + l->max_buffer_length / 4 + s->chunk_size;
    size_t share = FREE_CACHE_MAX_BYTES / (size_t)pool->nsinks / logpool__chunk_footprint(s);
    s->free_keep_max = share > FREE_CHUNKS_KEPT ? (int)share : FREE_CHUNKS_KEPT;
    s->free_keep = FREE_CHUNKS_KEPT;
    return LOGPOOL_OK;
}

/* The config's name of a sink (Python's config owns the naming rule), copied. */
int logpool__sink_set_name(logpool_t *pool, int socket_id, const char *name)
{
    if (pool == NULL || socket_id < 0 || socket_id >= pool->nsinks || name == NULL)
        return LOGPOOL_EINVAL;
    logpool__sink_t *s = &pool->sinks[socket_id];
    char *copy = strdup(name);
    if (copy == NULL)
        return LOGPOOL_ERUNTIME;
    free(s->name);
    s->name = copy;
    return LOGPOOL_OK;
}

logpool__sink_t *logpool__pool_sink(logpool_t *pool, int socket_id)
{
    if (pool == NULL || socket_id < 0 || socket_id >= pool->nsinks)
        return NULL;
    return &pool->sinks[socket_id];
}

static void pool_destroy(logpool_t *pool)
{
    for (int i = 0; i < pool->nsinks; i++) {
        logpool__sink_t *s = &pool->sinks[i];
        logpool__sink_release_memory(s);
        pthread_mutex_destroy(&s->lock);
        pthread_cond_destroy(&s->wake);
        pthread_cond_destroy(&s->progress);
        pthread_cond_destroy(&s->spill_wake);
        free(s->name);
    }
    pthread_mutex_destroy(&pool->close_lock);
    free(pool->sinks);
    free(pool);
}

/* A pool that never got its writers (config accepted, thread start failed). */
void logpool__pool_discard(logpool_t *pool)
{
    if (pool != NULL)
        pool_destroy(pool);
}

LOGPOOL_API logpool_t *logpool_new(const char *config_json)
{
    char err[480];
    if (config_json == NULL) {
        logpool__set_error(LOGPOOL_EINVAL, "invalid argument: config_json is NULL");
        return NULL;
    }
    logpool_t *agent_pool;
    if (logpool__agent_pool_new(config_json, &agent_pool)) /* before Python: never starts it */
        return agent_pool;
    if (logpool__runtime_start(err, sizeof err) != 0) {
        logpool__set_error(LOGPOOL_ERUNTIME, err);
        return NULL;
    }
    /* Writer threads inherit this mask: the host's signals (nginx: QUIT, HUP, USR1, ALRM)
     * must reach the host's own thread, never a writer. */
    sigset_t all, old;
    sigfillset(&all);
    pthread_sigmask(SIG_BLOCK, &all, &old);
    logpool__set_error(LOGPOOL_OK, "");
    logpool_t *pool = logpool__py_start(config_json);
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    if (pool == NULL) {
        if (logpool_last_error_code() == LOGPOOL_OK)
            logpool__set_error(LOGPOOL_ERUNTIME, "embedded Python runtime unavailable: the pool could not start "
                               "(see stderr)");
        return NULL;
    }
    logpool__pool_register(pool);
    return pool;
}

LOGPOOL_API int logpool_sink_count(logpool_t *pool)
{
    return pool == NULL ? LOGPOOL_EINVAL : pool->nsinks;
}

LOGPOOL_API int logpool_sink_index(logpool_t *pool, const char *name)
{
    if (pool == NULL || name == NULL)
        return LOGPOOL_EINVAL;
    if (pool->producer != NULL) /* agent mode: the agent's sinks */
        return logpool__producer_sink_index(pool->producer, name);
    for (int i = 0; i < pool->nsinks; i++) {
        if (pool->sinks[i].name != NULL && strcmp(pool->sinks[i].name, name) == 0)
            return i;
    }
    return LOGPOOL_ENOSINK;
}

LOGPOOL_API int logpool_stats(logpool_t *pool, int socket_id, logpool_stats_t *out)
{
    if (pool == NULL || out == NULL)
        return LOGPOOL_EINVAL;
    if (socket_id < 0 || socket_id >= pool->nsinks)
        return LOGPOOL_ENOSINK;
    if (pool->producer != NULL)
        return logpool__producer_stats(pool->producer, socket_id, out);
    logpool__sink_stats(&pool->sinks[socket_id], out);
    return LOGPOOL_OK;
}

LOGPOOL_API int logpool_metrics(logpool_t *pool, char *buf, size_t len)
{
    if (pool == NULL || (buf == NULL && len > 0))
        return LOGPOOL_EINVAL;
    if (pool->producer != NULL)
        return logpool__producer_metrics(pool->producer, buf, len);
    if (logpool__pool_inherited(pool))
        return LOGPOOL_ECLOSED;
    int n = logpool__py_metrics(pool, buf, len);
    return n >= 0 ? n : LOGPOOL_ERUNTIME;
}

/* "Sent" for flush and close: written (acknowledged), or dropped by the writer because no
 * socket could ever take it or the collector refused it for good. */
static int sink_all_sent(logpool__sink_t *s, uint64_t target)
{
    return __atomic_load_n(&s->st.sent_messages, __ATOMIC_SEQ_CST) +
           __atomic_load_n(&s->st.dropped_unsendable, __ATOMIC_SEQ_CST) +
           __atomic_load_n(&s->st.dropped_rejected, __ATOMIC_SEQ_CST) +
           __atomic_load_n(&s->st.dropped_spool_replay, __ATOMIC_SEQ_CST) >= target;
}

/* Wait until every message the sink accepted so far is written, or the deadline. */
static int sink_drain(logpool__sink_t *s, uint64_t deadline_ns)
{
    int rc = LOGPOOL_OK;
    pthread_mutex_lock(&s->lock);
    /* What the writer adopts from the spool at start was accepted before any call. */
    while (s->adopting && s->writer_running && !s->writer_exited) {
        __atomic_fetch_add(&s->progress_waiters, 1, __ATOMIC_SEQ_CST);
        int r = logpool__cond_wait_until(&s->progress, &s->lock, deadline_ns);
        __atomic_fetch_sub(&s->progress_waiters, 1, __ATOMIC_SEQ_CST);
        if (r == ETIMEDOUT && s->adopting) {
            pthread_mutex_unlock(&s->lock);
            return LOGPOOL_ETIMEDOUT;
        }
    }
    uint64_t target = ATOMIC_LOAD(&s->st.accepted_messages);
    if (!sink_all_sent(s, target)) {
        s->flush_requested = 1;
        if (s->writer_waiting)
            pthread_cond_signal(&s->wake);
        __atomic_fetch_add(&s->progress_waiters, 1, __ATOMIC_SEQ_CST);
        while (!sink_all_sent(s, target)) {
            if (s->writer_exited || !s->writer_running) {
                rc = LOGPOOL_ECLOSED;
                break;
            }
            if (logpool__cond_wait_until(&s->progress, &s->lock, deadline_ns) == ETIMEDOUT &&
                !sink_all_sent(s, target)) {
                rc = LOGPOOL_ETIMEDOUT;
                break;
            }
        }
        __atomic_fetch_sub(&s->progress_waiters, 1, __ATOMIC_SEQ_CST);
    }
    pthread_mutex_unlock(&s->lock);
    return rc;
}

LOGPOOL_API int logpool_flush(logpool_t *pool, int timeout_ms)
{
    if (pool == NULL)
        return LOGPOOL_EINVAL;
    if (pool->producer != NULL)
        return logpool__producer_flush(pool->producer, timeout_ms);
    if (logpool__pool_inherited(pool))
        return LOGPOOL_ECLOSED;
    uint64_t deadline = logpool__deadline_after(timeout_ms);
    int rc = LOGPOOL_OK;
    void *gil = logpool__gil_release();
    for (int i = 0; i < pool->nsinks; i++) {
        int r = sink_drain(&pool->sinks[i], deadline);
        if (r != LOGPOOL_OK && rc == LOGPOOL_OK)
            rc = r;
    }
    logpool__gil_restore(gil);
    return rc;
}

LOGPOOL_API int logpool_shutdown(logpool_t *pool)
{
    if (pool == NULL)
        return LOGPOOL_EINVAL;
    if (pool->producer != NULL)
        return logpool__producer_shutdown(pool->producer);
    if (logpool__pool_inherited(pool))
        return LOGPOOL_ECLOSED;
    pthread_mutex_lock(&pool->close_lock);
    if (ATOMIC_LOAD(&pool->state) == POOL_OPEN)
        ATOMIC_STORE(&pool->state, POOL_CLOSING);
    pthread_mutex_unlock(&pool->close_lock);
    /* Writers waiting for a batch take what is buffered at once (a closing pool is due). */
    for (int i = 0; i < pool->nsinks; i++) {
        logpool__sink_t *s = &pool->sinks[i];
        pthread_mutex_lock(&s->lock);
        if (s->writer_waiting)
            pthread_cond_signal(&s->wake);
        pthread_mutex_unlock(&s->lock);
    }
    return LOGPOOL_OK;
}

LOGPOOL_API int logpool_close(logpool_t *pool, int timeout_ms)
{
    if (pool == NULL)
        return LOGPOOL_EINVAL;
    if (pool->producer != NULL)
        return logpool__producer_close(pool->producer);
    if (logpool__pool_inherited(pool)) {
        /* Forked child: the writers and the buffered messages are the parent's, which
         * delivers them; locks may be held by threads that do not exist here. This process
         * accepted nothing into this pool, so it abandons nothing. Touch nothing else. */
        ATOMIC_STORE(&pool->state, POOL_CLOSED);
        return 0;
    }
    pthread_mutex_lock(&pool->close_lock);
    if (ATOMIC_LOAD(&pool->state) == POOL_CLOSED) {
        int abandoned = pool->abandoned;
        pthread_mutex_unlock(&pool->close_lock);
        return abandoned;
    }
    ATOMIC_STORE(&pool->state, POOL_CLOSING);
    void *gil = logpool__gil_release();
    int finalizing = logpool__python_finalizing();
    uint64_t deadline = finalizing ? 0 : logpool__deadline_after(timeout_ms);
    for (int i = 0; i < pool->nsinks; i++)
        sink_drain(&pool->sinks[i], deadline); /* also a barrier: in-flight appends are done */

    uint64_t grace = finalizing ? 0
                                : logpool__now_ns() + (uint64_t)WRITER_EXIT_GRACE_MS * 1000000u;
    int stuck = 0;
    uint64_t abandoned = 0;
    for (int i = 0; i < pool->nsinks; i++) {
        logpool__sink_t *s = &pool->sinks[i];
        pthread_mutex_lock(&s->lock);
        s->stop = 1;
        pthread_cond_broadcast(&s->wake);
        pthread_cond_broadcast(&s->spill_wake);
        while (s->writer_running && !s->writer_exited) {
            if (logpool__cond_wait_until(&s->progress, &s->lock, grace) == ETIMEDOUT)
                break;
        }
        if (s->writer_running && !s->writer_exited) {
            stuck = 1;
        } else {
            /* No writer (never started, or it left while the pool was open): what producers
             * added since is abandoned here, counted, and freed. */
            ATOMIC_ADD(&s->st.abandoned_messages, logpool__sink_unsent(s));
            if (s->writer_exited) {
                logpool__sink_release_memory(s);
                s->chain_bytes = 0;
                logpool__sink_unbuffer_all_locked(s);
            }
        }
        abandoned += ATOMIC_LOAD(&s->st.abandoned_messages);
        pthread_mutex_unlock(&s->lock);
    }
    if (stuck && !finalizing)
        fprintf(stderr, "logpool: a writer thread did not stop within %d ms; its pool is "
                        "kept in memory\n", WRITER_EXIT_GRACE_MS);
    if (stuck) /* nobody will free what the writer holds: count it as abandoned */
        for (int i = 0; i < pool->nsinks; i++) {
            logpool__sink_t *s = &pool->sinks[i];
            if (s->writer_running && !s->writer_exited)
                abandoned += logpool__sink_unsent(s);
        }
    logpool__gil_restore(gil);
    pool->abandoned = abandoned > INT_MAX ? INT_MAX : (int)abandoned;
    ATOMIC_STORE(&pool->state, POOL_CLOSED);
    logpool__pool_unregister(pool);
    pthread_mutex_unlock(&pool->close_lock);
    return pool->abandoned;
}

LOGPOOL_API void logpool_free(logpool_t *pool)
{
    if (pool == NULL)
        return;
    if (pool->producer != NULL) {
        logpool__agent_pool_free(pool);
        return;
    }
    if (ATOMIC_LOAD(&pool->state) != POOL_CLOSED)
        logpool_close(pool, 0);
    if (logpool__pool_inherited(pool))
        return; /* the parent's memory: never touch its locks here */
    for (int i = 0; i < pool->nsinks; i++) {
        logpool__sink_t *s = &pool->sinks[i];
        pthread_mutex_lock(&s->lock);
        int alive = s->writer_running && !s->writer_exited;
        pthread_mutex_unlock(&s->lock);
        if (alive)
            return; /* a writer may still touch it: leaking is the safe choice */
    }
    /* The writers, histograms and TLS contexts the Python side keeps for this pool. */
    logpool__runtime_forget_pool(pool);
    pool_destroy(pool);
}

/* -- the registry of open pools: the exit fallback (cffi never runs Py_Finalize, so
 *    nothing else would flush pools still open at exit) -- */

static pthread_mutex_t open_pools_lock = PTHREAD_MUTEX_INITIALIZER;
static logpool_t *open_pools;
static int atexit_registered;

/* In a forked child: the parent's pools are not this process's to close at exit (their
 * close returns early here, the exit fallback would spin on them). */
static void forget_pools_after_fork(void)
{
    pthread_mutex_init(&open_pools_lock, NULL);
    open_pools = NULL;
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
        pthread_atfork(NULL, NULL, forget_pools_after_fork);
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
