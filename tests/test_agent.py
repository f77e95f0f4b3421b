"""Agent mode with real processes: `python -m logpool agent`, producers in Python processes,
a `luajit` process and real nginx workers (the native module and the Lua path), a real
collector (`python -m logpool receive`). SIGKILL of producers and of the agent, an agent down
longer than a ring holds, hostile rings, a worker user that cannot write agent_dir."""
import collections
import json
import os
import re
import signal
import struct
import subprocess
import sys
import textwrap
import threading
import time
import urllib.request

import pytest

import test_conformance
from conftest import ROOT, Load, luajit_binary, message, sock_path, wait_for
from logpool import Pool, errors, paths
from logpool.tools.nginx import Nginx, native_modules
from test_nginx import assert_exactly_once, reload_under_load
from test_nginx_module import mapped_files, module_conf
from test_conformance import tls_server  # noqa: F401 (a fixture)
from test_relp import rsyslogs  # noqa: F401 (a fixture)

PYTHON = sys.executable
FAST = {"periodic_flush_ms": 20, "retry_interval_ms": 20, "max_retry_interval_ms": 200}


class AgentProcess:
    """`python -m logpool agent` as a separate process, its /metrics on an ephemeral port."""

    def __init__(self, tmp_path, agent_dir, sinks, log_file=None, **extra):
        config = {"agent_dir": str(agent_dir), "metrics_listen": "127.0.0.1:0",
                  "sinks": sinks, **FAST, **extra}
        self.config_path = tmp_path / f"agent-{len(os.listdir(tmp_path))}.json"
        self.config_path.write_text(json.dumps(config))
        self.agent_dir = str(agent_dir)
        args = ["--log-file", log_file] if log_file else []
        self.proc = subprocess.Popen([PYTHON, "-m", "logpool", "agent", "--config",
                                      str(self.config_path), *args], stderr=subprocess.PIPE,
                                     text=True, cwd=ROOT)
        lines = []
        if log_file:
            def started():
                assert self.proc.poll() is None, f"agent exited: {self.proc.stderr.read()}"
                text = open(log_file).read() if os.path.exists(log_file) else ""
                return "draining rings" in text and text
            lines = [wait_for(started, timeout=60, what="the agent started")]
        while not lines or "draining rings" not in lines[-1]:
            line = self.proc.stderr.readline()
            assert line, f"agent did not start: {''.join(lines)}{self.proc.stderr.read()}"
            lines.append(line)
        self.port = int(re.search(r":(\d+)/metrics", "".join(lines)).group(1))

    def metrics(self):
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/metrics", timeout=10) as r:
            return r.read().decode()

    def metric(self, name):
        """The sum of every sample of a metric."""
        return sum(float(line.rsplit(" ", 1)[1]) for line in self.metrics().splitlines()
                   if re.match(rf"{name}(\{{| )", line))

    def stop(self, sig=signal.SIGTERM):
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        self.proc.wait(timeout=30)
        self.log = self.proc.stderr.read()
        self.proc.stderr.close()
        return self.proc.returncode


@pytest.fixture
def agent(tmp_path):
    started = []

    def start(sinks, agent_dir=None, **extra):
        a = AgentProcess(tmp_path, agent_dir or tmp_path / "agent", sinks, **extra)
        started.append(a)
        return a

    yield start
    for a in started:
        if a.proc.poll() is None:
            a.stop(signal.SIGKILL)


def sink(url, name="main"):
    return {"url": url, "name": name, "framing": "newline"}


def rings(agent_dir):
    return [n for n in os.listdir(agent_dir) if n.startswith("ring.")]


