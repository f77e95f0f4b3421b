"""otlp and otlp_json: OpenTelemetry logs over OTLP/HTTP (``POST /v1/logs``), protobuf
(``application/x-protobuf``, encoded with the official schema from opentelemetry-proto) or
JSON (``application/json``, OTLP's JSON mapping).

One ResourceLogs with ``otlp_resource_attributes`` (default ``{"service.name": "logpool"}``),
one ScopeLogs (scope "logpool"), one LogRecord per message: body = the line (a string; invalid
UTF-8 bytes as U+FFFD), time_unix_nano = the record time (see the package doc),
observed_time_unix_nano = when the batch was first encoded. A record whose time field is out
of range or not a time gets the batch's time; the body keeps the original value. The protobuf
body is written directly (the official schema's field numbers; the tests decode it with
opentelemetry-proto).

Answer, as the OTLP/HTTP specification has it: 2xx acknowledges, except
``partial_success.rejected_log_records`` (N > 0): N records refused for good with the
collector's ``error_message`` (OTLP does not say which: the last N of the request are
counted), the rest delivered; 429, 502, 503 and 504 are retried after backoff honouring
Retry-After; every other status (400, 401, 403, 404, 500, 501, 505, ...) is not retried as
is: the request is refused, narrowed down to the record the collector refuses (rejected
with the collector's answer once it is refused alone while other requests succeed; when
every part is refused alike nothing is rejected: held on the retry schedule). An answer
body that does not decode is an error (kept, sent again).
"""
import json
import struct

from logpool.transports.formats.common import (CACHED_TIMES, Encoder, Fate, Option, Outcome,
                                               ProtocolError, Refused, Request, RetryLater,
                                               batch_time, body_text, table_option)

SCOPE_NAME = "logpool"
RETRYABLE = (429, 502, 503, 504)  # OTLP/HTTP: the only statuses a client may retry
# Field keys (number << 3 | wire type) of the messages written by hand, from
# opentelemetry/proto/{collector/logs/v1/logs_service,logs/v1/logs,common/v1/common}.proto.
RESOURCE_LOGS = b"\x0a"  # ExportLogsServiceRequest.resource_logs = 1, length-delimited
RESOURCE = b"\x0a"  # ResourceLogs.resource = 1
SCOPE_LOGS = b"\x12"  # ResourceLogs.scope_logs = 2
SCOPE = b"\x0a"  # ScopeLogs.scope = 1
LOG_RECORD = b"\x12"  # ScopeLogs.log_records = 2
TIME = b"\x09"  # LogRecord.time_unix_nano = 1, fixed64
BODY = b"\x2a"  # LogRecord.body = 5, AnyValue
OBSERVED = b"\x59"  # LogRecord.observed_time_unix_nano = 11, fixed64
STRING = b"\x0a"  # AnyValue.string_value = 1 (valid UTF-8)


ONE_BYTE = [bytes((n,)) for n in range(0x80)]


def _time_field(ns):
    """LogRecord.time_unix_nano (left out at 0, proto3's default)."""
    return TIME + struct.pack("<Q", ns) if ns else b""


def _varint(n):
    if n < 0x80:
        return ONE_BYTE[n]
    if n < 0x4000:
        return bytes((n & 0x7F | 0x80, n >> 7))
    out = bytearray()
    while n >= 0x80:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def _status(response):
    """The OTLP/HTTP status rules; None for a 2xx (its body says the rest)."""
    if 200 <= response.status < 300:
        return None
    why = f"OTLP HTTP {response.status}: {body_text(response, 300)!r}"
    if response.status in RETRYABLE:
        raise RetryLater(why)
    raise Refused(why)


def _check_attributes(where, value):
    return table_option(r".+", "an object of attribute names to strings")(where, value)


OPTIONS = (
    Option("otlp_resource_attributes", "object", {"service.name": "logpool"},
           "resource attributes (name: string value) of every record", _check_attributes),
)


def _attributes(options):
    attributes = dict(options["otlp_resource_attributes"] or {})
    attributes.setdefault("service.name", "logpool")
    return attributes


