/*
 * RELP sinks (relp://, relp+tls://): pending messages framed as RELP "syslog" commands,
 * "TXNR syslog LEN DATA\n", straight from the chunks into the writer's send buffer; and
 * whole messages consumed once the collector acknowledged them. Unacknowledged messages
 * stay at the head of the chain, so a broken session resends them all.
 */
#include "core.h" /* first: it defines _GNU_SOURCE */

#include <stdio.h>
#include <string.h>

#define RELP_TXNR_MAX 999999999u /* txnr wraps to 1 after this (RFC-style RELP spec) */

static uint32_t msg_begin(const chunk_t *c, uint32_t m)
{
    return m == 0 ? 0 : chunk_end(c, m - 1);
}

/* Frame up to max_msgs pending messages, after the first `skip` (already sent, awaiting
 * their acknowledgement), into out[0..cap). The first gets first_txnr. A message's one
 * trailing "\n" is left out: the RELP trailer ends it. Stops at the first frame that does
 * not fit (a caller passes a buffer that fits the largest frame). Returns the number framed;
 * *used is the bytes written. */
int logpool__sink_relp_frames(logpool__sink_t *s, char *out, size_t cap, uint32_t skip,
                              uint32_t max_msgs, uint32_t first_txnr, size_t *used)
{
    size_t pos = 0;
    uint32_t n = 0, txnr = first_txnr;
    uint32_t m = s->pend_msg;
    for (chunk_t *c = s->pend_head; c != NULL && n < max_msgs; c = c->next, m = 0) {
        for (; m < c->nmsgs && n < max_msgs; m++) {
            if (skip > 0) {
                skip--;
                continue;
            }
            const char *msg = c->data + msg_begin(c, m);
            size_t len = chunk_end(c, m) - msg_begin(c, m);
            if (len > 0 && msg[len - 1] == '\n')
                len--;
            char header[48];
            int hl = snprintf(header, sizeof header, "%u syslog %zu ", txnr, len);
            if (hl < 0 || pos + (size_t)hl + len + 1 > cap)
                goto done;
            memcpy(out + pos, header, (size_t)hl);
            memcpy(out + pos + hl, msg, len);
            out[pos + hl + len] = '\n';
            pos += (size_t)hl + len + 1;
            n++;
            txnr = txnr == RELP_TXNR_MAX ? 1 : txnr + 1;
        }
    }
done:
    *used = pos;
    return (int)n;
}
