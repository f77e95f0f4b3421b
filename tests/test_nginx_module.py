"""The native nginx module (ngx_http_logpool_module.so) in a real nginx WITHOUT the Lua module:
delivery across reload and quit, logpool_log scoping, escaping, metrics of all workers,
`nginx -t` checks, and a worker whose pool cannot start keeps serving."""
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time

import pytest

from conftest import ROOT, sock_path, wait_for
from logpool import paths
from logpool.tools.nginx import MODULES, NginxError, free_port, native_modules
from nativenginx import SilentUpstream, assert_never_crashed, module_path
from test_nginx import assert_exactly_once, reload_under_load


def pool_json(url, name="main", framing="newline", **extra):
    sink = {"name": name, "url": url}
    if framing:
        sink["framing"] = framing  # an HTTP sink frames by http_format (ndjson)
    config = {"sinks": [sink],
              "periodic_flush_ms": 50, "retry_interval_ms": 20, "max_retry_interval_ms": 200}
    config.update(extra)
    return json.dumps(config)


def module_conf(config_json, log="logpool_log main rid;", formats="", exit_timeout="5s"):
    # nginx.conf single quotes: a quote or backslash in the JSON is escaped for nginx.
    quoted = config_json.replace("\\", "\\\\").replace("'", "\\'")
    return f"""
    logpool_pool '{quoted}';
    logpool_exit_timeout {exit_timeout};
    logpool_format rid '$request_id';
    {formats}
    {log}
    """


def assert_plain_nginx(ng):
    with open(ng.conf_path) as f:
        conf = f.read()
    assert "ngx_http_lua_module" not in conf and module_path() in conf


def mapped_files(pid):
    with open(f"/proc/{pid}/maps") as f:
        return {line.split()[-1] for line in f if "/" in line}


def assert_library_in_workers_only(ng):
    """The master never loads the library (nor Python): the pool must not cross a fork."""
    lib = os.path.realpath(paths.lib_path())
    master = mapped_files(ng.proc.pid)
    assert lib not in master and not any("libpython" in m for m in master)
    for pid in ng.worker_pids():
        assert lib in mapped_files(pid)


@pytest.mark.parametrize("scheme", ["unix", "relp", "http"])
def test_every_request_once_across_a_reload_and_a_quit_under_load(tmp_path, nginx,
                                                                   receive_process, scheme):
    listen = {"unix": "unix:" + sock_path(tmp_path, "stream.sock"),
              "relp": "relp://127.0.0.1:0", "http": "http://127.0.0.1:0/ingest"}[scheme]
    rp = receive_process(listen)
    ng = nginx(module_conf(pool_json(rp.url, framing=None if scheme == "http" else "newline")),
               workers=2)
    assert_plain_nginx(ng)
    assert_library_in_workers_only(ng)
    ids = reload_under_load(ng)  # bounded by request counts, not by a time: see conftest.Load
    rp.stop()
    assert_exactly_once(ids, [line.decode() for line in rp.lines()])
    assert_never_crashed(ng)


def test_if_off_and_an_inner_level_replacing_the_outer_ones(tmp_path, nginx, receive_process):
    rp = receive_process()
    formats = """
    logpool_format http_fmt 'http $request_id';
    logpool_format server_fmt 'server $request_id';
    logpool_format inner_fmt 'inner $request_id';
    logpool_format cond_fmt 'cond $request_id';
    """
    server_extra = """
        logpool_log main server_fmt;
        location /id { return 200 "$request_id"; }
        location /off { logpool_log off; return 200 "$request_id"; }
        location /inner {
            logpool_log main inner_fmt;
            logpool_log main cond_fmt if=$arg_log;
            return 200 "$request_id";
        }
    """
    ng = nginx(module_conf(pool_json(rp.url), log="logpool_log main http_fmt;", formats=formats),
               server_extra, workers=1)
    rid = {}
    for path in ("/id", "/off", "/inner", "/inner?log=1", "/inner?log=0", "/inner?log="):
        status, body = ng.get(path)
        assert status == 200
        rid[path] = body.decode()
    assert ng.quit() == 0
    rp.stop()
    got = sorted(line.decode() for line in rp.lines())
    expected = sorted([
        f"server {rid['/id']}",                      # the server level replaces http's
        f"inner {rid['/inner']}",                    # the location level replaces the server's
        f"inner {rid['/inner?log=1']}", f"cond {rid['/inner?log=1']}",  # if= is true
        f"inner {rid['/inner?log=0']}",              # "0" is false
        f"inner {rid['/inner?log=']}",               # "" is false
    ])
    # the harness's readiness probe (GET /) is logged at the server level too
    probe = [line for line in got if line.startswith("server ") and line not in expected]
    assert len(probe) == 1
    assert [line for line in got if line not in probe] == expected
    assert not any(line.endswith(rid["/off"]) for line in got)


