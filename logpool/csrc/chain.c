/*
 * The writer's end of a sink's chain: wait for a batch, take it, walk it as iovecs, consume
 * what was written, rewind after a break, and the counters the writer keeps. Only the
 * sink's writer thread calls these (see logpool_internal.h).
 */
#include "core.h" /* first: it defines _GNU_SOURCE */

#include <stdlib.h>
#include <string.h>


#define STATS_FIELDS(XX)                                                                     \
    XX(accepted_messages) XX(accepted_bytes) XX(sent_messages) XX(sent_bytes)                \
    XX(dropped_full) XX(dropped_too_big) XX(dropped_closed) XX(abandoned_messages)           \
    XX(connects) XX(connect_failures) XX(write_errors) XX(reconnects) XX(buffered_bytes)     \
    XX(connected) XX(buffered_messages) XX(writes) XX(resent_bytes) XX(writer_errors)         \
    XX(tls_handshake_failures) XX(tls_resumed) XX(dropped_unsendable) XX(unacked_messages)  \
    XX(resent_messages) XX(dropped_rejected) XX(spooled_bytes) XX(spooled_messages)         \
    XX(dropped_spool_full) XX(spool_writes) XX(spool_replayed) XX(spool_corrupt)         \
    XX(spool_bad_entries) XX(dropped_spool_replay) XX(retried_messages) XX(dead_letters)

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
    out->buffered_bytes = logpool__sink_buffered_bytes(s);
    out->buffered_messages = logpool__sink_buffered_messages(s);
}

void logpool__sink_release_memory(logpool__sink_t *s)
{
    logpool__chain_free(s->head);
    logpool__chain_free(s->spill_head);
    logpool__chain_free(s->pend_head);
    logpool__chain_free(s->free_chunks);
    s->head = s->tail = s->pend_head = s->pend_tail = s->free_chunks = s->spill_head = NULL;
    s->free_count = 0;
    s->chunks_out = 0;
    s->memory = 0;
}

void logpool__sink_cache(logpool__sink_t *s, logpool__cache_t *out)
{
    pthread_mutex_lock(&s->lock);
    size_t each = logpool__chunk_footprint(s);
    out->cached_bytes = (uint64_t)s->free_count * each;
    out->reserve_bytes = (uint64_t)FREE_CHUNKS_KEPT * each;
    out->limit_bytes = (uint64_t)s->free_keep_max * each;
    pthread_mutex_unlock(&s->lock);
}

/* The producers' share of the buffer (records read back from the spool are not theirs). */
static uint64_t producers_buffered(logpool__sink_t *s)
{
    uint64_t buffered = logpool__sink_buffered_bytes(s);
    uint64_t replay = ATOMIC_LOAD(&s->replay_inflight);
    return buffered > replay ? buffered - replay : 0;
}

/* The spiller's wait, under s->lock: it spills the producer chain as soon as the buffer
 * reaches spill_bytes, counting what the writer holds too (a large batch in flight leaves
 * less room for the chain), so EFULL comes only when memory and the spool are both full. */
static int spiller_wait_locked(logpool__sink_t *s, int mode, uint64_t deadline)
{
    for (;;) {
        if (s->stop)
            return LOGPOOL__WAIT_STOP;
        if (mode == LOGPOOL__WAIT_FOR_SPILL && s->spill_bytes > 0 && s->head != NULL &&
            producers_buffered(s) >= s->spill_bytes)
            return LOGPOOL__WAIT_SPILL;
        if (logpool__now_ns() >= deadline)
            return LOGPOOL__WAIT_TIMEOUT;
        s->spiller_waiting = mode == LOGPOOL__WAIT_FOR_SPILL;
        logpool__cond_wait_until(&s->spill_wake, &s->lock, deadline);
        s->spiller_waiting = 0;
    }
}

