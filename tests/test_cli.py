"""python -m logpool paths / receive / nginx-snippet, as separate processes."""
import os
import re
import socket
import subprocess
import sys

from conftest import ROOT, sock_path, wait_for


def run_cli(*args, check=True):
    return subprocess.run([sys.executable, "-m", "logpool", *args], capture_output=True,
                          text=True, cwd=ROOT, check=check)


def test_paths_prints_lib_lua_include_and_the_nginx_module():
    lines = run_cli("paths").stdout.splitlines()
    assert [line.split(" ", 1)[0] for line in lines] == ["lib", "lua", "include", "nginx_module",
                                                         "producer_lib"]
    lib, lua, include, module, producer = (line.split(" ", 1)[1] for line in lines)
    assert os.path.isfile(producer) and producer.endswith("/liblogpool_producer.so")
    assert os.path.isabs(module) and os.path.isfile(module)
    assert module.endswith("/ngx_http_logpool_module.so")
    assert os.path.isabs(lib) and os.path.isfile(lib) and lib.endswith(".so")
    assert os.path.isfile(os.path.join(lua, "resty", "logpool.lua"))
    assert os.path.isfile(os.path.join(include, "logpool.h"))


def _send(url, data, shutdown=True):
    s = socket.socket(socket.AF_UNIX)
    s.connect(url[len("unix:"):])
    s.sendall(data)
    if shutdown:
        s.close()
    return s


def test_receive_writes_lines_as_they_arrive_drops_torn_tails_and_stops_on_sigterm(
        tmp_path, receive_process):
    rp = receive_process("unix:" + sock_path(tmp_path, "cli.sock"))
    live = _send(rp.url, b"one\ntwo\n", shutdown=False)
    # Visible while the connection is still open (the file is flushed, not just buffered).
    wait_for(lambda: rp.lines() == [b"one", b"two"], what="lines while connected")
    live.sendall(b"three\ntorn-without-newline")
    live.close()
    _send(rp.url, b"four\n")
    wait_for(lambda: sorted(rp.lines()) == [b"four", b"one", b"three", b"two"],
             what="complete lines only")
    assert rp.stop() == 0
    assert "1 torn messages dropped" in rp.summary
    assert not os.path.exists(rp.url[len("unix:"):])  # the socket file is removed


def test_receive_refuses_a_bad_listen_address():
    out = run_cli("receive", "--listen", "ftp://x", check=False)
    assert out.returncode == 2 and "--listen" in out.stderr and "Traceback" not in out.stderr


def test_nginx_snippet_names_this_installation_and_rejects_bad_sinks():
    out = run_cli("nginx-snippet", "--sink", "tcp://127.0.0.1:5140").stdout
    assert 'lua_package_path "' + os.path.join(ROOT, "lua") in out
    assert 'url = "tcp://127.0.0.1:5140"' in out
    for phase in ("init_worker_by_lua_block", "log_by_lua_block", "exit_worker_by_lua_block"):
        assert phase in out
    bad = run_cli("nginx-snippet", "--sink", "tcp://nowhere", check=False)
    assert bad.returncode == 2 and "sinks[0].url" in bad.stderr and "Traceback" not in bad.stderr


def test_demo_runs_end_to_end_and_checks_exactly_once():
    out = run_cli("demo", "--requests", "20000", check=False)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "OK: every line exactly once" in out.stdout
    served = int(re.search(r"requests served \(nginx access log\)\s+(\d+)", out.stdout).group(1))
    received = int(re.search(r"lines received by the collector\s+(\d+)", out.stdout).group(1))
    assert served == received >= 20000
