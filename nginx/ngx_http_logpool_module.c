/*
 * ngx_http_logpool_module: ship access-log lines through liblogpool from plain nginx.
 *
 * The module reaches the library only through the public C ABI (include/logpool.h): each
 * worker dlopen()s liblogpool in init_process and starts its own pool there (never in the
 * master: the pool starts Python and threads), formats each request's line in the log
 * phase into a per-worker buffer with nginx's variables, and hands it to log_cdata, which
 * copies it and returns at once. exit_process flushes and closes the pool within
 * logpool_exit_timeout. A worker whose library or pool cannot start logs one line and
 * serves without shipping.
 *
 * Metrics: every worker publishes its pool's Prometheus text into its slot of a shared
 * memory zone (once a second, and at scrape time for the worker serving the scrape);
 * logpool_metrics sums the series of all slots, like the Lua route does.
 */
#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>

#include <dlfcn.h>
#include <errno.h>
#include <math.h>
#include <pthread.h>
#include <signal.h>
#include <time.h>
#include <stdio.h>
#include <stdlib.h>

#include "logpool.h"

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

/* ngx_http_logpool_agent.c */
const char *ngx_http_logpool_agent_sink_names(ngx_conf_t *cf, ngx_str_t *agent_dir,
    ngx_array_t *names);

#define NGX_HTTP_LOGPOOL_ESCAPE_DEFAULT  0
#define NGX_HTTP_LOGPOOL_ESCAPE_JSON     1
#define NGX_HTTP_LOGPOOL_ESCAPE_NONE     2

#define NGX_HTTP_LOGPOOL_MIN_SLOTS       64
#define NGX_HTTP_LOGPOOL_SLOT_SIZE       (64 * 1024)
#define NGX_HTTP_LOGPOOL_PUBLISH_MS      1000
#define NGX_HTTP_LOGPOOL_STALE_SEC       30
#define NGX_HTTP_LOGPOOL_MAX_LINE        (64 * 1024 * 1024)
#define NGX_HTTP_LOGPOOL_JSON_DEPTH      64


typedef struct {
    ngx_str_t                   text;     /* literal bytes (index == NGX_ERROR) */
    ngx_int_t                   index;    /* variable index */
} ngx_http_logpool_op_t;

typedef struct {
    ngx_str_t                   name;
    ngx_uint_t                  escape;
    ngx_array_t                *ops;      /* ngx_http_logpool_op_t */
} ngx_http_logpool_fmt_t;

typedef struct {
    ngx_str_t                   sink;
    ngx_int_t                   sink_id;
    ngx_http_logpool_fmt_t     *fmt;
    ngx_http_complex_value_t   *filter;   /* if=, or NULL */
    u_char                     *file;
    ngx_uint_t                  line;
} ngx_http_logpool_log_t;

typedef struct {
    ngx_array_t                *logs;     /* ngx_http_logpool_log_t *; NULL: off */
} ngx_http_logpool_loc_conf_t;

typedef struct {
    ngx_str_t                   pool_json;    /* NUL-terminated; len 0: no pool */
    ngx_str_t                   pool_where;   /* for messages: "file:line" of the directive */
    ngx_array_t                 sink_names;   /* ngx_str_t; index == socket_id */
    ngx_array_t                 formats;      /* ngx_http_logpool_fmt_t */
    ngx_array_t                 all_logs;     /* ngx_http_logpool_log_t * */
    ngx_msec_t                  exit_timeout;
    ngx_str_t                   library;
    ngx_str_t                   agent_dir;    /* agent mode ({"agent": ...}): len > 0 */
    size_t                      slot_size;
    ngx_uint_t                  nslots;
    ngx_shm_zone_t             *zone;
} ngx_http_logpool_main_conf_t;

/* Shared memory: a header, then nslots slots of slot_size text bytes each. */
typedef struct {
    ngx_atomic_t                lock;
    ngx_pid_t                   pid;
    time_t                      updated;
    size_t                      len;
} ngx_http_logpool_slot_t;

typedef struct {
    ngx_uint_t                  nslots;
    size_t                      slot_size;
} ngx_http_logpool_shm_t;


