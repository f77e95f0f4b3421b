/*
 * The C core: per-sink chunk chains, the log_cdata hot path, flush/close and the
 * process-level safety nets (fork, exit). Never touches the Python API: runtime.c does.
 *
 * A sink's buffer is a chain of chunks. Producers append whole messages to the tail chunk
 * under the sink's mutex (a message never spans two chunks); each chunk records where its
 * messages end, so a writer whose connection broke can resend from the start of the first
 * message that was not completely written. The writer takes the whole chain at once and
 * walks it without the lock.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <limits.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>

#include "logpool_internal.h"

#define LOGPOOL_API __attribute__((visibility("default")))

/* The enum in logpool.h and the X-macro table cannot drift. */
#define LOGPOOL__CHECK_CODE(name, value, text) \
    _Static_assert(LOGPOOL_##name == (value), "code table and enum disagree: " #name);
LOGPOOL_ERRNO_MAP(LOGPOOL__CHECK_CODE)

enum { POOL_OPEN = 0, POOL_CLOSING = 1, POOL_CLOSED = 2 };

/* How long logpool_close waits for writers to notice "stop" (they check it at least every
 * socket time slice, 50 ms) before it leaves them and leaks the pool rather than freeing
 * memory a thread may still touch. */
#define WRITER_EXIT_GRACE_MS 5000
#define FREE_CHUNKS_KEPT 4
#define MIN_CHUNK 4096
#define MAX_CHUNK 65536

/* A chunk holds whole frames from the front and, from its end backwards, one uint32_t per
 * message saying where it ends: the bookkeeping lives inside the chunk, so a chunk's memory
 * is its cap whatever the message sizes (1-byte messages once cost 5x their size). */
typedef struct chunk_s {
    struct chunk_s *next;
    size_t cap;
    size_t used;
    size_t room_charged; /* unfilled room charged to the sink's memory when it was retired */
    uint32_t nmsgs;
    char data[];
} chunk_t;

#define END_SLOT sizeof(uint32_t)

static inline uint32_t *chunk_ends(const chunk_t *c)
{
    return (uint32_t *)(void *)(c->data + c->cap); /* slot i is ends[-1 - i] */
}

/* Offset just past message m of c. */
static inline uint32_t chunk_end(const chunk_t *c, uint32_t m)
{
    return chunk_ends(c)[-1 - (long)m];
}

static inline size_t chunk_room(const chunk_t *c)
{
    return c->cap - c->used - END_SLOT * c->nmsgs;
}

struct logpool__sink_s {
    logpool_t *pool;
    int id;
    pthread_mutex_t lock;
    pthread_cond_t wake;     /* the writer waits here for a batch or stop */
    pthread_cond_t progress; /* flush/close wait here for sent messages or writer exit */

    size_t flush_limit;
    size_t chunk_size;
    uint64_t periodic_ns;
    size_t max_buffer_length;
    size_t max_message_size;
    int framing;

    /* Producer side, under lock. */
    chunk_t *head;
    chunk_t *tail;
    size_t chain_bytes;
    uint64_t chain_oldest_ns;
    chunk_t *free_chunks;
    int free_count;
    /* Memory the chain holds: frames and their end slots, plus the room of every chunk
     * retired because the next frame did not fit (memory too, never filled). Bounded by
     * max_memory, so RSS follows max_buffer_length for any message size. Under lock. */
    size_t memory;
    size_t max_memory;
    int writer_waiting;
    int flush_requested;
    int stop;
    int writer_running;
    int writer_exited;
    int progress_waiters; /* seq_cst atomics: read by the writer without the lock */

    /* Writer side: only the sink's writer thread touches these. */
    chunk_t *pend_head;
    chunk_t *pend_tail;
    size_t pend_off;  /* bytes of pend_head already written */
    uint32_t pend_msg; /* first message of pend_head not completely written */
    size_t pend_bytes;
    uint64_t batch_oldest_ns;

    logpool_stats_t st; /* every field accessed with __atomic builtins */
};

struct logpool_s {
    int nsinks;
    int state;
    unsigned generation;
    int exit_flush_timeout_ms;
    int abandoned;
    pthread_mutex_t close_lock;
    struct logpool_s *next_open;
    logpool__sink_t *sinks;
};

#define ATOMIC_ADD(p, n) __atomic_fetch_add((p), (n), __ATOMIC_RELAXED)
#define ATOMIC_SUB(p, n) __atomic_fetch_sub((p), (n), __ATOMIC_RELAXED)
#define ATOMIC_LOAD(p) __atomic_load_n((p), __ATOMIC_RELAXED)
#define ATOMIC_STORE(p, v) __atomic_store_n((p), (v), __ATOMIC_RELAXED)

/* ---- process-level state: fork generation, open pools, last error ---- */

static volatile unsigned fork_generation;
static pthread_mutex_t open_pools_lock = PTHREAD_MUTEX_INITIALIZER;
static logpool_t *open_pools;
static int atexit_registered;
static __thread char last_error[512];

static void after_fork_child(void)
{
    /* Pools and the Python runtime of the parent are unusable here: their threads did not
     * survive the fork, their mutexes may be held by a thread that no longer exists. */
    fork_generation++;
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
    return fork_generation;
}

static int pool_inherited(const logpool_t *pool)
{
    return pool->generation != fork_generation;
}

void logpool__set_error(const char *message)
{
    snprintf(last_error, sizeof last_error, "%s", message ? message : "");
}

LOGPOOL_API const char *logpool_last_error(void)
{
    return last_error;
}

uint64_t logpool__now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static struct timespec deadline_ts(uint64_t deadline_ns)
{
    struct timespec ts;
    ts.tv_sec = (time_t)(deadline_ns / 1000000000u);
    ts.tv_nsec = (long)(deadline_ns % 1000000000u);
    return ts;
}

static uint64_t deadline_after(int timeout_ms)
{
    if (timeout_ms < 0)
        return UINT64_MAX;
    return logpool__now_ns() + (uint64_t)timeout_ms * 1000000u;
}

/* Returns ETIMEDOUT once deadline_ns has passed; UINT64_MAX waits without a limit. */
static int cond_wait_until(pthread_cond_t *cond, pthread_mutex_t *lock, uint64_t deadline_ns)
{
    if (deadline_ns == UINT64_MAX)
        return pthread_cond_wait(cond, lock);
    struct timespec ts = deadline_ts(deadline_ns);
    return pthread_cond_timedwait(cond, lock, &ts);
}

/* ---- codes and version ---- */

LOGPOOL_API const char *logpool_strerror(int code)
{
#define LOGPOOL__STRERROR(name, value, text) \
    case (value):                           \
        return text;
    switch (code) {
        LOGPOOL_ERRNO_MAP(LOGPOOL__STRERROR)
    default:
        return "unknown error code";
    }
#undef LOGPOOL__STRERROR
}

LOGPOOL_API const char *logpool_version(void)
{
    return LOGPOOL_VERSION_STRING;
}

/* ---- chunks ---- */

static chunk_t *chunk_new(size_t cap)
{
    chunk_t *c = malloc(sizeof *c + cap);
    if (c == NULL)
        return NULL;
    c->next = NULL;
    c->cap = cap;
    c->used = 0;
    c->room_charged = 0;
    c->nmsgs = 0;
    return c;
}

static void chunk_free(chunk_t *c)
{
    free(c);
}

static void chain_free(chunk_t *c)
{
    while (c != NULL) {
        chunk_t *next = c->next;
        chunk_free(c);
        c = next;
    }
}

/* Under sink->lock, for a chunk the writer is done with: uncharge it. Standard-size chunks
 * are recycled; oversized ones are not. */
static void chunk_recycle_locked(logpool__sink_t *s, chunk_t *c)
{
    s->memory -= c->used + END_SLOT * c->nmsgs + c->room_charged;
    if (c->cap == s->chunk_size && s->free_count < FREE_CHUNKS_KEPT) {
        c->used = 0;
        c->room_charged = 0;
        c->nmsgs = 0;
        c->next = s->free_chunks;
        s->free_chunks = c;
        s->free_count++;
    } else {
        chunk_free(c);
    }
}

/* Under sink->lock: a new tail replaces one the next frame did not fit; the old tail's
 * unfilled room is charged from now on. (A tail the writer takes is not charged: it is
 * sent and recycled before the writer takes again.) */
static void tail_retire_locked(logpool__sink_t *s)
{
    if (s->tail != NULL) {
        s->tail->room_charged = chunk_room(s->tail);
        s->memory += s->tail->room_charged;
    }
}

/* Under sink->lock: a chunk with room for a frame of len bytes and its end slot. */
static chunk_t *tail_with_room_locked(logpool__sink_t *s, size_t len)
{
    chunk_t *c = s->tail;
    if (c != NULL && chunk_room(c) >= len + END_SLOT)
        return c;
    /* A frame that would leave a standard chunk mostly empty gets a chunk of its own size. */
    size_t need = (len + END_SLOT + 7) & ~(size_t)7;
    if (need <= s->chunk_size && s->free_chunks != NULL) {
        c = s->free_chunks;
        s->free_chunks = c->next;
        s->free_count--;
        c->next = NULL;
    } else if (need <= s->chunk_size) {
        c = chunk_new(s->chunk_size);
    } else {
        c = chunk_new(need);
    }
    if (c == NULL)
        return NULL;
    tail_retire_locked(s);
    if (s->tail != NULL)
        s->tail->next = c;
    else
        s->head = c;
    s->tail = c;
    return c;
}

/* ---- the hot path ---- */

/* "LEN " of RFC 6587 octet counting, into out (at least 21 bytes); returns its length. */
static size_t octet_count_prefix(char *out, size_t len)
{
    char digits[20];
    size_t n = 0;
    do {
        digits[n++] = (char)('0' + len % 10);
        len /= 10;
    } while (len > 0);
    for (size_t i = 0; i < n; i++)
        out[i] = digits[n - 1 - i];
    out[n] = ' ';
    return n + 1;
}

LOGPOOL_API int log_cdata(logpool_t *pool, int socket_id, const char *msg, size_t len)
{
    if (pool == NULL)
        return LOGPOOL_EINVAL;
    if (socket_id < 0 || socket_id >= pool->nsinks)
        return LOGPOOL_ENOSINK;
    logpool__sink_t *s = &pool->sinks[socket_id];
    if (msg == NULL && len > 0)
        return LOGPOOL_EINVAL;
    if (ATOMIC_LOAD(&pool->state) != POOL_OPEN || pool_inherited(pool)) {
        ATOMIC_ADD(&s->st.dropped_closed, 1);
        return LOGPOOL_ECLOSED;
    }
    if (len == 0)
        return 0;
    /* The frame is what goes on the wire; max_message_size and the byte counters count it.
     * len is checked before any byte of msg is read: a huge len must not be dereferenced. */
    if (len > s->max_message_size) {
        ATOMIC_ADD(&s->st.dropped_too_big, 1);
        return LOGPOOL_ETOOBIG;
    }
    char prefix[24];
    size_t prefix_len = 0, suffix_len = 0;
    if (s->framing == LOGPOOL__FRAMING_NEWLINE)
        suffix_len = msg[len - 1] != '\n';
    else if (s->framing == LOGPOOL__FRAMING_OCTETS)
        prefix_len = octet_count_prefix(prefix, len);
    size_t frame = prefix_len + len + suffix_len;
    if (frame > s->max_message_size) {
        ATOMIC_ADD(&s->st.dropped_too_big, 1);
        return LOGPOOL_ETOOBIG;
    }

    pthread_mutex_lock(&s->lock);
    if (ATOMIC_LOAD(&pool->state) != POOL_OPEN) {
        pthread_mutex_unlock(&s->lock);
        ATOMIC_ADD(&s->st.dropped_closed, 1);
        return LOGPOOL_ECLOSED;
    }
    chunk_t *c;
    if (ATOMIC_LOAD(&s->st.buffered_bytes) + frame > s->max_buffer_length ||
        s->memory + frame + END_SLOT > s->max_memory ||
        (c = tail_with_room_locked(s, frame)) == NULL) {
        pthread_mutex_unlock(&s->lock);
        ATOMIC_ADD(&s->st.dropped_full, 1);
        return LOGPOOL_EFULL;
    }
    char *dst = c->data + c->used;
    if (prefix_len > 0) {
        memcpy(dst, prefix, prefix_len);
        dst += prefix_len;
    }
    memcpy(dst, msg, len);
    if (suffix_len > 0)
        dst[len] = '\n';
    c->used += frame;
    chunk_ends(c)[-1 - (long)c->nmsgs] = (uint32_t)c->used;
    c->nmsgs++;
    s->memory += frame + END_SLOT;

    size_t before = s->chain_bytes;
    s->chain_bytes = before + frame;
    if (before == 0)
        s->chain_oldest_ns = logpool__now_ns();
    ATOMIC_ADD(&s->st.accepted_messages, 1);
    ATOMIC_ADD(&s->st.accepted_bytes, frame);
    ATOMIC_ADD(&s->st.buffered_bytes, frame);
    ATOMIC_ADD(&s->st.buffered_messages, 1);
    /* Wake the writer once per batch: when it needs a deadline (first byte) or when the
     * batch reached flush_limit. Otherwise no syscall. */
    if (s->writer_waiting &&
        (before == 0 || (before < s->flush_limit && s->chain_bytes >= s->flush_limit)))
        pthread_cond_signal(&s->wake);
    pthread_mutex_unlock(&s->lock);
    return (int)len;
}

/* ---- pool lifecycle ---- */

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
    pool->generation = fork_generation;
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
    return LOGPOOL_OK;
}

