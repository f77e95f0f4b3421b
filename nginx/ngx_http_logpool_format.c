/*
 * logpool_format and logpool_log, and the log phase: each request's line formatted the way
 * ngx_http_log_module.c formats access_log's (the same bytes for the same format: its
 * escaping, its log-time variables, "-" or nothing for an unset variable), into the
 * worker's line buffer, and handed to log_cdata.
 */
#include "ngx_http_logpool_module.h"


/* The log module's own variables: computed at log time, never read as variables. */
static struct {
    ngx_str_t   name;
    ngx_uint_t  kind;
} ngx_http_logpool_log_vars[] = {
    { ngx_string("pipe"), NGX_HTTP_LOGPOOL_OP_PIPE },
    { ngx_string("time_local"), NGX_HTTP_LOGPOOL_OP_TIME_LOCAL },
    { ngx_string("time_iso8601"), NGX_HTTP_LOGPOOL_OP_TIME_ISO8601 },
    { ngx_string("msec"), NGX_HTTP_LOGPOOL_OP_MSEC },
    { ngx_string("request_time"), NGX_HTTP_LOGPOOL_OP_REQUEST_TIME },
    { ngx_string("status"), NGX_HTTP_LOGPOOL_OP_STATUS },
    { ngx_string("bytes_sent"), NGX_HTTP_LOGPOOL_OP_BYTES_SENT },
    { ngx_string("body_bytes_sent"), NGX_HTTP_LOGPOOL_OP_BODY_BYTES_SENT },
    { ngx_string("request_length"), NGX_HTTP_LOGPOOL_OP_REQUEST_LENGTH },
    { ngx_null_string, 0 }
};


/* logpool_format name [escape=default|json|json_utf8|none] string ...: log_format's syntax
 * (ngx_http_log_compile_format), compiled into ops. */
char *
ngx_http_logpool_format(ngx_conf_t *cf, ngx_command_t *cmd, void *conf)
{
    ngx_http_logpool_main_conf_t  *mcf = conf;

    ngx_str_t               *value, var;
    ngx_uint_t               i, s, bracket;
    ngx_int_t               *flush;
    ngx_http_logpool_fmt_t  *fmt;
    ngx_http_logpool_op_t   *op;
    u_char                  *p, *start, *end, *e;

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
        e = value[2].data + 7;
        if (ngx_strcmp(e, "json") == 0) {
            fmt->escape = NGX_HTTP_LOGPOOL_ESCAPE_JSON;
        } else if (ngx_strcmp(e, "json_utf8") == 0) {
            fmt->escape = NGX_HTTP_LOGPOOL_ESCAPE_JSON_UTF8;
        } else if (ngx_strcmp(e, "none") == 0) {
            fmt->escape = NGX_HTTP_LOGPOOL_ESCAPE_NONE;
        } else if (ngx_strcmp(e, "default") != 0) {
            ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                               "unknown logpool_format escaping \"%s\" (default, json, "
                               "json_utf8 or none)", e);
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

    /* \u00XX for a control byte; \uFFFD (6) for a byte of invalid UTF-8; \xXX */
    fmt->expansion = fmt->escape == NGX_HTTP_LOGPOOL_ESCAPE_NONE ? 1
                     : fmt->escape == NGX_HTTP_LOGPOOL_ESCAPE_DEFAULT ? 4 : 6;

    fmt->ops = ngx_array_create(cf->pool, 8, sizeof(ngx_http_logpool_op_t));
    fmt->flushes = ngx_array_create(cf->pool, 4, sizeof(ngx_int_t));
    if (fmt->ops == NULL || fmt->flushes == NULL) {
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
            ngx_memzero(op, sizeof(ngx_http_logpool_op_t));

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

                for (i = 0; ngx_http_logpool_log_vars[i].name.len; i++) {
                    if (ngx_http_logpool_log_vars[i].name.len == var.len
                        && ngx_strncmp(ngx_http_logpool_log_vars[i].name.data, var.data,
                                       var.len) == 0)
                    {
                        op->kind = ngx_http_logpool_log_vars[i].kind;
                        break;
                    }
                }
                if (op->kind != NGX_HTTP_LOGPOOL_OP_TEXT) {
                    continue;
                }

                op->kind = NGX_HTTP_LOGPOOL_OP_VARIABLE;
                op->index = ngx_http_get_variable_index(cf, &var);
                if (op->index == NGX_ERROR) {
                    return NGX_CONF_ERROR;
                }
                flush = ngx_array_push(fmt->flushes);
                if (flush == NULL) {
                    return NGX_CONF_ERROR;
                }
                *flush = op->index;
                continue;
            }

            start = p;
            while (p < end && *p != '$') {
                p++;
            }
            op->kind = NGX_HTTP_LOGPOOL_OP_TEXT;
            op->text.len = p - start;
            op->text.data = start;
        }
    }

    return NGX_CONF_OK;
}


