"""otlp and otlp_json: OpenTelemetry logs over OTLP/HTTP (``POST /v1/logs``), protobuf
(``application/x-protobuf``, encoded with the official schema from opentelemetry-proto) or
JSON (``application/json``, OTLP's JSON mapping).

One ResourceLogs with ``otlp_resource_attributes`` (default ``{"service.name": "logpool"}``),
one ScopeLogs (scope "logpool"), one LogRecord per message: body = the line (a string),
time_unix_nano = the record time (see the package doc), observed_time_unix_nano = when the
batch was first encoded.

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

from logpool.transports.formats.common import (Encoder, Fate, Option, Outcome, ProtocolError,
                                               Refused, Request, RetryLater, as_object,
                                               body_text, record_time_ns, table_option)

SCOPE = "logpool"
RETRYABLE = (429, 502, 503, 504)  # OTLP/HTTP: the only statuses a client may retry


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
        self.resource = resource_pb2.Resource(attributes=[
            common_pb2.KeyValue(key=k, value=common_pb2.AnyValue(string_value=v))
            for k, v in _attributes(options).items()])
        self.scope = common_pb2.InstrumentationScope(name=SCOPE)

    def encode(self, messages, now_ns):
        request = self.pb.ExportLogsServiceRequest()
        rl = request.resource_logs.add()
        rl.resource.CopyFrom(self.resource)
        sl = rl.scope_logs.add()
        sl.scope.CopyFrom(self.scope)
        for m in messages:
            doc, text = as_object(m)
            record = sl.log_records.add()
            record.time_unix_nano = record_time_ns(doc, now_ns)
            record.observed_time_unix_nano = now_ns
            record.body.string_value = text
        return Request(self.path, {"Content-Type": self.CONTENT_TYPE},
                       request.SerializeToString(deterministic=True))

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

    def encode(self, messages, now_ns):
        records = []
        for m in messages:
            doc, text = as_object(m)
            records.append({"timeUnixNano": str(record_time_ns(doc, now_ns)),
                            "observedTimeUnixNano": str(now_ns),
                            "body": {"stringValue": text}})
        request = {"resourceLogs": [{"resource": self.resource, "scopeLogs": [
            {"scope": {"name": SCOPE}, "logRecords": records}]}]}
        body = json.dumps(request, separators=(",", ":"), ensure_ascii=False).encode()
        return Request(self.path, {"Content-Type": self.CONTENT_TYPE}, body)

    def interpret(self, response, request, count):
        _status(response)
        if not response.body.strip():
            return Outcome.acked(count)
        try:
            answer = json.loads(response.body)
            partial = answer.get("partialSuccess") or {}
            rejected = int(partial.get("rejectedLogRecords") or 0)
            message = str(partial.get("errorMessage") or "")
        except (ValueError, TypeError, AttributeError):
            raise ProtocolError(f"an OTLP/JSON answer not understood: "
                                f"{body_text(response)!r}") from None
        return _partial(rejected, message, count)
