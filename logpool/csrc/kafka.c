/*
 * Kafka hand-off: the sink's writer thread moves pending messages into librdkafka with
 * rd_kafka_produce_batch and releases them, in order, as delivery reports arrive, all in C.
 * Done from Python, one produce() call and one delivery callback per message cost more
 * than librdkafka itself (about 3 us per message against about 1).
 *
 * logpool does not link against librdkafka: the Python side imports confluent-kafka (which
 * loads its librdkafka) and passes that library's path; the few entry points used here are
 * resolved from it with dlsym. They and rd_kafka_message_t are librdkafka's stable C ABI
 * (rdkafka.h).
 *
 * Threads: everything here runs on the sink's writer thread. librdkafka calls the delivery,
 * statistics and error callbacks only from rd_kafka_poll, i.e. on that same thread.
 */
#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core.h"

typedef struct rdk_message_s {  /* rd_kafka_message_t */
    int err;
    void *rkt;
    int32_t partition;
    void *payload;
    size_t len;
    void *key;
    size_t key_len;
    int64_t offset;
    void *private_; /* producer: the msg_opaque given to produce */
} rdk_message_t;

enum {
    RDK_PRODUCER = 0,
    RDK_CONF_OK = 0,
    RDK_PARTITION_UA = -1,
    RDK_MSG_F_COPY = 0x2,
    RDK_PURGE_F_QUEUE = 0x1,
    RDK_PURGE_F_NON_BLOCKING = 0x4,
    RDK_ERR_QUEUE_FULL = -184,
    RDK_ERR_FATAL = -150,
    RDK_ERR_PURGE_QUEUE = -152,
    RDK_ERR_PURGE_INFLIGHT = -151,
};

typedef void (*rdk_dr_msg_cb)(void *rk, const rdk_message_t *msg, void *opaque);
typedef int (*rdk_stats_cb)(void *rk, char *json, size_t len, void *opaque);
typedef void (*rdk_error_cb)(void *rk, int err, const char *reason, void *opaque);

static struct {
    void *(*conf_new)(void);
    int (*conf_set)(void *conf, const char *name, const char *value, char *err, size_t len);
    void (*conf_set_dr_msg_cb)(void *conf, rdk_dr_msg_cb cb);
    void (*conf_set_stats_cb)(void *conf, rdk_stats_cb cb);
    void (*conf_set_error_cb)(void *conf, rdk_error_cb cb);
    void (*conf_set_opaque)(void *conf, void *opaque);
    void (*conf_destroy)(void *conf);
    void *(*new_)(int type, void *conf, char *err, size_t len);
    void (*destroy)(void *rk);
    void *(*topic_new)(void *rk, const char *topic, void *conf);
    void (*topic_destroy)(void *rkt);
    int (*produce_batch)(void *rkt, int32_t partition, int flags, rdk_message_t *msgs, int n);
    int (*poll)(void *rk, int timeout_ms);
    int (*purge)(void *rk, int flags);
    int (*metadata)(void *rk, int all_topics, void *only_rkt, const void **md, int timeout_ms);
    void (*metadata_destroy)(const void *md);
    int (*fatal_error)(void *rk, char *err, size_t len);
    const char *(*err2name)(int err);
    const char *(*err2str)(int err);
} rdk;
static void *rdk_handle;

#define RDK_SYMBOLS(X) X(conf_new) X(conf_set) X(conf_set_dr_msg_cb) X(conf_set_stats_cb) \
    X(conf_set_error_cb) X(conf_set_opaque) X(conf_destroy) X(destroy) X(topic_new) \
    X(topic_destroy) X(produce_batch) X(poll) X(purge) X(metadata) X(metadata_destroy) \
    X(fatal_error) X(err2name) X(err2str)

#define KAFKA_PRODUCE_BATCH 4096
#define KAFKA_PENDING_FAILURES 8

enum { KAFKA_INFLIGHT = 0, KAFKA_DELIVERED = 1, KAFKA_FAILED = 2 };

