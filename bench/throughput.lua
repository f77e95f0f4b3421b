-- Producer for the throughput benchmark: log SIZE-byte messages for SECONDS, then close
-- (which delivers everything). Prints accepted bytes and the time until close returned.
-- usage: luajit throughput.lua LIBLOGPOOL HEADER URL SIZE SECONDS [CLOSE_TIMEOUT_MS
--        [EXTRA_SINK_JSON]]   (EXTRA_SINK_JSON: more members of the sink, ', "k": v')
local ffi = require "ffi"
local lib_path, header, url, size, seconds = arg[1], arg[2], arg[3], tonumber(arg[4]),
    tonumber(arg[5])
local f = assert(io.open(header))
ffi.cdef(f:read("*a"):match("/%* LOGPOOL_CDEF_BEGIN %*/(.-)/%* LOGPOOL_CDEF_END %*/"))
f:close()
ffi.cdef [[
struct tp_ts { long tv_sec; long tv_nsec; };
int clock_gettime(int clk, struct tp_ts *tp);
int usleep(unsigned int usec);
]]
local lib = ffi.load(lib_path)
local ts = ffi.new("struct tp_ts")
local function now()
    ffi.C.clock_gettime(1, ts)
    return tonumber(ts.tv_sec) + tonumber(ts.tv_nsec) / 1e9
end
local pool = lib.logpool_new('{"sinks": [{"url": "' .. url .. '"' .. (arg[7] or "")
                             .. '}], "retry_interval_ms": 50}')
assert(pool ~= nil, ffi.string(lib.logpool_last_error()))
local function rss_kib()
    local status = assert(io.open("/proc/self/status")):read("*a")
    return tonumber(status:match("VmRSS:%s*(%d+)"))
end
local rss_before = rss_kib() -- Python started, writer running, nothing buffered yet
local msg = string.rep("x", size - 1) .. "\n"
local accepted, refused = 0, 0
local start = now()
local deadline = start + seconds
while true do
    for _ = 1, 256 do
        local rc = lib.log_cdata(pool, 0, msg, size)
        if rc == size then
            accepted = accepted + size
        else
            refused = refused + 1
            ffi.C.usleep(20) -- a full buffer: a real producer moves on; do not burn the core
            break
        end
    end
    if now() >= deadline then break end
end
local rss_after = rss_kib()
local abandoned = lib.logpool_close(pool, tonumber(arg[6] or 120000))
print(string.format("throughput %d %d %d %.6f %d %d %d", size, accepted, refused, now() - start,
                    abandoned, rss_before, rss_after))