logpool__sink_t *logpool__pool_sink(logpool_t *pool, int socket_id)
{
    if (pool == NULL || socket_id < 0 || socket_id >= pool->nsinks)
        return NULL;
    return &pool->sinks[socket_id];
}

static void close_all_at_exit(void)
{
    logpool__close_all(-1);
}

/* Called by the Python side once the writers run: from now on the pool is visible to
 * logpool__close_all (the exit fallback). */
static void pool_register(logpool_t *pool)
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

static void pool_unregister(logpool_t *pool)
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

static void sink_release_memory(logpool__sink_t *s)
{
    chain_free(s->head);
    chain_free(s->pend_head);
    chain_free(s->free_chunks);
    s->head = s->tail = s->pend_head = s->pend_tail = s->free_chunks = NULL;
    s->free_count = 0;
    s->memory = 0;
}

static void pool_destroy(logpool_t *pool)
{
    for (int i = 0; i < pool->nsinks; i++) {
        logpool__sink_t *s = &pool->sinks[i];
        sink_release_memory(s);
        pthread_mutex_destroy(&s->lock);
        pthread_cond_destroy(&s->wake);
        pthread_cond_destroy(&s->progress);
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
        logpool__set_error("invalid argument: config_json is NULL");
        return NULL;
    }
    if (logpool__runtime_start(err, sizeof err) != 0) {
        logpool__set_error(err);
        return NULL;
    }
    /* Writer threads inherit this mask: the host's signals (nginx: QUIT, HUP, USR1, ALRM)
     * must reach the host's own thread, never a writer. */
    sigset_t all, old;
    sigfillset(&all);
    pthread_sigmask(SIG_BLOCK, &all, &old);
    logpool__set_error("");
    extern void *logpool__py_start(const char *config_json);
    logpool_t *pool = logpool__py_start(config_json);
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    if (pool == NULL) {
        if (last_error[0] == '\0')
            logpool__set_error("embedded Python runtime unavailable: the pool could not start "
                               "(see stderr)");
        return NULL;
    }
    pool_register(pool);
    return pool;
}

