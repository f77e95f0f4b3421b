"""What every backend format shares (http_format elasticsearch, loki, otlp, otlp_json,
splunk_hec, clickhouse, datadog; and Fluent forward): each works with its defaults alone,
its keys are checked and documented, encoders are pure, and a real nginx ships every request
once across a reload. Each format's own tests, against a strict scripted receiver built from
its published API, are in test_<format>.py (test_elasticsearch.py, test_loki.py,
test_otlp.py, test_splunk_hec.py, test_clickhouse.py, test_datadog.py, test_forward.py)."""
import urllib.parse

import pytest

import logpool
import logpool.config
from logpool.transports.formats import FORMATS
from test_elasticsearch import FakeElasticsearch
from test_otlp import FakeCollector


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


def test_every_backend_key_is_documented_with_its_default():
    import os
    from logpool.transports.forward import OPTIONS as FORWARD_OPTIONS
    from logpool.transports.formats import all_options
    docs = open(os.path.join(os.path.dirname(__file__), "..", "docs", "transports.md")).read()
    for key in [*all_options(), *FORWARD_OPTIONS]:
        assert f"`{key}`" in docs, key
    for name in FORMATS:
        assert f"`{name}`" in docs or f'"{name}"' in docs, name
