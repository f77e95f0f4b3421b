/*
 * ngx_http_logpool_module: directives, configuration and the worker's lifecycle. What the
 * module does, and which file does what: ngx_http_logpool_module.h.
 *
 * A worker whose library or pool cannot start logs one line and serves without shipping.
 */
#include "ngx_http_logpool_module.h"

#include <dlfcn.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#if defined(__has_include)
#if __has_include("ngx_http_logpool_build.h")
#include "ngx_http_logpool_build.h" /* written by the Makefile: where liblogpool.so is */
#endif
#endif

#ifndef NGX_HTTP_LOGPOOL_LIB
#define NGX_HTTP_LOGPOOL_LIB "liblogpool.so"
#endif
#ifndef NGX_HTTP_LOGPOOL_PRODUCER_LIB
#define NGX_HTTP_LOGPOOL_PRODUCER_LIB "liblogpool_producer.so"
#endif

#define NGX_HTTP_LOGPOOL_SLOT_SIZE       (64 * 1024)


static void *ngx_http_logpool_create_main_conf(ngx_conf_t *cf);
static void *ngx_http_logpool_create_loc_conf(ngx_conf_t *cf);
static char *ngx_http_logpool_merge_loc_conf(ngx_conf_t *cf, void *parent, void *child);
static ngx_int_t ngx_http_logpool_postconfiguration(ngx_conf_t *cf);
static ngx_int_t ngx_http_logpool_init_process(ngx_cycle_t *cycle);
static void ngx_http_logpool_exit_process(ngx_cycle_t *cycle);


ngx_http_logpool_worker_t  ngx_http_logpool_worker;


static ngx_command_t  ngx_http_logpool_commands[] = {

    { ngx_string("logpool_pool"),
      NGX_HTTP_MAIN_CONF|NGX_CONF_TAKE1,
      ngx_http_logpool_pool,
      NGX_HTTP_MAIN_CONF_OFFSET,
      0,
      NULL },

    { ngx_string("logpool_pool_file"),
      NGX_HTTP_MAIN_CONF|NGX_CONF_TAKE1,
      ngx_http_logpool_pool,
      NGX_HTTP_MAIN_CONF_OFFSET,
      1,
      NULL },

    { ngx_string("logpool_format"),
      NGX_HTTP_MAIN_CONF|NGX_CONF_2MORE,
      ngx_http_logpool_format,
      NGX_HTTP_MAIN_CONF_OFFSET,
      0,
      NULL },

    { ngx_string("logpool_log"),
      NGX_HTTP_MAIN_CONF|NGX_HTTP_SRV_CONF|NGX_HTTP_LOC_CONF|NGX_CONF_TAKE123,
      ngx_http_logpool_log,
      NGX_HTTP_LOC_CONF_OFFSET,
      0,
      NULL },

    { ngx_string("logpool_exit_timeout"),
      NGX_HTTP_MAIN_CONF|NGX_CONF_TAKE1,
      ngx_conf_set_msec_slot,
      NGX_HTTP_MAIN_CONF_OFFSET,
      offsetof(ngx_http_logpool_main_conf_t, exit_timeout),
      NULL },

    { ngx_string("logpool_library"),
      NGX_HTTP_MAIN_CONF|NGX_CONF_TAKE1,
      ngx_conf_set_str_slot,
      NGX_HTTP_MAIN_CONF_OFFSET,
      offsetof(ngx_http_logpool_main_conf_t, library),
      NULL },

    { ngx_string("logpool_metrics_slot_size"),
      NGX_HTTP_MAIN_CONF|NGX_CONF_TAKE1,
      ngx_conf_set_size_slot,
      NGX_HTTP_MAIN_CONF_OFFSET,
      offsetof(ngx_http_logpool_main_conf_t, slot_size),
      NULL },

    { ngx_string("logpool_metrics"),
      NGX_HTTP_LOC_CONF|NGX_CONF_NOARGS,
      ngx_http_logpool_metrics,
      0,
      0,
      NULL },

      ngx_null_command
};


static ngx_http_module_t  ngx_http_logpool_module_ctx = {
    NULL,                                  /* preconfiguration */
    ngx_http_logpool_postconfiguration,    /* postconfiguration */

    ngx_http_logpool_create_main_conf,     /* create main configuration */
    NULL,                                  /* init main configuration */

    NULL,                                  /* create server configuration */
    NULL,                                  /* merge server configuration */

    ngx_http_logpool_create_loc_conf,      /* create location configuration */
    ngx_http_logpool_merge_loc_conf        /* merge location configuration */
};