int logpool__sink_wait(logpool__sink_t *s, int mode, int timeout_ms)
{
    uint64_t user_deadline = logpool__deadline_after(timeout_ms);
    int result = LOGPOOL__WAIT_TIMEOUT;
    chunk_t *drop = NULL;
    pthread_mutex_lock(&s->lock);
    if (mode == LOGPOOL__WAIT_FOR_SPILL || mode == LOGPOOL__WAIT_SPILLER_IDLE) {
        result = spiller_wait_locked(s, mode, user_deadline);
        pthread_mutex_unlock(&s->lock);
        return result;
    }
    for (;;) {
        if (s->stop) {
            result = LOGPOOL__WAIT_STOP;
            break;
        }
        if (s->refill_wanted) { /* producers are using up the pre-faulted reserve */
            pthread_mutex_unlock(&s->lock);
            logpool__sink_refill(s);
            pthread_mutex_lock(&s->lock);
            continue;
        }
        uint64_t now = logpool__now_ns();
        logpool__cache_decay_locked(s, now, &drop);
        uint64_t wake_at = user_deadline;
        if (s->free_keep > FREE_CHUNKS_KEPT && s->decay_at_ns < wake_at)
            wake_at = s->decay_at_ns; /* idle memory goes back even without a batch */
        if (mode == LOGPOOL__WAIT_FOR_STOP && s->spill_bytes > 0 && /* not ..._NO_SPILL */
            s->chain_bytes >= s->spill_bytes) {
            result = LOGPOOL__WAIT_SPILL;
            break;
        }
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
        logpool__cond_wait_until(&s->wake, &s->lock, wake_at);
        s->writer_waiting = 0;
    }
    pthread_mutex_unlock(&s->lock);
    logpool__chain_free(drop);
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
    int refill = s->refill_wanted || s->free_count < FREE_CHUNKS_KEPT;
    pthread_mutex_unlock(&s->lock);
    if (refill)
        logpool__sink_refill(s);
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
size_t logpool__sink_consume_as(logpool__sink_t *s, size_t nbytes, int sent)
{
    uint64_t done_msgs = 0, done_bytes = 0, replay_done = 0;
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
        if (c->replay == CHUNK_REPLAY)
            replay_done += msg_start(c, m) - msg_start(c, s->pend_msg);
        s->pend_msg = m;
        if (s->pend_off == c->used) {
            s->pend_head = c->next;
            if (s->pend_head == NULL)
                s->pend_tail = NULL;
            s->pend_off = 0;
            s->pend_msg = 0;
            pthread_mutex_lock(&s->lock);
            logpool__chunk_recycle_locked(s, c);
            pthread_mutex_unlock(&s->lock);
        }
    }
    if (sent == LOGPOOL__DONE_REQUEUED) /* still buffered, in a copy of the same origin */
        return (size_t)done_msgs;
    if (done_msgs > 0) {
        if (replay_done > 0) /* producers read both under the lock: never a spurious EFULL */
            pthread_mutex_lock(&s->lock);
        logpool__sink_unbuffer(s, done_bytes, done_msgs);
        if (replay_done > 0) {
            ATOMIC_SUB(&s->replay_inflight, replay_done);
            pthread_mutex_unlock(&s->lock);
        }
        if (sent == LOGPOOL__DONE_SENT) {
            ATOMIC_ADD(&s->st.sent_bytes, done_bytes);
            __atomic_fetch_add(&s->st.sent_messages, done_msgs, __ATOMIC_SEQ_CST);
        } else if (sent == LOGPOOL__DONE_REJECTED) {
            __atomic_fetch_add(&s->st.dropped_rejected, done_msgs, __ATOMIC_SEQ_CST);
        } else if (sent == LOGPOOL__DONE_SPOOLED) { /* still in the spool file: back there */
            ATOMIC_ADD(&s->st.spooled_bytes, done_bytes);
            ATOMIC_ADD(&s->st.spooled_messages, done_msgs);
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
    return logpool__sink_consume_as(s, nbytes, LOGPOOL__DONE_SENT);
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
    case LOGPOOL__RESENT_MESSAGES: ATOMIC_ADD(&s->st.resent_messages, n); break;
    case LOGPOOL__RETRIED_MESSAGES: ATOMIC_ADD(&s->st.retried_messages, n); break;
    case LOGPOOL__DEAD_LETTERS: ATOMIC_ADD(&s->st.dead_letters, n); break;
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
    uint64_t left = logpool__sink_unsent(s);
    ATOMIC_ADD(&s->st.abandoned_messages, left);
    logpool__sink_release_memory(s);
    s->chain_bytes = 0;
    s->pend_bytes = 0;
    s->pend_off = 0;
    s->pend_msg = 0;
    logpool__sink_unbuffer_all_locked(s);
    ATOMIC_STORE(&s->st.connected, 0);
    ATOMIC_STORE(&s->replay_inflight, 0);
    s->adopting = 0;
    s->writer_exited = 1;
    pthread_cond_broadcast(&s->progress);
    pthread_mutex_unlock(&s->lock);
}