HOSTILE = [
    # (raw request, the user agent as the JSON line must decode it)
    (b'GET /q"\\\xff\xe2\x82\xac?a="b" HTTP/1.1\r\nHost: x\r\nUser-Agent: x"y\\z\x01\x1f\x7f'
     b'\xff\xc3\x28\xe2\x82\xac\xed\xa0\x80\xf4\x90\x80\x80 end\r\nConnection: close\r\n\r\n',
     'x"y\\z\x01\x1f\x7f\ufffd\ufffd(\u20ac\ufffd\ufffd\ufffd\ufffd\ufffd\ufffd\ufffd end'),
    (b"GET /\x01\x7f HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", None),
    (b"GET /\xc0\xaf HTTP/1.1\r\nHost: x\r\nUser-Agent: \xc0\xaf\r\nConnection: close\r\n\r\n",
     "\ufffd\ufffd"),
]


def test_json_escaping_of_hostile_requests_gives_valid_json_per_line(tmp_path, nginx,
                                                                      receive_process):
    rp = receive_process()
    formats = """
    logpool_format js escape=json_utf8 '{"rid":"$request_id","req":"$request",'
                                  '"ua":"$http_user_agent","none":"$http_x_none"}';
    logpool_format plain 'plain $request_id "$http_user_agent"';
    """
    ng = nginx(module_conf(pool_json(rp.url), log="logpool_log main js; logpool_log main plain;",
                           formats=formats), workers=1)
    for raw, _ in HOSTILE:
        with socket.create_connection(("127.0.0.1", ng.port), timeout=10) as s:
            s.sendall(raw)
            while s.recv(65536):
                pass
    assert ng.quit() == 0
    rp.stop()
    records, plain = [], []
    for line in rp.lines():
        if line.startswith(b"plain "):
            plain.append(line)
            continue
        record = json.loads(line.decode("utf-8"))  # strict UTF-8, strict JSON
        assert set(record) == {"rid", "req", "ua", "none"} and record["none"] == ""
        records.append(record)
    assert len(records) == len(HOSTILE) + 1  # + the readiness probe
    uas = [r["ua"] for r in records]
    for raw, ua in HOSTILE:
        if ua is not None:
            assert ua in uas, (ua, uas)
    assert any(r["req"].startswith('GET /q"\\\ufffd\u20ac?a="b"') for r in records), records
    assert "GET /\ufffd\ufffd HTTP/1.1" in [r["req"] for r in records], records
    # escape=default: quotes, backslashes and bytes outside 0x20-0x7e as \xXX, like access_log
    assert any(b'"x\\x22y\\x5Cz\\x01\\x1F\\x7F\\xFF\\xC3(' in line for line in plain), plain
    assert_never_crashed(ng)


def test_a_line_is_measured_exactly_against_the_line_limit(tmp_path, nginx, receive_process):
    """A 12 MiB value with escape=json is a 12 MiB line: not refused as if each byte took the
    six bytes of its worst case (72 MiB, over the 64 MiB limit)."""
    rp = receive_process(args=("--max-message-size", str(32 << 20)))
    big = 12 << 20
    config = pool_json(rp.url, max_message_size=16 << 20, max_buffer_length=64 << 20)
    up = free_port()
    http_extra = module_conf(config, log="", formats="""
    logpool_format body escape=json 'body $request_body';
    client_max_body_size 16m;
    client_body_buffer_size 16m;
    """) + f"server {{ listen 127.0.0.1:{up}; location / {{ return 200; }} }}"
    server_extra = f"location = /big {{ logpool_log main body; proxy_pass http://127.0.0.1:{up}; }}"
    ng = nginx(http_extra, server_extra, workers=1)
    with socket.create_connection(("127.0.0.1", ng.port), timeout=30) as s:
        s.sendall(b"POST /big HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
                  b"Content-Length: %d\r\n\r\n" % big + b"a" * big)
        assert s.recv(100).startswith(b"HTTP/1.1 200")
    assert ng.quit() == 0
    rp.stop()
    assert [len(line) for line in rp.lines()] == [len("body ") + big]
    assert "not shipped" not in ng.read_error_log()