PRODUCER = textwrap.dedent("""
    import sys, time
    from logpool import Pool, errors
    agent_dir, tag, count = sys.argv[1], sys.argv[2], int(sys.argv[3])
    sinks = sys.argv[4].split(",")
    ring_bytes = int(sys.argv[5])
    prefix = sys.argv[6]
    pool = Pool({"agent": agent_dir, "ring_bytes": ring_bytes})
    i = full = 0
    while count < 0 or i < count:
        line = f"{prefix}{tag} {i}"
        try:
            for s in sinks:
                pool.log(s, line)
        except errors.BufferFull:
            full += 1
            time.sleep(0.0005)  # the agent is behind: a load generator retries
            continue
        i += 1
        if i % 500 == 0:
            print(i, flush=True)
    print("done", i, full, flush=True)
    pool.close()
""")


def producer(agent_dir, tag, count, sinks=("main",), ring_bytes=1 << 20, prefix=""):
    args = [PYTHON, "-c", PRODUCER, str(agent_dir), tag, str(count), ",".join(sinks),
            str(ring_bytes), prefix]
    return subprocess.Popen(args, stdout=subprocess.PIPE, text=True, cwd=ROOT)


LUA_PRODUCER = """
package.path = "{lua}/?.lua;" .. package.path
local logpool = require "resty.logpool"
local pool = assert(logpool.new{{ agent = "{agent_dir}" }})
local i = 0
while i < {count} do
    if pool:log("main", "lua " .. i) then i = i + 1 end
end
local maps = io.open("/proc/self/maps"):read("*a")
print(maps:find("libpython") and "libpython mapped" or "no libpython")
pool:close()
"""


def ids_by_tag(lines):
    out = collections.defaultdict(list)
    for line in lines:
        tag, seq = line.decode().split()[-2:]  # (after a syslog header, if any)
        out[tag].append(int(seq))
    return out


def test_python_and_luajit_producers_deliver_exactly_once_in_order_and_rings_go(
        tmp_path, agent, receive_process):
    rp = receive_process()
    ag = agent([sink(rp.url)])
    n = 20000
    procs = [producer(ag.agent_dir, f"py{k}", n) for k in range(3)]
    lua = subprocess.Popen([luajit_binary(), "-e", LUA_PRODUCER.format(
        lua=paths.lua_dir(), agent_dir=ag.agent_dir, count=n)],
        stdout=subprocess.PIPE, text=True, env={"PATH": os.environ["PATH"]})
    for p in procs:
        assert p.communicate(timeout=120)[0].splitlines()[-1].startswith(f"done {n}")
    assert lua.communicate(timeout=120)[0].strip() == "no libpython"
    wait_for(lambda: len(rp.lines()) >= 4 * n, timeout=60, what="every line")
    got = ids_by_tag(rp.lines())
    assert sorted(got) == ["lua", "py0", "py1", "py2"]
    for tag, seqs in got.items():
        assert seqs == list(range(n)), f"{tag}: lost, duplicated or reordered"
    # Closed producers' rings are drained, then removed.
    wait_for(lambda: not rings(ag.agent_dir), timeout=30, what="rings removed")
    assert ag.metric("logpool_agent_rings_removed_total") == 4
    assert ag.metric("logpool_agent_possible_duplicates_total") == 0
    assert ag.stop() == 0


def test_a_producer_sigkilled_mid_write_loses_nothing_it_published(tmp_path, agent,
                                                                   receive_process):
    rp = receive_process()
    ag = agent([sink(rp.url)])
    p = producer(ag.agent_dir, "k", -1)
    reported = 0
    while reported < 5000:
        reported = int(p.stdout.readline())
    p.send_signal(signal.SIGKILL)
    p.wait(timeout=10)
    # The agent drains a dead producer's ring, then removes it.
    wait_for(lambda: not rings(ag.agent_dir), timeout=30, what="the dead producer's ring gone")
    seqs = ids_by_tag(rp.lines())["k"]
    assert len(seqs) >= reported
    assert seqs == list(range(len(seqs))), "a gap or a duplicate"
    assert ag.stop() == 0


