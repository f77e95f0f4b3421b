"""Backend formats (http_format elasticsearch, loki, otlp, otlp_json, splunk_hec, clickhouse,
datadog) and Fluent's forward protocol, each against a strict scripted receiver built from
the backend's published API on a real socket: it checks every request the way the backend
would (the _bulk pairs line by line, OTLP protobuf decoded with the official schema, forward
frames with the real msgpack library) and answers the backend's documented failures."""
import hashlib
import json
import socket
import threading
import time
import urllib.parse

import msgpack
import pytest

import logpool
import logpool.config
from conftest import message, wait_for
from httppeer import assert_logged, response, wait_for_log
from logpool.transports.formats import FORMATS

FAST = {"retry_interval_ms": 10, "max_retry_interval_ms": 2000, "periodic_flush_ms": 10}


def log_all(pool, lines):
    for line in lines:
        pool.log(0, line)
    pool.flush(timeout=60)


def numbered(n, **fields):
    """JSON messages {"seq": i, ...}."""
    return [json.dumps({"seq": i, **fields}).encode() for i in range(n)]


# -- config: every format works with its defaults alone; keys are checked ---------------------

@pytest.mark.parametrize("fmt", sorted(FORMATS))
def test_each_format_is_a_complete_sink_with_its_defaults_alone(fmt):
    cfg = logpool.config.parse({"sinks": [{"url": "http://collector:8080/", "http_format": fmt}]})
    assert cfg.sinks[0].transport_options.http_format == fmt


@pytest.mark.parametrize("sink, text", [
    ({"http_format": "ndjson", "loki_labels": {"a": "b"}},
     "loki_labels: a key of http_format 'loki'"),
    ({"http_format": "loki", "loki_labels": {"bad-name": "x"}}, "loki_labels: must be"),
    ({"http_format": "loki", "loki_labels": {"job": 1}}, "loki_labels: must be"),
    ({"http_format": "elasticsearch", "elasticsearch_index": "a b"},
     "elasticsearch_index: must be an index name"),
    ({"http_format": "splunk_hec", "splunk_hec_endpoint": "metrics"},
     "splunk_hec_endpoint: must be 'event' or 'raw'"),
    ({"http_format": "clickhouse", "clickhouse_table": "t; DROP TABLE x"},
     "clickhouse_table: must be a [database.]table name"),
    ({"http_format": "otlp", "otlp_resource_attributes": {"k": 2}},
     "otlp_resource_attributes: must be"),
    ({"http_format": "datadog", "datadog_service": ""}, "datadog_service: must be"),
    ({"http_format": "protobuf"}, "http_format: must be 'ndjson' or"),
    ({"http_format": "loki", "loki_labels": {"job": "\ud800"}}, "loki_labels: must be"),
    ({"http_format": "datadog", "datadog_service": "a\udfffb"}, "datadog_service: must be"),
])
def test_backend_keys_are_checked_and_named(sink, text):
    with pytest.raises(logpool.ConfigError) as exc:
        logpool.config.parse({"sinks": [{"url": "http://h:1/", **sink}]})
    assert text in str(exc.value)


@pytest.mark.parametrize("sink, text", [
    ({"url": "forward://h:24224", "forward_window": 0}, "forward_window: must be"),
    ({"url": "forward://h:24224", "forward_tag": ""}, "forward_tag: must be"),
    ({"url": "forward://h:24224", "forward_tag": "app\ud800"}, "forward_tag: must be"),
    ({"url": "forward://h:24224", "framing": "newline"}, "forward frames each message"),
    ({"url": "forward://h:24224", "http_format": "loki"}, "only http:// and https://"),
    ({"url": "forward:/h"}, "expected forward://host:port"),
])
def test_forward_config_errors_name_the_key(sink, text):
    with pytest.raises(logpool.ConfigError) as exc:
        logpool.config.parse({"sinks": [sink]})
    assert text in str(exc.value)


def test_encoders_are_pure_and_deterministic():
    # The same messages and fallback time give the same body: a batch encoded again is
    # byte-identical. ClickHouse's deduplication token alone is random per request (two
    # requests with the same bytes must not share one; a request's retries reuse it, as
    # the transport sends a request frozen once encoded).
    messages = [b'{"seq": 1, "time": 1700000000.5}', b"plain line\n", b'{"seq": 3}']
    for name, cls in FORMATS.items():
        opts = {o.name: o.default for c in FORMATS.values() for o in c.OPTIONS}
        enc = cls(opts, "/")
        a, b = enc.encode(messages, 1_700_000_100_000_000_000), enc.encode(
            list(messages), 1_700_000_100_000_000_000)
        assert a.body == b.body and a.headers == b.headers, name
        assert a.path.startswith("/"), name
        if name == "clickhouse":
            token = urllib.parse.parse_qs(a.path.partition("?")[2])[
                "insert_deduplication_token"]
            assert token != urllib.parse.parse_qs(b.path.partition("?")[2])[
                "insert_deduplication_token"]
        else:
            assert a == b, name


# -- Elasticsearch _bulk --------------------------------------------------------------------