@pytest.fixture(scope="module")
def escaping(tmp_path_factory):
    """The module's escaping functions compiled alone (they use only u_char and ngx_cpymem),
    under ASan/UBSan, as a library exporting escape(kind, dst, src, len, &counted) -> length."""
    source = open(os.path.join(ROOT, "nginx", "ngx_http_logpool_format.c")).read()
    block = source[source.index("/* LOGPOOL_ESCAPING_BEGIN"):
                   source.index("/* LOGPOOL_ESCAPING_END")]
    tmp = tmp_path_factory.mktemp("escape")
    (tmp / "escape.c").write_text(ESCAPE_PRELUDE + block + ESCAPE_ENTRY)
    so = str(tmp / "escape.so")
    subprocess.run(["gcc", "-O1", "-g", "-Wall", "-Werror", "-fsanitize=address,undefined",
                    "-fno-sanitize-recover=undefined", "-shared", "-fPIC", "-o", so,
                    str(tmp / "escape.c")], check=True)
    return so


ESCAPE_PRELUDE = r"""
#include <stddef.h>
#include <stdint.h>
#include <string.h>
typedef unsigned char u_char;
#define ngx_cpymem(d, s, n) (((u_char *) memcpy(d, s, n)) + (n))
"""

ESCAPE_ENTRY = r"""
/* kind: 0 escape=default, 1 json, 2 json_utf8; the length the module reserves, checked too */
size_t escape(int kind, u_char *d, u_char *s, size_t len, size_t *counted)
{
    u_char  *e;

    if (kind == 0) {
        e = ngx_http_logpool_escape_default(d, s, len);
        *counted = ngx_http_logpool_default_len(s, len);
    } else {
        e = ngx_http_logpool_escape_json(d, s, len, kind == 2);
        *counted = ngx_http_logpool_json_len(s, len, kind == 2);
    }
    return (size_t) (e - d);
}
"""

# Run in a child that preloads the sanitizer runtimes (an ASan library needs them first).
ESCAPE_CHILD = r"""
import ctypes, json, random, re, sys
lib = ctypes.CDLL(sys.argv[1])
lib.escape.restype = ctypes.c_size_t
lib.escape.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_size_t,
                       ctypes.POINTER(ctypes.c_size_t)]

def escape(kind, data):
    out = ctypes.create_string_buffer(len(data) * 6 + 1)
    counted = ctypes.c_size_t()
    n = lib.escape(kind, out, data, len(data), ctypes.byref(counted))
    assert counted.value == n, (kind, data)            # the exact length the line reserves
    return out.raw[:n]

def nginx_escape_json(data):
    # nginx's ngx_escape_json (src/core/ngx_string.c), byte for byte
    out = bytearray()
    for c in data:
        if c > 0x1f:
            out += (b"\\" + bytes([c])) if c in b'"\\' else bytes([c])
        else:
            out += b"\\" + {0x0a: b"n", 0x0d: b"r", 0x09: b"t", 0x08: b"b",
                             0x0c: b"f"}.get(c, b"u00%02X" % c)
    return bytes(out)

rng = random.Random(23)
alphabet = [bytes([b]) for b in range(256)] + [
    "é".encode(), "€".encode(), "𝄞".encode(), b"\xed\xa0\x80", b"\xf4\x90\x80\x80",
    b"\xc0\xaf", b"\xe2\x82", b"\xf0\x9f", b'"', b"\\"]
for _ in range(20000):
    data = b"".join(rng.choice(alphabet) for _ in range(rng.randrange(0, 40)))
    assert escape(1, data) == nginx_escape_json(data), data   # escape=json is nginx's
    out = escape(2, data)
    text = json.loads('"' + out.decode("utf-8") + '"')   # strict UTF-8, strict JSON
    try:
        valid = data.decode("utf-8")
    except UnicodeDecodeError:
        valid = None
    if valid is not None:
        assert text == valid, data                     # valid UTF-8 round-trips
        assert out == escape(1, data), data            # and json_utf8 is json then
    else:
        assert "\ufffd" in text, data
    plain = escape(0, data)                            # printable ASCII, no quote
    assert all(0x20 <= b < 0x7f for b in plain) and b'"' not in plain, data
    undone = re.sub(rb"\\x([0-9A-F]{2})", lambda m: bytes([int(m.group(1), 16)]), plain)
    assert undone == data, data                        # and reversible
print("ok")
"""


