"""What every body format shares: the Encoder base class, Request/Response/Answer, option
checkers, record time and JSON helpers (the package doc says how formats plug in)."""
import datetime
from collections import namedtuple

from logpool.transports.schema import Option  # noqa: F401 — the formats' keys are Options

# rejected: ((index in the messages, reason), ...) of the messages left out of the body, each
# refused for good (the format cannot represent it); the body carries the others, in order.
Request = namedtuple("Request", "path headers body rejected", defaults=((),))
Response = namedtuple("Response", "status reason headers body")  # headers: lower-case keys

ACK, RETRY, REJECT = "ack", "retry", "reject"
TIME_FIELDS = ("@timestamp", "timestamp", "time", "ts")
RESPONSE_LIMIT = 64 * 1024  # bytes of a response body kept (the rest is discarded)


class Answer:
    """What a response means for the messages of a request.

    kind: "ok" (all acknowledged), "partial" (``rejected`` of them refused for good, the rest
    taken), "items" (``fates``: one (ACK | RETRY | REJECT, reason) per message), "reject" (all
    refused for good), "retry" (all, later; ``retry_after`` seconds or None), "keep" (the
    configuration is wrong, not the data: kept, logged once, retried on the schedule),
    "split" (too large: send half), "error" (an answer not understood: kept, retried)."""

    __slots__ = ("kind", "reason", "fates", "rejected", "retry_after", "backoff")

    def __init__(self, kind, reason="", fates=None, rejected=0, retry_after=None,
                 backoff=True):
        self.kind, self.reason, self.fates = kind, reason, fates
        self.rejected, self.retry_after = rejected, retry_after
        self.backoff = backoff  # "items": wait before sending the RETRY ones again

    def __repr__(self):
        return f"Answer({self.kind!r}, {self.reason!r}, rejected={self.rejected})"


# The formats' option checkers are the schema's (one vocabulary for every key), under the
# names the formats import them by.
from logpool.transports.schema import (  # noqa: E402,F401
    choice as choice_option, table as table_option, text as text_option, unicode_text)


def body_text(response, limit=200):
    return response.body[:limit].decode("utf-8", "replace").strip()


# -- reading a message (what needs no JSON library; logpool.transports.formats.codec has the
# rest, imported only by a sink that encodes: a pool without HTTP or forward sinks never loads
# msgspec) -------------------------------------------------------------------------------------

NOT_JSON = (ValueError, RecursionError, OverflowError)  # (msgspec's errors are ValueErrors)


def valid_utf8(line):
    """line (bytes) as valid UTF-8: itself, or with each invalid byte as U+FFFD."""
    try:
        line.decode()
        return line
    except UnicodeDecodeError:
        return line.decode("utf-8", "replace").encode()


def utf8_line(message):
    """The message's bytes without trailing newlines, as valid UTF-8."""
    line = bytes(message).rstrip(b"\n")
    return line if line.isascii() else valid_utf8(line)


def joined(head, separator, parts, tail):
    """head + separator.join(parts) + tail, with one large copy (not three: a large buffer is
    fresh pages from the kernel, as costly as the copy itself)."""
    if len(parts) == 1:
        return head + parts[0] + tail
    ends = parts[:]
    ends[0], ends[-1] = head + ends[0], ends[-1] + tail
    return separator.join(ends)


# -- record time ---------------------------------------------------------------------------------

MIN_NS, MAX_NS = 0, (2**32 - 1) * 10**9 + 999_999_999  # 1970-01-01 to 2106-02-07 06:28:15 UTC
EPOCH = datetime.datetime(1970, 1, 1, tzinfo=datetime.timezone.utc)
# Log lines repeat their second: a time's text -> ns or None (the same for any text, so shared
# by every sink's writer). Bounded: texts up to CACHED_KEY bytes, CACHED_TIMES of them.
_time_cache, _text_cache = {}, {}
CACHED_KEY, CACHED_TIMES = 64, 4096


def batch_time(now_ns):
    """The batch's time, within what every format can carry."""
    return min(max(now_ns, MIN_NS), MAX_NS)


def number_ns(value):
    """A number of seconds, milliseconds, microseconds or nanoseconds since the epoch (told
    apart by size) -> ns, or None when it is not a time every format can carry."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not (
            0 <= value < 1e20):  # also NaN
        return None
    if value < 1e11:  # seconds (e.g. $msec), to the microsecond (exact in a double)
        ns = round(value * 1e6) * 1000
    elif value < 1e14:  # milliseconds
        ns = round(value * 1e3) * 1000
    elif value < 1e17:  # microseconds
        ns = int(value * 1000) if isinstance(value, float) else value * 1000
    else:
        ns = int(value)
    return ns if MIN_NS <= ns <= MAX_NS else None


def text_ns(text):
    """An RFC 3339 / ISO 8601 time (no zone: UTC) -> ns, or None."""
    try:
        return _text_cache[text]
    except (KeyError, TypeError):
        pass
    if not isinstance(text, str) or len(text) > CACHED_KEY:  # (no RFC 3339 time is longer)
        return None
    try:
        when = datetime.datetime.fromisoformat(text.replace(" ", "T"))
    except (ValueError, OverflowError):
        ns = None
    else:
        if when.tzinfo is None:
            when = when.replace(tzinfo=datetime.timezone.utc)
        delta = when - EPOCH
        ns = (delta.days * 86400 + delta.seconds) * 10**9 + delta.microseconds * 1000
        if not MIN_NS <= ns <= MAX_NS:
            ns = None
    if len(_text_cache) > CACHED_TIMES:
        _text_cache.clear()
    _text_cache[text] = ns
    return ns


def value_ns(value):
    """A decoded time field's value -> ns, or None when it is not a time in range."""
    return text_ns(value) if isinstance(value, str) else number_ns(value)


def record_time_ns(doc, fallback_ns):
    """The time a record was logged, from its JSON fields (a dict; see the package doc): the
    first field holding a time in range, else fallback_ns."""
    if doc is not None:
        for key in TIME_FIELDS:
            ns = value_ns(doc.get(key))
            if ns is not None:
                return ns
    return fallback_ns


# -- per-record rejections -----------------------------------------------------------------------

class Rejections:
    """The messages an encoder leaves out of a request, each with its reason: encode()
    returns them in Request.rejected as ((index in messages, reason), ...), in order."""

    def __init__(self):
        self.items = []

    def add(self, index, reason):
        self.items.append((index, reason))

    def result(self):
        return tuple(self.items)


def standard_path(url_path, path):
    """The backend's standard path when the URL's path is "/" (a query is kept)."""
    base, sep, query = url_path.partition("?")
    return (path if base in ("", "/") else base) + (sep + query if sep else "")


def add_query(path, extra):
    """path with more query parameters (already encoded)."""
    return path + ("&" if "?" in path else "?") + extra


class Encoder:
    """The base of every format: defaults for the class attributes and helpers."""
    NAME = None
    CONTENT_TYPE = "application/json"
    STANDARD_PATH = None  # used when the URL's path is "/"
    OPTIONS = ()
    MAX_MESSAGES = None  # per request, when the backend has a limit
    JSON_NEEDED = False  # the backend wants JSON documents (non-JSON lines are wrapped)

    def __init__(self, options, url_path):
        self.options = options  # every format key, with defaults
        self.path = standard_path(url_path, self.STANDARD_PATH) if self.STANDARD_PATH else (
            url_path)

    def response_limit(self, count):
        return RESPONSE_LIMIT

    def interpret(self, response, count):
        return None


