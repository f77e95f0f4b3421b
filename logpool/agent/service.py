"""The agent: one per host. It runs an ordinary in-process pool (the same engine, transports,
spool and metrics as a worker's) and feeds it from every producer's ring in agent_dir.

Delivery before release: after each pass over the rings the agent notes a checkpoint (each
ring's scan position, each sink's accepted count). A checkpoint is released - each ring's
read_pos moved to its position - once every sink has settled as many messages as it had
accepted then: its first messages all delivered (sent by its own standard, or a final fate)
or in the spool (per sink the engine keeps order; ring_agent.c counts the settled prefix).
An agent killed at any point leaves read positions behind everything not settled: the next
one takes it again.
"""
import collections
import errno
import fcntl
import json
import os
import signal
import stat
import sys
import threading
import time

from logpool import errors
from logpool.agent import table
from logpool.errors import ConfigError

AGENT_KEYS = ("agent_dir", "metrics_listen")
LOCK_NAME = "agent.lock"
RING_PREFIX = "ring."
SCAN_INTERVAL_S = 0.2       # new rings appear this often at most
LIVENESS_INTERVAL_S = 1.0   # producers checked for death, rings for removal
DRAIN_BUDGET = 65536        # records per ring per pass: one ring cannot starve the others
# A pass (one checkpoint) takes at most a quarter of the smallest sink's spill mark, counted
# in records of this nominal size: what a sink spooled is released up to the last quarter
# of its in-memory part, however fast producers wrote (a pass that took a whole ring at once
# could be released only once its newest lines, held in memory during an outage, were sent).
NOMINAL_RECORD_BYTES = 64
IDLE_SLEEP_MAX_S = 0.005    # an idle agent polls this often (producers never wake it)
FULL_PASS = 4096            # a pass that took fewer records waits a little for more: the
TRICKLE_SLEEP_S = 0.0005    # per-pass work (checkpoint, release) is spread over a batch
MAX_CHECKPOINTS = 256       # beyond, new ones merge into the newest (a later release)
ADOPT_TIMEOUT_S = 60.0
MAX_RINGS = 4096            # mapped at once: files beyond wait (a directory of garbage cannot
                            # take every descriptor and mapping)


def split_config(config):
    """(pool config dict, agent_dir, metrics_listen) from the agent's FILE."""
    if not isinstance(config, dict):
        raise ConfigError("the agent's config must be a JSON object")
    pool_cfg = {k: v for k, v in config.items() if k not in AGENT_KEYS}
    agent_dir = config.get("agent_dir")
    if not isinstance(agent_dir, str) or not agent_dir:
        raise ConfigError("agent_dir: required, the directory where producers' rings live")
    listen = config.get("metrics_listen")
    if listen is not None:
        if not isinstance(listen, str) or ":" not in listen:
            raise ConfigError(f"metrics_listen: host:port expected, got {listen!r}")
        host, _, port = listen.rpartition(":")
        if not port.isdigit() or not 0 <= int(port) <= 65535:
            raise ConfigError(f"metrics_listen: bad port in {listen!r}")
        listen = (host.strip("[]") or "127.0.0.1", int(port))
    return pool_cfg, os.path.abspath(agent_dir), listen


def check_agent_dir(path):
    """spool_dir's rules: the agent's own directory (created 02770 when missing), not a
    symlink, not writable by others."""
    try:
        os.mkdir(path, 0o2770)
        os.chmod(path, 0o2770)  # the umask may have taken bits; setgid: rings get its group
    except FileExistsError:
        pass
    st = os.lstat(path)
    if stat.S_ISLNK(st.st_mode) or not stat.S_ISDIR(st.st_mode):
        raise ConfigError(f"agent_dir {path}: must be a directory, not a symlink")
    if st.st_uid != os.geteuid():
        raise ConfigError(f"agent_dir {path}: owned by uid {st.st_uid}, the agent runs as "
                          f"{os.geteuid()}: it must be the agent's own")
    if st.st_mode & stat.S_IWOTH:
        raise ConfigError(f"agent_dir {path}: writable by others (mode "
                          f"{stat.S_IMODE(st.st_mode):o}); use a group the workers are in")


TMPFS_MAGIC = 0x01021994


