"""nginx: requests/s and worker CPU per request of each way to log (no log_by_lua, building
the line only, pool:log, lua-resty-logger-socket, README's map form, the native module,
nginx's own buffered access_log), 1 and 2 workers in alternating rounds; ns per call inside
a worker; perf shares; worker memory (RSS, USS)."""
import os
import re
import shutil
import statistics
import subprocess
import threading
import time
import urllib.request

from bench.common import HERE, FastSink, test_ca
from logpool import paths
from logpool.tools.nginx import MODULES, Nginx, native_modules

NAME = "nginx"
KEYS = ("nginx",)


def run(ctx):
    nginx = bench_nginx(ctx.tmp, ctx.quick)
    nginx["calls"] = bench_nginx_calls(ctx.tmp)
    nginx["perf"] = bench_nginx_perf(ctx.tmp)
    return dict(nginx=nginx)


def rows(r):
    return nginx_rows(r["nginx"])


# The log line two ways: four ngx.var reads (each one aborts the JIT trace inside
# resty.core's getter, see docs/performance.md), or one read of a lazily evaluated map
# variable (the form README recommends).
LINE_FROM_VARS = ('ngx.var.remote_addr .. " " .. ngx.var.request .. " " .. ngx.var.status'
                  ' .. " " .. ngx.var.body_bytes_sent .. "\\n"')
LINE_FROM_MAP = 'ngx.var.logpool_line'  # framing "newline" adds the "\n" in C
LOGLINE_MAP = 'map $host $logpool_line { default "$remote_addr $request $status $body_bytes_sent"; }'
POOL_START = """
        init_worker_by_lua_block {
            require("resty.logpool").start({ sinks = { { url = "%(url)s", name = "main", framing = "newline" %(sink_extra)s } } })
            %(publish)s
        }
        exit_worker_by_lua_block { require("resty.logpool").stop(5) }"""
# The native module (no Lua in the log phase), and nginx's own buffered access_log of the
# same line: the issue's targets are (h) >= 0.97 of (a) and of (i).
MODULE_POOL = """
        logpool_pool '{"sinks": [{"name": "main", "url": "%(url)s", "framing": "newline"}]}';
        logpool_exit_timeout 5s;
        logpool_format bench '$remote_addr $request $status $body_bytes_sent';
        logpool_log main bench;"""
ACCESS_LOG_BUFFERED = """
        log_format bench '$remote_addr $request $status $body_bytes_sent';
        access_log logs/bench.log bench buffer=64k;"""
# name: (http block extra, log_by_lua body, sink url key, metrics location)
NGINX_CASES = {
    "a_no_log_by_lua": ("", None),
    "b_build_line": ("", f"local line = {LINE_FROM_VARS}"),
    "c_build_and_ship": (POOL_START, f'require("resty.logpool").log("main", {LINE_FROM_VARS})'),
    "d_logger_socket": ("", f"""local logger = require "resty.logger.socket"
            if not logger.initted() then logger.init({{ path = "%(path)s" }}) end
            logger.log({LINE_FROM_VARS})"""),
    "e_map_build_line": (LOGLINE_MAP, f"local line = {LINE_FROM_MAP}"),
    "f_map_ship": (LOGLINE_MAP + POOL_START,
                   f'require("resty.logpool").log("main", {LINE_FROM_MAP})'),
    "g_map_ship_tls_metrics": (LOGLINE_MAP + "\n    lua_shared_dict logpool_metrics 1m;"
                               + POOL_START,
                               f'require("resty.logpool").log("main", {LINE_FROM_MAP})'),
    "h_module_ship": (MODULE_POOL, None),
    "i_access_log_buffered": (ACCESS_LOG_BUFFERED, None),
}
NGINX_TWO_WORKER_CASES = ("a_no_log_by_lua", "b_build_line", "c_build_and_ship", "d_logger_socket",
                          "e_map_build_line", "f_map_ship", "h_module_ship",
                          "i_access_log_buffered")
VENDOR_LUA = os.path.join(HERE, "vendor", "lua-resty-logger-socket", "lib")


def worker_rss_kib(ng):
    pids = sorted(ng.worker_pids())
    with open(f"/proc/{pids[0]}/status") as f:
        return int(re.search(r"VmRSS:\s+(\d+)", f.read()).group(1))


