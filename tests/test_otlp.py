"""The otlp and otlp_json http_formats (OTLP/HTTP logs, decoded with the official
schema) against a strict scripted
receiver built from the backend's published API on a real socket: it checks every request
the way the backend would and answers the backend's documented failures."""
import threading

import pytest

from conftest import message
from backends import FAST, log_all
from httppeer import assert_logged, response


# -- OpenTelemetry ---------------------------------------------------------------------------

from google.protobuf import json_format  # noqa: E402
from opentelemetry.proto.collector.logs.v1 import logs_service_pb2  # noqa: E402


class FakeCollector:
    """OTLP/HTTP /v1/logs: protobuf decoded with the official schema, or JSON parsed into it
    strictly (unknown fields refused); answers partial_success when scripted."""

    def __init__(self, rejected=()):
        self.rejected = list(rejected)
        self.records = []
        self.resources = []
        self.lock = threading.Lock()

    def __call__(self, request):
        with self.lock:  # (several connections at once: nginx's workers)
            return self._export(request)

    def _export(self, request):
        assert (request.method, request.path) == ("POST", "/v1/logs")
        export = logs_service_pb2.ExportLogsServiceRequest()
        protobuf = request.headers["content-type"] == "application/x-protobuf"
        if protobuf:
            export.ParseFromString(request.body)
        else:
            assert request.headers["content-type"] == "application/json"
            json_format.Parse(request.body, export)  # strict: unknown fields fail
        for rl in export.resource_logs:
            self.resources.append({kv.key: kv.value.string_value
                                   for kv in rl.resource.attributes})
            for sl in rl.scope_logs:
                self.records += list(sl.log_records)
        answer = logs_service_pb2.ExportLogsServiceResponse()
        if self.rejected:
            answer.partial_success.rejected_log_records = self.rejected.pop(0)
            answer.partial_success.error_message = "2 records had invalid trace ids"
        if protobuf:
            return [response(200, answer.SerializeToString(),
                             {"Content-Type": "application/x-protobuf"})]
        return [response(200, json_format.MessageToJson(answer),
                         {"Content-Type": "application/json"})]


@pytest.mark.parametrize("fmt", ["otlp", "otlp_json"])
def test_otlp_logs_decode_with_the_official_schema(peer, pools, fmt):
    collector = FakeCollector()
    server = peer(collector)
    pool = pools({"sinks": [{"url": server.url + "/", "http_format": fmt,
                             "otlp_resource_attributes": {"deployment.environment": "prod"}}],
                  **FAST})
    log_all(pool, [b'{"ts": 1700000000, "a": 1}', b"line two\n"])
    assert [r.body.string_value for r in collector.records] == ['{"ts": 1700000000, "a": 1}',
                                                                 "line two"]
    assert collector.records[0].time_unix_nano == 1_700_000_000 * 10**9
    assert collector.records[1].time_unix_nano == collector.records[1].observed_time_unix_nano
    assert collector.resources[0] == {"deployment.environment": "prod",
                                      "service.name": "logpool"}


@pytest.mark.parametrize("fmt", ["otlp", "otlp_json"])
def test_otlp_partial_success_counts_the_rejected_records(peer, pools, capfd, fmt):
    collector = FakeCollector(rejected=[2])
    server = peer(collector)
    pool = pools({"sinks": [{"url": server.url + "/", "http_format": fmt}],
                  **{**FAST, "periodic_flush_ms": 300}})
    log_all(pool, [message(0, i) for i in range(6)])
    st = pool.stats(0)
    assert st["dropped_rejected"] == 2 and st["sent_messages"] == 4
    assert len(collector.records) == 6  # one request, not sent again
    assert_logged(capfd, "invalid trace ids")
