"""Dead letters: every message a collector rejected for good, appended to the sink's
dead_letter_path by its writer thread (never by log_cdata), one JSON object per line:

    {"time": "2026-12-04T19:20:00.123Z", "sink": "app", "url": "http://...",
     "reason": "HTTP 400 ...", "message": "the line as text"}

with "message_base64" instead of "message" when the bytes are not UTF-8. The file is
bounded by dead_letter_max_bytes: when a line would pass it, the file is renamed to PATH.1
(replacing the older one) and a new one started, so at most twice the bound is on disk.
Processes sharing the path (nginx's workers) follow each other's rotations.
A file that cannot be written is said once per kind of error (the messages are still
counted in dropped_rejected); nothing waits on it.

Replay them (the lines of one sink, to any collector that takes the format) with e.g.:

    jq -r 'select(.message) | .message' dead.jsonl | nc -q1 collector 5140
"""
import base64
import datetime
import errno
import json
import os
import stat


class DeadLetters:
    def __init__(self, path, max_bytes, sink_name, report):
        self.path, self.max_bytes, self.sink, self.report = path, max_bytes, sink_name, report
        self.fd = None
        self.size = 0

    def _open(self):
        # O_NONBLOCK: opening a FIFO for writing would wait for a reader, the writer with it.
        try:
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC |
                         os.O_NOFOLLOW | os.O_NONBLOCK, 0o600)
        except OSError as exc:
            if exc.errno == errno.ENXIO:  # a FIFO nobody reads
                raise OSError(errno.ENXIO, "not a regular file (a FIFO)") from None
            raise
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            os.close(fd)
            raise OSError(errno.EINVAL, "not a regular file")
        self.fd, self.size = fd, st.st_size

    def _follow_rotation(self):
        """Other processes (nginx's workers) append to the same file and rotate it too: a
        descriptor no longer naming PATH is reopened (else its lines would go to PATH.1, past
        the bound, and vanish at the next rotation), and the size is the file's own."""
        if self.fd is None:
            return
        mine = os.fstat(self.fd)
        try:
            now = os.stat(self.path, follow_symlinks=False)
            if (now.st_dev, now.st_ino) == (mine.st_dev, mine.st_ino):
                self.size = mine.st_size
                return
        except FileNotFoundError:
            pass
        os.close(self.fd)
        self.fd = None

    def _rotate(self):
        self._follow_rotation()  # another process may have rotated it just now
        if self.fd is not None and self.size > 0:
            os.close(self.fd)
            self.fd = None
            os.replace(self.path, self.path + ".1")
        if self.fd is None:
            self._open()

    def append(self, url, reason, messages):
        """Write one line per message (bytes-like); returns how many were written."""
        when = datetime.datetime.now(datetime.timezone.utc).isoformat(
            timespec="milliseconds").replace("+00:00", "Z")
        lines = []
        for message in messages:
            data = bytes(message)
            entry = {"time": when, "sink": self.sink, "url": url, "reason": reason}
            try:
                entry["message"] = data.decode("utf-8")
            except UnicodeDecodeError:
                entry["message_base64"] = base64.b64encode(data).decode("ascii")
            lines.append((json.dumps(entry, ensure_ascii=False) + "\n").encode("utf-8"))
        written = 0
        try:
            self._follow_rotation()
            if self.fd is None:
                self._open()
            for line in lines:
                if self.size and self.size + len(line) > self.max_bytes:
                    self._rotate()
                os.write(self.fd, line)
                self.size += len(line)
                written += 1
        except OSError as exc:
            if self.fd is not None:
                os.close(self.fd)
                self.fd = None
            self.report("dead letters not written", f"{self.path}: {exc.strerror or exc} "
                        f"(uid {os.geteuid()}); rejected messages are still counted in "
                        f"dropped_rejected")
        return written

    def close(self):
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None