class FakeElasticsearch:
    """_bulk as Elasticsearch documents it: NDJSON action/document pairs, each line ending in
    a newline; "create" with an existing _id is a 409 conflict; `item_status(doc)` scripts
    an item's status (None: stored, 201)."""

    def __init__(self, item_status=lambda doc, attempt: None):
        self.item_status = item_status
        self.lock = threading.Lock()
        self.stored = {}  # _id -> doc
        self.order = []  # docs stored, in order
        self.attempts = {}
        self.paths = []

    def __call__(self, request):
        with self.lock:  # (several connections at once: nginx's workers)
            return self._bulk(request)

    def _bulk(self, request):
        assert request.method == "POST"
        assert request.headers["content-type"] == "application/x-ndjson"
        path, _, query = request.path.partition("?")
        assert path.endswith("/_bulk")
        self.paths.append(request.path)
        assert urllib.parse.parse_qs(query)["filter_path"]
        body = request.body
        assert body.endswith(b"\n")
        lines = body.split(b"\n")[:-1]
        assert len(lines) % 2 == 0, "action/document pairs"
        items, errors = [], False
        for action_line, doc_line in zip(lines[0::2], lines[1::2]):
            action = json.loads(action_line)
            assert list(action) == ["create"], action
            meta = action["create"]
            assert set(meta) <= {"_index", "_id", "pipeline"}, meta
            index = meta.get("_index") or path.strip("/").split("/")[0]
            assert index and index != "_bulk", "no index for the document"
            doc = json.loads(doc_line)
            assert isinstance(doc, dict)
            key = doc.get("seq", doc.get("message"))
            self.attempts[key] = self.attempts.get(key, 0) + 1
            status = self.item_status(doc, self.attempts[key])
            doc_id = meta.get("_id") or f"auto-{len(self.stored)}"
            if status is None and doc_id in self.stored:
                status = 409
            if status is None:
                self.stored[doc_id] = (index, meta.get("pipeline"), doc)
                self.order.append(doc)
                items.append({"create": {"status": 201}})
                continue
            errors = True
            error = {"type": {400: "mapper_parsing_exception", 409: "version_conflict_engine_"
                              "exception", 429: "es_rejected_execution_exception"}.get(
                                  status, "error"), "reason": f"scripted {status}"}
            items.append({"create": {"status": status, "error": error}})
        return [response(200, json.dumps({"took": 3, "errors": errors, "items": items}),
                         {"Content-Type": "application/json"})]


def test_elasticsearch_bulk_pairs_with_index_from_the_path_and_pipeline(peer, pools):
    es = FakeElasticsearch()
    server = peer(es)
    pool = pools({"sinks": [{"url": server.url + "/weblogs/_bulk", "http_format":
                             "elasticsearch", "elasticsearch_pipeline": "geoip"}], **FAST})
    log_all(pool, numbered(50) + [b"not json\n"])
    assert [d.get("seq") for d in es.order] == list(range(50)) + [None]
    assert es.order[-1] == {"message": "not json"}  # wrapped, not rejected
    assert {index for index, _, _ in es.stored.values()} == {"weblogs"}
    assert {pipeline for _, pipeline, _ in es.stored.values()} == {"geoip"}
    assert pool.stats(0)["sent_messages"] == 51


def test_elasticsearch_standard_path_and_default_index(peer, pools):
    es = FakeElasticsearch()
    server = peer(es)
    pool = pools({"sinks": [{"url": server.url + "/", "http_format": "elasticsearch"}], **FAST})
    log_all(pool, numbered(3))
    assert es.paths[0].startswith("/_bulk?")
    assert {index for index, _, _ in es.stored.values()} == {"logpool"}


def test_elasticsearch_mixed_item_statuses_retry_429_and_reject_the_rest(peer, pools, capfd):
    # seq 3: a mapping error (400, for good); seq 5: 429 on its first attempt; seq 8: 503
    # twice. A 409 on a create with an _id (elasticsearch_id_field) is taken as
    # acknowledged: the document is there.
    def item_status(doc, attempt):
        seq = doc.get("seq")
        if seq == 3:
            return 400
        if seq == 5 and attempt == 1:
            return 429
        if seq == 8 and attempt <= 2:
            return 503
        return None
    es = FakeElasticsearch(item_status)
    server = peer(es)
    pool = pools({"sinks": [{"url": server.url + "/", "http_format": "elasticsearch",
                             "elasticsearch_id_field": "id"}], **FAST})
    log_all(pool, [json.dumps({"seq": i, "id": f"doc-{i}"}).encode() for i in range(12)])
    stored = sorted(doc["seq"] for doc in es.order)
    assert stored == [i for i in range(12) if i != 3]  # each exactly once
    st = pool.stats(0)
    assert st["dropped_rejected"] == 1 and st["sent_messages"] == 11
    # Item 5 once and item 8 twice were answered "later": sent again, nothing stored.
    assert st["retried_messages"] >= 3
    err = assert_logged(capfd, "mapper_parsing_exception")
    assert "dropped_rejected" in err


# -- Loki ------------------------------------------------------------------------------------

class FakeLoki:
    """POST /loki/api/v1/push, JSON as Loki documents it: streams of labels and
    [nanosecond-timestamp string, line] values."""

    def __init__(self, script=()):
        self.script = list(script)
        self.entries = []  # (labels, ts, line) taken
        self.requests = 0

    def __call__(self, request):
        assert (request.method, request.path) == ("POST", "/loki/api/v1/push")
        assert request.headers["content-type"] == "application/json"
        push = json.loads(request.body)
        assert list(push) == ["streams"]
        got = []
        for stream in push["streams"]:
            assert set(stream) == {"stream", "values"}
            assert all(isinstance(k, str) and isinstance(v, str)
                       for k, v in stream["stream"].items())
            for ts, line in stream["values"]:
                assert isinstance(ts, str) and ts.isdigit() and isinstance(line, str)
                got.append((stream["stream"], int(ts), line))
        self.requests += 1
        if self.script:
            status, text, ignore = self.script.pop(0)
            self.entries += got[ignore:]
            return [response(status, text)]
        self.entries += got
        return [response(204)]


