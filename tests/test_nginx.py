"""logpool inside a real nginx: 2 workers, log_by_lua, reloads, signals, misconfiguration."""
import collections
import os
import signal

import pytest

from conftest import Load, octet_frames, sock_path, wait_for
from logpool.tools.nginx import Nginx


def logpool_conf(url, extra=""):
    http_extra = f"""
    init_worker_by_lua_block {{
        require("resty.logpool").start({{
            sinks = {{ {{ url = "{url}", name = "main" }} }},
            periodic_flush_ms = 50, retry_interval_ms = 20, max_retry_interval_ms = 200,
            {extra}
        }})
    }}
    exit_worker_by_lua_block {{
        require("resty.logpool").stop(5)
    }}
    """
    server_extra = """
        log_by_lua_block {
            require("resty.logpool").log("main", ngx.var.request_id .. "\\n")
        }
    """
    return http_extra, server_extra


@pytest.fixture
def nginx(tmp_path):
    started = []

    def start(*args, **kwargs):
        n = Nginx(tmp_path / f"nginx{len(started)}", *args, **kwargs)
        started.append(n)
        return n.start()

    yield start
    for n in started:
        n.kill()


def received_ids(rp):
    return [line.decode() for line in rp.lines()]


def assert_exactly_once(access_ids, got_ids):
    counts = collections.Counter(got_ids)
    dupes = [k for k, v in counts.items() if v > 1]
    assert not dupes, f"{len(dupes)} lines arrived more than once"
    missing = set(access_ids) - set(counts)
    assert not missing, f"{len(missing)} of {len(access_ids)} requests' lines never arrived"
    assert set(counts) == set(access_ids)


def test_two_workers_ship_one_line_per_request_exactly_once(tmp_path, nginx, receive_process):
    rp = receive_process()
    ng = nginx(*logpool_conf(rp.url), workers=2)
    n = 3000
    assert ng.requests(n, connections=8) == [200] * n
    assert ng.quit() == 0
    rp.stop()
    ids = ng.access_ids()
    assert len(ids) == n + 1  # + the harness's readiness probe
    assert_exactly_once(ids, received_ids(rp))


def reload_during(ng, load, after):
    """A reload while `load` (conftest.Load) runs: SIGHUP, the new workers up, `after` more
    requests, the load stopped, then the old workers gone. The load stops before the old
    workers have left: how long they take (their exit flush; up to stop(5) with a collector
    down) must not decide how many requests the test makes."""
    old = ng.worker_pids()
    ng.signal(signal.SIGHUP)
    wait_for(lambda: len(ng.worker_pids() - old) >= ng.workers_expected(), timeout=60,
             interval=0.01, what="new workers")
    load.wait_requests(load.requests() + after, "requests after the reload")
    load.stop()
    wait_for(lambda: not (ng.worker_pids() & old), timeout=60, interval=0.02,
             what="old workers to exit after reload")


def reload_under_load(ng, before=2000, after=2000, connections=8):
    """wrk until `before` requests are logged, a reload under that load, wrk on until `after`
    more are logged, then quit. The access log's request ids. Bounded by counts, not by time:
    the same amount of work on a slow machine and on a fast one (see conftest.Load)."""
    with Load(ng, connections) as load:
        load.wait_requests(before, "requests before the reload")
        reload_during(ng, load, after)
    assert ng.quit() == 0
    ids = ng.access_ids()
    assert len(ids) >= before + after
    return ids


def test_reload_and_quit_under_load_lose_and_duplicate_nothing(tmp_path, nginx, receive_process):
    rp = receive_process()
    ng = nginx(*logpool_conf(rp.url), workers=2)
    ids = reload_under_load(ng, connections=16)
    rp.stop()
    assert_exactly_once(ids, received_ids(rp))


@pytest.mark.parametrize("scheme", ["http", "relp"])
def test_acknowledged_sinks_ship_every_request_once_across_a_reload(tmp_path, nginx,
                                                                    receive_process, scheme):
    listen = f"{scheme}://127.0.0.1:0" + ("/ingest" if scheme == "http" else "")
    rp = receive_process(listen)
    ng = nginx(*logpool_conf(rp.url), workers=2)
    ids = reload_under_load(ng)
    rp.stop()
    assert_exactly_once(ids, received_ids(rp))


