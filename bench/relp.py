"""RELP (every message acknowledged once written out) against plain TCP, both into
`logpool receive` writing a file, 512 B messages."""
import os

from bench.common import Receive, library_args, lua_script, luajit

NAME = "relp"
KEYS = ("relp",)


def run(ctx):
    return dict(relp=measure(ctx))


def measure(ctx):
    tmp = ctx.tmp
    seconds, size, rows = (1.5 if ctx.quick else 3.0), 512, []
    for proto in ("tcp", "relp"):
        out = os.path.join(tmp, f"relp-bench-{proto}.log")
        rx = Receive(f"{proto}://127.0.0.1:0", out)
        f = luajit(lua_script("throughput.lua"), *library_args(),
                   rx.url, str(size), str(seconds), "120000").split()
        rx.stop()
        elapsed, accepted = float(f[4]), int(f[2])
        delivered = os.path.getsize(out)
        rows.append(dict(transport=proto, size=size, accepted=accepted, delivered=delivered,
                         seconds=elapsed, mb_s=accepted / elapsed / 1e6,
                         messages_s=accepted / size / elapsed))
        os.unlink(out)
    return rows


def rows(r):
    rows = []
    tcp, relp = (next(x for x in r.get("relp", ()) if x["transport"] == t)
                 for t in ("tcp", "relp")) if r.get("relp") else (None, None)
    if relp:
        rows.append(("relp to logpool receive 512 B, MB/s (messages/s)",
                     f"{relp['mb_s']:.0f} ({relp['messages_s']:.0f})",
                     f"tcp {tcp['mb_s']:.0f} ({tcp['messages_s']:.0f})",
                     f"{relp['mb_s'] / tcp['mb_s']:.2f}", ">= 0.5 of tcp"))
    return rows
