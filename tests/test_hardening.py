"""Hostile inputs and lifecycle defects (issue #11): each test names the item it guards."""
import json
import os
import re
import resource
import signal
import socket
import stat
import subprocess
import textwrap
import threading
import time

import pytest

import logpool
import logpool.pool  # a submodule: the package imports it lazily
from conftest import LockedBytes, PYTHON, ROOT, message, parse_line, sock_path, wait_for
from logpool import _binding, config as config_mod, paths
from logpool.receive import Receiver, server_tls_context

ffi = _binding.ffi
lib = _binding.lib()


def raw_pool(config):
    p = lib.logpool_new(json.dumps(config).encode())
    assert p != ffi.NULL, ffi.string(lib.logpool_last_error())
    return p


def run_python(code, timeout, **kwargs):
    """A Python program as a separate process (its own atexit, its own signals)."""
    return subprocess.run([PYTHON, "-c", textwrap.dedent(code)], capture_output=True,
                          text=True, timeout=timeout, cwd=ROOT, **kwargs)


# -- 1. a forked child that exits normally ---------------------------------------------------

def test_forked_python_child_exiting_normally_exits_at_once(receiver):
    r = receiver()
    proc = run_python(f"""
        import os, sys, logpool
        pool = logpool.Pool({{"sinks": [{{"url": {r.url!r}}}]}})
        pool.log(0, b"parent 1\\n")
        pid = os.fork()
        if pid == 0:
            sys.exit(0)  # Python's atexit and the library's C atexit both run here
        _, status = os.waitpid(pid, 0)
        print("child", status)
        pool.log(0, b"parent 2\\n")
        print("abandoned", pool.close(10))
    """, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "child 0" in proc.stdout and "abandoned 0" in proc.stdout
    wait_for(lambda: r.snapshot().messages == 2, what="the parent's lines")
    assert r.output.lines() == [b"parent 1", b"parent 2"]


def test_forked_luajit_child_exiting_with_os_exit_exits_at_once(receiver):
    from test_luajit_host import numbers, run_host
    r = receiver()
    proc = run_host("fork_exit", r.url, 300, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "child_status 0" in proc.stdout and "abandoned 0" in proc.stdout
    wait_for(lambda: r.snapshot().messages == 600, what="the parent's lines")
    assert numbers(r.output.lines()) == list(range(1, 601))


# -- 2. huge lengths are refused before a byte is read ---------------------------------------

@pytest.mark.parametrize("framing", ["raw", "newline", "octet-counting"])
def test_any_length_above_the_limit_is_too_big_without_reading_the_message(tmp_path, framing):
    p = raw_pool({"sinks": [{"url": "unix:" + sock_path(tmp_path, "down.sock")}],
                  "framing": framing})
    small = ffi.new("char[]", b"ab")  # the bytes past these two are not ours to read
    try:
        for length in (2**31, 2**32 + 1, 2**63, 2**64 - 1, 1024 * 1024 + 1):
            assert lib.log_cdata(p, 0, small, length) == lib.LOGPOOL_ETOOBIG, length
        st = ffi.new("logpool_stats_t *")
        lib.logpool_stats(p, 0, st)
        assert st.dropped_too_big == 5 and st.accepted_messages == 0
    finally:
        lib.logpool_close(p, 0)
        lib.logpool_free(p)


# -- 3. with, garbage collection, interpreter exit and Ctrl-C are bounded --------------------

DOWN = "unix:/nonexistent/logpool-down.sock"


def test_with_block_on_a_dead_sink_returns_after_its_default_close_timeout():
    proc = run_python(f"""
        import time, logpool
        start = time.monotonic()
        with logpool.Pool({{"sinks": [{{"url": {DOWN!r}}}]}}) as pool:
            pool.log(0, b"never delivered\\n")
        print("default", round(time.monotonic() - start, 1), pool.stats(0)["abandoned_messages"])
        start = time.monotonic()
        with logpool.Pool({{"sinks": [{{"url": {DOWN!r}}}]}}, close_timeout=0.2) as pool:
            pool.log(0, b"never delivered\\n")
        print("override", round(time.monotonic() - start, 1))
    """, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    default = re.search(r"default ([\d.]+) 1", proc.stdout)
    override = re.search(r"override ([\d.]+)", proc.stdout)
    assert default and override, proc.stdout
    assert logpool.pool.DEFAULT_CLOSE_TIMEOUT_S <= float(default.group(1)) < 15
    assert float(override.group(1)) < 3


def test_garbage_collection_and_interpreter_exit_are_bounded():
    proc = run_python(f"""
        import gc, logpool
        pool = logpool.Pool({{"sinks": [{{"url": {DOWN!r}}}]}})
        pool.log(0, b"x\\n")
        del pool
        gc.collect()
        print("collected")
        kept = logpool.Pool({{"sinks": [{{"url": {DOWN!r}}}]}})
        kept.log(0, b"y\\n")
        print("exiting")
    """, timeout=30)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "collected" in proc.stdout and "exiting" in proc.stdout
    assert "1 accepted messages abandoned" in proc.stderr


@pytest.mark.parametrize("call", ["flush()", "close()"])
def test_ctrl_c_interrupts_an_unbounded_wait(call):
    proc = subprocess.Popen([PYTHON, "-c", textwrap.dedent(f"""
        import sys, logpool
        pool = logpool.Pool({{"sinks": [{{"url": {DOWN!r}}}]}})
        pool.log(0, b"x\\n")
        try:
            print("waiting", flush=True)
            pool.{call}
        except KeyboardInterrupt:
            print("interrupted", flush=True)
            print("abandoned", pool.close(0), flush=True)
    """)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)
    try:
        assert proc.stdout.readline().strip() == "waiting"
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=30)
    finally:
        proc.kill()
    assert "interrupted" in out and "abandoned 1" in out, out + err


# -- 4. NaN, infinite and huge timeouts ------------------------------------------------------

@pytest.mark.parametrize("bad", [float("nan"), -1, -0.001, "1", True])
def test_python_refuses_nan_negative_and_non_numeric_timeouts(pools, tmp_path, bad):
    pool = pools({"sinks": [{"url": "unix:" + sock_path(tmp_path, "down.sock")}]})
    for call in (pool.flush, pool.close):
        with pytest.raises(logpool.InvalidArgument):
            call(bad)
    with pytest.raises(logpool.InvalidArgument):
        logpool.Pool({"sinks": [{"url": "unix:/x"}]}, close_timeout=bad)


@pytest.mark.parametrize("seconds, ms", [(float("inf"), 2**31 - 1), (1e300, 2**31 - 1),
                                         (2147483.647, 2**31 - 1), (0.25, 250), (None, -1)])
def test_python_clamps_huge_timeouts_to_the_c_range(seconds, ms):
    assert logpool.pool._ms(seconds) == ms


# -- 5. name resolution is bounded and yields to close ---------------------------------------

def test_slow_dns_is_bounded_by_connect_timeout_and_close_does_not_wait_for_it(monkeypatch):
    # The resolver answers after 30 s (injected at the resolver seam: no slow DNS server can
    # be run here). Resolution must give up after connect_timeout_ms, and close at once.
    monkeypatch.setenv("LOGPOOL_TEST_FAULTS", json.dumps({"resolve_delay": 1,
                                                          "resolve_delay_s": 30}))
    pool = logpool.Pool({"sinks": [{"url": "tcp://collector.invalid:5140"}],
                         "connect_timeout_ms": 200, "retry_interval_ms": 50,
                         "max_retry_interval_ms": 100})
    try:
        pool.log(0, b"x\n")
        wait_for(lambda: pool.stats(0)["connect_failures"] >= 2, timeout=20,
                 what="resolution timing out")
        assert "resolving 'collector.invalid' timed out" in pool.stats(0)["last_error"]
        started = time.monotonic()
        assert pool.close(0.1) == 1
        assert time.monotonic() - started < 10  # 30 s if close waited for the resolver
        writer = logpool._embedded.started_pool(pool._address)[1][0]
        writer.join(10)
        assert not writer.is_alive()  # stopped, not left behind in the resolver
    finally:
        pool.close(0)


# -- 6. a writer whose loop dies is restarted ------------------------------------------------

def test_a_crashed_writer_loop_is_counted_logged_and_restarted(receiver, monkeypatch, capfd):
    monkeypatch.setenv("LOGPOOL_TEST_FAULTS", json.dumps({"writer_crash": 1,
                                                          "max_writer_crash": 2}))
    r = receiver()
    pool = logpool.Pool({"sinks": [{"url": r.url}], "retry_interval_ms": 10,
                         "max_retry_interval_ms": 20})
    n = 3000
    for i in range(n):
        pool.log(0, message(0, i))
    pool.flush(30)
    st = pool.stats(0)
    assert st["writer_errors"] == 2 and st["sent_messages"] == n
    assert pool.close(5) == 0
    wait_for(lambda: r.snapshot().messages == n, what="all lines")
    assert [parse_line(line + b"\n")[1] for line in r.output.lines()] == list(range(n))
    assert "escaped the writer loop; restarting it" in capfd.readouterr().err


# -- 8. logpool_free from any host releases the Python side ----------------------------------

def test_freeing_pools_through_the_abi_releases_their_python_state(tmp_path):
    before = len(logpool._embedded.POOLS)
    for _ in range(50):
        p = raw_pool({"sinks": [{"url": "unix:" + sock_path(tmp_path, "down.sock")}]})
        lib.logpool_close(p, 0)
        lib.logpool_free(p)
    assert len(logpool._embedded.POOLS) == before


def test_pools_collected_by_lua_release_their_python_state(tmp_path):
    import lupa.luajit21 as lupa
    lua = lupa.LuaRuntime()
    lua.execute("package.path = ... .. '/?.lua;' .. package.path", paths.lua_dir())
    before = len(logpool._embedded.POOLS)
    lua.execute("""
        local url = ...
        local lp = require "resty.logpool"
        for i = 1, 30 do
            assert(lp.new({ sinks = { url } }))
        end
        collectgarbage(); collectgarbage()
    """, "unix:" + sock_path(tmp_path, "down.sock"))
    assert len(logpool._embedded.POOLS) == before


# -- 9, 10. config: unique names, host names the resolver could never take -------------------

@pytest.mark.parametrize("sinks, message", [
    ([{"url": "unix:/c", "name": "unix:/a#2"}, {"url": "unix:/a"}, {"url": "unix:/a"}],
     "sinks[2].name: this sink would be named 'unix:/a#2', which sinks[0] already is"),
    ([{"url": "unix:/a", "name": "x"}, {"url": "unix:/b", "name": "x"}],
     "sinks[1].name: duplicate sink name 'x' (also sinks[0])"),
])
def test_sink_names_are_unique_whether_given_or_generated(sinks, message):
    with pytest.raises(logpool.ConfigError) as exc:
        config_mod.parse({"sinks": sinks})
    assert message in str(exc.value)
    assert lib.logpool_new(json.dumps({"sinks": sinks}).encode()) == ffi.NULL
    assert message in ffi.string(lib.logpool_last_error()).decode()


def test_a_generated_name_steps_aside_for_a_given_one():
    cfg = config_mod.parse({"sinks": [{"url": "unix:/a"}, {"url": "unix:/b", "name": "unix:/a"},
                                      {"url": "unix:/b"}]})
    assert [s.name for s in cfg.sinks] == ["unix:/a#0", "unix:/a", "unix:/b"]


@pytest.mark.parametrize("url", ["tcp://a..b:1", "tls://" + "x" * 64 + ".example:1",
                                 "udp://-" + "y" * 300 + ":1"])
def test_host_names_idna_cannot_encode_are_config_errors(url):
    with pytest.raises(logpool.ConfigError) as exc:
        config_mod.parse({"sinks": [url]})
    assert "sinks[0].url" in str(exc.value) and "host name" in str(exc.value)


def test_a_resolver_error_is_a_counted_connect_failure_with_a_one_line_reason(monkeypatch):
    from logpool.transports import connection
    sink = config_mod.parse({"sinks": ["tcp://localhost:1"]}).sinks[0]

    def refuse(*args, **kwargs):  # what getaddrinfo raises for a name IDNA cannot encode
        raise UnicodeError("label empty or too long")
    monkeypatch.setattr(connection.socket, "getaddrinfo", refuse)
    with pytest.raises(OSError) as exc:
        connection.resolve(sink, sink.address, time.monotonic() + 5, lambda: False)
    assert "bad host name 'localhost'" in str(exc.value)


# -- 11. every code a call returns is documented ---------------------------------------------

def header_doc(function):
    """The comment block just before a declaration in logpool.h."""
    header = open(paths.header_path(), encoding="utf-8").read()
    decl = re.search(rf"^\w[^;\n]*\b{function}\(", header, re.M).start()
    return header[header.rindex("/*", 0, decl):decl]


def test_every_code_flush_and_close_return_is_in_the_header(tmp_path):
    p = raw_pool({"sinks": [{"url": "unix:" + sock_path(tmp_path, "down.sock")}]})
    assert lib.log_cdata(p, 0, b"x", 1) == 1
    seen = {"logpool_flush": {lib.logpool_flush(ffi.NULL, 0), lib.logpool_flush(p, 10)},
            "logpool_shutdown": {lib.logpool_shutdown(ffi.NULL), lib.logpool_shutdown(p)},
            "logpool_close": {lib.logpool_close(ffi.NULL, 0), lib.logpool_close(p, 0)}}
    seen["logpool_flush"].add(lib.logpool_flush(p, 0))  # writers gone: LOGPOOL_ECLOSED
    lib.logpool_free(p)
    names = {getattr(lib, n): n for n in dir(lib) if re.fullmatch(r"LOGPOOL_E\w+", n)}
    assert lib.LOGPOOL_ECLOSED in seen["logpool_flush"]
    for function, codes in seen.items():
        doc = header_doc(function)
        for code in {c for c in codes if c < 0}:
            assert names[code] in doc, (function, names[code], doc)


# -- 12-14. the receiver survives its peers --------------------------------------------------

def test_receiver_out_of_descriptors_keeps_serving_and_recovers(tmp_path):
    path = sock_path(tmp_path, "fd.sock")
    out, log = tmp_path / "out.log", tmp_path / "receiver.err"

    def low_fd_limit():
        resource.setrlimit(resource.RLIMIT_NOFILE, (24, 24))
    with open(log, "w") as err:
        # --max-connections past the descriptors (the default stays below them): the
        # receiver must survive running out all the same.
        proc = subprocess.Popen([PYTHON, "-m", "logpool", "receive", "--listen", "unix:" + path,
                                 "--out", str(out), "--max-connections", "64"], stderr=err,
                                cwd=ROOT, preexec_fn=low_fd_limit)
    clients = []
    try:
        wait_for(lambda: "listening on" in log.read_text(), what="the receiver")
        for _ in range(40):  # the listen backlog takes them; accept() runs out of descriptors
            c = socket.socket(socket.AF_UNIX)
            c.connect(path)
            clients.append(c)
        wait_for(lambda: "accept failed" in log.read_text() or proc.poll() is not None,
                 what="the receiver's accept error")
        assert proc.poll() is None, log.read_text()
        for c in clients:
            c.close()
        clients = []
        with logpool.Pool({"sinks": [{"url": "unix:" + path}]}) as pool:
            for i in range(100):
                pool.log(0, message(0, i))
            pool.flush(30)
        wait_for(lambda: out.exists() and out.read_bytes().count(b"\n") == 100,
                 what="lines after recovery")
        assert proc.poll() is None, log.read_text()
    finally:
        for c in clients:
            c.close()
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=15)
    text = log.read_text()
    assert text.count("accept failed") == 1, text  # logged once, not once per attempt
    assert "100 messages" in text and re.search(r"[1-9]\d* accept errors", text), text


def connect_raw(url):
    if url.startswith("unix:"):
        c = socket.socket(socket.AF_UNIX)
        c.connect(url[len("unix:"):])
    else:
        host, port = url.rsplit("/", 1)[1].rsplit(":", 1)
        c = socket.create_connection((host, int(port)))
    c.settimeout(30)
    return c


def test_receiver_hangs_up_on_idle_connections(receiver):
    r = receiver(idle_timeout=0.3)
    c = connect_raw(r.url)
    c.sendall(b"one line\n")
    assert c.recv(1) == b""  # the receiver hung up after 0.3 s of silence
    assert r.snapshot().timeouts == 1 and r.output.lines() == [b"one line"]


def test_receiver_hangs_up_on_a_stalled_tls_handshake(receiver, test_ca):
    cert, key = test_ca.issue("server", ["127.0.0.1"])
    r = receiver("tls://127.0.0.1:0", tls=server_tls_context(cert, key),
                      handshake_timeout=0.3,
                      idle_timeout=600)
    c = connect_raw(r.url)  # TCP only: never says hello
    assert c.recv(1) == b""
    assert r.snapshot().timeouts == 1


@pytest.mark.parametrize("framing, data", [
    ("octet-counting", b"9999999999 abc"),          # announces 10 GB
    ("newline", b"x" * 5000),                       # a line that never ends
])
def test_receiver_caps_a_partial_message(receiver, framing, data):
    r = receiver(framing=framing, max_message_size=4096)
    c = connect_raw(r.url)
    c.sendall(b"12 good message" if framing == "octet-counting" else b"good message\n")
    c.sendall(data)
    assert c.recv(1) == b""
    assert r.snapshot().oversized == 1 and r.snapshot().messages == 1


def test_receiver_buffers_a_long_message_in_linear_time(receiver):
    # 32 MiB in 4 KiB reads: re-copying the partial message on every read (as before) is
    # 128 GiB of copying; appending in place is 32 MiB.
    from logpool.receive.loop import Connection
    from logpool.receive.stream import StreamProtocol
    r = receiver(max_message_size=64 << 20)
    a, b = socket.socketpair()
    proto = StreamProtocol(r, Connection(a, r.clock(), handshaking=False))
    piece = b"z" * 4096
    done = threading.Event()

    def feed():
        for _ in range(8192):
            assert proto.feed(piece)
        assert proto.feed(b"\n")
        done.set()
    threading.Thread(target=feed, daemon=True).start()
    assert done.wait(20), "buffering a long message is not linear"
    assert r.snapshot().messages == 1 and r.snapshot().bytes == 32 * 1024 * 1024 + 1
    a.close()
    b.close()


def test_receiver_never_deletes_a_regular_file_or_a_live_socket(tmp_path, receiver):
    precious = sock_path(tmp_path, "precious.log")
    with open(precious, "w") as f:
        f.write("keep me\n")
    result = subprocess.run([PYTHON, "-m", "logpool", "receive", "--listen", "unix:" + precious],
                            capture_output=True, text=True, cwd=ROOT, timeout=30)
    assert result.returncode == 2 and "exists and is not a socket" in result.stderr
    assert open(precious).read() == "keep me\n"

    live = receiver()
    with pytest.raises(OSError, match="another process is listening"):
        Receiver(live.url, LockedBytes())
    assert connect_raw(live.url)  # still reachable: its socket was left alone

    stale = sock_path(tmp_path, "stale.sock")
    s = socket.socket(socket.AF_UNIX)
    s.bind(stale)
    s.close()  # a socket file nobody listens on
    r = receiver("unix:" + stale)
    assert stat.S_IMODE(os.stat(stale).st_mode) == 0o660
    assert connect_raw(r.url)


def test_receiver_gives_a_unix_socket_the_mode_asked_for(tmp_path):
    path = sock_path(tmp_path, "mode.sock")
    proc = subprocess.Popen([PYTHON, "-m", "logpool", "receive", "--listen", "unix:" + path,
                             "--mode", "0600"], stderr=subprocess.PIPE, text=True, cwd=ROOT)
    try:
        assert "listening on" in proc.stderr.readline()
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=15)
        proc.stderr.close()


# -- 16. the nginx snippet quotes what it prints ---------------------------------------------

def test_nginx_snippet_quotes_urls_as_lua_strings(tmp_path):
    from logpool.cli import lua_string
    import lupa.luajit21 as lupa
    lua = lupa.LuaRuntime()
    for text in ['unix:/tmp/a"b.sock', "unix:/tmp/back\\slash", "unix:/tmp/new\nline",
                 "unix:/tmp/ü]]--", "unix:/tmp/\0nul"]:
        assert lua.eval(lua_string(text)) == text
    out = subprocess.run([PYTHON, "-m", "logpool", "nginx-snippet", "--sink",
                          'unix:/tmp/quote"d.sock'], capture_output=True, text=True, cwd=ROOT,
                         check=True).stdout
    assert 'url = "unix:/tmp/quote\\"d.sock"' in out
