-- resty.logpool.agent: a pool in agent mode, { agent = "<agent_dir>", ring_bytes = n,
-- lib_path = ... }. log() appends to this worker's own shared-memory ring; the host's agent
-- (`python -m logpool agent`) ships it. The sinks are the agent's, named in the table it
-- publishes in agent_dir; the library is liblogpool_producer.so: no Python in the worker.
local ffi = require "ffi"

local ffi_string = ffi.string
local error = error
local format = string.format
local io_open = io.open
local pairs = pairs
local tonumber = tonumber
local tostring = tostring
local type = type
local ngx = ngx

local json_encode = require("resty.logpool.json").encode

local _M = { _VERSION = "0.1.0" }

local KNOWN = { agent = true, ring_bytes = true, lib_path = true }

--- p, lib, names, n = agent.new(config, load_lib, level); nil, err on a runtime failure.
-- names maps each sink's name and 1-based index to its id.
function _M.new(config, load_lib, level)
    for k in pairs(config) do
        if not KNOWN[k] then
            error(format("bad config: %s: unknown key in agent mode (known: agent, "
                         .. "ring_bytes, lib_path; sinks are the agent's)", tostring(k)), level)
        end
    end
    if type(config.agent) ~= "string" or config.agent == "" then
        error("bad config: agent must be the agent's agent_dir (a string)", level)
    end
    if config.ring_bytes ~= nil and type(config.ring_bytes) ~= "number" then
        error("bad config: ring_bytes must be a number", level)
    end
    if config.lib_path ~= nil and type(config.lib_path) ~= "string" then
        error("bad config: lib_path must be a string, got " .. type(config.lib_path), level)
    end
    if ngx and ngx.get_phase and ngx.get_phase() == "init" then
        return nil, "logpool: a pool cannot start in init_by_lua (the nginx master, which "
                    .. "forks the workers afterwards); start it in init_worker_by_lua"
    end
    local lib, err = load_lib(config.lib_path, "liblogpool_producer.so")
    if not lib then
        return nil, err
    end
    local p = lib.logpool_new(json_encode({ agent = config.agent,
                                            ring_bytes = config.ring_bytes }))
    if p == nil then
        return nil, "logpool: " .. ffi_string(lib.logpool_last_error())
    end
    -- The names, in id order, from the table the C side has just read.
    local names, n = {}, tonumber(lib.logpool_sink_count(p))
    local f = io_open(config.agent .. "/sinks", "rb")
    if f then
        local i = -2
        for line in f:lines() do
            if i >= 0 and i < n then
                names[line:match("^%d+ (.*)$") or ""] = i
            end
            i = i + 1
        end
        f:close()
    end
    for i = 1, n do
        names[i] = i - 1
    end
    return p, lib, names, n
end

return _M
