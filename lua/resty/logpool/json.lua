-- resty.logpool.json: a small JSON encoder for pool configs (strings, numbers, booleans,
-- arrays, objects); cjson is not always there, and this is all a config needs.
local concat = table.concat
local format = string.format
local floor = math.floor
local ipairs = ipairs
local next = next
local pairs = pairs
local tostring = tostring
local type = type

local _M = { _VERSION = "0.1.0" }

-- An empty Lua table is ambiguous. In a pool config every table-valued option
-- (http_headers, kafka, loki_labels, ...) is an object, and an empty list is always an
-- error, so {} encodes as an object; setmetatable({}, json.array_mt) forces "[]".
_M.array_mt = {}
local array_mt = _M.array_mt
local getmetatable = getmetatable

local function json_string(s)
    return '"' .. s:gsub('[%c"\\]', function(c)
        if c == '"' then return '\\"' end
        if c == "\\" then return "\\\\" end
        return format("\\u%04x", c:byte())
    end) .. '"'
end

function _M.encode(v)
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
        if #v > 0 or (next(v) == nil and getmetatable(v) == array_mt) then
            local parts = {}
            for i, item in ipairs(v) do
                parts[i] = _M.encode(item)
            end
            return "[" .. concat(parts, ",") .. "]"
        end
        local parts = {}
        for k, item in pairs(v) do
            parts[#parts + 1] = json_string(tostring(k)) .. ":" .. _M.encode(item)
        end
        return "{" .. concat(parts, ",") .. "}"
    end
    return "null"
end
return _M
