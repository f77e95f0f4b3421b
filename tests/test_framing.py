"""Framing per sink (raw, newline, octet-counting), applied by log_cdata so that resends
repeat whole frames, and the receiver's side of each."""
import json
import random
import socket

import pytest
from hypothesis import given, settings, strategies as st

import logpool
from conftest import octet_frames, wait_for
from logpool.receive import FramingError, split_messages


def awkward_messages(count, seed):
    """Messages a line-based collector would mangle: embedded newlines, digits and spaces
    at the start (they look like frame headers), NUL bytes, invalid UTF-8."""
    rng = random.Random(seed)
    pieces = [b"\n", b"12 ", b" ", b"\x00", b"\xff\xfe", b"multi\nline\nstack trace",
              "é ✓".encode(), b"GET / HTTP/1.1"]
    return [b"%d|" % i + b"".join(rng.choice(pieces) for _ in range(rng.randrange(1, 40)))
            for i in range(count)]


@pytest.mark.parametrize("listen", ["unix", "tcp://127.0.0.1:0"])
def test_octet_counting_keeps_multiline_and_binary_messages_intact(receiver, pools, listen,
                                                                   tmp_path):
    r = receiver(None if listen == "unix" else listen, framing="octet-counting")
    pool = pools({"sinks": [{"url": r.url, "framing": "octet-counting"}]})
    sent = awkward_messages(5000, seed=3)
    for m in sent:
        assert pool.log(0, m) == len(m)
    pool.flush(timeout=30)
    wait_for(lambda: r.snapshot().messages == len(sent), what="every frame")
    assert octet_frames(r.output.getvalue()) == sent
    st = pool.stats(0)
    wire = sum(len(b"%d " % len(m)) + len(m) for m in sent)
    assert st["accepted_bytes"] == st["sent_bytes"] == wire  # counters count the frames


def test_octet_counting_frames_survive_write_faults_whole(receiver, monkeypatch):
    """Resends after torn writes repeat whole frames: the receiver's stream stays parseable
    and every message arrives exactly once."""
    monkeypatch.setenv("LOGPOOL_TEST_FAULTS", json.dumps(
        {"write_error": 0.1, "short_write": 0.1, "eagain": 0.05, "seed": 11}))
    r = receiver(framing="octet-counting")
    pool = logpool.Pool({"sinks": [{"url": r.url, "framing": "octet-counting"}],
                         "retry_interval_ms": 1, "max_retry_interval_ms": 5,
                         "flush_limit": 4096})
    try:
        sent = awkward_messages(20_000, seed=5)
        for i, m in enumerate(sent):
            pool.log(0, m)
            if i % 200 == 199:
                pool.flush(timeout=60)  # many small batches: many sends for faults to hit
        wait_for(lambda: r.snapshot().messages == len(sent), what="every frame")
        st = pool.stats(0)
    finally:
        pool.close(timeout=5)
    assert octet_frames(r.output.getvalue()) == sent
    assert st["write_errors"] >= 3 and st["resent_bytes"] > 0 and r.snapshot().torn >= 1


def test_newline_framing_appends_only_when_missing_and_counts_the_wire(receiver, pools):
    r = receiver()
    pool = pools({"sinks": [{"url": r.url}], "framing": "newline", "max_message_size": 10})
    for m in (b"one", b"two\n", b"\n", b"123456789"):
        pool.log(0, m)
    with pytest.raises(logpool.MessageTooBig):
        pool.log(0, b"1234567890")  # 11 bytes on the wire
    assert pool.log(0, b"123456789\n") == 10
    pool.flush(timeout=30)
    wait_for(lambda: r.snapshot().messages == 5, what="five lines")
    assert r.output.getvalue() == b"one\ntwo\n\n123456789\n123456789\n"
    assert pool.stats(0)["accepted_bytes"] == 4 + 4 + 1 + 10 + 10


def test_octet_counting_limit_counts_the_header(receiver, pools):
    r = receiver(framing="octet-counting")
    pool = pools({"sinks": [{"url": r.url, "framing": "octet-counting",
                             "max_message_size": 100}]})
    assert pool.log(0, b"x" * 97) == 97  # "97 " + 97 = 100 bytes
    with pytest.raises(logpool.MessageTooBig):
        pool.log(0, b"x" * 98)
    pool.flush(timeout=30)
    wait_for(lambda: r.snapshot().messages == 1, what="the frame")
    assert r.output.getvalue() == b"97 " + b"x" * 97


def test_raw_framing_sends_bytes_as_given(receiver, pools):
    r = receiver(framing="raw")
    pool = pools({"sinks": [{"url": r.url}]})  # raw is the default
    for m in (b"ab", b"c", b"\n", b"d"):
        pool.log(0, m)
    pool.flush(timeout=30)
    wait_for(lambda: r.snapshot().bytes == 5, what="five bytes")
    assert r.output.getvalue() == b"abc\nd"


def test_receiver_splits_partial_frames_and_rejects_garbage(receiver, tmp_path):
    assert split_messages("octet-counting", b"3 abc2 d") == (b"3 abc", 1, 5)
    assert split_messages("octet-counting", b"12") == (b"", 0, 0)
    assert split_messages("newline", b"a\nb\nc") == (b"a\nb\n", 2, 4)
    for garbage in (b"abc", b"0 x", b"12x", b"123456789012 "):
        with pytest.raises(FramingError):
            split_messages("octet-counting", garbage)
    r = receiver(framing="octet-counting")
    peer = socket.socket(socket.AF_UNIX)
    peer.connect(r.url[len("unix:"):])
    peer.sendall(b"5 hello<html>not a frame")
    wait_for(lambda: r.snapshot().framing_errors == 1, what="the framing error")
    assert r.output.getvalue() == b"5 hello"
    assert peer.recv(10) == b""  # the receiver hung up on the garbage
    peer.close()


@settings(max_examples=200, deadline=None, database=None)
@given(messages=st.lists(st.binary(min_size=1, max_size=40), max_size=20),
       cuts=st.lists(st.integers(0, 1000), max_size=10),
       framing=st.sampled_from(["octet-counting", "newline"]))
def test_receiver_reassembles_a_stream_cut_anywhere(messages, cuts, framing):
    """However TCP splits the stream, the receiver writes out exactly the complete messages,
    in order, and keeps the incomplete rest for the next read."""
    if framing == "newline":
        messages = [m.replace(b"\n", b"") + b"\n" for m in messages]
        stream = b"".join(messages)
    else:
        stream = b"".join(b"%d %s" % (len(m), m) for m in messages)
    out, count, pending = b"", 0, b""
    points = sorted({min(c, len(stream)) for c in cuts} | {len(stream)})
    start = 0
    for end in points:
        buf = pending + stream[start:end]
        complete, n, cut = split_messages(framing, buf)
        out, count, pending, start = out + complete, count + n, buf[cut:], end
    assert out == stream and count == len(messages) and pending == b""


def test_framing_config_errors_name_the_key():
    with pytest.raises(logpool.ConfigError, match=r"sinks\[0\]\.framing: must be one of"):
        logpool.Pool({"sinks": [{"url": "unix:/x", "framing": "lines"}]})
    with pytest.raises(logpool.ConfigError, match=r"^framing: must be one of"):
        logpool.Pool({"sinks": ["unix:/x"], "framing": 3})