ngx_module_t  ngx_http_logpool_module = {
    NGX_MODULE_V1,
    &ngx_http_logpool_module_ctx,          /* module context */
    ngx_http_logpool_commands,             /* module directives */
    NGX_HTTP_MODULE,                       /* module type */
    NULL,                                  /* init master */
    NULL,                                  /* init module */
    ngx_http_logpool_init_process,         /* init process */
    NULL,                                  /* init thread */
    NULL,                                  /* exit thread */
    ngx_http_logpool_exit_process,         /* exit process */
    NULL,                                  /* exit master */
    NGX_MODULE_V1_PADDING
};


/* ---- configuration ---------------------------------------------------------------- */

static void *
ngx_http_logpool_create_main_conf(ngx_conf_t *cf)
{
    ngx_http_logpool_main_conf_t  *mcf;

    mcf = ngx_pcalloc(cf->pool, sizeof(ngx_http_logpool_main_conf_t));
    if (mcf == NULL) {
        return NULL;
    }

    if (ngx_array_init(&mcf->sink_names, cf->pool, 4, sizeof(ngx_str_t)) != NGX_OK
        || ngx_array_init(&mcf->sink_urls, cf->pool, 4, sizeof(ngx_str_t)) != NGX_OK
        || ngx_array_init(&mcf->formats, cf->pool, 4, sizeof(ngx_http_logpool_fmt_t))
           != NGX_OK
        || ngx_array_init(&mcf->all_logs, cf->pool, 4, sizeof(ngx_http_logpool_log_t *))
           != NGX_OK)
    {
        return NULL;
    }

    mcf->exit_timeout = NGX_CONF_UNSET_MSEC;
    mcf->slot_size = NGX_CONF_UNSET_SIZE;

    return mcf;
}


static void *
ngx_http_logpool_create_loc_conf(ngx_conf_t *cf)
{
    ngx_http_logpool_loc_conf_t  *lcf;

    lcf = ngx_pcalloc(cf->pool, sizeof(ngx_http_logpool_loc_conf_t));
    if (lcf == NULL) {
        return NULL;
    }

    lcf->logs = NGX_CONF_UNSET_PTR;

    return lcf;
}


static char *
ngx_http_logpool_merge_loc_conf(ngx_conf_t *cf, void *parent, void *child)
{
    ngx_http_logpool_loc_conf_t  *prev = parent;
    ngx_http_logpool_loc_conf_t  *conf = child;

    /* An inner level that says anything (logpool_log ... or off) replaces the outer one. */
    ngx_conf_merge_ptr_value(conf->logs, prev->logs, NULL);

    return NGX_CONF_OK;
}


