/*
 * Internal interface between the C core and the Python writer threads of the same
 * library. Not installed, not stable. The block between the CDEF markers is read by
 * build_ffi.py into the embedded module's cdef, so it holds plain declarations only.
 *
 * Ownership: producers (log_cdata, any thread) append to the sink's chain under
 * sink->lock. The sink's writer thread alone calls logpool__sink_take/iov/consume/rewind:
 * take moves the whole producer chain onto the writer's pending list; the rest walk that
 * list without the lock.
 */
#ifndef LOGPOOL_INTERNAL_H
#define LOGPOOL_INTERNAL_H

#include "logpool.h"

/* LOGPOOL_CDEF_BEGIN */
typedef struct logpool__sink_s logpool__sink_t;

typedef struct logpool__limits_s {
    uint64_t flush_limit;
    uint64_t periodic_flush_ms;
    uint64_t max_buffer_length;
    uint64_t max_message_size;
    uint64_t framing; /* enum logpool__framing */
    uint64_t spill_bytes; /* 0: no spool; else wake the writer to spill at this much */
} logpool__limits_t;

/* Framing is applied by log_cdata, so the writer sends (and resends) whole frames. */
enum logpool__framing {
    LOGPOOL__FRAMING_RAW = 0,       /* bytes as given */
    LOGPOOL__FRAMING_NEWLINE = 1,   /* "\n" appended when the message does not end with one */
    LOGPOOL__FRAMING_OCTETS = 2     /* RFC 6587 octet counting: "LEN SP MSG" */
};

typedef struct logpool__iov_s {
    char *base;
    size_t len;
} logpool__iov_t;

/* A sink's cache of free chunks (logpool__sink_cache), for tests and bench/. */
typedef struct logpool__cache_s {
    uint64_t cached_bytes;  /* free chunks kept now, headers included */
    uint64_t reserve_bytes; /* what an idle sink keeps: the pre-faulted reserve */
    uint64_t limit_bytes;   /* the most it keeps once a decay step passed: its share of the
                             * pool's 8 MiB (between bursts it may keep what a burst used) */
} logpool__cache_t;

enum logpool__wait_result {
    LOGPOOL__WAIT_TIMEOUT = 0,
    LOGPOOL__WAIT_READY = 1,   /* a batch is due: take it */
    LOGPOOL__WAIT_STOP = 2,    /* logpool_close gave up waiting: exit now */
    LOGPOOL__WAIT_SPILL = 3    /* FOR_STOP: the producer chain passed spill_bytes */
};

enum logpool__wait_mode {
    LOGPOOL__WAIT_FOR_BATCH = 0,
    LOGPOOL__WAIT_FOR_STOP = 1,
    LOGPOOL__WAIT_FOR_STOP_NO_SPILL = 2, /* the spool cannot take a spill now: stop only */
    /* The spiller thread's waits (its own flag and condition variable): */
    LOGPOOL__WAIT_FOR_SPILL = 3,  /* SPILL once the producers' buffered bytes reach
                                     spill_bytes with a producer chain to spill */
    LOGPOOL__WAIT_SPILLER_IDLE = 4 /* the spool is full: stop or the timeout only */
};

/* What became of messages the writer releases from its chain. */
enum logpool__fate {
    LOGPOOL__DONE_UNSENDABLE = 0,  /* no socket could ever take it (dropped_unsendable) */
    LOGPOOL__DONE_SENT = 1,        /* written, or acknowledged (sent_messages) */
    LOGPOOL__DONE_REJECTED = 2,    /* refused for good by the collector (dropped_rejected) */
    LOGPOOL__DONE_SPOOLED = 3,     /* read back from the spool, still in its file: back there */
    LOGPOOL__DONE_REQUEUED = 4     /* copied to the head of the pending list (a per-item retry):
                                      still buffered, no fate yet */
};

enum logpool__counter {
    LOGPOOL__CONNECTS = 0,
    LOGPOOL__CONNECT_FAILURES = 1,
    LOGPOOL__WRITE_ERRORS = 2,
    LOGPOOL__RECONNECTS = 3,
    LOGPOOL__WRITER_ERRORS = 4,
    LOGPOOL__WRITES = 5,
    LOGPOOL__TLS_HANDSHAKE_FAILURES = 6,
    LOGPOOL__TLS_RESUMED = 7,
    LOGPOOL__RESENT_MESSAGES = 8,
    LOGPOOL__RETRIED_MESSAGES = 9,
    LOGPOOL__DEAD_LETTERS = 10
};

logpool_t *logpool__pool_alloc(int nsinks, int exit_flush_timeout_ms);
int logpool__sink_init(logpool_t *pool, int socket_id, const logpool__limits_t *limits);
int logpool__sink_set_name(logpool_t *pool, int socket_id, const char *name);
logpool__sink_t *logpool__pool_sink(logpool_t *pool, int socket_id);
void logpool__pool_discard(logpool_t *pool);
void logpool__set_error(int code, const char *message);

