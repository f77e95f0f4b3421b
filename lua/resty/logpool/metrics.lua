-- resty.logpool.metrics: one /metrics for all workers. Each worker publishes its pool's
-- Prometheus text into a shared dict; the location serving /metrics sums the series.
local ffi = require "ffi"
local base = require "resty.logpool.base"

local concat = table.concat
local error = error
local ffi_new = ffi.new
local ffi_string = ffi.string
local ipairs = ipairs
local tostring = tostring
local type = type
local ngx = ngx

local _M = { _VERSION = "0.1.0" }

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

--- ok, err = metrics.publish_every(dict_name, interval, get_pool): publish get_pool()'s
-- text every `interval` seconds (default 1). context: init_worker_by_lua*.
function _M.publish_every(dict_name, interval, get_pool)
    if type(dict_name) ~= "string" then
        error("bad argument #1 to 'publish_metrics' (shared dict name expected)", 2)
    end
    if not ngx.shared[dict_name] then
        return nil, "logpool: no lua_shared_dict " .. dict_name
    end
    return ngx.timer.every(interval or PUBLISH_INTERVAL, function(premature)
        local pool = not premature and get_pool()
        if pool then
            local ok, err = publish(dict_name, pool)
            if not ok and not publish_failed then
                publish_failed = true -- once per worker, not every interval
                ngx.log(ngx.ERR, "logpool: cannot publish metrics: ", err)
            end
        end
    end)
end

-- Sum identical series of several Prometheus texts; HELP/TYPE lines once, first order kept:
-- the library's logpool_metrics_merge, which the nginx module's logpool_metrics uses too.
local merge_cap = 65536
local merge_buf

local function merge_metrics(texts)
    local lib, err = base.load()
    if not lib then
        return nil, err
    end
    local all = concat(texts, "\n")
    while true do
        merge_buf = merge_buf or ffi_new("char[?]", merge_cap)
        local n = lib.logpool_metrics_merge(all, #all, merge_buf, merge_cap, 0)
        if n < 0 then
            return nil, "logpool: cannot merge metrics: " .. base.strerror(lib, n)
        end
        if n < merge_cap then
            return ffi_string(merge_buf, n)
        end
        merge_cap, merge_buf = n + 1024, nil
    end
end
_M.merge = merge_metrics

--- syntax: logpool.serve_metrics(dict_name)   -- context: content_by_lua*
-- Answers with the totals of every worker (this worker's snapshot taken now).
function _M.serve(dict_name, pool)
    local dict = ngx.shared[dict_name]
    if not dict then
        ngx.status = 500
        ngx.say("logpool: no lua_shared_dict ", tostring(dict_name))
        return
    end
    if pool then
        local ok, err = publish(dict_name, pool)
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
    local text, err = merge_metrics(texts)
    if not text then
        ngx.status = 500
        ngx.say(err)
        return
    end
    ngx.header["Content-Type"] = "text/plain; version=0.0.4; charset=utf-8"
    ngx.print(text)
end

return _M
