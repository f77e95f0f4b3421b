"""`make install PREFIX=/opt/logpool`: an installation nginx's worker user can load.

nginx workers run as an unprivileged user (www-data, nobody). The library embeds Python: that
user must read the library, the libpython it was built against, Python's stdlib and the
venv. A checkout built with a Python under root's home (pyenv: /root is 0700) is unreadable to
it. This installs, under PREFIX, everything readable by every user:

  PREFIX/venv                 a venv of a Python the worker user can read (the build's own if
                              it is readable, else the system's /usr/bin/python3), with logpool
                              installed into it (the library is built for that Python)
  .../logpool/ngx_http_logpool_module.so   the native nginx module, beside the library
  .../logpool/lua             the Lua module

and prints the nginx lines to paste."""
import argparse
import os
import shutil
import stat
import subprocess
import sys

SYSTEM_PYTHON = "/usr/bin/python3"


def readable_by_all(path):
    """Every directory on the way is searchable by others, and the file is readable by them."""
    path = os.path.realpath(path)
    try:
        if not os.stat(path).st_mode & stat.S_IROTH:
            return False
        parent = os.path.dirname(path)
        while True:
            if not os.stat(parent).st_mode & stat.S_IXOTH:
                return False
            if parent == "/":
                return True
            parent = os.path.dirname(parent)
    except OSError:
        return False


def python_info(python):
    """(executable, libpython path) of an interpreter, or None when it cannot embed."""
    code = ("import sys, sysconfig, os; d = sysconfig.get_config_var('LIBDIR') or ''; "
            "n = sysconfig.get_config_var('LDLIBRARY') or ''; "
            "print(os.path.realpath(sys.executable)); print(os.path.join(d, n)); "
            "print(sysconfig.get_config_var('Py_ENABLE_SHARED'))")
    try:
        out = subprocess.run([python, "-c", code], capture_output=True, text=True, check=True,
                             timeout=60).stdout.splitlines()
    except (OSError, subprocess.SubprocessError):
        return None
    if len(out) != 3 or out[2] != "1" or not out[1].endswith(".so"):
        return None
    return out[0], out[1]


def choose_python(explicit=None):
    candidates = [explicit] if explicit else [sys._base_executable, SYSTEM_PYTHON]
    reasons = []
    for python in candidates:
        if not python or not os.path.exists(python):
            continue
        info = python_info(python)
        if info is None:
            reasons.append(f"{python}: no shared libpython (Python built without "
                           f"--enable-shared)")
            continue
        executable, libpython = info
        unreadable = [p for p in (executable, libpython, sysconfig_stdlib(python))
                      if not readable_by_all(p)]
        if unreadable:
            reasons.append(f"{python}: not readable by other users: {', '.join(unreadable)}")
            continue
        return python
    raise SystemExit("make install: no Python that nginx's worker user can read: "
                     + "; ".join(reasons) + ". Give one with INSTALL_PYTHON=/path/to/python3 "
                     "(Debian: apt-get install python3-dev python3-venv)")


def sysconfig_stdlib(python):
    out = subprocess.run([python, "-c", "import os, sysconfig; "
                          "print(os.path.join(sysconfig.get_paths()['stdlib'], 'os.py'))"],
                         capture_output=True, text=True, check=True, timeout=60)
    return out.stdout.strip()


def make_readable(root):
    """a+rX over the tree: the worker user reads everything, writes nothing."""
    for dirpath, dirnames, filenames in os.walk(root):
        for name in [dirpath] + [os.path.join(dirpath, f) for f in filenames]:
            if os.path.islink(name):
                continue
            mode = os.stat(name).st_mode
            extra = stat.S_IRUSR | stat.S_IRGRP | stat.S_IROTH
            if stat.S_ISDIR(mode) or mode & stat.S_IXUSR:
                extra |= stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH
            os.chmod(name, stat.S_IMODE(mode) | extra)


def installed_paths(venv_python):
    out = subprocess.run([venv_python, "-m", "logpool", "paths"], capture_output=True,
                         text=True, check=True, cwd="/").stdout
    return dict(line.split(" ", 1) for line in out.splitlines())


SNIPPET = """\
# --- logpool installed in {prefix}: nginx.conf lines ---
# top level:
load_module {module};

# in http {{}}, the native module (plain nginx):
logpool_library {lib};
logpool_pool '{{"sinks": [{{"name": "main", "url": "unix:/run/logpool/collector.sock", "framing": "newline"}}]}}';
logpool_format main '$remote_addr $request $status $body_bytes_sent';
logpool_log main main;

# or, with OpenResty / the Lua module, in http {{}}:
#   lua_package_path "{lua}/?.lua;;";
#   then `{python} -m logpool nginx-snippet` prints the Lua lines.
"""


def install(prefix, source, module, python=None):
    prefix = os.path.abspath(prefix)
    python = choose_python(python)
    venv = os.path.join(prefix, "venv")
    os.makedirs(prefix, exist_ok=True)
    os.chmod(prefix, 0o755)
    subprocess.run([python, "-m", "venv", "--clear", venv], check=True)
    venv_python = os.path.join(venv, "bin", "python")
    pip = [venv_python, "-m", "pip", "install", "-q", "--disable-pip-version-check"]
    # Built by the interpreter that runs it, against the cffi it loads (no build isolation).
    subprocess.run(pip + ["setuptools>=64", "wheel", "cffi>=1.17"], check=True, cwd=prefix)
    subprocess.run(pip + ["--no-build-isolation", source], check=True, cwd=prefix)
    paths = installed_paths(venv_python)
    package_dir = os.path.dirname(paths["lib"])
    shutil.copy2(module, os.path.join(package_dir, os.path.basename(module)))
    make_readable(prefix)
    paths = installed_paths(venv_python)
    print(SNIPPET.format(prefix=prefix, module=paths["nginx_module"], lib=paths["lib"],
                         lua=paths["lua"], python=venv_python), end="")
    return paths


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m logpool.tools.install",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--prefix", required=True)
    parser.add_argument("--source", required=True, help="the logpool source tree")
    parser.add_argument("--module", required=True, help="the built ngx_http_logpool_module.so")
    parser.add_argument("--python", help="the Python to install for (default: the build's "
                        "if every user can read it, else /usr/bin/python3)")
    args = parser.parse_args(argv)
    install(args.prefix, args.source, args.module, args.python or None)
    return 0


if __name__ == "__main__":
    sys.exit(main())
