/*
 * The hot path: log_cdata and the producer's end of a sink's chunk chain. Plain C, never
 * Python; one mutex and one memcpy per message, no syscall unless the writer must be woken.
 */
#include "core.h" /* first: it defines _GNU_SOURCE */
#include "producer.h"

#include <stdlib.h>
#include <string.h>

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
        if (s->free_count < FREE_CHUNKS_KEPT / 2 && !s->refill_wanted) {
            s->refill_wanted = 1; /* once per half reserve: a rare wake, not per message */
            if (s->writer_waiting)
                pthread_cond_signal(&s->wake);
        }
    } else if (need <= s->chunk_size) {
        c = logpool__chunk_new(s->chunk_size);
    } else {
        c = logpool__chunk_new(need);
    }
    if (c == NULL)
        return NULL;
    if (c->cap == s->chunk_size) { /* the high-water mark: keep as many for the next burst */
        c->out = 1;
        if (++s->chunks_out > s->chunks_out_peak)
            s->chunks_out_peak = s->chunks_out;
        /* the burst's chunks and the reserve the writer refills meanwhile */
        if (s->chunks_out + FREE_CHUNKS_KEPT > s->free_keep)
            s->free_keep = s->chunks_out + FREE_CHUNKS_KEPT;
    }
    tail_retire_locked(s);
    if (s->tail != NULL)
        s->tail->next = c;
    else
        s->head = c;
    s->tail = c;
    return c;
}

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
    if (__builtin_expect(pool->producer != NULL, 0)) /* agent mode: this process's ring */
        return logpool__producer_log(pool->producer, socket_id, msg, len);
    if (socket_id < 0 || socket_id >= pool->nsinks)
        return LOGPOOL_ENOSINK;
    logpool__sink_t *s = &pool->sinks[socket_id];
    if (msg == NULL && len > 0)
        return LOGPOOL_EINVAL;
    if (ATOMIC_LOAD(&pool->state) != POOL_OPEN || logpool__pool_inherited(pool)) {
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
    /* Records replayed from the spool are buffered too, but not the producers' share: a
     * replay never makes producers' messages EFULL. */
    uint64_t buffered = logpool__sink_buffered_bytes(s);
    uint64_t replay = ATOMIC_LOAD(&s->replay_inflight);
    buffered = buffered > replay ? buffered - replay : 0;
    if (buffered + frame > s->max_buffer_length ||
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
    /* Written under the lock only: plain stores, no locked add (they cost more than the
     * memcpy). buffered_in_* are read with acquire loads: release stores. */
    OWNED_ADD(&s->st.accepted_messages, 1);
    OWNED_ADD(&s->st.accepted_bytes, frame);
    __atomic_store_n(&s->buffered_in_bytes, s->buffered_in_bytes + frame, __ATOMIC_RELEASE);
    __atomic_store_n(&s->buffered_in_msgs, s->buffered_in_msgs + 1, __ATOMIC_RELEASE);
    /* Wake the writer once per batch: when it needs a deadline (first byte) or when the
     * batch reached flush_limit. Otherwise no syscall. */
    if (s->writer_waiting &&
        (before == 0 || (before < s->flush_limit && s->chain_bytes >= s->flush_limit) ||
         (s->spill_bytes > 0 && before < s->spill_bytes && s->chain_bytes >= s->spill_bytes)))
        pthread_cond_signal(&s->wake);
    /* Sinks with a spool: past the spill mark, whatever the writer is doing (connecting,
     * awaiting an answer), the spiller moves the chain to disk. One flag read otherwise. */
    if (s->spiller_waiting && buffered + frame >= s->spill_bytes)
        pthread_cond_signal(&s->spill_wake);
    pthread_mutex_unlock(&s->lock);
    return (int)len;
}
