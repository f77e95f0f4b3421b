-- Hot-path cost from the luajit binary: ns per call for 200-byte messages.
-- usage: luajit hotpath.lua LIBLOGPOOL HEADER LIBBENCH LIBNAIVE SINK_URL CALLS
local ffi = require "ffi"
local lib_path, header, bench_path, naive_path, url, calls =
    arg[1], arg[2], arg[3], arg[4], arg[5], tonumber(arg[6])

local f = assert(io.open(header))
ffi.cdef(f:read("*a"):match("/%* LOGPOOL_CDEF_BEGIN %*/(.-)/%* LOGPOOL_CDEF_END %*/"))
f:close()
ffi.cdef [[
struct bench_ts { long tv_sec; long tv_nsec; };
int clock_gettime(int clk, struct bench_ts *tp);
int bench_floor_copy(void *pool, int sink, const char *msg, size_t len);
int bench_fresh_copy(void *pool, int sink, const char *msg, size_t len);
void bench_percentiles(double *samples, size_t n, double *out);
uint64_t bench_producers(void *fn, void *pool, int nsinks, int threads, size_t calls,
                         size_t len, double *samples, uint64_t *accepted);
int naive_log(void *pool, int sink, const char *msg, size_t len);
]]

local lib = ffi.load(lib_path)
local bench = ffi.load(bench_path)
local C = ffi.C

local function pool_for(nsinks)
    local sinks = {}
    for i = 1, nsinks do sinks[i] = '{"url": "' .. url .. '"}' end
    local p = lib.logpool_new('{"sinks": [' .. table.concat(sinks, ",") .. ']}')
    assert(p ~= nil, ffi.string(lib.logpool_last_error()))
    return p
end

local pool = pool_for(1)
local naive = ffi.load(naive_path) -- after logpool_new: Python is already up

local msg = string.rep("x", 199) .. "\n"
local samples = ffi.new("double[?]", calls * 2)
local pct = ffi.new("double[4]")
local ts = ffi.new("struct bench_ts")

local function now()
    C.clock_gettime(1, ts)
    return tonumber(ts.tv_sec) * 1e9 + tonumber(ts.tv_nsec)
end

local function measure(name, fn, p)
    p = p or pool
    for i = 1, 100000 do fn(p, 0, msg, 200) end -- warm up, JIT
    local accepted = 0
    local start = now()
    for i = 0, calls - 1 do
        local t0 = now()
        local rc = fn(p, 0, msg, 200)
        samples[i] = now() - t0
        if rc > 0 then accepted = accepted + 1 end
    end
    local wall = now() - start
    bench.bench_percentiles(samples, calls, pct)
    print(string.format("hotpath %s %.1f %.1f %.1f %.1f %d %.1f", name, pct[0], pct[1], pct[2],
                        pct[3], accepted, wall / calls))
end

