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
local ffi_load = ffi.load
local error = error
local getmetatable = getmetatable
local next = next
local pairs = pairs
local ipairs = ipairs
local pcall = pcall
local setmetatable = setmetatable
local tonumber = tonumber
local tostring = tostring
local type = type
local concat = table.concat
local format = string.format
local floor = math.floor
local ngx = ngx

-- The block between the markers is include/logpool.h's; tests/test_header.py compares them.
if not pcall(ffi.typeof, "logpool_t") then
    ffi.cdef [[
/* LOGPOOL_CDEF_BEGIN */
typedef struct logpool_s logpool_t;

enum logpool_code {
    LOGPOOL_OK = 0,
    LOGPOOL_EINVAL = -1,
    LOGPOOL_ENOSINK = -2,
    LOGPOOL_ETOOBIG = -3,
    LOGPOOL_EFULL = -4,
    LOGPOOL_ECLOSED = -5,
    LOGPOOL_ECONFIG = -6,
    LOGPOOL_ERUNTIME = -7,
    LOGPOOL_ETIMEDOUT = -8
};

typedef struct logpool_stats_s {
    uint64_t accepted_messages;
    uint64_t accepted_bytes;
    uint64_t sent_messages;
    uint64_t sent_bytes;
    uint64_t dropped_full;
    uint64_t dropped_too_big;
    uint64_t dropped_closed;
    uint64_t abandoned_messages;
    uint64_t connects;
    uint64_t connect_failures;
    uint64_t write_errors;
    uint64_t reconnects;
    uint64_t buffered_bytes;
    uint64_t connected;
    uint64_t buffered_messages;
    uint64_t writes;
    uint64_t resent_bytes;
    uint64_t writer_errors;
    uint64_t tls_handshake_failures;
    uint64_t tls_resumed;
    uint64_t dropped_unsendable;
} logpool_stats_t;

logpool_t *logpool_new(const char *config_json);
const char *logpool_last_error(void);
int logpool_last_error_code(void);
int log_cdata(logpool_t *pool, int socket_id, const char *msg, size_t len);
int logpool_flush(logpool_t *pool, int timeout_ms);
int logpool_shutdown(logpool_t *pool);
int logpool_close(logpool_t *pool, int timeout_ms);
void logpool_free(logpool_t *pool);
int logpool_sink_count(logpool_t *pool);
int logpool_stats(logpool_t *pool, int socket_id, logpool_stats_t *out);
const char *logpool_strerror(int code);
int logpool_metrics(logpool_t *pool, char *buf, size_t len);
const char *logpool_version(void);
/* LOGPOOL_CDEF_END */
]]
end
if not pcall(function() return ffi.C.geteuid end) then
    ffi.cdef "unsigned int geteuid(void);"
end

local _M = { _VERSION = "0.1.0" }

local STATS_FIELDS = {
    "accepted_messages", "accepted_bytes", "sent_messages", "sent_bytes", "dropped_full",
    "dropped_too_big", "dropped_closed", "abandoned_messages", "connects", "connect_failures",
    "write_errors", "reconnects", "buffered_bytes", "connected", "buffered_messages", "writes",
    "resent_bytes", "writer_errors", "tls_handshake_failures", "tls_resumed",
    "dropped_unsendable",
}
-- Keys of the JSON config; their types are checked here so that a caller bug raises.
local NUMBER_OPTIONS = {
    flush_limit = true, periodic_flush_ms = true, max_buffer_length = true,
    max_message_size = true, connect_timeout_ms = true, send_timeout_ms = true,
    retry_interval_ms = true, max_retry_interval_ms = true, exit_flush_timeout_ms = true,
}
local STRING_OPTIONS = {
    framing = true, ca_file = true, server_name = true, cert_file = true, key_file = true,
}
local CLOSE_ON_GC_MS = 1000

