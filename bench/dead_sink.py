"""Memory under a dead sink: a luajit process logging 512 B at full speed into a sink that
is down, its RSS sampled from /proc; bound by max_buffer_length (16 MiB)."""
import os
import re
import shutil
import subprocess
import time

from bench.common import library_args, lua_script

NAME = "dead_sink"
KEYS = ("dead_sink",)


def run(ctx):
    return dict(dead_sink=measure(ctx))


def measure(ctx):
    tmp = ctx.tmp
    seconds = 3 if ctx.quick else 10
    dead = "unix:" + os.path.join(tmp, "dead.sock")
    proc = subprocess.Popen(["env", "-i", shutil.which("luajit"),
                             lua_script("throughput.lua"), *library_args(), dead, "512",
                             str(seconds), "100"],
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


def rows(r):
    dead = r["dead_sink"]
    return [
        (f"RSS, dead sink, {dead['seconds']} s full load, MiB", f"{dead['max_kib'] / 1024:.1f}",
         f"before load {dead['start_kib'] / 1024:.1f}",
         f"+{(dead['max_kib'] - dead['start_kib']) / 1024:.1f} MiB",
         "bound: max_buffer_length 16 MiB"),
    ]