def test_escaping_json_is_nginx_s_json_utf8_valid_for_any_bytes_default_reversible(escaping):
    runtimes = " ".join(subprocess.run(["gcc", f"-print-file-name={lib}"], capture_output=True,
                                       text=True, check=True).stdout.strip()
                        for lib in ("libasan.so", "libubsan.so"))
    env = dict(os.environ, LD_PRELOAD=runtimes, ASAN_OPTIONS="detect_leaks=0:abort_on_error=1")
    out = subprocess.run([sys.executable, "-c", ESCAPE_CHILD, escaping], capture_output=True,
                         text=True, env=env, timeout=300)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stdout + out.stderr


def metric(text, name, sink="main"):
    m = re.search(r'^%s\{sink="%s"\} (\S+)$' % (re.escape(name), sink), text, re.M)
    return float(m.group(1)) if m else None


def test_metrics_location_shows_the_totals_of_all_workers(tmp_path, nginx, receive_process):
    rp = receive_process()
    server_extra = """
        location = /metrics { logpool_log off; logpool_metrics; }
        location = /pid { return 200 "$pid"; }
    """
    # reuseport: connections hashed over one listening socket per worker. With a shared one,
    # which worker accepts is the kernel's wake-up order (EPOLLEXCLUSIVE tends to wake the
    # same idle worker on a fast, quiet machine), and the wait below could never end.
    ng = nginx(module_conf(pool_json(rp.url)), server_extra, workers=2, listen_opts="reuseport")
    pids = []
    # new connections until both workers have served (and logged) requests
    wait_for(lambda: pids.append(ng.get("/pid")[1].decode()) or len(set(pids)) == 2,
             what="both workers to serve")
    assert set(pids) == {str(p) for p in ng.worker_pids()}
    # Rendering the text takes the embedded Python's lock: each worker publishes from a
    # thread of the module's own, never from its event loop.
    for pid in ng.worker_pids():
        threads = [open(f"/proc/{pid}/task/{t}/comm").read().strip()
                   for t in os.listdir(f"/proc/{pid}/task")]
        assert threads.count("logpool-metrics") == 1, threads
    assert ng.requests(300, connections=6) == [200] * 300
    logged = 1 + len(pids) + 300  # the harness's readiness probe, /pid, the load
    # a response reaches the client just before its log phase ends
    wait_for(lambda: len(ng.access_ids()) == logged, what="the access log")

    def totals():
        status, body = ng.get("/metrics")
        assert status == 200
        text = body.decode()
        return metric(text, "logpool_accepted_messages_total") == logged and text

    # Each worker only counts its own lines: the sum is every line only when every
    # worker's slot is in the answer.
    text = wait_for(totals, what="metrics of all workers")
    assert "# TYPE logpool_accepted_messages_total counter" in text
    assert text.count("# TYPE logpool_accepted_messages_total counter") == 1
    wait_for(lambda: metric(ng.get("/metrics")[1].decode(), "logpool_sent_messages_total")
             == logged, what="sent counters of all workers")
    assert ng.quit() == 0
    rp.stop()
    assert len(rp.lines()) == logged