def test_loki_push_default_labels_and_the_time_a_line_was_logged(peer, pools):
    loki = FakeLoki()
    server = peer(loki)
    pool = pools({"sinks": [{"url": server.url + "/", "http_format": "loki"}], **FAST})
    before = time.time_ns()
    log_all(pool, [b'{"time": 1700000000.123, "msg": "a"}', b'{"@timestamp": '
                   b'"2024-01-02T03:04:05.5+00:00"}', b"plain\n"])
    labels = {labels_ for labels_, _, _ in [(json.dumps(e[0]), 0, 0) for e in loki.entries]}
    assert labels == {json.dumps({"job": "logpool"})}
    (_, t1, l1), (_, t2, _), (_, t3, l3) = loki.entries
    assert t1 == 1_700_000_000_123_000_000 and l1 == '{"time": 1700000000.123, "msg": "a"}'
    assert t2 == 1_704_164_645_500_000_000
    assert before <= t3 <= time.time_ns() and l3 == "plain"  # no time field: when encoded


def test_loki_custom_labels(peer, pools):
    loki = FakeLoki()
    server = peer(loki)
    pool = pools({"sinks": [{"url": server.url + "/", "http_format": "loki",
                             "loki_labels": {"app": "shop", "env": "prod"}}], **FAST})
    log_all(pool, [b"x"])
    assert loki.entries[0][0] == {"app": "shop", "env": "prod"}


def test_loki_400_out_of_order_counts_the_ignored_entries_as_rejected(peer, pools, capfd):
    text = ("entry with timestamp 2020-01-01 00:00:00 +0000 UTC ignored, reason: 'entry out "
            "of order' for stream: {job=\"logpool\"},\nuser 'fake', total ignored: 2 out of 5")
    loki = FakeLoki([(400, text, 2)])
    server = peer(loki)
    pool = pools({"sinks": [{"url": server.url + "/", "http_format": "loki"}],
                  **{**FAST, "periodic_flush_ms": 300}})
    log_all(pool, [message(0, i) for i in range(5)])
    st = pool.stats(0)
    assert st["dropped_rejected"] == 2 and st["sent_messages"] == 3
    assert loki.requests == 1  # not sent again
    assert_logged(capfd, "entry out of order")


def test_loki_400_rejects_only_the_entries_loki_named_and_the_rest_is_stored(peer, pools,
                                                                            capfd):
    # As Loki validates a push: it stores the valid entries and answers 400 naming the
    # refused ones (an over-long line, a timestamp too old), in its own words.
    cutoff_ns, max_line = 1_700_000_000 * 10**9, 100
    stored = []

    def answer(request):
        errors = []
        for stream in json.loads(request.body)["streams"]:
            for ts, line in stream["values"]:
                if len(line.encode()) > max_line:
                    errors.append(f"Max entry size '{max_line}' bytes exceeded for stream "
                                  f"'{{job=\"logpool\"}}' while adding an entry with length "
                                  f"'{len(line.encode())}' bytes")
                elif int(ts) < cutoff_ns:
                    errors.append("entry for stream '{job=\"logpool\"}' has timestamp too "
                                  "old: 2020-01-01T00:00:00Z, oldest acceptable timestamp "
                                  "is: 2023-11-14T22:13:20Z")
                else:
                    stored.append(line)
        if errors:
            return [response(400, f"{len(errors)} errors like: " + "\n".join(errors))]
        return [response(204)]
    server = peer(answer)
    pool = pools({"sinks": [{"url": server.url + "/", "http_format": "loki"}],
                  **{**FAST, "periodic_flush_ms": 300}})
    lines = [json.dumps({"seq": i, "time": 1_700_000_100}).encode() for i in range(10)]
    lines[3] = json.dumps({"seq": 3, "time": 1_600_000_000}).encode()  # too old
    lines[6] = json.dumps({"seq": 6, "time": 1_700_000_100, "pad": "x" * 200}).encode()
    log_all(pool, lines)
    assert [json.loads(line)["seq"] for line in stored] == [0, 1, 2, 4, 5, 7, 8, 9]
    st = pool.stats(0)
    assert st["dropped_rejected"] == 2 and st["sent_messages"] == 8
    assert st["retried_messages"] == 0 and st["resent_messages"] == 0  # nothing sent again
    assert_logged(capfd, "Max entry size")


def test_loki_400_naming_no_entry_is_narrowed(peer, pools):
    # A 400 Loki gives for the whole push once (no entry named): narrowed, nothing lost.
    loki = FakeLoki([(400, "error parsing labels", 5)])
    server = peer(loki)
    pool = pools({"sinks": [{"url": server.url + "/", "http_format": "loki"}],
                  **{**FAST, "periodic_flush_ms": 300}})
    log_all(pool, [message(0, i) for i in range(5)])
    st = pool.stats(0)
    assert st["dropped_rejected"] == 0 and st["sent_messages"] == 5
    assert len(loki.entries) == 5


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


# -- Splunk HEC ------------------------------------------------------------------------------

class FakeHec:
    """/services/collector/event: concatenated JSON event envelopes; answers {"text",
    "code"} as HEC documents (code 9: server busy, HTTP 503)."""

    def __init__(self, script=()):
        self.script = list(script)
        self.events = []
        self.requests = 0

    def __call__(self, request):
        assert request.headers["authorization"] == "Splunk 0000-token"
        self.requests += 1
        if self.script:
            status, code = self.script.pop(0)
            return [response(status, json.dumps({"text": "scripted", "code": code}))]
        if request.path == "/services/collector/raw":
            self.events += [line.decode() for line in request.body.splitlines()]
            return [response(200, '{"text":"Success","code":0}')]
        assert request.path == "/services/collector/event"
        decoder, text, pos = json.JSONDecoder(), request.body.decode(), 0
        while pos < len(text):
            event, end = decoder.raw_decode(text, pos)
            assert set(event) == {"time", "event"} and isinstance(event["time"], (int, float))
            self.events.append(event)
            pos = end
            while pos < len(text) and text[pos] in " \n":
                pos += 1
        return [response(200, '{"text":"Success","code":0}')]


