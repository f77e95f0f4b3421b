-- resty.logpool.metrics: one /metrics for all workers. Each worker publishes its pool's
-- Prometheus text into a shared dict; the location serving /metrics sums the series.
local concat = table.concat
local error = error
local format = string.format
local floor = math.floor
local ipairs = ipairs
local tonumber = tonumber
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
    ngx.header["Content-Type"] = "text/plain; version=0.0.4; charset=utf-8"
    ngx.print(merge_metrics(texts))
end

return _M
