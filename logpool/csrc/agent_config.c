/*
 * Agent mode: recognising a producer's config, {"agent": "<dir>", "ring_bytes": n}, in
 * plain C (logpool_new must know before it would start Python, and liblogpool_producer.so has
 * no Python at all). Any other JSON object is skipped over, not judged: the in-process
 * parser says what is wrong with it.
 */
#include "core.h" /* first: it defines _GNU_SOURCE */
#include "producer.h"
#include "ring.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* -- the config: {"agent": "<dir>", "ring_bytes": n} -- */

typedef struct json_s {
    const char *p;
    int depth;
} json_t;

static void json_ws(json_t *j)
{
    while (*j->p == ' ' || *j->p == '\t' || *j->p == '\n' || *j->p == '\r')
        j->p++;
}

/* A JSON string at j->p (after ws); decoded into out (NULL: skipped). 0 or -1. */
static int json_string(json_t *j, char *out, size_t cap)
{
    size_t n = 0;
    if (*j->p != '"')
        return -1;
    j->p++;
    for (;;) {
        unsigned char c = (unsigned char)*j->p++;
        unsigned code = c;
        if (c == '\0' || c < 0x20)
            return -1;
        if (c == '"')
            break;
        if (c == '\\') {
            char e = *j->p++;
            switch (e) {
            case '"': case '\\': case '/': code = (unsigned char)e; break;
            case 'b': code = '\b'; break;
            case 'f': code = '\f'; break;
            case 'n': code = '\n'; break;
            case 'r': code = '\r'; break;
            case 't': code = '\t'; break;
            case 'u':
                code = 0;
                for (int i = 0; i < 4; i++) {
                    char h = *j->p++;
                    code <<= 4;
                    if (h >= '0' && h <= '9') code |= (unsigned)(h - '0');
                    else if (h >= 'a' && h <= 'f') code |= (unsigned)(h - 'a' + 10);
                    else if (h >= 'A' && h <= 'F') code |= (unsigned)(h - 'A' + 10);
                    else return -1;
                }
                if (code == 0 || (code >= 0xd800 && code <= 0xdfff))
                    return -1; /* a path holds no NUL; surrogate pairs: not in a path here */
                break;
            default:
                return -1;
            }
        }
        if (out == NULL)
            continue;
        char utf8[3];
        size_t k;
        if (c == '\\' && code >= 0x80) {
            if (code < 0x800) {
                utf8[0] = (char)(0xc0 | (code >> 6));
                utf8[1] = (char)(0x80 | (code & 0x3f));
                k = 2;
            } else {
                utf8[0] = (char)(0xe0 | (code >> 12));
                utf8[1] = (char)(0x80 | ((code >> 6) & 0x3f));
                utf8[2] = (char)(0x80 | (code & 0x3f));
                k = 3;
            }
        } else {
            utf8[0] = (char)code;
            k = 1;
        }
        if (n + k >= cap)
            return -1;
        memcpy(out + n, utf8, k);
        n += k;
    }
    if (out != NULL)
        out[n] = '\0';
    return 0;
}

static int json_skip(json_t *j);

static int json_skip_container(json_t *j, char close, int keyed)
{
    if (++j->depth > 64)
        return -1;
    j->p++;
    json_ws(j);
    if (*j->p == close) {
        j->p++;
        j->depth--;
        return 0;
    }
    for (;;) {
        json_ws(j);
        if (keyed) {
            if (json_string(j, NULL, 0) != 0)
                return -1;
            json_ws(j);
            if (*j->p++ != ':')
                return -1;
        }
        if (json_skip(j) != 0)
            return -1;
        json_ws(j);
        if (*j->p == ',') {
            j->p++;
            continue;
        }
        if (*j->p++ != close)
            return -1;
        j->depth--;
        return 0;
    }
}

/* Skips any JSON value (validating it loosely: numbers and literals by their characters). */
static int json_skip(json_t *j)
{
    json_ws(j);
    char c = *j->p;
    if (c == '"')
        return json_string(j, NULL, 0);
    if (c == '{')
        return json_skip_container(j, '}', 1);
    if (c == '[')
        return json_skip_container(j, ']', 0);
    const char *start = j->p;
    while (*j->p && strchr("-+.0123456789eEtruefalsn", *j->p) != NULL)
        j->p++;
    return j->p > start ? 0 : -1;
}

int logpool__agent_config(const char *config_json, char *dir, size_t dirlen,
                          uint64_t *ring_bytes, char *err, size_t errlen)
{
    json_t j = {config_json, 0};
    int have_agent = 0, have_ring = 0;
    char other[64] = "";
    char key[64];
    *ring_bytes = RING_DEFAULT_BYTES;
    json_ws(&j);
    if (*j.p != '{')
        return 0; /* not an object: the in-process parser says what is wrong */
    j.p++;
    json_ws(&j);
    while (*j.p != '}') {
        const char *key_at = j.p;
        if (json_string(&j, key, sizeof key) != 0) {
            j.p = key_at; /* a key too long for us: not "agent"; skip it */
            if (json_string(&j, NULL, 0) != 0)
                return 0;
            snprintf(key, sizeof key, "(a long key)");
        }
        json_ws(&j);
        if (*j.p++ != ':')
            return 0;
        json_ws(&j);
        if (strcmp(key, "agent") == 0) {
            if (json_string(&j, dir, dirlen) != 0 || dir[0] == '\0') {
                snprintf(err, errlen, "invalid configuration: agent: must be the agent's "
                                      "agent_dir, a non-empty string (at most %zu bytes)",
                         dirlen - 1);
                return LOGPOOL_ECONFIG;
            }
            have_agent = 1;
        } else if (strcmp(key, "ring_bytes") == 0) {
            char *end;
            errno = 0;
            unsigned long long v = strtoull(j.p, &end, 10);
            if (end == j.p || *j.p == '-' || errno != 0 || v < RING_MIN_BYTES ||
                v > RING_MAX_BYTES || (v & (v - 1)) != 0 || strchr(".eE", *end) != NULL) {
                snprintf(err, errlen, "invalid configuration: ring_bytes: must be a power of "
                                      "two from %u to %llu", RING_MIN_BYTES,
                         (unsigned long long)RING_MAX_BYTES);
                return LOGPOOL_ECONFIG;
            }
            j.p = end;
            *ring_bytes = v;
            have_ring = 1;
        } else {
            if (other[0] == '\0')
                snprintf(other, sizeof other, "%s", key);
            if (json_skip(&j) != 0)
                return 0;
        }
        json_ws(&j);
        if (*j.p == ',') {
            j.p++;
            json_ws(&j);
        } else if (*j.p != '}') {
            return 0;
        }
    }
    if (!have_agent) {
        if (have_ring) {
            snprintf(err, errlen, "invalid configuration: ring_bytes: only with \"agent\"");
            return LOGPOOL_ECONFIG;
        }
        return 0;
    }
    if (other[0] != '\0') {
        snprintf(err, errlen, "invalid configuration: %s: unknown key in agent mode (known: "
                              "agent, ring_bytes; sinks and their options are the agent's)",
                 other);
        return LOGPOOL_ECONFIG;
    }
    return 1;
}
