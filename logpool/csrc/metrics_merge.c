/* logpool_metrics_merge: several Prometheus texts (one per process) summed into one, the
 * single implementation behind the nginx module's logpool_metrics location and the Lua
 * module's serve_metrics. Plain C: no GIL, callable from any thread or process. */
#include "core.h" /* first: it defines _GNU_SOURCE */

#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct {
    const char *key; /* series (name and labels), or a whole # line */
    size_t len;
    double value;
    int meta;
    int next; /* hash chain */
} series_t;

typedef struct {
    series_t *s;
    int *buckets;
    size_t n, nbuckets;
} table_t;

static uint64_t hash(const char *p, size_t len)
{
    uint64_t h = 1469598103934665603ull; /* FNV-1a */
    while (len--)
        h = (h ^ (unsigned char)*p++) * 1099511628211ull;
    return h;
}

static int table_init(table_t *t, size_t nlines)
{
    t->nbuckets = 16;
    while (t->nbuckets < nlines * 2)
        t->nbuckets <<= 1;
    t->n = 0;
    t->s = malloc(nlines * sizeof *t->s);
    t->buckets = malloc(t->nbuckets * sizeof *t->buckets);
    if (t->s == NULL || t->buckets == NULL)
        return -1;
    memset(t->buckets, 0xff, t->nbuckets * sizeof *t->buckets); /* all -1 */
    return 0;
}

static void table_free(table_t *t)
{
    free(t->s);
    free(t->buckets);
}

/* The entry for key, added (with value v) when new; *added says which. */
static series_t *table_get(table_t *t, const char *key, size_t len, double v, int meta, int *added)
{
    size_t h = (size_t)hash(key, len) & (t->nbuckets - 1);
    for (int i = t->buckets[h]; i >= 0; i = t->s[i].next) {
        if (t->s[i].len == len && memcmp(t->s[i].key, key, len) == 0) {
            *added = 0;
            return &t->s[i];
        }
    }
    series_t *e = &t->s[t->n];
    e->key = key;
    e->len = len;
    e->value = v;
    e->meta = meta;
    e->next = t->buckets[h];
    t->buckets[h] = (int)t->n++;
    *added = 1;
    return e;
}

static size_t name_len(const char *p, const char *end)
{
    const char *q = p;
    while (q < end && *q != '{' && *q != ' ' && *q != '\t')
        q++;
    return (size_t)(q - p);
}

/* "# HELP name ..." / "# TYPE name type": the family's name, or len 0. */
static size_t meta_family(const char *line, const char *eol, const char **family)
{
    if (eol - line < 7 || (memcmp(line, "# HELP ", 7) != 0 && memcmp(line, "# TYPE ", 7) != 0))
        return 0;
    *family = line + 7;
    return name_len(line + 7, eol);
}

/* Whether a family keeps growing (counter, histogram): what remains true of a process that
 * exited. types holds "# TYPE" lines' families, value 1 for those. */
static int family_counts(table_t *types, const char *name, size_t len)
{
    static const char *suffixes[] = {"_bucket", "_sum", "_count"};
    for (int i = -1; i < 3; i++) {
        size_t flen = len;
        if (i >= 0) {
            size_t sl = strlen(suffixes[i]);
            if (len <= sl || memcmp(name + len - sl, suffixes[i], sl) != 0)
                continue;
            flen = len - sl;
        }
        size_t h = (size_t)hash(name, flen) & (types->nbuckets - 1);
        for (int k = types->buckets[h]; k >= 0; k = types->s[k].next) {
            if (types->s[k].len == flen && memcmp(types->s[k].key, name, flen) == 0)
                return types->s[k].value != 0;
        }
    }
    return 0;
}

LOGPOOL_API int logpool_metrics_merge(const char *texts, size_t len, char *out, size_t cap,
                                      int flags)
{
    if ((texts == NULL && len > 0) || (out == NULL && cap > 0) || len > INT32_MAX / 2 ||
        (flags & ~LOGPOOL_METRICS_COUNTERS_ONLY) != 0)
        return LOGPOOL_EINVAL;

    const char *end = texts + len, *line, *eol;
    size_t nlines = 1;
    for (const char *p = texts; p < end; p++)
        nlines += *p == '\n';

    table_t t, types;
    int rc = LOGPOOL_ERUNTIME, added;
    char *text = NULL;
    memset(&types, 0, sizeof types);
    if (table_init(&t, nlines) != 0 || table_init(&types, nlines) != 0)
        goto done;

    int counters_only = (flags & LOGPOOL_METRICS_COUNTERS_ONLY) != 0;
    if (counters_only) {
        for (line = texts; line < end; line = eol + 1) {
            eol = memchr(line, '\n', (size_t)(end - line));
            eol = eol ? eol : end;
            const char *family;
            size_t flen = meta_family(line, eol, &family);
            if (flen == 0 || line[2] != 'T')
                continue;
            const char *type = family + flen + 1;
            int counts = type < eol && ((eol - type == 7 && memcmp(type, "counter", 7) == 0) ||
                                        (eol - type == 9 && memcmp(type, "histogram", 9) == 0));
            series_t *e = table_get(&types, family, flen, counts, 1, &added);
            e->value = e->value || counts;
        }
    }

    size_t outlen = 0;
    for (line = texts; line < end; line = eol + 1) {
        eol = memchr(line, '\n', (size_t)(end - line));
        eol = eol ? eol : end;
        if (eol == line)
            continue;
        if (line[0] == '#') {
            const char *family;
            size_t flen = meta_family(line, eol, &family);
            if (counters_only && (flen == 0 || !family_counts(&types, family, flen)))
                continue;
            table_get(&t, line, (size_t)(eol - line), 0, 1, &added);
            if (added)
                outlen += (size_t)(eol - line) + 1;
            continue;
        }
        const char *sp = eol, *key_end;
        while (sp > line && sp[-1] != ' ' && sp[-1] != '\t')
            sp--;
        key_end = sp;
        while (key_end > line && (key_end[-1] == ' ' || key_end[-1] == '\t'))
            key_end--;
        char num[64];
        if (key_end == line || eol == sp || (size_t)(eol - sp) >= sizeof num)
            continue;
        memcpy(num, sp, (size_t)(eol - sp));
        num[eol - sp] = '\0';
        char *after;
        double v = strtod(num, &after);
        if (after == num || *after != '\0')
            continue;
        if (counters_only && !family_counts(&types, line, name_len(line, key_end)))
            continue;
        series_t *e = table_get(&t, line, (size_t)(key_end - line), v, 0, &added);
        if (added)
            outlen += (size_t)(key_end - line) + 1 + 32 + 1;
        else
            e->value += v;
    }

    text = malloc(outlen + 1);
    if (text == NULL)
        goto done;
    char *o = text;
    for (size_t i = 0; i < t.n; i++) {
        memcpy(o, t.s[i].key, t.s[i].len);
        o += t.s[i].len;
        if (!t.s[i].meta) {
            double v = t.s[i].value;
            if (v == floor(v) && fabs(v) < 9007199254740992.0)
                o += snprintf(o, 34, " %.0f", v);
            else
                o += snprintf(o, 34, " %.17g", v);
        }
        *o++ = '\n';
    }
    size_t n = (size_t)(o - text);
    if (cap > 0) {
        size_t copy = n < cap - 1 ? n : cap - 1;
        memcpy(out, text, copy);
        out[copy] = '\0';
    }
    rc = (int)n;

done:
    free(text);
    table_free(&t);
    table_free(&types);
    return rc;
}
