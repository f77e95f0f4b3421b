/*
 * The codes' messages and the version: shared by liblogpool.so and the Python-free
 * liblogpool_producer.so (agent mode).
 */
#include "core.h" /* first: it defines _GNU_SOURCE */

/* The enum in logpool.h and the X-macro table cannot drift. */
#define LOGPOOL__CHECK_CODE(name, value, text) \
    _Static_assert(LOGPOOL_##name == (value), "code table and enum disagree: " #name);
LOGPOOL_ERRNO_MAP(LOGPOOL__CHECK_CODE)

LOGPOOL_API const char *logpool_strerror(int code)
{
#define LOGPOOL__STRERROR(name, value, text) \
    case (value):                           \
        return text;
    switch (code) {
        LOGPOOL_ERRNO_MAP(LOGPOOL__STRERROR)
    default:
        return "unknown error code";
    }
#undef LOGPOOL__STRERROR
}

LOGPOOL_API const char *logpool_version(void)
{
    return LOGPOOL_VERSION_STRING;
}
