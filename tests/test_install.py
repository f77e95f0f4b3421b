"""logpool as users install it: a wheel (what `pip install .` builds) in a fresh venv, used
from outside the source tree by Python and by a real nginx. Nothing may point back into the
source checkout."""
import os
import subprocess
import sys

import pytest

from conftest import ROOT, wait_for
from logpool.tools.nginx import Nginx


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """A venv with the logpool wheel installed (dependencies from the package index)."""
    tmp = tmp_path_factory.mktemp("install")
    wheels, venv = tmp / "wheels", tmp / "venv"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(wheels),
                    ROOT], check=True, cwd=tmp)
    wheel = next(wheels.glob("logpool-*.whl"))
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    python = str(venv / "bin" / "python")
    subprocess.run([python, "-m", "pip", "install", "-q", str(wheel)], check=True, cwd=tmp)
    paths = subprocess.run([python, "-m", "logpool", "paths"], capture_output=True, text=True,
                           check=True, cwd=tmp).stdout
    return python, dict(line.split(" ", 1) for line in paths.splitlines()), tmp


def test_the_wheel_carries_the_library_the_header_and_the_lua_module(installed):
    python, paths, _ = installed
    site = os.path.dirname(paths["lib"])
    assert "site-packages" in site and not site.startswith(ROOT)
    for key, name in (("lib", ""), ("include", "logpool.h"), ("lua", "resty/logpool.lua")):
        path = os.path.join(paths[key], name) if name else paths[key]
        assert os.path.isfile(path) and path.startswith(site), (key, path)
    assert os.path.isfile(os.path.join(paths["lua"], "resty", "logpool", "compat.lua"))


def test_python_from_the_installed_package_delivers(installed, receiver):
    python, paths, tmp = installed
    r = receiver()
    out = subprocess.run([python, "-c", f"""
import logpool
print(logpool.__file__)
with logpool.Pool({{"sinks": [{{"url": {r.url!r}}}]}}) as pool:
    for i in range(100):
        pool.log(0, b"installed %d\\n" % i)
"""], capture_output=True, text=True, cwd=tmp, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith(os.path.dirname(os.path.dirname(paths["lib"])))
    wait_for(lambda: r.snapshot().messages == 100, what="lines from the installed package")


def test_nginx_runs_from_the_installed_package(installed, receive_process, tmp_path):
    python, paths, _ = installed
    rp = receive_process()
    http_extra = f"""
    lua_package_path "{paths['lua']}/?.lua;;";
    init_worker_by_lua_block {{
        require("resty.logpool").start({{ sinks = {{ {{ url = "{rp.url}", name = "main" }} }},
                                        periodic_flush_ms = 50 }})
    }}
    exit_worker_by_lua_block {{ require("resty.logpool").stop(5) }}
    """
    server_extra = """
        log_by_lua_block { require("resty.logpool").log("main", ngx.var.request_id .. "\\n") }
    """
    ng = Nginx(tmp_path / "nginx", http_extra, server_extra, workers=2, package_path=False)
    ng.start()
    try:
        assert ng.requests(200) == [200] * 200
        assert ng.quit() == 0
    finally:
        ng.kill()
    rp.stop()
    assert sorted(line.decode() for line in rp.lines()) == sorted(ng.access_ids())
    errors = ng.read_error_log()
    assert "logpool" not in errors or "[error]" not in errors, errors