LOGPOOL_API int logpool_sink_count(logpool_t *pool)
{
    return pool == NULL ? LOGPOOL_EINVAL : pool->nsinks;
}

#define STATS_FIELDS(XX)                                                                     \
    XX(accepted_messages) XX(accepted_bytes) XX(sent_messages) XX(sent_bytes)                \
    XX(dropped_full) XX(dropped_too_big) XX(dropped_closed) XX(abandoned_messages)           \
    XX(connects) XX(connect_failures) XX(write_errors) XX(reconnects) XX(buffered_bytes)     \
    XX(connected) XX(buffered_messages) XX(writes) XX(resent_bytes) XX(writer_errors)         \
    XX(tls_handshake_failures) XX(tls_resumed) XX(dropped_unsendable)

/* A field appended to logpool_stats_t and forgotten here would read as 0 forever. */
#define COUNT_FIELD(f) +1
_Static_assert(sizeof(logpool_stats_t) == sizeof(uint64_t) * (0 STATS_FIELDS(COUNT_FIELD)),
               "STATS_FIELDS must list every field of logpool_stats_t");
#undef COUNT_FIELD

/* Producers keep writing while this reads: each field is one atomic load. */
void logpool__sink_stats(logpool__sink_t *s, logpool_stats_t *out)
{
#define COPY_FIELD(f) out->f = ATOMIC_LOAD(&s->st.f);
    STATS_FIELDS(COPY_FIELD)
#undef COPY_FIELD
}