/* Per worker: the library, the pool, the line buffer, the metrics timer. */
typedef struct {
    void                       *dl;
    logpool_t                  *pool;
    __typeof__(logpool_new)              *new_;
    __typeof__(logpool_last_error)       *last_error;
    __typeof__(log_cdata)                *log_cdata;
    __typeof__(logpool_close)            *close;
    __typeof__(logpool_free)             *free;
    __typeof__(logpool_metrics)          *metrics;
    __typeof__(logpool_version)          *version;
    __typeof__(logpool_sink_count)       *sink_count;
    u_char                     *buf;
    size_t                      cap;
    u_char                     *mbuf;     /* metrics text, slot_size bytes */
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

static ngx_http_logpool_worker_t  ngx_http_logpool_worker;


static void *ngx_http_logpool_create_main_conf(ngx_conf_t *cf);
static void *ngx_http_logpool_create_loc_conf(ngx_conf_t *cf);
static char *ngx_http_logpool_merge_loc_conf(ngx_conf_t *cf, void *parent, void *child);
static ngx_int_t ngx_http_logpool_postconfiguration(ngx_conf_t *cf);
static char *ngx_http_logpool_pool(ngx_conf_t *cf, ngx_command_t *cmd, void *conf);
static char *ngx_http_logpool_format(ngx_conf_t *cf, ngx_command_t *cmd, void *conf);
static char *ngx_http_logpool_log(ngx_conf_t *cf, ngx_command_t *cmd, void *conf);
static char *ngx_http_logpool_metrics(ngx_conf_t *cf, ngx_command_t *cmd, void *conf);
static ngx_int_t ngx_http_logpool_metrics_handler(ngx_http_request_t *r);
static void ngx_http_logpool_publish_locked(ngx_http_logpool_worker_t *w,
    ngx_http_logpool_shm_t *shm);
static ngx_int_t ngx_http_logpool_init_process(ngx_cycle_t *cycle);
static void ngx_http_logpool_exit_process(ngx_cycle_t *cycle);


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


/* -- a small JSON reader: validates the whole text, keeps the sinks' names ------------- */

typedef struct {
    u_char      *p;
    u_char      *end;
    u_char      *start;
    const char  *err;
    ngx_pool_t  *pool;
} ngx_http_logpool_json_t;

static void
ngx_http_logpool_json_ws(ngx_http_logpool_json_t *j)
{
    while (j->p < j->end
           && (*j->p == ' ' || *j->p == '\t' || *j->p == '\n' || *j->p == '\r'))
    {
        j->p++;
    }
}


static ngx_int_t ngx_http_logpool_json_value(ngx_http_logpool_json_t *j, ngx_uint_t depth);


static u_char *
ngx_http_logpool_utf8_put(u_char *d, uint32_t c)
{
    if (c < 0x80) {
        *d++ = (u_char) c;
    } else if (c < 0x800) {
        *d++ = (u_char) (0xc0 | (c >> 6));
        *d++ = (u_char) (0x80 | (c & 0x3f));
    } else if (c < 0x10000) {
        *d++ = (u_char) (0xe0 | (c >> 12));
        *d++ = (u_char) (0x80 | ((c >> 6) & 0x3f));
        *d++ = (u_char) (0x80 | (c & 0x3f));
    } else {
        *d++ = (u_char) (0xf0 | (c >> 18));
        *d++ = (u_char) (0x80 | ((c >> 12) & 0x3f));
        *d++ = (u_char) (0x80 | ((c >> 6) & 0x3f));
        *d++ = (u_char) (0x80 | (c & 0x3f));
    }
    return d;
}


static ngx_int_t
ngx_http_logpool_json_hex4(ngx_http_logpool_json_t *j, uint32_t *out)
{
    ngx_int_t  v;

    if (j->end - j->p < 4) {
        j->err = "truncated \\u escape";
        return NGX_ERROR;
    }
    v = ngx_hextoi(j->p, 4);
    if (v == NGX_ERROR) {
        j->err = "bad \\u escape";
        return NGX_ERROR;
    }
    j->p += 4;
    *out = (uint32_t) v;
    return NGX_OK;
}


/* A string at j->p (the opening quote); its decoded text into *out when out != NULL. */
static ngx_int_t
ngx_http_logpool_json_string(ngx_http_logpool_json_t *j, ngx_str_t *out)
{
    u_char    *d = NULL;
    uint32_t   c, lo;

    j->p++;
    if (out != NULL) {
        /* decoded text is never longer than the source */
        d = ngx_pnalloc(j->pool, j->end - j->p + 1);
        if (d == NULL) {
            j->err = "out of memory";
            return NGX_ERROR;
        }
        out->data = d;
    }

    while (j->p < j->end) {
        c = *j->p++;

        if (c == '"') {
            if (out != NULL) {
                out->len = d - out->data;
                *d = '\0';
            }
            return NGX_OK;
        }

        if (c < 0x20) {
            j->err = "control character in a string";
            return NGX_ERROR;
        }

        if (c == '\\') {
            if (j->p >= j->end) {
                break;
            }
            c = *j->p++;
            switch (c) {
            case '"': case '\\': case '/':
                break;
            case 'b': c = '\b'; break;
            case 'f': c = '\f'; break;
            case 'n': c = '\n'; break;
            case 'r': c = '\r'; break;
            case 't': c = '\t'; break;
            case 'u':
                if (ngx_http_logpool_json_hex4(j, &c) != NGX_OK) {
                    return NGX_ERROR;
                }
                if (c >= 0xd800 && c < 0xdc00 && j->end - j->p >= 6
                    && j->p[0] == '\\' && j->p[1] == 'u')
                {
                    j->p += 2;
                    if (ngx_http_logpool_json_hex4(j, &lo) != NGX_OK) {
                        return NGX_ERROR;
                    }
                    if (lo >= 0xdc00 && lo < 0xe000) {
                        c = 0x10000 + ((c - 0xd800) << 10) + (lo - 0xdc00);
                    } else {
                        c = 0xfffd;
                    }
                } else if (c >= 0xd800 && c < 0xe000) {
                    c = 0xfffd;
                }
                if (d != NULL) {
                    d = ngx_http_logpool_utf8_put(d, c);
                }
                continue;
            default:
                j->err = "bad escape in a string";
                return NGX_ERROR;
            }
        }

        if (d != NULL) {
            *d++ = (u_char) c;
        }
    }

    j->err = "unterminated string";
    return NGX_ERROR;
}


static ngx_int_t
ngx_http_logpool_json_number(ngx_http_logpool_json_t *j)
{
    u_char  *start = j->p;

    if (j->p < j->end && *j->p == '-') {
        j->p++;
    }
    if (j->p < j->end && *j->p == '0') {
        j->p++;
    } else if (j->p < j->end && *j->p >= '1' && *j->p <= '9') {
        while (j->p < j->end && *j->p >= '0' && *j->p <= '9') { j->p++; }
    } else {
        j->p = start;
        j->err = "unexpected character";
        return NGX_ERROR;
    }
    if (j->p < j->end && *j->p == '.') {
        j->p++;
        if (j->p >= j->end || *j->p < '0' || *j->p > '9') {
            j->err = "bad number";
            return NGX_ERROR;
        }
        while (j->p < j->end && *j->p >= '0' && *j->p <= '9') { j->p++; }
    }
    if (j->p < j->end && (*j->p == 'e' || *j->p == 'E')) {
        j->p++;
        if (j->p < j->end && (*j->p == '+' || *j->p == '-')) {
            j->p++;
        }
        if (j->p >= j->end || *j->p < '0' || *j->p > '9') {
            j->err = "bad number";
            return NGX_ERROR;
        }
        while (j->p < j->end && *j->p >= '0' && *j->p <= '9') { j->p++; }
    }
    return NGX_OK;
}


static ngx_int_t
ngx_http_logpool_json_word(ngx_http_logpool_json_t *j, const char *word)
{
    size_t  n = ngx_strlen(word);

    if ((size_t) (j->end - j->p) < n || ngx_strncmp(j->p, word, n) != 0) {
        j->err = "unexpected character";
        return NGX_ERROR;
    }
    j->p += n;
    return NGX_OK;
}


static ngx_int_t
ngx_http_logpool_json_value(ngx_http_logpool_json_t *j, ngx_uint_t depth)
{
    ngx_http_logpool_json_ws(j);

    if (j->p >= j->end) {
        j->err = "unexpected end of text";
        return NGX_ERROR;
    }

    if (depth > NGX_HTTP_LOGPOOL_JSON_DEPTH) {
        j->err = "nested too deeply";
        return NGX_ERROR;
    }

    switch (*j->p) {

    case '{':
        j->p++;
        ngx_http_logpool_json_ws(j);
        if (j->p < j->end && *j->p == '}') {
            j->p++;
            return NGX_OK;
        }
        for ( ;; ) {
            ngx_http_logpool_json_ws(j);
            if (j->p >= j->end || *j->p != '"') {
                j->err = "expected a string key";
                return NGX_ERROR;
            }
            if (ngx_http_logpool_json_string(j, NULL) != NGX_OK) {
                return NGX_ERROR;
            }
            ngx_http_logpool_json_ws(j);
            if (j->p >= j->end || *j->p != ':') {
                j->err = "expected ':'";
                return NGX_ERROR;
            }
            j->p++;
            if (ngx_http_logpool_json_value(j, depth + 1) != NGX_OK) {
                return NGX_ERROR;
            }
            ngx_http_logpool_json_ws(j);
            if (j->p < j->end && *j->p == ',') {
                j->p++;
                continue;
            }
            if (j->p < j->end && *j->p == '}') {
                j->p++;
                return NGX_OK;
            }
            j->err = "expected ',' or '}'";
            return NGX_ERROR;
        }

    case '[':
        j->p++;
        ngx_http_logpool_json_ws(j);
        if (j->p < j->end && *j->p == ']') {
            j->p++;
            return NGX_OK;
        }
        for ( ;; ) {
            if (ngx_http_logpool_json_value(j, depth + 1) != NGX_OK) {
                return NGX_ERROR;
            }
            ngx_http_logpool_json_ws(j);
            if (j->p < j->end && *j->p == ',') {
                j->p++;
                continue;
            }
            if (j->p < j->end && *j->p == ']') {
                j->p++;
                return NGX_OK;
            }
            j->err = "expected ',' or ']'";
            return NGX_ERROR;
        }

    case '"':
        return ngx_http_logpool_json_string(j, NULL);

    case 't':
        return ngx_http_logpool_json_word(j, "true");

    case 'f':
        return ngx_http_logpool_json_word(j, "false");

    case 'n':
        return ngx_http_logpool_json_word(j, "null");

    default:
        return ngx_http_logpool_json_number(j);
    }
}


/*
 * The sinks' names in config order, as the library names them: "name" when given, else
 * the (first) URL, made unique with "#<index>" when another sink already has it.
 * Returns NULL or a message.
 */
static const char *
ngx_http_logpool_sink_names(ngx_conf_t *cf, ngx_http_logpool_main_conf_t *mcf,
    ngx_str_t *json)
{
    ngx_uint_t               i, k, nsinks, found;
    ngx_str_t                key, *names, *urls, *name;
    ngx_flag_t              *named;
    u_char                  *save, *p;
    ngx_http_logpool_json_t  j;

    j.start = json->data;
    j.p = json->data;
    j.end = json->data + json->len;
    j.err = NULL;
    j.pool = cf->temp_pool;

    if (ngx_http_logpool_json_value(&j, 0) != NGX_OK) {
        goto invalid;
    }
    ngx_http_logpool_json_ws(&j);
    if (j.p != j.end) {
        j.err = "extra data after the value";
        goto invalid;
    }

    /* Valid JSON: walk it again for the top-level "sinks". */
    j.p = j.start;
    ngx_http_logpool_json_ws(&j);
    if (*j.p != '{') {
        return "config must be a JSON object";
    }
    j.p++;
    found = 0;
    nsinks = 0;
    names = NULL;
    urls = NULL;
    named = NULL;

    for ( ;; ) {
        ngx_http_logpool_json_ws(&j);
        if (*j.p == '}') {
            break;
        }
        if (*j.p == ',') {
            j.p++;
            continue;
        }
        (void) ngx_http_logpool_json_string(&j, &key);
        ngx_http_logpool_json_ws(&j);
        j.p++; /* ':' */
        ngx_http_logpool_json_ws(&j);

        if (key.len == 5 && ngx_strncmp(key.data, "agent", 5) == 0 && *j.p == '"') {
            if (ngx_http_logpool_json_string(&j, &mcf->agent_dir) != NGX_OK) {
                return "out of memory";
            }
            continue;
        }

        if (!(key.len == 5 && ngx_strncmp(key.data, "sinks", 5) == 0)) {
            (void) ngx_http_logpool_json_value(&j, 0);
            continue;
        }

        if (*j.p != '[') {
            return "\"sinks\" must be a non-empty list";
        }

        /* count the elements */
        save = j.p;
        j.p++;
        nsinks = 0;
        ngx_http_logpool_json_ws(&j);
        while (*j.p != ']') {
            (void) ngx_http_logpool_json_value(&j, 0);
            nsinks++;
            ngx_http_logpool_json_ws(&j);
            if (*j.p == ',') {
                j.p++;
            }
            ngx_http_logpool_json_ws(&j);
        }
        j.p = save + 1;

        if (nsinks == 0) {
            return "\"sinks\" must be a non-empty list";
        }

        names = ngx_pcalloc(cf->pool, nsinks * sizeof(ngx_str_t));
        urls = ngx_pcalloc(cf->pool, nsinks * sizeof(ngx_str_t));
        named = ngx_pcalloc(cf->pool, nsinks * sizeof(ngx_flag_t));
        if (names == NULL || urls == NULL || named == NULL) {
            return "out of memory";
        }

        for (i = 0; i < nsinks; i++) {
            ngx_http_logpool_json_ws(&j);
            if (*j.p == ',') {
                j.p++;
                ngx_http_logpool_json_ws(&j);
            }

            if (*j.p == '"') {              /* "url" shorthand */
                (void) ngx_http_logpool_json_string(&j, &urls[i]);
                continue;
            }

            if (*j.p != '{') {
                return "each of \"sinks\" must be an object with a \"url\"";
            }

            j.p++;
            for ( ;; ) {
                ngx_http_logpool_json_ws(&j);
                if (*j.p == '}') {
                    j.p++;
                    break;
                }
                if (*j.p == ',') {
                    j.p++;
                    continue;
                }
                (void) ngx_http_logpool_json_string(&j, &key);
                ngx_http_logpool_json_ws(&j);
                j.p++;
                ngx_http_logpool_json_ws(&j);

                if (key.len == 4 && ngx_strncmp(key.data, "name", 4) == 0
                    && *j.p == '"')
                {
                    (void) ngx_http_logpool_json_string(&j, &names[i]);
                    named[i] = 1;

                } else if (key.len == 3 && ngx_strncmp(key.data, "url", 3) == 0
                           && (*j.p == '"' || *j.p == '['))
                {
                    if (*j.p == '[') {
                        save = j.p;
                        j.p++;
                        ngx_http_logpool_json_ws(&j);
                        if (*j.p == '"') {
                            (void) ngx_http_logpool_json_string(&j, &urls[i]);
                        }
                        j.p = save;
                        (void) ngx_http_logpool_json_value(&j, 0);

                    } else {
                        (void) ngx_http_logpool_json_string(&j, &urls[i]);
                    }

                } else {
                    (void) ngx_http_logpool_json_value(&j, 0);
                }
            }
        }

        ngx_http_logpool_json_ws(&j);
        j.p++; /* ']' */
        found = 1;
    }

    if (!found && mcf->agent_dir.len > 0) {
        /* Agent mode: the sinks are the agent's, named in the table it publishes. */
        return ngx_http_logpool_agent_sink_names(cf, &mcf->agent_dir, &mcf->sink_names);
    }

    if (!found) {
        return "\"sinks\" must be a non-empty list";
    }

    /* Unnamed sinks are named after their URL (unique), as the library does. */
    for (i = 0; i < nsinks; i++) {
        if (named[i]) {
            continue;
        }
        if (urls[i].data == NULL) {
            return "a sink has no \"url\"";
        }
        names[i] = urls[i];
        for (k = 0; k < nsinks; k++) {
            if (k != i && (named[k] || k < i) && names[k].len == urls[i].len
                && ngx_strncmp(names[k].data, urls[i].data, urls[i].len) == 0)
            {
                p = ngx_pnalloc(cf->pool, urls[i].len + NGX_INT_T_LEN + 2);
                if (p == NULL) {
                    return "out of memory";
                }
                names[i].data = p;
                names[i].len = ngx_sprintf(p, "%V#%ui", &urls[i], i) - p;
                break;
            }
        }
    }

    mcf->sink_names.nelts = 0;
    for (i = 0; i < nsinks; i++) {
        name = ngx_array_push(&mcf->sink_names);
        if (name == NULL) {
            return "out of memory";
        }
        *name = names[i];
    }

    return NULL;

invalid:

    p = ngx_pnalloc(cf->pool, 128);
    if (p == NULL) {
        return "invalid JSON";
    }
    *ngx_snprintf(p, 127, "invalid JSON at byte %uz: %s", (size_t) (j.p - j.start), j.err)
        = '\0';
    return (const char *) p;
}


static char *
ngx_http_logpool_pool(ngx_conf_t *cf, ngx_command_t *cmd, void *conf)
{
    ngx_http_logpool_main_conf_t  *mcf = conf;

    ssize_t     n;
    ngx_str_t  *value, json, path;
    ngx_fd_t    fd;
    ngx_file_info_t  fi;
    const char *err;
    u_char     *p;

    if (mcf->pool_json.len) {
        return "is duplicate: one logpool_pool or logpool_pool_file per http{}";
    }

    value = cf->args->elts;

    if (cmd->offset == 0) {
        json = value[1];

    } else {
        path = value[1];
        if (ngx_conf_full_name(cf->cycle, &path, 1) != NGX_OK) {
            return NGX_CONF_ERROR;
        }

        fd = ngx_open_file(path.data, NGX_FILE_RDONLY, NGX_FILE_OPEN, 0);
        if (fd == NGX_INVALID_FILE) {
            ngx_conf_log_error(NGX_LOG_EMERG, cf, ngx_errno,
                               "logpool_pool_file: cannot open \"%V\"", &path);
            return NGX_CONF_ERROR;
        }

        if (ngx_fd_info(fd, &fi) == NGX_FILE_ERROR
            || ngx_file_size(&fi) > 16 * 1024 * 1024)
        {
            ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                               "logpool_pool_file: \"%V\" is not a readable file of at "
                               "most 16 MiB", &path);
            ngx_close_file(fd);
            return NGX_CONF_ERROR;
        }

        json.len = (size_t) ngx_file_size(&fi);
        json.data = ngx_pnalloc(cf->pool, json.len + 1);
        if (json.data == NULL) {
            ngx_close_file(fd);
            return NGX_CONF_ERROR;
        }

        n = read(fd, json.data, json.len);
        ngx_close_file(fd);
        json.data[json.len] = '\0';

        if (n < 0 || (size_t) n != json.len) {
            ngx_conf_log_error(NGX_LOG_EMERG, cf, ngx_errno,
                               "logpool_pool_file: cannot read \"%V\"", &path);
            return NGX_CONF_ERROR;
        }
    }

    if (ngx_strlchr(json.data, json.data + json.len, '\0') != NULL) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0, "%V: the config holds a NUL byte",
                           &cmd->name);
        return NGX_CONF_ERROR;
    }

    err = ngx_http_logpool_sink_names(cf, mcf, &json);
    if (err != NULL) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0, "%V: %s", &cmd->name, err);
        return NGX_CONF_ERROR;
    }

    p = ngx_pnalloc(cf->pool, json.len + 1);
    if (p == NULL) {
        return NGX_CONF_ERROR;
    }
    ngx_memcpy(p, json.data, json.len);
    p[json.len] = '\0';
    mcf->pool_json.data = p;
    mcf->pool_json.len = json.len;

    p = ngx_pnalloc(cf->pool, cf->conf_file->file.name.len + NGX_INT_T_LEN + 2);
    if (p == NULL) {
        return NGX_CONF_ERROR;
    }
    mcf->pool_where.data = p;
    mcf->pool_where.len = ngx_sprintf(p, "%V:%ui", &cf->conf_file->file.name,
                                      cf->conf_file->line) - p;

    return NGX_CONF_OK;
}