HEC_HEADERS = {"Authorization": "Splunk 0000-token"}


def test_splunk_hec_event_envelopes_and_code_9_is_retried(peer, pools):
    hec = FakeHec([(503, 9)])
    server = peer(hec)
    pool = pools({"sinks": [{"url": server.url + "/", "http_format": "splunk_hec",
                             "http_headers": HEC_HEADERS}], **FAST})
    log_all(pool, [b'{"seq": 0, "time": 1700000000.25}', b"plain"])
    assert hec.events == [{"time": 1700000000.25, "event": {"seq": 0, "time": 1700000000.25}},
                          {"time": hec.events[1]["time"], "event": "plain"}]
    st = pool.stats(0)
    assert st["sent_messages"] == 2 and st["dropped_rejected"] == 0 and hec.requests == 2


def test_splunk_hec_raw_endpoint(peer, pools):
    hec = FakeHec()
    server = peer(hec)
    pool = pools({"sinks": [{"url": server.url + "/", "http_format": "splunk_hec",
                             "splunk_hec_endpoint": "raw", "http_headers": HEC_HEADERS}],
                  **FAST})
    log_all(pool, [b"one\n", b"two"])
    assert hec.events == ["one", "two"]


@pytest.mark.parametrize("status, code", [(403, 4), (400, 7)])
def test_splunk_hec_400_403_keep_the_data_and_log_once(peer, pools, capfd, status, code):
    hec = FakeHec([(status, code)] * 3)
    server = peer(hec)
    pool = pools({"sinks": [{"url": server.url + "/", "http_format": "splunk_hec",
                             "http_headers": HEC_HEADERS}], **FAST})
    log_all(pool, [b"a", b"b"])
    assert [e["event"] for e in hec.events] == ["a", "b"]
    assert pool.stats(0)["dropped_rejected"] == 0
    assert capfd.readouterr().err.count(f"HEC {status}") == 1


# -- ClickHouse ------------------------------------------------------------------------------

class FakeClickHouse:
    """The HTTP interface: SELECT version() once per session, INSERT ... FORMAT JSONEachRow in
    the query parameter, rows in the body, insert_deduplication_token honoured (a block with
    a token seen before is not inserted again), exceptions with X-ClickHouse-Exception-Code."""

    def __init__(self, script=(), version="23.8.2.7"):
        self.script = list(script)
        self.version = version
        self.rows = []
        self.tokens = []
        self.inserted = set()
        self.probes = 0

    def __call__(self, request):
        path, _, query = request.path.partition("?")
        params = urllib.parse.parse_qs(query)
        if request.method == "GET":
            assert params["query"] == ["SELECT version()"] and not request.body
            self.probes += 1
            return [response(200, self.version + "\n")]
        assert path == "/" and params["query"] == ["INSERT INTO logs FORMAT JSONEachRow"]
        token = params["insert_deduplication_token"][0]
        assert token != hashlib.sha256(request.body).hexdigest()  # random, not the body's
        rows = [json.loads(line) for line in request.body.splitlines()]
        assert all(isinstance(r, dict) for r in rows)
        self.tokens.append(token)
        if self.script:
            status, code, text = self.script.pop(0)
            return [response(status, text, {"X-ClickHouse-Exception-Code": str(code)})]
        if token not in self.inserted:
            self.inserted.add(token)
            self.rows += rows
        return [response(200, "")]


def test_clickhouse_insert_with_a_token_per_batch_and_the_exception_code(peer, pools, capfd):
    ch = FakeClickHouse([(500, 241, "Code: 241. DB::Exception: Memory limit exceeded")])
    server = peer(ch)
    pool = pools({"sinks": [{"url": server.url + "/", "http_format": "clickhouse"}], **FAST})
    log_all(pool, numbered(5) + [b"plain"])
    assert [r.get("seq") for r in ch.rows] == [0, 1, 2, 3, 4, None]
    assert ch.rows[-1] == {"message": "plain"}
    assert ch.tokens[0] == ch.tokens[1]  # the retry is the same request: the same token
    st = pool.stats(0)
    assert 1 <= ch.probes <= st["connects"]  # the version asked once per session
    assert st["sent_messages"] == 6 and st["retried_messages"] == 6
    assert_logged(capfd, "ClickHouse exception code 241")
    log_all(pool, numbered(5) + [b"plain"])  # the same bytes again: another token
    assert len(set(ch.tokens)) == 2 and len(ch.rows) == 12


def test_clickhouse_unknown_table_keeps_the_data(peer, pools, capfd):
    ch = FakeClickHouse([(404, 60, "Code: 60. DB::Exception: Table default.logs does not "
                                   "exist")])
    server = peer(ch)
    pool = pools({"sinks": [{"url": server.url + "/", "http_format": "clickhouse"}], **FAST})
    log_all(pool, numbered(3))
    assert [r["seq"] for r in ch.rows] == [0, 1, 2]
    assert pool.stats(0)["dropped_rejected"] == 0
    err = assert_logged(capfd, "ClickHouse exception code 60")
    assert "a configuration error" in err


def clickhouse_encoder(**options):
    opts = {o.name: o.default for c in FORMATS.values() for o in c.OPTIONS}
    return FORMATS["clickhouse"]({**opts, **options}, "/")


