/*
 * The writer's side of the disk spool (logpool/engine/spool/ owns the files): take the
 * producer chain to write it out, release it once written (it then counts as spooled, not
 * buffered), put records read back from the spool in front of the writer's pending list,
 * and count what the spool adopted, skipped or could not take. The producer never touches
 * the disk: log_cdata only wakes the writer when the chain passes spill_bytes.
 */
#include "core.h" /* first: it defines _GNU_SOURCE */

#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <unistd.h>

/* pwritev until all of iov is written at *at (advanced). 0, or -1 with errno. */
static int write_all(int fd, struct iovec *iov, int n, int64_t *at)
{
    while (n > 0) {
        ssize_t w = pwritev(fd, iov, n, (off_t)*at);
        if (w < 0) {
            if (errno == EINTR)
                continue;
            return -1;
        }
        if (w == 0) {
            errno = EIO;
            return -1;
        }
        *at += w;
        while (n > 0 && (size_t)w >= iov->iov_len) {
            w -= (ssize_t)iov->iov_len;
            iov++;
            n--;
        }
        if (n > 0) {
            iov->iov_base = (char *)iov->iov_base + w;
            iov->iov_len -= (size_t)w;
        }
    }
    return 0;
}

enum { SPOOL_CORRUPT = 0, SPOOL_FULL = 1, SPOOL_WRITTEN = 2, SPOOL_BAD_ENTRY = 3 };

/* Move the producer chain to the spill list (writer only). Returns its bytes. */
size_t logpool__sink_spill_take(logpool__sink_t *s)
{
    pthread_mutex_lock(&s->lock);
    if (s->head != NULL && s->spill_head == NULL) {
        s->spill_head = s->head;
        s->spill_bytes_taken = s->chain_bytes;
        s->head = s->tail = NULL;
        s->chain_bytes = 0;
    }
    pthread_mutex_unlock(&s->lock);
    return s->spill_head != NULL ? s->spill_bytes_taken : 0;
}

/* The spill list is written to the spool (all of it): release its memory; its messages
 * count as spooled from now on. */
void logpool__sink_spill_done(logpool__sink_t *s, uint64_t spooled)
{
    uint64_t msgs = 0, bytes = 0;
    pthread_mutex_lock(&s->lock);
    for (chunk_t *c = s->spill_head; c != NULL;) {
        chunk_t *next = c->next;
        msgs += c->nmsgs;
        bytes += c->used;
        logpool__chunk_recycle_locked(s, c); /* uncharges what it was charged */
        c = next;
    }
    s->spill_head = NULL;
    s->spill_bytes_taken = 0;
    ATOMIC_ADD(&s->st.spooled_bytes, bytes);
    ATOMIC_ADD(&s->st.spooled_messages, msgs);
    logpool__sink_unbuffer(s, bytes, msgs);
    ATOMIC_ADD(&s->st.spool_writes, spooled);
    pthread_mutex_unlock(&s->lock);
}

/* Records read back from the spool, oldest first, become the writer's pending list (which
 * must be empty): data holds nmsgs frames ending at ends[i]. They are not charged to the
 * producers' max_buffer_length (nor to the chain's memory): producers get EFULL only when
 * memory and spool are both full, never because a replay is in flight. Returns 0 or
 * LOGPOOL_EFULL (no memory). */
int logpool__sink_inject(logpool__sink_t *s, const char *data, size_t len,
                         const uint32_t *ends, uint32_t nmsgs)
{
    if (s->pend_head != NULL || nmsgs == 0)
        return LOGPOOL_EINVAL;
    chunk_t *c = logpool__chunk_new((len + END_SLOT * nmsgs + 7) & ~(size_t)7);
    if (c == NULL)
        return LOGPOOL_EFULL;
    memcpy(c->data, data, len);
    c->used = len;
    for (uint32_t i = 0; i < nmsgs; i++)
        chunk_ends(c)[-1 - (long)i] = ends[i];
    c->nmsgs = nmsgs;
    c->room_charged = 0;
    c->replay = CHUNK_REPLAY; /* not charged to the sink's memory (producers' EFULL) */
    s->pend_head = s->pend_tail = c;
    s->pend_off = 0;
    s->pend_msg = 0;
    s->pend_bytes = len;
    s->batch_oldest_ns = logpool__now_ns();
    pthread_mutex_lock(&s->lock); /* producers read both under it */
    __atomic_store_n(&s->buffered_in_bytes, s->buffered_in_bytes + len, __ATOMIC_RELEASE);
    __atomic_store_n(&s->buffered_in_msgs, s->buffered_in_msgs + nmsgs, __ATOMIC_RELEASE);
    ATOMIC_STORE(&s->replay_inflight, len);
    pthread_mutex_unlock(&s->lock);
    ATOMIC_SUB(&s->st.spooled_bytes, len);
    ATOMIC_SUB(&s->st.spooled_messages, nmsgs);
    ATOMIC_ADD(&s->st.spool_replayed, nmsgs);
    return LOGPOOL_OK;
}

