"""forward:// and forward+tls:// (Fluent's forward protocol, acknowledged chunks), against
a strict scripted server that reads frames with the real msgpack library."""
import json
import socket
import threading
import time

import msgpack
import pytest

import logpool
import logpool.config
from conftest import wait_for
from backends import FAST, log_all, numbered
from httppeer import assert_logged


@pytest.mark.parametrize("sink, text", [
    ({"url": "forward://h:24224", "forward_window": 0}, "forward_window: must be"),
    ({"url": "forward://h:24224", "forward_tag": ""}, "forward_tag: must be"),
    ({"url": "forward://h:24224", "forward_tag": "app\ud800"}, "forward_tag: must be"),
    ({"url": "forward://h:24224", "framing": "newline"}, "forward frames each message"),
    ({"url": "forward://h:24224", "http_format": "loki"}, "only http:// and https://"),
    ({"url": "forward:/h"}, "expected forward://host:port"),
])
def test_forward_config_errors_name_the_key(sink, text):
    with pytest.raises(logpool.ConfigError) as exc:
        logpool.config.parse({"sinks": [sink]})
    assert text in str(exc.value)


# -- Fluent forward --------------------------------------------------------------------------

class ForwardServer:
    """A forward input as the protocol specification describes it: PackedForward messages
    checked with the real msgpack library (the entries a stream of [EventTime, record]
    pairs, "size" and "chunk" options), acks {"ack": chunk} given by `policy(chunk_id,
    records, server)`: "ack", "hold" (withheld until release()), "unknown" (an ack for a
    chunk never sent), "none" (never). Optional shared-key handshake."""

    def __init__(self, policy=lambda cid, records, server: "ack", shared_key=None, tls=None):
        self.policy = policy
        self.tls = tls
        self.shared_key = shared_key
        self.records = []  # (tag, time ns, record), every chunk received
        self.chunks = []  # chunk ids, in arrival order
        self.held = []
        self.lock = threading.Lock()
        self.release_event = threading.Event()
        self.stopping = threading.Event()
        self.connections = 0
        self.auth_failures = 0
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.url = (f"forward{'+tls' if tls else ''}://127.0.0.1:"
                    f"{self.listener.getsockname()[1]}")
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    def _accept(self):
        self.listener.settimeout(0.1)
        while not self.stopping.is_set():
            try:
                conn, _ = self.listener.accept()
            except OSError:
                continue
            self.connections += 1
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    @staticmethod
    def _ext(code, data):
        assert code == 0 and len(data) == 8, "EventTime is ext type 0 of 8 bytes"
        import struct
        seconds, nanos = struct.unpack(">II", data)
        assert nanos < 10**9
        return seconds * 10**9 + nanos

    def _serve(self, conn):
        from logpool.transports.forward import ping_digest
        if self.tls is not None:
            conn.settimeout(10)
            try:
                conn = self.tls.wrap_socket(conn, server_side=True)
            except OSError:
                conn.close()
                return
        conn.settimeout(0.1)
        unpacker = msgpack.Unpacker(raw=False)
        try:
            if self.shared_key is not None:
                # As Fluent Bit does: a random 16-byte nonce and user-auth salt packed as str
                # (not valid UTF-8), an auth salt even when no users are configured.
                import os
                nonce = os.urandom(16)
                packer = msgpack.Packer(unicode_errors="surrogateescape")
                raw = lambda b: b.decode("utf-8", "surrogateescape")  # noqa: E731
                conn.sendall(packer.pack(["HELO", {"nonce": raw(nonce),
                                                   "auth": raw(os.urandom(16))}]))
                ping = self._next(conn, unpacker)
                _, host, salt, digest, user, password = ping
                good = digest == ping_digest(salt, host, nonce, self.shared_key)
                if not good:
                    self.auth_failures += 1
                conn.sendall(msgpack.packb(
                    ["PONG", True, "", "collector-1", ping_digest(
                        salt, "collector-1", nonce, self.shared_key)] if good else
                    ["PONG", False, "shared_key mismatch", "", ""]))
                if not good:
                    return
            while not self.stopping.is_set():
                msg = self._next(conn, unpacker)
                if msg is None:
                    return
                tag, entries, option = msg
                assert isinstance(tag, str) and isinstance(entries, bytes)
                records = []
                inner = msgpack.Unpacker(raw=False)
                inner.feed(entries)
                for event in inner:
                    t, rec = event
                    assert isinstance(t, msgpack.ExtType) and isinstance(rec, dict)
                    records.append((tag, self._ext(t.code, t.data), rec))
                assert option["size"] == len(records), "size option"
                chunk = option["chunk"]
                with self.lock:
                    self.chunks.append(chunk)
                    self.records += records
                what = self.policy(chunk, records, self)
                if what == "ack":
                    conn.sendall(msgpack.packb({"ack": chunk}))
                elif what == "unknown":
                    conn.sendall(msgpack.packb({"ack": "never-sent-chunk"}))
                elif what == "hold":
                    self.held.append(chunk)
                    while not self.release_event.wait(0.05):
                        if self.stopping.is_set():
                            return
                    for c in self.held:
                        conn.sendall(msgpack.packb({"ack": c}))
                    self.held.clear()
                elif what == "garbage":
                    conn.sendall(b"\xc1" * 10)
                elif what == "huge":  # a bin announcing 4 GiB, then a steady stream
                    conn.sendall(b"\xc6\xff\xff\xff\xff")
                    while not self.stopping.is_set():
                        conn.sendall(b"z" * 65536)
        except (OSError, ValueError):
            return
        finally:
            conn.close()

    def _next(self, conn, unpacker):
        while not self.stopping.is_set():
            for msg in unpacker:
                return msg
            try:
                data = conn.recv(65536)
            except TimeoutError:
                continue
            if not data:
                return None
            unpacker.feed(data)
        return None

    def delivered(self):
        with self.lock:
            return list(self.records)

    def close(self):
        self.stopping.set()
        self.release_event.set()
        self.listener.close()
        self.thread.join(timeout=5)


