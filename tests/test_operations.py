"""The operation matrix in real nginx (the Lua module, 2 workers, a spool, max_buffer_length
256 KiB, `logpool receive` as the collector, wrk): collectors that hang (SIGSTOP) as well as
die, reloads, quits and restarts, a re-pointed sink and a spool that fills, for RELP, HTTP
and TCP. Loads are bounded by request counts, never by time.

Every cell checks: for RELP and HTTP no line missing where the spool had room, and the lines
that arrived twice never exceed the possible-duplicate counter (resent_messages) summed over
every generation of workers (each logs its counters at exit); TCP within its documented bound
(a collector killed with lines in its socket buffers loses those); a full spool: refusals
counted, every line accepted delivered, the workers never block."""
import collections
import os
import re
import signal
import struct

import pytest

from conftest import Load, ReceiveProcess, wait_for
from logpool.tools.nginx import Nginx, free_port

BUFFER = 262144
LINE = 33  # a request id and its newline
# TCP: a collector SIGKILLed with lines in its kernel buffers loses them (its receive
# buffer plus what the kernel still held for it), per worker connection and kill.
TCP_LOSS_PER_BREAK = 8 << 20
STATS = re.compile(rb"logpool-exit-stats resent=(\d+) full=(\d+) accepted=(\d+)")
SCENARIOS = ("hung", "hung_reload", "down_reload", "killed_twice", "down_quit_restart",
             "repointed_reload", "spool_full")


def conf(url, spool, max_spool_bytes):
    http_extra = f"""
    init_worker_by_lua_block {{
        require("resty.logpool").start({{
            sinks = {{ {{ url = "{url}", name = "main" }} }},
            periodic_flush_ms = 50, retry_interval_ms = 20, max_retry_interval_ms = 200,
            send_timeout_ms = 60000, spool_dir = "{spool}", max_buffer_length = {BUFFER},
            max_spool_bytes = {max_spool_bytes},
        }})
    }}
    exit_worker_by_lua_block {{
        local logpool = require("resty.logpool")
        local pool = logpool.default()
        logpool.stop(5)
        if pool then
            local st = pool:stats("main")
            ngx.log(ngx.WARN, "logpool-exit-stats resent=", st.resent_messages,
                    " full=", st.dropped_full, " accepted=", st.accepted_messages)
        end
    }}
    """
    server_extra = """
        log_by_lua_block {
            require("resty.logpool").log("main", ngx.var.request_id .. "\\n")
        }
    """
    return http_extra, server_extra


class Collector:
    """`logpool receive` on a fixed address, so that it can die and come back there."""

    def __init__(self, tmp_path, scheme, name="collector"):
        port = free_port()
        self.listen = {"relp": f"relp://127.0.0.1:{port}", "tcp": f"tcp://127.0.0.1:{port}",
                       "http": f"http://127.0.0.1:{port}/logs"}[scheme]
        self.url = self.listen
        self.out = str(tmp_path / f"{name}.log")
        self.proc = None

    def start(self):
        self.proc = ReceiveProcess(self.listen, self.out)
        return self

    def signal(self, sig):
        self.proc.proc.send_signal(sig)

    def kill(self):
        self.proc.stop(signal.SIGKILL)

    def stop(self):
        if self.proc is not None and self.proc.proc.poll() is None:
            self.signal(signal.SIGCONT)
            self.proc.stop()

    def lines(self):
        if not os.path.exists(self.out):
            return []
        with open(self.out, "rb") as f:  # (a SIGKILL may cut its last write short)
            data = f.read()
        return [line.decode() for line in data[:data.rfind(b"\n") + 1].splitlines()]


def hang_for(ng, load, collector, requests):
    """The collector stops reading (SIGSTOP) for `requests` more requests: more lines than
    both workers' memory holds."""
    collector.signal(signal.SIGSTOP)
    load.wait_requests(load.requests() + requests, "requests while the collector hangs")
    collector.signal(signal.SIGCONT)


def reload(ng, load, after):
    old = ng.worker_pids()
    ng.signal(signal.SIGHUP)
    wait_for(lambda: len(ng.worker_pids() - old) >= ng.workers_expected(), timeout=60,
             interval=0.01, what="new workers")
    load.wait_requests(load.requests() + after, "requests after the reload")
    return old


def exit_stats(ng):
    text = open(ng.error_log, "rb").read()
    found = [tuple(map(int, m)) for m in STATS.findall(text)]
    return found


OVER_MEMORY = 4 * BUFFER // LINE  # requests that overflow both workers' memory