def test_sink_down_at_start_is_delivered_once_it_comes_up(tmp_path, nginx, receive_process):
    listen = "unix:" + sock_path(tmp_path, "late.sock")
    ng = nginx(*logpool_conf(listen), workers=2)
    n = 500
    assert ng.requests(n) == [200] * n
    rp = receive_process(listen)
    wait_for(lambda: len(rp.lines()) == n + 1, timeout=20, what="lines after the sink came up")
    assert_exactly_once(ng.access_ids(), received_ids(rp))
    assert ng.quit() == 0


@pytest.mark.parametrize("case", ["wrong lib path", "bad config key", "init_by_lua",
                                  "unreadable sink"])
def test_misconfiguration_never_takes_nginx_down(tmp_path, nginx, receive_process, case):
    rp = receive_process()
    http_extra, server_extra = logpool_conf(rp.url)
    wrapper = ()
    expected = {
        "wrong lib path": "cannot load /nonexistent/liblogpool.so",
        "bad config key": "invalid configuration: periodic_flush: unknown key",
        "init_by_lua": "cannot start in init_by_lua",
        "unreadable sink": "Permission denied (running as uid 0)",
    }[case]
    if case == "wrong lib path":
        http_extra = http_extra.replace('name = "main" } },',
                                        'name = "main" } }, lib_path = "/nonexistent/liblogpool.so",')
    elif case == "bad config key":
        http_extra = http_extra.replace("periodic_flush_ms = 50", "periodic_flush = 50")
    elif case == "init_by_lua":
        http_extra = f"""
        init_by_lua_block {{
            require("resty.logpool").start({{ sinks = {{ {{ url = "{rp.url}", name = "main" }} }} }})
        }}
        """
    elif case == "unreadable sink":
        locked = tmp_path / "locked"
        locked.mkdir()
        http_extra = http_extra.replace(rp.url, "unix:" + sock_path(locked, "s.sock"))
        os.chmod(locked, 0)
        # Root ignores file modes: drop the capability, as for an unprivileged worker.
        wrapper = ("setpriv", "--inh-caps=-all",
                   "--bounding-set=-dac_override,-dac_read_search")
    ng = nginx(http_extra, server_extra, workers=1, wrapper=wrapper)
    assert ng.requests(200) == [200] * 200
    log = wait_for(lambda: expected in ng.read_error_log() and ng.read_error_log(), timeout=10,
                   what=f"an error log line with {expected!r}")
    lines = [line for line in log.splitlines() if expected in line]
    assert len(lines) == 1, lines
    assert "Traceback" not in log
    assert ng.quit() == 0


def test_signals_work_with_writer_threads_alive(tmp_path, nginx, receive_process):
    rp = receive_process()
    ng = nginx(*logpool_conf(rp.url), workers=2)
    assert ng.requests(100) == [200] * 100
    before = ng.worker_pids()
    ng.reload()  # HUP: new workers, old ones gone
    assert not (ng.worker_pids() & before)
    assert ng.requests(100) == [200] * 100
    os.rename(ng.access_log, ng.access_log + ".1")
    ng.signal(signal.SIGUSR1)  # reopen: the workers open a new access log
    wait_for(lambda: os.path.exists(ng.access_log), timeout=10, what="reopened access log")
    assert ng.requests(10) == [200] * 10
    workers = ng.worker_pids()
    assert ng.quit(timeout=20) == 0  # QUIT: every worker leaves, master exits 0
    assert all(not os.path.exists(f"/proc/{p}/status") for p in workers)
    rp.stop()
    assert len(rp.lines()) == 211  # probe + 100 + probe after reload + 100 + 10


def compat_logger_conf(options):
    """log_by_lua with lua-resty-logger-socket's usage; `options` is the init{} table body."""
    return f"""
        log_by_lua_block {{
            local logger = require "resty.logpool.compat"
            if not logger.initted() then
                local ok, err = logger.init{{ {options}, periodic_flush = 0.05 }}
                if not ok then
                    ngx.log(ngx.ERR, "failed to initialize the logger: ", err)
                    return
                end
            end
            local _, err = logger.log(ngx.var.request_id .. "\\n")
            if err then
                ngx.log(ngx.ERR, "failed to log message: ", err)
            end
        }}
    """


