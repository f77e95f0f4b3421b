"""A sink's disk spool: append-only segment files of records (length, CRC-32, frame), owned
with flock by the process that writes or adopted them, replayed oldest first. Spool (here)
owns the files of one sink and is the writer's whole interface (logpool/engine/spooling.py);
its steps live by concern, in this package: segments.py (the trusted directory, segments
created under a lock, records written and scanned), adoption.py (taking over what dead
processes left, skipping what cannot be trusted) and replay.py (reading back, re-framing,
progress on disk).

Layout: <spool_dir>/<sink name, quoted>/<seq>-<pid>.seg, and beside a segment being replayed
<segment>.done holding the offset of its first record not delivered yet, so that a process
that dies mid-replay resends at most one batch. A segment starts with a header saying the
framing and max_message_size it was written with (segments of the first format have none:
their records start at offset 0 and are taken as framed the sink's way); a record that no
longer fits the sink is re-framed at replay, or dropped and counted (dropped_spool_replay).

Ownership: a segment is created under a hidden temporary name, locked, given its header, and
only then renamed into place, so no pool ever sees an unlocked segment of a live process. A
segment whose flock can be taken belongs to a process that is gone (flocks die with their
process): any pool on the same directory and sink name may adopt it, and exactly one does.
The writer adopts at start (in its own thread, never inside logpool_new) and looks again
every RESCAN_S while it runs, so segments an old generation of workers leaves at a reload
are picked up by the live one.

Trust: the spool directory and the sink's directory must be owned by this uid or root and
not writable by group or others (created 0700), as OpenSSH, PostgreSQL and systemd require;
otherwise the sink carries on in memory only. Every file is opened relative to the sink
directory's descriptor with O_NOFOLLOW (and O_EXCL when created); entries that are not
regular files, not owned by this uid or root, or unreadable are skipped, counted
(spool_bad_entries), moved aside when possible, and logged once.

Disk: what is not delivered yet is bounded by max_spool_bytes; a segment is closed once it
holds segment_bytes (a quarter of max_spool_bytes, between 64 KiB and 8 MiB) and deleted once
delivered, the one being appended to included. So the directory holds at most
max_spool_bytes plus the delivered head of the segment being replayed.

Durability: a segment is fsynced when it is full and when the writer closes it. A SIGKILL
loses nothing that was written (the page cache survives the process); a power loss loses
what was not fsynced yet. A torn or corrupt record ends the readable part of its segment:
it is skipped, counted (spool_corrupt), never delivered as garbage; when that is found only at
replay, the records behind it leave the spooled gauges for dropped_spool_replay.
"""
import errno
import os
import time

from logpool.engine.spool import adoption, replay, segments
from logpool.engine.spool.adoption import RESCAN_S  # noqa: F401 — the writer's rescan period
from logpool.engine.spool.segments import (FIRST_SEQ, MIN_SEGMENT_BYTES, RECORD,
                                           SEGMENT_BYTES, Untrusted, new_segment,
                                           open_spool_dir, unlink, write_records)


