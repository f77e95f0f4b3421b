"""Bytes lost per SIGKILL of the collector, TCP against RELP: a producer logs numbered
lines steadily while `logpool receive` is killed and restarted on the same port."""
import os
import signal
import threading
import time

from bench.common import Receive

NAME = "sigkill"
KEYS = ("sigkill",)


def run(ctx):
    return dict(sigkill=measure(ctx))


def measure(ctx):
    tmp = ctx.tmp
    import collections
    import socket as socket_mod
    import logpool
    kills, n, rows = (2 if ctx.quick else 4), (20_000 if ctx.quick else 60_000), []
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


def rows(r):
    rows = []
    for x in r.get("sigkill", ()):
        rows.append((f"{x['transport']}: bytes lost per SIGKILL of the collector "
                     f"({x['kills']} kills, {x['messages']} lines)",
                     f"{x['lost_bytes_per_kill']:.0f}",
                     f"{x['duplicates']} duplicates, {x['resent']} resent", "",
                     "relp: 0" if x["transport"] == "relp" else ""))
    return rows
