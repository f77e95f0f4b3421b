"""The C contract from LuaJIT running inside this Python process (lupa): the FFI calls Lua
code makes in nginx, with Python already initialised by the host."""
import lupa.luajit21 as lupa
import pytest

from conftest import lua_cdef, message, sock_path, wait_for
from logpool import paths

PRELUDE = r"""
local ffi = require "ffi"
local cdef, lib_path = ...
if not pcall(ffi.typeof, "logpool_t") then ffi.cdef(cdef) end
local lib = ffi.load(lib_path)
return ffi, lib
"""


@pytest.fixture(scope="module")
def lua():
    runtime = lupa.LuaRuntime()
    ffi, lib = runtime.execute(PRELUDE, lua_cdef(), paths.lib_path())
    runtime.globals().lp_ffi = ffi
    runtime.globals().lp_lib = lib
    return runtime


def run(lua, code, *args):
    return lua.execute("local ffi, lib = lp_ffi, lp_lib\n" + code, *args)


def new_pool(lua, config):
    return run(lua, """
        local p = lib.logpool_new(...)
        if p == nil then return nil, ffi.string(lib.logpool_last_error()) end
        return p
    """, config)


def close(lua, pool, timeout_ms=0):
    return run(lua, "local p, t = ... return lib.logpool_close(p, t)", pool, timeout_ms)


def log(lua, pool, sink, msg):
    return run(lua, "local p, s, m = ... return lib.log_cdata(p, s, m, #m)", pool, sink, msg)


def test_every_code_from_a_real_situation(lua, tmp_path):
    url = "unix:" + sock_path(tmp_path, "down.sock")
    pool = new_pool(lua, '{"sinks": [{"url": "%s"}], "max_message_size": 10, '
                         '"max_buffer_length": 30, "flush_limit": 10}' % url)
    assert pool is not None
    try:
        # NULL pool, NULL message with a length, empty message.
        assert run(lua, "return lib.log_cdata(nil, 0, 'x', 1)") == -1
        assert run(lua, "local p = ... return lib.log_cdata(p, 0, nil, 3)", pool) == -1
        assert run(lua, "local p = ... return lib.log_cdata(p, 0, '', 0)", pool) == 0
        # Unknown sinks: next index, negative, huge.
        for sid in (1, -1, 2**31 - 1):
            assert run(lua, "local p, s = ... return lib.log_cdata(p, s, 'x', 1)", pool, sid) == -2
        # Too big, then full while the sink is down.
        assert log(lua, pool, 0, "0123456789A") == -3
        assert [log(lua, pool, 0, "0123456789") for _ in range(4)] == [10, 10, 10, -4]
        assert run(lua, "local p = ... return lib.logpool_flush(p, 20)", pool) == -8
        stats = run(lua, """
            local p = ... local st = ffi.new("logpool_stats_t")
            assert(lib.logpool_stats(p, 0, st) == 0)
            return tonumber(st.accepted_messages), tonumber(st.dropped_full),
                   tonumber(st.dropped_too_big)""", pool)
        assert tuple(stats) == (3, 1, 1)
        assert close(lua, pool) == 3
        assert log(lua, pool, 0, "late") == -5
        assert run(lua, "return ffi.string(lib.logpool_strerror(-5))") == "pool closed"
    finally:
        close(lua, pool)
        run(lua, "lib.logpool_free(...)", pool)


def test_bad_config_returns_nil_and_names_the_key(lua):
    pool, err = new_pool(lua, '{"sinks": [{"url": "unix:/x"}], "drop_limit": 5}')
    assert pool is None
    assert err.startswith("invalid configuration: drop_limit: unknown key")


def test_messages_logged_from_lua_arrive_once_in_order(lua, receiver):
    r = receiver()
    pool = new_pool(lua, '{"sinks": [{"url": "%s"}]}' % r.url)
    n = 20_000
    lines = [message(0, i).decode() for i in range(n)]
    sent = run(lua, """
        local p, lines, n = ...
        local total = 0
        for i = 1, n do
            local m = lines[i]
            total = total + lib.log_cdata(p, 0, m, #m)
        end
        return total
    """, pool, lua.table_from(lines), n)
    assert sent == sum(len(x) for x in lines)
    assert close(lua, pool, 10000) == 0
    wait_for(lambda: r.snapshot().messages == n, timeout=60, what="all lines")
    assert r.output.getvalue().decode() == "".join(lines)