-- The mean, as throughput pays it: a clock around bursts of 50,000 calls (no timer per
-- call), and the process CPU (every thread: the writer's work included) per message.
local BURST = 50000
local function cpu_ns()
    C.clock_gettime(2, ts) -- CLOCK_PROCESS_CPUTIME_ID
    return tonumber(ts.tv_sec) * 1e9 + tonumber(ts.tv_nsec)
end

local function measure_mean(name, fn, p)
    for i = 1, 20000 do fn(p, 0, msg, 200) end -- warm up, JIT
    if name ~= "floor" and name ~= "fresh" then lib.logpool_flush(p, 60000) end
    local bursts = math.max(1, math.floor(calls / BURST))
    local total, cpu0 = 0, cpu_ns()
    for _ = 1, bursts do
        local t0 = now()
        for _ = 1, BURST do fn(p, 0, msg, 200) end
        total = total + (now() - t0)
    end
    if name == "live" then lib.logpool_flush(p, 60000) end -- the writer's share, too
    local cpu = cpu_ns() - cpu0
    print(string.format("mean %s %.1f %.1f", name, total / (bursts * BURST),
                        cpu / (bursts * BURST)))
end

-- Bursts, as a busy worker sends them: BURST calls, then a flush (the writer drains the
-- chain and its chunks come back), again and again. Odd rounds are clocked as a whole (the
-- mean, no timer per call); even ones time every call (median, p99, p99.9: timer included,
-- the floor's too). The floor runs the same bursts, with nothing to flush, alternating with
-- logpool's burst by burst (in a rotating order) so that a noisy host hurts both alike.
local function measure_bursts()
    local cases = {
        { name = "floor", fn = bench.bench_floor_copy, samples = samples + calls },
        { name = "logpool", fn = lib.log_cdata, samples = samples, pool = true },
    }
    for _, c in ipairs(cases) do
        for i = 1, 20000 do c.fn(pool, 0, msg, 200) end -- warm up, JIT
        c.total, c.clocked, c.n = 0, 0, 0
    end
    lib.logpool_flush(pool, 60000)
    local bursts = math.max(4, math.floor(calls / BURST))
    for b = 1, bursts do
        for k = 0, 1 do
            local c = cases[(b + k) % 2 + 1]
            local fn = c.fn
            if b % 2 == 1 then
                local t0 = now()
                for _ = 1, BURST do fn(pool, 0, msg, 200) end
                c.total = c.total + (now() - t0)
                c.clocked = c.clocked + BURST
            else
                local out, n = c.samples, c.n
                for _ = 1, BURST do
                    local t0 = now()
                    fn(pool, 0, msg, 200)
                    out[n] = now() - t0
                    n = n + 1
                end
                c.n = n
            end
            if c.pool then assert(lib.logpool_flush(pool, 60000) == 0) end
        end
    end
    for _, c in ipairs(cases) do
        bench.bench_percentiles(c.samples, c.n, pct)
        print(string.format("burst %s %.1f %.1f %.1f %.1f %d", c.name, c.total / c.clocked,
                            pct[0], pct[1], pct[2], bursts))
    end
end

measure_bursts()

measure_mean("floor", bench.bench_floor_copy, pool)
measure_mean("fresh", bench.bench_fresh_copy, pool)
measure_mean("live", lib.log_cdata, pool)
local dead = lib.logpool_new('{"sinks": [{"url": "unix:/nonexistent/logpool-bench.sock"}], '
                             .. '"max_buffer_length": 2147483647}')
assert(dead ~= nil, ffi.string(lib.logpool_last_error()))
measure_mean("dead", lib.log_cdata, dead)
lib.logpool_close(dead, 0)

measure("timer", function() return 1 end)
measure("floor", bench.bench_floor_copy)
measure("logpool", lib.log_cdata)
lib.logpool_flush(pool, 10000)
measure("naive", naive.naive_log)
lib.logpool_close(pool, 10000)

-- A sink that is down with a disk spool: the writer spills while producers log. Its
-- percentiles against the healthy sink's above (the spool must not move the tail).
local spool_dir = arg[7]
if spool_dir then
    local spilling = lib.logpool_new('{"sinks": [{"url": "unix:/nonexistent/bench-spool.sock",'
                                     .. ' "name": "bench"}], "spool_dir": "' .. spool_dir
                                     .. '", "max_spool_bytes": 4294967296}')
    assert(spilling ~= nil, ffi.string(lib.logpool_last_error()))
    measure("spilling", lib.log_cdata, spilling)
    lib.logpool_close(spilling, 0)
end

-- Cost as work grows: sinks x producer threads, C threads calling log_cdata.
local per_thread = math.floor(calls / 2)
local acc = ffi.new("uint64_t[1]")
for _, nsinks in ipairs({1, 4, 16}) do
    for _, threads in ipairs({1, 2}) do
        local p = pool_for(nsinks)
        local t0 = now()
        local wall = bench.bench_producers(ffi.cast("void *", lib.log_cdata), p, nsinks,
                                           threads, per_thread, 200, samples, acc)
        assert(lib.logpool_flush(p, 60000) == 0)
        local delivered = now() - t0
        bench.bench_percentiles(samples, threads * per_thread, pct)
        print(string.format("scaling %d %d %.1f %.1f %.1f %d %.0f %.0f", nsinks, threads,
                            pct[0], pct[1], pct[2], tonumber(acc[0]), tonumber(wall),
                            delivered))
        lib.logpool_close(p, 10000)
    end
end
