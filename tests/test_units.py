"""Unit tests of the pure pieces: the retry policy (Backoff), the rate-limited error reports
(ErrorReporter, driven through its clock), the RELP codec, the transport contract's Outcome,
the option schema, and the HTTP answer reader and Retry-After parsing. No threads, no
sleeps: each piece is driven directly (the HTTP reader over a socketpair)."""
import errno
import io
import random
import re
import socket
import time

import pytest

from logpool.engine.backoff import Backoff
from logpool.engine.report import ErrorReporter
from logpool.errors import ConfigError
from logpool.protocols import relp
from logpool.protocols.relp import RelpError, frame, next_txnr, parse_frame, rsp
from logpool.transports import http
from logpool.transports.contract import Fate, Outcome
from logpool.transports.formats.common import Response
from logpool.transports.schema import Option

# -- Backoff -------------------------------------------------------------------------------------


def test_backoff_without_failures_is_no_delay():
    b = Backoff(0.1, 2.0, rand=lambda: 0.5)
    assert b.compute(0) == 0.0
    assert b.compute(-3) == 0.0


@pytest.mark.parametrize("failures, ceiling", [(1, 0.1), (2, 0.2), (3, 0.4), (4, 0.8),
                                               (5, 1.6), (6, 2.0), (7, 2.0), (50, 2.0)])
def test_backoff_doubles_per_failure_up_to_the_cap_with_equal_jitter(failures, ceiling):
    # Equal jitter: uniform in [d/2, d], d = min(cap, base * 2**(failures - 1)).
    low = Backoff(0.1, 2.0, rand=lambda: 0.0).compute(failures)
    high = Backoff(0.1, 2.0, rand=lambda: 1.0).compute(failures)
    mid = Backoff(0.1, 2.0, rand=lambda: 0.5).compute(failures)
    assert low == pytest.approx(ceiling / 2)
    assert high == pytest.approx(ceiling)
    assert mid == pytest.approx(ceiling * 0.75)


def test_backoff_is_capped_for_any_number_of_failures():
    b = Backoff(0.05, 0.2, rand=lambda: 1.0)
    for failures in (10, 31, 32, 1000, 10 ** 4):  # 2**9999 does not fit a float
        assert b.compute(failures) == pytest.approx(0.2)


def test_backoff_jitter_spreads_over_the_whole_range_and_never_leaves_it():
    rng = random.Random(22)
    b = Backoff(0.1, 10.0, rand=rng.random)
    d = 0.1 * 2 ** 3  # the fourth consecutive failure
    delays = [b.compute(4) for _ in range(2000)]
    assert all(d / 2 <= x <= d for x in delays)
    # Jittered, not one fixed delay: both ends of the range are reached.
    assert min(delays) < d * 0.55 and max(delays) > d * 0.95
    assert len({round(x, 9) for x in delays}) > 1000


def test_backoff_after_a_success_starts_over_from_the_base_interval():
    # Backoff keeps no state: the writer resets its failure count to 0 after a success
    # (SinkWriter.failures), and the next failure waits about the base interval again.
    b = Backoff(0.1, 5.0, rand=lambda: 1.0)
    assert b.compute(8) == pytest.approx(5.0)
    assert b.compute(0) == 0.0
    assert b.compute(1) == pytest.approx(0.1)


# -- ErrorReporter -------------------------------------------------------------------------------

class Clock:
    def __init__(self, now=1000.0):
        self.now = now

    def __call__(self):
        return self.now


def reporter(interval_s=10.0):
    clock, out = Clock(), io.StringIO()
    return ErrorReporter("app", interval_s=interval_s, stream=out, clock=clock), clock, out


def lines(out):
    return out.getvalue().splitlines()


def test_the_first_error_of_a_kind_is_reported_at_once_in_nginx_error_log_shape():
    r, clock, out = reporter()
    r.report("connect failed", "Connection refused")
    line, = lines(out)
    assert re.fullmatch(r"\d{4}/\d\d/\d\d \d\d:\d\d:\d\d \[error\] \d+#\d+: logpool: sink app: "
                        r"connect failed: Connection refused", line), line
    assert r.last_error == "connect failed: Connection refused"