/* logpool_log <sink> <format> [if=$var] | logpool_log off */
char *
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
    log->sink_cstr = value[1].data;   /* nginx's arguments are NUL-terminated */
    log->n = mcf->all_logs.nelts;
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


/* ---- the log phase ---------------------------------------------------------------- */

/*
 * Make room for need more bytes at *pos in the worker's line buffer. need is exact (never a
 * worst case) when it matters: the line limit refuses only lines that are really longer.
 */
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
    w->last = nb + cap;
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
static uint32_t  ngx_http_logpool_json_special[] = {   /* nginx's ngx_escape_json */
    0xffffffff, /* 0x00-0x1f: control characters */
    0x00000004, /* 0x20-0x3f: " */
    0x10000000, /* 0x40-0x5f: \ */
    0x00000000, /* 0x60-0x7f */
    0x00000000, 0x00000000, 0x00000000, 0x00000000 /* 0x80-0xff: as they are */
};

static uint32_t  ngx_http_logpool_json_utf8_special[] = {
    0xffffffff, 0x00000004, 0x10000000, 0x00000000,
    0xffffffff, 0xffffffff, 0xffffffff, 0xffffffff /* 0x80-0xff: checked as UTF-8 */
};

static uint32_t  ngx_http_logpool_default_special[] = { /* ngx_http_log_escape's */
    0xffffffff, /* 0x00-0x1f */
    0x00000004, /* 0x20-0x3f: " */
    0x10000000, /* 0x40-0x5f: \ */
    0x80000000, /* 0x60-0x7f: DEL */
    0xffffffff, 0xffffffff, 0xffffffff, 0xffffffff
};

#define ngx_http_logpool_special(map, c)  ((map)[(c) >> 5] & (1U << ((c) & 0x1f)))


static u_char  ngx_http_logpool_hex[] = "0123456789ABCDEF";


/* The bytes escape=json or json_utf8 (utf8 != 0) writes for s: exact, for the line limit. */
static size_t
ngx_http_logpool_json_len(u_char *s, size_t len, int utf8)
{
    u_char  *end = s + len, c;
    size_t   n = len, k;

    while (s < end) {
        c = *s;
        if (c == '"' || c == '\\') {
            n++;
        } else if (c < 0x20) {
            n += (c == '\n' || c == '\r' || c == '\t' || c == '\b' || c == '\f') ? 1 : 5;
        } else if (c >= 0x80 && utf8) {
            k = ngx_http_logpool_utf8_len(s, end);
            if (k == 0) {
                n += 5;             /* one byte becomes \uFFFD */
            } else {
                s += k;
                continue;
            }
        }
        s++;
    }

    return n;
}


/* The bytes escape=default writes for s. */
static size_t
ngx_http_logpool_default_len(u_char *s, size_t len)
{
    u_char  *end = s + len;
    size_t   n = len;

    while (s < end) {
        if (ngx_http_logpool_special(ngx_http_logpool_default_special, *s)) {
            n += 3;
        }
        s++;
    }

    return n;
}


/*
 * escape=json: nginx's ngx_escape_json byte for byte: " and \ escaped, control characters as
 * \n \r \t \b \f or \u00XX (upper-case hex), every other byte as it is (invalid UTF-8
 * included). utf8 != 0 (escape=json_utf8): the same, but every byte that is not part of a
 * valid UTF-8 sequence becomes \uFFFD, so the result is valid JSON for any input.
 */
static u_char *
ngx_http_logpool_escape_json(u_char *d, u_char *s, size_t len, int utf8)
{
    u_char    *end = s + len, *p, c;
    uint32_t  *map;
    size_t     n;

    map = utf8 ? ngx_http_logpool_json_utf8_special : ngx_http_logpool_json_special;

    while (s < end) {
        p = s;
        while (p < end && !ngx_http_logpool_special(map, *p)) {
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
                *d++ = ngx_http_logpool_hex[c >> 4];
                *d++ = ngx_http_logpool_hex[c & 0xf];
            }
            s++;
            continue;
        }

        n = ngx_http_logpool_utf8_len(s, end);   /* only utf8 gets here with c >= 0x80 */
        if (n == 0) {
            d = ngx_cpymem(d, "\\uFFFD", 6);
            s++;
            continue;
        }
        d = ngx_cpymem(d, s, n);
        s += n;
    }

    return d;
}


