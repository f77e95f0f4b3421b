/*
 * Agent mode inside liblogpool.so: logpool_new recognises {"agent": ...} before it would
 * start Python, and the pool it returns hands every call to producer.c. (The nginx module
 * and the Lua module load liblogpool_producer.so instead, which has no Python at all.)
 */
#include "core.h" /* first: it defines _GNU_SOURCE */
#include "producer.h"

#include <limits.h>
#include <stdlib.h>

int logpool__agent_pool_new(const char *config_json, logpool_t **out)
{
    char dir[PATH_MAX], err[480];
    uint64_t ring_bytes;
    *out = NULL;
    int rc = logpool__agent_config(config_json, dir, sizeof dir, &ring_bytes, err, sizeof err);
    if (rc == 0)
        return 0;
    if (rc < 0) {
        logpool__set_error(rc, err);
        return 1;
    }
    int code;
    logpool__producer_t *producer = logpool__producer_new(dir, ring_bytes, &code, err,
                                                          sizeof err);
    if (producer == NULL) {
        logpool__set_error(code, err);
        return 1;
    }
    logpool_t *pool = calloc(1, sizeof *pool);
    if (pool == NULL) {
        logpool__producer_free(producer);
        logpool__set_error(LOGPOOL_ERUNTIME, "agent mode: out of memory");
        return 1;
    }
    pool->producer = producer;
    pool->nsinks = logpool__producer_sink_count(producer);
    pool->generation = logpool__fork_gen;
    logpool__set_error(LOGPOOL_OK, "");
    *out = pool;
    return 1;
}

void logpool__agent_pool_free(logpool_t *pool)
{
    logpool__producer_free(pool->producer);
    free(pool);
}