def test_repeats_within_the_interval_are_suppressed_then_counted_in_the_next_line():
    r, clock, out = reporter()
    r.report("connect failed", "refused")
    for i in range(7):
        clock.now += 1.0
        r.report("connect failed", f"refused {i}")
    assert len(lines(out)) == 1  # 7 s later: still the first line only
    assert r.last_error == "connect failed: refused 6"  # the latest, reported or not
    clock.now += 3.0  # 10 s after the first line: the interval is over
    r.report("connect failed", "refused again")
    assert lines(out)[1].endswith("connect failed: refused again (7 more in the last 10 s)")
    # The count starts over with each line.
    clock.now += 10.0
    r.report("connect failed", "once more")
    assert lines(out)[2].endswith("connect failed: once more")


def test_the_interval_is_measured_from_the_last_line_of_that_kind():
    r, clock, out = reporter(interval_s=10.0)
    r.report("send failed", "a")
    clock.now += 9.999
    r.report("send failed", "b")
    assert len(lines(out)) == 1
    clock.now += 0.001  # exactly one interval after the first line
    r.report("send failed", "c")
    assert len(lines(out)) == 2 and lines(out)[1].endswith("send failed: c (1 more in the "
                                                             "last 10 s)")
    clock.now += 5.0  # measured from the second line, not the first
    r.report("send failed", "d")
    assert len(lines(out)) == 2


def test_each_kind_has_its_own_interval_and_count():
    r, clock, out = reporter()
    r.report("connect failed", "x")
    r.report("refused: buffer full", "y")
    r.report("connect failed", "x")
    r.report("connect failed", "x")
    r.report("refused: buffer full", "y")
    assert [line.split("sink app: ")[1] for line in lines(out)] == [
        "connect failed: x", "refused: buffer full: y"]
    clock.now += 10.0
    r.report("refused: buffer full", "z")
    r.report("connect failed", "w")
    assert [line.split("sink app: ")[1] for line in lines(out)[2:]] == [
        "refused: buffer full: z (1 more in the last 10 s)",
        "connect failed: w (2 more in the last 10 s)"]


def test_a_report_never_raises_when_its_stream_is_gone():
    r, clock, out = reporter()
    out.close()  # writing now raises ValueError
    r.report("connect failed", "refused")
    assert r.last_error == "connect failed: refused"


# -- RELP codec ----------------------------------------------------------------------------------

@pytest.mark.parametrize("partial", [b"", b"1", b"12 ", b"12 sys", b"12 syslog", b"12 syslog ",
                                     b"12 syslog 5", b"12 syslog 5 ", b"12 syslog 5 hel",
                                     b"12 syslog 5 hello"])
def test_relp_an_incomplete_frame_is_none_until_its_trailer_arrives(partial):
    assert parse_frame(partial, 0) is None
    assert parse_frame(bytearray(b"junk" + partial), 4) is None  # at an offset, too
    assert parse_frame(b"12 syslog 5 hello\n", 0) == (12, b"syslog", b"hello", 18)


@pytest.mark.parametrize("bad", [b"x syslog 1 a\n", b"1 SYSLOG 1 a\n", b"1  syslog 1 a\n",
                                 b"1 syslog x\n", b"1234567890 syslog 1 a\n",
                                 b"1 syslog 1234567890 ", b"-1 syslog 1 a\n",
                                 b"1 " + b"a" * 33 + b" 1 a\n"])
def test_relp_a_malformed_header_is_a_protocol_error(bad):
    with pytest.raises(RelpError) as exc:
        parse_frame(bad, 0)
    assert exc.value.errno == errno.EPROTO


def test_relp_a_frame_without_its_trailer_or_its_data_is_a_protocol_error():
    with pytest.raises(RelpError) as exc:
        parse_frame(b"1 syslog 3 abcX", 0)  # the byte after the data must be LF
    assert exc.value.errno == errno.EPROTO and "trailer" in str(exc.value)
    with pytest.raises(RelpError) as exc:
        parse_frame(b"1 syslog 3\n", 0)  # announces 3 bytes, carries none
    assert exc.value.errno == errno.EPROTO


def test_relp_an_oversized_frame_is_refused_from_its_header_alone():
    with pytest.raises(RelpError) as exc:
        parse_frame(b"7 syslog 1001 ", 0, max_data=1000)  # before any data arrives
    assert exc.value.errno == errno.EMSGSIZE and "1001" in str(exc.value)
    data = b"y" * 1000
    assert parse_frame(b"7 syslog 1000 " + data + b"\n", 0, max_data=1000) == (
        7, b"syslog", data, 1015)


def test_relp_data_is_counted_not_scanned_for_newlines():
    data = b"multi\nline\n12 syslog 3 not a frame\n"
    buf = frame(3, b"syslog", data)
    assert parse_frame(buf, 0) == (3, b"syslog", data, len(buf))


