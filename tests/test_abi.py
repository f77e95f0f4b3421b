"""The C contract from Python through cffi's ABI mode on the built .so: every code comes
from a real situation."""
import json

import pytest

from logpool import _binding
from conftest import sock_path, wait_for

ffi = _binding.ffi
lib = _binding.lib()

CODES = {
    "LOGPOOL_OK": 0, "LOGPOOL_EINVAL": -1, "LOGPOOL_ENOSINK": -2, "LOGPOOL_ETOOBIG": -3,
    "LOGPOOL_EFULL": -4, "LOGPOOL_ECLOSED": -5, "LOGPOOL_ECONFIG": -6, "LOGPOOL_ERUNTIME": -7,
    "LOGPOOL_ETIMEDOUT": -8,
}


def new_pool(config):
    p = lib.logpool_new(json.dumps(config).encode())
    assert p != ffi.NULL, ffi.string(lib.logpool_last_error()).decode()
    return p


def last_error():
    return ffi.string(lib.logpool_last_error()).decode()


@pytest.fixture
def down_sink(tmp_path):
    return "unix:" + sock_path(tmp_path, "nobody-listens.sock")


@pytest.fixture
def pool(down_sink):
    p = new_pool({"sinks": [{"url": down_sink}], "max_message_size": 100,
                  "max_buffer_length": 1000, "flush_limit": 500})
    yield p
    lib.logpool_close(p, 0)
    lib.logpool_free(p)


def stats(p, sink=0):
    out = ffi.new("logpool_stats_t *")
    assert lib.logpool_stats(p, sink, out) == 0
    return out


def test_code_values_match_the_contract():
    for name, value in CODES.items():
        assert getattr(lib, name) == value


def test_strerror_has_a_message_for_every_code_and_unknown_ones():
    texts = {code: ffi.string(lib.logpool_strerror(code)).decode() for code in CODES.values()}
    assert texts[-4] == "buffer full"
    assert len(set(texts.values())) == len(texts)
    assert ffi.string(lib.logpool_strerror(-999)).decode() == "unknown error code"
    assert ffi.string(lib.logpool_strerror(12345)).decode() == "unknown error code"


def test_version():
    assert ffi.string(lib.logpool_version()) == b"0.1.0"


def test_null_pool_is_einval():
    assert lib.log_cdata(ffi.NULL, 0, b"x", 1) == lib.LOGPOOL_EINVAL
    assert lib.logpool_flush(ffi.NULL, 0) == lib.LOGPOOL_EINVAL
    assert lib.logpool_close(ffi.NULL, 0) == lib.LOGPOOL_EINVAL
    assert lib.logpool_sink_count(ffi.NULL) == lib.LOGPOOL_EINVAL
    assert lib.logpool_stats(ffi.NULL, 0, ffi.new("logpool_stats_t *")) == lib.LOGPOOL_EINVAL
    lib.logpool_free(ffi.NULL)  # a no-op, like free(NULL)


def test_null_message_with_length_is_einval_and_len_zero_is_a_noop(pool):
    assert lib.log_cdata(pool, 0, ffi.NULL, 5) == lib.LOGPOOL_EINVAL
    assert lib.log_cdata(pool, 0, ffi.NULL, 0) == 0
    assert lib.log_cdata(pool, 0, b"", 0) == 0
    assert stats(pool).accepted_messages == 0


@pytest.mark.parametrize("socket_id", [1, -1, 2**31 - 1, -(2**31)])
def test_unknown_socket_id_is_enosink(pool, socket_id):
    assert lib.log_cdata(pool, socket_id, b"x", 1) == lib.LOGPOOL_ENOSINK
    assert lib.logpool_stats(pool, socket_id, ffi.new("logpool_stats_t *")) == lib.LOGPOOL_ENOSINK


def test_message_over_max_message_size_is_etoobig_and_counted(pool):
    assert lib.log_cdata(pool, 0, b"x" * 100, 100) == 100
    assert lib.log_cdata(pool, 0, b"x" * 101, 101) == lib.LOGPOOL_ETOOBIG
    st = stats(pool)
    assert (st.accepted_messages, st.dropped_too_big) == (1, 1)


def test_buffer_full_while_sink_is_down_is_efull_and_counted_exactly(pool):
    accepted = refused = 0
    for _ in range(25):
        rc = lib.log_cdata(pool, 0, b"y" * 100, 100)
        if rc == 100:
            accepted += 1
        else:
            assert rc == lib.LOGPOOL_EFULL
            refused += 1
    assert (accepted, refused) == (10, 15)  # max_buffer_length 1000 / 100-byte messages
    st = stats(pool)
    assert (st.accepted_messages, st.dropped_full, st.buffered_bytes) == (10, 15, 1000)
    assert st.connected == 0


def test_flush_with_sink_down_times_out(pool):
    assert lib.log_cdata(pool, 0, b"z\n", 2) == 2
    assert lib.logpool_flush(pool, 50) == lib.LOGPOOL_ETIMEDOUT