struct logpool__kafka_s {
    logpool__sink_t *sink;
    void *rk, *rkt;
    char *key;
    size_t key_len;
    uint64_t base_seq;  /* seq of the oldest message handed over (the chain's head) */
    uint64_t next_seq;
    uint32_t window;    /* at most this many handed over and not reported; a power of 2 */
    uint8_t *states;    /* ring indexed by seq & (window - 1) */
    logpool__iov_t *iov; /* produce_pending's batch, KAFKA_PRODUCE_BATCH each */
    rdk_message_t *msgs;
    int failures[KAFKA_PENDING_FAILURES]; /* kinds of delivery failure not yet reported */
    int nfailures;
    char *statistics;   /* the latest statistics JSON not yet taken, or NULL */
};

/* Resolve librdkafka's entry points from the copy confluent-kafka loaded. Once per process;
 * every pool shares it. */
static int load_librdkafka(const char *path, char *err, size_t errlen)
{
    if (rdk_handle != NULL)
        return 0;
    void *h = dlopen(path, RTLD_NOW | RTLD_LOCAL);
    if (h == NULL) {
        snprintf(err, errlen, "cannot load librdkafka from %s: %s", path, dlerror());
        return -1;
    }
#define RDK_RESOLVE(name) \
    if ((*(void **)&rdk.name = dlsym(h, "rd_kafka_" #name)) == NULL) { \
        snprintf(err, errlen, "%s has no rd_kafka_%s", path, #name); \
        dlclose(h); \
        return -1; \
    }
    RDK_SYMBOLS(RDK_RESOLVE)
#undef RDK_RESOLVE
    *(void **)&rdk.new_ = dlsym(h, "rd_kafka_new");
    if (rdk.new_ == NULL) {
        snprintf(err, errlen, "%s has no rd_kafka_new", path);
        dlclose(h);
        return -1;
    }
    rdk_handle = h;
    return 0;
}

static void on_delivery(void *rk, const rdk_message_t *msg, void *opaque)
{
    (void)rk;
    logpool__kafka_t *k = opaque;
    uint64_t seq = (uint64_t)(uintptr_t)msg->private_;
    if (seq - k->base_seq >= k->window)
        return; /* not ours (a producer being replaced): nothing to release */
    if (msg->err == RDK_ERR_FATAL || msg->err == RDK_ERR_PURGE_QUEUE ||
        msg->err == RDK_ERR_PURGE_INFLIGHT)
        return; /* not a refusal of the message: it stays in flight, the next producer
                 * resends it */
    k->states[seq & (k->window - 1)] = msg->err == 0 ? KAFKA_DELIVERED : KAFKA_FAILED;
    if (msg->err == 0)
        return;
    for (int i = 0; i < k->nfailures; i++)
        if (k->failures[i] == msg->err)
            return;
    if (k->nfailures < KAFKA_PENDING_FAILURES)
        k->failures[k->nfailures++] = msg->err;
}

static int on_statistics(void *rk, char *json, size_t len, void *opaque)
{
    (void)rk;
    logpool__kafka_t *k = opaque;
    char *copy = malloc(len + 1);
    if (copy == NULL)
        return 0;
    memcpy(copy, json, len);
    copy[len] = '\0';
    free(k->statistics);
    k->statistics = copy;
    return 0; /* librdkafka frees its json */
}

static void on_error(void *rk, int err, const char *reason, void *opaque)
{
    /* Broker trouble: librdkafka reconnects and retries by itself, delivery reports say what
     * failed for good, and a fatal error is read with rd_kafka_fatal_error. Registering this
     * keeps librdkafka from logging every transient one. */
    (void)rk, (void)err, (void)reason, (void)opaque;
}

logpool__kafka_t *logpool__kafka_new(logpool__sink_t *sink, const char *librdkafka,
                                     const char **names, const char **values, int nprops,
                                     const char *topic, const char *key, size_t key_len,
                                     uint32_t window, char *err, size_t errlen)
{
    if (load_librdkafka(librdkafka, err, errlen) != 0)
        return NULL;
    logpool__kafka_t *k = calloc(1, sizeof *k);
    uint32_t ring = 1;
    while (ring < window)
        ring <<= 1;
    if (k == NULL || (k->states = calloc(ring, 1)) == NULL ||
        (k->iov = calloc(KAFKA_PRODUCE_BATCH, sizeof *k->iov)) == NULL ||
        (k->msgs = calloc(KAFKA_PRODUCE_BATCH, sizeof *k->msgs)) == NULL ||
        (key != NULL && (k->key = malloc(key_len ? key_len : 1)) == NULL)) {
        snprintf(err, errlen, "out of memory");
        goto fail;
    }
    k->sink = sink;
    k->window = ring;
    if (key != NULL) {
        memcpy(k->key, key, key_len);
        k->key_len = key_len;
    }
    void *conf = rdk.conf_new();
    for (int i = 0; i < nprops; i++) {
        if (rdk.conf_set(conf, names[i], values[i], err, errlen) != RDK_CONF_OK) {
            rdk.conf_destroy(conf);
            goto fail;
        }
    }
    rdk.conf_set_dr_msg_cb(conf, on_delivery);
    rdk.conf_set_stats_cb(conf, on_statistics);
    rdk.conf_set_error_cb(conf, on_error);
    rdk.conf_set_opaque(conf, k);
    k->rk = rdk.new_(RDK_PRODUCER, conf, err, errlen); /* takes conf, on success only */
    if (k->rk == NULL) {
        rdk.conf_destroy(conf);
        goto fail;
    }
    k->rkt = rdk.topic_new(k->rk, topic, NULL);
    if (k->rkt == NULL) {
        snprintf(err, errlen, "cannot create topic %s", topic);
        rdk.destroy(k->rk);
        goto fail;
    }
    return k;
fail:
    if (k != NULL) {
        free(k->states);
        free(k->iov);
        free(k->msgs);
        free(k->key);
        free(k);
    }
    return NULL;
}

/* Give up what librdkafka still queues (it stays in the chain: resent by a new producer,
 * or counted as abandoned) and free the producer. Delivery reports of the purge are not
 * served, so nothing is released. */
void logpool__kafka_destroy(logpool__kafka_t *k)
{
    if (k == NULL)
        return;
    rdk.purge(k->rk, RDK_PURGE_F_QUEUE | RDK_PURGE_F_NON_BLOCKING);
    k->base_seq = k->next_seq; /* any report served from here on is not ours */
    rdk.topic_destroy(k->rkt);
    rdk.destroy(k->rk);
    free(k->statistics);
    free(k->states);
    free(k->iov);
    free(k->msgs);
    free(k->key);
    free(k);
}

/* Connected means the cluster answered a metadata request for our topic. */
int logpool__kafka_metadata(logpool__kafka_t *k, int timeout_ms, char *err, size_t errlen)
{
    const void *md = NULL;
    int rc = rdk.metadata(k->rk, 0, k->rkt, &md, timeout_ms);
    if (rc != 0) {
        snprintf(err, errlen, "%s", rdk.err2str(rc));
        return -1;
    }
    rdk.metadata_destroy(md);
    return 0;
}

/* Serve callbacks (delivery reports, statistics), waiting up to timeout_ms for one. */
int logpool__kafka_poll(logpool__kafka_t *k, int timeout_ms)
{
    return rdk.poll(k->rk, timeout_ms);
}

uint32_t logpool__kafka_inflight(logpool__kafka_t *k)
{
    return (uint32_t)(k->next_seq - k->base_seq);
}

/* Release the reported messages at the head of the chain in runs of one fate. */
static uint64_t release_reported(logpool__kafka_t *k, uint64_t *delivered)
{
    uint64_t released = 0;
    uint32_t mask = k->window - 1;
    while (k->base_seq < k->next_seq) {
        uint8_t fate = k->states[k->base_seq & mask];
        if (fate == KAFKA_INFLIGHT)
            break;
        uint32_t run = 0;
        while (k->base_seq + run < k->next_seq && k->states[(k->base_seq + run) & mask] == fate)
            run++;
        k->base_seq += run;
        logpool__sink_set_unacked(k->sink, k->next_seq - k->base_seq);
        logpool__sink_consume_messages(k->sink, run, fate == KAFKA_DELIVERED
                                       ? LOGPOOL__DONE_SENT : LOGPOOL__DONE_REJECTED);
        if (fate == KAFKA_DELIVERED)
            *delivered += run;
        released += run;
    }
    return released;
}

/* Hand librdkafka the pending messages not handed over yet, up to the window. A message it
 * refuses for good (too large, unknown partition) is marked failed in place, so it is
 * released in order; a full queue stops the batch there, to be retried later. */
static uint64_t produce_pending(logpool__kafka_t *k)
{
    logpool__iov_t *iov = k->iov; /* on the heap: ~350 KiB would not fit a thread's stack */
    rdk_message_t *msgs = k->msgs;
    uint32_t inflight = (uint32_t)(k->next_seq - k->base_seq);
    uint32_t room = k->window - inflight;
    int n = logpool__sink_message_iov(k->sink, iov, room < KAFKA_PRODUCE_BATCH
                                      ? (int)room : KAFKA_PRODUCE_BATCH, SIZE_MAX, inflight);
    if (n <= 0)
        return 0;
    for (int i = 0; i < n; i++) {
        msgs[i] = (rdk_message_t){
            .partition = RDK_PARTITION_UA, .payload = iov[i].base, .len = iov[i].len,
            .key = k->key, .key_len = k->key_len,
            .private_ = (void *)(uintptr_t)(k->next_seq + (uint64_t)i),
        };
    }
    rdk.produce_batch(k->rkt, RDK_PARTITION_UA, RDK_MSG_F_COPY, msgs, n);
    uint32_t mask = k->window - 1;
    int handed = 0;
    for (; handed < n; handed++) {
        int e = msgs[handed].err;
        if (e == RDK_ERR_QUEUE_FULL || e == RDK_ERR_FATAL)
            break; /* not taken (this one and every later one): retry later */
        k->states[(k->next_seq + (uint64_t)handed) & mask] = KAFKA_INFLIGHT;
        if (e != 0)
            on_delivery(k->rk, &msgs[handed], k); /* refused for good, reported in order */
    }
    k->next_seq += (uint64_t)handed;
    if (handed > 0) /* (the engine counts the write) */
        logpool__sink_set_unacked(k->sink, k->next_seq - k->base_seq);
    return (uint64_t)handed;
}

/* One writer step: serve delivery reports, release what they finished, hand over more.
 * Returns the messages released plus handed over (0: no progress), or -1 when the producer
 * hit a fatal error (the text in err): it must be replaced. *delivered gets the messages
 * released as sent. */
int64_t logpool__kafka_write(logpool__kafka_t *k, uint64_t *delivered, char *err,
                             size_t errlen)
{
    *delivered = 0;
    rdk.poll(k->rk, 0);
    /* Release what the cluster confirmed before looking for a fatal error: the producer
     * that replaces this one must not resend messages already delivered. */
    uint64_t progress = release_reported(k, delivered);
    if (rdk.fatal_error(k->rk, err, errlen) != 0)
        return -1;
    if (k->next_seq - k->base_seq < k->window)
        progress += produce_pending(k);
    return (int64_t)progress;
}

/* A kind of delivery failure seen since the last call (0: none), each reported once here. */
int logpool__kafka_take_failure(logpool__kafka_t *k)
{
    if (k->nfailures == 0)
        return 0;
    int e = k->failures[0];
    memmove(k->failures, k->failures + 1, (size_t)(--k->nfailures) * sizeof k->failures[0]);
    return e;
}

const char *logpool__kafka_error_name(int err)
{
    return rdk.err2name(err);
}

const char *logpool__kafka_error_text(int err)
{
    return rdk.err2str(err);
}

/* The latest statistics JSON since the last call, or NULL; free it with
 * logpool__kafka_free_statistics. */
char *logpool__kafka_take_statistics(logpool__kafka_t *k)
{
    char *s = k->statistics;
    k->statistics = NULL;
    return s;
}

void logpool__kafka_free_statistics(char *statistics)
{
    free(statistics);
}

/* Test seam (FaultInjector's kafka_fatal): raise a fatal producer error the way an
 * idempotent producer's broken sequence would, through librdkafka's own test entry point. */
int logpool__kafka_inject_fatal(logpool__kafka_t *k)
{
    int (*test_fatal)(void *rk, int err, const char *reason);
    *(void **)&test_fatal = dlsym(rdk_handle, "rd_kafka_test_fatal_error");
    if (test_fatal == NULL)
        return -1;
    return test_fatal(k->rk, 45 /* OUT_OF_ORDER_SEQUENCE_NUMBER */, "injected by a test");
}
