"""What every body format shares: the Encoder base class, Request/Response, the answer vocabulary, option
checkers, record time and JSON helpers (the package doc says how formats plug in)."""
import datetime
import errno
from collections import namedtuple

from logpool.transports.contract import (  # noqa: F401 — the answer readers' vocabulary
    Fate, Outcome, ProtocolError, RetryLater)
from logpool.transports.schema import Option  # noqa: F401 — the formats' keys are Options

# rejected: ((index in the messages, reason), ...) of the messages left out of the body, each
# refused for good (the format cannot represent it); the body carries the others, in order.
Request = namedtuple("Request", "path headers body rejected", defaults=((),))
Response = namedtuple("Response", "status reason headers body")  # headers: lower-case keys

TIME_FIELDS = ("@timestamp", "timestamp", "time", "ts")
RESPONSE_LIMIT = 64 * 1024  # bytes of a response body kept (the rest is discarded)

# What an answer reader (Encoder.interpret) gives back, in the contract's own terms
# (logpool/transports/contract.py): an Outcome for the messages of the request (acked,
# rejected, or one fate per message), or one of these raised. The HTTP transport adds only
# what is HTTP's own: 413 halving, Retry-After, and narrowing a Refused request down.
#   RetryLater(text)     the collector said "later": the same request again after backoff
#   Misconfigured(text)  the configuration is wrong, not the data: kept, logged once, sent
#                        again on the retry schedule
#   Refused(text, item)  refused for its data without saying which record (item None) or
#                        naming the record by its position: narrowed to the record
#   SendAgain(text)      the format changed what it sends: the same messages again at once
#   Unconfirmed(token)   received, not yet stored for good: released once the format's
#                        confirm_request(token) is answered so (Splunk HEC's indexer ack)
#   ProtocolError(text)  an answer not understood: kept, sent again on a new connection


class Misconfigured(OSError):
    """The answer says the configuration is wrong (a URL, a credential, a table): the data
    is kept, logged once, and sent again on the retry schedule."""

    def __init__(self, text):
        super().__init__(errno.EREMOTEIO, text)


class Refused(Exception):
    """The collector refused the request for its data and named no record (item None), or
    named it by its 0-based position in the request (item)."""

    def __init__(self, reason, item=None):
        super().__init__(reason)
        self.reason, self.item = reason, item


class Unconfirmed(Exception):
    """Received, not yet confirmed: the transport polls confirm_request(token) until
    confirmed(response, token) says so, for at most confirm_timeout_s."""

    def __init__(self, token):
        super().__init__(token)
        self.token = token


class SendAgain(Exception):
    """Send the same messages again at once: the format changed what it sends (e.g. a
    setting the server does not know was dropped)."""


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

    def interpret(self, response, request, count):
        """The answer to `request` (carrying `count` messages): an Outcome, or None for
        the generic HTTP rules (logpool/transports/http.py), or raises (see above)."""
        return None

    confirm_timeout_s = 30.0
    url = None  # the collector the requests go to now (set by the transport)

    def confirm_request(self, token):
        raise NotImplementedError

    def confirmed(self, response, token):
        raise NotImplementedError

    def describe(self, response):
        """The answer in words, for the generic rules' reasons."""
        return f"HTTP {response.status} {response.reason[:60]!r}: {body_text(response)!r}"

    def finish(self, request):
        """The request as it goes out now (a format may leave out what the server was found
        not to know); a frozen request's body never changes."""
        return request

    def probe(self):
        """A request to send once per session before the first batch (to learn the server's
        version), or None."""
        return None

    def learn(self, url, response):
        """The probe's answer from the collector at url."""


