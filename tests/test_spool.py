"""The disk spool: outages longer than the memory buffer, exits and restarts, torn records,
a full or unwritable spool, and several processes sharing one spool_dir."""
import os
import signal
import subprocess
import threading
import time

import logpool
from conftest import PYTHON, ROOT, message, parse_line, sock_path, wait_for

FAST = {"retry_interval_ms": 20, "max_retry_interval_ms": 100}


def seqs(lines):
    return [parse_line(line + b"\n")[1] for line in lines]


def spool_config(url, spool_dir, **extra):
    return {"sinks": [{"url": url, "name": "app"}], "spool_dir": str(spool_dir),
            "max_buffer_length": 64 * 1024, **FAST, **extra}


def segments(spool_dir, sink="app"):
    d = os.path.join(spool_dir, sink)
    return sorted(f for f in os.listdir(d) if f.endswith(".seg")) if os.path.isdir(d) else []


def log_patiently(pool, data):
    """A Python producer in a tight loop can outrun the writer, which needs the GIL to spill
    (an nginx worker's LuaJIT never holds it): on EFULL, retry; nothing is refused for good."""
    while True:
        try:
            return pool.log(0, data)
        except logpool.BufferFull:
            time.sleep(0.001)


def test_twenty_buffers_into_a_dead_sink_are_spooled_then_delivered_once_in_order(
        tmp_path, receiver):
    url = "unix:" + sock_path(tmp_path, "late.sock")
    config = spool_config(url, tmp_path / "spool")
    pool = logpool.Pool(config)
    n = 20 * 64 * 1024 // 100
    for i in range(n):
        log_patiently(pool, message(0, i, length=100))
    st = pool.stats(0)
    assert st["accepted_messages"] == n and st["spool_writes"] > 0
    assert pool.close(1) == 0  # nothing abandoned: what was in memory went to the spool
    st = pool.stats(0)
    assert st["spooled_messages"] == n and st["abandoned_messages"] == 0
    assert segments(tmp_path / "spool")

    r = receiver(url)  # the collector comes back; a new pool (a restarted process)
    again = logpool.Pool(config)
    try:
        again.flush(timeout=60)  # waits for what the writer adopts, too
        assert again.stats(0)["sent_messages"] == n  # adopted by the writer, then sent
        wait_for(lambda: r.snapshot().messages >= n, what="the receiver reading it all")
        assert seqs(r.output.lines()) == list(range(n))  # once each, in order
        st = again.stats(0)
        assert st["spool_replayed"] == n and st["sent_messages"] == n
        assert st["spooled_messages"] == 0 and st["spool_corrupt"] == 0
    finally:
        again.close(5)
    assert segments(tmp_path / "spool") == []  # delivered segments are deleted


def test_spooled_messages_go_out_before_newer_ones_in_memory(tmp_path, receiver):
    url = "unix:" + sock_path(tmp_path, "order.sock")
    pool = logpool.Pool(spool_config(url, tmp_path / "spool"))
    try:
        n = 3000
        for i in range(n):
            log_patiently(pool, message(0, i, length=100))
        wait_for(lambda: pool.stats(0)["spooled_messages"] > 0, what="a spill")
        for i in range(n, n + 200):  # newer, in memory
            log_patiently(pool, message(0, i, length=100))
        r = receiver(url)
        pool.flush(timeout=60)
        wait_for(lambda: r.snapshot().messages >= n + 200, what="the receiver reading it all")
        assert seqs(r.output.lines()) == list(range(n + 200))
    finally:
        pool.close(5)


PRODUCER = """
import logpool, sys, time
pool = logpool.Pool({config!r})
i = 0
while True:
    try:
        pool.log(0, b"%08d " % i + b"x" * 90 + b"\\n")
        i += 1
    except logpool.BufferFull:
        time.sleep(0.001)
    if i % 1000 == 0 and pool.stats(0)["spool_writes"] > 20000:
        print("spilled", flush=True)
        time.sleep(0.01)
"""


def test_a_process_sigkilled_mid_spill_leaves_a_spool_the_next_pool_delivers(tmp_path,
                                                                              receiver):
    url = "unix:" + sock_path(tmp_path, "killed.sock")
    config = spool_config(url, tmp_path / "spool")
    proc = subprocess.Popen([PYTHON, "-c", PRODUCER.format(config=config)],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                            cwd=ROOT)
    assert proc.stdout.readline().strip() == "spilled"
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=15)
    # A power loss could also cut the last record short: make sure a torn tail is there.
    last = os.path.join(tmp_path / "spool", "app", segments(tmp_path / "spool")[-1])
    with open(last, "r+b") as f:
        f.truncate(os.path.getsize(last) - 7)
    r = receiver(url)
    pool = logpool.Pool(config)
    try:
        pool.flush(timeout=60)  # the writer adopts, then delivers
        spooled = pool.stats(0)["spool_replayed"]
        assert spooled > 20000 and pool.stats(0)["sent_messages"] == spooled
        assert pool.stats(0)["spool_corrupt"] == 1  # the torn record: skipped, counted
        wait_for(lambda: r.snapshot().messages >= spooled, what="the receiver reading it all")
        got = [int(line.split()[0]) for line in r.output.lines()]
        assert got == list(range(spooled))  # every whole record, in order, nothing garbled
        assert all(line.endswith(b"x" * 90) for line in r.output.lines())
    finally:
        pool.close(5)


