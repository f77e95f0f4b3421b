"""Each http_format's encoder (logpool/transports/formats) on varied access-log lines, in
requests of 1000 messages: MB/s of log data encoded, against ndjson in the same run (the
encoders run in the writer thread: this is their ceiling per sink)."""
import time

from bench.http_ndjson import sample_access_log

NAME = "encoders"
KEYS = ("encoders",)


def run(ctx):
    from logpool.transports.formats import FORMATS
    lines = sample_access_log().splitlines(keepends=True)
    options = {o.name: o.default for cls in FORMATS.values() for o in cls.OPTIONS}
    out, rounds = [], (2 if ctx.quick else 5)
    for name, cls in FORMATS.items():
        encoder = cls(options, "/")
        best = None
        for _ in range(rounds):
            start = time.perf_counter()
            for i in range(0, len(lines), 1000):
                encoder.encode(lines[i:i + 1000], time.time_ns())
            took = time.perf_counter() - start
            best = took if best is None else min(best, took)
        out.append(dict(format=name, mb_s=sum(map(len, lines)) / best / 1e6))
    return dict(encoders=out)


def rows(r):
    by_name = {x["format"]: x["mb_s"] for x in r.get("encoders", ())}
    base = by_name.get("ndjson")
    return [(f"http_format {name}: encoder MB/s of log data (1000 messages a request)",
             f"{mb_s:.0f}", f"ndjson {base:.0f}" if base else "",
             f"{mb_s / base:.2f}" if base else "", "")
            for name, mb_s in by_name.items() if name != "ndjson"]
