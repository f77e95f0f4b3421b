"""make bench: every benchmark prints its baseline, measured in the same run, and the ratio.

Figures, not pass/fail. Writes bench/results.json and bench/throughput.png.
usage: python bench/run.py [--quick]
"""
import json
import os
import platform
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)
from logpool import paths  # noqa: E402
from logpool.tools.nginx import MODULES, Nginx, native_modules  # noqa: E402

BUILD = os.path.join(ROOT, "build", "bench")
PY = sys.executable
QUICK = "--quick" in sys.argv


def build_helpers():
    os.makedirs(BUILD, exist_ok=True)
    libbench = os.path.join(BUILD, "libbench.so")
    subprocess.run(["gcc", "-O2", "-shared", "-fPIC", "-pthread", "-o", libbench,
                    os.path.join(HERE, "csrc", "benchlib.c")], check=True)
    libnaive = os.path.join(BUILD, "libnaive.so")
    subprocess.run([PY, os.path.join(HERE, "build_naive.py"), libnaive], check=True,
                   stdout=subprocess.DEVNULL)
    return libbench, libnaive


class FastSink:
    def __init__(self, tmp, name="sink.sock", listen=None, tls_files=()):
        self.path = os.path.join(tmp, name)
        self.proc = subprocess.Popen([PY, os.path.join(HERE, "fast_sink.py"),
                                      listen or self.path, *tls_files],
                                     stdout=subprocess.PIPE, text=True)
        ready, self.url = self.proc.stdout.readline().split()
        assert ready == "ready"

    def stop(self):
        self.proc.send_signal(signal.SIGTERM)
        out = self.proc.communicate(timeout=30)[0]
        return int(out.split()[-1])


def luajit(*args, timeout=600):
    out = subprocess.run(["env", "-i", shutil.which("luajit"), *args], capture_output=True,
                         text=True, timeout=timeout)
    if out.returncode != 0:
        raise RuntimeError(out.stdout + out.stderr)
    return out.stdout


