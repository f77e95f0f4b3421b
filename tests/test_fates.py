"""Every message one fate, at the engine: a per-item answer resends only the items that
failed (never the delivered ones behind them), items refused for good are rejected alone,
counted per kind of reason and appended to the dead-letter file, and the counters tell a
resend after an unseen answer (a duplicate is possible) from one after a refusal."""
import base64
import json
import os

import logpool
from backends import FAST, log_all
from conftest import wait_for
from test_elasticsearch import FakeElasticsearch


def es_pool(pools, peer, es, **extra):
    server = peer(es)
    return pools({"sinks": [{"url": server.url + "/", "http_format": "elasticsearch",
                             "name": "es", **extra}], **FAST})


def test_elasticsearch_429_on_a_tenth_of_the_items_indexes_nothing_twice_without_ids(
        peer, pools):
    # Elasticsearch's normal back-pressure: es_rejected_execution_exception for some items
    # of a batch. Without _id nothing stops a document sent again from being indexed again.
    es = FakeElasticsearch(lambda doc, attempt: 429 if doc["seq"] % 10 == 3 and attempt == 1
                           else None)
    pool = es_pool(pools, peer, es, flush_limit=1 << 20, periodic_flush_ms=200)
    n = 2000
    for i in range(n):
        pool.log(0, json.dumps({"seq": i}).encode())
    pool.flush(timeout=60)
    stored = sorted(doc["seq"] for doc in es.order)
    assert stored == list(range(n))  # every document exactly once
    st = pool.stats(0)
    assert st["sent_messages"] == n and st["dropped_rejected"] == 0
    assert st["retried_messages"] == n // 10  # only the refused items went again
    assert st["resent_messages"] == 0  # no answer went unseen: no duplicate was possible
    assert sum(es.attempts.values()) == n + n // 10


def test_an_item_refused_for_good_goes_to_the_dead_letter_file_with_its_reason(
        peer, pools, tmp_path):
    es = FakeElasticsearch(lambda doc, attempt: 400 if doc.get("seq") == 7
                           or "not utf-8" in doc.get("message", "") else None)
    dead = tmp_path / "dead.jsonl"
    pool = es_pool(pools, peer, es, dead_letter_path=str(dead))
    lines = [json.dumps({"seq": i}).encode() for i in range(20)] + [b"\xff\xfe not utf-8"]
    log_all(pool, lines)
    assert sorted(doc.get("seq") for doc in es.order if "seq" in doc) == \
        [i for i in range(20) if i != 7]
    st = pool.stats(0)
    assert st["dropped_rejected"] == 2 and st["dead_letters"] == 2 and st["sent_messages"] == 19
    entries = [json.loads(line) for line in dead.read_text().splitlines()]
    assert [e.get("message") for e in entries] == ['{"seq": 7}', None]
    assert base64.b64decode(entries[1]["message_base64"]) == b"\xff\xfe not utf-8"
    assert all(e["sink"] == "es" and "mapper_parsing_exception" in e["reason"]
               for e in entries)
    assert oct(os.stat(dead).st_mode & 0o777) == "0o600"
    text = pool.metrics()
    kinds = [line for line in text.splitlines()
             if line.startswith("logpool_rejected_messages_total{")]
    assert len(kinds) == 1 and kinds[0].endswith(" 2.0"), kinds


def test_the_dead_letter_file_is_rotated_once_at_its_bound(peer, pools, tmp_path):
    es = FakeElasticsearch(lambda doc, attempt: 400)
    dead = tmp_path / "dead.jsonl"
    pool = es_pool(pools, peer, es, dead_letter_path=str(dead), dead_letter_max_bytes=4096)
    log_all(pool, [json.dumps({"seq": i, "pad": "x" * 100}).encode() for i in range(200)])
    assert pool.stats(0)["dead_letters"] == 200
    assert os.path.getsize(dead) <= 4096 and os.path.getsize(str(dead) + ".1") <= 4096
    kept = [json.loads(line)["message"] for path in (str(dead) + ".1", dead)
            for line in open(path).read().splitlines()]
    assert [json.loads(m)["seq"] for m in kept] == list(range(200 - len(kept), 200))


def test_an_unwritable_dead_letter_file_is_said_once_and_counts_stay_right(
        peer, pools, tmp_path, capfd):
    es = FakeElasticsearch(lambda doc, attempt: 400 if doc["seq"] % 2 else None)
    pool = es_pool(pools, peer, es, dead_letter_path=str(tmp_path / "no" / "such" / "dir"))
    log_all(pool, [json.dumps({"seq": i}).encode() for i in range(10)])
    st = pool.stats(0)
    assert st["dropped_rejected"] == 5 and st["dead_letters"] == 0 and st["sent_messages"] == 5
    err = wait_for(lambda: capfd.readouterr().err, what="the error line")
    assert "dead letters not written" in err and "No such file or directory" in err