/* Records an earlier process left in the spool are this pool's now: accepted (so that
 * accepted = sent + dropped + abandoned + spooled + buffered holds) and spooled. */
void logpool__sink_adopted(logpool__sink_t *s, uint64_t nmsgs, uint64_t nbytes)
{
    ATOMIC_ADD(&s->st.spooled_bytes, nbytes);
    ATOMIC_ADD(&s->st.spooled_messages, nmsgs);
    pthread_mutex_lock(&s->lock); /* producers add to accepted_* under it, without a locked add */
    __atomic_store_n(&s->st.accepted_bytes, s->st.accepted_bytes + nbytes, __ATOMIC_SEQ_CST);
    __atomic_store_n(&s->st.accepted_messages, s->st.accepted_messages + nmsgs,
                     __ATOMIC_SEQ_CST);
    pthread_mutex_unlock(&s->lock);
}

void logpool__sink_spool_count(logpool__sink_t *s, int what, uint64_t n)
{
    if (what == SPOOL_CORRUPT)
        ATOMIC_ADD(&s->st.spool_corrupt, n);
    else if (what == SPOOL_FULL)
        ATOMIC_ADD(&s->st.dropped_spool_full, n);
    else if (what == SPOOL_WRITTEN)
        ATOMIC_ADD(&s->st.spool_writes, n);
    else if (what == SPOOL_BAD_ENTRY)
        ATOMIC_ADD(&s->st.spool_bad_entries, n);
}

/* Spooled records that will never be sent (behind a corrupt record found at replay, or too
 * large for the sink's max_message_size now) leave the spooled gauges for
 * dropped_spool_replay, which flush counts as done; reframed_bytes corrects spooled_bytes for
 * records re-framed at replay (their new size minus their old). */
void logpool__sink_spool_settle(logpool__sink_t *s, uint64_t dropped_msgs,
                                uint64_t dropped_bytes, int64_t reframed_bytes)
{
    ATOMIC_SUB(&s->st.spooled_bytes, dropped_bytes);
    ATOMIC_ADD(&s->st.spooled_bytes, (uint64_t)reframed_bytes);
    ATOMIC_SUB(&s->st.spooled_messages, dropped_msgs);
    if (dropped_msgs > 0) {
        __atomic_fetch_add(&s->st.dropped_spool_replay, dropped_msgs, __ATOMIC_SEQ_CST);
        if (__atomic_load_n(&s->progress_waiters, __ATOMIC_SEQ_CST) > 0) {
            pthread_mutex_lock(&s->lock);
            pthread_cond_broadcast(&s->progress);
            pthread_mutex_unlock(&s->lock);
        }
    }
}

/* Set before the writer starts, cleared once it adopted what earlier processes spooled. */
void logpool__sink_set_adopting(logpool__sink_t *s, int adopting)
{
    pthread_mutex_lock(&s->lock);
    s->adopting = adopting;
    if (!adopting)
        pthread_cond_broadcast(&s->progress);
    pthread_mutex_unlock(&s->lock);
}

/* The spool could not take the spill list: put it back in front of the producer chain (it
 * is older than anything appended since). */
void logpool__sink_spill_undo(logpool__sink_t *s)
{
    if (s->spill_head == NULL)
        return;
    chunk_t *last = s->spill_head;
    while (last->next != NULL)
        last = last->next;
    pthread_mutex_lock(&s->lock);
    if (s->head != NULL) {
        last->room_charged = chunk_room(last); /* no longer the producers' tail */
        s->memory += last->room_charged;
        last->next = s->head;
    } else {
        s->tail = last;
        s->chain_oldest_ns = logpool__now_ns();
    }
    s->head = s->spill_head;
    s->chain_bytes += s->spill_bytes_taken;
    s->spill_head = NULL;
    s->spill_bytes_taken = 0;
    pthread_mutex_unlock(&s->lock);
}

/* Messages on the writer's pending list. */
uint32_t logpool__sink_pending_messages(logpool__sink_t *s)
{
    uint32_t n = 0;
    uint32_t m = s->pend_msg;
    for (chunk_t *c = s->pend_head; c != NULL; c = c->next, m = 0)
        n += c->nmsgs - m;
    return n;
}

/* CRC-32 (IEEE 802.3, zlib's crc32), so that Python reads back what C wrote. */
static uint32_t crc_table[256];
static pthread_once_t crc_once = PTHREAD_ONCE_INIT;

static void crc_init(void)
{
    for (uint32_t i = 0; i < 256; i++) {
        uint32_t c = i;
        for (int k = 0; k < 8; k++)
            c = c & 1 ? 0xEDB88320u ^ (c >> 1) : c >> 1;
        crc_table[i] = c;
    }
}

static uint32_t crc32_of(const char *data, size_t len)
{
    uint32_t c = 0xFFFFFFFFu;
    for (size_t i = 0; i < len; i++)
        c = crc_table[(c ^ (uint8_t)data[i]) & 0xFF] ^ (c >> 8);
    return c ^ 0xFFFFFFFFu;
}