/* logpool_format name [escape=default|json|none] string ...: log_format's syntax. */
static char *
ngx_http_logpool_format(ngx_conf_t *cf, ngx_command_t *cmd, void *conf)
{
    ngx_http_logpool_main_conf_t  *mcf = conf;

    ngx_str_t               *value, var;
    ngx_uint_t               i, s, bracket;
    ngx_http_logpool_fmt_t  *fmt;
    ngx_http_logpool_op_t   *op;
    u_char                  *p, *start, *end;

    value = cf->args->elts;

    fmt = mcf->formats.elts;
    for (i = 0; i < mcf->formats.nelts; i++) {
        if (fmt[i].name.len == value[1].len
            && ngx_strcmp(fmt[i].name.data, value[1].data) == 0)
        {
            ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                               "duplicate logpool_format name \"%V\"", &value[1]);
            return NGX_CONF_ERROR;
        }
    }

    fmt = ngx_array_push(&mcf->formats);
    if (fmt == NULL) {
        return NGX_CONF_ERROR;
    }
    fmt->name = value[1];
    fmt->escape = NGX_HTTP_LOGPOOL_ESCAPE_DEFAULT;

    s = 2;
    if (ngx_strncmp(value[2].data, "escape=", 7) == 0) {
        if (ngx_strcmp(value[2].data + 7, "json") == 0) {
            fmt->escape = NGX_HTTP_LOGPOOL_ESCAPE_JSON;
        } else if (ngx_strcmp(value[2].data + 7, "none") == 0) {
            fmt->escape = NGX_HTTP_LOGPOOL_ESCAPE_NONE;
        } else if (ngx_strcmp(value[2].data + 7, "default") != 0) {
            ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                               "unknown logpool_format escaping \"%s\" (default, json or "
                               "none)", value[2].data + 7);
            return NGX_CONF_ERROR;
        }
        s = 3;
        if (cf->args->nelts == 3) {
            ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                               "logpool_format \"%V\" has no string after \"%V\"",
                               &value[1], &value[2]);
            return NGX_CONF_ERROR;
        }
    }

    fmt->ops = ngx_array_create(cf->pool, 8, sizeof(ngx_http_logpool_op_t));
    if (fmt->ops == NULL) {
        return NGX_CONF_ERROR;
    }

    for ( /* void */ ; s < cf->args->nelts; s++) {
        p = value[s].data;
        end = p + value[s].len;

        while (p < end) {
            op = ngx_array_push(fmt->ops);
            if (op == NULL) {
                return NGX_CONF_ERROR;
            }

            if (*p == '$') {
                p++;
                bracket = 0;
                if (p < end && *p == '{') {
                    bracket = 1;
                    p++;
                }
                start = p;
                while (p < end
                       && ((*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z')
                           || (*p >= '0' && *p <= '9') || *p == '_'))
                {
                    p++;
                }
                var.data = start;
                var.len = p - start;
                if (bracket) {
                    if (p >= end || *p != '}') {
                        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                                           "the closing bracket in \"%V\" variable is "
                                           "missing", &var);
                        return NGX_CONF_ERROR;
                    }
                    p++;
                }
                if (var.len == 0) {
                    ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                                       "invalid parameter \"%V\" in logpool_format \"%V\"",
                                       &value[s], &value[1]);
                    return NGX_CONF_ERROR;
                }
                op->text.len = 0;
                op->text.data = NULL;
                op->index = ngx_http_get_variable_index(cf, &var);
                if (op->index == NGX_ERROR) {
                    return NGX_CONF_ERROR;
                }
                continue;
            }

            start = p;
            while (p < end && *p != '$') {
                p++;
            }
            op->index = NGX_ERROR;
            op->text.len = p - start;
            op->text.data = start;
        }
    }

    return NGX_CONF_OK;
}


