"""`python -m logpool demo`: logpool end to end in a real nginx.

Starts a collector (`logpool receive`, in this process) unless --sink points elsewhere,
starts nginx with 2 workers and logpool in log_by_lua, drives requests with wrk, reloads
nginx halfway, quits it, checks that every request's line arrived exactly once, and prints
a report. Exits 1 when a check fails. With --agent the workers write into shared-memory
rings and one `python -m logpool agent` ships everything (docs/agent.md).
"""
import collections
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time

from logpool.tools.nginx import Nginx, NginxMissing, wait_for
from logpool.receive import Receiver

# Each worker times its pool:log calls with a vDSO clock, and an empty pair of clock reads
# right after (the clock's own cost, subtracted), and reports them with its counters when
# it exits; the demo adds up all workers of both generations.
HTTP_EXTRA = r"""
    init_worker_by_lua_block {
        local ffi = require "ffi"
        if not pcall(ffi.typeof, "struct demo_timespec") then
            ffi.cdef[[
                struct demo_timespec { long tv_sec; long tv_nsec; };
                int clock_gettime(int clk, struct demo_timespec *tp);
            ]]
        end
        require("resty.logpool").start({
            %(pool)s
        })
    }
    exit_worker_by_lua_block {
        local lp = require "resty.logpool"
        local pool = lp.default()
        local st = pool and pool:stats("main")
        local abandoned = lp.stop(5)
        if st then
            local t = package.loaded.demo_timing or { ns = 0, calls = 0 }
            ngx.log(ngx.NOTICE, string.format(
                "logpool-demo accepted=%%d dropped=%%d reconnects=%%d abandoned=%%d "
                .. "log_ns=%%d clock_ns=%%d log_calls=%%d", st.accepted_messages,
                st.dropped_full + st.dropped_too_big + st.dropped_closed, st.reconnects,
                abandoned or -1, t.ns, t.clock_ns or 0, t.calls))
        end
    }
"""
SERVER_EXTRA = r"""
        log_by_lua_block {
            local ffi = require "ffi"
            local t = package.loaded.demo_timing
            if not t then
                t = { ns = 0, clock_ns = 0, calls = 0, ts = ffi.new("struct demo_timespec") }
                package.loaded.demo_timing = t
            end
            local line = ngx.var.request_id .. " " .. ngx.var.status .. "\n"
            -- Three clock reads: the first pair brackets pool:log, the second pair nothing,
            -- so the clock's own cost (and its interpreted cdata reads) is subtracted.
            local ts, C = t.ts, ffi.C
            C.clock_gettime(1, ts)
            local s0, n0 = tonumber(ts.tv_sec), tonumber(ts.tv_nsec)
            require("resty.logpool").log("main", line)
            C.clock_gettime(1, ts)
            local s1, n1 = tonumber(ts.tv_sec), tonumber(ts.tv_nsec)
            C.clock_gettime(1, ts)
            local s2, n2 = tonumber(ts.tv_sec), tonumber(ts.tv_nsec)
            t.ns = t.ns + (s1 - s0) * 1e9 + (n1 - n0)
            t.clock_ns = t.clock_ns + (s2 - s1) * 1e9 + (n2 - n1)
            t.calls = t.calls + 1
        }
"""
STATS_LINE = re.compile(r"logpool-demo accepted=(\d+) dropped=(\d+) reconnects=(\d+) "
                        r"abandoned=(-?\d+) log_ns=(-?\d+) clock_ns=(-?\d+) log_calls=(\d+)")


def progress(label, done, total, width=40):
    frac = min(1.0, done / total) if total else 1.0
    bar = "#" * int(frac * width) + "-" * (width - int(frac * width))
    sys.stderr.write(f"\r{label} [{bar}] {done:>8}/{total}")
    sys.stderr.flush()


def rss_kib(pid):
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def start_agent(tmp, sink):
    """`python -m logpool agent` shipping to sink; agent_dir on /dev/shm (a tmpfs) when there
    is one. Returns (process, agent_dir)."""
    agent_dir = os.path.join(tempfile.mkdtemp(prefix="logpool-demo-",
                                              dir="/dev/shm" if os.path.isdir("/dev/shm")
                                              else tmp), "agent")
    config = os.path.join(tmp, "agent.json")
    with open(config, "w") as f:
        json.dump({"agent_dir": agent_dir, "sinks": [{"url": sink, "name": "main"}]}, f)
    proc = subprocess.Popen([sys.executable, "-m", "logpool", "agent", "--config", config],
                            stderr=subprocess.PIPE, text=True)
    line = proc.stderr.readline()
    while line and "draining rings" not in line:
        line = proc.stderr.readline()
    if not line:
        raise RuntimeError("the agent did not start: " + proc.stderr.read())
    return proc, agent_dir


