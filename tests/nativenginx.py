"""A real nginx with logpool's native module (plain nginx, no Lua by default), as the `nginx`
fixture of the module's tests. Under `make sanitize-nginx` the module is the ASan/UBSan build,
loaded with the sanitizer runtimes preloaded; any report fails the test that started it."""
import os
import socket
import subprocess
import threading

import pytest

from logpool import paths
from logpool.tools.nginx import Nginx, native_modules

# `make sanitize-nginx`: the module built under ASan/UBSan (any report aborts the worker).
ASAN_MODULE = os.environ.get("LOGPOOL_NGINX_ASAN_MODULE")


def module_path():
    return ASAN_MODULE or paths.nginx_module_path()


def sanitizer_wrapper(prefix):
    if not ASAN_MODULE:
        return ()
    runtimes = [subprocess.run(["gcc", f"-print-file-name={lib}"], capture_output=True,
                               text=True, check=True).stdout.strip()
                for lib in ("libasan.so", "libubsan.so")]
    return ("env", "LD_PRELOAD=" + " ".join(runtimes),
            f"ASAN_OPTIONS=detect_leaks=0:abort_on_error=1:log_path={prefix}/asan",
            f"UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1:log_path={prefix}/ubsan")


def assert_never_crashed(ng):
    log = ng.read_error_log()
    assert "exited on signal" not in log and "[alert]" not in log, log[-3000:]


@pytest.fixture
def nginx(tmp_path):
    started = []

    def start(http_extra="", server_extra="", workers=2, modules=None, run=True, **kwargs):
        prefix = tmp_path / f"nginx{len(started)}"
        modules = tuple(module_path() if m == paths.nginx_module_path() else m
                        for m in (modules or native_modules()))
        n = Nginx(prefix, http_extra, server_extra, workers=workers, modules=modules,
                  wrapper=sanitizer_wrapper(prefix), **kwargs)
        started.append(n)
        return n.start() if run else n

    yield start
    for n in started:
        n.kill()
    reports = [
        str(p) for n in started for p in (tmp_path / os.path.basename(n.prefix)).glob("*san.*")]
    assert not reports, "sanitizer reports: " + "".join(open(p).read() for p in reports)


class SilentUpstream:
    """An upstream that accepts and never answers: the client leaves first (499)."""

    def __init__(self):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        self.port = self.sock.getsockname()[1]
        self.accepted = []
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    def _accept(self):
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.accepted.append(conn)

    def close(self):
        self.sock.close()
        for conn in self.accepted:
            conn.close()