class Otlp(Encoder):
    NAME = "otlp"
    CONTENT_TYPE = "application/x-protobuf"
    STANDARD_PATH = "/v1/logs"
    OPTIONS = OPTIONS
    NEEDS = ("opentelemetry.proto.collector.logs.v1.logs_service_pb2",
             "pip install opentelemetry-proto (or logpool[otlp])")

    def __init__(self, options, url_path):
        super().__init__(options, url_path)
        from opentelemetry.proto.collector.logs.v1 import logs_service_pb2
        from opentelemetry.proto.common.v1 import common_pb2
        from opentelemetry.proto.resource.v1 import resource_pb2
        self.pb = logs_service_pb2
        resource = resource_pb2.Resource(attributes=[
            common_pb2.KeyValue(key=k, value=common_pb2.AnyValue(string_value=v))
            for k, v in _attributes(options).items()]).SerializeToString(deterministic=True)
        scope = common_pb2.InstrumentationScope(name=SCOPE_NAME).SerializeToString(
            deterministic=True)
        self.resource = RESOURCE + _varint(len(resource)) + resource  # ResourceLogs.resource
        self.scope = SCOPE + _varint(len(scope)) + scope  # ScopeLogs.scope
        self.times = None  # codec.TimeText, made by the first encode (codec loads msgspec)
        self.frames = {}  # (line, time field, observed field sizes) -> _framing's

    def encode(self, messages, now_ns):
        # The wire format written directly (what protobuf's deterministic serialization makes:
        # fields in number order, a field at its default, 0, left out): one LogRecord per
        # message after the resource and scope, the body joined once.
        now = batch_time(now_ns)
        observed = OBSERVED + struct.pack("<Q", now) if now else b""
        fallback = _time_field(now)
        import logpool.transports.formats.codec as codec
        if self.times is None:
            self.times = codec.TimeText(_time_field)
        frames = self.frames
        parts = [RESOURCE_LOGS, None, self.resource, SCOPE_LOGS, None, self.scope]
        size = len(self.scope)  # of the ScopeLogs
        for line, when, _ in self.times.lines(messages, fallback):
            key = len(line), len(when), len(observed)
            framing = frames.get(key) or self._framing(*key)
            parts += (framing[0], when, framing[1], line, observed)
            size += framing[2]
        scope_size = _varint(size)
        parts[4] = scope_size
        parts[1] = _varint(len(self.resource) + 1 + len(scope_size) + size)
        return Request(self.path, {"Content-Type": self.CONTENT_TYPE}, b"".join(parts))

    def _framing(self, n, time_size, observed_size):
        """(the bytes before the record's time, those between it and the body's n bytes, the
        record's size in its ScopeLogs), memoized by the sizes (lines share their length)."""
        string = _varint(n)
        any_value = 1 + len(string) + n  # AnyValue{string_value}
        any_size = _varint(any_value)
        record = time_size + 1 + len(any_size) + any_value + observed_size
        record_size = _varint(record)
        if len(self.frames) > CACHED_TIMES:
            self.frames.clear()
        framing = self.frames[n, time_size, observed_size] = (LOG_RECORD + record_size,
                                               BODY + any_size + STRING + string,
                                               1 + len(record_size) + record)
        return framing

    def interpret(self, response, request, count):
        _status(response)
        if not response.body:
            return Outcome.acked(count)
        try:
            answer = self.pb.ExportLogsServiceResponse.FromString(response.body)
        except Exception as exc:  # noqa: BLE001 — protobuf's DecodeError and friends
            raise ProtocolError(f"an OTLP answer that does not decode ({exc}): "
                                f"{response.body[:80]!r}") from None
        rejected = answer.partial_success.rejected_log_records
        return _partial(rejected, answer.partial_success.error_message, count)


def _partial(rejected, message, count):
    if rejected <= 0:
        return Outcome.acked(count)
    rejected = min(int(rejected), count)
    why = f"OTLP partial success: {rejected} of {count} log records rejected: {message[:300]!r}"
    return Outcome.per_message([(Fate.ACK, None)] * (count - rejected)
                               + [(Fate.REJECT, why)] * rejected)


class OtlpJson(Encoder):
    NAME = "otlp_json"
    CONTENT_TYPE = "application/json"
    STANDARD_PATH = "/v1/logs"
    OPTIONS = ()  # shares otlp's keys

    def __init__(self, options, url_path):
        super().__init__(options, url_path)
        self.resource = {"attributes": [{"key": k, "value": {"stringValue": v}}
                                        for k, v in _attributes(options).items()]}
        self.times = None  # codec.TimeText, made by the first encode (codec loads msgspec)

    def encode(self, messages, now_ns):
        import logpool.transports.formats.codec as codec
        if self.times is None:
            self.times = codec.TimeText(str)
        observed = str(batch_time(now_ns))
        record, body = codec.OtlpJsonRecord, codec.OtlpJsonBody
        records = [record(ts, observed, body(line.decode()))
                   for line, ts, _ in self.times.lines(messages, observed)]
        request = {"resourceLogs": [{"resource": self.resource, "scopeLogs": [
            {"scope": {"name": SCOPE_NAME}, "logRecords": records}]}]}
        return Request(self.path, {"Content-Type": self.CONTENT_TYPE},
                       codec.encode_json(request))

    def interpret(self, response, request, count):
        _status(response)
        if not response.body.strip():
            return Outcome.acked(count)
        try:
            answer = json.loads(response.body)
            partial = answer.get("partialSuccess") or {}
            rejected = int(partial.get("rejectedLogRecords") or 0)
            message = str(partial.get("errorMessage") or "")
        except (ValueError, TypeError, AttributeError, RecursionError):
            raise ProtocolError(f"an OTLP/JSON answer not understood: "
                                f"{body_text(response)!r}") from None
        return _partial(rejected, message, count)
