/* Functions implemented in Python (logpool/_embedded.py) and called from C.
 * Read by build_ffi.py into ffibuilder.embedding_api(). */
/* LOGPOOL_CDEF_BEGIN */
void *logpool__py_start(const char *config_json);
int logpool__py_metrics(void *pool, char *buf, size_t len);
void logpool__py_forget(void *pool);
/* LOGPOOL_CDEF_END */
