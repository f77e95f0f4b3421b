"""RELP: acknowledged delivery and failover, against `logpool receive --listen relp://` and a
real rsyslogd (Debian's rsyslog-relp, imrelp) with a direct main queue, so that its reply
means the message reached the omfile action."""
import collections
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import threading
import time

import pytest

import logpool
from conftest import ReceiveProcess, message, parse_line, wait_for
from test_interop import accepting, free_tcp_port, syslog_message

FAST = {"retry_interval_ms": 10, "max_retry_interval_ms": 100, "periodic_flush_ms": 10}


def seqs(lines):
    return [parse_line(line + b"\n")[1] for line in lines]


def test_relp_to_logpool_receive_is_acknowledged_in_order(receiver, pools):
    r = receiver("relp://127.0.0.1:0")
    pool = pools({"sinks": [{"url": r.url}]})
    n = 20_000
    for i in range(n):
        pool.log(0, message(0, i, size=i % 700))
    pool.flush(timeout=30)
    st = pool.stats(0)
    # Acknowledged means written out by the receiver: everything is there when flush returns.
    assert seqs(r.output.lines()) == list(range(n))
    assert st["sent_messages"] == n and st["unacked_messages"] == 0
    assert st["buffered_messages"] == 0 and st["resent_messages"] == 0


SYSLOG_HEADER = b"<134>1 2026-11-22T05:00:00.000Z web01 nginx 4242 access - "


class SteadyLoad:
    """A thread logging message(0, i) for i < n at a steady pace, after `header` (rsyslog's
    %msg% is what follows an RFC 5424 header)."""

    def __init__(self, pool, n, per_ms=20, header=b""):
        self.pool, self.n, self.per_ms, self.header = pool, n, per_ms, header
        self.thread = threading.Thread(target=self.run)
        self.logged = 0
        self.thread.start()

    def run(self):
        for i in range(self.n):
            self.pool.log(0, self.header + message(0, i, size=i % 300))
            self.logged = i + 1
            if i % self.per_ms == 0:
                time.sleep(0.001)


def relp_receive_process(tmp_path, name, port):
    return ReceiveProcess(f"relp://127.0.0.1:{port}", str(tmp_path / f"{name}.log"))


def test_receiver_sigkilled_five_times_loses_nothing(tmp_path, pools):
    # Each incarnation writes its own file: a SIGKILL can cut the receiver's own write() to
    # its output short (those messages were never acknowledged, so logpool resends them), and
    # the next incarnation's lines must not be glued onto that torn tail.
    port = free_tcp_port()
    rp = relp_receive_process(tmp_path, "r0", port)
    pool = pools({"sinks": [{"url": f"relp://127.0.0.1:{port}"}], **FAST})
    load = SteadyLoad(pool, 30_000)
    runs = []
    try:
        for kill in range(5):
            target = (kill + 1) * load.n // 7
            wait_for(lambda: load.logged >= target, what="load progressing")
            rp.proc.send_signal(signal.SIGKILL)
            rp.proc.wait(timeout=15)
            rp.proc.stderr.close()
            runs.append(rp.complete_lines())
            rp = relp_receive_process(tmp_path, f"r{kill + 1}", port)
            wait_for(lambda: pool.stats(0)["connects"] >= kill + 2, what="the writer back")
        load.thread.join()
        pool.flush(timeout=60)
    finally:
        status = rp.stop()
    assert status == 0
    runs.append(rp.lines())
    got = [seq for run in runs for seq in seqs(run)]
    counts = collections.Counter(got)
    assert set(counts) == set(range(load.n)), "a message acknowledged by nobody was lost"
    duplicates = sum(c - 1 for c in counts.values())
    st = pool.stats(0)
    assert st["reconnects"] >= 5 and st["sent_messages"] == load.n
    # At-least-once: a copy arrives twice only when its acknowledgement was lost, and every
    # such message was counted as resent.
    assert duplicates <= st["resent_messages"], (duplicates, st)