@pytest.mark.parametrize("scenario", SCENARIOS)
@pytest.mark.parametrize("scheme", ["relp", "http", "tcp"])
def test_operation_matrix(tmp_path, scheme, scenario):
    collector = Collector(tmp_path, scheme)
    spool = tmp_path / "spool"
    max_spool = 128 * 1024 if scenario == "spool_full" else 1 << 30
    ng = Nginx(tmp_path / "nginx", *conf(collector.url, spool, max_spool), workers=2)
    other = None
    kills = 0
    if scenario not in ("down_reload", "down_quit_restart", "repointed_reload", "spool_full"):
        collector.start()
    ng.start()
    try:
        with Load(ng) as load:
            load.wait_requests(1000, "requests before the operation")
            if scenario == "hung":
                hang_for(ng, load, collector, OVER_MEMORY)
            elif scenario == "hung_reload":
                collector.signal(signal.SIGSTOP)
                load.wait_requests(load.requests() + OVER_MEMORY // 2, "requests in the hang")
                old = reload(ng, load, OVER_MEMORY // 2)
                collector.signal(signal.SIGCONT)
                wait_for(lambda: not (ng.worker_pids() & old), timeout=60, interval=0.02,
                         what="the old workers' exit")
            elif scenario == "down_reload":
                load.wait_requests(load.requests() + OVER_MEMORY // 2, "requests while down")
                reload(ng, load, OVER_MEMORY // 2)
                collector.start()
            elif scenario == "killed_twice":
                for _ in range(2):
                    collector.kill()
                    kills += 1
                    load.wait_requests(load.requests() + OVER_MEMORY // 4, "requests while dead")
                    collector.start()
                    load.wait_requests(load.requests() + 1000, "requests after the restart")
            elif scenario == "down_quit_restart":
                load.wait_requests(load.requests() + OVER_MEMORY, "requests while down")
            elif scenario == "repointed_reload":
                load.wait_requests(load.requests() + OVER_MEMORY // 2, "requests while down")
                other = Collector(tmp_path, scheme, "other").start()
                with open(ng.conf_path) as f:
                    text = f.read()
                with open(ng.conf_path, "w") as f:
                    f.write(text.replace(collector.url, other.url))
                reload(ng, load, OVER_MEMORY // 2)
            elif scenario == "spool_full":
                wait_for(lambda: b"both full" in open(ng.error_log, "rb").read(), timeout=120,
                         what="refusals with memory and the spool full")
                load.wait_requests(load.requests() + 1000, "requests while refusing")
                collector.start()
            load.wait_requests(load.requests() + 1000, "requests after the operation")
        if scenario == "down_quit_restart":
            assert ng.quit() == 0  # what the workers hold goes to the spool
            collector.start()
            ng.start()  # a new nginx adopts the spool and delivers it
            ng.requests(200, connections=4)
        everyone = [collector] + ([other] if other else [])
        # The live workers deliver what was spooled (they look every second), then quit
        # delivers what they hold in memory.
        wait_for(lambda: not spooled(spool), timeout=120, what="the spool delivered")
        assert ng.quit() == 0
    finally:
        ng.kill()
        for c in (collector, other):
            if c is not None:
                c.stop()
    logged = ng.access_ids()
    got = [line for c in everyone for line in c.lines()]
    stats = exit_stats(ng)
    resent = sum(s[0] for s in stats)
    refused = sum(s[1] for s in stats)
    counts = collections.Counter(got)
    duplicates = sum(v - 1 for v in counts.values())
    missing = set(logged) - set(counts)
    assert set(counts) <= set(logged), "a line nobody logged"
    print(f"{scheme} {scenario}: {len(logged)} logged, {len(missing)} missing, {duplicates} "
          f"duplicates, resent_messages {resent}, refused (full) {refused}, "
          f"{len(stats)} worker exits")
    if scenario == "repointed_reload":
        assert not collector.lines()  # the old collector never came back: all went to the new
    if scenario == "spool_full":
        assert refused > 0 and len(missing) == refused  # each refusal counted, nothing else
    elif scheme == "tcp":
        assert refused == 0
        assert len(missing) * LINE <= kills * 2 * TCP_LOSS_PER_BREAK
    else:
        assert refused == 0 and not missing
    assert duplicates <= resent


def spooled(spool):
    """Segments holding records (an empty one may stay open for the next spill)."""
    d = os.path.join(spool, "main")
    out = []
    for name in os.listdir(d) if os.path.isdir(d) else ():
        if name.endswith(".seg"):
            try:
                with open(os.path.join(d, name), "rb") as f:
                    head = f.read(12)
                    size = os.fstat(f.fileno()).st_size
            except FileNotFoundError:
                continue  # delivered and deleted by the writer since the listing

            records_from = struct.unpack_from("<I", head, 8)[0] if len(head) == 12 else 0
            if size > records_from:
                out.append(name)
    return out
