/*
 * logpool_metrics: one Prometheus answer for every worker's pool.
 *
 * A shared memory zone holds one slot per live worker process, and slot 0: the retired
 * total, the counters of every worker that has exited since nginx started. Each worker
 * claims a free slot for its own pid when it starts (old and new workers of a reload never
 * share one), writes its pool's text there once a second from a thread of its own, and at
 * exit folds its final counters into the retired total and frees the slot. A worker that
 * died without exiting (SIGKILL) is folded in by the next worker that finds its pid gone.
 * So the sum over the retired total and every owned slot only grows, across reloads and
 * worker exits, and an idle worker's slot is never dropped: no clock decides what counts.
 *
 * All slots are read and written under one lock (the holder's pid: a worker killed while
 * holding it cannot hang the others), so a scrape sees each exit either before or after
 * its fold, never both or neither. Summing is the library's logpool_metrics_merge, the one
 * the Lua module uses too.
 */
#include "ngx_http_logpool_module.h"

#include <errno.h>
#include <signal.h>
#include <stdlib.h>
#include <time.h>


#define NGX_HTTP_LOGPOOL_MIN_SLOTS       64
#define NGX_HTTP_LOGPOOL_PUBLISH_MS      1000


typedef struct {
    ngx_atomic_t                owner;    /* pid of the worker writing here; 0: free */
    size_t                      len;
} ngx_http_logpool_slot_t;

/* The zone: this header, then nslots slots of slot_size text bytes each; slot 0 retired. */
typedef struct {
    ngx_atomic_t                lock;     /* pid of the holder, 0: free */
    ngx_uint_t                  nslots;
    size_t                      slot_size;
} ngx_http_logpool_shm_t;


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


