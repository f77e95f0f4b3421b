"""The configuration reference (docs/configuration.md), rendered from the option schemas:
the pool's (logpool/config.py) and each transport's (OPTIONS; the TLS block on TLS
schemes). `python -m logpool config-reference` prints it; a test keeps the page equal."""
from logpool import config, transports
from logpool.transports.schema import TLS_OPTIONS, Option

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