static ngx_int_t
ngx_http_logpool_postconfiguration(ngx_conf_t *cf)
{
    ngx_http_logpool_main_conf_t  *mcf;
    ngx_http_core_main_conf_t     *cmcf;
    ngx_http_handler_pt           *h;
    ngx_http_logpool_log_t       **log;
    ngx_str_t                     *names, *urls;
    ngx_uint_t                     i, k;
    u_char                        *p, *list;

    mcf = ngx_http_conf_get_module_main_conf(cf, ngx_http_logpool_module);

    ngx_conf_init_msec_value(mcf->exit_timeout, 1000);
    ngx_conf_init_size_value(mcf->slot_size, NGX_HTTP_LOGPOOL_SLOT_SIZE);
    if (mcf->library.len == 0 && mcf->agent_dir.len > 0) {
        /* agent mode: the library without Python (a worker never maps libpython) */
        ngx_str_set(&mcf->library, NGX_HTTP_LOGPOOL_PRODUCER_LIB);
    } else if (mcf->library.len == 0) {
        ngx_str_set(&mcf->library, NGX_HTTP_LOGPOOL_LIB);
    }

    if (mcf->slot_size < 4096) {
        ngx_log_error(NGX_LOG_EMERG, cf->log, 0,
                      "logpool_metrics_slot_size must be at least 4k");
        return NGX_ERROR;
    }

    log = mcf->all_logs.elts;
    names = mcf->sink_names.elts;
    urls = mcf->sink_urls.elts;

    for (i = 0; i < mcf->all_logs.nelts; i++) {
        if (mcf->pool_json.len == 0) {
            ngx_log_error(NGX_LOG_EMERG, cf->log, 0,
                          "logpool_log \"%V\" in %s:%ui: no logpool_pool or "
                          "logpool_pool_file in http{}", &log[i]->sink, log[i]->file,
                          log[i]->line);
            return NGX_ERROR;
        }

        if (!ngx_http_logpool_sink_known(mcf, &log[i]->sink)) {
            list = ngx_pnalloc(cf->temp_pool, 1024);
            if (list == NULL) {
                return NGX_ERROR;
            }
            p = list;
            for (k = 0; k < mcf->sink_names.nelts && p < list + 900; k++) {
                p = ngx_slprintf(p, list + 1000, "%s\"%V\"", k ? ", " : "",
                                 names[k].len ? &names[k] : &urls[k]);
            }
            ngx_log_error(NGX_LOG_EMERG, cf->log, 0,
                          "logpool_log: unknown sink \"%V\" in %s:%ui (the sinks of "
                          "logpool_pool in %V are %*s)", &log[i]->sink, log[i]->file,
                          log[i]->line, &mcf->pool_where, (size_t) (p - list), list);
            return NGX_ERROR;
        }
    }

    if (mcf->pool_json.len == 0) {
        return NGX_OK;
    }

    cmcf = ngx_http_conf_get_module_main_conf(cf, ngx_http_core_module);
    h = ngx_array_push(&cmcf->phases[NGX_HTTP_LOG_PHASE].handlers);
    if (h == NULL) {
        return NGX_ERROR;
    }
    *h = ngx_http_logpool_log_handler;

    return ngx_http_logpool_metrics_zone(cf, mcf);
}


/* ---- the worker's pool ------------------------------------------------------------ */

#define NGX_HTTP_LOGPOOL_SYM(field, name)                                              \
    w->field = (__typeof__(w->field)) dlsym(w->dl, name);                              \
    if (w->field == NULL) {                                                            \
        missing = name;                                                                \
        goto failed;                                                                   \
    }