int logpool__sink_wait(logpool__sink_t *sink, int mode, int timeout_ms);
size_t logpool__sink_take(logpool__sink_t *sink);
uint64_t logpool__sink_batch_oldest_ns(logpool__sink_t *sink);
int logpool__sink_iov(logpool__sink_t *sink, logpool__iov_t *iov, int max_iov);
size_t logpool__sink_consume(logpool__sink_t *sink, size_t nbytes);
int logpool__sink_send_datagrams(logpool__sink_t *sink, int fd, int max_msgs);
size_t logpool__sink_drop_message(logpool__sink_t *sink);
size_t logpool__sink_rewind(logpool__sink_t *sink);
int logpool__sink_relp_frames(logpool__sink_t *sink, char *out, size_t cap, uint32_t skip,
                              uint32_t max_msgs, uint32_t first_txnr, size_t *used);
size_t logpool__sink_consume_messages(logpool__sink_t *sink, uint32_t count, int fate);
/* Settle the first n pending messages one by one: fates[i] is LOGPOOL__DONE_SENT,
 * LOGPOOL__DONE_REJECTED or LOGPOOL__DONE_REQUEUED; the requeued ones (a per-item retry) are
 * copied, in order, to a new chunk at the head of the pending list and stay buffered.
 * Returns how many were requeued, or -1 without memory for the copy (nothing settled). */
int logpool__sink_settle_each(logpool__sink_t *sink, const uint8_t *fates, uint32_t n);
int logpool__sink_message_iov(logpool__sink_t *sink, logpool__iov_t *iov, int max_iov,
                              size_t max_bytes, uint32_t skip);
void logpool__sink_set_unacked(logpool__sink_t *sink, uint64_t n);
size_t logpool__sink_spill_take(logpool__sink_t *sink);
void logpool__sink_spill_done(logpool__sink_t *sink, uint64_t spooled);
int logpool__sink_inject(logpool__sink_t *sink, const char *data, size_t len,
                         const uint32_t *ends, uint32_t nmsgs);
void logpool__sink_adopted(logpool__sink_t *sink, uint64_t nmsgs, uint64_t nbytes);
void logpool__sink_spool_count(logpool__sink_t *sink, int what, uint64_t n);
void logpool__sink_spool_settle(logpool__sink_t *sink, uint64_t dropped_msgs,
                                uint64_t dropped_bytes, int64_t reframed_bytes);
void logpool__sink_set_adopting(logpool__sink_t *sink, int adopting);
int logpool__spool_scan(int fd, int64_t start, uint64_t *nmsgs, uint64_t *nbytes,
                        int64_t *end);
void logpool__sink_spill_undo(logpool__sink_t *sink);
uint32_t logpool__sink_pending_messages(logpool__sink_t *sink);
int64_t logpool__sink_spill_write(logpool__sink_t *sink, int fd, int64_t offset,
                                  uint64_t room, uint32_t *nmsgs);
size_t logpool__sink_pending(logpool__sink_t *sink);
void logpool__sink_count(logpool__sink_t *sink, int counter, uint64_t n);
void logpool__sink_stats(logpool__sink_t *sink, logpool_stats_t *out);
void logpool__sink_cache(logpool__sink_t *sink, logpool__cache_t *out);
void logpool__sink_set_connected(logpool__sink_t *sink, int connected);
void logpool__sink_writer_started(logpool__sink_t *sink);
void logpool__sink_writer_exit(logpool__sink_t *sink);
uint64_t logpool__now_ns(void);
int logpool__close_all(int timeout_ms);

/* kafka.c: a librdkafka producer driven by the sink's writer thread. */
typedef struct logpool__kafka_s logpool__kafka_t;
logpool__kafka_t *logpool__kafka_new(logpool__sink_t *sink, const char *librdkafka,
                                     const char **names, const char **values, int nprops,
                                     const char *topic, const char *key, size_t key_len,
                                     uint32_t window, char *err, size_t errlen);
void logpool__kafka_destroy(logpool__kafka_t *k);
int logpool__kafka_metadata(logpool__kafka_t *k, int timeout_ms, char *err, size_t errlen);
int logpool__kafka_poll(logpool__kafka_t *k, int timeout_ms);
uint32_t logpool__kafka_inflight(logpool__kafka_t *k);
int64_t logpool__kafka_write(logpool__kafka_t *k, uint64_t *delivered, char *err,
                             size_t errlen);
int logpool__kafka_take_failure(logpool__kafka_t *k);
const char *logpool__kafka_error_name(int err);
const char *logpool__kafka_error_text(int err);
char *logpool__kafka_take_statistics(logpool__kafka_t *k);
void logpool__kafka_free_statistics(char *statistics);
int logpool__kafka_inject_fatal(logpool__kafka_t *k);
/* LOGPOOL_CDEF_END */

/* Implemented in runtime.c (needs Python.h), used by pool.c; the fork generation is
 * process.c's, used by runtime.c. */
int logpool__runtime_start(char *err, size_t errlen);
void logpool__runtime_forget_pool(logpool_t *pool);
unsigned logpool__fork_generation(void);
void *logpool__gil_release(void);
void logpool__gil_restore(void *tstate);
int logpool__python_finalizing(void);

#endif /* LOGPOOL_INTERNAL_H */
