/*
 * Agent mode, the agent's side (ring_agent.h, ring.h). Every byte of a ring is untrusted:
 * the geometry is read once at open and kept privately; each record's length and sink are
 * read once and bounded before the record goes to the agent's pool through log_cdata,
 * straight from the ring. A producer may truncate its file under the agent's mapping: the
 * SIGBUS that follows maps a page of zeros over the missing one and returns (nothing
 * unwinds through log_cdata's mutex), and the ring is dropped as broken. Garbage resets that
 * ring to its write position, counted; a walk is bounded by the ring's size and a per-call
 * budget, so it can neither hang nor allocate.
 */
#include "core.h" /* first: it defines _GNU_SOURCE */
#include "ring.h"
#include "ring_agent.h"

#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

struct logpool__ring_s {
    int fd;
    ring_header_t *hdr;
    const char *data;
    size_t map_bytes;
    uint64_t data_bytes; /* private copies: the header's may change under us */
    uint64_t mask;
    uint32_t nsinks;
    uint64_t pid, start_time, created_unix_ns;
    uint64_t released;   /* our read_pos */
    uint64_t scan;       /* how far we took */
    uint64_t dup_until;  /* records before this were taken by an earlier agent */
    uint64_t taken, resets, dups, too_big;
    int broken;          /* the file changed size under us: never read again */
};

/* -- the SIGBUS guard: a page of zeros for a page the file no longer has -- */

static __thread const char *guard_lo, *guard_hi;
static __thread volatile int guard_faulted;
static struct sigaction previous_bus;
static uintptr_t page_size;
static pthread_once_t guard_once = PTHREAD_ONCE_INIT;

static void on_sigbus(int sig, siginfo_t *info, void *ctx)
{
    const char *addr = info->si_addr;
    if (guard_lo != NULL && addr >= guard_lo && addr < guard_hi) {
        void *page = (void *)((uintptr_t)addr & ~(page_size - 1));
        if (mmap(page, page_size, PROT_READ | PROT_WRITE,
                 MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1, 0) != MAP_FAILED) {
            guard_faulted = 1;
            return; /* the access is retried and reads zeros */
        }
    }
    /* Not ours: what would have happened without us. */
    sigaction(SIGBUS, &previous_bus, NULL);
    if (previous_bus.sa_flags & SA_SIGINFO) {
        if (previous_bus.sa_sigaction != NULL)
            previous_bus.sa_sigaction(sig, info, ctx);
    } else if (previous_bus.sa_handler != SIG_IGN && previous_bus.sa_handler != SIG_DFL) {
        previous_bus.sa_handler(sig);
    }
}

static void guard_install(void)
{
    page_size = (uintptr_t)sysconf(_SC_PAGESIZE);
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_sigaction = on_sigbus;
    sa.sa_flags = SA_SIGINFO | SA_NODEFER;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGBUS, &sa, &previous_bus);
}

static void guard_begin(const void *base, size_t len)
{
    guard_faulted = 0;
    guard_hi = (const char *)base + len;
    __atomic_store_n(&guard_lo, (const char *)base, __ATOMIC_SEQ_CST);
}

/* 1 when a page went missing since guard_begin. */
static int guard_end(void)
{
    __atomic_store_n(&guard_lo, NULL, __ATOMIC_SEQ_CST);
    return guard_faulted;
}

/* -- open -- */