def test_the_agent_sigkilled_under_load_restarts_with_nothing_lost(tmp_path, agent,
                                                                   receive_process, rsyslogs):
    stream = receive_process("unix:" + sock_path(tmp_path, "s.sock"), str(tmp_path / "s.log"))
    relp = rsyslogs().start()  # rsyslog's imrelp: acknowledged once its omfile has it
    relp.lines = relp.messages
    sinks = [sink(stream.url, "stream"), sink(relp.url, "relp")]
    ag = agent(sinks)
    n = 30000
    procs = [producer(ag.agent_dir, f"p{k}", n, sinks=("stream", "relp"),
                      prefix="<13>1 - host app - - - ") for k in range(2)]
    wait_for(lambda: len(stream.lines()) > 8000, timeout=60, what="load under way")
    ag.stop(signal.SIGKILL)
    ag2 = agent(sinks)  # the rings outlived the agent: resume from their read positions
    for p in procs:
        assert p.communicate(timeout=180)[0].splitlines()[-1].startswith(f"done {n}")
    for rp in (stream, relp):
        wait_for(lambda: {(t, s) for t, seqs in ids_by_tag(rp.lines()).items()
                          for s in seqs} >= {(f"p{k}", i) for k in range(2) for i in range(n)},
                 timeout=120, what=f"every line at {rp.url}")
    wait_for(lambda: not rings(ag.agent_dir), timeout=30, what="rings removed")
    duplicates = 0
    for rp in (stream, relp):
        got = ids_by_tag(rp.lines())
        for k in range(2):
            assert set(got[f"p{k}"]) == set(range(n))
            duplicates += len(got[f"p{k}"]) - n
    # Only what the killed agent had taken and not released comes twice, and it is counted.
    assert duplicates <= ag2.metric("logpool_agent_possible_duplicates_total")
    assert ag2.stop() == 0


def test_an_agent_down_longer_than_the_ring_holds_gives_efull_and_never_blocks(
        tmp_path, agent, receive_process):
    rp = receive_process()
    ag = agent([sink(rp.url)])
    assert ag.stop() == 0  # the sink table stays; nobody drains
    pool = Pool({"agent": ag.agent_dir, "ring_bytes": 65536})
    accepted = full = 0
    for i in range(5000):
        try:
            pool.log("main", f"d {i}")
            accepted += 1
        except errors.BufferFull:
            full += 1
    assert accepted > 0 and full > 0 and accepted + full == 5000
    assert pool.stats("main")["dropped_full"] == full
    with pytest.raises(errors.Timeout):
        pool.flush(timeout=0.05)  # nothing is delivered while the agent is down
    with Pool({"agent": ag.agent_dir}) as other:  # closing never waits for the agent
        other.log("main", "c 0")
    ag2 = agent([sink(rp.url)])
    pool.flush(timeout=30)  # released: delivered
    assert ids_by_tag(rp.lines())["d"] == list(range(accepted))
    wait_for(lambda: ids_by_tag(rp.lines())["c"] == [0], timeout=30,
             what="the closed pool's line")
    # Drained, but its producer is alive and the pool open: the ring stays until closed.
    wait_for(lambda: ag2.metric("logpool_agent_rings") == 1, timeout=30, what="the ring seen")
    assert len(rings(ag2.agent_dir)) == 1
    pool.close()
    wait_for(lambda: not rings(ag2.agent_dir), timeout=30, what="the closed ring removed")
    assert ag2.stop() == 0


RING_HEADER = struct.Struct("<QIIQQQQQQ")
RING_MAGIC = 0x31474E4952504C4C


def own_start_time():
    data = open("/proc/self/stat", "rb").read()
    return int(data[data.rindex(b")") + 2:].split()[19])


def hostile_ring(agent_dir, name, write_pos, records=b"", size=65536, magic=RING_MAGIC,
                 start_time=None):
    """A ring file as a hostile producer (this live process) would leave it."""
    header = bytearray(4096)
    RING_HEADER.pack_into(header, 0, magic, 1, 4096, size, os.getpid(),
                          own_start_time() if start_time is None else start_time, 0, 1, 0)
    struct.pack_into("<Q", header, 64, write_pos)
    data = bytearray(size)
    data[:len(records)] = records
    path = os.path.join(agent_dir, name)
    with open(path, "wb") as f:
        f.write(header + data)
    return path


