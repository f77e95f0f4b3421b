"""What a collector's answer does to each message, for every HTTP format, against scripted
collectors that answer as the backends' published APIs do (OTLP/HTTP's status rules,
Elasticsearch's per-item _bulk statuses, Splunk HEC's codes and indexer acknowledgement,
Datadog's intake statuses, ClickHouse's exception codes): the answer tables, and the poison
cells: one record refused for ever (every good record delivered once, the record rejected
alone), 500 for ever for everything (nothing rejected: an outage), Elasticsearch answering
429 to 10 % of the items (only those sent again: no document indexed twice)."""
import json
import re
import threading

import pytest

from conftest import wait_for
from httppeer import assert_logged, response
from logpool.transports.formats import FORMATS

FAST = {"retry_interval_ms": 10, "max_retry_interval_ms": 200, "periodic_flush_ms": 10}
SEQ = re.compile(rb'"seq": ?(\d+)')


def records(fmt, body):
    """The records of a request body, as bytes, in order (each carries its "seq")."""
    if fmt in ("ndjson", "clickhouse"):
        return body.splitlines()
    if fmt in ("json_array", "datadog"):
        return [json.dumps(r).encode() for r in json.loads(body)]
    if fmt == "elasticsearch":
        return body.splitlines()[1::2]
    if fmt == "loki":
        return [line.encode() for s in json.loads(body)["streams"] for _, line in s["values"]]
    if fmt == "splunk_hec":
        return [json.dumps(json.loads(line)["event"]).encode() for line in body.splitlines()]
    if fmt == "otlp_json":
        return [r["body"]["stringValue"].encode() for rl in json.loads(body)["resourceLogs"]
                for sl in rl["scopeLogs"] for r in sl["logRecords"]]
    if fmt == "otlp":
        from opentelemetry.proto.collector.logs.v1 import logs_service_pb2
        req = logs_service_pb2.ExportLogsServiceRequest.FromString(body)
        return [r.body.string_value.encode() for rl in req.resource_logs
                for sl in rl.scope_logs for r in sl.log_records]
    raise AssertionError(fmt)


OK = {"elasticsearch": lambda n: response(200, json.dumps({"errors": False, "items": []})),
      "splunk_hec": lambda n: response(200, '{"text":"Success","code":0}'),
      "loki": lambda n: response(204),
      "datadog": lambda n: response(202, "{}")}


class Collector:
    """A backend of format `fmt`: stores the records of the requests it takes; `refuse(recs)`
    returns the raw answer for a request it refuses, or None to take it."""

    def __init__(self, fmt, refuse=lambda recs: None):
        self.fmt, self.refuse = fmt, refuse
        self.stored = []  # seqs, in the order stored
        self.requests = 0
        self.lock = threading.Lock()

    def __call__(self, request):
        if request.method == "GET":  # ClickHouse's version probe
            return [response(200, "23.8.2.7\n")]
        recs = records(self.fmt, request.body)
        with self.lock:
            self.requests += 1
            answer = self.refuse(recs)
            if answer is not None:
                return [answer]
            self.stored += [int(SEQ.search(r).group(1)) for r in recs]
        return [OK.get(self.fmt, lambda n: response(200))(len(recs))]


def sink(server, fmt, **extra):
    return {"sinks": [{"url": server.url + "/", "http_format": fmt, **extra}], **FAST}


def poison_answer(fmt, recs):
    """How `fmt`'s backend refuses a request holding the poison record, in its own words."""
    bad = [i for i, r in enumerate(recs) if b"poison" in r]
    if not bad:
        return None
    if fmt == "elasticsearch":  # per item: a mapping error for that document alone
        return None
    if fmt == "splunk_hec":  # HEC names the event; it indexed the ones before it
        return response(400, json.dumps({"text": "Invalid data format", "code": 6,
                                         "invalid-event-number": bad[0]}))
    if fmt == "clickhouse":  # 18.16: a 500 without the header, the code in the body
        return response(500, "Code: 27, e.displayText() = DB::Exception: Cannot parse "
                             "input: expected { before: poison, e.what() = DB::Exception")
    return response(400, "refused: a record this collector will never take")