#define SPILL_IOV 512 /* iovecs per pwritev: a header and a frame each */

/* Write the spill list as spool records (u32 length, u32 CRC-32, frame; little endian) to
 * fd at offset, if all of it fits in room bytes. Called with the GIL released (cffi), so a
 * spill costs no Python per message. Returns the bytes written and sets *nmsgs, or -EFBIG
 * (does not fit in room: nothing written) or -errno (a partial write the caller truncates). */
int64_t logpool__sink_spill_write(logpool__sink_t *s, int fd, int64_t offset, uint64_t room,
                                  uint32_t *nmsgs)
{
    pthread_once(&crc_once, crc_init);
    uint64_t msgs = 0, bytes = 0;
    for (chunk_t *c = s->spill_head; c != NULL; c = c->next) {
        msgs += c->nmsgs;
        bytes += c->used;
    }
    if (bytes + 8 * msgs > room)
        return -EFBIG;
    struct iovec iov[SPILL_IOV];
    uint32_t headers[SPILL_IOV / 2][2];
    int n = 0;
    int64_t at = offset;
    for (chunk_t *c = s->spill_head; c != NULL; c = c->next) {
        for (uint32_t m = 0; m < c->nmsgs; m++) {
            uint32_t start = m == 0 ? 0 : chunk_end(c, m - 1);
            uint32_t len = chunk_end(c, m) - start;
            headers[n / 2][0] = len; /* x86 and arm64 Linux are little endian */
            headers[n / 2][1] = crc32_of(c->data + start, len);
            iov[n].iov_base = headers[n / 2];
            iov[n].iov_len = 8;
            iov[n + 1].iov_base = c->data + start;
            iov[n + 1].iov_len = len;
            n += 2;
            if (n == SPILL_IOV) {
                if (write_all(fd, iov, n, &at) != 0)
                    return -errno;
                n = 0;
            }
        }
    }
    if (n > 0 && write_all(fd, iov, n, &at) != 0)
        return -errno;
    *nmsgs = (uint32_t)msgs;
    return at - offset;
}

#define SCAN_BLOCK (4u << 20)

/* pread, retried when a signal interrupts it. */
static ssize_t pread_retry(int fd, char *buf, size_t cap, int64_t pos)
{
    ssize_t r;
    do
        r = pread(fd, buf, cap, (off_t)pos);
    while (r < 0 && errno == EINTR);
    return r;
}

/* Walk the spool records of fd from offset start to the end of the file (adoption): the
 * whole, intact records (*nmsgs, their frame bytes *nbytes) and where the readable part ends
 * (*end). Returns 1 when it ends at a torn or corrupt record, 0 at the end of the file, or
 * -errno. In C with the GIL released (cffi): a GiB of small records costs about a second,
 * not a Python loop per record. */
int logpool__spool_scan(int fd, int64_t start, uint64_t *nmsgs, uint64_t *nbytes,
                        int64_t *end)
{
    pthread_once(&crc_once, crc_init);
    struct stat st;
    if (fstat(fd, &st) != 0)
        return -errno;
    int64_t size = (int64_t)st.st_size, pos = start;
    uint64_t msgs = 0, bytes = 0;
    size_t cap = SCAN_BLOCK;
    char *buf = malloc(cap);
    if (buf == NULL)
        return -ENOMEM;
    int64_t buf_at = start;
    size_t buf_len = 0;
    int torn = 0;
    while (pos < size) {
        size_t rel = (size_t)(pos - buf_at);
        uint32_t head[2];
        if (rel + 8 > buf_len) { /* refill from pos */
            ssize_t r = pread_retry(fd, buf, cap, pos);
            if (r < 0) {
                free(buf);
                return -errno;
            }
            buf_at = pos, buf_len = (size_t)r, rel = 0;
            if (buf_len < 8) {
                torn = 1;
                break;
            }
        }
        memcpy(head, buf + rel, 8); /* little endian, as written */
        uint64_t length = head[0];
        if ((int64_t)length > size - pos - 8) {
            torn = 1;
            break;
        }
        if (rel + 8 + length > buf_len) { /* the record runs past the block: read it whole */
            if (8 + length > cap) {
                char *bigger = realloc(buf, 8 + length);
                if (bigger == NULL) {
                    free(buf);
                    return -ENOMEM;
                }
                buf = bigger;
                cap = 8 + length;
            }
            ssize_t r = pread_retry(fd, buf, cap, pos);
            if (r < 0) {
                free(buf);
                return -errno;
            }
            buf_at = pos, buf_len = (size_t)r, rel = 0;
            if (buf_len < 8 + length) {
                torn = 1;
                break;
            }
        }
        if (crc32_of(buf + rel + 8, (size_t)length) != head[1]) {
            torn = 1;
            break;
        }
        pos += 8 + (int64_t)length;
        msgs++;
        bytes += length;
    }
    free(buf);
    *nmsgs = msgs;
    *nbytes = bytes;
    *end = pos;
    return torn;
}