def test_hostile_rings_are_reset_refused_or_dropped_and_the_others_go_on(tmp_path, agent,
                                                                         receive_process):
    rp = receive_process()
    ag = agent([sink(rp.url)])
    d = ag.agent_dir
    hostile_ring(d, "ring.1.1.1", write_pos=1 << 40)                       # beyond the ring
    hostile_ring(d, "ring.1.1.2", write_pos=64,                            # a huge length
                 records=struct.pack("<II", 0xFFFFFF00, 0) + b"x" * 56)
    hostile_ring(d, "ring.1.1.3", write_pos=16,                            # no such sink
                 records=struct.pack("<II", 4, 77) + b"evil")
    hostile_ring(d, "ring.1.1.4", write_pos=0, magic=0xBAD)                # not a ring
    truncated = hostile_ring(d, "ring.1.1.5", write_pos=16,
                             records=struct.pack("<II", 4, 0) + b"ok 0")
    # This pid with another start time: a process that is gone, its pid reused by this one.
    reused = hostile_ring(d, "ring.1.1.6", write_pos=16, start_time=own_start_time() + 1,
                          records=struct.pack("<II", 4, 0) + b"ok 1")
    wait_for(lambda: ag.metric("logpool_agent_rings_refused_total") == 1
             and ag.metric("logpool_agent_ring_resets_total") >= 3, timeout=30,
             what="garbage reset and refused")
    wait_for(lambda: not os.path.exists(reused), timeout=30,
             what="the ring of a gone producer (pid reused) drained and removed")
    assert os.path.exists(os.path.join(d, "ring.1.1.1"))  # this live producer's: kept
    wait_for(lambda: 0 in ids_by_tag(rp.lines()).get("ok", ()), timeout=30,
             what="the good record of the ring about to be truncated")
    os.truncate(truncated, 4096)  # under the agent's mapping: SIGBUS territory
    pool = Pool({"agent": d})
    for i in range(1000):
        pool.log("main", f"good {i}")
    pool.flush(timeout=30)
    got = ids_by_tag(rp.lines())
    assert got["good"] == list(range(1000))
    assert sorted(got["ok"]) == [0, 1]  # the truncated ring's record, taken before it was
    # truncated, and the gone producer's, delivered before its ring went
    wait_for(lambda: not os.path.exists(truncated), timeout=30, what="the truncated ring dropped")
    pool.close()
    assert ag.proc.poll() is None
    assert ag.stop() == 0


# -- nginx: the native module and the Lua path, 4 workers, no libpython in a worker --

def agent_pool_json(agent_dir):
    return json.dumps({"agent": str(agent_dir), "ring_bytes": 1 << 20})


def lua_agent_conf(agent_dir):
    return (f"""
    init_worker_by_lua_block {{
        require("resty.logpool").start({{ agent = "{agent_dir}" }})
    }}
    exit_worker_by_lua_block {{ require("resty.logpool").stop(0) }}
    """, """
        log_by_lua_block {
            require("resty.logpool").log("main", ngx.var.request_id)
        }
    """)


def assert_no_libpython_in_workers(ng):
    producer_lib = os.path.realpath(paths.producer_lib_path())
    for pid in ng.worker_pids():
        maps = mapped_files(pid)
        assert producer_lib in maps
        assert not any("libpython" in m for m in maps), "a worker mapped libpython"


