/*
 * Agent mode, the agent's side (ring_agent.c): open a producer's ring, take its records into
 * the agent's own in-process pool, release read positions once delivered. Internal; the
 * block between the CDEF markers is read by build_ffi.py into the embedded module's cdef
 * (logpool/agent/ calls it).
 */
#ifndef LOGPOOL_RING_AGENT_H
#define LOGPOOL_RING_AGENT_H

#include "logpool.h"

/* LOGPOOL_CDEF_BEGIN */
typedef struct logpool__ring_s logpool__ring_t;

/* What the agent reports about a ring. Geometry and owner as read once at open; positions
 * and counters as they are now. */
typedef struct logpool__ring_info_s {
    uint64_t pid;
    uint64_t start_time;
    uint64_t created_unix_ns;
    uint64_t data_bytes;
    uint64_t write_pos;
    uint64_t read_pos;     /* released: delivered or spooled */
    uint64_t scan_pos;     /* taken into the agent's pool */
    uint64_t accepted_messages; /* the producer's counters (untrusted, for metrics only) */
    uint64_t accepted_bytes;
    uint64_t dropped_full;
    uint64_t dropped_too_big;
    uint64_t closed;
    uint64_t taken_messages;    /* records this agent took into its pool */
    uint64_t resets;            /* garbage found: the ring was skipped to its write position */
    uint64_t possible_duplicates; /* taken again after an agent restart: the earlier agent
                                     had taken them and not released them */
    uint64_t too_big;           /* records the agent's pool refused as too big (dropped) */
    uint64_t broken;            /* the file changed size under the agent: dropped (removed) */
} logpool__ring_info_t;

/* Opens and maps agent_dir/name for the agent. NULL with err set (not a ring of this
 * version, wrong size, not a regular file). */
logpool__ring_t *logpool__ring_open(const char *dir, const char *name, uint32_t nsinks,
                                    char *err, size_t errlen);
/* Takes up to max_records published records into pool (log_cdata). Returns the number
 * taken; stops early when the pool refuses (EFULL: tried again next time). */
int64_t logpool__ring_drain(logpool__ring_t *ring, logpool_t *pool, uint32_t max_records);
uint64_t logpool__ring_scan_pos(logpool__ring_t *ring);
/* Publishes read_pos = pos (pos <= scan_pos; never moves back). */
void logpool__ring_release(logpool__ring_t *ring, uint64_t pos);
void logpool__ring_info(logpool__ring_t *ring, logpool__ring_info_t *out);
void logpool__ring_close(logpool__ring_t *ring);

/* Per sink of the agent's pool: accepted, and settled: how many of the first messages it
 * accepted are all delivered (sent or acknowledged by the sink's standard, or a final fate:
 * rejected, unsendable) or in the spool. Never counts one the writer still holds or one
 * abandoned at close. */
int logpool__agent_progress(logpool_t *pool, int socket_id, uint64_t *accepted,
                            uint64_t *settled);
/* 1 while a sink's writer is still adopting what an earlier agent spooled. */
int logpool__agent_adopting(logpool_t *pool);
/* LOGPOOL_CDEF_END */

#endif /* LOGPOOL_RING_AGENT_H */
