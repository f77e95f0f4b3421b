-- A non-Python host: the `luajit` binary loads liblogpool with plain ffi.load (RTLD_LOCAL)
-- and the library starts Python itself. Run by tests/test_luajit_host.py under `env -i`.
-- usage: luajit host.lua MODE LIB HEADER URL N
local ffi = require "ffi"

local mode, lib_path, header, url, n = arg[1], arg[2], arg[3], arg[4], tonumber(arg[5] or 0)

local f = assert(io.open(header))
ffi.cdef(assert(f:read("*a"):match("/%* LOGPOOL_CDEF_BEGIN %*/(.-)/%* LOGPOOL_CDEF_END %*/")))
f:close()
ffi.cdef [[
int fork(void);
int waitpid(int pid, int *status, int options);
void _exit(int status);
int getpid(void);
]]

local function out(...)
    io.stdout:write(table.concat({...}, " "), "\n")
    io.stdout:flush()
end

local function new_pool(lib, extra)
    local cfg = '{"sinks": [{"url": "' .. url .. '"}]' .. (extra or "") .. '}'
    local pool = lib.logpool_new(cfg)
    if pool == nil then
        out("new_failed", ffi.string(lib.logpool_last_error()))
        os.exit(3)
    end
    return pool
end

local function log_range(lib, pool, first, last)
    for i = first, last do
        local m = string.format("%d %s\n", i, string.rep("x", i % 200))
        local rc = lib.log_cdata(pool, 0, m, #m)
        if rc ~= #m then
            out("log_failed", i, rc)
            os.exit(4)
        end
    end
end

local function mapped(name)
    local maps = assert(io.open("/proc/self/maps")):read("*a")
    return maps:find(name, 1, true) ~= nil
end

if mode == "deliver" then
    local lib = ffi.load(lib_path)
    local pool = new_pool(lib)
    log_range(lib, pool, 1, n)
    out("abandoned", lib.logpool_close(pool, tonumber(arg[6] or 10000)))
    lib.logpool_free(pool)

elseif mode == "gc" then
    -- Trap 6: LuaJIT unloads a library whose handle is collected. The writer thread would
    -- then run unmapped code and the process would crash.
    local lib = ffi.load(lib_path)
    local pool = new_pool(lib, ', "periodic_flush_ms": 1')
    local log_cdata, close = lib.log_cdata, lib.logpool_close
    lib = nil
    collectgarbage("collect")
    collectgarbage("collect")
    out("mapped_after_gc", tostring(mapped("liblogpool.so")))
    for i = 1, n do
        local m = string.format("%d gc\n", i)
        assert(log_cdata(pool, 0, m, #m) == #m)
    end
    out("abandoned", close(pool, 10000))

elseif mode == "signals" then
    -- Trap 3: the host's signals reach the host's thread, never a writer; Python installs
    -- no handlers of its own.
    local pid = ffi.C.getpid()
    local function field(path, name)
        local text = assert(io.open(path)):read("*a")
        return text:match(name .. ":%s*(%x+)")
    end
    out("caught_before", field("/proc/" .. pid .. "/status", "SigCgt"))
    local lib = ffi.load(lib_path)
    local pool = new_pool(lib)
    -- /proc/self would be `ls` itself inside io.popen: name our pid.
    for tid in io.popen("ls /proc/" .. pid .. "/task"):lines() do
        local status = "/proc/" .. pid .. "/task/" .. tid .. "/status"
        out("task", tid == tostring(pid) and "main" or "thread",
            field(status, "SigBlk"), field(status, "Name"))
    end
    out("caught_after", field("/proc/" .. pid .. "/status", "SigCgt"))
    out("abandoned", lib.logpool_close(pool, 5000))

elseif mode == "fork" or mode == "fork_exit" then
    -- Trap 4: a pool and a runtime started before fork must neither hang nor crash the
    -- child; the parent carries on. fork_exit: a child that inherits an open pool and exits
    -- normally (os.exit runs C atexit handlers, the exit fallback among them) exits at once.
    local lib = ffi.load(lib_path)
    local pool = new_pool(lib)
    log_range(lib, pool, 1, n)
    local child = ffi.C.fork()
    if child == 0 and mode == "fork_exit" then
        os.exit(0)
    elseif child == 0 then
        local m = "from child\n"
        local rc1 = lib.log_cdata(pool, 0, m, #m)
        local p2 = lib.logpool_new('{"sinks": [{"url": "' .. url .. '"}]}')
        local err = ffi.string(lib.logpool_last_error())
        local rc3 = lib.logpool_flush(pool, 1000)
        local rc4 = lib.logpool_close(pool, 1000)
        out("child", rc1, tostring(p2 == nil), rc3, rc4, err)
        ffi.C._exit(0)
    end
    local status = ffi.new("int[1]")
    ffi.C.waitpid(child, status, 0)
    out("child_status", status[0])
    log_range(lib, pool, n + 1, 2 * n)
    out("abandoned", lib.logpool_close(pool, 10000))

elseif mode == "exit" then
    -- Trap 5: no Py_Finalize, no Python atexit: a host that exits without logpool_close is
    -- covered by the library's C-level exit handler.
    local lib = ffi.load(lib_path)
    local pool = new_pool(lib, ', "periodic_flush_ms": 600000, "exit_flush_timeout_ms": 5000')
    log_range(lib, pool, 1, n)
    out("exiting")
    os.exit(0)

elseif mode == "wrong-libpython" then
    -- Trap 2: another libpython3.11 already in the process must not be used silently.
    ffi.load(arg[6], true)
    local lib = ffi.load(lib_path)
    local pool = lib.logpool_new('{"sinks": [{"url": "' .. url .. '"}]}')
    out("null", tostring(pool == nil), ffi.string(lib.logpool_last_error()))

else
    error("unknown mode " .. tostring(mode))
end