@pytest.mark.parametrize("host", ["module", "lua"])
def test_nginx_four_workers_every_request_once_across_a_reload_and_a_quit(
        tmp_path, agent, receive_process, host):
    rp = receive_process()
    ag = agent([sink(rp.url)])
    if host == "module":
        ng = Nginx(tmp_path / "nginx", module_conf(agent_pool_json(ag.agent_dir)), workers=4,
                   modules=native_modules())
    else:
        ng = Nginx(tmp_path / "nginx", *lua_agent_conf(ag.agent_dir), workers=4)
    try:
        ng.start()
        assert_no_libpython_in_workers(ng)
        ids = reload_under_load(ng, before=1500, after=1500)
        wait_for(lambda: not rings(ag.agent_dir), timeout=60, what="the workers' rings removed")
    finally:
        ng.kill()
    assert_exactly_once(ids, [line.decode() for line in rp.lines()])
    assert ag.stop() == 0


def test_a_worker_user_that_cannot_write_agent_dir_serves_without_shipping(
        tmp_path, agent, receive_process):
    rp = receive_process()
    ag = agent([sink(rp.url)])  # agent_dir: 02770, owned by the agent's user
    os.chmod(tmp_path, 0o755)
    ng = Nginx(tmp_path / "nginx", module_conf(agent_pool_json(ag.agent_dir)), workers=2,
               modules=native_modules(), user="nobody nogroup")
    try:
        ng.start()
        assert ng.requests(50) == [200] * 50
        log = ng.read_error_log()
    finally:
        ng.kill()
    errors_seen = [line for line in log.splitlines() if "agent_dir" in line]
    assert len(errors_seen) == 2, log  # one line per worker
    assert "Permission denied" in errors_seen[0] and "serves without shipping" in errors_seen[0]
    assert not rings(ag.agent_dir)
    assert ag.stop() == 0


def test_the_agents_spool_carries_an_outage_across_an_agent_restart(tmp_path, agent,
                                                                   receive_process):
    path = sock_path(tmp_path, "late.sock")  # nobody listens yet: the collector is down
    sinks = [sink("unix:" + path)]
    spool = {"spool_dir": str(tmp_path / "spool"), "max_buffer_length": 65536}
    ag = agent(sinks, **spool)
    pool = Pool({"agent": ag.agent_dir})
    n = 3000
    for i in range(n):
        pool.log("main", f"o {i:020d}")
    # Spooled is settled: the ring is released up to the newest lines (those may wait in the
    # agent's memory below its spill mark while the collector is down).
    wait_for(lambda: ag.metric("logpool_agent_ring_taken_messages_total") == n
             and ag.metric("logpool_agent_ring_fill_bytes") < n * 32 // 2, timeout=60,
             what="the spooled part of the ring released")
    assert ag.metric("logpool_spooled_messages") > 0
    assert ag.stop() == 0  # its close spools the rest, then releases it
    pool.flush(timeout=0)  # the whole ring is released: everything is in the spool
    rp = receive_process("unix:" + path)
    ag2 = agent(sinks, **spool)  # adopts the spool; the ring has nothing left to give
    wait_for(lambda: len(rp.lines()) >= n, timeout=60, what="the spool delivered")
    assert sorted(ids_by_tag(rp.lines())["o"]) == list(range(n))
    pool.close()
    assert ag2.stop() == 0


# -- the conformance matrix in agent mode: the producer logs into its ring, an agent (in a
#    thread of this process) ships through the hostile collector and then the correct one --

class AgentThread:
    def __init__(self, config):
        from logpool.agent.service import Agent
        self.agent = Agent(config)
        self.agent.start()
        self.thread = threading.Thread(target=self.agent.run, name="test-agent")
        self.thread.start()

    def stop(self):
        self.agent.stopping = True
        self.thread.join(timeout=30)
        assert not self.thread.is_alive()


@pytest.mark.parametrize("scheme,step", [(s, st) for s, st in test_conformance.cells()
                                         if not test_conformance.TRANSPORTS[s][1]])
