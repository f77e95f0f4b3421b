/*
 * Agent mode in the nginx module: logpool_pool '{"agent": "<agent_dir>"}' names no sinks;
 * they are the agent's, in the table it publishes in agent_dir (logpool/agent/table.py):
 *
 *     logpool-agent-sinks 1
 *     <number of sinks>
 *     <max_message_size> <name>      (one line per sink, in id order)
 *
 * Read when the configuration is read (the agent must be running before nginx starts or
 * reloads); each worker then loads liblogpool_producer.so, which has no Python.
 */
#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>

#define NGX_HTTP_LOGPOOL_AGENT_TABLE_MAX  65536
#define NGX_HTTP_LOGPOOL_AGENT_MAGIC      "logpool-agent-sinks 1"


/* The next line of [*p, end) without its "\n"; NULL at the end. */
static u_char *
ngx_http_logpool_agent_line(u_char **p, u_char *end, size_t *len)
{
    u_char  *start, *nl;

    if (*p >= end) {
        return NULL;
    }
    start = *p;
    nl = ngx_strlchr(start, end, '\n');
    if (nl == NULL) {
        nl = end;
    }
    *len = nl - start;
    *p = nl + 1;
    return start;
}


const char *
ngx_http_logpool_agent_sink_names(ngx_conf_t *cf, ngx_str_t *agent_dir,
    ngx_array_t *names)
{
    u_char      *path, *buf, *p, *end, *line, *sp;
    size_t       len;
    ssize_t      n;
    ngx_fd_t     fd;
    ngx_int_t    count, i, max;
    ngx_str_t   *name;

    path = ngx_pnalloc(cf->temp_pool, agent_dir->len + sizeof("/sinks"));
    buf = ngx_pnalloc(cf->temp_pool, NGX_HTTP_LOGPOOL_AGENT_TABLE_MAX);
    if (path == NULL || buf == NULL) {
        return "out of memory";
    }
    ngx_sprintf(path, "%V/sinks%Z", agent_dir);

    fd = ngx_open_file(path, NGX_FILE_RDONLY, NGX_FILE_OPEN, 0);
    if (fd == NGX_INVALID_FILE) {
        p = ngx_pnalloc(cf->pool, 256 + agent_dir->len * 2);
        if (p == NULL) {
            return "out of memory";
        }
        ngx_sprintf(p, "agent mode: cannot read %s (%s); start `python -m logpool agent` "
                    "with agent_dir %V before nginx%Z", path, strerror(ngx_errno), agent_dir);
        return (const char *) p;
    }
    n = read(fd, buf, NGX_HTTP_LOGPOOL_AGENT_TABLE_MAX);
    ngx_close_file(fd);
    if (n <= 0) {
        return "agent mode: the agent's sink table is empty or unreadable";
    }

    p = buf;
    end = buf + n;
    line = ngx_http_logpool_agent_line(&p, end, &len);
    if (line == NULL || len != sizeof(NGX_HTTP_LOGPOOL_AGENT_MAGIC) - 1
        || ngx_strncmp(line, NGX_HTTP_LOGPOOL_AGENT_MAGIC, len) != 0)
    {
        return "agent mode: the agent's sink table is not of this version";
    }
    line = ngx_http_logpool_agent_line(&p, end, &len);
    count = line ? ngx_atoi(line, len) : NGX_ERROR;
    if (count <= 0 || count > 256) {
        return "agent mode: the agent's sink table has a bad sink count";
    }

    names->nelts = 0;
    for (i = 0; i < count; i++) {
        line = ngx_http_logpool_agent_line(&p, end, &len);
        sp = line ? ngx_strlchr(line, line + len, ' ') : NULL;
        max = sp ? ngx_atoi(line, sp - line) : NGX_ERROR;
        if (sp == NULL || max <= 0 || sp + 1 >= line + len) {
            return "agent mode: the agent's sink table has a bad line";
        }
        name = ngx_array_push(names);
        if (name == NULL) {
            return "out of memory";
        }
        name->len = line + len - (sp + 1);
        name->data = ngx_pnalloc(cf->pool, name->len);
        if (name->data == NULL) {
            return "out of memory";
        }
        ngx_memcpy(name->data, sp + 1, name->len);
    }

    return NULL;
}
