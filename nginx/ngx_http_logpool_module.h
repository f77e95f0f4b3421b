/*
 * ngx_http_logpool_module: ship access-log lines through liblogpool from plain nginx.
 *
 * The module reaches the library only through the public C ABI (include/logpool.h): each
 * worker dlopen()s liblogpool in init_process and starts its own pool there (never in the
 * master: the pool starts Python and threads), formats each request's line in the log
 * phase into a per-worker buffer with nginx's variables, and hands it to log_cdata, which
 * copies it and returns at once. exit_process flushes and closes the pool within
 * logpool_exit_timeout.
 *
 * Split by concern, as nginx splits its modules:
 *   ngx_http_logpool_module.c    directives, configuration, the worker's lifecycle
 *   ngx_http_logpool_pool.c      logpool_pool / logpool_pool_file: the JSON nginx -t checks
 *   ngx_http_logpool_format.c    logpool_format, logpool_log, the log phase, escaping
 *   ngx_http_logpool_metrics.c   the shared zone, the publisher thread, logpool_metrics
 */
#ifndef NGX_HTTP_LOGPOOL_MODULE_H
#define NGX_HTTP_LOGPOOL_MODULE_H

#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>

#include <pthread.h>

#include "logpool.h"


#define NGX_HTTP_LOGPOOL_ESCAPE_DEFAULT    0
#define NGX_HTTP_LOGPOOL_ESCAPE_JSON       1
#define NGX_HTTP_LOGPOOL_ESCAPE_NONE       2
#define NGX_HTTP_LOGPOOL_ESCAPE_JSON_UTF8  3

/* What a format's op writes: literal text, a variable, or one of the log module's own
 * variables, computed at log time (ngx_http_log_module.c's ngx_http_log_vars). */
#define NGX_HTTP_LOGPOOL_OP_TEXT             0
#define NGX_HTTP_LOGPOOL_OP_VARIABLE         1
#define NGX_HTTP_LOGPOOL_OP_PIPE             2
#define NGX_HTTP_LOGPOOL_OP_TIME_LOCAL       3
#define NGX_HTTP_LOGPOOL_OP_TIME_ISO8601     4
#define NGX_HTTP_LOGPOOL_OP_MSEC             5
#define NGX_HTTP_LOGPOOL_OP_REQUEST_TIME     6
#define NGX_HTTP_LOGPOOL_OP_STATUS           7
#define NGX_HTTP_LOGPOOL_OP_BYTES_SENT       8
#define NGX_HTTP_LOGPOOL_OP_BODY_BYTES_SENT  9
#define NGX_HTTP_LOGPOOL_OP_REQUEST_LENGTH   10
/* room for the longest of them ("28/Sep/1970:12:00:00 +0600", an off_t, a time.msec) */
#define NGX_HTTP_LOGPOOL_LOG_VAR_LEN         64

#define NGX_HTTP_LOGPOOL_MAX_LINE        (64 * 1024 * 1024)


typedef struct {
    ngx_uint_t                  kind;     /* NGX_HTTP_LOGPOOL_OP_* */
    ngx_str_t                   text;     /* OP_TEXT: literal bytes */
    ngx_int_t                   index;    /* OP_VARIABLE: variable index */
} ngx_http_logpool_op_t;

typedef struct {
    ngx_str_t                   name;
    ngx_uint_t                  escape;
    size_t                      expansion; /* worst-case bytes out per byte in */
    ngx_array_t                *ops;      /* ngx_http_logpool_op_t */
    ngx_array_t                *flushes;  /* variable indexes (ngx_int_t), as log_format */
} ngx_http_logpool_fmt_t;

typedef struct {
    ngx_str_t                   sink;
    u_char                     *sink_cstr; /* sink, NUL-terminated, for logpool_sink_index */
    ngx_http_logpool_fmt_t     *fmt;
    ngx_http_complex_value_t   *filter;   /* if=, or NULL */
    u_char                     *file;
    ngx_uint_t                  line;
    ngx_uint_t                  n;        /* index into the worker's sink_ids */
} ngx_http_logpool_log_t;

typedef struct {
    ngx_array_t                *logs;     /* ngx_http_logpool_log_t *; NULL: off */
} ngx_http_logpool_loc_conf_t;