/* escape=default: ngx_http_log_escape: " \ and bytes outside 0x20-0x7e as \xXX. */
static u_char *
ngx_http_logpool_escape_default(u_char *d, u_char *s, size_t len)
{
    u_char  *end = s + len, *p, c;

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
        *d++ = ngx_http_logpool_hex[c >> 4];
        *d++ = ngx_http_logpool_hex[c & 0xf];
    }

    return d;
}

/* LOGPOOL_ESCAPING_END */


/* A decimal number, as ngx_sprintf's "%O"/"%T" write it, without its format parser (the
 * parser costs more than the digits: about 500 instructions a call, callgrind). */
static u_char *
ngx_http_logpool_put_int(u_char *d, int64_t n)
{
    u_char    tmp[NGX_INT64_LEN + 1], *p = tmp + sizeof(tmp);
    uint64_t  u;

    u = n < 0 ? (uint64_t) 0 - (uint64_t) n : (uint64_t) n;
    do {
        *--p = (u_char) ('0' + u % 10);
        u /= 10;
    } while (u);
    if (n < 0) {
        *--p = '-';
    }
    while (p < tmp + sizeof(tmp)) {
        *d++ = *p++;
    }
    return d;
}


/* "%T.%03M": seconds and milliseconds */
static u_char *
ngx_http_logpool_put_msec(u_char *d, time_t sec, ngx_msec_int_t ms)
{
    d = ngx_http_logpool_put_int(d, (int64_t) sec);
    *d++ = '.';
    *d++ = (u_char) ('0' + ms / 100 % 10);
    *d++ = (u_char) ('0' + ms / 10 % 10);
    *d++ = (u_char) ('0' + ms % 10);
    return d;
}


/*
 * The log module's own variables, computed now as ngx_http_log_module.c computes them (the
 * variables of the same names may hold a value cached earlier in the request, e.g. by an
 * add_header, and $status has no "009" for HTTP/0.9 there). Written as they are, whatever
 * the format's escaping, as access_log writes them.
 */
static u_char *
ngx_http_logpool_log_var(ngx_http_request_t *r, u_char *d, ngx_uint_t op)
{
    ngx_time_t      *tp;
    ngx_msec_int_t   ms;
    ngx_uint_t       status;
    off_t            length;

    switch (op) {

    case NGX_HTTP_LOGPOOL_OP_PIPE:
        *d++ = r->pipeline ? 'p' : '.';
        return d;

    case NGX_HTTP_LOGPOOL_OP_TIME_LOCAL:
        return ngx_cpymem(d, ngx_cached_http_log_time.data, ngx_cached_http_log_time.len);

    case NGX_HTTP_LOGPOOL_OP_TIME_ISO8601:
        return ngx_cpymem(d, ngx_cached_http_log_iso8601.data,
                          ngx_cached_http_log_iso8601.len);

    case NGX_HTTP_LOGPOOL_OP_MSEC:
        tp = ngx_timeofday();
        return ngx_http_logpool_put_msec(d, tp->sec, (ngx_msec_int_t) tp->msec);

    case NGX_HTTP_LOGPOOL_OP_REQUEST_TIME:
        tp = ngx_timeofday();
        ms = (ngx_msec_int_t) ((tp->sec - r->start_sec) * 1000
                               + (tp->msec - r->start_msec));
        ms = ngx_max(ms, 0);
        return ngx_http_logpool_put_msec(d, (time_t) ms / 1000, ms % 1000);

    case NGX_HTTP_LOGPOOL_OP_STATUS:
        if (r->err_status) {
            status = r->err_status;
        } else if (r->headers_out.status) {
            status = r->headers_out.status;
        } else if (r->http_version == NGX_HTTP_VERSION_9) {
            status = 9;
        } else {
            status = 0;
        }
        /* three digits, as ngx_sprintf's "%03ui" writes them, without its parser */
        if (status < 1000) {
            *d++ = (u_char) ('0' + status / 100);
            *d++ = (u_char) ('0' + status / 10 % 10);
            *d++ = (u_char) ('0' + status % 10);
            return d;
        }
        return ngx_sprintf(d, "%03ui", status);

    case NGX_HTTP_LOGPOOL_OP_BYTES_SENT:
        return ngx_http_logpool_put_int(d, r->connection->sent);

    case NGX_HTTP_LOGPOOL_OP_BODY_BYTES_SENT:
        length = r->connection->sent - r->header_size;
        if (length > 0) {
            return ngx_http_logpool_put_int(d, length);
        }
        *d++ = '0';
        return d;

    default: /* NGX_HTTP_LOGPOOL_OP_REQUEST_LENGTH */
        return ngx_http_logpool_put_int(d, r->request_length);
    }
}


