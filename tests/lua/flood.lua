-- Log SIZE-byte messages (default 512) at full speed for SECONDS to every sink of CONFIG
-- (JSON), timing each log_cdata call. Then close with CLOSE_MS. Prints one line of figures.
-- With UNTIL_REFUSED > 0, SECONDS is only a deadline: it stops once that many calls were
-- refused (the buffers are full), whatever the machine's speed.
-- With WAITS = 1, each call over 20 ms is also classified: "waited" when the thread gave up
-- the CPU itself during it (a lock, I/O: voluntary context switches), not only when the
-- scheduler preempted it (a loaded machine). Costs a getrusage() per call, outside the timing.
-- usage: luajit flood.lua LIB HEADER CONFIG SECONDS CLOSE_MS [SIZE [UNTIL_REFUSED [WAITS]]]
local ffi = require "ffi"
local lib_path, header, config, seconds, close_ms, size, until_refused, waits =
    arg[1], arg[2], arg[3], tonumber(arg[4]), tonumber(arg[5]), tonumber(arg[6] or 512),
    tonumber(arg[7] or 0), arg[8] == "1"
local f = assert(io.open(header))
ffi.cdef(f:read("*a"):match("/%* LOGPOOL_CDEF_BEGIN %*/(.-)/%* LOGPOOL_CDEF_END %*/"))
f:close()
ffi.cdef [[
struct fl_ts { long tv_sec; long tv_nsec; };
int clock_gettime(int clk, struct fl_ts *tp);
struct fl_rusage { long utime[2]; long stime[2]; long maxrss, ixrss, idrss, isrss, minflt,
                   majflt, nswap, inblock, oublock, msgsnd, msgrcv, nsignals, nvcsw, nivcsw; };
int getrusage(int who, struct fl_rusage *usage);
]]
local lib = ffi.load(lib_path)
local ts = ffi.new("struct fl_ts")
local ru = ffi.new("struct fl_rusage")
local RUSAGE_THREAD = 1
local function voluntary_switches()
    ffi.C.getrusage(RUSAGE_THREAD, ru)
    return tonumber(ru.nvcsw)
end
local function now_ns()
    ffi.C.clock_gettime(1, ts)
    return tonumber(ts.tv_sec) * 1e9 + tonumber(ts.tv_nsec)
end
local function rss_kib()
    local fh = assert(io.open("/proc/self/status"))
    local text = fh:read("*a")
    fh:close()
    return tonumber(text:match("VmRSS:%s*(%d+)"))
end
local pool = lib.logpool_new(config)
assert(pool ~= nil, ffi.string(lib.logpool_last_error()))
local nsinks = lib.logpool_sink_count(pool)
local rss_before, rss_max = rss_kib(), 0
local msg = string.rep("y", size - 1) .. "\n"
local accepted, refused, max_ns, calls, slow, waited = 0, 0, 0, 0, 0, 0
local switches = 0
local deadline = now_ns() + seconds * 1e9
print("started")
io.stdout:flush()
while true do
    for i = 1, 1000 do
        if waits then switches = voluntary_switches() end
        local t0 = now_ns()
        local rc = lib.log_cdata(pool, calls % nsinks, msg, size)
        local dt = now_ns() - t0
        if dt > max_ns then max_ns = dt end
        if dt > 20e6 then
            slow = slow + 1
            if waits and voluntary_switches() > switches then waited = waited + 1 end
        end
        calls = calls + 1
        if rc == size then accepted = accepted + 1 else refused = refused + 1 end
    end
    if calls % 100000 == 0 then
        local r = rss_kib()
        if r > rss_max then rss_max = r end
    end
    if now_ns() >= deadline then break end
    if until_refused > 0 and refused >= until_refused then break end
end
local r = rss_kib()
if r > rss_max then rss_max = r end
local abandoned = lib.logpool_close(pool, close_ms)
print(string.format("flood accepted=%d refused=%d max_ns=%d slow=%d waited=%d calls=%d "
                    .. "rss_before=%d rss_max=%d abandoned=%d", accepted, refused, max_ns, slow,
                    waited, calls, rss_before, rss_max, abandoned))