LOGPOOL_API int logpool_stats(logpool_t *pool, int socket_id, logpool_stats_t *out)
{
    if (pool == NULL || out == NULL)
        return LOGPOOL_EINVAL;
    if (socket_id < 0 || socket_id >= pool->nsinks)
        return LOGPOOL_ENOSINK;
    logpool__sink_stats(&pool->sinks[socket_id], out);
    return LOGPOOL_OK;
}

LOGPOOL_API int logpool_metrics(logpool_t *pool, char *buf, size_t len)
{
    if (pool == NULL || (buf == NULL && len > 0))
        return LOGPOOL_EINVAL;
    if (pool_inherited(pool))
        return LOGPOOL_ECLOSED;
    extern int logpool__py_metrics(void *pool, char *buf, size_t len);
    int n = logpool__py_metrics(pool, buf, len);
    return n >= 0 ? n : LOGPOOL_ERUNTIME;
}

/* ---- flush and close ---- */

/* "Sent" for flush and close: written, or dropped by the writer because no socket could
 * ever take it. */
static int sink_all_sent(logpool__sink_t *s, uint64_t target)
{
    return __atomic_load_n(&s->st.sent_messages, __ATOMIC_SEQ_CST) +
           __atomic_load_n(&s->st.dropped_unsendable, __ATOMIC_SEQ_CST) >= target;
}

