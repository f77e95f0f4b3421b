/*
 * logpool_pool and logpool_pool_file: the pool's JSON, read when nginx reads its
 * configuration. The library checks the config itself when a worker starts its pool; nginx
 * -t must refuse without loading the library (the master never starts Python), so this file
 * checks what it can alone: that the text is JSON, that "sinks" is a non-empty list, and
 * that every logpool_log names something a sink can be called.
 */
#include "ngx_http_logpool_module.h"

#include <unistd.h>


#define NGX_HTTP_LOGPOOL_JSON_DEPTH      64


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
 * Checks that the text is JSON with a non-empty "sinks" list, and keeps each sink's "name"
 * (mcf->sink_names) and first URL (mcf->sink_urls). Returns NULL or a message.
 */
static const char *
ngx_http_logpool_sink_names(ngx_conf_t *cf, ngx_http_logpool_main_conf_t *mcf,
    ngx_str_t *json)
{
    ngx_uint_t               i, nsinks, found;
    ngx_str_t                key, *names, *urls, *name, *url;
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
        const char *err = ngx_http_logpool_agent_sink_names(cf, &mcf->agent_dir,
                                                            &mcf->sink_names);
        if (err != NULL) {
            return err;
        }
        mcf->sink_urls.nelts = 0;
        for (i = 0; i < mcf->sink_names.nelts; i++) {
            url = ngx_array_push(&mcf->sink_urls);
            if (url == NULL) {
                return "out of memory";
            }
            ngx_str_null(url);
        }
        return NULL;
    }

    if (!found) {
        return "\"sinks\" must be a non-empty list";
    }

    /* What a logpool_log may name, for nginx -t: each sink's "name", and the first URL of
     * each (an unnamed sink goes by it, or by "URL#<index>" when that is taken: see
     * ngx_http_logpool_sink_known). Which sink a name is, is the library's rule alone: each
     * worker asks logpool_sink_index. */
    mcf->sink_names.nelts = 0;
    mcf->sink_urls.nelts = 0;
    for (i = 0; i < nsinks; i++) {
        name = ngx_array_push(&mcf->sink_names);
        url = ngx_array_push(&mcf->sink_urls);
        if (name == NULL || url == NULL) {
            return "out of memory";
        }
        *name = names[i];           /* len 0: unnamed */
        *url = urls[i];             /* data NULL: none (the library says what is wrong) */
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


char *
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
        /* relative to nginx's prefix, as access_log's and log_format's files are */
        if (ngx_conf_full_name(cf->cycle, &path, 0) != NGX_OK) {
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


/* Whether a logpool_log's sink name can name one of the pool's sinks: a "name", the first
 * URL of an unnamed sink, or such a URL with "#<digits>" (the library's name for the second
 * sink with one URL). Which sink it is, is the library's rule: logpool_sink_index. */
ngx_int_t
ngx_http_logpool_sink_known(ngx_http_logpool_main_conf_t *mcf, ngx_str_t *sink)
{
    ngx_str_t   *names = mcf->sink_names.elts, *urls = mcf->sink_urls.elts, *as;
    ngx_uint_t   k;
    u_char      *hash;

    hash = sink->data + sink->len;
    while (hash > sink->data && hash[-1] >= '0' && hash[-1] <= '9') {
        hash--;
    }
    if (hash == sink->data + sink->len || hash - 1 <= sink->data || hash[-1] != '#') {
        hash = NULL;
    } else {
        hash--;
    }

    for (k = 0; k < mcf->sink_names.nelts; k++) {
        as = names[k].len ? &names[k] : &urls[k];
        if (as->len == sink->len && ngx_strncmp(as->data, sink->data, sink->len) == 0) {
            return 1;
        }
        if (hash != NULL && names[k].len == 0 && urls[k].len == (size_t) (hash - sink->data)
            && ngx_strncmp(urls[k].data, sink->data, urls[k].len) == 0)
        {
            return 1;
        }
    }

    return 0;
}
