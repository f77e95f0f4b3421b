"""A sink's disk spool: append-only segment files of records (length, CRC-32, frame), owned
with flock by the process that writes or adopted them, replayed oldest first.

(Over 400 lines on purpose: one class owns the segment files' whole life, from creation
under a lock to adoption by another process; split by step, the locking and trust rules
each step relies on would be spread over several files.)

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
import contextlib
import errno
import fcntl
import os
import stat
import struct
import time
import zlib

RECORD = struct.Struct("<II")  # frame length, CRC-32 of the frame
# Segment header: a zero length with a non-zero "CRC" (an impossible record of the first
# format, whose empty frame has CRC 0), magic, header size, framing, max_message_size.
HEADER = struct.Struct("<I4sIIQ")
MAGIC = b"LPS2"
# Its extension (readers that predate it skip to the header size): how many records at the
# segment's start were sent before and never acknowledged (possible duplicates when sent
# again), and the URL the segment was written for.
HEADER_EXT = struct.Struct("<IH")
MAX_URL_BYTES = 4096
SEGMENT_BYTES = 8 << 20  # a segment is closed at most this large ...
MIN_SEGMENT_BYTES = 64 << 10  # ... and at least this large (max_spool_bytes / 4 between)
BATCH_BYTES = 1 << 20  # read back this much at a time
SCAN_BYTES = 4 << 20  # read this much at a time when adopting
FIRST_SEQ = 10**15  # room below for segments written in front of the others (at exit)
RESCAN_S = 1.0  # a running writer looks for orphaned segments this often
STALE_TMP_S = 60.0  # an unlocked temporary segment this old was left by a dead process
O_FILE = os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK  # NONBLOCK: a FIFO named *.seg


class Untrusted(Exception):
    pass


class Segment:
    def __init__(self, name, path, fd, start, end, done, framing=None, max_message_size=None,
                 possible_dups=0, url=None):
        self.name, self.path, self.fd = name, path, fd
        self.start, self.end, self.done = start, end, done
        self.framing, self.max_message_size = framing, max_message_size  # None: first format
        self.msgs = self.bytes = 0  # records (frame bytes) between done and end
        self.possible_dups = possible_dups  # records from `done` on sent once, unacknowledged
        self.url = url  # the sink's URL when it was written (None: an older segment)

    @property
    def seq(self):
        return int(self.name.split("-", 1)[0])


def _trusted(st):
    return st.st_uid in (os.geteuid(), 0) and not st.st_mode & (stat.S_IWGRP | stat.S_IWOTH)


def _owner_ok(st):
    return st.st_uid in (os.geteuid(), 0)


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
        # the C one (logpool__spool_scan, GIL released); _scan is its Python twin.
        self.scan = scan or self._scan
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
        parent, name = os.path.split(os.path.normpath(self.dir))
        pfd = None
        try:
            pfd = self._open_dir(parent, None, parent)
            self.dfd = self._open_dir(self.dir, pfd, name)
            probe = f".probe-{os.getpid()}"
            try:
                os.unlink(probe, dir_fd=self.dfd)  # left by a dead process with our pid
            except FileNotFoundError:
                pass
            os.close(os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL | O_FILE, 0o600,
                             dir_fd=self.dfd))
            os.unlink(probe, dir_fd=self.dfd)
            return True
        except Untrusted as exc:
            self.report("spool unavailable", f"{exc}; refused: a spool directory must be owned "
                        f"by uid {os.geteuid()} (this process) or root and not writable by group "
                        f"or others; the sink carries on in memory only")
        except OSError as exc:
            self.report("spool unavailable", f"spool_dir {self.dir}: {exc.strerror or exc} "
                        f"(running as uid {os.geteuid()}); the sink carries on in memory only")
        finally:
            if pfd is not None:
                os.close(pfd)
        if self.dfd is not None:
            os.close(self.dfd)
            self.dfd = None
        return False

    @staticmethod
    def _open_dir(path, parent_fd, name):
        """A directory we trust, created 0700 when missing, opened without following a
        symlink; Untrusted otherwise."""
        flags = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
        try:
            fd = os.open(name, flags, dir_fd=parent_fd)
        except FileNotFoundError:
            if parent_fd is None:
                os.makedirs(path, mode=0o700, exist_ok=True)
            else:
                try:
                    os.mkdir(name, 0o700, dir_fd=parent_fd)
                except FileExistsError:
                    pass
            fd = os.open(name, flags, dir_fd=parent_fd)
        except OSError as exc:
            if exc.errno in (errno.ELOOP, errno.ENOTDIR) and os.path.islink(path):
                raise Untrusted(f"spool directory {path}: a symbolic link") from None
            raise
        st = os.fstat(fd)
        if not _trusted(st):
            os.close(fd)
            raise Untrusted(f"spool directory {path}: owned by uid {st.st_uid}, mode "
                            f"{stat.S_IMODE(st.st_mode):04o}")
        return fd

    # -- adoption --

    def adopt(self, should_stop=None, lock=None):
        """Take over segments no live process owns (at start, then every RESCAN_S). Returns
        (messages, frame bytes) adopted; torn records and bad entries found are added to
        corrupt_found and bad_found. should_stop() is asked between segments (a big spool
        takes a while to read; close must not wait for all of it). lock, when given, is
        held only to change the list of segments: reading them (about 2 s per GiB) leaves
        the spool to appends meanwhile (the spiller's: its own segments are locked, never
        adopted, and newer than anything adopted)."""
        lock = lock or contextlib.nullcontext()
        msgs = size = 0
        if not self.enabled:
            return 0, 0
        try:
            names = os.listdir(self.dfd)
        except OSError as exc:
            self.report("spool unreadable", f"{self.dir}: {exc.strerror or exc} (uid "
                        f"{os.geteuid()})")
            return 0, 0
        with lock:
            owned = {s.name for s in self.segments}
        for name in [n for n in sorted(names) if n.startswith(".") and n.endswith(".seg.new")]:
            self._remove_stale_tmp(name)
        candidates = [n for n in sorted(names) if n.endswith(".seg") and n not in owned
                      and n not in self.skipped]
        # Appends meanwhile keep the disk bound: what is still to be read counts as on disk.
        sizes = {name: self._size_of(name) for name in candidates}
        with lock:
            self.reserved = sum(sizes.values())
        try:
            for name in candidates:
                if should_stop is not None and should_stop():
                    break
                try:
                    segment = self._adopt_one(name)
                except OSError as exc:
                    self._skip(name, f"{exc.strerror or exc} (uid {os.geteuid()})", move=True)
                    segment = None
                with lock:
                    self.reserved -= sizes[name]
                    if segment is not None:
                        msgs, size = msgs + segment.msgs, size + segment.bytes
                        self.segments.append(segment)
                        self.segments.sort(key=lambda s: s.seq)
        finally:
            with lock:
                self.reserved = 0
        return msgs, size

    def _size_of(self, name):
        try:
            return os.stat(name, dir_fd=self.dfd, follow_symlinks=False).st_size
        except OSError:
            return 0

    def _adopt_one(self, name):
        """The orphaned segment `name`, locked and scanned; None when a live process owns it,
        it is gone, or it was skipped."""
        fd = os.open(name, os.O_RDWR | O_FILE, dir_fd=self.dfd)
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                self._skip(name, "not a regular file", move=True)
                return None
            if not _owner_ok(st):
                self._skip(name, f"owned by uid {st.st_uid}, not by uid {os.geteuid()} or root",
                           move=False)
                return None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return None  # a live process owns it
            try:  # finished and unlinked (or replaced) before we locked it
                if os.stat(name, dir_fd=self.dfd, follow_symlinks=False).st_ino != st.st_ino:
                    return None
            except FileNotFoundError:
                return None
            segment = self._read_header(name, fd)
            segment.done = self._read_done(name, segment)
            if segment.possible_dups and segment.done > segment.start:
                segment.possible_dups = max(0, segment.possible_dups - _count_records(
                    fd, segment.start, segment.done))
            if segment.url is not None and self.url is not None and segment.url != self.url \
                    and segment.url not in self.other_urls:
                self.other_urls.add(segment.url)
                self.emit(f"spool: adopting {name}, spooled for {segment.url}, into this "
                          f"sink's {self.url}: a backlog follows the sink's name (said once "
                          f"per URL)")
            segment.msgs, segment.bytes, segment.end, torn = self.scan(fd, segment.done)
            self.corrupt_found += torn
            fd = None  # the segment owns it now
            if segment.done >= segment.end:
                self._unlink(segment)  # nothing left to deliver in it
                os.close(segment.fd)
                return None
            return segment
        finally:
            if fd is not None:
                os.close(fd)

    def _read_header(self, name, fd):
        path = os.path.join(self.dir, name)
        head = os.pread(fd, HEADER.size + HEADER_EXT.size + MAX_URL_BYTES, 0)
        if len(head) >= HEADER.size:
            zero, magic, size, framing, max_size = HEADER.unpack_from(head)
            if zero == 0 and magic == MAGIC and size >= HEADER.size:
                dups, url = 0, None
                if size >= HEADER.size + HEADER_EXT.size and len(head) >= size:
                    dups, url_len = HEADER_EXT.unpack_from(head, HEADER.size)
                    at = HEADER.size + HEADER_EXT.size
                    if at + url_len <= size:
                        url = head[at:at + url_len].decode("utf-8", "replace") or None
                return Segment(name, path, fd, size, size, size, framing, max_size, dups, url)
        return Segment(name, path, fd, 0, 0, 0)  # the first format: records from offset 0

    def _read_done(self, name, segment):
        """Where delivery stopped in this segment; a progress file that cannot be trusted is
        moved aside (the segment is then sent again from its start: at least once)."""
        try:
            fd = os.open(name + ".done", os.O_RDONLY | O_FILE, dir_fd=self.dfd)
        except FileNotFoundError:
            return segment.start
        except OSError as exc:
            self._skip(name + ".done", f"{exc.strerror or exc} (uid {os.geteuid()})", move=True,
                       resend=True)
            return segment.start
        try:
            st = os.fstat(fd)
            text = os.read(fd, 64) if stat.S_ISREG(st.st_mode) and _owner_ok(st) else b"?"
        finally:
            os.close(fd)
        try:
            done = int(text.strip() or segment.start)
        except ValueError:
            done = -1
        if not segment.start <= done <= os.fstat(segment.fd).st_size:
            self._skip(name + ".done", "not a valid progress offset", move=True, resend=True)
            return segment.start
        return done

    def _scan(self, fd, start):
        """(messages, frame bytes, end of the readable part, torn records) from start, read
        in large blocks."""
        size = os.fstat(fd).st_size
        pos, msgs, nbytes = start, 0, 0
        data, data_at = b"", start
        while pos < size:
            rel = pos - data_at
            if rel + RECORD.size > len(data):
                data, data_at, rel = os.pread(fd, max(SCAN_BYTES, RECORD.size), pos), pos, 0
                if len(data) < RECORD.size:
                    return msgs, nbytes, pos, 1
            length, crc = RECORD.unpack_from(data, rel)
            if length > size - pos - RECORD.size:
                return msgs, nbytes, pos, 1
            if rel + RECORD.size + length > len(data):
                data, data_at, rel = os.pread(fd, max(SCAN_BYTES, RECORD.size + length),
                                              pos), pos, 0
            frame = data[rel + RECORD.size:rel + RECORD.size + length]
            if len(frame) != length or zlib.crc32(frame) != crc:
                return msgs, nbytes, pos, 1
            pos += RECORD.size + length
            msgs, nbytes = msgs + 1, nbytes + length
        return msgs, nbytes, pos, 0

    def _skip(self, name, why, move, resend=False):
        """An entry we cannot use: counted once, logged once, moved aside when asked."""
        self.skipped.add(name)
        self.bad_found += 1
        where = os.path.join(self.dir, name)
        text = f"spool entry skipped: {where}: {why}; counted in spool_bad_entries"
        if move:
            try:
                os.rename(name, name + ".bad", src_dir_fd=self.dfd, dst_dir_fd=self.dfd)
                text += f", moved aside to {where}.bad"
            except OSError:
                pass
        if resend:
            text += "; its segment is sent again from its start"
        self.emit(text)

    def _remove_stale_tmp(self, name):
        try:
            fd = os.open(name, os.O_RDWR | O_FILE, dir_fd=self.dfd)
        except OSError:
            return
        try:
            st = os.fstat(fd)
            if (stat.S_ISREG(st.st_mode) and _owner_ok(st)
                    and time.time() - st.st_mtime > STALE_TMP_S):
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                os.unlink(name, dir_fd=self.dfd)
        except OSError:
            pass
        finally:
            os.close(fd)

    # -- writing --

    def on_disk(self):
        return sum(s.end - s.done for s in self.segments) + self.reserved

    def _new_segment(self, seq, possible_dups=0):
        """A new segment, locked and with its header before anyone can see it."""
        while True:
            name = f"{seq:020d}-{os.getpid()}.seg"
            try:
                os.stat(name, dir_fd=self.dfd, follow_symlinks=False)
                seq -= 1  # left by a dead process with our pid: never overwrite it
                continue
            except FileNotFoundError:
                break
        tmp = f".{name}.new"
        fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_EXCL | O_FILE, 0o600, dir_fd=self.dfd)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # nobody else knows this name
            url = (self.url or "").encode("utf-8")[:MAX_URL_BYTES]
            size = HEADER.size + HEADER_EXT.size + len(url)
            header = HEADER.pack(0, MAGIC, size, self.framing, self.max_message_size or 0) + \
                HEADER_EXT.pack(min(possible_dups, 2**32 - 1), len(url)) + url
            if os.pwrite(fd, header, 0) != size:
                raise OSError(errno.EIO, "short write of a segment header")
            os.rename(tmp, name, src_dir_fd=self.dfd, dst_dir_fd=self.dfd)
        except BaseException:
            os.close(fd)
            try:
                os.unlink(tmp, dir_fd=self.dfd)
            except OSError:
                pass
            raise
        return Segment(name, os.path.join(self.dir, name), fd, size, size, size, self.framing,
                       self.max_message_size, possible_dups, self.url)

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
            return _write_records(fd, offset, frames), len(frames)
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
        ends its segment's readable part (counted in self.corrupt_found; the records behind
        it in self.lost). Records that no longer fit the sink are re-framed or dropped."""
        while self.segments:
            segment = next((s for s in self.segments if s.done < s.end), None)
            for finished in [s for s in self.segments if s.done >= s.end and s is not segment]:
                self._release(finished)
            if segment is None:
                return None
            frames, pos, disk_bytes = self._read_records(segment)
            if pos == 0:  # nothing readable left in it (a header cut short at its end)
                if segment.done < segment.end:
                    self._cut(segment, 0, 0, 0)
                self._release(segment)
                continue
            self.batch = (segment, segment.done + pos, len(frames), disk_bytes)
            self.batch_possible_dups = min(segment.possible_dups, len(frames))
            lengths = [len(f) for f in frames]
            frames, kept = self._fit(segment, frames)
            self.batch_records = (lengths, kept)
            if not frames:  # every record of this batch dropped: on to the next ones
                self.batch_done()
                continue
            ends, end = [], 0
            for frame in frames:
                end += len(frame)
                ends.append(end)
            return b"".join(frames), ends, len(frames)
        return None

    def _read_records(self, segment):
        """Up to BATCH_BYTES of whole records from segment.done: (frames, bytes read, frame
        bytes)."""
        data = os.pread(segment.fd, min(segment.end - segment.done, BATCH_BYTES + 65536),
                        segment.done)
        frames, pos, total = [], 0, 0
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
                self._cut(segment, pos, len(frames), total)
                break
            frames.append(frame)
            total += length
            pos += RECORD.size + length
        return frames, pos, total

    def _cut(self, segment, pos, readable_msgs, readable_bytes):
        """A corrupt record at segment.done + pos: what follows cannot be trusted."""
        self.corrupt_found += 1
        segment.end = segment.done + pos
        lost_msgs = max(0, segment.msgs - readable_msgs)
        lost_bytes = max(0, segment.bytes - readable_bytes)
        self.lost[0] += lost_msgs
        self.lost[1] += lost_bytes
        segment.msgs -= lost_msgs
        segment.bytes -= lost_bytes

    def _fit(self, segment, frames):
        """(frames as the sink frames them now, the index of each one's record): re-framed
        when the segment was written with another framing, dropped (counted in self.lost)
        when larger than max_message_size."""
        framing = self.framing if segment.framing is None else segment.framing
        limit = self.max_message_size
        if framing == self.framing and (limit is None or (
                segment.max_message_size and segment.max_message_size <= limit)):
            return frames, range(len(frames))  # written the sink's way: as they are
        fitted, kept = [], []
        for i, frame in enumerate(frames):
            new = frame if framing == self.framing else _frame(_unframe(frame, framing),
                                                              self.framing)
            if limit is not None and len(new) > limit:
                self.lost[0] += 1
                self.lost[1] += len(frame)
                continue
            self.lost[2] += len(new) - len(frame)
            fitted.append(new)
            kept.append(i)
        return fitted, kept

    def batch_partial(self, sent):
        """Of the last batch only the first `sent` frames were delivered (the writer stops
        mid-batch): remember that much, so that whoever takes the segment over resends only
        the rest."""
        if self.batch is None or sent <= 0:
            return
        segment = self.batch[0]
        lengths, kept = self.batch_records
        upto = kept[min(sent, len(kept)) - 1] + 1  # records up to the last one delivered
        self.batch = (segment, segment.done + sum(RECORD.size + n for n in lengths[:upto]),
                      upto, sum(lengths[:upto]))
        self.batch_done()

    def batch_done(self):
        """The last batch is delivered (or was dropped whole): remember it on disk; remove a
        finished segment."""
        if self.batch is None:
            return
        segment, offset, records, disk_bytes = self.batch
        self.batch = None
        segment.done = offset
        segment.msgs = max(0, segment.msgs - records)
        segment.bytes = max(0, segment.bytes - disk_bytes)
        segment.possible_dups = max(0, segment.possible_dups - records)
        if segment.done >= segment.end:
            self._release(segment)  # the one appended to as well: the disk bound
            return
        tmp = f"{segment.name}.done.tmp"
        try:
            try:
                os.unlink(tmp, dir_fd=self.dfd)  # whatever is there, a symlink included
            except FileNotFoundError:
                pass
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | O_FILE, 0o600,
                         dir_fd=self.dfd)
            try:
                os.write(fd, str(offset).encode())
            finally:
                os.close(fd)
            os.rename(tmp, segment.name + ".done", src_dir_fd=self.dfd, dst_dir_fd=self.dfd)
        except OSError as exc:  # a full disk: delivery goes on; a restart may resend more
            self.report("spool progress not saved", f"{segment.path}.done: "
                        f"{exc.strerror or exc} (uid {os.geteuid()}); a process that takes "
                        f"this segment over later resends from the last saved position")

    def _unlink(self, segment):
        for name in (segment.name, segment.name + ".done"):
            try:
                os.unlink(name, dir_fd=self.dfd)
            except FileNotFoundError:
                pass

    def _release(self, segment):
        self._unlink(segment)
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
        if self.dfd is not None:
            os.close(self.dfd)
            self.dfd = None


FRAMING_RAW, FRAMING_NEWLINE, FRAMING_OCTETS = 0, 1, 2  # enum logpool__framing


def _unframe(frame, framing):
    """The message a frame was made from (newline framing: without its last newline)."""
    if framing == FRAMING_NEWLINE:
        return frame[:-1] if frame.endswith(b"\n") else frame
    if framing == FRAMING_OCTETS:
        space = frame.find(b" ", 0, 12)
        if space > 0 and frame[:space].isdigit() and int(frame[:space]) == len(frame) - space - 1:
            return frame[space + 1:]
    return frame


def _frame(msg, framing):
    """The frame log_cdata makes of msg."""
    if framing == FRAMING_NEWLINE:
        return msg if msg.endswith(b"\n") else msg + b"\n"
    if framing == FRAMING_OCTETS:
        return b"%d %s" % (len(msg), msg)
    return msg


def _count_records(fd, start, end):
    """Records between two offsets of a segment (delivered ones, at adoption)."""
    count, pos = 0, start
    while pos + RECORD.size <= end:
        length, _ = RECORD.unpack(os.pread(fd, RECORD.size, pos))
        pos += RECORD.size + length
        count += 1
    return count


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