/* logpool_log <sink> <format> [if=$var] | logpool_log off */
static char *
ngx_http_logpool_log(ngx_conf_t *cf, ngx_command_t *cmd, void *conf)
{
    ngx_http_logpool_loc_conf_t  *lcf = conf;

    ngx_str_t                          *value, s;
    ngx_uint_t                          i;
    ngx_http_logpool_log_t             *log, **slot;
    ngx_http_logpool_fmt_t             *fmt;
    ngx_http_logpool_main_conf_t       *mcf;
    ngx_http_compile_complex_value_t    ccv;

    value = cf->args->elts;
    mcf = ngx_http_conf_get_module_main_conf(cf, ngx_http_logpool_module);

    if (ngx_strcmp(value[1].data, "off") == 0) {
        if (cf->args->nelts != 2) {
            return "takes no other parameter after \"off\"";
        }
        if (lcf->logs != NGX_CONF_UNSET_PTR) {
            return "is duplicate: \"off\" beside other logpool_log at the same level";
        }
        lcf->logs = NULL;
        return NGX_CONF_OK;
    }

    if (lcf->logs == NULL) {
        return "is duplicate: \"logpool_log off\" is already set at this level";
    }

    if (cf->args->nelts < 3) {
        return "needs a sink name and a logpool_format name (or \"off\")";
    }

    if (lcf->logs == NGX_CONF_UNSET_PTR) {
        lcf->logs = ngx_array_create(cf->pool, 2, sizeof(ngx_http_logpool_log_t *));
        if (lcf->logs == NULL) {
            return NGX_CONF_ERROR;
        }
    }

    log = ngx_pcalloc(cf->pool, sizeof(ngx_http_logpool_log_t));
    if (log == NULL) {
        return NGX_CONF_ERROR;
    }
    log->sink = value[1];
    log->sink_id = NGX_ERROR;
    log->file = cf->conf_file->file.name.data;
    log->line = cf->conf_file->line;

    fmt = mcf->formats.elts;
    for (i = 0; i < mcf->formats.nelts; i++) {
        if (fmt[i].name.len == value[2].len
            && ngx_strcmp(fmt[i].name.data, value[2].data) == 0)
        {
            log->fmt = &fmt[i];
            break;
        }
    }
    if (log->fmt == NULL) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "logpool_log: unknown logpool_format \"%V\" (define it before "
                           "use)", &value[2]);
        return NGX_CONF_ERROR;
    }

    if (cf->args->nelts == 4) {
        if (ngx_strncmp(value[3].data, "if=", 3) != 0) {
            ngx_conf_log_error(NGX_LOG_EMERG, cf, 0, "invalid parameter \"%V\"", &value[3]);
            return NGX_CONF_ERROR;
        }
        s.len = value[3].len - 3;
        s.data = value[3].data + 3;

        ngx_memzero(&ccv, sizeof(ngx_http_compile_complex_value_t));
        ccv.cf = cf;
        ccv.value = &s;
        ccv.complex_value = ngx_palloc(cf->pool, sizeof(ngx_http_complex_value_t));
        if (ccv.complex_value == NULL) {
            return NGX_CONF_ERROR;
        }
        if (ngx_http_compile_complex_value(&ccv) != NGX_OK) {
            return NGX_CONF_ERROR;
        }
        log->filter = ccv.complex_value;
    }

    slot = ngx_array_push(lcf->logs);
    if (slot == NULL) {
        return NGX_CONF_ERROR;
    }
    *slot = log;

    slot = ngx_array_push(&mcf->all_logs);
    if (slot == NULL) {
        return NGX_CONF_ERROR;
    }
    *slot = log;

    return NGX_CONF_OK;
}


