"""512 B messages through each stream and datagram transport (unix, tcp, tls, udp) into
bench/fast_sink.py, against logpool over unix in the same run."""
from bench.common import FastSink, library_args, lua_script, luajit, test_ca

NAME = "transports"
KEYS = ("transports",)


def run(ctx):
    return dict(transports=measure(ctx))


def measure(ctx):
    """512 B messages through each transport, against logpool over unix in the same run."""
    tmp = ctx.tmp
    ca = test_ca(tmp, "bench CA")
    cert, key = ca.issue("bench-server")
    seconds, size = (1.5 if ctx.quick else 3.0), 512
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
        out = luajit(lua_script("throughput.lua"), *library_args(), sink.url, str(size),
                     str(seconds), "120000", extra)
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


def rows(r):
    rows = []
    base = next(x for x in r["transports"] if x["transport"] == "unix")
    for x in r["transports"]:
        lost = 1 - x["delivered"] / x["accepted"] if x["accepted"] else 0
        rows.append((f"{x['transport']} 512 B, MB/s sent"
                     + (f" ({lost:.0%} not read by the Python sink)" if lost > 0 else ""),
                     f"{x['sent_mb_s']:.0f}", f"unix {base['sent_mb_s']:.0f}",
                     f"{x['sent_mb_s'] / base['sent_mb_s']:.2f}", ""))
    return rows