def on_tmpfs(path):
    import ctypes
    import ctypes.util
    buf = ctypes.create_string_buffer(256)  # struct statfs; f_type is its first field
    libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
    if libc.statfs(os.fsencode(path), buf) != 0:
        return True  # cannot tell: say nothing
    return int.from_bytes(buf.raw[:8], sys.byteorder) == TMPFS_MAGIC


def process_start_time(pid):
    """Field 22 of /proc/<pid>/stat, or None when the process is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
    except OSError:
        return None
    fields = data[data.rindex(b")") + 2:].split()
    return int(fields[19])


class Ring:
    """One producer's ring, mapped by ring_agent.c."""

    def __init__(self, agent, name, ptr):
        self.name = name
        self.ptr = ptr
        self.info = agent.ffi.new("logpool__ring_info_t *")
        agent.lib.logpool__ring_info(ptr, self.info)
        self.pid = self.info.pid
        self.start_time = self.info.start_time

    def alive(self):
        return process_start_time(self.pid) == self.start_time


class Agent:
    def __init__(self, config, log_file=None):
        self.pool_cfg, self.agent_dir, self.listen = split_config(config)
        self.exit_timeout_ms = self.pool_cfg.get("exit_flush_timeout_ms", 1000)
        self.log_file = log_file
        self.log_stream = sys.stderr
        self.rings = {}  # name -> Ring
        self.refused = set()
        self.checkpoints = collections.deque()
        self.stopping = False
        self.reopen_logs = False
        self.totals = collections.Counter()  # of rings removed since the agent started
        self.snapshot = []  # per-ring rows for /metrics, refreshed by the main loop
        self.lock_fd = None
        self.pool = None
        self.metrics_server = None

    # -- lifecycle --

    def log(self, text):
        print(f"logpool agent: {text}", file=self.log_stream, flush=True)

    def open_log(self):
        if self.log_file:
            stream = open(self.log_file, "a", buffering=1, encoding="utf-8")
            old, self.log_stream = self.log_stream, stream
            if old is not sys.stderr:
                old.close()

    def start(self):
        from logpool.pool import Pool
        self.open_log()
        check_agent_dir(self.agent_dir)
        if not on_tmpfs(self.agent_dir):
            self.log(f"agent_dir {self.agent_dir} is not on a tmpfs (/dev/shm, /run): the "
                     "kernel writes the rings back to disk and producers take page faults")
        self.lock_fd = os.open(os.path.join(self.agent_dir, LOCK_NAME),
                               os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)
        try:
            fcntl.flock(self.lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise ConfigError(f"agent_dir {self.agent_dir}: another agent runs there") from None
        self.pool = Pool(self.pool_cfg, close_timeout=self.exit_timeout_ms / 1000)
        embedded = sys.modules["_logpool_embedded"]  # the library's own API-mode binding
        self.ffi, self.lib = embedded.ffi, embedded.lib
        self.cpool = self.ffi.cast("logpool_t *", self.pool._address)
        self.nsinks = len(self.pool.config.sinks)
        smallest = min(s.max_buffer_length for s in self.pool.config.sinks)
        self.drain_budget = max(64, min(DRAIN_BUDGET, smallest // 2 // 4 // NOMINAL_RECORD_BYTES))
        self.progress = [self.ffi.new("uint64_t[2]") for _ in range(self.nsinks)]
        deadline = time.monotonic() + ADOPT_TIMEOUT_S
        # What an earlier agent spooled is adopted (and counted accepted) first: checkpoints
        # taken before that would count it as ours.
        while self.lib.logpool__agent_adopting(self.cpool) and time.monotonic() < deadline:
            time.sleep(0.01)
        table.publish(self.agent_dir, self.pool.config.sinks)
        if self.listen is not None:
            from logpool.agent.http import serve_metrics
            self.metrics_server = serve_metrics(self.listen, self.render_metrics)
            self.log(f"metrics at http://{self.listen[0]}:{self.metrics_server.server_port}"
                     "/metrics")
        self.log(f"draining rings in {self.agent_dir} into {self.nsinks} sink(s)")

    def install_signals(self):
        signal.signal(signal.SIGTERM, lambda *_: setattr(self, "stopping", True))
        signal.signal(signal.SIGINT, lambda *_: setattr(self, "stopping", True))
        signal.signal(signal.SIGHUP, lambda *_: setattr(self, "reopen_logs", True))

    def run(self):
        next_scan = next_liveness = 0.0
        idle = 0.0
        while not self.stopping:
            now = time.monotonic()
            if now >= next_scan:
                self.scan_dir()
                next_scan = now + SCAN_INTERVAL_S
            taken = self.drain_all()
            self.release()
            if now >= next_liveness:
                self.check_liveness()
                next_liveness = now + LIVENESS_INTERVAL_S
            if self.reopen_logs:
                self.reopen_logs = False
                self.open_log()
                self.log("logs reopened (SIGHUP)")
            if taken >= min(FULL_PASS, self.drain_budget):
                idle = 0.0
            elif taken:
                idle = 0.0
                time.sleep(TRICKLE_SLEEP_S)
            else:
                idle = min(IDLE_SLEEP_MAX_S, idle * 2 or 0.0002)
                time.sleep(idle)
        return self.shutdown()

    def shutdown(self):
        """SIGTERM: take nothing more; deliver what was taken within exit_flush_timeout_ms;
        release what was delivered. The rest stays in the rings for the next agent."""
        deadline = time.monotonic() + self.exit_timeout_ms / 1000
        while self.checkpoints and time.monotonic() < deadline:
            try:
                self.pool.flush(timeout=min(0.05, max(0.0, deadline - time.monotonic())))
            except errors.LogpoolError:
                pass
            self.release()
        self.release()
        abandoned = self.pool.close(0)  # with a spool, what is left is spooled now
        self.release()  # ... and released: the next agent adopts it from the spool
        left = len(self.checkpoints)
        for ring in self.rings.values():
            self.lib.logpool__ring_close(ring.ptr)
        self.rings.clear()
        if self.metrics_server is not None:
            self.metrics_server.shutdown()
        self.log(f"stopped: {abandoned} message(s) not delivered stay in their rings for the "
                 f"next agent" if left else "stopped: everything taken was delivered")
        return 0

    # -- rings --

    def scan_dir(self):
        try:
            names = os.listdir(self.agent_dir)
        except OSError as exc:
            self.log(f"cannot list {self.agent_dir}: {exc}")
            return
        for name in names:
            if not name.startswith(RING_PREFIX) or name in self.rings or name in self.refused:
                continue
            if len(self.rings) >= MAX_RINGS:
                if not self.totals["rings_waiting_logged"]:
                    self.totals["rings_waiting_logged"] = 1
                    self.log(f"more than {MAX_RINGS} rings in {self.agent_dir}: the others "
                             "wait until some are drained and removed")
                break
            err = self.ffi.new("char[256]")
            ptr = self.lib.logpool__ring_open(self.agent_dir.encode(), name.encode(),
                                              self.nsinks, err, 256)
            if ptr == self.ffi.NULL:
                self.refused.add(name)
                self.totals["rings_refused"] += 1
                self.log(f"{name}: refused: {self.ffi.string(err).decode(errors='replace')}")
                continue
            ring = Ring(self, name, ptr)
            self.rings[name] = ring
            self.totals["rings_opened"] += 1

    def drain_all(self):
        taken = 0
        for ring in self.rings.values():
            taken += self.lib.logpool__ring_drain(ring.ptr, self.cpool, self.drain_budget)
        if taken:
            self.checkpoint()
        return taken

    def sink_progress(self):
        """[(accepted, settled)] per sink, now (ring_agent.h)."""
        out = []
        for i, p in enumerate(self.progress):
            self.lib.logpool__agent_progress(self.cpool, i, p, p + 1)
            out.append((p[0], p[1]))
        return out

    def checkpoint(self):
        targets = [p[0] for p in self.sink_progress()]
        positions = {ring.name: self.lib.logpool__ring_scan_pos(ring.ptr)
                     for ring in self.rings.values()}
        if len(self.checkpoints) >= MAX_CHECKPOINTS:
            # Merged into the newest: its positions move on and it waits for more.
            self.checkpoints[-1] = (targets, positions)
        else:
            self.checkpoints.append((targets, positions))

    def release(self):
        if not self.checkpoints:
            return
        progress = self.sink_progress()
        while self.checkpoints:
            targets, positions = self.checkpoints[0]
            if any(settled < target for (_, settled), target in zip(progress, targets)):
                return
            self.checkpoints.popleft()
            for name, pos in positions.items():
                ring = self.rings.get(name)
                if ring is not None:
                    self.lib.logpool__ring_release(ring.ptr, pos)

    def check_liveness(self):
        """Removes rings that are done (their producer closed the pool or is gone, and
        everything it wrote is released) or broken; refreshes the metrics snapshot."""
        rows = []
        for name, ring in list(self.rings.items()):
            info = ring.info
            self.lib.logpool__ring_info(ring.ptr, info)
            done = info.read_pos == info.write_pos and (info.closed or not ring.alive())
            if done or info.broken:
                if info.broken:
                    self.log(f"{name}: the file changed size under the agent (hostile "
                             "producer?): dropped")
                self.remove(name, ring)
                continue
            rows.append((name, ring.pid, info.data_bytes,
                         (info.write_pos - info.read_pos) % (1 << 64),
                         info.accepted_messages, info.dropped_full, info.taken_messages,
                         info.resets, info.possible_duplicates))
        self.snapshot = rows

    def remove(self, name, ring):
        info = ring.info
        for key in ("taken_messages", "resets", "possible_duplicates", "accepted_messages",
                    "dropped_full"):
            self.totals[key] += getattr(info, key)
        for _, positions in self.checkpoints:
            positions.pop(name, None)
        del self.rings[name]
        self.lib.logpool__ring_close(ring.ptr)
        try:
            os.unlink(os.path.join(self.agent_dir, name))
        except OSError as exc:
            if exc.errno != errno.ENOENT:
                self.log(f"{name}: cannot remove: {exc}")
        self.totals["rings_removed"] += 1

    # -- metrics --

    def render_metrics(self):
        lines = [self.pool.metrics().rstrip("\n")]
        rows = list(self.snapshot)
        totals = self.totals.copy()
        ring_metrics = (
            ("logpool_agent_ring_size_bytes", "gauge", "the ring's data size", 2),
            ("logpool_agent_ring_fill_bytes", "gauge", "written, not yet released", 3),
            ("logpool_agent_ring_accepted_messages_total", "counter",
             "the producer's accepted messages", 4),
            ("logpool_agent_ring_refused_messages_total", "counter",
             "refused by the producer: ring full (EFULL)", 5),
            ("logpool_agent_ring_taken_messages_total", "counter",
             "taken by this agent into its pool", 6),
            ("logpool_agent_ring_resets_total", "counter",
             "garbage found: the ring skipped to its write position", 7),
        )
        for metric, kind, help_text, col in ring_metrics:
            lines.append(f"# HELP {metric} {help_text}")
            lines.append(f"# TYPE {metric} {kind}")
            for row in rows:
                lines.append(f'{metric}{{ring="{label(row[0])}",pid="{row[1]}"}} {row[col]}')
        dups = totals["possible_duplicates"] + sum(row[8] for row in rows)
        for metric, value, help_text in (
                ("logpool_agent_rings", len(rows), "rings being drained"),
                ("logpool_agent_rings_removed_total", totals["rings_removed"],
                 "rings drained and removed (producer closed or gone)"),
                ("logpool_agent_rings_refused_total", totals["rings_refused"],
                 "files named ring.* that are not rings of this version"),
                ("logpool_agent_possible_duplicates_total", dups,
                 "records taken again after an agent restart (an earlier agent had taken "
                 "them, maybe sent them, and not released them)")):
            lines.append(f"# HELP {metric} {help_text}")
            lines.append(f"# TYPE {metric} {'gauge' if metric == 'logpool_agent_rings' else 'counter'}")
            lines.append(f"{metric} {value}")
        return "\n".join(lines) + "\n"


def label(value):
    """A Prometheus label value (a file name may hold anything)."""
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def main(config_path, log_file=None):
    try:
        with open(config_path, encoding="utf-8") as f:
            config = json.load(f)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{config_path}: {exc}") from None
    agent = Agent(config, log_file=log_file)
    agent.install_signals()
    agent.start()
    return agent.run()