/* Wait until every message the sink accepted so far is written, or the deadline. */
static int sink_drain(logpool__sink_t *s, uint64_t deadline_ns)
{
    int rc = LOGPOOL_OK;
    pthread_mutex_lock(&s->lock);
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
            if (cond_wait_until(&s->progress, &s->lock, deadline_ns) == ETIMEDOUT &&
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
    if (pool_inherited(pool))
        return LOGPOOL_ECLOSED;
    uint64_t deadline = deadline_after(timeout_ms);
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

/* Accepted messages with no fate yet: neither sent, dropped as unsendable, nor already
 * counted as abandoned (a writer that left counted what it held then). */
static uint64_t sink_unsent(logpool__sink_t *s)
{
    uint64_t accepted = ATOMIC_LOAD(&s->st.accepted_messages);
    uint64_t done = ATOMIC_LOAD(&s->st.sent_messages) + ATOMIC_LOAD(&s->st.dropped_unsendable) +
                    ATOMIC_LOAD(&s->st.abandoned_messages);
    return accepted > done ? accepted - done : 0;
}

LOGPOOL_API int logpool_shutdown(logpool_t *pool)
{
    if (pool == NULL)
        return LOGPOOL_EINVAL;
    if (pool_inherited(pool))
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
    if (pool_inherited(pool)) {
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
    uint64_t deadline = finalizing ? 0 : deadline_after(timeout_ms);
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
        while (s->writer_running && !s->writer_exited) {
            if (cond_wait_until(&s->progress, &s->lock, grace) == ETIMEDOUT)
                break;
        }
        if (s->writer_running && !s->writer_exited) {
            stuck = 1;
        } else {
            /* No writer (never started, or it left while the pool was open): what producers
             * added since is abandoned here, counted, and freed. */
            ATOMIC_ADD(&s->st.abandoned_messages, sink_unsent(s));
            if (s->writer_exited) {
                sink_release_memory(s);
                s->chain_bytes = 0;
                ATOMIC_STORE(&s->st.buffered_bytes, 0);
                ATOMIC_STORE(&s->st.buffered_messages, 0);
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
                abandoned += sink_unsent(s);
        }
    logpool__gil_restore(gil);
    pool->abandoned = abandoned > INT_MAX ? INT_MAX : (int)abandoned;
    ATOMIC_STORE(&pool->state, POOL_CLOSED);
    pool_unregister(pool);
    pthread_mutex_unlock(&pool->close_lock);
    return pool->abandoned;
}

LOGPOOL_API void logpool_free(logpool_t *pool)
{
    if (pool == NULL)
        return;
    if (ATOMIC_LOAD(&pool->state) != POOL_CLOSED)
        logpool_close(pool, 0);
    if (pool_inherited(pool))
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
    extern void logpool__runtime_forget_pool(logpool_t *pool);
    logpool__runtime_forget_pool(pool);
    pool_destroy(pool);
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

/* ---- writer side ---- */

int logpool__sink_is_closing(logpool__sink_t *s)
{
    return ATOMIC_LOAD(&s->pool->state) != POOL_OPEN;
}

int logpool__sink_wait(logpool__sink_t *s, int mode, int timeout_ms)
{
    uint64_t user_deadline = deadline_after(timeout_ms);
    int result = LOGPOOL__WAIT_TIMEOUT;
    pthread_mutex_lock(&s->lock);
    for (;;) {
        if (s->stop) {
            result = LOGPOOL__WAIT_STOP;
            break;
        }
        uint64_t now = logpool__now_ns();
        uint64_t wake_at = user_deadline;
        if (mode == LOGPOOL__WAIT_FOR_BATCH && s->chain_bytes > 0) {
            uint64_t due = s->chain_oldest_ns + s->periodic_ns;
            if (s->chain_bytes >= s->flush_limit || s->flush_requested || now >= due ||
                ATOMIC_LOAD(&s->pool->state) != POOL_OPEN) {
                result = LOGPOOL__WAIT_READY;
                break;
            }
            if (due < wake_at)
                wake_at = due;
        }
        if (now >= user_deadline)
            break;
        s->writer_waiting = 1;
        cond_wait_until(&s->wake, &s->lock, wake_at);
        s->writer_waiting = 0;
    }
    pthread_mutex_unlock(&s->lock);
    return result;
}

size_t logpool__sink_take(logpool__sink_t *s)
{
    pthread_mutex_lock(&s->lock);
    if (s->head != NULL) {
        if (s->pend_head == NULL) {
            s->pend_head = s->head;
            s->batch_oldest_ns = s->chain_oldest_ns;
        } else {
            s->pend_tail->next = s->head;
        }
        s->pend_tail = s->tail;
        s->pend_bytes += s->chain_bytes;
        s->head = s->tail = NULL;
        s->chain_bytes = 0;
    }
    s->flush_requested = 0;
    pthread_mutex_unlock(&s->lock);
    return s->pend_bytes;
}

uint64_t logpool__sink_batch_oldest_ns(logpool__sink_t *s)
{
    return s->batch_oldest_ns;
}

size_t logpool__sink_pending(logpool__sink_t *s)
{
    return s->pend_bytes;
}

int logpool__sink_iov(logpool__sink_t *s, logpool__iov_t *iov, int max_iov)
{
    int n = 0;
    size_t off = s->pend_off;
    for (chunk_t *c = s->pend_head; c != NULL && n < max_iov; c = c->next, off = 0) {
        if (c->used > off) {
            iov[n].base = c->data + off;
            iov[n].len = c->used - off;
            n++;
        }
    }
    return n;
}

static uint32_t msg_start(const chunk_t *c, uint32_t m)
{
    return m == 0 ? 0 : chunk_end(c, m - 1);
}

/* Release nbytes of pending data: count the messages it completes as sent (or, sent == 0,
 * as dropped_unsendable) with one seq_cst add before waking flush/close waiters, and
 * recycle finished chunks. */
static size_t sink_consume(logpool__sink_t *s, size_t nbytes, int sent)
{
    uint64_t done_msgs = 0, done_bytes = 0;
    while (nbytes > 0 && s->pend_head != NULL) {
        chunk_t *c = s->pend_head;
        size_t step = c->used - s->pend_off;
        if (step > nbytes)
            step = nbytes;
        s->pend_off += step;
        s->pend_bytes -= step;
        nbytes -= step;
        uint32_t m = s->pend_msg;
        while (m < c->nmsgs && chunk_end(c, m) <= s->pend_off)
            m++;
        done_msgs += m - s->pend_msg;
        done_bytes += msg_start(c, m) - msg_start(c, s->pend_msg);
        s->pend_msg = m;
        if (s->pend_off == c->used) {
            s->pend_head = c->next;
            if (s->pend_head == NULL)
                s->pend_tail = NULL;
            s->pend_off = 0;
            s->pend_msg = 0;
            pthread_mutex_lock(&s->lock);
            chunk_recycle_locked(s, c);
            pthread_mutex_unlock(&s->lock);
        }
    }
    if (done_msgs > 0) {
        ATOMIC_SUB(&s->st.buffered_bytes, done_bytes);
        ATOMIC_SUB(&s->st.buffered_messages, done_msgs);
        if (sent) {
            ATOMIC_ADD(&s->st.sent_bytes, done_bytes);
            __atomic_fetch_add(&s->st.sent_messages, done_msgs, __ATOMIC_SEQ_CST);
        } else {
            __atomic_fetch_add(&s->st.dropped_unsendable, done_msgs, __ATOMIC_SEQ_CST);
        }
        if (__atomic_load_n(&s->progress_waiters, __ATOMIC_SEQ_CST) > 0) {
            pthread_mutex_lock(&s->lock);
            pthread_cond_broadcast(&s->progress);
            pthread_mutex_unlock(&s->lock);
        }
    }
    return (size_t)done_msgs;
}

/* nbytes more were written. */
size_t logpool__sink_consume(logpool__sink_t *s, size_t nbytes)
{
    return sink_consume(s, nbytes, 1);
}

/* Datagram sinks: up to max_msgs pending messages, one datagram each, in one sendmmsg on
 * the connected socket fd (non-blocking). The writer calls it with the GIL released (cffi
 * does), so the nginx worker's process spends no Python time per datagram. Returns how many
 * were sent (and consumed), or -errno when the first could not be. */
#define DATAGRAM_BATCH 64
int logpool__sink_send_datagrams(logpool__sink_t *s, int fd, int max_msgs)
{
    struct mmsghdr msgs[DATAGRAM_BATCH];
    struct iovec iov[DATAGRAM_BATCH];
    if (max_msgs > DATAGRAM_BATCH)
        max_msgs = DATAGRAM_BATCH;
    int n = 0;
    size_t off = s->pend_off;
    uint32_t m = s->pend_msg;
    for (chunk_t *c = s->pend_head; c != NULL && n < max_msgs; c = c->next, off = 0, m = 0) {
        for (; m < c->nmsgs && n < max_msgs; m++) {
            iov[n].iov_base = c->data + off;
            iov[n].iov_len = chunk_end(c, m) - off;
            off = chunk_end(c, m);
            memset(&msgs[n], 0, sizeof msgs[n]);
            msgs[n].msg_hdr.msg_iov = &iov[n];
            msgs[n].msg_hdr.msg_iovlen = 1;
            n++;
        }
    }
    if (n == 0)
        return 0;
    int sent = sendmmsg(fd, msgs, (unsigned)n, MSG_DONTWAIT | MSG_NOSIGNAL);
    if (sent < 0)
        return -errno;
    size_t bytes = 0;
    for (int i = 0; i < sent; i++)
        bytes += iov[i].iov_len;
    if (sent > 0) /* counted before consume() lets flush return */
        ATOMIC_ADD(&s->st.writes, 1);
    logpool__sink_consume(s, bytes);
    return sent;
}

/* A datagram the socket can never take (EMSGSIZE): skip the first pending message, counted
 * in dropped_unsendable, so one bad message cannot wedge the sink. Datagram writers never
 * leave pend_off inside a message (and a chunk always holds one). Returns its size. */
size_t logpool__sink_drop_message(logpool__sink_t *s)
{
    chunk_t *c = s->pend_head;
    if (c == NULL)
        return 0;
    size_t len = chunk_end(c, s->pend_msg) - s->pend_off;
    sink_consume(s, len, 0);
    return len;
}

/* The connection broke: the next write starts at the first byte of the message that was
 * not completely written. Returns how many of its bytes had been written (torn). */
size_t logpool__sink_rewind(logpool__sink_t *s)
{
    chunk_t *c = s->pend_head;
    if (c == NULL)
        return 0;
    size_t start = msg_start(c, s->pend_msg);
    size_t torn = s->pend_off - start;
    s->pend_off = start;
    s->pend_bytes += torn;
    if (torn > 0)
        ATOMIC_ADD(&s->st.resent_bytes, torn);
    return torn;
}

void logpool__sink_count(logpool__sink_t *s, int counter, uint64_t n)
{
    switch (counter) {
    case LOGPOOL__CONNECTS: ATOMIC_ADD(&s->st.connects, n); break;
    case LOGPOOL__CONNECT_FAILURES: ATOMIC_ADD(&s->st.connect_failures, n); break;
    case LOGPOOL__WRITE_ERRORS: ATOMIC_ADD(&s->st.write_errors, n); break;
    case LOGPOOL__RECONNECTS: ATOMIC_ADD(&s->st.reconnects, n); break;
    case LOGPOOL__WRITER_ERRORS: ATOMIC_ADD(&s->st.writer_errors, n); break;
    case LOGPOOL__WRITES: ATOMIC_ADD(&s->st.writes, n); break;
    case LOGPOOL__TLS_HANDSHAKE_FAILURES: ATOMIC_ADD(&s->st.tls_handshake_failures, n); break;
    case LOGPOOL__TLS_RESUMED: ATOMIC_ADD(&s->st.tls_resumed, n); break;
    default: break;
    }
}

void logpool__sink_set_connected(logpool__sink_t *s, int connected)
{
    ATOMIC_STORE(&s->st.connected, connected ? 1u : 0u);
}

void logpool__sink_writer_started(logpool__sink_t *s)
{
    pthread_mutex_lock(&s->lock);
    s->writer_running = 1;
    pthread_mutex_unlock(&s->lock);
}

/* The writer leaves: whatever is still buffered is abandoned (counted) and freed. */
void logpool__sink_writer_exit(logpool__sink_t *s)
{
    pthread_mutex_lock(&s->lock);
    uint64_t left = sink_unsent(s);
    ATOMIC_ADD(&s->st.abandoned_messages, left);
    sink_release_memory(s);
    s->chain_bytes = 0;
    s->pend_bytes = 0;
    s->pend_off = 0;
    s->pend_msg = 0;
    ATOMIC_STORE(&s->st.buffered_bytes, 0);
    ATOMIC_STORE(&s->st.buffered_messages, 0);
    ATOMIC_STORE(&s->st.connected, 0);
    s->writer_exited = 1;
    pthread_cond_broadcast(&s->progress);
    pthread_mutex_unlock(&s->lock);
}