def worker_uss_kib(ng):
    """Private memory of the worker (what it does not share with the master or others)."""
    pids = sorted(ng.worker_pids())
    with open(f"/proc/{pids[0]}/smaps_rollup") as f:
        text = f.read()
    return sum(int(re.search(rf"{k}:\s+(\d+)", text).group(1))
               for k in ("Private_Clean", "Private_Dirty"))


def nginx_for(tmp, name, workers, sink, tls_sink, ca, prefix=""):
    http_extra, log_body = NGINX_CASES[name]
    tls = name.startswith("g_")
    fill = dict(url=tls_sink.url if tls else sink.url, path=sink.path,
                sink_extra=(f', ca_file = "{ca.ca_file}", server_name = "localhost"'
                            if tls else ""),
                publish='require("resty.logpool").publish_metrics("logpool_metrics")'
                if tls else "")
    http = (f'lua_package_path "{paths.lua_dir()}/?.lua;{VENDOR_LUA}/?.lua;;";\n    '
            + http_extra % fill)
    server = "" if log_body is None else f"""
        log_by_lua_block {{
            {log_body % fill}
        }}"""
    if tls:
        server += """
        location = /metrics {
            content_by_lua_block { require("resty.logpool").serve_metrics("logpool_metrics") }
        }"""
    modules = MODULES + native_modules() if name.startswith("h_") else MODULES
    return Nginx(os.path.join(tmp, f"{prefix}nginx-{workers}-{name}"), http, server, workers=workers,
                 package_path=False, modules=modules).start()


def wrk_rps(ng, seconds):
    """(requests/s, requests, CPU ns the workers spent, all their threads)."""
    cpu = workers_cpu_ns(ng)
    out = subprocess.run(["wrk", "-t1", "-c32", f"-d{seconds}s", f"http://127.0.0.1:{ng.port}/"],
                         capture_output=True, text=True, check=True).stdout
    cpu = workers_cpu_ns(ng) - cpu
    return (float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)),
            int(re.search(r"(\d+) requests in", out).group(1)), cpu)


def workers_cpu_ns(ng):
    """CPU time of the nginx workers, every thread (the writers too), in ns: schedstat
    counts time on a CPU only, so a noisy neighbour (steal, other processes) does not
    inflate it the way it deflates requests/s."""
    total = 0
    for pid in ng.worker_pids():
        for tid in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{tid}/schedstat") as f:
                total += int(f.read().split()[0])
    return total


def bench_nginx(tmp, quick):
    """Requests/s of each log_by_lua form, in alternating rounds (every nginx runs the whole
    time; each round loads them one after the other, in a rotating order, so that a noisy
    host hurts every case alike), with 1 worker and with 2; then each worker's memory."""
    ca = test_ca(tmp, "bench nginx CA")
    sink = FastSink(tmp, "nginx.sock")
    tls_sink = FastSink(tmp, listen="tls://127.0.0.1:0", tls_files=ca.issue("localhost"))
    rounds, seconds = (3, 1) if quick else (7, 2)  # wrk takes whole seconds
    results = {}
    try:
        bench_nginx_rounds(tmp, sink, tls_sink, ca, rounds, seconds, results)
    finally:
        results["bytes_shipped"] = sink.stop()
        tls_sink.stop()
    results["rounds"], results["seconds"] = rounds, seconds
    return results


def bench_nginx_rounds(tmp, sink, tls_sink, ca, rounds, seconds, results):
    for workers, names in ((1, tuple(NGINX_CASES)), (2, NGINX_TWO_WORKER_CASES)):
        servers = {}
        try:
            for name in names:
                servers[name] = nginx_for(tmp, name, workers, sink, tls_sink, ca)
            idle = {name: worker_rss_kib(ng) for name, ng in servers.items()}
            for ng in servers.values():
                wrk_rps(ng, 1)  # warm up: JIT, connections, the sink
            runs = {name: [] for name in names}
            requests, cpu = dict.fromkeys(names, 0), dict.fromkeys(names, 0)
            for r in range(rounds):
                order = names[r % len(names):] + names[:r % len(names)]
                for name in order:
                    rps, n, ns = wrk_rps(servers[name], seconds)
                    runs[name].append(rps)
                    requests[name] += n
                    cpu[name] += ns
            if "g_map_ship_tls_metrics" in servers:  # a scrape, as Prometheus would
                port = servers["g_map_ship_tls_metrics"].port
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as rs:
                    assert b"logpool_" in rs.read()
            results[f"workers_{workers}"] = {
                name: dict(rps=statistics.median(runs[name]), rps_rounds=runs[name],
                           cpu_ns_per_request=cpu[name] / requests[name],
                           rss_idle_kib=idle[name], rss_loaded_kib=worker_rss_kib(ng),
                           uss_loaded_kib=worker_uss_kib(ng))
                for name, ng in servers.items()}
        finally:
            for ng in servers.values():
                ng.quit(timeout=60)


