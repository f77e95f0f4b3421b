/*
 * Agent mode, the agent's side (ring_agent.h, ring.h). Every byte of a ring is untrusted:
 * the geometry is read once at open and kept privately; each record's length and sink are
 * read once, bounded, and copied out under a SIGBUS guard (a producer may truncate its file
 * under the agent's mapping) into a private staging buffer; only then do the records go to
 * the agent's pool through log_cdata, outside the guard (a fault must never unwind through
 * a held mutex). Garbage resets that ring to its write position, counted; a walk is bounded
 * by the ring's size and a per-call budget, so it can neither hang nor allocate.
 */
#include "core.h" /* first: it defines _GNU_SOURCE */
#include "ring.h"
#include "ring_agent.h"

#include <fcntl.h>
#include <setjmp.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#define STAGE_BYTES (256u << 10)
#define STAGE_RECORDS 4096u

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
    char *stage;         /* records copied out of the ring, then logged */
    uint32_t stage_len[STAGE_RECORDS];
    uint32_t stage_sink[STAGE_RECORDS];
    uint64_t stage_end[STAGE_RECORDS]; /* scan position after record i */
};

/* -- the SIGBUS guard -- */

static __thread sigjmp_buf *guard_jmp;
static struct sigaction previous_bus;
static pthread_once_t guard_once = PTHREAD_ONCE_INIT;