@pytest.mark.parametrize("status, code, body, what", [
    (500, 252, "Code: 252. DB::Exception: Too many parts (300)", "later"),
    (500, 241, "Code: 241. DB::Exception: Memory limit (total) exceeded", "later"),
    (404, 60, "Code: 60. DB::Exception: Table default.logs doesn't exist", "configuration"),
    (403, 516, "Code: 516. DB::Exception: default: Authentication failed", "configuration"),
    (500, 27, "Code: 27, e.displayText() = DB::Exception: Cannot parse input", "row"),
    (400, 117, "Code: 117. DB::Exception: Unknown field found while parsing JSONEachRow "
               "format: x: (at row 3)", "row 2"),
    (500, 999, "Code: 999. Coordination::Exception: Connection loss", "later"),
    (500, 1002, "Code: 1002. DB::Exception: something else", "generic")])
@pytest.mark.parametrize("in_header", [True, False])  # 18.16 names the code in the body only
def test_clickhouse_answers_by_exception_code(status, code, body, what, in_header):
    from logpool.transports.formats.common import (Misconfigured, Refused, Response,
                                                   RetryLater)
    enc = clickhouse_encoder()
    request = enc.encode([b'{"a":1}', b'{"a":2}', b'{"a":3}'], 0)
    headers = {"x-clickhouse-exception-code": str(code)} if in_header else {}
    answer = Response(status, "X", headers, body.encode())
    kinds = {RetryLater: "later", Misconfigured: "configuration", Refused: "row"}
    try:
        outcome = enc.interpret(answer, request, 3)
    except (RetryLater, Misconfigured, Refused) as exc:
        got = kinds[type(exc)]
        if isinstance(exc, Refused) and exc.item is not None:
            got = f"row {exc.item}"
        assert f"ClickHouse exception code {code}" in str(exc)
    else:
        assert outcome is None  # the generic HTTP rules, by the status
        got = "generic"
    assert got == what


def test_clickhouse_token_only_for_servers_that_know_it():
    from logpool.transports.formats.common import Response, SendAgain
    enc = clickhouse_encoder()
    request = enc.encode([b'{"a":1}'], 0)
    for url, version, sent in (("http://old:8123", "18.16.1", False),
                               ("http://21:8123", "21.8.15.7", False),
                               ("http://new:8123", "22.2.2.1", True),
                               ("http://unknown:8123", None, True)):
        enc.url = url
        if version is not None:
            enc.learn(url, Response(200, "OK", {}, version.encode() + b"\n"))
        path = enc.finish(request).path
        assert ("insert_deduplication_token=" in path) is sent, (url, path)
        assert path.startswith("/?query=INSERT")
    # A server that answers 115 for a setting: dropped for it, the request sent again once.
    enc.url = "http://unknown:8123"
    refusal = Response(404, "X", {}, b"Code: 115, e.displayText() = DB::Exception: Unknown "
                                     b"setting insert_deduplication_token")
    with pytest.raises(SendAgain):
        enc.interpret(refusal, enc.finish(request), 1)
    assert "insert_deduplication_token" not in enc.finish(request).path
    enc.url = "http://new:8123"  # another server keeps it
    assert "insert_deduplication_token" in enc.finish(request).path


# -- Datadog ---------------------------------------------------------------------------------

class FakeDatadog:
    """/api/v2/logs: a JSON array of log objects; 202; 413 above `max_entries` entries."""

    def __init__(self, max_entries=1000):
        self.max_entries = max_entries
        self.entries = []
        self.sizes = []

    def __call__(self, request):
        assert (request.method, request.path) == ("POST", "/api/v2/logs")
        assert request.headers["dd-api-key"] == "k3y"
        entries = json.loads(request.body)
        assert isinstance(entries, list) and all(isinstance(e, dict) for e in entries)
        self.sizes.append(len(entries))
        if len(entries) > self.max_entries:
            return [response(413, '{"errors":["Payload too large"]}')]
        self.entries += entries
        return [response(202, "{}")]


def test_datadog_entries_tags_and_413_split(peer, pools):
    dd = FakeDatadog(max_entries=7)
    server = peer(dd)
    pool = pools({"sinks": [{"url": server.url + "/", "http_format": "datadog",
                             "http_headers": {"DD-API-KEY": "k3y"},
                             "datadog_service": "shop", "datadog_hostname": "web-1"}],
                  **{**FAST, "periodic_flush_ms": 300}})
    log_all(pool, numbered(20, time=1700000000.5) + [b"plain"])
    assert [e.get("seq") for e in dd.entries] == list(range(20)) + [None]
    assert all(e["ddsource"] == "nginx" and e["service"] == "shop" and e["hostname"] == "web-1"
               for e in dd.entries)
    assert dd.entries[0]["timestamp"] == 1_700_000_000_500
    assert dd.entries[-1]["message"] == "plain"
    assert max(dd.sizes) > 7 and pool.stats(0)["dropped_rejected"] == 0


# -- Fluent forward --------------------------------------------------------------------------