NGINX_CALL_LOOP = r"""
        location = /calls {
            content_by_lua_block {
                local ffi = require "ffi"
                if not pcall(ffi.typeof, "struct bench_ts") then
                    ffi.cdef[[ struct bench_ts { long tv_sec; long tv_nsec; };
                               int clock_gettime(int clk, struct bench_ts *tp); ]]
                end
                local ts = ffi.new("struct bench_ts")
                local function now()
                    ffi.C.clock_gettime(1, ts)
                    return tonumber(ts.tv_sec) * 1e9 + tonumber(ts.tv_nsec)
                end
                local line = string.rep("x", 80)
                local lp = require "resty.logpool"
                local lib = require("resty.logpool.base").load()
                local p = lp.default()._p
                local cases = {
                    { "empty", function() local x = line end },
                    { "require_log", function() require("resty.logpool").log("main", line) end },
                    { "log_cdata", function() lib.log_cdata(p, 0, line, #line) end },
                    { "ngx_var", function() local x = ngx.var.request end },
                }
                for _, c in ipairs(cases) do
                    jit.off(c[2]) -- as log_by_lua code runs: interpreted
                    for _ = 1, 20000 do c[2]() end
                    local t0 = now()
                    for _ = 1, 200000 do c[2]() end
                    ngx.say(c[1], " ", (now() - t0) / 200000)
                    lp.default():flush(5)
                end
            }
        }"""


def bench_nginx_calls(tmp):
    """ns per call inside an nginx worker, from interpreted Lua as log_by_lua code runs:
    pool:log as the snippet writes it, the bare FFI call, and one ngx.var read."""
    sink = FastSink(tmp, "calls.sock")
    http = (f'lua_package_path "{paths.lua_dir()}/?.lua;;";'
            + POOL_START % dict(url=sink.url, sink_extra="", publish=""))
    ng = Nginx(os.path.join(tmp, "nginx-calls"), http, NGINX_CALL_LOOP, workers=1,
               package_path=False).start()
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{ng.port}/calls", timeout=120) as rs:
            text = rs.read().decode()
    finally:
        ng.quit(timeout=60)
        sink.stop()
    return {name: float(ns) for name, ns in (line.split() for line in text.splitlines())}


def bench_nginx_perf(tmp):
    """Where a worker's CPU goes under wrk, sampled with perf (when the machine has it): the
    share of the worker's main thread in liblogpool (log_cdata) and of its writer thread,
    for the four-variable line (c), README's form (f) and the native module (h: the module's
    own share, formatting included, is counted with liblogpool's)."""
    if not shutil.which("perf"):
        return {"skipped": "perf is not installed"}
    sink = FastSink(tmp, "perf.sock")
    out = {}
    try:
        for name in ("c_build_and_ship", "f_map_ship", "h_module_ship"):
            ng = nginx_for(tmp, name, 1, sink, None, None, prefix="perf-")
            try:
                wrk_rps(ng, 1)
                worker = sorted(ng.worker_pids())[0]
                data = os.path.join(tmp, f"perf-{name}.data")
                load = threading.Thread(target=wrk_rps, args=(ng, 5))
                load.start()
                time.sleep(1)
                rec = subprocess.run(["perf", "record", "-q", "-o", data, "-p", str(worker),
                                      "--", "sleep", "3"], capture_output=True, text=True)
                load.join()
            finally:
                ng.quit(timeout=60)
            if rec.returncode != 0:
                return {"skipped": f"perf record failed: {rec.stderr.strip()[:200]}"}
            report = subprocess.run(["perf", "report", "-i", data, "--sort", "pid,dso",
                                     "--stdio"], capture_output=True, text=True).stdout
            main = logpool_share = writer = 0.0
            for m in re.finditer(r"^\s+([\d.]+)%\s+(\d+):\S+\s+(\S+)", report, re.M):
                share, tid, dso = float(m.group(1)), int(m.group(2)), m.group(3)
                if tid == worker:
                    main += share
                    logpool_share += share if dso in ("liblogpool.so",
                                                      "ngx_http_logpool_module.so") else 0
                else:
                    writer += share
            out[name] = dict(main_pct=main, liblogpool_pct=logpool_share, writer_pct=writer)
    finally:
        sink.stop()
    return out


