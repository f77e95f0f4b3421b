/*
 * Agent mode, the producer's side (producer.h, ring.h). log_cdata takes a process-local
 * mutex, copies the record into the ring and publishes it with a release store of
 * write_pos: no syscall, no lock another process could hold, nothing the agent does can
 * make it wait. A full ring refuses with LOGPOOL_EFULL.
 *
 * The ring belongs to the process that created it: a pool inherited across fork attaches a
 * ring of its own on its first log_cdata in the child (nginx's master may create a pool
 * before forking workers; each worker then writes its own ring).
 */
#include "core.h" /* first: it defines _GNU_SOURCE */
#include "producer.h"
#include "ring.h"

#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

enum { PRODUCER_OPEN = 0, PRODUCER_CLOSED = 1 };

typedef struct producer_sink_s {
    uint64_t max_message_size;
    char *name;
    /* Under the pool's lock (accepted, full) or atomic (the rest). */
    uint64_t accepted_messages;
    uint64_t accepted_bytes;
    uint64_t dropped_full;
    uint64_t dropped_too_big;
    uint64_t dropped_closed;
} producer_sink_t;

struct logpool__producer_s {
    pthread_mutex_t lock;
    int state;
    unsigned generation; /* the fork generation the ring belongs to */
    int nsinks;
    producer_sink_t *sinks;
    /* The ring, written under lock. */
    ring_header_t *hdr;
    char *data;
    uint64_t mask;
    uint64_t wpos;       /* the producer's own copy: never read back from shared memory */
    uint64_t rcache;     /* read_pos as last seen: the agent's line is loaded only when the
                          * ring looks full by it (no cache miss per call) */
    uint64_t max_record; /* the longest message a ring of this size takes */
    uint64_t ring_bytes;
    size_t map_bytes;
    char dir[PATH_MAX];
};

/* -- fork: a child attaches its own ring -- */

static volatile unsigned producer_fork_gen;
static pthread_mutex_t attach_lock = PTHREAD_MUTEX_INITIALIZER;
static unsigned ring_serial; /* rings this process created: one name each */

static void producer_after_fork_child(void)
{
    producer_fork_gen++;
    pthread_mutex_init(&attach_lock, NULL);
    ring_serial = 0;
}

__attribute__((constructor)) static void producer_load(void)
{
    pthread_atfork(NULL, NULL, producer_after_fork_child);
}

/* -- the sink table the agent publishes -- */

static void free_sinks(producer_sink_t *sinks, int n)
{
    if (sinks == NULL)
        return;
    for (int i = 0; i < n; i++)
        free(sinks[i].name);
    free(sinks);
}

/* "logpool-agent-sinks 1\n<nsinks>\n" then "<max_message_size> <name>\n" per sink. */
static int read_sink_table(int dirfd, const char *dir, producer_sink_t **out, int *nout,
                           char *err, size_t errlen)
{
    int fd = openat(dirfd, SINK_TABLE_NAME, O_RDONLY | O_NOFOLLOW | O_CLOEXEC);
    if (fd < 0) {
        snprintf(err, errlen, "agent mode: cannot read %s/%s (uid %d): %s; is `python -m "
                              "logpool agent` running with agent_dir %s?", dir, SINK_TABLE_NAME,
                 (int)geteuid(), strerror(errno), dir);
        return -1;
    }
    char buf[65536];
    size_t got = 0;
    for (;;) {
        ssize_t r = read(fd, buf + got, sizeof buf - 1 - got);
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0)
            break;
        got += (size_t)r;
        if (got == sizeof buf - 1)
            break;
    }
    close(fd);
    buf[got] = '\0';
    char *save = NULL;
    char *line = strtok_r(buf, "\n", &save);
    if (line == NULL || strcmp(line, SINK_TABLE_MAGIC) != 0)
        goto bad;
    line = strtok_r(NULL, "\n", &save);
    char *end;
    long n = line ? strtol(line, &end, 10) : 0;
    if (line == NULL || *end != '\0' || n <= 0 || n > AGENT_MAX_SINKS)
        goto bad;
    producer_sink_t *sinks = calloc((size_t)n, sizeof *sinks);
    if (sinks == NULL)
        goto bad;
    for (long i = 0; i < n; i++) {
        line = strtok_r(NULL, "\n", &save);
        unsigned long long max = line ? strtoull(line, &end, 10) : 0;
        if (line == NULL || *end != ' ' || max == 0 || max > INT_MAX ||
            strlen(end + 1) == 0 || strlen(end + 1) > AGENT_MAX_SINK_NAME) {
            free_sinks(sinks, (int)i);
            goto bad;
        }
        sinks[i].max_message_size = max;
        sinks[i].name = strdup(end + 1);
        if (sinks[i].name == NULL) {
            free_sinks(sinks, (int)i);
            goto bad;
        }
    }
    *out = sinks;
    *nout = (int)n;
    return 0;