def test_flush_with_nothing_accepted_returns_at_once(pool):
    assert lib.logpool_flush(pool, 0) == 0


def test_after_close_is_eclosed_close_counts_abandoned_and_is_idempotent(pool):
    for _ in range(3):
        assert lib.log_cdata(pool, 0, b"a\n", 2) == 2
    assert lib.logpool_close(pool, 20) == 3  # sink down: all three abandoned
    assert lib.logpool_close(pool, 20) == 3
    assert lib.log_cdata(pool, 0, b"a\n", 2) == lib.LOGPOOL_ECLOSED
    st = stats(pool)
    assert (st.abandoned_messages, st.dropped_closed, st.buffered_bytes) == (3, 1, 0)


def test_sink_count(receiver):
    r1, r2 = receiver(), receiver()
    p = new_pool({"sinks": [{"url": r1.url}, {"url": r2.url}]})
    try:
        assert lib.logpool_sink_count(p) == 2
    finally:
        assert lib.logpool_close(p, 1000) == 0
        lib.logpool_free(p)


def test_sink_index_follows_the_librarys_naming_rule(down_sink):
    # named; unnamed (its URL); an unnamed sink whose URL another sink already has (URL#i);
    # a failover list (its first URL)
    p = new_pool({"sinks": [{"url": down_sink, "name": "main"}, {"url": down_sink},
                            {"url": down_sink}, {"url": [down_sink + "2", down_sink]}]})
    try:
        index = {name: lib.logpool_sink_index(p, name.encode())
                 for name in ("main", down_sink, down_sink + "#2", down_sink + "2", "nosuch")}
        assert index == {"main": 0, down_sink: 1, down_sink + "#2": 2, down_sink + "2": 3,
                         "nosuch": lib.LOGPOOL_ENOSINK}
        assert lib.logpool_sink_index(p, ffi.NULL) == lib.LOGPOOL_EINVAL
        assert lib.logpool_sink_index(ffi.NULL, b"main") == lib.LOGPOOL_EINVAL
    finally:
        lib.logpool_close(p, 0)
        lib.logpool_free(p)


def merge(texts, flags=0, cap=1 << 16):
    data = "".join(texts).encode()
    out = ffi.new("char[]", cap)
    n = lib.logpool_metrics_merge(data, len(data), out, cap, flags)
    assert n >= 0, n
    return ffi.string(out).decode(), n


WORKER = """# HELP logpool_accepted_messages_total Messages accepted.
# TYPE logpool_accepted_messages_total counter
logpool_accepted_messages_total{sink="main"} %d
# HELP logpool_buffered_bytes Bytes buffered now.
# TYPE logpool_buffered_bytes gauge
logpool_buffered_bytes{sink="main"} %d
# HELP logpool_buffer_await_seconds Await.
# TYPE logpool_buffer_await_seconds histogram
logpool_buffer_await_seconds_bucket{sink="main",le="0.1"} %d
logpool_buffer_await_seconds_sum{sink="main"} 0.25
logpool_buffer_await_seconds_count{sink="main"} %d
"""


def test_metrics_merge_sums_series_and_keeps_counters_only_when_asked():
    text, n = merge([WORKER % (3, 100, 1, 2), WORKER % (4, 50, 2, 3)])
    assert n == len(text)
    assert text.count("# TYPE logpool_accepted_messages_total counter") == 1
    assert 'logpool_accepted_messages_total{sink="main"} 7\n' in text
    assert 'logpool_buffered_bytes{sink="main"} 150\n' in text
    assert 'logpool_buffer_await_seconds_sum{sink="main"} 0.5\n' in text
    counters, _ = merge([WORKER % (3, 100, 1, 2), WORKER % (4, 50, 2, 3)],
                        lib.LOGPOOL_METRICS_COUNTERS_ONLY)
    assert "buffered_bytes" not in counters  # a gauge says nothing once its process is gone
    assert 'logpool_buffer_await_seconds_count{sink="main"} 5\n' in counters
    assert 'logpool_accepted_messages_total{sink="main"} 7\n' in counters
    # truncated to the room given, the full length returned
    short, n = merge([WORKER % (3, 100, 1, 2)], cap=10)
    assert len(short) == 9 and n > 10
    assert lib.logpool_metrics_merge(ffi.NULL, 5, ffi.NULL, 0, 0) == lib.LOGPOOL_EINVAL
    assert lib.logpool_metrics_merge(b"", 0, ffi.NULL, 0, 8) == lib.LOGPOOL_EINVAL
    assert lib.logpool_metrics_merge(b"", 0, ffi.NULL, 0, 0) == 0


