/*
 * logpool — ship log lines out of nginx/OpenResty workers without blocking them.
 *
 * Public C ABI. Everything between LOGPOOL_CDEF_BEGIN and LOGPOOL_CDEF_END is plain
 * declarations (no macros, no preprocessor) so that one text feeds the C compiler,
 * cffi's cdef (build_ffi.py reads it) and LuaJIT's ffi.cdef (lua/resty/logpool.lua holds
 * a copy that tests/test_header.py compares with this one).
 *
 * Threads: log_cdata, logpool_stats, logpool_sink_count, logpool_strerror and
 * logpool_version may be called from any thread at any time while the pool is not freed.
 * logpool_flush may be called from any thread. logpool_close may be called from any thread,
 * also twice; logpool_free must not race with any other call on the same pool.
 */
#ifndef LOGPOOL_H
#define LOGPOOL_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define LOGPOOL_VERSION_MAJOR 0
#define LOGPOOL_VERSION_MINOR 1
#define LOGPOOL_VERSION_PATCH 0
#define LOGPOOL_VERSION_STRING "0.1.0"

/* One table for codes and messages: logpool_strerror() is generated from it and
 * pool.c asserts at compile time that it agrees with the enum below. */
#define LOGPOOL_ERRNO_MAP(XX)                                                        \
    XX(OK,         0, "success")                                                     \
    XX(EINVAL,    -1, "invalid argument")                                            \
    XX(ENOSINK,   -2, "no such sink")                                                \
    XX(ETOOBIG,   -3, "message too big")                                             \
    XX(EFULL,     -4, "buffer full")                                                 \
    XX(ECLOSED,   -5, "pool closed")                                                 \
    XX(ECONFIG,   -6, "invalid configuration")                                       \
    XX(ERUNTIME,  -7, "embedded Python runtime unavailable")                         \
    XX(ETIMEDOUT, -8, "timed out")

/* LOGPOOL_CDEF_BEGIN */
typedef struct logpool_s logpool_t;

enum logpool_code {
    LOGPOOL_OK = 0,
    LOGPOOL_EINVAL = -1,
    LOGPOOL_ENOSINK = -2,
    LOGPOOL_ETOOBIG = -3,
    LOGPOOL_EFULL = -4,
    LOGPOOL_ECLOSED = -5,
    LOGPOOL_ECONFIG = -6,
    LOGPOOL_ERUNTIME = -7,
    LOGPOOL_ETIMEDOUT = -8
};

/* Counters of one sink since the pool was created. New fields are only ever appended. */
typedef struct logpool_stats_s {
    uint64_t accepted_messages;   /* log_cdata returned len */
    uint64_t accepted_bytes;
    uint64_t sent_messages;       /* completely written to a socket */
    uint64_t sent_bytes;
    uint64_t dropped_full;        /* refused: LOGPOOL_EFULL */
    uint64_t dropped_too_big;     /* refused: LOGPOOL_ETOOBIG */
    uint64_t dropped_closed;      /* refused: LOGPOOL_ECLOSED */
    uint64_t abandoned_messages;  /* accepted, still buffered when logpool_close gave up */
    uint64_t connects;            /* successful connects */
    uint64_t connect_failures;
    uint64_t write_errors;        /* a connection broke while writing */
    uint64_t reconnects;          /* successful connects after the first one */
    uint64_t buffered_bytes;      /* gauge: accepted, not yet completely written */
    uint64_t connected;           /* gauge: 1 while the writer holds a connection */
    uint64_t buffered_messages;   /* gauge */
    uint64_t writes;              /* send calls that wrote at least one byte */
    uint64_t resent_bytes;        /* bytes written again after a broken connection */
    uint64_t writer_errors;       /* unexpected exceptions in the writer (logged) */
    uint64_t tls_handshake_failures; /* TLS handshakes that failed (also connect_failures) */
    uint64_t tls_resumed;         /* TLS handshakes that resumed an earlier session */
    uint64_t dropped_unsendable;  /* accepted, then refused by the socket for good (a
                                     datagram larger than its send buffer): dropped */
    uint64_t unacked_messages;    /* gauge: sent to an acknowledging collector (RELP), no
                                     acknowledgement yet */
    uint64_t resent_messages;     /* sent again after a broken session: with RELP, messages
                                     whose acknowledgement was lost (they may arrive twice) */
    uint64_t dropped_rejected;    /* accepted, then refused for good by the collector (HTTP
                                     4xx other than 408 and 429): dropped */
    uint64_t spooled_bytes;       /* gauge: in the sink's disk spool, not sent yet */
    uint64_t spooled_messages;    /* gauge */
    uint64_t dropped_spool_full;  /* could not be spooled at close (spool full or not
                                     writable): abandoned, also in abandoned_messages */
    uint64_t spool_writes;        /* messages written to the spool */
    uint64_t spool_replayed;      /* messages read back from the spool to be sent */
    uint64_t spool_corrupt;       /* spool records skipped: torn or failing their CRC */
    uint64_t spool_bad_entries;   /* spool directory entries skipped: not a regular file, not
                                     ours, unreadable, a garbage progress file (logged once) */
    uint64_t dropped_spool_replay; /* spooled messages dropped at replay: behind a corrupt
                                     record, or larger than the sink's max_message_size now */
    uint64_t retried_messages;    /* sent again after a definite refusal or a "later" (HTTP
                                     429/5xx, a per-item retry, a narrowing split): nothing
                                     was stored, so these never make a duplicate */
    uint64_t dead_letters;        /* rejected messages appended to dead_letter_path */
} logpool_stats_t;