def test_metrics_only_grow_across_reloads_and_exits_summed_over_live_and_draining_workers(
        tmp_path, nginx, receive_process):
    """Per sink, the counters a scrape shows are every line any worker of this nginx
    accepted: live workers, old ones still draining after a reload (a request held open
    keeps one), and the ones that exited (their final counters kept). A worker that is
    SIGKILLed keeps what it last published. No scrape ever shows less than one before."""
    rp = receive_process()
    silent = SilentUpstream()
    config = json.dumps({"sinks": [{"name": "a", "url": rp.url, "framing": "newline"},
                                   {"name": "b", "url": rp.url, "framing": "newline"}],
                         "periodic_flush_ms": 50})
    server_extra = f"""
        location = /metrics {{ logpool_log off; access_log off; logpool_metrics; }}
        location = /hold {{ proxy_pass http://127.0.0.1:{silent.port}; proxy_read_timeout 60s; }}
    """
    ng = nginx(module_conf(config, log="logpool_log a rid; logpool_log b rid if=$arg_b;"),
               server_extra, workers=2, listen_opts="reuseport")
    seen = []  # every scrape's (a, b, sent a)

    def scrape():
        status, body = ng.get("/metrics")
        assert status == 200
        text = body.decode()
        values = tuple(metric(text, name, sink) or 0 for name, sink in (
            ("logpool_accepted_messages_total", "a"), ("logpool_accepted_messages_total", "b"),
            ("logpool_sent_messages_total", "a")))
        if seen:
            assert all(now >= before for now, before in zip(values, seen[-1])), (seen[-1],
                                                                                 values)
        seen.append(values)
        return values

    def logged():
        return len(ng.access_ids())

    b_lines = 0
    try:
        for generation in range(3):
            assert ng.requests(60) == [200] * 60
            assert ng.requests(20, "/?b=1") == [200] * 20
            b_lines += 20
            # one request held open by a worker that a reload then leaves draining
            held = socket.create_connection(("127.0.0.1", ng.port), timeout=20)
            held.sendall(b"GET /hold HTTP/1.1\r\nHost: x\r\n\r\n")
            wait_for(lambda: len(silent.accepted) == generation + 1, what="the held request")
            old = ng.worker_pids()
            ng.signal(signal.SIGHUP)
            wait_for(lambda: len(ng.worker_pids() - old) == 2, what="the new workers")
            assert ng.worker_pids() & old, "the old worker holding a request is draining"
            # live and draining workers together: every logged line, per sink
            wait_for(lambda: scrape()[:2] == (logged(), b_lines),
                     what="the totals of live and draining workers")
            held.close()  # the draining worker logs a 499 and exits
            wait_for(lambda: not (ng.worker_pids() & old), what="the old workers to exit")
            wait_for(lambda: scrape()[:2] == (logged(), b_lines),
                     what="the totals with the exited workers' final counters")
        wait_for(lambda: scrape()[2] == logged(), what="every line sent")
        # a worker killed outright keeps what it published
        before = scrape()
        victim = min(ng.worker_pids())
        os.kill(victim, signal.SIGKILL)
        wait_for(lambda: victim not in ng.worker_pids() and len(ng.worker_pids()) == 2,
                 what="the master to replace the killed worker")
        assert scrape() >= before
        # A new slot size keeps nginx serving: the totals restart in a zone of its own. 8
        # bytes less per slot gives a zone of the same size in pages, which nginx would hand
        # back as the old zone, with no room for a second set of slots.
        with open(ng.conf_path) as f:
            conf = f.read()
        with open(ng.conf_path, "w") as f:
            f.write(conf.replace("logpool_exit_timeout", "logpool_metrics_slot_size 65528;\n"
                                 "    logpool_exit_timeout", 1))
        ng.reload()
        assert ng.requests(10) == [200] * 10

        def new_zone_counts():  # the worker that served them publishes within a second
            status, body = ng.get("/metrics")
            assert status == 200
            return metric(body.decode(), "logpool_accepted_messages_total", "a")
        wait_for(new_zone_counts, what="the new zone's counters")
        assert ng.quit() == 0
    finally:
        silent.close()
    log = ng.read_error_log()
    assert "[emerg]" not in log
    alerts = [line for line in log.splitlines() if "[alert]" in line]
    assert alerts == [line for line in alerts  # only the worker this test killed
                      if f"worker process {victim} exited on signal 9" in line], alerts


@pytest.mark.parametrize("case", ["unknown sink", "bad json", "no sinks", "no pool",
                                  "unknown format", "duplicate pool"])
