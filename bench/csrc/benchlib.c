/* Baselines and helpers for bench/, loaded by luajit through the FFI.
 *
 * bench_floor_copy: the floor for a hot path that copies a message: memcpy into a static
 * buffer under a mutex, nothing else.
 * bench_fresh_copy: the floor for a buffer that grows (a dead sink): the same memcpy, but
 * into memory never touched before, so every 4 KiB page is first provided by the kernel.
 * bench_producers: N pthreads calling log_cdata in a loop, timing each call, for the
 * "cost as work grows" table (LuaJIT has no threads).
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>

static char floor_buf[1 << 20];
static size_t floor_off;
static pthread_mutex_t floor_lock = PTHREAD_MUTEX_INITIALIZER;

int bench_floor_copy(void *pool, int sink, const char *msg, size_t len)
{
    (void)pool;
    (void)sink;
    pthread_mutex_lock(&floor_lock);
    if (floor_off + len > sizeof floor_buf)
        floor_off = 0;
    memcpy(floor_buf + floor_off, msg, len);
    floor_off += len;
    pthread_mutex_unlock(&floor_lock);
    return (int)len;
}

#define FRESH_REGION (64u << 20)
static char *fresh_buf;
static size_t fresh_off = FRESH_REGION;

int bench_fresh_copy(void *pool, int sink, const char *msg, size_t len)
{
    (void)pool;
    (void)sink;
    pthread_mutex_lock(&floor_lock);
    if (fresh_off + len > FRESH_REGION) { /* a new region: its pages are not mapped yet */
        if (fresh_buf != NULL)
            munmap(fresh_buf, FRESH_REGION);
        fresh_buf = mmap(NULL, FRESH_REGION, PROT_READ | PROT_WRITE,
                         MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        fresh_off = 0;
    }
    memcpy(fresh_buf + fresh_off, msg, len);
    fresh_off += len;
    pthread_mutex_unlock(&floor_lock);
    return (int)len;
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

/* Sorts samples in place; out = {median, p99, p99.9, max}. */
void bench_percentiles(double *samples, size_t n, double *out)
{
    qsort(samples, n, sizeof *samples, cmp_double);
    out[0] = samples[n / 2];
    out[1] = samples[(size_t)(n * 0.99)];
    out[2] = samples[(size_t)(n * 0.999)];
    out[3] = samples[n - 1];
}

static inline uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

typedef int (*log_fn)(void *, int, const char *, size_t);

struct producer {
    log_fn fn;
    void *pool;
    int nsinks;
    size_t calls;
    size_t len;
    double *samples;
    uint64_t accepted;
};

static void *produce(void *arg)
{
    struct producer *p = arg;
    char msg[8192];
    memset(msg, 'x', sizeof msg);
    msg[p->len - 1] = '\n';
    for (size_t i = 0; i < p->calls; i++) {
        uint64_t t0 = now_ns();
        int rc = p->fn(p->pool, (int)(i % (size_t)p->nsinks), msg, p->len);
        p->samples[i] = (double)(now_ns() - t0);
        if (rc > 0)
            p->accepted++;
    }
    return NULL;
}

/* threads producers x calls each; samples must hold threads*calls doubles. Returns the
 * wall time in ns; *accepted gets the number of accepted messages. */
uint64_t bench_producers(void *fn, void *pool, int nsinks, int threads, size_t calls,
                         size_t len, double *samples, uint64_t *accepted)
{
    struct producer p[64];
    pthread_t t[64];
    if (threads > 64 || len < 1 || len > 8192)
        return 0;
    uint64_t start = now_ns();
    for (int i = 0; i < threads; i++) {
        p[i] = (struct producer){(log_fn)fn, pool, nsinks, calls, len, samples + i * calls, 0};
        pthread_create(&t[i], NULL, produce, &p[i]);
    }
    *accepted = 0;
    for (int i = 0; i < threads; i++) {
        pthread_join(t[i], NULL);
        *accepted += p[i].accepted;
    }
    return now_ns() - start;
}
