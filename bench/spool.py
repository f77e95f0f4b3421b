"""Spill and replay against the raw write rate of the same disk: 512 B messages logged
from luajit into a dead sink with a spool (accepted MB/s; spilling keeps up when nothing
is refused), then a new pool replaying the spool into a fast sink."""
import os
import time

from bench.common import FastSink, library_args, lua_script, luajit

NAME = "spool"
KEYS = ("spool",)


def run(ctx):
    return dict(spool=measure(ctx))


def measure(ctx):
    tmp = ctx.tmp
    import logpool
    size_mb = 64 if ctx.quick else 256
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
    seconds = 1.5 if ctx.quick else 3.0
    f = luajit(lua_script("throughput.lua"), *library_args(),
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


def rows(r):
    rows = []
    if r.get("spool"):
        sp = r["spool"]
        rows.append((f"spool: spill into a dead sink, MB/s accepted ({sp['refused']} refused)",
                     f"{sp['spill_mb_s']:.0f}", f"raw disk {sp['raw_disk_mb_s']:.0f}",
                     f"{sp['spill_mb_s'] / sp['raw_disk_mb_s']:.2f}", ""))
        rows.append((f"spool: replay of {sp['spooled_mb']:.0f} MB into a fast sink, MB/s",
                     f"{sp['replay_mb_s']:.0f}", f"raw disk {sp['raw_disk_mb_s']:.0f}",
                     f"{sp['replay_mb_s'] / sp['raw_disk_mb_s']:.2f}", ""))
    return rows
