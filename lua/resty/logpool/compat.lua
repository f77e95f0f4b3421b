-- resty.logpool.compat: lua-resty-logger-socket's API on top of logpool.
--
-- Migrating is one require:  local logger = require "resty.logpool.compat"
-- (instead of "resty.logger.socket"). Same option names, meanings, validation errors and
-- return conventions; the differences are documented in docs/compat.md.
local logpool = require "resty.logpool"

local type = type
local pairs = pairs
local tostring = tostring
local floor = math.floor
local format = string.format
local setmetatable = setmetatable
local ngx = ngx

local _M = { _VERSION = "0.1.0" }

local MAX_PORT = 65535

-- lua-resty-logger-socket's defaults (timeout and retry_interval in ms, periodic_flush in s).
local DEFAULTS = {
    flush_limit = 4096,
    drop_limit = 1048576,
    timeout = 1000,
    max_retry_times = 3,
    retry_interval = 100,
    pool_size = 10,
    max_buffer_reuse = 10000,
    sock_type = "tcp",
    ssl = false,
    ssl_verify = true,
}

local NON_NEGATIVE = {
    flush_limit = true, drop_limit = true, timeout = true, max_retry_times = true,
    retry_interval = true, pool_size = true, max_buffer_reuse = true, periodic_flush = true,
}

-- Same checks and the same messages as lua-resty-logger-socket's init().
local function validate(user_config)
    if type(user_config) ~= "table" then
        return nil, "user_config must be a table"
    end
    local cfg = {}
    for k, v in pairs(DEFAULTS) do
        cfg[k] = v
    end
    for k, v in pairs(user_config) do
        if k == "host" then
            if type(v) ~= "string" then
                return nil, '"host" must be a string'
            end
        elseif k == "port" then
            if type(v) ~= "number" then
                return nil, '"port" must be a number'
            end
            if v < 0 or v > MAX_PORT then
                return nil, format('"port" out of range 0~%s', MAX_PORT)
            end
        elseif k == "path" then
            if type(v) ~= "string" then
                return nil, '"path" must be a string'
            end
        elseif k == "sock_type" then
            if type(v) ~= "string" then
                return nil, '"sock_type" must be a string'
            end
            if v ~= "tcp" and v ~= "udp" then
                return nil, '"sock_type" must be "tcp" or "udp"'
            end
        elseif NON_NEGATIVE[k] then
            if type(v) ~= "number" or v < 0 then
                return nil, format('invalid "%s"', k)
            end
        elseif k == "ssl" or k == "ssl_verify" then
            if type(v) ~= "boolean" then
                return nil, format('"%s" must be a boolean value', k)
            end
        elseif k == "sni_host" or k == "ssl_trusted_certificate" then -- (the latter: ours)
            if type(v) ~= "string" then
                return nil, format('"%s" must be a string', k)
            end
        end
        cfg[k] = v
    end
    if not (cfg.host and cfg.port) and not cfg.path then
        return nil, 'no logging server configured. "host"/"port" or "path" is required.'
    end
    if cfg.flush_limit >= cfg.drop_limit then
        return nil, '"flush_limit" should be < "drop_limit"'
    end
    if cfg.ssl and cfg.sock_type == "udp" then
        return nil, 'logpool: "ssl" needs sock_type "tcp" (there is no TLS over UDP)'
    end
    if cfg.ssl and not (cfg.host and cfg.port) then
        return nil, 'logpool: "ssl" needs "host" and "port" (no TLS over a unix socket)'
    end
    return cfg
end

local function to_logpool(cfg)
    local url
    if cfg.path then
        url = (cfg.sock_type == "udp" and "unixgram:" or "unix:") .. cfg.path
    else
        local host = cfg.host
        if host:find(":", 1, true) and host:sub(1, 1) ~= "[" then
            host = "[" .. host .. "]"
        end
        local scheme = cfg.sock_type == "udp" and "udp" or cfg.ssl and "tls" or "tcp"
        url = format("%s://%s:%d", scheme, host, cfg.port)
    end
    local sink = { url = url, name = "logger" }
    if cfg.ssl then
        -- As cosocket's sslhandshake(_, sni_host or host, ssl_verify): one name for SNI and
        -- for the certificate check. nginx's lua_ssl_trusted_certificate is not visible
        -- from Lua: ssl_trusted_certificate (an extension) names the CA file; without it,
        -- the system's CA bundle.
        sink.verify = cfg.ssl_verify
        sink.server_name = cfg.sni_host
        if cfg.ssl_verify then
            sink.ca_file = cfg.ssl_trusted_certificate
        end
    end
    local timeout = cfg.timeout >= 1 and floor(cfg.timeout) or 1
    local retry = cfg.retry_interval >= 1 and floor(cfg.retry_interval) or 1
    local drop_limit = cfg.drop_limit >= 1 and floor(cfg.drop_limit) or 1
    local flush_limit = cfg.flush_limit >= 1 and floor(cfg.flush_limit) or 1
    local out = {
        sinks = { sink },
        flush_limit = flush_limit,
        max_buffer_length = drop_limit,
        -- For udp, logpool caps it at what a datagram carries; larger messages get 0.
        max_message_size = drop_limit,
        connect_timeout_ms = timeout,
        send_timeout_ms = timeout,
        retry_interval_ms = retry,
        max_retry_interval_ms = retry > 5000 and retry or 5000,
        lib_path = cfg.lib_path,
    }
    if cfg.periodic_flush then
        local ms = floor(cfg.periodic_flush * 1000)
        out.periodic_flush_ms = ms >= 1 and ms or 1
    end
    return out