def test_conformance_in_agent_mode(tmp_path, scheme, step, tls_server, test_ca, capfd):
    """Every plain transport's cells (the TLS variants run the same engine path) with a ring
    and the agent in front: the same contract, and the producer's flush returns only once
    the agent has released everything (delivered)."""
    hostile, good, hostile_delivers = test_conformance.start_peers(scheme, step, tls_server)
    ag = AgentThread({"agent_dir": str(tmp_path / "agent"), "sinks": [
        {"url": [test_conformance.sink_url(hostile, scheme),
                 test_conformance.sink_url(good, scheme)], "name": "cell"}],
        **test_conformance.sink_options(scheme, test_ca)})
    pool = None
    try:
        pool = Pool({"agent": str(tmp_path / "agent")})
        for seq in range(test_conformance.N):
            assert pool.log(0, message(0, seq)) > 0
            if seq == test_conformance.N // 2:
                pool.flush(timeout=30)
                if getattr(hostile.script, "ends_before_second_batch", False):
                    wait_for(lambda: hostile.finished >= 1, what="the hang-up")
        pool.flush(timeout=30)  # released by the agent: every message settled
        st = ag.agent.pool.stats(0)
    finally:
        if pool is not None:
            pool.close()
        ag.stop()
        hostile.close()
        good.close()
    test_conformance.check_cell(scheme, step, st, hostile, good, hostile_delivers, capfd)


def test_a_pool_made_before_fork_writes_one_ring_per_process(tmp_path, agent, receive_process):
    """Embedding trap 4 in agent mode: nginx's master may make the pool and fork workers."""
    rp = receive_process()
    ag = agent([sink(rp.url)])
    pool = Pool({"agent": ag.agent_dir})
    pid = os.fork()
    if pid == 0:  # the child: its own ring on its first log
        try:
            for i in range(500):
                pool.log("main", f"child {i}")
            code = 0 if pool.flush(timeout=30) is None else 1
        except BaseException:
            code = 1
        os._exit(code)
    for i in range(500):
        pool.log("main", f"parent {i}")
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    pool.flush(timeout=30)
    got = ids_by_tag(rp.lines())
    assert got["child"] == list(range(500)) and got["parent"] == list(range(500))
    # Two rings: the child's, removed once it exited and was drained, and the parent's.
    wait_for(lambda: ag.metric("logpool_agent_rings_removed_total") == 1
             and len(rings(ag.agent_dir)) == 1, timeout=30, what="the child's ring removed")
    pool.close()
    assert ag.stop() == 0


def test_agent_mode_config_errors_are_clear_and_start_nothing(tmp_path, agent,
                                                              receive_process):
    missing = tmp_path / "no-agent-here"
    missing.mkdir()
    with pytest.raises(errors.ConfigError, match="cannot read .*sinks.*agent"):
        Pool({"agent": str(missing)})
    rp = receive_process()
    ag = agent([sink(rp.url)])
    with pytest.raises(errors.ConfigError, match="sinks: unknown key in agent mode"):
        Pool({"agent": ag.agent_dir, "sinks": [{"url": rp.url}]})
    with pytest.raises(errors.ConfigError, match="ring_bytes"):
        Pool({"agent": ag.agent_dir, "ring_bytes": 1000})
    link = tmp_path / "link"
    link.symlink_to(ag.agent_dir)
    with pytest.raises(errors.LogpoolError, match="symlink"):
        Pool({"agent": str(link)})
    # The Python-free library refuses an in-process config, saying which library to use.
    import cffi
    ffi = cffi.FFI()
    ffi.cdef("void *logpool_new(const char *); const char *logpool_last_error(void);")
    producer_lib = ffi.dlopen(paths.producer_lib_path())
    assert producer_lib.logpool_new(json.dumps({"sinks": [{"url": rp.url}]}).encode()) == \
        ffi.NULL
    assert b"needs liblogpool.so" in ffi.string(producer_lib.logpool_last_error())
    assert not rings(ag.agent_dir)
    assert ag.stop() == 0


