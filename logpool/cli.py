"""python -m logpool {paths,receive,version}"""
import argparse
import sys

import logpool
from logpool import paths


def cmd_paths(args):
    print(f"lib {paths.lib_path()}")
    print(f"lua {paths.lua_dir()}")
    print(f"include {paths.include_dir()}")
    print(f"nginx_module {paths.nginx_module_path()}")
    print(f"producer_lib {paths.producer_lib_path()}")
    return 0


def cmd_receive(args):
    from logpool.receive import main
    return main(args.listen, args.out, framing=args.framing, cert_file=args.cert_file,
                key_file=args.key_file, client_ca_file=args.client_ca_file, mode=args.mode,
                max_message_size=args.max_message_size, idle_timeout=args.idle_timeout,
                handshake_timeout=args.handshake_timeout,
                max_reply_backlog=args.max_reply_backlog,
                max_connections=args.max_connections)


def octal_mode(text):
    try:
        mode = int(text, 8)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an octal mode like 0660") from None
    if not 0 <= mode <= 0o7777:
        raise argparse.ArgumentTypeError(f"{text!r} is out of range")
    return mode


SNIPPET = """\
# --- logpool: paste into the http {{}} block of nginx.conf ---
lua_package_path {lua_dir};

init_worker_by_lua_block {{
    require("resty.logpool").start({{
        sinks = {{ {sinks} }},
    }})
}}

exit_worker_by_lua_block {{
    require("resty.logpool").stop(1)   -- deliver for up to 1 s, then count what is left
}}

# The line as one variable, built by nginx only when the log phase reads it: one ngx.var
# read instead of one per field (each read runs interpreted: docs/performance.md).
map $host $logpool_line {{
    default "$remote_addr $request $status $body_bytes_sent";
}}

# --- and in each server {{}} (or location) whose requests you ship ---
log_by_lua_block {{
    require("resty.logpool").log({first}, ngx.var.logpool_line)  -- framing adds the "\\n"
}}
"""


def lua_string(text):
    """A Lua string literal of any text: quotes, backslashes, newlines, control bytes and
    non-ASCII bytes are escaped (decimal escapes are valid in Lua 5.1 and LuaJIT)."""
    out = []
    for byte in text.encode("utf-8"):
        ch = chr(byte)
        if ch in "\"\\":
            out.append("\\" + ch)
        elif 32 <= byte < 127:
            out.append(ch)
        else:
            out.append("\\%03d" % byte)
    return '"' + "".join(out) + '"'


def nginx_string(text):
    """An nginx.conf double-quoted argument (lua_package_path expands no variables)."""
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def cmd_nginx_snippet(args):
    from logpool.config import parse
    urls = args.sink or ["unix:/run/logpool/collector.sock"]
    sinks = [{"url": u, "name": f"sink{i + 1}" if len(urls) > 1 else "main"}
             for i, u in enumerate(urls)]
    parse({"sinks": sinks})  # a bad --sink fails here, not in nginx
    lua_sinks = ", ".join('{ url = %s, name = %s, framing = "newline" }'
                          % (lua_string(s["url"]), lua_string(s["name"])) for s in sinks)
    print(SNIPPET.format(lua_dir=nginx_string(paths.lua_dir() + "/?.lua;;"), sinks=lua_sinks,
                         first=lua_string(sinks[0]["name"])), end="")
    return 0


def cmd_demo(args):
    from logpool.tools import demo
    return demo.run(requests=args.requests, sink=args.sink, workers=args.workers,
                    agent=args.agent,
                    keep_running=args.keep_running)


def cmd_agent(args):
    from logpool.agent import service
    return service.main(args.config, log_file=args.log_file)


def cmd_top(args):
    from logpool import top
    try:
        return top.run(args.metrics_url, args.interval, args.once)
    except KeyboardInterrupt:
        return 0


def cmd_config_reference(args):
    from logpool import reference
    print(reference.lua_options() if args.lua else reference.markdown(), end="")
    return 0


def cmd_version(args):
    print(logpool.__version__)
    return 0


