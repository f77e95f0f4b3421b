"""Property-based tests (hypothesis) of the C ABI and the config parser: any input gets a
contract code or a clear error, never a crash, and the counters stay exact."""
import json
import threading

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from logpool import _binding
from conftest import sock_path

ffi = _binding.ffi
lib = _binding.lib()
SETTINGS = settings(max_examples=60, deadline=None, database=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture])

MAX_MSG, MAX_BUF = 100, 1000
lengths = st.sampled_from([0, 1, MAX_MSG - 1, MAX_MSG, MAX_MSG + 1, MAX_BUF - 1, MAX_BUF,
                           MAX_BUF + 1]) | st.integers(0, 3 * MAX_BUF)
socket_ids = st.sampled_from([0, 1, -1, 2**31 - 1, -(2**31)]) | st.integers(-(2**31), 2**31 - 1)
op = st.tuples(socket_ids, lengths, st.booleans())  # (socket_id, len, NULL message?)


def down_pool(tmp_path, framing="raw"):
    url = "unix:" + sock_path(tmp_path, "down.sock")
    p = lib.logpool_new(json.dumps({"sinks": [{"url": url}], "max_message_size": MAX_MSG,
                                    "max_buffer_length": MAX_BUF, "flush_limit": 50,
                                    "framing": framing}).encode())
    assert p != ffi.NULL
    return p


def frame_size(framing, length):
    """Bytes on the wire for a message of `length` bytes "m" (never ending in a newline)."""
    return {"raw": length, "newline": length + 1,
            "octet-counting": len(str(length)) + 1 + length}[framing]


@SETTINGS
@given(ops=st.lists(op, max_size=60), close_at=st.integers(0, 60),
       framing=st.sampled_from(["raw", "newline", "octet-counting"]))
def test_log_cdata_matches_the_model_for_any_calls(tmp_path, ops, close_at, framing):
    p = down_pool(tmp_path, framing)
    buffered = accepted = too_big = full = closed_drops = 0
    closed = False
    try:
        for i, (sid, length, null) in enumerate(ops):
            if i == close_at:
                assert lib.logpool_close(p, 0) == accepted  # sink down: all abandoned
                closed = True
            msg = ffi.NULL if null else b"m" * length
            rc = lib.log_cdata(p, sid, msg, length)
            if sid != 0:
                expected = lib.LOGPOOL_ENOSINK
            elif null and length > 0:
                expected = lib.LOGPOOL_EINVAL
            elif closed:
                expected = lib.LOGPOOL_ECLOSED
                closed_drops += 1
            elif length == 0:
                expected = 0
            elif frame_size(framing, length) > MAX_MSG:
                expected = lib.LOGPOOL_ETOOBIG
                too_big += 1
            elif buffered + frame_size(framing, length) > MAX_BUF:
                expected = lib.LOGPOOL_EFULL
                full += 1
            else:
                expected = length  # the caller's length, framing or not
                buffered += frame_size(framing, length)
                accepted += 1
            assert rc == expected, (i, sid, length, null, closed)
        st_ = ffi.new("logpool_stats_t *")
        assert lib.logpool_stats(p, 0, st_) == 0
        assert (st_.accepted_messages, st_.dropped_too_big, st_.dropped_full,
                st_.dropped_closed) == (accepted, too_big, full, closed_drops)
        assert st_.buffered_bytes == (0 if closed else buffered)
    finally:
        first = lib.logpool_close(p, 0)
        assert lib.logpool_close(p, 0) == first  # idempotent
        lib.logpool_free(p)


@SETTINGS
@given(threads=st.integers(1, 4), close_after=st.integers(0, 2000))
def test_close_concurrent_with_producers(receiver, threads, close_after):
    r = receiver()
    p = lib.logpool_new(json.dumps({"sinks": [{"url": r.url}]}).encode())
    results = []
    started = threading.Barrier(threads + 1)

    def produce():
        started.wait()
        codes = set()
        for i in range(3000):
            codes.add(lib.log_cdata(p, 0, b"x\n", 2))
        results.append(codes)

    workers = [threading.Thread(target=produce) for _ in range(threads)]
    for w in workers:
        w.start()
    started.wait()
    for _ in range(close_after):
        pass
    abandoned = lib.logpool_close(p, 5000)
    for w in workers:
        w.join()
    for codes in results:
        assert codes <= {2, lib.LOGPOOL_ECLOSED}
    st_ = ffi.new("logpool_stats_t *")
    lib.logpool_stats(p, 0, st_)
    assert abandoned == 0 and st_.sent_messages + st_.abandoned_messages == st_.accepted_messages
    assert st_.accepted_messages + st_.dropped_closed == threads * 3000
    lib.logpool_free(p)


def _containers(children):
    return st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children,
                                                            max_size=4)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**40), 2**40) | st.floats(allow_nan=False)
    | st.text(max_size=20),
    _containers, max_leaves=10)
KEYS = ["flush_limit", "periodic_flush_ms", "max_buffer_length", "max_message_size",
        "connect_timeout_ms", "send_timeout_ms", "retry_interval_ms", "max_retry_interval_ms",
        "exit_flush_timeout_ms", "sinks", "url", "name", "bogus", "framing", "ca_file",
        "server_name", "cert_file", "key_file", "verify"]
URLS = st.sampled_from(["unix:/tmp/x.sock", "unix:relative", "unix:/" + "a" * 200,
                        "tcp://127.0.0.1:0", "tcp://127.0.0.1:65536", "tcp://[::1]:5140",
                        "tcp://host", "tcp://:80", "udp://h:1", "", "unix:", "tcp://h:-1",
                        "tcp://[::1:5140", "tcp://h:99999999999", "tls://127.0.0.1:6514",
                        "tls://localhost", "udp://127.0.0.1:514", "unixgram:/tmp/x.sock",
                        "unixgram:rel", "udp://[::1]:99999"]) | st.text(max_size=30)


@st.composite
def mutated_configs(draw):
    sink = {"url": draw(URLS)}
    cfg = {"sinks": [sink]}
    for _ in range(draw(st.integers(0, 4))):
        target = cfg if draw(st.booleans()) else sink
        target[draw(st.sampled_from(KEYS))] = draw(
            json_values | st.integers(-5, 10**10)
            | st.sampled_from(["raw", "newline", "octet-counting", "/nonexistent.pem"]))
    return cfg


@SETTINGS
@given(config=mutated_configs() | json_values)
def test_any_config_gives_a_pool_or_null_with_a_message(config):
    text = json.dumps(config).encode()
    p = lib.logpool_new(text)
    if p == ffi.NULL:
        err = ffi.string(lib.logpool_last_error()).decode()
        assert err.startswith("invalid configuration: ") and len(err) > 25, err
    else:
        assert lib.logpool_sink_count(p) >= 1
        lib.logpool_close(p, 0)
        lib.logpool_free(p)


@pytest.mark.parametrize("text", [b"\xff\xfe", b'{"sinks": [{"url": "unix:/x"}]' * 1000,
                                  b"[" * 100000, b'{"sinks": [' + b'"unix:/x",' * 2000 + b'"unix:/x"]}'])
def test_hostile_config_text(text):
    p = lib.logpool_new(text)
    assert p == ffi.NULL
    assert ffi.string(lib.logpool_last_error()).decode().startswith("invalid configuration: ")
