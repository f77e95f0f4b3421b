"""The disk spool's side of a sink's writer (a part of SinkWriter, in a file of its own):
adopting orphaned segments at start and while running, spilling the producer chain when
the sink cannot deliver, replaying spooled records before what is in memory, and spooling
what is left at exit. The segment files themselves are logpool/engine/spool/'s.

Spilling never waits for the transport: a Spiller thread per spooled sink sleeps in C until
the producers' buffered bytes reach the spill mark (half of max_buffer_length), and then
moves the producer chain to the spool, whatever the writer is doing (connecting, in an
opening exchange, blocked in a write, awaiting an answer, replaying). One lock (spool_lock)
serialises every use of the Spool object and every move between memory and the spool; the
order stays: the writer's pending list, then the spool, then the producer chain (the writer
takes the chain only when the spool holds nothing)."""
import os
import threading
import time

from logpool.engine.report import describe
from logpool.engine.spool import RESCAN_S, Spool
from logpool.transports.base import SLICE_S

SPOOL_CORRUPT, SPOOL_FULL, SPOOL_WRITTEN, SPOOL_BAD_ENTRY = 0, 1, 2, 3  # ..._spool_count


class Spiller(threading.Thread):
    """Moves the producer chain to the spool as soon as producers pass the spill mark. It
    inherits the writer's blocked signal mask (started from the writer thread)."""

    def __init__(self, writer):
        super().__init__(name=f"logpool-spiller-{writer.sink.index}", daemon=True)
        self.writer = writer

    def run(self):
        w = self.writer
        lib = w.lib
        failures = 0
        while True:
            now = time.monotonic()
            if now < w.spill_blocked_until:  # the spool is full: idle until the next try,
                # looking again every slice: a delivered replay batch makes room and resets it
                mode = lib.LOGPOOL__WAIT_SPILLER_IDLE
                wait_s = min(w.spill_blocked_until - now, SLICE_S)
            else:
                mode, wait_s = lib.LOGPOOL__WAIT_FOR_SPILL, 1.0
            r = lib.logpool__sink_wait(w.c, mode, max(1, int(wait_s * 1000)))
            if r == lib.LOGPOOL__WAIT_STOP:
                return
            if r != lib.LOGPOOL__WAIT_SPILL:
                continue
            try:
                w._spill()
                failures = 0
            except Exception as exc:  # noqa: BLE001 — never dies silently (trap 8)
                failures += 1
                lib.logpool__sink_count(w.c, lib.LOGPOOL__WRITER_ERRORS, 1)
                w.reporter.report("spill failed", f"{type(exc).__name__}: {exc}; the "
                                  f"messages stay in memory")
                w.spill_blocked_until = time.monotonic() + w.backoff.compute(failures)


