/*
 * The message cursor over a sink's pending chain, for transports that handle whole
 * messages (RELP, HTTP bodies, Kafka records, forward chunks): one view per message after
 * those already handed over, and the release of the first `count` with a fate once the
 * collector answered. Unanswered messages stay at the head of the chain, so a broken
 * session resends them all.
 */
#include "core.h" /* first: it defines _GNU_SOURCE */

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