@pytest.mark.parametrize("txnr, command, data", [
    (1, b"open", relp.open_offers()), (2, b"syslog", b"<13>hello"), (999_999_999, b"close", b""),
    (5, b"syslog", bytes(range(256)))])
def test_relp_frame_and_parse_round_trip(txnr, command, data):
    buf = frame(txnr, command, data)
    assert parse_frame(buf, 0) == (txnr, command, data, len(buf))


def test_relp_consecutive_frames_parse_one_after_the_other():
    buf = frame(1, b"open", b"x") + rsp(1, b"200 OK") + rsp(2) + frame(3, b"syslog", b"m")
    got, pos = [], 0
    while pos < len(buf):
        txnr, command, data, pos = parse_frame(buf, pos)
        got.append((txnr, command, data))
    assert got == [(1, b"open", b"x"), (1, b"rsp", b"200 OK"), (2, b"rsp", b""),
                   (3, b"syslog", b"m")]
    assert rsp(2) == b"2 rsp 0\n"  # close's reply: no data, no space before the LF
    assert rsp(9, b"200 OK") == b"9" + relp.ACK_SUFFIX + b"\n"


def test_relp_transaction_numbers_wrap_to_one():
    assert next_txnr(1) == 2
    assert next_txnr(relp.TXNR_MAX) == 1
    assert parse_frame(frame(relp.TXNR_MAX, b"syslog", b"m"), 0)[0] == relp.TXNR_MAX


def test_relp_open_offers_name_the_software():
    offers = relp.open_offers(b"rsyslog")
    assert b"relp_software=rsyslog,0.1.0," in offers and b"commands=syslog" in offers


# -- the transport contract: Outcome -------------------------------------------------------------

def test_per_message_fates_are_grouped_into_runs_in_order():
    o = Outcome.per_message([(Fate.ACK, None), (Fate.ACK, None), (Fate.RETRY, None),
                             (Fate.REJECT, "bad"), (Fate.REJECT, "bad"), (Fate.REJECT, "worse"),
                             (Fate.ACK, None)])
    assert o.fates == ((Fate.ACK, 2, None), (Fate.RETRY, 1, None), (Fate.REJECT, 2, "bad"),
                       (Fate.REJECT, 1, "worse"), (Fate.ACK, 1, None))
    assert o.progress == 7 and o.wrote_bytes == 0 and o.settled == 0
    assert all(type(run) is tuple for run in o.fates)  # frozen: not the lists it was built in


def test_per_message_of_nothing_is_no_progress():
    o = Outcome.per_message([])
    assert o.fates == () and o.progress == 0


def test_outcomes_add_up_in_order():
    a = Outcome(wrote_bytes=10, progress=10, fates=[(Fate.ACK, 2, None)], settled=1,
                reports=[("k", "one")])
    b = Outcome.rejected(3, "too big")
    c = Outcome(settled=4, reports=[("k", "two")])
    total = a + b + c
    assert total.wrote_bytes == 10 and total.progress == 13 and total.settled == 5
    assert total.fates == ((Fate.ACK, 2, None), (Fate.REJECT, 3, "too big"))
    assert total.reports == (("k", "one"), ("k", "two"))
    assert a.fates == ((Fate.ACK, 2, None),) and a.progress == 10  # operands unchanged
    nothing = Outcome.NOTHING
    assert (a + nothing).fates == a.fates and (nothing + a).progress == a.progress
    assert nothing.fates == () and nothing.progress == 0 and nothing.wrote_bytes == 0


def test_outcome_constructors():
    assert Outcome.wrote(0) is Outcome.NOTHING and Outcome.progressed(0) is Outcome.NOTHING
    w = Outcome.wrote(100)
    assert (w.wrote_bytes, w.progress, w.fates) == (100, 100, ())
    s = Outcome.progressed(100)
    assert (s.wrote_bytes, s.progress, s.fates) == (0, 100, ())
    assert Outcome.acked(0).fates == ()
    a = Outcome.acked(5, progress=1)
    assert a.fates == ((Fate.ACK, 5, None),) and a.progress == 1


# -- the option schema ---------------------------------------------------------------------------

@pytest.mark.parametrize("type_, bad, article", [
    ("integer", "5", "an integer"), ("integer", True, "an integer"), ("integer", 1.5, "an integer"),
    ("boolean", 1, "a boolean"), ("object", [], "an object"), ("string", None, "a string"),
    ("string", 5, "a string"), ("string or null", 5, "a string or null")])