static ngx_int_t
ngx_http_logpool_init_process(ngx_cycle_t *cycle)
{
    ngx_http_logpool_worker_t     *w = &ngx_http_logpool_worker;
    ngx_http_logpool_main_conf_t  *mcf;
    ngx_http_conf_ctx_t           *ctx;
    ngx_http_logpool_log_t       **logs;
    ngx_uint_t                     i;
    const char                    *missing, *version, *err;
    char                           expect[32];
    u_char                         lib[NGX_MAX_PATH];
    size_t                         vlen;

    if (ngx_process != NGX_PROCESS_WORKER && ngx_process != NGX_PROCESS_SINGLE) {
        return NGX_OK; /* cache manager/loader: no pool */
    }

    ctx = (ngx_http_conf_ctx_t *) ngx_get_conf(cycle->conf_ctx, ngx_http_module);
    if (ctx == NULL) {
        return NGX_OK;
    }
    mcf = ctx->main_conf[ngx_http_logpool_module.ctx_index];
    if (mcf == NULL || mcf->pool_json.len == 0) {
        return NGX_OK;
    }

    ngx_memzero(w, sizeof(ngx_http_logpool_worker_t));
    w->mcf = mcf;

    if (mcf->library.len >= sizeof(lib)) {
        return NGX_OK;
    }
    ngx_cpystrn(lib, mcf->library.data, mcf->library.len + 1);

    /* Never unloaded: the library's threads run its code until the process exits. A Lua
     * pool in the same worker (OpenResty) opens the same file: one copy per worker. */
    w->dl = dlopen((char *) lib, RTLD_NOW | RTLD_LOCAL | RTLD_NODELETE);
    if (w->dl == NULL) {
        ngx_log_error(NGX_LOG_ERR, cycle->log, 0,
                      "logpool: cannot load %s (worker uid %d): %s; the worker user must "
                      "be able to read the library, its Python and its venv (make install "
                      "PREFIX=/opt/logpool makes such a copy); this worker serves without "
                      "shipping logs", lib, (int) geteuid(), dlerror());
        return NGX_OK;
    }

    NGX_HTTP_LOGPOOL_SYM(version, "logpool_version");

    /* The ABI is MAJOR.MINOR (0.x: the minor version too); the patch level may differ. */
    version = w->version();
    vlen = (size_t) snprintf(expect, sizeof(expect), "%d.%d.", LOGPOOL_VERSION_MAJOR,
                             LOGPOOL_VERSION_MINOR);
    if (version == NULL || strncmp(version, expect, vlen) != 0) {
        ngx_log_error(NGX_LOG_ERR, cycle->log, 0,
                      "logpool: %s is version %s, this module was built for %s: rebuild "
                      "the module against this library's include/logpool.h (make build); "
                      "this worker serves without shipping logs", lib,
                      version ? version : "(null)", LOGPOOL_VERSION_STRING);
        return NGX_OK;
    }

    NGX_HTTP_LOGPOOL_SYM(new_, "logpool_new");
    NGX_HTTP_LOGPOOL_SYM(last_error, "logpool_last_error");
    NGX_HTTP_LOGPOOL_SYM(log_cdata, "log_cdata");
    NGX_HTTP_LOGPOOL_SYM(close, "logpool_close");
    NGX_HTTP_LOGPOOL_SYM(free, "logpool_free");
    NGX_HTTP_LOGPOOL_SYM(metrics, "logpool_metrics");
    NGX_HTTP_LOGPOOL_SYM(metrics_merge, "logpool_metrics_merge");
    NGX_HTTP_LOGPOOL_SYM(sink_index, "logpool_sink_index");

    w->cap = 4096;
    w->buf = ngx_alloc(w->cap, cycle->log);
    w->sink_ids = ngx_alloc((mcf->all_logs.nelts + 1) * sizeof(int), cycle->log);
    if (w->buf == NULL || w->sink_ids == NULL) {
        return NGX_OK;
    }
    w->last = w->buf + w->cap;

    w->pool = w->new_((const char *) mcf->pool_json.data);
    if (w->pool == NULL) {
        err = w->last_error();
        ngx_log_error(NGX_LOG_ERR, cycle->log, 0,
                      "logpool: the pool of logpool_pool in %V cannot start: %s; this "
                      "worker serves without shipping logs", &mcf->pool_where,
                      err ? err : "(no message)");
        return NGX_OK;
    }

    /* Which sink each logpool_log names is the library's rule (nginx -t only checked that
     * the name could be one): a name it does not know ships nothing, said once here. */
    logs = mcf->all_logs.elts;
    for (i = 0; i < mcf->all_logs.nelts; i++) {
        w->sink_ids[i] = w->sink_index(w->pool, (const char *) logs[i]->sink_cstr);
        if (w->sink_ids[i] < 0) {
            ngx_log_error(NGX_LOG_ERR, cycle->log, 0,
                          "logpool_log \"%V\" in %s:%ui: the pool of logpool_pool in %V has "
                          "no sink of that name; that logpool_log ships nothing",
                          &logs[i]->sink, logs[i]->file, logs[i]->line, &mcf->pool_where);
        }
    }

    ngx_http_logpool_metrics_start(w, cycle);

    return NGX_OK;

failed:

    ngx_log_error(NGX_LOG_ERR, cycle->log, 0,
                  "logpool: %s has no %s: not a liblogpool of this ABI; this worker "
                  "serves without shipping logs", lib, missing);
    return NGX_OK;
}


static void
ngx_http_logpool_exit_process(ngx_cycle_t *cycle)
{
    ngx_http_logpool_worker_t  *w = &ngx_http_logpool_worker;
    logpool_t                  *pool;
    int                         abandoned;
    ngx_msec_t                  timeout;

    if (w->pool == NULL) {
        return;
    }

    ngx_http_logpool_metrics_stop(w); /* it uses the pool: before the pool goes */

    pool = w->pool;
    w->pool = NULL; /* the log phase stops shipping from here on */

    timeout = w->mcf->exit_timeout;
    if (timeout > 0x7fffffff) {
        timeout = 0x7fffffff;
    }

    abandoned = w->close(pool, (int) timeout);
    if (abandoned > 0) {
        ngx_log_error(NGX_LOG_WARN, cycle->log, 0,
                      "logpool: %d messages not delivered within logpool_exit_timeout "
                      "%M ms: abandoned (counted)", abandoned, w->mcf->exit_timeout);
    }

    /* the pool's final counters outlive this process in the zone's retired total */
    ngx_http_logpool_metrics_retire(w, pool);

    w->free(pool);
}
