"""Body formats of HTTP sinks (`http_format`), one module per backend, each plugging into one
seam: an Encoder built once per sink from its options, with

- ``encode(messages, now_ns) -> Request(path, headers, body)``: a pure function of the
  messages (bytes, in order) and of the fallback record time (the same arguments give the
  same bytes: a retried batch is byte-identical, which deduplicating backends rely on);
- ``interpret(response, request, count) -> Outcome``: what the collector's answer means for
  the messages of the request, in the contract's own terms (an Outcome, or RetryLater,
  Misconfigured, Refused, SendAgain, ProtocolError raised; ``None``: the generic HTTP rules
  of logpool.transports.http). Answers are translated once, here.

A new backend is one module here plus one line in FORMATS. Its keys are named
``<format>_<field>`` and declared as typed Options (name, type, default, one-line doc), from
which config checks, the Lua option list and the docs' key tables come.

Record time: backends with a timestamp per record get the time the line was logged when the
message is a JSON object carrying it (first of ``@timestamp``, ``timestamp``, ``time``,
``ts``: a number of seconds since the epoch, e.g. nginx's ``$msec``, or an RFC 3339 string,
e.g. ``$time_iso8601``); otherwise the time the batch was first encoded (kept for retries).
Nothing is captured on the hot path, so no sink pays for it.

Messages that are not JSON where a backend needs a JSON document are wrapped as
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