/* Start a pool from a JSON config (see README). Starts the embedded Python runtime on first
 * use and one writer thread per sink. Returns NULL on error; logpool_last_error() says why.
 * Must not be called before fork in a process whose children will log (nginx: use
 * init_worker_by_lua, never init_by_lua). The caller owns the pool: logpool_close, then
 * logpool_free. */
logpool_t *logpool_new(const char *config_json);

/* Thread-local text of the last logpool_new failure in this thread ("" if none). */
const char *logpool_last_error(void);

/* Thread-local code of that failure: LOGPOOL_ECONFIG, LOGPOOL_ERUNTIME, LOGPOOL_EINVAL, or
 * LOGPOOL_OK (0) when the last logpool_new in this thread succeeded or none ran. */
int logpool_last_error_code(void);

/* Append one message to sink socket_id (0-based). Never blocks, never calls Python.
 * Returns len when accepted (0 for an empty message, which is a no-op), or
 * LOGPOOL_EINVAL (NULL pool, NULL msg with len > 0), LOGPOOL_ENOSINK, LOGPOOL_ETOOBIG (len,
 * or len with its framing, above max_message_size: msg is not read), LOGPOOL_EFULL,
 * LOGPOOL_ECLOSED. The message is copied; msg stays the caller's. */
int log_cdata(logpool_t *pool, int socket_id, const char *msg, size_t len);

/* Wait until every message accepted before the call is written (all sinks), at most
 * timeout_ms (< 0: no limit). Returns 0, LOGPOOL_ETIMEDOUT, LOGPOOL_EINVAL (NULL pool), or
 * LOGPOOL_ECLOSED (a sink's writer has stopped: the pool is closed, or inherited across
 * fork). */
int logpool_flush(logpool_t *pool, int timeout_ms);

/* Stop accepting (log_cdata returns LOGPOOL_ECLOSED from now on) without waiting; the
 * writers go on delivering what was accepted. For a close whose wait the caller slices
 * (logpool_flush with short timeouts, then logpool_close(pool, 0)). Returns 0,
 * LOGPOOL_EINVAL or LOGPOOL_ECLOSED (inherited across fork). Any thread; idempotent. */
int logpool_shutdown(logpool_t *pool);

/* Stop accepting, flush up to timeout_ms (< 0: no limit), stop the writer threads. Returns
 * the number of accepted messages abandoned (>= 0), or LOGPOOL_EINVAL (NULL pool). Safe to
 * call twice (returns the same count); in a forked child it only marks the inherited pool
 * closed and returns 0. */
int logpool_close(logpool_t *pool, int timeout_ms);

/* Release a pool. Closes it first (timeout 0) if the caller did not. */
void logpool_free(logpool_t *pool);

/* Number of configured sinks, or LOGPOOL_EINVAL (NULL pool). */
int logpool_sink_count(logpool_t *pool);

/* The socket_id of the sink the config names name: its "name", or for a sink without one the
 * name the library gives it (its URL, made unique with "#<index>" when another sink has it).
 * Returns the socket_id (>= 0), LOGPOOL_ENOSINK (no such sink) or LOGPOOL_EINVAL (NULL pool
 * or name). Any thread; no GIL. */
int logpool_sink_index(logpool_t *pool, const char *name);

/* Fill *out with sink socket_id's counters. Returns 0, LOGPOOL_EINVAL or LOGPOOL_ENOSINK. */
int logpool_stats(logpool_t *pool, int socket_id, logpool_stats_t *out);

/* Static message for any code (unknown codes included). */
const char *logpool_strerror(int code);

/* Prometheus text exposition of the pool (counters of every sink, the writers' histograms)
 * into buf, NUL-terminated, truncated to len - 1 bytes. Returns the full length (call again
 * with a larger buffer when it is >= len), or LOGPOOL_EINVAL, LOGPOOL_ECLOSED (inherited
 * across fork), LOGPOOL_ERUNTIME. Takes the GIL: for scrapes, never per request. */
int logpool_metrics(logpool_t *pool, char *buf, size_t len);

/* logpool_metrics_merge's flags. */
enum {
    LOGPOOL_METRICS_COUNTERS_ONLY = 1  /* keep only counter and histogram families */
};

/* Sum the Prometheus texts concatenated in texts[0..len) (one per process, e.g. each nginx
 * worker's logpool_metrics) into out, NUL-terminated, truncated to cap - 1 bytes: samples of
 * the same series (name and labels) summed, # HELP and # TYPE lines once, first order kept.
 * With LOGPOOL_METRICS_COUNTERS_ONLY, gauge (and untyped) families are left out: what still
 * holds for a process that has exited. Returns the full length (call again with a larger
 * buffer when it is >= cap), LOGPOOL_EINVAL (NULL with a length, len > 1 GiB, unknown flags)
 * or LOGPOOL_ERUNTIME (out of memory). Any thread, no pool needed, no GIL. */
int logpool_metrics_merge(const char *texts, size_t len, char *out, size_t cap, int flags);

/* "MAJOR.MINOR.PATCH" of the library. */
const char *logpool_version(void);
/* LOGPOOL_CDEF_END */

#ifdef __cplusplus
}
#endif

#endif /* LOGPOOL_H */
