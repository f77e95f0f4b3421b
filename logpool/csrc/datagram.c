/*
 * Datagram sinks (udp://, unixgram:): one datagram per message, many per sendmmsg.
 */
#include "core.h" /* first: it defines _GNU_SOURCE */

#include <string.h>
#include <sys/socket.h>


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
    logpool__sink_consume_as(s, len, LOGPOOL__DONE_UNSENDABLE);
    return len;
}