class SpoolingWriter:
    """Methods of SinkWriter (self.lib, self.c, self.sink, self.spool, self.reporter...)."""

    spiller = None
    unseen = 0  # pending messages sent without an answer when the connection went

    def _open_spool(self):
        """Open the spool and adopt what earlier processes left, in this thread (reading it
        costs about a second per GiB; logpool_new does not wait for it, flush does)."""
        try:
            self.spool = Spool(self.sink.spool_dir, self.sink.max_spool_bytes,
                               self.reporter.report, self.sink.framing_code,
                               self.sink.max_message_size, self.reporter.emit, self._scan,
                               url=" ".join(c[0] for c in self.sink.collectors))
            if self.spool.enabled:  # before adopting: a big backlog takes seconds to read
                self.spiller = Spiller(self)
                self.spiller.start()
            self._adopt()
        except Exception as exc:  # noqa: BLE001 — the sink carries on in memory, said once
            self.reporter.report("spool unavailable", f"{self.sink.spool_dir}: {describe(exc)}")
        finally:
            self.lib.logpool__sink_set_adopting(self.c, 0)

    def _scan(self, fd, start):
        """Spool.scan in C, with the GIL released: (messages, bytes, end, torn)."""
        counts, end = self.ffi.new("uint64_t[2]"), self.ffi.new("int64_t *")
        r = self.lib.logpool__spool_scan(fd, start, counts, counts + 1, end)
        if r < 0:
            raise OSError(-r, os.strerror(-r))
        return counts[0], counts[1], end[0], r

    def _adopt(self):
        """Take over segments no live process owns: at start, then every RESCAN_S (an old
        generation of workers leaves its segments when it exits, e.g. at a reload)."""
        self.next_rescan = time.monotonic() + RESCAN_S
        if self.spool is None or not self.spool.enabled:
            return
        # The lock only while the list of segments changes: the spiller appends meanwhile.
        msgs, nbytes = self.spool.adopt(self._should_stop, self.spool_lock)
        if msgs:
            self.lib.logpool__sink_adopted(self.c, msgs, nbytes)
        self._count_spool_findings()

    def _maybe_adopt(self):
        if self.spool is not None and time.monotonic() >= self.next_rescan:
            try:
                self._adopt()
            except Exception as exc:  # noqa: BLE001 — never break a connection over it
                self.reporter.report("spool rescan failed", f"{self.sink.spool_dir}: "
                                     f"{describe(exc)}; trying again in {RESCAN_S:.0f} s")

    def _spill(self):
        """Move the producer chain to the spool (oldest memory stays first: the pending list
        is sent before the spool, the spool before the chain). False when it could not."""
        lib, c = self.lib, self.c
        with self.spool_lock:
            if self.spool is None or not self.spool.enabled or \
                    lib.logpool__sink_spill_take(c) == 0:
                return True
            written = self.ffi.new("uint32_t *")

            def write(fd, offset, room):
                n = lib.logpool__sink_spill_write(c, fd, offset, room, written)
                return n, (written[0] if n >= 0 else 0)
            if self.spool.append_with(write):
                lib.logpool__sink_spill_done(c, written[0])
                return True
            lib.logpool__sink_spill_undo(c)  # the spool is full: memory holds it, EFULL next
        # Nothing frees room but a delivered batch: no new attempt before the retry
        # schedule's next step (or that delivery), so a full spool never spins the writer.
        self.spill_blocked_until = time.monotonic() + self.backoff.compute(max(1, self.failures))
        return False

    def _may_spill(self):
        return (self.spool is not None and self.spool.enabled
                and time.monotonic() >= self.spill_blocked_until)

    def _replay_next(self):
        """Put the oldest spooled records on the (empty) pending list. True if it did."""
        if self.spool is None:
            return False
        with self.spool_lock:
            if not self.spool.has_records():
                return False
            batch = self.spool.next_batch()
            self._count_spool_findings()
            if batch is None:
                return False
            data, ends, count = batch
            ends_c = self.ffi.new("uint32_t[]", ends)
            if self.lib.logpool__sink_inject(self.c, data, len(data), ends_c, count) != 0:
                return False
            # Sent by an earlier connection or generation without an answer: each may
            # arrive twice (counted where the duplicate arises).
            self.chain.count_resent(self.spool.batch_possible_dups)
        self.replaying, self.replay_count = True, count
        return True

    def _replay_done(self):
        with self.spool_lock:
            self.spool.batch_done()

    def _count_spool_findings(self):
        """Move what the spool found (torn records, bad entries, records dropped at replay)
        into the sink's counters; the spool logged bad entries itself, once each."""
        spool, lib = self.spool, self.lib
        if spool.corrupt_found:
            found, spool.corrupt_found = spool.corrupt_found, 0
            lib.logpool__sink_spool_count(self.c, SPOOL_CORRUPT, found)
            self.reporter.report("spool torn records", f"{found} torn or corrupt records "
                                 f"skipped in {self.sink.spool_dir} (a process died while "
                                 f"writing them, or the file was damaged); counted in "
                                 f"spool_corrupt")
        if spool.bad_found:
            found, spool.bad_found = spool.bad_found, 0
            lib.logpool__sink_spool_count(self.c, SPOOL_BAD_ENTRY, found)
        if any(spool.lost):
            (msgs, nbytes, reframed), spool.lost = spool.lost, [0, 0, 0]
            lib.logpool__sink_spool_settle(self.c, msgs, nbytes, reframed)
            if msgs:
                self.reporter.report("spooled messages dropped", f"{msgs} spooled messages "
                                     f"dropped at replay from {self.sink.spool_dir}: behind a "
                                     f"corrupt record, or larger than max_message_size "
                                     f"{self.sink.max_message_size} now; counted in "
                                     f"dropped_spool_replay")

    def _spool_at_exit(self):
        """At close, what is still in memory goes to the spool rather than being abandoned:
        the pending list in front of everything spooled (it is older), the chain after."""
        lib, c = self.lib, self.c
        if self.spiller is not None:
            self.spiller.join()  # it left at stop; the spool is the writer's alone now
        try:
            pending = lib.logpool__sink_pending_messages(c)
            saved = False
            if pending and self.replaying and (self.replay_reordered or self.unseen):
                # A per-item retry reordered the batch, or some of it went out without an
                # answer (the segment must say so: possible duplicates when sent again):
                # what is left is saved as it is now, in front, and the batch read back
                # counts as done.
                with self.spool_lock:
                    saved = self._spool_pending_locked()
                    if saved:
                        self.spool.batch_done()
            if saved:
                self.replaying = False
            elif pending and self.replaying:
                # Records read back and not delivered: still in their segment file, behind
                # what of the batch was delivered (saved, so nobody sends that again; after
                # a reordering nothing is: the whole batch goes again, at least once).
                if not self.replay_reordered:
                    self.spool.batch_partial(self.replay_count - pending)
                lib.logpool__sink_consume_messages(c, pending, lib.LOGPOOL__DONE_SPOOLED)
            elif pending and not self._spool_pending():
                lib.logpool__sink_spool_count(c, SPOOL_FULL, pending)
            st = self.ffi.new("logpool_stats_t *")
            lib.logpool__sink_stats(c, st)  # the chain: what is buffered beyond the pending
            in_chain = st.buffered_messages - lib.logpool__sink_pending_messages(c)
            if not self._spill():
                lib.logpool__sink_spool_count(c, SPOOL_FULL, in_chain)
        finally:
            self.spool.close()

    def _spool_pending(self):
        """The writer's pending list (taken from the producers, not read back from the
        spool) to a segment in front of the others: it is older than anything spooled since.
        Done at exit, and when a connection broke with a batch pending (otherwise that batch
        could hold most of max_buffer_length for the whole outage while the spool is empty).
        True when written or nothing to write."""
        lib, c = self.lib, self.c
        if self.replaying or lib.logpool__sink_pending_messages(c) == 0:
            return True
        with self.spool_lock:
            return self._spool_pending_locked()

    def _spool_pending_locked(self):
        lib, c = self.lib, self.c
        lib.logpool__sink_rewind(c)
        frames, skip = [], 0
        while (n := lib.logpool__sink_message_iov(c, self.spill_iov, 1024, 1 << 62,
                                                  skip)) > 0:
            frames += [self.ffi.buffer(self.spill_iov[i].base, self.spill_iov[i].len)
                       for i in range(n)]
            skip += n
        # The first `unseen` of them went out without an answer: marked in the segment, so
        # whichever generation sends them again counts them as possible duplicates.
        if not self.spool.append(frames, front=True,
                                 possible_dups=min(self.unseen, len(frames))):
            return False
        self.unseen = 0
        lib.logpool__sink_spool_count(c, SPOOL_WRITTEN, len(frames))
        lib.logpool__sink_consume_messages(c, len(frames), lib.LOGPOOL__DONE_SPOOLED)
        return True
