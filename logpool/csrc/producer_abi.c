/*
 * The public ABI of liblogpool_producer.so: agent mode only, no Python linked or loaded.
 * Built from producer.c, agent_config.c, agentmode.c, codes.c and process.c beside this file
 * (build_ffi.py);
 * an in-process config is refused with a message naming liblogpool.so. Every pool here is
 * an agent-mode pool (pool->producer is set).
 */
#include "core.h" /* first: it defines _GNU_SOURCE */
#include "producer.h"

LOGPOOL_API logpool_t *logpool_new(const char *config_json)
{
    if (config_json == NULL) {
        logpool__set_error(LOGPOOL_EINVAL, "invalid argument: config_json is NULL");
        return NULL;
    }
    logpool_t *pool;
    if (logpool__agent_pool_new(config_json, &pool))
        return pool;
    logpool__set_error(LOGPOOL_ECONFIG, "invalid configuration: liblogpool_producer.so takes "
                                        "agent mode only ({\"agent\": \"<agent_dir>\"}); an "
                                        "in-process pool needs liblogpool.so");
    return NULL;
}

LOGPOOL_API int log_cdata(logpool_t *pool, int socket_id, const char *msg, size_t len)
{
    if (pool == NULL)
        return LOGPOOL_EINVAL;
    return logpool__producer_log(pool->producer, socket_id, msg, len);
}

LOGPOOL_API int logpool_flush(logpool_t *pool, int timeout_ms)
{
    return pool == NULL ? LOGPOOL_EINVAL : logpool__producer_flush(pool->producer, timeout_ms);
}

LOGPOOL_API int logpool_shutdown(logpool_t *pool)
{
    return pool == NULL ? LOGPOOL_EINVAL : logpool__producer_shutdown(pool->producer);
}

LOGPOOL_API int logpool_close(logpool_t *pool, int timeout_ms)
{
    return pool == NULL ? LOGPOOL_EINVAL : logpool__producer_close(pool->producer);
}

LOGPOOL_API void logpool_free(logpool_t *pool)
{
    if (pool != NULL)
        logpool__agent_pool_free(pool);
}

LOGPOOL_API int logpool_sink_count(logpool_t *pool)
{
    return pool == NULL ? LOGPOOL_EINVAL : pool->nsinks;
}

LOGPOOL_API int logpool_sink_index(logpool_t *pool, const char *name)
{
    if (pool == NULL || name == NULL)
        return LOGPOOL_EINVAL;
    return logpool__producer_sink_index(pool->producer, name);
}

LOGPOOL_API int logpool_stats(logpool_t *pool, int socket_id, logpool_stats_t *out)
{
    if (pool == NULL || out == NULL)
        return LOGPOOL_EINVAL;
    return logpool__producer_stats(pool->producer, socket_id, out);
}

LOGPOOL_API int logpool_metrics(logpool_t *pool, char *buf, size_t len)
{
    return pool == NULL ? LOGPOOL_EINVAL : logpool__producer_metrics(pool->producer, buf, len);
}