def test_dead_letter_keys_are_checked(tmp_path):
    import pytest
    with pytest.raises(logpool.ConfigError, match="dead_letter_path: must be an absolute file"):
        logpool.Pool({"sinks": [{"url": "udp://127.0.0.1:9"}], "dead_letter_path": "rel.jsonl"})
    with pytest.raises(logpool.ConfigError, match="dead_letter_max_bytes"):
        logpool.Pool({"sinks": [{"url": "udp://127.0.0.1:9", "dead_letter_max_bytes": 0}]})


def relp_refusing(refuse):
    """A RELP collector answering "rsp 500" to every message refuse(data) names, for ever,
    and 200 to the others; a refusal does not end its session."""
    import peers

    def session(conn):
        peers.relp_open(conn)
        while True:
            txnr, command, data = peers.relp_frame(conn)
            if command == b"close":
                conn.send(b"%d rsp 0\n" % txnr)
                return
            if refuse(data):
                conn.send(b"%d rsp 16 500 not accepted\n" % txnr)
            else:
                conn.peer.take([data + b"\n"])
                conn.send(b"%d rsp 6 200 OK\n" % txnr)
    return session


def test_a_relp_message_refused_for_ever_is_rejected_alone_and_the_rest_flows(pools, tmp_path):
    import peers
    from conftest import message, parse_line
    peer = peers.Peer(relp_refusing(lambda data: data.startswith(b"0 7 ")))
    try:
        pool = pools({"sinks": [{"url": peer.url("relp"), "name": "edge"}], **FAST,
                      "dead_letter_path": str(tmp_path / "dead.jsonl")})
        for i in range(50):
            pool.log(0, message(0, i))
        pool.flush(timeout=60)
        st = pool.stats(0)
        taken = [parse_line(m)[1] for m in peer.taken]
    finally:
        peer.close()
    assert sorted(set(taken)) == [i for i in range(50) if i != 7]
    assert st["dropped_rejected"] == 1 and st["sent_messages"] == 49
    assert st["write_errors"] == 1  # refused once: one new session, then held and rejected
    entry = json.loads((tmp_path / "dead.jsonl").read_text())
    assert entry["message"].startswith("0 7 ") and "500 not accepted" in entry["reason"]
    assert len(taken) - len(set(taken)) <= st["resent_messages"]


def test_a_relp_collector_refusing_everything_rejects_nothing(pools):
    import peers
    from conftest import message
    peer = peers.Peer(relp_refusing(lambda data: True))
    try:
        pool = pools({"sinks": [{"url": peer.url("relp"), "name": "edge"}], **FAST})
        for i in range(20):
            pool.log(0, message(0, i))
        wait_for(lambda: pool.stats(0)["write_errors"] >= 3, what="several refused sessions")
        st = pool.stats(0)
    finally:
        peer.close()
    assert st["dropped_rejected"] == 0 and st["sent_messages"] == 0  # an outage: all held


def test_relp_refusals_of_different_messages_are_one_kind_of_reason(pools, capfd):
    # The kind (Prometheus' reason label, the log line said once per kind) must not carry
    # the command's txnr: two refused messages with the same answer are one kind.
    import peers
    from conftest import message
    peer = peers.Peer(relp_refusing(lambda data: data.startswith((b"0 7 ", b"0 30 "))))
    try:
        pool = pools({"sinks": [{"url": peer.url("relp"), "name": "edge"}], **FAST})
        for i in range(50):
            pool.log(0, message(0, i))
        pool.flush(timeout=60)
        st = pool.stats(0)
    finally:
        peer.close()
    assert st["dropped_rejected"] == 2 and st["sent_messages"] == 48
    kinds = [line for line in pool.metrics().splitlines()
             if line.startswith("logpool_rejected_messages_total{")]
    assert len(kinds) == 1 and kinds[0].endswith(" 2.0"), kinds
    assert 'reason="RELP rsp 500"' in kinds[0], kinds