typedef struct {
    ngx_str_t                   pool_json;    /* NUL-terminated; len 0: no pool */
    ngx_str_t                   pool_where;   /* for messages: "file:line" of the directive */
    ngx_array_t                 sink_names;   /* ngx_str_t per sink: its "name", or empty */
    ngx_array_t                 sink_urls;    /* ngx_str_t per sink: its first URL */
    ngx_array_t                 formats;      /* ngx_http_logpool_fmt_t */
    ngx_array_t                 all_logs;     /* ngx_http_logpool_log_t * */
    ngx_msec_t                  exit_timeout;
    ngx_str_t                   library;
    ngx_str_t                   agent_dir;    /* agent mode ({"agent": ...}): len > 0 */
    size_t                      slot_size;
    ngx_uint_t                  nslots;
    ngx_shm_zone_t             *zone;
} ngx_http_logpool_main_conf_t;


/* Per worker: the library, the pool, the line buffer, the metrics publisher. */
typedef struct {
    void                       *dl;
    logpool_t                  *pool;
    __typeof__(logpool_new)              *new_;
    __typeof__(logpool_last_error)       *last_error;
    __typeof__(log_cdata)                *log_cdata;
    __typeof__(logpool_close)            *close;
    __typeof__(logpool_free)             *free;
    __typeof__(logpool_metrics)          *metrics;
    __typeof__(logpool_metrics_merge)    *metrics_merge;
    __typeof__(logpool_version)          *version;
    __typeof__(logpool_sink_index)       *sink_index;
    int                        *sink_ids;  /* per logpool_log (log->n): its socket_id, or -1 */
    u_char                     *buf;      /* the line being formatted */
    u_char                     *last;     /* buf + cap */
    size_t                      cap;
    /* metrics (ngx_http_logpool_metrics.c) */
    u_char                     *mbuf;     /* metrics text, slot_size bytes */
    ngx_uint_t                  slot;     /* this worker's slot in the zone; 0: none */
    ngx_flag_t                  publish_warned;
    /* The publisher thread: logpool_metrics() takes the embedded Python's GIL, which a
     * worker's event loop must never wait for (a busy writer holds it for up to a switch
     * interval), so the once-a-second copy into the shared zone runs beside the loop. */
    pthread_t                   publisher;
    ngx_flag_t                  publisher_running;
    pthread_mutex_t             publish_mutex;  /* mbuf and the slot copy: thread or scrape */
    pthread_mutex_t             stop_mutex;
    pthread_cond_t              stop_cond;
    int                         publisher_stop;
    ngx_http_logpool_main_conf_t *mcf;
} ngx_http_logpool_worker_t;


extern ngx_module_t               ngx_http_logpool_module;
extern ngx_http_logpool_worker_t  ngx_http_logpool_worker;


/* ngx_http_logpool_pool.c */
char *ngx_http_logpool_pool(ngx_conf_t *cf, ngx_command_t *cmd, void *conf);
ngx_int_t ngx_http_logpool_sink_known(ngx_http_logpool_main_conf_t *mcf, ngx_str_t *sink);

/* ngx_http_logpool_format.c */
char *ngx_http_logpool_format(ngx_conf_t *cf, ngx_command_t *cmd, void *conf);
char *ngx_http_logpool_log(ngx_conf_t *cf, ngx_command_t *cmd, void *conf);
ngx_int_t ngx_http_logpool_log_handler(ngx_http_request_t *r);

/* ngx_http_logpool_metrics.c */
char *ngx_http_logpool_metrics(ngx_conf_t *cf, ngx_command_t *cmd, void *conf);
ngx_int_t ngx_http_logpool_metrics_zone(ngx_conf_t *cf, ngx_http_logpool_main_conf_t *mcf);
void ngx_http_logpool_metrics_start(ngx_http_logpool_worker_t *w, ngx_cycle_t *cycle);
void ngx_http_logpool_metrics_stop(ngx_http_logpool_worker_t *w);
void ngx_http_logpool_metrics_retire(ngx_http_logpool_worker_t *w, logpool_t *pool);


/* ngx_http_logpool_agent.c: agent mode's sink names, from the table the agent publishes */
const char *ngx_http_logpool_agent_sink_names(ngx_conf_t *cf, ngx_str_t *agent_dir,
    ngx_array_t *names);

#endif /* NGX_HTTP_LOGPOOL_MODULE_H */
