-- resty.logpool.options: type checks of config keys, so that a caller bug raises at the
-- caller's line (tests/test_sources.py holds these lists equal to logpool/config.py's).
local error = error
local format = string.format
local pairs = pairs
local type = type

local _M = { _VERSION = "0.1.0" }

-- Keys of the JSON config; their types are checked here so that a caller bug raises.
local NUMBER_OPTIONS = {
    flush_limit = true, periodic_flush_ms = true, max_buffer_length = true,
    max_message_size = true, connect_timeout_ms = true, send_timeout_ms = true,
    retry_interval_ms = true, max_retry_interval_ms = true, exit_flush_timeout_ms = true,
    relp_window = true, http_max_body_bytes = true,
    max_spool_bytes = true, forward_window = true,
}
local STRING_OPTIONS = {
    framing = true, ca_file = true, server_name = true, cert_file = true, key_file = true,
    http_format = true, http_compression = true, http_method = true, kafka_key = true,
    spool_dir = true,
    elasticsearch_index = true, elasticsearch_pipeline = true, elasticsearch_id_field = true,
    splunk_hec_endpoint = true, clickhouse_table = true, datadog_service = true,
    datadog_source = true, datadog_hostname = true, forward_tag = true,
    forward_shared_key = true,
}
local TABLE_OPTIONS = {
    http_headers = true, kafka = true, loki_labels = true, otlp_resource_attributes = true,
}
local BOOLEAN_OPTIONS = {
    verify = true,
}

--- options.check(where, t, level): raise for a key of the wrong type.
function _M.check(where, t, level)
    for k, v in pairs(t) do
        local want = NUMBER_OPTIONS[k] and "number" or STRING_OPTIONS[k] and "string"
                     or TABLE_OPTIONS[k] and "table" or BOOLEAN_OPTIONS[k] and "boolean"
        if want and type(v) ~= want then
            error(format("bad config: %s%s must be a %s, got %s", where, k, want, type(v)),
                  level + 1)
        end
    end
end

return _M