def test_a_full_spool_refuses_and_counts_what_it_cannot_take(tmp_path):
    url = "unix:" + sock_path(tmp_path, "never.sock")
    pool = logpool.Pool(spool_config(url, tmp_path / "spool", max_spool_bytes=256 * 1024))
    offered = full = 0
    while full < 100:
        offered += 1
        try:
            pool.log(0, message(0, offered, length=100))
        except logpool.BufferFull:
            full += 1  # memory and spool both full: only now
            time.sleep(0.0005)
    abandoned = pool.close(0)
    st = pool.stats(0)
    on_disk = sum(os.path.getsize(os.path.join(tmp_path / "spool", "app", s))
                  for s in segments(tmp_path / "spool"))
    assert on_disk <= 256 * 1024 and st["spooled_messages"] > 0
    assert st["dropped_full"] == full
    assert abandoned == st["dropped_spool_full"] > 0  # what the spool could not take
    assert st["accepted_messages"] == st["spooled_messages"] + abandoned


def test_an_unwritable_spool_dir_is_said_once_and_the_sink_carries_on_in_memory(
        tmp_path, receiver, capfd):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    url = "unix:" + sock_path(tmp_path, "mem.sock")
    pool = logpool.Pool(spool_config(url, blocker / "spool"))
    try:
        for i in range(100):
            pool.log(0, message(0, i))
        r = receiver(url)
        pool.flush(timeout=30)
        wait_for(lambda: r.snapshot().messages >= 100, what="the receiver reading it all")
        assert seqs(r.output.lines()) == list(range(100))
    finally:
        pool.close(5)
    err = capfd.readouterr().err
    assert err.count("spool unavailable") == 1
    assert f"(running as uid {os.geteuid()}); the sink carries on in memory only" in err


def test_two_pools_racing_to_adopt_orphans_deliver_each_record_once(tmp_path, receiver):
    dead = "unix:" + sock_path(tmp_path, "dead.sock")
    spool = tmp_path / "spool"
    n = 0
    for round_ in range(3):  # three exited processes' worth of segments
        pool = logpool.Pool(spool_config(dead, spool))
        for _ in range(2000):
            log_patiently(pool, message(0, n, length=100))
            n += 1
        assert pool.close(0) == 0
    assert len(segments(spool)) >= 3
    receivers = [receiver(), receiver()]
    pools, started = [], threading.Barrier(2)

    def adopt(r):
        started.wait()
        pools.append(logpool.Pool(spool_config(r.url, spool)))

    threads = [threading.Thread(target=adopt, args=(r,)) for r in receivers]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    try:
        for p in pools:
            p.flush(timeout=60)
        wait_for(lambda: sum(r.snapshot().messages for r in receivers) >= n,
                 what="the receivers reading it all")
        got = seqs(receivers[0].output.lines()) + seqs(receivers[1].output.lines())
        assert sorted(got) == list(range(n))  # each record once, by one pool or the other
        assert sum(p.stats(0)["spool_replayed"] for p in pools) == n
    finally:
        for p in pools:
            p.close(5)


def test_nginx_quit_during_an_outage_then_a_new_nginx_delivers_every_line_once(
        tmp_path, receive_process):
    from test_nginx import assert_exactly_once, logpool_conf
    from logpool.tools.nginx import Nginx, wrk
    path = sock_path(tmp_path, "later.sock")
    spool = tmp_path / "spool"
    conf = logpool_conf("unix:" + path, f'spool_dir = "{spool}", max_buffer_length = 262144')
    first = Nginx(tmp_path / "nginx1", *conf, workers=2)
    first.start()
    try:
        load = wrk(first.port, seconds=2, connections=8)
        output, _ = load.communicate(timeout=60)
        assert load.returncode == 0, output
        assert first.quit() == 0  # exit_worker_by_lua: stop(5) with the collector down
    finally:
        first.kill()
    ids = first.access_ids()
    assert len(ids) > 500 and segments(spool, "main")
    rp = receive_process("unix:" + path)
    second = Nginx(tmp_path / "nginx2", *conf, workers=2)
    second.start()
    try:
        wait_for(lambda: len(rp.lines()) >= len(ids), timeout=60, what="the spool delivered")
        assert second.quit() == 0
    finally:
        second.kill()
    rp.stop()
    got = [line.decode() for line in rp.lines()]
    assert_exactly_once(ids + second.access_ids(), got)
    assert segments(spool, "main") == []
    assert "abandoned" not in first.read_error_log()