@pytest.mark.parametrize("fmt", sorted(FORMATS))
def test_one_record_refused_for_ever_is_rejected_alone_and_the_rest_delivered_once(
        peer, pools, capfd, fmt):
    def refuse(recs):
        if fmt == "elasticsearch" and any(b"poison" in r for r in recs):
            items = [{"create": {"status": 400, "error": {
                "type": "mapper_parsing_exception", "reason": "failed to parse"}}}
                if b"poison" in r else {"create": {"status": 201}} for r in recs]
            collector.stored += [int(SEQ.search(r).group(1)) for r in recs
                                 if b"poison" not in r]
            return response(200, json.dumps({"errors": True, "items": items}))
        if fmt == "splunk_hec":
            bad = [i for i, r in enumerate(recs) if b"poison" in r]
            if bad:
                collector.stored += [int(SEQ.search(r).group(1)) for r in recs[:bad[0]]]
        return poison_answer(fmt, recs)
    collector = Collector(fmt, refuse)
    server = peer(collector)
    pool = pools(sink(server, fmt))
    n = 200
    for i in range(n):
        pool.log(0, json.dumps({"seq": i, **({"poison": True} if i == 71 else {})}).encode())
    pool.flush(timeout=60)
    assert sorted(collector.stored) == [i for i in range(n) if i != 71]  # each once
    st = pool.stats(0)
    assert st["dropped_rejected"] == 1 and st["sent_messages"] == n - 1
    assert st["resent_messages"] == 0  # every answer was seen: no duplicate possible
    assert_logged(capfd, "dropped_rejected")


@pytest.mark.parametrize("fmt", sorted(FORMATS))
def test_500_for_ever_for_everything_rejects_nothing(peer, pools, fmt):
    collector = Collector(fmt, lambda recs: response(500, "Internal Server Error"))
    server = peer(collector)
    pool = pools(sink(server, fmt))
    n = 50
    for i in range(n):
        pool.log(0, json.dumps({"seq": i}).encode())
    wait_for(lambda: collector.requests >= 12, what="the collector asked again and again")
    st = pool.stats(0)
    assert st["dropped_rejected"] == 0 and st["sent_messages"] == 0  # an outage: all held
    assert pool.close(timeout=0.2) == n  # abandoned at close, counted: never rejected


def refusal_naming_no_record(fmt):
    """`fmt`'s backend refusing a whole request for its data, naming no record."""
    if fmt == "splunk_hec":
        return response(400, json.dumps({"text": "Invalid data format", "code": 6}))
    if fmt == "clickhouse":
        return response(500, "Code: 27, e.displayText() = DB::Exception: Cannot parse input")
    return response(400, "refused")


@pytest.mark.parametrize("fmt", sorted(FORMATS))
def test_every_part_refused_alike_is_held_never_rejected(peer, pools, fmt):
    # A collector that refuses every request for its data (naming no record) for a while,
    # then recovers: narrowing finds no record refused while others succeed, so it holds
    # the batch on the retry schedule; once the collector recovers every record arrives.
    refusals = 25

    def refuse(recs):
        if collector.requests <= refusals:
            return refusal_naming_no_record(fmt)
        return None
    collector = Collector(fmt, refuse)
    server = peer(collector)
    pool = pools(sink(server, fmt))
    n = 32
    for i in range(n):
        pool.log(0, json.dumps({"seq": i}).encode())
    pool.flush(timeout=60)
    assert sorted(collector.stored) == list(range(n))
    st = pool.stats(0)
    assert st["dropped_rejected"] == 0 and st["sent_messages"] == n


@pytest.mark.parametrize("id_field", [None, "id"])
def test_elasticsearch_429_on_ten_percent_of_items_sends_those_alone(peer, pools, id_field):
    # ES's normal back-pressure: es_rejected_execution_exception for some items of a batch.
    # Only those go again: no document is indexed twice, even without an _id.
    attempts = {}
    indexed = []
    lock = threading.Lock()

    def answer(request):
        lines = request.body.splitlines()
        items = []
        with lock:
            for action, doc in zip(lines[0::2], lines[1::2]):
                seq = json.loads(doc)["seq"]
                attempts[seq] = attempts.get(seq, 0) + 1
                if seq % 10 == 3 and attempts[seq] == 1:
                    items.append({"create": {"status": 429, "error": {
                        "type": "es_rejected_execution_exception", "reason": "queue full"}}})
                else:
                    indexed.append(seq)
                    items.append({"create": {"status": 201}})
        return [response(200, json.dumps({"errors": True, "items": items}))]
    server = peer(answer)
    extra = {"elasticsearch_id_field": id_field} if id_field else {}
    pool = pools(sink(server, "elasticsearch", **extra))
    n = 2000
    for i in range(n):
        pool.log(0, json.dumps({"seq": i, "id": f"d{i}"}).encode())
    pool.flush(timeout=60)
    assert sorted(indexed) == list(range(n))  # 0 documents indexed twice
    st = pool.stats(0)
    assert st["sent_messages"] == n and st["dropped_rejected"] == 0
    assert st["retried_messages"] == n // 10 and st["resent_messages"] == 0