class ForwardServer:
    """A forward input as the protocol specification describes it: PackedForward messages
    checked with the real msgpack library (the entries a stream of [EventTime, record]
    pairs, "size" and "chunk" options), acks {"ack": chunk} given by `policy(chunk_id,
    records, server)`: "ack", "hold" (withheld until release()), "unknown" (an ack for a
    chunk never sent), "none" (never). Optional shared-key handshake."""

    def __init__(self, policy=lambda cid, records, server: "ack", shared_key=None, tls=None):
        self.policy = policy
        self.tls = tls
        self.shared_key = shared_key
        self.records = []  # (tag, time ns, record), every chunk received
        self.chunks = []  # chunk ids, in arrival order
        self.held = []
        self.lock = threading.Lock()
        self.release_event = threading.Event()
        self.stopping = threading.Event()
        self.connections = 0
        self.auth_failures = 0
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.url = (f"forward{'+tls' if tls else ''}://127.0.0.1:"
                    f"{self.listener.getsockname()[1]}")
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    def _accept(self):
        self.listener.settimeout(0.1)
        while not self.stopping.is_set():
            try:
                conn, _ = self.listener.accept()
            except OSError:
                continue
            self.connections += 1
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    @staticmethod
    def _ext(code, data):
        assert code == 0 and len(data) == 8, "EventTime is ext type 0 of 8 bytes"
        import struct
        seconds, nanos = struct.unpack(">II", data)
        assert nanos < 10**9
        return seconds * 10**9 + nanos

    def _serve(self, conn):
        from logpool.transports.forward import ping_digest
        if self.tls is not None:
            conn.settimeout(10)
            try:
                conn = self.tls.wrap_socket(conn, server_side=True)
            except OSError:
                conn.close()
                return
        conn.settimeout(0.1)
        unpacker = msgpack.Unpacker(raw=False)
        try:
            if self.shared_key is not None:
                # As Fluent Bit does: a random 16-byte nonce and user-auth salt packed as str
                # (not valid UTF-8), an auth salt even when no users are configured.
                import os
                nonce = os.urandom(16)
                packer = msgpack.Packer(unicode_errors="surrogateescape")
                raw = lambda b: b.decode("utf-8", "surrogateescape")  # noqa: E731
                conn.sendall(packer.pack(["HELO", {"nonce": raw(nonce),
                                                   "auth": raw(os.urandom(16))}]))
                ping = self._next(conn, unpacker)
                _, host, salt, digest, user, password = ping
                good = digest == ping_digest(salt, host, nonce, self.shared_key)
                if not good:
                    self.auth_failures += 1
                conn.sendall(msgpack.packb(
                    ["PONG", True, "", "collector-1", ping_digest(
                        salt, "collector-1", nonce, self.shared_key)] if good else
                    ["PONG", False, "shared_key mismatch", "", ""]))
                if not good:
                    return
            while not self.stopping.is_set():
                msg = self._next(conn, unpacker)
                if msg is None:
                    return
                tag, entries, option = msg
                assert isinstance(tag, str) and isinstance(entries, bytes)
                records = []
                inner = msgpack.Unpacker(raw=False)
                inner.feed(entries)
                for event in inner:
                    t, rec = event
                    assert isinstance(t, msgpack.ExtType) and isinstance(rec, dict)
                    records.append((tag, self._ext(t.code, t.data), rec))
                assert option["size"] == len(records), "size option"
                chunk = option["chunk"]
                with self.lock:
                    self.chunks.append(chunk)
                    self.records += records
                what = self.policy(chunk, records, self)
                if what == "ack":
                    conn.sendall(msgpack.packb({"ack": chunk}))
                elif what == "unknown":
                    conn.sendall(msgpack.packb({"ack": "never-sent-chunk"}))
                elif what == "hold":
                    self.held.append(chunk)
                    while not self.release_event.wait(0.05):
                        if self.stopping.is_set():
                            return
                    for c in self.held:
                        conn.sendall(msgpack.packb({"ack": c}))
                    self.held.clear()
                elif what == "garbage":
                    conn.sendall(b"\xc1" * 10)
                elif what == "huge":  # a bin announcing 4 GiB, then a steady stream
                    conn.sendall(b"\xc6\xff\xff\xff\xff")
                    while not self.stopping.is_set():
                        conn.sendall(b"z" * 65536)
        except (OSError, ValueError):
            return
        finally:
            conn.close()

    def _next(self, conn, unpacker):
        while not self.stopping.is_set():
            for msg in unpacker:
                return msg
            try:
                data = conn.recv(65536)
            except TimeoutError:
                continue
            if not data:
                return None
            unpacker.feed(data)
        return None

    def delivered(self):
        with self.lock:
            return list(self.records)

    def close(self):
        self.stopping.set()
        self.release_event.set()
        self.listener.close()
        self.thread.join(timeout=5)


@pytest.fixture
def forward_server():
    made = []

    def make(*args, **kwargs):
        s = ForwardServer(*args, **kwargs)
        made.append(s)
        return s
    yield make
    for s in made:
        s.close()


def seqs_of(records):
    return [rec.get("seq") for _, _, rec in records]


def test_forward_packed_chunks_acked_with_tag_records_and_times(forward_server, pools):
    server = forward_server()
    pool = pools({"sinks": [{"url": server.url, "forward_tag": "nginx.access"}], **FAST})
    log_all(pool, [json.dumps({"seq": i, "time": 1700000000 + i}).encode()
                   for i in range(300)] + [b"plain"])
    got = server.delivered()
    assert seqs_of(got) == list(range(300)) + [None]
    assert got[-1][2] == {"message": "plain"}
    assert {tag for tag, _, _ in got} == {"nginx.access"}
    assert got[5][1] == (1700000000 + 5) * 10**9
    st = pool.stats(0)
    assert (st["sent_messages"] == 301 and st["resent_messages"] == 0
            and st["unacked_messages"] == 0)


def test_forward_ack_withheld_then_given_releases_without_resending(forward_server, pools):
    server = forward_server(policy=lambda cid, records, s: "hold" if len(s.chunks) == 1
                            else "ack")
    pool = pools({"sinks": [{"url": server.url}], "send_timeout_ms": 30000, **FAST})
    for line in numbered(10):
        pool.log(0, line)
    wait_for(lambda: server.held, what="a chunk held")
    wait_for(lambda: pool.stats(0)["unacked_messages"] == 10, what="10 unacknowledged")
    assert pool.stats(0)["sent_messages"] == 0  # not acknowledged: not sent
    server.release_event.set()
    pool.flush(timeout=30)
    st = pool.stats(0)
    assert st["sent_messages"] == 10 and st["resent_messages"] == 0
    assert seqs_of(server.delivered()) == list(range(10)) and server.connections == 1


