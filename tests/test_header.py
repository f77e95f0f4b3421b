"""One header feeds the compiler, cffi and LuaJIT; only the contract is exported."""
import re
import subprocess

import cffi

import logpool
from conftest import lua_cdef, luajit_binary
from logpool import paths

CONTRACT = {
    "log_cdata", "logpool_new", "logpool_last_error", "logpool_flush", "logpool_close",
    "logpool_free", "logpool_sink_count", "logpool_stats", "logpool_strerror", "logpool_version",
    "logpool_metrics", "logpool_shutdown", "logpool_last_error_code", "logpool_sink_index",
    "logpool_metrics_merge",
}


def exported_functions():
    out = subprocess.run(["nm", "-D", "--defined-only", paths.lib_path()], capture_output=True,
                         text=True, check=True).stdout
    return {line.split()[-1] for line in out.splitlines() if line.split()[1] == "T"}


def test_only_the_contract_is_exported():
    exported = exported_functions()
    # cffi's own entry points for the embedded module and the Python-implemented callback.
    cffi_entry_points = {"PyInit__logpool_embedded", "logpool__py_start", "logpool__py_metrics",
                         "logpool__py_forget"}
    assert exported - cffi_entry_points == CONTRACT, exported


def test_cdef_block_parses_in_cffi_and_declares_the_contract():
    ffi = cffi.FFI()
    ffi.cdef(lua_cdef())
    lib = ffi.dlopen(paths.lib_path())
    for name in CONTRACT:
        assert getattr(lib, name) is not None
    assert ffi.sizeof("logpool_stats_t") % 8 == 0


def test_cdef_block_parses_in_luajit():
    script = ("local ffi = require 'ffi'; ffi.cdef(io.read('*a')); "
              "print(ffi.sizeof('logpool_stats_t'), ffi.C and 'ok')")
    out = subprocess.run([luajit_binary(), "-e", script], input=lua_cdef(), text=True,
                         capture_output=True, check=True).stdout
    ffi = cffi.FFI()
    ffi.cdef(lua_cdef())
    assert out.split()[0] == str(ffi.sizeof("logpool_stats_t"))


def test_code_table_and_enum_agree():
    header = open(paths.header_path(), encoding="utf-8").read()
    table = dict((name, int(value)) for name, value in
                 re.findall(r"XX\((\w+),\s*(-?\d+),", header))
    enum = dict((name, int(value)) for name, value in
                re.findall(r"LOGPOOL_(E[A-Z]+|OK) = (-?\d+)", header))
    assert table == enum and len(table) == 9


def test_versions_agree():
    header = open(paths.header_path(), encoding="utf-8").read()
    assert re.search(r'LOGPOOL_VERSION_STRING "([^"]+)"', header).group(1) == logpool.__version__