def test_failover_moves_unacknowledged_messages_to_the_next_collector(tmp_path, pools):
    ports = free_tcp_port(), free_tcp_port()
    first, second = (relp_receive_process(tmp_path, f"c{i}", p) for i, p in enumerate(ports))
    urls = [f"relp://127.0.0.1:{p}" for p in ports]
    pool = pools({"sinks": [{"url": urls, "name": "relp"}], **FAST})
    load = SteadyLoad(pool, 20_000)
    try:
        wait_for(lambda: load.logged >= load.n // 3, what="load progressing")
        first.proc.send_signal(signal.SIGKILL)  # gone for good
        first.proc.wait(timeout=15)
        load.thread.join()
        pool.flush(timeout=60)
    finally:
        second.stop()
    got = seqs(first.complete_lines()) + seqs(second.complete_lines())
    assert set(got) == set(range(load.n))
    assert len(second.complete_lines()) > 0
    metrics = pool.metrics()
    for url in urls:
        assert f'logpool_collector_connects_total{{collector="{url}",sink="relp"}} 1.0' in metrics


def test_a_failover_list_tries_every_collector_and_resolves_names_each_time(receiver, pools):
    r = receiver("relp://127.0.0.1:0")
    dead = f"relp://127.0.0.1:{free_tcp_port()}"  # nobody listens
    port = r.url.rsplit(":", 1)[1]
    pool = pools({"sinks": [{"url": [dead, f"relp://localhost:{port}"]}], **FAST})
    pool.log(0, message(0, 0))
    pool.flush(timeout=30)
    assert seqs(r.output.lines()) == [0]
    st = pool.stats(0)  # the dead collector is a failed connect; the second one worked
    assert st["connect_failures"] == 1 and st["connects"] == 1
    assert f'collector="{dead}"' in pool.metrics()


class ScriptedRelpServer:
    """A real RELP peer on a socket that answers what the test tells it to: a fault no real
    collector can be made to produce on demand (a 500 reply, serverclose)."""

    def __init__(self, script):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        self.url = f"relp://127.0.0.1:{self.sock.getsockname()[1]}"
        self.script = script  # (session index, message index) -> reply kind
        self.received = []
        self.sessions = 0
        self.thread = threading.Thread(target=self.serve, daemon=True)
        self.thread.start()

    def serve(self):
        from logpool.transports.relp import RelpTransport
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            session, seen, buf = self.sessions, 0, bytearray()
            self.sessions += 1
            with conn:
                while (data := conn.recv(65536)):
                    buf += data
                    while (frame := RelpTransport._parse_frame(buf, 0)) is not None:
                        txnr, command, body, pos = frame
                        del buf[:pos]
                        if command == b"open":
                            conn.sendall(b"%d rsp 6 200 OK\n" % txnr)
                            continue
                        if command == b"close":
                            conn.sendall(b"%d rsp 0\n" % txnr)
                            break
                        kind = self.script.get((session, seen), "ok")
                        seen += 1
                        if kind == "refuse":
                            conn.sendall(b"%d rsp 17 500 disk is full\n" % txnr)
                        elif kind == "serverclose":
                            conn.sendall(b"0 serverclose 0\n")
                        else:
                            self.received.append(body)
                            conn.sendall(b"%d rsp 6 200 OK\n" % txnr)
                        if kind != "ok":
                            break
                    else:
                        continue
                    break

    def close(self):
        self.sock.close()


@pytest.mark.parametrize("fault", ["refuse", "serverclose"])
def test_a_refusal_or_serverclose_reconnects_and_resends_the_unacknowledged(pools, fault):
    server = ScriptedRelpServer({(0, 5): fault})
    try:
        pool = pools({"sinks": [{"url": server.url, "relp_window": 4}], **FAST})
        for i in range(40):
            pool.log(0, b"m%d" % i)
        pool.flush(timeout=30)
        st = pool.stats(0)
        assert server.sessions >= 2 and st["reconnects"] >= 1
        assert st["sent_messages"] == 40 and st["resent_messages"] >= 1
        got = [int(m[1:]) for m in server.received]
        assert set(got) == set(range(40)) and got[:5] == list(range(5))
    finally:
        server.close()


@pytest.mark.parametrize("sink, message_text", [
    ({"url": "relp://h:1", "framing": "octet-counting"}, "RELP frames each message itself"),
    ({"url": "relp://h:1", "relp_window": 0}, "relp_window: must be an integer from 1"),
    ({"url": "tcp://h:1", "relp_window": 8}, "only relp:// and relp+tls:// sinks take"),
    ({"url": ["relp://h:1", "tcp://h:2"]}, "the collectors of one sink share a scheme"),
    ({"url": ["udp://h:1", "udp://h:2"]}, "a list of collectors (failover) is for stream"),
    ({"url": []}, "a list of collectors holds 1 to 64 URLs"),
])
def test_relp_and_failover_config_errors_name_the_key(sink, message_text):
    with pytest.raises(logpool.ConfigError) as exc:
        logpool.config.parse({"sinks": [sink]})
    assert message_text in str(exc.value)


# ---- rsyslog (imrelp) ----

RSYSLOG_RELP_CONF = """\
global(workDirectory="{dir}" maxMessageSize="64k"
       parser.escapeControlCharactersOnReceive="off")
main_queue(queue.type="Direct")
module(load="imrelp")
input(type="imrelp" address="127.0.0.1" port="{port}"{tls})
template(name="msg_json" type="string" string="%msg:::json%\\n")
*.* action(type="omfile" file="{out}" template="msg_json")
"""


class Rsyslog:
    def __init__(self, tmp_path, name, port=None, tls=""):
        self.binary = shutil.which("rsyslogd") or "/usr/sbin/rsyslogd"
        assert os.path.exists(self.binary), "rsyslogd (Debian rsyslog, rsyslog-relp): make deps"
        self.dir = tmp_path / name
        self.dir.mkdir(exist_ok=True)
        self.port = port or free_tcp_port()
        self.out = self.dir / "out.log"
        self.conf = self.dir / "rsyslog.conf"
        self.conf.write_text(RSYSLOG_RELP_CONF.format(dir=self.dir, port=self.port,
                                                      out=self.out, tls=tls))
        check = subprocess.run([self.binary, "-N1", "-f", str(self.conf)], capture_output=True,
                               text=True)
        assert check.returncode == 0, f"rsyslog rejects its config: {check.stderr}"
        self.url = f"relp://127.0.0.1:{self.port}"
        self.proc = None

    def start(self):
        self.proc = subprocess.Popen([self.binary, "-n", "-f", str(self.conf), "-i",
                                      str(self.dir / "pid")], stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, text=True)
        wait_for(lambda: self.proc.poll() is not None or accepting(self.port), interval=0.05,
                 what="rsyslog listening")
        assert self.proc.poll() is None, f"rsyslogd exited: {self.proc.stdout.read()}"
        return self

    def kill(self, sig=signal.SIGKILL):
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)
            self.proc.wait(timeout=15)

    def messages(self):
        if not self.out.exists():
            return []
        data = self.out.read_bytes()
        data = data[:data.rfind(b"\n") + 1]  # a SIGKILL can cut the last write short
        return [json.loads(b'"' + line + b'"').encode() for line in data.splitlines()]