/* ---- metrics: shared memory ------------------------------------------------------- */

static ngx_http_logpool_slot_t *
ngx_http_logpool_slot(ngx_http_logpool_shm_t *shm, ngx_uint_t i)
{
    size_t  stride;

    stride = ngx_align(sizeof(ngx_http_logpool_slot_t) + shm->slot_size, NGX_ALIGNMENT);
    return (ngx_http_logpool_slot_t *) ((u_char *) shm
                                        + ngx_align(sizeof(ngx_http_logpool_shm_t),
                                                    NGX_ALIGNMENT)
                                        + i * stride);
}


static size_t
ngx_http_logpool_shm_size(ngx_uint_t nslots, size_t slot_size)
{
    return ngx_align(sizeof(ngx_http_logpool_shm_t), NGX_ALIGNMENT)
           + nslots * ngx_align(sizeof(ngx_http_logpool_slot_t) + slot_size, NGX_ALIGNMENT);
}


/* nginx puts a slab pool at the start of every zone: the slots are one allocation in it. */
static size_t
ngx_http_logpool_zone_size(ngx_uint_t nslots, size_t slot_size)
{
    size_t  n;

    n = ngx_http_logpool_shm_size(nslots, slot_size);

    return ngx_align(n + n / 32, ngx_pagesize) + 16 * ngx_pagesize;
}


static ngx_int_t
ngx_http_logpool_init_zone(ngx_shm_zone_t *zone, void *data)
{
    ngx_http_logpool_main_conf_t  *mcf = zone->data;
    ngx_http_logpool_shm_t        *shm, *old = data;
    ngx_slab_pool_t               *shpool;
    size_t                         size;

    if (old != NULL && old->nslots == mcf->nslots && old->slot_size == mcf->slot_size) {
        zone->data = old; /* a reload keeps what the workers published */
        return NGX_OK;
    }

    shpool = (ngx_slab_pool_t *) zone->shm.addr;
    size = ngx_http_logpool_shm_size(mcf->nslots, mcf->slot_size);

    shm = ngx_slab_calloc(shpool, size);
    if (shm == NULL) {
        ngx_log_error(NGX_LOG_EMERG, zone->shm.log, 0,
                      "logpool: cannot allocate %uz bytes of metrics slots in the shared "
                      "memory zone \"%V\"", size, &zone->shm.name);
        return NGX_ERROR;
    }
    shm->nslots = mcf->nslots;
    shm->slot_size = mcf->slot_size;
    zone->data = shm;

    return NGX_OK;
}


static char *
ngx_http_logpool_metrics(ngx_conf_t *cf, ngx_command_t *cmd, void *conf)
{
    ngx_http_core_loc_conf_t  *clcf;

    clcf = ngx_http_conf_get_module_loc_conf(cf, ngx_http_core_module);
    if (clcf->handler != NULL) {
        return "is duplicate: this location already has a content handler";
    }
    clcf->handler = ngx_http_logpool_metrics_handler;

    return NGX_CONF_OK;
}


/* ---- the log phase ---------------------------------------------------------------- */

static u_char *
ngx_http_logpool_grow(u_char **pos, size_t need)
{
    ngx_http_logpool_worker_t  *w = &ngx_http_logpool_worker;
    size_t                      used, cap;
    u_char                     *nb;

    used = *pos - w->buf;
    if (used + need <= w->cap) {
        return *pos;
    }
    if (used + need > NGX_HTTP_LOGPOOL_MAX_LINE) {
        return NULL;
    }

    cap = w->cap;
    while (cap < used + need) {
        cap *= 2;
    }

    nb = ngx_alloc(cap, ngx_cycle->log);
    if (nb == NULL) {
        return NULL;
    }
    ngx_memcpy(nb, w->buf, used);
    ngx_free(w->buf);
    w->buf = nb;
    w->cap = cap;
    *pos = nb + used;

    return *pos;
}


/* LOGPOOL_ESCAPING_BEGIN: plain C over u_char and ngx_cpymem only (tests compile it alone) */

/* The length of the valid UTF-8 sequence at p (1-4), or 0 when it is not one. */
static size_t
ngx_http_logpool_utf8_len(u_char *p, u_char *end)
{
    u_char  c = p[0];

    if (c < 0xc2 || c > 0xf4) {
        return 0;
    }
    if (c < 0xe0) {
        return (end - p >= 2 && (p[1] & 0xc0) == 0x80) ? 2 : 0;
    }
    if (c < 0xf0) {
        if (end - p < 3 || (p[1] & 0xc0) != 0x80 || (p[2] & 0xc0) != 0x80) {
            return 0;
        }
        if ((c == 0xe0 && p[1] < 0xa0) || (c == 0xed && p[1] >= 0xa0)) {
            return 0; /* overlong, or a surrogate */
        }
        return 3;
    }
    if (end - p < 4 || (p[1] & 0xc0) != 0x80 || (p[2] & 0xc0) != 0x80
        || (p[3] & 0xc0) != 0x80)
    {
        return 0;
    }
    if ((c == 0xf0 && p[1] < 0x90) || (c == 0xf4 && p[1] >= 0x90)) {
        return 0; /* overlong, or above U+10FFFF */
    }
    return 4;
}


/* Bytes that need work, one bit each (as nginx's own escaping tables): runs of the other
 * bytes are copied whole. */
static uint32_t  ngx_http_logpool_json_special[] = {
    0xffffffff, /* 0x00-0x1f: control characters */
    0x00000004, /* 0x20-0x3f: " */
    0x10000000, /* 0x40-0x5f: \ */
    0x00000000, /* 0x60-0x7f */
    0xffffffff, 0xffffffff, 0xffffffff, 0xffffffff /* 0x80-0xff: checked as UTF-8 */
};

static uint32_t  ngx_http_logpool_default_special[] = {
    0xffffffff, /* 0x00-0x1f */
    0x00000004, /* 0x20-0x3f: " */
    0x10000000, /* 0x40-0x5f: \ */
    0x80000000, /* 0x60-0x7f: DEL */
    0xffffffff, 0xffffffff, 0xffffffff, 0xffffffff
};

#define ngx_http_logpool_special(map, c)  ((map)[(c) >> 5] & (1U << ((c) & 0x1f)))