-- The library handle lives in this upvalue for the life of the worker (DESIGN.md trap 6;
-- the library also pins itself with RTLD_NODELETE).
local lib, lib_loaded_from
local stats_buf = ffi_new("logpool_stats_t")

-- The library relative to this file: an installed package has logpool/lua/resty/logpool.lua
-- beside logpool/liblogpool.so; a source tree has lua/resty/ beside logpool/liblogpool.so.
local function default_lib_paths()
    local source = debug.getinfo(1, "S").source
    local dir = source:sub(1, 1) == "@" and source:sub(2):match("^(.*)/[^/]*$") or "."
    return { dir .. "/../../liblogpool.so", dir .. "/../../logpool/liblogpool.so" }
end

local function readable(path)
    local f = io.open(path, "rb")
    if f then
        f:close()
        return true
    end
    return false
end

local function load_lib(lib_path)
    if lib then
        if lib_path and lib_path ~= lib_loaded_from then
            return nil, "logpool: library already loaded from " .. lib_loaded_from
                        .. ", cannot also load " .. lib_path
        end
        return lib
    end
    local tried = {}
    local path = lib_path
    if path then
        tried[#tried + 1] = "lib_path option: " .. path
    else
        tried[#tried + 1] = "lib_path option: not set"
        for _, candidate in ipairs(default_lib_paths()) do
            if readable(candidate) then
                path = candidate
                break
            end
            tried[#tried + 1] = candidate .. ": not found (run `make build`)"
        end
    end
    if not path then
        return nil, "logpool: cannot find liblogpool.so; looked at " .. concat(tried, "; ")
    end
    local ok, loaded = pcall(ffi_load, path)
    if not ok then
        return nil, format("logpool: cannot load %s (%s): %s; the library, its libpython "
                           .. "and the venv must be readable by the nginx worker user "
                           .. "(uid %d)", path, concat(tried, "; "), tostring(loaded),
                           tonumber(ffi.C.geteuid()))
    end
    local version = ffi_string(loaded.logpool_version())
    if version ~= _M._VERSION then
        return nil, format("logpool: %s is version %s, this module is %s", path, version,
                           _M._VERSION)
    end
    lib, lib_loaded_from = loaded, path
    return lib
end

-- A small JSON encoder for the config: strings, numbers, booleans, arrays, objects.
local function json_string(s)
    return '"' .. s:gsub('[%c"\\]', function(c)
        if c == '"' then return '\\"' end
        if c == "\\" then return "\\\\" end
        return format("\\u%04x", c:byte())
    end) .. '"'
end

local function json_encode(v)
    local t = type(v)
    if t == "string" then
        return json_string(v)
    elseif t == "number" then
        if v ~= v or v == math.huge or v == -math.huge then
            return "null"
        end
        if v == floor(v) and v >= -2^53 and v <= 2^53 then
            return format("%d", v)
        end
        return format("%.17g", v)
    elseif t == "boolean" then
        return tostring(v)
    elseif t == "table" then
        if #v > 0 or next(v) == nil then
            local parts = {}
            for i, item in ipairs(v) do
                parts[i] = json_encode(item)
            end
            return "[" .. concat(parts, ",") .. "]"
        end
        local parts = {}
        for k, item in pairs(v) do
            parts[#parts + 1] = json_string(tostring(k)) .. ":" .. json_encode(item)
        end
        return "{" .. concat(parts, ",") .. "}"
    end
    return "null"
end
_M._json_encode = json_encode

local function check_options(where, t, level)
    for k, v in pairs(t) do
        local want = NUMBER_OPTIONS[k] and "number" or STRING_OPTIONS[k] and "string"
                     or k == "verify" and "boolean"
        if want and type(v) ~= want then
            error(format("bad config: %s%s must be a %s, got %s", where, k, want, type(v)),
                  level + 1)
        end
    end
end

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
        if type(sink.url) ~= "string" then
            error(format("bad config: sinks[%d].url must be a string, got %s", i,
                         type(sink.url)), 2)
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
            names[sink.url] = names[sink.url] or (i - 1)
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

-- Metrics of all workers, for one nginx `location /metrics`:
--   http { lua_shared_dict logpool_metrics 1m; }
--   init_worker_by_lua_block { ...start(...); require("resty.logpool").publish_metrics("logpool_metrics") }
--   location = /metrics { allow 127.0.0.1; deny all;
--       content_by_lua_block { require("resty.logpool").serve_metrics("logpool_metrics") } }
local PUBLISH_INTERVAL = 1
local publish_failed

local function publish(dict_name, pool)
    local dict = ngx.shared[dict_name]
    if not dict then
        return nil, "logpool: no lua_shared_dict " .. tostring(dict_name)
    end
    local text, err = pool:metrics()
    if not text then
        return nil, err
    end
    -- Keyed by worker id: after a reload the new worker with the same id takes over.
    return dict:set("w" .. ngx.worker.id(), text, PUBLISH_INTERVAL * 30)
end

--- syntax: ok, err = logpool.publish_metrics(dict_name, interval)
-- context: init_worker_by_lua*. Publishes this worker's default pool every `interval`
-- seconds (default 1).
function _M.publish_metrics(dict_name, interval)
    if type(dict_name) ~= "string" then
        error("bad argument #1 to 'publish_metrics' (shared dict name expected)", 2)
    end
    if not ngx.shared[dict_name] then
        return nil, "logpool: no lua_shared_dict " .. dict_name
    end
    return ngx.timer.every(interval or PUBLISH_INTERVAL, function(premature)
        if not premature and default_pool then
            local ok, err = publish(dict_name, default_pool)
            if not ok and not publish_failed then
                publish_failed = true -- once per worker, not every interval
                ngx.log(ngx.ERR, "logpool: cannot publish metrics: ", err)
            end
        end
    end)
end

-- Sum identical series of several Prometheus texts; HELP/TYPE lines once, first order kept.
local function merge_metrics(texts)
    local order, values, seen_meta, out = {}, {}, {}, {}
    for _, text in ipairs(texts) do
        for line in text:gmatch("[^\n]+") do
            if line:sub(1, 1) == "#" then
                if not seen_meta[line] then
                    seen_meta[line] = true
                    order[#order + 1] = line
                end
            else
                local series, value = line:match("^(.-)%s+(%S+)$")
                local v = tonumber(value)
                if series and v then
                    if values[series] == nil then
                        order[#order + 1] = series
                        values[series] = v
                    else
                        values[series] = values[series] + v
                    end
                end
            end
        end
    end
    for i, key in ipairs(order) do
        local v = values[key]
        if v == nil then
            out[i] = key
        elseif v == floor(v) and v < 2^53 then
            out[i] = key .. " " .. format("%d", v)
        else
            out[i] = key .. " " .. format("%.17g", v)
        end
    end
    return concat(out, "\n") .. "\n"
end
_M._merge_metrics = merge_metrics

--- syntax: logpool.serve_metrics(dict_name)   -- context: content_by_lua*
-- Answers with the totals of every worker (this worker's snapshot taken now).
function _M.serve_metrics(dict_name)
    local dict = ngx.shared[dict_name]
    if not dict then
        ngx.status = 500
        ngx.say("logpool: no lua_shared_dict ", tostring(dict_name))
        return
    end
    if default_pool then
        local ok, err = publish(dict_name, default_pool)
        if not ok then
            ngx.log(ngx.ERR, "logpool: cannot publish metrics: ", err)
        end
    end
    local texts = {}
    for _, key in ipairs(dict:get_keys(0)) do
        local text = dict:get(key)
        if text then
            texts[#texts + 1] = text
        end
    end
    ngx.header["Content-Type"] = "text/plain; version=0.0.4; charset=utf-8"
    ngx.print(merge_metrics(texts))
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
