"""callgrind: user-space instructions per request in an nginx worker's main thread, for each
way to log one six-variable JSON line (no logging, nginx's access_log buffer=64k, the native
module's logpool_log, Lua's pool:log, lua-resty-logger-socket); the writer thread's
instructions per message; the metrics publisher's per publish (once a second).

Instruction counts, not time: a shared 2-core VM moves wall-clock ratios by +-10 % from run
to run, which hides a 3 % cost. nginx runs with `master_process off` under `valgrind
--tool=callgrind --separate-threads=yes`, PYTHONHASHSEED fixed; the same keep-alive requests
are sent in two runs, 1,000 and 6,000 of them, and the difference of the two runs' counts
divided by 5,000 is the cost of one request: start-up and shut-down cancel."""
import glob
import os
import re
import shutil
import signal
import socket
import subprocess
import time

from bench.common import HERE, FastSink
from logpool import paths
from logpool.tools.nginx import LUA_MODULE, MODULES, free_port, wait_for

NAME = "callgrind"
KEYS = ("callgrind",)

COUNTS = (1000, 6000)
VENDOR_LUA = os.path.join(HERE, "vendor", "lua-resty-logger-socket", "lib")

# The line: six variables as JSON.
JSON_LINE = ('{"remote":"$remote_addr","uri":"$request_uri","status":$status,'
             '"bytes":$bytes_sent,"ua":"$http_user_agent","ts":"$time_iso8601"}')
LUA_MAP = f"map $host $logpool_line {{ default '{JSON_LINE}'; }}"
LUA_POOL = """
    init_worker_by_lua_block {
        require("resty.logpool").start({ sinks = { { url = "%(url)s", name = "main", framing = "newline" } } })
    }
    exit_worker_by_lua_block { require("resty.logpool").stop(5) }"""

# name: (label, modules, http block, server block)
CASES = {
    "none": ("no logging", (), "access_log off;", ""),
    "access_log": ("access_log buffer=64k", (),
                   f"log_format bench escape=json '{JSON_LINE}';\n"
                   "    access_log logs/bench.log bench buffer=64k;", ""),
    "module": ("native module logpool_log", ("module",),
               """access_log off;
    logpool_pool '{"sinks": [{"name": "main", "url": "%(url)s", "framing": "newline"}]}';
    logpool_exit_timeout 10s;
    logpool_format bench escape=json '""" + JSON_LINE + """';
    logpool_log main bench;""", ""),
    "lua_pool_log": ("Lua pool:log (map variable)", ("lua",),
                     "access_log off;\n    " + LUA_MAP + LUA_POOL,
                     'log_by_lua_block { require("resty.logpool").log("main", '
                     'ngx.var.logpool_line) }'),
    "logger_socket": ("lua-resty-logger-socket (map variable)", ("lua",),
                      "access_log off;\n    " + LUA_MAP,
                      """log_by_lua_block {
            local logger = require "resty.logger.socket"
            if not logger.initted() then logger.init({ path = "%(path)s" }) end
            logger.log(ngx.var.logpool_line .. "\\n")
        }"""),
}

CONF = """
%(load_modules)s
daemon off;
master_process off;
worker_processes 1;
error_log logs/error.log warn;
pid logs/nginx.pid;
env PYTHONHASHSEED;
events { worker_connections 64; }
http {
    lua_package_path_PLACEHOLDER
    client_body_temp_path tmp/body;
    proxy_temp_path tmp/proxy;
    fastcgi_temp_path tmp/fastcgi;
    uwsgi_temp_path tmp/uwsgi;
    scgi_temp_path tmp/scgi;
    %(http)s
    server {
        listen 127.0.0.1:%(port)d;
        keepalive_requests 1000000;
        location / {
            %(server)s
            return 200 "ok\\n";
        }
    }
}
"""

REQUEST = (b"GET /some/path?q=1 HTTP/1.1\r\nHost: bench\r\n"
           b"User-Agent: Mozilla/5.0 (X11; Linux x86_64) bench\r\n\r\n")


def run(ctx):
    if not shutil.which("valgrind"):
        return dict(callgrind={"skipped": "valgrind is not installed"})
    sink = FastSink(ctx.tmp, "callgrind.sock")
    out = {}
    try:
        for name in CASES:
            runs = [measure(ctx.tmp, name, n, sink) for n in COUNTS]
            out[name] = per_request(runs)
    finally:
        sink.stop()
    return dict(callgrind=dict(cases=out, counts=list(COUNTS)))