def test_compat_runs_lua_resty_logger_socket_usage_unchanged(tmp_path, nginx, receive_process):
    rp = receive_process()
    path = rp.url[len("unix:"):]
    # lua-resty-logger-socket's README usage, with only the require changed. No
    # exit_worker_by_lua: at quit, the library's exit fallback delivers the rest.
    server_extra = compat_logger_conf(
        # README's drop_limit = 5678 would drop while the pool starts
        f'path = "{path}", flush_limit = 1234, drop_limit = 1048576') + f"""
        location /drop {{
            content_by_lua_block {{
                local compat = require "resty.logpool.compat"
                local logger = assert(compat.new{{ path = "{tmp_path}/down.sock",
                                                   flush_limit = 10, drop_limit = 100 }})
                local out = {{}}
                for i = 1, 5 do out[i] = logger:log(string.rep("m", 29) .. "\\n") end
                ngx.say(table.concat(out, " "))
            }}
        }}
    """
    ng = nginx("", server_extra, workers=2)
    n = 1000
    assert ng.requests(n) == [200] * n
    # periodic_flush delivers without a reload or a quit
    wait_for(lambda: len(rp.lines()) == n + 1, timeout=20, what="periodic flush")
    assert ng.get("/drop") == (200, b"30 30 30 0 0\n")  # drop_limit: the 4th does not fit
    assert ng.requests(50) == [200] * 50
    assert ng.quit() == 0
    rp.stop()
    assert_exactly_once(ng.access_ids(), received_ids(rp))
    assert "failed to" not in ng.read_error_log()


def test_the_printed_nginx_snippet_works_as_pasted(tmp_path, nginx, receive_process):
    import subprocess
    import sys
    # A collector path with a quote and a backslash: the snippet must quote it as Lua.
    odd_dir = tmp_path / 'a"b\\c'
    odd_dir.mkdir()
    rp = receive_process("unix:" + str(odd_dir / "s.sock"))
    snippet = subprocess.run([sys.executable, "-m", "logpool", "nginx-snippet", "--sink", rp.url],
                             capture_output=True, text=True, check=True).stdout
    http_part, server_part = snippet.split("# --- and in each server")
    server_part = server_part.split("\n", 1)[1]
    ng = nginx(http_part, server_part, workers=2, package_path=False)  # the snippet has its own
    assert ng.requests(300) == [200] * 300
    assert ng.quit() == 0
    rp.stop()
    lines = rp.lines()
    assert len(lines) == 301 and all(line.startswith(b"127.0.0.1 GET /") for line in lines)


def test_compat_flush_in_a_yieldable_phase_returns_the_bytes_sent(tmp_path, nginx,
                                                                    receive_process):
    # lua-resty-logger-socket's t/flush.t TEST 1: log "abc" and "efg", flush() says 6.
    rp = receive_process(args=("--framing", "raw"))
    path = rp.url[len("unix:"):]
    server_extra = f"""
        location /t {{
            content_by_lua_block {{
                local logger = require "resty.logpool.compat"
                if not logger.initted() then
                    assert(logger.init{{ path = "{path}", flush_limit = 100,
                                        periodic_flush = 600 }})
                end
                logger.log("abc")
                logger.log("efg")
                local bytes, err = logger.flush()
                ngx.say(bytes, " ", err)
            }}
        }}
    """
    ng = nginx("", server_extra, workers=1)
    assert ng.get("/t") == (200, b"6 nil\n")
    assert ng.quit() == 0
    rp.stop()
    assert rp.lines() == [b"abcefg"]


