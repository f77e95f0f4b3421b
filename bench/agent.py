"""Agent mode (bench/agent.lua): log_cdata into a ring against the floor (bursts with a flush
between them, and a steady stream the agent must keep up with); the agent's throughput with 8
producer processes to a unix sink and its CPU per message against 8 in-process pools;
connections at the collector; a producer's private memory in agent mode and in-process."""
import json
import os
import re
import shutil
import subprocess
import tempfile
import time
import urllib.request

from bench.common import PY, ROOT, FastSink, lua_script, luajit
from logpool import paths

NAME = "agent"
KEYS = ("agent",)
PRODUCERS = 8


class Agent:
    """`python -m logpool agent` with /metrics on an ephemeral port."""

    def __init__(self, tmp, sink_url):
        # On a tmpfs, as docs/agent.md asks: elsewhere the kernel writes rings back to disk.
        self.dir = tempfile.mkdtemp(prefix="logpool-bench-agent-", dir="/dev/shm")
        config = os.path.join(tmp, "agent.json")
        with open(config, "w") as f:
            json.dump({"agent_dir": self.dir, "metrics_listen": "127.0.0.1:0",
                       "sinks": [{"url": sink_url, "name": "main"}]}, f)
        self.proc = subprocess.Popen([PY, "-m", "logpool", "agent", "--config", config],
                                     stderr=subprocess.PIPE, text=True, cwd=ROOT)
        text = ""
        while "draining rings" not in text:
            line = self.proc.stderr.readline()
            assert line, text
            text += line
        self.port = int(re.search(r":(\d+)/metrics", text).group(1))

    def cpu_ns(self):
        """CPU time of every thread of the agent, in ns (schedstat: not in clock ticks)."""
        total = 0
        task_dir = f"/proc/{self.proc.pid}/task"
        for tid in os.listdir(task_dir):
            try:
                with open(f"{task_dir}/{tid}/schedstat") as f:
                    total += int(f.read().split()[0])
            except OSError:
                pass  # a thread that just left
        return total

    def metric(self, name):
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/metrics", timeout=10) as r:
            text = r.read().decode()
        return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                   if line.startswith(name + "{") or line.startswith(name + " "))

    def stop(self):
        self.proc.terminate()
        self.proc.wait(timeout=60)
        self.proc.stderr.close()
        shutil.rmtree(self.dir, ignore_errors=True)


def producers(lib, config, calls):
    """PRODUCERS luajit processes logging `calls` messages each, then flushing; (wall s,
    [(retries, cpu_ns, connects)])."""
    args = ["env", "-i", "luajit", lua_script("agent.lua"), "produce", lib,
            paths.header_path(), config, str(calls)]
    t0 = time.monotonic()
    procs = [subprocess.Popen(args, stdout=subprocess.PIPE, text=True)
             for _ in range(PRODUCERS)]
    outs = [p.communicate(timeout=600)[0] for p in procs]
    wall = time.monotonic() - t0
    assert all(p.returncode == 0 for p in procs), outs
    return wall, [tuple(float(x) for x in out.split()[1:5]) for out in outs]


def memory(lib, config, calls):
    out = luajit(lua_script("agent.lua"), "memory", lib, paths.header_path(), config,
                 str(calls)).split()
    return dict(private_kb=int(out[1]), shared_kb=int(out[2]), libpython=int(out[3]))