def test_forward_ack_withheld_past_send_timeout_resends(forward_server, pools):
    server = forward_server(policy=lambda cid, records, s: "none" if len(s.chunks) == 1
                            else "ack")
    pool = pools({"sinks": [{"url": server.url}], "send_timeout_ms": 500, **FAST})
    log_all(pool, numbered(10))
    got = seqs_of(server.delivered())
    assert got[-10:] == list(range(10))  # all sent again on a new connection, in order
    st = pool.stats(0)
    assert st["sent_messages"] == 10 and st["resent_messages"] == len(got) - 10 > 0


@pytest.mark.parametrize("answer", ["unknown", "garbage", "huge"])
def test_forward_an_ack_for_an_unknown_chunk_is_a_protocol_error(forward_server, pools,
                                                                 capfd, answer):
    server = forward_server(policy=lambda cid, records, s: answer if len(s.chunks) == 1
                            else "ack")
    pool = pools({"sinks": [{"url": server.url}], **FAST})
    log_all(pool, numbered(5))
    st = pool.stats(0)
    got = seqs_of(server.delivered())
    assert got[-5:] == list(range(5)) and sorted(set(got)) == list(range(5))
    assert st["sent_messages"] == 5 and st["write_errors"] == 1
    assert st["resent_messages"] == len(got) - 5 > 0  # the duplicates, all counted
    assert_logged(capfd, {"unknown": "not in flight", "garbage": "not msgpack",
                          "huge": "an answer longer than 65536 bytes"}[answer])


def test_forward_shared_key_handshake(forward_server, pools):
    server = forward_server(shared_key="s3cret")
    pool = pools({"sinks": [{"url": server.url, "forward_shared_key": "s3cret"}], **FAST})
    log_all(pool, numbered(3))
    assert seqs_of(server.delivered()) == [0, 1, 2]
    wrong = pools({"sinks": [{"url": server.url, "forward_shared_key": "wrong"}], **FAST})
    wrong.log(0, b"x")
    wait_for(lambda: wrong.stats(0)["connect_failures"] >= 2, what="refused handshakes")
    assert wrong.stats(0)["sent_messages"] == 0 and server.auth_failures >= 2


def test_forward_close_ends_a_withheld_ack_within_its_timeout(forward_server):
    server = forward_server(policy=lambda cid, records, s: "none")
    pool = logpool.Pool({"sinks": [{"url": server.url}], "send_timeout_ms": 60000, **FAST})
    for line in numbered(4):
        pool.log(0, line)
    wait_for(lambda: server.chunks, what="a chunk")
    start = time.monotonic()
    assert pool.close(timeout=1) == 4
    assert time.monotonic() - start < 10  # its timeout plus slack; not send_timeout_ms (60 s)


def test_forward_over_tls_verifies_the_collector(forward_server, pools, test_ca):
    from logpool.receive import server_tls_context
    server = forward_server(tls=server_tls_context(*test_ca.issue("server")))
    pool = pools({"sinks": [{"url": server.url, "ca_file": test_ca.ca_file,
                             "server_name": "localhost"}], **FAST})
    log_all(pool, numbered(20))
    assert seqs_of(server.delivered()) == list(range(20))
    untrusted = pools({"sinks": [{"url": server.url}], **FAST})  # the system CAs: refused
    untrusted.log(0, b"x")
    wait_for(lambda: untrusted.stats(0)["tls_handshake_failures"] > 0, what="a refusal")
    assert untrusted.stats(0)["sent_messages"] == 0


# -- a real nginx across a reload --------------------------------------------------------------

from test_nginx import (  # noqa: E402,F401 — nginx: the fixture
    assert_exactly_once, logpool_conf, nginx, reload_under_load)


@pytest.mark.parametrize("fmt", ["elasticsearch", "otlp"])
def test_nginx_ships_every_request_once_across_a_reload(peer, nginx, fmt):  # noqa: F811
    backend = FakeElasticsearch() if fmt == "elasticsearch" else FakeCollector()
    server = peer(backend)
    ng = nginx(*logpool_conf(server.url + "/", f'http_format = "{fmt}",'), workers=2)
    ids = reload_under_load(ng)
    if fmt == "elasticsearch":
        got = [doc["message"] for doc in backend.order]
    else:
        got = [record.body.string_value for record in backend.records]
    assert_exactly_once(ids, got)


def test_nginx_lua_recipe_json_lines_carry_the_time_they_were_logged(peer, nginx):  # noqa: F811
    # The documented recipe: one JSON object per request built in log_by_lua (with logpool's
    # own small encoder: Debian's nginx Lua module has no cjson), its "time" the moment of
    # logging; Loki receives that time, not the time of sending.
    loki = FakeLoki()
    server = peer(loki)
    http_extra, _ = logpool_conf(server.url + "/", 'http_format = "loki",')
    server_extra = """
        log_by_lua_block {
            local json = require "resty.logpool.json"
            require("resty.logpool").log("main", json.encode{
                time = ngx.now(), request_id = ngx.var.request_id, status = ngx.status })
        }
    """
    ng = nginx(http_extra, server_extra, workers=2)
    assert ng.requests(200, connections=4) == [200] * 200
    assert ng.quit() == 0
    ids = ng.access_ids()
    got = [json.loads(line) for _, _, line in loki.entries]
    assert_exactly_once(ids, [doc["request_id"] for doc in got])
    assert all(ts == round(doc["time"] * 1e6) * 1000 for (_, ts, _), doc in
               zip(loki.entries, got))