def test_option_type_errors_name_the_key_the_type_and_the_value(type_, bad, article):
    checked = []
    opt = Option("some_key", type_, None, "doc", check=lambda where, v: checked.append(v))
    with pytest.raises(ConfigError) as exc:
        opt.validate("sinks[2].some_key", bad)
    assert str(exc.value) == f"sinks[2].some_key: must be {article}, got {bad!r}"
    assert isinstance(exc.value, ValueError)
    assert checked == []  # the value check never sees a value of the wrong type


@pytest.mark.parametrize("type_, good", [("integer", 0), ("boolean", False), ("object", {}),
                                         ("string", ""), ("string or null", None),
                                         ("string or null", "x")])
def test_option_values_of_the_right_type_pass_through_the_check(type_, good):
    seen = []

    def check(where, value):
        seen.append((where, value))
        return ("checked", value)

    assert Option("k", type_, None, "doc", check=check).validate("k", good) == ("checked", good)
    assert seen == [("k", good)]
    assert Option("k", type_, None, "doc").validate("k", good) is good


def test_an_option_check_error_names_the_key():
    from logpool.transports.schema import int_range
    opt = Option("retries", "integer", 1, "doc", check=int_range(0, 9))
    with pytest.raises(ConfigError) as exc:
        opt.validate("sinks[0].retries", 10)
    assert str(exc.value).startswith("sinks[0].retries: must be an integer from 0 to 9")


# -- HTTP: Retry-After, the status rules, the bounded answer reader -----------------------------

NOW = 1445412000.0  # Wed, 21 Oct 2015 07:20:00 GMT


@pytest.mark.parametrize("value, seconds", [
    (None, None), ("", None), ("120", 120.0), (" 7 ", 7.0), ("0", 0.0),
    ("Wed, 21 Oct 2015 07:28:00 GMT", 480.0),
    ("Wed, 21 Oct 2015 07:00:00 GMT", 0.0),  # a date in the past: now
    ("-5", None), ("1.5", None), ("soon", None), ("Wed, 99 Foo 2015", None)])
def test_retry_after_is_delta_seconds_or_an_http_date(value, seconds):
    assert http.retry_after_seconds(value, now=NOW) == seconds


def answer_for(status, headers=None, count=2, body=b""):
    """(kind, the Outcome or exception) of the generic HTTP rules for an answer."""
    from logpool.transports.formats.common import Misconfigured, Refused
    try:
        outcome = http.generic_answer(Response(status, "Reason", headers or {}, body), count)
    except http.HttpRetry as exc:
        return "retry", exc
    except Misconfigured as exc:
        return "keep", exc
    except Refused as exc:
        return "narrow", exc
    except http.HttpProtocolError as exc:
        return "error", exc
    assert [(f, n) for f, n, _ in outcome.fates] == [(Fate.ACK, count)]
    return "ok", outcome


@pytest.mark.parametrize("status, kind", [
    (200, "ok"), (204, "ok"), (301, "keep"), (401, "keep"), (403, "keep"), (404, "keep"),
    (408, "retry"), (429, "retry"), (500, "retry"), (503, "retry"), (400, "narrow"),
    (422, "narrow"), (600, "error"), (100, "error")])
def test_http_status_rules(status, kind):
    assert answer_for(status)[0] == kind


def test_http_retry_answers_carry_retry_after():
    assert answer_for(503, {"retry-after": "30"})[1].retry_after == 30.0
    assert answer_for(429, {})[1].retry_after is None
    assert "the data is kept" in answer_for(401)[1].strerror


class Peer:
    """The collector's end of a socketpair: what it sends is all there before the reader
    starts (then EOF when `close`), so nothing waits."""

    def __init__(self, data, close=True, deadline_s=30.0):
        self.ours, self.theirs = socket.socketpair()
        self.theirs.sendall(data)
        if close:
            self.theirs.shutdown(socket.SHUT_WR)
        self.ours.setblocking(False)
        self.exchange = http.Exchange(self.ours, time.monotonic() + deadline_s,
                                      lambda: False, "POST /in")

    def read(self, limit=1 << 20, head_request=False):
        return self.exchange.read_response(limit, head_request)

    def close(self):
        self.ours.close()
        self.theirs.close()


@pytest.fixture
def answer():
    made = []

    def make(data, **kwargs):
        made.append(Peer(data, **kwargs))
        return made[-1]

    yield make
    for p in made:
        p.close()


