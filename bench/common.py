"""What the benchmarks share: paths, the run's settings (Context), the helper processes
(a fast counting sink, `logpool receive`), luajit under a stripped environment and the C
helpers (the floor, the naive design)."""
import os
import shutil
import signal
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
BUILD = os.path.join(ROOT, "build", "bench")
PY = sys.executable

from logpool import paths  # noqa: E402


class Context:
    """One run: a scratch directory, quick or full settings, the C helpers built once."""

    def __init__(self, tmp, quick=False):
        self.tmp, self.quick = tmp, quick
        self._helpers = None

    def helpers(self):
        """(libbench.so, libnaive.so): the floors and the naive def_extern design."""
        if self._helpers is None:
            self._helpers = build_helpers()
        return self._helpers

    def seconds(self, quick, full):
        return quick if self.quick else full


def build_helpers():
    os.makedirs(BUILD, exist_ok=True)
    libbench = os.path.join(BUILD, "libbench.so")
    subprocess.run(["gcc", "-O2", "-shared", "-fPIC", "-pthread", "-o", libbench,
                    os.path.join(HERE, "csrc", "benchlib.c")], check=True)
    libnaive = os.path.join(BUILD, "libnaive.so")
    subprocess.run([PY, os.path.join(HERE, "build_naive.py"), libnaive], check=True,
                   stdout=subprocess.DEVNULL)
    return libbench, libnaive


class FastSink:
    """bench/fast_sink.py in its own process: counts bytes, fast enough not to be the limit."""

    def __init__(self, tmp, name="sink.sock", listen=None, tls_files=()):
        self.path = os.path.join(tmp, name)
        self.proc = subprocess.Popen([PY, os.path.join(HERE, "fast_sink.py"),
                                      listen or self.path, *tls_files],
                                     stdout=subprocess.PIPE, text=True)
        ready, self.url = self.proc.stdout.readline().split()
        assert ready == "ready"

    def stop(self):
        self.proc.send_signal(signal.SIGTERM)
        out = self.proc.communicate(timeout=30)[0]
        return int(out.split()[-1])


class Receive:
    """`python -m logpool receive` as a separate process, writing to a file."""

    def __init__(self, listen, out):
        self.listen, self.out = listen, out
        self.proc = subprocess.Popen([PY, "-m", "logpool", "receive", "--listen", listen,
                                      "--out", out], stderr=subprocess.PIPE, text=True,
                                     cwd=ROOT)
        line = self.proc.stderr.readline()
        assert "listening on" in line, line
        self.url = line.rsplit(" ", 1)[1].strip()

    def stop(self, sig=signal.SIGTERM):
        self.proc.send_signal(sig)
        self.proc.wait(timeout=60)
        self.proc.stderr.close()


def luajit(*args, timeout=600):
    """Run a bench/*.lua script under `env -i` (as nginx would: no environment); its stdout."""
    out = subprocess.run(["env", "-i", shutil.which("luajit"), *args], capture_output=True,
                         text=True, timeout=timeout)
    if out.returncode != 0:
        raise RuntimeError(out.stdout + out.stderr)
    return out.stdout


def lua_script(name):
    return os.path.join(HERE, name)


def library_args():
    """liblogpool.so and logpool.h, the first arguments of every bench/*.lua."""
    return paths.lib_path(), paths.header_path()


def test_ca(tmp, name):
    """The tests' throwaway CA (tests/tlsca.py), for TLS sinks."""
    sys.path.insert(0, os.path.join(ROOT, "tests"))
    from tlsca import TestCA
    return TestCA(tmp, name=name)