def nginx_rows(ng):
    """req/s ratios (medians of alternating rounds) and worker memory."""
    how = f"{ng['rounds']} alternating {ng['seconds']} s rounds"
    rows = []
    for workers in (1, 2):
        n = ng[f"workers_{workers}"]
        rps = {k: v["rps"] for k, v in n.items()}

        cpu = {k: v["cpu_ns_per_request"] for k, v in n.items()}

        def ratio(label, x, y, target=""):
            # Capacity: requests per CPU-second of the workers, (x) against (y); req/s
            # medians beside it, for what they are worth on a shared host.
            rows.append((f"nginx, {workers} worker{'s' if workers > 1 else ''}: {label}: "
                         f"worker CPU ns/request (req/s median)",
                         f"{cpu[x]:.0f} ({rps[x]:.0f})", f"({y[0]}) {cpu[y]:.0f} ({rps[y]:.0f})",
                         f"{cpu[y] / cpu[x]:.3f} ({rps[x] / rps[y]:.3f})", target))
        ratio(f"(c) pool:log vs (b) build the line only ({how})", "c_build_and_ship",
              "b_build_line", ">= 0.99")
        ratio("(d) lua-resty-logger-socket vs (b) build the line only", "d_logger_socket",
              "b_build_line")
        ratio("(f) pool:log of one map variable vs (e) build it only", "f_map_ship",
              "e_map_build_line", ">= 0.99")
        ratio("(f) README's form, map variable + pool:log, vs (c) four ngx.var reads",
              "f_map_ship", "c_build_and_ship", "> 1: the gain")
        if workers == 1:
            ratio("(b) build the line vs (a) no log_by_lua", "b_build_line", "a_no_log_by_lua")
        if "h_module_ship" in cpu:
            # every case also writes nginx's unbuffered request-id access_log (the harness's)
            ratio("(h) native module logpool_log vs (a) no logging beyond the harness's",
                  "h_module_ship", "a_no_log_by_lua", ">= 0.97")
            ratio("(h) native module vs (i) nginx's access_log buffer=64k, same line",
                  "h_module_ship", "i_access_log_buffered", ">= 0.97")
    calls = ng.get("calls")
    if calls:
        empty = calls["empty"]
        rows.append(("nginx, interpreted Lua in a worker: ns per call of require(...).log, "
                     "one ngx.var read", f"{calls['require_log'] - empty:.0f}, "
                     f"{calls['ngx_var'] - empty:.0f}",
                     f"bare log_cdata from Lua {calls['log_cdata'] - empty:.0f}", "", ""))
    perf = ng.get("perf") or {}
    if "skipped" in perf:
        rows.append(("nginx, perf: worker CPU in logpool", perf["skipped"], "", "", ""))
    for case, label in (("c_build_and_ship", "(c) four ngx.var reads"),
                        ("f_map_ship", "(f) README's form"),
                        ("h_module_ship", "(h) native module, formatting included")):
        if case in perf:
            x = perf[case]
            rows.append((f"nginx, perf, {label}: share of the worker's CPU samples in "
                         f"log_cdata (main thread) / in the writer thread",
                         f"{x['liblogpool_pct']:.2f} % / {x['writer_pct']:.2f} %",
                         f"main thread {x['main_pct']:.1f} %",
                         f"{1 - x['liblogpool_pct'] / x['main_pct']:.3f} (C part only)",
                         ">= 0.99"))
    one = ng["workers_1"]
    b = one["b_build_line"]
    for case, label in (("c_build_and_ship", "unix sink"),
                        ("g_map_ship_tls_metrics", "TLS sink + /metrics scraped")):
        x = one[case]
        rows.append((f"nginx worker RSS after load, {label}, MiB",
                     f"{x['rss_loaded_kib'] / 1024:.1f}", f"(b) {b['rss_loaded_kib'] / 1024:.1f}",
                     f"+{(x['rss_loaded_kib'] - b['rss_loaded_kib']) / 1024:.1f} MiB",
                     "< 25 MB added"))
        rows.append((f"nginx worker private memory (USS) after load, {label}, MiB",
                     f"{x['uss_loaded_kib'] / 1024:.1f}", f"(b) {b['uss_loaded_kib'] / 1024:.1f}",
                     f"+{(x['uss_loaded_kib'] - b['uss_loaded_kib']) / 1024:.1f} MiB",
                     "<= 8 MiB added"))
    return rows

