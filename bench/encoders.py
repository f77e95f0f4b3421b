"""Each http_format's encoder (logpool/transports/formats) and forward's chunk codec on
varied 450-byte nginx JSON access-log lines, in requests of 1000 messages: writer CPU
(thread time) per line, mean and median over the requests, against ndjson (the messages as
they are) in the same run. The encoders run in the writer thread, inside the nginx
worker's process: this is their CPU cost per line and their ceiling per sink."""
import json
import random
import statistics
import time

NAME = "encoders"
KEYS = ("encoders",)
TARGET_US = 1.0  # writer CPU per line, every format
REQUEST = 1000  # messages per request


def access_log(n=4000):
    """Compact nginx access-log lines (log_format escape=json with $time_iso8601), about
    450 bytes each, varied like real ones."""
    rng = random.Random(7)
    paths = ["/", "/api/v1/items?page=%d", "/static/app.%d.js", "/login", "/api/v1/orders/%d"]
    agents = ["Mozilla/5.0 (X11; Linux x86_64; rv:133.0) Gecko/20100101 Firefox/133.0",
              "curl/8.5.0", "Go-http-client/1.1",
              "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 (KHTML, "
              "like Gecko) Version/17.1 Safari/605.1.15"]
    out = []
    for i in range(n):
        path = rng.choice(paths)
        path = path % rng.randrange(10**6) if "%d" in path else path
        out.append(json.dumps({
            "time": f"2026-11-23T09:{i // 600 % 60:02d}:{i // 10 % 60:02d}+00:00",
            "remote_addr": f"10.{rng.randrange(256)}.{rng.randrange(256)}.{rng.randrange(256)}",
            "remote_user": "", "request_method": "GET", "request_uri": path,
            "server_protocol": "HTTP/1.1", "host": "www.example.com",
            "status": rng.choice([200, 200, 200, 301, 404, 500]),
            "body_bytes_sent": rng.randrange(100000), "request_time": round(rng.random(), 3),
            "upstream_response_time": f"{rng.random():.3f}",
            "http_referer": "https://www.example.com/", "http_user_agent": rng.choice(agents),
            "request_id": "%032x" % rng.getrandbits(128)}, separators=(",", ":")).encode()
            + b"\n")
    return out


def codecs():
    """name -> encode(messages, now_ns): every http_format, and forward's chunk."""
    from logpool.transports import forward
    from logpool.transports.formats import FORMATS
    options = {o.name: o.default for cls in FORMATS.values() for o in cls.OPTIONS}
    out = {name: cls(options, "/").encode for name, cls in FORMATS.items()}
    out["forward"] = lambda messages, now_ns: forward.encode_chunk(
        "logpool", messages, "AAAAAAAAAAAAAAAAAAAAAA==", now_ns)
    return out


def run(ctx):
    # As the writer hands them over: buffers over the chain's memory, not bytes objects.
    lines = [memoryview(line) for line in access_log()]
    rounds = 3 if ctx.quick else 8
    encoders = codecs()
    per_line = {name: [] for name in encoders}  # us of thread CPU per line, one per request
    # Rounds of every codec in turn (what else the machine does weighs on each alike, so the
    # ratios to ndjson hold), each codec taking the four requests in a row (the first pays
    # for what the codec before it left in the caches: the median does not).
    for _ in range(rounds):
        for name, encode in encoders.items():
            for i in range(0, len(lines), REQUEST):
                batch = lines[i:i + REQUEST]
                now_ns = time.time_ns()
                start = time.thread_time_ns()
                encode(batch, now_ns)
                per_line[name].append((time.thread_time_ns() - start) / 1e3 / len(batch))
    size = sum(map(len, lines)) / len(lines)
    return dict(encoders=[dict(format=name, mean_us=statistics.fmean(us),
                               median_us=statistics.median(us), line_bytes=size,
                               requests=len(us)) for name, us in per_line.items()])


def rows(r):
    results = r.get("encoders", ())
    base = next((x for x in results if x["format"] == "ndjson"), None)
    out = []
    for x in results:
        if "mean_us" not in x or x is base:  # (the older MB/s figures; the baseline itself)
            continue
        what = ("forward: chunk codec" if x["format"] == "forward"
                else f"http_format {x['format']}: encoder")
        out.append((f"{what}, writer CPU per {x['line_bytes']:.0f}-byte access-log line, "
                    f"mean / median (1000 a request)",
                    f"{x['mean_us']:.2f} / {x['median_us']:.2f} us",
                    f"ndjson {base['mean_us']:.2f} / {base['median_us']:.2f} us" if base else "",
                    f"{x['mean_us'] / base['mean_us']:.1f}" if base else "",
                    f"<= {TARGET_US:.0f} us"))
    return out
