"""The loki http_format (push API) against a strict scripted
receiver built from the backend's published API on a real socket: it checks every request
the way the backend would and answers the backend's documented failures.
Also the nginx recipes that ship JSON lines to Loki with the time they were logged."""
import json
import time

import pytest

import logpool
from conftest import message
from backends import FAST, log_all
from httppeer import assert_logged, response


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


# -- nginx: JSON lines with the time they were logged ----------------------------------------

from test_nginx import (  # noqa: E402,F401 — nginx: the fixture
    assert_exactly_once, logpool_conf, nginx)


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
