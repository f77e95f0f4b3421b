"""Body formats of HTTP sinks (`http_format`), one module per backend, each plugging into one
seam: an Encoder built once per sink from its options, with

- ``encode(messages, now_ns) -> Request(path, headers, body, rejected)``: a function of the
  messages (buffers, in order) and of the fallback record time; the transport freezes a
  request once sent, so a retried batch is byte-identical, which deduplicating backends rely
  on. It never raises: a value the format cannot represent has a documented fallback, and a
  message it cannot carry at all is left out of the body and named in ``rejected``
  (``((index in messages, reason), ...)``, ascending; the HTTP transport makes each a
  rejection at its place among the answer's fates);
- ``interpret(response, request, count) -> Outcome``: what the collector's answer means for
  the messages of the request, in the contract's own terms (an Outcome, or RetryLater,
  Misconfigured, Refused, SendAgain, ProtocolError raised; ``None``: the generic HTTP rules
  of logpool.transports.http). Answers are translated once, here.

A new backend is one module here plus one line in FORMATS. Its keys are named
``<format>_<field>`` and declared as typed Options (name, type, default, one-line doc), from
which config checks, the Lua option list and the docs' key tables come.

Record time: backends with a timestamp per record get the time the line was logged when the
message is a JSON object carrying it (the first of ``@timestamp``, ``timestamp``, ``time``,
``ts`` holding a time from 1970 to 2106-02-07: a number of seconds since the epoch, e.g.
nginx's ``$msec``, milli-, micro- or nanoseconds told apart by size, or an RFC 3339 string,
e.g. ``$time_iso8601``); otherwise the time the batch was first encoded (kept for retries),
the original value staying in the record. Nothing is captured on the hot path, so no sink
pays for it.

A line is read once (common.parse_line's steps): valid UTF-8 (an invalid byte becomes
U+FFFD), checked as strict JSON by msgspec, and only the fields the format needs decoded.
Messages that are not a JSON object where a backend needs a JSON document are wrapped as
``{"message": "<the line>"}`` (never rejected: the line reaches the backend).
"""
from logpool.transports.formats.clickhouse import ClickHouse
from logpool.transports.formats.common import (  # noqa: F401 — re-exported
    Encoder, Misconfigured, Option, Refused, Request, Response, SendAgain, body_text)
from logpool.transports.formats.datadog import Datadog
from logpool.transports.formats.elasticsearch import Elasticsearch
from logpool.transports.formats.lines import JsonArray, Ndjson
from logpool.transports.formats.loki import Loki
from logpool.transports.formats.otlp import Otlp, OtlpJson
from logpool.transports.formats.splunk_hec import SplunkHec

# http_format value -> Encoder class: a new backend is one module and one entry here.
FORMATS = {cls.NAME: cls for cls in (Ndjson, JsonArray, Elasticsearch, Loki, Otlp, OtlpJson,
                                     SplunkHec, ClickHouse, Datadog)}


def all_options():
    """Every format key: Option."""
    return {opt.name: opt for cls in FORMATS.values() for opt in cls.OPTIONS}


def owner(key):
    """The format a key belongs to."""
    for cls in FORMATS.values():
        if any(opt.name == key for opt in cls.OPTIONS):
            return cls.NAME
    return None
