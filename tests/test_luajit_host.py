"""A non-Python host: the `luajit` binary, under a stripped environment, loads the library
with plain ffi.load and the library starts Python itself (docs/architecture.md, traps 1-6)."""
import os
import signal
import subprocess

from conftest import luajit_binary, sock_path, wait_for
from logpool import paths

HOST = os.path.join(os.path.dirname(os.path.abspath(__file__)), "lua", "host.lua")
DEBIAN_LIBPYTHON = "/usr/lib/x86_64-linux-gnu/libpython3.11.so.1.0"


def run_host(mode, url, n=0, *extra, timeout=60, env=None, wrapper=()):
    cmd = [*wrapper, "env", "-i"] + [f"{k}={v}" for k, v in (env or {}).items()] + [
        luajit_binary(), HOST, mode, paths.lib_path(), paths.header_path(), url, str(n),
        *extra]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    return proc


def numbers(lines):
    return [int(line.split(b" ", 1)[0]) for line in lines]


def test_plain_ffi_load_under_env_i_delivers_everything_once_in_order(receiver):
    r = receiver()
    n = 100_000
    proc = run_host("deliver", r.url, n)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "abandoned 0" in proc.stdout
    wait_for(lambda: r.snapshot().messages >= n, timeout=60, what="all lines")
    assert numbers(r.output.lines()) == list(range(1, n + 1))
    assert "Traceback" not in proc.stderr


def test_library_stays_mapped_after_lua_collects_its_handle(receiver):
    r = receiver()
    proc = run_host("gc", r.url, 1000)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "mapped_after_gc true" in proc.stdout
    assert "abandoned 0" in proc.stdout
    wait_for(lambda: r.snapshot().messages == 1000, what="all lines")


def _mask_has(mask_hex, sig):
    return bool(int(mask_hex, 16) >> (sig - 1) & 1)


def test_writer_threads_block_signals_and_python_installs_no_handlers(receiver):
    r = receiver()
    proc = run_host("signals", r.url)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    tasks = [line.split() for line in proc.stdout.splitlines() if line.startswith("task ")]
    main = [t for t in tasks if t[1] == "main"]
    threads = [t for t in tasks if t[1] == "thread"]
    assert len(main) == 1 and threads, proc.stdout
    host_signals = (signal.SIGHUP, signal.SIGQUIT, signal.SIGUSR1, signal.SIGALRM,
                    signal.SIGTERM, signal.SIGINT, signal.SIGWINCH, signal.SIGCHLD)
    for sig in host_signals:
        assert not _mask_has(main[0][2], sig), f"{sig!r} blocked in the host's thread"
        for t in threads:
            assert _mask_has(t[2], sig), f"{sig!r} not blocked in thread {t}"
    caught = dict(line.split() for line in proc.stdout.splitlines() if line.startswith("caught"))
    # luajit itself catches SIGINT; starting Python must not add a handler for any standard
    # signal (32 and 33 are glibc's own, installed when the first thread starts).
    standard = (1 << 31) - 1
    before, after = (int(caught[k], 16) & standard for k in ("caught_before", "caught_after"))
    assert before == after, caught


def test_fork_child_neither_hangs_nor_crashes_and_parent_carries_on(receiver):
    r = receiver()
    n = 500
    proc = run_host("fork", r.url, n, timeout=30)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = proc.stdout
    assert "child_status 0" in out, out + proc.stderr
    child = next(line for line in out.splitlines() if line.startswith("child "))
    _, rc_log, new_is_null, rc_flush, rc_close, err = child.split(" ", 5)
    assert rc_log == "-5"  # LOGPOOL_ECLOSED: the pool's writers live in the parent
    assert new_is_null == "true" and "before fork" in err and "init_worker_by_lua" in err
    assert rc_flush == "-5" and int(rc_close) == 0
    assert "abandoned 0" in out
    wait_for(lambda: r.snapshot().messages == 2 * n, what="parent's lines")
    assert numbers(r.output.lines()) == list(range(1, 2 * n + 1))
    assert b"from child" not in r.output.getvalue()


def test_exit_without_close_is_flushed_by_the_c_fallback(receiver):
    r = receiver()
    n = 2000
    proc = run_host("exit", r.url, n)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "exiting" in proc.stdout
    wait_for(lambda: r.snapshot().messages == n, what="lines flushed at exit")
    assert numbers(r.output.lines()) == list(range(1, n + 1))


def test_another_libpython_in_the_process_is_refused_with_a_clear_error(receiver):
    assert os.path.exists(DEBIAN_LIBPYTHON), "Debian's libpython3.11 is a test dependency"
    r = receiver()
    proc = run_host("wrong-libpython", r.url, 0, DEBIAN_LIBPYTHON)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    line = next(line for line in proc.stdout.splitlines() if line.startswith("null "))
    assert line.startswith("null true embedded Python runtime unavailable")  # LOGPOOL_ERUNTIME
    assert "built against" in line and "/usr/lib/x86_64-linux-gnu/libpython3.11" in line


def test_unix_sink_without_permission_is_reported_with_the_uid(tmp_path, receiver):
    # Root ignores file modes; drop the capability so the sink is really unreachable, as it
    # is for an unprivileged nginx worker.
    locked = tmp_path / "locked"
    locked.mkdir()
    r = receiver("unix:" + sock_path(locked, "s.sock"))
    os.chmod(locked, 0)
    try:
        proc = run_host("deliver", r.url, 10, "300", wrapper=(
            "setpriv", "--inh-caps=-all", "--bounding-set=-dac_override,-dac_read_search"))
    finally:
        os.chmod(locked, 0o755)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "abandoned 10" in proc.stdout
    lines = [line for line in proc.stderr.splitlines() if "connect failed" in line]
    assert lines and "Permission denied (running as uid" in lines[0], proc.stderr
    assert len(lines) <= 2, "repeated connect failures must be rate-limited"
