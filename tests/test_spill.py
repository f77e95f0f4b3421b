"""The spool, third round: spilling never waits for the transport. Whatever the writer is
doing (blocked awaiting an HTTP answer, in an opening exchange, catching up on a backlog),
producers are refused only when memory and the spool are both full; possible duplicates are
counted across generations; losses are reported within a second; a backlog adopted for a
re-pointed sink is said."""
import threading
import time

import logpool
from conftest import message, parse_line, sock_path, wait_for
from httppeer import CLOSE, response

FAST = {"retry_interval_ms": 20, "max_retry_interval_ms": 100}
BUFFER = 64 * 1024


def spill_config(url, spool_dir, **extra):
    return {"sinks": [{"url": url, "name": "app"}], "spool_dir": str(spool_dir),
            "max_buffer_length": BUFFER, "periodic_flush_ms": 20, **FAST, **extra}


class HungCollector:
    """An HTTP collector that takes requests and never answers while `hung` is set (the
    request waits in its serving thread); once released it closes those connections and
    answers 200 to everything. Records which messages it acknowledged and which it saw
    without answering (a hung collector may still have stored those)."""

    def __init__(self, peer):
        self.hung = threading.Event()
        self.released = threading.Event()
        self.lock = threading.Lock()
        self.acked, self.unanswered = [], []
        self.peer = peer(self.answer)
        self.url = self.peer.url + "/"

    def answer(self, request):
        lines = [parse_line(line + b"\n")[1] for line in request.body.splitlines()]
        if self.hung.is_set():
            with self.lock:
                self.unanswered += lines
            self.released.wait()
            return [CLOSE]
        with self.lock:
            self.acked += lines
        return [response(200)]

    def release(self):
        self.hung.clear()
        self.released.set()


