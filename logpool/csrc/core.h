/*
 * What the C core's files share: the pool and sink structures, the chunk layout, atomics
 * and time helpers. Internal; not installed.
 *
 * A sink's buffer is a chain of chunks. Producers append whole frames to the tail chunk under
 * the sink's mutex (a message never spans two chunks); each chunk records where its messages
 * end, so a writer whose connection broke can resend from the start of the first message that
 * was not completely written. The writer takes the whole chain at once and walks it without
 * the lock.
 *
 * Files: hotpath.c (log_cdata and the producer's end of the chain), chunks.c (chunk
 * allocation, recycling and the free-list reserve), chain.c (the writer's end), cursor.c
 * (whole messages for acknowledging transports), datagram.c (sendmmsg), relp.c (RELP
 * frames), kafka.c (the librdkafka hand-off), spool.c (the writer's side of the disk spool),
 * pool.c (lifecycle and the ABI), codes.c (messages, version), process.c (fork generation,
 * clock, last error), runtime.c (starting the embedded Python). Agent mode: ring.h (the
 * shared layout), producer.c, agent_config.c and agentmode.c (the producer's side),
 * producer_abi.c (liblogpool_producer.so's ABI), ring_agent.c (the agent's side).
 */
#ifndef LOGPOOL_CORE_H
#define LOGPOOL_CORE_H

#define _GNU_SOURCE
#include <errno.h>
#include <pthread.h>
#include <stdint.h>
#include <time.h>

#include "logpool_internal.h"

#define LOGPOOL_API __attribute__((visibility("default")))

enum { POOL_OPEN = 0, POOL_CLOSING = 1, POOL_CLOSED = 2 };

/* How long logpool_close waits for writers to notice "stop" (they check it at least every
 * socket time slice, 50 ms) before it leaves them and leaks the pool rather than freeing
 * memory a thread may still touch. */
#define WRITER_EXIT_GRACE_MS 5000
/* Free standard chunks a sink keeps, pre-faulted by its writer: producers take chunks whose
 * pages are already mapped, instead of page-faulting fresh malloc memory in log_cdata. */
#define FREE_CHUNKS_KEPT 16
/* Beyond that reserve a sink keeps the chunks a burst used (its high-water mark of chunks
 * out at once), so that the next burst writes into pages already mapped instead of
 * faulting fresh ones in log_cdata. Every FREE_CACHE_DECAY_MS the writer lowers the mark to
 * what the last step used, or half, back to the reserve; a step with no burst beyond the
 * pool's FREE_CACHE_MAX_BYTES (shared among its sinks) trims it to that: a pool idle for a
 * step keeps at most that much. While bursts recur the free chunks are at most those a burst
 * had in use, which the chain's bound already covers. */
#define FREE_CACHE_MAX_BYTES (8u << 20)
#define FREE_CACHE_DECAY_MS 1000
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
    uint32_t replay; /* not charged to the sink's memory: CHUNK_REPLAY (records read back from
                      * the spool, not the producers' share, nor per-item retries copied
                      * from them) or CHUNK_REQUEUED (per-item retries of the producers'
                      * messages: still their share, counted in buffered) */
    uint32_t out; /* a standard chunk in the chain or with the writer: counted in chunks_out */
    char data[];
} chunk_t;