static void on_sigbus(int sig, siginfo_t *info, void *ctx)
{
    if (guard_jmp != NULL)
        siglongjmp(*guard_jmp, 1);
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
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_sigaction = on_sigbus;
    sa.sa_flags = SA_SIGINFO | SA_NODEFER;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGBUS, &sa, &previous_bus);
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
    char *stage = malloc(STAGE_BYTES);
    void *map = mmap(NULL, RING_HEADER_BYTES + size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (r == NULL || stage == NULL || map == MAP_FAILED) {
        snprintf(err, errlen, "cannot map: %s", strerror(errno));
        if (map != MAP_FAILED)
            munmap(map, RING_HEADER_BYTES + size);
        free(stage);
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
    r->stage = stage;
    /* Resume where an earlier agent released; what it had taken beyond may come twice. */
    uint64_t w = h.write_pos, rd = h.read_pos, sc = h.scan_pos;
    if ((rd & 7) != 0 || rd > w || w - rd > size) {
        rd = w & ~(uint64_t)7; /* garbage positions: start from what is published now */
        r->resets++;
    }
    r->released = r->scan = rd;
    r->dup_until = (sc >= rd && sc <= w) ? sc : rd;
    __atomic_store_n(&r->hdr->read_pos, rd, __ATOMIC_RELEASE);
    return r;
}

void logpool__ring_close(logpool__ring_t *r)
{
    if (r == NULL)
        return;
    munmap(r->hdr, r->map_bytes);
    close(r->fd);
    free(r->stage);
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

/* Copies up to max records from the ring into the stage. Returns how many, or -1 for
 * garbage (bounds) and -2 for a fault (the file shrank). */
static int stage_records(logpool__ring_t *r, uint32_t max, uint64_t *wp)
{
    sigjmp_buf jmp;
    volatile int n = 0;
    if (sigsetjmp(jmp, 1) != 0) {
        guard_jmp = NULL;
        return -2;
    }
    guard_jmp = &jmp;
    uint64_t w = __atomic_load_n(&r->hdr->write_pos, __ATOMIC_ACQUIRE);
    *wp = w;
    if (w < r->scan || w - r->released > r->data_bytes || (w & 7) != 0) {
        guard_jmp = NULL;
        return w == r->scan ? 0 : -1;
    }
    uint64_t pos = r->scan;
    size_t used = 0;
    while (pos < w && (uint32_t)n < max && n < (int)STAGE_RECORDS) {
        uint64_t off = pos & r->mask;
        uint64_t to_end = r->data_bytes - off;
        uint32_t head[2];
        memcpy(head, r->data + off, sizeof head); /* read once: it may change under us */
        uint32_t len = head[0], sink = head[1];
        if (sink == RING_PAD) {
            if ((uint64_t)len + RING_RECORD_HEADER != to_end || pos + to_end > w)
                goto garbage;
            pos += to_end;
            continue;
        }
        uint64_t need = RING_RECORD_HEADER + ring_align8(len);
        if (sink >= r->nsinks || len == 0 || need > to_end || pos + need > w)
            goto garbage;
        if (used + len > STAGE_BYTES) {
            if (n == 0 && len > STAGE_BYTES) /* (a producer's records are < half its ring) */
                goto garbage;
            break;
        }
        memcpy(r->stage + used, r->data + off + RING_RECORD_HEADER, len);
        used += len;
        pos += need;
        r->stage_len[n] = len;
        r->stage_sink[n] = sink;
        r->stage_end[n] = pos;
        n++;
    }
    guard_jmp = NULL;
    if (n == 0 && pos != r->scan) { /* only pads: move past them */
        r->scan = pos;
    }
    return n;
garbage:
    guard_jmp = NULL;
    return n > 0 ? n : -1; /* take the good ones first; the garbage is found again next */
}

int64_t logpool__ring_drain(logpool__ring_t *r, logpool_t *pool, uint32_t max_records)
{
    int64_t taken = 0;
    if (r->broken)
        return 0;
    while (taken < max_records) {
        uint64_t w = 0;
        struct stat st;
        if (fstat(r->fd, &st) != 0 || (uint64_t)st.st_size != r->map_bytes) {
            r->broken = 1; /* truncated or grown under us: take nothing more from it */
            r->resets++;
            return taken;
        }
        int n = stage_records(r, max_records - (uint32_t)taken, &w);
        if (n == -2) {
            r->broken = 1;
            r->resets++;
            return taken;
        }
        if (n < 0) {
            ring_reset(r, w);
            return taken;
        }
        if (n == 0)
            break;
        const char *p = r->stage;
        for (int i = 0; i < n; i++) {
            uint64_t start = i == 0 ? r->scan : r->stage_end[i - 1];
            int rc = log_cdata(pool, (int)r->stage_sink[i], p, r->stage_len[i]);
            if (rc == LOGPOOL_EFULL || rc == LOGPOOL_ECLOSED) {
                __atomic_store_n(&r->hdr->scan_pos, r->scan, __ATOMIC_RELAXED);
                return taken; /* the agent's pool is full: this record again next time */
            }
            if (rc == LOGPOOL_ETOOBIG)
                r->too_big++;
            else if (start < r->dup_until)
                r->dups++;
            r->scan = r->stage_end[i];
            p += r->stage_len[i];
            taken++;
            r->taken++;
        }
        __atomic_store_n(&r->hdr->scan_pos, r->scan, __ATOMIC_RELAXED);
    }
    return taken;
}

uint64_t logpool__ring_scan_pos(logpool__ring_t *r)
{
    return r->scan;
}

void logpool__ring_release(logpool__ring_t *r, uint64_t pos)
{
    if (pos > r->scan || pos <= r->released)
        return;
    r->released = pos;
    __atomic_store_n(&r->hdr->read_pos, pos, __ATOMIC_RELEASE);
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
    out->broken = (uint64_t)r->broken;
    if (r->broken)
        return;
    sigjmp_buf jmp;
    if (sigsetjmp(jmp, 1) != 0) {
        guard_jmp = NULL;
        return;
    }
    guard_jmp = &jmp;
    const ring_header_t *h = r->hdr;
    out->write_pos = __atomic_load_n(&h->write_pos, __ATOMIC_ACQUIRE);
    out->accepted_messages = __atomic_load_n(&h->accepted_messages, __ATOMIC_RELAXED);
    out->accepted_bytes = __atomic_load_n(&h->accepted_bytes, __ATOMIC_RELAXED);
    out->dropped_full = __atomic_load_n(&h->dropped_full, __ATOMIC_RELAXED);
    out->dropped_too_big = __atomic_load_n(&h->dropped_too_big, __ATOMIC_RELAXED);
    out->closed = __atomic_load_n(&h->closed, __ATOMIC_ACQUIRE);
    guard_jmp = NULL;
}

/* -- the agent's pool -- */

int logpool__agent_progress(logpool_t *pool, int socket_id, uint64_t *accepted,
                            uint64_t *delivered, uint64_t *settled)
{
    logpool__sink_t *s = logpool__pool_sink(pool, socket_id);
    if (s == NULL)
        return LOGPOOL_ENOSINK;
    /* Done counters first: every message they count was accepted before (a snapshot where
     * accepted runs ahead only delays a release). */
    uint64_t done = __atomic_load_n(&s->st.sent_messages, __ATOMIC_SEQ_CST) +
                    __atomic_load_n(&s->st.dropped_unsendable, __ATOMIC_SEQ_CST) +
                    __atomic_load_n(&s->st.dropped_rejected, __ATOMIC_SEQ_CST) +
                    __atomic_load_n(&s->st.dropped_spool_replay, __ATOMIC_SEQ_CST);
    uint64_t spooled = __atomic_load_n(&s->st.spooled_messages, __ATOMIC_SEQ_CST);
    *delivered = done;
    *settled = done + spooled;
    *accepted = __atomic_load_n(&s->st.accepted_messages, __ATOMIC_SEQ_CST);
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