static ngx_int_t
ngx_http_logpool_format_line(ngx_http_request_t *r, ngx_http_logpool_fmt_t *fmt,
    size_t *len)
{
    ngx_http_logpool_worker_t  *w = &ngx_http_logpool_worker;
    ngx_http_logpool_op_t      *op, *last;
    ngx_http_variable_value_t  *v;
    u_char                     *pos;
    size_t                      need;

    /* nginx's log module re-evaluates the format's non-cacheable variables per line */
    if (fmt->flushes->nelts) {
        ngx_http_script_flush_no_cacheable_variables(r, fmt->flushes);
    }

    pos = w->buf;
    op = fmt->ops->elts;
    last = op + fmt->ops->nelts;

    for ( /* void */ ; op < last; op++) {

        switch (op->kind) {

        case NGX_HTTP_LOGPOOL_OP_TEXT:
            if ((size_t) (w->last - pos) < op->text.len
                && ngx_http_logpool_grow(&pos, op->text.len) == NULL)
            {
                return NGX_ERROR;
            }
            pos = ngx_cpymem(pos, op->text.data, op->text.len);
            continue;

        case NGX_HTTP_LOGPOOL_OP_VARIABLE:
            break;

        default:
            if ((size_t) (w->last - pos) < NGX_HTTP_LOGPOOL_LOG_VAR_LEN
                && ngx_http_logpool_grow(&pos, NGX_HTTP_LOGPOOL_LOG_VAR_LEN) == NULL)
            {
                return NGX_ERROR;
            }
            pos = ngx_http_logpool_log_var(r, pos, op->kind);
            continue;
        }

        v = ngx_http_get_indexed_variable(r, op->index);

        if (v == NULL || v->not_found) {
            /* access_log: "-" by default, nothing with escape=json or none */
            if (fmt->escape == NGX_HTTP_LOGPOOL_ESCAPE_DEFAULT) {
                if (pos == w->last && ngx_http_logpool_grow(&pos, 1) == NULL) {
                    return NGX_ERROR;
                }
                *pos++ = '-';
            }
            continue;
        }

        /* The worst case when it fits (the common case, no counting pass); else the exact
         * length, so that only a line really over the limit is refused. */
        need = (size_t) v->len * fmt->expansion;
        if ((size_t) (w->last - pos) < need) {
            switch (fmt->escape) {
            case NGX_HTTP_LOGPOOL_ESCAPE_DEFAULT:
                need = ngx_http_logpool_default_len(v->data, v->len);
                break;
            case NGX_HTTP_LOGPOOL_ESCAPE_NONE:
                need = v->len;
                break;
            default:
                need = ngx_http_logpool_json_len(v->data, v->len,
                                        fmt->escape == NGX_HTTP_LOGPOOL_ESCAPE_JSON_UTF8);
            }
            if (ngx_http_logpool_grow(&pos, need) == NULL) {
                return NGX_ERROR;
            }
        }

        switch (fmt->escape) {
        case NGX_HTTP_LOGPOOL_ESCAPE_DEFAULT:
            pos = ngx_http_logpool_escape_default(pos, v->data, v->len);
            break;
        case NGX_HTTP_LOGPOOL_ESCAPE_NONE:
            pos = ngx_cpymem(pos, v->data, v->len);
            break;
        default:
            pos = ngx_http_logpool_escape_json(pos, v->data, v->len,
                                        fmt->escape == NGX_HTTP_LOGPOOL_ESCAPE_JSON_UTF8);
        }
    }

    *len = pos - w->buf;
    return NGX_OK;
}


ngx_int_t
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

        if (w->sink_ids[log[i]->n] < 0) {
            continue;
        }

        if (log[i]->filter) {
            /* A condition that cannot be evaluated (no memory) skips its own line only:
             * the request's other logpool_log lines still go. */
            if (ngx_http_complex_value(r, log[i]->filter, &val) != NGX_OK) {
                ngx_log_error(NGX_LOG_ERR, r->connection->log, 0,
                              "logpool_log \"%V\": if= could not be evaluated, line not "
                              "shipped", &log[i]->sink);
                continue;
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

        /* Refusals (buffer full, too big, closed) are counted by the library; a sink the
         * pool has no such name for was logged once at the worker's start. */
        rc = w->log_cdata(w->pool, w->sink_ids[log[i]->n], (const char *) w->buf, len);
        if (rc < 0) {
            ngx_log_debug2(NGX_LOG_DEBUG_HTTP, r->connection->log, 0,
                           "logpool: log_cdata(%V): %d", &log[i]->sink, rc);
        }
    }

    return NGX_OK;
}