#define END_SLOT sizeof(uint32_t)
#define CHUNK_REPLAY 1
#define CHUNK_REQUEUED 2

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
    char *name; /* the config's name for it (logpool_sink_index); owned */
    pthread_mutex_t lock;
    pthread_cond_t wake;     /* the writer waits here for a batch or stop */
    pthread_cond_t progress; /* flush/close wait here for sent messages or writer exit */

    size_t flush_limit;
    size_t spill_bytes; /* a spool is configured: wake the writer to spill at this much */
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
    int free_keep;       /* free chunks kept: the reserve, or what the last burst used */
    int free_keep_max;   /* what a decay step trims it to: this sink's share of the cap */
    int chunks_out;      /* standard chunks in the chain or with the writer */
    int chunks_out_peak; /* the most at once since the last decay step */
    uint64_t decay_at_ns; /* the writer's next decay step */
    int refill_wanted; /* a producer took the free list below half: the writer refills it */
    /* Memory the chain holds: frames and their end slots, plus the room of every chunk
     * retired because the next frame did not fit (memory too, never filled). Bounded by
     * max_memory, so RSS follows max_buffer_length for any message size. Under lock. */
    size_t memory;
    size_t max_memory;
    /* Buffered = what producers added (here, under lock) minus what the writer released
     * (buffered_out_*): each side stores only its own counters, so log_cdata does no locked
     * read-modify-write beside the mutex; readers use logpool__sink_buffered(). */
    uint64_t buffered_in_bytes;
    uint64_t buffered_in_msgs;
    int writer_waiting;
    /* The spiller thread (sinks with a spool) sleeps on spill_wake; producers signal it once
     * the buffered bytes reach spill_bytes, whatever the writer is doing. */
    int spiller_waiting;
    pthread_cond_t spill_wake;
    int flush_requested;
    int stop;
    int writer_running;
    int writer_exited;
    int progress_waiters; /* seq_cst atomics: read by the writer without the lock */
    int adopting; /* the writer is still taking over what earlier processes spooled: flush
                   * waits for it, so that what it adopts counts as accepted before the call */
    /* Bytes of records read back from the spool still on the writer's pending list (also in
     * buffered_bytes): replay is not charged to max_buffer_length. Atomic. */
    uint64_t replay_inflight;

    /* Writer side: only the sink's writer thread touches these. */
    chunk_t *spill_head; /* the producer chain taken for the spool: writer only */
    size_t spill_bytes_taken;
    chunk_t *pend_head;
    chunk_t *pend_tail;
    size_t pend_off;  /* bytes of pend_head already written */
    uint32_t pend_msg; /* first message of pend_head not completely written */
    size_t pend_bytes;
    uint64_t batch_oldest_ns;
    /* Stored by the writer thread only (or under lock once it left), with release. */
    uint64_t buffered_out_bytes;
    uint64_t buffered_out_msgs;

    logpool_stats_t st; /* every field accessed with __atomic builtins */
};

struct logpool_s {
    int nsinks;
    /* Agent mode (agentmode.c): the pool writes this process's ring; no sinks, no Python. */
    struct logpool__producer_s *producer;
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
/* A counter only one thread (or only holders of one lock) writes: a plain load and store,
 * not a locked add; readers load it atomically. */
#define OWNED_ADD(p, n) __atomic_store_n((p), __atomic_load_n((p), __ATOMIC_RELAXED) + (n), \
                                         __ATOMIC_RELAXED)

/* ---- process.c ---- */

/* Bumped in a forked child: pools made before the fork belong to the parent. */
extern volatile unsigned logpool__fork_gen;

static inline int logpool__pool_inherited(const logpool_t *pool)
{
    return pool->generation != logpool__fork_gen;
}

/* The exit fallback closes what is registered; close unregisters. */
void logpool__pool_register(logpool_t *pool);
void logpool__pool_unregister(logpool_t *pool);

/* ---- agentmode.c: a pool in agent mode hands every call to producer.c ---- */

/* 0: config_json is not an agent-mode config; 1: it is, *out is the pool or NULL (the last
 * error says why). */
int logpool__agent_pool_new(const char *config_json, logpool_t **out);
void logpool__agent_pool_free(logpool_t *pool);

/* ---- chunks.c ---- */

chunk_t *logpool__chunk_new(size_t cap);
/* Memory one standard chunk of s takes (header included). */
static inline size_t logpool__chunk_footprint(const logpool__sink_t *s)
{
    return sizeof(chunk_t) + s->chunk_size;
}
void logpool__chain_free(chunk_t *c);
void logpool__chunk_recycle_locked(logpool__sink_t *s, chunk_t *c);
void logpool__cache_decay_locked(logpool__sink_t *s, uint64_t now, chunk_t **drop);
void logpool__sink_refill(logpool__sink_t *s);

