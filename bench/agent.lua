-- Agent mode from the luajit binary (bench/agent.py drives it).
-- usage: luajit agent.lua MODE LIB HEADER ...
--   hot LIBPRODUCER HEADER LIBBENCH AGENT_DIR CALLS: log_cdata into a ring vs the floor
--   produce LIB HEADER CONFIG_JSON CALLS: log CALLS messages of 200 B (on EFULL: 100 us
--       off the CPU, then again), flush; prints "produced <retries> <process cpu_ns>
--       <connects> <main thread cpu_ns>" (the rest of the process CPU: its writer threads)
--   memory LIB HEADER CONFIG_JSON CALLS: private/shared memory before and after a pool
local ffi = require "ffi"
local mode, lib_path, header = arg[1], arg[2], arg[3]

local f = assert(io.open(header))
ffi.cdef(f:read("*a"):match("/%* LOGPOOL_CDEF_BEGIN %*/(.-)/%* LOGPOOL_CDEF_END %*/"))
f:close()
ffi.cdef [[
struct bench_ts { long tv_sec; long tv_nsec; };
int clock_gettime(int clk, struct bench_ts *tp);
int bench_floor_copy(void *pool, int sink, const char *msg, size_t len);
void bench_percentiles(double *samples, size_t n, double *out);
int usleep(unsigned int usec);
]]
local C = ffi.C
local lib = ffi.load(lib_path)
local msg = string.rep("x", 199) .. "\n"
local ts = ffi.new("struct bench_ts")

local function clock(id)
    C.clock_gettime(id, ts)
    return tonumber(ts.tv_sec) * 1e9 + tonumber(ts.tv_nsec)
end
local function now() return clock(1) end

local function new_pool(json)
    local p = lib.logpool_new(json)
    assert(p ~= nil, ffi.string(lib.logpool_last_error()))
    return p
end

-- kB of the process's own memory (Anonymous: heap, stacks, Python's objects; smaps' Private_*
-- would also count a page of the shared ring that no other process has touched yet), of
-- shared memory (the ring: Pss_Shmem), and whether libpython is mapped.
local function memory()
    local t = io.open("/proc/self/smaps_rollup"):read("*a")
    local function kb(field) return tonumber(t:match(field .. ":%s+(%d+)") or 0) end
    local maps = io.open("/proc/self/maps"):read("*a")
    return kb("Anonymous"), kb("Pss_Shmem"), maps:find("libpython") and 1 or 0
end

if mode == "hot" then
    local bench = ffi.load(arg[4])
    local agent_dir, calls = arg[5], tonumber(arg[6])
    local pool = new_pool('{"agent": "' .. agent_dir .. '", "ring_bytes": 16777216}')
    local BURST = 50000
    local samples = ffi.new("double[?]", calls * 2)
    local pct = ffi.new("double[4]")
    -- Bursts with a flush between them (the agent has released the ring), floor and ring
    -- alternating burst by burst; odd rounds clocked whole (mean), even ones per call.
    local cases = {
        { name = "floor", fn = bench.bench_floor_copy, samples = samples + calls },
        { name = "ring", fn = lib.log_cdata, samples = samples, pool = true },
    }
    for _, c in ipairs(cases) do
        for i = 1, 20000 do c.fn(pool, 0, msg, 200) end
        c.total, c.clocked, c.n, c.refused = 0, 0, 0, 0
    end
    assert(lib.logpool_flush(pool, 60000) == 0)
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
                    if fn(pool, 0, msg, 200) < 0 then c.refused = c.refused + 1 end
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
                            pct[0], pct[1], pct[2], c.refused))
    end
    -- The agent keeping up: a steady stream, no flush between (refusals counted).
    for _, c in ipairs(cases) do
        local refused, t0 = 0, now()
        for _ = 1, calls do
            if c.fn(pool, 0, msg, 200) < 0 then refused = refused + 1 end
        end
        print(string.format("steady %s %.1f %d", c.name, (now() - t0) / calls, refused))
    end
    lib.logpool_close(pool, 0)
elseif mode == "produce" then
    local pool = new_pool(arg[4])
    local calls, retries = tonumber(arg[5]), 0
    local cpu0, thread0 = clock(2), clock(3)
    for _ = 1, calls do
        while lib.log_cdata(pool, 0, msg, 200) < 0 do
            retries = retries + 1
            C.usleep(100)
        end
    end
    assert(lib.logpool_flush(pool, 120000) == 0)
    local st = ffi.new("logpool_stats_t")
    lib.logpool_stats(pool, 0, st)
    print(string.format("produced %d %.0f %d %.0f", retries, clock(2) - cpu0,
                        tonumber(st.connects), clock(3) - thread0))
    lib.logpool_close(pool, 10000)
elseif mode == "memory" then
    local calls = tonumber(arg[5])
    local priv0, shared0 = memory()
    local pool = new_pool(arg[4])
    for _ = 1, calls do lib.log_cdata(pool, 0, msg, 200) end
    lib.logpool_flush(pool, 60000)
    local priv1, shared1, python = memory()
    print(string.format("memory %d %d %d", priv1 - priv0, shared1 - shared0, python))
    lib.logpool_close(pool, 10000)
end