def test_nginx_t_refuses_a_wrong_config_with_a_clear_message(tmp_path, nginx, case):
    good = pool_json("tcp://127.0.0.1:9")
    http_extra, expected = {
        "unknown sink": (module_conf(good, log="logpool_log nosuch rid;"),
                         'logpool_log: unknown sink "nosuch" in'),
        "bad json": (module_conf('{"sinks": [{"url": "tcp://127.0.0.1:9"},]}'),
                     "logpool_pool: invalid JSON at byte 40: unexpected character"),
        "no sinks": (module_conf('{"sinks": []}'),
                     'logpool_pool: "sinks" must be a non-empty list'),
        "no pool": ("logpool_format rid '$request_id'; logpool_log main rid;",
                    'logpool_log "main" in'),
        "unknown format": (module_conf(good, log="logpool_log main nosuch;"),
                           'logpool_log: unknown logpool_format "nosuch"'),
        "duplicate pool": (module_conf(good) + f"logpool_pool_file {tmp_path}/x.json;",
                           '"logpool_pool_file" directive is duplicate'),
    }[case]
    with pytest.raises(NginxError) as err:
        nginx(http_extra, workers=1, run=False)
    assert expected in str(err.value), str(err.value)
    if case == "unknown sink":
        assert '(the sinks of logpool_pool in' in str(err.value)
        assert '"main")' in str(err.value)


def test_pool_file_relative_to_the_prefix_and_sink_names_from_the_library(tmp_path, nginx,
                                                                          receive_process):
    rp = receive_process()
    # A relative logpool_pool_file is read from nginx's prefix (-p), as access_log's files
    # are, not from the directory of nginx.conf (conf/ here).
    prefix = tmp_path / "nginx0"  # the fixture's first nginx
    prefix.mkdir()
    # unnamed sinks are named after their URL, the second with the same URL "URL#1": the
    # library's rule (logpool_sink_index), which each worker asks
    (prefix / "logpool.json").write_text(json.dumps({
        "sinks": [{"url": rp.url, "framing": "newline"}, {"url": rp.url, "framing": "newline"}],
        "periodic_flush_ms": 50}))
    http_extra = f"""
    logpool_pool_file logpool.json;
    logpool_format rid '$request_id';
    logpool_format second 'second $request_id';
    logpool_format never 'never $request_id';
    logpool_log {rp.url} rid;
    logpool_log {rp.url}#1 second;
    logpool_log {rp.url}#7 never;
    """
    ng = nginx(http_extra, workers=1)  # nginx -t: "#7" could be a name; the library says not
    assert ng.requests(20) == [200] * 20
    assert ng.quit() == 0
    rp.stop()
    got = [line.decode() for line in rp.lines()]
    ids = ng.access_ids()
    assert_exactly_once(ids, [line for line in got if not line.startswith("second ")])
    assert sorted(line for line in got if line.startswith("second ")) == sorted(
        "second " + i for i in ids)
    log = ng.read_error_log()
    assert f'logpool_log "{rp.url}#7" in ' in log and "has no sink of that name" in log, log


def test_an_exiting_worker_gives_up_after_logpool_exit_timeout_and_says_so(tmp_path, nginx):
    # the collector never comes up: what the workers accepted cannot be delivered
    url = "unix:" + sock_path(tmp_path, "absent.sock")
    ng = nginx(module_conf(pool_json(url), exit_timeout="300ms"), workers=2)
    assert ng.requests(40) == [200] * 40
    start = time.monotonic()
    assert ng.quit(timeout=20) == 0
    assert time.monotonic() - start < 10
    log = ng.read_error_log()
    lines = [line for line in log.splitlines()
             if "not delivered within logpool_exit_timeout 300 ms: abandoned" in line]
    assert 1 <= len(lines) <= 2, log[-3000:]  # one per worker that logged something
    assert sum(int(re.search(r"logpool: (\d+) messages", line).group(1)) for line in lines) == 41
    assert_never_crashed(ng)