bad:
    snprintf(err, errlen, "agent mode: %s/%s is not a sink table of this version", dir,
             SINK_TABLE_NAME);
    return -1;
}

/* -- the ring -- */

/* Field 22 of /proc/self/stat: when this process started, in clock ticks since boot. */
static uint64_t self_start_time(void)
{
    char buf[1024];
    int fd = open("/proc/self/stat", O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return 0;
    ssize_t n = read(fd, buf, sizeof buf - 1);
    close(fd);
    if (n <= 0)
        return 0;
    buf[n] = '\0';
    char *p = strrchr(buf, ')'); /* the command name may hold spaces and parentheses */
    if (p == NULL)
        return 0;
    /* fields 3.. follow ") ", one space before each: the 20th space is field 22's */
    for (int field = 3; field <= 22 && p != NULL; field++)
        p = strchr(p + 1, ' ');
    return p ? strtoull(p + 1, NULL, 10) : 0;
}

static uint64_t unix_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

/* Creates, maps and publishes (rename) a new ring for this process. Under attach_lock or
 * before the pool is shared. 0, or -1 with err set. */
static int ring_attach(logpool__producer_t *p, char *err, size_t errlen)
{
    int dirfd = open(p->dir, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
    if (dirfd < 0) {
        snprintf(err, errlen, "agent mode: cannot open agent_dir %s (uid %d): %s", p->dir,
                 (int)geteuid(), strerror(errno));
        return -1;
    }
    uint64_t start = self_start_time();
    char tmp[112], name[96];
    unsigned serial = ++ring_serial;
    snprintf(name, sizeof name, RING_FILE_PREFIX "%ld.%llu.%u", (long)getpid(),
             (unsigned long long)start, serial);
    snprintf(tmp, sizeof tmp, ".tmp-%s", name);
    size_t map_bytes = RING_HEADER_BYTES + p->ring_bytes;
    int fd = openat(dirfd, tmp, O_RDWR | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0660);
    if (fd < 0) {
        snprintf(err, errlen, "agent mode: cannot create a ring in agent_dir %s (uid %d): %s; "
                              "the directory must be writable by the workers' group",
                 p->dir, (int)geteuid(), strerror(errno));
        close(dirfd);
        return -1;
    }
    void *map = MAP_FAILED;
    int rc = fchmod(fd, 0660); /* the agent (the group) moves read_pos, whatever the umask */
    if (rc == 0)
        rc = ftruncate(fd, (off_t)map_bytes);
    if (rc == 0)
        map = mmap(NULL, map_bytes, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (map == MAP_FAILED) {
        snprintf(err, errlen, "agent mode: cannot size or map a ring of %llu bytes in %s: %s",
                 (unsigned long long)p->ring_bytes, p->dir, strerror(errno));
        unlinkat(dirfd, tmp, 0);
        close(fd);
        close(dirfd);
        return -1;
    }
    close(fd);
    /* Every page written once now (tmpfs allocates it), so that log_cdata never takes the
     * page fault: the ring is the producer's shared memory from the start. */
    memset(map, 0, map_bytes);
    ring_header_t *h = map;
    h->version = RING_VERSION;
    h->header_bytes = RING_HEADER_BYTES;
    h->data_bytes = p->ring_bytes;
    h->pid = (uint64_t)getpid();
    h->start_time = start;
    h->created_unix_ns = unix_ns();
    h->nsinks = (uint64_t)p->nsinks;
    __atomic_store_n(&h->magic, RING_MAGIC, __ATOMIC_RELEASE);
    /* The agent only looks at files named ring.*: it sees a complete header or none. */
    if (renameat(dirfd, tmp, dirfd, name) != 0) {
        snprintf(err, errlen, "agent mode: cannot publish the ring in %s: %s", p->dir,
                 strerror(errno));
        unlinkat(dirfd, tmp, 0);
        munmap(map, map_bytes);
        close(dirfd);
        return -1;
    }
    close(dirfd);
    p->hdr = h;
    p->data = (char *)map + RING_HEADER_BYTES;
    p->mask = p->ring_bytes - 1;
    p->wpos = 0;
    p->rcache = 0;
    p->map_bytes = map_bytes;
    p->generation = producer_fork_gen;
    return 0;
}

/* First log_cdata in a forked child: the parent's ring is the parent's. */
static int ring_attach_child(logpool__producer_t *p)
{
    int rc = 0;
    pthread_mutex_lock(&attach_lock);
    if (__atomic_load_n(&p->generation, __ATOMIC_ACQUIRE) != producer_fork_gen) {
        char err[400];
        pthread_mutex_init(&p->lock, NULL); /* another thread may have held it at fork */
        if (p->hdr != NULL)
            munmap(p->hdr, p->map_bytes);
        p->hdr = NULL;
        if (ring_attach(p, err, sizeof err) != 0) {
            fprintf(stderr, "logpool: %s; this process logs nothing (LOGPOOL_ECLOSED)\n", err);
            __atomic_store_n(&p->state, PRODUCER_CLOSED, __ATOMIC_RELAXED);
            rc = -1;
        }
        __atomic_store_n(&p->generation, producer_fork_gen, __ATOMIC_RELEASE);
    }
    pthread_mutex_unlock(&attach_lock);
    return rc;
}

logpool__producer_t *logpool__producer_new(const char *dir, uint64_t ring_bytes, int *code,
                                           char *err, size_t errlen)
{
    *code = LOGPOOL_ERUNTIME;
    logpool__producer_t *p = calloc(1, sizeof *p);
    if (p == NULL) {
        snprintf(err, errlen, "agent mode: out of memory");
        return NULL;
    }
    if (strlen(dir) >= sizeof p->dir) {
        free(p);
        *code = LOGPOOL_ECONFIG;
        snprintf(err, errlen, "invalid configuration: agent: path too long");
        return NULL;
    }
    strcpy(p->dir, dir);
    p->ring_bytes = ring_bytes;
    p->max_record = ring_bytes / 2 - RING_RECORD_HEADER;
    int dirfd = open(dir, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
    if (dirfd < 0) {
        int e = errno;
        struct stat st;
        snprintf(err, errlen, "agent mode: cannot open agent_dir %s (uid %d): %s%s", dir,
                 (int)geteuid(), strerror(e),
                 lstat(dir, &st) == 0 && S_ISLNK(st.st_mode)
                     ? " (a symlink: agent_dir must be the directory itself)" : "");
        free(p);
        return NULL;
    }
    int rc = read_sink_table(dirfd, dir, &p->sinks, &p->nsinks, err, errlen);
    close(dirfd);
    if (rc != 0) {
        free(p);
        return NULL;
    }
    pthread_mutex_init(&p->lock, NULL);
    pthread_mutex_lock(&attach_lock);
    rc = ring_attach(p, err, errlen);
    pthread_mutex_unlock(&attach_lock);
    if (rc != 0) {
        pthread_mutex_destroy(&p->lock);
        free_sinks(p->sinks, p->nsinks);
        free(p);
        return NULL;
    }
    *code = LOGPOOL_OK;
    return p;
}

int logpool__producer_log(logpool__producer_t *p, int socket_id, const char *msg, size_t len)
{
    if (socket_id < 0 || socket_id >= p->nsinks)
        return LOGPOOL_ENOSINK;
    if (msg == NULL && len > 0)
        return LOGPOOL_EINVAL;
    producer_sink_t *s = &p->sinks[socket_id];
    if (__atomic_load_n(&p->state, __ATOMIC_RELAXED) != PRODUCER_OPEN) {
        __atomic_fetch_add(&s->dropped_closed, 1, __ATOMIC_RELAXED);
        return LOGPOOL_ECLOSED;
    }
    if (len == 0)
        return 0;
    if (len > s->max_message_size || len > p->max_record) {
        __atomic_fetch_add(&s->dropped_too_big, 1, __ATOMIC_RELAXED);
        return LOGPOOL_ETOOBIG;
    }
    if (__builtin_expect(__atomic_load_n(&p->generation, __ATOMIC_ACQUIRE) != producer_fork_gen,
                         0) &&
        ring_attach_child(p) != 0) {
        __atomic_fetch_add(&s->dropped_closed, 1, __ATOMIC_RELAXED);
        return LOGPOOL_ECLOSED;
    }
    uint64_t need = RING_RECORD_HEADER + ring_align8(len);
    pthread_mutex_lock(&p->lock);
    ring_header_t *h = p->hdr;
    uint64_t w = p->wpos;
    uint64_t off = w & p->mask;
    uint64_t to_end = p->ring_bytes - off;
    uint64_t pad = need > to_end ? to_end : 0;
    if (w - p->rcache + pad + need > p->ring_bytes) {
        p->rcache = __atomic_load_n(&h->read_pos, __ATOMIC_ACQUIRE);
        if (w - p->rcache + pad + need > p->ring_bytes) { /* (a bogus read_pos: full too) */
            OWNED_ADD(&s->dropped_full, 1);
            OWNED_ADD(&h->dropped_full, 1);
            pthread_mutex_unlock(&p->lock);
            return LOGPOOL_EFULL;
        }
    }
    if (pad > 0) {
        uint32_t *ph = (uint32_t *)(void *)(p->data + off);
        ph[0] = (uint32_t)(pad - RING_RECORD_HEADER);
        ph[1] = RING_PAD;
        w += pad;
        off = 0;
    }
    uint32_t *rh = (uint32_t *)(void *)(p->data + off);
    rh[0] = (uint32_t)len;
    rh[1] = (uint32_t)socket_id;
    memcpy(p->data + off + RING_RECORD_HEADER, msg, len);
    w += need;
    p->wpos = w;
    __atomic_store_n(&h->write_pos, w, __ATOMIC_RELEASE); /* the record is complete */
    OWNED_ADD(&h->accepted_messages, 1);
    OWNED_ADD(&h->accepted_bytes, len);
    OWNED_ADD(&s->accepted_messages, 1);
    OWNED_ADD(&s->accepted_bytes, len);
    pthread_mutex_unlock(&p->lock);
    return (int)len;
}

static uint64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

/* Waits until the agent released everything written before the call: delivered by the
 * sinks' standard, or spooled. Polls every millisecond (the agent has no way to wake a
 * producer, by design). */
int logpool__producer_flush(logpool__producer_t *p, int timeout_ms)
{
    if (__atomic_load_n(&p->generation, __ATOMIC_ACQUIRE) != producer_fork_gen)
        return LOGPOOL_OK; /* this process wrote nothing into this pool yet */
    pthread_mutex_lock(&p->lock);
    ring_header_t *h = p->hdr;
    uint64_t target = p->wpos;
    pthread_mutex_unlock(&p->lock);
    if (h == NULL)
        return LOGPOOL_OK;
    uint64_t deadline = timeout_ms < 0 ? UINT64_MAX : now_ms() + (uint64_t)timeout_ms;
    for (;;) {
        uint64_t r = __atomic_load_n(&h->read_pos, __ATOMIC_ACQUIRE);
        if (r >= target && r - target <= p->ring_bytes)
            return LOGPOOL_OK;
        if (now_ms() >= deadline)
            return LOGPOOL_ETIMEDOUT;
        struct timespec ts = {0, 1000000};
        nanosleep(&ts, NULL);
    }
}

int logpool__producer_shutdown(logpool__producer_t *p)
{
    __atomic_store_n(&p->state, PRODUCER_CLOSED, __ATOMIC_RELAXED);
    return LOGPOOL_OK;
}

/* Never waits: what the ring holds is the agent's to deliver, and the agent removes the
 * ring once it is drained. Abandons nothing. */
int logpool__producer_close(logpool__producer_t *p)
{
    pthread_mutex_lock(&attach_lock);
    __atomic_store_n(&p->state, PRODUCER_CLOSED, __ATOMIC_RELAXED);
    if (p->hdr != NULL && p->generation == producer_fork_gen) {
        pthread_mutex_lock(&p->lock); /* a barrier: appends in flight are done */
        __atomic_store_n(&p->hdr->closed, 1, __ATOMIC_RELEASE);
        pthread_mutex_unlock(&p->lock);
    }
    pthread_mutex_unlock(&attach_lock);
    return 0;
}

void logpool__producer_free(logpool__producer_t *p)
{
    logpool__producer_close(p);
    if (p->hdr != NULL)
        munmap(p->hdr, p->map_bytes);
    free_sinks(p->sinks, p->nsinks);
    free(p);
}

int logpool__producer_sink_index(logpool__producer_t *p, const char *name)
{
    for (int i = 0; i < p->nsinks; i++)
        if (strcmp(p->sinks[i].name, name) == 0)
            return i;
    return LOGPOOL_ENOSINK;
}

int logpool__producer_sink_count(logpool__producer_t *p)
{
    return p->nsinks;
}

int logpool__producer_stats(logpool__producer_t *p, int socket_id, logpool_stats_t *out)
{
    if (out == NULL)
        return LOGPOOL_EINVAL;
    if (socket_id < 0 || socket_id >= p->nsinks)
        return LOGPOOL_ENOSINK;
    producer_sink_t *s = &p->sinks[socket_id];
    memset(out, 0, sizeof *out);
    out->accepted_messages = __atomic_load_n(&s->accepted_messages, __ATOMIC_RELAXED);
    out->accepted_bytes = __atomic_load_n(&s->accepted_bytes, __ATOMIC_RELAXED);
    out->dropped_full = __atomic_load_n(&s->dropped_full, __ATOMIC_RELAXED);
    out->dropped_too_big = __atomic_load_n(&s->dropped_too_big, __ATOMIC_RELAXED);
    out->dropped_closed = __atomic_load_n(&s->dropped_closed, __ATOMIC_RELAXED);
    return LOGPOOL_OK;
}

/* The producer's own counters; the sinks' are the agent's (its metrics_listen). */
int logpool__producer_metrics(logpool__producer_t *p, char *buf, size_t len)
{
    if (buf == NULL && len > 0)
        return LOGPOOL_EINVAL;
    static const char *const names[] = {"accepted_messages", "accepted_bytes", "dropped_full",
                                        "dropped_too_big", "dropped_closed"};
    size_t need = 0;
    char line[512];
    int n = snprintf(line, sizeof line,
                     "# logpool agent mode: the sinks' delivery counters are the agent's "
                     "(scrape its metrics_listen); these count this producer's ring\n");
    for (int pass = 0; pass < 1 + p->nsinks * 5; pass++) {
        if (pass > 0) {
            int field = (pass - 1) % 5;
            producer_sink_t *s = &p->sinks[(pass - 1) / 5];
            uint64_t *counters[5] = {&s->accepted_messages, &s->accepted_bytes,
                                     &s->dropped_full, &s->dropped_too_big, &s->dropped_closed};
            n = snprintf(line, sizeof line, "logpool_producer_%s{sink=\"%s\"} %llu\n",
                         names[field], s->name,
                         (unsigned long long)ATOMIC_LOAD(counters[field]));
        }
        if (n < 0)
            return LOGPOOL_EINVAL;
        if (need + (size_t)n < len)
            memcpy(buf + need, line, (size_t)n);
        need += (size_t)n;
    }
    if (len > 0)
        buf[need < len ? need : len - 1] = '\0';
    return need > INT_MAX ? INT_MAX : (int)need;
}
