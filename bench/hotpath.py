"""The hot path from the luajit binary (bench/hotpath.lua): log_cdata of 200 B against the
floor (a memcpy under a mutex, bench/csrc/benchlib.c) and the naive design (a Python
def_extern per message), per call and as means over bursts; bursts with a flush between
them; a sink spilling to the spool; and the cost as sinks and producer threads grow."""
import os

from bench.common import FastSink, library_args, lua_script, luajit

NAME = "hotpath"
KEYS = ("hotpath", "scaling")


def run(ctx):
    libbench, libnaive = ctx.helpers()
    sink = FastSink(ctx.tmp, "hot.sock")
    calls = 200_000 if ctx.quick else 1_000_000
    out = luajit(lua_script("hotpath.lua"), *library_args(), libbench, libnaive, sink.url,
                 str(calls), os.path.join(ctx.tmp, "hot-spool"))
    sink.stop()
    return parse(out, calls)


def parse(out, calls):
    hot, scaling = {}, []
    for line in out.splitlines():
        f = line.split()
        if f[0] == "hotpath":
            hot[f[1]] = dict(median=float(f[2]), p99=float(f[3]), p999=float(f[4]),
                             max=float(f[5]), accepted=int(f[6]), mean_wall=float(f[7]))
        elif f[0] == "mean":
            hot.setdefault("mean", {})[f[1]] = dict(mean=float(f[2]), cpu=float(f[3]))
        elif f[0] == "burst":
            hot.setdefault("burst", {})[f[1]] = dict(mean=float(f[2]), median=float(f[3]),
                                                     p99=float(f[4]), p999=float(f[5]),
                                                     bursts=int(f[6]))
        elif f[0] == "scaling":
            calls_total = int(f[2]) * (calls // 2)
            scaling.append(dict(sinks=int(f[1]), threads=int(f[2]), median=float(f[3]),
                                p99=float(f[4]), p999=float(f[5]), accepted=int(f[6]),
                                produce_s=int(f[7]) / 1e9, deliver_s=int(f[8]) / 1e9,
                                calls=calls_total,
                                delivered_mb_s=int(f[6]) * 200 / (int(f[8]) / 1e9) / 1e6))
    return dict(hotpath=hot, scaling=scaling)


def rows(r):
    hot = r["hotpath"]
    timer = hot["timer"]["median"]
    lp, fl, nv = hot["logpool"], hot["floor"], hot["naive"]
    return [
        ("hot path median, ns (timer %.0f ns incl.)" % timer, f"{lp['median']:.0f}",
         f"floor {fl['median']:.0f}", f"{lp['median'] / fl['median']:.2f}x",
         "<= 2x floor, < 60 ns"),
        ("hot path p99 / p99.9, ns (writer busy)", f"{lp['p99']:.0f} / {lp['p999']:.0f}",
         f"floor {fl['p99']:.0f} / {fl['p999']:.0f}", "", "p99.9 < 5000 ns"),
        *mean_rows(hot),
        *burst_rows(hot),
        *spilling_rows(hot),
        ("naive def_extern median / p99.9, ns", f"{nv['median']:.0f} / {nv['p999']:.0f}",
         f"logpool {lp['median']:.0f} / {lp['p999']:.0f}",
         f"{nv['median'] / lp['median']:.1f}x slower", ""),
        *scaling_rows(r.get("scaling", ())),
    ]


def mean_rows(hot):
    """Mean ns per call over bursts (no timer per call) and CPU per message, live and dead."""
    mean = hot.get("mean")
    if not mean:
        return []
    floor = mean["floor"]["mean"]
    return [
        ("mean ns/call, live writer + receiver, back-to-back bursts of 50,000 (writer keeping up)",
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


def burst_rows(hot):
    """Bursts of 50,000 calls with a flush between them (the writer drains, the chunks come
    back): the mean clocked per burst, median and p99 timed per call, against the floor run
    the same way."""
    burst = hot.get("burst")
    if not burst:
        return []
    lp, fl = burst["logpool"], burst["floor"]
    return [
        ("mean ns/call, bursts of 50,000 with a flush between them (live writer + receiver)",
         f"{lp['mean']:.1f}", f"floor {fl['mean']:.1f}", f"{lp['mean'] / fl['mean']:.2f}x",
         "<= 2x floor"),
        ("median / p99 / p99.9 ns/call in those bursts (timer incl., floor's too)",
         f"{lp['median']:.0f} / {lp['p99']:.0f} / {lp['p999']:.0f}",
         f"floor {fl['median']:.0f} / {fl['p99']:.0f} / {fl['p999']:.0f}",
         f"{lp['median'] / fl['median']:.2f}x / {lp['p99'] / fl['p99']:.2f}x", "<= 2x floor"),
    ]


def scaling_rows(scaling):
    return [(f"{s['sinks']:>2} sinks, {s['threads']} producer threads: median ns, MB/s",
             f"{s['median']:.0f}", f"p99 {s['p99']:.0f}", f"{s['delivered_mb_s']:.0f} MB/s", "")
            for s in scaling]
