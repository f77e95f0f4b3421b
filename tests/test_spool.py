"""The disk spool: outages longer than the memory buffer, exits and restarts, torn records,
a full or unwritable spool, and several processes sharing one spool_dir."""
import os
import signal
import subprocess
import threading
import time

import pytest

import logpool
from conftest import PYTHON, ROOT, Load, message, parse_line, sock_path, wait_for

FAST = {"retry_interval_ms": 20, "max_retry_interval_ms": 100}


def seqs(lines):
    return [parse_line(line + b"\n")[1] for line in lines]


def spool_config(url, spool_dir, **extra):
    return {"sinks": [{"url": url, "name": "app"}], "spool_dir": str(spool_dir),
            "max_buffer_length": 64 * 1024, **FAST, **extra}


def segments(spool_dir, sink="app"):
    d = os.path.join(spool_dir, sink)
    return sorted(f for f in os.listdir(d) if f.endswith(".seg")) if os.path.isdir(d) else []


def log_patiently(pool, data, sink=0, timeout=60):
    """A Python producer in a tight loop can outrun the writer, which needs the GIL to spill
    (an nginx worker's LuaJIT never holds it): on EFULL, retry; nothing is refused for good.
    A writer that never makes room fails the test (after a deadline no loaded machine needs)
    instead of hanging the suite."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return pool.log(sink, data)
        except logpool.BufferFull:
            assert time.monotonic() < deadline, f"no room for a message within {timeout} s"
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
deadline = time.monotonic() + 120  # a spool that never fills ends the test, not the suite
while time.monotonic() < deadline:
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
    deadline = time.monotonic() + 60  # a spool that never fills fails, never hangs
    while full < 100:
        assert time.monotonic() < deadline, "memory and spool never filled up"
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
    from logpool.tools.nginx import Nginx
    path = sock_path(tmp_path, "later.sock")
    spool = tmp_path / "spool"
    conf = logpool_conf("unix:" + path, f'spool_dir = "{spool}", max_buffer_length = 262144')
    first = Nginx(tmp_path / "nginx1", *conf, workers=2)
    first.start()
    try:
        with Load(first) as load:  # a count of requests, not a time: see conftest.Load
            load.wait_requests(3000)
        assert first.quit() == 0  # exit_worker_by_lua: stop(5) with the collector down
    finally:
        first.kill()
    ids = first.access_ids()
    assert len(ids) >= 3000 and segments(spool, "main")
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


# -- round two: reloads, trust, and spool states that must not stop or spin a pool --

def spooled_by_a_pool_that_exits(url, spool_dir, first, n, length=100, **extra):
    """n messages from `first` on, spooled by a pool whose collector is down and which then
    closes (its segments become orphans, as when a worker or process exits)."""
    pool = logpool.Pool(spool_config(url, spool_dir, **extra))
    for i in range(first, first + n):
        log_patiently(pool, message(0, i, length=length))
    assert pool.close(0) == 0
    assert pool.stats(0)["spooled_messages"] >= n  # and what it adopted, if anything


def seg_bytes(spool_dir, sink="app"):
    """Bytes of the segments on disk now (one the writer deletes meanwhile counts 0)."""
    d = os.path.join(spool_dir, sink)
    total = 0
    for s in segments(spool_dir, sink):
        try:
            total += os.path.getsize(os.path.join(d, s))
        except FileNotFoundError:
            pass
    return total


EXITING = """
import logpool, time, zlib
pool = logpool.Pool({config!r})
for i in range({n}):
    payload = b"x" * 80
    while True:
        try:
            pool.log(0, b"0 %d %08x %s\\n" % (i, zlib.crc32(payload), payload))
            break
        except logpool.BufferFull:
            time.sleep(0.001)