logpool__ring_t *logpool__ring_open(const char *dir, const char *name, uint32_t nsinks,
                                    char *err, size_t errlen)
{
    pthread_once(&guard_once, guard_install);
    char path[4096];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    int fd = open(path, O_RDWR | O_NOFOLLOW | O_CLOEXEC | O_NONBLOCK);
    if (fd < 0) {
        snprintf(err, errlen, "cannot open: %s", strerror(errno));
        return NULL;
    }
    struct stat st;
    ring_header_t h;
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode) || st.st_size < (off_t)RING_HEADER_BYTES) {
        snprintf(err, errlen, "not a ring: not a regular file of at least %u bytes",
                 RING_HEADER_BYTES);
        close(fd);
        return NULL;
    }
    if (pread(fd, &h, sizeof h, 0) != (ssize_t)sizeof h) {
        snprintf(err, errlen, "cannot read its header: %s", strerror(errno));
        close(fd);
        return NULL;
    }
    uint64_t size = h.data_bytes;
    if (h.magic != RING_MAGIC || h.version != RING_VERSION ||
        h.header_bytes != RING_HEADER_BYTES || size < RING_MIN_BYTES || size > RING_MAX_BYTES ||
        (size & (size - 1)) != 0 || (uint64_t)st.st_size != RING_HEADER_BYTES + size) {
        snprintf(err, errlen, "not a ring of this version (magic, version or sizes)");
        close(fd);
        return NULL;
    }
    logpool__ring_t *r = calloc(1, sizeof *r);
    void *map = mmap(NULL, RING_HEADER_BYTES + size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (r == NULL || map == MAP_FAILED) {
        snprintf(err, errlen, "cannot map: %s", strerror(errno));
        if (map != MAP_FAILED)
            munmap(map, RING_HEADER_BYTES + size);
        free(r);
        close(fd);
        return NULL;
    }
    r->fd = fd;
    r->hdr = map;
    r->data = (const char *)map + RING_HEADER_BYTES;
    r->map_bytes = RING_HEADER_BYTES + size;
    r->data_bytes = size;
    r->mask = size - 1;
    r->nsinks = nsinks;
    r->pid = h.pid;
    r->start_time = h.start_time;
    r->created_unix_ns = h.created_unix_ns;
    /* Resume where an earlier agent released; what it had taken beyond may come twice. */
    uint64_t w = h.write_pos, rd = h.read_pos, sc = h.scan_pos;
    if ((rd & 7) != 0 || rd > w || w - rd > size) {
        rd = w & ~(uint64_t)7; /* garbage positions: start from what is published now */
        r->resets++;
    }
    r->released = r->scan = rd;
    r->dup_until = (sc >= rd && sc <= w) ? sc : rd;
    guard_begin(map, r->map_bytes);
    __atomic_store_n(&r->hdr->read_pos, rd, __ATOMIC_RELEASE);
    r->broken = guard_end();
    return r;
}

void logpool__ring_close(logpool__ring_t *r)
{
    if (r == NULL)
        return;
    munmap(r->hdr, r->map_bytes);
    close(r->fd);
    free(r);
}

/* -- drain -- */

/* Garbage in the ring: skip to what the producer published last, counted. */
static void ring_reset(logpool__ring_t *r, uint64_t w)
{
    uint64_t to = w & ~(uint64_t)7;
    r->scan = r->released = to;
    r->resets++;
    __atomic_store_n(&r->hdr->read_pos, to, __ATOMIC_RELEASE);
    __atomic_store_n(&r->hdr->scan_pos, to, __ATOMIC_RELAXED);
}

int64_t logpool__ring_drain(logpool__ring_t *r, logpool_t *pool, uint32_t max_records)
{
    struct stat st;
    if (r->broken)
        return 0;
    if (fstat(r->fd, &st) != 0 || (uint64_t)st.st_size != r->map_bytes) {
        r->broken = 1; /* truncated or grown under us: take nothing more from it */
        r->resets++;
        return 0;
    }
    int64_t taken = 0;
    guard_begin(r->hdr, r->map_bytes);
    uint64_t w = __atomic_load_n(&r->hdr->write_pos, __ATOMIC_ACQUIRE);
    if (w < r->scan || w - r->released > r->data_bytes || (w & 7) != 0) {
        if (w != r->scan)
            ring_reset(r, w);
        goto out;
    }
    uint64_t pos = r->scan;
    while (pos < w && taken < max_records) {
        uint64_t off = pos & r->mask;
        uint64_t to_end = r->data_bytes - off;
        uint32_t head[2];
        memcpy(head, r->data + off, sizeof head); /* read once: it may change under us */
        uint32_t len = head[0], sink = head[1];
        if (sink == RING_PAD) {
            if ((uint64_t)len + RING_RECORD_HEADER != to_end || pos + to_end > w) {
                ring_reset(r, w);
                goto out;
            }
            pos += to_end;
            r->scan = pos;
            continue;
        }
        uint64_t need = RING_RECORD_HEADER + ring_align8(len);
        if (sink >= r->nsinks || len == 0 || need > to_end || pos + need > w) {
            ring_reset(r, w);
            goto out;
        }
        logpool__sink_t *s = &pool->sinks[sink];
        if (logpool__sink_buffered_bytes(s) + len + 24 > s->max_buffer_length)
            break; /* the agent's pool is full: this record again on a later pass */
        int rc = log_cdata(pool, (int)sink, r->data + off + RING_RECORD_HEADER, len);
        if (rc == LOGPOOL_EFULL) {
            /* (log_cdata's own bound on memory) Nothing is lost: the record stays in its
             * ring; the refusal is not the agent's pool dropping a message. */
            ATOMIC_SUB(&s->st.dropped_full, 1);
            break;
        }
        if (rc == LOGPOOL_ECLOSED)
            break;
        if (rc == LOGPOOL_ETOOBIG)
            r->too_big++;
        else if (pos < r->dup_until)
            r->dups++;
        pos += need;
        r->scan = pos;
        taken++;
        r->taken++;
    }
    __atomic_store_n(&r->hdr->scan_pos, r->scan, __ATOMIC_RELAXED);
out:
    if (guard_end()) {
        r->broken = 1;
        r->resets++;
    }
    return taken;
}