# -- OTLP/HTTP: retry only 429, 502, 503, 504 -------------------------------------------------

@pytest.mark.parametrize("fmt", ["otlp", "otlp_json"])
@pytest.mark.parametrize("status", [429, 502, 503, 504])
def test_otlp_retryable_statuses_send_the_same_request_again(peer, pools, fmt, status):
    bodies = []

    def refuse(recs):
        bodies.append(recs)
        return response(status, "later", {"Retry-After": "0"}) if len(bodies) <= 2 else None
    collector = Collector(fmt, refuse)
    server = peer(collector)
    pool = pools(sink(server, fmt, **{"periodic_flush_ms": 300}))
    for i in range(10):
        pool.log(0, json.dumps({"seq": i}).encode())
    pool.flush(timeout=30)
    assert collector.stored == list(range(10))
    assert bodies[0] == bodies[1] == bodies[2]  # the same request each time
    st = pool.stats(0)
    assert st["retried_messages"] == 20 and st["dropped_rejected"] == 0


@pytest.mark.parametrize("fmt", ["otlp", "otlp_json"])
@pytest.mark.parametrize("status", [400, 401, 403, 404, 500, 501, 505])
def test_otlp_other_statuses_are_not_retried_as_is(peer, pools, fmt, status):
    # Not retryable: the request is never sent again as it was. Refused once (a collector
    # that then recovers): narrowed into halves, which go through; nothing is lost.
    seen = []

    def refuse(recs):
        seen.append(tuple(recs))
        return response(status, "no") if len(seen) == 1 else None
    collector = Collector(fmt, refuse)
    server = peer(collector)
    pool = pools(sink(server, fmt, **{"periodic_flush_ms": 300}))
    for i in range(10):
        pool.log(0, json.dumps({"seq": i}).encode())
    pool.flush(timeout=30)
    assert sorted(collector.stored) == list(range(10))
    assert seen[1] != seen[0] and len(seen[1]) < len(seen[0])  # a part, not the same request
    assert pool.stats(0)["dropped_rejected"] == 0


def test_otlp_partial_success_rejects_the_count_with_the_error_message(peer, pools, capfd):
    answer = json.dumps({"partialSuccess": {"rejectedLogRecords": "2",
                                            "errorMessage": "2 records too big"}})
    collector = Collector("otlp_json")
    server = peer(lambda request: collector(request) and [response(200, answer)])
    pool = pools(sink(server, "otlp_json", **{"periodic_flush_ms": 300}))
    for i in range(10):
        pool.log(0, json.dumps({"seq": i}).encode())
    pool.flush(timeout=30)
    st = pool.stats(0)
    assert st["dropped_rejected"] == 2 and st["sent_messages"] == 8
    assert collector.requests == 1
    assert_logged(capfd, "2 records too big")


# -- Splunk HEC: its status codes and indexer acknowledgement ---------------------------------

@pytest.mark.parametrize("status, code, kept", [
    (403, 1, True), (401, 2, True), (401, 3, True), (403, 4, True), (400, 7, True),
    (400, 10, True), (400, 11, True), (400, 14, True), (400, 16, True),
    (503, 9, False), (500, 8, False)])
def test_splunk_hec_codes_keep_or_retry_the_data(peer, pools, capfd, status, code, kept):
    answers = [response(status, json.dumps({"text": "scripted", "code": code}))] * 2
    collector = Collector("splunk_hec", lambda recs: answers.pop() if answers else None)
    server = peer(collector)
    pool = pools(sink(server, "splunk_hec"))
    for i in range(5):
        pool.log(0, json.dumps({"seq": i}).encode())
    pool.flush(timeout=30)
    assert collector.stored == list(range(5))
    st = pool.stats(0)
    assert st["dropped_rejected"] == 0 and st["sent_messages"] == 5
    err = capfd.readouterr().err
    assert f"code {code}" in err
    if kept:
        assert "(a token, index, channel or input setting)" in err


