"""lua/resty/logpool.lua and its compat layer, in LuaJIT inside this process (lupa)."""
import re

import lupa.luajit21 as lupa
import pytest

from conftest import sock_path, wait_for
from logpool import _binding, paths


@pytest.fixture(scope="module")
def lua():
    runtime = lupa.LuaRuntime()
    runtime.execute("package.path = ... .. '/?.lua;' .. package.path", paths.lua_dir())
    return runtime


def caller_error(lua, code, *args):
    """Run `code` as a chunk named "caller" and return the error it raised (or None)."""
    return lua.execute("""
        local code, a, b, c = ...
        local fn = assert(load(code, "=caller"))
        local ok, err = pcall(fn, a, b, c)
        if ok then return nil end
        return tostring(err)
    """, code, *args)


def test_lua_cdef_is_the_header_cdef():
    lua_src = open(paths.lua_dir() + "/resty/logpool/base.lua", encoding="utf-8").read()
    block = re.search(r"/\* LOGPOOL_CDEF_BEGIN \*/(.*?)/\* LOGPOOL_CDEF_END \*/", lua_src,
                      re.S).group(1)
    strip_comments = lambda s: re.sub(r"\s+", " ", re.sub(r"/\*.*?\*/", "", s, flags=re.S))
    assert strip_comments(block) == strip_comments(_binding.cdef_block(paths.header_path()))


@pytest.fixture
def pool_url(tmp_path):
    return "unix:" + sock_path(tmp_path, "lua.sock")


@pytest.mark.parametrize("code, message", [
    ("local lp = require 'resty.logpool'\nlp.new('x')", "bad argument #1 to 'new' (table expected"),
    ("local lp = require 'resty.logpool'\nlp.new({ sinks = {} })", "bad config: sinks"),
    ("local lp = require 'resty.logpool'\nlp.new({ sinks = { { url = 5 } } })",
     "sinks[1].url must be a string"),
    ("local lp = require 'resty.logpool'\nlp.new({ sinks = { 'unix:/x' }, flush_limit = '1' })",
     "flush_limit must be a number"),
    ("local lp = require 'resty.logpool'\nlp.new({ sinks = { { url = 'unix:/x', name = 1 } } })",
     "sinks[1].name must be a string"),
    ("local lp = require 'resty.logpool'\nlp.new({ sinks = { { url = 'tls://h:1', verify = 'no' } } })",
     "sinks[1].verify must be a boolean, got string"),
    ("local lp = require 'resty.logpool'\nlp.new({ sinks = { 'tcp://h:1' }, framing = true })",
     "framing must be a string, got boolean"),
])
def test_bad_arguments_to_new_raise_at_the_callers_line(lua, code, message):
    err = caller_error(lua, code)
    assert err is not None and err.startswith("caller:2:"), err
    assert message in err


def test_bad_arguments_to_pool_methods_raise_at_level_2(lua, receiver):
    r = receiver()
    setup = f"""local lp = require 'resty.logpool'
local pool = assert(lp.new({{ sinks = {{ {{ url = '{r.url}', name = 'a' }} }} }}))
"""
    cases = {
        "pool:log('a', 42)": "bad argument #2 to 'log' (string expected, got number)",
        "pool:log('nope', 'x')": "bad argument #1 to 'log' (unknown sink nope)",
        "pool:log(2, 'x')": "bad argument #1 to 'log' (unknown sink 2)",
        "pool:log({}, 'x')": "bad argument #1 to 'log' (sink name or index expected, got table)",
        "pool.log('a', 'x')": "bad argument #0 to 'log' (pool expected",
        "pool:flush('soon')": "bad argument #1 to 'flush' (timeout in seconds >= 0",
        "pool:close(-1)": "bad argument #1 to 'close' (timeout in seconds >= 0",
        "pool:close(0/0)": "bad argument #1 to 'close' (timeout in seconds >= 0 expected, got",
        "pool:flush(0/0)": "bad argument #1 to 'flush' (timeout in seconds >= 0 expected, got",
        "pool:flush(-math.huge)": "bad argument #1 to 'flush' (timeout in seconds >= 0",
        "pool:stats(7)": "bad argument #1 to 'stats' (unknown sink 7)",
    }
    for call, message in cases.items():
        err = caller_error(lua, setup + call + "\n")
        assert err is not None and err.startswith("caller:3:"), (call, err)
        assert message in err, (call, err)
    # Runtime failures are nil, err; the happy path returns the byte count.
    out = lua.execute(setup + """
        local a, b = pool:log('a', 'hello\\n')
        local c, d = pool:log(1, 'again\\n')
        local ok = pool:flush(5)
        local st = pool:stats('a')
        local abandoned = pool:close(5)
        local e, f = pool:log('a', 'late\\n')
        return a, b, c, d, ok, st.sent_messages, abandoned, e, f
    """)
    assert tuple(out) == (6, None, 6, None, True, 2, 0, None, "pool closed")
    wait_for(lambda: r.output.lines() == [b"hello", b"again"], what="two lines")


