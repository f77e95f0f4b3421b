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

Answer: 2xx acknowledges, except ``partial_success.rejected_log_records`` (N > 0): N refused
for good, with the collector's error_message; an answer body that does not decode is an error
(kept, retried).
"""
import json
import struct

from logpool.transports.formats.common import (Answer, Encoder, Option, Request, batch_time,
                                               body_text, encode_json, fields_time_ns,
                                               parse_line, table_option)

SCOPE_NAME = "logpool"
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


def _varint(n):
    if n < 0x80:
        return bytes((n,))
    out = bytearray()
    while n >= 0x80:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


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
        scope = common_pb2.InstrumentationScope(name=SCOPE_NAME).SerializeToString(deterministic=True)
        self.resource = RESOURCE + _varint(len(resource)) + resource  # ResourceLogs.resource
        self.scope = SCOPE + _varint(len(scope)) + scope  # ScopeLogs.scope

    def encode(self, messages, now_ns):
        # The wire format written directly (what protobuf's deterministic serialization makes,
        # fields in number order): one LogRecord per message after the resource and scope.
        # (proto3 leaves a field at its default, 0, out)
        observed = OBSERVED + struct.pack("<Q", batch_time(now_ns)) if batch_time(now_ns) else b""
        fallback = TIME + struct.pack("<Q", batch_time(now_ns)) if batch_time(now_ns) else b""
        pack = struct.pack
        records = [self.scope]
        for m in messages:
            line, fields = parse_line(m)
            ns = fields_time_ns(fields, None)
            size = len(line)
            body = STRING + _varint(size) + line
            record = (fallback if ns is None else TIME + pack("<Q", ns) if ns else b"") + BODY + _varint(
                len(body)) + body + observed
            records.append(LOG_RECORD + _varint(len(record)) + record)
        scope_logs = b"".join(records)
        resource_logs = self.resource + SCOPE_LOGS + _varint(len(scope_logs)) + scope_logs
        body = RESOURCE_LOGS + _varint(len(resource_logs)) + resource_logs
        return Request(self.path, {"Content-Type": self.CONTENT_TYPE}, body)

    def interpret(self, response, count):
        if not 200 <= response.status < 300:
            return None
        if not response.body:
            return Answer("ok")
        try:
            answer = self.pb.ExportLogsServiceResponse.FromString(response.body)
        except Exception as exc:  # noqa: BLE001 — protobuf's DecodeError and friends
            return Answer("error", f"an OTLP answer that does not decode ({exc}): "
                          f"{response.body[:80]!r}")
        rejected = answer.partial_success.rejected_log_records
        return _partial(rejected, answer.partial_success.error_message, count)


def _partial(rejected, message, count):
    if rejected <= 0:
        return Answer("ok")
    rejected = min(int(rejected), count)
    return Answer("partial", f"OTLP partial success: {rejected} of {count} log records rejected: "
                  f"{message[:300]!r}", rejected=rejected)


class OtlpJson(Encoder):
    NAME = "otlp_json"
    CONTENT_TYPE = "application/json"
    STANDARD_PATH = "/v1/logs"
    OPTIONS = ()  # shares otlp's keys

    def __init__(self, options, url_path):
        super().__init__(options, url_path)
        self.resource = {"attributes": [{"key": k, "value": {"stringValue": v}}
                                        for k, v in _attributes(options).items()]}

    def encode(self, messages, now_ns):
        observed = str(batch_time(now_ns))
        records = []
        for m in messages:
            line, fields = parse_line(m)
            ns = fields_time_ns(fields, None)
            records.append({"timeUnixNano": observed if ns is None else str(ns),
                            "observedTimeUnixNano": observed,
                            "body": {"stringValue": line.decode()}})
        request = {"resourceLogs": [{"resource": self.resource, "scopeLogs": [
            {"scope": {"name": SCOPE_NAME}, "logRecords": records}]}]}
        return Request(self.path, {"Content-Type": self.CONTENT_TYPE}, encode_json(request))

    def interpret(self, response, count):
        if not 200 <= response.status < 300:
            return None
        if not response.body.strip():
            return Answer("ok")
        try:
            answer = json.loads(response.body)
            partial = answer.get("partialSuccess") or {}
            rejected = int(partial.get("rejectedLogRecords") or 0)
            message = str(partial.get("errorMessage") or "")
        except (ValueError, TypeError, AttributeError):
            return Answer("error", f"an OTLP/JSON answer not understood: "
                          f"{body_text(response)!r}")
        return _partial(rejected, message, count)