def test_with_a_spool_a_quit_while_the_collector_is_down_loses_nothing(tmp_path, nginx,
                                                                        receive_process):
    listen = "unix:" + sock_path(tmp_path, "late.sock")
    config = pool_json(listen, spool_dir=str(tmp_path / "spool"))
    first = nginx(module_conf(config, exit_timeout="200ms"), workers=2)
    assert first.requests(300) == [200] * 300
    assert first.quit() == 0  # the collector is down: the pools spool what they hold
    rp = receive_process(listen)
    second = nginx(module_conf(config), workers=2)  # the next generation delivers the spool
    assert second.requests(10) == [200] * 10
    ids = first.access_ids()
    wait_for(lambda: set(ids) <= {line.decode() for line in rp.lines()}, timeout=30,
             what="the first generation's lines from the spool")
    assert second.quit() == 0
    rp.stop()
    assert_exactly_once(ids + second.access_ids(), [line.decode() for line in rp.lines()])


def fake_library(tmp_path, version):
    src = tmp_path / "fake.c"
    src.write_text('const char *logpool_version(void) { return "%s"; }\n' % version)
    out = tmp_path / "libfake.so"
    subprocess.run(["gcc", "-shared", "-fPIC", "-o", str(out), str(src)], check=True)
    return str(out)


@pytest.mark.parametrize("case", ["bad config key", "missing library", "not a library",
                                  "version mismatch"])
def test_a_pool_that_cannot_start_leaves_nginx_serving_with_one_clear_line(
        tmp_path, nginx, receive_process, case):
    rp = receive_process()
    config, library = pool_json(rp.url), ""
    if case == "bad config key":
        config = config.replace('"periodic_flush_ms"', '"periodic_flush"')
        expected = "cannot start: invalid configuration: periodic_flush: unknown key"
    elif case == "missing library":
        library = str(tmp_path / "nowhere" / "liblogpool.so")
        expected = f"logpool: cannot load {library} (worker uid {os.geteuid()}): "
    elif case == "not a library":
        library = str(tmp_path / "liblogpool.so")
        with open(library, "w") as f:
            f.write("not an ELF file\n")
        expected = f"logpool: cannot load {library} (worker uid {os.geteuid()}): "
    else:
        library = fake_library(tmp_path, "9.9.0")
        expected = f"logpool: {library} is version 9.9.0, this module was built for "
    http_extra = module_conf(config) + (f"logpool_library {library};" if library else "")
    ng = nginx(http_extra, workers=2)
    assert ng.requests(50) == [200] * 50
    ng.reload()
    assert ng.requests(50) == [200] * 50
    assert ng.quit() == 0
    log = ng.read_error_log()
    lines = [line for line in log.splitlines() if expected in line]
    # one line per worker start: 2 workers, then 2 more after the reload
    assert len(lines) == 4, log[-3000:]
    assert all("[error]" in line and "this worker serves without shipping logs" in line
               for line in lines)
    assert_never_crashed(ng)
    rp.stop()
    assert rp.lines() == []


def test_coexists_with_a_lua_pool_in_the_same_worker(tmp_path, nginx, receive_process):
    lua_rp = receive_process("unix:" + sock_path(tmp_path, "lua.sock"), str(tmp_path / "lua.log"))
    mod_rp = receive_process("unix:" + sock_path(tmp_path, "mod.sock"), str(tmp_path / "mod.log"))
    http_extra = module_conf(pool_json(mod_rp.url)) + f"""
    init_worker_by_lua_block {{
        require("resty.logpool").start({{ sinks = {{ {{ url = "{lua_rp.url}", name = "main" }} }},
                                        periodic_flush_ms = 50 }})
    }}
    exit_worker_by_lua_block {{ require("resty.logpool").stop(5) }}
    """
    server_extra = """
        log_by_lua_block { require("resty.logpool").log("main", "lua " .. ngx.var.request_id .. "\\n") }
    """
    ng = nginx(http_extra, server_extra, workers=2, modules=MODULES + native_modules())
    n = 200
    assert ng.requests(n) == [200] * n
    # one library per worker: the module's and Lua's pools live in the same copy
    for pid in ng.worker_pids():
        with open(f"/proc/{pid}/maps") as f:
            libs = {line.split()[-1] for line in f if "liblogpool" in line}
        assert libs == {os.path.realpath(paths.lib_path())}, libs
    assert ng.quit() == 0
    lua_rp.stop()
    mod_rp.stop()
    ids = ng.access_ids()
    assert_exactly_once(ids, [line.decode() for line in mod_rp.lines()])
    assert_exactly_once(["lua " + i for i in ids], [line.decode() for line in lua_rp.lines()])
    assert_never_crashed(ng)


