"""udp:// and unixgram: sinks: one datagram per message, never two merged; oversize
messages refused at log time; send errors counted and survived."""
import math
import random
import socket
import threading
import zlib

import pytest

import logpool
from conftest import sock_path, wait_for
from logpool.transports.datagram import MAX_DATAGRAM
from logpool.receive import grow_receive_buffer

# Per datagram, the kernel charges the receive buffer far more than the payload.
DATAGRAM_OVERHEAD = 1024


def datagram_listener(scheme, tmp_path):
    if scheme == "udp":
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.bind(("127.0.0.1", 0))
        url = "udp://127.0.0.1:%d" % sock.getsockname()[1]
    else:
        path = sock_path(tmp_path, "dgram.sock")
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        sock.bind(path)
        url = "unixgram:" + path
    grow_receive_buffer(sock, 32 << 20)  # rounds are sized to what we got
    sock.settimeout(30)
    return sock, url


def payload(seq, size):
    """size bytes that name their sequence number and carry their checksum."""
    head = b"%d " % seq
    body = (b"%d:" % seq * (size // 2 + 1))[:max(0, size - len(head) - 8)]
    return (head + b"%08x" % zlib.crc32(body) + body)[:size]


def log_uniform_sizes(count, low, high, seed):
    rng = random.Random(seed)
    return [int(math.exp(rng.uniform(math.log(low), math.log(high)))) for _ in range(count)]


@pytest.mark.parametrize("scheme", ["udp", "unixgram"])
def test_10k_mixed_size_messages_arrive_one_datagram_each(tmp_path, pools, scheme):
    sock, url = datagram_listener(scheme, tmp_path)
    pool = pools({"sinks": [{"url": url}], "max_buffer_length": 64 << 20})
    sizes = log_uniform_sizes(10_000, 1, MAX_DATAGRAM, seed=7)
    sizes[:2] = [1, MAX_DATAGRAM]  # both ends of the range
    sent = [payload(i, size) for i, size in enumerate(sizes)]
    received = []
    reader = threading.Thread(target=lambda: received.extend(
        sock.recv(MAX_DATAGRAM + 1) for _ in range(len(sent))))
    reader.start()
    if scheme == "udp":
        # UDP drops what overflows the receive buffer, by design: send rounds that fit it.
        budget = sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF) // 2
        start = 0
        while start < len(sent):
            end, used = start, 0
            while end < len(sent) and (end == start or used + len(sent[end])
                                       + DATAGRAM_OVERHEAD <= budget):
                used += len(sent[end]) + DATAGRAM_OVERHEAD
                end += 1
            for msg in sent[start:end]:
                assert pool.log(0, msg) == len(msg)
            pool.flush(timeout=30)
            wait_for(lambda: len(received) >= end, what=f"datagrams up to {end}")
            start = end
    else:
        # A unix datagram socket pushes back instead: the writer waits, nothing is lost.
        for msg in sent:
            assert pool.log(0, msg) == len(msg)
        pool.flush(timeout=60)
    reader.join(60)
    assert received == sent  # one datagram per message, whole, in order
    st = pool.stats(0)
    assert st["sent_messages"] == 10_000 and st["write_errors"] == 0
    # sendmmsg: several datagrams per system call, at most 64
    assert 10_000 / 64 <= st["writes"] < 10_000
    sock.settimeout(0.2)
    with pytest.raises(TimeoutError):
        sock.recv(1)  # and nothing more


@pytest.mark.parametrize("scheme", ["udp", "unixgram"])
def test_a_message_larger_than_a_datagram_is_refused_at_log_time(tmp_path, pools, scheme):
    sock, url = datagram_listener(scheme, tmp_path)
    pool = pools({"sinks": [{"url": url}, {"url": url, "framing": "newline"}]})
    with pytest.raises(logpool.MessageTooBig):
        pool.log(0, b"x" * (MAX_DATAGRAM + 1))
    # newline framing adds a byte on the wire, and the wire is what must fit.
    with pytest.raises(logpool.MessageTooBig):
        pool.log(1, b"y" * MAX_DATAGRAM)
    assert pool.log(1, b"y" * (MAX_DATAGRAM - 1)) == MAX_DATAGRAM - 1
    assert pool.log(0, b"x" * MAX_DATAGRAM) == MAX_DATAGRAM
    pool.flush(timeout=30)
    got = sorted([sock.recv(MAX_DATAGRAM + 1), sock.recv(MAX_DATAGRAM + 1)])
    assert got == [b"x" * MAX_DATAGRAM, b"y" * (MAX_DATAGRAM - 1) + b"\n"]
    assert pool.stats(0)["dropped_too_big"] == 1 and pool.stats(1)["dropped_too_big"] == 1


def test_config_refuses_what_a_datagram_cannot_do():
    with pytest.raises(logpool.ConfigError, match="octet-counting frames a stream"):
        logpool.Pool({"sinks": [{"url": "udp://127.0.0.1:514", "framing": "octet-counting"}]})
    with pytest.raises(logpool.ConfigError, match="larger than a datagram can carry"):
        logpool.Pool({"sinks": [{"url": "udp://127.0.0.1:514", "max_message_size": 70000}]})
    # A pool-wide value is a default for every sink: datagram sinks cap it.
    from logpool import config
    cfg = config.parse({"sinks": ["udp://127.0.0.1:514", "tcp://127.0.0.1:514"],
                        "max_message_size": 70000})
    assert [s.max_message_size for s in cfg.sinks] == [MAX_DATAGRAM, 70000]


def test_udp_send_errors_are_counted_and_the_sink_recovers(pools):
    # A port nobody listens on: the kernel answers with ICMP port unreachable, which the
    # next send on the connected socket reports as ECONNREFUSED.
    probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()
    pool = pools({"sinks": [{"url": f"udp://127.0.0.1:{port}"}], "retry_interval_ms": 10,
                  "max_retry_interval_ms": 50, "periodic_flush_ms": 5})
    seq = 0

    def errors_seen():
        nonlocal seq
        pool.log(0, b"before %d" % seq)
        seq += 1
        return pool.stats(0)["write_errors"] >= 3

    wait_for(errors_seen, interval=0.01, what="refused sends counted")
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", port))
    sock.settimeout(30)
    for i in range(100):
        pool.log(0, b"after %d" % i)
    pool.flush(timeout=30)
    got = []
    while b"after 99" not in got:
        got.append(sock.recv(100))
    after = [m for m in got if m.startswith(b"after")]
    assert after == [b"after %d" % i for i in range(100)]
    st = pool.stats(0)
    assert st["reconnects"] >= 3 and st["writer_errors"] == 0


def test_a_datagram_the_socket_cannot_take_is_dropped_counted_and_logged(tmp_path, pools,
                                                                          capfd):
    """EMSGSIZE cannot happen with the send buffer the writer asks for; shrink it under the
    writer (a host's wmem_max could) and check one such message cannot wedge the sink."""
    from logpool import _embedded
    sock, url = datagram_listener("unixgram", tmp_path)
    pool = pools({"sinks": [{"url": url}]})
    pool.log(0, b"first")
    pool.flush(timeout=30)
    assert sock.recv(100) == b"first"
    writer = _embedded.started_pool(pool._address)[1][0]
    writer.transport.sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)  # kernel: 8 KiB
    pool.log(0, b"x" * 20_000)
    pool.log(0, b"after")
    pool.flush(timeout=30)
    assert sock.recv(MAX_DATAGRAM) == b"after"
    st = pool.stats(0)
    assert (st["dropped_unsendable"], st["write_errors"], st["sent_messages"]) == (1, 1, 2)
    assert st["abandoned_messages"] == 0 and st["buffered_messages"] == 0
    err = capfd.readouterr().err
    assert "a 20000-byte datagram is too large for the socket" in err