/* escape=json: valid JSON string content for any bytes (invalid UTF-8 becomes \ufffd). */
static u_char *
ngx_http_logpool_escape_json(u_char *d, u_char *s, size_t len)
{
    static u_char  hex[] = "0123456789abcdef";
    u_char        *end = s + len, *p, c;
    size_t         n;

    while (s < end) {
        p = s;
        while (p < end && !ngx_http_logpool_special(ngx_http_logpool_json_special, *p)) {
            p++;
        }
        if (p > s) {
            d = ngx_cpymem(d, s, p - s);
            s = p;
            if (s == end) {
                break;
            }
        }

        c = *s;

        if (c == '"' || c == '\\') {
            *d++ = '\\';
            *d++ = c;
            s++;
            continue;
        }

        if (c < 0x20) {
            *d++ = '\\';
            switch (c) {
            case '\n': *d++ = 'n'; break;
            case '\r': *d++ = 'r'; break;
            case '\t': *d++ = 't'; break;
            case '\b': *d++ = 'b'; break;
            case '\f': *d++ = 'f'; break;
            default:
                *d++ = 'u'; *d++ = '0'; *d++ = '0';
                *d++ = hex[c >> 4]; *d++ = hex[c & 0xf];
            }
            s++;
            continue;
        }

        n = ngx_http_logpool_utf8_len(s, end);
        if (n == 0) {
            d = ngx_cpymem(d, "\\ufffd", 6);
            s++;
            continue;
        }
        d = ngx_cpymem(d, s, n);
        s += n;
    }

    return d;
}


/* escape=default: what access_log does: " \ and bytes outside 0x20-0x7e as \xXX. */
static u_char *
ngx_http_logpool_escape_default(u_char *d, u_char *s, size_t len)
{
    static u_char  hex[] = "0123456789ABCDEF";
    u_char        *end = s + len, *p, c;

    while (s < end) {
        p = s;
        while (p < end && !ngx_http_logpool_special(ngx_http_logpool_default_special, *p)) {
            p++;
        }
        if (p > s) {
            d = ngx_cpymem(d, s, p - s);
            s = p;
            if (s == end) {
                break;
            }
        }

        c = *s++;
        *d++ = '\\';
        *d++ = 'x';
        *d++ = hex[c >> 4];
        *d++ = hex[c & 0xf];
    }

    return d;
}

/* LOGPOOL_ESCAPING_END */


static ngx_int_t
ngx_http_logpool_format_line(ngx_http_request_t *r, ngx_http_logpool_fmt_t *fmt,
    size_t *len)
{
    ngx_http_logpool_worker_t  *w = &ngx_http_logpool_worker;
    ngx_http_logpool_op_t      *op;
    ngx_http_variable_value_t  *v;
    ngx_uint_t                  i;
    u_char                     *pos;

    pos = w->buf;
    op = fmt->ops->elts;

    for (i = 0; i < fmt->ops->nelts; i++) {

        if (op[i].index == NGX_ERROR) {
            if (ngx_http_logpool_grow(&pos, op[i].text.len) == NULL) {
                return NGX_ERROR;
            }
            pos = ngx_cpymem(pos, op[i].text.data, op[i].text.len);
            continue;
        }

        v = ngx_http_get_indexed_variable(r, op[i].index);

        if (v == NULL || v->not_found) {
            if (fmt->escape != NGX_HTTP_LOGPOOL_ESCAPE_JSON) {
                if (ngx_http_logpool_grow(&pos, 1) == NULL) {
                    return NGX_ERROR;
                }
                *pos++ = '-';
            }
            continue;
        }

        switch (fmt->escape) {

        case NGX_HTTP_LOGPOOL_ESCAPE_JSON:
            if (ngx_http_logpool_grow(&pos, (size_t) v->len * 6) == NULL) {
                return NGX_ERROR;
            }
            pos = ngx_http_logpool_escape_json(pos, v->data, v->len);
            break;

        case NGX_HTTP_LOGPOOL_ESCAPE_NONE:
            if (ngx_http_logpool_grow(&pos, v->len) == NULL) {
                return NGX_ERROR;
            }
            pos = ngx_cpymem(pos, v->data, v->len);
            break;

        default:
            if (ngx_http_logpool_grow(&pos, (size_t) v->len * 4) == NULL) {
                return NGX_ERROR;
            }
            pos = ngx_http_logpool_escape_default(pos, v->data, v->len);
        }
    }

    *len = pos - w->buf;
    return NGX_OK;
}


static ngx_int_t
ngx_http_logpool_log_handler(ngx_http_request_t *r)
{
    ngx_http_logpool_worker_t    *w = &ngx_http_logpool_worker;
    ngx_http_logpool_loc_conf_t  *lcf;
    ngx_http_logpool_log_t      **log;
    ngx_uint_t                    i;
    ngx_str_t                     val;
    size_t                        len;
    int                           rc;

    if (w->pool == NULL) {
        return NGX_OK;
    }

    lcf = ngx_http_get_module_loc_conf(r, ngx_http_logpool_module);
    if (lcf->logs == NULL) {
        return NGX_OK;
    }

    log = lcf->logs->elts;
    for (i = 0; i < lcf->logs->nelts; i++) {

        if (log[i]->filter) {
            if (ngx_http_complex_value(r, log[i]->filter, &val) != NGX_OK) {
                return NGX_ERROR;
            }
            if (val.len == 0 || (val.len == 1 && val.data[0] == '0')) {
                continue;
            }
        }

        if (ngx_http_logpool_format_line(r, log[i]->fmt, &len) != NGX_OK) {
            ngx_log_error(NGX_LOG_ERR, r->connection->log, 0,
                          "logpool_log \"%V\": line longer than %uz bytes, not shipped",
                          &log[i]->sink, (size_t) NGX_HTTP_LOGPOOL_MAX_LINE);
            continue;
        }

        /* Refusals (buffer full, too big, closed) are counted by the library. */
        rc = w->log_cdata(w->pool, (int) log[i]->sink_id, (const char *) w->buf, len);
        if (rc < 0) {
            ngx_log_debug2(NGX_LOG_DEBUG_HTTP, r->connection->log, 0,
                           "logpool: log_cdata(%V): %d", &log[i]->sink, rc);
        }
    }

    return NGX_OK;
}


