"""Throughput by message size (64 B, 512 B, 4 KiB) from luajit into a unix receiver
(bench/throughput.lua, bench/fast_sink.py) against a raw writer sending 64 KiB batches to
the same receiver (bench/raw_writer.py); also draws bench/throughput.png."""
import os
import subprocess

from bench.common import HERE, PY, FastSink, library_args, lua_script, luajit

NAME = "throughput"
KEYS = ("throughput",)


def run(ctx):
    rows = measure(ctx)
    plot(rows, os.path.join(HERE, "throughput.png"))
    return dict(throughput=rows)


def measure(ctx):
    tmp = ctx.tmp
    seconds = 1.5 if ctx.quick else 3.0
    rows = []
    for size in (64, 512, 4096):
        sink = FastSink(tmp, f"raw{size}.sock")
        raw = subprocess.run([PY, os.path.join(HERE, "raw_writer.py"), sink.path, str(size),
                              str(seconds)], capture_output=True, text=True, check=True).stdout
        raw_elapsed = float(raw.split()[3])
        raw_bytes = sink.stop()
        sink = FastSink(tmp, f"lp{size}.sock")
        out = luajit(lua_script("throughput.lua"), *library_args(), sink.url, str(size),
                     str(seconds))
        f = out.split()
        lp_bytes = sink.stop()
        lp_elapsed = float(f[4])
        rows.append(dict(size=size, raw_mb_s=raw_bytes / raw_elapsed / 1e6,
                         logpool_mb_s=lp_bytes / lp_elapsed / 1e6, accepted=int(f[2]),
                         delivered=lp_bytes, refused=int(f[3]), abandoned=int(f[5])))
    return rows


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


def rows(r):
    rows = []
    for x in r["throughput"]:
        rows.append((f"throughput {x['size']} B, MB/s", f"{x['logpool_mb_s']:.0f}",
                     f"raw {x['raw_mb_s']:.0f}", f"{x['logpool_mb_s'] / x['raw_mb_s']:.2f}",
                     ">= 0.70 at 512 B" if x["size"] == 512 else ""))
    return rows
