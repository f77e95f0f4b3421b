/*
 * The message cursor over a sink's pending chain, for transports that handle whole
 * messages (RELP, HTTP bodies, Kafka records, forward chunks): one view per message after
 * those already handed over, and the release of the first `count` with a fate once the
 * collector answered. Unanswered messages stay at the head of the chain, so a broken
 * session resends them all.
 */
#include "core.h" /* first: it defines _GNU_SOURCE */

#include <string.h>

/* The first `count` pending messages are done (acknowledged, or refused for good): release
 * them with that fate. Returns how many were released. */
size_t logpool__sink_consume_messages(logpool__sink_t *s, uint32_t count, int fate)
{
    size_t bytes = 0;
    uint32_t left = count;
    size_t off = s->pend_off;
    uint32_t m = s->pend_msg;
    for (chunk_t *c = s->pend_head; c != NULL && left > 0; c = c->next, off = 0, m = 0) {
        for (; m < c->nmsgs && left > 0; m++, left--) {
            bytes += chunk_end(c, m) - off;
            off = chunk_end(c, m);
        }
    }
    return logpool__sink_consume_as(s, bytes, fate);
}

/* Walks the pending messages from the cursor, one at a time. */
typedef struct {
    chunk_t *c;
    size_t off;  /* where the next message starts */
    uint32_t m;  /* the next message in c */
} walk_t;

/* The next pending message (its start and end in w->c), or 0 when there is none. */
static int walk_next(walk_t *w, size_t *start, size_t *end)
{
    while (w->c != NULL && w->m >= w->c->nmsgs) {
        w->c = w->c->next;
        w->off = 0;
        w->m = 0;
    }
    if (w->c == NULL)
        return 0;
    *start = w->off;
    *end = chunk_end(w->c, w->m);
    w->off = *end;
    w->m++;
    return 1;
}

/* Release the first n pending messages in runs of one fate, oldest first. */
static void settle_runs(logpool__sink_t *s, const uint8_t *fates, uint32_t n)
{
    for (uint32_t i = 0; i < n;) {
        uint32_t run = 1;
        while (i + run < n && fates[i + run] == fates[i])
            run++;
        logpool__sink_consume_messages(s, run, fates[i]);
        i += run;
    }
}

int logpool__sink_settle_each(logpool__sink_t *s, const uint8_t *fates, uint32_t n)
{
    /* The copy holds the requeued messages, then the rest of the chunk the n-th message is
     * in: the copy replaces the head of the pending list, whose cursor then starts at 0 (a
     * chunk after the head always starts at its first message). */
    walk_t w = {s->pend_head, s->pend_off, s->pend_msg};
    size_t bytes = 0, start, end;
    uint32_t msgs = 0;
    for (uint32_t i = 0; i < n; i++) {
        if (!walk_next(&w, &start, &end))
            return -1; /* fewer pending messages than fates: nothing settled */
        if (fates[i] == LOGPOOL__DONE_REQUEUED) {
            bytes += end - start;
            msgs++;
        }
    }
    if (msgs == 0) {
        settle_runs(s, fates, n);
        return 0;
    }
    chunk_t *last = w.c;
    uint32_t rest = last != NULL && w.m < last->nmsgs ? last->nmsgs - w.m : 0;
    if (rest > 0)
        bytes += last->used - w.off;
    chunk_t *copy = logpool__chunk_new((bytes + END_SLOT * (msgs + rest) + 7) & ~(size_t)7);
    if (copy == NULL)
        return -1;
    /* The pending list is all records read back from the spool, or all the producers'
     * (a replay is injected, and the chain taken, only onto an empty list): the copy keeps
     * its origin, so records read back stay out of the producers' share (replay_inflight)
     * and never make log_cdata refuse while the spool has room. */
    copy->replay = s->pend_head->replay == CHUNK_REPLAY ? CHUNK_REPLAY : CHUNK_REQUEUED;
    walk_t r = {s->pend_head, s->pend_off, s->pend_msg};
    for (uint32_t i = 0; i < n + rest; i++) {
        walk_next(&r, &start, &end);
        if (i >= n || fates[i] == LOGPOOL__DONE_REQUEUED) {
            memcpy(copy->data + copy->used, r.c->data + start, end - start);
            copy->used += end - start;
            chunk_ends(copy)[-1 - (long)copy->nmsgs++] = (uint32_t)copy->used;
        }
    }
    settle_runs(s, fates, n); /* the rest of the last chunk moves too: */
    if (rest > 0)
        logpool__sink_consume_messages(s, rest, LOGPOOL__DONE_REQUEUED);
    copy->next = s->pend_head;
    s->pend_head = copy;
    if (s->pend_tail == NULL)
        s->pend_tail = copy;
    s->pend_off = 0;
    s->pend_msg = 0;
    s->pend_bytes += copy->used;
    return (int)msgs;
}

/* One iovec per pending message after the first `skip` (handed over already, awaiting
 * their report), in order, at most max_iov of them and max_bytes in all (always at least
 * one message). For transports that frame messages themselves (HTTP bodies, Kafka
 * records). Returns how many. */
int logpool__sink_message_iov(logpool__sink_t *s, logpool__iov_t *iov, int max_iov,
                              size_t max_bytes, uint32_t skip)
{
    int n = 0;
    size_t total = 0, off = s->pend_off;
    uint32_t m = s->pend_msg;
    for (chunk_t *c = s->pend_head; c != NULL && n < max_iov; c = c->next, off = 0, m = 0) {
        for (; m < c->nmsgs && n < max_iov; m++) {
            if (skip > 0) {
                skip--;
                off = chunk_end(c, m);
                continue;
            }
            size_t len = chunk_end(c, m) - off;
            if (n > 0 && total + len > max_bytes)
                return n;
            iov[n].base = c->data + off;
            iov[n].len = len;
            total += len;
            off = chunk_end(c, m);
            n++;
        }
    }
    return n;
}

void logpool__sink_set_unacked(logpool__sink_t *s, uint64_t n)
{
    ATOMIC_STORE(&s->st.unacked_messages, n);
}
