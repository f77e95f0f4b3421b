"""The splunk_hec http_format (HTTP Event Collector) against a strict scripted
receiver built from the backend's published API on a real socket: it checks every request
the way the backend would and answers the backend's documented failures."""
import json

import pytest

from backends import FAST, log_all
from httppeer import assert_logged, response, wait_for_log


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
