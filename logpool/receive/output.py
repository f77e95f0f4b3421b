"""The receiver's output: whole writes, no buffer in between. A write the output refuses
leaves nothing behind: no bytes held in a Python buffer to be written later on top of the
sender's resend, and no partial message in a regular file (it is cut back to where the
write began). What was written is in the page cache when write() returns, so a reply may
follow it."""
import os
import stat
import sys


def log(text):
    """One line on stderr; a stderr that refuses it (a full disk) stops nothing."""
    try:
        print(f"logpool receive: {text}", file=sys.stderr, flush=True)
    except (OSError, ValueError):
        pass


class Output:
    """Wraps the receiver's `out`: a file object with a descriptor (written with os.write,
    after flushing whatever it buffered before), or any object with write() (and maybe
    flush()), e.g. an in-memory sink in tests. on_error(exc) is told of each failure."""

    def __init__(self, out, on_error):
        self.out = out
        self.on_error = on_error
        self.fd = None
        self.regular = False
        try:
            if hasattr(out, "flush"):
                out.flush()
            fd = out.fileno()
            self.regular = stat.S_ISREG(os.fstat(fd).st_mode)
            self.fd = fd
        except (OSError, ValueError, AttributeError):  # io.UnsupportedOperation is both
            self.fd = None

    def write(self, data):
        """True once all of data is written; False (nothing of it kept) otherwise."""
        try:
            if self.fd is None:
                self._write_object(data)
            else:
                self._write_fd(data)
        except (OSError, ValueError) as exc:
            self.on_error(exc)
            return False
        return True

    def _write_fd(self, data):
        view, written = memoryview(data), 0
        try:
            while written < len(view):
                written += os.write(self.fd, view[written:])
        except OSError:
            if written and self.regular:  # a partial write (disk full): take it back
                try:
                    os.ftruncate(self.fd, os.fstat(self.fd).st_size - written)
                except OSError as exc:
                    log(f"cannot remove {written} bytes of a message the output refused: "
                        f"{exc}")
            raise
        finally:
            view.release()

    def _write_object(self, data):
        view, written = memoryview(data), 0
        try:
            while written < len(view):
                n = self.out.write(view[written:])
                written += len(view) - written if n is None else n
            if hasattr(self.out, "flush"):
                self.out.flush()
        finally:
            view.release()