def test_http_reader_content_length_and_keep_alive(answer):
    p = answer(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-A: 1\r\nx-a: 2\r\n\r\nhelloHTTP/1.1")
    r = p.read()
    assert (r.status, r.reason, r.body) == (200, "OK", b"hello")
    assert r.headers == {"content-length": "5", "x-a": "1, 2"}  # lower case, repeats joined
    assert p.exchange.reusable and bytes(p.exchange.buf) == b"HTTP/1.1"  # the next answer's


def test_http_reader_skips_interim_answers_and_reads_chunked_bodies(answer):
    p = answer(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: x\r\n\r\n"
               b"HTTP/1.1 201 Created\r\nTransfer-Encoding: chunked\r\n\r\n"
               b"5;ext=1\r\nhello\r\n1\r\n!\r\n0\r\nTrailer: t\r\n\r\n")
    r = p.read()
    assert (r.status, r.body) == (201, b"hello!") and p.exchange.reusable
    assert bytes(p.exchange.buf) == b""


def test_http_reader_keeps_at_most_the_limit_and_gives_the_connection_up(answer):
    p = answer(b"HTTP/1.1 500 Oops\r\nContent-Length: 100\r\n\r\n" + b"x" * 100)
    assert p.read(limit=10).body == b"x" * 10 and not p.exchange.reusable
    p = answer(b"HTTP/1.1 500 Oops\r\nTransfer-Encoding: chunked\r\n\r\n64\r\n" + b"x" * 100
               + b"\r\n0\r\n\r\n")
    assert p.read(limit=10).body == b"x" * 10 and not p.exchange.reusable


@pytest.mark.parametrize("head, reusable", [
    (b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 0\r\n\r\n", False),
    (b"HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n", False),
    (b"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 0\r\n\r\n", True),
    (b"HTTP/1.1 204 No Content\r\n\r\n", True),  # no body, whatever the headers
    (b"HTTP/1.1 200 OK\r\n\r\nto the end", False)])  # the body ends with the connection
def test_http_reader_knows_when_the_connection_can_be_reused(answer, head, reusable):
    p = answer(head)
    r = p.read()
    assert p.exchange.reusable is reusable
    if head.endswith(b"to the end"):
        assert r.body == b"to the end"


@pytest.mark.parametrize("data, what", [
    (b"SMTP ready\r\n\r\n", "not an HTTP/1.x status line"),
    (b"HTTP/1.1 2000 OK\r\n\r\n", "not an HTTP/1.x status line"),
    (b"HTTP/1.1 200 OK\r\n" + b"X: " + b"y" * 9000 + b"\r\n\r\n", "longer than 8192 bytes"),
    (b"HTTP/1.1 200 OK\r\n" + b"".join(b"H%d: v\r\n" % i for i in range(101)) + b"\r\n",
     "more than 100 headers"),
    (b"HTTP/1.1 200 OK\r\nno colon\r\n\r\n", "a malformed header line"),
    (b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n", "a Content-Length not understood"),
    (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n", "transfer-encoding"),
    (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", "a chunk size"),
    (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n1\r\nxyz", "without its CRLF"),
    (b"HTTP/1.1 101 Switching Protocols\r\n\r\n", "switched protocols"),
    (b"HTTP/1.1 100 Continue\r\n\r\n" * 11, "interim")])
def test_http_reader_refuses_answers_it_does_not_understand_or_that_are_too_big(answer, data,
                                                                                what):
    with pytest.raises(http.HttpProtocolError) as exc:
        answer(data).read()
    assert what in str(exc.value)


@pytest.mark.parametrize("data", [b"HTTP/1.1 200", b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n"
                                  b"\r\nshort", b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked"
                                  b"\r\n\r\n9\r\nshort"])
def test_http_reader_an_answer_cut_short_is_a_reset_connection(answer, data):
    with pytest.raises(ConnectionResetError):
        answer(data).read()


def test_http_reader_gives_up_at_its_deadline_when_the_answer_never_ends(answer):
    # The peer keeps the connection open and says nothing more; the deadline has already
    # passed, so the first wait for more bytes ends it (no time spent waiting).
    p = answer(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc", close=False, deadline_s=-1)
    with pytest.raises(TimeoutError) as exc:
        p.read()
    assert "no complete answer within send_timeout_ms" in str(exc.value)


def test_http_reader_leaves_when_the_pool_stops():
    from logpool.transports.contract import Stopped
    ours, theirs = socket.socketpair()
    try:
        ours.setblocking(False)
        ex = http.Exchange(ours, time.monotonic() + 30, lambda: True, "POST /in")
        with pytest.raises(Stopped):
            ex.read_response(1 << 20)
    finally:
        ours.close()
        theirs.close()
