"""What every body format shares: the Encoder base class, Request/Response/Answer, option
checkers, record time and JSON helpers (the package doc says how formats plug in)."""
import datetime
import json
from collections import namedtuple

from logpool.transports.schema import Option  # noqa: F401 — the formats' keys are Options

Request = namedtuple("Request", "path headers body")
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
    choice as choice_option, table as table_option, text as text_option)


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

    def interpret(self, response, count):
        return None