def run(requests=200_000, sink=None, workers=2, keep_running=False, connections=32,
        agent=False):
    if not shutil.which("wrk"):
        print("logpool demo: wrk is required (Debian package wrk; `make deps`)", file=sys.stderr)
        return 2
    tmp = tempfile.mkdtemp(prefix="logpool-demo-")
    out_path = os.path.join(tmp, "received.log")
    receiver = None
    if sink is None:
        out = open(out_path, "wb")
        receiver = Receiver("unix:" + os.path.join(tmp, "collector.sock"), out).start()
        sink = receiver.url
        print(f"collector: logpool receive on {sink} -> {out_path}")
    else:
        print(f"collector: {sink} (external: delivery is checked by logpool's counters only)")
    agent_proc = None
    if agent:
        agent_proc, agent_dir = start_agent(tmp, sink)
        print(f"agent: python -m logpool agent, rings in {agent_dir}")
        pool = f'agent = "{agent_dir}",'
    else:
        pool = f'sinks = {{ {{ url = "{sink}", name = "main" }} }},'
    try:
        ng = Nginx(os.path.join(tmp, "nginx"), HTTP_EXTRA % {"pool": pool}, SERVER_EXTRA,
                   workers=workers).start()
    except NginxMissing as exc:
        print(f"logpool demo: {exc}", file=sys.stderr)
        return 2
    print(f"nginx: {workers} workers on http://127.0.0.1:{ng.port}/ (prefix {ng.prefix})")
    # access log lines are "$request_id\n": 33 bytes each
    served = lambda: os.path.getsize(ng.access_log) // 33 if os.path.exists(ng.access_log) else 0
    rss = []
    try:
        load = subprocess.Popen(
            ["wrk", "-t2", f"-c{connections}", "-d600s", f"http://127.0.0.1:{ng.port}/"],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        started = time.monotonic()
        reloaded = False
        while served() < requests and load.poll() is None:
            n = served()
            progress("requests", n, requests)
            if not reloaded and n >= requests // 2:
                rss = [rss_kib(p) for p in ng.worker_pids()]
                sys.stderr.write("  (reloading nginx)\n")
                ng.reload()
                reloaded = True
            time.sleep(0.2)
        load.send_signal(signal.SIGINT)
        wrk_out, _ = load.communicate(timeout=30)
        elapsed = time.monotonic() - started
        progress("requests", served(), requests)
        sys.stderr.write("\n")
        if keep_running:
            print(f"nginx keeps running on http://127.0.0.1:{ng.port}/ — press Ctrl-C to quit")
            try:
                signal.pause()
            except KeyboardInterrupt:
                pass
        if not rss:
            rss = [rss_kib(p) for p in ng.worker_pids()]
        ng.quit(timeout=60)
    finally:
        ng.kill()
    access = ng.access_ids()
    totals = [0] * 7
    for m in STATS_LINE.finditer(ng.read_error_log()):
        totals = [a + int(b) for a, b in zip(totals, m.groups())]
    accepted, dropped, reconnects, abandoned, log_ns, clock_ns, log_calls = totals

    ok = True
    print()
    print("logpool demo report" + (" (agent mode)" if agent else ""))
    print(f"  requests served (nginx access log)  {len(access):>10}")
    print(f"  requests/s (wrk, 2 cores shared)    {len(access) / elapsed:>10.0f}")
    print(f"  lines accepted by logpool           {accepted:>10}")
    if receiver is not None:
        wait_for(lambda: receiver.snapshot().messages >= accepted, timeout=10,
                 what="the collector to read everything") if accepted else None
        receiver.stop()
        out.close()
        with open(out_path, "rb") as f:
            received = [line.split(b" ", 1)[0].decode() for line in f.read().splitlines()]
        counts = collections.Counter(received)
        dupes = sum(1 for v in counts.values() if v > 1)
        missing = len(set(access) - set(counts))
        print(f"  lines received by the collector     {len(received):>10}")
        print(f"  missing / duplicated                {missing:>5} / {dupes}")
        ok = ok and missing == 0 and dupes == 0 and len(received) == len(access)
    else:
        ok = ok and accepted == len(access)
    if agent_proc is not None:
        agent_proc.terminate()
        agent_proc.wait(timeout=30)
        agent_proc.stderr.close()
        shutil.rmtree(os.path.dirname(agent_dir), ignore_errors=True)
    print(f"  dropped / abandoned                 {dropped:>5} / {abandoned}")
    print(f"  reconnects                          {reconnects:>10}")
    if rss:
        print(f"  worker RSS (KiB, each)              {', '.join(map(str, rss)):>10}")
    if log_calls:
        print(f"  log phase: pool:log per request     {(log_ns - clock_ns) / log_calls:>9.0f} ns"
              f"  (timed {log_ns / log_calls:.0f} ns, minus {clock_ns / log_calls:.0f} ns "
              f"for the clock itself)")
    ok = ok and dropped == 0 and abandoned == 0
    print("  result                              " + ("OK: every line exactly once" if ok
                                                      else "FAILED"))
    if not ok:
        print(f"  (kept for inspection: {tmp})")
    else:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0 if ok else 1
