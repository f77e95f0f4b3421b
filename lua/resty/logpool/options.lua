-- resty.logpool.options: type checks of config keys, so that a caller bug raises at the
-- caller's line. Generated from the option schemas by `python -m logpool config-reference
-- --lua` (logpool/reference.py); tests/test_sources.py keeps this file equal to them.
local error = error
local format = string.format
local pairs = pairs
local type = type

local _M = { _VERSION = "0.1.0" }

-- Keys of the JSON config, by the Lua type each must have.
local NUMBER_OPTIONS = {
    connect_timeout_ms = true,
    dead_letter_max_bytes = true,
    exit_flush_timeout_ms = true,
    flush_limit = true,
    forward_window = true,
    http_max_body_bytes = true,
    max_buffer_length = true,
    max_message_size = true,
    max_retry_interval_ms = true,
    max_spool_bytes = true,
    periodic_flush_ms = true,
    relp_window = true,
    retry_interval_ms = true,
    send_timeout_ms = true,
    splunk_hec_ack_timeout_ms = true,
}
local STRING_OPTIONS = {
    ca_file = true,
    cert_file = true,
    clickhouse_table = true,
    datadog_hostname = true,
    datadog_service = true,
    datadog_source = true,
    dead_letter_path = true,
    elasticsearch_id_field = true,
    elasticsearch_index = true,
    elasticsearch_pipeline = true,
    forward_shared_key = true,
    forward_tag = true,
    framing = true,
    http_compression = true,
    http_format = true,
    http_method = true,
    kafka_key = true,
    key_file = true,
    server_name = true,
    splunk_hec_endpoint = true,
    spool_dir = true,
}
local TABLE_OPTIONS = {
    http_headers = true,
    kafka = true,
    loki_labels = true,
    otlp_resource_attributes = true,
}
local BOOLEAN_OPTIONS = {
    clickhouse_skip_unknown_fields = true,
    splunk_hec_ack = true,
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
