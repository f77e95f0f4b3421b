/*
 * Agent mode, the producer's side: a pool whose log_cdata appends to this process's own
 * shared-memory ring in agent_dir (ring.h) instead of a sink's buffer. Plain C with no
 * Python: built into liblogpool.so (pool.c and hotpath.c hand an agent-mode pool over to
 * these functions) and, with producer_abi.c, into liblogpool_producer.so, the library the
 * Lua module and the nginx module load in agent mode so that a worker never maps libpython.
 */
#ifndef LOGPOOL_PRODUCER_H
#define LOGPOOL_PRODUCER_H

#include <stddef.h>
#include <stdint.h>

#include "logpool.h"

typedef struct logpool__producer_s logpool__producer_t;

/* Is config_json an agent-mode config ({"agent": "<dir>", "ring_bytes": n})? Returns 0 (no
 * "agent" key: an in-process config), 1 (dir and *ring_bytes filled), or LOGPOOL_ECONFIG
 * with err set. Reads no file. */
int logpool__agent_config(const char *config_json, char *dir, size_t dirlen,
                          uint64_t *ring_bytes, char *err, size_t errlen);

/* Reads the agent's sink table in dir and creates this process's ring there. NULL with
 * *code and err set on failure. */
logpool__producer_t *logpool__producer_new(const char *dir, uint64_t ring_bytes, int *code,
                                           char *err, size_t errlen);
int logpool__producer_log(logpool__producer_t *p, int socket_id, const char *msg, size_t len);
int logpool__producer_flush(logpool__producer_t *p, int timeout_ms);
int logpool__producer_shutdown(logpool__producer_t *p);
int logpool__producer_close(logpool__producer_t *p);
void logpool__producer_free(logpool__producer_t *p);
int logpool__producer_sink_count(logpool__producer_t *p);
/* The id of the agent's sink named `name`, or LOGPOOL_ENOSINK. */
int logpool__producer_sink_index(logpool__producer_t *p, const char *name);
int logpool__producer_stats(logpool__producer_t *p, int socket_id, logpool_stats_t *out);
int logpool__producer_metrics(logpool__producer_t *p, char *buf, size_t len);

#endif /* LOGPOOL_PRODUCER_H */
