"""The spool's files: the trusted directory, segments created under a lock and given their
header before anyone can see them, and records (length, CRC-32, frame) written and scanned.
The trust and locking rules the other steps rely on (logpool/engine/spool/__init__.py says
them) are enforced here."""
import errno
import fcntl
import os
import stat
import struct
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
SCAN_BYTES = 4 << 20  # read this much at a time when adopting
FIRST_SEQ = 10**15  # room below for segments written in front of the others (at exit)
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


def trusted(st):
    return st.st_uid in (os.geteuid(), 0) and not st.st_mode & (stat.S_IWGRP | stat.S_IWOTH)


def owner_ok(st):
    return st.st_uid in (os.geteuid(), 0)


def open_dir(path, parent_fd, name):
    """A directory we trust, created 0700 when missing, opened without following a symlink;
    Untrusted otherwise."""
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
    if not trusted(st):
        os.close(fd)
        raise Untrusted(f"spool directory {path}: owned by uid {st.st_uid}, mode "
                        f"{stat.S_IMODE(st.st_mode):04o}")
    return fd


def open_spool_dir(directory):
    """The descriptor of a sink's spool directory (and its parent) we trust and can write;
    raises Untrusted or OSError."""
    parent, name = os.path.split(os.path.normpath(directory))
    pfd = dfd = None
    try:
        pfd = open_dir(parent, None, parent)
        dfd = open_dir(directory, pfd, name)
        probe = f".probe-{os.getpid()}"
        try:
            os.unlink(probe, dir_fd=dfd)  # left by a dead process with our pid
        except FileNotFoundError:
            pass
        os.close(os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL | O_FILE, 0o600,
                         dir_fd=dfd))
        os.unlink(probe, dir_fd=dfd)
        return dfd
    except BaseException:
        if dfd is not None:
            os.close(dfd)
        raise
    finally:
        if pfd is not None:
            os.close(pfd)


def new_segment(dfd, directory, seq, framing, max_message_size, url=None, possible_dups=0):
    """A new segment, locked and with its header before anyone can see it."""
    while True:
        name = f"{seq:020d}-{os.getpid()}.seg"
        try:
            os.stat(name, dir_fd=dfd, follow_symlinks=False)
            seq -= 1  # left by a dead process with our pid: never overwrite it
            continue
        except FileNotFoundError:
            break
    tmp = f".{name}.new"
    fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_EXCL | O_FILE, 0o600, dir_fd=dfd)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # nobody else knows this name
        url_bytes = (url or "").encode("utf-8")[:MAX_URL_BYTES]
        size = HEADER.size + HEADER_EXT.size + len(url_bytes)
        header = HEADER.pack(0, MAGIC, size, framing, max_message_size or 0) + \
            HEADER_EXT.pack(min(possible_dups, 2**32 - 1), len(url_bytes)) + url_bytes
        if os.pwrite(fd, header, 0) != size:
            raise OSError(errno.EIO, "short write of a segment header")
        os.rename(tmp, name, src_dir_fd=dfd, dst_dir_fd=dfd)
    except BaseException:
        os.close(fd)
        try:
            os.unlink(tmp, dir_fd=dfd)
        except OSError:
            pass
        raise
    return Segment(name, os.path.join(directory, name), fd, size, size, size, framing,
                   max_message_size, possible_dups, url)


def read_header(directory, name, fd):
    """The segment `name` as its header describes it (none: the first format, records from
    offset 0)."""
    path = os.path.join(directory, name)
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
    return Segment(name, path, fd, 0, 0, 0)


def scan(fd, start):
    """(messages, frame bytes, end of the readable part, torn records) from start, read in
    large blocks (the Python twin of the C logpool__spool_scan)."""
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


def count_records(fd, start, end):
    """Records between two offsets of a segment (delivered ones, at adoption)."""
    count, pos = 0, start
    while pos + RECORD.size <= end:
        length, _ = RECORD.unpack(os.pread(fd, RECORD.size, pos))
        pos += RECORD.size + length
        count += 1
    return count


def write_records(fd, offset, frames):
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


def unlink(dfd, segment):
    """The segment's file and its progress file."""
    for name in (segment.name, segment.name + ".done"):
        try:
            os.unlink(name, dir_fd=dfd)
        except FileNotFoundError:
            pass