def test_a_dead_letter_path_that_is_a_fifo_never_blocks_the_writer(peer, pools, tmp_path,
                                                                   capfd):
    # open(O_WRONLY) of a FIFO without a reader blocks until one comes: the writer would
    # hang there (flush and close with it). A path that is not a regular file is refused.
    es = FakeElasticsearch(lambda doc, attempt: 400 if doc["seq"] == 3 else None)
    dead = tmp_path / "dead.jsonl"
    os.mkfifo(dead)
    pool = es_pool(pools, peer, es, dead_letter_path=str(dead))
    try:
        for i in range(10):
            pool.log(0, json.dumps({"seq": i}).encode())
        pool.flush(timeout=10)
        st = pool.stats(0)
        assert st["dropped_rejected"] == 1 and st["dead_letters"] == 0
        assert st["sent_messages"] == 9
        err = wait_for(lambda: capfd.readouterr().err, what="the error line")
        assert "dead letters not written" in err and "not a regular file" in err, err
    finally:
        fd = os.open(dead, os.O_RDONLY | os.O_NONBLOCK)  # frees a writer stuck in open()
        pool.close(5)
        os.close(fd)


def test_items_retried_for_different_reasons_at_the_end_of_a_batch_are_all_counted(
        peer, pools):
    es = FakeElasticsearch(lambda doc, attempt: {8: 429, 9: 503}.get(doc["seq"])
                           if attempt == 1 else None)
    pool = es_pool(pools, peer, es, flush_limit=1 << 20, periodic_flush_ms=200)
    log_all(pool, [json.dumps({"seq": i}).encode() for i in range(10)])
    assert sorted(doc["seq"] for doc in es.order) == list(range(10))
    st = pool.stats(0)
    assert st["retried_messages"] == 2 and st["resent_messages"] == 0


def test_workers_sharing_a_dead_letter_file_follow_each_others_rotation(peer, pools, tmp_path):
    # nginx's workers share the sink's dead_letter_path. One that rotated the file must not
    # leave another appending to PATH.1 (past the bound, and unlinked at the next rotation:
    # its dead letters lost).
    dead = tmp_path / "dead.jsonl"
    a = es_pool(pools, peer, FakeElasticsearch(lambda doc, attempt: 400),
                dead_letter_path=str(dead), dead_letter_max_bytes=4096)
    b = es_pool(pools, peer, FakeElasticsearch(lambda doc, attempt: 400),
                dead_letter_path=str(dead), dead_letter_max_bytes=4096)

    def reject(pool, tag, n):
        log_all(pool, [json.dumps({"seq": i, "tag": tag, "pad": "x" * 60}).encode()
                       for i in range(n)])

    def files():
        return [p for p in (dead, tmp_path / "dead.jsonl.1") if p.exists()]
    reject(b, "b-first", 1)  # b's file is open
    reject(a, "a", 30)  # a rotates it
    assert (tmp_path / "dead.jsonl.1").exists()
    reject(b, "b-late", 1)
    assert os.path.getsize(tmp_path / "dead.jsonl.1") <= 4096
    reject(a, "a-again", 10)  # fills the file b-late is in and rotates it once more
    assert all(os.path.getsize(p) <= 4096 for p in files())
    tags = [json.loads(json.loads(line)["message"])["tag"]
            for p in files() for line in p.read_text().splitlines()]
    assert "b-late" in tags, tags


def test_a_refusal_reason_that_is_not_valid_unicode_is_written_and_exposed(peer, pools,
                                                                          tmp_path):
    # JSON may escape a lone surrogate ("\ud800"), which no UTF-8 encoder takes: a reason
    # carrying one must not stop the dead-letter file, the metrics page or the sink.
    from httppeer import response

    def answer(request):
        lines = request.body.split(b"\n")[:-1]
        docs = [json.loads(doc) for doc in lines[1::2]]
        items = [{"create": {"status": 400, "error": {"type": "bad\\ud800", "reason": "x"}}}
                 if doc["seq"] == 2 else {"create": {"status": 201}} for doc in docs]
        body = json.dumps({"errors": True, "items": items}).replace("\\\\ud800", "\\ud800")
        return [response(200, body, {"Content-Type": "application/json"})]
    dead = tmp_path / "dead.jsonl"
    pool = es_pool(pools, peer, answer, dead_letter_path=str(dead))
    log_all(pool, [json.dumps({"seq": i}).encode() for i in range(5)])
    st = pool.stats(0)
    assert st["sent_messages"] == 4 and st["dropped_rejected"] == 1
    assert st["dead_letters"] == 1 and st["writer_errors"] == 0
    assert json.loads(dead.read_text())["message"] == '{"seq": 2}'
    assert "logpool_rejected_messages_total{" in pool.metrics()