@pytest.fixture
def install_prefix():
    """A directory every user can traverse (pytest's tmp_path is 0700)."""
    import shutil
    import tempfile
    prefix = tempfile.mkdtemp(prefix="logpool-install-")
    os.chmod(prefix, 0o755)
    yield os.path.join(prefix, "opt")
    shutil.rmtree(prefix, ignore_errors=True)


def worker_uids(ng):
    uids = set()
    for pid in ng.worker_pids():
        with open(f"/proc/{pid}/status") as f:
            uids.add(int(next(line for line in f if line.startswith("Uid:")).split()[1]))
    return uids


def test_make_install_gives_an_unprivileged_worker_user_what_it_can_load(
        tmp_path, nginx, receive_process, install_prefix):
    from logpool.tools.install import readable_by_all
    out = subprocess.run(["make", "-s", "install", f"PREFIX={install_prefix}"], cwd=ROOT,
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout + out.stderr
    module = re.search(r"^load_module (\S+);$", out.stdout, re.M).group(1)
    library = re.search(r"^logpool_library (\S+);$", out.stdout, re.M).group(1)
    assert module.startswith(install_prefix) and library.startswith(install_prefix)
    assert readable_by_all(module) and readable_by_all(library)
    # unprivileged workers: nobody when the tests run as root, else this (unprivileged) user
    user = "nobody nogroup" if os.geteuid() == 0 else None
    expected_uid = 65534 if os.geteuid() == 0 else os.geteuid()

    rp = receive_process("tcp://127.0.0.1:0")
    ng = nginx(f"logpool_library {library};" + module_conf(pool_json(rp.url)), workers=2,
               modules=(module,), user=user)
    assert worker_uids(ng) == {expected_uid}
    assert ng.requests(100) == [200] * 100
    assert ng.quit() == 0
    rp.stop()
    assert_exactly_once(ng.access_ids(), [line.decode() for line in rp.lines()])
    log = ng.read_error_log()
    assert "[error]" not in log, log[-3000:]

    if not user:
        return
    # A library the worker user cannot open (a checkout under a directory only its owner
    # can enter, like this test's own tmp_path): the error says which file, which uid, and
    # what helps.
    private = tmp_path / "private"
    private.mkdir(mode=0o700)
    shutil.copy(paths.lib_path(), private / "liblogpool.so")
    rp2 = receive_process("tcp://127.0.0.1:0", str(tmp_path / "received2.log"))
    ng2 = nginx(f"logpool_library {private}/liblogpool.so;" + module_conf(pool_json(rp2.url)),
                workers=1, user=user)
    assert ng2.requests(10) == [200] * 10
    assert ng2.quit() == 0
    log = ng2.read_error_log()
    line = next((l for l in log.splitlines() if "cannot load" in l), log[-3000:])
    assert f"cannot load {private}/liblogpool.so (worker uid 65534)" in line, line
    assert "make install PREFIX=" in line and "this worker serves without shipping" in line

    # The build tree's library, readable, with a Python the worker user cannot read: the
    # error says which file, which uid, and what helps (not "rebuild"). Where the checkout
    # itself is out of the worker user's reach, the case above is what it meets instead.
    build_libpython = subprocess.run(
        ["ldd", paths.lib_path()], capture_output=True, text=True).stdout
    built_against = re.search(r"libpython\S+ => (\S+)", build_libpython).group(1)
    if readable_by_all(paths.lib_path()) and not readable_by_all(built_against):
        rp3 = receive_process("tcp://127.0.0.1:0", str(tmp_path / "received3.log"))
        ng3 = nginx(module_conf(pool_json(rp3.url)), workers=1, user=user)
        assert ng3.requests(10) == [200] * 10
        assert ng3.quit() == 0
        log = ng3.read_error_log()
        line = next((l for l in log.splitlines() if "cannot start" in l), log[-3000:])
        assert "cannot read " in line and "(running as uid 65534)" in line, line
        assert "make install PREFIX=" in line and "rebuild" not in line, line
