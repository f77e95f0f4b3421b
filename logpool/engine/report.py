"""Error reports of a sink's writer: one line in nginx's error-log shape on stderr (which
nginx routes to its error log), rate-limited per kind; and errors described in words."""
import errno
import os
import sys
import threading
import time

REPORT_INTERVAL_S = 10.0


def describe(exc):
    if isinstance(exc, OSError) and exc.errno in (errno.EACCES, errno.EPERM):
        return f"{exc.strerror or exc} (running as uid {os.geteuid()})"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc) or type(exc).__name__


class ErrorReporter:
    """First error of each kind per sink goes to stderr (nginx's error log); repeats are
    rate-limited to one line per interval with a count."""

    def __init__(self, label, interval_s=REPORT_INTERVAL_S, stream=None, clock=time.monotonic):
        self.label = label
        self.interval_s = interval_s
        self.stream = stream
        self.clock = clock
        self.last = {}  # kind -> (time reported, suppressed since)
        self.last_error = ""

    def report(self, kind, text):
        self.last_error = f"{kind}: {text}"
        now = self.clock()
        seen = self.last.get(kind)
        if seen is not None and now - seen[0] < self.interval_s:
            self.last[kind] = (seen[0], seen[1] + 1)
            return
        more = f" ({seen[1]} more in the last {self.interval_s:.0f} s)" if seen and seen[1] else ""
        self.last[kind] = (now, 0)
        self.emit(f"{kind}: {text}{more}")

    def emit(self, text):
        """One line in the shape of nginx's own error log lines: it is where stderr ends up."""
        stream = self.stream or sys.stderr
        try:
            stamp = time.strftime("%Y/%m/%d %H:%M:%S")
            stream.write(f"{stamp} [error] {os.getpid()}#{threading.get_native_id()}: "
                         f"logpool: sink {self.label}: {text}\n")
            stream.flush()
        except (OSError, ValueError):
            pass