def test_huge_and_infinite_timeouts_are_clamped_to_the_c_range(lua):
    out = lua.execute("""
        local t = require('resty.logpool')._timeout_ms
        return t(math.huge, 'x'), t(1e300, 'x'), t(2147483.647, 'x'), t(0.25, 'x'), t(nil, 'x')
    """)
    assert tuple(out) == (2**31 - 1, 2**31 - 1, 2**31 - 1, 250, -1)


def test_compat_refuses_nan_and_negative_timeouts_at_the_callers_line(lua, pool_url):
    setup = f"""local compat = require 'resty.logpool.compat'
local logger = assert(compat.new({{ path = '{pool_url[len("unix:"):]}' }}))
"""
    for call in ("logger:flush(0/0)", "logger:close(-1)", "compat.flush(0/0)"):
        err = caller_error(lua, setup + call + "\n")
        assert err is not None and err.startswith("caller:3:"), (call, err)
        assert "timeout in seconds >= 0 expected" in err, (call, err)
    lua.execute(setup + "logger:close(0)")


def test_runtime_failures_return_nil_and_the_contracts_message(lua, pool_url):
    out = lua.execute(f"""
        local lp = require 'resty.logpool'
        local pool = assert(lp.new({{ sinks = {{ '{pool_url}' }}, max_buffer_length = 10,
                                      max_message_size = 8 }}))
        local r1, e1 = pool:log(1, '123456789')
        local r2 = pool:log(1, '12345678')
        local r3, e3 = pool:log(1, '123')
        local r4, e4 = pool:flush(0.01)
        local bad, e5 = lp.new({{ sinks = {{ 'ftp://x' }} }})
        pool:close(0)
        return r1, e1, r2, r3, e3, r4, e4, bad, e5
    """)
    assert tuple(out)[:7] == (None, "message too big", 8, None, "buffer full", None, "timed out")
    assert out[7] is None and out[8].startswith("logpool: invalid configuration: sinks[0].url")


def test_default_pool_helpers_say_when_not_started(lua):
    out = lua.execute("""
        package.loaded['resty.logpool'] = nil
        local lp = require 'resty.logpool'
        local a, b = lp.log('main', 'x')
        return a, b, lp.stop(1)
    """)
    assert tuple(out) == (None, "logpool: not started", 0)


# ---- compat: lua-resty-logger-socket's API ----

@pytest.mark.parametrize("cfg, message", [
    ("'x'", "user_config must be a table"),
    ("{}", 'no logging server configured. "host"/"port" or "path" is required.'),
    ("{ host = 1, port = 80 }", '"host" must be a string'),
    ("{ host = 'h', port = 'x' }", '"port" must be a number'),
    ("{ host = 'h', port = 70000 }", '"port" out of range 0~65535'),
    ("{ path = 5 }", '"path" must be a string'),
    ("{ path = '/x', sock_type = 'sctp' }", '"sock_type" must be "tcp" or "udp"'),
    ("{ path = '/x', flush_limit = -1 }", 'invalid "flush_limit"'),
    ("{ path = '/x', drop_limit = 'big' }", 'invalid "drop_limit"'),
    ("{ path = '/x', timeout = -5 }", 'invalid "timeout"'),
    ("{ path = '/x', periodic_flush = -1 }", 'invalid "periodic_flush"'),
    ("{ path = '/x', ssl = 'yes' }", '"ssl" must be a boolean value'),
    ("{ path = '/x', sni_host = 1 }", '"sni_host" must be a string'),
    ("{ path = '/x', flush_limit = 10, drop_limit = 10 }", '"flush_limit" should be < "drop_limit"'),
    ("{ path = '/x', ssl = true }", '"ssl" needs "host" and "port"'),
    ("{ host = 'h', port = 1, ssl = true, sock_type = 'udp' }", '"ssl" needs sock_type "tcp"'),
    ("{ host = 'h', port = 1, ssl_trusted_certificate = 1 }",
     '"ssl_trusted_certificate" must be a string'),
])
def test_compat_init_validates_like_lua_resty_logger_socket(lua, cfg, message):
    out = lua.execute(f"""
        local logger = require 'resty.logpool.compat'
        return logger.init({cfg})
    """)
    assert out[0] is None and message in out[1], out


def test_compat_return_conventions(lua, tmp_path):
    path = sock_path(tmp_path, "compat-down.sock")
    out = lua.execute(f"""
        package.loaded['resty.logpool.compat'] = nil
        local logger = require 'resty.logpool.compat'
        local before, before_err = logger.log('x')
        local initted_before = logger.initted()
        assert(logger.init({{ path = '{path}', flush_limit = 10, drop_limit = 100 }}))
        local sizes = {{}}
        for i = 1, 5 do sizes[i] = logger.log(string.rep('m', 29) .. '\\n') end
        local other = require('resty.logpool.compat').new({{ path = '{path}', drop_limit = 4097 }})
        local other_bytes = other:log(12345)
        local dropped = logger.stats().dropped_full
        local flushed, initted_after = logger.flush(), logger.initted()
        -- Close what this test opened: a pool that lupa collects later, with the GIL held,
        -- would make logpool_close release the GIL in the middle of lua_close.
        other.pool:close(0)
        logger.close(0)
        return before, before_err, initted_before, initted_after, sizes[1], sizes[3], sizes[4],
               sizes[5], other_bytes, dropped, flushed
    """)
    # 30-byte messages into a 100-byte drop_limit with the sink down: 3 fit, then 0 (dropped).
    assert tuple(out) == (None, "not initialized", False, True, 30, 30, 0, 0, 5, 2, True)