def bench_hotpath(tmp, libbench, libnaive):
    sink = FastSink(tmp, "hot.sock")
    calls = 200_000 if QUICK else 1_000_000
    out = luajit(os.path.join(HERE, "hotpath.lua"), paths.lib_path(), paths.header_path(),
                 libbench, libnaive, sink.url, str(calls), os.path.join(tmp, "hot-spool"))
    sink.stop()
    hot, scaling = {}, []
    for line in out.splitlines():
        f = line.split()
        if f[0] == "hotpath":
            hot[f[1]] = dict(median=float(f[2]), p99=float(f[3]), p999=float(f[4]),
                             max=float(f[5]), accepted=int(f[6]), mean_wall=float(f[7]))
        elif f[0] == "mean":
            hot.setdefault("mean", {})[f[1]] = dict(mean=float(f[2]), cpu=float(f[3]))
        elif f[0] == "scaling":
            calls_total = int(f[2]) * (calls // 2)
            scaling.append(dict(sinks=int(f[1]), threads=int(f[2]), median=float(f[3]),
                                p99=float(f[4]), p999=float(f[5]), accepted=int(f[6]),
                                produce_s=int(f[7]) / 1e9, deliver_s=int(f[8]) / 1e9,
                                calls=calls_total,
                                delivered_mb_s=int(f[6]) * 200 / (int(f[8]) / 1e9) / 1e6))
    return hot, scaling


def bench_throughput(tmp):
    seconds = 1.5 if QUICK else 3.0
    rows = []
    for size in (64, 512, 4096):
        sink = FastSink(tmp, f"raw{size}.sock")
        raw = subprocess.run([PY, os.path.join(HERE, "raw_writer.py"), sink.path, str(size),
                              str(seconds)], capture_output=True, text=True, check=True).stdout
        raw_elapsed = float(raw.split()[3])
        raw_bytes = sink.stop()
        sink = FastSink(tmp, f"lp{size}.sock")
        out = luajit(os.path.join(HERE, "throughput.lua"), paths.lib_path(),
                     paths.header_path(), sink.url, str(size), str(seconds))
        f = out.split()
        lp_bytes = sink.stop()
        lp_elapsed = float(f[4])
        rows.append(dict(size=size, raw_mb_s=raw_bytes / raw_elapsed / 1e6,
                         logpool_mb_s=lp_bytes / lp_elapsed / 1e6, accepted=int(f[2]),
                         delivered=lp_bytes, refused=int(f[3]), abandoned=int(f[5])))
    return rows


def bench_transports(tmp):
    """512 B messages through each transport, against logpool over unix in the same run."""
    sys.path.insert(0, os.path.join(ROOT, "tests"))
    from tlsca import TestCA
    ca = TestCA(tmp, name="bench CA")
    cert, key = ca.issue("bench-server")
    seconds, size = (1.5 if QUICK else 3.0), 512
    cases = [
        ("unix", None, (), ""),
        ("tcp", "tcp://127.0.0.1:0", (), ""),
        ("tls", "tls://127.0.0.1:0", (cert, key),
         f', "ca_file": "{ca.ca_file}", "server_name": "localhost"'),
        ("udp", "udp://127.0.0.1:0", (), ""),
    ]
    rows = []
    for name, listen, tls_files, extra in cases:
        sink = FastSink(tmp, f"t-{name}.sock", listen, tls_files)
        out = luajit(os.path.join(HERE, "throughput.lua"), paths.lib_path(),
                     paths.header_path(), sink.url, str(size), str(seconds), "120000", extra)
        f = out.split()
        delivered = sink.stop()
        elapsed = float(f[4])
        # close() returned once everything was written: accepted / elapsed is the rate the
        # writer sent at. For UDP the Python sink, not logpool, limits what is delivered.
        rows.append(dict(transport=name, size=size, accepted=int(f[2]), delivered=delivered,
                         abandoned=int(f[5]), seconds=elapsed,
                         sent_mb_s=int(f[2]) / elapsed / 1e6,
                         delivered_mb_s=delivered / elapsed / 1e6))
    return rows


class Receive:
    """`python -m logpool receive` as a separate process, writing to a file."""

    def __init__(self, listen, out):
        self.listen, self.out = listen, out
        self.proc = subprocess.Popen([PY, "-m", "logpool", "receive", "--listen", listen,
                                      "--out", out], stderr=subprocess.PIPE, text=True,
                                     cwd=ROOT)
        line = self.proc.stderr.readline()
        assert "listening on" in line, line
        self.url = line.rsplit(" ", 1)[1].strip()

    def stop(self, sig=signal.SIGTERM):
        self.proc.send_signal(sig)
        self.proc.wait(timeout=60)
        self.proc.stderr.close()


def bench_relp(tmp):
    """RELP (every message acknowledged once written out) against plain TCP, both into
    `logpool receive` writing a file, 512 B messages."""
    seconds, size, rows = (1.5 if QUICK else 3.0), 512, []
    for proto in ("tcp", "relp"):
        out = os.path.join(tmp, f"relp-bench-{proto}.log")
        rx = Receive(f"{proto}://127.0.0.1:0", out)
        f = luajit(os.path.join(HERE, "throughput.lua"), paths.lib_path(), paths.header_path(),
                   rx.url, str(size), str(seconds), "120000").split()
        rx.stop()
        elapsed, accepted = float(f[4]), int(f[2])
        delivered = os.path.getsize(out)
        rows.append(dict(transport=proto, size=size, accepted=accepted, delivered=delivered,
                         seconds=elapsed, mb_s=accepted / elapsed / 1e6,
                         messages_s=accepted / size / elapsed))
        os.unlink(out)
    return rows


def request_path(rng, paths):
    path = rng.choice(paths)
    return path % rng.randrange(10**6) if "%d" in path else path


def sample_access_log(n=4000):
    """NDJSON access-log lines of about 512 B, varied like real ones, for compression ratios
    (the throughput producer sends one repeated byte, which compresses absurdly well)."""
    import random
    rng = random.Random(7)
    paths = ["/", "/api/v1/items", "/static/app.js", "/login", "/api/v1/orders/%d"]
    out = []
    for i in range(n):
        line = json.dumps({
            "time": f"2026-11-23T09:{i // 60 % 60:02d}:{i % 60:02d}.{rng.randrange(1000):03d}Z",
            "remote_addr": f"10.{rng.randrange(256)}.{rng.randrange(256)}.{rng.randrange(256)}",
            "request": f"GET {request_path(rng, paths)} HTTP/1.1",
            "status": rng.choice([200, 200, 200, 301, 404, 500]),
            "body_bytes_sent": rng.randrange(100000), "request_time": rng.random(),
            "user_agent": rng.choice(["Mozilla/5.0 (X11; Linux x86_64) Firefox/133.0",
                                      "curl/8.5.0", "Go-http-client/1.1"]),
            "request_id": "%032x" % rng.getrandbits(128),
        }).encode()
        out.append(line + b" " * max(0, 511 - len(line)) + b"\n")
    return b"".join(out)


def bench_http(tmp):
    """HTTP NDJSON batches at 512 B into `logpool receive --listen http://`, uncompressed,
    gzip and zstd, against tcp:// into the same receiver; and each codec's ratio on varied
    access-log lines."""
    import zlib
    import zstandard
    seconds, size, rows = (1.5 if QUICK else 3.0), 512, []
    sample = sample_access_log()
    ratio = {"none": 1.0,
             "gzip": len(sample) / len(zlib.compress(sample, 6)),
             "zstd": len(sample) / len(zstandard.ZstdCompressor(level=3).compress(sample))}
    for case in ("tcp", "none", "gzip", "zstd"):
        out = os.path.join(tmp, f"http-bench-{case}.log")
        listen = "tcp://127.0.0.1:0" if case == "tcp" else "http://127.0.0.1:0/ingest"
        rx = Receive(listen, out)
        extra = "" if case == "tcp" else f', "http_compression": "{case}"'
        f = luajit(os.path.join(HERE, "throughput.lua"), paths.lib_path(), paths.header_path(),
                   rx.url, str(size), str(seconds), "120000", extra).split()
        rx.stop()
        elapsed, accepted = float(f[4]), int(f[2])
        rows.append(dict(case=case, size=size, accepted=accepted, seconds=elapsed,
                         delivered=os.path.getsize(out), mb_s=accepted / elapsed / 1e6,
                         ratio=ratio.get(case, 1.0)))
        os.unlink(out)
    return rows


def bench_encoders():
    """Each http_format's encoder (logpool/transports/formats) on varied access-log lines,
    in requests of 1000 messages: MB/s of log data encoded, against ndjson in the same run
    (the encoders run in the writer thread: this is their ceiling per sink)."""
    from logpool.transports.formats import FORMATS
    lines = sample_access_log().splitlines(keepends=True)
    options = {o.name: o.default for cls in FORMATS.values() for o in cls.OPTIONS}
    rows, rounds = [], (2 if QUICK else 5)
    for name, cls in FORMATS.items():
        encoder = cls(options, "/")
        best = None
        for _ in range(rounds):
            start = time.perf_counter()
            for i in range(0, len(lines), 1000):
                encoder.encode(lines[i:i + 1000], time.time_ns())
            took = time.perf_counter() - start
            best = took if best is None else min(best, took)
        rows.append(dict(format=name, mb_s=sum(map(len, lines)) / best / 1e6))
    return rows


def bench_kafka(tmp):
    """200 B messages into librdkafka's mock cluster (3 brokers, in a helper process): logpool
    from luajit against confluent-kafka's own produce loop in Python (the ceiling a user would
    write by hand), same cluster, same run."""
    import confluent_kafka
    mock = subprocess.Popen([PY, os.path.join(ROOT, "tests", "kafka_mock.py")],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    bootstrap = mock.stdout.readline().split()[1]
    seconds, size, rows = (1.5 if QUICK else 3.0), 200, []
    try:
        f = luajit(os.path.join(HERE, "throughput.lua"), paths.lib_path(), paths.header_path(),
                   f"kafka://{bootstrap}/bench-logpool", str(size), str(seconds),
                   "120000").split()
        accepted, elapsed, abandoned = int(f[2]), float(f[4]), int(f[5])
        assert abandoned == 0, f"logpool closed with {abandoned} messages not delivered"
        rows.append(dict(case="logpool", messages=accepted // size, seconds=elapsed,
                         messages_s=accepted / size / elapsed, mb_s=accepted / elapsed / 1e6))
        producer = confluent_kafka.Producer({"bootstrap.servers": bootstrap, "acks": "all",
                                             "enable.idempotence": True, "linger.ms": 5,
                                             "compression.type": "zstd", "log_level": 0})
        value, sent = b"x" * (size - 1) + b"\n", 0
        start = time.monotonic()
        while time.monotonic() - start < seconds:
            for _ in range(1000):
                try:
                    producer.produce("bench-python", value)
                    sent += 1
                except BufferError:
                    producer.poll(0.001)
            producer.poll(0)
        producer.flush(120)
        elapsed = time.monotonic() - start
        rows.append(dict(case="python", messages=sent, seconds=elapsed,
                         messages_s=sent / elapsed, mb_s=sent * size / elapsed / 1e6))
    finally:
        mock.kill()
        mock.wait()
    return rows


def bench_spool(tmp):
    """Spill and replay against the raw write rate of the same disk: 512 B messages logged
    from luajit into a dead sink with a spool (accepted MB/s; spilling keeps up when nothing
    is refused), then a new pool replaying the spool into a fast sink."""
    import logpool
    size_mb = 64 if QUICK else 256
    raw_path = os.path.join(tmp, "raw-disk.bin")
    block = os.urandom(1 << 20)
    start = time.monotonic()
    with open(raw_path, "wb") as f:
        for _ in range(size_mb):
            f.write(block)
        f.flush()
        os.fsync(f.fileno())
    raw = size_mb * (1 << 20) / (time.monotonic() - start) / 1e6
    os.unlink(raw_path)
    spool_dir = os.path.join(tmp, "spool")
    seconds = 1.5 if QUICK else 3.0
    f = luajit(os.path.join(HERE, "throughput.lua"), paths.lib_path(), paths.header_path(),
               "unix:/nonexistent/bench-dead.sock", "512", str(seconds), "0",
               f', "name": "spooled", "spool_dir": "{spool_dir}"').split()
    accepted, refused, elapsed = int(f[2]), int(f[3]), float(f[4])
    sink = FastSink(tmp, "replay.sock")
    start = time.monotonic()
    pool = logpool.Pool({"sinks": [{"url": sink.url, "name": "spooled"}],
                         "spool_dir": spool_dir})
    pool.flush(600)  # the writer adopts the spool, then replays it
    replay_s = time.monotonic() - start
    spooled = pool.stats(0)["sent_bytes"]
    pool.close(5)
    sink.stop()
    return dict(raw_disk_mb_s=raw, spill_mb_s=accepted / elapsed / 1e6, refused=refused,
                spooled_mb=spooled / 1e6, replay_mb_s=spooled / replay_s / 1e6)


def bench_sigkill_loss(tmp):
    """Bytes lost per SIGKILL of the collector, TCP against RELP: a producer logs numbered
    lines steadily while `logpool receive` is killed and restarted on the same port."""
    import collections
    import socket as socket_mod
    import logpool
    kills, n, rows = (2 if QUICK else 4), (20_000 if QUICK else 60_000), []
    for proto in ("tcp", "relp"):
        with socket_mod.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        out = os.path.join(tmp, f"kill-{proto}.log")
        rx = Receive(f"{proto}://127.0.0.1:{port}", out)
        pool = logpool.Pool({"sinks": [{"url": rx.url}], "retry_interval_ms": 10,
                             "max_retry_interval_ms": 100, "periodic_flush_ms": 10})
        line = b"%08d " + b"x" * 190 + b"\n"
        logged = [0]

        def produce():
            for i in range(n):
                pool.log(0, line % i)
                logged[0] = i + 1  # full speed: the collector falls behind, as under load

        producer = threading.Thread(target=produce)
        producer.start()
        for k in range(1, kills + 1):  # kills while the producer keeps logging
            while logged[0] < k * n // (kills + 1):
                time.sleep(0.005)
            rx.stop(signal.SIGKILL)
            rx = Receive(f"{proto}://127.0.0.1:{port}", out)
        producer.join()
        pool.flush(60)
        pool.close(5)
        rx.stop()
        with open(out, "rb") as f:
            data = f.read()
        got = collections.Counter(int(x[:8]) for x in data.splitlines() if len(x) == 199)
        lost = n - len(got)
        rows.append(dict(transport=proto, kills=kills, messages=n, lost=lost,
                         lost_bytes_per_kill=lost * len(line % 0) / kills,
                         duplicates=sum(c - 1 for c in got.values()),
                         resent=pool.stats(0)["resent_messages"]))
    return rows


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


def bench_nginx(tmp):
    """Requests/s of each log_by_lua form, in alternating rounds (every nginx runs the whole
    time; each round loads them one after the other, in a rotating order, so that a noisy
    host hurts every case alike), with 1 worker and with 2; then each worker's memory."""
    sys.path.insert(0, os.path.join(ROOT, "tests"))
    from tlsca import TestCA
    ca = TestCA(tmp, name="bench nginx CA")
    sink = FastSink(tmp, "nginx.sock")
    tls_sink = FastSink(tmp, listen="tls://127.0.0.1:0", tls_files=ca.issue("localhost"))
    rounds, seconds = (3, 1) if QUICK else (7, 2)  # wrk takes whole seconds
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


def bench_dead_sink_rss(tmp):
    seconds = 3 if QUICK else 10
    dead = "unix:" + os.path.join(tmp, "dead.sock")
    proc = subprocess.Popen(["env", "-i", shutil.which("luajit"),
                             os.path.join(HERE, "throughput.lua"), paths.lib_path(),
                             paths.header_path(), dead, "512", str(seconds), "100"],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    samples = []
    while proc.poll() is None:
        try:
            with open(f"/proc/{proc.pid}/status") as f:
                samples.append(int(re.search(r"VmRSS:\s+(\d+)", f.read()).group(1)))
        except (OSError, AttributeError):
            pass
        time.sleep(0.1)
    out = proc.communicate()[0].split()
    return dict(seconds=seconds, start_kib=int(out[6]), end_kib=int(out[7]),
                max_kib=max(samples + [int(out[7])]), accepted_bytes=int(out[2]),
                refused=int(out[3]), max_buffer_length=16 * 1024 * 1024)


def plot(throughput, path):
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("(matplotlib not installed: no plot)")
        return
    sizes = [r["size"] for r in throughput]
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(sizes, [r["raw_mb_s"] for r in throughput], "o--", label="raw writer (baseline)")
    ax.plot(sizes, [r["logpool_mb_s"] for r in throughput], "o-", label="logpool (luajit host)")
    ax.set_xscale("log", base=2)
    ax.set_xticks(sizes, [f"{s} B" for s in sizes])
    ax.set_xlabel("message size")
    ax.set_ylabel("MB/s delivered to a unix socket")
    ax.set_title("Throughput vs message size (2 cores)")
    ax.legend()
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main():
    tmp = tempfile.mkdtemp(prefix="logpool-bench-")
    started = time.monotonic()
    libbench, libnaive = build_helpers()
    print("hot path ...", flush=True)
    hot, scaling = bench_hotpath(tmp, libbench, libnaive)
    print("throughput ...", flush=True)
    throughput = bench_throughput(tmp)
    print("transports ...", flush=True)
    transports = bench_transports(tmp)
    print("relp ...", flush=True)
    relp = bench_relp(tmp)
    print("http ...", flush=True)
    http_rows = bench_http(tmp)
    print("encoders ...", flush=True)
    encoders = bench_encoders()
    print("kafka ...", flush=True)
    kafka = bench_kafka(tmp)
    print("spool ...", flush=True)
    spool = bench_spool(tmp)
    print("sigkill loss ...", flush=True)
    sigkill = bench_sigkill_loss(tmp)
    print("nginx ...", flush=True)
    nginx = bench_nginx(tmp)
    nginx["calls"] = bench_nginx_calls(tmp)
    nginx["perf"] = bench_nginx_perf(tmp)
    print("memory under a dead sink ...", flush=True)
    dead = bench_dead_sink_rss(tmp)
    results = dict(date=time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                   machine=f"{platform.machine()}, {os.cpu_count()} cores, "
                           f"{platform.platform()}",
                   quick=QUICK, hotpath=hot, scaling=scaling, throughput=throughput,
                   transports=transports, relp=relp, sigkill=sigkill, http=http_rows,
                   encoders=encoders, kafka=kafka, spool=spool,
                   nginx=nginx, dead_sink=dead, seconds=time.monotonic() - started)
    with open(os.path.join(HERE, "results.json"), "w") as f:
        json.dump(results, f, indent=2)
    plot(throughput, os.path.join(HERE, "throughput.png"))
    report(results)
    with open(os.path.join(HERE, "RESULTS.md"), "w") as f:
        f.write(markdown(results))
    shutil.rmtree(tmp, ignore_errors=True)


def mean_rows(hot):
    """Mean ns per call over bursts (no timer per call) and CPU per message, live and dead."""
    mean = hot.get("mean")
    if not mean:
        return []
    floor = mean["floor"]["mean"]
    return [
        ("mean ns/call, live writer + receiver (bursts of 50,000)",
         f"{mean['live']['mean']:.1f}", f"floor {floor:.1f}",
         f"{mean['live']['mean'] / floor:.2f}x", "<= 2x floor"),
        ("mean ns/call, sink down (buffer growing)", f"{mean['dead']['mean']:.1f}",
         f"floor {floor:.1f}", f"{mean['dead']['mean'] / floor:.2f}x", "<= 2x floor"),
        ("mean ns/call, sink down, against copying into fresh memory (page faults)",
         f"{mean['dead']['mean']:.1f}", f"fresh-memory floor {mean['fresh']['mean']:.1f}",
         f"{mean['dead']['mean'] / mean['fresh']['mean']:.2f}x", "<= 2x floor"),
        ("process CPU per message, hot path + writer, ns", f"{mean['live']['cpu']:.0f}",
         f"floor {mean['floor']['cpu']:.0f}", "", "report it; cut it"),
    ]


def spilling_rows(hot):
    """log_cdata while the writer spills a dead sink to the spool, against a healthy sink."""
    sp, lp = hot.get("spilling"), hot["logpool"]
    if not sp:
        return []
    return [("hot path p99 / p99.9, ns, sink down, writer spilling to the spool",
             f"{sp['p99']:.0f} / {sp['p999']:.0f}", f"healthy {lp['p99']:.0f} / {lp['p999']:.0f}",
             f"{sp['p999'] / lp['p999']:.2f}x p99.9", "the spool must not move p99.9")]


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


def rows_of(r):
    """(measure, logpool, baseline, ratio, target) rows of a results dict."""
    hot = r["hotpath"]
    timer = hot["timer"]["median"]
    lp, fl, nv = hot["logpool"], hot["floor"], hot["naive"]
    t = r["throughput"]
    dead = r["dead_sink"]
    rows = [
        ("hot path median, ns (timer %.0f ns incl.)" % timer, f"{lp['median']:.0f}",
         f"floor {fl['median']:.0f}", f"{lp['median'] / fl['median']:.2f}x",
         "<= 2x floor, < 60 ns"),
        ("hot path p99 / p99.9, ns (writer busy)", f"{lp['p99']:.0f} / {lp['p999']:.0f}",
         f"floor {fl['p99']:.0f} / {fl['p999']:.0f}", "", "p99.9 < 5000 ns"),
        *mean_rows(hot),
        *spilling_rows(hot),
        ("naive def_extern median / p99.9, ns", f"{nv['median']:.0f} / {nv['p999']:.0f}",
         f"logpool {lp['median']:.0f} / {lp['p999']:.0f}",
         f"{nv['median'] / lp['median']:.1f}x slower", ""),
    ]
    for x in t:
        rows.append((f"throughput {x['size']} B, MB/s", f"{x['logpool_mb_s']:.0f}",
                     f"raw {x['raw_mb_s']:.0f}", f"{x['logpool_mb_s'] / x['raw_mb_s']:.2f}",
                     ">= 0.70 at 512 B" if x["size"] == 512 else ""))
    base = next(x for x in r["transports"] if x["transport"] == "unix")
    for x in r["transports"]:
        lost = 1 - x["delivered"] / x["accepted"] if x["accepted"] else 0
        rows.append((f"{x['transport']} 512 B, MB/s sent"
                     + (f" ({lost:.0%} not read by the Python sink)" if lost > 0 else ""),
                     f"{x['sent_mb_s']:.0f}", f"unix {base['sent_mb_s']:.0f}",
                     f"{x['sent_mb_s'] / base['sent_mb_s']:.2f}", ""))
    tcp, relp = (next(x for x in r.get("relp", ()) if x["transport"] == t)
                 for t in ("tcp", "relp")) if r.get("relp") else (None, None)
    if relp:
        rows.append(("relp to logpool receive 512 B, MB/s (messages/s)",
                     f"{relp['mb_s']:.0f} ({relp['messages_s']:.0f})",
                     f"tcp {tcp['mb_s']:.0f} ({tcp['messages_s']:.0f})",
                     f"{relp['mb_s'] / tcp['mb_s']:.2f}", ">= 0.5 of tcp"))
    http_tcp = next((x for x in r.get("http", ()) if x["case"] == "tcp"), None)
    for x in r.get("http", ()):
        if x["case"] != "tcp":
            rows.append((f"http ndjson 512 B, {x['case']}: MB/s of log data (codec ratio on "
                         f"access-log lines)", f"{x['mb_s']:.0f} ({x['ratio']:.1f}x)",
                         f"tcp {http_tcp['mb_s']:.0f}", f"{x['mb_s'] / http_tcp['mb_s']:.2f}",
                         ""))
    nd = next((x for x in r.get("encoders", ()) if x["format"] == "ndjson"), None)
    for x in r.get("encoders", ()):
        if x["format"] != "ndjson":
            rows.append((f"http_format {x['format']}: encoder MB/s of log data (512 B lines)",
                         f"{x['mb_s']:.0f}", f"ndjson {nd['mb_s']:.0f}",
                         f"{x['mb_s'] / nd['mb_s']:.2f}", ""))
    if r.get("kafka"):
        lp, py = (next(x for x in r["kafka"] if x["case"] == c) for c in ("logpool", "python"))
        rows.append(("kafka mock cluster 200 B: messages/s (MB/s)",
                     f"{lp['messages_s']:.0f} ({lp['mb_s']:.0f})",
                     f"confluent-kafka loop {py['messages_s']:.0f} ({py['mb_s']:.0f})",
                     f"{lp['messages_s'] / py['messages_s']:.2f}", ""))
    if r.get("spool"):
        sp = r["spool"]
        rows.append((f"spool: spill into a dead sink, MB/s accepted ({sp['refused']} refused)",
                     f"{sp['spill_mb_s']:.0f}", f"raw disk {sp['raw_disk_mb_s']:.0f}",
                     f"{sp['spill_mb_s'] / sp['raw_disk_mb_s']:.2f}", ""))
        rows.append((f"spool: replay of {sp['spooled_mb']:.0f} MB into a fast sink, MB/s",
                     f"{sp['replay_mb_s']:.0f}", f"raw disk {sp['raw_disk_mb_s']:.0f}",
                     f"{sp['replay_mb_s'] / sp['raw_disk_mb_s']:.2f}", ""))
    rows += nginx_rows(r["nginx"])
    for x in r.get("sigkill", ()):
        rows.append((f"{x['transport']}: bytes lost per SIGKILL of the collector "
                     f"({x['kills']} kills, {x['messages']} lines)",
                     f"{x['lost_bytes_per_kill']:.0f}",
                     f"{x['duplicates']} duplicates, {x['resent']} resent", "",
                     "relp: 0" if x["transport"] == "relp" else ""))
    rows += [
        (f"RSS, dead sink, {dead['seconds']} s full load, MiB", f"{dead['max_kib'] / 1024:.1f}",
         f"before load {dead['start_kib'] / 1024:.1f}",
         f"+{(dead['max_kib'] - dead['start_kib']) / 1024:.1f} MiB",
         "bound: max_buffer_length 16 MiB"),
    ]
    for s in r["scaling"]:
        rows.append((f"{s['sinks']:>2} sinks, {s['threads']} producer threads: median ns, MB/s",
                     f"{s['median']:.0f}", f"p99 {s['p99']:.0f}", f"{s['delivered_mb_s']:.0f} MB/s",
                     ""))
    return rows


HEADER = ("measure", "logpool", "baseline (same run)", "ratio", "target")


def title(r):
    return (f"logpool bench — {r['date']} — {r['machine']} — {r['seconds']:.0f} s"
            + (" (quick)" if r["quick"] else ""))


def markdown(r):
    """bench/RESULTS.md: the table docs/performance.md links to, written by every run."""
    out = [f"# {title(r)}", "", "Generated by `make bench` (bench/run.py) from "
           "bench/results.json; do not edit.", "",
           "| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER)]
    out += ["| " + " | ".join(str(v) for v in row) + " |" for row in rows_of(r)]
    return "\n".join(out) + "\n"


def report(r):
    rows = rows_of(r)
    widths = [max(len(str(row[i])) for row in rows) for i in range(5)]
    print()
    print(title(r))
    widths = [max(w, len(h)) for w, h in zip(widths, HEADER)]
    for row in (HEADER,) + tuple(rows):
        print("  ".join(str(v).ljust(w) for v, w in zip(row, widths)))


if __name__ == "__main__":
    main()