static ngx_int_t
ngx_http_logpool_postconfiguration(ngx_conf_t *cf)
{
    ngx_http_logpool_main_conf_t  *mcf;
    ngx_http_core_main_conf_t     *cmcf;
    ngx_http_handler_pt           *h;
    ngx_http_logpool_log_t       **log;
    ngx_str_t                     *names, zname;
    ngx_uint_t                     i, k;
    ngx_core_conf_t               *ccf;
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

    for (i = 0; i < mcf->all_logs.nelts; i++) {
        if (mcf->pool_json.len == 0) {
            ngx_log_error(NGX_LOG_EMERG, cf->log, 0,
                          "logpool_log \"%V\" in %s:%ui: no logpool_pool or "
                          "logpool_pool_file in http{}", &log[i]->sink, log[i]->file,
                          log[i]->line);
            return NGX_ERROR;
        }

        for (k = 0; k < mcf->sink_names.nelts; k++) {
            if (names[k].len == log[i]->sink.len
                && ngx_strncmp(names[k].data, log[i]->sink.data, names[k].len) == 0)
            {
                log[i]->sink_id = (ngx_int_t) k;
                break;
            }
        }

        if (log[i]->sink_id == NGX_ERROR) {
            list = ngx_pnalloc(cf->temp_pool, 1024);
            if (list == NULL) {
                return NGX_ERROR;
            }
            p = list;
            for (k = 0; k < mcf->sink_names.nelts && p < list + 900; k++) {
                p = ngx_slprintf(p, list + 1000, "%s\"%V\"", k ? ", " : "", &names[k]);
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

    /* One metrics slot per worker, at least 64. */
    ccf = (ngx_core_conf_t *) ngx_get_conf(cf->cycle->conf_ctx, ngx_core_module);
    mcf->nslots = NGX_HTTP_LOGPOOL_MIN_SLOTS;
    if (ccf != NULL && ccf->worker_processes != NGX_CONF_UNSET
        && (ngx_uint_t) ccf->worker_processes > mcf->nslots)
    {
        mcf->nslots = ccf->worker_processes;
    }

    ngx_str_set(&zname, "ngx_http_logpool_metrics");
    mcf->zone = ngx_shared_memory_add(cf, &zname,
                                      ngx_http_logpool_zone_size(mcf->nslots,
                                                                 mcf->slot_size),
                                      &ngx_http_logpool_module);
    if (mcf->zone == NULL) {
        return NGX_ERROR;
    }
    mcf->zone->init = ngx_http_logpool_init_zone;
    mcf->zone->data = mcf;

    return NGX_OK;
}


/* ---- metrics: publish and serve --------------------------------------------------- */

/*
 * A slot's lock holds the pid of its holder. Bounded: a worker killed while holding it (the
 * copy takes microseconds) must not hang the others; its lock is taken over.
 */
static ngx_int_t
ngx_http_logpool_slot_lock(ngx_http_logpool_slot_t *slot)
{
    ngx_uint_t          i;
    ngx_atomic_uint_t   holder;

    for (i = 0; i < 100000; i++) {
        holder = slot->lock;

        if (holder == 0) {
            if (ngx_atomic_cmp_set(&slot->lock, 0, (ngx_atomic_uint_t) ngx_pid)) {
                return NGX_OK;
            }
            continue;
        }

        if (i % 64 == 63 && kill((ngx_pid_t) holder, 0) == -1 && ngx_errno == NGX_ESRCH
            && ngx_atomic_cmp_set(&slot->lock, holder, (ngx_atomic_uint_t) ngx_pid))
        {
            return NGX_OK;
        }

        ngx_sched_yield();
    }

    return NGX_BUSY;
}


static void
ngx_http_logpool_slot_unlock(ngx_http_logpool_slot_t *slot)
{
    (void) ngx_atomic_cmp_set(&slot->lock, (ngx_atomic_uint_t) ngx_pid, 0);
}


static void
ngx_http_logpool_publish(void)
{
    ngx_http_logpool_worker_t  *w = &ngx_http_logpool_worker;
    ngx_http_logpool_shm_t     *shm;

    if (w->pool == NULL || w->mcf == NULL || w->mcf->zone == NULL || w->mbuf == NULL
        || w->mcf->zone->data == w->mcf)
    {
        return;
    }

    shm = w->mcf->zone->data;
    if (ngx_worker >= shm->nslots) {
        return;
    }

    pthread_mutex_lock(&w->publish_mutex);
    ngx_http_logpool_publish_locked(w, shm);
    pthread_mutex_unlock(&w->publish_mutex);
}


static void
ngx_http_logpool_publish_locked(ngx_http_logpool_worker_t *w, ngx_http_logpool_shm_t *shm)
{
    ngx_http_logpool_slot_t    *slot;
    int                         n;
    size_t                      len;
    u_char                     *nl;

    n = w->metrics(w->pool, (char *) w->mbuf, shm->slot_size);
    if (n < 0) {
        if (!w->publish_warned) {
            w->publish_warned = 1;
            ngx_log_error(NGX_LOG_ERR, ngx_cycle->log, 0,
                          "logpool: cannot publish metrics: logpool_metrics() returned %d",
                          n);
        }
        return;
    }

    len = (size_t) n;
    if (len >= shm->slot_size) {
        /* truncated: keep whole lines */
        nl = w->mbuf + shm->slot_size - 1;
        while (nl > w->mbuf && nl[-1] != '\n') {
            nl--;
        }
        len = nl - w->mbuf;
        if (!w->publish_warned) {
            w->publish_warned = 1;
            ngx_log_error(NGX_LOG_WARN, ngx_cycle->log, 0,
                          "logpool: metrics text of %d bytes is larger than "
                          "logpool_metrics_slot_size %uz: truncated", n, shm->slot_size);
        }
    }

    slot = ngx_http_logpool_slot(shm, ngx_worker);
    if (ngx_http_logpool_slot_lock(slot) != NGX_OK) {
        return; /* next time */
    }
    ngx_memcpy((u_char *) (slot + 1), w->mbuf, len);
    slot->len = len;
    slot->pid = ngx_pid;
    slot->updated = ngx_time();
    ngx_http_logpool_slot_unlock(slot);
}


static void *
ngx_http_logpool_publisher(void *arg)
{
    ngx_http_logpool_worker_t  *w = arg;
    struct timespec             at;

    pthread_mutex_lock(&w->stop_mutex);
    while (!w->publisher_stop) {
        pthread_mutex_unlock(&w->stop_mutex);
        ngx_http_logpool_publish();
        pthread_mutex_lock(&w->stop_mutex);
        clock_gettime(CLOCK_REALTIME, &at);
        at.tv_sec += NGX_HTTP_LOGPOOL_PUBLISH_MS / 1000;
        while (!w->publisher_stop
               && pthread_cond_timedwait(&w->stop_cond, &w->stop_mutex, &at) != ETIMEDOUT)
        {
            /* woken early: stop, or spurious */
        }
    }
    pthread_mutex_unlock(&w->stop_mutex);
    return NULL;
}


static void
ngx_http_logpool_publisher_start(ngx_http_logpool_worker_t *w, ngx_cycle_t *cycle)
{
    sigset_t  all, old;
    int       err;

    pthread_mutex_init(&w->publish_mutex, NULL);
    pthread_mutex_init(&w->stop_mutex, NULL);
    pthread_cond_init(&w->stop_cond, NULL);
    w->publisher_stop = 0;

    /* nginx's signals (QUIT, HUP, USR1...) must reach the worker's own thread. */
    sigfillset(&all);
    pthread_sigmask(SIG_BLOCK, &all, &old);
    err = pthread_create(&w->publisher, NULL, ngx_http_logpool_publisher, w);
    pthread_sigmask(SIG_SETMASK, &old, NULL);

    if (err != 0) {
        ngx_log_error(NGX_LOG_ERR, cycle->log, err,
                      "logpool: cannot start the metrics publisher thread; "
                      "logpool_metrics shows what this worker had at its last scrape");
        return;
    }
    (void) pthread_setname_np(w->publisher, "logpool-metrics"); /* seen in top -H, tests */
    w->publisher_running = 1;
}


static void
ngx_http_logpool_publisher_stop(ngx_http_logpool_worker_t *w)
{
    if (!w->publisher_running) {
        return;
    }
    pthread_mutex_lock(&w->stop_mutex);
    w->publisher_stop = 1;
    pthread_cond_signal(&w->stop_cond);
    pthread_mutex_unlock(&w->stop_mutex);
    pthread_join(w->publisher, NULL);
    w->publisher_running = 0;
}


typedef struct {
    u_char    *key;
    size_t     len;
    double     value;
    ngx_int_t  meta;
    ngx_int_t  next;     /* hash chain */
} ngx_http_logpool_series_t;


static ngx_uint_t
ngx_http_logpool_hash(u_char *p, size_t len)
{
    ngx_uint_t  h = 5381;

    while (len--) {
        h = h * 33 + *p++;
    }
    return h;
}


/* Sum identical series of the slots' texts; # lines once, first order kept. */
static ngx_int_t
ngx_http_logpool_merge(ngx_http_request_t *r, u_char *text, size_t size, ngx_str_t *out)
{
    ngx_http_logpool_series_t  *s;
    ngx_int_t                  *buckets, idx;
    ngx_uint_t                  nlines, nbuckets, n, i, h;
    u_char                     *p, *end, *line, *eol, *sp, *key_end, *o;
    u_char                      num[64];
    size_t                      klen, outlen;
    double                      v;
    char                       *after;

    nlines = 1;
    for (p = text; p < text + size; p++) {
        if (*p == '\n') {
            nlines++;
        }
    }

    nbuckets = 1;
    while (nbuckets < nlines * 2) {
        nbuckets <<= 1;
    }

    s = ngx_palloc(r->pool, nlines * sizeof(ngx_http_logpool_series_t));
    buckets = ngx_palloc(r->pool, nbuckets * sizeof(ngx_int_t));
    if (s == NULL || buckets == NULL) {
        return NGX_ERROR;
    }
    for (i = 0; i < nbuckets; i++) {
        buckets[i] = -1;
    }

    n = 0;
    outlen = 0;
    end = text + size;

    for (line = text; line < end; line = eol + 1) {
        eol = ngx_strlchr(line, end, '\n');
        if (eol == NULL) {
            eol = end;
        }
        if (eol == line) {
            continue;
        }

        if (line[0] == '#') {
            key_end = eol;
            v = 0;

        } else {
            sp = eol;
            while (sp > line && sp[-1] != ' ' && sp[-1] != '\t') {
                sp--;
            }
            key_end = sp;
            while (key_end > line && (key_end[-1] == ' ' || key_end[-1] == '\t')) {
                key_end--;
            }
            if (key_end == line || eol - sp == 0 || (size_t) (eol - sp) >= sizeof(num)) {
                continue;
            }
            ngx_memcpy(num, sp, eol - sp);
            num[eol - sp] = '\0';
            v = strtod((char *) num, &after);
            if (after == (char *) num || *after != '\0') {
                continue;
            }
        }

        klen = key_end - line;
        h = ngx_http_logpool_hash(line, klen) & (nbuckets - 1);

        for (idx = buckets[h]; idx >= 0; idx = s[idx].next) {
            if (s[idx].len == klen && ngx_memcmp(s[idx].key, line, klen) == 0) {
                break;
            }
        }

        if (idx >= 0) {
            if (!s[idx].meta) {
                s[idx].value += v;
            }
            continue;
        }

        s[n].key = line;
        s[n].len = klen;
        s[n].value = v;
        s[n].meta = (line[0] == '#');
        s[n].next = buckets[h];
        buckets[h] = (ngx_int_t) n;
        outlen += klen + 1 + (s[n].meta ? 0 : 1 + 32);
        n++;
    }

    o = ngx_pnalloc(r->pool, outlen + 1);
    if (o == NULL) {
        return NGX_ERROR;
    }
    out->data = o;

    for (i = 0; i < n; i++) {
        o = ngx_cpymem(o, s[i].key, s[i].len);
        if (!s[i].meta) {
            v = s[i].value;
            if (v == floor(v) && fabs(v) < 9007199254740992.0) {
                o += snprintf((char *) o, 34, " %.0f", v);
            } else {
                o += snprintf((char *) o, 34, " %.17g", v);
            }
        }
        *o++ = '\n';
    }
    out->len = o - out->data;

    return NGX_OK;
}


static ngx_int_t
ngx_http_logpool_metrics_handler(ngx_http_request_t *r)
{
    ngx_http_logpool_main_conf_t  *mcf;
    ngx_http_logpool_shm_t        *shm;
    ngx_http_logpool_slot_t       *slot;
    ngx_int_t                      rc;
    ngx_uint_t                     i;
    ngx_buf_t                     *b;
    ngx_chain_t                    cl;
    ngx_str_t                      merged;
    u_char                        *all, *p;
    time_t                         now;

    if (!(r->method & (NGX_HTTP_GET|NGX_HTTP_HEAD))) {
        return NGX_HTTP_NOT_ALLOWED;
    }

    rc = ngx_http_discard_request_body(r);
    if (rc != NGX_OK) {
        return rc;
    }

    mcf = ngx_http_get_module_main_conf(r, ngx_http_logpool_module);
    ngx_str_set(&merged, "");

    if (mcf->zone != NULL && mcf->zone->data != NULL && mcf->zone->data != mcf) {
        ngx_http_logpool_publish(); /* this worker's counters as of now */

        shm = mcf->zone->data;
        all = ngx_pnalloc(r->pool, shm->nslots * shm->slot_size);
        if (all == NULL) {
            return NGX_HTTP_INTERNAL_SERVER_ERROR;
        }

        p = all;
        now = ngx_time();
        for (i = 0; i < shm->nslots; i++) {
            slot = ngx_http_logpool_slot(shm, i);
            if (slot->len == 0 || slot->updated + NGX_HTTP_LOGPOOL_STALE_SEC < now) {
                continue;
            }
            if (ngx_http_logpool_slot_lock(slot) != NGX_OK) {
                continue;
            }
            if (slot->len <= shm->slot_size) {
                p = ngx_cpymem(p, (u_char *) (slot + 1), slot->len);
            }
            ngx_http_logpool_slot_unlock(slot);
            if (p > all && p[-1] != '\n') {
                *p++ = '\n';
            }
        }

        if (ngx_http_logpool_merge(r, all, p - all, &merged) != NGX_OK) {
            return NGX_HTTP_INTERNAL_SERVER_ERROR;
        }
    }

    r->headers_out.status = NGX_HTTP_OK;
    r->headers_out.content_length_n = merged.len;
    ngx_str_set(&r->headers_out.content_type, "text/plain; version=0.0.4; charset=utf-8");
    r->headers_out.content_type_len = r->headers_out.content_type.len;

    if (r->method == NGX_HTTP_HEAD || merged.len == 0) {
        r->header_only = 1;
        return ngx_http_send_header(r);
    }

    rc = ngx_http_send_header(r);
    if (rc == NGX_ERROR || rc > NGX_OK || r->header_only) {
        return rc;
    }

    b = ngx_calloc_buf(r->pool);
    if (b == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }
    b->pos = merged.data;
    b->last = merged.data + merged.len;
    b->memory = 1;
    b->last_buf = (r == r->main) ? 1 : 0;
    b->last_in_chain = 1;

    cl.buf = b;
    cl.next = NULL;

    return ngx_http_output_filter(r, &cl);
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
                      "logpool: cannot load %s (worker uid %d): %s; this worker serves "
                      "without shipping logs", lib, (int) geteuid(), dlerror());
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
    NGX_HTTP_LOGPOOL_SYM(sink_count, "logpool_sink_count");

    w->pool = w->new_((const char *) mcf->pool_json.data);
    if (w->pool == NULL) {
        err = w->last_error();
        ngx_log_error(NGX_LOG_ERR, cycle->log, 0,
                      "logpool: the pool of logpool_pool in %V cannot start: %s; this "
                      "worker serves without shipping logs", &mcf->pool_where,
                      err ? err : "(no message)");
        return NGX_OK;
    }

    /* nginx -t resolved the sink names to ids from the same JSON: they must agree. */
    if (w->sink_count(w->pool) != (int) mcf->sink_names.nelts) {
        ngx_log_error(NGX_LOG_ERR, cycle->log, 0,
                      "logpool: the pool of logpool_pool in %V has %d sinks, the module "
                      "read %ui from its JSON; this worker serves without shipping logs",
                      &mcf->pool_where, w->sink_count(w->pool), mcf->sink_names.nelts);
        (void) w->close(w->pool, 0);
        w->pool = NULL;
        return NGX_OK;
    }

    w->cap = 4096;
    w->buf = ngx_alloc(w->cap, cycle->log);
    if (mcf->zone != NULL) {
        w->mbuf = ngx_alloc(mcf->slot_size, cycle->log);
    }
    if (w->buf == NULL) {
        (void) w->close(w->pool, 0);
        w->pool = NULL;
        return NGX_OK;
    }

    if (w->mbuf != NULL) {
        ngx_http_logpool_publisher_start(w, cycle);
    }

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

    ngx_http_logpool_publisher_stop(w); /* it uses the pool: before the pool goes */

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
    w->free(pool);
}