def test_compat_udp_with_a_path_is_a_unix_datagram_sink(lua, tmp_path):
    import socket
    path = sock_path(tmp_path, "compat-dgram.sock")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.settimeout(30)
    out = lua.execute(f"""
        local compat = require 'resty.logpool.compat'
        local logger = assert(compat.new({{ path = '{path}', sock_type = 'udp' }}))
        local sizes = {{ logger:log('one\\n'), logger:log('two\\n'),
                        logger:log(string.rep('x', 65508)) }}
        local ok = logger:flush(5)
        local too_big = logger:stats().dropped_too_big
        logger:close(0)
        return sizes[1], sizes[2], sizes[3], ok, too_big
    """)
    # One datagram per message; a message no datagram can carry gets 0 (dropped, counted).
    assert tuple(out) == (4, 4, 0, True, 1)
    assert [sock.recv(100), sock.recv(100)] == [b"one\n", b"two\n"]


def test_modules_use_no_undeclared_globals(receiver):
    r = receiver()
    runtime = lupa.LuaRuntime()
    runtime.execute("package.path = ... .. '/?.lua;' .. package.path", paths.lua_dir())
    out = runtime.execute(f"""
        local allowed = {{ ngx = true }}  -- read once at load, absent outside nginx
        setmetatable(_G, {{
            __newindex = function(_, k) error("global write: " .. tostring(k), 2) end,
            __index = function(_, k)
                if allowed[k] then return nil end
                error("global read: " .. tostring(k), 2)
            end,
        }})
        local lp = require "resty.logpool"
        local compat = require "resty.logpool.compat"
        local pool = assert(lp.start({{ sinks = {{ {{ url = "{r.url}", name = "m" }} }} }}))
        assert(lp.log("m", "x\\n") == 2)
        assert(pool:metrics():find("logpool_accepted_messages_total", 1, true))
        assert(lp._merge_metrics({{ "a 1\\n", "a 2\\n" }}) == "a 3\\n")
        assert(#pool:stats() == 1 and pool:flush(5))
        assert(lp.stop(5) == 0)
        local logger = assert(compat.new({{ path = "{r.url[5:]}" }}))
        assert(logger:log("y\\n") == 2 and logger:flush(5))
        assert(logger.pool:close(5) == 0) -- closed before lupa collects this runtime
        return "ok"
    """)
    assert out == "ok"


def test_lua_accepts_relp_urls_and_collector_lists(lua, receiver, tmp_path):
    r = receiver("relp://127.0.0.1:0")
    dead = "relp://127.0.0.1:1"  # nobody listens on port 1: the list fails over
    out = lua.execute(f"""
        local lp = require 'resty.logpool'
        local pool = assert(lp.new({{ sinks = {{ {{ url = {{ '{dead}', '{r.url}' }},
                                                    name = 'relp', relp_window = 16 }} }},
                                      retry_interval_ms = 10 }}))
        for i = 1, 100 do assert(pool:log('relp', 'line ' .. i .. '\\n')) end
        local ok = pool:flush(10)
        local st = pool:stats('relp')
        return ok, st.sent_messages, st.unacked_messages, pool:close(5)
    """)
    assert tuple(out) == (True, 100, 0, 0)
    assert r.output.lines() == [b"line %d" % i for i in range(1, 101)]
    err = caller_error(lua, "local lp = require 'resty.logpool'\n"
                            "lp.new({ sinks = { { url = { 'relp://h:1', 5 } } } })")
    assert err.startswith("caller:2:") and "sinks[1].url[2] must be a string" in err


def test_documented_empty_table_defaults_are_objects_not_arrays(lua, receiver):
    """http_headers = {} and kafka = {} are the documented defaults: they must reach the
    config as JSON objects (an empty Lua table used to encode as [], a config error)."""
    r = receiver("http://127.0.0.1:0/logs")
    out = lua.execute(f"""
        local lp = require 'resty.logpool'
        local json = require 'resty.logpool.json'
        local pool, err = lp.new({{ sinks = {{ {{ url = '{r.url}', name = 'h',
                                                 http_headers = {{}} }} }} }})
        if not pool then return nil, err end
        assert(pool:log('h', 'one'))
        local ok = pool:flush(10)
        return ok, pool:close(5), json.encode({{ kafka = {{}} }}),
               json.encode(setmetatable({{}}, json.array_mt))
    """)
    assert tuple(out) == (True, 0, '{"kafka":{}}', "[]")
    assert r.output.lines() == [b"one"]
