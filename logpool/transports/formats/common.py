"""What every body format shares: the Encoder base class, Request/Response, the answer vocabulary, option
checkers, record time and JSON helpers (the package doc says how formats plug in)."""
import datetime
import errno
import json
from collections import namedtuple

from logpool.transports.contract import (  # noqa: F401 — the answer readers' vocabulary
    Fate, Outcome, ProtocolError, RetryLater)
from logpool.transports.schema import Option  # noqa: F401 — the formats' keys are Options

Request = namedtuple("Request", "path headers body")
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


def _fail(where, what, value):
    from logpool.errors import ConfigError
    raise ConfigError(f"{where}: must be {what}, got {value!r}")


def text_option(pattern=None, what="a string", allow_none=False):
    """A checker for a string key (fullmatching pattern, if given)."""
    import re

    def check(where, value):
        if value is None and allow_none:
            return None
        if not isinstance(value, str) or not value or (
                pattern is not None and re.fullmatch(pattern, value) is None):
            _fail(where, what, value)
        return value
    return check


def choice_option(*choices):
    def check(where, value):
        if value not in choices:
            _fail(where, " or ".join(map(repr, choices)), value)
        return value
    return check


def table_option(key_pattern, what):
    """A checker for an object of strings to strings (names fullmatching key_pattern)."""
    import re

    def check(where, value):
        if not isinstance(value, dict) or not all(
                isinstance(k, str) and re.fullmatch(key_pattern, k) and isinstance(v, str)
                for k, v in value.items()):
            _fail(where, what, value)
        return dict(value)
    return check


def body_text(response, limit=200):
    return response.body[:limit].decode("utf-8", "replace").strip()


def as_object(message):
    """(dict or None, text): the message as a JSON object if it is one, and as text."""
    text = bytes(message).rstrip(b"\n").decode("utf-8", "replace")
    if text[:1] == "{":
        try:
            doc = json.loads(text)
        except ValueError:
            return None, text
        if isinstance(doc, dict):
            return doc, text
    return None, text


def document(message):
    """The message as a JSON object: itself, or {"message": text} (wrapped)."""
    doc, text = as_object(message)
    return doc if doc is not None else {"message": text}


def compact(doc):
    return json.dumps(doc, separators=(",", ":"), ensure_ascii=False)


def record_time_ns(doc, fallback_ns):
    """The time a record was logged, from its JSON fields (see the module doc)."""
    if doc is not None:
        for key in TIME_FIELDS:
            value = doc.get(key)
            if value is None:
                continue
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                if value > 1e14:  # already nanoseconds (or micro): take ns as given
                    return int(value) if value > 1e17 else int(value * 1000)
                # seconds (e.g. $msec) or milliseconds, to the microsecond (exact in a double)
                return round(value * 1e6) * 1000 if value < 1e11 else round(value * 1e3) * 1000
            if isinstance(value, str):
                try:
                    when = datetime.datetime.fromisoformat(value.replace(" ", "T"))
                except ValueError:
                    continue
                if when.tzinfo is None:
                    when = when.replace(tzinfo=datetime.timezone.utc)
                delta = when - datetime.datetime(1970, 1, 1, tzinfo=datetime.timezone.utc)
                return (delta.days * 86400 + delta.seconds) * 10**9 + delta.microseconds * 1000
    return fallback_ns


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


