-- resty.logpool: ship log lines from nginx workers without blocking them.
--
--   local logpool = require "resty.logpool"
--   local pool, err = logpool.new({ sinks = { { url = "unix:/run/c.sock", name = "app" } } })
--   local bytes, err = pool:log("app", line)     -- one FFI call; never blocks
--
-- Caller bugs (wrong types, unknown sink names) raise at level 2; runtime failures return
-- nil and the contract's message ("buffer full", ...).
local ffi = require "ffi"

local ffi_gc = ffi.gc
local ffi_new = ffi.new
local ffi_string = ffi.string
local error = error
local getmetatable = getmetatable
local pairs = pairs
local ipairs = ipairs
local setmetatable = setmetatable
local tonumber = tonumber
local tostring = tostring
local type = type
local format = string.format
local floor = math.floor
local ngx = ngx

local base = require "resty.logpool.base"
local json = require "resty.logpool.json"
local options = require "resty.logpool.options"
local metrics = require "resty.logpool.metrics"
local agent = require "resty.logpool.agent"

local STATS_FIELDS = base.STATS_FIELDS
local load_lib = base.load
local json_encode = json.encode
local check_options = options.check
local lib -- set by the first successful new(); kept for the life of the worker (trap 6)
local stats_buf = ffi_new("logpool_stats_t")
local CLOSE_ON_GC_MS = 1000

local _M = { _VERSION = "0.1.0" }
_M._json_encode = json_encode
_M._merge_metrics = metrics.merge

local pool_mt = {}
pool_mt.__index = pool_mt

local function release(p)
    lib.logpool_close(p, CLOSE_ON_GC_MS)
    lib.logpool_free(p)
end

--- syntax: pool, err = logpool.new(config)
-- context: init_worker_by_lua*, timer, content/log phases (not init_by_lua: the master forks)
function _M.new(config)
    if type(config) ~= "table" then
        error("bad argument #1 to 'new' (table expected, got " .. type(config) .. ")", 2)
    end
    if config.agent ~= nil then -- agent mode: resty/logpool/agent.lua
        local p, l, names, n = agent.new(config, load_lib, 3)
        if not p then
            return nil, l
        end
        lib = l
        return setmetatable({ _p = ffi_gc(p, release), _names = names, _n = n }, pool_mt)
    end
    local sinks = config.sinks
    if type(sinks) ~= "table" or #sinks == 0 then
        error("bad config: sinks must be a non-empty array of { url = ... }", 2)
    end
    if config.lib_path ~= nil and type(config.lib_path) ~= "string" then
        error("bad config: lib_path must be a string, got " .. type(config.lib_path), 2)
    end
    check_options("", config, 2)
    local names, json_sinks = {}, {}
    for i, sink in ipairs(sinks) do
        if type(sink) == "string" then
            sink = { url = sink }
        end
        if type(sink) ~= "table" then
            error(format("bad config: sinks[%d] must be a table, got %s", i, type(sink)), 2)
        end
        local url = sink.url
        if type(url) == "table" then -- several collectors: failover, in order
            if #url == 0 then
                error(format("bad config: sinks[%d].url must be a string or a non-empty "
                             .. "array of strings", i), 2)
            end
            for k, u in ipairs(url) do
                if type(u) ~= "string" then
                    error(format("bad config: sinks[%d].url[%d] must be a string, got %s", i,
                                 k, type(u)), 2)
                end
            end
            url = url[1]
        elseif type(url) ~= "string" then
            error(format("bad config: sinks[%d].url must be a string, got %s", i,
                         type(url)), 2)
        end
        if sink.name ~= nil and type(sink.name) ~= "string" then
            error(format("bad config: sinks[%d].name must be a string, got %s", i,
                         type(sink.name)), 2)
        end
        check_options(format("sinks[%d].", i), sink, 2)
        local copy = {}
        for k, v in pairs(sink) do
            copy[k] = v
        end
        json_sinks[i] = copy
        if sink.name then
            names[sink.name] = i - 1
        end
    end

    if ngx and ngx.get_phase and ngx.get_phase() == "init" then
        return nil, "logpool: a pool cannot start in init_by_lua (the nginx master, which "
                    .. "forks the workers afterwards); start it in init_worker_by_lua"
    end
    local l, err = load_lib(config.lib_path)
    if not l then
        return nil, err
    end
    lib = l

    local json = {}
    for k, v in pairs(config) do
        if k ~= "lib_path" then
            json[k] = v
        end
    end
    json.sinks = json_sinks
    local p = l.logpool_new(json_encode(json))
    if p == nil then
        return nil, "logpool: " .. ffi_string(l.logpool_last_error())
    end
    local self = {
        _p = ffi_gc(p, release),
        _names = names,
        _n = #sinks,
    }
    for i, sink in ipairs(json_sinks) do
        names[i] = i - 1 -- 1-based indexes take the same one-lookup path as names
        if not sink.name then
            local url = type(sink.url) == "table" and sink.url[1] or sink.url
            names[url] = names[url] or (i - 1)
        end
    end
    return setmetatable(self, pool_mt)
