"""A sink's disk spool: append-only segment files of records (length, CRC-32, frame), owned
with flock by the process that writes or adopted them, replayed oldest first.

Layout: <spool_dir>/<sink name, quoted>/<seq>-<pid>.seg, and beside a segment being replayed
<segment>.done holding the offset of its first record not delivered yet, so that a process
that dies mid-replay resends at most one batch. A segment whose flock can be taken belongs to
a process that is gone (flocks die with their process): any pool on the same directory and
sink name may adopt it, and exactly one does.

Durability: a segment is fsynced when it is full (8 MiB) and when the writer closes it. A
SIGKILL loses nothing that was written (the page cache survives the process); a power loss
loses what was not fsynced yet. A torn or corrupt record ends the readable part of its
segment: it is skipped, counted (spool_corrupt), never delivered as garbage.
"""
import errno
import fcntl
import os
import struct
import time
import zlib

RECORD = struct.Struct("<II")  # frame length, CRC-32 of the frame
SEGMENT_BYTES = 8 << 20
BATCH_BYTES = 1 << 20  # read back this much at a time
FIRST_SEQ = 10**15  # room below for segments written in front of the others (at exit)


class Segment:
    def __init__(self, path, fd, end, done=0):
        self.path, self.fd, self.end, self.done = path, fd, end, done

    @property
    def seq(self):
        return int(os.path.basename(self.path).split("-", 1)[0])


