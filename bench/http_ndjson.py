"""HTTP NDJSON batches at 512 B into `logpool receive --listen http://`, uncompressed,
gzip and zstd, against tcp:// into the same receiver; and each codec's ratio on varied
access-log lines."""
import json
import os

from bench.common import Receive, library_args, lua_script, luajit

NAME = "http_ndjson"
KEYS = ("http",)


def run(ctx):
    return dict(http=measure(ctx))


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


def measure(ctx):
    tmp = ctx.tmp
    import zlib
    import zstandard
    seconds, size, rows = (1.5 if ctx.quick else 3.0), 512, []
    sample = sample_access_log()
    ratio = {"none": 1.0,
             "gzip": len(sample) / len(zlib.compress(sample, 6)),
             "zstd": len(sample) / len(zstandard.ZstdCompressor(level=3).compress(sample))}
    for case in ("tcp", "none", "gzip", "zstd"):
        out = os.path.join(tmp, f"http-bench-{case}.log")
        listen = "tcp://127.0.0.1:0" if case == "tcp" else "http://127.0.0.1:0/ingest"
        rx = Receive(listen, out)
        extra = "" if case == "tcp" else f', "http_compression": "{case}"'
        f = luajit(lua_script("throughput.lua"), *library_args(),
                   rx.url, str(size), str(seconds), "120000", extra).split()
        rx.stop()
        elapsed, accepted = float(f[4]), int(f[2])
        rows.append(dict(case=case, size=size, accepted=accepted, seconds=elapsed,
                         delivered=os.path.getsize(out), mb_s=accepted / elapsed / 1e6,
                         ratio=ratio.get(case, 1.0)))
        os.unlink(out)
    return rows


def rows(r):
    rows = []
    http_tcp = next((x for x in r.get("http", ()) if x["case"] == "tcp"), None)
    for x in r.get("http", ()):
        if x["case"] != "tcp":
            rows.append((f"http ndjson 512 B, {x['case']}: MB/s of log data (codec ratio on "
                         f"access-log lines)", f"{x['mb_s']:.0f} ({x['ratio']:.1f}x)",
                         f"tcp {http_tcp['mb_s']:.0f}", f"{x['mb_s'] / http_tcp['mb_s']:.2f}",
                         ""))
    return rows