def test_splunk_hec_data_code_without_an_event_number_is_narrowed(peer, pools):
    def refuse(recs):
        if any(b"poison" in r for r in recs):
            return response(400, json.dumps({"text": "No data", "code": 5}))
        return None
    collector = Collector("splunk_hec", refuse)
    server = peer(collector)
    pool = pools(sink(server, "splunk_hec"))
    for i in range(40):
        pool.log(0, json.dumps({"seq": i, **({"poison": 1} if i == 9 else {})}).encode())
    pool.flush(timeout=30)
    assert sorted(collector.stored) == [i for i in range(40) if i != 9]
    assert pool.stats(0)["dropped_rejected"] == 1


class HecWithAck:
    """HEC with useACK: code 0 and an ackId per request on the channel; the events count as
    indexed once `indexed_after` polls asked for that ackId (never, when None)."""

    def __init__(self, indexed_after=2):
        self.indexed_after = indexed_after
        self.events, self.acks, self.polls = {}, {}, {}
        self.channels, self.next_id = set(), 0
        self.lock = threading.Lock()

    def __call__(self, request):
        channel = request.headers.get("x-splunk-request-channel")
        assert channel, "useACK needs a channel on every request"
        with self.lock:
            self.channels.add(channel)
            if request.path.startswith("/services/collector/ack"):
                assert f"channel={channel}" in request.path
                asked = json.loads(request.body)["acks"]
                out = {}
                for ack_id in asked:
                    self.polls[ack_id] = self.polls.get(ack_id, 0) + 1
                    out[str(ack_id)] = (self.indexed_after is not None
                                        and self.polls[ack_id] >= self.indexed_after)
                return [response(200, json.dumps({"acks": out}))]
            ack_id, self.next_id = self.next_id, self.next_id + 1
            self.acks[ack_id] = records("splunk_hec", request.body)
            return [response(200, json.dumps({"text": "Success", "code": 0,
                                              "ackId": ack_id}))]


def test_splunk_hec_ack_releases_events_once_indexed(peer, pools):
    hec = HecWithAck(indexed_after=3)
    server = peer(hec)
    pool = pools(sink(server, "splunk_hec", splunk_hec_ack=True))
    for i in range(20):
        pool.log(0, json.dumps({"seq": i}).encode())
    pool.flush(timeout=30)
    st = pool.stats(0)
    assert st["sent_messages"] == 20 and st["resent_messages"] == 0
    assert len(hec.channels) == 1
    assert all(hec.polls[ack_id] == 3 for ack_id in hec.acks)  # released only once indexed
    assert sorted(int(SEQ.search(r).group(1)) for recs in hec.acks.values()
                  for r in recs) == list(range(20))


def test_splunk_hec_ack_never_given_sends_again_and_close_ends_the_wait(peer, pools):
    hec = HecWithAck(indexed_after=None)
    server = peer(hec)
    pool = pools(sink(server, "splunk_hec", splunk_hec_ack=True,
                      splunk_hec_ack_timeout_ms=300))
    for i in range(5):
        pool.log(0, json.dumps({"seq": i}).encode())
    wait_for(lambda: len(hec.acks) >= 2, what="the events sent again after the ack timeout")
    st = pool.stats(0)
    assert st["sent_messages"] == 0 and st["resent_messages"] >= 5  # received, maybe indexed
    import time
    started = time.monotonic()
    assert pool.close(timeout=0.2) == 5
    assert time.monotonic() - started < 5  # close ends the wait for an acknowledgement


# -- Datadog: the intake's statuses -----------------------------------------------------------

@pytest.mark.parametrize("status, kind", [(400, "narrowed"), (401, "kept"), (403, "kept"),
                                          (408, "retried"), (429, "retried"), (500, "retried"),
                                          (503, "retried")])
def test_datadog_intake_statuses(peer, pools, capfd, status, kind):
    answers = [response(status, '{"errors":["scripted"]}')]
    collector = Collector("datadog", lambda recs: answers.pop() if answers else None)
    server = peer(collector)
    pool = pools(sink(server, "datadog", **{"periodic_flush_ms": 300}))
    for i in range(8):
        pool.log(0, json.dumps({"seq": i}).encode())
    pool.flush(timeout=30)
    assert sorted(collector.stored) == list(range(8))
    st = pool.stats(0)
    assert st["dropped_rejected"] == 0 and st["retried_messages"] == 8
    if kind == "kept":
        assert "the data is kept" in capfd.readouterr().err