@pytest.fixture
def rsyslogs(tmp_path):
    made = []

    def make(name="rsyslog", **kwargs):
        r = Rsyslog(tmp_path, name, **kwargs)
        made.append(r)
        return r

    yield make
    for r in made:
        r.kill(signal.SIGTERM)


def test_rsyslog_receives_rfc5424_over_relp_intact_in_order(rsyslogs, pools):
    rs = rsyslogs().start()
    pool = pools({"sinks": [{"url": rs.url}]})
    rng = random.Random(13)
    expected = []
    for i in range(3000):
        header, payload = syslog_message(i, rng)  # some payloads span lines
        pool.log(0, header + payload + b"\n")
        expected.append(payload)
    pool.flush(timeout=30)
    # Acknowledged means rsyslog's omfile action has it: no waiting after flush.
    assert rs.messages() == expected
    assert pool.stats(0)["connects"] == 1 and pool.stats(0)["resent_messages"] == 0


def test_rsyslog_sigkilled_and_restarted_under_load_loses_nothing(rsyslogs, pools):
    rs = rsyslogs().start()
    pool = pools({"sinks": [{"url": rs.url}], **FAST})
    load = SteadyLoad(pool, 20_000, header=SYSLOG_HEADER)
    for kill in range(3):
        target = (kill + 1) * load.n // 5
        wait_for(lambda: load.logged >= target, what="load progressing")
        rs.kill()
        rs.start()
        wait_for(lambda: pool.stats(0)["connects"] >= kill + 2, what="the writer back")
    load.thread.join()
    pool.flush(timeout=60)
    got = collections.Counter(seqs(rs.messages()))
    assert set(got) == set(range(load.n)), "a message rsyslog never acknowledged was lost"
    duplicates = sum(c - 1 for c in got.values())
    assert duplicates <= pool.stats(0)["resent_messages"]