def produce_within_memory(pool, n, length=100, chunk=BUFFER // 8, first=0):
    """Log messages first..n-1 in steps of `chunk` bytes, waiting after each step until the buffered
    bytes are back under the spill mark: that happens only if something moves memory to the
    spool while the writer is blocked. A BufferFull fails the test."""
    per_step = max(1, chunk // length)
    base = pool.stats(0)["spool_writes"]
    for start in range(first, n, per_step):
        for i in range(start, min(n, start + per_step)):
            pool.log(0, message(0, i, length=length))
        # Messages of this run still in memory (none is delivered meanwhile); a replayed
        # batch in flight is not the producers' memory and is not counted here.
        logged = min(n, start + per_step) - first
        wait_for(lambda: (logged - (pool.stats(0)["spool_writes"] - base)) * length
                 <= BUFFER // 2 + chunk, timeout=20,
                 what="the spill while the writer cannot deliver")


def test_a_hung_http_collector_never_makes_producers_efull_while_the_spool_has_room(
        tmp_path, peer):
    collector = HungCollector(peer)
    collector.hung.set()
    # The writer is blocked awaiting the answer for the whole run (send_timeout_ms 60 s).
    pool = logpool.Pool(spill_config(collector.url, tmp_path / "spool",
                                     send_timeout_ms=60000))
    try:
        pool.log(0, message(0, 0, length=100))
        wait_for(lambda: len(collector.unanswered) == 1, what="a first request in flight")
        total = 1 + 20 * BUFFER // 100
        per_step = BUFFER // 8 // 100
        for first in range(1, total, per_step):
            for i in range(first, min(total, first + per_step)):
                pool.log(0, message(0, i, length=100))
            wait_for(lambda: pool.stats(0)["buffered_bytes"] <= BUFFER // 2 + BUFFER // 8,
                     timeout=20, what="the spill while the writer awaits an answer")
        st = pool.stats(0)
        assert st["dropped_full"] == 0 and st["spool_writes"] > 0
        assert st["write_errors"] == 0  # the writer never left its wait for the answer
        collector.release()
        pool.flush(timeout=60)
        st = pool.stats(0)
        assert st["sent_messages"] == total and st["dropped_full"] == 0
        with collector.lock:
            assert sorted(collector.acked) == list(range(total))  # every one, once
            # Order: the batch in flight, then the spool, then memory.
            assert collector.acked == sorted(collector.acked)
    finally:
        collector.release()
        pool.close(5)


def test_lines_logged_during_a_catch_up_go_behind_the_backlog_and_none_is_refused(
        tmp_path, peer):
    collector = HungCollector(peer)
    url = "unix:" + sock_path(tmp_path, "down.sock")  # down first: a backlog builds up
    spool = tmp_path / "spool"
    pool = logpool.Pool(spill_config(url, spool))
    n = 10 * BUFFER // 100
    produce_within_memory(pool, n)
    assert pool.close(5) == 0
    # Back, slow: the new generation replays the backlog while new lines arrive.
    collector.hung.set()
    again = logpool.Pool(spill_config(collector.url, spool, send_timeout_ms=60000))
    try:
        wait_for(lambda: len(collector.peer.requests) > 0, what="the replay in flight")
        produce_within_memory(again, 3 * n, first=n)
        assert again.stats(0)["dropped_full"] == 0
        collector.release()
        again.flush(timeout=60)
        with collector.lock:
            assert collector.acked == list(range(3 * n))  # once each, in order
    finally:
        collector.release()
        again.close(5)


def test_a_batch_spooled_unanswered_at_exit_is_counted_as_possible_duplicates_when_resent(
        tmp_path, peer):
    collector = HungCollector(peer)
    collector.hung.set()
    spool = tmp_path / "spool"
    pool = logpool.Pool(spill_config(collector.url, spool, send_timeout_ms=60000))
    n = 50
    for i in range(n):
        pool.log(0, message(0, i, length=100))
    wait_for(lambda: len(collector.unanswered) == n, what="the batch at the hung collector")
    assert pool.close(0.5) == 0  # the unanswered batch goes to the spool, marked
    first = pool.stats(0)
    collector.release()
    again = logpool.Pool(spill_config(collector.url, spool))
    try:
        again.flush(timeout=60)
        st = again.stats(0)
        with collector.lock:
            assert sorted(collector.acked) == list(range(n))
            # The hung collector may have stored what it never answered: those are the
            # possible duplicates, and the counters over both generations cover them.
            duplicates = len(set(collector.unanswered) & set(collector.acked))
        assert duplicates == n
        assert st["resent_messages"] + first["resent_messages"] >= duplicates
        assert st["retried_messages"] == 0
    finally:
        again.close(5)


def test_refusals_are_reported_within_a_second_while_the_writer_awaits_an_answer(
        tmp_path, peer, capfd):
    collector = HungCollector(peer)
    collector.hung.set()
    pool = logpool.Pool({"sinks": [{"url": collector.url, "name": "app"}],
                         "max_buffer_length": BUFFER, "send_timeout_ms": 60000, **FAST})
    try:
        pool.log(0, message(0, 0, length=100))
        wait_for(lambda: len(collector.unanswered) == 1, what="a request in flight")
        refused = 0
        while refused == 0:
            try:
                pool.log(0, message(0, 1, length=100))
            except logpool.BufferFull:
                refused += 1
        seen, deadline = "", time.monotonic() + 30
        while "messages lost" not in seen and time.monotonic() < deadline:
            seen += capfd.readouterr().err
            time.sleep(0.01)
        assert 'refused: buffer full' in seen, seen
        assert 'logpool_dropped_messages_total{reason="full"}' in seen
        assert "logpool_abandoned_messages_total" not in seen  # only the counters that moved
        assert pool.stats(0)["write_errors"] == 0  # said from inside the wait for the answer
    finally:
        collector.release()
        pool.close(1)


def test_a_backlog_adopted_for_a_re_pointed_sink_is_said_once_with_both_urls(
        tmp_path, peer, capfd):
    spool = tmp_path / "spool"
    old_url = "unix:" + sock_path(tmp_path, "old.sock")
    pool = logpool.Pool(spill_config(old_url, spool))
    for i in range(100):
        pool.log(0, message(0, i, length=100))
    assert pool.close(0.5) == 0
    collector = HungCollector(peer)
    again = logpool.Pool(spill_config(collector.url, spool))  # the same name, another URL
    try:
        again.flush(timeout=60)
        with collector.lock:
            assert collector.acked == list(range(100))
        err = capfd.readouterr().err
        assert err.count(f"spooled for {old_url}, into this sink's {collector.url}") == 1, err
    finally:
        again.close(5)


def test_a_replayed_batch_left_unanswered_at_exit_counts_as_possible_duplicates_next_time(
        tmp_path, peer):
    # A backlog spooled while the collector was down; the next generation replays it to a
    # collector that hangs (it may store what it never answers) and exits; a third sends
    # the batch again: those duplicates must be within resent_messages over the generations.
    spool = tmp_path / "spool"
    down = logpool.Pool(spill_config("unix:" + sock_path(tmp_path, "down.sock"), spool))
    n = 50
    for i in range(n):
        down.log(0, message(0, i, length=100))
    assert down.close(0.5) == 0
    collector = HungCollector(peer)
    collector.hung.set()
    hung = logpool.Pool(spill_config(collector.url, spool, send_timeout_ms=60000))
    wait_for(lambda: len(collector.unanswered) == n, what="the replayed batch, unanswered")
    assert hung.close(0.5) == 0
    resent = down.stats(0)["resent_messages"] + hung.stats(0)["resent_messages"]
    collector.release()
    again = logpool.Pool(spill_config(collector.url, spool))
    try:
        again.flush(timeout=60)
        resent += again.stats(0)["resent_messages"]
        with collector.lock:
            assert sorted(collector.acked) == list(range(n))
            duplicates = len(set(collector.unanswered) & set(collector.acked))
        assert duplicates == n
        assert resent >= duplicates
    finally:
        again.close(5)


def test_items_retried_from_a_replayed_batch_never_make_producers_efull(tmp_path, peer):
    # A backlog of 2,000 documents (three times max_buffer_length) is replayed in one batch
    # read back from the spool; the first request (16 KiB) gets a 429 for one item, so the
    # item and the rest of the batch read back are requeued. They are still the spool's
    # records, not the producers' share: lines logged meanwhile are not refused.
    import json
    from test_backends import FakeElasticsearch
    spool = tmp_path / "spool"
    down = logpool.Pool(spill_config("unix:" + sock_path(tmp_path, "down.sock"), spool))
    n, extra = 2000, 100
    docs = [json.dumps({"seq": i, "pad": "x" * 80}).encode() for i in range(n + extra)]
    for first in range(0, n, 50):
        for doc in docs[first:first + 50]:
            down.log(0, doc)
        wait_for(lambda: down.stats(0)["buffered_bytes"] <= BUFFER // 2 + 50 * 120,
                 what="the spill while the collector is down")
    assert down.close(0.5) == 0 and down.stats(0)["dropped_full"] == 0
    es = FakeElasticsearch(lambda doc, attempt: 429 if doc["seq"] == 0 and attempt == 1
                           else None)
    release, requests = threading.Event(), []

    def answer(request):
        requests.append(request)
        if len(requests) > 1:
            release.wait(30)  # the requeued items' request hangs while producers log
        return es(request)
    server = peer(answer)
    again = logpool.Pool(spill_config(server.url + "/", spool, http_format="elasticsearch",
                                      http_max_body_bytes=16384, send_timeout_ms=60000))
    try:
        wait_for(lambda: len(requests) >= 2, what="the requeued items in flight")
        for doc in docs[n:]:
            again.log(0, doc)  # BufferFull fails the test
        assert again.stats(0)["dropped_full"] == 0
        release.set()
        again.flush(timeout=60)
        assert sorted(doc["seq"] for doc in es.order) == list(range(n + extra))
    finally:
        release.set()
        again.close(5)


def test_producers_are_spilled_while_the_writer_adopts_a_large_backlog(tmp_path):
    # Reading what an earlier generation left takes about 2 s per GiB (every record's CRC);
    # a reload during an outage leaves up to max_spool_bytes. Lines logged meanwhile pass
    # the spill mark long before that read ends: they must go to the spool, not wait for
    # it (before: no spill until adoption ended, 29,515 of 40,000 lines refused behind a
    # 300 MB backlog at 20 MB/s). The spill of 40 KB is observed while the 64 MB backlog is
    # still being read (a thousand times more bytes: adoption counts it only at its end).
    from logpool.engine.spool import Spool
    spool = tmp_path / "spool"
    backlog = Spool(str(spool / "app"), 1 << 30, lambda *a: None, framing=1,
                    max_message_size=1 << 20, url="unix:/old")
    frame = b"x" * ((64 << 10) - 1) + b"\n"
    for _ in range(16):
        assert backlog.append([frame] * 64)  # 64 MiB in 1,024 records
    backlog.close()
    pool = logpool.Pool(spill_config("unix:" + sock_path(tmp_path, "down.sock"), spool,
                                     max_spool_bytes=1 << 30))
    try:
        n = (BUFFER // 2 + BUFFER // 8) // 100
        for i in range(n):
            pool.log(0, message(0, i, length=100))
        st = wait_for(lambda: (s := pool.stats(0))["spool_writes"] > 0 and s,
                      what="the spill")
        assert st["accepted_messages"] == n  # the backlog is not adopted yet
        wait_for(lambda: pool.stats(0)["accepted_messages"] == n + 1024, what="adoption")
        st = pool.stats(0)
        assert st["spooled_messages"] == n + 1024 and st["dropped_full"] == 0
    finally:
        pool.close(0.5)


class GatedCollector:
    """An HTTP collector that answers 200 to each request only once the test allows it
    (allow(n)): the test sets the pace of delivery, request by request."""

    def __init__(self, peer):
        self.gate = threading.Semaphore(0)
        self.lock = threading.Lock()
        self.acked = []
        self.peer = peer(self.answer)
        self.url = self.peer.url + "/"

    def answer(self, request):
        if not self.gate.acquire(timeout=60):
            return [CLOSE]
        with self.lock:
            self.acked += [parse_line(line + b"\n")[1] for line in request.body.splitlines()]
        return [response(200)]

    def allow(self, n=1):
        for _ in range(n):
            self.gate.release()


def test_room_made_by_a_replayed_batch_is_used_at_once_by_the_spiller(tmp_path, peer):
    # The spool filled up while the collector hung; the spiller then idles for the retry
    # schedule's step (here 10-20 s). Once the collector takes a replayed batch the spool has
    # room again: the producers' chain must go there now, not after that step (meanwhile
    # the writer takes no memory, the spool being not empty: producers refused).
    collector = GatedCollector(peer)
    limit = 2 << 20  # two replay batches (1 MiB each)
    pool = logpool.Pool(spill_config(collector.url, tmp_path / "spool", max_spool_bytes=limit,
                                     retry_interval_ms=20000, max_retry_interval_ms=20000,
                                     send_timeout_ms=60000))
    try:
        pool.log(0, message(0, 0, length=100))
        wait_for(lambda: len(collector.peer.requests) == 1, what="a request in flight")
        seq, full = 1, False
        while not full:  # fill the spool, then memory
            for _ in range(BUFFER // 8 // 100):
                try:
                    pool.log(0, message(0, seq, length=100))
                except logpool.BufferFull:
                    full = True
                    break
                seq += 1
            wait_for(lambda: full or pool.stats(0)["buffered_bytes"] <= BUFFER // 2 + BUFFER // 8
                     or limit - (lambda s: s["spooled_bytes"] + 8 * s["spooled_messages"])(
                         pool.stats(0)) < BUFFER, what="a spill, or a full spool")
        spooled = pool.stats(0)["spool_writes"]
        # Answer request by request until a second batch is read back: the first one was
        # delivered, and the spool has room.
        requests, first = 1, None
        while True:
            collector.allow(1)
            wait_for(lambda: len(collector.peer.requests) > requests, what="the next request")
            requests = len(collector.peer.requests)
            replayed = pool.stats(0)["spool_replayed"]
            if first is None:
                first = replayed
            elif replayed > first:
                break
        wait_for(lambda: pool.stats(0)["spool_writes"] > spooled, timeout=5,
                 what="the chain spilled into the room made")
    finally:
        collector.allow(10000)
        pool.close(1)