uint64_t logpool__ring_scan_pos(logpool__ring_t *r)
{
    return r->scan;
}

void logpool__ring_release(logpool__ring_t *r, uint64_t pos)
{
    if (pos > r->scan || pos <= r->released || r->broken)
        return;
    r->released = pos;
    guard_begin(r->hdr, r->map_bytes);
    __atomic_store_n(&r->hdr->read_pos, pos, __ATOMIC_RELEASE);
    if (guard_end())
        r->broken = 1;
}

void logpool__ring_info(logpool__ring_t *r, logpool__ring_info_t *out)
{
    memset(out, 0, sizeof *out);
    out->pid = r->pid;
    out->start_time = r->start_time;
    out->created_unix_ns = r->created_unix_ns;
    out->data_bytes = r->data_bytes;
    out->read_pos = r->released;
    out->scan_pos = r->scan;
    out->taken_messages = r->taken;
    out->resets = r->resets;
    out->possible_duplicates = r->dups;
    out->too_big = r->too_big;
    if (r->broken) {
        out->broken = 1;
        return;
    }
    guard_begin(r->hdr, r->map_bytes);
    const ring_header_t *h = r->hdr;
    out->write_pos = __atomic_load_n(&h->write_pos, __ATOMIC_ACQUIRE);
    out->accepted_messages = __atomic_load_n(&h->accepted_messages, __ATOMIC_RELAXED);
    out->accepted_bytes = __atomic_load_n(&h->accepted_bytes, __ATOMIC_RELAXED);
    out->dropped_full = __atomic_load_n(&h->dropped_full, __ATOMIC_RELAXED);
    out->dropped_too_big = __atomic_load_n(&h->dropped_too_big, __ATOMIC_RELAXED);
    out->closed = __atomic_load_n(&h->closed, __ATOMIC_ACQUIRE);
    if (guard_end())
        r->broken = 1;
    out->broken = (uint64_t)r->broken;
}

/* -- the agent's pool -- */

int logpool__agent_progress(logpool_t *pool, int socket_id, uint64_t *accepted,
                            uint64_t *settled)
{
    logpool__sink_t *s = logpool__pool_sink(pool, socket_id);
    if (s == NULL)
        return LOGPOOL_ENOSINK;
    /* Before the lock: it only grows, so what the writer holds is never undercounted. */
    uint64_t out = __atomic_load_n(&s->buffered_out_msgs, __ATOMIC_ACQUIRE);
    pthread_mutex_lock(&s->lock);
    uint64_t acc = s->st.accepted_messages;
    uint64_t chain = 0; /* the producers' chain: the newest messages */
    for (chunk_t *c = s->head; c != NULL; c = c->next)
        chain += c->nmsgs;
    uint64_t in_memory = s->buffered_in_msgs - out;
    pthread_mutex_unlock(&s->lock);
    uint64_t delivered = __atomic_load_n(&s->st.sent_messages, __ATOMIC_SEQ_CST) +
                         __atomic_load_n(&s->st.dropped_unsendable, __ATOMIC_SEQ_CST) +
                         __atomic_load_n(&s->st.dropped_rejected, __ATOMIC_SEQ_CST) +
                         __atomic_load_n(&s->st.dropped_spool_replay, __ATOMIC_SEQ_CST);
    int abandoned = __atomic_load_n(&s->st.abandoned_messages, __ATOMIC_SEQ_CST) > 0;
    *accepted = acc;
    /* The writer holds nothing (no batch in flight, none being spilled or replayed) and
     * abandoned nothing: every message older than the producers' chain is delivered, has
     * its final fate, or is in the spool. Otherwise only what was delivered, in order. */
    if (in_memory == chain && !abandoned)
        *settled = acc - chain;
    else
        *settled = delivered < acc ? delivered : acc;
    return LOGPOOL_OK;
}

int logpool__agent_adopting(logpool_t *pool)
{
    int adopting = 0;
    for (int i = 0; i < pool->nsinks; i++) {
        logpool__sink_t *s = &pool->sinks[i];
        pthread_mutex_lock(&s->lock);
        adopting |= s->adopting && s->writer_running && !s->writer_exited;
        pthread_mutex_unlock(&s->lock);
    }
    return adopting;
}