static ngx_int_t
ngx_http_logpool_init_zone(ngx_shm_zone_t *zone, void *data)
{
    ngx_http_logpool_main_conf_t  *mcf = zone->data;
    ngx_http_logpool_shm_t        *shm, *old = data;
    ngx_slab_pool_t               *shpool;
    size_t                         size;

    /* The zone's name holds its geometry: a zone kept across a reload has the same one. */
    if (old != NULL) {
        zone->data = old; /* a reload keeps what the workers published and retired */
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


/*
 * The zone for this configuration. Its name carries the slot count and size: a reload that
 * changes either gets a zone of its own (nginx reuses a zone by name and size, and a slab
 * sized for one set of slots has no room for a second), while the old workers finish in
 * the old one; the totals restart with the new geometry, as they do when nginx restarts.
 */
ngx_int_t
ngx_http_logpool_metrics_zone(ngx_conf_t *cf, ngx_http_logpool_main_conf_t *mcf)
{
    ngx_core_conf_t  *ccf;
    ngx_str_t         name;
    size_t            n;

    /* slots for two generations of workers (a reload's old ones drain beside the new),
     * at least 64, and the retired total */
    ccf = (ngx_core_conf_t *) ngx_get_conf(cf->cycle->conf_ctx, ngx_core_module);
    mcf->nslots = NGX_HTTP_LOGPOOL_MIN_SLOTS;
    if (ccf != NULL && ccf->worker_processes != NGX_CONF_UNSET
        && 2 * (ngx_uint_t) ccf->worker_processes + 1 > mcf->nslots)
    {
        mcf->nslots = 2 * ccf->worker_processes + 1;
    }

    name.data = ngx_pnalloc(cf->pool, 64);
    if (name.data == NULL) {
        return NGX_ERROR;
    }
    name.len = ngx_sprintf(name.data, "logpool_metrics_%ui_%uz", mcf->nslots, mcf->slot_size)
               - name.data;

    /* nginx puts a slab pool at the start of every zone: the slots are one allocation */
    n = ngx_http_logpool_shm_size(mcf->nslots, mcf->slot_size);
    n = ngx_align(n + n / 32, ngx_pagesize) + 16 * ngx_pagesize;

    mcf->zone = ngx_shared_memory_add(cf, &name, n, &ngx_http_logpool_module);
    if (mcf->zone == NULL) {
        return NGX_ERROR;
    }
    mcf->zone->init = ngx_http_logpool_init_zone;
    mcf->zone->data = mcf;

    return NGX_OK;
}


static ngx_http_logpool_shm_t *
ngx_http_logpool_shm(ngx_http_logpool_worker_t *w)
{
    if (w->mcf == NULL || w->mcf->zone == NULL || w->mcf->zone->data == w->mcf) {
        return NULL;
    }
    return w->mcf->zone->data;
}


/* The zone's lock. Bounded: a worker killed while holding it (a copy or a merge takes
 * microseconds) must not hang the others; its lock is taken over. */
static ngx_int_t
ngx_http_logpool_lock(ngx_http_logpool_shm_t *shm)
{
    ngx_uint_t          i;
    ngx_atomic_uint_t   holder;

    for (i = 0; i < 100000; i++) {
        holder = shm->lock;

        if (holder == 0) {
            if (ngx_atomic_cmp_set(&shm->lock, 0, (ngx_atomic_uint_t) ngx_pid)) {
                return NGX_OK;
            }
            continue;
        }

        if (i % 64 == 63 && kill((ngx_pid_t) holder, 0) == -1 && errno == ESRCH
            && ngx_atomic_cmp_set(&shm->lock, holder, (ngx_atomic_uint_t) ngx_pid))
        {
            return NGX_OK;
        }

        ngx_sched_yield();
    }

    return NGX_BUSY;
}


static void
ngx_http_logpool_unlock(ngx_http_logpool_shm_t *shm)
{
    (void) ngx_atomic_cmp_set(&shm->lock, (ngx_atomic_uint_t) ngx_pid, 0);
}


/*
 * Add text's counters to the retired total (slot 0). Zone lock held. Gauges are left out:
 * they describe a process that no longer exists.
 */
static void
ngx_http_logpool_fold(ngx_http_logpool_worker_t *w, ngx_http_logpool_shm_t *shm,
    u_char *text, size_t len)
{
    ngx_http_logpool_slot_t  *retired = ngx_http_logpool_slot(shm, 0);
    u_char                   *in, *out, *nl;
    int                       n;

    if (len == 0 || w->metrics_merge == NULL) {
        return;
    }

    in = malloc(retired->len + 1 + len);
    out = malloc(shm->slot_size);
    if (in == NULL || out == NULL) {
        goto done;
    }
    ngx_memcpy(in, (u_char *) (retired + 1), retired->len);
    in[retired->len] = '\n';
    ngx_memcpy(in + retired->len + 1, text, len);

    n = w->metrics_merge((const char *) in, retired->len + 1 + len, (char *) out,
                         shm->slot_size, LOGPOOL_METRICS_COUNTERS_ONLY);
    if (n < 0) {
        goto done;
    }
    if ((size_t) n >= shm->slot_size) {
        /* cut at a line: the counters of more sinks than the slot holds */
        nl = out + shm->slot_size - 1;
        while (nl > out && nl[-1] != '\n') {
            nl--;
        }
        n = (int) (nl - out);
        ngx_log_error(NGX_LOG_WARN, ngx_cycle->log, 0,
                      "logpool: retired metrics larger than logpool_metrics_slot_size %uz: "
                      "truncated", shm->slot_size);
    }
    ngx_memcpy((u_char *) (retired + 1), out, n);
    retired->len = (size_t) n;

done:

    free(in);
    free(out);
}


/* Fold the slots of workers that died without exiting (SIGKILL) into the retired total and
 * free their slots. Zone lock held. */
static void
ngx_http_logpool_reap(ngx_http_logpool_worker_t *w, ngx_http_logpool_shm_t *shm)
{
    ngx_http_logpool_slot_t  *slot;
    ngx_uint_t                i;
    ngx_pid_t                 owner;

    for (i = 1; i < shm->nslots; i++) {
        slot = ngx_http_logpool_slot(shm, i);
        owner = (ngx_pid_t) slot->owner;
        if (owner == 0 || owner == ngx_pid || kill(owner, 0) == 0 || errno != ESRCH) {
            continue;
        }
        ngx_http_logpool_fold(w, shm, (u_char *) (slot + 1), slot->len);
        slot->len = 0;
        slot->owner = 0;
    }
}


/* Render this worker's text into w->mbuf (the library takes the GIL: never in the event
 * loop but for a scrape) and copy it into its slot. */
static void
ngx_http_logpool_publish(ngx_http_logpool_worker_t *w, logpool_t *pool)
{
    ngx_http_logpool_shm_t   *shm = ngx_http_logpool_shm(w);
    ngx_http_logpool_slot_t  *slot;
    int                       n;
    size_t                    len;
    u_char                   *nl;

    if (shm == NULL || pool == NULL || w->mbuf == NULL || w->slot == 0) {
        return;
    }

    pthread_mutex_lock(&w->publish_mutex);

    n = w->metrics(pool, (char *) w->mbuf, shm->slot_size);
    if (n < 0) {
        if (!w->publish_warned) {
            w->publish_warned = 1;
            ngx_log_error(NGX_LOG_ERR, ngx_cycle->log, 0,
                          "logpool: cannot publish metrics: logpool_metrics() returned %d",
                          n);
        }
        goto done;
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

    if (ngx_http_logpool_lock(shm) != NGX_OK) {
        goto done; /* next time */
    }
    slot = ngx_http_logpool_slot(shm, w->slot);
    if ((ngx_pid_t) slot->owner == ngx_pid) {
        ngx_memcpy((u_char *) (slot + 1), w->mbuf, len);
        slot->len = len;
    }
    ngx_http_logpool_unlock(shm);

done:

    pthread_mutex_unlock(&w->publish_mutex);
}


static void *
ngx_http_logpool_publisher(void *arg)
{
    ngx_http_logpool_worker_t  *w = arg;
    struct timespec             at;

    pthread_mutex_lock(&w->stop_mutex);
    while (!w->publisher_stop) {
        pthread_mutex_unlock(&w->stop_mutex);
        ngx_http_logpool_publish(w, w->pool);
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


/* At the worker's start: a slot of its own (reaping the dead first), and the publisher. */
void
ngx_http_logpool_metrics_start(ngx_http_logpool_worker_t *w, ngx_cycle_t *cycle)
{
    ngx_http_logpool_shm_t   *shm = ngx_http_logpool_shm(w);
    ngx_http_logpool_slot_t  *slot;
    ngx_uint_t                i;
    sigset_t                  all, old;
    int                       err;

    if (shm == NULL) {
        return;
    }

    w->mbuf = ngx_alloc(shm->slot_size, cycle->log);
    if (w->mbuf == NULL || ngx_http_logpool_lock(shm) != NGX_OK) {
        return;
    }
    ngx_http_logpool_reap(w, shm);
    for (i = 1; i < shm->nslots; i++) {
        slot = ngx_http_logpool_slot(shm, i);
        if (slot->owner == 0) {
            slot->owner = (ngx_atomic_uint_t) ngx_pid;
            slot->len = 0;
            w->slot = i;
            break;
        }
    }
    ngx_http_logpool_unlock(shm);

    if (w->slot == 0) {
        ngx_log_error(NGX_LOG_WARN, cycle->log, 0,
                      "logpool: all %ui metrics slots are taken: logpool_metrics leaves "
                      "this worker's counters out", shm->nslots - 1);
        return;
    }

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


void
ngx_http_logpool_metrics_stop(ngx_http_logpool_worker_t *w)
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


/* At the worker's exit, once its pool is closed: its final counters into the retired total,
 * its slot freed, in one step under the lock. */
void
ngx_http_logpool_metrics_retire(ngx_http_logpool_worker_t *w, logpool_t *pool)
{
    ngx_http_logpool_shm_t   *shm = ngx_http_logpool_shm(w);
    ngx_http_logpool_slot_t  *slot;

    if (shm == NULL || w->slot == 0) {
        return;
    }

    ngx_http_logpool_publish(w, pool);

    if (ngx_http_logpool_lock(shm) != NGX_OK) {
        return; /* the slot stays; the next worker to start reaps it */
    }
    slot = ngx_http_logpool_slot(shm, w->slot);
    if ((ngx_pid_t) slot->owner == ngx_pid) {
        ngx_http_logpool_fold(w, shm, (u_char *) (slot + 1), slot->len);
        slot->len = 0;
        slot->owner = 0;
    }
    ngx_http_logpool_unlock(shm);
    w->slot = 0;
}


static ngx_int_t ngx_http_logpool_metrics_handler(ngx_http_request_t *r);


char *
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


static ngx_int_t
ngx_http_logpool_metrics_handler(ngx_http_request_t *r)
{
    ngx_http_logpool_worker_t  *w = &ngx_http_logpool_worker;
    ngx_http_logpool_shm_t     *shm;
    ngx_http_logpool_slot_t    *slot;
    ngx_int_t                   rc;
    ngx_uint_t                  i;
    ngx_buf_t                  *b;
    ngx_chain_t                 cl;
    ngx_str_t                   merged;
    u_char                     *all, *p;
    size_t                      cap;
    int                         n;

    if (!(r->method & (NGX_HTTP_GET|NGX_HTTP_HEAD))) {
        return NGX_HTTP_NOT_ALLOWED;
    }

    rc = ngx_http_discard_request_body(r);
    if (rc != NGX_OK) {
        return rc;
    }

    ngx_str_set(&merged, "");
    shm = ngx_http_logpool_shm(w);

    if (shm != NULL && w->metrics_merge != NULL) {
        ngx_http_logpool_publish(w, w->pool); /* this worker's counters as of now */

        all = ngx_pnalloc(r->pool, shm->nslots * (shm->slot_size + 1));
        if (all == NULL) {
            return NGX_HTTP_INTERNAL_SERVER_ERROR;
        }

        if (ngx_http_logpool_lock(shm) != NGX_OK) {
            return NGX_HTTP_SERVICE_UNAVAILABLE;
        }
        ngx_http_logpool_reap(w, shm);
        p = all;
        for (i = 0; i < shm->nslots; i++) {
            slot = ngx_http_logpool_slot(shm, i);
            if (slot->len == 0 || slot->len > shm->slot_size) {
                continue;
            }
            p = ngx_cpymem(p, (u_char *) (slot + 1), slot->len);
            *p++ = '\n';
        }
        ngx_http_logpool_unlock(shm);

        cap = (p - all) + 4096;
        for ( ;; ) {
            merged.data = ngx_pnalloc(r->pool, cap);
            if (merged.data == NULL) {
                return NGX_HTTP_INTERNAL_SERVER_ERROR;
            }
            n = w->metrics_merge((const char *) all, p - all, (char *) merged.data, cap, 0);
            if (n < 0) {
                return NGX_HTTP_INTERNAL_SERVER_ERROR;
            }
            if ((size_t) n < cap) {
                merged.len = n;
                break;
            }
            cap = (size_t) n + 1;
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