class Spool:
    """Owned by one writer thread. report(kind, text) writes an error-log line."""

    def __init__(self, directory, max_bytes, report):
        self.dir, self.max_bytes, self.report = directory, max_bytes, report
        self.segments = []  # oldest first
        self.current = None  # the segment appended to
        self.batch = None  # (segment, offset after the batch being delivered)
        self.corrupt_found = 0  # torn or corrupt records met while reading back
        self.enabled = self._prepare()

    def _prepare(self):
        try:
            os.makedirs(self.dir, mode=0o700, exist_ok=True)
            probe = os.path.join(self.dir, f".probe-{os.getpid()}")
            with open(probe, "wb"):
                pass
            os.unlink(probe)
            return True
        except OSError as exc:
            self.report("spool unavailable", f"spool_dir {self.dir}: {exc.strerror or exc} "
                        f"(running as uid {os.geteuid()}); the sink carries on in memory only")
            return False

    # -- adoption --

    def adopt(self):
        """Take over segments no live process owns. Returns (messages, bytes, corrupt)."""
        msgs = size = corrupt = 0
        if not self.enabled:
            return 0, 0, 0
        for name in sorted(os.listdir(self.dir)):
            if not name.endswith(".seg"):
                continue
            path = os.path.join(self.dir, name)
            try:
                fd = os.open(path, os.O_RDWR)
            except FileNotFoundError:
                continue  # adopted and finished by another pool meanwhile
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)  # a live process owns it
                continue
            if not os.path.exists(path):  # finished and unlinked before we locked it
                os.close(fd)
                continue
            try:
                done = self._read_done(path)
                n, nbytes, end, torn = self._scan(fd, done)
            except OSError as exc:
                os.close(fd)
                self._set_aside(path, exc)
                corrupt += 1
                continue
            msgs, size, corrupt = msgs + n, size + nbytes, corrupt + torn
            self.segments.append(Segment(path, fd, end, done))
        self.segments.sort(key=lambda s: s.seq)
        return msgs, size, corrupt

    def _read_done(self, path):
        try:
            with open(path + ".done") as f:
                return int(f.read().strip() or 0)
        except FileNotFoundError:
            return 0

    def _scan(self, fd, start):
        """(messages, frame bytes, end of the readable part, torn records) from start."""
        size = os.fstat(fd).st_size
        pos, msgs, nbytes = start, 0, 0
        while pos < size:
            head = os.pread(fd, RECORD.size, pos)
            if len(head) < RECORD.size:
                return msgs, nbytes, pos, 1
            length, crc = RECORD.unpack(head)
            frame = os.pread(fd, length, pos + RECORD.size) if length <= size - pos else b""
            if len(frame) != length or zlib.crc32(frame) != crc:
                return msgs, nbytes, pos, 1
            pos += RECORD.size + length
            msgs, nbytes = msgs + 1, nbytes + length
        return msgs, nbytes, pos, 0

    def _set_aside(self, path, exc):
        try:
            os.rename(path, path + ".bad")
        except OSError:
            pass
        self.report("spool segment unreadable", f"{path}: {exc.strerror or exc}; moved aside "
                    f"to {path}.bad (uid {os.geteuid()})")

    # -- writing --

    def on_disk(self):
        return sum(s.end - s.done for s in self.segments)

    def _new_segment(self, seq):
        path = os.path.join(self.dir, f"{seq:020d}-{os.getpid()}.seg")
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
        fcntl.flock(fd, fcntl.LOCK_EX)
        return Segment(path, fd, 0)

    def append(self, frames, front=False):
        """Write frames (buffers) as records, after everything spooled (or, front=True, in a
        segment before all others: older messages, at exit). False when the spool cannot take
        them all; then it holds none of them."""
        need = sum(len(f) for f in frames) + RECORD.size * len(frames)

        def write(fd, offset, room):
            return -errno.EFBIG if need > room else _write_records(fd, offset, frames)
        return not frames or self.append_with(write, front)

    def append_with(self, write, front=False):
        """Append records written by write(fd, offset, room) -> bytes written, or -EFBIG when
        they do not fit in room (nothing written), or -errno (a partial write is truncated
        here). True once written; False when the spool cannot take them (then it holds none
        of them)."""
        if not self.enabled:
            return False
        try:
            if front:
                seq = (self.segments[0].seq if self.segments else FIRST_SEQ) - 1
                segment = self._new_segment(seq)
                self.segments.insert(0, segment)
            else:
                if self.current is None or self.current.end >= SEGMENT_BYTES:
                    self._finish_current()
                    self.current = self._new_segment(max(FIRST_SEQ, time.time_ns()))
                    self.segments.append(self.current)
                segment = self.current
            written = write(segment.fd, segment.end, self.max_bytes - self.on_disk())
            if written == -errno.EFBIG:
                return False  # full: the messages stay in memory
            if written < 0:
                os.ftruncate(segment.fd, segment.end)  # all or nothing: no record twice
                raise OSError(-written, os.strerror(-written))
            segment.end += written
            if front:
                os.fsync(segment.fd)
            return True
        except OSError as exc:
            self.report("spool write failed", f"{self.dir}: {exc.strerror or exc} (uid "
                        f"{os.geteuid()}); these messages stay in memory")
            return False

    def _finish_current(self):
        if self.current is not None:
            os.fsync(self.current.fd)
            self.current = None

    # -- reading back --

    def has_records(self):
        return any(s.done < s.end for s in self.segments)

    def next_batch(self):
        """(frames bytes, ends, count) of the oldest records not delivered yet, or None.
        The batch counts as delivered when batch_done() is called. A torn or corrupt record
        ends its segment's readable part (counted in self.corrupt_found)."""
        for segment in list(self.segments):
            if segment.done >= segment.end:
                if segment is not self.current:
                    self._release(segment)
                continue
            data = os.pread(segment.fd, min(segment.end - segment.done, BATCH_BYTES + 65536),
                            segment.done)
            frames, ends, pos, total = [], [], 0, 0
            while pos + RECORD.size <= len(data) and total < BATCH_BYTES:
                length, crc = RECORD.unpack_from(data, pos)
                frame = data[pos + RECORD.size:pos + RECORD.size + length]
                if len(frame) < length and not frames:  # one record larger than the read
                    frame = os.pread(segment.fd, length, segment.done + pos + RECORD.size)
                if len(frame) < length:
                    if segment.done + pos + RECORD.size + length <= segment.end:
                        break  # the rest of this record is beyond what was read: next batch
                    frame = b""  # torn: the record runs past the end of the segment
                if len(frame) != length or zlib.crc32(frame) != crc:
                    self.corrupt_found += 1
                    segment.end = segment.done + pos  # what follows cannot be trusted
                    break
                frames.append(frame)
                total += length
                ends.append(total)
                pos += RECORD.size + length
            if frames:
                self.batch = (segment, segment.done + pos)
                return b"".join(frames), ends, len(frames)
            if segment is not self.current:
                self._release(segment)
        return None

    def batch_done(self):
        """The last batch is delivered: remember it on disk; remove a finished segment."""
        if self.batch is None:
            return
        segment, offset = self.batch
        self.batch = None
        segment.done = offset
        if segment.done >= segment.end and segment is not self.current:
            self._release(segment)
            return
        tmp = f"{segment.path}.done.tmp"
        with open(tmp, "w") as f:
            f.write(str(offset))
        os.replace(tmp, segment.path + ".done")

    def _release(self, segment):
        for path in (segment.path, segment.path + ".done"):
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass
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
                self._release(segment)
            else:
                os.close(segment.fd)
        self.segments = []


def _write_records(fd, offset, frames):
    """frames as records at offset (Python's writer, for the few written at exit): bytes
    written, or -errno."""
    parts = []
    for frame in frames:
        parts += (RECORD.pack(len(frame), zlib.crc32(frame)), frame)
    at = offset
    try:
        for first in range(0, len(parts), 1024):
            batch = parts[first:first + 1024]
            wrote = os.pwritev(fd, batch, at)
            at += wrote
            if wrote != sum(len(p) for p in batch):
                return -errno.EIO
    except OSError as exc:
        return -(exc.errno or errno.EIO)
    return at - offset