def test_every_backend_key_is_documented_with_its_default():
    import os
    from logpool.transports.forward import OPTIONS as FORWARD_OPTIONS
    from logpool.transports.formats import all_options
    docs = open(os.path.join(os.path.dirname(__file__), "..", "docs", "transports.md")).read()
    for key in [*all_options(), *FORWARD_OPTIONS]:
        assert f"`{key}`" in docs, key
    for name in FORMATS:
        assert f"`{name}`" in docs or f'"{name}"' in docs, name


def test_splunk_hec_a_refused_event_is_dropped_and_the_rest_sent_again(peer, pools, capfd):
    # HEC processes events in order: on an event it refuses it answers 400 (code 6, invalid
    # data format) naming it (invalid-event-number); the events before it were indexed, the
    # rest were not. A blank event (code 13) is never sent: the encoder rejects it alone.
    taken = []

    def answer(request):
        events = [json.loads(line) for line in request.body.splitlines()]
        for i, event in enumerate(events):
            if event["event"] in ("", "refuse-me"):
                taken.extend(e["event"] for e in events[:i])
                return [response(400, json.dumps({"text": "Invalid data format", "code": 6,
                                                  "invalid-event-number": i}))]
        taken.extend(e["event"] for e in events)
        return [response(200, '{"text":"Success","code":0}')]
    server = peer(answer)
    pool = pools({"sinks": [{"url": server.url + "/", "http_format": "splunk_hec"}],
                  **{**FAST, "periodic_flush_ms": 300}})
    log_all(pool, [b"a", b"b", b"\n", b"refuse-me", b"c", b"d"])  # "\n": a blank event
    assert taken == ["a", "b", "c", "d"]  # once each, in order
    st = pool.stats(0)
    assert st["dropped_rejected"] == 2 and st["sent_messages"] == 4
    seen = assert_logged(capfd, "Invalid data format")
    assert "a blank event" in seen + wait_for_log(capfd, "a blank event")


def test_a_batch_the_encoder_rejects_whole_is_never_sent(peer, pools, capfd):
    # Every message of the batch is one the format cannot carry (HEC: blank events): they
    # are rejected there and then, no request goes out, and the next batch is sent as usual.
    server = peer(lambda request: [response(200, '{"text":"Success","code":0}')])
    pool = pools({"sinks": [{"url": server.url + "/", "http_format": "splunk_hec"}],
                  **FAST})
    log_all(pool, [b"\n", b"  ", b"\t"])
    st = pool.stats(0)
    assert st["dropped_rejected"] == 3 and st["sent_messages"] == 0
    assert server.requests == []
    assert_logged(capfd, "a blank event")
    log_all(pool, [b"after"])
    assert [json.loads(r.body)["event"] for r in server.requests] == ["after"]
    assert pool.stats(0)["sent_messages"] == 1


def test_clickhouse_a_row_it_cannot_parse_is_isolated_and_dropped_alone(peer, pools, capfd):
    rows = []

    def answer(request):
        batch = [json.loads(line) for line in request.body.splitlines()]
        if any("bad" in r for r in batch):  # all or nothing, as an insert is
            return [response(400, "Code: 27. DB::Exception: Cannot parse input",
                             {"X-ClickHouse-Exception-Code": "27"})]
        rows.extend(batch)
        return [response(200)]
    server = peer(answer)
    pool = pools({"sinks": [{"url": server.url + "/", "http_format": "clickhouse"}],
                  **{**FAST, "periodic_flush_ms": 300}})
    log_all(pool, [json.dumps({"seq": i} if i != 13 else {"bad": 1}).encode()
                   for i in range(40)])
    assert [r["seq"] for r in rows] == [i for i in range(40) if i != 13]
    st = pool.stats(0)
    assert st["dropped_rejected"] == 1 and st["sent_messages"] == 39
    assert_logged(capfd, "ClickHouse exception code 27")


@pytest.fixture
def native_nginx(tmp_path):
    """A real nginx with the native module (no Lua)."""
    from logpool.tools.nginx import Nginx, native_modules
    started = []

    def start(http_extra, workers=2):
        n = Nginx(tmp_path / f"native{len(started)}", http_extra, "", workers=workers,
                  modules=native_modules())
        started.append(n)
        return n.start()

    yield start
    for n in started:
        n.kill()


def test_native_module_json_format_reaches_loki_with_the_time_it_was_logged(peer,
                                                                            native_nginx):
    # The recipe without Lua: one logpool_format with escape=json builds the JSON object;
    # its "time" ($msec) is the moment nginx logged the request.
    loki = FakeLoki()
    server = peer(loki)
    pool = json.dumps({"sinks": [{"name": "main", "url": server.url + "/",
                                  "http_format": "loki",
                                  "loki_labels": {"job": "nginx", "host": "edge-1"}}],
                       "periodic_flush_ms": 50})
    ng = native_nginx(f"""
        logpool_pool '{pool}';
        logpool_format json escape=json
            '{{"time":$msec,"request_id":"$request_id","uri":"$uri","status":$status}}';
        logpool_log main json;
    """)
    assert ng.requests(100, connections=4) == [200] * 100
    assert ng.quit() == 0
    got = [(ts, json.loads(line)) for _, ts, line in loki.entries]
    assert_exactly_once(ng.access_ids(), [doc["request_id"] for _, doc in got])
    assert all(ts == round(doc["time"] * 1e6) * 1000 for ts, doc in got)
    assert {json.dumps(labels) for labels, _, _ in loki.entries} == {
        json.dumps({"job": "nginx", "host": "edge-1"})}