def test_sigterm_with_the_collector_down_exits_in_time_and_the_next_agent_delivers(
        tmp_path, agent, receive_process):
    path = sock_path(tmp_path, "down.sock")
    log_file = tmp_path / "agent.log"
    ag = agent([sink("unix:" + path)], exit_flush_timeout_ms=500)
    pool = Pool({"agent": ag.agent_dir})
    n = 1000
    for i in range(n):
        pool.log("main", f"t {i}")
    wait_for(lambda: ag.metric("logpool_agent_ring_taken_messages_total") == n, timeout=30,
             what="the agent took every record")
    started = time.monotonic()
    assert ag.stop() == 0  # SIGTERM: takes nothing more, tries for 500 ms, exits
    assert time.monotonic() - started < 0.5 + 5
    assert "stay in their rings" in ag.log
    with pytest.raises(errors.Timeout):
        pool.flush(timeout=0)  # nothing was released: nothing was delivered
    rp = receive_process("unix:" + path)
    ag2 = agent([sink(rp.url)], log_file=str(log_file))
    pool.flush(timeout=30)
    assert ids_by_tag(rp.lines())["t"] == list(range(n))
    # SIGHUP reopens the log file (after logrotate moved it away).
    os.rename(log_file, str(log_file) + ".1")
    ag2.proc.send_signal(signal.SIGHUP)
    wait_for(lambda: log_file.exists() and "reopened" in log_file.read_text(), timeout=30,
             what="the log reopened")
    pool.close()
    assert ag2.stop() == 0


def test_the_modules_metrics_location_sums_the_workers_producer_counters(
        tmp_path, agent, receive_process):
    rp = receive_process()
    ag = agent([sink(rp.url)])
    ng = Nginx(tmp_path / "nginx", module_conf(agent_pool_json(ag.agent_dir)),
               "location = /metrics { logpool_log off; logpool_metrics; }", workers=2,
               modules=native_modules())
    try:
        ng.start()
        assert ng.requests(200, connections=4) == [200] * 200
        logged = 1 + 200  # the harness's readiness probe, the load
        wait_for(lambda: len(ng.access_ids()) == logged, what="the access log")

        def accepted():
            text = ng.get("/metrics")[1].decode()
            m = re.search(r'^logpool_producer_accepted_messages\{sink="main"\} (\S+)$', text,
                          re.M)
            return m is not None and float(m.group(1)) == logged and text
        text = wait_for(accepted, timeout=30, what="every worker's producer counters")
        assert "metrics_listen" in text  # where the sinks' counters are
    finally:
        ng.kill()
    assert ag.stop() == 0


def test_an_nginx_worker_sigkilled_under_load_loses_at_most_the_line_it_was_writing(
        tmp_path, agent, receive_process):
    rp = receive_process()
    ag = agent([sink(rp.url)])
    ng = Nginx(tmp_path / "nginx", module_conf(agent_pool_json(ag.agent_dir)), workers=2,
               modules=native_modules())
    try:
        ng.start()
        with Load(ng, connections=8) as load:
            load.wait_requests(1500, "requests before the kill")
            victim = min(ng.worker_pids())
            os.kill(victim, signal.SIGKILL)
            wait_for(lambda: victim not in ng.worker_pids() and len(ng.worker_pids()) == 2,
                     timeout=60, what="the master to replace the killed worker")
            load.wait_requests(load.requests() + 1500, "requests after the kill")
        assert ng.quit() == 0
        ids = ng.access_ids()
        # The killed worker's ring is drained (it is gone), then removed.
        wait_for(lambda: not rings(ag.agent_dir), timeout=60, what="every ring drained")
    finally:
        ng.kill()
    got = [line.decode() for line in rp.lines()]
    counts = collections.Counter(got)
    assert max(counts.values()) == 1, "a line arrived twice"
    assert set(counts) <= set(ids)
    # The access log and the module write in the same log phase: the kill can fall between.
    assert len(set(ids) - set(counts)) <= 1, "more than the line being written was lost"
    assert ag.stop() == 0