def measure(tmp, name, requests, sink):
    """One nginx under callgrind: start, `requests` keep-alive requests, quit. Its threads'
    instruction counts: main, writer (Python's), publisher, and the publisher's publishes."""
    label, modules, http, server = CASES[name]
    prefix = os.path.join(tmp, f"cg-{name}-{requests}")
    for d in ("logs", "tmp", "conf"):
        os.makedirs(os.path.join(prefix, d), exist_ok=True)
    load = []
    if "module" in modules:
        load.append(paths.nginx_module_path())
    if "lua" in modules:
        load += list(MODULES)
    port = free_port()
    fill = dict(url=sink.url, path=sink.path)
    conf = CONF % dict(load_modules="\n".join(f"load_module {m};" for m in load),
                       http=http % fill, server=server % fill, port=port)
    conf = conf.replace("lua_package_path_PLACEHOLDER",
                        f'lua_package_path "{paths.lua_dir()}/?.lua;{VENDOR_LUA}/?.lua;;";'
                        if LUA_MODULE in load else "")
    conf_path = os.path.join(prefix, "conf", "nginx.conf")
    with open(conf_path, "w") as f:
        f.write(conf)
    out_file = os.path.join(prefix, "cg.out")
    env = dict(os.environ, PYTHONHASHSEED="0")
    proc = subprocess.Popen(
        ["valgrind", "--tool=callgrind", "--separate-threads=yes",
         f"--callgrind-out-file={out_file}", shutil.which("nginx") or "/usr/sbin/nginx",
         "-p", prefix + "/", "-c", conf_path],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        conn = wait_for(lambda: connect(port, proc), timeout=120, interval=0.1,
                        what=f"nginx under callgrind ({name})")
        with conn:
            for _ in range(requests):
                conn.sendall(REQUEST)
                read_response(conn)
        proc.send_signal(signal.SIGQUIT)
        proc.wait(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return threads(out_file)


def connect(port, proc):
    if proc.poll() is not None:
        raise RuntimeError("nginx under callgrind exited at start")
    try:
        return socket.create_connection(("127.0.0.1", port), timeout=60)
    except OSError:
        return None


def read_response(conn):
    data = b""
    while b"ok\n" not in data:
        chunk = conn.recv(4096)
        if not chunk:
            raise RuntimeError("nginx closed the connection")
        data += chunk


def threads(out_file):
    """{"main": Ir, "writer": Ir, "publisher": Ir, "publishes": n} from callgrind's files."""
    result = dict(main=0, writer=0, publisher=0, other=0, publishes=0)
    for path in sorted(glob.glob(out_file + "-*")):  # one file per thread
        with open(path, errors="replace") as f:
            text = f.read()
        total = int(re.search(r"^(?:totals|summary): (\d+)", text, re.M).group(1))
        thread = int(re.search(r"^thread: (\d+)", text, re.M).group(1))
        if thread == 1:
            result["main"] += total
        elif "ngx_http_logpool_publisher" in text:
            result["publisher"] += total
            result["publishes"] += publish_calls(text)
        elif "logpool__sink_wait" in text or "logpool__sink_take" in text:
            result["writer"] += total
        else:
            result["other"] += total
    return result


def publish_calls(text):
    """How many times the publisher thread called ngx_http_logpool_publish."""
    # callgrind names a function once, "(id) name", then by "(id)" alone
    ids = {i for i, n in re.findall(r"^c?fn=\((\d+)\) (\S+)", text, re.M)
           if n == "ngx_http_logpool_publish"}
    calls = 0
    for m in re.finditer(r"^cfn=\((\d+)\).*\ncalls=(\d+)", text, re.M):
        if m.group(1) in ids:
            calls += int(m.group(2))
    return calls


def per_request(runs):
    short, long = runs
    n = COUNTS[1] - COUNTS[0]
    out = dict(main_per_request=(long["main"] - short["main"]) / n,
               writer_per_message=(long["writer"] - short["writer"]) / n,
               runs=runs)
    publishes = long["publishes"] + short["publishes"]
    if publishes:
        out["publisher_per_publish"] = (long["publisher"] + short["publisher"]) / publishes
    return out


def rows(r):
    cg = r["callgrind"]
    if "skipped" in cg:
        return [("callgrind", cg["skipped"], "", "", "")]
    c = cg["cases"]
    base = c["none"]["main_per_request"]
    access = c["access_log"]["main_per_request"] - base
    how = (f"user-space instructions per request, worker main thread "
           f"({cg['counts'][1]:,} - {cg['counts'][0]:,} keep-alive requests under callgrind)")
    out = []
    for name, (label, *_rest) in CASES.items():
        x = c[name]["main_per_request"]
        extra = x - base
        target = ""
        if name == "module":
            target = f"extra <= access_log's + 300 = {access + 300:,.0f}"
        out.append((f"nginx, {label}: {how}", f"{x:,.0f} (+{extra:,.0f})",
                    f"no logging {base:,.0f}; access_log +{access:,.0f}",
                    f"{extra - access:+,.0f} vs access_log" if name != "none" else "", target))
    for name in ("module", "lua_pool_log"):
        w = c[name]["writer_per_message"]
        out.append((f"nginx, {CASES[name][0]}: writer thread instructions per message",
                    f"{w:,.0f}", "", "", "<= 400" if name == "module" else ""))
    pub = c["module"].get("publisher_per_publish")
    if pub:
        out.append(("nginx, native module: metrics publisher instructions per publish "
                    "(once a second)", f"{pub:,.0f} per second", "", "", ""))
    return out