def run(ctx):
    libbench, _ = ctx.helpers()
    calls = 200_000 if ctx.quick else 1_000_000
    per_producer = 250_000 if ctx.quick else 1_000_000
    sink = FastSink(ctx.tmp, "agent-sink.sock")
    agent = Agent(ctx.tmp, sink.url)
    r = {}
    try:
        out = luajit(lua_script("agent.lua"), "hot", paths.producer_lib_path(),
                     paths.header_path(), libbench, agent.dir, str(calls))
        for line in out.splitlines():
            f = line.split()
            if f[0] == "burst":
                r.setdefault("burst", {})[f[1]] = dict(
                    mean=float(f[2]), median=float(f[3]), p99=float(f[4]), p999=float(f[5]),
                    refused=int(f[6]))
            elif f[0] == "steady":
                r.setdefault("steady", {})[f[1]] = dict(mean=float(f[2]), refused=int(f[3]))
        agent_json = json.dumps({"agent": agent.dir, "ring_bytes": 16 << 20})
        cpu0 = agent.cpu_ns()
        wall, outs = producers(paths.producer_lib_path(), agent_json, per_producer)
        total = PRODUCERS * per_producer
        r["agent_mode"] = dict(
            messages=total, wall_s=wall, msgs_per_s=total / wall,
            agent_cpu_ns_per_msg=(agent.cpu_ns() - cpu0) / total,
            producer_cpu_ns_per_msg=sum(o[1] for o in outs) / total,
            retries=sum(o[0] for o in outs),
            connections=agent.metric("logpool_connects_total"))
        r["memory_agent"] = memory(paths.producer_lib_path(), agent_json, 100_000)
    finally:
        agent.stop()
    inproc_json = json.dumps({"sinks": [{"url": sink.url}]})
    wall, outs = producers(paths.lib_path(), inproc_json, per_producer)
    r["in_process"] = dict(messages=total, wall_s=wall, msgs_per_s=total / wall,
                           cpu_ns_per_msg=sum(o[1] for o in outs) / total,
                           writer_cpu_ns_per_msg=sum(o[1] - o[3] for o in outs) / total,
                           retries=sum(o[0] for o in outs),
                           connections=sum(o[2] for o in outs))
    r["memory_in_process"] = memory(paths.lib_path(), inproc_json, 100_000)
    received = sink.stop()
    r["received_bytes"] = received
    return dict(agent=r)


def rows(res):
    r = res["agent"]
    b, s = r["burst"], r["steady"]
    a, i = r["agent_mode"], r["in_process"]
    ma, mi = r["memory_agent"], r["memory_in_process"]
    return [
        ("log_cdata into a ring, bursts + flush: mean / median / p99, ns",
         f"{b['ring']['mean']:.1f} / {b['ring']['median']:.0f} / {b['ring']['p99']:.0f}",
         f"floor {b['floor']['mean']:.1f} / {b['floor']['median']:.0f} / "
         f"{b['floor']['p99']:.0f}", f"{b['ring']['mean'] / b['floor']['mean']:.2f}x",
         "<= 2x floor"),
        ("log_cdata into a ring, steady stream: mean ns (refused)",
         f"{s['ring']['mean']:.1f} ({s['ring']['refused']})",
         f"floor {s['floor']['mean']:.1f}", f"{s['ring']['mean'] / s['floor']['mean']:.2f}x",
         "<= 2x floor"),
        (f"{PRODUCERS} producers -> agent -> unix sink, msgs/s of 200 B",
         f"{a['msgs_per_s'] / 1e6:.2f} M", f"in-process {i['msgs_per_s'] / 1e6:.2f} M",
         f"{a['msgs_per_s'] / i['msgs_per_s']:.2f}x", ">= 1 M/s"),
        ("CPU per message: the agent vs the in-process writer threads, ns",
         f"{a['agent_cpu_ns_per_msg']:.0f}",
         f"in-process writers {i['writer_cpu_ns_per_msg']:.0f}",
         f"{a['agent_cpu_ns_per_msg'] / i['writer_cpu_ns_per_msg']:.2f}x",
         "<= 1x"),
        ("CPU per message, whole host: agent + producers vs in-process producers, ns",
         f"{a['agent_cpu_ns_per_msg'] + a['producer_cpu_ns_per_msg']:.0f}",
         f"in-process {i['cpu_ns_per_msg']:.0f}",
         f"{(a['agent_cpu_ns_per_msg'] + a['producer_cpu_ns_per_msg']) / i['cpu_ns_per_msg']:.2f}x",
         ""),
        (f"connections at the collector, {PRODUCERS} producers, 1 sink",
         f"{a['connections']:.0f}", f"in-process {i['connections']:.0f}", "", "1 per sink"),
        ("producer memory added by a pool: anonymous KiB (the ring: its shared-memory Pss)",
         f"{ma['private_kb']} (shared {ma['shared_kb']})",
         f"in-process {mi['private_kb']}", f"{ma['private_kb'] / max(1, mi['private_kb']):.2f}x",
         "<= 1024 KiB"),
        ("libpython mapped in the producer", "no" if not ma["libpython"] else "YES",
         "in-process " + ("yes" if mi["libpython"] else "no"), "", "no"),
    ]