end

local logger_mt = {}
logger_mt.__index = logger_mt

--- syntax: ok, err = logger:init(user_config)
function logger_mt.init(self, user_config)
    local cfg, err = validate(user_config)
    if not cfg then
        return nil, err
    end
    local pool
    pool, err = logpool.new(to_logpool(cfg))
    if not pool then
        return nil, err
    end
    if self.pool then
        self.pool:close(1)
    end
    self.pool = pool
    self.timeout_ms = cfg.timeout >= 1 and floor(cfg.timeout) or 1
    return true
end

function logger_mt.initted(self)
    return self.pool ~= nil
end

--- syntax: bytes, err = logger:log(msg)
-- Returns the bytes buffered, 0 when the message is dropped (counted in stats), or
-- nil, "not initialized".
function logger_mt.log(self, msg)
    local pool = self.pool
    if not pool then
        return nil, "not initialized"
    end
    if type(msg) ~= "string" then
        msg = tostring(msg)
    end
    local bytes = pool:log(1, msg)
    return bytes or 0
end

-- Phases where ngx.sleep may yield: flush() waits there as lua-resty-logger-socket does.
local YIELDABLE = { rewrite = true, access = true, content = true, timer = true,
                    ssl_cert = true, ssl_session_fetch = true, preread = true }
local SLEEP_FIRST, SLEEP_MAX = 0.001, 0.02

local function sent_bytes(pool)
    local st = pool:stats(1)
    return st and st.sent_bytes or 0
end

--- syntax: bytes, err = logger:flush(timeout)
-- In a phase that can yield (content, access, rewrite, timer...): waits cooperatively
-- (ngx.sleep in slices, other requests run meanwhile) until what was buffered is written,
-- at most `timeout` seconds (default: the logger's `timeout` option), and returns the bytes
-- sent meanwhile, as lua-resty-logger-socket does; nil, "timed out" otherwise.
-- In the log phase (which cannot yield) it asks the writer to send now and returns true at
-- once, or waits up to `timeout` seconds (blocking the worker) when one is given.
function logger_mt.flush(self, timeout)
    local ms = logpool._timeout_ms(timeout, "flush") -- level-2 error for a bad timeout
    local pool = self.pool
    if not pool then
        return nil, "not initialized"
    end
    local phase = ngx and ngx.get_phase and ngx.get_phase()
    if phase and YIELDABLE[phase] then
        local before = sent_bytes(pool)
        local wait_s = (timeout == nil and self.timeout_ms or ms) / 1000
        local deadline = ngx.now() + wait_s
        local nap = SLEEP_FIRST
        while true do
            local ok, err = pool:flush(0) -- also asks the writer to send now
            if ok then
                return sent_bytes(pool) - before
            end
            if err ~= "timed out" then
                return nil, err
            end
            ngx.update_time()
            if ngx.now() >= deadline then
                return nil, "timed out"
            end
            ngx.sleep(nap)
            nap = nap * 2 < SLEEP_MAX and nap * 2 or SLEEP_MAX
        end
    end
    local ok, err = pool:flush(timeout or 0)
    if ok or timeout == nil then
        return true
    end
    return nil, err
end

--- syntax: abandoned, err = logger:close(timeout)   -- an extension: exit_worker_by_lua*
-- Delivers for up to `timeout` seconds, then closes; log() says "not initialized" after.
function logger_mt.close(self, timeout)
    logpool._timeout_ms(timeout, "close") -- level-2 error for a bad timeout
    local pool = self.pool
    if not pool then
        return 0
    end
    self.pool = nil
    return pool:close(timeout or 1)
end

function logger_mt.stats(self)
    if not self.pool then
        return nil, "not initialized"
    end
    return self.pool:stats(1)
end

--- syntax: logger, err = compat.new(user_config)   -- independent loggers per worker
function _M.new(user_config)
    local self = setmetatable({}, logger_mt)
    local ok, err = self:init(user_config)
    if not ok then
        return nil, err
    end
    return self
end

-- Module functions, as lua-resty-logger-socket has them: one logger per worker.
local default = setmetatable({}, logger_mt)

function _M.init(user_config)
    return default:init(user_config)
end

function _M.initted()
    return default:initted()
end

function _M.log(msg)
    return default:log(msg)
end

function _M.flush(timeout)
    return default:flush(timeout)
end

function _M.stats()
    return default:stats()
end

function _M.close(timeout)
    return default:close(timeout)
end

return _M