def build_parser():
    from logpool.receive.options import FRAMINGS, ReceiveOptions
    receive_defaults = ReceiveOptions()  # the receiver's options are checked there, once
    parser = argparse.ArgumentParser(prog="python -m logpool",
                                     description="logpool: ship logs out of nginx workers")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("paths", help="print where the library, the Lua module, the header and the nginx module are")
    p.set_defaults(func=cmd_paths)
    p = sub.add_parser("receive", help="a collector writing complete messages to a file or "
                       "stdout")
    p.add_argument("--listen", required=True, help="unix:/path, unixgram:/path, "
                   "tcp://host:port, tls://host:port, udp://host:port, relp://host:port, "
                   "relp+tls://host:port (RELP: a message is acknowledged once written out), "
                   "http://host:port/path or https://host:port/path (answered 200 once "
                   "written out)")
    p.add_argument("--out", help="append messages to this file (default: stdout)")
    p.add_argument("--framing", default=receive_defaults.framing, choices=FRAMINGS,
                   help="how messages are delimited on the stream, and written out "
                   "(default: newline)")
    p.add_argument("--cert-file", help="tls://, relp+tls://, https://: the server certificate "
                   "(PEM, may hold the key)")
    p.add_argument("--key-file", help="its private key, when not in --cert-file")
    p.add_argument("--client-ca-file", help="require client certificates signed by this CA")
    p.add_argument("--mode", type=octal_mode, default=receive_defaults.mode,
                   help="unix:/unixgram: permissions of the socket (default 0660: owner and "
                   "group may connect). An existing path is replaced only if it is a stale "
                   "socket")
    p.add_argument("--max-message-size", type=int, default=receive_defaults.max_message_size,
                   help="the largest message: a stream's unfinished message, a RELP frame, an "
                   "HTTP body as sent and as decoded; a peer past it is refused (default 16 MiB)")
    p.add_argument("--idle-timeout", type=float, default=receive_defaults.idle_timeout,
                   help="hang up on a connection silent this many seconds (default 300)")
    p.add_argument("--handshake-timeout", type=float,
                   default=receive_defaults.handshake_timeout,
                   help="hang up on a client whose opening (TLS handshake, RELP open, an "
                   "HTTP request head: the first, and the next after each answer) takes "
                   "longer (default 10)")
    p.add_argument("--max-reply-backlog", type=int,
                   default=receive_defaults.max_reply_backlog,
                   help="RELP, HTTP: drop a client that leaves more than this many bytes of "
                   "replies unread (default 1 MiB)")
    p.add_argument("--max-connections", type=int, default=receive_defaults.max_connections,
                   help="connections held at once; when full, a new one replaces the oldest "
                   "that never sent a byte (else the one silent longest, if silent "
                   "--handshake-timeout), or is closed (default 1024, fewer when the "
                   "descriptor limit, RLIMIT_NOFILE, leaves less)")
    p.set_defaults(func=cmd_receive)
    p = sub.add_parser("nginx-snippet", help="print the nginx.conf lines for this installation")
    p.add_argument("--sink", action="append", help="sink URL (repeatable); default "
                   "unix:/run/logpool/collector.sock")
    p.set_defaults(func=cmd_nginx_snippet)
    p = sub.add_parser("demo", help="logpool end to end in a real nginx, with a report")
    p.add_argument("--requests", type=int, default=200_000, help="requests to drive")
    p.add_argument("--sink", help="ship to this collector instead of a built-in one")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--agent", action="store_true",
                   help="agent mode: workers write shared-memory rings, one `python -m "
                   "logpool agent` ships them (docs/agent.md)")
    p.add_argument("--keep-running", action="store_true",
                   help="leave nginx up after the load until Ctrl-C")
    p.set_defaults(func=cmd_demo)
    p = sub.add_parser("agent", help="agent mode: one per host, drains every producer's "
                       "ring in agent_dir into the pool the config describes (docs/agent.md)")
    p.add_argument("--config", required=True, help="a pool's JSON plus agent_dir and "
                   "metrics_listen")
    p.add_argument("--log-file", help="append the agent's messages here instead of stderr "
                   "(reopened on SIGHUP)")
    p.set_defaults(func=cmd_agent)
    p = sub.add_parser("top", help="live per-sink view of a /metrics endpoint")
    p.add_argument("--metrics-url", required=True, help="e.g. http://127.0.0.1/metrics")
    p.add_argument("--interval", type=float, default=1.0, help="seconds between scrapes")
    p.add_argument("--once", action="store_true", help="print one table and exit")
    p.set_defaults(func=cmd_top)
    p = sub.add_parser("config-reference", help="print the configuration reference "
                       "(every key, its type, default and meaning) as Markdown")
    p.add_argument("--lua", action="store_true", help="print lua/resty/logpool/options.lua "
                   "(the Lua module's type checks) instead")
    p.set_defaults(func=cmd_config_reference)
    p = sub.add_parser("version", help="print the package version")
    p.set_defaults(func=cmd_version)
    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except logpool.LogpoolError as exc:
        print(f"python -m logpool {args.command}: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
