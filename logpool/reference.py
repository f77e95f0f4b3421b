"""The configuration reference (docs/configuration.md) and the Lua module's type checks
(lua/resty/logpool/options.lua), rendered from the option schemas: the pool's
(logpool/config.py) and each transport's (OPTIONS; the TLS block on TLS schemes).
`python -m logpool config-reference` prints the page (`--lua`: the Lua file); tests keep
both equal to what this module renders."""
from logpool import config, transports
from logpool.transports.schema import TLS_OPTIONS, TYPES, Option

# Keys only the Lua module reads (resty.logpool.new / start); the library never sees them.
LUA_ONLY = (
    Option("lib_path", "string or null", None, "the liblogpool.so to load",
           default_doc="the path baked into the module by `make build`"),
)


def all_options():
    """Every key of the JSON config the library checks (not the Lua-only ones)."""
    seen = {}
    for option in (config.SINK_SCHEMA + (config.FRAMING_OPTION,) + config.SPOOL_SCHEMA
                   + config.POOL_ONLY_SCHEMA + tuple(transports.all_options().values())):
        seen.setdefault(option.name, option)
    return tuple(seen.values())


def _table(options):
    rows = ["| key | type | default | meaning |", "|---|---|---|---|"]
    for o in options:
        doc = o.doc.replace("|", "\\|")
        rows.append(f"| `{o.name}` | {o.type} | {o.shown_default()} | {doc} |")
    return "\n".join(rows)


def markdown():
    parts = ["# Configuration reference", "",
             "Generated from the option schemas by `python -m logpool config-reference` "
             "(a test keeps this page equal to them). One JSON object configures a pool, "
             "from Python (`logpool.Pool`), Lua (`resty.logpool`) and the nginx module "
             "(`logpool_pool`) alike; unknown keys are errors. `sinks` is a list of "
             "`{\"url\": ..., \"name\": ...}` objects (URL forms: "
             "[transports.md](transports.md)).", "",
             "## Every sink (top level or per sink; a sink's value wins)", "",
             _table(config.SINK_SCHEMA + (config.FRAMING_OPTION,) + config.SPOOL_SCHEMA), "",
             "## Top level only", "", _table(config.POOL_ONLY_SCHEMA), ""]
    tls_schemes = sorted(s for cls in transports.TRANSPORTS for s in cls.TLS_SCHEMES)
    parts += [f"## TLS ({', '.join(f'`{s}://`' for s in tls_schemes)})", "",
              _table(TLS_OPTIONS), ""]
    for cls in transports.TRANSPORTS:
        if not cls.OPTIONS or any(c.OPTIONS is cls.OPTIONS for c in
                                  transports.TRANSPORTS[:transports.TRANSPORTS.index(cls)]):
            continue
        schemes = [s for c in transports.TRANSPORTS if c.OPTIONS is cls.OPTIONS
                   for s in c.SCHEMES]
        parts += [f"## {', '.join(f'`{s}://`' for s in schemes)}", "", _table(cls.OPTIONS),
                  ""]
    parts += ["## Lua only (`resty.logpool`)", "", _table(LUA_ONLY), "",
              "The nginx module's directives (`logpool_pool`, `logpool_pool_file`, "
              "`logpool_format`, `logpool_log`, `logpool_exit_timeout`, `logpool_metrics`) "
              "are in [nginx-module.md](nginx-module.md).", ""]
    return "\n".join(parts)


# options.lua: the Lua type of every key, one table per type (in this order).
LUA_TABLES = (("NUMBER_OPTIONS", "number"), ("STRING_OPTIONS", "string"),
              ("TABLE_OPTIONS", "table"), ("BOOLEAN_OPTIONS", "boolean"))
LUA_HEAD = """\
-- resty.logpool.options: type checks of config keys, so that a caller bug raises at the
-- caller's line. Generated from the option schemas by `python -m logpool config-reference
-- --lua` (logpool/reference.py); tests/test_sources.py keeps this file equal to them.
local error = error
local format = string.format
local pairs = pairs
local type = type

local _M = { _VERSION = "0.1.0" }

-- Keys of the JSON config, by the Lua type each must have.
"""
LUA_TAIL = """
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
"""


def lua_options():
    """lua/resty/logpool/options.lua."""
    out = [LUA_HEAD]
    for table, lua_type in LUA_TABLES:
        names = sorted(o.name for o in all_options() if TYPES[o.type] == lua_type)
        body = "".join(f"    {name} = true,\n" for name in names)
        out.append(f"local {table} = {{\n{body}}}\n")
    return "".join(out) + LUA_TAIL