assert pool.close(0) == 0
"""


@pytest.mark.parametrize("exiting", ["a pool in this process", "another process"])
def test_a_live_pool_adopts_what_a_pool_that_exits_later_left_in_order_once_within_5_s(
        tmp_path, receiver, exiting):
    url = "unix:" + sock_path(tmp_path, "live.sock")
    spool = tmp_path / "spool"
    live = logpool.Pool(spool_config(url, spool))  # the new generation, started first
    try:
        live.flush(timeout=30)
        if exiting == "another process":  # the old one exits: its segments are orphans
            script = EXITING.format(config=spool_config(url, spool), n=3000)
            subprocess.run([PYTHON, "-c", script], cwd=ROOT, check=True, timeout=120,
                           stderr=subprocess.DEVNULL)
        else:
            spooled_by_a_pool_that_exits(url, spool, 0, 3000)
        assert segments(spool)
        r = receiver(url)  # the collector comes back; no new pool, no restart
        back = time.monotonic()
        wait_for(lambda: r.snapshot().messages >= 3000, what="the orphans delivered")
        took = time.monotonic() - back
        assert seqs(r.output.lines()) == list(range(3000))  # in order, once each
        assert took < 5, f"orphans delivered {took:.1f} s after the collector came back"
        st = live.stats(0)
        assert st["spool_replayed"] == 3000 and st["sent_messages"] == 3000
        wait_for(lambda: live.stats(0)["spooled_messages"] == 0 and not segments(spool),
                 what="the delivered segments deleted")
    finally:
        live.close(5)


def test_a_new_segment_is_never_visible_unlocked(tmp_path, monkeypatch):
    import fcntl
    from logpool.engine.spool import adoption, segments as segment_files
    sink_dir = tmp_path / "spool" / "app"
    seen_unlocked, flocks, real_flock = [], [], fcntl.flock

    class CheckingFcntl:
        """fcntl for the spool module: before each flock it takes, look for a segment
        anyone could lock (visible and unlocked)."""
        LOCK_EX, LOCK_NB, LOCK_UN = fcntl.LOCK_EX, fcntl.LOCK_NB, fcntl.LOCK_UN

        @staticmethod
        def flock(fd, op):
            flocks.append(op)
            for name in segments(tmp_path / "spool"):
                probe = os.open(sink_dir / name, os.O_RDONLY)
                try:
                    real_flock(probe, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    seen_unlocked.append(name)
                except BlockingIOError:
                    pass
                finally:
                    os.close(probe)
            return real_flock(fd, op)

    for module in (segment_files, adoption):  # every flock the spool takes
        monkeypatch.setattr(module, "fcntl", CheckingFcntl)
    pool = logpool.Pool(spool_config("unix:" + sock_path(tmp_path, "none.sock"),
                                     tmp_path / "spool"))
    try:
        for i in range(3000):
            log_patiently(pool, message(0, i, length=100))
        wait_for(lambda: pool.stats(0)["spool_writes"] > 0, what="a spill")
    finally:
        pool.close(0)  # writes a segment in front, too
    assert segments(tmp_path / "spool") and seen_unlocked == []
    assert flocks, "the check saw no flock: it looks at the wrong module"


def test_bad_spool_entries_are_skipped_counted_logged_once_and_every_sink_starts(
        tmp_path, receiver, capfd):
    dead = "unix:" + sock_path(tmp_path, "dead.sock")
    spool = tmp_path / "spool"
    spooled_by_a_pool_that_exits(dead, spool, 0, 500)
    spooled_by_a_pool_that_exits(dead, spool, 500, 500)
    sink_dir = spool / "app"
    good = segments(spool)
    (sink_dir / good[-1]).with_suffix(".seg.done").write_text("garbage\n")  # resend it
    (sink_dir / "00000000000000000001-1.seg").mkdir()  # a directory named *.seg
    os.symlink("/etc/passwd", sink_dir / "00000000000000000002-1.seg")
    os.mkfifo(sink_dir / "00000000000000000003-1.seg")
    foreign = sink_dir / "00000000000000000004-1.seg"  # someone else's: never shipped
    foreign.write_bytes((sink_dir / good[0]).read_bytes())
    os.chown(foreign, 12345, 12345)
    capfd.readouterr()
    r_app, r_other = receiver(), receiver()
    config = {"sinks": [{"url": r_app.url, "name": "app"}, {"url": r_other.url}],
              "spool_dir": str(spool), **FAST}
    pool = logpool.Pool(config)  # starts, with both sinks
    try:
        pool.log(1, message(1, 0))
        pool.flush(timeout=60)
        wait_for(lambda: r_app.snapshot().messages >= 1000 and r_other.snapshot().messages,
                 what="the receivers reading it all")
        got = seqs(r_app.output.lines())
        assert sorted(got) == list(range(1000))  # the good segments once, none of the others
        st = pool.stats(0)
        assert st["spool_bad_entries"] == 5 and pool.stats(1)["spool_bad_entries"] == 0
        assert "logpool_spool_bad_entries_total" in pool.metrics()
        err = capfd.readouterr().err
        assert err.count("spool entry skipped") == 5, err
        assert err.count("counted in spool_bad_entries") == 5
        assert "owned by uid 12345" in err and "not a regular file" in err
        assert "Is a directory" in err and "Too many levels of symbolic links" in err
        assert os.path.exists(foreign) and os.path.exists(str(sink_dir / good[-1]) + ".done.bad")
        # A look at the directory later (every second) counts and logs none of them again.
        from logpool import _embedded
        writer_thread = _embedded.started_pool(pool._address)[1][0].native_id
        spooled_by_a_pool_that_exits(dead, spool, 1000, 100)
        wait_for(lambda: r_app.snapshot().messages >= len(got) + 100, what="a later orphan")
        assert pool.stats(0)["spool_bad_entries"] == 5
    finally:
        pool.close(5)
    said = [line for line in capfd.readouterr().err.splitlines()
            if f"#{writer_thread}: " in line and "spool entry skipped" in line]
    assert said == []  # (the short-lived pool may have said its own line about the foreign one)


@pytest.mark.parametrize("spool", ["full", "unusable"])
def test_a_full_or_unusable_spool_with_the_sink_down_does_not_spin_the_writer(tmp_path, spool):
    import resource
    spool_dir = tmp_path / "spool"
    if spool == "unusable":
        (tmp_path / "a-file").write_text("not a directory")
        spool_dir = tmp_path / "a-file" / "spool"
    pool = logpool.Pool(spool_config("unix:" + sock_path(tmp_path, "down.sock"),
                                     spool_dir, max_spool_bytes=128 * 1024))
    try:
        full, i, deadline = 0, 0, time.monotonic() + 30
        while full < 50 or (spool == "full" and pool.stats(0)["spooled_messages"] == 0):
            assert time.monotonic() < deadline, "memory and spool never filled up"
            i += 1
            try:
                pool.log(0, message(0, i, length=100))
            except logpool.BufferFull:
                full += 1
                time.sleep(0.001)  # let the writer take the GIL and spill what fits

        def cpu():
            u = resource.getrusage(resource.RUSAGE_SELF)
            return u.ru_utime + u.ru_stime
        before, started = cpu(), time.monotonic()
        threading.Event().wait(2.0)  # the measurement window (nothing to wait for)
        used, wall = cpu() - before, time.monotonic() - started
        assert used < 0.25 * wall, f"{used:.2f} s of CPU in {wall:.2f} s with nothing to do"
    finally:
        pool.close(0)


def test_a_replay_in_flight_is_not_charged_to_max_buffer_length(tmp_path):
    import socket
    path = sock_path(tmp_path, "mute.sock")
    spool = tmp_path / "spool"
    spooled_by_a_pool_that_exits("unix:" + path, spool, 0, 20000, max_buffer_length=256 * 1024)
    mute = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)  # connects, never reads
    mute.bind(path)
    mute.listen(8)
    pool = logpool.Pool(spool_config("unix:" + path, spool, max_buffer_length=256 * 1024,
                                     send_timeout_ms=60000))
    try:
        wait_for(lambda: pool.stats(0)["spool_replayed"] > 0, what="a replay in flight")
        st = pool.stats(0)
        assert st["buffered_bytes"] > 256 * 1024  # a whole replay batch (up to 1 MiB)
        for i in range(100):
            pool.log(0, message(0, 100000 + i, length=100))  # never BufferFull
        assert pool.stats(0)["dropped_full"] == 0
    finally:
        mute.close()
        pool.close(0)


def test_spooled_frames_follow_a_framing_change_and_a_smaller_max_message_size(
        tmp_path, receiver, capfd):
    dead = "unix:" + sock_path(tmp_path, "dead.sock")
    spool = tmp_path / "spool"
    old = logpool.Pool(spool_config(dead, spool, framing="octet-counting"))
    for i in range(400):  # every fourth one larger than the next generation takes
        log_patiently(old, message(0, i, length=2000 if i % 4 == 3 else 100))
    assert old.close(0) == 0
    r = receiver()
    pool = logpool.Pool(spool_config(r.url, spool, framing="newline", max_message_size=1000))
    try:
        pool.flush(timeout=60)  # never wedges on its own spool
        wait_for(lambda: r.snapshot().messages >= 300, what="the receiver reading it all")
        assert seqs(r.output.lines()) == [i for i in range(400) if i % 4 != 3]  # re-framed
        st = pool.stats(0)
        assert st["dropped_spool_replay"] == 100 and st["spooled_messages"] == 0
        assert st["sent_messages"] == 300 and st["spooled_bytes"] == 0
        assert 'reason="spool_replay",sink="app"} 100.0' in pool.metrics()
    finally:
        pool.close(5)
    assert capfd.readouterr().err.count("counted in dropped_spool_replay") == 1


def test_a_relp_sink_never_wedges_on_spooled_records_larger_than_its_max_message_size(
        tmp_path, receiver):
    spool = tmp_path / "spool"
    old = logpool.Pool(spool_config("unix:" + sock_path(tmp_path, "dead.sock"), spool))
    for i in range(200):  # every fourth one larger than the RELP sink takes now
        log_patiently(old, message(0, i, length=2000 if i % 4 == 3 else 100))
    assert old.close(0) == 0
    r = receiver("relp://127.0.0.1:0")
    pool = logpool.Pool(spool_config(r.url, spool, max_message_size=1000))
    try:
        pool.flush(timeout=30)  # acknowledged: all there when flush returns
        assert seqs(r.output.lines()) == [i for i in range(200) if i % 4 != 3]
        st = pool.stats(0)
        assert st["dropped_spool_replay"] == 50 and st["sent_messages"] == 150
    finally:
        pool.close(5)


def test_segments_of_the_first_format_without_a_header_still_replay(tmp_path, receiver):
    import struct
    import zlib
    sink_dir = tmp_path / "spool" / "app"
    sink_dir.mkdir(parents=True, mode=0o700)
    os.chmod(tmp_path / "spool", 0o700)
    with open(sink_dir / "01000000000000000000-1.seg", "wb") as f:
        for i in range(100):
            frame = message(0, i)
            f.write(struct.pack("<II", len(frame), zlib.crc32(frame)) + frame)
    r = receiver()
    pool = logpool.Pool(spool_config(r.url, tmp_path / "spool"))
    try:
        pool.flush(timeout=30)
        wait_for(lambda: r.snapshot().messages >= 100, what="the receiver reading it all")
        assert seqs(r.output.lines()) == list(range(100))
    finally:
        pool.close(5)


def test_delivered_records_leave_the_disk_and_the_spool_stays_within_max_spool_bytes(
        tmp_path, receiver):
    path = sock_path(tmp_path, "onoff.sock")
    spool, limit = tmp_path / "spool", 256 * 1024
    pool = logpool.Pool(spool_config("unix:" + path, spool, max_spool_bytes=limit))
    n, most = 0, 0
    try:
        for _ in range(6):  # outages and returns: ~1.2 MB through a 256 KiB spool
            for _ in range(2000):
                log_patiently(pool, message(0, n, length=100))
                n += 1
            most = max(most, seg_bytes(spool))
            r = receiver("unix:" + path)
            pool.flush(timeout=60)  # the writer deletes a segment just after its last batch
            wait_for(lambda: seg_bytes(spool) == 0, timeout=10,
                     what="delivered records to leave the disk")
            r.stop()
        print(f"6 outages, {n * 100} bytes logged: at most {most} bytes of segments on disk "
              f"(max_spool_bytes {limit}), 0 once delivered")
        assert pool.stats(0)["spool_writes"] > 6000 and most <= limit
    finally:
        pool.close(0)


def test_adoption_runs_in_the_writer_and_flush_right_after_start_waits_for_it(
        tmp_path, receiver, monkeypatch):
    from logpool.engine import spool as spool_module
    spool = tmp_path / "spool"
    spooled_by_a_pool_that_exits("unix:" + sock_path(tmp_path, "x.sock"), spool, 0, 2000)
    release, adopting, real_adopt = threading.Event(), threading.Event(), spool_module.Spool.adopt

    def slow_adopt(self, *args):  # a big spool takes a while to read
        adopting.set()
        release.wait(60)
        return real_adopt(self, *args)
    monkeypatch.setattr(spool_module.Spool, "adopt", slow_adopt)
    r = receiver()
    pools, flushed = [], threading.Event()
    starter = threading.Thread(target=lambda: pools.append(
        logpool.Pool(spool_config(r.url, spool))))
    starter.start()
    try:
        wait_for(lambda: pools, timeout=20, what="Pool() to return while adoption runs")
        wait_for(adopting.is_set, what="the writer adopting")
        assert pools[0].stats(0)["accepted_messages"] == 0
        flusher = threading.Thread(target=lambda: (pools[0].flush(timeout=60), flushed.set()))
        flusher.start()
        assert not flushed.wait(0.2)  # flush waits for the adoption (not a sync: a check)
        release.set()
        flusher.join(60)
        assert flushed.is_set()
        assert pools[0].stats(0)["sent_messages"] == 2000  # flush returned after all of it
    finally:
        release.set()
        starter.join(60)
        for p in pools:
            p.close(5)


def test_a_spool_dir_someone_else_could_write_is_refused_in_one_clear_line(
        tmp_path, receiver, capfd):
    spool = tmp_path / "shared"
    spool.mkdir()
    os.chmod(spool, 0o777)
    r = receiver()
    pool = logpool.Pool(spool_config(r.url, spool))
    try:
        for i in range(100):
            pool.log(0, message(0, i))
        pool.flush(timeout=30)  # in memory
        wait_for(lambda: r.snapshot().messages >= 100, what="the receiver reading it all")
    finally:
        pool.close(5)
    assert os.listdir(spool) == []  # nothing created in it
    err = capfd.readouterr().err
    assert err.count("spool unavailable") == 1
    assert f"spool directory {spool}: owned by uid {os.geteuid()}, mode 0777; refused" in err
    assert "the sink carries on in memory only" in err


def test_a_sink_directory_owned_by_another_user_is_refused(tmp_path, capfd):
    (tmp_path / "spool" / "app").mkdir(parents=True, mode=0o700)
    os.chmod(tmp_path / "spool", 0o700)
    os.chown(tmp_path / "spool" / "app", 12345, 12345)
    pool = logpool.Pool(spool_config("unix:" + sock_path(tmp_path, "n.sock"),
                                     tmp_path / "spool"))
    pool.flush(timeout=30)  # the writer looked at the directory
    pool.close(0)
    assert os.listdir(tmp_path / "spool" / "app") == []
    assert f"spool directory {tmp_path / 'spool' / 'app'}: owned by uid 12345, mode 0700" \
        in capfd.readouterr().err


def test_a_symlink_planted_at_a_progress_files_temporary_name_is_not_followed(
        tmp_path, receiver):
    victim = tmp_path / "victim"
    victim.write_text("precious\n")
    spool = tmp_path / "spool"
    spooled_by_a_pool_that_exits("unix:" + sock_path(tmp_path, "x.sock"), spool, 0, 15000)
    for name in segments(spool):  # > 1 MiB each: a progress file is written mid-segment
        os.symlink(victim, spool / "app" / f"{name}.done.tmp")
    r = receiver()
    pool = logpool.Pool(spool_config(r.url, spool))
    try:
        pool.flush(timeout=60)
        wait_for(lambda: r.snapshot().messages >= 15000, what="the receiver reading it all")
    finally:
        pool.close(5)
    assert victim.read_text() == "precious\n"


def test_sink_names_dot_and_dot_dot_stay_inside_the_spool_dir(tmp_path):
    spool = tmp_path / "outer" / "spool"
    dead = "unix:" + sock_path(tmp_path, "x.sock")
    config = {"sinks": [{"url": dead, "name": ".."}, {"url": dead, "name": "."}],
              "spool_dir": str(spool), **FAST}
    pool = logpool.Pool(config)
    for sink in (0, 1):
        for i in range(1000):
            log_patiently(pool, message(sink, i, length=100), sink)
    assert pool.close(0) == 0
    assert sorted(os.listdir(spool)) == ["%2E", "%2E%2E"]
    assert segments(spool, "%2E") and segments(spool, "%2E%2E")
    assert os.listdir(tmp_path / "outer") == ["spool"]


def test_corruption_found_while_replaying_does_not_leave_messages_spooled_for_ever(
        tmp_path, receiver):
    path = sock_path(tmp_path, "c.sock")
    spool = tmp_path / "spool"
    pool = logpool.Pool(spool_config("unix:" + path, spool))  # adopted nothing: all its own
    try:
        for i in range(3000):
            log_patiently(pool, message(0, i, length=100))
        wait_for(lambda: pool.stats(0)["spooled_messages"] >= 2000, what="spills")
        name = segments(spool)[0]
        with open(spool / "app" / name, "r+b") as f:  # damaged on disk after it was written
            f.seek(os.path.getsize(spool / "app" / name) // 2)
            f.write(b"\xff" * 16)
        r = receiver("unix:" + path)
        pool.flush(timeout=60)  # returns: what is lost is counted, not waited for
        st = pool.stats(0)
        assert st["spooled_messages"] == 0 and st["spool_corrupt"] == 1
        assert st["dropped_spool_replay"] > 0
        assert st["sent_messages"] + st["dropped_spool_replay"] == st["accepted_messages"]
        wait_for(lambda: r.snapshot().messages >= st["sent_messages"], what="the receiver")
        got = seqs(r.output.lines())
        assert got == sorted(got) and len(got) == st["sent_messages"]
    finally:
        pool.close(5)


def test_a_pool_closed_mid_replay_leaves_the_rest_to_the_next_one_each_message_once(
        tmp_path, receiver):
    spool = tmp_path / "spool"
    n = 30000  # a few replay batches
    spooled_by_a_pool_that_exits("unix:" + sock_path(tmp_path, "x.sock"), spool, 0, n)
    r = receiver()
    first = logpool.Pool(spool_config(r.url, spool))
    wait_for(lambda: first.stats(0)["sent_messages"] > 0, what="the replay under way")
    assert first.close(0) == 0  # stops between (or inside) batches: nothing abandoned
    sent = first.stats(0)["sent_messages"]
    second = logpool.Pool(spool_config(r.url, spool))
    try:
        second.flush(timeout=60)
        wait_for(lambda: r.snapshot().messages >= n, what="the receiver reading it all")
        assert seqs(r.output.lines()) == list(range(n))  # once each, in order
        assert sent + second.stats(0)["sent_messages"] == n
    finally:
        second.close(5)


def test_a_writer_stopping_inside_a_replay_batch_saves_how_far_it_got(tmp_path):
    from logpool.engine.spool import Spool
    said = []
    d = tmp_path / "spool" / "app"
    old = Spool(str(d), 1 << 20, lambda kind, text: said.append(text), 0, 4096)
    frames = [message(0, i, length=2000 if i % 3 == 1 else 100) for i in range(30)]
    assert old.append(frames)
    old.close()
    reader = Spool(str(d), 1 << 20, lambda kind, text: said.append(text), 0, 1000)
    assert reader.adopt() == (30, sum(len(f) for f in frames))
    data, ends, count = reader.next_batch()  # every third one no longer fits: dropped
    assert count == 20 and reader.lost[0] == 10
    reader.batch_partial(5)  # messages 0, 2, 3, 5, 6 delivered (1 and 4 dropped)
    reader.close()
    again = Spool(str(d), 1 << 20, lambda kind, text: said.append(text), 0, 4096)
    assert again.adopt()[0] == 23  # 7 records behind the saved position
    data, ends, count = again.next_batch()
    assert seqs(data.splitlines()) == list(range(7, 30)) and said == []
    again.close()


def test_nginx_reload_during_an_outage_delivers_every_line_once_without_another_reload(
        tmp_path, receive_process):
    from test_nginx import assert_exactly_once, logpool_conf, reload_during
    from logpool.tools.nginx import Nginx
    path = sock_path(tmp_path, "back.sock")
    spool = tmp_path / "spool"
    conf = logpool_conf("unix:" + path, f'spool_dir = "{spool}", max_buffer_length = 262144')
    ng = Nginx(tmp_path / "nginx", *conf, workers=2)
    ng.start()
    rp = None
    try:
        with Load(ng) as load:  # counts of requests, not times: see conftest.Load
            load.wait_requests(1500, "requests before the reload")
            # New workers first; the old ones spool what they hold and exit (stop(5): the
            # load ends before that, so the outage holds about 3000 lines on any machine).
            reload_during(ng, load, 1500)
        during = ng.access_ids()
        assert len(during) >= 3000 and segments(spool, "main")
        rp = receive_process("unix:" + path)  # the collector comes back: no reload after
        back = time.monotonic()
        wait_for(lambda: len(rp.lines()) >= len(during), timeout=60,
                 what="the outage's lines delivered by the live workers")
        drained = time.monotonic() - back
        assert ng.requests(200, connections=4) == [200] * 200  # and new lines flow too
        wait_for(lambda: len(rp.lines()) >= len(during) + 200, what="the new lines")
        wait_for(lambda: not segments(spool, "main"), what="the spool emptied")
        assert ng.quit() == 0
    finally:
        ng.kill()
        if rp is not None:
            rp.stop()
    ids = ng.access_ids()
    assert_exactly_once(ids, [line.decode() for line in rp.lines()])
    print(f"reload during an outage: {len(during)} lines logged before the collector came "
          f"back, {len(ids) - len(during)} after; all delivered once, the outage's "
          f"{drained:.2f} s after the collector's return")
    assert drained < 5, f"the outage took {drained:.1f} s to arrive after the collector's return"


def test_nginx_worker_sigkilled_mid_spill_loses_at_most_its_memory(tmp_path, receive_process):
    from test_nginx import logpool_conf
    from logpool.tools.nginx import Nginx
    path = sock_path(tmp_path, "after.sock")
    spool, max_buffer = tmp_path / "spool", 262144
    conf = logpool_conf("unix:" + path, f'spool_dir = "{spool}", max_buffer_length = {max_buffer}')
    ng = Nginx(tmp_path / "nginx", *conf, workers=2)
    ng.start()
    rp = None
    try:
        # Load until the workers spill, however long that takes on this machine (a fixed
        # wrk time may end before 2 x 256 KiB of lines are logged on a slow one).
        with Load(ng) as load:
            wait_for(lambda: segments(spool, "main"), timeout=120, what="the workers spilling")
            victim = min(ng.worker_pids())
            os.kill(victim, signal.SIGKILL)  # mid-spill: its segments become orphans at once
            load.wait_requests(load.requests() + 1000, "requests after the kill")
        wait_for(lambda: len(ng.worker_pids()) == 2 and victim not in ng.worker_pids(),
                 what="the master replacing the worker")
        rp = receive_process("unix:" + path)
        wait_for(lambda: not segments(spool, "main"), timeout=60, what="the spool delivered")
        assert ng.quit() == 0  # the live workers deliver what they hold
    finally:
        ng.kill()
        if rp is not None:
            rp.stop()
    ids = ng.access_ids()
    got = [line.decode() for line in rp.lines()]
    assert len(got) == len(set(got)), "a line arrived twice"
    missing = set(ids) - set(got)
    frame = len(ids[0]) + 1  # a request id and its newline
    print(f"worker SIGKILLed mid-spill: {len(ids)} lines logged, {len(missing)} lost "
          f"({len(missing) * frame} bytes; its max_buffer_length is {max_buffer})")
    assert len(missing) * frame <= max_buffer  # only what was in the killed worker's memory
    assert set(got) <= set(ids)