/* ---- chain.c ---- */

void logpool__sink_release_memory(logpool__sink_t *s);
/* Release nbytes of pending data, counting the messages it completes as `fate`:
 * LOGPOOL__DONE_SENT, LOGPOOL__DONE_UNSENDABLE or LOGPOOL__DONE_REJECTED. */
size_t logpool__sink_consume_as(logpool__sink_t *s, size_t nbytes, int sent);

/* Accepted messages with no fate yet: neither sent, dropped as unsendable, nor already
 * counted as abandoned (a writer that left counted what it held then). */
static inline uint64_t logpool__sink_unsent(logpool__sink_t *s)
{
    uint64_t accepted = ATOMIC_LOAD(&s->st.accepted_messages);
    uint64_t done = ATOMIC_LOAD(&s->st.sent_messages) + ATOMIC_LOAD(&s->st.dropped_unsendable) +
                    ATOMIC_LOAD(&s->st.dropped_rejected) + ATOMIC_LOAD(&s->st.abandoned_messages) +
                    ATOMIC_LOAD(&s->st.spooled_messages) +
                    ATOMIC_LOAD(&s->st.dropped_spool_replay);
    return accepted > done ? accepted - done : 0;
}

/* Accepted and not yet released by the writer. out is read first: every message it counts
 * was counted in before (the writer took it under the lock after the producer added it). */
static inline uint64_t logpool__sink_buffered_bytes(logpool__sink_t *s)
{
    uint64_t out = __atomic_load_n(&s->buffered_out_bytes, __ATOMIC_ACQUIRE);
    return __atomic_load_n(&s->buffered_in_bytes, __ATOMIC_ACQUIRE) - out;
}

static inline uint64_t logpool__sink_buffered_messages(logpool__sink_t *s)
{
    uint64_t out = __atomic_load_n(&s->buffered_out_msgs, __ATOMIC_ACQUIRE);
    return __atomic_load_n(&s->buffered_in_msgs, __ATOMIC_ACQUIRE) - out;
}

/* The writer released (or the pool dropped) bytes/msgs from the buffer. */
static inline void logpool__sink_unbuffer(logpool__sink_t *s, uint64_t bytes, uint64_t msgs)
{
    /* Locked adds: the writer (consume) and the spiller (spill_done) both release. */
    __atomic_fetch_add(&s->buffered_out_bytes, bytes, __ATOMIC_RELEASE);
    __atomic_fetch_add(&s->buffered_out_msgs, msgs, __ATOMIC_RELEASE);
}

/* Under sink->lock, the writer gone: nothing is buffered any more. */
static inline void logpool__sink_unbuffer_all_locked(logpool__sink_t *s)
{
    __atomic_store_n(&s->buffered_out_bytes, s->buffered_in_bytes, __ATOMIC_RELEASE);
    __atomic_store_n(&s->buffered_out_msgs, s->buffered_in_msgs, __ATOMIC_RELEASE);
}

/* ---- time ---- */

static inline uint64_t logpool__deadline_after(int timeout_ms)
{
    if (timeout_ms < 0)
        return UINT64_MAX;
    return logpool__now_ns() + (uint64_t)timeout_ms * 1000000u;
}

/* Returns ETIMEDOUT once deadline_ns has passed; UINT64_MAX waits without a limit. */
static inline int logpool__cond_wait_until(pthread_cond_t *cond, pthread_mutex_t *lock,
                                           uint64_t deadline_ns)
{
    if (deadline_ns == UINT64_MAX)
        return pthread_cond_wait(cond, lock);
    struct timespec ts;
    ts.tv_sec = (time_t)(deadline_ns / 1000000000u);
    ts.tv_nsec = (long)(deadline_ns % 1000000000u);
    return pthread_cond_timedwait(cond, lock, &ts);
}

#endif /* LOGPOOL_CORE_H */