def test_failover_between_two_rsyslogs_one_killed_loses_nothing(rsyslogs, pools):
    a, b = rsyslogs("a").start(), rsyslogs("b").start()
    pool = pools({"sinks": [{"url": [a.url, b.url]}], **FAST})
    load = SteadyLoad(pool, 15_000, header=SYSLOG_HEADER)
    wait_for(lambda: load.logged >= load.n // 3, what="load progressing")
    a.kill()
    load.thread.join()
    pool.flush(timeout=60)
    got = seqs(a.messages()) + seqs(b.messages())
    assert set(got) == set(range(load.n)) and b.messages()


def test_relp_over_tls_to_rsyslog_with_a_test_ca(rsyslogs, pools, test_ca):
    # librelp (GnuTLS) authenticates clients by certificate: by name here, so logpool
    # presents a client certificate and checks rsyslog's against the same test CA.
    cert, key = test_ca.issue("rsyslog", names=("syslog.internal",))
    client_cert, client_key = test_ca.issue("client", names=("client.internal",), client=True)
    tls = (f' tls="on" tls.caCert="{test_ca.ca_file}" tls.myCert="{cert}" '
           f'tls.myPrivKey="{key}" tls.authMode="name" tls.permittedPeer=["client.internal"]')
    rs = rsyslogs(tls=tls).start()
    pool = pools({"sinks": [{"url": f"relp+tls://127.0.0.1:{rs.port}",
                             "ca_file": test_ca.ca_file, "server_name": "syslog.internal",
                             "cert_file": client_cert, "key_file": client_key}]})
    for i in range(500):
        pool.log(0, SYSLOG_HEADER + message(0, i))
    pool.flush(timeout=30)
    assert seqs(rs.messages()) == list(range(500))
    assert pool.stats(0)["tls_handshake_failures"] == 0


# -- what a collector says at the edges of a session (tests/peers plays it) --

def relp_pool(pools, peer, **options):
    return pools({"sinks": [{"url": peer.url("relp"), "name": "edge"}], **FAST, **options})


def test_a_malformed_acknowledgement_is_a_protocol_error_not_a_writer_crash(pools, capfd):
    import peers

    def malformed_then_correct(conn):
        if conn.index:
            return peers.relp_session(conn)
        peers.relp_open(conn)
        peers.relp_frame(conn)
        conn.send(b"x rsp 6 200 OK\n")
        conn.hang()

    peer = peers.Peer(malformed_then_correct)
    try:
        pool = relp_pool(pools, peer)
        pool.log(0, message(0, 0))
        pool.flush(timeout=30)
        st = pool.stats(0)
    finally:
        peer.close()
    assert st["writer_errors"] == 0 and st["write_errors"] == 1, st
    assert "malformed reply" in capfd.readouterr().err
    assert [parse_line(m)[1] for m in peer.taken] == [0]


def test_acknowledgements_that_come_with_the_end_of_the_connection_are_taken(pools):
    """The collector acknowledges a whole window and closes in the same breath (a restart
    at the worst moment): what it acknowledged is released, not resent. The replies fill
    exactly 64 KiB, so the reads that take them meet the end of the stream at once."""
    import peers
    n = 3000

    def ack_all_then_close(conn):
        if conn.index:
            return peers.relp_session(conn)
        peers.relp_open(conn)
        frames = [peers.relp_frame(conn) for _ in range(n)]
        acks = b"".join(b"%d rsp 6 200 OK\n" % t for t, _, _ in frames[:-1])
        # The last reply's text pads the whole to 64 KiB: "TXNR rsp LEN TEXT\n".
        room = 65536 - len(acks) - len(b"%d rsp  \n" % frames[-1][0])
        size = next(x for x in (room - d for d in range(1, 7)) if len(str(x)) == room - x)
        text = b"200 OK".ljust(size)
        reply = acks + b"%d rsp %d %s\n" % (frames[-1][0], len(text), text)
        assert len(reply) == 65536, len(reply)
        conn.peer.take([data + b"\n" for _, _, data in frames])
        conn.send(reply)
        conn.sock.shutdown(socket.SHUT_RDWR)

    peer = peers.Peer(ack_all_then_close)
    try:
        pool = relp_pool(pools, peer, relp_window=4096, flush_limit=1 << 20,
                         periodic_flush_ms=200)
        for seq in range(n):
            pool.log(0, message(0, seq))
        pool.flush(timeout=30)
        st = pool.stats(0)
    finally:
        peer.close()
    assert st["sent_messages"] == n and st["resent_messages"] == 0, st
    assert sorted(parse_line(m)[1] for m in peer.taken) == list(range(n))


def test_acknowledgements_that_come_while_closing_are_not_abandoned(pools):
    """close() ends the session with RELP's "close": acknowledgements the collector sends
    before it answers (or instead of answering) are delivered messages, not abandoned."""
    import peers

    def late_acks_no_close_reply(conn):
        peers.relp_open(conn)
        frames = [peers.relp_frame(conn) for _ in range(3)]
        command = peers.relp_frame(conn)  # "close": only now the acknowledgements
        assert command[1] == b"close"
        conn.peer.take([data + b"\n" for _, _, data in frames])
        conn.send(b"".join(b"%d rsp 6 200 OK\n" % t for t, _, _ in frames))
        conn.hang()

    peer = peers.Peer(late_acks_no_close_reply)
    try:
        pool = relp_pool(pools, peer)
        for seq in range(3):
            pool.log(0, message(0, seq))
        wait_for(lambda: pool.stats(0)["unacked_messages"] == 3, what="three in flight")
        abandoned = pool.close(timeout=30)  # returns once settled: 30 s only bounds a failure
        st = pool.stats(0)
    finally:
        peer.close()
    assert abandoned == 0 and st["sent_messages"] == 3 and st["abandoned_messages"] == 0, st
