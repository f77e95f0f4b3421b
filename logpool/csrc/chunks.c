/*
 * Chunk allocation: new chunks, their recycling onto the sink's free list (kept up to
 * free_keep: the pre-faulted reserve, or what the last burst used), the writer's refill of
 * that reserve and the once-a-second decay of what a burst left. The hot path (hotpath.c),
 * the writer's end of the chain (chain.c) and the spool (spool.c) all allocate here.
 */
#include "core.h" /* first: it defines _GNU_SOURCE */

#include <stdlib.h>

chunk_t *logpool__chunk_new(size_t cap)
{
    chunk_t *c = malloc(sizeof *c + cap);
    if (c == NULL)
        return NULL;
    c->next = NULL;
    c->cap = cap;
    c->used = 0;
    c->room_charged = 0;
    c->nmsgs = 0;
    c->replay = 0;
    c->out = 0;
    return c;
}

static void chunk_free(chunk_t *c)
{
    free(c);
}

void logpool__chain_free(chunk_t *c)
{
    while (c != NULL) {
        chunk_t *next = c->next;
        chunk_free(c);
        c = next;
    }
}

/* Under sink->lock, for a chunk the writer is done with: uncharge it. Standard-size chunks
 * are kept up to free_keep (the reserve, or what the last burst used); oversized ones are
 * freed. */
void logpool__chunk_recycle_locked(logpool__sink_t *s, chunk_t *c)
{
    if (c->replay) { /* never charged to memory; replay_inflight is settled as it is sent */
        c->replay = 0;
    } else {
        s->memory -= c->used + END_SLOT * c->nmsgs + c->room_charged;
    }
    if (c->out) {
        c->out = 0;
        s->chunks_out--;
    }
    if (c->cap == s->chunk_size && s->free_count < s->free_keep) {
        c->used = 0;
        c->room_charged = 0;
        c->nmsgs = 0;
        c->next = s->free_chunks;
        s->free_chunks = c;
        s->free_count++;
    } else {
        chunk_free(c);
    }
}

/* Writer side, under sink->lock, every FREE_CACHE_DECAY_MS: free_keep follows the most chunks
 * out at once in the last step plus the reserve, or half its value, never below the
 * reserve; above the cap only while bursts in the last step used more. The free chunks
 * beyond it are moved onto *drop, for the caller to free without the lock. */
void logpool__cache_decay_locked(logpool__sink_t *s, uint64_t now, chunk_t **drop)
{
    if (s->decay_at_ns == 0)
        s->decay_at_ns = now + FREE_CACHE_DECAY_MS * 1000000ull;
    if (now < s->decay_at_ns)
        return;
    s->decay_at_ns = now + FREE_CACHE_DECAY_MS * 1000000ull;
    int want = s->chunks_out_peak + FREE_CHUNKS_KEPT; /* the last step's use + the reserve */
    int keep = s->free_keep / 2;
    if (keep < want)
        keep = want;
    if (keep > s->free_keep_max && want <= s->free_keep_max)
        keep = s->free_keep_max; /* no burst beyond the cap in the last step */
    if (keep < FREE_CHUNKS_KEPT)
        keep = FREE_CHUNKS_KEPT;
    s->free_keep = keep;
    s->chunks_out_peak = s->chunks_out;
    while (s->free_count > keep) {
        chunk_t *c = s->free_chunks;
        s->free_chunks = c->next;
        s->free_count--;
        c->next = *drop;
        *drop = c;
    }
}

/* Writer side, without the lock held: top the free list up to FREE_CHUNKS_KEPT chunks whose
 * pages are touched here, so that the producer's first write to them does not fault. */
void logpool__sink_refill(logpool__sink_t *s)
{
    for (;;) {
        pthread_mutex_lock(&s->lock);
        int enough = s->free_count >= FREE_CHUNKS_KEPT || s->stop;
        s->refill_wanted = 0;
        pthread_mutex_unlock(&s->lock);
        if (enough)
            return;
        chunk_t *c = logpool__chunk_new(s->chunk_size);
        if (c == NULL)
            return;
        for (size_t i = 0; i < c->cap; i += 4096)
            ((volatile char *)c->data)[i] = 0;
        ((volatile char *)c->data)[c->cap - 1] = 0;
        pthread_mutex_lock(&s->lock);
        c->next = s->free_chunks;
        s->free_chunks = c;
        s->free_count++;
        pthread_mutex_unlock(&s->lock);
    }
}