class Spool:
    """Owned by one writer thread. report(kind, text) writes an error-log line (rate-limited
    per kind), emit(text) one that is not (each skipped entry is said once). framing and
    max_message_size are the sink's (recorded in new segments, checked at replay)."""

    def __init__(self, directory, max_bytes, report, framing=0, max_message_size=None,
                 emit=None, scan=None, url=None):
        self.dir, self.max_bytes, self.report = directory, max_bytes, report
        self.url = url  # recorded in new segments; an adopted one written for another is said
        self.other_urls = set()  # URLs of adopted segments already reported
        # scan(fd, start) -> (messages, frame bytes, readable end, torn): the writer passes
        # the C one (logpool__spool_scan, GIL released); segments.scan is its Python twin.
        self.scan = scan or segments.scan
        self.emit = emit or (lambda text: report("spool entry skipped", text))
        self.framing, self.max_message_size = framing, max_message_size
        self.segment_bytes = min(SEGMENT_BYTES, max(MIN_SEGMENT_BYTES, max_bytes // 4))
        self.segments = []  # oldest first
        self.reserved = 0  # bytes of segments being adopted (read), counted as on disk
        self.current = None  # the segment appended to
        self.batch = None  # (segment, offset after the batch, records, their bytes on disk)
        self.batch_records = ((), ())  # the batch's record lengths, the records kept
        self.batch_possible_dups = 0  # of the last batch: records sent before, unacknowledged
        self.corrupt_found = 0  # torn or corrupt records met while reading back
        self.bad_found = 0  # directory entries skipped (not regular, not ours, unreadable)
        self.lost = [0, 0, 0]  # dropped at replay: messages, bytes; re-framing's byte delta
        self.skipped = set()  # names of entries skipped once (never counted twice)
        self.dfd = None
        self.enabled = self._prepare()

    def _prepare(self):
        try:
            self.dfd = open_spool_dir(self.dir)
            return True
        except Untrusted as exc:
            self.report("spool unavailable", f"{exc}; refused: a spool directory must be owned "
                        f"by uid {os.geteuid()} (this process) or root and not writable by group "
                        f"or others; the sink carries on in memory only")
        except OSError as exc:
            self.report("spool unavailable", f"spool_dir {self.dir}: {exc.strerror or exc} "
                        f"(running as uid {os.geteuid()}); the sink carries on in memory only")
        return False

    # -- adoption (adoption.py) --

    def adopt(self, should_stop=None, lock=None):
        """Take over segments no live process owns (at start, then every RESCAN_S). Returns
        (messages, frame bytes) adopted; torn records and bad entries found are added to
        corrupt_found and bad_found. should_stop() is asked between segments (a big spool
        takes a while to read; close must not wait for all of it); lock, when given, is
        held only to change the list of segments (adoption.adopt)."""
        if not self.enabled:
            return 0, 0
        return adoption.adopt(self, should_stop, lock)

    # -- writing --

    def on_disk(self):
        return sum(s.end - s.done for s in self.segments) + self.reserved

    def append(self, frames, front=False, possible_dups=0):
        """Write frames (buffers) as records, after everything spooled (or, front=True, in a
        segment before all others: older messages, at exit). possible_dups: how many of the
        first frames were sent before without an answer (front only: recorded in the header,
        counted in resent_messages when sent again). False when the spool cannot take them
        all; then it holds none of them."""
        need = sum(len(f) for f in frames) + RECORD.size * len(frames)

        def write(fd, offset, room):
            if need > room:
                return -errno.EFBIG, 0
            return write_records(fd, offset, frames), len(frames)
        return not frames or self.append_with(write, front, possible_dups)

    def append_with(self, write, front=False, possible_dups=0):
        """Append records written by write(fd, offset, room) -> (bytes written, records), or
        (-EFBIG, 0) when they do not fit in room (nothing written), or (-errno, 0) (a partial
        write is truncated here). True once written; False when the spool cannot take them
        (then it holds none of them)."""
        if not self.enabled:
            return False
        try:
            if front:
                seq = (self.segments[0].seq if self.segments else FIRST_SEQ) - 1
                segment = self._new_segment(seq, possible_dups)
                self.segments.insert(0, segment)
            else:
                if self.current is None or self.current.end >= self.segment_bytes:
                    self._finish_current()
                    self.current = self._new_segment(max(FIRST_SEQ, time.time_ns()))
                    self.segments.append(self.current)
                segment = self.current
            written, records = write(segment.fd, segment.end, self.max_bytes - self.on_disk())
            if written == -errno.EFBIG:
                return False  # full: the messages stay in memory
            if written < 0:
                os.ftruncate(segment.fd, segment.end)  # all or nothing: no record twice
                raise OSError(-written, os.strerror(-written))
            segment.end += written
            segment.msgs += records
            segment.bytes += written - RECORD.size * records
            if front:
                os.fsync(segment.fd)
            return True
        except OSError as exc:
            self.report("spool write failed", f"{self.dir}: {exc.strerror or exc} (uid "
                        f"{os.geteuid()}); these messages stay in memory")
            return False

    def _new_segment(self, seq, possible_dups=0):
        return new_segment(self.dfd, self.dir, seq, self.framing, self.max_message_size,
                           self.url, possible_dups)

    def _finish_current(self):
        if self.current is not None:
            os.fsync(self.current.fd)
            self.current = None

    # -- reading back (replay.py) --

    def has_records(self):
        return any(s.done < s.end for s in self.segments)

    def next_batch(self):
        """(frames bytes, ends, count) of the oldest records not delivered yet, or None.
        The batch counts as delivered when batch_done() is called. A torn or corrupt record
        ends its segment's readable part (counted in self.corrupt_found; the records behind
        it in self.lost). Records that no longer fit the sink are re-framed or dropped."""
        return replay.next_batch(self)

    def batch_partial(self, sent):
        """Of the last batch only the first `sent` frames were delivered (the writer stops
        mid-batch): remember that much, so that whoever takes the segment over resends only
        the rest."""
        replay.batch_partial(self, sent)

    def batch_done(self):
        """The last batch is delivered (or was dropped whole): remember it on disk; remove a
        finished segment."""
        replay.batch_done(self)

    # -- letting go --

    def release(self, segment):
        """A delivered segment: off the disk and out of the spool."""
        unlink(self.dfd, segment)
        os.close(segment.fd)
        self.segments.remove(segment)
        if segment is self.current:
            self.current = None

    def close(self):
        """Flush to disk and let go: the flocks end, another process may adopt the rest."""
        try:
            self._finish_current()
        except OSError:
            pass
        for segment in list(self.segments):
            if segment.done >= segment.end:
                self.release(segment)
            else:
                os.close(segment.fd)
        self.segments = []
        if self.dfd is not None:
            os.close(self.dfd)
            self.dfd = None