@pytest.mark.parametrize("config, names", [
    ({"sinks": [{"url": "unix:/x"}], "flush_limt": 5}, "flush_limt"),
    ({"sinks": [{"url": "unix:/x", "bogus": 1}]}, "sinks[0].bogus"),
    ({"sinks": [{"url": "unix:/x"}], "max_buffer_length": 0}, "max_buffer_length"),
    ({"sinks": [{"url": "unix:/x", "flush_limit": "big"}]}, "sinks[0].flush_limit"),
    ({"sinks": [{"url": "ftp://x:1"}]}, "sinks[0].url"),
    ({"sinks": [{"url": "tcp://127.0.0.1:70000"}]}, "port 70000"),
    ({"sinks": []}, "sinks"),
    ({"sinks": [{"url": "unix:/x"}], "flush_limit": 2000, "max_buffer_length": 1000},
     "flush_limit"),
])
def test_bad_config_returns_null_and_names_the_problem(config, names):
    assert lib.logpool_new(json.dumps(config).encode()) == ffi.NULL
    err = last_error()
    assert err.startswith("invalid configuration: ")
    assert names in err


@pytest.mark.parametrize("text", [b"", b"{", b"[1]", b"null", b'{"sinks": "unix:/x"}'])
def test_malformed_json_returns_null(text):
    assert lib.logpool_new(text) == ffi.NULL
    assert last_error().startswith("invalid configuration: ")


def test_error_messages_survive_control_characters_in_keys():
    assert lib.logpool_new(b'{"sinks": [{"url": "unix:/x"}], "\\u0000bad": 1}') == ffi.NULL
    assert last_error() == "invalid configuration: \\x00bad: unknown key (known: " + \
        last_error().split("(known: ", 1)[1]


def test_null_config_is_refused():
    assert lib.logpool_new(ffi.NULL) == ffi.NULL
    assert "NULL" in last_error()


def test_stats_reconcile_after_delivery(receiver):
    r = receiver()
    p = new_pool({"sinks": [{"url": r.url}]})
    try:
        for i in range(1000):
            m = b"%d\n" % i
            assert lib.log_cdata(p, 0, m, len(m)) == len(m)
        assert lib.logpool_flush(p, 5000) == 0
        st = stats(p)
        assert st.accepted_messages == st.sent_messages == 1000
        assert st.accepted_bytes == st.sent_bytes == sum(len(b"%d\n" % i) for i in range(1000))
        assert (st.buffered_bytes, st.buffered_messages, st.connects) == (0, 0, 1)
        wait_for(lambda: r.snapshot().messages == 1000, what="1000 lines at the receiver")
    finally:
        assert lib.logpool_close(p, 1000) == 0
        lib.logpool_free(p)


def test_flush_and_close_work_for_a_caller_that_holds_the_gil(receiver):
    # ctypes.PyDLL keeps the GIL across the call, as lupa's __gc does; the writers need it.
    import ctypes
    from logpool import paths
    dll = ctypes.PyDLL(paths.lib_path())
    dll.logpool_new.restype = ctypes.c_void_p
    dll.logpool_new.argtypes = [ctypes.c_char_p]
    dll.log_cdata.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_size_t]
    dll.logpool_flush.argtypes = dll.logpool_close.argtypes = [ctypes.c_void_p, ctypes.c_int]
    dll.logpool_free.argtypes = [ctypes.c_void_p]
    r = receiver()
    p = dll.logpool_new(json.dumps({"sinks": [{"url": r.url}]}).encode())
    assert p
    for i in range(100):
        assert dll.log_cdata(p, 0, b"%d\n" % i, len(b"%d\n" % i)) > 0
    assert dll.logpool_flush(p, 5000) == 0
    assert dll.logpool_close(p, 5000) == 0
    dll.logpool_free(p)
    wait_for(lambda: r.snapshot().messages == 100, what="100 lines")


def test_close_then_free_at_once_never_touches_freed_memory(tmp_path):
    # A writer must not read the pool after signalling its exit: logpool_free may run then.
    # Under `make sanitize` (ASan) a late read is a heap-use-after-free report.
    # The closer holds the GIL (as lupa's __gc does: ctypes.PyDLL keeps it), so free runs
    # before a writer that has just signalled its exit gets back into Python.
    import ctypes
    from logpool import paths
    dll = ctypes.PyDLL(paths.lib_path() if "LOGPOOL_LIB" not in __import__("os").environ
                       else __import__("os").environ["LOGPOOL_LIB"])
    dll.logpool_close.argtypes = [ctypes.c_void_p, ctypes.c_int]
    dll.logpool_free.argtypes = [ctypes.c_void_p]
    url = "unix:" + sock_path(tmp_path, "gone.sock")
    for _ in range(40):
        p = new_pool({"sinks": [{"url": url}, {"url": url}]})
        for sink in (0, 1):
            assert lib.log_cdata(p, sink, b"x\n", 2) == 2
        address = int(ffi.cast("uintptr_t", p))
        assert dll.logpool_close(address, 0) == 2
        dll.logpool_free(address)