end

local function sink_id(self, sink, fname)
    local id
    if type(sink) == "number" then
        if sink >= 1 and sink <= self._n and sink == floor(sink) then
            id = sink - 1
        end
    elseif type(sink) == "string" then
        id = self._names[sink]
    else
        error(format("bad argument #1 to '%s' (sink name or index expected, got %s)", fname,
                     type(sink)), 3)
    end
    if not id then
        error(format("bad argument #1 to '%s' (unknown sink %s)", fname, tostring(sink)), 3)
    end
    return id
end

local function check_self(self, fname)
    if type(self) ~= "table" or getmetatable(self) ~= pool_mt then
        error(format("bad argument #0 to '%s' (pool expected; use pool:%s(...))", fname,
                     fname), 3)
    end
end

--- syntax: bytes, err = pool:log(sink, msg)
-- context: any phase (log_by_lua* is the point); never blocks.
-- sink: the sink's name or its 1-based index; msg: a Lua string.
-- Returns #msg, or nil and "buffer full" / "message too big" / "pool closed".
function pool_mt.log(self, sink, msg)
    local names = type(self) == "table" and self._names
    local id = names and names[sink]
    if not id then -- (0 is true in Lua)
        check_self(self, "log")
        id = sink_id(self, sink, "log")
    end
    if type(msg) ~= "string" then
        error("bad argument #2 to 'log' (string expected, got " .. type(msg) .. ")", 2)
    end
    local rc = lib.log_cdata(self._p, id, msg, #msg)
    if rc >= 0 then
        return rc
    end
    return nil, ffi_string(lib.logpool_strerror(rc))
end

-- The C API takes an int of milliseconds; more than that is clamped to it (about 24.8 days).
local MAX_TIMEOUT_MS = 2147483647

-- Seconds (nil: no limit) as milliseconds. NaN and negative values are caller bugs (a NaN
-- used to reach C as "wait forever"); +inf and huge values are clamped explicitly.
local function timeout_ms(timeout, fname)
    if timeout == nil then
        return -1
    end
    if type(timeout) ~= "number" or timeout ~= timeout or timeout < 0 then
        error(format("bad argument #1 to '%s' (timeout in seconds >= 0 expected, got %s)",
                     fname, tostring(timeout)), 3)
    end
    local ms = floor(timeout * 1000 + 0.5)
    if ms > MAX_TIMEOUT_MS then
        return MAX_TIMEOUT_MS
    end
    return ms
end
_M._timeout_ms = timeout_ms

--- syntax: ok, err = pool:flush(timeout)
-- Blocks the caller until everything accepted is written or `timeout` seconds (nil: no
-- limit) pass. context: exit_worker_by_lua*, timers; never in log_by_lua on a busy server.
function pool_mt.flush(self, timeout)
    check_self(self, "flush")
    local rc = lib.logpool_flush(self._p, timeout_ms(timeout, "flush"))
    if rc == 0 then
        return true
    end
    return nil, ffi_string(lib.logpool_strerror(rc))
end

--- syntax: abandoned, err = pool:close(timeout)
-- Stops accepting, delivers for up to `timeout` seconds, stops the writers; returns how many
-- accepted messages were abandoned. Idempotent. context: exit_worker_by_lua*.
function pool_mt.close(self, timeout)
    check_self(self, "close")
    local rc = lib.logpool_close(self._p, timeout_ms(timeout, "close"))
    if rc >= 0 then
        return rc
    end
    return nil, ffi_string(lib.logpool_strerror(rc))
end

--- syntax: stats = pool:stats(sink)   -- or pool:stats() for a list of all sinks
function pool_mt.stats(self, sink)
    check_self(self, "stats")
    if sink == nil then
        local all = {}
        for i = 1, self._n do
            all[i] = self:stats(i)
        end
        return all
    end
    local id = sink_id(self, sink, "stats")
    local rc = lib.logpool_stats(self._p, id, stats_buf)
    if rc ~= 0 then
        return nil, ffi_string(lib.logpool_strerror(rc))
    end
    local out = {}
    for _, f in ipairs(STATS_FIELDS) do
        out[f] = tonumber(stats_buf[f])
    end
    return out
end

-- The per-worker default pool of logpool.start(); declared before everything that uses it.
local default_pool, default_err

local metrics_cap = 16384
local metrics_buf = ffi_new("char[?]", metrics_cap)

--- syntax: text, err = pool:metrics()
-- Prometheus text exposition of this worker's pool. Takes the embedded Python's GIL:
-- for scrapes and timers, not per request. context: any.
function pool_mt.metrics(self)
    check_self(self, "metrics")
    while true do
        local n = lib.logpool_metrics(self._p, metrics_buf, metrics_cap)
        if n < 0 then
            return nil, ffi_string(lib.logpool_strerror(n))
        end
        if n < metrics_cap then
            return ffi_string(metrics_buf, n)
        end
        metrics_cap = n + 1024
        metrics_buf = ffi_new("char[?]", metrics_cap)
    end
end


--- syntax: ok, err = logpool.publish_metrics(dict_name, interval)
-- context: init_worker_by_lua*. Publishes this worker's default pool every `interval`
-- seconds (default 1).
function _M.publish_metrics(dict_name, interval)
    return metrics.publish_every(dict_name, interval, _M.default)
end

--- syntax: logpool.serve_metrics(dict_name)   -- context: content_by_lua*
-- Answers with the totals of every worker (this worker's snapshot taken now).
function _M.serve_metrics(dict_name)
    return metrics.serve(dict_name, (_M.default()))
end

-- A per-worker default pool: the two-line nginx.conf change.
--   init_worker_by_lua_block { require("resty.logpool").start({ sinks = {...} }) }
--   log_by_lua_block         { require("resty.logpool").log("main", line) }

--- syntax: pool, err = logpool.start(config)   -- logs the error to the error log itself
function _M.start(config)
    local pool, err = _M.new(config)
    default_pool, default_err = pool, err
    if not pool and ngx and ngx.log then
        ngx.log(ngx.ERR, err)
    end
    return pool, err
end

--- syntax: bytes, err = logpool.log(sink, msg)   -- via the default pool
function _M.log(sink, msg)
    if default_pool == nil then
        return nil, "logpool: not started" .. (default_err and (": " .. default_err) or "")
    end
    return default_pool:log(sink, msg)
end

--- syntax: abandoned, err = logpool.stop(timeout)   -- context: exit_worker_by_lua*
function _M.stop(timeout)
    if default_pool == nil then
        return 0
    end
    local pool = default_pool
    default_pool = nil
    return pool:close(timeout)
end

function _M.default()
    return default_pool, default_err
end

return _M