@pytest.fixture
def forward_server():
    made = []

    def make(*args, **kwargs):
        s = ForwardServer(*args, **kwargs)
        made.append(s)
        return s
    yield make
    for s in made:
        s.close()


def seqs_of(records):
    return [rec.get("seq") for _, _, rec in records]


def test_forward_packed_chunks_acked_with_tag_records_and_times(forward_server, pools):
    server = forward_server()
    pool = pools({"sinks": [{"url": server.url, "forward_tag": "nginx.access"}], **FAST})
    log_all(pool, [json.dumps({"seq": i, "time": 1700000000 + i}).encode()
                   for i in range(300)] + [b"plain"])
    got = server.delivered()
    assert seqs_of(got) == list(range(300)) + [None]
    assert got[-1][2] == {"message": "plain"}
    assert {tag for tag, _, _ in got} == {"nginx.access"}
    assert got[5][1] == (1700000000 + 5) * 10**9
    st = pool.stats(0)
    assert (st["sent_messages"] == 301 and st["resent_messages"] == 0
            and st["unacked_messages"] == 0)


def test_forward_ack_withheld_then_given_releases_without_resending(forward_server, pools):
    server = forward_server(policy=lambda cid, records, s: "hold" if len(s.chunks) == 1
                            else "ack")
    pool = pools({"sinks": [{"url": server.url}], "send_timeout_ms": 30000, **FAST})
    for line in numbered(10):
        pool.log(0, line)
    wait_for(lambda: server.held, what="a chunk held")
    wait_for(lambda: pool.stats(0)["unacked_messages"] == 10, what="10 unacknowledged")
    assert pool.stats(0)["sent_messages"] == 0  # not acknowledged: not sent
    server.release_event.set()
    pool.flush(timeout=30)
    st = pool.stats(0)
    assert st["sent_messages"] == 10 and st["resent_messages"] == 0
    assert seqs_of(server.delivered()) == list(range(10)) and server.connections == 1


def test_forward_ack_withheld_past_send_timeout_resends(forward_server, pools):
    server = forward_server(policy=lambda cid, records, s: "none" if len(s.chunks) == 1
                            else "ack")
    pool = pools({"sinks": [{"url": server.url}], "send_timeout_ms": 500, **FAST})
    log_all(pool, numbered(10))
    got = seqs_of(server.delivered())
    assert got[-10:] == list(range(10))  # all sent again on a new connection, in order
    st = pool.stats(0)
    assert st["sent_messages"] == 10 and st["resent_messages"] == len(got) - 10 > 0


@pytest.mark.parametrize("answer", ["unknown", "garbage", "huge"])
def test_forward_an_ack_for_an_unknown_chunk_is_a_protocol_error(forward_server, pools,
                                                                 capfd, answer):
    server = forward_server(policy=lambda cid, records, s: answer if len(s.chunks) == 1
                            else "ack")
    pool = pools({"sinks": [{"url": server.url}], **FAST})
    log_all(pool, numbered(5))
    st = pool.stats(0)
    got = seqs_of(server.delivered())
    assert got[-5:] == list(range(5)) and sorted(set(got)) == list(range(5))
    assert st["sent_messages"] == 5 and st["write_errors"] == 1
    assert st["resent_messages"] == len(got) - 5 > 0  # the duplicates, all counted
    assert_logged(capfd, {"unknown": "not in flight", "garbage": "not msgpack",
                          "huge": "an answer longer than 65536 bytes"}[answer])


def test_forward_shared_key_handshake(forward_server, pools):
    server = forward_server(shared_key="s3cret")
    pool = pools({"sinks": [{"url": server.url, "forward_shared_key": "s3cret"}], **FAST})
    log_all(pool, numbered(3))
    assert seqs_of(server.delivered()) == [0, 1, 2]
    wrong = pools({"sinks": [{"url": server.url, "forward_shared_key": "wrong"}], **FAST})
    wrong.log(0, b"x")
    wait_for(lambda: wrong.stats(0)["connect_failures"] >= 2, what="refused handshakes")
    assert wrong.stats(0)["sent_messages"] == 0 and server.auth_failures >= 2


def test_forward_close_ends_a_withheld_ack_within_its_timeout(forward_server):
    server = forward_server(policy=lambda cid, records, s: "none")
    pool = logpool.Pool({"sinks": [{"url": server.url}], "send_timeout_ms": 60000, **FAST})
    for line in numbered(4):
        pool.log(0, line)
    wait_for(lambda: server.chunks, what="a chunk")
    start = time.monotonic()
    assert pool.close(timeout=1) == 4
    assert time.monotonic() - start < 10  # its timeout plus slack; not send_timeout_ms (60 s)


def test_forward_over_tls_verifies_the_collector(forward_server, pools, test_ca):
    from logpool.receive import server_tls_context
    server = forward_server(tls=server_tls_context(*test_ca.issue("server")))
    pool = pools({"sinks": [{"url": server.url, "ca_file": test_ca.ca_file,
                             "server_name": "localhost"}], **FAST})
    log_all(pool, numbered(20))
    assert seqs_of(server.delivered()) == list(range(20))
    untrusted = pools({"sinks": [{"url": server.url}], **FAST})  # the system CAs: refused
    untrusted.log(0, b"x")
    wait_for(lambda: untrusted.stats(0)["tls_handshake_failures"] > 0, what="a refusal")
    assert untrusted.stats(0)["sent_messages"] == 0