def test_metrics_location_shows_the_totals_of_all_workers(tmp_path, nginx, receive_process):
    from prometheus_client.parser import text_string_to_metric_families
    rp = receive_process()
    http_extra = f"""
    lua_shared_dict logpool_metrics 1m;
    init_worker_by_lua_block {{
        local logpool = require "resty.logpool"
        logpool.start({{ sinks = {{ {{ url = "{rp.url}", name = "main" }} }} }})
        logpool.publish_metrics("logpool_metrics", 0.2)
    }}
    """
    server_extra = """
        location = /metrics {
            allow 127.0.0.1;
            deny all;
            content_by_lua_block {
                require("resty.logpool").serve_metrics("logpool_metrics")
            }
        }
        location /app {
            return 200 "app\\n";
            log_by_lua_block {
                require("resty.logpool").log("main", ngx.worker.id() .. " " .. ngx.var.request_id .. "\\n")
            }
        }
    """
    # reuseport: one listening socket per worker, connections hashed across them, so the
    # 16 connections land on both workers.
    ng = nginx(http_extra, server_extra, workers=2, listen_opts="reuseport")
    n = 2000
    assert ng.requests(n, path="/app", connections=16) == [200] * n
    wait_for(lambda: len(rp.lines()) == n, timeout=20, what="all lines")
    assert {line.split()[0] for line in rp.lines()} == {b"0", b"1"}  # both workers served

    def totals():
        status, body = ng.get("/metrics")
        assert status == 200
        out = {}
        for family in text_string_to_metric_families(body.decode()):
            for s in family.samples:
                if s.labels.get("sink") == "main" and "reason" not in s.labels:
                    out[s.name] = out.get(s.name, 0) + s.value
        return out

    # Snapshots are up to 0.2 s old and a worker may publish before its last batch left.
    t = wait_for(lambda: (lambda t: t if t.get("logpool_accepted_messages_total") == n
                          and t.get("logpool_sent_messages_total") == n else None)(totals()),
                 timeout=10, what="totals of both workers")
    assert t["logpool_connected"] == 2  # one connection per worker
    assert t["logpool_connects_total"] == 2
    assert t["logpool_batch_bytes_sum"] == t["logpool_sent_bytes_total"]
    # The operator's live view of the same endpoint.
    import subprocess
    import sys
    top = subprocess.run([sys.executable, "-m", "logpool", "top", "--metrics-url",
                          f"http://127.0.0.1:{ng.port}/metrics", "--interval", "0.2", "--once"],
                         capture_output=True, text=True, timeout=30)
    assert top.returncode == 0, top.stderr
    header, row = top.stdout.splitlines()[:2]
    assert header.split()[:3] == ["sink", "msgs/s", "MB/s"]
    assert row.split()[0] == "main" and row.split()[3] == str(n)  # sent
    assert ng.quit() == 0


def test_compat_ssl_options_ship_over_verified_tls(tmp_path, nginx, receive_process, test_ca):
    cert, key = test_ca.issue("collector", names=("logs.internal",))
    rp = receive_process("tls://127.0.0.1:0", args=("--cert-file", cert, "--key-file", key))
    port = rp.url.rsplit(":", 1)[1]
    # The certificate names logs.internal, not 127.0.0.1: sni_host is what is checked.
    ng = nginx("", compat_logger_conf(
        f'host = "127.0.0.1", port = {port}, ssl = true, ssl_verify = true, '
        f'sni_host = "logs.internal", ssl_trusted_certificate = "{test_ca.ca_file}"'),
        workers=2)
    n = 500
    assert ng.requests(n) == [200] * n
    # n requests and the harness's start-up probe
    wait_for(lambda: len(rp.lines()) == n + 1, timeout=20, what="lines over TLS")
    assert ng.quit() == 0
    rp.stop()
    assert_exactly_once(ng.access_ids(), received_ids(rp))
    assert "failed to" not in ng.read_error_log()


def test_compat_ssl_verify_refuses_a_wrong_name_and_says_so(tmp_path, nginx, receive_process,
                                                           test_ca):
    cert, key = test_ca.issue("collector", names=("logs.internal",))
    rp = receive_process("tls://127.0.0.1:0", args=("--cert-file", cert, "--key-file", key))
    port = rp.url.rsplit(":", 1)[1]
    ng = nginx("", compat_logger_conf(
        f'host = "127.0.0.1", port = {port}, ssl = true, '
        f'ssl_trusted_certificate = "{test_ca.ca_file}"'), workers=1)
    assert ng.requests(20) == [200] * 20
    # Without sni_host, the host is checked: an IP address the certificate does not name.
    expected = "certificate refused: IP address mismatch, certificate is not valid for '127"
    wait_for(lambda: expected in ng.read_error_log(), timeout=20, what="the refusal logged")
    assert ng.quit() == 0
    rp.stop()
    assert rp.lines() == []  # nothing went to a collector that could not prove its name


def test_compat_udp_sends_one_datagram_per_message(tmp_path, nginx, receive_process):
    # Octet-counted output shows each datagram's length: two merged messages would show.
    rp = receive_process("udp://127.0.0.1:0", args=("--framing", "octet-counting"))
    port = rp.url.rsplit(":", 1)[1]
    ng = nginx("", compat_logger_conf(f'host = "127.0.0.1", port = {port}, sock_type = "udp"'),
               workers=2)
    n = 500
    assert ng.requests(n) == [200] * n

    def frames():
        with open(rp.out_path, "rb") as f:
            return octet_frames(f.read())

    wait_for(lambda: len(frames()) >= n, timeout=20, what="datagrams")
    assert ng.quit() == 0
    rp.stop()
    got = frames()
    assert all(f.endswith(b"\n") and f.count(b"\n") == 1 for f in got), "merged datagrams"
    assert_exactly_once(ng.access_ids(), [f[:-1].decode() for f in got])
