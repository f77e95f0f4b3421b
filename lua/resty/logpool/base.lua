-- resty.logpool.base: the FFI binding of liblogpool: the declarations (include/logpool.h's,
-- compared by tests/test_lua_module.py), the library handle and the codes.
local ffi = require "ffi"

local ffi_load = ffi.load
local ffi_string = ffi.string
local concat = table.concat
local format = string.format
local io_open = io.open
local ipairs = ipairs
local pcall = pcall
local tonumber = tonumber
local tostring = tostring

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
    uint64_t unacked_messages;
    uint64_t resent_messages;
    uint64_t dropped_rejected;
    uint64_t spooled_bytes;
    uint64_t spooled_messages;
    uint64_t dropped_spool_full;
    uint64_t spool_writes;
    uint64_t spool_replayed;
    uint64_t spool_corrupt;
    uint64_t spool_bad_entries;
    uint64_t dropped_spool_replay;
    uint64_t retried_messages;
    uint64_t dead_letters;
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
int logpool_sink_index(logpool_t *pool, const char *name);
int logpool_stats(logpool_t *pool, int socket_id, logpool_stats_t *out);
const char *logpool_strerror(int code);
int logpool_metrics(logpool_t *pool, char *buf, size_t len);
enum {
    LOGPOOL_METRICS_COUNTERS_ONLY = 1
};
int logpool_metrics_merge(const char *texts, size_t len, char *out, size_t cap, int flags);
const char *logpool_version(void);
/* LOGPOOL_CDEF_END */
]]
end
if not pcall(function() return ffi.C.geteuid end) then
    ffi.cdef "unsigned int geteuid(void);"
end

local _M = { _VERSION = "0.1.0" }

_M.STATS_FIELDS = {
    "accepted_messages", "accepted_bytes", "sent_messages", "sent_bytes", "dropped_full",
    "dropped_too_big", "dropped_closed", "abandoned_messages", "connects", "connect_failures",
    "write_errors", "reconnects", "buffered_bytes", "connected", "buffered_messages", "writes",
    "resent_bytes", "writer_errors", "tls_handshake_failures", "tls_resumed",
    "dropped_unsendable", "unacked_messages", "resent_messages",
    "dropped_rejected", "spooled_bytes", "spooled_messages", "dropped_spool_full",
    "spool_writes", "spool_replayed", "spool_corrupt", "spool_bad_entries",
    "dropped_spool_replay", "retried_messages", "dead_letters",
}

-- The library handle lives in this upvalue for the life of the worker (docs/architecture.md,
-- trap 6; the library also pins itself with RTLD_NODELETE).
local lib, lib_loaded_from

-- The library relative to this file (resty/logpool/base.lua): an installed package has
-- logpool/lua/ beside logpool/liblogpool.so; a source tree has lua/ beside logpool/.
-- Agent mode loads liblogpool_producer.so from the same places (no Python in it).
local function default_lib_paths(name)
    local source = debug.getinfo(1, "S").source
    local dir = source:sub(1, 1) == "@" and source:sub(2):match("^(.*)/[^/]*$") or "."
    return { dir .. "/../../../" .. name, dir .. "/../../../logpool/" .. name }
end

local function readable(path)
    local f = io_open(path, "rb")
    if f then
        f:close()
        return true
    end
    return false
end

--- lib, err = base.load(lib_path, name): the library, loaded once per process. name:
-- "liblogpool.so" (default) or, for agent mode, "liblogpool_producer.so"; a process uses one.
function _M.load(lib_path, name)
    name = name or "liblogpool.so"
    if lib then
        if lib_path == nil and lib_loaded_from:sub(-#name - 1) ~= "/" .. name then
            return nil, "logpool: " .. lib_loaded_from .. " is loaded in this process: a "
                        .. "process uses either agent mode or in-process pools, not both"
        end
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
        for _, candidate in ipairs(default_lib_paths(name)) do
            if readable(candidate) then
                path = candidate
                break
            end
            tried[#tried + 1] = candidate .. ": not found (run `make build`)"
        end
    end
    if not path then
        return nil, "logpool: cannot find " .. name .. "; looked at " .. concat(tried, "; ")
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

--- The contract's message for a code.
function _M.strerror(lib, code)
    return ffi_string(lib.logpool_strerror(code))
end

return _M
